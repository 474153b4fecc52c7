//! The list of migrations is forward-only: every migration ever released keeps its version and its exact SQL
//! (databases were created from it, and a release that skips or rewrites one would leave them different from
//! new ones), versions run 1, 2, 3… without gaps, and a schema change is a new migration at the end.

use confab_store_sqlite::{latest_version, migrations};
use sha2::{Digest, Sha256};

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The SHA-256 of the SQL of every released migration, by version. A new migration adds its line here (the
/// failure of `released_migrations_never_change` prints it); an existing line never changes.
const RELEASED: &[(u32, &str)] = &[
    (1, "44afda5e06388c28d3255da93a6263fdf1677a99cb7c2ec9d8a2d9924ee7911e"),
    (2, "c3a90aeab35a373aada36e3605866455fc60c2ac72551543a8d40eaccb89d607"),
    (3, "f5fe9d3691cae1c55968f26351a6f6ad7142ee79244df15f05a0f417ecd80175"),
    (4, "55c568aab91fe884dfd667af5e97486dc37054acebd55c25091131fff83dd569"),
    (5, "e8e4f819e22c297632ffa7893cfa3a1db90cd40a6ba7ad592724bff8a36d2122"),
    (6, "5da210f09b4a0d10a09431704dd9db958fa656df50b77591551356f0846bab47"),
    (7, "902ef2884c047de1de6153650193667ceca92ef67af00657fdb999b1600e154d"),
    (8, "74a1f869bab001329d557e23b6b33f1f1693f8b36d182a7c91fb641994a1e0e1"),
    (9, "77ea1939128af9157bd2e6c6ed5c9ef1d900ef311b6d6c89ced100b3e89d1dc0"),
    (10, "d451414e7ea5a59b8b012a8b85a46fb07ee376906c34b35d55fb93d46cfe3dfd"),
    (11, "6757fa1e9ab008837e377fd504a63a3758b264d0a4da300bb3fda8b131cd8e92"),
];

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
            "migration {} ({}) has no recorded SHA-256: once it is final, add `({}, \"{}\"),` to RELEASED in \
             crates/store-sqlite/tests/migrations.rs",
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
