//! Events: every committed change reaches the bus, in commit order, before the write returns; a refused
//! write or a write that changes nothing publishes nothing.

use confab_domain::bot::{ReplyState, UsageRecord};
use confab_domain::flag::FlagState;
use confab_domain::model::{ChannelPatch, FileObject, FileQuota, MessagePatch, UserPatch};
use confab_domain::ports::SessionRecord;
use confab_domain::{ChannelSeq, DomainError, Event, FileId, MessageId};
use serde_json::json;

use crate::Backend;
use crate::fixture::*;

/// Sequential writes publish their events in the order they committed.
pub async fn events_follow_commit_order<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    let mut events = env.events();
    user(s, "a").await;
    group(s, "g", &["a"]).await;
    for i in 0..20 {
        send(s, "g", "a", &i.to_string()).await;
    }
    assert!(matches!(events.next().await, Event::UserCreated(u) if u.id == uid("a")));
    assert!(matches!(events.next().await, Event::ChannelCreated { channel, .. } if channel.id == cid("g")));
    for want in 1..=20 {
        match events.next().await {
            Event::MessageCreated(m) => assert_eq!((m.seq, m.text.clone()), (ChannelSeq(want), (want - 1).to_string())),
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Under concurrent writers on two channels (2 tasks of 50 sends each), each channel's messages are
/// published in sequence order, every one once.
pub async fn concurrent_writes_publish_in_commit_order<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a", "b"]).await;
    group(s, "g", &["a", "b"]).await;
    group(s, "h", &["a", "b"]).await;
    let mut events = env.events();
    let mut tasks = Vec::new();
    for (channel, sender) in [("g", "a"), ("g", "b"), ("h", "a"), ("h", "b")] {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                send(&s, channel, sender, &format!("{sender}{i}")).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (mut g, mut h) = (Vec::new(), Vec::new());
    for _ in 0..200 {
        match events.next().await {
            Event::MessageCreated(m) if m.channel_id == cid("g") => g.push(m.seq.0),
            Event::MessageCreated(m) if m.channel_id == cid("h") => h.push(m.seq.0),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(g, (1..=100).collect::<Vec<u64>>());
    assert_eq!(h, (1..=100).collect::<Vec<u64>>());
}

/// When a write returns, its events have been handed to the bus already.
pub async fn events_are_published_before_the_write_returns<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    let mut events = env.events();
    let a = user(s, "a").await;
    assert!(matches!(events.already_published().await, Event::UserCreated(u) if *u == a));
    let g = group(s, "g", &["a"]).await;
    assert!(matches!(events.already_published().await, Event::ChannelCreated { channel, .. } if *channel == g));
    let m = send(s, "g", "a", "hi").await;
    assert!(matches!(events.already_published().await, Event::MessageCreated(c) if *c == m));
    let patch = MessagePatch {
        text: Some("hi!".into()),
        ..Default::default()
    };
    let e = edit(s, m.id, patch).await.unwrap();
    assert!(matches!(events.already_published().await, Event::MessageUpdated(c) if *c == e));
    s.delete_message(m.id).await.unwrap();
    assert!(matches!(events.already_published().await, Event::MessageDeleted { message_id, .. } if message_id == m.id));
}

/// Account, bot and channel writes publish the events that describe them, with what the write returned.
pub async fn account_and_channel_writes_publish_their_events<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    let mut events = env.events();
    let a = user(s, "a").await;
    assert!(matches!(events.next().await, Event::UserCreated(u) if *u == a));
    users(s, &["b", "c"]).await;
    events
        .until(|e| matches!(e, Event::UserCreated(u) if u.id == uid("c")))
        .await;
    let patch = UserPatch {
        nickname: Some("A".into()),
        ..Default::default()
    };
    let a = s.update_user(&uid("a"), patch).await.unwrap();
    assert!(matches!(events.next().await, Event::UserUpdated(u) if *u == a));

    let g = group(s, "g", &["b", "a"]).await;
    match events.next().await {
        Event::ChannelCreated { channel, members } => {
            assert_eq!(*channel, g);
            assert_eq!(sorted(members.to_vec()), [uid("a"), uid("b")]);
        }
        other => panic!("{other:?}"),
    }
    let patch = ChannelPatch {
        data: Some(Some(json!({"x": 1}))),
        ..Default::default()
    };
    let g = s.update_channel(&cid("g"), patch).await.unwrap();
    assert!(matches!(events.next().await, Event::ChannelUpdated(c) if *c == g));
    let g = s.add_members(&cid("g"), vec![uid("c")], Some(uid("a"))).await.unwrap();
    match events.next().await {
        Event::MembersJoined { channel, user_ids, by } => {
            assert_eq!((*channel).clone(), g);
            assert_eq!((user_ids.to_vec(), by), (vec![uid("c")], Some(uid("a"))));
        }
        other => panic!("{other:?}"),
    }
    let g = s.remove_member(&cid("g"), &uid("c"), None).await.unwrap();
    match events.next().await {
        Event::MemberLeft { channel, user_id, by } => {
            assert_eq!(((*channel).clone(), user_id, by), (g, uid("c"), None));
        }
        other => panic!("{other:?}"),
    }
    send(s, "g", "b", "hi").await;
    events.next().await;
    assert_eq!(
        s.mark_read(&cid("g"), &uid("a"), ChannelSeq(1)).await.unwrap(),
        ChannelSeq(1)
    );
    match events.next().await {
        Event::ReadUpTo {
            channel_id,
            user_id,
            seq,
        } => {
            assert_eq!((channel_id, user_id, seq), (cid("g"), uid("a"), ChannelSeq(1)));
        }
        other => panic!("{other:?}"),
    }

    let helper = bot(s, "helper").await;
    assert!(matches!(events.next().await, Event::UserCreated(u) if u.id == helper.id && u.is_bot));
    assert!(matches!(events.next().await, Event::BotChanged(id) if id == helper.id));
    s.update_bot(&helper.id, bot_settings()).await.unwrap();
    assert!(matches!(events.next().await, Event::BotChanged(id) if id == helper.id));

    group(s, "h", &["a"]).await;
    events.next().await;
    s.delete_user(&uid("a")).await.unwrap();
    let mut left = Vec::new();
    for _ in 0..2 {
        match events.next().await {
            Event::MemberLeft { channel, user_id, by } => {
                assert_eq!((user_id, by), (uid("a"), None));
                left.push(channel.id.clone());
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(sorted(left), [cid("g"), cid("h")]);
    assert!(matches!(events.next().await, Event::UserDeleted(id) if id == uid("a")));
    s.delete_channel(&cid("g")).await.unwrap();
    match events.next().await {
        Event::ChannelDeleted { channel_id, members } => {
            assert_eq!((channel_id, members.to_vec()), (cid("g"), vec![uid("b")]));
        }
        other => panic!("{other:?}"),
    }
}

/// Message writes publish the events that describe them: the message as stored, a thread's new count (after
/// a reply and after its delete), an edit, a delete, a finished or swept reply.
pub async fn message_writes_publish_their_events<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a"]).await;
    bot(s, "helper").await;
    group(s, "g", &["a", "helper"]).await;
    let mut events = env.events();
    let parent = send(s, "g", "a", "q").await;
    assert!(matches!(events.next().await, Event::MessageCreated(m) if *m == parent));
    let mut r = text("g", "a", "r");
    r.parent_id = Some(parent.id);
    let r = append(s, r).await.unwrap().message;
    assert!(matches!(events.next().await, Event::MessageCreated(m) if *m == r));
    let counted = s.get_message(parent.id).await.unwrap().unwrap();
    assert_eq!(counted.reply_count, 1);
    assert!(matches!(events.next().await, Event::MessageUpdated(m) if *m == counted));
    let patch = MessagePatch {
        text: Some("q?".into()),
        ..Default::default()
    };
    let edited = edit(s, parent.id, patch).await.unwrap();
    assert!(matches!(events.next().await, Event::MessageUpdated(m) if *m == edited));
    s.delete_message(r.id).await.unwrap();
    match events.next().await {
        Event::MessageDeleted {
            channel_id,
            message_id,
            seq,
        } => assert_eq!((channel_id, message_id, seq), (cid("g"), r.id, r.seq)),
        other => panic!("{other:?}"),
    }
    let recounted = s.get_message(parent.id).await.unwrap().unwrap();
    assert_eq!(recounted.reply_count, 0);
    assert!(matches!(events.next().await, Event::MessageUpdated(m) if *m == recounted));

    let first = append(s, reply("g", "helper", parent.id)).await.unwrap().message;
    assert!(matches!(events.next().await, Event::MessageCreated(m) if *m == first));
    s.save_reply_text(first.id, "Hel".into()).await.unwrap();
    let done = s
        .finish_reply(first.id, "Hello".into(), ReplyState::Complete, None)
        .await
        .unwrap();
    assert!(
        matches!(events.next().await, Event::MessageUpdated(m) if *m == done),
        "saving text publishes nothing"
    );
    let t = send(s, "g", "a", "again").await;
    events.next().await;
    let second = append(s, reply("g", "helper", t.id)).await.unwrap().message;
    events.next().await;
    s.sweep_generating().await.unwrap();
    let swept = s.get_message(second.id).await.unwrap().unwrap();
    assert!(matches!(events.next().await, Event::MessageUpdated(m) if *m == swept));
}

/// A refused write publishes nothing: the next event is that of a later write.
pub async fn a_failed_write_publishes_nothing<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a", "b"]).await;
    group(s, "g", &["a"]).await;
    let m = send(s, "g", "a", "hi").await;
    let mut events = env.events();
    assert_err!(append(s, text("g", "b", "x")).await, DomainError::NotMember { .. });
    assert_err!(append(s, text("nope", "a", "x")).await, DomainError::NotFound { .. });
    let mut nested = text("g", "a", "x");
    nested.parent_id = Some(MessageId(i64::MAX));
    assert_err!(append(s, nested).await, DomainError::NotFound { .. });
    assert_err!(s.create_user(new_user("a")).await, DomainError::AlreadyExists { .. });
    assert_err!(
        s.update_user(&uid("nobody"), UserPatch::default()).await,
        DomainError::NotFound { .. }
    );
    assert_err!(
        s.create_channel(new_group("g", &["a"])).await,
        DomainError::AlreadyExists { .. }
    );
    assert_err!(
        s.create_channel(new_group("g2", &["a", "nobody"])).await,
        DomainError::NotFound { .. }
    );
    assert_err!(
        s.add_members(&cid("g"), vec![uid("b"), uid("nobody")], None).await,
        DomainError::NotFound { .. }
    );
    assert_err!(
        s.remove_member(&cid("g"), &uid("b"), None).await,
        DomainError::NotMember { .. }
    );
    assert_err!(
        s.mark_read(&cid("g"), &uid("b"), ChannelSeq(1)).await,
        DomainError::NotMember { .. }
    );
    let patch = MessagePatch {
        text: Some("x".into()),
        ..Default::default()
    };
    assert_err!(edit(s, MessageId(i64::MAX), patch).await, DomainError::NotFound { .. });
    assert_err!(
        s.finish_reply(m.id, "x".into(), ReplyState::Complete, None).await,
        DomainError::Invalid { .. }
    );
    assert_err!(s.delete_user(&uid("nobody")).await, DomainError::NotFound { .. });
    assert_err!(s.delete_channel(&cid("nope")).await, DomainError::NotFound { .. });
    assert_err!(
        s.review_flag(m.id, FlagState::Removed, None).await,
        DomainError::NotFound { .. }
    );
    assert_nothing_published(s, &mut events, "refused writes").await;
}

/// Writes that change nothing publish nothing (a retried send or reply, a read position that does not
/// move, members already in, an existing direct channel, a final reply finished again, a message deleted
/// again), nor do writes no client is told about (saved reply text, last-seen times, sessions, settings,
/// providers, usage, files, flags and approvals).
pub async fn writes_without_events_publish_nothing<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a", "b"]).await;
    bot(s, "helper").await;
    group(s, "g", &["a", "b", "helper"]).await;
    s.create_channel(new_direct("a", "b")).await.unwrap();
    let mut keyed = text("g", "a", "hi");
    keyed.client_msg_id = Some("k".into());
    let m = append(s, keyed.clone()).await.unwrap().message;
    let gone = send(s, "g", "a", "gone").await;
    s.delete_message(gone.id).await.unwrap();
    let r = append(s, reply("g", "helper", m.id)).await.unwrap().message;
    let t = send(s, "g", "a", "again").await;
    let generating = append(s, reply("g", "helper", t.id)).await.unwrap().message;
    s.finish_reply(r.id, "done".into(), ReplyState::Complete, None)
        .await
        .unwrap();
    s.mark_read(&cid("g"), &uid("b"), ChannelSeq(2)).await.unwrap();
    let mut events = env.events();

    assert!(append(s, keyed).await.unwrap().duplicate);
    assert!(append(s, reply("g", "helper", m.id)).await.unwrap().duplicate);
    assert_eq!(
        s.mark_read(&cid("g"), &uid("b"), ChannelSeq(1)).await.unwrap(),
        ChannelSeq(2)
    );
    s.add_members(&cid("g"), vec![uid("a"), uid("b")], None).await.unwrap();
    let (_, created) = s.create_channel(new_direct("b", "a")).await.unwrap();
    assert!(!created);
    s.finish_reply(r.id, "other".into(), ReplyState::Failed, None)
        .await
        .unwrap();
    s.delete_message(gone.id).await.unwrap();
    s.save_reply_text(generating.id, "partial".into()).await.unwrap();
    s.set_last_seen(&uid("a"), 1).await.unwrap();
    let session = SessionRecord {
        token_hash: [1; 32],
        user_id: uid("a"),
        created_at: 1,
        expires_at: None,
    };
    s.create_session(session).await.unwrap();
    s.revoke_sessions(&uid("a")).await.unwrap();
    s.put_setting("n", "k", json!(1)).await.unwrap();
    s.delete_setting("n", "k").await.unwrap();
    s.put_provider("p", json!({})).await.unwrap();
    s.delete_provider("p").await.unwrap();
    s.flag_message(m.id, vec!["spam".into()]).await.unwrap();
    s.review_flag(m.id, FlagState::Approved, None).await.unwrap();
    s.record_usage(UsageRecord {
        day: "2024-01-01".into(),
        bot_id: uid("helper"),
        user_id: uid("a"),
        channel_id: cid("g"),
        prompt_tokens: 1,
        completion_tokens: 1,
        replies: 1,
    })
    .await
    .unwrap();
    let file = FileObject {
        id: FileId::parse("00000000000000000000000000000001").unwrap(),
        channel_id: cid("g"),
        uploader_id: Some(uid("a")),
        name: "f".into(),
        size: 1,
        content_type: "text/plain".into(),
        sha256: String::new(),
        created_at: 1,
    };
    let quota = FileQuota {
        per_user: 10,
        total: 10,
    };
    s.put_file(file, quota).await.unwrap();
    assert_eq!(s.delete_unattached_files(2, 10).await.unwrap().len(), 1);
    assert_nothing_published(s, &mut events, "writes without events").await;
}
