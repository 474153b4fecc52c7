//! A response to a request whose body was not read to its end says `Connection: close`.
//!
//! hyper closes such a connection after the response (the unread rest of the body cannot be told apart from
//! the next request), but does not say so: a client that pools connections then sends its next request on a
//! socket the server is closing and gets a broken pipe instead of an answer. Refusals are the usual case: a
//! bad token, a body over the limit, a wrong content type are answered before the body is read. Saying
//! `Connection: close` (RFC 9112, section 9.6) makes the client open a new connection for the next request.
//!
//! A client still sending that body when the server closes gets a reset, and may lose the answer with it
//! (a 413 read as "connection reset"). So the rest of an unread body is read and thrown away in the
//! background, up to `DRAIN_MAX_BYTES` and `DRAIN_MAX_TIME`, while the answer goes out: the connection then
//! closes cleanly after the client has sent everything. Past those bounds it is dropped as before.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::header::{CONNECTION, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

/// Middleware: marks the response `Connection: close` when the handler left part of the request body unread.
pub async fn close_after_unread_body(req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    if body.is_end_stream() {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let ended = Arc::new(AtomicBool::new(false));
    let body = Body::new(Tracked {
        inner: Some(body),
        ended: ended.clone(),
    });
    let mut resp = next.run(Request::from_parts(parts, body)).await;
    if !ended.load(Ordering::Acquire) {
        resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// How much of an unread request body is read and discarded after its answer, at most.
const DRAIN_MAX_BYTES: usize = 16 * 1024 * 1024;
/// How long an unread request body is read and discarded after its answer, at most.
const DRAIN_MAX_TIME: Duration = Duration::from_secs(5);

/// The request body, noting when it has been read to its end; dropped unread, it drains in the background.
struct Tracked {
    inner: Option<Body>,
    ended: Arc<AtomicBool>,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(&mut *inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || inner.is_end_stream() {
            self.ended.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.as_ref().map(HttpBody::size_hint).unwrap_or_default()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let Some(body) = self.inner.take() else { return };
        if self.ended.load(Ordering::Acquire) || body.is_end_stream() {
            return;
        }
        // Outside a runtime (never in the server) the body is simply dropped.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(drain(body));
        }
    }
}

/// Reads and discards `body` until it ends or a bound is reached.
async fn drain(body: Body) {
    use futures_util::StreamExt;
    let mut stream = body.into_data_stream();
    let mut read = 0usize;
    let _ = tokio::time::timeout(DRAIN_MAX_TIME, async {
        while let Some(Ok(chunk)) = stream.next().await {
            read += chunk.len();
            if read > DRAIN_MAX_BYTES {
                break;
            }
        }
    })
    .await;
}
