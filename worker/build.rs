//! Parses and validates `relay.toml` when the Worker is built, with the native relay's loader
//! (`gsio-relay-core` with its `parse-toml` feature): a bad file fails the build with the error
//! the native relay would print (file, key, line). The result is written to
//! `$OUT_DIR/relay-config.json`, which the Worker embeds and reads with serde_json (which it
//! carries anyway, for envelopes), so its wasm holds no TOML parser.
//!
//! The file is `GSIO_RELAY_CONFIG` when set (`scripts/build-worker.sh` always sets it, to an
//! absolute path: the repository's relay.toml unless told otherwise), else the repository's
//! `relay.toml`. `scripts/build-worker.sh` lists that file among its inputs, so an edit of it
//! rebuilds the Worker; the `rerun-if-*` lines below make cargo rerun this script then.

use std::path::PathBuf;
use std::{env, fs, process};

use gsio_relay_core::RelayConfig;

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    println!("cargo:rerun-if-env-changed=GSIO_RELAY_CONFIG");
    // Named in errors as given: the variable's path, or plain `relay.toml`.
    let (path, name) = match env::var_os("GSIO_RELAY_CONFIG") {
        Some(path) => {
            let name = PathBuf::from(&path).display().to_string();
            (manifest.join("..").join(path), name)
        }
        None => (manifest.join("../relay.toml"), "relay.toml".to_owned()),
    };
    println!("cargo:rerun-if-changed={}", path.display());
    let text = fs::read_to_string(&path)
        .unwrap_or_else(|error| fail(&format!("cannot read {name}: {error}")));
    let config =
        RelayConfig::from_toml_str(&text, &name).unwrap_or_else(|error| fail(&error.to_string()));
    let json = serde_json::to_string(&config).expect("a RelayConfig serializes to JSON");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets it"));
    fs::write(out.join("relay-config.json"), json)
        .unwrap_or_else(|error| fail(&format!("cannot write relay-config.json: {error}")));
}

/// Stops the build with `message` (cargo shows a failed build script's output).
fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    process::exit(1);
}
