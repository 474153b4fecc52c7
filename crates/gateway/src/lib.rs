//! The real-time edge: the fan-out hub and WebSocket sessions, and the protocol's frames (`frames`), which
//! carry the native JSON shapes of `confab-wire`.

pub mod flood;
pub mod frames;
pub mod hub;
pub mod session;

use std::time::Duration;

pub use hub::Hub;

#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Frames a session may have queued before it is closed as too slow.
    pub queue_frames: usize,
    /// Bytes a session may have queued before it is closed as too slow.
    pub queue_bytes: usize,
    /// Largest client frame accepted (WebSocket message and frame size).
    pub max_message_bytes: usize,
    pub heartbeat: Duration,
    /// A session with no inbound traffic (pongs count) for this long is closed.
    pub idle_timeout: Duration,
    /// Time allowed for the `hello` frame after the upgrade.
    pub hello_timeout: Duration,
    /// Most frames written before one flush.
    pub write_batch: usize,
    /// Client requests (sends, reads, typing) a session may have waiting at once.
    pub max_inflight: usize,
    pub fanout_shards: usize,
    /// Messages read per store query while resuming.
    pub catchup_page: u32,
    /// Open sessions one user may have at once (0: no limit); one more is refused with close code 4029.
    pub max_sessions_per_user: usize,
    /// Client frames a session may send per second, sustained (0: no limit); beyond, reading pauses.
    pub max_frames_per_sec: u32,
    /// Client frames a session may send at once above the sustained rate.
    pub frame_burst: u32,
    /// A channel's read position is written at most this often per session (the latest position wins).
    pub read_interval: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            queue_frames: 1024,
            queue_bytes: 4 * 1024 * 1024,
            max_message_bytes: 64 * 1024,
            heartbeat: session::DEFAULT_HEARTBEAT,
            idle_timeout: Duration::from_secs(75),
            hello_timeout: Duration::from_secs(10),
            write_batch: 64,
            max_inflight: 64,
            fanout_shards: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            catchup_page: 500,
            max_sessions_per_user: 10,
            max_frames_per_sec: 30,
            frame_burst: 60,
            read_interval: Duration::from_secs(1),
        }
    }
}
