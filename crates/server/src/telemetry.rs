//! Logs and traces: the process's one `tracing` subscriber.
//!
//! Logs go to stdout (text or JSON), filtered by `CONFAB_LOG` (default `info`). With `[telemetry]
//! otlp_endpoint` set, the spans of Confab's crates (debug level, so the default logs never show them) are also
//! exported as OpenTelemetry traces over OTLP/HTTP by a batch processor on a thread of its own, and every JSON
//! log line written inside one carries its `trace_id` and `span_id`. Each layer has its own filter: with
//! telemetry off, nothing wants the debug spans and they cost a disabled callsite check (`docs/tracing.md`).

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::{Level, Metadata, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, filter};

use crate::config::TelemetryConfig;

/// Set once traces are exported: requests then continue a caller's `traceparent`.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// The installed subscriber's exporter. [`Telemetry::shutdown`] (or dropping it) flushes the spans not yet
/// sent; call it once the server has stopped.
#[must_use = "dropping it shuts the exporter down"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans still queued and stops the exporter (bounded by the processor's own timeout).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(provider) = self.provider.take() {
            EXPORTING.store(false, Ordering::Relaxed);
            if let Err(e) = provider.shutdown() {
                // The subscriber may already be gone: say it where an operator sees it.
                eprintln!("telemetry: flushing spans at exit failed: {e}");
            }
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Installs the global subscriber: logs in `log_format` (`text` or `json`) and, when `cfg` names an
/// endpoint, the OTLP exporter. Call once, outside any async runtime (the exporter's HTTP client is a
/// blocking one, used from the batch processor's thread).
pub fn init(log_format: &str, cfg: &TelemetryConfig) -> anyhow::Result<Telemetry> {
    let json = log_format == "json";
    let provider = cfg.enabled().then(|| tracer_provider(cfg)).transpose()?;
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = vec![log_layer(json, provider.is_some())];
    if let Some(p) = &provider {
        let otel = tracing_opentelemetry::layer()
            .with_tracer(p.tracer("confab"))
            // No per-span extras (code location, thread, target, busy/idle timings): less work per span.
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            .with_filter(filter::filter_fn(exported).with_max_level_hint(Level::DEBUG));
        layers.push(Box::new(otel));
        opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    }
    tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .context("installing the log subscriber")?;
    if provider.is_some() {
        EXPORTING.store(true, Ordering::Relaxed);
        tracing::info!(
            endpoint = %cfg.traces_url(),
            service = %cfg.service_name,
            sample_ratio = cfg.sample_ratio,
            "exporting traces over OTLP"
        );
    }
    Ok(Telemetry { provider })
}

/// The logs to stdout, filtered by `CONFAB_LOG`. Span enter and exit are never printed.
fn log_layer(json: bool, trace_ids: bool) -> Box<dyn Layer<Registry> + Send + Sync> {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_env("CONFAB_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let layer = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal());
    match (json, trace_ids) {
        (false, _) => layer.with_filter(filter).boxed(),
        (true, false) => layer.json().with_filter(filter).boxed(),
        (true, true) => layer
            .json()
            .event_format(WithTraceIds(format().json()))
            .with_filter(filter)
            .boxed(),
    }
}

/// The JSON event format of `log_layer`, without the target (as the text format).
fn format() -> format::Format {
    format::format().with_target(false)
}

/// What the OTLP layer takes: the spans of Confab's crates down to debug, their events down to debug (the
/// first token of a reply, say), and warnings and errors of other crates when inside one of those spans.
fn exported(meta: &Metadata<'_>) -> bool {
    let ours = meta.target().starts_with("confab");
    if meta.is_span() {
        ours && *meta.level() <= Level::DEBUG
    } else if ours {
        *meta.level() <= Level::DEBUG
    } else {
        *meta.level() <= Level::WARN
    }
}

fn tracer_provider(cfg: &TelemetryConfig) -> anyhow::Result<SdkTracerProvider> {
    let url = cfg.traces_url();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url.clone())
        .build()
        .with_context(|| format!("telemetry.otlp_endpoint: cannot export to {url}"))?;
    let ratio = if cfg.sample_ratio.is_finite() {
        cfg.sample_ratio.clamp(0.0, 1.0)
    } else {
        1.0
    };
    // The ratio decides at the root, whether the root is ours or a caller's (so a client sending a sampled
    // `traceparent` cannot raise the share kept); spans under a decided parent follow it.
    let sampler = Sampler::parent_based(Sampler::TraceIdRatioBased(ratio))
        .with_remote_parent_sampled(Sampler::TraceIdRatioBased(ratio));
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(cfg.service_name.clone())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(sampler)
        .with_resource(resource)
        .build())
}

/// A JSON log line with the `trace_id` and `span_id` of the span it was written in, when that span is
/// traced: the inner format's object, with the two fields added before its closing brace.
struct WithTraceIds<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let Some((trace_id, span_id)) = current_ids() else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::with_capacity(256);
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match line.rfind('}') {
            Some(end) => {
                writer.write_str(&line[..end])?;
                write!(writer, r#","trace_id":"{trace_id}","span_id":"{span_id}""#)?;
                writer.write_str(&line[end..])
            }
            None => writer.write_str(&line),
        }
    }
}

/// The trace and span ids of the current span, when it has a valid OpenTelemetry context (sampled or not).
fn current_ids() -> Option<(opentelemetry::TraceId, opentelemetry::SpanId)> {
    let span = tracing::Span::current();
    if span.is_none() {
        return None;
    }
    let cx = span.context();
    let otel = cx.span();
    let sc = otel.span_context();
    sc.is_valid().then(|| (sc.trace_id(), sc.span_id()))
}

/// Continues the caller's trace when a request carries a W3C `traceparent` and traces are exported. Call
/// it on a span just created, before it is entered.
pub fn continue_remote_trace(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    if !EXPORTING.load(Ordering::Relaxed) || span.is_disabled() || !headers.contains_key("traceparent") {
        return;
    }
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    let _ = span.set_parent(cx);
}

struct HeaderExtractor<'a>(&'a axum::http::HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The span of one HTTP request (any surface): method and path only, since query strings may carry tokens.
/// A caller's `traceparent` is continued when traces are exported.
pub fn http_span<B>(req: &axum::http::Request<B>) -> tracing::Span {
    let span = tracing::debug_span!(
        "http",
        otel.name = %req.method(),
        otel.kind = "server",
        method = %req.method(),
        path = %req.uri().path(),
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    continue_remote_trace(&span, req.headers());
    span
}

/// Records the status on the request's span (a 5xx marks it failed), then logs the response as
/// tower-http does by default (a debug event).
pub fn on_response<B>(res: &axum::http::Response<B>, latency: std::time::Duration, span: &tracing::Span) {
    use tower_http::trace::OnResponse;
    if !span.is_disabled() {
        span.record("http.response.status_code", res.status().as_u16());
        if res.status().is_server_error() {
            span.record("otel.status_code", "error");
        }
    }
    tower_http::trace::DefaultOnResponse::default().on_response(res, latency, span);
}

/// Names the request's span by its matched route (a route layer; only while traces are exported).
pub async fn name_by_route(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    if let Some(route) = req.extensions().get::<axum::extract::MatchedPath>() {
        let span = tracing::Span::current();
        if !span.is_disabled() {
            span.record("http.route", route.as_str());
            // On the OpenTelemetry span itself: it may have started already (a log line written in it).
            span.context()
                .span()
                .update_name(format!("{} {}", req.method(), route.as_str()));
        }
    }
    next.run(req).await
}
