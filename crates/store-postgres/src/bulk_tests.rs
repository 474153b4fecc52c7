//! The bulk path of appends (`writer/bulk.rs`) against the per-command path: the same commands, in one batch,
//! through a writer of each kind on two schemas seeded alike, give the same answers, events, stored rows and
//! outbox rows (times aside).

use std::sync::Arc;
use std::time::Duration;

use confab_domain::bot::{ReplyInfo, ReplyState};
use confab_domain::model::{ChannelKind, FileObject, FileQuota, Message, NewChannel, NewMessage, UserPatch};
use confab_domain::outbox::{ChangeCause, ChangeRecorder, OutboxRecord};
use confab_domain::ports::{EventBus, Store};
use confab_domain::{DomainResult, Event, FileId, MessageId, Precondition, rules};
use tokio::sync::{mpsc, oneshot};

use crate::test_data::{cid, new_user, uid};
use crate::testing::{TestSchema, skip_without_postgres};
use crate::writer::{BULK_STATS, Op, Outcome, WriteCmd, Writer};

const FILE: &str = "0123456789abcdef0123456789abcdef";

/// Records every message event with what the comparison needs (no times).
struct Recorder;

impl ChangeRecorder for Recorder {
    fn record(&self, cause: ChangeCause, event: &Event) -> Option<OutboxRecord> {
        let (Event::MessageCreated(m) | Event::MessageUpdated(m)) = event else {
            return None;
        };
        Some(OutboxRecord {
            event_type: event.name(),
            channel_id: Some(m.channel_id.clone()),
            payload: format!("{cause:?} {} {} {} {:?}", m.id, m.seq, m.reply_count, m.text).into_bytes(),
        })
    }
}

/// Users, a blocked one, a bot, two channels, a file, and messages to answer, reply to and repeat. The same
/// writes on every schema, so the same ids.
async fn seed(schema: &TestSchema) -> Seeded {
    let (store, _) = schema.store().await;
    for (id, is_bot) in [
        ("alice", false),
        ("bob", false),
        ("carol", false),
        ("outsider", false),
        ("helper", true),
    ] {
        store.create_user(new_user(id, is_bot)).await.unwrap();
    }
    for (id, members) in [("g", &["alice", "bob", "carol"][..]), ("h", &["alice", "bob"][..])] {
        store
            .create_channel(NewChannel {
                id: cid(id),
                kind: ChannelKind::Group,
                name: id.into(),
                cover_url: String::new(),
                custom_type: String::new(),
                data: None,
                created_by: None,
                members: members.iter().map(|m| uid(m)).collect(),
                distinct_key: None,
            })
            .await
            .unwrap();
    }
    store
        .update_user(
            &uid("carol"),
            UserPatch {
                disabled: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    store
        .put_file(
            FileObject {
                id: FileId::parse(FILE).unwrap(),
                channel_id: cid("g"),
                uploader_id: Some(uid("alice")),
                name: "a.txt".into(),
                size: 3,
                content_type: "text/plain".into(),
                sha256: "0".repeat(64),
                created_at: 1,
            },
            FileQuota {
                per_user: 1 << 20,
                total: 1 << 30,
            },
        )
        .await
        .unwrap();
    let send = |m: NewMessage| {
        let store = &store;
        async move {
            let pre = rules::new_message(&m);
            store.append_message(m, pre).await.unwrap().message
        }
    };
    let first = send(keyed("alice", "g", "k1", "first")).await;
    let mut t = NewMessage::text(cid("g"), uid("alice"), "@helper hi");
    t.mentions = vec![uid("helper")];
    let trigger = send(t.clone()).await;
    let answered = send(t).await;
    send(reply(answered.id, ReplyState::Complete)).await;
    let root = send(keyed("bob", "g", "kp", "a thread")).await;
    let mut r = NewMessage::text(cid("g"), uid("bob"), "in the thread");
    r.parent_id = Some(root.id);
    let in_thread = send(r).await;
    Seeded {
        first,
        trigger,
        answered,
        root,
        in_thread,
    }
}

struct Seeded {
    first: Message,
    trigger: Message,
    answered: Message,
    root: Message,
    in_thread: Message,
}

fn keyed(sender: &str, channel: &str, key: &str, text: &str) -> NewMessage {
    let mut m = NewMessage::text(cid(channel), uid(sender), text);
    m.client_msg_id = Some(key.into());
    m
}

fn reply(trigger: MessageId, state: ReplyState) -> NewMessage {
    let mut m = NewMessage::text(cid("g"), uid("helper"), "");
    m.reply = Some(ReplyInfo {
        state,
        trigger_id: Some(trigger),
        reason: None,
    });
    m
}

fn append(m: NewMessage) -> Op {
    let pre = rules::new_message(&m);
    Op::Append(Box::new(m), pre)
}

fn append_with(m: NewMessage, pre: Vec<Precondition>) -> Op {
    Op::Append(Box::new(m), pre)
}

/// What is compared of a message: everything but its times.
fn norm(m: &Message) -> String {
    let mut m = m.clone();
    m.created_at = 0;
    m.updated_at = 0;
    if let Some(f) = m.file.as_mut() {
        f.created_at = 0;
    }
    format!("{m:?}")
}

fn answer(res: &DomainResult<Outcome>) -> String {
    match res {
        Ok(Outcome::Appended(a)) => format!("appended duplicate={} {}", a.duplicate, norm(&a.message)),
        Ok(other) => format!("{other:?}"),
        Err(e) => format!("error {e:?}"),
    }
}

fn event(e: &Event) -> String {
    match e {
        Event::MessageCreated(m) => format!("created {}", norm(m)),
        Event::MessageUpdated(m) => format!("updated {}", norm(m)),
        other => format!("{other:?}"),
    }
}

/// What one batch did: answers, events, then the rows of every table an append writes.
#[derive(Debug, PartialEq)]
struct Outcomes {
    answers: Vec<String>,
    events: Vec<String>,
    rows: Vec<String>,
}

/// Applies `ops` as one batch through a writer of its own (bulk appends on or off) and reads back what it
/// did. Returns the bulk path's (commands applied, runs fallen back) for the schema.
async fn apply(schema: &TestSchema, bulk: bool, ops: Vec<Op>) -> (Outcomes, (usize, usize)) {
    let config = schema.config();
    let pg = config.connection().unwrap();
    let (tx, rx) = mpsc::channel(ops.len() + 1);
    let mut replies = Vec::new();
    for op in ops {
        let (reply, answer) = oneshot::channel();
        tx.try_send(WriteCmd { op, reply }).ok().unwrap();
        replies.push(answer);
    }
    let bus = Arc::new(confab_bus::LocalBus::default());
    let mut sub = bus.subscribe();
    let lock_key = crate::db::lock_key("writes", &schema.name);
    let writer = Writer {
        pool: crate::pool(&pg, 1, config.statement_timeout).unwrap(),
        rx,
        bus: bus.clone(),
        max_batch: 1024,
        recorder: Arc::new(std::sync::RwLock::new(Some(
            Arc::new(Recorder) as Arc<dyn ChangeRecorder>
        ))),
        lock_key,
        node_id: "node".into(),
        bulk_appends: bulk,
    };
    tokio::spawn(writer.run());
    let mut answers = Vec::new();
    for r in replies {
        answers.push(answer(&r.await.unwrap()));
    }
    drop(tx);
    let mut events = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
        events.push(event(&e));
    }
    let stats = BULK_STATS.lock().unwrap().get(&lock_key).copied().unwrap_or_default();
    let rows = stored_rows(schema).await;
    (Outcomes { answers, events, rows }, stats)
}

/// The rows appends write, times left out, as text.
async fn stored_rows(schema: &TestSchema) -> Vec<String> {
    let client = schema.admin().await;
    let s = &schema.name;
    let mut out = Vec::new();
    for sql in [
        format!(
            "SELECT id, channel_id, seq, sender_id, kind, text, custom_type, data, payload, mentions, client_msg_id, \
             parent_id, reply_count, file, file_id, edited, deleted, reply_state, trigger_id, reply_reason, \
             reply_node FROM {s}.messages ORDER BY id"
        ),
        format!("SELECT * FROM {s}.message_keys ORDER BY sender_id, client_msg_id"),
        format!("SELECT channel_id, user_id, read_seq FROM {s}.members ORDER BY channel_id, user_id"),
        format!("SELECT id, last_seq, last_message_at IS NOT NULL FROM {s}.channels ORDER BY id"),
        format!("SELECT message_id, channel_id, rules, state FROM {s}.flagged_messages ORDER BY message_id"),
        format!("SELECT id, event_type, channel_id, convert_from(payload, 'UTF8') FROM {s}.outbox ORDER BY id"),
        format!("SELECT last_id FROM {s}.outbox_counter"),
    ] {
        let text = format!("SELECT row_to_json(t)::text FROM ({sql}) t");
        for r in client.query(&text, &[]).await.unwrap() {
            out.push(r.get::<_, String>(0));
        }
    }
    out
}

/// Applies the batch `ops(&seeded)` on two schemas seeded alike, through the bulk path and through the
/// per-command path, and checks both did the same. Returns the bulk path's stats.
async fn same_on_both(ops: impl Fn(&Seeded) -> Vec<Op>) -> (Outcomes, (usize, usize)) {
    let (bulk_schema, reference_schema) = (TestSchema::create().await, TestSchema::create().await);
    let (a, b) = (seed(&bulk_schema).await, seed(&reference_schema).await);
    assert_eq!(norm(&a.in_thread), norm(&b.in_thread), "both schemas are seeded alike");
    let (bulk, stats) = apply(&bulk_schema, true, ops(&a)).await;
    let (reference, reference_stats) = apply(&reference_schema, false, ops(&b)).await;
    assert_eq!(reference_stats, (0, 0), "the reference applies every command alone");
    assert_eq!(bulk.answers.len(), reference.answers.len());
    for (i, (x, y)) in bulk.answers.iter().zip(&reference.answers).enumerate() {
        assert_eq!(x, y, "answer {i}");
    }
    assert_eq!(bulk.events, reference.events);
    assert_eq!(bulk.rows, reference.rows);
    (bulk, stats)
}

/// Good sends, refused ones (not a member, blocked, unknown channel, unknown file, a reply to a reply), the
/// idempotency key of a stored message (in its channel and in another), a key used twice in the batch,
/// replies to one trigger twice in the batch and to a trigger already answered, thread replies (the parent's
/// count moving, and a stored duplicate of the parent showing it), flags, a file, an application's send,
/// a send without preconditions to a channel that does not exist, a reply to a message of the batch itself
/// (whose id the sender guessed) and a command that is not an append in the middle.
#[tokio::test]
async fn a_run_of_appends_does_what_they_do_one_by_one() {
    if skip_without_postgres().await {
        return;
    }
    let (bulk, (applied, fallbacks)) = same_on_both(|s| {
        let text = |sender: &str, channel: &str, text: &str| NewMessage::text(cid(channel), uid(sender), text);
        let thread = |sender: &str, parent: MessageId| {
            let mut m = text(sender, "g", "in a thread");
            m.parent_id = Some(parent);
            m
        };
        // The id the batch's first new message gets: the seeded messages took the ones before.
        let first_new = MessageId(s.in_thread.id.0 + 1);
        let mut flagged = text("alice", "g", "buy now");
        flagged.flags = vec!["spam".into(), "links".into(), "spam".into()];
        let mut with_file = text("alice", "g", "a file");
        with_file.file_id = Some(FileId::parse(FILE).unwrap());
        let mut unknown_file = text("alice", "g", "no file");
        unknown_file.file_id = Some(FileId::parse("ffffffffffffffffffffffffffffffff").unwrap());
        let mut app = NewMessage::text(cid("h"), uid("alice"), "from the application");
        app.sender_id = None;
        let mut mentioning = text("bob", "h", "@alice");
        mentioning.mentions = vec![uid("alice")];
        vec![
            append(text("alice", "g", "one")),
            append(text("outsider", "g", "not a member")),
            append(text("carol", "g", "blocked")),
            append(text("alice", "nowhere", "unknown channel")),
            append(keyed("alice", "g", "k1", "again")),
            append(keyed("alice", "h", "k1", "elsewhere")),
            append(keyed("bob", "g", "k2", "two")),
            append(keyed("bob", "g", "k2", "two again")),
            append(keyed("bob", "h", "k2", "two elsewhere")),
            append(reply(s.trigger.id, ReplyState::Generating)),
            append(reply(s.trigger.id, ReplyState::Generating)),
            append(reply(s.answered.id, ReplyState::Generating)),
            append(reply(s.first.id, ReplyState::Generating)),
            append(thread("alice", s.root.id)),
            append(thread("bob", s.root.id)),
            append(keyed("bob", "g", "kp", "the thread again")),
            append(thread("alice", s.in_thread.id)),
            append(flagged),
            append(with_file),
            append(unknown_file),
            append(app.clone()),
            append_with(text("alice", "nowhere", "no rules"), Vec::new()),
            append(keyed("alice", "g", "k1", "once more")),
            append(thread("bob", first_new)),
            append(thread("alice", MessageId(first_new.0 + 10_000))),
            append(mentioning),
            Op::Ping,
            append(text("bob", "g", "after the ping")),
            append(keyed("bob", "g", "k2", "two, later")),
            append(thread("alice", s.root.id)),
            append(app),
        ]
    })
    .await;
    assert_eq!(fallbacks, 0);
    // Two runs split by the replies to messages the lookup could not find, and the run after the ping.
    assert_eq!(applied, 23 + 4, "{bulk:#?}");
    assert!(
        bulk.answers[23].starts_with("appended duplicate=false"),
        "{}",
        bulk.answers[23]
    );
}

/// A run whose statements fail (a key PostgreSQL cannot store) is applied again one command at a time: the
/// bad send fails alone, the others are stored.
#[tokio::test]
async fn a_run_that_fails_is_applied_one_by_one() {
    if skip_without_postgres().await {
        return;
    }
    let (bulk, (applied, fallbacks)) = same_on_both(|s| {
        let mut thread = NewMessage::text(cid("g"), uid("bob"), "in a thread");
        thread.parent_id = Some(s.root.id);
        vec![
            append(keyed("alice", "g", "k9", "fine")),
            append(keyed("alice", "g", "nul \u{0} inside", "a bad key")),
            append(thread),
            append(keyed("alice", "g", "k9", "fine again")),
        ]
    })
    .await;
    assert_eq!((applied, fallbacks), (0, 1));
    assert!(bulk.answers[1].contains("Invalid"), "{}", bulk.answers[1]);
}

/// A text PostgreSQL cannot store fails the run's writes, after its numbers were taken: the run is applied
/// again one command at a time (message ids skip the ones the failed run took; sequences do not).
#[tokio::test]
async fn a_run_whose_writes_fail_is_applied_one_by_one() {
    if skip_without_postgres().await {
        return;
    }
    let schema = TestSchema::create().await;
    let s = seed(&schema).await;
    let mut thread = NewMessage::text(cid("g"), uid("bob"), "in a thread");
    thread.parent_id = Some(s.root.id);
    let ops = vec![
        append(keyed("alice", "g", "k9", "fine")),
        append(NewMessage::text(cid("g"), uid("alice"), "nul \u{0} inside")),
        append(thread),
        append(keyed("alice", "g", "k9", "fine again")),
    ];
    let (out, stats) = apply(&schema, true, ops).await;
    assert_eq!(stats, (0, 1));
    assert!(
        out.answers[0].starts_with("appended duplicate=false"),
        "{}",
        out.answers[0]
    );
    assert!(out.answers[1].contains("Invalid"), "{}", out.answers[1]);
    assert!(
        out.answers[2].starts_with("appended duplicate=false"),
        "{}",
        out.answers[2]
    );
    assert!(
        out.answers[3].starts_with("appended duplicate=true"),
        "{}",
        out.answers[3]
    );
    assert_eq!(out.events.len(), 3, "{:#?}", out.events);
    let (store, _) = schema.store().await;
    let root = store.get_message(s.root.id).await.unwrap().unwrap();
    assert_eq!(root.reply_count, 2);
    let channel = store.get_channel(&cid("g")).await.unwrap().unwrap();
    let seqs: Vec<u64> = store
        .history(confab_domain::model::HistoryQuery {
            channel_id: cid("g"),
            range: confab_domain::model::HistoryRange::After(confab_domain::ChannelSeq::ZERO),
            limit: 100,
        })
        .await
        .unwrap()
        .iter()
        .map(|m| m.seq.0)
        .collect();
    assert_eq!(seqs, (1..=channel.last_seq.0).collect::<Vec<_>>());
}
