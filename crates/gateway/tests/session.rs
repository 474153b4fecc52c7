//! A session driven without a network: the real session code over an in-memory socket, with a real service on
//! a temporary store.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::Message;
use confab_domain::model::{NewMessage, NewUser};
use confab_domain::ports::Origin;
use confab_domain::{ChannelId, ChannelSeq, Event, Limits, UserId};
use confab_gateway::{GatewayConfig, Hub, session};
use confab_service::{Actor, Confab, NewGroup, ServiceConfig};
use futures_util::{Sink, Stream};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The client's end: frames in from a channel, frames out to another.
struct MemSocket {
    incoming: mpsc::UnboundedReceiver<Message>,
    out: mpsc::UnboundedSender<Message>,
}

impl Stream for MemSocket {
    type Item = Result<Message, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.incoming.poll_recv(cx).map(|m| m.map(Ok))
    }
}

impl Sink<Message> for MemSocket {
    type Error = axum::Error;

    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, m: Message) -> Result<(), axum::Error> {
        self.out.send(m).map_err(axum::Error::new)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        Poll::Ready(Ok(()))
    }
}

/// A service on a temporary store with alice and bob in group `g`, the hub, and the bus under them.
async fn setup(dir: &tempfile::TempDir) -> (Arc<Confab>, Arc<Hub>, Arc<confab_bus::LocalBus>) {
    let bus = Arc::new(confab_bus::LocalBus::default());
    setup_with(dir, bus.clone(), bus).await
}

/// [`setup`] with the store publishing its commits on `commits` (the hub listens to `bus`).
async fn setup_with(
    dir: &tempfile::TempDir,
    bus: Arc<confab_bus::LocalBus>,
    commits: Arc<confab_bus::LocalBus>,
) -> (Arc<Confab>, Arc<Hub>, Arc<confab_bus::LocalBus>) {
    let store = confab_store_sqlite::SqliteStore::open(
        confab_store_sqlite::SqliteConfig::new(dir.path().join("t.db")),
        commits,
    )
    .unwrap();
    let cfg = ServiceConfig {
        limits: Limits::default(),
        files_dir: dir.path().join("files"),
        max_upload_bytes: 1 << 20,
        uploads: Default::default(),
        session_ttl: None,
        moderation: Default::default(),
    };
    let service = Confab::new(Arc::new(store), bus.clone(), "a-master-token-for-tests-0123456789", cfg).unwrap();
    for id in ["alice", "bob"] {
        let user = NewUser {
            id: UserId::parse(id).unwrap(),
            nickname: id.into(),
            profile_url: String::new(),
            metadata: Default::default(),
            is_bot: false,
        };
        service.create_user(&Actor::Admin, user).await.unwrap();
    }
    let group = NewGroup {
        id: Some(ChannelId::parse("g").unwrap()),
        name: "g".into(),
        cover_url: String::new(),
        custom_type: String::new(),
        data: None,
        members: vec![UserId::parse("alice").unwrap(), UserId::parse("bob").unwrap()],
        distinct: false,
    };
    service.create_group(&Actor::Admin, group).await.unwrap();
    let hub = Hub::start(service.clone(), GatewayConfig::default());
    (service, hub, bus)
}

/// Runs alice's session over `frames` (the client closes after them once the final ping's pong is in) and
/// returns the text frames it wrote.
async fn session_of(frames: &[&str]) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let (service, hub, _bus) = setup(&dir).await;
    let token = service
        .issue_session(&Actor::Admin, &UserId::parse("alice").unwrap())
        .await
        .unwrap()
        .token;
    let grant = service.session_grant(&token).await.unwrap();
    let (to_server, incoming) = mpsc::unbounded_channel();
    let (out, mut from_server) = mpsc::unbounded_channel();
    for f in frames.iter().chain([&r#"{"type":"ping","req_id":"end"}"#]) {
        to_server.send(Message::Text((*f).into())).unwrap();
    }
    let task = tokio::spawn(session::run(
        hub,
        grant,
        MemSocket { incoming, out },
        CancellationToken::new(),
    ));
    let mut seen = Vec::new();
    while let Some(m) = tokio::time::timeout(Duration::from_secs(10), from_server.recv())
        .await
        .unwrap()
    {
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            let end = v["type"] == "pong" && v["req_id"] == "end";
            seen.push(v);
            if end {
                break;
            }
        }
    }
    drop(to_server); // the client leaves: the session ends
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
    seen
}

/// Found by fuzzing (`ws_session`): the error for a malformed frame went out at once, ahead of the acks of
/// sends made before it, while the protocol answers requests in the order they were sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_frame_is_answered_in_its_turn() {
    let frames = [
        r#"{"type":"hello"}"#,
        r#"{"type":"send","req_id":"r1","channel_id":"g","text":"one"}"#,
        r#"{"type":"send","req_id":"r2","channel_id":"g","text":"two"}"#,
        r#"{"type":"ping","req_id":"p"}garbage"#,
        r#"{"type":"ping","req_id":"p2"}"#,
    ];
    let seen = session_of(&frames).await;
    let replies: Vec<(String, String)> = seen
        .iter()
        .filter(|v| matches!(v["type"].as_str(), Some("ack" | "error" | "pong")))
        .map(|v| {
            (
                v["type"].as_str().unwrap().to_string(),
                v["req_id"].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect();
    let expected = [
        ("ack", "r1"),
        ("ack", "r2"),
        ("error", "-"),
        ("pong", "p2"),
        ("pong", "end"),
    ];
    assert_eq!(
        replies,
        expected.map(|(a, b)| (a.to_string(), b.to_string())),
        "{seen:?}"
    );
    assert_eq!(seen[0]["type"], "welcome");
}

/// Waits for the next text frame of the given type, skipping others.
async fn next_of_type(from_server: &mut mpsc::UnboundedReceiver<Message>, kind: &str) -> Value {
    loop {
        let v = next_of_type_any(from_server).await;
        if v["type"] == kind {
            return v;
        }
    }
}

/// When the bus says events from other nodes may have been lost, every session of the node closes with
/// 4008 (resync) — the slow consumer's code — so each client resumes from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_resync_closes_every_session_with_4008() {
    let dir = tempfile::tempdir().unwrap();
    let (service, hub, bus) = setup(&dir).await;
    let mut clients = Vec::new();
    for user in ["alice", "alice", "bob"] {
        let token = service
            .issue_session(&Actor::Admin, &UserId::parse(user).unwrap())
            .await
            .unwrap()
            .token;
        let grant = service.session_grant(&token).await.unwrap();
        let (to_server, incoming) = mpsc::unbounded_channel();
        let (out, mut from_server) = mpsc::unbounded_channel();
        to_server.send(Message::Text(r#"{"type":"hello"}"#.into())).unwrap();
        let task = tokio::spawn(session::run(
            hub.clone(),
            grant,
            MemSocket { incoming, out },
            CancellationToken::new(),
        ));
        next_of_type(&mut from_server, "welcome").await;
        clients.push((to_server, from_server, task));
    }
    assert_eq!(hub.session_count(), 3);
    bus.publish_from(Origin::Remote, vec![Event::Resync]).await;
    for (_to_server, mut from_server, task) in clients {
        let close = loop {
            match tokio::time::timeout(Duration::from_secs(10), from_server.recv())
                .await
                .expect("the session closes in time")
            {
                Some(Message::Close(frame)) => break frame.expect("a close code"),
                Some(_) => continue,
                None => panic!("the session ended without a close frame"),
            }
        };
        assert_eq!(close.code, session::close::RESYNC);
        assert_eq!(close.reason.as_str(), "events may have been missed; resume");
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(hub.session_count(), 0);
}

/// A node among several may miss a channel's events around a user's join (it starts taking them from the
/// broker only then): the bus's catch-up has the user's sessions read what followed the join from the store,
/// in order, and the events that come afterwards are not sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_sends_what_followed_the_join_from_the_store_once() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Arc::new(confab_bus::LocalBus::default());
    // The store's commits never reach the hub: as if another node made them and this one missed them.
    let commits = Arc::new(confab_bus::LocalBus::default());
    let (service, hub, bus) = setup_with(&dir, bus, commits).await;
    let (alice, bob) = (UserId::parse("alice").unwrap(), UserId::parse("bob").unwrap());
    let g = ChannelId::parse("g").unwrap();
    let token = service.issue_session(&Actor::Admin, &bob).await.unwrap().token;
    let grant = service.session_grant(&token).await.unwrap();
    let (to_server, incoming) = mpsc::unbounded_channel();
    let (out, mut from_server) = mpsc::unbounded_channel();
    to_server.send(Message::Text(r#"{"type":"hello"}"#.into())).unwrap();
    let _task = tokio::spawn(session::run(
        hub,
        grant,
        MemSocket { incoming, out },
        CancellationToken::new(),
    ));
    next_of_type(&mut from_server, "welcome").await;

    let mut sent = Vec::new();
    for n in 1..=5 {
        let m = NewMessage::text(g.clone(), alice.clone(), format!("m{n}"));
        sent.push(service.send(&Actor::User(alice.clone()), m).await.unwrap().message);
    }
    // Bob joined when the channel's last seq was 1; the node caught the channel's events from seq 4 on.
    bus.publish_from(
        Origin::Remote,
        vec![
            Event::ChannelCatchUp {
                channel_id: g.clone(),
                after: ChannelSeq(1),
                user_ids: Arc::from(vec![bob.clone()]),
            },
            Event::MessageCreated(Arc::new(sent[3].clone())),
            Event::MessageCreated(Arc::new(sent[4].clone())),
        ],
    )
    .await;
    let mut seqs = Vec::new();
    while seqs.last() != Some(&5) {
        seqs.push(
            next_of_type(&mut from_server, "message.new").await["seq"]
                .as_u64()
                .unwrap(),
        );
    }
    assert_eq!(seqs, [2, 3, 4, 5]);
    // Nothing more: a ping's answer comes next.
    to_server
        .send(Message::Text(r#"{"type":"ping","req_id":"p"}"#.into()))
        .unwrap();
    let next = loop {
        let v = next_of_type_any(&mut from_server).await;
        if v["type"] != "presence" {
            break v;
        }
    };
    assert_eq!(
        (next["type"].as_str(), next["req_id"].as_str()),
        (Some("pong"), Some("p")),
        "{next}"
    );
}

/// The next text frame.
async fn next_of_type_any(from_server: &mut mpsc::UnboundedReceiver<Message>) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), from_server.recv())
            .await
            .expect("a frame in time")
            .expect("the session is open");
        if let Message::Text(t) = m {
            return serde_json::from_str(&t).unwrap();
        }
    }
}
