//! The port's behaviour on `object_store`'s in-memory store (single puts and multipart uploads), and on an
//! S3 API server (moto's, see [`super::testing`]).

use object_store::memory::InMemory;

use super::testing::{Moto, test_credentials};
use super::*;

fn id(n: u8) -> FileId {
    FileId::parse(&format!("{n:02x}").repeat(16)).unwrap()
}

async fn read_all(mut s: ByteStream) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

/// Bytes that differ from one position to the next, so a misplaced part shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

/// Stores files of `sizes` (spooled to temporary files first, as the service does), reads each back whole,
/// deletes them (twice), and finds them gone.
async fn round_trip(blobs: &ObjectBlobs, sizes: &[usize]) {
    let dir = tempfile::tempdir().unwrap();
    for (n, size) in sizes.iter().enumerate() {
        let (id, bytes) = (id(n as u8 + 1), pattern(*size));
        let local = dir.path().join(id.as_str());
        std::fs::write(&local, &bytes).unwrap();
        assert!(matches!(blobs.get(&id).await, Err(DomainError::NotFound { .. })));
        blobs.put(&id, &local, *size as u64).await.unwrap();
        assert!(
            read_all(blobs.get(&id).await.unwrap()).await == bytes,
            "{size} bytes read back"
        );
        blobs.delete(&id).await.unwrap();
        blobs.delete(&id).await.unwrap();
        assert!(matches!(blobs.get(&id).await, Err(DomainError::NotFound { .. })));
    }
}

#[tokio::test]
async fn files_round_trip_through_single_puts_and_multipart_uploads() {
    let store = Arc::new(InMemory::new());
    let blobs = ObjectBlobs::new(store.clone(), "/confab/files/", "memory".into());
    round_trip(
        &blobs,
        &[
            1,
            1000,
            SINGLE_PUT_MAX as usize,
            SINGLE_PUT_MAX as usize + PART_SIZE + 3,
        ],
    )
    .await;
    blobs.probe("node-a").await.unwrap();
    let left = store.list(None).collect::<Vec<_>>().await;
    assert!(left.is_empty(), "nothing left behind: {left:?}");
    assert_eq!(blobs.describe(), "memory, under confab/files/");
    assert_eq!(
        blobs.location(&id(0xab)).as_ref(),
        format!("confab/files/ab/{}", id(0xab))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_round_trip_through_an_s3_api_server() {
    let Some(moto) = Moto::start() else { return };
    test_credentials();
    moto.create_bucket("confab-files").await;
    let cfg = S3Config {
        bucket: "confab-files".into(),
        region: "us-east-1".into(),
        endpoint: moto.endpoint(),
        prefix: "node-files".into(),
        allow_http: true,
    };
    let blobs = ObjectBlobs::s3(&cfg).unwrap();
    blobs.probe("node-a").await.unwrap();
    round_trip(&blobs, &[5, SINGLE_PUT_MAX as usize + PART_SIZE + 3]).await;

    // A wrong bucket is a clear error at the probe, naming where.
    let wrong = ObjectBlobs::s3(&S3Config {
        bucket: "no-such-bucket".into(),
        ..cfg.clone()
    })
    .unwrap();
    let e = wrong.probe("node-a").await.unwrap_err().to_string();
    assert!(e.contains("no-such-bucket"), "{e}");
    // Plain http is refused unless allowed.
    let plain = ObjectBlobs::s3(&S3Config {
        allow_http: false,
        ..cfg
    })
    .unwrap();
    assert!(plain.probe("node-a").await.is_err());
}
