//! Application services: the rules of who may do what, over the store and the event bus.
//! Every API surface (native REST, WebSocket, and the compatibility surfaces) calls these and adds no rules
//! of its own.

pub mod auth;
pub mod blobs;
pub mod bots;
mod builder;
pub mod files;
mod invalidation;
pub mod moderation;
pub mod presence;
pub mod replies;
mod screen;
mod sent;
pub mod surface;
mod traces;
pub mod typing;
pub mod webhooks;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use confab_domain::model::{
    Appended, Channel, ChannelKind, ChannelPatch, HistoryQuery, Member, MemberChannel, Message, MessageFilter,
    MessageKind, MessagePatch, NewChannel, NewMessage, NewUser, User, UserPatch,
};
use confab_domain::ports::{DynBus, DynStore, SessionRecord};
use confab_domain::{
    ChannelId, ChannelSeq, DomainError, DomainResult, Event, Limits, MessageId, Millis, UserId, now_millis,
};
use governor::DefaultKeyedRateLimiter;
use governor::clock::{Clock, DefaultClock};

pub use auth::Actor;
pub use auth::SessionGrant;
use auth::{MasterToken, SessionCache, generate_token, sha256};
pub use builder::ConfabBuilder;
use presence::PresenceRegistry;
pub use traces::TraceFollower;

#[derive(Clone, Debug)]
pub struct ServiceConfig {
    pub limits: Limits,
    /// Where uploads are spooled (`tmp/`) and, unless other [`blobs::FileBlobs`] are plugged in, kept.
    pub files_dir: PathBuf,
    pub max_upload_bytes: u64,
    pub uploads: files::UploadLimits,
    /// Lifetime of issued session tokens; `None` for tokens that live until revoked.
    pub session_ttl: Option<Duration>,
    /// The configuration file's content rules (the admin API's are loaded from settings beside them).
    pub moderation: moderation::PolicyConfig,
}

/// A user as another user sees it: the account plus live presence.
#[derive(Clone, Debug)]
pub struct UserView {
    pub user: User,
    pub online: bool,
}

/// A newly issued client session token. The token itself is shown once and never stored.
#[derive(Clone, Debug)]
pub struct IssuedSession {
    pub token: String,
    pub user_id: UserId,
    pub expires_at: Option<Millis>,
}

/// What a group creator asks for.
#[derive(Clone, Debug)]
pub struct NewGroup {
    pub id: Option<ChannelId>,
    pub name: String,
    pub cover_url: String,
    pub custom_type: String,
    pub data: Option<serde_json::Value>,
    pub members: Vec<UserId>,
    /// One channel per member set: while a distinct group created with the same members (the creator
    /// included) exists, creating another returns it instead. See [`NewChannel::distinct_key`].
    pub distinct: bool,
}

/// The distinct key of a member set: SHA-256 over the sorted, deduplicated ids (ids hold no whitespace, so
/// newline-joined ids are unambiguous). A digest keeps the unique index small for large groups, and a
/// cryptographic one means nobody can craft a member set that lands in someone else's channel.
pub fn distinct_key(members: &[UserId]) -> String {
    let mut ids: Vec<&str> = members.iter().map(UserId::as_str).collect();
    ids.sort_unstable();
    ids.dedup();
    hex::encode(sha256(ids.join("\n").as_bytes()))
}

/// Leaves a user session only the public profile of another user (see `Confab::view_for`).
fn public_profile_for(actor: &Actor, user: &mut User) {
    if actor.user().is_some_and(|me| *me != user.id) {
        user.metadata.clear();
    }
}

pub struct Confab {
    store: DynStore,
    bus: DynBus,
    cfg: ServiceConfig,
    master: MasterToken,
    sessions: SessionCache,
    send_limiter: DefaultKeyedRateLimiter<UserId>,
    read_limiter: DefaultKeyedRateLimiter<UserId>,
    upload_rate: files::UploadRate,
    presence: PresenceRegistry,
    typing: typing::TypingGate,
    providers: Option<Arc<dyn bots::ProviderCatalog>>,
    /// The bot runtime, once attached (it needs the built service, so it comes after).
    bot_runtime: std::sync::OnceLock<bots::BotRuntimeLink>,
    /// The content rules in force (configuration file, admin API, per channel).
    rules: Arc<moderation::RuleBook>,
    webhook_endpoints: Option<Arc<dyn webhooks::WebhookEndpoints>>,
    send_hooks: Vec<Arc<dyn moderation::SendHook>>,
    /// Where uploaded files' bytes are.
    blobs: Arc<dyn blobs::FileBlobs>,
    /// The spans of sends, for the consumers of their events (see [`Confab::follow_send_traces`]).
    traces: traces::SendTraces,
    /// `confab_messages_total`, by kind and actor.
    sent: sent::SentCounters,
}

impl Confab {
    pub fn limits(&self) -> &Limits {
        &self.cfg.limits
    }

    pub async fn ready(&self) -> bool {
        self.store.ready().await
    }

    // ---- authentication ----

    /// Resolves a bearer token: the master token makes the caller the application, a session token a user.
    pub async fn authenticate(&self, token: &str) -> DomainResult<Actor> {
        if self.master.matches(token) {
            return Ok(Actor::Admin);
        }
        self.authenticate_session(token).await.map(Actor::User)
    }

    pub fn is_master_token(&self, token: &str) -> bool {
        self.master.matches(token)
    }

    /// Resolves a session token to its user. The lookup is by SHA-256 of the token, so the comparison that
    /// matters is an index probe on a digest, not a string compare on the secret.
    pub async fn authenticate_session(&self, token: &str) -> DomainResult<UserId> {
        self.session_grant(token).await.map(|g| g.user)
    }

    /// Resolves a session token to what a long-lived connection keeps of it (see [`Confab::grant_holds`]).
    pub async fn session_grant(&self, token: &str) -> DomainResult<SessionGrant> {
        if token.is_empty() || token.len() > 256 {
            return Err(DomainError::Unauthenticated);
        }
        let hash = sha256(token.as_bytes());
        if let Some((user, expires_at)) = self.sessions.get(&hash) {
            return Ok(SessionGrant {
                user,
                token_hash: hash,
                expires_at,
            });
        }
        let epoch = self.sessions.epoch();
        let rec = self
            .store
            .find_session(&hash)
            .await?
            .ok_or(DomainError::Unauthenticated)?;
        if rec.expires_at.is_some_and(|x| x <= now_millis()) {
            return Err(DomainError::Unauthenticated);
        }
        self.sessions.put(epoch, hash, rec.user_id.clone(), rec.expires_at);
        Ok(SessionGrant {
            user: rec.user_id,
            token_hash: hash,
            expires_at: rec.expires_at,
        })
    }

    /// Whether a connection's credential still holds, read from the store (not the cache, which a revocation
    /// empties only after its commit): the token is still stored and unexpired, and the account exists and is
    /// not blocked. A connection checks this once registered for events and again on `SessionsRevoked`, so a
    /// revocation committed at any moment closes it.
    pub async fn grant_holds(&self, grant: &SessionGrant) -> DomainResult<bool> {
        let Some(rec) = self.store.find_session(&grant.token_hash).await? else {
            return Ok(false);
        };
        if rec.user_id != grant.user || rec.expires_at.is_some_and(|x| x <= now_millis()) {
            return Ok(false);
        }
        Ok(self.store.get_user(&grant.user).await?.is_some_and(|u| !u.disabled))
    }

    /// Tells every open connection of `user` to re-check its credential.
    async fn sessions_revoked(&self, user: &UserId) {
        self.bus.publish(vec![Event::SessionsRevoked(user.clone())]).await;
    }

    pub async fn issue_session(&self, actor: &Actor, user: &UserId) -> DomainResult<IssuedSession> {
        self.issue_session_until(actor, user, None).await
    }

    /// Issues a session token that expires at `not_after` if given, and never later than the configured
    /// session lifetime allows (the operator's limit wins over the caller's wish).
    pub async fn issue_session_until(
        &self,
        actor: &Actor,
        user: &UserId,
        not_after: Option<Millis>,
    ) -> DomainResult<IssuedSession> {
        self.issue_session_with(actor, user, not_after, None).await
    }

    /// Registers `token` as a session token of `user` (a surface whose applications choose their users'
    /// credentials, as NIM's `token` does), or issues a random one when `None`. Stored as a digest like any
    /// session token; at most 128 printable ASCII characters.
    pub async fn issue_session_with(
        &self,
        actor: &Actor,
        user: &UserId,
        not_after: Option<Millis>,
        chosen: Option<&str>,
    ) -> DomainResult<IssuedSession> {
        require_admin(actor)?;
        if let Some(t) = chosen {
            self.check_token_for(actor, user, t).await?;
        }
        let now = now_millis();
        if not_after.is_some_and(|t| t <= now) {
            return Err(DomainError::invalid("expires_at", "must be in the future"));
        }
        let account = self
            .store
            .get_user(user)
            .await?
            .ok_or_else(|| DomainError::not_found("user", user))?;
        if account.disabled {
            return Err(DomainError::forbidden("the account is blocked"));
        }
        let token = chosen.map_or_else(|| generate_token("cfs_"), str::to_string);
        let configured = self.cfg.session_ttl.map(|t| now.saturating_add(t.as_millis() as i64));
        let expires_at = match (configured, not_after) {
            (Some(c), Some(w)) => Some(c.min(w)),
            (c, w) => c.or(w),
        };
        self.store
            .create_session(SessionRecord {
                token_hash: sha256(token.as_bytes()),
                user_id: user.clone(),
                created_at: now,
                expires_at,
            })
            .await?;
        Ok(IssuedSession {
            token,
            user_id: user.clone(),
            expires_at,
        })
    }

    /// Whether `token` may become a session token of `user` (the application only): its syntax, and that no
    /// other account has it (a client signs in with the token alone). Surfaces that revoke or create
    /// something before issuing a chosen token ask first, so a refusal leaves everything as it was.
    pub async fn check_token_for(&self, actor: &Actor, user: &UserId, token: &str) -> DomainResult<()> {
        require_admin(actor)?;
        check_chosen_token(token)?;
        match self.store.find_session(&sha256(token.as_bytes())).await? {
            Some(s) if &s.user_id != user => {
                Err(DomainError::invalid("token", "is already the token of another account"))
            }
            _ => Ok(()),
        }
    }

    /// Blocks or unblocks an account (the application only). A blocked account's session tokens are revoked,
    /// no new ones are issued and its messages are refused; its data and memberships stay.
    pub async fn set_blocked(&self, actor: &Actor, user: &UserId, blocked: bool) -> DomainResult<User> {
        require_admin(actor)?;
        let patch = UserPatch {
            disabled: Some(blocked),
            ..UserPatch::default()
        };
        let u = self.store.update_user(user, patch).await?;
        if blocked {
            self.store.revoke_sessions(user).await?;
            self.sessions.evict_user(user);
            self.sessions_revoked(user).await;
        }
        Ok(u)
    }

    pub async fn revoke_sessions(&self, actor: &Actor, user: &UserId) -> DomainResult<u64> {
        require_self_or_admin(actor, user)?;
        let n = self.store.revoke_sessions(user).await?;
        self.sessions.evict_user(user);
        self.sessions_revoked(user).await;
        Ok(n)
    }

    // ---- users ----

    pub async fn create_user(&self, actor: &Actor, user: NewUser) -> DomainResult<User> {
        require_admin(actor)?;
        user.validate()?;
        self.store.create_user(user).await
    }

    pub async fn get_user(&self, actor: &Actor, id: &UserId) -> DomainResult<UserView> {
        let user = self
            .store
            .get_user(id)
            .await?
            .ok_or_else(|| DomainError::not_found("user", id))?;
        Ok(self.view_for(actor, user).await)
    }

    async fn view(&self, user: User) -> UserView {
        let online = self.is_online(&user.id).await;
        UserView { user, online }
    }

    /// A user as the actor may see it: the application and the user themselves see everything; another user
    /// sees the public profile only (the metadata is the application's, e.g. NIM's e-mail, mobile, birth date).
    async fn view_for(&self, actor: &Actor, user: User) -> UserView {
        self.views_for(actor, vec![user]).await.pop().expect("one view")
    }

    /// [`Confab::view_for`] of several users, with one presence lookup.
    async fn views_for(&self, actor: &Actor, mut users: Vec<User>) -> Vec<UserView> {
        let ids: Vec<UserId> = users.iter().map(|u| u.id.clone()).collect();
        let online = self.online_among(&ids).await;
        users
            .drain(..)
            .map(|mut user| {
                public_profile_for(actor, &mut user);
                let online = online.contains(&user.id);
                UserView { user, online }
            })
            .collect()
    }

    pub async fn list_users(&self, actor: &Actor, after: Option<&UserId>, limit: u32) -> DomainResult<Vec<UserView>> {
        let users = self.store.list_users(after, self.page(limit)).await?;
        Ok(self.views_for(actor, users).await)
    }

    pub async fn update_user(&self, actor: &Actor, id: &UserId, patch: UserPatch) -> DomainResult<UserView> {
        require_self_or_admin(actor, id)?;
        patch.validate()?;
        let user = self.store.update_user(id, patch).await?;
        Ok(self.view(user).await)
    }

    pub async fn delete_user(&self, actor: &Actor, id: &UserId) -> DomainResult<()> {
        require_admin(actor)?;
        self.store.delete_user(id).await?;
        self.sessions.evict_user(id);
        Ok(())
    }

    fn page(&self, limit: u32) -> u32 {
        limit.clamp(1, self.cfg.limits.max_page)
    }

    // ---- channels ----

    /// The distinct 1:1 channel of two users: created on first use, the same channel afterwards.
    pub async fn open_direct(&self, actor: &Actor, a: &UserId, b: &UserId) -> DomainResult<(Channel, bool)> {
        if let Actor::User(u) = actor
            && u != a
            && u != b
        {
            return Err(DomainError::forbidden(
                "a user can open direct channels only for themselves",
            ));
        }
        if a == b {
            return Err(DomainError::invalid(
                "user_ids",
                "a direct channel needs two different users",
            ));
        }
        let ch = NewChannel {
            id: NewChannel::direct_id(a, b),
            kind: ChannelKind::Direct,
            name: String::new(),
            cover_url: String::new(),
            custom_type: String::new(),
            data: None,
            created_by: actor.user().cloned(),
            members: vec![a.clone(), b.clone()],
            distinct_key: None,
        };
        self.store.create_channel(ch).await
    }

    /// Creates a group, or for a distinct group returns the one already created with the same members.
    pub async fn create_group(&self, actor: &Actor, g: NewGroup) -> DomainResult<Channel> {
        let mut members = g.members;
        if let Actor::User(u) = actor
            && !members.contains(u)
        {
            members.push(u.clone());
        }
        let id = match g.id {
            Some(id) => id,
            None => ChannelId::parse(&generate_token("grp_")[..36]).expect("generated ids are valid"),
        };
        let ch = NewChannel {
            id,
            kind: ChannelKind::Group,
            name: g.name,
            cover_url: g.cover_url,
            custom_type: g.custom_type,
            data: g.data,
            created_by: actor.user().cloned(),
            distinct_key: g.distinct.then(|| distinct_key(&members)),
            members,
        };
        ch.validate(&self.cfg.limits)?;
        Ok(self.store.create_channel(ch).await?.0)
    }

    /// The channel as the actor sees it. A user must be a member (a non-member learns nothing, not even that
    /// the channel exists).
    pub async fn get_channel(&self, actor: &Actor, id: &ChannelId) -> DomainResult<MemberChannel> {
        let channel = self
            .store
            .get_channel(id)
            .await?
            .ok_or_else(|| DomainError::not_found("channel", id))?;
        let read_seq = match actor {
            Actor::Admin => channel.last_seq,
            Actor::User(u) => self.require_member(u, id).await?.read_seq,
        };
        Ok(MemberChannel { channel, read_seq })
    }

    /// A user's channels, or (admin) every channel.
    pub async fn list_channels(
        &self,
        actor: &Actor,
        user: Option<&UserId>,
        after: Option<&ChannelId>,
        limit: u32,
    ) -> DomainResult<Vec<MemberChannel>> {
        let limit = self.page(limit);
        let who = match (actor, user) {
            (Actor::User(u), Some(w)) if u != w => {
                return Err(DomainError::forbidden("a user can list only their own channels"));
            }
            (Actor::User(u), _) => Some(u),
            (Actor::Admin, w) => w,
        };
        match who {
            Some(u) => self.store.list_member_channels(u, after, limit).await,
            None => Ok(self
                .store
                .list_channels(after, limit)
                .await?
                .into_iter()
                .map(|c| MemberChannel {
                    read_seq: c.last_seq,
                    channel: c,
                })
                .collect()),
        }
    }

    async fn require_member(&self, user: &UserId, channel: &ChannelId) -> DomainResult<Member> {
        match self.store.get_member(channel, user).await? {
            Some(m) => Ok(m),
            None => Err(self.absent_channel_error(user, channel).await),
        }
    }

    async fn absent_channel_error(&self, user: &UserId, channel: &ChannelId) -> DomainError {
        match self.store.get_channel(channel).await {
            Ok(Some(_)) => DomainError::not_member(user, channel),
            Ok(None) => DomainError::not_found("channel", channel),
            Err(e) => e,
        }
    }

    /// Creator of a group, or the application (for a direct channel, the application only).
    async fn require_operator(&self, actor: &Actor, id: &ChannelId) -> DomainResult<Channel> {
        let channel = self
            .store
            .get_channel(id)
            .await?
            .ok_or_else(|| DomainError::not_found("channel", id))?;
        if let Actor::User(u) = actor {
            self.require_member(u, id).await?;
            if channel.kind == ChannelKind::Direct {
                // Whoever opened it is no owner: deleting or changing it for both is the application's.
                return Err(DomainError::forbidden(
                    "a direct channel is changed or deleted by the application only",
                ));
            }
            if channel.created_by.as_ref() != Some(u) {
                return Err(DomainError::forbidden(
                    "only the channel's creator or the application may do this",
                ));
            }
        }
        Ok(channel)
    }

    pub async fn update_channel(&self, actor: &Actor, id: &ChannelId, patch: ChannelPatch) -> DomainResult<Channel> {
        self.require_operator(actor, id).await?;
        patch.validate(&self.cfg.limits)?;
        self.store.update_channel(id, patch).await
    }

    pub async fn delete_channel(&self, actor: &Actor, id: &ChannelId) -> DomainResult<()> {
        self.require_operator(actor, id).await?;
        self.store.delete_channel(id).await?;
        self.forget_channel_rules(id).await
    }

    pub async fn invite(&self, actor: &Actor, id: &ChannelId, users: Vec<UserId>) -> DomainResult<Channel> {
        if users.is_empty() {
            return Err(DomainError::invalid("user_ids", "must name at least one user"));
        }
        if let Actor::User(u) = actor {
            self.require_member(u, id).await?;
        }
        let channel = self
            .store
            .get_channel(id)
            .await?
            .ok_or_else(|| DomainError::not_found("channel", id))?;
        if channel.member_count as usize + users.len() > self.cfg.limits.max_channel_members as usize {
            return Err(DomainError::LimitExceeded {
                what: "channel members",
                limit: self.cfg.limits.max_channel_members as u64,
            });
        }
        self.store.add_members(id, users, actor.user().cloned()).await
    }

    /// Removes a member: the member themselves (leaving), the group's creator, or the application. A member
    /// may leave a direct channel (opening it again brings them back); nobody removes the other.
    pub async fn remove_member(&self, actor: &Actor, id: &ChannelId, user: &UserId) -> DomainResult<Channel> {
        let channel = self
            .store
            .get_channel(id)
            .await?
            .ok_or_else(|| DomainError::not_found("channel", id))?;
        if channel.kind == ChannelKind::Direct && actor.user() != Some(user) {
            return Err(DomainError::forbidden(
                "members of a direct channel cannot change; a member may leave it",
            ));
        }
        if actor.user() != Some(user) {
            self.require_operator(actor, id).await?;
        }
        self.store.remove_member(id, user, actor.user().cloned()).await
    }

    pub async fn list_members(
        &self,
        actor: &Actor,
        id: &ChannelId,
        after: Option<&UserId>,
        limit: u32,
    ) -> DomainResult<Vec<(Member, UserView)>> {
        self.get_channel(actor, id).await?;
        let members = self.store.list_members(id, after, self.page(limit)).await?;
        let mut found = Vec::with_capacity(members.len());
        for m in members {
            // A member whose account was deleted concurrently is skipped rather than failing the page.
            if let Some(u) = self.store.get_user(&m.user_id).await? {
                found.push((m, u));
            }
        }
        let (members, users): (Vec<Member>, Vec<User>) = found.into_iter().unzip();
        let views = self.views_for(actor, users).await;
        Ok(members.into_iter().zip(views).collect())
    }

    /// Whether `user` is a member of a channel the actor may see (`None`: not a member).
    pub async fn member(&self, actor: &Actor, id: &ChannelId, user: &UserId) -> DomainResult<Option<Member>> {
        self.get_channel(actor, id).await?;
        self.store.get_member(id, user).await
    }

    // ---- messages ----

    /// Sends a message. A user sends as themselves (rate limited); the application may send as any member,
    /// or an admin message with no sender. Durable when this returns.
    #[tracing::instrument(level = "debug", name = "confab.send", skip_all, fields(
        channel_id = %msg.channel_id, sender_id = actor.user().or(msg.sender_id.as_ref()).map(UserId::as_str),
        kind = ?msg.kind, message_id, seq, duplicate, error, otel.status_code,
    ))]
    pub async fn send(&self, actor: &Actor, mut msg: NewMessage) -> DomainResult<Appended> {
        match actor {
            Actor::User(u) => {
                if msg.sender_id.as_ref().is_some_and(|s| s != u) {
                    return Err(DomainError::forbidden("a user can send only as themselves"));
                }
                if msg.kind == MessageKind::Admin {
                    return Err(DomainError::forbidden("only the application can send admin messages"));
                }
                msg.sender_id = Some(u.clone());
            }
            Actor::Admin => {}
        }
        self.screen(actor, &mut msg, moderation::Draft::Send)
            .await
            .inspect_err(traces::record_error)?;
        let ticket = self.send_observer().and_then(|o| o.sending(&msg));
        let preconditions = confab_domain::rules::new_message(&msg);
        let kind = msg.kind;
        let traced = self.traces.register(&tracing::Span::current(), &msg);
        let res = traces::appending(self.store.append_message(msg, preconditions)).await;
        self.traces.settle(traced, &res);
        let stored = res.as_ref().ok().filter(|a| !a.duplicate).map(|a| &a.message);
        if stored.is_some() {
            self.sent.count(kind, actor);
        }
        if let Some(t) = ticket {
            t.settled(stored);
        }
        if let (Actor::Admin, Some(m)) = (actor, stored)
            && !m.mentions.is_empty()
            && let Some(o) = self.send_observer()
        {
            o.sent_by_application(m);
        }
        res
    }

    pub async fn history(&self, actor: &Actor, mut q: HistoryQuery) -> DomainResult<Vec<Message>> {
        q.limit = self.page(q.limit);
        self.require_reader(actor, &q.channel_id).await?;
        self.store.history(q).await
    }

    /// History keeping only the messages `filter` matches.
    pub async fn history_matching(
        &self,
        actor: &Actor,
        mut q: HistoryQuery,
        filter: MessageFilter,
    ) -> DomainResult<Vec<Message>> {
        q.limit = self.page(q.limit);
        self.require_reader(actor, &q.channel_id).await?;
        self.store.history_matching(q, filter).await
    }

    /// Where a point in time falls in a channel's history: the sequence of the newest message created before
    /// `at` (0 if none). Messages at or after `at` have higher sequences.
    pub async fn seq_before_time(&self, actor: &Actor, channel: &ChannelId, at: Millis) -> DomainResult<ChannelSeq> {
        self.require_reader(actor, channel).await?;
        self.store.seq_before_time(channel, at).await
    }

    /// A member of the channel, or the application for a channel that exists.
    async fn require_reader(&self, actor: &Actor, channel: &ChannelId) -> DomainResult<()> {
        match actor {
            Actor::User(u) => {
                self.require_member(u, channel).await?;
            }
            Actor::Admin => {
                self.store
                    .get_channel(channel)
                    .await?
                    .ok_or_else(|| DomainError::not_found("channel", channel))?;
            }
        }
        Ok(())
    }

    /// A message, if the actor may see its channel.
    pub async fn get_message(&self, actor: &Actor, id: MessageId) -> DomainResult<Message> {
        let m = self
            .store
            .get_message(id)
            .await?
            .ok_or_else(|| DomainError::not_found("message", id))?;
        if let Actor::User(u) = actor
            && self.store.get_member(&m.channel_id, u).await?.is_none()
        {
            // Outsiders cannot probe message ids.
            return Err(DomainError::not_found("message", id));
        }
        Ok(m)
    }

    pub async fn thread(
        &self,
        actor: &Actor,
        parent: MessageId,
        after: Option<MessageId>,
        limit: u32,
    ) -> DomainResult<Vec<Message>> {
        self.get_message(actor, parent).await?;
        self.store.thread(parent, after, self.page(limit)).await
    }

    pub async fn edit_message(&self, actor: &Actor, id: MessageId, patch: MessagePatch) -> DomainResult<Message> {
        let m = self.get_message(actor, id).await?;
        if let Actor::User(u) = actor
            && m.sender_id.as_ref() != Some(u)
        {
            return Err(DomainError::forbidden("only the sender can edit a message"));
        }
        if patch.is_empty() {
            return Err(DomainError::invalid("body", "nothing to change"));
        }
        if m.deleted {
            return Err(DomainError::not_found("message", id));
        }
        patch.validate(&self.cfg.limits)?;
        if patch.text.as_deref() == Some("")
            && matches!(m.kind, MessageKind::Image | MessageKind::File | MessageKind::Custom)
        {
            return Err(DomainError::invalid("text", "must not be empty"));
        }
        // An edit is a send for every check (see `screen`).
        let patch = self.screen_edit(actor, &m, patch).await?;
        let preconditions = confab_domain::rules::edit_by(&m.channel_id, id, actor.user());
        self.store.edit_message(id, patch, preconditions).await
    }

    pub async fn delete_message(&self, actor: &Actor, id: MessageId) -> DomainResult<Message> {
        let m = self.get_message(actor, id).await?;
        if let Actor::User(u) = actor
            && m.sender_id.as_ref() != Some(u)
        {
            return Err(DomainError::forbidden("only the sender can delete a message"));
        }
        self.store.delete_message(id).await
    }

    pub async fn mark_read(&self, actor: &Actor, channel: &ChannelId, seq: ChannelSeq) -> DomainResult<ChannelSeq> {
        let user = actor
            .user()
            .ok_or_else(|| DomainError::forbidden("read positions belong to users"))?;
        // Sequences are stored as signed 64-bit integers: a larger one names no message that can exist.
        if seq.0 > i64::MAX as u64 {
            return Err(DomainError::invalid("seq", "must be at most 9223372036854775807"));
        }
        check_rate(&self.read_limiter, user)?;
        self.store.mark_read(channel, user, seq).await
    }

    /// Typing indicators are ephemeral: checked and published, never stored. Coalesced per user and channel
    /// ([`typing::TypingGate`]): an absorbed one costs nothing and is not an error.
    pub async fn typing(&self, actor: &Actor, channel: &ChannelId, active: bool) -> DomainResult<()> {
        let user = actor
            .user()
            .ok_or_else(|| DomainError::forbidden("typing indicators belong to users"))?;
        if !self.typing.would_pass(user, channel, active, std::time::Instant::now()) {
            return Ok(());
        }
        self.require_member(user, channel).await?;
        if !self.typing.pass(user, channel, active, std::time::Instant::now()) {
            return Ok(());
        }
        self.bus
            .publish(vec![Event::Typing {
                channel_id: channel.clone(),
                user_id: user.clone(),
                active,
            }])
            .await;
        Ok(())
    }

    /// Periodic upkeep: forgets rate-limit state of users who have not sent recently, so the limiter's memory
    /// follows active users, not every user ever seen.
    pub fn housekeeping(&self) {
        self.send_limiter.retain_recent();
        self.send_limiter.shrink_to_fit();
        self.read_limiter.retain_recent();
        self.read_limiter.shrink_to_fit();
        self.typing.prune(Duration::from_secs(60), std::time::Instant::now());
        self.upload_rate.housekeeping();
    }
}

pub(crate) fn require_admin(actor: &Actor) -> DomainResult<()> {
    if actor.is_admin() {
        Ok(())
    } else {
        Err(DomainError::forbidden("this call needs the master API token"))
    }
}

fn require_self_or_admin(actor: &Actor, user: &UserId) -> DomainResult<()> {
    match actor {
        Actor::Admin => Ok(()),
        Actor::User(u) if u == user => Ok(()),
        Actor::User(_) => Err(DomainError::forbidden("a user can change only their own account")),
    }
}

/// A rate limit's refusal, with the wait before the next try.
fn check_rate(limiter: &DefaultKeyedRateLimiter<UserId>, user: &UserId) -> DomainResult<()> {
    limiter.check_key(user).map_err(|not_until| DomainError::RateLimited {
        retry_after_ms: not_until
            .wait_time_from(DefaultClock::default().now())
            .as_millis()
            .max(1) as u64,
    })
}

/// A session token an application chooses (NIM's `token`): 1 to 128 printable ASCII characters. Public so a
/// surface that replaces a user's tokens can refuse a bad one before revoking anything.
pub fn check_chosen_token(t: &str) -> DomainResult<()> {
    if t.is_empty() || t.len() > 128 || !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(DomainError::invalid(
            "token",
            "must be 1 to 128 printable ASCII characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_keys_name_member_sets() {
        let ids = |v: &[&str]| v.iter().map(|s| UserId::parse(s).unwrap()).collect::<Vec<_>>();
        let k = distinct_key(&ids(&["bob", "alice"]));
        assert_eq!(
            k,
            distinct_key(&ids(&["alice", "bob", "alice"])),
            "order and repeats do not matter"
        );
        assert_ne!(k, distinct_key(&ids(&["alice", "bob", "carol"])));
        assert_ne!(distinct_key(&ids(&["a", "bc"])), distinct_key(&ids(&["ab", "c"])));
        assert_eq!(k.len(), 64);
    }
}
