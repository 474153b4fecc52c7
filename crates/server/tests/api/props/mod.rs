//! Property tests of the compatibility surfaces (`/v3` and `/nimserver`) against the running server.
//!
//! Each surface describes its operations in a parameter table (`sendbird_params`, `nim_params`): method,
//! path, and for every parameter its place, kind, whether it is required, and so which values are valid.
//! From a table, proptest strategies generate requests: all valid, or with one or two parameters (and
//! sometimes the request itself: auth headers, body bytes, content type) boundary, invalid, missing,
//! duplicated, huge or not UTF-8. Each case carries its verdict (valid, invalid, or either when the table
//! cannot tell), and the surface's check asserts the vendor's error shape and code, never a 5xx, success for
//! valid requests and refusal of invalid ones; after each operation's batch a known-good request must still
//! succeed.
//!
//! Size: `CONFAB_PROPTEST_CASES` cases per operation (default [`DEFAULT_CASES`]), seed
//! `CONFAB_PROPTEST_SEED` (default fixed, so CI is deterministic). Cases are generated from a ChaCha RNG
//! seeded per operation, with failure persistence off; a failure is shrunk and reported with its request.

mod nim;
mod nim_params;
mod regressions;
mod sendbird;
mod sendbird_params;
mod strategies;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use proptest::strategy::BoxedStrategy;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Cases per operation in CI.
pub const DEFAULT_CASES: u32 = 48;

/// What the table says of a generated value or request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// Must succeed.
    Valid,
    /// The table cannot tell (e.g. a duplicated parameter): only the response's shape is checked.
    Either,
    /// Must be refused.
    Invalid,
}

/// Where a parameter goes. `Body` is JSON for Sendbird, the form for NIM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loc {
    Path,
    Query,
    Body,
}

/// Resources a parameter may name; resolved against the surface's fixtures when the case runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Res {
    /// Fixture users (both members of the fixture channel or team, `User` its creator or owner).
    User,
    User2,
    /// A user id that names nobody.
    Missing,
    /// A user id not taken yet (for creation).
    NewUser,
    /// A user created for this case (for deletion, blocking, updates).
    FreshUser,
    Channel,
    MissingChannel,
    NewChannel,
    /// A channel of `User` and `User2` created for this case.
    FreshChannel,
    /// A fresh channel the fixture bot is a member of.
    BotChannel,
    /// A message of `User` in the fixture channel.
    Message,
    MissingMessage,
    FreshMessage,
    Bot,
    /// NIM: the fixture team (owner `User`, member `User2`), a fresh one, and an id no team has.
    Team,
    FreshTeam,
    MissingTeam,
    /// NIM: a fresh message of `User` to `User2` and its `timetag`.
    NimMsg,
    NimMsgTime,
}

impl Res {
    /// The resource of the same type that does not exist (or, for new ids, one that already does).
    fn other(self) -> Res {
        match self {
            Res::User | Res::User2 | Res::FreshUser | Res::Bot | Res::Missing => Res::Missing,
            Res::NewUser => Res::User,
            Res::NewChannel => Res::Channel,
            Res::Channel | Res::FreshChannel | Res::BotChannel | Res::MissingChannel => Res::MissingChannel,
            Res::Message | Res::FreshMessage | Res::MissingMessage | Res::NimMsg | Res::NimMsgTime => {
                Res::MissingMessage
            }
            Res::Team | Res::FreshTeam | Res::MissingTeam => Res::MissingTeam,
        }
    }
}

/// The syntax of an id parameter, for its boundary and malformed values.
#[derive(Clone, Copy, Debug)]
pub enum Syntax {
    /// Confab's user and channel ids (printable ASCII without `/ ? # % \ "`), at most this long.
    Printable(usize),
    /// Sendbird's new `channel_url`: 4 to 100 letters, digits, `_` or `-`.
    NewChannelUrl,
    /// NIM's accid: 1 to 32 letters, digits, `_ @ . -`.
    Accid,
    /// A decimal integer (message ids, team ids).
    Numeric,
}

#[derive(Clone, Debug)]
pub enum Kind {
    /// An id naming a resource. `unknown`: the verdict when it names nothing (or, for new ids, something
    /// that exists).
    Id {
        res: Res,
        syntax: Syntax,
        unknown: Verdict,
    },
    /// Free text of at most `max` characters (bytes when `bytes`; `over`: what more is); `empty`: what
    /// `""` is.
    Text {
        max: usize,
        bytes: bool,
        over: Verdict,
        empty: Verdict,
    },
    /// A credential: 1 to `max` printable ASCII characters.
    Token {
        max: usize,
    },
    /// An integer; valid in `lo..=hi`; `outside`: the verdict elsewhere within the type `ty`.
    Int {
        lo: i64,
        hi: i64,
        ty: (i128, i128),
        outside: Verdict,
    },
    Bool,
    /// One of `valid`; `invalid` lists known wrong spellings.
    Enum {
        valid: &'static [&'static str],
        invalid: &'static [&'static str],
    },
    /// A list of ids (JSON array; comma-separated in a Sendbird query), of 1 to `max` of `res`.
    IdList {
        res: &'static [Res],
        max: usize,
        empty: Verdict,
        unknown: Verdict,
    },
    /// A JSON object of string values (Sendbird metadata).
    Metadata,
    /// A NIM message body: JSON text `{"msg": ...}` of at most `max` characters.
    NimBody {
        max: usize,
    },
    /// A Sendbird paging token (`next` of a page: the last id in hex).
    PageToken,
    /// A filter the surface refuses: any value is invalid.
    Refused,
    /// A boolean only `false` of which is supported.
    FalseOnly,
    /// A string only the empty value of which is supported.
    EmptyOnly,
    /// Unix milliseconds in the future.
    FutureMillis,
    /// Exactly this value.
    Const(&'static str),
}

pub struct Param {
    pub name: &'static str,
    pub loc: Loc,
    pub required: bool,
    pub kind: Kind,
}

/// A verdict correction for parameters that depend on each other.
pub type Fixup = fn(&Op, &[Slot], Verdict) -> Verdict;

/// One operation of a surface: what its table says.
pub struct Op {
    pub name: &'static str,
    pub method: &'static str,
    pub path: &'static str,
    pub params: Vec<Param>,
    /// Corrects the verdict where parameters depend on each other (e.g. an admin message has no sender).
    pub fixup: Option<Fixup>,
}

impl Op {
    pub fn new(name: &'static str, method: &'static str, path: &'static str, params: Vec<Param>) -> Op {
        Op {
            name,
            method,
            path,
            params,
            fixup: None,
        }
    }

    pub fn has_body(&self) -> bool {
        matches!(self.method, "POST" | "PUT")
    }

    pub fn slot<'a>(&self, slots: &'a [Slot], name: &str) -> Option<&'a Slot> {
        self.params.iter().position(|p| p.name == name).map(|i| &slots[i])
    }
}

pub fn req(name: &'static str, loc: Loc, kind: Kind) -> Param {
    Param {
        name,
        loc,
        required: true,
        kind,
    }
}

pub fn opt(name: &'static str, loc: Loc, kind: Kind) -> Param {
    Param {
        name,
        loc,
        required: false,
        kind,
    }
}

/// A value before the resources it names are known. Long values are kept short in reports (`Repeat`).
#[derive(Clone, Debug)]
pub enum Tmpl {
    Str(String),
    Repeat(char, usize),
    /// Raw bytes, maybe not UTF-8 (inside a JSON string in a JSON body).
    Bytes(Vec<u8>),
    /// Verbatim text in every place (numbers, `true`, JSON-ish text).
    Lit(String),
    Ref(Res),
    /// A JSON array (its JSON text in a query or form).
    List(Vec<Tmpl>),
    /// Comma-separated (query lists).
    Csv(Vec<Tmpl>),
    /// A JSON object (its JSON text in a query or form).
    Obj(Vec<(String, Tmpl)>),
}

/// A parameter as sent: absent, once, or twice with different values.
#[derive(Clone, Debug)]
pub enum Slot {
    Absent,
    One(Tmpl),
    Twice(Tmpl, Tmpl),
}

impl Slot {
    pub fn is_str(&self, v: &str) -> bool {
        matches!(self, Slot::One(Tmpl::Str(s) | Tmpl::Lit(s)) if s == v)
    }
}

/// A generated request: a slot per parameter (in table order) and a request-level mutation.
#[derive(Clone, Debug)]
pub struct Case<M> {
    pub slots: Vec<Slot>,
    pub verdicts: Vec<Verdict>,
    pub mutation: M,
    pub mutation_verdict: Verdict,
}

impl<M> Case<M> {
    pub fn verdict(&self, op: &Op) -> Verdict {
        let v = self
            .verdicts
            .iter()
            .copied()
            .chain([self.mutation_verdict])
            .max()
            .unwrap_or(Verdict::Valid);
        match op.fixup {
            Some(f) => f(op, &self.slots, v),
            None => v,
        }
    }

    pub fn refs(&self) -> Vec<Res> {
        fn walk(t: &Tmpl, out: &mut Vec<Res>) {
            match t {
                Tmpl::Ref(r) => out.push(*r),
                Tmpl::List(v) | Tmpl::Csv(v) => v.iter().for_each(|t| walk(t, out)),
                Tmpl::Obj(v) => v.iter().for_each(|(_, t)| walk(t, out)),
                _ => {}
            }
        }
        let mut out = Vec::new();
        for s in &self.slots {
            match s {
                Slot::Absent => {}
                Slot::One(t) => walk(t, &mut out),
                Slot::Twice(a, b) => {
                    walk(a, &mut out);
                    walk(b, &mut out);
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

/// How a surface carries values, which decides what a malformed one does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Surface {
    /// JSON bodies, query strings read by serde (an empty value is a value).
    Sendbird,
    /// Form bodies where an empty value is an absent one.
    Nim,
}

pub use strategies::cases;

/// Resolved resources of one case.
pub type Resolved = HashMap<Res, String>;

/// The value as raw text (query, form, path), before percent-encoding.
pub fn text(t: &Tmpl, r: &Resolved) -> Vec<u8> {
    match t {
        Tmpl::Str(s) | Tmpl::Lit(s) => s.as_bytes().to_vec(),
        Tmpl::Repeat(c, n) => c.to_string().repeat(*n).into_bytes(),
        Tmpl::Bytes(b) => b.clone(),
        Tmpl::Ref(res) => r[res].as_bytes().to_vec(),
        Tmpl::Csv(items) => items.iter().map(|t| text(t, r)).collect::<Vec<_>>().join(&b","[..]),
        Tmpl::List(_) | Tmpl::Obj(_) => json_text(t, r),
    }
}

/// The value as JSON text; `Bytes` go inside a string literal unescaped, so the body is not UTF-8.
pub fn json_text(t: &Tmpl, r: &Resolved) -> Vec<u8> {
    match t {
        Tmpl::Str(s) => serde_json::to_vec(s).unwrap(),
        Tmpl::Repeat(..) | Tmpl::Ref(_) => serde_json::to_vec(&String::from_utf8(text(t, r)).unwrap()).unwrap(),
        Tmpl::Csv(_) => serde_json::to_vec(&String::from_utf8_lossy(&text(t, r))).unwrap(),
        Tmpl::Lit(s) => s.as_bytes().to_vec(),
        Tmpl::Bytes(b) => [&b"\""[..], &b[..], &b"\""[..]].concat(),
        Tmpl::List(items) => {
            let parts: Vec<Vec<u8>> = items.iter().map(|t| json_text(t, r)).collect();
            [&b"["[..], &parts.join(&b","[..])[..], &b"]"[..]].concat()
        }
        Tmpl::Obj(pairs) => {
            let parts: Vec<Vec<u8>> = pairs
                .iter()
                .map(|(k, v)| [serde_json::to_vec(k).unwrap(), b":".to_vec(), json_text(v, r)].concat())
                .collect();
            [&b"{"[..], &parts.join(&b","[..])[..], &b"}"[..]].concat()
        }
    }
}

/// Percent-encodes every byte but the unreserved ones.
pub fn pct(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `name=value&...` of the slots at `loc` (a twice-given parameter appears twice).
pub fn encoded_pairs(op: &Op, slots: &[Slot], loc: Loc, r: &Resolved, upper_names: bool) -> String {
    let mut pairs = Vec::new();
    for (p, slot) in op.params.iter().zip(slots).filter(|(p, _)| p.loc == loc) {
        let name = if upper_names {
            p.name.to_ascii_uppercase()
        } else {
            p.name.to_string()
        };
        let values: Vec<&Tmpl> = match slot {
            Slot::Absent => vec![],
            Slot::One(t) => vec![t],
            Slot::Twice(a, b) => vec![a, b],
        };
        for v in values {
            pairs.push(format!("{}={}", pct(name.as_bytes()), pct(&text(v, r))));
        }
    }
    pairs.join("&")
}

/// The path with its parameters filled in (percent-encoded; an absent one is an empty segment).
pub fn fill_path(op: &Op, slots: &[Slot], r: &Resolved) -> String {
    let mut path = op.path.to_string();
    for (p, slot) in op.params.iter().zip(slots).filter(|(p, _)| p.loc == Loc::Path) {
        let v = match slot {
            Slot::Absent => String::new(),
            Slot::One(t) | Slot::Twice(t, _) => pct(&text(t, r)),
        };
        path = path.replace(&format!("{{{}}}", p.name), &v);
    }
    path
}

/// Keeps the operations named in `CONFAB_PROPTEST_ONLY` (comma-separated), when it is set.
pub fn only(ops: &mut Vec<Op>) {
    if let Ok(names) = std::env::var("CONFAB_PROPTEST_ONLY") {
        let names: Vec<&str> = names.split(',').map(str::trim).collect();
        ops.retain(|op| names.contains(&op.name));
    }
}

pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

pub fn cases_per_op() -> u32 {
    std::env::var("CONFAB_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

/// A runner seeded from the operation's name and `CONFAB_PROPTEST_SEED`: the same cases on every run.
pub fn runner(op: &str) -> TestRunner {
    let seed: u64 = std::env::var("CONFAB_PROPTEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let digest = Sha256::new()
        .chain_update(seed.to_be_bytes())
        .chain_update(op)
        .finalize();
    let config = Config {
        cases: cases_per_op(),
        failure_persistence: None,
        max_shrink_iters: 200,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &digest))
}

/// A case's check or a liveness probe, borrowing the test's fixtures.
pub type BoxFut<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + 'a>>;

/// What one operation's batch saw.
#[derive(Default)]
pub struct Tally {
    pub valid: u32,
    pub invalid: u32,
    pub either: u32,
    pub elapsed: Duration,
}

/// Runs `check` on the generated cases of `op` (async, on the test's runtime); a failure is shrunk and
/// returned with the operation's name.
pub fn run_op<'a, M: Clone + std::fmt::Debug + 'static>(
    op: &Op,
    strategy: BoxedStrategy<Case<M>>,
    check: impl Fn(Case<M>) -> BoxFut<'a>,
) -> Result<Tally, String> {
    let handle = tokio::runtime::Handle::current();
    let tally = std::cell::RefCell::new(Tally::default());
    let started = Instant::now();
    let mut runner = runner(op.name);
    let result = runner.run(&strategy, |case| {
        match case.verdict(op) {
            Verdict::Valid => tally.borrow_mut().valid += 1,
            Verdict::Invalid => tally.borrow_mut().invalid += 1,
            Verdict::Either => tally.borrow_mut().either += 1,
        }
        tokio::task::block_in_place(|| handle.block_on(check(case))).map_err(TestCaseError::fail)
    });
    let mut tally = tally.into_inner();
    tally.elapsed = started.elapsed();
    match result {
        Ok(()) => Ok(tally),
        Err(TestError::Fail(why, case)) => Err(format!("{}: {why}\nminimal case: {case:#?}", op.name)),
        Err(TestError::Abort(why)) => Err(format!("{}: aborted: {why}", op.name)),
    }
}

/// Runs every operation of a table, then prints the tally; panics listing every failure.
pub async fn run_table<'a, M: Clone + std::fmt::Debug + 'static>(
    surface: &str,
    ops: &'a [Op],
    strategy: impl Fn(&Op) -> BoxedStrategy<Case<M>>,
    check: impl Fn(&'a Op, Case<M>) -> BoxFut<'a>,
    alive: impl Fn() -> BoxFut<'a>,
) {
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut total = Tally::default();
    for op in ops {
        let r = run_op(op, strategy(op), |case| check(op, case));
        match r {
            Ok(t) => {
                println!(
                    "{surface} {:<28} valid {:>4} invalid {:>4} either {:>4} {:>8.2?}",
                    op.name, t.valid, t.invalid, t.either, t.elapsed
                );
                total.valid += t.valid;
                total.invalid += t.invalid;
                total.either += t.either;
            }
            Err(e) => failures.push(e),
        }
        if let Err(e) = alive().await {
            failures.push(format!(
                "{}: the server no longer answers a known-good request: {e}",
                op.name
            ));
            break;
        }
    }
    let cases = total.valid + total.invalid + total.either;
    println!(
        "{surface}: {} operations, {cases} cases ({} valid, {} invalid, {} either) in {:.2?}, {} per operation",
        ops.len(),
        total.valid,
        total.invalid,
        total.either,
        started.elapsed(),
        cases_per_op()
    );
    assert!(
        failures.is_empty(),
        "{} failing operation(s):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// A response body as JSON (an object), or why not.
pub fn json_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, String> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(format!("the body is JSON but not an object: {other}")),
        Err(_) => Err(format!(
            "the body is not JSON: {:?}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        )),
    }
}

/// A short description of a request for failure messages.
pub fn describe(method: &str, path: &str, body: &[u8]) -> Value {
    let shown = String::from_utf8_lossy(&body[..body.len().min(600)]).to_string();
    json!({"method": method, "path": &path[..path.len().min(600)], "body": shown, "body_len": body.len()})
}
