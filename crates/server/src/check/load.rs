//! Loading a configuration with every mistake found, not only the first: serde stops at the first error of
//! a struct, so unknown keys are found by walking the merged values against the known ones, and a value of
//! the wrong type is recorded, replaced by its default, and the loading tried again.

use std::path::Path;

use figment::providers::Serialized;
use figment::value::{Dict, Value};
use figment::{Figment, Profile, Provider};

use super::{Finding, Loaded};
use crate::Config;

/// How many wrong values one loading reports at most.
const MAX_FINDINGS: usize = 64;

/// Loads the configuration (defaults, the file, the `CONFAB_*` environment), or every problem found.
pub fn load(file: Option<&Path>) -> Result<Loaded, Vec<Finding>> {
    if let Some(f) = file
        && !f.is_file()
    {
        return Err(vec![Finding::error(
            f.display().to_string(),
            "no such file (--config or CONFAB_CONFIG)",
        )]);
    }
    let figment = Config::figment(file);
    let mut found = Vec::new();
    let mut dict = match figment.data() {
        Ok(mut profiles) => profiles.remove(&Profile::Default).unwrap_or_default(),
        Err(e) => return Err(e.into_iter().map(|e| describe(&figment, &e)).collect()),
    };
    let known = serde_json::to_value(Config::default()).expect("the defaults serialize");
    let mut unknown = Vec::new();
    unknown_keys(&dict, &known, &mut Vec::new(), &mut unknown);
    for path in &unknown {
        found.push(unknown_key(&figment, path));
        remove(&mut dict, path);
    }
    let mut cleaned = Figment::from(Serialized::from(dict, Profile::Default));
    while found.len() < MAX_FINDINGS {
        let errors = match cleaned.extract::<Config>() {
            Ok(config) if found.is_empty() => return Ok(Loaded { config, figment }),
            Ok(_) => return Err(found),
            Err(e) => e,
        };
        let mut fixed = false;
        for e in errors {
            let finding = describe(&figment, &e);
            if found.contains(&finding) {
                continue;
            }
            found.push(finding);
            // The default in its place lets the next attempt find the next mistake.
            if let Some(default) = at(&known, &e.path) {
                cleaned = cleaned.merge(Serialized::default(&e.path.join("."), default));
                fixed = true;
            }
        }
        if !fixed {
            break;
        }
    }
    Err(found)
}

/// Keys of `dict` that `known` (the defaults, serialized) does not have. Lists and maps of free-form
/// values (`[[providers]]`, `data`) are the types' to check.
fn unknown_keys(dict: &Dict, known: &serde_json::Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let Some(known) = known.as_object() else {
        return;
    };
    for (key, value) in dict {
        path.push(key.clone());
        match (known.get(key), value) {
            (None, _) => out.push(path.clone()),
            (Some(k @ serde_json::Value::Object(_)), Value::Dict(_, inner)) => unknown_keys(inner, k, path, out),
            _ => {}
        }
        path.pop();
    }
}

fn remove(dict: &mut Dict, path: &[String]) {
    match path {
        [last] => {
            dict.remove(last);
        }
        [first, rest @ ..] => {
            if let Some(Value::Dict(_, inner)) = dict.get_mut(first) {
                remove(inner, rest);
            }
        }
        [] => {}
    }
}

fn at(known: &serde_json::Value, path: &[String]) -> Option<serde_json::Value> {
    path.iter()
        .try_fold(known, |v, k| v.get(k))
        .filter(|v| !v.is_null())
        .cloned()
}

fn unknown_key(figment: &Figment, path: &[String]) -> Finding {
    let (parent, field) = path.split_at(path.len() - 1);
    let siblings: Vec<String> = serde_json::to_value(Config::default())
        .ok()
        .and_then(|v| at(&v, parent))
        .and_then(|v| v.as_object().map(|o| o.keys().cloned().collect()))
        .unwrap_or_default();
    let hint = closest(&field[0], &siblings)
        .map(|c| format!("; did you mean {c:?}?"))
        .unwrap_or_default();
    Finding::error(path.join("."), format!("unknown key{hint}{}", source(figment, path)))
}

/// One loading error as a finding: the key, what was wrong in words, and where the value came from.
fn describe(figment: &Figment, e: &figment::Error) -> Finding {
    use figment::error::Kind;
    let mut path = e.path.clone();
    let message = match &e.kind {
        Kind::UnknownField(field, expected) => {
            path.push(field.clone());
            let expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
            let hint = closest(field, &expected)
                .map(|c| format!("; did you mean {c:?}?"))
                .unwrap_or_default();
            format!("unknown key{hint}")
        }
        Kind::UnknownVariant(value, expected) => format!("{value:?} is not one of {}", expected.join(", ")),
        Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => {
            format!("expected {expected}, found {actual}")
        }
        Kind::MissingField(field) => {
            path.push(field.to_string());
            "missing (required)".to_string()
        }
        other => other.to_string(),
    };
    let key = if path.is_empty() {
        "(configuration)".to_string()
    } else {
        path.join(".")
    };
    Finding::error(key, format!("{message}{}", source(figment, &path)))
}

/// ` (in FILE)` or ` (in CONFAB_SECTION__KEY)`: where the value at `path` came from.
fn source(figment: &Figment, path: &[String]) -> String {
    let Some(meta) = (1..=path.len())
        .rev()
        .find_map(|n| figment.find_metadata(&path[..n].join(".")))
    else {
        return String::new();
    };
    match &meta.source {
        Some(figment::Source::File(p)) => format!(" (in {})", p.display()),
        _ if meta.name.contains("environment") => {
            format!(" (in CONFAB_{})", path.join("__").to_uppercase())
        }
        _ => String::new(),
    }
}

/// The known name nearest to a mistyped one, if it is near.
fn closest<'a>(field: &str, expected: &'a [String]) -> Option<&'a str> {
    expected
        .iter()
        .map(|c| (strsim::levenshtein(field, c), c.as_str()))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min()
        .map(|(_, c)| c)
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's Jail API fixes the closure's error type
mod tests {
    use super::*;

    #[test]
    fn every_unknown_key_and_wrong_value_is_found_at_once() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "c.toml",
                "typo_top = 1\n[limits]\nmax_text_char = 1\nmax_page = \"big\"\n[websocket]\nqueue_frames = -1\n\
                 [storage]\nbackend = \"oracle\"\n",
            )?;
            jail.set_env("CONFAB_HTTP__MAX_BODY_BYTES", "lots");
            let found = load(Some(Path::new("c.toml"))).err().expect("errors");
            let lines: Vec<String> = found.iter().map(|f| f.to_string()).collect();
            for want in [
                "error: typo_top: unknown key (in ",
                "error: limits.max_text_char: unknown key; did you mean \"max_text_chars\"? (in ",
                "error: limits.max_page: expected ",
                "error: websocket.queue_frames: expected ",
                "error: storage.backend: \"oracle\" is not one of ",
                "error: http.max_body_bytes: expected usize, found string \"lots\" (in CONFAB_HTTP__MAX_BODY_BYTES)",
            ] {
                assert!(lines.iter().any(|l| l.starts_with(want)), "{want:?} in {lines:#?}");
            }
            assert_eq!(lines.len(), 6, "{lines:#?}");
            Ok(())
        });
    }

    #[test]
    fn a_good_file_loads_with_its_sources() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[limits]\nmax_text_chars = 10\n")?;
            let loaded = load(Some(Path::new("c.toml"))).map_err(|f| format!("{f:?}"))?;
            assert_eq!(loaded.config.limits.max_text_chars, 10);
            assert!(loaded.from_file("limits.max_text_chars"));
            assert!(!loaded.from_file("limits.max_page"));
            Ok(())
        });
    }
}
