//! Assembly of the Confab server: picks the store and bus implementations, builds the services and the
//! router, and serves HTTP/WebSocket on a listener until shutdown. `run` takes its listener and shutdown
//! signal as arguments so tests bind port 0.

pub mod backup;
pub mod check;
pub mod config;
mod health;
pub mod master_token;
mod node;
mod phases;
pub mod storage;
pub mod telemetry;
mod unread_body;
mod uploads;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use confab_gateway::Hub;
use confab_service::Confab;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

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
            // Commands per group commit: counts, not seconds.
            let batch = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .set_buckets(&buckets)
                .ok()?
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full("confab_store_batch_commands".into()),
                    &batch,
                )
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
    /// Opens storage under the data dir and starts the services, in phases: storage, the core service,
    /// providers and the send checks, bots, then the surfaces. Needs a tokio runtime.
    pub async fn build(config: Config, master_token: &str) -> anyhow::Result<App> {
        metrics_handle();
        let shutdown = CancellationToken::new();
        let egress = config
            .egress_policy()
            .map_err(|e| anyhow::anyhow!("egress.allow_private: {e}"))?;
        let storage = phases::open_storage(&config, &egress, &shutdown).await?;
        let catalog = phases::providers(&config, &storage, &egress).await?;
        let send_checks = phases::send_checks(&config, &catalog, &egress)?;
        let service =
            phases::start_core(&config, master_token, &storage, catalog.clone(), send_checks, &shutdown).await?;
        let bots = phases::start_bots(&config, &service, catalog).await?;
        backup::spawn_scheduled(&config, shutdown.clone());
        let hub = Hub::start(service.clone(), config.gateway());
        let router = phases::surfaces(&config, master_token, &service, &hub, &storage, egress, &shutdown).await?;
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
