//! What the crate's own tests build their rows from: ids, accounts and groups.

use confab_domain::model::{ChannelKind, NewChannel, NewUser};
use confab_domain::{ChannelId, Limits, UserId};

pub fn uid(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

pub fn cid(s: &str) -> ChannelId {
    ChannelId::parse(s).unwrap()
}

pub fn new_user(id: &str, is_bot: bool) -> NewUser {
    NewUser {
        id: uid(id),
        nickname: id.into(),
        profile_url: String::new(),
        metadata: Default::default(),
        is_bot,
    }
}

/// A group `id` of `members`, validated as the service would.
pub fn new_group<S: AsRef<str>>(id: &str, members: &[S]) -> NewChannel {
    let c = NewChannel {
        id: cid(id),
        kind: ChannelKind::Group,
        name: id.into(),
        cover_url: String::new(),
        custom_type: String::new(),
        data: None,
        created_by: None,
        members: members.iter().map(|m| uid(m.as_ref())).collect(),
        distinct_key: None,
    };
    c.validate(&Limits::default()).unwrap();
    c
}
