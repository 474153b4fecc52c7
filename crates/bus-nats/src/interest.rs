//! Which channels' events a node takes from NATS: those of the channels its watched users (users with a
//! session on the node) are in, and no other. Pure bookkeeping: the decisions become [`Command`]s, queued
//! under the same lock in the order they were made, which the reader carries out (subscribing,
//! unsubscribing, confirming with a probe).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use confab_domain::ports::Origin;
use confab_domain::{ChannelId, ChannelSeq, Event, UserId};
use tokio::sync::oneshot;

/// What the reader does for the bookkeeping, in order.
pub(crate) enum Command {
    /// Subscribe to the channel's subject.
    Follow(ChannelId),
    /// Unsubscribe from it.
    Unfollow(ChannelId),
    /// Tell the waiter once every subscription made before is confirmed.
    Confirm(oneshot::Sender<()>),
    /// Hand this event ([`Event::ChannelCatchUp`]) to the local bus once every subscription made before is
    /// confirmed.
    CatchUp(Event),
}

#[derive(Default)]
struct Watched {
    channels: HashSet<ChannelId>,
    /// The store's list of the user's channels has been applied.
    listed: bool,
    /// Channels the user left (or that were deleted) before the listing was applied: the listing may have
    /// been read before they left.
    left_before_listing: HashSet<ChannelId>,
}

#[derive(Default)]
pub(crate) struct Interest {
    users: HashMap<UserId, Watched>,
    /// Followed channels, with how many watched users they are followed for.
    channels: HashMap<ChannelId, usize>,
    pending: Vec<Command>,
}

impl Interest {
    pub(crate) fn follows(&self, channel: &ChannelId) -> bool {
        self.channels.contains_key(channel)
    }

    pub(crate) fn followed_count(&self) -> usize {
        self.channels.len()
    }

    /// The commands decided since the last call, in order.
    pub(crate) fn take_pending(&mut self) -> Vec<Command> {
        std::mem::take(&mut self.pending)
    }

    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Watches the user (again: no change).
    pub(crate) fn watch(&mut self, user: &UserId) {
        self.users.entry(user.clone()).or_default();
    }

    pub(crate) fn unwatch(&mut self, user: &UserId) {
        let Some(w) = self.users.remove(user) else { return };
        for channel in w.channels {
            self.release(&channel);
        }
    }

    /// Applies the store's list of a watched user's channels; `confirmed` is told once their subscriptions
    /// are in place.
    pub(crate) fn listed(&mut self, user: &UserId, channels: Vec<ChannelId>, confirmed: oneshot::Sender<()>) {
        if let Some(w) = self.users.get_mut(user) {
            let left = std::mem::take(&mut w.left_before_listing);
            w.listed = true;
            let new: Vec<ChannelId> = channels
                .into_iter()
                .filter(|c| !left.contains(c) && w.channels.insert(c.clone()))
                .collect();
            for channel in new {
                self.acquire(channel);
            }
        }
        self.pending.push(Command::Confirm(confirmed));
    }

    /// Follows the membership change of `event` (see [`Event::is_membership`]). Returns the catch-up to hand
    /// to the local bus right after the event, when watched users joined a channel this node already followed
    /// but whose events, arriving on another subscription, may have been taken before this one.
    pub(crate) fn membership(&mut self, event: &Event, origin: Origin) -> Option<Event> {
        let (channel, joined): (&ChannelId, Vec<UserId>) = match event {
            Event::ChannelCreated { channel, members } => (&channel.id, self.watched_among(members)),
            Event::MembersJoined { channel, user_ids, .. } => (&channel.id, self.watched_among(user_ids)),
            Event::MemberLeft { channel, user_id, .. } => {
                self.leave(&channel.id, user_id);
                return None;
            }
            Event::ChannelDeleted { channel_id, members } => {
                for user in members.iter() {
                    self.leave(channel_id, user);
                }
                return None;
            }
            _ => return None,
        };
        if joined.is_empty() {
            return None;
        }
        let after = match event {
            Event::ChannelCreated { channel, .. } | Event::MembersJoined { channel, .. } => channel.last_seq,
            _ => ChannelSeq::ZERO,
        };
        let newly = !self.follows(channel);
        for user in &joined {
            let w = self.users.get_mut(user).expect("watched");
            w.left_before_listing.remove(channel);
            if w.channels.insert(channel.clone()) {
                self.acquire(channel.clone());
            }
        }
        let catch_up = Event::ChannelCatchUp {
            channel_id: channel.clone(),
            after,
            user_ids: Arc::from(joined),
        };
        match (newly, origin) {
            // Events published between the join and this node's subscription never reached it.
            (true, _) => {
                self.pending.push(Command::CatchUp(catch_up));
                None
            }
            (false, Origin::Remote) => Some(catch_up),
            // Committed here, already followed: the channel's events come in order after it.
            (false, Origin::Local) => None,
        }
    }

    fn watched_among(&self, users: &[UserId]) -> Vec<UserId> {
        users.iter().filter(|u| self.users.contains_key(*u)).cloned().collect()
    }

    fn leave(&mut self, channel: &ChannelId, user: &UserId) {
        let Some(w) = self.users.get_mut(user) else { return };
        if !w.listed {
            w.left_before_listing.insert(channel.clone());
        }
        if w.channels.remove(channel) {
            self.release(channel);
        }
    }

    fn acquire(&mut self, channel: ChannelId) {
        let n = self.channels.entry(channel.clone()).or_insert(0);
        *n += 1;
        if *n == 1 {
            self.pending.push(Command::Follow(channel));
        }
    }

    fn release(&mut self, channel: &ChannelId) {
        if let Some(n) = self.channels.get_mut(channel) {
            *n -= 1;
            if *n == 0 {
                self.channels.remove(channel);
                self.pending.push(Command::Unfollow(channel.clone()));
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use confab_domain::model::{Channel, ChannelKind};

    fn uid(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    fn cid(s: &str) -> ChannelId {
        ChannelId::parse(s).unwrap()
    }

    pub(crate) fn channel(id: &str, last_seq: u64) -> Arc<Channel> {
        Arc::new(Channel {
            id: cid(id),
            kind: ChannelKind::Group,
            name: String::new(),
            cover_url: String::new(),
            custom_type: String::new(),
            data: None,
            created_by: None,
            created_at: 0,
            updated_at: 0,
            last_seq: ChannelSeq(last_seq),
            last_message_at: None,
            member_count: 2,
            distinct: false,
        })
    }

    fn joined(id: &str, last_seq: u64, users: &[&str]) -> Event {
        Event::MembersJoined {
            channel: channel(id, last_seq),
            user_ids: users.iter().map(|u| uid(u)).collect(),
            by: None,
        }
    }

    fn left(id: &str, user: &str) -> Event {
        Event::MemberLeft {
            channel: channel(id, 0),
            user_id: uid(user),
            by: None,
        }
    }

    /// The pending commands, as text.
    fn drain(i: &mut Interest) -> Vec<String> {
        i.take_pending()
            .into_iter()
            .map(|c| match c {
                Command::Follow(c) => format!("follow {c}"),
                Command::Unfollow(c) => format!("unfollow {c}"),
                Command::Confirm(_) => "confirm".into(),
                Command::CatchUp(Event::ChannelCatchUp {
                    channel_id,
                    after,
                    user_ids,
                }) => format!("catch up {channel_id} after {} for {}", after.0, user_ids.len()),
                Command::CatchUp(_) => unreachable!(),
            })
            .collect()
    }

    #[test]
    fn a_channel_is_followed_while_a_watched_user_is_in_it() {
        let mut i = Interest::default();
        i.watch(&uid("a"));
        i.watch(&uid("b"));
        i.listed(&uid("a"), vec![cid("g"), cid("h")], oneshot::channel().0);
        i.listed(&uid("b"), vec![cid("g")], oneshot::channel().0);
        assert_eq!(drain(&mut i), ["follow g", "follow h", "confirm", "confirm"]);
        assert!(i.follows(&cid("g")) && !i.follows(&cid("x")));

        i.unwatch(&uid("a"));
        assert_eq!(drain(&mut i), ["unfollow h"], "b still needs g");
        assert!(i.membership(&left("g", "b"), Origin::Remote).is_none());
        assert_eq!(drain(&mut i), ["unfollow g"]);
        assert_eq!(i.followed_count(), 0);
    }

    #[test]
    fn watching_again_changes_nothing() {
        let mut i = Interest::default();
        i.watch(&uid("a"));
        i.listed(&uid("a"), vec![cid("g")], oneshot::channel().0);
        i.watch(&uid("a"));
        i.listed(&uid("a"), vec![cid("g")], oneshot::channel().0);
        assert_eq!(drain(&mut i), ["follow g", "confirm", "confirm"]);
        i.unwatch(&uid("a"));
        assert!(!i.follows(&cid("g")));
        i.unwatch(&uid("a"));
        assert_eq!(drain(&mut i), ["unfollow g"]);
    }

    #[test]
    fn joining_an_unfollowed_channel_follows_it_then_catches_up() {
        let mut i = Interest::default();
        i.watch(&uid("a"));
        i.listed(&uid("a"), vec![], oneshot::channel().0);
        drain(&mut i);
        // Of users not watched here: nothing to do.
        assert!(i.membership(&joined("g", 4, &["x"]), Origin::Remote).is_none());
        assert!(drain(&mut i).is_empty());

        assert!(i.membership(&joined("g", 4, &["a", "x"]), Origin::Local).is_none());
        assert_eq!(drain(&mut i), ["follow g", "catch up g after 4 for 1"]);
        assert!(i.follows(&cid("g")));
    }

    #[test]
    fn joining_a_followed_channel_catches_up_at_once_when_it_came_from_another_node() {
        let mut i = Interest::default();
        for u in ["a", "b"] {
            i.watch(&uid(u));
        }
        i.listed(&uid("a"), vec![cid("g")], oneshot::channel().0);
        i.listed(&uid("b"), vec![], oneshot::channel().0);
        drain(&mut i);
        assert!(i.membership(&joined("g", 9, &["b"]), Origin::Local).is_none());
        i.membership(&left("g", "b"), Origin::Local);
        let catch_up = i.membership(&joined("g", 12, &["b"]), Origin::Remote);
        assert!(matches!(
            catch_up,
            Some(Event::ChannelCatchUp {
                after: ChannelSeq(12),
                ..
            })
        ));
        assert!(drain(&mut i).is_empty(), "g stays followed for a");
    }

    #[test]
    fn a_channel_left_before_the_listing_is_applied_is_not_followed() {
        let mut i = Interest::default();
        i.watch(&uid("a"));
        i.membership(&left("g", "a"), Origin::Remote);
        i.membership(
            &Event::ChannelDeleted {
                channel_id: cid("d"),
                members: Arc::from(vec![uid("a")]),
            },
            Origin::Remote,
        );
        // Read before the user left g and d were deleted; h joined again since.
        i.membership(&left("h", "a"), Origin::Remote);
        i.membership(&joined("h", 1, &["a"]), Origin::Remote);
        i.listed(
            &uid("a"),
            vec![cid("g"), cid("d"), cid("h"), cid("k")],
            oneshot::channel().0,
        );
        assert_eq!(
            drain(&mut i),
            ["follow h", "catch up h after 1 for 1", "follow k", "confirm"]
        );
    }

    #[test]
    fn a_deleted_channel_is_no_longer_followed() {
        let mut i = Interest::default();
        i.watch(&uid("a"));
        i.listed(&uid("a"), vec![cid("g")], oneshot::channel().0);
        drain(&mut i);
        i.membership(
            &Event::ChannelDeleted {
                channel_id: cid("g"),
                members: Arc::from(vec![uid("a"), uid("b")]),
            },
            Origin::Remote,
        );
        assert_eq!(drain(&mut i), ["unfollow g"]);
        i.unwatch(&uid("a"));
        assert!(drain(&mut i).is_empty());
    }
}
