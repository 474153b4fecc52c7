//! Whether a provider answers: one request to its model list with the configured key (`confab
//! check-config`). Nothing is generated, so it costs nothing.

use std::time::Duration;

use crate::http::{build_client, describe, join_path, parse_base_url};
use crate::{ANTHROPIC_VERSION, DEFAULT_ANTHROPIC_BASE_URL, DEFAULT_OPENAI_BASE_URL, ProviderConfig, ProviderKind};

/// What the provider said.
#[derive(Debug, PartialEq, Eq)]
pub enum Probe {
    /// It answered the model list with a success.
    Answered,
    /// It answered, without a model list at that path (some compatible servers have none).
    NoModelList(u16),
}

/// Asks `GET …/models` of the provider (OpenAI, compatible servers and Anthropic: `{base}/models` or
/// `{base}/v1/models`; Azure: `{endpoint}/openai/models`), with its key, within `timeout`. An error says
/// what to check: the address, or the key.
pub async fn probe(cfg: &ProviderConfig, key: Option<&str>, timeout: Duration) -> Result<Probe, String> {
    let (url, headers): (reqwest::Url, Vec<(&str, String)>) = match cfg.kind {
        ProviderKind::OpenAi | ProviderKind::OpenAiCompatible => {
            let base = cfg.base_url.as_deref().unwrap_or(DEFAULT_OPENAI_BASE_URL);
            let url = join_path(
                parse_base_url("base_url", base).map_err(|e| e.to_string())?,
                &["models"],
            );
            (
                url,
                key.map(|k| vec![("authorization", format!("Bearer {k}"))])
                    .unwrap_or_default(),
            )
        }
        ProviderKind::Azure => {
            let base = cfg.base_url.as_deref().ok_or("base_url is required")?;
            let mut url = join_path(
                parse_base_url("base_url", base).map_err(|e| e.to_string())?,
                &["openai", "models"],
            );
            let version = cfg
                .azure_api_version
                .as_deref()
                .unwrap_or(crate::DEFAULT_AZURE_API_VERSION);
            url.set_query(Some(&format!("api-version={version}")));
            (url, key.map(|k| vec![("api-key", k.to_string())]).unwrap_or_default())
        }
        ProviderKind::Anthropic => {
            let base = cfg.base_url.as_deref().unwrap_or(DEFAULT_ANTHROPIC_BASE_URL);
            let url = join_path(
                parse_base_url("base_url", base).map_err(|e| e.to_string())?,
                &["v1", "models"],
            );
            let mut headers = vec![("anthropic-version", ANTHROPIC_VERSION.to_string())];
            headers.extend(key.map(|k| ("x-api-key", k.to_string())));
            (url, headers)
        }
        ProviderKind::Builtin => return Ok(Probe::Answered),
    };
    // The client the provider's adapter uses (no egress policy: the file's providers are the operator's).
    let client = build_client(Duration::from_millis(cfg.connect_timeout_ms.max(1)).min(timeout), None)
        .map_err(|e| e.to_string())?;
    let mut request = client.get(url.clone()).timeout(timeout);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let host = format!(
        "{}:{}",
        url.host_str().unwrap_or("?"),
        url.port_or_known_default().unwrap_or(0)
    );
    let response = request
        .send()
        .await
        .map_err(|e| format!("cannot reach {host}: {}", describe(e)))?;
    match response.status().as_u16() {
        200..=299 => Ok(Probe::Answered),
        401 | 403 => Err(format!(
            "{host} refused the key (HTTP {}): check the variable api_key_env names",
            response.status().as_u16()
        )),
        code @ (404 | 405) => Ok(Probe::NoModelList(code)),
        code => Err(format!("{host} answered HTTP {code} to a model list request")),
    }
}
