use serde_json::json;

use crate::helpers::*;

const PNG: &[u8] = &[
    0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 0x0d, b'I', b'H', b'D', b'R', 0, 0, 0, 1, 0, 0, 0, 1, 8,
    6, 0, 0, 0, 0x1f, 0x15, 0xc4, 0x89,
];

/// Uploads `bytes` as `name` with the claimed content type; the status and the body.
pub(crate) async fn upload(
    app: &TestApp,
    token: &str,
    channel: &str,
    name: &str,
    bytes: Vec<u8>,
    claimed: &str,
) -> (u16, serde_json::Value) {
    let form = reqwest::multipart::Form::new()
        .text("channel_id", channel.to_string())
        .part(
            "file",
            reqwest::multipart::Part::bytes(bytes)
                .file_name(name.to_string())
                .mime_str(claimed)
                .unwrap(),
        );
    let r = app
        .http
        .post(app.url("/api/v1/files"))
        .bearer_auth(token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn uploads_are_sniffed_and_served_only_to_members() {
    let app = spawn_app_with(|c| c.http.max_upload_bytes = 64 * 1024).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let eve = app.user("eve").await;
    app.group("g", &["alice", "bob"]).await;

    // The client claims text/html; the bytes say PNG.
    let (s, f) = upload(&app, &alice, "g", "../../pic.png", PNG.to_vec(), "text/html").await;
    assert_eq!(s, 201, "{f}");
    assert_eq!(f["content_type"], "image/png");
    assert_eq!(f["name"], "pic.png");
    assert_eq!(f["size"], PNG.len());
    let file_id = f["id"].as_str().unwrap().to_string();

    let (s, m) = app
        .call(
            "POST",
            "/api/v1/channels/g/messages",
            &alice,
            Some(json!({"type": "image", "file_id": file_id, "text": "look"})),
        )
        .await;
    assert_eq!(s, 201, "{m}");
    assert_eq!(m["file"]["content_type"], "image/png");
    let url = m["file"]["url"].as_str().unwrap().to_string();

    let r = app.http.get(app.url(&url)).bearer_auth(&bob).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/png");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert_eq!(r.bytes().await.unwrap().as_ref(), PNG);
    // Browsers load images with a query token.
    let r = app
        .http
        .get(app.url(&format!("{url}?token={bob}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Not a member: not found, as if it did not exist.
    let r = app.http.get(app.url(&url)).bearer_auth(&eve).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = app.http.get(app.url(&url)).send().await.unwrap();
    assert_eq!(r.status(), 401);

    // Eve cannot upload into a channel she is not in.
    let (s, _) = upload(&app, &eve, "g", "x.txt", b"hello".to_vec(), "text/plain").await;
    assert_eq!(s, 403);
    // Too large.
    let (s, v) = upload(
        &app,
        &alice,
        "g",
        "big.bin",
        vec![7u8; 100 * 1024],
        "application/octet-stream",
    )
    .await;
    assert!(s == 400 || s == 413, "{s} {v}");
    // Plain text is recognised from its bytes; anything but an image is served as an attachment, so an
    // uploaded page never runs in the server's origin.
    let (s, f) = upload(
        &app,
        &alice,
        "g",
        "notes.bin",
        b"just some notes\n".to_vec(),
        "image/png",
    )
    .await;
    assert_eq!(
        (s, f["content_type"].as_str()),
        (201, Some("text/plain; charset=utf-8"))
    );
    let (s, f) = upload(
        &app,
        &alice,
        "g",
        "page.png",
        b"<html><script>alert(1)</script></html>".to_vec(),
        "image/png",
    )
    .await;
    assert_eq!(s, 201);
    assert!(!f["content_type"].as_str().unwrap().starts_with("image/"));
    let r = app
        .http
        .get(app.url(f["url"].as_str().unwrap()))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment")
    );

    // A file uploaded for one channel cannot be sent in another.
    app.group("h", &["alice"]).await;
    let (s, _) = app
        .call(
            "POST",
            "/api/v1/channels/h/messages",
            &alice,
            Some(json!({"type": "file", "file_id": file_id})),
        )
        .await;
    assert_eq!(s, 400);
}
