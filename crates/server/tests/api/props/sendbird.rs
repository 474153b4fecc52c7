//! Generated requests against `/v3` (table: `sendbird_params`): every answer is Sendbird's JSON, an error is
//! `{error: true, code, message}` with one of Sendbird's codes and the HTTP status that code goes with,
//! never a 5xx; valid requests succeed, invalid ones are refused, and the server keeps answering.

use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;
use proptest::strategy::BoxedStrategy;
use serde_json::{Value, json};

use super::Verdict::{Either, Invalid, Valid};
use super::{Case, Loc, Op, Res, Resolved, Slot, Surface, Verdict};
use crate::helpers::*;

/// Request-level changes, in a minority of cases.
#[derive(Clone, Debug)]
pub enum Mutation {
    None,
    NoToken,
    WrongToken,
    EmptyToken,
    /// A token with bytes that are not ASCII.
    NonAsciiToken,
    /// A key whose string is not UTF-8 added to the JSON body.
    NonUtf8Body,
    /// A body that is JSON but not an object.
    NotAnObject(&'static str),
    /// The body cut in the middle.
    Truncated,
    /// The first key given twice.
    DuplicateKey,
    ContentType(&'static str),
    /// A body over the surface's limit (1 MiB).
    HugeBody,
    /// An unknown key: ignored, as Sendbird ignores them.
    UnknownKey,
}

/// The Sendbird codes this surface may answer, with the statuses each may come with.
fn status_ok(code: u64, status: u16) -> bool {
    match code {
        400105 | 400108 | 400111 | 400201 | 400202 | 400401 | 400403 | 400404 | 400700 => status == 400,
        // An oversized body keeps the status that says so.
        400110 => status == 400 || status == 413,
        500910 => status == 429,
        _ => false,
    }
}

fn mutations(op: &Op) -> BoxedStrategy<(Mutation, Verdict)> {
    use Mutation::*;
    let auth = prop_oneof![
        Just((NoToken, Invalid)),
        Just((WrongToken, Invalid)),
        Just((EmptyToken, Invalid)),
        Just((NonAsciiToken, Invalid)),
    ];
    if !op.has_body() {
        return prop_oneof![8 => Just((None, Valid)), 1 => auth].boxed();
    }
    let body = prop_oneof![
        Just((NonUtf8Body, Invalid)),
        Just((NotAnObject("[1,2]"), Invalid)),
        Just((NotAnObject("\"text\""), Invalid)),
        Just((NotAnObject("null"), Invalid)),
        Just((Truncated, Invalid)),
        Just((DuplicateKey, Either)),
        Just((ContentType("text/plain"), Either)),
        Just((ContentType("application/x-www-form-urlencoded"), Either)),
        Just((ContentType("multipart/form-data; boundary=x"), Either)),
        Just((HugeBody, Invalid)),
        Just((UnknownKey, Valid)),
    ];
    prop_oneof![12 => Just((None, Valid)), 1 => auth, 3 => body].boxed()
}

/// The fixtures every case may name, and fresh resources made on demand.
struct World<'a> {
    app: &'a TestApp,
    message: String,
    n: AtomicU64,
}

async fn sb(app: &TestApp, method: &str, path: &str, body: Value) -> Value {
    let r = app
        .http
        .request(method.parse().unwrap(), app.url(path))
        .header("Api-Token", MASTER)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{method} {path}: {v}");
    v
}

impl<'a> World<'a> {
    async fn new(app: &'a TestApp) -> World<'a> {
        for id in ["p_alice", "p_bob"] {
            sb(app, "POST", "/v3/users", json!({"user_id": id, "nickname": id})).await;
        }
        // A bot the application answers for, triggered by mentions only: the cases never mention it, so no
        // callback is ever posted.
        let bot = json!({"id": "p_bot", "nickname": "Prop bot",
            "settings": {"callback_url": "https://example.com/bot", "trigger": "mentions"}});
        let (s, v) = app.admin("POST", "/api/v1/bots", Some(bot)).await;
        assert_eq!(s, 201, "{v}");
        let room = json!({"channel_url": "p_room", "user_ids": ["p_alice", "p_bob"]});
        sb(app, "POST", "/v3/group_channels", room).await;
        let m = sb(
            app,
            "POST",
            "/v3/group_channels/p_room/messages",
            json!({"message_type": "MESG", "user_id": "p_alice", "message": "fixture"}),
        )
        .await;
        World {
            app,
            message: m["message_id"].to_string(),
            n: AtomicU64::new(0),
        }
    }

    fn next(&self) -> u64 {
        self.n.fetch_add(1, Ordering::Relaxed)
    }

    async fn channel_with(&self, members: &[&str]) -> String {
        let url = format!("p_fresh_{}", self.next());
        sb(
            self.app,
            "POST",
            "/v3/group_channels",
            json!({"channel_url": url, "user_ids": members}),
        )
        .await;
        url
    }

    async fn resolve(&self, r: Res) -> String {
        match r {
            Res::User => "p_alice".into(),
            Res::User2 => "p_bob".into(),
            Res::Missing => "p_nobody".into(),
            Res::NewUser => format!("p_new_{}", self.next()),
            Res::FreshUser => {
                let id = format!("p_user_{}", self.next());
                sb(self.app, "POST", "/v3/users", json!({"user_id": id, "nickname": ""})).await;
                id
            }
            Res::Channel => "p_room".into(),
            Res::MissingChannel => "p_nowhere".into(),
            Res::NewChannel => format!("p_newch_{}", self.next()),
            Res::FreshChannel => self.channel_with(&["p_alice", "p_bob"]).await,
            Res::BotChannel => self.channel_with(&["p_alice", "p_bot"]).await,
            Res::Message => self.message.clone(),
            Res::MissingMessage => "999999999".into(),
            Res::FreshMessage => {
                let m = sb(
                    self.app,
                    "POST",
                    "/v3/group_channels/p_room/messages",
                    json!({"message_type": "MESG", "user_id": "p_bob", "message": "to delete"}),
                )
                .await;
                m["message_id"].to_string()
            }
            Res::Bot => "p_bot".into(),
            other => panic!("{other:?} is not a Sendbird resource"),
        }
    }
}

/// Sends the case; returns the request (for reports), the status, the content type and the body.
async fn send(w: &World<'_>, op: &Op, case: &Case<Mutation>) -> (Value, u16, String, Vec<u8>) {
    let mut r = Resolved::new();
    for res in case.refs() {
        r.insert(res, w.resolve(res).await);
    }
    let mut path = super::fill_path(op, &case.slots, &r);
    let query = super::encoded_pairs(op, &case.slots, Loc::Query, &r, false);
    if !query.is_empty() {
        path = format!("{path}?{query}");
    }
    let mut pairs: Vec<Vec<u8>> = Vec::new();
    for (p, slot) in op.params.iter().zip(&case.slots).filter(|(p, _)| p.loc == Loc::Body) {
        let key = serde_json::to_vec(p.name).unwrap();
        let values = match slot {
            Slot::Absent => vec![],
            Slot::One(t) => vec![t],
            Slot::Twice(a, b) => vec![a, b],
        };
        for v in values {
            pairs.push([key.clone(), b":".to_vec(), super::json_text(v, &r)].concat());
        }
    }
    use Mutation::*;
    match &case.mutation {
        NonUtf8Body => pairs.push(b"\"zz\":\"\xff\xfe\"".to_vec()),
        DuplicateKey if !pairs.is_empty() => pairs.push(pairs[0].clone()),
        UnknownKey => pairs.push(b"\"zz_unknown\":{\"a\":[1,2]}".to_vec()),
        HugeBody => pairs.push([&b"\"zz\":\""[..], &vec![b'x'; 2 << 20][..], &b"\""[..]].concat()),
        _ => {}
    }
    let mut body = [&b"{"[..], &pairs.join(&b","[..])[..], &b"}"[..]].concat();
    match &case.mutation {
        NotAnObject(v) => body = v.as_bytes().to_vec(),
        Truncated => body.truncate(body.len() / 2),
        _ => {}
    }
    let ct = match &case.mutation {
        ContentType(ct) => *ct,
        _ => "application/json",
    };
    let mut req = w
        .app
        .http
        .request(op.method.parse().unwrap(), w.app.url(&path))
        .header("Content-Type", ct);
    req = match &case.mutation {
        NoToken => req,
        WrongToken => req.header("Api-Token", "not-the-master-token"),
        EmptyToken => req.header("Api-Token", ""),
        NonAsciiToken => req.header(
            "Api-Token",
            reqwest::header::HeaderValue::from_bytes(b"tok\xe9n\xff").unwrap(),
        ),
        _ => req.header("Api-Token", MASTER),
    };
    if op.has_body() {
        req = req.body(body.clone());
    } else {
        body.clear();
    }
    let described = super::describe(op.method, &path, &body);
    let resp = req.send().await.unwrap_or_else(|e| panic!("{described}: {e}"));
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).to_string())
        .unwrap_or_default();
    let bytes = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
    (described, status, ct, bytes)
}

/// The properties of one answer.
fn check(verdict: Verdict, expect: Option<u64>, status: u16, ct: &str, body: &[u8]) -> Result<(), String> {
    if status >= 500 {
        return Err(format!("server error {status}"));
    }
    if !ct.starts_with("application/json") {
        return Err(format!("content type {ct:?}, not JSON"));
    }
    let obj = super::json_object(body)?;
    if (200..300).contains(&status) {
        if verdict == Invalid {
            return Err(format!("an invalid request was accepted ({status})"));
        }
        if obj.get("error") == Some(&Value::Bool(true)) {
            return Err("a success carries an error".into());
        }
        return Ok(());
    }
    if verdict == Valid {
        return Err(format!("a valid request was refused ({status})"));
    }
    let shape = obj.get("error") == Some(&Value::Bool(true))
        && obj
            .get("message")
            .and_then(Value::as_str)
            .is_some_and(|m| !m.is_empty());
    let code = obj.get("code").and_then(Value::as_u64);
    match code {
        Some(c) if shape && status_ok(c, status) => {}
        _ => return Err(format!("not a Sendbird error for status {status}")),
    }
    if let Some(e) = expect
        && code != Some(e)
    {
        return Err(format!("expected code {e}"));
    }
    Ok(())
}

async fn alive(app: &TestApp) -> Result<(), String> {
    let r = app
        .http
        .get(app.url("/v3/users/p_alice"))
        .header("Api-Token", MASTER)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    match r.status().as_u16() {
        200 => Ok(()),
        s => Err(format!("GET /v3/users/p_alice answered {s}")),
    }
}

pub async fn props_app() -> TestApp {
    spawn_app_with(|c| {
        // Sends are rate limited per user; the cases send far faster than any user would.
        c.limits.user_send_per_sec = 1_000_000;
        c.limits.user_send_burst = 1_000_000;
        c.limits.user_reads_per_sec = 1_000_000;
        c.limits.user_reads_burst = 1_000_000;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sendbird_surface_holds_its_properties_on_generated_requests() {
    let app = props_app().await;
    let world = World::new(&app).await;
    let ops = super::sendbird_params::operations();
    super::run_table(
        "sendbird",
        &ops,
        |op| super::cases(Surface::Sendbird, op, mutations(op)),
        |op, case| {
            let world = &world;
            Box::pin(async move {
                let verdict = case.verdict(op);
                // Refused for the token only when nothing else is wrong (an unknown URL is found first).
                let params_valid = case.verdicts.iter().all(|v| *v == Valid);
                let expect = match case.mutation {
                    _ if !params_valid => None,
                    Mutation::NoToken | Mutation::WrongToken | Mutation::EmptyToken | Mutation::NonAsciiToken => {
                        Some(400401)
                    }
                    _ => None,
                };
                let (req, status, ct, body) = send(world, op, &case).await;
                check(verdict, expect, status, &ct, &body).map_err(|why| {
                    format!(
                        "{why}\nverdict: {verdict:?}\nrequest: {req}\nanswer: {status} {}",
                        String::from_utf8_lossy(&body[..body.len().min(600)])
                    )
                })
            })
        },
        || Box::pin(alive(&app)),
    )
    .await;
}
