//! NIM-format message copies ("data sync", 消息抄送): every message, and every bot reply once final, is
//! POSTed to `[nim] webhook_url` as NIM's `eventType: "1"` JSON (all values strings), with headers
//! `AppKey`, `CurTime` (ms), `MD5` (hex MD5 of the body) and `CheckSum` = `sha1(AppSecret + MD5 + CurTime)`.
//! Delivery (timeout, retries, egress policy) is the shared dispatcher's.

use std::sync::Arc;

use confab_domain::model::{ChannelKind, Message};
use confab_domain::ports::Subscription;
use confab_domain::{DomainResult, Event, now_millis};
use confab_service::Confab;
use confab_webhooks::{Delivery, Dispatcher};
use md5::{Digest, Md5};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::messages::nim_view;

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

pub struct NimWebhooks {
    service: Arc<Confab>,
    dispatcher: Arc<Dispatcher>,
    auth: Arc<Authenticator>,
    url: String,
}

impl NimWebhooks {
    /// Follows the event stream until `shutdown`; nothing runs when `url` is empty.
    pub fn start(
        service: Arc<Confab>,
        dispatcher: Arc<Dispatcher>,
        auth: Arc<Authenticator>,
        url: String,
        shutdown: CancellationToken,
    ) {
        if url.is_empty() {
            return;
        }
        let mut stream = service
            .bus()
            .subscribe_with(Subscription {
                interest: |e| matches!(e, Event::MessageCreated(_) | Event::MessageUpdated(_)),
                partitions: 1,
            })
            .pop()
            .expect("one partition");
        let this = Arc::new(NimWebhooks {
            service,
            dispatcher,
            auth,
            url,
        });
        tokio::spawn(async move {
            loop {
                let ev = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    ev = stream.next() => ev,
                };
                let m = match ev {
                    // A bot's reply is copied once, final and whole.
                    Some(Event::MessageCreated(m)) if m.reply.is_none() && !m.deleted => m,
                    Some(Event::MessageUpdated(m))
                        if m.reply.as_ref().is_some_and(|r| r.state.is_final()) && !m.edited =>
                    {
                        m
                    }
                    Some(_) => continue,
                    None => break,
                };
                let this = this.clone();
                tokio::spawn(async move {
                    if let Err(e) = this.copy(&m).await {
                        tracing::warn!(error = %e, "cannot build a NIM message copy");
                    }
                });
            }
        });
    }

    async fn copy(&self, m: &Message) -> DomainResult<()> {
        let store = self.service.store();
        let Some(channel) = store.get_channel(&m.channel_id).await? else {
            return Ok(());
        };
        let sender = m.sender_id.clone();
        let nick = match &sender {
            Some(id) => store.get_user(id).await?.map(|u| u.nickname).unwrap_or_default(),
            None => String::new(),
        };
        let (conv, to) = match channel.kind {
            ChannelKind::Direct => {
                let members = store.member_ids(&channel.id).await?;
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
        self.post(&payload);
        Ok(())
    }

    fn post(&self, payload: &Value) {
        let body = bytes::Bytes::from(payload.to_string());
        let md5 = hex::encode(Md5::digest(&body));
        let cur_time = now_millis().to_string();
        let checksum = self.auth.credentials().checksum(&md5, &cur_time);
        match Delivery::json("nim.copy", self.dispatcher.policy(), &self.url, body) {
            Ok(d) => {
                let d = d
                    .header("appkey", &self.auth.credentials().app_key)
                    .header("curtime", &cur_time)
                    .header("md5", &md5)
                    .header("checksum", &checksum);
                let _ = self.dispatcher.enqueue(d); // a full queue is counted and logged by the dispatcher
            }
            Err(e) => tracing::warn!(error = %e, "the NIM webhook URL is refused"),
        }
    }
}
