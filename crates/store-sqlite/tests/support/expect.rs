//! What a store holding the data set of `dataset.rs` must answer through the `Store` port, whichever schema
//! the data was written under (`Features` says what that schema had), then a write after the upgrade.

#![allow(dead_code)]

use std::sync::Arc;

use confab_domain::bot::{ReplyInfo, ReplyState};
use confab_domain::flag::{FlagQuery, FlagState};
use confab_domain::model::{ChannelKind, FileObject, FileQuota, Message, MessageKind, NewMessage, NewUser};
use confab_domain::ports::{SessionRecord, Store};
use confab_domain::{ChannelSeq, DomainError, now_millis, rules};
use serde_json::json;

use super::dataset::*;

/// Reads everything back (`context` names the fixture in failures). The reply left generating is still
/// generating: each backend's test sweeps it its own way.
pub async fn read_back(store: &dyn Store, f: Features, context: &str) {
    users_and_sessions(store, f, context).await;
    channels_and_members(store, f, context).await;
    messages(store, f, context).await;
    files(store, context).await;
    bots_and_settings(store, f, context).await;
    outbox_flags_and_leases(store, f, context).await;
}

async fn users_and_sessions(store: &dyn Store, f: Features, context: &str) {
    let users = store.list_users(None, 100).await.unwrap();
    let ids: Vec<&str> = users.iter().map(|u| u.id.as_str()).collect();
    assert_eq!(
        ids,
        ["alice", "bob", "carol", "helper"],
        "{context}: users (dave was deleted)"
    );
    let alice = &users[0];
    assert_eq!(alice.nickname, "Alice", "{context}");
    assert_eq!(alice.profile_url, "https://example.com/alice.png", "{context}");
    assert_eq!(alice.metadata.get("lang"), Some(&json!("en")), "{context}");
    assert_eq!(alice.last_seen_at, Some(SEEN_AT), "{context}");
    assert!(!alice.is_bot && !alice.disabled && alice.created_at > 0, "{context}");
    assert!(alice.updated_at >= alice.created_at, "{context}");
    assert_eq!(
        users[2].disabled, f.disabled,
        "{context}: carol is disabled where the schema can say so"
    );
    assert!(users[3].is_bot, "{context}: helper is a bot");
    assert!(store.get_user(&uid("dave")).await.unwrap().is_none(), "{context}");
    let alice_session = SessionRecord {
        token_hash: ALICE_TOKEN,
        user_id: uid("alice"),
        created_at: SESSION_AT,
        expires_at: None,
    };
    assert_eq!(
        store.find_session(&ALICE_TOKEN).await.unwrap(),
        Some(alice_session),
        "{context}"
    );
    let bob = store.find_session(&BOB_TOKEN).await.unwrap().expect("bob's session");
    assert_eq!(
        (bob.user_id.as_str(), bob.expires_at),
        ("bob", Some(FAR_FUTURE)),
        "{context}"
    );
    assert!(store.find_session(&[0; 32]).await.unwrap().is_none(), "{context}");
}

async fn channels_and_members(store: &dyn Store, f: Features, context: &str) {
    let channels = store.list_channels(None, 100).await.unwrap();
    let ids: Vec<&str> = channels.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, [DIRECT, TEAM], "{context}: channels (gone was deleted)");
    let (direct, team) = (&channels[0], &channels[1]);
    assert_eq!(direct.kind, ChannelKind::Direct, "{context}");
    assert_eq!((direct.last_seq, direct.member_count), (ChannelSeq(2), 2), "{context}");
    assert_eq!(team.kind, ChannelKind::Group, "{context}");
    assert_eq!(
        (team.name.as_str(), team.cover_url.as_str(), team.custom_type.as_str()),
        ("Team", "https://example.com/team.png", "project"),
        "{context}"
    );
    assert_eq!(team.data, Some(json!({"topic": "launch"})), "{context}");
    assert_eq!(team.created_by, Some(uid("alice")), "{context}");
    assert_eq!((team.last_seq, team.member_count), (ChannelSeq(13), 4), "{context}");
    assert_eq!(team.distinct, f.distinct, "{context}: team was created distinct");
    assert!(team.last_message_at.is_some_and(|t| t >= team.created_at), "{context}");
    assert!(store.get_channel(&cid(GONE)).await.unwrap().is_none(), "{context}");

    let members = store.list_members(&cid(TEAM), None, 100).await.unwrap();
    let read: Vec<(&str, u64)> = members.iter().map(|m| (m.user_id.as_str(), m.read_seq.0)).collect();
    assert_eq!(
        read,
        [("alice", 12), ("bob", 11), ("carol", 4), ("helper", 13)],
        "{context}: members of team and their read positions"
    );
    let mut of_alice = store.list_member_channels(&uid("alice"), None, 100).await.unwrap();
    of_alice.sort_by(|a, b| a.channel.id.cmp(&b.channel.id));
    let unread: Vec<(&str, u64)> = of_alice
        .iter()
        .map(|m| (m.channel.id.as_str(), m.unread_count()))
        .collect();
    assert_eq!(
        unread,
        [(DIRECT, 1), (TEAM, 1)],
        "{context}: alice's channels and unread counts"
    );
    assert_eq!(
        store.member_ids(&cid(DIRECT)).await.unwrap().len(),
        2,
        "{context}: direct members"
    );
}

async fn messages(store: &dyn Store, f: Features, context: &str) {
    let team = history(store, TEAM).await;
    assert_gap_free(&team, 13, context);
    let texts: Vec<&str> = team.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(
        texts,
        [
            "hello team",
            "hi alice",
            "in a thread",
            "the plan",
            "@helper summarize",
            "Here is the summary.",
            "dave was here",
            "",
            "typo fixed",
            "",
            "cheap stuff at http://spam.example",
            "@helper again?",
            "partial answ",
        ],
        "{context}: texts of team"
    );
    assert!(
        team.windows(2).all(|w| w[0].id < w[1].id),
        "{context}: ids follow the order"
    );
    let first = &team[0];
    assert_eq!(first.client_msg_id.as_deref(), Some("alice-1"), "{context}");
    assert_eq!(first.mentions, [uid("bob")], "{context}");
    assert_eq!(first.reply_count, 1, "{context}: the thread reply counts");
    assert_eq!(team[2].parent_id, Some(first.id), "{context}");
    let thread = store.thread(first.id, None, 10).await.unwrap();
    assert_eq!(
        thread.iter().map(|m| m.id).collect::<Vec<_>>(),
        [team[2].id],
        "{context}: the thread"
    );
    assert_eq!(team[3].kind, MessageKind::File, "{context}");
    let reply_info = |state, trigger: &Message| {
        f.bots.then_some(ReplyInfo {
            state,
            trigger_id: Some(trigger.id),
            reason: None,
        })
    };
    assert_eq!(team[5].sender_id, Some(uid("helper")), "{context}");
    assert_eq!(
        team[5].reply,
        reply_info(ReplyState::Complete, &team[4]),
        "{context}: the bot reply"
    );
    assert_eq!(
        team[12].reply,
        reply_info(ReplyState::Generating, &team[11]),
        "{context}: reply left generating"
    );
    assert_eq!(
        team[6].sender_id,
        Some(uid("dave")),
        "{context}: a deleted account's message stays"
    );
    let card = &team[7];
    assert_eq!(
        (card.kind, card.custom_type.as_str()),
        (MessageKind::Custom, "card"),
        "{context}"
    );
    assert_eq!(card.data, Some(json!({"k": "v"})), "{context}");
    assert_eq!(card.payload, Some(json!({"card": {"title": "Launch"}})), "{context}");
    assert!(team[8].edited && !team[8].deleted, "{context}: the edit");
    assert!(team[9].deleted, "{context}: the deletion keeps its seq");
    assert!(team.iter().filter(|m| m.seq.0 != 9).all(|m| !m.edited), "{context}");
    let direct = history(store, DIRECT).await;
    assert_gap_free(&direct, 2, context);
    assert_eq!(direct[1].text, "hey alice", "{context}");
}

async fn files(store: &dyn Store, context: &str) {
    let doc = store.get_file(&fid(DOC_FILE)).await.unwrap().expect("the file record");
    assert_eq!(doc, doc_file(doc.created_at), "{context}: the file record");
    assert!(doc.created_at > 0, "{context}");
    let carried = store.get_message(history(store, TEAM).await[3].id).await.unwrap();
    assert_eq!(
        carried.and_then(|m| m.file),
        Some(doc.clone()),
        "{context}: the message carries the file"
    );
    // The file of the deleted channel is swept first; the one a message carries is kept.
    let swept = store.delete_unattached_files(now_millis(), 10).await.unwrap();
    assert_eq!(swept, [fid(GONE_FILE)], "{context}: files to sweep");
    assert!(store.get_file(&fid(DOC_FILE)).await.unwrap().is_some(), "{context}");
    // The storage used (per uploader and in all) is the carried file's: quotas count right.
    let new_file = FileObject {
        id: fid("00000000000000000000000000000003"),
        size: 10,
        ..doc.clone()
    };
    let over = [
        FileQuota {
            per_user: DOC_SIZE + 9,
            total: u64::MAX,
        },
        FileQuota {
            per_user: u64::MAX,
            total: DOC_SIZE + 9,
        },
    ];
    for quota in over {
        let refused = store.put_file(new_file.clone(), quota).await;
        assert!(
            matches!(refused, Err(DomainError::LimitExceeded { .. })),
            "{context}: {refused:?}"
        );
    }
    let exact = FileQuota {
        per_user: DOC_SIZE + 10,
        total: DOC_SIZE + 10,
    };
    store.put_file(new_file, exact).await.unwrap();
}

async fn bots_and_settings(store: &dyn Store, f: Features, context: &str) {
    let bot = store.get_bot(&uid("helper")).await.unwrap();
    assert_eq!(
        bot.map(|b| b.settings),
        f.bots.then(bot_settings),
        "{context}: bot settings"
    );
    let mut usage = store.usage("2026-01-01", "2026-01-31", None, None).await.unwrap();
    usage.sort_by(|a, b| a.day.cmp(&b.day));
    let expected = if f.bots { usage_records() } else { Vec::new() };
    assert_eq!(usage, expected, "{context}: usage");
    let providers = store.list_providers().await.unwrap();
    let expected = f.providers.then(|| ("openai-main".to_string(), provider_config()));
    assert_eq!(
        providers,
        expected.into_iter().collect::<Vec<_>>(),
        "{context}: providers"
    );
    let setting = store.get_setting("sendbird", "webhooks").await.unwrap();
    assert_eq!(setting, f.settings.then(webhook_setting), "{context}: settings");
    let nim = store.list_settings("nim").await.unwrap();
    let expected = f
        .settings
        .then(|| ("bot:helper".to_string(), json!({"robot_topic": "support"})));
    assert_eq!(
        nim,
        expected.into_iter().collect::<Vec<_>>(),
        "{context}: settings of a namespace"
    );
}

async fn outbox_flags_and_leases(store: &dyn Store, f: Features, context: &str) {
    let head = store.outbox_head().await.unwrap();
    let entries = store.outbox_after(0, 10_000).await.unwrap();
    if f.outbox {
        assert_eq!(
            entries.first().map(|e| e.id),
            Some(PRUNED_THROUGH + 1),
            "{context}: pruned outbox"
        );
        assert_eq!(entries.last().map(|e| e.id), Some(head), "{context}: outbox head");
        assert!(
            entries.windows(2).all(|w| w[0].id + 1 == w[1].id),
            "{context}: outbox ids"
        );
        assert!(entries.iter().all(|e| !e.payload.is_empty()), "{context}");
        let letter = store.get_dead_letter(ENDPOINT, DEAD_EVENT).await.unwrap();
        let letter = letter.expect("the dead letter");
        assert_eq!((letter.attempts, letter.failed_at), (7, SEEN_AT), "{context}");
        assert_eq!(letter.event.id, DEAD_EVENT, "{context}");
    } else {
        assert_eq!((head, entries.len()), (0, 0), "{context}: no outbox before it existed");
    }
    let letters = store.list_dead_letters(ENDPOINT, 0, 10).await.unwrap();
    assert_eq!(letters.len(), usize::from(f.outbox), "{context}: dead letters");

    let query = FlagQuery {
        limit: 100,
        ..FlagQuery::default()
    };
    let flags = store.list_flags(query).await.unwrap();
    if f.flags {
        assert_eq!(flags.len(), 1, "{context}: flags (the deleted channel's went with it)");
        assert_eq!(flags[0].message.text, "cheap stuff at http://spam.example", "{context}");
        assert_eq!(
            (flags[0].rules.as_slice(), flags[0].state),
            (&["spam-link".to_string()][..], FlagState::Pending)
        );
    } else {
        assert!(flags.is_empty(), "{context}: no flags before they existed");
    }
    let now = now_millis();
    let taken_by_other = !store.acquire_lease(LEASE, "node-b", now, now + 1000).await.unwrap();
    assert_eq!(
        taken_by_other, f.leases,
        "{context}: the lease is node-a's where the schema had leases"
    );
}

/// Writes after the upgrade: the next sequences, a retried send found by its key, outbox ids after the
/// newest one ever recorded.
pub async fn write_after(store: &dyn Store, context: &str) {
    store.set_change_recorder(Arc::new(RecordAll));
    let head = store.outbox_head().await.unwrap();
    let mut after = NewMessage::text(cid(TEAM), uid("alice"), "after the upgrade");
    after.client_msg_id = Some("alice-2".into());
    let appended = store
        .append_message(after.clone(), rules::new_message(&after))
        .await
        .unwrap();
    assert!(!appended.duplicate, "{context}");
    assert_eq!(appended.message.seq, ChannelSeq(14), "{context}: the next seq");
    let mut retried = NewMessage::text(cid(TEAM), uid("alice"), "hello again");
    retried.client_msg_id = Some("alice-1".into());
    let again = store
        .append_message(retried.clone(), rules::new_message(&retried))
        .await
        .unwrap();
    assert!(
        again.duplicate && again.message.seq == ChannelSeq(1),
        "{context}: the key of seq 1"
    );
    assert_gap_free(&history(store, TEAM).await, 14, context);
    let reply = NewMessage::text(cid(DIRECT), uid("bob"), "still here");
    let appended = store
        .append_message(reply.clone(), rules::new_message(&reply))
        .await
        .unwrap();
    assert_eq!(
        appended.message.seq,
        ChannelSeq(3),
        "{context}: the next seq of the direct channel"
    );
    let recorded = store.outbox_after(head, 10).await.unwrap();
    assert_eq!(
        recorded.first().map(|e| e.id),
        Some(head + 1),
        "{context}: outbox ids go on"
    );
    let member = store.get_member(&cid(TEAM), &uid("alice")).await.unwrap().unwrap();
    assert_eq!(
        member.read_seq,
        ChannelSeq(14),
        "{context}: the sender read its message"
    );
    // dave's account again: the idempotency key of the deleted account's message is not its own.
    store
        .create_user(NewUser {
            id: uid("dave"),
            nickname: "Dave again".into(),
            profile_url: String::new(),
            metadata: Default::default(),
            is_bot: false,
        })
        .await
        .unwrap();
    store.add_members(&cid(TEAM), vec![uid("dave")], None).await.unwrap();
    let mut by_dave = NewMessage::text(cid(TEAM), uid("dave"), "dave is back");
    by_dave.client_msg_id = Some("dave-1".into());
    let appended = store
        .append_message(by_dave.clone(), rules::new_message(&by_dave))
        .await
        .unwrap();
    assert!(!appended.duplicate, "{context}: a deleted account's keys are forgotten");
    assert_eq!(appended.message.seq, ChannelSeq(15), "{context}");
    assert_gap_free(&history(store, TEAM).await, 15, context);
}
