//! The bus's two tasks: the publisher (this node's events out to NATS, in order, and resync notices) and
//! the reader (the other nodes' events in, the connection watched, resyncs raised).

use super::*;

/// Sends this node's events, in queue order, and the resync notices for the other nodes.
pub(super) struct Publisher {
    pub(super) client: Client,
    pub(super) shared: Arc<Shared>,
    pub(super) headers: HeaderMap,
    pub(super) all_subject: String,
}

impl Publisher {
    pub(super) async fn run(self, mut queue: mpsc::Receiver<Outbound>, stop: CancellationToken) {
        let notice = Bytes::from(serde_json::to_vec(&Event::Resync).expect("a unit variant serializes"));
        loop {
            tokio::select! {
                biased;
                _ = self.shared.announce.notified() => {
                    self.shared.losing.store(false, Ordering::Release);
                    tracing::info!("asking the other nodes to resync");
                    // A notice that fails is not announced again (that would loop): the next loss asks again.
                    if let Err(e) = self.send(self.all_subject.clone(), notice.clone()).await {
                        tracing::warn!(error = %e, "NATS refused the resync notice");
                    }
                }
                out = queue.recv() => match out {
                    Some(out) => {
                        if let Err(e) = self.send(out.subject, out.payload).await {
                            tracing::warn!(error = %e, "NATS refused an event");
                            self.shared.lost_outbound("refused by the client");
                        }
                    }
                    None => break,
                },
                // After the queue: what was queued before `close` still goes out.
                _ = stop.cancelled() => break,
            }
        }
    }

    async fn send(&self, subject: String, payload: Bytes) -> Result<(), async_nats::PublishError> {
        self.client
            .publish_with_headers(subject, self.headers.clone(), payload)
            .await?;
        self.shared.counters.published.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("confab_bus_nats_published_total").increment(1);
        Ok(())
    }
}

/// A probe this node waits for: when it comes back through the subscription, everything published after it
/// reaches this node.
pub(super) struct Fence {
    nonce: String,
    /// Told when the first fence passes (`connect` is waiting).
    ready: Option<oneshot::Sender<()>>,
    /// Raise a resync when it passes (set after a reconnect).
    resync: bool,
}

/// Receives the other nodes' events and watches the connection.
pub(super) struct Reader {
    pub(super) local: Arc<LocalBus>,
    pub(super) client: Client,
    pub(super) shared: Arc<Shared>,
    pub(super) node_id: Arc<str>,
    pub(super) probe_subject: String,
    /// The client's count of established connections when last looked at.
    pub(super) connects_seen: u64,
    pub(super) next_nonce: u64,
    pub(super) fence: Option<Fence>,
}

impl Reader {
    pub(super) async fn run(
        mut self,
        mut subs: SelectAll<Subscriber>,
        ready: oneshot::Sender<()>,
        stop: CancellationToken,
    ) {
        self.raise_fence(Some(ready), false).await;
        let mut check = tokio::time::interval(CHECK_EVERY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(READ_BATCH);
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = self.shared.signal.notified() => self.check_connection().await,
                _ = check.tick() => self.check_connection().await,
                msg = subs.next() => {
                    let Some(msg) = msg else { break };
                    batch.push(msg);
                    while batch.len() < READ_BATCH {
                        match subs.next().now_or_never() {
                            Some(Some(msg)) => batch.push(msg),
                            _ => break,
                        }
                    }
                    self.deliver(&mut batch).await;
                }
            }
        }
    }

    /// Publishes a probe of this node and waits for it (without blocking the reader).
    async fn raise_fence(&mut self, ready: Option<oneshot::Sender<()>>, resync: bool) {
        self.next_nonce += 1;
        let nonce = self.next_nonce.to_string();
        let mut headers = node_headers(&self.node_id);
        headers.insert(PROBE_HEADER, nonce.as_str());
        if let Err(e) = self
            .client
            .publish_with_headers(self.probe_subject.clone(), headers, Bytes::new())
            .await
        {
            tracing::warn!(error = %e, "cannot publish this node's probe to NATS");
        }
        self.fence = Some(Fence { nonce, ready, resync });
    }

    /// After a reconnect, waits for the subscription to be back before raising a resync; after dropped
    /// messages, raises one at once.
    async fn check_connection(&mut self) {
        let connects = self.client.statistics().connects.load(Ordering::Relaxed);
        if connects != self.connects_seen {
            self.connects_seen = connects;
            let ready = self.fence.take().and_then(|f| f.ready);
            self.raise_fence(ready, true).await;
        }
        if self.shared.slow.swap(false, Ordering::AcqRel) {
            tracing::warn!("this node fell behind and NATS messages were dropped: every session resyncs");
            self.shared.count_resync();
            self.local.publish_from(Origin::Remote, vec![Event::Resync]).await;
        }
    }

    /// Hands a batch of messages to the local bus, in order, as remote events.
    async fn deliver(&mut self, batch: &mut Vec<Message>) {
        let mut events = Vec::with_capacity(batch.len());
        let (mut received, mut undecodable) = (0u64, 0u64);
        for msg in batch.drain(..) {
            let headers = msg.headers.as_ref();
            let from = headers.and_then(|h| h.get(NODE_HEADER)).map(|v| v.as_str());
            let probe = headers.and_then(|h| h.get(PROBE_HEADER)).map(|v| v.as_str());
            if from == Some(&*self.node_id) {
                // This node's own message: only its awaited probe means something.
                if let (Some(nonce), Some(fence)) = (probe, &self.fence)
                    && nonce == fence.nonce
                {
                    let fence = self.fence.take().expect("checked");
                    if let Some(ready) = fence.ready {
                        let _ = ready.send(());
                    }
                    if fence.resync {
                        tracing::warn!("NATS subscription back: every session resyncs");
                        self.shared.count_resync();
                        events.push(Event::Resync);
                        // What this node published while the connection was failing may be lost too.
                        self.shared.announce.notify_one();
                    }
                }
                continue;
            }
            if probe.is_some() {
                continue; // another node's probe
            }
            received += 1;
            match serde_json::from_slice::<Event>(&msg.payload) {
                Ok(event) => {
                    if matches!(event, Event::Resync) {
                        tracing::warn!(from = from.unwrap_or("?"), "another node asks for a resync");
                        self.shared.count_resync();
                    }
                    events.push(event);
                }
                Err(e) => {
                    undecodable += 1;
                    tracing::warn!(
                        subject = %msg.subject,
                        from = from.unwrap_or("?"),
                        error = %e,
                        "undecodable NATS message skipped"
                    );
                }
            }
        }
        let c = &self.shared.counters;
        if received > 0 {
            c.received.fetch_add(received, Ordering::Relaxed);
            metrics::counter!("confab_bus_nats_received_total").increment(received);
        }
        if undecodable > 0 {
            c.undecodable.fetch_add(undecodable, Ordering::Relaxed);
            metrics::counter!("confab_bus_nats_undecodable_total").increment(undecodable);
        }
        self.local.publish_from(Origin::Remote, events).await;
    }
}
