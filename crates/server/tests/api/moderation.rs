//! Content rules through every surface: a block rule refuses the send with its reason, a mask rule stores
//! and delivers the masked text.

use confab_moderation::{PolicyConfig, RuleAction, RuleConfig};
use serde_json::json;

use crate::helpers::*;
use crate::sendbird::{error_of, sb};

fn rules() -> PolicyConfig {
    PolicyConfig {
        rules: vec![
            RuleConfig {
                name: "spam".into(),
                words: vec!["buy now".into()],
                patterns: vec![],
                action: RuleAction::Block,
                reason: "No advertising here.".into(),
            },
            RuleConfig {
                name: "swearing".into(),
                words: vec!["darn".into()],
                patterns: vec![],
                action: RuleAction::Mask,
                reason: String::new(),
            },
        ],
        max_links: Some(1),
    }
}

#[tokio::test]
async fn moderation_rules_apply_to_native_and_sendbird_sends() {
    let app = spawn_app_with(|c| c.moderation = rules()).await;
    let alice = app.user("alice").await;
    app.user("bob").await;
    app.group("mod", &["alice", "bob"]).await;

    let (s, v) = app
        .call(
            "POST",
            "/api/v1/channels/mod/messages",
            &alice,
            Some(json!({"text": "Buy now, cheap!"})),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    assert!(v.to_string().contains("No advertising here."), "{v}");
    let sent = app.send_as(&alice, "mod", "oh darn it").await;
    assert_eq!(sent["text"], "oh **** it");
    let (s, _) = app
        .call(
            "POST",
            "/api/v1/channels/mod/messages",
            &alice,
            Some(json!({"text": "https://a.example https://b.example"})),
        )
        .await;
    assert_eq!(s, 422, "too many links");

    let (s, v) = sb(
        &app,
        "POST",
        "/v3/group_channels/mod/messages",
        Some(json!({"message_type": "MESG", "user_id": "bob", "message": "buy now"})),
    )
    .await;
    assert_eq!(error_of(s, &v), (400, 400700));
    let (s, v) = sb(
        &app,
        "POST",
        "/v3/group_channels/mod/messages",
        Some(json!({"message_type": "MESG", "user_id": "bob", "message": "DARN"})),
    )
    .await;
    assert_eq!((s, v["message"].as_str()), (200, Some("****")));
}

fn rules_with_review() -> PolicyConfig {
    let mut p = rules();
    p.rules.push(RuleConfig {
        name: "review".into(),
        words: vec!["refund".into(), "lawyer".into()],
        patterns: vec![],
        action: RuleAction::Flag,
        reason: String::new(),
    });
    p
}

/// Flag rules store the message as sent and list it for review, whichever surface it came through; a review
/// approves it or removes it for everyone. Block and mask through the NIM surface too.
#[tokio::test]
async fn flagged_messages_are_listed_approved_and_removed() {
    use crate::nim::{APP_KEY, APP_SECRET, enc, nim};
    let app = spawn_app_with(|c| {
        c.moderation = rules_with_review();
        c.nim.app_key = APP_KEY.into();
        c.nim.app_secret = APP_SECRET.into();
    })
    .await;
    let alice = app.user("alice").await;
    app.user("bob").await;
    app.group("rev", &["alice", "bob"]).await;

    let body = json!({"text": "I want a refund", "client_msg_id": "r1"});
    let (s, native) = app
        .call("POST", "/api/v1/channels/rev/messages", &alice, Some(body.clone()))
        .await;
    assert_eq!(s, 201, "{native}");
    assert_eq!(native["text"], "I want a refund", "stored as sent");
    // A retried send is the same message, flagged once.
    app.call("POST", "/api/v1/channels/rev/messages", &alice, Some(body))
        .await;
    let (s, v) = sb(
        &app,
        "POST",
        "/v3/group_channels/rev/messages",
        Some(json!({"message_type": "MESG", "user_id": "bob", "message": "my lawyer will call"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let sendbird_id = v["message_id"].as_i64().unwrap();
    let nim_send = |text: &str| {
        format!(
            "from=alice&ope=0&to=bob&type=0&body={}",
            enc(&json!({ "msg": text }).to_string())
        )
    };
    let v = nim(&app, "/nimserver/msg/sendMsg.action", &nim_send("refund please")).await;
    assert_eq!(v["code"], 200, "{v}");
    let v = nim(&app, "/nimserver/msg/sendMsg.action", &nim_send("buy now!")).await;
    assert_eq!(
        (v["code"].as_i64(), v["desc"].as_str()),
        (Some(403), Some("No advertising here."))
    );
    let v = nim(&app, "/nimserver/msg/sendMsg.action", &nim_send("darn it")).await;
    let masked = v["data"]["msgid"].as_i64().unwrap();
    let (_, m) = app.admin("GET", &format!("/api/v1/messages/{masked}"), None).await;
    assert_eq!(m["text"], "**** it", "{m}");

    let (s, v) = app.admin("GET", "/api/v1/moderation/flags", None).await;
    assert_eq!(s, 200, "{v}");
    let flagged = v["flagged"].as_array().unwrap();
    let texts: Vec<&str> = flagged.iter().map(|f| f["message"]["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["I want a refund", "my lawyer will call", "refund please"]);
    assert!(
        flagged
            .iter()
            .all(|f| f["rules"] == json!(["review"]) && f["state"] == "pending")
    );

    let native_id = native["id"].as_i64().unwrap();
    let approve = format!("/api/v1/moderation/flags/{native_id}/approve");
    let (s, v) = app.admin("POST", &approve, None).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("approved")), "{v}");
    assert_eq!(
        app.admin("POST", &approve, None).await.0,
        200,
        "approving twice is harmless"
    );
    let (s, v) = app
        .admin("POST", &format!("/api/v1/moderation/flags/{native_id}/remove"), None)
        .await;
    assert_eq!(s, 409, "{v}");

    let mut ws = app.ws(&alice, json!({})).await;
    let (s, v) = app
        .admin("POST", &format!("/api/v1/moderation/flags/{sendbird_id}/remove"), None)
        .await;
    assert_eq!((s, v["state"].as_str()), (200, Some("removed")), "{v}");
    assert_eq!(v["message"]["deleted"], true, "{v}");
    let deleted = next_of_type(&mut ws, "message.deleted").await;
    assert_eq!(deleted["message_id"], sendbird_id, "{deleted}");
    let (_, h) = app.call("GET", "/api/v1/channels/rev/messages", &alice, None).await;
    let gone = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == sendbird_id)
        .unwrap();
    assert_eq!(
        (gone["deleted"].as_bool(), gone["text"].as_str()),
        (Some(true), Some(""))
    );

    let (_, v) = app.admin("GET", "/api/v1/moderation/flags?state=pending", None).await;
    assert_eq!(v["flagged"].as_array().unwrap().len(), 1, "{v}");
    let (_, v) = app
        .admin("GET", "/api/v1/moderation/flags?state=all&limit=2", None)
        .await;
    assert_eq!(v["flagged"].as_array().unwrap().len(), 2, "{v}");
    assert!(v["next"].is_i64(), "{v}");
    let (s, _) = app.admin("GET", "/api/v1/moderation/flags?state=maybe", None).await;
    assert_eq!(s, 400);
    let (s, _) = app.call("GET", "/api/v1/moderation/flags", &alice, None).await;
    assert_eq!(s, 403);
    let (s, _) = app.admin("POST", "/api/v1/moderation/flags/999999/approve", None).await;
    assert_eq!(s, 404);
}

/// Rules added through the admin API apply at once, a channel's own rules only in that channel, and a rule
/// that does not compile is refused with its name.
#[tokio::test]
async fn rules_managed_through_the_admin_api_per_application_and_per_channel() {
    let app = spawn_app_with(|c| c.moderation = rules()).await;
    let alice = app.user("alice").await;
    app.group("kids", &["alice"]).await;
    app.group("adults", &["alice"]).await;
    let send = |ch: &'static str, text: &'static str| {
        let (app, alice) = (&app, alice.clone());
        async move {
            app.call(
                "POST",
                &format!("/api/v1/channels/{ch}/messages"),
                &alice,
                Some(json!({ "text": text })),
            )
            .await
        }
    };
    assert_eq!(send("adults", "that movie was scary").await.0, 201);

    let (s, v) = app.admin("GET", "/api/v1/moderation/rules", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["file"]["rules"][0]["name"], "spam");
    assert_eq!(v["app"]["rules"], json!([]));
    let app_rules = json!({"rules": [{"name": "weather", "words": ["hail"], "action": "block",
        "reason": "No weather talk."}]});
    let (s, v) = app.admin("PUT", "/api/v1/moderation/rules", Some(app_rules)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["app"]["rules"][0]["name"], "weather");
    let (s, v) = send("adults", "hail is coming").await;
    assert_eq!(s, 422, "{v}");
    assert!(v.to_string().contains("No weather talk."), "{v}");
    // The file's rules still apply beside the application's.
    assert_eq!(send("adults", "buy now").await.0, 422);

    let kids = json!({"rules": [{"name": "scary", "patterns": ["(?i)scar(y|ed)"], "action": "mask"}]});
    let (s, v) = app
        .admin("PUT", "/api/v1/channels/kids/moderation/rules", Some(kids))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["rules"]["rules"][0]["name"], "scary");
    let (s, v) = send("kids", "that movie was scary").await;
    assert_eq!((s, v["text"].as_str()), (201, Some("that movie was *****")), "{v}");
    let (s, v) = send("adults", "that movie was scary").await;
    assert_eq!((s, v["text"].as_str()), (201, Some("that movie was scary")), "{v}");

    let bad = json!({"rules": [{"name": "broken", "patterns": ["(unclosed"], "action": "block"}]});
    let (s, v) = app.admin("PUT", "/api/v1/moderation/rules", Some(bad.clone())).await;
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("broken"), "{v}");
    assert_eq!(
        send("adults", "hail is coming").await.0,
        422,
        "a refused update changes nothing"
    );
    let (s, _) = app
        .admin("PUT", "/api/v1/channels/kids/moderation/rules", Some(bad))
        .await;
    assert_eq!(s, 400);
    let (s, _) = app
        .admin(
            "PUT",
            "/api/v1/channels/nowhere/moderation/rules",
            Some(json!({"rules": []})),
        )
        .await;
    assert_eq!(s, 404);

    let (s, _) = app
        .admin("DELETE", "/api/v1/channels/kids/moderation/rules", None)
        .await;
    assert_eq!(s, 204);
    let (_, v) = app.admin("GET", "/api/v1/channels/kids/moderation/rules", None).await;
    assert_eq!(v["rules"], serde_json::Value::Null);
    assert_eq!(
        send("kids", "that movie was scary").await.1["text"],
        "that movie was scary"
    );
    let (s, _) = app.call("GET", "/api/v1/moderation/rules", &alice, None).await;
    assert_eq!(s, 403);

    // A deleted channel's rules go with it: a channel created later under its id starts without them.
    let kids = json!({"rules": [{"name": "scary", "words": ["scary"], "action": "block"}]});
    let (s, _) = app
        .admin("PUT", "/api/v1/channels/kids/moderation/rules", Some(kids))
        .await;
    assert_eq!(s, 200);
    assert_eq!(send("kids", "scary").await.0, 422);
    let (s, v) = app.admin("DELETE", "/api/v1/channels/kids", None).await;
    assert!(s == 200 || s == 204, "{s} {v}");
    app.group("kids", &["alice"]).await;
    let (_, v) = app.admin("GET", "/api/v1/channels/kids/moderation/rules", None).await;
    assert_eq!(v["rules"], serde_json::Value::Null, "{v}");
    assert_eq!(send("kids", "scary").await.0, 201);
}

/// Rules set through the admin API are stored: the server applies them again after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_set_through_the_api_survive_a_restart() {
    use crate::durability::{call, start_with, wait_ready};
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let mut server = start_with(dir.path(), &[]);
    wait_ready(&http, server.addr).await;
    let a = server.addr;
    call(&http, a, "POST", "/api/v1/users", json!({"id": "alice"}))
        .await
        .unwrap();
    for ch in ["g", "h"] {
        let (s, v) = call(
            &http,
            a,
            "POST",
            "/api/v1/channels",
            json!({"kind": "group", "id": ch, "user_ids": ["alice"]}),
        )
        .await
        .unwrap();
        assert_eq!(s, 201, "{v}");
    }
    let (s, v) = call(
        &http,
        a,
        "PUT",
        "/api/v1/moderation/rules",
        json!({"rules": [{"name": "w", "words": ["hail"], "action": "block"}]}),
    )
    .await
    .unwrap();
    assert_eq!(s, 200, "{v}");
    let (s, v) = call(
        &http,
        a,
        "PUT",
        "/api/v1/channels/h/moderation/rules",
        json!({"rules": [{"name": "m", "words": ["snow"], "action": "mask"}]}),
    )
    .await
    .unwrap();
    assert_eq!(s, 200, "{v}");
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    let mut server = start_with(dir.path(), &[]);
    wait_ready(&http, server.addr).await;
    let a = server.addr;
    let send = |ch: &'static str, text: &'static str| {
        let http = http.clone();
        async move {
            let path = format!("/api/v1/channels/{ch}/messages");
            call(&http, a, "POST", &path, json!({"sender_id": "alice", "text": text})).await
        }
    };
    assert_eq!(send("g", "hail").await.unwrap().0, 422);
    assert_eq!(send("h", "snow").await.unwrap().1["text"], "****");
    assert_eq!(send("g", "snow").await.unwrap().1["text"], "snow");
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}
