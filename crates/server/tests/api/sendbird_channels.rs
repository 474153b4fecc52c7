//! The Sendbird Platform API v3 surface: group channels and their messages under `/v3/group_channels`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

const JSON_UTF8: &str = "application/json; charset=utf-8";

/// Sends a request with the master token in `Api-Token`; a JSON body goes out as `application/json` (the
/// Python SDK's header). Every answer must be a JSON object with the charset spelled out.
async fn sb(app: &TestApp, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = app
        .http
        .request(method.parse().unwrap(), app.url(path))
        .header("api-token", MASTER);
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b.to_string());
    }
    read(req.send().await.unwrap(), &format!("{method} {path}")).await
}

async fn read(resp: reqwest::Response, what: &str) -> (u16, Value) {
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert_eq!(ct, JSON_UTF8, "{what}");
    let text = resp.text().await.unwrap();
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{what}: not JSON: {text:?}"));
    assert!(v.is_object(), "{what}: {v}");
    (status, v)
}

/// Asserts Sendbird's error shape and returns the code.
fn code(status: u16, v: &Value) -> i64 {
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"], true, "{v}");
    assert!(v["message"].is_string(), "{v}");
    v["code"].as_i64().expect("integer code")
}

fn no_nulls(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Object(o) => o.values().all(no_nulls),
        Value::Array(a) => a.iter().all(no_nulls),
        _ => true,
    }
}

async fn sb_user(app: &TestApp, id: &str) {
    let (s, v) = sb(
        app,
        "POST",
        "/v3/users",
        Some(json!({"user_id": id, "nickname": id.to_uppercase(), "profile_url": ""})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
}

async fn sb_channel(app: &TestApp, url: &str, users: &[&str]) -> Value {
    let (s, v) = sb(
        app,
        "POST",
        "/v3/group_channels",
        Some(json!({"user_ids": users, "channel_url": url})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v
}

async fn send(app: &TestApp, url: &str, body: Value) -> Value {
    let (s, v) = sb(app, "POST", &format!("/v3/group_channels/{url}/messages"), Some(body)).await;
    assert_eq!(s, 200, "{v}");
    assert!(no_nulls(&v), "{v}");
    v
}

async fn list(app: &TestApp, url: &str, query: &str) -> Vec<Value> {
    let (s, v) = sb(app, "GET", &format!("/v3/group_channels/{url}/messages?{query}"), None).await;
    assert_eq!(s, 200, "{query}: {v}");
    v["messages"].as_array().unwrap().clone()
}

fn texts(ms: &[Value]) -> Vec<&str> {
    ms.iter().map(|m| m["message"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn sendbird_group_channels_crud_and_errors() {
    let app = spawn_app().await;
    for u in ["alice", "bob", "carol"] {
        sb_user(&app, u).await;
    }

    // `users` (the Python SDK's form) and `user_ids` are merged and deduplicated.
    let data = "{\"topic\": \"launch\",  \"n\": 1}";
    let (s, ch) = sb(
        &app,
        "POST",
        "/v3/group_channels",
        Some(
            json!({"users": [{"user_id": "alice", "nickname": "ignored"}, {"user_id": "bob"}],
                    "user_ids": ["bob", "alice"], "channel_url": "team_room-1", "custom_type": "team",
                    "data": data, "cover_url": "https://x/c.png", "is_distinct": false,
                    "operator_ids": ["alice"], "inviter_id": "alice"}),
        ),
    )
    .await;
    assert_eq!(s, 200, "{ch}");
    assert!(no_nulls(&ch), "{ch}");
    assert_eq!(ch["channel_url"], "team_room-1");
    assert_eq!(ch["name"], "group channel");
    assert_eq!(ch["custom_type"], "team");
    assert_eq!(ch["data"], data, "data round-trips as the same string");
    assert_eq!(ch["cover_url"], "https://x/c.png");
    assert_eq!(
        (
            ch["is_distinct"].clone(),
            ch["is_public"].clone(),
            ch["is_super"].clone()
        ),
        (json!(false), json!(false), json!(false))
    );
    assert_eq!(ch["member_count"], 2);
    assert_eq!(ch["joined_member_count"], 2);
    assert!(ch["created_at"].as_i64().unwrap() > 1_600_000_000_000);
    assert!(ch.get("last_message").is_none() && ch.get("created_by").is_none());
    let members = ch["members"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    for m in members {
        assert_eq!(
            (m["state"].as_str(), m["role"].as_str()),
            (Some("joined"), Some("none")),
            "{m}"
        );
        assert_eq!(m["is_active"], true);
        assert_eq!(m["is_online"], false);
        assert_eq!(m["last_seen_at"], 0);
        assert_eq!(m["profile_url"], "");
    }
    assert_eq!(members[0]["nickname"], "ALICE");

    // A body sent with the documented charset parameter.
    let resp = app
        .http
        .post(app.url("/v3/group_channels"))
        .header("Api-Token", MASTER)
        .header("Content-Type", "application/json; charset=utf8")
        .body(json!({"user_ids": ["carol"], "name": "solo"}).to_string())
        .send()
        .await
        .unwrap();
    let (s, generated) = read(resp, "charset create").await;
    assert_eq!(s, 200, "{generated}");
    assert_eq!(generated["name"], "solo");
    let url = generated["channel_url"].as_str().unwrap();
    assert!(
        (4..=100).contains(&url.len()) && url.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
        "generated urls follow Sendbird's rule: {url}"
    );

    // Errors.
    let create = |body: Value| {
        let app = &app;
        async move { sb(app, "POST", "/v3/group_channels", Some(body)).await }
    };
    let (s, v) = create(json!({"user_ids": ["alice"], "channel_url": "team_room-1"})).await;
    assert_eq!(code(s, &v), 400202, "taken channel_url");
    for bad in ["abc", "has.dot", "has space"] {
        let (s, v) = create(json!({"user_ids": ["alice"], "channel_url": bad})).await;
        assert_eq!(code(s, &v), 400111, "{bad}");
    }
    let (s, v) = create(json!({"user_ids": ["alice", "nobody"]})).await;
    assert_eq!(code(s, &v), 400201, "unknown user");
    let (s, v) = create(json!({"name": "empty"})).await;
    assert_eq!(code(s, &v), 400105, "no users");
    let (s, v) = create(json!({"user_ids": ["alice"], "is_super": true})).await;
    assert_eq!(code(s, &v), 400111);
    let (s, v) = create(json!({"user_ids": ["alice"], "data": {"not": "a string"}})).await;
    assert_eq!(code(s, &v), 400111);
    let resp = app.http.get(app.url("/v3/group_channels")).send().await.unwrap();
    let (s, v) = read(resp, "no token").await;
    assert_eq!(code(s, &v), 400401);
    let resp = app
        .http
        .get(app.url("/v3/group_channels/team_room-1"))
        .header("Api-Token", "wrong")
        .send()
        .await
        .unwrap();
    let (s, v) = read(resp, "bad token").await;
    assert_eq!(code(s, &v), 400401);

    // View: members shown unless asked not to.
    let (s, v) = sb(&app, "GET", "/v3/group_channels/team_room-1", None).await;
    assert_eq!(s, 200);
    assert_eq!(v["members"].as_array().unwrap().len(), 2);
    let (_, v) = sb(&app, "GET", "/v3/group_channels/team_room-1?show_member=False", None).await;
    assert!(v.get("members").is_none(), "{v}");
    let (s, v) = sb(&app, "GET", "/v3/group_channels/no_such_room", None).await;
    assert_eq!(code(s, &v), 400201);

    // Update.
    let (s, v) = sb(
        &app,
        "PUT",
        "/v3/group_channels/team_room-1",
        Some(json!({"name": "Launch", "data": "[1, 2]", "custom_type": "ops"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["name"].as_str(), v["data"].as_str(), v["custom_type"].as_str()),
        (Some("Launch"), Some("[1, 2]"), Some("ops"))
    );
    assert_eq!(v["cover_url"], "https://x/c.png", "untouched fields stay");
    let (_, v) = sb(&app, "GET", "/v3/group_channels/team_room-1", None).await;
    assert_eq!(v["data"], "[1, 2]");
    let (s, v) = sb(
        &app,
        "PUT",
        "/v3/group_channels/team_room-1",
        Some(json!({"is_distinct": true})),
    )
    .await;
    assert_eq!(code(s, &v), 400111);
    let (s, v) = sb(
        &app,
        "PUT",
        "/v3/group_channels/no_such_room",
        Some(json!({"name": "x"})),
    )
    .await;
    assert_eq!(code(s, &v), 400201);

    // List with token paging, filters.
    let mut seen = Vec::new();
    let mut token = String::new();
    for _ in 0..5 {
        let (s, v) = sb(
            &app,
            "GET",
            &format!("/v3/group_channels?limit=1&show_member=true&token={token}"),
            None,
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert!(v["ts"].as_i64().unwrap() > 1_600_000_000_000);
        let page = v["channels"].as_array().unwrap();
        assert_eq!(page.len(), 1, "{v}");
        assert!(page[0]["members"].is_array());
        seen.push(page[0]["channel_url"].as_str().unwrap().to_string());
        token = v["next"].as_str().unwrap().to_string();
        if token.is_empty() {
            break;
        }
    }
    seen.sort();
    let mut expected = vec!["team_room-1".to_string(), url.to_string()];
    expected.sort();
    assert_eq!(seen, expected);
    let (_, v) = sb(&app, "GET", "/v3/group_channels", None).await;
    assert_eq!(v["channels"].as_array().unwrap().len(), 2);
    assert_eq!(v["next"], "");
    assert!(
        v["channels"][0].get("members").is_none(),
        "list hides members by default"
    );
    let (_, v) = sb(
        &app,
        "GET",
        "/v3/group_channels?channel_urls=team_room-1,missing_room",
        None,
    )
    .await;
    assert_eq!(v["channels"].as_array().unwrap().len(), 1);
    assert_eq!(v["channels"][0]["channel_url"], "team_room-1");
    let (_, v) = sb(&app, "GET", "/v3/group_channels?user_id=carol", None).await;
    assert_eq!(v["channels"][0]["channel_url"], url);
    assert_eq!(v["channels"].as_array().unwrap().len(), 1);
    let (_, v) = sb(&app, "GET", "/v3/group_channels?members_include_in=alice", None).await;
    assert_eq!(v["channels"][0]["channel_url"], "team_room-1");
    let (s, v) = sb(&app, "GET", "/v3/group_channels?name_contains=x", None).await;
    assert_eq!(code(s, &v), 400111);
    let (s, v) = sb(&app, "GET", "/v3/group_channels?token=zz", None).await;
    assert_eq!(code(s, &v), 400111);

    // Invite, members, membership checks, leave.
    let (s, v) = sb(
        &app,
        "POST",
        "/v3/group_channels/team_room-1/invite",
        Some(json!({"user_ids": ["carol"]})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["member_count"], 3);
    let (s, v) = sb(&app, "POST", "/v3/group_channels/team_room-1/invite", Some(json!({}))).await;
    assert_eq!(code(s, &v), 400105);
    let (s, v) = sb(
        &app,
        "POST",
        "/v3/group_channels/team_room-1/invite",
        Some(json!({"user_ids": ["nobody"]})),
    )
    .await;
    assert_eq!(code(s, &v), 400201);
    let (s, v) = sb(&app, "GET", "/v3/group_channels/team_room-1/members?limit=2", None).await;
    assert_eq!(s, 200, "{v}");
    let first: Vec<&str> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(first, ["alice", "bob"]);
    let next = v["next"].as_str().unwrap();
    assert!(!next.is_empty());
    let (_, v) = sb(
        &app,
        "GET",
        &format!("/v3/group_channels/team_room-1/members?limit=2&token={next}"),
        None,
    )
    .await;
    assert_eq!(v["members"][0]["user_id"], "carol");
    assert_eq!(v["members"][0]["state"], "joined");
    assert_eq!(v["next"], "");
    let (_, v) = sb(&app, "GET", "/v3/group_channels/team_room-1/members/carol", None).await;
    assert_eq!(v, json!({"is_member": true, "state": "joined"}));
    let (s, v) = sb(
        &app,
        "PUT",
        "/v3/group_channels/team_room-1/leave",
        Some(json!({"user_ids": ["carol"]})),
    )
    .await;
    assert_eq!((s, v), (200, json!({})));
    let (_, v) = sb(&app, "GET", "/v3/group_channels/team_room-1/members/carol", None).await;
    assert_eq!(v, json!({"is_member": false, "state": "none"}));
    let (s, v) = sb(
        &app,
        "PUT",
        "/v3/group_channels/team_room-1/leave",
        Some(json!({"user_ids": ["carol"]})),
    )
    .await;
    assert_eq!(code(s, &v), 400108, "not a member");
    let (s, v) = sb(&app, "PUT", "/v3/group_channels/team_room-1/leave", Some(json!({}))).await;
    assert_eq!(code(s, &v), 400105);
    let (s, v) = sb(&app, "GET", "/v3/group_channels/no_such_room/members", None).await;
    assert_eq!(code(s, &v), 400201);

    // Delete answers {} and the channel is gone.
    let resp = app
        .http
        .delete(app.url("/v3/group_channels/team_room-1"))
        .header("api-token", MASTER)
        .send()
        .await
        .unwrap();
    let (s, v) = read(resp, "delete").await;
    assert_eq!((s, v), (200, json!({})));
    let (s, v) = sb(&app, "GET", "/v3/group_channels/team_room-1", None).await;
    assert_eq!(code(s, &v), 400201);
    let (s, v) = sb(&app, "DELETE", "/v3/group_channels/team_room-1", None).await;
    assert_eq!(code(s, &v), 400201);
}

#[tokio::test]
async fn sendbird_distinct_channels_are_one_per_member_set() {
    let app = spawn_app().await;
    for u in ["alice", "bob", "carol"] {
        sb_user(&app, u).await;
    }
    let create = |body: Value| {
        let app = &app;
        async move {
            let (s, v) = sb(app, "POST", "/v3/group_channels", Some(body)).await;
            assert_eq!(s, 200, "{v}");
            v
        }
    };
    let a = create(json!({"user_ids": ["alice", "bob"], "is_distinct": true, "name": "first"})).await;
    assert_eq!(a["is_distinct"], true);
    // Same set, other order, other name: the same channel.
    let b = create(json!({"users": [{"user_id": "bob"}, {"user_id": "alice"}], "is_distinct": true, "name": "second"}))
        .await;
    assert_eq!(a["channel_url"], b["channel_url"]);
    assert_eq!(b["name"], "first");
    // Another set is another channel.
    let c = create(json!({"user_ids": ["alice", "bob", "carol"], "is_distinct": true})).await;
    assert_ne!(c["channel_url"], a["channel_url"]);
    // A named distinct channel is found again by its members, whatever url the second call names.
    let d = create(json!({"user_ids": ["alice", "carol"], "is_distinct": true, "channel_url": "ac_room"})).await;
    assert_eq!(d["channel_url"], "ac_room");
    let e = create(json!({"user_ids": ["carol", "alice"], "is_distinct": true, "channel_url": "other_room"})).await;
    assert_eq!(e["channel_url"], "ac_room");
    // Not distinct: a new channel every time, even for the same set.
    let f = create(json!({"user_ids": ["alice", "bob"], "is_distinct": false})).await;
    let g = create(json!({"user_ids": ["alice", "bob"]})).await;
    assert_eq!(f["is_distinct"], false);
    assert_ne!(f["channel_url"], g["channel_url"]);
    assert_ne!(f["channel_url"], a["channel_url"]);
}

#[tokio::test]
async fn sendbird_messages_send_and_errors() {
    let app = spawn_app().await;
    for u in ["alice", "bob", "carol"] {
        sb_user(&app, u).await;
    }
    sb_channel(&app, "room_1", &["alice", "bob"]).await;

    let data = "{\"k\":  [1,2]}";
    let m = send(
        &app,
        "room_1",
        json!({"message_type": "MESG", "user_id": "alice", "message": "hello @bob", "custom_type": "greeting",
               "data": data, "mention_type": "users", "mentioned_user_ids": ["bob"], "is_silent": false,
               "send_push": true, "mark_as_read": true}),
    )
    .await;
    assert!(m["message_id"].is_i64());
    assert_eq!(m["type"], "MESG");
    assert_eq!(m["message"], "hello @bob");
    assert_eq!(m["custom_type"], "greeting");
    assert_eq!(m["data"], data);
    assert_eq!(m["channel_url"], "room_1");
    assert_eq!(m["channel_type"], "group");
    assert_eq!(m["updated_at"], 0);
    assert!(m["created_at"].as_i64().unwrap() > 1_600_000_000_000);
    assert_eq!(m["user"]["user_id"], "alice");
    assert_eq!(m["user"]["nickname"], "ALICE");
    assert_eq!(m["user"]["role"], "");
    assert_eq!(m["user"]["is_active"], true);
    assert_eq!(m["mention_type"], "users");
    assert_eq!(m["mentioned_users"][0]["user_id"], "bob");
    assert_eq!(
        (m["is_removed"].clone(), m["silent"].clone()),
        (json!(false), json!(false))
    );

    // dedup_id: a retry returns the original and stores nothing.
    let first = send(
        &app,
        "room_1",
        json!({"message_type": "MESG", "user_id": "bob", "message": "once", "dedup_id": "req-1"}),
    )
    .await;
    let again = send(
        &app,
        "room_1",
        json!({"message_type": "MESG", "user_id": "bob", "message": "once", "dedup_id": "req-1"}),
    )
    .await;
    assert_eq!(first["message_id"], again["message_id"]);
    let all = list(&app, "room_1", "prev_limit=50&next_limit=0").await;
    assert_eq!(texts(&all), ["hello @bob", "once"]);

    // ADMM has no sender.
    let admm = send(
        &app,
        "room_1",
        json!({"message_type": "ADMM", "message": "maintenance at 5"}),
    )
    .await;
    assert_eq!(admm["type"], "ADMM");
    assert!(admm.get("user").is_none(), "{admm}");

    // Errors.
    let err = |url: &'static str, body: Value| {
        let app = &app;
        async move {
            let (s, v) = sb(app, "POST", &format!("/v3/group_channels/{url}/messages"), Some(body)).await;
            code(s, &v)
        }
    };
    assert_eq!(err("room_1", json!({"user_id": "alice", "message": "x"})).await, 400105);
    assert_eq!(
        err(
            "room_1",
            json!({"message_type": "TEXT", "user_id": "alice", "message": "x"})
        )
        .await,
        400111
    );
    assert_eq!(
        err("room_1", json!({"message_type": "MESG", "message": "x"})).await,
        400105
    );
    assert_eq!(
        err("room_1", json!({"message_type": "MESG", "user_id": "alice"})).await,
        400105
    );
    assert_eq!(
        err(
            "room_1",
            json!({"message_type": "MESG", "user_id": "alice", "message": "x", "mention_type": "all"})
        )
        .await,
        400111
    );
    assert_eq!(
        err(
            "room_1",
            json!({"message_type": "MESG", "user_id": "carol", "message": "x"})
        )
        .await,
        400108,
        "not a member"
    );
    assert_eq!(
        err(
            "no_such_room",
            json!({"message_type": "MESG", "user_id": "alice", "message": "x"})
        )
        .await,
        400201
    );
    assert_eq!(
        err("room_1", json!({"message_type": "FILE", "user_id": "alice"})).await,
        400105
    );
    let resp = app
        .http
        .post(app.url("/v3/group_channels/room_1/messages"))
        .header("Api-Token", MASTER)
        .header("content-type", "application/json")
        .body("{\"message_type\": ")
        .send()
        .await
        .unwrap();
    let (s, v) = read(resp, "broken json").await;
    assert_eq!(code(s, &v), 400403);
    // No content type at all still reads as JSON.
    let resp = app
        .http
        .post(app.url("/v3/group_channels/room_1/messages"))
        .header("Api-Token", MASTER)
        .body(json!({"message_type": "MESG", "user_id": "bob", "message": "untyped"}).to_string())
        .send()
        .await
        .unwrap();
    let (s, v) = read(resp, "no content type").await;
    assert_eq!((s, v["message"].as_str()), (200, Some("untyped")), "{v}");
}

#[tokio::test]
async fn sendbird_message_lists_around_anchors() {
    let app = spawn_app().await;
    for u in ["alice", "bob"] {
        sb_user(&app, u).await;
    }
    sb_channel(&app, "room_1", &["alice", "bob"]).await;
    sb_channel(&app, "room_2", &["alice"]).await;
    let other = send(
        &app,
        "room_2",
        json!({"message_type": "MESG", "user_id": "alice", "message": "elsewhere"}),
    )
    .await;

    let mut sent = Vec::new();
    for i in 0..6 {
        let (user, custom) = if i % 2 == 0 { ("alice", "") } else { ("bob", "poll") };
        let m = send(
            &app,
            "room_1",
            json!({"message_type": "MESG", "user_id": user, "message": format!("m{i}"), "custom_type": custom}),
        )
        .await;
        sent.push(m);
        // Distinct milliseconds, so each timestamp names one message.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    send(&app, "room_1", json!({"message_type": "ADMM", "message": "notice"})).await;
    let ts = |i: usize| sent[i]["created_at"].as_i64().unwrap();
    let id = |i: usize| sent[i]["message_id"].as_i64().unwrap();
    let future = ts(5) + 60_000;

    // The Python SDK's call: both anchors, message_id=0, booleans as True.
    let ms = list(
        &app,
        "room_1",
        &format!("prev_limit=15&next_limit=0&include=True&message_ts={future}&message_id=0"),
    )
    .await;
    assert_eq!(texts(&ms), ["m0", "m1", "m2", "m3", "m4", "m5", "notice"]);
    assert!(ms.iter().all(no_nulls));
    // No anchor: now.
    let ms = list(&app, "room_1", "prev_limit=2&next_limit=0").await;
    assert_eq!(texts(&ms), ["m5", "notice"]);

    // message_ts: the message at exactly that time comes with include, beside the limits.
    let ms = list(
        &app,
        "room_1",
        &format!("message_ts={}&prev_limit=2&next_limit=1&include=true", ts(2)),
    )
    .await;
    assert_eq!(texts(&ms), ["m0", "m1", "m2", "m3"]);
    let ms = list(
        &app,
        "room_1",
        &format!("message_ts={}&prev_limit=2&next_limit=1&include=false", ts(2)),
    )
    .await;
    assert_eq!(texts(&ms), ["m0", "m1", "m3"]);
    let ms = list(
        &app,
        "room_1",
        &format!("message_ts={}&message_id=0&prev_limit=0&next_limit=2&include=1", ts(2)),
    )
    .await;
    assert_eq!(texts(&ms), ["m2", "m3", "m4"]);
    let ms = list(
        &app,
        "room_1",
        &format!("message_ts={}&prev_limit=0&next_limit=0", ts(2)),
    )
    .await;
    assert_eq!(texts(&ms), ["m2"]);
    let ms = list(
        &app,
        "room_1",
        &format!("message_ts={}&prev_limit=0&next_limit=2&include=0", ts(2)),
    )
    .await;
    assert_eq!(texts(&ms), ["m3", "m4"]);
    let ms = list(&app, "room_1", "message_ts=0&prev_limit=5&next_limit=3").await;
    assert_eq!(texts(&ms), ["m0", "m1", "m2"]);

    // message_id: the anchor message itself with include (default true), beside the limits.
    let ms = list(
        &app,
        "room_1",
        &format!("message_id={}&prev_limit=1&next_limit=1", id(2)),
    )
    .await;
    assert_eq!(texts(&ms), ["m1", "m2", "m3"]);
    let ms = list(
        &app,
        "room_1",
        &format!("message_id={}&prev_limit=1&next_limit=1&include=False", id(2)),
    )
    .await;
    assert_eq!(texts(&ms), ["m1", "m3"]);
    let ms = list(
        &app,
        "room_1",
        &format!("message_id={}&prev_limit=1&next_limit=1&reverse=True", id(2)),
    )
    .await;
    assert_eq!(texts(&ms), ["m3", "m2", "m1"]);
    // message_id wins over message_ts.
    let ms = list(
        &app,
        "room_1",
        &format!("message_id={}&message_ts={future}&prev_limit=0&next_limit=1", id(0)),
    )
    .await;
    assert_eq!(texts(&ms), ["m0", "m1"]);
    // Default limits: 15 each side.
    let ms = list(&app, "room_1", &format!("message_id={}", id(3))).await;
    assert_eq!(ms.len(), 7);

    // Filters count matches only.
    let ms = list(
        &app,
        "room_1",
        &format!("message_ts={future}&prev_limit=2&custom_types=poll"),
    )
    .await;
    assert_eq!(texts(&ms), ["m3", "m5"]);
    let ms = list(
        &app,
        "room_1",
        &format!("message_ts={future}&prev_limit=50&custom_types=*"),
    )
    .await;
    assert_eq!(ms.len(), 7);
    let ms = list(
        &app,
        "room_1",
        &format!("message_ts={future}&prev_limit=50&sender_ids=bob"),
    )
    .await;
    assert_eq!(texts(&ms), ["m1", "m3", "m5"]);
    let ms = list(
        &app,
        "room_1",
        &format!("message_ts={future}&prev_limit=50&sender_id=alice&custom_types="),
    )
    .await;
    assert_eq!(texts(&ms), ["m0", "m2", "m4"]);
    let ms = list(
        &app,
        "room_1",
        &format!("message_ts={future}&prev_limit=50&message_type=ADMM"),
    )
    .await;
    assert_eq!(texts(&ms), ["notice"]);

    // Errors.
    let bad = |q: String| {
        let app = &app;
        async move {
            let (s, v) = sb(app, "GET", &format!("/v3/group_channels/room_1/messages?{q}"), None).await;
            code(s, &v)
        }
    };
    assert_eq!(bad("prev_limit=201".into()).await, 400111);
    assert_eq!(bad("next_limit=-1".into()).await, 400111);
    assert_eq!(bad("include=maybe".into()).await, 400111);
    assert_eq!(bad("message_type=XXX".into()).await, 400111);
    assert_eq!(
        bad(format!("message_id={}", other["message_id"])).await,
        400201,
        "anchor of another channel"
    );
    assert_eq!(bad("message_id=999999".into()).await, 400201);
    let (s, v) = sb(&app, "GET", "/v3/group_channels/no_such_room/messages", None).await;
    assert_eq!(code(s, &v), 400201);
}

#[tokio::test]
async fn sendbird_messages_view_update_delete() {
    let app = spawn_app().await;
    for u in ["alice", "bob"] {
        sb_user(&app, u).await;
    }
    sb_channel(&app, "room_1", &["alice", "bob"]).await;
    sb_channel(&app, "room_2", &["alice", "bob"]).await;
    let m = send(
        &app,
        "room_1",
        json!({"message_type": "MESG", "user_id": "alice", "message": "draft"}),
    )
    .await;
    let keep = send(
        &app,
        "room_1",
        json!({"message_type": "MESG", "user_id": "bob", "message": "keep"}),
    )
    .await;
    let mid = m["message_id"].as_i64().unwrap();
    let path = format!("/v3/group_channels/room_1/messages/{mid}");

    let (s, v) = sb(&app, "GET", &path, None).await;
    assert_eq!(s, 200);
    assert_eq!(v["message"], "draft");
    assert_eq!(v["user"]["user_id"], "alice");
    let (s, v) = sb(&app, "GET", &format!("/v3/group_channels/room_2/messages/{mid}"), None).await;
    assert_eq!(code(s, &v), 400201, "a message of another channel");
    let (s, v) = sb(&app, "GET", "/v3/group_channels/room_1/messages/abc", None).await;
    assert_eq!(code(s, &v), 400111);
    let (s, v) = sb(&app, "GET", "/v3/group_channels/room_1/messages/987654", None).await;
    assert_eq!(code(s, &v), 400201);

    // Update.
    let (s, v) = sb(&app, "PUT", &path, Some(json!({"message": "final"}))).await;
    assert_eq!(code(s, &v), 400105, "message_type is required");
    let (s, v) = sb(
        &app,
        "PUT",
        &path,
        Some(json!({"message_type": "FILE", "message": "final"})),
    )
    .await;
    assert_eq!(code(s, &v), 400111, "not a file message");
    let (s, v) = sb(
        &app,
        "PUT",
        &format!("/v3/group_channels/room_2/messages/{mid}"),
        Some(json!({"message_type": "MESG", "message": "x"})),
    )
    .await;
    assert_eq!(code(s, &v), 400201);
    tokio::time::sleep(Duration::from_millis(3)).await;
    let (s, v) = sb(
        &app,
        "PUT",
        &path,
        Some(
            json!({"message_type": "MESG", "message": "final", "custom_type": "note", "data": "{\"v\": 2}",
                    "mention_type": "users", "mentioned_user_ids": []}),
        ),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["message"].as_str(), v["custom_type"].as_str(), v["data"].as_str()),
        (Some("final"), Some("note"), Some("{\"v\": 2}"))
    );
    assert!(
        v["updated_at"].as_i64().unwrap() > v["created_at"].as_i64().unwrap(),
        "{v}"
    );
    let (_, v) = sb(&app, "PUT", &path, Some(json!({"message_type": "MESG"}))).await;
    assert_eq!(v["message"], "final", "an update without changes answers the message");
    let (_, v) = sb(&app, "GET", &path, None).await;
    assert_eq!(v["data"], "{\"v\": 2}");

    // Delete answers {}; the list leaves the message out unless asked.
    let resp = app
        .http
        .delete(app.url(&path))
        .header("Api-Token", MASTER)
        .send()
        .await
        .unwrap();
    let (s, v) = read(resp, "delete message").await;
    assert_eq!((s, v), (200, json!({})));
    let ms = list(&app, "room_1", "prev_limit=10").await;
    assert_eq!(texts(&ms), ["keep"]);
    assert_eq!(ms[0]["message_id"], keep["message_id"]);
    let ms = list(&app, "room_1", "prev_limit=10&including_removed=true").await;
    assert_eq!(ms.len(), 2);
    assert_eq!(ms[0]["is_removed"], true);
    let (s, v) = sb(&app, "GET", &path, None).await;
    assert_eq!(code(s, &v), 400201, "a deleted message is not found, as in Sendbird");
    let (s, v) = sb(
        &app,
        "DELETE",
        &format!("/v3/group_channels/room_2/messages/{}", keep["message_id"]),
        None,
    )
    .await;
    assert_eq!(code(s, &v), 400201);

    // The channel shows its newest message that is not deleted.
    let newest = send(
        &app,
        "room_1",
        json!({"message_type": "MESG", "user_id": "alice", "message": "gone"}),
    )
    .await;
    sb(
        &app,
        "DELETE",
        &format!("/v3/group_channels/room_1/messages/{}", newest["message_id"]),
        None,
    )
    .await;
    let (_, ch) = sb(&app, "GET", "/v3/group_channels/room_1", None).await;
    assert_eq!(ch["last_message"]["message_id"], keep["message_id"]);
    assert_eq!(ch["last_message"]["user"]["user_id"], "bob");
}

#[tokio::test]
async fn sendbird_file_messages_by_url_and_upload() {
    let app = spawn_app().await;
    for u in ["alice", "bob"] {
        sb_user(&app, u).await;
    }
    sb_channel(&app, "room_1", &["alice", "bob"]).await;

    let m = send(
        &app,
        "room_1",
        json!({"message_type": "FILE", "user_id": "alice", "url": "https://cdn.example.com/r/report.pdf",
               "file_size": 2048, "file_type": "application/pdf", "custom_type": "doc"}),
    )
    .await;
    assert_eq!(m["type"], "FILE");
    assert_eq!(m["custom_type"], "doc");
    assert_eq!(m["file"]["url"], "https://cdn.example.com/r/report.pdf");
    assert_eq!(m["file"]["name"], "report.pdf");
    assert_eq!(m["file"]["size"], 2048);
    assert_eq!(m["file"]["type"], "application/pdf");

    // Multipart with the file part, lists as CSV, booleans as the Python SDK writes them.
    let png = vec![
        0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 0x0d, b'I', b'H', b'D', b'R',
    ];
    let form = reqwest::multipart::Form::new()
        .text("message_type", "FILE")
        .text("user_id", "bob")
        .text("mentioned_user_ids", "alice")
        .text("is_silent", "False")
        .text("dedup_id", "upload-1")
        .part(
            "file",
            reqwest::multipart::Part::bytes(png.clone())
                .file_name("pic.png")
                .mime_str("application/octet-stream")
                .unwrap(),
        );
    let resp = app
        .http
        .post(app.url("/v3/group_channels/room_1/messages"))
        .header("Api-Token", MASTER)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let (s, up) = read(resp, "multipart send").await;
    assert_eq!(s, 200, "{up}");
    assert_eq!(up["type"], "FILE");
    assert_eq!(up["user"]["user_id"], "bob");
    assert_eq!(up["mentioned_users"][0]["user_id"], "alice");
    assert_eq!(up["file"]["name"], "pic.png");
    assert_eq!(up["file"]["size"], png.len());
    assert_eq!(up["file"]["type"], "image/png", "sniffed, not the client's claim");
    let file_url = up["file"]["url"].as_str().unwrap();
    // Members download it with their session token.
    let (_, tok) = sb(&app, "POST", "/v3/users/bob/token", Some(json!({}))).await;
    let bytes = app
        .http
        .get(app.url(file_url))
        .bearer_auth(tok["token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&bytes[..], &png[..]);

    // A multipart FILE without its file, and a non-member's upload.
    let form = reqwest::multipart::Form::new()
        .text("message_type", "FILE")
        .text("user_id", "bob");
    let resp = app
        .http
        .post(app.url("/v3/group_channels/room_1/messages"))
        .header("Api-Token", MASTER)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let (s, v) = read(resp, "multipart without file").await;
    assert_eq!(code(s, &v), 400105);
    let form = reqwest::multipart::Form::new()
        .text("message_type", "FILE")
        .text("user_id", "bob")
        .part("file", reqwest::multipart::Part::bytes(png).file_name("p.png"));
    let resp = app
        .http
        .post(app.url("/v3/group_channels/no_such_room/messages"))
        .header("Api-Token", MASTER)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let (s, v) = read(resp, "multipart to a missing channel").await;
    assert_eq!(code(s, &v), 400201);

    let ms = list(&app, "room_1", "prev_limit=10&message_type=FILE").await;
    assert_eq!(ms.len(), 2);
}
