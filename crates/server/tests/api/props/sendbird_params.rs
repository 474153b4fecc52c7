//! The parameter table of the Sendbird surface (`crates/api-sendbird`): every operation it serves but the
//! streaming bot ones (`send_stream`, `ai_chatbot_replies`: a provider in the loop) and bot creation and
//! sends (covered by `sendbird_bots.rs`), with each parameter's place, kind and what is valid, as the
//! handlers' DTOs and the domain's limits say.

use super::Kind::*;
use super::Loc::{Body, Path, Query};
use super::Verdict::{Either, Invalid, Valid};
use super::{Kind, Op, Res, Slot, Syntax, Verdict, opt, req};

const U32: (i128, i128) = (0, u32::MAX as i128);
const I64: (i128, i128) = (i64::MIN as i128, i64::MAX as i128);
const USIZE: (i128, i128) = (0, u64::MAX as i128);

fn user(res: Res) -> Kind {
    Id {
        res,
        syntax: Syntax::Printable(80),
        unknown: Invalid,
    }
}

fn channel(res: Res) -> Kind {
    Id {
        res,
        syntax: Syntax::Printable(100),
        unknown: Invalid,
    }
}

fn message(res: Res) -> Kind {
    Id {
        res,
        syntax: Syntax::Numeric,
        unknown: Invalid,
    }
}

fn text(max: usize) -> Kind {
    Text {
        max,
        bytes: false,
        over: Invalid,
        empty: Valid,
    }
}

/// Text limited in bytes (URLs, custom types, data, dedup ids).
fn bytes(max: usize) -> Kind {
    Text {
        max,
        bytes: true,
        over: Invalid,
        empty: Valid,
    }
}

/// Sendbird clamps page sizes to 1..=100 rather than refusing them.
fn clamped_limit() -> Kind {
    Int {
        lo: 1,
        hi: 100,
        ty: U32,
        outside: Valid,
    }
}

/// An admin message has no sender: whatever `user_id` says is ignored.
fn admin_has_no_sender(op: &Op, slots: &[Slot], v: Verdict) -> Verdict {
    match op.slot(slots, "message_type") {
        Some(s) if s.is_str("ADMM") && v == Invalid => Either,
        _ => v,
    }
}

/// A distinct channel with these members already existing is returned, whatever `channel_url` says.
fn distinct_is_found(op: &Op, slots: &[Slot], v: Verdict) -> Verdict {
    let distinct = op.slot(slots, "is_distinct").is_some_and(|s| s.is_str("true"));
    if distinct && v == Invalid { Either } else { v }
}

/// A deactivated account is given no token.
fn no_token_when_deactivated(op: &Op, slots: &[Slot], v: Verdict) -> Verdict {
    let issue = op.slot(slots, "issue_access_token").is_some_and(|s| s.is_str("true"));
    let deactivate = op.slot(slots, "is_active").is_some_and(|s| s.is_str("false"));
    if issue && deactivate { Either.max(v) } else { v }
}

pub fn operations() -> Vec<Op> {
    let mut ops = vec![
        Op::new(
            "create_user",
            "POST",
            "/v3/users",
            vec![
                req("user_id", Body, user(Res::NewUser)),
                opt("nickname", Body, text(80)),
                opt("profile_url", Body, bytes(2048)),
                opt("issue_access_token", Body, Bool),
                opt("metadata", Body, Metadata),
            ],
        ),
        Op::new(
            "list_users",
            "GET",
            "/v3/users",
            vec![
                opt("token", Query, PageToken),
                opt("limit", Query, clamped_limit()),
                opt(
                    "active_mode",
                    Query,
                    Enum {
                        valid: &["activated", "deactivated", "all"],
                        invalid: &["active"],
                    },
                ),
                opt("show_bot", Query, Bool),
                opt("user_ids", Query, Refused),
                opt("nickname_startswith", Query, Refused),
            ],
        ),
        Op::new(
            "view_user",
            "GET",
            "/v3/users/{user_id}",
            vec![req("user_id", Path, user(Res::User))],
        ),
        Op {
            fixup: Some(no_token_when_deactivated),
            ..Op::new(
                "update_user",
                "PUT",
                "/v3/users/{user_id}",
                vec![
                    req("user_id", Path, user(Res::FreshUser)),
                    opt("nickname", Body, text(80)),
                    opt("profile_url", Body, bytes(2048)),
                    opt("issue_access_token", Body, Bool),
                    opt("is_active", Body, Bool),
                ],
            )
        },
        Op::new(
            "delete_user",
            "DELETE",
            "/v3/users/{user_id}",
            vec![req("user_id", Path, user(Res::FreshUser))],
        ),
        Op::new(
            "issue_token",
            "POST",
            "/v3/users/{user_id}/token",
            vec![
                req("user_id", Path, user(Res::FreshUser)),
                opt("expires_at", Body, FutureMillis),
            ],
        ),
        Op::new(
            "revoke_tokens",
            "DELETE",
            "/v3/users/{user_id}/token",
            vec![req("user_id", Path, user(Res::FreshUser))],
        ),
        Op {
            fixup: Some(distinct_is_found),
            ..Op::new(
                "create_channel",
                "POST",
                "/v3/group_channels",
                vec![
                    // `users` or `user_ids`: the table sends the latter, which must name someone.
                    req(
                        "user_ids",
                        Body,
                        IdList {
                            res: &[Res::User, Res::User2],
                            max: 10_000,
                            empty: Invalid,
                            unknown: Invalid,
                        },
                    ),
                    opt(
                        "channel_url",
                        Body,
                        Id {
                            res: Res::NewChannel,
                            syntax: Syntax::NewChannelUrl,
                            unknown: Invalid,
                        },
                    ),
                    opt("name", Body, text(200)),
                    opt("cover_url", Body, bytes(2048)),
                    opt("custom_type", Body, bytes(128)),
                    opt("data", Body, bytes(16 * 1024)),
                    opt("is_distinct", Body, Bool),
                    opt("is_public", Body, FalseOnly),
                    opt("is_super", Body, FalseOnly),
                ],
            )
        },
        Op::new(
            "list_channels",
            "GET",
            "/v3/group_channels",
            vec![
                opt("token", Query, PageToken),
                opt("limit", Query, clamped_limit()),
                opt("show_member", Query, Bool),
                opt(
                    "user_id",
                    Query,
                    Id {
                        res: Res::User,
                        syntax: Syntax::Printable(80),
                        unknown: Valid,
                    },
                ),
                opt("custom_types", Query, Refused),
                opt("name_contains", Query, Refused),
            ],
        ),
        Op::new(
            "list_channels_by_url",
            "GET",
            "/v3/group_channels",
            vec![
                opt(
                    "channel_urls",
                    Query,
                    IdList {
                        res: &[Res::Channel, Res::BotChannel],
                        max: 100_000,
                        empty: Valid,
                        unknown: Valid,
                    },
                ),
                opt("show_member", Query, Bool),
            ],
        ),
        Op::new(
            "view_channel",
            "GET",
            "/v3/group_channels/{channel_url}",
            vec![
                req("channel_url", Path, channel(Res::Channel)),
                opt("show_member", Query, Bool),
            ],
        ),
        Op::new(
            "update_channel",
            "PUT",
            "/v3/group_channels/{channel_url}",
            vec![
                req("channel_url", Path, channel(Res::Channel)),
                opt("name", Body, text(200)),
                opt("cover_url", Body, bytes(2048)),
                opt("custom_type", Body, bytes(128)),
                opt("data", Body, bytes(16 * 1024)),
                // The fixture channel is not distinct, and that cannot change.
                opt("is_distinct", Body, FalseOnly),
                opt("is_public", Body, FalseOnly),
                opt("access_code", Body, EmptyOnly),
            ],
        ),
        Op::new(
            "delete_channel",
            "DELETE",
            "/v3/group_channels/{channel_url}",
            vec![req("channel_url", Path, channel(Res::FreshChannel))],
        ),
        Op::new(
            "invite",
            "POST",
            "/v3/group_channels/{channel_url}/invite",
            vec![
                req("channel_url", Path, channel(Res::Channel)),
                req(
                    "user_ids",
                    Body,
                    IdList {
                        res: &[Res::User, Res::User2],
                        max: 10_000,
                        empty: Invalid,
                        unknown: Invalid,
                    },
                ),
            ],
        ),
        Op::new(
            "leave",
            "PUT",
            "/v3/group_channels/{channel_url}/leave",
            vec![
                req("channel_url", Path, channel(Res::FreshChannel)),
                req(
                    "user_ids",
                    Body,
                    IdList {
                        res: &[Res::User, Res::User2],
                        max: 10_000,
                        empty: Invalid,
                        unknown: Invalid,
                    },
                ),
                opt("should_leave_all", Body, FalseOnly),
                opt(
                    "reason",
                    Body,
                    Text {
                        max: 1000,
                        bytes: false,
                        over: Either,
                        empty: Valid,
                    },
                ),
            ],
        ),
        Op::new(
            "list_members",
            "GET",
            "/v3/group_channels/{channel_url}/members",
            vec![
                req("channel_url", Path, channel(Res::Channel)),
                opt("token", Query, PageToken),
                opt("limit", Query, clamped_limit()),
            ],
        ),
        Op::new(
            "check_member",
            "GET",
            "/v3/group_channels/{channel_url}/members/{user_id}",
            vec![
                req("channel_url", Path, channel(Res::Channel)),
                // Anyone not a member is "none", whether the account exists or not.
                req(
                    "user_id",
                    Path,
                    Id {
                        res: Res::User,
                        syntax: Syntax::Printable(80),
                        unknown: Valid,
                    },
                ),
            ],
        ),
        Op {
            fixup: Some(admin_has_no_sender),
            ..Op::new(
                "send_message",
                "POST",
                "/v3/group_channels/{channel_url}/messages",
                vec![
                    req("channel_url", Path, channel(Res::Channel)),
                    req(
                        "message_type",
                        Body,
                        Enum {
                            valid: &["MESG", "ADMM"],
                            invalid: &["FILE", "BRDM"],
                        },
                    ),
                    req("user_id", Body, user(Res::User)),
                    req(
                        "message",
                        Body,
                        Text {
                            max: 5000,
                            bytes: false,
                            over: Invalid,
                            empty: Invalid,
                        },
                    ),
                    opt("custom_type", Body, bytes(128)),
                    opt("data", Body, bytes(16 * 1024)),
                    opt(
                        "mention_type",
                        Body,
                        Enum {
                            valid: &["users", "channel"],
                            invalid: &["everyone"],
                        },
                    ),
                    opt(
                        "mentioned_user_ids",
                        Body,
                        IdList {
                            res: &[Res::User, Res::User2],
                            max: 50,
                            empty: Valid,
                            unknown: Either,
                        },
                    ),
                    opt("dedup_id", Body, bytes(128)),
                    opt("is_silent", Body, Bool),
                    opt("send_push", Body, Bool),
                    opt("mark_as_read", Body, Bool),
                    opt(
                        "created_at",
                        Body,
                        Int {
                            lo: i64::MIN,
                            hi: i64::MAX,
                            ty: I64,
                            outside: Invalid,
                        },
                    ),
                ],
            )
        },
        Op::new(
            "list_messages",
            "GET",
            "/v3/group_channels/{channel_url}/messages",
            vec![
                req("channel_url", Path, channel(Res::Channel)),
                opt(
                    "message_ts",
                    Query,
                    Int {
                        lo: i64::MIN,
                        hi: i64::MAX,
                        ty: I64,
                        outside: Invalid,
                    },
                ),
                opt(
                    "prev_limit",
                    Query,
                    Int {
                        lo: 0,
                        hi: 200,
                        ty: U32,
                        outside: Invalid,
                    },
                ),
                opt(
                    "next_limit",
                    Query,
                    Int {
                        lo: 0,
                        hi: 200,
                        ty: U32,
                        outside: Invalid,
                    },
                ),
                opt("include", Query, Bool),
                opt("reverse", Query, Bool),
                opt("including_removed", Query, Bool),
                // No limit of its own: a long list filters as well as a short one.
                opt(
                    "custom_types",
                    Query,
                    Text {
                        max: 1000,
                        bytes: false,
                        over: Either,
                        empty: Valid,
                    },
                ),
                opt(
                    "sender_ids",
                    Query,
                    IdList {
                        res: &[Res::User, Res::User2],
                        max: 100_000,
                        empty: Valid,
                        unknown: Valid,
                    },
                ),
                opt(
                    "message_type",
                    Query,
                    Enum {
                        // An empty value is no filter.
                        valid: &["MESG", "FILE", "ADMM", ""],
                        invalid: &["BRDM"],
                    },
                ),
            ],
        ),
        Op::new(
            "view_message",
            "GET",
            "/v3/group_channels/{channel_url}/messages/{message_id}",
            vec![
                req("channel_url", Path, channel(Res::Channel)),
                req("message_id", Path, message(Res::Message)),
            ],
        ),
        Op::new(
            "update_message",
            "PUT",
            "/v3/group_channels/{channel_url}/messages/{message_id}",
            vec![
                req("channel_url", Path, channel(Res::Channel)),
                req("message_id", Path, message(Res::Message)),
                req(
                    "message_type",
                    Body,
                    Enum {
                        valid: &["MESG"],
                        invalid: &["FILE", "ADMM"],
                    },
                ),
                opt(
                    "message",
                    Body,
                    Text {
                        max: 5000,
                        bytes: false,
                        over: Invalid,
                        empty: Invalid,
                    },
                ),
                opt("custom_type", Body, bytes(128)),
                opt("data", Body, bytes(16 * 1024)),
                opt(
                    "mention_type",
                    Body,
                    Enum {
                        valid: &["users", "channel"],
                        invalid: &["everyone"],
                    },
                ),
            ],
        ),
        Op::new(
            "delete_message",
            "DELETE",
            "/v3/group_channels/{channel_url}/messages/{message_id}",
            vec![
                req("channel_url", Path, channel(Res::Channel)),
                req("message_id", Path, message(Res::FreshMessage)),
            ],
        ),
        Op::new(
            "view_webhook_settings",
            "GET",
            "/v3/applications/settings/webhook",
            vec![opt("display_all_webhook_categories", Query, Bool)],
        ),
        Op::new(
            "list_bots",
            "GET",
            "/v3/bots",
            vec![
                opt("token", Query, PageToken),
                opt(
                    "limit",
                    Query,
                    Int {
                        lo: 1,
                        hi: 100,
                        ty: USIZE,
                        outside: Invalid,
                    },
                ),
            ],
        ),
        Op::new(
            "view_bot",
            "GET",
            "/v3/bots/{bot_userid}",
            vec![req("bot_userid", Path, user(Res::Bot))],
        ),
        Op::new(
            "join_channels",
            "POST",
            "/v3/bots/{bot_userid}/channels",
            vec![
                req("bot_userid", Path, user(Res::Bot)),
                req(
                    "channel_urls",
                    Body,
                    IdList {
                        res: &[Res::Channel, Res::BotChannel],
                        max: 100_000,
                        empty: Invalid,
                        unknown: Invalid,
                    },
                ),
            ],
        ),
        Op::new(
            "leave_bot_channel",
            "DELETE",
            "/v3/bots/{bot_userid}/channels/{channel_url}",
            vec![
                req("bot_userid", Path, user(Res::Bot)),
                req("channel_url", Path, channel(Res::BotChannel)),
            ],
        ),
    ];
    // Only the operations named in `CONFAB_PROPTEST_ONLY` (comma-separated), when set.
    super::only(&mut ops);
    ops
}
