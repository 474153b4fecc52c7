//! Channels, distinct channels, and their members.

use confab_domain::DomainError;
use confab_domain::model::{ChannelKind, ChannelPatch, FileObject, FileQuota, NewChannel};
use confab_domain::{ChannelSeq, FileId};
use serde_json::json;

use crate::Backend;
use crate::fixture::*;

/// A channel is created with its members (each once); its id cannot be taken again; a member without an
/// account fails the creation and nothing is created.
pub async fn channels_are_created_with_their_members<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a", "b"]).await;
    let mut nc = new_group("g", &["b", "a", "b"]);
    nc.name = "Team".into();
    nc.cover_url = "https://example.com/c.png".into();
    nc.custom_type = "team".into();
    nc.data = Some(json!({"topic": "rust"}));
    nc.created_by = Some(uid("a"));
    let (c, created) = s.create_channel(nc).await.unwrap();
    assert!(created);
    assert_eq!((c.id.clone(), c.kind), (cid("g"), ChannelKind::Group));
    assert_eq!(
        (c.name.as_str(), c.cover_url.as_str(), c.custom_type.as_str()),
        ("Team", "https://example.com/c.png", "team")
    );
    assert_eq!(c.data, Some(json!({"topic": "rust"})));
    assert_eq!(c.created_by, Some(uid("a")));
    assert_eq!((c.last_seq, c.last_message_at), (ChannelSeq::ZERO, None));
    assert_eq!(c.member_count, 2, "members are counted once");
    assert!(!c.distinct);
    assert_eq!(c.created_at, c.updated_at);
    assert_eq!(s.get_channel(&cid("g")).await.unwrap(), Some(c));
    assert_eq!(sorted(s.member_ids(&cid("g")).await.unwrap()), [uid("a"), uid("b")]);
    assert_eq!(s.member_channel_ids(&uid("b")).await.unwrap(), [cid("g")]);

    assert_err!(
        s.create_channel(new_group("g", &["a"])).await,
        DomainError::AlreadyExists { entity: "channel", .. }
    );
    assert_err!(
        s.create_channel(new_group("g2", &["a", "nobody"])).await,
        DomainError::NotFound { entity: "user", .. }
    );
    assert_eq!(s.get_channel(&cid("g2")).await.unwrap(), None);
    assert!(s.member_ids(&cid("g2")).await.unwrap().is_empty());
    assert_eq!(s.get_channel(&cid("unknown")).await.unwrap(), None);
}

/// The direct channel of a pair is one channel, whoever opens it: opening it again returns it with `false`
/// (and brings back a member who left); its members cannot be changed otherwise.
pub async fn direct_channels_are_distinct<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a", "b", "c"]).await;
    let (c1, created1) = s.create_channel(new_direct("a", "b")).await.unwrap();
    let (c2, created2) = s.create_channel(new_direct("b", "a")).await.unwrap();
    assert!(created1 && !created2);
    assert_eq!(c1.id, c2.id);
    assert_eq!((c1.kind, c1.member_count), (ChannelKind::Direct, 2));
    send(s, c1.id.as_str(), "a", "hi").await;

    s.remove_member(&c1.id, &uid("b"), None).await.unwrap();
    let (back, created) = s.create_channel(new_direct("a", "b")).await.unwrap();
    assert!(!created);
    assert_eq!(back.member_count, 2);
    assert_eq!(back.last_seq, ChannelSeq(1), "history intact");
    assert!(s.get_member(&c1.id, &uid("b")).await.unwrap().is_some());
    assert_err!(
        s.add_members(&c1.id, vec![uid("c")], None).await,
        DomainError::Forbidden(_)
    );
    assert_eq!(s.get_member(&c1.id, &uid("c")).await.unwrap(), None);
}

/// While a channel created with a distinct key exists, creating another with the same key returns it with
/// `false`; a taken id is still `AlreadyExists` for a new key.
pub async fn a_distinct_key_names_one_channel<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a", "b"]).await;
    let mk = |id: &str, key: Option<&str>| NewChannel {
        distinct_key: key.map(String::from),
        ..new_group(id, &["a", "b"])
    };
    let (c1, created1) = s.create_channel(mk("g1", Some("k"))).await.unwrap();
    assert!(created1 && c1.distinct);
    let (c2, created2) = s.create_channel(mk("g2", Some("k"))).await.unwrap();
    assert!(!created2);
    assert_eq!(c2.id, cid("g1"));
    assert_eq!(s.get_channel(&cid("g2")).await.unwrap(), None);
    let (c3, created3) = s.create_channel(mk("g3", None)).await.unwrap();
    assert!(created3 && !c3.distinct);
    let (_, created4) = s.create_channel(mk("g4", Some("other"))).await.unwrap();
    assert!(created4);
    assert_err!(
        s.create_channel(mk("g1", Some("third"))).await,
        DomainError::AlreadyExists { .. }
    );
    assert!(s.get_channel(&cid("g1")).await.unwrap().unwrap().distinct);
}

/// A patch changes the fields it names and nothing else (`data: Some(None)` clears it); an unknown channel
/// is `NotFound`.
pub async fn channel_patches_change_only_what_they_name<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    user(s, "a").await;
    let mut nc = new_group("g", &["a"]);
    nc.custom_type = "t".into();
    nc.data = Some(json!({"x": 1}));
    let (created, _) = s.create_channel(nc).await.unwrap();

    let renamed = s
        .update_channel(
            &cid("g"),
            ChannelPatch {
                name: Some("New".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(renamed.name, "New");
    assert_eq!(
        (renamed.custom_type.as_str(), &renamed.data, &renamed.cover_url),
        ("t", &Some(json!({"x": 1})), &created.cover_url)
    );
    assert_eq!(renamed.created_at, created.created_at);
    assert!(renamed.updated_at >= created.updated_at);

    let patched = s
        .update_channel(
            &cid("g"),
            ChannelPatch {
                cover_url: Some("https://example.com/n.png".into()),
                custom_type: Some("u".into()),
                data: Some(None),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (
            patched.name.as_str(),
            patched.cover_url.as_str(),
            patched.custom_type.as_str()
        ),
        ("New", "https://example.com/n.png", "u")
    );
    assert_eq!(patched.data, None);
    assert_eq!(patched.member_count, 1);
    assert_eq!(s.get_channel(&cid("g")).await.unwrap(), Some(patched));
    assert_err!(
        s.update_channel(&cid("nope"), ChannelPatch::default()).await,
        DomainError::NotFound { entity: "channel", .. }
    );
}

/// Deleting a channel removes it with its members, messages, flags and files (the next sweep of unattached
/// files returns those, whatever their age); other channels keep theirs.
pub async fn deleting_a_channel_removes_it_and_its_messages<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a", "b"]).await;
    group(s, "g", &["a", "b"]).await;
    group(s, "h", &["a"]).await;
    let gone = send(s, "g", "a", "gone").await;
    let kept = send(s, "h", "a", "kept").await;
    let file = FileObject {
        id: FileId::parse("0000000000000000000000000000000f").unwrap(),
        channel_id: cid("g"),
        uploader_id: Some(uid("a")),
        name: "f.txt".into(),
        size: 10,
        content_type: "text/plain".into(),
        sha256: String::new(),
        created_at: 1,
    };
    let quota = FileQuota {
        per_user: 1_000,
        total: 1_000,
    };
    s.put_file(file.clone(), quota).await.unwrap();

    s.delete_channel(&cid("g")).await.unwrap();
    assert_eq!(s.get_channel(&cid("g")).await.unwrap(), None);
    assert_eq!(s.get_message(gone.id).await.unwrap(), None);
    assert!(history(s, "g").await.is_empty());
    assert!(s.member_ids(&cid("g")).await.unwrap().is_empty());
    assert!(!s.member_channel_ids(&uid("a")).await.unwrap().contains(&cid("g")));
    assert_eq!(s.get_member(&cid("g"), &uid("a")).await.unwrap(), None);
    assert_eq!(s.get_file(&file.id).await.unwrap(), None);
    assert_eq!(
        s.delete_unattached_files(0, 10).await.unwrap(),
        std::slice::from_ref(&file.id),
        "the next sweep returns the files of a deleted channel, whatever their age, so their bytes go too"
    );
    let left: Vec<_> = s.list_member_channels(&uid("a"), None, 10).await.unwrap();
    assert_eq!(left.into_iter().map(|m| m.channel.id).collect::<Vec<_>>(), [cid("h")]);
    assert_eq!(s.get_message(kept.id).await.unwrap(), Some(kept));
    assert_err!(
        s.delete_channel(&cid("g")).await,
        DomainError::NotFound { entity: "channel", .. }
    );
}

/// Channels are listed in id order, a page at a time after the last id seen.
pub async fn channels_list_in_id_order_by_page<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    user(s, "a").await;
    for id in ["c3", "c1", "c4", "c2"] {
        group(s, id, &["a"]).await;
    }
    let ids = |cs: Vec<confab_domain::model::Channel>| cs.into_iter().map(|c| c.id).collect::<Vec<_>>();
    assert_eq!(ids(s.list_channels(None, 2).await.unwrap()), [cid("c1"), cid("c2")]);
    assert_eq!(
        ids(s.list_channels(Some(&cid("c2")), 2).await.unwrap()),
        [cid("c3"), cid("c4")]
    );
    assert!(s.list_channels(Some(&cid("c4")), 2).await.unwrap().is_empty());
}

/// A user's channels are listed in id order, by page, each with the user's read position.
pub async fn member_channels_list_a_users_channels_with_read_positions<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a", "b"]).await;
    group(s, "g1", &["a", "b"]).await;
    group(s, "g2", &["a"]).await;
    group(s, "g3", &["b"]).await;
    group(s, "g4", &["a", "b"]).await;
    for i in 0..3 {
        send(s, "g1", "b", &format!("m{i}")).await;
    }
    let all = s.list_member_channels(&uid("a"), None, 10).await.unwrap();
    assert_eq!(
        all.iter().map(|m| m.channel.id.clone()).collect::<Vec<_>>(),
        [cid("g1"), cid("g2"), cid("g4")]
    );
    assert_eq!(
        (all[0].channel.last_seq, all[0].read_seq, all[0].unread_count()),
        (ChannelSeq(3), ChannelSeq(0), 3)
    );
    assert_eq!(all[0].channel, s.get_channel(&cid("g1")).await.unwrap().unwrap());
    s.mark_read(&cid("g1"), &uid("a"), ChannelSeq(2)).await.unwrap();
    let page = s.list_member_channels(&uid("a"), None, 2).await.unwrap();
    assert_eq!(
        page.iter().map(|m| m.channel.id.clone()).collect::<Vec<_>>(),
        [cid("g1"), cid("g2")]
    );
    assert_eq!((page[0].read_seq, page[0].unread_count()), (ChannelSeq(2), 1));
    let rest = s.list_member_channels(&uid("a"), Some(&cid("g2")), 2).await.unwrap();
    assert_eq!(rest.into_iter().map(|m| m.channel.id).collect::<Vec<_>>(), [cid("g4")]);
}

/// Adding members ignores those already in, starts newcomers with nothing unread, and adds nobody when one
/// user has no account; removing a non-member is `NotMember`; an unknown channel is `NotFound`.
pub async fn members_are_added_once_and_removed<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a", "b", "c", "d"]).await;
    group(s, "g", &["a"]).await;
    send(s, "g", "a", "one").await;
    send(s, "g", "a", "two").await;

    let c = s
        .add_members(&cid("g"), vec![uid("b"), uid("c"), uid("a")], Some(uid("a")))
        .await
        .unwrap();
    assert_eq!(c.member_count, 3);
    assert_eq!(s.get_channel(&cid("g")).await.unwrap().unwrap().member_count, 3);
    let m = s.get_member(&cid("g"), &uid("b")).await.unwrap().unwrap();
    assert_eq!((m.channel_id, m.user_id), (cid("g"), uid("b")));
    assert_eq!(m.read_seq, ChannelSeq(2), "a newcomer has nothing unread");
    assert!(m.joined_at > 0);
    assert_eq!(
        s.add_members(&cid("g"), vec![uid("b")], None)
            .await
            .unwrap()
            .member_count,
        3
    );
    assert_err!(
        s.add_members(&cid("g"), vec![uid("d"), uid("nobody")], None).await,
        DomainError::NotFound { entity: "user", .. }
    );
    assert_eq!(s.get_member(&cid("g"), &uid("d")).await.unwrap(), None);
    assert_eq!(s.get_channel(&cid("g")).await.unwrap().unwrap().member_count, 3);

    let c = s.remove_member(&cid("g"), &uid("c"), Some(uid("a"))).await.unwrap();
    assert_eq!(c.member_count, 2);
    assert_eq!(s.get_member(&cid("g"), &uid("c")).await.unwrap(), None);
    assert_err!(
        s.remove_member(&cid("g"), &uid("c"), None).await,
        DomainError::NotMember { .. }
    );
    assert_err!(
        s.remove_member(&cid("nope"), &uid("a"), None).await,
        DomainError::NotFound { entity: "channel", .. }
    );
    assert_err!(
        s.add_members(&cid("nope"), vec![uid("a")], None).await,
        DomainError::NotFound { entity: "channel", .. }
    );
}

/// Members are listed in id order, by page; `member_ids` has them all; a member's record is found.
pub async fn members_list_in_id_order_by_page<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    let ids = ["m3", "m1", "m5", "m2", "m4"];
    users(s, &ids).await;
    group(s, "g", &ids).await;
    let page = |after: Option<&str>| {
        let s = s.clone();
        let after = after.map(uid);
        async move {
            s.list_members(&cid("g"), after.as_ref(), 2)
                .await
                .unwrap()
                .into_iter()
                .map(|m| m.user_id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(page(None).await, [uid("m1"), uid("m2")]);
    assert_eq!(page(Some("m2")).await, [uid("m3"), uid("m4")]);
    assert_eq!(page(Some("m4")).await, [uid("m5")]);
    assert_eq!(
        sorted(s.member_ids(&cid("g")).await.unwrap()),
        sorted(ids.iter().map(|i| uid(i)).collect())
    );
    let m = s.get_member(&cid("g"), &uid("m4")).await.unwrap().unwrap();
    assert_eq!(s.list_members(&cid("g"), Some(&uid("m3")), 1).await.unwrap(), [m]);
    assert!(s.list_members(&cid("nope"), None, 10).await.unwrap().is_empty());
}

/// A user's contacts are the others in its channels of at most `max_members` members.
pub async fn contacts_share_a_small_enough_channel<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a", "b", "c", "d", "e", "lonely"]).await;
    group(s, "small", &["a", "b"]).await;
    group(s, "big", &["a", "c", "d", "e"]).await;
    group(s, "other", &["d", "e"]).await;
    group(s, "alone", &["lonely"]).await;
    let contacts = |u: &str, max: u32| {
        let (s, u) = (s.clone(), uid(u));
        async move { sorted(s.contacts(&u, max).await.unwrap()) }
    };
    assert_eq!(contacts("a", 2).await, [uid("b")]);
    assert_eq!(contacts("a", 4).await, [uid("b"), uid("c"), uid("d"), uid("e")]);
    assert_eq!(contacts("e", 2).await, [uid("d")]);
    assert_eq!(contacts("e", 4).await, [uid("a"), uid("c"), uid("d")]);
    assert!(contacts("lonely", 100).await.is_empty());
}

/// Acknowledged channels, members and read positions are there after the store is opened again.
pub async fn channels_and_members_survive_reopen<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a", "b"]).await;
    let mut nc = new_group("g", &["a", "b"]);
    nc.data = Some(json!({"k": [1, 2]}));
    nc.distinct_key = Some("a+b".into());
    s.create_channel(nc).await.unwrap();
    for i in 0..3 {
        send(s, "g", "a", &format!("m{i}")).await;
    }
    s.mark_read(&cid("g"), &uid("b"), ChannelSeq(2)).await.unwrap();
    let channel = s.get_channel(&cid("g")).await.unwrap().unwrap();
    let members = s.list_members(&cid("g"), None, 10).await.unwrap();

    let env = env.reopen().await;
    let s = &env.store;
    assert_eq!(s.get_channel(&cid("g")).await.unwrap(), Some(channel));
    assert_eq!(s.list_members(&cid("g"), None, 10).await.unwrap(), members);
    let (again, created) = s
        .create_channel(NewChannel {
            distinct_key: Some("a+b".into()),
            ..new_group("g2", &["a", "b"])
        })
        .await
        .unwrap();
    assert!(!created, "the distinct key is kept");
    assert_eq!(again.id, cid("g"));
}
