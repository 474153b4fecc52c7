//! Providers added through the admin API go through the egress policy: private, loopback, link-local and
//! metadata addresses are refused unless allowed, names resolving to them are never connected to, and the
//! configuration file's providers stay trusted.

use std::time::Duration;

use confab_llm::fake::{Behaviour, FakeProvider};
use confab_llm::{ProviderConfig, ProviderKind};
use serde_json::json;

use crate::helpers::*;

fn api_provider(name: &str, base_url: &str) -> serde_json::Value {
    json!({"name": name, "kind": "openai_compatible", "base_url": base_url, "model": "m", "max_retries": 0})
}

#[tokio::test]
async fn api_providers_cannot_reach_private_addresses_unless_allowed() {
    let fake = FakeProvider::start().await;
    fake.set_default(Behaviour::success("From the file's provider."));
    // The configuration file's provider on loopback is the operator's: trusted without any allowlist.
    let mut filed = ProviderConfig::new("filed", ProviderKind::OpenAiCompatible);
    filed.base_url = Some(fake.openai_base_url());
    filed.model = Some("m".into());
    let app = spawn_app_with(|c| c.providers = vec![filed]).await;

    for url in [
        fake.openai_base_url(),
        "http://10.0.0.1/v1".to_string(),
        "http://169.254.169.254/latest".to_string(),
        "http://[::1]:8080/v1".to_string(),
    ] {
        let (s, v) = app
            .admin("POST", "/api/v1/providers", Some(api_provider("inside", &url)))
            .await;
        assert_eq!(s, 400, "{url}: {v}");
        assert!(v.to_string().contains("private or reserved"), "{url}: {v}");
    }
    let (_, list) = app.admin("GET", "/api/v1/providers", None).await;
    assert_eq!(list["providers"].as_array().unwrap().len(), 1, "{list}");

    // A name is judged by what it resolves to, at connect time: the bot's reply fails and the fake on
    // loopback never sees a request.
    let by_name = fake.openai_base_url().replace("127.0.0.1", "localhost");
    let (s, v) = app
        .admin("POST", "/api/v1/providers", Some(api_provider("named", &by_name)))
        .await;
    assert_eq!(s, 201, "{v}");
    for (bot, provider) in [("named_bot", "named"), ("filed_bot", "filed")] {
        let (s, v) = app
            .admin(
                "POST",
                "/api/v1/bots",
                Some(json!({"id": bot, "settings": {"provider": provider}})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
    }
    let alice = app.user("alice").await;
    let cid = app.direct_with(&alice, "named_bot").await;
    let mut ws = app.ws(&alice, json!({})).await;
    app.send_as(&alice, &cid, "hello").await;
    let seen = follow_streamed_reply(&mut ws, "named_bot", Duration::from_secs(10)).await;
    assert_eq!(seen.fin["reply"]["state"], "failed", "{}", seen.fin);
    assert_eq!(fake.request_count(), 0, "a name resolving to loopback was connected to");

    let cid = app.direct_with(&alice, "filed_bot").await;
    app.send_as(&alice, &cid, "hello").await;
    let seen = follow_streamed_reply(&mut ws, "filed_bot", Duration::from_secs(10)).await;
    assert_eq!(seen.fin["reply"]["state"], "complete", "{}", seen.fin);
    assert_eq!(seen.fin["text"], "From the file's provider.");
}

#[tokio::test]
async fn an_allowed_range_opens_exactly_that_range_to_api_providers() {
    let fake = FakeProvider::start().await;
    let app = spawn_app_with(|c| c.egress.allow_private = vec!["127.0.0.1".into()]).await;
    let (s, v) = app
        .admin(
            "POST",
            "/api/v1/providers",
            Some(api_provider("local", &fake.openai_base_url())),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    for url in ["http://127.0.0.2/v1", "http://169.254.169.254/v1"] {
        let (s, v) = app
            .admin("POST", "/api/v1/providers", Some(api_provider("other", url)))
            .await;
        assert_eq!(s, 400, "{url}: {v}");
    }
}
