//! Tests that need what a machine may lack (a model, llama-server, Chromium, the official Sendbird SDK, a
//! tmpfs mount) skip visibly without it. Shared by the API tests (`helpers`) and, through `#[path]`,
//! `crates/llm-local/tests/model.rs`.

use std::io::Write;

/// Called where a dependency of the running test is missing, before the test returns early. With
/// `{require}=1` (`.ci/run` sets `CONFAB_REQUIRE_MODELS`, `CONFAB_REQUIRE_BROWSER`,
/// `CONFAB_REQUIRE_SENDBIRD_SDK` and `CONFAB_REQUIRE_TMPFS`) the test fails; otherwise one line goes to
/// stderr: `SKIPPED <test>: <missing>; run <remedy>`.
#[track_caller]
pub fn skip_unless_required(require: &str, missing: &str, remedy: &str) {
    if std::env::var(require).is_ok_and(|v| v == "1") {
        panic!("{require}=1 but {missing}");
    }
    // The test harness names each test's thread after the test. Written to the stderr handle itself, not
    // through `eprintln!`, which the harness captures (and hides for a passing test).
    let thread = std::thread::current();
    let test = thread.name().filter(|n| *n != "main").unwrap_or("a test");
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {missing}; run {remedy}");
}
