//! The bus's two tasks: the publisher (this node's events out to NATS, in order, and resync notices) and
//! the reader (the other nodes' events in, the followed channels' subscriptions kept, the connection
//! watched, resyncs raised).

use std::collections::HashSet;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use async_nats::Subscriber;
use futures_util::Stream;

use super::*;
use crate::interest::Command;

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

/// A probe this node waits for: when it comes back through its subscription, every subscription made
/// before it is in place, so everything published after it reaches this node.
#[derive(Default)]
pub(super) struct Fence {
    nonce: u64,
    /// Told when the first fence passes (`connect` is waiting).
    ready: Option<oneshot::Sender<()>>,
    /// Raise a resync when it passes (set after a reconnect).
    resync: bool,
    /// Told when it passes (a user's first session is waiting for its channels).
    waiters: Vec<oneshot::Sender<()>>,
    /// Handed to the local bus when it passes.
    catch_ups: Vec<Event>,
}

impl Fence {
    fn absorb(&mut self, other: Fence) {
        self.ready = self.ready.take().or(other.ready);
        self.resync |= other.resync;
        self.waiters.extend(other.waiters);
        self.catch_ups.extend(other.catch_ups);
    }
}

/// One subscription among the reader's: the node's own, or a followed channel's, which ends (unsubscribed
/// at once, in order with the client's other commands) when the channel is no longer followed.
pub(super) struct Feed {
    channel: Option<ChannelId>,
    sub: Option<Subscriber>,
    /// Wakes the merged stream to drop this one once it ended.
    waker: Option<Waker>,
}

impl Feed {
    pub(super) fn fixed(sub: Subscriber) -> Feed {
        Feed {
            channel: None,
            sub: Some(sub),
            waker: None,
        }
    }

    async fn end(&mut self) {
        if let Some(mut sub) = self.sub.take()
            && let Err(e) = sub.unsubscribe().await
        {
            tracing::debug!(error = %e, "unsubscribe failed (the connection is closing)");
        }
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

impl Stream for Feed {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        let this = &mut *self;
        let Some(sub) = this.sub.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = sub.poll_next_unpin(cx);
        if polled.is_pending() && !this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            this.waker = Some(cx.waker().clone());
        }
        polled
    }
}

type Subscriptions = SelectAll<Feed>;

/// Receives the other nodes' events, keeps the subscriptions of the followed channels, and watches the
/// connection.
pub(super) struct Reader {
    pub(super) local: Arc<LocalBus>,
    pub(super) client: Client,
    pub(super) shared: Arc<Shared>,
    pub(super) node_id: Arc<str>,
    pub(super) probe_subject: String,
    pub(super) subjects: Subjects,
    /// The client's count of established connections when last looked at.
    pub(super) connects_seen: u64,
    pub(super) next_nonce: u64,
    /// Probes in flight, oldest first (they come back in that order).
    pub(super) fences: VecDeque<Fence>,
    /// The channels subscribed to.
    pub(super) followed: HashSet<ChannelId>,
}

impl Reader {
    pub(super) async fn run(mut self, mut subs: Subscriptions, ready: oneshot::Sender<()>, stop: CancellationToken) {
        self.raise_fence(Fence {
            ready: Some(ready),
            ..Fence::default()
        })
        .await;
        let mut check = tokio::time::interval(CHECK_EVERY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(READ_BATCH);
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = self.shared.signal.notified() => self.check_connection().await,
                _ = self.shared.follow.notified() => {
                    let mut events = Vec::new();
                    self.apply_pending(&mut subs, &mut events).await;
                    self.local.publish_from(Origin::Remote, events).await;
                }
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
                    self.deliver(&mut batch, &mut subs).await;
                }
            }
        }
    }

    /// Publishes a probe of this node; `fence` passes when it comes back (without blocking the reader).
    async fn raise_fence(&mut self, mut fence: Fence) {
        self.next_nonce += 1;
        fence.nonce = self.next_nonce;
        let mut headers = node_headers(&self.node_id);
        headers.insert(PROBE_HEADER, fence.nonce.to_string().as_str());
        if let Err(e) = self
            .client
            .publish_with_headers(self.probe_subject.clone(), headers, Bytes::new())
            .await
        {
            tracing::warn!(error = %e, "cannot publish this node's probe to NATS");
        }
        self.fences.push_back(fence);
    }

    /// After a reconnect, waits for the subscriptions to be back before raising a resync (probes in flight
    /// may have been lost: their waiters wait for the new one); after dropped messages, raises one at once.
    async fn check_connection(&mut self) {
        let connects = self.client.statistics().connects.load(Ordering::Relaxed);
        if connects != self.connects_seen {
            self.connects_seen = connects;
            let mut fence = Fence {
                resync: true,
                ..Fence::default()
            };
            for waiting in self.fences.drain(..) {
                fence.absorb(waiting);
            }
            self.raise_fence(fence).await;
        }
        if self.shared.slow.swap(false, Ordering::AcqRel) {
            tracing::warn!("this node fell behind and NATS messages were dropped: every session resyncs");
            self.shared.count_resync();
            self.local.publish_from(Origin::Remote, vec![Event::Resync]).await;
        }
    }

    /// Carries out what the bookkeeping decided, in order: subscriptions made and ended; waiters and
    /// catch-ups attached to a probe raised after the new subscriptions (or to the last probe in flight, or
    /// done at once when there is none).
    async fn apply_pending(&mut self, subs: &mut Subscriptions, events: &mut Vec<Event>) {
        let commands = self.shared.interest().take_pending();
        if commands.is_empty() {
            return;
        }
        let mut after = Fence::default();
        let mut subscribed = false;
        // Ended together after the loop (one pass over the subscriptions); followed again meanwhile, kept.
        let mut ending: HashSet<ChannelId> = HashSet::new();
        for command in commands {
            match command {
                Command::Follow(channel) => {
                    if ending.remove(&channel) || self.followed.contains(&channel) {
                        continue;
                    }
                    match self.client.subscribe(self.subjects.channel(&channel)).await {
                        Ok(sub) => {
                            subs.push(Feed {
                                channel: Some(channel.clone()),
                                sub: Some(sub),
                                waker: None,
                            });
                            self.followed.insert(channel);
                            subscribed = true;
                        }
                        Err(e) => tracing::warn!(channel = %channel, error = %e, "cannot subscribe to a channel"),
                    }
                }
                Command::Unfollow(channel) => {
                    if self.followed.remove(&channel) {
                        ending.insert(channel);
                    }
                }
                Command::Confirm(waiter) => after.waiters.push(waiter),
                Command::CatchUp(event) => after.catch_ups.push(event),
            }
        }
        if !ending.is_empty() {
            for feed in subs.iter_mut() {
                if feed.channel.as_ref().is_some_and(|c| ending.contains(c)) {
                    feed.end().await;
                }
            }
        }
        metrics::gauge!("confab_bus_nats_followed_channels").set(self.followed.len() as f64);
        if subscribed {
            self.raise_fence(after).await;
        } else if let Some(last) = self.fences.back_mut() {
            last.absorb(after);
        } else {
            for waiter in after.waiters {
                let _ = waiter.send(());
            }
            events.extend(after.catch_ups);
        }
    }

    /// The probes up to `nonce` came back: their fences pass.
    fn pass_fences(&mut self, nonce: u64, events: &mut Vec<Event>) {
        while self.fences.front().is_some_and(|f| f.nonce <= nonce) {
            let fence = self.fences.pop_front().expect("checked");
            if let Some(ready) = fence.ready {
                let _ = ready.send(());
            }
            for waiter in fence.waiters {
                let _ = waiter.send(());
            }
            if fence.resync {
                tracing::warn!("NATS subscription back: every session resyncs");
                self.shared.count_resync();
                events.push(Event::Resync);
                // What this node published while the connection was failing may be lost too.
                self.shared.announce.notify_one();
            }
            events.extend(fence.catch_ups);
        }
    }

    /// Hands a batch of messages to the local bus, in order, as remote events, after following the
    /// membership changes among them.
    async fn deliver(&mut self, batch: &mut Vec<Message>, subs: &mut Subscriptions) {
        let mut events = Vec::with_capacity(batch.len());
        let (mut received, mut undecodable) = (0u64, 0u64);
        for msg in batch.drain(..) {
            let headers = msg.headers.as_ref();
            let from = headers.and_then(|h| h.get(NODE_HEADER)).map(|v| v.as_str());
            let probe = headers.and_then(|h| h.get(PROBE_HEADER)).map(|v| v.as_str());
            if from == Some(&*self.node_id) {
                // This node's own message: only its probes mean something.
                if let Some(nonce) = probe.and_then(|n| n.parse::<u64>().ok()) {
                    self.pass_fences(nonce, &mut events);
                }
                continue;
            }
            if probe.is_some() {
                continue; // another node's probe
            }
            received += 1;
            match serde_json::from_slice::<Event>(&msg.payload) {
                Ok(Event::ChannelCatchUp { .. }) => {} // this node's own business only
                Ok(event) => {
                    if matches!(event, Event::Resync) {
                        tracing::warn!(from = from.unwrap_or("?"), "another node asks for a resync");
                        self.shared.count_resync();
                    }
                    let catch_up = match event.is_membership() {
                        true => self.shared.interest().membership(&event, Origin::Remote),
                        false => None,
                    };
                    events.push(event);
                    events.extend(catch_up);
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
        self.apply_pending(subs, &mut events).await;
        self.local.publish_from(Origin::Remote, events).await;
    }
}
