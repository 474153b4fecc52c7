//! Configuration: defaults, then the optional TOML file, then `CONFAB_SECTION__KEY` environment variables.
//! The listen address and data dir also come from command-line flags (see `main.rs`).

mod backup;
mod files;
mod nodes;
mod outbound;
mod telemetry;
pub use telemetry::TelemetryConfig;

pub use backup::BackupConfig;
pub use files::{FilesBackend, FilesConfig};
pub use nodes::{BusBackend, BusConfig, ClusterConfig, StorageBackend, StorageConfig};
pub use outbound::{EgressConfig, PreSendWebhookConfig, ProviderApiConfig, WebhooksConfig};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use confab_domain::Limits;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub storage: StorageConfig,
    /// This node among several sharing one PostgreSQL (`[cluster]`).
    pub cluster: ClusterConfig,
    /// How events reach the other nodes (`[bus]`).
    pub bus: BusConfig,
    pub limits: Limits,
    pub http: HttpConfig,
    pub websocket: WebSocketConfig,
    pub sessions: SessionConfig,
    /// LLM providers bots may use (`[[providers]]`). API keys come from the environment variable each names.
    pub providers: Vec<confab_llm::ProviderConfig>,
    /// Bots declared in the configuration (`[[bots]]`): created on start, settings updated on each start.
    pub bots: Vec<BotDecl>,
    pub bot_runtime: BotRuntimeConfig,
    /// The built-in model and the bot that uses it out of the box.
    pub builtin: BuiltinConfig,
    /// Outbound webhooks and bot callbacks.
    pub webhooks: WebhooksConfig,
    /// Which private ranges outbound requests carrying application data may reach (`[egress]`).
    pub egress: EgressConfig,
    /// What LLM providers added through the admin API may use (`[provider_api]`).
    pub provider_api: ProviderApiConfig,
    /// The Sendbird-compatible surface under `/v3`.
    pub sendbird: SendbirdConfig,
    /// The NIM-compatible surface under `/nimserver`.
    pub nim: NimConfig,
    /// Content rules every message goes through (`[moderation]`, `[[moderation.rules]]`).
    pub moderation: confab_moderation::PolicyConfig,
    /// The application's check of every message before it is stored (`[pre_send_webhook]`).
    pub pre_send_webhook: PreSendWebhookConfig,
    /// An LLM's check of every message before it is stored (`[moderation_llm]`).
    pub moderation_llm: ModerationLlmConfig,
    /// The web chat and admin console served at `/` and `/admin`.
    pub web: WebConfig,
    pub uploads: UploadsConfig,
    /// Where uploaded files' bytes are kept (`[files]`).
    pub files: FilesConfig,
    /// OpenTelemetry traces over OTLP (`[telemetry]`; off while `otlp_endpoint` is empty).
    pub telemetry: TelemetryConfig,
    /// Scheduled backups (`[backup]`).
    pub backup: BackupConfig,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    /// Serve the web app (`/`, `/admin`, `/assets/*`).
    pub enabled: bool,
    /// Development only: anyone reaching the server may sign in as any user, created on the spot
    /// (`POST /api/v1/dev/login`). Also `serve --dev-login`.
    pub dev_login: bool,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            enabled: true,
            dev_login: false,
        }
    }
}

/// The optional LLM moderation check: off while `provider` is empty.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModerationLlmConfig {
    /// A provider name (`[[providers]]`, or `builtin`).
    pub provider: String,
    /// Empty: the provider's own model.
    pub model: String,
    pub timeout_ms: u64,
    /// On timeout or error: allow the message (true) or refuse it (false).
    pub fail_open: bool,
    /// Empty: the built-in moderation instructions.
    pub instructions: String,
}

impl Default for ModerationLlmConfig {
    fn default() -> Self {
        ModerationLlmConfig {
            provider: String::new(),
            model: String::new(),
            timeout_ms: 2000,
            fail_open: true,
            instructions: String::new(),
        }
    }
}

impl ModerationLlmConfig {
    pub fn check(&self) -> Option<confab_bots::moderator::LlmCheckConfig> {
        (!self.provider.is_empty()).then(|| confab_bots::moderator::LlmCheckConfig {
            provider: self.provider.clone(),
            model: (!self.model.is_empty()).then(|| self.model.clone()),
            timeout: Duration::from_millis(self.timeout_ms.max(1)),
            fail_open: self.fail_open,
            instructions: if self.instructions.trim().is_empty() {
                confab_bots::moderator::DEFAULT_INSTRUCTIONS.to_string()
            } else {
                self.instructions.clone()
            },
        })
    }
}

/// NIM's application credentials. Empty: `CONFAB_NIM_APP_KEY` / `CONFAB_NIM_APP_SECRET`, else the pair stored
/// in the data dir (`nim_app`, generated on the first start).
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NimConfig {
    pub app_key: String,
    pub app_secret: String,
    /// Where NIM-format copies of every message are POSTed (NIM's data sync); empty: none.
    pub webhook_url: String,
    /// `sendMsg` and `sendBatchMsg` calls per second for the application (NIM's limit); more get 416.
    pub sends_per_sec: u32,
    /// Signed requests remembered for the clock window, so a repeat is refused (431); when that many are
    /// live, new requests get 416 until some expire (nothing is evicted early).
    pub replay_memory: usize,
}

impl Default for NimConfig {
    fn default() -> Self {
        NimConfig {
            app_key: String::new(),
            app_secret: String::new(),
            webhook_url: String::new(),
            sends_per_sec: 100,
            replay_memory: confab_api_nim::auth::DEFAULT_REPLAY_MEMORY,
        }
    }
}

impl std::fmt::Debug for NimConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NimConfig")
            .field("app_key", &self.app_key)
            .field("app_secret", &"<redacted>")
            .field("webhook_url", &self.webhook_url)
            .field("sends_per_sec", &self.sends_per_sec)
            .field("replay_memory", &self.replay_memory)
            .finish()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SendbirdConfig {
    /// The `app_id` in webhook payloads (Sendbird's application id).
    pub app_id: String,
}

impl Default for SendbirdConfig {
    fn default() -> Self {
        SendbirdConfig {
            app_id: "confab".into(),
        }
    }
}

/// The zero-configuration bot: provider `builtin` (the built-in model, run in process) and bot `assistant`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BuiltinConfig {
    /// Serve the built-in model as provider `builtin`, unless `[[providers]]` declares that name.
    pub enabled: bool,
    /// The model file (GGUF; a relative path is taken from the working directory). Any llama-architecture
    /// chat model works; `scripts/fetch-model.sh` fetches the default one.
    pub model_path: PathBuf,
    /// The bot created to answer with it, unless `[[bots]]` declares that id ("" for none).
    pub bot: String,
    /// Conversations generated at once (one batched step for all) and waiting; see `confab-llm-local`.
    pub max_active: usize,
    pub max_queue: usize,
}

impl Default for BuiltinConfig {
    fn default() -> Self {
        let p = confab_llm::ProviderConfig::new("builtin", confab_llm::ProviderKind::Builtin);
        BuiltinConfig {
            enabled: true,
            model_path: PathBuf::from("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
            bot: "assistant".into(),
            max_active: p.max_active,
            max_queue: p.max_queue,
        }
    }
}

impl BuiltinConfig {
    pub const PROVIDER: &'static str = "builtin";

    pub fn provider(&self) -> confab_llm::ProviderConfig {
        let mut p = confab_llm::ProviderConfig::new(Self::PROVIDER, confab_llm::ProviderKind::Builtin);
        p.model_path = Some(self.model_path.to_string_lossy().into_owned());
        p.max_active = self.max_active.max(1);
        p.max_queue = self.max_queue;
        p
    }

    /// The default bot: short answers, a small context (the default model is small).
    pub fn bot(&self) -> BotDecl {
        BotDecl {
            id: self.bot.clone(),
            nickname: "Assistant".into(),
            profile_url: String::new(),
            settings: confab_domain::bot::BotSettings {
                provider: Self::PROVIDER.into(),
                system_prompt: "You are a helpful assistant in a chat. Answer briefly.".into(),
                max_output_tokens: 256,
                context_messages: 8,
                context_tokens: 1024,
                ..Default::default()
            },
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BotDecl {
    pub id: String,
    #[serde(default)]
    pub nickname: String,
    #[serde(default)]
    pub profile_url: String,
    #[serde(default)]
    pub settings: confab_domain::bot::BotSettings,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BotRuntimeConfig {
    /// Replies generated at once over all bots.
    pub max_concurrent_replies: usize,
    /// How long a reply may wait for a free slot before it fails as busy.
    pub queue_timeout_secs: u64,
    /// How often a generating reply's text is saved.
    pub save_interval_ms: u64,
    /// Bot triggers per user per minute.
    pub user_triggers_per_minute: u32,
    /// Longest text of one bot reply, in bytes, whatever the provider streams (each bot's
    /// `max_output_tokens` is enforced locally too); a reply that reaches it ends `complete`, reason `length`.
    pub max_reply_bytes: usize,
    /// Open the provider call while the triggering message commits, when the runtime can decide from memory
    /// that it triggers a bot (see ARCHITECTURE.md, the path of one bot reply). Off: every reply starts
    /// after the commit event.
    pub early_start: bool,
}

impl Default for BotRuntimeConfig {
    fn default() -> Self {
        let d = confab_bots::RuntimeConfig::default();
        BotRuntimeConfig {
            max_concurrent_replies: d.max_concurrent_replies,
            queue_timeout_secs: d.queue_timeout.as_secs(),
            save_interval_ms: d.save_interval.as_millis() as u64,
            user_triggers_per_minute: d.user_triggers_per_minute,
            max_reply_bytes: d.max_reply_bytes,
            early_start: d.early_start,
        }
    }
}

impl BotRuntimeConfig {
    pub fn runtime(&self) -> confab_bots::RuntimeConfig {
        confab_bots::RuntimeConfig {
            max_concurrent_replies: self.max_concurrent_replies.max(1),
            queue_timeout: Duration::from_secs(self.queue_timeout_secs.max(1)),
            save_interval: Duration::from_millis(self.save_interval_ms.max(10)),
            user_triggers_per_minute: self.user_triggers_per_minute.max(1),
            max_reply_bytes: self.max_reply_bytes.max(1),
            early_start: self.early_start,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub max_body_bytes: usize,
    pub max_upload_bytes: u64,
    /// A client must send a request's headers within this time (slowloris guard).
    pub header_read_timeout_secs: u64,
    /// A request (not a WebSocket) must be answered within this time.
    pub request_timeout_secs: u64,
    pub max_connections: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketConfig {
    pub max_frame_bytes: usize,
    pub queue_frames: usize,
    pub queue_bytes: usize,
    pub heartbeat_secs: u64,
    pub idle_timeout_secs: u64,
    pub hello_timeout_secs: u64,
    pub max_inflight: usize,
    /// Open WebSocket sessions per user; one more is refused with close code 4029. 0: no limit.
    pub max_sessions_per_user: usize,
    /// Client frames per second per session, sustained (then `frame_burst` at once); beyond, the server stops
    /// reading the socket until the rate allows. 0: no limit.
    pub max_frames_per_sec: u32,
    pub frame_burst: u32,
    /// A channel's read position is written at most this often per session (the latest position wins).
    pub read_interval_ms: u64,
}

/// Limits on uploaded files (the size of one file is `http.max_upload_bytes`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UploadsConfig {
    /// Uploads one user may start per minute; uploads of the application (master token) are not limited.
    pub user_per_minute: u32,
    /// Bytes of all files one user uploaded.
    pub user_quota_bytes: u64,
    /// Bytes of all stored files.
    pub total_quota_bytes: u64,
    /// A file no message carries is removed once this old (seconds).
    pub unattached_ttl_secs: u64,
}

impl Default for UploadsConfig {
    fn default() -> Self {
        let d = confab_service::files::UploadLimits::default();
        UploadsConfig {
            user_per_minute: d.user_per_minute,
            user_quota_bytes: d.user_quota_bytes,
            total_quota_bytes: d.total_quota_bytes,
            unattached_ttl_secs: d.unattached_ttl.as_secs(),
        }
    }
}

impl UploadsConfig {
    pub fn limits(&self) -> confab_service::files::UploadLimits {
        confab_service::files::UploadLimits {
            user_per_minute: self.user_per_minute,
            user_quota_bytes: self.user_quota_bytes,
            total_quota_bytes: self.total_quota_bytes,
            unattached_ttl: std::time::Duration::from_secs(self.unattached_ttl_secs),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// Lifetime of issued session tokens in seconds; 0 means until revoked.
    pub ttl_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".parse().expect("valid"),
            data_dir: PathBuf::from("./confab-data"),
            storage: StorageConfig::default(),
            cluster: ClusterConfig::default(),
            bus: BusConfig::default(),
            limits: Limits::default(),
            http: HttpConfig::default(),
            websocket: WebSocketConfig::default(),
            sessions: SessionConfig::default(),
            providers: Vec::new(),
            bots: Vec::new(),
            bot_runtime: BotRuntimeConfig::default(),
            builtin: BuiltinConfig::default(),
            webhooks: WebhooksConfig::default(),
            egress: EgressConfig::default(),
            provider_api: ProviderApiConfig::default(),
            sendbird: SendbirdConfig::default(),
            nim: NimConfig::default(),
            moderation: confab_moderation::PolicyConfig::default(),
            pre_send_webhook: PreSendWebhookConfig::default(),
            moderation_llm: ModerationLlmConfig::default(),
            web: WebConfig::default(),
            uploads: UploadsConfig::default(),
            files: FilesConfig::default(),
            telemetry: TelemetryConfig::default(),
            backup: BackupConfig::default(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_body_bytes: 1024 * 1024,
            max_upload_bytes: 25 * 1024 * 1024,
            header_read_timeout_secs: 10,
            request_timeout_secs: 30,
            max_connections: 50_000,
        }
    }
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        let g = confab_gateway::GatewayConfig::default();
        WebSocketConfig {
            max_frame_bytes: g.max_message_bytes,
            queue_frames: g.queue_frames,
            queue_bytes: g.queue_bytes,
            heartbeat_secs: g.heartbeat.as_secs(),
            idle_timeout_secs: g.idle_timeout.as_secs(),
            hello_timeout_secs: g.hello_timeout.as_secs(),
            max_inflight: g.max_inflight,
            max_sessions_per_user: g.max_sessions_per_user,
            max_frames_per_sec: g.max_frames_per_sec,
            frame_burst: g.frame_burst,
            read_interval_ms: g.read_interval.as_millis() as u64,
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            ttl_secs: 30 * 24 * 3600,
        }
    }
}

impl Config {
    /// Defaults, then the TOML file (if any), then nested environment variables such as
    /// `CONFAB_LIMITS__USER_SEND_PER_SEC=50` (a double underscore separates section and key).
    pub fn load(file: Option<&std::path::Path>) -> Result<Config, Box<figment::Error>> {
        Self::figment(file).extract().map_err(Box::new)
    }

    /// Where [`Config::load`] reads from, in order (later sources win).
    pub fn figment(file: Option<&std::path::Path>) -> Figment {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            fig = fig.merge(Toml::file_exact(f));
        }
        fig.merge(
            Env::prefixed("CONFAB_")
                .split("__")
                .filter(|k| k.as_str().contains('.')),
        )
    }

    /// The egress policy: `[egress] allow_private` and the older `[webhooks] allow_private` together.
    pub fn egress_policy(&self) -> Result<confab_egress::EgressPolicy, String> {
        let allow: Vec<String> = self
            .egress
            .allow_private
            .iter()
            .chain(&self.webhooks.allow_private)
            .cloned()
            .collect();
        confab_egress::EgressPolicy::parse(&allow)
    }

    pub fn gateway(&self) -> confab_gateway::GatewayConfig {
        let w = &self.websocket;
        confab_gateway::GatewayConfig {
            queue_frames: w.queue_frames,
            queue_bytes: w.queue_bytes,
            max_message_bytes: w.max_frame_bytes,
            heartbeat: Duration::from_secs(w.heartbeat_secs.max(1)),
            idle_timeout: Duration::from_secs(w.idle_timeout_secs.max(2)),
            hello_timeout: Duration::from_secs(w.hello_timeout_secs.max(1)),
            max_inflight: w.max_inflight.max(1),
            max_sessions_per_user: w.max_sessions_per_user,
            max_frames_per_sec: w.max_frames_per_sec,
            frame_burst: w.frame_burst.max(1),
            read_interval: Duration::from_millis(w.read_interval_ms),
            ..confab_gateway::GatewayConfig::default()
        }
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's Jail API fixes the closure's error type
mod tests {
    use super::*;

    #[test]
    fn file_then_env_override_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "c.toml",
                "[limits]\nmax_text_chars = 100\n[websocket]\nqueue_frames = 10\n",
            )?;
            jail.set_env("CONFAB_LIMITS__MAX_TEXT_CHARS", "200");
            jail.set_env("CONFAB_API_TOKEN", "ignored-here");
            let c = Config::load(Some(std::path::Path::new("c.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.limits.max_text_chars, 200);
            assert_eq!(c.websocket.queue_frames, 10);
            assert_eq!(c.limits.max_mentions, Limits::default().max_mentions);
            Ok(())
        });
    }

    #[test]
    fn the_egress_allowlist_reads_both_keys() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "c.toml",
                "[egress]\nallow_private = [\"10.0.0.0/8\"]\n[webhooks]\nallow_private = [\"127.0.0.1\"]\n",
            )?;
            let c = Config::load(Some(std::path::Path::new("c.toml"))).map_err(|e| e.to_string())?;
            let policy = c.egress_policy()?;
            for ip in ["10.1.2.3", "127.0.0.1"] {
                assert!(policy.allows(ip.parse().unwrap()), "{ip}");
            }
            assert!(!policy.allows("169.254.169.254".parse().unwrap()));
            assert!(!Config::default().egress_policy()?.allows("127.0.0.1".parse().unwrap()));
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_in_sections_are_errors() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[limits]\nmax_text_char = 100\n")?;
            assert!(Config::load(Some(std::path::Path::new("c.toml"))).is_err());
            Ok(())
        });
    }

    #[test]
    fn the_example_file_shows_the_defaults() {
        let from_file: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(include_str!("../../../confab.example.toml")))
            .extract()
            .unwrap();
        assert_eq!(
            serde_json::to_value(&from_file).unwrap(),
            serde_json::to_value(Config::default()).unwrap()
        );
    }

    #[test]
    fn the_commented_provider_and_bot_examples_parse() {
        // Uncomment the example file's [[providers]] and [[bots]] blocks and load them.
        let uncommented: String = include_str!("../../../confab.example.toml")
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if rest.starts_with("[[") || rest.contains(" = ") => rest,
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let c: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(&uncommented))
            .extract()
            .unwrap();
        assert_eq!(c.providers.len(), 4);
        assert_eq!(c.bots.len(), 1);
        assert_eq!(c.moderation.rules.len(), 1);
        confab_moderation::Policy::compile(&c.moderation).expect("the example rule compiles");
        assert_eq!(c.bots[0].settings.fallbacks, ["claude"]);
    }
}
