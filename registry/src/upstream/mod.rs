//! Upstream registries: which request names reach which registry (`?ns=`, a host prefix, or a
//! configured alias), and one client per registry. See docs/upstream.md.

mod client;
pub mod config;
pub mod policy;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use client::RegistryClient;
pub use config::{FileConfig, UpstreamConfig};

/// Failures talking to an upstream. Messages never carry credentials or tokens.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Refused by this agent's policy (the allow-list, the address policy): said why.
    #[error("{0}")]
    Denied(String),
    #[error("upstream sent nothing for the configured timeout ({0})")]
    Timeout(&'static str),
    #[error("cannot reach upstream")]
    Connect(#[source] reqwest::Error),
    #[error("upstream answered {status}{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Status {
        status: u16,
        code: Option<String>,
        message: Option<String>,
        retry_after: Option<String>,
    },
    #[error("upstream authentication failed: {0}")]
    Auth(String),
    #[error("upstream sent content that does not match digest {expected}")]
    DigestMismatch { expected: String },
    #[error("upstream sent a malformed response: {0}")]
    Malformed(String),
    /// What a hub lists cannot be made an OCI artifact (a path no tar can hold, say).
    #[error("the hub's repo cannot be served as an OCI artifact: {0}")]
    Unrepresentable(String),
    /// The agent has no adapter for this model hub.
    #[error("model hub {0} is not configured on this agent")]
    HubNotConfigured(&'static str),
    /// A failure of the agent's own machinery (a fetch or resolution that ended without saying
    /// how); a bug, never the upstream's fault.
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// A model hub's answer, with the hub's own message.
    #[error(transparent)]
    Hub(#[from] manta_hub::HubError),
    /// The local store failed while caching (a full disk, or no room left in the capacity).
    #[error("{}", .0.client_message())]
    Local(#[source] crate::store::StoreError),
}

impl UpstreamError {
    /// Turn an unsuccessful response into an error, keeping the upstream's own error code and
    /// message (OCI error body) when it sent one.
    pub async fn from_response(what: &'static str, resp: reqwest::Response) -> Self {
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = tokio::time::timeout(Duration::from_secs(5), resp.bytes())
            .await
            .ok()
            .and_then(Result::ok);
        let parsed: Option<serde_json::Value> =
            body.as_deref().and_then(|b| serde_json::from_slice(b).ok());
        let first = parsed
            .as_ref()
            .and_then(|v| v.get("errors")?.get(0).cloned());
        let code = first
            .as_ref()
            .and_then(|e| e.get("code")?.as_str().map(str::to_string));
        let message = first
            .as_ref()
            .and_then(|e| e.get("message")?.as_str().map(str::to_string))
            .or_else(|| {
                parsed
                    .as_ref()
                    .and_then(|v| v.get("details")?.as_str().map(str::to_string))
            })
            .map(|m| format!("{what}: {m}"));
        UpstreamError::Status {
            status,
            code,
            message,
            retry_after,
        }
    }

    /// The upstream is unreachable or failing (as opposed to answering "no such thing"):
    /// a cached answer may be served instead.
    pub fn is_unavailable(&self) -> bool {
        match self {
            UpstreamError::Timeout(_) | UpstreamError::Connect(_) => true,
            UpstreamError::Status { status, .. } => {
                *status >= 500 || *status == 429 || *status == 408
            }
            _ => false,
        }
    }
}

/// Whether a request failed because the process ran out of file descriptors (a 503, not a 502).
pub fn is_fd_exhaustion(e: &reqwest::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if crate::server::conn::is_fd_exhaustion(io) {
                return true;
            }
        }
        cause = c.source();
    }
    false
}

/// `scheme://host[:port]` of a registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseUrl {
    pub scheme: &'static str,
    pub host: String,
}

impl BaseUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let (scheme, rest) = if let Some(r) = url.strip_prefix("http://") {
            ("http", r)
        } else if let Some(r) = url.strip_prefix("https://") {
            ("https", r)
        } else {
            return Err(format!("{url:?}: expected http:// or https://"));
        };
        let host = rest.trim_end_matches('/');
        if !valid_host(host) {
            return Err(format!(
                "{url:?}: expected scheme://host[:port] with no path"
            ));
        }
        Ok(Self {
            scheme,
            host: host.to_string(),
        })
    }

    fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.host)
    }
}

/// `host[:port]`: a DNS name or IPv4 address, or a bracketed IPv6 address, and an optional port.
pub fn valid_host(s: &str) -> bool {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') && (s.starts_with('[') == h.ends_with(']')) => {
            (h, Some(p))
        }
        _ => (s, None),
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return !v6.is_empty()
            && v6
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split(']')
            .next()
            .map(|h| h.trim_start_matches('['))
            .unwrap_or(host);
    }
    host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
}

/// Loopback hosts default to plain HTTP, as containerd and oras do.
pub fn is_loopback(host: &str) -> bool {
    let h = host_without_port(host);
    h == "localhost"
        || h == "::1"
        || h.parse::<std::net::Ipv4Addr>()
            .is_ok_and(|a| a.is_loopback())
}

/// Where a request for `/v2/<name>/…` goes upstream.
pub struct Target {
    pub client: Arc<RegistryClient>,
    /// The repository at the upstream (`library/nginx`).
    pub repo: String,
    /// The repository under which the cache keeps it (`registry-1.docker.io/library/nginx`).
    pub cache_repo: String,
    /// The `ns` the request carried, echoed as `OCI-Namespace`.
    pub ns: Option<String>,
}

pub struct Upstreams {
    config: UpstreamConfig,
    /// Every host the configuration names, bare: the private addresses pull-through may reach.
    configured_hosts: Arc<std::collections::BTreeSet<String>>,
    clients: Mutex<HashMap<String, Arc<RegistryClient>>>,
}

/// Docker Hub's API host, and `library/` for official images.
fn canonical(host: &str, repo: &str) -> (String, String) {
    if matches!(
        host,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    ) {
        let repo = if repo.contains('/') {
            repo.to_string()
        } else {
            format!("library/{repo}")
        };
        ("registry-1.docker.io".to_string(), repo)
    } else {
        (host.to_string(), repo.to_string())
    }
}

impl Upstreams {
    pub fn new(config: UpstreamConfig) -> Self {
        let c = &config;
        let configured_hosts = c
            .allow
            .iter()
            .cloned()
            .chain(c.registries.keys().cloned())
            .chain(
                c.aliases
                    .values()
                    .filter_map(|u| BaseUrl::parse(u).ok().map(|b| b.host)),
            )
            .map(|h| policy::bare_host(&h))
            .collect();
        Self {
            configured_hosts: Arc::new(configured_hosts),
            config,
            clients: Mutex::new(HashMap::new()),
        }
    }

    pub fn tag_ttl(&self) -> Duration {
        Duration::from_secs(self.config.tag_ttl_secs)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.config.timeout_secs)
    }

    fn allowed(&self, host: &str, canonical_host: &str) -> bool {
        self.config.allow.is_empty()
            || self
                .config
                .allow
                .iter()
                .any(|a| a == host || a == canonical_host)
    }

    /// Whether the configuration names this upstream (an alias's target, an allow-list entry or
    /// a registry section): only such an upstream may be on a private or loopback address.
    fn configured(&self, host: &str, canonical_host: &str) -> bool {
        let is = |h: &str| h == host || h == canonical_host;
        self.config.allow.iter().any(|a| is(a))
            || self
                .config
                .registries
                .keys()
                .any(|k| is(k) || (k == "docker.io" && canonical_host == "registry-1.docker.io"))
            || self
                .config
                .aliases
                .values()
                .any(|u| BaseUrl::parse(u).is_ok_and(|b| is(&b.host)))
    }

    fn registry_config(&self, host: &str, canonical_host: &str) -> config::RegistryConfig {
        let r = &self.config.registries;
        r.get(host)
            .or_else(|| r.get(canonical_host))
            .or_else(|| {
                (canonical_host == "registry-1.docker.io")
                    .then(|| r.get("docker.io"))
                    .flatten()
            })
            .cloned()
            .unwrap_or_default()
    }

    fn client(
        &self,
        host: &str,
        base: BaseUrl,
        cfg: config::RegistryConfig,
        policy: policy::AddressPolicy,
    ) -> Result<Arc<RegistryClient>, UpstreamError> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let key = base.url();
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let c = Arc::new(RegistryClient::new(
            host.to_string(),
            key.clone(),
            cfg,
            self.timeout(),
            policy,
        )?);
        clients.insert(key, c.clone());
        Ok(c)
    }

    /// The upstream a request name addresses, or `None` for the local registry.
    pub fn resolve(&self, name: &str, ns: Option<&str>) -> Result<Option<Target>, UpstreamError> {
        let (host, repo, base_scheme, explicit_alias) =
            if let Some(ns) = ns.filter(|n| !n.is_empty()) {
                if !valid_host(ns) {
                    return Err(UpstreamError::Denied(format!(
                        "upstream {ns:?} is not a host[:port]"
                    )));
                }
                (ns.to_string(), name.to_string(), None, false)
            } else {
                let Some((first, rest)) = name.split_once('/') else {
                    return Ok(None);
                };
                if let Some(url) = self.config.aliases.get(first) {
                    let base = BaseUrl::parse(url).map_err(|_| {
                        UpstreamError::Internal("a configured alias URL does not parse")
                    })?;
                    (base.host.clone(), rest.to_string(), Some(base.scheme), true)
                } else if first.contains('.') || first == "localhost" {
                    (first.to_string(), rest.to_string(), None, false)
                } else {
                    return Ok(None);
                }
            };
        let (canonical_host, repo) = canonical(&host, &repo);
        if !explicit_alias && !self.allowed(&host, &canonical_host) {
            return Err(UpstreamError::Denied(format!(
                "upstream {host} is not allowed by this agent's configuration"
            )));
        }
        let cfg = self.registry_config(&host, &canonical_host);
        let scheme = base_scheme.unwrap_or(match cfg.plain_http {
            Some(true) => "http",
            Some(false) => "https",
            None if is_loopback(&canonical_host) => "http",
            None => "https",
        });
        let base = BaseUrl {
            scheme,
            host: canonical_host.clone(),
        };
        // Refused here, before any connection, when the host is an address the policy forbids
        // (a name is judged when the client resolves it).
        let policy = if explicit_alias || self.configured(&host, &canonical_host) {
            policy::AddressPolicy::configured(self.configured_hosts.clone())
        } else {
            policy::AddressPolicy::public_only()
        };
        let url = reqwest::Url::parse(&format!("{}/v2/", base.url())).map_err(|_| {
            UpstreamError::Denied(format!("upstream {host:?} is not a host[:port]"))
        })?;
        policy
            .check_url(&url)
            .map_err(|d| UpstreamError::Denied(d.to_string()))?;
        let client = self.client(&canonical_host, base, cfg, policy)?;
        Ok(Some(Target {
            cache_repo: format!("{canonical_host}/{repo}"),
            client,
            repo,
            ns: ns.map(str::to_string),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ups(toml: &str) -> Upstreams {
        let cfg: FileConfig = ::toml::from_str(toml).unwrap();
        cfg.validate().unwrap();
        Upstreams::new(cfg.upstream)
    }

    #[test]
    fn hosts() {
        for ok in [
            "docker.io",
            "127.0.0.1:5055",
            "localhost",
            "localhost:5000",
            "[::1]:5000",
            "a-b.example.com",
        ] {
            assert!(valid_host(ok), "{ok}");
        }
        for bad in [
            "", "a/b", "http://x", "x:", "x:abc", "-a.com", "a..b", "x:123456",
        ] {
            assert!(!valid_host(bad), "{bad}");
        }
        assert!(
            is_loopback("127.0.0.1:5055") && is_loopback("localhost") && is_loopback("[::1]:80")
        );
        assert!(!is_loopback("10.0.0.1") && !is_loopback("docker.io"));
    }

    #[test]
    fn resolution() {
        let u = ups("[upstream.aliases]\nup1 = \"http://127.0.0.1:5055\"\n");
        assert!(
            u.resolve("library/nginx", None).unwrap().is_none(),
            "a plain name is local"
        );
        assert!(u.resolve("team/app", None).unwrap().is_none());
        let t = u.resolve("nginx", Some("docker.io")).unwrap().unwrap();
        assert_eq!(
            (t.repo.as_str(), t.cache_repo.as_str()),
            ("library/nginx", "registry-1.docker.io/library/nginx")
        );
        let t = u.resolve("docker.io/nginx", None).unwrap().unwrap();
        assert_eq!(t.cache_repo, "registry-1.docker.io/library/nginx");
        let t = u.resolve("ghcr.io/org/img", None).unwrap().unwrap();
        assert_eq!(
            (t.repo.as_str(), t.client.host.as_str()),
            ("org/img", "ghcr.io")
        );
        let t = u.resolve("up1/a/b", None).unwrap().unwrap();
        assert_eq!(
            (t.repo.as_str(), t.cache_repo.as_str()),
            ("a/b", "127.0.0.1:5055/a/b")
        );
        let t = u.resolve("a/b", Some("127.0.0.1:5055")).unwrap().unwrap();
        assert_eq!(
            t.cache_repo, "127.0.0.1:5055/a/b",
            "ns and alias share one cache"
        );
        assert!(u.resolve("x", Some("bad/host")).is_err());
    }

    #[test]
    fn private_upstreams_only_when_configured() {
        let u = ups("[upstream]\nallow = []\n[upstream.aliases]\nup1 = \"http://127.0.0.1:5055\"\n[upstream.registries.\"10.0.0.7:5000\"]\nplain_http = true\n");
        for (name, ns) in [
            ("a/b", Some("127.0.0.1:5055")), // the alias's host, by ns
            ("127.0.0.1:5055/a/b", None),    // and by prefix
            ("a/b", Some("10.0.0.7:5000")),  // a registry section
        ] {
            assert!(u.resolve(name, ns).unwrap().is_some(), "{name} {ns:?}");
        }
        for (name, ns) in [
            ("a/b", Some("127.0.0.1:22")),
            ("127.0.0.1:6379/a/b", None),
            ("a/b", Some("169.254.169.254")),
            ("169.254.169.254/latest/meta-data", None),
            ("a/b", Some("[fe80::1]:80")),
            ("a/b", Some("10.0.0.8:5000")),
            ("a/b", Some("[::1]:5000")),
        ] {
            assert!(
                matches!(u.resolve(name, ns), Err(UpstreamError::Denied(_))),
                "{name} {ns:?}"
            );
        }
        // Public hosts stay open while the allow-list is empty.
        assert!(u.resolve("org/img", Some("ghcr.io")).unwrap().is_some());
    }

    #[test]
    fn allow_list() {
        let u = ups("[upstream]\nallow = [\"docker.io\"]\n[upstream.aliases]\nup1 = \"http://127.0.0.1:5055\"\n");
        assert!(u.resolve("nginx", Some("docker.io")).unwrap().is_some());
        assert!(matches!(
            u.resolve("org/img", Some("ghcr.io")),
            Err(UpstreamError::Denied(_))
        ));
        assert!(
            u.resolve("up1/a", None).unwrap().is_some(),
            "configured aliases are allowed"
        );
    }

    #[test]
    fn secrets_do_not_print() {
        let cfg: FileConfig = ::toml::from_str(
            "[upstream.registries.\"r.io\"]\nusername = \"u\"\npassword = \"hunter2\"\n",
        )
        .unwrap();
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }
}
