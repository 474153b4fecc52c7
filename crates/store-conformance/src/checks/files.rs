//! Upload records: quotas checked with the insert, messages that carry files, the sweep of unattached files.

use confab_domain::model::{FileObject, FileQuota, MessageKind};
use confab_domain::{ChannelSeq, DomainError, FileId, Millis};

use crate::Backend;
use crate::fixture::*;

fn fid(n: u32) -> FileId {
    FileId::parse(&format!("{n:032x}")).unwrap()
}

fn file(n: u32, channel: &str, uploader: Option<&str>, size: u64, created_at: Millis) -> FileObject {
    FileObject {
        id: fid(n),
        channel_id: cid(channel),
        uploader_id: uploader.map(uid),
        name: format!("f{n}.txt"),
        size,
        content_type: "text/plain".into(),
        sha256: format!("{n:064x}"),
        created_at,
    }
}

const ROOMY: FileQuota = FileQuota {
    per_user: 1 << 40,
    total: 1 << 40,
};

/// A message carrying file `n` of the channel.
fn carrying(channel: &str, sender: &str, n: u32) -> confab_domain::model::NewMessage {
    let mut m = text(channel, sender, "");
    m.kind = MessageKind::File;
    m.file_id = Some(fid(n));
    m
}

/// A recorded upload reads back as recorded; its id is taken once (`AlreadyExists`).
pub async fn files_read_back_as_recorded<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    user(s, "a").await;
    group(s, "g", &["a"]).await;
    let mine = file(1, "g", Some("a"), 123, 1_700_000_000_000);
    let app = file(2, "g", None, 7, 1_700_000_000_001);
    s.put_file(mine.clone(), ROOMY).await.unwrap();
    s.put_file(app.clone(), ROOMY).await.unwrap();
    assert_eq!(s.get_file(&mine.id).await.unwrap(), Some(mine.clone()));
    assert_eq!(s.get_file(&app.id).await.unwrap(), Some(app));
    assert_eq!(s.get_file(&fid(3)).await.unwrap(), None);
    let again = file(1, "g", Some("a"), 5, 1_700_000_000_002);
    assert_err!(
        s.put_file(again, ROOMY).await,
        DomainError::AlreadyExists { entity: "file", .. }
    );
    assert_eq!(s.get_file(&mine.id).await.unwrap(), Some(mine));
}

/// An upload that would take its uploader's bytes or all bytes past the quota is `LimitExceeded` (with the
/// limit it passed) and is not recorded; the application's uploads count in all only.
pub async fn file_quotas_count_per_uploader_and_in_all<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    users(s, &["a", "b"]).await;
    group(s, "g", &["a", "b"]).await;
    let quota = FileQuota {
        per_user: 100,
        total: 150,
    };
    s.put_file(file(1, "g", Some("a"), 60, 1), quota).await.unwrap();
    assert_err!(
        s.put_file(file(2, "g", Some("a"), 41, 2), quota).await,
        DomainError::LimitExceeded { limit: 100, .. }
    );
    assert_eq!(s.get_file(&fid(2)).await.unwrap(), None);
    s.put_file(file(3, "g", Some("a"), 40, 3), quota).await.unwrap();
    s.put_file(file(4, "g", None, 40, 4), quota).await.unwrap();
    assert_err!(
        s.put_file(file(5, "g", Some("b"), 11, 5), quota).await,
        DomainError::LimitExceeded { limit: 150, .. }
    );
    assert_err!(
        s.put_file(file(6, "g", None, 11, 6), quota).await,
        DomainError::LimitExceeded { limit: 150, .. }
    );
    assert_eq!(s.get_file(&fid(6)).await.unwrap(), None);
    s.put_file(file(7, "g", Some("b"), 10, 7), quota).await.unwrap();
}

/// Concurrent uploads cannot pass a quota together: of 8 uploads of 30 bytes under a per-user quota of 100,
/// exactly 3 are recorded; the same for the total.
pub async fn concurrent_uploads_cannot_pass_a_quota_together<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    user(s, "a").await;
    group(s, "g", &["a"]).await;
    let race = |first: u32, uploader: Option<&'static str>, quota: FileQuota| {
        let s = s.clone();
        async move {
            let mut tasks = Vec::new();
            for n in first..first + 8 {
                let s = s.clone();
                tasks.push(tokio::spawn(async move {
                    s.put_file(file(n, "g", uploader, 30, n as Millis), quota).await
                }));
            }
            let mut recorded = 0;
            for t in tasks {
                match t.await.unwrap() {
                    Ok(()) => recorded += 1,
                    Err(DomainError::LimitExceeded { .. }) => {}
                    Err(e) => panic!("{e:?}"),
                }
            }
            recorded
        }
    };
    let per_user = FileQuota {
        per_user: 100,
        total: 10_000,
    };
    assert_eq!(race(0, Some("a"), per_user).await, 3);
    let total = FileQuota {
        per_user: 10_000,
        total: 200,
    };
    // 90 bytes stored: room for 3 more uploads of 30 under 200.
    assert_eq!(race(100, None, total).await, 3);
}

/// A file message carries the file record; a file of another channel is `Invalid`, an unknown one
/// `NotFound`, and neither takes a sequence.
pub async fn file_messages_carry_their_file<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    user(s, "a").await;
    group(s, "g", &["a"]).await;
    group(s, "h", &["a"]).await;
    let f = file(1, "g", Some("a"), 10, 1);
    s.put_file(f.clone(), ROOMY).await.unwrap();
    s.put_file(file(2, "h", Some("a"), 10, 2), ROOMY).await.unwrap();
    let m = append(s, carrying("g", "a", 1)).await.unwrap().message;
    assert_eq!(m.file, Some(f.clone()));
    assert_eq!(m.kind, MessageKind::File);
    assert_eq!(s.get_message(m.id).await.unwrap().unwrap().file, Some(f));
    assert_err!(
        append(s, carrying("g", "a", 2)).await,
        DomainError::Invalid { field: "file_id", .. }
    );
    assert_err!(
        append(s, carrying("g", "a", 9)).await,
        DomainError::NotFound { entity: "file", .. }
    );
    assert_eq!(send(s, "g", "a", "next").await.seq, ChannelSeq(2));
}

/// The sweep forgets files created before a time that no message carries (a deleted message carries none),
/// the oldest first, at most `limit`; their bytes leave the quota.
pub async fn unattached_files_are_swept_oldest_first<B: Backend>(b: B) {
    let env = open(b).await;
    let s = &env.store;
    user(s, "a").await;
    group(s, "g", &["a"]).await;
    let quota = FileQuota {
        per_user: 1_000,
        total: 100,
    };
    for (n, created_at) in [(1, 10), (2, 20), (3, 30), (4, 40), (5, 50)] {
        s.put_file(file(n, "g", Some("a"), 20, created_at), quota)
            .await
            .unwrap();
    }
    append(s, carrying("g", "a", 4)).await.unwrap();
    let doomed = append(s, carrying("g", "a", 5)).await.unwrap().message;
    assert_err!(
        s.put_file(file(6, "g", None, 1, 60), quota).await,
        DomainError::LimitExceeded { .. }
    );

    assert!(
        s.delete_unattached_files(10, 10).await.unwrap().is_empty(),
        "created at 10: not before 10"
    );
    assert_eq!(s.delete_unattached_files(35, 1).await.unwrap(), [fid(1)]);
    assert_eq!(
        sorted_ids(s.delete_unattached_files(35, 10).await.unwrap()),
        [fid(2), fid(3)]
    );
    assert!(s.delete_unattached_files(100, 10).await.unwrap().is_empty());
    s.delete_message(doomed.id).await.unwrap();
    assert_eq!(s.delete_unattached_files(100, 10).await.unwrap(), [fid(5)]);
    for n in [1, 2, 3, 5] {
        assert_eq!(s.get_file(&fid(n)).await.unwrap(), None);
    }
    assert!(s.get_file(&fid(4)).await.unwrap().is_some());
    // 20 bytes left of 100.
    s.put_file(file(6, "g", None, 80, 60), quota).await.unwrap();
}

fn sorted_ids(mut ids: Vec<FileId>) -> Vec<FileId> {
    ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    ids
}
