//! What nodes share beyond the store's data: caches that follow changes made through any node (a
//! revocation, a blocked or deleted account on another node evicts the account's cached session tokens
//! here as soon as the event arrives; the WebSocket sessions re-check their own credential on the same
//! events, in the gateway), and claims that one node at most may win (a request seen once).

use std::sync::Arc;

use confab_domain::ports::Subscription;
use confab_domain::{DomainResult, Event, Millis, now_millis};

use crate::Confab;

impl Confab {
    /// Starts following the bus for the events that invalidate this node's caches (from any origin; this
    /// node's own changes already evicted what they changed). Ends with the bus, or when the service is
    /// dropped. Outside a runtime (a service built for a synchronous test) there is nothing to follow.
    pub(crate) fn follow_invalidations(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Some(mut events) = self
            .bus
            .subscribe_with(Subscription {
                interest: |e, _| {
                    matches!(
                        e,
                        Event::SessionsRevoked(_) | Event::UserDeleted(_) | Event::UserUpdated(_)
                    )
                },
                partitions: 1,
            })
            .pop()
        else {
            return;
        };
        let service = Arc::downgrade(self);
        runtime.spawn(async move {
            while let Some(event) = events.next().await {
                let Some(service) = service.upgrade() else { return };
                match event {
                    Event::SessionsRevoked(user) | Event::UserDeleted(user) => service.sessions.evict_user(&user),
                    Event::UserUpdated(user) if user.disabled => service.sessions.evict_user(&user.id),
                    _ => {}
                }
            }
        });
    }
}

impl Confab {
    /// True the first time `key` is claimed in `scope` among every node of the store, false when it was
    /// claimed before and the claim lasts (until `until`): a surface's replay protection (NIM's repeated
    /// requests), whichever node a repeat reaches.
    pub async fn claim_once(&self, scope: &str, key: &str, until: Millis) -> DomainResult<bool> {
        // A holder of its own: a second claim of the same key is another holder, refused while the first
        // lasts.
        let holder = format!("{:032x}", rand::random::<u128>());
        self.store
            .acquire_lease(&format!("{scope}:{key}"), &holder, now_millis(), until)
            .await
    }
}
