//! Whether the configured dependencies answer: the database, NATS, the object store, every LLM provider of
//! the file, and the webhooks of the file (through the egress policy, as deliveries go).

use std::time::Duration;

use futures_util::future::join_all;

use confab_service::blobs::FileBlobs;

use super::Finding;
use crate::Config;
use crate::config::{BusBackend, FilesBackend, StorageBackend};

type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// How long each dependency has to answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Asks every dependency at once; a finding for each that does not answer as it should.
pub async fn reachability(config: &Config, env: Env<'_>) -> Vec<Finding> {
    let mut checks: Vec<futures_util::future::BoxFuture<'_, Option<Finding>>> =
        vec![Box::pin(store(config)), Box::pin(bus(config)), Box::pin(files(config))];
    for (i, p) in config.providers.iter().enumerate() {
        let key = p.api_key_env.as_deref().and_then(env);
        checks.push(Box::pin(async move {
            let answer = confab_llm::probe::probe(p, key.as_deref(), TIMEOUT).await;
            answer
                .err()
                .map(|e| Finding::error(format!("providers[{i}] ({})", p.name), e))
        }));
    }
    let policy = config.egress_policy().unwrap_or_default();
    if config.telemetry.enabled() {
        checks.push(Box::pin(async move {
            let url = config.telemetry.traces_url();
            collector(&url)
                .await
                .err()
                .map(|e| Finding::error("telemetry.otlp_endpoint", e))
        }));
    }
    for (key, url) in [
        ("pre_send_webhook.url", &config.pre_send_webhook.url),
        ("nim.webhook_url", &config.nim.webhook_url),
    ] {
        if !url.is_empty() {
            let policy = policy.clone();
            checks.push(Box::pin(async move {
                webhook(&policy, url).await.err().map(|e| Finding::error(key, e))
            }));
        }
    }
    join_all(checks).await.into_iter().flatten().collect()
}

async fn store(config: &Config) -> Option<Finding> {
    match config.storage.backend {
        StorageBackend::Sqlite => {
            let path = config.data_dir.join("confab.db");
            if !path.exists() {
                return None;
            }
            confab_store_sqlite::pending_migrations(&path)
                .err()
                .map(|e| Finding::error("data_dir", e.to_string()))
        }
        StorageBackend::Postgres => {
            let pg = crate::storage::postgres_config(config).ok()?;
            match tokio::time::timeout(TIMEOUT, confab_store_postgres::pending_migrations(&pg)).await {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(Finding::error("storage.postgres_url", e.to_string())),
                Err(_) => Some(Finding::error(
                    "storage.postgres_url",
                    format!("{} did not answer within {} s", pg.target(), TIMEOUT.as_secs()),
                )),
            }
        }
    }
}

async fn bus(config: &Config) -> Option<Finding> {
    if config.bus.backend != BusBackend::Nats {
        return None;
    }
    confab_bus_nats::probe(&config.bus.nats_url, TIMEOUT)
        .await
        .err()
        .map(|e| Finding::error("bus.nats_url", e.to_string()))
}

async fn files(config: &Config) -> Option<Finding> {
    if config.files.backend != FilesBackend::S3 {
        return None;
    }
    let blobs = match confab_files_object::ObjectBlobs::s3(&config.files.s3()) {
        Ok(b) => b,
        Err(e) => return Some(Finding::error("files", e.to_string())),
    };
    let probe = tokio::time::timeout(TIMEOUT, blobs.probe("check-config")).await;
    let reason = match probe {
        Ok(Ok(())) => return None,
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer within {} s", TIMEOUT.as_secs()),
    };
    Some(Finding::error(
        "files",
        format!("cannot write to {}: {reason}", blobs.describe()),
    ))
}

/// A webhook's address: resolved, allowed by the egress policy, and accepting a connection.
async fn webhook(policy: &confab_egress::EgressPolicy, raw: &str) -> Result<(), String> {
    let url = policy.check_url(raw).map_err(|e| e.to_string())?;
    let (host, port, addrs) = resolve(&url, 443).await?;
    if let Some(refused) = addrs.iter().find(|a| !policy.allows(a.ip())) {
        return Err(format!(
            "{host} resolves to {}, a private or reserved address: deliveries to it are refused unless \
             egress.allow_private lists it",
            refused.ip()
        ));
    }
    connect(&host, port, addrs).await
}

/// The OTLP collector accepts a connection (the operator's own address: no egress policy).
async fn collector(raw: &str) -> Result<(), String> {
    let url = url::Url::parse(raw).map_err(|e| format!("{raw:?}: {e}"))?;
    let (host, port, addrs) = resolve(&url, 4318).await?;
    connect(&host, port, addrs).await
}

/// The URL's host and port (`default_port` when it has none and its scheme none known), and its addresses.
async fn resolve(url: &url::Url, default_port: u16) -> Result<(String, u16, Vec<std::net::SocketAddr>), String> {
    let host = url.host_str().unwrap_or_default().trim_matches(['[', ']']).to_string();
    let port = url.port_or_known_default().unwrap_or(default_port);
    let addrs = tokio::time::timeout(TIMEOUT, tokio::net::lookup_host((host.as_str(), port)))
        .await
        .map_err(|_| format!("resolving {host} took longer than {} s", TIMEOUT.as_secs()))?
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    Ok((host, port, addrs))
}

/// Whether one of `addrs` accepts a connection within the timeout.
async fn connect(host: &str, port: u16, addrs: Vec<std::net::SocketAddr>) -> Result<(), String> {
    let mut last = String::from("no address");
    for addr in addrs {
        match tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = format!("no answer within {} s", TIMEOUT.as_secs()),
        }
    }
    Err(format!("cannot connect to {host}:{port}: {last}"))
}
