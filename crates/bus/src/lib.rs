//! The in-process event bus: every subscriber gets every event, in publish order, through its own bounded
//! queue. A full queue makes `publish` wait (backpressure reaches the store's writer and so the senders);
//! nothing is dropped. A broker-backed bus for several nodes implements the same `EventBus` port.

use std::sync::Mutex;

use async_trait::async_trait;
use confab_domain::Event;
use confab_domain::ports::{EventBus, EventStream};
use tokio::sync::mpsc;

pub struct LocalBus {
    subscribers: Mutex<Vec<mpsc::Sender<Event>>>,
    capacity: usize,
}

impl LocalBus {
    /// `capacity` bounds each subscriber's queue, in events.
    pub fn new(capacity: usize) -> Self {
        LocalBus {
            subscribers: Mutex::new(Vec::new()),
            capacity: capacity.max(1),
        }
    }

    fn senders(&self) -> Vec<mpsc::Sender<Event>> {
        let mut subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subs.retain(|s| !s.is_closed());
        subs.clone()
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
        if events.is_empty() {
            return;
        }
        // Clone the sender list so no lock is held across the awaits below.
        let senders = self.senders();
        let last = senders.len().saturating_sub(1);
        for (i, tx) in senders.iter().enumerate() {
            if i == last {
                for ev in events {
                    let _ = tx.send(ev).await;
                }
                break;
            }
            for ev in &events {
                // A closed subscriber is pruned on the next publish.
                let _ = tx.send(ev.clone()).await;
            }
        }
    }

    fn subscribe(&self) -> Box<dyn EventStream> {
        let (tx, rx) = mpsc::channel(self.capacity);
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner()).push(tx);
        Box::new(LocalStream { rx })
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
    use confab_domain::{ChannelId, UserId};

    fn typing(n: usize) -> Event {
        Event::Typing {
            channel_id: ChannelId::parse("c").unwrap(),
            user_id: UserId::parse(&format!("u{n}")).unwrap(),
            active: true,
        }
    }

    fn user_of(e: &Event) -> String {
        match e {
            Event::Typing { user_id, .. } => user_id.to_string(),
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
        bus.publish((0..10).map(typing).collect()).await;
        let want: Vec<String> = (0..10).map(|n| format!("u{n}")).collect();
        assert_eq!(consumer.await.unwrap(), want);
        assert_eq!(consumer_b.await.unwrap(), want);
    }

    #[tokio::test]
    async fn dropped_subscribers_do_not_block_publishers() {
        let bus = LocalBus::new(1);
        let sub = bus.subscribe();
        drop(sub);
        bus.publish((0..5).map(typing).collect()).await;
    }
}
