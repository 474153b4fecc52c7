//! The server on PostgreSQL (`[storage] backend = "postgres"`): the same API, each test in a schema of its
//! own (`confab_store_postgres::testing`), skipped visibly without a server unless
//! `CONFAB_REQUIRE_POSTGRES=1`.

use confab::config::StorageBackend;
use confab_store_postgres::testing::{TestSchema, skip_without_postgres};
use serde_json::json;

use crate::helpers::*;

async fn spawn_on(schema: &TestSchema, data_dir: Option<&std::path::Path>) -> TestApp {
    let url = schema.url();
    let dir = data_dir.map(|d| d.to_path_buf());
    spawn_app_with(move |c| {
        c.storage.backend = StorageBackend::Postgres;
        c.storage.postgres_url = url;
        if let Some(d) = dir {
            c.data_dir = d;
        }
    })
    .await
}

#[tokio::test]
async fn a_server_on_postgres_delivers_and_keeps_messages_across_restarts() {
    if skip_without_postgres().await {
        return;
    }
    let schema = TestSchema::create().await;
    let app = spawn_on(&schema, None).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    app.group("g", &["alice", "bob"]).await;
    let mut wb = app.ws(&bob, json!({})).await;

    for i in 1..=5 {
        let (s, m) = app
            .call(
                "POST",
                "/api/v1/channels/g/messages",
                &alice,
                Some(json!({"text": format!("m{i}"), "client_msg_id": format!("k{i}")})),
            )
            .await;
        assert_eq!((s, m["seq"].as_u64()), (201, Some(i)), "{m}");
    }
    for want in 1..=5u64 {
        let f = next_of_type(&mut wb, "message.new").await;
        assert_eq!(
            (f["channel_id"].as_str(), f["seq"].as_u64()),
            (Some("g"), Some(want)),
            "{f}"
        );
    }
    // A retry returns the original.
    let (s, again) = app
        .call(
            "POST",
            "/api/v1/channels/g/messages",
            &alice,
            Some(json!({"text": "m1", "client_msg_id": "k1"})),
        )
        .await;
    assert_eq!((s, again["seq"].as_u64()), (200, Some(1)), "{again}");
    drop(wb);
    drop(app);

    // Another process on the same database (no data dir shared) finds everything, sessions included.
    let other_dir = tempfile::tempdir().unwrap();
    let app = spawn_on(&schema, Some(other_dir.path())).await;
    let (s, history) = app.call("GET", "/api/v1/channels/g/messages", &alice, None).await;
    assert_eq!(s, 200, "{history}");
    let texts: Vec<&str> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["m1", "m2", "m3", "m4", "m5"]);
    let sent = app.send_as(&bob, "g", "after restart").await;
    assert_eq!(sent["seq"], 6);
}
