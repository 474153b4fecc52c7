use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

#[tokio::test]
async fn sends_are_acked_and_delivered_to_every_member_in_order() {
    let app = spawn_app_with(|c| c.limits.user_send_burst = 1000).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    app.group("g", &["alice", "bob", "carol"]).await;
    let mut wa = app.ws(&alice, json!({})).await;
    let mut wb = app.ws(&bob, json!({})).await;
    let mut wc = app.ws(&carol, json!({})).await;

    // Pipelined sends: acks come back in the order sent, with consecutive sequences.
    for i in 0..20 {
        send_json(
            &mut wa,
            json!({"type": "send", "req_id": format!("r{i}"), "channel_id": "g", "text": format!("m{i}"),
                   "client_msg_id": format!("k{i}")}),
        )
        .await;
    }
    let mut acked = Vec::new();
    while acked.len() < 20 {
        let f = next_json(&mut wa).await;
        if f["type"] == "ack" {
            assert_eq!(f["req_id"], format!("r{}", acked.len()));
            assert_eq!(f["channel_id"], "g");
            acked.push(f["seq"].as_u64().unwrap());
        } else {
            assert!(f["type"] == "message.new" || f["type"] == "presence", "{f}");
        }
    }
    assert_eq!(acked, (1..=20).collect::<Vec<u64>>());

    for ws in [&mut wb, &mut wc] {
        for want in 1..=20u64 {
            let f = next_of_type(ws, "message.new").await;
            assert_eq!(f["channel_id"], "g");
            assert_eq!(f["seq"], want);
            assert_eq!(f["message"]["text"], format!("m{}", want - 1));
            assert_eq!(f["message"]["sender_id"], "alice");
        }
    }

    // A retried send over the WebSocket returns the original.
    send_json(
        &mut wa,
        json!({"type": "send", "req_id": "again", "channel_id": "g", "text": "m0", "client_msg_id": "k0"}),
    )
    .await;
    let ack = next_of_type(&mut wa, "ack").await;
    assert_eq!((ack["seq"].as_u64(), ack["duplicate"].as_bool()), (Some(1), Some(true)));

    // Sending to a channel one is not in: an error frame with the request id.
    app.group("other", &["bob"]).await;
    send_json(
        &mut wa,
        json!({"type": "send", "req_id": "x", "channel_id": "other", "text": "hi"}),
    )
    .await;
    let err = next_of_type(&mut wa, "error").await;
    assert_eq!(
        (err["req_id"].as_str(), err["code"].as_str()),
        (Some("x"), Some("not_a_member"))
    );
}

#[tokio::test]
async fn edits_deletes_typing_and_read_receipts_reach_members() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    app.group("g", &["alice", "bob"]).await;
    let mut wa = app.ws(&alice, json!({})).await;
    let mut wb = app.ws(&bob, json!({})).await;

    let m = app.send_as(&alice, "g", "hello").await;
    let id = m["id"].as_i64().unwrap();
    assert_eq!(next_of_type(&mut wb, "message.new").await["seq"], 1);

    app.call(
        "PATCH",
        &format!("/api/v1/messages/{id}"),
        &alice,
        Some(json!({"text": "hello!"})),
    )
    .await;
    let f = next_of_type(&mut wb, "message.updated").await;
    assert_eq!(
        (f["seq"].as_u64(), f["message"]["text"].as_str()),
        (Some(1), Some("hello!"))
    );

    send_json(&mut wa, json!({"type": "typing", "channel_id": "g", "active": true})).await;
    let f = next_of_type(&mut wb, "typing").await;
    assert_eq!(
        (f["user_id"].as_str(), f["active"].as_bool()),
        (Some("alice"), Some(true))
    );

    send_json(&mut wb, json!({"type": "read", "channel_id": "g", "seq": 1})).await;
    let f = next_of_type(&mut wa, "read").await;
    assert_eq!((f["user_id"].as_str(), f["seq"].as_u64()), (Some("bob"), Some(1)));

    app.call("DELETE", &format!("/api/v1/messages/{id}"), &alice, None)
        .await;
    let f = next_of_type(&mut wb, "message.deleted").await;
    assert_eq!((f["message_id"].as_i64(), f["seq"].as_u64()), (Some(id), Some(1)));

    // Membership changes are announced, and a new member receives the channel's messages from then on.
    let carol = app.user("carol").await;
    let mut wc = app.ws(&carol, json!({})).await;
    app.admin(
        "POST",
        "/api/v1/channels/g/members",
        Some(json!({"user_ids": ["carol"]})),
    )
    .await;
    let f = next_of_type(&mut wc, "channel.members_joined").await;
    assert_eq!(f["user_ids"], json!(["carol"]));
    app.send_as(&bob, "g", "welcome carol").await;
    let f = next_of_type(&mut wc, "message.new").await;
    assert_eq!(
        (f["seq"].as_u64(), f["message"]["text"].as_str()),
        (Some(2), Some("welcome carol"))
    );
}

#[tokio::test]
async fn presence_follows_sessions() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    app.group("g", &["alice", "bob"]).await;
    let mut wa = app.ws(&alice, json!({})).await;

    let mut wb = app.ws(&bob, json!({})).await;
    let f = next_of_type(&mut wa, "presence").await;
    assert_eq!(
        (f["user_id"].as_str(), f["online"].as_bool()),
        (Some("bob"), Some(true))
    );
    let (_, v) = app.call("GET", "/api/v1/users/bob", &alice, None).await;
    assert_eq!(v["online"], true);

    // A second session keeps bob online when the first closes. A binary frame makes the server close the
    // first; it sends its close frame only after the session is unregistered and its presence counted.
    let mut wb2 = app.ws(&bob, json!({})).await;
    wb.send(Message::Binary(vec![1].into())).await.unwrap();
    assert_eq!(close_code(&mut wb, Duration::from_secs(10)).await, Some(1002));
    let (_, v) = app.call("GET", "/api/v1/users/bob", &alice, None).await;
    assert_eq!(v["online"], true);

    wb2.close(None).await.unwrap();
    let f = next_of_type(&mut wa, "presence").await;
    assert_eq!(
        (f["user_id"].as_str(), f["online"].as_bool()),
        (Some("bob"), Some(false))
    );
    assert!(f["last_seen_at"].as_i64().unwrap() > 0);
    let (_, v) = app.call("GET", "/api/v1/users/bob", &alice, None).await;
    assert_eq!(v["online"], false);
    assert_eq!(v["last_seen_at"], f["last_seen_at"]);
}

#[tokio::test]
async fn resume_delivers_what_was_missed_in_order_before_live_traffic() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    app.group("g", &["alice", "bob"]).await;
    app.group("h", &["alice", "bob"]).await;

    let mut wb = app.ws(&bob, json!({})).await;
    for i in 1..=3 {
        app.send_as(&alice, "g", &format!("g{i}")).await;
        assert_eq!(next_of_type(&mut wb, "message.new").await["seq"], i);
    }
    drop(wb);

    // While bob is away: 600 messages in g (more than one catch-up page), 2 in h.
    for i in 4..=603 {
        app.admin(
            "POST",
            "/api/v1/channels/g/messages",
            Some(json!({"sender_id": "alice", "text": format!("g{i}")})),
        )
        .await;
    }
    for i in 1..=2 {
        app.send_as(&alice, "h", &format!("h{i}")).await;
    }

    let mut wb = app.ws(&bob, json!({"g": 3, "h": 0})).await;
    // Live traffic that arrives during the catch-up must come after it, without duplicates.
    let alice2 = alice.clone();
    let url = app.url("/api/v1/channels/g/messages");
    let http = app.http.clone();
    let live = tokio::spawn(async move {
        http.post(url)
            .bearer_auth(alice2)
            .json(&json!({"text": "live"}))
            .send()
            .await
            .unwrap();
    });
    let mut g_seqs = Vec::new();
    let mut h_seqs = Vec::new();
    loop {
        let f = next_json(&mut wb).await;
        match f["type"].as_str().unwrap() {
            "message.new" if f["channel_id"] == "g" => g_seqs.push(f["seq"].as_u64().unwrap()),
            "message.new" if f["channel_id"] == "h" => h_seqs.push(f["seq"].as_u64().unwrap()),
            "resumed" => {
                assert_eq!(f["channels"]["h"], 2);
                assert!(f["channels"]["g"].as_u64().unwrap() >= 603);
                break;
            }
            _ => {}
        }
    }
    live.await.unwrap();
    assert_eq!(h_seqs, [1, 2]);
    // Everything after 3, in order; then the live message if it was not already part of the catch-up.
    while g_seqs.last() != Some(&604) {
        let f = next_of_type(&mut wb, "message.new").await;
        g_seqs.push(f["seq"].as_u64().unwrap());
    }
    assert_eq!(g_seqs, (4..=604).collect::<Vec<u64>>());
    // No duplicate follows: g's events reach the session through one shard in commit order and the session
    // writes its queue in order, so a later message of g is the next one shown.
    app.send_as(&alice, "g", "after").await;
    let f = next_of_type(&mut wb, "message.new").await;
    assert_eq!(
        (f["seq"].as_u64(), f["message"]["text"].as_str()),
        (Some(605), Some("after"))
    );

    // Resuming a channel one is not a member of yields an error frame, not data.
    let carol = app.user("carol").await;
    let mut wc = app.ws(&carol, json!({"g": 0})).await;
    let f = next_json(&mut wc).await;
    assert_eq!(
        (f["type"].as_str(), f["code"].as_str()),
        (Some("error"), Some("not_a_member"))
    );
    let f = next_json(&mut wc).await;
    assert_eq!(f["type"], "resumed");
    assert!(f["channels"].get("g").is_none());
}

#[tokio::test]
async fn a_slow_reader_is_closed_with_resync_and_others_are_not_slowed() {
    let app = spawn_app_with(|c| {
        c.limits.user_send_per_sec = 100_000;
        c.limits.user_send_burst = 100_000;
        c.websocket.queue_frames = 64;
        c.websocket.queue_bytes = 256 * 1024;
        c.websocket.max_frames_per_sec = 0;
    })
    .await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let slow = app.user("slow").await;
    app.group("g", &["alice", "bob", "slow"]).await;

    // The slow client has a tiny receive buffer and never reads after the welcome.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(app.addr).await.unwrap();
    let url = format!("ws://{}/api/v1/ws?token={slow}", app.addr);
    let (mut ws_slow, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    ws_slow
        .send(Message::Text(json!({"type": "hello"}).to_string().into()))
        .await
        .unwrap();

    let mut wb = app.ws(&bob, json!({})).await;
    let mut wa = app.ws(&alice, json!({})).await;
    let text = "x".repeat(4000);
    let total = 1500u64;
    let sender = tokio::spawn(async move {
        let mut acks = 0;
        let mut sent = 0;
        while acks < total {
            while sent < total && sent - acks < 32 {
                send_json(&mut wa, json!({"type": "send", "channel_id": "g", "text": text})).await;
                sent += 1;
            }
            if next_json(&mut wa).await["type"] == "ack" {
                acks += 1;
            }
        }
    });
    // Bob reads everything, in order.
    for want in 1..=total {
        let f = next_of_type(&mut wb, "message.new").await;
        assert_eq!(f["seq"], want);
    }
    sender.await.unwrap();

    // The slow client, once it reads, finds its stream ended with the resync close code.
    let mut code = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, ws_slow.next()).await {
        match msg {
            Ok(Message::Close(f)) => {
                code = f.map(|f| u16::from(f.code));
                break;
            }
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    assert_eq!(code, Some(4008));
}

#[tokio::test]
async fn presence_is_not_pushed_through_large_channels() {
    let app = spawn_app_with(|c| c.limits.presence_max_members = 2).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    app.user("carol").await;
    app.group("big", &["alice", "bob", "carol"]).await;
    let mut wa = app.ws(&alice, json!({})).await;
    let wb = app.ws(&bob, json!({})).await;
    // Through a small channel (a direct one) it is.
    app.call(
        "POST",
        "/api/v1/channels",
        &alice,
        Some(json!({"kind": "direct", "user_ids": ["bob"]})),
    )
    .await;
    drop(wb);
    // Presence events (no channel) all go through one shard in publish order, and bob's online one was
    // published before his welcome: his offline one is the first presence alice sees.
    let f = next_of_type(&mut wa, "presence").await;
    assert_eq!(
        (f["user_id"].as_str(), f["online"].as_bool()),
        (Some("bob"), Some(false))
    );
}
