use std::sync::Arc;

use confab_bus::LocalBus;
use confab_domain::model::{ChannelKind, HistoryRange};
use confab_domain::ports::EventBus;
use confab_domain::{Event, Limits};

use super::*;

fn uid(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

fn cid(s: &str) -> ChannelId {
    ChannelId::parse(s).unwrap()
}

async fn open() -> (tempfile::TempDir, Arc<SqliteStore>, Arc<LocalBus>) {
    let dir = tempfile::tempdir().unwrap();
    let bus = Arc::new(LocalBus::new(100_000));
    let store = SqliteStore::open(SqliteConfig::new(dir.path().join("t.db")), bus.clone()).unwrap();
    (dir, Arc::new(store), bus)
}

async fn user(store: &SqliteStore, id: &str) {
    store
        .create_user(NewUser {
            id: uid(id),
            nickname: id.into(),
            profile_url: String::new(),
            metadata: Default::default(),
            is_bot: false,
        })
        .await
        .unwrap();
}

async fn group(store: &SqliteStore, id: &str, members: &[&str]) -> Channel {
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
    store.create_channel(c).await.unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_get_gap_free_sequences() {
    let (_dir, store, _bus) = open().await;
    for u in ["a", "b", "c"] {
        user(&store, u).await;
    }
    group(&store, "g", &["a", "b", "c"]).await;
    let mut tasks = Vec::new();
    for i in 0..300 {
        let store = store.clone();
        let sender = ["a", "b", "c"][i % 3];
        tasks.push(tokio::spawn(async move {
            store
                .append_ruled(NewMessage::text(cid("g"), uid(sender), format!("m{i}")))
                .await
                .unwrap()
                .message
                .seq
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap().0);
    }
    seqs.sort();
    assert_eq!(seqs, (1..=300).collect::<Vec<u64>>());
    let hist = store
        .history(HistoryQuery {
            channel_id: cid("g"),
            range: HistoryRange::After(ChannelSeq(0)),
            limit: 1000,
        })
        .await
        .unwrap();
    assert_eq!(
        hist.iter().map(|m| m.seq.0).collect::<Vec<_>>(),
        (1..=300).collect::<Vec<u64>>()
    );
    assert!(hist.windows(2).all(|w| w[0].id < w[1].id), "ids increase with seq");
}

#[tokio::test]
async fn retried_send_returns_the_original() {
    let (_dir, store, _bus) = open().await;
    user(&store, "a").await;
    group(&store, "g", &["a"]).await;
    let mut m = NewMessage::text(cid("g"), uid("a"), "hello");
    m.client_msg_id = Some("k1".into());
    let first = store.append_ruled(m.clone()).await.unwrap();
    assert!(!first.duplicate);
    m.text = "different text".into();
    let again = store.append_ruled(m).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.message.id, first.message.id);
    assert_eq!(again.message.text, "hello");
    assert_eq!(
        store.get_channel(&cid("g")).await.unwrap().unwrap().last_seq,
        ChannelSeq(1)
    );
}

#[tokio::test]
async fn non_members_cannot_send_and_failures_leave_no_gap() {
    let (_dir, store, _bus) = open().await;
    user(&store, "a").await;
    user(&store, "b").await;
    group(&store, "g", &["a"]).await;
    let err = store
        .append_ruled(NewMessage::text(cid("g"), uid("b"), "x"))
        .await
        .unwrap_err();
    assert!(matches!(err, DomainError::NotMember { .. }), "{err:?}");
    let err = store
        .append_ruled(NewMessage::text(cid("nope"), uid("b"), "x"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, DomainError::NotFound { entity: "channel", .. }),
        "{err:?}"
    );
    let ok = store
        .append_ruled(NewMessage::text(cid("g"), uid("a"), "x"))
        .await
        .unwrap();
    assert_eq!(ok.message.seq, ChannelSeq(1));
}

#[tokio::test]
async fn direct_channels_are_distinct() {
    let (_dir, store, _bus) = open().await;
    user(&store, "a").await;
    user(&store, "b").await;
    let mk = |x: &str, y: &str| NewChannel {
        id: NewChannel::direct_id(&uid(x), &uid(y)),
        kind: ChannelKind::Direct,
        name: String::new(),
        cover_url: String::new(),
        custom_type: String::new(),
        data: None,
        created_by: Some(uid(x)),
        members: vec![uid(x), uid(y)],
        distinct_key: None,
    };
    let (c1, created1) = store.create_channel(mk("a", "b")).await.unwrap();
    let (c2, created2) = store.create_channel(mk("b", "a")).await.unwrap();
    assert!(created1 && !created2);
    assert_eq!(c1.id, c2.id);
    assert_eq!(c1.member_count, 2);
}

#[tokio::test]
async fn a_distinct_key_names_one_channel() {
    let (_dir, store, _bus) = open().await;
    user(&store, "a").await;
    user(&store, "b").await;
    let mk = |id: &str, key: Option<&str>| NewChannel {
        id: cid(id),
        kind: ChannelKind::Group,
        name: id.into(),
        cover_url: String::new(),
        custom_type: String::new(),
        data: None,
        created_by: None,
        members: vec![uid("a"), uid("b")],
        distinct_key: key.map(String::from),
    };
    let (c1, created1) = store.create_channel(mk("g1", Some("k"))).await.unwrap();
    assert!(created1 && c1.distinct);
    // Another id, same key: the first channel, not a new one.
    let (c2, created2) = store.create_channel(mk("g2", Some("k"))).await.unwrap();
    assert!(!created2);
    assert_eq!(c2.id, cid("g1"));
    assert!(store.get_channel(&cid("g2")).await.unwrap().is_none());
    let (c3, created3) = store.create_channel(mk("g3", None)).await.unwrap();
    assert!(created3 && !c3.distinct);
    let (_, created4) = store.create_channel(mk("g4", Some("other"))).await.unwrap();
    assert!(created4);
    // A taken id is still an error for a new key.
    let err = store.create_channel(mk("g1", Some("third"))).await.unwrap_err();
    assert!(matches!(err, DomainError::AlreadyExists { .. }), "{err:?}");
    assert!(store.get_channel(&cid("g1")).await.unwrap().unwrap().distinct);
}

#[tokio::test]
async fn timestamps_map_to_sequences() {
    let (_dir, store, _bus) = open().await;
    user(&store, "a").await;
    group(&store, "g", &["a"]).await;
    group(&store, "empty", &["a"]).await;
    let mut times = Vec::new();
    for i in 0..5 {
        let m = store
            .append_ruled(NewMessage::text(cid("g"), uid("a"), format!("m{i}")))
            .await
            .unwrap()
            .message;
        times.push(m.created_at);
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    let at = |t| {
        let store = store.clone();
        async move { store.seq_before_time(&cid("g"), t).await.unwrap().0 }
    };
    assert_eq!(at(times[0]).await, 0, "nothing before the first message");
    assert_eq!(at(times[0] + 1).await, 1);
    assert_eq!(at(times[2]).await, 2);
    assert_eq!(at(times[2] + 1).await, 3);
    assert_eq!(at(times[4] + 1000).await, 5);
    assert_eq!(at(0).await, 0);
    assert_eq!(store.seq_before_time(&cid("empty"), times[4] + 1).await.unwrap().0, 0);
}

#[tokio::test]
async fn filtered_history_counts_matches_only() {
    use confab_domain::model::{MessageFilter, MessageKind};
    let (_dir, store, _bus) = open().await;
    user(&store, "a").await;
    user(&store, "b").await;
    group(&store, "g", &["a", "b"]).await;
    for i in 0..10 {
        let mut m = NewMessage::text(cid("g"), uid(if i % 2 == 0 { "a" } else { "b" }), format!("m{i}"));
        if i % 3 == 0 {
            m.custom_type = "poll".into();
        }
        store.append_ruled(m).await.unwrap();
    }
    let mut admin = NewMessage::text(cid("g"), uid("a"), "notice");
    admin.sender_id = None;
    admin.kind = MessageKind::Admin;
    store.append_ruled(admin).await.unwrap();
    let q = |range, limit| HistoryQuery {
        channel_id: cid("g"),
        range,
        limit,
    };
    let texts = |ms: Vec<Message>| ms.into_iter().map(|m| m.text).collect::<Vec<_>>();
    let polls = MessageFilter {
        custom_types: Some(vec!["poll".into()]),
        ..Default::default()
    };
    let got = store
        .history_matching(q(HistoryRange::Latest, 3), polls.clone())
        .await
        .unwrap();
    assert_eq!(texts(got), ["m3", "m6", "m9"]);
    let got = store
        .history_matching(q(HistoryRange::Before(ChannelSeq(7)), 10), polls.clone())
        .await
        .unwrap();
    assert_eq!(texts(got), ["m0", "m3"]);
    let from_b = MessageFilter {
        sender_ids: Some(vec![uid("b")]),
        custom_types: Some(vec![String::new()]),
        ..Default::default()
    };
    let got = store
        .history_matching(q(HistoryRange::After(ChannelSeq(0)), 3), from_b)
        .await
        .unwrap();
    assert_eq!(texts(got), ["m1", "m5", "m7"]);
    let admins = MessageFilter {
        kinds: Some(vec![MessageKind::Admin]),
        ..Default::default()
    };
    let got = store
        .history_matching(q(HistoryRange::Latest, 5), admins)
        .await
        .unwrap();
    assert_eq!(texts(got), ["notice"]);
    let all = store
        .history_matching(q(HistoryRange::Latest, 4), MessageFilter::default())
        .await
        .unwrap();
    assert_eq!(texts(all), ["m7", "m8", "m9", "notice"]);
    let m8 = store
        .history(q(HistoryRange::After(ChannelSeq(8)), 1))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(m8.text, "m8");
    store.delete_message(m8.id).await.unwrap();
    let live = MessageFilter {
        exclude_deleted: true,
        ..Default::default()
    };
    let got = store.history_matching(q(HistoryRange::Latest, 4), live).await.unwrap();
    assert_eq!(texts(got), ["m6", "m7", "m9", "notice"]);
}

#[tokio::test]
async fn events_follow_commit_order() {
    let (_dir, store, bus) = open().await;
    let mut events = bus.subscribe();
    user(&store, "a").await;
    group(&store, "g", &["a"]).await;
    for i in 0..20 {
        store
            .append_ruled(NewMessage::text(cid("g"), uid("a"), format!("{i}")))
            .await
            .unwrap();
    }
    assert!(matches!(events.next().await, Some(Event::UserCreated(_))));
    assert!(matches!(events.next().await, Some(Event::ChannelCreated { .. })));
    for want in 1..=20 {
        match events.next().await {
            Some(Event::MessageCreated(m)) => assert_eq!(m.seq, ChannelSeq(want)),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn threads_count_replies_and_read_marks_only_move_forward() {
    let (_dir, store, _bus) = open().await;
    user(&store, "a").await;
    user(&store, "b").await;
    group(&store, "g", &["a", "b"]).await;
    let parent = store
        .append_ruled(NewMessage::text(cid("g"), uid("a"), "q"))
        .await
        .unwrap()
        .message;
    for i in 0..3 {
        let mut r = NewMessage::text(cid("g"), uid("b"), format!("r{i}"));
        r.parent_id = Some(parent.id);
        store.append_ruled(r).await.unwrap();
    }
    assert_eq!(store.get_message(parent.id).await.unwrap().unwrap().reply_count, 3);
    let replies = store.thread(parent.id, None, 10).await.unwrap();
    assert_eq!(
        replies.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
        ["r0", "r1", "r2"]
    );
    assert_eq!(
        store.mark_read(&cid("g"), &uid("a"), ChannelSeq(2)).await.unwrap(),
        ChannelSeq(2)
    );
    assert_eq!(
        store.mark_read(&cid("g"), &uid("a"), ChannelSeq(1)).await.unwrap(),
        ChannelSeq(2)
    );
    assert_eq!(
        store.mark_read(&cid("g"), &uid("a"), ChannelSeq(99)).await.unwrap(),
        ChannelSeq(4)
    );
}

#[tokio::test]
async fn data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    {
        let store = SqliteStore::open(SqliteConfig::new(&path), Arc::new(LocalBus::default())).unwrap();
        user(&store, "a").await;
        group(&store, "g", &["a"]).await;
        store
            .append_ruled(NewMessage::text(cid("g"), uid("a"), "kept"))
            .await
            .unwrap();
    }
    let store = SqliteStore::open(SqliteConfig::new(&path), Arc::new(LocalBus::default())).unwrap();
    let m = store
        .history(HistoryQuery {
            channel_id: cid("g"),
            range: HistoryRange::Latest,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].text, "kept");
}

#[tokio::test]
async fn bot_replies_are_one_per_trigger_and_finish_once() {
    use confab_domain::bot::{BotSettings, ReplyInfo, ReplyState};
    let (_dir, store, _bus) = open().await;
    user(&store, "alice").await;
    let settings = BotSettings {
        provider: "fake".into(),
        ..BotSettings::default()
    };
    let bot = store
        .create_bot(
            NewUser {
                id: uid("helper"),
                nickname: "Helper".into(),
                profile_url: String::new(),
                metadata: Default::default(),
                is_bot: false,
            },
            settings.clone(),
        )
        .await
        .unwrap();
    assert!(store.get_user(&bot.id).await.unwrap().unwrap().is_bot);
    assert_eq!(store.list_bots().await.unwrap().len(), 1);
    group(&store, "g", &["alice", "helper"]).await;
    let trigger = store
        .append_ruled(NewMessage::text(cid("g"), uid("alice"), "@helper hi"))
        .await
        .unwrap()
        .message;

    let mut reply = NewMessage::text(cid("g"), uid("helper"), "");
    reply.reply = Some(ReplyInfo {
        state: ReplyState::Generating,
        trigger_id: Some(trigger.id),
        reason: None,
    });
    let first = store.append_ruled(reply.clone()).await.unwrap();
    let again = store.append_ruled(reply).await.unwrap();
    assert!(again.duplicate, "one reply per (bot, trigger)");
    assert_eq!(first.message.id, again.message.id);

    store.save_reply_text(first.message.id, "Hel".into()).await.unwrap();
    let done = store
        .finish_reply(first.message.id, "Hello!".into(), ReplyState::Complete, None)
        .await
        .unwrap();
    assert_eq!(done.reply.as_ref().unwrap().state, ReplyState::Complete);
    // A second finish changes nothing.
    let same = store
        .finish_reply(first.message.id, "other".into(), ReplyState::Failed, Some("x".into()))
        .await
        .unwrap();
    assert_eq!(
        (same.text.as_str(), same.reply.unwrap().state),
        ("Hello!", ReplyState::Complete)
    );

    // A reply left generating is swept to interrupted, keeping its saved text.
    let t2 = store
        .append_ruled(NewMessage::text(cid("g"), uid("alice"), "@helper again"))
        .await
        .unwrap()
        .message;
    let mut r2 = NewMessage::text(cid("g"), uid("helper"), "");
    r2.reply = Some(ReplyInfo {
        state: ReplyState::Generating,
        trigger_id: Some(t2.id),
        reason: None,
    });
    let r2 = store.append_ruled(r2).await.unwrap().message;
    store.save_reply_text(r2.id, "partial".into()).await.unwrap();
    assert_eq!(store.sweep_generating().await.unwrap(), 1);
    let swept = store.get_message(r2.id).await.unwrap().unwrap();
    assert_eq!(swept.text, "partial");
    assert_eq!(swept.reply.unwrap().state, ReplyState::Interrupted);
    assert_eq!(store.sweep_generating().await.unwrap(), 0);
}

#[tokio::test]
async fn settings_are_kept_per_namespace_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    {
        let store = SqliteStore::open(SqliteConfig::new(path.clone()), Arc::new(LocalBus::new(16))).unwrap();
        assert_eq!(store.get_setting("a", "k").await.unwrap(), None);
        store.put_setting("a", "k", serde_json::json!({"x": 1})).await.unwrap();
        store.put_setting("b", "k", serde_json::json!("other")).await.unwrap();
        store.put_setting("a", "k", serde_json::json!({"x": 2})).await.unwrap();
        assert!(store.delete_setting("b", "k").await.unwrap());
        assert!(!store.delete_setting("b", "k").await.unwrap());
    }
    let store = SqliteStore::open(SqliteConfig::new(path), Arc::new(LocalBus::new(16))).unwrap();
    assert_eq!(
        store.get_setting("a", "k").await.unwrap(),
        Some(serde_json::json!({"x": 2}))
    );
    assert_eq!(store.get_setting("b", "k").await.unwrap(), None);
}

/// Records every message send, and tags the rows with the cause, to check what the writer hands over.
struct SendRecorder;

impl confab_domain::outbox::ChangeRecorder for SendRecorder {
    fn record(
        &self,
        cause: confab_domain::outbox::ChangeCause,
        event: &Event,
    ) -> Option<confab_domain::outbox::OutboxRecord> {
        match event {
            Event::MessageCreated(m) => Some(confab_domain::outbox::OutboxRecord {
                event_type: if cause == confab_domain::outbox::ChangeCause::Send {
                    "sent"
                } else {
                    "other"
                },
                channel_id: Some(m.channel_id.clone()),
                payload: m.text.clone().into_bytes(),
            }),
            _ => None,
        }
    }
}

#[tokio::test]
async fn the_outbox_commits_and_rolls_back_with_the_change() {
    let (_dir, store, _bus) = open().await;
    user(&store, "a").await;
    user(&store, "b").await;
    group(&store, "g", &["a"]).await;
    store
        .append_ruled(NewMessage::text(cid("g"), uid("a"), "before"))
        .await
        .unwrap();
    assert!(
        store.outbox_after(0, 10).await.unwrap().is_empty(),
        "nothing recorded without a recorder"
    );
    assert_eq!(store.outbox_head().await.unwrap(), 0);

    store.set_change_recorder(Arc::new(SendRecorder));
    let ok = store
        .append_ruled(NewMessage::text(cid("g"), uid("a"), "one"))
        .await
        .unwrap();
    // Not a member: the command rolls back, its outbox row with it.
    let refused = store.append_ruled(NewMessage::text(cid("g"), uid("b"), "never")).await;
    assert!(refused.is_err());
    // A retried send returns the original and records nothing new.
    let mut again = NewMessage::text(cid("g"), uid("a"), "two");
    again.client_msg_id = Some("k".into());
    store.append_ruled(again.clone()).await.unwrap();
    store.append_ruled(again).await.unwrap();

    let rows = store.outbox_after(0, 10).await.unwrap();
    let texts: Vec<&[u8]> = rows.iter().map(|r| r.payload.as_slice()).collect();
    assert_eq!(texts, [b"one".as_slice(), b"two".as_slice()]);
    assert!(
        rows.iter()
            .all(|r| r.event_type == "sent" && r.channel_id == Some(cid("g")))
    );
    assert!(rows[0].id < rows[1].id && rows[0].created_at >= ok.message.created_at);
    assert_eq!(store.outbox_after(rows[0].id, 10).await.unwrap().len(), 1);

    // Pruned ids are never reused: the head stays, the next row goes above it.
    let head = store.outbox_head().await.unwrap();
    assert_eq!(head, rows[1].id);
    assert_eq!(store.prune_outbox(head).await.unwrap(), 2);
    assert_eq!(store.outbox_head().await.unwrap(), head);
    store
        .append_ruled(NewMessage::text(cid("g"), uid("a"), "three"))
        .await
        .unwrap();
    let after = store.outbox_after(0, 10).await.unwrap();
    assert_eq!(after.len(), 1);
    assert!(after[0].id > head);

    let letter = confab_domain::outbox::DeadLetter {
        endpoint_id: "ep".into(),
        event: after[0].clone(),
        attempts: 3,
        last_error: "HTTP 500".into(),
        failed_at: 1,
    };
    store.put_dead_letter(letter.clone()).await.unwrap();
    assert_eq!(
        store.get_dead_letter("ep", after[0].id).await.unwrap(),
        Some(letter.clone())
    );
    assert_eq!(store.list_dead_letters("ep", 0, 10).await.unwrap(), vec![letter]);
    assert!(store.list_dead_letters("other", 0, 10).await.unwrap().is_empty());
    assert_eq!(store.delete_dead_letters("ep", None).await.unwrap(), 1);
    assert!(store.get_dead_letter("ep", after[0].id).await.unwrap().is_none());
}

fn file(id: &str, channel: &str, uploader: Option<&str>, size: u64, created_at: Millis) -> FileObject {
    FileObject {
        id: FileId::parse(id).unwrap(),
        channel_id: cid(channel),
        uploader_id: uploader.map(uid),
        name: "f".into(),
        size,
        content_type: "text/plain".into(),
        sha256: String::new(),
        created_at,
    }
}

#[tokio::test]
async fn file_quotas_are_checked_with_the_insert_and_unattached_files_are_swept() {
    let (_dir, store, _bus) = open().await;
    user(&store, "a").await;
    group(&store, "g", &["a"]).await;
    let quota = FileQuota {
        per_user: 100,
        total: 150,
    };
    let ids = ["0000000000000000000000000000000a", "0000000000000000000000000000000b"];
    store
        .put_file(file(ids[0], "g", Some("a"), 60, 1), quota)
        .await
        .unwrap();
    let over_user = store.put_file(file(ids[1], "g", Some("a"), 41, 2), quota).await;
    assert!(
        matches!(over_user, Err(DomainError::LimitExceeded { limit: 100, .. })),
        "{over_user:?}"
    );
    store.put_file(file(ids[1], "g", None, 80, 2), quota).await.unwrap();
    let over_total = store
        .put_file(file("0000000000000000000000000000000c", "g", None, 11, 3), quota)
        .await;
    assert!(
        matches!(over_total, Err(DomainError::LimitExceeded { limit: 150, .. })),
        "{over_total:?}"
    );

    // The first file is carried by a message: only the second is swept.
    let mut m = NewMessage::text(cid("g"), uid("a"), "");
    m.kind = confab_domain::model::MessageKind::File;
    m.file_id = Some(FileId::parse(ids[0]).unwrap());
    store.append_ruled(m).await.unwrap();
    assert_eq!(
        store.delete_unattached_files(2, 10).await.unwrap(),
        vec![],
        "created at 2: not before 2"
    );
    assert_eq!(
        store.delete_unattached_files(10, 10).await.unwrap(),
        vec![FileId::parse(ids[1]).unwrap()]
    );
    assert!(store.get_file(&FileId::parse(ids[1]).unwrap()).await.unwrap().is_none());
    assert!(store.get_file(&FileId::parse(ids[0]).unwrap()).await.unwrap().is_some());
    // The sweep gave its bytes back to the total.
    store
        .put_file(file("0000000000000000000000000000000c", "g", None, 90, 3), quota)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_session_token_belongs_to_one_account() {
    let (_dir, store, _bus) = open().await;
    user(&store, "a").await;
    user(&store, "b").await;
    let session = |u: &str, expires_at| confab_domain::ports::SessionRecord {
        token_hash: [7; 32],
        user_id: uid(u),
        created_at: 1,
        expires_at,
    };
    store.create_session(session("a", None)).await.unwrap();
    // The same account again: kept, with the new expiry.
    store.create_session(session("a", Some(i64::MAX))).await.unwrap();
    let found = store.find_session(&[7; 32]).await.unwrap().unwrap();
    assert_eq!((found.user_id, found.expires_at), (uid("a"), Some(i64::MAX)));
    // Another account: refused, and the token still signs in its owner.
    let err = store.create_session(session("b", None)).await.unwrap_err();
    assert!(matches!(err, DomainError::Invalid { field: "token", .. }), "{err:?}");
    assert_eq!(store.find_session(&[7; 32]).await.unwrap().unwrap().user_id, uid("a"));
}

impl SqliteStore {
    /// Appends with the rules the service applies to every new message.
    async fn append_ruled(&self, m: NewMessage) -> DomainResult<Appended> {
        let rules = confab_domain::rules::new_message(&m);
        self.append_message(m, rules).await
    }
}
