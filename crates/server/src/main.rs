use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use confab::master_token::{self, Source};
use confab::{App, Config};
use tracing_subscriber::EnvFilter;

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
    /// first where operators apply schema changes themselves).
    Migrate(MigrateArgs),
}

#[derive(clap::Args)]
struct MigrateArgs {
    /// Directory of the SQLite database (with `[storage] backend = "sqlite"`).
    #[arg(long, env = "CONFAB_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Optional TOML configuration file (see confab.example.toml).
    #[arg(long, env = "CONFAB_CONFIG")]
    config: Option<PathBuf>,
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

fn init_logging(format: &str) {
    let filter = EnvFilter::try_from_env("CONFAB_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal());
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let done = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Migrate(args) => migrate(args),
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
    init_logging("text");
    let mut config = Config::load(args.config.as_deref()).map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let done = runtime.block_on(confab::storage::migrate(&config))?;
    println!("{done}");
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(&args.log_format);
    let mut config = Config::load(args.config.as_deref()).map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
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
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        tracing::info!(addr = %listener.local_addr()?, data_dir = %config.data_dir.display(), "confab listening");
        let app = App::build(config, &token).await?;
        app.run(listener, shutdown_signal()).await
    })
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
