//! The `[upstream]` section of `manta serve --config <file>` (see docs/upstream.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A value that must never reach a log line or an error message.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Self(s)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

/// The whole configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub upstream: UpstreamConfig,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Registries (host[:port]) Manta may fetch from; empty means any.
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default = "default_tag_ttl")]
    pub tag_ttl_secs: u64,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Name prefix → registry base URL (`http://127.0.0.1:5055`).
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
    /// Per-registry settings, keyed by host[:port].
    #[serde(default)]
    pub registries: BTreeMap<String, RegistryConfig>,
}

fn default_tag_ttl() -> u64 {
    300
}

fn default_timeout() -> u64 {
    30
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            tag_ttl_secs: default_tag_ttl(),
            timeout_secs: default_timeout(),
            aliases: BTreeMap::new(),
            registries: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    pub username: Option<String>,
    pub username_file: Option<PathBuf>,
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
    /// Plain HTTP; defaults to true for loopback hosts.
    pub plain_http: Option<bool>,
    /// HTTPS without certificate verification.
    #[serde(default)]
    pub insecure: bool,
    /// An extra CA certificate (PEM) for this registry.
    pub ca_file: Option<PathBuf>,
}

/// Credentials, read when needed (so a mounted Secret can rotate).
#[derive(Clone, Debug)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

fn read_trimmed(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
        .map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })
}

impl RegistryConfig {
    pub fn credentials(&self) -> Result<Option<Credentials>, ConfigError> {
        let username = match (&self.username, &self.username_file) {
            (Some(u), _) => Some(u.clone()),
            (None, Some(f)) => Some(read_trimmed(f)?),
            (None, None) => None,
        };
        let password = match (&self.password, &self.password_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(f)) => Some(Secret(read_trimmed(f)?)),
            (None, None) => None,
        };
        Ok(match (username, password) {
            (Some(username), Some(password)) => Some(Credentials { username, password }),
            _ => None,
        })
    }
}

impl FileConfig {
    /// Read and validate a TOML file; errors name the file and the field.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: FileConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let u = &self.upstream;
        for (alias, url) in &u.aliases {
            if !crate::names::valid_name(alias) || alias.contains('/') {
                return Err(ConfigError::Invalid {
                    field: format!("upstream.aliases.{alias}"),
                    message: "an alias must be one repository-name component".into(),
                });
            }
            super::BaseUrl::parse(url).map_err(|message| ConfigError::Invalid {
                field: format!("upstream.aliases.{alias}"),
                message,
            })?;
        }
        for (host, r) in &u.registries {
            if !super::valid_host(host) {
                return Err(ConfigError::Invalid {
                    field: format!("upstream.registries.\"{host}\""),
                    message: "not a host[:port]".into(),
                });
            }
            let field = |f: &str| format!("upstream.registries.\"{host}\".{f}");
            if r.username.is_some() && r.username_file.is_some() {
                return Err(ConfigError::Invalid {
                    field: field("username"),
                    message: "give username or username_file, not both".into(),
                });
            }
            if r.password.is_some() && r.password_file.is_some() {
                return Err(ConfigError::Invalid {
                    field: field("password"),
                    message: "give password or password_file, not both".into(),
                });
            }
            if let Some(ca) = &r.ca_file {
                std::fs::metadata(ca).map_err(|e| ConfigError::Invalid {
                    field: field("ca_file"),
                    message: e.to_string(),
                })?;
            }
        }
        for h in &u.allow {
            if !super::valid_host(h) {
                return Err(ConfigError::Invalid {
                    field: "upstream.allow".into(),
                    message: format!("{h:?} is not a host[:port]"),
                });
            }
        }
        if u.timeout_secs == 0 {
            return Err(ConfigError::Invalid {
                field: "upstream.timeout_secs".into(),
                message: "must be at least 1".into(),
            });
        }
        Ok(())
    }
}
