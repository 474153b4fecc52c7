//! The parameter table of the NIM surface (`crates/api-nim`): every action it serves (robot sends, which put
//! a provider in the loop, are left to `nim.rs`), each parameter a form field (names case-insensitive, an
//! empty value the same as an absent one), with its kind and what is valid, as the handlers say.

use super::Kind::*;
use super::Loc::Body;
use super::Verdict::{Either, Invalid, Valid};
use super::{Kind, Op, Res, Syntax, opt, req};

const I64: (i128, i128) = (i64::MIN as i128, i64::MAX as i128);

fn accid(res: Res) -> Kind {
    Id {
        res,
        syntax: Syntax::Accid,
        unknown: Invalid,
    }
}

fn team(res: Res) -> Kind {
    Id {
        res,
        syntax: Syntax::Printable(100),
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

/// Text the domain limits in bytes (NIM has no limit of its own there).
fn bytes(max: usize) -> Kind {
    Text {
        max,
        bytes: true,
        over: Invalid,
        empty: Valid,
    }
}

fn accids(res: &'static [Res], max: usize, unknown: super::Verdict) -> Kind {
    IdList {
        res,
        max,
        empty: Either,
        unknown,
    }
}

/// The history window: `begintime` < `endtime` holds for every value the table generates as valid.
fn window() -> Vec<super::Param> {
    vec![
        req(
            "begintime",
            Body,
            Int {
                lo: 0,
                hi: 1_000_000_000_000,
                ty: I64,
                outside: Either,
            },
        ),
        req(
            "endtime",
            Body,
            Int {
                lo: 2_000_000_000_000,
                hi: i64::MAX,
                ty: I64,
                outside: Either,
            },
        ),
        req(
            "limit",
            Body,
            Int {
                lo: 1,
                hi: 100,
                ty: I64,
                outside: Invalid,
            },
        ),
        opt(
            "reverse",
            Body,
            Enum {
                valid: &["1", "2"],
                invalid: &["0", "3"],
            },
        ),
        opt(
            "type",
            Body,
            Enum {
                valid: &["0", "0,1,100", "10"],
                invalid: &["a", "0,,1", "1.5"],
            },
        ),
    ]
}

pub fn operations() -> Vec<Op> {
    let msg_type = || Enum {
        valid: &["0", "10"],
        invalid: &["5", "-1", "1000000"],
    };
    let mut ops = vec![
        Op::new("health_liveness", "POST", "/nimserver/health/liveness.action", vec![]),
        Op::new(
            "user_create",
            "POST",
            "/nimserver/user/create.action",
            vec![
                req("accid", Body, accid(Res::NewUser)),
                opt("name", Body, text(64)),
                opt("icon", Body, text(1024)),
                opt("token", Body, Token { max: 128 }),
                opt("sign", Body, text(256)),
                opt("email", Body, text(64)),
                opt("birth", Body, text(16)),
                opt("mobile", Body, text(32)),
                opt("ex", Body, text(1024)),
                opt(
                    "gender",
                    Body,
                    Int {
                        lo: 0,
                        hi: 2,
                        ty: I64,
                        outside: Invalid,
                    },
                ),
            ],
        ),
        Op::new(
            "user_update",
            "POST",
            "/nimserver/user/update.action",
            vec![
                req("accid", Body, accid(Res::FreshUser)),
                opt("token", Body, Token { max: 128 }),
            ],
        ),
        Op::new(
            "user_refresh_token",
            "POST",
            "/nimserver/user/refreshToken.action",
            vec![req("accid", Body, accid(Res::FreshUser))],
        ),
        Op::new(
            "user_get_uinfos",
            "POST",
            "/nimserver/user/getUinfos.action",
            vec![req("accids", Body, accids(&[Res::User, Res::User2], 200, Valid))],
        ),
        Op::new(
            "user_block",
            "POST",
            "/nimserver/user/block.action",
            vec![req("accid", Body, accid(Res::FreshUser)), opt("needkick", Body, Bool)],
        ),
        Op::new(
            "user_unblock",
            "POST",
            "/nimserver/user/unblock.action",
            vec![req("accid", Body, accid(Res::User)), opt("needkick", Body, Bool)],
        ),
        Op::new(
            "msg_send_p2p",
            "POST",
            "/nimserver/msg/sendMsg.action",
            vec![
                req("from", Body, accid(Res::User)),
                req("ope", Body, Const("0")),
                req("to", Body, accid(Res::User2)),
                req("type", Body, msg_type()),
                req("body", Body, NimBody { max: 5000 }),
                opt("robotTopic", Body, text(2000)),
                opt("robotFunction", Body, text(2000)),
                opt("robotCustomContent", Body, text(5000)),
            ],
        ),
        Op::new(
            "msg_send_team",
            "POST",
            "/nimserver/msg/sendMsg.action",
            vec![
                req("from", Body, accid(Res::User)),
                req("ope", Body, Const("1")),
                req("to", Body, team(Res::Team)),
                req("type", Body, msg_type()),
                req("body", Body, NimBody { max: 5000 }),
                opt(
                    "forcepushlist",
                    Body,
                    IdList {
                        res: &[Res::User, Res::User2],
                        max: 500,
                        // Mentions are checked as users of the channel by the service.
                        empty: Valid,
                        unknown: Either,
                    },
                ),
            ],
        ),
        Op::new(
            "msg_send_batch",
            "POST",
            "/nimserver/msg/sendBatchMsg.action",
            vec![
                req("fromAccid", Body, accid(Res::User)),
                // Unknown receivers are listed as `unregister`, not refused.
                req("toAccids", Body, accids(&[Res::User2], 500, Valid)),
                req("type", Body, msg_type()),
                req("body", Body, NimBody { max: 5000 }),
                opt("returnMsgid", Body, Bool),
            ],
        ),
        Op::new(
            "msg_recall",
            "POST",
            "/nimserver/msg/recall.action",
            vec![
                req(
                    "deleteMsgid",
                    Body,
                    Id {
                        res: Res::NimMsg,
                        syntax: Syntax::Numeric,
                        unknown: Invalid,
                    },
                ),
                req(
                    "timetag",
                    Body,
                    Id {
                        res: Res::NimMsgTime,
                        syntax: Syntax::Numeric,
                        unknown: Invalid,
                    },
                ),
                req("type", Body, Const("7")),
                req("from", Body, accid(Res::User)),
                req("to", Body, accid(Res::User2)),
            ],
        ),
        Op::new(
            "team_create",
            "POST",
            "/nimserver/team/create.action",
            vec![
                req(
                    "tname",
                    Body,
                    Text {
                        max: 64,
                        bytes: false,
                        over: Invalid,
                        empty: Invalid,
                    },
                ),
                req("owner", Body, accid(Res::User)),
                // Unknown members are listed in `faccid`, not refused.
                req("members", Body, accids(&[Res::User2], 200, Valid)),
                opt("icon", Body, bytes(2048)),
                opt("custom", Body, bytes(16 * 1024)),
            ],
        ),
        Op::new(
            "team_add",
            "POST",
            "/nimserver/team/add.action",
            vec![
                req("tid", Body, team(Res::Team)),
                req("owner", Body, accid(Res::User)),
                req("members", Body, accids(&[Res::User2], 200, Valid)),
            ],
        ),
        Op::new(
            "team_kick",
            "POST",
            "/nimserver/team/kick.action",
            vec![
                req("tid", Body, team(Res::FreshTeam)),
                req("owner", Body, accid(Res::User)),
                req("member", Body, accid(Res::User2)),
            ],
        ),
        Op::new(
            "team_remove",
            "POST",
            "/nimserver/team/remove.action",
            vec![
                req("tid", Body, team(Res::FreshTeam)),
                req("owner", Body, accid(Res::User)),
            ],
        ),
        Op::new(
            "team_query",
            "POST",
            "/nimserver/team/query.action",
            vec![
                req(
                    "tids",
                    Body,
                    IdList {
                        res: &[Res::Team],
                        max: 200,
                        empty: Either,
                        unknown: Valid,
                    },
                ),
                opt(
                    "ope",
                    Body,
                    Enum {
                        valid: &["0", "1"],
                        invalid: &["2", "-1"],
                    },
                ),
            ],
        ),
        Op::new(
            "history_session",
            "POST",
            "/nimserver/history/querySessionMsg.action",
            [
                vec![
                    // A pair that never talked has an empty history.
                    req(
                        "from",
                        Body,
                        Id {
                            res: Res::User,
                            syntax: Syntax::Accid,
                            unknown: Valid,
                        },
                    ),
                    req(
                        "to",
                        Body,
                        Id {
                            res: Res::User2,
                            syntax: Syntax::Accid,
                            unknown: Valid,
                        },
                    ),
                ],
                window(),
            ]
            .into_iter()
            .flatten()
            .collect(),
        ),
        Op::new(
            "history_team",
            "POST",
            "/nimserver/history/queryTeamMsg.action",
            [
                vec![req("tid", Body, team(Res::Team)), req("accid", Body, accid(Res::User))],
                window(),
            ]
            .into_iter()
            .flatten()
            .collect(),
        ),
    ];
    super::only(&mut ops);
    ops
}
