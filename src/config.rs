//! Loading `relay.toml`: the file's text and this process's environment, handed to the core's
//! [`RelayConfig::load`], the one loader both runtimes share (the Worker's build script runs it on
//! the file, and the Worker lays its `[vars]` over the result with the same override code).
//!
//! Overrides are `GSIO_RELAY_<SECTION>__<KEY>` variables (see [`ENV_PREFIX`]). Every error names
//! where the bad value came from: the file (with the key and line) or the variable.

use std::path::{Path, PathBuf};

use gsio_relay_core::auth::Secret;
use gsio_relay_core::RelayConfig;

pub use gsio_relay_core::config::ENV_PREFIX;

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {}: not found", .0.display())]
    Missing(PathBuf),
    #[error("config file {}: {source}", .path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file or an override variable is wrong; the message names which, and the key.
    #[error(transparent)]
    Invalid(#[from] gsio_relay_core::config::ConfigError),
    /// The token secret or NATS credentials that `key` names cannot be read or are unusable.
    /// Never shows the secret.
    #[error("config file {}: key `{key}`: {message}", .path.display())]
    Secret {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

/// Reads and validates the configuration at `path` (which must exist), with the overrides from
/// this process's environment.
pub fn load(path: &Path) -> Result<RelayConfig, ConfigError> {
    if !path.is_file() {
        return Err(ConfigError::Missing(path.to_owned()));
    }
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Unreadable {
        path: path.to_owned(),
        source,
    })?;
    // Names or values that are not Unicode cannot be overrides; they are skipped.
    let vars = std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)));
    let mut config = RelayConfig::load(&text, &path.display().to_string(), vars)?;
    config.auth.token_secret = token_secret(&config, path)?;
    if let Some(file) = config
        .cluster
        .as_mut()
        .and_then(|c| c.credentials_file.as_mut())
    {
        // Relative to relay.toml, like the token secret's file; checked now, so that a typo
        // stops the relay at start with the key named instead of leaving it without NATS.
        let full = path.parent().unwrap_or(Path::new(".")).join(&*file);
        if let Err(error) = std::fs::metadata(&full) {
            return Err(ConfigError::Secret {
                path: path.to_owned(),
                key: "cluster.credentials_file",
                message: format!("cannot read {}: {error}", full.display()),
            });
        }
        *file = full.display().to_string();
    }
    Ok(config)
}

/// The tokens' secret, from the variable or file `[auth]` names (when a mode takes tokens).
fn token_secret(config: &RelayConfig, path: &Path) -> Result<Option<Secret>, ConfigError> {
    let auth = &config.auth;
    let fail = |key, message| ConfigError::Secret {
        path: path.to_owned(),
        key,
        message,
    };
    let (key, bytes) = if let Some(name) = &auth.token_secret_env {
        let value = std::env::var_os(name)
            .ok_or_else(|| fail("auth.token_secret_env", format!("${name} is not set")))?;
        ("auth.token_secret_env", value.into_encoded_bytes())
    } else if let Some(file) = &auth.token_secret_file {
        // Relative to relay.toml, like a path an operator writes next to it.
        let file = path.parent().unwrap_or(Path::new(".")).join(file);
        let bytes = std::fs::read(&file).map_err(|error| {
            fail(
                "auth.token_secret_file",
                format!("cannot read {}: {error}", file.display()),
            )
        })?;
        ("auth.token_secret_file", bytes)
    } else {
        return Ok(None);
    };
    Secret::new(&bytes)
        .map(Some)
        .map_err(|message| fail(key, message))
}

#[cfg(test)]
// figment::Jail's closures return figment's own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;
    use gsio_relay_core::Mode;

    #[test]
    fn env_overrides_the_file_and_is_named_in_errors() {
        Jail::expect_with(|jail| {
            jail.create_file("relay.toml", "[routing]\ndefault = \"broadcast\"\n")?;
            jail.set_env("GSIO_RELAY_ROUTING__DEFAULT", "echo");
            jail.set_env("GSIO_RELAY_LIMITS__QUEUE_CAPACITY", "9");
            // Other tools' variables, and the config path's own, are no overrides.
            jail.set_env("RELAY_PROJECT_DIR", "/elsewhere");
            jail.set_env("GSIO_RELAY_CONFIG", "relay.toml");
            let config = load(Path::new("relay.toml")).map_err(|e| e.to_string())?;
            assert_eq!(config.routing.default, Mode::Echo);
            assert_eq!(config.limits.queue_capacity, 9);

            jail.set_env("GSIO_RELAY_ROUTING__DEFAULT", "shout");
            let err = load(Path::new("relay.toml")).unwrap_err().to_string();
            assert!(err.contains("GSIO_RELAY_ROUTING__DEFAULT"), "{err}");
            assert!(err.contains("routing.default"), "{err}");
            assert!(err.contains("echo") && err.contains("directed"), "{err}");

            jail.set_env("GSIO_RELAY_ROUTING__DEFAULT", "echo");
            jail.set_env("GSIO_RELAY_LIMITS__QUEUE_CAPACITY", "0");
            let err = load(Path::new("relay.toml")).unwrap_err().to_string();
            assert!(err.contains("GSIO_RELAY_LIMITS__QUEUE_CAPACITY"), "{err}");
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
                err.contains("bad.toml") && err.contains("line 3") && err.contains("default"),
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

    #[test]
    fn the_token_secret_comes_from_the_variable_or_the_file() {
        const SECRET: &str = "a-secret-of-at-least-32-bytes-0123";
        Jail::expect_with(|jail| {
            jail.create_file(
                "env.toml",
                "[auth]\nmode = \"token\"\ntoken_secret_env = \"MY_TOKEN_SECRET\"\n",
            )?;
            jail.set_env("MY_TOKEN_SECRET", SECRET);
            let config = load(Path::new("env.toml")).map_err(|e| e.to_string())?;
            assert_eq!(
                config.auth.token_secret,
                Some(Secret::new(SECRET.as_bytes()).unwrap())
            );
            // Never printed, not even by Debug.
            assert!(!format!("{config:?}").contains(SECRET));

            // From a file beside relay.toml; its trailing newline is not part of it.
            jail.create_dir("secrets")?;
            jail.create_file("secrets/key", &format!("{SECRET}\n"))?;
            jail.create_file(
                "file.toml",
                "[auth]\nmode = \"token\"\ntoken_secret_file = \"secrets/key\"\n",
            )?;
            let config = load(Path::new("file.toml")).map_err(|e| e.to_string())?;
            assert_eq!(
                config.auth.token_secret,
                Some(Secret::new(SECRET.as_bytes()).unwrap())
            );

            // Unset, unreadable or short: the error names the file, the key and the source.
            jail.set_env("MY_TOKEN_SECRET", "short");
            let err = load(Path::new("env.toml")).unwrap_err().to_string();
            assert!(
                err.contains("env.toml")
                    && err.contains("auth.token_secret_env")
                    && err.contains("at least 32"),
                "{err}"
            );
            assert!(!err.contains("short"), "{err}");
            jail.create_file(
                "gone.toml",
                "[auth]\nmode = \"token\"\ntoken_secret_file = \"nowhere\"\n",
            )?;
            let err = load(Path::new("gone.toml")).unwrap_err().to_string();
            assert!(
                err.contains("auth.token_secret_file") && err.contains("nowhere"),
                "{err}"
            );
            // No token mode: no secret needed, none read.
            jail.create_file("open.toml", "[auth]\nmode = \"open\"\n")?;
            assert_eq!(
                load(Path::new("open.toml"))
                    .map_err(|e| e.to_string())?
                    .auth
                    .token_secret,
                None
            );
            Ok(())
        });
    }
}
