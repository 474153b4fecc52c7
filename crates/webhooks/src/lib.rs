//! Outbound webhook delivery, shared by every surface that notifies the application (Sendbird webhooks and
//! bot callbacks; NIM copies; the moderation pipeline's endpoints). A surface builds and signs a
//! [`Delivery`] in its own format; the [`Dispatcher`] sends it: bounded queue (enqueueing never waits, so a
//! slow endpoint cannot slow message sending), a cap on deliveries in flight overall and per endpoint, a
//! timeout per attempt, retries with exponential backoff, and the egress policy on every connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use confab_egress::{EgressError, EgressPolicy};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// Per attempt, connect to last byte of the response head.
    pub timeout: Duration,
    /// Attempts per delivery, the first included.
    pub max_attempts: u32,
    /// Wait before the second attempt; doubled for each further one.
    pub backoff: Duration,
    /// Deliveries waiting to be sent; beyond that new ones are refused (and counted).
    pub queue: usize,
    /// Deliveries in flight over all endpoints.
    pub max_in_flight: usize,
    /// Deliveries in flight to one endpoint (scheme, host and port).
    pub per_endpoint: usize,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            timeout: Duration::from_secs(5),
            max_attempts: 3,
            backoff: Duration::from_secs(1),
            queue: 10_000,
            max_in_flight: 64,
            per_endpoint: 8,
        }
    }
}

/// One notification, already in its surface's format and signed.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// What this is, for metrics and logs (`sendbird.webhook`, `sendbird.bot_callback`...).
    pub kind: &'static str,
    pub url: reqwest::Url,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Delivery {
    /// A JSON POST to `url`, which must pass `policy` (see [`EgressPolicy::check_url`]).
    pub fn json(kind: &'static str, policy: &EgressPolicy, url: &str, body: Bytes) -> Result<Delivery, EgressError> {
        let url = policy.check_url(url)?;
        let mut headers = HeaderMap::new();
        headers.insert(
            reqwest::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Ok(Delivery {
            kind,
            url,
            headers,
            body,
        })
    }

    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.insert(HeaderName::from_static(name), v);
        }
        self
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnqueueError {
    #[error("the webhook queue is full")]
    Full,
    #[error("the webhook dispatcher has stopped")]
    Stopped,
}

/// How a delivery ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered {
        attempts: u32,
    },
    /// Every attempt failed (error status, timeout, refused destination).
    Failed {
        attempts: u32,
    },
}

pub struct Dispatcher {
    tx: mpsc::Sender<(Delivery, Option<tokio::sync::oneshot::Sender<Outcome>>)>,
    policy: EgressPolicy,
}

impl Dispatcher {
    /// Starts the delivery task; it stops retrying and exits when `shutdown` is cancelled.
    pub fn start(
        cfg: WebhookConfig,
        policy: EgressPolicy,
        shutdown: CancellationToken,
    ) -> Result<Arc<Dispatcher>, reqwest::Error> {
        let client = policy.guarded_client(cfg.timeout, "Confab-Webhooks")?;
        let (tx, rx) = mpsc::channel(cfg.queue.max(1));
        let worker = Worker {
            client,
            in_flight: Arc::new(Semaphore::new(cfg.max_in_flight.max(1))),
            endpoints: Arc::new(Mutex::new(HashMap::new())),
            cfg,
            shutdown,
        };
        tokio::spawn(worker.run(rx));
        Ok(Arc::new(Dispatcher { tx, policy }))
    }

    pub fn policy(&self) -> &EgressPolicy {
        &self.policy
    }

    /// Queues a delivery without waiting.
    pub fn enqueue(&self, d: Delivery) -> Result<(), EnqueueError> {
        self.send(d, None)
    }

    /// Queues a delivery and returns how it ended (for callers and tests that need to know).
    pub fn enqueue_tracked(&self, d: Delivery) -> Result<tokio::sync::oneshot::Receiver<Outcome>, EnqueueError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(d, Some(tx))?;
        Ok(rx)
    }

    fn send(&self, d: Delivery, done: Option<tokio::sync::oneshot::Sender<Outcome>>) -> Result<(), EnqueueError> {
        let kind = d.kind;
        self.tx.try_send((d, done)).map_err(|e| {
            let err = match e {
                mpsc::error::TrySendError::Full(_) => EnqueueError::Full,
                mpsc::error::TrySendError::Closed(_) => EnqueueError::Stopped,
            };
            metrics::counter!("confab_webhook_deliveries_total", "kind" => kind, "outcome" => "dropped").increment(1);
            tracing::warn!(kind, error = %err, "webhook delivery dropped");
            err
        })
    }
}

struct Worker {
    client: confab_egress::GuardedClient,
    cfg: WebhookConfig,
    in_flight: Arc<Semaphore>,
    /// One semaphore per endpoint; dropped when idle so the map does not grow with every URL ever seen.
    endpoints: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
    shutdown: CancellationToken,
}

impl Worker {
    async fn run(self, mut rx: mpsc::Receiver<(Delivery, Option<tokio::sync::oneshot::Sender<Outcome>>)>) {
        let this = Arc::new(self);
        loop {
            let next = tokio::select! {
                _ = this.shutdown.cancelled() => break,
                next = rx.recv() => next,
            };
            let Some((delivery, done)) = next else { break };
            // Waiting here leaves the rest in the bounded queue: backpressure stops at the queue.
            let Ok(permit) = this.in_flight.clone().acquire_owned().await else {
                break;
            };
            let w = this.clone();
            tokio::spawn(async move {
                let outcome = w.deliver(&delivery).await;
                drop(permit);
                if let Some(done) = done {
                    let _ = done.send(outcome);
                }
            });
        }
    }

    fn endpoint_slot(&self, url: &reqwest::Url) -> (String, Arc<Semaphore>) {
        let key = format!(
            "{}://{}:{}",
            url.scheme(),
            url.host_str().unwrap_or(""),
            url.port_or_known_default().unwrap_or(0)
        );
        let sem = self
            .endpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(self.cfg.per_endpoint.max(1))))
            .clone();
        (key, sem)
    }

    fn release_endpoint(&self, key: &str) {
        let mut map = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        // Two references left: the map's and the one being dropped by the caller right after.
        if map
            .get(key)
            .is_some_and(|s| Arc::strong_count(s) <= 2 && s.available_permits() == self.cfg.per_endpoint.max(1))
        {
            map.remove(key);
        }
    }

    async fn deliver(&self, d: &Delivery) -> Outcome {
        let (key, slot) = self.endpoint_slot(&d.url);
        let outcome = {
            let _permit = slot.acquire().await;
            self.attempts(d).await
        };
        self.release_endpoint(&key);
        drop(slot);
        let label = match outcome {
            Outcome::Delivered { .. } => "delivered",
            Outcome::Failed { .. } => "failed",
        };
        metrics::counter!("confab_webhook_deliveries_total", "kind" => d.kind, "outcome" => label).increment(1);
        outcome
    }

    async fn attempts(&self, d: &Delivery) -> Outcome {
        let max = self.cfg.max_attempts.max(1);
        let host = d.url.host_str().unwrap_or("").to_string();
        for attempt in 1..=max {
            // Checked at every attempt, whatever policy the delivery was made under.
            let request = match self.client.post(d.url.as_str()) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(kind = d.kind, %host, error = %e, "webhook refused by the egress policy");
                    return Outcome::Failed { attempts: attempt };
                }
            };
            let started = Instant::now();
            let result = request.headers(d.headers.clone()).body(d.body.clone()).send().await;
            metrics::histogram!("confab_webhook_attempt_seconds", "kind" => d.kind)
                .record(started.elapsed().as_secs_f64());
            // The URL's path and query may carry a secret: logs name the host only.
            match result {
                Ok(resp) if resp.status().is_success() => return Outcome::Delivered { attempts: attempt },
                Ok(resp) => {
                    tracing::warn!(kind = d.kind, %host, attempt, status = resp.status().as_u16(), "webhook attempt refused")
                }
                Err(e) => {
                    tracing::warn!(kind = d.kind, %host, attempt, error = %short_error(&e), "webhook attempt failed")
                }
            }
            if attempt < max {
                let wait = self.cfg.backoff.saturating_mul(1 << (attempt - 1).min(16));
                tokio::select! {
                    _ = self.shutdown.cancelled() => return Outcome::Failed { attempts: attempt },
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
        Outcome::Failed { attempts: max }
    }
}

/// The innermost cause of a request error (reqwest's own message hides an egress refusal behind "error
/// sending request" and names the URL, which may carry a secret).
pub fn short_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut innermost: Option<&dyn std::error::Error> = None;
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        innermost = Some(s);
        source = s.source();
    }
    match innermost {
        Some(s) => s.to_string(),
        None if e.is_connect() => "connection failed".into(),
        None => "request failed".into(),
    }
}

#[cfg(test)]
mod tests;
