//! The outbox (events recorded in the transaction of the change that caused them) and dead letters.

use std::sync::Arc;

use confab_domain::bot::ReplyState;
use confab_domain::model::{Message, MessagePatch};
use confab_domain::outbox::{ChangeCause, ChangeRecorder, DeadLetter, OutboxEntry, OutboxRecord, RecordedChange};
use confab_domain::ports::DynStore;
use confab_domain::{ChannelSeq, DomainError, Event};

use crate::Backend;
use crate::fixture::*;

/// Records every event the webhook relay could announce, as `<cause> <detail>`: a message's `seq:text`, a
/// user's id.
struct Recorder;

impl ChangeRecorder for Recorder {
    fn record(&self, cause: ChangeCause, event: &Event) -> Option<OutboxRecord> {
        RecordedChange::of(event)?;
        let detail = match event {
            Event::MessageCreated(m) | Event::MessageUpdated(m) => format!(" {}:{}", m.seq, m.text),
            Event::UserCreated(u) => format!(" {}", u.id),
            Event::BotTriggered { bot, message } => format!(" {bot} {}:{}", message.seq, message.text),
            _ => String::new(),
        };
        Some(OutboxRecord {
            event_type: event.name(),
            channel_id: event.channel_id().cloned(),
            payload: format!("{cause:?}{detail}").into_bytes(),
        })
    }
}

fn install(store: &DynStore) {
    store.set_change_recorder(Arc::new(Recorder));
}

/// (type, payload) of each entry.
fn rows(entries: &[OutboxEntry]) -> Vec<(&str, String)> {
    entries
        .iter()
        .map(|e| (e.event_type.as_str(), String::from_utf8(e.payload.clone()).unwrap()))
        .collect()
}

async fn all(store: &DynStore) -> Vec<OutboxEntry> {
    store.outbox_after(0, 10_000).await.unwrap()
}

/// Until a recorder is installed, nothing is recorded: the outbox is empty and its head 0.
pub async fn nothing_is_recorded_without_a_recorder<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a"]).await;
    group(s, "g", &["a"]).await;
    let m = send(s, "g", "a", "hello").await;
    let patch = MessagePatch {
        text: Some("edited".into()),
        ..Default::default()
    };
    edit(s, m.id, patch).await.unwrap();
    assert!(all(s).await.is_empty());
    assert_eq!(s.outbox_head().await.unwrap(), 0);
    assert_eq!(s.prune_outbox(100).await.unwrap(), 0);
}

/// A committed change's rows are in the outbox; a refused one (a non-member's send, a taken user id)
/// records nothing, nor does a retried send; `outbox_after` pages by id.
pub async fn the_outbox_commits_and_rolls_back_with_the_change<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a", "b"]).await;
    group(s, "g", &["a"]).await;
    send(s, "g", "a", "before").await;
    install(s);
    let ok = send(s, "g", "a", "one").await;
    assert_err!(append(s, text("g", "b", "never")).await, DomainError::NotMember { .. });
    assert_err!(s.create_user(new_user("a")).await, DomainError::AlreadyExists { .. });
    let mut keyed = text("g", "a", "two");
    keyed.client_msg_id = Some("k".into());
    append(s, keyed.clone()).await.unwrap();
    assert!(append(s, keyed).await.unwrap().duplicate);

    let entries = all(s).await;
    assert_eq!(
        rows(&entries),
        [
            ("message.created", "Send 2:one".to_string()),
            ("message.created", "Send 3:two".to_string())
        ]
    );
    assert!(entries.iter().all(|e| e.channel_id == Some(cid("g"))));
    assert!(entries[0].id < entries[1].id);
    assert!(entries[0].created_at >= ok.created_at);
    assert_eq!(s.outbox_after(entries[0].id, 10).await.unwrap(), entries[1..]);
    assert!(s.outbox_after(entries[1].id, 10).await.unwrap().is_empty());
    assert_eq!(s.outbox_after(0, 1).await.unwrap(), entries[..1]);
    assert_eq!(s.outbox_head().await.unwrap(), entries[1].id);
}

/// The recorder is told which kind of write caused each event: a send (and the thread count it updates),
/// an edit, a reply's finish or sweep, anything else.
pub async fn recorded_changes_name_their_cause<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    install(s);
    user(s, "a").await;
    bot(s, "helper").await;
    group(s, "g", &["a", "helper"]).await;
    let hi = send(s, "g", "a", "hi").await;
    let patch = MessagePatch {
        text: Some("hi!".into()),
        ..Default::default()
    };
    edit(s, hi.id, patch).await.unwrap();
    let mut r = text("g", "a", "r");
    r.parent_id = Some(hi.id);
    let r = append(s, r).await.unwrap().message;
    let first = append(s, reply("g", "helper", hi.id)).await.unwrap().message;
    s.finish_reply(first.id, "done".into(), ReplyState::Complete, None)
        .await
        .unwrap();
    append(s, reply("g", "helper", r.id)).await.unwrap();
    assert_eq!(s.sweep_generating().await.unwrap(), 1);
    s.delete_message(r.id).await.unwrap();
    s.mark_read(&cid("g"), &uid("a"), ChannelSeq(4)).await.unwrap();

    let got = all(s).await;
    let want = [
        ("user.created", "Other a"),
        ("user.created", "Other helper"),
        ("channel.created", "Other"),
        ("message.created", "Send 1:hi"),
        ("message.updated", "Edit 1:hi!"),
        ("message.created", "Send 2:r"),
        ("message.updated", "Send 1:hi!"),
        ("message.created", "Send 3:"),
        ("message.updated", "FinishReply 3:done"),
        ("message.created", "Send 4:"),
        ("message.updated", "FinishReply 4:"),
        ("message.deleted", "Other"),
        ("message.updated", "Other 1:hi!"),
    ];
    assert_eq!(
        rows(&got),
        want.map(|(t, p)| (t, p.to_string())),
        "read positions are not recordable"
    );
    assert!(got.windows(2).all(|w| w[0].id < w[1].id));
}

/// Under concurrent writers (4 tasks of 25 sends, with refused sends among them), the outbox holds exactly
/// the committed sends, with ids that increase in commit order (the channel's sequence order).
pub async fn outbox_ids_increase_in_commit_order<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    let senders = ["a", "b", "c", "d"];
    users(s, &senders).await;
    user(s, "x").await;
    group(s, "g", &senders).await;
    install(s);
    let mut tasks = Vec::new();
    for sender in senders {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                send(&s, "g", sender, &format!("{sender}{i}")).await;
                if i % 5 == 0 {
                    assert_err!(
                        append(&s, text("g", "x", "refused")).await,
                        DomainError::NotMember { .. }
                    );
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let entries = all(s).await;
    assert!(entries.windows(2).all(|w| w[0].id < w[1].id));
    let seqs: Vec<u64> = rows(&entries)
        .iter()
        .map(|(t, p)| {
            assert_eq!(*t, "message.created");
            let seq = p.strip_prefix("Send ").and_then(|r| r.split(':').next()).unwrap();
            seq.parse().unwrap()
        })
        .collect();
    assert_eq!(seqs, (1..=100).collect::<Vec<u64>>());
    assert_eq!(s.outbox_after(entries[49].id, 10).await.unwrap(), entries[50..60]);
}

/// Pruning forgets rows up to an id and returns how many; the head stays, and ids are never reused.
pub async fn pruned_outbox_ids_are_never_reused<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a"]).await;
    group(s, "g", &["a"]).await;
    install(s);
    for i in 0..3 {
        send(s, "g", "a", &format!("m{i}")).await;
    }
    let entries = all(s).await;
    let head = s.outbox_head().await.unwrap();
    assert_eq!(head, entries[2].id);
    assert_eq!(s.prune_outbox(entries[0].id).await.unwrap(), 1);
    assert_eq!(all(s).await, entries[1..]);
    assert_eq!(s.prune_outbox(head).await.unwrap(), 2);
    assert!(all(s).await.is_empty());
    assert_eq!(s.outbox_head().await.unwrap(), head);
    assert_eq!(s.prune_outbox(head).await.unwrap(), 0);
    send(s, "g", "a", "after").await;
    let after = all(s).await;
    assert_eq!(after.len(), 1);
    assert!(after[0].id > head);
    assert_eq!(s.outbox_head().await.unwrap(), after[0].id);
}

/// Recorded rows and the head are there after the store is opened again; ids still are never reused.
pub async fn outbox_survives_reopen<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a"]).await;
    group(s, "g", &["a"]).await;
    install(s);
    for i in 0..3 {
        send(s, "g", "a", &format!("m{i}")).await;
    }
    let entries = all(s).await;
    s.prune_outbox(entries[0].id).await.unwrap();
    let head = s.outbox_head().await.unwrap();

    let env = env.reopen().await;
    let s = &env.store;
    assert_eq!(all(s).await, entries[1..]);
    assert_eq!(s.outbox_head().await.unwrap(), head);
    s.prune_outbox(head).await.unwrap();
    let env = env.reopen().await;
    let s = &env.store;
    assert_eq!(s.outbox_head().await.unwrap(), head);
    install(s);
    send(s, "g", "a", "after").await;
    let after = all(s).await;
    assert_eq!(after.len(), 1);
    assert!(after[0].id > head);
}

/// An announcement (events of no data change: a bot triggered by a stored message) is published before
/// `announce` returns and, with a recorder, recorded like a write's events, in commit order among them; an
/// empty one does nothing; its rows are there after the store is opened again.
pub async fn announcements_are_recorded_and_published<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a"]).await;
    bot(s, "helper").await;
    group(s, "g", &["a", "helper"]).await;
    let hi = send(s, "g", "a", "hi").await;
    let triggered = |m: &Message| Event::BotTriggered {
        bot: uid("helper"),
        message: Arc::new(m.clone()),
    };
    let mut events = env.events();

    s.announce(vec![triggered(&hi)]).await.unwrap();
    match events.already_published().await {
        Event::BotTriggered { bot, message } if bot == uid("helper") && *message == hi => {}
        other => panic!("announced {other:?}"),
    }
    assert!(all(s).await.is_empty(), "nothing is recorded without a recorder");
    s.announce(Vec::new()).await.unwrap();
    assert_nothing_published(s, &mut events, "an empty announcement").await;

    install(s);
    let again = send(s, "g", "a", "again").await;
    s.announce(vec![triggered(&hi), triggered(&again)]).await.unwrap();
    assert!(matches!(events.already_published().await, Event::MessageCreated(m) if m.id == again.id));
    for m in [&hi, &again] {
        match events.already_published().await {
            Event::BotTriggered { message, .. } if message.id == m.id => {}
            other => panic!("announced {other:?}"),
        }
    }
    let entries = all(s).await;
    assert_eq!(
        rows(&entries),
        [
            ("message.created", "Send 2:again".to_string()),
            ("bot.triggered", "Other helper 1:hi".to_string()),
            ("bot.triggered", "Other helper 2:again".to_string()),
        ]
    );
    assert!(entries.windows(2).all(|w| w[0].id < w[1].id));
    assert!(entries.iter().all(|e| e.channel_id == Some(cid("g"))));
    drop(events);

    let env = env.reopen().await;
    assert_eq!(all(&env.store).await, entries);
}

fn letter(endpoint: &str, event_id: u64, attempts: u32) -> DeadLetter {
    DeadLetter {
        endpoint_id: endpoint.into(),
        event: OutboxEntry {
            id: event_id,
            event_type: "message.created".into(),
            channel_id: event_id.is_multiple_of(2).then(|| cid("g")),
            payload: vec![0, 159, 255, event_id as u8],
            created_at: 1_700_000_000_000 + event_id as i64,
        },
        attempts,
        last_error: format!("HTTP 500 ({attempts})"),
        failed_at: 1_700_000_100_000,
    }
}

/// Dead letters are kept per (endpoint, event): replaced by a put of the same pair, listed oldest event
/// first after a cursor, deleted one or all (returning how many).
pub async fn dead_letters_are_kept_per_endpoint_and_event<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    for l in [
        letter("ep", 1, 3),
        letter("ep", 3, 3),
        letter("ep", 2, 3),
        letter("other", 1, 1),
    ] {
        s.put_dead_letter(l).await.unwrap();
    }
    assert_eq!(s.get_dead_letter("ep", 2).await.unwrap(), Some(letter("ep", 2, 3)));
    assert_eq!(s.get_dead_letter("ep", 9).await.unwrap(), None);
    assert_eq!(s.get_dead_letter("nobody", 1).await.unwrap(), None);
    let ids = |ls: Vec<DeadLetter>| ls.into_iter().map(|l| l.event.id).collect::<Vec<_>>();
    assert_eq!(ids(s.list_dead_letters("ep", 0, 10).await.unwrap()), [1, 2, 3]);
    assert_eq!(ids(s.list_dead_letters("ep", 1, 1).await.unwrap()), [2]);
    assert_eq!(
        s.list_dead_letters("other", 0, 10).await.unwrap(),
        [letter("other", 1, 1)]
    );

    s.put_dead_letter(letter("ep", 2, 5)).await.unwrap();
    assert_eq!(s.get_dead_letter("ep", 2).await.unwrap(), Some(letter("ep", 2, 5)));
    assert_eq!(s.list_dead_letters("ep", 0, 10).await.unwrap().len(), 3);

    assert_eq!(s.delete_dead_letters("ep", Some(2)).await.unwrap(), 1);
    assert_eq!(s.delete_dead_letters("ep", Some(2)).await.unwrap(), 0);
    assert_eq!(s.delete_dead_letters("ep", None).await.unwrap(), 2);
    assert!(s.list_dead_letters("ep", 0, 10).await.unwrap().is_empty());
    assert_eq!(s.list_dead_letters("other", 0, 10).await.unwrap().len(), 1);
}

/// A lease has one holder: another is refused while it lasts, the holder renews it (later expiry), anyone
/// takes it once it expired or was released; leases are independent by name; releasing another's lease
/// changes nothing; pruning forgets expired leases only.
pub async fn leases_have_one_holder_until_they_expire<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    assert!(s.acquire_lease("relay:a", "n1", 100, 200).await.unwrap());
    assert!(!s.acquire_lease("relay:a", "n2", 150, 250).await.unwrap(), "held by n1");
    assert!(
        s.acquire_lease("relay:b", "n2", 150, 250).await.unwrap(),
        "another name"
    );
    assert!(s.acquire_lease("relay:a", "n1", 190, 300).await.unwrap(), "renewed");
    assert!(
        !s.acquire_lease("relay:a", "n2", 250, 350).await.unwrap(),
        "the renewal lasts"
    );
    assert!(
        s.acquire_lease("relay:a", "n2", 301, 400).await.unwrap(),
        "expired: taken over"
    );
    assert!(!s.acquire_lease("relay:a", "n1", 302, 400).await.unwrap());
    s.release_lease("relay:a", "n1").await.unwrap();
    assert!(
        !s.acquire_lease("relay:a", "n1", 303, 400).await.unwrap(),
        "n1 cannot release n2's lease"
    );
    s.release_lease("relay:a", "n2").await.unwrap();
    assert!(s.acquire_lease("relay:a", "n1", 304, 400).await.unwrap(), "released");

    let mut contenders = Vec::new();
    for i in 0..8 {
        let s = s.clone();
        contenders.push(tokio::spawn(async move {
            s.acquire_lease("relay:c", &format!("c{i}"), 1_000, 2_000)
                .await
                .unwrap()
        }));
    }
    let mut won = 0;
    for c in contenders {
        won += usize::from(c.await.unwrap());
    }
    assert_eq!(won, 1, "one of concurrent contenders holds the lease");

    // Pruning forgets expired leases only: a pruned name is free, a live one is still held.
    assert_eq!(s.prune_leases(1_500).await.unwrap(), 2, "relay:a and relay:b expired");
    assert!(
        !s.acquire_lease("relay:c", "someone", 1_600, 2_600).await.unwrap(),
        "relay:c lives on"
    );
    assert!(s.acquire_lease("relay:b", "n3", 1_600, 2_600).await.unwrap());
}

/// One node's presence: the store says the user changed (online anywhere, offline everywhere) only on this
/// node's first record and its last; what it holds is what `online_among` finds; a restart forgets it.
pub async fn presence_follows_the_nodes_sessions<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    let (alice, bob) = (uid("alice"), uid("bob"));
    assert!(s.set_presence(&alice, true).await.unwrap(), "came online");
    assert!(!s.set_presence(&alice, true).await.unwrap(), "already online");
    assert!(s.set_presence(&bob, true).await.unwrap());
    let mut online = s
        .online_among(&[alice.clone(), bob.clone(), uid("carol")])
        .await
        .unwrap();
    online.sort();
    assert_eq!(online, vec![alice.clone(), bob.clone()]);
    assert!(s.set_presence(&alice, false).await.unwrap(), "went offline");
    assert!(!s.set_presence(&alice, false).await.unwrap(), "already offline");
    assert_eq!(
        s.online_among(&[alice.clone(), bob.clone()]).await.unwrap(),
        vec![bob.clone()]
    );
    assert!(
        s.sweep_silent_nodes(i64::MAX).await.unwrap().offline.is_empty(),
        "never this node's own"
    );
    assert_eq!(s.forget_own_presence().await.unwrap(), vec![bob.clone()]);
    assert!(s.online_among(&[bob]).await.unwrap().is_empty());
}
