use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use confab::master_token::{self, Source};
use confab::{App, Config};

#[derive(Parser)]
#[command(
    name = "confab",
    version,
    about = "A self-hosted chat server where AI chatbots are members"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the server.
    Serve(ServeArgs),
    /// Bring the configured store's schema up to date, then exit (`serve` also does it on start; run this
    /// first where operators apply schema changes themselves); `--dry-run` lists what it would apply.
    Migrate(MigrateArgs),
    /// Copy a server's data (database, uploaded files, credentials) into one file, while it runs.
    Backup(BackupArgs),
    /// Bring a backup back as a new data dir.
    Restore(RestoreArgs),
    /// Check a configuration: unknown keys, wrong types, contradictions, weak secrets, and whether the
    /// database, NATS, the object store, the providers and the webhooks answer. Exits non-zero on an error.
    CheckConfig(CheckConfigArgs),
}

#[derive(clap::Args)]
struct CheckConfigArgs {
    /// The TOML configuration file to check (the environment's CONFAB_* variables apply too, as in `serve`).
    #[arg(long, env = "CONFAB_CONFIG")]
    config: Option<PathBuf>,
    /// The data dir `serve` would use.
    #[arg(long, env = "CONFAB_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Check only the file and the environment; do not contact the dependencies.
    #[arg(long)]
    offline: bool,
}

#[derive(clap::Args)]
struct BackupArgs {
    /// The backup file to write (a .tar.gz); it must not exist.
    #[arg(long)]
    to: PathBuf,
    /// The data dir of the server to back up.
    #[arg(long, env = "CONFAB_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Optional TOML configuration file (see confab.example.toml).
    #[arg(long, env = "CONFAB_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(clap::Args)]
struct RestoreArgs {
    /// The backup file written by `confab backup`.
    #[arg(long)]
    from: PathBuf,
    /// The data dir to create (it must not exist or be empty); then `confab serve --data-dir DIR`.
    #[arg(long)]
    data_dir: PathBuf,
}

#[derive(clap::Args)]
struct MigrateArgs {
    /// Directory of the SQLite database (with `[storage] backend = "sqlite"`).
    #[arg(long, env = "CONFAB_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Optional TOML configuration file (see confab.example.toml).
    #[arg(long, env = "CONFAB_CONFIG")]
    config: Option<PathBuf>,
    /// Print the schema's version and each migration that would be applied, and change nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "CONFAB_LISTEN")]
    listen: Option<SocketAddr>,
    /// Directory for the database, uploads and the generated master token.
    #[arg(long, env = "CONFAB_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Optional TOML configuration file (see confab.example.toml).
    #[arg(long, env = "CONFAB_CONFIG")]
    config: Option<PathBuf>,
    /// Log format: `text` or `json`.
    #[arg(long, env = "CONFAB_LOG_FORMAT", default_value = "text")]
    log_format: String,
    /// Development only: the web app's sign-in takes any user id, creating the user, with no credential.
    #[arg(long)]
    dev_login: bool,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let done = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Migrate(args) => migrate(args),
        Command::Backup(args) => backup(args),
        Command::Restore(args) => restore(args),
        Command::CheckConfig(args) => check_config(args),
    };
    match done {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // What went wrong and its causes, without a backtrace: an operator reads this.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let _logs = confab::telemetry::init("text", &Default::default())?;
    let mut config = Config::load(args.config.as_deref()).map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let done = runtime.block_on(confab::storage::migrate(&config, args.dry_run))?;
    println!("{done}");
    Ok(())
}

fn backup(args: BackupArgs) -> anyhow::Result<()> {
    let mut config = Config::load(args.config.as_deref()).map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    let started = std::time::Instant::now();
    let manifest = confab::backup::backup(&config, &args.to)?;
    let size = std::fs::metadata(&args.to).map(|m| m.len()).unwrap_or(0);
    println!(
        "backup written to {} ({:.1} MiB in {:.1} s): {}",
        args.to.display(),
        size as f64 / (1024.0 * 1024.0),
        started.elapsed().as_secs_f64(),
        manifest.summary()
    );
    Ok(())
}

fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let manifest = confab::backup::restore(&args.from, &args.data_dir)?;
    println!(
        "restored into {}: {}; start it with confab serve --data-dir {}",
        args.data_dir.display(),
        manifest.summary(),
        args.data_dir.display()
    );
    Ok(())
}

/// The configuration `serve` starts with: loaded and checked as `confab check-config` does (without asking
/// the dependencies), refusing on an error with the same messages; warnings are printed and the start goes on.
fn checked_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut loaded = confab::check::load(args.config.as_deref()).map_err(|findings| {
        confab::check::report(&findings);
        anyhow::anyhow!(
            "refusing to start: the configuration has {} errors (listed above)",
            findings.len()
        )
    })?;
    if let Some(d) = &args.data_dir {
        loaded.config.data_dir = d.clone();
    }
    let findings = confab::check::values(&loaded, &|k| std::env::var(k).ok());
    if confab::check::report(&findings) {
        let errors = findings
            .iter()
            .filter(|f| f.severity == confab::check::Severity::Error)
            .count();
        anyhow::bail!("refusing to start: the configuration has {errors} errors (listed above)");
    }
    Ok(loaded.config)
}

fn check_config(args: CheckConfigArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let fine = runtime.block_on(confab::check::check_config(
        args.config.as_deref(),
        args.data_dir.as_deref(),
        !args.offline,
    ));
    anyhow::ensure!(fine, "the configuration has errors");
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = checked_config(&args)?;
    // Spans still queued are exported when the server has stopped (`telemetry.shutdown()` below).
    let telemetry = confab::telemetry::init(&args.log_format, &config.telemetry)?;
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    config.web.dev_login |= args.dev_login;
    let (token, source) = master_token::resolve(std::env::var("CONFAB_API_TOKEN").ok(), &config.data_dir)?;
    if let Source::Generated = source {
        // Printed once, on the first start; afterwards it is read from the data dir.
        println!(
            "Generated master API token (stored in {}): {token}",
            config.data_dir.join(master_token::FILE_NAME).display()
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("confab")
        .build()
        .context("starting the runtime")?;
    let done = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        tracing::info!(addr = %listener.local_addr()?, data_dir = %config.data_dir.display(), "confab listening");
        let app = App::build(config, &token).await?;
        app.run(listener, shutdown_signal()).await
    });
    // The tasks still running end (and their spans with them) before the spans still queued are exported.
    drop(runtime);
    telemetry.shutdown();
    done
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
