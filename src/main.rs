//! `roomqd`, the roomq broker daemon.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use roomq::config::{Config, DEFAULT_TOML};
use roomq::server::ServerError;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// Exit code for an invalid configuration or command line.
const EXIT_CONFIG: u8 = 2;
/// Exit code for a broker that stopped on an error (e.g. storage failure).
const EXIT_FAILURE: u8 = 1;

#[derive(Debug, Parser)]
#[command(
    name = "roomqd",
    version,
    about = "roomq broker: durable pub/sub rooms"
)]
struct Cli {
    /// Address to listen on [default: 127.0.0.1:7420].
    #[arg(long, env = "ROOMQ_LISTEN")]
    listen: Option<SocketAddr>,
    /// Address of the HTTP listener (WebSocket /ws, /healthz, /readyz, the
    /// web page) [default: 127.0.0.1:7421]; "" turns it off.
    #[arg(long, env = "ROOMQ_HTTP_LISTEN")]
    http_listen: Option<String>,
    /// Data directory [default: ./roomq-data].
    #[arg(long, env = "ROOMQ_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// TOML configuration file (see `roomqd print-config`).
    #[arg(long, env = "ROOMQ_CONFIG")]
    config: Option<PathBuf>,
    /// More logging: -v debug, -vv trace. RUST_LOG overrides.
    #[arg(short, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Print the default configuration file, with comments, and exit.
    PrintConfig,
    /// Check a configuration (file, environment, flags) and exit.
    CheckConfig,
    /// Make a new random token and print it with the hash that goes in the
    /// config file (the token itself is never stored).
    Token,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Cmd::PrintConfig) = cli.command {
        print!("{DEFAULT_TOML}");
        return ExitCode::SUCCESS;
    }
    if let Some(Cmd::Token) = cli.command {
        return match roomq::tenancy::token::generate() {
            Ok(token) => {
                let hash = roomq::tenancy::token::TokenHash::of(&token).to_text();
                println!("token = {token}");
                println!("hash = \"{hash}\"");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("roomqd: {e}");
                ExitCode::from(EXIT_FAILURE)
            }
        };
    }
    let mut config = match Config::load(cli.config.as_deref(), std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("roomqd: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Some(listen) = cli.listen {
        config.listen = listen;
    }
    if let Some(dir) = cli.data_dir {
        config.data_dir = dir;
    }
    if let Some(http) = cli.http_listen {
        config.http.listen = http;
    }
    // Flags come after the file and environment were checked.
    if let Err(e) = config.validate() {
        eprintln!("roomqd: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    if let Some(Cmd::CheckConfig) = cli.command {
        // The certificate and key are read as a start would read them.
        if let Err(e) = roomq::tls::acceptor(&config.tls) {
            eprintln!("roomqd: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
        if let Err(e) = roomq::http::validate(&config.http) {
            eprintln!("roomqd: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
        println!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    init_tracing(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("roomqd: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let code = runtime.block_on(serve(config));
    // A storage call stuck in the blocking pool must not keep a fail-stop
    // from exiting.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    code
}

async fn serve(config: Config) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            error!(listen = %config.listen, error = %e, "cannot listen");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let mut server_builder = roomq::server::Server::new(config.clone());
    if let Some(addr) = config.http.addr() {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => server_builder = server_builder.http(l),
            Err(e) => {
                error!(http = %addr, error = %e, "cannot listen (http.listen)");
                return ExitCode::from(EXIT_FAILURE);
            }
        }
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(watch_signals(shutdown.clone()));
    match server_builder.run(listener, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ (ServerError::Config(_) | ServerError::Tls(_) | ServerError::Http(_))) => {
            error!(error = %e, "roomqd stopped");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            error!(error = %e, "roomqd stopped");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
async fn watch_signals(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            error!("cannot install signal handlers; stop with SIGKILL");
            return;
        };
        tokio::select! {
            _ = int.recv() => info!("SIGINT received"),
            _ = term.recv() => info!("SIGTERM received"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        info!("Ctrl-C received");
    }
    shutdown.cancel();
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
