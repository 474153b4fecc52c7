//! `probe`: a provider's model list asked with its key, against the fake provider and a closed port.

use std::time::Duration;

use confab_llm::fake::FakeProvider;
use confab_llm::probe::{Probe, probe};
use confab_llm::{ProviderConfig, ProviderKind};

fn config(kind: ProviderKind, base_url: String) -> ProviderConfig {
    let mut c = ProviderConfig::new("p", kind);
    c.base_url = Some(base_url);
    c.model = Some("m".into());
    c
}

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn each_kind_is_asked_with_its_key_and_a_refused_key_is_named() {
    let fake = FakeProvider::start().await;
    fake.require_key(Some("right"));
    let cases = [
        config(ProviderKind::OpenAi, fake.openai_base_url()),
        config(ProviderKind::OpenAiCompatible, fake.openai_base_url()),
        config(ProviderKind::Azure, fake.base_url()),
        config(ProviderKind::Anthropic, fake.base_url()),
    ];
    for cfg in &cases {
        assert_eq!(
            probe(cfg, Some("right"), WAIT).await,
            Ok(Probe::Answered),
            "{:?}",
            cfg.kind
        );
        let err = probe(cfg, Some("wrong"), WAIT).await.unwrap_err();
        assert!(err.contains("refused the key (HTTP 401)"), "{:?}: {err}", cfg.kind);
    }
}

#[tokio::test]
async fn a_server_without_a_model_list_answered_and_a_closed_port_is_unreachable() {
    let fake = FakeProvider::start().await;
    let cfg = config(ProviderKind::OpenAiCompatible, format!("{}/elsewhere", fake.base_url()));
    assert_eq!(probe(&cfg, None, WAIT).await, Ok(Probe::NoModelList(404)));
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let cfg = config(ProviderKind::OpenAi, format!("http://127.0.0.1:{port}/v1"));
    let err = probe(&cfg, Some("k"), WAIT).await.unwrap_err();
    assert!(err.starts_with(&format!("cannot reach 127.0.0.1:{port}")), "{err}");
}
