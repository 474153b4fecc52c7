//! Two real `confab` processes while their dependencies restart under load: a PostgreSQL server of the
//! test's own (Debian's binaries, a data dir in a temporary directory) stopped like a crash and started
//! again, and a nats-server of the test's own killed and started again on its port. No acknowledged
//! message is lost, writes are refused (never acknowledged) while the database is down, each node is
//! ready again soon after the dependency's return, and a WebSocket client resumes without a gap. Skipped
//! visibly without the binaries, unless `CONFAB_REQUIRE_POSTGRES=1` / `CONFAB_REQUIRE_NATS=1`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::cluster::{nats_url, skip_without_nats};
use crate::cluster_crash::{
    Nodes, Shared, bob_follows, check_history, expect_followed, history, session_socket, start_nodes,
};
use crate::durability::call;
use crate::helpers::{close_code, skip_unless_required};

/// A port free right now on loopback (for a server that must come back on the same one).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs a PostgreSQL binary as the `postgres` account when this is root (the server refuses root).
fn pg_command(bin: &Path, as_postgres: bool) -> Command {
    if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

/// A PostgreSQL server of one test: its own data dir and port, stopped and started at will.
struct PrivatePostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    as_postgres: bool,
}

impl PrivatePostgres {
    /// `None` (after a visible skip line) without Debian's PostgreSQL binaries.
    fn start() -> Option<PrivatePostgres> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).max())
            .filter(|b| b.join("pg_ctl").exists());
        let Some(bin) = bin else {
            skip_unless_required(
                "CONFAB_REQUIRE_POSTGRES",
                "PostgreSQL's server binaries are not in /usr/lib/postgresql",
                "scripts/services.sh",
            );
            return None;
        };
        let as_postgres = is_root();
        let dir = tempfile::tempdir().unwrap();
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown the data dir to postgres");
        }
        let data = dir.path().join("data");
        let out = pg_command(&bin.join("initdb"), as_postgres)
            .args(["-U", "root", "--auth=trust", "-E", "UTF8", "--no-instructions", "-D"])
            .arg(&data)
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        let pg = PrivatePostgres {
            bin,
            dir,
            port: free_port(),
            as_postgres,
        };
        pg.up();
        Some(pg)
    }

    fn url(&self) -> String {
        format!("postgres://root@127.0.0.1:{}/postgres", self.port)
    }

    fn pg_ctl(&self, args: &[&str]) {
        let out = pg_command(&self.bin.join("pg_ctl"), self.as_postgres)
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn up(&self) {
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c max_connections=50",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log");
        self.pg_ctl(&["-w", "-t", "30", "-o", &opts, "-l", log.to_str().unwrap(), "start"]);
    }

    /// Stops the server as a crash would: no checkpoint, recovery from the WAL on the next start.
    fn crash(&self) {
        self.pg_ctl(&["-w", "-m", "immediate", "stop"]);
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = pg_command(&self.bin.join("pg_ctl"), self.as_postgres)
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A nats-server of one test, on a port it keeps across restarts.
struct PrivateNats {
    port: u16,
    child: Option<Child>,
}

impl PrivateNats {
    fn start() -> Option<PrivateNats> {
        let found = Command::new("nats-server").arg("--version").output().is_ok();
        if !found {
            skip_unless_required(
                "CONFAB_REQUIRE_NATS",
                "nats-server is not installed",
                "scripts/services.sh",
            );
            return None;
        }
        let mut nats = PrivateNats {
            port: free_port(),
            child: None,
        };
        nats.up();
        Some(nats)
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn up(&mut self) {
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Load on `g` through every node: each sender retries a send until it is acknowledged, under the same
/// client id, so a refused or lost attempt is neither lost nor doubled. Counts refusals.
struct Load {
    acked: Arc<Mutex<HashMap<String, (i64, u64)>>>,
    refused: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    senders: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(http: &reqwest::Client, nodes: &[SocketAddr]) -> Load {
        let acked: Arc<Mutex<HashMap<String, (i64, u64)>>> = Arc::default();
        let refused = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut senders = Vec::new();
        for (w, addr) in nodes.iter().copied().enumerate() {
            let (http, acked, refused, stop) = (http.clone(), acked.clone(), refused.clone(), stop.clone());
            senders.push(tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("w{w}-{i}");
                    let body = json!({"sender_id": "alice", "text": key, "client_msg_id": key});
                    loop {
                        match call(&http, addr, "POST", "/api/v1/channels/g/messages", body.clone()).await {
                            Ok((s, v)) if s == 201 || s == 200 => {
                                let ids = (v["id"].as_i64().unwrap(), v["seq"].as_u64().unwrap());
                                acked.lock().unwrap().insert(key.clone(), ids);
                                break;
                            }
                            Ok((503, _)) | Err(_) => {
                                refused.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            Ok((s, v)) => panic!("unexpected answer {s} {v}"),
                        }
                    }
                    i += 1;
                }
            }));
        }
        Load {
            acked,
            refused,
            stop,
            senders,
        }
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    async fn until_acked(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.acked() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} sends acknowledged",
                self.acked()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn finish(self) -> HashMap<String, (i64, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        for s in self.senders {
            s.await.unwrap();
        }
        self.acked.lock().unwrap().clone()
    }
}

/// Polls every node's `/readyz` until all answer 200; how long that took.
async fn all_ready(http: &reqwest::Client, nodes: &[SocketAddr], within: Duration) -> Duration {
    let start = Instant::now();
    for addr in nodes {
        loop {
            let ok = http
                .get(format!("http://{addr}/readyz"))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ok {
                break;
            }
            assert!(start.elapsed() < within, "node {addr} not ready within {within:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    start.elapsed()
}

/// How long a node may take to be ready again once its dependency is back. The requirement is 5 s; the
/// bound leaves room for a loaded test machine, and the figure measured is printed.
const BACK_WITHIN: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_restart_mid_load_loses_nothing_and_the_nodes_come_back() {
    if skip_without_nats().await {
        return;
    }
    let Some(pg) = PrivatePostgres::start() else { return };
    let shared = Shared {
        postgres_url: pg.url(),
        nats_url: nats_url(),
        prefix: format!("confab-test-{:016x}", rand::random::<u64>()),
    };
    let Nodes {
        servers: _servers,
        dirs: _dirs,
        addrs,
        http,
    } = start_nodes(&shared, 2, &[]).await;
    let (follower, seen, until) = bob_follows(&http, addrs[0], vec![addrs[1]]).await;
    // Alice is online through node b; her session closes while the database is away.
    let mut alice_on_b = session_socket(&http, addrs[0], addrs[1], "alice").await;
    let online = async || {
        let (s, v) = call(&http, addrs[0], "GET", "/api/v1/users/alice", serde_json::Value::Null)
            .await
            .unwrap();
        assert_eq!(s, 200, "{v}");
        v["online"].as_bool().unwrap()
    };
    assert!(online().await);

    let load = Load::start(&http, &addrs);
    load.until_acked(200).await;
    pg.crash();
    let during = load.acked();
    // Writes are refused while the database is down (the senders count the refusals and retry).
    let deadline = Instant::now() + Duration::from_secs(30);
    while load.refused.load(Ordering::Relaxed) < 10 {
        assert!(Instant::now() < deadline, "no write refused while PostgreSQL is down");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(load.acked() <= during + 2, "acknowledged while the database was down");
    // The server closes it once the close is handled (its presence write failing meanwhile).
    alice_on_b.send(Message::Binary(vec![1].into())).await.unwrap();
    assert_eq!(close_code(&mut alice_on_b, Duration::from_secs(60)).await, Some(1002));
    pg.up();
    let back = all_ready(&http, &addrs, BACK_WITHIN).await;
    // The store learns what it missed: alice is offline on every node.
    let deadline = Instant::now() + Duration::from_secs(15);
    while online().await {
        assert!(
            Instant::now() < deadline,
            "alice still online after the database came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    load.until_acked(load.acked() + 200).await;
    let refused = load.refused.load(Ordering::Relaxed);
    let acked = load.finish().await;

    let history = history(&http, addrs[0]).await;
    check_history(&history, &acked);
    expect_followed(follower, &until, &seen, history.len() as u64).await;
    eprintln!(
        "postgres restart: {} sends acknowledged, {refused} attempts refused while down, both nodes ready {} ms \
         after the database was back",
        acked.len(),
        back.as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_mid_load_loses_nothing_and_sessions_resynchronize() {
    use confab_store_postgres::testing::{TestSchema, skip_without_postgres};
    if skip_without_postgres().await {
        return;
    }
    let Some(mut nats) = PrivateNats::start() else { return };
    let schema = TestSchema::create().await;
    let shared = Shared {
        postgres_url: schema.url(),
        nats_url: nats.url(),
        prefix: "confab-test".into(),
    };
    let Nodes {
        servers: _servers,
        dirs: _dirs,
        addrs,
        http,
    } = start_nodes(&shared, 2, &[]).await;
    // Bob follows on node b; every message is sent through node a, so each reaches him through NATS (or
    // through the store, after a resync).
    let (follower, seen, until) = bob_follows(&http, addrs[0], vec![addrs[1]]).await;
    let load = Load::start(&http, &addrs[..1]);
    load.until_acked(200).await;
    nats.kill();
    // Sends go on while the bus is away: the store is the source of truth.
    load.until_acked(load.acked() + 100).await;
    nats.up();
    let returned = Instant::now();
    // Node b is caught up once bob's client sees a message sent after NATS came back.
    let marker = load.acked() + 20;
    load.until_acked(marker).await;
    let acked_so_far = load.acked.lock().unwrap().values().map(|(_, seq)| *seq).max().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.lock().unwrap().last().copied().unwrap_or(0) < acked_so_far {
        assert!(
            Instant::now() < deadline,
            "bob's client does not catch up after NATS returned"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let caught_up = returned.elapsed();
    let acked = load.finish().await;

    let history = history(&http, addrs[0]).await;
    check_history(&history, &acked);
    expect_followed(follower, &until, &seen, history.len() as u64).await;
    all_ready(&http, &addrs, BACK_WITHIN).await;
    eprintln!(
        "nats restart: {} sends acknowledged, bob's client on the other node caught up {} ms after NATS was back",
        acked.len(),
        caught_up.as_millis()
    );
}
