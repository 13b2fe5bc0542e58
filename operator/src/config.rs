//! The operator's configuration file (TOML): how to find and reach the agents, and the plugins.
//!
//! ```toml
//! registryHost = "localhost:5000"     # what status references start with
//!
//! [agents]
//! namespace = "manta-system"
//! selector = "app.kubernetes.io/name=manta-agent"
//! port = 5001                          # when the pod's container names no `cluster` port
//! tokenFile = "/var/run/manta/token"
//! timeoutSeconds = 10
//! pollSeconds = 10
//!
//! [plugins]
//! filters = ["NodeSelector", "NodeReady", "DiskAware"]
//! scores = [{ name = "CacheAware", weight = 2 }, { name = "DiskAware", weight = 1 }, { name = "Spread", weight = 1 }]
//! topologyKey = "topology.kubernetes.io/zone"
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::plugins::PluginConfig;
use crate::Error;

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// The host the nodes' runtimes pull from (`localhost:5000`): the status references start
    /// with it.
    #[serde(default = "default_registry_host")]
    pub registry_host: String,
    #[serde(default)]
    pub agents: AgentConfig,
    #[serde(default)]
    pub plugins: PluginConfig,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentConfig {
    /// The agents' namespace [default: every namespace].
    #[serde(default)]
    pub namespace: Option<String>,
    /// A label selector for the agents' pods.
    #[serde(default = "default_selector")]
    pub selector: String,
    /// The agents' cluster listener port, when their pod's container names no `cluster` port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// The shared cluster token's file [default: none; only for agents that take none].
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
    #[serde(default = "default_poll")]
    pub poll_seconds: u64,
}

fn default_registry_host() -> String {
    "localhost:5000".into()
}
fn default_selector() -> String {
    "app.kubernetes.io/name=manta-agent".into()
}
fn default_port() -> u16 {
    5001
}
fn default_timeout() -> u64 {
    10
}
fn default_poll() -> u64 {
    10
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            namespace: None,
            selector: default_selector(),
            port: default_port(),
            token_file: None,
            timeout_seconds: default_timeout(),
            poll_seconds: default_poll(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            registry_host: default_registry_host(),
            agents: AgentConfig::default(),
            plugins: PluginConfig::default(),
        }
    }
}

impl AgentConfig {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_seconds.max(1))
    }
    pub fn poll(&self) -> Duration {
        Duration::from_secs(self.poll_seconds.max(1))
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("reading {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let cfg: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        crate::plugins::Framework::new(&cfg.plugins).map_err(|e| e.to_string())?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_the_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn weights_and_plugins_are_read_and_unknown_names_refused() {
        let cfg = Config::parse(
            "[plugins]\nfilters = [\"NodeReady\", \"NodeSelector\"]\nscores = [{ name = \"Spread\", weight = 5 }]\n",
        )
        .unwrap();
        assert_eq!(cfg.plugins.filters, vec!["NodeReady", "NodeSelector"]);
        assert_eq!(cfg.plugins.scores[0].weight, 5);
        let e = Config::parse("[plugins]\nfilters = [\"Nope\"]\n").unwrap_err();
        assert!(e.contains("Nope"), "{e}");
        // Placement and release must agree on the selector; a node needs a ready agent.
        let e =
            Config::parse("[plugins]\nfilters = [\"NodeSelector\", \"DiskAware\"]\n").unwrap_err();
        assert!(e.contains("NodeReady cannot be disabled"), "{e}");
        assert!(Config::parse("bogus = 1\n").is_err());
    }
}
