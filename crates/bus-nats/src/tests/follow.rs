//! Which channels a node takes from NATS: only those of its watched users, followed and unfollowed as they
//! join and leave, with a catch-up once a late subscription is in place.

use super::*;

fn joined(channel: &str, last_seq: u64, user: &str) -> Event {
    Event::MembersJoined {
        channel: crate::interest::tests::channel(channel, last_seq),
        user_ids: Arc::from(vec![uid(user)]),
        by: None,
    }
}

fn left(channel: &str, user: &str) -> Event {
    Event::MemberLeft {
        channel: crate::interest::tests::channel(channel, 0),
        user_id: uid(user),
        by: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_takes_only_the_channels_of_its_watched_users() {
    let Some((a, b)) = two_bare_nodes().await else { return };
    follow(&b, "bob", vec![cid("g")]).await;
    assert!(b.follows(&cid("g")) && !b.follows(&cid("h")));
    assert_eq!(b.followed_channels(), 1);
    let mut b_remote = remote_only(&b);
    // A thousand events of a channel nobody on B is in, then one of B's channel, then one of no channel.
    let others: Vec<Event> = (0..1000).map(|n| read("h", n)).collect();
    a.publish(others).await;
    a.publish(vec![read("g", 1001), Event::UserDeleted(uid("u1002"))]).await;
    let mut seen = [tag(&next(&mut b_remote).await), tag(&next(&mut b_remote).await)];
    seen.sort();
    assert_eq!(seen, ["u1001", "u1002"]);
    assert_eq!(b.stats().received, 2, "NATS never sent B the other channel's events");
    // A node with a session in h takes them.
    let c = bare_node(&nats_url(), &a.subjects().prefix, "c").await;
    follow(&c, "carol", vec![cid("h")]).await;
    let mut c_remote = remote_only(&c);
    a.publish(vec![read("h", 7)]).await;
    assert_eq!(tag(&next(&mut c_remote).await), "u7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_user_joining_through_another_node_follows_the_channel_and_catches_up() {
    let Some((a, b)) = two_bare_nodes().await else { return };
    follow(&b, "bob", vec![]).await;
    let mut b_remote = remote_only(&b);
    // Events published right after the join, before B can have subscribed.
    a.publish(vec![joined("g", 5, "bob"), read("g", 6), read("g", 7)]).await;
    assert!(matches!(next(&mut b_remote).await, Event::MembersJoined { .. }));
    // Whatever of g arrived, the catch-up comes once B's subscription is in place.
    let catch_up = loop {
        match next(&mut b_remote).await {
            Event::ReadUpTo { .. } => continue,
            other => break other,
        }
    };
    match catch_up {
        Event::ChannelCatchUp {
            channel_id,
            after,
            user_ids,
        } => {
            assert_eq!(
                (channel_id, after, &*user_ids),
                (cid("g"), ChannelSeq(5), &[uid("bob")][..])
            );
        }
        other => panic!("expected a catch-up, got {}", other.name()),
    }
    assert!(b.follows(&cid("g")));
    // From then on g's events reach B.
    a.publish(vec![read("g", 8)]).await;
    assert_eq!(tags_until(&mut b_remote, "u8").await.last().unwrap(), "u8");

    // Bob leaves: B no longer takes g (a later event of no channel arrives alone).
    a.publish(vec![left("g", "bob")]).await;
    assert!(matches!(next(&mut b_remote).await, Event::MemberLeft { .. }));
    assert!(!b.follows(&cid("g")), "decided before the subscribers see the leave");
    // NATS has ended the subscription once a later one is confirmed.
    follow(&b, "bert", vec![cid("k")]).await;
    let before = b.stats().received;
    a.publish(vec![read("g", 9), Event::UserDeleted(uid("u10"))]).await;
    assert_eq!(tag(&next(&mut b_remote).await), "u10");
    assert_eq!(b.stats().received, before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_committed_on_the_node_follows_the_channel_and_catches_up_once_subscribed() {
    let Some((a, b)) = two_bare_nodes().await else { return };
    follow(&b, "bob", vec![]).await;
    let mut b_remote = remote_only(&b);
    let mut b_local = local_only(&b);
    b.publish(vec![joined("g", 3, "bob")]).await;
    assert!(b.follows(&cid("g")), "decided before the subscribers see the join");
    assert!(matches!(next(&mut b_local).await, Event::MembersJoined { .. }));
    assert!(matches!(
        next(&mut b_remote).await,
        Event::ChannelCatchUp {
            after: ChannelSeq(3),
            ..
        }
    ));
    a.publish(vec![read("g", 4)]).await;
    assert_eq!(tag(&next(&mut b_remote).await), "u4");
    // A second join of a channel followed already, committed here: the channel's events come in order.
    follow(&b, "bea", vec![]).await;
    b.publish(vec![joined("g", 4, "bea"), Event::UserDeleted(uid("u5"))])
        .await;
    a.publish(vec![Event::UserDeleted(uid("u6"))]).await;
    assert_eq!(tag(&next(&mut b_remote).await), "u6", "no catch-up for bea");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_session_of_a_user_unfollows_their_channels() {
    let Some((a, b)) = two_bare_nodes().await else { return };
    follow(&b, "bob", vec![cid("g"), cid("h")]).await;
    follow(&b, "bea", vec![cid("g")]).await;
    b.unwatch_user(&uid("bob"));
    assert!(b.follows(&cid("g")) && !b.follows(&cid("h")));
    b.unwatch_user(&uid("bea"));
    assert_eq!(b.followed_channels(), 0);
    let mut b_remote = remote_only(&b);
    // The reader unsubscribes in order with its later commands: once a later subscription is confirmed, NATS
    // has ended the earlier ones.
    follow(&b, "bert", vec![cid("k")]).await;
    a.publish(vec![read("g", 1), Event::UserDeleted(uid("u2"))]).await;
    assert_eq!(tag(&next(&mut b_remote).await), "u2");
}
