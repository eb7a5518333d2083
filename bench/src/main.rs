//! `relay-bench`: the project's benchmark (issue #4; results in BENCHMARKS.md).
//!
//! It starts the relay (`gsio-relay` beside this binary) or targets a running one (`--url`), and
//! in the same run a *floor*: a minimal frame forwarder on the same WebSocket library. It drives
//! both with the same real WebSocket and gRPC clients over loopback and prints the relay's
//! figures beside the floor's, with their ratio, which is the headline: absolute figures on a
//! shared machine drift from run to run, the ratio much less.
//!
//! ```text
//! cargo build --release -p gsio-relay -p relay-bench
//! target/release/relay-bench all            # every scenario (a few minutes)
//! target/release/relay-bench fanout --quick # one scenario, small and short
//! ```
//!
//! # Layout
//! - [`scenarios`]: fanout, directed, bridge, nats, conns, soak; tables, JSON lines, target
//!   checks.
//! - [`cluster`]: the cross-relay scenario (issue 11): one relay, two relays on one
//!   nats-server, and nats-server alone, side by side.
//! - [`clients`]: connections (WebSocket, gRPC, NATS), senders with flow control, receivers,
//!   one traffic run.
//! - [`floor`]: the minimal forwarder (the hidden `floor` subcommand).
//! - [`wire`]: the payload `{"seq":N,"ts":T}`, written and read back.
//! - [`stats`]: counting (loss, gaps), latency histograms, tables, JSON.
//! - [`proc`]: child processes (relay, floor, nats-server; killed with the bench) and /proc CPU
//!   and RSS.

mod clients;
mod cluster;
mod floor;
mod proc;
mod scenarios;
mod stats;
mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use scenarios::{Report, Settings};

/// The relay's allocator (`src/main.rs` of gsio-relay sets the same one). The floor is this
/// binary re-executed, so the floor's frames and queues are allocated the way the relay's are and
/// the ratio does not measure allocators; the bench clients run on it too, on both targets alike.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

extern "C" {
    /// mimalloc.h: sets one of mimalloc's options (the library is linked in by the `mimalloc`
    /// crate, which does not wrap this call).
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_t` (the `mimalloc` crate's default).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// The relay's allocator setting (gsio-relay `src/main.rs`, `return_freed_memory_at_once`):
/// freed memory goes back to the system at once, in the floor as in the relay.
fn return_freed_memory_at_once() {
    // SAFETY: an option set before anything else runs; mimalloc reads it on each purge.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
}

/// Benchmarks the gsio-relay against a minimal forwarding floor, over real WebSocket and gRPC
/// clients on 127.0.0.1. Prints a table per scenario and one JSON line per run.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    options: Options,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Every scenario: fanout, directed, bridge, nats, cluster, conns, soak.
    All,
    /// 1 publisher, N subscribers, broadcast: max rate and a fixed deliveries/s.
    Fanout,
    /// N pairs, each peer sending to its partner: max rate and a fixed msgs/s.
    Directed,
    /// Directed pairs over WebSocket, gRPC, and gRPC <-> WebSocket (relay only).
    Bridge,
    /// The fanout and directed shapes through nats-server alone (async-nats clients, no relay).
    Nats,
    /// The fanout and directed shapes on one relay, across two relays on one nats-server (every
    /// message crosses), and through nats-server alone, side by side.
    Cluster,
    /// Idle WebSocket peers and gRPC streams: server RSS per connection; a hold check.
    Conns,
    /// Directed pairs at half the max rate for a minute: RSS growth.
    Soak,
    /// The floor server itself (started by the bench).
    #[command(hide = true)]
    Floor {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value_t = 4096)]
        queue_capacity: usize,
        #[arg(long, default_value_t = clients::MAX_MESSAGE_BYTES)]
        max_message_bytes: usize,
    },
}

#[derive(Args, Debug)]
struct Options {
    /// Bench the relay already running at this WebSocket URL (ws://host:port) instead of
    /// starting one. It must route `LedgerSync` as directed and `Bench` as broadcast, with
    /// discovery.announce_peers = false.
    #[arg(long, global = true)]
    url: Option<String>,
    /// With --url: the running relay's gRPC front (http://host:port), for bridge and conns.
    #[arg(long, global = true)]
    grpc_url: Option<String>,
    /// With --url: the running relay's PID, to measure its CPU and RSS.
    #[arg(long, global = true)]
    pid: Option<u32>,
    /// The relay.toml the started relay runs on (ports, announcements and max_connections are
    /// overridden by environment variables).
    #[arg(long, global = true, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../relay.toml"))]
    config: PathBuf,
    /// An extra environment override for the started relay, e.g.
    /// --relay-env GSIO_RELAY_LIMITS__QUEUE_CAPACITY=8192 (repeatable).
    #[arg(long = "relay-env", global = true, value_parser = parse_key_value)]
    relay_env: Vec<(String, String)>,
    /// A small, short run of everything (smoke test): 1 s runs, few peers, 5 s soak.
    #[arg(long, global = true)]
    quick: bool,
    /// Send envelopes without a `message_id`, so that the relay assigns one to each (what
    /// assigning costs); by default they carry one, as gsio-net's do.
    #[arg(long, global = true)]
    no_message_id: bool,
    /// Seconds each traffic run sends for [default: 5; quick: 1].
    #[arg(long, global = true)]
    duration: Option<f64>,
    /// Seconds to wait for in-flight messages after sending stops [default: 5; quick: 2].
    #[arg(long, global = true)]
    drain: Option<f64>,
    /// Fan-out subscribers [default: 200; quick: 20].
    #[arg(long, global = true)]
    subscribers: Option<usize>,
    /// Directed pairs [default: 100; quick: 10].
    #[arg(long, global = true)]
    pairs: Option<usize>,
    /// Fan-out fixed rate, in deliveries/s.
    #[arg(long, global = true, default_value_t = 50_000.0)]
    fanout_rate: f64,
    /// Directed fixed rate, in msgs/s over all senders.
    #[arg(long, global = true, default_value_t = 20_000.0)]
    directed_rate: f64,
    /// Messages in flight per sender and receiver; keep it under the relay's queue_capacity.
    #[arg(long, global = true, default_value_t = 1000)]
    window: u64,
    /// Upper bound on the messages one sender sends in a run.
    #[arg(long, global = true, default_value_t = 50_000_000)]
    max_messages: u64,
    /// Idle WebSocket peers for conns [default: 10000; quick: 500].
    #[arg(long, global = true)]
    ws_conns: Option<usize>,
    /// Idle gRPC streams for conns [default: 2000; quick: 100].
    #[arg(long, global = true)]
    grpc_streams: Option<usize>,
    /// gRPC streams per HTTP/2 connection in conns (1 is also measured).
    #[arg(long, global = true, default_value_t = 100)]
    streams_per_conn: usize,
    /// WebSocket peers held at once in the hold check; 0 skips it [default: 19000; quick: 1000].
    #[arg(long, global = true)]
    peers: Option<usize>,
    /// Peers of the mass connect in conns: that many WebSocket peers connect at once to a relay
    /// with peer announcements on (the shipped discovery settings), then to one with them off;
    /// time, CPU and memory compared. 0 skips it [default: 10000; quick: 500].
    #[arg(long, global = true)]
    mass: Option<usize>,
    /// Seconds the hold check holds its peers before the echo check.
    #[arg(long, global = true, default_value_t = 5.0)]
    hold: f64,
    /// Soak seconds [default: 60; quick: 5].
    #[arg(long, global = true)]
    soak: Option<f64>,
    /// Soak rate in msgs/s [default: half the directed max rate].
    #[arg(long, global = true)]
    soak_rate: Option<f64>,
    /// Also append the JSON lines to this file.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {text}"))
}

impl Options {
    fn settings(&self) -> anyhow::Result<Settings> {
        let quick = self.quick;
        let pick = |value: Option<f64>, normal: f64, small: f64| {
            value.unwrap_or(if quick { small } else { normal })
        };
        let count = |value: Option<usize>, normal: usize, small: usize| {
            value.unwrap_or(if quick { small } else { normal })
        };
        // The frame limits and queue capacity the relay runs with, for the floor to match.
        let config = gsio_relay::config::load(&self.config)
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.config.display()))?;
        let mut queue_capacity = config.limits.queue_capacity;
        if let Some((_, value)) = self
            .relay_env
            .iter()
            .find(|(key, _)| key == "GSIO_RELAY_LIMITS__QUEUE_CAPACITY")
        {
            queue_capacity = value.parse()?;
        }
        if self.window as usize >= queue_capacity {
            anyhow::bail!(
                "--window {} must be below the relay's queue_capacity ({queue_capacity}), or \
                 consumers that keep reading would be disconnected as slow",
                self.window
            );
        }
        let soak = pick(self.soak, 60.0, 5.0);
        Ok(Settings {
            url: self.url.clone(),
            grpc_url: self.grpc_url.clone(),
            pid: self.pid,
            config: self.config.clone(),
            relay_env: self.relay_env.clone(),
            duration: Duration::from_secs_f64(pick(self.duration, 5.0, 1.0)),
            drain: Duration::from_secs_f64(pick(self.drain, 5.0, 2.0)),
            subscribers: count(self.subscribers, 200, 20).max(1),
            pairs: count(self.pairs, 100, 10).max(1),
            fanout_rate: self.fanout_rate,
            directed_rate: self.directed_rate,
            window: self.window.max(1),
            max_per_sender: self.max_messages.max(1),
            ws_conns: count(self.ws_conns, 10_000, 500),
            grpc_streams: count(self.grpc_streams, 2_000, 100),
            streams_per_conn: self.streams_per_conn.max(1),
            hold_peers: count(self.peers, 19_000, 1_000),
            mass_peers: count(self.mass, 10_000, 500),
            hold: Duration::from_secs_f64(if quick { 1.0 } else { self.hold }),
            soak: Duration::from_secs_f64(soak),
            soak_rate: self.soak_rate,
            soak_sample: Duration::from_secs_f64(if soak >= 20.0 { 5.0 } else { 1.0 }),
            queue_capacity,
            max_message_bytes: config.limits.max_message_bytes,
            json: self.json.clone(),
        })
    }
}

fn main() -> ExitCode {
    return_freed_memory_at_once();
    let cli = Cli::parse();
    wire::set_message_ids(!cli.options.no_message_id);
    let (soft, hard) = proc::raise_nofile_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Command::Floor {
        listen,
        queue_capacity,
        max_message_bytes,
    } = cli.command
    {
        return match runtime.block_on(floor::run(listen, queue_capacity, max_message_bytes)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("floor: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    let settings = match cli.options.settings() {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::from(2);
        }
    };
    eprintln!("open files: soft limit {soft}, hard limit {hard}");
    let needed = settings
        .hold_peers
        .max(settings.ws_conns)
        .max(settings.mass_peers) as u64
        + 64;
    if matches!(cli.command, Command::All | Command::Conns) && soft < needed {
        eprintln!(
            "warning: the open-file limit ({soft}) is below the {needed} the conns scenario needs"
        );
    }
    wire::now_ns(); // fix the clock origin
                    // block_on runs this future on the main thread, which is what spawns the children (see
                    // `proc`): their parent-death signal is tied to this thread.
    let result = runtime.block_on(run(cli.command, &settings));
    // Do not wait for idle client tasks: they end with the process.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(report) => {
            report.print_summary();
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, settings: &Settings) -> anyhow::Result<Report> {
    let mut report = Report::default();
    if matches!(command, Command::All | Command::Nats | Command::Cluster) {
        // Before anything runs: a missing nats-server should not end `all` halfway.
        proc::nats_server_binary()?;
    }
    match command {
        Command::All => {
            scenarios::fanout(settings, &mut report).await?;
            scenarios::directed(settings, &mut report).await?;
            scenarios::bridge(settings, &mut report).await?;
            scenarios::nats_alone(settings, &mut report).await?;
            cluster::cluster(settings, &mut report).await?;
            scenarios::conns(settings, &mut report).await?;
            scenarios::soak(settings, &mut report).await?;
        }
        Command::Fanout => scenarios::fanout(settings, &mut report).await?,
        Command::Directed => scenarios::directed(settings, &mut report).await?,
        Command::Bridge => scenarios::bridge(settings, &mut report).await?,
        Command::Nats => {
            scenarios::nats_alone(settings, &mut report).await?;
        }
        Command::Cluster => {
            cluster::cluster(settings, &mut report).await?;
        }
        Command::Conns => scenarios::conns(settings, &mut report).await?,
        Command::Soak => scenarios::soak(settings, &mut report).await?,
        Command::Floor { .. } => unreachable!("handled in main"),
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    extern "C" {
        /// mimalloc's own answer to "is this pointer in one of my heaps?" (mimalloc.h; the
        /// library is linked in by the `mimalloc` crate).
        fn mi_is_in_heap_region(p: *const std::ffi::c_void) -> bool;
    }

    /// BENCHMARKS.md: the floor runs on "the relay's allocator (the bench binary, which the floor
    /// is, runs on mimalloc)". Memory from the global allocator of this binary (this test
    /// binary is built from the same `main.rs`) is mimalloc's, and the relay's `main.rs`
    /// installs mimalloc too.
    #[test]
    fn the_bench_and_so_the_floor_run_on_the_relays_allocator() {
        let frame = vec![0u8; 256];
        // SAFETY: the pointer is only compared against mimalloc's heap regions, not read.
        let ours = unsafe { mi_is_in_heap_region(frame.as_ptr().cast()) };
        assert!(ours, "this binary's global allocator is not mimalloc");
        let relay_main = include_str!("../../src/main.rs");
        assert!(
            relay_main.contains("#[global_allocator]")
                && relay_main
                    .contains("static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;"),
            "gsio-relay's src/main.rs no longer installs mimalloc: the floor must follow it"
        );
        // The same purge setting, set the same way (the option's number included).
        for line in [
            "const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;",
            "unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 0) };",
            "    return_freed_memory_at_once();\n    let",
        ] {
            assert!(
                relay_main.contains(line) && include_str!("main.rs").contains(line),
                "the relay and the floor no longer set mimalloc alike: {line}"
            );
        }
    }

    /// The floor the bench starts is this binary's hidden `floor` subcommand, given the queue
    /// capacity and frame limit the relay runs with.
    #[test]
    fn the_floor_is_this_binary_with_the_relays_limits() {
        let args = std::iter::once("relay-bench".to_owned()).chain(proc::floor_args(1234, 5678));
        let cli = Cli::try_parse_from(args).unwrap();
        let Command::Floor {
            listen,
            queue_capacity,
            max_message_bytes,
        } = cli.command
        else {
            panic!("not the floor: {:?}", cli.command);
        };
        assert_eq!(listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!((queue_capacity, max_message_bytes), (1234, 5678));
    }

    fn settings(args: &[&str]) -> anyhow::Result<Settings> {
        let cli = Cli::try_parse_from(["relay-bench", "directed"].iter().chain(args)).unwrap();
        cli.options.settings()
    }

    /// BENCHMARKS.md's scenarios and "How it measures" name these defaults: 1 × 200 fan-out at
    /// 50,000 deliveries/s, 100 pairs at 20,000 msgs/s, a window of 1000, 5 s runs and at most
    /// 5 s of drain, 10,000 idle WebSocket peers, 2,000 gRPC streams 100 per connection, 19,000
    /// peers held for 5 s, a 60 s soak sampled every 5 s.
    #[test]
    fn the_defaults_are_the_documented_ones() {
        let s = settings(&[]).unwrap();
        assert_eq!((s.subscribers, s.fanout_rate), (200, 50_000.0));
        assert_eq!((s.pairs, s.directed_rate), (100, 20_000.0));
        assert_eq!(s.window, 1000);
        assert_eq!(
            (s.duration, s.drain),
            (Duration::from_secs(5), Duration::from_secs(5))
        );
        assert_eq!(s.ws_conns, 10_000);
        assert_eq!((s.grpc_streams, s.streams_per_conn), (2_000, 100));
        assert_eq!((s.hold_peers, s.hold), (19_000, Duration::from_secs(5)));
        assert_eq!(s.mass_peers, 10_000);
        assert_eq!(
            (s.soak, s.soak_sample),
            (Duration::from_secs(60), Duration::from_secs(5))
        );
    }

    /// The floor gets the queue capacity and frame limit of the relay.toml the relay runs on,
    /// with the relay's overrides; and BENCHMARKS.md: "Runs below keep every window under the
    /// queue capacity, so neither target ever cuts a peer": a window at or above it is refused.
    #[test]
    fn the_floor_mirrors_the_relays_limits_and_the_window_stays_below_the_queue() {
        let shipped = settings(&[]).unwrap();
        assert_eq!(
            (
                shipped.queue_capacity,
                shipped.max_message_bytes,
                shipped.window
            ),
            (4096, 1 << 20, 1000)
        );
        let raised = settings(&["--relay-env", "GSIO_RELAY_LIMITS__QUEUE_CAPACITY=8192"]).unwrap();
        assert_eq!(raised.queue_capacity, 8192);
        let error = settings(&["--window", "4096"]).unwrap_err().to_string();
        assert!(error.contains("queue_capacity"), "{error}");
        assert!(settings(&["--window", "4095"]).is_ok());
    }
}
