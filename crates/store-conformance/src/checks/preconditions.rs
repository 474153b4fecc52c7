//! Preconditions: every fact tested against the rows in the write's transaction, in order, with the first
//! failing one's error; and the service's rules (`confab_domain::rules`) holding under concurrent changes.

use confab_domain::model::{FileObject, FileQuota, MessagePatch, UserPatch};
use confab_domain::{ChannelSeq, Condition, DomainError, Event, Fact, FileId, MessageId, Precondition};

use crate::Backend;
use crate::fixture::*;

fn refused(reason: &'static str) -> DomainError {
    DomainError::forbidden(reason)
}

/// One precondition on one fact, failing with an error naming `what`.
fn on(fact: Fact, what: &'static str) -> Vec<Precondition> {
    vec![Precondition::new(fact, refused(what))]
}

/// Every kind of fact holds exactly when the rows say so: a write whose fact holds is stored; one whose fact
/// does not is refused with the precondition's error and takes no sequence number.
pub async fn every_fact_is_tested_against_the_rows<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a", "b", "off"]).await;
    group(s, "g", &["a", "off"]).await;
    group(s, "h", &["b"]).await;
    s.update_user(
        &uid("off"),
        UserPatch {
            disabled: Some(true),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut mention = text("g", "a", "hi @b");
    mention.mentions = vec![uid("b")];
    let root = append(s, mention).await.unwrap().message;
    let mut in_thread = text("g", "a", "in thread");
    in_thread.parent_id = Some(root.id);
    let reply = append(s, in_thread).await.unwrap().message;
    let file = FileId::parse(&format!("{:032x}", 7)).unwrap();
    s.put_file(
        FileObject {
            id: file.clone(),
            channel_id: cid("g"),
            uploader_id: Some(uid("a")),
            name: "f.txt".into(),
            size: 1,
            content_type: "text/plain".into(),
            sha256: format!("{:064x}", 7),
            created_at: 1,
        },
        FileQuota {
            per_user: 1 << 20,
            total: 1 << 20,
        },
    )
    .await
    .unwrap();
    let missing = MessageId(root.id.0 + 1000);
    let other_file = FileId::parse(&format!("{:032x}", 8)).unwrap();
    let cases: Vec<(Fact, bool)> = vec![
        (Fact::ChannelExists(cid("g")), true),
        (Fact::ChannelExists(cid("nope")), false),
        (member("g", "a"), true),
        (member("g", "b"), false),
        (member("h", "a"), false),
        (Fact::ActiveAccount(uid("a")), true),
        (Fact::ActiveAccount(uid("off")), false),
        (Fact::ActiveAccount(uid("ghost")), false),
        (message_in(root.id, "g"), true),
        (message_in(root.id, "h"), false),
        (message_in(missing, "g"), false),
        (mentions(root.id, "b"), true),
        (mentions(root.id, "a"), false),
        (mentions(missing, "b"), false),
        (Fact::ThreadRoot(root.id), true),
        (Fact::ThreadRoot(reply.id), false),
        (Fact::ThreadRoot(missing), false),
        (Fact::FileExists(file.clone()), true),
        (Fact::FileExists(other_file.clone()), false),
        (file_in(&file, "g"), true),
        (file_in(&file, "h"), false),
        (file_in(&other_file, "g"), false),
    ];
    let mut next = 3;
    for (fact, holds) in cases {
        let res = append_checked(s, text("g", "a", format!("{fact:?}")), on(fact.clone(), "the fact")).await;
        if holds {
            let m = res.unwrap_or_else(|e| panic!("{fact:?} holds, yet: {e}")).message;
            assert_eq!(m.seq, ChannelSeq(next), "{fact:?}");
            next += 1;
        } else {
            assert_eq!(
                res.map(|a| a.message.seq),
                Err(refused("the fact")),
                "{fact:?} does not hold"
            );
        }
    }
    assert_eq!(
        history(s, "g").await.len() as u64,
        next - 1,
        "refused writes store nothing"
    );
}

/// Preconditions are tested in order and the first that does not hold is the error; `Any` holds when one
/// alternative does, `All` when every one does.
pub async fn preconditions_apply_in_order_and_combine<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a"]).await;
    group(s, "g", &["a"]).await;
    let yes = || Condition::Fact(member("g", "a"));
    let no = || Condition::Fact(Fact::ChannelExists(cid("nope")));
    let write = |pre: Vec<Precondition>| append_checked(s, text("g", "a", "x"), pre);
    let first_failing = vec![
        Precondition::new(yes(), refused("one")),
        Precondition::new(no(), refused("two")),
        Precondition::new(no(), refused("three")),
    ];
    assert_eq!(write(first_failing).await.err(), Some(refused("two")));
    let all = vec![Precondition::new(Condition::All(vec![yes(), no()]), refused("all"))];
    assert_eq!(write(all).await.err(), Some(refused("all")));
    let any = vec![Precondition::new(Condition::Any(vec![no(), yes()]), refused("any"))];
    assert_eq!(write(any).await.unwrap().message.seq, ChannelSeq(1));
    let none = vec![Precondition::new(Condition::Any(vec![no(), no()]), refused("none"))];
    assert_eq!(write(none).await.err(), Some(refused("none")));
    assert_eq!(write(Vec::new()).await.unwrap().message.seq, ChannelSeq(2));
}

/// A member removed while sending: every send acknowledged is stored, every later one is refused with
/// `NotMember`, and the channel's sequence has no gap (the membership is checked in the write's transaction).
pub async fn sends_racing_a_removal_are_stored_exactly_when_acknowledged<B: Backend>(b: B) {
    let env = open(b).await;
    let s = env.store.clone();
    users(&s, &["a", "b"]).await;
    group(&s, "g", &["a", "b"]).await;
    let mut events = env.events();
    let sender = {
        let s = s.clone();
        tokio::spawn(async move {
            let mut stored = Vec::new();
            for i in 0..200 {
                match append(&s, text("g", "b", format!("m{i}"))).await {
                    Ok(a) => stored.push(a.message.id),
                    Err(DomainError::NotMember { .. }) => return (stored, true),
                    Err(e) => panic!("unexpected: {e}"),
                }
                tokio::task::yield_now().await;
            }
            (stored, false)
        })
    };
    // Remove while the sender is under way: after its third message is committed.
    let mut seen = 0;
    while seen < 3 {
        if matches!(events.next().await, Event::MessageCreated(_)) {
            seen += 1;
        }
    }
    s.remove_member(&cid("g"), &uid("b"), None).await.unwrap();
    let (stored, refused) = sender.await.unwrap();
    assert!(stored.len() >= 3);
    let after = append(&s, text("g", "b", "late")).await;
    assert!(matches!(after, Err(DomainError::NotMember { .. })), "{after:?}");
    let h = history(&s, "g").await;
    assert_eq!(
        h.iter().map(|m| m.id).collect::<Vec<_>>(),
        stored,
        "acknowledged ⇔ stored"
    );
    assert!(refused || stored.len() == 200);
    assert!(h.iter().enumerate().all(|(i, m)| m.seq == ChannelSeq(i as u64 + 1)));
}

/// An edit by a user meets the rules of a send: a member no longer in the channel, or a blocked account,
/// cannot edit (nothing changes); the application's edits have no author rules.
pub async fn edits_meet_the_rules_of_their_author<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a", "b"]).await;
    group(s, "g", &["a", "b"]).await;
    let m = send(s, "g", "a", "first").await;
    let patch = |t: &str| MessagePatch {
        text: Some(t.into()),
        ..Default::default()
    };
    assert_eq!(edit_as(s, m.id, patch("mine"), Some("a")).await.unwrap().text, "mine");
    s.update_user(
        &uid("a"),
        UserPatch {
            disabled: Some(true),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_err!(
        edit_as(s, m.id, patch("blocked"), Some("a")).await,
        DomainError::Forbidden(_)
    );
    s.remove_member(&cid("g"), &uid("a"), None).await.unwrap();
    assert_err!(
        edit_as(s, m.id, patch("gone"), Some("a")).await,
        DomainError::NotFound { .. }
    );
    assert_eq!(s.get_message(m.id).await.unwrap().unwrap().text, "mine");
    assert_eq!(edit(s, m.id, patch("by the app")).await.unwrap().text, "by the app");
}

/// A bot's reply answers a message of its own channel: a reply elsewhere to the same trigger is refused, and
/// does not take the trigger's one reply.
pub async fn a_reply_answers_a_trigger_of_its_own_channel<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a"]).await;
    bot(s, "bot").await;
    group(s, "g", &["a", "bot"]).await;
    group(s, "h", &["a", "bot"]).await;
    let trigger = send(s, "g", "a", "hi").await;
    assert_err!(
        append(s, reply("h", "bot", trigger.id)).await,
        DomainError::NotFound { .. }
    );
    let first = append(s, reply("g", "bot", trigger.id)).await.unwrap();
    assert!(!first.duplicate);
    assert_eq!(first.message.channel_id, cid("g"));
    assert!(history(s, "h").await.is_empty());
}

fn member(channel: &str, user: &str) -> Fact {
    Fact::Member {
        channel: cid(channel),
        user: uid(user),
    }
}

fn message_in(message: MessageId, channel: &str) -> Fact {
    Fact::MessageIn {
        message,
        channel: cid(channel),
    }
}

fn mentions(message: MessageId, user: &str) -> Fact {
    Fact::Mentions {
        message,
        user: uid(user),
    }
}

fn file_in(file: &FileId, channel: &str) -> Fact {
    Fact::FileIn {
        file: file.clone(),
        channel: cid(channel),
    }
}
