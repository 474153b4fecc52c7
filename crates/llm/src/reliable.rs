//! The reliability layer: phase timeouts, retries before the first token, a concurrency cap and
//! a circuit breaker, around any [`LlmProvider`].

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::ProviderConfig;
use crate::{ChatRequest, EventStream, LlmError, LlmProvider, PHASE_FIRST_TOKEN, PHASE_IDLE, StreamEvent};

/// Knobs of [`Reliable`]. [`ReliabilityPolicy::from_config`] maps a [`ProviderConfig`];
/// `Default` uses the same defaults as the config.
#[derive(Debug, Clone, PartialEq)]
pub struct ReliabilityPolicy {
    /// Per attempt: from the call to the provider until the first `Delta` (or `Done`).
    pub first_token_timeout: Duration,
    /// Largest gap between two events after the first token.
    pub idle_timeout: Duration,
    /// Overall budget from the call until the first token (queueing, attempts, backoff waits).
    pub deadline: Duration,
    pub max_concurrency: usize,
    /// Longest wait for a concurrency slot before [`LlmError::Overloaded`].
    pub queue_timeout: Duration,
    /// Retries after the first attempt; only ever before the first token.
    pub max_retries: u32,
    pub retry_base_delay: Duration,
    pub retry_max_delay: Duration,
    /// A provider asking for a longer wait (retry-after) is not retried.
    pub max_retry_after: Duration,
    /// Consecutive failed calls that open the circuit; 0 disables the breaker.
    pub circuit_failure_threshold: u32,
    pub circuit_cooldown: Duration,
}

impl Default for ReliabilityPolicy {
    fn default() -> Self {
        ReliabilityPolicy::from_config(&ProviderConfig::new("default", crate::ProviderKind::OpenAi))
    }
}

impl ReliabilityPolicy {
    pub fn from_config(cfg: &ProviderConfig) -> Self {
        let ms = Duration::from_millis;
        ReliabilityPolicy {
            first_token_timeout: ms(cfg.first_token_timeout_ms),
            idle_timeout: ms(cfg.idle_timeout_ms),
            deadline: ms(cfg.deadline_ms),
            max_concurrency: cfg.max_concurrency.clamp(1, Semaphore::MAX_PERMITS),
            queue_timeout: ms(cfg.queue_timeout_ms),
            max_retries: cfg.max_retries,
            retry_base_delay: ms(cfg.retry_base_delay_ms),
            retry_max_delay: ms(cfg.retry_max_delay_ms),
            max_retry_after: ms(cfg.max_retry_after_ms),
            circuit_failure_threshold: cfg.circuit_failure_threshold,
            circuit_cooldown: ms(cfg.circuit_cooldown_ms),
        }
    }

    /// Exponential backoff with jitter for retry number `attempt` (0-based): a random value in
    /// `[d/2, d]` with `d = min(base * 2^attempt, max)`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let d = self
            .retry_base_delay
            .saturating_mul(2u32.saturating_pow(attempt.min(20)))
            .min(self.retry_max_delay);
        d.mul_f64(rand::random_range(0.5..=1.0))
    }
}

/// Wraps a provider with
/// * a first-token timeout per attempt and an idle timeout between events afterwards
///   (the connect timeout is the adapter's reqwest `connect_timeout`);
/// * the only retry loop: exponential backoff with jitter on retryable errors (429, 5xx,
///   connection errors, cuts) — **only before the first token** — honouring `retry-after`
///   / `retry-after-ms` / `x-ms-retry-after-ms`, giving up if the asked wait exceeds
///   `max_retry_after` or the remaining deadline;
/// * a concurrency cap (semaphore; the slot is held until the stream ends or is dropped;
///   waiting longer than `queue_timeout` → `Overloaded`);
/// * a circuit breaker (after N consecutive failed calls, `CircuitOpen` without calling the
///   provider until the cooldown has passed; then one trial call, half-open).
pub struct Reliable<P> {
    inner: P,
    policy: ReliabilityPolicy,
    semaphore: Arc<Semaphore>,
    circuit: Arc<Circuit>,
}

impl<P: LlmProvider> Reliable<P> {
    pub fn new(inner: P, policy: ReliabilityPolicy) -> Self {
        let circuit = Arc::new(Circuit {
            provider: inner.name().to_string(),
            threshold: policy.circuit_failure_threshold,
            cooldown: policy.circuit_cooldown,
            state: Mutex::new(CircuitState::Closed { failures: 0 }),
        });
        let semaphore = Arc::new(Semaphore::new(policy.max_concurrency.clamp(1, Semaphore::MAX_PERMITS)));
        Reliable {
            inner,
            policy,
            semaphore,
            circuit,
        }
    }

    pub fn inner(&self) -> &P {
        &self.inner
    }

    pub fn policy(&self) -> &ReliabilityPolicy {
        &self.policy
    }

    /// True while the circuit is open or half-open.
    pub fn circuit_is_open(&self) -> bool {
        !matches!(*self.circuit.lock(), CircuitState::Closed { .. })
    }

    /// The wait before retry number `attempt + 1`, or `None` if `err` must not be retried.
    fn retry_wait(&self, err: &LlmError, attempt: u32, deadline: Instant) -> Option<Duration> {
        if !err.is_retryable() || attempt >= self.policy.max_retries {
            return None;
        }
        let wait = match err {
            LlmError::RateLimited { retry_after: Some(d) } => {
                if *d > self.policy.max_retry_after {
                    tracing::info!(provider = %self.inner.name(), retry_after_ms = d.as_millis() as u64, "retry-after too long; not retrying");
                    return None;
                }
                *d
            }
            _ => self.policy.backoff(attempt),
        };
        if Instant::now() + wait >= deadline {
            tracing::info!(provider = %self.inner.name(), wait_ms = wait.as_millis() as u64, "retry wait exceeds the deadline; not retrying");
            return None;
        }
        Some(wait)
    }
}

#[async_trait::async_trait]
impl<P: LlmProvider> LlmProvider for Reliable<P> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn stream(&self, req: ChatRequest) -> Result<EventStream, LlmError> {
        let deadline = Instant::now() + self.policy.deadline;
        let ticket = Circuit::acquire(&self.circuit)?;
        let queue_wait = self.policy.queue_timeout.min(self.policy.deadline);
        let permit = match tokio::time::timeout(queue_wait, self.semaphore.clone().acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            _ => {
                tracing::warn!(provider = %self.inner.name(), "concurrency queue deadline passed");
                ticket.neutral();
                return Err(LlmError::Overloaded);
            }
        };
        let mut attempt: u32 = 0;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let result = if remaining.is_zero() {
                Err(LlmError::Timeout {
                    phase: PHASE_FIRST_TOKEN,
                })
            } else {
                let limit = self.policy.first_token_timeout.min(remaining);
                let attempt_fut = async {
                    let stream = self.inner.stream(req.clone()).await?;
                    prime(stream).await
                };
                match tokio::time::timeout(limit, attempt_fut).await {
                    Ok(r) => r,
                    Err(_) => Err(LlmError::Timeout {
                        phase: PHASE_FIRST_TOKEN,
                    }),
                }
            };
            let err = match result {
                Ok((head, rest)) => {
                    ticket.success();
                    if attempt > 0 {
                        tracing::info!(provider = %self.inner.name(), attempts = attempt + 1, "succeeded after retrying");
                    }
                    return Ok(guard(
                        head,
                        rest,
                        self.policy.idle_timeout,
                        permit,
                        self.circuit.clone(),
                    ));
                }
                Err(e) => e,
            };
            match self.retry_wait(&err, attempt, deadline) {
                Some(wait) => {
                    tracing::warn!(
                        provider = %self.inner.name(),
                        attempt = attempt + 1,
                        error = %err,
                        wait_ms = wait.as_millis() as u64,
                        "LLM call failed before the first token; retrying"
                    );
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                None => {
                    tracing::warn!(provider = %self.inner.name(), attempts = attempt + 1, error = %err, "LLM call failed");
                    if err.is_provider_failure() {
                        ticket.failure();
                    } else {
                        ticket.neutral();
                    }
                    return Err(err);
                }
            }
        }
    }
}

/// Reads `stream` until the first `Delta` (or `Done`, for an empty reply). Returns the events
/// read so far (e.g. an early `Usage`, then the first `Delta`) and the rest of the stream.
pub(crate) async fn prime(mut stream: EventStream) -> Result<(Vec<StreamEvent>, EventStream), LlmError> {
    let mut head = Vec::new();
    loop {
        match stream.next().await {
            Some(Ok(ev)) => {
                let first = matches!(ev, StreamEvent::Delta(_) | StreamEvent::Done { .. });
                head.push(ev);
                if first {
                    return Ok((head, stream));
                }
            }
            Some(Err(e)) => return Err(e),
            None => return Err(LlmError::StreamCut("stream ended before the first token".into())),
        }
    }
}

/// `head` then `rest`, with an idle timeout between events, holding the concurrency slot until
/// the end, and reporting mid-stream provider failures to the circuit breaker. Ends after
/// `Done` or the first error.
fn guard(
    head: Vec<StreamEvent>,
    rest: EventStream,
    idle: Duration,
    permit: OwnedSemaphorePermit,
    circuit: Arc<Circuit>,
) -> EventStream {
    struct State {
        head: VecDeque<StreamEvent>,
        rest: Option<EventStream>,
        permit: Option<OwnedSemaphorePermit>,
        idle: Duration,
        circuit: Arc<Circuit>,
    }
    let state = State {
        head: head.into(),
        rest: Some(rest),
        permit: Some(permit),
        idle,
        circuit,
    };
    futures_util::stream::unfold(state, |mut st| async move {
        let item = match st.head.pop_front() {
            Some(ev) => Ok(ev),
            None => {
                let rest = st.rest.as_mut()?;
                match tokio::time::timeout(st.idle, rest.next()).await {
                    Err(_) => Err(LlmError::Timeout { phase: PHASE_IDLE }),
                    Ok(None) => Err(LlmError::StreamCut("stream ended without a terminal event".into())),
                    Ok(Some(r)) => r,
                }
            }
        };
        match &item {
            Ok(StreamEvent::Done { .. }) => {
                // Finished: close the connection and free the slot now.
                st.rest = None;
                st.permit = None;
                st.head.clear();
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(provider = %st.circuit.provider, error = %e, "LLM stream failed after the first token");
                if e.is_provider_failure() {
                    st.circuit.record(Outcome::Failure, false);
                }
                st.rest = None;
                st.permit = None;
                st.head.clear();
            }
        }
        Some((item, st))
    })
    .boxed()
}

// ---- circuit breaker ----

#[derive(Debug, Clone, Copy, PartialEq)]
enum CircuitState {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { trial_in_flight: bool },
}

struct Circuit {
    provider: String,
    threshold: u32,
    cooldown: Duration,
    state: Mutex<CircuitState>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Success,
    Failure,
    /// Says nothing about the provider's health (rate limit, 4xx, our queue, abandoned call).
    Neutral,
}

impl Circuit {
    fn lock(&self) -> std::sync::MutexGuard<'_, CircuitState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a call, or fails fast with `CircuitOpen`.
    fn acquire(this: &Arc<Circuit>) -> Result<Ticket, LlmError> {
        if this.threshold == 0 {
            return Ok(Ticket {
                circuit: this.clone(),
                trial: false,
                resolved: false,
            });
        }
        let mut st = this.lock();
        let trial = match *st {
            CircuitState::Closed { .. } => false,
            CircuitState::Open { until } if Instant::now() >= until => {
                tracing::info!(provider = %this.provider, "circuit half-open: letting one trial call through");
                *st = CircuitState::HalfOpen { trial_in_flight: true };
                true
            }
            CircuitState::HalfOpen { trial_in_flight: false } => {
                *st = CircuitState::HalfOpen { trial_in_flight: true };
                true
            }
            CircuitState::Open { .. } | CircuitState::HalfOpen { trial_in_flight: true } => {
                return Err(LlmError::CircuitOpen {
                    provider: this.provider.clone(),
                });
            }
        };
        Ok(Ticket {
            circuit: this.clone(),
            trial,
            resolved: false,
        })
    }

    fn record(&self, outcome: Outcome, trial: bool) {
        if self.threshold == 0 {
            return;
        }
        let mut st = self.lock();
        let open = CircuitState::Open {
            until: Instant::now() + self.cooldown,
        };
        match (outcome, *st) {
            (Outcome::Success, CircuitState::Closed { .. }) => *st = CircuitState::Closed { failures: 0 },
            (Outcome::Success, _) => {
                tracing::info!(provider = %self.provider, "circuit closed");
                *st = CircuitState::Closed { failures: 0 };
            }
            (Outcome::Failure, CircuitState::Closed { failures }) => {
                let failures = failures.saturating_add(1);
                if failures >= self.threshold {
                    tracing::warn!(provider = %self.provider, failures, cooldown_ms = self.cooldown.as_millis() as u64, "circuit opened");
                    *st = open;
                } else {
                    *st = CircuitState::Closed { failures };
                }
            }
            (Outcome::Failure, CircuitState::HalfOpen { .. }) => {
                tracing::warn!(provider = %self.provider, "trial call failed; circuit re-opened");
                *st = open;
            }
            (Outcome::Failure, CircuitState::Open { .. }) => {}
            (Outcome::Neutral, CircuitState::HalfOpen { .. }) if trial => {
                *st = CircuitState::HalfOpen { trial_in_flight: false };
            }
            (Outcome::Neutral, _) => {}
        }
    }
}

/// One admitted call. Dropped unresolved (e.g. the caller gave up while waiting) = neutral.
struct Ticket {
    circuit: Arc<Circuit>,
    trial: bool,
    resolved: bool,
}

impl Ticket {
    fn resolve(mut self, outcome: Outcome) {
        self.resolved = true;
        self.circuit.record(outcome, self.trial);
    }

    fn success(self) {
        self.resolve(Outcome::Success)
    }

    fn failure(self) {
        self.resolve(Outcome::Failure)
    }

    fn neutral(self) {
        self.resolve(Outcome::Neutral)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.resolved {
            self.circuit.record(Outcome::Neutral, self.trial);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn circuit(threshold: u32, cooldown_ms: u64) -> Arc<Circuit> {
        Arc::new(Circuit {
            provider: "p".into(),
            threshold,
            cooldown: Duration::from_millis(cooldown_ms),
            state: Mutex::new(CircuitState::Closed { failures: 0 }),
        })
    }

    #[test]
    fn backoff_grows_with_jitter_and_cap() {
        let p = ReliabilityPolicy {
            retry_base_delay: Duration::from_millis(100),
            retry_max_delay: Duration::from_millis(1000),
            ..ReliabilityPolicy::default()
        };
        for _ in 0..50 {
            let b0 = p.backoff(0);
            assert!(
                b0 >= Duration::from_millis(50) && b0 <= Duration::from_millis(100),
                "{b0:?}"
            );
            let b2 = p.backoff(2);
            assert!(
                b2 >= Duration::from_millis(200) && b2 <= Duration::from_millis(400),
                "{b2:?}"
            );
            let b9 = p.backoff(40);
            assert!(
                b9 >= Duration::from_millis(500) && b9 <= Duration::from_millis(1000),
                "{b9:?}"
            );
        }
    }

    #[test]
    fn circuit_opens_half_opens_and_closes() {
        let c = circuit(2, 0);
        Circuit::acquire(&c).unwrap().failure();
        Circuit::acquire(&c).unwrap().failure();
        // Cooldown 0: the next call is the trial; a second concurrent one is refused.
        let trial = Circuit::acquire(&c).unwrap();
        assert!(trial.trial);
        assert!(matches!(Circuit::acquire(&c), Err(LlmError::CircuitOpen { .. })));
        // An abandoned trial lets another trial through.
        drop(trial);
        let trial = Circuit::acquire(&c).unwrap();
        assert!(trial.trial);
        trial.success();
        assert_eq!(*c.lock(), CircuitState::Closed { failures: 0 });
    }

    #[test]
    fn circuit_stays_open_during_cooldown_and_success_resets_count() {
        let c = circuit(2, 60_000);
        Circuit::acquire(&c).unwrap().failure();
        Circuit::acquire(&c).unwrap().success();
        Circuit::acquire(&c).unwrap().failure();
        assert!(Circuit::acquire(&c).is_ok(), "success reset the count");
        Circuit::acquire(&c).unwrap().failure();
        let e = Circuit::acquire(&c).err().unwrap();
        assert_eq!(e, LlmError::CircuitOpen { provider: "p".into() });
        let disabled = circuit(0, 0);
        for _ in 0..10 {
            Circuit::acquire(&disabled).unwrap().failure();
        }
        assert!(Circuit::acquire(&disabled).is_ok());
    }
}
