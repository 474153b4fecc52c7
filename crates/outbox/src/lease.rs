//! One node relays an endpoint at a time: an endpoint's worker delivers only while it holds the endpoint's
//! lease in the store, renews it as it goes, and stops when it loses it; another node's worker takes over
//! once the lease expires (its holder died) or is released (its endpoint stopped there), from the cursor
//! the last holder saved. Deliveries stay at least once: what the last holder sent above its saved cursor
//! is sent again.

use std::time::Duration;

use confab_domain::now_millis;
use confab_domain::ports::DynStore;
use tokio_util::sync::CancellationToken;

pub(crate) struct EndpointLease {
    store: DynStore,
    name: String,
    holder: String,
    ttl: Duration,
}

impl EndpointLease {
    pub fn new(store: DynStore, endpoint: &str, holder: &str, ttl: Duration) -> Self {
        EndpointLease {
            store,
            name: format!("webhooks:{endpoint}"),
            holder: holder.to_string(),
            ttl: ttl.max(Duration::from_millis(300)),
        }
    }

    /// How often the holder renews: a third of the lease, so two renewals can fail before it expires.
    pub fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    /// Takes or renews the lease; false when another node holds it or the store cannot say.
    pub async fn renew(&self) -> bool {
        let now = now_millis();
        let until = now.saturating_add(i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX));
        match self.store.acquire_lease(&self.name, &self.holder, now, until).await {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(lease = %self.name, error = %e, "cannot renew the webhook lease");
                false
            }
        }
    }

    /// Waits until this node holds the lease (true), or `stop` (false).
    pub async fn acquire(&self, stop: &CancellationToken) -> bool {
        loop {
            if self.renew().await {
                return true;
            }
            tokio::select! {
                _ = stop.cancelled() => return false,
                _ = tokio::time::sleep(self.renew_every()) => {}
            }
        }
    }

    /// Lets another node take over at once (an endpoint stopped or changed here).
    pub async fn release(&self) {
        if let Err(e) = self.store.release_lease(&self.name, &self.holder).await {
            tracing::warn!(lease = %self.name, error = %e, "cannot release the webhook lease");
        }
    }
}
