//! The egress policy is checked at every delivery, not only when a URL is stored: an endpoint on a literal
//! private address stored under a permissive configuration receives nothing once the operator tightened it
//! (issue 15, item 11).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::durability::{add_endpoint_at, call, seed_group, send_texts, start_with, wait_ready};

/// The server process, killed when the test ends, a failed assertion included.
/// A receiver on 127.0.0.1 that counts the requests it gets.
async fn counting_receiver() -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_private_endpoints_are_refused_after_the_policy_tightens() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("confab.toml");
    let args = ["--config", config.to_str().unwrap()];
    let http = reqwest::Client::new();
    let (url, hits) = counting_receiver().await;

    // Permissive: the receiver on loopback is allowed, and it gets the first message.
    std::fs::write(
        &config,
        "[egress]\nallow_private = [\"127.0.0.1\"]\n[webhooks]\nbackoff_ms = 50\nmax_backoff_secs = 1\n",
    )
    .unwrap();
    let server = start_with(dir.path(), &args);
    wait_ready(&http, server.addr).await;
    let (id, _) = add_endpoint_at(&http, server.addr, &url).await;
    seed_group(&http, server.addr).await;
    send_texts(&http, server.addr, 1).await;
    let attempts = wait_attempts(&http, server.addr, &id, 1).await;
    assert_eq!(attempts[0]["delivered"], true, "{attempts:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    drop(server);

    // Strict (the default): the same stored endpoint is refused at delivery, without a connection.
    std::fs::write(
        &config,
        "[webhooks]\nbackoff_ms = 50\nmax_backoff_secs = 1\nretry_period_secs = 1\n",
    )
    .unwrap();
    let server = start_with(dir.path(), &args);
    wait_ready(&http, server.addr).await;
    send_texts(&http, server.addr, 1).await;
    let attempts = wait_attempts(&http, server.addr, &id, 2).await;
    let refused = attempts
        .iter()
        .find(|a| a["delivered"] == false)
        .unwrap_or_else(|| panic!("a failed attempt: {attempts:?}"));
    assert!(refused.get("status").is_none(), "never connected: {refused}");
    let error = refused["error"].as_str().unwrap();
    assert!(error.starts_with("egress:") && error.contains("127.0.0.1"), "{error}");
    // The event ends as a dead letter (retry period of one second), still without reaching the receiver.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, v) = call(
            &http,
            server.addr,
            "GET",
            &format!("/api/v1/webhooks/endpoints/{id}/dead_letters"),
            Value::Null,
        )
        .await
        .unwrap();
        if v["dead_letters"].as_array().is_some_and(|l| !l.is_empty()) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no dead letter: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the receiver got nothing after the restart"
    );
    drop(server);
}

/// The endpoint's attempts once there are at least `n` (bounded wait).
async fn wait_attempts(http: &reqwest::Client, addr: std::net::SocketAddr, id: &str, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, v) = call(
            http,
            addr,
            "GET",
            &format!("/api/v1/webhooks/endpoints/{id}/attempts"),
            Value::Null,
        )
        .await
        .unwrap();
        let list = v["attempts"].as_array().cloned().unwrap_or_default();
        if list.len() >= n {
            return list;
        }
        assert!(tokio::time::Instant::now() < deadline, "fewer than {n} attempts: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
