//! Assembly of the Confab server: picks the store and bus implementations, builds the services and the
//! router, and serves HTTP/WebSocket on a listener until shutdown. `run` takes its listener and shutdown
//! signal as arguments so tests bind port 0.

pub mod config;
mod health;
pub mod master_token;
mod unread_body;
mod uploads;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{Request, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use confab_api_native::{AppState, HttpLimits};
use confab_bus::LocalBus;
use confab_gateway::Hub;
use confab_service::{Confab, ServiceConfig};
use confab_store_sqlite::{SqliteConfig, SqliteStore};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use config::Config;

/// A built server: services started, router ready, not yet serving.
pub struct App {
    pub config: Config,
    pub service: Arc<Confab>,
    pub hub: Arc<Hub>,
    pub bots: Arc<confab_bots::BotRuntime>,
    pub router: Router,
    pub shutdown: CancellationToken,
}

#[derive(Clone)]
struct HealthState {
    service: Arc<Confab>,
}

/// The process-wide Prometheus recorder (a recorder can be installed once per process; tests build many apps).
fn metrics_handle() -> Option<&'static metrics_exporter_prometheus::PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ];
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .set_buckets(&buckets)
                .ok()?
                .install_recorder()
                .map_err(|e| tracing::warn!(error = %e, "metrics recorder not installed"))
                .ok()
        })
        .as_ref()
}

/// Prometheus metrics; needs the master token (`Authorization: Bearer`).
async fn metrics_endpoint(State(st): State<HealthState>, headers: axum::http::HeaderMap) -> axum::response::Response {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    if !token.is_some_and(|t| st.service.is_master_token(t)) {
        return (StatusCode::UNAUTHORIZED, "metrics need the master token").into_response();
    }
    match metrics_handle() {
        Some(h) => (
            [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "metrics unavailable").into_response(),
    }
}

impl App {
    /// Opens storage under the data dir and starts the services. Needs a tokio runtime.
    pub async fn build(config: Config, master_token: &str) -> anyhow::Result<App> {
        metrics_handle();
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
        let bus = Arc::new(LocalBus::default());
        let mut store_cfg = SqliteConfig::new(config.data_dir.join("confab.db"));
        store_cfg.synchronous = config.storage.synchronous;
        store_cfg.readers = config.storage.readers;
        store_cfg.max_batch = config.storage.max_batch;
        let store: confab_domain::ports::DynStore =
            Arc::new(SqliteStore::open(store_cfg, bus.clone()).map_err(|e| anyhow::anyhow!("opening storage: {e}"))?);
        let shutdown = CancellationToken::new();
        let egress = config
            .egress_policy()
            .map_err(|e| anyhow::anyhow!("egress.allow_private: {e}"))?;
        // Started before anything below writes, so every change it should announce is recorded (the sweep's
        // interrupted replies included).
        let bus_dyn: confab_domain::ports::DynBus = bus.clone();
        let relay = confab_outbox::Relay::start(
            store.clone(),
            &bus_dyn,
            egress.clone(),
            config.webhooks.relay(),
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
        let service = Confab::new(
            store,
            bus,
            master_token,
            ServiceConfig {
                limits: config.limits.clone(),
                files_dir: config.data_dir.join("files"),
                max_upload_bytes: config.http.max_upload_bytes,
                uploads: config.uploads.limits(),
                session_ttl: (config.sessions.ttl_secs > 0).then(|| Duration::from_secs(config.sessions.ttl_secs)),
                moderation: config.moderation.clone(),
            },
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        uploads::start(&service, shutdown.clone()).await?;
        service
            .load_moderation_rules()
            .await
            .map_err(|e| anyhow::anyhow!("moderation rules: {e}"))?;
        let pre_send = match config.pre_send_webhook.hook()? {
            Some(hook) => Some(confab_outbox::PreSendHook::new(hook, &egress).map_err(|e| anyhow::anyhow!("{e}"))?),
            None => None,
        };
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
        let catalog = confab_bots::Catalog::from_config(
            &config.providers,
            Box::new(|k| std::env::var(k).ok()),
            builtin_builder(),
        )
        .map_err(|e| anyhow::anyhow!("providers: {e}"))?
        .with_egress(egress.clone())
        .with_key_env_rule(config.provider_api.key_env_rule());
        let mut bot_decls = config.bots.clone();
        add_builtin(&config, &catalog, &mut bot_decls);
        catalog.load_stored(
            service
                .store()
                .list_providers()
                .await
                .map_err(|e| anyhow::anyhow!("providers: {e}"))?,
        );
        let catalog = Arc::new(catalog);
        service.set_provider_catalog(catalog.clone());
        // After the content rules: the LLM check, then the application's pre-send webhook (the last word).
        if let Some(check) = config.moderation_llm.check() {
            if catalog.get(&check.provider).is_none() {
                anyhow::bail!("moderation_llm.provider: no provider {:?}", check.provider);
            }
            service.add_send_hook(Arc::new(confab_bots::moderator::LlmModerator::new(
                catalog.clone(),
                check,
            )));
        }
        if let Some(hook) = pre_send {
            service.add_send_hook(Arc::new(hook));
        }
        declare_bots(&service, &bot_decls).await?;
        let bots = confab_bots::BotRuntime::start(service.clone(), catalog, config.bot_runtime.runtime())
            .await
            .map_err(|e| anyhow::anyhow!("starting the bot runtime: {e}"))?;
        service.set_webhook_endpoints(relay.clone());
        let gateway = config.gateway();
        let hub = Hub::start(service.clone(), gateway.clone());
        let state = AppState {
            service: service.clone(),
            hub: hub.clone(),
            gateway,
            shutdown: shutdown.clone(),
            dev_login: config.web.dev_login,
        };
        if config.web.dev_login {
            tracing::warn!("development login on: anyone reaching this server can sign in as any user");
        }
        let limits = HttpLimits {
            max_body_bytes: config.http.max_body_bytes,
            max_upload_request_bytes: (config.http.max_upload_bytes as usize).saturating_add(64 * 1024),
        };
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
        let dispatcher = confab_webhooks::Dispatcher::start(config.webhooks.delivery(), egress, shutdown.clone())
            .map_err(|e| anyhow::anyhow!("webhook client: {e}"))?;
        let endpoints: Arc<dyn confab_service::webhooks::WebhookEndpoints> = relay.clone();
        let sendbird_hooks = confab_api_sendbird::webhooks::SendbirdWebhooks::start(
            service.clone(),
            dispatcher.clone(),
            endpoints.clone(),
            master_token,
            config.sendbird.app_id.clone(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("sendbird webhooks: {e}"))?;
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
        let request_timeout = Duration::from_secs(config.http.request_timeout_secs.max(1));
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
        let nim = confab_api_nim::router(
            service.clone(),
            nim_auth,
            confab_api_nim::NimLimits {
                max_body_bytes: limits.max_body_bytes,
                request_timeout,
                sends_per_sec: config.nim.sends_per_sec,
            },
        );
        // Each surface answers a panic or a timeout in its own error format.
        let native = confab_api_native::router(state, &limits).layer(
            ServiceBuilder::new()
                .layer(CatchPanicLayer::custom(|_: Box<dyn std::any::Any + Send>| {
                    tracing::error!("a request handler panicked");
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        axum::Json(serde_json::json!({"error": {"code": "internal", "message": "internal error"}})),
                    )
                        .into_response()
                }))
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::REQUEST_TIMEOUT,
                    request_timeout,
                )),
        );
        let sendbird = confab_api_sendbird::router(
            service.clone(),
            sendbird_hooks,
            confab_api_sendbird::SendbirdLimits {
                max_body_bytes: limits.max_body_bytes,
                max_upload_request_bytes: limits.max_upload_request_bytes,
                request_timeout,
            },
            shutdown.clone(),
        );
        // Method and path only: query strings may carry tokens and are never logged.
        let mut router = native.merge(sendbird).merge(nim).merge(health);
        if config.web.enabled {
            router = router.merge(confab_webui::router());
        }
        let router = router
            .layer(axum::middleware::from_fn(unread_body::close_after_unread_body))
            .layer(TraceLayer::new_for_http().make_span_with(
                |req: &Request<_>| tracing::debug_span!("http", method = %req.method(), path = %req.uri().path()),
            ));
        Ok(App {
            config,
            service,
            hub,
            bots,
            router,
            shutdown,
        })
    }

    /// Serves until `signal` completes, then closes WebSocket sessions (close code 1001) and waits up to 10 s
    /// for requests in progress.
    pub async fn run(self, listener: TcpListener, signal: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let http = self.config.http.clone();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(http.header_read_timeout_secs.max(1)))
            .max_buf_size(64 * 1024);
        let builder = builder.http1_only();
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let connections = Arc::new(Semaphore::new(http.max_connections.max(1)));
        let svc = TowerToHyperService::new(self.router.clone());
        tokio::pin!(signal);
        loop {
            let permit = tokio::select! {
                _ = &mut signal => break,
                p = connections.clone().acquire_owned() => p.expect("never closed"),
            };
            let (stream, _peer) = tokio::select! {
                _ = &mut signal => break,
                accepted = listener.accept() => match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc.clone());
            let conn = graceful.watch(conn.into_owned());
            tokio::spawn(async move {
                let _ = conn.await;
                drop(permit);
            });
        }
        tracing::info!("shutting down");
        self.shutdown.cancel();
        drop(listener);
        tokio::select! {
            _ = graceful.shutdown() => {}
            _ = tokio::time::sleep(Duration::from_secs(10)) => tracing::warn!("some connections did not finish in time"),
        }
        Ok(())
    }
}

/// Creates the bots the configuration declares, or brings their settings up to date.
/// How providers of kind `builtin` are built: by `confab-llm-local` when compiled in.
fn builtin_builder() -> Option<confab_bots::catalog::BuiltinBuilder> {
    #[cfg(feature = "builtin-model")]
    return Some(std::sync::Arc::new(confab_llm_local::build));
    #[cfg(not(feature = "builtin-model"))]
    None
}

/// The zero-configuration bot: provider `builtin` and bot `assistant`, unless the configuration declares
/// those names itself. A missing model file does not stop the start: the provider is listed unavailable
/// and the bot answers with a failure until the file is there.
fn add_builtin(config: &Config, catalog: &confab_bots::Catalog, bots: &mut Vec<config::BotDecl>) {
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
    if !declared {
        match catalog.add_optional(b.provider()) {
            Ok(()) => {}
            Err(reason) => tracing::warn!(
                %reason,
                "the built-in model is unavailable; fetch it with scripts/fetch-model.sh (or set builtin.model_path)"
            ),
        }
    }
    if !b.bot.is_empty() && !bots.iter().any(|d| d.id == b.bot) {
        bots.push(b.bot());
    }
}

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
