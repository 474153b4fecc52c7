//! `/v3/group_channels/{channel_url}/messages`: send (JSON, or multipart with a `file` part), list around a
//! timestamp or a message, view, update, delete.
//!
//! Decisions where Confab has no equivalent:
//! - A sender who is not a member is refused with 400108 (UnauthorizedRequest), the code every "not a member"
//!   of this surface uses (Sendbird's 900020 is a WebSocket code).
//! - `dedup_id` is the domain's client message id: a retried send with the same sender and `dedup_id` returns
//!   the original message. Admin messages have no sender, so they are not deduplicated.
//! - `mention_type: channel`, `is_silent`, `send_push`, `mark_as_read` and `created_at` are accepted and have
//!   no effect (mentions are stored as users; the sender has always read its own message; the server sets
//!   the time). Updates cannot change mentions: `mention_type`/`mentioned_user_ids` are ignored there.

use std::collections::BTreeMap;

use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{StatusCode, header};
use confab_domain::model::{HistoryQuery, HistoryRange, Message, MessageFilter, MessageKind, MessagePatch, NewMessage};
use confab_domain::{ChannelId, ChannelSeq, FileId, MessageId, UserId, now_millis};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::SendbirdState;
use crate::channels::{csv, parse_channel_url, parse_user_ids};
use crate::dto::{self, MessageObject};
use crate::error::{Empty, ErrorCode, Reply, SendbirdError, SendbirdResult};
use crate::extract::{ApiToken, JsonBody, PathParams, QueryParams, lenient_bool, parse_bool, parse_json};

/// Sendbird's bounds for `prev_limit` and `next_limit`.
const DEFAULT_SIDE_LIMIT: u32 = 15;
const MAX_SIDE_LIMIT: u32 = 200;

/// Sendbird's message types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendbirdType {
    User,
    File,
    Admin,
}

impl SendbirdType {
    pub fn parse(raw: Option<&str>) -> SendbirdResult<Self> {
        match raw {
            None => Err(SendbirdError::missing("message_type")),
            Some("MESG") => Ok(SendbirdType::User),
            Some("FILE") => Ok(SendbirdType::File),
            Some("ADMM") => Ok(SendbirdType::Admin),
            Some(other) => Err(SendbirdError::invalid(
                "message_type",
                format!("{other:?} is not MESG, FILE or ADMM"),
            )),
        }
    }

    fn of(kind: MessageKind) -> Self {
        match kind {
            MessageKind::Text | MessageKind::Custom => SendbirdType::User,
            MessageKind::Image | MessageKind::File => SendbirdType::File,
            MessageKind::Admin => SendbirdType::Admin,
        }
    }

    fn kinds(self) -> Vec<MessageKind> {
        match self {
            SendbirdType::User => vec![MessageKind::Text, MessageKind::Custom],
            SendbirdType::File => vec![MessageKind::Image, MessageKind::File],
            SendbirdType::Admin => vec![MessageKind::Admin],
        }
    }
}

fn check_mention_type(raw: Option<&str>) -> SendbirdResult<()> {
    match raw {
        None | Some("users") | Some("channel") => Ok(()),
        Some(other) => Err(SendbirdError::invalid(
            "mention_type",
            format!("{other:?} is not users or channel"),
        )),
    }
}

/// A send request, from JSON or from a multipart form (where lists are comma-separated).
#[derive(Deserialize, Default)]
pub struct SendMessageBody {
    pub message_type: Option<String>,
    pub user_id: Option<String>,
    pub message: Option<String>,
    pub custom_type: Option<String>,
    pub data: Option<String>,
    pub mention_type: Option<String>,
    pub mentioned_user_ids: Option<Vec<String>>,
    pub dedup_id: Option<String>,
    pub parent_message_id: Option<i64>,
    /// FILE messages hosted elsewhere.
    pub url: Option<String>,
    pub file_name: Option<String>,
    pub file_size: Option<u64>,
    pub file_type: Option<String>,
    pub is_silent: Option<bool>,
    pub send_push: Option<bool>,
    pub mark_as_read: Option<bool>,
    pub created_at: Option<i64>,
}

impl SendMessageBody {
    /// The domain message, given the file uploaded with the form (if any).
    pub fn into_new_message(self, channel: ChannelId, upload: Option<FileId>) -> SendbirdResult<NewMessage> {
        let ty = SendbirdType::parse(self.message_type.as_deref())?;
        check_mention_type(self.mention_type.as_deref())?;
        let sender = match ty {
            // Admin messages come from the application, never from a user.
            SendbirdType::Admin => None,
            _ => Some(UserId::parse(
                self.user_id
                    .as_deref()
                    .ok_or_else(|| SendbirdError::missing("user_id"))?,
            )?),
        };
        let text = self.message.unwrap_or_default();
        let (kind, payload, file_id) = match ty {
            SendbirdType::User | SendbirdType::Admin => {
                if text.is_empty() {
                    return Err(SendbirdError::missing("message"));
                }
                let kind = if ty == SendbirdType::Admin {
                    MessageKind::Admin
                } else {
                    MessageKind::Text
                };
                (kind, None, None)
            }
            SendbirdType::File => match (upload, self.url.filter(|u| !u.is_empty())) {
                (Some(id), _) => (MessageKind::File, None, Some(id)),
                (None, Some(url)) => {
                    let name = self
                        .file_name
                        .unwrap_or_else(|| url.rsplit('/').next().unwrap_or_default().to_string());
                    let payload = json!({
                        "url": url,
                        "name": name,
                        "size": self.file_size.unwrap_or(0),
                        "type": self.file_type.unwrap_or_default(),
                    });
                    (MessageKind::File, Some(payload), None)
                }
                (None, None) => return Err(SendbirdError::missing("file")),
            },
        };
        let mentions = parse_user_ids(self.mentioned_user_ids.iter().flatten().map(String::as_str))?;
        Ok(NewMessage {
            channel_id: channel,
            sender_id: sender,
            kind,
            text,
            custom_type: self.custom_type.unwrap_or_default(),
            data: self.data.filter(|d| !d.is_empty()).map(Value::String),
            payload,
            mentions,
            client_msg_id: self.dedup_id.filter(|d| !d.is_empty()),
            parent_id: self.parent_message_id.filter(|&p| p > 0).map(MessageId),
            file_id,
            reply: None,
            flags: Vec::new(),
        })
    }

    /// Sets one form field. Unknown fields are ignored, as unknown JSON keys are.
    pub(crate) fn set_form_field(&mut self, name: &str, value: String) -> SendbirdResult<()> {
        let number = |v: &str| {
            v.trim()
                .parse::<i64>()
                .map_err(|_| SendbirdError::invalid(name, "not an integer"))
        };
        let boolean = |v: &str| parse_bool(v.trim()).ok_or_else(|| SendbirdError::invalid(name, "not a boolean"));
        match name {
            "message_type" => self.message_type = Some(value),
            "user_id" => self.user_id = Some(value),
            "message" => self.message = Some(value),
            "custom_type" => self.custom_type = Some(value),
            "data" => self.data = Some(value),
            "mention_type" => self.mention_type = Some(value),
            "mentioned_user_ids" => self.mentioned_user_ids = Some(csv(&value).map(String::from).collect()),
            "dedup_id" => self.dedup_id = Some(value),
            "parent_message_id" => self.parent_message_id = Some(number(&value)?),
            "url" => self.url = Some(value),
            "file_name" => self.file_name = Some(value),
            "file_size" => self.file_size = Some(number(&value)?.max(0) as u64),
            "file_type" => self.file_type = Some(value),
            "is_silent" => self.is_silent = Some(boolean(&value)?),
            "send_push" => self.send_push = Some(boolean(&value)?),
            "mark_as_read" => self.mark_as_read = Some(boolean(&value)?),
            "created_at" => self.created_at = Some(number(&value)?),
            _ => {}
        }
        Ok(())
    }
}

pub(crate) fn multipart_error(e: axum::extract::multipart::MultipartError) -> SendbirdError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return SendbirdError::Request {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: ErrorCode::ParameterValueLengthExceeded,
            message: "The request body is too large.".into(),
        };
    }
    SendbirdError::request(
        ErrorCode::InvalidValue,
        format!("Invalid multipart body: {}.", e.body_text()),
    )
}

/// Reads a multipart send: text fields into the body; the `file` part streamed into an upload for the channel.
async fn read_form(
    st: &SendbirdState,
    channel: &ChannelId,
    mut form: Multipart,
) -> SendbirdResult<(SendMessageBody, Option<FileId>)> {
    let mut body = SendMessageBody::default();
    let mut upload = None;
    while let Some(field) = form.next_field().await.map_err(multipart_error)? {
        let Some(name) = field.name().map(str::to_string) else {
            continue;
        };
        if name == "file" {
            if upload.is_some() {
                return Err(SendbirdError::invalid("file", "one file per message"));
            }
            upload = Some(upload_field(st, channel, field).await?);
        } else {
            let text = read_text_field(field, st.max_body_bytes).await?;
            body.set_form_field(&name, text)?;
        }
    }
    Ok((body, upload))
}

/// Streams a form's file part into an upload for the channel (the application uploads as itself).
pub(crate) async fn upload_field(
    st: &SendbirdState,
    channel: &ChannelId,
    field: axum::extract::multipart::Field<'_>,
) -> SendbirdResult<FileId> {
    let file_name = field.file_name().unwrap_or("file").to_string();
    let file = st
        .service
        .upload_stream(&confab_service::Actor::Admin, channel, &file_name, field)
        .await
        .map_err(|e| match e {
            confab_service::files::UploadFailed::Domain(e) => e.into(),
            confab_service::files::UploadFailed::Body(e) => multipart_error(e),
        })?;
    Ok(file.id)
}

/// A JSON body of a route whose own limit is the upload size, bounded like any JSON body.
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(req: Request, limit: usize) -> SendbirdResult<T> {
    let bytes = axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| SendbirdError::Request {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: ErrorCode::ParameterValueLengthExceeded,
            message: "The request body is too large.".into(),
        })?;
    parse_json(&bytes)
}

/// Whether a request carries a multipart form.
pub(crate) fn is_multipart(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.trim_start().to_ascii_lowercase().starts_with("multipart/form-data"))
}

/// A text field, bounded like a JSON body (the route's own limit is the upload size).
pub(crate) async fn read_text_field(
    mut field: axum::extract::multipart::Field<'_>,
    limit: usize,
) -> SendbirdResult<String> {
    let mut bytes = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        if bytes.len() + chunk.len() > limit {
            return Err(SendbirdError::Request {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                code: ErrorCode::ParameterValueLengthExceeded,
                message: "A form field is too large.".into(),
            });
        }
        bytes.extend_from_slice(&chunk);
    }
    String::from_utf8(bytes).map_err(|_| SendbirdError::invalid("form field", "not UTF-8"))
}

/// Loads a message of the channel in the path; a message of another channel is not found there.
async fn message_in(st: &SendbirdState, channel: &ChannelId, id: i64) -> SendbirdResult<Message> {
    let m = st
        .service
        .get_message(&confab_service::Actor::Admin, MessageId(id))
        .await?;
    if &m.channel_id != channel {
        return Err(confab_domain::DomainError::not_found("message", id).into());
    }
    Ok(m)
}

pub(crate) async fn render_one(st: &SendbirdState, m: &Message) -> SendbirdResult<MessageObject> {
    let users = dto::Users::of_messages(&st.service, [m]).await?;
    Ok(dto::render_message(m, &users))
}

/// Sends a message: JSON, or `multipart/form-data` for a FILE message with its `file` part. A FILE message
/// in JSON names a file hosted elsewhere by `url` (with `file_name`, `file_size`, `file_type`).
pub async fn send_message(
    State(st): State<SendbirdState>,
    auth: ApiToken,
    PathParams(url): PathParams<String>,
    req: Request,
) -> SendbirdResult<Reply<MessageObject>> {
    let channel = parse_channel_url(&url)?;
    let is_form = is_multipart(&req);
    let (body, upload) = if is_form {
        // The channel must exist before anything is stored for it.
        st.service.get_channel(&auth.actor(), &channel).await?;
        let form = Multipart::from_request(req, &st).await.map_err(|e| {
            SendbirdError::request(
                ErrorCode::InvalidValue,
                format!("Invalid multipart body: {}.", e.body_text()),
            )
        })?;
        read_form(&st, &channel, form).await?
    } else {
        (read_json(req, st.max_body_bytes).await?, None)
    };
    let msg = body.into_new_message(channel, upload)?;
    let appended = st.service.send(&auth.actor(), msg).await?;
    Ok(Reply(render_one(&st, &appended.message).await?))
}

#[derive(Deserialize)]
pub struct ListMessagesQuery {
    /// Anchor time (ms); "now" when neither anchor is given.
    pub message_ts: Option<i64>,
    /// Anchor message; 0 or less means none (the Python SDK must send one and sends 0).
    pub message_id: Option<i64>,
    pub prev_limit: Option<u32>,
    pub next_limit: Option<u32>,
    #[serde(default, deserialize_with = "lenient_bool")]
    pub include: Option<bool>,
    #[serde(default, deserialize_with = "lenient_bool")]
    pub reverse: Option<bool>,
    #[serde(default, deserialize_with = "lenient_bool")]
    pub including_removed: Option<bool>,
    /// Comma-separated; `*` is every type, an empty value only messages without one.
    pub custom_types: Option<String>,
    pub custom_type: Option<String>,
    pub sender_id: Option<String>,
    /// Comma-separated.
    pub sender_ids: Option<String>,
    /// `MESG`, `FILE` or `ADMM`.
    pub message_type: Option<String>,
}

#[derive(Serialize)]
pub struct MessageList {
    pub messages: Vec<MessageObject>,
}

fn side_limit(name: &'static str, raw: Option<u32>) -> SendbirdResult<u32> {
    match raw {
        None => Ok(DEFAULT_SIDE_LIMIT),
        Some(n) if n <= MAX_SIDE_LIMIT => Ok(n),
        Some(_) => Err(SendbirdError::invalid(name, "must be 0 to 200")),
    }
}

/// The filter a list query asks for.
pub fn list_filter(q: &ListMessagesQuery) -> SendbirdResult<MessageFilter> {
    let custom_types = match q.custom_types.as_deref().or(q.custom_type.as_deref()) {
        None => None,
        Some(raw) if csv(raw).any(|t| t == "*") => None,
        Some(raw) => {
            let list: Vec<String> = csv(raw).map(String::from).collect();
            // An empty value asks for messages without a custom type.
            Some(if list.is_empty() { vec![String::new()] } else { list })
        }
    };
    let mut senders: Vec<UserId> = Vec::new();
    if let Some(s) = q.sender_id.as_deref().filter(|s| !s.is_empty()) {
        senders.push(UserId::parse(s)?);
    }
    if let Some(list) = q.sender_ids.as_deref() {
        senders.extend(parse_user_ids(csv(list))?);
    }
    let kinds = q
        .message_type
        .as_deref()
        .filter(|t| !t.is_empty())
        .map(|t| SendbirdType::parse(Some(t)).map(SendbirdType::kinds))
        .transpose()?;
    Ok(MessageFilter {
        custom_types,
        sender_ids: (!senders.is_empty()).then_some(senders),
        kinds,
        exclude_deleted: !q.including_removed.unwrap_or(false),
    })
}

/// The anchor's place in the channel: the first and last sequence of the messages it names (one message for
/// `message_id`; those created in exactly that millisecond for `message_ts`, possibly none, then `last` is
/// `first - 1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Anchor {
    pub first: u64,
    pub last: u64,
}

impl Anchor {
    /// Up to `prev_limit` messages strictly before the anchor.
    pub fn before(self) -> HistoryRange {
        HistoryRange::Before(ChannelSeq(self.first))
    }

    /// Up to `next_limit` messages strictly after the anchor.
    pub fn after(self) -> HistoryRange {
        HistoryRange::After(ChannelSeq(self.last))
    }

    /// The anchor's own messages and how many they are, if any (returned with `include`, beside the limits).
    pub fn own(self) -> Option<(HistoryRange, u32)> {
        (self.last >= self.first).then(|| {
            let count = (self.last - self.first + 1).min(MAX_SIDE_LIMIT as u64) as u32;
            (HistoryRange::After(ChannelSeq(self.first - 1)), count)
        })
    }
}

/// Lists messages around an anchor, oldest first unless `reverse`: up to `prev_limit` strictly before it, the
/// anchor's own messages with `include` (default; not counted in the limits, as Sendbird documents
/// `prev_limit` as messages "sent by message_ts - 1"), up to `next_limit` strictly after it. Removed messages
/// are left out unless `including_removed`.
pub async fn list_messages(
    State(st): State<SendbirdState>,
    auth: ApiToken,
    PathParams(url): PathParams<String>,
    QueryParams(q): QueryParams<ListMessagesQuery>,
) -> SendbirdResult<Reply<MessageList>> {
    let actor = auth.actor();
    let channel = parse_channel_url(&url)?;
    let prev_limit = side_limit("prev_limit", q.prev_limit)?;
    let next_limit = side_limit("next_limit", q.next_limit)?;
    let include = q.include.unwrap_or(true);
    let filter = list_filter(&q)?;
    let anchor = match q.message_id.filter(|&id| id > 0) {
        Some(id) => {
            let m = message_in(&st, &channel, id).await?;
            Anchor {
                first: m.seq.0,
                last: m.seq.0,
            }
        }
        None => {
            let ts = q.message_ts.unwrap_or_else(now_millis);
            let before = st.service.seq_before_time(&actor, &channel, ts).await?;
            let through = st
                .service
                .seq_before_time(&actor, &channel, ts.saturating_add(1))
                .await?;
            Anchor {
                first: before.0 + 1,
                last: through.0,
            }
        }
    };
    let own = anchor.own().filter(|_| include);
    let mut by_seq: BTreeMap<u64, Message> = BTreeMap::new();
    for (range, limit) in [(anchor.before(), prev_limit), (anchor.after(), next_limit)]
        .into_iter()
        .chain(own)
    {
        if limit == 0 {
            continue;
        }
        let hq = HistoryQuery {
            channel_id: channel.clone(),
            range,
            limit,
        };
        for m in st.service.history_matching(&actor, hq, filter.clone()).await? {
            by_seq.insert(m.seq.0, m);
        }
    }
    let mut messages: Vec<Message> = by_seq.into_values().collect();
    if q.reverse.unwrap_or(false) {
        messages.reverse();
    }
    Ok(Reply(MessageList {
        messages: dto::render_messages(&st.service, &messages).await?,
    }))
}

pub async fn view_message(
    State(st): State<SendbirdState>,
    _auth: ApiToken,
    PathParams((url, id)): PathParams<(String, i64)>,
) -> SendbirdResult<Reply<MessageObject>> {
    let m = message_in(&st, &parse_channel_url(&url)?, id).await?;
    if m.deleted {
        // Sendbird keeps no tombstone to show: a deleted message is not found (400201).
        return Err(confab_domain::DomainError::not_found("message", id).into());
    }
    Ok(Reply(render_one(&st, &m).await?))
}

#[derive(Deserialize)]
pub struct UpdateMessageBody {
    /// Required by the SDK; must be the message's type.
    pub message_type: Option<String>,
    pub message: Option<String>,
    pub custom_type: Option<String>,
    pub data: Option<String>,
    pub mention_type: Option<String>,
    pub mentioned_user_ids: Option<Vec<String>>,
}

pub async fn update_message(
    State(st): State<SendbirdState>,
    auth: ApiToken,
    PathParams((url, id)): PathParams<(String, i64)>,
    JsonBody(body): JsonBody<UpdateMessageBody>,
) -> SendbirdResult<Reply<MessageObject>> {
    let ty = SendbirdType::parse(body.message_type.as_deref())?;
    check_mention_type(body.mention_type.as_deref())?;
    let m = message_in(&st, &parse_channel_url(&url)?, id).await?;
    if SendbirdType::of(m.kind) != ty {
        return Err(SendbirdError::invalid(
            "message_type",
            format!("the message is {}", dto::message_type(m.kind)),
        ));
    }
    let patch = MessagePatch {
        text: body.message,
        custom_type: body.custom_type,
        data: body.data.map(|d| (!d.is_empty()).then_some(Value::String(d))),
        payload: None,
        flags: Vec::new(),
    };
    // Sendbird answers an update that changes nothing with the message as it is.
    let m = if patch.is_empty() {
        m
    } else {
        st.service.edit_message(&auth.actor(), m.id, patch).await?
    };
    Ok(Reply(render_one(&st, &m).await?))
}

pub async fn delete_message(
    State(st): State<SendbirdState>,
    auth: ApiToken,
    PathParams((url, id)): PathParams<(String, i64)>,
) -> SendbirdResult<Reply<Empty>> {
    let m = message_in(&st, &parse_channel_url(&url)?, id).await?;
    st.service.delete_message(&auth.actor(), m.id).await?;
    Ok(Reply(Empty {}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &str) -> ListMessagesQuery {
        let uri: axum::http::Uri = format!("/x?{pairs}").parse().unwrap();
        axum::extract::Query::<ListMessagesQuery>::try_from_uri(&uri).unwrap().0
    }

    #[test]
    fn message_types_are_sendbirds() {
        assert_eq!(SendbirdType::parse(Some("MESG")).unwrap(), SendbirdType::User);
        assert_eq!(SendbirdType::parse(None).unwrap_err().code().code(), 400105);
        assert_eq!(SendbirdType::parse(Some("mesg")).unwrap_err().code().code(), 400111);
        assert_eq!(check_mention_type(Some("everyone")).unwrap_err().code().code(), 400111);
    }

    #[test]
    fn sends_translate_per_type() {
        let ch = ChannelId::parse("room").unwrap();
        let body = |v: Value| serde_json::from_value::<SendMessageBody>(v).unwrap();
        let m = body(
            json!({"message_type": "MESG", "user_id": "a", "message": "hi", "data": "{\"x\":1}",
                            "dedup_id": "d1", "mentioned_user_ids": ["b"]}),
        )
        .into_new_message(ch.clone(), None)
        .unwrap();
        assert_eq!((m.kind, m.text.as_str()), (MessageKind::Text, "hi"));
        assert_eq!(m.data, Some(Value::String("{\"x\":1}".into())));
        assert_eq!(m.client_msg_id.as_deref(), Some("d1"));
        assert_eq!(m.mentions, [UserId::parse("b").unwrap()]);
        let m = body(json!({"message_type": "ADMM", "user_id": "a", "message": "notice"}))
            .into_new_message(ch.clone(), None)
            .unwrap();
        assert_eq!((m.kind, m.sender_id), (MessageKind::Admin, None));
        let err = |v: Value| body(v).into_new_message(ch.clone(), None).unwrap_err().code().code();
        assert_eq!(err(json!({"message_type": "MESG", "message": "hi"})), 400105);
        assert_eq!(err(json!({"message_type": "MESG", "user_id": "a"})), 400105);
        assert_eq!(err(json!({"message_type": "FILE", "user_id": "a"})), 400105);
        assert_eq!(
            err(json!({"message_type": "BRDM", "user_id": "a", "message": "x"})),
            400111
        );
        let m = body(json!({"message_type": "FILE", "user_id": "a", "url": "https://x/y/report.pdf"}))
            .into_new_message(ch, None)
            .unwrap();
        assert_eq!(m.kind, MessageKind::File);
        assert_eq!(m.payload.unwrap()["name"], "report.pdf");
    }

    #[test]
    fn form_fields_parse_like_json() {
        let mut b = SendMessageBody::default();
        b.set_form_field("mentioned_user_ids", "a, b".into()).unwrap();
        b.set_form_field("is_silent", "True".into()).unwrap();
        b.set_form_field("file_size", "12".into()).unwrap();
        b.set_form_field("whatever", "x".into()).unwrap();
        assert_eq!(b.mentioned_user_ids.clone().unwrap(), ["a", "b"]);
        assert_eq!((b.is_silent, b.file_size), (Some(true), Some(12)));
        let e = b.set_form_field("send_push", "maybe".into()).unwrap_err();
        assert_eq!(e.code().code(), 400111);
        assert!(e.message().contains("send_push"), "{}", e.message());
    }

    #[test]
    fn list_filters_follow_sendbird() {
        let f = list_filter(&query("custom_types=*")).unwrap();
        assert_eq!(f.custom_types, None);
        assert!(f.exclude_deleted);
        let f = list_filter(&query("custom_types=")).unwrap();
        assert_eq!(f.custom_types, Some(vec![String::new()]));
        let f = list_filter(&query("custom_types=a,b&sender_ids=x,y&sender_id=z&message_type=FILE")).unwrap();
        assert_eq!(f.custom_types, Some(vec!["a".into(), "b".into()]));
        assert_eq!(f.sender_ids.unwrap().len(), 3);
        assert_eq!(f.kinds, Some(vec![MessageKind::Image, MessageKind::File]));
        let f = list_filter(&query("including_removed=True")).unwrap();
        assert!(f.is_empty());
        assert!(list_filter(&query("message_type=XXX")).is_err());
        assert_eq!(side_limit("prev_limit", Some(201)).unwrap_err().code().code(), 400111);
        assert_eq!(side_limit("prev_limit", None).unwrap(), 15);
    }

    #[test]
    fn anchors_split_history() {
        let one = Anchor { first: 5, last: 5 };
        assert_eq!(one.before(), HistoryRange::Before(ChannelSeq(5)));
        assert_eq!(one.after(), HistoryRange::After(ChannelSeq(5)));
        assert_eq!(one.own(), Some((HistoryRange::After(ChannelSeq(4)), 1)));
        // Three messages in the anchor's millisecond.
        let three = Anchor { first: 4, last: 6 };
        assert_eq!(three.own(), Some((HistoryRange::After(ChannelSeq(3)), 3)));
        assert_eq!(three.after(), HistoryRange::After(ChannelSeq(6)));
        // A timestamp between messages 3 and 4: nothing of its own.
        let gap = Anchor { first: 4, last: 3 };
        assert_eq!(gap.own(), None);
        assert_eq!(gap.before(), HistoryRange::Before(ChannelSeq(4)));
        assert_eq!(gap.after(), HistoryRange::After(ChannelSeq(3)));
        // Before the first message.
        assert_eq!(Anchor { first: 1, last: 0 }.own(), None);
    }
}
