//! What leaves the server: webhooks and bot callbacks (`[webhooks]`), the ranges outbound requests may
//! reach (`[egress]`), what providers added through the admin API may use (`[provider_api]`), and the
//! application's pre-send check (`[pre_send_webhook]`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The pre-send webhook: off while `url` is empty.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PreSendWebhookConfig {
    pub url: String,
    /// The `whsec_` signing secret; or name an environment variable holding it with `secret_env`.
    pub secret: String,
    pub secret_env: String,
    /// Budget for the whole exchange, in milliseconds.
    pub timeout_ms: u64,
    /// On timeout or error: allow the message (true) or refuse it (false).
    pub fail_open: bool,
}

impl Default for PreSendWebhookConfig {
    fn default() -> Self {
        PreSendWebhookConfig {
            url: String::new(),
            secret: String::new(),
            secret_env: String::new(),
            timeout_ms: 1500,
            fail_open: true,
        }
    }
}

impl std::fmt::Debug for PreSendWebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreSendWebhookConfig")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field("secret_env", &self.secret_env)
            .field("timeout_ms", &self.timeout_ms)
            .field("fail_open", &self.fail_open)
            .finish()
    }
}

impl PreSendWebhookConfig {
    /// The hook's settings, `None` when it is off.
    pub fn hook(&self) -> anyhow::Result<Option<confab_outbox::PreSendConfig>> {
        if self.url.is_empty() {
            return Ok(None);
        }
        let secret = match (self.secret.is_empty(), self.secret_env.is_empty()) {
            (false, _) => self.secret.clone(),
            (true, false) => std::env::var(&self.secret_env)
                .map_err(|_| anyhow::anyhow!("pre_send_webhook.secret_env: {} is not set", self.secret_env))?,
            (true, true) => anyhow::bail!("pre_send_webhook: a url needs a secret or secret_env"),
        };
        Ok(Some(confab_outbox::PreSendConfig {
            url: self.url.clone(),
            secret,
            budget: Duration::from_millis(self.timeout_ms.max(1)),
            fail_open: self.fail_open,
        }))
    }
}

/// Delivery of webhooks and bot callbacks, both by the outbox relay.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    pub timeout_secs: u64,
    /// No longer used: bot callbacks are retried like webhooks, until `retry_period_secs`. Still read, so
    /// files that set it keep working.
    pub max_attempts: u32,
    /// Wait before the second attempt in milliseconds; doubled for each further one.
    pub backoff_ms: u64,
    /// No longer used (the in-memory queue of bot callbacks is gone); still read.
    pub queue: usize,
    /// No longer used; still read. In flight per endpoint: `per_endpoint`.
    pub max_in_flight: usize,
    /// Deliveries in flight to one endpoint (each to a different channel, or for bot callbacks, a different
    /// channel or bot).
    pub per_endpoint: usize,
    /// Older name of `[egress] allow_private`, still read (both lists apply).
    pub allow_private: Vec<String>,
    /// Endpoints of the outbox (`/api/v1/webhooks/endpoints`): how long after its commit an event is retried
    /// before it is dead-lettered.
    pub retry_period_secs: u64,
    /// Longest wait between two attempts of an event, in seconds.
    pub max_backoff_secs: u64,
    /// With several nodes, one relays each endpoint at a time under a lease it renews every third of this;
    /// when that node dies, another takes the endpoint over at most this long after its last renewal.
    pub lease_ttl_secs: u64,
}

/// Outbound requests that carry application data: webhooks, bot callbacks, and LLM providers added through
/// the admin API. Providers of the configuration file are the operator's and not restricted.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EgressConfig {
    /// Private or reserved ranges they may reach (CIDRs or addresses, e.g. `["10.0.0.0/8"]`). Empty: only
    /// public addresses, so neither a webhook nor an API-added provider can reach this host's network.
    pub allow_private: Vec<String>,
}

/// Providers added through the admin API send their key to a `base_url` the caller chose, so they may only
/// name environment variables set aside for that. Providers of this file are not restricted.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderApiConfig {
    /// `api_key_env` names starting with this are allowed (empty: none by prefix).
    pub api_key_env_prefix: String,
    /// `api_key_env` names allowed one by one.
    pub api_key_env_allow: Vec<String>,
}

impl Default for ProviderApiConfig {
    fn default() -> Self {
        ProviderApiConfig {
            api_key_env_prefix: confab_bots::catalog::DEFAULT_KEY_ENV_PREFIX.into(),
            api_key_env_allow: Vec::new(),
        }
    }
}

impl ProviderApiConfig {
    pub fn key_env_rule(&self) -> confab_bots::catalog::KeyEnvRule {
        confab_bots::catalog::KeyEnvRule {
            prefix: self.api_key_env_prefix.clone(),
            allow: self.api_key_env_allow.clone(),
        }
    }
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        let d = confab_outbox::RelayConfig::default();
        WebhooksConfig {
            timeout_secs: d.timeout.as_secs(),
            max_attempts: 3,
            backoff_ms: d.backoff.as_millis() as u64,
            queue: 10_000,
            max_in_flight: 64,
            per_endpoint: d.per_endpoint,
            allow_private: Vec::new(),
            retry_period_secs: 24 * 3600,
            max_backoff_secs: 600,
            lease_ttl_secs: d.lease_ttl.as_secs(),
        }
    }
}

impl WebhooksConfig {
    /// The relay of this node (`node_id`: the holder of the endpoints' leases it relays).
    pub fn relay(&self, node_id: &str) -> confab_outbox::RelayConfig {
        confab_outbox::RelayConfig {
            timeout: Duration::from_secs(self.timeout_secs.max(1)),
            per_endpoint: self.per_endpoint.max(1),
            backoff: Duration::from_millis(self.backoff_ms),
            max_backoff: Duration::from_secs(self.max_backoff_secs.max(1)),
            retry_period: Duration::from_secs(self.retry_period_secs),
            node_id: node_id.to_string(),
            lease_ttl: Duration::from_secs(self.lease_ttl_secs.max(1)),
            ..Default::default()
        }
    }
}
