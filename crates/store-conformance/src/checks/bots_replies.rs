//! Bots, their replies (one per trigger, finished once), and usage counters.

use confab_domain::bot::{BotSettings, ReplyState, UsageRecord};
use confab_domain::{DomainError, Event, MessageId};

use crate::Backend;
use crate::fixture::*;

/// A bot is an account (`is_bot`, whatever the `NewUser` said) with settings; settings are replaced by
/// `update_bot`; bots list in id order; deleting the account deletes the bot.
pub async fn bots_are_accounts_with_settings<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    user(s, "alice").await;
    let mut nu = new_user("helper");
    nu.nickname = "Helper".into();
    let created = s.create_bot(nu, bot_settings()).await.unwrap();
    assert_eq!(
        (created.id.clone(), &created.settings),
        (uid("helper"), &bot_settings())
    );
    assert_eq!(created.created_at, created.updated_at);
    let account = s.get_user(&uid("helper")).await.unwrap().unwrap();
    assert!(account.is_bot);
    assert_eq!(account.nickname, "Helper");
    assert_eq!(s.get_bot(&uid("helper")).await.unwrap(), Some(created.clone()));

    let changed = BotSettings {
        model: "m2".into(),
        system_prompt: "Be terse.".into(),
        temperature: Some(0.5),
        ..bot_settings()
    };
    let updated = s.update_bot(&uid("helper"), changed.clone()).await.unwrap();
    assert_eq!(updated.settings, changed);
    assert_eq!(updated.created_at, created.created_at);
    assert!(updated.updated_at >= created.updated_at);
    assert_eq!(s.get_bot(&uid("helper")).await.unwrap(), Some(updated));

    bot(s, "aide").await;
    let ids = |bots: Vec<confab_domain::bot::Bot>| bots.into_iter().map(|b| b.id).collect::<Vec<_>>();
    assert_eq!(ids(s.list_bots().await.unwrap()), [uid("aide"), uid("helper")]);
    assert_err!(
        s.update_bot(&uid("nobody"), bot_settings()).await,
        DomainError::NotFound { .. }
    );
    assert_err!(
        s.update_bot(&uid("alice"), bot_settings()).await,
        DomainError::NotFound { .. }
    );
    assert_eq!(s.get_bot(&uid("alice")).await.unwrap(), None);
    assert_err!(
        s.create_bot(new_user("alice"), bot_settings()).await,
        DomainError::AlreadyExists { entity: "user", .. }
    );
    assert_eq!(s.get_bot(&uid("alice")).await.unwrap(), None, "nothing half-created");
    assert!(!s.get_user(&uid("alice")).await.unwrap().unwrap().is_bot);

    s.delete_user(&uid("helper")).await.unwrap();
    assert_eq!(s.get_bot(&uid("helper")).await.unwrap(), None);
    assert_eq!(ids(s.list_bots().await.unwrap()), [uid("aide")]);
}

/// One reply per (bot, trigger): appending it again returns the first with `duplicate: true`; another
/// bot's reply to the same trigger is its own.
pub async fn one_reply_per_bot_and_trigger<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    user(s, "alice").await;
    bot(s, "helper").await;
    bot(s, "aide").await;
    group(s, "g", &["alice", "helper", "aide"]).await;
    let trigger = send(s, "g", "alice", "@helper hi").await;
    let first = append(s, reply("g", "helper", trigger.id)).await.unwrap();
    assert!(!first.duplicate);
    let info = first.message.reply.clone().unwrap();
    assert_eq!(
        (info.state, info.trigger_id, info.reason),
        (ReplyState::Generating, Some(trigger.id), None)
    );
    assert_eq!(first.message.text, "");
    let again = append(s, reply("g", "helper", trigger.id)).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.message, first.message);
    let other = append(s, reply("g", "aide", trigger.id)).await.unwrap();
    assert!(!other.duplicate);
    assert_ne!(other.message.id, first.message.id);
    assert_eq!(seqs(&history(s, "g").await), [1, 2, 3]);
}

/// Concurrent appends of a bot's reply to one trigger (8 tasks) store one message.
pub async fn concurrent_replies_to_one_trigger_store_one<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    user(s, "alice").await;
    bot(s, "helper").await;
    group(s, "g", &["alice", "helper"]).await;
    let trigger = send(s, "g", "alice", "@helper hi").await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            append(&s, reply("g", "helper", trigger.id)).await.unwrap()
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    assert_eq!(results.iter().filter(|r| !r.duplicate).count(), 1);
    assert!(results.iter().all(|r| r.message.id == results[0].message.id));
    assert_eq!(history(s, "g").await.len(), 2);
}

/// A generating reply's text is saved as it streams; `finish_reply` puts it in a final state once, and a
/// reply already final is returned unchanged (its text no longer saved); a message that is not a reply is
/// `Invalid`, an unknown one `NotFound`.
pub async fn replies_finish_once<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    let trigger = bot_and_trigger(s, "@helper hi").await;
    let r = append(s, reply("g", "helper", trigger.id)).await.unwrap().message;

    s.save_reply_text(r.id, "Hel".into()).await.unwrap();
    let saved = s.get_message(r.id).await.unwrap().unwrap();
    assert_eq!(
        (saved.text.as_str(), saved.reply.unwrap().state),
        ("Hel", ReplyState::Generating)
    );
    let done = s
        .finish_reply(r.id, "Hello!".into(), ReplyState::Complete, None)
        .await
        .unwrap();
    assert_eq!((done.text.as_str(), done.seq), ("Hello!", r.seq));
    let info = done.reply.clone().unwrap();
    assert_eq!(
        (info.state, info.trigger_id, info.reason),
        (ReplyState::Complete, Some(trigger.id), None)
    );
    assert_eq!(s.get_message(r.id).await.unwrap(), Some(done.clone()));

    let same = s
        .finish_reply(r.id, "other".into(), ReplyState::Failed, Some("x".into()))
        .await
        .unwrap();
    assert_eq!(same, done, "a final reply is returned unchanged");
    s.save_reply_text(r.id, "late".into()).await.unwrap();
    assert_eq!(s.get_message(r.id).await.unwrap(), Some(done));

    let t2 = send(s, "g", "alice", "@helper again").await;
    let r2 = append(s, reply("g", "helper", t2.id)).await.unwrap().message;
    let failed = s
        .finish_reply(r2.id, String::new(), ReplyState::Failed, Some("upstream error".into()))
        .await
        .unwrap();
    let info = failed.reply.unwrap();
    assert_eq!(
        (info.state, info.reason.as_deref()),
        (ReplyState::Failed, Some("upstream error"))
    );

    assert_err!(
        s.finish_reply(t2.id, "x".into(), ReplyState::Complete, None).await,
        DomainError::Invalid {
            field: "message_id",
            ..
        }
    );
    assert_err!(
        s.finish_reply(MessageId(i64::MAX), "x".into(), ReplyState::Complete, None)
            .await,
        DomainError::NotFound { entity: "message", .. }
    );
}

/// Concurrent finishes of one reply (8 tasks, different texts) apply once: every caller gets the same
/// final message, and one update is published.
pub async fn concurrent_finishes_apply_once<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    user(s, "alice").await;
    bot(s, "helper").await;
    group(s, "g", &["alice", "helper"]).await;
    let trigger = send(s, "g", "alice", "@helper hi").await;
    let r = append(s, reply("g", "helper", trigger.id)).await.unwrap().message;
    let mut events = env.events();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = s.clone();
        let state = if i % 2 == 0 {
            ReplyState::Complete
        } else {
            ReplyState::Stopped
        };
        tasks.push(tokio::spawn(async move {
            s.finish_reply(r.id, format!("text {i}"), state, None).await.unwrap()
        }));
    }
    let mut finished = Vec::new();
    for t in tasks {
        finished.push(t.await.unwrap());
    }
    assert!(finished.iter().all(|m| *m == finished[0]), "{finished:?}");
    assert!(finished[0].reply.as_ref().unwrap().state.is_final());
    assert_eq!(s.get_message(r.id).await.unwrap(), Some(finished[0].clone()));
    let updated = events.next().await;
    assert!(
        matches!(&updated, Event::MessageUpdated(m) if **m == finished[0]),
        "{updated:?}"
    );
    assert_nothing_published(s, &mut events, "the other finishes").await;
}

/// The sweep after a restart turns every generating reply into `interrupted` (with a reason), keeping its
/// saved text; final replies stay as they are; it returns how many it swept.
pub async fn generating_replies_are_swept_to_interrupted<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    user(s, "alice").await;
    bot(s, "helper").await;
    group(s, "g", &["alice", "helper"]).await;
    let mut replies = Vec::new();
    for i in 0..3 {
        let t = send(s, "g", "alice", &format!("@helper {i}")).await;
        replies.push(append(s, reply("g", "helper", t.id)).await.unwrap().message);
    }
    s.save_reply_text(replies[0].id, "partial".into()).await.unwrap();
    let done = s
        .finish_reply(replies[2].id, "done".into(), ReplyState::Complete, None)
        .await
        .unwrap();
    // A node never takes its own replies for a silent node's, however long since its heartbeat.
    s.heartbeat(1).await.unwrap();
    assert_eq!(s.sweep_silent_nodes(i64::MAX).await.unwrap().replies, 0);
    assert_eq!(
        s.get_message(replies[0].id)
            .await
            .unwrap()
            .unwrap()
            .reply
            .unwrap()
            .state,
        ReplyState::Generating
    );
    assert_eq!(s.sweep_generating().await.unwrap(), 2);
    let swept = s.get_message(replies[0].id).await.unwrap().unwrap();
    assert_eq!(swept.text, "partial");
    let info = swept.reply.unwrap();
    assert_eq!(info.state, ReplyState::Interrupted);
    assert!(info.reason.is_some());
    let empty = s.get_message(replies[1].id).await.unwrap().unwrap();
    assert_eq!(
        (empty.text.as_str(), empty.reply.unwrap().state),
        ("", ReplyState::Interrupted)
    );
    assert_eq!(s.get_message(replies[2].id).await.unwrap(), Some(done));
    assert_eq!(s.sweep_generating().await.unwrap(), 0);
}

/// A reply left generating when the store closed is still generating when it opens again, with its saved
/// text, and is swept then.
pub async fn generating_replies_are_swept_after_reopen<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    user(s, "alice").await;
    bot(s, "helper").await;
    group(s, "g", &["alice", "helper"]).await;
    let t = send(s, "g", "alice", "@helper hi").await;
    let r = append(s, reply("g", "helper", t.id)).await.unwrap().message;
    s.save_reply_text(r.id, "partial".into()).await.unwrap();

    let env = env.reopen().await;
    let s = &env.store;
    let kept = s.get_message(r.id).await.unwrap().unwrap();
    assert_eq!(
        (kept.text.as_str(), kept.reply.unwrap().state),
        ("partial", ReplyState::Generating)
    );
    assert_eq!(s.sweep_generating().await.unwrap(), 1);
    let swept = s.get_message(r.id).await.unwrap().unwrap();
    assert_eq!(
        (swept.text.as_str(), swept.reply.unwrap().state),
        ("partial", ReplyState::Interrupted)
    );
    let again = append(s, reply("g", "helper", t.id)).await.unwrap();
    assert!(again.duplicate, "still one reply per trigger");
}

/// A bot that is not a member may answer a message of the channel that mentions it (the member invoked
/// it), nothing else there.
pub async fn a_bot_may_answer_where_a_member_mentioned_it<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    user(s, "alice").await;
    bot(s, "helper").await;
    group(s, "g", &["alice"]).await;
    group(s, "h", &["alice"]).await;
    let mut mention = text("g", "alice", "@helper hi");
    mention.mentions = vec![uid("helper")];
    let invited = append(s, mention).await.unwrap().message;
    let answered = append(s, reply("g", "helper", invited.id)).await.unwrap();
    assert!(!answered.duplicate);
    assert_eq!(answered.message.sender_id, Some(uid("helper")));

    let plain = send(s, "g", "alice", "helper, are you there?").await;
    assert_err!(
        append(s, reply("g", "helper", plain.id)).await,
        DomainError::NotMember { .. }
    );
    assert_err!(
        append(s, text("g", "helper", "unasked")).await,
        DomainError::NotMember { .. }
    );
    let mut elsewhere = text("h", "alice", "@helper");
    elsewhere.mentions = vec![uid("helper")];
    let elsewhere = append(s, elsewhere).await.unwrap().message;
    assert_err!(
        append(s, reply("g", "helper", elsewhere.id)).await,
        DomainError::NotMember { .. }
    );
    assert_eq!(seqs(&history(s, "g").await), [1, 2, 3]);
}

fn usage(day: &str, bot: &str, user: &str, channel: &str, tokens: u64) -> UsageRecord {
    UsageRecord {
        day: day.into(),
        bot_id: uid(bot),
        user_id: uid(user),
        channel_id: cid(channel),
        prompt_tokens: tokens,
        completion_tokens: tokens / 2,
        replies: 1,
    }
}

/// Usage adds up per (day, bot, user, channel); reading filters by day range, bot and user, newest day
/// first (then by bot, user, channel).
pub async fn usage_adds_up_per_day_bot_user_and_channel<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    let records = [
        usage("2024-01-01", "bot1", "alice", "g", 10),
        usage("2024-01-01", "bot1", "alice", "g", 20),
        usage("2024-01-02", "bot2", "alice", "g", 2),
        usage("2024-01-02", "bot1", "bob", "g", 4),
        usage("2024-01-03", "bot1", "alice", "h", 6),
    ];
    for r in records {
        s.record_usage(r).await.unwrap();
    }
    let all = s.usage("2024-01-01", "2024-01-03", None, None).await.unwrap();
    let summed = UsageRecord {
        prompt_tokens: 30,
        completion_tokens: 15,
        replies: 2,
        ..usage("2024-01-01", "bot1", "alice", "g", 0)
    };
    assert_eq!(
        all,
        [
            usage("2024-01-03", "bot1", "alice", "h", 6),
            usage("2024-01-02", "bot1", "bob", "g", 4),
            usage("2024-01-02", "bot2", "alice", "g", 2),
            summed.clone(),
        ]
    );
    let count = |from: &'static str, to: &'static str, bot: Option<&'static str>, user: Option<&'static str>| {
        let s = s.clone();
        async move {
            let (bot, user) = (bot.map(uid), user.map(uid));
            s.usage(from, to, bot.as_ref(), user.as_ref()).await.unwrap().len()
        }
    };
    assert_eq!(count("2024-01-01", "2024-01-03", Some("bot1"), None).await, 3);
    assert_eq!(count("2024-01-01", "2024-01-03", None, Some("alice")).await, 3);
    assert_eq!(count("2024-01-01", "2024-01-03", Some("bot1"), Some("alice")).await, 2);
    assert_eq!(count("2024-01-02", "2024-01-02", None, None).await, 2);
    assert_eq!(count("2024-02-01", "2024-02-28", None, None).await, 0);
    assert_eq!(s.usage("2024-01-01", "2024-01-01", None, None).await.unwrap(), [summed]);
}

/// A reply deleted while it generates keeps no content: saving and finishing change its state only, and
/// the sweep after a restart brings nothing back.
pub async fn a_deleted_reply_stays_empty<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    let trigger = bot_and_trigger(s, "hi").await;
    let first = append(s, reply("g", "helper", trigger.id)).await.unwrap().message;
    s.save_reply_text(first.id, "before".into()).await.unwrap();
    s.delete_message(first.id).await.unwrap();
    s.save_reply_text(first.id, "after".into()).await.unwrap();
    let done = s
        .finish_reply(first.id, "final".into(), ReplyState::Complete, None)
        .await
        .unwrap();
    assert!(done.deleted);
    assert_eq!(done.text, "");
    assert_eq!(done.reply.unwrap().state, ReplyState::Complete);
    let second = send(s, "g", "alice", "again").await;
    let other = append(s, reply("g", "helper", second.id)).await.unwrap().message;
    s.save_reply_text(other.id, "partial".into()).await.unwrap();
    s.delete_message(other.id).await.unwrap();
    assert_eq!(s.sweep_generating().await.unwrap(), 1);
    let swept = s.get_message(other.id).await.unwrap().unwrap();
    assert_eq!((swept.text.as_str(), swept.deleted), ("", true));
}
