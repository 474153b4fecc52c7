//! `history/querySessionMsg` (a private conversation, both directions) and `history/queryTeamMsg`: messages
//! created between `begintime` and `endtime` (ms), at most `limit` (1 to 100), oldest first with `reverse=1`
//! or newest first with `reverse=2` (the default), optionally only the NIM `type`s listed. Deleted
//! (recalled) messages are left out.

use confab_domain::model::{HistoryQuery, HistoryRange, Message, MessageFilter, NewChannel};
use confab_domain::{ChannelId, ChannelSeq};
use confab_service::Actor;
use serde_json::{Value, json};

use crate::error::{NimError, NimResult, Ok200, code};
use crate::messages::{kind_of, nim_view, team};
use crate::params::Params;
use crate::{NimState, parse_accid};

/// `fromclienttype` of every message: NIM's code for the server API (Confab has no client types).
const CLIENT_TYPE_REST: i64 = 32;

struct Window {
    begin: i64,
    end: i64,
    limit: u32,
    ascending: bool,
    types: Option<Vec<i64>>,
}

fn window(p: &Params) -> NimResult<Window> {
    let begin = p.req_int("begintime")?;
    let end = p.req_int("endtime")?;
    if begin >= end {
        return Err(NimError::param("bad time"));
    }
    let limit = p.req_int("limit")?;
    if !(1..=100).contains(&limit) {
        return Err(NimError::invalid("limit", "must be 1 to 100"));
    }
    let ascending = match p.int("reverse")?.unwrap_or(2) {
        1 => true,
        2 => false,
        other => return Err(NimError::invalid("reverse", format!("{other} is not 1 or 2"))),
    };
    let types = match p.opt("type") {
        None => None,
        Some(list) => Some(
            list.split(',')
                .map(|t| {
                    t.trim()
                        .parse::<i64>()
                        .map_err(|_| NimError::invalid("type", "a comma list of integers"))
                })
                .collect::<NimResult<Vec<_>>>()?,
        ),
    };
    Ok(Window {
        begin,
        end,
        limit: limit as u32,
        ascending,
        types,
    })
}

fn record(m: &Message) -> Value {
    let (nim_type, body) = nim_view(m);
    json!({
        "from": m.sender_id.as_ref().map(|s| s.as_str()).unwrap_or_default(),
        "msgid": m.id.0,
        "msgidclient": m.client_msg_id.clone().unwrap_or_default(),
        "sendtime": m.created_at,
        "type": nim_type,
        "fromclienttype": CLIENT_TYPE_REST,
        "body": body,
    })
}

async fn read(st: &NimState, channel: &ChannelId, w: Window) -> NimResult<Ok200> {
    let actor = Actor::Admin;
    // The sequence range of the time window (sequence order is creation order).
    let lo = st.service.seq_before_time(&actor, channel, w.begin).await?;
    let hi = st
        .service
        .seq_before_time(&actor, channel, w.end.saturating_add(1))
        .await?;
    let kinds = w
        .types
        .as_ref()
        .map(|types| types.iter().filter_map(|t| kind_of(*t).ok().map(|(k, _)| k)).collect());
    let filter = MessageFilter {
        kinds,
        exclude_deleted: true,
        ..MessageFilter::default()
    };
    let range = if w.ascending {
        HistoryRange::After(lo)
    } else {
        HistoryRange::Before(ChannelSeq(hi.0 + 1))
    };
    let q = HistoryQuery {
        channel_id: channel.clone(),
        range,
        limit: w.limit,
    };
    let mut msgs: Vec<Message> = st
        .service
        .history_matching(&actor, q, filter)
        .await?
        .into_iter()
        .filter(|m| m.seq > lo && m.seq <= hi)
        .filter(|m| w.types.as_ref().is_none_or(|t| t.contains(&nim_view(m).0)))
        .collect();
    if !w.ascending {
        msgs.reverse();
    }
    let records: Vec<Value> = msgs.iter().map(record).collect();
    Ok(Ok200::with("size", Value::from(records.len())).and("msgs", Value::Array(records)))
}

pub async fn session(st: &NimState, p: &Params) -> NimResult<Ok200> {
    let from = parse_accid("from", p.req("from")?)?;
    let to = parse_accid("to", p.req("to")?)?;
    let w = window(p)?;
    let channel = NewChannel::direct_id(&from, &to);
    match read(st, &channel, w).await {
        // No conversation yet: no messages.
        Err(e) if e.code == code::NOT_FOUND => Ok(Ok200::with("size", Value::from(0)).and("msgs", json!([]))),
        r => r,
    }
}

pub async fn team_history(st: &NimState, p: &Params) -> NimResult<Ok200> {
    let t = team(st, p.req("tid")?).await?;
    let accid = parse_accid("accid", p.req("accid")?)?;
    let w = window(p)?;
    if st.service.member(&Actor::Admin, &t.id, &accid).await?.is_none() {
        return Err(NimError::new(code::NOT_IN_TEAM, "user not in team"));
    }
    read(st, &t.id, w).await
}
