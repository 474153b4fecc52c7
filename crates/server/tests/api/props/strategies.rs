//! The strategies: from a parameter's kind, its valid values and every other kind of value (boundaries,
//! malformed, wrong JSON types, huge, not UTF-8), each with its verdict; and whole requests of an operation.

use proptest::prelude::*;
use proptest::strategy::{BoxedStrategy, Union};

use super::{Case, Kind, Loc, Op, Param, Res, Slot, Surface, Syntax, Tmpl, Verdict, now_millis};

type Gen = BoxedStrategy<(Tmpl, Verdict)>;

fn fixed(t: Tmpl, v: Verdict) -> Gen {
    Just((t, v)).boxed()
}

fn s(v: &str) -> Tmpl {
    Tmpl::Str(v.to_string())
}

fn lit(v: impl ToString) -> Tmpl {
    Tmpl::Lit(v.to_string())
}

fn in_json(surface: Surface, p: &Param) -> bool {
    surface == Surface::Sendbird && p.loc == Loc::Body
}

/// The longest value sent in a URL: a megabyte would be refused by the HTTP layer before the surface sees it.
const MAX_URL_VALUE: usize = 16 * 1024;

fn huge(p: &Param) -> usize {
    if p.loc == Loc::Body { 1_000_000 } else { MAX_URL_VALUE }
}

/// Valid values of a parameter (present).
fn valid_values(surface: Surface, p: &Param) -> Gen {
    let json = in_json(surface, p);
    match &p.kind {
        Kind::Id { res, .. } => fixed(Tmpl::Ref(*res), Verdict::Valid),
        Kind::Text { max, .. } => {
            // Short values, within the smallest limit of the tables (16).
            let words = format!("[a-zA-Z0-9][a-zA-Z0-9 _.-]{{0,{}}}", (max - 1).min(15));
            prop_oneof![
                4 => proptest::string::string_regex(&words).unwrap().prop_map(|t| (Tmpl::Str(t), Verdict::Valid)),
                1 => Just((s("héllo ✓ 你好"), Verdict::Valid)),
            ]
            .boxed()
        }
        Kind::Int { lo, hi, .. } => (*lo..=*hi).prop_map(|n| (lit(n), Verdict::Valid)).boxed(),
        Kind::Token { max } => proptest::string::string_regex(&format!("[!-~]{{1,{}}}", max.min(&40)))
            .unwrap()
            .prop_map(|t| (Tmpl::Str(t), Verdict::Valid))
            .boxed(),
        Kind::Bool => {
            let spellings: &'static [&'static str] = if json {
                &["true", "false"]
            } else {
                &["true", "false", "True", "False", "1", "0"]
            };
            proptest::sample::select(spellings)
                .prop_map(|b| (lit(b), Verdict::Valid))
                .boxed()
        }
        Kind::Enum { valid, .. } => proptest::sample::select(*valid)
            .prop_map(|v| (s(v), Verdict::Valid))
            .boxed(),
        Kind::IdList { res, .. } => {
            let res: Vec<Res> = res.to_vec();
            let query = p.loc == Loc::Query;
            proptest::sample::subsequence(res.clone(), 1..=res.len())
                .prop_map(move |rs| {
                    let items = rs.into_iter().map(Tmpl::Ref).collect();
                    (if query { Tmpl::Csv(items) } else { Tmpl::List(items) }, Verdict::Valid)
                })
                .boxed()
        }
        Kind::Metadata => proptest::collection::btree_map("[a-z]{1,8}", "[a-zA-Z0-9 ]{0,12}", 0..4)
            .prop_map(|m| (Tmpl::Obj(m.into_iter().map(|(k, v)| (k, Tmpl::Str(v))).collect()), Verdict::Valid))
            .boxed(),
        Kind::NimBody { .. } => prop_oneof![
            4 => "[a-zA-Z0-9][a-zA-Z0-9 ]{0,30}".prop_map(|t| (Tmpl::Obj(vec![("msg".into(), Tmpl::Str(t))]), Verdict::Valid)),
            // The single-quoted pseudo-JSON of Python's `str(dict)`.
            1 => Just((lit("{'msg': 'from python', 'n': None}"), Verdict::Valid)),
        ]
        .boxed(),
        Kind::PageToken => prop_oneof![Just((s(""), Verdict::Valid)), Just((s(&hex::encode("a")), Verdict::Valid))].boxed(),
        Kind::Refused => fixed(s("x"), Verdict::Invalid),
        Kind::FalseOnly => fixed(lit("false"), Verdict::Valid),
        Kind::EmptyOnly => fixed(s(""), Verdict::Valid),
        Kind::FutureMillis => (3_600_000i64..86_400_000)
            .prop_map(|d| (lit(now_millis() + d), Verdict::Valid))
            .boxed(),
        Kind::Const(v) => fixed(lit(v), Verdict::Valid),
    }
}

/// Values other than the valid ones: boundaries, malformed, wrong types, huge, not UTF-8.
fn other_values(surface: Surface, p: &Param) -> Vec<Gen> {
    use Verdict::*;
    let json = in_json(surface, p);
    // An empty value: NIM reads it as absent; elsewhere it is a value of its own.
    let empty = |sb: Verdict| match surface {
        Surface::Nim if p.required => Invalid,
        Surface::Nim => Valid,
        Surface::Sendbird => sb,
    };
    let mut out: Vec<Gen> = Vec::new();
    // Wrong JSON types: a number, an object, an array, a boolean where something else is expected.
    let wrong_types = |out: &mut Vec<Gen>, except_array: bool| {
        if json {
            out.push(fixed(lit("12345"), Invalid));
            out.push(fixed(lit("{\"a\":1}"), Invalid));
            if !except_array {
                out.push(fixed(lit("[\"a\"]"), Invalid));
            }
            out.push(fixed(lit("true"), Invalid));
            // `null` is an absent optional field, and a type error for a required one.
            out.push(fixed(lit("null"), if p.required { Invalid } else { Either }));
        }
    };
    match &p.kind {
        Kind::Id { res, syntax, unknown } => {
            out.push(fixed(Tmpl::Ref(res.other()), *unknown));
            out.push(fixed(s(""), empty(Invalid)));
            let bad: &[&str] = match syntax {
                Syntax::Printable(_) => &["a b", "a/b", "a\"b", "é", "a\u{1}b", "a%zz", " "],
                Syntax::NewChannelUrl => &["a b c", "a.b.c", "abc", "dm.x.y", "room/1", "é_é_é"],
                Syntax::Accid => &["a b", "a+b", "a/b", "é", "a\"b", "a#b"],
                Syntax::Numeric => &["abc", "1.5", "99999999999999999999", "-", "0x10"],
            };
            for b in bad {
                out.push(fixed(s(b), Invalid));
            }
            let max = match syntax {
                Syntax::Printable(m) => Some(*m),
                Syntax::NewChannelUrl => Some(100),
                Syntax::Accid => Some(32),
                Syntax::Numeric => None,
            };
            if let Some(max) = max {
                // At the limit: well formed, but names nothing (or, for new ids, may be taken already).
                // A new id at the limit may be created by one case, so it is spelled apart from the
                // longest unknown id the other operations send.
                if matches!(res, Res::NewUser | Res::NewChannel) {
                    out.push(fixed(Tmpl::Repeat('n', max), Either));
                } else {
                    out.push(fixed(Tmpl::Repeat('a', max), *unknown));
                }
                out.push(fixed(Tmpl::Repeat('a', max + 1), Invalid));
            }
            out.push(fixed(Tmpl::Repeat('a', huge(p)), Invalid));
            out.push(fixed(Tmpl::Bytes(b"a\xffb".to_vec()), Invalid));
            wrong_types(&mut out, false);
        }
        Kind::Text {
            max,
            bytes,
            over,
            empty: e,
        } => {
            out.push(fixed(s(""), empty(*e)));
            out.push(fixed(Tmpl::Repeat('x', *max), Valid));
            out.push(fixed(Tmpl::Repeat('x', max + 1), *over));
            // Two-byte characters at the limit, counted as the limit counts.
            let at = if *bytes { max / 2 } else { *max };
            out.push(fixed(Tmpl::Repeat('é', at), Valid));
            out.push(fixed(Tmpl::Repeat('é', at + 1), *over));
            out.push(fixed(Tmpl::Repeat('x', huge(p).max(max + 1)), *over));
            out.push(fixed(s("a\u{7}b\r\nc\u{0}"), Either));
            // Not UTF-8: a JSON body that cannot be read; in a query or form decoded with replacement.
            out.push(fixed(
                Tmpl::Bytes(b"caf\xe9 \xff".to_vec()),
                if json { Invalid } else { Either },
            ));
            wrong_types(&mut out, false);
        }
        Kind::Int { lo, hi, ty, outside } => {
            let classify = move |n: i128| {
                if n < ty.0 || n > ty.1 {
                    Invalid
                } else if n < *lo as i128 || n > *hi as i128 {
                    *outside
                } else {
                    Valid
                }
            };
            for n in [
                *lo as i128,
                *hi as i128,
                *lo as i128 - 1,
                *hi as i128 + 1,
                0,
                -1,
                i64::MIN as i128,
                i64::MAX as i128,
                u32::MAX as i128 + 1,
                i64::MAX as i128 + 1,
                (i64::MIN as i128) - 1,
            ] {
                out.push(fixed(lit(n), classify(n)));
            }
            for bad in ["abc", "1.5", "1e3", "0x10", "--1"] {
                out.push(fixed(if json { lit(format!("\"{bad}\"")) } else { s(bad) }, Invalid));
            }
            out.push(fixed(Tmpl::Repeat('9', huge(p)), Invalid));
            if json {
                out.push(fixed(lit("\"5\""), Invalid));
                out.push(fixed(lit("1.5"), Invalid));
                out.push(fixed(lit("[1]"), Invalid));
            } else {
                out.push(fixed(s(""), empty(Invalid)));
                out.push(fixed(Tmpl::Bytes(b"1\xff".to_vec()), Invalid));
            }
        }
        Kind::Bool => {
            if json {
                for bad in ["\"true\"", "1", "0", "\"yes\"", "[true]", "{}"] {
                    out.push(fixed(lit(bad), Invalid));
                }
                out.push(fixed(lit("null"), if p.required { Invalid } else { Either }));
            } else {
                for bad in ["yes", "2", "-1", "truee", "TRUEISH"] {
                    out.push(fixed(s(bad), Invalid));
                }
                out.push(fixed(s(""), empty(Invalid)));
                out.push(fixed(Tmpl::Bytes(b"tru\xff".to_vec()), Invalid));
            }
        }
        Kind::Token { max } => {
            out.push(fixed(s(""), empty(Invalid)));
            out.push(fixed(Tmpl::Repeat('t', *max), Valid));
            out.push(fixed(Tmpl::Repeat('t', max + 1), Invalid));
            for bad in ["a b", "tök", "a\tb", "\u{0}"] {
                out.push(fixed(s(bad), Invalid));
            }
            out.push(fixed(Tmpl::Bytes(b"t\xff".to_vec()), Invalid));
        }
        Kind::Enum { valid, invalid } => {
            out.push(fixed(s("NOPE"), Invalid));
            for bad in invalid.iter() {
                out.push(fixed(s(bad), Invalid));
            }
            for v in valid.iter() {
                // Case matters: `mesg` is not `MESG`.
                let flipped: String = v
                    .chars()
                    .map(|c| {
                        if c.is_ascii_uppercase() {
                            c.to_ascii_lowercase()
                        } else {
                            c.to_ascii_uppercase()
                        }
                    })
                    .collect();
                if flipped != *v && !valid.contains(&flipped.as_str()) {
                    out.push(fixed(Tmpl::Str(flipped), Invalid));
                }
            }
            if !valid.contains(&"") {
                out.push(fixed(s(""), empty(Invalid)));
            }
            out.push(fixed(Tmpl::Repeat('A', huge(p)), Invalid));
            wrong_types(&mut out, false);
        }
        Kind::IdList {
            res,
            max,
            empty: e,
            unknown,
        } => {
            let query = p.loc == Loc::Query;
            let list = move |items: Vec<Tmpl>| if query { Tmpl::Csv(items) } else { Tmpl::List(items) };
            // `[]` is a value on both surfaces; an empty string is NIM's absent parameter.
            out.push(fixed(list(vec![]), *e));
            if !json && !query {
                out.push(fixed(s(""), empty(Invalid)));
            }
            out.push(fixed(list(vec![Tmpl::Ref(res[0].other())]), *unknown));
            out.push(fixed(list(vec![Tmpl::Ref(res[0]), Tmpl::Ref(res[0])]), Either));
            out.push(fixed(list(vec![s("a b")]), Invalid));
            out.push(fixed(list(vec![Tmpl::Bytes(b"a\xff".to_vec())]), Invalid));
            if *max <= 1000 {
                let too_many = (0..=*max).map(|i| Tmpl::Str(format!("u{i}"))).collect();
                out.push(fixed(list(too_many), Invalid));
            }
            if !query {
                // A bare string or an object where a list is expected.
                out.push(fixed(Tmpl::Ref(res[0]), Invalid));
                out.push(fixed(lit("{\"a\":1}"), Invalid));
                out.push(fixed(Tmpl::List(vec![lit("{}")]), Invalid));
                out.push(fixed(lit("[\"a\""), Invalid));
                if json {
                    out.push(fixed(Tmpl::List(vec![lit("1")]), Invalid));
                }
            }
        }
        Kind::Metadata => {
            let many = (0..33).map(|i| (format!("k{i}"), s("v"))).collect();
            out.push(fixed(Tmpl::Obj(many), Invalid));
            out.push(fixed(Tmpl::Obj(vec![("k".into(), lit("1"))]), Invalid));
            out.push(fixed(Tmpl::Obj(vec![(String::new(), s("v"))]), Invalid));
            out.push(fixed(Tmpl::Obj(vec![("k".repeat(129), s("v"))]), Invalid));
            out.push(fixed(Tmpl::Obj(vec![("k".into(), Tmpl::Repeat('v', 4097))]), Invalid));
            out.push(fixed(Tmpl::Obj(vec![("k".into(), Tmpl::Repeat('v', 4096))]), Valid));
            out.push(fixed(s("not an object"), Invalid));
            out.push(fixed(lit("[]"), Invalid));
        }
        Kind::NimBody { max } => {
            let msg = |t: Tmpl| Tmpl::Obj(vec![("msg".into(), t)]);
            // `{"msg":""}` is 10 characters: the body is exactly at the limit, then one over.
            out.push(fixed(msg(Tmpl::Repeat('x', max - 10)), Valid));
            out.push(fixed(msg(Tmpl::Repeat('x', max - 9)), Invalid));
            out.push(fixed(msg(Tmpl::Repeat('x', 1_000_000)), Invalid));
            out.push(fixed(msg(s("")), Invalid));
            out.push(fixed(msg(lit("5")), Invalid));
            out.push(fixed(Tmpl::Obj(vec![]), Invalid));
            out.push(fixed(s("plain text"), Invalid));
            out.push(fixed(lit("[\"msg\"]"), Invalid));
            out.push(fixed(lit("{\"msg\": \"unterminated"), Invalid));
            out.push(fixed(lit("{'msg': }"), Invalid));
            out.push(fixed(Tmpl::Bytes(b"{\"msg\": \"caf\xe9\"}".to_vec()), Either));
            out.push(fixed(s(""), empty(Invalid)));
        }
        Kind::PageToken => {
            for bad in ["zz", "2f", "ff", "a", "%"] {
                out.push(fixed(s(bad), Invalid));
            }
            out.push(fixed(Tmpl::Repeat('f', huge(p)), Invalid));
            out.push(fixed(Tmpl::Bytes(b"6\xff".to_vec()), Invalid));
        }
        Kind::Refused => out.push(fixed(s(""), Invalid)),
        Kind::FalseOnly => {
            out.push(fixed(lit("true"), Invalid));
            out.push(fixed(lit("\"false\""), if json { Invalid } else { Either }));
        }
        Kind::EmptyOnly => {
            out.push(fixed(s("abc"), Invalid));
            wrong_types(&mut out, false);
        }
        Kind::FutureMillis => {
            for n in [0i128, -1, 1, i64::MAX as i128, i64::MIN as i128] {
                out.push(fixed(lit(n), Either));
            }
            out.push(fixed(lit(i64::MAX as i128 + 1), Invalid));
            out.push(fixed(lit("\"soon\""), Invalid));
            out.push(fixed(lit("1.5"), Invalid));
        }
        Kind::Const(v) => {
            for bad in ["2", "-1", "abc", "99999999999999999999"] {
                if bad != *v {
                    out.push(fixed(s(bad), Invalid));
                }
            }
        }
    }
    out
}

/// A parameter in an all-valid request: present when required, else present or not.
fn valid_slot(surface: Surface, p: &Param) -> BoxedStrategy<(Slot, Verdict)> {
    let present = valid_values(surface, p).prop_map(|(t, v)| (Slot::One(t), v));
    if p.required || matches!(p.kind, Kind::Refused) {
        if matches!(p.kind, Kind::Refused) {
            return Just((Slot::Absent, Verdict::Valid)).boxed();
        }
        present.boxed()
    } else {
        prop_oneof![Just((Slot::Absent, Verdict::Valid)), present].boxed()
    }
}

/// A parameter anywhere in its space: valid, absent, any other value, or given twice.
fn any_slot(surface: Surface, p: &Param) -> BoxedStrategy<(Slot, Verdict)> {
    let absent = if p.required { Verdict::Invalid } else { Verdict::Valid };
    let mut arms: Vec<(u32, BoxedStrategy<(Slot, Verdict)>)> = vec![
        (3, valid_values(surface, p).prop_map(|(t, v)| (Slot::One(t), v)).boxed()),
        (1, Just((Slot::Absent, absent)).boxed()),
    ];
    let others = other_values(surface, p);
    if !others.is_empty() {
        arms.push((4, Union::new(others).prop_map(|(t, v)| (Slot::One(t), v)).boxed()));
        // Given twice: which one counts is the surface's choice (or an error).
        let a = valid_values(surface, p);
        let b = Union::new(other_values(surface, p));
        arms.push((
            1,
            (a, b)
                .prop_map(|((a, _), (b, _))| (Slot::Twice(a, b), Verdict::Either))
                .boxed(),
        ));
    }
    Union::new_weighted(arms).boxed()
}

/// Requests of an operation: a third all valid, the rest with one or two parameters anywhere, each with
/// a request-level mutation from `mutations` (whose first arm should be "none").
pub fn cases<M: Clone + std::fmt::Debug + 'static>(
    surface: Surface,
    op: &Op,
    mutations: BoxedStrategy<(M, Verdict)>,
) -> BoxedStrategy<Case<M>> {
    let valids: Vec<_> = op.params.iter().map(|p| valid_slot(surface, p)).collect();
    let anys: Vec<_> = op.params.iter().map(|p| any_slot(surface, p)).collect();
    let n = op.params.len();
    (
        valids,
        anys,
        any::<prop::sample::Index>(),
        any::<prop::sample::Index>(),
        0..3usize,
        mutations,
    )
        .prop_map(move |(valid, anything, i, j, changed, (mutation, mutation_verdict))| {
            let mut picked = valid;
            if n > 0 && changed > 0 {
                let (i, j) = (i.index(n), j.index(n));
                picked[i] = anything[i].clone();
                if changed > 1 {
                    picked[j] = anything[j].clone();
                }
            }
            let (slots, verdicts): (Vec<Slot>, Vec<Verdict>) = picked.into_iter().unzip();
            Case {
                slots,
                verdicts,
                mutation,
                mutation_verdict,
            }
        })
        .boxed()
}
