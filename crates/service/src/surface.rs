//! What the surfaces (Sendbird, NIM, the gateway) and the binary need besides the actor-checked operations,
//! without reaching past the service to the store or the bus: their own settings, typed, each under its own
//! namespace; a read-only lookup for rendering payloads and routing deliveries (no actor: the caller renders
//! what the service already decided to deliver, or the bot runtime builds a reply from); and the event stream.

use confab_domain::bot::{Bot, UsageRecord};
use confab_domain::model::{Channel, HistoryQuery, Message, User};
use confab_domain::ports::{DynBus, DynStore, EventStream, Subscription};
use confab_domain::settings::{SettingsWatch, announce_setting};
use confab_domain::{ChannelId, DomainError, DomainResult, MessageId, UserId};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Confab;
use crate::moderation::RULES_NAMESPACE;

/// A surface's own settings under its namespace, as typed values (stored as JSON). Every change is
/// announced to the other nodes once stored; a surface that keeps a copy follows them with
/// [`Confab::watch_settings`].
pub struct SurfaceSettings<'a> {
    store: &'a DynStore,
    bus: &'a DynBus,
    namespace: &'static str,
}

impl SurfaceSettings<'_> {
    /// The value under `key`, if any; a stored value that no longer reads as `T` is an internal error.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> DomainResult<Option<T>> {
        match self.store.get_setting(self.namespace, key).await? {
            Some(v) => serde_json::from_value(v)
                .map(Some)
                .map_err(|e| DomainError::Internal(format!("setting {}/{key}: {e}", self.namespace))),
            None => Ok(None),
        }
    }

    pub async fn put<T: Serialize>(&self, key: &str, value: &T) -> DomainResult<()> {
        let v = serde_json::to_value(value).map_err(|e| DomainError::Internal(e.to_string()))?;
        self.store.put_setting(self.namespace, key, v).await?;
        announce_setting(&**self.bus, self.namespace, key).await;
        Ok(())
    }

    /// Removes the value; whether there was one.
    pub async fn delete(&self, key: &str) -> DomainResult<bool> {
        let existed = self.store.delete_setting(self.namespace, key).await?;
        if existed {
            announce_setting(&**self.bus, self.namespace, key).await;
        }
        Ok(existed)
    }
}

/// Reads for rendering and routing, without an actor. A copyable handle, so its futures borrow the service,
/// not a temporary.
#[derive(Clone, Copy)]
pub struct Lookup<'a> {
    store: &'a DynStore,
}

impl<'a> Lookup<'a> {
    pub async fn user(self, id: &UserId) -> DomainResult<Option<User>> {
        self.store.get_user(id).await
    }

    pub async fn channel(self, id: &ChannelId) -> DomainResult<Option<Channel>> {
        self.store.get_channel(id).await
    }

    pub async fn bot(self, id: &UserId) -> DomainResult<Option<Bot>> {
        self.store.get_bot(id).await
    }

    pub async fn bots(self) -> DomainResult<Vec<Bot>> {
        self.store.list_bots().await
    }

    pub async fn message(self, id: MessageId) -> DomainResult<Option<Message>> {
        self.store.get_message(id).await
    }

    pub async fn history(self, query: HistoryQuery) -> DomainResult<Vec<Message>> {
        self.store.history(query).await
    }

    /// Token usage of the days `from_day..=to_day` (YYYY-MM-DD), of one bot or user if given.
    pub async fn usage(
        &self,
        from_day: &str,
        to_day: &str,
        bot: Option<&UserId>,
        user: Option<&UserId>,
    ) -> DomainResult<Vec<UsageRecord>> {
        self.store.usage(from_day, to_day, bot, user).await
    }

    pub async fn member_ids(self, channel: &ChannelId) -> DomainResult<Vec<UserId>> {
        self.store.member_ids(channel).await
    }

    /// The users who share a channel of at most `max_members` members with `user` (presence goes to them).
    pub async fn contacts(self, user: &UserId, max_members: u32) -> DomainResult<Vec<UserId>> {
        self.store.contacts(user, max_members).await
    }
}

impl Confab {
    /// A surface's own settings. The service's own namespaces are not a surface's to touch.
    pub fn settings(&self, namespace: &'static str) -> SurfaceSettings<'_> {
        debug_assert_ne!(namespace, RULES_NAMESPACE, "the moderation rules are the service's");
        SurfaceSettings {
            store: &self.store,
            bus: &self.bus,
            namespace,
        }
    }

    /// The changes other nodes make to a namespace's settings, for a part that keeps a copy of them.
    pub fn watch_settings(&self, namespace: &'static str) -> SettingsWatch {
        SettingsWatch::new(&*self.bus, namespace)
    }

    pub fn lookup(&self) -> Lookup<'_> {
        Lookup { store: &self.store }
    }

    /// The committed changes, as events, partitioned as the subscription asks.
    pub fn subscribe(&self, sub: Subscription) -> Vec<Box<dyn EventStream>> {
        self.bus.subscribe_with(sub)
    }

    /// The providers added through the admin API, as stored (name, configuration).
    pub async fn stored_providers(&self) -> DomainResult<Vec<(String, serde_json::Value)>> {
        self.store.list_providers().await
    }
}
