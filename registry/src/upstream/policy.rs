//! Which addresses pull-through may contact, so that a caller cannot make the agent reach the
//! node's internal network through `?ns=`, an upstream's redirect or a token realm (SSRF).
//!
//! - Link-local addresses (`169.254.0.0/16`, the cloud metadata service among them, and
//!   `fe80::/10`) are never contacted, however they are reached.
//! - Loopback and private addresses (`127.0.0.0/8`, `10/8`, `172.16/12`, `192.168/16`,
//!   `100.64/10`, `fc00::/7`, `::1`, …) only on the hosts of upstreams this agent is configured
//!   with (an alias, an allow-list entry or a registry section), and only by a configured
//!   upstream's client: a redirect or a realm that leads anywhere else private is refused, and an
//!   upstream reached by an unconfigured name (`?ns=` while the allow-list is open) reaches no
//!   private address at all.
//! - Everything else (public addresses) as the allow-list says.
//!
//! An IP literal is judged before the request; a name when it is resolved (every address it
//! resolves to is judged, and only the allowed ones are dialled), so a name that points inside
//! is refused too. Either way nothing is connected before the verdict.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

/// Where an address stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrClass {
    Public,
    /// Loopback, private, shared, unspecified and other non-global addresses.
    Private,
    /// Link-local: never contacted.
    LinkLocal,
}

fn classify_v4(a: Ipv4Addr) -> AddrClass {
    let o = a.octets();
    if a.is_link_local() {
        AddrClass::LinkLocal
    } else if a.is_loopback()
        || a.is_private()
        || a.is_unspecified()
        || a.is_broadcast()
        || a.is_multicast()
        || o[0] == 0 // "this network": 0.x.x.x reaches the local host
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10, shared address space
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15, benchmarking
        || o[0] >= 240
    {
        AddrClass::Private
    } else {
        AddrClass::Public
    }
}

/// The class of an address (IPv4-mapped and NAT64 IPv6 addresses as the IPv4 they carry).
pub fn classify(ip: IpAddr) -> AddrClass {
    match ip.to_canonical() {
        IpAddr::V4(a) => classify_v4(a),
        IpAddr::V6(a) => {
            let s = a.segments();
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                // 64:ff9b::/96 (NAT64) embeds an IPv4 address.
                let [x, y] = s[6].to_be_bytes();
                let [z, w] = s[7].to_be_bytes();
                return classify_v4(Ipv4Addr::new(x, y, z, w));
            }
            if (s[0] & 0xffc0) == 0xfe80 {
                AddrClass::LinkLocal
            } else if a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfec0
            // site local (deprecated)
            {
                AddrClass::Private
            } else {
                AddrClass::Public
            }
        }
    }
}

/// A refusal of the address policy. It reaches the client as 403 `DENIED`.
#[derive(Debug, thiserror::Error)]
#[error("upstream {host} is {what}, which pull-through may not contact")]
pub struct AddressDenied {
    pub host: String,
    pub what: &'static str,
}

impl AddressDenied {
    fn new(host: &str, class: AddrClass) -> Self {
        Self {
            host: host.to_string(),
            what: match class {
                AddrClass::LinkLocal => "at a link-local address",
                _ => "at a private or loopback address and not a configured upstream",
            },
        }
    }
}

/// What one upstream's client may contact.
#[derive(Clone, Debug, Default)]
pub struct AddressPolicy {
    /// Hosts (lowercase, without port or brackets) that may be on private addresses: every host
    /// the configuration names, for a configured upstream's client; none for any other.
    private_ok: Arc<BTreeSet<String>>,
}

/// `host` without a port or IPv6 brackets, lowercase.
pub fn bare_host(host: &str) -> String {
    let h = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        host.rsplit_once(':')
            .filter(|(h, p)| !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()))
            .map(|(h, _)| h)
            .unwrap_or(host)
    };
    h.to_ascii_lowercase()
}

impl AddressPolicy {
    /// The policy of a configured upstream's client: private addresses of `configured_hosts`.
    pub fn configured(configured_hosts: Arc<BTreeSet<String>>) -> Self {
        Self {
            private_ok: configured_hosts,
        }
    }

    /// The policy of any other upstream's client: public addresses only.
    pub fn public_only() -> Self {
        Self::default()
    }

    /// Whether an address of class `class`, reached as `host`, may be contacted.
    pub fn allows(&self, host: &str, class: AddrClass) -> bool {
        match class {
            AddrClass::Public => true,
            AddrClass::LinkLocal => false,
            AddrClass::Private => self.private_ok.contains(&bare_host(host)),
        }
    }

    /// Judge a URL before a request: its scheme, and its host when that is an IP literal (a
    /// name is judged by [`PolicyResolver`] when it is looked up).
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), AddressDenied> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(AddressDenied {
                host: url.scheme().to_string(),
                what: "reached by a scheme other than http or https",
            });
        }
        let ip = match url.host() {
            Some(url::Host::Ipv4(a)) => IpAddr::V4(a),
            Some(url::Host::Ipv6(a)) => IpAddr::V6(a),
            Some(url::Host::Domain(_)) => return Ok(()),
            None => {
                return Err(AddressDenied {
                    host: String::new(),
                    what: "without a host",
                })
            }
        };
        let host = url.host_str().unwrap_or_default();
        let class = classify(ip);
        if self.allows(host, class) {
            Ok(())
        } else {
            Err(AddressDenied::new(host, class))
        }
    }

    /// The resolver a client of this upstream looks names up with.
    pub fn resolver(self: &Arc<Self>) -> Arc<PolicyResolver> {
        Arc::new(PolicyResolver(self.clone()))
    }

    /// The redirect policy of a client of this upstream: at most 5 hops, each judged.
    pub fn redirects(self: &Arc<Self>) -> reqwest::redirect::Policy {
        let me = self.clone();
        reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 5 {
                return attempt.error("too many redirects");
            }
            match me.check_url(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(denied) => attempt.error(denied),
            }
        })
    }
}

/// Looks names up and keeps only the addresses the policy allows.
pub struct PolicyResolver(Arc<AddressPolicy>);

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| {
                    let class = classify(a.ip());
                    let ok = policy.allows(&host, class);
                    if !ok {
                        refused = Some(class);
                    }
                    ok
                })
                .collect();
            if allowed.is_empty() {
                if let Some(class) = refused {
                    return Err(Box::new(AddressDenied::new(&host, class)) as _);
                }
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The policy's refusal in a request error's causes, if that is why it failed.
pub fn denial_of(e: &reqwest::Error) -> Option<&AddressDenied> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(d) = c.downcast_ref::<AddressDenied>() {
            return Some(d);
        }
        cause = c.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(s: &str) -> AddrClass {
        classify(s.parse().unwrap())
    }

    #[test]
    fn addresses_are_classified() {
        for ll in [
            "169.254.169.254",
            "169.254.0.1",
            "fe80::1",
            "febf::1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert_eq!(class(ll), AddrClass::LinkLocal, "{ll}");
        }
        for p in [
            "127.0.0.1",
            "127.5.6.7",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "::1",
            "::",
            "fd00::1",
            "fc00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "224.0.0.1",
            "255.255.255.255",
        ] {
            assert_eq!(class(p), AddrClass::Private, "{p}");
        }
        for p in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "169.255.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(class(p), AddrClass::Public, "{p}");
        }
    }

    fn hosts(h: &[&str]) -> Arc<BTreeSet<String>> {
        Arc::new(h.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn private_addresses_only_on_configured_hosts_and_only_for_configured_upstreams() {
        let configured = AddressPolicy::configured(hosts(&["127.0.0.1", "10.0.0.7"]));
        let other = AddressPolicy::public_only();
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        assert!(configured
            .check_url(&url("http://127.0.0.1:5055/v2/"))
            .is_ok());
        assert!(
            configured
                .check_url(&url("http://127.0.0.1:9999/x"))
                .is_ok(),
            "same host"
        );
        assert!(
            configured.check_url(&url("http://10.0.0.7/x")).is_ok(),
            "another configured host"
        );
        assert!(configured
            .check_url(&url("http://127.0.0.2:5055/x"))
            .is_err());
        assert!(configured.check_url(&url("http://10.0.0.1/x")).is_err());
        assert!(configured
            .check_url(&url("http://169.254.169.254/latest"))
            .is_err());
        assert!(configured.check_url(&url("http://[fe80::1]/")).is_err());
        assert!(configured.check_url(&url("file:///etc/passwd")).is_err());
        assert!(other.check_url(&url("https://203.0.113.9/v2/")).is_ok());
        assert!(other.check_url(&url("http://127.0.0.1/v2/")).is_err());
        assert!(
            other
                .check_url(&url("https://registry.example/v2/"))
                .is_ok(),
            "names are the resolver's"
        );
        assert!(!other.allows("registry.example", AddrClass::Private));
        assert!(!configured.allows("localhost", AddrClass::Private));
        let local = AddressPolicy::configured(hosts(&["localhost"]));
        assert!(local.allows("localhost", AddrClass::Private));
        assert!(!local.allows("localhost", AddrClass::LinkLocal));
    }

    #[test]
    fn hosts_lose_ports_and_brackets() {
        assert_eq!(bare_host("127.0.0.1:5055"), "127.0.0.1");
        assert_eq!(bare_host("[::1]:5000"), "::1");
        assert_eq!(bare_host("Registry.Example"), "registry.example");
        assert_eq!(bare_host("::1"), "::1");
    }

    #[tokio::test]
    async fn the_resolver_drops_what_the_policy_refuses() {
        use reqwest::dns::Resolve;
        let p = Arc::new(AddressPolicy::public_only());
        let name = |s: &str| std::str::FromStr::from_str(s).unwrap();
        let r = p.resolver().resolve(name("localhost")).await;
        let e = r
            .err()
            .expect("localhost is private and not this upstream's host");
        assert!(e.downcast_ref::<AddressDenied>().is_some(), "{e}");
        let own = Arc::new(AddressPolicy::configured(hosts(&["localhost"])));
        let addrs: Vec<_> = own
            .resolver()
            .resolve(name("localhost"))
            .await
            .unwrap()
            .collect();
        assert!(!addrs.is_empty());
    }
}
