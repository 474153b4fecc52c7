//! `send`: many users, each on its own WebSocket and in its own group of one, each sending `send` frames with a
//! window of unacknowledged requests for a fixed duration. An ack comes only after the server stored the
//! message, so this measures durable send throughput and ack latency.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::rest::Api;
use crate::scan::{Frame, Scanner, send_frame};
use crate::stats::{latency_fields, new_histogram};
use crate::util::{Target, ms, now_us, per_sec, unix_ms};
use crate::ws::{self, MAX_CONCURRENT_HANDSHAKES, Ws, describe_close};

pub struct SendOpts {
    pub clients: usize,
    pub duration: Duration,
    pub window: usize,
    /// After the duration, outstanding sends must be answered within this time.
    pub drain: Duration,
}

struct Shared {
    acks: AtomicU64,
    acks_within_duration: AtomicU64,
    errors: AtomicU64,
    echoes: AtomicU64,
    error_codes: Mutex<BTreeMap<String, u64>>,
    /// Send → ack in µs, from the actual send time (closed loop).
    latency: Mutex<Histogram<u64>>,
}

struct ClientReport {
    sent: u64,
    last_answer: Option<Instant>,
}

/// Client `i` connects to `nodes[i % len]`.
pub async fn run(nodes: &[Target], api: &Api, o: &SendOpts, out: &mut Map<String, Value>) -> Result<()> {
    let prefix = format!("b{}", unix_ms());
    let users: Vec<String> = (0..o.clients).map(|i| format!("{prefix}-s{i}")).collect();
    let groups: Vec<(String, Vec<String>)> = users
        .iter()
        .enumerate()
        .map(|(i, u)| (format!("{prefix}-sg{i}"), vec![u.clone()]))
        .collect();
    out.insert("clients".into(), json!(o.clients));
    out.insert("groups".into(), json!(groups.len()));
    out.insert("members_per_group".into(), json!(1));
    out.insert(
        "layout".into(),
        json!("each client is a user with one WebSocket, sending to its own group of one member"),
    );
    out.insert("window_per_client".into(), json!(o.window));
    out.insert("duration_ms".into(), json!(ms(o.duration)));

    let t = Instant::now();
    eprintln!("send: creating {} users and groups…", o.clients);
    let tokens = api.users_with_tokens(&users).await?;
    api.create_groups(&groups).await?;
    out.insert("setup_ms".into(), json!(ms(t.elapsed())));

    let t = Instant::now();
    let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_HANDSHAKES));
    let mut connecting = JoinSet::new();
    for (i, token) in tokens.iter().enumerate() {
        let (permits, target, token) = (permits.clone(), nodes[i % nodes.len()].clone(), token.clone());
        connecting.spawn(async move {
            let config = ws::sender_config().read_buffer_size(16 * 1024);
            (i, ws::open_limited(&permits, &target, &token, None, config).await)
        });
    }
    let mut sockets: Vec<Option<Ws>> = (0..o.clients).map(|_| None).collect();
    while let Some(joined) = connecting.join_next().await {
        let (i, r) = joined.context("connect task panicked")?;
        sockets[i] = Some(r.with_context(|| format!("client {i} could not connect"))?);
    }
    out.insert("connect_ms".into(), json!(ms(t.elapsed())));
    eprintln!(
        "send: {} clients connected in {} ms; sending for {:?}…",
        o.clients,
        t.elapsed().as_millis(),
        o.duration
    );

    let shared = Arc::new(Shared {
        acks: AtomicU64::new(0),
        acks_within_duration: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        echoes: AtomicU64::new(0),
        error_codes: Mutex::new(BTreeMap::new()),
        latency: Mutex::new(new_histogram()),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let start = Instant::now() + Duration::from_millis(50);
    let deadline = start + o.duration;
    let mut tasks = JoinSet::new();
    for (i, ws) in sockets.into_iter().enumerate() {
        let ws = ws.expect("every client connected");
        let scanner = Scanner::new(&groups[i].0);
        tasks.spawn(client(
            ws,
            scanner,
            o.window,
            start,
            deadline,
            deadline + o.drain,
            shared.clone(),
            stop_rx.clone(),
        ));
    }

    let mut progress = tokio::time::interval(Duration::from_secs(2));
    progress.tick().await;
    let mut sent = 0u64;
    let mut last_answer: Option<Instant> = None;
    let result: Result<()> = loop {
        tokio::select! {
            j = tasks.join_next() => match j {
                None => break Ok(()),
                Some(Ok(Ok(rep))) => {
                    sent += rep.sent;
                    if let Some(a) = rep.last_answer {
                        last_answer = Some(last_answer.map_or(a, |l| l.max(a)));
                    }
                }
                Some(Ok(Err(e))) => break Err(e),
                Some(Err(e)) => break Err(anyhow!("client task failed: {e}")),
            },
            _ = progress.tick() => eprintln!(
                "send: {} acks, {} errors",
                shared.acks.load(Ordering::Relaxed),
                shared.errors.load(Ordering::Relaxed)
            ),
        }
    };
    let _ = stop_tx.send(true);
    if result.is_err() {
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
    }

    let acks = shared.acks.load(Ordering::Relaxed);
    let errors = shared.errors.load(Ordering::Relaxed);
    let codes = shared.error_codes.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let elapsed = last_answer.map_or(Duration::ZERO, |l| l.saturating_duration_since(start));
    out.insert("sends".into(), json!(sent));
    out.insert("acked_sends".into(), json!(acks));
    out.insert(
        "acked_within_duration".into(),
        json!(shared.acks_within_duration.load(Ordering::Relaxed)),
    );
    out.insert("first_send_to_last_ack_ms".into(), json!(ms(elapsed)));
    out.insert("acked_sends_per_sec".into(), json!(per_sec(acks, elapsed)));
    out.insert("errors".into(), json!(errors));
    out.insert("error_codes".into(), json!(codes));
    out.insert("echoes_received".into(), json!(shared.echoes.load(Ordering::Relaxed)));
    out.insert("ack_latency_measured_from".into(), json!("actual_send_time"));
    let hist = shared.latency.lock().unwrap_or_else(|e| e.into_inner()).clone();
    latency_fields(out, "ack_latency", &hist);
    result?;
    if errors > 0 {
        // The error names the codes; main adds the rate-limit hint for `rate_limited`.
        bail!("{errors} sends were answered with an error frame: {codes:?}");
    }
    Ok(())
}

/// One client: keeps up to `window` sends unanswered from `start` until `deadline`, then waits for the rest
/// of the answers (until `drain_deadline`).
#[allow(clippy::too_many_arguments)]
async fn client(
    ws: Ws,
    scanner: Scanner,
    window: usize,
    start: Instant,
    deadline: Instant,
    drain_deadline: Instant,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> Result<ClientReport> {
    let (mut sink, mut stream) = ws.split();
    let channel = scanner.channel().to_string();
    let permits = Semaphore::new(window);
    // (req_id, send time µs) in send order; the server answers in the same order.
    let (sent_tx, mut sent_rx) = mpsc::unbounded_channel::<(u64, u64)>();
    let (total_tx, mut total_rx) = watch::channel::<Option<u64>>(None);

    let writer = async {
        tokio::time::sleep_until(start.into()).await;
        let mut n = 0u64;
        loop {
            tokio::select! {
                p = permits.acquire() => p.context("window closed")?.forget(),
                _ = tokio::time::sleep_until(deadline.into()) => break,
            }
            if Instant::now() >= deadline {
                break;
            }
            let mut batch = 1;
            while let Ok(p) = permits.try_acquire() {
                p.forget();
                batch += 1;
            }
            let ts = now_us();
            for _ in 0..batch {
                n += 1;
                let _ = sent_tx.send((n, ts));
                sink.feed(Message::text(send_frame(n, &channel, n - 1, ts)))
                    .await
                    .context("write")?;
            }
            sink.flush().await.context("flush")?;
        }
        let _ = total_tx.send(Some(n));
        Ok::<_, anyhow::Error>(n)
    };

    let reader = async {
        let mut answered = 0u64;
        let mut total: Option<u64> = None;
        let mut expected_echo = 1u64; // a fresh group
        let mut last_answer = None;
        loop {
            if total == Some(answered) {
                return Ok(last_answer);
            }
            let msg = tokio::select! {
                biased;
                _ = stop.changed() => bail!("stopped"),
                _ = tokio::time::sleep_until(drain_deadline.into()) => {
                    bail!("{} sends still unanswered {:?} after the end of the run", total.unwrap_or(0) - answered,
                        drain_deadline - deadline)
                }
                r = total_rx.changed(), if total.is_none() => {
                    if r.is_ok() {
                        total = *total_rx.borrow();
                    }
                    continue;
                }
                m = stream.next() => m,
            };
            match msg {
                Some(Ok(Message::Text(t))) => {
                    let frame = scanner.classify(&t);
                    let req = match &frame {
                        Frame::Ack { req_id, .. } => Some(*req_id),
                        Frame::Error { req_id, .. } => Some(req_id.as_deref().and_then(|r| r.parse().ok())),
                        _ => None,
                    };
                    if let Some(req) = req {
                        let now = Instant::now();
                        let (want, ts) = sent_rx
                            .try_recv()
                            .map_err(|_| anyhow!("an answer arrived for no outstanding send: {}", t.as_str()))?;
                        if req != Some(want) {
                            bail!("answers out of order: expected req_id {want}, got {}", t.as_str());
                        }
                        answered += 1;
                        last_answer = Some(now);
                        permits.add_permits(1);
                        match frame {
                            Frame::Ack { .. } => {
                                shared.acks.fetch_add(1, Ordering::Relaxed);
                                if now <= deadline {
                                    shared.acks_within_duration.fetch_add(1, Ordering::Relaxed);
                                }
                                let lat = crate::util::us_since_epoch(now).saturating_sub(ts).max(1);
                                shared
                                    .latency
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .saturating_record(lat);
                            }
                            Frame::Error { code, message, .. } => {
                                let first = shared.errors.fetch_add(1, Ordering::Relaxed) == 0;
                                if first {
                                    eprintln!("send: first error frame: {code}: {message}");
                                }
                                *shared
                                    .error_codes
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .entry(code)
                                    .or_insert(0) += 1;
                            }
                            _ => {}
                        }
                    } else if let Frame::MessageNew { ours: true, seq, .. } = frame {
                        if seq != expected_echo {
                            bail!("own group: expected message.new seq {expected_echo}, got {seq}");
                        }
                        expected_echo = seq + 1;
                        shared.echoes.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(Ok(Message::Close(f))) => bail!("server closed the connection: {}", describe_close(f.as_ref())),
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("connection error: {e}"),
                None => bail!("connection ended"),
            }
        }
    };

    let (sent, last_answer) = tokio::try_join!(writer, reader)?;
    let mut ws = sink.reunite(stream).map_err(|_| anyhow!("reuniting the socket"))?;
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    Ok(ClientReport { sent, last_answer })
}

/// With a webhook sink: waits (up to `drain`) until every acked send was announced, and reports how many
/// events arrived and how long after the last ack the relay caught up.
pub async fn await_webhooks(sink: &crate::webhook_sink::Sink, drain: Duration, out: &mut Map<String, Value>) {
    let acked = out.get("acked_sends").and_then(Value::as_u64).unwrap_or(0) as usize;
    let since = Instant::now();
    while sink.count() < acked && since.elapsed() < drain {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = sink.received.lock().unwrap_or_else(|e| e.into_inner());
    out.insert("webhook_events_received".into(), json!(r.ids.len()));
    out.insert("webhook_requests".into(), json!(r.requests));
    out.insert(
        "webhook_catch_up_after_last_ack_ms".into(),
        json!(r.last.map(|l| ms(l.saturating_duration_since(since)))),
    );
}
