//! `gsio-relay`: runs the relay on a `relay.toml`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use gsio_relay::Server;

/// mimalloc instead of the system allocator: the relay allocates a few small objects per
/// message from both cores at once, where glibc's malloc spent a fifth of the relay's CPU
/// (arena locks and consolidation, measured with perf under relay-bench).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// GSIO-Net relay: a WebSocket front for browsers and a gRPC RelayService for nodes, routing
/// envelopes by the rules in relay.toml.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The configuration file. Any key can be overridden by an environment variable such as
    /// GSIO_RELAY_ROUTING__DEFAULT=echo (sections separated by "__").
    #[arg(long, short, default_value = "relay.toml", env = "GSIO_RELAY_CONFIG")]
    config: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();

    let config = match gsio_relay::config::load(&args.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: invalid configuration\n{error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: gsio_relay_core::RelayConfig) -> anyhow::Result<()> {
    // Installed before anything listens: a SIGTERM that arrives as soon as the relay says it is
    // listening must start a graceful shutdown, not kill the process by default.
    let shutdown = shutdown_signal()?;
    let server = Server::bind(config).await?;
    tracing::info!(
        websocket = %format!("ws://{}", server.ws_addr()),
        grpc = %server.grpc_addr(),
        admin = %format!("http://{}", server.admin_addr()),
        "gsio-relay listening"
    );
    server.run(shutdown).await?;
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM; the handlers are registered when this is called.
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {},
            _ = terminate.recv() => {},
        }
    })
}

/// Resolves on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
