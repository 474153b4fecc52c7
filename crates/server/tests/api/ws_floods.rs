//! Issue 15, item 4: what one WebSocket session may repeat. Typing and read frames are coalesced, the frame
//! rate and the sessions per user are capped, and a flood never holds up other users' acknowledged sends.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

/// Members of the flooded channel besides the three actors (not connected: fan-out still looks them up).
const EXTRA_MEMBERS: usize = 30;

struct Room {
    app: TestApp,
    flooder: String,
    watcher: String,
    sender: String,
}

/// A group `big` of a flooder, a watcher, a sender and some more members. `frames_per_sec` 0 lifts the frame
/// rate limit, so only the coalescing of typing and reads stands between the flood and the server.
async fn room(frames_per_sec: u32) -> Room {
    let app = spawn_app_with(|c| {
        c.websocket.max_frames_per_sec = frames_per_sec;
        c.limits.user_send_per_sec = 10_000;
        c.limits.user_send_burst = 10_000;
    })
    .await;
    let flooder = app.user("flooder").await;
    let watcher = app.user("watcher").await;
    let sender = app.user("sender").await;
    let mut members = vec!["flooder".to_string(), "watcher".into(), "sender".into()];
    for i in 0..EXTRA_MEMBERS {
        let id = format!("member{i}");
        app.user(&id).await;
        members.push(id);
    }
    let refs: Vec<&str> = members.iter().map(String::as_str).collect();
    app.group("big", &refs).await;
    Room {
        app,
        flooder,
        watcher,
        sender,
    }
}

/// Sends `n` messages one after the other, each waiting for its ack (and, with `pace`, starting at most that
/// often); returns each ack's latency.
async fn acked_sends(ws: &mut Ws, n: usize, tag: &str, pace: Option<Duration>) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(n);
    let mut ticks = pace.map(tokio::time::interval);
    for i in 0..n {
        if let Some(t) = ticks.as_mut() {
            t.tick().await;
        }
        let started = Instant::now();
        send_json(
            ws,
            json!({"type": "send", "req_id": format!("{tag}{i}"), "channel_id": "big", "text": format!("{tag} {i}")}),
        )
        .await;
        let ack = loop {
            let f = next_json(ws).await;
            if f["type"] == "ack" || f["type"] == "error" {
                break f;
            }
        };
        assert_eq!(ack["type"], "ack", "{ack}");
        assert_eq!(ack["req_id"], format!("{tag}{i}"));
        latencies.push(started.elapsed());
    }
    latencies
}

type Sink = futures_util::stream::SplitSink<Ws, Message>;

/// Floods typing starts and read receipts over the flooder's socket until `stop` is set, then sends a typing
/// stop if asked; its incoming frames are drained so that it is never closed as a slow reader. Returns the frames sent
/// and the socket's halves, to keep it open until the caller has seen what it wants.
async fn flood(
    app: &TestApp,
    token: &str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop_typing: bool,
) -> (usize, Sink, tokio::task::JoinHandle<()>) {
    let ws = app.ws(token, json!({})).await;
    let (mut sink, mut stream) = ws.split();
    let drain = tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
    let mut sent = 0usize;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let batch = async {
            for i in 0..50u64 {
                let frame = if i % 2 == 0 {
                    json!({"type": "typing", "channel_id": "big", "active": true})
                } else {
                    json!({"type": "read", "channel_id": "big", "seq": sent as u64 + i})
                };
                sink.feed(Message::Text(frame.to_string().into())).await.unwrap();
            }
            sink.flush().await.unwrap();
        };
        // The server may stop reading (frame rate limit): look at `stop` now and then all the same.
        if tokio::time::timeout(Duration::from_millis(200), batch).await.is_ok() {
            sent += 50;
        }
    }
    if stop_typing {
        let stop = json!({"type": "typing", "channel_id": "big", "active": false});
        sink.send(Message::Text(stop.to_string().into())).await.unwrap();
    }
    (sent, sink, drain)
}

#[tokio::test]
async fn a_typing_and_read_flood_is_coalesced_and_other_users_sends_keep_flowing() {
    const SENDS: usize = 60;
    let r = room(0).await;
    let mut watcher = r.app.ws(&r.watcher, json!({})).await;
    let mut sender = r.app.ws(&r.sender, json!({})).await;
    let started = Instant::now();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooding = {
        let (stop, token, app) = (stop.clone(), r.flooder.clone(), &r.app);
        async move { flood(app, &token, stop, true).await }
    };
    let sending = async {
        let latencies = acked_sends(&mut sender, SENDS, "m", None).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        latencies
    };
    let ((frames, _sink, _drain), latencies) = tokio::join!(flooding, sending);
    assert_eq!(latencies.len(), SENDS, "every send was acknowledged");
    r.app.send_as(&r.sender, "big", "done").await;

    // The watcher sees every message, and of the flood only what the coalescing lets through.
    let (mut messages, mut starts, mut reads, mut stopped, mut done) = (0, 0, 0, false, false);
    while !(done && stopped) {
        let f = next_json(&mut watcher).await;
        match f["type"].as_str().unwrap() {
            "message.new" if f["message"]["text"] == "done" => done = true,
            "message.new" => messages += 1,
            "typing" if f["user_id"] == "flooder" && f["active"] == true => starts += 1,
            "typing" if f["user_id"] == "flooder" => stopped = true,
            "read" if f["user_id"] == "flooder" => reads += 1,
            _ => {}
        }
    }
    let windows = started.elapsed().as_secs() + 1;
    println!("flood: {frames} frames sent; the watcher saw {starts} typing starts and {reads} reads in {windows} s");
    assert_eq!(messages, SENDS, "every acknowledged message reached the watcher");
    assert!(frames >= 100, "the flood ran ({frames} frames)");
    assert!(starts >= 1, "the first typing start goes out");
    assert!(
        starts as u64 <= windows * 2 / 5 + 1,
        "{starts} typing starts in {windows} s: at most one per 2.5 s"
    );
    assert!(
        reads as u64 <= windows + 2,
        "{reads} read events in {windows} s: at most one per second"
    );
}

#[tokio::test]
async fn the_latest_read_position_wins_and_is_written_when_the_session_closes() {
    let app = spawn_app_with(|c| c.websocket.read_interval_ms = 600_000).await;
    let reader = app.user("reader").await;
    let writer = app.user("writer").await;
    app.group("g", &["reader", "writer"]).await;
    for i in 0..5 {
        app.send_as(&writer, "g", &format!("m{i}")).await;
    }
    let mut watch = app.ws(&writer, json!({})).await;
    let mut ws = app.ws(&reader, json!({})).await;
    send_json(&mut ws, json!({"type": "read", "channel_id": "g", "seq": 1})).await;
    assert_eq!(
        read_of(&mut watch, "reader").await,
        1,
        "the first position is written at once"
    );
    send_json(&mut ws, json!({"type": "read", "channel_id": "g", "seq": 4})).await;
    send_json(&mut ws, json!({"type": "read", "channel_id": "g", "seq": 2})).await;
    send_json(&mut ws, json!({"type": "read", "channel_id": "g", "seq": 3})).await;
    // A ping answered means the reads were handled (replies keep the order of requests).
    send_json(&mut ws, json!({"type": "ping", "req_id": "p"})).await;
    assert_eq!(next_of_type(&mut ws, "pong").await["req_id"], "p");
    ws.close(None).await.unwrap();
    assert_eq!(
        read_of(&mut watch, "reader").await,
        4,
        "the pending position, the highest asked for, is written at close and nothing in between"
    );
    let (s, ch) = app.call("GET", "/api/v1/channels/g", &reader, None).await;
    assert_eq!(s, 200, "{ch}");
    assert_eq!(ch["read_seq"], 4, "{ch}");
}

/// Read positions have a rate per user, on every path that writes them: REST calls beyond the burst get 429,
/// and the same user's WebSocket read is refused with `rate_limited` while another user's goes through.
#[tokio::test]
async fn read_positions_have_a_rate_per_user_over_rest_and_websocket() {
    let app = spawn_app_with(|c| {
        c.limits.user_reads_per_sec = 1;
        c.limits.user_reads_burst = 5;
    })
    .await;
    let reader = app.user("reader").await;
    let other = app.user("other").await;
    app.group("g", &["reader", "other"]).await;
    for i in 0..3 {
        app.send_as(&other, "g", &format!("m{i}")).await;
    }
    let read = |token: String, seq: u64| {
        let app = &app;
        async move {
            app.call("POST", "/api/v1/channels/g/read", &token, Some(json!({"seq": seq})))
                .await
        }
    };
    let mut ws = app.ws(&reader, json!({})).await;
    // A burst of 5, then refusals: the tenth call comes long before four more tokens could accrue at 1/s.
    let mut answers = Vec::new();
    for _ in 0..10 {
        answers.push(read(reader.clone(), 1).await);
    }
    let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
    assert_eq!(&statuses[..5], &[200; 5], "{statuses:?}");
    let (_, refused) = answers
        .iter()
        .find(|(s, _)| *s == 429)
        .unwrap_or_else(|| panic!("no call was refused: {statuses:?}"));
    assert_eq!(refused["error"]["code"], "rate_limited", "{refused}");
    // The same user's WebSocket read right after: the same limit.
    send_json(&mut ws, json!({"type": "read", "channel_id": "g", "seq": 3})).await;
    let refused = next_of_type(&mut ws, "error").await;
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    // The limit is the reader's own: another user's read goes through.
    let (s, v) = read(other.clone(), 3).await;
    assert_eq!(s, 200, "{v}");
}

/// The next `read` event of `user`: its position.
async fn read_of(ws: &mut Ws, user: &str) -> u64 {
    loop {
        let f = next_json(ws).await;
        if f["type"] == "read" && f["user_id"] == user {
            return f["seq"].as_u64().unwrap();
        }
    }
}

#[tokio::test]
async fn a_user_has_at_most_the_configured_number_of_sessions() {
    let app = spawn_app_with(|c| c.websocket.max_sessions_per_user = 2).await;
    let token = app.user("many").await;
    let other = app.user("other").await;
    let mut first = app.ws(&token, json!({})).await;
    let _second = app.ws(&token, json!({})).await;

    let url = format!("ws://{}/api/v1/ws?token={}", app.addr, token);
    let (mut third, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    send_json(&mut third, json!({"type": "hello"})).await;
    let err = next_json(&mut third).await;
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["code"], "limit_exceeded", "{err}");
    assert_eq!(close_code(&mut third, Duration::from_secs(10)).await, Some(4029));
    // Another user is not affected.
    let _o = app.ws(&other, json!({})).await;

    // Once a session has closed, a new one is accepted.
    first.close(None).await.unwrap();
    let _ = close_code(&mut first, Duration::from_secs(10)).await;
    let mut accepted = false;
    for _ in 0..50 {
        let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        send_json(&mut ws, json!({"type": "hello"})).await;
        let f = next_json(&mut ws).await;
        if f["type"] == "welcome" {
            accepted = true;
            break;
        }
        assert_eq!(f["code"], "limit_exceeded", "{f}");
        // The closed session unregisters as its task ends; try again shortly.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(accepted, "a freed slot was never reused");
}

#[tokio::test]
async fn frames_beyond_the_rate_wait_and_every_one_is_answered() {
    const PINGS: usize = 45;
    let app = spawn_app_with(|c| {
        c.websocket.max_frames_per_sec = 20;
        c.websocket.frame_burst = 5;
    })
    .await;
    let token = app.user("pinger").await;
    let ws = app.ws(&token, json!({})).await;
    let (mut sink, mut stream) = ws.split();
    let started = Instant::now();
    for i in 0..PINGS {
        let ping = json!({"type": "ping", "req_id": i.to_string()});
        sink.feed(Message::Text(ping.to_string().into())).await.unwrap();
    }
    sink.flush().await.unwrap();
    let mut answered = 0;
    while answered < PINGS {
        let msg = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("a pong")
            .unwrap()
            .unwrap();
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            assert_eq!(v["type"], "pong", "{v}");
            assert_eq!(v["req_id"], answered.to_string(), "in order, none dropped");
            answered += 1;
        }
    }
    // The rate makes this a floor, not a race: 40 frames past the burst at 20/s cannot be read in < 2 s.
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "{PINGS} frames were read faster than the limit allows ({:?})",
        started.elapsed()
    );
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Figures for the report: other users' acked-send latency without and with a flood on a large channel.
/// `cargo test -p confab --test api ws_floods::flood_latency_figures -- --ignored --nocapture`
#[tokio::test]
#[ignore]
async fn flood_latency_figures() {
    const SENDS: usize = 300;
    // No flood; a flood with the frame rate limit lifted (only coalescing and the bus hold); a flood at the
    // default frame rate limit.
    for (flooding, frames_per_sec) in [(false, 0), (true, 0), (true, 30)] {
        let r = room(frames_per_sec).await;
        // Every member connected, so each flood event that got through would be fanned out to all of them.
        let mut drains = Vec::new();
        for i in 0..EXTRA_MEMBERS {
            let (s, v) = r
                .app
                .admin("POST", &format!("/api/v1/users/member{i}/sessions"), None)
                .await;
            assert_eq!(s, 201, "{v}");
            let ws = r.app.ws(v["token"].as_str().unwrap(), json!({})).await;
            drains.push(tokio::spawn(async move {
                let (_sink, mut stream) = ws.split();
                while let Some(Ok(_)) = stream.next().await {}
            }));
        }
        let _watcher = r.app.ws(&r.watcher, json!({})).await;
        let mut sender = r.app.ws(&r.sender, json!({})).await;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(!flooding));
        let flooder = async {
            if flooding {
                Some(flood(&r.app, &r.flooder, stop.clone(), false).await)
            } else {
                None
            }
        };
        let sending = async {
            // 25 sends a second: under the frame rate limit, so the sender itself is never throttled.
            let l = acked_sends(&mut sender, SENDS, "m", Some(Duration::from_millis(40))).await;
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            l
        };
        let (flooded, mut latencies) = tokio::join!(flooder, sending);
        let frames = flooded.as_ref().map_or(0, |f| f.0);
        latencies.sort();
        println!(
            "flood={flooding} max_frames_per_sec={frames_per_sec}: {SENDS} acked sends, p50 {:?}, p90 {:?}, p99 {:?}, max {:?}; flood frames {frames}",
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.9),
            percentile(&latencies, 0.99),
            latencies.last().unwrap()
        );
        for d in drains {
            d.abort();
        }
    }
}
