//! Loading `relay.toml`: the file, then `RELAY_`-prefixed environment variables over it
//! (figment), then the core's validation.
//!
//! Every error names where the bad value came from: the file (with the line, for TOML syntax
//! errors) or the environment variable, and the key.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use gsio_relay_core::RelayConfig;

/// Prefix of the environment variables that override `relay.toml`; `__` separates sections:
/// `RELAY_ROUTING__DEFAULT=echo` sets `routing.default`.
pub use gsio_relay_core::config::ENV_PREFIX;

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {}: not found", .0.display())]
    Missing(PathBuf),
    /// A syntax error, unknown key or value of the wrong type; figment's message names the key
    /// and the source (file or environment variable), and TOML syntax errors carry the line.
    #[error("{0}")]
    Invalid(String),
}

/// The layered sources, before extraction: the file, then the environment over it.
pub fn figment(path: &Path) -> Figment {
    Figment::new()
        .merge(Toml::file_exact(path))
        .merge(Env::prefixed(ENV_PREFIX).split("__"))
}

/// Reads and validates the configuration at `path` (which must exist), with environment
/// overrides.
pub fn load(path: &Path) -> Result<RelayConfig, ConfigError> {
    if !path.is_file() {
        return Err(ConfigError::Missing(path.to_owned()));
    }
    extract(&figment(path), path)
}

/// Extracts and validates a config from `figment`; `path` names the file in messages.
pub fn extract(figment: &Figment, path: &Path) -> Result<RelayConfig, ConfigError> {
    let config: RelayConfig = figment.extract().map_err(|errors| {
        let lines: Vec<String> = errors.into_iter().map(|e| describe(&e, path)).collect();
        ConfigError::Invalid(lines.join("\n"))
    })?;
    config.validate().map_err(|invalid| {
        let keys: Vec<&str> = invalid.key.split('.').collect();
        let source = source_of(figment.find_metadata(&invalid.key), &keys, path);
        ConfigError::Invalid(format!("{source}: {invalid}"))
    })
}

/// Where a value came from: the file's path, or the environment variable's name.
fn source_of(metadata: Option<&figment::Metadata>, keys: &[&str], path: &Path) -> String {
    match metadata {
        Some(metadata) => match &metadata.source {
            Some(figment::Source::File(file)) => file.display().to_string(),
            Some(other) => other.to_string(),
            // The environment is the only source without one: name the variable.
            None => format!(
                "environment variable {ENV_PREFIX}{}",
                keys.join("__").to_uppercase()
            ),
        },
        None => path.display().to_string(),
    }
}

/// One figment error as "source: key: message". figment's own Display puts the source last,
/// and omits the file for TOML syntax errors (they carry only the line), so build it here.
fn describe(error: &figment::Error, path: &Path) -> String {
    let keys: Vec<&str> = error.path.iter().map(String::as_str).collect();
    let source = source_of(error.metadata.as_ref(), &keys, path);
    let key = error.path.join(".");
    let kind = error.kind.to_string();
    if key.is_empty() {
        format!("{source}: {kind}")
    } else {
        format!("{source}: key `{key}`: {kind}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::Jail;
    use gsio_relay_core::Mode;

    #[test]
    fn env_overrides_the_file_and_is_named_in_errors() {
        Jail::expect_with(|jail| {
            jail.create_file("relay.toml", "[routing]\ndefault = \"broadcast\"\n")?;
            jail.set_env("RELAY_ROUTING__DEFAULT", "echo");
            jail.set_env("RELAY_LIMITS__QUEUE_CAPACITY", "9");
            let config = load(Path::new("relay.toml")).map_err(|e| e.to_string())?;
            assert_eq!(config.routing.default, Mode::Echo);
            assert_eq!(config.limits.queue_capacity, 9);

            jail.set_env("RELAY_ROUTING__DEFAULT", "shout");
            let err = load(Path::new("relay.toml")).unwrap_err().to_string();
            assert!(err.contains("RELAY_ROUTING__DEFAULT"), "{err}");
            assert!(err.contains("routing.default"), "{err}");
            assert!(err.contains("echo") && err.contains("directed"), "{err}");

            jail.set_env("RELAY_ROUTING__DEFAULT", "echo");
            jail.set_env("RELAY_LIMITS__QUEUE_CAPACITY", "0");
            let err = load(Path::new("relay.toml")).unwrap_err().to_string();
            assert!(err.contains("RELAY_LIMITS__QUEUE_CAPACITY"), "{err}");
            assert!(err.contains("limits.queue_capacity"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn file_errors_name_file_key_and_line() {
        Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "[routing]\n\ndefault = \"shout\"\n")?;
            let err = load(Path::new("bad.toml")).unwrap_err().to_string();
            assert!(
                err.contains("bad.toml") && err.contains("routing.default"),
                "{err}"
            );

            jail.create_file("syntax.toml", "[routing]\ndefault = \n")?;
            let err = load(Path::new("syntax.toml")).unwrap_err().to_string();
            assert!(
                err.contains("syntax.toml") && err.contains("line 2"),
                "{err}"
            );

            let err = load(Path::new("absent.toml")).unwrap_err().to_string();
            assert!(
                err.contains("absent.toml") && err.contains("not found"),
                "{err}"
            );
            Ok(())
        });
    }
}
