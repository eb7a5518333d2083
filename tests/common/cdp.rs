//! A real headless Chromium, driven over the Chrome DevTools Protocol: just enough to open a
//! page and evaluate JavaScript in it. Chromium is Debian's `chromium` (scripts/setup-worker.sh
//! installs it); the protocol goes over a WebSocket (tokio-tungstenite) to the page's target.
//!
//! The browser runs in a process group of its own, with a fresh profile directory; dropping the
//! [`Browser`] kills that group (the process this started, by its pid, and its children) and
//! removes the directory, also when a test panics.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long the browser may take to start and load a page.
const STARTS: Duration = Duration::from_secs(60);

/// A headless Chromium with one page open.
pub struct Browser {
    page: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// Declared last: dropped after the page's connection.
    _process: Process,
}

/// The chromium this started and its profile directory; dropping it kills the one and removes
/// the other.
struct Process {
    child: Child,
    profile: PathBuf,
}

impl Browser {
    /// Starts Chromium on `url`, and connects to that page's DevTools target.
    pub async fn open(url: &str) -> Browser {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let profile =
            std::env::temp_dir().join(format!("gsio-relay-chromium-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).unwrap();
        let child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start chromium ({e}); scripts/setup-worker.sh installs it")
            });
        // From here on, the guard kills it whatever happens.
        let mut process = Process { child, profile };
        let port = process.devtools_port().await;
        let page_url = page_target(port, url).await;
        let (page, _) = tokio_tungstenite::connect_async(page_url.as_str())
            .await
            .unwrap_or_else(|e| panic!("DevTools {page_url}: {e}"));
        Browser {
            page,
            next_id: 1,
            _process: process,
        }
    }

    /// The pid of the chromium this started (the leader of its process group).
    pub fn pid(&self) -> u32 {
        self._process.child.id()
    }

    /// `expression` evaluated in the page, its value as JSON (an exception is a panic).
    pub async fn evaluate(&mut self, expression: &str) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let call = json!({
            "id": id,
            "method": "Runtime.evaluate",
            "params": { "expression": expression, "returnByValue": true },
        });
        self.page
            .send(Message::text(call.to_string()))
            .await
            .unwrap();
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(10), self.page.next())
                .await
                .expect("no DevTools answer within 10 s")
                .expect("DevTools connection ended")
                .unwrap();
            let Message::Text(text) = frame else { continue };
            let answer: Value = serde_json::from_str(&text).unwrap();
            if answer["id"] != id {
                continue; // an event
            }
            let result = &answer["result"];
            assert!(
                result.get("exceptionDetails").is_none() && answer.get("error").is_none(),
                "{expression}: {answer}"
            );
            return result["result"]["value"].clone();
        }
    }

    /// Evaluates `expression` every 100 ms until `done` holds for its value, within `within`;
    /// returns that value.
    pub async fn wait_for(
        &mut self,
        expression: &str,
        within: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let value = self.evaluate(expression).await;
            if done(&value) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{expression} is still {value} after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Process {
    /// The port Chromium wrote to `DevToolsActivePort` in its profile once it listens.
    async fn devtools_port(&mut self) -> u16 {
        let file = self.profile.join("DevToolsActivePort");
        let deadline = Instant::now() + STARTS;
        loop {
            if let Ok(text) = std::fs::read_to_string(&file) {
                if let Some(port) = text.lines().next().and_then(|l| l.trim().parse().ok()) {
                    return port;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("chromium exited before it listened: {status}");
            }
            assert!(Instant::now() < deadline, "chromium did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The DevTools WebSocket of the page showing `url`.
async fn page_target(port: u16, url: &str) -> String {
    let deadline = Instant::now() + STARTS;
    loop {
        let base = format!("http://127.0.0.1:{port}");
        if let Ok(response) = super::http::get(&base, "/json/list").await {
            let targets: Value = serde_json::from_str(&response.body).unwrap_or(Value::Null);
            let page = targets.as_array().into_iter().flatten().find(|t| {
                t["type"] == "page" && t["url"].as_str().is_some_and(|u| u.starts_with(url))
            });
            if let Some(ws) = page.and_then(|t| t["webSocketDebuggerUrl"].as_str()) {
                return ws.to_owned();
            }
        }
        assert!(Instant::now() < deadline, "no page target for {url}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let group = -libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on the process group of the chromium this guard started (its pid is
        // the group's id, `process_group(0)`), which has not been reaped yet.
        unsafe {
            libc::kill(group, libc::SIGKILL);
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
