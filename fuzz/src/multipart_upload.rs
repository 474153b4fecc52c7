//! `multipart_upload`: `POST /api/v1/files` through the real native router (the multipart extractor, the
//! upload handler's field handling and the service's streamed upload into the store). The input's first line
//! is the boundary, the rest the body; the body arrives in pieces (as from a socket) cut where the input's
//! second byte says. Checked: never a 5xx; a 201 names a file of the uploaded size that can be read back.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use confab_domain::FileId;
use confab_service::Actor;
use serde_json::Value;
use tower::ServiceExt;

use crate::fixture::{MASTER, fixture};

pub fn run(data: &[u8]) {
    let (boundary, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b"X"[..], data),
    };
    let Ok(boundary) = std::str::from_utf8(boundary) else {
        return;
    };
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let Ok(content_type) = header::HeaderValue::from_str(&content_type) else {
        return;
    };
    // Pieces of 1 to 64 bytes, by the first byte of the body, so the parser meets every boundary split.
    let step = body.first().map_or(64, |b| (*b as usize % 64) + 1);
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> = body.chunks(step).map(|c| Ok(c.to_vec())).collect();
    let req = Request::post("/api/v1/files")
        .header(header::AUTHORIZATION, format!("Bearer {MASTER}"))
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from_stream(futures_util::stream::iter(pieces)))
        .unwrap();
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
            let (obj, path) = fx.service.open_file(&Actor::Admin, &id).await.expect("stored");
            assert_eq!(Some(obj.size), v["size"].as_u64());
            let on_disk = std::fs::metadata(&path).expect("on disk").len();
            assert_eq!(on_disk, obj.size);
            // Keeps the fixture's disk use bounded over a long run.
            let _ = std::fs::remove_file(&path);
        }
    });
}
