//! Who is online: a user is online while some node holds at least one of their WebSocket sessions. Each
//! node counts its own sessions here; the store records which nodes hold a user (a node's first session of
//! the user, and its last), decides when that makes the user online or offline anywhere, and forgets the
//! sessions of nodes that died. Presence events are announced on those changes only.
//!
//! The same first and last session of a user on this node tell a bus shared between nodes which channels'
//! events to take (`EventBus::watch_user`): the user's channels, subscribed before the first session reads
//! its backlog.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

use confab_domain::{ChannelId, DomainError, DomainResult, Event, UserId, now_millis};

use crate::Confab;

/// Stripes of the per-user order in which this node tells the store about presence.
const STRIPES: usize = 64;

pub struct PresenceRegistry {
    sessions: Mutex<HashMap<UserId, usize>>,
    /// The users this node last told the store it holds.
    recorded: Mutex<HashSet<UserId>>,
    /// The users whose channels the bus follows (a bus among several nodes; see `EventBus::watch_user`).
    followed: Mutex<HashSet<UserId>>,
    /// A user's first session here may close while the store still records it opened: the store sees
    /// one user's changes one at a time, in the order the counts changed.
    turns: Vec<tokio::sync::Mutex<()>>,
    hasher: RandomState,
}

impl Default for PresenceRegistry {
    fn default() -> Self {
        PresenceRegistry {
            sessions: Default::default(),
            recorded: Default::default(),
            followed: Default::default(),
            turns: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl PresenceRegistry {
    /// Records an opened session; true if the user just came online on this node.
    pub fn opened(&self, user: &UserId) -> bool {
        let mut s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let n = s.entry(user.clone()).or_insert(0);
        *n += 1;
        *n == 1
    }

    /// Records a closed session; true if it was the user's last one on this node.
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

    /// Whether this node holds a session of the user.
    pub fn is_online_here(&self, user: &UserId) -> bool {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(user)
    }

    /// Users with a session on this node.
    pub fn online_count(&self) -> usize {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn turn(&self, user: &UserId) -> &tokio::sync::Mutex<()> {
        &self.turns[(self.hasher.hash_one(user) as usize) % STRIPES]
    }

    fn recorded(&self, user: &UserId) -> bool {
        self.recorded.lock().unwrap_or_else(|e| e.into_inner()).contains(user)
    }

    /// Users whose sessions here the store does not know as they are: a change it could not record (the
    /// database away), or one still being recorded.
    fn unrecorded(&self) -> Vec<UserId> {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let recorded = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
        let gone = recorded.iter().filter(|u| !sessions.contains_key(*u));
        let new = sessions.keys().filter(|u| !recorded.contains(*u));
        gone.chain(new).cloned().collect()
    }

    fn is_followed(&self, user: &UserId) -> bool {
        self.followed.lock().unwrap_or_else(|e| e.into_inner()).contains(user)
    }

    fn set_followed(&self, user: &UserId, followed: bool) {
        let mut set = self.followed.lock().unwrap_or_else(|e| e.into_inner());
        match followed {
            true => set.insert(user.clone()),
            false => set.remove(user),
        };
    }

    fn set_recorded(&self, user: &UserId, here: bool) {
        let mut recorded = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
        match here {
            true => recorded.insert(user.clone()),
            false => recorded.remove(user),
        };
    }
}

impl Confab {
    /// Called when a WebSocket session opens, before it reads its backlog; announces the user online when no
    /// node held one before. On a node among several, returns once the events of the user's channels reach
    /// this node; an error (the store could not list them) means the session cannot be served: it closes, and
    /// [`Confab::session_closed`] is still called.
    pub async fn session_opened(&self, user: &UserId) -> DomainResult<()> {
        let first = self.presence.opened(user);
        let followed = self.follow_user(user).await;
        if first {
            self.record_presence(user).await;
        }
        followed
    }

    /// Called when a WebSocket session closes; when no node holds one any more, records `last_seen_at` and
    /// announces the user offline.
    pub async fn session_closed(&self, user: &UserId) {
        if self.presence.closed(user) {
            self.unfollow_user(user).await;
            self.record_presence(user).await;
        }
    }

    /// Whether this node takes the channel's events from the other nodes (every channel on a single node).
    pub fn follows_channel(&self, channel: &ChannelId) -> bool {
        self.bus.follows(channel)
    }

    /// Has the bus follow the user's channels, unless it already does (the user's other session here got
    /// there first; a later session waits for it, since each one reads its backlog only after).
    async fn follow_user(&self, user: &UserId) -> DomainResult<()> {
        if !self.bus.follows_users() {
            return Ok(());
        }
        let _turn = self.presence.turn(user).lock().await;
        if self.presence.is_followed(user) {
            return Ok(());
        }
        // Watched first: a channel joined while the store lists them is followed either way.
        self.bus.watch_user(user);
        let channels = self.store.member_channel_ids(user).await?;
        self.bus.follow_channels(user, channels).await;
        self.presence.set_followed(user, true);
        Ok(())
    }

    /// The user's last session here closed: the bus stops following their channels (unless a new session
    /// came meanwhile).
    async fn unfollow_user(&self, user: &UserId) {
        if !self.bus.follows_users() {
            return;
        }
        let _turn = self.presence.turn(user).lock().await;
        if !self.presence.is_online_here(user) {
            self.bus.unwatch_user(user);
            self.presence.set_followed(user, false);
        }
    }

    /// Tells the store whether this node holds the user now, if that changed since it last did. Abandoned
    /// halfway (its session's task dropped), the next change of the user's sessions here catches up; a
    /// store error is logged and caught up the same way.
    async fn record_presence(&self, user: &UserId) {
        let _turn = self.presence.turn(user).lock().await;
        let here = self.presence.is_online_here(user);
        if self.presence.recorded(user) == here {
            return;
        }
        match self.store.set_presence(user, here).await {
            Ok(changed) => {
                self.presence.set_recorded(user, here);
                if changed {
                    self.announce_presence(user, here).await;
                }
            }
            Err(e) => tracing::warn!(user = %user, error = %e, "cannot record presence"),
        }
    }

    /// Tells the store what it missed of this node's sessions (a change it could not record while the
    /// database was away). The node's upkeep calls it every heartbeat.
    pub async fn reconcile_presence(&self) {
        for user in self.presence.unrecorded() {
            self.record_presence(&user).await;
        }
    }

    async fn announce_presence(&self, user: &UserId, online: bool) {
        let last_seen_at = (!online).then(now_millis);
        if let Some(at) = last_seen_at
            && let Err(e) = self.store.set_last_seen(user, at).await
            && !matches!(e, DomainError::NotFound { .. })
        {
            tracing::warn!(user = %user, error = %e, "could not record last_seen_at");
        }
        self.bus
            .publish(vec![Event::Presence {
                user_id: user.clone(),
                online,
                last_seen_at,
            }])
            .await;
    }

    /// Announces offline the users whose sessions were all on nodes that stopped (found by the store's
    /// sweep of silent nodes, or of this node's previous run).
    pub async fn announce_offline(&self, users: &[UserId]) {
        for user in users {
            // Back here meanwhile: online after all.
            if !self.presence.is_online_here(user) {
                self.announce_presence(user, false).await;
            }
        }
    }

    /// At start, before serving: forgets the sessions this node held in its previous run (a crash leaves
    /// them recorded) and announces offline whom that concerns.
    pub async fn reset_presence(&self) -> confab_domain::DomainResult<()> {
        let offline = self.store.forget_own_presence().await?;
        self.announce_offline(&offline).await;
        Ok(())
    }

    /// Whether some node holds a session of the user.
    pub async fn is_online(&self, user: &UserId) -> bool {
        self.online_among(std::slice::from_ref(user)).await.contains(user)
    }

    /// Of `users`, those some node holds a session of (those of this node if the store cannot say).
    pub async fn online_among(&self, users: &[UserId]) -> HashSet<UserId> {
        let mut online: HashSet<UserId> = users
            .iter()
            .filter(|u| self.presence.is_online_here(u))
            .cloned()
            .collect();
        if online.len() == users.len() {
            return online;
        }
        let elsewhere: Vec<UserId> = users.iter().filter(|u| !online.contains(*u)).cloned().collect();
        match self.store.online_among(&elsewhere).await {
            Ok(found) => online.extend(found),
            Err(e) => tracing::warn!(error = %e, "cannot read presence; showing this node's only"),
        }
        online
    }

    /// Users with a session on this node.
    pub fn online_users(&self) -> usize {
        self.presence.online_count()
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
        assert!(p.is_online_here(&u));
        assert!(p.closed(&u));
        assert!(!p.is_online_here(&u));
        assert!(!p.closed(&u), "closing an unknown session is harmless");
    }

    #[test]
    fn what_the_store_was_not_told_is_found_again() {
        let p = PresenceRegistry::default();
        let (a, b) = (UserId::parse("a").unwrap(), UserId::parse("b").unwrap());
        p.opened(&a);
        assert_eq!(p.unrecorded(), vec![a.clone()], "opened, not recorded yet");
        p.set_recorded(&a, true);
        assert!(p.unrecorded().is_empty());
        p.opened(&b);
        p.set_recorded(&b, true);
        p.closed(&b);
        assert_eq!(p.unrecorded(), vec![b.clone()], "closed, the store still has it");
        p.set_recorded(&b, false);
        assert!(p.unrecorded().is_empty());
    }
}
