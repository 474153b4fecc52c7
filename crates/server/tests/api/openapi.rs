//! `/api/v1/openapi.json` is complete and exact: every served route is documented and every documented
//! operation is served (black-box, against the running server), no route is registered outside the documented
//! registration (structural, over the crate's sources), and the answers schemathesis found wrong stay fixed.

use serde_json::{Value, json};

use crate::helpers::*;

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

async fn document(app: &TestApp) -> Value {
    let r = app.http.get(app.url("/api/v1/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    r.json().await.unwrap()
}

/// A concrete path for a template: each parameter gets a value of its documented type.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|seg| match seg {
            "{message_id}" | "{event_id}" => "1".to_string(),
            "{file_id}" => "0".repeat(32),
            s if s.starts_with('{') => "nothing-here".to_string(),
            s => s.to_string(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn every_documented_operation_is_served_and_no_other_method() {
    // The development login on, so its POST answers as a route rather than as `route_not_found`.
    let app = spawn_app_with(|c| c.web.dev_login = true).await;
    let doc = document(&app).await;
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 35, "only {} paths documented", paths.len());
    let mut checked = 0;
    for (template, item) in paths {
        let path = concrete(template);
        for method in METHODS {
            let documented = item.get(method.to_lowercase()).is_some();
            let (status, body) = app.admin(method, &path, None).await;
            let code = body["error"]["code"].as_str().unwrap_or_default();
            if documented {
                assert!(
                    status != 405 && code != "route_not_found",
                    "{method} {template} is documented but not served: {status} {body}"
                );
                assert!(status < 500, "{method} {path}: {status} {body}");
            } else {
                assert_eq!(
                    (status, code),
                    (405, "method_not_allowed"),
                    "{method} {template} is served but not documented"
                );
            }
            checked += 1;
        }
    }
    println!(
        "openapi: {} paths, {checked} path and method pairs checked",
        paths.len()
    );
}

/// axum cannot list its routes, so the registration itself is checked: the native crate adds routes only
/// through `routes!` (route and documentation at once) in `documented_routes`; any other way of adding a
/// route (`.route(`, `.nest(`, `.merge(` of a plain router, ...) fails here.
#[test]
fn routes_are_registered_only_with_their_documentation() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../api-native/src");
    let adders = [
        ".route(",
        ".route_service(",
        ".nest(",
        ".nest_service(",
        ".merge(",
        ".fallback_service(",
    ];
    // The only allowed ones: merging the documented routers, and mounting the result under /api/v1.
    let allowed = [
        "lib.rs: OpenApiRouter::with_openapi(openapi::ApiDoc::openapi()).merge(api.merge(uploads))",
        "lib.rs: .nest(\"/api/v1\", api)",
    ];
    let mut found = Vec::new();
    let mut files = 0;
    for entry in walk(&src) {
        files += 1;
        let text = std::fs::read_to_string(&entry).unwrap();
        let name = entry.strip_prefix(&src).unwrap().display().to_string();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with("//") {
                continue;
            }
            if adders.iter().any(|a| line.contains(a)) {
                found.push(format!("{name}: {line}"));
            }
        }
    }
    assert!(files >= 10, "read only {files} files under {}", src.display());
    assert_eq!(found, allowed, "routes added outside documented_routes' routes!()");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let registered = lib.matches(".routes(routes!(").count();
    assert!(registered >= 30, "only {registered} routes!() registrations");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn every_operation_names_its_auth_and_its_errors() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let security = op["security"]
                .as_array()
                .unwrap_or_else(|| panic!("{method} {path}: no security"));
            for req in security {
                for scheme in req.as_object().unwrap().keys() {
                    assert!(schemes.contains_key(scheme), "{method} {path}: unknown scheme {scheme}");
                }
            }
            let open = security.iter().all(|r| r.as_object().unwrap().is_empty());
            let responses = op["responses"].as_object().unwrap();
            assert_eq!(
                !open,
                responses.contains_key("401"),
                "{method} {path}: 401 iff authenticated"
            );
            assert!(op["operationId"].is_string(), "{method} {path}: no operationId");
            if let Some(params) = op.get("parameters") {
                let params = params
                    .as_array()
                    .unwrap_or_else(|| panic!("{method} {path}: parameters is {params}, not a list"));
                for p in params {
                    assert!(
                        p["in"] == "path" || p["in"] == "query",
                        "{method} {path}: parameter {p} is neither in the path nor the query"
                    );
                }
            }
            for (status, r) in responses {
                if status.starts_with('4') {
                    assert_eq!(
                        r["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/ProblemBody",
                        "{method} {path} {status}: not problem JSON"
                    );
                }
            }
        }
    }
    let open: Vec<&str> = ["/api/v1/openapi.json", "/api/v1/dev/login"].to_vec();
    for p in open {
        assert_eq!(doc["paths"][p]["get"]["security"], json!([{}]), "{p}");
    }
    let link = &doc["paths"]["/api/v1/users"]["post"]["responses"]["201"]["links"]["get_user"];
    assert_eq!(link["parameters"]["user_id"], "$response.body#/id");
}

// Regression tests for what schemathesis found (RELIABILITY.md, "Generated API tests").

#[tokio::test]
async fn an_unparsable_path_parameter_is_a_problem_json_400() {
    let app = spawn_app().await;
    for path in [
        "/api/v1/messages/abc",
        "/api/v1/webhooks/endpoints/x/dead_letters/-1/redeliver",
    ] {
        let method = if path.ends_with("redeliver") { "POST" } else { "GET" };
        let (s, v) = app.admin(method, path, None).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (400, Some("invalid_argument")),
            "{path}: {v}"
        );
    }
}

#[tokio::test]
async fn an_upload_without_multipart_is_a_problem_json_415() {
    let app = spawn_app().await;
    let r = app
        .http
        .post(app.url("/api/v1/files"))
        .bearer_auth(MASTER)
        .body("not a form")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "unsupported_media_type");
}

#[tokio::test]
async fn an_unserved_method_is_a_problem_json_405_with_allow() {
    let app = spawn_app().await;
    let r = app
        .http
        .put(app.url("/api/v1/users"))
        .bearer_auth(MASTER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let allow = r.headers()["allow"].to_str().unwrap().to_string();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "method_not_allowed");
}

// Found by schemathesis: `3.0` is an integer to JSON Schema (and to a JavaScript client); the server read it
// as a type error.
#[tokio::test]
async fn an_integral_float_is_read_as_an_integer() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    app.group("g", &["alice"]).await;
    app.send_as(&alice, "g", "hello").await;
    let (s, v) = app
        .call("POST", "/api/v1/channels/g/read", &alice, Some(json!({"seq": 1.0})))
        .await;
    assert_eq!(s, 200, "{v}");
    // A fraction is still refused, with the field named.
    let (s, v) = app
        .call("POST", "/api/v1/channels/g/read", &alice, Some(json!({"seq": 1.5})))
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("seq"), "{v}");
}

// Found by schemathesis: a read position past the largest sequence a channel can have (the document's int64)
// was accepted and answered as position 0.
#[tokio::test]
async fn a_read_position_past_the_largest_sequence_is_refused() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    app.group("g", &["alice"]).await;
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/channels/g/read",
            &alice,
            Some(json!({"seq": 9_999_999_999_999_999_999u64})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("seq"), "{v}");
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/channels/g/read",
            &alice,
            Some(json!({"seq": i64::MAX})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
}

// Found by schemathesis: stopping a message that is not a bot reply answered 400 `invalid_argument`, a
// verdict on the input, though the input was well-formed and the message's state was the reason.
#[tokio::test]
async fn stopping_a_message_that_is_not_a_bot_reply_is_a_409_conflict() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    app.group("g", &["alice"]).await;
    let m = app.send_as(&alice, "g", "hello").await;
    let id = m["id"].as_i64().expect("message id");
    let (s, v) = app
        .call("POST", &format!("/api/v1/messages/{id}/stop"), &alice, None)
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("conflict")), "{v}");
}

// Found by schemathesis: a form field after the file was ignored though the document lists two fields.
#[tokio::test]
async fn an_upload_form_with_an_unknown_field_is_refused() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    app.group("g", &["alice"]).await;
    let form = reqwest::multipart::Form::new()
        .text("channel_id", "g")
        .part(
            "file",
            reqwest::multipart::Part::bytes(b"hello".to_vec()).file_name("a.txt"),
        )
        .text("x-unknown", "42");
    let r = app
        .http
        .post(app.url("/api/v1/files"))
        .bearer_auth(&alice)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("x-unknown"), "{v}");
}
