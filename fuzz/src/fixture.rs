//! One real server core per fuzzing process, built on first use: a SQLite store in a temporary directory, the
//! bus, the service, the WebSocket hub and the native router, with users alice and bob in a group `fz` and a
//! direct channel. Targets that need the service share it (building it per input would be most of the work).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use confab_api_native::{AppState, HttpLimits};
use confab_domain::model::{FileObject, NewUser};
use confab_domain::{ChannelId, FileId, Limits, UserId};
use confab_gateway::{GatewayConfig, Hub};
use confab_service::blobs::{FileBlobs, LocalBlobs};
use confab_service::{Actor, Confab, NewGroup, ServiceConfig, SessionGrant};
use confab_store_sqlite::{SqliteConfig, SqliteStore, Synchronous};
use tokio_util::sync::CancellationToken;

pub const MASTER: &str = "fuzzing-master-token-0123456789abcdef";
/// Largest upload the fixture accepts (small: inputs are small, and every byte goes to disk).
pub const MAX_UPLOAD: u64 = 64 * 1024;

pub struct Fixture {
    pub rt: tokio::runtime::Runtime,
    pub service: Arc<Confab>,
    pub bus: Arc<confab_bus::LocalBus>,
    /// The store under the service, for the parts the binary wires to it (the webhook relay).
    store: confab_domain::ports::DynStore,
    pub hub: Arc<Hub>,
    /// Where the service keeps uploaded files' bytes.
    pub blobs: Arc<LocalBlobs>,
    pub router: axum::Router,
    /// alice's session, as the WebSocket upgrade resolves it.
    pub alice: SessionGrant,
    pub gateway: GatewayConfig,
    sendbird: OnceLock<axum::Router>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    /// A stored file's record and the length of its bytes as read back through the service; then its bytes
    /// are removed, which keeps the fixture's disk use bounded over a long run.
    pub async fn read_back_and_forget(&self, id: &FileId) -> (FileObject, u64) {
        let (obj, mut bytes) = self.service.open_file(&Actor::Admin, id).await.expect("stored");
        let mut len = 0u64;
        while let Some(chunk) = futures_util::StreamExt::next(&mut bytes).await {
            len += chunk.expect("readable").len() as u64;
        }
        let _ = FileBlobs::delete(&*self.blobs, id).await;
        (obj, len)
    }

    /// The `/v3` router (Sendbird) over the same service, with its webhook relay (webhooks and bot callbacks),
    /// built on first use (only its targets pay for it). Outbound requests stay behind the egress policy.
    pub fn sendbird(&self) -> &axum::Router {
        self.sendbird.get_or_init(|| {
            self.rt.block_on(async {
                let shutdown = CancellationToken::new();
                let bus: confab_domain::ports::DynBus = self.bus.clone();
                let egress = confab_egress::EgressPolicy::default();
                let relay =
                    confab_outbox::Relay::start(self.store.clone(), &bus, egress.clone(), Default::default(), shutdown)
                        .await
                        .expect("relay");
                let hooks = confab_api_sendbird::webhooks::SendbirdWebhooks::start(
                    self.service.clone(),
                    egress,
                    relay,
                    MASTER,
                    "fuzz".into(),
                )
                .await
                .expect("sendbird webhooks");
                let limits = confab_api_sendbird::SendbirdLimits {
                    max_body_bytes: 64 * 1024,
                    max_upload_request_bytes: MAX_UPLOAD as usize + 64 * 1024,
                    request_timeout: Duration::from_secs(30),
                };
                confab_api_sendbird::router(self.service.clone(), hooks, limits)
            })
        })
    }
}

pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(build)
}

fn build() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let gateway = GatewayConfig {
        // No frame-rate pause (it would only make the fuzzer wait) and read positions written at once, so
        // every reply comes back in frame order and the target can check them all.
        max_frames_per_sec: 0,
        read_interval: Duration::ZERO,
        max_sessions_per_user: 0,
        fanout_shards: 1,
        ..GatewayConfig::default()
    };
    let bus = Arc::new(confab_bus::LocalBus::default());
    let blobs = Arc::new(LocalBlobs::new(dir.path().join("files")));
    let (store, service, hub, alice, router) = rt.block_on(async {
        let mut store_cfg = SqliteConfig::new(dir.path().join("fuzz.db"));
        // Durability is not what is fuzzed here: no fsync per commit, which would only slow every input down.
        store_cfg.synchronous = Synchronous::Normal;
        let store: confab_domain::ports::DynStore = Arc::new(SqliteStore::open(store_cfg, bus.clone()).expect("store"));
        let service = Confab::builder(
            store.clone(),
            bus.clone(),
            MASTER,
            ServiceConfig {
                limits: Limits::default(),
                files_dir: dir.path().join("files"),
                max_upload_bytes: MAX_UPLOAD,
                uploads: Default::default(),
                session_ttl: None,
                moderation: Default::default(),
            },
        )
        .file_blobs(blobs.clone())
        .build()
        .expect("service");
        for id in ["alice", "bob"] {
            let user = NewUser {
                id: UserId::parse(id).unwrap(),
                nickname: id.into(),
                profile_url: String::new(),
                metadata: Default::default(),
                is_bot: false,
            };
            service.create_user(&Actor::Admin, user).await.expect("user");
        }
        let (alice, bob) = (UserId::parse("alice").unwrap(), UserId::parse("bob").unwrap());
        let group = NewGroup {
            id: Some(ChannelId::parse("fz").unwrap()),
            name: "fuzz".into(),
            cover_url: String::new(),
            custom_type: String::new(),
            data: None,
            members: vec![alice.clone(), bob.clone()],
            distinct: false,
        };
        service.create_group(&Actor::Admin, group).await.expect("group");
        service
            .open_direct(&Actor::Admin, &alice, &bob)
            .await
            .expect("direct channel");
        let issued = service
            .issue_session(&Actor::Admin, &UserId::parse("alice").unwrap())
            .await
            .expect("session");
        let alice = service.session_grant(&issued.token).await.expect("grant");
        let hub = Hub::start(service.clone(), gateway.clone());
        let state = AppState {
            service: service.clone(),
            hub: hub.clone(),
            gateway: gateway.clone(),
            shutdown: CancellationToken::new(),
            dev_login: false,
        };
        let limits = HttpLimits {
            max_body_bytes: 64 * 1024,
            max_upload_request_bytes: MAX_UPLOAD as usize + 64 * 1024,
            request_timeout: Duration::from_secs(30),
        };
        let router = confab_api_native::router(state, &limits);
        (store, service, hub, alice, router)
    });
    Fixture {
        rt,
        service,
        bus,
        store,
        hub,
        blobs,
        router,
        alice,
        gateway,
        sendbird: OnceLock::new(),
        _dir: dir,
    }
}

/// A multipart request from fuzz input: its first line is the boundary, the rest the body, which arrives in
/// pieces of 1 to 64 bytes (by its first byte), as from a socket, so the parser meets every boundary split.
/// `None` when the boundary cannot be a header value.
pub fn multipart_request(data: &[u8], uri: &str, auth: (&str, &str)) -> Option<axum::http::Request<axum::body::Body>> {
    use axum::http::header;
    let (boundary, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b"X"[..], data),
    };
    let boundary = std::str::from_utf8(boundary).ok()?;
    let content_type = header::HeaderValue::from_str(&format!("multipart/form-data; boundary={boundary}")).ok()?;
    let step = body.first().map_or(64, |b| (*b as usize % 64) + 1);
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> = body.chunks(step).map(|c| Ok(c.to_vec())).collect();
    Some(
        axum::http::Request::post(uri)
            .header(auth.0, auth.1)
            .header(header::CONTENT_TYPE, content_type)
            .body(axum::body::Body::from_stream(futures_util::stream::iter(pieces)))
            .unwrap(),
    )
}
