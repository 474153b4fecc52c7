//! Messages flagged by moderation rules, listed for review and approved or removed once.

use confab_domain::flag::{FlagQuery, FlagState, FlaggedMessage};
use confab_domain::model::MessagePatch;
use confab_domain::{DomainError, Event, MessageId};

use crate::Backend;
use crate::fixture::*;

fn query(state: Option<FlagState>, channel: Option<&str>, after: Option<MessageId>, limit: u32) -> FlagQuery {
    FlagQuery {
        state,
        channel_id: channel.map(cid),
        after,
        limit,
    }
}

fn ids(flags: Vec<FlaggedMessage>) -> Vec<MessageId> {
    flags.into_iter().map(|f| f.message.id).collect()
}

/// A message is flagged when sent with flag rules or by `flag_message` (more rules add to its flag, each
/// once); flags are listed oldest message first, by state, channel and page; an unknown message is
/// `NotFound`; the flags of a deleted channel go with it, so they never shorten a page.
pub async fn flagged_messages_are_listed_for_review<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a"]).await;
    group(s, "g", &["a"]).await;
    group(s, "h", &["a"]).await;
    let mut m = text("g", "a", "buy now");
    m.flags = vec!["spam".into()];
    let m1 = append(s, m).await.unwrap().message;
    let m2 = send(s, "g", "a", "you fool").await;
    let clean = send(s, "g", "a", "hello").await;
    let mut m = text("h", "a", "buy more");
    m.flags = vec!["spam".into()];
    let m3 = append(s, m).await.unwrap().message;
    s.flag_message(m2.id, vec!["abuse".into()]).await.unwrap();

    let f1 = s.get_flag(m1.id).await.unwrap().unwrap();
    assert_eq!(f1.message, m1);
    assert_eq!(
        (f1.rules.as_slice(), f1.state),
        (["spam".to_string()].as_slice(), FlagState::Pending)
    );
    assert_eq!((f1.reviewed_at, f1.reviewed_by), (None, None));
    assert!(f1.flagged_at > 0);
    assert_eq!(s.get_flag(clean.id).await.unwrap(), None);

    s.flag_message(m1.id, vec!["abuse".into(), "spam".into()])
        .await
        .unwrap();
    assert_eq!(s.get_flag(m1.id).await.unwrap().unwrap().rules, ["spam", "abuse"]);

    assert_eq!(
        ids(s.list_flags(query(None, None, None, 10)).await.unwrap()),
        [m1.id, m2.id, m3.id]
    );
    let pending = query(Some(FlagState::Pending), None, None, 10);
    assert_eq!(s.list_flags(pending).await.unwrap().len(), 3);
    assert!(
        s.list_flags(query(Some(FlagState::Approved), None, None, 10))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        ids(s.list_flags(query(None, Some("h"), None, 10)).await.unwrap()),
        [m3.id]
    );
    assert_eq!(
        ids(s.list_flags(query(None, None, Some(m1.id), 1)).await.unwrap()),
        [m2.id]
    );
    assert_err!(
        s.flag_message(MessageId(i64::MAX), vec!["spam".into()]).await,
        DomainError::NotFound { entity: "message", .. }
    );

    s.delete_channel(&cid("g")).await.unwrap();
    assert_eq!(s.get_flag(m1.id).await.unwrap(), None);
    assert_eq!(ids(s.list_flags(query(None, None, None, 1)).await.unwrap()), [m3.id]);
}

/// A review decides once: the same decision again changes nothing, a different one is `AlreadyExists`; a
/// message without a flag is `NotFound`; `Pending` is no decision (`Invalid`).
pub async fn reviews_decide_once<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a", "mod"]).await;
    group(s, "g", &["a"]).await;
    let mut m = text("g", "a", "buy now");
    m.flags = vec!["spam".into()];
    let m = append(s, m).await.unwrap().message;
    let other = send(s, "g", "a", "fine").await;
    s.flag_message(other.id, vec!["spam".into()]).await.unwrap();
    assert_err!(
        s.review_flag(m.id, FlagState::Pending, None).await,
        DomainError::Invalid { field: "state", .. }
    );

    s.review_flag(m.id, FlagState::Approved, Some(uid("mod")))
        .await
        .unwrap();
    let approved = s.get_flag(m.id).await.unwrap().unwrap();
    assert_eq!(approved.state, FlagState::Approved);
    assert_eq!(approved.reviewed_by, Some(uid("mod")));
    assert!(approved.reviewed_at.is_some());
    assert!(!approved.message.deleted);

    s.review_flag(m.id, FlagState::Approved, None).await.unwrap();
    assert_eq!(s.get_flag(m.id).await.unwrap(), Some(approved));
    assert_err!(
        s.review_flag(m.id, FlagState::Removed, None).await,
        DomainError::AlreadyExists { .. }
    );
    assert!(!s.get_message(m.id).await.unwrap().unwrap().deleted);
    let approved = query(Some(FlagState::Approved), None, None, 10);
    assert_eq!(ids(s.list_flags(approved).await.unwrap()), [m.id]);
    let pending = query(Some(FlagState::Pending), None, None, 10);
    assert_eq!(ids(s.list_flags(pending).await.unwrap()), [other.id]);
    let unflagged = send(s, "g", "a", "plain").await;
    assert_err!(
        s.review_flag(unflagged.id, FlagState::Approved, None).await,
        DomainError::NotFound { .. }
    );
}

/// Removing a flagged message deletes it as its sender would (tombstone, `MessageDeleted` published); the
/// same decision again publishes nothing.
pub async fn removing_a_flagged_message_deletes_it<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a"]).await;
    group(s, "g", &["a"]).await;
    let mut m = text("g", "a", "buy now");
    m.flags = vec!["spam".into()];
    let m = append(s, m).await.unwrap().message;
    let mut events = env.events();

    s.review_flag(m.id, FlagState::Removed, None).await.unwrap();
    match events.next().await {
        Event::MessageDeleted {
            channel_id,
            message_id,
            seq,
        } => assert_eq!((channel_id, message_id, seq), (cid("g"), m.id, m.seq)),
        other => panic!("{other:?}"),
    }
    let flag = s.get_flag(m.id).await.unwrap().unwrap();
    assert_eq!((flag.state, flag.reviewed_by), (FlagState::Removed, None));
    assert!(flag.message.deleted);
    assert_eq!((flag.message.seq, flag.message.text.as_str()), (m.seq, ""));
    assert_eq!(seqs(&history(s, "g").await), [1]);

    s.review_flag(m.id, FlagState::Removed, None).await.unwrap();
    assert_nothing_published(s, &mut events, "the same removal again").await;
    assert_err!(
        s.review_flag(m.id, FlagState::Approved, None).await,
        DomainError::AlreadyExists { .. }
    );
}

/// Flagging a reviewed message again (new rules, or an edit whose content matched) puts it back in review:
/// the approval was for the content as it was.
pub async fn flagging_again_reopens_the_review<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a"]).await;
    group(s, "g", &["a"]).await;
    let mut m = text("g", "a", "buy now");
    m.flags = vec!["spam".into()];
    let m = append(s, m).await.unwrap().message;
    s.review_flag(m.id, FlagState::Approved, Some(uid("a"))).await.unwrap();
    s.flag_message(m.id, vec!["abuse".into()]).await.unwrap();
    let again = s.get_flag(m.id).await.unwrap().unwrap();
    assert_eq!(again.state, FlagState::Pending);
    assert_eq!(again.rules, ["spam", "abuse"]);
    assert_eq!((again.reviewed_at, again.reviewed_by), (None, None));

    let plain = send(s, "g", "a", "hello").await;
    let patch = MessagePatch {
        text: Some("buy it".into()),
        flags: vec!["spam".into()],
        ..Default::default()
    };
    let edited = edit(s, plain.id, patch).await.unwrap();
    let flag = s.get_flag(plain.id).await.unwrap().unwrap();
    assert_eq!(
        (flag.state, flag.rules.as_slice()),
        (FlagState::Pending, ["spam".to_string()].as_slice())
    );
    assert_eq!(flag.message, edited);
}
