//! `msg/sendMsg`, `msg/sendBatchMsg`, `msg/recall`, and how NIM messages map onto Confab's.
//!
//! Types: 0 text (`{"msg"}` → text), 1 image and 6 file (their body kept as the payload, the URL a file
//! hosted elsewhere), 10 tip (an admin message), 2 audio / 3 video / 4 location / 100 custom (custom
//! messages whose payload is the body, with custom type `nim:audio`, `nim:video`, `nim:location` or none).
//!
//! Robots: a message addresses a robot (a bot account) by being sent to it (`ope=0`, `to=<robot>`), or by
//! naming it in `robotAccount` (or mentioning it in `forcepushlist`) in a team. On a private message between
//! two users, NIM ignores `robotAccount`; Confab lets the named robot answer in that conversation (as a
//! mention: the reply is posted there by the robot and both users see it). `robotTopic`, `robotFunction`
//! and `robotCustomContent` are kept with the message (`data.bot_context`) and reach the robot's instructions only
//! when its configuration says so (`message_context`); otherwise its own `topic` and `custom_content` apply.

use confab_domain::bot::MessageBotContext;
use confab_domain::model::{ChannelKind, Message, MessageKind, NewChannel, NewMessage};
use confab_domain::{ChannelId, DomainError, MessageId, UserId};
use confab_service::Actor;
use serde_json::{Map, Value, json};

use crate::error::{NimError, NimResult, Ok200, code};
use crate::params::Params;
use crate::users::no_such_user;
use crate::{NimState, parse_accid};

const MAX_BODY_CHARS: usize = 5000;

/// NIM message types accepted by `sendMsg`.
pub fn kind_of(nim_type: i64) -> NimResult<(MessageKind, &'static str)> {
    Ok(match nim_type {
        0 => (MessageKind::Text, ""),
        1 => (MessageKind::Image, ""),
        2 => (MessageKind::Custom, "nim:audio"),
        3 => (MessageKind::Custom, "nim:video"),
        4 => (MessageKind::Custom, "nim:location"),
        6 => (MessageKind::File, ""),
        10 => (MessageKind::Admin, ""),
        100 => (MessageKind::Custom, ""),
        other => {
            return Err(NimError::invalid(
                "type",
                format!("{other} is not 0, 1, 2, 3, 4, 6, 10 or 100"),
            ));
        }
    })
}

/// The NIM type and body of a stored message.
pub fn nim_view(m: &Message) -> (i64, Value) {
    let payload = || m.payload.clone().unwrap_or_else(|| json!({}));
    match m.kind {
        MessageKind::Text => (0, json!({"msg": m.text})),
        MessageKind::Admin => (10, json!({"msg": m.text})),
        MessageKind::Image => (1, file_body(m).unwrap_or_else(payload)),
        MessageKind::File => (6, file_body(m).unwrap_or_else(payload)),
        MessageKind::Custom => match m.custom_type.as_str() {
            "nim:audio" => (2, payload()),
            "nim:video" => (3, payload()),
            "nim:location" => (4, payload()),
            _ => (100, payload()),
        },
    }
}

/// An uploaded file as NIM describes files.
fn file_body(m: &Message) -> Option<Value> {
    let f = m.file.as_ref()?;
    let ext = f.name.rsplit_once('.').map(|(_, e)| e).unwrap_or_default();
    Some(json!({"name": f.name, "url": format!("/api/v1/files/{}", f.id), "size": f.size, "ext": ext}))
}

/// Reads `body` (JSON, or the single-quoted pseudo-JSON some clients send), at most 5,000 characters.
fn body_of(p: &Params) -> NimResult<Value> {
    let raw = p.req("body")?;
    if raw.chars().count() > MAX_BODY_CHARS {
        return Err(NimError::invalid("body", "at most 5000 characters"));
    }
    p.json("body")?.ok_or_else(|| NimError::missing("body"))
}

/// The domain message for a NIM send from `from` into `channel`.
fn new_message(
    channel: ChannelId,
    from: UserId,
    nim_type: i64,
    body: Value,
    mentions: Vec<UserId>,
) -> NimResult<NewMessage> {
    let (kind, custom_type) = kind_of(nim_type)?;
    let text_of = |b: &Value| -> NimResult<String> {
        match b.get("msg") {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            _ => Err(NimError::invalid("body", "a text or tip body is {\"msg\": \"...\"}")),
        }
    };
    let (text, payload) = match kind {
        MessageKind::Text | MessageKind::Admin => (text_of(&body)?, None),
        _ => {
            if !body.is_object() {
                return Err(NimError::invalid("body", "must be a JSON object"));
            }
            (String::new(), Some(body))
        }
    };
    Ok(NewMessage {
        channel_id: channel,
        sender_id: (kind != MessageKind::Admin).then_some(from),
        kind,
        text,
        custom_type: custom_type.into(),
        data: None,
        payload,
        mentions,
        client_msg_id: None,
        parent_id: None,
        file_id: None,
        reply: None,
        flags: Vec::new(),
    })
}

async fn existing_user(st: &NimState, name: &str, raw: &str) -> NimResult<UserId> {
    let id = parse_accid(name, raw)?;
    match st.service.get_user(&Actor::Admin, &id).await {
        Ok(_) => Ok(id),
        Err(DomainError::NotFound { .. }) => Err(no_such_user(name, raw)),
        Err(e) => Err(e.into()),
    }
}

/// The team (a group channel) named by a tid, or 803.
pub async fn team(st: &NimState, raw: &str) -> NimResult<confab_domain::model::Channel> {
    let id = ChannelId::parse(raw).map_err(|e| NimError::invalid("tid", e))?;
    match st.service.get_channel(&Actor::Admin, &id).await {
        Ok(mc) if mc.channel.kind == ChannelKind::Group => Ok(mc.channel),
        Ok(_) | Err(DomainError::NotFound { .. }) => Err(NimError::new(code::TEAM_NOT_FOUND, "team not found")),
        Err(e) => Err(e.into()),
    }
}

fn sent(m: &Message) -> Value {
    json!({"msgid": m.id.0, "timetag": m.created_at, "antispam": false})
}

pub async fn send(st: &NimState, p: &Params) -> NimResult<Ok200> {
    let from = existing_user(st, "from", p.req("from")?).await?;
    let ope = p.req_int("ope")?;
    let to = p.req("to")?;
    let nim_type = p.req_int("type")?;
    let body = body_of(p)?;
    let robot = match p.opt("robotAccount") {
        Some(r) => Some(existing_user(st, "robotAccount", r).await?),
        None => None,
    };
    let mut mentions: Vec<UserId> = Vec::new();
    let channel = match ope {
        0 => {
            let to = existing_user(st, "to", to).await?;
            st.service.open_direct(&Actor::Admin, &from, &to).await?.0.id
        }
        1 => {
            let t = team(st, to).await?;
            for raw in p.string_list("forcepushlist", 500)?.unwrap_or_default() {
                mentions.push(parse_accid("forcepushlist", &raw)?);
            }
            t.id
        }
        other => return Err(NimError::invalid("ope", format!("{other} is not 0 or 1"))),
    };
    mentions.extend(robot);
    mentions.sort();
    mentions.dedup();
    let mut msg = new_message(channel, from, nim_type, body, mentions)?;
    msg.data = robot_context(p)?;
    let appended = st
        .service
        .send(&Actor::Admin, msg)
        .await
        .map_err(|e| not_in_team(e, ope))?;
    Ok(Ok200::with("data", sent(&appended.message)))
}

/// `robotTopic`, `robotFunction` and `robotCustomContent`, kept with the message as its bot context, for
/// robots whose configuration lets them into the instructions (`message_context`).
fn robot_context(p: &Params) -> NimResult<Option<Value>> {
    let mut context = MessageBotContext::default();
    for (param, field, max) in [
        ("robotTopic", &mut context.topic, 2000),
        ("robotFunction", &mut context.function, 2000),
        ("robotCustomContent", &mut context.custom_content, 5000),
    ] {
        if let Some(v) = p.opt(param) {
            if v.chars().count() > max {
                return Err(NimError::invalid(param, format!("at most {max} characters")));
            }
            *field = v.to_string();
        }
    }
    Ok((!context.is_empty()).then(|| context.to_data()))
}

/// A sender outside the team is NIM's 804.
fn not_in_team(e: DomainError, ope: i64) -> NimError {
    match e {
        DomainError::NotMember { .. } if ope == 1 => NimError::new(code::NOT_IN_TEAM, "user not in team"),
        e => e.into(),
    }
}

/// `msg/sendBatchMsg`: one private message from `fromAccid` to each of `toAccids` (at most 500); accounts
/// that do not exist are listed in `unregister`.
pub async fn send_batch(st: &NimState, p: &Params) -> NimResult<Ok200> {
    let from = existing_user(st, "fromAccid", p.req("fromAccid")?).await?;
    let to = p
        .string_list("toAccids", 500)?
        .ok_or_else(|| NimError::missing("toAccids"))?;
    let nim_type = p.req_int("type")?;
    let body = body_of(p)?;
    kind_of(nim_type)?;
    let mut unregister = Vec::new();
    let mut msgids = Map::new();
    for raw in &to {
        let id = parse_accid("toAccids", raw)?;
        if st.service.get_user(&Actor::Admin, &id).await.is_err() {
            unregister.push(Value::from(raw.as_str()));
            continue;
        }
        let channel = st.service.open_direct(&Actor::Admin, &from, &id).await?.0.id;
        let msg = new_message(channel, from.clone(), nim_type, body.clone(), Vec::new())?;
        let appended = st.service.send(&Actor::Admin, msg).await?;
        msgids.insert(id.as_str().into(), Value::from(appended.message.id.0));
    }
    let mut ok = Ok200::with("unregister", Value::Array(unregister));
    if p.bool("returnMsgid")?.unwrap_or(false) {
        ok = ok.and("msgids", Value::Object(msgids));
    }
    Ok(ok)
}

/// `msg/recall`: type 7 (private) or 8 (team); the message must be `from`'s, in the conversation `to`
/// names, created at `timetag`.
pub async fn recall(st: &NimState, p: &Params) -> NimResult<Ok200> {
    let id = MessageId(p.req_int("deleteMsgid")?);
    let timetag = p.req_int("timetag")?;
    let kind = p.req_int("type")?;
    let from = parse_accid("from", p.req("from")?)?;
    let to = p.req("to")?;
    let m = st.service.get_message(&Actor::Admin, id).await?;
    let expected_channel = match kind {
        7 => NewChannel::direct_id(&from, &parse_accid("to", to)?),
        8 => ChannelId::parse(to).map_err(|e| NimError::invalid("to", e))?,
        other => return Err(NimError::invalid("type", format!("{other} is not 7 or 8"))),
    };
    if m.channel_id != expected_channel || m.sender_id.as_ref() != Some(&from) || m.created_at != timetag {
        return Err(NimError::new(code::NOT_FOUND, "no such message"));
    }
    st.service.delete_message(&Actor::Admin, id).await?;
    Ok(Ok200::empty())
}
