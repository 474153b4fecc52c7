//! The data of the schema fixtures, the same for every backend: written once through the `Store` port by the
//! fixture generators (so every row is in the exact format the code writes), and read back through the port
//! after a database of an earlier schema was migrated.
//!
//! Shared by `store-sqlite`'s `tests/upgrades.rs` and `store-postgres`'s `upgrade_tests.rs` (included by
//! path): it knows the domain and the port, no backend.
//!
//! What it holds: users `alice`, `bob`, `carol` (disabled), `dave` (deleted after sending) and the bot
//! `helper`; sessions; the direct channel of alice and bob and the group `team` (distinct key, data); in
//! `team` a thread reply, a file message, a bot reply complete and one left generating, an edited, a
//! deleted, a custom and a flagged message; read positions; usage, a provider, settings, outbox rows (the
//! oldest pruned) and a dead letter, a lease; and the channel `gone`, deleted with its file and its flagged
//! message.

#![allow(dead_code)]

use std::sync::Arc;

use confab_domain::bot::{BotSettings, ReplyInfo, ReplyState, UsageRecord};
use confab_domain::model::{
    ChannelKind, FileObject, FileQuota, HistoryQuery, HistoryRange, Message, MessageKind, MessagePatch, NewChannel,
    NewMessage, NewUser, UserPatch,
};
use confab_domain::outbox::{ChangeCause, ChangeRecorder, DeadLetter, OutboxRecord, RecordedChange};
use confab_domain::ports::{SessionRecord, Store};
use confab_domain::{ChannelId, ChannelSeq, FileId, MessageId, Millis, UserId, now_millis, rules};
use serde_json::json;

pub const TEAM: &str = "team";
pub const DIRECT: &str = "dm.alice.bob";
pub const GONE: &str = "gone";
pub const DOC_FILE: &str = "0d0c0000000000000000000000000001";
pub const GONE_FILE: &str = "90e00000000000000000000000000002";
pub const DOC_SIZE: u64 = 1234;
pub const ALICE_TOKEN: [u8; 32] = [0xa1; 32];
pub const BOB_TOKEN: [u8; 32] = [0xb0; 32];
pub const SEEN_AT: Millis = 1_767_229_200_000;
pub const SESSION_AT: Millis = 1_767_225_600_000;
pub const FAR_FUTURE: Millis = 4_102_444_800_000;
pub const LEASE: &str = "webhooks/ep-1";
pub const ENDPOINT: &str = "ep-1";
/// Outbox rows up to this id were pruned; the dead letter is of the next one.
pub const PRUNED_THROUGH: u64 = 3;
pub const DEAD_EVENT: u64 = 4;

/// What a schema has, by the migration that brought it (SQLite's versions in brackets).
#[derive(Clone, Copy, Debug)]
pub struct Features {
    /// Bot settings, reply state and trigger of messages, usage (2).
    pub bots: bool,
    /// Providers added through the admin API (3).
    pub providers: bool,
    /// Settings of the surfaces (4).
    pub settings: bool,
    /// Distinct keys of channels (5).
    pub distinct: bool,
    /// Disabled accounts (6).
    pub disabled: bool,
    /// The outbox and dead letters (7).
    pub outbox: bool,
    /// Flagged messages (8).
    pub flags: bool,
    /// Leases (11).
    pub leases: bool,
}

impl Features {
    pub const ALL: Features = Features {
        bots: true,
        providers: true,
        settings: true,
        distinct: true,
        disabled: true,
        outbox: true,
        flags: true,
        leases: true,
    };
}

/// Records every change (the outbox rows of the data set, and of the checks' own append).
pub struct RecordAll;

impl ChangeRecorder for RecordAll {
    fn record(&self, cause: ChangeCause, event: &confab_domain::Event) -> Option<OutboxRecord> {
        let change = RecordedChange::of(event)?;
        Some(OutboxRecord {
            event_type: match cause {
                ChangeCause::Send => "message.sent",
                ChangeCause::Edit => "message.edited",
                ChangeCause::FinishReply => "bot_reply.finished",
                ChangeCause::Other => "change",
            },
            channel_id: change.channel_id().cloned(),
            payload: serde_json::to_vec(&change).expect("a recorded change serializes"),
        })
    }
}

pub fn uid(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

pub fn cid(s: &str) -> ChannelId {
    ChannelId::parse(s).unwrap()
}

pub fn fid(s: &str) -> FileId {
    FileId::parse(s).unwrap()
}

fn new_user(id: &str, nickname: &str) -> NewUser {
    NewUser {
        id: uid(id),
        nickname: nickname.into(),
        profile_url: format!("https://example.com/{id}.png"),
        metadata: Default::default(),
        is_bot: false,
    }
}

pub fn bot_settings() -> BotSettings {
    BotSettings {
        provider: "fake".into(),
        system_prompt: "Be brief.".into(),
        ..BotSettings::default()
    }
}

pub fn provider_config() -> serde_json::Value {
    json!({"kind": "openai", "base_url": "https://api.openai.com/v1", "api_key_env": "OPENAI_API_KEY",
           "model": "gpt-4o-mini"})
}

pub fn webhook_setting() -> serde_json::Value {
    json!({"enabled": true, "url": "https://hooks.example.com/sb", "categories": ["group_channel:message_send"]})
}

pub fn usage_records() -> Vec<UsageRecord> {
    let record = |day: &str, user: &str, prompt, completion| UsageRecord {
        day: day.into(),
        bot_id: uid("helper"),
        user_id: uid(user),
        channel_id: cid(TEAM),
        prompt_tokens: prompt,
        completion_tokens: completion,
        replies: 1,
    };
    vec![
        record("2026-01-01", "alice", 120, 30),
        record("2026-01-02", "bob", 50, 10),
    ]
}

pub fn doc_file(created_at: Millis) -> FileObject {
    FileObject {
        id: fid(DOC_FILE),
        channel_id: cid(TEAM),
        uploader_id: Some(uid("alice")),
        name: "plan.pdf".into(),
        size: DOC_SIZE,
        content_type: "application/pdf".into(),
        sha256: "5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef".into(),
        created_at,
    }
}

const NO_QUOTA: FileQuota = FileQuota {
    per_user: u64::MAX,
    total: u64::MAX,
};

async fn send(store: &dyn Store, m: NewMessage) -> Message {
    let preconditions = rules::new_message(&m);
    let appended = store.append_message(m, preconditions).await.unwrap();
    assert!(!appended.duplicate);
    appended.message
}

fn text(channel: &str, sender: &str, body: &str) -> NewMessage {
    NewMessage::text(cid(channel), uid(sender), body)
}

fn bot_reply(trigger: MessageId) -> NewMessage {
    let mut m = text(TEAM, "helper", "");
    m.reply = Some(ReplyInfo {
        state: ReplyState::Generating,
        trigger_id: Some(trigger),
        reason: None,
    });
    m
}

/// What the SQLite generator needs to put back what releases before migration 10 left behind.
pub struct Written {
    /// The file of the deleted channel `gone`.
    pub gone_file: FileObject,
    /// The flagged message of `gone`.
    pub gone_message: MessageId,
    /// dave's message, which carried the idempotency key `dave-1` until dave was deleted.
    pub dave_message: MessageId,
}

/// Writes the data set into an empty store of the current schema.
pub async fn populate(store: &dyn Store) -> Written {
    store.set_change_recorder(Arc::new(RecordAll));
    let mut alice = new_user("alice", "Alice");
    alice.metadata.insert("lang".into(), json!("en"));
    store.create_user(alice).await.unwrap();
    for (id, name) in [("bob", "Bob"), ("carol", "Carol"), ("dave", "Dave")] {
        store.create_user(new_user(id, name)).await.unwrap();
    }
    let helper = NewUser {
        is_bot: true,
        ..new_user("helper", "Helper")
    };
    store.create_bot(helper, bot_settings()).await.unwrap();
    for (token, user, expires_at) in [(ALICE_TOKEN, "alice", None), (BOB_TOKEN, "bob", Some(FAR_FUTURE))] {
        let session = SessionRecord {
            token_hash: token,
            user_id: uid(user),
            created_at: SESSION_AT,
            expires_at,
        };
        store.create_session(session).await.unwrap();
    }
    store.set_last_seen(&uid("alice"), SEEN_AT).await.unwrap();
    let disable = UserPatch {
        disabled: Some(true),
        ..UserPatch::default()
    };
    store.update_user(&uid("carol"), disable).await.unwrap();

    let direct = NewChannel {
        id: NewChannel::direct_id(&uid("alice"), &uid("bob")),
        kind: ChannelKind::Direct,
        name: String::new(),
        cover_url: String::new(),
        custom_type: String::new(),
        data: None,
        created_by: Some(uid("alice")),
        members: vec![uid("alice"), uid("bob")],
        distinct_key: None,
    };
    assert_eq!(direct.id.as_str(), DIRECT);
    store.create_channel(direct).await.unwrap();
    let team = NewChannel {
        id: cid(TEAM),
        kind: ChannelKind::Group,
        name: "Team".into(),
        cover_url: "https://example.com/team.png".into(),
        custom_type: "project".into(),
        data: Some(json!({"topic": "launch"})),
        created_by: Some(uid("alice")),
        members: ["alice", "bob", "carol", "dave", "helper"].map(uid).to_vec(),
        distinct_key: Some("team-distinct-key".into()),
    };
    store.create_channel(team).await.unwrap();
    let gone = NewChannel {
        id: cid(GONE),
        kind: ChannelKind::Group,
        name: "Gone".into(),
        cover_url: String::new(),
        custom_type: String::new(),
        data: None,
        created_by: Some(uid("alice")),
        members: vec![uid("alice")],
        distinct_key: None,
    };
    store.create_channel(gone).await.unwrap();

    // team: seq 1..=13.
    let mut first = text(TEAM, "alice", "hello team");
    first.client_msg_id = Some("alice-1".into());
    first.mentions = vec![uid("bob")];
    let first = send(store, first).await;
    send(store, text(TEAM, "bob", "hi alice")).await;
    let mut in_thread = text(TEAM, "bob", "in a thread");
    in_thread.parent_id = Some(first.id);
    send(store, in_thread).await;
    store.put_file(doc_file(now_millis()), NO_QUOTA).await.unwrap();
    let mut doc = text(TEAM, "alice", "the plan");
    doc.kind = MessageKind::File;
    doc.file_id = Some(fid(DOC_FILE));
    send(store, doc).await;
    let mut ask = text(TEAM, "alice", "@helper summarize");
    ask.mentions = vec![uid("helper")];
    let ask = send(store, ask).await;
    let reply = send(store, bot_reply(ask.id)).await;
    store.save_reply_text(reply.id, "Here is".into()).await.unwrap();
    store
        .finish_reply(reply.id, "Here is the summary.".into(), ReplyState::Complete, None)
        .await
        .unwrap();
    let mut by_dave = text(TEAM, "dave", "dave was here");
    by_dave.client_msg_id = Some("dave-1".into());
    let by_dave = send(store, by_dave).await;
    let mut card = text(TEAM, "alice", "");
    card.kind = MessageKind::Custom;
    card.custom_type = "card".into();
    card.data = Some(json!({"k": "v"}));
    card.payload = Some(json!({"card": {"title": "Launch"}}));
    send(store, card).await;
    let typo = send(store, text(TEAM, "bob", "tpyo")).await;
    let fix = MessagePatch {
        text: Some("typo fixed".into()),
        ..MessagePatch::default()
    };
    let editor = uid("bob");
    let edit_rules = rules::edit_by(&cid(TEAM), typo.id, Some(&editor));
    store.edit_message(typo.id, fix, edit_rules).await.unwrap();
    let oops = send(store, text(TEAM, "alice", "oops")).await;
    store.delete_message(oops.id).await.unwrap();
    let mut spam = text(TEAM, "alice", "cheap stuff at http://spam.example");
    spam.flags = vec!["spam-link".into()];
    send(store, spam).await;
    let mut again = text(TEAM, "alice", "@helper again?");
    again.mentions = vec![uid("helper")];
    let again = send(store, again).await;
    let left = send(store, bot_reply(again.id)).await;
    store.save_reply_text(left.id, "partial answ".into()).await.unwrap();
    store.mark_read(&cid(TEAM), &uid("carol"), ChannelSeq(4)).await.unwrap();
    store.mark_read(&cid(TEAM), &uid("bob"), ChannelSeq(11)).await.unwrap();
    store.delete_user(&uid("dave")).await.unwrap();

    send(store, text(DIRECT, "alice", "hey bob")).await;
    send(store, text(DIRECT, "bob", "hey alice")).await;

    // gone: a file, a flagged message carrying it, then the channel is deleted.
    let gone_file = FileObject {
        id: fid(GONE_FILE),
        channel_id: cid(GONE),
        name: "old.png".into(),
        size: 99,
        content_type: "image/png".into(),
        ..doc_file(now_millis())
    };
    store.put_file(gone_file.clone(), NO_QUOTA).await.unwrap();
    let mut picture = text(GONE, "alice", "a picture");
    picture.kind = MessageKind::Image;
    picture.file_id = Some(fid(GONE_FILE));
    picture.flags = vec!["legacy".into()];
    let picture = send(store, picture).await;
    store.delete_channel(&cid(GONE)).await.unwrap();

    for usage in usage_records() {
        store.record_usage(usage).await.unwrap();
    }
    store.put_provider("openai-main", provider_config()).await.unwrap();
    store
        .put_setting("sendbird", "webhooks", webhook_setting())
        .await
        .unwrap();
    store
        .put_setting("nim", "bot:helper", json!({"robot_topic": "support"}))
        .await
        .unwrap();
    assert_eq!(store.prune_outbox(PRUNED_THROUGH).await.unwrap(), PRUNED_THROUGH);
    let event = store.outbox_after(DEAD_EVENT - 1, 1).await.unwrap().remove(0);
    assert_eq!(event.id, DEAD_EVENT);
    let letter = DeadLetter {
        endpoint_id: ENDPOINT.into(),
        event,
        attempts: 7,
        last_error: "HTTP 503 from https://hooks.example.com/sb".into(),
        failed_at: SEEN_AT,
    };
    store.put_dead_letter(letter).await.unwrap();
    assert!(
        store
            .acquire_lease(LEASE, "node-a", now_millis(), FAR_FUTURE)
            .await
            .unwrap()
    );
    Written {
        gone_file,
        gone_message: picture.id,
        dave_message: by_dave.id,
    }
}

/// Every message of a channel, oldest first.
pub async fn history(store: &dyn Store, channel: &str) -> Vec<Message> {
    let query = HistoryQuery {
        channel_id: cid(channel),
        range: HistoryRange::After(ChannelSeq::ZERO),
        limit: 1000,
    };
    store.history(query).await.unwrap()
}

/// Sequences 1..=n, in order.
pub fn assert_gap_free(messages: &[Message], n: u64, context: &str) {
    let seqs: Vec<u64> = messages.iter().map(|m| m.seq.0).collect();
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "{context}: gap-free sequences");
}
