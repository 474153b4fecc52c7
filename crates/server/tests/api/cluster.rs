//! Several nodes on one PostgreSQL schema and one NATS subject prefix (each test its own): what one node
//! commits reaches the clients of the others, in order; a revocation on one node closes sockets on the
//! others. Skipped visibly without PostgreSQL or NATS, unless `CONFAB_REQUIRE_POSTGRES=1` /
//! `CONFAB_REQUIRE_NATS=1`.

use std::time::Duration;

use confab::config::{BusBackend, StorageBackend};
use confab_store_postgres::testing::{TestSchema, skip_without_postgres};
use serde_json::json;

use crate::helpers::*;

const CLOSE_WAIT: Duration = Duration::from_secs(10);

fn nats_url() -> String {
    std::env::var("CONFAB_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// True (after a visible skip line) when NATS does not answer.
async fn skip_without_nats() -> bool {
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
struct Cluster {
    schema: TestSchema,
    prefix: String,
}

impl Cluster {
    async fn new() -> Option<Cluster> {
        if skip_without_postgres().await || skip_without_nats().await {
            return None;
        }
        Some(Cluster {
            schema: TestSchema::create().await,
            prefix: format!("confab-test-{:016x}", rand::random::<u64>()),
        })
    }

    /// A node: its own data dir and node id, the cluster's database and subjects.
    async fn node(&self) -> TestApp {
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
        })
        .await
    }
}

#[tokio::test]
async fn what_one_node_commits_reaches_the_clients_of_the_others_in_order() {
    let Some(cluster) = Cluster::new().await else { return };
    let a = cluster.node().await;
    let b = cluster.node().await;
    let alice = a.user("alice").await;
    let bob = a.user("bob").await;
    a.group("g", &["alice", "bob"]).await;
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
