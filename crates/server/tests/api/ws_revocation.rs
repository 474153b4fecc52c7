//! Issue 15, item 5: a credential that stops working closes the WebSocket sessions opened with it (4003),
//! whichever surface revoked it, and when it expires.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;
use crate::nim::{APP_KEY, APP_SECRET, nim};
use crate::sendbird::sb;

const CLOSE_WAIT: Duration = Duration::from_secs(10);

async fn app() -> TestApp {
    spawn_app_with(|c| {
        c.nim.app_key = APP_KEY.into();
        c.nim.app_secret = APP_SECRET.into();
    })
    .await
}

/// The session is still served: a ping is answered.
async fn assert_alive(ws: &mut Ws) {
    send_json(ws, json!({"type": "ping", "req_id": "alive"})).await;
    let pong = next_of_type(ws, "pong").await;
    assert_eq!(pong["req_id"], "alive");
}

/// The token no longer opens anything.
async fn assert_refused(app: &TestApp, token: &str) {
    let (s, v) = app.call("GET", "/api/v1/me", token, None).await;
    assert_eq!(s, 401, "{v}");
}

#[tokio::test]
async fn native_revocation_closes_every_session_of_the_user_and_no_other() {
    let app = app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let (s, v) = app.admin("POST", "/api/v1/users/alice/sessions", None).await;
    assert_eq!(s, 201, "{v}");
    let alice2 = v["token"].as_str().unwrap().to_string();
    let mut a1 = app.ws(&alice, json!({})).await;
    let mut a2 = app.ws(&alice2, json!({})).await;
    let mut b = app.ws(&bob, json!({})).await;

    let (s, v) = app.admin("DELETE", "/api/v1/users/alice/sessions", None).await;
    assert!(s == 200 || s == 204, "{s} {v}");
    assert_eq!(close_code(&mut a1, CLOSE_WAIT).await, Some(4003));
    assert_eq!(close_code(&mut a2, CLOSE_WAIT).await, Some(4003));
    assert_refused(&app, &alice).await;
    assert_alive(&mut b).await;

    // A user revoking their own sessions closes their sockets too.
    let (s, _) = app.call("DELETE", "/api/v1/users/bob/sessions", &bob, None).await;
    assert!(s == 200 || s == 204, "{s}");
    assert_eq!(close_code(&mut b, CLOSE_WAIT).await, Some(4003));
}

#[tokio::test]
async fn nim_refresh_token_and_token_change_close_the_old_sessions() {
    let app = app().await;
    let v = nim(
        &app,
        "/nimserver/user/create.action",
        "accid=li.lei&token=first-token-1",
    )
    .await;
    assert_eq!(v["code"], 200, "{v}");
    let mut old = app.ws("first-token-1", json!({})).await;

    // user/update with a new token: sessions of the old one close, the new one works.
    let v = nim(
        &app,
        "/nimserver/user/update.action",
        "accid=li.lei&token=second-token-2",
    )
    .await;
    assert_eq!(v["code"], 200, "{v}");
    assert_eq!(close_code(&mut old, CLOSE_WAIT).await, Some(4003));
    assert_refused(&app, "first-token-1").await;
    let mut current = app.ws("second-token-2", json!({})).await;
    assert_alive(&mut current).await;

    // user/refreshToken: every earlier token stops working.
    let v = nim(&app, "/nimserver/user/refreshToken.action", "accid=li.lei").await;
    assert_eq!(v["code"], 200, "{v}");
    assert_eq!(close_code(&mut current, CLOSE_WAIT).await, Some(4003));
    let fresh = v["info"]["token"].as_str().unwrap();
    let mut again = app.ws(fresh, json!({})).await;
    assert_alive(&mut again).await;
}

#[tokio::test]
async fn sendbird_token_changes_close_the_old_sessions() {
    let app = app().await;
    let (s, v) = sb(
        &app,
        "POST",
        "/v3/users",
        Some(json!({"user_id": "sb.user", "nickname": "u", "profile_url": "", "issue_access_token": true})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let access = v["access_token"].as_str().unwrap().to_string();
    let mut ws = app.ws(&access, json!({})).await;

    // A new access token replaces the old one.
    let (s, v) = sb(
        &app,
        "PUT",
        "/v3/users/sb.user",
        Some(json!({"issue_access_token": true})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(close_code(&mut ws, CLOSE_WAIT).await, Some(4003));
    assert_refused(&app, &access).await;
    let replaced = v["access_token"].as_str().unwrap().to_string();
    let mut ws = app.ws(&replaced, json!({})).await;
    assert_alive(&mut ws).await;

    // Revoking the user's tokens.
    let (s, v) = sb(&app, "DELETE", "/v3/users/sb.user/token", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(close_code(&mut ws, CLOSE_WAIT).await, Some(4003));
    assert_refused(&app, &replaced).await;
    let (s, v) = sb(&app, "DELETE", "/v3/users/nobody/token", None).await;
    assert_eq!((s, v["code"].clone()), (400, json!(400201)), "{v}");

    // Deactivating (blocking) the account.
    let (s, v) = sb(&app, "POST", "/v3/users/sb.user/token", Some(json!({}))).await;
    assert_eq!(s, 200, "{v}");
    let mut ws = app.ws(v["token"].as_str().unwrap(), json!({})).await;
    let (s, v) = sb(&app, "PUT", "/v3/users/sb.user", Some(json!({"is_active": false}))).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(close_code(&mut ws, CLOSE_WAIT).await, Some(4003));
}

#[tokio::test]
async fn an_expiring_session_closes_when_its_token_expires() {
    let app = app().await;
    app.user("brief").await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let (s, v) = sb(
        &app,
        "POST",
        "/v3/users/brief/token",
        Some(json!({"expires_at": now + 5_000})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let mut ws = app.ws(v["token"].as_str().unwrap(), json!({})).await;
    assert_eq!(close_code(&mut ws, Duration::from_secs(30)).await, Some(4003));
}

#[tokio::test]
async fn deleting_or_blocking_the_account_closes_its_sessions() {
    let app = app().await;
    let gone = app.user("gone").await;
    let mut ws = app.ws(&gone, json!({})).await;
    let (s, v) = app.admin("DELETE", "/api/v1/users/gone", None).await;
    assert!(s == 200 || s == 204, "{s} {v}");
    assert_eq!(close_code(&mut ws, CLOSE_WAIT).await, Some(4003));

    let v = nim(
        &app,
        "/nimserver/user/create.action",
        "accid=blocked&token=blocked-token-1",
    )
    .await;
    assert_eq!(v["code"], 200, "{v}");
    let mut ws = app.ws("blocked-token-1", json!({})).await;
    let v = nim(&app, "/nimserver/user/block.action", "accid=blocked&needkick=true").await;
    assert_eq!(v["code"], 200, "{v}");
    assert_eq!(close_code(&mut ws, CLOSE_WAIT).await, Some(4003));
    assert_refused(&app, "blocked-token-1").await;
}

/// Many revocations racing connections: whatever the interleaving, no session outlives its token.
#[tokio::test]
async fn no_session_survives_a_revocation_it_raced() {
    let app = app().await;
    app.user("racer").await;
    for round in 0..10 {
        let (s, v) = app.admin("POST", "/api/v1/users/racer/sessions", None).await;
        assert_eq!(s, 201, "{v}");
        let token = v["token"].as_str().unwrap().to_string();
        let url = format!("ws://{}/api/v1/ws?token={}", app.addr, token);
        let connect = async {
            // The upgrade may be refused (401) if the revocation came first; that is fine too.
            let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await else {
                return None;
            };
            send_json(&mut ws, json!({"type": "hello"})).await;
            Some(ws)
        };
        let revoke = app.admin("DELETE", "/api/v1/users/racer/sessions", None);
        let (ws, (s, _)) = tokio::join!(connect, revoke);
        assert!(s == 200 || s == 204, "round {round}: {s}");
        if let Some(mut ws) = ws {
            assert_eq!(
                close_code(&mut ws, CLOSE_WAIT).await,
                Some(4003),
                "round {round}: a session outlived its revoked token"
            );
        }
    }
}
