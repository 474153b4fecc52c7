//! The phases `App::build` assembles the server in, each a function of the previous ones' results: storage
//! (the store, the bus and the outbox relay that records their changes), the providers and the send checks,
//! the core service built with them, the bots, then the surfaces (native, Sendbird, NIM, health, web), every surface wired
//! the same way: its router with its own limits, panic and timeout answers in its own format.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use confab_api_native::{AppState, HttpLimits};
use confab_domain::ports::{DynBus, DynStore};
use confab_egress::EgressPolicy;
use confab_gateway::Hub;
use confab_service::moderation::SendHook;
use confab_service::{Confab, ServiceConfig};
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;

use crate::{Config, HealthState, config, health, master_token, metrics_endpoint, unread_body, uploads};

/// What the storage phase opens.
pub struct Storage {
    pub store: DynStore,
    pub bus: DynBus,
    /// The outbox relay: the durable record of changes for webhooks, and their delivery.
    pub relay: Arc<confab_outbox::Relay>,
    /// Where uploaded files' bytes are.
    pub blobs: Arc<dyn confab_service::blobs::FileBlobs>,
}

/// Opens the configured store (`crate::storage`) with its bus, starts the outbox relay before anything writes (so
/// every change it should announce is recorded, the sweep's included), and marks replies the previous run
/// left generating as interrupted.
pub async fn open_storage(
    config: &Config,
    egress: &EgressPolicy,
    shutdown: &CancellationToken,
) -> anyhow::Result<Storage> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| anyhow::anyhow!("cannot create data dir {}: {e}", config.data_dir.display()))?;
    let node_id = crate::node::resolve(&config.cluster, &config.data_dir)?;
    let bus = crate::storage::open_bus(config, &node_id, shutdown).await?;
    let store = crate::storage::open_store(config, &node_id, bus.clone()).await?;
    let blobs = crate::storage::open_files(config, &node_id).await?;
    let relay = confab_outbox::Relay::start(
        store.clone(),
        &bus,
        egress.clone(),
        config.webhooks.relay(&node_id),
        shutdown.clone(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("webhook relay: {e}"))?;
    // Replies that were generating when the process stopped will never finish: mark them interrupted.
    let swept = store
        .sweep_generating()
        .await
        .map_err(|e| anyhow::anyhow!("sweeping replies: {e}"))?;
    if swept > 0 {
        tracing::warn!(
            replies = swept,
            "marked replies left generating by the previous run as interrupted"
        );
    }
    tracing::info!(node_id, "this node");
    Ok(Storage {
        store,
        bus,
        relay,
        blobs,
    })
}

/// The providers: the configuration's, the built-in model's, and those added through the admin API.
pub async fn providers(
    config: &Config,
    storage: &Storage,
    egress: &EgressPolicy,
) -> anyhow::Result<Arc<confab_bots::Catalog>> {
    let catalog = confab_bots::Catalog::from_config(
        &config.providers,
        Box::new(|k| std::env::var(k).ok()),
        builtin_builder(),
    )
    .map_err(|e| anyhow::anyhow!("providers: {e}"))?
    .with_egress(egress.clone())
    .with_key_env_rule(config.provider_api.key_env_rule());
    add_builtin_provider(config, &catalog);
    catalog.load_stored(
        storage
            .store
            .list_providers()
            .await
            .map_err(|e| anyhow::anyhow!("providers: {e}"))?,
    );
    Ok(Arc::new(catalog))
}

/// The checks every message goes through after the content rules, in order: the LLM check, then the
/// application's pre-send webhook (the last word).
pub fn send_checks(
    config: &Config,
    catalog: &Arc<confab_bots::Catalog>,
    egress: &EgressPolicy,
) -> anyhow::Result<Vec<Arc<dyn SendHook>>> {
    let mut hooks: Vec<Arc<dyn SendHook>> = Vec::new();
    if let Some(check) = config.moderation_llm.check() {
        if catalog.get(&check.provider).is_none() {
            anyhow::bail!("moderation_llm.provider: no provider {:?}", check.provider);
        }
        hooks.push(Arc::new(confab_bots::moderator::LlmModerator::new(
            catalog.clone(),
            check,
        )));
    }
    if let Some(hook) = config.pre_send_webhook.hook()? {
        hooks.push(Arc::new(
            confab_outbox::PreSendHook::new(hook, egress).map_err(|e| anyhow::anyhow!("{e}"))?,
        ));
    }
    Ok(hooks)
}

/// The core service over the storage, with the providers and send checks: limits, uploads (and their
/// sweeper), the moderation rules in force, webhook endpoints, and the housekeeping timer.
pub async fn start_core(
    config: &Config,
    master_token: &str,
    storage: &Storage,
    catalog: Arc<confab_bots::Catalog>,
    send_checks: Vec<Arc<dyn SendHook>>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Arc<Confab>> {
    let cfg = ServiceConfig {
        limits: config.limits.clone(),
        files_dir: config.data_dir.join("files"),
        max_upload_bytes: config.http.max_upload_bytes,
        uploads: config.uploads.limits(),
        session_ttl: (config.sessions.ttl_secs > 0).then(|| Duration::from_secs(config.sessions.ttl_secs)),
        moderation: config.moderation.clone(),
    };
    let service = send_checks
        .into_iter()
        .fold(
            Confab::builder(storage.store.clone(), storage.bus.clone(), master_token, cfg)
                .provider_catalog(catalog)
                .webhook_endpoints(storage.relay.clone())
                .file_blobs(storage.blobs.clone()),
            |b, hook| b.send_hook(hook),
        )
        .build()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    uploads::start(&service, shutdown.clone()).await?;
    service
        .load_moderation_rules()
        .await
        .map_err(|e| anyhow::anyhow!("moderation rules: {e}"))?;
    service
        .reset_presence()
        .await
        .map_err(|e| anyhow::anyhow!("presence: {e}"))?;
    crate::node::start_upkeep(
        storage.store.clone(),
        Arc::downgrade(&service),
        &config.cluster,
        shutdown.clone(),
    )
    .await?;
    let upkeep = Arc::downgrade(&service);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            every.tick().await;
            match upkeep.upgrade() {
                Some(s) => s.housekeeping(),
                None => break,
            }
        }
    });
    Ok(service)
}

/// The bots the configuration declares (the built-in `assistant` included), then the runtime that answers
/// them.
pub async fn start_bots(
    config: &Config,
    service: &Arc<Confab>,
    catalog: Arc<confab_bots::Catalog>,
) -> anyhow::Result<Arc<confab_bots::BotRuntime>> {
    let mut bot_decls = config.bots.clone();
    add_builtin_bot(config, &mut bot_decls);
    declare_bots(service, &bot_decls).await?;
    confab_bots::BotRuntime::start(service.clone(), catalog, config.bot_runtime.runtime())
        .await
        .map_err(|e| anyhow::anyhow!("starting the bot runtime: {e}"))
}

/// The HTTP surfaces on one router: native (with the WebSocket), Sendbird, NIM, health and metrics, and the
/// web app. Each answers its own errors, panics and timeouts.
pub async fn surfaces(
    config: &Config,
    master_token: &str,
    service: &Arc<Confab>,
    hub: &Arc<Hub>,
    storage: &Storage,
    egress: EgressPolicy,
    shutdown: &CancellationToken,
) -> anyhow::Result<Router> {
    let request_timeout = Duration::from_secs(config.http.request_timeout_secs.max(1));
    let limits = HttpLimits {
        max_body_bytes: config.http.max_body_bytes,
        max_upload_request_bytes: (config.http.max_upload_bytes as usize).saturating_add(64 * 1024),
        request_timeout,
    };
    if config.web.dev_login {
        tracing::warn!("development login on: anyone reaching this server can sign in as any user");
    }
    let native = confab_api_native::router(
        AppState {
            service: service.clone(),
            hub: hub.clone(),
            gateway: config.gateway(),
            shutdown: shutdown.clone(),
            dev_login: config.web.dev_login,
        },
        &limits,
    );
    let endpoints: Arc<dyn confab_service::webhooks::WebhookEndpoints> = storage.relay.clone();
    let sendbird_hooks = confab_api_sendbird::webhooks::SendbirdWebhooks::start(
        service.clone(),
        egress,
        endpoints.clone(),
        master_token,
        config.sendbird.app_id.clone(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("sendbird webhooks: {e}"))?;
    let sendbird = confab_api_sendbird::router(
        service.clone(),
        sendbird_hooks,
        confab_api_sendbird::SendbirdLimits {
            max_body_bytes: limits.max_body_bytes,
            max_upload_request_bytes: limits.max_upload_request_bytes,
            request_timeout,
        },
    );
    let nim = nim_surface(config, service, endpoints, limits.max_body_bytes, request_timeout).await?;
    let probes = health::Health::start(
        service.clone(),
        Duration::from_secs(config.storage.unhealthy_after_secs),
        shutdown.clone(),
    );
    let health = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .with_state(probes)
        .merge(
            Router::new()
                .route("/metrics", get(metrics_endpoint))
                .with_state(HealthState {
                    service: service.clone(),
                }),
        );
    let mut router = native.merge(sendbird).merge(nim).merge(health);
    if config.telemetry.enabled() {
        // Traced requests are named by their route (`POST /api/v1/channels/{channel_id}/messages`).
        router = router.route_layer(axum::middleware::from_fn(crate::telemetry::name_by_route));
    }
    if config.web.enabled {
        router = router.merge(confab_webui::router());
    }
    // Method and path only: query strings may carry tokens and are never logged.
    Ok(router
        .layer(axum::middleware::from_fn(unread_body::close_after_unread_body))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(crate::telemetry::http_span)
                .on_response(crate::telemetry::on_response),
        ))
}

/// The NIM surface: its app key and secret (configured, from the environment, or generated into the data
/// dir), its copies of messages to `[nim] webhook_url`, and its router.
async fn nim_surface(
    config: &Config,
    service: &Arc<Confab>,
    endpoints: Arc<dyn confab_service::webhooks::WebhookEndpoints>,
    max_body_bytes: usize,
    request_timeout: Duration,
) -> anyhow::Result<Router> {
    let (nim_key, nim_secret, nim_source) = master_token::resolve_nim(
        (&config.nim.app_key, &config.nim.app_secret),
        (
            std::env::var("CONFAB_NIM_APP_KEY").ok(),
            std::env::var("CONFAB_NIM_APP_SECRET").ok(),
        ),
        &config.data_dir,
    )?;
    if let master_token::Source::Generated = nim_source {
        tracing::info!(
            app_key = %nim_key,
            file = %config.data_dir.join(master_token::NIM_FILE_NAME).display(),
            "generated the NIM app key and secret (the secret is in the file)"
        );
    }
    let nim_auth = Arc::new(confab_api_nim::auth::Authenticator::new(
        confab_api_nim::auth::AppCredentials::new(nim_key, nim_secret),
        config.nim.replay_memory,
    ));
    confab_api_nim::webhooks::start(
        service.clone(),
        endpoints,
        nim_auth.clone(),
        config.nim.webhook_url.clone(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("nim.webhook_url: {e}"))?;
    Ok(confab_api_nim::router(
        service.clone(),
        nim_auth,
        confab_api_nim::NimLimits {
            max_body_bytes,
            request_timeout,
            sends_per_sec: config.nim.sends_per_sec,
        },
    ))
}

/// How providers of kind `builtin` are built: by `confab-llm-local` when compiled in.
fn builtin_builder() -> Option<confab_bots::catalog::BuiltinBuilder> {
    #[cfg(feature = "builtin-model")]
    return Some(std::sync::Arc::new(confab_llm_local::build));
    #[cfg(not(feature = "builtin-model"))]
    None
}

/// The zero-configuration provider `builtin`, unless the configuration declares that name itself. A missing
/// model file does not stop the start: the provider is listed unavailable and its bot answers with a
/// failure until the file is there.
fn add_builtin_provider(config: &Config, catalog: &confab_bots::Catalog) {
    let b = &config.builtin;
    if !b.enabled {
        return;
    }
    if builtin_builder().is_none() {
        tracing::info!("the built-in model is not part of this build (cargo feature `builtin-model`)");
        return;
    }
    let declared = config
        .providers
        .iter()
        .any(|p| p.name == config::BuiltinConfig::PROVIDER);
    if !declared && let Err(reason) = catalog.add_optional(b.provider()) {
        tracing::warn!(
            %reason,
            "the built-in model is unavailable; fetch it with scripts/fetch-model.sh (or set builtin.model_path)"
        );
    }
}

/// The zero-configuration bot `assistant` on the built-in provider, unless the configuration declares that
/// name itself.
fn add_builtin_bot(config: &Config, bots: &mut Vec<config::BotDecl>) {
    let b = &config.builtin;
    if !b.enabled || builtin_builder().is_none() {
        return;
    }
    if !b.bot.is_empty() && !bots.iter().any(|d| d.id == b.bot) {
        bots.push(b.bot());
    }
}

/// Creates the bots the configuration declares, or brings their settings up to date.
async fn declare_bots(service: &Confab, decls: &[config::BotDecl]) -> anyhow::Result<()> {
    use confab_domain::model::{NewUser, UserPatch};
    use confab_domain::{DomainError, UserId};
    use confab_service::Actor;
    for d in decls {
        let id = UserId::parse(&d.id).map_err(|e| anyhow::anyhow!("bot {:?}: {e}", d.id))?;
        let nickname = if d.nickname.is_empty() {
            d.id.clone()
        } else {
            d.nickname.clone()
        };
        match service.get_bot(&Actor::Admin, &id).await {
            Ok(_) => {
                let profile = UserPatch {
                    nickname: Some(nickname),
                    profile_url: Some(d.profile_url.clone()),
                    metadata: None,
                    disabled: None,
                };
                service
                    .update_bot(&Actor::Admin, &id, Some(d.settings.clone()), profile)
                    .await
                    .map_err(|e| anyhow::anyhow!("bot {id}: {e}"))?;
            }
            Err(DomainError::NotFound { .. }) => {
                let user = NewUser {
                    id: id.clone(),
                    nickname,
                    profile_url: d.profile_url.clone(),
                    metadata: Default::default(),
                    is_bot: true,
                };
                service
                    .create_bot(&Actor::Admin, user, d.settings.clone())
                    .await
                    .map_err(|e| anyhow::anyhow!("bot {id}: {e}"))?;
            }
            Err(e) => return Err(anyhow::anyhow!("bot {id}: {e}")),
        }
    }
    Ok(())
}
