//! The real `gsio-relay` binary as a test fixture: started on a command line, its addresses read
//! from its "listening" log line (text or JSON), its log lines readable while it runs, and
//! stopped with SIGTERM. Killed if dropped while still running.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::ARRIVES;

pub const BIN: &str = env!("CARGO_BIN_EXE_gsio-relay");

/// The relay binary, started.
pub struct RunningBinary {
    pub child: Child,
    /// `ws://host:port`, from its log.
    pub url: String,
    /// `http://host:port` of the gRPC front, from its log.
    pub grpc_url: String,
    /// Every line it has written to stderr so far.
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// The address after `key` in a log line (`websocket=ws://…`, `"grpc":"…"`).
fn address_after(line: &str, key: &str) -> Option<String> {
    let at = line.find(key)? + key.len();
    let address: String = line[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '/' | '[' | ']'))
        .collect();
    (!address.is_empty()).then_some(address)
}

impl RunningBinary {
    /// Starts `command` (the binary, logging at info to stderr, without colours) and waits for
    /// the line saying where it listens.
    pub fn start(command: &mut Command) -> RunningBinary {
        let mut child = command
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let reader = {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("gsio-relay listening") {
                        let ws = address_after(&line, "ws://");
                        let grpc = address_after(&line, "grpc=")
                            .or_else(|| address_after(&line, "\"grpc\":\""));
                        if let (Some(ws), Some(grpc)) = (ws, grpc) {
                            let _ = addr_tx.send((format!("ws://{ws}"), format!("http://{grpc}")));
                        }
                    }
                    lines.lock().unwrap().push(line);
                }
            })
        };
        let (url, grpc_url) = addr_rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!(
                    "the relay did not log its addresses: {:#?}",
                    lines.lock().unwrap()
                )
            });
        RunningBinary {
            child,
            url,
            grpc_url,
            lines,
            reader: Some(reader),
        }
    }

    /// Every log line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The `n`th (from 1) log entry containing `needle`, with its continuation lines (a message
    /// that spans lines, as the loader's errors do, up to the next line that starts with a
    /// timestamp), once it has been written: polled until [`ARRIVES`] has passed.
    pub async fn entry(&self, needle: &str, n: usize) -> String {
        let deadline = tokio::time::Instant::now() + ARRIVES;
        loop {
            let lines = self.lines();
            let starts: Vec<usize> = (0..lines.len())
                .filter(|&i| lines[i].contains(needle))
                .collect();
            if let Some(&start) = starts.get(n - 1) {
                let mut entry = lines[start].clone();
                for line in &lines[start + 1..] {
                    if line.starts_with("20") || line.starts_with('{') {
                        break;
                    }
                    entry.push('\n');
                    entry.push_str(line);
                }
                return entry;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("no log entry #{n} with {needle:?} in {lines:#?}");
            }
            assert!(self.is_running(), "the relay exited; its log: {lines:#?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// How many log lines contain `needle` now.
    pub fn count(&self, needle: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(needle)).count()
    }

    pub fn is_running(&self) -> bool {
        // `try_wait` needs `&mut`; kill(pid, 0) does not, and the pid is ours until reaped.
        // SAFETY: kill(2) with signal 0 only checks that the process exists.
        unsafe { libc::kill(self.child.id() as i32, 0) == 0 }
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Sends SIGTERM and waits for the exit: its status and every log line.
    pub fn terminate(mut self) -> (ExitStatus, Vec<String>) {
        self.signal(libc::SIGTERM);
        let status = self.child.wait().unwrap();
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        (status, self.lines())
    }
}

impl Drop for RunningBinary {
    fn drop(&mut self) {
        if self.reader.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
