//! REST setup with the master token: users, session tokens, group and direct channels, bots.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::{StreamExt, TryStreamExt, stream};
use serde_json::{Value, json};

/// Users and channels are created with this many requests in flight.
const SETUP_CONCURRENCY: usize = 32;
/// Members per invite call.
const INVITE_CHUNK: usize = 200;

pub struct Api {
    http: reqwest::Client,
    base: String,
    master: String,
}

impl Api {
    pub fn new(http_base: &str, master: &str) -> Result<Api> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(SETUP_CONCURRENCY)
            .build()
            .context("building the HTTP client")?;
        Ok(Api {
            http,
            base: format!("{http_base}/api/v1"),
            master: master.to_string(),
        })
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method.clone(), &url).bearer_auth(&self.master);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.with_context(|| format!("{method} {url}"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            if status == reqwest::StatusCode::UNAUTHORIZED {
                bail!(
                    "{method} {url}: 401 unauthorized: is --token (or CONFAB_API_TOKEN) the server's master token? {text}"
                );
            }
            bail!("{method} {url}: {status}: {text}");
        }
        if text.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).with_context(|| format!("{method} {url}: response is not JSON: {text}"))
    }

    /// Registers an outbox webhook endpoint; returns its id.
    pub async fn create_webhook_endpoint(&self, url: &str, events: &[&str]) -> Result<String> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/webhooks/endpoints",
                Some(json!({ "url": url, "events": events, "description": "confab-bench" })),
            )
            .await?;
        v["id"].as_str().map(str::to_string).context("the endpoint has no id")
    }

    pub async fn delete_webhook_endpoint(&self, id: &str) -> Result<()> {
        self.call(reqwest::Method::DELETE, &format!("/webhooks/endpoints/{id}"), None)
            .await
            .map(drop)
    }

    pub async fn create_user(&self, id: &str) -> Result<()> {
        self.call(reqwest::Method::POST, "/users", Some(json!({ "id": id })))
            .await
            .map(drop)
    }

    pub async fn issue_session(&self, id: &str) -> Result<String> {
        let v = self
            .call(reqwest::Method::POST, &format!("/users/{id}/sessions"), None)
            .await?;
        v.get("token")
            .and_then(Value::as_str)
            .map(str::to_string)
            .with_context(|| format!("no token in session response {v}"))
    }

    /// Creates the users and returns one session token for each, in order.
    pub async fn users_with_tokens(&self, ids: &[String]) -> Result<Vec<String>> {
        stream::iter(ids.iter())
            .map(|id| async move {
                self.create_user(id).await?;
                self.issue_session(id).await
            })
            .buffered(SETUP_CONCURRENCY)
            .try_collect()
            .await
    }

    /// Creates a group with the given members: the first ones at creation, the rest by invitations.
    pub async fn create_group(&self, id: &str, members: &[String]) -> Result<()> {
        let first = &members[..members.len().min(INVITE_CHUNK)];
        self.call(
            reqwest::Method::POST,
            "/channels",
            Some(json!({ "kind": "group", "id": id, "user_ids": first })),
        )
        .await?;
        for chunk in members[first.len()..].chunks(INVITE_CHUNK) {
            self.call(
                reqwest::Method::POST,
                &format!("/channels/{id}/members"),
                Some(json!({ "user_ids": chunk })),
            )
            .await?;
        }
        Ok(())
    }

    /// Creates many groups, `SETUP_CONCURRENCY` at a time.
    pub async fn create_groups(&self, groups: &[(String, Vec<String>)]) -> Result<()> {
        stream::iter(groups.iter())
            .map(|(id, members)| self.create_group(id, members))
            .buffer_unordered(SETUP_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await
            .map(drop)
    }

    /// Creates a bot (a user that replies through an LLM provider) with the given settings.
    pub async fn create_bot(&self, id: &str, settings: Value) -> Result<()> {
        self.call(
            reqwest::Method::POST,
            "/bots",
            Some(json!({ "id": id, "nickname": "confab-bench bot", "settings": settings })),
        )
        .await
        .map(drop)
    }

    /// Opens the direct channel of each user with `other`; returns the channel ids in order.
    pub async fn direct_channels(&self, users: &[String], other: &str) -> Result<Vec<String>> {
        stream::iter(users.iter())
            .map(|u| async move {
                let v = self
                    .call(
                        reqwest::Method::POST,
                        "/channels",
                        Some(json!({ "kind": "direct", "user_ids": [u, other] })),
                    )
                    .await?;
                v.get("id")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .with_context(|| format!("no id in the channel response {v}"))
            })
            .buffered(SETUP_CONCURRENCY)
            .try_collect()
            .await
    }

    /// The channel's newest sequence and member count.
    pub async fn channel_state(&self, id: &str) -> Result<(u64, u64)> {
        let v = self
            .call(reqwest::Method::GET, &format!("/channels/{id}"), None)
            .await?;
        let last = v
            .get("last_seq")
            .and_then(Value::as_u64)
            .context("channel without last_seq")?;
        let members = v
            .get("member_count")
            .and_then(Value::as_u64)
            .context("channel without member_count")?;
        Ok((last, members))
    }
}
