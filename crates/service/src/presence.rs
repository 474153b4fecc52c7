//! Who is online on this node: a user is online while at least one of their WebSocket sessions is open.

use std::collections::HashMap;
use std::sync::Mutex;

use confab_domain::UserId;

#[derive(Default)]
pub struct PresenceRegistry {
    sessions: Mutex<HashMap<UserId, usize>>,
}

impl PresenceRegistry {
    /// Records an opened session; true if the user just came online.
    pub fn opened(&self, user: &UserId) -> bool {
        let mut s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let n = s.entry(user.clone()).or_insert(0);
        *n += 1;
        *n == 1
    }

    /// Records a closed session; true if it was the user's last one.
    pub fn closed(&self, user: &UserId) -> bool {
        let mut s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        match s.get_mut(user) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                s.remove(user);
                true
            }
            None => false,
        }
    }

    pub fn is_online(&self, user: &UserId) -> bool {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(user)
    }

    pub fn online_count(&self) -> usize {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn online_while_any_session_is_open() {
        let p = PresenceRegistry::default();
        let u = UserId::parse("u").unwrap();
        assert!(p.opened(&u));
        assert!(!p.opened(&u));
        assert!(!p.closed(&u));
        assert!(p.is_online(&u));
        assert!(p.closed(&u));
        assert!(!p.is_online(&u));
        assert!(!p.closed(&u), "closing an unknown session is harmless");
    }
}
