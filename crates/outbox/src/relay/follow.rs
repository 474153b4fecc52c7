//! Every node's endpoints follow the store: when another node's admin API (or a surface's settings)
//! creates, changes or deletes an endpoint, this node starts, updates or stops its worker. So the events
//! committed here are recorded for every endpoint, and any node can take over an endpoint's lease.

use confab_domain::settings::{SettingsChange, SettingsWatch};

use super::*;

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
                    SettingsChange::All => match relay.store.list_settings(ENDPOINT_NAMESPACE).await {
                        Ok(stored) => relay.reload_endpoints(stored).await,
                        Err(e) => Err(e),
                    },
                };
                if let Err(e) = done {
                    tracing::warn!(error = %e, "cannot reload the webhook endpoints; the next prune will");
                }
            }
        });
    }

    /// Brings one endpoint's worker in line with the store.
    async fn reload_endpoint(&self, id: &str) -> DomainResult<()> {
        let stored = self.store.get_setting(ENDPOINT_NAMESPACE, id).await?;
        let mut workers = self.workers.lock().await;
        self.apply_stored(&mut workers, id, stored).await?;
        self.refresh_interest(&workers);
        Ok(())
    }

    /// Brings every worker in line with the endpoints the store holds (all of them, by id).
    pub(super) async fn reload_endpoints(&self, stored: Vec<(String, serde_json::Value)>) -> DomainResult<()> {
        let mut workers = self.workers.lock().await;
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
