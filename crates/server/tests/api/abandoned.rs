//! Requests abandoned by their client (TCP reset right after the request, SO_LINGER 0) cancel the request
//! future wherever it is, a store read in flight included: the server must keep serving afterwards, on every
//! surface (issue 15, item 1).

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use sha1::{Digest, Sha1};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::helpers::*;
use crate::nim::{APP_KEY, APP_SECRET};

const BURST: usize = 1_000;
/// Connections opened at once during a burst (enough to overlap reads in flight, few enough for a small box).
const PARALLEL: usize = 32;

/// Sends `request` on `BURST` connections, each reset (RST, not FIN) right after the request was written.
async fn reset_burst(addr: SocketAddr, request: impl Fn(usize) -> String) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..BURST {
        if tasks.len() >= PARALLEL {
            tasks.join_next().await.unwrap().unwrap();
        }
        let raw = request(i);
        tasks.spawn(async move {
            // The server may already refuse or close: only the reset matters here.
            let Ok(mut sock) = TcpStream::connect(addr).await else {
                return;
            };
            // Linger 0: the close sends RST at once (nothing to block on).
            #[allow(deprecated)]
            let _ = sock.set_linger(Some(Duration::ZERO));
            let _ = sock.write_all(raw.as_bytes()).await;
            drop(sock);
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

fn get(path: &str, headers: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: confab\r\n{headers}\r\n")
}

fn nim_headers(nonce: &str) -> String {
    let cur_time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let mut h = Sha1::new();
    h.update(format!("{APP_SECRET}{nonce}{cur_time}").as_bytes());
    let checksum = hex::encode(h.finalize());
    format!("AppKey: {APP_KEY}\r\nNonce: {nonce}\r\nCurTime: {cur_time}\r\nCheckSum: {checksum}\r\n")
}

/// `/readyz`, a read and a write on every surface all still work.
async fn still_serving(app: &TestApp, token: &str, round: &str) {
    let r = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200, "after {round}: {}", r.text().await.unwrap());
    let r = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200, "after {round}");
    let (s, v) = app.call("GET", "/api/v1/channels", token, None).await;
    assert_eq!(s, 200, "after {round}: {v}");
    let (s, v) = app.call("GET", "/api/v1/me", token, None).await;
    assert_eq!(s, 200, "after {round}: {v}");
    let v = app.send_as(token, "room", &format!("after {round}")).await;
    assert!(v["seq"].as_u64().is_some(), "{v}");
    let r = app
        .http
        .get(app.url("/v3/users"))
        .header("Api-Token", MASTER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "after {round}: {}", r.text().await.unwrap());
    let v: Value = app
        .http
        .post(app.url("/nimserver/user/getUinfos.action"))
        .body(format!("accids={}", urlencode(&json!(["alice"]).to_string())))
        .header("Content-Type", "application/x-www-form-urlencoded;charset=utf-8")
        .headers(header_map(&nim_headers(&format!("check-{round}"))))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["code"], 200, "after {round}: {v}");
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn header_map(raw: &str) -> reqwest::header::HeaderMap {
    raw.split("\r\n")
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| {
            (
                k.parse::<reqwest::header::HeaderName>().unwrap(),
                v.parse::<reqwest::header::HeaderValue>().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn reset_requests_never_leak_store_connections() {
    let app = spawn_app_with(|c| {
        c.nim.app_key = APP_KEY.into();
        c.nim.app_secret = APP_SECRET.into();
    })
    .await;
    let token = app.user("alice").await;
    app.group("room", &["alice"]).await;
    still_serving(&app, &token, "start").await;
    let addr = app.addr;

    reset_burst(addr, |_| get("/readyz", "")).await;
    still_serving(&app, &token, "/readyz resets").await;

    reset_burst(addr, |_| {
        get("/api/v1/channels", "Authorization: Bearer not-a-session-token\r\n")
    })
    .await;
    still_serving(&app, &token, "bad-token resets").await;

    let auth = format!("Authorization: Bearer {token}\r\n");
    reset_burst(addr, |_| get("/api/v1/channels", &auth)).await;
    still_serving(&app, &token, "native list resets").await;

    let sb = format!("Api-Token: {MASTER}\r\n");
    reset_burst(addr, |_| get("/v3/group_channels", &sb)).await;
    still_serving(&app, &token, "/v3 list resets").await;

    let body = format!("accids={}", urlencode(&json!(["alice"]).to_string()));
    reset_burst(addr, |i| {
        format!(
            "POST /nimserver/user/getUinfos.action HTTP/1.1\r\nHost: confab\r\n{}Content-Type: \
             application/x-www-form-urlencoded;charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
            nim_headers(&format!("reset-{i}")),
            body.len()
        )
    })
    .await;
    still_serving(&app, &token, "NIM resets").await;
}

#[tokio::test]
async fn liveness_fails_while_the_store_cannot_write_and_recovers() {
    let mut db = None;
    let app = spawn_app_with(|c| {
        c.storage.unhealthy_after_secs = 1;
        db = Some(c.data_dir.join("confab.db"));
    })
    .await;
    wait_status(&app, "/healthz", 200).await;
    wait_status(&app, "/readyz", 200).await;
    // Another process holds the database's write lock: the store can read but not write.
    let lock = rusqlite::Connection::open(db.unwrap()).unwrap();
    lock.busy_timeout(Duration::from_secs(10)).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    wait_status(&app, "/readyz", 503).await;
    wait_status(&app, "/healthz", 503).await;
    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);
    wait_status(&app, "/healthz", 200).await;
    wait_status(&app, "/readyz", 200).await;
}
