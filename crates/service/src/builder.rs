//! Assembling the service: [`ConfabBuilder`] takes what the binary plugs in; nothing changes it once built.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use confab_domain::DomainError;
use confab_domain::DomainResult;
use confab_domain::ports::{DynBus, DynStore};
use governor::{Quota, RateLimiter};

use crate::auth::{MasterToken, SessionCache};
use crate::presence::PresenceRegistry;
use crate::{Confab, ServiceConfig, blobs, bots, files, moderation, typing, webhooks};

/// Assembles the service from its store, bus and configuration and the ports the binary plugs in; nothing
/// changes them once built. Only the bot runtime, which is built over the service, attaches afterwards
/// ([`Confab::attach_bot_runtime`]).
pub struct ConfabBuilder {
    store: DynStore,
    bus: DynBus,
    master: MasterToken,
    cfg: ServiceConfig,
    providers: Option<Arc<dyn bots::ProviderCatalog>>,
    webhook_endpoints: Option<Arc<dyn webhooks::WebhookEndpoints>>,
    send_hooks: Vec<Arc<dyn moderation::SendHook>>,
    blobs: Option<Arc<dyn blobs::FileBlobs>>,
}

impl ConfabBuilder {
    /// Where uploaded files' bytes are kept (default: the directory `files_dir`).
    pub fn file_blobs(mut self, blobs: Arc<dyn blobs::FileBlobs>) -> Self {
        self.blobs = Some(blobs);
        self
    }

    /// The providers bots and the admin API use (none: the provider admin API answers 503).
    pub fn provider_catalog(mut self, catalog: Arc<dyn bots::ProviderCatalog>) -> Self {
        self.providers = Some(catalog);
        self
    }

    /// Where webhook endpoints are managed (none: the webhook admin API answers 503).
    pub fn webhook_endpoints(mut self, endpoints: Arc<dyn webhooks::WebhookEndpoints>) -> Self {
        self.webhook_endpoints = Some(endpoints);
        self
    }

    /// Adds a check every message goes through after the content rules, in the order added (the LLM check,
    /// then the application's pre-send webhook, which has the last word).
    pub fn send_hook(mut self, hook: Arc<dyn moderation::SendHook>) -> Self {
        self.send_hooks.push(hook);
        self
    }

    /// The service. Fails when the configuration's moderation rules do not compile.
    pub fn build(self) -> DomainResult<Arc<Confab>> {
        let cfg = self.cfg;
        let rules = moderation::RuleBook::new(cfg.moderation.clone())
            .map_err(|e| DomainError::invalid("moderation", e.to_string()))?;
        let per_sec = NonZeroU32::new(cfg.limits.user_send_per_sec.max(1)).expect("max(1)");
        let burst = NonZeroU32::new(cfg.limits.user_send_burst.max(1)).expect("max(1)");
        let service = Arc::new(Confab {
            store: self.store,
            bus: self.bus,
            master: self.master,
            sessions: SessionCache::new(Duration::from_secs(30)),
            send_limiter: RateLimiter::keyed(Quota::per_second(per_sec).allow_burst(burst)),
            read_limiter: RateLimiter::keyed(
                Quota::per_second(NonZeroU32::new(cfg.limits.user_reads_per_sec.max(1)).expect("max(1)"))
                    .allow_burst(NonZeroU32::new(cfg.limits.user_reads_burst.max(1)).expect("max(1)")),
            ),
            upload_rate: files::UploadRate::new(&cfg.uploads),
            presence: PresenceRegistry::default(),
            typing: typing::TypingGate::default(),
            providers: self.providers,
            bot_runtime: Default::default(),
            rules: Arc::new(rules),
            webhook_endpoints: self.webhook_endpoints,
            send_hooks: self.send_hooks,
            blobs: self
                .blobs
                .unwrap_or_else(|| Arc::new(blobs::LocalBlobs::new(cfg.files_dir.clone()))),
            traces: Default::default(),
            sent: crate::sent::SentCounters::new(),
            cfg,
        });
        service.follow_invalidations();
        Ok(service)
    }
}

impl Confab {
    /// Starts assembling the service (see [`ConfabBuilder`]).
    pub fn builder(store: DynStore, bus: DynBus, master_token: &str, cfg: ServiceConfig) -> ConfabBuilder {
        ConfabBuilder {
            store,
            bus,
            master: MasterToken::new(master_token),
            cfg,
            providers: None,
            webhook_endpoints: None,
            send_hooks: Vec::new(),
            blobs: None,
        }
    }

    /// The service with no providers, webhook endpoints or send hooks (tests and tools).
    pub fn new(store: DynStore, bus: DynBus, master_token: &str, cfg: ServiceConfig) -> DomainResult<Arc<Self>> {
        Self::builder(store, bus, master_token, cfg).build()
    }
}
