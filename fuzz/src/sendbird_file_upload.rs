//! `sendbird_file_upload`: Sendbird's multipart send (`POST /v3/group_channels/{url}/messages`, the form the
//! official SDKs send for a FILE message) through the real `/v3` router: the multipart extractor, the form's
//! text fields (`set_form_field`), the `file` part streamed into an upload and the message built from them.
//! The input's first line is the boundary, the rest the body, which arrives in pieces of 1 to 64 bytes.
//!
//! Checked: never a 5xx; an error is Sendbird's `{error: true, code, message}` with a 400xxx code; a 200 is
//! a stored message of the reported type whose uploaded file has the reported size in storage.

use axum::http::StatusCode;
use confab_domain::MessageId;
use confab_service::Actor;
use serde_json::Value;
use tower::ServiceExt;

use crate::fixture::{MASTER, fixture, multipart_request};

pub fn run(data: &[u8]) {
    let Some(req) = multipart_request(data, "/v3/group_channels/fz/messages", ("api-token", MASTER)) else {
        return;
    };
    let fx = fixture();
    let router = fx.sendbird().clone();
    fx.rt.block_on(async {
        let resp = router.oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!status.is_server_error(), "{status}: {text}");
        let v: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{status}, not JSON ({e}): {text}"));
        if status != StatusCode::OK {
            assert_eq!(v["error"], true, "{status}: {text}");
            let code = v["code"].as_u64().unwrap_or_default();
            assert!((400_000..401_000).contains(&code), "{status}: {text}");
            assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{text}");
            return;
        }
        let id = v["message_id"].as_i64().expect("a message id");
        let m = fx
            .service
            .get_message(&Actor::Admin, MessageId(id))
            .await
            .expect("the message is stored");
        let ty = v["type"].as_str().expect("a type");
        assert!(["MESG", "FILE", "ADMM"].contains(&ty), "{text}");
        if let Some(file) = &m.file {
            assert_eq!(ty, "FILE");
            assert_eq!(Some(file.size), v["file"]["size"].as_u64(), "{text}");
            let (obj, len) = fx.read_back_and_forget(&file.id).await;
            assert_eq!(len, obj.size);
        }
    });
}
