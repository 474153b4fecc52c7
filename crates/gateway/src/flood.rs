//! What one session may repeat: the inbound frame rate (reading pauses when it is exceeded, so the client is
//! slowed by TCP backpressure, not answered with more frames), and read receipts coalesced per channel (the
//! latest position wins; written at most once per interval, and whatever is pending when the session ends).

use std::time::{Duration, Instant};

use confab_domain::ChannelId;
use rustc_hash::FxHashMap;

/// A token bucket over inbound frames (GCRA): `per_sec` sustained, `burst` at once.
pub struct FrameRate {
    interval: Duration,
    burst: Duration,
    /// When the bucket would be empty again if no more frames came ("theoretical arrival time").
    tat: Instant,
}

impl FrameRate {
    /// `None` when `per_sec` is 0 (no limit).
    pub fn new(per_sec: u32, burst: u32, now: Instant) -> Option<Self> {
        (per_sec > 0).then(|| {
            let interval = Duration::from_secs(1) / per_sec;
            FrameRate {
                interval,
                burst: interval * burst.max(1).saturating_sub(1),
                tat: now,
            }
        })
    }

    /// Counts one frame.
    pub fn admit(&mut self, now: Instant) {
        self.tat = self.tat.max(now) + self.interval;
    }

    /// From when the next frame may be read.
    pub fn ready_at(&self) -> Instant {
        self.tat.checked_sub(self.burst).unwrap_or(self.tat)
    }
}

/// Read receipts of one session waiting to be written.
pub struct ReadCoalescer {
    interval: Duration,
    /// When each channel's position was last written (kept for one interval).
    written: FxHashMap<ChannelId, Instant>,
    /// The newest position asked for since, per channel.
    pending: FxHashMap<ChannelId, u64>,
}

impl ReadCoalescer {
    pub fn new(interval: Duration) -> Self {
        ReadCoalescer {
            interval,
            written: FxHashMap::default(),
            pending: FxHashMap::default(),
        }
    }

    /// A read frame: `Some(seq)` to write now, `None` when it waits for the channel's next turn.
    pub fn read(&mut self, channel: ChannelId, seq: u64, now: Instant) -> Option<u64> {
        if let Some(p) = self.pending.get_mut(&channel) {
            *p = (*p).max(seq);
            return None;
        }
        match self.written.get(&channel) {
            Some(at) if now.saturating_duration_since(*at) < self.interval => {
                self.pending.insert(channel, seq);
                None
            }
            _ => {
                self.written.insert(channel, now);
                Some(seq)
            }
        }
    }

    /// When the next pending position is due, if any.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending
            .keys()
            .filter_map(|c| self.written.get(c))
            .min()
            .map(|at| *at + self.interval)
    }

    /// The pending positions due at `now`, to write; forgets channels not written for an interval.
    pub fn due(&mut self, now: Instant) -> Vec<(ChannelId, u64)> {
        let interval = self.interval;
        let written = &mut self.written;
        let mut out = Vec::new();
        self.pending.retain(|c, seq| {
            let due = written
                .get(c)
                .is_none_or(|at| now.saturating_duration_since(*at) >= interval);
            if due {
                written.insert(c.clone(), now);
                out.push((c.clone(), *seq));
            }
            !due
        });
        let pending = &self.pending;
        written.retain(|c, at| pending.contains_key(c) || now.saturating_duration_since(*at) < interval);
        out
    }

    /// Everything still pending (the session is ending).
    pub fn drain(&mut self) -> Vec<(ChannelId, u64)> {
        self.written.clear();
        self.pending.drain().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_beyond_the_burst_wait_for_the_rate() {
        let t0 = Instant::now();
        let mut r = FrameRate::new(10, 5, t0).unwrap();
        for _ in 0..5 {
            assert!(r.ready_at() <= t0);
            r.admit(t0);
        }
        assert_eq!(
            r.ready_at(),
            t0 + Duration::from_millis(100),
            "the sixth frame waits one interval"
        );
        let later = t0 + Duration::from_secs(10);
        r.admit(later);
        assert!(r.ready_at() <= later, "an idle session has its burst back");
        assert!(FrameRate::new(0, 5, t0).is_none());
    }

    #[test]
    fn reads_are_coalesced_per_channel_and_the_latest_wins() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let (a, b) = (ChannelId::parse("a").unwrap(), ChannelId::parse("b").unwrap());
        let mut r = ReadCoalescer::new(Duration::from_secs(1));
        assert_eq!(r.read(a.clone(), 3, t0), Some(3), "the first read is written at once");
        assert_eq!(r.read(b.clone(), 1, at(10)), Some(1), "channels are independent");
        assert_eq!(r.read(a.clone(), 9, at(20)), None);
        assert_eq!(r.read(a.clone(), 5, at(30)), None);
        assert_eq!(r.next_due(), Some(at(1000)));
        assert!(r.due(at(999)).is_empty());
        assert_eq!(r.due(at(1000)), vec![(a.clone(), 9)], "the highest position asked for");
        assert_eq!(r.next_due(), None);
        assert_eq!(r.read(a.clone(), 10, at(1500)), None, "written at 1000: waits again");
        assert_eq!(r.drain(), vec![(a.clone(), 10)], "nothing pending is lost at the end");
        assert_eq!(r.read(a, 11, at(1600)), Some(11));
    }
}
