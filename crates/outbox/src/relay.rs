//! The relay: one worker per endpoint reads the outbox in commit order and delivers what the endpoint
//! subscribes to. See the crate documentation for the guarantees.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use confab_domain::outbox::{DeadLetter, OutboxEntry};
use confab_domain::ports::{DynBus, DynStore, Subscription};
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
use crate::recorder::EventRecorder;
use crate::{signature, standard};

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
        }
    }
}

/// How many attempts an endpoint keeps for the admin API.
const RECENT_ATTEMPTS: usize = 50;
/// Outbox rows read at a time.
const FETCH: u32 = 256;

pub struct Relay {
    store: DynStore,
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
    /// Events at or below it were recorded while the endpoint was disabled: never delivered to it.
    skip_through: AtomicU64,
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

        // Any origin: an event committed on another node also means new rows in the shared outbox.
        let mut doorbell = bus
            .subscribe_with(Subscription {
                interest: |e, _| {
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
                },
                partitions: 1,
            })
            .pop()
            .expect("one partition");
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

    /// Forgets outbox rows every endpoint is past.
    async fn prune(&self) -> DomainResult<()> {
        let through = {
            let workers = self.workers.lock().await;
            match workers.values().map(|w| w.shared.cursor.load(Ordering::Acquire)).min() {
                Some(c) => c,
                None => self.store.outbox_head().await?,
            }
        };
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
            skip_through: AtomicU64::new(0),
            stats: Default::default(),
        });
        let stop = self.shutdown.child_token();
        let run = Lanes {
            relay: self.clone(),
            shared: shared.clone(),
            stop: stop.clone(),
            fetched: cursor,
            saved_cursor: cursor,
            outstanding: BTreeSet::new(),
            lanes: HashMap::new(),
            ready: VecDeque::new(),
            timers: BinaryHeap::new(),
            in_flight: 0,
            letters: mpsc::unbounded_channel(),
        };
        let task = tokio::spawn(run.run());
        Worker { shared, stop, task }
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

/// An event waiting for its turn in a lane.
struct Pending {
    entry: Arc<OutboxEntry>,
    attempts: u32,
    /// Rendered at the first attempt.
    body: Option<Bytes>,
}

#[derive(Default)]
struct Lane {
    queue: VecDeque<Pending>,
    /// The head is being delivered, or waits for its retry time.
    busy: bool,
}

/// One endpoint's worker: the events read ahead, in lanes by channel (one event of a lane in flight at a
/// time, so a channel's events arrive in order; lanes do not wait for each other).
struct Lanes {
    relay: Arc<Relay>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    /// The newest event read from the outbox.
    fetched: u64,
    saved_cursor: u64,
    /// Read and not yet delivered or dead-lettered.
    outstanding: BTreeSet<u64>,
    lanes: HashMap<String, Lane>,
    /// Lanes whose head can go now.
    ready: VecDeque<String>,
    /// Lanes waiting to retry their head.
    timers: BinaryHeap<Reverse<(Instant, String)>>,
    in_flight: usize,
    /// Events whose dead letter has been stored (by a task of its own, so that many are stored at once, in
    /// one commit of the store's writer, instead of the worker waiting for each).
    letters: (mpsc::UnboundedSender<u64>, mpsc::UnboundedReceiver<u64>),
}

/// How an attempt of a lane's head ended.
struct Done {
    lane: String,
    outcome: Outcome,
}

impl Lanes {
    async fn run(mut self) {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        let mut last_save = Instant::now();
        // Something may have been recorded since the last read: at start, after the doorbell or a poll tick,
        // and while the last read came back full. A settled delivery alone reads nothing.
        let mut unread = true;
        loop {
            // An endpoint whose surface has not registered its format yet reads nothing (its lanes may depend
            // on the format) and sends nothing; registering rings it.
            let endpoint = Arc::new(self.shared.endpoint.read().unwrap_or_else(|e| e.into_inner()).clone());
            let formatted = self.relay.format_of(&endpoint).is_ok();
            let more = if unread && formatted && self.outstanding.len() < self.relay.cfg.buffer {
                let more = self.fetch().await;
                unread = more;
                more
            } else {
                false
            };
            let sending = endpoint.enabled && formatted;
            while sending && self.in_flight < self.relay.cfg.per_endpoint.max(1) {
                let Some(lane) = self.ready.pop_front() else { break };
                let Some((head, body)) = self.lanes.get_mut(&lane).and_then(|l| {
                    l.busy = true;
                    l.queue.front().map(|p| (p.entry.clone(), p.body.clone()))
                }) else {
                    continue;
                };
                self.in_flight += 1;
                let (relay, endpoint, tx) = (self.relay.clone(), endpoint.clone(), done_tx.clone());
                tokio::spawn(async move {
                    let outcome = relay.post(&endpoint, &head, body).await;
                    let _ = tx.send(Done { lane, outcome });
                });
            }
            if self.advance_cursor(last_save.elapsed() >= Duration::from_secs(1)).await {
                last_save = Instant::now();
            }
            self.shared.stats.lock().unwrap_or_else(|e| e.into_inner()).pending = self.outstanding.len() as u64;
            let next_timer = self.timers.peek().map(|Reverse((at, _))| *at);
            let wake = match (more, next_timer) {
                (true, _) => Instant::now(),
                (false, Some(at)) => at.min(Instant::now() + Duration::from_secs(1)),
                (false, None) => Instant::now() + Duration::from_secs(1),
            };
            tokio::select! {
                _ = self.stop.cancelled() => break,
                Some(done) = done_rx.recv() => {
                    self.in_flight -= 1;
                    self.settle(done).await;
                    while let Ok(done) = done_rx.try_recv() {
                        self.in_flight -= 1;
                        self.settle(done).await;
                    }
                }
                Some(id) = self.letters.1.recv() => {
                    self.outstanding.remove(&id);
                    while let Ok(id) = self.letters.1.try_recv() {
                        self.outstanding.remove(&id);
                    }
                }
                _ = self.shared.doorbell.notified() => unread = true,
                _ = tokio::time::sleep_until(wake) => unread = true,
            }
            let now = Instant::now();
            while let Some(Reverse((at, _))) = self.timers.peek() {
                if *at > now {
                    break;
                }
                let Reverse((_, lane)) = self.timers.pop().expect("peeked");
                self.ready.push_back(lane);
            }
        }
        // Deliveries in flight are abandoned: above the cursor, they go again after a restart.
        self.advance_cursor(true).await;
    }

    /// Reads the next outbox rows into the lanes; true when there may be more right away.
    async fn fetch(&mut self) -> bool {
        let entries = match self.relay.store.outbox_after(self.fetched, FETCH).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the outbox");
                return false;
            }
        };
        let full = entries.len() == FETCH as usize;
        let endpoint = self.shared.endpoint.read().unwrap_or_else(|e| e.into_inner()).clone();
        let (filter, enabled) = (&endpoint.events, endpoint.enabled);
        let skip_through = self.shared.skip_through.load(Ordering::Acquire);
        for entry in entries {
            self.fetched = entry.id;
            // A disabled endpoint is passed by what is recorded meanwhile (the outbox does not grow for it).
            if !enabled || entry.id <= skip_through || !filter.matches(&entry.event_type) {
                continue;
            }
            self.outstanding.insert(entry.id);
            let key = self.relay.lane_of(&endpoint, &entry);
            let lane = self.lanes.entry(key.clone()).or_default();
            if lane.queue.is_empty() && !lane.busy {
                self.ready.push_back(key);
            }
            lane.queue.push_back(Pending {
                entry: Arc::new(entry),
                attempts: 0,
                body: None,
            });
        }
        full
    }

    async fn settle(&mut self, Done { lane: key, outcome }: Done) {
        let (delivered, error, body) = match outcome {
            Outcome::Skipped => (true, String::new(), None),
            Outcome::Tried { attempt, body } => {
                if !attempt.delivered {
                    tracing::warn!(endpoint = %self.shared.endpoint.read().unwrap_or_else(|e| e.into_inner()).id,
                        event = attempt.event_id, error = ?attempt.error, "webhook attempt failed");
                }
                let error = attempt.error.clone().unwrap_or_default();
                let delivered = attempt.delivered;
                self.shared.note(attempt);
                (delivered, error, body)
            }
        };
        let Some(lane) = self.lanes.get_mut(&key) else { return };
        let Some(head) = lane.queue.front_mut() else { return };
        head.attempts += 1;
        if head.body.is_none() {
            head.body = body;
        }
        let expired = now_millis() - head.entry.created_at >= self.relay.cfg.retry_period.as_millis() as i64;
        if !delivered && !expired {
            let wait = backoff(&self.relay.cfg, head.attempts);
            self.timers.push(Reverse((Instant::now() + wait, key)));
            return;
        }
        let head = lane.queue.pop_front().expect("front exists");
        lane.busy = false;
        if lane.queue.is_empty() {
            self.lanes.remove(&key);
        } else {
            self.ready.push_back(key);
        }
        if !delivered {
            let endpoint_id = self
                .shared
                .endpoint
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .id
                .clone();
            tracing::warn!(endpoint = %endpoint_id, event = head.entry.id, attempts = head.attempts,
                "webhook event dead-lettered");
            let letter = DeadLetter {
                endpoint_id,
                event: (*head.entry).clone(),
                attempts: head.attempts,
                last_error: error,
                failed_at: now_millis(),
            };
            // The cursor may pass the event only once its dead letter is stored: it stays outstanding until then.
            let (relay, shared, stop, stored) = (
                self.relay.clone(),
                self.shared.clone(),
                self.stop.clone(),
                self.letters.0.clone(),
            );
            tokio::spawn(async move {
                while let Err(e) = relay.store.put_dead_letter(letter.clone()).await {
                    tracing::warn!(error = %e, "cannot store a dead letter; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                shared.stats.lock().unwrap_or_else(|e| e.into_inner()).dead_lettered += 1;
                let _ = stored.send(letter.event.id);
            });
            return;
        }
        self.outstanding.remove(&head.entry.id);
    }

    /// Moves the cursor past every settled event; saves it when `save` (at most once a second while busy,
    /// and on stop). Returns whether it saved.
    async fn advance_cursor(&mut self, save: bool) -> bool {
        let cursor = self.outstanding.first().map(|first| first - 1).unwrap_or(self.fetched);
        self.shared.cursor.store(cursor, Ordering::Release);
        if !save || cursor == self.saved_cursor {
            return false;
        }
        let id = self
            .shared
            .endpoint
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .id
            .clone();
        match self.relay.store.put_setting(CURSOR_NAMESPACE, &id, cursor.into()).await {
            Ok(()) => {
                self.saved_cursor = cursor;
                true
            }
            Err(e) => {
                tracing::warn!(endpoint = %id, error = %e, "cannot save the webhook cursor");
                false
            }
        }
    }
}

/// Exponential backoff with ±20% jitter, so endpoints that failed together do not retry in step.
fn backoff(cfg: &RelayConfig, attempts: u32) -> Duration {
    let base = cfg
        .backoff
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(20))
        .min(cfg.max_backoff);
    base.mul_f64(rand::rng().random_range(0.8..1.2))
}

#[async_trait]
impl WebhookEndpoints for Relay {
    async fn create(&self, spec: EndpointSpec) -> DomainResult<(EndpointView, String)> {
        self.check_url(&spec.url)?;
        let events = EventFilter::parse(spec.events)?;
        let now = now_millis();
        let endpoint = Endpoint {
            id: format!("ep_{}", hex::encode(rand::random::<[u8; 8]>())),
            url: spec.url,
            secret: signature::generate_secret(),
            events,
            description: spec.description,
            enabled: spec.enabled,
            format: STANDARD_FORMAT.to_string(),
            created_at: now,
            updated_at: now,
        };
        let secret = endpoint.secret.clone();
        Ok((self.add(endpoint).await?, secret))
    }

    async fn list(&self) -> DomainResult<Vec<EndpointView>> {
        let workers = self.workers.lock().await;
        let mut out: Vec<EndpointView> = workers.values().map(|w| w.shared.view()).collect();
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    async fn get(&self, id: &str) -> DomainResult<EndpointView> {
        Ok(self.shared(id).await?.view())
    }

    async fn update(&self, id: &str, patch: EndpointPatch) -> DomainResult<EndpointView> {
        if let Some(url) = &patch.url {
            self.check_url(url)?;
        }
        let events = patch.events.map(EventFilter::parse).transpose()?;
        self.refuse_managed(id).await?;
        self.modify(id, |e| {
            if let Some(url) = patch.url {
                e.url = url;
            }
            if let Some(events) = events {
                e.events = events;
            }
            if let Some(d) = patch.description {
                e.description = d;
            }
            if let Some(enabled) = patch.enabled {
                e.enabled = enabled;
            }
        })
        .await
        .map(|shared| shared.view())
    }

    async fn rotate_secret(&self, id: &str) -> DomainResult<String> {
        let shared = self.modify(id, |e| e.secret = signature::generate_secret()).await?;
        let secret = shared.endpoint.read().unwrap_or_else(|e| e.into_inner()).secret.clone();
        Ok(secret)
    }

    async fn delete(&self, id: &str) -> DomainResult<()> {
        self.refuse_managed(id).await?;
        self.remove(id).await
    }

    async fn attempts(&self, id: &str) -> DomainResult<Vec<Attempt>> {
        let shared = self.shared(id).await?;
        let s = shared.stats.lock().unwrap_or_else(|e| e.into_inner());
        Ok(s.recent.iter().cloned().collect())
    }

    async fn dead_letters(&self, id: &str, after: u64, limit: u32) -> DomainResult<Vec<DeadLetter>> {
        self.shared(id).await?;
        let mut letters = self.store.list_dead_letters(id, after, limit).await?;
        // Shown as the native envelope, whatever the endpoint's format.
        for l in &mut letters {
            l.event.payload = standard::render_stored(&l.event.payload).to_vec();
        }
        Ok(letters)
    }

    async fn redeliver(&self, id: &str, event_id: u64) -> DomainResult<Attempt> {
        let shared = self.shared(id).await?;
        let mut letter = self
            .store
            .get_dead_letter(id, event_id)
            .await?
            .ok_or_else(|| DomainError::not_found("dead letter", event_id))?;
        let endpoint = shared.endpoint.read().unwrap_or_else(|e| e.into_inner()).clone();
        let attempt = match self.post(&endpoint, &letter.event, None).await {
            Outcome::Tried { attempt, .. } => attempt,
            // The format no longer has such an event: nothing to send, the letter is settled.
            Outcome::Skipped => Attempt {
                event_id,
                event_type: letter.event.event_type.clone(),
                at: now_millis(),
                duration_ms: 0,
                status: None,
                error: None,
                delivered: true,
            },
        };
        shared.note(attempt.clone());
        if attempt.delivered {
            self.store.delete_dead_letters(id, Some(event_id)).await?;
            let mut s = shared.stats.lock().unwrap_or_else(|e| e.into_inner());
            s.dead_lettered = s.dead_lettered.saturating_sub(1);
        } else {
            letter.attempts += 1;
            letter.last_error = attempt.error.clone().unwrap_or_default();
            letter.failed_at = now_millis();
            self.store.put_dead_letter(letter).await?;
        }
        Ok(attempt)
    }

    fn register_format(&self, format: Arc<dyn WebhookFormat>) {
        let name = format.name();
        self.formats
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), format);
        // Its endpoint may be waiting for it.
        if let Ok(workers) = self.workers.try_lock() {
            for w in workers.values() {
                w.shared.doorbell.notify_one();
            }
        }
    }

    async fn put_managed(&self, m: ManagedEndpoint) -> DomainResult<()> {
        // Without a URL of its own, the format names each event's (checked at every connection).
        if !m.url.is_empty() {
            self.check_url(&m.url)?;
        }
        let events = EventFilter::parse(m.events)?;
        let exists = self.workers.lock().await.contains_key(m.format);
        if exists {
            self.modify(m.format, |e| {
                e.url = m.url;
                e.events = events;
                e.enabled = m.enabled;
            })
            .await?;
            return Ok(());
        }
        let now = now_millis();
        let endpoint = Endpoint {
            id: m.format.to_string(),
            url: m.url,
            secret: signature::generate_secret(),
            events,
            description: format!("kept by the {} webhook settings", m.format),
            enabled: m.enabled,
            format: m.format.to_string(),
            created_at: now,
            updated_at: now,
        };
        self.add(endpoint).await?;
        Ok(())
    }

    async fn remove_managed(&self, format: &str) -> DomainResult<()> {
        match self.remove(format).await {
            Err(DomainError::NotFound { .. }) => Ok(()),
            other => other,
        }
    }
}

impl Relay {
    async fn refuse_managed(&self, id: &str) -> DomainResult<()> {
        let shared = self.shared(id).await?;
        let e = shared.endpoint.read().unwrap_or_else(|e| e.into_inner());
        if e.is_managed() {
            return Err(DomainError::Forbidden(
                format!("endpoint {id} is kept by the {} surface's webhook settings", e.format).into(),
            ));
        }
        Ok(())
    }

    /// Stores a new endpoint and starts its worker, from the newest recorded event on.
    async fn add(&self, endpoint: Endpoint) -> DomainResult<EndpointView> {
        let mut workers = self.workers.lock().await;
        if workers.contains_key(&endpoint.id) {
            return Err(DomainError::AlreadyExists {
                entity: "webhook endpoint",
                id: endpoint.id,
            });
        }
        let cursor = self.store.outbox_head().await?;
        self.store
            .put_setting(CURSOR_NAMESPACE, &endpoint.id, cursor.into())
            .await?;
        self.store
            .put_setting(ENDPOINT_NAMESPACE, &endpoint.id, to_json(&endpoint)?)
            .await?;
        let id = endpoint.id.clone();
        let relay = self.self_arc()?;
        workers.insert(id.clone(), relay.spawn(endpoint, cursor));
        self.refresh_interest(&workers);
        Ok(workers[&id].shared.view())
    }

    /// Stops an endpoint's worker and forgets it, its cursor and its dead letters.
    async fn remove(&self, id: &str) -> DomainResult<()> {
        let mut workers = self.workers.lock().await;
        let w = workers
            .remove(id)
            .ok_or_else(|| DomainError::not_found("webhook endpoint", id))?;
        self.refresh_interest(&workers);
        self.stop_worker(w).await;
        self.store.delete_setting(ENDPOINT_NAMESPACE, id).await?;
        self.store.delete_setting(CURSOR_NAMESPACE, id).await?;
        self.store.delete_dead_letters(id, None).await?;
        Ok(())
    }

    /// Changes an endpoint's settings: stored first, then seen by its worker (woken, in case it was
    /// enabled) and by the recorder's interest.
    async fn modify(&self, id: &str, change: impl FnOnce(&mut Endpoint)) -> DomainResult<Arc<Shared>> {
        let workers = self.workers.lock().await;
        let w = workers
            .get(id)
            .ok_or_else(|| DomainError::not_found("webhook endpoint", id))?;
        let mut updated = w.shared.endpoint.read().unwrap_or_else(|e| e.into_inner()).clone();
        let was_enabled = updated.enabled;
        change(&mut updated);
        updated.updated_at = now_millis();
        if updated.enabled && !was_enabled {
            // What was recorded while it was disabled stays undelivered, however far the worker has read.
            let head = self.store.outbox_head().await?;
            w.shared.skip_through.store(head, Ordering::Release);
        }
        self.store
            .put_setting(ENDPOINT_NAMESPACE, id, to_json(&updated)?)
            .await?;
        *w.shared.endpoint.write().unwrap_or_else(|e| e.into_inner()) = updated;
        self.refresh_interest(&workers);
        w.shared.doorbell.notify_one();
        Ok(w.shared.clone())
    }

    fn self_arc(&self) -> DomainResult<Arc<Relay>> {
        self.me
            .upgrade()
            .ok_or_else(|| DomainError::Unavailable("the webhook relay has stopped".into()))
    }
}

fn to_json(e: &Endpoint) -> DomainResult<serde_json::Value> {
    serde_json::to_value(e).map_err(|e| DomainError::Internal(format!("endpoint: {e}")))
}
