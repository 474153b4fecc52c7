//! Runs the TypeScript client's own tests (clients/js, vitest) as part of `cargo test`, so one command tests
//! everything. Its dependencies were installed by this crate's build script.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn typescript_client_tests_pass() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let vitest = root.join("node_modules/vitest/vitest.mjs");
    assert!(
        vitest.exists(),
        "{} is missing: the build script runs npm ci",
        vitest.display()
    );
    let out = Command::new("node")
        .arg(&vitest)
        .args(["run", "--reporter=verbose"])
        .current_dir(root.join("clients/js"))
        .env("NO_COLOR", "1")
        .output()
        .expect("node runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}");
    assert!(out.status.success(), "the client's tests failed:\n{report}");
    assert!(report.contains("passed"), "no test ran:\n{report}");
}
