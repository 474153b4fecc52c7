//! Outgoing webhook endpoints as the admin API manages them. The delivery machinery (the durable outbox's
//! relay, signing, retries, dead letters) lives in crate `confab-outbox`, which implements this port; the
//! service only checks that the caller is the application.

use std::sync::Arc;

use async_trait::async_trait;
use confab_domain::outbox::DeadLetter;
use confab_domain::{DomainError, DomainResult, Millis};

use crate::{Actor, Confab, require_admin};

/// What the application asks for when it adds an endpoint.
#[derive(Clone, Debug, Default)]
pub struct EndpointSpec {
    pub url: String,
    /// Event types or patterns (`message.*`); empty: every event.
    pub events: Vec<String>,
    pub description: String,
    pub enabled: bool,
}

#[derive(Clone, Debug, Default)]
pub struct EndpointPatch {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
}

/// An endpoint as the admin API shows it: never its secret (shown once, at creation or rotation).
#[derive(Clone, Debug)]
pub struct EndpointView {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub description: String,
    pub enabled: bool,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// Events recorded for the endpoint and not yet delivered or dead-lettered (this node's view).
    pub pending: u64,
    pub delivered: u64,
    pub failed_attempts: u64,
    pub dead_lettered: u64,
}

/// One delivery attempt.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub event_id: u64,
    pub event_type: String,
    pub at: Millis,
    pub duration_ms: u64,
    /// The endpoint's HTTP status, when it answered.
    pub status: Option<u16>,
    pub error: Option<String>,
    pub delivered: bool,
}

#[async_trait]
pub trait WebhookEndpoints: Send + Sync {
    /// Adds an endpoint; returns it with its signing secret (`whsec_…`), shown only here.
    async fn create(&self, spec: EndpointSpec) -> DomainResult<(EndpointView, String)>;
    async fn list(&self) -> DomainResult<Vec<EndpointView>>;
    async fn get(&self, id: &str) -> DomainResult<EndpointView>;
    async fn update(&self, id: &str, patch: EndpointPatch) -> DomainResult<EndpointView>;
    /// Replaces the signing secret; returns the new one.
    async fn rotate_secret(&self, id: &str) -> DomainResult<String>;
    async fn delete(&self, id: &str) -> DomainResult<()>;
    /// The latest attempts, newest first.
    async fn attempts(&self, id: &str) -> DomainResult<Vec<Attempt>>;
    async fn dead_letters(&self, id: &str, after: u64, limit: u32) -> DomainResult<Vec<DeadLetter>>;
    /// Sends a dead letter again now; when it is accepted the dead letter is gone.
    async fn redeliver(&self, id: &str, event_id: u64) -> DomainResult<Attempt>;
}

impl Confab {
    pub fn set_webhook_endpoints(&self, endpoints: Arc<dyn WebhookEndpoints>) {
        *self.webhook_endpoints.write().unwrap_or_else(|e| e.into_inner()) = Some(endpoints);
    }

    /// The webhook endpoints, for the application only.
    pub fn webhook_endpoints(&self, actor: &Actor) -> DomainResult<Arc<dyn WebhookEndpoints>> {
        require_admin(actor)?;
        self.webhook_endpoints
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| DomainError::Unavailable("webhooks are not enabled on this server".into()))
    }
}
