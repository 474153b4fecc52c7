//! `confab backup` and `confab restore`, through the real binary, against a server taking writes: every
//! message acknowledged before the backup began, every file and every setting come back, and each channel's
//! history is a gap-free prefix of what was sent.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::files::upload;
use crate::helpers::*;

/// (channel, seq) → (message id, text), of every acknowledged send.
type Acked = Arc<Mutex<BTreeMap<(String, i64), (i64, String)>>>;

const CHANNELS: [&str; 2] = ["g", "h"];

async fn run_cli(args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_confab"))
        .args(args)
        .env_remove("CONFAB_CONFIG")
        .env_remove("CONFAB_DATA_DIR")
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Sends in a loop as `token` until `stop`, recording each acknowledgement.
async fn writer(app: Arc<TestApp>, token: String, who: usize, acked: Acked, stop: Arc<AtomicBool>) {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let channel = CHANNELS[n % 2];
        let text = format!("w{who}-{n}");
        let (s, v) = app
            .call(
                "POST",
                &format!("/api/v1/channels/{channel}/messages"),
                &token,
                Some(json!({"text": text, "client_msg_id": text})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let seq = v["seq"].as_i64().unwrap();
        acked
            .lock()
            .await
            .insert((channel.to_string(), seq), (v["id"].as_i64().unwrap(), text));
        n += 1;
    }
}

async fn history(app: &TestApp, token: &str, channel: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let (s, v) = app
            .call(
                "GET",
                &format!("/api/v1/channels/{channel}/messages?after={after}&limit=200"),
                token,
                None,
            )
            .await;
        assert_eq!(s, 200, "{v}");
        let page = v["messages"].as_array().cloned().unwrap_or_default();
        if page.is_empty() {
            return all;
        }
        after = page.last().unwrap()["seq"].as_i64().unwrap();
        all.extend(page);
    }
}

#[tokio::test]
async fn a_backup_under_write_load_restores_every_acknowledged_message_file_and_setting() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let app = Arc::new(
        spawn_app_with(|c| {
            c.data_dir = data.clone();
            c.limits.user_send_per_sec = 10_000;
            c.limits.user_send_burst = 10_000;
        })
        .await,
    );
    let mut tokens = Vec::new();
    for u in ["u0", "u1", "u2", "u3"] {
        tokens.push(app.user(u).await);
    }
    for ch in CHANNELS {
        app.group(ch, &["u0", "u1", "u2", "u3"]).await;
    }
    // Settings: a bot, a webhook endpoint, the channel's moderation rules.
    let (s, v) = app
        .admin(
            "POST",
            "/api/v1/bots",
            Some(json!({"id": "helper", "nickname": "Helper", "settings": {"callback_url": "https://bots.example.com/cb", "system_prompt": "Be kind."}})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, endpoint) = app
        .admin(
            "POST",
            "/api/v1/webhooks/endpoints",
            Some(json!({"url": "https://hooks.example.com/confab", "events": ["message.sent"]})),
        )
        .await;
    assert_eq!(s, 201, "{endpoint}");
    // Files, each carried by a message.
    let mut files: HashMap<String, Vec<u8>> = HashMap::new();
    for i in 0..5 {
        let bytes: Vec<u8> = format!("file {i}: ")
            .bytes()
            .chain((0..2000 * (i + 1)).map(|b| b as u8))
            .collect();
        let (s, f) = upload(
            &app,
            &tokens[0],
            "g",
            &format!("f{i}.bin"),
            bytes.clone(),
            "application/octet-stream",
        )
        .await;
        assert_eq!(s, 201, "{f}");
        let id = f["id"].as_str().unwrap().to_string();
        let (s, m) = app
            .call(
                "POST",
                "/api/v1/channels/g/messages",
                &tokens[0],
                Some(json!({"type": "file", "file_id": id, "text": format!("file {i}")})),
            )
            .await;
        assert_eq!(s, 201, "{m}");
        files.insert(m["file"]["url"].as_str().unwrap().to_string(), bytes);
    }

    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| tokio::spawn(writer(app.clone(), t.clone(), i, acked.clone(), stop.clone())))
        .collect();
    // Some writes first, then the backup while they go on.
    while acked.lock().await.len() < 300 {
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let before = acked.lock().await.clone();
    let archive = root.path().join("backups/one.tar.gz");
    let (ok, out) = run_cli(&[
        "backup",
        "--to",
        archive.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ])
    .await;
    let during = acked.lock().await.len() - before.len();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    assert!(ok, "{out}");
    assert!(out.contains("backup written to"), "{out}");
    // It holds the credentials: readable by its owner only.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&archive).unwrap().permissions().mode() & 0o777, 0o600);
    eprintln!("{out}(acknowledged while it ran: {during})");

    // Restoring into a directory that holds something is refused; into a new one it works.
    let busy = root.path().join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("x"), "x").unwrap();
    let (ok, out) = run_cli(&[
        "restore",
        "--from",
        archive.to_str().unwrap(),
        "--data-dir",
        busy.to_str().unwrap(),
    ])
    .await;
    assert!(!ok && out.contains("is not empty"), "{out}");
    let restored = root.path().join("restored");
    let (ok, out) = run_cli(&[
        "restore",
        "--from",
        archive.to_str().unwrap(),
        "--data-dir",
        restored.to_str().unwrap(),
    ])
    .await;
    assert!(ok, "{out}");
    assert_eq!(
        std::fs::metadata(restored.join("confab.db"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    for name in confab::backup::DATA_FILES {
        assert_eq!(
            std::fs::read(data.join(name)).ok(),
            std::fs::read(restored.join(name)).ok(),
            "{name}"
        );
    }

    let back = spawn_app_with(|c| c.data_dir = restored.clone()).await;
    // Sessions are in the database: the same tokens work.
    let token = &tokens[1];
    let mut restored_count = 0;
    for ch in CHANNELS {
        let messages = history(&back, token, ch).await;
        for (i, m) in messages.iter().enumerate() {
            assert_eq!(m["seq"].as_i64().unwrap(), i as i64 + 1, "{ch}: gap-free from 1");
        }
        let by_seq: HashMap<i64, &Value> = messages.iter().map(|m| (m["seq"].as_i64().unwrap(), m)).collect();
        for ((c, seq), (id, text)) in before.iter().filter(|((c, _), _)| c == ch) {
            let m = by_seq
                .get(seq)
                .unwrap_or_else(|| panic!("{c} seq {seq} ({text}) acknowledged before the backup is missing"));
            assert_eq!(
                (m["id"].as_i64().unwrap(), m["text"].as_str().unwrap()),
                (*id, text.as_str())
            );
            restored_count += 1;
        }
    }
    assert_eq!(restored_count, before.len());
    for (url, bytes) in &files {
        let r = back.http.get(back.url(url)).bearer_auth(token).send().await.unwrap();
        assert_eq!(r.status(), 200, "{url}");
        assert_eq!(r.bytes().await.unwrap().as_ref(), bytes.as_slice(), "{url}");
    }
    let (s, bot) = back.admin("GET", "/api/v1/bots/helper", None).await;
    assert_eq!(s, 200, "{bot}");
    assert_eq!(bot["settings"]["system_prompt"], "Be kind.", "{bot}");
    let id = endpoint["id"].as_str().unwrap();
    let (s, e) = back
        .admin("GET", &format!("/api/v1/webhooks/endpoints/{id}"), None)
        .await;
    assert_eq!(s, 200, "{e}");
    assert_eq!(e["url"], "https://hooks.example.com/confab");
    // The restored server takes writes where the history left off.
    let next = back.send_as(token, "h", "after the restore").await;
    assert_eq!(
        next["seq"].as_i64().unwrap(),
        history(&back, token, "h").await.len() as i64
    );
}

#[tokio::test]
async fn a_damaged_or_truncated_backup_is_refused_and_leaves_nothing() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let app = spawn_app_with(|c| c.data_dir = data.clone()).await;
    let alice = app.user("alice").await;
    app.group("g", &["alice"]).await;
    for i in 0..20 {
        app.send_as(&alice, "g", &format!("m{i}")).await;
    }
    let config = confab::Config {
        data_dir: data.clone(),
        ..confab::Config::default()
    };
    let archive = root.path().join("b.tar.gz");
    let manifest = tokio::task::spawn_blocking({
        let archive = archive.clone();
        move || confab::backup::backup(&config, &archive)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(manifest.messages, 20);
    // A second backup to the same name is refused, the first left as it was.
    let bytes = std::fs::read(&archive).unwrap();
    let (ok, out) = run_cli(&[
        "backup",
        "--to",
        archive.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ])
    .await;
    assert!(!ok && out.contains("exists already"), "{out}");
    assert_eq!(std::fs::read(&archive).unwrap(), bytes);

    let truncated = root.path().join("truncated.tar.gz");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    refused(&truncated, &root.path().join("t")).await;
    // Damage anywhere after the gzip header (an entry, a tar header, padding, the trailer) is refused, or,
    // where deflate's redundancy makes the flipped byte decode to the same bytes, restores exactly what the
    // undamaged backup restores: never something else.
    let good = root.path().join("good");
    confab::backup::restore(&archive, &good).unwrap();
    let mut refusals = 0;
    for at in (12..bytes.len()).step_by(97) {
        let mut flipped = bytes.clone();
        flipped[at] ^= 0x55;
        let damaged = root.path().join(format!("damaged-{at}.tar.gz"));
        std::fs::write(&damaged, &flipped).unwrap();
        let into = root.path().join(format!("r{at}"));
        match confab::backup::restore(&damaged, &into) {
            Ok(_) => assert_eq!(tree(&into), tree(&good), "damage at byte {at} restored different data"),
            Err(e) => {
                refusals += 1;
                assert!(!into.exists(), "byte {at}: nothing restored ({e:#})");
            }
        }
    }
    assert!(refusals > 0);
    let leftovers: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".confab-restore-"))
        .collect();
    assert!(leftovers.is_empty(), "staging removed: {leftovers:?}");
}

/// Every file under `dir` with its bytes.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

async fn refused(archive: &Path, into: &Path) {
    let (ok, out) = run_cli(&[
        "restore",
        "--from",
        archive.to_str().unwrap(),
        "--data-dir",
        into.to_str().unwrap(),
    ])
    .await;
    assert!(!ok, "{out}");
    assert!(out.starts_with("error: "), "{out}");
    assert!(!into.exists(), "nothing restored: {out}");
    let parent = into.parent().unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(parent)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".confab-restore-"))
        .collect();
    assert!(leftovers.is_empty(), "staging removed: {leftovers:?}");
}

#[tokio::test]
async fn scheduled_backups_are_written_when_due_and_the_oldest_pruned() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("backups");
    std::fs::create_dir_all(&dir).unwrap();
    // Five backups of two days ago: the next one is due at once, and only the newest of them stay.
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 86400);
    for day in 1..=5 {
        let path = dir.join(format!("confab-2026010{day}T000000Z.tar.gz"));
        std::fs::write(&path, b"old").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    std::fs::write(dir.join("notes.txt"), b"not a backup").unwrap();
    let app = spawn_app_with(|c| {
        c.backup.dir = dir.clone();
        c.backup.every = "1h".into();
        c.backup.keep = 3;
    })
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let names = loop {
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        if names.len() == 4 && !names.iter().any(|n| n.as_str() < "confab-20260104") {
            break names;
        }
        assert!(std::time::Instant::now() < deadline, "no scheduled backup: {names:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(
        names[..2],
        ["confab-20260104T000000Z.tar.gz", "confab-20260105T000000Z.tar.gz"],
        "{names:?}"
    );
    assert_eq!(names[3], "notes.txt", "other files are left alone: {names:?}");
    let new = dir.join(&names[2]);
    let restored = root.path().join("restored");
    let manifest = confab::backup::restore(&new, &restored).unwrap();
    assert_eq!(manifest.schema_version, confab_store_sqlite::latest_version());
    assert!(restored.join("confab.db").is_file());
    drop(app);
}
