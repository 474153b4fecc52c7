//! Crash durability: the real binary is killed with SIGKILL while clients send; every acknowledged message
//! must be there after a restart, sequences stay gap-free, and retried sends do not duplicate.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::MASTER;

pub(crate) struct Server {
    pub child: Child,
    pub addr: SocketAddr,
}

/// A failing test must not leave its servers running (they hold the test's output pipes open).
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(data_dir: &Path) -> Server {
    start_with(data_dir, &[])
}

/// The real binary on a random loopback port, with `args` added to `serve` (e.g. `--config <file>`).
pub(crate) fn start_with(data_dir: &Path, args: &[&str]) -> Server {
    spawn_server(confab_command(data_dir).args(args))
}

/// The command that serves `data_dir` on a random loopback port with the test master token and send limits
/// tests do not reach; more configuration goes on it (arguments, environment).
pub(crate) fn confab_command(data_dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_confab"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("CONFAB_API_TOKEN", MASTER)
        .env("CONFAB_LIMITS__USER_SEND_PER_SEC", "100000")
        .env("CONFAB_LIMITS__USER_SEND_BURST", "100000")
        .env("CONFAB_LOG", "info");
    command
}

/// Starts `command` (a [`confab_command`]) and waits until it listens.
pub(crate) fn spawn_server(command: &mut Command) -> Server {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start confab");
    let addr = listening_addr(&mut child);
    Server { child, addr }
}

/// The address a server started with a piped stdout logs that it listens on; its log is drained from then on
/// so the server never blocks on a full pipe.
pub(crate) fn listening_addr(child: &mut Child) -> SocketAddr {
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines.next().expect("server exited before listening").unwrap();
        if let Some(rest) = line.split("addr=").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    addr
}

pub(crate) async fn call(
    http: &reqwest::Client,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Value,
) -> Result<(u16, Value), reqwest::Error> {
    let r = http
        .request(method.parse().unwrap(), format!("http://{addr}{path}"))
        .bearer_auth(MASTER)
        .json(&body)
        .timeout(Duration::from_secs(10))
        .send()
        .await?;
    let s = r.status().as_u16();
    Ok((s, r.json().await.unwrap_or(Value::Null)))
}

pub(crate) async fn wait_ready(http: &reqwest::Client, addr: SocketAddr) {
    for _ in 0..100 {
        if let Ok(r) = http.get(format!("http://{addr}/readyz")).send().await
            && r.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server not ready");
}

async fn full_history(http: &reqwest::Client, addr: SocketAddr) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    loop {
        let after = out.last().map(|m| m["seq"].as_u64().unwrap()).unwrap_or(0);
        let r: Value = http
            .get(format!(
                "http://{addr}/api/v1/channels/g/messages?after={after}&limit=200"
            ))
            .bearer_auth(MASTER)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let page = r["messages"].as_array().unwrap().clone();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

/// A webhook endpoint for `message.sent` to `url`, through the admin API of a started binary: its id and
/// its secret.
pub(crate) async fn add_endpoint_at(http: &reqwest::Client, addr: SocketAddr, url: &str) -> (String, String) {
    let (s, v) = call(
        http,
        addr,
        "POST",
        "/api/v1/webhooks/endpoints",
        json!({"url": url, "events": ["message.sent"]}),
    )
    .await
    .unwrap();
    assert_eq!(s, 201, "{v}");
    (
        v["id"].as_str().unwrap().to_string(),
        v["secret"].as_str().unwrap().to_string(),
    )
}

/// Users `alice` and `bob` and their group channel `g`, through the admin API of a started binary.
pub(crate) async fn seed_group(http: &reqwest::Client, addr: SocketAddr) {
    for u in ["alice", "bob"] {
        let (s, v) = call(http, addr, "POST", "/api/v1/users", json!({"id": u}))
            .await
            .unwrap();
        assert_eq!(s, 201, "{v}");
    }
    let (s, v) = call(
        http,
        addr,
        "POST",
        "/api/v1/channels",
        json!({"kind": "group", "id": "g", "user_ids": ["alice", "bob"]}),
    )
    .await
    .unwrap();
    assert_eq!(s, 201, "{v}");
}

/// Sends `n` texts `m0`, `m1`... from `alice` to `g`; returns their sequence numbers.
pub(crate) async fn send_texts(http: &reqwest::Client, addr: SocketAddr, n: usize) -> Vec<u64> {
    let mut seqs = Vec::with_capacity(n);
    for i in 0..n {
        let (s, v) = call(
            http,
            addr,
            "POST",
            "/api/v1/channels/g/messages",
            json!({"sender_id": "alice", "text": format!("m{i}")}),
        )
        .await
        .unwrap();
        assert_eq!(s, 201, "{v}");
        seqs.push(v["seq"].as_u64().unwrap());
    }
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let mut server = start(dir.path());
    wait_ready(&http, server.addr).await;
    seed_group(&http, server.addr).await;

    // client_msg_id -> (id, seq) for every acknowledged send; and the sends whose fate is unknown.
    let acked: Arc<Mutex<HashMap<String, (i64, u64)>>> = Arc::default();
    let mut unknown: Vec<(String, String)> = Vec::new();
    for cycle in 0..3 {
        let addr = server.addr;
        let mut senders = Vec::new();
        for w in 0..4 {
            let http = http.clone();
            let acked = acked.clone();
            senders.push(tokio::spawn(async move {
                let sender = if w % 2 == 0 { "alice" } else { "bob" };
                let mut i = 0;
                loop {
                    let key = format!("c{cycle}-w{w}-{i}");
                    let body = json!({"sender_id": sender, "text": key, "client_msg_id": key});
                    match call(&http, addr, "POST", "/api/v1/channels/g/messages", body).await {
                        Ok((201, v)) => {
                            acked
                                .lock()
                                .unwrap()
                                .insert(key, (v["id"].as_i64().unwrap(), v["seq"].as_u64().unwrap()));
                        }
                        Ok((s, v)) => panic!("unexpected answer {s} {v}"),
                        // The server died mid-request: this send may or may not have been stored.
                        Err(_) => return Some((sender.to_string(), key)),
                    }
                    i += 1;
                }
            }));
        }
        // Let some sends through, then kill without warning.
        let target = (cycle + 1) * 150;
        while acked.lock().unwrap().len() < target {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.child.kill().unwrap(); // SIGKILL
        server.child.wait().unwrap();
        for s in senders {
            if let Some(u) = s.await.unwrap() {
                unknown.push(u);
            }
        }
        server = start(dir.path());
        wait_ready(&http, server.addr).await;

        let history = full_history(&http, server.addr).await;
        let seqs: Vec<u64> = history.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        assert_eq!(
            seqs,
            (1..=history.len() as u64).collect::<Vec<_>>(),
            "gap-free after restart"
        );
        let by_key: HashMap<&str, (i64, u64)> = history
            .iter()
            .map(|m| {
                (
                    m["client_msg_id"].as_str().unwrap(),
                    (m["id"].as_i64().unwrap(), m["seq"].as_u64().unwrap()),
                )
            })
            .collect();
        assert_eq!(by_key.len(), history.len(), "no duplicate client ids");
        for (key, ids) in acked.lock().unwrap().iter() {
            assert_eq!(
                by_key.get(key.as_str()),
                Some(ids),
                "acknowledged message {key} lost or changed"
            );
        }
    }

    // Retrying the sends of unknown fate stores each at most once.
    for (sender, key) in &unknown {
        let body = json!({"sender_id": sender, "text": key, "client_msg_id": key});
        let (s, _) = call(&http, server.addr, "POST", "/api/v1/channels/g/messages", body)
            .await
            .unwrap();
        assert!(s == 200 || s == 201);
    }
    let history = full_history(&http, server.addr).await;
    let keys: HashSet<&str> = history.iter().map(|m| m["client_msg_id"].as_str().unwrap()).collect();
    assert_eq!(keys.len(), history.len());
    for (_, key) in &unknown {
        assert!(keys.contains(key.as_str()));
    }
    let seqs: Vec<u64> = history.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=history.len() as u64).collect::<Vec<_>>());
    eprintln!(
        "durability: 3 kill -9 cycles, {} acknowledged messages checked, {} unknown-fate sends retried, {} stored",
        acked.lock().unwrap().len(),
        unknown.len(),
        history.len()
    );
    server.child.kill().unwrap();
    let _ = server.child.wait();
}
