use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

#[tokio::test]
async fn bad_input_gets_specific_errors() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    app.user("bob").await;
    app.group("g", &["alice"]).await;
    let send = |body: reqwest::Body, ct: &'static str| {
        app.http
            .post(app.url("/api/v1/channels/g/messages"))
            .bearer_auth(&alice)
            .header("content-type", ct)
            .body(body)
    };
    let code = |r: reqwest::Response| async move {
        let s = r.status().as_u16();
        let v: serde_json::Value = r.json().await.unwrap();
        (s, v["error"]["code"].as_str().unwrap().to_string())
    };

    let r = send("{\"text\": ".into(), "application/json").send().await.unwrap();
    assert_eq!(code(r).await, (400, "malformed_json".into()));
    let r = send("{\"text\": 5}".into(), "application/json").send().await.unwrap();
    assert_eq!(code(r).await, (400, "invalid_argument".into()));
    let r = send("{\"text\": \"x\", \"surprise\": 1}".into(), "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(code(r).await, (400, "invalid_argument".into()));
    let r = send("text=x".into(), "application/x-www-form-urlencoded")
        .send()
        .await
        .unwrap();
    assert_eq!(code(r).await, (415, "unsupported_media_type".into()));
    let big = json!({"text": "x".repeat(2 * 1024 * 1024)}).to_string();
    let r = send(big.into(), "application/json").send().await.unwrap();
    assert_eq!(code(r).await, (413, "body_too_large".into()));
    let long = json!({"text": "é".repeat(5001)}).to_string();
    let r = send(long.into(), "application/json").send().await.unwrap();
    assert_eq!(code(r).await, (400, "limit_exceeded".into()));

    let (s, v) = app
        .call(
            "POST",
            "/api/v1/channels/nope/messages",
            &alice,
            Some(json!({"text": "x"})),
        )
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("channel_not_found")));
    let (s, v) = app
        .admin(
            "POST",
            "/api/v1/channels/g/messages",
            Some(json!({"sender_id": "bob", "text": "x"})),
        )
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (403, Some("not_a_member")));
    let (s, v) = app.admin("GET", "/api/v1/no/such/route", None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("route_not_found")));
}

#[tokio::test]
async fn per_user_send_rate_is_limited() {
    let app = spawn_app_with(|c| {
        c.limits.user_send_per_sec = 2;
        c.limits.user_send_burst = 3;
    })
    .await;
    let alice = app.user("alice").await;
    app.group("g", &["alice"]).await;
    let mut limited = None;
    for i in 0..10 {
        let r = app
            .http
            .post(app.url("/api/v1/channels/g/messages"))
            .bearer_auth(&alice)
            .json(&json!({"text": format!("{i}")}))
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            limited = Some((i, r.headers().get("retry-after").cloned()));
            break;
        }
    }
    let (i, retry_after) = limited.expect("the burst of 3 is exceeded within 10 sends");
    assert!(i >= 3, "the burst is allowed");
    assert!(retry_after.is_some());
    // The application's server-side sends are not limited by the user's client rate.
    for i in 0..5 {
        let (s, _) = app
            .admin(
                "POST",
                "/api/v1/channels/g/messages",
                Some(json!({"sender_id": "alice", "text": format!("s{i}")})),
            )
            .await;
        assert_eq!(s, 201);
    }
}

#[tokio::test]
async fn slowloris_connections_are_reaped() {
    let app = spawn_app_with(|c| c.http.header_read_timeout_secs = 1).await;
    let mut sock = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    sock.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 256];
    // The server closes the connection (read returns 0 or an error) once the header timeout passes.
    let res = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(res.is_ok(), "connection still open after 5 s");
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn oversized_websocket_frames_close_with_1009() {
    let app = spawn_app_with(|c| c.websocket.max_frame_bytes = 16 * 1024).await;
    let alice = app.user("alice").await;
    let mut ws = app.ws(&alice, json!({})).await;
    use futures_util::SinkExt;
    let _ = ws.send(Message::Text("x".repeat(64 * 1024).into())).await;
    assert_eq!(close_code(&mut ws, Duration::from_secs(5)).await, Some(1009));
}

#[tokio::test]
async fn websocket_needs_a_user_token_and_a_hello() {
    let app = spawn_app_with(|c| c.websocket.hello_timeout_secs = 1).await;
    let alice = app.user("alice").await;
    let url = format!("ws://{}/api/v1/ws?token=wrong", app.addr);
    let err = tokio_tungstenite::connect_async(url).await.unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
    let url = format!("ws://{}/api/v1/ws?token={MASTER}", app.addr);
    assert!(
        tokio_tungstenite::connect_async(url).await.is_err(),
        "the master token is not a user"
    );

    // No hello in time: closed with 4000.
    let url = format!("ws://{}/api/v1/ws?token={alice}", app.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    assert_eq!(next_json(&mut ws).await["code"], "timeout");
    assert_eq!(close_code(&mut ws, Duration::from_secs(5)).await, Some(4000));

    // A wrong first frame: protocol error.
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    send_json(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(next_json(&mut ws).await["code"], "protocol_error");
    assert_eq!(close_code(&mut ws, Duration::from_secs(5)).await, Some(1002));

    // Malformed frames after the hello get an error frame, and the session goes on.
    let mut ws = app.ws(&alice, json!({})).await;
    send_json(&mut ws, json!({"type": "send", "channel_id": "a b", "text": "x"})).await;
    assert_eq!(next_json(&mut ws).await["code"], "invalid_frame");
    send_json(&mut ws, json!({"type": "ping", "req_id": "p"})).await;
    let pong = next_json(&mut ws).await;
    assert_eq!(
        (pong["type"].as_str(), pong["req_id"].as_str()),
        (Some("pong"), Some("p"))
    );
}

#[tokio::test]
async fn idle_keep_alive_connections_are_reaped() {
    let app = spawn_app_with(|c| c.http.header_read_timeout_secs = 1).await;
    let mut sock = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    sock.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = sock.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Then silence: the connection must not be held open forever.
    let res = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(res.is_ok(), "idle keep-alive connection still open after 5 s");
}
