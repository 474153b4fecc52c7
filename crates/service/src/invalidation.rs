//! What nodes share beyond the store's data: caches that follow changes made through any node (a
//! revocation, a blocked or deleted account on another node evicts the account's cached session tokens
//! here as soon as the event arrives; the WebSocket sessions re-check their own credential on the same
//! events, in the gateway; moderation rules and providers changed through another node's admin API are
//! reloaded from the store when announced), and claims that one node at most may win (a request seen
//! once).

use std::sync::Arc;

use confab_domain::ports::Subscription;
use confab_domain::settings::{SettingsChange, SettingsWatch};
use confab_domain::{DomainResult, Event, Millis, now_millis};

use crate::Confab;
use crate::bots::PROVIDERS_NAMESPACE;
use crate::moderation::RULES_NAMESPACE;

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
        let rules = SettingsWatch::new(&*self.bus, RULES_NAMESPACE);
        let providers = SettingsWatch::new(&*self.bus, PROVIDERS_NAMESPACE);
        runtime.spawn(follow_settings(
            Arc::downgrade(self),
            rules,
            |service, change| async move {
                match change {
                    SettingsChange::Key(key) => service.reload_moderation_rules(&key).await,
                    SettingsChange::All => service.load_moderation_rules().await,
                }
            },
        ));
        runtime.spawn(follow_settings(
            Arc::downgrade(self),
            providers,
            |service, change| async move {
                match change {
                    SettingsChange::Key(name) => service.reload_providers(Some(&name)).await,
                    SettingsChange::All => service.reload_providers(None).await,
                }
            },
        ));
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

/// Applies each announced change of a namespace until the bus or the service ends. A reload that fails
/// (the store unreachable) is retried as a reload of everything once the store answers again, so a change
/// is never left behind.
async fn follow_settings<F, Fut>(service: std::sync::Weak<Confab>, mut watch: SettingsWatch, apply: F)
where
    F: Fn(Arc<Confab>, SettingsChange) -> Fut,
    Fut: std::future::Future<Output = DomainResult<()>>,
{
    while let Some(mut change) = watch.next().await {
        loop {
            let Some(service) = service.upgrade() else { return };
            match apply(service, change.clone()).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, ?change, "cannot reload changed settings; retrying");
                    change = SettingsChange::All;
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
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
