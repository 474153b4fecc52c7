//! Messages: sequences, idempotent sends, history, edits and soft deletes.

use std::time::Duration;

use confab_domain::model::{HistoryQuery, HistoryRange, MessageFilter, MessageKind, MessagePatch, UserPatch};
use confab_domain::{ChannelSeq, DomainError, Event, MessageId};
use serde_json::json;

use crate::Backend;
use crate::fixture::*;

/// A message reads back with every field it was sent with; the channel's last sequence and time follow.
pub async fn messages_read_back_as_sent<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a", "b"]).await;
    group(s, "g", &["a", "b"]).await;
    let mut m = text("g", "a", "hello @b");
    m.custom_type = "greeting".into();
    m.data = Some(json!({"k": "v"}));
    m.payload = Some(json!({"p": [1, 2]}));
    m.mentions = vec![uid("b")];
    m.client_msg_id = Some("c1".into());
    let got = append(s, m).await.unwrap();
    assert!(!got.duplicate);
    let sent = got.message;
    assert_eq!((sent.channel_id.clone(), sent.seq), (cid("g"), ChannelSeq(1)));
    assert_eq!((sent.sender_id.clone(), sent.kind), (Some(uid("a")), MessageKind::Text));
    assert_eq!(
        (sent.text.as_str(), sent.custom_type.as_str()),
        ("hello @b", "greeting")
    );
    assert_eq!(sent.data, Some(json!({"k": "v"})));
    assert_eq!(sent.payload, Some(json!({"p": [1, 2]})));
    assert_eq!(sent.mentions, [uid("b")]);
    assert_eq!(sent.client_msg_id.as_deref(), Some("c1"));
    assert_eq!((sent.parent_id, sent.reply_count, &sent.file), (None, 0, &None));
    assert!(!sent.edited && !sent.deleted && sent.reply.is_none());
    assert_eq!(sent.created_at, sent.updated_at);
    assert_eq!(s.get_message(sent.id).await.unwrap(), Some(sent.clone()));

    let mut custom = text("g", "b", "");
    custom.kind = MessageKind::Custom;
    custom.payload = Some(json!({"card": true}));
    let custom = append(s, custom).await.unwrap().message;
    assert_eq!((custom.kind, custom.seq), (MessageKind::Custom, ChannelSeq(2)));
    assert_eq!(s.get_message(custom.id).await.unwrap(), Some(custom));

    let mut admin = text("g", "a", "notice");
    admin.sender_id = None;
    admin.kind = MessageKind::Admin;
    let admin = append(s, admin).await.unwrap().message;
    assert_eq!((admin.sender_id.clone(), admin.seq), (None, ChannelSeq(3)));
    assert!(admin.id > sent.id, "message ids increase in commit order");
    let c = s.get_channel(&cid("g")).await.unwrap().unwrap();
    assert_eq!((c.last_seq, c.last_message_at), (ChannelSeq(3), Some(admin.created_at)));
    assert_eq!(s.get_message(MessageId(i64::MAX)).await.unwrap(), None);
}

/// Concurrent writers on one channel (4 tasks of 50 sends) get the sequences 1..=200, each once, and
/// message ids that increase with them.
pub async fn concurrent_sends_get_gap_free_sequences<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    let senders = ["a", "b", "c", "d"];
    users(s, &senders).await;
    group(s, "g", &senders).await;
    let mut tasks = Vec::new();
    for sender in senders {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..50 {
                seqs.push(send(&s, "g", sender, &format!("{sender}{i}")).await.seq.0);
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let mine = t.await.unwrap();
        assert!(mine.windows(2).all(|w| w[0] < w[1]), "one writer's sends ascend");
        all.extend(mine);
    }
    assert_eq!(sorted(all), (1..=200).collect::<Vec<u64>>());
    let hist = history(s, "g").await;
    assert_eq!(seqs(&hist), (1..=200).collect::<Vec<u64>>());
    assert!(hist.windows(2).all(|w| w[0].id < w[1].id), "ids increase with seq");
    assert_eq!(
        s.get_channel(&cid("g")).await.unwrap().unwrap().last_seq,
        ChannelSeq(200)
    );
}

/// Refused sends (a non-member, an unknown channel, a reply to a reply, an unknown file) store nothing and
/// take no sequence: the next send gets the next number.
pub async fn a_failed_send_leaves_no_gap<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a", "b"]).await;
    group(s, "g", &["a"]).await;
    let first = send(s, "g", "a", "one").await;
    let reply = {
        let mut r = text("g", "a", "reply");
        r.parent_id = Some(first.id);
        append(s, r).await.unwrap().message
    };
    assert_err!(append(s, text("g", "b", "x")).await, DomainError::NotMember { .. });
    assert_err!(append(s, text("g", "ghost", "x")).await, DomainError::NotMember { .. });
    assert_err!(
        append(s, text("nope", "a", "x")).await,
        DomainError::NotFound { entity: "channel", .. }
    );
    let mut nested = text("g", "a", "x");
    nested.parent_id = Some(reply.id);
    assert_err!(append(s, nested).await, DomainError::Invalid { field: "parent_id", .. });
    let mut with_file = text("g", "a", "");
    with_file.kind = MessageKind::File;
    with_file.file_id = Some(confab_domain::FileId::parse("0000000000000000000000000000abcd").unwrap());
    assert_err!(append(s, with_file).await, DomainError::NotFound { entity: "file", .. });
    let ok = send(s, "g", "a", "two").await;
    assert_eq!(ok.seq, ChannelSeq(3));
    assert_eq!(seqs(&history(s, "g").await), [1, 2, 3]);
}

/// A blocked account cannot send (`Forbidden`) until unblocked; its refused send takes no sequence.
pub async fn blocked_accounts_cannot_send<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a", "b"]).await;
    group(s, "g", &["a", "b"]).await;
    let block = |on: bool| UserPatch {
        disabled: Some(on),
        ..Default::default()
    };
    s.update_user(&uid("a"), block(true)).await.unwrap();
    assert_err!(append(s, text("g", "a", "x")).await, DomainError::Forbidden(_));
    assert_eq!(send(s, "g", "b", "ok").await.seq, ChannelSeq(1));
    s.update_user(&uid("a"), block(false)).await.unwrap();
    assert_eq!(send(s, "g", "a", "back").await.seq, ChannelSeq(2));
}

/// A retried send (same sender and `client_msg_id`) returns the original with `duplicate: true`, stores
/// nothing and publishes nothing.
pub async fn retried_send_returns_the_original<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a"]).await;
    group(s, "g", &["a"]).await;
    let mut events = env.events();
    let mut m = text("g", "a", "hello");
    m.client_msg_id = Some("k1".into());
    let first = append(s, m.clone()).await.unwrap();
    assert!(!first.duplicate);
    assert!(matches!(events.next().await, Event::MessageCreated(c) if c.id == first.message.id));
    m.text = "different text".into();
    let again = append(s, m).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.message, first.message);
    assert_eq!(again.message.text, "hello");
    assert_eq!(s.get_channel(&cid("g")).await.unwrap().unwrap().last_seq, ChannelSeq(1));
    assert_nothing_published(s, &mut events, "a retried send").await;
}

/// Concurrent retries of one send (8 tasks, one key) store one message: exactly one is not a duplicate,
/// and all return the same message.
pub async fn concurrent_retries_store_one_message<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a"]).await;
    group(s, "g", &["a"]).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut m = text("g", "a", format!("try {i}"));
            m.client_msg_id = Some("same".into());
            append(&s, m).await.unwrap()
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    assert_eq!(results.iter().filter(|r| !r.duplicate).count(), 1);
    assert!(results.iter().all(|r| r.message.id == results[0].message.id));
    assert_eq!(history(s, "g").await.len(), 1);
    assert_eq!(s.get_channel(&cid("g")).await.unwrap().unwrap().last_seq, ChannelSeq(1));
}

/// A `client_msg_id` belongs to one sender: another sender may use it, and its sender reusing it in
/// another channel is `Invalid`.
pub async fn a_client_msg_id_is_scoped_to_its_sender_and_channel<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a", "b"]).await;
    group(s, "g", &["a", "b"]).await;
    group(s, "h", &["a"]).await;
    let keyed = |channel: &str, sender: &str| {
        let mut m = text(channel, sender, "x");
        m.client_msg_id = Some("k".into());
        m
    };
    let first = append(s, keyed("g", "a")).await.unwrap();
    assert_err!(
        append(s, keyed("h", "a")).await,
        DomainError::Invalid {
            field: "client_msg_id",
            ..
        }
    );
    assert!(history(s, "h").await.is_empty());
    assert_eq!(s.get_channel(&cid("h")).await.unwrap().unwrap().last_seq, ChannelSeq(0));
    let other = append(s, keyed("g", "b")).await.unwrap();
    assert!(!other.duplicate);
    assert_ne!(other.message.id, first.message.id);
    assert_eq!(other.message.seq, ChannelSeq(2));
}

/// A member removed from the channel cannot retry a send there: `NotMember`, not the original.
pub async fn a_removed_member_cannot_retry_a_send<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a", "b"]).await;
    group(s, "g", &["a", "b"]).await;
    let mut m = text("g", "a", "x");
    m.client_msg_id = Some("k".into());
    append(s, m.clone()).await.unwrap();
    s.remove_member(&cid("g"), &uid("a"), None).await.unwrap();
    assert_err!(append(s, m).await, DomainError::NotMember { .. });
}

/// History ranges: the latest messages, before a sequence, after a sequence; always oldest first.
pub async fn history_reads_ranges_oldest_first<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a"]).await;
    group(s, "g", &["a"]).await;
    for i in 1..=10 {
        send(s, "g", "a", &format!("m{i}")).await;
    }
    let read = |range, limit| {
        let s = s.clone();
        async move {
            let q = HistoryQuery {
                channel_id: cid("g"),
                range,
                limit,
            };
            seqs(&s.history(q).await.unwrap())
        }
    };
    assert_eq!(read(HistoryRange::Latest, 3).await, [8, 9, 10]);
    assert_eq!(read(HistoryRange::Latest, 100).await, (1..=10).collect::<Vec<_>>());
    assert_eq!(read(HistoryRange::Before(ChannelSeq(5)), 2).await, [3, 4]);
    assert_eq!(read(HistoryRange::Before(ChannelSeq(5)), 10).await, [1, 2, 3, 4]);
    assert!(read(HistoryRange::Before(ChannelSeq(1)), 10).await.is_empty());
    assert_eq!(read(HistoryRange::After(ChannelSeq(7)), 10).await, [8, 9, 10]);
    assert_eq!(read(HistoryRange::After(ChannelSeq(2)), 3).await, [3, 4, 5]);
    assert!(read(HistoryRange::After(ChannelSeq(10)), 10).await.is_empty());
    assert!(history(s, "nope").await.is_empty());
}

/// `history_matching` keeps the messages a filter matches, and its limit counts those only.
pub async fn filtered_history_counts_matches_only<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a", "b"]).await;
    group(s, "g", &["a", "b"]).await;
    for i in 0..10 {
        let mut m = text("g", if i % 2 == 0 { "a" } else { "b" }, format!("m{i}"));
        if i % 3 == 0 {
            m.custom_type = "poll".into();
        }
        append(s, m).await.unwrap();
    }
    let mut admin = text("g", "a", "notice");
    admin.sender_id = None;
    admin.kind = MessageKind::Admin;
    append(s, admin).await.unwrap();
    let matching = |range, limit, filter| {
        let s = s.clone();
        async move {
            let q = HistoryQuery {
                channel_id: cid("g"),
                range,
                limit,
            };
            let got = s.history_matching(q, filter).await.unwrap();
            texts(&got).into_iter().map(String::from).collect::<Vec<_>>()
        }
    };
    let polls = MessageFilter {
        custom_types: Some(vec!["poll".into()]),
        ..Default::default()
    };
    assert_eq!(
        matching(HistoryRange::Latest, 3, polls.clone()).await,
        ["m3", "m6", "m9"]
    );
    assert_eq!(
        matching(HistoryRange::Before(ChannelSeq(7)), 10, polls).await,
        ["m0", "m3"]
    );
    let from_b = MessageFilter {
        sender_ids: Some(vec![uid("b")]),
        custom_types: Some(vec![String::new()]),
        ..Default::default()
    };
    assert_eq!(
        matching(HistoryRange::After(ChannelSeq(0)), 3, from_b).await,
        ["m1", "m5", "m7"]
    );
    let admins = MessageFilter {
        kinds: Some(vec![MessageKind::Admin]),
        ..Default::default()
    };
    assert_eq!(matching(HistoryRange::Latest, 5, admins).await, ["notice"]);
    assert_eq!(
        matching(HistoryRange::Latest, 4, MessageFilter::default()).await,
        ["m7", "m8", "m9", "notice"]
    );
    let m8 = history(s, "g").await.remove(8);
    assert_eq!(m8.text, "m8");
    s.delete_message(m8.id).await.unwrap();
    let live = MessageFilter {
        exclude_deleted: true,
        ..Default::default()
    };
    assert_eq!(
        matching(HistoryRange::Latest, 4, live).await,
        ["m6", "m7", "m9", "notice"]
    );
}

/// `seq_before_time` is the sequence of the newest message created before a time (0 if none).
pub async fn timestamps_map_to_sequences<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a"]).await;
    group(s, "g", &["a"]).await;
    group(s, "empty", &["a"]).await;
    let mut times = Vec::new();
    for i in 0..5 {
        times.push(send(s, "g", "a", &format!("m{i}")).await.created_at);
        // Distinct milliseconds for each message (a pause between writes, not a wait for an event).
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
    let at = |t| {
        let s = s.clone();
        async move { s.seq_before_time(&cid("g"), t).await.unwrap().0 }
    };
    assert_eq!(at(times[0]).await, 0, "nothing before the first message");
    assert_eq!(at(times[0] + 1).await, 1);
    assert_eq!(at(times[2]).await, 2);
    assert_eq!(at(times[2] + 1).await, 3);
    assert_eq!(at(times[4] + 1000).await, 5);
    assert_eq!(at(0).await, 0);
    assert_eq!(
        s.seq_before_time(&cid("empty"), times[4] + 1).await.unwrap(),
        ChannelSeq(0)
    );
}

/// An edit changes the fields it names, marks the message edited and keeps its sequence; an unknown or
/// deleted message is `NotFound`.
pub async fn edits_change_content_and_keep_the_sequence<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a"]).await;
    group(s, "g", &["a"]).await;
    let mut m = text("g", "a", "one");
    m.custom_type = "t".into();
    m.data = Some(json!({"x": 1}));
    let one = append(s, m).await.unwrap().message;
    let two = send(s, "g", "a", "two").await;

    let patch = MessagePatch {
        text: Some("uno".into()),
        ..Default::default()
    };
    let edited = edit(s, one.id, patch).await.unwrap();
    assert_eq!(edited.text, "uno");
    assert!(edited.edited && !edited.deleted);
    assert_eq!((edited.seq, edited.created_at), (one.seq, one.created_at));
    assert_eq!((edited.custom_type.as_str(), &edited.data), ("t", &one.data));
    assert!(edited.updated_at >= one.updated_at);
    assert_eq!(s.get_message(one.id).await.unwrap(), Some(edited));

    let patch = MessagePatch {
        custom_type: Some("u".into()),
        data: Some(None),
        payload: Some(json!({"p": 1})),
        ..Default::default()
    };
    let again = edit(s, one.id, patch).await.unwrap();
    assert_eq!(again.text, "uno");
    assert_eq!((again.custom_type.as_str(), again.data.clone()), ("u", None));
    assert_eq!(again.payload, Some(json!({"p": 1})));
    assert_eq!(s.get_message(one.id).await.unwrap(), Some(again));

    let fix = || MessagePatch {
        text: Some("fix".into()),
        ..Default::default()
    };
    assert_err!(
        edit(s, MessageId(i64::MAX), fix()).await,
        DomainError::NotFound { entity: "message", .. }
    );
    s.delete_message(two.id).await.unwrap();
    assert_err!(
        edit(s, two.id, fix()).await,
        DomainError::NotFound { entity: "message", .. }
    );
    assert_eq!(s.get_channel(&cid("g")).await.unwrap().unwrap().last_seq, ChannelSeq(2));
}

/// A delete keeps the message's sequence (a tombstone without content); deleting it again returns it
/// unchanged; the next send numbers on.
pub async fn deletes_are_soft_and_keep_the_sequence<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a", "b"]).await;
    group(s, "g", &["a", "b"]).await;
    send(s, "g", "a", "one").await;
    let mut m = text("g", "a", "two @b");
    m.data = Some(json!({"d": 1}));
    m.payload = Some(json!({"p": 1}));
    m.mentions = vec![uid("b")];
    let two = append(s, m).await.unwrap().message;
    send(s, "g", "a", "three").await;

    let gone = s.delete_message(two.id).await.unwrap();
    assert!(gone.deleted);
    assert_eq!((gone.id, gone.seq), (two.id, two.seq));
    assert_eq!(gone.text, "");
    assert_eq!((gone.data.clone(), gone.payload.clone()), (None, None));
    assert!(gone.mentions.is_empty());
    assert_eq!(s.get_message(two.id).await.unwrap(), Some(gone.clone()));
    let hist = history(s, "g").await;
    assert_eq!(seqs(&hist), [1, 2, 3]);
    assert!(hist[1].deleted);
    assert_eq!(s.delete_message(two.id).await.unwrap(), gone);
    assert_eq!(send(s, "g", "a", "four").await.seq, ChannelSeq(4));
    assert_err!(
        s.delete_message(MessageId(i64::MAX)).await,
        DomainError::NotFound { entity: "message", .. }
    );
}

/// Acknowledged messages are there after the store is opened again, with their sequences; the channel
/// numbers on and a retried send is still recognized.
pub async fn messages_survive_reopen_with_their_seq<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a"]).await;
    group(s, "g", &["a"]).await;
    let mut keyed = text("g", "a", "keyed");
    keyed.client_msg_id = Some("k".into());
    let first = append(s, keyed.clone()).await.unwrap().message;
    let second = send(s, "g", "a", "second").await;
    send(s, "g", "a", "third").await;
    s.delete_message(second.id).await.unwrap();
    let before = history(s, "g").await;

    let env = env.reopen().await;
    let s = &env.store;
    assert_eq!(history(s, "g").await, before);
    assert_eq!(s.get_channel(&cid("g")).await.unwrap().unwrap().last_seq, ChannelSeq(3));
    assert_eq!(send(s, "g", "a", "fourth").await.seq, ChannelSeq(4));
    let retried = append(s, keyed).await.unwrap();
    assert!(retried.duplicate);
    assert_eq!(retried.message, first);
}
