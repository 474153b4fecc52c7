//! The OpenAPI document of `/api/v1`: operations come from the handlers' `#[utoipa::path]` as the router
//! registers them (`documented_routes`); this module adds what is common to every operation (the errors the
//! extractors and the service can answer, path parameter formats, auth schemes) and the links between
//! operations, so each handler's annotation only names what is particular to it.

use std::sync::Arc;

use axum::Extension;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use utoipa::OpenApi;

mod exact;

#[derive(OpenApi)]
#[openapi(info(
    title = "Confab native API",
    version = "1",
    description = "Users, channels, messages, files and \
    the WebSocket protocol (docs/protocol.md). Authenticate with `Authorization: Bearer <token>`: the master API \
    token for application calls, a session token for a user's client. Each operation names the tokens it takes; \
    errors are problem JSON `{\"error\": {\"code\", \"message\"}}`."
))]
pub struct ApiDoc;

/// The finished document, serialized once.
#[derive(Clone)]
pub struct Document {
    json: Arc<Value>,
    bytes: Arc<[u8]>,
}

impl Document {
    pub fn new(doc: utoipa::openapi::OpenApi) -> Self {
        let mut json = serde_json::to_value(&doc).expect("the document serializes");
        finish(&mut json);
        let bytes = serde_json::to_vec(&json).expect("the document serializes");
        Document {
            json: Arc::new(json),
            bytes: bytes.into(),
        }
    }

    pub fn json(&self) -> &Value {
        &self.json
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", security(()), tag = "meta",
    responses((status = 200, description = "the OpenAPI document", content_type = "application/json", body = Object)))]
pub async fn openapi_json(Extension(doc): Extension<Document>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        axum::body::Bytes::from_owner(doc.bytes.clone()),
    )
        .into_response()
}

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// Printable ASCII without `" # % / ? \`, as `confab_domain::ids` accepts.
const ID_PATTERN: &str = r#"^[!$&-.0->@-\[\]-~]+$"#;

fn path_param_schema(name: &str) -> (Value, &'static str) {
    match name {
        "user_id" | "bot_id" => (
            json!({"type": "string", "minLength": 1, "maxLength": 80, "pattern": ID_PATTERN}),
            "a user (or bot) id",
        ),
        "channel_id" => (
            json!({"type": "string", "minLength": 1, "maxLength": 100, "pattern": ID_PATTERN}),
            "a channel id",
        ),
        "message_id" => (json!({"type": "integer", "format": "int64"}), "a message id"),
        "event_id" => (
            json!({"type": "integer", "format": "int64", "minimum": 0}),
            "an outbox event id",
        ),
        "file_id" => (json!({"type": "string", "pattern": "^[0-9a-f]{32}$"}), "a file id"),
        "endpoint_id" => (json!({"type": "string"}), "a webhook endpoint id"),
        "name" => (json!({"type": "string"}), "a provider name"),
        other => panic!("path parameter {other} has no schema in openapi::path_param_schema"),
    }
}

fn problem(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ProblemBody"}}}
    })
}

fn add(responses: &mut Map<String, Value>, status: &str, value: Value) {
    responses.entry(status.to_string()).or_insert(value);
}

fn finish(doc: &mut Value) {
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    let mut prefixed = Map::new();
    for (path, item) in std::mem::take(paths) {
        prefixed.insert(format!("/api/v1{path}"), item);
    }
    for (path, item) in prefixed.iter_mut() {
        let names: Vec<&str> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        for method in METHODS {
            let Some(op) = item.get_mut(method) else { continue };
            finish_operation(op, &names);
        }
    }
    doc["paths"] = Value::Object(prefixed);
    let components = doc
        .as_object_mut()
        .expect("object")
        .entry("components")
        .or_insert_with(|| json!({}));
    components["securitySchemes"] = json!({
        "master_token": {"type": "http", "scheme": "bearer",
            "description": "The application's master API token (`CONFAB_API_TOKEN`): acts as the application."},
        "session_token": {"type": "http", "scheme": "bearer",
            "description": "A user's session token (`POST /api/v1/users/{user_id}/sessions`): acts as that user."},
        "token_query": {"type": "apiKey", "in": "query", "name": "token",
            "description": "A token as the `token` query parameter, where a browser cannot set headers."},
    });
    links(doc);
    exact::apply(doc);
}

fn finish_operation(op: &mut Value, path_params: &[&str]) {
    // Path parameters from the template, with the formats the handlers parse.
    let mut params: Vec<Value> = op["parameters"]
        .as_array()
        .map(|ps| ps.iter().filter(|p| p["in"] != "path").cloned().collect())
        .unwrap_or_default();
    for name in path_params {
        let (schema, description) = path_param_schema(name);
        params
            .push(json!({"name": name, "in": "path", "required": true, "description": description, "schema": schema}));
    }
    let has_query = params.iter().any(|p| p["in"] == "query");
    if params.is_empty() {
        op.as_object_mut().expect("object").remove("parameters");
    } else {
        op["parameters"] = Value::Array(params);
    }
    let secured = op["security"]
        .as_array()
        .is_some_and(|s| s.iter().any(|r| r.as_object().is_some_and(|o| !o.is_empty())));
    let body_type = op["requestBody"]["content"]
        .as_object()
        .and_then(|c| c.keys().next().cloned());
    let responses = op["responses"].as_object_mut().expect("responses");
    if secured {
        add(
            responses,
            "401",
            problem("no token, or an unknown, revoked or expired one"),
        );
        add(responses, "403", problem("the token may not do this"));
        add(responses, "503", problem("the store cannot take the request now"));
    }
    if !path_params.is_empty() {
        add(responses, "400", problem("a path parameter is not valid"));
        add(responses, "404", problem("no such object"));
    }
    if has_query {
        add(responses, "400", problem("a query parameter is not valid"));
    }
    if let Some(t) = body_type {
        add(responses, "400", problem("the body is not valid"));
        add(responses, "413", problem("the body is larger than the server accepts"));
        let what = if t == "multipart/form-data" {
            "the body is not multipart/form-data"
        } else {
            "the body is not application/json"
        };
        add(responses, "415", problem(what));
    }
    add(
        responses,
        "408",
        problem("`timeout`: the request took longer than the server's request timeout"),
    );
    if let Some(r) = responses.get_mut("429") {
        r["headers"] = json!({"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}});
    }
}

/// Links from the operations that create an object to those that act on it, for clients and for
/// schemathesis' stateful phase.
fn links(doc: &mut Value) {
    let user = json!({"user_id": "$response.body#/id"});
    let channel = json!({"channel_id": "$response.body#/id"});
    let message = json!({"message_id": "$response.body#/id"});
    let bot = json!({"bot_id": "$response.body#/id"});
    let endpoint = json!({"endpoint_id": "$response.body#/id"});
    let table: [(&str, &str, &str, &[&str], &Value); 6] = [
        (
            "/api/v1/users",
            "post",
            "201",
            &[
                "get_user",
                "update_user",
                "issue_session",
                "revoke_sessions",
                "delete_user",
            ],
            &user,
        ),
        (
            "/api/v1/channels",
            "post",
            "201",
            &[
                "get_channel",
                "update_channel",
                "list_members",
                "invite",
                "send_message",
                "history",
                "get_channel_rules",
                "put_channel_rules",
                "delete_channel",
            ],
            &channel,
        ),
        (
            "/api/v1/channels/{channel_id}/messages",
            "post",
            "201",
            &["get_message", "edit_message", "thread", "stop_reply", "delete_message"],
            &message,
        ),
        (
            "/api/v1/bots",
            "post",
            "201",
            &["get_bot", "update_bot", "delete_bot"],
            &bot,
        ),
        (
            "/api/v1/webhooks/endpoints",
            "post",
            "201",
            &[
                "get_endpoint",
                "update_endpoint",
                "rotate_secret",
                "list_attempts",
                "list_dead_letters",
                "delete_endpoint",
            ],
            &endpoint,
        ),
        (
            "/api/v1/users/{user_id}/sessions",
            "post",
            "201",
            &["get_user"],
            &json!({"user_id": "$response.body#/user_id"}),
        ),
    ];
    for (path, method, status, targets, params) in table {
        let resp = &mut doc["paths"][path][method]["responses"][status];
        assert!(resp.is_object(), "no {method} {path} {status} to link from");
        let mut links = Map::new();
        for t in targets {
            links.insert(t.to_string(), json!({"operationId": t, "parameters": params}));
        }
        resp["links"] = Value::Object(links);
    }
}
