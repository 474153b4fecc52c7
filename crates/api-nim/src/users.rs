//! Accounts: `user/create`, `user/update`, `user/refreshToken`, `user/getUinfos`. A NIM token is a Confab
//! session token of the user (usable on the WebSocket and the native API); NIM's profile fields (`sign`,
//! `email`, `birth`, `mobile`, `gender`, `ex`) are kept in the user's metadata under those names.

use confab_domain::DomainError;
use confab_domain::model::{NewUser, User};
use confab_service::Actor;
use serde_json::{Map, Value, json};

use crate::error::{NimError, NimResult, Ok200, code};
use crate::params::Params;
use crate::{NimState, parse_accid};

const PROFILE_FIELDS: &[(&str, usize)] = &[
    ("sign", 256),
    ("email", 64),
    ("birth", 16),
    ("mobile", 32),
    ("ex", 1024),
];

fn profile(p: &Params) -> NimResult<Map<String, Value>> {
    let mut m = Map::new();
    for (name, max) in PROFILE_FIELDS {
        if let Some(v) = p.opt(name) {
            if v.chars().count() > *max {
                return Err(NimError::invalid(name, format!("at most {max} characters")));
            }
            m.insert((*name).into(), Value::from(v));
        }
    }
    if let Some(g) = p.int("gender")? {
        if !(0..=2).contains(&g) {
            return Err(NimError::invalid("gender", "must be 0, 1 or 2"));
        }
        // Metadata values are strings.
        m.insert("gender".into(), Value::from(g.to_string()));
    }
    Ok(m)
}

fn limited(p: &Params, name: &str, max: usize) -> NimResult<Option<String>> {
    match p.opt(name) {
        Some(v) if v.chars().count() > max => Err(NimError::invalid(name, format!("at most {max} characters"))),
        v => Ok(v.map(str::to_string)),
    }
}

pub async fn create(st: &NimState, p: &Params) -> NimResult<Ok200> {
    let accid = parse_accid("accid", p.req("accid")?)?;
    let name = limited(p, "name", 64)?.unwrap_or_default();
    let user = NewUser {
        id: accid.clone(),
        nickname: name.clone(),
        profile_url: limited(p, "icon", 1024)?.unwrap_or_default(),
        metadata: profile(p)?,
        is_bot: false,
    };
    let token = limited(p, "token", 128)?;
    // Checked before the account exists: a refused token must not leave an account behind.
    if let Some(t) = &token {
        st.service.check_token_for(&Actor::Admin, &accid, t).await?;
    }
    match st.service.create_user(&Actor::Admin, user).await {
        Ok(_) => {}
        Err(DomainError::AlreadyExists { .. }) => return Err(NimError::param("already register")),
        Err(e) => return Err(e.into()),
    }
    let issued = st
        .service
        .issue_session_with(&Actor::Admin, &accid, None, token.as_deref())
        .await?;
    Ok(Ok200::with(
        "info",
        json!({"token": issued.token, "accid": accid.as_str(), "name": name}),
    ))
}

/// `user/update`: a new token (the old ones stop working).
pub async fn update(st: &NimState, p: &Params) -> NimResult<Ok200> {
    let accid = parse_accid("accid", p.req("accid")?)?;
    st.service.get_user(&Actor::Admin, &accid).await?;
    if let Some(token) = limited(p, "token", 128)? {
        // Refused before the old tokens are revoked: a bad request must leave the account as it was.
        st.service.check_token_for(&Actor::Admin, &accid, &token).await?;
        st.service.revoke_sessions(&Actor::Admin, &accid).await?;
        st.service
            .issue_session_with(&Actor::Admin, &accid, None, Some(&token))
            .await?;
    }
    Ok(Ok200::empty())
}

pub async fn refresh_token(st: &NimState, p: &Params) -> NimResult<Ok200> {
    let accid = parse_accid("accid", p.req("accid")?)?;
    st.service.get_user(&Actor::Admin, &accid).await?;
    st.service.revoke_sessions(&Actor::Admin, &accid).await?;
    let issued = st.service.issue_session_with(&Actor::Admin, &accid, None, None).await?;
    Ok(Ok200::with(
        "info",
        json!({"token": issued.token, "accid": accid.as_str()}),
    ))
}

/// `user/block` (always as with `needkick=true`: the account's tokens are revoked, its open sessions close and
/// its messages are refused) and `user/unblock`.
pub async fn set_blocked(st: &NimState, p: &Params, blocked: bool) -> NimResult<Ok200> {
    let accid = parse_accid("accid", p.req("accid")?)?;
    p.bool("needkick")?;
    st.service.set_blocked(&Actor::Admin, &accid, blocked).await?;
    Ok(Ok200::empty())
}

/// NIM's user info object.
pub fn uinfo(u: &User) -> Value {
    let field = |k: &str| {
        u.metadata
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    json!({
        "accid": u.id.as_str(),
        "name": u.nickname,
        "icon": u.profile_url,
        "sign": field("sign"),
        "email": field("email"),
        "birth": field("birth"),
        "mobile": field("mobile"),
        "ex": field("ex"),
        "gender": field("gender").parse::<i64>().unwrap_or(0),
        "valid": !u.disabled,
        "mute": false,
    })
}

/// `user/getUinfos`: `accids` a JSON array of at most 200; unknown accids are left out.
pub async fn get_uinfos(st: &NimState, p: &Params) -> NimResult<Ok200> {
    let accids = p
        .string_list("accids", 200)?
        .ok_or_else(|| NimError::missing("accids"))?;
    let mut out = Vec::with_capacity(accids.len());
    for raw in &accids {
        let id = parse_accid("accids", raw)?;
        match st.service.get_user(&Actor::Admin, &id).await {
            Ok(v) => out.push(uinfo(&v.user)),
            Err(DomainError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Ok200::with("uinfos", Value::Array(out)))
}

/// A NIM "not found" for a user named by a parameter.
pub fn no_such_user(name: &str, raw: &str) -> NimError {
    NimError::new(code::NOT_FOUND, format!("{name}: no account {raw:?}"))
}
