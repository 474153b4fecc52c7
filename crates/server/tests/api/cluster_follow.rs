//! A node takes from NATS only the events of the channels its sessions' users are in: a user who joins a
//! channel through another node, while messages flow in it, still gets every message after the join, in
//! order, the last ones included (the node follows the channel, then catches the user's sessions up from
//! the store). Skipped visibly without PostgreSQL or NATS, unless required.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;

use crate::cluster::Cluster;
use crate::helpers::*;

const SENDERS: usize = 6;

/// Sends through `app` as `token` in `channel` until `stop`; returns the last sequence sent.
async fn send_until(app: Arc<TestApp>, token: String, channel: &'static str, stop: Arc<AtomicBool>) -> u64 {
    let mut last = 0;
    let mut n = 0;
    while !stop.load(Ordering::Acquire) {
        n += 1;
        let m = app.send_as(&token, channel, &format!("m{n}")).await;
        last = m["seq"].as_u64().unwrap();
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_through_another_node_mid_stream_gets_every_later_message() {
    let Some(cluster) = Cluster::new().await else { return };
    let a = Arc::new(cluster.node().await);
    let b = cluster.node().await;
    let alice = a.user("alice").await;
    let bob = a.user("bob").await;
    a.group("g", &["alice"]).await;
    // Bob's session is on B, in no channel yet: B follows nothing for him.
    let mut bob_on_b = b.ws(&bob, json!({})).await;

    for round in 0..6 {
        let stop = Arc::new(AtomicBool::new(false));
        // Several senders: messages committed every fraction of a millisecond, so some fall between the join
        // and B's subscription to g.
        let senders: Vec<_> = (0..SENDERS)
            .map(|_| tokio::spawn(send_until(a.clone(), alice.clone(), "g", stop.clone())))
            .collect();
        // Some messages before the join, which bob is not owed.
        tokio::time::sleep(Duration::from_millis(30)).await;
        let (s, v) = a
            .admin("POST", "/api/v1/channels/g/members", Some(json!({"user_ids": ["bob"]})))
            .await;
        assert_eq!(s, 200, "{v}");
        // Messages right after the join, while B is only starting to take g's events: in odd rounds the
        // senders stop at once, so the last messages may be among those B never got from NATS.
        if round % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.store(true, Ordering::Release);
        let mut last = 0;
        for sender in senders {
            last = last.max(sender.await.unwrap());
        }

        let joined = next_of_type(&mut bob_on_b, "channel.members_joined").await;
        let from = joined["channel"]["last_seq"]
            .as_u64()
            .expect("the channel's last seq at the join");
        let mut seqs = Vec::new();
        while seqs.last() != Some(&last) {
            let f = next_of_type(&mut bob_on_b, "message.new").await;
            seqs.push(f["seq"].as_u64().unwrap());
        }
        assert!(
            seqs.first().is_some_and(|&s| s <= from + 1),
            "round {round}: from {from}, got {seqs:?}"
        );
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "round {round}: in order, no gap: {seqs:?}"
        );

        let (s, v) = a.admin("DELETE", "/api/v1/channels/g/members/bob", None).await;
        assert_eq!(s, 204, "{v}");
        next_of_type(&mut bob_on_b, "channel.member_left").await;
    }
}
