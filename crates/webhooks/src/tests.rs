use std::sync::atomic::{AtomicU32, Ordering};

use axum::Router;
use axum::http::{HeaderMap as AxumHeaders, StatusCode};
use axum::routing::post;

use super::*;

/// A receiver on loopback that answers 500 to the first `fail_first` requests, then 200; records bodies
/// and the `x-test` header.
async fn receiver(fail_first: u32) -> (String, Arc<Mutex<Vec<(String, String)>>>, Arc<AtomicU32>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let hits = Arc::new(AtomicU32::new(0));
    let (s, h) = (seen.clone(), hits.clone());
    let app = Router::new().route(
        "/hook",
        post(move |headers: AxumHeaders, body: String| {
            let (s, h) = (s.clone(), h.clone());
            async move {
                let n = h.fetch_add(1, Ordering::SeqCst);
                let tag = headers
                    .get("x-test")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                s.lock().unwrap().push((tag, body));
                if n < fail_first {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), seen, hits)
}

fn fast(max_attempts: u32) -> WebhookConfig {
    WebhookConfig {
        timeout: Duration::from_secs(2),
        max_attempts,
        backoff: Duration::from_millis(20),
        ..WebhookConfig::default()
    }
}

fn loopback() -> EgressPolicy {
    EgressPolicy::parse(&["127.0.0.1".into()]).unwrap()
}

#[tokio::test]
async fn retries_until_the_endpoint_accepts_with_the_same_body() {
    let (url, seen, hits) = receiver(2).await;
    let d = Dispatcher::start(fast(3), loopback(), CancellationToken::new()).unwrap();
    let delivery = Delivery::json("test", d.policy(), &url, Bytes::from_static(b"{\"a\":1}"))
        .unwrap()
        .header("x-test", "sig");
    let outcome = d.enqueue_tracked(delivery).unwrap().await.unwrap();
    assert_eq!(outcome, Outcome::Delivered { attempts: 3 });
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    let seen = seen.lock().unwrap();
    assert!(
        seen.iter().all(|(tag, body)| tag == "sig" && body == "{\"a\":1}"),
        "{seen:?}"
    );
}

#[tokio::test]
async fn gives_up_after_the_last_attempt() {
    let (url, _, hits) = receiver(10).await;
    let d = Dispatcher::start(fast(3), loopback(), CancellationToken::new()).unwrap();
    let delivery = Delivery::json("test", d.policy(), &url, Bytes::from_static(b"{}")).unwrap();
    let outcome = d.enqueue_tracked(delivery).unwrap().await.unwrap();
    assert_eq!(outcome, Outcome::Failed { attempts: 3 });
    assert_eq!(hits.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn loopback_is_refused_unless_allowed() {
    let (url, _, hits) = receiver(0).await;
    let d = Dispatcher::start(fast(2), EgressPolicy::default(), CancellationToken::new()).unwrap();
    // A literal private address is refused before anything is queued.
    let err = Delivery::json("test", d.policy(), &url, Bytes::new()).unwrap_err();
    assert!(matches!(err, EgressError::Forbidden(_)), "{err:?}");
    // A name resolving to loopback is refused at connect time, on every attempt.
    let by_name = url.replace("127.0.0.1", "localhost");
    let delivery = Delivery::json("test", d.policy(), &by_name, Bytes::new()).unwrap();
    let outcome = d.enqueue_tracked(delivery).unwrap().await.unwrap();
    assert_eq!(outcome, Outcome::Failed { attempts: 2 });
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the receiver must never be reached");
}

#[tokio::test]
async fn a_full_queue_refuses_without_waiting() {
    let cfg = WebhookConfig {
        queue: 1,
        max_in_flight: 1,
        ..fast(1)
    };
    // A receiver that never answers keeps the one slot busy.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let d = Dispatcher::start(cfg, loopback(), CancellationToken::new()).unwrap();
    let make = || Delivery::json("test", d.policy(), &url, Bytes::new()).unwrap();
    let mut results = Vec::new();
    for _ in 0..5 {
        results.push(d.enqueue(make()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(results.contains(&Err(EnqueueError::Full)), "{results:?}");
    drop(listener);
}
