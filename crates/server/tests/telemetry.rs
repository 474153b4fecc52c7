//! OpenTelemetry traces, end to end: the real binary with `[telemetry] otlp_endpoint` pointed at an OTLP/HTTP
//! receiver run here, a bot on the fake LLM provider, and JSON logs on stdout. One message sent to the bot
//! through the native API must give one trace from the HTTP request through review, the store append, the
//! fan-out and the bot's reply (provider call, first token, final state), and the log lines written inside
//! those spans must carry its trace id. A test binary of its own: the binary's subscriber is process-wide.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::routing::post;
use confab_llm::fake::{Behaviour, FakeProvider};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;
use serde_json::{Value, json};

const MASTER: &str = "telemetry-test-master-token-0123456789abcdef";

/// A span as the receiver got it.
#[derive(Clone, Debug)]
struct Received {
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    attributes: HashMap<String, String>,
    events: Vec<String>,
    service: String,
}

/// An OTLP/HTTP receiver (`POST /v1/traces`, protobuf) on a port of its own; keeps every span.
async fn receiver() -> (SocketAddr, Arc<Mutex<Vec<Received>>>) {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let kept = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let kept = kept.clone();
            async move {
                let req = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
                let mut kept = kept.lock().unwrap();
                for rs in req.resource_spans {
                    let service = rs
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|kv| kv.key == "service.name")
                        .map(|kv| text(kv.value.as_ref().and_then(|v| v.value.as_ref())))
                        .unwrap_or_default();
                    for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                        kept.push(Received {
                            trace_id: hex::encode(&span.trace_id),
                            span_id: hex::encode(&span.span_id),
                            parent: hex::encode(&span.parent_span_id),
                            name: span.name,
                            attributes: span
                                .attributes
                                .iter()
                                .map(|kv| (kv.key.clone(), text(kv.value.as_ref().and_then(|v| v.value.as_ref()))))
                                .collect(),
                            events: span.events.into_iter().map(|e| e.name).collect(),
                            service: service.clone(),
                        });
                    }
                }
                // An empty `ExportTraceServiceResponse`: everything accepted.
                ([("content-type", "application/x-protobuf")], Vec::<u8>::new())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, spans)
}

fn text(v: Option<&AnyValue>) -> String {
    match v {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

/// The running binary and its JSON log lines, as they come.
struct Server {
    child: Child,
    addr: SocketAddr,
    logs: Arc<Mutex<Vec<Value>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(config: &str, data_dir: &std::path::Path) -> Server {
    let config_path = data_dir.join("confab.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_confab"))
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json", "--data-dir"])
        .arg(data_dir.join("data"))
        .arg("--config")
        .arg(&config_path)
        .env("CONFAB_API_TOKEN", MASTER)
        // The log lines written inside the traced spans: the request's, the provider call's, the first token.
        .env("CONFAB_LOG", "info,tower_http=debug,confab_llm=debug,confab_bots=debug")
        // Spans leave every 100 ms instead of every 5 s.
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start confab");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let logs = Arc::new(Mutex::new(Vec::new()));
    let addr = loop {
        let line = lines.next().expect("the server exited before listening").unwrap();
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        if v["fields"]["message"] == "confab listening" {
            break v["fields"]["addr"].as_str().unwrap().parse().unwrap();
        }
        logs.lock().unwrap().push(v);
    };
    let kept = logs.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                kept.lock().unwrap().push(v);
            }
        }
    });
    Server { child, addr, logs }
}

async fn call(http: &reqwest::Client, addr: SocketAddr, method: &str, path: &str, body: Value) -> (u16, Value) {
    let r = http
        .request(method.parse().unwrap(), format!("http://{addr}{path}"))
        .bearer_auth(MASTER)
        .json(&body)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// Polls `check` until it gives a value or `deadline` passes.
async fn within<T>(deadline: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + deadline;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends one message mentioning the bot and checks its trace and logs. `early_start`: the reply starts
/// during the send (its span a child of the send's) or from the commit event (carried to the bot runtime
/// and the fan-out in process).
async fn one_trace_follows_a_message_to_the_bots_reply(early_start: bool) {
    let (otlp, spans) = receiver().await;
    let fake = FakeProvider::start().await;
    fake.set_default(Behaviour::success("Hello from the fake provider, streamed in pieces."));
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
[builtin]
enabled = false

[bot_runtime]
early_start = {early_start}

[telemetry]
otlp_endpoint = "http://{otlp}"
service_name = "confab-under-test"

[[providers]]
name = "fake"
kind = "openai_compatible"
base_url = "{base}"
model = "fake-model"

[[bots]]
id = "helper"
settings = {{ provider = "fake" }}
"#,
        base = fake.openai_base_url()
    );
    let mut server = start(&config, dir.path());
    let (addr, http) = (server.addr, reqwest::Client::new());
    let (s, v) = call(&http, addr, "POST", "/api/v1/users", json!({"id": "alice"})).await;
    assert_eq!(s, 201, "{v}");
    let group = json!({"kind": "group", "id": "g", "user_ids": ["alice", "helper"]});
    let (s, v) = call(&http, addr, "POST", "/api/v1/channels", group).await;
    assert_eq!(s, 201, "{v}");

    let body = json!({"sender_id": "alice", "text": "@helper what is a trace?"});
    let (s, sent) = call(&http, addr, "POST", "/api/v1/channels/g/messages", body).await;
    assert_eq!(s, 201, "{sent}");
    let message_id = sent["id"].to_string();

    // The send's trace, once its reply's final state has been exported.
    let spans_of = |trace: &str| -> Vec<Received> {
        spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace_id == trace)
            .cloned()
            .collect()
    };
    let send = within(Duration::from_secs(20), "the send's span", || {
        spans
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.name == "confab.send" && s.attributes.get("message_id") == Some(&message_id))
            .cloned()
    })
    .await;
    let trace = within(
        Duration::from_secs(30),
        "the reply's final state in the send's trace",
        || {
            let spans = spans_of(&send.trace_id);
            spans.iter().any(|s| s.name == "reply.finish").then_some(spans)
        },
    )
    .await;
    let names: HashSet<&str> = trace.iter().map(|s| s.name.as_str()).collect();
    // The request's span, named by its route, is the root.
    let root = trace.iter().find(|s| s.parent.is_empty()).expect("a root span");
    assert_eq!(root.name, "POST /api/v1/channels/{channel_id}/messages");
    for name in [
        "confab.send",
        "send.screen",
        "store.append",
        "gateway.fanout",
        "bot.trigger",
        "bot.reply",
        "llm.call",
        "llm.request",
        "reply.finish",
    ] {
        assert!(names.contains(name), "no {name} span in the trace: {names:?}");
    }
    let one = |name: &str| trace.iter().find(|s| s.name == name).unwrap();
    let by_id: HashMap<&str, &Received> = trace.iter().map(|s| (s.span_id.as_str(), s)).collect();
    // One tree: every span leads up to the request's, whatever task it ran in.
    assert_eq!(root.attributes["http.route"], "/api/v1/channels/{channel_id}/messages");
    assert_eq!(root.attributes["http.response.status_code"], "201");
    for s in &trace {
        let mut at: &Received = s;
        let mut hops = 0;
        while !at.parent.is_empty() {
            at = by_id
                .get(at.parent.as_str())
                .copied()
                .unwrap_or_else(|| panic!("{}: parent {} not exported", s.name, at.parent));
            hops += 1;
            assert!(hops < 20);
        }
        assert_eq!(at.span_id, root.span_id, "{} is under the request", s.name);
        assert_eq!(s.service, "confab-under-test");
    }
    let parent_name = |s: &Received| by_id[s.parent.as_str()].name.clone();
    assert_eq!(parent_name(one("send.screen")), "confab.send");
    assert_eq!(parent_name(one("bot.reply")), "bot.trigger");
    assert_eq!(one("bot.trigger").attributes["early"], early_start.to_string());
    // The fan-out of the message (and the one of the reply's creation, under the reply).
    assert!(
        trace.iter().any(|s| s.name == "gateway.fanout"
            && parent_name(s) == "confab.send"
            && s.attributes["message_id"] == message_id),
        "the message's fan-out is under its send"
    );
    assert!(
        trace
            .iter()
            .any(|s| s.name == "store.append" && parent_name(s) == "confab.send"),
        "the append is under the send"
    );
    let reply = one("bot.reply");
    assert_eq!(reply.attributes["bot_id"], "helper");
    assert_eq!(reply.attributes["trigger_id"], message_id);
    let call = one("llm.call");
    assert_eq!(parent_name(call), "bot.reply");
    assert_eq!(call.attributes["provider"], "fake");
    assert_eq!(call.attributes["end"], "complete");
    assert!(call.attributes["completion_tokens"].parse::<u32>().unwrap() > 0);
    assert!(call.events.iter().any(|e| e == "first token"), "{:?}", call.events);
    let request = one("llm.request");
    assert_eq!(parent_name(request), "llm.call");
    assert_eq!(request.attributes["model"], "fake-model");
    assert_eq!(request.attributes["http.response.status_code"], "200");
    let finish = one("reply.finish");
    assert_eq!(parent_name(finish), "bot.reply");
    assert_eq!(finish.attributes["state"], "complete");
    // No message text in any attribute.
    for s in &trace {
        for v in s.attributes.values() {
            assert!(
                !v.contains("what is a trace") && !v.contains("streamed in pieces"),
                "{}: {v}",
                s.name
            );
        }
    }

    // The JSON log lines written inside those spans carry the trace and the span.
    let logged = |message: &str| -> Vec<Value> {
        server
            .logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l["fields"]["message"] == message && l["trace_id"] == send.trace_id.as_str())
            .cloned()
            .collect()
    };
    let first_token = within(Duration::from_secs(5), "the first token's log line", || {
        logged("first token").pop()
    })
    .await;
    assert_eq!(first_token["span_id"], call.span_id.as_str());
    let response = within(Duration::from_secs(5), "the provider response's log line", || {
        logged("chat completions response").pop()
    })
    .await;
    assert_eq!(response["span_id"], request.span_id.as_str());
    let finished = logged("finished processing request");
    assert!(
        finished.iter().any(|l| l["span_id"] == root.span_id.as_str()),
        "the request's log line carries its span"
    );
    // Lines outside any span carry no ids.
    let listening_like = server
        .logs
        .lock()
        .unwrap()
        .iter()
        .find(|l| l["fields"]["message"] == "exporting traces over OTLP")
        .cloned()
        .expect("the exporter's start is logged");
    assert!(listening_like.get("trace_id").is_none(), "{listening_like}");

    // A graceful stop flushes and exits cleanly.
    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let stopped = Instant::now();
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(stopped.elapsed() < Duration::from_secs(20), "the server did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_follows_a_message_to_a_reply_started_early() {
    one_trace_follows_a_message_to_the_bots_reply(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_follows_a_message_to_a_reply_started_by_the_commit_event() {
    one_trace_follows_a_message_to_the_bots_reply(false).await;
}
