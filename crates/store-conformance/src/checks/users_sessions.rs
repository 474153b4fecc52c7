//! Accounts and session tokens.

use confab_domain::model::UserPatch;
use confab_domain::ports::SessionRecord;
use confab_domain::{DomainError, now_millis};

use crate::Backend;
use crate::fixture::*;

fn session(token: u8, user: &str, expires_at: Option<i64>) -> SessionRecord {
    SessionRecord {
        token_hash: [token; 32],
        user_id: uid(user),
        created_at: 1_700_000_000_000,
        expires_at,
    }
}

/// A fresh store is ready, and empty: no users, channels, bots, providers, settings or recorded events;
/// it is ready again once reopened.
pub async fn a_fresh_store_is_ready_and_empty<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    assert!(s.ready().await);
    assert!(s.list_users(None, 10).await.unwrap().is_empty());
    assert!(s.list_channels(None, 10).await.unwrap().is_empty());
    assert!(s.list_bots().await.unwrap().is_empty());
    assert!(s.list_providers().await.unwrap().is_empty());
    assert!(s.list_settings("any").await.unwrap().is_empty());
    assert_eq!(s.outbox_head().await.unwrap(), 0);
    assert_eq!(s.sweep_generating().await.unwrap(), 0);
    let env = env.reopen().await;
    assert!(env.store.ready().await);
}

/// A created user reads back as created (timestamps in milliseconds); its id cannot be taken again.
pub async fn users_are_created_once<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    let mut nu = new_user("alice");
    nu.nickname = "Alice".into();
    nu.profile_url = "https://example.com/alice.png".into();
    nu.metadata.insert("team".into(), "blue".into());
    let before = now_millis();
    let created = s.create_user(nu.clone()).await.unwrap();
    let after = now_millis();
    assert_eq!(created.id, uid("alice"));
    assert_eq!(
        (created.nickname.as_str(), created.profile_url.as_str()),
        ("Alice", "https://example.com/alice.png")
    );
    assert_eq!(created.metadata, nu.metadata);
    assert!(!created.is_bot && !created.disabled);
    assert_eq!(created.last_seen_at, None);
    assert_eq!(created.created_at, created.updated_at);
    assert!(
        before - 60_000 <= created.created_at && created.created_at <= after + 60_000,
        "created_at is milliseconds since the epoch: {} not near {before}",
        created.created_at
    );
    assert_eq!(s.get_user(&uid("alice")).await.unwrap(), Some(created.clone()));

    let mut again = new_user("alice");
    again.nickname = "Impostor".into();
    assert_err!(
        s.create_user(again).await,
        DomainError::AlreadyExists { entity: "user", .. }
    );
    assert_eq!(
        s.get_user(&uid("alice")).await.unwrap(),
        Some(created),
        "the first account is unchanged"
    );
    assert_eq!(s.get_user(&uid("nobody")).await.unwrap(), None);
}

/// Users are listed in id order, a page at a time after the last id seen.
pub async fn users_list_in_id_order_by_page<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["carol", "alice", "dave", "bob"]).await;
    let ids = |us: Vec<confab_domain::model::User>| us.into_iter().map(|u| u.id).collect::<Vec<_>>();
    assert_eq!(ids(s.list_users(None, 2).await.unwrap()), [uid("alice"), uid("bob")]);
    assert_eq!(
        ids(s.list_users(Some(&uid("bob")), 2).await.unwrap()),
        [uid("carol"), uid("dave")]
    );
    assert!(s.list_users(Some(&uid("dave")), 2).await.unwrap().is_empty());
    assert_eq!(s.list_users(None, 10).await.unwrap().len(), 4);
}

/// A patch changes the fields it names and nothing else; an unknown user is `NotFound`.
pub async fn user_patches_change_only_what_they_name<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    let mut nu = new_user("alice");
    nu.profile_url = "https://example.com/a.png".into();
    nu.metadata.insert("a".into(), "1".into());
    let created = s.create_user(nu).await.unwrap();

    let renamed = s
        .update_user(
            &uid("alice"),
            UserPatch {
                nickname: Some("Al".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(renamed.nickname, "Al");
    assert_eq!(renamed.profile_url, created.profile_url);
    assert_eq!(renamed.metadata, created.metadata);
    assert_eq!(renamed.created_at, created.created_at);
    assert!(renamed.updated_at >= created.updated_at);
    assert!(!renamed.disabled);

    let mut metadata = serde_json::Map::new();
    metadata.insert("b".into(), "2".into());
    let blocked = s
        .update_user(
            &uid("alice"),
            UserPatch {
                metadata: Some(metadata.clone()),
                disabled: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(blocked.metadata, metadata, "metadata is replaced, not merged");
    assert_eq!(blocked.nickname, "Al");
    assert!(blocked.disabled);
    assert_eq!(s.get_user(&uid("alice")).await.unwrap(), Some(blocked));

    let unblocked = s
        .update_user(
            &uid("alice"),
            UserPatch {
                disabled: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(!unblocked.disabled);
    assert_err!(
        s.update_user(&uid("nobody"), UserPatch::default()).await,
        DomainError::NotFound { entity: "user", .. }
    );
    assert_eq!(s.get_user(&uid("nobody")).await.unwrap(), None);
}

/// Deleting an account removes it, its sessions and its memberships; its messages stay, attributed to its
/// id. Deleting it again is `NotFound`. An account created again with the same id starts afresh: the old
/// one's idempotency keys are not its own.
pub async fn deleting_a_user_keeps_its_messages<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a", "b"]).await;
    group(s, "g", &["a", "b"]).await;
    let mut m = text("g", "a", "hello");
    m.client_msg_id = Some("k1".into());
    let m = append(s, m).await.unwrap().message;
    s.create_session(session(1, "a", None)).await.unwrap();
    s.create_session(session(2, "b", None)).await.unwrap();

    s.delete_user(&uid("a")).await.unwrap();
    assert_eq!(s.get_user(&uid("a")).await.unwrap(), None);
    assert_eq!(s.find_session(&[1; 32]).await.unwrap(), None);
    assert!(
        s.find_session(&[2; 32]).await.unwrap().is_some(),
        "others' sessions stay"
    );
    assert_eq!(s.member_ids(&cid("g")).await.unwrap(), [uid("b")]);
    assert_eq!(s.get_member(&cid("g"), &uid("a")).await.unwrap(), None);
    assert_eq!(s.get_channel(&cid("g")).await.unwrap().unwrap().member_count, 1);
    assert!(s.list_member_channels(&uid("a"), None, 10).await.unwrap().is_empty());
    let kept = s.get_message(m.id).await.unwrap().unwrap();
    assert_eq!((kept.sender_id, kept.text.as_str()), (Some(uid("a")), "hello"));
    assert_eq!(history(s, "g").await.len(), 1);

    assert_err!(
        s.delete_user(&uid("a")).await,
        DomainError::NotFound { entity: "user", .. }
    );

    user(s, "a").await;
    s.add_members(&cid("g"), vec![uid("a")], None).await.unwrap();
    let mut again = text("g", "a", "hello again");
    again.client_msg_id = Some("k1".into());
    let again = append(s, again).await.unwrap();
    assert!(!again.duplicate);
    assert_ne!(again.message.id, m.id);
    assert_eq!(again.message.text, "hello again");
}

/// The time a user was last seen is kept, and replaced by the next one.
pub async fn last_seen_is_kept<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    user(s, "a").await;
    assert_eq!(s.get_user(&uid("a")).await.unwrap().unwrap().last_seen_at, None);
    s.set_last_seen(&uid("a"), 1_234).await.unwrap();
    assert_eq!(s.get_user(&uid("a")).await.unwrap().unwrap().last_seen_at, Some(1_234));
    s.set_last_seen(&uid("a"), 5_678).await.unwrap();
    assert_eq!(s.get_user(&uid("a")).await.unwrap().unwrap().last_seen_at, Some(5_678));
}

/// Sessions are found by their token hash and revoked per account (returning how many were); an unknown
/// account has none (`NotFound`).
pub async fn sessions_are_found_and_revoked_per_user<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a", "b"]).await;
    let first = session(1, "a", None);
    let second = session(2, "a", Some(1_800_000_000_000));
    for rec in [first.clone(), second.clone(), session(3, "b", None)] {
        s.create_session(rec).await.unwrap();
    }
    assert_eq!(s.find_session(&[1; 32]).await.unwrap(), Some(first));
    assert_eq!(s.find_session(&[2; 32]).await.unwrap(), Some(second));
    assert_eq!(s.find_session(&[9; 32]).await.unwrap(), None);

    assert_eq!(s.revoke_sessions(&uid("a")).await.unwrap(), 2);
    assert_eq!(s.find_session(&[1; 32]).await.unwrap(), None);
    assert_eq!(s.find_session(&[2; 32]).await.unwrap(), None);
    assert_eq!(
        s.find_session(&[3; 32]).await.unwrap().map(|r| r.user_id),
        Some(uid("b"))
    );
    assert_eq!(s.revoke_sessions(&uid("a")).await.unwrap(), 0);
    assert_err!(
        s.create_session(session(4, "nobody", None)).await,
        DomainError::NotFound { entity: "user", .. }
    );
    assert_eq!(s.find_session(&[4; 32]).await.unwrap(), None);
}

/// A token hash signs in one account: the same account again keeps it with the new expiry, another
/// account is refused (`Invalid` token) and the token still signs in its owner.
pub async fn a_session_token_belongs_to_one_account<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a", "b"]).await;
    s.create_session(session(7, "a", None)).await.unwrap();
    s.create_session(session(7, "a", Some(i64::MAX))).await.unwrap();
    let found = s.find_session(&[7; 32]).await.unwrap().unwrap();
    assert_eq!((found.user_id, found.expires_at), (uid("a"), Some(i64::MAX)));
    assert_err!(
        s.create_session(session(7, "b", None)).await,
        DomainError::Invalid { field: "token", .. }
    );
    assert_eq!(s.find_session(&[7; 32]).await.unwrap().unwrap().user_id, uid("a"));
}

/// Acknowledged accounts and sessions are there after the store is opened again.
pub async fn users_and_sessions_survive_reopen<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    let mut nu = new_user("alice");
    nu.metadata.insert("k".into(), "v".into());
    s.create_user(nu).await.unwrap();
    let patched = s
        .update_user(
            &uid("alice"),
            UserPatch {
                nickname: Some("Alice".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    s.set_last_seen(&uid("alice"), 42).await.unwrap();
    let rec = session(5, "alice", Some(1_900_000_000_000));
    s.create_session(rec.clone()).await.unwrap();

    let env = env.reopen().await;
    let s = &env.store;
    let got = s.get_user(&uid("alice")).await.unwrap().unwrap();
    assert_eq!(
        got,
        confab_domain::model::User {
            last_seen_at: Some(42),
            ..patched
        }
    );
    assert_eq!(s.find_session(&[5; 32]).await.unwrap(), Some(rec));
}
