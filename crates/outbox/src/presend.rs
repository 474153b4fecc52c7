//! The pre-send webhook: the application's endpoint sees each message before it is stored and answers
//! allow, flag (stored and listed for review), reject (with a code and a reason) or modify (new text and/or
//! data), within a budget. A timeout, an
//! error status or an unreadable answer is no verdict, which the service decides by `fail_open`: allowed,
//! or refused with a reason the sender can act on. Requests are signed with the Standard Webhooks headers, like every other delivery.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use confab_domain::model::NewMessage;
use confab_domain::{DomainError, DomainResult, now_millis};
use confab_egress::EgressPolicy;
use confab_service::moderation::{Draft, HookVerdict, SendHook};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::signature;

#[derive(Clone, Debug)]
pub struct PreSendConfig {
    pub url: String,
    /// `whsec_…`: signs every request.
    pub secret: String,
    /// The whole exchange, connect to answer.
    pub budget: Duration,
    /// On timeout or error: allow (true) or refuse (false).
    pub fail_open: bool,
}

pub struct PreSendHook {
    client: reqwest::Client,
    url: reqwest::Url,
    key: Vec<u8>,
    budget: Duration,
    fail_open: bool,
}

/// What the endpoint answers.
#[derive(Deserialize)]
struct Answer {
    action: String,
    #[serde(default)]
    code: Option<Value>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    data: Option<Value>,
}

/// The rule name of a refusal by the hook (its own code, when it gives one, is kept after it).
const RULE: &str = "pre_send_webhook";

impl PreSendHook {
    pub fn new(cfg: PreSendConfig, policy: &EgressPolicy) -> DomainResult<PreSendHook> {
        let url = policy
            .check_url(&cfg.url)
            .map_err(|e| DomainError::invalid("pre_send_webhook.url", e.to_string()))?;
        let key = signature::secret_key(&cfg.secret)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| DomainError::invalid("pre_send_webhook.secret", "must be a whsec_ secret (base64)"))?;
        let client = policy
            .client(cfg.budget, "Confab-Webhooks")
            .map_err(|e| DomainError::Internal(format!("pre-send client: {e}")))?;
        Ok(PreSendHook {
            client,
            url,
            key,
            budget: cfg.budget,
            fail_open: cfg.fail_open,
        })
    }

    async fn ask(&self, msg: &NewMessage, draft: Draft) -> Result<HookVerdict, String> {
        let mut message = json!({
            "channel_id": msg.channel_id,
            "sender_id": msg.sender_id,
            "type": msg.kind.as_str(),
            "text": msg.text,
            "custom_type": msg.custom_type,
            "data": msg.data,
            "mentions": msg.mentions,
            "client_msg_id": msg.client_msg_id,
            "parent_id": msg.parent_id.map(|p| p.0),
        });
        // An edit is checked as a send of the message as edited; `edit_of` tells the endpoint which one.
        if let Draft::Edit { id, .. } = draft {
            message["edit_of"] = json!(id.0);
        }
        let body = serde_json::to_vec(&json!({
            "type": "message.pre_send",
            "timestamp": now_millis(),
            "data": { "message": message },
        }))
        .map_err(|e| e.to_string())?;
        let id = format!("pre_{}", hex::encode(rand::random::<[u8; 12]>()));
        let timestamp = now_millis() / 1000;
        let resp = self
            .client
            .post(self.url.clone())
            .timeout(self.budget)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature::sign(&self.key, &id, timestamp, &body))
            .body(body)
            .send()
            .await
            .map_err(|e| crate::short_error(&e))?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status().as_u16()));
        }
        let answer: Answer = tokio::time::timeout(self.budget, resp.json())
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| format!("unreadable answer: {e}"))?;
        match answer.action.as_str() {
            "allow" => Ok(HookVerdict::Allow),
            "flag" => Ok(HookVerdict::Flag { rule: RULE.into() }),
            "reject" => Ok(HookVerdict::Reject {
                rule: match answer.code {
                    Some(Value::String(c)) if !c.is_empty() => format!("{RULE}:{c}"),
                    Some(Value::Number(n)) => format!("{RULE}:{n}"),
                    _ => RULE.to_string(),
                },
                reason: answer
                    .reason
                    .filter(|r| !r.trim().is_empty())
                    .unwrap_or_else(|| "The message was not accepted.".into()),
            }),
            "modify" if answer.text.is_some() || answer.data.is_some() => Ok(HookVerdict::Modify {
                text: answer.text,
                data: answer.data,
            }),
            other => Err(format!("unknown action {other:?}")),
        }
    }
}

#[async_trait]
impl SendHook for PreSendHook {
    fn name(&self) -> &'static str {
        RULE
    }

    fn fail_open(&self) -> bool {
        self.fail_open
    }

    async fn check(&self, msg: &NewMessage, draft: Draft) -> Result<HookVerdict, String> {
        let started = Instant::now();
        // The budget covers everything, a slow body included.
        let verdict = match tokio::time::timeout(self.budget, self.ask(msg, draft)).await {
            Ok(v) => v,
            Err(_) => Err("timed out".into()),
        };
        metrics::histogram!("confab_presend_seconds").record(started.elapsed().as_secs_f64());
        verdict
    }
}
