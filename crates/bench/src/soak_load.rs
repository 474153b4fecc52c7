//! The soak's load: long-running tasks that each drive one kind of work, check what they get (acks in
//! order, deliveries without gaps, replies `complete`, 2xx answers) and count it; every failure is an error
//! in [`Counters`], and a task whose connection fails reconnects and goes on.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::fake_llm::trigger_text;
use crate::rest::Api;
use crate::soak::Sample;
use crate::stats::new_histogram;
use crate::util::{Target, now_us, unix_ms, us_to_ms};
use crate::ws::{self, Ws};

#[derive(Debug, Clone)]
pub struct LoadOpts {
    /// WebSockets sending acknowledged messages, each to a group of its own.
    pub senders: usize,
    /// Messages per second over all senders.
    pub send_rate: f64,
    /// Receiving members of the fan-out group.
    pub fanout_members: usize,
    /// Messages per second into the fan-out group.
    pub fanout_rate: f64,
    pub bot_every: Duration,
    pub bot_tokens: u32,
    /// A member of the fan-out group disconnects this often and resumes a second later.
    pub reconnect_every: Duration,
    pub upload_every: Duration,
    pub history_every: Duration,
}

impl LoadOpts {
    pub fn json(&self) -> Value {
        json!({
            "senders": self.senders, "send_rate": self.send_rate, "fanout_members": self.fanout_members,
            "fanout_rate": self.fanout_rate, "bot_every_s": self.bot_every.as_secs_f64(),
            "bot_tokens": self.bot_tokens, "reconnect_every_s": self.reconnect_every.as_secs_f64(),
            "upload_every_s": self.upload_every.as_secs_f64(), "history_every_s": self.history_every.as_secs_f64(),
        })
    }
}

/// What the load did so far.
pub struct Counters {
    errors: AtomicU64,
    sends: AtomicU64,
    deliveries: AtomicU64,
    bot_replies: AtomicU64,
    resumes: AtomicU64,
    uploads: AtomicU64,
    history_reads: AtomicU64,
    first_errors: Mutex<Vec<String>>,
    /// Since the last sample: ack latency of the senders, and fan-out delivery latency (µs).
    ack: Mutex<Histogram<u64>>,
    delivery: Mutex<Histogram<u64>>,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            errors: AtomicU64::new(0),
            sends: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            bot_replies: AtomicU64::new(0),
            resumes: AtomicU64::new(0),
            uploads: AtomicU64::new(0),
            history_reads: AtomicU64::new(0),
            first_errors: Mutex::new(Vec::new()),
            ack: Mutex::new(new_histogram()),
            delivery: Mutex::new(new_histogram()),
        }
    }
}

const KEPT_ERRORS: usize = 20;

impl Counters {
    fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        eprintln!("soak: error: {what}");
        let mut first = self.first_errors.lock().unwrap_or_else(|e| e.into_inner());
        if first.len() < KEPT_ERRORS {
            first.push(what);
        }
    }

    pub fn first_errors(&self) -> Vec<String> {
        self.first_errors.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn record(h: &Mutex<Histogram<u64>>, us: u64) {
        let _ = h.lock().unwrap_or_else(|e| e.into_inner()).record(us.max(1));
    }

    /// The p99s (ms) since the last call, which starts new windows.
    pub fn take_p99s(&self) -> (Option<f64>, Option<f64>) {
        let take = |h: &Mutex<Histogram<u64>>| {
            let mut h = h.lock().unwrap_or_else(|e| e.into_inner());
            let p = (!h.is_empty()).then(|| us_to_ms(h.value_at_quantile(0.99)));
            h.reset();
            p
        };
        (take(&self.ack), take(&self.delivery))
    }

    pub fn snapshot(&self) -> Sample {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Sample {
            errors: get(&self.errors),
            sends: get(&self.sends),
            deliveries: get(&self.deliveries),
            bot_replies: get(&self.bot_replies),
            resumes: get(&self.resumes),
            uploads: get(&self.uploads),
            history_reads: get(&self.history_reads),
            ..Sample::default()
        }
    }
}

/// How long one answer (an ack, a reply's end, an HTTP response) may take before it counts as an error.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Wait before reconnecting after a failure.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Creates the users, channels and bot, connects, and starts the tasks (they run until aborted).
pub async fn start(
    target: &Target,
    api: &Api,
    o: &LoadOpts,
    provider: &str,
    c: std::sync::Arc<Counters>,
) -> Result<JoinSet<()>> {
    let p = format!("s{}", unix_ms());
    let senders: Vec<String> = (0..o.senders).map(|i| format!("{p}-s{i}")).collect();
    let members: Vec<String> = (0..o.fanout_members).map(|i| format!("{p}-f{i}")).collect();
    let (publisher, roamer, bot_user, uploader, bot) = (
        format!("{p}-fp"),
        format!("{p}-fr"),
        format!("{p}-bu"),
        format!("{p}-up"),
        format!("{p}-bot"),
    );
    let mut ids = senders.clone();
    ids.extend(members.iter().cloned());
    ids.extend([publisher.clone(), roamer.clone(), bot_user.clone(), uploader.clone()]);
    let tokens = api.users_with_tokens(&ids).await?;
    let token_of = |id: &str| tokens[ids.iter().position(|x| x == id).expect("known user")].clone();
    let groups: Vec<(String, Vec<String>)> = senders
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("{p}-sg{i}"), vec![s.clone()]))
        .collect();
    api.create_groups(&groups).await?;
    let fan = format!("{p}-fan");
    let mut fan_members = members.clone();
    fan_members.extend([publisher.clone(), roamer.clone()]);
    api.create_group(&fan, &fan_members).await?;
    let files = format!("{p}-files");
    api.create_group(&files, std::slice::from_ref(&uploader)).await?;
    api.create_bot(
        &bot,
        json!({"provider": provider, "max_concurrent": 10, "max_output_tokens": 512}),
    )
    .await?;
    let bot_channel = api
        .direct_channels(std::slice::from_ref(&bot_user), &bot)
        .await?
        .remove(0);

    let http = reqwest::Client::builder().timeout(ANSWER_TIMEOUT).build()?;
    let mut set = JoinSet::new();
    let every = |rate: f64| Duration::from_secs_f64(1.0 / rate.max(0.001));
    for (i, (channel, _)) in groups.into_iter().enumerate() {
        let per_sender = o.send_rate / o.senders.max(1) as f64;
        let w = Worker::new(target, &token_of(&senders[i]), &c);
        set.spawn(w.sender(channel, every(per_sender)));
    }
    let fan_last = api.channel_state(&fan).await?.0;
    for m in &members {
        let w = Worker::new(target, &token_of(m), &c);
        set.spawn(w.member(fan.clone(), fan_last));
    }
    let w = Worker::new(target, &token_of(&roamer), &c);
    set.spawn(w.roamer(fan.clone(), fan_last, o.reconnect_every));
    let w = Worker::new(target, &token_of(&publisher), &c);
    set.spawn(w.sender(fan.clone(), every(o.fanout_rate)));
    let w = Worker::new(target, &token_of(&bot_user), &c);
    set.spawn(w.bot(bot_channel, bot, o.bot_every));
    let base = target.http_base.clone();
    let up = Rest {
        http: http.clone(),
        base: base.clone(),
        token: token_of(&uploader),
        c: c.clone(),
    };
    set.spawn(up.uploads(files, o.upload_every));
    let reader = Rest {
        http,
        base,
        token: token_of(&publisher),
        c,
    };
    set.spawn(reader.history(fan, o.history_every));
    Ok(set)
}

/// One WebSocket user of the load.
struct Worker {
    target: Target,
    token: String,
    c: std::sync::Arc<Counters>,
}

impl Worker {
    fn new(target: &Target, token: &str, c: &std::sync::Arc<Counters>) -> Worker {
        Worker {
            target: target.clone(),
            token: token.to_string(),
            c: c.clone(),
        }
    }

    async fn open(&self, resume: Option<(&str, u64)>) -> Result<Ws> {
        let mut channels = serde_json::Map::new();
        if let Some((ch, seq)) = resume {
            channels.insert(ch.to_string(), json!(seq));
        }
        let hello = json!({"type": "hello", "resume": channels}).to_string();
        ws::open_with_hello(&self.target, &self.token, None, ws::receiver_config(), &hello).await
    }

    /// Sends to `channel` every `every`, each send acknowledged, acks in strictly increasing seq.
    async fn sender(self, channel: String, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n = 0u64;
        loop {
            let mut ws = match self.open(None).await {
                Ok(ws) => ws,
                Err(e) => {
                    self.c.error(format!("sender {channel}: connect: {e:#}"));
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                }
            };
            let mut last: Option<u64> = None;
            let r: Result<()> = async {
                loop {
                    tick.tick().await;
                    n += 1;
                    let req = n.to_string();
                    let frame =
                        json!({"type": "send", "req_id": req, "channel_id": channel, "text": format!("f{}", now_us())});
                    let t = Instant::now();
                    ws.send(Message::text(frame.to_string())).await?;
                    let ack = answer(&mut ws, &req).await?;
                    Counters::record(&self.c.ack, t.elapsed().as_micros() as u64);
                    let seq = ack["seq"].as_u64().context("ack without seq")?;
                    if let Some(l) = last
                        && seq <= l
                    {
                        bail!("ack seq {seq} after {l}");
                    }
                    last = Some(seq);
                    Counters::bump(&self.c.sends);
                }
            }
            .await;
            if let Err(e) = r {
                self.c.error(format!("sender {channel}: {e:#}"));
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }

    /// Reads the fan-out group: every message once, in order, without gaps; resumes after a failure.
    async fn member(self, channel: String, mut last: u64) {
        loop {
            // Always with resume: nothing sent before the connection (or during a failure) is missed.
            let r: Result<()> = async {
                let mut ws = self.open(Some((channel.as_str(), last))).await?;
                loop {
                    let v = next_frame(&mut ws, None).await?;
                    self.delivered(&channel, &v, &mut last)?;
                }
            }
            .await;
            if let Err(e) = r {
                self.c.error(format!("member of {channel}: {e:#}"));
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }

    /// Checks a frame of the fan-out group; counts a delivery.
    fn delivered(&self, channel: &str, v: &Value, last: &mut u64) -> Result<()> {
        if v["type"] != "message.new" || v["channel_id"] != channel {
            return Ok(());
        }
        let seq = v["seq"].as_u64().context("message.new without seq")?;
        if seq != *last + 1 {
            bail!("seq {seq} after {last}: not in order or a gap");
        }
        *last = seq;
        if let Some(sent) = v["message"]["text"]
            .as_str()
            .and_then(|t| t.strip_prefix('f')?.parse::<u64>().ok())
        {
            Counters::record(&self.c.delivery, now_us().saturating_sub(sent));
        }
        Counters::bump(&self.c.deliveries);
        Ok(())
    }

    /// A member that reads for `every`, leaves, and a second later resumes from the last seq it holds.
    async fn roamer(self, channel: String, mut last: u64, every: Duration) {
        loop {
            let r: Result<()> = async {
                let mut ws = self.open(Some((channel.as_str(), last))).await?;
                loop {
                    let v = next_frame(&mut ws, None).await?;
                    if v["type"] == "resumed" {
                        if v["channels"][&channel].as_u64() != Some(last) {
                            bail!("resumed at {} but holds {last}", v["channels"][&channel]);
                        }
                        break;
                    }
                    self.delivered(&channel, &v, &mut last)?;
                }
                Counters::bump(&self.c.resumes);
                let until = tokio::time::Instant::now() + every;
                while let Ok(v) = tokio::time::timeout_at(until, next_frame(&mut ws, None)).await {
                    self.delivered(&channel, &v?, &mut last)?;
                }
                let _ = ws.close(None).await;
                Ok(())
            }
            .await;
            if let Err(e) = r {
                self.c.error(format!("roamer of {channel}: {e:#}"));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Asks the bot every `every` and waits for its reply to end `complete`.
    async fn bot(self, channel: String, bot: String, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n = 0u32;
        loop {
            let mut ws = match self.open(None).await {
                Ok(ws) => ws,
                Err(e) => {
                    self.c.error(format!("bot user: connect: {e:#}"));
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                }
            };
            let r: Result<()> = async {
                loop {
                    tick.tick().await;
                    n += 1;
                    let req = format!("b{n}");
                    let frame =
                        json!({"type": "send", "req_id": req, "channel_id": channel, "text": trigger_text(0, n)});
                    ws.send(Message::text(frame.to_string())).await?;
                    let mut trigger: Option<i64> = None;
                    let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
                    let mut ended: Vec<(i64, String)> = Vec::new();
                    loop {
                        let v = next_frame(&mut ws, Some(deadline)).await?;
                        match v["type"].as_str() {
                            Some("ack") if v["req_id"] == req.as_str() => trigger = v["message_id"].as_i64(),
                            Some("error") => bail!("error frame {v}"),
                            Some("message.updated") if v["message"]["sender_id"] == bot.as_str() => {
                                let reply = &v["message"]["reply"];
                                let state = reply["state"].as_str().unwrap_or("");
                                if state != "generating"
                                    && let Some(t) = reply["trigger_id"].as_i64()
                                {
                                    ended.push((t, state.to_string()));
                                }
                            }
                            _ => {}
                        }
                        if let Some(t) = trigger
                            && let Some((_, state)) = ended.iter().find(|(id, _)| *id == t)
                        {
                            if state != "complete" {
                                bail!("bot reply to {t} ended {state}");
                            }
                            break;
                        }
                    }
                    Counters::bump(&self.c.bot_replies);
                }
            }
            .await;
            if let Err(e) = r {
                self.c.error(format!("bot conversation: {e:#}"));
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

/// The next text frame as JSON (pings skipped); an error when the socket ends or `deadline` passes.
async fn next_frame(ws: &mut Ws, deadline: Option<tokio::time::Instant>) -> Result<Value> {
    let deadline = deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| anyhow!("no frame in time"))?
            .ok_or_else(|| anyhow!("the connection ended"))??;
        match msg {
            Message::Text(t) => return serde_json::from_str(&t).context("frame is not JSON"),
            Message::Close(f) => bail!("closed by the server: {}", ws::describe_close(f.as_ref())),
            _ => {}
        }
    }
}

/// Reads until the `ack` (or `error`) of request `req`.
async fn answer(ws: &mut Ws, req: &str) -> Result<Value> {
    let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
    loop {
        let v = next_frame(ws, Some(deadline)).await?;
        if v["req_id"] == req {
            return match v["type"].as_str() {
                Some("ack") => Ok(v),
                _ => Err(anyhow!("send refused: {v}")),
            };
        }
    }
}

/// One REST user of the load.
struct Rest {
    http: reqwest::Client,
    base: String,
    token: String,
    c: std::sync::Arc<Counters>,
}

impl Rest {
    async fn call(&self, req: reqwest::RequestBuilder, want: u16) -> Result<Value> {
        let resp = req.bearer_auth(&self.token).send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        if status != want {
            bail!("HTTP {status} (expected {want}): {text}");
        }
        serde_json::from_str(&text).context("response is not JSON")
    }

    /// Uploads a small file and sends it as a message, every `every`.
    async fn uploads(self, channel: String, every: Duration) {
        let mut tick = tokio::time::interval(every);
        let mut n = 0u64;
        loop {
            tick.tick().await;
            n += 1;
            let body = format!("confab-bench soak upload {n}\n").repeat(100);
            let r: Result<()> = async {
                let form = reqwest::multipart::Form::new()
                    .text("channel_id", channel.clone())
                    .part(
                        "file",
                        reqwest::multipart::Part::bytes(body.into_bytes()).file_name(format!("soak-{n}.txt")),
                    );
                let file = self
                    .call(
                        self.http.post(format!("{}/api/v1/files", self.base)).multipart(form),
                        201,
                    )
                    .await?;
                let id = file["id"].as_str().context("upload without id")?;
                let msg = json!({"type": "file", "file_id": id, "text": format!("file {n}")});
                let url = format!("{}/api/v1/channels/{channel}/messages", self.base);
                self.call(self.http.post(url).json(&msg), 201).await?;
                Ok(())
            }
            .await;
            match r {
                Ok(()) => Counters::bump(&self.c.uploads),
                Err(e) => self.c.error(format!("upload {n}: {e:#}")),
            }
        }
    }

    /// Reads the newest page of the channel's history, every `every`.
    async fn history(self, channel: String, every: Duration) {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let url = format!("{}/api/v1/channels/{channel}/messages?limit=50", self.base);
            match self.call(self.http.get(url), 200).await {
                Ok(v) if v["messages"].is_array() => Counters::bump(&self.c.history_reads),
                Ok(v) => self.c.error(format!("history of {channel}: no messages in {v}")),
                Err(e) => self.c.error(format!("history of {channel}: {e:#}")),
            }
        }
    }
}
