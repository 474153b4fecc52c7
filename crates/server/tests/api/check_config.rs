//! `confab check-config` through the real binary, and `confab serve` refusing the same configuration with
//! the same lines.

use std::path::Path;

use confab_llm::fake::FakeProvider;

async fn confab(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_confab"));
    cmd.args(args)
        .env_remove("CONFAB_CONFIG")
        .env_remove("CONFAB_DATA_DIR")
        .env_remove("CONFAB_API_TOKEN")
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), cmd.output())
        .await
        .expect("exits on its own")
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn write(dir: &Path, toml: &str) -> String {
    let path = dir.join("confab.toml");
    std::fs::write(&path, toml).unwrap();
    path.to_str().unwrap().to_string()
}

/// The finding lines (`error: …`, `warning: …`) of an output.
fn findings(out: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = out
        .lines()
        .filter(|l| (l.starts_with("error: ") || l.starts_with("warning: ")) && l.contains(": "))
        .filter(|l| !l.starts_with("error: refusing") && !l.starts_with("error: the configuration"))
        .collect();
    lines.sort();
    lines
}

#[tokio::test]
async fn mistakes_are_named_with_their_source_and_serve_refuses_them_with_the_same_lines() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = write(
        dir.path(),
        "unknown_top = 1\n[limits]\nmax_text_char = 100\n[websocket]\nqueue_frames = \"many\"\n",
    );
    let env = [("CONFAB_LIMITS__MAX_MENTIONS", "lots")];
    let args = [
        "check-config",
        "--config",
        &config,
        "--data-dir",
        data.to_str().unwrap(),
        "--offline",
    ];
    let (code, out) = confab(&args, &env).await;
    assert_eq!(code, 1, "{out}");
    let lines = findings(&out);
    for want in [
        "error: unknown_top: unknown key (in ",
        "error: limits.max_text_char: unknown key; did you mean \"max_text_chars\"?",
        "error: websocket.queue_frames: expected",
        "error: limits.max_mentions: expected",
    ] {
        assert!(lines.iter().any(|l| l.starts_with(want)), "{want:?} in {out}");
    }
    assert!(out.contains(&format!("(in {config})")), "the file is named: {out}");
    assert!(
        out.contains("(in CONFAB_LIMITS__MAX_MENTIONS)"),
        "the variable is named: {out}"
    );

    let (code, served) = confab(
        &[
            "serve",
            "--config",
            &config,
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        &env,
    )
    .await;
    assert_eq!(code, 1, "{served}");
    assert_eq!(findings(&served), lines, "serve: {served}");
    assert!(served.contains("refusing to start"), "{served}");
    assert!(
        !served.contains("panicked") && !served.contains("stack backtrace"),
        "{served}"
    );
    assert!(!data.exists(), "nothing was created");
}

#[tokio::test]
async fn weak_secrets_and_contradictions_stop_serve_too() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = write(
        dir.path(),
        "[bus]\nbackend = \"nats\"\n[builtin]\nenabled = false\n[pre_send_webhook]\nurl = \"https://hooks.example.com/x\"\nsecret_env = \"HOOK_SECRET\"\n",
    );
    let env = [
        ("CONFAB_API_TOKEN", "passwordpassword"),
        ("HOOK_SECRET", "whsec_c2hvcnQ="),
    ];
    let (code, out) = confab(
        &[
            "check-config",
            "--config",
            &config,
            "--data-dir",
            data.to_str().unwrap(),
            "--offline",
        ],
        &env,
    )
    .await;
    assert_eq!(code, 1, "{out}");
    let lines = findings(&out);
    for want in [
        "error: CONFAB_API_TOKEN: weak master token (7 different characters",
        "error: bus.backend: \"nats\" joins nodes that share one PostgreSQL database",
        "error: pre_send_webhook.secret: weak: 5 bytes",
    ] {
        assert!(lines.iter().any(|l| l.starts_with(want)), "{want:?} in {out}");
    }
    let (code, served) = confab(
        &[
            "serve",
            "--config",
            &config,
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        &env,
    )
    .await;
    assert_eq!(code, 1, "{served}");
    assert_eq!(findings(&served), lines, "serve: {served}");
}

#[tokio::test]
async fn dependencies_are_asked_a_refused_key_and_closed_ports_are_named() {
    let fake = FakeProvider::start().await;
    fake.require_key(Some("the-right-key"));
    let closed = |_: ()| {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (pg_port, nats_port, otlp_port) = (closed(()), closed(()), closed(()));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let providers = format!(
        "[builtin]\nenabled = false\n[[providers]]\nname = \"llm\"\nkind = \"openai_compatible\"\nbase_url = \"{}\"\nmodel = \"m\"\napi_key_env = \"LLM_KEY\"\n",
        fake.openai_base_url()
    );
    let fine = write(dir.path(), &providers);
    let args = ["check-config", "--config", &fine, "--data-dir", data.to_str().unwrap()];
    let (code, out) = confab(&args, &[("LLM_KEY", "the-right-key")]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("the configuration is fine and every dependency answered"),
        "{out}"
    );
    let (code, out) = confab(&args, &[("LLM_KEY", "a-wrong-key")]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("error: providers[0] (llm): ") && out.contains("refused the key (HTTP 401)"),
        "{out}"
    );

    let clustered = write(
        dir.path(),
        &format!(
            "{providers}[storage]\nbackend = \"postgres\"\n[bus]\nbackend = \"nats\"\nnats_url = \"nats://127.0.0.1:{nats_port}\"\n[telemetry]\notlp_endpoint = \"http://127.0.0.1:{otlp_port}\"\n"
        ),
    );
    let pg_url = format!("postgres://confab@127.0.0.1:{pg_port}/confab");
    let (code, out) = confab(
        &[
            "check-config",
            "--config",
            &clustered,
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[("LLM_KEY", "the-right-key"), ("CONFAB_STORAGE__POSTGRES_URL", &pg_url)],
    )
    .await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("error: storage.postgres_url: ") && out.contains(&format!("127.0.0.1:{pg_port}")),
        "{out}"
    );
    assert!(
        out.contains("error: bus.nats_url: cannot connect to NATS at 127.0.0.1:"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "error: telemetry.otlp_endpoint: cannot connect to 127.0.0.1:{otlp_port}"
        )),
        "{out}"
    );
    assert!(!out.contains("providers[0]"), "the provider answered: {out}");
    assert!(!data.exists(), "check-config creates nothing");
}
