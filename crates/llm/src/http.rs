//! HTTP plumbing shared by the adapters: client, API keys, error mapping, `Retry-After`
//! parsing and the SSE → [`StreamEvent`] loop.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, SystemTime};

use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures_util::{Stream, StreamExt};
use reqwest::header::{HeaderMap, HeaderValue};

use crate::{EventStream, LlmError, StreamEvent};

/// Largest error body we read from a failed response.
const MAX_ERROR_BODY: usize = 16 * 1024;
/// Longest upstream message kept in an [`LlmError::Upstream`].
const MAX_ERROR_MESSAGE_CHARS: usize = 300;

/// An API key. Its `Debug` never shows the value.
#[derive(Clone)]
pub(crate) struct ApiKey(String);

impl ApiKey {
    pub(crate) fn new(key: String) -> Result<Self, LlmError> {
        let key = key.trim().to_string();
        if key.is_empty() {
            return Err(LlmError::Config("API key is empty".into()));
        }
        if HeaderValue::from_str(&key).is_err() {
            return Err(LlmError::Config(
                "API key contains characters not allowed in an HTTP header".into(),
            ));
        }
        Ok(ApiKey(key))
    }

    /// A sensitive header value (hyper/reqwest never print sensitive values).
    pub(crate) fn header_value(&self, prefix: &str) -> HeaderValue {
        let mut v = HeaderValue::from_str(&format!("{prefix}{}", self.0)).expect("validated in ApiKey::new");
        v.set_sensitive(true);
        v
    }

    /// Replaces any occurrence of the key in `text` (some providers echo the key they got).
    pub(crate) fn scrub(&self, text: &str) -> String {
        if self.0.len() >= 4 {
            text.replace(&self.0, "[redacted]")
        } else {
            text.to_string()
        }
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey([redacted])")
    }
}

fn scrub(key: Option<&ApiKey>, text: &str) -> String {
    match key {
        Some(k) => k.scrub(text),
        None => text.to_string(),
    }
}

/// The one HTTP client per adapter. reqwest never retries on its own; [`crate::Reliable`] is
/// the only retry loop. No overall timeout: streams are long, the reliability layer times phases.
/// With an egress policy, the client reaches only what it allows (checked on every resolution, no
/// redirects, no environment proxies).
pub(crate) fn build_client(
    connect_timeout: Duration,
    egress: Option<&confab_egress::EgressPolicy>,
) -> Result<reqwest::Client, LlmError> {
    let builder = match egress {
        Some(policy) => policy.guard(reqwest::Client::builder()),
        None => reqwest::Client::builder(),
    };
    builder
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .user_agent(concat!("confab-llm/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| LlmError::Config(format!("cannot build HTTP client: {}", describe(e))))
}

/// Parses and checks a base URL (http or https).
pub(crate) fn parse_base_url(what: &str, url: &str) -> Result<reqwest::Url, LlmError> {
    let u = reqwest::Url::parse(url.trim()).map_err(|e| LlmError::Config(format!("{what} is not a valid URL: {e}")))?;
    if u.scheme() != "http" && u.scheme() != "https" {
        return Err(LlmError::Config(format!("{what} must be an http(s) URL")));
    }
    if u.cannot_be_a_base() {
        return Err(LlmError::Config(format!("{what} cannot be used as a base URL")));
    }
    Ok(u)
}

/// `base` with `segments` appended to its path.
pub(crate) fn join_path(mut base: reqwest::Url, segments: &[&str]) -> reqwest::Url {
    base.set_query(None);
    base.set_fragment(None);
    if let Ok(mut p) = base.path_segments_mut() {
        p.pop_if_empty().extend(segments);
    }
    base
}

/// An error text without the URL (URLs may carry query strings) and with its source chain.
pub(crate) fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut s = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

/// Maps an error of `RequestBuilder::send` (no response yet).
pub(crate) fn map_send_error(e: reqwest::Error, key: Option<&ApiKey>) -> LlmError {
    // The only timeout configured on the client is the connect timeout.
    if e.is_timeout() {
        return LlmError::Timeout {
            phase: crate::PHASE_CONNECT,
        };
    }
    let prefix = if e.is_connect() { "connection failed: " } else { "" };
    LlmError::Transport(scrub(key, &format!("{prefix}{}", describe(e))))
}

/// How long the provider asked us to wait: `retry-after-ms`, `x-ms-retry-after-ms` (milliseconds),
/// then `retry-after` (delta-seconds, fractional seconds tolerated, or an HTTP date).
pub(crate) fn parse_retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    for name in ["retry-after-ms", "x-ms-retry-after-ms"] {
        if let Some(ms) = get(name)
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|ms| ms.is_finite() && *ms >= 0.0)
        {
            return Some(Duration::from_secs_f64(ms.min(1e12) / 1000.0));
        }
    }
    let v = get("retry-after")?;
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(1e9)));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Turns a non-2xx response into an error. 429 becomes `RateLimited` unless the body says the
/// quota or spend limit is exhausted (waiting does not help then): that stays `Upstream { 429 }`.
pub(crate) async fn error_from_response(mut resp: reqwest::Response, key: Option<&ApiKey>) -> LlmError {
    let status = resp.status().as_u16();
    let retry_after = parse_retry_after(resp.headers(), SystemTime::now());
    let mut body = Vec::new();
    while body.len() < MAX_ERROR_BODY {
        match resp.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    drop(resp);
    let raw = String::from_utf8_lossy(&body);
    let message = scrub(key, &error_message(&raw, status));
    if status == 429 {
        let lower = raw.to_ascii_lowercase();
        let hard_limit = ["insufficient_quota", "spend_limit", "billing"]
            .iter()
            .any(|w| lower.contains(w));
        if !hard_limit {
            return LlmError::RateLimited { retry_after };
        }
    }
    LlmError::Upstream { status, message }
}

/// The human part of an error body: `error.message` (OpenAI, Azure, Anthropic), `message`, or
/// the raw text; truncated.
fn error_message(raw: &str, status: u16) -> String {
    let from_json = serde_json::from_str::<serde_json::Value>(raw).ok().and_then(|v| {
        let pick = |v: &serde_json::Value| v.as_str().map(str::to_string);
        pick(&v["error"]["message"])
            .or_else(|| pick(&v["message"]))
            .or_else(|| pick(&v["error"]))
    });
    let text = from_json.unwrap_or_else(|| raw.trim().to_string());
    let text = if text.is_empty() {
        reqwest::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("no message")
            .to_string()
    } else {
        text
    };
    truncate(&text, MAX_ERROR_MESSAGE_CHARS)
}

pub(crate) fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Turns SSE events of one wire format into [`StreamEvent`]s.
pub(crate) trait SseParser: Send + 'static {
    /// Handles one SSE event. Returning `Done` (last) ends the stream; an `Err` ends it too.
    fn on_event(&mut self, ev: Event) -> Result<Vec<StreamEvent>, LlmError>;
    /// The terminal marker, for the error text when the stream ends early.
    fn terminal_marker(&self) -> &'static str;
}

/// SSE events; a transport error is already described (a `String`), so any byte stream can feed the parser.
type SseEvents = std::pin::Pin<Box<dyn Stream<Item = Result<Event, EventStreamError<String>>> + Send>>;

struct SseState<P> {
    events: Option<SseEvents>,
    parser: P,
    pending: VecDeque<StreamEvent>,
}

/// Streams a successful (2xx) SSE response through `parser`. The returned stream owns the
/// response: dropping it closes the connection. It ends after `Done` or after one `Err`; a body
/// that ends (or breaks) before the terminal marker yields `StreamCut`.
pub(crate) fn sse_stream<P: SseParser>(resp: reqwest::Response, parser: P) -> EventStream {
    sse_stream_from(resp.bytes_stream().map(|r| r.map_err(describe)), parser)
}

/// [`sse_stream`] over any body: chunks of bytes, or a transport error's description.
pub(crate) fn sse_stream_from<P, B>(
    body: impl Stream<Item = Result<B, String>> + Send + 'static,
    parser: P,
) -> EventStream
where
    P: SseParser,
    B: AsRef<[u8]> + Send + 'static,
{
    let events: SseEvents = Box::pin(body.eventsource());
    let state = SseState {
        events: Some(events),
        parser,
        pending: VecDeque::new(),
    };
    futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(ev) = st.pending.pop_front() {
                if matches!(ev, StreamEvent::Done { .. }) {
                    // Terminal: release the connection now and end after this item.
                    st.pending.clear();
                    st.events = None;
                }
                return Some((Ok(ev), st));
            }
            let events = st.events.as_mut()?;
            let err = match events.next().await {
                None => LlmError::StreamCut(format!("connection closed before {}", st.parser.terminal_marker())),
                Some(Err(EventStreamError::Transport(e))) => LlmError::StreamCut(format!("connection error: {e}")),
                Some(Err(EventStreamError::Utf8(_))) => LlmError::StreamCut("invalid UTF-8 in the event stream".into()),
                Some(Err(EventStreamError::Parser(_))) => LlmError::StreamCut("malformed event stream".into()),
                Some(Ok(ev)) => match st.parser.on_event(ev) {
                    Ok(evs) => {
                        st.pending.extend(evs);
                        continue;
                    }
                    Err(e) => e,
                },
            };
            st.events = None;
            return Some((Err(err), st));
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn retry_after_variants() {
        let now = SystemTime::now();
        assert_eq!(
            parse_retry_after(&headers(&[("retry-after", "2")]), now),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            parse_retry_after(&headers(&[("retry-after", "0.5")]), now),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            parse_retry_after(&headers(&[("retry-after-ms", "250")]), now),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            parse_retry_after(&headers(&[("x-ms-retry-after-ms", "1200")]), now),
            Some(Duration::from_millis(1200))
        );
        // The millisecond variants win over retry-after.
        assert_eq!(
            parse_retry_after(&headers(&[("retry-after", "30"), ("retry-after-ms", "100")]), now),
            Some(Duration::from_millis(100))
        );
        let at = now + Duration::from_secs(10);
        let d = parse_retry_after(&headers(&[("retry-after", &httpdate::fmt_http_date(at))]), now).unwrap();
        assert!(d <= Duration::from_secs(10) && d >= Duration::from_secs(9), "{d:?}");
        let past = now - Duration::from_secs(10);
        assert_eq!(
            parse_retry_after(&headers(&[("retry-after", &httpdate::fmt_http_date(past))]), now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after(&headers(&[("retry-after", "soon")]), now), None);
        assert_eq!(parse_retry_after(&headers(&[("retry-after", "-1")]), now), None);
        assert_eq!(parse_retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            error_message(r#"{"error":{"message":"boom","type":"server_error"}}"#, 500),
            "boom"
        );
        assert_eq!(
            error_message(
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
                529
            ),
            "Overloaded"
        );
        assert_eq!(error_message(r#"{"error":"model not found"}"#, 404), "model not found");
        assert_eq!(error_message("", 502), "Bad Gateway");
        assert_eq!(error_message("plain text", 500), "plain text");
        let long = "x".repeat(1000);
        assert_eq!(error_message(&long, 500).chars().count(), MAX_ERROR_MESSAGE_CHARS + 1);
    }

    #[test]
    fn api_key_is_never_shown() {
        let k = ApiKey::new("sk-secret-value".into()).unwrap();
        assert!(!format!("{k:?}").contains("secret"));
        assert_eq!(k.scrub("bad key sk-secret-value given"), "bad key [redacted] given");
        assert!(ApiKey::new("  ".into()).is_err());
        assert!(ApiKey::new("a\nb".into()).is_err());
        assert!(format!("{:?}", k.header_value("Bearer ")).contains("Sensitive"));
    }

    #[test]
    fn urls() {
        let u = parse_base_url("base_url", "http://127.0.0.1:8080/v1/").unwrap();
        assert_eq!(
            join_path(u, &["chat", "completions"]).as_str(),
            "http://127.0.0.1:8080/v1/chat/completions"
        );
        let u = parse_base_url("base_url", "https://api.anthropic.com").unwrap();
        assert_eq!(
            join_path(u, &["v1", "messages"]).as_str(),
            "https://api.anthropic.com/v1/messages"
        );
        assert!(parse_base_url("base_url", "ftp://x").is_err());
        assert!(parse_base_url("base_url", "not a url").is_err());
    }
}
