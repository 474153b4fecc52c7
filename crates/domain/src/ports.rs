//! Ports: the traits that storage and the event bus implement. The service layer depends on these only,
//! never on a concrete backend, so SQLite, PostgreSQL or NATS plug in at the binary.
//!
//! # What a store keeps (checked by `confab-store-conformance`, which every backend runs)
//! A store persists and numbers; it decides no business rule. Who may write what is the service's
//! (`confab_domain::rules`), handed to the write as [`Precondition`]s the store tests generically, in the
//! write's transaction. What every backend must keep:
//! - **Durable before acknowledged**: a mutating call returns `Ok` only once its change is committed and would
//!   survive a crash; a call that fails changed nothing.
//! - **Gap-free sequence**: each channel's messages are numbered 1, 2, 3, … in commit order, with no gap and
//!   no repeat, also under concurrent writers and across failed appends; a deleted message keeps its number.
//! - **Idempotency key**: a second append with the same (sender, `client_msg_id`) returns the first message,
//!   `duplicate: true`, and stores nothing.
//! - **One reply per (bot, trigger)**: a second generating reply of a bot to the same trigger returns the
//!   first; a reply is finished once, and a finished reply never changes state again.
//! - **Preconditions in the transaction**: every [`Precondition`] of a write is tested in order inside its
//!   transaction; the first that does not hold is the write's error, and nothing is written.
//! - **Outbox with its change**: the rows a [`ChangeRecorder`] makes of a write's events are committed in the
//!   same transaction as the write (both or neither), with strictly increasing ids; an announcement without
//!   a change of its own ([`Store::announce`]) is recorded and published like a write's events.
//! - **Events in commit order**: a write's events are handed to the bus, in commit order across writes,
//!   before the call returns; a failed write publishes nothing.

use std::sync::Arc;

use async_trait::async_trait;

use crate::bot::{Bot, BotSettings, ReplyState, UsageRecord};
use crate::error::DomainResult;
use crate::event::Event;
use crate::flag::{FlagQuery, FlagState, FlaggedMessage};
use crate::ids::{ChannelId, ChannelSeq, FileId, MessageId, Millis, UserId};
use crate::model::{
    Appended, Channel, ChannelPatch, FileObject, FileQuota, HistoryQuery, Member, MemberChannel, Message,
    MessageFilter, MessagePatch, NewChannel, NewMessage, NewUser, User, UserPatch,
};
use crate::outbox::{ChangeRecorder, DeadLetter, OutboxEntry};
use crate::precondition::Precondition;

/// A client session token as stored: only the SHA-256 of the token is kept.
/// What [`Store::sweep_silent_nodes`] ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SilentNodes {
    /// Replies the silent nodes were generating, now `interrupted`.
    pub replies: u64,
    /// Users whose only sessions were on the silent nodes: offline now.
    pub offline: Vec<UserId>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    pub token_hash: [u8; 32],
    pub user_id: UserId,
    pub created_at: Millis,
    pub expires_at: Option<Millis>,
}

/// The system of record. Every mutating call is durable when it returns `Ok`, and the events it causes have been
/// handed to the event bus, in commit order, before it returns.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// True when the store can serve reads and writes.
    async fn ready(&self) -> bool;

    async fn create_user(&self, user: NewUser) -> DomainResult<User>;
    async fn get_user(&self, id: &UserId) -> DomainResult<Option<User>>;
    async fn list_users(&self, after: Option<&UserId>, limit: u32) -> DomainResult<Vec<User>>;
    async fn update_user(&self, id: &UserId, patch: UserPatch) -> DomainResult<User>;
    /// Deletes the account, its sessions and memberships. Its messages stay, attributed to its id, without
    /// their idempotency keys (an account created again with this id does not inherit them).
    async fn delete_user(&self, id: &UserId) -> DomainResult<()>;
    async fn set_last_seen(&self, id: &UserId, at: Millis) -> DomainResult<()>;

    /// Records a session of an existing account (`NotFound` otherwise). A token hash already another
    /// account's is `Invalid`.
    async fn create_session(&self, session: SessionRecord) -> DomainResult<()>;
    async fn find_session(&self, token_hash: &[u8; 32]) -> DomainResult<Option<SessionRecord>>;
    async fn revoke_sessions(&self, user: &UserId) -> DomainResult<u64>;

    /// Creates the channel with its members. For a direct channel that already exists, or a channel with the
    /// same `distinct_key`, returns that one with `false` instead (distinct channels).
    async fn create_channel(&self, channel: NewChannel) -> DomainResult<(Channel, bool)>;
    async fn get_channel(&self, id: &ChannelId) -> DomainResult<Option<Channel>>;
    async fn update_channel(&self, id: &ChannelId, patch: ChannelPatch) -> DomainResult<Channel>;
    /// Deletes the channel with its members, messages, flags and files' records (the files' ids come out of
    /// the next `delete_unattached_files`).
    async fn delete_channel(&self, id: &ChannelId) -> DomainResult<()>;
    async fn list_channels(&self, after: Option<&ChannelId>, limit: u32) -> DomainResult<Vec<Channel>>;
    async fn list_member_channels(
        &self,
        user: &UserId,
        after: Option<&ChannelId>,
        limit: u32,
    ) -> DomainResult<Vec<MemberChannel>>;

    /// Adds existing users as members (already-members are ignored). Fails if a user does not exist.
    async fn add_members(&self, channel: &ChannelId, users: Vec<UserId>, by: Option<UserId>) -> DomainResult<Channel>;
    async fn remove_member(&self, channel: &ChannelId, user: &UserId, by: Option<UserId>) -> DomainResult<Channel>;
    async fn get_member(&self, channel: &ChannelId, user: &UserId) -> DomainResult<Option<Member>>;
    async fn list_members(&self, channel: &ChannelId, after: Option<&UserId>, limit: u32) -> DomainResult<Vec<Member>>;
    /// Every member id of a channel (for fan-out).
    async fn member_ids(&self, channel: &ChannelId) -> DomainResult<Vec<UserId>>;
    /// Every channel the user is a member of, by id (what a node takes from the other nodes for the user's
    /// sessions).
    async fn member_channel_ids(&self, user: &UserId) -> DomainResult<Vec<ChannelId>>;
    /// Users who share with `user` at least one channel of at most `max_members` members (for presence).
    async fn contacts(&self, user: &UserId, max_members: u32) -> DomainResult<Vec<UserId>>;
    /// Moves the member's read position forward (never back, never past the last message); returns it.
    async fn mark_read(&self, channel: &ChannelId, user: &UserId, seq: ChannelSeq) -> DomainResult<ChannelSeq>;

    /// Stores a message with the next sequence of its channel, or returns the original: of a bot's reply to
    /// the same trigger (checked first), or of a retried send (same sender and `client_msg_id`, checked after
    /// the preconditions, so a sender who lost the right to send cannot read a message's current state by
    /// retrying; the same key in another channel is `Invalid`). `preconditions` are checked in order in the
    /// same transaction. A missing channel, parent or file is `NotFound`.
    async fn append_message(&self, message: NewMessage, preconditions: Vec<Precondition>) -> DomainResult<Appended>;
    async fn get_message(&self, id: MessageId) -> DomainResult<Option<Message>>;
    async fn history(&self, query: HistoryQuery) -> DomainResult<Vec<Message>>;
    /// Like `history`, keeping only the messages `filter` matches (the limit counts those).
    async fn history_matching(&self, query: HistoryQuery, filter: MessageFilter) -> DomainResult<Vec<Message>>;
    /// The sequence of the newest message of the channel created before `at` (0 if none): where a point in
    /// time falls in the channel's order, for reading history around a timestamp.
    async fn seq_before_time(&self, channel: &ChannelId, at: Millis) -> DomainResult<ChannelSeq>;
    /// Replies to `parent`, oldest first, after the given reply id.
    async fn thread(&self, parent: MessageId, after: Option<MessageId>, limit: u32) -> DomainResult<Vec<Message>>;
    /// Changes a message that is not deleted (`NotFound` otherwise), once `preconditions` hold.
    async fn edit_message(
        &self,
        id: MessageId,
        patch: MessagePatch,
        preconditions: Vec<Precondition>,
    ) -> DomainResult<Message>;
    /// Soft delete: the message keeps its sequence (no gap) but loses its content; a thread reply no longer
    /// counts in its parent's `reply_count`.
    async fn delete_message(&self, id: MessageId) -> DomainResult<Message>;

    /// Records an upload unless it would take its uploader's files or all files past `quota`
    /// (`LimitExceeded`); a file id is taken once (`AlreadyExists`).
    async fn put_file(&self, file: FileObject, quota: FileQuota) -> DomainResult<()>;
    async fn get_file(&self, id: &FileId) -> DomainResult<Option<FileObject>>;
    /// Forgets up to `limit` files: first those of deleted channels (whatever their age), then those created
    /// before `before` that no message carries (the oldest first); returns their ids, so their bytes can be
    /// removed.
    async fn delete_unattached_files(&self, before: Millis, limit: u32) -> DomainResult<Vec<FileId>>;

    /// Creates the bot's account (`is_bot`) and its settings together. A bot is deleted as a user.
    async fn create_bot(&self, user: NewUser, settings: BotSettings) -> DomainResult<Bot>;
    async fn update_bot(&self, id: &UserId, settings: BotSettings) -> DomainResult<Bot>;
    async fn get_bot(&self, id: &UserId) -> DomainResult<Option<Bot>>;
    async fn list_bots(&self) -> DomainResult<Vec<Bot>>;
    /// Saves the text so far of a reply that is still generating (no event).
    async fn save_reply_text(&self, id: MessageId, text: String) -> DomainResult<()>;
    /// Puts a generating reply in its final state, once; a reply already final is returned unchanged.
    async fn finish_reply(
        &self,
        id: MessageId,
        text: String,
        state: ReplyState,
        reason: Option<String>,
    ) -> DomainResult<Message>;
    /// After a restart: every reply this node left `generating` becomes `interrupted` (with several nodes
    /// on one database, a reply belongs to the node that appended it; others' are left alone). Returns how
    /// many.
    async fn sweep_generating(&self) -> DomainResult<u64>;
    /// Records that this node is alive at `at`. A node that generates replies calls it every few seconds.
    async fn heartbeat(&self, at: Millis) -> DomainResult<()>;
    /// Ends `interrupted` the replies other nodes left generating when they have sent no heartbeat since
    /// `silent_since` (they died), and forgets the sessions those nodes held; never this node's own. A
    /// store only one process can open has no other node, and sweeps nothing.
    async fn sweep_silent_nodes(&self, silent_since: Millis) -> DomainResult<SilentNodes>;

    /// Records whether this node holds a WebSocket session of `user` (its first one opened here, or its
    /// last one here closed). True when that changed whether the user is online anywhere: no node held one
    /// and this one does now, or this was the last node holding one.
    async fn set_presence(&self, user: &UserId, here: bool) -> DomainResult<bool>;
    /// Of `users`, those some node holds a session of, in no particular order.
    async fn online_among(&self, users: &[UserId]) -> DomainResult<Vec<UserId>>;
    /// At start: forgets the sessions this node held before it stopped (it holds none yet). Returns the
    /// users that leaves offline everywhere.
    async fn forget_own_presence(&self) -> DomainResult<Vec<UserId>>;
    /// Adds to the usage counters of (day, bot, user, channel).
    async fn record_usage(&self, usage: UsageRecord) -> DomainResult<()>;
    async fn usage(
        &self,
        from_day: &str,
        to_day: &str,
        bot: Option<&UserId>,
        user: Option<&UserId>,
    ) -> DomainResult<Vec<UsageRecord>>;

    /// Provider configurations added through the admin API, as opaque JSON (no secrets: keys are named by
    /// environment variable). `put_provider` replaces an existing one of the same name.
    async fn put_provider(&self, name: &str, config: serde_json::Value) -> DomainResult<()>;
    async fn delete_provider(&self, name: &str) -> DomainResult<()>;
    async fn list_providers(&self) -> DomainResult<Vec<(String, serde_json::Value)>>;

    /// Small JSON settings owned by one part of the server (an API surface's webhook settings, a bot's
    /// attributes that only one surface knows). The namespace names the owner; nothing else reads it.
    async fn put_setting(&self, namespace: &str, key: &str, value: serde_json::Value) -> DomainResult<()>;
    async fn get_setting(&self, namespace: &str, key: &str) -> DomainResult<Option<serde_json::Value>>;
    /// True when the setting existed.
    async fn delete_setting(&self, namespace: &str, key: &str) -> DomainResult<bool>;
    /// Flags a stored message for review (a bot reply, once complete); more rules add to an existing flag.
    async fn flag_message(&self, id: MessageId, rules: Vec<String>) -> DomainResult<()>;
    /// Approves a pending flag, or removes the message (deleted as by its sender, `MessageDeleted` emitted).
    /// The same decision again changes nothing; a different one is `AlreadyExists`; `Pending` is `Invalid`.
    async fn review_flag(&self, id: MessageId, state: FlagState, by: Option<UserId>) -> DomainResult<()>;
    async fn get_flag(&self, id: MessageId) -> DomainResult<Option<FlaggedMessage>>;
    async fn list_flags(&self, query: FlagQuery) -> DomainResult<Vec<FlaggedMessage>>;

    /// Every setting of a namespace, by key.
    async fn list_settings(&self, namespace: &str) -> DomainResult<Vec<(String, serde_json::Value)>>;

    /// Installs what decides which committed events are recorded in the outbox (none until then).
    fn set_change_recorder(&self, recorder: Arc<dyn ChangeRecorder>);
    /// Announces events that change no data (a bot triggered by a message already stored): commits the
    /// outbox rows the change recorder makes of them (cause `Other`) in one transaction, then publishes them
    /// in commit order with the other writes' events, like any write. Once it returns `Ok`, the rows are
    /// durable: a crash cannot lose what was announced. Without a recorder it only publishes.
    async fn announce(&self, events: Vec<Event>) -> DomainResult<()>;
    /// Recorded events after `after`, oldest first.
    async fn outbox_after(&self, after: u64, limit: u32) -> DomainResult<Vec<OutboxEntry>>;
    /// The id of the newest recorded event (0 if none ever was).
    async fn outbox_head(&self) -> DomainResult<u64>;
    /// Forgets recorded events up to `through` (every consumer is past them). Returns how many.
    async fn prune_outbox(&self, through: u64) -> DomainResult<u64>;
    /// Keeps an event an endpoint never accepted (replacing an earlier dead letter of the same pair).
    async fn put_dead_letter(&self, letter: DeadLetter) -> DomainResult<()>;
    async fn get_dead_letter(&self, endpoint: &str, event_id: u64) -> DomainResult<Option<DeadLetter>>;
    /// Dead letters of an endpoint, oldest event first, after `after`.
    async fn list_dead_letters(&self, endpoint: &str, after: u64, limit: u32) -> DomainResult<Vec<DeadLetter>>;
    /// `event_id: None` removes every dead letter of the endpoint. Returns how many.
    async fn delete_dead_letters(&self, endpoint: &str, event_id: Option<u64>) -> DomainResult<u64>;

    /// Takes the lease `name` for `holder` until `until`, or renews it, when it is free, expired at `now`, or
    /// already `holder`'s; true when `holder` holds it afterwards. One holder at a time among every node of
    /// the database (one node relays an endpoint's webhooks).
    async fn acquire_lease(&self, name: &str, holder: &str, now: Millis, until: Millis) -> DomainResult<bool>;
    /// Gives the lease up when `holder` holds it.
    async fn release_lease(&self, name: &str, holder: &str) -> DomainResult<()>;
    /// Forgets the leases that expired before `before`; returns how many.
    async fn prune_leases(&self, before: Millis) -> DomainResult<u64>;
}

/// A subscription to the event stream.
#[async_trait]
pub trait EventStream: Send {
    /// The next event, or `None` when the bus has shut down.
    async fn next(&mut self) -> Option<Event>;
}

/// Carries events from where they happen (a store commit, a typing frame, a presence change) to every
/// subscriber, in publish order. In process by default; a broker when several nodes serve one app, where
/// each node's subscribers also get the other nodes' events, as [`Origin::Remote`].
#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Publishes in order, as [`Origin::Local`]. Waits while a subscriber's bounded queue is full
    /// (backpressure, never loss).
    async fn publish(&self, events: Vec<Event>);
    /// Every event, in one stream.
    fn subscribe(&self) -> Box<dyn EventStream>;
    /// The events `sub` is interested in, split into `sub.partitions` streams by channel (events of one
    /// channel always go to the same stream, in order; events of no channel go to the first). The bus routes
    /// at publish time, so a partitioned consumer needs no routing task of its own and never wakes for events
    /// it would ignore.
    fn subscribe_with(&self, sub: Subscription) -> Vec<Box<dyn EventStream>>;

    /// Whether the bus takes from the other nodes only the events of the channels this node's users are in
    /// (see [`EventBus::watch_user`]); then the node tells it whose sessions it holds. False in process.
    fn follows_users(&self) -> bool {
        false
    }
    /// Whether this node takes the channel's events from the other nodes. Every channel in process; with a
    /// broker, the channels of the users watched (and of none else), as decided before the events that change
    /// it (a watched user joining) reach the subscribers.
    fn follows(&self, _channel: &ChannelId) -> bool {
        true
    }
    /// The user's first session opened on this node: from now on the bus follows every channel the user
    /// joins. Then give it the channels the user was already in with [`EventBus::follow_channels`].
    fn watch_user(&self, _user: &UserId) {}
    /// The channels the store listed for a user watched since before the listing (those the user left in
    /// between are skipped). Returns once the other nodes' events of those channels reach this node (or, with
    /// the broker away, after a bounded wait: its return raises [`Event::Resync`] anyway).
    async fn follow_channels(&self, _user: &UserId, _channels: Vec<ChannelId>) {}
    /// The user's last session on this node closed: the bus stops following the channels it followed for them.
    fn unwatch_user(&self, _user: &UserId) {}
}

/// Where an event comes from, as its subscribers see it.
///
/// The rule: whatever must happen **once in the cluster** for an event (starting a bot's reply to a message,
/// say) is done by the node where the event was committed or raised, so a subscriber that acts on it takes only
/// [`Origin::Local`] events; whatever every node must know (fan-out to its own sessions, stop requests for a
/// reply that may be generating on this node, cache invalidations, the outbox relay's doorbell) takes both.
/// On a single node every event is `Local`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    /// Committed or raised on this node (published through [`EventBus::publish`]).
    Local,
    /// Received from another node through the broker; also [`Event::Resync`], which stands for lost remote
    /// events.
    Remote,
}

/// What a subscriber wants from the bus: see [`EventBus::subscribe_with`].
#[derive(Clone, Copy, Debug)]
pub struct Subscription {
    /// Decides, at publish time, whether this subscriber gets the event (see [`Origin`] for the rule).
    pub interest: fn(&Event, Origin) -> bool,
    pub partitions: usize,
}

impl Subscription {
    /// Every event, of any origin, in one stream.
    pub const ALL: Subscription = Subscription {
        interest: |_, _| true,
        partitions: 1,
    };

    /// The partition of an event among `partitions` (FNV-1a of the channel id: stable across processes, so
    /// every node of a cluster partitions alike).
    pub fn partition_of(event: &Event, partitions: usize) -> usize {
        match (event.channel_id(), partitions) {
            (_, 0 | 1) | (None, _) => 0,
            (Some(c), n) => {
                let mut h: u64 = 0xcbf2_9ce4_8422_2325;
                for b in c.as_str().bytes() {
                    h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
                }
                (h % n as u64) as usize
            }
        }
    }
}

pub type DynStore = Arc<dyn Store>;
pub type DynBus = Arc<dyn EventBus>;
