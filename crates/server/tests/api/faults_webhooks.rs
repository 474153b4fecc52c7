//! A webhook receiver down for many retry periods while messages are sent in several channels, then back.
//! First it refuses (503), then it does not listen at all. With a short retry period: events past it go to
//! dead letters instead of piling up, so the outbox table stays bounded by what the configuration implies
//! (sampled throughout the outage); once the receiver is back, every event is either delivered (in order per
//! channel, once per `webhook-id`) or dead-lettered, and every dead letter redelivers. Nothing is lost.
//! (`webhook_outbox.rs` covers single retries, one dead letter and delivery across `kill -9`.)

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::webhook_outbox::verify;

/// Retry period and the other delivery settings (seconds); the outage lasts `OUTAGE_PERIODS` of them.
const RETRY_PERIOD: u64 = 2;
const MAX_BACKOFF: u64 = 1;
const TIMEOUT: u64 = 1;
const OUTAGE_PERIODS: u64 = 10;
const CHANNELS: usize = 3;
/// Pause between two sends of one channel's sender.
const PACE: Duration = Duration::from_millis(100);

/// What the receiver accepted: `webhook-id` → body, in arrival order, and how often each id was accepted.
#[derive(Default)]
struct Received {
    order: Vec<(String, Value)>,
    accepted: HashMap<String, u32>,
}

struct Receiver {
    url: String,
    secret: Arc<Mutex<String>>,
    refusing: Arc<AtomicBool>,
    got: Arc<Mutex<Received>>,
    listener: Mutex<Option<tokio::task::JoinHandle<()>>>,
    port: u16,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let r = Receiver {
            url: format!("http://127.0.0.1:{port}/hook"),
            secret: Arc::default(),
            refusing: Arc::default(),
            got: Arc::default(),
            listener: Mutex::new(None),
            port,
        };
        r.listen(listener);
        r
    }

    fn listen(&self, listener: tokio::net::TcpListener) {
        let (secret, refusing, got) = (self.secret.clone(), self.refusing.clone(), self.got.clone());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, raw: Bytes| {
                let (secret, refusing, got) = (secret.clone(), refusing.clone(), got.clone());
                async move {
                    if refusing.load(Ordering::SeqCst) {
                        return StatusCode::SERVICE_UNAVAILABLE;
                    }
                    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                    let id = header("webhook-id");
                    let key = secret.lock().unwrap().clone();
                    if !verify(
                        &key,
                        &id,
                        &header("webhook-timestamp"),
                        &header("webhook-signature"),
                        &raw,
                    ) {
                        return StatusCode::UNAUTHORIZED;
                    }
                    let mut g = got.lock().unwrap();
                    *g.accepted.entry(id.clone()).or_default() += 1;
                    g.order.push((id, serde_json::from_slice(&raw).unwrap()));
                    StatusCode::NO_CONTENT
                }
            }),
        );
        let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        *self.listener.lock().unwrap() = Some(task);
    }

    /// Stops listening: new connections are refused (kept-alive ones get 503, as `refusing` stays set).
    fn stop_listening(&self) {
        if let Some(t) = self.listener.lock().unwrap().take() {
            t.abort();
        }
    }

    async fn back(&self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.listen(listener);
        self.refusing.store(false, Ordering::SeqCst);
    }
}

fn outbox_rows(db: &std::path::Path) -> u64 {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    c.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get::<_, i64>(0))
        .unwrap() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_outage_dead_letters_past_the_retry_period_and_delivers_the_rest_in_order() {
    let mut db = None;
    let app = spawn_app_with(|c| {
        db = Some(c.data_dir.join("confab.db"));
        c.webhooks.allow_private = vec!["127.0.0.1".into()];
        c.webhooks.retry_period_secs = RETRY_PERIOD;
        c.webhooks.backoff_ms = 100;
        c.webhooks.max_backoff_secs = MAX_BACKOFF;
        c.webhooks.timeout_secs = TIMEOUT;
        c.limits.user_send_per_sec = 1000;
        c.limits.user_send_burst = 1000;
    })
    .await;
    let db = db.unwrap();
    let app = Arc::new(app);
    let token = app.user("alice").await;
    for c in 0..CHANNELS {
        app.group(&format!("c{c}"), &["alice"]).await;
    }
    let receiver = Receiver::start().await;
    let (s, v) = app
        .admin(
            "POST",
            "/api/v1/webhooks/endpoints",
            Some(json!({"url": receiver.url, "events": ["message.sent"]})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    *receiver.secret.lock().unwrap() = v["secret"].as_str().unwrap().to_string();
    let endpoint = v["id"].as_str().unwrap().to_string();

    // One paced sender per channel; each acknowledged send is noted with the time it was acknowledged.
    let sent: Arc<Mutex<Vec<(Instant, String, u64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for c in 0..CHANNELS {
        let (app, token, sent, stop) = (app.clone(), token.clone(), sent.clone(), stop.clone());
        senders.push(tokio::spawn(async move {
            let channel = format!("c{c}");
            while !stop.load(Ordering::Acquire) {
                let v = app.send_as(&token, &channel, "hello").await;
                sent.lock()
                    .unwrap()
                    .push((Instant::now(), channel.clone(), v["seq"].as_u64().unwrap()));
                tokio::time::sleep(PACE).await;
            }
        }));
    }

    // The outage: refusing for half of it, not listening for the other half; the outbox sampled throughout.
    receiver.refusing.store(true, Ordering::SeqCst);
    let outage = Duration::from_secs(RETRY_PERIOD * OUTAGE_PERIODS);
    let prune_every = Duration::from_secs((RETRY_PERIOD / 2).clamp(1, 60));
    // An event leaves the outbox once dead-lettered (retry period, plus a last backoff and attempt) and pruned;
    // a second of slack for the worker's own pace.
    let window = Duration::from_secs(RETRY_PERIOD + MAX_BACKOFF + TIMEOUT + 1) + prune_every;
    let started = Instant::now();
    let (mut samples, mut max_rows, mut max_bound, mut over) = (0u64, 0u64, 0u64, Vec::new());
    let acked_at_start = sent.lock().unwrap().len() as u64;
    while started.elapsed() < outage {
        if started.elapsed() >= outage / 2 {
            receiver.stop_listening();
        }
        let rows = outbox_rows(&db);
        let now = Instant::now();
        // Rows may only be those of events acknowledged within the window (or those just being committed).
        let bound = sent
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, ..)| now.duration_since(*at) <= window)
            .count() as u64
            + CHANNELS as u64;
        samples += 1;
        max_rows = max_rows.max(rows);
        max_bound = max_bound.max(bound);
        if rows > bound {
            over.push((started.elapsed(), rows, bound));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop.store(true, Ordering::Release);
    for s in senders {
        s.await.unwrap();
    }
    let sent_in_outage = sent.lock().unwrap().len() as u64 - acked_at_start;
    assert!(
        over.is_empty(),
        "outbox above the bound the retry period implies (elapsed, rows, bound): {over:?}"
    );

    // Back: a few more messages after the outage, then every event is delivered or dead-lettered.
    receiver.back().await;
    for c in 0..CHANNELS {
        let channel = format!("c{c}");
        let v = app.send_as(&token, &channel, "after").await;
        sent.lock()
            .unwrap()
            .push((Instant::now(), channel, v["seq"].as_u64().unwrap()));
    }
    let all: HashSet<(String, u64)> = sent.lock().unwrap().iter().map(|(_, c, s)| (c.clone(), *s)).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (delivered, letters) = loop {
        let delivered: HashSet<(String, u64)> = receiver
            .got
            .lock()
            .unwrap()
            .order
            .iter()
            .map(|(_, b)| message_key(b))
            .collect();
        let letters = dead_letters(&app, &endpoint).await;
        let settled: HashSet<(String, u64)> = letters
            .iter()
            .map(|l| message_key(&l["payload"]))
            .chain(delivered.iter().cloned())
            .collect();
        if all.is_subset(&settled) {
            break (delivered, letters);
        }
        assert!(
            Instant::now() < deadline,
            "{} events neither delivered nor dead-lettered",
            all.len() - settled.intersection(&all).count()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // What was delivered went once per webhook-id, in order per channel.
    {
        let got = receiver.got.lock().unwrap();
        assert!(got.accepted.values().all(|n| *n == 1), "an event accepted twice");
        let mut last: BTreeMap<String, u64> = BTreeMap::new();
        for (_, body) in &got.order {
            let (channel, seq) = message_key(body);
            let prev = last.insert(channel.clone(), seq).unwrap_or(0);
            assert!(seq > prev, "{channel}: seq {seq} delivered after {prev}");
        }
    }
    let letter_ids: Vec<u64> = letters.iter().map(|l| l["event_id"].as_u64().unwrap()).collect();
    assert!(
        !letter_ids.is_empty(),
        "an outage of {OUTAGE_PERIODS} retry periods dead-letters events"
    );
    // Every dead letter redelivers to the receiver that is back, with its own webhook-id.
    for id in &letter_ids {
        let path = format!("/api/v1/webhooks/endpoints/{endpoint}/dead_letters/{id}/redeliver");
        let (s, v) = app.admin("POST", &path, None).await;
        assert_eq!((s, &v["delivered"]), (200, &json!(true)), "{v}");
    }
    {
        let got = receiver.got.lock().unwrap();
        for id in &letter_ids {
            assert_eq!(
                got.accepted.get(&format!("evt_{id}")),
                Some(&1),
                "dead letter {id} redelivered once"
            );
        }
        let everything: HashSet<(String, u64)> = got.order.iter().map(|(_, b)| message_key(b)).collect();
        assert!(
            all.is_subset(&everything),
            "every event reached the receiver in the end"
        );
    }
    assert!(dead_letters(&app, &endpoint).await.is_empty());
    // And the outbox empties once every event is settled (the pruner runs every `prune_every`).
    let deadline = Instant::now() + Duration::from_secs(30);
    while outbox_rows(&db) > 0 {
        assert!(
            Instant::now() < deadline,
            "the outbox keeps {} settled rows",
            outbox_rows(&db)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "webhook outage: {:?} ({OUTAGE_PERIODS} retry periods of {RETRY_PERIOD}s), {CHANNELS} channels, {} events \
         sent during it, {} in all; outbox at most {max_rows} rows over {samples} samples (bound up to {max_bound}); \
         {} delivered in order, {} dead-lettered then redelivered",
        outage,
        sent_in_outage,
        all.len(),
        delivered.len(),
        letter_ids.len()
    );
}

/// The channel and seq of a `message.sent` body.
fn message_key(body: &Value) -> (String, u64) {
    let m = &body["data"]["message"];
    (
        m["channel_id"].as_str().unwrap().to_string(),
        m["seq"].as_u64().unwrap(),
    )
}

async fn dead_letters(app: &TestApp, endpoint: &str) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    loop {
        let after = out.last().map(|l| l["event_id"].as_u64().unwrap()).unwrap_or(0);
        let path = format!("/api/v1/webhooks/endpoints/{endpoint}/dead_letters?after={after}&limit=200");
        let (s, v) = app.admin("GET", &path, None).await;
        assert_eq!(s, 200, "{v}");
        let page = v["dead_letters"].as_array().unwrap().clone();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}
