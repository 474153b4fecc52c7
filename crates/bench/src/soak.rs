//! `soak`: a steady mix of the server's work for a long time, sampling its resources at a fixed interval.
//!
//! The load ([`crate::soak_load`]): acknowledged sends on several WebSockets, a large fan-out group checked
//! for order and gaps by every member, bot replies streamed from the in-process fake provider, a member that
//! keeps disconnecting and resuming, uploads attached to messages, and history reads. Every interval the
//! server's RSS, open file descriptors, WAL size and the error count are sampled and printed as a table row.
//! The run fails on any error, or when after the warm-up the last third of the samples shows RSS above the
//! first third by more than `--max-rss-drift-pct`, or more file descriptors than `--max-fd-growth` above it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};

use crate::fake_llm::{FakeConfig, FakeProvider};
use crate::rest::Api;
use crate::soak_load::{self, Counters, LoadOpts};
use crate::util::{Target, count_fds, find_server_pid, read_rss, wal_bytes};

pub struct SoakOpts {
    pub duration: Duration,
    pub sample_every: Duration,
    pub warmup: Duration,
    pub server_pid: Option<u32>,
    pub data_dir: Option<PathBuf>,
    pub provider_listen: SocketAddr,
    pub provider_name: String,
    pub load: LoadOpts,
    pub max_rss_drift_pct: f64,
    pub max_fd_growth: f64,
}

/// The server configuration the soak needs: the bots benchmark's (the fake provider, raised caps and send
/// rates), no frame rate limit for the senders, and uploads not limited per minute.
pub fn server_config(provider_name: &str, provider_listen: SocketAddr) -> String {
    let bots = crate::bots::server_config(provider_name, provider_listen)
        .replace("# confab-bench bots:", "# confab-bench soak:");
    format!("{bots}\n[websocket]\nmax_frames_per_sec = 0\n\n[uploads]\nuser_per_minute = 1000000\n")
}

/// One row of the table.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub at_s: f64,
    pub rss: Option<u64>,
    pub fds: Option<u64>,
    pub wal: Option<u64>,
    pub errors: u64,
    pub sends: u64,
    pub deliveries: u64,
    pub bot_replies: u64,
    pub resumes: u64,
    pub uploads: u64,
    pub history_reads: u64,
    pub ack_p99_ms: Option<f64>,
    pub delivery_p99_ms: Option<f64>,
}

impl Sample {
    fn json(&self) -> Value {
        json!({
            "at_s": self.at_s, "rss_bytes": self.rss, "fds": self.fds, "wal_bytes": self.wal,
            "errors": self.errors, "sends": self.sends, "deliveries": self.deliveries,
            "bot_replies": self.bot_replies, "resumes": self.resumes, "uploads": self.uploads,
            "history_reads": self.history_reads, "ack_p99_ms": self.ack_p99_ms,
            "delivery_p99_ms": self.delivery_p99_ms,
        })
    }

    fn row(&self) -> String {
        let mb = |b: Option<u64>| b.map_or("-".into(), |b| format!("{:.1}", b as f64 / 1e6));
        let opt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
        format!(
            "{:>7.0} {:>8} {:>5} {:>8} {:>6} {:>8} {:>10} {:>6} {:>7} {:>7} {:>8} {:>8} {:>8}",
            self.at_s,
            mb(self.rss),
            self.fds.map_or("-".into(), |f| f.to_string()),
            mb(self.wal),
            self.errors,
            self.sends,
            self.deliveries,
            self.bot_replies,
            self.resumes,
            self.uploads,
            self.history_reads,
            opt(self.ack_p99_ms),
            opt(self.delivery_p99_ms),
        )
    }
}

const HEADER: &str =
    "    t_s   rss_mb   fds   wal_mb errors    sends deliveries   bots resumes uploads  history  ack_p99 dlv_p99";

/// The trend over the samples after the warm-up: (RSS drift in %, fd growth), last third against first third.
pub fn trend(samples: &[Sample]) -> Option<(Option<f64>, Option<f64>)> {
    let n = samples.len();
    if n < 3 {
        return None;
    }
    let third = n / 3;
    let mean = |s: &[Sample], f: fn(&Sample) -> Option<u64>| -> Option<f64> {
        let v: Vec<u64> = s.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| v.iter().sum::<u64>() as f64 / v.len() as f64)
    };
    let (first, last) = (&samples[..third], &samples[n - third..]);
    let rss = match (mean(first, |s| s.rss), mean(last, |s| s.rss)) {
        (Some(a), Some(b)) if a > 0.0 => Some(((b - a) / a * 1000.0).round() / 10.0),
        _ => None,
    };
    let fds = match (mean(first, |s| s.fds), mean(last, |s| s.fds)) {
        (Some(a), Some(b)) => Some(((b - a) * 10.0).round() / 10.0),
        _ => None,
    };
    Some((rss, fds))
}

pub async fn run(target: &Target, api: &Api, o: &SoakOpts, out: &mut Map<String, Value>) -> Result<()> {
    let server_pid = o.server_pid.or_else(|| find_server_pid(target.addr.port()));
    out.insert("server_pid".into(), json!(server_pid));
    out.insert("duration_s".into(), json!(o.duration.as_secs_f64()));
    out.insert("sample_every_s".into(), json!(o.sample_every.as_secs_f64()));
    out.insert("warmup_s".into(), json!(o.warmup.as_secs_f64()));
    out.insert("data_dir".into(), json!(o.data_dir));
    if server_pid.is_none() {
        eprintln!("soak: the server's pid is unknown (pass --server-pid): RSS and descriptors are not sampled");
    }
    let fake = FakeProvider::start(
        o.provider_listen,
        FakeConfig {
            tokens: o.load.bot_tokens,
            interval: Duration::from_millis(10),
            first_token_delay: Duration::from_millis(20),
        },
    )?;
    let counters = Arc::new(Counters::default());
    eprintln!("soak: setting up the load…");
    let tasks = soak_load::start(target, api, &o.load, &o.provider_name, counters.clone())
        .await
        .context("setting up the soak (the server must run with `confab-bench soak --print-config`)")?;
    out.insert("load".into(), o.load.json());

    let started = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    let mut tick = tokio::time::interval(o.sample_every);
    eprintln!(
        "soak: running for {:?}, a sample every {:?}\n{HEADER}",
        o.duration, o.sample_every
    );
    loop {
        tick.tick().await;
        let at = started.elapsed();
        let (ack, delivery) = counters.take_p99s();
        let s = Sample {
            at_s: (at.as_secs_f64() * 10.0).round() / 10.0,
            rss: server_pid.and_then(read_rss),
            fds: server_pid.and_then(count_fds),
            wal: o.data_dir.as_deref().and_then(wal_bytes),
            ack_p99_ms: ack,
            delivery_p99_ms: delivery,
            ..counters.snapshot()
        };
        eprintln!("{}", s.row());
        samples.push(s);
        if at >= o.duration {
            break;
        }
    }
    // The last sample is taken: failures of the connections closing now are not the server's.
    let mut tasks = tasks;
    tasks.abort_all();
    let fake_summary = fake.summary();
    out.insert("fake_provider_requests".into(), json!(fake_summary.requests));
    out.insert(
        "samples".into(),
        Value::Array(samples.iter().map(Sample::json).collect()),
    );
    let last = samples.last().cloned().unwrap_or_default();
    out.insert("errors".into(), json!(last.errors));
    out.insert("first_errors".into(), json!(counters.first_errors()));
    for (k, v) in [
        ("sends", last.sends),
        ("deliveries", last.deliveries),
        ("bot_replies", last.bot_replies),
        ("resumes", last.resumes),
        ("uploads", last.uploads),
        ("history_reads", last.history_reads),
    ] {
        out.insert(k.into(), json!(v));
    }
    let after: Vec<Sample> = samples
        .iter()
        .filter(|s| s.at_s >= o.warmup.as_secs_f64())
        .cloned()
        .collect();
    let rss_of = |s: &Sample| s.rss.map(|r| r as f64 / 1e6);
    out.insert("rss_mb_first".into(), json!(after.first().and_then(rss_of)));
    out.insert("rss_mb_last".into(), json!(after.last().and_then(rss_of)));
    out.insert("fds_first".into(), json!(after.first().and_then(|s| s.fds)));
    out.insert("fds_last".into(), json!(after.last().and_then(|s| s.fds)));
    out.insert(
        "wal_max_bytes".into(),
        json!(samples.iter().filter_map(|s| s.wal).max()),
    );
    out.insert("max_rss_drift_pct".into(), json!(o.max_rss_drift_pct));
    out.insert("max_fd_growth".into(), json!(o.max_fd_growth));
    let Some((drift, fd_growth)) = trend(&after) else {
        bail!("only {} samples after the warm-up; at least 3 are needed", after.len());
    };
    out.insert("rss_drift_pct".into(), json!(drift));
    out.insert("fd_growth".into(), json!(fd_growth));
    eprintln!(
        "soak: {} errors; RSS drift {} % (bound {} %), fd growth {} (bound {})",
        last.errors,
        drift.map_or("-".into(), |d| d.to_string()),
        o.max_rss_drift_pct,
        fd_growth.map_or("-".into(), |d| d.to_string()),
        o.max_fd_growth
    );
    if last.errors > 0 {
        bail!("{} errors; first: {:?}", last.errors, counters.first_errors());
    }
    if let Some(d) = drift
        && d > o.max_rss_drift_pct
    {
        bail!(
            "RSS grew {d} % from the first to the last third of the run (bound {} %)",
            o.max_rss_drift_pct
        );
    }
    if let Some(g) = fd_growth
        && g > o.max_fd_growth
    {
        bail!(
            "open descriptors grew by {g} from the first to the last third (bound {})",
            o.max_fd_growth
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(rss: u64, fds: u64) -> Sample {
        Sample {
            rss: Some(rss),
            fds: Some(fds),
            ..Sample::default()
        }
    }

    #[test]
    fn trend_compares_the_last_third_with_the_first() {
        let flat = [s(100, 10), s(101, 11), s(99, 10), s(100, 10), s(102, 10), s(100, 11)];
        let (rss, fds) = trend(&flat).unwrap();
        assert_eq!(rss, Some(0.5));
        assert_eq!(fds, Some(0.0));
        let leak = [s(100, 10), s(110, 20), s(120, 30), s(130, 40), s(140, 50), s(150, 60)];
        let (rss, fds) = trend(&leak).unwrap();
        assert_eq!(rss, Some(38.1));
        assert_eq!(fds, Some(40.0));
        assert!(trend(&flat[..2]).is_none());
        let unknown = [Sample::default(), Sample::default(), Sample::default()];
        assert_eq!(trend(&unknown), Some((None, None)));
    }

    #[test]
    fn the_config_adds_to_the_bots_config() {
        let c = server_config("bench-fake", "127.0.0.1:18299".parse().unwrap());
        assert!(c.starts_with("# confab-bench soak:"));
        assert!(c.contains("max_frames_per_sec = 0") && c.contains("user_per_minute = 1000000"));
        assert!(c.contains(r#"base_url = "http://127.0.0.1:18299/v1""#));
    }
}
