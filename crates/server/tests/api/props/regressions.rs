//! Regression tests of what building and running the property tests found, each the exact request.

use crate::helpers::*;
use crate::nim::{APP_KEY, APP_SECRET, nim};

async fn nim_app() -> TestApp {
    spawn_app_with(|c| {
        c.nim.app_key = APP_KEY.into();
        c.nim.app_secret = APP_SECRET.into();
    })
    .await
}

/// `user/update` with a token NIM refuses used to revoke the account's tokens first, then refuse: the
/// user was logged out by a request answered with an error.
#[tokio::test]
async fn nim_update_with_a_refused_token_keeps_the_old_one() {
    let app = nim_app().await;
    let v = nim(&app, "/nimserver/user/create.action", "accid=tok1&token=good-token-1").await;
    assert_eq!(v["code"], 200, "{v}");
    let v = nim(&app, "/nimserver/user/update.action", "accid=tok1&token=bad+token").await;
    assert_eq!(v["code"], 414, "{v}");
    let (s, v) = app.call("GET", "/api/v1/me", "good-token-1", None).await;
    assert_eq!(s, 200, "the old token still works: {v}");
}

/// A JSON body with bytes that are not UTF-8 in a key the handler ignores was accepted (serde skips an
/// ignored string without checking it); JSON is UTF-8, so it is Sendbird's 400403 like any unreadable body.
#[tokio::test]
async fn sendbird_body_that_is_not_utf8_is_refused() {
    let app = spawn_app().await;
    let r = app
        .http
        .post(app.url("/v3/users"))
        .header("Api-Token", MASTER)
        .header("Content-Type", "application/json")
        .body(&b"{\"user_id\":\"nonutf8\",\"zz\":\"\xff\xfe\"}"[..])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (v["error"].as_bool(), v["code"].as_u64()),
        (Some(true), Some(400403)),
        "{v}"
    );
    let (s, _) = app.call("GET", "/v3/users/nonutf8", MASTER, None).await;
    assert_eq!(s, 400, "nothing was created");
}

/// A token another account already has was a storage conflict answered `503 server busy`, after the account
/// had been created (`user/create`) or its tokens revoked (`user/update`). A client signs in with the token
/// alone, so it is refused as a parameter, before anything changes.
#[tokio::test]
async fn nim_a_token_another_account_has_is_refused_before_anything_changes() {
    let app = nim_app().await;
    let v = nim(&app, "/nimserver/user/create.action", "accid=owner&token=%5B").await;
    assert_eq!(v["code"], 200, "{v}");
    let v = nim(&app, "/nimserver/user/create.action", "accid=second&token=%5B").await;
    assert_eq!(v["code"], 414, "{v}");
    assert!(v["desc"].as_str().unwrap_or("").contains("token"), "{v}");
    let (s, v) = app.call("GET", "/api/v1/users/second", MASTER, None).await;
    assert_eq!(s, 404, "no account was left behind: {v}");

    let v = nim(&app, "/nimserver/user/create.action", "accid=third&token=third-token").await;
    assert_eq!(v["code"], 200, "{v}");
    let v = nim(&app, "/nimserver/user/update.action", "accid=third&token=%5B").await;
    assert_eq!(v["code"], 414, "{v}");
    let (s, v) = app.call("GET", "/api/v1/me", "third-token", None).await;
    assert_eq!(s, 200, "the refused update kept the old token: {v}");
    let (s, v) = app.call("GET", "/api/v1/me", "[", None).await;
    assert_eq!(
        (s, v["id"].as_str()),
        (200, Some("owner")),
        "the token still signs in its owner: {v}"
    );

    // The owner may set the token it already has.
    let v = nim(&app, "/nimserver/user/update.action", "accid=owner&token=%5B").await;
    assert_eq!(v["code"], 200, "{v}");
}
