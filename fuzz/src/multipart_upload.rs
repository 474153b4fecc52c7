//! `multipart_upload`: `POST /api/v1/files` through the real native router (the multipart extractor, the
//! upload handler's field handling and the service's streamed upload into the store). The input's first line
//! is the boundary, the rest the body; the body arrives in pieces (as from a socket) cut where the input's
//! second byte says. Checked: never a 5xx; a 201 names a file of the uploaded size that can be read back.

use axum::http::StatusCode;
use confab_domain::FileId;
use serde_json::Value;
use tower::ServiceExt;

use crate::fixture::{MASTER, fixture, multipart_request};

pub fn run(data: &[u8]) {
    let auth = format!("Bearer {MASTER}");
    let Some(req) = multipart_request(data, "/api/v1/files", ("authorization", &auth)) else {
        return;
    };
    let fx = fixture();
    fx.rt.block_on(async {
        let resp = fx.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        assert!(
            !status.is_server_error(),
            "{status}: {}",
            String::from_utf8_lossy(&bytes)
        );
        if status == StatusCode::CREATED {
            let v: Value = serde_json::from_slice(&bytes).expect("a file object");
            let id = FileId::parse(v["id"].as_str().expect("an id")).expect("a file id");
            let (obj, len) = fx.read_back_and_forget(&id).await;
            assert_eq!(Some(obj.size), v["size"].as_u64());
            assert_eq!(len, obj.size);
        }
    });
}
