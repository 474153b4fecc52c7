//! `slow-consumer` and `catchup`: the reliability bar's R7 and R4 on a release build.
//!
//! `slow-consumer`: one group, N reading members and a publisher sending at a fixed rate; runs cycle through
//! three modes: without one more member, with it reading like the others, and with its session never
//! reading (tiny receive buffer). The members' delivery latency (from the scheduled send time) is compared:
//! stalled against without (the reliability bar's comparison) and stalled against reading (what stalling
//! costs beyond one more member's deliveries). Every member must get every message in order, and the stalled
//! session must end with close code 4008.
//!
//! `catchup`: a member offline while M messages arrive in its channels resumes with `hello.resume`; measured
//! from the connect to the `resumed` frame, with every message checked in order and without gaps.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::rest::Api;
use crate::stats::{latency_fields, new_histogram};
use crate::util::{Target, ms, now_us, percent_encode, unix_ms, us_to_ms};
use crate::ws::{self, Ws};

pub struct SlowOpts {
    pub members: usize,
    pub rate: f64,
    pub messages: u64,
    pub size: usize,
    pub runs: u32,
}

pub struct CatchupOpts {
    pub messages: u64,
    pub channels: usize,
    pub runs: u32,
}

/// A session with a 4 KiB receive buffer that reads its `welcome` and nothing more.
async fn stalled(target: &Target, token: &str) -> Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.set_recv_buffer_size(4096)?;
    let tcp = sock.connect(target.addr).await?;
    let url = format!("{}/api/v1/ws?token={}", target.ws_base, percent_encode(token));
    let (mut ws, _) = tokio_tungstenite::client_async(url, tcp).await?;
    ws.send(Message::text(r#"{"type":"hello"}"#)).await?;
    match ws.next().await {
        Some(Ok(Message::Text(t))) if t.contains("\"welcome\"") => Ok(ws),
        other => Err(anyhow!("expected welcome, got {other:?}")),
    }
}

/// The next text frame as JSON, within `wait`.
async fn next(ws: &mut Ws, wait: Duration) -> Result<Value> {
    loop {
        match tokio::time::timeout(wait, ws.next()).await {
            Err(_) => bail!("no frame within {wait:?}"),
            Ok(None) => bail!("the connection ended"),
            Ok(Some(m)) => match m? {
                Message::Text(t) => return Ok(serde_json::from_str(&t)?),
                Message::Close(f) => bail!("closed: {}", ws::describe_close(f.as_ref())),
                _ => {}
            },
        }
    }
}

/// Reads `first..=last` of `channel` in order; the latency of each from the time stamped in its text.
async fn read_run(mut ws: Ws, channel: String, first: u64, last: u64) -> Result<(Ws, Histogram<u64>)> {
    let mut h = new_histogram();
    let mut want = first;
    while want <= last {
        let v = next(&mut ws, Duration::from_secs(60)).await?;
        if v["type"] != "message.new" || v["channel_id"] != channel.as_str() {
            continue;
        }
        let now = now_us();
        if v["seq"].as_u64() != Some(want) {
            bail!("expected seq {want}, got {}", v["seq"]);
        }
        let text = v["message"]["text"].as_str().unwrap_or("");
        let sent: u64 = text
            .get(1..text.find(':').unwrap_or(1))
            .unwrap_or("")
            .parse()
            .context("stamp")?;
        h.record(now.saturating_sub(sent).max(1))
            .map_err(|e| anyhow!("{e:?}"))?;
        want += 1;
    }
    Ok((ws, h))
}

/// Sends `count` messages at `rate`, stamped with their scheduled time; waits for every ack.
async fn publish(ws: &mut Ws, channel: &str, count: u64, rate: f64, size: usize) -> Result<(u64, u64)> {
    let (mut sink, mut stream) = ws.split();
    let pad = "x".repeat(size);
    let sends = async {
        let start = Instant::now();
        for i in 0..count {
            let at = start + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(at.into()).await;
            let text = format!("f{}:{pad}", crate::util::us_since_epoch(at));
            let f = json!({"type": "send", "req_id": i.to_string(), "channel_id": channel, "text": text});
            sink.send(Message::text(f.to_string())).await?;
        }
        Ok::<_, anyhow::Error>(())
    };
    let acks = async {
        let (mut first, mut last, mut n) = (None, 0, 0);
        while n < count {
            let m = tokio::time::timeout(Duration::from_secs(60), stream.next())
                .await
                .map_err(|_| anyhow!("no ack in time"))?
                .ok_or_else(|| anyhow!("publisher connection ended"))??;
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(&t)?;
            match v["type"].as_str() {
                Some("ack") => {
                    let seq = v["seq"].as_u64().context("seq")?;
                    first.get_or_insert(seq);
                    last = seq;
                    n += 1;
                }
                Some("error") => bail!("send refused: {v}"),
                _ => {}
            }
        }
        Ok((first.unwrap_or(0), last))
    };
    let (s, a) = tokio::join!(sends, acks);
    s?;
    a
}

pub async fn run_slow(target: &Target, api: &Api, o: &SlowOpts, out: &mut Map<String, Value>) -> Result<()> {
    let p = format!("b{}", unix_ms());
    let channel = format!("{p}-busy");
    let mut ids: Vec<String> = (0..o.members).map(|i| format!("{p}-m{i}")).collect();
    ids.extend([format!("{p}-pub"), format!("{p}-slow")]);
    let tokens = api.users_with_tokens(&ids).await?;
    api.create_group(&channel, &ids).await?;
    let mut readers = Vec::new();
    for t in &tokens[..o.members] {
        readers.push(ws::open(target, t, None, ws::receiver_config()).await?);
    }
    let mut publisher = ws::open(target, &tokens[o.members], None, ws::sender_config()).await?;
    let slow_token = &tokens[o.members + 1];
    let (mut without, mut reading, mut with) = (new_histogram(), new_histogram(), new_histogram());
    let mut runs = Vec::new();
    let mut next_seq = api.channel_state(&channel).await?.0 + 1;
    for r in 0..o.runs {
        let (extra_reads, stall) = (r % 3 == 1, r % 3 == 2);
        let slow = if stall {
            Some(stalled(target, slow_token).await?)
        } else {
            None
        };
        let mut set = JoinSet::new();
        for ws in readers.drain(..) {
            set.spawn(read_run(ws, channel.clone(), next_seq, next_seq + o.messages - 1));
        }
        // The extra member reading like the others; its latencies are not counted (it is the one compared).
        let extra = if extra_reads {
            let ws = ws::open(target, slow_token, None, ws::receiver_config()).await?;
            Some(tokio::spawn(read_run(
                ws,
                channel.clone(),
                next_seq,
                next_seq + o.messages - 1,
            )))
        } else {
            None
        };
        let (first, last) = publish(&mut publisher, &channel, o.messages, o.rate, o.size).await?;
        if (first, last) != (next_seq, next_seq + o.messages - 1) {
            bail!("acks {first}..{last}, expected {next_seq}..");
        }
        let mut h = new_histogram();
        while let Some(j) = set.join_next().await {
            let (ws, hr) = j??;
            readers.push(ws);
            h.add(&hr).map_err(|e| anyhow!("{e:?}"))?;
        }
        if let Some(extra) = extra {
            let (ws, _) = extra.await??;
            drop(ws);
        }
        next_seq += o.messages;
        let close = match slow {
            Some(mut s) => Some(close_code(&mut s).await?),
            None => None,
        };
        if stall && close != Some(4008) {
            bail!("run {r}: the stalled session ended with {close:?}, not 4008");
        }
        let p99 = us_to_ms(h.value_at_quantile(0.99));
        let mode = match (extra_reads, stall) {
            (true, _) => "one more reader",
            (_, true) => "stalled reader",
            _ => "baseline",
        };
        eprintln!("slow-consumer: run {r} ({mode}): p99 {p99} ms");
        runs.push(json!({"mode": mode, "p99_ms": p99, "p50_ms": us_to_ms(h.value_at_quantile(0.5)), "close": close}));
        let into = match (extra_reads, stall) {
            (true, _) => &mut reading,
            (_, true) => &mut with,
            _ => &mut without,
        };
        into.add(&h).map_err(|e| anyhow!("{e:?}"))?;
    }
    let (a, b, c) = (
        us_to_ms(without.value_at_quantile(0.99)),
        us_to_ms(with.value_at_quantile(0.99)),
        us_to_ms(reading.value_at_quantile(0.99)),
    );
    out.insert("members".into(), json!(o.members));
    out.insert("rate".into(), json!(o.rate));
    out.insert("messages_per_run".into(), json!(o.messages));
    out.insert("message_bytes".into(), json!(o.size));
    out.insert("runs".into(), Value::Array(runs));
    latency_fields(out, "without_stalled", &without);
    latency_fields(out, "with_reader", &reading);
    latency_fields(out, "with_stalled", &with);
    let change = |from: f64, to: f64| json!(((to - from) / from * 1000.0).round() / 10.0);
    out.insert("p99_change_pct".into(), change(a, b));
    out.insert("p99_change_vs_reader_pct".into(), change(c, b));
    Ok(())
}

/// Reads a stalled session's buffered frames until its close frame; the close code.
async fn close_code(ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>) -> Result<u16> {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Err(_) => bail!("the stalled session was not closed within 30 s"),
            Ok(Some(Ok(Message::Close(f)))) => return Ok(f.map_or(1005, |f| u16::from(f.code))),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => bail!("the stalled session ended without a close frame: {e}"),
            Ok(None) => bail!("the stalled session ended without a close frame"),
        }
    }
}

pub async fn run_catchup(target: &Target, api: &Api, o: &CatchupOpts, out: &mut Map<String, Value>) -> Result<()> {
    let mut times = Vec::new();
    for r in 0..o.runs {
        let p = format!("b{}-{r}", unix_ms());
        let ids = vec![format!("{p}-online"), format!("{p}-offline")];
        let tokens = api.users_with_tokens(&ids).await?;
        let channels: Vec<(String, Vec<String>)> =
            (0..o.channels).map(|j| (format!("{p}-c{j}"), ids.clone())).collect();
        api.create_groups(&channels).await?;
        let mut sender = ws::open(target, &tokens[0], None, ws::sender_config()).await?;
        let (mut sent, mut acked) = (0u64, 0u64);
        while acked < o.messages {
            while sent < o.messages && sent - acked < 64 {
                let ch = &channels[sent as usize % o.channels].0;
                let f = json!({"type": "send", "channel_id": ch, "text": format!("catch-up message {sent}")});
                sender.feed(Message::text(f.to_string())).await?;
                sent += 1;
            }
            sender.flush().await?;
            let v = next(&mut sender, Duration::from_secs(60)).await?;
            match v["type"].as_str() {
                Some("ack") => acked += 1,
                Some("error") => bail!("send refused: {v}"),
                _ => {}
            }
        }
        drop(sender);
        let resume: Map<String, Value> = channels.iter().map(|(c, _)| (c.clone(), json!(0))).collect();
        let hello = json!({"type": "hello", "resume": resume}).to_string();
        let t = Instant::now();
        let mut ws = ws::open_with_hello(target, &tokens[1], None, ws::receiver_config(), &hello).await?;
        let mut last: std::collections::HashMap<String, u64> = channels.iter().map(|(c, _)| (c.clone(), 0)).collect();
        let mut got = 0u64;
        loop {
            let v = next(&mut ws, Duration::from_secs(60)).await?;
            match v["type"].as_str() {
                Some("message.new") => {
                    let ch = v["channel_id"].as_str().unwrap_or("");
                    let l = last.get_mut(ch).context("a frame of another channel")?;
                    if v["seq"].as_u64() != Some(*l + 1) {
                        bail!("{ch}: seq {} after {l}", v["seq"]);
                    }
                    *l += 1;
                    got += 1;
                }
                Some("resumed") => break,
                Some("error") => bail!("{v}"),
                _ => {}
            }
        }
        let took = t.elapsed();
        if got != o.messages {
            bail!("resumed {got} of {} messages", o.messages);
        }
        eprintln!("catchup: run {r}: {got} messages in {:.0} ms", ms(took));
        times.push(ms(took));
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    out.insert("messages".into(), json!(o.messages));
    out.insert("channels".into(), json!(o.channels));
    out.insert("resume_ms".into(), json!(times));
    out.insert("resume_ms_median".into(), json!(sorted[sorted.len() / 2]));
    out.insert("resume_ms_max".into(), json!(sorted.last()));
    Ok(())
}
