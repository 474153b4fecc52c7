//! Provider faults, table-driven: each case is a fake OpenAI-compatible provider that always does one wrong
//! thing (429 with and without `retry-after`, 5xx, a hang before the headers, a stall mid-stream, a cut
//! stream, an error inside the stream, garbage instead of SSE, a huge answer), and a bot on it triggered
//! several times at once. Every trigger ends in exactly one bot reply in one final state (none left
//! `generating`), and the provider never sees more requests at once than its concurrency cap (counted at the
//! fake until each response ends or Confab closes its connection, so requests Confab gives up on count
//! exactly as long as they hold a slot). (`bots.rs`
//! covers single failures, fallbacks and stop; `bot_limits.rs` endless streams.)

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use confab_llm::ProviderKind;
use confab_llm::fake::{Behaviour, FakeProvider, Reply};
use serde_json::json;

use crate::bots::{create_bot, provider};
use crate::helpers::*;

/// Triggers per case, sent at once.
const TRIGGERS: usize = 6;
/// The provider's concurrency cap.
const CAP: usize = 2;

struct Case {
    name: &'static str,
    behaviour: Behaviour,
    /// The final states a reply may end in.
    states: &'static [&'static str],
}

fn cases() -> Vec<Case> {
    let long = Duration::from_secs(30);
    let text = "a partial answer that goes on for a while";
    vec![
        Case {
            name: "429 with retry-after",
            behaviour: Behaviour::rate_limited(1),
            states: &["failed"],
        },
        Case {
            name: "429 without retry-after",
            behaviour: Behaviour::status(429),
            states: &["failed"],
        },
        Case {
            name: "500",
            behaviour: Behaviour::server_error(),
            states: &["failed"],
        },
        Case {
            name: "503",
            behaviour: Behaviour::status(503),
            states: &["failed"],
        },
        Case {
            name: "hang before headers",
            behaviour: Behaviour::hang(long),
            states: &["failed"],
        },
        Case {
            name: "hang mid-stream",
            behaviour: Behaviour::Success(Reply::new(text).chunk_chars(4).stall_before_chunk(3, long)),
            states: &["interrupted"],
        },
        Case {
            name: "cut stream",
            behaviour: Behaviour::cut_after(text, 3),
            states: &["interrupted"],
        },
        Case {
            name: "error in the stream",
            behaviour: Behaviour::overloaded_in_stream(text, 3),
            states: &["interrupted"],
        },
        Case {
            name: "garbage instead of SSE",
            behaviour: Behaviour::Garbage("<html><body>502 Bad Gateway</body></html>\n\0\u{fffd}data".into()),
            states: &["failed", "interrupted"],
        },
        Case {
            name: "huge answer",
            // Within the caps, so it streams to its end (cutting at the caps is `bot_limits.rs`'s).
            behaviour: Behaviour::Success(Reply::new("lorem ipsum ".repeat(8_000)).chunk_chars(1024)),
            states: &["complete"],
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_trigger_ends_in_one_final_reply_under_provider_faults() {
    let cases = cases();
    let mut fakes = Vec::new();
    let mut providers = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let fake = FakeProvider::start().await;
        fake.set_default(case.behaviour.clone());
        let mut p = provider(&format!("p{i}"), ProviderKind::OpenAiCompatible, &fake);
        p.first_token_timeout_ms = 1_000;
        p.idle_timeout_ms = 1_000;
        p.max_concurrency = CAP;
        p.queue_timeout_ms = 60_000;
        providers.push(p);
        fakes.push(fake);
    }
    let app = spawn_app_with(|c| {
        c.providers = providers;
        c.limits.user_send_per_sec = 1000;
        c.limits.user_send_burst = 1000;
        c.bot_runtime.save_interval_ms = 20;
        c.bot_runtime.max_concurrent_replies = 128;
        c.bot_runtime.queue_timeout_secs = 60;
        c.bot_runtime.user_triggers_per_minute = 10_000;
        c.bot_runtime.max_reply_bytes = 1 << 20;
    })
    .await;
    let mut members = vec!["alice".to_string()];
    for i in 0..cases.len() {
        let settings = json!({"provider": format!("p{i}"), "max_output_tokens": 32_768});
        create_bot(&app, &format!("bot{i}"), settings).await;
        members.push(format!("bot{i}"));
    }
    let alice = app.user("alice").await;
    let members: Vec<&str> = members.iter().map(String::as_str).collect();
    app.group("g", &members).await;
    let mut ws = app.ws(&alice, json!({})).await;

    // Every case's triggers at once: trigger id -> case.
    let started = Instant::now();
    let sends = (0..cases.len())
        .flat_map(|i| (0..TRIGGERS).map(move |k| (i, k)))
        .map(|(i, k)| {
            let (app, alice) = (&app, &alice);
            async move {
                (
                    i,
                    app.send_as(alice, "g", &format!("@bot{i} question {k}")).await["id"]
                        .as_i64()
                        .unwrap(),
                )
            }
        });
    let triggers: HashMap<i64, usize> = futures_util::future::join_all(sends)
        .await
        .into_iter()
        .map(|(i, id)| (id, i))
        .collect();

    // Final states as they arrive: trigger id -> (reply id, state).
    let mut finals: HashMap<i64, (i64, String)> = HashMap::new();
    let mut finished_at: HashMap<usize, Duration> = HashMap::new();
    while finals.len() < triggers.len() {
        let f = next_json_within(&mut ws, Duration::from_secs(120)).await;
        let m = &f["message"];
        if f["type"] != "message.updated" || m["reply"]["state"] == "generating" || m["reply"].is_null() {
            continue;
        }
        let trigger = m["reply"]["trigger_id"]
            .as_i64()
            .expect("a runtime reply names its trigger");
        let case = triggers[&trigger];
        let reply = (
            m["id"].as_i64().unwrap(),
            m["reply"]["state"].as_str().unwrap().to_string(),
        );
        assert!(
            finals.insert(trigger, reply).is_none(),
            "{}: a second final state for trigger {trigger}: {f}",
            cases[case].name
        );
        finished_at.insert(case, started.elapsed());
    }

    // The stored history agrees: one reply per trigger, in its final state, none generating.
    let (s, v) = app
        .call("GET", "/api/v1/channels/g/messages?limit=200", &alice, None)
        .await;
    assert_eq!(s, 200, "{v}");
    let messages = v["messages"].as_array().unwrap();
    let replies: Vec<_> = messages.iter().filter(|m| !m["reply"].is_null()).collect();
    assert_eq!(replies.len(), triggers.len(), "one reply per trigger");
    let stored_triggers: HashSet<i64> = replies
        .iter()
        .map(|m| m["reply"]["trigger_id"].as_i64().unwrap())
        .collect();
    assert_eq!(stored_triggers.len(), triggers.len(), "no trigger has two replies");
    for m in &replies {
        let trigger = m["reply"]["trigger_id"].as_i64().unwrap();
        let (id, state) = &finals[&trigger];
        assert_eq!(
            (m["id"].as_i64().unwrap(), m["reply"]["state"].as_str().unwrap()),
            (*id, state.as_str()),
            "{m}"
        );
    }

    let mut report = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let mut states: Vec<&str> = finals
            .iter()
            .filter(|(t, _)| triggers[t] == i)
            .map(|(_, (_, s))| s.as_str())
            .collect();
        states.sort();
        assert_eq!(states.len(), TRIGGERS, "{}", case.name);
        for s in &states {
            assert!(
                case.states.contains(s),
                "{}: a reply ended {s}, expected one of {:?}",
                case.name,
                case.states
            );
        }
        let fake = &fakes[i];
        assert!(
            fake.max_concurrent() <= CAP,
            "{}: the provider saw {} requests at once (cap {CAP})",
            case.name,
            fake.max_concurrent()
        );
        states.dedup();
        report.push(format!(
            "{}: {states:?}, {} requests, at most {} at once, last final after {:?}",
            case.name,
            fake.request_count(),
            fake.max_concurrent(),
            finished_at[&i]
        ));
    }
    eprintln!(
        "provider faults: {} cases x {TRIGGERS} concurrent triggers, cap {CAP}:\n  {}",
        cases.len(),
        report.join("\n  ")
    );
}
