//! Several nodes on one PostgreSQL schema and one NATS subject prefix (each test its own): what one node
//! commits reaches the clients of the others, in order; a revocation on one node closes sockets on the
//! others. Skipped visibly without PostgreSQL or NATS, unless `CONFAB_REQUIRE_POSTGRES=1` /
//! `CONFAB_REQUIRE_NATS=1`.

use std::time::Duration;

use confab::config::{BusBackend, StorageBackend};
use confab_store_postgres::testing::{TestSchema, skip_without_postgres};
use futures_util::SinkExt;
use serde_json::json;

use crate::helpers::*;

const CLOSE_WAIT: Duration = Duration::from_secs(10);

pub(crate) fn nats_url() -> String {
    std::env::var("CONFAB_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// True (after a visible skip line) when NATS does not answer.
pub(crate) async fn skip_without_nats() -> bool {
    let url = nats_url();
    let addr = url
        .trim_start_matches("nats://")
        .split(',')
        .next()
        .unwrap_or_default()
        .to_string();
    let reachable = tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(&addr))
        .await
        .is_ok_and(|c| c.is_ok());
    if !reachable {
        skip_unless_required(
            "CONFAB_REQUIRE_NATS",
            &format!("NATS not reachable at {addr}"),
            "scripts/services.sh (or set CONFAB_TEST_NATS_URL)",
        );
    }
    !reachable
}

/// A cluster's shared place: a schema of its own and a subject prefix of its own.
pub(crate) struct Cluster {
    schema: TestSchema,
    prefix: String,
}

impl Cluster {
    pub(crate) async fn new() -> Option<Cluster> {
        if skip_without_postgres().await || skip_without_nats().await {
            return None;
        }
        Some(Cluster {
            schema: TestSchema::create().await,
            prefix: format!("confab-test-{:016x}", rand::random::<u64>()),
        })
    }

    /// A node: its own data dir and node id, the cluster's database and subjects.
    pub(crate) async fn node(&self) -> TestApp {
        self.node_with(|_| {}).await
    }

    /// Two nodes, and through the first: users `alice` and `bob` (their session tokens) in group `g`.
    async fn two_nodes_with_group(&self) -> (TestApp, TestApp, String, String) {
        let a = self.node().await;
        let b = self.node().await;
        let alice = a.user("alice").await;
        let bob = a.user("bob").await;
        a.group("g", &["alice", "bob"]).await;
        (a, b, alice, bob)
    }

    /// A node with more configuration of its own.
    async fn node_with(&self, more: impl FnOnce(&mut confab::Config) + Send + 'static) -> TestApp {
        let (url, prefix) = (self.schema.url(), self.prefix.clone());
        spawn_app_with(move |c| {
            c.nim.app_key = crate::nim::APP_KEY.into();
            c.nim.app_secret = crate::nim::APP_SECRET.into();
            c.storage.backend = StorageBackend::Postgres;
            c.storage.postgres_url = url;
            c.bus.backend = BusBackend::Nats;
            c.bus.nats_url = nats_url();
            c.bus.subject_prefix = prefix;
            c.limits.user_send_burst = 1000;
            more(c);
        })
        .await
    }
}

/// Polls `check` until it holds (another node applies a change when its announcement arrives).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + CLOSE_WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {CLOSE_WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn what_one_node_commits_reaches_the_clients_of_the_others_in_order() {
    let Some(cluster) = Cluster::new().await else { return };
    let (a, b, alice, bob) = cluster.two_nodes_with_group().await;
    let mut bob_on_b = b.ws(&bob, json!({})).await;
    let mut alice_on_a = a.ws(&alice, json!({})).await;

    for i in 1..=30u64 {
        let m = a.send_as(&alice, "g", &format!("a{i}")).await;
        assert_eq!(m["seq"], i);
    }
    for want in 1..=30u64 {
        let f = next_of_type(&mut bob_on_b, "message.new").await;
        assert_eq!(
            (f["channel_id"].as_str(), f["seq"].as_u64()),
            (Some("g"), Some(want)),
            "{f}"
        );
        assert_eq!(f["message"]["text"], format!("a{want}"));
    }

    // And back: bob sends through node b, alice hears it on node a (after her own 30 messages).
    let m = b.send_as(&bob, "g", "from b").await;
    assert_eq!(m["seq"], 31);
    loop {
        let f = next_of_type(&mut alice_on_a, "message.new").await;
        if f["seq"] == 31 {
            assert_eq!(f["message"]["text"], "from b");
            break;
        }
    }

    // Typing on node b reaches node a.
    send_json(
        &mut bob_on_b,
        json!({"type": "typing", "channel_id": "g", "active": true}),
    )
    .await;
    let t = next_of_type(&mut alice_on_a, "typing").await;
    assert_eq!(
        (t["channel_id"].as_str(), t["user_id"].as_str()),
        (Some("g"), Some("bob")),
        "{t}"
    );
}

#[tokio::test]
async fn a_revocation_on_one_node_closes_the_sockets_on_the_others() {
    let Some(cluster) = Cluster::new().await else { return };
    let a = cluster.node().await;
    let b = cluster.node().await;
    let alice = a.user("alice").await;
    let _bob = a.user("bob").await;
    let mut alice_on_b = b.ws(&alice, json!({})).await;
    let (s, v) = a.admin("DELETE", "/api/v1/users/alice/sessions", None).await;
    assert!(s == 200 || s == 204, "{s} {v}");
    assert_eq!(close_code(&mut alice_on_b, CLOSE_WAIT).await, Some(4003));
    // The other node's cache of verified tokens follows the same event (its own subscriber, which may run
    // a moment after the hub's).
    let deadline = tokio::time::Instant::now() + CLOSE_WAIT;
    loop {
        let (s, v) = b.call("GET", "/api/v1/me", &alice, None).await;
        if s == 401 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node b still accepts the revoked token: {s} {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_nim_request_replayed_to_another_node_is_refused() {
    use crate::nim::{APP_SECRET, nim_signed, now_secs};
    let Some(cluster) = Cluster::new().await else { return };
    let a = cluster.node().await;
    let b = cluster.node().await;
    let path = "/nimserver/user/getUinfos.action";
    let form = "accids=%5B%22nobody%22%5D";
    let t = now_secs();
    let (s, v) = nim_signed(&a, path, form, "once-in-the-cluster", t, APP_SECRET).await;
    assert_eq!((s, v["code"].as_i64()), (200, Some(200)), "{v}");
    let (s, v) = nim_signed(&b, path, form, "once-in-the-cluster", t, APP_SECRET).await;
    assert_eq!(
        (s, v["code"].as_i64()),
        (200, Some(431)),
        "the replay through node b: {v}"
    );
}

/// Moderation rules and providers changed through one node's admin API apply on the others (each node
/// keeps them in memory and reloads what another changed when it is announced).
#[tokio::test]
async fn rules_and_providers_changed_on_one_node_apply_on_the_others() {
    let Some(cluster) = Cluster::new().await else { return };
    let a = cluster.node().await;
    let b = cluster.node().await;
    let alice = a.user("alice").await;
    a.group("g", &["alice"]).await;
    let send = async |node: &TestApp, text: &str| {
        node.call(
            "POST",
            "/api/v1/channels/g/messages",
            &alice,
            Some(json!({ "text": text })),
        )
        .await
    };
    assert_eq!(send(&b, "hail is coming").await.0, 201);

    let weather = json!({"rules": [{"name": "weather", "words": ["hail"], "action": "block",
        "reason": "No weather talk."}]});
    let (s, v) = a.admin("PUT", "/api/v1/moderation/rules", Some(weather)).await;
    assert_eq!(s, 200, "{v}");
    eventually("node b applies node a's rules", || async {
        send(&b, "hail again").await.0 == 422
    })
    .await;
    let scary = json!({"rules": [{"name": "scary", "words": ["scary"], "action": "mask"}]});
    let (s, v) = b.admin("PUT", "/api/v1/channels/g/moderation/rules", Some(scary)).await;
    assert_eq!(s, 200, "{v}");
    eventually("node a applies node b's channel rules", || async {
        send(&a, "so scary").await.1["text"] == "so *****"
    })
    .await;
    let (s, v) = b
        .admin("PUT", "/api/v1/moderation/rules", Some(json!({"rules": []})))
        .await;
    assert_eq!(s, 200, "{v}");
    eventually("node a drops the rules node b removed", || async {
        send(&a, "hail at last").await.0 == 201
    })
    .await;

    let lists = async |node: &TestApp| {
        let (s, v) = node.admin("GET", "/api/v1/providers", None).await;
        assert_eq!(s, 200, "{v}");
        v.to_string().contains("\"name\":\"remote\"")
    };
    let remote = json!({"name": "remote", "kind": "openai_compatible",
        "base_url": "https://llm.example.com/v1", "model": "m"});
    let (s, v) = a.admin("POST", "/api/v1/providers", Some(remote)).await;
    assert_eq!(s, 201, "{v}");
    eventually("node b lists node a's provider", || lists(&b)).await;
    let (s, v) = b.admin("DELETE", "/api/v1/providers/remote", None).await;
    assert!(s == 200 || s == 204, "{s} {v}");
    eventually("node a forgets the provider node b deleted", || async {
        !lists(&a).await
    })
    .await;
}

/// A webhook endpoint created through one node gets the events committed on every node, in channel order;
/// a change made on another node reaches the node relaying it; and when that node stops, another takes
/// the endpoint over from the saved cursor, skipping nothing.
#[tokio::test]
async fn a_webhook_endpoint_relays_every_nodes_events_and_moves_when_its_node_stops() {
    use crate::webhook_outbox::{Script, add_endpoint, loopback, next_hook, receiver};
    let Some(cluster) = Cluster::new().await else { return };
    let a = cluster.node_with(loopback).await;
    let b = cluster.node_with(loopback).await;
    let (url, secrets, mut hooks) = receiver(Script::default()).await;
    let alice = a.user("alice").await;
    a.group("g", &["alice"]).await;
    let id = add_endpoint(&a, &url, json!(["message.sent"]), &secrets).await;
    let path = format!("/api/v1/webhooks/endpoints/{id}");
    eventually("node b knows the endpoint", || async {
        b.admin("GET", &path, None).await.0 == 200
    })
    .await;

    let mut sent = 0u64;
    for node in [&a, &b, &a, &b] {
        for _ in 0..3 {
            sent += 1;
            node.send_as(&alice, "g", &format!("m{sent}")).await;
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut last = 0;
    while seen.len() < sent as usize {
        let h = next_hook(&mut hooks).await;
        let seq = h.body["data"]["message"]["seq"].as_u64().unwrap();
        assert!(seq > last || seen.contains(&seq), "out of order: {seq} after {last}");
        last = last.max(seq);
        seen.insert(seq);
    }
    assert_eq!(
        seen,
        (1..=sent).collect(),
        "every node's messages, once the endpoint existed"
    );

    // Disabled through node b: node a, which may be the one relaying, stops delivering.
    let (s, v) = b.admin("PATCH", &path, Some(json!({"enabled": false}))).await;
    assert_eq!(s, 200, "{v}");
    eventually("node a sees the endpoint disabled", || async {
        a.admin("GET", &path, None).await.1["enabled"] == false
    })
    .await;
    let (s, v) = b.admin("PATCH", &path, Some(json!({"enabled": true}))).await;
    assert_eq!(s, 200, "{v}");
    eventually("node a sees the endpoint enabled", || async {
        a.admin("GET", &path, None).await.1["enabled"] == true
    })
    .await;

    // Whichever node relayed it, the endpoint is b's once a stops (its lease released on the way out).
    drop(a);
    let from = sent + 1;
    for _ in 0..3 {
        sent += 1;
        b.send_as(&alice, "g", &format!("m{sent}")).await;
    }
    let mut after = std::collections::BTreeSet::new();
    while after.len() < 3 {
        let h = next_hook(&mut hooks).await;
        let seq = h.body["data"]["message"]["seq"].as_u64().unwrap();
        // At least once: what the stopped holder sent above its saved cursor may come again.
        if seq >= from {
            after.insert(seq);
        }
    }
    assert_eq!(after, (from..=sent).collect());
}

/// A user is online while any node holds a session of theirs: the contacts hear "online" once, when the
/// first node's first session opens, and "offline" once, when the last node's last one closes; the user
/// views of every node say the same meanwhile.
#[tokio::test]
async fn presence_is_the_union_of_the_nodes_sessions() {
    use tokio_tungstenite::tungstenite::Message;
    let Some(cluster) = Cluster::new().await else { return };
    let (a, b, alice, bob) = cluster.two_nodes_with_group().await;
    let mut bob_on_a = a.ws(&bob, json!({})).await;
    let online = async |node: &TestApp| {
        let (s, v) = node.call("GET", "/api/v1/users/alice", &bob, None).await;
        assert_eq!(s, 200, "{v}");
        v["online"].as_bool().unwrap()
    };
    assert!(!online(&a).await);

    let mut alice_on_b = b.ws(&alice, json!({})).await;
    let f = next_of_type(&mut bob_on_a, "presence").await;
    assert_eq!(
        (f["user_id"].as_str(), f["online"].as_bool()),
        (Some("alice"), Some(true)),
        "{f}"
    );
    assert!(online(&a).await, "node a sees the session node b holds");

    // A second session on node a, then the first (on node b) closes: alice stays online. The server sends
    // its close frame once the session is unregistered and its presence recorded.
    let mut alice_on_a = a.ws(&alice, json!({})).await;
    alice_on_b.send(Message::Binary(vec![1].into())).await.unwrap();
    assert_eq!(close_code(&mut alice_on_b, CLOSE_WAIT).await, Some(1002));
    assert!(online(&a).await && online(&b).await, "still online through node a");

    alice_on_a.send(Message::Binary(vec![1].into())).await.unwrap();
    assert_eq!(close_code(&mut alice_on_a, CLOSE_WAIT).await, Some(1002));
    assert!(!online(&a).await && !online(&b).await);
    // The only presence frames of alice bob got: one online, one offline (a marker message after them
    // bounds the wait).
    a.send_as(&alice, "g", "marker").await;
    let mut frames = Vec::new();
    loop {
        let f = next_json(&mut bob_on_a).await;
        if f["type"] == "message.new" && f["message"]["text"] == "marker" {
            break;
        }
        if f["type"] == "presence" && f["user_id"] == "alice" {
            frames.push(f["online"].as_bool().unwrap());
        }
    }
    assert_eq!(
        frames,
        vec![false],
        "after the first online: one offline, when the last session closed"
    );
}

/// Every node runs the bot runtime, and a trigger still gets one reply in the cluster (the node that
/// committed the trigger decides it); a stop asked through another node reaches the node generating.
#[tokio::test]
async fn a_trigger_gets_one_reply_in_the_cluster_and_a_stop_reaches_its_node() {
    use confab_llm::ProviderKind;
    use confab_llm::fake::{Behaviour, FakeProvider, Reply};

    use crate::bots::{create_bot, finished_replies, provider};
    let Some(cluster) = Cluster::new().await else { return };
    let fake = FakeProvider::start().await;
    let providers = vec![provider("fake", ProviderKind::OpenAiCompatible, &fake)];
    let with_fake = |c: &mut confab::Config, providers: Vec<confab_llm::ProviderConfig>| {
        c.providers = providers;
        c.bot_runtime.save_interval_ms = 20;
    };
    let p = providers.clone();
    let a = cluster.node_with(move |c| with_fake(c, p)).await;
    let b = cluster.node_with(move |c| with_fake(c, providers)).await;
    create_bot(&a, "helper", json!({"provider": "fake"})).await;
    let alice = a.user("alice").await;
    let bob = a.user("bob").await;
    a.group("g", &["alice", "bob", "helper"]).await;
    let mut bob_on_b = b.ws(&bob, json!({})).await;

    fake.set_default(Behaviour::success("Hello from the cluster."));
    let mut triggers = Vec::new();
    for (i, node) in [&a, &b, &a, &b].into_iter().enumerate() {
        triggers.push(
            node.send_as(&alice, "g", &format!("@helper q{i}")).await["id"]
                .as_i64()
                .unwrap(),
        );
    }
    let mut answered: Vec<i64> = finished_replies(&mut bob_on_b, "helper", triggers.len())
        .await
        .iter()
        .map(|m| {
            assert_eq!(m["reply"]["state"], "complete", "{m}");
            m["reply"]["trigger_id"].as_i64().unwrap()
        })
        .collect();
    answered.sort();
    assert_eq!(answered, triggers, "one reply per trigger");
    assert_eq!(
        fake.request_count(),
        triggers.len(),
        "one provider call per trigger in the cluster"
    );
    let (_, v) = b.call("GET", "/api/v1/channels/g/messages?limit=100", &bob, None).await;
    let from_helper = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["sender_id"] == "helper");
    assert_eq!(from_helper.count(), triggers.len());

    // A long reply generated by node a, stopped by bob through node b.
    fake.set_default(Behaviour::Success(
        Reply::new("one two three ".repeat(100))
            .chunk_chars(3)
            .delay(Duration::from_millis(20)),
    ));
    a.send_as(&alice, "g", "@helper count").await;
    let id = loop {
        let f = next_of_type(&mut bob_on_b, "message.new").await;
        if f["message"]["sender_id"] == "helper" {
            break f["message"]["id"].as_i64().unwrap();
        }
    };
    let _ = next_of_type(&mut bob_on_b, "message.delta").await;
    send_json(&mut bob_on_b, json!({"type": "stop", "message_id": id})).await;
    assert!(
        fake.wait_for_disconnects(1, CLOSE_WAIT).await,
        "the upstream stream on node a closed"
    );
    let fin = &finished_replies(&mut bob_on_b, "helper", 1).await[0];
    assert_eq!(
        (fin["id"].as_i64(), fin["reply"]["state"].as_str()),
        (Some(id), Some("stopped")),
        "{fin}"
    );
}

/// With `[files] backend = "s3"` (an S3 API server, moto's), a file uploaded through one node is served by
/// the other, byte for byte, and only to members; its bytes are one object of the shared bucket.
#[tokio::test]
async fn a_file_uploaded_through_one_node_is_served_by_the_other_from_the_bucket() {
    use confab::config::FilesBackend;
    use confab_files_object::testing::{Moto, test_credentials};

    use crate::files::upload;
    let Some(cluster) = Cluster::new().await else { return };
    let Some(moto) = Moto::start() else { return };
    test_credentials();
    moto.create_bucket("cluster-files").await;
    let endpoint = moto.endpoint();
    let s3 = move |c: &mut confab::Config| {
        c.files.backend = FilesBackend::S3;
        c.files.s3_bucket = "cluster-files".into();
        c.files.s3_region = "us-east-1".into();
        c.files.s3_endpoint = endpoint.clone();
        c.files.s3_prefix = "uploads".into();
        c.files.s3_allow_http = true;
    };
    let a = cluster.node_with(s3.clone()).await;
    let b = cluster.node_with(s3).await;
    let alice = a.user("alice").await;
    let bob = a.user("bob").await;
    let eve = a.user("eve").await;
    a.group("g", &["alice", "bob"]).await;

    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let (s, f) = upload(&a, &alice, "g", "data.bin", bytes.clone(), "application/octet-stream").await;
    assert_eq!(s, 201, "{f}");
    let id = f["id"].as_str().unwrap().to_string();
    let get = async |node: &TestApp, token: &str| {
        let r = node
            .http
            .get(node.url(&format!("/api/v1/files/{id}")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
    };
    let (s, served) = get(&b, &bob).await;
    assert_eq!(s, 200);
    assert!(served == bytes, "node b serves the bytes node a stored");
    assert_eq!(get(&b, &eve).await.0, 404, "only members");
    // Read straight from the bucket, past both nodes.
    let bucket = confab_files_object::ObjectBlobs::s3(&confab_files_object::S3Config {
        bucket: "cluster-files".into(),
        region: "us-east-1".into(),
        endpoint: moto.endpoint(),
        prefix: "uploads".into(),
        allow_http: true,
    })
    .unwrap();
    let id = confab_domain::FileId::parse(&id).unwrap();
    let mut stream = confab_service::blobs::FileBlobs::get(&bucket, &id).await.unwrap();
    let mut stored = Vec::new();
    while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
        stored.extend_from_slice(&chunk.unwrap());
    }
    assert!(stored == bytes, "the object in the bucket is the file");
}
