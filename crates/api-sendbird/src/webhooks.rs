//! Sendbird webhooks: the settings at `/v3/applications/settings/webhook`, and the events POSTed to the
//! application's URL in Sendbird's payload format, signed with `x-sendbird-signature` (lowercase hex
//! HMAC-SHA256 of the raw body keyed with the master API token).
//!
//! The settings keep one endpoint of the durable outbox (id and format `sendbird`): events are recorded in
//! the transaction of the change, delivered in order per channel, retried and dead-lettered like every
//! webhook (and visible in the admin API); this module renders them as Sendbird does ([`SendbirdFormat`]).
//!
//! Events sent: `group_channel:create`, `group_channel:invite`, `group_channel:leave`,
//! `group_channel:remove`, `group_channel:message_send`, `group_channel:message_update`,
//! `group_channel:message_delete`. A bot's streamed reply is sent as `message_send` once, when it reaches
//! its final state (with its whole text), not when it starts empty.

use std::sync::{Arc, RwLock, Weak};

use async_trait::async_trait;
use axum::extract::State;
use bytes::Bytes;
use confab_domain::model::{Channel, Message, User};
use confab_domain::outbox::{RecordedChange, RecordedEvent};
use confab_domain::settings::{SettingsChange, SettingsWatch};
use confab_domain::{ChannelId, DomainError, DomainResult, UserId};
use confab_service::Confab;
use confab_service::webhooks::{ManagedEndpoint, WebhookEndpoints, WebhookFormat};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::SendbirdState;
use crate::dto;
use crate::error::{Reply, SendbirdError, SendbirdResult};
use crate::extract::{ApiToken, JsonBody, QueryParams, lenient_bool};

const SETTINGS_NAMESPACE: &str = "sendbird";
const SETTINGS_KEY: &str = "webhook";
/// The name of the format, and the id of the outbox endpoint the settings keep.
pub const FORMAT: &str = "sendbird";

/// The categories this server emits, with the outbox event types each is made of.
const CATEGORY_EVENTS: &[(&str, &[&str])] = &[
    ("group_channel:create", &["channel.created"]),
    ("group_channel:invite", &["member.joined"]),
    ("group_channel:leave", &["member.left"]),
    ("group_channel:remove", &["channel.deleted"]),
    // A bot's reply is announced once, final and complete.
    ("group_channel:message_send", &["message.sent", "bot_reply.*"]),
    ("group_channel:message_update", &["message.edited"]),
    ("group_channel:message_delete", &["message.deleted"]),
];

/// The categories this server emits.
pub const CATEGORIES: &[&str] = &[
    "group_channel:create",
    "group_channel:invite",
    "group_channel:leave",
    "group_channel:remove",
    "group_channel:message_send",
    "group_channel:message_update",
    "group_channel:message_delete",
];

/// `include_members` lists members only for channels up to this size (each member is a read).
const MAX_MEMBERS_IN_PAYLOAD: usize = 100;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WebhookSettings {
    pub enabled: bool,
    pub url: String,
    pub include_members: bool,
    /// `["*"]` for every category; other categories are stored (an application may subscribe to events this
    /// server never sends) but only [`CATEGORIES`] are emitted.
    pub enabled_events: Vec<String>,
}

impl WebhookSettings {
    fn wants(&self, category: &str) -> bool {
        self.enabled_events.iter().any(|e| e == "*" || e == category)
    }

    /// The outbox event types the subscribed categories are made of.
    fn outbox_events(&self) -> Vec<String> {
        CATEGORY_EVENTS
            .iter()
            .filter(|(c, _)| self.wants(c))
            .flat_map(|(_, types)| types.iter().map(|t| t.to_string()))
            .collect()
    }
}

pub struct SendbirdWebhooks {
    service: Arc<Confab>,
    /// What the application's URLs (webhooks, bot callbacks) must pass when they are set.
    policy: confab_egress::EgressPolicy,
    endpoints: Arc<dyn WebhookEndpoints>,
    /// The master API token, Sendbird's signing key. Never logged (no `Debug`).
    key: Vec<u8>,
    app_id: String,
    settings: RwLock<Arc<WebhookSettings>>,
}

impl SendbirdWebhooks {
    /// Loads the stored settings, registers the Sendbird formats (webhooks, bot callbacks) with the outbox
    /// relay and brings their endpoints in line: the settings' one, and the one of every bot callback.
    pub async fn start(
        service: Arc<Confab>,
        policy: confab_egress::EgressPolicy,
        endpoints: Arc<dyn WebhookEndpoints>,
        master_token: &str,
        app_id: String,
    ) -> DomainResult<Arc<SendbirdWebhooks>> {
        let settings = service
            .settings(SETTINGS_NAMESPACE)
            .get::<WebhookSettings>(SETTINGS_KEY)
            .await?
            .unwrap_or_default();
        let this = Arc::new(SendbirdWebhooks {
            service,
            policy,
            endpoints,
            key: master_token.as_bytes().to_vec(),
            app_id,
            settings: RwLock::new(Arc::new(settings.clone())),
        });
        this.endpoints
            .register_format(Arc::new(SendbirdFormat(Arc::downgrade(&this))));
        this.endpoints
            .register_format(Arc::new(crate::callbacks::CallbackFormat(Arc::downgrade(&this))));
        this.endpoints.put_managed(crate::callbacks::endpoint()).await?;
        // Stored settings the configuration now refuses (a URL no longer allowed) must not stop the server.
        if let Err(e) = this.keep_endpoint(&settings).await {
            tracing::error!(error = %e, "the stored Sendbird webhook settings cannot be applied");
        }
        tokio::spawn(follow_other_nodes(
            Arc::downgrade(&this),
            this.service.watch_settings(SETTINGS_NAMESPACE),
        ));
        Ok(this)
    }

    /// Reloads the settings another node stored (the endpoint they describe follows on its own, through
    /// the outbox relay's reload).
    async fn reload(&self) -> DomainResult<()> {
        let settings = self
            .service
            .settings(SETTINGS_NAMESPACE)
            .get::<WebhookSettings>(SETTINGS_KEY)
            .await?
            .unwrap_or_default();
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(settings);
        Ok(())
    }

    pub fn policy(&self) -> &confab_egress::EgressPolicy {
        &self.policy
    }

    pub fn service(&self) -> &Arc<Confab> {
        &self.service
    }

    pub fn app_id(&self) -> &str {
        &self.app_id
    }

    pub fn settings(&self) -> Arc<WebhookSettings> {
        self.settings.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    async fn put_settings(&self, s: WebhookSettings) -> DomainResult<()> {
        self.keep_endpoint(&s).await?;
        self.service.settings(SETTINGS_NAMESPACE).put(SETTINGS_KEY, &s).await?;
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(s);
        Ok(())
    }

    /// The outbox endpoint as the settings describe it: none without a URL, disabled when the settings are
    /// or when no category this server emits is subscribed.
    async fn keep_endpoint(&self, s: &WebhookSettings) -> DomainResult<()> {
        if s.url.is_empty() {
            return self.endpoints.remove_managed(FORMAT).await;
        }
        let events = s.outbox_events();
        self.endpoints
            .put_managed(ManagedEndpoint {
                format: FORMAT,
                url: s.url.clone(),
                enabled: s.enabled && !events.is_empty(),
                events,
            })
            .await
    }

    /// Lowercase hex HMAC-SHA256 of `body` keyed with the master token.
    pub fn sign(&self, body: &[u8]) -> String {
        signature(&self.key, body)
    }

    /// A recorded event as Sendbird's webhook payload; `None` for events of no subscribed category.
    async fn payload(&self, event: &RecordedEvent) -> DomainResult<Option<Value>> {
        let Some(category) = category_of(event) else {
            return Ok(None);
        };
        let s = self.settings();
        if !s.wants(category) {
            return Ok(None);
        }
        let lookup = self.service.lookup();
        let mut p = match &event.change {
            RecordedChange::Message { message: m } => {
                let (sender, mentioned) = people_of(&self.service, m).await?;
                json!({
                    "sender": sender,
                    "silent": false,
                    "sender_ip_addr": "",
                    "custom_type": m.custom_type,
                    "mention_type": "users",
                    "mentioned_users": mentioned,
                    "type": dto::message_type(m.kind),
                    "payload": message_payload(m),
                    "channel": self.channel_now(&m.channel_id).await?,
                })
            }
            RecordedChange::MessageDeleted {
                channel_id, message_id, ..
            } => json!({"payload": {"message_id": message_id.0}, "channel": self.channel_now(channel_id).await?}),
            RecordedChange::ChannelCreated { channel, .. } => {
                let creator = match &channel.created_by {
                    Some(id) => lookup.user(id).await?.map(|u| user_json(&u)),
                    None => None,
                };
                json!({"channel": channel_json(channel), "inviter": creator.unwrap_or(Value::Null), "created_at": channel.created_at})
            }
            RecordedChange::MembersJoined { channel, user_ids, by } => {
                let inviter = match by {
                    Some(id) => lookup.user(id).await?.map(|u| user_json(&u)),
                    None => None,
                };
                json!({
                    "channel": channel_json(channel),
                    "inviter": inviter.unwrap_or(Value::Null),
                    "invitees": self.users_json(user_ids).await?,
                    "invited_at": channel.updated_at,
                })
            }
            RecordedChange::MemberLeft { channel, user_id, .. } => json!({
                "channel": channel_json(channel),
                "users": self.users_json(std::slice::from_ref(user_id)).await?,
            }),
            RecordedChange::ChannelDeleted { channel_id, .. } => json!({"channel": bare_channel_json(channel_id)}),
            _ => return Ok(None),
        };
        if s.include_members
            && let Some(channel_id) = event.change.channel_id()
            && !matches!(event.change, RecordedChange::ChannelDeleted { .. })
        {
            let ids = lookup.member_ids(channel_id).await?;
            // Like Sendbird's supergroups: a large channel's payloads carry no member list.
            if ids.len() <= MAX_MEMBERS_IN_PAYLOAD {
                p["members"] = self.users_json(&ids).await?;
            }
        }
        p["category"] = json!(category);
        p["sdk"] = json!("API");
        p["app_id"] = json!(self.app_id);
        Ok(Some(p))
    }

    /// A message's channel as it is now; a channel deleted since is shown by its URL alone.
    async fn channel_now(&self, id: &ChannelId) -> DomainResult<Value> {
        Ok(match self.service.lookup().channel(id).await? {
            Some(ch) => channel_json(&ch),
            None => bare_channel_json(id),
        })
    }

    pub(crate) async fn users_json(&self, ids: &[UserId]) -> DomainResult<Value> {
        let lookup = self.service.lookup();
        let online = self.service.online_among(ids).await;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(u) = lookup.user(id).await? {
                let mut j = user_json(&u);
                j["is_active"] = json!(true);
                j["is_online"] = json!(online.contains(&u.id));
                j["state"] = json!("joined");
                out.push(j);
            }
        }
        Ok(Value::Array(out))
    }
}

/// Sendbird's format for the outbox relay. Holds the surface weakly: the relay outlives nothing it serves.
struct SendbirdFormat(Weak<SendbirdWebhooks>);

#[async_trait]
impl WebhookFormat for SendbirdFormat {
    fn name(&self) -> &'static str {
        FORMAT
    }

    async fn render(&self, event: &RecordedEvent) -> DomainResult<Option<Bytes>> {
        let Some(hooks) = self.0.upgrade() else {
            return Err(DomainError::Unavailable("the Sendbird surface has stopped".into()));
        };
        Ok(hooks.payload(event).await?.map(|p| Bytes::from(p.to_string())))
    }

    fn sign(&self, body: &[u8]) -> Vec<(&'static str, String)> {
        match self.0.upgrade() {
            Some(hooks) => vec![
                ("user-agent", "SendBird".to_string()),
                ("x-sendbird-signature", hooks.sign(body)),
            ],
            None => Vec::new(),
        }
    }
}

/// The sender (`null` for the application) and the mentioned users of a message, as Sendbird payloads show
/// users.
pub(crate) async fn people_of(service: &Confab, m: &Message) -> DomainResult<(Value, Vec<Value>)> {
    let lookup = service.lookup();
    let sender = match &m.sender_id {
        Some(id) => lookup.user(id).await?.as_ref().map_or(Value::Null, user_json),
        None => Value::Null,
    };
    let mut mentioned = Vec::with_capacity(m.mentions.len());
    for id in &m.mentions {
        if let Some(u) = lookup.user(id).await? {
            mentioned.push(user_json(&u));
        }
    }
    Ok((sender, mentioned))
}

fn category_of(event: &RecordedEvent) -> Option<&'static str> {
    let t = event.event_type.as_str();
    CATEGORY_EVENTS
        .iter()
        .find(|(_, types)| {
            types
                .iter()
                .any(|p| *p == t || p.strip_suffix('*').is_some_and(|prefix| t.starts_with(prefix)))
        })
        .map(|(c, _)| *c)
}

pub fn signature(key: &[u8], body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

pub(crate) fn message_payload(m: &Message) -> Value {
    let mut p = json!({
        "message_id": m.id.0,
        "custom_type": m.custom_type,
        "message": m.text,
        "created_at": m.created_at,
        "data": dto::message_data(m),
    });
    if let Some(f) = dto::file_info(m) {
        p["file"] = json!(f);
    }
    p
}

pub(crate) fn user_json(u: &User) -> Value {
    json!({"user_id": u.id.as_str(), "nickname": u.nickname, "profile_url": u.profile_url, "metadata": u.metadata})
}

/// A channel known by its URL alone (deleted).
fn bare_channel_json(id: &ChannelId) -> Value {
    json!({"channel_url": id.as_str(), "name": "", "custom_type": "", "data": ""})
}

pub(crate) fn channel_json(c: &Channel) -> Value {
    json!({
        "name": c.name,
        "channel_url": c.id.as_str(),
        "custom_type": c.custom_type,
        "is_distinct": c.kind == confab_domain::model::ChannelKind::Direct,
        "is_public": false,
        "is_super": false,
        "is_ephemeral": false,
        "is_discoverable": false,
        "data": dto::data_string(c.data.as_ref()),
    })
}

// ---- HTTP: /v3/applications/settings/webhook ----

#[derive(Serialize)]
pub struct WebhookReply {
    webhook: WebhookView,
}

#[derive(Serialize)]
struct WebhookView {
    #[serde(flatten)]
    settings: WebhookSettings,
    #[serde(skip_serializing_if = "Option::is_none")]
    all_webhook_categories: Option<&'static [&'static str]>,
}

#[derive(Deserialize)]
pub struct ViewQuery {
    #[serde(default, deserialize_with = "lenient_bool")]
    display_all_webhook_categories: Option<bool>,
}

pub async fn view_settings(
    State(st): State<SendbirdState>,
    _auth: ApiToken,
    QueryParams(q): QueryParams<ViewQuery>,
) -> Reply<WebhookReply> {
    let settings = (*st.webhooks.settings()).clone();
    Reply(WebhookReply {
        webhook: WebhookView {
            settings,
            all_webhook_categories: q.display_all_webhook_categories.unwrap_or(false).then_some(CATEGORIES),
        },
    })
}

#[derive(Deserialize)]
pub struct UpdateSettings {
    enabled: Option<bool>,
    url: Option<String>,
    include_members: Option<bool>,
    enabled_events: Option<Vec<String>>,
}

pub async fn update_settings(
    State(st): State<SendbirdState>,
    _auth: ApiToken,
    JsonBody(body): JsonBody<UpdateSettings>,
) -> SendbirdResult<Reply<WebhookReply>> {
    let mut s = (*st.webhooks.settings()).clone();
    if let Some(v) = body.enabled {
        s.enabled = v;
    }
    if let Some(url) = body.url {
        s.url = url.trim().to_string();
    }
    if let Some(v) = body.include_members {
        s.include_members = v;
    }
    if let Some(events) = body.enabled_events {
        if let Some(bad) = events.iter().find(|e| !valid_category(e)) {
            return Err(SendbirdError::invalid(
                "enabled_events",
                format!("{bad:?} is not an event category"),
            ));
        }
        s.enabled_events = events;
    }
    if s.enabled && s.url.is_empty() {
        return Err(SendbirdError::missing("url"));
    }
    if !s.url.is_empty() {
        st.webhooks
            .policy()
            .check_url(&s.url)
            .map_err(|e| SendbirdError::invalid("url", e))?;
    }
    st.webhooks.put_settings(s.clone()).await?;
    Ok(Reply(WebhookReply {
        webhook: WebhookView {
            settings: s,
            all_webhook_categories: None,
        },
    }))
}

/// `*`, or `family:event` in lowercase letters and underscores.
fn valid_category(e: &str) -> bool {
    e == "*"
        || e.split_once(':').is_some_and(|(a, b)| {
            let ok = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_lowercase() || c == b'_');
            ok(a) && ok(b)
        })
}

/// Keeps this node's copy of the settings in line with the changes stored through other nodes.
async fn follow_other_nodes(webhooks: Weak<SendbirdWebhooks>, mut watch: SettingsWatch) {
    while let Some(change) = watch.next().await {
        if matches!(&change, SettingsChange::Key(k) if &**k != SETTINGS_KEY) {
            continue;
        }
        let Some(webhooks) = webhooks.upgrade() else { return };
        while let Err(e) = webhooks.reload().await {
            tracing::warn!(error = %e, "cannot reload the Sendbird webhook settings; retrying");
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_sendbirds_hex_hmac_sha256() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn categories_are_validated_and_matched() {
        assert!(valid_category("*"));
        assert!(valid_category("group_channel:message_send"));
        assert!(valid_category("open_channel:message_send"));
        assert!(!valid_category("group_channel"));
        assert!(!valid_category("Group:x"));
        let s = WebhookSettings {
            enabled: true,
            url: "https://example.com/h".into(),
            include_members: false,
            enabled_events: vec!["group_channel:message_send".into()],
        };
        assert!(s.wants("group_channel:message_send"));
        assert!(!s.wants("group_channel:create"));
        let all = WebhookSettings {
            enabled_events: vec!["*".into()],
            ..s.clone()
        };
        assert!(all.wants("group_channel:create"));
        // What the settings' outbox endpoint subscribes to.
        assert_eq!(s.outbox_events(), ["message.sent", "bot_reply.*"]);
        assert_eq!(all.outbox_events().len(), 8);
        let unknown = WebhookSettings {
            enabled_events: vec!["open_channel:message_send".into()],
            ..s
        };
        assert!(unknown.outbox_events().is_empty());
    }

    #[test]
    fn outbox_events_map_to_categories() {
        let category = |t: &str| {
            category_of(&RecordedEvent {
                event_type: t.into(),
                timestamp: 0,
                change: RecordedChange::UserDeleted {
                    user_id: UserId::parse("u").unwrap(),
                },
            })
        };
        assert_eq!(category("message.sent"), Some("group_channel:message_send"));
        assert_eq!(category("bot_reply.stopped"), Some("group_channel:message_send"));
        assert_eq!(category("message.edited"), Some("group_channel:message_update"));
        assert_eq!(category("member.left"), Some("group_channel:leave"));
        assert_eq!(category("channel.deleted"), Some("group_channel:remove"));
        assert_eq!(category("user.created"), None);
        assert_eq!(category("channel.updated"), None);
    }
}
