//! What the derived schemas cannot say: the exact shape of free-form and nested bodies, and the rules the
//! domain checks (id syntax, lengths, enums, "a bot needs a provider or a callback URL"), so that what the
//! document calls valid is what the server accepts and the other way round (checked by
//! `scripts/schemathesis.sh`). Each rule here names the check it mirrors.

use serde_json::{Value, json};

use super::{ID_PATTERN, problem};

/// `confab_domain::ids::UserId` (80) and `ChannelId` (100).
fn user_id() -> Value {
    json!({"type": "string", "minLength": 1, "maxLength": 80, "pattern": ID_PATTERN})
}

fn channel_id() -> Value {
    json!({"type": "string", "minLength": 1, "maxLength": 100, "pattern": ID_PATTERN})
}

fn nullable(mut schema: Value) -> Value {
    match schema.get("type").cloned() {
        Some(Value::String(t)) => schema["type"] = json!([t, "null"]),
        _ => schema = json!({"anyOf": [schema, {"type": "null"}]}),
    }
    schema
}

/// `model::check_metadata`: at most 32 keys of 1 to 128 characters, string values of at most 4096.
fn metadata() -> Value {
    json!({"type": "object", "maxProperties": 32, "propertyNames": {"minLength": 1, "maxLength": 128},
        "additionalProperties": {"type": "string", "maxLength": 4096}})
}

/// `confab_outbox::endpoint::EVENT_TYPES` and the prefix patterns `EventFilter::parse` accepts.
const EVENTS: [&str; 23] = [
    "*",
    "message.*",
    "message.sent",
    "message.edited",
    "message.deleted",
    "bot_reply.*",
    "bot_reply.completed",
    "bot_reply.failed",
    "bot_reply.stopped",
    "bot_reply.interrupted",
    "channel.*",
    "channel.created",
    "channel.updated",
    "channel.deleted",
    "member.*",
    "member.joined",
    "member.left",
    "user.*",
    "user.created",
    "user.updated",
    "user.deleted",
    "bot.*",
    "bot.triggered",
];

/// `EgressPolicy::check_url`: an http(s) URL (WHATWG parsing) whose host is a name or an allowed address;
/// the schema can say the scheme, the rest is the parser's and the policy's.
const WEB_URL: &str = "^https?://";

/// `BotSettings` (serde default, unknown fields refused) and `BotSettings::validate`.
fn bot_settings() -> Value {
    let u32_max = u64::from(u32::MAX);
    json!({
        "type": "object",
        "additionalProperties": false,
        "description": "Omitted fields take their defaults. A bot needs a `provider` (a configured one: \
            `GET /api/v1/providers`; another name is a 400) or a `callback_url` (the application answers).",
        "properties": {
            "provider": {"type": "string"},
            "fallbacks": {"type": "array", "items": {"type": "string"},
                "description": "Configured providers tried in order when the first fails."},
            "model": {"type": "string"},
            "system_prompt": {"type": "string", "maxLength": 20000},
            "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
            "max_output_tokens": {"type": "integer", "minimum": 1, "maximum": 32768},
            "topic": {"type": "string", "maxLength": 2000},
            "custom_content": {"type": "string", "maxLength": 5000},
            "context_messages": {"type": "integer", "minimum": 0, "maximum": 500},
            "context_tokens": {"type": "integer", "minimum": 0, "maximum": u32_max},
            "reply_in_threads": {"type": "boolean"},
            "user_daily_tokens": {"type": "integer", "minimum": 0, "maximum": u64::MAX},
            "bot_daily_tokens": {"type": "integer", "minimum": 0, "maximum": u64::MAX},
            "max_concurrent": {"type": "integer", "minimum": 1, "maximum": u32_max},
            "trigger": {"type": "string", "enum": ["mentions", "mentions_and_commands", "all_messages"]},
            "summonable": {"type": "boolean"},
            "message_context": {"type": "boolean"},
            "callback_url": {"anyOf": [{"const": ""}, {"type": "string", "pattern": "^https?://"}]},
        },
        "anyOf": [
            {"required": ["provider"], "properties": {"provider": {"pattern": "\\S"}}},
            {"required": ["callback_url"], "properties": {"callback_url": {"pattern": "\\S"}}},
        ],
    })
}

/// `confab_moderation::PolicyConfig` (serde default, unknown fields refused) and `compile_rule`.
fn moderation_rules() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "rules": {"type": "array", "items": {
                "type": "object",
                "additionalProperties": false,
                "required": ["name", "action"],
                "properties": {
                    "name": {"type": "string", "pattern": "\\S"},
                    "words": {"type": "array", "items": {"type": "string"},
                        "description": "Whole words or phrases, matched case-insensitively."},
                    "patterns": {"type": "array", "items": {"type": "string", "format": "regex", "maxLength": 1000},
                        "description": "Regular expressions in Rust `regex` syntax (no look-around, no back-references)."},
                    "action": {"type": "string", "enum": ["block", "mask", "flag"]},
                    "reason": {"type": "string"},
                },
            }},
            "max_links": {"type": ["integer", "null"], "minimum": 0, "maximum": u64::from(u32::MAX)},
        },
    })
}

/// `SendMessageBody::into_new_message` and `NewMessage::validate`: what each message type needs.
fn send_message_rules() -> Value {
    let present = |f: &str| json!({"required": [f], "properties": {f: {"not": {"type": "null"}}}});
    json!([
        {"properties": {"type": {"enum": ["text", "admin", null]}, "text": {"pattern": "\\S"},
            "file_id": {"type": "null"}}, "required": ["text"]},
        {"properties": {"type": {"enum": ["image", "file"]}}, "required": ["type", "file_id"],
            "not": {"properties": {"file_id": {"type": "null"}}}},
        {"properties": {"type": {"enum": ["image", "file"]}, "payload": {"type": "object", "required": ["url"],
            "properties": {"url": {"type": "string", "pattern": "\\S"}}}}, "required": ["type", "payload"]},
        {"properties": {"type": {"const": "custom"}}, "required": ["type"], "anyOf": [
            present("payload"), present("data"), {"required": ["text"], "properties": {"text": {"minLength": 1}}}]},
    ])
}

/// Replaces a property's schema, keeping its description.
fn set(s: &mut Value, schema: &str, prop: &str, value: Value) {
    let target = &mut s[schema]["properties"][prop];
    assert!(target.is_object(), "no property {schema}.{prop} to make exact");
    let description = target.get("description").cloned();
    *target = value;
    if let Some(d) = description {
        target["description"] = d;
    }
}

pub(super) fn apply(doc: &mut Value) {
    let any = |d: &str| json!({"description": d});
    let s = &mut doc["components"]["schemas"];
    // Free-form JSON: any value, `null` included.
    for (schema, prop) in [
        ("ChannelDto", "data"),
        ("MessageDto", "data"),
        ("MessageDto", "payload"),
        ("CreateChannelBody", "data"),
        ("UpdateChannelBody", "data"),
        ("SendMessageBody", "data"),
        ("SendMessageBody", "payload"),
        ("EditMessageBody", "data"),
        ("EditMessageBody", "payload"),
        ("DeadLetterDto", "payload"),
        ("RulesDto", "file"),
    ] {
        set(s, schema, prop, any("Any JSON value."));
    }
    set(s, "RulesDto", "app", moderation_rules());
    set(s, "ChannelRulesDto", "rules", nullable(moderation_rules()));
    // Ids in bodies parse as the domain's ids.
    set(s, "CreateUserBody", "id", user_id());
    set(s, "CreateBotBody", "id", user_id());
    set(s, "DevLoginBody", "user_id", user_id());
    set(s, "CreateChannelBody", "id", nullable(channel_id()));
    set(
        s,
        "CreateChannelBody",
        "kind",
        json!({"enum": ["group", "direct", null]}),
    );
    set(
        s,
        "CreateChannelBody",
        "user_ids",
        json!({"type": "array", "items": user_id()}),
    );
    set(
        s,
        "InviteBody",
        "user_ids",
        json!({"type": "array", "items": user_id(), "minItems": 1}),
    );
    set(s, "SendMessageBody", "sender_id", nullable(user_id()));
    set(
        s,
        "SendMessageBody",
        "mentions",
        json!({"type": "array", "items": user_id()}),
    );
    set(
        s,
        "SendMessageBody",
        "file_id",
        json!({"type": ["string", "null"], "pattern": "^[0-9a-f]{32}$"}),
    );
    set(
        s,
        "SendMessageBody",
        "type",
        json!({"enum": ["text", "image", "file", "custom", "admin", null]}),
    );
    set(
        s,
        "SendMessageBody",
        "client_msg_id",
        json!({"type": ["string", "null"], "minLength": 1, "maxLength": 128}),
    );
    s["SendMessageBody"]["anyOf"] = send_message_rules();
    // `edit_message`: something to change (`data: null` clears the data).
    s["EditMessageBody"]["anyOf"] = json!([
        {"required": ["text"], "properties": {"text": {"type": "string"}}},
        {"required": ["custom_type"], "properties": {"custom_type": {"type": "string"}}},
        {"required": ["payload"], "properties": {"payload": {"not": {"type": "null"}}}},
        {"required": ["data"]},
    ]);
    // `MessagePatch` on a text message: new text must not be blank.
    set(
        s,
        "EditMessageBody",
        "text",
        json!({"type": ["string", "null"], "pattern": "\\S"}),
    );
    // `model::check_nickname`, `check_url_field`, `check_metadata`.
    for schema in ["CreateUserBody", "CreateBotBody"] {
        set(s, schema, "nickname", json!({"type": "string", "maxLength": 80}));
        set(s, schema, "profile_url", json!({"type": "string", "maxLength": 2048}));
    }
    for schema in ["UpdateUserBody", "UpdateBotBody", "DevLoginBody"] {
        set(
            s,
            schema,
            "nickname",
            json!({"type": ["string", "null"], "maxLength": 80}),
        );
    }
    for schema in ["UpdateUserBody", "UpdateBotBody"] {
        set(
            s,
            schema,
            "profile_url",
            json!({"type": ["string", "null"], "maxLength": 2048}),
        );
    }
    set(s, "CreateUserBody", "metadata", metadata());
    set(s, "UpdateUserBody", "metadata", nullable(metadata()));
    set(
        s,
        "UserDto",
        "metadata",
        json!({"type": "object", "additionalProperties": {"type": "string"}}),
    );
    set(
        s,
        "CreateBotBody",
        "settings",
        json!({"$ref": "#/components/schemas/BotSettings"}),
    );
    set(
        s,
        "UpdateBotBody",
        "settings",
        nullable(json!({"$ref": "#/components/schemas/BotSettings"})),
    );
    // BotDto is UserDto and the settings (`allOf`).
    let bot = &mut s["BotDto"]["allOf"][1]["properties"]["settings"];
    assert!(bot.is_object(), "no BotDto settings");
    bot["$ref"] = json!("#/components/schemas/BotSettings");
    bot.as_object_mut().expect("object").remove("type");
    s["BotSettings"] = bot_settings();
    // Webhook endpoints: `EgressPolicy::check_url`, `EventFilter::parse`.
    let events = json!({"type": "array", "items": {"enum": EVENTS}});
    set(
        s,
        "CreateEndpointBody",
        "url",
        json!({"type": "string", "pattern": WEB_URL}),
    );
    set(
        s,
        "UpdateEndpointBody",
        "url",
        json!({"type": ["string", "null"], "pattern": WEB_URL}),
    );
    set(s, "CreateEndpointBody", "events", events.clone());
    set(s, "UpdateEndpointBody", "events", nullable(events));
    // Optional in the body (serde `Option`/default), though `value_type` made them look required.
    for (schema, prop) in [
        ("CreateChannelBody", "data"),
        ("UpdateUserBody", "metadata"),
        ("UpdateBotBody", "settings"),
        ("EditMessageBody", "payload"),
    ] {
        if let Some(req) = s[schema]["required"].as_array_mut() {
            req.retain(|r| r != prop);
        }
    }
    // The multipart form: only its two fields.
    s["UploadForm"]["additionalProperties"] = json!(false);
    s["UploadForm"]["properties"]["channel_id"] = channel_id();

    let paths = &mut doc["paths"];
    query_params(paths);
    let json_body = |schema: Value| json!({"required": true, "content": {"application/json": {"schema": schema}}});
    paths["/api/v1/moderation/rules"]["put"]["requestBody"] = json_body(moderation_rules());
    paths["/api/v1/channels/{channel_id}/moderation/rules"]["put"]["requestBody"] = json_body(moderation_rules());
    // `ProviderConfig` (unknown fields refused); whether it builds depends on the server's environment.
    paths["/api/v1/providers"]["post"]["requestBody"] = json_body(json!({
        "type": "object",
        "description": "A provider as in the configuration file's `[[providers]]` (docs/configuration.md): \
            `name`, `kind`, `base_url`, `model`, `api_key_env` (a variable the configuration allows), timeouts, \
            retries and circuit settings. The built-in model and `model_path` are configured in the file only.",
        "required": ["name", "kind"],
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": "\\S"},
            "kind": {"enum": ["openai", "azure", "anthropic", "openai_compatible"]},
            "base_url": {"type": ["string", "null"]},
            "model": {"type": ["string", "null"]},
            "api_key_env": {"type": ["string", "null"]},
        },
    }));
    let refused = "a moderation rule refused the content";
    for (path, method, status, what) in [
        ("/api/v1/channels", "post", "409", "a group with this id exists"),
        ("/api/v1/channels/{channel_id}/messages", "post", "422", refused),
        ("/api/v1/messages/{message_id}", "patch", "422", refused),
    ] {
        let responses = &mut paths[path][method]["responses"];
        assert!(responses.is_object(), "no {method} {path}");
        responses[status] = problem(what);
    }
}

/// Query parameters as the handlers parse them (utoipa sees only `Option<String>` and `Option<u32>`).
fn query_params(paths: &mut Value) {
    let page_size = json!({"type": "integer", "minimum": 0, "maximum": u32::MAX,
        "description": "Page size; 0 and values above the maximum page (200) are read as the default and 200."});
    let seq = json!({"type": "integer", "minimum": 0, "maximum": u64::MAX});
    let message_id = json!({"type": "integer", "minimum": i64::MIN, "maximum": i64::MAX});
    let day = json!({"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"});
    let flag_state = json!({"enum": ["pending", "approved", "removed", "all"]});
    for (path, name, schema) in [
        ("/api/v1/channels", "after", channel_id()),
        ("/api/v1/channels", "user_id", user_id()),
        ("/api/v1/channels/{channel_id}/members", "after", user_id()),
        ("/api/v1/users", "after", user_id()),
        ("/api/v1/channels/{channel_id}/messages", "before", seq.clone()),
        ("/api/v1/channels/{channel_id}/messages", "after", seq.clone()),
        ("/api/v1/messages/{message_id}/replies", "after", message_id.clone()),
        (
            "/api/v1/webhooks/endpoints/{endpoint_id}/dead_letters",
            "after",
            seq.clone(),
        ),
        ("/api/v1/moderation/flags", "state", flag_state),
        ("/api/v1/moderation/flags", "channel_id", channel_id()),
        ("/api/v1/moderation/flags", "after", message_id),
        ("/api/v1/usage", "from", day.clone()),
        ("/api/v1/usage", "to", day),
        ("/api/v1/usage", "bot_id", user_id()),
        ("/api/v1/usage", "user_id", user_id()),
    ] {
        set_query_param(paths, path, name, schema);
    }
    let Some(paths) = paths.as_object_mut() else { return };
    for op in paths
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut())
    {
        // `get_mut`: indexing would add `"parameters": null` to every operation without parameters.
        for p in op
            .get_mut("parameters")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if p["in"] == "query" && p["name"] == "limit" {
                p["schema"] = page_size.clone();
            }
        }
    }
}

fn set_query_param(paths: &mut Value, path: &str, name: &str, schema: Value) {
    let op = &mut paths[path]["get"];
    let param = op["parameters"]
        .as_array_mut()
        .and_then(|ps| ps.iter_mut().find(|p| p["in"] == "query" && p["name"] == name));
    let Some(param) = param else {
        panic!("no query parameter {name} on GET {path}");
    };
    param["schema"] = schema;
}
