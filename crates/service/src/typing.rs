//! Typing indicators, coalesced per user and channel: whatever a client sends, members see at most one
//! `typing` start per window, and a stop only after a start they saw. A repeated start within the window is
//! absorbed, so a flood costs neither a store read nor a fan-out.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use confab_domain::{ChannelId, UserId};

/// How often a user's start in one channel may go out. Clients refresh a start every 3 s or so while typing;
/// a little less here leaves room for jitter, so every refresh goes out.
pub const TYPING_WINDOW: Duration = Duration::from_millis(2500);
/// Entries (user, channel) kept at most; beyond, new starts are absorbed until housekeeping frees room.
const MAX_ENTRIES: usize = 100_000;

#[derive(Clone, Copy)]
struct Shown {
    /// When the last start went out.
    started_at: Instant,
    /// Whether members were last told "typing" (a start went out and no stop since).
    active: bool,
}

pub struct TypingGate {
    window: Duration,
    entries: Mutex<HashMap<(UserId, ChannelId), Shown>>,
}

impl Default for TypingGate {
    fn default() -> Self {
        TypingGate::new(TYPING_WINDOW)
    }
}

impl TypingGate {
    pub fn new(window: Duration) -> Self {
        TypingGate {
            window,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Whether this indicator would go out now (nothing is recorded).
    pub fn would_pass(&self, user: &UserId, channel: &ChannelId, active: bool, now: Instant) -> bool {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let shown = entries.get(&(user.clone(), channel.clone())).copied();
        self.decide(shown, active, now) && (shown.is_some() || !active || entries.len() < MAX_ENTRIES)
    }

    /// Records the indicator if it goes out now; false if it is absorbed.
    pub fn pass(&self, user: &UserId, channel: &ChannelId, active: bool, now: Instant) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let key = (user.clone(), channel.clone());
        let shown = entries.get(&key).copied();
        if !self.decide(shown, active, now) {
            return false;
        }
        if active {
            if shown.is_none() && entries.len() >= MAX_ENTRIES {
                return false;
            }
            entries.insert(
                key,
                Shown {
                    started_at: now,
                    active: true,
                },
            );
        } else if let Some(s) = entries.get_mut(&key) {
            s.active = false;
        }
        true
    }

    fn decide(&self, shown: Option<Shown>, active: bool, now: Instant) -> bool {
        match (shown, active) {
            // A start goes out unless one did within the window.
            (None, true) => true,
            (Some(s), true) => now.saturating_duration_since(s.started_at) >= self.window,
            // A stop goes out only after a start the members saw.
            (Some(s), false) => s.active,
            (None, false) => false,
        }
    }

    /// Forgets entries older than `keep` (members' clients have long since stopped showing them).
    pub fn prune(&self, keep: Duration, now: Instant) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, s| now.saturating_duration_since(s.started_at) < keep.max(self.window));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_are_coalesced_and_stops_follow_starts() {
        let g = TypingGate::new(Duration::from_secs(3));
        let (u, c) = (UserId::parse("u").unwrap(), ChannelId::parse("c").unwrap());
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert!(!g.pass(&u, &c, false, t0), "a stop with no start shown is absorbed");
        assert!(g.would_pass(&u, &c, true, t0));
        assert!(g.pass(&u, &c, true, t0));
        for ms in [1, 10, 2000, 2999] {
            assert!(!g.would_pass(&u, &c, true, at(ms)));
            assert!(
                !g.pass(&u, &c, true, at(ms)),
                "a repeated start within the window goes out"
            );
        }
        assert!(g.pass(&u, &c, false, at(3000 - 1)), "the stop after a start goes out");
        assert!(!g.pass(&u, &c, false, at(3000)), "a second stop is absorbed");
        assert!(
            !g.pass(&u, &c, true, at(2999)),
            "a new start within the window waits for the next refresh"
        );
        assert!(g.pass(&u, &c, true, at(3000)));
        let other = ChannelId::parse("d").unwrap();
        assert!(g.pass(&u, &other, true, at(3001)), "channels are independent");
        g.prune(Duration::from_secs(60), at(64_000));
        assert!(!g.pass(&u, &c, false, at(64_000)), "pruned entries are forgotten");
    }
}
