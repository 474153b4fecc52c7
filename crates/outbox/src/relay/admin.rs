//! The admin API's side of the relay (the service's `WebhookEndpoints` port): endpoints created, changed,
//! deleted and redelivered, each change serialised with the others and applied to its worker.

use super::*;

#[async_trait]
impl WebhookEndpoints for Relay {
    async fn create(&self, spec: EndpointSpec) -> DomainResult<(EndpointView, String)> {
        self.check_url(&spec.url)?;
        let events = EventFilter::parse(spec.events)?;
        let now = now_millis();
        let endpoint = Endpoint {
            id: format!("ep_{}", hex::encode(rand::random::<[u8; 8]>())),
            url: spec.url,
            secret: signature::generate_secret(),
            events,
            description: spec.description,
            enabled: spec.enabled,
            format: STANDARD_FORMAT.to_string(),
            created_at: now,
            updated_at: now,
            skip_through: 0,
        };
        let secret = endpoint.secret.clone();
        Ok((self.add(endpoint).await?, secret))
    }

    async fn list(&self) -> DomainResult<Vec<EndpointView>> {
        let workers = self.workers.lock().await;
        let mut out: Vec<EndpointView> = workers.values().map(|w| w.shared.view()).collect();
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    async fn get(&self, id: &str) -> DomainResult<EndpointView> {
        Ok(self.shared(id).await?.view())
    }

    async fn update(&self, id: &str, patch: EndpointPatch) -> DomainResult<EndpointView> {
        if let Some(url) = &patch.url {
            self.check_url(url)?;
        }
        let events = patch.events.map(EventFilter::parse).transpose()?;
        self.refuse_managed(id).await?;
        self.modify(id, |e| {
            if let Some(url) = patch.url {
                e.url = url;
            }
            if let Some(events) = events {
                e.events = events;
            }
            if let Some(d) = patch.description {
                e.description = d;
            }
            if let Some(enabled) = patch.enabled {
                e.enabled = enabled;
            }
        })
        .await
        .map(|shared| shared.view())
    }

    async fn rotate_secret(&self, id: &str) -> DomainResult<String> {
        let shared = self.modify(id, |e| e.secret = signature::generate_secret()).await?;
        let secret = shared.endpoint.read().unwrap_or_else(|e| e.into_inner()).secret.clone();
        Ok(secret)
    }

    async fn delete(&self, id: &str) -> DomainResult<()> {
        self.refuse_managed(id).await?;
        self.remove(id).await
    }

    async fn attempts(&self, id: &str) -> DomainResult<Vec<Attempt>> {
        let shared = self.shared(id).await?;
        let s = shared.stats.lock().unwrap_or_else(|e| e.into_inner());
        Ok(s.recent.iter().cloned().collect())
    }

    async fn dead_letters(&self, id: &str, after: u64, limit: u32) -> DomainResult<Vec<DeadLetter>> {
        self.shared(id).await?;
        let mut letters = self.store.list_dead_letters(id, after, limit).await?;
        // Shown as the native envelope, whatever the endpoint's format.
        for l in &mut letters {
            l.event.payload = standard::render_stored(&l.event.payload).to_vec();
        }
        Ok(letters)
    }

    async fn redeliver(&self, id: &str, event_id: u64) -> DomainResult<Attempt> {
        let shared = self.shared(id).await?;
        let mut letter = self
            .store
            .get_dead_letter(id, event_id)
            .await?
            .ok_or_else(|| DomainError::not_found("dead letter", event_id))?;
        let endpoint = shared.endpoint.read().unwrap_or_else(|e| e.into_inner()).clone();
        let attempt = match self.post(&endpoint, &letter.event, None).await {
            Outcome::Tried { attempt, .. } => attempt,
            // The format no longer has such an event: nothing to send, the letter is settled.
            Outcome::Skipped => Attempt {
                event_id,
                event_type: letter.event.event_type.clone(),
                at: now_millis(),
                duration_ms: 0,
                status: None,
                error: None,
                delivered: true,
            },
        };
        shared.note(attempt.clone());
        if attempt.delivered {
            self.store.delete_dead_letters(id, Some(event_id)).await?;
            let mut s = shared.stats.lock().unwrap_or_else(|e| e.into_inner());
            s.dead_lettered = s.dead_lettered.saturating_sub(1);
        } else {
            letter.attempts += 1;
            letter.last_error = attempt.error.clone().unwrap_or_default();
            letter.failed_at = now_millis();
            self.store.put_dead_letter(letter).await?;
        }
        Ok(attempt)
    }

    fn register_format(&self, format: Arc<dyn WebhookFormat>) {
        let name = format.name();
        self.formats
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), format);
        // Its endpoint may be waiting for it.
        if let Ok(workers) = self.workers.try_lock() {
            for w in workers.values() {
                w.shared.doorbell.notify_one();
            }
        }
    }

    async fn put_managed(&self, m: ManagedEndpoint) -> DomainResult<()> {
        // Without a URL of its own, the format names each event's (checked at every connection).
        if !m.url.is_empty() {
            self.check_url(&m.url)?;
        }
        let events = EventFilter::parse(m.events)?;
        let exists = self.workers.lock().await.contains_key(m.format);
        if exists {
            self.modify(m.format, |e| {
                e.url = m.url;
                e.events = events;
                e.enabled = m.enabled;
            })
            .await?;
            return Ok(());
        }
        let now = now_millis();
        let endpoint = Endpoint {
            id: m.format.to_string(),
            url: m.url,
            secret: signature::generate_secret(),
            events,
            description: format!("kept by the {} webhook settings", m.format),
            enabled: m.enabled,
            format: m.format.to_string(),
            created_at: now,
            updated_at: now,
            skip_through: 0,
        };
        self.add(endpoint).await?;
        Ok(())
    }

    async fn remove_managed(&self, format: &str) -> DomainResult<()> {
        match self.remove(format).await {
            Err(DomainError::NotFound { .. }) => Ok(()),
            other => other,
        }
    }
}

impl Relay {
    async fn refuse_managed(&self, id: &str) -> DomainResult<()> {
        let shared = self.shared(id).await?;
        let e = shared.endpoint.read().unwrap_or_else(|e| e.into_inner());
        if e.is_managed() {
            return Err(DomainError::Forbidden(
                format!("endpoint {id} is kept by the {} surface's webhook settings", e.format).into(),
            ));
        }
        Ok(())
    }

    /// Stores a new endpoint and starts its worker, from the newest recorded event on.
    async fn add(&self, endpoint: Endpoint) -> DomainResult<EndpointView> {
        let mut workers = self.workers.lock().await;
        if workers.contains_key(&endpoint.id) {
            return Err(DomainError::AlreadyExists {
                entity: "webhook endpoint",
                id: endpoint.id,
            });
        }
        let cursor = self.store.outbox_head().await?;
        self.store
            .put_setting(CURSOR_NAMESPACE, &endpoint.id, cursor.into())
            .await?;
        self.store
            .put_setting(ENDPOINT_NAMESPACE, &endpoint.id, to_json(&endpoint)?)
            .await?;
        announce_setting(&*self.bus, ENDPOINT_NAMESPACE, &endpoint.id).await;
        let id = endpoint.id.clone();
        let relay = self.self_arc()?;
        workers.insert(id.clone(), relay.spawn(endpoint, cursor));
        self.refresh_interest(&workers);
        Ok(workers[&id].shared.view())
    }

    /// Stops an endpoint's worker and forgets it, its cursor and its dead letters.
    async fn remove(&self, id: &str) -> DomainResult<()> {
        let mut workers = self.workers.lock().await;
        let w = workers
            .remove(id)
            .ok_or_else(|| DomainError::not_found("webhook endpoint", id))?;
        self.refresh_interest(&workers);
        self.stop_worker(w).await;
        self.store.delete_setting(ENDPOINT_NAMESPACE, id).await?;
        announce_setting(&*self.bus, ENDPOINT_NAMESPACE, id).await;
        self.store.delete_setting(CURSOR_NAMESPACE, id).await?;
        self.store.delete_dead_letters(id, None).await?;
        Ok(())
    }

    /// Changes an endpoint's settings: stored first, then seen by its worker (woken, in case it was
    /// enabled) and by the recorder's interest.
    async fn modify(&self, id: &str, change: impl FnOnce(&mut Endpoint)) -> DomainResult<Arc<Shared>> {
        let workers = self.workers.lock().await;
        let w = workers
            .get(id)
            .ok_or_else(|| DomainError::not_found("webhook endpoint", id))?;
        let mut updated = w.shared.endpoint.read().unwrap_or_else(|e| e.into_inner()).clone();
        let was_enabled = updated.enabled;
        change(&mut updated);
        updated.updated_at = now_millis();
        if updated.enabled && !was_enabled {
            // What was recorded while it was disabled stays undelivered, however far the worker has read.
            updated.skip_through = self.store.outbox_head().await?;
        }
        self.store
            .put_setting(ENDPOINT_NAMESPACE, id, to_json(&updated)?)
            .await?;
        announce_setting(&*self.bus, ENDPOINT_NAMESPACE, id).await;
        *w.shared.endpoint.write().unwrap_or_else(|e| e.into_inner()) = updated;
        self.refresh_interest(&workers);
        w.shared.doorbell.notify_one();
        Ok(w.shared.clone())
    }

    pub(super) fn self_arc(&self) -> DomainResult<Arc<Relay>> {
        self.me
            .upgrade()
            .ok_or_else(|| DomainError::Unavailable("the webhook relay has stopped".into()))
    }
}

fn to_json(e: &Endpoint) -> DomainResult<serde_json::Value> {
    serde_json::to_value(e).map_err(|e| DomainError::Internal(format!("endpoint: {e}")))
}
