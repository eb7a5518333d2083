//! `wrangler dev` as a test fixture: the Worker (worker/) served by a real workerd on a free
//! loopback port, so the Worker front runs the same scenarios as the native relay.
//!
//! Needs `scripts/setup-worker.sh` (worker/node_modules, worker-build, the wasm-bindgen CLI) and
//! `node` on `PATH`. Run `scripts/build-worker.sh` before the tests: wrangler runs it again on
//! every start, and it then returns at once instead of compiling inside [`START_TIMEOUT`].
//!
//! # Cleanup
//! wrangler, the workerd it starts and the build it runs share one process group of their own.
//! Dropping a [`WranglerDev`] ends that whole group (SIGTERM, then SIGKILL after
//! [`STOP_GRACE`]) and waits for it. For the cases where no drop happens (the test binary is
//! killed, or the fixture lives in a `static`), a watchdog process ends the group as soon as this
//! process is gone: it blocks reading a pipe whose only writer is this process.
//!
//! Each instance keeps its files in `target/tmp/wrangler-dev/<pid>-<port>/`: `wrangler.log`
//! (wrangler's and the Worker's output, printed on a failed start) and `state/` (Durable Object
//! storage, so instances and runs never share state).

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long [`WranglerDev::start`] waits for the Worker to accept a WebSocket. The first start
/// after a change includes the wasm build (scripts/build-worker.sh).
pub const START_TIMEOUT: Duration = Duration::from_secs(120);

/// How long wrangler and workerd get to exit after SIGTERM before they are killed.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// The network the readiness probe connects to: a room of its own, so the probe never shows up
/// among the peers of a network a test uses.
const PROBE_PATH: &str = "/readiness-probe";

/// Offline settings for wrangler: no metrics, no error reports, no `request.cf` download, and no
/// banner (printing it asks the npm registry for a newer wrangler).
const OFFLINE_ENV: &[(&str, &str)] = &[
    ("WRANGLER_SEND_METRICS", "false"),
    ("WRANGLER_SEND_ERROR_REPORTS", "false"),
    ("CLOUDFLARE_CF_FETCH_ENABLED", "false"),
    ("WRANGLER_HIDE_BANNER", "true"),
];

/// A running `wrangler dev` serving the Worker on `127.0.0.1:port`; stopped on drop.
pub struct WranglerDev {
    /// The loopback port the Worker listens on: `ws://127.0.0.1:{port}/<network>`.
    pub port: u16,
    /// wrangler itself; its pid is the id of the process group to end on drop.
    child: Child,
    /// wrangler's and the Worker's output.
    log_path: std::path::PathBuf,
    /// Ends the process group if this process dies without dropping the fixture; it is killed
    /// first on drop, so it never signals a group id that could have been reused.
    watchdog: Child,
}

impl WranglerDev {
    /// Starts `wrangler dev` on a free port and returns once a WebSocket handshake succeeds.
    ///
    /// Panics, printing the log's path and its tail, when wrangler exits or the Worker does not
    /// accept a WebSocket within [`START_TIMEOUT`]; nothing is left running then either.
    pub fn start() -> WranglerDev {
        WranglerDev::start_with_vars(&[])
    }

    /// Like [`WranglerDev::start`], with `[vars]` set on the command line (`--var NAME:VALUE`).
    pub fn start_with_vars(vars: &[(&str, &str)]) -> WranglerDev {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        WranglerDev::start_with(&repo.join("wrangler.toml"), &[], vars, START_TIMEOUT)
    }

    /// `wrangler dev` on the configuration `config` (a wrangler.toml), with `env` added to
    /// wrangler's environment (and so to the build it runs) and `vars` as `[vars]`, ready within
    /// `start_timeout`.
    pub fn start_with(
        config: &Path,
        env: &[(&str, &str)],
        vars: &[(&str, &str)],
        start_timeout: Duration,
    ) -> WranglerDev {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let wrangler_js = repo.join("worker/node_modules/wrangler/bin/wrangler.js");
        assert!(
            wrangler_js.is_file(),
            "{} is missing: run scripts/setup-worker.sh",
            wrangler_js.display()
        );

        let port = free_port();
        let inspector_port = free_port();
        let run_dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("wrangler-dev")
            .join(format!("{}-{port}", std::process::id()));
        let state_dir = run_dir.join("state");
        let _ = fs::remove_dir_all(&run_dir);
        fs::create_dir_all(&run_dir).expect("create the wrangler run directory");
        let log_path = run_dir.join("wrangler.log");
        let log = File::create(&log_path).expect("create the wrangler log");

        let mut command = Command::new("node");
        command
            .arg(&wrangler_js)
            .arg("dev")
            .arg("--config")
            .arg(config)
            .args(["--ip", "127.0.0.1", "--port", &port.to_string()])
            .args(["--inspector-port", &inspector_port.to_string()])
            .arg("--persist-to")
            .arg(&state_dir)
            .arg("--show-interactive-dev-session=false")
            .args(
                vars.iter()
                    .flat_map(|(name, value)| ["--var".to_owned(), format!("{name}:{value}")]),
            )
            .current_dir(repo)
            .envs(OFFLINE_ENV.iter().copied())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .process_group(0);
        let child = command.spawn().expect("spawn node (is Node.js on PATH?)");
        let pgid = child.id();

        // The pipe's write end is close-on-exec (std opens every pipe so): no other child holds
        // it, so `cat` sees EOF exactly when this process is gone, even when the fixture lives
        // in a `static` and is never dropped.
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(
                // No `--` before the group: dash's kill rejects it.
                "cat >/dev/null; kill -TERM -\"$1\" 2>/dev/null; sleep \"$2\"; \
                 kill -KILL -\"$1\" 2>/dev/null",
            )
            .arg("wrangler-dev-watchdog")
            .arg(pgid.to_string())
            .arg(STOP_GRACE.as_secs().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own group, so a Ctrl-C meant for the tests does not take it down first.
            .process_group(0)
            .spawn();
        let watchdog = match watchdog {
            Ok(watchdog) => watchdog,
            Err(error) => {
                let mut child = child;
                stop_group(&mut child);
                panic!("spawn the wrangler watchdog (sh): {error}");
            }
        };

        let mut dev = WranglerDev {
            port,
            child,
            log_path: log_path.clone(),
            watchdog,
        };
        if let Err(reason) = dev.wait_until_ready(start_timeout) {
            drop(dev);
            panic!(
                "wrangler dev did not come up: {reason}\nlog: {}\n--- last lines ---\n{}",
                log_path.display(),
                log_tail(&log_path, 60)
            );
        }
        dev
    }

    /// The last lines of wrangler's log, for a failure message.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log_path, 60)
    }

    /// `ws://127.0.0.1:{port}{path}`; `path` starts with `/` and names the network (`/` is the
    /// default network).
    pub fn url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{}", self.port, path)
    }

    fn wait_until_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Err(format!("wrangler exited early ({status})")),
                Ok(None) => {}
                Err(error) => return Err(format!("cannot poll wrangler: {error}")),
            }
            let error = match probe(self.port) {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "no WebSocket handshake within {timeout:?} (last attempt: {error})"
                ));
            }
            thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for WranglerDev {
    fn drop(&mut self) {
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
        stop_group(&mut self.child);
    }
}

/// One WebSocket handshake with the Worker, then an orderly close. Every step is bounded.
fn probe(port: u16) -> Result<(), String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .map_err(|error| format!("connect: {error}"))?;
    // wrangler holds requests while it (re)loads the Worker; a stuck handshake is retried.
    let io_timeout = Some(Duration::from_secs(10));
    stream
        .set_read_timeout(io_timeout)
        .and_then(|()| stream.set_write_timeout(io_timeout))
        .map_err(|error| format!("socket timeout: {error}"))?;
    let url = format!("ws://127.0.0.1:{port}{PROBE_PATH}");
    let (mut socket, _response) = match tungstenite::client(url, stream) {
        Ok(connected) => connected,
        // The Worker itself answered (a misconfigured one refuses every request, by design):
        // it is up, which is all a test of that answer needs.
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response)))
            if response
                .body()
                .as_deref()
                .is_some_and(|body| body.starts_with(b"gsio-relay")) =>
        {
            return Ok(());
        }
        Err(error) => return Err(format!("handshake: {error}")),
    };
    // Best effort: the handshake alone proves readiness.
    if socket.close(None).is_ok() {
        while socket.read().is_ok() {}
    }
    Ok(())
}

/// A port that was free a moment ago: bound to 127.0.0.1:0, read back, released.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Ends the process group led by `child`: SIGTERM, up to [`STOP_GRACE`] to exit, then SIGKILL,
/// and reaps the leader. Members reparented after the leader's exit (workerd) are awaited too.
fn stop_group(child: &mut Child) {
    let pgid = child.id() as libc::pid_t;
    signal_group(pgid, libc::SIGTERM);
    if !wait_for_group(child, pgid, STOP_GRACE) {
        signal_group(pgid, libc::SIGKILL);
        let _ = child.wait();
        wait_for_group(child, pgid, STOP_GRACE);
    }
}

/// Waits until the leader is reaped and no process is left in the group; false on timeout.
fn wait_for_group(child: &mut Child, pgid: libc::pid_t, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let leader_gone = !matches!(child.try_wait(), Ok(None));
        if leader_gone && !group_alive(pgid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn signal_group(pgid: libc::pid_t, signal: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions; a negative pid names a process group.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

fn group_alive(pgid: libc::pid_t) -> bool {
    // SAFETY: as above; signal 0 only checks that some member of the group exists.
    let result = unsafe { libc::kill(-pgid, 0) };
    result == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// The last `lines` lines of the log (at most its last 64 KiB), for a failure message.
fn log_tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(path) {
        let len = file.metadata().map(|meta| meta.len()).unwrap_or(0);
        let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
        let mut bytes = Vec::new();
        let _ = file.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
