//! `bots`: N concurrent bot conversations against the benchmark's own fake LLM provider
//! ([`crate::fake_llm`]), measuring what the server adds between the provider and the client.
//!
//! Layout: N users, each with its own WebSocket and its own direct channel with one bot; the bot's provider
//! is the fake, which the server must be configured to use ([`server_config`]). Two phases:
//!
//! 1. **Streams**: every conversation sends one message to the bot at the same moment (or spread over
//!    `--ramp`). The reply must stream every token in order and end `complete` with the full text.
//!    Per conversation: client TTFT (trigger sent → first delta received), provider TTFT (request arrived →
//!    first token written, at the fake), overhead = their difference (the server's own work before the call
//!    plus the relay of the first token), and for every token the relay delay (written by the fake → received
//!    by the client; each token carries its write time).
//! 2. **Stop**: the first `--stop-streams` conversations send another message and a `stop` frame after
//!    `--stop-after` deltas. The reply must end `stopped`; stop → upstream disconnect is the time from the
//!    `stop` frame to the fake seeing its connection closed.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::fake_llm::{FakeConfig, FakeProvider, TokenStamp, scan_tokens, trigger_text, wait_until};
use crate::rest::Api;
use crate::scan::{frame_type, u64_after};
use crate::stats::{latency_fields, new_histogram};
use crate::util::{CpuSample, Target, find_server_pid, ms, now_us, raise_nofile_limit, unix_ms, us_to_ms};
use crate::ws::{self, MAX_CONCURRENT_HANDSHAKES, Ws, describe_close};

/// The largest `--streams` (and what the printed configuration allows).
pub const MAX_STREAMS: u32 = 10_000;
/// File descriptors kept free for everything else.
const FD_RESERVE: u64 = 100;
/// Targets from the issue: overhead p99, per-token relay p99, stop → upstream disconnect p99 (ms).
const TARGET_OVERHEAD_P99_MS: f64 = 1.0;
const TARGET_RELAY_P99_MS: f64 = 2.0;
const TARGET_STOP_P99_MS: f64 = 100.0;
/// Other processes using this many cores during the measurement get a warning.
const OTHER_CORES_WARNING: f64 = 0.25;
/// After the last stopped reply, how long the fake may take to see the remaining upstream disconnects.
const DISCONNECT_WAIT: Duration = Duration::from_secs(5);
/// Problems kept per conversation, and examples in the summary.
const MAX_PROBLEMS: usize = 3;
const PROBLEM_EXAMPLES: usize = 5;

pub struct BotsOpts {
    pub streams: usize,
    pub stop_streams: usize,
    /// Deltas a stop-phase conversation receives before it sends `stop`.
    pub stop_after: u32,
    pub tokens: u32,
    pub token_interval: Duration,
    pub first_token_delay: Duration,
    pub provider_listen: SocketAddr,
    pub provider_name: String,
    /// Triggers of a phase are spread evenly over this time (zero: all at once).
    pub ramp: Duration,
    /// A reply must be final within the time its tokens take plus this.
    pub drain: Duration,
    /// Stop the first `stop_streams` conversations of the streams phase (under the full load) instead of in a
    /// phase of their own.
    pub stop_during_streams: bool,
    /// The server's pid, for its CPU use (found automatically when a process named `confab` of this user
    /// listens on the port).
    pub server_pid: Option<u32>,
}

impl BotsOpts {
    /// From a trigger to its reply's final state, at most.
    fn reply_timeout(&self) -> Duration {
        self.first_token_delay + self.token_interval * self.tokens + self.drain
    }
}

/// The server configuration the benchmark needs: the fake as an `openai_compatible` provider, and every cap
/// on concurrent replies, triggers and sends raised above [`MAX_STREAMS`].
pub fn server_config(provider_name: &str, provider_listen: SocketAddr) -> String {
    format!(
        r#"# confab-bench bots: run the server with this file (confab serve --config FILE).
[limits]
user_send_per_sec = 1000000
user_send_burst = 1000000

[bot_runtime]
max_concurrent_replies = {MAX_STREAMS}
user_triggers_per_minute = 1000000

[[providers]]
name = "{provider_name}"
kind = "openai_compatible"
base_url = "http://{provider_listen}/v1"
model = "confab-bench-fake"
max_concurrency = {MAX_STREAMS}
"#
    )
}

/// What the controller tells the conversations.
#[derive(Clone, Copy, Debug)]
enum Cmd {
    Wait,
    /// Conversations `0..participants` trigger a reply at `base` + their share of `ramp`.
    Phase {
        phase: u8,
        participants: usize,
        base: Instant,
        ramp: Duration,
    },
    Close,
}

const PHASE_STREAMS: u8 = 0;
const PHASE_STOP: u8 = 1;

struct ConvCtx {
    idx: usize,
    channel: String,
    bot: String,
    stop_after: u32,
    /// Conversations `0..stop_streams` stop their reply in the stop phase, or with `stop_during` already in
    /// the streams phase.
    stop_streams: usize,
    stop_during: bool,
    reply_timeout: Duration,
    deltas: Arc<AtomicU64>,
}

/// One conversation's reply in one phase (times in µs on the benchmark's clock).
#[derive(Debug, Default)]
struct ConvResult {
    idx: usize,
    phase: u8,
    /// This reply gets a `stop` (and must end `stopped`).
    stop_planned: bool,
    sent_us: u64,
    ack_us: Option<u64>,
    /// The bot's `message.new` (state `generating`).
    created_us: Option<u64>,
    first_delta_us: Option<u64>,
    stop_sent_us: Option<u64>,
    final_us: Option<u64>,
    /// The final `reply.state`; `None`: no final state in time (lost).
    state: Option<String>,
    reason: Option<String>,
    /// Tokens received, in order.
    tokens: u32,
    deltas: u32,
    /// Deltas that arrived before the reply's `message.new` (the protocol sends it first).
    early_deltas: u32,
    relay_us: Vec<u64>,
    problems: Vec<String>,
    error_frames: Vec<String>,
}

impl ConvResult {
    fn problem(&mut self, p: String) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(p);
        }
    }
}

enum Report {
    Done(ConvResult),
    /// The conversation's WebSocket failed: the run cannot continue.
    Failed {
        idx: usize,
        error: String,
    },
}

/// A `message.delta` frame's message id, offset and text.
pub fn parse_delta(frame: &str) -> Option<(i64, u64, Cow<'_, str>)> {
    if let Some(rest) = frame.strip_prefix(r#"{"type":"message.delta","#)
        && let Some(id) = u64_after(rest, r#""message_id":"#)
        && let Some(offset) = u64_after(rest, r#""offset":"#)
        && let Some(i) = rest.find(r#""delta":""#)
    {
        let s = &rest[i + r#""delta":""#.len()..];
        if let Some(end) = s.find('"')
            && &s[end..] == "\"}"
            && !s[..end].contains('\\')
            && let Ok(id) = i64::try_from(id)
        {
            return Some((id, offset, Cow::Borrowed(&s[..end])));
        }
    }
    // Anything unusual (escapes, another field order): the full parse decides.
    let v: Value = serde_json::from_str(frame).ok()?;
    if v.get("type")?.as_str()? != "message.delta" {
        return None;
    }
    Some((
        v.get("message_id")?.as_i64()?,
        v.get("offset")?.as_u64()?,
        Cow::Owned(v.get("delta")?.as_str()?.to_string()),
    ))
}

enum Step {
    Continue,
    SendStop(i64),
    Final,
}

/// A reply being followed.
struct Active {
    r: ConvResult,
    reply_id: Option<i64>,
    text: String,
    /// Bytes of `text` parsed into tokens.
    parsed: usize,
    bad_text: bool,
    stop_after: Option<u32>,
    deadline: tokio::time::Instant,
    scratch: Vec<TokenStamp>,
}

impl Active {
    fn on_frame(&mut self, frame: &str, now: u64, ctx: &ConvCtx) -> Step {
        // The server writes `type` first; any other order costs a full parse.
        let kind: Cow<'_, str> = match frame_type(frame) {
            Some(k) => Cow::Borrowed(k),
            None => serde_json::from_str::<Value>(frame)
                .ok()
                .and_then(|v| v.get("type")?.as_str().map(str::to_string))
                .map_or(Cow::Borrowed(""), Cow::Owned),
        };
        match kind.as_ref() {
            "message.delta" => self.on_delta(frame, now, ctx),
            kind @ ("message.new" | "message.updated") => {
                let Ok(v) = serde_json::from_str::<Value>(frame) else {
                    self.r.problem(format!("unparsable {kind} frame"));
                    return Step::Continue;
                };
                let m = &v["message"];
                if m["sender_id"].as_str() != Some(ctx.bot.as_str()) || m.get("reply").is_none() {
                    return Step::Continue; // the trigger itself, or not a reply
                }
                let Some(id) = m["id"].as_i64() else {
                    self.r.problem(format!("{kind} without a message id"));
                    return Step::Continue;
                };
                match self.reply_id {
                    None => self.reply_id = Some(id),
                    Some(r) if r != id => {
                        self.r.problem(format!("a second reply {id} (following {r})"));
                        return Step::Continue;
                    }
                    Some(_) => {}
                }
                if kind == "message.new" {
                    self.r.created_us.get_or_insert(now);
                }
                let state = m["reply"]["state"].as_str().unwrap_or("");
                if state == "generating" || state.is_empty() {
                    return Step::Continue;
                }
                self.r.final_us = Some(now);
                self.r.state = Some(state.to_string());
                self.r.reason = m["reply"]["reason"].as_str().map(str::to_string);
                let final_text = m["text"].as_str().unwrap_or("");
                if final_text != self.text {
                    self.r.problem(format!(
                        "the final text ({} bytes) differs from the streamed text ({} bytes)",
                        final_text.len(),
                        self.text.len()
                    ));
                }
                if !self.bad_text && self.parsed != self.text.len() {
                    self.r.problem("the streamed text ends in an incomplete token".into());
                }
                Step::Final
            }
            "ack" => {
                self.r.ack_us.get_or_insert(now);
                Step::Continue
            }
            "error" => {
                let v: Value = serde_json::from_str(frame).unwrap_or(Value::Null);
                let code = v["code"].as_str().unwrap_or("?");
                self.r
                    .error_frames
                    .push(format!("{code}: {}", v["message"].as_str().unwrap_or("")));
                if v["req_id"].as_str() == Some(trigger_req_id(self.r.phase).as_str()) {
                    // The trigger was refused: no reply will come.
                    self.r.problem(format!("the trigger was refused: {code}"));
                    return Step::Final;
                }
                Step::Continue
            }
            _ => Step::Continue,
        }
    }

    fn on_delta(&mut self, frame: &str, now: u64, ctx: &ConvCtx) -> Step {
        let Some((id, offset, delta)) = parse_delta(frame) else {
            self.r.problem("unparsable message.delta frame".into());
            return Step::Continue;
        };
        match self.reply_id {
            None => self.reply_id = Some(id),
            Some(r) if r != id => {
                self.r
                    .problem(format!("a delta of message {id} while following reply {r}"));
                return Step::Continue;
            }
            Some(_) => {}
        }
        if offset != self.text.len() as u64 {
            self.r
                .problem(format!("a delta at offset {offset}, expected {}", self.text.len()));
            self.bad_text = true;
        }
        self.text.push_str(&delta);
        self.r.deltas += 1;
        if self.r.created_us.is_none() {
            self.r.early_deltas += 1;
        }
        ctx.deltas.fetch_add(1, Ordering::Relaxed);
        self.r.first_delta_us.get_or_insert(now);
        if !self.bad_text {
            self.scratch.clear();
            match scan_tokens(&self.text[self.parsed..], &mut self.scratch) {
                Ok(n) => self.parsed += n,
                Err(at) => {
                    let at = self.parsed + at;
                    let snippet: String = self.text[at..].chars().take(40).collect();
                    self.r.problem(format!("unexpected text at byte {at}: {snippet:?}"));
                    self.bad_text = true;
                }
            }
            for s in &self.scratch {
                if s.index != self.r.tokens {
                    let msg = format!("token {} arrived after {} tokens", s.index, self.r.tokens);
                    self.r.problem(msg);
                }
                self.r.tokens += 1;
                self.r.relay_us.push(now.saturating_sub(s.sent_us).max(1));
            }
        }
        if self.stop_after == Some(self.r.deltas) && self.r.stop_sent_us.is_none() {
            return Step::SendStop(id);
        }
        Step::Continue
    }
}

fn trigger_req_id(phase: u8) -> String {
    format!("t{phase}")
}

/// One conversation: waits for a phase, triggers the reply at its time, follows it to its final state and
/// reports; keeps reading between phases (pings) until told to close.
async fn conversation(ctx: ConvCtx, ws: Ws, mut cmd: watch::Receiver<Cmd>, reports: mpsc::UnboundedSender<Report>) {
    let (mut sink, mut stream) = ws.split();
    let mut last_phase: Option<u8> = None;
    let mut pending: Option<(u8, tokio::time::Instant)> = None;
    let mut active: Option<Active> = None;
    let far = tokio::time::Instant::now() + Duration::from_secs(30 * 24 * 3600);
    let fail = |error: String| {
        let _ = reports.send(Report::Failed { idx: ctx.idx, error });
    };
    loop {
        let trigger_at = pending.map(|p| p.1);
        let deadline = active.as_ref().map(|a| a.deadline);
        tokio::select! {
            biased;
            c = cmd.changed() => {
                if c.is_err() {
                    break;
                }
                let c = *cmd.borrow_and_update();
                match c {
                    Cmd::Close => break,
                    Cmd::Phase { phase, participants, base, ramp } if last_phase != Some(phase) => {
                        last_phase = Some(phase);
                        if ctx.idx < participants {
                            let share = ramp.mul_f64(ctx.idx as f64 / participants as f64);
                            pending = Some((phase, (base + share).into()));
                        }
                    }
                    _ => {}
                }
            }
            _ = tokio::time::sleep_until(trigger_at.unwrap_or(far)), if trigger_at.is_some() => {
                let Some((phase, _)) = pending.take() else { continue };
                let frame = json!({
                    "type": "send",
                    "req_id": trigger_req_id(phase),
                    "channel_id": ctx.channel,
                    "text": trigger_text(phase, ctx.idx as u32),
                })
                .to_string();
                let sent_us = now_us();
                if let Err(e) = sink.send(Message::text(frame)).await {
                    fail(format!("sending the trigger: {e}"));
                    break;
                }
                let stop_planned = phase == PHASE_STOP
                    || (phase == PHASE_STREAMS && ctx.stop_during && ctx.idx < ctx.stop_streams);
                active = Some(Active {
                    r: ConvResult { idx: ctx.idx, phase, stop_planned, sent_us, ..Default::default() },
                    reply_id: None,
                    text: String::new(),
                    parsed: 0,
                    bad_text: false,
                    stop_after: stop_planned.then_some(ctx.stop_after),
                    deadline: tokio::time::Instant::now() + ctx.reply_timeout,
                    scratch: Vec::new(),
                });
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => {
                if let Some(mut a) = active.take() {
                    a.r.problem(format!("no final reply state within {:?} of the trigger", ctx.reply_timeout));
                    let _ = reports.send(Report::Done(a.r));
                }
            }
            m = stream.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    let now = now_us();
                    let Some(a) = active.as_mut() else {
                        // A refused `stop` may be answered after the reply's final state (which already shows
                        // the reply was not stopped); any other error frame here is unexpected.
                        if frame_type(&t) == Some("error") && !t.contains(r#""req_id":"s""#) {
                            fail(format!("an error frame outside a reply: {}", t.as_str()));
                            break;
                        }
                        continue;
                    };
                    match a.on_frame(&t, now, &ctx) {
                        Step::Continue => {}
                        Step::SendStop(id) => {
                            let frame = json!({"type": "stop", "req_id": "s", "message_id": id}).to_string();
                            a.r.stop_sent_us = Some(now_us());
                            if let Err(e) = sink.send(Message::text(frame)).await {
                                fail(format!("sending stop: {e}"));
                                break;
                            }
                        }
                        Step::Final => {
                            if let Some(a) = active.take() {
                                let _ = reports.send(Report::Done(a.r));
                            }
                        }
                    }
                }
                Some(Ok(Message::Close(f))) => {
                    fail(format!("server closed the connection: {}", describe_close(f.as_ref())));
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    fail(format!("connection error: {e}"));
                    break;
                }
                None => {
                    fail("connection ended".into());
                    break;
                }
            },
        }
    }
    if let Ok(mut ws) = sink.reunite(stream) {
        let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    }
}

/// Runs one phase: tells the conversations to trigger and collects `participants` reports.
async fn run_phase(
    name: &str,
    phase: u8,
    participants: usize,
    o: &BotsOpts,
    cmd: &watch::Sender<Cmd>,
    reports: &mut mpsc::UnboundedReceiver<Report>,
    deltas: &AtomicU64,
) -> Result<(Vec<ConvResult>, Duration)> {
    let base = Instant::now() + Duration::from_millis(100);
    let _ = cmd.send(Cmd::Phase {
        phase,
        participants,
        base,
        ramp: o.ramp,
    });
    // Every conversation reports by its own deadline; this one only guards against a stuck client.
    let deadline = base + o.ramp + o.reply_timeout() + Duration::from_secs(10);
    let mut results = Vec::with_capacity(participants);
    let mut progress = tokio::time::interval(Duration::from_secs(2));
    progress.tick().await;
    let deltas_before = deltas.load(Ordering::Relaxed);
    while results.len() < participants {
        tokio::select! {
            r = reports.recv() => match r {
                Some(Report::Done(r)) => results.push(r),
                Some(Report::Failed { idx, error }) => bail!("conversation {idx}: {error}"),
                None => bail!("the conversations ended early"),
            },
            _ = tokio::time::sleep_until(deadline.into()) => {
                bail!("{name}: only {} of {participants} conversations reported in time", results.len())
            }
            _ = progress.tick() => eprintln!(
                "bots: {name}: {} deltas, {}/{participants} replies final",
                deltas.load(Ordering::Relaxed) - deltas_before,
                results.len()
            ),
        }
    }
    Ok((results, base.elapsed()))
}

pub async fn run(target: &Target, api: &Api, o: &BotsOpts, out: &mut Map<String, Value>) -> Result<()> {
    let nofile = raise_nofile_limit().map_err(|e| anyhow!("raising the open-files limit: {e}"))?;
    // A WebSocket and an upstream connection (accepted by the fake) per conversation.
    let need = 2 * o.streams as u64 + FD_RESERVE;
    if need > nofile {
        bail!(
            "{} conversations need about {need} file descriptors, but this process may open only {nofile} (ulimit -n)",
            o.streams
        );
    }
    let fake = FakeProvider::start(
        o.provider_listen,
        FakeConfig {
            tokens: o.tokens,
            interval: o.token_interval,
            first_token_delay: o.first_token_delay,
        },
    )?;
    eprintln!(
        "bots: fake provider on {}; the server must run with this configuration (confab-bench bots --print-config):\n{}",
        fake.base_url(),
        server_config(&o.provider_name, fake.addr)
    );
    out.insert("streams".into(), json!(o.streams));
    out.insert("stop_streams".into(), json!(o.stop_streams));
    out.insert("stop_after_deltas".into(), json!(o.stop_after));
    out.insert(
        "stop_mode".into(),
        json!(if o.stop_during_streams {
            "during_streams"
        } else {
            "after_streams"
        }),
    );
    out.insert("tokens_per_reply".into(), json!(o.tokens));
    out.insert("token_interval_ms".into(), json!(ms(o.token_interval)));
    out.insert("first_token_delay_ms".into(), json!(ms(o.first_token_delay)));
    out.insert("ramp_ms".into(), json!(ms(o.ramp)));
    out.insert("provider".into(), json!(o.provider_name));
    let server_pid = o.server_pid.or_else(|| find_server_pid(target.addr.port()));
    out.insert("server_pid".into(), json!(server_pid));
    out.insert("provider_base_url".into(), json!(fake.base_url()));
    out.insert(
        "layout".into(),
        json!("each conversation is a user with one WebSocket and a direct channel with one shared bot"),
    );

    // ---- setup over REST ----
    let t = Instant::now();
    let prefix = format!("b{}", unix_ms());
    let bot = format!("{prefix}-bot");
    let users: Vec<String> = (0..o.streams).map(|i| format!("{prefix}-u{i}")).collect();
    out.insert("bot_id".into(), json!(bot));
    eprintln!(
        "bots: creating bot {bot}, {} users and their direct channels…",
        o.streams
    );
    api.create_bot(
        &bot,
        json!({
            "provider": o.provider_name,
            "max_concurrent": o.streams,
            "max_output_tokens": o.tokens.clamp(512, 32_768),
        }),
    )
    .await
    .context("creating the bot (the server must run with the configuration of `confab-bench bots --print-config`)")?;
    let tokens = api.users_with_tokens(&users).await?;
    let channels = api.direct_channels(&users, &bot).await?;
    out.insert("setup_ms".into(), json!(ms(t.elapsed())));

    // ---- connect ----
    let t = Instant::now();
    let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_HANDSHAKES));
    let mut connecting = JoinSet::new();
    for (i, token) in tokens.iter().enumerate() {
        let (permits, target, token) = (permits.clone(), target.clone(), token.clone());
        connecting.spawn(async move {
            let config = ws::receiver_config();
            (i, ws::open_limited(&permits, &target, &token, None, config).await)
        });
    }
    let mut sockets: Vec<Option<Ws>> = (0..o.streams).map(|_| None).collect();
    while let Some(joined) = connecting.join_next().await {
        let (i, r) = joined.context("connect task panicked")?;
        sockets[i] = Some(r.with_context(|| format!("conversation {i} could not connect"))?);
    }
    out.insert("connect_ms".into(), json!(ms(t.elapsed())));
    eprintln!("bots: {} WebSockets open in {} ms", o.streams, t.elapsed().as_millis());

    let (cmd_tx, cmd_rx) = watch::channel(Cmd::Wait);
    let (report_tx, mut report_rx) = mpsc::unbounded_channel();
    let deltas = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for (i, ws) in sockets.into_iter().enumerate() {
        let ctx = ConvCtx {
            idx: i,
            channel: channels[i].clone(),
            bot: bot.clone(),
            stop_after: o.stop_after,
            stop_streams: o.stop_streams,
            stop_during: o.stop_during_streams,
            reply_timeout: o.reply_timeout(),
            deltas: deltas.clone(),
        };
        tasks.spawn(conversation(
            ctx,
            ws.expect("every conversation connected"),
            cmd_rx.clone(),
            report_tx.clone(),
        ));
    }
    drop(report_tx);

    // ---- the phases ----
    let result = async {
        eprintln!(
            "bots: streams phase: {} replies of {} tokens every {:?}{}…",
            o.streams,
            o.tokens,
            o.token_interval,
            if o.stop_during_streams && o.stop_streams > 0 {
                format!(", the first {} stopped after {} deltas", o.stop_streams, o.stop_after)
            } else {
                String::new()
            }
        );
        let cpu_before = CpuSample::take(server_pid);
        let (streams, streams_elapsed) =
            run_phase("streams", PHASE_STREAMS, o.streams, o, &cmd_tx, &mut report_rx, &deltas).await?;
        out.insert("streams_phase_ms".into(), json!(ms(streams_elapsed)));
        let cpu = CpuSample::take(server_pid).cores_since(&cpu_before);
        out.insert("streams_phase_busy_cores".into(), json!(cpu.machine));
        out.insert("streams_phase_server_cores".into(), json!(cpu.server));
        out.insert("streams_phase_bench_cores".into(), json!(cpu.bench));
        out.insert("streams_phase_other_cores".into(), json!(cpu.other));
        if let Some(other) = cpu.other.filter(|c| *c >= OTHER_CORES_WARNING) {
            eprintln!(
                "bots: warning: other processes kept {other} cores busy during the streams phase; the latencies \
                 measure a shared machine"
            );
        }
        let mut results = streams;
        if o.stop_streams > 0 && !o.stop_during_streams {
            eprintln!(
                "bots: stop phase: {} replies, each stopped after {} deltas…",
                o.stop_streams, o.stop_after
            );
            let (r, elapsed) =
                run_phase("stop", PHASE_STOP, o.stop_streams, o, &cmd_tx, &mut report_rx, &deltas).await?;
            out.insert("stop_phase_ms".into(), json!(ms(elapsed)));
            results.extend(r);
        }
        // The last stops' upstream disconnects may still be on their way.
        wait_until(DISCONNECT_WAIT, || {
            results.iter().filter(|r| r.stop_planned).all(|r| {
                fake.record((r.phase, r.idx as u32))
                    .is_none_or(|u| u.disconnected_us.is_some() || u.completed_us.is_some())
            })
        })
        .await;
        Ok::<_, anyhow::Error>(results)
    }
    .await;

    let _ = cmd_tx.send(Cmd::Close);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    let results = result?;
    summarize(o, &fake, &results, out)
}

/// Records a duration (µs) that must be positive by causality; `None` when a time is missing.
fn record(h: &mut Histogram<u64>, from: Option<u64>, to: Option<u64>) -> Option<u64> {
    let (from, to) = (from?, to?);
    let d = to.saturating_sub(from).max(1);
    h.saturating_record(d);
    Some(d)
}

fn p99_ms(h: &Histogram<u64>) -> Option<f64> {
    (!h.is_empty()).then(|| us_to_ms(h.value_at_quantile(0.99)))
}

fn summarize(o: &BotsOpts, fake: &FakeProvider, results: &[ConvResult], out: &mut Map<String, Value>) -> Result<()> {
    let mut h_client_ttft = new_histogram();
    let mut h_provider_ttft = new_histogram();
    let mut h_overhead = new_histogram();
    let mut h_pre_call = new_histogram();
    let mut h_first_relay = new_histogram();
    let mut h_relay = new_histogram();
    let mut h_ack = new_histogram();
    let mut h_created = new_histogram();
    let mut h_reply = new_histogram();
    let mut h_stop_disconnect = new_histogram();
    let mut h_stop_final = new_histogram();
    let mut h_stop_overhead = new_histogram();
    let mut states: BTreeMap<String, u64> = BTreeMap::new();
    let mut stop_states: BTreeMap<String, u64> = BTreeMap::new();
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    let mut error_codes: BTreeMap<String, u64> = BTreeMap::new();
    let mut examples: Vec<String> = Vec::new();
    let (mut lost, mut wrong_state, mut bad_text, mut errors) = (0u64, 0u64, 0u64, 0u64);
    let (mut complete, mut expected_complete) = (0u64, 0u64);
    let (mut tokens_received, mut deltas_received, mut early_deltas) = (0u64, 0u64, 0u64);
    let (mut stopped, mut stop_wrong, mut stop_missing_disconnect, mut stop_completed_upstream) =
        (0u64, 0u64, 0u64, 0u64);

    for r in results {
        for p in &r.problems {
            if examples.len() < PROBLEM_EXAMPLES {
                examples.push(format!("phase {} conversation {}: {p}", r.phase, r.idx));
            }
        }
        for e in &r.error_frames {
            let code = e.split(':').next().unwrap_or("?").to_string();
            *error_codes.entry(code).or_insert(0) += 1;
        }
        errors += r.error_frames.len() as u64;
        deltas_received += u64::from(r.deltas);
        early_deltas += u64::from(r.early_deltas);
        if let Some(reason) = &r.reason {
            *reasons.entry(reason.clone()).or_insert(0) += 1;
        }
        let upstream = fake.record((r.phase, r.idx as u32));
        let arrived = upstream.as_ref().map(|u| u.arrived_us);
        let first_token = upstream.as_ref().and_then(|u| u.first_token_us);

        if r.phase == PHASE_STREAMS {
            // Every reply of the streams phase counts for the overhead and the relay, also those stopped later.
            for &us in &r.relay_us {
                h_relay.saturating_record(us);
            }
            record(&mut h_ack, Some(r.sent_us), r.ack_us);
            record(&mut h_created, Some(r.sent_us), r.created_us);
            let client_ttft = record(&mut h_client_ttft, Some(r.sent_us), r.first_delta_us);
            let provider_ttft = record(&mut h_provider_ttft, arrived, first_token);
            record(&mut h_pre_call, Some(r.sent_us), arrived);
            record(&mut h_first_relay, first_token, r.first_delta_us);
            if let (Some(c), Some(p)) = (client_ttft, provider_ttft) {
                h_overhead.saturating_record(c.saturating_sub(p).max(1));
            }
        } else if let (Some(first_delta), Some(arrived), Some(first_token)) = (r.first_delta_us, arrived, first_token) {
            // The second trigger of a conversation (the server knows its channel by now).
            let client_ttft = first_delta.saturating_sub(r.sent_us);
            let provider_ttft = first_token.saturating_sub(arrived);
            h_stop_overhead.saturating_record(client_ttft.saturating_sub(provider_ttft).max(1));
        }

        let state = r.state.clone().unwrap_or_else(|| "lost".into());
        if r.stop_planned {
            *stop_states.entry(state).or_insert(0) += 1;
            if r.state.as_deref() == Some("stopped") && r.problems.is_empty() {
                stopped += 1;
            } else {
                stop_wrong += 1;
                if examples.len() < PROBLEM_EXAMPLES && r.problems.is_empty() {
                    examples.push(format!(
                        "phase {} conversation {}: final state {:?} (reason {:?}), expected stopped",
                        r.phase, r.idx, r.state, r.reason
                    ));
                }
            }
            record(&mut h_stop_final, r.stop_sent_us, r.final_us);
            match &upstream {
                Some(u) if u.completed_us.is_some() => stop_completed_upstream += 1,
                Some(u) if u.disconnected_us.is_some() => {
                    record(&mut h_stop_disconnect, r.stop_sent_us, u.disconnected_us);
                }
                _ => stop_missing_disconnect += 1,
            }
            continue;
        }
        expected_complete += 1;
        tokens_received += u64::from(r.tokens);
        *states.entry(state).or_insert(0) += 1;
        record(&mut h_reply, Some(r.sent_us), r.final_us);
        match r.state.as_deref() {
            None => lost += 1,
            Some("complete") => complete += 1,
            Some(_) => wrong_state += 1,
        }
        if r.state.is_some() && !(r.problems.is_empty() && r.tokens == o.tokens) {
            bad_text += 1;
            if r.problems.is_empty() && examples.len() < PROBLEM_EXAMPLES {
                examples.push(format!(
                    "phase {} conversation {}: {} of {} tokens",
                    r.phase, r.idx, r.tokens, o.tokens
                ));
            }
        }
    }

    out.insert("replies_complete".into(), json!(complete));
    out.insert("replies_lost".into(), json!(lost));
    out.insert("replies_wrong_state".into(), json!(wrong_state));
    out.insert("replies_bad_text".into(), json!(bad_text));
    out.insert("final_states".into(), json!(states));
    out.insert("stop_final_states".into(), json!(stop_states));
    if !reasons.is_empty() {
        out.insert("failure_reasons".into(), json!(reasons));
    }
    out.insert("tokens_expected".into(), json!(expected_complete * u64::from(o.tokens)));
    out.insert("tokens_received".into(), json!(tokens_received));
    out.insert("deltas_received".into(), json!(deltas_received));
    out.insert("deltas_before_reply_created".into(), json!(early_deltas));
    out.insert("errors".into(), json!(errors));
    out.insert("error_codes".into(), json!(error_codes));
    out.insert("stop_replies_stopped".into(), json!(stopped));
    out.insert("stop_replies_wrong".into(), json!(stop_wrong));
    out.insert("stop_upstream_completed".into(), json!(stop_completed_upstream));
    out.insert("stop_disconnects_missing".into(), json!(stop_missing_disconnect));
    if !examples.is_empty() {
        out.insert("problem_examples".into(), json!(examples));
    }

    let fs = fake.summary();
    out.insert("provider_connections".into(), json!(fs.connections));
    out.insert("provider_requests".into(), json!(fs.requests));
    out.insert("provider_unmatched_requests".into(), json!(fs.unmatched_requests));
    out.insert("provider_repeated_requests".into(), json!(fs.repeated_requests));
    out.insert("provider_max_streams_in_flight".into(), json!(fs.max_streams_in_flight));

    out.insert(
        "overhead_is".into(),
        json!("client TTFT (trigger sent -> first delta) minus provider TTFT (request arrived -> first token written)"),
    );
    latency_fields(out, "overhead", &h_overhead);
    latency_fields(out, "relay", &h_relay);
    latency_fields(out, "stop_to_disconnect", &h_stop_disconnect);
    latency_fields(out, "client_ttft", &h_client_ttft);
    latency_fields(out, "provider_ttft", &h_provider_ttft);
    latency_fields(out, "pre_call", &h_pre_call);
    latency_fields(out, "first_token_relay", &h_first_relay);
    latency_fields(out, "trigger_ack", &h_ack);
    latency_fields(out, "reply_created", &h_created);
    latency_fields(out, "reply_total", &h_reply);
    latency_fields(out, "stop_to_final", &h_stop_final);
    latency_fields(out, "stop_phase_overhead", &h_stop_overhead);
    latency_fields(out, "provider_token_lateness", &fs.lateness);

    let targets = [
        ("overhead_p99_ms", TARGET_OVERHEAD_P99_MS, p99_ms(&h_overhead)),
        ("relay_p99_ms", TARGET_RELAY_P99_MS, p99_ms(&h_relay)),
        (
            "stop_to_disconnect_p99_ms",
            TARGET_STOP_P99_MS,
            p99_ms(&h_stop_disconnect),
        ),
    ];
    let mut t = Map::new();
    let mut met = Map::new();
    for (name, limit, value) in targets {
        t.insert(name.into(), json!(limit));
        met.insert(name.into(), json!(value.map(|v| v <= limit)));
    }
    out.insert("targets".into(), Value::Object(t));
    out.insert("targets_met".into(), Value::Object(met));
    eprintln!(
        "bots: overhead p50 {} / p99 {} ms, relay p50 {} / p99 {} ms, stop->disconnect p50 {} / p99 {} ms",
        out["overhead_p50_ms"],
        out["overhead_p99_ms"],
        out["relay_p50_ms"],
        out["relay_p99_ms"],
        out["stop_to_disconnect_p50_ms"],
        out["stop_to_disconnect_p99_ms"]
    );

    let mut failures = Vec::new();
    if lost > 0 {
        failures.push(format!("{lost} replies lost (no final state)"));
    }
    if wrong_state > 0 {
        failures.push(format!(
            "{wrong_state} replies ended in a state other than complete: {states:?}"
        ));
    }
    if bad_text > 0 {
        failures.push(format!("{bad_text} replies streamed a wrong or incomplete text"));
    }
    if stop_wrong > 0 {
        failures.push(format!("{stop_wrong} stopped replies did not end stopped"));
    }
    if stop_completed_upstream > 0 {
        failures.push(format!(
            "{stop_completed_upstream} stopped replies still streamed to the end upstream"
        ));
    }
    if stop_missing_disconnect > 0 {
        failures.push(format!(
            "the fake saw no upstream disconnect for {stop_missing_disconnect} stopped replies"
        ));
    }
    if errors > 0 {
        failures.push(format!("{errors} error frames: {error_codes:?}"));
    }
    if fs.unmatched_requests > 0 {
        failures.push(format!(
            "{} upstream requests did not belong to a conversation",
            fs.unmatched_requests
        ));
    }
    if !failures.is_empty() {
        let mut msg = failures.join("; ");
        if let Some(e) = examples.first() {
            msg.push_str(&format!(" (e.g. {e})"));
        }
        if reasons.keys().any(|r| r.contains("not configured")) {
            msg.push_str("; is the server running with the configuration from confab-bench bots --print-config?");
        }
        bail!(msg);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_llm::UpstreamRecord;

    #[test]
    fn deltas_by_prefix_and_by_full_parse() {
        let f =
            r#"{"type":"message.delta","channel_id":"dm.a.b","seq":4,"message_id":77,"offset":14,"delta":"[2:123] "}"#;
        let (id, off, d) = parse_delta(f).unwrap();
        assert_eq!((id, off, d.as_ref()), (77, 14, "[2:123] "));
        assert!(matches!(d, Cow::Borrowed(_)));
        // Escapes and another field order go through the full parse.
        let f = r#"{"type":"message.delta","channel_id":"c","seq":4,"message_id":7,"offset":0,"delta":"a\"b"}"#;
        let (_, _, d) = parse_delta(f).unwrap();
        assert_eq!(d, "a\"b");
        assert!(matches!(d, Cow::Owned(_)));
        let f = r#"{"delta":"x","type":"message.delta","message_id":7,"offset":3}"#;
        assert_eq!(
            parse_delta(f).map(|(i, o, d)| (i, o, d.into_owned())),
            Some((7, 3, "x".into()))
        );
        assert!(parse_delta(r#"{"type":"message.new","channel_id":"c","seq":1}"#).is_none());
        assert!(parse_delta("nope").is_none());
    }

    fn ctx() -> ConvCtx {
        ConvCtx {
            idx: 0,
            channel: "dm.bot.u".into(),
            bot: "bot".into(),
            stop_after: 2,
            stop_streams: 0,
            stop_during: false,
            reply_timeout: Duration::from_secs(1),
            deltas: Arc::new(AtomicU64::new(0)),
        }
    }

    fn active(phase: u8, stop_after: Option<u32>) -> Active {
        Active {
            r: ConvResult {
                phase,
                sent_us: 1_000,
                ..Default::default()
            },
            reply_id: None,
            text: String::new(),
            parsed: 0,
            bad_text: false,
            stop_after,
            deadline: tokio::time::Instant::now(),
            scratch: Vec::new(),
        }
    }

    fn delta(id: i64, offset: usize, text: &str) -> String {
        format!(
            r#"{{"type":"message.delta","channel_id":"dm.bot.u","seq":2,"message_id":{id},"offset":{offset},"delta":"{text}"}}"#
        )
    }

    fn updated(id: i64, state: &str, text: &str) -> String {
        json!({"type": "message.updated", "channel_id": "dm.bot.u", "seq": 2, "message": {
            "id": id, "channel_id": "dm.bot.u", "seq": 2, "sender_id": "bot", "type": "text", "text": text,
            "reply": {"state": state, "trigger_id": 1}}})
        .to_string()
    }

    #[test]
    fn a_reply_is_followed_token_by_token_to_its_final_state() {
        let c = ctx();
        let mut a = active(PHASE_STREAMS, None);
        let created = json!({"type": "message.new", "channel_id": "dm.bot.u", "seq": 2, "message": {
            "id": 9, "sender_id": "bot", "text": "", "reply": {"state": "generating", "trigger_id": 1}}})
        .to_string();
        // The trigger's own echo is not the reply.
        let echo = json!({"type": "message.new", "channel_id": "dm.bot.u", "seq": 1, "message": {
            "id": 8, "sender_id": "u", "text": "hi"}})
        .to_string();
        assert!(matches!(a.on_frame(&echo, 1_100, &c), Step::Continue));
        assert!(matches!(a.on_frame(&created, 1_200, &c), Step::Continue));
        assert_eq!((a.reply_id, a.r.created_us), (Some(9), Some(1_200)));
        // A token split over two deltas counts when complete.
        let t0 = crate::fake_llm::token_text(0, 1_500);
        let t1 = crate::fake_llm::token_text(1, 1_600);
        assert!(matches!(a.on_frame(&delta(9, 0, &t0[..3]), 1_700, &c), Step::Continue));
        assert_eq!(a.r.tokens, 0);
        let rest = format!("{}{t1}", &t0[3..]);
        assert!(matches!(a.on_frame(&delta(9, 3, &rest), 1_800, &c), Step::Continue));
        assert_eq!(a.r.tokens, 2);
        assert_eq!(a.r.relay_us, [300, 200]);
        assert_eq!(a.r.first_delta_us, Some(1_700));
        let full = format!("{t0}{t1}");
        assert!(matches!(
            a.on_frame(&updated(9, "complete", &full), 1_900, &c),
            Step::Final
        ));
        assert_eq!(a.r.state.as_deref(), Some("complete"));
        assert!(a.r.problems.is_empty(), "{:?}", a.r.problems);
        assert_eq!(c.deltas.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn problems_are_noted() {
        let c = ctx();
        let mut a = active(PHASE_STREAMS, None);
        let t0 = crate::fake_llm::token_text(0, 1);
        let t2 = crate::fake_llm::token_text(2, 1);
        a.on_frame(&delta(9, 0, &t0), 10, &c);
        a.on_frame(&delta(9, t0.len(), &t2), 10, &c); // token 1 missing
        a.on_frame(&delta(9, 999, "x"), 10, &c); // gap
        assert!(matches!(
            a.on_frame(&updated(9, "interrupted", "short"), 10, &c),
            Step::Final
        ));
        assert_eq!(a.r.problems.len(), MAX_PROBLEMS);
        assert!(a.r.problems[0].contains("token 2"), "{:?}", a.r.problems);
        // A refused trigger ends the reply at once.
        let mut a = active(PHASE_STREAMS, None);
        let err = r#"{"type":"error","req_id":"t0","code":"rate_limited","message":"slow down"}"#;
        assert!(matches!(a.on_frame(err, 10, &c), Step::Final));
        assert_eq!(a.r.error_frames, ["rate_limited: slow down"]);
        assert_eq!(a.r.state, None);
    }

    #[test]
    fn stop_is_sent_once_after_the_configured_deltas() {
        let c = ctx();
        let mut a = active(PHASE_STOP, Some(2));
        let t0 = crate::fake_llm::token_text(0, 1);
        let t1 = crate::fake_llm::token_text(1, 1);
        assert!(matches!(a.on_frame(&delta(5, 0, &t0), 10, &c), Step::Continue));
        assert!(matches!(
            a.on_frame(&delta(5, t0.len(), &t1), 10, &c),
            Step::SendStop(5)
        ));
        a.r.stop_sent_us = Some(11);
        let text = format!("{t0}{t1}");
        assert!(matches!(a.on_frame(&updated(5, "stopped", &text), 20, &c), Step::Final));
        assert!(a.r.problems.is_empty(), "{:?}", a.r.problems);
    }

    fn opts(stop_streams: usize) -> BotsOpts {
        BotsOpts {
            streams: 2,
            stop_streams,
            stop_after: 2,
            tokens: 3,
            token_interval: Duration::from_millis(20),
            first_token_delay: Duration::from_millis(20),
            provider_listen: "127.0.0.1:0".parse().unwrap(),
            provider_name: "bench-fake".into(),
            ramp: Duration::ZERO,
            drain: Duration::from_secs(1),
            stop_during_streams: true,
            server_pid: None,
        }
    }

    fn fake() -> FakeProvider {
        let cfg = FakeConfig {
            tokens: 3,
            interval: Duration::from_millis(20),
            first_token_delay: Duration::from_millis(20),
        };
        FakeProvider::start("127.0.0.1:0".parse().unwrap(), cfg).unwrap()
    }

    fn upstream(arrived_us: u64, first_token_us: u64, end: Result<u64, u64>) -> UpstreamRecord {
        UpstreamRecord {
            arrived_us,
            first_token_us: Some(first_token_us),
            tokens_sent: 3,
            completed_us: end.ok(),
            disconnected_us: end.err(),
        }
    }

    #[test]
    fn the_summary_computes_overhead_relay_and_stop_and_fails_on_wrong_states() {
        let fake = fake();
        // Conversation 0 completes; conversation 1 is stopped (during the streams phase).
        fake.insert_record((PHASE_STREAMS, 0), upstream(2_000, 22_000, Ok(80_000)));
        fake.insert_record((PHASE_STREAMS, 1), upstream(2_500, 22_500, Err(50_000)));
        let done = ConvResult {
            idx: 0,
            sent_us: 1_000,
            first_delta_us: Some(24_000),
            final_us: Some(90_000),
            state: Some("complete".into()),
            tokens: 3,
            deltas: 3,
            relay_us: vec![2_000, 1_000, 1_000],
            ..Default::default()
        };
        let stopped = ConvResult {
            idx: 1,
            stop_planned: true,
            sent_us: 1_000,
            first_delta_us: Some(23_500),
            stop_sent_us: Some(45_000),
            final_us: Some(52_000),
            state: Some("stopped".into()),
            tokens: 2,
            deltas: 2,
            relay_us: vec![1_000, 1_000],
            ..Default::default()
        };
        let mut out = Map::new();
        summarize(&opts(1), &fake, &[done, stopped], &mut out).unwrap();
        // client TTFT 23 ms - provider TTFT 20 ms; 22.5 ms - 20 ms. (Histograms keep three digits.)
        let near = |k: &str, want: f64| {
            let v = out[k].as_f64().unwrap_or(f64::NAN);
            assert!((v - want).abs() < 0.01, "{k} = {v}, expected {want}");
        };
        near("overhead_max_ms", 3.0);
        near("overhead_p50_ms", 2.5);
        near("relay_max_ms", 2.0);
        near("stop_to_disconnect_p50_ms", 5.0);
        near("pre_call_max_ms", 1.5);
        assert_eq!(out["overhead_samples"], 2);
        assert_eq!(out["relay_samples"], 5);
        assert_eq!(
            (out["replies_complete"].clone(), out["stop_replies_stopped"].clone()),
            (json!(1), json!(1))
        );
        assert_eq!(out["tokens_expected"], 3);
        assert_eq!(out["targets_met"]["stop_to_disconnect_p99_ms"], true);
        assert_eq!(out["targets_met"]["overhead_p99_ms"], false);

        // A lost reply, and a stop that the upstream never saw: the run fails and says why.
        let lost = ConvResult {
            idx: 0,
            sent_us: 1_000,
            problems: vec!["no final reply state within 1s of the trigger".into()],
            ..Default::default()
        };
        let late = ConvResult {
            idx: 1,
            phase: PHASE_STOP,
            stop_planned: true,
            sent_us: 1_000,
            state: Some("complete".into()),
            ..Default::default()
        };
        let mut out = Map::new();
        let err = summarize(&opts(1), &fake, &[lost, late], &mut out)
            .unwrap_err()
            .to_string();
        assert!(err.contains("1 replies lost"), "{err}");
        assert!(err.contains("did not end stopped"), "{err}");
        assert!(err.contains("no upstream disconnect"), "{err}");
        assert_eq!(out["replies_lost"], 1);
        assert_eq!(out["stop_final_states"]["complete"], 1);
    }

    #[test]
    fn the_printed_configuration_raises_every_cap() {
        let c = server_config("bench-fake", "127.0.0.1:18299".parse().unwrap());
        for line in [
            "user_send_per_sec = 1000000",
            "max_concurrent_replies = 10000",
            "user_triggers_per_minute = 1000000",
            "name = \"bench-fake\"",
            "kind = \"openai_compatible\"",
            "base_url = \"http://127.0.0.1:18299/v1\"",
            "max_concurrency = 10000",
        ] {
            assert!(c.contains(line), "{line} missing from\n{c}");
        }
    }
}
