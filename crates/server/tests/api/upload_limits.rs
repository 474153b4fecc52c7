//! Upload limits (issue 15, item 6): a per-user upload rate, storage quotas per user and in all with clear
//! errors on every surface that uploads, unattached files removed after a while, partial uploads of an
//! earlier run removed at start.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

/// A plain-text file of `bytes` uploaded by `token` to `channel`.
async fn upload(app: &TestApp, token: &str, channel: &str, bytes: Vec<u8>) -> (u16, Value) {
    crate::files::upload(app, token, channel, "f.txt", bytes, "text/plain").await
}

/// A Sendbird FILE message with its file in the form (the application uploads it).
async fn sendbird_file_message(app: &TestApp, channel: &str, user: &str, bytes: Vec<u8>) -> (u16, Value) {
    let form = reqwest::multipart::Form::new()
        .text("message_type", "FILE")
        .text("user_id", user.to_string())
        .part("file", reqwest::multipart::Part::bytes(bytes).file_name("f.txt"));
    let r = app
        .http
        .post(app.url(&format!("/v3/group_channels/{channel}/messages")))
        .header("Api-Token", MASTER)
        .multipart(form)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn text(n: usize) -> Vec<u8> {
    vec![b'x'; n]
}

#[tokio::test]
async fn each_user_has_an_upload_rate() {
    let app = spawn_app_with(|c| c.uploads.user_per_minute = 2).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    app.group("g", &["alice", "bob"]).await;
    for _ in 0..2 {
        let (s, v) = upload(&app, &alice, "g", text(10)).await;
        assert_eq!(s, 201, "{v}");
    }
    let (s, v) = upload(&app, &alice, "g", text(10)).await;
    assert_eq!(s, 429, "{v}");
    assert_eq!(v["error"]["code"], "rate_limited", "{v}");
    // Others, and the application, are not held back by alice's rate.
    let (s, v) = upload(&app, &bob, "g", text(10)).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = upload(&app, MASTER, "g", text(10)).await;
    assert_eq!(s, 201, "{v}");
}

#[tokio::test]
async fn storage_quotas_per_user_and_in_all() {
    let app = spawn_app_with(|c| {
        c.uploads.user_quota_bytes = 100;
        c.uploads.total_quota_bytes = 250;
    })
    .await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    app.group("g", &["alice", "bob"]).await;

    let (s, v) = upload(&app, &alice, "g", text(60)).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = upload(&app, &alice, "g", text(41)).await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["code"], "limit_exceeded", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("uploader's file storage") && message.contains("100"),
        "{v}"
    );
    // Exactly up to the quota is fine.
    let (s, v) = upload(&app, &alice, "g", text(40)).await;
    assert_eq!(s, 201, "{v}");

    let (s, v) = upload(&app, &bob, "g", text(90)).await;
    assert_eq!(s, 201, "{v}");
    // 190 of 250 bytes used: the next 61 bytes are refused on every surface that uploads.
    let (s, v) = upload(&app, MASTER, "g", text(61)).await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("server's file storage"),
        "{v}"
    );
    let (s, v) = sendbird_file_message(&app, "g", "bob", text(61)).await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"], true, "{v}");
    assert_eq!(v["code"], 400111, "{v}");
    assert!(v["message"].as_str().unwrap().contains("server's file storage"), "{v}");
    let (s, v) = sendbird_file_message(&app, "g", "bob", text(60)).await;
    assert_eq!(s, 200, "{v}");
}

#[tokio::test]
async fn files_no_message_carries_are_removed_after_their_time() {
    let mut data_dir = PathBuf::new();
    let app = spawn_app_with(|c| {
        c.uploads.unattached_ttl_secs = 3;
        data_dir = c.data_dir.clone();
    })
    .await;
    let alice = app.user("alice").await;
    app.group("g", &["alice"]).await;

    let (s, kept) = upload(&app, &alice, "g", text(10)).await;
    assert_eq!(s, 201, "{kept}");
    let kept_id = kept["id"].as_str().unwrap().to_string();
    let (s, m) = app
        .call(
            "POST",
            "/api/v1/channels/g/messages",
            &alice,
            Some(json!({"type": "file", "file_id": kept_id})),
        )
        .await;
    assert_eq!(s, 201, "{m}");
    let (s, loose) = upload(&app, &alice, "g", text(10)).await;
    assert_eq!(s, 201, "{loose}");
    let loose_id = loose["id"].as_str().unwrap().to_string();
    let loose_path = data_dir.join("files").join(&loose_id[..2]).join(&loose_id);
    assert!(loose_path.exists());

    let get = |id: &str| {
        app.http
            .get(app.url(&format!("/api/v1/files/{id}")))
            .bearer_auth(&alice)
            .send()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = get(&loose_id).await.unwrap().status().as_u16();
        if s == 404 {
            break;
        }
        assert_eq!(s, 200);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the unattached file was never removed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!loose_path.exists(), "its bytes are gone too");
    // Older than the unattached one, but carried by a message: kept.
    let r = get(&kept_id).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), 10);
}

#[tokio::test]
async fn partial_uploads_of_an_earlier_run_are_removed_at_start() {
    let mut leftover = PathBuf::new();
    let app = spawn_app_with(|c| {
        let tmp = c.data_dir.join("files").join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        leftover = tmp.join("0123456789abcdef0123456789abcdef");
        std::fs::write(&leftover, b"half an upload").unwrap();
    })
    .await;
    assert!(!leftover.exists(), "removed before serving");
    let alice = app.user("alice").await;
    app.group("g", &["alice"]).await;
    let (s, v) = upload(&app, &alice, "g", text(10)).await;
    assert_eq!(s, 201, "{v}");
}

/// Waits (bounded) until the temporary upload directory holds `n` files.
async fn wait_tmp_files(tmp: &std::path::Path, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let count = std::fs::read_dir(tmp).map(|d| d.count()).unwrap_or(0);
        if count == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{count} temporary files, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_upload_abandoned_midway_leaves_nothing_behind() {
    use tokio::io::AsyncWriteExt;

    let mut data_dir = PathBuf::new();
    let app = spawn_app_with(|c| data_dir = c.data_dir.clone()).await;
    let alice = app.user("alice").await;
    app.group("g", &["alice"]).await;
    let tmp = data_dir.join("files").join("tmp");

    let mut sock = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /api/v1/files HTTP/1.1\r\nHost: confab\r\nAuthorization: Bearer {alice}\r\nContent-Type: \
         multipart/form-data; boundary=XyZ\r\nContent-Length: 1000000\r\n\r\n--XyZ\r\nContent-Disposition: \
         form-data; name=\"channel_id\"\r\n\r\ng\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; \
         filename=\"a.txt\"\r\n\r\n"
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(&text(64 * 1024)).await.unwrap();
    // The upload is under way: its temporary file exists.
    wait_tmp_files(&tmp, 1).await;
    // Linger 0: the close sends RST at once (nothing to block on).
    #[allow(deprecated)]
    sock.set_linger(Some(Duration::ZERO)).unwrap();
    drop(sock);
    wait_tmp_files(&tmp, 0).await;
    // And the server still takes uploads.
    let (s, v) = upload(&app, &alice, "g", text(10)).await;
    assert_eq!(s, 201, "{v}");
}
