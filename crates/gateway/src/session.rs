//! One WebSocket session: a single task that reads client frames, writes queued frames in batches (many
//! `feed`s, one flush), and pipelines the client's sends so several can wait for the store at once while
//! their acks still come back in the order the sends were made.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use confab_domain::model::{HistoryQuery, HistoryRange};
use confab_domain::{ChannelId, ChannelSeq, DomainError, Millis, UserId, now_millis};
use confab_service::{Actor, Confab, SessionGrant};
use confab_wire::{MessageDto, SendMessageBody, error_code, error_message};
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use rustc_hash::FxHashMap;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::flood::{FrameRate, ReadCoalescer};
use crate::frames::{ClientFrame, ServerFrame};
use crate::hub::{Frame, Hub, SessionHandle};

/// Close codes of the protocol (`docs/protocol.md`).
pub mod close {
    /// Server shutting down: reconnect later and resume.
    pub const GOING_AWAY: u16 = 1001;
    /// A frame broke the protocol (bad first frame, binary frame, unknown type).
    pub const PROTOCOL: u16 = 1002;
    /// A frame was larger than the limit.
    pub const TOO_BIG: u16 = 1009;
    /// No `hello` in time, or no traffic (not even pongs) for the idle timeout.
    pub const TIMEOUT: u16 = 4000;
    /// The server could not complete a check (the store is unavailable): reconnect with backoff.
    pub const SERVER_ERROR: u16 = 1011;
    /// The credential no longer holds (session token revoked or expired, account blocked or deleted): do not
    /// reconnect with the same token.
    pub const REVOKED: u16 = 4003;
    /// The outbound queue overflowed (the client reads too slowly), or events meant for the session may have
    /// been lost on their way to this node: reconnect and resume from the last seq seen.
    pub const RESYNC: u16 = 4008;
    /// The user already has the most open sessions allowed (`websocket.max_sessions_per_user`).
    pub const TOO_MANY_SESSIONS: u16 = 4029;
}

/// Longest single wait for a session's expiry (longer ones are re-armed when it ends).
const MAX_EXPIRY_WAIT: Duration = Duration::from_secs(24 * 3600);

/// How long the closing frame may wait for a client that does not read; then the connection is dropped, so a
/// stalled reader never holds its task and file descriptor.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

type Pending = BoxFuture<'static, Option<String>>;

struct Session {
    hub: Arc<Hub>,
    service: Arc<Confab>,
    actor: Actor,
    user: UserId,
    /// The credential the session was opened with, re-checked when the user's sessions are revoked.
    grant: SessionGrant,
    reads: ReadCoalescer,
    /// Highest `message.new` sequence sent, per channel: drops duplicates, detects gaps.
    last_sent: FxHashMap<ChannelId, u64>,
    last_activity: Instant,
}

/// What a session reads client frames from and writes server frames to: axum's `WebSocket` in production; any
/// other stream and sink of messages (a test's or a fuzz target's in-memory socket) drives the same code.
pub trait Socket:
    Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin + Send
{
}

impl<S> Socket for S where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin + Send
{
}

pub async fn run<S: Socket>(hub: Arc<Hub>, grant: SessionGrant, mut socket: S, shutdown: CancellationToken) {
    let cfg = hub.cfg.clone();
    let user = grant.user.clone();
    let resume = match tokio::time::timeout(cfg.hello_timeout, socket.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => match serde_json::from_str::<ClientFrame>(&t) {
            Ok(ClientFrame::Hello { resume }) => resume,
            _ => {
                let _ = send_error_and_close(
                    &mut socket,
                    "protocol_error",
                    "the first frame must be hello",
                    close::PROTOCOL,
                )
                .await;
                return;
            }
        },
        Ok(Some(Ok(_))) => {
            let _ = send_error_and_close(
                &mut socket,
                "protocol_error",
                "the first frame must be a text hello",
                close::PROTOCOL,
            )
            .await;
            return;
        }
        Ok(_) => return,
        Err(_) => {
            let _ = send_error_and_close(&mut socket, "timeout", "no hello received in time", close::TIMEOUT).await;
            return;
        }
    };

    // Register before reading the backlog, so nothing committed in between is missed; duplicates are dropped.
    let (handle, rx) = match hub.register(user.clone()) {
        Ok(r) => r,
        Err(limit) => {
            let msg = format!("this user already has {limit} open sessions, the most allowed");
            let _ = send_error_and_close(&mut socket, "limit_exceeded", &msg, close::TOO_MANY_SESSIONS).await;
            return;
        }
    };
    // Before the backlog too: on a node among several, the events of the user's channels reach it from then on.
    let code = match hub.service.session_opened(&user).await {
        Ok(()) => {
            let mut session = Session {
                service: hub.service.clone(),
                hub: hub.clone(),
                actor: Actor::User(user.clone()),
                user: user.clone(),
                grant,
                reads: ReadCoalescer::new(cfg.read_interval),
                last_sent: FxHashMap::default(),
                last_activity: Instant::now(),
            };
            let code = session.serve(&mut socket, &handle, rx, resume, shutdown).await;
            if !matches!(code, Some((close::REVOKED, _))) {
                session.flush_reads().await;
            }
            code
        }
        Err(e) => {
            tracing::warn!(user = %user, error = %e, "cannot follow the channels of a new session's user");
            Some((
                close::SERVER_ERROR,
                "the server could not load your channels; reconnect",
            ))
        }
    };
    hub.unregister(&handle);
    hub.service.session_closed(&user).await;
    if let Some((code, reason)) = code {
        let close = socket.send(Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from(reason),
        })));
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, close).await;
    }
}

/// Why a guarded write ended early: the client is gone (`None`) or the session must close with this code.
type WriteEnd = Option<(u16, &'static str)>;

/// Runs a write to the socket, racing it against the session's close signal and a stall limit: a client that
/// stops reading blocks the write, and neither its queue overflow nor its idle timeout would be seen otherwise.
async fn guarded(
    write: impl Future<Output = Result<(), axum::Error>>,
    handle: &SessionHandle,
    overflow: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>,
    stall: Duration,
) -> Result<(), WriteEnd> {
    let mut write = std::pin::pin!(write);
    // Most writes finish at once (the socket has room): they arm no timer on the fan-out path.
    if let std::task::Poll::Ready(r) = futures_util::poll!(write.as_mut()) {
        return r.map_err(|_| None);
    }
    tokio::select! {
        r = write => r.map_err(|_| None),
        _ = overflow => Err(Some(close_code_of(handle))),
        _ = tokio::time::sleep(stall) => Err(Some((close::TIMEOUT, "write stalled: the client does not read"))),
    }
}

/// The close for a session the hub marked: revoked, resynced, or overflowed.
fn close_code_of(handle: &SessionHandle) -> (u16, &'static str) {
    if handle.is_revoked() {
        (close::REVOKED, "access revoked")
    } else if handle.missed_events() {
        (close::RESYNC, "events may have been missed; resume")
    } else {
        (close::RESYNC, "outbound queue overflow; resume")
    }
}

async fn send_error_and_close<S: Socket>(
    socket: &mut S,
    code: &str,
    message: &str,
    close_code: u16,
) -> Result<(), axum::Error> {
    let frame = ServerFrame::Error {
        req_id: None,
        code,
        message,
        retry_after_ms: None,
    };
    socket.send(Message::Text(frame.to_json().into())).await?;
    socket
        .send(Message::Close(Some(CloseFrame {
            code: close_code,
            reason: Utf8Bytes::from(message),
        })))
        .await
}

fn error_frame(req_id: Option<&str>, e: &DomainError) -> String {
    let retry_after_ms = match e {
        DomainError::RateLimited { retry_after_ms } => Some(*retry_after_ms),
        _ => None,
    };
    ServerFrame::Error {
        req_id,
        code: error_code(e),
        message: &error_message(e),
        retry_after_ms,
    }
    .to_json()
}

fn is_capacity_error(e: axum::Error) -> bool {
    matches!(
        e.into_inner().downcast::<tungstenite::Error>().map(|b| *b),
        Ok(tungstenite::Error::Capacity(_))
    )
}

impl Session {
    /// Runs until the client leaves or the session must close; returns the close code to send, if any.
    async fn serve<S: Socket>(
        &mut self,
        socket: &mut S,
        handle: &Arc<SessionHandle>,
        mut rx: tokio::sync::mpsc::Receiver<Arc<Frame>>,
        resume: BTreeMap<ChannelId, u64>,
        shutdown: CancellationToken,
    ) -> Option<(u16, &'static str)> {
        let cfg = self.hub.cfg.clone();
        // Registered first, checked second: a revocation committed before this read is seen here, one
        // committed after it reaches this session as `SessionsRevoked`.
        if let Some(code) = self.recheck().await {
            return Some(code);
        }
        let welcome = ServerFrame::Welcome {
            session_id: handle.id,
            user_id: self.user.as_str(),
            heartbeat_ms: cfg.heartbeat.as_millis() as u64,
            max_frame_bytes: cfg.max_message_bytes,
        }
        .to_json();
        if socket.send(Message::Text(welcome.into())).await.is_err() {
            return None;
        }
        // Armed before the backlog: a client that does not read its resume is closed like any slow reader.
        let overflow = handle.overflow.notified();
        tokio::pin!(overflow);
        if let Err(end) = guarded(self.resume(socket, resume), handle, overflow.as_mut(), cfg.idle_timeout).await {
            return end;
        }

        let mut batch: Vec<Arc<Frame>> = Vec::with_capacity(cfg.write_batch);
        let mut inflight: FuturesOrdered<Pending> = FuturesOrdered::new();
        let mut heartbeat = tokio::time::interval(cfg.heartbeat);
        heartbeat.tick().await;
        // Created once, not per loop turn: registering a waiter on every wake-up costs on the fan-out path.
        let cancelled = shutdown.cancelled();
        let recheck = handle.recheck.notified();
        let expiry = tokio::time::sleep_until(expiry_deadline(self.grant.expires_at));
        // Armed only while needed (their branches are disabled otherwise).
        let throttle = tokio::time::sleep(Duration::ZERO);
        let read_flush = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(cancelled, recheck, expiry, throttle, read_flush);
        let mut rate = FrameRate::new(cfg.max_frames_per_sec, cfg.frame_burst, Instant::now());
        loop {
            let ready_at = rate.as_ref().map(FrameRate::ready_at).filter(|at| *at > Instant::now());
            if let Some(at) = ready_at
                && throttle.deadline() != tokio::time::Instant::from_std(at)
            {
                throttle.as_mut().reset(tokio::time::Instant::from_std(at));
            }
            let reads_due = self.reads.next_due();
            if let Some(at) = reads_due
                && read_flush.deadline() != tokio::time::Instant::from_std(at)
            {
                read_flush.as_mut().reset(tokio::time::Instant::from_std(at));
            }
            tokio::select! {
                biased;
                _ = &mut cancelled => return Some((close::GOING_AWAY, "server shutting down")),
                _ = &mut overflow => return Some(close_code_of(handle)),
                _ = &mut recheck => {
                    if let Some(code) = self.recheck().await {
                        return Some(code);
                    }
                    recheck.set(handle.recheck.notified());
                }
                _ = &mut expiry, if self.grant.expires_at.is_some() => {
                    if self.grant.expires_at.is_some_and(|x| x <= now_millis()) {
                        return Some((close::REVOKED, "session expired"));
                    }
                    expiry.as_mut().reset(expiry_deadline(self.grant.expires_at));
                }
                _ = &mut read_flush, if reads_due.is_some() => {
                    for (channel, seq) in self.reads.due(Instant::now()) {
                        inflight.push_back(self.write_read(channel, seq));
                    }
                }
                _ = &mut throttle, if ready_at.is_some() => {}
                n = rx.recv_many(&mut batch, cfg.write_batch) => {
                    if n == 0 {
                        return None;
                    }
                    let write = self.write_frames(socket, handle, &mut batch);
                    if let Err(end) = guarded(write, handle, overflow.as_mut(), cfg.idle_timeout).await {
                        return end;
                    }
                }
                Some(reply) = inflight.next(), if !inflight.is_empty() => {
                    if let Some(text) = reply {
                        let write = async {
                            socket.feed(Message::Text(text.into())).await?;
                            // Write every other ready reply with the same flush.
                            while let Some(Some(reply)) = inflight.next().now_or_never() {
                                if let Some(text) = reply {
                                    socket.feed(Message::Text(text.into())).await?;
                                }
                            }
                            socket.flush().await
                        };
                        if let Err(end) = guarded(write, handle, overflow.as_mut(), cfg.idle_timeout).await {
                            return end;
                        }
                    }
                }
                incoming = socket.next(), if inflight.len() < cfg.max_inflight && ready_at.is_none() => {
                    self.last_activity = Instant::now();
                    if let Some(r) = rate.as_mut() {
                        r.admit(self.last_activity);
                    }
                    match incoming {
                        None => return None,
                        Some(Err(e)) => {
                            return if is_capacity_error(e) {
                                Some((close::TOO_BIG, "frame too large"))
                            } else {
                                None
                            };
                        }
                        Some(Ok(Message::Text(text))) => match serde_json::from_str::<ClientFrame>(&text) {
                            Ok(frame) => {
                                if let Some(p) = self.handle_frame(frame) {
                                    inflight.push_back(p);
                                }
                            }
                            Err(e) => {
                                // Queued behind the replies still pending: replies go out in request order.
                                let msg = format!("malformed frame: {e}");
                                let err = ServerFrame::Error { req_id: None, code: "invalid_frame", message: &msg, retry_after_ms: None };
                                let text = err.to_json();
                                inflight.push_back(async move { Some(text) }.boxed());
                            }
                        },
                        Some(Ok(Message::Binary(_))) => return Some((close::PROTOCOL, "binary frames are not part of the protocol")),
                        Some(Ok(Message::Close(_))) => return None,
                        Some(Ok(_)) => {} // ping (answered by the library) or pong
                    }
                }
                _ = heartbeat.tick() => {
                    if self.last_activity.elapsed() > cfg.idle_timeout {
                        return Some((close::TIMEOUT, "idle timeout"));
                    }
                    let ping = socket.send(Message::Ping(Default::default()));
                    if let Err(end) = guarded(ping, handle, overflow.as_mut(), cfg.idle_timeout).await {
                        return end;
                    }
                }
            }
        }
    }

    /// Turns one client frame into the work it asks for. Replies are produced in frame order.
    fn handle_frame(&mut self, frame: ClientFrame) -> Option<Pending> {
        let service = self.service.clone();
        let actor = self.actor.clone();
        match frame {
            ClientFrame::Hello { .. } => Some(
                async {
                    Some(error_frame(
                        None,
                        &DomainError::invalid("type", "hello is only valid as the first frame"),
                    ))
                }
                .boxed(),
            ),
            ClientFrame::Send {
                req_id,
                channel_id,
                body,
            } => {
                // A trace of its own per request, not one under the connection that lives for hours.
                let span =
                    tracing::debug_span!(parent: None, "ws.send", otel.kind = "server", channel_id = %channel_id);
                Some(
                    async move {
                        let res = match SendMessageBody::from(*body).into_new_message(channel_id) {
                            Ok(msg) => service.send(&actor, msg).await,
                            Err(e) => Err(e),
                        };
                        Some(match res {
                            Ok(a) => ServerFrame::Ack {
                                req_id: req_id.as_deref(),
                                channel_id: a.message.channel_id.as_str(),
                                seq: a.message.seq.0,
                                message_id: a.message.id.0,
                                duplicate: a.duplicate,
                                message: MessageDto::from(&a.message),
                            }
                            .to_json(),
                            Err(e) => error_frame(req_id.as_deref(), &e),
                        })
                    }
                    .instrument(span)
                    .boxed(),
                )
            }
            ClientFrame::Typing { channel_id, active } => Some(
                async move {
                    match service.typing(&actor, &channel_id, active).await {
                        Ok(()) => None,
                        Err(e) => Some(error_frame(None, &e)),
                    }
                }
                .boxed(),
            ),
            ClientFrame::Read { channel_id, seq } => {
                let seq = self.reads.read(channel_id.clone(), seq, Instant::now())?;
                Some(self.write_read(channel_id, seq))
            }
            ClientFrame::Stop { req_id, message_id } => Some(
                async move {
                    match service.stop_reply(&actor, confab_domain::MessageId(message_id)).await {
                        Ok(()) => None,
                        Err(e) => Some(error_frame(req_id.as_deref(), &e)),
                    }
                }
                .boxed(),
            ),
            ClientFrame::Ping { req_id } => Some(
                async move {
                    Some(
                        ServerFrame::Pong {
                            req_id: req_id.as_deref(),
                        }
                        .to_json(),
                    )
                }
                .boxed(),
            ),
        }
    }

    /// Writes a read position; an error frame if it was refused.
    fn write_read(&self, channel: ChannelId, seq: u64) -> Pending {
        let (service, actor) = (self.service.clone(), self.actor.clone());
        async move {
            match service.mark_read(&actor, &channel, ChannelSeq(seq)).await {
                Ok(_) => None,
                Err(e) => Some(error_frame(None, &e)),
            }
        }
        .boxed()
    }

    /// Writes the read positions still waiting for their turn (the session is ending: none is lost).
    async fn flush_reads(&mut self) {
        for (channel, seq) in self.reads.drain() {
            if let Err(e) = self.service.mark_read(&self.actor, &channel, ChannelSeq(seq)).await {
                tracing::debug!(channel = %channel, error = %e, "read position not written at close");
            }
        }
    }

    /// The close to send if the session's credential no longer holds.
    async fn recheck(&self) -> Option<(u16, &'static str)> {
        match self.service.grant_holds(&self.grant).await {
            Ok(true) => None,
            Ok(false) => Some((close::REVOKED, "access revoked")),
            Err(e) => {
                tracing::warn!(user = %self.user, error = %e, "cannot re-check a session's credential");
                Some((close::SERVER_ERROR, "credential check failed; reconnect"))
            }
        }
    }

    /// Sends everything after the client's last sequence for each channel, then `resumed`.
    async fn resume<S: Socket>(&mut self, socket: &mut S, resume: BTreeMap<ChannelId, u64>) -> Result<(), axum::Error> {
        if resume.is_empty() {
            return Ok(());
        }
        let mut done: BTreeMap<&str, u64> = BTreeMap::new();
        for (channel, from) in &resume {
            match self.send_history(socket, channel, *from, u64::MAX).await? {
                Ok(last) => {
                    done.insert(channel.as_str(), last);
                }
                Err(e) => {
                    socket.feed(Message::Text(error_frame(None, &e).into())).await?;
                }
            }
        }
        socket
            .send(Message::Text(ServerFrame::Resumed { channels: done }.to_json().into()))
            .await
    }

    /// Sends stored messages with `from < seq < until` of one channel, oldest first, and records them as sent.
    /// Returns the last sequence the client now has.
    async fn send_history<S: Socket>(
        &mut self,
        socket: &mut S,
        channel: &ChannelId,
        from: u64,
        until: u64,
    ) -> Result<Result<u64, DomainError>, axum::Error> {
        // The service caps pages at the configured maximum; stop only on a short page of that size.
        let page = self.hub.cfg.catchup_page.min(self.service.limits().max_page).max(1);
        let mut last = from;
        loop {
            let q = HistoryQuery {
                channel_id: channel.clone(),
                range: HistoryRange::After(ChannelSeq(last)),
                limit: page,
            };
            let msgs = match self.service.history(&self.actor, q).await {
                Ok(m) => m,
                Err(e) => return Ok(Err(e)),
            };
            let n = msgs.len();
            for m in msgs.iter().take_while(|m| m.seq.0 < until) {
                let text = ServerFrame::MessageNew {
                    channel_id: m.channel_id.as_str(),
                    seq: m.seq.0,
                    message: MessageDto::from(m),
                }
                .to_json();
                socket.feed(Message::Text(text.into())).await?;
                last = m.seq.0;
            }
            socket.flush().await?;
            self.last_sent.insert(channel.clone(), last);
            if n < page as usize || last + 1 >= until {
                return Ok(Ok(last));
            }
        }
    }

    async fn write_frames<S: Socket>(
        &mut self,
        socket: &mut S,
        handle: &SessionHandle,
        batch: &mut Vec<Arc<Frame>>,
    ) -> Result<(), axum::Error> {
        for frame in batch.drain(..) {
            handle.dequeued(frame.text.len());
            if let Some(mark) = &frame.mark {
                // The user joined the channel at `after`: what came before is not owed, what follows is.
                let last = self.last_sent.entry(mark.channel.clone()).or_insert(mark.after);
                *last = (*last).max(mark.after);
                if mark.fill {
                    let from = *last;
                    if let Err(e) = self.send_history(socket, &mark.channel, from, u64::MAX).await? {
                        tracing::debug!(channel = %mark.channel, error = %e, "catch-up failed");
                    }
                }
                continue;
            }
            if let Some((channel, seq)) = &frame.seq {
                match self.last_sent.get_mut(channel) {
                    Some(last) if *seq <= *last => continue, // already sent by a resume or gap fill
                    Some(last) if *seq == *last + 1 => *last = *seq,
                    Some(last) => {
                        // Missed frames (e.g. joined mid-stream): fill from the store, in order.
                        let from = *last;
                        if let Err(e) = self.send_history(socket, channel, from, *seq).await? {
                            tracing::debug!(channel = %channel, error = %e, "gap fill failed");
                        }
                        self.last_sent.insert(channel.clone(), *seq);
                    }
                    None => {
                        self.last_sent.insert(channel.clone(), *seq);
                    }
                }
            }
            socket.feed(Message::Text(frame.text.clone())).await?;
        }
        socket.flush().await
    }
}

/// When to look at a session's expiry next: at the expiry, or after [`MAX_EXPIRY_WAIT`] if it is further.
fn expiry_deadline(expires_at: Option<Millis>) -> tokio::time::Instant {
    let left = expires_at.map_or(u64::MAX, |x| x.saturating_sub(now_millis()).max(0) as u64);
    tokio::time::Instant::now() + Duration::from_millis(left).min(MAX_EXPIRY_WAIT)
}

/// Default heartbeat and timeouts, exposed for documentation and tests.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);
