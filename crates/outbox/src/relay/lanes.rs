//! An endpoint's worker while it holds the lease: reads the outbox into lanes (one per channel and key),
//! keeps one event per lane in flight, retries with backoff, dead-letters, and moves the cursor.

use confab_domain::Millis;

use super::*;

/// An event waiting for its turn in a lane.
pub(super) struct Pending {
    pub(super) entry: Arc<OutboxEntry>,
    pub(super) attempts: u32,
    /// Rendered at the first attempt.
    pub(super) body: Option<Bytes>,
}

#[derive(Default)]
pub(super) struct Lane {
    pub(super) queue: VecDeque<Pending>,
    /// The head is being delivered, or waits for its retry time.
    pub(super) busy: bool,
}

/// One endpoint's worker: the events read ahead, in lanes by channel (one event of a lane in flight at a
/// time, so a channel's events arrive in order; lanes do not wait for each other).
pub(super) struct Lanes {
    pub(super) relay: Arc<Relay>,
    pub(super) shared: Arc<Shared>,
    pub(super) stop: CancellationToken,
    /// The newest event read from the outbox.
    pub(super) fetched: u64,
    pub(super) saved_cursor: u64,
    /// Read and not yet delivered or dead-lettered, with its commit time.
    pub(super) outstanding: BTreeMap<u64, Millis>,
    pub(super) lanes: HashMap<String, Lane>,
    /// Lanes whose head can go now.
    pub(super) ready: VecDeque<String>,
    /// Lanes waiting to retry their head.
    pub(super) timers: BinaryHeap<Reverse<(Instant, String)>>,
    pub(super) in_flight: usize,
    /// Events whose dead letter has been stored (by a task of its own, so that many are stored at once, in
    /// one commit of the store's writer, instead of the worker waiting for each).
    pub(super) letters: (mpsc::UnboundedSender<u64>, mpsc::UnboundedReceiver<u64>),
    pub(super) metrics: EndpointMetrics,
}

/// An endpoint's series, labelled with its id: endpoints are few (made by the application's administrators,
/// plus one per compatibility surface whose webhooks are configured), so the label stays bounded. Set by the
/// node relaying the endpoint (the lease holder); back to zero when it stops (lease lost, endpoint deleted).
pub(super) struct EndpointMetrics {
    /// `confab_webhook_lag_events`: outbox rows past the endpoint's cursor (the outbox head less the cursor).
    lag_events: metrics::Gauge,
    /// `confab_webhook_lag_seconds`: how long ago the oldest event read and not yet settled was committed.
    lag_seconds: metrics::Gauge,
    /// `confab_webhook_dead_letters_total`: events given up after the retry period.
    dead_letters: metrics::Counter,
}

impl EndpointMetrics {
    pub(super) fn new(endpoint: &str) -> EndpointMetrics {
        let id = endpoint.to_string();
        let m = EndpointMetrics {
            lag_events: metrics::gauge!("confab_webhook_lag_events", "endpoint" => id.clone()),
            lag_seconds: metrics::gauge!("confab_webhook_lag_seconds", "endpoint" => id.clone()),
            dead_letters: metrics::counter!("confab_webhook_dead_letters_total", "endpoint" => id),
        };
        m.dead_letters.increment(0);
        m
    }
}

impl Drop for EndpointMetrics {
    fn drop(&mut self) {
        self.lag_events.set(0.0);
        self.lag_seconds.set(0.0);
    }
}

/// How an attempt of a lane's head ended.
pub(super) struct Done {
    pub(super) lane: String,
    pub(super) outcome: Outcome,
}

impl Lanes {
    /// Delivers until `stop`, or until the lease is lost (then it leaves the cursor to the next holder).
    pub(super) async fn run(mut self, lease: &EndpointLease) {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        let mut last_save = Instant::now();
        let mut lag_reported: Option<Instant> = None;
        let mut renew = tokio::time::interval_at(Instant::now() + lease.renew_every(), lease.renew_every());
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
            if lag_reported.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                self.report_lag(!unread).await;
                lag_reported = Some(Instant::now());
            }
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
                _ = renew.tick() => if !lease.renew().await {
                    // Deliveries in flight finish on their own; the next holder repeats what is above
                    // the saved cursor.
                    return;
                },
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
        let skip_through = endpoint.skip_through;
        for entry in entries {
            self.fetched = entry.id;
            // A disabled endpoint is passed by what is recorded meanwhile (the outbox does not grow for it).
            if !enabled || entry.id <= skip_through || !filter.matches(&entry.event_type) {
                continue;
            }
            self.outstanding.insert(entry.id, entry.created_at);
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
            self.metrics.dead_letters.increment(1);
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

    /// Sets the endpoint's lag: in events, the outbox head less the cursor; in seconds, the age of the oldest
    /// event read and not yet settled. `caught_up`: the last read reached the end of the outbox, so the newest
    /// event read is the head (newer rows ring the doorbell); otherwise (reading is behind, the buffer full)
    /// the head is asked of the store, at most once a second.
    async fn report_lag(&self, caught_up: bool) {
        let head = match caught_up {
            true => self.fetched,
            false => match self.relay.store.outbox_head().await {
                Ok(head) => head,
                Err(_) => return,
            },
        };
        let cursor = self.shared.cursor.load(Ordering::Acquire);
        self.metrics.lag_events.set(head.saturating_sub(cursor) as f64);
        let oldest = self.outstanding.first_key_value().map(|(_, at)| *at);
        let age = oldest.map_or(0, |at| (now_millis() - at).max(0));
        self.metrics.lag_seconds.set(age as f64 / 1000.0);
    }

    /// Moves the cursor past every settled event; saves it when `save` (at most once a second while busy,
    /// and on stop). Returns whether it saved.
    async fn advance_cursor(&mut self, save: bool) -> bool {
        let cursor = self
            .outstanding
            .first_key_value()
            .map(|(first, _)| first - 1)
            .unwrap_or(self.fetched);
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
