//! Runs the TypeScript client's own tests (clients/js, vitest) as part of `cargo test`, so one command tests
//! everything, and checks the client's types against the native API's OpenAPI document: the generated types
//! (`clients/js/src/generated/api.ts`) must be what openapi-typescript makes of the current document, and the
//! hand-written types must match them (`clients/js/src/openapi-checks.ts`, compiled by tsc). Its
//! dependencies were installed by this crate's build script.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Set to regenerate `clients/js/src/generated/api.ts` instead of failing when it differs.
const UPDATE: &str = "CONFAB_UPDATE_GENERATED";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A script of the repository's `node_modules`, installed by the build script.
fn installed(rel: &str) -> PathBuf {
    let path = root().join("node_modules").join(rel);
    assert!(
        path.exists(),
        "{} is missing: the build script runs npm ci",
        path.display()
    );
    path
}

fn report(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn typescript_client_tests_pass() {
    let vitest = installed("vitest/vitest.mjs");
    let out = Command::new("node")
        .arg(&vitest)
        .args(["run", "--reporter=verbose"])
        .current_dir(root().join("clients/js"))
        .env("NO_COLOR", "1")
        .output()
        .expect("node runs");
    let report = report(&out);
    println!("{report}");
    assert!(out.status.success(), "the client's tests failed:\n{report}");
    assert!(report.contains("passed"), "no test ran:\n{report}");
}

/// The committed generated types are openapi-typescript's output for the document the server serves now.
#[test]
fn generated_types_match_the_openapi_document() {
    installed("openapi-typescript/package.json");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("client-js-openapi");
    std::fs::create_dir_all(&dir).unwrap();
    let doc = dir.join("openapi.json");
    let fresh = dir.join("api.ts");
    let json = serde_json::to_string_pretty(&confab_api_native::openapi_document()).unwrap();
    std::fs::write(&doc, json).unwrap();
    let out = Command::new("node")
        .arg(root().join("clients/js/scripts/generate-api.mjs"))
        .arg(&doc)
        .arg(&fresh)
        .output()
        .expect("node runs");
    assert!(out.status.success(), "generating the types failed:\n{}", report(&out));

    let committed_path = root().join("clients/js/src/generated/api.ts");
    let fresh = std::fs::read_to_string(&fresh).unwrap();
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    if fresh == committed {
        return;
    }
    if std::env::var_os(UPDATE).is_some() {
        // Whole or not at all: tsc may be reading it (hand_written_types_match_the_generated_types).
        let tmp = committed_path.with_extension("ts.new");
        std::fs::write(&tmp, &fresh).unwrap();
        std::fs::rename(&tmp, &committed_path).unwrap();
        println!("regenerated {}", committed_path.display());
        return;
    }
    panic!(
        "clients/js/src/generated/api.ts is not what the current OpenAPI document generates (the document \
         is in {}).\nOnly in the generated file:\n{}\nOnly in the committed file:\n{}\n\
         Regenerate with `{UPDATE}=1 cargo test -p confab-webui --test client_js`, then make the \
         hand-written types match (the type check of clients/js/src/openapi-checks.ts says which).",
        doc.display(),
        only_in(&fresh, &committed),
        only_in(&committed, &fresh),
    );
}

/// The lines of `a` that `b` lacks, counting repeats (the first few), for a short account of a difference.
fn only_in(a: &str, b: &str) -> String {
    let mut theirs: HashMap<&str, usize> = HashMap::new();
    for l in b.lines() {
        *theirs.entry(l).or_default() += 1;
    }
    let lines: Vec<&str> = a
        .lines()
        .filter(|l| match theirs.get_mut(l) {
            Some(n) if *n > 0 => {
                *n -= 1;
                false
            }
            _ => true,
        })
        .collect();
    let mut out: Vec<String> = lines.iter().take(12).map(|l| format!("  {l}")).collect();
    if lines.len() > 12 {
        out.push(format!("  … and {} more", lines.len() - 12));
    }
    if out.is_empty() {
        out.push("  (none: lines moved)".into());
    }
    out.join("\n")
}

/// The client type-checks, including `src/openapi-checks.ts`: every hand-written type has the fields of its
/// generated counterpart, with the same optionality and compatible types.
#[test]
fn hand_written_types_match_the_generated_types() {
    let tsc = installed("typescript/bin/tsc");
    let out = Command::new("node")
        .arg(&tsc)
        .args(["-p", "tsconfig.json", "--noEmit", "--pretty", "false"])
        .current_dir(root().join("clients/js"))
        .output()
        .expect("node runs");
    assert!(
        out.status.success(),
        "the client does not type-check against the generated types:\n{}",
        report(&out)
    );
}
