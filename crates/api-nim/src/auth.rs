//! NIM's request authentication: headers `AppKey`, `Nonce`, `CurTime` (Unix seconds) and `CheckSum` =
//! lower-case hex SHA-1 of `AppSecret + Nonce + CurTime`. A `CurTime` more than five minutes from the
//! server's clock is refused, and so is a `Nonce` seen within that window (a replayed request). Every
//! failure is NIM's 414.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::HeaderMap;
use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

use crate::error::{NimError, NimResult, code};

/// How far `CurTime` may be from the server's clock, and how long a nonce is remembered.
pub const WINDOW_SECS: i64 = 300;
/// Nonces remembered at most; beyond that (after forgetting expired ones) requests are refused as rate
/// limited rather than letting the memory grow.
const MAX_NONCES: usize = 1_000_000;
const MAX_NONCE_LEN: usize = 128;

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

pub struct Authenticator {
    creds: AppCredentials,
    /// Nonce → the Unix second after which it may be forgotten.
    nonces: Mutex<HashMap<String, i64>>,
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

impl Authenticator {
    pub fn new(creds: AppCredentials) -> Self {
        Authenticator {
            creds,
            nonces: Mutex::new(HashMap::new()),
        }
    }

    pub fn credentials(&self) -> &AppCredentials {
        &self.creds
    }

    /// Checks a request's headers at `now` (Unix seconds).
    pub fn check(&self, h: &HeaderMap, now: i64) -> NimResult<()> {
        let app_key = header(h, "appkey").ok_or_else(|| NimError::param("appkey"))?;
        if !bool::from(app_key.as_bytes().ct_eq(self.creds.app_key.as_bytes())) {
            return Err(NimError::param("appkey"));
        }
        let nonce = header(h, "nonce").ok_or_else(|| NimError::param("nonce"))?;
        if nonce.len() > MAX_NONCE_LEN {
            return Err(NimError::param("nonce is longer than 128 characters"));
        }
        let cur_time = header(h, "curtime").ok_or_else(|| NimError::param("CurTime"))?;
        let t: i64 = cur_time.parse().map_err(|_| NimError::param("CurTime"))?;
        if (now - t).abs() > WINDOW_SECS {
            return Err(NimError::param("CurTime is expired"));
        }
        let presented = header(h, "checksum").ok_or_else(|| NimError::param("checksum"))?;
        let expected = self.creds.checksum(nonce, cur_time);
        if !bool::from(presented.to_ascii_lowercase().as_bytes().ct_eq(expected.as_bytes())) {
            return Err(NimError::param("checksum"));
        }
        // Only requests that proved the secret are remembered, so nobody else can fill the memory.
        let mut nonces = self.nonces.lock().unwrap_or_else(|e| e.into_inner());
        if nonces.get(nonce).is_some_and(|&until| until >= now) {
            return Err(NimError::param("Nonce reused: the request was replayed"));
        }
        if nonces.len() >= MAX_NONCES {
            nonces.retain(|_, until| *until >= now);
            if nonces.len() >= MAX_NONCES {
                return Err(NimError::new(code::RATE_LIMITED, "too many requests"));
            }
        }
        // Remembered until no CurTime that could carry it is acceptable any more.
        nonces.insert(nonce.to_string(), t.max(now) + WINDOW_SECS);
        Ok(())
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
        let a = Authenticator::new(AppCredentials::new("key".into(), "secret".into()));
        let now = 1_700_000_000;
        let sum = checksum("secret", "n1", &now.to_string());
        assert!(a.check(&headers("key", "n1", now, &sum), now).is_ok());
        let replay = a.check(&headers("key", "n1", now, &sum), now + 10).unwrap_err();
        assert!(replay.desc.contains("replayed"), "{replay:?}");
        let upper = checksum("secret", "n2", &now.to_string()).to_uppercase();
        assert!(
            a.check(&headers("key", "n2", now, &upper), now).is_ok(),
            "case-insensitive"
        );
        let e = a.check(&headers("other", "n3", now, &sum), now).unwrap_err();
        assert_eq!((e.code, e.desc.as_str()), (414, "appkey"));
        let e = a.check(&headers("key", "n4", now, &sum), now).unwrap_err();
        assert_eq!((e.code, e.desc.as_str()), (414, "checksum"));
        let old = now - WINDOW_SECS - 1;
        let e = a
            .check(
                &headers("key", "n5", old, &checksum("secret", "n5", &old.to_string())),
                now,
            )
            .unwrap_err();
        assert_eq!((e.code, e.desc.as_str()), (414, "CurTime is expired"));
        let e = a.check(&HeaderMap::new(), now).unwrap_err();
        assert_eq!(e.code, 414);
    }
}
