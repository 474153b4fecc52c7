//! `[telemetry]`: OpenTelemetry traces exported over OTLP/HTTP (off while `otlp_endpoint` is empty). See
//! `docs/tracing.md`.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP address (protobuf), e.g. `http://localhost:4318`: `/v1/traces` is added
    /// when the URL has no path; a URL with a path is used as it is. Empty (default): no traces, and no
    /// cost. Also `CONFAB_TELEMETRY__OTLP_ENDPOINT`.
    pub otlp_endpoint: String,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// The share of new traces kept (0 to 1), decided at the root: a request carrying a sampled
    /// `traceparent`, and every span under a kept root, is kept (parent-based).
    pub sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: String::new(),
            service_name: "confab".into(),
            sample_ratio: 1.0,
        }
    }
}

impl TelemetryConfig {
    pub fn enabled(&self) -> bool {
        !self.otlp_endpoint.trim().is_empty()
    }

    /// The URL spans are POSTed to: `otlp_endpoint`, with `/v1/traces` when it names no path.
    pub fn traces_url(&self) -> String {
        let base = self.otlp_endpoint.trim();
        let after_scheme = base.split_once("://").map_or(base, |(_, rest)| rest);
        match after_scheme.find('/') {
            Some(i) if after_scheme[i..].trim_end_matches('/').is_empty() => {
                format!("{}/v1/traces", base.trim_end_matches('/'))
            }
            Some(_) => base.to_string(),
            None => format!("{base}/v1/traces"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_url_adds_the_signal_path_only_to_a_bare_address() {
        let url = |e: &str| {
            TelemetryConfig {
                otlp_endpoint: e.into(),
                ..TelemetryConfig::default()
            }
            .traces_url()
        };
        assert_eq!(url("http://collector:4318"), "http://collector:4318/v1/traces");
        assert_eq!(url("http://collector:4318/"), "http://collector:4318/v1/traces");
        assert_eq!(url("https://otlp.example/v1/traces"), "https://otlp.example/v1/traces");
        assert_eq!(
            url("https://gw.example/otlp/v1/traces"),
            "https://gw.example/otlp/v1/traces"
        );
        assert!(!TelemetryConfig::default().enabled());
    }
}
