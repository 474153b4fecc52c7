//! End-to-end tests of the adapters and the reliability layer against the fake provider.

use std::sync::Arc;
use std::time::{Duration, Instant};

use confab_llm::fake::{Behaviour, FakeProvider, Reply, WireFormat};
use confab_llm::{
    ChatMessage, ChatRequest, Fallback, LlmError, LlmProvider, PHASE_FIRST_TOKEN, PHASE_IDLE, ProviderConfig,
    ProviderKind, StreamEvent, build_provider, build_providers, collect,
};
use futures_util::StreamExt;

const KEY: &str = "sk-test-KEY-0123456789abcdef";
const KEY_ENV: &str = "CONFAB_TEST_LLM_KEY";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn env(k: &str) -> Option<String> {
    (k == KEY_ENV).then(|| KEY.to_string())
}

/// Test-friendly numbers: short backoff, everything else at its default.
fn base(name: &str, kind: ProviderKind) -> ProviderConfig {
    ProviderConfig {
        api_key_env: Some(KEY_ENV.into()),
        retry_base_delay_ms: 20,
        retry_max_delay_ms: 100,
        ..ProviderConfig::new(name, kind)
    }
}

fn openai_cfg(fake: &FakeProvider) -> ProviderConfig {
    ProviderConfig {
        base_url: Some(fake.openai_base_url()),
        model: Some("gpt-test".into()),
        ..base("openai", ProviderKind::OpenAi)
    }
}

fn azure_cfg(fake: &FakeProvider) -> ProviderConfig {
    ProviderConfig {
        base_url: Some(fake.base_url()),
        azure_deployment: Some("gpt4o-dep".into()),
        azure_api_version: Some("2024-10-21".into()),
        ..base("azure", ProviderKind::Azure)
    }
}

fn anthropic_cfg(fake: &FakeProvider) -> ProviderConfig {
    ProviderConfig {
        base_url: Some(fake.base_url()),
        model: Some("claude-test".into()),
        ..base("anthropic", ProviderKind::Anthropic)
    }
}

fn build(cfg: &ProviderConfig) -> Arc<dyn LlmProvider> {
    build_provider(cfg, &env).expect("build provider")
}

fn request(text: &str) -> ChatRequest {
    ChatRequest {
        model: None,
        system: Some("You are terse.".into()),
        messages: vec![ChatMessage::user(text)],
        temperature: Some(0.5),
        max_tokens: 64,
    }
}

async fn events(p: &dyn LlmProvider, req: ChatRequest) -> Vec<Result<StreamEvent, LlmError>> {
    p.stream(req).await.expect("stream started").collect().await
}

fn deltas(evs: &[Result<StreamEvent, LlmError>]) -> Vec<String> {
    evs.iter()
        .filter_map(|e| match e {
            Ok(StreamEvent::Delta(t)) => Some(t.clone()),
            _ => None,
        })
        .collect()
}

const TEXT: &str = "Hello there, general Kenobi!";

/// Checks a complete stream of TEXT in 5-char chunks: deltas, then Usage, then Done.
fn assert_complete(evs: &[Result<StreamEvent, LlmError>], finish: &str) {
    let d = deltas(evs);
    assert_eq!(d.len(), 6, "{evs:?}");
    assert_eq!(d.concat(), TEXT);
    let n = evs.len();
    // "You are terse." + "Hi bot" = 5 words; 6 chunks.
    assert_eq!(
        evs[n - 2],
        Ok(StreamEvent::Usage {
            prompt_tokens: 5,
            completion_tokens: 6
        })
    );
    assert_eq!(
        evs[n - 1],
        Ok(StreamEvent::Done {
            finish_reason: Some(finish.into())
        })
    );
}

fn scripted_success() -> Behaviour {
    Behaviour::Success(Reply::new(TEXT).chunk_chars(5).delay(ms(5)))
}

#[tokio::test]
async fn openai_streams_text_usage_and_done() {
    let fake = FakeProvider::start().await;
    fake.require_key(Some(KEY));
    fake.script(vec![scripted_success()]);
    let p = build(&openai_cfg(&fake));
    assert_eq!(p.name(), "openai");
    let evs = events(&*p, request("Hi bot")).await;
    assert_complete(&evs, "stop");

    let reqs = fake.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.format, WireFormat::OpenAi);
    assert_eq!(r.path, "/v1/chat/completions");
    assert_eq!(r.header("authorization"), Some(format!("Bearer {KEY}").as_str()));
    assert_eq!(r.header("api-key"), None);
    assert_eq!(r.body["model"], "gpt-test");
    assert_eq!(r.body["stream"], true);
    assert_eq!(r.body["stream_options"]["include_usage"], true);
    assert_eq!(r.body["max_completion_tokens"], 64);
    assert!(r.body.get("max_tokens").is_none());
    assert_eq!(r.body["temperature"], 0.5);
    assert_eq!(
        r.messages(),
        [
            ("system".to_string(), "You are terse.".to_string()),
            ("user".to_string(), "Hi bot".to_string())
        ]
    );
    assert_eq!(fake.disconnects(), 0);
}

#[tokio::test]
async fn openai_compatible_without_key_uses_max_tokens_and_request_model() {
    let fake = FakeProvider::start().await;
    let cfg = ProviderConfig {
        base_url: Some(fake.openai_base_url()),
        model: Some("configured".into()),
        ..ProviderConfig::new("local", ProviderKind::OpenAiCompatible)
    };
    let p = build_provider(&cfg, &|_| None).unwrap();
    let mut req = request("Hi bot");
    req.model = Some("llama3".into());
    req.temperature = None;
    req.messages.push(ChatMessage::assistant("Hello."));
    req.messages.push(ChatMessage::user("Again"));
    let c = collect(p.stream(req).await.unwrap()).await;
    assert!(c.is_complete(), "{c:?}");
    assert_eq!(c.text, confab_llm::fake::DEFAULT_REPLY);
    let r = &fake.requests()[0];
    assert_eq!(r.header("authorization"), None);
    assert_eq!(r.body["model"], "llama3");
    assert_eq!(r.body["max_tokens"], 64);
    assert!(r.body.get("max_completion_tokens").is_none());
    assert!(r.body.get("temperature").is_none());
    let roles: Vec<String> = r.messages().into_iter().map(|(role, _)| role).collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"]);
    assert_eq!(r.text(), "You are terse.\nHi bot\nHello.\nAgain");
}

#[tokio::test]
async fn azure_streams_with_api_key_header_and_deployment_url() {
    let fake = FakeProvider::start().await;
    fake.require_key(Some(KEY));
    fake.script(vec![scripted_success()]);
    let p = build(&azure_cfg(&fake));
    let evs = events(&*p, request("Hi bot")).await;
    assert_complete(&evs, "stop");

    let r = &fake.requests()[0];
    assert_eq!(r.format, WireFormat::Azure);
    assert_eq!(r.path, "/openai/deployments/gpt4o-dep/chat/completions");
    assert_eq!(r.query.as_deref(), Some("api-version=2024-10-21"));
    assert_eq!(r.header("api-key"), Some(KEY));
    assert_eq!(r.header("authorization"), None);
    assert!(r.body.get("model").is_none(), "the deployment decides the model");
    assert_eq!(r.body["stream_options"]["include_usage"], true);
    assert_eq!(r.body["max_completion_tokens"], 64);
}

#[tokio::test]
async fn anthropic_streams_with_top_level_system() {
    let fake = FakeProvider::start().await;
    fake.require_key(Some(KEY));
    fake.script(vec![scripted_success()]);
    let p = build(&anthropic_cfg(&fake));
    let evs = events(&*p, request("Hi bot")).await;
    assert_complete(&evs, "end_turn");

    let r = &fake.requests()[0];
    assert_eq!(r.format, WireFormat::Anthropic);
    assert_eq!(r.path, "/v1/messages");
    assert_eq!(r.header("x-api-key"), Some(KEY));
    assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(r.header("authorization"), None);
    assert_eq!(r.body["model"], "claude-test");
    assert_eq!(r.body["system"], "You are terse.");
    assert_eq!(r.body["max_tokens"], 64);
    assert_eq!(r.body["stream"], true);
    assert_eq!(r.messages(), [("user".to_string(), "Hi bot".to_string())]);
}

/// 429 with each retry-after flavour, then success: the retry waits at least what was asked.
#[tokio::test]
async fn rate_limited_then_success_honours_retry_after() {
    let cases = [
        (Behaviour::rate_limited_ms(200), ms(200)),
        (Behaviour::rate_limited_x_ms(200), ms(200)),
        (Behaviour::rate_limited(1), ms(1000)),
    ];
    let runs = cases.into_iter().map(|(limited, wait)| async move {
        let fake = FakeProvider::start().await;
        fake.script(vec![limited, Behaviour::success("ok after wait")]);
        let p = build(&openai_cfg(&fake));
        let c = collect(p.stream(request("Hi")).await.unwrap()).await;
        assert!(c.is_complete(), "{c:?}");
        assert_eq!(c.text, "ok after wait");
        let reqs = fake.requests();
        assert_eq!(reqs.len(), 2);
        let gap = reqs[1].received_at - reqs[0].received_at;
        assert!(gap >= wait, "retried after {gap:?}, asked {wait:?}");
        assert!(gap < wait + ms(500), "retried after {gap:?}, asked {wait:?}");
    });
    futures_util::future::join_all(runs).await;
}

#[tokio::test]
async fn retry_after_beyond_cap_or_deadline_is_not_retried() {
    let fake = FakeProvider::start().await;
    fake.script(vec![Behaviour::rate_limited(120)]);
    let p = build(&openai_cfg(&fake));
    let t = Instant::now();
    let e = p.stream(request("Hi")).await.err().unwrap();
    assert_eq!(
        e,
        LlmError::RateLimited {
            retry_after: Some(Duration::from_secs(120))
        }
    );
    assert!(t.elapsed() < ms(500));
    assert_eq!(fake.request_count(), 1);

    // Within the cap but beyond the remaining deadline.
    let fake = FakeProvider::start().await;
    fake.script(vec![Behaviour::rate_limited_ms(800)]);
    let p = build(&ProviderConfig {
        deadline_ms: 500,
        ..openai_cfg(&fake)
    });
    let e = p.stream(request("Hi")).await.err().unwrap();
    assert!(matches!(e, LlmError::RateLimited { .. }), "{e:?}");
    assert_eq!(fake.request_count(), 1);
    assert!(e.is_retryable());
}

#[tokio::test]
async fn server_error_then_success_via_retry() {
    let fake = FakeProvider::start().await;
    fake.script(vec![
        Behaviour::server_error(),
        Behaviour::status(529),
        Behaviour::success("third time lucky"),
    ]);
    let p = build(&anthropic_cfg(&fake));
    let c = collect(p.stream(request("Hi")).await.unwrap()).await;
    assert!(c.is_complete(), "{c:?}");
    assert_eq!(c.text, "third time lucky");
    assert_eq!(fake.request_count(), 3);
}

#[tokio::test]
async fn retries_exhausted_returns_upstream_error() {
    let fake = FakeProvider::start().await;
    fake.set_default(Behaviour::server_error());
    let p = build(&openai_cfg(&fake));
    let e = p.stream(request("Hi")).await.err().unwrap();
    assert!(
        matches!(&e, LlmError::Upstream { status: 500, message } if message.contains("server had an error")),
        "{e:?}"
    );
    assert_eq!(fake.request_count(), 3, "1 attempt + max_retries 2");

    // Client errors are not retried.
    let fake = FakeProvider::start().await;
    fake.set_default(Behaviour::status(400));
    let p = build(&openai_cfg(&fake));
    let e = p.stream(request("Hi")).await.err().unwrap();
    assert!(matches!(e, LlmError::Upstream { status: 400, .. }), "{e:?}");
    assert_eq!(fake.request_count(), 1);
}

#[tokio::test]
async fn repeated_500_moves_to_the_fallback_provider() {
    let primary_fake = FakeProvider::start().await;
    primary_fake.set_default(Behaviour::server_error());
    let backup_fake = FakeProvider::start().await;
    backup_fake.script(vec![Behaviour::success("from the backup")]);

    let primary = build(&ProviderConfig {
        max_retries: 1,
        ..openai_cfg(&primary_fake)
    });
    let backup = build(&anthropic_cfg(&backup_fake));
    let fb = Fallback::new(vec![primary, backup]);
    assert_eq!(fb.name(), "openai|anthropic");

    let (answered, stream) = fb.stream_with_provider(request("Hi")).await.unwrap();
    assert_eq!(answered, "anthropic");
    let c = collect(stream).await;
    assert!(c.is_complete(), "{c:?}");
    assert_eq!(c.text, "from the backup");
    assert_eq!(primary_fake.request_count(), 2);
    assert_eq!(backup_fake.request_count(), 1);

    // Through the trait, too; and every member failing gives the last error.
    backup_fake.set_default(Behaviour::status(400));
    let e = fb.stream(request("Hi")).await.err().unwrap();
    assert!(matches!(e, LlmError::Upstream { status: 400, .. }), "{e:?}");
    assert_eq!(
        Fallback::new(vec![]).stream(request("Hi")).await.err().unwrap(),
        LlmError::Config("fallback chain has no providers".into())
    );
}

#[tokio::test]
async fn fallback_does_not_switch_after_a_delta() {
    let primary_fake = FakeProvider::start().await;
    primary_fake.script(vec![Behaviour::cut_after("partial answer here", 2)]);
    let backup_fake = FakeProvider::start().await;
    let fb = Fallback::new(vec![
        build(&openai_cfg(&primary_fake)),
        build(&openai_cfg(&backup_fake)),
    ]);
    let c = collect(fb.stream(request("Hi")).await.unwrap()).await;
    assert_eq!(c.text, "partial ");
    assert!(matches!(c.error, Some(LlmError::StreamCut(_))), "{c:?}");
    assert_eq!(primary_fake.request_count(), 1);
    assert_eq!(backup_fake.request_count(), 0);
}

#[tokio::test]
async fn hang_before_first_byte_times_out() {
    let fake = FakeProvider::start().await;
    fake.script(vec![Behaviour::hang(Duration::from_secs(10))]);
    let p = build(&ProviderConfig {
        first_token_timeout_ms: 300,
        ..openai_cfg(&fake)
    });
    let t = Instant::now();
    let e = p.stream(request("Hi")).await.err().unwrap();
    let took = t.elapsed();
    assert_eq!(
        e,
        LlmError::Timeout {
            phase: PHASE_FIRST_TOKEN
        }
    );
    assert!(took >= ms(300) && took < ms(1000), "{took:?}");
    assert_eq!(fake.request_count(), 1, "a first-token timeout is not retried");
    assert!(
        fake.wait_for_disconnects(1, ms(500)).await,
        "the hung request was abandoned"
    );
}

#[tokio::test]
async fn cut_mid_stream_is_stream_cut_after_the_deltas_without_retry() {
    for (kind, fake) in [
        ("openai", FakeProvider::start().await),
        ("anthropic", FakeProvider::start().await),
    ] {
        fake.script(vec![Behaviour::cut_after("abcdefghijklmnopqrstuvwxyz", 3)]);
        let cfg = if kind == "openai" {
            openai_cfg(&fake)
        } else {
            anthropic_cfg(&fake)
        };
        let p = build(&cfg);
        let mut s = p.stream(request("Hi")).await.unwrap();
        let mut got = Vec::new();
        while let Some(ev) = s.next().await {
            got.push(ev);
        }
        assert_eq!(deltas(&got), ["abcd", "efgh", "ijkl"], "{kind}");
        assert!(
            matches!(got.last(), Some(Err(LlmError::StreamCut(_)))),
            "{kind}: {got:?}"
        );
        assert!(!got.iter().any(|e| matches!(e, Ok(StreamEvent::Done { .. }))), "{kind}");
        assert_eq!(fake.request_count(), 1, "{kind}: no retry after a delta");
    }
}

#[tokio::test]
async fn anthropic_in_stream_error_is_an_error_not_success() {
    let fake = FakeProvider::start().await;
    fake.script(vec![Behaviour::overloaded_in_stream("some text that breaks", 2)]);
    let p = build(&anthropic_cfg(&fake));
    let c = collect(p.stream(request("Hi")).await.unwrap()).await;
    assert_eq!(c.text, "some tex");
    assert_eq!(c.done, None);
    match &c.error {
        Some(LlmError::StreamCut(m)) => assert!(m.contains("overloaded_error"), "{m}"),
        other => panic!("expected StreamCut, got {other:?}"),
    }
    assert_eq!(fake.request_count(), 1);

    // Before any delta it is retried like any other pre-first-token failure.
    fake.script(vec![
        Behaviour::overloaded_in_stream("never shown", 0),
        Behaviour::success("recovered"),
    ]);
    let c = collect(p.stream(request("Hi")).await.unwrap()).await;
    assert!(c.is_complete(), "{c:?}");
    assert_eq!(c.text, "recovered");
    assert_eq!(fake.request_count(), 3);
}

#[tokio::test]
async fn openai_in_stream_error_chunk_is_an_error() {
    let fake = FakeProvider::start().await;
    fake.script(vec![Behaviour::StreamError {
        reply: Reply::new("abcdefgh"),
        after_chunks: 1,
        error_type: "server_error".into(),
        message: "The server had an error".into(),
    }]);
    let p = build(&openai_cfg(&fake));
    let c = collect(p.stream(request("Hi")).await.unwrap()).await;
    assert_eq!(c.text, "abcd");
    assert!(
        matches!(&c.error, Some(LlmError::StreamCut(m)) if m.contains("server had an error")),
        "{c:?}"
    );
}

#[tokio::test]
async fn dropping_the_stream_disconnects_upstream_promptly() {
    for (kind, fake) in [
        ("openai", FakeProvider::start().await),
        ("anthropic", FakeProvider::start().await),
    ] {
        let long = "word ".repeat(100);
        fake.script(vec![Behaviour::Success(Reply::new(long).delay(ms(20)))]);
        let cfg = if kind == "openai" {
            openai_cfg(&fake)
        } else {
            anthropic_cfg(&fake)
        };
        let p = build(&cfg);
        let mut s = p.stream(request("Hi")).await.unwrap();
        let mut n = 0;
        while n < 2 {
            if let Some(Ok(StreamEvent::Delta(_))) = s.next().await {
                n += 1;
            }
        }
        assert_eq!(fake.disconnects(), 0);
        let t = Instant::now();
        drop(s);
        assert!(
            fake.wait_for_disconnects(1, ms(100)).await,
            "{kind}: no disconnect seen within 100 ms"
        );
        assert!(t.elapsed() < ms(100));
        assert_eq!(fake.in_flight(), 0);
    }
}

#[tokio::test]
async fn idle_timeout_between_events() {
    let fake = FakeProvider::start().await;
    fake.script(vec![Behaviour::Success(
        Reply::new("abcdefghijkl").stall_before_chunk(2, Duration::from_secs(5)),
    )]);
    let p = build(&ProviderConfig {
        idle_timeout_ms: 200,
        ..anthropic_cfg(&fake)
    });
    let t = Instant::now();
    let c = collect(p.stream(request("Hi")).await.unwrap()).await;
    assert_eq!(c.text, "abcdefgh");
    assert_eq!(c.error, Some(LlmError::Timeout { phase: PHASE_IDLE }));
    assert!(t.elapsed() < ms(1000), "{:?}", t.elapsed());
    assert_eq!(fake.request_count(), 1);
    assert!(
        fake.wait_for_disconnects(1, ms(200)).await,
        "connection closed after the idle timeout"
    );
}

#[tokio::test]
async fn concurrency_cap_limits_in_flight_requests() {
    let fake = FakeProvider::start().await;
    fake.set_default(Behaviour::Success(
        Reply::new("one two three four five").chunk_chars(5).delay(ms(30)),
    ));
    let p = build(&ProviderConfig {
        max_concurrency: 2,
        ..openai_cfg(&fake)
    });
    let calls = (0..6).map(|i| {
        let p = p.clone();
        tokio::spawn(async move { collect(p.stream(request(&format!("call {i}"))).await.unwrap()).await })
    });
    for r in futures_util::future::join_all(calls).await {
        let c = r.unwrap();
        assert!(c.is_complete(), "{c:?}");
    }
    assert_eq!(fake.request_count(), 6);
    assert_eq!(
        fake.max_concurrent(),
        2,
        "never more than 2 at once (and the cap was used)"
    );
}

#[tokio::test]
async fn full_queue_fails_with_overloaded() {
    let fake = FakeProvider::start().await;
    fake.set_default(Behaviour::Success(
        Reply::new("x".repeat(100)).chunk_chars(1).delay(ms(20)),
    ));
    let p = build(&ProviderConfig {
        max_concurrency: 1,
        queue_timeout_ms: 100,
        ..openai_cfg(&fake)
    });
    let held = p.stream(request("first")).await.unwrap();
    let t = Instant::now();
    let e = p.stream(request("second")).await.err().unwrap();
    assert_eq!(e, LlmError::Overloaded);
    assert!(t.elapsed() >= ms(100) && t.elapsed() < ms(600), "{:?}", t.elapsed());
    assert_eq!(fake.request_count(), 1);
    // Dropping the held stream frees the slot.
    drop(held);
    let c = collect(p.stream(request("third")).await.unwrap()).await;
    assert!(c.is_complete());
}

#[tokio::test]
async fn circuit_breaker_opens_fails_fast_and_recovers() {
    let fake = FakeProvider::start().await;
    fake.set_default(Behaviour::server_error());
    let cfg = ProviderConfig {
        max_retries: 0,
        circuit_failure_threshold: 2,
        circuit_cooldown_ms: 300,
        ..openai_cfg(&fake)
    };
    let p = build(&cfg);
    for _ in 0..2 {
        let e = p.stream(request("Hi")).await.err().unwrap();
        assert!(matches!(e, LlmError::Upstream { status: 500, .. }), "{e:?}");
    }
    let t = Instant::now();
    let e = p.stream(request("Hi")).await.err().unwrap();
    assert_eq!(
        e,
        LlmError::CircuitOpen {
            provider: "openai".into()
        }
    );
    assert!(t.elapsed() < ms(50));
    assert!(!e.is_retryable());
    assert_eq!(fake.request_count(), 2, "an open circuit does not call the provider");

    // After the cooldown one trial goes through; it fails, so the circuit opens again.
    tokio::time::sleep(ms(350)).await;
    assert!(matches!(
        p.stream(request("Hi")).await,
        Err(LlmError::Upstream { status: 500, .. })
    ));
    assert_eq!(fake.request_count(), 3);
    assert!(matches!(
        p.stream(request("Hi")).await,
        Err(LlmError::CircuitOpen { .. })
    ));
    assert_eq!(fake.request_count(), 3);

    // Next trial succeeds and closes it.
    tokio::time::sleep(ms(350)).await;
    fake.set_default(Behaviour::success("back"));
    for _ in 0..3 {
        let c = collect(p.stream(request("Hi")).await.unwrap()).await;
        assert_eq!(c.text, "back");
    }
    assert_eq!(fake.request_count(), 6);
}

#[tokio::test]
async fn api_key_is_never_in_errors() {
    const WRONG: &str = "sk-wrong-SECRET-abcdef123456";
    let wrong_env = |k: &str| (k == KEY_ENV).then(|| WRONG.to_string());
    let fake = FakeProvider::start().await;
    fake.require_key(Some(KEY));
    for cfg in [openai_cfg(&fake), azure_cfg(&fake), anthropic_cfg(&fake)] {
        let p = build_provider(&cfg, &wrong_env).unwrap();
        let e = p.stream(request("Hi")).await.err().unwrap();
        assert!(
            matches!(&e, LlmError::Upstream { status: 401, message } if message.contains("[redacted]")),
            "{e:?}"
        );
        for text in [e.to_string(), format!("{e:?}"), e.user_message()] {
            assert!(!text.contains("SECRET"), "{} leaked the key: {text}", cfg.name);
        }
    }
    // The fake did get the (wrong) key, in the right header each time.
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 3, "401 is not retried");
    assert_eq!(
        reqs[0].header("authorization"),
        Some(format!("Bearer {WRONG}").as_str())
    );
    assert_eq!(reqs[1].header("api-key"), Some(WRONG));
    assert_eq!(reqs[2].header("x-api-key"), Some(WRONG));

    // Connection errors and adapter Debug output do not carry it either.
    let cfg = ProviderConfig {
        base_url: Some("http://127.0.0.1:9/v1".into()),
        max_retries: 0,
        ..openai_cfg(&fake)
    };
    let e = build_provider(&cfg, &wrong_env)
        .unwrap()
        .stream(request("Hi"))
        .await
        .err()
        .unwrap();
    assert!(matches!(e, LlmError::Transport(_)), "{e:?}");
    assert!(!format!("{e} {e:?}").contains("SECRET"));
    let adapter = confab_llm::OpenAiProvider::from_config(&cfg, Some(WRONG.into())).unwrap();
    assert!(!format!("{adapter:?}").contains("SECRET"));
    let adapter = confab_llm::AnthropicProvider::from_config(&anthropic_cfg(&fake), Some(WRONG.into())).unwrap();
    assert!(!format!("{adapter:?}").contains("SECRET"));
}

#[tokio::test]
async fn missing_model_is_a_config_error_without_a_request() {
    let fake = FakeProvider::start().await;
    let p = build(&ProviderConfig {
        model: None,
        max_retries: 2,
        ..openai_cfg(&fake)
    });
    let e = p.stream(request("Hi")).await.err().unwrap();
    assert!(matches!(e, LlmError::Config(_)), "{e:?}");
    assert_eq!(fake.request_count(), 0);
}

#[tokio::test]
async fn toml_providers_array_builds_a_fallback_chain() {
    use figment::Figment;
    use figment::providers::{Format, Toml};

    #[derive(serde::Deserialize)]
    struct Root {
        providers: Vec<ProviderConfig>,
    }
    let toml = r#"
        [[providers]]
        name = "claude"
        kind = "anthropic"
        model = "claude-sonnet"
        api_key_env = "CONFAB_TEST_LLM_KEY"
        first_token_timeout_ms = 15000

        [[providers]]
        name = "azure"
        kind = "azure"
        base_url = "https://example.openai.azure.com"
        azure_deployment = "gpt-4o"
        api_key_env = "CONFAB_TEST_LLM_KEY"

        [[providers]]
        name = "local"
        kind = "openai_compatible"
        base_url = "http://127.0.0.1:11434/v1"
        model = "llama3.2"
        max_concurrency = 1
    "#;
    let root: Root = Figment::from(Toml::string(toml)).extract().unwrap();
    assert_eq!(root.providers.len(), 3);
    assert_eq!(root.providers[0].kind, ProviderKind::Anthropic);
    assert_eq!(root.providers[0].first_token_timeout_ms, 15000);
    assert_eq!(root.providers[0].idle_timeout_ms, 30000);
    assert_eq!(root.providers[2].kind, ProviderKind::OpenAiCompatible);
    assert_eq!(root.providers[2].max_concurrency, 1);
    let chain = Fallback::new(build_providers(&root.providers, &env).unwrap());
    assert_eq!(chain.name(), "claude|azure|local");
}

/// A provider built as untrusted: a literal private address is refused when it is built, a name resolving to
/// one when it connects, and an allowed range works.
#[tokio::test]
async fn guarded_providers_reach_only_what_the_egress_policy_allows() {
    use confab_egress::EgressPolicy;
    use confab_llm::build_guarded_provider;

    let fake = FakeProvider::start().await;
    let strict = EgressPolicy::default();
    let cfg = |url: String| ProviderConfig {
        base_url: Some(url),
        model: Some("m".into()),
        max_retries: 0,
        ..ProviderConfig::new("untrusted", ProviderKind::OpenAiCompatible)
    };
    for url in [
        fake.openai_base_url(),
        "http://10.0.0.1/v1".into(),
        "http://169.254.169.254/v1".into(),
        "http://[::1]:8080/v1".into(),
    ] {
        match build_guarded_provider(&cfg(url.clone()), &|_| None, &strict) {
            Err(LlmError::Config(msg)) => assert!(msg.contains("private or reserved"), "{msg}"),
            Err(other) => panic!("{url}: {other:?}"),
            Ok(_) => panic!("{url} was accepted"),
        }
    }

    let by_name = fake.openai_base_url().replace("127.0.0.1", "localhost");
    let p = build_guarded_provider(&cfg(by_name), &|_| None, &strict).expect("names are checked when resolved");
    let err = match p.stream(request("hi")).await {
        Err(e) => e,
        Ok(s) => panic!("connected: {:?}", collect(s).await),
    };
    assert!(
        err.to_string().contains("does not resolve to an allowed address"),
        "{err}"
    );
    assert_eq!(fake.request_count(), 0, "a name resolving to loopback was connected to");

    let loopback = EgressPolicy::parse(&["127.0.0.1".into()]).unwrap();
    let p = build_guarded_provider(&cfg(fake.openai_base_url()), &|_| None, &loopback).unwrap();
    let c = collect(p.stream(request("hi")).await.unwrap()).await;
    assert!(c.is_complete(), "{c:?}");
    assert_eq!(fake.request_count(), 1);
}

/// The fake counts a request in flight while its connection is open, and stops when the client closes the
/// connection, even though its handler still hangs (the provider concurrency tests rely on both).
#[tokio::test]
async fn the_fake_counts_a_hung_request_until_the_client_closes_its_connection() {
    use tokio::io::AsyncWriteExt;
    let fake = FakeProvider::start().await;
    fake.set_default(Behaviour::hang(Duration::from_secs(60)));
    let body = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut sockets = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(fake.addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(body.as_bytes()).await.unwrap();
        sockets.push(s);
    }
    let wait_in_flight = |n: usize| {
        let fake = &fake;
        async move {
            tokio::time::timeout(Duration::from_secs(10), async {
                while fake.in_flight() != n {
                    tokio::time::sleep(ms(5)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("in flight stayed {}, expected {n}", fake.in_flight()));
        }
    };
    wait_in_flight(2).await;
    assert_eq!(fake.max_concurrent(), 2);
    // One client gives up; the other's request still counts.
    drop(sockets.pop());
    wait_in_flight(1).await;
    drop(sockets.pop());
    wait_in_flight(0).await;
    assert_eq!(fake.request_count(), 2);
}
