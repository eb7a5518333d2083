//! Reloading `relay.toml` while the relay runs: noticing an edit (the file's folder is watched;
//! `SIGHUP` asks too), reading the whole file with the startup loader, and putting it in force
//! for the next envelope without dropping a connection.
//!
//! # How a reload goes
//! 1. **Noticed.** The file's *folder* is watched (inotify on Linux, through `notify`), so that
//!    every way an editor saves is seen: in place (truncate, write), to a temporary file renamed
//!    over it, or delete then create. Editors save in several steps, so the relay waits until
//!    the file has been quiet for [`DEBOUNCE`] before reading it. `SIGHUP` (the binary, through
//!    [`ReloadHandle::request`]) reloads at once.
//! 2. **Read whole.** [`crate::config::load`], the loader the relay started with: the file, the
//!    `GSIO_RELAY_*` overrides over it, validation. A file that is missing, unreadable or
//!    invalid changes nothing: the error (naming the file, the key and the line) is logged and
//!    counted ([`ReloadStatus::failed`](crate::state::ReloadStatus)), the rules in force stay,
//!    and the folder is still watched, so a half-saved file that fails is read again when the
//!    editor finishes.
//! 3. **Only start-time keys kept.** The keys in [`RESTART_ONLY`] are used once, at start; a
//!    change to one is named in a warning, and the relay keeps its old value until restart.
//! 4. **Put in force** ([`crate::state::Relay::put_in_force`], then the core's `reconfigure`):
//!    routing, `limits.max_message_bytes` for the next envelope of every connection,
//!    `limits.queue_capacity` for the next push to every queue (see [`crate::queue`]),
//!    `discovery.*` for the next join or leave, `server.shutdown_grace_ms` for the next
//!    shutdown. When the `limits` or `routing` a Welcome announces changed, every connected
//!    peer receives a `ConfigChanged` before anything routed by the new rules.
//!
//! # The frame limit of the transports
//! Beyond `max_message_bytes` (refused with `message_too_large`, the connection stays) each front
//! has a hard limit past which a frame is not read at all (twice `max_message_bytes`, at least
//! 64 KiB more). It is fixed by the transports: for a WebSocket connection when it is accepted
//! (tungstenite takes its limits at the handshake), for the gRPC front when the relay starts
//! (tonic's decoding limit). So a larger `max_message_bytes` reaches open WebSocket connections
//! and the gRPC front only as far as the hard limit they were given; a reload that goes past the
//! gRPC front's says so in a warning.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gsio_relay_core::RelayConfig;
use tokio::sync::mpsc;

use crate::shutdown::{Phase, Shutdown};
use crate::state::Relay;

/// How long the file must be left alone after a change before it is read: an editor's save
/// (truncate and write, or write a temporary file and rename it) is over well within it, and a
/// person does not notice it.
pub const DEBOUNCE: Duration = Duration::from_millis(150);

/// The keys a running relay cannot change: each is used once, at start (the listening sockets,
/// the connection slots, the gRPC server's HTTP/2 settings and keepalive, which share the
/// ping keys with the WebSocket front so that both fronts ping alike, the log's format). A
/// reload that changes one warns and keeps the old value until the relay restarts. The whole of
/// `[cluster]` is one (the NATS connection and this relay's name in the cluster): named as
/// `cluster` when it is added or removed, or by its changed keys.
pub const RESTART_ONLY: [&str; 10] = [
    "server.ws_listen",
    "server.grpc_listen",
    "server.admin_listen",
    "server.max_connections",
    "limits.ping_interval_ms",
    "limits.pong_timeout_ms",
    "limits.grpc_max_concurrent_streams",
    "limits.grpc_max_header_list_bytes",
    "log.format",
    "cluster",
];

/// Why the reload task looks at the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// The file's folder saw a change to it: read once it has been quiet for [`DEBOUNCE`].
    Changed,
    /// Asked for (SIGHUP): read now.
    Requested,
}

/// Asks the running relay to reload its file now (the binary calls it on `SIGHUP`).
#[derive(Clone)]
pub struct ReloadHandle {
    tx: mpsc::UnboundedSender<Trigger>,
}

impl ReloadHandle {
    pub fn request(&self) {
        let _ = self.tx.send(Trigger::Requested);
    }
}

/// The file a relay reloads, watched from the moment it is named (so that an edit made as soon
/// as the relay says it is listening is seen), and the requests to reload it.
pub(crate) struct ConfigWatch {
    path: PathBuf,
    rx: mpsc::UnboundedReceiver<Trigger>,
    /// Watching for as long as it lives; `None` when the folder cannot be watched (SIGHUP still
    /// works).
    _watcher: Option<notify::RecommendedWatcher>,
}

impl ConfigWatch {
    pub(crate) fn new(path: PathBuf) -> (ConfigWatch, ReloadHandle) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = ReloadHandle { tx: tx.clone() };
        let watcher = match watch_folder(&path, tx) {
            Ok(watcher) => Some(watcher),
            Err(error) => {
                tracing::warn!(
                    file = %path.display(),
                    "cannot watch relay.toml for edits ({error}); SIGHUP still reloads it"
                );
                None
            }
        };
        let watch = ConfigWatch {
            path,
            rx,
            _watcher: watcher,
        };
        (watch, handle)
    }
}

/// Reloads on every change of the file (debounced) and every request, until shutdown begins.
pub(crate) async fn watch(watch: ConfigWatch, relay: Arc<Relay>, shutdown: Shutdown) {
    let ConfigWatch {
        path,
        mut rx,
        _watcher,
    } = watch;
    loop {
        let trigger = tokio::select! {
            trigger = rx.recv() => trigger,
            () = shutdown.reached(Phase::StopReading) => return,
        };
        let Some(mut trigger) = trigger else { return };
        // Wait for a quiet file: every further change starts the wait again; a request ends it.
        while trigger == Trigger::Changed {
            match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                Ok(Some(next)) => trigger = next,
                Ok(None) => return,
                Err(_quiet) => break,
            }
        }
        reload(&path, &relay);
    }
}

/// Watches the folder of `path` (not the file: a rename over it, or a delete and create, would
/// leave a watch on the file itself looking at a file that is gone) and sends
/// [`Trigger::Changed`] for each change to an entry named like the file.
fn watch_folder(
    path: &Path,
    tx: mpsc::UnboundedSender<Trigger>,
) -> notify::Result<notify::RecommendedWatcher> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let name = path.file_name().map(ToOwned::to_owned);
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        // Opens and closes are not changes: the writes before a close were reported already,
        // and where a backend reports reads, the relay's own read must not trigger another
        // reload. (inotify, as notify sets it up, reports no reads.)
        if matches!(event.kind, EventKind::Access(_)) {
            return;
        }
        if event
            .paths
            .iter()
            .any(|changed| changed.file_name() == name.as_deref())
        {
            let _ = tx.send(Trigger::Changed);
        }
    })?;
    watcher.watch(&folder, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// Reads `path` whole and puts it in force, or changes nothing; logs and records either.
pub(crate) fn reload(path: &Path, relay: &Relay) {
    let file = path.display();
    let mut config = match crate::config::load(path) {
        Ok(config) => config,
        Err(error) => {
            let status = relay.record_reload(false, false, error.to_string());
            tracing::error!(
                file = %file,
                failed = status.failed,
                "relay.toml not reloaded, the rules in force are unchanged: {error}"
            );
            return;
        }
    };
    let old = relay.config();
    let kept = keep_restart_only(&old, &mut config);
    if !kept.is_empty() {
        tracing::warn!(
            file = %file,
            keys = %kept.join(", "),
            "relay.toml: these keys apply only when the relay starts; they keep their values until a restart"
        );
    }
    let grpc_frame_limit = relay.grpc_frame_limit();
    if config.limits.hard_frame_bytes() > grpc_frame_limit {
        tracing::warn!(
            file = %file,
            "relay.toml: limits.max_message_bytes = {}: the gRPC front reads frames of at most {grpc_frame_limit} bytes until a restart, and WebSocket connections opened before this reload the limit they were opened with",
            config.limits.max_message_bytes
        );
    }
    let changed = old.changed_keys(&config);
    if changed.is_empty() {
        let status = relay.record_reload(true, false, "nothing changed".to_owned());
        tracing::info!(
            file = %file,
            generation = status.generation,
            "relay.toml reloaded: nothing changed"
        );
        return;
    }
    let done = relay.put_in_force(config);
    let changed = changed.join(", ");
    let status = relay.record_reload(true, true, format!("changed {changed}"));
    tracing::info!(
        file = %file,
        generation = status.generation,
        changed = %changed,
        notified = done.notified,
        "relay.toml reloaded"
    );
    relay.slow_consumers_disconnected(done.slow_consumers, "ConfigChanged");
}

/// Gives `new` the values of `old` for the [`RESTART_ONLY`] keys, and names those that differed.
fn keep_restart_only(old: &RelayConfig, new: &mut RelayConfig) -> Vec<&'static str> {
    let changed = old.changed_keys(new);
    let kept = RESTART_ONLY
        .into_iter()
        .filter(|key| {
            changed
                .iter()
                .any(|c| c == key || c.strip_prefix(key).is_some_and(|k| k.starts_with('.')))
        })
        .collect();
    new.server.ws_listen = old.server.ws_listen;
    new.server.grpc_listen = old.server.grpc_listen;
    new.server.admin_listen = old.server.admin_listen;
    new.server.max_connections = old.server.max_connections;
    new.limits.ping_interval_ms = old.limits.ping_interval_ms;
    new.limits.pong_timeout_ms = old.limits.pong_timeout_ms;
    new.limits.grpc_max_concurrent_streams = old.limits.grpc_max_concurrent_streams;
    new.limits.grpc_max_header_list_bytes = old.limits.grpc_max_header_list_bytes;
    new.log = old.log.clone();
    new.cluster = old.cluster.clone();
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key of [`RESTART_ONLY`] is kept, and nothing else is.
    #[test]
    fn only_the_restart_only_keys_keep_their_old_values() {
        let old = RelayConfig::from_toml_str("", "old.toml").unwrap();
        let mut new = RelayConfig::from_toml_str(
            "[server]\nws_listen = \"127.0.0.1:1\"\ngrpc_listen = \"127.0.0.1:2\"\n\
             admin_listen = \"127.0.0.1:6\"\nmax_connections = 3\nshutdown_grace_ms = 4\n[log]\nformat = \"json\"\n\
             [limits]\nqueue_capacity = 5\nping_interval_ms = 300\npong_timeout_ms = 400\n\
             grpc_max_concurrent_streams = 7\ngrpc_max_header_list_bytes = 2000\n\
             max_connections_per_ip = 8\nhandshake_timeout_ms = 900\n\
             [cluster]\nnats_urls = [\"nats://127.0.0.1:4222\"]\nrelay_name = \"a\"\n",
            "new.toml",
        )
        .unwrap();
        let kept = keep_restart_only(&old, &mut new);
        assert_eq!(kept, RESTART_ONLY);
        // A changed key of the section names it too.
        let with = |name: &str| {
            RelayConfig::from_toml_str(
                &format!("[cluster]\nnats_urls = [\"nats://n:4222\"]\nrelay_name = \"{name}\"\n"),
                "c.toml",
            )
            .unwrap()
        };
        let mut renamed = with("b");
        assert_eq!(keep_restart_only(&with("a"), &mut renamed), ["cluster"]);
        assert_eq!(renamed, with("a"));
        assert_eq!(
            old.changed_keys(&new),
            [
                "limits.handshake_timeout_ms",
                "limits.max_connections_per_ip",
                "limits.queue_capacity",
                "server.shutdown_grace_ms"
            ]
        );
    }
}
