//! How the nodes sharing one store keep their copies of settings current: the part of the server that
//! changes a setting announces it ([`announce_setting`]) once the store committed it, and the same part on
//! every other node follows the announcements of its namespace ([`SettingsWatch`]) and reloads from the store.
//! The store stays the source of truth; an announcement only says where to look.

use std::sync::Arc;

use crate::Event;
use crate::ports::{EventBus, EventStream, Origin, Subscription};

/// Tells the other nodes that `key` of `namespace` changed (written or deleted). Call it after the store
/// returned: a node that reloads on it must find the change.
pub async fn announce_setting(bus: &dyn EventBus, namespace: &str, key: &str) {
    bus.publish(vec![Event::SettingsChanged {
        namespace: Arc::from(namespace),
        key: Arc::from(key),
    }])
    .await;
}

/// What a holder of a copy must reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingsChange {
    /// Another node changed this key.
    Key(Arc<str>),
    /// Announcements may have been lost (the broker connection dropped and came back): reload everything.
    All,
}

/// The changes other nodes make to one namespace's settings. This node's own changes are not in it: the
/// part that made them updated its copy already.
pub struct SettingsWatch {
    events: Box<dyn EventStream>,
    namespace: &'static str,
}

impl SettingsWatch {
    pub fn new(bus: &dyn EventBus, namespace: &'static str) -> SettingsWatch {
        let events = bus
            .subscribe_with(Subscription {
                interest: |e, origin| match e {
                    Event::SettingsChanged { .. } => origin == Origin::Remote,
                    Event::Resync => true,
                    _ => false,
                },
                partitions: 1,
            })
            .pop()
            .expect("one partition");
        SettingsWatch { events, namespace }
    }

    /// The next change to reload, or `None` when the bus has shut down.
    pub async fn next(&mut self) -> Option<SettingsChange> {
        loop {
            match self.events.next().await? {
                Event::SettingsChanged { namespace, key } if &*namespace == self.namespace => {
                    return Some(SettingsChange::Key(key));
                }
                Event::Resync => return Some(SettingsChange::All),
                _ => {}
            }
        }
    }
}
