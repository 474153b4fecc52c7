//! What the checks share: a store opened through the backend with a `LocalBus` of its own, the ids, users,
//! channels and messages they build, and the bus subscription they read with a timeout.
//!
//! Every append and every edit of the suite goes through [`append_checked`] and [`edit_as`]: when those port
//! methods change, only these two functions do.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use confab_bus::LocalBus;
use confab_domain::bot::{Bot, BotSettings, ReplyInfo, ReplyState};
use confab_domain::model::{
    Appended, Channel, ChannelKind, HistoryQuery, HistoryRange, Message, MessagePatch, NewChannel, NewMessage, NewUser,
    User,
};
use confab_domain::ports::{DynStore, EventBus, EventStream};
use confab_domain::{ChannelId, ChannelSeq, DomainResult, Event, Limits, MessageId, Precondition, UserId, rules};

use crate::Backend;

/// How long a check waits for an event that must come.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Asserts that a result is an error matching the pattern, and shows the result otherwise.
macro_rules! assert_err {
    ($result:expr, $pattern:pat $(,)?) => {
        match $result {
            Err($pattern) => {}
            other => panic!("expected Err({}), got {:?}", stringify!($pattern), other),
        }
    };
}
pub(crate) use assert_err;

/// A store under test, the data it keeps, and the bus it hands its events to.
pub struct Env<B: Backend> {
    pub backend: B,
    pub data: B::Data,
    pub store: DynStore,
    pub bus: Arc<LocalBus>,
}

/// A fresh, empty store of the backend.
pub async fn open<B: Backend>(backend: B) -> Env<B> {
    let bus = Arc::new(LocalBus::default());
    let (data, store) = backend.open(bus.clone()).await;
    Env {
        backend,
        data,
        store,
        bus,
    }
}

impl<B: Backend> Env<B> {
    /// Every event published from now on.
    pub fn events(&self) -> Events {
        Events(self.bus.subscribe())
    }

    /// Drops the store (the check must hold no other handle) and opens the same data again, on a new bus.
    pub async fn reopen(self) -> Env<B> {
        let Env {
            backend, data, store, ..
        } = self;
        assert_eq!(
            Arc::strong_count(&store),
            1,
            "a check reopens the store while it still holds another handle"
        );
        drop(store);
        let bus = Arc::new(LocalBus::default());
        let store = backend.reopen(&data, bus.clone()).await;
        Env {
            backend,
            data,
            store,
            bus,
        }
    }
}

/// A subscription to the bus of a store under test.
pub struct Events(Box<dyn EventStream>);

impl Events {
    /// The next event, waiting at most [`TIMEOUT`] for it.
    pub async fn next(&mut self) -> Event {
        match tokio::time::timeout(TIMEOUT, self.0.next()).await {
            Ok(Some(e)) => e,
            Ok(None) => panic!("the bus shut down"),
            Err(_) => panic!("no event within {TIMEOUT:?}"),
        }
    }

    /// The next event, which must be waiting already: it was published before the write that caused it
    /// returned.
    pub async fn already_published(&mut self) -> Event {
        // Unconstrained: tokio's cooperative budget must not make a ready queue look empty.
        match tokio::time::timeout(Duration::ZERO, tokio::task::unconstrained(self.0.next())).await {
            Ok(Some(e)) => e,
            Ok(None) => panic!("the bus shut down"),
            Err(_) => panic!("the write returned before its event was published"),
        }
    }

    /// Events up to and including the first one `last` matches.
    pub async fn until(&mut self, last: impl Fn(&Event) -> bool) -> Vec<Event> {
        let mut seen = Vec::new();
        loop {
            let e = self.next().await;
            let done = last(&e);
            seen.push(e);
            if done {
                return seen;
            }
        }
    }
}

static MARKERS: AtomicU64 = AtomicU64::new(0);

/// Checks that nothing was published since the last event read from `events`: a later write (creating a
/// marker user) must be the next event. Waits for an event that must come, never for one that must not.
pub async fn assert_nothing_published(store: &DynStore, events: &mut Events, after: &str) {
    let id = uid(&format!("marker-{}", MARKERS.fetch_add(1, Ordering::Relaxed)));
    store.create_user(new_user(id.as_str())).await.unwrap();
    match events.next().await {
        Event::UserCreated(u) if u.id == id => {}
        other => panic!("{after}: published {other:?}"),
    }
}

pub fn uid(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

pub fn cid(s: &str) -> ChannelId {
    ChannelId::parse(s).unwrap()
}

pub fn new_user(id: &str) -> NewUser {
    NewUser {
        id: uid(id),
        nickname: id.into(),
        profile_url: String::new(),
        metadata: Default::default(),
        is_bot: false,
    }
}

pub async fn user(store: &DynStore, id: &str) -> User {
    store.create_user(new_user(id)).await.unwrap()
}

pub async fn users(store: &DynStore, ids: &[&str]) {
    for id in ids {
        user(store, id).await;
    }
}

pub fn new_group(id: &str, members: &[&str]) -> NewChannel {
    let c = NewChannel {
        id: cid(id),
        kind: ChannelKind::Group,
        name: id.into(),
        cover_url: String::new(),
        custom_type: String::new(),
        data: None,
        created_by: None,
        members: members.iter().map(|m| uid(m)).collect(),
        distinct_key: None,
    };
    c.validate(&Limits::default()).unwrap();
    c
}

pub async fn group(store: &DynStore, id: &str, members: &[&str]) -> Channel {
    let (c, created) = store.create_channel(new_group(id, members)).await.unwrap();
    assert!(created);
    c
}

/// The direct channel of `a` and `b`, created by `a`.
pub fn new_direct(a: &str, b: &str) -> NewChannel {
    NewChannel {
        id: NewChannel::direct_id(&uid(a), &uid(b)),
        kind: ChannelKind::Direct,
        name: String::new(),
        cover_url: String::new(),
        custom_type: String::new(),
        data: None,
        created_by: Some(uid(a)),
        members: vec![uid(a), uid(b)],
        distinct_key: None,
    }
}

/// A text message (set more fields on it before appending).
pub fn text(channel: &str, sender: &str, text: impl Into<String>) -> NewMessage {
    NewMessage::text(cid(channel), uid(sender), text)
}

/// The one call of `Store::append_message` with the service's rules. The message must be one the service
/// could send; its preconditions are the service's (`confab_domain::rules::new_message`).
pub async fn append(store: &DynStore, m: NewMessage) -> DomainResult<Appended> {
    let rules = rules::new_message(&m);
    append_checked(store, m, rules).await
}

/// Appends with the given preconditions (to test how the store checks them).
pub async fn append_checked(
    store: &DynStore,
    m: NewMessage,
    preconditions: Vec<Precondition>,
) -> DomainResult<Appended> {
    if let Err(e) = m.validate(&Limits::default()) {
        panic!("the check built an invalid message: {e}");
    }
    store.append_message(m, preconditions).await
}

/// The one call of `Store::edit_message` in the suite: an edit by `editor` (`None`: the application), with
/// the service's rules (`confab_domain::rules::edit_by`).
pub async fn edit_as(
    store: &DynStore,
    id: MessageId,
    patch: MessagePatch,
    editor: Option<&str>,
) -> DomainResult<Message> {
    if let Err(e) = patch.validate(&Limits::default()) {
        panic!("the check built an invalid patch: {e}");
    }
    let channel = match store.get_message(id).await? {
        Some(m) => m.channel_id,
        None => return Err(confab_domain::DomainError::not_found("message", id)),
    };
    let editor = editor.map(uid);
    store
        .edit_message(id, patch, rules::edit_by(&channel, id, editor.as_ref()))
        .await
}

/// An edit by the application.
pub async fn edit(store: &DynStore, id: MessageId, patch: MessagePatch) -> DomainResult<Message> {
    edit_as(store, id, patch, None).await
}

/// Appends a text message that must be stored as new.
pub async fn send(store: &DynStore, channel: &str, sender: &str, body: &str) -> Message {
    let a = append(store, text(channel, sender, body)).await.unwrap();
    assert!(!a.duplicate);
    a.message
}

pub fn bot_settings() -> BotSettings {
    BotSettings {
        provider: "fake".into(),
        ..BotSettings::default()
    }
}

pub async fn bot(store: &DynStore, id: &str) -> Bot {
    store.create_bot(new_user(id), bot_settings()).await.unwrap()
}

/// Member `alice` and bot `helper` in group `g`, and alice's message `body` there (a trigger).
pub async fn bot_and_trigger(store: &DynStore, body: &str) -> Message {
    user(store, "alice").await;
    bot(store, "helper").await;
    group(store, "g", &["alice", "helper"]).await;
    send(store, "g", "alice", body).await
}

/// A generating reply of `bot` to `trigger`.
pub fn reply(channel: &str, bot: &str, trigger: MessageId) -> NewMessage {
    let mut m = text(channel, bot, "");
    m.reply = Some(ReplyInfo {
        state: ReplyState::Generating,
        trigger_id: Some(trigger),
        reason: None,
    });
    m
}

/// Every message of a channel, oldest first.
pub async fn history(store: &DynStore, channel: &str) -> Vec<Message> {
    store
        .history(HistoryQuery {
            channel_id: cid(channel),
            range: HistoryRange::After(ChannelSeq::ZERO),
            limit: 100_000,
        })
        .await
        .unwrap()
}

pub fn seqs(ms: &[Message]) -> Vec<u64> {
    ms.iter().map(|m| m.seq.0).collect()
}

pub fn texts(ms: &[Message]) -> Vec<&str> {
    ms.iter().map(|m| m.text.as_str()).collect()
}

pub fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}
