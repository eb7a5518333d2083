//! relay.toml: the shipped file, the fixture folders, and what the binary does with a bad one.

mod common;

use std::path::Path;
use std::process::Command;

use common::binary::{RunningBinary, BIN};
use common::{repo_path, Peer, WsPeer};
use gsio_relay::config;
use gsio_relay_core::Mode;

#[test]
fn the_shipped_relay_toml_is_valid_and_documents_every_mode() {
    let config = config::load(&repo_path("relay.toml")).unwrap();
    assert_eq!(config.server.ws_listen.to_string(), "127.0.0.1:8787");
    assert_eq!(config.server.grpc_listen.to_string(), "127.0.0.1:50051");
    assert_eq!(config.server.admin_listen.to_string(), "127.0.0.1:9090");
    // The README: the shipped file's default is auto (the schema's is broadcast).
    assert_eq!(config.routing.default, Mode::Auto);
    assert_eq!(config.limits.queue_capacity, 4096);
    // Every `[limits]` key is in the file with its default.
    assert_eq!(config.limits, gsio_relay_core::config::Limits::default());
    let text = std::fs::read_to_string(repo_path("relay.toml")).unwrap();
    let limits = toml::Table::try_from(&config.limits).unwrap();
    for key in limits.keys() {
        assert!(
            text.contains(&format!("\n{key} = ")),
            "relay.toml does not document {key}"
        );
    }
    let modes: Vec<Mode> = config.routing.rules.values().copied().collect();
    for mode in [Mode::Echo, Mode::Broadcast, Mode::Directed] {
        assert!(modes.contains(&mode), "no rule uses {mode}");
    }
    // The Worker parses the same file with the core's own parser: it must agree.
    let text = std::fs::read_to_string(repo_path("relay.toml")).unwrap();
    let core = gsio_relay_core::RelayConfig::from_toml_str(&text, "relay.toml").unwrap();
    assert_eq!(core, config);
}

/// The README's table of defaults, as the literal numbers it prints (not the code's own
/// `Default`): what an empty relay.toml gives through the loader the binary uses.
#[test]
fn an_empty_file_gives_the_documented_defaults() {
    let file = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("empty-relay-{}.toml", std::process::id()));
    std::fs::write(&file, "").unwrap();
    let config = config::load(&file).unwrap();
    let _ = std::fs::remove_file(&file);
    assert_eq!(config.server.ws_listen.to_string(), "127.0.0.1:8787");
    assert_eq!(config.server.grpc_listen.to_string(), "127.0.0.1:50051");
    assert_eq!(config.server.admin_listen.to_string(), "127.0.0.1:9090");
    assert_eq!(config.server.max_connections, 20000);
    assert_eq!(config.server.shutdown_grace_ms, 5000);
    assert_eq!(config.limits.max_message_bytes, 1048576);
    assert_eq!(config.limits.queue_capacity, 4096);
    assert_eq!(config.limits.max_connections_per_ip, 1000);
    assert_eq!(config.limits.new_connections_per_ip_per_second, 100);
    assert_eq!(config.limits.new_connections_per_ip_burst, 500);
    assert_eq!(config.limits.handshake_timeout_ms, 10000);
    assert_eq!(config.limits.ping_interval_ms, 20000);
    assert_eq!(config.limits.pong_timeout_ms, 10000);
    assert_eq!(config.limits.grpc_max_concurrent_streams, 1000);
    assert_eq!(config.limits.grpc_max_header_list_bytes, 16384);
    assert_eq!(config.limits.anonymous_message_bytes, 65536);
    assert_eq!(config.limits.partial_messages_budget_bytes, 67108864);
    assert_eq!(config.limits.messages_per_second, 10000);
    assert_eq!(config.limits.message_burst, 20000);
    assert_eq!(config.limits.bytes_per_second, 67108864);
    assert_eq!(config.limits.byte_burst, 134217728);
    assert_eq!(config.limits.rate_limited_max, 1000);
    assert_eq!(config.limits.identify_timeout_ms, 10000);
    assert_eq!(config.auth.mode, gsio_relay_core::config::AuthMode::Open);
    assert!(config.auth.prefixes.is_empty() && config.auth.keys.is_empty());
    assert_eq!(config.auth.audience, "gsio-relay");
    assert_eq!(config.auth.token_secret_env, None);
    assert_eq!(config.auth.token_secret_file, None);
    assert_eq!(config.auth.token_leeway_s, 30);
    assert!(config.discovery.announce_peers);
    assert_eq!(config.discovery.welcome_peers_max, 100);
    assert_eq!(config.discovery.announce_window_ms, 50);
    assert_eq!(config.routing.default, Mode::Broadcast);
    assert!(config.routing.rules.is_empty());
}

fn toml_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn valid_fixtures_load() {
    let files = toml_files(&repo_path("tests/fixtures/config/valid"));
    assert!(files.len() >= 3, "the valid fixtures are gone");
    for file in files {
        config::load(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    }
}

/// Each invalid fixture starts with `# expect: a | b | c`: the error must contain each part.
#[test]
fn invalid_fixtures_fail_naming_file_and_key() {
    let files = toml_files(&repo_path("tests/fixtures/config/invalid"));
    assert!(files.len() >= 10, "the invalid fixtures are gone");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} lacks its # expect: line", file.display()));
        let error = match config::load(&file) {
            Ok(_) => panic!("{} loaded", file.display()),
            Err(e) => e.to_string(),
        };
        for part in expect.split(" | ") {
            assert!(
                error.contains(part),
                "{}: {error:?} lacks {part:?}",
                file.display()
            );
        }
    }
}

#[test]
fn the_binary_exits_non_zero_naming_the_problem() {
    let cases = [
        (
            "tests/fixtures/config/invalid/syntax-error.toml",
            &["syntax-error.toml", "line 4"][..],
        ),
        (
            "tests/fixtures/config/invalid/unknown-mode.toml",
            &["unknown-mode.toml", "routing.default", "directed"],
        ),
        (
            "tests/fixtures/config/absent.toml",
            &["absent.toml", "not found"],
        ),
    ];
    for (file, wanted) in cases {
        let output = Command::new(BIN)
            .args(["--config", file])
            .current_dir(repo_path(""))
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{file}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        for w in wanted {
            assert!(stderr.contains(w), "{file}: {stderr}");
        }
    }
    // An environment override is named as the source of its bad value.
    let output = Command::new(BIN)
        .args(["--config", "relay.toml"])
        .current_dir(repo_path(""))
        .env("GSIO_RELAY_ROUTING__DEFAULT", "sideways")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("GSIO_RELAY_ROUTING__DEFAULT") && stderr.contains("sideways"),
        "{stderr}"
    );
}

/// The real binary: starts on a config file, serves a WebSocket peer, and on SIGTERM tells it
/// and exits 0. Ports come from the environment (GSIO_RELAY_SERVER__*), which also tests overrides.
#[tokio::test]
async fn the_binary_serves_and_stops_cleanly_on_sigterm() {
    // The file comes from GSIO_RELAY_CONFIG (clap's `env`), and the working directory has no
    // relay.toml: were the variable ignored (or read as an override), the relay would not start.
    let relay = RunningBinary::start(
        Command::new(BIN)
            .env("GSIO_RELAY_CONFIG", repo_path("relay.toml"))
            .current_dir(env!("CARGO_TARGET_TMPDIR"))
            .env("GSIO_RELAY_SERVER__WS_LISTEN", "127.0.0.1:0")
            // Another tool's variable with a similar prefix is not an override.
            .env("RELAY_PROJECT_DIR", "/elsewhere")
            .env("GSIO_RELAY_SERVER__GRPC_LISTEN", "127.0.0.1:0")
            .env("GSIO_RELAY_SERVER__ADMIN_LISTEN", "127.0.0.1:0")
            // Variable names are case-insensitive: this one in lower case still applies.
            .env("gsio_relay_routing__default", "echo"),
    );
    let mut peer = WsPeer::connect(&format!("{}/?node_id=cli", relay.url)).await;
    peer.expect_welcome("cli").await;
    // gsio_relay_routing__default=echo applies to types without a rule (the file says auto,
    // which would send this unaddressed envelope to the other peers: there are none).
    peer.send("Unruled", "cli", "", "1").await;
    assert_eq!(peer.recv().await.message_type, "Unruled");

    let pid = relay.child.id();
    let stopping = std::thread::spawn(move || relay.terminate());
    let (code, _) = peer.expect_close().await;
    assert_eq!(code, 1001, "pid {pid}");
    let (status, lines) = stopping.join().unwrap();
    assert!(status.success(), "exit {status:?}: {lines:#?}");
    assert!(
        lines.iter().any(|l| l.contains("relay stopped")),
        "{lines:#?}"
    );
}

/// README: `cargo run --release` runs "the relay on ./relay.toml": with no `--config` and no
/// `GSIO_RELAY_CONFIG`, the binary reads `relay.toml` in its working directory (here one whose
/// default mode is echo and whose ports are ephemeral).
#[tokio::test]
async fn the_binary_reads_relay_toml_in_its_working_directory_by_default() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("default-config");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("relay.toml"),
        "[server]\nws_listen = \"127.0.0.1:0\"\ngrpc_listen = \"127.0.0.1:0\"\n\
         admin_listen = \"127.0.0.1:0\"\n\
         [routing]\ndefault = \"echo\"\n",
    )
    .unwrap();
    let mut command = Command::new(BIN);
    command.current_dir(&dir).env_remove("GSIO_RELAY_CONFIG");
    for (name, _) in std::env::vars() {
        if name.to_ascii_uppercase().starts_with("GSIO_RELAY_") {
            command.env_remove(name);
        }
    }
    let relay = RunningBinary::start(&mut command);
    let mut peer = WsPeer::connect(&format!("{}/?node_id=cli", relay.url)).await;
    peer.expect_welcome("cli").await;
    peer.send("Unruled", "cli", "", "1").await;
    assert_eq!(peer.recv().await.message_type, "Unruled");
    let (status, lines) = relay.terminate();
    assert!(status.success(), "exit {status:?}: {lines:#?}");
}

/// README: "The same snippet works against the Worker under `wrangler dev`, which also listens
/// on 8787" (loopback): the `[dev]` section of the root wrangler.toml.
#[test]
fn wrangler_dev_listens_on_the_relays_websocket_address() {
    let text = std::fs::read_to_string(repo_path("wrangler.toml")).unwrap();
    let wrangler: toml::Table = toml::from_str(&text).unwrap();
    let dev = wrangler["dev"].as_table().expect("wrangler.toml has [dev]");
    let address = format!("{}:{}", dev["ip"].as_str().unwrap(), dev["port"]);
    assert_eq!(address, "127.0.0.1:8787");
    let shipped = config::load(&repo_path("relay.toml")).unwrap();
    assert_eq!(shipped.server.ws_listen.to_string(), address);
}

/// README "Logs": `[log] format = "json"` makes every log line one JSON object, with the fields
/// of the text line for the same event (each at the top level, beside `timestamp`, `level`,
/// `target` and `message`). Both formats run the same events on the real binary: start, a peer
/// joining by its first envelope, SIGTERM.
#[tokio::test]
async fn json_log_lines_have_the_fields_of_the_text_lines() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("log-format-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut logs = Vec::new();
    for format in ["text", "json"] {
        let path = dir.join(format!("{format}.toml"));
        std::fs::write(
            &path,
            format!(
                "[server]\nws_listen = \"127.0.0.1:0\"\ngrpc_listen = \"127.0.0.1:0\"\n\
                 admin_listen = \"127.0.0.1:0\"\n[log]\nformat = \"{format}\"\n"
            ),
        )
        .unwrap();
        let mut command = Command::new(BIN);
        command.arg("--config").arg(&path);
        for (name, _) in std::env::vars() {
            if name.to_ascii_uppercase().starts_with("GSIO_RELAY_") {
                command.env_remove(name);
            }
        }
        let relay = RunningBinary::start(&mut command);
        let mut peer = WsPeer::connect(&relay.url).await;
        peer.send("Ping", "logger", "", "1").await;
        peer.expect_welcome("logger").await;
        let (status, lines) = relay.terminate();
        assert!(status.success(), "{lines:#?}");
        logs.push(lines);
    }
    let (text, json) = (&logs[0], &logs[1]);
    let objects: Vec<serde_json::Map<String, serde_json::Value>> = json
        .iter()
        .map(|line| match serde_json::from_str(line) {
            Ok(serde_json::Value::Object(object)) => object,
            _ => panic!("not a JSON object: {line}"),
        })
        .collect();
    for (message, fields) in [
        ("gsio-relay listening", &["websocket", "grpc", "admin"][..]),
        ("peer joined", &["conn", "peer"]),
        (
            "relay stopped",
            &[
                "connections",
                "messages_routed",
                "deliveries",
                "errors_sent",
                "slow_consumer_disconnects",
            ],
        ),
    ] {
        let object = objects
            .iter()
            .find(|o| o["message"] == message)
            .unwrap_or_else(|| panic!("no JSON line for {message:?}: {json:#?}"));
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.retain(|k| !["timestamp", "level", "target", "message"].contains(k));
        keys.sort_unstable();
        let mut expected = fields.to_vec();
        expected.sort_unstable();
        assert_eq!(keys, expected, "{object:?}");
        assert_eq!(object["level"], "INFO", "{object:?}");
        assert!(object["target"].as_str().unwrap().starts_with("gsio_relay"));
        assert!(object["timestamp"].as_str().unwrap().starts_with("20"));
        let line = text
            .iter()
            .find(|l| l.contains(message))
            .unwrap_or_else(|| panic!("no text line for {message:?}: {text:#?}"));
        for field in fields {
            assert!(line.contains(&format!(" {field}=")), "{field}: {line}");
        }
    }
}

/// relay.toml's commented `[cluster]` example, uncommented, is valid, and each key it shows
/// with a value is the default (but the ones a relay must give: the URL and its name, and the
/// optional credentials file).
#[test]
fn the_shipped_cluster_example_is_valid_and_shows_the_defaults() {
    let text = std::fs::read_to_string(repo_path("relay.toml")).unwrap();
    let example = text
        .split("\n# [cluster]\n")
        .nth(2)
        .expect("relay.toml documents [cluster] as a commented example");
    let keys: Vec<&str> = example
        .lines()
        .filter_map(|line| line.strip_prefix("# "))
        .filter(|line| line.contains(" = "))
        .collect();
    let shown = gsio_relay_core::RelayConfig::from_toml_str(
        &format!("[cluster]\n{}\n", keys.join("\n")),
        "relay.toml",
    )
    .unwrap()
    .cluster
    .unwrap();
    let minimal = gsio_relay_core::RelayConfig::from_toml_str(
        "[cluster]\nnats_urls = [\"nats://127.0.0.1:4222\"]\nrelay_name = \"relay-1\"\n",
        "minimal.toml",
    )
    .unwrap()
    .cluster
    .unwrap();
    assert_eq!(shown.credentials_file.as_deref(), Some("nats.creds"));
    assert_eq!(
        gsio_relay_core::config::Cluster {
            credentials_file: None,
            ..shown
        },
        minimal
    );
    // Each key of the section is in the example.
    for key in toml::Table::try_from(&minimal).unwrap().keys() {
        assert!(
            keys.iter().any(|k| k.starts_with(&format!("{key} = "))),
            "no {key}"
        );
    }
    assert!(keys.iter().any(|k| k.starts_with("credentials_file = ")));
    // Absent, the relay is on its own.
    assert_eq!(
        config::load(&repo_path("relay.toml")).unwrap().cluster,
        None
    );
}
