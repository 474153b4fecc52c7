//! Who is calling: the application (master API token) or one user (a session token issued by the application).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use confab_domain::{Millis, UserId, now_millis};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The authenticated principal of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Actor {
    /// The application's server, holding the master API token: may act for any user.
    Admin,
    /// A client session: may act only as this user, only in the user's channels.
    User(UserId),
}

impl Actor {
    pub fn is_admin(&self) -> bool {
        matches!(self, Actor::Admin)
    }

    /// The user this actor is, if it is a user.
    pub fn user(&self) -> Option<&UserId> {
        match self {
            Actor::Admin => None,
            Actor::User(u) => Some(u),
        }
    }
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// The master API token. Only its hash is held; comparisons take constant time.
pub struct MasterToken {
    hash: [u8; 32],
}

impl MasterToken {
    pub fn new(token: &str) -> Self {
        MasterToken {
            hash: sha256(token.as_bytes()),
        }
    }

    /// Compares digests, so neither the content nor the length of the token leaks through timing.
    pub fn matches(&self, presented: &str) -> bool {
        bool::from(sha256(presented.as_bytes()).ct_eq(&self.hash))
    }
}

/// A fresh random token: a prefix naming its kind, then 256 bits of randomness in hex.
pub fn generate_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

/// A verified session token as a long-lived connection holds it: the digest (to re-check it when the user's
/// sessions are revoked) and its expiry (to close the connection then). The token itself is not kept.
#[derive(Clone)]
pub struct SessionGrant {
    pub user: UserId,
    pub(crate) token_hash: [u8; 32],
    pub expires_at: Option<Millis>,
}

impl std::fmt::Debug for SessionGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionGrant")
            .field("user", &self.user)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Recently verified session tokens, so a busy client does not cost a store read per request.
/// Entries live for `ttl`; revocation evicts a user's entries at once.
pub struct SessionCache {
    entries: Mutex<Entries>,
    ttl: Duration,
}

#[derive(Default)]
struct Entries {
    map: HashMap<[u8; 32], CachedSession>,
    /// Bumped by every eviction. A lookup notes it before reading the store and caches its result only if no
    /// eviction happened since: a lookup that read a token just before it was revoked cannot put it back.
    epoch: u64,
}

#[derive(Clone)]
struct CachedSession {
    user: UserId,
    expires_at: Option<Millis>,
    cached_at: Instant,
}

impl SessionCache {
    pub fn new(ttl: Duration) -> Self {
        SessionCache {
            entries: Mutex::new(Entries::default()),
            ttl,
        }
    }

    /// The cached user and expiry of a token digest.
    pub fn get(&self, hash: &[u8; 32]) -> Option<(UserId, Option<Millis>)> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let e = entries.map.get(hash)?;
        let fresh = e.cached_at.elapsed() < self.ttl;
        let unexpired = e.expires_at.is_none_or(|x| x > now_millis());
        (fresh && unexpired).then(|| (e.user.clone(), e.expires_at))
    }

    /// To note before reading the store; hand it back to [`SessionCache::put`].
    pub fn epoch(&self) -> u64 {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).epoch
    }

    /// Caches a lookup made after [`SessionCache::epoch`] returned `epoch`; dropped if anything was evicted
    /// since (the lookup may have read a token that was being revoked).
    pub fn put(&self, epoch: u64, hash: [u8; 32], user: UserId, expires_at: Option<Millis>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.epoch != epoch {
            return;
        }
        if entries.map.len() >= 100_000 {
            let ttl = self.ttl;
            entries.map.retain(|_, e| e.cached_at.elapsed() < ttl);
        }
        entries.map.insert(
            hash,
            CachedSession {
                user,
                expires_at,
                cached_at: Instant::now(),
            },
        );
    }

    pub fn evict_user(&self, user: &UserId) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.epoch = entries.epoch.wrapping_add(1);
        entries.map.retain(|_, e| &e.user != user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_token_matches_only_itself() {
        let t = MasterToken::new("secret-token");
        assert!(t.matches("secret-token"));
        assert!(!t.matches("secret-toke"));
        assert!(!t.matches(""));
    }

    #[test]
    fn tokens_are_random_and_prefixed() {
        let a = generate_token("cfs_");
        let b = generate_token("cfs_");
        assert_ne!(a, b);
        assert!(a.starts_with("cfs_") && a.len() == 4 + 64);
    }

    #[test]
    fn cache_evicts_revoked_users() {
        let c = SessionCache::new(Duration::from_secs(60));
        let u = UserId::parse("u").unwrap();
        c.put(c.epoch(), [1; 32], u.clone(), None);
        assert_eq!(c.get(&[1; 32]), Some((u.clone(), None)));
        c.evict_user(&u);
        assert_eq!(c.get(&[1; 32]), None);
        c.put(c.epoch(), [2; 32], u.clone(), Some(now_millis() - 1));
        assert_eq!(c.get(&[2; 32]), None, "expired sessions are not served from cache");
    }

    #[test]
    fn a_lookup_that_raced_a_revocation_is_not_cached() {
        let c = SessionCache::new(Duration::from_secs(60));
        let u = UserId::parse("u").unwrap();
        let other = UserId::parse("other").unwrap();
        // The lookup notes the epoch and reads the token from the store; the token is revoked meanwhile.
        let before = c.epoch();
        c.evict_user(&u);
        c.put(before, [1; 32], u.clone(), None);
        assert_eq!(c.get(&[1; 32]), None, "a stale read put a revoked token back");
        // Any eviction counts, even of another user: the cache only loses an entry.
        let before = c.epoch();
        c.evict_user(&other);
        c.put(before, [1; 32], u.clone(), None);
        assert_eq!(c.get(&[1; 32]), None);
        c.put(c.epoch(), [1; 32], u.clone(), None);
        assert_eq!(c.get(&[1; 32]), Some((u, None)));
    }
}
