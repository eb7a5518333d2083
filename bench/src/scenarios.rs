//! The scenarios of issue #4, each a function that starts what it needs (relay, floor), runs its
//! traffic or connections, prints a table and JSON lines, and records its target checks.
//!
//! - **fanout**: 1 WebSocket publisher, N subscribers, broadcast; max rate and a fixed rate in
//!   deliveries/s; relay against floor.
//! - **directed**: N WebSocket pairs, each peer sending to its partner; max rate and a fixed
//!   total rate in msgs/s; relay against floor.
//! - **bridge**: directed pairs over WebSocket, over gRPC, and gRPC ↔ WebSocket, on the relay,
//!   compared with the WebSocket pairs.
//! - **conns**: idle WebSocket peers and idle gRPC streams: server RSS per connection; a hold
//!   check of many WebSocket peers, each answering an echo at the end; and a mass connect with
//!   peer announcements on against the same with them off (time, CPU, memory).
//! - **soak**: directed pairs at half the max rate for a minute, RSS sampled along the way.
//! - **nats**: the fanout and directed shapes through nats-server alone (async-nats clients,
//!   one subject per receiver for directed, one shared subject for fan-out), the yardstick for
//!   relays that talk through NATS (issue 11).
//!
//! The cross-relay scenario (two relays on one NATS) is [`crate::cluster`]; it uses the pieces
//! here ([`measure`], [`nats_topology`], the checks).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures_util::{SinkExt, StreamExt};
use gsio_relay::pb;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::clients::{self, Access, Front, Pacing, Plan, Ws};
use crate::proc::{self, Child, LogWatch};
use crate::stats::{fmt_num, mib, print_table, round, Latency, ProcUsage, RunResult};
use crate::wire::{self, Route, Stamp};

/// Every knob of a run, resolved (defaults, `--quick`, flags).
#[derive(Debug, Clone)]
pub struct Settings {
    pub url: Option<String>,
    pub grpc_url: Option<String>,
    pub pid: Option<u32>,
    pub config: PathBuf,
    pub relay_env: Vec<(String, String)>,
    pub duration: Duration,
    pub drain: Duration,
    pub subscribers: usize,
    pub pairs: usize,
    /// Deliveries per second (publisher rate × subscribers).
    pub fanout_rate: f64,
    /// Messages per second, all senders together.
    pub directed_rate: f64,
    pub window: u64,
    pub max_per_sender: u64,
    pub ws_conns: usize,
    pub grpc_streams: usize,
    pub streams_per_conn: usize,
    pub hold_peers: usize,
    /// Peers of the mass connect, announcements on against off (0: not run).
    pub mass_peers: usize,
    pub hold: Duration,
    pub soak: Duration,
    pub soak_rate: Option<f64>,
    pub soak_sample: Duration,
    pub queue_capacity: usize,
    pub max_message_bytes: usize,
    pub json: Option<PathBuf>,
}

/// One target line of the issue, with what was measured.
pub struct Check {
    pub name: String,
    pub measured: String,
    pub target: String,
    /// None: reported only.
    pub met: Option<bool>,
}

/// What a whole invocation found: the JSON lines already went out; these are for the summary.
#[derive(Default)]
pub struct Report {
    pub checks: Vec<Check>,
    /// The relay's WebSocket directed max rate, for the soak's default rate.
    pub directed_max: Option<f64>,
    /// The relay's own final counters, one line per relay process.
    pub relay_stops: Vec<String>,
}

impl Report {
    pub(crate) fn check(&mut self, name: &str, measured: String, target: &str, met: Option<bool>) {
        self.checks.push(Check {
            name: name.to_owned(),
            measured,
            target: target.to_owned(),
            met,
        });
    }

    pub fn print_summary(&self) {
        println!("\nTargets (issue #4)");
        for check in &self.checks {
            let verdict = match check.met {
                Some(true) => "MET",
                Some(false) => "NOT MET",
                None => "reported",
            };
            println!(
                "  {:<8} {:<52} {:<34} target {}",
                verdict, check.name, check.measured, check.target
            );
        }
        for line in &self.relay_stops {
            println!("  relay counters: {line}");
        }
    }
}

/// A process under test: its addresses, PID and log (when the bench started it).
pub struct Target {
    pub label: &'static str,
    pub ws_url: String,
    pub grpc_url: String,
    pub pid: Option<u32>,
    pub log: Option<Arc<LogWatch>>,
    /// The processes doing this target's work besides `pid`'s, each measured, all added up
    /// as the server: for two relays on one NATS, both relays and their nats-server (and `pid`
    /// is `None`). Empty for a target of one process.
    pub other_processes: Vec<PartProcess>,
    /// The process, when the bench started it and this target owns it (stopped with it).
    pub(crate) child: Option<Child>,
}

/// A process that does part of a [`Target`]'s work.
pub struct PartProcess {
    /// Its name in the tables and JSON lines (`relay-1`, `nats-server`).
    pub name: &'static str,
    pub pid: u32,
    pub log: Arc<LogWatch>,
}

impl Target {
    /// The relay: started by the bench, or the one at `--url`.
    pub fn relay(settings: &Settings) -> Result<Target> {
        if let Some(url) = &settings.url {
            return Ok(Target {
                label: "relay",
                ws_url: url.trim_end_matches('/').to_owned(),
                grpc_url: settings.grpc_url.clone().unwrap_or_default(),
                pid: settings.pid,
                log: None,
                other_processes: Vec::new(),
                child: None,
            });
        }
        let relay = proc::spawn_relay(&settings.config, &settings.relay_env)?;
        eprintln!(
            "relay started: pid {} {} {}",
            relay.child.pid(),
            relay.ws_url,
            relay.grpc_url
        );
        Ok(Target {
            label: "relay",
            ws_url: relay.ws_url,
            grpc_url: relay.grpc_url,
            pid: Some(relay.child.pid()),
            log: Some(relay.child.log.clone()),
            other_processes: Vec::new(),
            child: Some(relay.child),
        })
    }

    pub fn floor(settings: &Settings) -> Result<Target> {
        let floor = proc::spawn_floor(settings.queue_capacity, settings.max_message_bytes)?;
        eprintln!("floor started: pid {} {}", floor.child.pid(), floor.ws_url);
        Ok(Target {
            label: "floor",
            ws_url: floor.ws_url,
            grpc_url: String::new(),
            pid: Some(floor.child.pid()),
            log: None,
            other_processes: Vec::new(),
            child: Some(floor.child),
        })
    }

    fn needs_grpc(&self) -> Result<()> {
        if self.grpc_url.is_empty() {
            bail!("this scenario needs the relay's gRPC front: give --grpc-url with --url");
        }
        Ok(())
    }

    /// Stops the process (SIGTERM for the relay, so it logs its counters).
    pub fn stop(mut self, report: &mut Report) {
        if let Some(child) = self.child.take() {
            if self.label == "relay" {
                stop_relay(child, report);
            } else {
                child.stop();
            }
        }
    }
}

/// Stops a relay with SIGTERM, so that it logs its final counters, and keeps them (and its first
/// warnings) for the report.
pub fn stop_relay(child: Child, report: &mut Report) {
    let log = child.log.clone();
    let status = child.stop();
    let counters = log
        .stopped_line
        .lock()
        .expect("not poisoned")
        .clone()
        .unwrap_or_else(|| format!("(no final counters; exit: {status})"));
    let kept = log.kept.lock().expect("not poisoned");
    for line in kept.iter().take(5) {
        eprintln!("relay warned: {line}");
    }
    report.relay_stops.push(counters);
}

pub(crate) fn emit(settings: &Settings, line: &Value) {
    println!("{line}");
    if let Some(path) = &settings.json {
        use std::io::Write as _;
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut file| writeln!(file, "{line}"));
        if let Err(error) = written {
            eprintln!("cannot append to {}: {error}", path.display());
        }
    }
}

/// What one run is, for its JSON line and its log line.
pub(crate) struct RunSpec {
    pub scenario: &'static str,
    pub mode: &'static str,
    pub transport: &'static str,
    pub target_rate: Option<f64>,
}

pub(crate) async fn measure(
    settings: &Settings,
    target: &Target,
    spec: &RunSpec,
    topology: clients::Topology,
    plan: Plan,
) -> RunResult {
    let senders = topology.senders.len();
    let receivers = topology
        .receivers
        .iter()
        .filter(|r| r.link.is_some())
        .count();
    eprintln!(
        "  {} {} {} {}: {senders} senders, {receivers} receivers, {:?}",
        spec.scenario, spec.mode, target.label, spec.transport, plan.pacing
    );
    // The target's own process (if its PID is known), then its other processes.
    let own = target
        .pid
        .map(|pid| (target.label, pid, target.log.as_deref()));
    let processes: Vec<(&'static str, u32, Option<&LogWatch>)> = own
        .into_iter()
        .chain(
            target
                .other_processes
                .iter()
                .map(|process| (process.name, process.pid, Some(&*process.log))),
        )
        .collect();
    let pids: Vec<u32> = processes.iter().map(|(_, pid, _)| *pid).collect();
    let logs: Vec<&LogWatch> = processes.iter().filter_map(|(_, _, log)| *log).collect();
    let outcome = clients::run_traffic(topology, plan, &pids, &logs).await;
    // Each process by name when the target has several.
    let server_processes = if target.other_processes.is_empty() {
        Vec::new()
    } else {
        processes
            .iter()
            .zip(&outcome.servers)
            .filter_map(|((name, _, _), usage)| Some((*name, (*usage)?)))
            .collect()
    };
    let result = RunResult {
        scenario: spec.scenario,
        mode: spec.mode,
        target: target.label,
        transport: spec.transport,
        senders,
        receivers,
        target_rate: spec.target_rate,
        sent: outcome.sent,
        expected: outcome.expected,
        received: outcome.received,
        lost: outcome.lost,
        duplicates: outcome.duplicates,
        unexpected: outcome.unexpected,
        gaps: outcome.gaps,
        late: outcome.late,
        elapsed_s: outcome.elapsed_s,
        latency: outcome.latency.summary(),
        errors: outcome.errors,
        first_error: outcome.first_error,
        disconnects: outcome.disconnects,
        first_disconnect: outcome.first_disconnect,
        server_warnings: outcome.server_warnings,
        server: ProcUsage::sum(&outcome.servers),
        server_processes,
        client: outcome.client,
    };
    emit(settings, &result.to_json());
    // Let the closed connections go before the next run is measured.
    tokio::time::sleep(Duration::from_secs(1)).await;
    result
}

/// A WebSocket scenario at max rate, then at the fixed `(pacing, rate)`, each on the floor and
/// then the relay with the same clients; prints a table per mode. Returns `[max, fixed]`, each
/// `[floor, relay]`.
async fn floor_and_relay<'t, F, Fut>(
    settings: &Settings,
    targets: [&'t Target; 2],
    scenario: &'static str,
    (fixed_pacing, fixed_rate): (Pacing, f64),
    topology: F,
    title: impl Fn(Option<f64>) -> String,
) -> Result<Vec<Vec<RunResult>>>
where
    F: Fn(&'t Target) -> Fut,
    Fut: std::future::Future<Output = Result<clients::Topology>>,
{
    let modes = [
        ("max", Pacing::Max, None),
        ("fixed", fixed_pacing, Some(fixed_rate)),
    ];
    let mut by_mode = Vec::new();
    for (mode, pacing, target_rate) in modes {
        let spec = RunSpec {
            scenario,
            mode,
            transport: "ws",
            target_rate,
        };
        let mut runs = Vec::new();
        for target in targets {
            let topology = topology(target).await?;
            let plan = plan(settings, pacing, settings.duration);
            runs.push(measure(settings, target, &spec, topology, plan).await);
        }
        print_table(
            &title(target_rate),
            &[&runs[0], &runs[1]],
            &["floor", "relay"],
        );
        by_mode.push(runs);
    }
    Ok(by_mode)
}

pub(crate) fn plan(settings: &Settings, pacing: Pacing, duration: Duration) -> Plan {
    Plan {
        pacing,
        duration,
        max_per_sender: settings.max_per_sender,
        window: settings.window,
        drain: settings.drain,
    }
}

/// The target "messages lost with consumers that keep reading: 0", read strictly: every
/// expected message arrived exactly once and in order, nothing else arrived, and no client saw
/// an Error envelope or a disconnect. Returns what was measured and whether it is met.
pub(crate) fn delivery_verdict(run: &RunResult) -> (String, bool) {
    let faults = [
        (run.lost, "lost"),
        (run.duplicates, "duplicates"),
        (run.unexpected, "unexpected"),
        (run.gaps, "gaps"),
        (run.late, "late"),
        (run.errors, "errors"),
        (run.disconnects, "disconnects"),
    ];
    let counts: Vec<String> = faults
        .iter()
        .skip(1)
        .map(|(count, what)| format!("{count} {what}"))
        .collect();
    let measured = format!(
        "{} lost of {} ({})",
        run.lost,
        run.expected,
        counts.join(", ")
    );
    let met = faults.iter().all(|(count, _)| *count == 0) && run.received == run.expected;
    (measured, met)
}

pub(crate) fn no_loss_check(report: &mut Report, name: &str, run: &RunResult) {
    let (measured, met) = delivery_verdict(run);
    report.check(&format!("messages lost, {name}"), measured, "0", Some(met));
}

/// Fan-out's fixed rate is in deliveries/s: the publisher sends that ÷ the subscribers.
pub(crate) fn publisher_rate(deliveries_per_s: f64, subscribers: usize) -> f64 {
    deliveries_per_s / subscribers as f64
}

/// A directed rate is in msgs/s over every sender: both peers of each pair send.
pub(crate) fn per_sender_rate(msgs_per_s: f64, pairs: usize) -> f64 {
    msgs_per_s / (2 * pairs) as f64
}

pub(crate) fn p99(run: &RunResult) -> f64 {
    run.latency.map_or(f64::INFINITY, |l| l.p99_ms)
}

pub async fn fanout(settings: &Settings, report: &mut Report) -> Result<()> {
    let n = settings.subscribers;
    println!("\n=== fanout: 1 publisher x {n} subscribers, broadcast, WebSocket ===");
    let floor = Target::floor(settings)?;
    let relay = Target::relay(settings)?;
    let publisher_rate = publisher_rate(settings.fanout_rate, n);
    let by_mode = floor_and_relay(
        settings,
        [&floor, &relay],
        "fanout",
        (Pacing::PerSender(publisher_rate), settings.fanout_rate),
        |target| clients::fanout_topology(n, &target.ws_url, &target.ws_url),
        |rate| match rate {
            None => format!("fanout, max rate: deliveries/s (1 x {n})"),
            Some(rate) => format!(
                "fanout, fixed {} deliveries/s ({} msgs/s x {n})",
                fmt_num(rate, 0),
                fmt_num(publisher_rate, 1)
            ),
        },
    )
    .await?;
    let (max, fixed) = (&by_mode[0], &by_mode[1]);
    ratio_check(
        report,
        &format!("fan-out 1x{n} deliveries/s, max rate, relay/floor"),
        max,
        0.9,
    );
    p99_check(
        report,
        &format!(
            "fan-out p99 latency at {} deliveries/s (relay)",
            fmt_num(settings.fanout_rate, 0)
        ),
        fixed,
        10.0,
    );
    no_loss_check(report, "fan-out max rate (relay)", &max[1]);
    no_loss_check(report, "fan-out fixed rate (relay)", &fixed[1]);
    relay.stop(report);
    floor.stop(report);
    Ok(())
}

/// The max-rate target: relay throughput (`runs[1]`) over the floor's (`runs[0]`).
fn ratio_check(report: &mut Report, name: &str, runs: &[RunResult], at_least: f64) {
    let ratio = runs[1].rate() / runs[0].rate().max(1e-9);
    report.check(
        name,
        format!(
            "{:.2} ({} / {})",
            ratio,
            fmt_num(runs[1].rate(), 0),
            fmt_num(runs[0].rate(), 0)
        ),
        &format!(">= {at_least:.2}"),
        Some(ratio >= at_least),
    );
}

/// The fixed-rate latency target, on the relay's run (`runs[1]`), the floor's beside it.
fn p99_check(report: &mut Report, name: &str, runs: &[RunResult], at_most_ms: f64) {
    report.check(
        name,
        format!("{:.3} ms (floor {:.3} ms)", p99(&runs[1]), p99(&runs[0])),
        &format!("<= {at_most_ms} ms"),
        Some(p99(&runs[1]) <= at_most_ms),
    );
}

pub async fn directed(settings: &Settings, report: &mut Report) -> Result<()> {
    let pairs = settings.pairs;
    println!("\n=== directed: {pairs} pairs, each peer sending to its partner, WebSocket ===");
    let floor = Target::floor(settings)?;
    let relay = Target::relay(settings)?;
    let per_sender = per_sender_rate(settings.directed_rate, pairs);
    let by_mode = floor_and_relay(
        settings,
        [&floor, &relay],
        "directed",
        (Pacing::PerSender(per_sender), settings.directed_rate),
        |target| {
            let access = Access::ws(&target.ws_url);
            clients::pairs_topology(pairs, access, access)
        },
        |rate| match rate {
            None => format!("directed, max rate: msgs/s ({pairs} pairs)"),
            Some(rate) => format!(
                "directed, fixed {} msgs/s ({pairs} pairs, {} msgs/s per peer)",
                fmt_num(rate, 0),
                fmt_num(per_sender, 1)
            ),
        },
    )
    .await?;
    let (max, fixed) = (&by_mode[0], &by_mode[1]);
    report.directed_max = Some(max[1].rate());
    ratio_check(
        report,
        &format!("directed {pairs} pairs msgs/s, max rate, relay/floor"),
        max,
        0.7,
    );
    p99_check(
        report,
        &format!(
            "directed p99 latency at {} msgs/s (relay)",
            fmt_num(settings.directed_rate, 0)
        ),
        fixed,
        5.0,
    );
    no_loss_check(report, "directed max rate (relay)", &max[1]);
    no_loss_check(report, "directed fixed rate (relay)", &fixed[1]);
    relay.stop(report);
    floor.stop(report);
    Ok(())
}

pub async fn bridge(settings: &Settings, report: &mut Report) -> Result<()> {
    let pairs = settings.pairs;
    println!(
        "\n=== bridge: {pairs} directed pairs over WebSocket, gRPC, and gRPC <-> WebSocket (relay) ==="
    );
    let relay = Target::relay(settings)?;
    relay.needs_grpc()?;
    let per_sender = per_sender_rate(settings.directed_rate, pairs);
    let kinds = [
        ("ws", Front::Ws, Front::Ws),
        ("grpc", Front::Grpc, Front::Grpc),
        ("bridge", Front::Grpc, Front::Ws),
    ];
    let modes = [
        ("max", Pacing::Max, None),
        (
            "fixed",
            Pacing::PerSender(per_sender),
            Some(settings.directed_rate),
        ),
    ];
    let mut by_mode = Vec::new();
    for (mode, pacing, target_rate) in modes {
        let mut runs = Vec::new();
        for (transport, a, b) in kinds {
            let spec = RunSpec {
                scenario: "bridge",
                mode,
                transport,
                target_rate,
            };
            let access = |front| Access {
                front,
                ws_url: &relay.ws_url,
                grpc_url: &relay.grpc_url,
            };
            let topology = clients::pairs_topology(pairs, access(a), access(b)).await?;
            runs.push(
                measure(
                    settings,
                    &relay,
                    &spec,
                    topology,
                    plan(settings, pacing, settings.duration),
                )
                .await,
            );
        }
        let title = match target_rate {
            None => {
                format!("bridge, max rate: msgs/s ({pairs} pairs; bridge = gRPC a <-> WebSocket b)")
            }
            Some(rate) => format!("bridge, fixed {} msgs/s ({pairs} pairs)", fmt_num(rate, 0)),
        };
        print_table(
            &title,
            &[&runs[0], &runs[1], &runs[2]],
            &["ws", "grpc", "bridge"],
        );
        by_mode.push(runs);
    }
    let max = &by_mode[0];
    for (i, name) in [(1, "gRPC directed"), (2, "bridge gRPC<->WS directed")] {
        report.check(
            &format!("{name} msgs/s, max rate, ratio to WS directed"),
            format!(
                "{:.2} ({} / {})",
                max[i].rate() / max[0].rate().max(1e-9),
                fmt_num(max[i].rate(), 0),
                fmt_num(max[0].rate(), 0)
            ),
            "reported",
            None,
        );
    }
    for (mode_runs, mode) in by_mode.iter().zip(["max rate", "fixed rate"]) {
        for run in &mode_runs[1..] {
            no_loss_check(report, &format!("{} {mode} (relay)", run.transport), run);
        }
    }
    relay.stop(report);
    Ok(())
}

/// nats-server started by the bench, as a [`Target`] to measure (its PID and log), and the
/// process itself, to stop.
pub(crate) fn nats_target() -> Result<(Target, proc::NatsProcess)> {
    let nats = proc::spawn_nats()?;
    eprintln!("nats-server started: pid {} {}", nats.child.pid(), nats.url);
    let target = Target {
        label: "nats-server",
        ws_url: String::new(),
        grpc_url: String::new(),
        pid: Some(nats.child.pid()),
        log: Some(nats.child.log.clone()),
        other_processes: Vec::new(),
        child: None,
    };
    Ok((target, nats))
}

/// The `scenario` shape ("fanout" or "directed", sized by `settings`) through nats-server alone
/// at `url`.
pub(crate) async fn nats_topology(
    settings: &Settings,
    scenario: &str,
    url: &str,
) -> Result<clients::Topology> {
    match scenario {
        "fanout" => clients::nats_fanout_topology(settings.subscribers, url).await,
        _ => clients::nats_pairs_topology(settings.pairs, url).await,
    }
}

/// The fanout and directed shapes (max rate, then the fixed rate), with the same clients'
/// pacing, window and counting, through nats-server alone: no relay, each peer a NATS
/// connection of its own publishing the same envelope text. Returns `[fanout, directed]`, each
/// `[max, fixed]`. (The `cluster` scenario runs the same shapes beside its relays, through
/// [`nats_topology`].)
pub async fn nats_alone(settings: &Settings, report: &mut Report) -> Result<Vec<Vec<RunResult>>> {
    let (n, pairs) = (settings.subscribers, settings.pairs);
    println!(
        "\n=== nats: the fanout (1 x {n}) and directed ({pairs} pairs) shapes through nats-server \
         alone, async-nats clients ==="
    );
    let (target, nats) = nats_target()?;
    let url = nats.url.clone();
    let publisher_rate = publisher_rate(settings.fanout_rate, n);
    let per_sender = per_sender_rate(settings.directed_rate, pairs);
    let mut shapes = Vec::new();
    for scenario in ["fanout", "directed"] {
        let (fixed_pacing, fixed_rate) = match scenario {
            "fanout" => (Pacing::PerSender(publisher_rate), settings.fanout_rate),
            _ => (Pacing::PerSender(per_sender), settings.directed_rate),
        };
        let mut runs = Vec::new();
        for (mode, pacing, target_rate) in [
            ("max", Pacing::Max, None),
            ("fixed", fixed_pacing, Some(fixed_rate)),
        ] {
            let spec = RunSpec {
                scenario,
                mode,
                transport: "nats",
                target_rate,
            };
            let topology = nats_topology(settings, scenario, &url).await?;
            let run = measure(
                settings,
                &target,
                &spec,
                topology,
                plan(settings, pacing, settings.duration),
            )
            .await;
            let shape = match scenario {
                "fanout" => format!("1 x {n}, deliveries/s"),
                _ => format!("{pairs} pairs, msgs/s"),
            };
            let title = match target_rate {
                None => format!("{scenario} through nats-server alone, max rate ({shape})"),
                Some(rate) => format!(
                    "{scenario} through nats-server alone, fixed {} ({shape})",
                    fmt_num(rate, 0)
                ),
            };
            print_table(&title, &[&run], &["nats"]);
            let (measured, _) = delivery_verdict(&run);
            report.check(
                &format!("{scenario} {mode} rate through nats-server alone"),
                format!(
                    "{} /s, p99 {:.3} ms; {measured}",
                    fmt_num(run.rate(), 0),
                    p99(&run)
                ),
                "reported",
                None,
            );
            runs.push(run);
        }
        shapes.push(runs);
    }
    let status = nats.stop();
    let warnings = target.log.as_ref().map_or(0, |log| log.warning_count());
    if warnings > 0 {
        eprintln!("nats-server logged {warnings} warnings or errors (exit: {status})");
    }
    Ok(shapes)
}

/// Idle connections held by the bench (kept open by being kept).
enum Idle {
    Ws(Vec<(String, Ws)>),
    Grpc(Vec<(String, clients::GrpcStream)>),
}

/// Opens `count` idle WebSocket peers (ids `h<tag>_<i>`), each past its Welcome.
async fn open_idle_ws(url: &str, tag: &str, count: usize) -> (Idle, usize, Option<String>) {
    let (opened, failures, first) = clients::open_many(count, 128, |i| {
        let id = format!("h{tag}_{i}");
        async move { clients::ws_connect(url, &id).await.map(|ws| (id, ws)) }
    })
    .await;
    (
        Idle::Ws(opened.into_iter().map(|(_, conn)| conn).collect()),
        failures,
        first,
    )
}

/// Opens `count` idle gRPC streams, `per_conn` to one HTTP/2 connection.
async fn open_idle_grpc(
    url: &str,
    tag: &str,
    count: usize,
    per_conn: usize,
) -> (Idle, usize, Option<String>) {
    let per_conn = per_conn.max(1);
    let conns = count.div_ceil(per_conn);
    let (channels, channel_failures, channel_first) =
        clients::open_many(conns, 64, |_| clients::grpc_channel(url)).await;
    if channel_failures > 0 {
        return (Idle::Grpc(Vec::new()), count, channel_first);
    }
    let channels: Vec<_> = channels.into_iter().map(|(_, c)| c).collect();
    let (opened, failures, first) = clients::open_many(count, 128, |i| {
        let id = format!("g{tag}_{i}");
        let channel = channels[i / per_conn].clone();
        async move { clients::grpc_open(channel, &id).await.map(|s| (id, s)) }
    })
    .await;
    (
        Idle::Grpc(opened.into_iter().map(|(_, conn)| conn).collect()),
        failures,
        first,
    )
}

impl Idle {
    fn len(&self) -> usize {
        match self {
            Idle::Ws(conns) => conns.len(),
            Idle::Grpc(conns) => conns.len(),
        }
    }

    /// Sends a `Ping` (echo) on every connection and waits for it to come back: proof that
    /// each connection is still served. Returns (answered, failed, round-trip latencies).
    async fn ping_all(&mut self) -> (usize, usize, Latency) {
        const WAIT: Duration = Duration::from_secs(20);
        let results: Vec<Result<u64>> = match self {
            Idle::Ws(conns) => {
                futures_util::stream::iter(conns.iter_mut())
                    .map(|(id, ws)| async move {
                        let route = Route::new(wire::ECHO_TYPE, id, "");
                        let sent = wire::now_ns();
                        let text = route.ws_text(Stamp { seq: 0, ts: sent });
                        let echo = async {
                            ws.send(Message::text(text)).await?;
                            loop {
                                match ws.next().await {
                                    Some(Ok(Message::Text(text))) => {
                                        if wire::scan(&text).is_some() {
                                            return Ok(wire::now_ns() - sent);
                                        }
                                    }
                                    Some(Ok(Message::Close(frame))) => {
                                        bail!("closed: {frame:?}")
                                    }
                                    Some(Ok(_)) => {}
                                    Some(Err(error)) => return Err(error.into()),
                                    None => bail!("connection ended"),
                                }
                            }
                        };
                        tokio::time::timeout(WAIT, echo)
                            .await
                            .unwrap_or_else(|_| bail!("no echo within {WAIT:?}"))
                    })
                    .buffer_unordered(256)
                    .collect()
                    .await
            }
            Idle::Grpc(conns) => {
                futures_util::stream::iter(conns.iter_mut())
                    .map(|(id, (tx, inbound))| async move {
                        let sent = wire::now_ns();
                        let echo = async {
                            tx.send(pb::Envelope {
                                message_type: wire::ECHO_TYPE.to_owned(),
                                sender_id: id.clone(),
                                recipient_id: String::new(),
                                payload_json: wire::payload_json(Stamp { seq: 0, ts: sent }),
                                message_id: wire::message_id(id, Stamp { seq: 0, ts: sent }),
                            })
                            .await
                            .map_err(|_| anyhow::anyhow!("stream closed"))?;
                            loop {
                                match inbound.message().await? {
                                    Some(e) if wire::scan(&e.payload_json).is_some() => {
                                        return Ok(wire::now_ns() - sent)
                                    }
                                    Some(_) => {}
                                    None => bail!("stream ended"),
                                }
                            }
                        };
                        tokio::time::timeout(WAIT, echo)
                            .await
                            .unwrap_or_else(|_| bail!("no echo within {WAIT:?}"))
                    })
                    .buffer_unordered(256)
                    .collect()
                    .await
            }
        };
        let mut latency = Latency::default();
        let mut failed = 0;
        for result in results {
            match result {
                Ok(ns) => latency.record_ns(ns),
                Err(_) => failed += 1,
            }
        }
        (self.len() - failed, failed, latency)
    }
}

/// One idle-connection measurement on a fresh process: RSS before, RSS with `count` idle
/// connections, per connection; optionally an echo from each at the end.
async fn idle_measure(
    settings: &Settings,
    report: &mut Report,
    target: Target,
    transport: &'static str,
    count: usize,
    per_conn: usize,
    ping: bool,
) -> Result<Value> {
    let settle = Duration::from_secs(2);
    tokio::time::sleep(settle).await;
    let base = target.pid.and_then(|pid| proc::sample(Some(pid)).ok());
    let started = Instant::now();
    let tag = clients::next_tag().to_string();
    eprintln!(
        "  conns: opening {count} idle {transport} connections to the {}",
        target.label
    );
    let (mut idle, failures, first_failure) = match transport {
        "ws" => open_idle_ws(&target.ws_url, &tag, count).await,
        _ => open_idle_grpc(&target.grpc_url, &tag, count, per_conn).await,
    };
    let open_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(settle).await;
    let held = target.pid.and_then(|pid| proc::sample(Some(pid)).ok());
    let opened = idle.len();
    let per_conn_kib = rss_growth_per_conn_kib(base.as_ref(), held.as_ref(), opened);
    let (answered, ping_failed, echo) = if ping {
        eprintln!("  conns: echo check on {opened} connections");
        let (a, f, l) = idle.ping_all().await;
        (Some(a), Some(f), l.summary())
    } else {
        (None, None, None)
    };
    let line = json!({
        "scenario": "conns",
        "target": target.label,
        "transport": transport,
        "streams_per_conn": (transport == "grpc").then_some(per_conn),
        "requested": count,
        "opened": opened,
        "failures": failures,
        "first_failure": first_failure,
        "open_s": round(open_s, 2),
        "rss_base_kib": base.map(|s| s.rss_kib),
        "rss_held_kib": held.map(|s| s.rss_kib),
        "rss_per_conn_kib": per_conn_kib.map(|k| round(k, 2)),
        "echo_answered": answered,
        "echo_failed": ping_failed,
        "echo_p99_ms": echo.map(|e| round(e.p99_ms, 3)),
    });
    emit(settings, &line);
    drop(idle);
    target.stop(report);
    Ok(line)
}

pub async fn conns(settings: &Settings, report: &mut Report) -> Result<()> {
    println!("\n=== conns: idle WebSocket peers and gRPC streams, server RSS per connection ===");
    if settings.url.is_some() && settings.pid.is_none() {
        eprintln!("  (no --pid: RSS cannot be measured; connections and echoes are still checked)");
    }
    let mut rows: Vec<(String, Value)> = Vec::new();
    let ws = settings.ws_conns;
    let line = idle_measure(
        settings,
        report,
        Target::relay(settings)?,
        "ws",
        ws,
        1,
        true,
    )
    .await?;
    rows.push((format!("relay, {ws} WebSocket peers"), line));
    if settings.url.is_none() {
        let line = idle_measure(
            settings,
            report,
            Target::floor(settings)?,
            "ws",
            ws,
            1,
            false,
        )
        .await?;
        rows.push((format!("floor, {ws} WebSocket peers"), line));
    }
    let g = settings.grpc_streams;
    let k = settings.streams_per_conn;
    // A running relay given by --url alone has no known gRPC front: skip, do not count failures.
    let grpc_known = settings.url.is_none() || settings.grpc_url.is_some();
    if !grpc_known {
        eprintln!("  conns: no --grpc-url, so no gRPC streams are measured");
    }
    let per_conn_counts: &[usize] = if k == 1 { &[1] } else { &[k, 1] };
    for &per_conn in per_conn_counts.iter().filter(|_| grpc_known && g > 0) {
        let target = Target::relay(settings)?;
        let line = idle_measure(settings, report, target, "grpc", g, per_conn, true).await?;
        rows.push((
            format!("relay, {g} gRPC streams, {per_conn}/connection"),
            line,
        ));
    }
    let hold = settings.hold_peers;
    let mut hold_line = None;
    if hold > 0 {
        let target = Target::relay(settings)?;
        eprintln!(
            "  conns: holding {hold} WebSocket peers for {:?}",
            settings.hold
        );
        // Hold: open, wait, then every peer must still answer an echo.
        let settle = settings.hold;
        let line = {
            let tag = clients::next_tag();
            tokio::time::sleep(Duration::from_secs(1)).await;
            let base = target.pid.and_then(|pid| proc::sample(Some(pid)).ok());
            let started = Instant::now();
            let (mut idle, failures, first_failure) =
                open_idle_ws(&target.ws_url, &format!("H{tag}"), hold).await;
            let open_s = started.elapsed().as_secs_f64();
            tokio::time::sleep(settle).await;
            let held = target.pid.and_then(|pid| proc::sample(Some(pid)).ok());
            let opened = idle.len();
            let (answered, ping_failed, echo) = idle.ping_all().await;
            let line = json!({
                "scenario": "conns",
                "target": "relay",
                "transport": "ws",
                "check": "hold",
                "requested": hold,
                "opened": opened,
                "failures": failures,
                "first_failure": first_failure,
                "open_s": round(open_s, 2),
                "held_s": settle.as_secs_f64(),
                "rss_base_kib": base.map(|s| s.rss_kib),
                "rss_held_kib": held.map(|s| s.rss_kib),
                "rss_per_conn_kib": rss_per_conn_kib(base, held, opened),
                "echo_answered": answered,
                "echo_failed": ping_failed,
                "echo_p99_ms": echo.summary().map(|e| round(e.p99_ms, 3)),
            });
            emit(settings, &line);
            drop(idle);
            line
        };
        target.stop(report);
        rows.push((format!("relay, hold {hold} WebSocket peers"), line.clone()));
        hold_line = Some(line);
    }

    println!("\nconns: idle connections (server RSS from /proc/<pid>/status VmRSS)");
    println!(
        "  {:<40}{:>9}{:>9}{:>8}{:>12}{:>12}{:>11}{:>9}{:>9}",
        "", "opened", "failed", "open s", "base MiB", "held MiB", "KiB/conn", "echo ok", "echo x"
    );
    for (name, line) in &rows {
        let num = |key: &str| line[key].as_f64();
        let cell = |v: Option<f64>, places: usize| v.map_or("-".to_owned(), |v| fmt_num(v, places));
        println!(
            "  {:<40}{:>9}{:>9}{:>8}{:>12}{:>12}{:>11}{:>9}{:>9}",
            name,
            cell(num("opened"), 0),
            cell(num("failures"), 0),
            cell(num("open_s"), 1),
            cell(num("rss_base_kib").map(|k| mib(k as u64)), 1),
            cell(num("rss_held_kib").map(|k| mib(k as u64)), 1),
            cell(num("rss_per_conn_kib"), 2),
            cell(num("echo_answered"), 0),
            cell(num("echo_failed"), 0),
        );
    }

    if settings.mass_peers > 0 && settings.url.is_none() {
        mass_connect(settings, report).await?;
    }

    let per = |line: &Value| line["rss_per_conn_kib"].as_f64();
    let ws_line = &rows[0].1;
    report.check(
        &format!("idle WebSocket peer server RSS, {ws} peers"),
        per(ws_line).map_or("not measured".to_owned(), |k| format!("{k:.2} KiB each")),
        "<= 8 KiB",
        per(ws_line).map(|k| k <= 8.0),
    );
    for (name, line) in &rows {
        if line["transport"] == "grpc" {
            report.check(
                &format!(
                    "idle gRPC stream server RSS ({})",
                    name.trim_start_matches("relay, ")
                ),
                per(line).map_or("not measured".to_owned(), |k| format!("{k:.2} KiB each")),
                "<= 32 KiB",
                per(line).map(|k| k <= 32.0),
            );
        }
    }
    for (name, line) in &rows {
        if line["target"] == "relay" {
            let failures =
                line["failures"].as_u64().unwrap_or(0) + line["echo_failed"].as_u64().unwrap_or(0);
            report.check(
                &format!(
                    "connection failures, {}",
                    name.trim_start_matches("relay, ")
                ),
                format!(
                    "{} connect + {} echo failures",
                    line["failures"], line["echo_failed"]
                ),
                "0",
                Some(failures == 0),
            );
        }
    }
    if let Some(line) = hold_line {
        if let Some(first) = line["first_failure"].as_str() {
            eprintln!("  hold: first failure: {first}");
        }
    }
    Ok(())
}

/// One mass connect: `count` WebSocket peers connecting at once (128 handshakes in flight, as
/// the idle measurement) to a fresh relay with announcements `on` or off; how long until every
/// peer has its Welcome, the relay's CPU over that time, and its RSS per peer 2 s later. Every
/// peer then answers an echo (announcements still in its socket are read past).
async fn mass_connect_run(settings: &Settings, on: bool, count: usize) -> Result<(Value, Target)> {
    let mut settings = settings.clone();
    settings.relay_env.push((
        "GSIO_RELAY_DISCOVERY__ANNOUNCE_PEERS".to_owned(),
        on.to_string(),
    ));
    let target = Target::relay(&settings)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let base = target.pid.and_then(|pid| proc::sample(Some(pid)).ok());
    let started = Instant::now();
    eprintln!(
        "  conns: mass connect of {count} peers, announcements {}",
        if on { "on" } else { "off" }
    );
    let (mut idle, failures, first_failure) =
        open_idle_ws(&target.ws_url, &clients::next_tag().to_string(), count).await;
    let open = started.elapsed();
    let opened_sample = target.pid.and_then(|pid| proc::sample(Some(pid)).ok());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = target.pid.and_then(|pid| proc::sample(Some(pid)).ok());
    let opened = idle.len();
    let usage = match (base, opened_sample) {
        (Some(base), Some(after)) => Some(proc::usage(base, after, open)),
        _ => None,
    };
    let (answered, ping_failed, _) = idle.ping_all().await;
    let line = json!({
        "scenario": "conns",
        "check": "mass_connect",
        "announce_peers": on,
        "target": "relay",
        "transport": "ws",
        "requested": count,
        "opened": opened,
        "failures": failures,
        "first_failure": first_failure,
        "open_s": round(open.as_secs_f64(), 3),
        "server_cpu_s": usage.map(|u| round(u.cpu_s, 3)),
        "server_cpu_pct": usage.map(|u| round(u.cpu_pct, 1)),
        "rss_base_kib": base.map(|s| s.rss_kib),
        "rss_held_kib": held.map(|s| s.rss_kib),
        "rss_per_conn_kib": rss_per_conn_kib(base, held, opened),
        "echo_answered": answered,
        "echo_failed": ping_failed,
    });
    emit(&settings, &line);
    drop(idle);
    Ok((line, target))
}

/// Issue 9: a mass connect with announcements on costs at most twice the time and memory of
/// the same connect with them off. Runs off, then on, each on a fresh relay; prints both, the
/// ratios, and the target lines.
async fn mass_connect(settings: &Settings, report: &mut Report) -> Result<()> {
    let count = settings.mass_peers;
    let mut lines = Vec::new();
    for on in [false, true] {
        let (line, target) = mass_connect_run(settings, on, count).await?;
        target.stop(report);
        lines.push(line);
    }
    let (off, on) = (&lines[0], &lines[1]);
    println!(
        "
conns: mass connect of {count} WebSocket peers, announcements on against off"
    );
    println!(
        "  {:<22}{:>9}{:>9}{:>9}{:>10}{:>8}{:>12}{:>11}{:>9}",
        "", "opened", "failed", "open s", "CPU s", "CPU %", "held MiB", "KiB/conn", "echo ok"
    );
    for (name, line) in [("announcements off", off), ("announcements on", on)] {
        let num = |key: &str| line[key].as_f64();
        let cell = |v: Option<f64>, places: usize| v.map_or("-".to_owned(), |v| fmt_num(v, places));
        println!(
            "  {:<22}{:>9}{:>9}{:>9}{:>10}{:>8}{:>12}{:>11}{:>9}",
            name,
            cell(num("opened"), 0),
            cell(num("failures"), 0),
            cell(num("open_s"), 2),
            cell(num("server_cpu_s"), 2),
            cell(num("server_cpu_pct"), 0),
            cell(num("rss_held_kib").map(|k| mib(k as u64)), 1),
            cell(num("rss_per_conn_kib"), 2),
            cell(num("echo_answered"), 0),
        );
    }
    let ratio = |key: &str| match (on[key].as_f64(), off[key].as_f64()) {
        (Some(on), Some(off)) if off > 0.0 => Some(on / off),
        _ => None,
    };
    let (time, memory, cpu) = (
        ratio("open_s"),
        ratio("rss_per_conn_kib"),
        ratio("server_cpu_s"),
    );
    let show = |r: Option<f64>| r.map_or("-".to_owned(), |r| format!("{r:.2}"));
    println!(
        "  on / off: time {}, memory per peer {}, server CPU {}",
        show(time),
        show(memory),
        show(cpu)
    );
    let measured = |r: Option<f64>, key: &str| {
        format!(
            "{} ({} / {})",
            show(r),
            on[key]
                .as_f64()
                .map_or("-".to_owned(), |v| format!("{v:.2}")),
            off[key]
                .as_f64()
                .map_or("-".to_owned(), |v| format!("{v:.2}")),
        )
    };
    report.check(
        &format!("mass connect {count} peers, announce on/off: time"),
        measured(time, "open_s"),
        "<= 2.0",
        time.map(|r| r <= 2.0),
    );
    report.check(
        &format!("mass connect {count} peers, announce on/off: RSS/peer"),
        measured(memory, "rss_per_conn_kib"),
        "<= 2.0",
        memory.map(|r| r <= 2.0),
    );
    let failures = |line: &Value| {
        line["failures"].as_u64().unwrap_or(0) + line["echo_failed"].as_u64().unwrap_or(0)
    };
    report.check(
        &format!("connection failures, mass connect {count} peers, on and off"),
        format!("{} + {}", failures(off), failures(on)),
        "0",
        Some(failures(off) + failures(on) == 0),
    );
    Ok(())
}

/// When the soak's warm-up is over: a sixth of the soak, at least one sample in.
fn warm_up_s(settings: &Settings) -> f64 {
    (settings.soak.as_secs_f64() / 6.0).max(settings.soak_sample.as_secs_f64())
}

pub async fn soak(settings: &Settings, report: &mut Report) -> Result<()> {
    let pairs = settings.pairs;
    let relay = Target::relay(settings)?;
    let rate = match (settings.soak_rate, report.directed_max) {
        (Some(rate), _) => rate,
        (None, Some(max)) => max / 2.0,
        (None, None) => {
            eprintln!("  soak: measuring the directed max rate first (3 s)");
            let access = Access::ws(&relay.ws_url);
            let topology = clients::pairs_topology(pairs, access, access).await?;
            let spec = RunSpec {
                scenario: "soak-calibration",
                mode: "max",
                transport: "ws",
                target_rate: None,
            };
            let run = measure(
                settings,
                &relay,
                &spec,
                topology,
                plan(settings, Pacing::Max, Duration::from_secs(3)),
            )
            .await;
            run.rate() / 2.0
        }
    };
    let secs = settings.soak.as_secs_f64();
    println!(
        "\n=== soak: {pairs} directed WebSocket pairs at {} msgs/s (half the max) for {secs:.0} s ===",
        fmt_num(rate, 0)
    );
    let access = Access::ws(&relay.ws_url);
    let topology = clients::pairs_topology(pairs, access, access).await?;
    // RSS every few seconds, from before the first message to after the drain.
    // (seconds, RSS KiB, CPU ticks)
    let samples: Arc<Mutex<Vec<(f64, u64, u64)>>> = Arc::default();
    let sampler = relay.pid.map(|pid| {
        let samples = samples.clone();
        let every = settings.soak_sample;
        let bound = settings.soak + settings.drain + Duration::from_secs(60);
        tokio::spawn(async move {
            let start = Instant::now();
            while start.elapsed() < bound {
                if let Ok(sample) = proc::sample(Some(pid)) {
                    samples.lock().expect("not poisoned").push((
                        start.elapsed().as_secs_f64(),
                        sample.rss_kib,
                        sample.cpu_ticks,
                    ));
                }
                tokio::time::sleep(every).await;
            }
        })
    });
    let spec = RunSpec {
        scenario: "soak",
        mode: "fixed",
        transport: "ws",
        target_rate: Some(rate),
    };
    let pacing = Pacing::PerSender(per_sender_rate(rate, pairs));
    let run = measure(
        settings,
        &relay,
        &spec,
        topology,
        plan(settings, pacing, settings.soak),
    )
    .await;
    if let Some(sampler) = sampler {
        sampler.abort();
    }
    let ticks = proc::clock_ticks_per_second();
    let with_cpu: Vec<(f64, u64, f64)> = {
        let samples = samples.lock().expect("not poisoned");
        samples
            .iter()
            .enumerate()
            .map(|(i, &(t, kib, cpu))| {
                // Server CPU % over the interval ending at this sample.
                let pct = match i.checked_sub(1).map(|j| samples[j]) {
                    Some((t0, _, cpu0)) if t > t0 => {
                        100.0 * (cpu.saturating_sub(cpu0)) as f64 / ticks / (t - t0)
                    }
                    _ => 0.0,
                };
                (t, kib, pct)
            })
            .collect()
    };
    let samples: Vec<(f64, u64)> = with_cpu.iter().map(|&(t, kib, _)| (t, kib)).collect();
    print_table(
        &format!("soak, fixed {} msgs/s for {secs:.0} s", fmt_num(rate, 0)),
        &[&run],
        &["relay"],
    );
    // Growth from the first sample after warm-up (a loaded relay's buffers and queues reach
    // their working size in the first seconds) to the last sample taken while sending.
    let while_sending: Vec<(f64, u64)> = samples
        .iter()
        .copied()
        .filter(|(t, _)| *t <= secs + 0.5)
        .collect();
    let warm = while_sending
        .iter()
        .find(|(t, _)| *t >= warm_up_s(settings) - 0.5)
        .copied();
    let end = while_sending.last().copied();
    let idle = samples.first().copied();
    println!("  RSS samples (s: MiB, server CPU % over the interval before):");
    let series: Vec<String> = with_cpu
        .iter()
        .map(|(t, kib, pct)| format!("{t:.0}: {:.1} ({pct:.0}%)", mib(*kib)))
        .collect();
    for chunk in series.chunks(6) {
        println!("    {}", chunk.join("   "));
    }
    let growth = match (warm, end) {
        (Some((_, w)), Some((_, e))) if w > 0 => Some(100.0 * (e as f64 - w as f64) / w as f64),
        _ => None,
    };
    if let (Some((tw, w)), Some((te, e))) = (warm, end) {
        println!(
            "  RSS at {tw:.0} s (warm) {:.1} MiB, at {te:.0} s {:.1} MiB: growth {:+.2} %; before sending {:.1} MiB",
            mib(w),
            mib(e),
            growth.unwrap_or(0.0),
            idle.map_or(0.0, |(_, k)| mib(k))
        );
    }
    emit(
        settings,
        &json!({
            "scenario": "soak",
            "target": "relay",
            "rate": round(rate, 0),
            "duration_s": secs,
            "rss_idle_kib": idle.map(|s| s.1),
            "rss_start_kib": warm.map(|s| s.1),
            "rss_start_at_s": warm.map(|s| round(s.0, 1)),
            "rss_end_kib": end.map(|s| s.1),
            "rss_growth_pct": growth.map(|g| round(g, 2)),
            "rss_samples": with_cpu
                .iter()
                .map(|(t, k, pct)| json!([round(*t, 1), k, round(*pct, 0)]))
                .collect::<Vec<_>>(),
            "lost": run.lost,
        }),
    );
    report.check(
        &format!(
            "soak RSS growth, {:.0} s sample to the {secs:.0} s one",
            warm_up_s(settings)
        ),
        growth.map_or("not measured".to_owned(), |g| format!("{g:+.2} %")),
        "<= 5 %",
        growth.map(|g| g <= 5.0),
    );
    no_loss_check(report, "soak (relay)", &run);
    relay.stop(report);
    Ok(())
}

/// How much the server's RSS grew per connection opened, in KiB: `None` without both samples or
/// without a connection.
fn rss_growth_per_conn_kib(
    base: Option<&proc::ProcSample>,
    held: Option<&proc::ProcSample>,
    opened: usize,
) -> Option<f64> {
    match (base, held) {
        (Some(base), Some(held)) if opened > 0 => {
            Some((held.rss_kib as f64 - base.rss_kib as f64) / opened as f64)
        }
        _ => None,
    }
}

/// [`rss_growth_per_conn_kib`], rounded for a JSON line.
fn rss_per_conn_kib(
    base: Option<proc::ProcSample>,
    held: Option<proc::ProcSample>,
    opened: usize,
) -> Option<f64> {
    rss_growth_per_conn_kib(base.as_ref(), held.as_ref(), opened).map(|kib| round(kib, 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run in which every one of 1000 expected messages arrived once, in order.
    fn clean_run() -> RunResult {
        RunResult {
            scenario: "directed",
            mode: "max",
            target: "relay",
            transport: "ws",
            senders: 2,
            receivers: 2,
            sent: 1000,
            expected: 1000,
            received: 1000,
            elapsed_s: 1.0,
            ..RunResult::default()
        }
    }

    /// BENCHMARKS.md: "Fan-out's rate is in deliveries/s (50,000 = 250 msgs/s × 200);
    /// directed's in msgs/s over all 200 senders (20,000 = 100 msgs/s per peer)".
    #[test]
    fn fixed_rates_are_split_among_the_senders_as_documented() {
        assert_eq!(publisher_rate(50_000.0, 200), 250.0);
        assert_eq!(per_sender_rate(20_000.0, 100), 100.0);
    }

    #[test]
    fn a_clean_run_meets_the_no_loss_target() {
        let (measured, met) = delivery_verdict(&clean_run());
        assert!(met, "{measured}");
        assert_eq!(
            measured,
            "0 lost of 1000 (0 duplicates, 0 unexpected, 0 gaps, 0 late, 0 errors, 0 disconnects)"
        );
    }

    /// Each fault alone fails the target, even where the count of arrivals adds up (a
    /// duplicate standing in for a lost message, a gap later filled).
    #[test]
    fn any_fault_fails_the_no_loss_target() {
        type Fault = (&'static str, fn(&mut RunResult));
        let faults: [Fault; 8] = [
            ("a lost message", |r| {
                r.lost = 1;
                r.received = 999;
            }),
            ("a duplicate standing in for a lost one", |r| {
                r.lost = 1;
                r.duplicates = 1;
            }),
            ("a duplicate", |r| {
                r.duplicates = 1;
                r.received = 1001;
            }),
            ("an unexpected message", |r| {
                r.unexpected = 1;
                r.received = 1001;
            }),
            ("a gap later filled", |r| {
                r.gaps = 1;
                r.late = 1;
            }),
            ("an Error envelope", |r| r.errors = 1),
            ("a disconnect", |r| r.disconnects = 1),
            ("arrivals that do not add up", |r| r.received = 998),
        ];
        for (fault, apply) in faults {
            let mut run = clean_run();
            apply(&mut run);
            let (measured, met) = delivery_verdict(&run);
            assert!(!met, "{fault}: {measured}");
        }
    }
}
