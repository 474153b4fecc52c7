use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use confab_domain::model::{HistoryQuery, HistoryRange, MessagePatch};
use confab_domain::{ChannelSeq, MessageId};
use confab_wire::{MessageDto, SendMessageBody};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::channels::{double_option, parse_channel_id};
use crate::error::{ApiResult, ProblemBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery, Auth};

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryParams {
    /// Messages with a lower sequence (older), returned oldest first.
    pub before: Option<u64>,
    /// Messages with a higher sequence (newer), returned oldest first. With `before` too: the messages
    /// between them, oldest first.
    pub after: Option<u64>,
    /// 1 to 200 (default 50).
    pub limit: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct MessageList<'a> {
    /// Ascending by `seq`.
    pub messages: Vec<MessageDto<'a>>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ThreadParams {
    /// Replies after this reply id.
    pub after: Option<i64>,
    pub limit: Option<u32>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditMessageBody {
    pub text: Option<String>,
    pub custom_type: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Object)]
    pub data: Option<Option<Value>>,
    #[schema(value_type = Object)]
    pub payload: Option<Value>,
}

/// Sends a message. With a session token the caller is the sender; with the master token, `sender_id` names
/// a member (or is absent for `admin` messages). A retry with the same `client_msg_id` returns the original
/// message with status 200.
#[utoipa::path(post, path = "/channels/{channel_id}/messages", security(("master_token" = []), ("session_token" = [])), request_body = SendMessageBody, tag = "messages",
    responses((status = 201, body = MessageDto), (status = 200, body = MessageDto, description = "retried send"),
              (status = 403, body = ProblemBody), (status = 429, body = ProblemBody)))]
pub async fn send_message(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<SendMessageBody>,
) -> ApiResult<impl IntoResponse> {
    let msg = body.into_new_message(parse_channel_id(&id)?)?;
    let appended = st.service.send(&actor, msg).await?;
    let status = if appended.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(MessageDto::from(&appended.message))).into_response())
}

#[utoipa::path(get, path = "/channels/{channel_id}/messages", security(("master_token" = []), ("session_token" = [])), params(HistoryParams), tag = "messages",
    responses((status = 200, body = MessageList)))]
pub async fn history(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiPath(id): ApiPath<String>,
    ApiQuery(p): ApiQuery<HistoryParams>,
) -> ApiResult<impl IntoResponse> {
    let range = match (p.before, p.after) {
        (Some(b), None) => HistoryRange::Before(ChannelSeq(b)),
        (None, Some(a)) | (Some(_), Some(a)) => HistoryRange::After(ChannelSeq(a)),
        (None, None) => HistoryRange::Latest,
    };
    let q = HistoryQuery {
        channel_id: parse_channel_id(&id)?,
        range,
        limit: p.limit.unwrap_or(50),
    };
    let mut msgs = st.service.history(&actor, q).await?;
    // Both bounds: the messages between them, oldest first (read after `after`, cut at `before`).
    if let (Some(before), Some(_)) = (p.before, p.after) {
        msgs.retain(|m| m.seq.0 < before);
    }
    Ok(Json(MessageList {
        messages: msgs.iter().map(MessageDto::from).collect(),
    })
    .into_response())
}

#[utoipa::path(get, path = "/messages/{message_id}", security(("master_token" = []), ("session_token" = [])), tag = "messages",
    responses((status = 200, body = MessageDto), (status = 404, body = ProblemBody)))]
pub async fn get_message(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<impl IntoResponse> {
    let m = st.service.get_message(&actor, MessageId(id)).await?;
    Ok(Json(MessageDto::from(&m)).into_response())
}

#[utoipa::path(patch, path = "/messages/{message_id}", security(("master_token" = []), ("session_token" = [])), request_body = EditMessageBody, tag = "messages",
    responses((status = 200, body = MessageDto)))]
pub async fn edit_message(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<EditMessageBody>,
) -> ApiResult<impl IntoResponse> {
    let patch = MessagePatch {
        text: body.text,
        custom_type: body.custom_type,
        data: body.data,
        payload: body.payload,
        flags: Vec::new(),
    };
    let m = st.service.edit_message(&actor, MessageId(id), patch).await?;
    Ok(Json(MessageDto::from(&m)).into_response())
}

/// Deletes the content; the message keeps its place (sequence) as a tombstone.
#[utoipa::path(delete, path = "/messages/{message_id}", security(("master_token" = []), ("session_token" = [])), tag = "messages", responses((status = 204)))]
pub async fn delete_message(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<StatusCode> {
    st.service.delete_message(&actor, MessageId(id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/messages/{message_id}/replies", security(("master_token" = []), ("session_token" = [])), params(ThreadParams), tag = "messages",
    responses((status = 200, body = MessageList)))]
pub async fn thread(
    State(st): State<AppState>,
    Auth(actor): Auth,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(p): ApiQuery<ThreadParams>,
) -> ApiResult<impl IntoResponse> {
    let msgs = st
        .service
        .thread(&actor, MessageId(id), p.after.map(MessageId), p.limit.unwrap_or(50))
        .await?;
    Ok(Json(MessageList {
        messages: msgs.iter().map(MessageDto::from).collect(),
    })
    .into_response())
}
