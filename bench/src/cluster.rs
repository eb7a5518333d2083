//! The cross-relay scenario of issue 11 (`relay-bench cluster`): what it costs when a message
//! crosses from one relay to another over NATS.
//!
//! Each shape, the fan-out (1 publisher × N subscribers, broadcast) and the directed pairs (P
//! pairs, each peer sending to its partner), runs at max rate and then at the fixed rate, side by
//! side on three targets, in one invocation:
//!
//! - **(a) one relay**: every peer on a single relay (no `[cluster]`, no NATS), as in the
//!   fanout and directed scenarios;
//! - **(b) two relays** on one nats-server (each with a `[cluster]` section, through
//!   [`proc::spawn_cluster_relays`]): the publisher on `relay-0` and the subscribers on
//!   `relay-1`; for the pairs, every `p<n>a` on `relay-0` and every `p<n>b` on `relay-1`. Every
//!   message crosses from one relay to the other;
//! - **(c) nats-server alone**: the same shape with the `nats` scenario's clients (no relay).
//!
//! Same frames, pacing, window and counting everywhere; WebSocket peers on (a) and (b); the
//! relays run on the shipped relay.toml with the bench's overrides, like every relay the bench
//! starts. Reported: throughput, latency, loss, the CPU and RSS of each process (each relay's and
//! nats-server's apart, and summed), and in one run the ratios (b)/(a) and (b)/(c) and the
//! latency (b) adds to (a).
//!
//! # Settling before measuring
//! With `[cluster]` a join costs a JetStream round trip (the id's claim), and the other relay
//! learns of the peer from the presence bucket a moment later. Until it has, a directed message
//! for the peer is refused `unknown_recipient`, and a broadcast may not reach its relay. So the
//! scenario waits, bounded, until both relays have joined the cluster ([`cluster_ready`]) and,
//! before each run on (b), until a newcomer on *either* relay is told (its `Welcome`'s exact
//! `peer_count`) of every peer of the run ([`settled`]).
//!
//! # The window across relays
//! A relay's traffic towards NATS waits in one queue of `cluster.forward_queue` messages, and
//! what comes from NATS in the NATS client's subscription buffer; both are shared by every
//! sender of that relay, and past either a message is refused or dropped. So the window here is
//! cut to keep all senders of one relay within half of the smaller ([`cluster_window`]), and
//! the same window is used on (a) and (c): nobody is cut, and the three targets are run alike.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::json;

use crate::clients::{self, Access, Pacing, Topology};
use crate::proc::{self, NatsProcess, RelayProcess};
use crate::scenarios::{self, PartProcess, Report, RunSpec, Settings, Target};
use crate::stats::{fmt_num, mib, print_table, round, RunResult};

/// Messages a relay holds for or from NATS at most, whichever queue is smaller: the relay's
/// default `cluster.forward_queue` and async-nats's subscription buffer (its
/// `subscription_capacity` default, which the relay does not change) are both 65,536.
pub const CLUSTER_QUEUE: u64 = 65_536;

/// How long the relays may take to join the cluster, and each run's peers to be known on both.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The window for a run with `senders_per_relay` senders on one relay: the bench's window, cut
/// so that those senders keep at most half of [`CLUSTER_QUEUE`] in flight together.
pub fn cluster_window(window: u64, senders_per_relay: usize) -> u64 {
    let share = CLUSTER_QUEUE / 2 / (senders_per_relay.max(1) as u64);
    window.min(share).max(1)
}

/// One shape's runs: `runs[mode][target]`, modes `[max, fixed]`, targets `[one relay, two
/// relays, nats-server alone]`. (The binary prints them as it goes; the tests read them.)
#[cfg_attr(not(test), allow(dead_code))]
pub struct ShapeRuns {
    pub shape: &'static str,
    pub runs: Vec<[RunResult; 3]>,
}

/// The processes of the scenario, started once for both shapes.
struct Processes {
    one: Target,
    /// (b): NATS for the two relays, and the relays.
    nats: NatsProcess,
    relays: Vec<RelayProcess>,
    two: Target,
    /// (c): a nats-server of its own, so that its memory is not the cluster's.
    alone_nats: NatsProcess,
    alone: Target,
    configs: PathBuf,
}

impl Processes {
    fn start(settings: &Settings) -> Result<Processes> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let configs = std::env::temp_dir().join(format!(
            "relay-bench-cluster-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let one = Target::relay(settings)?;
        let nats = proc::spawn_nats()?;
        eprintln!(
            "nats-server for the cluster: pid {} {}",
            nats.child.pid(),
            nats.url
        );
        let relays = proc::spawn_cluster_relays(
            &settings.config,
            &settings.relay_env,
            &nats.url,
            2,
            &configs,
        )?;
        for (i, relay) in relays.iter().enumerate() {
            eprintln!(
                "relay-{i} started: pid {} {}",
                relay.child.pid(),
                relay.ws_url
            );
        }
        let part = |name, child: &proc::Child| PartProcess {
            name,
            pid: child.pid(),
            log: child.log.clone(),
        };
        let two = Target {
            label: "2 relays",
            ws_url: relays[0].ws_url.clone(),
            grpc_url: String::new(),
            pid: None,
            log: None,
            other_processes: vec![
                part("relay-0", &relays[0].child),
                part("relay-1", &relays[1].child),
                part("nats-server", &nats.child),
            ],
            child: None,
        };
        let (alone, alone_nats) = scenarios::nats_target()?;
        Ok(Processes {
            one,
            nats,
            relays,
            two,
            alone_nats,
            alone,
            configs,
        })
    }

    fn stop(self, report: &mut Report) {
        self.one.stop(report);
        for relay in self.relays {
            scenarios::stop_relay(relay.child, report);
        }
        for (name, nats) in [("cluster", self.nats), ("alone", self.alone_nats)] {
            let warnings = nats.child.log.warning_count();
            let status = nats.stop();
            if warnings > 0 {
                eprintln!("nats-server ({name}) logged {warnings} warnings or errors ({status})");
            }
        }
        let _ = std::fs::remove_dir_all(&self.configs);
    }
}

/// Waits until every relay at `urls` tells a newcomer of exactly `peers` other peers (its
/// `Welcome`'s `peer_count`, which counts the peers of every relay), within `timeout`. Each
/// probe is a peer of its own that leaves at once; one still counted by the other relay only
/// delays the match.
async fn settled(urls: &[&str], peers: u64, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut seen = Vec::with_capacity(urls.len());
        for url in urls {
            let probe = format!("q{}", clients::next_tag());
            seen.push(clients::welcome_peer_count(url, &probe).await?);
        }
        if seen.iter().all(|&count| count == peers) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the relays did not agree on the network within {timeout:?}: a newcomer on each \
                 counts {seen:?} other peers, {peers} expected"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the relays at `urls` form one network: a peer held on each, every relay counts
/// all of them. A relay's claims go to NATS only once it has connected and found the presence
/// bucket, so the peers are opened again until that is so (bounded by [`SETTLE_TIMEOUT`]).
async fn cluster_ready(urls: &[&str]) -> Result<()> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let tag = clients::next_tag();
        let mut anchors = Vec::with_capacity(urls.len());
        for (i, url) in urls.iter().enumerate() {
            anchors.push(clients::ws_connect(url, &format!("anchor{tag}_{i}")).await?);
        }
        let attempt = settled(urls, urls.len() as u64, Duration::from_secs(3)).await;
        for mut anchor in anchors {
            let _ = anchor.close(None).await;
        }
        match attempt {
            Ok(()) => return Ok(()),
            Err(error) if Instant::now() >= deadline => {
                bail!("the relays did not form one network: {error:#}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The scenario: both shapes on (a), (b) and (c); prints a table per shape and mode, the ratios
/// and the added latency, and one JSON line each; records the no-loss checks of (b) and the
/// ratios (reported). Returns every run, for the tests.
pub async fn cluster(settings: &Settings, report: &mut Report) -> Result<Vec<ShapeRuns>> {
    if settings.url.is_some() {
        bail!("the cluster scenario starts its own relays and nats-servers; it takes no --url");
    }
    let (n, pairs) = (settings.subscribers, settings.pairs);
    println!(
        "\n=== cluster: fan-out (1 x {n}) and directed ({pairs} pairs) on one relay, across two \
         relays on one nats-server, and through nats-server alone ==="
    );
    let processes = Processes::start(settings)?;
    let result = shapes(settings, report, &processes).await;
    processes.stop(report);
    result
}

async fn shapes(
    settings: &Settings,
    report: &mut Report,
    processes: &Processes,
) -> Result<Vec<ShapeRuns>> {
    let (r0, r1) = (
        processes.relays[0].ws_url.as_str(),
        processes.relays[1].ws_url.as_str(),
    );
    cluster_ready(&[r0, r1]).await?;
    let (n, pairs) = (settings.subscribers, settings.pairs);
    let mut all = Vec::new();
    for shape in ["fanout", "directed"] {
        // Senders on one relay (relay-0 for the fan-out; both relays for the pairs), and the
        // peers a newcomer must count before a run on two relays.
        let (senders_per_relay, peers, fixed_pacing, fixed_rate) = match shape {
            "fanout" => (
                1,
                n + 1,
                Pacing::PerSender(scenarios::publisher_rate(settings.fanout_rate, n)),
                settings.fanout_rate,
            ),
            _ => (
                pairs,
                2 * pairs,
                Pacing::PerSender(scenarios::per_sender_rate(settings.directed_rate, pairs)),
                settings.directed_rate,
            ),
        };
        let mut settings = settings.clone();
        settings.window = cluster_window(settings.window, senders_per_relay);
        let settings = &settings;
        let mut runs = Vec::new();
        for (mode, pacing, target_rate) in [
            ("max", Pacing::Max, None),
            ("fixed", fixed_pacing, Some(fixed_rate)),
        ] {
            let scenario = match shape {
                "fanout" => "cluster-fanout",
                _ => "cluster-directed",
            };
            let spec = |transport| RunSpec {
                scenario,
                mode,
                transport,
                target_rate,
            };
            let plan = scenarios::plan(settings, pacing, settings.duration);
            // (a) every peer on one relay.
            let one = &processes.one.ws_url;
            let topology = relay_topology(settings, shape, one, one).await?;
            let a = scenarios::measure(settings, &processes.one, &spec("ws"), topology, plan).await;
            // (b) senders on relay-0, receivers on relay-1, once both know every peer.
            let topology = relay_topology(settings, shape, r0, r1).await?;
            settled(&[r0, r1], peers as u64, SETTLE_TIMEOUT).await?;
            let b = scenarios::measure(settings, &processes.two, &spec("ws"), topology, plan).await;
            // (c) nats-server alone.
            let topology =
                scenarios::nats_topology(settings, shape, &processes.alone_nats.url).await?;
            let c =
                scenarios::measure(settings, &processes.alone, &spec("nats"), topology, plan).await;
            let title = match (shape, target_rate) {
                ("fanout", None) => format!("cluster, fan-out 1 x {n}, max rate: deliveries/s"),
                ("fanout", Some(rate)) => format!(
                    "cluster, fan-out 1 x {n}, fixed {} deliveries/s",
                    fmt_num(rate, 0)
                ),
                (_, None) => format!("cluster, directed {pairs} pairs, max rate: msgs/s"),
                (_, Some(rate)) => format!(
                    "cluster, directed {pairs} pairs, fixed {} msgs/s",
                    fmt_num(rate, 0)
                ),
            };
            print_table(
                &format!("{title} (window {})", settings.window),
                &[&a, &b, &c],
                &["1 relay", "2 relays", "nats"],
            );
            compare(settings, report, shape, mode, [&a, &b, &c]);
            runs.push([a, b, c]);
        }
        all.push(ShapeRuns { shape, runs });
    }
    Ok(all)
}

/// The shape's topology on relays: the publisher (or every `p<n>a`) at `senders_url`, the
/// subscribers (or every `p<n>b`) at `receivers_url`.
async fn relay_topology(
    settings: &Settings,
    shape: &str,
    senders_url: &str,
    receivers_url: &str,
) -> Result<Topology> {
    match shape {
        "fanout" => {
            clients::fanout_topology(settings.subscribers, senders_url, receivers_url).await
        }
        _ => {
            clients::pairs_topology(
                settings.pairs,
                Access::ws(senders_url),
                Access::ws(receivers_url),
            )
            .await
        }
    }
}

/// What (b) costs against (a) and (c): the throughput ratios, the latency (b) adds to (a), each
/// process of (b); printed, one JSON line, and the report's lines.
fn compare(
    settings: &Settings,
    report: &mut Report,
    shape: &str,
    mode: &str,
    [a, b, c]: [&RunResult; 3],
) {
    let ratio = |x: &RunResult, y: &RunResult| x.rate() / y.rate().max(1e-9);
    let added = |pick: fn(&crate::stats::LatencySummary) -> f64| match (a.latency, b.latency) {
        (Some(a), Some(b)) => Some(pick(&b) - pick(&a)),
        _ => None,
    };
    let (added_p50, added_p99) = (added(|l| l.p50_ms), added(|l| l.p99_ms));
    let show = |ms: Option<f64>| ms.map_or("-".to_owned(), |ms| format!("{ms:+.3} ms"));
    println!(
        "  2 relays / 1 relay: {:.2}; 2 relays / nats alone: {:.2}; latency added by crossing \
         (2 relays - 1 relay): p50 {}, p99 {}",
        ratio(b, a),
        ratio(b, c),
        show(added_p50),
        show(added_p99)
    );
    for (name, usage) in &b.server_processes {
        println!(
            "  2 relays, {name}: CPU {:.0} %, RSS {:.1} MiB at end ({:.1} before, peak {:.1})",
            usage.cpu_pct,
            mib(usage.rss_after_kib),
            mib(usage.rss_before_kib),
            mib(usage.rss_peak_kib)
        );
    }
    scenarios::emit(
        settings,
        &json!({
            "scenario": "cluster",
            "shape": shape,
            "mode": mode,
            "window": settings.window,
            "delivered_per_s": {
                "one_relay": round(a.rate(), 0),
                "two_relays": round(b.rate(), 0),
                "nats_alone": round(c.rate(), 0),
            },
            "two_relays_over_one_relay": round(ratio(b, a), 3),
            "two_relays_over_nats_alone": round(ratio(b, c), 3),
            "added_latency_ms": {
                "p50": added_p50.map(|ms| round(ms, 3)),
                "p99": added_p99.map(|ms| round(ms, 3)),
            },
        }),
    );
    let label = format!("cluster {shape} {mode}");
    report.check(
        &format!("{label}: msgs/s, 2 relays / 1 relay"),
        format!(
            "{:.2} ({} / {})",
            ratio(b, a),
            fmt_num(b.rate(), 0),
            fmt_num(a.rate(), 0)
        ),
        "reported",
        None,
    );
    report.check(
        &format!("{label}: msgs/s, 2 relays / nats alone"),
        format!(
            "{:.2} ({} / {})",
            ratio(b, c),
            fmt_num(b.rate(), 0),
            fmt_num(c.rate(), 0)
        ),
        "reported",
        None,
    );
    report.check(
        &format!("{label}: latency added, p50 / p99"),
        format!("{} / {}", show(added_p50), show(added_p99)),
        "reported",
        None,
    );
    scenarios::no_loss_check(report, &format!("{label} (2 relays)"), b);
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    /// The window across relays keeps every sender of one relay within half the smaller of the
    /// relay's forward queue and its NATS subscription buffer, and never grows the bench's.
    #[test]
    fn the_window_across_relays_fits_the_relays_queues() {
        assert_eq!(cluster_window(1000, 1), 1000);
        assert_eq!(cluster_window(1000, 100), 327);
        assert_eq!(cluster_window(1000, 1_000_000), 1);
        assert!(100 * cluster_window(1000, 100) <= CLUSTER_QUEUE / 2);
        // CLUSTER_QUEUE is the relay's default forward_queue (the relay's own loader says so).
        use gsio_relay_core::RelayConfig;
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../relay.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let text = format!(
            "{text}{}",
            proc::cluster_section("nats://127.0.0.1:1", 0, "b")
        );
        let config = RelayConfig::load(&text, path, proc::RELAY_ENV.iter().copied()).unwrap();
        let cluster = config.cluster.expect("a [cluster] section");
        assert_eq!(cluster.forward_queue as u64, CLUSTER_QUEUE);
    }

    /// The whole scenario, small, through real processes: a relay, two relays on a nats-server,
    /// nats-server alone (the one `scripts/setup-nats.sh` installs; `cargo build -p gsio-relay`
    /// for the relay). Every message of every run is counted once, nothing is lost, and the two
    /// relays' run measures each of its three processes.
    #[test]
    fn a_small_cluster_run_counts_every_message() {
        let cli = crate::Cli::try_parse_from([
            "relay-bench",
            "cluster",
            "--subscribers",
            "3",
            "--pairs",
            "2",
            "--max-messages",
            "100",
            "--duration",
            "20",
            "--drain",
            "10",
            "--fanout-rate",
            "3000",
            "--directed-rate",
            "2000",
        ])
        .unwrap();
        let settings = cli.options.settings().unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut report = Report::default();
        // Children are spawned from this thread (block_on), which outlives them.
        let shapes = runtime
            .block_on(cluster(&settings, &mut report))
            .expect("the cluster scenario (nats-server: scripts/setup-nats.sh; the relay: cargo build -p gsio-relay)");
        assert_eq!(
            shapes.iter().map(|s| s.shape).collect::<Vec<_>>(),
            ["fanout", "directed"]
        );
        for shape in &shapes {
            // 1 publisher x 3 subscribers; 2 pairs, 4 senders, one receiver each.
            let (senders, per_sender) = match shape.shape {
                "fanout" => (1, 3),
                _ => (4, 1),
            };
            assert_eq!(shape.runs.len(), 2);
            for run in shape.runs.iter().flatten() {
                let what = format!("{} {} {}", run.scenario, run.mode, run.target);
                assert_eq!(run.sent, 100 * senders, "{what}");
                assert_eq!(run.expected, run.sent * per_sender, "{what}");
                assert_eq!(run.received, run.expected, "{what}");
                let (verdict, met) = scenarios::delivery_verdict(run);
                assert!(met, "{what}: {verdict}");
                assert!(run.server.is_some_and(|s| s.rss_after_kib > 0), "{what}");
            }
            for [one, two, alone] in &shape.runs {
                assert_eq!(
                    (one.target, two.target, alone.target),
                    ("relay", "2 relays", "nats-server")
                );
                let names: Vec<_> = two.server_processes.iter().map(|(n, _)| *n).collect();
                assert_eq!(names, ["relay-0", "relay-1", "nats-server"]);
                assert!(two
                    .server_processes
                    .iter()
                    .all(|(_, u)| u.rss_after_kib > 0));
                assert!(one.server_processes.is_empty() && alone.server_processes.is_empty());
            }
        }
        // The single relay, then relay-0 and relay-1, stopped with their counters; these say
        // where the messages went. Per shape, two runs of 100 messages per sender.
        assert_eq!(report.relay_stops.len(), 3, "{:?}", report.relay_stops);
        let counter = |line: &str, key: &str| -> u64 {
            let at = line.find(key).unwrap_or_else(|| panic!("{key} in {line}")) + key.len();
            let digits: String = line[at..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().unwrap()
        };
        let counts = |line: &String| {
            (
                counter(line, "messages_routed="),
                counter(line, "deliveries="),
            )
        };
        // One relay: 200 broadcasts to 3, and 800 directed messages, all its own.
        assert_eq!(counts(&report.relay_stops[0]), (200 + 800, 200 * 3 + 800));
        // relay-0 routes what the publisher and every p<n>a send, and delivers only what the
        // p<n>b on relay-1 send: every message crossed.
        assert_eq!(counts(&report.relay_stops[1]), (200 + 400, 400));
        // relay-1 routes what every p<n>b sends, and delivers the broadcasts and the a-to-b
        // messages that came from relay-0.
        assert_eq!(counts(&report.relay_stops[2]), (400, 200 * 3 + 400));
    }
}
