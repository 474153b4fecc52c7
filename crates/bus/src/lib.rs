//! The in-process event bus: every subscriber gets every event, in publish order, through its own bounded
//! queue. For a durable event (a committed change), a full queue makes `publish` wait (backpressure reaches
//! the store's writer and so the senders); nothing is dropped. An ephemeral event (typing, presence, reply
//! deltas: [`Event::is_ephemeral`]) never waits: it is queued only while more than half the queue is free, and
//! dropped otherwise, so a flood of them can neither stall the writer nor take the room durable events need.
//! A broker-backed bus for several nodes implements the same `EventBus` port around a `LocalBus`: it hands
//! its own node's events to [`EventBus::publish`] (origin [`Origin::Local`]) and the other nodes' events to
//! [`LocalBus::publish_from`] with [`Origin::Remote`], and each subscriber's interest sees the origin.

use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use confab_domain::Event;
use confab_domain::ports::{EventBus, EventStream, Origin, Subscription};
use tokio::sync::mpsc;

/// One subscription: its interest and one queue per partition.
struct Subscriber {
    interest: fn(&Event, Origin) -> bool,
    queues: Vec<mpsc::Sender<Event>>,
}

impl Subscriber {
    fn is_closed(&self) -> bool {
        self.queues.iter().all(|q| q.is_closed())
    }
}

pub struct LocalBus {
    /// Copied on subscribe, shared by publishers: a publish takes the read lock only to clone the `Arc`.
    subscribers: RwLock<Arc<Vec<Subscriber>>>,
    capacity: usize,
    /// Free slots a queue keeps for durable events: an ephemeral event is dropped rather than take them.
    reserve: usize,
}

impl LocalBus {
    /// `capacity` bounds each subscriber's queue (each partition's), in events.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        LocalBus {
            subscribers: RwLock::new(Arc::new(Vec::new())),
            capacity,
            reserve: capacity / 2,
        }
    }

    fn subscribers(&self) -> Arc<Vec<Subscriber>> {
        self.subscribers.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Publishes in order to every subscriber whose interest takes each event from `origin`. Durable events wait
    /// for room in a full queue; ephemeral ones are dropped under pressure (see the crate documentation).
    /// [`EventBus::publish`] is this with [`Origin::Local`].
    pub async fn publish_from(&self, origin: Origin, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        // No lock is held across the awaits below; a closed subscriber is pruned on the next subscribe.
        let subs = self.subscribers();
        let mut dropped = 0u64;
        for ev in events {
            let ephemeral = ev.is_ephemeral();
            for sub in subs.iter() {
                if !(sub.interest)(&ev, origin) {
                    continue;
                }
                let q = &sub.queues[Subscription::partition_of(&ev, sub.queues.len())];
                if ephemeral {
                    // Never waits: a consumer that fell behind loses typing and deltas, not its durable events.
                    if q.capacity() <= self.reserve
                        || matches!(q.try_send(ev.clone()), Err(mpsc::error::TrySendError::Full(_)))
                    {
                        dropped += 1;
                    }
                    continue;
                }
                // Waiting here is the backpressure path: a full queue slows the publisher, nothing is dropped.
                let _ = q.send(ev.clone()).await;
            }
        }
        if dropped > 0 {
            metrics::counter!("confab_bus_ephemeral_dropped_total").increment(dropped);
        }
    }
}

impl Default for LocalBus {
    fn default() -> Self {
        LocalBus::new(65_536)
    }
}

#[async_trait]
impl EventBus for LocalBus {
    async fn publish(&self, events: Vec<Event>) {
        self.publish_from(Origin::Local, events).await;
    }

    fn subscribe(&self) -> Box<dyn EventStream> {
        self.subscribe_with(Subscription::ALL).pop().expect("one partition")
    }

    fn subscribe_with(&self, sub: Subscription) -> Vec<Box<dyn EventStream>> {
        let mut queues = Vec::new();
        let mut streams: Vec<Box<dyn EventStream>> = Vec::new();
        for _ in 0..sub.partitions.max(1) {
            let (tx, rx) = mpsc::channel(self.capacity);
            queues.push(tx);
            streams.push(Box::new(LocalStream { rx }));
        }
        let mut guard = self.subscribers.write().unwrap_or_else(|e| e.into_inner());
        let mut next: Vec<Subscriber> = guard
            .iter()
            .filter(|s| !s.is_closed())
            .map(|s| Subscriber {
                interest: s.interest,
                queues: s.queues.clone(),
            })
            .collect();
        next.push(Subscriber {
            interest: sub.interest,
            queues,
        });
        *guard = Arc::new(next);
        streams
    }
}

struct LocalStream {
    rx: mpsc::Receiver<Event>,
}

#[async_trait]
impl EventStream for LocalStream {
    async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use confab_domain::{ChannelId, ChannelSeq, UserId};

    /// A durable event of channel `channel` by user `u{n}`.
    fn read(channel: &str, n: usize) -> Event {
        Event::ReadUpTo {
            channel_id: ChannelId::parse(channel).unwrap(),
            user_id: UserId::parse(&format!("u{n}")).unwrap(),
            seq: ChannelSeq(n as u64),
        }
    }

    fn durable(n: usize) -> Event {
        read("c", n)
    }

    fn typing(n: usize) -> Event {
        Event::Typing {
            channel_id: ChannelId::parse("c").unwrap(),
            user_id: UserId::parse(&format!("u{n}")).unwrap(),
            active: true,
        }
    }

    fn user_of(e: &Event) -> String {
        match e {
            Event::Typing { user_id, .. } | Event::ReadUpTo { user_id, .. } => user_id.to_string(),
            _ => unreachable!(),
        }
    }

    #[tokio::test]
    async fn every_subscriber_gets_every_event_in_order() {
        let bus = LocalBus::new(4);
        let mut a = bus.subscribe();
        let mut b = bus.subscribe();
        let consumer = tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..10 {
                seen.push(user_of(&a.next().await.unwrap()));
            }
            seen
        });
        let consumer_b = tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..10 {
                seen.push(user_of(&b.next().await.unwrap()));
            }
            seen
        });
        // More events than the queue holds: publish must wait, not drop.
        bus.publish((0..10).map(durable).collect()).await;
        let want: Vec<String> = (0..10).map(|n| format!("u{n}")).collect();
        assert_eq!(consumer.await.unwrap(), want);
        assert_eq!(consumer_b.await.unwrap(), want);
    }

    #[tokio::test]
    async fn ephemeral_events_never_wait_and_leave_room_for_durable_ones() {
        let bus = LocalBus::new(8);
        let mut sub = bus.subscribe();
        // Nobody reads: a flood of typing returns at once, keeping half the queue free.
        bus.publish((0..100).map(typing).collect()).await;
        // Durable events still fit without waiting for the reader.
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            bus.publish((0..4).map(durable).collect()),
        )
        .await
        .expect("durable events waited behind ephemeral ones");
        let mut seen = Vec::new();
        for _ in 0..8 {
            let ev = sub.next().await.unwrap();
            seen.push((ev.is_ephemeral(), user_of(&ev)));
        }
        let want: Vec<(bool, String)> = (0..4)
            .map(|n| (true, format!("u{n}")))
            .chain((0..4).map(|n| (false, format!("u{n}"))))
            .collect();
        assert_eq!(
            seen, want,
            "the first typing events, then every durable event, in order"
        );
        drop(bus);
        assert!(sub.next().await.is_none(), "the rest of the flood was dropped");
    }

    #[tokio::test]
    async fn dropped_subscribers_do_not_block_publishers() {
        let bus = LocalBus::new(1);
        let gone = bus.subscribe();
        let mut live = bus.subscribe();
        drop(gone);
        let reader = tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..5 {
                seen.push(user_of(&live.next().await.unwrap()));
            }
            (seen, live)
        });
        // More events than a queue holds: the dropped subscriber's full queue must not make publish wait.
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            bus.publish((0..5).map(durable).collect()),
        )
        .await
        .expect("publish waited on a dropped subscriber");
        let (seen, _live) = tokio::time::timeout(std::time::Duration::from_secs(5), reader)
            .await
            .expect("the live subscriber got every event")
            .unwrap();
        assert_eq!(seen, (0..5).map(|n| format!("u{n}")).collect::<Vec<_>>());
        // The next subscribe prunes the dropped one: the live one and the new one are left.
        let _new = bus.subscribe();
        assert_eq!(bus.subscribers().len(), 2);
    }

    #[tokio::test]
    async fn partitions_keep_each_channel_in_one_ordered_stream_and_filter_by_interest() {
        let bus = LocalBus::new(64);
        let mut parts = bus.subscribe_with(Subscription {
            interest: |e, _| !matches!(e, Event::UserDeleted(_)),
            partitions: 4,
        });
        let channels = ["a", "b", "c", "d", "e", "f", "g", "h"];
        let mut events: Vec<Event> = Vec::new();
        for n in 0..5 {
            for c in channels {
                events.push(read(c, n));
            }
        }
        events.push(Event::UserDeleted(UserId::parse("gone").unwrap()));
        bus.publish(events).await;
        drop(bus);
        let mut seen: std::collections::HashMap<String, (usize, Vec<String>)> = Default::default();
        for (i, p) in parts.iter_mut().enumerate() {
            while let Some(ev) = p.next().await {
                let Event::ReadUpTo {
                    channel_id, user_id, ..
                } = ev
                else {
                    panic!("an event outside the interest was delivered");
                };
                let entry = seen.entry(channel_id.to_string()).or_insert((i, Vec::new()));
                assert_eq!(entry.0, i, "a channel's events went to two partitions");
                entry.1.push(user_id.to_string());
            }
        }
        assert_eq!(seen.len(), channels.len());
        for (_, users) in seen.values() {
            assert_eq!(users, &["u0", "u1", "u2", "u3", "u4"]);
        }
        let used: std::collections::HashSet<usize> = seen.values().map(|v| v.0).collect();
        assert!(used.len() > 1, "eight channels all landed in one partition");
    }

    #[tokio::test]
    async fn interest_sees_the_origin() {
        let bus = LocalBus::new(64);
        let mut local_only = bus
            .subscribe_with(Subscription {
                interest: |_, origin| origin == Origin::Local,
                partitions: 1,
            })
            .pop()
            .unwrap();
        let mut every = bus.subscribe();
        bus.publish_from(Origin::Remote, vec![durable(1)]).await;
        bus.publish(vec![durable(2)]).await;
        bus.publish_from(Origin::Remote, vec![Event::Resync]).await;
        drop(bus);
        assert_eq!(user_of(&local_only.next().await.unwrap()), "u2");
        assert!(
            local_only.next().await.is_none(),
            "a remote event reached a local-only subscriber"
        );
        assert_eq!(user_of(&every.next().await.unwrap()), "u1");
        assert_eq!(user_of(&every.next().await.unwrap()), "u2");
        assert!(matches!(every.next().await, Some(Event::Resync)));
        assert!(every.next().await.is_none());
    }
}
