//! `confab migrate` through the real binary: `--dry-run` names the store, its schema version and each
//! migration it would apply, and changes nothing; without it the migrations are applied and named; a database
//! of a newer release is refused with what to do.

use std::path::Path;
use std::process::Command;

use confab_store_sqlite::{latest_version, migrations};

/// Runs `confab migrate` on `data_dir` with `extra` arguments: whether it succeeded, stdout, stderr.
fn migrate(data_dir: &Path, extra: &[&str]) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_confab"));
    command.arg("migrate").arg("--data-dir").arg(data_dir).args(extra);
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("CONFAB_")) {
        command.env_remove(name);
    }
    let out = command.env("CONFAB_LOG", "warn").output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn migrate_dry_run_lists_then_migrate_applies() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let database = data.join("confab.db");
    let n = latest_version();

    let (ok, out, err) = migrate(&data, &["--dry-run"]);
    assert!(ok, "{out}{err}");
    let header = format!(
        "SQLite database {}: schema version 0; would apply {n} migrations (dry run: nothing changed):",
        database.display()
    );
    assert!(out.starts_with(&header), "{out}");
    for m in migrations() {
        assert!(out.contains(&format!("\n  v{} {}\n", m.version, m.name)), "{out}");
    }
    assert!(!data.exists(), "a dry run creates nothing");

    let (ok, out, err) = migrate(&data, &[]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains(&format!("applied {n} migrations, schema version {n} now:")),
        "{out}"
    );
    assert!(
        out.contains(&format!("\n  v{n} {}\n", migrations()[n as usize - 1].name)),
        "{out}"
    );

    for extra in [&["--dry-run"][..], &[]] {
        let (ok, out, err) = migrate(&data, extra);
        assert!(ok, "{out}{err}");
        assert!(
            out.contains(&format!("schema version {n}: up to date")),
            "{extra:?}: {out}"
        );
    }

    let newer = n + 1;
    rusqlite::Connection::open(&database)
        .unwrap()
        .pragma_update(None, "user_version", newer)
        .unwrap();
    for extra in [&["--dry-run"][..], &[]] {
        let (ok, out, err) = migrate(&data, extra);
        assert!(!ok, "{extra:?}: a newer schema is refused: {out}");
        assert!(err.contains(&format!("has schema version {newer}")), "{err}");
        assert!(
            err.contains("Run the newer release, or restore a backup taken by this one"),
            "{err}"
        );
    }
}
