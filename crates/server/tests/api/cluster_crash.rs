//! Several real `confab` processes on one PostgreSQL schema and one NATS subject prefix, and one of them
//! killed with SIGKILL while clients send through all of them: no acknowledged message is lost or doubled,
//! the channel's seq stays gap-free, a send retried on another node with its client id returns the
//! original, and a WebSocket client of the dead node resumes on another node without a gap. Skipped
//! visibly without PostgreSQL or NATS, unless `CONFAB_REQUIRE_POSTGRES=1` / `CONFAB_REQUIRE_NATS=1`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use confab_store_postgres::testing::{TestSchema, skip_without_postgres};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::cluster::{nats_url, skip_without_nats};
use crate::durability::{Server, add_endpoint_at, call, confab_command, seed_group, spawn_server, wait_ready};
use crate::helpers::{Ws, next_of_type, send_json};

/// Where the nodes of one test meet.
pub(crate) struct Shared {
    pub postgres_url: String,
    pub nats_url: String,
    pub prefix: String,
}

impl Shared {
    /// A schema of the test database and a subject prefix of the shared NATS of their own; `None` (after a
    /// visible skip) without them.
    async fn of_this_test() -> Option<(TestSchema, Shared)> {
        if skip_without_postgres().await || skip_without_nats().await {
            return None;
        }
        let schema = TestSchema::create().await;
        let shared = Shared {
            postgres_url: schema.url(),
            nats_url: nats_url(),
            prefix: format!("confab-test-{:016x}", rand::random::<u64>()),
        };
        Some((schema, shared))
    }
}

/// A node: the real binary on a random loopback port with its own data dir (and so its own node id), with
/// more configuration in `env`.
pub(crate) fn start_node_with(shared: &Shared, data_dir: &Path, env: &[(&str, &str)]) -> Server {
    spawn_server(
        confab_command(data_dir)
            .env("CONFAB_BUILTIN__ENABLED", "false")
            .env("CONFAB_STORAGE__BACKEND", "postgres")
            .env("CONFAB_STORAGE__POSTGRES_URL", &shared.postgres_url)
            .env("CONFAB_STORAGE__POSTGRES_POOL_SIZE", "4")
            .env("CONFAB_BUS__BACKEND", "nats")
            .env("CONFAB_BUS__NATS_URL", &shared.nats_url)
            .env("CONFAB_BUS__SUBJECT_PREFIX", &shared.prefix)
            .env("CONFAB_CLUSTER__HEARTBEAT_SECS", "1")
            .env("CONFAB_CLUSTER__NODE_SILENT_AFTER_SECS", "3")
            .envs(env.iter().copied()),
    )
}

/// Every message of `g` through `addr`, in seq order.
pub(crate) async fn history(http: &reqwest::Client, addr: SocketAddr) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    loop {
        let after = out.last().map(|m| m["seq"].as_u64().unwrap()).unwrap_or(0);
        let (s, v) = call(
            http,
            addr,
            "GET",
            &format!("/api/v1/channels/g/messages?after={after}&limit=200"),
            Value::Null,
        )
        .await
        .unwrap();
        assert_eq!(s, 200, "{v}");
        let page = v["messages"].as_array().unwrap().clone();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

/// Nodes started on one shared place, all ready, with `alice`, `bob` and their group `g`. Dropping the
/// servers kills them and dropping the dirs removes them: a test keeps both to its end.
pub(crate) struct Nodes {
    pub servers: Vec<Server>,
    pub addrs: Vec<SocketAddr>,
    pub dirs: Vec<tempfile::TempDir>,
    pub http: reqwest::Client,
}

pub(crate) async fn start_nodes(shared: &Shared, n: usize, env: &[(&str, &str)]) -> Nodes {
    let dirs: Vec<tempfile::TempDir> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
    let servers: Vec<Server> = dirs.iter().map(|d| start_node_with(shared, d.path(), env)).collect();
    let addrs: Vec<SocketAddr> = servers.iter().map(|n| n.addr).collect();
    let http = reqwest::Client::new();
    for a in &addrs {
        wait_ready(&http, *a).await;
    }
    seed_group(&http, addrs[0]).await;
    Nodes {
        servers,
        addrs,
        dirs,
        http,
    }
}

/// Every acknowledged send (client id → id and seq) is stored once, with the id and seq it was
/// acknowledged with; the channel's seq is gap-free.
pub(crate) fn check_history(history: &[Value], acked: &HashMap<String, (i64, u64)>) {
    let seqs: Vec<u64> = history.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=history.len() as u64).collect::<Vec<_>>(), "gap-free");
    let by_key: HashMap<&str, (i64, u64)> = history
        .iter()
        .map(|m| {
            let ids = (m["id"].as_i64().unwrap(), m["seq"].as_u64().unwrap());
            (m["client_msg_id"].as_str().unwrap(), ids)
        })
        .collect();
    assert_eq!(by_key.len(), history.len(), "no client id stored twice");
    for (key, ids) in acked {
        assert_eq!(
            by_key.get(key.as_str()),
            Some(ids),
            "acknowledged message {key} lost or changed"
        );
    }
}

/// Tells a [`follow_channel`] client the last seq there is, waits for it to get there, and checks it got
/// every seq once, in order.
pub(crate) async fn expect_followed(
    follower: tokio::task::JoinHandle<()>,
    until: &AtomicU64,
    seen: &Mutex<Vec<u64>>,
    last: u64,
) {
    until.store(last, Ordering::Release);
    tokio::time::timeout(Duration::from_secs(30), follower)
        .await
        .expect("the client catches up within 30 s")
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        (1..=last).collect::<Vec<_>>(),
        "in order, without a gap or a repeat"
    );
}

/// A session token of `user`, through the admin API.
pub(crate) async fn session_of(http: &reqwest::Client, addr: SocketAddr, user: &str) -> String {
    let (s, v) = call(http, addr, "POST", &format!("/api/v1/users/{user}/sessions"), json!({}))
        .await
        .unwrap();
    assert!(s == 200 || s == 201, "{s} {v}");
    v["token"].as_str().unwrap().to_string()
}

/// A WebSocket session of `user` on the node at `addr`, welcomed.
pub(crate) async fn session_socket(http: &reqwest::Client, admin_at: SocketAddr, addr: SocketAddr, user: &str) -> Ws {
    let token = session_of(http, admin_at, user).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/api/v1/ws?token={token}"))
        .await
        .unwrap();
    send_json(&mut ws, json!({"type": "hello", "resume": {}})).await;
    next_of_type(&mut ws, "welcome").await;
    ws
}

/// Bob following `g` through `nodes` ([`follow_channel`]): the task, the seqs he got, and the last seq to
/// wait for (`u64::MAX` until known).
pub(crate) async fn bob_follows(
    http: &reqwest::Client,
    admin_at: SocketAddr,
    nodes: Vec<SocketAddr>,
) -> (tokio::task::JoinHandle<()>, Arc<Mutex<Vec<u64>>>, Arc<AtomicU64>) {
    let bob = session_of(http, admin_at, "bob").await;
    let (seen, until) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicU64::new(u64::MAX)));
    let follower = tokio::spawn(follow_channel(nodes, bob, seen.clone(), until.clone()));
    (follower, seen, until)
}

/// A WebSocket client of `g` that follows the channel through whichever node answers: when its node goes
/// away it connects to the next one, resuming after the last seq it got. Records every seq it is given,
/// until it has the one `until` names (`u64::MAX` until the test knows the last).
pub(crate) async fn follow_channel(
    nodes: Vec<SocketAddr>,
    token: String,
    seen: Arc<Mutex<Vec<u64>>>,
    until: Arc<AtomicU64>,
) {
    let mut last = 0u64;
    let mut turn = 0usize;
    let done = |last: u64| last >= until.load(Ordering::Acquire);
    'connect: while !done(last) {
        let addr = nodes[turn % nodes.len()];
        turn += 1;
        let url = format!("ws://{addr}/api/v1/ws?token={token}");
        let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let hello = json!({"type": "hello", "resume": {"g": last}}).to_string();
        if ws.send(Message::Text(hello.into())).await.is_err() {
            continue;
        }
        while !done(last) {
            // Bounded, so a change of `until` is seen while the channel is quiet.
            let msg = match tokio::time::timeout(Duration::from_millis(200), ws.next()).await {
                Err(_) => continue,
                Ok(Some(Ok(msg))) => msg,
                Ok(_) => continue 'connect,
            };
            let Message::Text(t) = msg else { continue };
            let f: Value = serde_json::from_str(&t).unwrap();
            if f["type"] == "message.new" && f["channel_id"] == "g" {
                let seq = f["seq"].as_u64().unwrap();
                seen.lock().unwrap().push(seq);
                last = last.max(seq);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_one_node_under_load_loses_nothing_and_its_clients_resume_elsewhere() {
    let Some((_schema, shared)) = Shared::of_this_test().await else {
        return;
    };
    let Nodes {
        servers: mut nodes,
        dirs: _dirs,
        addrs,
        http,
    } = start_nodes(&shared, 3, &[]).await;

    // Bob follows g through the node that will die, then through the survivors.
    let victim = 2;

    // One sender per node; the victim's sender moves to a survivor and retries the send it lost.
    let acked: Arc<Mutex<HashMap<String, (i64, u64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for (w, addr) in addrs.iter().copied().enumerate() {
        let (http, acked, stop) = (http.clone(), acked.clone(), stop.clone());
        let survivor = addrs[(w + 1) % 2];
        senders.push(tokio::spawn(async move {
            let mut target = addr;
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("w{w}-{i}");
                let body = json!({"sender_id": if w % 2 == 0 { "alice" } else { "bob" },
                                  "text": key, "client_msg_id": key});
                loop {
                    match call(&http, target, "POST", "/api/v1/channels/g/messages", body.clone()).await {
                        Ok((s, v)) if s == 201 || s == 200 => {
                            let ids = (v["id"].as_i64().unwrap(), v["seq"].as_u64().unwrap());
                            let before = acked.lock().unwrap().insert(key.clone(), ids);
                            assert_eq!(before, None, "{key} acknowledged twice");
                            break;
                        }
                        Ok((s, v)) => panic!("unexpected answer {s} {v}"),
                        // Its node died mid-request: retried on a survivor, under the same client id.
                        Err(_) => target = survivor,
                    }
                }
                i += 1;
            }
        }));
    }
    let (follower, seen, stop_at) = bob_follows(&http, addrs[0], vec![addrs[victim], addrs[0], addrs[1]]).await;

    while acked.lock().unwrap().len() < 300 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    nodes[victim].child.kill().unwrap(); // SIGKILL
    nodes[victim].child.wait().unwrap();
    let killed_at = acked.lock().unwrap().len();
    while acked.lock().unwrap().len() < killed_at + 300 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.await.unwrap();
    }

    let history = history(&http, addrs[0]).await;
    let acked = acked.lock().unwrap().clone();
    check_history(&history, &acked);
    // Bob's client got every seq once, in order, across the move.
    expect_followed(follower, &stop_at, &seen, history.len() as u64).await;
    eprintln!(
        "cluster crash: 3 nodes, 1 killed, {} acknowledged sends checked, {} stored, bob's client resumed",
        acked.len(),
        history.len()
    );
}

/// A webhook endpoint relayed by one node at a time: the node holding its lease is killed with SIGKILL
/// while messages go out through both nodes; the other takes the endpoint over once the lease expires,
/// from the cursor saved last, and every message reaches the receiver, first deliveries in channel order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_relaying_a_webhook_endpoint_killed_mid_relay_skips_nothing() {
    use crate::webhook_outbox::{Script, next_hook, receiver};
    let Some((schema, shared)) = Shared::of_this_test().await else {
        return;
    };
    let env = [
        ("CONFAB_EGRESS__ALLOW_PRIVATE", "[\"127.0.0.1\"]"),
        ("CONFAB_WEBHOOKS__BACKOFF_MS", "50"),
        ("CONFAB_WEBHOOKS__LEASE_TTL_SECS", "2"),
    ];
    let Nodes {
        servers: mut nodes,
        addrs,
        dirs,
        http,
    } = start_nodes(&shared, 2, &env).await;
    let (url, secrets, mut hooks) = receiver(Script::default()).await;
    let (id, key) = add_endpoint_at(&http, addrs[0], &url).await;
    secrets.lock().unwrap().push(key);
    let lease = format!("webhooks:{id}");

    let mut sent = 0u64;
    let send_round = async |sent: &mut u64, through: &[SocketAddr]| {
        for addr in through {
            for _ in 0..10 {
                *sent += 1;
                let body = json!({"sender_id": "alice", "text": format!("m{sent}")});
                let (s, v) = call(&http, *addr, "POST", "/api/v1/channels/g/messages", body)
                    .await
                    .unwrap();
                assert_eq!(s, 201, "{v}");
            }
        }
    };
    send_round(&mut sent, &addrs).await;
    let mut first_seen: Vec<u64> = Vec::new();
    let mut deliveries = 0;
    let mut take = async |first_seen: &mut Vec<u64>, upto: u64| {
        while first_seen.len() < upto as usize {
            let h = next_hook(&mut hooks).await;
            deliveries += 1;
            let seq = h.body["data"]["message"]["seq"].as_u64().unwrap();
            if !first_seen.contains(&seq) {
                first_seen.push(seq);
            }
        }
    };
    take(&mut first_seen, sent / 2).await;

    // Mid-relay: the holder of the endpoint's lease dies.
    let holder: String = schema
        .admin()
        .await
        .query_one(
            &format!("SELECT holder FROM {}.leases WHERE name = $1", schema.name),
            &[&lease],
        )
        .await
        .unwrap()
        .get(0);
    let victim = dirs
        .iter()
        .position(|d| std::fs::read_to_string(d.path().join("node_id")).unwrap().trim() == holder)
        .expect("a node holds the lease");
    nodes[victim].child.kill().unwrap(); // SIGKILL
    nodes[victim].child.wait().unwrap();
    let survivor = addrs[1 - victim];
    send_round(&mut sent, &[survivor]).await;
    take(&mut first_seen, sent).await;

    assert_eq!(
        first_seen,
        (1..=sent).collect::<Vec<_>>(),
        "every message, first deliveries in order"
    );
    eprintln!(
        "webhook takeover: node {victim} killed holding the lease, {sent} events, {deliveries} deliveries \
         ({} repeated from above the dead holder's saved cursor)",
        deliveries - sent as usize
    );
}

/// The node generating a reply is killed: another node ends the reply `interrupted` once the dead node has
/// been silent for `node_silent_after_secs` (3 s here), and a client on the other node sees that final
/// state; the reply never stays `generating`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_whose_node_dies_ends_interrupted_through_another_node() {
    use confab_llm::fake::{Behaviour, FakeProvider};

    use crate::helpers::next_json_within;
    let Some((_schema, shared)) = Shared::of_this_test().await else {
        return;
    };
    let fake = FakeProvider::start().await;
    fake.set_default(Behaviour::endless("tick "));
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        format!(
            "[[providers]]\nname = \"fake\"\nkind = \"openai_compatible\"\nbase_url = \"{}\"\nmodel = \"m\"\n",
            fake.openai_base_url()
        ),
    )
    .unwrap();
    let Nodes {
        mut servers,
        dirs: _dirs,
        addrs,
        http,
    } = start_nodes(&shared, 2, &[("CONFAB_CONFIG", config.path().to_str().unwrap())]).await;
    let bot = json!({"id": "helper", "settings": {"provider": "fake"}});
    let (s, v) = call(&http, addrs[0], "POST", "/api/v1/bots", bot).await.unwrap();
    assert_eq!(s, 201, "{v}");
    let (s, v) = call(
        &http,
        addrs[0],
        "POST",
        "/api/v1/channels/g/members",
        json!({"user_ids": ["helper"]}),
    )
    .await
    .unwrap();
    assert!(s == 200 || s == 201, "{s} {v}");
    let mut bob_on_b = session_socket(&http, addrs[0], addrs[1], "bob").await;

    let body = json!({"sender_id": "alice", "text": "@helper go on"});
    let (s, v) = call(&http, addrs[0], "POST", "/api/v1/channels/g/messages", body)
        .await
        .unwrap();
    assert_eq!(s, 201, "{v}");
    let id = loop {
        let f = next_of_type(&mut bob_on_b, "message.new").await;
        if f["message"]["sender_id"] == "helper" {
            break f["message"]["id"].clone();
        }
    };
    let _ = next_of_type(&mut bob_on_b, "message.delta").await;
    servers[0].child.kill().unwrap(); // SIGKILL, mid-reply
    servers[0].child.wait().unwrap();
    let killed = std::time::Instant::now();
    let fin = loop {
        let f = next_json_within(&mut bob_on_b, Duration::from_secs(30)).await;
        if f["type"] == "message.updated" && f["message"]["id"] == id && f["message"]["reply"]["state"] != "generating"
        {
            break f["message"].clone();
        }
    };
    assert_eq!(fin["reply"]["state"], "interrupted", "{fin}");
    eprintln!(
        "reply of a dead node: interrupted {} ms after its node was killed (silent after 3 s, heartbeat 1 s)",
        killed.elapsed().as_millis()
    );
}
