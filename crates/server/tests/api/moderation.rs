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
