use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use danmaku::app::{Role, Server};
use danmaku::config::{BusEngine, Config, StoreEngine};

/// jemalloc returns freed pages to the system after a short decay (its
/// background threads purge while the node idles), where glibc keeps each
/// peak's pages: a front's RSS then follows its viewers down again.
/// Installed here, not in the library, so `danmaku-bare` keeps the system
/// allocator it was measured with.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[path = "bin/danmaku/tools.rs"]
mod tools;

#[derive(Parser)]
#[command(name = "danmaku", version, about = "Live-room danmaku broadcaster")]
struct Cli {
    /// Config file layered over the embedded defaults.
    #[arg(long, global = true, env = "DANMAKU_CONFIG")]
    config: Option<PathBuf>,
    /// Listen address (overrides server.listen and DANMAKU_LISTEN).
    #[arg(long, global = true)]
    listen: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Clone)]
enum Command {
    /// All roles in one process (the default).
    Serve,
    /// Viewer-facing front role only (needs a shared bus and store).
    Front,
    /// Bus → store processor role only (needs a shared bus and store).
    Processor,
    /// The archiver role only: stored log → archive (needs a shared store and archive).
    Archiver,
    /// Validate the config (file + environment, as `serve` loads it) and print
    /// it as TOML, secrets redacted; exit 2 naming the bad key. Connects to nothing.
    Check,
    /// Print a viewer token signed with the configured JWT secret, or a
    /// moderator token (`--moderator --rooms r1,r2`) signed with the admin token.
    Token(tools::TokenArgs),
    /// Print the v2 signature headers of a gift backend request, signed with
    /// the first configured gift secret.
    Sign(tools::SignArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.clone().unwrap_or(Command::Serve);
    // A tool's stdout is its answer (a token, headers, a config): logs go aside.
    let tool = matches!(
        command,
        Command::Check | Command::Token(_) | Command::Sign(_)
    );
    let mut env: Vec<(String, String)> = std::env::vars().collect();
    if let Some(listen) = &cli.listen {
        env.push(("DANMAKU_LISTEN".into(), listen.clone()));
    }
    if matches!(command, Command::Check) {
        init_logs(false, true);
        return answer(tools::check(cli.config.as_deref(), env));
    }
    let config = match Config::load(cli.config.as_deref(), env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("danmaku: {e:#}");
            return ExitCode::from(2);
        }
    };
    init_logs(config.log.json(), tool);
    let role = match command {
        Command::Serve => Role::Serve,
        Command::Front => Role::Front,
        Command::Processor => Role::Processor,
        Command::Archiver => Role::Archiver,
        Command::Token(args) => return answer(tools::token(&config, &args).map(|t| t + "\n")),
        Command::Sign(args) => return answer(tools::sign(&config, &args)),
        Command::Check => unreachable!("answered above"),
    };
    let open_files = danmaku::http::listener::raise_open_file_limit();
    tracing::debug!(?open_files, "open-file limit");
    let shared = if role == Role::Archiver {
        // The archiver reads the live store and writes the archive: both shared.
        config.store.engine != StoreEngine::Memory && !config.archive.url.contains(":memory:")
    } else {
        config.bus.engine != BusEngine::Memory && config.store.engine != StoreEngine::Memory
    };
    if role != Role::Serve && !shared {
        eprintln!(
            "danmaku: the {} role runs alone only against shared engines \
             (bus.engine = \"kafka\", store.engine = \"redis\"; the archiver: store.engine = \
             \"redis\" and an archive.url that is not in memory); this configuration uses \
             the embedded engines, which live inside one process: run `danmaku serve`",
            role.name()
        );
        return ExitCode::from(2);
    }
    if config.auth.uses_dev_jwt_secret() || config.auth.uses_dev_gift_secret() {
        tracing::warn!(
            "USING DEVELOPMENT SECRETS: viewer tokens and gift signatures are forgeable. \
             Set DANMAKU_JWT_SECRET and DANMAKU_GIFT_SECRETS for anything but local use."
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(serve(config, role)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("danmaku: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs filtered by `DANMAKU_LOG`, as text or one JSON object a line
/// (`log.format`), on stdout (stderr for the tools).
fn init_logs(json: bool, to_stderr: bool) {
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    let filter = tracing_subscriber::EnvFilter::try_from_env("DANMAKU_LOG")
        .unwrap_or_else(|_| "info".into());
    let writer = if to_stderr {
        BoxMakeWriter::new(std::io::stderr)
    } else {
        BoxMakeWriter::new(std::io::stdout)
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    if json {
        logs.json().init();
    } else {
        logs.init();
    }
}

/// A tool's answer on stdout (exit 0), or its error on stderr (exit 2).
fn answer(result: anyhow::Result<String>) -> ExitCode {
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("danmaku: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn serve(config: Config, role: Role) -> anyhow::Result<()> {
    let server = Server::start_role(config, role).await?;
    shutdown_signal().await;
    server.shutdown().await
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}
