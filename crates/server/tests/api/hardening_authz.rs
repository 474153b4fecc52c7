//! Issue 15, authorization and compatibility: which key variables API-added providers may name, NIM's
//! credentials and replay rules, the direct-channel id space, who may delete a direct channel, retries of a
//! removed member, what a user session sees of other users, and two Sendbird answers.

use confab_llm::fake::{Behaviour, FakeProvider};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::nim::{APP_KEY, checksum, enc, fresh_nonce, now_secs};
use crate::sendbird::{error_of, sb};

/// NIM's own app secrets are 12 hexadecimal characters.
const NIM_SECRET_12: &str = "0a1b2c3d4e5f";

fn problem_message(v: &Value) -> &str {
    v["error"]["message"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn api_added_providers_may_only_name_allowed_key_variables() {
    let fake = FakeProvider::start().await;
    fake.set_default(Behaviour::success("ok"));
    let app = spawn_app_with(|c| {
        c.egress.allow_private = vec!["127.0.0.1".into()];
        c.provider_api.api_key_env_allow = vec!["CONFAB_TEST_ALLOWED_ONE_BY_ONE".into()];
    })
    .await;
    // SAFETY: set once before use; no other test reads these variables.
    unsafe {
        std::env::set_var("CONFAB_TEST_SERVER_SECRET_H15", "server-secret-value");
        std::env::set_var("CONFAB_PROVIDER_KEY_H15", "sk-allowed-by-prefix");
        std::env::set_var("CONFAB_TEST_ALLOWED_ONE_BY_ONE", "sk-allowed-by-name");
    }
    let provider = |name: &str, var: &str| {
        json!({"name": name, "kind": "openai_compatible", "base_url": fake.openai_base_url(),
               "model": "m", "api_key_env": var})
    };
    for var in [
        "CONFAB_TEST_SERVER_SECRET_H15",
        "CONFAB_NIM_APP_SECRET",
        "OPENAI_API_KEY",
        "PATH",
    ] {
        let (s, v) = app.admin("POST", "/api/v1/providers", Some(provider("p", var))).await;
        assert_eq!(s, 400, "{var}: {v}");
        let m = problem_message(&v);
        assert!(
            m.contains("CONFAB_PROVIDER_KEY_") && m.contains("[provider_api]"),
            "{m}"
        );
    }
    // A file on the server's disk is the operator's to name too.
    let mut with_path = provider("p", "CONFAB_PROVIDER_KEY_H15");
    with_path["model_path"] = json!("/etc/passwd");
    let (s, v) = app.admin("POST", "/api/v1/providers", Some(with_path)).await;
    assert_eq!(s, 400, "{v}");

    let (s, v) = app
        .admin(
            "POST",
            "/api/v1/providers",
            Some(provider("by-prefix", "CONFAB_PROVIDER_KEY_H15")),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = app
        .admin(
            "POST",
            "/api/v1/providers",
            Some(provider("by-name", "CONFAB_TEST_ALLOWED_ONE_BY_ONE")),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (_, list) = app.admin("GET", "/api/v1/providers", None).await;
    let text = list.to_string();
    assert!(
        !text.contains("sk-allowed") && !text.contains("server-secret"),
        "{text}"
    );
    let listed: Vec<(&str, bool)> = list["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["api_key_set"].as_bool().unwrap()))
        .collect();
    assert_eq!(listed, [("by-name", true), ("by-prefix", true)]);
}

/// A NIM request signed with `secret`, its CurTime given as written: `(code, desc)` of NIM's envelope.
async fn nim_raw(app: &TestApp, path: &str, form: &str, nonce: &str, cur_time: &str, sum: &str) -> (i64, String) {
    let r = app
        .http
        .post(app.url(path))
        .header("AppKey", APP_KEY)
        .header("Nonce", nonce)
        .header("CurTime", cur_time)
        .header("CheckSum", sum)
        .header("Content-Type", "application/x-www-form-urlencoded;charset=utf-8")
        .body(form.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    (
        v["code"].as_i64().unwrap(),
        v["desc"].as_str().unwrap_or_default().to_string(),
    )
}

async fn nim_app_12() -> TestApp {
    spawn_app_with(|c| {
        c.nim.app_key = APP_KEY.into();
        c.nim.app_secret = NIM_SECRET_12.into();
    })
    .await
}

#[tokio::test]
async fn nim_real_secrets_shared_nonces_and_repeated_requests() {
    // The server starts with NIM's own 12-character secret and accepts requests signed with it.
    let app = nim_app_12().await;
    let path = "/nimserver/user/create.action";
    let t = now_secs().to_string();
    let sum = checksum(NIM_SECRET_12, "fixed-nonce", &t);
    for accid in ["alice", "bob"] {
        let (code, desc) = nim_raw(&app, path, &format!("accid={accid}"), "fixed-nonce", &t, &sum).await;
        assert_eq!(code, 200, "one nonce for every request, as some libraries send: {desc}");
    }
    // The same request again (nonce, time, checksum and body) is NIM's repeated request.
    let (code, desc) = nim_raw(&app, path, "accid=alice", "fixed-nonce", &t, &sum).await;
    assert_eq!(code, 431, "{desc}");
    let (code, _) = nim_raw(&app, path, "accid=alice", "fixed-nonce", &t, &sum.to_uppercase()).await;
    assert_eq!(code, 431, "the CheckSum's case makes no other request");
    // A captured CheckSum moved to another nonce by shifting a digit into CurTime is refused.
    let nonce = format!("{}0", fresh_nonce());
    let sum = checksum(NIM_SECRET_12, &nonce, &t);
    let (code, desc) = nim_raw(&app, path, "accid=carol", &nonce, &t, &sum).await;
    assert_eq!(code, 200, "{desc}");
    let shifted = &nonce[..nonce.len() - 1];
    for cur_time in [format!("0{t}"), format!("+{t}"), format!("{t}.0")] {
        let (code, desc) = nim_raw(&app, path, "accid=dave", shifted, &cur_time, &sum).await;
        assert_eq!(code, 414, "{cur_time}: {desc}");
        assert!(desc.starts_with("CurTime"), "{desc}");
    }
}

#[tokio::test]
async fn nim_replay_memory_is_bounded_and_never_forgets_a_live_request() {
    let app = spawn_app_with(|c| {
        c.nim.app_key = APP_KEY.into();
        c.nim.app_secret = NIM_SECRET_12.into();
        c.nim.replay_memory = 2;
    })
    .await;
    let path = "/nimserver/user/getUinfos.action";
    let t = now_secs().to_string();
    let sum = checksum(NIM_SECRET_12, "n", &t);
    for accids in ["a", "b"] {
        let form = format!("accids={}", enc(&format!("[\"{accids}\"]")));
        let (code, desc) = nim_raw(&app, path, &form, "n", &t, &sum).await;
        assert_eq!(code, 200, "{desc}");
    }
    // Full: a new request is refused as rate limited, and the remembered ones are still refused as repeats.
    let (code, desc) = nim_raw(&app, path, &format!("accids={}", enc("[\"c\"]")), "n", &t, &sum).await;
    assert_eq!(code, 416, "{desc}");
    let (code, desc) = nim_raw(&app, path, &format!("accids={}", enc("[\"a\"]")), "n", &t, &sum).await;
    assert_eq!(code, 431, "{desc}");
}

#[tokio::test]
async fn nim_secrets_shorter_than_twelve_characters_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = confab::Config {
        data_dir: dir.path().to_path_buf(),
        ..confab::Config::default()
    };
    config.builtin.enabled = false;
    config.nim.app_key = APP_KEY.into();
    config.nim.app_secret = "0a1b2c3d4e5".into();
    let e = confab::App::build(config, MASTER).await.err().expect("refused");
    assert!(e.to_string().contains("at least 12"), "{e}");
}

#[tokio::test]
async fn group_ids_of_the_direct_space_are_refused_on_every_surface() {
    let app = nim_app_12().await;
    let alice = app.user("alice").await;
    app.user("bob").await;
    let carol = app.user("carol").await;
    let squat = json!({"kind": "group", "id": "dm.alice.bob", "user_ids": ["carol"]});
    let (s, v) = app.call("POST", "/api/v1/channels", &carol, Some(squat.clone())).await;
    assert_eq!(s, 400, "{v}");
    assert!(problem_message(&v).contains("reserved for direct channels"), "{v}");
    let (s, v) = app.admin("POST", "/api/v1/channels", Some(squat)).await;
    assert_eq!(s, 400, "the application cannot either: {v}");
    let (s, v) = sb(
        &app,
        "POST",
        "/v3/group_channels",
        Some(json!({"channel_url": "dm.alice.bob", "user_ids": ["carol"]})),
    )
    .await;
    assert_eq!(error_of(s, &v), (400, 400111), "{v}");
    // So the direct channel stays theirs, natively and through NIM (ope=0).
    let dm = app.direct_with(&alice, "bob").await;
    assert_eq!(dm, "dm.alice.bob");
    app.send_as(&alice, &dm, "hi bob").await;
    let t = now_secs().to_string();
    let nonce = fresh_nonce();
    let form = format!("from=bob&ope=0&to=alice&type=0&body={}", enc(r#"{"msg":"hi alice"}"#));
    let sum = checksum(NIM_SECRET_12, &nonce, &t);
    let (code, desc) = nim_raw(&app, "/nimserver/msg/sendMsg.action", &form, &nonce, &t, &sum).await;
    assert_eq!(code, 200, "{desc}");
}

#[tokio::test]
async fn a_direct_channel_is_deleted_by_the_application_only() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let dm = app.direct_with(&alice, "bob").await;
    app.send_as(&bob, &dm, "our history").await;
    for token in [&alice, &bob] {
        let (s, v) = app.call("DELETE", &format!("/api/v1/channels/{dm}"), token, None).await;
        assert_eq!(s, 403, "{v}");
        let (s, v) = app
            .call(
                "PATCH",
                &format!("/api/v1/channels/{dm}"),
                token,
                Some(json!({"name": "mine"})),
            )
            .await;
        assert_eq!(s, 403, "{v}");
    }
    let (s, v) = app
        .call("GET", &format!("/api/v1/channels/{dm}/messages"), &bob, None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["messages"].as_array().unwrap().len(), 1, "{v}");
    // A member may leave it instead (nobody removes the other); opening it again brings them back.
    let (s, v) = app
        .call("DELETE", &format!("/api/v1/channels/{dm}/members/alice"), &bob, None)
        .await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = app
        .call("POST", &format!("/api/v1/channels/{dm}/leave"), &alice, None)
        .await;
    assert_eq!(s, 204, "{v}");
    let (s, v) = app
        .call("GET", &format!("/api/v1/channels/{dm}/messages"), &alice, None)
        .await;
    assert_eq!(s, 403, "{v}");
    app.send_as(&bob, &dm, "still here").await;
    assert_eq!(app.direct_with(&alice, "bob").await, dm);
    let (s, v) = app
        .call("GET", &format!("/api/v1/channels/{dm}/messages"), &alice, None)
        .await;
    assert_eq!((s, v["messages"].as_array().map(Vec::len)), (200, Some(2)), "{v}");
    let (s, v) = app.admin("DELETE", &format!("/api/v1/channels/{dm}"), None).await;
    assert_eq!(s, 204, "{v}");
}

#[tokio::test]
async fn a_removed_member_retrying_a_send_learns_nothing() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    app.user("bob").await;
    app.group("g", &["alice", "bob"]).await;
    app.group("h", &["alice"]).await;
    let body = json!({"text": "first words", "client_msg_id": "c-1"});
    let (s, sent) = app
        .call("POST", "/api/v1/channels/g/messages", &alice, Some(body.clone()))
        .await;
    assert_eq!(s, 201, "{sent}");
    let (s, again) = app
        .call("POST", "/api/v1/channels/g/messages", &alice, Some(body.clone()))
        .await;
    assert!(s == 200 || s == 201, "a retry of a member is answered: {s} {again}");
    assert_eq!(again["id"], sent["id"]);
    let (s, v) = app.admin("DELETE", "/api/v1/channels/g/members/alice", None).await;
    assert!(s == 200 || s == 204, "{v}");
    let (s, v) = app
        .call("POST", "/api/v1/channels/g/messages", &alice, Some(body.clone()))
        .await;
    assert_eq!(s, 403, "{v}");
    assert!(!v.to_string().contains("first words"), "{v}");
    // Nor through a channel they are still in.
    let (s, v) = app
        .call("POST", "/api/v1/channels/h/messages", &alice, Some(body))
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(!v.to_string().contains("first words"), "{v}");
}

#[tokio::test]
async fn a_user_session_sees_other_users_public_profile_only() {
    let app = nim_app_12().await;
    // NIM keeps e-mail, mobile and birth date in the metadata.
    let t = now_secs().to_string();
    let nonce = fresh_nonce();
    let form = "accid=alice&name=Alice&email=alice%40example.com&mobile=13800000000&birth=1990-01-01";
    let sum = checksum(NIM_SECRET_12, &nonce, &t);
    let (code, desc) = nim_raw(&app, "/nimserver/user/create.action", form, &nonce, &t, &sum).await;
    assert_eq!(code, 200, "{desc}");
    let (s, v) = app.admin("POST", "/api/v1/users/alice/sessions", None).await;
    assert_eq!(s, 201, "{v}");
    let alice = v["token"].as_str().unwrap().to_string();
    let bob = app.user("bob").await;
    app.group("g", &["alice", "bob"]).await;

    let (s, list) = app.call("GET", "/api/v1/users", &bob, None).await;
    assert_eq!(s, 200, "{list}");
    let seen = list["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["id"] == "alice")
        .unwrap()
        .clone();
    assert_eq!(seen["nickname"], "Alice");
    assert_eq!(seen["metadata"], json!({}), "{seen}");
    let (_, one) = app.call("GET", "/api/v1/users/alice", &bob, None).await;
    assert_eq!(
        (one["nickname"].as_str(), &one["metadata"]),
        (Some("Alice"), &json!({}))
    );
    let (_, members) = app.call("GET", "/api/v1/channels/g/members", &bob, None).await;
    for m in members["members"].as_array().unwrap() {
        assert_eq!(m["metadata"], json!({}), "{m}");
    }
    assert!(!members.to_string().contains("example.com"), "{members}");
    // The user themselves and the application see everything.
    let (_, own) = app.call("GET", "/api/v1/users/alice", &alice, None).await;
    assert_eq!(own["metadata"]["email"], "alice@example.com", "{own}");
    let (_, all) = app.admin("GET", "/api/v1/users/alice", None).await;
    assert_eq!(all["metadata"]["mobile"], "13800000000", "{all}");
}

#[tokio::test]
async fn sendbird_deleted_messages_and_bodies_that_are_not_objects() {
    let app = spawn_app().await;
    app.user("alice").await;
    let (s, v) = sb(
        &app,
        "POST",
        "/v3/group_channels",
        Some(json!({"channel_url": "room", "user_ids": ["alice"]})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, m) = sb(
        &app,
        "POST",
        "/v3/group_channels/room/messages",
        Some(json!({"message_type": "MESG", "user_id": "alice", "message": "soon gone"})),
    )
    .await;
    assert_eq!(s, 200, "{m}");
    let path = format!("/v3/group_channels/room/messages/{}", m["message_id"]);
    let (s, v) = sb(&app, "DELETE", &path, None).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = sb(&app, "GET", &path, None).await;
    assert_eq!(error_of(s, &v), (400, 400201), "{v}");

    let nested = format!("{}{}", "[".repeat(200), "]".repeat(200));
    for body in [
        nested.as_str(),
        "[]",
        "[null, null, null, null]",
        "\"alice\"",
        "7",
        "null",
    ] {
        for (method, path) in [("PUT", "/v3/users/alice"), ("POST", "/v3/users")] {
            let r = app
                .http
                .request(method.parse().unwrap(), app.url(path))
                .header("Api-Token", MASTER)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap();
            assert_eq!(error_of(status, &v), (400, 400105), "{method} {path} {body:.20}: {v}");
        }
    }
    let (_, u) = sb(&app, "GET", "/v3/users/alice", None).await;
    assert_eq!(u["user_id"], "alice");
}
