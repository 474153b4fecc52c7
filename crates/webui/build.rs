//! Builds the web app (web/, clients/js/) with the repository's npm workspace and embeds the result: the
//! packages come from package-lock.json (`npm ci` when node_modules is missing or older than the lock file),
//! web/build.mjs type-checks and bundles into OUT_DIR, and `assets.rs` lists every file for `include_bytes!`.
//! Set CONFAB_WEB_DIST to a folder web/build.mjs produced to embed that instead (no Node.js needed).

use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../..");
    let root = root.canonicalize().expect("the repository root");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("web");
    println!("cargo:rerun-if-env-changed=CONFAB_WEB_DIST");
    for p in [
        "web/src",
        "web/index.html",
        "web/build.mjs",
        "web/tsconfig.json",
        "web/package.json",
        "clients/js/src",
        "clients/js/package.json",
        "package.json",
        "package-lock.json",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }

    let dist = match std::env::var_os("CONFAB_WEB_DIST") {
        Some(d) => PathBuf::from(d),
        None => {
            install(&root);
            run(
                Command::new("node")
                    .arg(root.join("web/build.mjs"))
                    .arg(&out)
                    .current_dir(&root),
                "node web/build.mjs",
            );
            out
        }
    };

    let mut files = Vec::new();
    collect(&dist, &dist, &mut files);
    files.sort();
    assert!(
        files.iter().any(|(rel, _)| rel == "index.html"),
        "{} holds no index.html",
        dist.display()
    );
    let mut code = String::from("pub static ASSETS: &[Asset] = &[\n");
    for (rel, path) in &files {
        let bytes = std::fs::read(path).unwrap();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut h);
        writeln!(
            code,
            "    Asset {{ path: {rel:?}, content_type: {ct:?}, etag: \"\\\"{etag:016x}\\\"\", bytes: include_bytes!({abs:?}) }},",
            ct = content_type(rel),
            etag = h.finish(),
            abs = path.display().to_string(),
        )
        .unwrap();
    }
    code.push_str("];\n");
    std::fs::write(PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("assets.rs"), code).unwrap();
}

/// `npm ci` unless node_modules is as new as the lock file.
fn install(root: &Path) {
    let marker = root.join("node_modules/.package-lock.json");
    let lock = root.join("package-lock.json");
    let fresh = match (std::fs::metadata(&marker), std::fs::metadata(&lock)) {
        (Ok(m), Ok(l)) => m.modified().unwrap() >= l.modified().unwrap(),
        _ => false,
    };
    if !fresh {
        run(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(root),
            "npm ci",
        );
    }
}

fn run(cmd: &mut Command, what: &str) {
    let status = cmd.status().unwrap_or_else(|e| {
        panic!(
            "cannot run {what}: {e}. Building Confab's web app needs Node.js 20+ and npm \
             (Debian: apt install nodejs npm), or CONFAB_WEB_DIST naming a built web app."
        )
    });
    assert!(status.success(), "{what} failed ({status})");
}

fn collect(base: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(base, &path, out);
        } else {
            let rel = path.strip_prefix(base).unwrap().to_string_lossy().replace('\\', "/");
            out.push((rel, path));
        }
    }
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}
