//! Generated requests against `/nimserver` (table: `nim_params`): every answer is HTTP 200 JSON with one of
//! NIM's codes (`{code, desc}` on failure), `code` 200 only for valid requests and always for them, an
//! authentication failure 414, a repeated request 431, and the server keeps answering.

use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;
use proptest::strategy::BoxedStrategy;
use serde_json::Value;

use super::Verdict::{Either, Invalid, Valid};
use super::{Case, Loc, Op, Res, Resolved, Surface, Verdict};
use crate::helpers::*;
use crate::nim::{APP_KEY, APP_SECRET, checksum, enc, now_secs};

/// Request-level changes, in a minority of cases.
#[derive(Clone, Debug)]
pub enum Mutation {
    None,
    /// Without one of the four headers.
    Without(&'static str),
    WrongAppKey,
    BadCheckSum,
    /// NIM clients may send the hex digest in upper case.
    UpperCheckSum,
    /// `CurTime` this many seconds off the server's clock.
    Skewed(i64),
    /// `CurTime` with a leading zero (the same digits hash the same with a nonce one shorter).
    LeadingZeroTime,
    NonceOfLength(usize),
    /// The same request sent twice: the second is a repeat.
    Replay,
    /// The path without `/nimserver`, as the SDKs send it to a private endpoint.
    BarePath,
    /// Parameter names in upper case (NIM's names are case-insensitive).
    UpperNames,
    ContentType(&'static str),
    /// A parameter whose value is not UTF-8 once decoded.
    NonUtf8Field,
    /// A body over the surface's limit.
    HugeBody,
    /// Bytes that are not a form at all.
    Garbage,
}

const KNOWN_CODES: &[u64] = &[200, 403, 404, 414, 416, 431, 801, 802, 803, 804, 809];

fn mutations() -> BoxedStrategy<(Mutation, Verdict)> {
    use Mutation::*;
    prop_oneof![
        14 => Just((None, Valid)),
        1 => prop_oneof![
            Just((Without("AppKey"), Invalid)),
            Just((Without("Nonce"), Invalid)),
            Just((Without("CurTime"), Invalid)),
            Just((Without("CheckSum"), Invalid)),
            Just((WrongAppKey, Invalid)),
            Just((BadCheckSum, Invalid)),
            Just((Skewed(-301), Invalid)),
            Just((Skewed(301), Invalid)),
            Just((LeadingZeroTime, Invalid)),
            Just((NonceOfLength(129), Invalid)),
        ],
        2 => prop_oneof![
            Just((UpperCheckSum, Valid)),
            Just((Skewed(-200), Valid)),
            Just((NonceOfLength(128), Valid)),
            Just((Replay, Valid)),
            Just((BarePath, Valid)),
            Just((UpperNames, Valid)),
            Just((ContentType("application/json"), Valid)),
            Just((NonUtf8Field, Either)),
            Just((HugeBody, Invalid)),
            Just((Garbage, Either)),
        ],
    ]
    .boxed()
}

struct World<'a> {
    app: &'a TestApp,
    team: String,
    n: AtomicU64,
    /// Each session token an application chose and the account it belongs to: a token is one account's
    /// (clients sign in with it alone), so choosing another account's is refused (414).
    tokens: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

/// The `accid` and `token` a form names once each (both decoded), if it does; an empty token is no token
/// (NIM reads an empty parameter as absent).
fn accid_and_token(form: &[u8]) -> Option<(String, String)> {
    let url = reqwest::Url::parse(&format!("http://x/?{}", String::from_utf8_lossy(form))).ok()?;
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let one = |name: &str| {
        // NIM's parameter names are case-insensitive.
        let mut it = pairs.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name));
        match (it.next(), it.next()) {
            (Some((_, v)), None) => Some(v.clone()),
            _ => None,
        }
    };
    Some((one("accid")?, one("token").filter(|t| !t.is_empty())?))
}

impl World<'_> {
    /// Whether the case chooses a token another account has.
    fn takes_anothers_token(&self, form: &[u8]) -> bool {
        accid_and_token(form).is_some_and(|(accid, token)| {
            self.tokens
                .lock()
                .unwrap()
                .get(&token)
                .is_some_and(|owner| *owner != accid)
        })
    }

    /// Keeps the token map as the server does after an accepted account call.
    fn accepted(&self, op: &Op, form: &[u8]) {
        let url = reqwest::Url::parse(&format!("http://x/?{}", String::from_utf8_lossy(form))).ok();
        let Some(accid) = url.and_then(|u| {
            u.query_pairs()
                .find(|(k, _)| k.eq_ignore_ascii_case("accid"))
                .map(|(_, v)| v.into_owned())
        }) else {
            return;
        };
        let mut tokens = self.tokens.lock().unwrap();
        if matches!(op.name, "user_update" | "user_refresh_token" | "user_block") {
            tokens.retain(|_, owner| *owner != accid);
        }
        if matches!(op.name, "user_create" | "user_update")
            && let Some((accid, token)) = accid_and_token(form)
        {
            tokens.insert(token, accid);
        }
    }
}

/// A signed request that must succeed.
async fn ok(app: &TestApp, path: &str, form: &str) -> Value {
    let v = crate::nim::nim(app, path, form).await;
    assert_eq!(v["code"], 200, "{path} {form}: {v}");
    v
}

impl<'a> World<'a> {
    async fn new(app: &'a TestApp) -> World<'a> {
        for id in ["palice", "pbob"] {
            ok(app, "/nimserver/user/create.action", &format!("accid={id}&name={id}")).await;
        }
        let w = World {
            app,
            team: String::new(),
            n: AtomicU64::new(0),
            tokens: Default::default(),
        };
        let team = w.fresh_team().await;
        World { team, ..w }
    }

    fn next(&self) -> u64 {
        self.n.fetch_add(1, Ordering::Relaxed)
    }

    async fn fresh_team(&self) -> String {
        let v = ok(
            self.app,
            "/nimserver/team/create.action",
            &format!("tname=props&owner=palice&members={}", enc("[\"pbob\"]")),
        )
        .await;
        v["tid"].to_string()
    }

    async fn resolve(&self, res: Res, r: &mut Resolved) {
        let v = match res {
            Res::User => "palice".into(),
            Res::User2 => "pbob".into(),
            Res::Missing => "pnobody".into(),
            Res::NewUser => format!("pnew{}", self.next()),
            Res::FreshUser => {
                let id = format!("puser{}", self.next());
                ok(self.app, "/nimserver/user/create.action", &format!("accid={id}")).await;
                id
            }
            Res::Team => self.team.clone(),
            Res::FreshTeam => self.fresh_team().await,
            Res::MissingTeam => "1234567".into(),
            Res::MissingMessage => "999999999".into(),
            Res::NimMsg | Res::NimMsgTime => {
                if r.contains_key(&Res::NimMsg) {
                    return;
                }
                let v = ok(
                    self.app,
                    "/nimserver/msg/sendMsg.action",
                    &format!(
                        "from=palice&ope=0&to=pbob&type=0&body={}",
                        enc("{\"msg\":\"recall me\"}")
                    ),
                )
                .await;
                r.insert(Res::NimMsg, v["data"]["msgid"].to_string());
                r.insert(Res::NimMsgTime, v["data"]["timetag"].to_string());
                return;
            }
            other => panic!("{other:?} is not a NIM resource"),
        };
        r.insert(res, v);
    }
}

fn nonce(w: &World<'_>) -> String {
    format!("props-{}-{}", std::process::id(), w.next())
}

/// Sends the case (twice for a replay); returns the request, the form sent, and each answer's status, content
/// type, body.
async fn send(w: &World<'_>, op: &Op, case: &Case<Mutation>) -> (Value, Vec<u8>, Vec<(u16, String, Vec<u8>)>) {
    use Mutation::*;
    let mut r = Resolved::new();
    for res in case.refs() {
        w.resolve(res, &mut r).await;
    }
    let mut form =
        super::encoded_pairs(op, &case.slots, Loc::Body, &r, matches!(case.mutation, UpperNames)).into_bytes();
    match &case.mutation {
        NonUtf8Field => form.extend_from_slice(b"&zz=%FF%FE&name%FF=x"),
        HugeBody => form.extend_from_slice(&[&b"&zz="[..], &vec![b'x'; 2 << 20][..]].concat()),
        Garbage => form = b"\xff\xfe%%%=&&==\x00".to_vec(),
        _ => {}
    }
    let path = match &case.mutation {
        BarePath => op.path.trim_start_matches("/nimserver").to_string(),
        _ => op.path.to_string(),
    };
    let n = match &case.mutation {
        // Unique, padded to the length.
        NonceOfLength(len) => format!("{:n>len$}", nonce(w), len = *len),
        _ => nonce(w),
    };
    let t = match &case.mutation {
        Skewed(d) => (now_secs() + d).to_string(),
        _ => now_secs().to_string(),
    };
    let mut sum = checksum(APP_SECRET, &n, &t);
    let mut t_sent = t.clone();
    match &case.mutation {
        BadCheckSum => sum = checksum("another secret", &n, &t),
        UpperCheckSum => sum = sum.to_uppercase(),
        LeadingZeroTime => t_sent = format!("0{t}"),
        _ => {}
    }
    let key = if matches!(case.mutation, WrongAppKey) {
        "another-app-key"
    } else {
        APP_KEY
    };
    let ct = match &case.mutation {
        ContentType(ct) => *ct,
        _ => "application/x-www-form-urlencoded;charset=utf-8",
    };
    let headers = [
        ("AppKey", key),
        ("Nonce", n.as_str()),
        ("CurTime", t_sent.as_str()),
        ("CheckSum", sum.as_str()),
        ("Content-Type", ct),
    ];
    let described = super::describe(op.method, &path, &form);
    let times = if matches!(case.mutation, Replay) { 2 } else { 1 };
    let mut answers = Vec::new();
    for _ in 0..times {
        let mut req = w.app.http.post(w.app.url(&path)).body(form.clone());
        for (name, value) in headers {
            if !matches!(case.mutation, Without(h) if h == name) {
                req = req.header(name, value);
            }
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("{described}: {e}"));
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).to_string())
            .unwrap_or_default();
        let bytes = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
        answers.push((status, ct, bytes));
    }
    (described, form, answers)
}

/// The properties of one answer; `expect`: the code it must have.
fn check(verdict: Verdict, expect: Option<u64>, status: u16, ct: &str, body: &[u8]) -> Result<(), String> {
    if status != 200 {
        return Err(format!("HTTP {status}: NIM answers 200 whatever happened"));
    }
    if !ct.starts_with("application/json") {
        return Err(format!("content type {ct:?}, not JSON"));
    }
    let obj = super::json_object(body)?;
    let Some(code) = obj.get("code").and_then(Value::as_u64) else {
        return Err("no integer code".into());
    };
    if !KNOWN_CODES.contains(&code) {
        return Err(format!("code {code} is not one NIM answers a request with"));
    }
    if let Some(e) = expect {
        return if code == e {
            Ok(())
        } else {
            Err(format!("expected code {e}"))
        };
    }
    match (code, verdict) {
        (200, Invalid) => Err("an invalid request was accepted".into()),
        (200, _) => Ok(()),
        (_, Valid) => Err("a valid request was refused".into()),
        _ if obj.get("desc").and_then(Value::as_str).is_none() => Err("an error without desc".into()),
        _ => Ok(()),
    }
}

async fn alive(app: &TestApp) -> Result<(), String> {
    let v = crate::nim::nim(app, "/nimserver/health/liveness.action", "").await;
    if v["code"] == 200 { Ok(()) } else { Err(v.to_string()) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nim_surface_holds_its_properties_on_generated_requests() {
    let app = spawn_app_with(|c| {
        c.nim.app_key = APP_KEY.into();
        c.nim.app_secret = APP_SECRET.into();
        // The cases send far faster than NIM's 100 message calls a second or any user would.
        c.nim.sends_per_sec = 1_000_000;
        c.limits.user_send_per_sec = 1_000_000;
        c.limits.user_send_burst = 1_000_000;
    })
    .await;
    let world = World::new(&app).await;
    let ops = super::nim_params::operations();
    super::run_table(
        "nim",
        &ops,
        |op| super::cases(Surface::Nim, op, mutations()),
        |op, case| {
            let world = &world;
            Box::pin(async move {
                let mut verdict = case.verdict(op);
                let auth_failure = matches!(
                    case.mutation,
                    Mutation::Without(_)
                        | Mutation::WrongAppKey
                        | Mutation::BadCheckSum
                        | Mutation::Skewed(_)
                        | Mutation::LeadingZeroTime
                        | Mutation::NonceOfLength(129)
                ) && verdict == Invalid
                    && case.mutation_verdict == Invalid;
                let mut expect = auth_failure.then_some(414);
                let (req, form, answers) = send(world, op, &case).await;
                if verdict == Valid && world.takes_anothers_token(&form) {
                    (verdict, expect) = (Invalid, Some(414));
                }
                let report = |why: String, (status, _, body): &(u16, String, Vec<u8>)| {
                    format!(
                        "{why}\nverdict: {verdict:?}\nrequest: {req}\nanswer: {status} {}",
                        String::from_utf8_lossy(&body[..body.len().min(600)])
                    )
                };
                let first = &answers[0];
                check(verdict, expect, first.0, &first.1, &first.2).map_err(|why| report(why, first))?;
                if serde_json::from_slice::<Value>(&first.2).is_ok_and(|v| v["code"] == 200) {
                    world.accepted(op, &form);
                }
                if let Some(second) = answers.get(1) {
                    check(Invalid, Some(431), second.0, &second.1, &second.2)
                        .map_err(|why| report(format!("the repeat: {why}"), second))?;
                }
                Ok(())
            })
        },
        || Box::pin(alive(&app)),
    )
    .await;
}
