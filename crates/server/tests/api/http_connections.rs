//! Keep-alive after a refusal: a response to a request whose body the server did not read says
//! `Connection: close` (the server closes that connection), on every surface; a request read whole keeps its
//! connection.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{MASTER, TestApp, spawn_app_with};

/// Sends one request on `sock` (the body from a task of its own, so a server that answers and closes before
/// reading it cannot block the test); the response head, lower-cased, and the connection when the whole
/// request could be written.
async fn exchange(sock: TcpStream, head: String, body: Vec<u8>) -> (Option<TcpStream>, String) {
    let (mut rd, mut wr) = sock.into_split();
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        wr.write_all(&body).await?;
        Ok::<_, std::io::Error>(wr)
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = tokio::time::timeout(Duration::from_secs(20), rd.read(&mut buf))
            .await
            .expect("a response within 20 s")
            .expect("read");
        assert!(
            n > 0,
            "the connection closed before a response: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    };
    let text = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
    // A server that answered before reading the body may close before all of it is written.
    let Ok(wr) = writer.await.unwrap() else {
        return (None, text);
    };
    // Read the response body (content-length) so a next request starts clean.
    let len: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    let mut body_got = got.len() - head_end - 4;
    while body_got < len {
        let n = rd.read(&mut buf).await.unwrap();
        assert!(n > 0, "the connection closed inside a response body");
        body_got += n;
    }
    (Some(rd.reunite(wr).unwrap()), text)
}

fn post(path: &str, headers: &[(&str, &str)], body_len: usize) -> String {
    let mut head =
        format!("POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {body_len}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    head
}

fn says_close(head: &str) -> bool {
    head.lines().any(|l| l == "connection: close")
}

async fn app() -> TestApp {
    spawn_app_with(|c| c.http.max_body_bytes = 64 * 1024).await
}

#[tokio::test]
async fn a_refusal_before_the_body_is_read_says_connection_close_on_every_surface() {
    let app = app().await;
    let auth = format!("Bearer {MASTER}");
    let big = vec![b'a'; 300 * 1024];
    let cases: Vec<(&str, String)> = vec![
        ("Sendbird, no Api-Token", post("/v3/users", &[], big.len())),
        (
            "NIM, no CheckSum headers",
            post("/nimserver/user/create.action", &[], big.len()),
        ),
        ("native, no token", post("/api/v1/users", &[], big.len())),
        (
            "native, body over the limit",
            post("/api/v1/users", &[("authorization", &auth)], big.len()),
        ),
    ];
    for (what, head) in cases {
        let sock = TcpStream::connect(app.addr).await.unwrap();
        let (_, resp) = exchange(sock, head, big.clone()).await;
        assert!(
            says_close(&resp),
            "{what}: the response does not say connection: close:\n{resp}"
        );
    }
}

#[tokio::test]
async fn a_request_read_whole_keeps_its_connection_even_when_refused() {
    let app = app().await;
    let auth = format!("Bearer {MASTER}");
    let mut sock = TcpStream::connect(app.addr).await.unwrap();
    // Read whole and accepted, then read whole and refused (the same id again).
    for status in ["201", "409"] {
        let body = serde_json::to_vec(&json!({"id": "keepalive-user"})).unwrap();
        let (next, resp) = exchange(
            sock,
            post("/api/v1/users", &[("authorization", &auth)], body.len()),
            body,
        )
        .await;
        sock = next.expect("the whole request was written");
        assert!(resp.starts_with(&format!("http/1.1 {status}")), "{resp}");
        assert!(!says_close(&resp), "{resp}");
    }
    // The same connection still serves.
    let (_, resp) = exchange(sock, "GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n".into(), Vec::new()).await;
    assert!(resp.starts_with("http/1.1 200"), "{resp}");
}
