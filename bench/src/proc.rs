//! The processes under test and what /proc says about them.
//!
//! The relay (the `gsio-relay` binary next to this one), the floor (this binary's hidden
//! `floor` subcommand) and nats-server (the one `scripts/setup-nats.sh` installs) each run as a
//! child process held by a [`Child`] guard: dropping the guard
//! kills the child by its PID, and every child also gets `PR_SET_PDEATHSIG` so it dies with the
//! bench even if the bench is killed outright. Children are spawned from the main thread (the
//! death signal follows the spawning *thread*), which is why scenarios spawn from the task that
//! `block_on` runs, never from a spawned task.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::stats::ProcUsage;

/// How long a child may take to print its addresses.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a relay may take to stop on SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Relay warning/error lines kept for the report (the rest are only counted).
const KEPT_WARNINGS: usize = 20;

/// Raises this process's soft open-file limit to the hard one (children inherit it). Returns
/// (soft, hard) after the change.
// rlim_t is u64 on Linux x86_64, not everywhere.
#[allow(clippy::unnecessary_cast)]
pub fn raise_nofile_limit() -> (u64, u64) {
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return (0, 0);
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
        (limit.rlim_cur as u64, limit.rlim_max as u64)
    }
}

/// A spawned child, killed (SIGKILL, by PID) when dropped.
pub struct Child {
    name: &'static str,
    child: std::process::Child,
    /// Lines the child logged on stderr at WARN or ERROR, the first few kept.
    pub log: Arc<LogWatch>,
}

/// What a child's stderr said, read by a thread for the child's whole life (a pipe nobody reads
/// would block the child once full).
#[derive(Default)]
pub struct LogWatch {
    pub warnings: AtomicU64,
    pub kept: Mutex<Vec<String>>,
    /// The relay's final counters ("relay stopped ..."), once it has stopped.
    pub stopped_line: Mutex<Option<String>>,
}

impl LogWatch {
    fn note(&self, line: &str) {
        let line = strip_ansi(line);
        // The relay's tracing levels, and nats-server's.
        if [" WARN ", " ERROR ", " [WRN] ", " [ERR] ", " [FTL] "]
            .iter()
            .any(|level| line.contains(level))
        {
            self.warnings.fetch_add(1, Ordering::Relaxed);
            let mut kept = self.kept.lock().expect("not poisoned");
            if kept.len() < KEPT_WARNINGS {
                kept.push(line.trim().to_owned());
            }
        }
        if line.contains("relay stopped") {
            *self.stopped_line.lock().expect("not poisoned") = Some(line.trim().to_owned());
        }
    }

    pub fn warning_count(&self) -> u64 {
        self.warnings.load(Ordering::Relaxed)
    }
}

impl Child {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then wait (bounded); SIGKILL if it does not stop. Returns the exit status text.
    pub fn stop(mut self) -> String {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signalling our own child by PID.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                // The reader thread may still be reading the last lines.
                std::thread::sleep(Duration::from_millis(50));
                return format!("{status}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "{} did not stop within {STOP_TIMEOUT:?}; killing it",
            self.name
        );
        "killed after SIGTERM timeout".to_owned()
        // Drop kills it.
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn die_with_parent(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// A relay process and the addresses it listens on.
pub struct RelayProcess {
    pub child: Child,
    /// `ws://127.0.0.1:PORT`
    pub ws_url: String,
    /// `http://127.0.0.1:PORT`
    pub grpc_url: String,
}

/// The `gsio-relay` binary beside this one; for the bench's own tests (which run from
/// `target/<profile>/deps/`), the one in `target/<profile>/`, where `cargo build -p gsio-relay`
/// (and `cargo test --workspace`) puts it.
pub fn relay_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let beside = exe.with_file_name("gsio-relay");
    let candidates = [
        Some(beside.clone()),
        exe.parent()
            .filter(|dir| dir.ends_with("deps"))
            .and_then(Path::parent)
            .map(|profile| profile.join("gsio-relay")),
    ];
    if let Some(path) = candidates.into_iter().flatten().find(|path| path.is_file()) {
        return Ok(path);
    }
    bail!(
        "{} not found: build both binaries with \
         `cargo build --release -p gsio-relay -p relay-bench` \
         (or give --url to bench a relay that is already running; the bench's tests need \
         `cargo build -p gsio-relay`)",
        beside.display()
    );
}

/// The overrides the bench starts the relay with, over the `relay.toml` it is given: ephemeral
/// ports, room for every connection a scenario opens, no announcements (they would be traffic
/// the floor does not have), and broadcast for any type without a rule (the bench's own `Bench`
/// type; the shipped default, `auto`, broadcasts it too), per-identity rates so high that no
/// sender reaches them (the floor has none: a limit would cap the throughput measured, not
/// measure it), while the relay still does the work of checking them on every envelope; and,
/// every client of the bench being on 127.0.0.1, the per-address limits off (the floor has none
/// either).
pub const RELAY_ENV: &[(&str, &str)] = &[
    ("GSIO_RELAY_LIMITS__MESSAGES_PER_SECOND", "1000000000"),
    ("GSIO_RELAY_LIMITS__MESSAGE_BURST", "1000000000"),
    ("GSIO_RELAY_LIMITS__BYTES_PER_SECOND", "1000000000000000"),
    ("GSIO_RELAY_LIMITS__BYTE_BURST", "1000000000000000"),
    ("GSIO_RELAY_SERVER__WS_LISTEN", "127.0.0.1:0"),
    ("GSIO_RELAY_SERVER__GRPC_LISTEN", "127.0.0.1:0"),
    ("GSIO_RELAY_SERVER__ADMIN_LISTEN", "127.0.0.1:0"),
    ("GSIO_RELAY_SERVER__MAX_CONNECTIONS", "100000"),
    ("GSIO_RELAY_LIMITS__MAX_CONNECTIONS_PER_IP", "0"),
    ("GSIO_RELAY_LIMITS__NEW_CONNECTIONS_PER_IP_PER_SECOND", "0"),
    ("GSIO_RELAY_DISCOVERY__ANNOUNCE_PEERS", "false"),
    ("GSIO_RELAY_ROUTING__DEFAULT", "broadcast"),
];

/// Starts `command` (stderr piped) so that it dies with the bench, and returns its guard, its
/// stderr to read and the log watch the reader feeds.
fn spawn_watched(
    command: &mut Command,
    binary: &Path,
    name: &'static str,
) -> Result<(Child, std::process::ChildStderr, Arc<LogWatch>)> {
    die_with_parent(command);
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let stderr = child.stderr.take().expect("piped");
    let log = Arc::new(LogWatch::default());
    let guard = Child {
        name,
        child,
        log: log.clone(),
    };
    Ok((guard, stderr, log))
}

/// Starts the relay on `config` with [`RELAY_ENV`] and `extra` env overrides; waits for its
/// "listening" line.
pub fn spawn_relay(config: &Path, extra: &[(String, String)]) -> Result<RelayProcess> {
    let binary = relay_binary()?;
    let mut command = Command::new(&binary);
    command
        .arg("--config")
        .arg(config)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .envs(RELAY_ENV.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (key, value) in extra {
        command.env(key, value);
    }
    let (guard, stderr, log) = spawn_watched(&mut command, &binary, "gsio-relay")?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        let mut early = Vec::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(sender) = &tx {
                if line.contains("websocket=") {
                    let _ = sender.send(line.clone());
                    tx = None;
                } else if early.len() < 50 {
                    early.push(line.clone());
                }
            }
            log.note(&line);
        }
        // Ended before the listening line: pass on what it said instead.
        if let Some(sender) = tx {
            let _ = sender.send(format!("EXITED\n{}", early.join("\n")));
        }
    });
    let line = rx
        .recv_timeout(START_TIMEOUT)
        .map_err(|_| anyhow!("gsio-relay printed no listening line within {START_TIMEOUT:?}"))?;
    if let Some(said) = line.strip_prefix("EXITED\n") {
        bail!("gsio-relay exited at start:\n{said}");
    }
    let (ws, grpc) = parse_listening(&line)
        .ok_or_else(|| anyhow!("cannot read the relay's addresses from: {line}"))?;
    Ok(RelayProcess {
        child: guard,
        ws_url: ws,
        grpc_url: format!("http://{grpc}"),
    })
}

/// (`ws://...`, `host:port`) from the relay's "gsio-relay listening" log line.
pub fn parse_listening(line: &str) -> Option<(String, String)> {
    let line = strip_ansi(line);
    let field = |key: &str| {
        let at = line.find(key)? + key.len();
        let value: String = line[at..]
            .chars()
            .take_while(|c| !c.is_whitespace())
            .collect();
        (!value.is_empty()).then_some(value)
    };
    let ws = field("websocket=")?;
    let grpc = field("grpc=")?;
    ws.starts_with("ws://").then_some((ws, grpc))
}

/// Removes ANSI colour sequences (`ESC [ ... letter`).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The nats-server the bench runs: `GSIO_NATS_SERVER`, else the one `scripts/setup-nats.sh`
/// installs in this checkout (`target/tools/nats/bin/nats-server`, where the tests look too),
/// else `nats-server` on `PATH`.
pub fn nats_server_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("GSIO_NATS_SERVER") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("GSIO_NATS_SERVER={} is not a file", path.display());
        }
        return Ok(path);
    }
    let installed =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/nats/bin/nats-server");
    if installed.is_file() {
        return Ok(installed);
    }
    if let Some(on_path) = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("nats-server"))
            .find(|candidate| candidate.is_file())
    }) {
        return Ok(on_path);
    }
    bail!(
        "no nats-server: neither GSIO_NATS_SERVER, nor {}, nor nats-server on PATH; run \
         scripts/setup-nats.sh",
        installed.display()
    )
}

/// A nats-server process, its client URL and the JetStream store it owns.
pub struct NatsProcess {
    pub child: Child,
    /// `nats://127.0.0.1:PORT`
    pub url: String,
    /// JetStream's store (JetStream is on, as a cluster's server has it), removed with
    /// [`NatsProcess::stop`].
    pub store: PathBuf,
}

impl NatsProcess {
    /// SIGTERM by its PID, wait (bounded), then removes its store.
    pub fn stop(self) -> String {
        let status = self.child.stop();
        let _ = std::fs::remove_dir_all(&self.store);
        status
    }
}

/// What nats-server logs once it accepts clients, followed by `host:port`.
const NATS_LISTENING: &str = "Listening for client connections on ";

/// Starts nats-server with JetStream on 127.0.0.1 and a port the OS picks (`-p -1`, read back
/// from its log), and returns once it says it is ready.
pub fn spawn_nats() -> Result<NatsProcess> {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let binary = nats_server_binary()?;
    let store = std::env::temp_dir().join(format!(
        "relay-bench-nats-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&store);
    std::fs::create_dir_all(&store)
        .with_context(|| format!("cannot create {}", store.display()))?;
    let mut command = Command::new(&binary);
    command
        .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
        .arg(&store)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let (guard, stderr, log) = spawn_watched(&mut command, &binary, "nats-server")?;
    let (tx, rx) = std::sync::mpsc::channel::<Result<String, String>>();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        let mut port = None;
        let mut early = Vec::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(sender) = &tx {
                if let Some(at) = line.find(NATS_LISTENING) {
                    port = line[at + NATS_LISTENING.len()..]
                        .trim()
                        .rsplit(':')
                        .next()
                        .map(str::to_owned);
                } else if line.contains("Server is ready") {
                    let _ = sender.send(port.take().ok_or_else(|| early.join("\n")));
                    tx = None;
                }
                if early.len() < 80 {
                    early.push(line.clone());
                }
            }
            log.note(&line);
        }
        if let Some(sender) = tx {
            let _ = sender.send(Err(format!("EXITED\n{}", early.join("\n"))));
        }
    });
    let started = rx
        .recv_timeout(START_TIMEOUT)
        .map_err(|_| anyhow!("nats-server was not ready within {START_TIMEOUT:?}"));
    let port = match started
        .and_then(|said| said.map_err(|log| anyhow!("nats-server did not start:\n{log}")))
    {
        Ok(port) => port,
        Err(error) => {
            drop(guard);
            let _ = std::fs::remove_dir_all(&store);
            return Err(error);
        }
    };
    Ok(NatsProcess {
        child: guard,
        url: format!("nats://127.0.0.1:{port}"),
        store,
    })
}

/// The `[cluster]` section a relay of a bench cluster runs with (the relay.toml keys of issue
/// 11): every relay on `nats_url`, named `relay-<index>`, under a subject prefix of this run's
/// own so that runs never share subjects or the KV bucket.
pub fn cluster_section(nats_url: &str, index: usize, subject_prefix: &str) -> String {
    format!(
        "\n[cluster]\nnats_urls = [\"{nats_url}\"]\nrelay_name = \"relay-{index}\"\n\
         subject_prefix = \"{subject_prefix}\"\nheartbeat_ms = 500\nrelay_timeout_ms = 3000\n"
    )
}

/// For the cross-relay scenario (two relays on one NATS): starts `count` relays, each on a copy
/// of `config` with a [`cluster_section`] appended (and [`RELAY_ENV`] plus `extra`, as
/// [`spawn_relay`]), all on the nats-server at `nats_url`, under a subject prefix of their own.
/// Their config copies live in `dir`.
pub fn spawn_cluster_relays(
    config: &Path,
    extra: &[(String, String)],
    nats_url: &str,
    count: usize,
    dir: &Path,
) -> Result<Vec<RelayProcess>> {
    let base = std::fs::read_to_string(config)
        .with_context(|| format!("cannot read {}", config.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = format!(
        "bench{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    (0..count)
        .map(|index| {
            let path = dir.join(format!("relay-{index}.toml"));
            std::fs::write(
                &path,
                format!("{base}{}", cluster_section(nats_url, index, &prefix)),
            )
            .with_context(|| format!("cannot write {}", path.display()))?;
            spawn_relay(&path, extra)
        })
        .collect()
}

/// A floor process and its address.
pub struct FloorProcess {
    pub child: Child,
    pub ws_url: String,
}

/// The arguments that make this binary the floor, with the relay's queue capacity and frame
/// limit.
pub fn floor_args(queue_capacity: usize, max_message_bytes: usize) -> Vec<String> {
    vec![
        "floor".to_owned(),
        "--listen".to_owned(),
        "127.0.0.1:0".to_owned(),
        "--queue-capacity".to_owned(),
        queue_capacity.to_string(),
        "--max-message-bytes".to_owned(),
        max_message_bytes.to_string(),
    ]
}

/// Re-executes this binary as `floor`, with the relay's queue capacity and frame limits.
pub fn spawn_floor(queue_capacity: usize, max_message_bytes: usize) -> Result<FloorProcess> {
    let exe = std::env::current_exe()?;
    let mut command = Command::new(&exe);
    command
        .args(floor_args(queue_capacity, max_message_bytes))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    die_with_parent(&mut command);
    let mut child = command.spawn().context("cannot start the floor")?;
    let stdout = child.stdout.take().expect("piped");
    let guard = Child {
        name: "floor",
        child,
        log: Arc::new(LogWatch::default()),
    };
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(sender) = tx.take() {
                let _ = sender.send(line);
            }
        }
    });
    let line = rx
        .recv_timeout(START_TIMEOUT)
        .map_err(|_| anyhow!("the floor printed no address within {START_TIMEOUT:?}"))?;
    let ws_url = line
        .strip_prefix("floor listening ")
        .ok_or_else(|| anyhow!("unexpected floor output: {line}"))?
        .trim()
        .to_owned();
    Ok(FloorProcess {
        child: guard,
        ws_url,
    })
}

/// One reading of a process's CPU time and memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcSample {
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

/// Reads /proc/<pid>/stat and /proc/<pid>/status (`pid` None: this process).
pub fn sample(pid: Option<u32>) -> Result<ProcSample> {
    let dir = match pid {
        Some(pid) => format!("/proc/{pid}"),
        None => "/proc/self".to_owned(),
    };
    let stat = std::fs::read_to_string(format!("{dir}/stat"))
        .with_context(|| format!("cannot read {dir}/stat"))?;
    let status = std::fs::read_to_string(format!("{dir}/status"))
        .with_context(|| format!("cannot read {dir}/status"))?;
    let cpu_ticks = parse_stat_cpu(&stat).ok_or_else(|| anyhow!("bad {dir}/stat"))?;
    Ok(ProcSample {
        cpu_ticks,
        rss_kib: status_kib(&status, "VmRSS:").unwrap_or(0),
        hwm_kib: status_kib(&status, "VmHWM:").unwrap_or(0),
    })
}

/// utime + stime from a /proc/<pid>/stat line. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted from the last ')'.
pub fn parse_stat_cpu(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A `Key:   1234 kB` line of /proc/<pid>/status, in KiB.
pub fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

pub fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// CPU % and RSS between two samples taken `wall` apart.
pub fn usage(before: ProcSample, after: ProcSample, wall: Duration) -> ProcUsage {
    let secs = wall.as_secs_f64().max(1e-9);
    let cpu_s = after.cpu_ticks.saturating_sub(before.cpu_ticks) as f64 / clock_ticks_per_second();
    ProcUsage {
        cpu_pct: 100.0 * cpu_s / secs,
        cpu_s,
        rss_before_kib: before.rss_kib,
        rss_after_kib: after.rss_kib,
        rss_peak_kib: after.hwm_kib,
    }
}

/// Sampling the server's processes (those whose PIDs are known: one relay, or two relays and
/// their nats-server) and this one over a run.
pub struct Meter {
    pids: Vec<u32>,
    started: Instant,
    servers: Vec<Option<ProcSample>>,
    client: ProcSample,
}

impl Meter {
    pub fn start(pids: &[u32]) -> Meter {
        Meter {
            pids: pids.to_vec(),
            started: Instant::now(),
            servers: pids.iter().map(|&pid| sample(Some(pid)).ok()).collect(),
            client: sample(None).unwrap_or_default(),
        }
    }

    /// (each server process's usage, in the order given, and the client's) since `start`.
    pub fn finish(&self) -> (Vec<Option<ProcUsage>>, ProcUsage) {
        let wall = self.started.elapsed();
        let servers = self
            .pids
            .iter()
            .zip(&self.servers)
            .map(|(&pid, before)| {
                let after = sample(Some(pid)).ok()?;
                Some(usage((*before)?, after, wall))
            })
            .collect();
        let client = usage(self.client, sample(None).unwrap_or_default(), wall);
        (servers, client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cross-relay scenarios' relays get issue 11's `[cluster]` keys, one name each and a
    /// subject prefix of the run's own.
    #[test]
    fn cluster_relays_get_a_cluster_section_of_their_own() {
        let section = cluster_section("nats://127.0.0.1:4999", 1, "bench42");
        for line in [
            "[cluster]",
            "nats_urls = [\"nats://127.0.0.1:4999\"]",
            "relay_name = \"relay-1\"",
            "subject_prefix = \"bench42\"",
            "heartbeat_ms = 500",
            "relay_timeout_ms = 3000",
        ] {
            assert!(section.lines().any(|l| l == line), "{line} in {section}");
        }
        assert_ne!(
            section,
            cluster_section("nats://127.0.0.1:4999", 0, "bench42")
        );
    }

    #[test]
    fn cpu_ticks_are_utime_plus_stime() {
        let stat = "1234 (gsio relay) S 1 1234 1234 0 -1 4194560 1500 0 0 0 250 75 0 0 20 0 \
                    4 0 100 123456 789 18446744073709551615";
        assert_eq!(parse_stat_cpu(stat), Some(325));
        // A name with a ')' inside.
        let odd = "9 (a) b) R 1 1 1 0 -1 0 0 0 0 0 7 3 0 0 20 0 1 0 1 1 1 1";
        assert_eq!(parse_stat_cpu(odd), Some(10));
        assert_eq!(parse_stat_cpu("garbage"), None);
    }

    #[test]
    fn status_lines_give_kib() {
        let status = "Name:\tgsio-relay\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\nThreads:\t3\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(10240));
        assert_eq!(status_kib(status, "VmHWM:"), Some(20480));
        assert_eq!(status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let s = sample(None).unwrap();
        assert!(s.rss_kib > 0);
        assert!(s.hwm_kib >= s.rss_kib);
    }

    #[test]
    fn usage_is_cpu_time_over_wall_time() {
        let before = ProcSample {
            cpu_ticks: 100,
            rss_kib: 1000,
            hwm_kib: 1000,
        };
        let after = ProcSample {
            cpu_ticks: 100 + clock_ticks_per_second() as u64,
            rss_kib: 3000,
            hwm_kib: 4000,
        };
        let u = usage(before, after, Duration::from_secs(2));
        assert!((u.cpu_pct - 50.0).abs() < 1e-9);
        assert!((u.cpu_s - 1.0).abs() < 1e-9);
        assert_eq!(
            (u.rss_before_kib, u.rss_after_kib, u.rss_peak_kib),
            (1000, 3000, 4000)
        );
    }

    #[test]
    fn the_listening_line_gives_both_addresses() {
        let plain = "2025-01-01T00:00:00.000000Z  INFO gsio_relay: gsio-relay listening \
                     websocket=ws://127.0.0.1:41234 grpc=127.0.0.1:41235";
        assert_eq!(
            parse_listening(plain),
            Some(("ws://127.0.0.1:41234".into(), "127.0.0.1:41235".into()))
        );
        let coloured = "\u{1b}[2m2025\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m gsio-relay listening \
                        \u{1b}[3mwebsocket\u{1b}[0m\u{1b}[2m=\u{1b}[0mws://127.0.0.1:1 \
                        \u{1b}[3mgrpc\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:2";
        assert_eq!(
            parse_listening(coloured),
            Some(("ws://127.0.0.1:1".into(), "127.0.0.1:2".into()))
        );
        assert_eq!(parse_listening("INFO something else"), None);
    }

    #[test]
    fn warnings_are_counted_and_the_first_kept() {
        let log = LogWatch::default();
        log.note("2025 INFO gsio_relay: peer joined");
        log.note("2025  WARN gsio_relay::peer: slow consumer disconnected: outbound queue full");
        log.note("2025 ERROR x: y");
        log.note("2025  INFO gsio_relay::server: relay stopped connections=3");
        assert_eq!(log.warning_count(), 2);
        assert_eq!(log.kept.lock().unwrap().len(), 2);
        assert!(log
            .stopped_line
            .lock()
            .unwrap()
            .as_ref()
            .unwrap()
            .contains("connections=3"));
    }

    /// BENCHMARKS.md: with `--url`, "the running relay must route `LedgerSyncResponse` as
    /// directed and `Bench` as broadcast, with `discovery.announce_peers = false`"; the relay
    /// the bench starts itself does, on the shipped relay.toml with [`RELAY_ENV`], loaded by the
    /// relay's own loader (which also refuses an override naming no key). `Ping` is echoed (the
    /// idle connections' liveness check).
    #[test]
    fn the_relay_the_bench_starts_routes_as_the_bench_assumes() {
        use crate::wire::{BROADCAST_TYPE, DIRECTED_TYPE, ECHO_TYPE};
        use gsio_relay_core::{Mode, RelayConfig};
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../relay.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let config = RelayConfig::load(&text, path, RELAY_ENV.iter().copied()).unwrap();
        let routing = &config.routing;
        assert_eq!(routing.mode_for(BROADCAST_TYPE), Mode::Broadcast);
        assert_eq!(routing.mode_for(DIRECTED_TYPE), Mode::Directed);
        assert_eq!(routing.mode_for(ECHO_TYPE), Mode::Echo);
        assert!(!config.discovery.announce_peers);
        assert_eq!(config.server.ws_listen.port(), 0);
        assert_eq!(config.server.grpc_listen.port(), 0);
        assert_eq!(config.server.admin_listen.port(), 0);
        assert_eq!(config.server.max_connections, 100_000);
        assert_eq!(config.limits.max_connections_per_ip, 0);
        assert_eq!(config.limits.new_connections_per_ip_per_second, 0);
    }

    #[test]
    fn the_nofile_limit_is_raised_to_the_hard_one() {
        let (soft, hard) = raise_nofile_limit();
        assert_eq!(soft, hard);
    }
}
