//! Teams (NIM's advanced groups) are group channels. A `tid` is numeric, as NIM's SDKs read it as a long:
//! new teams get a random ten-digit id. The team's `owner` is the channel's creator; `add`, `kick` and
//! `remove` must name it (802 otherwise). Join modes, invitation consent and team muting are accepted and
//! have no effect (everyone added has joined).

use confab_domain::model::Channel;
use confab_domain::{ChannelId, DomainError, UserId};
use confab_service::{Actor, NewGroup};
use rand::Rng;
use serde_json::{Value, json};

use crate::error::{NimError, NimResult, Ok200, code};
use crate::messages::team;
use crate::params::Params;
use crate::{NimState, parse_accid};

const MAX_LIST: usize = 200;

/// `tid` as NIM's SDKs expect it: a number when it is one.
pub fn tid_json(id: &ChannelId) -> Value {
    id.as_str()
        .parse::<i64>()
        .map_or_else(|_| Value::from(id.as_str()), Value::from)
}

/// Splits accids into the existing accounts and the ones that failed (NIM's `faccid`).
async fn existing(st: &NimState, name: &str, raw: Vec<String>) -> NimResult<(Vec<UserId>, Vec<String>)> {
    let (mut ok, mut failed) = (Vec::new(), Vec::new());
    for r in raw {
        let id = parse_accid(name, &r)?;
        match st.service.get_user(&Actor::Admin, &id).await {
            Ok(_) => ok.push(id),
            Err(DomainError::NotFound { .. }) => failed.push(r),
            Err(e) => return Err(e.into()),
        }
    }
    Ok((ok, failed))
}

fn faccid(failed: Vec<String>) -> Value {
    json!({"accid": failed, "msg": if failed.is_empty() { "" } else { "account not found" }})
}

/// Too many members is NIM's 801.
fn team_error(e: DomainError) -> NimError {
    match e {
        DomainError::LimitExceeded { what, .. } if what.contains("member") => {
            NimError::new(code::TEAM_MEMBERS_OVER_LIMIT, e.to_string())
        }
        e => e.into(),
    }
}

fn require_owner(t: &Channel, owner: &UserId) -> NimResult<()> {
    if t.created_by.as_ref() != Some(owner) {
        return Err(NimError::new(
            code::TEAM_NO_PERMISSION,
            "only the team owner may do this",
        ));
    }
    Ok(())
}

pub async fn create(st: &NimState, p: &Params) -> NimResult<Ok200> {
    let tname = p.req("tname")?;
    if tname.chars().count() > 64 {
        return Err(NimError::invalid("tname", "at most 64 characters"));
    }
    let owner = parse_accid("owner", p.req("owner")?)?;
    st.service.get_user(&Actor::Admin, &owner).await?;
    let members = p
        .string_list("members", MAX_LIST)?
        .ok_or_else(|| NimError::missing("members"))?;
    let (mut members, failed) = existing(st, "members", members).await?;
    members.retain(|m| m != &owner);
    let icon = p.opt("icon").unwrap_or_default().to_string();
    // Random ids collide about never; a collision is retried rather than reported.
    for _ in 0..5 {
        let tid = rand::rng().random_range(1_000_000_000u64..10_000_000_000);
        let group = NewGroup {
            id: Some(ChannelId::parse(&tid.to_string()).expect("digits are a valid id")),
            name: tname.to_string(),
            cover_url: icon.clone(),
            custom_type: String::new(),
            data: p.opt("custom").map(|c| Value::String(c.to_string())),
            members: members.clone(),
            distinct: false,
        };
        match st.service.create_group(&Actor::User(owner.clone()), group).await {
            Ok(c) => return Ok(Ok200::with("tid", tid_json(&c.id)).and("faccid", faccid(failed))),
            Err(DomainError::AlreadyExists { .. }) => continue,
            Err(e) => return Err(team_error(e)),
        }
    }
    Err(NimError::new(code::INTERNAL, "could not allocate a team id"))
}

pub async fn add(st: &NimState, p: &Params) -> NimResult<Ok200> {
    let t = team(st, p.req("tid")?).await?;
    require_owner(&t, &parse_accid("owner", p.req("owner")?)?)?;
    let members = p
        .string_list("members", MAX_LIST)?
        .ok_or_else(|| NimError::missing("members"))?;
    let (members, failed) = existing(st, "members", members).await?;
    let mut new = Vec::new();
    for m in members {
        if st.service.member(&Actor::Admin, &t.id, &m).await?.is_none() {
            new.push(m);
        }
    }
    if !new.is_empty() {
        st.service.invite(&Actor::Admin, &t.id, new).await.map_err(team_error)?;
    }
    Ok(Ok200::with("faccid", faccid(failed)))
}

pub async fn kick(st: &NimState, p: &Params) -> NimResult<Ok200> {
    let t = team(st, p.req("tid")?).await?;
    let owner = parse_accid("owner", p.req("owner")?)?;
    require_owner(&t, &owner)?;
    let members: Vec<String> = match p.opt("member") {
        Some(m) => vec![m.to_string()],
        None => p
            .string_list("members", MAX_LIST)?
            .ok_or_else(|| NimError::missing("member"))?,
    };
    for raw in members {
        let id = parse_accid("member", &raw)?;
        if id == owner {
            return Err(NimError::new(code::TEAM_NO_PERMISSION, "the owner cannot be kicked"));
        }
        if st.service.member(&Actor::Admin, &t.id, &id).await?.is_none() {
            return Err(NimError::new(code::NOT_IN_TEAM, format!("{raw} is not in the team")));
        }
        st.service.remove_member(&Actor::Admin, &t.id, &id).await?;
    }
    Ok(Ok200::empty())
}

pub async fn remove(st: &NimState, p: &Params) -> NimResult<Ok200> {
    let t = team(st, p.req("tid")?).await?;
    require_owner(&t, &parse_accid("owner", p.req("owner")?)?)?;
    st.service.delete_channel(&Actor::Admin, &t.id).await?;
    Ok(Ok200::empty())
}

/// `team/query`: `tids` a JSON array; `ope` 1 lists members. Unknown tids are left out.
pub async fn query(st: &NimState, p: &Params) -> NimResult<Ok200> {
    let tids = p
        .string_list("tids", MAX_LIST)?
        .ok_or_else(|| NimError::missing("tids"))?;
    let with_members = match p.int("ope")?.unwrap_or(0) {
        0 => false,
        1 => true,
        other => return Err(NimError::invalid("ope", format!("{other} is not 0 or 1"))),
    };
    let mut tinfos = Vec::new();
    for raw in tids {
        let t = match team(st, &raw).await {
            Ok(t) => t,
            Err(e) if e.code == code::TEAM_NOT_FOUND => continue,
            Err(e) => return Err(e),
        };
        let mut info = json!({
            "tid": tid_json(&t.id),
            "tname": t.name,
            "icon": t.cover_url,
            "owner": t.created_by.as_ref().map(UserId::as_str).unwrap_or_default(),
            "size": t.member_count,
            "maxusers": st.service.limits().max_channel_members,
            "announcement": "",
            "intro": "",
            "joinmode": 0,
            "beinvitemode": 1,
            "invitemode": 0,
            "uptinfomode": 0,
            "upcustommode": 0,
            "mute": false,
            "muteType": 0,
            "custom": match &t.data { Some(Value::String(s)) => s.clone(), _ => String::new() },
            "admins": [],
            "createtime": t.created_at,
            "updatetime": t.updated_at,
        });
        if with_members {
            let ids = st.service.lookup().member_ids(&t.id).await?;
            let owner = t.created_by.clone();
            info["members"] = Value::from(
                ids.into_iter()
                    .filter(|m| Some(m) != owner.as_ref())
                    .map(|m| m.as_str().to_string())
                    .collect::<Vec<_>>(),
            );
        }
        tinfos.push(info);
    }
    Ok(Ok200::with("tinfos", Value::Array(tinfos)))
}
