//! Threads (replies to a message) and read positions.

use confab_domain::{ChannelSeq, DomainError, MessageId};

use crate::Backend;
use crate::fixture::*;

/// Replies are counted on their parent (a deleted reply no longer) and listed oldest first, by page; they
/// take the channel's next sequences like any message.
pub async fn threads_count_their_replies<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a", "b"]).await;
    group(s, "g", &["a", "b"]).await;
    let parent = send(s, "g", "a", "q").await;
    let lonely = send(s, "g", "a", "nobody answers").await;
    let mut replies = Vec::new();
    for i in 0..3 {
        let mut r = text("g", "b", format!("r{i}"));
        r.parent_id = Some(parent.id);
        replies.push(append(s, r).await.unwrap().message);
    }
    assert_eq!(seqs(&replies), [3, 4, 5]);
    assert!(replies.iter().all(|r| r.parent_id == Some(parent.id)));
    assert_eq!(s.get_message(parent.id).await.unwrap().unwrap().reply_count, 3);
    assert_eq!(s.get_message(lonely.id).await.unwrap().unwrap().reply_count, 0);

    let thread = s.thread(parent.id, None, 10).await.unwrap();
    assert_eq!(thread, replies);
    let page = s.thread(parent.id, None, 2).await.unwrap();
    assert_eq!(texts(&page), ["r0", "r1"]);
    let rest = s.thread(parent.id, Some(page[1].id), 2).await.unwrap();
    assert_eq!(texts(&rest), ["r2"]);
    assert!(s.thread(lonely.id, None, 10).await.unwrap().is_empty());
    assert_eq!(seqs(&history(s, "g").await), [1, 2, 3, 4, 5]);

    s.delete_message(replies[1].id).await.unwrap();
    s.delete_message(replies[1].id).await.unwrap();
    assert_eq!(s.get_message(parent.id).await.unwrap().unwrap().reply_count, 2);
}

/// A reply to a reply is `Invalid` (threads are one level deep); a parent in another channel or unknown is
/// `NotFound`; none of them is counted or takes a sequence.
pub async fn replies_to_replies_are_rejected<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a"]).await;
    group(s, "g", &["a"]).await;
    group(s, "h", &["a"]).await;
    let parent = send(s, "g", "a", "q").await;
    let mut r = text("g", "a", "r");
    r.parent_id = Some(parent.id);
    let reply = append(s, r).await.unwrap().message;

    let mut nested = text("g", "a", "rr");
    nested.parent_id = Some(reply.id);
    assert_err!(append(s, nested).await, DomainError::Invalid { field: "parent_id", .. });
    let mut elsewhere = text("h", "a", "x");
    elsewhere.parent_id = Some(parent.id);
    assert_err!(
        append(s, elsewhere).await,
        DomainError::NotFound { entity: "message", .. }
    );
    let mut unknown = text("g", "a", "x");
    unknown.parent_id = Some(MessageId(i64::MAX));
    assert_err!(
        append(s, unknown).await,
        DomainError::NotFound { entity: "message", .. }
    );
    assert_eq!(s.get_message(parent.id).await.unwrap().unwrap().reply_count, 1);
    assert_eq!(s.get_message(reply.id).await.unwrap().unwrap().reply_count, 0);
    assert_eq!(send(s, "g", "a", "next").await.seq, ChannelSeq(3));
    assert!(history(s, "h").await.is_empty());
}

/// A read position only moves forward and never past the channel's last message; a non-member is
/// `NotMember`, an unknown channel `NotFound`.
pub async fn read_positions_only_move_forward<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a", "b", "c"]).await;
    group(s, "g", &["a", "b"]).await;
    for i in 0..4 {
        send(s, "g", "a", &format!("m{i}")).await;
    }
    let read = |seq: u64| {
        let s = s.clone();
        async move { s.mark_read(&cid("g"), &uid("b"), ChannelSeq(seq)).await.unwrap() }
    };
    let position = || {
        let s = s.clone();
        async move { s.get_member(&cid("g"), &uid("b")).await.unwrap().unwrap().read_seq }
    };
    assert_eq!(position().await, ChannelSeq(0));
    assert_eq!(read(2).await, ChannelSeq(2));
    assert_eq!(position().await, ChannelSeq(2));
    assert_eq!(read(1).await, ChannelSeq(2), "never back");
    assert_eq!(position().await, ChannelSeq(2));
    assert_eq!(read(99).await, ChannelSeq(4), "never past the last message");
    assert_eq!(read(0).await, ChannelSeq(4));
    assert_eq!(position().await, ChannelSeq(4));
    assert_err!(
        s.mark_read(&cid("g"), &uid("c"), ChannelSeq(1)).await,
        DomainError::NotMember { .. }
    );
    assert_err!(
        s.mark_read(&cid("nope"), &uid("b"), ChannelSeq(1)).await,
        DomainError::NotFound { entity: "channel", .. }
    );
}

/// A sender has read its own message: its read position moves to the message's sequence.
pub async fn senders_have_read_their_own_messages<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a", "b"]).await;
    group(s, "g", &["a", "b"]).await;
    let position = |u: &'static str| {
        let s = s.clone();
        async move { s.get_member(&cid("g"), &uid(u)).await.unwrap().unwrap().read_seq }
    };
    send(s, "g", "a", "one").await;
    assert_eq!(
        (position("a").await, position("b").await),
        (ChannelSeq(1), ChannelSeq(0))
    );
    send(s, "g", "b", "two").await;
    assert_eq!(
        (position("a").await, position("b").await),
        (ChannelSeq(1), ChannelSeq(2))
    );
}
