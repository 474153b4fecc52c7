//! Fan-out: events from the bus become frames in the outbound queues of every connected session of every
//! recipient.
//!
//! Design (measured in `BENCHMARKS.md`):
//! - events are routed to shards by channel, so one channel's events stay in order while shards use all cores;
//! - a shard serializes each event once and pushes the same `Arc<Frame>` to every recipient session;
//! - each session has a bounded queue (frames and bytes). A push never waits: a full queue marks the session
//!   overflowed and it is closed with `CLOSE_RESYNC`, so one slow client never slows the others;
//! - no lock is held across an await: the session registry is a `std` lock taken only for the push loop;
//! - the hub takes events of every origin (each node fans out every node's events to its own sessions); when
//!   the bus says remote events may have been lost (`Event::Resync`), every session closes with
//!   `CLOSE_RESYNC`, the slow consumer's path, and its client resumes from the store.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use axum::extract::ws::Utf8Bytes;
use confab_domain::model::Channel;
use confab_domain::ports::{EventStream, Origin, Subscription};
use confab_domain::{ChannelId, Event, UserId};
use confab_service::{Confab, TraceFollower};
use confab_wire::{ChannelDto, MessageDto};
use rustc_hash::{FxHashMap, FxHashSet};
use tokio::sync::{Notify, mpsc};
use tracing::Instrument;

use crate::GatewayConfig;
use crate::frames::ServerFrame;

mod shard;
use shard::Shard;

/// A frame built once and shared by every recipient.
pub struct Frame {
    pub text: Utf8Bytes,
    /// Set on `message.new` frames: the session uses it to drop duplicates and fill gaps.
    pub seq: Option<(ChannelId, u64)>,
    /// Not written: tells the session where a channel its user joined starts for it.
    pub mark: Option<ChannelMark>,
}

/// The user joined `channel` when its last sequence was `after`: the session owes the client the messages
/// after it (and none before), and with `fill` reads them from the store at once (the node may have missed
/// some of them, see `Event::ChannelCatchUp`).
pub struct ChannelMark {
    pub channel: ChannelId,
    pub after: u64,
    pub fill: bool,
}

impl Frame {
    pub fn plain(text: String) -> Arc<Frame> {
        Arc::new(Frame {
            text: Utf8Bytes::from(text),
            seq: None,
            mark: None,
        })
    }

    fn mark(channel: &ChannelId, after: u64, fill: bool) -> Arc<Frame> {
        Arc::new(Frame {
            text: Utf8Bytes::default(),
            seq: None,
            mark: Some(ChannelMark {
                channel: channel.clone(),
                after,
                fill,
            }),
        })
    }
}

/// What happened to a pushed frame.
pub enum Push {
    Queued,
    /// The queue was full: the session is now marked for closing with `CLOSE_RESYNC`.
    Overflowed,
    /// Already marked for closing; the frame was dropped.
    Closing,
}

/// The hub's side of one WebSocket session.
pub struct SessionHandle {
    pub id: u64,
    pub user: UserId,
    tx: mpsc::Sender<Arc<Frame>>,
    queued_bytes: AtomicUsize,
    max_bytes: usize,
    overflowed: AtomicBool,
    /// The account was blocked or deleted: the session closes with `REVOKED`.
    revoked: AtomicBool,
    /// Events may have been lost upstream (`Event::Resync`): the session closes with `RESYNC`.
    missed: AtomicBool,
    /// Wakes the session to close (overflow, revocation or resync).
    pub overflow: Notify,
    /// Wakes the session to re-check its credential (some of the user's session tokens were revoked).
    pub recheck: Notify,
}

impl SessionHandle {
    /// Queues a frame without waiting. On a full queue, marks the session overflowed (it will be closed).
    pub fn push(&self, frame: &Arc<Frame>) -> Push {
        if self.overflowed.load(Ordering::Relaxed) {
            return Push::Closing;
        }
        let len = frame.text.len();
        let queued = self.queued_bytes.fetch_add(len, Ordering::Relaxed) + len;
        if queued > self.max_bytes || self.tx.try_send(frame.clone()).is_err() {
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            if !self.overflowed.swap(true, Ordering::Relaxed) {
                self.overflow.notify_one();
                return Push::Overflowed;
            }
            return Push::Closing;
        }
        Push::Queued
    }

    /// The frames in the queue, and its fill (0 to 1): by frames or by bytes, whichever is fuller.
    fn fill(&self) -> (usize, f64) {
        let frames = self.tx.max_capacity() - self.tx.capacity();
        let by_frames = frames as f64 / self.tx.max_capacity() as f64;
        let by_bytes = self.queued_bytes.load(Ordering::Relaxed) as f64 / self.max_bytes.max(1) as f64;
        (frames, by_frames.max(by_bytes).min(1.0))
    }

    /// Called by the session's writer for each frame it takes off the queue.
    pub fn dequeued(&self, len: usize) {
        self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
    }

    pub fn is_overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Relaxed)
    }

    /// Closed because events may have been lost before they reached the hub, not because it read too slowly.
    pub fn missed_events(&self) -> bool {
        self.missed.load(Ordering::Relaxed)
    }

    fn revoke(&self) {
        self.revoked.store(true, Ordering::Relaxed);
        // Also stops further frames, like an overflow.
        self.overflowed.store(true, Ordering::Relaxed);
        self.overflow.notify_one();
    }

    /// Closes the session as an overflow would (`RESYNC`): the client resumes from the store.
    fn resync(&self) {
        self.missed.store(true, Ordering::Relaxed);
        self.overflowed.store(true, Ordering::Relaxed);
        self.overflow.notify_one();
    }
}

pub struct Hub {
    pub(crate) service: Arc<Confab>,
    pub(crate) cfg: GatewayConfig,
    sessions: RwLock<FxHashMap<UserId, Vec<Arc<SessionHandle>>>>,
    /// Bumped whenever a session opens or closes.
    generation: AtomicU64,
    /// Bumped when events may have been lost (`Event::Resync`, which only one shard sees): every shard then
    /// forgets the members it cached, since membership changes may be among the lost events.
    members_epoch: AtomicU64,
    next_id: AtomicU64,
    pub(crate) stats: HubStats,
    /// `confab_ws_frames_queued_total` and `confab_ws_overflow_closes_total`, made once (each push loop adds
    /// to them with one atomic each; a node with no slow consumer shows zero closes).
    frames_queued: metrics::Counter,
    overflow_closes: metrics::Counter,
}

#[derive(Default)]
pub struct HubStats {
    pub sessions: AtomicUsize,
}

impl Hub {
    /// Starts the router and shard tasks; they run until the bus shuts down.
    pub fn start(service: Arc<Confab>, cfg: GatewayConfig) -> Arc<Hub> {
        let shard_count = cfg.fanout_shards.max(1);
        // The bus routes events to the shards by channel, so there is no routing task and no hop between
        // the publisher and the shard that serializes the frame.
        let streams = service.subscribe(Subscription {
            interest: Hub::wants,
            partitions: shard_count,
        });
        let hub = Arc::new(Hub {
            service: service.clone(),
            cfg,
            sessions: RwLock::new(FxHashMap::default()),
            generation: AtomicU64::new(0),
            members_epoch: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            stats: HubStats::default(),
            frames_queued: metrics::counter!("confab_ws_frames_queued_total"),
            overflow_closes: metrics::counter!("confab_ws_overflow_closes_total"),
        });
        hub.overflow_closes.increment(0);
        metrics::gauge!("confab_ws_sessions").increment(0.0);
        tokio::spawn(Hub::sample_queues(Arc::downgrade(&hub)));
        let traces = service.follow_send_traces();
        for events in streams {
            let shard = Shard::new(Arc::downgrade(&hub), traces, service.clone());
            tokio::spawn(shard.run(events));
        }
        hub
    }

    /// The events that become frames (and the account changes and resyncs that close sessions), of any origin:
    /// a node's sessions need every node's events.
    fn wants(ev: &Event, _origin: Origin) -> bool {
        if let Event::UserUpdated(u) = ev {
            return u.disabled;
        }
        !matches!(
            ev,
            Event::UserCreated(_)
                | Event::BotChanged(_)
                | Event::BotTriggered { .. }
                | Event::ReplyStopRequested { .. }
                | Event::SettingsChanged { .. }
                | Event::OutboxAppended
        )
    }

    /// Registers a session for live events; `Err(limit)` when the user already has the most sessions allowed.
    pub fn register(&self, user: UserId) -> Result<(Arc<SessionHandle>, mpsc::Receiver<Arc<Frame>>), usize> {
        let limit = self.cfg.max_sessions_per_user;
        let mut sessions = self.sessions.write().unwrap_or_else(|e| e.into_inner());
        let list = sessions.entry(user.clone()).or_default();
        if limit > 0 && list.len() >= limit {
            return Err(limit);
        }
        let (tx, rx) = mpsc::channel(self.cfg.queue_frames.max(1));
        let handle = Arc::new(SessionHandle {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            user: user.clone(),
            tx,
            queued_bytes: AtomicUsize::new(0),
            max_bytes: self.cfg.queue_bytes,
            overflowed: AtomicBool::new(false),
            revoked: AtomicBool::new(false),
            missed: AtomicBool::new(false),
            overflow: Notify::new(),
            recheck: Notify::new(),
        });
        list.push(handle.clone());
        drop(sessions);
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.stats.sessions.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!("confab_ws_sessions").increment(1.0);
        Ok((handle, rx))
    }

    pub fn unregister(&self, handle: &SessionHandle) {
        let mut sessions = self.sessions.write().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = sessions.get_mut(&handle.user) {
            list.retain(|h| h.id != handle.id);
            if list.is_empty() {
                sessions.remove(&handle.user);
            }
        }
        drop(sessions);
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.stats.sessions.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("confab_ws_sessions").decrement(1.0);
    }

    /// Changes whenever a session opens or closes; cached session lists compare against it.
    fn session_generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The open sessions of the given users.
    fn sessions_of<'a>(&self, users: impl IntoIterator<Item = &'a UserId>) -> Vec<Arc<SessionHandle>> {
        let sessions = self.sessions.read().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for u in users {
            if let Some(list) = sessions.get(u) {
                out.extend(list.iter().cloned());
            }
        }
        out
    }

    /// Pushes one frame to each session, skipping the sessions of `except`. Never waits.
    fn push_all(&self, sessions: &[Arc<SessionHandle>], frame: &Arc<Frame>, except: Option<&UserId>) {
        let (mut pushed, mut overflowed) = (0u64, 0u64);
        for s in sessions {
            if except == Some(&s.user) {
                continue;
            }
            match s.push(frame) {
                Push::Queued => pushed += 1,
                Push::Overflowed => overflowed += 1,
                Push::Closing => {}
            }
        }
        self.frames_queued.increment(pushed);
        if overflowed > 0 {
            self.overflow_closes.increment(overflowed);
        }
    }

    /// Every second, while the hub lives: `confab_ws_queued_frames` (frames waiting in the outbound queues of
    /// all the node's sessions) and `confab_ws_queue_fill_max` (the fullest queue's fill, 0 to 1, by frames
    /// or bytes, whichever is fuller; a session reaching 1 is closed as a slow consumer). Sampled, so the
    /// push path pays nothing for them; one pass over the registry under its read lock.
    async fn sample_queues(hub: std::sync::Weak<Hub>) {
        let queued = metrics::gauge!("confab_ws_queued_frames");
        let fullest = metrics::gauge!("confab_ws_queue_fill_max");
        let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let Some(hub) = hub.upgrade() else { break };
            let (mut frames, mut fill) = (0usize, 0f64);
            {
                let sessions = hub.sessions.read().unwrap_or_else(|e| e.into_inner());
                for s in sessions.values().flatten() {
                    let (n, f) = s.fill();
                    frames += n;
                    fill = fill.max(f);
                }
            }
            queued.set(frames as f64);
            fullest.set(fill);
        }
        queued.set(0.0);
        fullest.set(0.0);
    }

    /// Closes every open session of `user` (with `REVOKED`).
    pub fn revoke_user(&self, user: &UserId) {
        for s in self.sessions_of([user]) {
            s.revoke();
        }
    }

    /// Closes every open session of this node with `RESYNC`: events meant for them may have been lost.
    pub fn resync_all(&self) {
        let sessions: Vec<Arc<SessionHandle>> = {
            let sessions = self.sessions.read().unwrap_or_else(|e| e.into_inner());
            sessions.values().flatten().cloned().collect()
        };
        tracing::warn!(
            sessions = sessions.len(),
            "events may have been lost: every session resyncs"
        );
        self.members_epoch.fetch_add(1, Ordering::AcqRel);
        for s in sessions {
            s.resync();
        }
    }

    /// Has every open session of `user` re-check its credential (each closes with `REVOKED` if it lapsed).
    pub fn recheck_user(&self, user: &UserId) {
        for s in self.sessions_of([user]) {
            s.recheck.notify_one();
        }
    }

    pub fn session_count(&self) -> usize {
        self.stats.sessions.load(Ordering::Relaxed)
    }
}
