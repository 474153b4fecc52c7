//! An in-process fake LLM provider server for tests (cargo feature `fake`).
//!
//! It listens on `127.0.0.1:0` and speaks the streaming wire formats the adapters use:
//!
//! * OpenAI Chat Completions — `POST /v1/chat/completions` (base URL [`FakeProvider::openai_base_url`]),
//!   `Authorization: Bearer`;
//! * Azure OpenAI — `POST /openai/deployments/{deployment}/chat/completions?api-version=…`
//!   (endpoint [`FakeProvider::base_url`]), `api-key` header; the stream starts with a
//!   `prompt_filter_results` chunk with empty `choices`, as Azure's does;
//! * Anthropic Messages — `POST /v1/messages` (base URL [`FakeProvider::base_url`]), `x-api-key`,
//!   `anthropic-version` required.
//!
//! Each request consumes the next scripted [`Behaviour`] ([`FakeProvider::script`]), falling back to
//! the default behaviour (a short successful reply, see [`FakeProvider::set_default`]). Replies are
//! streamed chunk by chunk with a delay per chunk. The fake records every request
//! ([`FakeProvider::requests`]), tracks concurrent in-flight requests
//! ([`FakeProvider::max_concurrent`]: a request counts from its arrival until its response is finished or
//! its connection is closed by the client, whichever comes first, so a client that gives up on a request
//! frees its place at once, as a real provider sees it) and counts client disconnects, i.e. responses dropped before
//! their last byte was handed to the connection ([`FakeProvider::disconnects`],
//! [`FakeProvider::wait_for_disconnects`]).
//!
//! Usage tokens it reports: `prompt_tokens` = whitespace-separated words of the system prompt and
//! all message contents; `completion_tokens` = number of text chunks.
//!
//! ```no_run
//! # async fn demo() {
//! use confab_llm::fake::{Behaviour, FakeProvider};
//! let fake = FakeProvider::start().await;
//! fake.script(vec![Behaviour::rate_limited_ms(200), Behaviour::success("Hello there")]);
//! // point a provider at fake.openai_base_url() / fake.base_url() ...
//! assert!(fake.max_concurrent() <= 2);
//! # }
//! ```

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::Response;
use axum::routing::post;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Pause before aborting a connection in [`Behaviour::CutMidStream`], so the chunks before the
/// cut reach the client.
const CUT_FLUSH_PAUSE: Duration = Duration::from_millis(30);

/// The text of the default successful reply.
pub const DEFAULT_REPLY: &str = "Hello from the fake provider.";

/// Which API a request came in through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WireFormat {
    OpenAi,
    Azure,
    Anthropic,
}

/// A request as the fake received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub format: WireFormat,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    /// The JSON body (`Value::Null` if it was not JSON).
    pub body: Value,
    pub received_at: Instant,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Everything the model would read: the top-level `system` (Anthropic) and every message
    /// content, newline-separated.
    pub fn text(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        if let Some(s) = self.body["system"].as_str() {
            parts.push(s.to_string());
        }
        if let Some(msgs) = self.body["messages"].as_array() {
            for m in msgs {
                match &m["content"] {
                    Value::String(s) => parts.push(s.clone()),
                    Value::Array(blocks) => {
                        parts.extend(blocks.iter().filter_map(|b| b["text"].as_str().map(str::to_string)))
                    }
                    _ => {}
                }
            }
        }
        parts.join("\n")
    }

    /// `(role, content)` of each message in the body.
    pub fn messages(&self) -> Vec<(String, String)> {
        self.body["messages"]
            .as_array()
            .map(|msgs| {
                msgs.iter()
                    .map(|m| {
                        (
                            m["role"].as_str().unwrap_or_default().to_string(),
                            m["content"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A scripted reply: `text` split into chunks of `chunk_chars` characters, each sent after `delay`.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub text: String,
    pub chunk_chars: usize,
    pub delay: Duration,
    /// Before text chunk number `.0` (0-based), wait `.1` instead of `delay`.
    pub stall: Option<(usize, Duration)>,
}

impl Reply {
    /// 4 characters per chunk, 5 ms apart.
    pub fn new(text: impl Into<String>) -> Self {
        Reply {
            text: text.into(),
            chunk_chars: 4,
            delay: Duration::from_millis(5),
            stall: None,
        }
    }

    pub fn chunk_chars(mut self, n: usize) -> Self {
        self.chunk_chars = n.max(1);
        self
    }

    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }

    pub fn stall_before_chunk(mut self, chunk: usize, d: Duration) -> Self {
        self.stall = Some((chunk, d));
        self
    }

    /// The text chunks as they will be streamed.
    pub fn chunks(&self) -> Vec<String> {
        let chars: Vec<char> = self.text.chars().collect();
        chars
            .chunks(self.chunk_chars.max(1))
            .map(|c| c.iter().collect())
            .collect()
    }
}

/// What the fake does with one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Behaviour {
    /// HTTP 200 and a complete stream.
    Success(Reply),
    /// A non-2xx response with extra headers; `body: None` = the provider's usual JSON error body.
    Status {
        status: u16,
        headers: Vec<(String, String)>,
        body: Option<String>,
    },
    /// Sends nothing (not even headers) for this long, then a 504.
    Hang(Duration),
    /// HTTP 200, `after_chunks` text chunks, then the connection is aborted (no terminal marker).
    CutMidStream { reply: Reply, after_chunks: usize },
    /// HTTP 200, `after_chunks` text chunks, then an in-stream error: Anthropic
    /// `event: error` / `{"type":"error","error":{...}}`; OpenAI `data: {"error":{...}}`. The body
    /// then ends without a terminal marker.
    StreamError {
        reply: Reply,
        after_chunks: usize,
        error_type: String,
        message: String,
    },
    /// HTTP 200 and `reply`'s chunks over and over, without end and whatever `max_tokens` says: a provider
    /// that does not stop (until the client goes away).
    Endless(Reply),
    /// HTTP 200 announcing an event stream, then this body, which is not one (a proxy's HTML page, a broken
    /// gateway).
    Garbage(String),
}

impl Behaviour {
    pub fn success(text: impl Into<String>) -> Self {
        Behaviour::Success(Reply::new(text))
    }

    /// 429 with `retry-after: <secs>`.
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        Self::status_with(429, "retry-after", retry_after_secs.to_string())
    }

    /// 429 with `retry-after-ms: <ms>`.
    pub fn rate_limited_ms(ms: u64) -> Self {
        Self::status_with(429, "retry-after-ms", ms.to_string())
    }

    /// 429 with `x-ms-retry-after-ms: <ms>` (Azure).
    pub fn rate_limited_x_ms(ms: u64) -> Self {
        Self::status_with(429, "x-ms-retry-after-ms", ms.to_string())
    }

    /// A response with the given status and the provider's usual error body.
    pub fn status(status: u16) -> Self {
        Behaviour::Status {
            status,
            headers: vec![],
            body: None,
        }
    }

    /// HTTP 500.
    pub fn server_error() -> Self {
        Self::status(500)
    }

    fn status_with(status: u16, name: &str, value: String) -> Self {
        Behaviour::Status {
            status,
            headers: vec![(name.to_string(), value)],
            body: None,
        }
    }

    /// Streams `text` in a loop, never ending (see [`Behaviour::Endless`]).
    pub fn endless(text: impl Into<String>) -> Self {
        Behaviour::Endless(Reply::new(text))
    }

    pub fn hang(d: Duration) -> Self {
        Behaviour::Hang(d)
    }

    pub fn cut_after(text: impl Into<String>, after_chunks: usize) -> Self {
        Behaviour::CutMidStream {
            reply: Reply::new(text),
            after_chunks,
        }
    }

    /// An `overloaded_error` in the stream after `after_chunks` chunks.
    pub fn overloaded_in_stream(text: impl Into<String>, after_chunks: usize) -> Self {
        Behaviour::StreamError {
            reply: Reply::new(text),
            after_chunks,
            error_type: "overloaded_error".into(),
            message: "Overloaded".into(),
        }
    }
}

struct Shared {
    queue: Mutex<VecDeque<Behaviour>>,
    default: Mutex<Behaviour>,
    required_key: Mutex<Option<String>>,
    requests: Mutex<Vec<RecordedRequest>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// The requests in flight with a probe of their connection, checked when the next request arrives.
    live: Mutex<Vec<(Arc<AtomicBool>, Weak<std::net::TcpStream>)>>,
    disconnects: watch::Sender<usize>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The running fake server; stops when dropped.
pub struct FakeProvider {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl FakeProvider {
    /// Binds `127.0.0.1:0` and serves until dropped.
    pub async fn start() -> FakeProvider {
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            default: Mutex::new(Behaviour::success(DEFAULT_REPLY)),
            required_key: Mutex::new(None),
            requests: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            live: Mutex::new(Vec::new()),
            disconnects: watch::Sender::new(0),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(serve))
            .route("/openai/deployments/{deployment}/chat/completions", post(serve))
            .route("/v1/messages", post(serve))
            .route("/v1/models", axum::routing::get(models))
            .route("/openai/models", axum::routing::get(models))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fake provider: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("fake provider: local_addr");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app.into_make_service_with_connect_info::<Conn>()).await;
        });
        FakeProvider { addr, shared, server }
    }

    /// `http://127.0.0.1:PORT` — the Anthropic base URL and the Azure endpoint.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT/v1` — the OpenAI (and OpenAI-compatible) base URL.
    pub fn openai_base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Appends behaviours; each request consumes one, in order.
    pub fn script(&self, behaviours: Vec<Behaviour>) {
        lock(&self.shared.queue).extend(behaviours);
    }

    /// What requests get once the script is used up.
    pub fn set_default(&self, behaviour: Behaviour) {
        *lock(&self.shared.default) = behaviour;
    }

    /// Requires this key (in the header of the request's API); a wrong or missing key gets a 401
    /// whose message echoes the key received — as some providers do — to test scrubbing.
    pub fn require_key(&self, key: Option<&str>) {
        *lock(&self.shared.required_key) = key.map(str::to_string);
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    pub fn request_count(&self) -> usize {
        lock(&self.shared.requests).len()
    }

    /// Highest number of requests served at the same time.
    pub fn max_concurrent(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// Requests being served right now.
    pub fn in_flight(&self) -> usize {
        sweep(&self.shared, &mut lock(&self.shared.live));
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// Responses dropped before their last byte was handed to the connection (client went away).
    pub fn disconnects(&self) -> usize {
        *self.shared.disconnects.borrow()
    }

    /// Waits until at least `n` disconnects were observed; false on timeout.
    pub async fn wait_for_disconnects(&self, n: usize, timeout: Duration) -> bool {
        let mut rx = self.shared.disconnects.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|d| *d >= n))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A connection as the handlers see it: a duplicate of its descriptor, to ask whether the client has
/// closed it. The server notices a closed connection only when it next reads or writes, which a handler
/// that hangs (or a stream that stalls) never does. The duplicate lives as long as the server's side of
/// the connection (axum keeps the connect info with the connection's service), so it never holds a socket
/// open that the server has closed.
#[derive(Clone)]
struct Conn {
    probe: Option<Arc<std::net::TcpStream>>,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>> for Conn {
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        use std::os::fd::AsFd;
        let fd = stream.io().as_fd().try_clone_to_owned().ok();
        Conn {
            probe: fd.map(|fd| Arc::new(std::net::TcpStream::from(fd))),
        }
    }
}

/// Whether the client has closed (or reset) the connection, as the socket says now. The client sends
/// nothing while its request is answered, so readable without data means closed.
fn is_closed(probe: &std::net::TcpStream) -> bool {
    match probe.peek(&mut [0u8; 1]) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// Takes the requests whose client has closed the connection out of the in-flight count: what counts is
/// the sockets' state when the count is read or a request arrives.
fn sweep(shared: &Shared, live: &mut Vec<(Arc<AtomicBool>, Weak<std::net::TcpStream>)>) {
    live.retain(|(done, probe)| {
        if done.load(Ordering::SeqCst) {
            return false;
        }
        match probe.upgrade() {
            Some(p) if !is_closed(&p) => true,
            _ => {
                release(shared, done);
                false
            }
        }
    });
}

/// Counts a request in flight from arrival until its response is finished (the last byte handed
/// over) or its connection is closed by the client, whichever comes first. Dropped unfinished, it
/// counts a client disconnect.
struct InFlight {
    shared: Arc<Shared>,
    released: Arc<AtomicBool>,
    finished: bool,
}

impl InFlight {
    fn enter(shared: &Arc<Shared>, conn: &Conn) -> Self {
        let released = Arc::new(AtomicBool::new(false));
        let mut live = lock(&shared.live);
        sweep(shared, &mut live);
        if let Some(p) = &conn.probe {
            live.push((released.clone(), Arc::downgrade(p)));
        }
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight {
            shared: shared.clone(),
            released,
            finished: false,
        }
    }

    fn finish(&mut self) {
        self.finished = true;
        release(&self.shared, &self.released);
    }
}

/// Takes a request out of the in-flight count, once.
fn release(shared: &Shared, released: &AtomicBool) {
    if !released.swap(true, Ordering::SeqCst) {
        shared.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        release(&self.shared, &self.released);
        if !self.finished {
            self.shared.disconnects.send_modify(|d| *d += 1);
        }
    }
}

/// The model list (`GET /v1/models`, Azure's `/openai/models`): the key is checked like a completion's.
async fn models(State(s): State<Arc<Shared>>, uri: Uri, headers: HeaderMap) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (format, given) = if uri.path().starts_with("/openai/") {
        (WireFormat::Azure, header("api-key"))
    } else if let Some(k) = header("x-api-key") {
        (WireFormat::Anthropic, Some(k))
    } else {
        (
            WireFormat::OpenAi,
            header("authorization").and_then(|v| v.strip_prefix("Bearer ")),
        )
    };
    if let Some(expected) = lock(&s.required_key).clone()
        && given != Some(expected.as_str())
    {
        let msg = format!("Incorrect API key provided: {}", given.unwrap_or(""));
        return error_response(format, 401, &("authentication_error".into(), msg));
    }
    axum::response::IntoResponse::into_response(axum::Json(
        json!({"object": "list", "data": [{"id": "fake-model", "object": "model"}]}),
    ))
}

/// Every route: the wire format is the route's.
async fn serve(
    State(s): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let format = if uri.path().starts_with("/openai/") {
        WireFormat::Azure
    } else if uri.path() == "/v1/messages" {
        WireFormat::Anthropic
    } else {
        WireFormat::OpenAi
    };
    handle(s, &conn, format, uri, headers, body).await
}

async fn handle(
    shared: Arc<Shared>,
    conn: &Conn,
    format: WireFormat,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut guard = InFlight::enter(&shared, conn);
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let req = RecordedRequest {
        format,
        path: uri.path().to_string(),
        query: uri.query().map(str::to_string),
        headers,
        body,
        received_at: Instant::now(),
    };
    lock(&shared.requests).push(req.clone());

    if let Some(resp) = validate(&shared, &req) {
        guard.finish();
        return resp;
    }
    let behaviour = lock(&shared.queue)
        .pop_front()
        .unwrap_or_else(|| lock(&shared.default).clone());
    let ctx = StreamCtx::new(&req);
    match behaviour {
        Behaviour::Status { status, headers, body } => {
            guard.finish();
            let mut resp = match body {
                Some(b) => plain(status, b),
                None => error_response(format, status, &default_error(format, status)),
            };
            for (k, v) in headers {
                if let (Ok(k), Ok(v)) = (header::HeaderName::try_from(k), header::HeaderValue::try_from(v)) {
                    resp.headers_mut().insert(k, v);
                }
            }
            resp
        }
        Behaviour::Hang(d) => {
            tokio::time::sleep(d).await;
            guard.finish();
            error_response(format, 504, &("timeout".into(), "gateway timeout".into()))
        }
        Behaviour::Success(reply) => sse(frames(format, &ctx, &reply, End::Complete).into_iter(), guard),
        Behaviour::CutMidStream { reply, after_chunks } => {
            sse(frames(format, &ctx, &reply, End::Cut(after_chunks)).into_iter(), guard)
        }
        Behaviour::Endless(reply) => sse(endless_frames(format, &ctx, &reply), guard),
        Behaviour::Garbage(body) => {
            guard.finish();
            let mut resp = plain(200, body);
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/event-stream"),
            );
            resp
        }
        Behaviour::StreamError {
            reply,
            after_chunks,
            error_type,
            message,
        } => sse(
            frames(format, &ctx, &reply, End::Error(after_chunks, error_type, message)).into_iter(),
            guard,
        ),
    }
}

/// The checks the real APIs make that matter to an adapter.
fn validate(shared: &Shared, req: &RecordedRequest) -> Option<Response> {
    let format = req.format;
    let bad = |msg: &str| {
        Some(error_response(
            format,
            400,
            &("invalid_request_error".into(), msg.into()),
        ))
    };
    if let Some(expected) = lock(&shared.required_key).clone() {
        let given = match format {
            WireFormat::OpenAi => req.header("authorization").and_then(|v| v.strip_prefix("Bearer ")),
            WireFormat::Azure => req.header("api-key"),
            WireFormat::Anthropic => req.header("x-api-key"),
        };
        if given != Some(expected.as_str()) {
            let msg = format!("Incorrect API key provided: {}", given.unwrap_or(""));
            return Some(error_response(format, 401, &("authentication_error".into(), msg)));
        }
    }
    if !req.body.is_object() {
        return bad("body must be a JSON object");
    }
    let Some(messages) = req.body["messages"].as_array() else {
        return bad("messages: field required");
    };
    if req.body["stream"] != Value::Bool(true) {
        return bad("the fake provider only serves streaming requests (stream: true)");
    }
    match format {
        WireFormat::Anthropic => {
            if req.header("anthropic-version").is_none() {
                return bad("anthropic-version: header is required");
            }
            if !req.body["max_tokens"].is_u64() {
                return bad("max_tokens: field required");
            }
            if !req.body["model"].is_string() {
                return bad("model: field required");
            }
            if messages
                .iter()
                .any(|m| !matches!(m["role"].as_str(), Some("user" | "assistant")))
            {
                return bad("messages: roles must be 'user' or 'assistant'");
            }
        }
        WireFormat::OpenAi | WireFormat::Azure => {
            if format == WireFormat::OpenAi && !req.body["model"].is_string() {
                return bad("you must provide a model parameter");
            }
            if format == WireFormat::Azure && !req.query.as_deref().unwrap_or("").contains("api-version=") {
                return bad("api-version query parameter is required");
            }
            if req.body.get("max_tokens").is_some() && req.body.get("max_completion_tokens").is_some() {
                return bad("max_tokens and max_completion_tokens cannot both be set");
            }
        }
    }
    None
}

fn default_error(format: WireFormat, status: u16) -> (String, String) {
    let (oa, an, msg) = match status {
        429 => (
            "rate_limit_exceeded",
            "rate_limit_error",
            "Rate limit reached for requests",
        ),
        500 => (
            "server_error",
            "api_error",
            "The server had an error while processing your request.",
        ),
        503 => ("server_error", "overloaded_error", "Service unavailable"),
        529 => ("server_error", "overloaded_error", "Overloaded"),
        401 => ("invalid_api_key", "authentication_error", "Invalid API key"),
        404 => ("not_found", "not_found_error", "Not found"),
        _ => ("invalid_request_error", "invalid_request_error", "Request failed"),
    };
    let kind = if format == WireFormat::Anthropic { an } else { oa };
    (kind.to_string(), msg.to_string())
}

fn error_response(format: WireFormat, status: u16, (kind, message): &(String, String)) -> Response {
    let body = match format {
        WireFormat::Anthropic => json!({"type": "error", "error": {"type": kind, "message": message}}),
        WireFormat::OpenAi | WireFormat::Azure => {
            json!({"error": {"message": message, "type": kind, "param": null, "code": null}})
        }
    };
    let mut resp = plain(status, body.to_string());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn plain(status: u16, body: String) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp
}

struct StreamCtx {
    model: String,
    prompt_tokens: u64,
    include_usage: bool,
}

impl StreamCtx {
    fn new(req: &RecordedRequest) -> Self {
        StreamCtx {
            model: req.body["model"]
                .as_str()
                .unwrap_or("fake-deployment-model")
                .to_string(),
            prompt_tokens: req.text().split_whitespace().count() as u64,
            include_usage: req.body["stream_options"]["include_usage"] == Value::Bool(true),
        }
    }
}

enum End {
    Complete,
    Cut(usize),
    Error(usize, String, String),
}

enum Frame {
    Data { delay: Duration, bytes: Bytes },
    Cut,
}

fn data_frame(delay: Duration, v: Value) -> Frame {
    Frame::Data {
        delay,
        bytes: Bytes::from(format!("data: {v}\n\n")),
    }
}

fn event_frame(delay: Duration, name: &str, v: Value) -> Frame {
    Frame::Data {
        delay,
        bytes: Bytes::from(format!("event: {name}\ndata: {v}\n\n")),
    }
}

fn frames(format: WireFormat, ctx: &StreamCtx, reply: &Reply, end: End) -> VecDeque<Frame> {
    let chunks = reply.chunks();
    let stop_after = match &end {
        End::Complete => chunks.len(),
        End::Cut(n) | End::Error(n, ..) => (*n).min(chunks.len()),
    };
    let delay_for = |i: usize| match reply.stall {
        Some((at, d)) if at == i => d,
        _ => reply.delay,
    };
    let zero = Duration::ZERO;
    let mut out = VecDeque::new();
    match format {
        WireFormat::OpenAi | WireFormat::Azure => {
            let id = "chatcmpl-fake";
            let chunk = |delta: Value, finish: Value| {
                json!({"id": id, "object": "chat.completion.chunk", "created": 1_700_000_000, "model": ctx.model,
                       "system_fingerprint": "fp_fake", "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
            };
            if format == WireFormat::Azure {
                out.push_back(data_frame(
                    zero,
                    json!({"choices": [], "created": 0, "id": "", "model": "", "object": "",
                           "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}]}),
                ));
            }
            out.push_back(data_frame(
                zero,
                chunk(
                    json!({"role": "assistant", "content": "", "refusal": null}),
                    Value::Null,
                ),
            ));
            for (i, c) in chunks.iter().take(stop_after).enumerate() {
                out.push_back(data_frame(delay_for(i), chunk(json!({"content": c}), Value::Null)));
            }
            match end {
                End::Complete => {
                    out.push_back(data_frame(zero, chunk(json!({}), json!("stop"))));
                    if ctx.include_usage {
                        out.push_back(data_frame(
                            zero,
                            json!({"id": id, "object": "chat.completion.chunk", "created": 1_700_000_000, "model": ctx.model,
                                   "choices": [], "usage": {"prompt_tokens": ctx.prompt_tokens, "completion_tokens": chunks.len(),
                                   "total_tokens": ctx.prompt_tokens + chunks.len() as u64}}),
                        ));
                    }
                    out.push_back(Frame::Data {
                        delay: zero,
                        bytes: Bytes::from_static(b"data: [DONE]\n\n"),
                    });
                }
                End::Cut(_) => out.push_back(Frame::Cut),
                End::Error(_, kind, message) => out.push_back(data_frame(
                    zero,
                    json!({"error": {"message": message, "type": kind, "param": null, "code": null}}),
                )),
            }
        }
        WireFormat::Anthropic => {
            out.push_back(event_frame(
                zero,
                "message_start",
                json!({"type": "message_start", "message": {"id": "msg_fake", "type": "message", "role": "assistant",
                       "content": [], "model": ctx.model, "stop_reason": null, "stop_sequence": null,
                       "usage": {"input_tokens": ctx.prompt_tokens, "output_tokens": 1}}}),
            ));
            out.push_back(event_frame(
                zero,
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ));
            out.push_back(event_frame(zero, "ping", json!({"type": "ping"})));
            for (i, c) in chunks.iter().take(stop_after).enumerate() {
                out.push_back(event_frame(
                    delay_for(i),
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": c}}),
                ));
            }
            match end {
                End::Complete => {
                    out.push_back(event_frame(
                        zero,
                        "content_block_stop",
                        json!({"type": "content_block_stop", "index": 0}),
                    ));
                    out.push_back(event_frame(
                        zero,
                        "message_delta",
                        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                               "usage": {"output_tokens": chunks.len()}}),
                    ));
                    out.push_back(event_frame(zero, "message_stop", json!({"type": "message_stop"})));
                }
                End::Cut(_) => out.push_back(Frame::Cut),
                End::Error(_, kind, message) => out.push_back(event_frame(
                    zero,
                    "error",
                    json!({"type": "error", "error": {"type": kind, "message": message}}),
                )),
            }
        }
    }
    out
}

/// The frames of an endless reply: the stream's opening, then `reply`'s text chunks in a loop.
fn endless_frames(format: WireFormat, ctx: &StreamCtx, reply: &Reply) -> Box<dyn Iterator<Item = Frame> + Send> {
    let mut opening = frames(format, ctx, &Reply::new(""), End::Cut(0));
    opening.pop_back(); // the cut
    let (model, delay) = (ctx.model.clone(), reply.delay);
    let mut chunks = reply.chunks();
    if chunks.is_empty() {
        chunks.push(String::new());
    }
    let deltas = (0..).map(move |i: usize| {
        let c = &chunks[i % chunks.len()];
        match format {
            WireFormat::OpenAi | WireFormat::Azure => data_frame(
                delay,
                json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1_700_000_000,
                       "model": model, "system_fingerprint": "fp_fake",
                       "choices": [{"index": 0, "delta": {"content": c}, "logprobs": null, "finish_reason": null}]}),
            ),
            WireFormat::Anthropic => event_frame(
                delay,
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": c}}),
            ),
        }
    });
    Box::new(opening.into_iter().chain(deltas))
}

fn sse(frames: impl Iterator<Item = Frame> + Send + 'static, guard: InFlight) -> Response {
    let frames = frames.peekable();
    let stream = futures_util::stream::unfold((frames, guard), |(mut frames, mut guard)| async move {
        let frame = frames.next()?;
        let item = match frame {
            Frame::Data { delay, bytes } => {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Ok(bytes)
            }
            Frame::Cut => {
                // Let hyper flush the chunks already yielded; an error aborts the connection and
                // would discard anything still buffered.
                tokio::time::sleep(CUT_FLUSH_PAUSE).await;
                Err(std::io::Error::other("fake provider: connection cut mid-stream"))
            }
        };
        if frames.peek().is_none() {
            // The last frame is being handed to the connection: the response is finished.
            guard.finish();
        }
        Some((item, (frames, guard)))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-cache"));
    resp
}
