//! `send --webhook-sink ADDR`: a webhook endpoint for the audit benchmark. The bench listens on ADDR,
//! registers it as an outbox endpoint for `message.sent`, and counts the distinct events it receives, so a
//! run shows the send throughput with a subscription on and how long the relay takes to catch up.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use axum::http::{HeaderMap, StatusCode};

use crate::rest::Api;

#[derive(Default)]
pub struct Received {
    pub ids: HashSet<String>,
    pub requests: u64,
    pub last: Option<Instant>,
}

pub struct Sink {
    pub received: Arc<Mutex<Received>>,
    pub endpoint_id: String,
}

impl Sink {
    /// Listens on `addr` (loopback) and registers the endpoint with the server.
    pub async fn start(api: &Api, addr: SocketAddr) -> Result<Sink> {
        let received: Arc<Mutex<Received>> = Arc::default();
        let r = received.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap| {
                let r = r.clone();
                async move {
                    let id = headers
                        .get("webhook-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    let mut r = r.lock().unwrap_or_else(|e| e.into_inner());
                    r.requests += 1;
                    r.ids.insert(id);
                    r.last = Some(Instant::now());
                    StatusCode::NO_CONTENT
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("webhook sink on {addr}"))?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let endpoint_id = api
            .create_webhook_endpoint(&format!("http://{addr}/hook"), &["message.sent"])
            .await?;
        Ok(Sink { received, endpoint_id })
    }

    /// Distinct events received so far.
    pub fn count(&self) -> usize {
        self.received.lock().unwrap_or_else(|e| e.into_inner()).ids.len()
    }
}
