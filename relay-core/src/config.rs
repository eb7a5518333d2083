//! The `relay.toml` schema: parsed, then validated into a [`RelayConfig`] that can only hold a
//! usable configuration.
//!
//! Unknown keys are rejected everywhere (`deny_unknown_fields`), so a typo never silently falls
//! back to a default. Every section and key has a default, so an empty file is a valid config.
//! The native server layers the file with `RELAY_`-prefixed environment variables (figment); the
//! Worker embeds the file at build time. Both end in [`RelayConfig::validate`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// How envelopes of one `message_type` travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Back to the sender only.
    Echo,
    /// To every other connected peer, on every front; never to the sender.
    Broadcast,
    /// To the one peer named by `recipient_id`.
    Directed,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Echo => "echo",
            Mode::Broadcast => "broadcast",
            Mode::Directed => "directed",
        })
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub discovery: Discovery,
    #[serde(default)]
    pub routing: Routing,
}

/// Where the native server listens, and how it treats connections. The Worker ignores this
/// section (Cloudflare decides where it listens).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// WebSocket front; 8787 is also the port of `wrangler dev`, so one browser client works
    /// against the native relay and the local Worker alike.
    #[serde(default = "default_ws_listen")]
    pub ws_listen: SocketAddr,
    /// gRPC front (RelayService, health, reflection).
    #[serde(default = "default_grpc_listen")]
    pub grpc_listen: SocketAddr,
    /// Connections (both fronts together) held at once; a connection past it waits in the
    /// kernel's accept queue until another one ends.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// How long shutdown waits for connections to drain their queues before closing them.
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            ws_listen: default_ws_listen(),
            grpc_listen: default_grpc_listen(),
            max_connections: default_max_connections(),
            shutdown_grace_ms: default_shutdown_grace_ms(),
        }
    }
}

/// Limits announced to every peer in its `Welcome`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest envelope accepted, in bytes of its JSON text (WebSocket) or protobuf (gRPC).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Messages waiting to be written to one peer; when full, that peer is disconnected as a
    /// slow consumer (see the README's "Slow consumers").
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
}

impl Limits {
    /// The largest frame a front reads at all. Above `max_message_bytes` but within this, an
    /// envelope is refused with `message_too_large` and the connection stays; above this, the
    /// relay will not buffer the frame and the connection ends
    /// ([`crate::RelayError::FrameTooLarge`]).
    pub fn hard_frame_bytes(&self) -> usize {
        let limit = self.max_message_bytes;
        limit.saturating_mul(2).max(limit + 64 * 1024)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: default_max_message_bytes(),
            queue_capacity: default_queue_capacity(),
        }
    }
}

/// What peers are told about each other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Discovery {
    /// Send `PeerJoined` / `PeerLeft` to the other peers when a peer arrives or leaves.
    #[serde(default = "default_true")]
    pub announce_peers: bool,
    /// At most this many ids in a `Welcome`'s `peers` list (`peer_count` is always exact), so a
    /// join into a large network stays cheap: a long Welcome costs time to write and leaves the
    /// connection's write buffer grown for as long as it lives.
    #[serde(default = "default_welcome_peers_max")]
    pub welcome_peers_max: usize,
}

impl Default for Discovery {
    fn default() -> Self {
        Discovery {
            announce_peers: true,
            welcome_peers_max: default_welcome_peers_max(),
        }
    }
}

/// The routing table: one mode per `message_type`, and a default for the rest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Routing {
    #[serde(default = "default_mode")]
    pub default: Mode,
    /// `message_type` → mode. Keys are matched exactly (case-sensitive).
    #[serde(default)]
    pub rules: BTreeMap<String, Mode>,
}

impl Default for Routing {
    fn default() -> Self {
        Routing {
            default: default_mode(),
            rules: BTreeMap::new(),
        }
    }
}

impl Routing {
    /// The mode for envelopes of `message_type`.
    pub fn mode_for(&self, message_type: &str) -> Mode {
        self.rules
            .get(message_type)
            .copied()
            .unwrap_or(self.default)
    }
}

fn default_ws_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8787))
}
fn default_grpc_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 50051))
}
fn default_max_connections() -> usize {
    20_000
}
fn default_shutdown_grace_ms() -> u64 {
    5_000
}
fn default_max_message_bytes() -> usize {
    1024 * 1024
}
fn default_queue_capacity() -> usize {
    4096
}
fn default_true() -> bool {
    true
}
fn default_welcome_peers_max() -> usize {
    100
}
fn default_mode() -> Mode {
    Mode::Broadcast
}

/// A configuration that parsed but cannot be used; `key` is the dotted path of the culprit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct InvalidConfig {
    pub key: String,
    pub message: String,
}

/// Prefix of the variables that override `relay.toml` keys; `__` separates the section and key.
pub const ENV_PREFIX: &str = "RELAY_";

fn set_path(table: &mut toml::Table, keys: &[&str], value: toml::Value) -> Result<(), String> {
    let (last, sections) = keys.split_last().ok_or("no key")?;
    let mut at = table;
    for section in sections {
        let entry = at
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        at = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{section}` is not a section"))?;
    }
    at.insert(last.to_string(), value);
    Ok(())
}

/// The smallest `limits.max_message_bytes`: room for an envelope with a modest payload.
pub const MIN_MESSAGE_BYTES: usize = 256;
/// The largest `limits.max_message_bytes`.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// The largest `limits.queue_capacity`.
pub const MAX_QUEUE_CAPACITY: usize = 1_000_000;

impl RelayConfig {
    /// Parses TOML text (the Worker's embedded `relay.toml`) and validates it. `source` names the
    /// file in errors.
    pub fn from_toml_str(text: &str, source: &str) -> Result<RelayConfig, String> {
        let config: RelayConfig = toml::from_str(text).map_err(|e| format!("{source}: {e}"))?;
        config.validate().map_err(|e| format!("{source}: {e}"))
    }

    /// Parses TOML text, with `RELAY_<SECTION>__<KEY>` variables laid over it (the Worker's
    /// `[vars]`, the same names the native relay takes from its environment), and validates
    /// the result. A variable's value is read as a TOML value (`8192`, `true`, `"echo"`), or
    /// else as a plain string (`echo`). Errors name the file or the variable.
    pub fn from_toml_with_vars<'v>(
        text: &str,
        source: &str,
        vars: impl IntoIterator<Item = (&'v str, &'v str)>,
    ) -> Result<RelayConfig, String> {
        let mut table: toml::Table = text.parse().map_err(|e| format!("{source}: {e}"))?;
        let mut named = Vec::new();
        for (name, value) in vars {
            let path = name
                .strip_prefix(ENV_PREFIX)
                .filter(|rest| !rest.is_empty())
                .ok_or_else(|| format!("{name}: not a {ENV_PREFIX} variable"))?
                .to_ascii_lowercase();
            let keys: Vec<&str> = path.split("__").collect();
            let value = format!("v = {value}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut parsed| parsed.remove("v"))
                .unwrap_or_else(|| toml::Value::String(value.to_owned()));
            set_path(&mut table, &keys, value).map_err(|e| format!("{name}: {e}"))?;
            named.push((keys.join("."), name));
        }
        let blame = |message: String| {
            // Blame the variable whose key the message names, else the file.
            match named.iter().find(|(key, _)| message.contains(key.as_str())) {
                Some((_, name)) => format!("{name}: {message}"),
                None => format!("{source}: {message}"),
            }
        };
        let config: RelayConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| blame(e.to_string()))?;
        config.validate().map_err(|e| blame(e.to_string()))
    }

    /// Checks what the types alone cannot; the error names the key.
    pub fn validate(self) -> Result<RelayConfig, InvalidConfig> {
        let bad = |key: &str, message: String| {
            Err(InvalidConfig {
                key: key.to_owned(),
                message,
            })
        };
        let limits = &self.limits;
        if !(MIN_MESSAGE_BYTES..=MAX_MESSAGE_BYTES).contains(&limits.max_message_bytes) {
            return bad(
                "limits.max_message_bytes",
                format!(
                    "{} is out of range; use {MIN_MESSAGE_BYTES} to {MAX_MESSAGE_BYTES}",
                    limits.max_message_bytes
                ),
            );
        }
        if !(1..=MAX_QUEUE_CAPACITY).contains(&limits.queue_capacity) {
            return bad(
                "limits.queue_capacity",
                format!(
                    "{} is out of range; use 1 to {MAX_QUEUE_CAPACITY}",
                    limits.queue_capacity
                ),
            );
        }
        if self.server.max_connections == 0 {
            return bad("server.max_connections", "must be at least 1".to_owned());
        }
        let (ws, grpc) = (self.server.ws_listen, self.server.grpc_listen);
        if ws == grpc && ws.port() != 0 {
            return bad(
                "server.grpc_listen",
                format!("{grpc} is also server.ws_listen; the two fronts need their own ports"),
            );
        }
        if let Some(bad_key) = self.routing.rules.keys().find(|k| k.trim().is_empty()) {
            return bad(
                "routing.rules",
                format!("rule key {bad_key:?} is empty; keys are message types"),
            );
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        let c = RelayConfig::from_toml_str("", "t.toml").unwrap();
        assert_eq!(c, RelayConfig::default());
        assert_eq!(c.limits.max_message_bytes, 1 << 20);
        assert_eq!(c.routing.default, Mode::Broadcast);
    }

    #[test]
    fn rules_pick_the_mode_per_type() {
        let c = RelayConfig::from_toml_str(
            "[routing]\ndefault = \"echo\"\n[routing.rules]\nLedgerSync = \"directed\"\nNodeAnnounce = \"broadcast\"\n",
            "t.toml",
        )
        .unwrap();
        let table = [
            ("LedgerSync", Mode::Directed),
            ("NodeAnnounce", Mode::Broadcast),
            ("nodeannounce", Mode::Echo),
            ("Other", Mode::Echo),
        ];
        for (ty, mode) in table {
            assert_eq!(c.routing.mode_for(ty), mode, "{ty}");
        }
    }

    #[test]
    fn vars_override_the_file_like_the_environment_does() {
        let file = "[routing]\ndefault = \"broadcast\"\n";
        let c = RelayConfig::from_toml_with_vars(
            file,
            "relay.toml",
            [
                ("RELAY_ROUTING__DEFAULT", "echo"),
                ("RELAY_LIMITS__MAX_MESSAGE_BYTES", "4096"),
                ("RELAY_DISCOVERY__ANNOUNCE_PEERS", "false"),
            ],
        )
        .unwrap();
        assert_eq!(c.routing.default, Mode::Echo);
        assert_eq!(c.limits.max_message_bytes, 4096);
        assert!(!c.discovery.announce_peers);

        let cases: &[(&str, &str, &[&str])] = &[
            (
                "RELAY_ROUTING__DEFAULT",
                "sideways",
                &["RELAY_ROUTING__DEFAULT", "sideways", "directed"],
            ),
            (
                "RELAY_LIMITS__QUEUE_CAPACITY",
                "0",
                &["RELAY_LIMITS__QUEUE_CAPACITY", "limits.queue_capacity"],
            ),
            ("RELAY_LIMITS__TYPO", "1", &["typo"]),
            ("ROUTING__DEFAULT", "echo", &["ROUTING__DEFAULT", "RELAY_"]),
        ];
        for (name, value, wanted) in cases {
            let err = RelayConfig::from_toml_with_vars(file, "relay.toml", [(*name, *value)])
                .unwrap_err();
            for w in *wanted {
                assert!(err.contains(w), "{name}={value}: {err:?} lacks {w:?}");
            }
        }
    }

    #[test]
    fn errors_name_file_key_and_line() {
        let cases: &[(&str, &[&str])] = &[
            (
                "[routing]\ndefault = \"shout\"\n",
                &["t.toml", "line 2", "echo", "broadcast", "directed"],
            ),
            (
                "[routing]\ndefualt = \"echo\"\n",
                &["t.toml", "line 2", "defualt"],
            ),
            (
                "[limits]\nmax_message_bytes = \"big\"\n",
                &["t.toml", "line 2", "max_message_bytes"],
            ),
            ("[limits\n", &["t.toml", "line 1"]),
            (
                "[limits]\nmax_message_bytes = 10\n",
                &["t.toml", "limits.max_message_bytes", "out of range"],
            ),
            (
                "[limits]\nqueue_capacity = 0\n",
                &["t.toml", "limits.queue_capacity"],
            ),
            (
                "[server]\nmax_connections = 0\n",
                &["t.toml", "server.max_connections"],
            ),
            (
                "[server]\nws_listen = \"127.0.0.1:9\"\ngrpc_listen = \"127.0.0.1:9\"\n",
                &["server.grpc_listen"],
            ),
            (
                "[server]\nws_listen = \"localhost\"\n",
                &["t.toml", "ws_listen", "line 2"],
            ),
            ("[routing.rules]\n\"\" = \"echo\"\n", &["routing.rules"]),
        ];
        for (text, wanted) in cases {
            let err = RelayConfig::from_toml_str(text, "t.toml").unwrap_err();
            for w in *wanted {
                assert!(err.contains(w), "{text:?}: {err:?} lacks {w:?}");
            }
        }
    }
}
