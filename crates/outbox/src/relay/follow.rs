//! Every node's endpoints follow the store: when another node's admin API (or a surface's settings)
//! creates, changes or deletes an endpoint, this node starts, updates or stops its worker. So the events
//! committed here are recorded for every endpoint, and any node can take over an endpoint's lease.

use confab_domain::ports::Origin;
use confab_domain::settings::{SettingsChange, SettingsWatch};
use futures_util::FutureExt;

use super::*;

/// The least time between two announcements of this node's outbox rows: the most a relay on another node
/// waits past a commit for its webhooks, beside its own delivery.
const ANNOUNCE_SPACING: Duration = Duration::from_millis(5);

impl Relay {
    /// Applies the endpoint changes other nodes announce, until shutdown. A lost announcement is caught up
    /// by the next prune, which reloads every endpoint.
    pub(super) fn follow_other_nodes(self: &Arc<Self>) {
        let mut watch = SettingsWatch::new(&*self.bus, ENDPOINT_NAMESPACE);
        let weak = Arc::downgrade(self);
        let stop = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let change = tokio::select! {
                    _ = stop.cancelled() => return,
                    change = watch.next() => match change {
                        Some(change) => change,
                        None => return,
                    },
                };
                let Some(relay) = weak.upgrade() else { return };
                let done = match change {
                    SettingsChange::Key(id) => relay.reload_endpoint(&id).await,
                    SettingsChange::All => relay.reload_endpoints().await,
                };
                if let Err(e) = done {
                    tracing::warn!(error = %e, "cannot reload the webhook endpoints; the next prune will");
                }
            }
        });
    }

    /// On a node among several: tells the other nodes' relays when this node's commits may have added rows
    /// to the outbox ([`Event::OutboxAppended`]), at most one announcement per [`ANNOUNCE_SPACING`] however
    /// many commits, and none while no endpoint exists.
    pub(super) fn announce_own_rows(self: &Arc<Self>) {
        if !self.bus.follows_users() {
            return; // a single node, or a bus that takes every event: the events themselves ring
        }
        let Some(mut commits) = self
            .bus
            .subscribe_with(Subscription {
                interest: |e, origin| origin == Origin::Local && rings_doorbell(e),
                partitions: 1,
            })
            .pop()
        else {
            return;
        };
        let weak = Arc::downgrade(self);
        let stop = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    commit = commits.next() => if commit.is_none() { return },
                }
                while let Some(Some(_)) = commits.next().now_or_never() {}
                let Some(relay) = weak.upgrade() else { return };
                let endpoints = relay.workers.try_lock().map_or(true, |w| !w.is_empty());
                if endpoints {
                    relay.bus.publish(vec![Event::OutboxAppended]).await;
                }
                drop(relay);
                tokio::time::sleep(ANNOUNCE_SPACING).await;
            }
        });
    }

    /// Brings one endpoint's worker in line with the store. Read under the workers' lock, which this node's
    /// own changes hold while they write the store: what is read is never older than what the workers hold.
    async fn reload_endpoint(&self, id: &str) -> DomainResult<()> {
        let mut workers = self.workers.lock().await;
        let stored = self.store.get_setting(ENDPOINT_NAMESPACE, id).await?;
        self.apply_stored(&mut workers, id, stored).await?;
        self.refresh_interest(&workers);
        Ok(())
    }

    /// Brings every worker in line with the endpoints the store holds, read under the workers' lock (an
    /// endpoint this node adds or deletes meanwhile is never taken for one deleted or still there).
    pub(super) async fn reload_endpoints(&self) -> DomainResult<()> {
        let mut workers = self.workers.lock().await;
        let stored = self.store.list_settings(ENDPOINT_NAMESPACE).await?;
        let gone: Vec<String> = workers
            .keys()
            .filter(|id| !stored.iter().any(|(s, _)| s == *id))
            .cloned()
            .collect();
        for id in gone {
            self.apply_stored(&mut workers, &id, None).await?;
        }
        for (id, value) in stored {
            self.apply_stored(&mut workers, &id, Some(value)).await?;
        }
        self.refresh_interest(&workers);
        Ok(())
    }

    /// Starts, updates or stops the worker of `id` as its stored value says. The node that deleted an
    /// endpoint removed its cursor and dead letters; this one only stops relaying it.
    async fn apply_stored(
        &self,
        workers: &mut HashMap<String, Worker>,
        id: &str,
        stored: Option<serde_json::Value>,
    ) -> DomainResult<()> {
        let endpoint = match stored.map(serde_json::from_value::<Endpoint>) {
            None => {
                if let Some(w) = workers.remove(id) {
                    self.stop_worker(w).await;
                }
                return Ok(());
            }
            Some(Err(e)) => {
                tracing::error!(endpoint = %id, error = %e, "unreadable webhook endpoint, skipped");
                return Ok(());
            }
            Some(Ok(endpoint)) => endpoint,
        };
        match workers.get(id) {
            Some(w) => {
                *w.shared.endpoint.write().unwrap_or_else(|e| e.into_inner()) = endpoint;
                // In case it was enabled.
                w.shared.doorbell.notify_one();
            }
            None => {
                let cursor = match self.store.get_setting(CURSOR_NAMESPACE, id).await? {
                    Some(v) => v.as_u64().unwrap_or(0),
                    None => self.store.outbox_head().await?,
                };
                let relay = self.self_arc()?;
                workers.insert(id.to_string(), relay.spawn(endpoint, cursor));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use confab_bus::LocalBus;
    use confab_domain::ports::{DynBus, DynStore};
    use confab_service::webhooks::{EndpointSpec, WebhookEndpoints};
    use confab_store_sqlite::{SqliteConfig, SqliteStore};
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::RelayConfig;

    /// A reload racing this node's own additions and deletions never stops an endpoint just added nor
    /// brings back one just deleted (it reads the store under the lock those changes hold).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reloads_racing_local_changes_keep_the_workers_as_stored() {
        let dir = tempfile::tempdir().unwrap();
        let bus: DynBus = Arc::new(LocalBus::default());
        let store: DynStore =
            Arc::new(SqliteStore::open(SqliteConfig::new(dir.path().join("confab.db")), bus.clone()).unwrap());
        let stop = CancellationToken::new();
        let relay = Relay::start(
            store,
            &bus,
            EgressPolicy::default(),
            RelayConfig::default(),
            stop.clone(),
        )
        .await
        .unwrap();
        let spec = || EndpointSpec {
            url: "https://hooks.example.com/in".into(),
            events: vec!["message.*".into()],
            description: String::new(),
            enabled: true,
        };
        let mut kept = Vec::new();
        for i in 0..30 {
            let reloads = {
                let relay = relay.clone();
                tokio::spawn(async move {
                    for _ in 0..3 {
                        relay.reload_endpoints().await.unwrap();
                    }
                })
            };
            let (view, _) = relay.create(spec()).await.unwrap();
            if i % 3 == 0 {
                relay.delete(&view.id).await.unwrap();
            } else {
                kept.push(view.id);
            }
            reloads.await.unwrap();
        }
        relay.reload_endpoints().await.unwrap();
        let mut held: Vec<String> = relay.list().await.unwrap().into_iter().map(|e| e.id).collect();
        held.sort();
        kept.sort();
        assert_eq!(held, kept);
        stop.cancel();
    }
}
