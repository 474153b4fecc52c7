//! `connections`: many idle, authenticated WebSocket sessions held open, and the server's memory per session.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures_util::StreamExt;
use serde_json::{Map, Value, json};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::rest::Api;
use crate::util::{Target, find_server_pid, ms, per_sec, raise_nofile_limit, read_rss, unix_ms};
use crate::ws::{self, MAX_CONCURRENT_HANDSHAKES, describe_close};

pub struct ConnOpts {
    pub count: usize,
    pub hold: Duration,
    pub server_pid: Option<u32>,
    pub sessions_per_user: usize,
    /// Source addresses to spread connections over (127.0.0.2, 127.0.0.3, …); 0 picks automatically.
    pub source_addrs: usize,
}

/// Connections per source address before another one is used (the ephemeral port range holds ~28,000).
const CONNECTIONS_PER_SOURCE: usize = 15_000;
/// File descriptors kept free for everything else.
const FD_RESERVE: u64 = 100;

/// Loopback source addresses to bind to: none (let the kernel choose) or 127.0.0.2, 127.0.0.3, …
pub fn source_addresses(target: &Target, count: usize, requested: usize) -> Vec<IpAddr> {
    let is_v4_loopback = matches!(target.addr.ip(), IpAddr::V4(v4) if v4.is_loopback());
    let n = if requested > 0 {
        requested
    } else if count > CONNECTIONS_PER_SOURCE {
        count.div_ceil(CONNECTIONS_PER_SOURCE)
    } else {
        0
    };
    if !is_v4_loopback {
        return Vec::new();
    }
    (0..n.min(250))
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8)))
        .collect()
}

pub async fn run(target: &Target, api: &Api, o: &ConnOpts, out: &mut Map<String, Value>) -> Result<()> {
    let nofile = raise_nofile_limit().map_err(|e| anyhow::anyhow!("raising the open-files limit: {e}"))?;
    out.insert("client_fd_limit".into(), json!(nofile));
    if o.count as u64 + FD_RESERVE > nofile {
        bail!(
            "{} connections need about {} file descriptors, but this process may open only {nofile} (ulimit -n)",
            o.count,
            o.count as u64 + FD_RESERVE
        );
    }
    let pid = o.server_pid.or_else(|| find_server_pid(target.addr.port()));
    out.insert("connections_requested".into(), json!(o.count));
    out.insert("server_pid".into(), json!(pid));
    if pid.is_none() {
        let note = "server pid unknown: pass --server-pid (no process named confab listening on the port was found)";
        eprintln!("connections: {note}");
        out.insert("note".into(), json!(note));
    }

    let prefix = format!("b{}", unix_ms());
    let users: Vec<String> = (0..o.count.div_ceil(o.sessions_per_user))
        .map(|i| format!("{prefix}-c{i}"))
        .collect();
    out.insert("users".into(), json!(users.len()));
    out.insert("sessions_per_user".into(), json!(o.sessions_per_user));
    let t = Instant::now();
    eprintln!("connections: creating {} users…", users.len());
    let tokens = api.users_with_tokens(&users).await?;
    out.insert("setup_ms".into(), json!(ms(t.elapsed())));

    let sources = source_addresses(target, o.count, o.source_addrs);
    out.insert(
        "source_addresses".into(),
        json!(sources.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
    );
    // Give the server a moment after setup, then take the baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = pid.and_then(read_rss);
    out.insert("server_rss_bytes_before".into(), json!(rss_before));

    let t = Instant::now();
    let closed = Arc::new(AtomicU64::new(0));
    let close_codes: Arc<std::sync::Mutex<BTreeMap<String, u64>>> = Default::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let (opened_tx, mut opened_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_HANDSHAKES));
    let mut tasks = JoinSet::new();
    for i in 0..o.count {
        let token = tokens[i / o.sessions_per_user].clone();
        let source = (!sources.is_empty()).then(|| sources[i % sources.len()]);
        let (permits, target, opened_tx, closed, close_codes, mut stop) = (
            permits.clone(),
            target.clone(),
            opened_tx.clone(),
            closed.clone(),
            close_codes.clone(),
            stop_rx.clone(),
        );
        tasks.spawn(async move {
            let mut ws = match ws::open_limited(&permits, &target, &token, source, ws::idle_config()).await {
                Ok(ws) => {
                    let _ = opened_tx.send(Ok(()));
                    ws
                }
                Err(e) => {
                    let _ = opened_tx.send(Err(format!("{e:#}")));
                    return;
                }
            };
            drop(opened_tx);
            // Idle, but keep reading so pings are answered and a close is noticed.
            let ended = loop {
                let m = tokio::select! {
                    biased;
                    _ = stop.changed() => break None,
                    m = ws.next() => m,
                };
                match m {
                    Some(Ok(Message::Close(f))) => break Some(describe_close(f.as_ref())),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break Some(format!("error: {e}")),
                    None => break Some("connection ended".to_string()),
                }
            };
            match ended {
                Some(why) => {
                    closed.fetch_add(1, Ordering::Relaxed);
                    *close_codes
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(why)
                        .or_insert(0) += 1;
                }
                None => {
                    let _ = tokio::time::timeout(Duration::from_secs(5), ws.close(None)).await;
                }
            }
        });
    }
    drop(opened_tx);

    let (mut opened, mut failed) = (0u64, 0u64);
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    while let Some(r) = opened_rx.recv().await {
        match r {
            Ok(()) => opened += 1,
            Err(e) => {
                if failed == 0 {
                    eprintln!("connections: first failure: {e}");
                }
                failed += 1;
                *failures.entry(e).or_insert(0) += 1;
            }
        }
        let done = opened + failed;
        if done % 1000 == 0 || done == o.count as u64 {
            eprintln!("connections: {opened} open, {failed} failed of {}", o.count);
        }
    }
    let open_elapsed = t.elapsed();
    out.insert("connect_ms".into(), json!(ms(open_elapsed)));
    out.insert("connections_per_sec".into(), json!(per_sec(opened, open_elapsed)));
    out.insert("connections_failed".into(), json!(failed));
    if !failures.is_empty() {
        out.insert("connection_failures".into(), json!(failures));
    }
    let rss_open = pid.and_then(read_rss);
    out.insert("server_rss_bytes_after_open".into(), json!(rss_open));

    eprintln!("connections: holding {opened} connections for {:?}…", o.hold);
    tokio::time::sleep(o.hold).await;
    let rss_after = pid.and_then(read_rss);
    let closed_during_hold = closed.load(Ordering::Relaxed);
    let open_now = opened.saturating_sub(closed_during_hold);
    out.insert("hold_ms".into(), json!(ms(o.hold)));
    out.insert("connections_open".into(), json!(open_now));
    out.insert("connections_closed_by_server".into(), json!(closed_during_hold));
    let codes = close_codes.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if !codes.is_empty() {
        out.insert("server_close_reasons".into(), json!(codes));
    }
    out.insert("server_rss_bytes_after".into(), json!(rss_after));
    let per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) if open_now > 0 => Some((a.saturating_sub(b)) / open_now),
        _ => None,
    };
    out.insert("rss_bytes_per_connection".into(), json!(per_conn));
    out.insert("bench_rss_bytes".into(), json!(read_rss(std::process::id())));

    eprintln!("connections: closing…");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(20), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;

    if open_now < o.count as u64 {
        bail!(
            "only {open_now} of {} connections were open at the end ({failed} failed to open, {closed_during_hold} \
             closed by the server)",
            o.count
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_only_when_needed_and_on_ipv4_loopback() {
        let t = Target::parse("http://127.0.0.1:1").unwrap();
        assert!(source_addresses(&t, 2000, 0).is_empty());
        let s = source_addresses(&t, 19_000, 0);
        assert_eq!(
            s,
            vec!["127.0.0.2".parse::<IpAddr>().unwrap(), "127.0.0.3".parse().unwrap()]
        );
        assert_eq!(source_addresses(&t, 10, 3).len(), 3);
        let v6 = Target::parse("http://[::1]:1").unwrap();
        assert!(source_addresses(&v6, 19_000, 0).is_empty());
    }
}
