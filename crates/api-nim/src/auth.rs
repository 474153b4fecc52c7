//! NIM's request authentication: headers `AppKey`, `Nonce`, `CurTime` (Unix seconds) and `CheckSum` =
//! lower-case hex SHA-1 of `AppSecret + Nonce + CurTime`. A `CurTime` more than five minutes from the
//! server's clock, or not written as canonical decimal, is refused (NIM's 414, as is every other failure).
//!
//! Replays: some NIM server libraries send the same Nonce with every request, so the memory is of whole
//! requests, not nonces. A request whose Nonce, CurTime, CheckSum and body were all seen within the window
//! is refused with NIM's 431 (repeated request); different requests sharing a nonce pass. The memory is
//! bounded: an entry is forgotten once its CurTime has left the window (a replay then fails as expired), and
//! when it holds its cap of live entries new requests are refused (416) rather than anything evicted, since
//! an evicted entry would let its replay in.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::HeaderMap;
use sha1::{Digest as _, Sha1};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{NimError, NimResult, code};

/// How far `CurTime` may be from the server's clock, and so how long a request is remembered.
pub const WINDOW_SECS: i64 = 300;
/// Requests remembered at most by default (25 bytes each plus the table's slack: about 26 MB when full).
pub const DEFAULT_REPLAY_MEMORY: usize = 500_000;
const MAX_NONCE_LEN: usize = 128;
/// Expired entries are swept at most this often (and whenever the memory is full).
const SWEEP_SECS: i64 = 10;

/// The application's key and secret. The secret never leaves this type (no `Debug`, no `Display`).
pub struct AppCredentials {
    pub app_key: String,
    secret: String,
}

impl AppCredentials {
    pub fn new(app_key: String, secret: String) -> Self {
        AppCredentials { app_key, secret }
    }

    /// `hex(sha1(secret + a + b))`: the request CheckSum (`a` = Nonce, `b` = CurTime) and NIM's webhook
    /// CheckSum (`a` = MD5 of the body, `b` = CurTime).
    pub fn checksum(&self, a: &str, b: &str) -> String {
        checksum(&self.secret, a, b)
    }
}

pub fn checksum(secret: &str, a: &str, b: &str) -> String {
    let mut h = Sha1::new();
    h.update(secret.as_bytes());
    h.update(a.as_bytes());
    h.update(b.as_bytes());
    hex::encode(h.finalize())
}

/// A request whose headers proved the secret; [`Authenticator::remember`] then refuses it if repeated.
pub struct Verified {
    key: Sha256,
    cur_time: i64,
}

/// Remembered requests: a digest of each → the Unix second after which it may be forgotten.
struct ReplayMemory {
    seen: HashMap<[u8; 16], i64>,
    next_sweep: i64,
}

impl ReplayMemory {
    fn sweep(&mut self, now: i64) {
        self.seen.retain(|_, until| *until >= now);
        self.next_sweep = now + SWEEP_SECS;
    }
}

pub struct Authenticator {
    creds: AppCredentials,
    memory: Mutex<ReplayMemory>,
    max_remembered: usize,
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Unix seconds written as NIM's clients write them: digits only, no sign, no leading zero. Anything else
/// would let a captured CheckSum be reused: `abc0`+`1735689600` and `abc`+`01735689600` hash the same.
fn canonical_time(raw: &str) -> Option<i64> {
    let canonical = raw.len() <= 18 && raw.bytes().all(|b| b.is_ascii_digit()) && !raw.starts_with('0');
    canonical.then(|| raw.parse().ok()).flatten()
}

/// Feeds one length-prefixed field, so that no two field lists feed the same bytes.
fn feed(h: &mut Sha256, field: &[u8]) {
    h.update((field.len() as u64).to_be_bytes());
    h.update(field);
}

impl Authenticator {
    /// `max_remembered`: requests kept in the replay memory at most (see the module's notes).
    pub fn new(creds: AppCredentials, max_remembered: usize) -> Self {
        Authenticator {
            creds,
            memory: Mutex::new(ReplayMemory {
                seen: HashMap::new(),
                next_sweep: 0,
            }),
            max_remembered: max_remembered.max(1),
        }
    }

    pub fn credentials(&self) -> &AppCredentials {
        &self.creds
    }

    /// Checks a request's headers at `now` (Unix seconds): the key, the clock window and the CheckSum.
    pub fn verify(&self, h: &HeaderMap, now: i64) -> NimResult<Verified> {
        let app_key = header(h, "appkey").ok_or_else(|| NimError::param("appkey"))?;
        if !bool::from(app_key.as_bytes().ct_eq(self.creds.app_key.as_bytes())) {
            return Err(NimError::param("appkey"));
        }
        let nonce = header(h, "nonce").ok_or_else(|| NimError::param("nonce"))?;
        if nonce.len() > MAX_NONCE_LEN {
            return Err(NimError::param("nonce is longer than 128 characters"));
        }
        let cur_time = h
            .get("curtime")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| NimError::param("CurTime"))?;
        let t = canonical_time(cur_time)
            .ok_or_else(|| NimError::param("CurTime must be Unix seconds in decimal digits, without a leading zero"))?;
        if (now - t).abs() > WINDOW_SECS {
            return Err(NimError::param("CurTime is expired"));
        }
        let presented = header(h, "checksum").ok_or_else(|| NimError::param("checksum"))?;
        let presented = presented.to_ascii_lowercase();
        let expected = self.creds.checksum(nonce, cur_time);
        if !bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) {
            return Err(NimError::param("checksum"));
        }
        let mut key = Sha256::new();
        feed(&mut key, nonce.as_bytes());
        feed(&mut key, cur_time.as_bytes());
        feed(&mut key, presented.as_bytes());
        Ok(Verified { key, cur_time: t })
    }

    /// Refuses a verified request seen before within the window (same headers and `body`), else remembers
    /// it; returns the request's digest (hex) and the Unix second until which it must be remembered, for the
    /// memory every node shares (`Confab::claim_once`). Only requests that proved the secret get here, so
    /// nobody else can fill the memory.
    pub fn remember(&self, v: Verified, body: &[u8], now: i64) -> NimResult<(String, i64)> {
        let mut key = v.key;
        feed(&mut key, body);
        let digest = key.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        let mut memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        if now >= memory.next_sweep {
            memory.sweep(now);
        }
        if memory.seen.get(&id).is_some_and(|&until| until >= now) {
            return Err(NimError::new(
                code::REPEATED,
                "repeated request: this Nonce, CurTime, CheckSum and body were already received",
            ));
        }
        if memory.seen.len() >= self.max_remembered {
            memory.sweep(now);
            if memory.seen.len() >= self.max_remembered {
                // Evicting a live entry would let its replay in; refuse new requests until entries expire.
                return Err(NimError::new(code::RATE_LIMITED, "too many requests; retry shortly"));
            }
        }
        // Until its CurTime leaves the window: after that a replay fails as expired.
        let until = v.cur_time + WINDOW_SECS;
        memory.seen.insert(id, until);
        Ok((hex::encode(id), until))
    }

    /// [`Authenticator::verify`] then [`Authenticator::remember`].
    pub fn check(&self, h: &HeaderMap, body: &[u8], now: i64) -> NimResult<()> {
        let v = self.verify(h, now)?;
        self.remember(v, body, now).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(key: &str, nonce: &str, time: i64, sum: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("AppKey", key.parse().unwrap());
        h.insert("Nonce", nonce.parse().unwrap());
        h.insert("CurTime", time.to_string().parse().unwrap());
        h.insert("CheckSum", sum.parse().unwrap());
        h
    }

    #[test]
    fn checksum_is_hex_sha1_of_the_three_strings_in_order() {
        // FIPS 180 test vector: SHA-1("abc").
        assert_eq!(checksum("a", "b", "c"), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(checksum("ab", "", "c"), checksum("a", "bc", ""));
        assert_eq!(checksum("", "", ""), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
    }

    #[test]
    fn good_requests_pass_once_and_bad_ones_say_why() {
        let a = Authenticator::new(AppCredentials::new("key".into(), "secret".into()), 100);
        let now = 1_700_000_000;
        let sum = checksum("secret", "n1", &now.to_string());
        assert!(a.check(&headers("key", "n1", now, &sum), b"x=1", now).is_ok());
        let replay = a.check(&headers("key", "n1", now, &sum), b"x=1", now + 10).unwrap_err();
        assert_eq!(replay.code, 431, "{replay:?}");
        let upper = checksum("secret", "n2", &now.to_string()).to_uppercase();
        assert!(
            a.check(&headers("key", "n2", now, &upper), b"", now).is_ok(),
            "case-insensitive"
        );
        let e = a.check(&headers("other", "n3", now, &sum), b"", now).unwrap_err();
        assert_eq!((e.code, e.desc.as_str()), (414, "appkey"));
        let e = a.check(&headers("key", "n4", now, &sum), b"", now).unwrap_err();
        assert_eq!((e.code, e.desc.as_str()), (414, "checksum"));
        let old = now - WINDOW_SECS - 1;
        let e = a
            .check(
                &headers("key", "n5", old, &checksum("secret", "n5", &old.to_string())),
                b"",
                now,
            )
            .unwrap_err();
        assert_eq!((e.code, e.desc.as_str()), (414, "CurTime is expired"));
        let e = a.check(&HeaderMap::new(), b"", now).unwrap_err();
        assert_eq!(e.code, 414);
    }

    fn signed(nonce: &str, time: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("AppKey", "key".parse().unwrap());
        h.insert("Nonce", nonce.parse().unwrap());
        h.insert("CurTime", time.parse().unwrap());
        h.insert("CheckSum", checksum("secret", nonce, time).parse().unwrap());
        h
    }

    #[test]
    fn a_shared_nonce_passes_for_different_requests_but_a_repeat_does_not() {
        let a = Authenticator::new(AppCredentials::new("key".into(), "secret".into()), 100);
        let now = 1_735_689_600;
        let t = now.to_string();
        assert!(a.check(&signed("same", &t), b"accid=a", now).is_ok());
        assert!(a.check(&signed("same", &t), b"accid=b", now).is_ok(), "another body");
        let later = (now + 1).to_string();
        assert!(
            a.check(&signed("same", &later), b"accid=a", now + 1).is_ok(),
            "another second"
        );
        let e = a.check(&signed("same", &t), b"accid=a", now + 2).unwrap_err();
        assert_eq!(e.code, 431);
        // Forgotten only once its CurTime left the window, when the replay fails as expired anyway.
        let e = a.check(&signed("same", &t), b"accid=a", now + WINDOW_SECS).unwrap_err();
        assert_eq!(e.code, 431);
        let e = a
            .check(&signed("same", &t), b"accid=a", now + WINDOW_SECS + 1)
            .unwrap_err();
        assert_eq!((e.code, e.desc.as_str()), (414, "CurTime is expired"));
    }

    #[test]
    fn cur_time_must_be_canonical_decimal() {
        let a = Authenticator::new(AppCredentials::new("key".into(), "secret".into()), 100);
        let now = 1_735_689_600;
        assert!(a.check(&signed("abc0", "1735689600"), b"", now).is_ok());
        // The same CheckSum with a digit moved from the nonce to the time.
        for (nonce, time) in [
            ("abc", "01735689600"),
            ("abc0", "+1735689600"),
            ("abc0", "1735689600.0"),
        ] {
            let mut h = signed(nonce, time);
            h.insert("CheckSum", checksum("secret", "abc0", "1735689600").parse().unwrap());
            let e = a.check(&h, b"", now).unwrap_err();
            assert_eq!(e.code, 414, "{time}");
            assert!(e.desc.starts_with("CurTime"), "{e:?}");
        }
    }

    #[test]
    fn a_full_memory_refuses_new_requests_until_entries_expire() {
        let a = Authenticator::new(AppCredentials::new("key".into(), "secret".into()), 2);
        let now = 1_735_689_600;
        let t = now.to_string();
        assert!(a.check(&signed("n1", &t), b"", now).is_ok());
        assert!(a.check(&signed("n2", &t), b"", now).is_ok());
        let e = a.check(&signed("n3", &t), b"", now).unwrap_err();
        assert_eq!(e.code, 416);
        assert_eq!(
            a.check(&signed("n1", &t), b"", now).unwrap_err().code,
            431,
            "nothing evicted"
        );
        let later = now + WINDOW_SECS + 1;
        assert!(a.check(&signed("n3", &later.to_string()), b"", later).is_ok());
    }
}
