//! The list of migrations is forward-only: every migration ever released keeps its version and its exact SQL
//! (schemas were created from it, and nodes of older releases run against newer schemas), versions run 1, 2,
//! 3… without gaps, and a schema change is a new migration at the end.

use confab_store_postgres::{latest_version, migrations};
use sha2::{Digest, Sha256};

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The SHA-256 of the SQL of every released migration, by version. A new migration adds its line here (the
/// failure of `released_migrations_never_change` prints it); an existing line never changes.
const RELEASED: &[(u32, &str)] = &[(1, "797448e244fe648d2ace30a27e68c565f038f07939f2f378003acd0abab8e78d")];

#[test]
fn released_migrations_never_change() {
    let known = migrations();
    let mut problems = Vec::new();
    for &(version, recorded) in RELEASED {
        match known.iter().find(|m| m.version == version) {
            None => problems.push(format!(
                "migration {version} was released but is gone. Migrations are append-only: add a new one"
            )),
            Some(m) => {
                let now = sha256_hex(m.sql.as_bytes());
                if now != recorded {
                    problems.push(format!(
                        "migration {version} ({}) changed: its SQL's SHA-256 is {now}, released as {recorded}. \
                         Migrations are append-only: add a new one (and restore this one's SQL byte for byte)",
                        m.name
                    ));
                }
            }
        }
    }
    for m in known.iter().filter(|m| !RELEASED.iter().any(|(v, _)| *v == m.version)) {
        problems.push(format!(
            "migration {} ({}) has no recorded SHA-256: once it is final, add `({}, \"{}\")` to RELEASED in \
             crates/store-postgres/tests/migrations.rs",
            m.version,
            m.name,
            m.version,
            sha256_hex(m.sql.as_bytes())
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn versions_run_from_one_without_gaps() {
    let versions: Vec<u32> = migrations().iter().map(|m| m.version).collect();
    let expected: Vec<u32> = (1..=versions.len() as u32).collect();
    assert_eq!(versions, expected, "migration versions must be 1..=N in order");
    assert_eq!(latest_version(), versions.len() as u32);
}

#[test]
fn every_migration_is_named() {
    for m in migrations() {
        assert!(
            !m.name.trim().is_empty() && m.name.len() <= 80 && !m.name.contains('\n'),
            "migration {} needs a short one-line name: {:?}",
            m.version,
            m.name
        );
        assert!(!m.sql.trim().is_empty(), "migration {} has no SQL", m.version);
    }
}
