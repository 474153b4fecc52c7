//! The relay: one worker per endpoint reads the outbox in commit order and delivers what the endpoint
//! subscribes to. See the crate documentation for the guarantees.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use confab_domain::outbox::{DeadLetter, OutboxEntry};
use confab_domain::ports::{DynBus, DynStore, Origin, Subscription};
use confab_domain::settings::announce_setting;
use confab_domain::{DomainError, DomainResult, Event, now_millis};
use confab_egress::EgressPolicy;
use confab_service::webhooks::{
    Attempt, EndpointPatch, EndpointSpec, EndpointView, ManagedEndpoint, STANDARD_FORMAT, WebhookEndpoints,
    WebhookFormat,
};
use rand::Rng;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::endpoint::{CURSOR_NAMESPACE, ENDPOINT_NAMESPACE, Endpoint, EventFilter};
use crate::lease::EndpointLease;
use crate::recorder::EventRecorder;
use crate::{signature, standard};

mod admin;
mod follow;
mod lanes;

use lanes::Lanes;

#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Per attempt, connect to the last byte of the response head.
    pub timeout: Duration,
    /// Deliveries in flight to one endpoint (each to a different channel).
    pub per_endpoint: usize,
    /// Wait before the first retry; doubled for each further one, up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// How long after its commit an event is retried before it is dead-lettered.
    pub retry_period: Duration,
    /// Events an endpoint's worker holds in memory (read ahead of delivery).
    pub buffer: usize,
    /// This node's name: the holder of the leases of the endpoints it relays.
    pub node_id: String,
    /// How long an endpoint's lease lasts without renewal: after a node dies, another takes its endpoints
    /// over within this time.
    pub lease_ttl: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            timeout: Duration::from_secs(5),
            per_endpoint: 8,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(600),
            retry_period: Duration::from_secs(24 * 3600),
            buffer: 4096,
            node_id: "local".into(),
            lease_ttl: Duration::from_secs(15),
        }
    }
}

/// How many attempts an endpoint keeps for the admin API.
const RECENT_ATTEMPTS: usize = 50;
/// Outbox rows read at a time.
const FETCH: u32 = 256;

pub struct Relay {
    store: DynStore,
    /// Where endpoint changes are announced to the other nodes.
    bus: DynBus,
    policy: EgressPolicy,
    client: confab_egress::GuardedClient,
    cfg: RelayConfig,
    recorder: Arc<EventRecorder>,
    /// The compatibility surfaces' formats, by name (the native one is built in).
    formats: RwLock<HashMap<String, Arc<dyn WebhookFormat>>>,
    /// Serialises endpoint changes (create, update, delete) with each other.
    workers: tokio::sync::Mutex<HashMap<String, Worker>>,
    shutdown: CancellationToken,
    /// Itself, for the workers that endpoint changes start.
    me: std::sync::Weak<Relay>,
}

struct Worker {
    shared: Arc<Shared>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// What an endpoint's worker shares with the admin API.
struct Shared {
    endpoint: RwLock<Endpoint>,
    doorbell: Notify,
    /// Every event at or below it is delivered or dead-lettered.
    cursor: AtomicU64,
    stats: Mutex<Stats>,
}

#[derive(Default)]
struct Stats {
    pending: u64,
    delivered: u64,
    failed_attempts: u64,
    dead_lettered: u64,
    recent: VecDeque<Attempt>,
}

impl Shared {
    fn view(&self) -> EndpointView {
        let e = self.endpoint.read().unwrap_or_else(|e| e.into_inner()).clone();
        let s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        EndpointView {
            id: e.id,
            url: e.url,
            events: e.events.entries().to_vec(),
            description: e.description,
            enabled: e.enabled,
            format: e.format,
            created_at: e.created_at,
            updated_at: e.updated_at,
            pending: s.pending,
            delivered: s.delivered,
            failed_attempts: s.failed_attempts,
            dead_lettered: s.dead_lettered,
        }
    }

    fn note(&self, a: Attempt) {
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        if a.delivered {
            s.delivered += 1;
        } else {
            s.failed_attempts += 1;
        }
        if s.recent.len() == RECENT_ATTEMPTS {
            s.recent.pop_back();
        }
        s.recent.push_front(a);
    }
}

/// Events whose commit may have added rows to the outbox.
pub(super) fn rings_doorbell(e: &Event) -> bool {
    matches!(
        e,
        Event::MessageCreated(_)
            | Event::MessageUpdated(_)
            | Event::MessageDeleted { .. }
            | Event::ChannelCreated { .. }
            | Event::ChannelUpdated(_)
            | Event::ChannelDeleted { .. }
            | Event::MembersJoined { .. }
            | Event::MemberLeft { .. }
            | Event::UserCreated(_)
            | Event::UserUpdated(_)
            | Event::UserDeleted(_)
            | Event::BotTriggered { .. }
    )
}

impl Relay {
    /// Loads the endpoints, installs the recorder in the store (so call this before anything writes that
    /// should be announced, e.g. the sweep of replies interrupted by a restart) and starts a worker per
    /// endpoint, a doorbell that wakes them after each commit, and the outbox pruner.
    pub async fn start(
        store: DynStore,
        bus: &DynBus,
        policy: EgressPolicy,
        cfg: RelayConfig,
        shutdown: CancellationToken,
    ) -> DomainResult<Arc<Relay>> {
        let client = policy
            .guarded_client(cfg.timeout, "Confab-Webhooks")
            .map_err(|e| DomainError::Internal(format!("webhook client: {e}")))?;
        let recorder = Arc::new(EventRecorder::default());
        let relay = Arc::new_cyclic(|me| Relay {
            store: store.clone(),
            bus: bus.clone(),
            policy,
            client,
            cfg,
            recorder: recorder.clone(),
            formats: Default::default(),
            workers: Default::default(),
            shutdown: shutdown.clone(),
            me: me.clone(),
        });
        {
            let mut workers = relay.workers.lock().await;
            for (id, value) in store.list_settings(ENDPOINT_NAMESPACE).await? {
                let endpoint: Endpoint = match serde_json::from_value(value) {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::error!(endpoint = %id, error = %e, "unreadable webhook endpoint, skipped");
                        continue;
                    }
                };
                let cursor = match store.get_setting(CURSOR_NAMESPACE, &id).await? {
                    Some(v) => v.as_u64().unwrap_or(0),
                    None => store.outbox_head().await?,
                };
                workers.insert(id, relay.spawn(endpoint, cursor));
            }
            relay.refresh_interest(&workers);
        }
        store.set_change_recorder(recorder);
        relay.follow_other_nodes();

        // Any origin: an event committed on another node also means new rows in the shared outbox, and so does
        // another node's announcement of its rows (this node may not take the events of their channels).
        let mut doorbell = bus
            .subscribe_with(Subscription {
                interest: |e, origin| match e {
                    Event::OutboxAppended => origin == Origin::Remote,
                    e => rings_doorbell(e),
                },
                partitions: 1,
            })
            .pop()
            .expect("one partition");
        relay.announce_own_rows();
        let weak = Arc::downgrade(&relay);
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    ev = doorbell.next() => if ev.is_none() { break },
                }
                let Some(relay) = weak.upgrade() else { break };
                // try_lock: an endpoint change in progress rings its own worker when it is done.
                if let Ok(workers) = relay.workers.try_lock() {
                    for w in workers.values() {
                        w.shared.doorbell.notify_one();
                    }
                }
            }
        });
        let weak = Arc::downgrade(&relay);
        // Rows every endpoint is past wait at most this long: the outbox holds about a retry period of events
        // (plus this) while an endpoint is down, whatever the retry period.
        let prune_every = (relay.cfg.retry_period / 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
        tokio::spawn(async move {
            let mut every = tokio::time::interval(prune_every);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = every.tick() => {}
                }
                let Some(relay) = weak.upgrade() else { break };
                if let Err(e) = relay.prune().await {
                    tracing::warn!(error = %e, "cannot prune the outbox");
                }
            }
        });
        Ok(relay)
    }

    /// Forgets outbox rows every endpoint is past: every endpoint of the database (other nodes may have
    /// added some), by the cursors saved in the store (a holder saves its own at least once a second; an
    /// endpoint's cursor is saved when it is added).
    async fn prune(&self) -> DomainResult<()> {
        // Also the bound on how long a lost announcement of another node's change goes unnoticed.
        self.reload_endpoints().await?;
        let endpoints = self.store.list_settings(ENDPOINT_NAMESPACE).await?;
        let cursors: HashMap<String, u64> = self
            .store
            .list_settings(CURSOR_NAMESPACE)
            .await?
            .into_iter()
            .filter_map(|(id, v)| Some((id, v.as_u64()?)))
            .collect();
        let mut through = match endpoints.is_empty() {
            true => self.store.outbox_head().await?,
            false => u64::MAX,
        };
        for (id, _) in &endpoints {
            match cursors.get(id) {
                Some(c) => through = through.min(*c),
                // Added by a node that has not saved its cursor yet: nothing is known to be past.
                None => return Ok(()),
            }
        }
        if through > 0 {
            let n = self.store.prune_outbox(through).await?;
            if n > 0 {
                tracing::debug!(rows = n, through, "outbox pruned");
            }
        }
        Ok(())
    }

    /// Tells the recorder which types enabled endpoints take (a disabled endpoint never receives what is
    /// recorded meanwhile, so nothing is recorded for it).
    fn refresh_interest(&self, workers: &HashMap<String, Worker>) {
        let filters: Vec<EventFilter> = workers
            .values()
            .filter_map(|w| {
                let e = w.shared.endpoint.read().unwrap_or_else(|e| e.into_inner());
                e.enabled.then(|| e.events.clone())
            })
            .collect();
        self.recorder.set_interest(&filters);
    }

    fn spawn(self: &Arc<Self>, endpoint: Endpoint, cursor: u64) -> Worker {
        let shared = Arc::new(Shared {
            endpoint: RwLock::new(endpoint),
            doorbell: Notify::new(),
            cursor: AtomicU64::new(cursor),
            stats: Default::default(),
        });
        let stop = self.shutdown.child_token();
        let task = tokio::spawn(self.clone().relay_while_held(shared.clone(), stop.clone()));
        Worker { shared, stop, task }
    }

    /// Delivers the endpoint's events while this node holds its lease; waits for it otherwise (another
    /// node relays it), and starts again from the cursor saved by the last holder once it has it.
    async fn relay_while_held(self: Arc<Self>, shared: Arc<Shared>, stop: CancellationToken) {
        let id = shared.endpoint.read().unwrap_or_else(|e| e.into_inner()).id.clone();
        let lease = EndpointLease::new(self.store.clone(), &id, &self.cfg.node_id, self.cfg.lease_ttl);
        while lease.acquire(&stop).await {
            let cursor = match self.store.get_setting(CURSOR_NAMESPACE, &id).await {
                Ok(saved) => saved
                    .and_then(|v| v.as_u64())
                    .unwrap_or_else(|| shared.cursor.load(Ordering::Acquire)),
                Err(e) => {
                    tracing::warn!(endpoint = %id, error = %e, "cannot read the webhook cursor");
                    tokio::time::sleep(lease.renew_every()).await;
                    continue;
                }
            };
            shared.cursor.store(cursor, Ordering::Release);
            let lanes = Lanes {
                relay: self.clone(),
                shared: shared.clone(),
                stop: stop.clone(),
                fetched: cursor,
                saved_cursor: cursor,
                outstanding: BTreeMap::new(),
                metrics: lanes::EndpointMetrics::new(&id),
                lanes: HashMap::new(),
                ready: VecDeque::new(),
                timers: BinaryHeap::new(),
                in_flight: 0,
                letters: mpsc::unbounded_channel(),
            };
            lanes.run(&lease).await;
            if stop.is_cancelled() {
                lease.release().await;
                return;
            }
            tracing::warn!(endpoint = %id, "lost the webhook lease: another node relays this endpoint now");
        }
    }

    async fn stop_worker(&self, w: Worker) {
        w.stop.cancel();
        let _ = w.task.await;
    }

    fn check_url(&self, url: &str) -> DomainResult<()> {
        self.policy
            .check_url(url)
            .map(|_| ())
            .map_err(|e| DomainError::invalid("url", e.to_string()))
    }

    /// The format an endpoint delivers in, once its surface has registered it; `None` for the native one.
    fn format_of(&self, e: &Endpoint) -> Result<Option<Arc<dyn WebhookFormat>>, ()> {
        if !e.is_managed() {
            return Ok(None);
        }
        let formats = self.formats.read().unwrap_or_else(|e| e.into_inner());
        formats.get(&e.format).cloned().map(Some).ok_or(())
    }

    /// The body of an event in the endpoint's format: `Ok(None)` when the format has no such event.
    async fn render(&self, e: &Endpoint, entry: &OutboxEntry) -> Result<Option<Bytes>, String> {
        let Some(format) = self
            .format_of(e)
            .map_err(|()| format!("format {} is not available", e.format))?
        else {
            return Ok(Some(standard::render_stored(&entry.payload)));
        };
        // Rows recorded before events were kept as snapshots have nothing a format could render.
        let Ok(event) = serde_json::from_slice(&entry.payload) else {
            return Ok(None);
        };
        format.render(&event).await.map_err(|err| format!("rendering: {err}"))
    }

    /// One attempt of an event: rendered (unless `body` holds its rendering from an earlier attempt), then
    /// POSTed with the Standard Webhooks headers and the format's own.
    async fn post(&self, e: &Endpoint, entry: &OutboxEntry, body: Option<Bytes>) -> Outcome {
        let started = Instant::now();
        let rendered = match body {
            Some(b) => Ok(b),
            None => match self.render(e, entry).await {
                Ok(Some(b)) => Ok(b),
                Ok(None) => return Outcome::Skipped,
                Err(err) => Err(err),
            },
        };
        // The URL passes the egress policy at every attempt: it may have been stored under a looser one.
        let request = match &rendered {
            Err(err) => Err(err.clone()),
            Ok(_) => match self.destination(e, entry).await {
                Ok(Some(url)) => self.client.post(&url).map_err(|err| format!("egress: {err}")),
                Ok(None) => return Outcome::Skipped,
                Err(err) => Err(err),
            },
        };
        let result = match (&rendered, signature::secret_key(&e.secret), request) {
            (Err(err), _, _) => Err(err.clone()),
            (_, None, _) => Err("the endpoint's secret is unreadable".to_string()),
            (_, _, Err(err)) => Err(err),
            (Ok(body), Some(key), Ok(request)) => {
                let id = webhook_id(entry.id);
                let timestamp = now_millis() / 1000;
                let mut request = request
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header("webhook-id", &id)
                    .header("webhook-timestamp", timestamp.to_string())
                    .header("webhook-signature", signature::sign(&key, &id, timestamp, body));
                if let Ok(Some(format)) = self.format_of(e) {
                    for (name, value) in format.sign(body) {
                        request = request.header(name, value);
                    }
                }
                request
                    .body(body.clone())
                    .send()
                    .await
                    .map_err(|e| crate::short_error(&e))
            }
        };
        self.tried(e, entry, started, result, rendered.ok())
    }

    /// Counts and describes an attempt.
    fn tried(
        &self,
        e: &Endpoint,
        entry: &OutboxEntry,
        started: Instant,
        result: Result<reqwest::Response, String>,
        body: Option<Bytes>,
    ) -> Outcome {
        let elapsed = started.elapsed();
        let kind = if e.is_managed() { "outbox.compat" } else { "outbox" };
        metrics::histogram!("confab_webhook_attempt_seconds", "kind" => kind).record(elapsed.as_secs_f64());
        let (status, error) = match result {
            Ok(r) if r.status().is_success() => (Some(r.status().as_u16()), None),
            Ok(r) => (Some(r.status().as_u16()), Some(format!("HTTP {}", r.status().as_u16()))),
            Err(e) => (None, Some(e)),
        };
        let delivered = error.is_none();
        metrics::counter!("confab_webhook_deliveries_total", "kind" => kind,
            "outcome" => if delivered { "delivered" } else { "failed" })
        .increment(1);
        Outcome::Tried {
            attempt: Attempt {
                event_id: entry.id,
                event_type: entry.event_type.clone(),
                at: now_millis(),
                duration_ms: elapsed.as_millis() as u64,
                status,
                error,
                delivered,
            },
            body,
        }
    }

    /// Where an attempt goes: the endpoint's URL, or the one its format names for the event (`None`: passed
    /// by).
    async fn destination(&self, e: &Endpoint, entry: &OutboxEntry) -> Result<Option<String>, String> {
        if !e.url.is_empty() {
            return Ok(Some(e.url.clone()));
        }
        let Ok(Some(format)) = self.format_of(e) else {
            return Err(format!("format {} names no URL", e.format));
        };
        let Ok(event) = serde_json::from_slice(&entry.payload) else {
            return Ok(None);
        };
        format.url(&event).await.map_err(|err| format!("destination: {err}"))
    }

    /// The lane of an event: its channel, and for a format with destinations per event, its destination's
    /// key within the channel.
    fn lane_of(&self, e: &Endpoint, entry: &OutboxEntry) -> String {
        let channel = entry
            .channel_id
            .as_ref()
            .map(|c| c.as_str().to_string())
            .unwrap_or_default();
        if !e.url.is_empty() {
            return channel;
        }
        let sub = match (self.format_of(e), serde_json::from_slice(&entry.payload)) {
            (Ok(Some(format)), Ok(event)) => format.lane(&event),
            _ => None,
        };
        match sub {
            Some(sub) => format!("{channel}\n{sub}"),
            None => channel,
        }
    }

    async fn shared(&self, id: &str) -> DomainResult<Arc<Shared>> {
        self.workers
            .lock()
            .await
            .get(id)
            .map(|w| w.shared.clone())
            .ok_or_else(|| DomainError::not_found("webhook endpoint", id))
    }
}

/// The `webhook-id` of an event: the same for every attempt and every endpoint.
fn webhook_id(event_id: u64) -> String {
    format!("evt_{event_id}")
}

/// How an attempt of an event ended.
enum Outcome {
    /// The endpoint's format has no such event: passed by, as if delivered.
    Skipped,
    /// `body` is the rendering, kept so that retries send the same bytes.
    Tried { attempt: Attempt, body: Option<Bytes> },
}
