//! What PostgreSQL adds to the conformance suite: several nodes on one schema, connections lost and calls
//! abandoned, migrations raced, the cluster-wide write lock, and how the writer treats each kind of failure.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use confab_domain::model::{HistoryQuery, HistoryRange, NewMessage};
use confab_domain::outbox::{ChangeCause, ChangeRecorder, OutboxRecord};
use confab_domain::ports::{EventBus, Store};
use confab_domain::{ChannelSeq, DomainError, DomainResult, Event, rules};
use tokio::sync::{mpsc, oneshot};

use crate::test_data::{cid, new_group, new_user, uid};
use crate::testing::{TestSchema, skip_without_postgres};
use crate::writer::{Op, Outcome, WriteCmd, Writer};
use crate::{PostgresConfig, PostgresError, PostgresStore, migrate, schema};

/// Users `members` (and `outsider`), and groups `g` and `h` of the members.
async fn seed(store: &PostgresStore, members: &[String]) {
    for u in members.iter().map(String::as_str).chain(["outsider"]) {
        store.create_user(new_user(u, false)).await.unwrap();
    }
    for id in ["g", "h"] {
        store.create_channel(new_group(id, members)).await.unwrap();
    }
}

async fn send(store: &PostgresStore, sender: &str, text: &str) -> DomainResult<confab_domain::model::Appended> {
    send_to(store, "g", sender, text).await
}

async fn send_to(
    store: &PostgresStore,
    channel: &str,
    sender: &str,
    text: &str,
) -> DomainResult<confab_domain::model::Appended> {
    let m = NewMessage::text(cid(channel), uid(sender), text);
    let pre = rules::new_message(&m);
    store.append_message(m, pre).await
}

async fn history(store: &PostgresStore) -> Vec<confab_domain::model::Message> {
    history_of(store, "g").await
}

async fn history_of(store: &PostgresStore, channel: &str) -> Vec<confab_domain::model::Message> {
    store
        .history(HistoryQuery {
            channel_id: cid(channel),
            range: HistoryRange::After(ChannelSeq::ZERO),
            limit: 100_000,
        })
        .await
        .unwrap()
}

/// Records each created message as `channel seq id`.
struct SeqRecorder;

impl ChangeRecorder for SeqRecorder {
    fn record(&self, _: ChangeCause, event: &Event) -> Option<OutboxRecord> {
        match event {
            Event::MessageCreated(m) => Some(OutboxRecord {
                event_type: "message.created",
                channel_id: Some(m.channel_id.clone()),
                payload: format!("{} {} {}", m.channel_id, m.seq, m.id).into_bytes(),
            }),
            _ => None,
        }
    }
}

/// Two nodes (two stores, each with its own writer, pools and bus) write two channels at once, with
/// refused sends among them, while a third node tails the outbox: each channel's sequence is 1..=N with no
/// gap; outbox ids follow the commit order across the cluster, and message ids with them (across channels
/// too); each node publishes its own sends in commit order; and the tailing reader, which only ever moves
/// past the ids it has seen, sees every row (no row commits later with a smaller id).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_writing_at_once_keep_the_invariants_cluster_wide() {
    if skip_without_postgres().await {
        return;
    }
    let schema = TestSchema::create().await;
    let (a, bus_a) = schema.store().await;
    let (b, bus_b) = schema.store().await;
    let (reader, _) = schema.store().await;
    let senders: Vec<String> = (0..8).map(|i| format!("s{i}")).collect();
    seed(&a, &senders).await;
    for node in [&a, &b] {
        node.set_change_recorder(Arc::new(SeqRecorder));
    }
    let (a, b, reader) = (Arc::new(a), Arc::new(b), Arc::new(reader));
    let mut events_a = bus_a.subscribe();
    let mut events_b = bus_b.subscribe();

    const SENDS: usize = 40;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tail = {
        let (reader, done) = (reader.clone(), done.clone());
        tokio::spawn(async move {
            let mut cursor = 0;
            let mut seen = Vec::new();
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let page = reader.outbox_after(cursor, 7).await.unwrap();
                if let Some(last) = page.last() {
                    cursor = last.id;
                }
                let empty = page.is_empty();
                seen.extend(page.into_iter().map(|e| e.id));
                if finished && empty {
                    return seen;
                }
                if empty {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        })
    };
    let mut tasks = Vec::new();
    for (i, sender) in senders.iter().enumerate() {
        // Senders 0-3 write g, 4-7 write h; even ones through node a, odd ones through node b.
        let node = if i % 2 == 0 { a.clone() } else { b.clone() };
        let channel = if i < 4 { "g" } else { "h" };
        let sender = sender.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for n in 0..SENDS {
                let m = send_to(&node, channel, &sender, &format!("{sender}-{n}")).await;
                mine.push(m.unwrap().message);
                if n % 10 == 0 {
                    let refused = send_to(&node, channel, "outsider", "no").await;
                    assert!(matches!(refused, Err(DomainError::NotMember { .. })), "{refused:?}");
                }
            }
            mine
        }));
    }
    for t in tasks {
        let mine = t.await.unwrap();
        assert_eq!(mine.len(), SENDS);
        assert!(mine.windows(2).all(|w| w[0].seq < w[1].seq && w[0].id < w[1].id));
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let per_channel = 4 * SENDS as u64;

    for channel in ["g", "h"] {
        let h = history_of(&a, channel).await;
        assert_eq!(
            h.iter().map(|m| m.seq.0).collect::<Vec<_>>(),
            (1..=per_channel).collect::<Vec<_>>()
        );
        assert!(
            h.windows(2).all(|w| w[0].id < w[1].id),
            "message ids follow the commit order"
        );
        assert_eq!(
            b.get_channel(&cid(channel)).await.unwrap().unwrap().last_seq,
            ChannelSeq(per_channel)
        );
    }

    // The outbox in id order is the commit order: each channel's sequences ascend in it, and so do the
    // message ids of both channels together.
    let outbox = reader.outbox_after(0, 100_000).await.unwrap();
    assert_eq!(outbox.len() as u64, 2 * per_channel);
    let mut next = std::collections::HashMap::from([("g".to_string(), 1u64), ("h".to_string(), 1u64)]);
    let mut last_id = 0i64;
    for e in &outbox {
        let payload = String::from_utf8(e.payload.clone()).unwrap();
        let [channel, seq, id]: [&str; 3] = payload.split(' ').collect::<Vec<_>>().try_into().unwrap();
        let want = next.get_mut(channel).unwrap();
        assert_eq!(seq.parse::<u64>().unwrap(), *want, "{payload}");
        *want += 1;
        let id: i64 = id.parse().unwrap();
        assert!(
            id > last_id,
            "message ids across channels follow the commit order: {payload}"
        );
        last_id = id;
    }
    assert_eq!(reader.outbox_head().await.unwrap(), outbox.last().unwrap().id);
    let tailed = tail.await.unwrap();
    assert_eq!(
        tailed,
        outbox.iter().map(|e| e.id).collect::<Vec<_>>(),
        "a reader tailing the outbox skips nothing"
    );

    // Each node published its own sends, in commit order; together, every send once.
    let mut published = HashSet::new();
    for events in [&mut events_a, &mut events_b] {
        let mut last = 0;
        loop {
            match tokio::time::timeout(Duration::from_millis(200), events.next()).await {
                Ok(Some(Event::MessageCreated(m))) => {
                    assert!(m.id.0 > last, "a node publishes in commit order");
                    last = m.id.0;
                    assert!(published.insert(m.id));
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
    assert_eq!(published.len() as u64, 2 * per_channel);
}

/// Calls abandoned at every point (before, during and after their statements), then the server closing
/// every connection of the store: the store stays usable, its pool gets every connection back, and the
/// channel's sequence has no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_calls_and_lost_connections_leave_the_store_usable() {
    if skip_without_postgres().await {
        return;
    }
    let schema = TestSchema::create().await;
    let (store, _bus) = schema.store().await;
    seed(&store, &["a".to_string()]).await;
    let store = Arc::new(store);

    // Abandon 300 calls after 0 to 299 µs: reads, writes, and reads of what the writes change.
    for i in 0..300u64 {
        let s = store.clone();
        let call = async move {
            match i % 3 {
                0 => drop(send(&s, "a", &format!("m{i}")).await),
                1 => drop(history(&s).await),
                _ => drop(s.get_channel(&cid("g")).await),
            }
        };
        let _ = tokio::time::timeout(Duration::from_micros(i), call).await;
    }
    let ok = send(&store, "a", "after the abandoned calls").await.unwrap().message;
    let h = history(&store).await;
    assert_eq!(h.last().unwrap().id, ok.id);
    assert!(h.iter().enumerate().all(|(i, m)| m.seq.0 == i as u64 + 1), "no gap");
    // Every read task finished and gave its connection back.
    let pool = store.read_pool();
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool.status().available != pool.status().size {
        assert!(Instant::now() < deadline, "connections lost: {:?}", pool.status());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The server closes every connection of the store (a restart, a failover, an idle timeout).
    let admin = schema.admin().await;
    let killed: i64 = admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
            &[&schema.name],
        )
        .await
        .unwrap()
        .get(0);
    assert!(killed >= 2, "the writer's connection and a reader's: {killed}");
    // The first calls may find their connection gone (`Unavailable`); the store connects again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let write = send(&store, "a", "after the restart").await;
        let read = store.get_channel(&cid("g")).await;
        match (write, read) {
            (Ok(_), Ok(Some(_))) => break,
            (w, r) => {
                for e in [w.err(), r.err()].into_iter().flatten() {
                    assert!(matches!(e, DomainError::Unavailable(_)), "{e:?}");
                }
                assert!(Instant::now() < deadline, "the store did not recover");
            }
        }
    }
    for i in 0..20 {
        send(&store, "a", &format!("again {i}")).await.unwrap();
        assert!(store.get_channel(&cid("g")).await.unwrap().is_some());
    }
    let h = history(&store).await;
    assert!(h.iter().enumerate().all(|(i, m)| m.seq.0 == i as u64 + 1), "no gap");
    assert!(store.ready().await);
}

/// Migrations run twice apply once; nodes connecting to an empty schema at the same moment all start, and
/// each migration is recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_once_even_when_nodes_start_together() {
    if skip_without_postgres().await {
        return;
    }
    let schema = TestSchema::create().await;
    assert_eq!(migrate(&schema.config()).await.unwrap(), schema::MIGRATIONS.len());
    assert_eq!(migrate(&schema.config()).await.unwrap(), 0);

    let racing = TestSchema::create().await;
    let mut starts = Vec::new();
    for _ in 0..6 {
        let config = racing.config();
        starts.push(tokio::spawn(async move {
            PostgresStore::connect(config, Arc::new(confab_bus::LocalBus::default())).await
        }));
    }
    let mut stores = Vec::new();
    for s in starts {
        stores.push(s.await.unwrap().expect("every node starts"));
    }
    let admin = racing.admin().await;
    let recorded: Vec<i64> = admin
        .query(
            &format!(
                "SELECT version FROM {}.confab_schema_migrations ORDER BY version",
                racing.name
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(recorded, (1..=schema::MIGRATIONS.len() as i64).collect::<Vec<_>>());
    assert_eq!(migrate(&racing.config()).await.unwrap(), 0);
    for s in &stores {
        assert!(s.ready().await);
    }
}

/// A server that cannot be reached is named (host and port) in the error, its password never is, nor in
/// the configuration's debug output.
#[tokio::test]
async fn an_unreachable_server_is_named_without_its_password() {
    let config = PostgresConfig::new("postgres://confab:hunter2@127.0.0.1:1/confab");
    let err = match PostgresStore::connect(config.clone(), Arc::new(confab_bus::LocalBus::default())).await {
        Err(e) => e,
        Ok(_) => panic!("nothing listens on port 1"),
    };
    let text = err.to_string();
    assert!(matches!(err, PostgresError::Connect { .. }), "{err:?}");
    assert!(text.contains("127.0.0.1:1"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    let migrated = migrate(&config).await.unwrap_err().to_string();
    assert!(
        migrated.contains("127.0.0.1:1") && !migrated.contains("hunter2"),
        "{migrated}"
    );
    assert!(!format!("{config:?}").contains("hunter2"));
    let unparsable = PostgresConfig::new("postgres://confab:hunter2@127.0.0.1:notaport/x");
    let err = migrate(&unparsable).await.unwrap_err().to_string();
    assert!(!err.contains("hunter2"), "{err}");
}

/// A search path naming no existing schema is refused with its own error (the tables would have nowhere
/// to go).
#[tokio::test]
async fn a_search_path_without_a_schema_is_refused() {
    if skip_without_postgres().await {
        return;
    }
    let schema = TestSchema::create().await;
    let missing = PostgresConfig::new(schema.url().replace(&schema.name, "confab_t_missing"));
    let err = migrate(&missing).await.unwrap_err();
    assert!(matches!(err, PostgresError::NoSchema { .. }), "{err:?}");
}

/// Every write batch takes the schema's write lock: while something else holds it, writes wait, and give
/// up with `Unavailable` after the statement timeout; reads go on meanwhile; once it is released, writes
/// go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_wait_for_the_cluster_wide_lock() {
    if skip_without_postgres().await {
        return;
    }
    let schema = TestSchema::create().await;
    let mut config = schema.config();
    config.statement_timeout = Duration::from_millis(300);
    let store = PostgresStore::connect(config, Arc::new(confab_bus::LocalBus::default()))
        .await
        .unwrap();
    seed(&store, &["a".to_string()]).await;
    let admin = schema.admin().await;
    let key = crate::db::lock_key("writes", &schema.name);
    admin.execute("SELECT pg_advisory_lock($1)", &[&key]).await.unwrap();

    let started = Instant::now();
    let blocked = send(&store, "a", "blocked").await;
    assert!(
        matches!(&blocked, Err(DomainError::Unavailable(m)) if m.contains("timeout")),
        "{blocked:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(store.get_channel(&cid("g")).await.unwrap().is_some(), "reads go on");

    let waiting = {
        let admin_release = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            admin.execute("SELECT pg_advisory_unlock($1)", &[&key]).await.unwrap();
        };
        let (sent, ()) = tokio::join!(send(&store, "a", "after"), admin_release);
        sent
    };
    assert_eq!(
        waiting.unwrap().message.seq,
        ChannelSeq(1),
        "the refused write took no number"
    );
}

/// A writer of its own on `schema` (migrated), whose first batch is the given commands, queued before it
/// starts; returns their answers and the bus it publishes to.
async fn batch_of(
    schema: &TestSchema,
    ops: Vec<Op>,
) -> (
    Vec<oneshot::Receiver<DomainResult<Outcome>>>,
    Arc<confab_bus::LocalBus>,
    mpsc::Sender<WriteCmd>,
) {
    let config = schema.config();
    let pg = config.connection().unwrap();
    let (tx, rx) = mpsc::channel(64);
    let mut answers = Vec::new();
    for op in ops {
        let (reply, answer) = oneshot::channel();
        tx.try_send(WriteCmd { op, reply }).ok().unwrap();
        answers.push(answer);
    }
    let bus = Arc::new(confab_bus::LocalBus::default());
    let writer = Writer {
        pool: crate::pool(&pg, 1, config.statement_timeout).unwrap(),
        rx,
        bus: bus.clone(),
        max_batch: 64,
        recorder: Default::default(),
        lock_key: crate::db::lock_key("writes", &schema.name),
        node_id: config.node_id.clone(),
        bulk_appends: true,
    };
    tokio::spawn(writer.run());
    (answers, bus, tx)
}

fn append_op(sender: &str, text: &str) -> Op {
    Op::Append(Box::new(NewMessage::text(cid("g"), uid(sender), text)), Vec::new())
}

fn raise(code: &'static str, times: u32) -> Op {
    Op::Raise {
        code,
        times: Arc::new(AtomicU32::new(times)),
    }
}

/// How the writer treats each kind of failure inside a batch: a command's own error (a constraint, a bad
/// value) rolls back that command only; a serialization failure applies the whole batch again; a failure
/// that outlasts the retries, or a lost connection, fails every command of the batch, commits nothing and
/// publishes nothing; a command that panics is answered as a bug, the rest as retryable, and the writer
/// goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_fails_a_command_a_batch_or_retries_as_the_error_says() {
    if skip_without_postgres().await {
        return;
    }
    let schema = TestSchema::create().await;
    let (store, _) = schema.store().await;
    seed(&store, &["a".to_string()]).await;
    let last_seq = || async { store.get_channel(&cid("g")).await.unwrap().unwrap().last_seq.0 };

    // A command's own error: that command only.
    let (answers, bus, _keep) = batch_of(
        &schema,
        vec![append_op("a", "one"), raise("22023", 1), append_op("a", "two")],
    )
    .await;
    let mut events = bus.subscribe();
    let got: Vec<_> = futures_util::future::join_all(answers).await;
    assert!(matches!(got[0], Ok(Ok(Outcome::Appended(_)))));
    assert!(matches!(got[1], Ok(Err(DomainError::Unavailable(_)))), "{:?}", got[1]);
    assert!(matches!(got[2], Ok(Ok(Outcome::Appended(_)))));
    assert_eq!(last_seq().await, 2);
    for want in [1, 2] {
        assert!(matches!(events.next().await, Some(Event::MessageCreated(m)) if m.seq.0 == want));
    }

    // A serialization failure, once: the batch is applied again, and every command commits once.
    let (answers, _, _keep) = batch_of(
        &schema,
        vec![append_op("a", "three"), raise("40001", 1), append_op("a", "four")],
    )
    .await;
    for got in futures_util::future::join_all(answers).await {
        assert!(matches!(got, Ok(Ok(_))), "{got:?}");
    }
    assert_eq!(last_seq().await, 4);
    assert_eq!(
        history(&store)
            .await
            .iter()
            .map(|m| m.text.as_str())
            .collect::<Vec<_>>(),
        ["one", "two", "three", "four"]
    );

    // Deadlocks past the retries, and a lost connection: nothing of the batch commits or is published.
    for (code, times) in [("40P01", 10), ("08006", 1)] {
        let (answers, bus, _keep) = batch_of(
            &schema,
            vec![append_op("a", "lost"), raise(code, times), append_op("a", "lost too")],
        )
        .await;
        let mut events = bus.subscribe();
        for got in futures_util::future::join_all(answers).await {
            assert!(matches!(got, Ok(Err(DomainError::Unavailable(_)))), "{code}: {got:?}");
        }
        assert_eq!(last_seq().await, 4, "{code}: nothing committed");
        assert!(
            tokio::time::timeout(Duration::from_millis(100), events.next())
                .await
                .is_err(),
            "{code}: nothing published"
        );
    }

    // A panicking command: it is a bug, the others may retry, and the writer goes on.
    let (answers, _, keep) = batch_of(
        &schema,
        vec![
            append_op("a", "rolled back"),
            Op::Panic,
            append_op("a", "rolled back too"),
        ],
    )
    .await;
    let got: Vec<_> = futures_util::future::join_all(answers).await;
    assert!(matches!(got[0], Ok(Err(DomainError::Unavailable(_)))), "{:?}", got[0]);
    assert!(matches!(got[1], Ok(Err(DomainError::Internal(_)))), "{:?}", got[1]);
    assert!(matches!(got[2], Ok(Err(DomainError::Unavailable(_)))), "{:?}", got[2]);
    let (reply, answer) = oneshot::channel();
    keep.send(WriteCmd {
        op: append_op("a", "five"),
        reply,
    })
    .await
    .unwrap();
    match answer.await.unwrap().unwrap() {
        Outcome::Appended(a) => assert_eq!(a.message.seq, ChannelSeq(5)),
        other => panic!("{other:?}"),
    }
}

/// Rough figures, not checks: `append_message` calls acknowledged per second on one store, by one caller
/// at a time, then by 64 and by 512 callers at once (group commit), each for a few seconds, three times.
/// `cargo test -p confab-store-postgres --release -- --ignored --nocapture append_rate`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn append_rate() {
    use std::io::Write;
    if skip_without_postgres().await {
        return;
    }
    let schema = TestSchema::create().await;
    let (store, _bus) = schema.store().await;
    let senders: Vec<String> = (0..64).map(|i| format!("s{i}")).collect();
    seed(&store, &senders).await;
    let store = Arc::new(store);
    const RUN: Duration = Duration::from_secs(3);

    /// Appends acknowledged per second by `callers` callers sending one after another for `RUN`.
    async fn rate(store: &Arc<PostgresStore>, senders: &[String], callers: usize) -> f64 {
        let started = Instant::now();
        let deadline = started + RUN;
        let tasks: Vec<_> = (0..callers)
            .map(|i| {
                let (store, sender) = (store.clone(), senders[i % senders.len()].clone());
                tokio::spawn(async move {
                    let mut sent = 0u64;
                    while Instant::now() < deadline {
                        send(&store, &sender, &format!("m{sent}")).await.unwrap();
                        sent += 1;
                    }
                    sent
                })
            })
            .collect();
        let mut sent = 0;
        for t in tasks {
            sent += t.await.unwrap();
        }
        sent as f64 / started.elapsed().as_secs_f64()
    }

    for callers in [1, 64, 512] {
        let mut figures = Vec::new();
        for _ in 0..3 {
            figures.push(format!("{:.0}", rate(&store, &senders, callers).await));
        }
        let _ = writeln!(
            std::io::stderr(),
            "append_message with {callers} caller(s): {} appends/s",
            figures.join(", ")
        );
    }
}

/// A generating reply belongs to the node that appended it: another node's restart sweep leaves it alone,
/// and so does another node's sweep of silent nodes while its node sends heartbeats; once its node is
/// silent, the other node ends it `interrupted`, and that node's own sweep finds nothing left.
#[tokio::test]
async fn replies_belong_to_their_node_until_it_falls_silent() {
    if skip_without_postgres().await {
        return;
    }
    let schema = TestSchema::create().await;
    let (a, _) = schema.store().await;
    let (b, bus_b) = schema.store().await;
    seed(&a, &["alice".to_string(), "helper".to_string()]).await;
    let trigger = send(&a, "alice", "@helper hi").await.unwrap().message;
    let mut reply = NewMessage::text(cid("g"), uid("helper"), "");
    reply.reply = Some(confab_domain::bot::ReplyInfo {
        state: confab_domain::bot::ReplyState::Generating,
        trigger_id: Some(trigger.id),
        reason: None,
    });
    let reply = a.append_message(reply, Vec::new()).await.unwrap().message;
    let state = |m: Option<confab_domain::model::Message>| m.unwrap().reply.unwrap().state;

    assert_eq!(b.sweep_generating().await.unwrap(), 0, "b's restart is not a's");
    let now = confab_domain::now_millis();
    a.heartbeat(now).await.unwrap();
    assert_eq!(
        b.sweep_silent_nodes(now - 30_000).await.unwrap().replies,
        0,
        "a is alive"
    );
    assert_eq!(
        state(a.get_message(reply.id).await.unwrap()),
        confab_domain::bot::ReplyState::Generating
    );

    let mut events = bus_b.subscribe();
    assert_eq!(b.sweep_silent_nodes(now + 1).await.unwrap().replies, 1, "a fell silent");
    let ended = b.get_message(reply.id).await.unwrap().unwrap();
    let info = ended.reply.clone().unwrap();
    assert_eq!(info.state, confab_domain::bot::ReplyState::Interrupted);
    assert!(info.reason.unwrap().contains("stopped"));
    match events.next().await {
        Some(Event::MessageUpdated(m)) => assert_eq!(*m, ended),
        other => panic!("{other:?}"),
    }
    assert_eq!(a.sweep_generating().await.unwrap(), 0);
    assert_eq!(b.sweep_silent_nodes(now + 1).await.unwrap().replies, 0);
}

/// A user is online while any node holds a session: the store says so only on the first node's first and
/// the last node's last, whichever nodes they are; a silent node's sessions are forgotten by another's
/// sweep, and a restarted node's own by itself.
#[tokio::test]
async fn presence_is_the_union_of_the_nodes_sessions() {
    if skip_without_postgres().await {
        return;
    }
    let schema = TestSchema::create().await;
    let (a, _) = schema.store().await;
    let (b, _) = schema.store().await;
    let (alice, bob) = (uid("alice"), uid("bob"));
    let now = confab_domain::now_millis();
    a.heartbeat(now).await.unwrap();
    b.heartbeat(now).await.unwrap();

    assert!(a.set_presence(&alice, true).await.unwrap(), "online: first anywhere");
    assert!(!b.set_presence(&alice, true).await.unwrap(), "already online through a");
    assert!(!a.set_presence(&alice, false).await.unwrap(), "still online through b");
    assert_eq!(
        b.online_among(&[alice.clone(), bob.clone()]).await.unwrap(),
        vec![alice.clone()]
    );
    assert!(b.set_presence(&alice, false).await.unwrap(), "offline: b was the last");
    assert!(a.online_among(std::slice::from_ref(&alice)).await.unwrap().is_empty());
    assert!(
        !b.set_presence(&alice, false).await.unwrap(),
        "offline twice is no change"
    );

    // b dies holding alice and bob; a holds bob too.
    b.set_presence(&alice, true).await.unwrap();
    b.set_presence(&bob, true).await.unwrap();
    a.set_presence(&bob, true).await.unwrap();
    assert!(
        a.sweep_silent_nodes(now - 30_000).await.unwrap().offline.is_empty(),
        "b is alive"
    );
    a.heartbeat(now + 2).await.unwrap();
    let swept = a.sweep_silent_nodes(now + 1).await.unwrap();
    assert_eq!(swept.offline, vec![alice.clone()], "bob is still on a");
    let mut online = a.online_among(&[alice.clone(), bob.clone()]).await.unwrap();
    online.sort();
    assert_eq!(online, vec![bob.clone()]);

    // a restarts: what it held before is forgotten.
    assert_eq!(a.forget_own_presence().await.unwrap(), vec![bob.clone()]);
    assert!(a.online_among(&[bob]).await.unwrap().is_empty());
}
