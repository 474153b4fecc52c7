//! The Sendbird Platform API v3 surface under `/v3`: users, auth by `Api-Token`, Sendbird's error format.

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

const JSON_UTF8: &str = "application/json; charset=utf-8";

struct SbResponse {
    status: u16,
    content_type: String,
    body: Value,
}

/// A raw request: `token` goes in `Api-Token` (if any), `body` is sent as is (if any).
async fn sb_raw(app: &TestApp, method: &str, path: &str, token: Option<&str>, body: Option<String>) -> SbResponse {
    let mut req = app.http.request(method.parse().unwrap(), app.url(path));
    if let Some(t) = token {
        req = req.header("Api-Token", t);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
    SbResponse {
        status,
        content_type,
        body,
    }
}

/// A request with the master token; every answer must be a JSON object with the charset spelled out.
pub(crate) async fn sb(app: &TestApp, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let r = sb_raw(app, method, path, Some(MASTER), body.map(|b| b.to_string())).await;
    assert_eq!(r.content_type, JSON_UTF8, "{method} {path}");
    assert!(r.body.is_object(), "{method} {path}: {}", r.body);
    (r.status, r.body)
}

/// Asserts Sendbird's error shape and returns `(HTTP status, code)`.
pub(crate) fn error_of(status: u16, v: &Value) -> (u16, i64) {
    assert_eq!(v["error"], true, "{v}");
    assert!(v["message"].is_string(), "{v}");
    (status, v["code"].as_i64().expect("integer code"))
}

#[tokio::test]
async fn sendbird_users_crud() {
    let app = spawn_app().await;

    let (s, u) = sb(
        &app,
        "POST",
        "/v3/users",
        Some(
            json!({"user_id": "alice", "nickname": "Alice", "profile_url": "https://x/a.png",
                    "metadata": {"plan": "pro"}}),
        ),
    )
    .await;
    assert_eq!(s, 200, "{u}");
    assert_eq!(u["user_id"], "alice");
    assert_eq!(u["nickname"], "Alice");
    assert_eq!(u["profile_url"], "https://x/a.png");
    assert_eq!(u["metadata"], json!({"plan": "pro"}));
    assert_eq!(u["access_token"], "");
    assert_eq!(u["is_active"], true);
    assert_eq!(u["is_online"], false);
    assert_eq!(u["last_seen_at"], 0);
    assert!(
        u["created_at"].as_i64().unwrap() > 1_600_000_000_000,
        "milliseconds: {u}"
    );
    assert!(u.as_object().unwrap().values().all(|v| !v.is_null()), "no nulls: {u}");

    // What the Python SDK sends for a user without a nickname; an access token on request.
    let (s, bob) = sb(
        &app,
        "POST",
        "/v3/users",
        Some(json!({"user_id": "bob", "nickname": null, "profile_url": "", "issue_access_token": true})),
    )
    .await;
    assert_eq!(s, 200, "{bob}");
    assert_eq!(
        (bob["nickname"].as_str(), bob["profile_url"].as_str()),
        (Some(""), Some(""))
    );
    let access = bob["access_token"].as_str().unwrap().to_string();
    assert!(!access.is_empty());
    // The access token is a session of bob's on the native surface.
    let (s, me) = app.call("GET", "/api/v1/me", &access, None).await;
    assert_eq!((s, me["id"].as_str()), (200, Some("bob")));

    let (s, v) = sb(&app, "GET", "/v3/users/alice", None).await;
    assert_eq!(
        (s, v["user_id"].as_str(), v["access_token"].as_str()),
        (200, Some("alice"), Some(""))
    );
    // Query flags Sendbird clients pass are accepted.
    let (s, _) = sb(&app, "GET", "/v3/users/alice?include_unread_count=True", None).await;
    assert_eq!(s, 200);

    let (s, v) = sb(
        &app,
        "PUT",
        "/v3/users/alice",
        Some(json!({"nickname": "Alice L.", "profile_url": "https://x/b.png", "issue_access_token": true})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["nickname"], "Alice L.");
    assert_eq!(v["profile_url"], "https://x/b.png");
    assert_eq!(v["metadata"], json!({"plan": "pro"}), "metadata untouched");
    let access = v["access_token"].as_str().unwrap();
    let (s, me) = app.call("GET", "/api/v1/me", access, None).await;
    assert_eq!((s, me["nickname"].as_str()), (200, Some("Alice L.")));
    // An update without a token request shows none.
    let (s, v) = sb(&app, "PUT", "/v3/users/alice", Some(json!({"nickname": "Al"}))).await;
    assert_eq!(
        (s, v["nickname"].as_str(), v["access_token"].as_str()),
        (200, Some("Al"), Some(""))
    );
    // Deactivating blocks the account: its tokens stop working and it is listed as deactivated.
    let (s, v) = sb(&app, "PUT", "/v3/users/alice", Some(json!({"is_active": false}))).await;
    assert_eq!((s, &v["is_active"]), (200, &json!(false)), "{v}");
    let (s, _) = app.call("GET", "/api/v1/me", access, None).await;
    assert_eq!(s, 401, "a deactivated account's tokens are revoked");
    let (_, page) = sb(&app, "GET", "/v3/users?active_mode=deactivated", None).await;
    assert_eq!(page["users"][0]["user_id"], "alice", "{page}");
    let (s, v) = sb(&app, "POST", "/v3/users/alice/token", None).await;
    assert_eq!(error_of(s, &v), (400, 400108), "no new sessions while deactivated");
    let (s, v) = sb(&app, "PUT", "/v3/users/alice", Some(json!({"is_active": true}))).await;
    assert_eq!((s, &v["is_active"]), (200, &json!(true)), "{v}");

    let (s, v) = sb(&app, "DELETE", "/v3/users/alice", None).await;
    assert_eq!((s, v), (200, json!({})));
    let (s, v) = sb(&app, "GET", "/v3/users/alice", None).await;
    assert_eq!(error_of(s, &v), (400, 400201));
    let (s, v) = sb(&app, "DELETE", "/v3/users/alice", None).await;
    assert_eq!(error_of(s, &v), (400, 400201));
    let (s, v) = sb(&app, "PUT", "/v3/users/alice", Some(json!({"nickname": "x"}))).await;
    assert_eq!(error_of(s, &v), (400, 400201));
}

#[tokio::test]
async fn sendbird_users_page_with_next_tokens() {
    let app = spawn_app().await;
    let mut ids: Vec<String> = (0..5).map(|i| format!("user+{i}")).collect();
    for id in &ids {
        let (s, v) = sb(&app, "POST", "/v3/users", Some(json!({"user_id": id, "nickname": id}))).await;
        assert_eq!(s, 200, "{v}");
    }
    let (s, v) = app
        .admin("POST", "/api/v1/users", Some(json!({"id": "robot", "is_bot": true})))
        .await;
    assert_eq!(s, 201, "{v}");
    ids.push("robot".into());
    ids.sort();

    let mut seen = Vec::new();
    let mut path = "/v3/users?limit=2".to_string();
    let mut pages = 0;
    loop {
        let (s, page) = sb(&app, "GET", &path, None).await;
        assert_eq!(s, 200, "{page}");
        pages += 1;
        let users = page["users"].as_array().unwrap();
        assert!(users.len() <= 2);
        seen.extend(users.iter().map(|u| u["user_id"].as_str().unwrap().to_string()));
        let next = page["next"].as_str().expect("next is always a string");
        if next.is_empty() {
            break;
        }
        path = format!("/v3/users?limit=2&token={next}");
    }
    assert_eq!(seen, ids, "every user once, in order");
    assert_eq!(pages, 3, "the last full page already says next = \"\"");

    let (_, page) = sb(&app, "GET", "/v3/users", None).await;
    assert_eq!(page["users"].as_array().unwrap().len(), 6);
    assert_eq!(page["next"], "");
    let (_, page) = sb(&app, "GET", "/v3/users?show_bot=False&limit=100", None).await;
    assert!(
        page["users"]
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u["user_id"] != "robot")
    );
    assert_eq!(page["users"].as_array().unwrap().len(), 5);
    let (_, page) = sb(&app, "GET", "/v3/users?active_mode=deactivated", None).await;
    assert_eq!(page, json!({"users": [], "next": ""}));

    for bad in [
        "/v3/users?token=not-hex",
        "/v3/users?limit=abc",
        "/v3/users?show_bot=maybe",
        "/v3/users?active_mode=sleepy",
        "/v3/users?nickname=bob",
    ] {
        let (s, v) = sb(&app, "GET", bad, None).await;
        assert_eq!(error_of(s, &v), (400, 400111), "{bad}");
    }
}

#[tokio::test]
async fn sendbird_session_tokens() {
    let app = spawn_app().await;
    sb(
        &app,
        "POST",
        "/v3/users",
        Some(json!({"user_id": "carol", "nickname": "C"})),
    )
    .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;

    // No body: the server's session lifetime (30 days by default).
    let r = sb_raw(&app, "POST", "/v3/users/carol/token", Some(MASTER), None).await;
    assert_eq!((r.status, r.content_type.as_str()), (200, JSON_UTF8), "{}", r.body);
    let token = r.body["token"].as_str().unwrap();
    let expires = r.body["expires_at"].as_i64().expect("integer expires_at");
    assert!(expires > now + 29 * 24 * 3600 * 1000, "{}", r.body);
    let (s, me) = app.call("GET", "/api/v1/me", token, None).await;
    assert_eq!((s, me["id"].as_str()), (200, Some("carol")));

    let wanted = now + 3_600_000;
    let (s, v) = sb(
        &app,
        "POST",
        "/v3/users/carol/token",
        Some(json!({"expires_at": wanted})),
    )
    .await;
    assert_eq!((s, v["expires_at"].as_i64()), (200, Some(wanted)), "{v}");
    // The server's lifetime caps what is asked for.
    let (s, v) = sb(
        &app,
        "POST",
        "/v3/users/carol/token",
        Some(json!({"expires_at": now + 365 * 24 * 3600 * 1000})),
    )
    .await;
    assert_eq!(s, 200);
    assert!(v["expires_at"].as_i64().unwrap() < now + 31 * 24 * 3600 * 1000, "{v}");

    let (s, v) = sb(
        &app,
        "POST",
        "/v3/users/carol/token",
        Some(json!({"expires_at": now - 1})),
    )
    .await;
    assert_eq!(error_of(s, &v), (400, 400111));
    let (s, v) = sb(
        &app,
        "POST",
        "/v3/users/carol/token",
        Some(json!({"expires_at": "soon"})),
    )
    .await;
    assert_eq!(error_of(s, &v), (400, 400111));
    let (s, v) = sb(&app, "POST", "/v3/users/nobody/token", None).await;
    assert_eq!(error_of(s, &v), (400, 400201));
}

#[tokio::test]
async fn sendbird_auth_uses_the_api_token_header() {
    let app = spawn_app().await;
    for token in [None, Some("wrong-token"), Some("")] {
        let r = sb_raw(&app, "GET", "/v3/users", token, None).await;
        assert_eq!(r.content_type, JSON_UTF8);
        assert_eq!(error_of(r.status, &r.body), (400, 400401), "{token:?}");
        assert_eq!(r.body["message"], "Invalid value: \"Api-Token\".");
    }
    // The auth check comes before the body is looked at.
    let r = sb_raw(&app, "POST", "/v3/users", None, Some("{oops".into())).await;
    assert_eq!(error_of(r.status, &r.body), (400, 400401));
    // The native bearer scheme is not this surface's.
    let (s, v) = app.call("GET", "/v3/users", MASTER, None).await;
    assert_eq!(error_of(s, &v), (400, 400401));
    // Nor is a user's session token.
    let alice = app.user("alice").await;
    let r = sb_raw(&app, "GET", "/v3/users", Some(&alice), None).await;
    assert_eq!(error_of(r.status, &r.body), (400, 400401));

    // reqwest sends `api-token`; the Python SDK sends that on most calls.
    let r = app
        .http
        .get(app.url("/v3/users/alice"))
        .header("api-token", MASTER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Any spelling of the name on the wire.
    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let req = format!("GET /v3/users/alice HTTP/1.1\r\nHost: x\r\nAPI-TOKEN: {MASTER}\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    tcp.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        resp.to_ascii_lowercase()
            .contains("content-type: application/json; charset=utf-8"),
        "{resp}"
    );
}

#[tokio::test]
async fn sendbird_bad_input_gets_sendbird_errors() {
    let app = spawn_app_with(|c| c.http.max_body_bytes = 4096).await;

    let (s, v) = sb(&app, "POST", "/v3/users", Some(json!({"nickname": "no id"}))).await;
    assert_eq!(error_of(s, &v), (400, 400105));
    assert_eq!(v["message"], "\"user_id\" must be specified.");
    let r = sb_raw(&app, "POST", "/v3/users", Some(MASTER), None).await;
    assert_eq!(
        error_of(r.status, &r.body),
        (400, 400105),
        "an empty body lacks user_id"
    );
    let r = sb_raw(&app, "POST", "/v3/users", Some(MASTER), Some("{\"user_id\": ".into())).await;
    assert_eq!(r.content_type, JSON_UTF8);
    assert_eq!(error_of(r.status, &r.body), (400, 400403));
    let (s, v) = sb(&app, "POST", "/v3/users", Some(json!({"user_id": 7}))).await;
    assert_eq!(error_of(s, &v), (400, 400111));
    let (s, v) = sb(&app, "POST", "/v3/users", Some(json!({"user_id": "bad id"}))).await;
    assert_eq!(error_of(s, &v), (400, 400111));
    let (s, v) = sb(
        &app,
        "POST",
        "/v3/users",
        Some(json!({"user_id": "m", "metadata": {"n": 1}})),
    )
    .await;
    assert_eq!(error_of(s, &v), (400, 400111));

    let (s, v) = sb(
        &app,
        "POST",
        "/v3/users",
        Some(json!({"user_id": "dave", "nickname": "D"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = sb(
        &app,
        "POST",
        "/v3/users",
        Some(json!({"user_id": "dave", "nickname": "D"})),
    )
    .await;
    assert_eq!(error_of(s, &v), (400, 400202));

    // A JSON body without any Content-Type (as Sendbird's own streaming example sends) is still read.
    let r = app
        .http
        .post(app.url("/v3/users"))
        .header("Api-Token", MASTER)
        .body(json!({"user_id": "erin", "nickname": "E"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let big = json!({"user_id": "big", "nickname": "x".repeat(8192)}).to_string();
    let r = sb_raw(&app, "POST", "/v3/users", Some(MASTER), Some(big)).await;
    assert_eq!((r.status, r.content_type.as_str()), (413, JSON_UTF8));
    assert_eq!(r.body["code"], 400110);

    let (s, v) = sb(&app, "GET", "/v3/no_such_thing", None).await;
    assert_eq!(error_of(s, &v), (400, 400404));
    let (s, v) = sb(&app, "PATCH", "/v3/users/dave", Some(json!({}))).await;
    assert_eq!(error_of(s, &v), (400, 400404));
}
