//! The NetEase CommsEase / Yunxin IM (NIM) server API compatibility surface: `POST /nimserver/<module>/<action>.action`
//! (and the same paths without `/nimserver`, as the official SDKs send them to a private endpoint), so server
//! code written against NIM works by changing the host. Handlers translate NIM's form parameters and
//! response shapes to the service; rules live in `confab_service::Confab`, NIM's quirks stay here.
//!
//! Implemented: accounts (`user/create`, `update`, `refreshToken`, `getUinfos`, `block`, `unblock`), messages (`msg/sendMsg`
//! with the robot parameters, `sendBatchMsg`, `recall`), teams (`team/create`, `add`, `kick`, `remove`,
//! `query`) and history (`history/querySessionMsg`, `queryTeamMsg`). See `docs/nim.md`.

pub mod auth;
pub mod error;
pub mod history;
pub mod messages;
pub mod params;
pub mod teams;
pub mod users;
pub mod webhooks;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use confab_domain::UserId;
use confab_service::Confab;

use crate::auth::Authenticator;
use crate::error::{NimError, NimResult, Ok200, code};
use crate::params::Params;

#[derive(Clone)]
pub struct NimState {
    pub service: Arc<Confab>,
    pub auth: Arc<Authenticator>,
    /// The application's message calls (`sendMsg`, `sendBatchMsg`) per second, as NIM limits them.
    pub sends: Arc<governor::DefaultDirectRateLimiter>,
}

/// Limits of this surface.
#[derive(Clone, Copy, Debug)]
pub struct NimLimits {
    pub max_body_bytes: usize,
    pub request_timeout: std::time::Duration,
    /// `sendMsg` and `sendBatchMsg` calls per second (NIM's own limit is 100); more get 416.
    pub sends_per_sec: u32,
}

/// The modules served; each also answers without the `/nimserver` prefix.
const MODULES: &[&str] = &["user", "msg", "team", "history", "health"];

/// A panic in a handler: NIM's internal error in NIM's envelope.
fn panic_response(_: Box<dyn std::any::Any + Send>) -> Response {
    tracing::error!("a NIM request handler panicked");
    NimError::new(code::INTERNAL, "server internal error").into_response()
}

async fn timeout_response(_: tower::BoxError) -> NimError {
    NimError::new(code::BUSY, "request timed out")
}

/// The router. `max_body_bytes` bounds form bodies; a request not answered within `request_timeout` gets
/// NIM's 503.
pub fn router(service: Arc<Confab>, auth: Arc<Authenticator>, limits: NimLimits) -> Router {
    let per_sec = std::num::NonZeroU32::new(limits.sends_per_sec.max(1)).expect("max(1)");
    let sends = Arc::new(governor::RateLimiter::direct(governor::Quota::per_second(per_sec)));
    let mut r = Router::new().route("/nimserver/{module}/{action}", post(dispatch));
    for m in MODULES {
        r = r.route(&format!("/{m}/{{action}}"), post(dispatch_bare));
    }
    r.layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(
            tower::ServiceBuilder::new()
                .layer(axum::error_handling::HandleErrorLayer::new(timeout_response))
                .timeout(limits.request_timeout),
        )
        .with_state(NimState { service, auth, sends })
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_response))
}

async fn dispatch_bare(
    st: State<NimState>,
    Path(action): Path<String>,
    uri: axum::extract::OriginalUri,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let module = uri
        .path()
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or("")
        .to_string();
    dispatch(st, Path((module, action)), headers, body).await
}

async fn dispatch(
    State(st): State<NimState>,
    Path((module, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    match handle(&st, &module, &action, &headers, body).await {
        Ok(ok) => ok.into_response(),
        Err(e) => e.into_response(),
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

async fn handle(
    st: &NimState,
    module: &str,
    action: &str,
    headers: &HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> NimResult<Ok200> {
    let Some(action) = action.strip_suffix(".action") else {
        return Err(NimError::new(code::NOT_FOUND, "no such API"));
    };
    let now = now_secs();
    let verified = st.auth.verify(headers, now)?;
    let body = body.map_err(|e| NimError::param(format!("unreadable body: {}", e.body_text())))?;
    let (request, until) = st.auth.remember(verified, &body, now)?;
    // The same request through another node: nodes share the memory through the store.
    let first = st
        .service
        .claim_once("nim-request", &request, until.saturating_mul(1000))
        .await
        .map_err(|e| NimError::new(code::BUSY, format!("cannot check the request for a replay: {e}")))?;
    if !first {
        return Err(NimError::new(
            code::REPEATED,
            "repeated request: this Nonce, CurTime, CheckSum and body were already received",
        ));
    }
    let p = Params::parse(&body)?;
    match (module, action) {
        ("health", "liveness") => Ok(Ok200::empty()),
        ("user", "create") => users::create(st, &p).await,
        ("user", "update") => users::update(st, &p).await,
        ("user", "refreshToken") => users::refresh_token(st, &p).await,
        ("user", "getUinfos") => users::get_uinfos(st, &p).await,
        ("user", "block") => users::set_blocked(st, &p, true).await,
        ("user", "unblock") => users::set_blocked(st, &p, false).await,
        ("msg", "sendMsg") => {
            rate(st)?;
            messages::send(st, &p).await
        }
        ("msg", "sendBatchMsg") => {
            rate(st)?;
            messages::send_batch(st, &p).await
        }
        ("msg", "recall") => messages::recall(st, &p).await,
        ("team", "create") => teams::create(st, &p).await,
        ("team", "add") => teams::add(st, &p).await,
        ("team", "kick") => teams::kick(st, &p).await,
        ("team", "remove") => teams::remove(st, &p).await,
        ("team", "query") => teams::query(st, &p).await,
        ("history", "querySessionMsg") => history::session(st, &p).await,
        ("history", "queryTeamMsg") => history::team_history(st, &p).await,
        _ => Err(NimError::new(
            code::NOT_FOUND,
            format!("no such API: {module}/{action}.action"),
        )),
    }
}

fn rate(st: &NimState) -> NimResult<()> {
    st.sends
        .check()
        .map_err(|_| NimError::new(code::RATE_LIMITED, "too many message calls; retry shortly"))
}

/// An accid as NIM defines it: at most 32 letters, digits, `_`, `@`, `.` or `-`, case-insensitive (kept
/// lower-cased).
pub fn parse_accid(name: &str, raw: &str) -> NimResult<UserId> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '@' | '.' | '-');
    if raw.is_empty() || raw.len() > 32 || !raw.chars().all(ok) {
        return Err(NimError::invalid(
            name,
            "an accid is 1 to 32 letters, digits, _ @ . or -",
        ));
    }
    UserId::parse(&raw.to_ascii_lowercase()).map_err(|e| NimError::invalid(name, e))
}
