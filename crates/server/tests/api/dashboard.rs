//! The Grafana dashboard (`deploy/grafana/confab.json`) against the server: its structure, and every panel's
//! PromQL read against a real node's `/metrics` after a workload that records what the panels show (a
//! WebSocket session, sends, a failed and a complete bot reply through the fake provider, a webhook delivery).
//! The metrics recorder is process-wide and other tests run beside these, so only the existence (and the
//! type) of each metric is checked, never a value. The Cluster row's metrics exist only with NATS and
//! PostgreSQL: they are checked on a cluster of two nodes, skipped visibly without those services.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use confab_llm::ProviderKind;
use confab_llm::fake::{Behaviour, FakeProvider, Reply};
use serde_json::{Value, json};

use crate::bots::{create_bot, finished_replies, provider};
use crate::cluster::Cluster;
use crate::helpers::*;
use crate::webhook_outbox::{Script, add_endpoint, loopback, next_hook, receiver};

mod promql;
use promql::*;

const DASHBOARD: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/grafana/confab.json"));

/// The rows, in order.
const ROWS: &[&str] = &[
    "Messages",
    "Real-time",
    "Bots and providers",
    "Webhooks",
    "Store",
    "Cluster",
];
/// The row whose metrics only a node of a cluster has (NATS, PostgreSQL's write lock).
const CLUSTER_ROW: &str = "Cluster";
/// What the panels' selectors filter on: the `instance` variable.
const INSTANCE: &str = "instance=~\"$instance\"";
/// How long the workload's metrics may take to show (deliveries and replies finish after their requests).
const WAIT: Duration = Duration::from_secs(30);

// ---- the dashboard ----

/// A panel (not a row) with the row it is in and its queries.
struct Panel {
    row: String,
    title: String,
    exprs: Vec<String>,
}

fn dashboard() -> Value {
    serde_json::from_str(DASHBOARD).expect("deploy/grafana/confab.json is JSON")
}

/// Every panel in order, rows included, with the panels of collapsed rows after their row.
fn all_panels(dash: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        out.push(p);
        if let Some(nested) = p["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

/// The panels that are not rows, each with its row (the last row before it).
fn panels(dash: &Value) -> Vec<Panel> {
    let mut row = String::new();
    let mut out = Vec::new();
    for p in all_panels(dash) {
        let title = p["title"].as_str().unwrap_or_default().to_string();
        if p["type"] == "row" {
            row = title;
            continue;
        }
        let exprs = p["targets"]
            .as_array()
            .map(|t| {
                t.iter()
                    .map(|t| t["expr"].as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default();
        out.push(Panel {
            row: row.clone(),
            title,
            exprs,
        });
    }
    out
}

/// The metric the `instance` variable lists its values from (`label_values(metric, instance)`).
fn instance_variable_metric(dash: &Value) -> String {
    let vars = dash["templating"]["list"].as_array().expect("templating.list");
    let var = vars
        .iter()
        .find(|v| v["name"] == "instance")
        .expect("an instance variable");
    let query = var["query"]["query"]
        .as_str()
        .or(var["query"].as_str())
        .expect("its query");
    let args = query
        .trim()
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .unwrap_or_else(|| panic!("the instance variable's query is label_values(metric, instance): {query}"));
    let (metric, label) = args.split_once(',').expect("label_values(metric, label)");
    assert_eq!(label.trim(), "instance", "{query}");
    metric.trim().to_string()
}

// ---- the exposition ----

/// A node's `/metrics`: the names of its samples and the type of each family.
struct Exposition {
    samples: HashSet<String>,
    types: HashMap<String, String>,
}

fn parse_exposition(text: &str) -> Exposition {
    let mut samples = HashSet::new();
    let mut types = HashMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let mut parts = t.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                types.insert(name.to_string(), kind.to_string());
            }
        } else if !line.starts_with('#') {
            let end = line.find(|c: char| c == '{' || c.is_whitespace()).unwrap_or(line.len());
            samples.insert(line[..end].to_string());
        }
    }
    Exposition { samples, types }
}

impl Exposition {
    /// The family a sample belongs to and its type: a histogram's `_bucket`, `_sum` and `_count` are its own.
    fn type_of<'a>(&'a self, metric: &'a str) -> Option<(&'a str, &'a str)> {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = metric.strip_suffix(suffix)
                && let Some(t) = self.types.get(base).filter(|t| *t == "histogram" || *t == "summary")
            {
                return Some((base, t));
            }
        }
        self.types.get(metric).map(|t| (metric, t.as_str()))
    }
}

/// What the panels of the rows `rows` read that `expo` lacks, or reads against its type (a counter or a
/// histogram's series outside rate/increase, a gauge inside); each problem names the panel and the metric.
fn exposition_problems(panels: &[Panel], rows: impl Fn(&str) -> bool, expo: &Exposition) -> Vec<String> {
    let mut problems = Vec::new();
    for p in panels.iter().filter(|p| rows(&p.row)) {
        for expr in &p.exprs {
            let Ok(q) = parse_promql(expr) else { continue }; // reported by the structure test
            for r in &q.reads {
                let m = &r.metric;
                if !expo.samples.contains(m) {
                    problems.push(format!("panel {:?} (row {}): {m} is not in /metrics", p.title, p.row));
                    continue;
                }
                let rated = RATES.contains(&r.directly_in());
                match expo.type_of(m) {
                    Some((_, "gauge")) if rated => problems.push(format!(
                        "panel {:?}: {m} is a gauge, read through {}()",
                        p.title,
                        r.directly_in()
                    )),
                    Some((family, kind @ ("counter" | "histogram" | "summary"))) if !rated => problems.push(format!(
                        "panel {:?}: {m} ({family}, a {kind}) is read without rate()/increase()",
                        p.title
                    )),
                    None => problems.push(format!("panel {:?}: {m} has no # TYPE line", p.title)),
                    _ => {}
                }
            }
        }
    }
    problems
}

async fn scrape(app: &TestApp) -> Exposition {
    let r = app
        .http
        .get(app.url("/metrics"))
        .bearer_auth(MASTER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    parse_exposition(&r.text().await.unwrap())
}

/// Scrapes until the panels of `rows` find everything they read (what the workload set off may still be
/// finishing), then fails naming each panel and metric missing.
async fn check_node(app: &TestApp, what: &str, rows: impl Fn(&str) -> bool, extra: &[String]) {
    let panels = panels(&dashboard());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let expo = scrape(app).await;
        let mut problems = exposition_problems(&panels, &rows, &expo);
        for m in extra {
            if !expo.samples.contains(m) {
                problems.push(format!("the instance variable's metric {m} is not in /metrics"));
            }
        }
        if problems.is_empty() {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "{what}: the dashboard reads what the node does not expose:\n  {}",
                problems.join("\n  ")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---- tests ----

#[test]
fn the_dashboard_is_well_formed() {
    let dash = dashboard();
    let mut problems = Vec::new();
    let schema = dash["schemaVersion"].as_u64().unwrap_or(0);
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    assert!(!dash["uid"].as_str().unwrap_or_default().is_empty(), "a uid");
    let inputs = dash["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["type"] == "datasource" && i["pluginId"] == "prometheus"),
        "a DS_PROMETHEUS datasource input: {inputs:?}"
    );
    let vars = dash["templating"]["list"].as_array().expect("templating.list");
    let var = |name: &str| vars.iter().find(|v| v["name"] == name);
    let ds = var("datasource").expect("a datasource variable");
    assert_eq!(
        (ds["type"].as_str(), ds["query"].as_str()),
        (Some("datasource"), Some("prometheus"))
    );
    let instance = var("instance").expect("an instance variable");
    assert_eq!(instance["type"], "query");
    assert_eq!(instance["datasource"]["uid"], "${datasource}");
    assert!(
        instance["multi"] == true && instance["includeAll"] == true,
        "{instance}"
    );
    instance_variable_metric(&dash);

    let mut ids = HashSet::new();
    let mut rows = Vec::new();
    for p in all_panels(&dash) {
        let title = p["title"].as_str().unwrap_or_default();
        let id = p["id"].as_u64();
        match id {
            Some(id) if ids.insert(id) => {}
            _ => problems.push(format!("panel {title:?}: id {:?} missing or not unique", p["id"])),
        }
        if title.trim().is_empty() {
            problems.push(format!("panel {id:?} has no title"));
        }
        let grid = &p["gridPos"];
        if !["h", "w", "x", "y"].iter().all(|k| grid[k].is_u64())
            || grid["x"].as_u64().unwrap_or(0) + grid["w"].as_u64().unwrap_or(0) > 24
        {
            problems.push(format!("panel {title:?}: gridPos {grid}"));
        }
        if p["type"] == "row" {
            rows.push(title.to_string());
            continue;
        }
        if p["datasource"]["uid"] != "${datasource}" || p["datasource"]["type"] != "prometheus" {
            problems.push(format!(
                "panel {title:?}: datasource {} is not the datasource variable",
                p["datasource"]
            ));
        }
        if p["fieldConfig"]["defaults"]["unit"]
            .as_str()
            .unwrap_or_default()
            .is_empty()
        {
            problems.push(format!("panel {title:?}: no unit"));
        }
        let targets = p["targets"].as_array().map(Vec::as_slice).unwrap_or_default();
        if targets.is_empty() {
            problems.push(format!("panel {title:?}: no target"));
        }
        let mut ref_ids = HashSet::new();
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_default();
            if expr.trim().is_empty() {
                problems.push(format!("panel {title:?}: a target without expr"));
                continue;
            }
            if !ref_ids.insert(t["refId"].as_str().unwrap_or_default()) {
                problems.push(format!("panel {title:?}: refId {} twice", t["refId"]));
            }
            if !t["datasource"].is_null() && t["datasource"]["uid"] != "${datasource}" {
                problems.push(format!("panel {title:?}: a target's datasource {}", t["datasource"]));
            }
            problems.extend(query_problems(title, expr));
        }
    }
    assert_eq!(rows, ROWS, "the rows, in order");
    assert!(
        panels(&dash).iter().all(|p| !p.row.is_empty()),
        "every panel is in a row"
    );
    assert!(problems.is_empty(), "the dashboard:\n  {}", problems.join("\n  "));
}

#[tokio::test]
async fn every_panel_reads_metrics_a_node_exposes() {
    let fake = FakeProvider::start().await;
    // The first call fails (a provider error), the next ones stream a reply.
    fake.set_default(Behaviour::Success(Reply::new("Hello from the fake.").chunk_chars(5)));
    fake.script(vec![Behaviour::status(400)]);
    let providers = vec![provider("fake", ProviderKind::OpenAiCompatible, &fake)];
    let app = spawn_app_with(move |c| {
        loopback(c);
        c.providers = providers;
        c.bot_runtime.save_interval_ms = 20;
    })
    .await;

    // A webhook endpoint that receives what is sent.
    let (url, secrets, mut hooks) = receiver(Script::default()).await;
    add_endpoint(&app, &url, json!(["message.sent"]), &secrets).await;

    // A WebSocket session, sends over REST and over the socket.
    let alice = app.user("alice").await;
    let _bob = app.user("bob").await;
    app.group("g", &["alice", "bob"]).await;
    let mut ws = app.ws(&alice, json!({})).await;
    app.send_as(&alice, "g", "one").await;
    let (s, v) = app
        .admin(
            "POST",
            "/api/v1/channels/g/messages",
            Some(json!({"sender_id": "bob", "text": "two"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    send_json(
        &mut ws,
        json!({"type": "send", "req_id": "r1", "channel_id": "g", "text": "three"}),
    )
    .await;
    next_of_type(&mut ws, "ack").await;
    next_hook(&mut hooks).await;

    // A bot: one reply fails at the provider, the next completes.
    create_bot(&app, "helper", json!({"provider": "fake"})).await;
    let dm = app.direct_with(&alice, "helper").await;
    for (text, state) in [("first", "failed"), ("second", "complete")] {
        app.send_as(&alice, &dm, text).await;
        let fin = finished_replies(&mut ws, "helper", 1).await;
        assert_eq!(fin[0]["reply"]["state"], state, "{}", fin[0]);
    }

    let variable = instance_variable_metric(&dashboard());
    check_node(&app, "a single node", |row| row != CLUSTER_ROW, &[variable]).await;
}

#[tokio::test]
async fn the_cluster_panels_read_metrics_every_node_of_a_cluster_exposes() {
    let Some(cluster) = Cluster::new().await else { return };
    let a = cluster.node().await;
    let b = cluster.node().await;
    let alice = a.user("alice").await;
    let bob = a.user("bob").await;
    a.group("g", &["alice", "bob"]).await;
    // A session on each node: each follows the channel, publishes its sends and receives the other's.
    let mut alice_on_a = a.ws(&alice, json!({})).await;
    let mut bob_on_b = b.ws(&bob, json!({})).await;
    a.send_as(&alice, "g", "from a").await;
    let f = next_of_type(&mut bob_on_b, "message.new").await;
    assert_eq!(f["message"]["text"], "from a", "{f}");
    b.send_as(&bob, "g", "from b").await;
    loop {
        let f = next_of_type(&mut alice_on_a, "message.new").await;
        if f["message"]["text"] == "from b" {
            break;
        }
    }
    for (node, name) in [(&a, "node a"), (&b, "node b")] {
        check_node(node, name, |row| row == CLUSTER_ROW, &[]).await;
    }
}
