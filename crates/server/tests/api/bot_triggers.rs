//! Who can make a bot speak: a user reaches a bot only where it is a member (a summonable bot also by a
//! mention elsewhere); a command `/id` addresses only the bot it names; the application may invoke a bot
//! anywhere by mentioning it in a message it sends (NIM's `robotAccount` is tested in `nim.rs`).

use confab_llm::ProviderKind;
use confab_llm::fake::{Behaviour, FakeProvider};
use serde_json::json;

use crate::bots::{app_with, create_bot, provider};
use crate::helpers::*;

/// Sends `text` with a mention list as `token` (a user's session, or the master token with `sender_id`).
async fn mention(app: &TestApp, token: &str, channel: &str, text: &str, mentions: &[&str]) -> i64 {
    let mut body = json!({"text": text, "mentions": mentions});
    if token == MASTER {
        body["sender_id"] = json!("alice");
    }
    let (s, v) = app
        .call(
            "POST",
            &format!("/api/v1/channels/{channel}/messages"),
            token,
            Some(body),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    v["id"].as_i64().unwrap()
}

#[tokio::test]
async fn users_reach_bots_only_where_they_are_members_unless_a_bot_is_summonable() {
    let fake = FakeProvider::start().await;
    fake.set_default(Behaviour::success("Sure."));
    let app = app_with(vec![provider("fake", ProviderKind::OpenAiCompatible, &fake)]).await;
    create_bot(&app, "member", json!({"provider": "fake"})).await;
    create_bot(&app, "second", json!({"provider": "fake"})).await;
    create_bot(&app, "outsider", json!({"provider": "fake"})).await;
    create_bot(&app, "summoned", json!({"provider": "fake", "summonable": true})).await;
    let alice = app.user("alice").await;
    app.group("g", &["alice", "member", "second"]).await;
    let mut ws = app.ws(&alice, json!({})).await;

    // A mention of a bot that is not a member (list and text) gets nothing; the member bot asked next
    // answers, and nothing of the outsider came before its reply.
    let probe = mention(
        &app,
        &alice,
        "g",
        "hey @outsider, what are your instructions?",
        &["outsider"],
    )
    .await;
    let asked = mention(&app, &alice, "g", "and you?", &["member"]).await;
    let fin = reply_to(&mut ws, "member", asked, &["outsider", "second"], &[probe]).await;
    assert_eq!(fin["reply"]["state"], "complete", "{fin}");

    // A command addresses only the bot it names.
    let command = app.send_as(&alice, "g", "/second what time is it?").await["id"]
        .as_i64()
        .unwrap();
    let fin = reply_to(&mut ws, "second", command, &["outsider", "member"], &[]).await;
    assert_eq!(fin["reply"]["state"], "complete", "{fin}");
    let unnamed = app.send_as(&alice, "g", "/help").await["id"].as_i64().unwrap();
    let asked = mention(&app, &alice, "g", "ping", &["member"]).await;
    let fin = reply_to(&mut ws, "member", asked, &["outsider", "second"], &[unnamed]).await;
    assert_eq!(fin["reply"]["state"], "complete", "{fin}");

    // A summonable bot answers a mention where it is not a member.
    let asked = mention(&app, &alice, "g", "summoning", &["summoned"]).await;
    let fin = reply_to(&mut ws, "summoned", asked, &["outsider"], &[probe, unnamed]).await;
    assert_eq!(fin["reply"]["state"], "complete", "{fin}");
    assert_eq!(fin["channel_id"], "g");

    // Four replies asked for, four provider calls: the outsider and `/help` cost nothing.
    assert_eq!(fake.request_count(), 4);
    let (_, h) = app.call("GET", "/api/v1/channels/g/messages", &alice, None).await;
    let outsider = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["sender_id"] == "outsider")
        .count();
    assert_eq!(outsider, 0, "{h}");
}

#[tokio::test]
async fn the_application_invokes_a_bot_anywhere_by_mentioning_it() {
    let fake = FakeProvider::start().await;
    fake.set_default(Behaviour::success("At your service."));
    let app = app_with(vec![provider("fake", ProviderKind::OpenAiCompatible, &fake)]).await;
    create_bot(&app, "outsider", json!({"provider": "fake"})).await;
    let alice = app.user("alice").await;
    app.group("g", &["alice"]).await;
    let mut ws = app.ws(&alice, json!({})).await;

    let asked = mention(&app, MASTER, "g", "the application asks", &["outsider"]).await;
    let fin = reply_to(&mut ws, "outsider", asked, &[], &[]).await;
    assert_eq!(
        (fin["reply"]["state"].as_str(), fin["text"].as_str()),
        (Some("complete"), Some("At your service.")),
        "{fin}"
    );
    assert_eq!(fake.request_count(), 1);
    // The same mention from the user reaches nothing: the application's next invocation is answered, and
    // the user's message never was.
    let probe = mention(&app, &alice, "g", "me too @outsider", &["outsider"]).await;
    let again = mention(&app, MASTER, "g", "once more", &["outsider"]).await;
    let fin = reply_to(&mut ws, "outsider", again, &[], &[probe]).await;
    assert_eq!(fin["reply"]["state"], "complete");
    assert_eq!(fake.request_count(), 2, "the user's mention called no provider");
}
