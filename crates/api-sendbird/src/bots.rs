//! `/v3/bots`: bots as Sendbird shows them (create, list, view, update, delete, join and leave channels, send),
//! `send_stream` (a bot message the application streams in), and `ai_chatbot_replies` (an LLM answer to a
//! conversation the application hands over).
//!
//! A Sendbird bot is a Confab bot. Our own `ai` object (`provider`, `model`, `system_prompt`, `temperature`,
//! `max_tokens`) makes it an AI bot answered by an LLM; without it, `bot_callback_url` is required and the
//! application answers (the bot runtime tells it through `bot_message_notification` callbacks, see
//! [`crate::callbacks`]). `is_privacy_mode: true` means the bot is addressed only by mentions and commands
//! (messages starting with `/`) in groups, as Sendbird documents privacy mode; `false` (Sendbird's default)
//! by every message of its channels. Attributes only Sendbird knows (`bot_type`,
//! `bot_token`, `enable_mark_as_read`, `show_member`, `channel_invitation_preference`) are kept in the
//! settings namespace `sendbird.bot`.

use std::time::Duration;

use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use confab_domain::bot::{BotSettings, BotTrigger};
use confab_domain::model::{Message, MessageKind, NewMessage, NewUser, UserPatch};
use confab_domain::{ChannelId, DomainError, MessageId, UserId};
use confab_service::Confab;
use confab_service::bots::{AnswerEvent, BotView, TurnRole};
use confab_service::replies::ReplyEnd;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::SendbirdState;
use crate::channels::{csv, parse_channel_url, parse_user_ids};
use crate::dto::{self, ChannelObject, MessageObject};
use crate::error::{Empty, ErrorCode, Reply, SendbirdError, SendbirdResult};
use crate::extract::{ApiToken, JsonBody, PathParams, QueryParams, parse_bool};
use crate::messages::{is_multipart, multipart_error, read_json, read_text_field, render_one, upload_field};

const NAMESPACE: &str = "sendbird.bot";
const DEFAULT_LIMIT: usize = 10;
const MAX_LIMIT: usize = 100;
/// The provider of an `ai` object that names none: the built-in model of a default installation.
const DEFAULT_PROVIDER: &str = "builtin";
/// Longest text a streamed bot message may reach.
const MAX_STREAM_TEXT_BYTES: usize = 64 * 1024;
/// Longest pause between two pieces of a streamed message (NIM's stream messages allow the same).
const STREAM_IDLE: Duration = Duration::from_secs(30);
/// How often a streamed message's text is saved while it streams.
const STREAM_SAVE_INTERVAL: Duration = Duration::from_millis(250);

/// What only Sendbird knows about a bot.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Extras {
    bot_type: String,
    /// Sent in each callback so the application can tell it comes from this server.
    bot_token: String,
    enable_mark_as_read: bool,
    show_member: bool,
    channel_invitation_preference: i64,
}

impl Extras {
    fn new() -> Self {
        Extras {
            bot_type: String::new(),
            bot_token: confab_service::auth::generate_token(""),
            enable_mark_as_read: true,
            show_member: false,
            channel_invitation_preference: 0,
        }
    }
}

async fn load_extras(st: &SendbirdState, id: &UserId) -> SendbirdResult<Extras> {
    load_extras_of(&st.service, id).await
}

async fn load_extras_of(service: &Confab, id: &UserId) -> SendbirdResult<Extras> {
    // Attributes that no longer read are replaced, as if absent.
    match service.settings(NAMESPACE).get::<Extras>(id.as_str()).await {
        Ok(Some(e)) => return Ok(e),
        Ok(None) | Err(DomainError::Internal(_)) => {}
        Err(e) => return Err(e.into()),
    }
    // A bot created through another surface gets its Sendbird attributes (and token) on first sight.
    let e = Extras::new();
    service.settings(NAMESPACE).put(id.as_str(), &e).await?;
    Ok(e)
}

async fn save_extras(st: &SendbirdState, id: &UserId, e: &Extras) -> SendbirdResult<()> {
    st.service.settings(NAMESPACE).put(id.as_str(), e).await?;
    Ok(())
}

/// The bot's token and whether callbacks list members, for [`crate::callbacks`].
pub(crate) async fn callback_attributes(service: &Confab, id: &UserId) -> SendbirdResult<(String, bool)> {
    let e = load_extras_of(service, id).await?;
    Ok((e.bot_token, e.show_member))
}

/// Our LLM settings of a bot, in and out.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AiObject {
    pub provider: Option<String>,
    pub model: Option<String>,
    pub system_prompt: Option<String>,
    pub temperature: Option<f32>,
    pub max_tokens: Option<u32>,
}

impl AiObject {
    fn of(s: &BotSettings) -> Option<AiObject> {
        s.answers_with_llm().then(|| AiObject {
            provider: Some(s.provider.clone()),
            model: Some(s.model.clone()),
            system_prompt: Some(s.system_prompt.clone()),
            temperature: s.temperature,
            max_tokens: Some(s.max_output_tokens),
        })
    }

    fn apply(self, s: &mut BotSettings) {
        s.provider = self
            .provider
            .filter(|p| !p.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_PROVIDER.into());
        if let Some(m) = self.model {
            s.model = m;
        }
        if let Some(p) = self.system_prompt {
            s.system_prompt = p;
        }
        if self.temperature.is_some() {
            s.temperature = self.temperature;
        }
        if let Some(t) = self.max_tokens {
            s.max_output_tokens = t;
        }
    }
}

#[derive(Serialize)]
pub struct BotInfo {
    bot_userid: String,
    bot_nickname: String,
    bot_profile_url: String,
    bot_type: String,
    bot_token: String,
    bot_metadata: Map<String, Value>,
    bot_require_auth_for_profile_image: bool,
}

#[derive(Serialize)]
pub struct BotObject {
    bot: BotInfo,
    bot_callback_url: String,
    is_privacy_mode: bool,
    enable_mark_as_read: bool,
    show_member: bool,
    channel_invitation_preference: i64,
    created_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    ai: Option<AiObject>,
}

fn render_bot(v: BotView, e: Extras) -> BotObject {
    let s = &v.bot.settings;
    BotObject {
        bot: BotInfo {
            bot_userid: v.user.user.id.as_str().to_string(),
            bot_nickname: v.user.user.nickname.clone(),
            bot_profile_url: v.user.user.profile_url.clone(),
            bot_type: e.bot_type,
            bot_token: e.bot_token,
            bot_metadata: v.user.user.metadata.clone(),
            bot_require_auth_for_profile_image: false,
        },
        bot_callback_url: s.callback_url.clone(),
        is_privacy_mode: s.trigger != BotTrigger::AllMessages,
        enable_mark_as_read: e.enable_mark_as_read,
        show_member: e.show_member,
        channel_invitation_preference: e.channel_invitation_preference,
        created_at: v.bot.created_at,
        ai: AiObject::of(s),
    }
}

fn parse_bot_id(raw: &str) -> SendbirdResult<UserId> {
    Ok(UserId::parse(raw)?)
}

/// A callback URL must be one the egress policy lets the server reach.
fn check_callback_url(st: &SendbirdState, url: &str) -> SendbirdResult<()> {
    st.webhooks
        .policy()
        .check_url(url)
        .map(|_| ())
        .map_err(|e| SendbirdError::invalid("bot_callback_url", e))
}

/// The fields of a bot that create and update both take (all optional on update, as the docs say, although
/// the Python SDK sends all of them).
#[derive(Deserialize)]
pub struct BotFields {
    bot_nickname: Option<String>,
    bot_profile_url: Option<String>,
    bot_type: Option<String>,
    bot_callback_url: Option<String>,
    is_privacy_mode: Option<bool>,
    enable_mark_as_read: Option<bool>,
    show_member: Option<bool>,
    channel_invitation_preference: Option<i64>,
    bot_metadata: Option<Map<String, Value>>,
    ai: Option<AiObject>,
}

#[derive(Deserialize)]
pub struct CreateBotBody {
    bot_userid: Option<String>,
    #[serde(flatten)]
    fields: BotFields,
}

pub async fn create_bot(
    State(st): State<SendbirdState>,
    auth: ApiToken,
    JsonBody(body): JsonBody<CreateBotBody>,
) -> SendbirdResult<Reply<BotObject>> {
    let raw_id = body.bot_userid.ok_or_else(|| SendbirdError::missing("bot_userid"))?;
    let b = body.fields;
    let id = parse_bot_id(&raw_id)?;
    let callback = b.bot_callback_url.unwrap_or_default().trim().to_string();
    if b.ai.is_none() && callback.is_empty() {
        return Err(SendbirdError::missing("bot_callback_url"));
    }
    if !callback.is_empty() {
        check_callback_url(&st, &callback)?;
    }
    let mut settings = BotSettings {
        provider: String::new(),
        callback_url: callback,
        trigger: if b.is_privacy_mode.unwrap_or(false) {
            BotTrigger::MentionsAndCommands
        } else {
            BotTrigger::AllMessages
        },
        ..BotSettings::default()
    };
    if let Some(ai) = b.ai {
        ai.apply(&mut settings);
    }
    let user = NewUser {
        nickname: b.bot_nickname.unwrap_or_else(|| raw_id.clone()),
        profile_url: b.bot_profile_url.unwrap_or_default(),
        metadata: b.bot_metadata.unwrap_or_default(),
        id: id.clone(),
        is_bot: true,
    };
    let view = st.service.create_bot(&auth.actor(), user, settings).await?;
    let mut extras = Extras::new();
    extras.bot_type = b.bot_type.unwrap_or_default();
    extras.enable_mark_as_read = b.enable_mark_as_read.unwrap_or(true);
    extras.show_member = b.show_member.unwrap_or(false);
    extras.channel_invitation_preference = b.channel_invitation_preference.unwrap_or(0);
    save_extras(&st, &id, &extras).await?;
    Ok(Reply(render_bot(view, extras)))
}

#[derive(Deserialize)]
pub struct ListQuery {
    token: Option<String>,
    limit: Option<usize>,
}

#[derive(Serialize)]
pub struct BotList {
    bots: Vec<BotObject>,
    next: String,
}

pub async fn list_bots(
    State(st): State<SendbirdState>,
    auth: ApiToken,
    QueryParams(q): QueryParams<ListQuery>,
) -> SendbirdResult<Reply<BotList>> {
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(SendbirdError::invalid("limit", format!("must be 1 to {MAX_LIMIT}")));
    }
    let after = match q.token.as_deref().filter(|t| !t.is_empty()) {
        Some(t) => Some(crate::users::parse_page_token(t)?),
        None => None,
    };
    let mut all = st.service.list_bots(&auth.actor()).await?;
    all.sort_by(|a, b| a.bot.id.cmp(&b.bot.id));
    let page: Vec<BotView> = all
        .into_iter()
        .filter(|v| after.as_ref().is_none_or(|a| &v.bot.id > a))
        .take(limit + 1)
        .collect();
    let more = page.len() > limit;
    let mut bots = Vec::with_capacity(limit);
    for v in page.into_iter().take(limit) {
        let e = load_extras(&st, &v.bot.id).await?;
        bots.push(render_bot(v, e));
    }
    let next = match (more, bots.last()) {
        (true, Some(last)) => crate::users::page_token(&parse_bot_id(&last.bot.bot_userid)?),
        _ => String::new(),
    };
    Ok(Reply(BotList { bots, next }))
}

pub async fn view_bot(
    State(st): State<SendbirdState>,
    auth: ApiToken,
    PathParams(id): PathParams<String>,
) -> SendbirdResult<Reply<BotObject>> {
    let id = parse_bot_id(&id)?;
    let view = st.service.get_bot(&auth.actor(), &id).await?;
    let e = load_extras(&st, &id).await?;
    Ok(Reply(render_bot(view, e)))
}

pub async fn update_bot(
    State(st): State<SendbirdState>,
    auth: ApiToken,
    PathParams(id): PathParams<String>,
    JsonBody(b): JsonBody<BotFields>,
) -> SendbirdResult<Reply<BotObject>> {
    let id = parse_bot_id(&id)?;
    let current = st.service.get_bot(&auth.actor(), &id).await?;
    let mut settings = current.bot.settings.clone();
    if let Some(url) = b.bot_callback_url {
        let url = url.trim().to_string();
        if !url.is_empty() {
            check_callback_url(&st, &url)?;
        }
        settings.callback_url = url;
    }
    if let Some(private) = b.is_privacy_mode {
        settings.trigger = if private {
            BotTrigger::MentionsAndCommands
        } else {
            BotTrigger::AllMessages
        };
    }
    if let Some(ai) = b.ai {
        ai.apply(&mut settings);
    }
    let profile = UserPatch {
        nickname: b.bot_nickname,
        profile_url: b.bot_profile_url,
        metadata: b.bot_metadata,
        disabled: None,
    };
    let changed = (settings != current.bot.settings).then_some(settings);
    let view = st.service.update_bot(&auth.actor(), &id, changed, profile).await?;
    let mut e = load_extras(&st, &id).await?;
    if let Some(v) = b.bot_type {
        e.bot_type = v;
    }
    if let Some(v) = b.enable_mark_as_read {
        e.enable_mark_as_read = v;
    }
    if let Some(v) = b.show_member {
        e.show_member = v;
    }
    if let Some(v) = b.channel_invitation_preference {
        e.channel_invitation_preference = v;
    }
    save_extras(&st, &id, &e).await?;
    Ok(Reply(render_bot(view, e)))
}

pub async fn delete_bot(
    State(st): State<SendbirdState>,
    auth: ApiToken,
    PathParams(id): PathParams<String>,
) -> SendbirdResult<Reply<Empty>> {
    let id = parse_bot_id(&id)?;
    st.service.delete_bot(&auth.actor(), &id).await?;
    st.service.settings(NAMESPACE).delete(id.as_str()).await?;
    Ok(Reply(Empty {}))
}

#[derive(Deserialize)]
pub struct JoinBody {
    channel_urls: Option<Vec<String>>,
}

/// Makes the bot a member of each channel; answers the last channel (the SDK expects a channel object).
pub async fn join_channels(
    State(st): State<SendbirdState>,
    auth: ApiToken,
    PathParams(id): PathParams<String>,
    JsonBody(b): JsonBody<JoinBody>,
) -> SendbirdResult<Reply<ChannelObject>> {
    let id = parse_bot_id(&id)?;
    st.service.get_bot(&auth.actor(), &id).await?;
    let urls = b.channel_urls.ok_or_else(|| SendbirdError::missing("channel_urls"))?;
    if urls.is_empty() {
        return Err(SendbirdError::invalid("channel_urls", "must name at least one channel"));
    }
    let mut last = None;
    for url in &urls {
        let channel = parse_channel_url(url)?;
        let joined = match st.service.member(&auth.actor(), &channel, &id).await? {
            Some(_) => st.service.get_channel(&auth.actor(), &channel).await?.channel,
            None => st.service.invite(&auth.actor(), &channel, vec![id.clone()]).await?,
        };
        last = Some(joined);
    }
    let channel = last.expect("at least one channel");
    Ok(Reply(dto::render_channel(&st.service, channel, true).await?))
}

pub async fn leave_channel(
    State(st): State<SendbirdState>,
    auth: ApiToken,
    PathParams((id, url)): PathParams<(String, String)>,
) -> SendbirdResult<Reply<Empty>> {
    let id = parse_bot_id(&id)?;
    st.service.get_bot(&auth.actor(), &id).await?;
    let channel = parse_channel_url(&url)?;
    st.service.remove_member(&auth.actor(), &channel, &id).await?;
    Ok(Reply(Empty {}))
}

pub async fn leave_all_channels(
    State(st): State<SendbirdState>,
    auth: ApiToken,
    PathParams(id): PathParams<String>,
) -> SendbirdResult<Reply<Empty>> {
    let id = parse_bot_id(&id)?;
    st.service.get_bot(&auth.actor(), &id).await?;
    loop {
        let page = st.service.list_channels(&auth.actor(), Some(&id), None, 100).await?;
        if page.is_empty() {
            break;
        }
        for c in page {
            st.service.remove_member(&auth.actor(), &c.channel.id, &id).await?;
        }
    }
    Ok(Reply(Empty {}))
}

/// A bot send, from JSON or a form (lists comma-separated in forms).
#[derive(Deserialize, Default)]
pub struct BotSendBody {
    message: Option<String>,
    channel_url: Option<String>,
    message_type: Option<String>,
    custom_type: Option<String>,
    data: Option<String>,
    mentioned: Option<Vec<String>>,
    mentioned_user_ids: Option<Vec<String>>,
    dedup_id: Option<String>,
    /// The user message this answers (accepted; bot messages sent this way are complete at once).
    target_message_id: Option<i64>,
}

impl BotSendBody {
    fn set_form_field(&mut self, name: &str, value: String) -> SendbirdResult<()> {
        let list = |v: &str| Some(csv(v).map(String::from).collect::<Vec<_>>());
        match name {
            "message" => self.message = Some(value),
            "channel_url" => self.channel_url = Some(value),
            "message_type" => self.message_type = Some(value),
            "custom_type" => self.custom_type = Some(value),
            "data" => self.data = Some(value),
            "mentioned" => self.mentioned = list(&value),
            "mentioned_user_ids" => self.mentioned_user_ids = list(&value),
            "dedup_id" => self.dedup_id = Some(value),
            "target_message_id" => {
                self.target_message_id = Some(
                    value
                        .trim()
                        .parse()
                        .map_err(|_| SendbirdError::invalid("target_message_id", "not an integer"))?,
                )
            }
            _ => {} // unknown fields are ignored, as unknown JSON keys are
        }
        Ok(())
    }

    fn channel(&self) -> SendbirdResult<ChannelId> {
        parse_channel_url(
            self.channel_url
                .as_deref()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| SendbirdError::missing("channel_url"))?,
        )
    }
}

#[derive(Serialize)]
pub struct BotSent {
    message: MessageObject,
}

/// `POST /v3/bots/{id}/send`: JSON or multipart (the Python SDK sends multipart). A FILE message carries a
/// `file` part after its `channel_url`. The bot must be a member of the channel (400108 otherwise).
pub async fn send(
    State(st): State<SendbirdState>,
    auth: ApiToken,
    PathParams(id): PathParams<String>,
    req: Request,
) -> SendbirdResult<Reply<BotSent>> {
    let bot = parse_bot_id(&id)?;
    st.service.get_bot(&auth.actor(), &bot).await?;
    let (body, upload) = if is_multipart(&req) {
        let mut form = Multipart::from_request(req, &st)
            .await
            .map_err(|e| SendbirdError::invalid("body", format!("invalid multipart body: {}", e.body_text())))?;
        let mut body = BotSendBody::default();
        let mut upload = None;
        while let Some(field) = form.next_field().await.map_err(multipart_error)? {
            match field.name().map(str::to_string) {
                Some(name) if name == "file" => {
                    let channel = body.channel()?;
                    st.service.member(&auth.actor(), &channel, &bot).await?.ok_or_else(|| {
                        SendbirdError::from(DomainError::NotMember {
                            user: bot.as_str().into(),
                            channel: channel.as_str().into(),
                        })
                    })?;
                    upload = Some(upload_field(&st, &channel, field).await?);
                }
                Some(name) => {
                    let text = read_text_field(field, st.max_body_bytes).await?;
                    body.set_form_field(&name, text)?;
                }
                None => {}
            }
        }
        (body, upload)
    } else {
        (read_json::<BotSendBody>(req, st.max_body_bytes).await?, None)
    };
    let channel = body.channel()?;
    let kind = match body.message_type.as_deref().unwrap_or("MESG") {
        "MESG" => MessageKind::Text,
        "FILE" if upload.is_some() => MessageKind::File,
        "FILE" => return Err(SendbirdError::missing("file")),
        other => {
            return Err(SendbirdError::invalid(
                "message_type",
                format!("{other:?} is not MESG or FILE"),
            ));
        }
    };
    let text = body.message.clone().unwrap_or_default();
    if kind == MessageKind::Text && text.is_empty() {
        return Err(SendbirdError::missing("message"));
    }
    let mentioned = body.mentioned.iter().chain(body.mentioned_user_ids.iter()).flatten();
    let mut mentions = parse_user_ids(mentioned.map(String::as_str))?;
    mentions.dedup();
    let msg = NewMessage {
        channel_id: channel,
        sender_id: Some(bot),
        kind,
        text,
        custom_type: body.custom_type.unwrap_or_default(),
        data: body.data.filter(|d| !d.is_empty()).map(Value::String),
        payload: None,
        mentions,
        client_msg_id: body.dedup_id.filter(|d| !d.is_empty()),
        parent_id: None,
        file_id: upload,
        reply: None,
        flags: Vec::new(),
    };
    let appended = st.service.send(&auth.actor(), msg).await?;
    Ok(Reply(BotSent {
        message: render_one(&st, &appended.message).await?,
    }))
}

/// The first object of a `send_stream` body.
#[derive(Deserialize)]
struct StreamStart {
    message: Option<String>,
    channel_url: Option<String>,
    /// A string in Sendbird's example, a number elsewhere: both are read.
    target_message_id: Option<Value>,
}

#[derive(Deserialize)]
struct StreamDelta {
    message_delta: Option<String>,
}

/// Splits a byte stream of concatenated JSON values (no delimiters, values cut anywhere by chunking) into
/// values as they complete.
#[derive(Default)]
pub struct JsonSplitter {
    buf: Vec<u8>,
}

impl JsonSplitter {
    /// Adds bytes; returns the values completed by them. `max` bounds the bytes one unfinished value may
    /// hold.
    pub fn push(&mut self, bytes: &[u8], max: usize) -> Result<Vec<Value>, String> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut used = 0;
        loop {
            let rest = &self.buf[used..];
            let start = rest.iter().position(|b| !is_json_space(*b)).unwrap_or(rest.len());
            if start == rest.len() {
                used = self.buf.len();
                break;
            }
            let mut values = serde_json::Deserializer::from_slice(&rest[start..]).into_iter::<Value>();
            match values.next() {
                Some(Ok(v)) => {
                    let end = start + values.byte_offset();
                    // A number or literal running to the end of the bytes so far is only complete with the
                    // byte after it (`12` cut as `1`, `2`; `null8` is refused whole): it waits for that byte.
                    let delimited = v.is_object() || v.is_array() || v.is_string();
                    if !delimited && used + end == self.buf.len() {
                        used += start;
                        break;
                    }
                    used += end;
                    out.push(v);
                }
                Some(Err(e)) if e.is_eof() => {
                    used += start;
                    break;
                }
                Some(Err(e)) => return Err(e.to_string()),
                None => {
                    used = self.buf.len();
                    break;
                }
            }
        }
        self.buf.drain(..used);
        if self.buf.len() > max {
            return Err(format!("a JSON object of the stream exceeds {max} bytes"));
        }
        Ok(out)
    }

    /// Whether bytes of an unfinished value are left (the body ended mid-object).
    pub fn has_partial(&self) -> bool {
        self.buf.iter().any(|b| !is_json_space(*b))
    }
}

/// JSON's whitespace (not ASCII's, which has the form feed too: skipping one after a value at a chunk's end
/// accepted what the same bytes in one chunk refuse).
fn is_json_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

#[derive(Serialize)]
pub struct StreamedReply {
    message: MessageObject,
}

/// `POST /v3/bots/{id}/send_stream`: the body is a stream of JSON objects (`{message, channel_url,
/// target_message_id?}`, then `{message_delta}`...). Members see one bot message that streams: created at
/// the first object, each delta relayed at once, `complete` at the end of the body; `interrupted` (and a
/// Sendbird error) when the body breaks off, ends mid-object or carries something else.
pub async fn send_stream(
    State(st): State<SendbirdState>,
    auth: ApiToken,
    PathParams(id): PathParams<String>,
    req: Request,
) -> SendbirdResult<Reply<StreamedReply>> {
    let bot = parse_bot_id(&id)?;
    st.service.get_bot(&auth.actor(), &bot).await?;
    let mut body = req.into_body().into_data_stream();
    let mut splitter = JsonSplitter::default();
    let max = st.max_body_bytes;
    // Up to the first object: nothing is stored before it is complete and valid.
    let mut pending: std::collections::VecDeque<Value> = Default::default();
    while pending.is_empty() {
        match body.next().await {
            Some(Ok(chunk)) => pending.extend(
                splitter
                    .push(&chunk, max)
                    .map_err(|e| SendbirdError::request(ErrorCode::InvalidJsonBody, format!("Invalid stream: {e}.")))?,
            ),
            Some(Err(_)) => return Err(SendbirdError::invalid("body", "the request body broke off")),
            None => return Err(SendbirdError::missing("message")),
        }
    }
    let first = pending.pop_front().expect("not empty");
    let start: StreamStart = serde_json::from_value(first)
        .map_err(|e| SendbirdError::request(ErrorCode::InvalidJsonBody, format!("Invalid stream: {e}.")))?;
    let channel = parse_channel_url(
        start
            .channel_url
            .as_deref()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| SendbirdError::missing("channel_url"))?,
    )?;
    let answers = match &start.target_message_id {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(
            s.parse::<i64>()
                .map_err(|_| SendbirdError::invalid("target_message_id", "not a message id"))?,
        ),
        Some(_) => return Err(SendbirdError::invalid("target_message_id", "not a message id")),
    }
    .filter(|&id| id > 0)
    .map(MessageId);
    let message = st
        .service
        .begin_bot_stream(&auth.actor(), &bot, &channel, answers)
        .await?;
    let first = start.message.unwrap_or_default();
    // Owned by a task of its own: if the client goes away mid-upload, the task still sees the body end and
    // finishes the message (`interrupted`), so no streamed message is left generating.
    let task = tokio::spawn(relay_stream(st.clone(), message, body, splitter, pending, first));
    match task.await {
        Ok(result) => result,
        Err(e) => {
            tracing::error!(error = %e, "the send_stream task failed");
            Err(SendbirdError::request(
                ErrorCode::InternalError,
                "Internal server error.",
            ))
        }
    }
}

/// Relays the rest of a `send_stream` body into `message` and finishes it in its one final state.
async fn relay_stream(
    st: SendbirdState,
    message: Message,
    mut body: axum::body::BodyDataStream,
    mut splitter: JsonSplitter,
    mut pending: std::collections::VecDeque<Value>,
    mut first: String,
) -> SendbirdResult<Reply<StreamedReply>> {
    let max = st.max_body_bytes;
    let mut writer = st.service.reply_writer(&message, STREAM_SAVE_INTERVAL);
    let failure: Option<SendbirdError> = 'relay: loop {
        // The first object's text, on the first round. A piece the content policy blocks ends the upload:
        // nothing more is read or relayed.
        if let Err(blocked) = writer.push(&std::mem::take(&mut first)).await {
            break Some(DomainError::from(blocked).into());
        }
        for v in pending.drain(..) {
            let Ok(StreamDelta { message_delta: Some(d) }) = serde_json::from_value::<StreamDelta>(v) else {
                break 'relay Some(SendbirdError::request(
                    ErrorCode::InvalidJsonBody,
                    "Invalid stream: every object after the first must be {\"message_delta\": \"...\"}.",
                ));
            };
            if writer.received_len() + d.len() > MAX_STREAM_TEXT_BYTES {
                break 'relay Some(SendbirdError::request(
                    ErrorCode::ParameterValueLengthExceeded,
                    format!("The streamed message exceeds {MAX_STREAM_TEXT_BYTES} bytes."),
                ));
            }
            if let Err(blocked) = writer.push(&d).await {
                break 'relay Some(DomainError::from(blocked).into());
            }
        }
        match tokio::time::timeout(STREAM_IDLE, body.next()).await {
            Ok(Some(Ok(chunk))) => match splitter.push(&chunk, max) {
                Ok(values) => pending.extend(values),
                Err(e) => {
                    break Some(SendbirdError::request(
                        ErrorCode::InvalidJsonBody,
                        format!("Invalid stream: {e}."),
                    ));
                }
            },
            Ok(Some(Err(_))) => break Some(SendbirdError::invalid("body", "the request body broke off")),
            Ok(None) if splitter.has_partial() => {
                break Some(SendbirdError::request(
                    ErrorCode::InvalidJsonBody,
                    "Invalid stream: the body ended inside an object.",
                ));
            }
            Ok(None) => break None,
            Err(_) => {
                break Some(SendbirdError::invalid(
                    "body",
                    format!("nothing arrived for {} s", STREAM_IDLE.as_secs()),
                ));
            }
        }
    };
    // The message ends in one final state: `complete`, or `interrupted` with the failure, which is also the
    // answer; `failed` when the content policy blocked it (`finish` then answers the rejection).
    let end = match &failure {
        None => ReplyEnd::Complete,
        Some(e) => ReplyEnd::Interrupted(e.message().into_owned()),
    };
    let done = writer.finish(end, None).await?;
    match (failure, done.end) {
        (Some(e), _) => Err(e),
        (None, ReplyEnd::Blocked(b)) => Err(DomainError::from(b).into()),
        (None, _) => Ok(Reply(StreamedReply {
            message: render_one(&st, &done.message).await?,
        })),
    }
}

#[derive(Deserialize)]
pub struct AiRepliesBody {
    messages: Option<Value>,
    use_streaming_response: Option<Value>,
}

#[derive(Serialize)]
struct ReplyMessages {
    reply_messages: Vec<String>,
}

/// Reads `messages`: a non-empty array of `{role: user|assistant, content: string}`, chronological.
fn parse_turns(raw: Option<Value>) -> SendbirdResult<Vec<(TurnRole, String)>> {
    let Some(raw) = raw.filter(|v| !v.is_null()) else {
        return Err(SendbirdError::missing("messages"));
    };
    let Value::Array(items) = raw else {
        return Err(SendbirdError::invalid(
            "messages",
            "must be an array of {role, content}",
        ));
    };
    if items.is_empty() {
        return Err(SendbirdError::invalid("messages", "must not be empty"));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let role = match item.get("role").and_then(Value::as_str) {
                Some("user") => TurnRole::User,
                Some("assistant") => TurnRole::Assistant,
                Some(other) => {
                    return Err(SendbirdError::invalid(
                        &format!("messages[{i}].role"),
                        format!("{other:?} is not user or assistant"),
                    ));
                }
                None => return Err(SendbirdError::missing(&format!("messages[{i}].role"))),
            };
            match item.get("content") {
                Some(Value::String(c)) => Ok((role, c.clone())),
                None | Some(Value::Null) => Err(SendbirdError::missing(&format!("messages[{i}].content"))),
                Some(_) => Err(SendbirdError::invalid(
                    &format!("messages[{i}].content"),
                    "must be a string",
                )),
            }
        })
        .collect()
}

fn answer_error(busy: bool, message: &str) -> SendbirdError {
    if busy {
        SendbirdError::request(ErrorCode::RateLimitExceeded, format!("The bot is busy: {message}"))
    } else {
        SendbirdError::request(ErrorCode::InternalError, format!("The bot could not answer: {message}"))
    }
}

/// An answer the content policy blocked: Sendbird's content-blocked error with the rule's reason.
fn rejected(rule: &str, reason: &str) -> SendbirdError {
    DomainError::Rejected {
        rule: rule.into(),
        reason: reason.into(),
    }
    .into()
}

fn error_event(e: &SendbirdError) -> SseEvent {
    SseEvent::default()
        .event("error")
        .data(json!({"error": true, "code": e.code().code(), "message": e.message()}).to_string())
}

/// `POST /v3/bots/{bot_user_id}/ai_chatbot_replies`, as Sendbird documents it: one JSON object
/// `{"reply_messages": ["..."]}` whatever `use_streaming_response` says (every public caller reads it so);
/// a caller that asks for `text/event-stream` with streaming on gets the text as it is generated, as SSE
/// `{"message_delta"}` events, then the same final object.
pub async fn ai_chatbot_replies(
    State(st): State<SendbirdState>,
    auth: ApiToken,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    JsonBody(b): JsonBody<AiRepliesBody>,
) -> SendbirdResult<Response> {
    let bot = parse_bot_id(&id)?;
    let streaming = match b.use_streaming_response {
        None | Some(Value::Null) => true,
        Some(Value::Bool(v)) => v,
        Some(Value::String(s)) => {
            parse_bool(&s).ok_or_else(|| SendbirdError::invalid("use_streaming_response", "not a boolean"))?
        }
        Some(_) => return Err(SendbirdError::invalid("use_streaming_response", "not a boolean")),
    };
    let turns = parse_turns(b.messages)?;
    let mut rx = st.service.answer_as_bot(&auth.actor(), &bot, turns).await?;
    let wants_sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/event-stream"));
    // The first event decides the status: an answer that fails before any text is an error response.
    let first = rx.recv().await;
    match &first {
        Some(AnswerEvent::Failed { busy, message }) => return Err(answer_error(*busy, message)),
        Some(AnswerEvent::Rejected { rule, reason }) => return Err(rejected(rule, reason)),
        _ => {}
    }
    if streaming && wants_sse {
        let events = futures_util::stream::unfold(
            (first, rx, String::new(), false),
            |(next, mut rx, mut text, done)| async move {
                if done {
                    return None;
                }
                let event = match next {
                    Some(AnswerEvent::Delta(d)) => {
                        text.push_str(&d);
                        let ev = SseEvent::default().data(json!({"message_delta": d}).to_string());
                        let next = rx.recv().await;
                        return Some((Ok::<_, std::convert::Infallible>(ev), (next, rx, text, false)));
                    }
                    Some(AnswerEvent::Failed { busy, message }) => error_event(&answer_error(busy, &message)),
                    Some(AnswerEvent::Rejected { rule, reason }) => error_event(&rejected(&rule, &reason)),
                    None => SseEvent::default().data(json!({"reply_messages": [text.clone()]}).to_string()),
                };
                Some((Ok(event), (None, rx, text, true)))
            },
        );
        return Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response());
    }
    let mut text = String::new();
    let mut next = first;
    loop {
        match next {
            Some(AnswerEvent::Delta(d)) => text.push_str(&d),
            Some(AnswerEvent::Failed { busy, message }) => return Err(answer_error(busy, &message)),
            // The text before the blocked part is not returned either: the answer is refused whole.
            Some(AnswerEvent::Rejected { rule, reason }) => return Err(rejected(&rule, &reason)),
            None => break,
        }
        next = rx.recv().await;
    }
    Ok(Reply(ReplyMessages {
        reply_messages: vec![text],
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concatenated_json_is_split_wherever_the_chunks_cut_it() {
        let body =
            br#"{"message": "Hel", "channel_url": "c1"}{"message_delta": "lo, "}  {"message_delta": "w\u00f6rld {}"}"#;
        for cut in 1..body.len() {
            let mut s = JsonSplitter::default();
            let mut values = s.push(&body[..cut], 1024).unwrap();
            values.extend(s.push(&body[cut..], 1024).unwrap());
            assert_eq!(values.len(), 3, "cut at {cut}");
            assert_eq!(values[2]["message_delta"], "wörld {}");
            assert!(!s.has_partial());
        }
        let mut s = JsonSplitter::default();
        assert!(s.push(br#"{"message_delta": "x"#, 1024).unwrap().is_empty());
        assert!(s.has_partial());
        assert!(JsonSplitter::default().push(b"{]", 1024).is_err());
        assert!(JsonSplitter::default().push(&[b'['; 100], 10).is_err());
    }

    #[test]
    fn numbers_and_literals_split_the_same_wherever_the_chunks_cut() {
        // Found by fuzzing (sendbird_send_stream): a number at the end of a chunk was taken as complete.
        let mut s = JsonSplitter::default();
        assert!(s.push(b"11", 1024).unwrap().is_empty());
        assert!(s.has_partial());
        assert_eq!(s.push(b"1 {}", 1024).unwrap(), vec![json!(111), json!({})]);
        assert!(!s.has_partial());
        let mut s = JsonSplitter::default();
        assert!(s.push(b"[1] 2", 1024).unwrap() == vec![json!([1])] && s.has_partial());
        // A form feed is not JSON whitespace, wherever the chunks cut.
        assert!(JsonSplitter::default().push(b"null\x0c{}", 1024).is_err());
        let mut s = JsonSplitter::default();
        assert!(s.push(b"null", 1024).unwrap().is_empty());
        assert!(s.push(b"\x0c{}", 1024).is_err());
        // A literal is only complete with the byte after it.
        assert!(JsonSplitter::default().push(b"null8{}", 1024).is_err());
        let mut s = JsonSplitter::default();
        assert!(s.push(b"\"s\" true", 1024).unwrap() == vec![json!("s")] && s.has_partial());
        assert!(s.push(b"8", 1024).is_err());
    }

    #[test]
    fn turns_need_roles_and_string_content() {
        let ok = parse_turns(Some(
            json!([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]),
        ))
        .unwrap();
        assert_eq!(
            ok,
            vec![(TurnRole::User, "Hi".into()), (TurnRole::Assistant, "Hello".into())]
        );
        let code = |v: Option<Value>| parse_turns(v).unwrap_err().code().code();
        assert_eq!(code(None), 400105);
        assert_eq!(code(Some(json!("hi"))), 400111);
        assert_eq!(code(Some(json!([]))), 400111);
        assert_eq!(code(Some(json!([{"role": "system", "content": "x"}]))), 400111);
        assert_eq!(code(Some(json!([{"role": "user"}]))), 400105);
        assert_eq!(code(Some(json!([{"role": "user", "content": 5}]))), 400111);
    }

    #[test]
    fn form_lists_are_comma_separated() {
        let mut b = BotSendBody::default();
        b.set_form_field("mentioned_user_ids", "a, b,,c".into()).unwrap();
        b.set_form_field("target_message_id", "42".into()).unwrap();
        b.set_form_field("unknown", "x".into()).unwrap();
        assert_eq!(b.mentioned_user_ids.clone().unwrap(), ["a", "b", "c"]);
        assert_eq!(b.target_message_id, Some(42));
        assert!(b.set_form_field("target_message_id", "x".into()).is_err());
    }
}
