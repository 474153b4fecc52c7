//! Small pure helpers (durations, URLs, `/proc` parsing) and the process-wide clock.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// The benchmark's clock origin; every embedded timestamp is relative to it (one process, one clock).
pub fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// Microseconds since [`epoch`].
pub fn now_us() -> u64 {
    us_since_epoch(Instant::now())
}

pub fn us_since_epoch(t: Instant) -> u64 {
    t.saturating_duration_since(epoch()).as_micros() as u64
}

/// Milliseconds since the Unix epoch, for unique names.
pub fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// Parses `10s`, `500ms`, `2m`, `1h`, `1.5s` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 10s, 500ms, 2m"))?;
    let secs = match unit.trim() {
        "" | "s" | "sec" | "secs" => v,
        "ms" => v / 1000.0,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        other => return Err(format!("invalid duration unit {other:?} in {s:?}: use ms, s, m or h")),
    };
    if !secs.is_finite() || !(0.0..=7.0 * 24.0 * 3600.0).contains(&secs) {
        return Err(format!("duration {s:?} out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Percent-encodes everything but RFC 3986 unreserved characters (for the `token` query parameter).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The server to load: plain HTTP on a loopback address.
#[derive(Debug, Clone)]
pub struct Target {
    /// `http://host:port` without a trailing slash.
    pub http_base: String,
    /// `ws://host:port`
    pub ws_base: String,
    pub addr: SocketAddr,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target> {
        let u = reqwest::Url::parse(url).with_context(|| format!("invalid --url {url:?}"))?;
        if u.scheme() != "http" {
            bail!("--url must be plain http://, got {url:?}");
        }
        let port = u.port_or_known_default().unwrap_or(80);
        let host = u.host_str().unwrap_or("");
        let ip = if host.eq_ignore_ascii_case("localhost") {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            match host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
                Ok(ip) => ip,
                Err(_) => bail!("--url must name a loopback address (127.0.0.0/8, [::1] or localhost), got {url:?}"),
            }
        };
        if !ip.is_loopback() {
            bail!("the benchmark only runs against loopback; {ip} is not a loopback address");
        }
        let host = match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        };
        Ok(Target {
            http_base: format!("http://{host}:{port}"),
            ws_base: format!("ws://{host}:{port}"),
            addr: SocketAddr::new(ip, port),
        })
    }
}

/// `VmRSS` of a `/proc/PID/status` text, in bytes.
pub fn parse_vmrss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut parts = line["VmRSS:".len()..].split_whitespace();
    let n: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") | None => Some(n * 1024),
        _ => None,
    }
}

pub fn read_rss(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .as_deref()
        .and_then(parse_vmrss)
}

/// Socket inodes listening on `port`, from a `/proc/net/tcp` or `/proc/net/tcp6` text.
pub fn listening_inodes(proc_net_tcp: &str, port: u16) -> Vec<u64> {
    let mut out = Vec::new();
    for line in proc_net_tcp.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[3] != "0A" {
            continue; // not LISTEN
        }
        let Some((_, port_hex)) = f[1].rsplit_once(':') else {
            continue;
        };
        if u16::from_str_radix(port_hex, 16).ok() == Some(port)
            && let Ok(inode) = f[9].parse::<u64>()
            && inode != 0
        {
            out.push(inode);
        }
    }
    out
}

/// The pid of the process named `confab…` (not this one) that listens on `port`, if one can be found (we can only see
/// the file descriptors of our own user's processes).
pub fn find_server_pid(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(f) {
            inodes.extend(listening_inodes(&text, port));
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if !comm.starts_with("confab") || pid == std::process::id() {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path())
                && wanted.iter().any(|w| link.as_os_str() == w.as_str())
            {
                return Some(pid);
            }
        }
    }
    None
}

/// Open file descriptors of a process (entries of `/proc/PID/fd`).
pub fn count_fds(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// Bytes of the SQLite write-ahead logs (`*.db-wal`, `*-wal`) directly in `dir`.
pub fn wal_bytes(dir: &std::path::Path) -> Option<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        if e.file_name().to_string_lossy().ends_with("-wal") {
            total += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    Some(total)
}

/// `(busy, total)` jiffies over all CPUs, from the first line of a `/proc/stat` text (idle and iowait are not
/// busy).
pub fn parse_proc_stat_cpu(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().next()?;
    let mut f = line.split_whitespace();
    if f.next()? != "cpu" {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest time is already in user)
    let v: Vec<u64> = f.take(8).map(|x| x.parse().ok()).collect::<Option<_>>()?;
    if v.len() < 5 {
        return None;
    }
    let total: u64 = v.iter().sum();
    Some((total - v[3] - v[4], total))
}

/// User plus system jiffies of a `/proc/PID/stat` text (fields 14 and 15; the command name may contain spaces
/// and parentheses, so fields are counted after its last `)`).
pub fn parse_pid_stat_cpu(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut f = rest.split_whitespace().skip(11); // field 3 is the first after the name
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// CPU time counters at one moment: the whole machine, this process, and the server when its pid is known.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    at: Instant,
    machine: Option<(u64, u64)>,
    bench: Option<u64>,
    server: Option<u64>,
}

impl CpuSample {
    pub fn take(server_pid: Option<u32>) -> CpuSample {
        let pid_cpu = |pid: &str| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .as_deref()
                .and_then(parse_pid_stat_cpu)
        };
        CpuSample {
            at: Instant::now(),
            machine: std::fs::read_to_string("/proc/stat")
                .ok()
                .as_deref()
                .and_then(parse_proc_stat_cpu),
            bench: pid_cpu("self"),
            server: server_pid.and_then(|p| pid_cpu(&p.to_string())),
        }
    }

    /// Cores busy on average since `earlier`: (whole machine, this process, the server, everything else).
    pub fn cores_since(&self, earlier: &CpuSample) -> CpuUse {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let hz = if hz > 0 { hz as f64 } else { 100.0 };
        let secs = self.at.saturating_duration_since(earlier.at).as_secs_f64();
        let cores = |a: Option<u64>, b: Option<u64>| -> Option<f64> {
            let (a, b) = (a?, b?);
            (secs > 0.0).then(|| ((a.saturating_sub(b)) as f64 / hz / secs * 100.0).round() / 100.0)
        };
        let machine = cores(self.machine.map(|m| m.0), earlier.machine.map(|m| m.0));
        let bench = cores(self.bench, earlier.bench);
        let server = cores(self.server, earlier.server);
        let other = match (machine, bench, server) {
            (Some(m), Some(b), Some(s)) => Some((((m - b - s) * 100.0).round() / 100.0).max(0.0)),
            _ => None,
        };
        CpuUse {
            machine,
            bench,
            server,
            other,
        }
    }
}

/// Average busy cores over an interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuUse {
    pub machine: Option<f64>,
    pub bench: Option<f64>,
    pub server: Option<f64>,
    /// Other processes (and the kernel's work not charged to a process).
    pub other: Option<f64>,
}

/// Raises the soft open-files limit to the hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> std::io::Result<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(r.rlim_cur)
}

/// Rounds microseconds to milliseconds with three decimals.
pub fn us_to_ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Events per second over `elapsed`, rounded to one decimal; `None` for an empty interval.
pub fn per_sec(count: u64, elapsed: Duration) -> Option<f64> {
    let s = elapsed.as_secs_f64();
    (s > 0.0).then(|| (count as f64 / s * 10.0).round() / 10.0)
}

/// Milliseconds of a duration with three decimals.
pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn targets_are_loopback_only() {
        let t = Target::parse("http://127.0.0.1:18181").unwrap();
        assert_eq!(t.http_base, "http://127.0.0.1:18181");
        assert_eq!(t.ws_base, "ws://127.0.0.1:18181");
        assert_eq!(t.addr, "127.0.0.1:18181".parse().unwrap());
        assert_eq!(
            Target::parse("http://localhost:80/").unwrap().addr,
            "127.0.0.1:80".parse().unwrap()
        );
        assert_eq!(Target::parse("http://[::1]:9").unwrap().ws_base, "ws://[::1]:9");
        assert!(Target::parse("http://10.0.0.1:8080").is_err());
        assert!(Target::parse("http://example.com").is_err());
        assert!(Target::parse("https://127.0.0.1").is_err());
    }

    #[test]
    fn percent_encoding() {
        assert_eq!(percent_encode("cfs_ab12"), "cfs_ab12");
        assert_eq!(percent_encode("a+b/c"), "a%2Bb%2Fc");
    }

    #[test]
    fn proc_parsing() {
        let status = "Name:\tconfab\nVmPeak:\t  100 kB\nVmRSS:\t   2048 kB\nThreads:\t3\n";
        assert_eq!(parse_vmrss(status), Some(2048 * 1024));
        assert_eq!(parse_vmrss("Name:\tx\n"), None);
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:4705 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 123456 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:4705 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1000        0 123457 1 0000000000000000 20 4 30 10 -1\n\
   2: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 999 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(listening_inodes(tcp, 18181), vec![123456]);
        assert_eq!(listening_inodes(tcp, 8080), vec![999]);
        assert!(listening_inodes(tcp, 1).is_empty());
        assert!(count_fds(std::process::id()).unwrap() >= 3);
        let dir = std::env::temp_dir().join(format!("confab-bench-wal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("confab.db-wal"), [0u8; 100]).unwrap();
        std::fs::write(dir.join("confab.db"), [0u8; 7]).unwrap();
        assert_eq!(wal_bytes(&dir), Some(100));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cpu_counters() {
        let stat = "cpu  100 5 50 1000 20 1 2 3 0 0\ncpu0 50 2 25 500 10 0 1 1 0 0\n";
        assert_eq!(parse_proc_stat_cpu(stat), Some((161, 1181)));
        assert_eq!(parse_proc_stat_cpu("intr 1 2\n"), None);
        let pid = "1234 (tokio (rt) worker) S 1 2 3 4 5 6 7 8 9 10 150 25 0 0 20 0 4 0";
        assert_eq!(parse_pid_stat_cpu(pid), Some(175));
        assert_eq!(parse_pid_stat_cpu("garbage"), None);
        let a = CpuSample::take(None);
        let b = CpuSample::take(None);
        let u = b.cores_since(&a);
        assert_eq!(u.server, None);
        assert_eq!(u.other, None);
    }

    #[test]
    fn rates_and_units() {
        assert_eq!(per_sec(100, Duration::from_secs(4)), Some(25.0));
        assert_eq!(per_sec(1, Duration::ZERO), None);
        assert_eq!(ms(Duration::from_micros(1500)), 1.5);
        assert_eq!(us_to_ms(2500), 2.5);
    }
}
