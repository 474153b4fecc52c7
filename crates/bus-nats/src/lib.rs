//! The NATS `EventBus`: several Confab nodes, sharing one store, exchange their events over NATS core
//! subjects. Only this crate knows NATS.
//!
//! # How events travel
//! A [`NatsBus`] holds a [`LocalBus`] for its own node's subscribers. [`EventBus::publish`] first hands the
//! events to it as [`Origin::Local`] (in-node delivery exactly as with the in-process bus: same queues,
//! backpressure and ephemeral drops), then queues each event, serialized once (JSON), for NATS, with a
//! `Confab-Node` header naming the node. A reader task receives the other nodes' events, skips its own node's
//! messages by that header, and hands each to the local bus as [`Origin::Remote`]. Subjects:
//! `{prefix}.ch.{hex of the channel id}` for an event of a channel ([`Event::channel_id`]; the hex keeps ids
//! with `.`, `*` or `>` one subject token), `{prefix}.all` for events every node needs: those of no channel
//! (users, presence, bots, session revocations, settings), membership changes ([`Event::is_membership`]),
//! requests to stop a reply (the node generating it may have no session in the channel) and the outbox's
//! doorbell ([`Event::OutboxAppended`]).
//!
//! # Which events a node takes
//! A node subscribes to `{prefix}.all`, to its own probe subject, and to the subject of each channel a
//! *watched* user is in: a user with a session on this node ([`EventBus::watch_user`]; the gateway's
//! sessions tell it through the service). So a node receives the messages, edits, typing, receipts and
//! reply deltas of the channels its sessions need, and no other (`interest`). The set changes with:
//! - a user's first session here: the bus watches the user, then follows the channels the store lists for
//!   them, and the session reads its backlog only once those subscriptions are confirmed (a probe of this
//!   node came back after them), so nothing committed in between is missed;
//! - membership events (from any node, all on `{prefix}.all`): a watched user joining a channel this node
//!   did not follow subscribes to it. Events of the channel published between the join and the subscription
//!   did not reach this node, so once the subscription is confirmed the bus raises
//!   [`Event::ChannelCatchUp`] for the users who joined: their sessions read what follows the join from the
//!   store. A join from another node also raises it at once when the channel was already followed: the
//!   channel's events come through another subscription than the join, and may have been taken first;
//! - the last watched member leaving, the channel deleted, or the user's last session closing: unsubscribed.
//!
//! Subscribers learn which channels are followed with [`EventBus::follows`] (the gateway fans out only
//! those; a local event of another channel, a message sent through the REST API say, reaches no session
//! here). Every node still sees every membership event, so the members cached for fan-out and by the bots
//! stay right whichever channels are followed.
//!
//! # Ordering
//! NATS keeps one publisher's order per subscription, and each node publishes from one task in publish
//! order, so one node's events of one subject reach every other node in the order that node published them
//! (its store publishes in commit order): a channel's events, or those of `{prefix}.all`. Events of
//! different subjects arrive through different subscriptions and may interleave differently (a membership
//! change and the channel's messages around it, say: hence the catch-up above). Events of different nodes
//! are not ordered against each other: a channel's
//! `message.new` may arrive out of `seq` order when two nodes write to it. The store is the source of truth:
//! sessions drop duplicates by `seq` and fill gaps from the store.
//!
//! # Lost events
//! NATS core delivers at most once. Events from other nodes may be missed when this node's connection drops
//! (until it is back), or when the client drops messages because this node fell behind (a slow consumer). In
//! both cases the bus publishes [`Event::Resync`] to its node's subscribers (as `Remote`); the gateway closes
//! every session with `4008`, and each client resumes from the store. After a reconnect, the resync is raised
//! only once the subscription is in place again (a probe message of this node has come back through it), so a
//! client that resumes at once misses nothing that follows. Events *this* node published around a lost
//! connection (written to a dead socket) or could not queue (NATS unreachable for long: the queue is bounded,
//! [`OUTBOUND_CAPACITY`]) may have been lost for the other nodes too: once connected again, the node sends
//! them an `Event::Resync` on `{prefix}.all`, which they raise locally. Publishing never waits for NATS: a
//! store's writer is never held up by the broker.
//!
//! Metrics: `confab_bus_nats_published_total`, `confab_bus_nats_received_total`,
//! `confab_bus_nats_undecodable_total`, `confab_bus_nats_dropped_total` (not queued or not accepted by the
//! client), `confab_bus_resyncs_total` (resyncs raised on this node, its own or asked by another node),
//! `confab_bus_nats_followed_channels` (channels subscribed to now).
//!
//! Nodes of different versions: an event a node cannot decode (a variant it does not know) is counted as
//! undecodable, logged and skipped.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::{Client, HeaderMap, Message};
use async_trait::async_trait;
use bytes::Bytes;
use confab_bus::LocalBus;
use confab_domain::ports::{EventBus, EventStream, Origin, Subscription};
use confab_domain::{ChannelId, Event, UserId};
use futures_util::stream::SelectAll;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

mod config;
mod interest;
mod tasks;
#[cfg(test)]
mod tests;

pub use config::{NatsBusError, NatsConfig, Subjects, probe};
use interest::Interest;

use tasks::{Publisher, Reader};

/// Events queued for NATS at most; beyond, an event is dropped (and the other nodes told to resync). An
/// ephemeral event is queued only while more than half the queue is free.
pub const OUTBOUND_CAPACITY: usize = 65_536;

/// The header naming the node that published a message.
const NODE_HEADER: &str = "Confab-Node";
/// The header of a node's probe, which only its sender looks at (every other node skips it).
const PROBE_HEADER: &str = "Confab-Probe";
/// How often the reader checks the connection even without a client event (events can be dropped).
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How often the client pings the server: a dead connection is noticed within about two periods.
const PING_INTERVAL: Duration = Duration::from_secs(10);
/// The longest wait between two reconnection attempts: the node is back within about this long of the
/// server's return (the client's default grows to 4 s).
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// The wait before reconnection attempt `attempts`: none for the first, then doubling from 50 ms up to
/// [`MAX_RECONNECT_DELAY`], with up to a quarter more at random so nodes do not all come back at once.
fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let doubled = 50u64.saturating_mul(1 << (attempts - 2).min(16));
    let base = Duration::from_millis(doubled).min(MAX_RECONNECT_DELAY);
    base + base.mul_f64(rand::random::<f64>() / 4.0)
}

/// How long `close` lets the queued events go out before it stops the tasks anyway.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest wait for the subscriptions of a user's channels before their first session goes on anyway.
const FOLLOW_TIMEOUT: Duration = Duration::from_secs(5);
/// Messages handed to the local bus in one call.
const READ_BATCH: usize = 256;

/// Counts since the bus started (also exported as metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatsBusStats {
    /// Events handed to the NATS client.
    pub published: u64,
    /// Messages from other nodes (probes aside), decodable or not.
    pub received: u64,
    /// Messages from other nodes that were not an event.
    pub undecodable: u64,
    /// Events not sent: the outbound queue was full, or the client refused them (too large).
    pub dropped: u64,
    /// `Event::Resync` raised on this node.
    pub resyncs: u64,
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    received: AtomicU64,
    undecodable: AtomicU64,
    dropped: AtomicU64,
    resyncs: AtomicU64,
}

/// What the client's event callback, the publisher and the reader share.
#[derive(Default)]
struct Shared {
    /// The connection is down (for logging once per loss).
    down: AtomicBool,
    /// The client dropped messages of a subscription.
    slow: AtomicBool,
    /// Wakes the reader to look at the connection.
    signal: Notify,
    /// Wakes the publisher to tell the other nodes to resync.
    announce: Notify,
    /// Which channels this node follows; its pending commands wake the reader through `follow`.
    interest: Mutex<Interest>,
    follow: Notify,
    /// Outbound events were dropped since the last announcement (for logging once).
    losing: AtomicBool,
    counters: Counters,
}

impl Shared {
    fn on_client_event(&self, event: async_nats::Event) {
        match event {
            async_nats::Event::Disconnected => {
                if !self.down.swap(true, Ordering::AcqRel) {
                    tracing::warn!("NATS connection lost; reconnecting (events from other nodes may be missed)");
                }
            }
            async_nats::Event::Connected => {
                if self.down.swap(false, Ordering::AcqRel) {
                    tracing::info!("NATS connection back");
                }
                self.signal.notify_one();
            }
            async_nats::Event::SlowConsumer(_) => {
                if !self.slow.swap(true, Ordering::AcqRel) {
                    self.signal.notify_one();
                }
            }
            async_nats::Event::ServerError(e) => tracing::warn!(error = %e, "NATS server error"),
            async_nats::Event::ClientError(e) => tracing::warn!(error = %e, "NATS client error"),
            async_nats::Event::LameDuckMode => tracing::info!("NATS server entering lame duck mode"),
            async_nats::Event::Draining | async_nats::Event::Closed => {}
        }
    }

    /// An event of this node could not go out: the other nodes will be told to resync.
    fn lost_outbound(&self, why: &str) {
        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("confab_bus_nats_dropped_total").increment(1);
        if !self.losing.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                reason = why,
                "events of this node not sent to NATS; the other nodes will resync"
            );
        }
        self.announce.notify_one();
    }

    fn interest(&self) -> std::sync::MutexGuard<'_, Interest> {
        self.interest.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes the reader if the bookkeeping decided something.
    fn decided(&self, interest: &Interest) {
        if interest.has_pending() {
            self.follow.notify_one();
        }
    }

    fn count_resync(&self) {
        self.counters.resyncs.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("confab_bus_resyncs_total").increment(1);
    }
}

/// One event ready for NATS.
struct Outbound {
    subject: String,
    payload: Bytes,
}

/// The `EventBus` of a node among several (see the crate documentation).
pub struct NatsBus {
    local: Arc<LocalBus>,
    client: Client,
    subjects: Subjects,
    node_id: Arc<str>,
    outbound: mpsc::Sender<Outbound>,
    shared: Arc<Shared>,
    closed: AtomicBool,
    stop: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl NatsBus {
    /// Connects with a local bus of the default capacity; see [`NatsBus::connect_with`].
    pub async fn connect(config: NatsConfig) -> Result<NatsBus, NatsBusError> {
        NatsBus::connect_with(config, LocalBus::default()).await
    }

    /// Connects to NATS, subscribes, and returns once the subscription is in place (a probe of this node came
    /// back through it), so every event another node publishes from then on reaches `local`'s subscribers.
    /// Fails when NATS cannot be reached within `connect_timeout`; later losses of the connection are
    /// retried forever (and end in a resync).
    pub async fn connect_with(config: NatsConfig, local: LocalBus) -> Result<NatsBus, NatsBusError> {
        config.validate()?;
        let (servers, addr) = config::servers(&config.url)?;
        let shared = Arc::new(Shared::default());
        // Counted only when something goes wrong: registered now, so they show (at zero) before that.
        for name in [
            "confab_bus_resyncs_total",
            "confab_bus_nats_dropped_total",
            "confab_bus_nats_undecodable_total",
        ] {
            metrics::counter!(name).increment(0);
        }
        let events = shared.clone();
        let client = async_nats::ConnectOptions::new()
            .name(format!("confab {}", config.node_id))
            .connection_timeout(config.connect_timeout)
            .ping_interval(PING_INTERVAL)
            .max_reconnects(None)
            .reconnect_delay_callback(reconnect_delay)
            .event_callback(move |event| {
                events.on_client_event(event);
                std::future::ready(())
            })
            .connect(servers)
            .await
            .map_err(|e| NatsBusError::Unreachable {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        let subjects = Subjects::new(&config.subject_prefix);
        let mut subscriptions = SelectAll::new();
        for subject in subjects.interest(&config.node_id) {
            let sub = client.subscribe(subject).await.map_err(|e| NatsBusError::Subscribe {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
            subscriptions.push(tasks::Feed::fixed(sub));
        }

        let node_id: Arc<str> = Arc::from(config.node_id.as_str());
        let local = Arc::new(local);
        let stop = CancellationToken::new();
        let (ready_tx, ready) = oneshot::channel();
        let reader = Reader {
            local: local.clone(),
            client: client.clone(),
            shared: shared.clone(),
            node_id: node_id.clone(),
            probe_subject: subjects.node(&node_id),
            subjects: subjects.clone(),
            connects_seen: client.statistics().connects.load(Ordering::Relaxed),
            next_nonce: 0,
            fences: VecDeque::new(),
            followed: std::collections::HashSet::new(),
        };
        let reader = tokio::spawn(reader.run(subscriptions, ready_tx, stop.clone()));
        let (outbound, queue) = mpsc::channel(OUTBOUND_CAPACITY);
        let publisher = Publisher {
            client: client.clone(),
            shared: shared.clone(),
            headers: node_headers(&node_id),
            all_subject: subjects.all(),
        };
        let publisher = tokio::spawn(publisher.run(queue, stop.clone()));
        let bus = NatsBus {
            local,
            client,
            subjects,
            node_id,
            outbound,
            shared,
            closed: AtomicBool::new(false),
            stop,
            tasks: Mutex::new(vec![reader, publisher]),
        };
        match tokio::time::timeout(config.connect_timeout, ready).await {
            Ok(Ok(())) => Ok(bus),
            Ok(Err(_)) => Err(NatsBusError::Subscribe {
                addr,
                reason: "the connection closed".into(),
            }),
            Err(_) => Err(NatsBusError::Subscribe {
                addr,
                reason: format!("no answer within {:?}", config.connect_timeout),
            }),
        }
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    /// The channels this node takes events of now (see the crate documentation).
    pub fn followed_channels(&self) -> usize {
        self.shared.interest().followed_count()
    }

    pub fn stats(&self) -> NatsBusStats {
        let c = &self.shared.counters;
        NatsBusStats {
            published: c.published.load(Ordering::Relaxed),
            received: c.received.load(Ordering::Relaxed),
            undecodable: c.undecodable.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            resyncs: c.resyncs.load(Ordering::Relaxed),
        }
    }

    /// Stops taking events for NATS, lets the queued ones go out (for up to a few seconds), and stops the
    /// tasks. Publishing afterwards delivers to this node only. Dropping the bus stops the tasks at once.
    pub async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.stop.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for mut task in tasks {
            if tokio::time::timeout(CLOSE_TIMEOUT, &mut task).await.is_err() {
                task.abort();
            }
        }
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.client.flush()).await;
    }

    /// The event serialized for NATS, or `None` (counted, and the other nodes told) if it cannot be; `None`
    /// also for a catch-up, which concerns this node only.
    fn encode(&self, event: &Event) -> Option<Outbound> {
        if matches!(event, Event::ChannelCatchUp { .. }) {
            return None;
        }
        match serde_json::to_vec(event) {
            Ok(payload) => Some(Outbound {
                subject: self.subjects.of(event),
                payload: Bytes::from(payload),
            }),
            Err(e) => {
                tracing::error!(event = event.name(), error = %e, "cannot serialize an event for NATS");
                self.shared.lost_outbound("serialization failed");
                None
            }
        }
    }

    /// Queues one event for NATS without waiting.
    fn enqueue(&self, ephemeral: bool, out: Outbound) {
        // Like the local bus: typing and deltas never take the room durable events need.
        if ephemeral && self.outbound.capacity() <= OUTBOUND_CAPACITY / 2 {
            self.shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("confab_bus_nats_dropped_total").increment(1);
            return;
        }
        match self.outbound.try_send(out) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) if ephemeral => {
                self.shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("confab_bus_nats_dropped_total").increment(1);
            }
            Err(mpsc::error::TrySendError::Full(_)) => self.shared.lost_outbound("outbound queue full"),
            Err(mpsc::error::TrySendError::Closed(_)) => {} // closing
        }
    }
}

impl Drop for NatsBus {
    fn drop(&mut self) {
        self.stop.cancel();
        for task in self.tasks.get_mut().unwrap_or_else(|e| e.into_inner()).drain(..) {
            task.abort();
        }
    }
}

#[async_trait]
impl EventBus for NatsBus {
    async fn publish(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let outbound: Vec<(bool, Outbound)> = if self.closed.load(Ordering::Acquire) {
            Vec::new()
        } else {
            events
                .iter()
                .filter_map(|e| self.encode(e).map(|o| (e.is_ephemeral(), o)))
                .collect()
        };
        if events.iter().any(Event::is_membership) {
            // Decided before the subscribers see the events, so `follows` already answers for them.
            let mut interest = self.shared.interest();
            for event in events.iter().filter(|e| e.is_membership()) {
                interest.membership(event, Origin::Local);
            }
            self.shared.decided(&interest);
        }
        self.local.publish_from(Origin::Local, events).await;
        for (ephemeral, out) in outbound {
            self.enqueue(ephemeral, out);
        }
    }

    fn subscribe(&self) -> Box<dyn EventStream> {
        self.local.subscribe()
    }

    fn subscribe_with(&self, sub: Subscription) -> Vec<Box<dyn EventStream>> {
        self.local.subscribe_with(sub)
    }

    fn follows_users(&self) -> bool {
        true
    }

    fn follows(&self, channel: &ChannelId) -> bool {
        self.shared.interest().follows(channel)
    }

    fn watch_user(&self, user: &UserId) {
        self.shared.interest().watch(user);
    }

    async fn follow_channels(&self, user: &UserId, channels: Vec<ChannelId>) {
        let (confirmed, wait) = oneshot::channel();
        {
            let mut interest = self.shared.interest();
            interest.listed(user, channels, confirmed);
            self.shared.decided(&interest);
        }
        // NATS away: its return raises a resync, which closes the sessions anyway.
        if tokio::time::timeout(FOLLOW_TIMEOUT, wait).await.is_err() {
            tracing::warn!(user = %user, "NATS did not confirm the subscriptions of a user's channels in time");
        }
    }

    fn unwatch_user(&self, user: &UserId) {
        let mut interest = self.shared.interest();
        interest.unwatch(user);
        self.shared.decided(&interest);
    }
}

fn node_headers(node_id: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(NODE_HEADER, node_id);
    headers
}
