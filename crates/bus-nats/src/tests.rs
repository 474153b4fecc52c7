//! Against a real nats-server at `CONFAB_TEST_NATS_URL` (default `nats://127.0.0.1:4222`): each test uses a
//! subject prefix of its own, so tests run in parallel. Without a server they skip visibly (one `SKIPPED`
//! line on stderr), or fail with `CONFAB_REQUIRE_NATS=1`.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use async_nats::connection::State;
use confab_domain::{ChannelSeq, UserId};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::*;

mod follow;

const WAIT: Duration = Duration::from_secs(20);

fn nats_url() -> String {
    std::env::var("CONFAB_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_string())
}

/// The first server of the test URL as `host:port`.
fn nats_addr() -> String {
    let url = nats_url();
    let first = url.split(',').next().unwrap_or_default().trim().to_string();
    let addr: async_nats::ServerAddr = first.parse().expect("CONFAB_TEST_NATS_URL parses");
    format!("{}:{}", addr.host(), addr.port())
}

/// True (after one `SKIPPED` line on stderr) when NATS cannot be reached and `CONFAB_REQUIRE_NATS` is not
/// `1`; panics when it is.
async fn skip_without_nats() -> bool {
    let reachable = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(3))
        .connect(nats_url())
        .await
        .is_ok();
    if reachable {
        return false;
    }
    let why = format!("NATS not reachable at {}", nats_addr());
    if std::env::var("CONFAB_REQUIRE_NATS").is_ok_and(|v| v == "1") {
        panic!("CONFAB_REQUIRE_NATS=1 but {why}");
    }
    // The harness names each test's thread after the test; written to the handle itself, which the harness
    // does not capture.
    let thread = std::thread::current();
    let test = thread.name().filter(|n| *n != "main").unwrap_or("a test");
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}; run scripts/services.sh");
    true
}

fn prefix() -> String {
    format!("confab_t_{:016x}", rand::random::<u64>())
}

fn config(url: &str, prefix: &str, node: &str) -> NatsConfig {
    NatsConfig {
        url: url.to_string(),
        subject_prefix: prefix.to_string(),
        node_id: node.to_string(),
        connect_timeout: Duration::from_secs(5),
    }
}

/// A node that follows the channels of [`ev`] and [`read`] for a watched user, as if it held a session of a
/// member of them.
async fn node(url: &str, prefix: &str, node: &str) -> NatsBus {
    let bus = bare_node(url, prefix, node).await;
    let channels = std::iter::once("team.*>".to_string()).chain((1..7).map(|k| format!("c.{k}")));
    follow(&bus, "watcher", channels.map(|c| cid(&c)).collect()).await;
    bus
}

/// Nodes `a` and `b` following no channel, or `None` (after a visible skip) without NATS.
async fn two_bare_nodes() -> Option<(NatsBus, NatsBus)> {
    if skip_without_nats().await {
        return None;
    }
    let (url, prefix) = (nats_url(), prefix());
    let a = bare_node(&url, &prefix, "a").await;
    let b = bare_node(&url, &prefix, "b").await;
    Some((a, b))
}

/// A node that follows no channel.
async fn bare_node(url: &str, prefix: &str, node: &str) -> NatsBus {
    NatsBus::connect(config(url, prefix, node)).await.expect("connects")
}

/// Watches `user` and follows `channels` for them, as a user's first session on a node does.
async fn follow(bus: &NatsBus, user: &str, channels: Vec<ChannelId>) {
    let user = uid(user);
    bus.watch_user(&user);
    bus.follow_channels(&user, channels).await;
}

fn uid(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

fn cid(s: &str) -> ChannelId {
    ChannelId::parse(s).unwrap()
}

/// A durable event of a channel whose id needs the hex token, tagged with `n`.
fn read(channel: &str, n: usize) -> Event {
    Event::ReadUpTo {
        channel_id: ChannelId::parse(channel).unwrap(),
        user_id: UserId::parse(&format!("u{n}")).unwrap(),
        seq: ChannelSeq(n as u64),
    }
}

fn ev(n: usize) -> Event {
    read("team.*>", n)
}

/// The tag of an event made by [`read`] or `UserDeleted(u{n})`, or a name for the others.
fn tag(e: &Event) -> String {
    match e {
        Event::ReadUpTo { user_id, .. } | Event::UserDeleted(user_id) => user_id.to_string(),
        other => other.name().to_string(),
    }
}

async fn next(stream: &mut Box<dyn EventStream>) -> Event {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("an event in time")
        .expect("the bus is open")
}

fn only(bus: &NatsBus, interest: fn(&Event, Origin) -> bool) -> Box<dyn EventStream> {
    bus.subscribe_with(Subscription {
        interest,
        partitions: 1,
    })
    .pop()
    .unwrap()
}

fn local_only(bus: &NatsBus) -> Box<dyn EventStream> {
    only(bus, |_, origin| origin == Origin::Local)
}

fn remote_only(bus: &NatsBus) -> Box<dyn EventStream> {
    only(bus, |_, origin| origin == Origin::Remote)
}

async fn wait_until_disconnected(bus: &NatsBus) {
    tokio::time::timeout(WAIT, async {
        while bus.client.connection_state() != State::Disconnected {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the client notices the lost connection");
}

/// A TCP proxy between a client and nats-server whose connections can be cut (and new ones refused) and
/// restored.
struct Proxy {
    url: String,
    up: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let (up, state) = watch::channel(true);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !*state.borrow() {
                    continue; // refused: dropped at once
                }
                let mut state = state.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = state.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Proxy {
            url: format!("nats://{addr}"),
            up,
            task,
        }
    }

    fn cut(&self) {
        self.up.send_replace(false);
    }

    fn restore(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

#[test]
fn subjects_keep_any_channel_id_in_one_token() {
    let s = Subjects::new("confab.prod");
    let subject = s.of(&ev(1));
    assert_eq!(subject, format!("confab.prod.ch.{}", hex::encode("team.*>")));
    let token = subject.rsplit('.').next().unwrap();
    assert!(token.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    assert_eq!(subject.split('.').count(), 4);
    assert_eq!(
        s.of(&Event::UserDeleted(UserId::parse("a.b").unwrap())),
        "confab.prod.all"
    );
    assert_eq!(s.of(&Event::Resync), "confab.prod.all");
    assert_eq!(
        s.interest("n1"),
        ["confab.prod.all", &format!("confab.prod.node.{}", hex::encode("n1"))]
    );
}

#[tokio::test]
async fn configurations_that_cannot_work_are_refused() {
    let bad_node = NatsBus::connect(config(&nats_url(), "confab", "has space")).await;
    assert!(matches!(bad_node, Err(NatsBusError::Config(_))));
    for prefix in ["", "a..b", "a.*", "a.>", "a b"] {
        let bad = NatsBus::connect(config(&nats_url(), prefix, "n1")).await;
        assert!(matches!(bad, Err(NatsBusError::Config(_))), "{prefix:?}");
    }
    let bad_url = NatsBus::connect(config("http://127.0.0.1:4222", "confab", "n1")).await;
    assert!(matches!(bad_url, Err(NatsBusError::Config(_))));
}

#[tokio::test]
async fn an_unreachable_server_is_named_without_credentials() {
    // Nothing listens on a port just freed.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut cfg = config(&format!("nats://confab:s3cr3t@127.0.0.1:{port}"), "confab", "n1");
    cfg.connect_timeout = Duration::from_secs(2);
    let err = match NatsBus::connect(cfg).await {
        Err(e) => e,
        Ok(_) => panic!("connected to nothing"),
    };
    let text = err.to_string();
    assert!(matches!(err, NatsBusError::Unreachable { .. }), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(!text.contains("s3cr3t") && !text.contains("confab:"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_reaches_the_other_node_as_remote_and_its_own_node_as_local_once_each() {
    if skip_without_nats().await {
        return;
    }
    let (url, prefix) = (nats_url(), prefix());
    let a = node(&url, &prefix, "a").await;
    let b = node(&url, &prefix, "b").await;
    let (mut a_all, mut a_local, mut a_remote) = (a.subscribe(), local_only(&a), remote_only(&a));
    let (mut b_all, mut b_local, mut b_remote) = (b.subscribe(), local_only(&b), remote_only(&b));

    a.publish(vec![ev(1)]).await;
    assert_eq!(tag(&next(&mut a_local).await), "u1");
    assert_eq!(tag(&next(&mut b_remote).await), "u1");
    assert_eq!(tag(&next(&mut b_all).await), "u1");
    // B answers once it has A's event: anything A got of its own would come before B's answer.
    b.publish(vec![ev(2)]).await;
    assert_eq!(tag(&next(&mut b_local).await), "u2");
    assert_eq!(tag(&next(&mut a_remote).await), "u2", "A got its own event back");
    assert_eq!(tag(&next(&mut a_all).await), "u1");
    assert_eq!(tag(&next(&mut a_all).await), "u2", "A got its own event twice");
    assert_eq!(tag(&next(&mut b_all).await), "u2");
    // And nothing else arrives before a last event from each side.
    a.publish(vec![ev(3)]).await;
    b.publish(vec![ev(4)]).await;
    let mut seen_a = vec![tag(&next(&mut a_all).await), tag(&next(&mut a_all).await)];
    let mut seen_b = vec![tag(&next(&mut b_all).await), tag(&next(&mut b_all).await)];
    seen_a.sort();
    seen_b.sort();
    assert_eq!(seen_a, ["u3", "u4"]);
    assert_eq!(seen_b, ["u3", "u4"]);
    assert_eq!(tag(&next(&mut a_local).await), "u3");
    assert_eq!(tag(&next(&mut b_remote).await), "u3");
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!((sa.published, sa.received, sa.undecodable, sa.resyncs), (2, 2, 0, 0));
    assert_eq!((sb.published, sb.received, sb.undecodable, sb.resyncs), (2, 2, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_nodes_order_is_kept_per_subject_for_a_thousand_events() {
    if skip_without_nats().await {
        return;
    }
    let (url, prefix) = (nats_url(), prefix());
    let a = node(&url, &prefix, "a").await;
    let b = node(&url, &prefix, "b").await;
    let mut b_all = b.subscribe();
    // Over many subjects (channels, and events of no channel): each subject's order is kept, and the
    // subjects interleave as their subscriptions are read.
    let events: Vec<Event> = (0..1000)
        .map(|n| match n % 7 {
            0 => Event::UserDeleted(UserId::parse(&format!("u{n}")).unwrap()),
            k => read(&format!("c.{k}"), n),
        })
        .collect();
    let subjects = Subjects::new(&prefix);
    let by_subject = |events: &[Event]| {
        let mut by: HashMap<String, Vec<String>> = HashMap::new();
        for e in events {
            by.entry(subjects.of(e)).or_default().push(tag(e));
        }
        by
    };
    let want = by_subject(&events);
    let mut rest = events;
    let mut size = 1;
    while !rest.is_empty() {
        let batch: Vec<Event> = rest.drain(..size.min(rest.len())).collect();
        a.publish(batch).await;
        size = size % 9 + 1;
    }
    let mut seen = Vec::with_capacity(1000);
    for _ in 0..1000 {
        seen.push(next(&mut b_all).await);
    }
    assert_eq!(by_subject(&seen), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_messages_are_counted_and_skipped() {
    if skip_without_nats().await {
        return;
    }
    let (url, prefix) = (nats_url(), prefix());
    let a = node(&url, &prefix, "a").await;
    let mut a_all = a.subscribe();
    let raw = async_nats::connect(url.as_str()).await.unwrap();
    let subjects = Subjects::new(&prefix);
    raw.publish(subjects.all(), Bytes::from_static(b"not json"))
        .await
        .unwrap();
    raw.publish_with_headers(
        subjects.of(&ev(0)),
        node_headers("x"),
        Bytes::from_static(br#"{"NoSuchEvent":1}"#),
    )
    .await
    .unwrap();
    let good = serde_json::to_vec(&ev(1)).unwrap();
    raw.publish_with_headers(subjects.of(&ev(1)), node_headers("x"), good.into())
        .await
        .unwrap();
    assert_eq!(tag(&next(&mut a_all).await), "u1");
    let stats = a.stats();
    assert_eq!((stats.received, stats.undecodable), (3, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_carrying_the_nodes_own_id_are_skipped() {
    if skip_without_nats().await {
        return;
    }
    let (url, prefix) = (nats_url(), prefix());
    let a = node(&url, &prefix, "a").await;
    let mut a_all = a.subscribe();
    let raw = async_nats::connect(url.as_str()).await.unwrap();
    let subjects = Subjects::new(&prefix);
    for (from, n) in [("a", 1), ("b", 2)] {
        let payload = serde_json::to_vec(&ev(n)).unwrap();
        raw.publish_with_headers(subjects.of(&ev(n)), node_headers(from), payload.into())
            .await
            .unwrap();
    }
    assert_eq!(tag(&next(&mut a_all).await), "u2");
    assert_eq!(a.stats().received, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_refusing_remote_events_gets_none() {
    if skip_without_nats().await {
        return;
    }
    let (url, prefix) = (nats_url(), prefix());
    let a = node(&url, &prefix, "a").await;
    let b = node(&url, &prefix, "b").await;
    let mut b_all = b.subscribe();
    let mut b_local = local_only(&b);
    a.publish(vec![ev(1)]).await;
    assert_eq!(tag(&next(&mut b_all).await), "u1", "the remote event reached B");
    b.publish(vec![ev(2)]).await;
    assert_eq!(tag(&next(&mut b_local).await), "u2", "only B's own event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_ends_in_a_resync_once_the_subscription_is_back() {
    if skip_without_nats().await {
        return;
    }
    let (url, prefix) = (nats_url(), prefix());
    let proxy = Proxy::start(nats_addr()).await;
    let a = node(&url, &prefix, "a").await;
    let b = node(&proxy.url, &prefix, "b").await;
    let mut a_all = a.subscribe();
    let mut b_all = b.subscribe();
    let mut b_local = local_only(&b);
    a.publish(vec![ev(1)]).await;
    assert_eq!(tag(&next(&mut b_all).await), "u1");

    proxy.cut();
    wait_until_disconnected(&b).await;
    a.publish(vec![ev(2)]).await; // B cannot get this one
    proxy.restore();
    assert!(
        matches!(next(&mut b_all).await, Event::Resync),
        "B's subscribers are told to resync"
    );
    assert!(b.stats().resyncs >= 1);
    // Events flow again once the resync is raised (a loaded machine may add a resync for a slow consumer:
    // one more is harmless, a missing one is not).
    a.publish(vec![ev(3)]).await;
    assert_eq!(
        tags_until(&mut b_all, "u3").await.last().map(String::as_str),
        Some("u3")
    );
    // A resync stands for remote events: a subscriber of local events only never sees it. (An event of no
    // channel, on the subject of B's request below, whose order against it is then kept.)
    b.publish(vec![Event::UserDeleted(uid("u4"))]).await;
    assert_eq!(tag(&next(&mut b_local).await), "u4");
    // B also asked A to resync, since what B sent while cut off may be lost: A gets that before B's event.
    let seen = tags_until(&mut a_all, "u4").await;
    let events: Vec<&str> = seen.iter().map(String::as_str).filter(|t| *t != "bus.resync").collect();
    assert_eq!(events, ["u1", "u2", "u3", "u4"], "{seen:?}");
    // B's request and B's event come from one publisher, in order; A's own u3 may come before or after.
    let resync = seen
        .iter()
        .position(|t| t == "bus.resync")
        .expect("A was asked to resync");
    assert!(resync < seen.iter().position(|t| t == "u4").unwrap(), "{seen:?}");
    assert!(a.stats().resyncs >= 1);
}

/// Tags of the next events, up to and including `last`.
async fn tags_until(events: &mut Box<dyn EventStream>, last: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let t = tag(&next(events).await);
        let done = t == last;
        seen.push(t);
        if done {
            return seen;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_back_from_a_lost_connection_sends_what_it_queued_and_asks_the_others_to_resync() {
    if skip_without_nats().await {
        return;
    }
    let (url, prefix) = (nats_url(), prefix());
    let proxy = Proxy::start(nats_addr()).await;
    let a = node(&proxy.url, &prefix, "a").await;
    let b = node(&url, &prefix, "b").await;
    let mut a_all = a.subscribe();
    let mut b_all = b.subscribe();

    proxy.cut();
    wait_until_disconnected(&a).await;
    a.publish(vec![ev(1)]).await; // queued while cut off
    assert_eq!(tag(&next(&mut a_all).await), "u1", "delivered on A at once");
    proxy.restore();
    // Two subjects: the event and A's request may come in either order.
    let mut seen = [tag(&next(&mut b_all).await), tag(&next(&mut b_all).await)];
    seen.sort();
    assert_eq!(
        seen,
        ["bus.resync", "u1"],
        "u1 sent once A is back, and A asks B to resync"
    );
    assert!(matches!(next(&mut a_all).await, Event::Resync), "A resyncs itself");
    assert_eq!(b.stats().resyncs, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_or_dropping_the_bus_stops_its_tasks() {
    if skip_without_nats().await {
        return;
    }
    let (url, prefix) = (nats_url(), prefix());
    let a = node(&url, &prefix, "a").await;
    let b = node(&url, &prefix, "b").await;
    let mut b_all = b.subscribe();
    a.publish(vec![ev(1)]).await;
    a.close().await;
    assert!(a.tasks.lock().unwrap().is_empty());
    assert_eq!(Arc::strong_count(&a.local), 1, "the reader let go of the local bus");
    assert_eq!(tag(&next(&mut b_all).await), "u1", "what was queued went out");
    // After close, events stay on the node.
    let mut a_all = a.subscribe();
    a.publish(vec![ev(2)]).await;
    assert_eq!(tag(&next(&mut a_all).await), "u2");

    drop(b_all);
    let mut b_all = b.subscribe();
    drop(b);
    let end = tokio::time::timeout(WAIT, b_all.next()).await.expect("the stream ends");
    assert!(end.is_none(), "the reader's hold on the local bus is gone");
}

#[test]
fn reconnection_attempts_wait_at_most_a_second_and_a_quarter() {
    assert_eq!(reconnect_delay(1), Duration::ZERO, "the first attempt is immediate");
    let second = reconnect_delay(2);
    assert!(
        second >= Duration::from_millis(50) && second <= Duration::from_millis(63),
        "{second:?}"
    );
    for attempts in [3, 6, 10, 64, usize::MAX] {
        let d = reconnect_delay(attempts);
        assert!(d <= MAX_RECONNECT_DELAY.mul_f64(1.25), "{attempts}: {d:?}");
    }
    assert!(reconnect_delay(64) >= MAX_RECONNECT_DELAY);
}
