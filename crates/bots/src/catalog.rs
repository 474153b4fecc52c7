//! The providers bots can use: those of the configuration file, plus those added through the admin API
//! (stored, and rebuilt on every start). Keys are never held in configurations, only the name of the
//! environment variable that holds them.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use confab_domain::{DomainError, DomainResult};
use confab_llm::{LlmError, LlmProvider, ProviderConfig, build_provider};
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
}

/// Looks up environment variables (the process environment in production).
pub type EnvLookup = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

pub struct Catalog {
    entries: RwLock<BTreeMap<String, Entry>>,
    env: EnvLookup,
}

impl Catalog {
    /// Builds the configuration file's providers; a bad one stops the start with a clear error.
    pub fn from_config(cfgs: &[ProviderConfig], env: EnvLookup) -> Result<Catalog, LlmError> {
        let mut entries = BTreeMap::new();
        for cfg in cfgs {
            if entries.contains_key(&cfg.name) {
                return Err(LlmError::Config(format!("provider {:?} is declared twice", cfg.name)));
            }
            let provider = build_provider(cfg, &*env)?;
            entries.insert(
                cfg.name.clone(),
                Entry {
                    provider,
                    config: cfg.clone(),
                    source: Source::ConfigFile,
                },
            );
        }
        Ok(Catalog {
            entries: RwLock::new(entries),
            env,
        })
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
                    if let Some(var) = &e.config.api_key_env {
                        o.insert("api_key_set".into(), (self.env)(var).is_some().into());
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
        if let Some(e) = self.entries.read().unwrap_or_else(|e| e.into_inner()).get(&cfg.name)
            && e.source == Source::ConfigFile
        {
            return Err(DomainError::forbidden(
                "providers of the configuration file are changed there",
            ));
        }
        let provider = build_provider(&cfg, &*self.env).map_err(invalid)?;
        let name = cfg.name.clone();
        self.entries.write().unwrap_or_else(|e| e.into_inner()).insert(
            name.clone(),
            Entry {
                provider,
                config: cfg,
                source: Source::AdminApi,
            },
        );
        Ok(name)
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
