//! NIM-format message copies ("data sync", 消息抄送): every message, and every bot reply once final, is
//! POSTed to `[nim] webhook_url` as NIM's `eventType: "1"` JSON (all values strings), with headers
//! `AppKey`, `CurTime` (ms), `MD5` (hex MD5 of the body) and `CheckSum` = `sha1(AppSecret + MD5 + CurTime)`.
//!
//! The URL keeps one endpoint of the durable outbox (id and format `nim`): copies are recorded in the
//! transaction of the message, delivered in order per conversation, retried and dead-lettered like every
//! webhook; this module renders them ([`NimFormat`]).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use confab_domain::model::{ChannelKind, Message};
use confab_domain::outbox::{RecordedChange, RecordedEvent};
use confab_domain::{DomainResult, now_millis};
use confab_service::Confab;
use confab_service::webhooks::{ManagedEndpoint, WebhookEndpoints, WebhookFormat};
use md5::{Digest, Md5};
use serde_json::json;

use crate::auth::Authenticator;
use crate::messages::nim_view;

/// The name of the format, and the id of the outbox endpoint `[nim] webhook_url` keeps.
pub const FORMAT: &str = "nim";

/// NIM's message type names in copies.
fn type_name(nim_type: i64) -> &'static str {
    match nim_type {
        0 => "TEXT",
        1 => "PICTURE",
        2 => "AUDIO",
        3 => "VIDEO",
        4 => "LOCATION",
        6 => "FILE",
        10 => "TIPS",
        _ => "CUSTOM",
    }
}

/// Registers the NIM format with the outbox relay and keeps its endpoint at `url` (none when empty).
pub async fn start(
    service: Arc<Confab>,
    endpoints: Arc<dyn WebhookEndpoints>,
    auth: Arc<Authenticator>,
    url: String,
) -> DomainResult<()> {
    endpoints.register_format(Arc::new(NimFormat { service, auth }));
    if url.is_empty() {
        return endpoints.remove_managed(FORMAT).await;
    }
    endpoints
        .put_managed(ManagedEndpoint {
            format: FORMAT,
            url,
            // Messages, and bot replies once final, whatever their end.
            events: vec!["message.sent".into(), "bot_reply.*".into()],
            enabled: true,
        })
        .await
}

pub struct NimFormat {
    service: Arc<Confab>,
    auth: Arc<Authenticator>,
}

#[async_trait]
impl WebhookFormat for NimFormat {
    fn name(&self) -> &'static str {
        FORMAT
    }

    async fn render(&self, event: &RecordedEvent) -> DomainResult<Option<Bytes>> {
        match &event.change {
            RecordedChange::Message { message } => self.copy(message).await,
            _ => Ok(None),
        }
    }

    fn sign(&self, body: &[u8]) -> Vec<(&'static str, String)> {
        let md5 = hex::encode(Md5::digest(body));
        let cur_time = now_millis().to_string();
        let checksum = self.auth.credentials().checksum(&md5, &cur_time);
        vec![
            ("appkey", self.auth.credentials().app_key.clone()),
            ("curtime", cur_time),
            ("md5", md5),
            ("checksum", checksum),
        ]
    }
}

impl NimFormat {
    async fn copy(&self, m: &Message) -> DomainResult<Option<Bytes>> {
        let lookup = self.service.lookup();
        let Some(channel) = lookup.channel(&m.channel_id).await? else {
            // A conversation deleted since: NIM's copy names its peer, which can no longer be found.
            return Ok(None);
        };
        let sender = m.sender_id.clone();
        let nick = match &sender {
            Some(id) => lookup.user(id).await?.map(|u| u.nickname).unwrap_or_default(),
            None => String::new(),
        };
        let (conv, to) = match channel.kind {
            ChannelKind::Direct => {
                let members = lookup.member_ids(&channel.id).await?;
                let other = members.into_iter().find(|u| Some(u) != sender.as_ref());
                ("PERSON", other.map(|u| u.as_str().to_string()).unwrap_or_default())
            }
            ChannelKind::Group => ("TEAM", channel.id.as_str().to_string()),
        };
        let (nim_type, body) = nim_view(m);
        let (body_text, attach) = match nim_type {
            0 | 10 => (m.text.clone(), String::new()),
            _ => (String::new(), body.to_string()),
        };
        let payload = json!({
            "eventType": "1",
            "convType": conv,
            "to": to,
            "fromAccount": sender.as_ref().map(|s| s.as_str()).unwrap_or_default(),
            "fromClientType": "REST",
            "fromDeviceId": "",
            "fromNick": nick,
            "msgTimestamp": m.created_at.to_string(),
            "msgType": type_name(nim_type),
            "body": body_text,
            "attach": attach,
            "msgidClient": m.client_msg_id.clone().unwrap_or_default(),
            "msgidServer": m.id.0.to_string(),
            "resendFlag": "0",
        });
        Ok(Some(Bytes::from(payload.to_string())))
    }
}
