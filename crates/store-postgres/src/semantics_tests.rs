//! Semantics this store keeps that the conformance suite does not check yet (`store-sqlite` is being brought
//! in line, and the suite will gain these), and what PostgreSQL changes (text without NUL, byte order).

use confab_domain::flag::{FlagQuery, FlagState};
use confab_domain::model::{FileObject, FileQuota, NewMessage};
use confab_domain::ports::{SessionRecord, Store};
use confab_domain::{DomainError, FileId, MessageId, rules};

use crate::PostgresStore;
use crate::test_data::{cid, new_group, new_user, uid};
use crate::testing::{TestSchema, skip_without_postgres};

async fn user(s: &PostgresStore, id: &str) {
    s.create_user(new_user(id, false)).await.unwrap();
}

async fn group(s: &PostgresStore, id: &str, members: &[&str]) {
    s.create_channel(new_group(id, members)).await.unwrap();
}

async fn append(s: &PostgresStore, m: NewMessage) -> Result<confab_domain::model::Appended, DomainError> {
    let pre = rules::new_message(&m);
    s.append_message(m, pre).await
}

fn flagged(channel: &str, sender: &str, text: &str) -> NewMessage {
    let mut m = NewMessage::text(cid(channel), uid(sender), text);
    m.flags = vec!["spam".into()];
    m
}

async fn fresh() -> Option<(TestSchema, PostgresStore)> {
    if skip_without_postgres().await {
        return None;
    }
    let schema = TestSchema::create().await;
    let (store, _) = schema.store().await;
    Some((schema, store))
}

/// Flags of a deleted channel's messages are left out before the limit: a page is full while there are
/// flags to fill it.
#[tokio::test]
async fn flag_pages_are_not_short_for_deleted_channels() {
    let Some((_schema, s)) = fresh().await else { return };
    user(&s, "a").await;
    group(&s, "gone", &["a"]).await;
    group(&s, "kept", &["a"]).await;
    for i in 0..3 {
        append(&s, flagged("gone", "a", &format!("g{i}"))).await.unwrap();
    }
    let mut kept = Vec::new();
    for i in 0..3 {
        kept.push(
            append(&s, flagged("kept", "a", &format!("k{i}")))
                .await
                .unwrap()
                .message
                .id,
        );
    }
    s.delete_channel(&cid("gone")).await.unwrap();
    let page = s
        .list_flags(FlagQuery {
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.iter().map(|f| f.message.id).collect::<Vec<_>>(), kept[..2]);
}

/// An account created again under a deleted account's id does not inherit its idempotency keys: its send
/// with a key the deleted account used is a new message.
#[tokio::test]
async fn a_recreated_account_starts_without_the_old_keys() {
    let Some((_schema, s)) = fresh().await else { return };
    user(&s, "a").await;
    group(&s, "g", &["a"]).await;
    let mut keyed = NewMessage::text(cid("g"), uid("a"), "first life");
    keyed.client_msg_id = Some("k".into());
    let old = append(&s, keyed.clone()).await.unwrap().message;
    s.delete_user(&uid("a")).await.unwrap();
    user(&s, "a").await;
    s.add_members(&cid("g"), vec![uid("a")], None).await.unwrap();
    keyed.text = "second life".into();
    let new = append(&s, keyed.clone()).await.unwrap();
    assert!(!new.duplicate);
    assert_ne!(new.message.id, old.id);
    assert_eq!(new.message.text, "second life");
    assert_eq!(
        s.get_message(old.id).await.unwrap().unwrap().client_msg_id.as_deref(),
        Some("k")
    );
    assert!(
        append(&s, keyed).await.unwrap().duplicate,
        "the new account's key is its own"
    );
}

/// A review approves or removes: `Pending` is `Invalid`, and changes nothing.
#[tokio::test]
async fn a_review_cannot_decide_pending() {
    let Some((_schema, s)) = fresh().await else { return };
    user(&s, "a").await;
    group(&s, "g", &["a"]).await;
    let m = append(&s, flagged("g", "a", "buy")).await.unwrap().message;
    let res = s.review_flag(m.id, FlagState::Pending, None).await;
    assert!(matches!(res, Err(DomainError::Invalid { .. })), "{res:?}");
    let res = s.review_flag(MessageId(i64::MAX), FlagState::Pending, None).await;
    assert!(matches!(res, Err(DomainError::Invalid { .. })), "{res:?}");
    s.review_flag(m.id, FlagState::Approved, None).await.unwrap();
    assert_eq!(s.get_flag(m.id).await.unwrap().unwrap().state, FlagState::Approved);
}

/// A file id is recorded once: a second record with the same id is `AlreadyExists` and changes nothing
/// (nor the quota's count).
#[tokio::test]
async fn a_file_id_is_recorded_once() {
    let Some((_schema, s)) = fresh().await else { return };
    user(&s, "a").await;
    group(&s, "g", &["a"]).await;
    let file = |size| FileObject {
        id: FileId::parse(&format!("{:032x}", 1)).unwrap(),
        channel_id: cid("g"),
        uploader_id: Some(uid("a")),
        name: "f".into(),
        size,
        content_type: "text/plain".into(),
        sha256: String::new(),
        created_at: 1,
    };
    let quota = FileQuota {
        per_user: 100,
        total: 100,
    };
    s.put_file(file(60), quota).await.unwrap();
    let again = s.put_file(file(10), quota).await;
    assert!(
        matches!(again, Err(DomainError::AlreadyExists { entity: "file", .. })),
        "{again:?}"
    );
    assert_eq!(s.get_file(&file(0).id).await.unwrap().unwrap().size, 60);
    let other = FileObject {
        id: FileId::parse(&format!("{:032x}", 2)).unwrap(),
        ..file(40)
    };
    s.put_file(other, quota).await.unwrap();
}

/// A session of an unknown account is `NotFound`.
#[tokio::test]
async fn sessions_need_an_account() {
    let Some((_schema, s)) = fresh().await else { return };
    let res = s
        .create_session(SessionRecord {
            token_hash: [3; 32],
            user_id: uid("ghost"),
            created_at: 1,
            expires_at: None,
        })
        .await;
    assert!(
        matches!(res, Err(DomainError::NotFound { entity: "user", .. })),
        "{res:?}"
    );
    assert_eq!(s.find_session(&[3; 32]).await.unwrap(), None);
}

/// Deleting a thread reply takes it off its parent's count, once; deleting the parent changes no count.
#[tokio::test]
async fn deleted_replies_leave_the_count() {
    let Some((_schema, s)) = fresh().await else { return };
    user(&s, "a").await;
    group(&s, "g", &["a"]).await;
    let parent = append(&s, NewMessage::text(cid("g"), uid("a"), "q"))
        .await
        .unwrap()
        .message;
    let mut replies = Vec::new();
    for i in 0..2 {
        let mut r = NewMessage::text(cid("g"), uid("a"), format!("r{i}"));
        r.parent_id = Some(parent.id);
        replies.push(append(&s, r).await.unwrap().message);
    }
    let count = || async { s.get_message(parent.id).await.unwrap().unwrap().reply_count };
    assert_eq!(count().await, 2);
    s.delete_message(replies[0].id).await.unwrap();
    assert_eq!(count().await, 1);
    s.delete_message(replies[0].id).await.unwrap();
    assert_eq!(count().await, 1, "a reply deleted again counts off once");
    s.delete_message(parent.id).await.unwrap();
    assert_eq!(s.get_message(replies[1].id).await.unwrap().unwrap().reply_count, 0);
    s.delete_message(replies[1].id).await.unwrap();
    assert_eq!(count().await, 0);
}

/// PostgreSQL's text holds no NUL character: such text is `Invalid`, and the send takes no number.
#[tokio::test]
async fn text_with_nul_is_invalid() {
    let Some((_schema, s)) = fresh().await else { return };
    user(&s, "a").await;
    group(&s, "g", &["a"]).await;
    let res = append(&s, NewMessage::text(cid("g"), uid("a"), "a\0b")).await;
    assert!(matches!(res, Err(DomainError::Invalid { .. })), "{res:?}");
    let next = append(&s, NewMessage::text(cid("g"), uid("a"), "ok")).await.unwrap();
    assert_eq!(next.message.seq.0, 1);
}

/// Ids page in byte order (as SQLite compares), whatever the database's collation.
#[tokio::test]
async fn ids_page_in_byte_order() {
    let Some((_schema, s)) = fresh().await else { return };
    for id in ["alice", "Bob", "_x", "Zed", "bob"] {
        user(&s, id).await;
    }
    let ids: Vec<String> = s
        .list_users(None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.id.to_string())
        .collect();
    assert_eq!(ids, ["Bob", "Zed", "_x", "alice", "bob"]);
    assert_eq!(s.list_users(Some(&uid("Zed")), 1).await.unwrap()[0].id, uid("_x"));
}
