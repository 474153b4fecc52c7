//! The checks of values a loaded configuration needs before anything starts: what contradicts itself, what
//! names something missing, and secrets that are weak or kept where they should not be.

use std::collections::HashSet;

use confab_llm::ProviderKind;

use super::{Finding, Loaded};
use crate::config::{BuiltinConfig, BusBackend, FilesBackend, StorageBackend};
use crate::master_token;

type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Every finding of the values of `loaded` (`env` reads the environment).
pub fn values(loaded: &Loaded, env: Env) -> Vec<Finding> {
    let mut found = Vec::new();
    let c = &loaded.config;
    storage(loaded, &mut found);
    if let Err(e) = c.egress_policy() {
        found.push(Finding::error("egress.allow_private", e));
    }
    if let Err(e) = confab_moderation::Policy::compile(&c.moderation) {
        found.push(Finding::error("moderation.rules", e.to_string()));
    }
    let providers = providers(c, env, &mut found);
    bots(c, &providers, &mut found);
    if !c.moderation_llm.provider.is_empty() && !providers.contains(c.moderation_llm.provider.as_str()) {
        found.push(Finding::error(
            "moderation_llm.provider",
            format!(
                "no provider {:?}: declare it in [[providers]], or use \"builtin\"",
                c.moderation_llm.provider
            ),
        ));
    }
    secrets(loaded, env, &mut found);
    backup(c, &mut found);
    telemetry(c, &mut found);
    if !c.nim.webhook_url.is_empty()
        && let Err(e) = c.egress_policy().unwrap_or_default().check_url(&c.nim.webhook_url)
    {
        found.push(Finding::error("nim.webhook_url", e.to_string()));
    }
    found
}

fn storage(loaded: &Loaded, found: &mut Vec<Finding>) {
    let c = &loaded.config;
    match c.storage.backend {
        StorageBackend::Postgres if c.storage.postgres_url.trim().is_empty() => found.push(Finding::error(
            "storage.postgres_url",
            "storage.backend = \"postgres\" needs it (or CONFAB_STORAGE__POSTGRES_URL), e.g. \
             postgres://confab@db.internal:5432/confab",
        )),
        StorageBackend::Postgres
            if loaded.from_file("storage.postgres_url") && has_password(&c.storage.postgres_url) =>
        {
            found.push(Finding::warning(
                "storage.postgres_url",
                "holds a password in the configuration file: set it with CONFAB_STORAGE__POSTGRES_URL (or a \
                 .pgpass file) instead",
            ))
        }
        _ => {}
    }
    if c.bus.backend == BusBackend::Nats && c.storage.backend != StorageBackend::Postgres {
        found.push(Finding::error(
            "bus.backend",
            "\"nats\" joins nodes that share one PostgreSQL database: set storage.backend = \"postgres\", or \
             bus.backend = \"local\" for one node",
        ));
    }
    if c.storage.backend == StorageBackend::Postgres && c.bus.backend == BusBackend::Local {
        found.push(Finding::warning(
            "bus.backend",
            "\"local\" with PostgreSQL: fine for one node; several nodes on this database need bus.backend = \
             \"nats\", or their clients miss each other's messages",
        ));
    }
    if c.files.backend == FilesBackend::S3 && c.files.s3_bucket.trim().is_empty() {
        found.push(Finding::error(
            "files.s3_bucket",
            "files.backend = \"s3\" needs a bucket",
        ));
    }
    if c.storage.backend == StorageBackend::Sqlite {
        writable_dir(&c.data_dir, found);
    }
}

/// The data dir exists and is writable, or can be created.
fn writable_dir(dir: &std::path::Path, found: &mut Vec<Finding>) {
    let mut probe = dir;
    while !probe.exists() {
        match probe.parent() {
            Some(p) if !p.as_os_str().is_empty() => probe = p,
            _ => return,
        }
    }
    let meta = std::fs::metadata(probe);
    let writable = meta.as_ref().is_ok_and(|m| m.is_dir() && !m.permissions().readonly());
    if !writable {
        found.push(Finding::error(
            "data_dir",
            format!("{} is not a writable directory", probe.display()),
        ));
    }
}

fn has_password(url: &str) -> bool {
    url::Url::parse(url).is_ok_and(|u| u.password().is_some_and(|p| !p.is_empty()))
        || url.split_whitespace().any(|kv| kv.starts_with("password="))
}

/// The providers' own checks (the ones a start makes), the built-in model's file; returns every provider
/// name a bot may use.
fn providers<'a>(c: &'a crate::Config, env: Env, found: &mut Vec<Finding>) -> HashSet<&'a str> {
    let mut names = HashSet::new();
    for (i, p) in c.providers.iter().enumerate() {
        let key = format!("providers[{i}] ({})", p.name);
        if !names.insert(p.name.as_str()) {
            found.push(Finding::error(key, "declared twice: names must be unique"));
            continue;
        }
        if p.kind == ProviderKind::Builtin {
            model_file(&key, p.model_path.as_deref(), found);
            continue;
        }
        if let Err(e) = confab_llm::build_provider(p, env) {
            found.push(Finding::error(key, e.to_string()));
        }
    }
    if c.builtin.enabled && !names.contains(BuiltinConfig::PROVIDER) {
        names.insert(BuiltinConfig::PROVIDER);
        if !c.builtin.model_path.exists() {
            found.push(Finding::warning(
                "builtin.model_path",
                format!(
                    "{} does not exist: the built-in model is off until it does (scripts/fetch-model.sh fetches \
                     it), or set builtin.enabled = false",
                    c.builtin.model_path.display()
                ),
            ));
        }
    }
    names
}

fn model_file(key: &str, path: Option<&str>, found: &mut Vec<Finding>) {
    match path {
        Some(p) if std::path::Path::new(p).is_file() => {}
        Some(p) => found.push(Finding::error(key, format!("model_path {p} does not exist"))),
        None => found.push(Finding::error(key, "a builtin provider needs model_path (a GGUF file)")),
    }
}

fn bots(c: &crate::Config, providers: &HashSet<&str>, found: &mut Vec<Finding>) {
    let mut ids = HashSet::new();
    for (i, b) in c.bots.iter().enumerate() {
        let key = format!("bots[{i}] ({})", b.id);
        if let Err(e) = confab_domain::UserId::parse(&b.id) {
            found.push(Finding::error(key, format!("id: {e}")));
            continue;
        }
        if !ids.insert(b.id.as_str()) {
            found.push(Finding::error(key, "declared twice"));
            continue;
        }
        let mut used = vec![&b.settings.provider];
        used.extend(&b.settings.fallbacks);
        for p in used
            .into_iter()
            .filter(|p| !p.is_empty() && !providers.contains(p.as_str()))
        {
            // A provider added through the admin API is in the database, not here: a warning.
            found.push(Finding::warning(
                key.clone(),
                format!("provider {p:?} is not declared in [[providers]]: it must have been added through the API"),
            ));
        }
    }
}

fn secrets(loaded: &Loaded, env: Env, found: &mut Vec<Finding>) {
    let c = &loaded.config;
    if let Some(t) = env("CONFAB_API_TOKEN").filter(|t| !t.is_empty())
        && let Some(why) = weak(&t, master_token::MIN_LEN, 8)
    {
        found.push(Finding::error(
            "CONFAB_API_TOKEN",
            format!("weak master token ({why}); unset it to have one generated, or use `openssl rand -hex 32`"),
        ));
    }
    let nim_secret = if c.nim.app_secret.is_empty() {
        env("CONFAB_NIM_APP_SECRET").filter(|s| !s.is_empty())
    } else {
        Some(c.nim.app_secret.clone())
    };
    if let Some(s) = nim_secret
        && let Some(why) = weak(&s, master_token::NIM_SECRET_MIN_LEN, 5)
    {
        found.push(Finding::error("nim.app_secret", format!("weak secret ({why})")));
    }
    if !c.nim.app_secret.is_empty() && loaded.from_file("nim.app_secret") {
        found.push(Finding::warning(
            "nim.app_secret",
            "kept in the configuration file: set CONFAB_NIM_APP_SECRET instead",
        ));
    }
    let hook = &c.pre_send_webhook;
    if hook.url.is_empty() {
        return;
    }
    if let Err(e) = c.egress_policy().unwrap_or_default().check_url(&hook.url) {
        found.push(Finding::error("pre_send_webhook.url", e.to_string()));
    }
    let secret = match (hook.secret.is_empty(), hook.secret_env.is_empty()) {
        (false, _) => Some(hook.secret.clone()),
        (true, false) => env(&hook.secret_env),
        (true, true) => None,
    };
    match secret.as_deref().map(confab_outbox::signature::secret_key) {
        None if !hook.secret_env.is_empty() => found.push(Finding::error(
            "pre_send_webhook.secret_env",
            format!("{} is not set", hook.secret_env),
        )),
        None => found.push(Finding::error(
            "pre_send_webhook.secret",
            "a url needs a secret (secret_env names the variable holding it)",
        )),
        Some(None) => found.push(Finding::error(
            "pre_send_webhook.secret",
            "not a whsec_ secret: \"whsec_\" followed by base64",
        )),
        Some(Some(key)) if key.len() < 24 => found.push(Finding::error(
            "pre_send_webhook.secret",
            format!(
                "weak: {} bytes, at least 24 needed; generate one with `echo whsec_$(openssl rand -base64 32)`",
                key.len()
            ),
        )),
        Some(Some(_)) => {}
    }
    if !hook.secret.is_empty() && loaded.from_file("pre_send_webhook.secret") {
        found.push(Finding::warning(
            "pre_send_webhook.secret",
            "kept in the configuration file: name an environment variable with secret_env instead",
        ));
    }
}

/// Why a secret is weak: too short, not printable, or too few different characters (a placeholder).
fn weak(secret: &str, min_len: usize, min_distinct: usize) -> Option<String> {
    if secret.len() < min_len {
        return Some(format!("{} characters, at least {min_len} needed", secret.len()));
    }
    if !secret.chars().all(|c| c.is_ascii_graphic()) {
        return Some("only printable ASCII characters, no spaces".into());
    }
    let distinct = secret.chars().collect::<HashSet<_>>().len();
    if distinct < min_distinct {
        return Some(format!(
            "{distinct} different characters, a placeholder rather than a secret"
        ));
    }
    None
}

fn telemetry(c: &crate::Config, found: &mut Vec<Finding>) {
    let t = &c.telemetry;
    if !(0.0..=1.0).contains(&t.sample_ratio) {
        found.push(Finding::error(
            "telemetry.sample_ratio",
            format!("{} is not a share between 0 and 1", t.sample_ratio),
        ));
    }
    if t.enabled() {
        match url::Url::parse(&t.traces_url()) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            _ => found.push(Finding::error(
                "telemetry.otlp_endpoint",
                format!(
                    "{:?} is not an http(s) URL, e.g. http://collector:4318",
                    t.otlp_endpoint
                ),
            )),
        }
    }
}

fn backup(c: &crate::Config, found: &mut Vec<Finding>) {
    if !c.backup.enabled() {
        return;
    }
    if let Err(e) = c.backup.interval() {
        found.push(Finding::error("backup.every", e));
    }
    if c.storage.backend == StorageBackend::Postgres {
        found.push(Finding::error(
            "backup.dir",
            "scheduled backups copy the embedded store; with PostgreSQL use its tools (docs/operations.md) and \
             leave backup.dir empty",
        ));
    }
    if c.backup.dir.starts_with(&c.data_dir) {
        found.push(Finding::warning(
            "backup.dir",
            "inside the data dir: a lost disk takes the backups with it; choose another disk",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(toml: &str) -> Loaded {
        let figment = figment::Figment::from(figment::providers::Serialized::defaults(crate::Config::default()))
            .merge(<figment::providers::Toml as figment::providers::Format>::string(toml));
        Loaded {
            config: figment.extract().unwrap(),
            figment,
        }
    }

    fn keys(found: &[Finding]) -> Vec<&str> {
        found.iter().map(|f| f.key.as_str()).collect()
    }

    #[test]
    fn the_defaults_have_no_error() {
        let found = values(&loaded("[builtin]\nenabled = false\n"), &|_| None);
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn contradictions_and_missing_references_are_errors() {
        let found = values(
            &loaded(
                "[bus]\nbackend = \"nats\"\n[files]\nbackend = \"s3\"\n[builtin]\nenabled = false\n\
                 [moderation_llm]\nprovider = \"nope\"\n\
                 [[providers]]\nname = \"a\"\nkind = \"openai\"\nmodel = \"m\"\napi_key_env = \"UNSET_KEY\"\n",
            ),
            &|_| None,
        );
        let k = keys(&found);
        for want in [
            "bus.backend",
            "files.s3_bucket",
            "moderation_llm.provider",
            "providers[0] (a)",
        ] {
            assert!(k.contains(&want), "{want} in {found:?}");
        }
        let provider = found.iter().find(|f| f.key == "providers[0] (a)").unwrap();
        assert!(provider.message.contains("UNSET_KEY"), "{provider}");
    }

    #[test]
    fn weak_and_misplaced_secrets_are_named() {
        let env = |k: &str| match k {
            "CONFAB_API_TOKEN" => Some("aaaaaaaaaaaaaaaaaaaa".to_string()),
            _ => None,
        };
        let found = values(
            &loaded(
                "[builtin]\nenabled = false\n[nim]\napp_key = \"k\"\napp_secret = \"short\"\n\
                 [pre_send_webhook]\nurl = \"https://hooks.example.com/x\"\nsecret = \"whsec_dGVzdA==\"\n",
            ),
            &env,
        );
        let show: Vec<String> = found.iter().map(|f| f.to_string()).collect();
        assert!(
            show.iter()
                .any(|f| f.starts_with("error: CONFAB_API_TOKEN: weak master token (1 different")),
            "{show:?}"
        );
        assert!(
            show.iter()
                .any(|f| f.starts_with("error: nim.app_secret: weak secret (5 characters")),
            "{show:?}"
        );
        assert!(
            show.iter()
                .any(|f| f.starts_with("error: pre_send_webhook.secret: weak: 4 bytes")),
            "{show:?}"
        );
        assert!(
            show.iter()
                .any(|f| f.starts_with("warning: pre_send_webhook.secret: kept in the configuration file")),
            "{show:?}"
        );
        let strong = |k: &str| (k == "CONFAB_API_TOKEN").then(|| "cfm_9f86d081884c7d659a2feaa0c55ad015".to_string());
        let found = values(&loaded("[builtin]\nenabled = false\n"), &strong);
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn a_password_in_the_file_is_a_warning_not_in_the_environment() {
        let mut l = loaded(
            "[storage]\nbackend = \"postgres\"\npostgres_url = \"postgres://u:pw@db:5432/c\"\n[bus]\nbackend = \"nats\"\n[builtin]\nenabled = false\n",
        );
        assert_eq!(keys(&values(&l, &|_| None)), ["storage.postgres_url"]);
        l.figment = figment::Figment::from(figment::providers::Serialized::defaults(l.config.clone()));
        assert!(values(&l, &|_| None).is_empty());
    }

    #[test]
    fn scheduled_backups_need_a_duration_and_the_embedded_store() {
        let found = values(
            &loaded("[builtin]\nenabled = false\n[backup]\ndir = \"/tmp/b\"\nevery = \"often\"\n"),
            &|_| None,
        );
        assert_eq!(keys(&found), ["backup.every"]);
        assert!(found[0].message.contains("\"often\""), "{}", found[0]);
    }

    #[test]
    fn telemetry_needs_an_http_url_and_a_share() {
        let found = values(
            &loaded(
                "[builtin]\nenabled = false\n[telemetry]\notlp_endpoint = \"collector:4318\"\nsample_ratio = 2.0\n",
            ),
            &|_| None,
        );
        assert_eq!(keys(&found), ["telemetry.sample_ratio", "telemetry.otlp_endpoint"]);
    }
}
