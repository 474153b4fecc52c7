//! The providers bots can use: those of the configuration file, plus those added through the admin API
//! (stored, and rebuilt on every start). Keys are never held in configurations, only the name of the
//! environment variable that holds them. The configuration file's providers are the operator's and trusted
//! (a local llama.cpp on loopback is normal); those added through the API go through the egress policy: a
//! private or reserved address is refused when added, and their HTTP client checks every address it
//! connects to.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use confab_domain::{DomainError, DomainResult};
use confab_egress::EgressPolicy;
use confab_llm::{
    ChatRequest, EventStream, LlmError, LlmProvider, ProviderConfig, ProviderKind, build_guarded_provider,
    build_provider,
};
use confab_service::bots::ProviderCatalog;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    ConfigFile,
    AdminApi,
}

struct Entry {
    provider: Arc<dyn LlmProvider>,
    config: ProviderConfig,
    source: Source,
    /// Why the provider cannot serve (it then fails every call with this).
    unavailable: Option<String>,
}

/// Looks up environment variables (the process environment in production).
pub type EnvLookup = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Builds providers of kind `builtin` (the in-process model lives in a crate of its own, behind a cargo
/// feature of the server, so it is handed in rather than depended on).
pub type BuiltinBuilder = Arc<dyn Fn(&ProviderConfig) -> Result<Arc<dyn LlmProvider>, LlmError> + Send + Sync>;

/// Which environment variables a provider added through the admin API may name as `api_key_env`: the
/// caller chooses the `base_url` the key is sent to, so only variables the operator set aside for that
/// (a fixed prefix, or listed one by one) may be named; never the server's own secrets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyEnvRule {
    /// Names starting with this (and longer than it) are allowed; empty: no prefix is allowed.
    pub prefix: String,
    /// Names allowed one by one.
    pub allow: Vec<String>,
}

/// The default prefix of the variables providers added through the API may name.
pub const DEFAULT_KEY_ENV_PREFIX: &str = "CONFAB_PROVIDER_KEY_";

impl Default for KeyEnvRule {
    fn default() -> Self {
        KeyEnvRule {
            prefix: DEFAULT_KEY_ENV_PREFIX.into(),
            allow: Vec::new(),
        }
    }
}

impl KeyEnvRule {
    pub fn permits(&self, var: &str) -> bool {
        let by_prefix = !self.prefix.is_empty() && var.len() > self.prefix.len() && var.starts_with(&self.prefix);
        by_prefix || self.allow.iter().any(|a| a == var)
    }

    /// The rule in words, for the error that refuses a name.
    pub fn describe(&self) -> String {
        let mut ways = Vec::new();
        if !self.prefix.is_empty() {
            ways.push(format!("start with {}", self.prefix));
        }
        if !self.allow.is_empty() {
            ways.push(format!("be one of {}", self.allow.join(", ")));
        }
        if ways.is_empty() {
            return "providers added through the API may not name an environment variable \
                    ([provider_api] in the configuration file allows none)"
                .into();
        }
        format!(
            "a provider added through the API may only name an environment variable that the configuration \
             file allows ([provider_api]): it must {}",
            ways.join(" or ")
        )
    }
}

pub struct Catalog {
    entries: RwLock<BTreeMap<String, Entry>>,
    env: EnvLookup,
    builtin: Option<BuiltinBuilder>,
    /// What providers added through the API may reach (default: public addresses only).
    egress: EgressPolicy,
    /// Which key variables providers added through the API may name.
    key_env: KeyEnvRule,
}

impl Catalog {
    /// Builds the configuration file's providers; a bad one stops the start with a clear error.
    pub fn from_config(
        cfgs: &[ProviderConfig],
        env: EnvLookup,
        builtin: Option<BuiltinBuilder>,
    ) -> Result<Catalog, LlmError> {
        let catalog = Catalog {
            entries: RwLock::new(BTreeMap::new()),
            env,
            builtin,
            egress: EgressPolicy::default(),
            key_env: KeyEnvRule::default(),
        };
        for cfg in cfgs {
            if catalog.get(&cfg.name).is_some() {
                return Err(LlmError::Config(format!("provider {:?} is declared twice", cfg.name)));
            }
            let provider = catalog.build(cfg)?;
            catalog.insert(cfg.clone(), provider, Source::ConfigFile, None);
        }
        Ok(catalog)
    }

    /// Sets what providers added through the API may reach (before [`Catalog::load_stored`]).
    pub fn with_egress(mut self, policy: EgressPolicy) -> Self {
        self.egress = policy;
        self
    }

    /// Sets which key variables providers added through the API may name (before [`Catalog::load_stored`]).
    pub fn with_key_env_rule(mut self, rule: KeyEnvRule) -> Self {
        self.key_env = rule;
        self
    }

    fn build(&self, cfg: &ProviderConfig) -> Result<Arc<dyn LlmProvider>, LlmError> {
        match (cfg.kind, &self.builtin) {
            (ProviderKind::Builtin, Some(build)) => build(cfg),
            _ => build_provider(cfg, &*self.env),
        }
    }

    fn insert(
        &self,
        config: ProviderConfig,
        provider: Arc<dyn LlmProvider>,
        source: Source,
        unavailable: Option<String>,
    ) {
        self.entries.write().unwrap_or_else(|e| e.into_inner()).insert(
            config.name.clone(),
            Entry {
                provider,
                config,
                source,
                unavailable,
            },
        );
    }

    /// Adds a provider of the configuration that may fail to build without stopping the start (the
    /// default built-in model, whose file may not have been fetched yet): when it fails, it stays listed
    /// as unavailable and every call fails with the reason, which is logged.
    pub fn add_optional(&self, cfg: ProviderConfig) -> Result<(), String> {
        match self.build(&cfg) {
            Ok(provider) => {
                self.insert(cfg, provider, Source::ConfigFile, None);
                Ok(())
            }
            Err(e) => {
                let reason = e.to_string();
                let provider = Arc::new(Unavailable {
                    name: cfg.name.clone(),
                    reason: reason.clone(),
                });
                self.insert(cfg, provider, Source::ConfigFile, Some(reason.clone()));
                Err(reason)
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn LlmProvider>> {
        self.entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .map(|e| e.provider.clone())
    }

    /// Rebuilds the providers stored through the admin API; ones that no longer build are skipped with a
    /// warning (bots naming them fail visibly until fixed).
    pub fn load_stored(&self, stored: Vec<(String, serde_json::Value)>) {
        for (name, cfg) in stored {
            if let Err(e) = self.add(cfg) {
                tracing::warn!(provider = %name, error = %e, "stored provider not loaded");
            }
        }
    }
}

fn invalid(e: impl std::fmt::Display) -> DomainError {
    DomainError::invalid("provider", e.to_string())
}

impl ProviderCatalog for Catalog {
    fn names(&self) -> Vec<String> {
        self.entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    fn describe(&self) -> Vec<serde_json::Value> {
        self.entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|e| {
                let mut v = serde_json::to_value(&e.config).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    let source = match e.source {
                        Source::ConfigFile => "config_file",
                        Source::AdminApi => "admin_api",
                    };
                    o.insert("source".into(), source.into());
                    // Never says whether a variable outside the allowed set exists.
                    if let Some(var) = &e.config.api_key_env
                        && (e.source == Source::ConfigFile || self.key_env.permits(var))
                    {
                        o.insert("api_key_set".into(), (self.env)(var).is_some().into());
                    }
                    o.insert("available".into(), e.unavailable.is_none().into());
                    if let Some(reason) = &e.unavailable {
                        o.insert("error".into(), reason.clone().into());
                    }
                }
                v
            })
            .collect()
    }

    fn add(&self, config: serde_json::Value) -> DomainResult<String> {
        let cfg: ProviderConfig = serde_json::from_value(config).map_err(invalid)?;
        if cfg.name.trim().is_empty() || cfg.name.len() > 64 {
            return Err(DomainError::invalid("name", "a provider name has 1 to 64 characters"));
        }
        if cfg.kind == ProviderKind::Builtin {
            // It reads a model file from the server's disk and holds it in memory: the operator's call.
            return Err(DomainError::invalid(
                "kind",
                "the built-in model is configured in the configuration file",
            ));
        }
        if let Some(var) = &cfg.api_key_env
            && !self.key_env.permits(var)
        {
            return Err(DomainError::invalid("api_key_env", self.key_env.describe()));
        }
        if cfg.model_path.is_some() {
            // A path on the server's disk: only the operator names those.
            return Err(DomainError::invalid(
                "model_path",
                "model files are configured in the configuration file",
            ));
        }
        if let Some(e) = self.entries.read().unwrap_or_else(|e| e.into_inner()).get(&cfg.name)
            && e.source == Source::ConfigFile
        {
            return Err(DomainError::forbidden(
                "providers of the configuration file are changed there",
            ));
        }
        let provider = build_guarded_provider(&cfg, &*self.env, &self.egress).map_err(invalid)?;
        let name = cfg.name.clone();
        self.insert(cfg, provider, Source::AdminApi, None);
        Ok(name)
    }

    fn replace_stored(&self, name: &str, config: Option<serde_json::Value>) {
        let Some(config) = config else {
            return self.forget_stored(name);
        };
        if let Err(e) = self.add(config) {
            // The stored one no longer builds here: leaving the old one would answer with what was replaced.
            self.forget_stored(name);
            tracing::warn!(provider = %name, error = %e, "stored provider not loaded");
        }
    }

    fn sync_stored(&self, stored: Vec<(String, serde_json::Value)>) {
        let keep: std::collections::HashSet<&str> = stored.iter().map(|(n, _)| n.as_str()).collect();
        let gone: Vec<String> = self
            .entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(n, e)| e.source == Source::AdminApi && !keep.contains(n.as_str()))
            .map(|(n, _)| n.clone())
            .collect();
        for name in gone {
            self.forget_stored(&name);
        }
        for (name, config) in stored {
            self.replace_stored(&name, Some(config));
        }
    }

    fn remove(&self, name: &str) -> DomainResult<()> {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        match entries.get(name) {
            None => Err(DomainError::not_found("provider", name)),
            Some(e) if e.source == Source::ConfigFile => Err(DomainError::forbidden(
                "providers of the configuration file are changed there",
            )),
            Some(_) => {
                entries.remove(name);
                Ok(())
            }
        }
    }
}

impl Catalog {
    fn forget_stored(&self, name: &str) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if entries.get(name).is_some_and(|e| e.source == Source::AdminApi) {
            entries.remove(name);
        }
    }
}

/// A configured provider that could not be built: every call fails with the reason.
struct Unavailable {
    name: String,
    reason: String,
}

#[async_trait::async_trait]
impl LlmProvider for Unavailable {
    fn name(&self) -> &str {
        &self.name
    }

    async fn stream(&self, _req: ChatRequest) -> Result<EventStream, LlmError> {
        Err(LlmError::Config(self.reason.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_variables_need_the_prefix_or_the_allowlist() {
        let rule = KeyEnvRule::default();
        assert!(rule.permits("CONFAB_PROVIDER_KEY_OPENAI"));
        for var in [
            "CONFAB_PROVIDER_KEY_",
            "OPENAI_API_KEY",
            "CONFAB_NIM_APP_SECRET",
            "confab_provider_key_x",
        ] {
            assert!(!rule.permits(var), "{var}");
        }
        let rule = KeyEnvRule {
            prefix: String::new(),
            allow: vec!["OPENAI_API_KEY".into()],
        };
        assert!(rule.permits("OPENAI_API_KEY"));
        assert!(
            !rule.permits("CONFAB_PROVIDER_KEY_OPENAI"),
            "an empty prefix allows nothing"
        );
        assert!(rule.describe().contains("OPENAI_API_KEY"));
    }

    #[test]
    fn stored_providers_naming_other_variables_are_not_loaded_nor_probed() {
        let probed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let seen = probed.clone();
        let env: EnvLookup = Box::new(move |k| {
            seen.lock().unwrap().push(k.to_string());
            Some("value".into())
        });
        let catalog = Catalog::from_config(&[], env, None).unwrap();
        let stored = |var: &str| serde_json::json!({"name": var.to_lowercase(), "kind": "openai", "model": "m", "api_key_env": var});
        catalog.load_stored(vec![
            ("old".into(), stored("OPENAI_API_KEY")),
            ("new".into(), stored("CONFAB_PROVIDER_KEY_NEW")),
        ]);
        assert_eq!(catalog.names(), ["confab_provider_key_new"]);
        let described = serde_json::Value::Array(catalog.describe()).to_string();
        assert!(described.contains("\"api_key_set\":true"), "{described}");
        let probed = probed.lock().unwrap();
        assert!(
            !probed.is_empty() && probed.iter().all(|k| k == "CONFAB_PROVIDER_KEY_NEW"),
            "{probed:?}"
        );
    }
}
