//! `gsio-relay`: runs the relay on a `relay.toml`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use gsio_relay::reload::ReloadHandle;
use gsio_relay::Server;
use gsio_relay_core::config::LogFormat;

/// mimalloc instead of the system allocator: the relay allocates a few small objects per
/// message from both cores at once, where glibc's malloc spent a fifth of the relay's CPU
/// (arena locks and consolidation, measured with perf under relay-bench).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

extern "C" {
    /// mimalloc.h: sets one of mimalloc's options (the library is linked in by the `mimalloc`
    /// crate, which does not wrap this call).
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_t` (the `mimalloc` crate's default).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// Memory mimalloc frees goes back to the system at once, not after its default purge delay
/// (1 s in v3): a purge is only carried out by a later call into the allocator, so a relay that
/// went quiet after a burst (a crowd of clients that sent large frames and left) kept all of it
/// (583 MiB of 300 unfinished 2 MB frames, measured; 10 MiB with this). relay-bench's floor
/// sets the same.
fn return_freed_memory_at_once() {
    // SAFETY: an option set before anything else runs; mimalloc reads it on each purge.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
}

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
    return_freed_memory_at_once();
    let args = Args::parse();
    // Before the log exists (its format is in the file): a bad file is told on stderr as is.
    let config = match gsio_relay::config::load(&args.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: invalid configuration\n{error}");
            return ExitCode::from(2);
        }
    };
    init_log(config.log.format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config, args.config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Log lines to stderr at the level `RUST_LOG` sets (info by default): `tracing`'s text lines, or
/// one JSON object per line with the same fields (`[log] format = "json"`), each field at the top
/// level beside `timestamp`, `level`, `target` and `message`.
fn init_log(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => log.init(),
        LogFormat::Json => log
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

async fn run(config: gsio_relay_core::RelayConfig, path: PathBuf) -> anyhow::Result<()> {
    // Installed before anything listens: a SIGTERM that arrives as soon as the relay says it is
    // listening must start a graceful shutdown, not kill the process by default; a SIGHUP must
    // reload, not end the process (its default).
    let shutdown = shutdown_signal()?;
    let hangup = on_hangup()?;
    let mut server = Server::bind(config).await?;
    hangup(server.watch_config(path));
    tracing::info!(
        websocket = %format!("ws://{}", server.ws_addr()),
        grpc = %server.grpc_addr(),
        admin = %format!("http://{}", server.admin_addr()),
        "gsio-relay listening"
    );
    server.run(shutdown).await?;
    Ok(())
}

/// Registers the SIGHUP handler now; the returned function starts asking `reload` for a reload
/// on every SIGHUP.
#[cfg(unix)]
fn on_hangup() -> std::io::Result<impl FnOnce(ReloadHandle)> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup())?;
    Ok(move |reload: ReloadHandle| {
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading relay.toml");
                reload.request();
            }
        });
    })
}

/// No SIGHUP here: the file watch alone reloads.
#[cfg(not(unix))]
fn on_hangup() -> std::io::Result<impl FnOnce(ReloadHandle)> {
    Ok(|_reload: ReloadHandle| {})
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
