//! The `bots` benchmark's fake LLM provider: a minimal OpenAI-compatible streaming server on loopback.
//!
//! It answers `POST …/chat/completions` with a Server-Sent-Events stream in the OpenAI Chat Completions
//! format (a role chunk, `--tokens` content chunks at a fixed rate, a finish chunk, a usage chunk,
//! `data: [DONE]`), over HTTP/1.1 with chunked encoding and keep-alive. Each content chunk is one token
//! `[<index>:<send time µs>] ` carrying the moment it was handed to the socket, so the client can compute the
//! relay delay of every token (one process, one clock: [`crate::util::now_us`]).
//!
//! It is written directly on tokio sockets (no HTTP framework) for exact timings: the moment a request
//! arrived, the moment each token was written, and the moment the server closed the connection while a
//! stream was still running (the connection is read while the stream waits for its next token, so a close
//! is seen as soon as it arrives, not at the next write). It runs on its own thread and runtime, so its
//! token schedule does not depend on how busy the WebSocket clients are.
//!
//! Requests are matched to the benchmark's conversations by a marker in the last user message
//! ([`trigger_text`]); a request without one gets a 400.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::oneshot;

use crate::stats::new_histogram;
use crate::util::{now_us, us_since_epoch};

/// Largest request (head and body) the fake accepts.
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// Which conversation a request belongs to: (phase, conversation index).
pub type ConvKey = (u8, u32);

// ---- the token and trigger formats (shared by the fake and the client) ----

/// One streamed token: `[<index>:<send time µs>] `.
pub fn token_text(index: u32, sent_us: u64) -> String {
    format!("[{index}:{sent_us}] ")
}

/// What one token carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenStamp {
    pub index: u32,
    pub sent_us: u64,
}

/// Parses the complete tokens at the start of `s` into `out` and returns how many bytes they took. Stops
/// before a trailing incomplete token (a prefix of a valid one: the rest may come with the next delta);
/// `Err(byte offset)` where the text is not a sequence of tokens.
pub fn scan_tokens(s: &str, out: &mut Vec<TokenStamp>) -> Result<usize, usize> {
    let b = s.as_bytes();
    let mut pos = 0;
    loop {
        if pos == b.len() {
            return Ok(pos);
        }
        let start = pos;
        let mut i = pos;
        // '[' digits ':' digits ']' ' '
        if b[i] != b'[' {
            return Err(start);
        }
        i += 1;
        let (index, n) = match digits(&b[i..]) {
            Digits::Number(v, n) => (v, n),
            Digits::Incomplete => return Ok(start),
            Digits::Invalid => return Err(start),
        };
        let Ok(index) = u32::try_from(index) else {
            return Err(start);
        };
        i += n;
        match b.get(i) {
            None => return Ok(start),
            Some(b':') => i += 1,
            Some(_) => return Err(start),
        }
        let (sent_us, n) = match digits(&b[i..]) {
            Digits::Number(v, n) => (v, n),
            Digits::Incomplete => return Ok(start),
            Digits::Invalid => return Err(start),
        };
        i += n;
        for want in [b']', b' '] {
            match b.get(i) {
                None => return Ok(start),
                Some(&c) if c == want => i += 1,
                Some(_) => return Err(start),
            }
        }
        out.push(TokenStamp { index, sent_us });
        pos = i;
    }
}

enum Digits {
    /// The value and how many digits it took (a non-digit follows).
    Number(u64, usize),
    /// Only digits (or nothing) up to the end of the input.
    Incomplete,
    /// No digit, or too many.
    Invalid,
}

fn digits(b: &[u8]) -> Digits {
    let n = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if n > 19 {
        return Digits::Invalid;
    }
    if n == b.len() {
        return Digits::Incomplete;
    }
    if n == 0 {
        return Digits::Invalid;
    }
    let v = std::str::from_utf8(&b[..n]).ok().and_then(|s| s.parse().ok());
    v.map_or(Digits::Invalid, |v| Digits::Number(v, n))
}

const MARKER: &str = "cbm:";

/// The text of a triggering message: names the conversation so the fake can match the upstream request.
pub fn trigger_text(phase: u8, idx: u32) -> String {
    format!("confab-bench bots: conversation {MARKER}{phase}:{idx}; please stream")
}

/// The conversation named by the last marker in `text`.
pub fn parse_marker(text: &str) -> Option<ConvKey> {
    let i = text.rfind(MARKER)? + MARKER.len();
    let rest = &text[i..];
    let (phase, rest) = rest.split_once(':')?;
    let (idx, _) = rest.split_once(';')?;
    Some((phase.parse().ok()?, idx.parse().ok()?))
}

/// The conversation of a Chat Completions request body: the marker in its last user message.
pub fn conversation_of(body: &[u8]) -> Option<ConvKey> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let last_user = v
        .get("messages")?
        .as_array()?
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))?;
    parse_marker(last_user.get("content")?.as_str()?)
}

// ---- HTTP/1.1 request parsing ----

#[derive(Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// Without the query.
    pub path: String,
    /// Bytes of the head, blank line included.
    pub head_len: usize,
    pub content_length: usize,
    /// `Connection: close` or HTTP/1.0.
    pub close: bool,
}

/// Parses a request head at the start of `buf`: `Ok(None)` while it is incomplete.
pub fn parse_head(buf: &[u8]) -> Result<Option<RequestHead>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| "request head is not UTF-8".to_string())?;
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("bad request line {line:?}"));
    };
    let mut close = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        other => return Err(format!("unsupported HTTP version {other:?}")),
    };
    let mut content_length = 0usize;
    for h in lines {
        let (name, value) = h.split_once(':').ok_or_else(|| format!("bad header line {h:?}"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = value.parse().map_err(|_| format!("bad content-length {value:?}"))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("chunked request bodies are not supported".into());
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    let path = target.split('?').next().unwrap_or("").to_string();
    Ok(Some(RequestHead {
        method: method.to_string(),
        path,
        head_len: end + 4,
        content_length,
        close,
    }))
}

// ---- the server ----

#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// Content tokens per reply.
    pub tokens: u32,
    /// Between two tokens.
    pub interval: Duration,
    /// From the request's arrival to the first token.
    pub first_token_delay: Duration,
}

/// What the fake saw of one upstream request (times in µs on the benchmark's clock).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamRecord {
    /// The first bytes of the request were read.
    pub arrived_us: u64,
    /// The first content token was written (the timestamp it carries).
    pub first_token_us: Option<u64>,
    pub tokens_sent: u32,
    /// The whole response (`[DONE]` and the end of the body) was handed to the socket.
    pub completed_us: Option<u64>,
    /// The client closed the connection (or a write failed) before the response was complete.
    pub disconnected_us: Option<u64>,
}

/// Counters over the whole run.
#[derive(Debug, Clone)]
pub struct FakeSummary {
    pub connections: u64,
    pub requests: u64,
    /// Requests without a conversation marker (answered 400), and requests for other paths (404).
    pub unmatched_requests: u64,
    /// A conversation's request seen again (a retry by the server).
    pub repeated_requests: u64,
    pub max_streams_in_flight: u64,
    /// How late tokens were written against their schedule (µs): shows whether the fake kept its rate.
    pub lateness: Histogram<u64>,
}

struct Shared {
    cfg: FakeConfig,
    records: Mutex<HashMap<ConvKey, UpstreamRecord>>,
    connections: AtomicU64,
    requests: AtomicU64,
    unmatched: AtomicU64,
    repeated: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    lateness: Mutex<Histogram<u64>>,
}

impl Shared {
    fn update(&self, key: ConvKey, f: impl FnOnce(&mut UpstreamRecord)) {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        f(records.entry(key).or_default());
    }
}

/// The running fake; stops when dropped.
pub struct FakeProvider {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeProvider {
    /// Binds `listen` (at once, so a taken port is reported here) and serves on a thread of its own.
    pub fn start(listen: SocketAddr, cfg: FakeConfig) -> Result<FakeProvider> {
        let std_listener = std::net::TcpListener::bind(listen)
            .with_context(|| format!("the fake provider cannot listen on {listen}"))?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let shared = Arc::new(Shared {
            cfg,
            records: Mutex::new(HashMap::new()),
            connections: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            unmatched: AtomicU64::new(0),
            repeated: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            lateness: Mutex::new(new_histogram()),
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the fake provider's runtime")?;
        let (tx, rx) = oneshot::channel::<()>();
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("fake-llm".into())
            .spawn(move || {
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(std_listener) {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("fake provider: {e}");
                            return;
                        }
                    };
                    let accept = async {
                        loop {
                            match listener.accept().await {
                                Ok((stream, _)) => {
                                    s.connections.fetch_add(1, Ordering::Relaxed);
                                    tokio::spawn(connection(stream, s.clone()));
                                }
                                Err(e) => {
                                    // Out of file descriptors and the like: wait, do not spin.
                                    eprintln!("fake provider: accept: {e}");
                                    tokio::time::sleep(Duration::from_millis(50)).await;
                                }
                            }
                        }
                    };
                    tokio::select! {
                        _ = rx => {}
                        _ = accept => {}
                    }
                });
                // Dropping the runtime cancels the connection tasks and closes their sockets.
                drop(rt);
            })
            .context("starting the fake provider's thread")?;
        Ok(FakeProvider {
            addr,
            shared,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// `http://<addr>/v1`, the `base_url` of an `openai_compatible` provider.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn record(&self, key: ConvKey) -> Option<UpstreamRecord> {
        self.shared
            .records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned()
    }

    #[cfg(test)]
    pub fn insert_record(&self, key: ConvKey, r: UpstreamRecord) {
        self.shared
            .records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, r);
    }

    pub fn summary(&self) -> FakeSummary {
        let s = &self.shared;
        FakeSummary {
            connections: s.connections.load(Ordering::Relaxed),
            requests: s.requests.load(Ordering::Relaxed),
            unmatched_requests: s.unmatched.load(Ordering::Relaxed),
            repeated_requests: s.repeated.load(Ordering::Relaxed),
            max_streams_in_flight: s.max_in_flight.load(Ordering::Relaxed),
            lateness: s.lateness.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Request {
    head: RequestHead,
    body: Vec<u8>,
    arrived_us: u64,
}

/// One connection: requests one after another (keep-alive), until the client closes it.
async fn connection(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let mut buf: Vec<u8> = Vec::with_capacity(8 * 1024);
    loop {
        let req = match read_request(&mut rd, &mut buf).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                let _ = respond(&mut wr, "400 Bad Request", &error_body(&e.to_string()), true).await;
                return;
            }
        };
        shared.requests.fetch_add(1, Ordering::Relaxed);
        let close = req.head.close;
        let keep = if req.head.method == "POST" && req.head.path.ends_with("/chat/completions") {
            match conversation_of(&req.body) {
                Some(key) => stream_reply(key, &req, &mut rd, &mut wr, &mut buf, &shared).await,
                None => {
                    shared.unmatched.fetch_add(1, Ordering::Relaxed);
                    let msg = "confab-bench fake provider: no conversation marker in the last user message";
                    respond(&mut wr, "400 Bad Request", &error_body(msg), close)
                        .await
                        .is_ok()
                }
            }
        } else {
            shared.unmatched.fetch_add(1, Ordering::Relaxed);
            respond(&mut wr, "404 Not Found", &error_body("not found"), close)
                .await
                .is_ok()
        };
        if !keep || close {
            return;
        }
    }
}

/// Reads one request; `Ok(None)` when the client closed the connection between requests.
async fn read_request(rd: &mut OwnedReadHalf, buf: &mut Vec<u8>) -> io::Result<Option<Request>> {
    let mut arrived_us = (!buf.is_empty()).then(now_us);
    loop {
        match parse_head(buf) {
            Ok(Some(head)) => {
                let total = head.head_len + head.content_length;
                if total > MAX_REQUEST_BYTES {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "request too large"));
                }
                if buf.len() >= total {
                    let body = buf[head.head_len..total].to_vec();
                    buf.drain(..total);
                    return Ok(Some(Request {
                        head,
                        body,
                        arrived_us: arrived_us.unwrap_or_else(now_us),
                    }));
                }
            }
            Ok(None) if buf.len() > MAX_REQUEST_BYTES => {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "request head too large"));
            }
            Ok(None) => {}
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
        buf.reserve(8 * 1024);
        let n = rd.read_buf(buf).await?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed mid-request",
                ))
            };
        }
        arrived_us.get_or_insert_with(now_us);
    }
}

fn error_body(message: &str) -> String {
    serde_json::json!({"error": {"message": message, "type": "invalid_request_error"}}).to_string()
}

async fn respond(wr: &mut OwnedWriteHalf, status: &str, body: &str, close: bool) -> io::Result<()> {
    let conn = if close { "connection: close\r\n" } else { "" };
    let r = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{conn}\r\n{body}",
        body.len()
    );
    wr.write_all(r.as_bytes()).await
}

/// One chunk of a chunked body holding one SSE `data:` event.
fn sse_chunk(out: &mut Vec<u8>, data: &str) {
    let event_len = "data: ".len() + data.len() + 2;
    out.extend_from_slice(format!("{event_len:x}\r\ndata: ").as_bytes());
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b"\n\n\r\n");
}

const CHUNK_PREFIX: &str = r#"{"id":"chatcmpl-confab-bench","object":"chat.completion.chunk","created":1700000000,"model":"confab-bench-fake","choices":["#;

fn content_chunk(out: &mut Vec<u8>, content: &str) {
    sse_chunk(
        out,
        &format!(r#"{CHUNK_PREFIX}{{"index":0,"delta":{{"content":"{content}"}},"finish_reason":null}}]}}"#),
    );
}

/// Streams one reply, watching the connection for a close between tokens. Returns whether the connection
/// can serve another request.
async fn stream_reply(
    key: ConvKey,
    req: &Request,
    rd: &mut OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
    buf: &mut Vec<u8>,
    shared: &Shared,
) -> bool {
    let cfg = &shared.cfg;
    let arrived = req.arrived_us;
    {
        let mut records = shared.records.lock().unwrap_or_else(|e| e.into_inner());
        if records.contains_key(&key) {
            shared.repeated.fetch_add(1, Ordering::Relaxed);
        }
        records.insert(
            key,
            UpstreamRecord {
                arrived_us: arrived,
                ..Default::default()
            },
        );
    }
    let now = shared.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
    shared.max_in_flight.fetch_max(now, Ordering::Relaxed);
    struct InFlight<'a>(&'a AtomicU64);
    impl Drop for InFlight<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
    let _in_flight = InFlight(&shared.in_flight);

    let disconnected = |sent: u32| {
        let at = now_us();
        shared.update(key, |r| {
            r.disconnected_us = Some(at);
            r.completed_us = None;
            r.tokens_sent = sent;
        });
        false
    };

    // Headers and the role chunk at once, as OpenAI does.
    let conn = if req.head.close { "connection: close\r\n" } else { "" };
    let mut out = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
         transfer-encoding: chunked\r\n{conn}\r\n"
    )
    .into_bytes();
    sse_chunk(
        &mut out,
        &format!(r#"{CHUNK_PREFIX}{{"index":0,"delta":{{"role":"assistant","content":""}},"finish_reason":null}}]}}"#),
    );
    if wr.write_all(&out).await.is_err() {
        return disconnected(0);
    }

    // The schedule counts from the request's arrival (on the benchmark's clock).
    let origin = crate::util::epoch() + Duration::from_micros(arrived);
    let mut sent = 0u32;
    while sent < cfg.tokens {
        let due = origin + cfg.first_token_delay + cfg.interval * sent;
        loop {
            tokio::select! {
                biased;
                r = rd.read_buf(buf) => match r {
                    Ok(0) | Err(_) => return disconnected(sent),
                    // The client does not talk during a response; keep what it sent, within reason.
                    Ok(_) if buf.len() > MAX_REQUEST_BYTES => return disconnected(sent),
                    Ok(_) => {}
                },
                _ = tokio::time::sleep_until(due.into()) => break,
            }
        }
        let ts = now_us();
        shared
            .lateness
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .saturating_record(ts.saturating_sub(us_since_epoch(due)).max(1));
        out.clear();
        content_chunk(&mut out, &token_text(sent, ts));
        // Records are updated before the write, so a client that has the bytes also sees the record.
        if sent == 0 {
            shared.update(key, |r| r.first_token_us = Some(ts));
        }
        if wr.write_all(&out).await.is_err() {
            return disconnected(sent);
        }
        sent += 1;
    }

    out.clear();
    sse_chunk(
        &mut out,
        &format!(r#"{CHUNK_PREFIX}{{"index":0,"delta":{{}},"finish_reason":"stop"}}]}}"#),
    );
    let prompt_tokens = req.body.len() / 4;
    sse_chunk(
        &mut out,
        &format!(
            r#"{{"id":"chatcmpl-confab-bench","object":"chat.completion.chunk","created":1700000000,"model":"confab-bench-fake","choices":[],"usage":{{"prompt_tokens":{prompt_tokens},"completion_tokens":{},"total_tokens":{}}}}}"#,
            cfg.tokens,
            prompt_tokens + cfg.tokens as usize
        ),
    );
    sse_chunk(&mut out, "[DONE]");
    out.extend_from_slice(b"0\r\n\r\n");
    let at = now_us();
    shared.update(key, |r| {
        r.completed_us = Some(at);
        r.tokens_sent = sent;
    });
    if wr.write_all(&out).await.is_err() {
        return disconnected(sent);
    }
    true
}

/// Waits until `f` holds or `max` passed; polls every few milliseconds.
pub async fn wait_until(max: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + max;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[test]
    fn tokens_round_trip() {
        let mut out = Vec::new();
        let text = format!("{}{}", token_text(0, 1_795_325_384_034_123), token_text(1, 42));
        assert_eq!(scan_tokens(&text, &mut out), Ok(text.len()));
        assert_eq!(
            out,
            [
                TokenStamp {
                    index: 0,
                    sent_us: 1_795_325_384_034_123
                },
                TokenStamp { index: 1, sent_us: 42 }
            ]
        );
        assert_eq!(token_text(7, 99), "[7:99] ");
    }

    #[test]
    fn incomplete_tokens_wait_for_more_text() {
        let full = token_text(3, 123_456);
        for cut in 0..full.len() {
            let mut out = Vec::new();
            let text = format!("{}{}", token_text(2, 5), &full[..cut]);
            assert_eq!(scan_tokens(&text, &mut out), Ok(token_text(2, 5).len()), "cut at {cut}");
            assert_eq!(out.len(), 1);
        }
    }

    #[test]
    fn other_text_is_rejected_where_it_starts() {
        let mut out = Vec::new();
        assert_eq!(scan_tokens("hello", &mut out), Err(0));
        let ok = token_text(0, 1);
        for bad in [
            "[x:1] ",
            "[1:x] ",
            "[1;2] ",
            "[1:2]x",
            "[:2] ",
            "[1:] ",
            "[99999999999:1] ",
        ] {
            let mut out = Vec::new();
            assert_eq!(scan_tokens(&format!("{ok}{bad}"), &mut out), Err(ok.len()), "{bad:?}");
            assert_eq!(out.len(), 1);
        }
        assert_eq!(scan_tokens("", &mut out), Ok(0));
    }

    #[test]
    fn markers_name_the_conversation() {
        assert_eq!(parse_marker(&trigger_text(1, 917)), Some((1, 917)));
        assert_eq!(parse_marker("no marker"), None);
        assert_eq!(parse_marker("cbm:1:x;"), None);
        // The last marker wins (earlier turns may be merged into the same user message).
        let merged = format!("{}\n{}", trigger_text(0, 5), trigger_text(1, 5));
        assert_eq!(parse_marker(&merged), Some((1, 5)));
        let body = serde_json::json!({"model": "m", "stream": true, "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": trigger_text(0, 3)},
            {"role": "assistant", "content": "[0:1] "},
            {"role": "user", "content": trigger_text(1, 3)},
        ]});
        assert_eq!(conversation_of(body.to_string().as_bytes()), Some((1, 3)));
        assert_eq!(conversation_of(b"{}"), None);
        assert_eq!(conversation_of(b"not json"), None);
    }

    #[test]
    fn request_heads() {
        let req = b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n{\"a\":1}";
        let h = parse_head(req).unwrap().unwrap();
        assert_eq!(h.method, "POST");
        assert_eq!(h.path, "/v1/chat/completions");
        assert_eq!(h.content_length, 12);
        assert_eq!(h.head_len, req.len() - 7);
        assert!(!h.close);
        assert_eq!(parse_head(b"POST / HTTP/1.1\r\nHost: a\r\n").unwrap(), None);
        let h = parse_head(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(h.close);
        let h = parse_head(b"GET / HTTP/1.1\r\nconnection: Close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.close);
        assert!(parse_head(b"GET / HTTP/2\r\n\r\n").is_err());
        assert!(parse_head(b"GET /\r\n\r\n").is_err());
        assert!(parse_head(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n").is_err());
        assert!(parse_head(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
    }

    fn request(key: ConvKey) -> serde_json::Value {
        serde_json::json!({"model": "m", "stream": true,
            "messages": [{"role": "user", "content": trigger_text(key.0, key.1)}]})
    }

    /// The OpenAI stream parses as the server's adapter parses it: content deltas, usage, `[DONE]`; the
    /// connection is reused for the next request; a dropped stream is seen as a disconnect at once.
    #[tokio::test]
    async fn streams_tokens_and_sees_disconnects() {
        crate::util::epoch();
        let fake = FakeProvider::start(
            "127.0.0.1:0".parse().unwrap(),
            FakeConfig {
                tokens: 5,
                interval: Duration::from_millis(5),
                first_token_delay: Duration::from_millis(5),
            },
        )
        .unwrap();
        let http = reqwest::Client::new();
        let url = format!("{}/chat/completions", fake.base_url());
        let body = http
            .post(&url)
            .json(&request((0, 1)))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let mut text = String::new();
        let mut saw_usage = false;
        let events: Vec<&str> = body.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.last(), Some(&"data: [DONE]"));
        for e in &events[..events.len() - 1] {
            let v: Value = serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap();
            if let Some(c) = v.pointer("/choices/0/delta/content").and_then(Value::as_str) {
                text.push_str(c);
            }
            saw_usage |= v.get("usage").is_some();
        }
        assert!(saw_usage);
        let mut stamps = Vec::new();
        assert_eq!(scan_tokens(&text, &mut stamps), Ok(text.len()));
        assert_eq!(stamps.iter().map(|s| s.index).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
        let r = fake.record((0, 1)).unwrap();
        assert_eq!(r.tokens_sent, 5);
        assert!(r.completed_us.is_some() && r.disconnected_us.is_none());
        assert_eq!(r.first_token_us, Some(stamps[0].sent_us));
        assert!(r.first_token_us.unwrap() >= r.arrived_us + 5_000);

        // Read two chunks of a longer stream, then drop it: the fake records the disconnect.
        let resp = http.post(&url).json(&request((1, 1))).send().await.unwrap();
        let mut s = resp.bytes_stream();
        let _ = s.next().await;
        let dropped_at = now_us();
        drop(s);
        assert!(
            wait_until(Duration::from_secs(2), || fake
                .record((1, 1))
                .is_some_and(|r| r.disconnected_us.is_some()))
            .await
        );
        let r = fake.record((1, 1)).unwrap();
        assert!(r.completed_us.is_none());
        assert!(r.disconnected_us.unwrap() >= dropped_at);

        // No marker: 400; the keep-alive connection then still serves.
        let r = http
            .post(&url)
            .json(&serde_json::json!({"messages": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let s = fake.summary();
        assert_eq!((s.requests, s.unmatched_requests, s.repeated_requests), (3, 1, 0));
        // (reqwest returns a connection to its pool asynchronously, so it may open one more.)
        assert!(s.connections <= 3, "{} connections", s.connections);
    }
}
