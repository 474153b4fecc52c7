//! Liveness and readiness. A probe is a real read on a pooled connection and a real write committed by the
//! store's writer thread (`Store::ready`). `/readyz` runs one (concurrent callers share the probe in flight,
//! so the endpoint cannot be used to multiply store work); a background task runs one every few seconds,
//! and `/healthz` answers 503 once no probe has succeeded for `unhealthy_after`: the store has been unable
//! to serve for that long, and restarting the process is the remedy an orchestrator can apply.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use confab_service::Confab;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use tokio_util::sync::CancellationToken;

type Probe = Shared<BoxFuture<'static, bool>>;

pub struct Health {
    service: Arc<Confab>,
    /// Time without a successful probe after which the process is reported unhealthy.
    unhealthy_after: Duration,
    /// A probe that takes longer has failed.
    probe_timeout: Duration,
    last_ok: Mutex<Instant>,
    in_flight: Mutex<Option<Probe>>,
}

impl Health {
    /// Starts the background prober (stopped by `shutdown`).
    pub fn start(service: Arc<Confab>, unhealthy_after: Duration, shutdown: CancellationToken) -> Arc<Health> {
        let unhealthy_after = unhealthy_after.max(Duration::from_secs(1));
        // A few probes fit in the window, so one slow probe does not make a healthy process look wedged.
        let interval = (unhealthy_after / 4).clamp(Duration::from_millis(250), Duration::from_secs(5));
        let health = Arc::new(Health {
            service,
            unhealthy_after,
            probe_timeout: interval.max(Duration::from_secs(1)),
            last_ok: Mutex::new(Instant::now()),
            in_flight: Mutex::new(None),
        });
        let weak = Arc::downgrade(&health);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(interval) => {}
                }
                let Some(h) = weak.upgrade() else { break };
                let probe = h.probe();
                drop(h);
                probe.await;
            }
        });
        health
    }

    /// The probe in flight, or a new one. It runs in its own task, so callers that go away do not cancel it.
    fn probe(self: &Arc<Self>) -> Probe {
        let mut slot = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = slot.as_ref().filter(|p| p.peek().is_none()) {
            return p.clone();
        }
        let this = self.clone();
        let task = tokio::spawn(async move {
            let ok = tokio::time::timeout(this.probe_timeout, this.service.ready())
                .await
                .unwrap_or(false);
            if ok {
                *this.last_ok.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
            }
            ok
        });
        let p = async move { task.await.unwrap_or(false) }.boxed().shared();
        *slot = Some(p.clone());
        p
    }

    fn stalled_for(&self) -> Option<Duration> {
        let since = self.last_ok.lock().unwrap_or_else(|e| e.into_inner()).elapsed();
        (since > self.unhealthy_after).then_some(since)
    }
}

/// Liveness: cheap (no store work), unhealthy once the store has been unable to serve for a while.
pub async fn healthz(State(h): State<Arc<Health>>) -> impl IntoResponse {
    match h.stalled_for() {
        None => (StatusCode::OK, "ok".to_string()),
        Some(d) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("storage unable to serve for {}s", d.as_secs()),
        ),
    }
}

/// Readiness: a real read and write through the store, shared by concurrent callers.
pub async fn readyz(State(h): State<Arc<Health>>) -> impl IntoResponse {
    if h.probe().await {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "storage not ready")
    }
}
