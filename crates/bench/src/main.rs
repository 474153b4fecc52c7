//! `confab-bench`: a load generator for a Confab server on the loopback interface.
//!
//! It creates its own users and channels with the master token (names prefixed `b<unix-ms>-`, so reruns
//! against the same server do not collide), drives WebSocket sessions, prints progress on stderr, and ends
//! with one JSON object on the last stdout line. Every run is bounded in size and time; a failed check
//! (a missed or reordered message, an error frame, a closed connection, the global timeout) exits non-zero
//! with `"ok":false` and the error. The `bots` subcommand also runs a fake LLM provider in-process (see
//! [`fake_llm`]), which the server must be configured to use (`confab-bench bots --print-config`).

mod bots;
mod connections;
mod fake_llm;
mod fanout;
mod local_model;
mod rest;
mod scan;
mod send;
mod slow_consumer;
mod soak;
mod soak_load;
mod stats;
mod util;
mod webhook_sink;
mod ws;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::{Map, Value, json};

use crate::util::{Target, ms, parse_duration};

pub const RATE_LIMIT_HINT: &str = "hint: the server rate-limits sends per user (default 10/s, burst 20) and \
     frames per WebSocket session (default 30/s, burst 60); start it with CONFAB_LIMITS__USER_SEND_PER_SEC=1000000 \
     CONFAB_LIMITS__USER_SEND_BURST=1000000 CONFAB_WEBSOCKET__MAX_FRAMES_PER_SEC=0 for benchmarks";

#[derive(Parser, Debug)]
#[command(
    name = "confab-bench",
    version,
    about = "Load generator for a Confab server on loopback"
)]
struct Cli {
    /// Base URL of the server (plain http on a loopback address).
    #[arg(long, global = true, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Several nodes of one cluster (comma-separated base URLs): the fan-out's receiving members and the
    /// send clients connect to them in turn, while setup and the fan-out's publisher use `--url`. With
    /// `--url A --nodes B`, every delivery crosses from node A to node B.
    #[arg(long, global = true, value_delimiter = ',')]
    nodes: Vec<String>,
    /// The server's master API token, used to create the benchmark's users and channels.
    #[arg(long, global = true, env = "CONFAB_API_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Worker threads of the client runtime (1 does best on a 2-core machine shared with the server).
    #[arg(long, global = true, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    threads: u16,
    /// The whole run (setup included) fails after this long.
    #[arg(long, global = true, default_value = "120s", value_parser = parse_duration)]
    timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// One group, N receiving members on their own WebSockets, one publisher: delivery throughput or latency.
    Fanout(FanoutArgs),
    /// Many clients sending with a window of unacknowledged sends: durable send throughput and ack latency.
    Send(SendArgs),
    /// Many idle authenticated WebSockets held open: the server's memory per connection.
    Connections(ConnectionsArgs),
    /// Concurrent bot conversations against a built-in fake LLM provider: server overhead, relay, stop.
    ///
    /// The benchmark runs its own OpenAI-compatible fake provider on --provider-listen, streaming --tokens
    /// tokens per reply every --token-interval-ms. The server must use it as a provider, with its caps on
    /// concurrent replies raised; start it with this configuration (printed by --print-config, also on stderr
    /// at every run; the caps allow any --streams up to 10000):
    ///
    ///     # confab-bench bots: run the server with this file (confab serve --config FILE).
    ///     [limits]
    ///     user_send_per_sec = 1000000
    ///     user_send_burst = 1000000
    ///
    ///     [bot_runtime]
    ///     max_concurrent_replies = 10000
    ///     user_triggers_per_minute = 1000000
    ///
    ///     [[providers]]
    ///     name = "bench-fake"
    ///     kind = "openai_compatible"
    ///     base_url = "http://127.0.0.1:18299/v1"
    ///     model = "confab-bench-fake"
    ///     max_concurrency = 10000
    ///
    /// e.g. confab-bench bots --print-config > bots.toml;
    ///      CONFAB_API_TOKEN=... confab serve --listen 127.0.0.1:18181 --data-dir /tmp/b --config bots.toml;
    ///      confab-bench --url http://127.0.0.1:18181 bots --streams 1000
    ///
    /// Phase 1: each of --streams users sends one message to the bot in its direct channel, all at once (or
    /// spread over --ramp); every reply must stream all tokens in order and end `complete`. Measured: overhead
    /// = client TTFT (trigger sent -> first delta) - provider TTFT (request arrived -> first token written),
    /// and the relay delay of every token (written by the fake -> received by the client). Phase 2: the
    /// first --stop-streams conversations send another message and a `stop` frame after --stop-after deltas;
    /// the reply must end `stopped`, and stop -> upstream disconnect is measured at the fake. A lost reply or
    /// a wrong final state or text fails the run. With --stop-during-streams, the first --stop-streams
    /// conversations of phase 1 are stopped instead (stop under the full load), and there is no phase 2.
    #[command(verbatim_doc_comment)]
    Bots(BotsArgs),
    /// The built-in model's speed beside llama.cpp's llama-server on the same GGUF and threads (no server).
    ///
    /// Both are driven through Confab's provider interface: prompt processing and generation tokens/s and
    /// time to first token, for one conversation and for --concurrent at once. Threads: CANDLE_NUM_THREADS
    /// (default all cores), also given to llama-server as -t.
    LocalModel(local_model::LocalModelArgs),
    /// A long steady mix (acknowledged sends, a large fan-out group, bot replies against the built-in fake
    /// provider, reconnects with resume, uploads, history reads) while sampling the server's RSS, open file
    /// descriptors, WAL size and the error count every --sample-every. Fails on any error, or when the last
    /// third of the samples after --warmup is above the first third by more than --max-rss-drift-pct (RSS)
    /// or --max-fd-growth (descriptors). The server must run with `confab-bench soak --print-config`.
    Soak(SoakArgs),
    /// Delivery p99 of a busy group's members in runs cycling through: without one more member, with it
    /// reading, with its session never reading (it must be closed with 4008). Needs the send rates raised (see `bots
    /// --print-config`'s [limits], and CONFAB_WEBSOCKET__MAX_FRAMES_PER_SEC=0).
    SlowConsumer(SlowConsumerArgs),
    /// A member offline while --messages arrive in its channels resumes: time from connect to `resumed`,
    /// every message checked in order and without gaps.
    Catchup(CatchupArgs),
}

#[derive(Args, Debug)]
struct SoakArgs {
    /// How long to run.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    duration: Duration,
    /// Sample the server's resources this often.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    sample_every: Duration,
    /// Samples before this are shown but left out of the trend (default: a fifth of --duration).
    #[arg(long, value_parser = parse_duration)]
    warmup: Option<Duration>,
    /// The server's pid (found automatically when a process named `confab` of this user listens on the port).
    #[arg(long)]
    server_pid: Option<u32>,
    /// The server's data dir, for the size of its write-ahead log.
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// Loopback address of the built-in fake provider (the server's provider `base_url` points here).
    #[arg(long, default_value = "127.0.0.1:18299")]
    provider_listen: SocketAddr,
    #[arg(long, default_value = "bench-fake")]
    provider_name: String,
    /// WebSockets sending acknowledged messages, each to its own group.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    senders: u32,
    /// Messages per second over all senders.
    #[arg(long, default_value_t = 50.0, value_parser = parse_rate)]
    send_rate: f64,
    /// Receiving members of the fan-out group.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=20_000))]
    fanout_members: u32,
    /// Messages per second into the fan-out group.
    #[arg(long, default_value_t = 5.0, value_parser = parse_rate)]
    fanout_rate: f64,
    /// One bot question this often (its reply streams --bot-tokens tokens).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    bot_every: Duration,
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    bot_tokens: u32,
    /// A fan-out member leaves this often and resumes a second later.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    reconnect_every: Duration,
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    upload_every: Duration,
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    history_every: Duration,
    #[arg(long, default_value_t = 10.0)]
    max_rss_drift_pct: f64,
    #[arg(long, default_value_t = 16.0)]
    max_fd_growth: f64,
    /// Print the server configuration the soak needs (TOML) and exit.
    #[arg(long)]
    print_config: bool,
}

impl SoakArgs {
    fn opts(&self) -> soak::SoakOpts {
        soak::SoakOpts {
            duration: self.duration,
            sample_every: self.sample_every,
            warmup: self.warmup.unwrap_or(self.duration / 5),
            server_pid: self.server_pid,
            data_dir: self.data_dir.clone(),
            provider_listen: self.provider_listen,
            provider_name: self.provider_name.clone(),
            load: soak_load::LoadOpts {
                senders: self.senders as usize,
                send_rate: self.send_rate,
                fanout_members: self.fanout_members as usize,
                fanout_rate: self.fanout_rate,
                bot_every: self.bot_every,
                bot_tokens: self.bot_tokens,
                reconnect_every: self.reconnect_every,
                upload_every: self.upload_every,
                history_every: self.history_every,
            },
            max_rss_drift_pct: self.max_rss_drift_pct,
            max_fd_growth: self.max_fd_growth,
        }
    }
}

#[derive(Args, Debug)]
struct SlowConsumerArgs {
    /// Reading members of the group (the publisher and the stalled reader are two more).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    members: u32,
    /// Messages per second the publisher sends.
    #[arg(long, default_value_t = 200.0, value_parser = parse_rate)]
    rate: f64,
    /// Messages per run (enough to fill the stalled reader's queue: `websocket.queue_frames`, default 1024).
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    messages: u64,
    /// Bytes of padding per message.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    size: u64,
    /// Runs, cycling through: without the extra member, with it reading, with it stalled (a multiple of 3
    /// gives each the same number of runs).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(3..=100))]
    runs: u32,
}

#[derive(Args, Debug)]
struct CatchupArgs {
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    messages: u64,
    /// The offline member's channels the messages are spread over.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    channels: u32,
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    runs: u32,
}

#[derive(Args, Debug)]
struct FanoutArgs {
    /// Receiving members, each on its own WebSocket (the publisher is one more member of the group).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=50_000))]
    members: u32,
    /// Messages the publisher sends.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    messages: u64,
    /// Unacknowledged sends kept in flight (ignored with --rate). One publisher with a window of 64 stands for
    /// the many concurrent senders a busy server has.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    window: u32,
    /// Send at this fixed rate (messages/s) and measure latency from the scheduled send times.
    #[arg(long, value_parser = parse_rate)]
    rate: Option<f64>,
    /// After the publisher's last ack, every member must have every message within this time.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    drain: Duration,
}

#[derive(Args, Debug)]
struct SendArgs {
    /// Clients, each a user with its own WebSocket and its own group.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    clients: u32,
    /// How long to send.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Unacknowledged sends per client.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    window: u32,
    /// After the duration, outstanding sends must be answered within this time.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    drain: Duration,
    /// Listen on this loopback address as a webhook endpoint for `message.sent` (registered through the admin
    /// API; the server must allow loopback in `[webhooks] allow_private`) and report how many events arrive
    /// and how long after the last send.
    #[arg(long)]
    webhook_sink: Option<std::net::SocketAddr>,
}

#[derive(Args, Debug)]
struct ConnectionsArgs {
    /// Idle WebSocket sessions to open.
    #[arg(long, default_value_t = 19_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    count: u32,
    /// How long to hold them open.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    hold: Duration,
    /// The server's pid, to read its RSS from /proc/PID/status (found automatically when a process named
    /// `confab` of this user listens on the port).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Sessions per user (each user gets one session token, shared by its connections). The server allows
    /// `websocket.max_sessions_per_user` (default 10).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    sessions_per_user: u32,
    /// Spread connections over this many source addresses 127.0.0.2, 127.0.0.3, … (0: automatic, one per
    /// 15,000 connections when more than 15,000).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=250))]
    source_addrs: u32,
}

#[derive(Args, Debug)]
struct BotsArgs {
    /// Concurrent conversations: each a user with its own WebSocket and direct channel with the bot.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=bots::MAX_STREAMS as i64))]
    streams: u32,
    /// Conversations of the stop phase (0: none; default 100, or --streams when fewer); each reply is stopped
    /// after --stop-after deltas.
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=bots::MAX_STREAMS as i64))]
    stop_streams: Option<u32>,
    /// Deltas a stop-phase conversation receives before it sends `stop` (less than --tokens).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    stop_after: u32,
    /// Tokens (content chunks) the fake provider streams per reply.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    tokens: u32,
    /// Milliseconds between two tokens of a reply.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    token_interval_ms: u64,
    /// Milliseconds from the upstream request to the first token (default: one token interval).
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    first_token_ms: Option<u64>,
    /// Loopback address of the built-in fake provider (the server's provider `base_url` points here).
    #[arg(long, default_value = "127.0.0.1:18299")]
    provider_listen: SocketAddr,
    /// The provider's name in the server configuration.
    #[arg(long, default_value = "bench-fake")]
    provider_name: String,
    /// Spread each phase's triggers evenly over this time (0: all at once).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    ramp: Duration,
    /// A reply must reach its final state within the time its tokens take plus this.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    drain: Duration,
    /// Stop the first --stop-streams replies during the streams phase (under the full load) instead of in a
    /// phase of their own afterwards.
    #[arg(long)]
    stop_during_streams: bool,
    /// The server's pid, for its CPU use (found automatically when a process named `confab` of this user
    /// listens on the port).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Print the server configuration this benchmark needs (TOML) and exit.
    #[arg(long)]
    print_config: bool,
}

impl BotsArgs {
    fn stop_streams(&self) -> u32 {
        self.stop_streams.unwrap_or(DEFAULT_STOP_STREAMS.min(self.streams))
    }

    fn opts(&self) -> bots::BotsOpts {
        let interval = Duration::from_millis(self.token_interval_ms);
        bots::BotsOpts {
            streams: self.streams as usize,
            stop_streams: self.stop_streams() as usize,
            stop_after: self.stop_after,
            tokens: self.tokens,
            token_interval: interval,
            first_token_delay: self.first_token_ms.map_or(interval, Duration::from_millis),
            provider_listen: self.provider_listen,
            provider_name: self.provider_name.clone(),
            ramp: self.ramp,
            drain: self.drain,
            stop_during_streams: self.stop_during_streams,
            server_pid: self.server_pid,
        }
    }
}

const DEFAULT_STOP_STREAMS: u32 = 100;

fn parse_rate(s: &str) -> Result<f64, String> {
    let r: f64 = s.parse().map_err(|_| format!("invalid rate {s:?}"))?;
    if !(r > 0.0 && r <= 1_000_000.0) {
        return Err("rate must be between 0 and 1,000,000 messages/s".into());
    }
    Ok(r)
}

const MAX_DURATION: Duration = Duration::from_secs(3600);
const MAX_SOAK: Duration = Duration::from_secs(24 * 3600);

impl Command {
    fn name(&self) -> &'static str {
        match self {
            Command::Fanout(_) => "fanout",
            Command::Send(_) => "send",
            Command::Connections(_) => "connections",
            Command::Bots(_) => "bots",
            Command::LocalModel(_) => "local-model",
            Command::Soak(_) => "soak",
            Command::SlowConsumer(_) => "slow-consumer",
            Command::Catchup(_) => "catchup",
        }
    }

    fn check(&self, timeout: Duration) -> Result<()> {
        let max = if matches!(self, Command::Soak(_)) {
            MAX_SOAK
        } else {
            MAX_DURATION
        };
        if timeout.is_zero() || timeout > max {
            bail!("--timeout must be between 1s and 1h (24h for soak)");
        }
        match self {
            Command::Fanout(a) => {
                if a.drain > MAX_DURATION {
                    bail!("--drain must be at most 1h");
                }
                if let Some(r) = a.rate
                    && a.messages as f64 / r > timeout.as_secs_f64()
                {
                    bail!(
                        "{} messages at {r}/s take longer than --timeout {timeout:?}",
                        a.messages
                    );
                }
            }
            Command::Send(a) => {
                if a.webhook_sink.is_some_and(|s| !s.ip().is_loopback()) {
                    bail!("--webhook-sink must be a loopback address");
                }
                if a.duration.is_zero() || a.duration > MAX_DURATION || a.drain > MAX_DURATION {
                    bail!("--duration must be between 1ms and 1h (and --drain at most 1h)");
                }
                if a.duration >= timeout {
                    bail!("--duration {:?} must be shorter than --timeout {timeout:?}", a.duration);
                }
            }
            Command::Connections(a) => {
                if a.hold > MAX_DURATION {
                    bail!("--hold must be at most 1h");
                }
                if a.hold >= timeout {
                    bail!("--hold {:?} must be shorter than --timeout {timeout:?}", a.hold);
                }
            }
            Command::LocalModel(_) | Command::SlowConsumer(_) | Command::Catchup(_) => {}
            Command::Soak(a) => {
                if !a.provider_listen.ip().is_loopback() {
                    bail!("--provider-listen must be a loopback address");
                }
                if a.duration.is_zero() || a.duration > MAX_SOAK {
                    bail!("--duration must be between 1s and 24h");
                }
                // The whole run is bounded by --timeout; a soak sets its own unless one longer was given.
                if a.sample_every.is_zero() || a.sample_every * 3 > a.duration {
                    bail!("--sample-every must be positive and leave at least 3 samples in --duration");
                }
            }
            Command::Bots(a) => {
                if !a.provider_listen.ip().is_loopback() {
                    bail!(
                        "--provider-listen must be a loopback address, got {}",
                        a.provider_listen
                    );
                }
                if a.provider_name.trim().is_empty() || a.provider_name.contains(['"', '\\']) {
                    bail!("--provider-name must be a plain non-empty name");
                }
                if let Some(n) = a.stop_streams
                    && n > a.streams
                {
                    bail!("--stop-streams {n} exceeds --streams {}", a.streams);
                }
                if a.stop_streams() > 0 && a.stop_after >= a.tokens {
                    bail!("--stop-after {} must be less than --tokens {}", a.stop_after, a.tokens);
                }
                if a.ramp > MAX_DURATION || a.drain > MAX_DURATION {
                    bail!("--ramp and --drain must be at most 1h");
                }
                let o = a.opts();
                let stream = o.first_token_delay + o.token_interval * o.tokens;
                let phases = if a.stop_streams() > 0 && !a.stop_during_streams {
                    2
                } else {
                    1
                };
                if (o.ramp + stream) * phases >= timeout {
                    bail!(
                        "{phases} phase(s) of --ramp {:?} plus {} tokens every {:?} take longer than --timeout {timeout:?}",
                        o.ramp,
                        o.tokens,
                        o.token_interval
                    );
                }
            }
        }
        Ok(())
    }
}

async fn run(cli: &Cli, target: &Target, out: &mut Map<String, Value>) -> Result<()> {
    if let Command::LocalModel(a) = &cli.command {
        return local_model::run(a, out).await; // no server involved
    }
    let Some(token) = cli.token.as_deref().filter(|t| !t.is_empty()) else {
        bail!("the master token is required: pass --token or set CONFAB_API_TOKEN");
    };
    let api = rest::Api::new(&target.http_base, token)?;
    let spread: Vec<Target> = match cli.nodes.is_empty() {
        true => vec![target.clone()],
        false => cli.nodes.iter().map(|u| Target::parse(u)).collect::<Result<_>>()?,
    };
    if !cli.nodes.is_empty() {
        out.insert(
            "nodes".into(),
            json!(spread.iter().map(|t| &t.http_base).collect::<Vec<_>>()),
        );
    }
    match &cli.command {
        Command::Fanout(a) => {
            let o = fanout::FanoutOpts {
                members: a.members as usize,
                messages: a.messages,
                window: a.window as usize,
                rate: a.rate,
                drain: a.drain,
            };
            fanout::run(target, &spread, &api, &o, out).await
        }
        Command::Send(a) => {
            let o = send::SendOpts {
                clients: a.clients as usize,
                duration: a.duration,
                window: a.window as usize,
                drain: a.drain,
            };
            let sink = match a.webhook_sink {
                Some(addr) => Some(webhook_sink::Sink::start(&api, addr).await?),
                None => None,
            };
            send::run(&spread, &api, &o, out).await?;
            if let Some(sink) = sink {
                send::await_webhooks(&sink, a.drain, out).await;
                api.delete_webhook_endpoint(&sink.endpoint_id).await?;
            }
            Ok(())
        }
        Command::Connections(a) => {
            let o = connections::ConnOpts {
                count: a.count as usize,
                hold: a.hold,
                server_pid: a.server_pid,
                sessions_per_user: a.sessions_per_user as usize,
                source_addrs: a.source_addrs as usize,
            };
            connections::run(target, &api, &o, out).await
        }
        Command::Bots(a) => bots::run(target, &api, &a.opts(), out).await,
        Command::LocalModel(a) => local_model::run(a, out).await,
        Command::Soak(a) => soak::run(target, &api, &a.opts(), out).await,
        Command::SlowConsumer(a) => {
            let o = slow_consumer::SlowOpts {
                members: a.members as usize,
                rate: a.rate,
                messages: a.messages,
                size: a.size as usize,
                runs: a.runs,
            };
            slow_consumer::run_slow(target, &api, &o, out).await
        }
        Command::Catchup(a) => {
            let o = slow_consumer::CatchupOpts {
                messages: a.messages,
                channels: a.channels as usize,
                runs: a.runs,
            };
            slow_consumer::run_catchup(target, &api, &o, out).await
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    util::epoch();
    if let Command::Bots(a) = &cli.command
        && a.print_config
    {
        print!("{}", bots::server_config(&a.provider_name, a.provider_listen));
        return ExitCode::SUCCESS;
    }
    if let Command::Soak(a) = &cli.command
        && a.print_config
    {
        print!("{}", soak::server_config(&a.provider_name, a.provider_listen));
        return ExitCode::SUCCESS;
    }
    let name = cli.command.name();
    let mut out = Map::new();
    let started = Instant::now();
    let result = (|| -> Result<()> {
        let timeout = match &cli.command {
            // A soak's own length bounds it: the default --timeout would end it early.
            Command::Soak(a) => cli.timeout.max(a.duration + Duration::from_secs(600)),
            _ => cli.timeout,
        };
        cli.command.check(timeout)?;
        let target = Target::parse(&cli.url)?;
        out.insert("url".into(), json!(target.http_base));
        out.insert("client_threads".into(), json!(cli.threads));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.threads as usize)
            .enable_all()
            .build()?;
        let r = rt.block_on(async {
            match tokio::time::timeout(timeout, run(&cli, &target, &mut out)).await {
                Ok(r) => r,
                Err(_) => Err(anyhow::anyhow!("the run did not finish within --timeout {timeout:?}")),
            }
        });
        // Do not wait for tasks still holding sockets: the process is about to exit.
        rt.shutdown_background();
        r
    })();
    out.insert("total_ms".into(), json!(ms(started.elapsed())));
    match result {
        Ok(()) => {
            println!("{}", stats::summary_line(name, true, None, out));
            ExitCode::SUCCESS
        }
        Err(e) => {
            let msg = format!("{e:#}");
            eprintln!("confab-bench {name}: error: {msg}");
            if msg.contains("rate_limited") {
                eprintln!("{RATE_LIMIT_HINT}");
            }
            println!("{}", stats::summary_line(name, false, Some(&msg), out));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn cli_parses_the_documented_invocations() {
        let c = Cli::try_parse_from([
            "confab-bench",
            "--url",
            "http://127.0.0.1:18181",
            "--token",
            "t",
            "fanout",
            "--members",
            "200",
            "--messages",
            "100",
            "--rate",
            "50",
        ])
        .unwrap();
        match c.command {
            Command::Fanout(a) => {
                assert_eq!((a.members, a.messages, a.window, a.rate), (200, 100, 64, Some(50.0)));
            }
            other => panic!("{other:?}"),
        }
        let c = Cli::try_parse_from(["confab-bench", "send", "--clients", "20", "--duration", "3s"]).unwrap();
        assert!(matches!(c.command, Command::Send(ref a) if a.duration == Duration::from_secs(3) && a.window == 8));
        assert!(c.command.check(c.timeout).is_ok());
        let c = Cli::try_parse_from(["confab-bench", "connections", "--count", "2000", "--hold", "200s"]).unwrap();
        assert!(c.command.check(c.timeout).is_err(), "hold longer than the timeout");
        assert!(Cli::try_parse_from(["confab-bench", "fanout", "--rate", "0"]).is_err());
        assert!(Cli::try_parse_from(["confab-bench", "fanout", "--members", "0"]).is_err());
        let c = Cli::try_parse_from(["confab-bench", "bots", "--streams", "100"]).unwrap();
        match &c.command {
            Command::Bots(a) => {
                let o = a.opts();
                assert_eq!((o.streams, o.stop_streams, o.stop_after, o.tokens), (100, 100, 3, 50));
                assert_eq!(
                    (o.token_interval, o.first_token_delay),
                    (Duration::from_millis(20), Duration::from_millis(20))
                );
                assert_eq!(o.provider_listen, "127.0.0.1:18299".parse().unwrap());
            }
            other => panic!("{other:?}"),
        }
        assert!(c.command.check(c.timeout).is_ok());
        let c = Cli::try_parse_from(["confab-bench", "bots", "--streams", "10"]).unwrap();
        assert!(c.command.check(c.timeout).is_ok());
        assert!(matches!(&c.command, Command::Bots(a) if a.opts().stop_streams == 10));
        let c = Cli::try_parse_from(["confab-bench", "bots", "--streams", "10", "--stop-streams", "20"]).unwrap();
        assert!(c.command.check(c.timeout).is_err(), "more stops than streams");
        let c = Cli::try_parse_from(["confab-bench", "bots", "--stop-during-streams", "--ramp", "70s"]).unwrap();
        assert!(c.command.check(c.timeout).is_ok(), "one phase fits");
        let c = Cli::try_parse_from(["confab-bench", "bots", "--ramp", "70s"]).unwrap();
        assert!(c.command.check(c.timeout).is_err(), "two phases do not");
        let c = Cli::try_parse_from(["confab-bench", "bots", "--tokens", "3"]).unwrap();
        assert!(c.command.check(c.timeout).is_err(), "stop after the last token");
        let c = Cli::try_parse_from(["confab-bench", "bots", "--provider-listen", "10.0.0.1:1"]).unwrap();
        assert!(c.command.check(c.timeout).is_err(), "not loopback");
        let c =
            Cli::try_parse_from(["confab-bench", "bots", "--tokens", "10000", "--token-interval-ms", "20"]).unwrap();
        assert!(c.command.check(c.timeout).is_err(), "longer than the timeout");
        assert!(Cli::try_parse_from(["confab-bench", "bots", "--streams", "10001"]).is_err());
    }

    #[test]
    fn soak_and_the_slow_consumer_modes_parse() {
        let c = Cli::try_parse_from(["confab-bench", "soak", "--duration", "3m", "--sample-every", "10s"]).unwrap();
        match &c.command {
            Command::Soak(a) => {
                let o = a.opts();
                assert_eq!(
                    (o.duration, o.sample_every, o.warmup),
                    (
                        Duration::from_secs(180),
                        Duration::from_secs(10),
                        Duration::from_secs(36)
                    )
                );
                assert_eq!(
                    (o.load.senders, o.load.fanout_members, o.max_rss_drift_pct),
                    (10, 200, 10.0)
                );
            }
            other => panic!("{other:?}"),
        }
        let long = Duration::from_secs(180 + 600);
        assert!(c.command.check(long).is_ok());
        let c = Cli::try_parse_from(["confab-bench", "soak", "--duration", "20s", "--sample-every", "10s"]).unwrap();
        assert!(c.command.check(long).is_err(), "fewer than 3 samples");
        let c = Cli::try_parse_from(["confab-bench", "soak", "--provider-listen", "10.0.0.1:1"]).unwrap();
        assert!(c.command.check(Duration::from_secs(3600)).is_err(), "not loopback");
        let c = Cli::try_parse_from(["confab-bench", "slow-consumer", "--members", "5", "--runs", "3"]).unwrap();
        assert!(matches!(c.command, Command::SlowConsumer(ref a) if a.members == 5 && a.messages == 3000));
        let c = Cli::try_parse_from(["confab-bench", "catchup"]).unwrap();
        assert!(matches!(c.command, Command::Catchup(ref a) if a.messages == 10_000 && a.runs == 3));
    }

    #[test]
    fn the_bots_help_shows_the_printed_configuration() {
        let mut cmd = Cli::command();
        let help = cmd
            .find_subcommand_mut("bots")
            .expect("bots subcommand")
            .render_long_help()
            .to_string();
        let config = bots::server_config("bench-fake", "127.0.0.1:18299".parse().unwrap());
        for line in config.lines() {
            assert!(help.contains(line), "the help lacks {line:?}");
        }
    }
}
