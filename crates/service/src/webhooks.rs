//! Outgoing webhook endpoints as the admin API manages them. The delivery machinery (the durable outbox's
//! relay, signing, retries, dead letters) lives in crate `confab-outbox`, which implements this port; the
//! service only checks that the caller is the application.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use confab_domain::outbox::{DeadLetter, RecordedEvent};
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
    /// `standard`, or the compatibility surface whose settings manage the endpoint (`sendbird`, `nim`).
    pub format: String,
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

/// The name of the native format: the Standard Webhooks envelope `{"type", "timestamp", "data"}`.
pub const STANDARD_FORMAT: &str = "standard";

/// A compatibility surface's webhook format. The relay delivers its endpoint from the outbox like any other
/// (order per channel, retries, dead letters, the Standard Webhooks headers) and asks the format for the body
/// and for its own signature headers.
#[async_trait]
pub trait WebhookFormat: Send + Sync {
    /// Also the id of the one endpoint the surface manages.
    fn name(&self) -> &'static str;
    /// The body for an event, once per event (retries send the same bytes); `None` when the format has no
    /// such event (the endpoint passes it by).
    async fn render(&self, event: &RecordedEvent) -> DomainResult<Option<Bytes>>;
    /// The format's own headers for one attempt (its signature, which may cover the attempt's time).
    fn sign(&self, body: &[u8]) -> Vec<(&'static str, String)>;
    /// Where an event goes, for a format whose endpoint names no URL of its own (one endpoint for many
    /// destinations: bot callbacks, each to its bot's URL). Asked at every attempt, so a destination changed
    /// meanwhile takes the retries; `None` passes the event by (its destination is gone). Every URL passes
    /// the egress policy when the relay connects, as an endpoint's own does.
    async fn url(&self, _event: &RecordedEvent) -> DomainResult<Option<String>> {
        Ok(None)
    }
    /// What keeps one destination's events in order, for a format with destinations per event: events of one
    /// channel with the same key go one at a time, in order; different keys do not wait for each other (one
    /// bot's failing URL does not hold back another bot's callbacks). `None`: by channel alone.
    fn lane(&self, _event: &RecordedEvent) -> Option<String> {
        None
    }
}

/// The endpoint a compatibility surface keeps from its settings (Sendbird's webhook settings, NIM's
/// configured URL).
#[derive(Clone, Debug)]
pub struct ManagedEndpoint {
    /// The [`WebhookFormat::name`] it delivers in.
    pub format: &'static str,
    /// Empty: the format names each event's URL ([`WebhookFormat::url`]).
    pub url: String,
    /// Event types or patterns of the outbox (see [`EndpointSpec::events`]).
    pub events: Vec<String>,
    pub enabled: bool,
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
    /// Makes a format available to the endpoints that deliver in it (they wait until it is).
    fn register_format(&self, format: Arc<dyn WebhookFormat>);
    /// Creates or changes the endpoint a surface manages (id = its format's name); its secret, cursor and
    /// dead letters are kept across changes. Only the surface changes it: the admin API shows it, its
    /// attempts and dead letters, and redelivers.
    async fn put_managed(&self, endpoint: ManagedEndpoint) -> DomainResult<()>;
    /// Removes a surface's endpoint, if there is one.
    async fn remove_managed(&self, format: &str) -> DomainResult<()>;
}

impl Confab {
    /// The webhook endpoints, for the application only.
    pub fn webhook_endpoints(&self, actor: &Actor) -> DomainResult<Arc<dyn WebhookEndpoints>> {
        require_admin(actor)?;
        self.webhook_endpoints
            .clone()
            .ok_or_else(|| DomainError::Unavailable("webhooks are not enabled on this server".into()))
    }
}
