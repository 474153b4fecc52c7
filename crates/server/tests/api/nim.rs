//! The NIM server API under `/nimserver`: NIM's CheckSum authentication, its envelope and codes, accounts,
//! messages, teams, history, and robots answering through the bot runtime (the seed's own request).

use std::time::Duration;

use confab_llm::fake::{Behaviour, FakeProvider};
use confab_llm::{ProviderConfig, ProviderKind};
use serde_json::{Value, json};
use sha1::{Digest, Sha1};

use crate::helpers::*;

pub(crate) const APP_KEY: &str = "go9dnk4test0803mgq3";
pub(crate) const APP_SECRET: &str = "a-test-app-secret-0123456789";
const ROBOT_TEXT: &str = "Hello from the robot.";

pub(crate) fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn now_ms() -> i64 {
    now_secs() * 1000
}

pub(crate) fn checksum(secret: &str, nonce: &str, cur_time: &str) -> String {
    let mut h = Sha1::new();
    h.update(format!("{secret}{nonce}{cur_time}").as_bytes());
    hex::encode(h.finalize())
}

/// A signed NIM request: `(HTTP status, body)`. Every answer must be HTTP 200 JSON.
pub(crate) async fn nim_signed(
    app: &TestApp,
    path: &str,
    form: &str,
    nonce: &str,
    cur_time: i64,
    secret: &str,
) -> (u16, Value) {
    let t = cur_time.to_string();
    let r = app
        .http
        .post(app.url(path))
        .header("AppKey", APP_KEY)
        .header("Nonce", nonce)
        .header("CurTime", &t)
        .header("CheckSum", checksum(secret, nonce, &t))
        .header("Content-Type", "application/x-www-form-urlencoded;charset=utf-8")
        .body(form.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/json; charset=utf-8"
    );
    (status, r.json().await.unwrap())
}

pub(crate) fn fresh_nonce() -> String {
    format!("n{}", rand_u64())
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish()
}

/// A correctly signed request; asserts HTTP 200 and returns the body.
pub(crate) async fn nim(app: &TestApp, path: &str, form: &str) -> Value {
    let (s, v) = nim_signed(app, path, form, &fresh_nonce(), now_secs(), APP_SECRET).await;
    assert_eq!(s, 200, "{v}");
    v
}

/// A correctly signed request that must succeed (`code` 200); returns the body.
async fn nim_ok(app: &TestApp, path: &str, form: &str) -> Value {
    let v = nim(app, path, form).await;
    assert_eq!(v["code"], 200, "{v}");
    v
}

pub(crate) fn enc(v: &str) -> String {
    // Form encoding of a value (JSON arrays and bodies).
    let mut out = String::new();
    for b in v.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

async fn nim_app() -> (TestApp, FakeProvider) {
    let fake = FakeProvider::start().await;
    fake.set_default(Behaviour::success(ROBOT_TEXT));
    let mut p = ProviderConfig::new("fake", ProviderKind::OpenAiCompatible);
    p.base_url = Some(fake.openai_base_url());
    p.model = Some("fake-model".into());
    let app = spawn_app_with(|c| {
        c.providers = vec![p];
        c.limits.user_send_burst = 100;
        c.bot_runtime.save_interval_ms = 20;
        c.nim.app_key = APP_KEY.into();
        c.nim.app_secret = APP_SECRET.into();
    })
    .await;
    let (s, v) = app
        .admin(
            "POST",
            "/api/v1/bots",
            Some(json!({"id": "robot", "nickname": "Robot", "settings": {"provider": "fake"}})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    (app, fake)
}

async fn create_account(app: &TestApp, accid: &str) -> String {
    let v = nim(
        app,
        "/nimserver/user/create.action",
        &format!("accid={accid}&name={accid}"),
    )
    .await;
    assert_eq!(v["code"], 200, "{v}");
    v["info"]["token"].as_str().unwrap().to_string()
}

/// Polls a history endpoint until a complete message from `robot` with the fake's text is there.
async fn robot_reply_in(app: &TestApp, path: &str, form: &str) -> Value {
    for _ in 0..200 {
        let v = nim(app, path, form).await;
        assert_eq!(v["code"], 200, "{v}");
        if let Some(m) = v["msgs"].as_array().unwrap().iter().find(|m| m["from"] == "robot")
            && m["body"]["msg"] == ROBOT_TEXT
        {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no robot reply through {path}");
}

#[tokio::test]
async fn nim_the_seed_request_reaches_the_robot() {
    let (app, fake) = nim_app().await;
    create_account(&app, "zhangsan").await;
    let list_token = create_account(&app, "list").await;
    // `list` is online with its NIM token: the robot's reply streams to it.
    let mut ws = app.ws(&list_token, json!({})).await;
    // The seed's request, byte for byte except host and credentials.
    let r = app
        .http
        .post(app.url("/nimserver/msg/sendMsg.action"))
        .header("AppKey", APP_KEY)
        .header("Nonce", "4tggge23t23t")
        .header("CurTime", now_secs().to_string())
        .header(
            "CheckSum",
            checksum(APP_SECRET, "4tggge23t23t", &now_secs().to_string()),
        )
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(r#"from=zhangsan&ope=0&to=list&type=0&body={"msg":"hello"}&robotAccount=robot"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], 200, "{v}");
    assert!(v["data"]["msgid"].is_i64(), "{v}");
    assert!(v["data"]["timetag"].as_i64().unwrap() > 0);
    assert_eq!(v["data"]["antispam"], false);
    let streamed = follow_streamed_reply(&mut ws, "robot", Duration::from_secs(10)).await;
    assert_eq!(streamed.streamed, ROBOT_TEXT);
    assert_eq!(streamed.fin["reply"]["state"], "complete");

    // The robot answers in that conversation; both directions of the session are in its history.
    let form = format!(
        "from=zhangsan&to=list&begintime=0&endtime={}&limit=100&reverse=1",
        now_ms() + 60_000
    );
    let h = robot_reply_in(&app, "/nimserver/history/querySessionMsg.action", &form).await;
    let msgs = h["msgs"].as_array().unwrap();
    assert_eq!(h["size"], msgs.len());
    assert_eq!(msgs[0]["from"], "zhangsan");
    assert_eq!(msgs[0]["body"], json!({"msg": "hello"}));
    assert_eq!(msgs[0]["msgid"], v["data"]["msgid"]);
    assert_eq!(msgs[0]["type"], 0);
    assert_eq!(msgs[1]["from"], "robot");
    assert!(msgs[0]["sendtime"].as_i64().unwrap() <= msgs[1]["sendtime"].as_i64().unwrap());
    let sent = &fake.requests()[0];
    assert!(sent.messages().iter().any(|(_, c)| c.contains("hello")));

    // Without robotAccount a private message between two users reaches no robot.
    let send = "/msg/sendMsg.action";
    nim_ok(&app, send, "from=list&ope=0&to=zhangsan&type=0&body={'msg': 'plain'}").await;
    // Newest first by default.
    let v = nim(
        &app,
        "/nimserver/history/querySessionMsg.action",
        &format!(
            "from=list&to=zhangsan&begintime=0&endtime={}&limit=1",
            now_ms() + 60_000
        ),
    )
    .await;
    assert_eq!(v["msgs"][0]["body"]["msg"], "plain", "{v}");
    // The runtime takes messages in commit order and shows a reply before calling the provider: the next
    // robot reply in this conversation answers a later request, and no call was made for the plain message.
    let form = "from=list&ope=0&to=zhangsan&type=0&body={'msg': 'robot, again'}&robotAccount=robot";
    let v = nim_ok(&app, send, form).await;
    let streamed = follow_streamed_reply(&mut ws, "robot", Duration::from_secs(10)).await;
    assert_eq!(
        streamed.fin["reply"]["trigger_id"], v["data"]["msgid"],
        "{}",
        streamed.fin
    );
    assert_eq!(streamed.fin["reply"]["state"], "complete");
    assert_eq!(fake.request_count(), 2);
    assert!(fake.requests()[1].text().contains("robot, again"));
}

#[tokio::test]
async fn nim_authentication_failures_are_414_with_http_200() {
    let (app, _fake) = nim_app().await;
    let path = "/nimserver/user/getUinfos.action";
    let form = "accids=%5B%22nobody%22%5D";
    let t = now_secs();
    let (s, v) = nim_signed(&app, path, form, "once", t, APP_SECRET).await;
    assert_eq!((s, v["code"].as_i64()), (200, Some(200)), "{v}");
    let (s, v) = nim_signed(&app, path, form, "once", t, APP_SECRET).await;
    assert_eq!((s, v["code"].as_i64()), (200, Some(431)), "a repeated request: {v}");
    assert!(v["desc"].as_str().unwrap().contains("repeated"));
    let (_, v) = nim_signed(&app, path, form, &fresh_nonce(), now_secs(), "wrong-secret").await;
    assert_eq!((v["code"].as_i64(), v["desc"].as_str()), (Some(414), Some("checksum")));
    let (_, v) = nim_signed(&app, path, form, &fresh_nonce(), now_secs() - 301, APP_SECRET).await;
    assert_eq!(
        (v["code"].as_i64(), v["desc"].as_str()),
        (Some(414), Some("CurTime is expired"))
    );
    let (_, v) = nim_signed(&app, path, form, &fresh_nonce(), now_secs() + 301, APP_SECRET).await;
    assert_eq!(v["code"], 414);
    let r = app
        .http
        .post(app.url(path))
        .header("AppKey", "other")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!((v["code"].as_i64(), v["desc"].as_str()), (Some(414), Some("appkey")));
    let v = nim(&app, "/nimserver/user/nothing.action", "").await;
    assert_eq!(v["code"], 404);
}

#[tokio::test]
async fn nim_accounts_and_their_tokens() {
    let (app, _fake) = nim_app().await;
    let v = nim(
        &app,
        "/nimserver/user/create.action",
        "accid=Wang.Wu&name=Wang&icon=http%3A%2F%2Fx%2Fa.png&gender=1&ex=%7B%7D&token=chosen-token-1",
    )
    .await;
    assert_eq!(v["code"], 200, "{v}");
    assert_eq!(
        v["info"],
        json!({"token": "chosen-token-1", "accid": "wang.wu", "name": "Wang"})
    );
    let v = nim(&app, "/nimserver/user/create.action", "accid=wang.wu").await;
    assert_eq!(
        (v["code"].as_i64(), v["desc"].as_str()),
        (Some(414), Some("already register"))
    );
    for bad in [
        "accid=has%20space",
        "accid=",
        "name=x",
        "accid=a&gender=7",
        &format!("accid={}", "x".repeat(33)),
    ] {
        let v = nim(&app, "/nimserver/user/create.action", bad).await;
        assert_eq!(v["code"], 414, "{bad}: {v}");
    }
    // The NIM token is a session token: it opens the WebSocket and the native API.
    let mut ws = app.ws("chosen-token-1", json!({})).await;
    drop(ws.close(None).await);
    let (s, _) = app.call("GET", "/api/v1/users/wang.wu", "chosen-token-1", None).await;
    assert_eq!(s, 200);
    let v = nim(&app, "/nimserver/user/refreshToken.action", "accid=wang.wu").await;
    let fresh = v["info"]["token"].as_str().unwrap().to_string();
    assert_eq!(v["info"]["accid"], "wang.wu");
    let (s, _) = app.call("GET", "/api/v1/users/wang.wu", "chosen-token-1", None).await;
    assert_eq!(s, 401, "the old token is revoked");
    let (s, _) = app.call("GET", "/api/v1/users/wang.wu", &fresh, None).await;
    assert_eq!(s, 200);
    let v = nim(
        &app,
        "/nimserver/user/update.action",
        "accid=wang.wu&token=another-token-2",
    )
    .await;
    assert_eq!(v["code"], 200, "{v}");
    let (s, _) = app.call("GET", "/api/v1/users/wang.wu", "another-token-2", None).await;
    assert_eq!(s, 200);
    let v = nim(
        &app,
        "/nimserver/user/getUinfos.action",
        &format!("accids={}", enc(r#"["wang.wu","ghost"]"#)),
    )
    .await;
    assert_eq!(v["uinfos"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["uinfos"][0]["gender"], 1);
    assert_eq!(v["uinfos"][0]["icon"], "http://x/a.png");
    let v = nim(&app, "/nimserver/user/getUinfos.action", "accids=notjson").await;
    assert_eq!(v["code"], 414);

    // Blocked: tokens revoked, no new ones, messages refused; unblocked: back to normal.
    create_account(&app, "peer").await;
    let mut online = app.ws("another-token-2", json!({})).await;
    let v = nim(&app, "/nimserver/user/block.action", "accid=wang.wu&needkick=true").await;
    assert_eq!(v["code"], 200, "{v}");
    assert_eq!(
        close_code(&mut online, Duration::from_secs(5)).await,
        Some(4003),
        "an open session is closed"
    );
    let (s, _) = app.call("GET", "/api/v1/users/wang.wu", "another-token-2", None).await;
    assert_eq!(s, 401);
    let v = nim(&app, "/nimserver/user/refreshToken.action", "accid=wang.wu").await;
    assert_eq!(v["code"], 403, "{v}");
    let send = format!("from=wang.wu&ope=0&to=peer&type=0&body={}", enc(r#"{"msg":"hi"}"#));
    let v = nim(&app, "/nimserver/msg/sendMsg.action", &send).await;
    assert_eq!(v["code"], 403, "{v}");
    let v = nim(
        &app,
        "/nimserver/user/getUinfos.action",
        &format!("accids={}", enc(r#"["wang.wu"]"#)),
    )
    .await;
    assert_eq!(v["uinfos"][0]["valid"], false);
    let v = nim(&app, "/nimserver/user/unblock.action", "accid=wang.wu").await;
    assert_eq!(v["code"], 200, "{v}");
    let v = nim(&app, "/nimserver/msg/sendMsg.action", &send).await;
    assert_eq!(v["code"], 200, "{v}");
    let v = nim(&app, "/nimserver/user/block.action", "accid=ghost").await;
    assert_eq!(v["code"], 404, "{v}");
}

#[tokio::test]
async fn nim_teams_history_and_a_robot_named_in_a_team() {
    let (app, fake) = nim_app().await;
    for a in ["owner1", "member1", "member2", "outsider"] {
        create_account(&app, a).await;
    }
    let v = nim(
        &app,
        "/nimserver/team/create.action",
        &format!(
            "tname=Team&owner=owner1&members={}&msg=join&magree=0&joinmode=0",
            enc(r#"["member1","ghost"]"#)
        ),
    )
    .await;
    assert_eq!(v["code"], 200, "{v}");
    let tid = v["tid"].as_i64().expect("numeric tid").to_string();
    assert_eq!(v["faccid"]["accid"], json!(["ghost"]));
    let v = nim(
        &app,
        "/nimserver/team/add.action",
        &format!("tid={tid}&owner=member1&members={}", enc(r#"["member2"]"#)),
    )
    .await;
    assert_eq!(v["code"], 802, "only the owner adds: {v}");
    let v = nim(
        &app,
        "/nimserver/team/add.action",
        &format!(
            "tid={tid}&owner=owner1&members={}&msg=hi&magree=0",
            enc(r#"["member2"]"#)
        ),
    )
    .await;
    assert_eq!(v["code"], 200, "{v}");
    let v = nim(
        &app,
        "/nimserver/team/query.action",
        &format!("tids={}&ope=1", enc(&format!(r#"["{tid}","1"]"#))),
    )
    .await;
    let t = &v["tinfos"][0];
    assert_eq!(v["tinfos"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(
        (t["tname"].as_str(), t["owner"].as_str(), t["size"].as_i64()),
        (Some("Team"), Some("owner1"), Some(3))
    );
    let mut members: Vec<&str> = t["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    members.sort();
    assert_eq!(members, ["member1", "member2"]);

    let v = nim(
        &app,
        "/nimserver/msg/sendMsg.action",
        &format!(
            "from=outsider&ope=1&to={tid}&type=0&body={}",
            enc(r#"{"msg":"let me in"}"#)
        ),
    )
    .await;
    assert_eq!(v["code"], 804, "{v}");
    let v = nim(
        &app,
        "/nimserver/msg/sendMsg.action",
        &format!("from=member1&ope=1&to=99&type=0&body={}", enc(r#"{"msg":"x"}"#)),
    )
    .await;
    assert_eq!(v["code"], 803, "{v}");
    // The robot is not a team member: naming it in robotAccount is what makes it answer.
    let v = nim(
        &app,
        "/nimserver/msg/sendMsg.action",
        &format!("from=member1&ope=1&to={tid}&type=0&body={}&robotAccount=robot&robotTopic=weather&forcepushlist={}&unknownParam=1",
            enc(r#"{"msg":"robot, hi"}"#), enc(r#"["member2"]"#)),
    )
    .await;
    assert_eq!(v["code"], 200, "{v}");
    let form = format!(
        "tid={tid}&accid=member2&begintime=0&endtime={}&limit=10&reverse=1",
        now_ms() + 60_000
    );
    let h = robot_reply_in(&app, "/nimserver/history/queryTeamMsg.action", &form).await;
    assert_eq!(h["msgs"][0]["from"], "member1");
    assert_eq!(fake.request_count(), 1);
    let v = nim(
        &app,
        "/nimserver/history/queryTeamMsg.action",
        &form.replace("accid=member2", "accid=outsider"),
    )
    .await;
    assert_eq!(v["code"], 804);

    // Custom messages keep their body and type; `type` filters history.
    let v = nim(
        &app,
        "/nimserver/msg/sendMsg.action",
        &format!(
            "from=member2&ope=1&to={tid}&type=100&body={}",
            enc(r#"{"card":{"id":7}}"#)
        ),
    )
    .await;
    assert_eq!(v["code"], 200, "{v}");
    let custom_id = v["data"]["msgid"].as_i64().unwrap();
    let timetag = v["data"]["timetag"].as_i64().unwrap();
    let v = nim(
        &app,
        "/nimserver/history/queryTeamMsg.action",
        &format!("{form}&type=100"),
    )
    .await;
    assert_eq!(v["msgs"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["msgs"][0]["body"], json!({"card": {"id": 7}}));
    // Recall (type 8 in a team): gone from history.
    let v = nim(
        &app,
        "/nimserver/msg/recall.action",
        &format!("deleteMsgid={custom_id}&timetag={timetag}&type=8&from=member2&to={tid}"),
    )
    .await;
    assert_eq!(v["code"], 200, "{v}");
    let v = nim(
        &app,
        "/nimserver/history/queryTeamMsg.action",
        &format!("{form}&type=100"),
    )
    .await;
    assert_eq!(v["size"], 0, "{v}");

    for (form, code) in [
        (format!("tid={tid}&accid=member2&begintime=5&endtime=5&limit=10"), 414),
        (format!("tid={tid}&accid=member2&begintime=0&endtime=5&limit=101"), 414),
        (
            format!("tid={tid}&accid=member2&begintime=0&endtime=5&limit=10&reverse=3"),
            414,
        ),
    ] {
        let v = nim(&app, "/nimserver/history/queryTeamMsg.action", &form).await;
        assert_eq!(v["code"], code, "{form}: {v}");
    }
    let v = nim(
        &app,
        "/nimserver/team/kick.action",
        &format!("tid={tid}&owner=owner1&member=outsider"),
    )
    .await;
    assert_eq!(v["code"], 804, "{v}");
    let v = nim(
        &app,
        "/nimserver/team/kick.action",
        &format!("tid={tid}&owner=owner1&member=member2"),
    )
    .await;
    assert_eq!(v["code"], 200, "{v}");
    let v = nim(
        &app,
        "/nimserver/team/remove.action",
        &format!("tid={tid}&owner=member1"),
    )
    .await;
    assert_eq!(v["code"], 802, "{v}");
    let v = nim(
        &app,
        "/nimserver/team/remove.action",
        &format!("tid={tid}&owner=owner1"),
    )
    .await;
    assert_eq!(v["code"], 200, "{v}");
    let v = nim(
        &app,
        "/nimserver/team/query.action",
        &format!("tids={}", enc(&format!(r#"["{tid}"]"#))),
    )
    .await;
    assert_eq!(v["tinfos"], json!([]));
}

#[tokio::test]
async fn nim_send_validations_and_batches() {
    let (app, _fake) = nim_app().await;
    create_account(&app, "sa").await;
    create_account(&app, "sb").await;
    let body = enc(r#"{"msg":"hi"}"#);
    for (form, code) in [
        (format!("from=sa&ope=2&to=sb&type=0&body={body}"), 414),
        (format!("from=sa&ope=0&to=sb&type=5&body={body}"), 414),
        ("from=sa&ope=0&to=sb&type=0".to_string(), 414),
        (
            format!(
                "from=sa&ope=0&to=sb&type=0&body={}",
                enc(&format!(r#"{{"msg":"{}"}}"#, "x".repeat(5000)))
            ),
            414,
        ),
        ("from=sa&ope=0&to=sb&type=0&body=%7Bnot".to_string(), 414),
        (format!("from=ghost&ope=0&to=sb&type=0&body={body}"), 404),
        (format!("from=sa&ope=0&to=ghost&type=0&body={body}"), 404),
        (
            format!("from=sa&ope=0&to=sb&type=0&body={body}&robotAccount=ghost"),
            404,
        ),
    ] {
        let v = nim(&app, "/nimserver/msg/sendMsg.action", &form).await;
        assert_eq!(v["code"], code, "{form}: {v}");
    }
    let v = nim(
        &app,
        "/nimserver/msg/sendMsg.action",
        &format!(
            "from=sa&ope=0&to=sb&type=4&body={}",
            enc(r#"{"title":"here","lng":1.5,"lat":2.5}"#)
        ),
    )
    .await;
    assert_eq!(v["code"], 200, "{v}");
    let v = nim(
        &app,
        "/nimserver/msg/sendBatchMsg.action",
        &format!(
            "fromAccid=sa&toAccids={}&type=0&body={body}&returnMsgid=true",
            enc(r#"["sb","ghost"]"#)
        ),
    )
    .await;
    assert_eq!(v["code"], 200, "{v}");
    assert_eq!(v["unregister"], json!(["ghost"]));
    assert!(v["msgids"]["sb"].is_i64(), "{v}");
    let h = nim(
        &app,
        "/nimserver/history/querySessionMsg.action",
        &format!(
            "from=sb&to=sa&begintime=0&endtime={}&limit=10&reverse=1",
            now_ms() + 60_000
        ),
    )
    .await;
    let types: Vec<i64> = h["msgs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["type"].as_i64().unwrap())
        .collect();
    assert_eq!(types, [4, 0], "{h}");
    assert_eq!(h["msgs"][0]["body"]["title"], "here");
}

#[tokio::test]
async fn nim_message_copies_carry_a_verifiable_checksum() {
    use md5::Md5;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(axum::http::HeaderMap, axum::body::Bytes)>();
    let receiver = axum::Router::new().route(
        "/copy",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((headers, body));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/copy", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, receiver).await.unwrap() });
    let fake = FakeProvider::start().await;
    fake.set_default(Behaviour::success(ROBOT_TEXT));
    let mut p = ProviderConfig::new("fake", ProviderKind::OpenAiCompatible);
    p.base_url = Some(fake.openai_base_url());
    let app = spawn_app_with(|c| {
        c.providers = vec![p];
        c.nim.app_key = APP_KEY.into();
        c.nim.app_secret = APP_SECRET.into();
        c.nim.webhook_url = url;
        c.webhooks.allow_private = vec!["127.0.0.1".into()];
    })
    .await;
    create_account(&app, "ca").await;
    create_account(&app, "cb").await;
    let v = nim(
        &app,
        "/nimserver/msg/sendMsg.action",
        &format!("from=ca&ope=0&to=cb&type=0&body={}", enc(r#"{"msg":"copied"}"#)),
    )
    .await;
    let (headers, body) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    let header = |n: &str| headers.get(n).unwrap().to_str().unwrap().to_string();
    // The receiver's check, as NIM documents it.
    let md5 = hex::encode(Md5::digest(&body));
    assert_eq!(header("md5"), md5);
    assert_eq!(header("appkey"), APP_KEY);
    assert_eq!(header("checksum"), checksum(APP_SECRET, &md5, &header("curtime")));
    let copy: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(copy["eventType"], "1");
    assert_eq!(copy["convType"], "PERSON");
    assert_eq!(copy["fromAccount"], "ca");
    assert_eq!(copy["to"], "cb");
    assert_eq!(copy["msgType"], "TEXT");
    assert_eq!(copy["body"], "copied");
    assert_eq!(copy["msgidServer"], v["data"]["msgid"].as_i64().unwrap().to_string());
}

#[tokio::test]
async fn nim_private_messages_to_robots_and_their_message_context() {
    let (app, fake) = nim_app().await;
    create_account(&app, "asker").await;
    let (s, v) = app
        .admin(
            "POST",
            "/api/v1/bots",
            Some(json!({"id": "helper", "settings": {"provider": "fake", "message_context": true}})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let hello = enc(r#"{"msg":"what now?"}"#);
    // A robot whose configuration takes the message's context: topic and custom content reach its
    // instructions.
    let v = nim(
        &app,
        "/nimserver/msg/sendMsg.action",
        &format!(
            "from=asker&ope=0&to=helper&type=0&body={hello}&robotTopic=weather&robotCustomContent=Reply%20in%20haiku."
        ),
    )
    .await;
    assert_eq!(v["code"], 200, "{v}");
    let form = format!(
        "from=asker&to=helper&begintime=0&endtime={}&limit=10&reverse=1",
        now_ms() + 60_000
    );
    let h = nim(&app, "/nimserver/history/querySessionMsg.action", &form).await;
    assert_eq!(h["msgs"][0]["from"], "asker");
    for _ in 0..200 {
        if fake.request_count() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let sent = fake.requests()[0].text();
    assert!(sent.contains("weather") && sent.contains("Reply in haiku."), "{sent}");
    // The default robot ignores them: its instructions are its own.
    let v = nim(
        &app,
        "/nimserver/msg/sendMsg.action",
        &format!("from=asker&ope=0&to=robot&type=0&body={hello}&robotTopic=overridden-topic"),
    )
    .await;
    assert_eq!(v["code"], 200, "{v}");
    let form = format!(
        "from=robot&to=asker&begintime=0&endtime={}&limit=10&reverse=1",
        now_ms() + 60_000
    );
    robot_reply_in(&app, "/nimserver/history/querySessionMsg.action", &form).await;
    let sent = fake.requests()[1].text();
    assert!(
        sent.contains("what now?") && !sent.contains("overridden-topic"),
        "{sent}"
    );
}

#[tokio::test]
async fn nim_rate_and_team_size_limits() {
    let app = spawn_app_with(|c| {
        c.nim.app_key = APP_KEY.into();
        c.nim.app_secret = APP_SECRET.into();
        c.nim.sends_per_sec = 2;
        c.limits.max_channel_members = 3;
    })
    .await;
    for a in ["r1", "r2", "r3", "r4"] {
        create_account(&app, a).await;
    }
    let send = format!("from=r1&ope=0&to=r2&type=0&body={}", enc(r#"{"msg":"x"}"#));
    let mut codes = Vec::new();
    for _ in 0..4 {
        codes.push(
            nim(&app, "/nimserver/msg/sendMsg.action", &send).await["code"]
                .as_i64()
                .unwrap(),
        );
    }
    assert!(codes.contains(&416), "beyond 2 calls a second: {codes:?}");
    assert_eq!(codes[0], 200);
    let v = nim(
        &app,
        "/nimserver/team/create.action",
        &format!("tname=T&owner=r1&members={}", enc(r#"["r2","r3","r4"]"#)),
    )
    .await;
    assert_eq!(v["code"], 801, "{v}");
    let v = nim(
        &app,
        "/nimserver/team/create.action",
        &format!("tname=T&owner=r1&members={}", enc(r#"["r2","r3"]"#)),
    )
    .await;
    let tid = v["tid"].as_i64().expect("created").to_string();
    let v = nim(
        &app,
        "/nimserver/team/add.action",
        &format!("tid={tid}&owner=r1&members={}", enc(r#"["r4"]"#)),
    )
    .await;
    assert_eq!(v["code"], 801, "{v}");
}
