//! `fanout`: one group, N receiving members each on its own WebSocket, one publisher (also a member, on its
//! own WebSocket) sending `send` frames. Every member must receive every message, in order.

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
use crate::util::{Target, ms, now_us, per_sec, unix_ms, us_since_epoch};
use crate::ws::{self, MAX_CONCURRENT_HANDSHAKES, Ws, describe_close};

pub struct FanoutOpts {
    pub members: usize,
    pub messages: u64,
    pub window: usize,
    pub rate: Option<f64>,
    /// After the last ack, members must have everything within this time.
    pub drain: Duration,
}

/// Counters shared by the receiving members.
struct Shared {
    /// Every text frame received by members (used to wait for setup traffic to settle).
    frames: AtomicU64,
    /// Frames other than `message.new` of the benchmark channel (presence, channel events…).
    other_frames: AtomicU64,
    deliveries: AtomicU64,
    /// Send → delivery latency in µs (from the scheduled send time when sending at a fixed rate).
    latency: Mutex<Histogram<u64>>,
}

/// The publisher connects to `target`; receiving member `i` to `members_at[i % len]`.
pub async fn run(
    target: &Target,
    members_at: &[Target],
    api: &Api,
    o: &FanoutOpts,
    out: &mut Map<String, Value>,
) -> Result<()> {
    let prefix = format!("b{}", unix_ms());
    let channel = format!("{prefix}-fanout");
    let publisher_id = format!("{prefix}-pub");
    let member_ids: Vec<String> = (0..o.members).map(|i| format!("{prefix}-m{i}")).collect();
    out.insert(
        "mode".into(),
        json!(if o.rate.is_some() { "fixed_rate" } else { "window" }),
    );
    out.insert("receiving_members".into(), json!(o.members));
    out.insert("group_size".into(), json!(o.members + 1));
    out.insert("messages".into(), json!(o.messages));
    out.insert("channel_id".into(), json!(channel));
    match o.rate {
        Some(r) => out.insert("rate_messages_per_sec".into(), json!(r)),
        None => out.insert("window".into(), json!(o.window)),
    };

    // ---- setup over REST ----
    let t = Instant::now();
    eprintln!("fanout: creating {} users and group {channel}…", o.members + 1);
    let mut all_ids = member_ids.clone();
    all_ids.push(publisher_id.clone());
    let tokens = api.users_with_tokens(&all_ids).await?;
    api.create_group(&channel, &all_ids).await?;
    let (start_seq, member_count) = api.channel_state(&channel).await?;
    if member_count != all_ids.len() as u64 {
        bail!("group {channel} has {member_count} members, expected {}", all_ids.len());
    }
    out.insert("setup_ms".into(), json!(ms(t.elapsed())));
    eprintln!("fanout: setup took {} ms", t.elapsed().as_millis());

    // ---- connect members, then the publisher ----
    let t = Instant::now();
    let scanner = Arc::new(Scanner::new(&channel));
    let shared = Arc::new(Shared {
        frames: AtomicU64::new(0),
        other_frames: AtomicU64::new(0),
        deliveries: AtomicU64::new(0),
        latency: Mutex::new(new_histogram()),
    });
    let first_seq = start_seq + 1;
    let last_seq = start_seq + o.messages;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(usize, Result<Instant>)>();
    let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_HANDSHAKES));
    let mut connecting = JoinSet::new();
    for (i, token) in tokens[..o.members].iter().enumerate() {
        let (permits, target, token) = (permits.clone(), members_at[i % members_at.len()].clone(), token.clone());
        connecting.spawn(async move {
            let r = ws::open_limited(&permits, &target, &token, None, ws::receiver_config()).await;
            (i, r)
        });
    }
    let mut members = JoinSet::new();
    let mut connected = 0usize;
    while let Some(joined) = connecting.join_next().await {
        let (i, r) = joined.context("connect task panicked")?;
        let ws = r.with_context(|| format!("member {i} could not connect"))?;
        members.spawn(member(
            i,
            ws,
            scanner.clone(),
            first_seq,
            last_seq,
            shared.clone(),
            done_tx.clone(),
            stop_rx.clone(),
        ));
        connected += 1;
        if connected.is_multiple_of(1000) || connected == o.members {
            eprintln!("fanout: {connected}/{} members connected", o.members);
        }
    }
    let publisher_ws = ws::open(target, &tokens[o.members], None, ws::sender_config())
        .await
        .context("the publisher could not connect")?;
    out.insert("connect_ms".into(), json!(ms(t.elapsed())));

    // Connecting members announce presence to each other; let that traffic drain before measuring.
    let t = Instant::now();
    settle(&shared.frames, Duration::from_millis(500), Duration::from_secs(30)).await;
    let setup_frames = shared.frames.load(Ordering::Relaxed);
    out.insert("settle_ms".into(), json!(ms(t.elapsed())));
    out.insert("frames_received_during_setup".into(), json!(setup_frames));
    eprintln!(
        "fanout: all connected in {:.0} ms; {setup_frames} setup frames (presence) received; sending {} messages…",
        out["connect_ms"].as_f64().unwrap_or(0.0),
        o.messages
    );

    // ---- publish and wait for every delivery ----
    let mut publisher = tokio::spawn(publish(
        publisher_ws,
        scanner.clone(),
        o.messages,
        o.window,
        o.rate,
        first_seq,
        stop_rx.clone(),
    ));
    let expected = o.members as u64 * o.messages;
    let mut members_done = 0usize;
    let mut last_delivery: Option<Instant> = None;
    let mut pub_report: Option<PublisherReport> = None;
    let mut drain_deadline = tokio::time::Instant::now() + Duration::from_secs(24 * 3600);
    let mut progress = tokio::time::interval(Duration::from_secs(2));
    progress.tick().await;
    let result: Result<()> = loop {
        if members_done == o.members && pub_report.is_some() {
            break Ok(());
        }
        tokio::select! {
            r = &mut publisher, if pub_report.is_none() => {
                match r.map_err(|e| anyhow!("publisher task failed: {e}")).and_then(|r| r) {
                    Ok(rep) => {
                        pub_report = Some(rep);
                        drain_deadline = tokio::time::Instant::now() + o.drain;
                    }
                    Err(e) => break Err(e),
                }
            }
            d = done_rx.recv() => match d {
                Some((_, Ok(at))) => {
                    members_done += 1;
                    last_delivery = Some(last_delivery.map_or(at, |l| l.max(at)));
                }
                Some((i, Err(e))) => break Err(e.context(format!("member {i} ({})", member_ids[i]))),
                None => break Err(anyhow!("member tasks ended early")),
            },
            _ = tokio::time::sleep_until(drain_deadline) => {
                break Err(anyhow!(
                    "{} of {} members had not received all {} messages {:?} after the publisher's last ack \
                     ({} of {expected} deliveries)",
                    o.members - members_done, o.members, o.messages, o.drain,
                    shared.deliveries.load(Ordering::Relaxed)
                ));
            }
            _ = progress.tick() => {
                eprintln!(
                    "fanout: {} / {expected} deliveries, {members_done} members complete",
                    shared.deliveries.load(Ordering::Relaxed)
                );
            }
        }
    };
    let deliveries = shared.deliveries.load(Ordering::Relaxed);
    out.insert("expected_deliveries".into(), json!(expected));
    out.insert("deliveries".into(), json!(deliveries));
    out.insert("members_complete".into(), json!(members_done));
    out.insert(
        "other_frames_received".into(),
        json!(shared.other_frames.load(Ordering::Relaxed)),
    );

    // Close everything (also on failure), then report.
    let _ = stop_tx.send(true);
    publisher.abort();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while members.join_next().await.is_some() {}
    })
    .await;
    result?;

    let mut rep = pub_report.expect("publisher finished");
    let _ = tokio::time::timeout(Duration::from_secs(2), rep.ws.close(None)).await;
    let last = last_delivery.unwrap_or(rep.first_send);
    let elapsed = last.saturating_duration_since(rep.first_send);
    out.insert("publisher_acks".into(), json!(rep.acks));
    out.insert("publisher_echoes_received".into(), json!(rep.echoes));
    out.insert(
        "send_duration_ms".into(),
        json!(ms(rep.last_send.saturating_duration_since(rep.first_send))),
    );
    out.insert("first_send_to_last_delivery_ms".into(), json!(ms(elapsed)));
    out.insert("deliveries_per_sec".into(), json!(per_sec(deliveries, elapsed)));
    out.insert("messages_per_sec".into(), json!(per_sec(o.messages, elapsed)));
    let hist = shared.latency.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if o.rate.is_some() {
        out.insert("latency_measured_from".into(), json!("scheduled_send_time"));
        latency_fields(out, "latency", &hist);
    } else {
        // Closed loop: the latency from the actual send time is not corrected for coordinated omission.
        out.insert("send_to_delivery_measured_from".into(), json!("actual_send_time"));
        latency_fields(out, "send_to_delivery", &hist);
    }
    let mut ack = Map::new();
    latency_fields(&mut ack, "publisher_ack_latency", &rep.ack_latency);
    out.extend(ack);
    Ok(())
}

/// Waits until `counter` has not moved for `quiet`, or `max` passed.
async fn settle(counter: &AtomicU64, quiet: Duration, max: Duration) {
    let deadline = Instant::now() + max;
    let mut last = counter.load(Ordering::Relaxed);
    while Instant::now() < deadline {
        tokio::time::sleep(quiet).await;
        let now = counter.load(Ordering::Relaxed);
        if now == last {
            return;
        }
        last = now;
    }
}

/// One receiving member: checks that `message.new` sequences arrive as `first_seq`, `first_seq + 1`, … up to
/// `last_seq`, records latencies, reports completion (or the first problem), then keeps reading until stopped.
#[allow(clippy::too_many_arguments)]
async fn member(
    idx: usize,
    mut ws: Ws,
    scanner: Arc<Scanner>,
    first_seq: u64,
    last_seq: u64,
    shared: Arc<Shared>,
    done: mpsc::UnboundedSender<(usize, Result<Instant>)>,
    mut stop: watch::Receiver<bool>,
) {
    let mut expected = first_seq;
    // Only the first problem is reported; completion is reported only when there was none.
    let mut failed = false;
    let mut fail = |e: anyhow::Error| {
        if !std::mem::replace(&mut failed, true) {
            let _ = done.send((idx, Err(e)));
        }
    };
    loop {
        let msg = tokio::select! {
            biased;
            _ = stop.changed() => break,
            m = ws.next() => m,
        };
        match msg {
            Some(Ok(Message::Text(t))) => {
                shared.frames.fetch_add(1, Ordering::Relaxed);
                match scanner.classify(&t) {
                    Frame::MessageNew { ours: true, seq, stamp } => {
                        let at = Instant::now();
                        if seq != expected {
                            fail(anyhow!(
                                "expected message.new seq {expected}, got {seq} (after {} in-order deliveries)",
                                expected - first_seq
                            ));
                            continue;
                        }
                        expected += 1;
                        shared.deliveries.fetch_add(1, Ordering::Relaxed);
                        match stamp {
                            Some(s) => {
                                let lat = us_since_epoch(at).saturating_sub(s.ts_us).max(1);
                                shared
                                    .latency
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .saturating_record(lat);
                            }
                            None => fail(anyhow!("message seq {seq} carries no benchmark timestamp")),
                        }
                        if seq == last_seq {
                            let _ = done.send((idx, Ok(at)));
                        }
                    }
                    Frame::Error { code, message, .. } => fail(anyhow!("server error frame: {code}: {message}")),
                    _ => {
                        shared.other_frames.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Some(Ok(Message::Close(f))) => {
                fail(anyhow!("server closed the connection: {}", describe_close(f.as_ref())));
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                fail(anyhow!("connection error: {e}"));
                break;
            }
            None => {
                fail(anyhow!("connection ended"));
                break;
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
}

struct PublisherReport {
    ws: Ws,
    first_send: Instant,
    last_send: Instant,
    acks: u64,
    echoes: u64,
    ack_latency: Histogram<u64>,
}

/// Sends `messages` stamped `send` frames, with at most `window` unacknowledged (or on a fixed schedule when
/// `rate` is set), and checks the acks and the echoes of its own messages.
async fn publish(
    ws: Ws,
    scanner: Arc<Scanner>,
    messages: u64,
    window: usize,
    rate: Option<f64>,
    first_seq: u64,
    mut stop: watch::Receiver<bool>,
) -> Result<PublisherReport> {
    let (mut sink, mut stream) = ws.split();
    let channel = scanner.channel().to_string();
    let permits = Semaphore::new(window);
    // Send times in µs, in send order; acks come back in the same order.
    let (sent_tx, mut sent_rx) = mpsc::unbounded_channel::<u64>();

    let writer = async {
        let mut i = 0u64;
        let first_send = Instant::now();
        match rate {
            None => {
                while i < messages {
                    permits.acquire().await.context("window closed")?.forget();
                    let mut batch = 1;
                    while i + batch < messages {
                        match permits.try_acquire() {
                            Ok(p) => {
                                p.forget();
                                batch += 1;
                            }
                            Err(_) => break,
                        }
                    }
                    let ts = now_us();
                    for _ in 0..batch {
                        let _ = sent_tx.send(ts);
                        sink.feed(Message::text(send_frame(i + 1, &channel, i, ts)))
                            .await
                            .context("publisher write")?;
                        i += 1;
                    }
                    sink.flush().await.context("publisher flush")?;
                }
            }
            Some(rate) => {
                let t0 = first_send;
                let t0_us = us_since_epoch(t0);
                let scheduled = |i: u64| Duration::from_secs_f64(i as f64 / rate);
                while i < messages {
                    tokio::time::sleep_until((t0 + scheduled(i)).into()).await;
                    let elapsed = t0.elapsed().as_secs_f64();
                    let due = ((elapsed * rate).floor() as u64 + 1).clamp(i + 1, messages);
                    while i < due {
                        let ts = t0_us + scheduled(i).as_micros() as u64;
                        let _ = sent_tx.send(ts);
                        sink.feed(Message::text(send_frame(i + 1, &channel, i, ts)))
                            .await
                            .context("publisher write")?;
                        i += 1;
                    }
                    sink.flush().await.context("publisher flush")?;
                }
            }
        }
        Ok::<_, anyhow::Error>((first_send, Instant::now(), sink))
    };

    let reader = async {
        let (mut acks, mut echoes) = (0u64, 0u64);
        let mut expected = first_seq;
        let mut ack_latency = new_histogram();
        while acks < messages || echoes < messages {
            let msg = tokio::select! {
                _ = stop.changed() => bail!("stopped"),
                m = stream.next() => m,
            };
            match msg {
                Some(Ok(Message::Text(t))) => match scanner.classify(&t) {
                    Frame::Ack { .. } => {
                        let now = now_us();
                        acks += 1;
                        if let Ok(ts) = sent_rx.try_recv() {
                            ack_latency.saturating_record(now.saturating_sub(ts).max(1));
                        }
                        if rate.is_none() {
                            permits.add_permits(1);
                        }
                    }
                    Frame::MessageNew { ours: true, seq, .. } => {
                        if seq != expected {
                            bail!("publisher's own connection: expected message.new seq {expected}, got {seq}");
                        }
                        expected += 1;
                        echoes += 1;
                    }
                    Frame::Error { code, message, .. } => {
                        // (main prints the rate-limit hint for `rate_limited`)
                        bail!("publisher got an error frame after {acks} acks: {code}: {message}");
                    }
                    _ => {}
                },
                Some(Ok(Message::Close(f))) => {
                    bail!(
                        "server closed the publisher's connection: {}",
                        describe_close(f.as_ref())
                    )
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("publisher connection error: {e}"),
                None => bail!("publisher connection ended after {acks} acks"),
            }
        }
        Ok((acks, echoes, ack_latency))
    };

    let ((first_send, last_send, sink), (acks, echoes, ack_latency)) = tokio::try_join!(writer, reader)?;
    // The caller keeps the session open until the end of the run, so its going offline does not disturb members.
    let ws = sink
        .reunite(stream)
        .map_err(|_| anyhow!("reuniting the publisher socket"))?;
    Ok(PublisherReport {
        ws,
        first_send,
        last_send,
        acks,
        echoes,
        ack_latency,
    })
}
