//! One upstream registry: requests with its credentials, the Bearer token flow (tokens cached
//! per scope until they expire), Basic auth, and bounded retries honouring `Retry-After`.
//! Redirects (to blob storage) are followed by reqwest, which drops `Authorization` when the
//! host changes. Every address contacted, redirects and token realms included, is judged by the
//! upstream's [`AddressPolicy`]; credentials go to a realm only over HTTPS or on the upstream's
//! own host. Secrets never reach an error message or a log line.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE,
};
use reqwest::{Method, StatusCode};

use super::config::{Credentials, RegistryConfig};
use super::policy::{bare_host, denial_of, AddressPolicy};
use super::UpstreamError;

const MAX_ATTEMPTS: u32 = 3;

#[derive(Default)]
struct AuthState {
    /// scope → (Authorization value, expiry)
    tokens: HashMap<String, (HeaderValue, Instant)>,
    /// The registry asked for Basic auth.
    basic: bool,
}

pub struct RegistryClient {
    http: reqwest::Client,
    /// `http://127.0.0.1:5055`, `https://registry-1.docker.io`
    base: String,
    /// The key used in configuration and logs (host[:port]).
    pub host: String,
    config: RegistryConfig,
    pub timeout: Duration,
    auth: Mutex<AuthState>,
    policy: Arc<AddressPolicy>,
}

/// A request failed: the address policy's refusal is `Denied` (403), the rest `Connect`.
fn send_error(e: reqwest::Error) -> UpstreamError {
    match denial_of(&e) {
        Some(d) => UpstreamError::Denied(d.to_string()),
        None => UpstreamError::Connect(e),
    }
}

enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Basic,
}

/// Parse `WWW-Authenticate: Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`.
fn parse_challenge(h: &str) -> Option<Challenge> {
    let (scheme, rest) = h.trim().split_once(' ').unwrap_or((h.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut params = HashMap::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let (k, after) = s.split_once('=')?;
        let after = after.trim_start();
        let (v, tail) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (&q[..end], &q[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        params.insert(k.trim().to_ascii_lowercase(), v.to_string());
        s = tail.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge::Bearer {
        realm: params.remove("realm")?,
        service: params.remove("service"),
        scope: params.remove("scope"),
    })
}

fn basic_header(c: &Credentials) -> Result<HeaderValue, UpstreamError> {
    let raw = format!("{}:{}", c.username, c.password.expose());
    let mut v = HeaderValue::from_str(&format!("Basic {}", base64(raw.as_bytes())))
        .map_err(|_| UpstreamError::Auth("credentials are not a valid header".into()))?;
    v.set_sensitive(true);
    Ok(v)
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn retry_after(h: &HeaderMap) -> Option<Duration> {
    h.get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

impl RegistryClient {
    pub fn new(
        host: String,
        base: String,
        config: RegistryConfig,
        timeout: Duration,
        policy: AddressPolicy,
    ) -> Result<Self, UpstreamError> {
        let policy = Arc::new(policy);
        let mut b = reqwest::Client::builder()
            .connect_timeout(timeout)
            .read_timeout(timeout)
            .user_agent(concat!("manta/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(policy.resolver())
            .redirect(policy.redirects());
        if config.insecure {
            b = b.danger_accept_invalid_certs(true);
        }
        if let Some(ca) = &config.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| UpstreamError::Auth(format!("reading ca_file: {e}")))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| UpstreamError::Auth(format!("ca_file: {e}")))?;
            b = b.add_root_certificate(cert);
        }
        let http = b.build().map_err(UpstreamError::Connect)?;
        Ok(Self {
            http,
            base,
            host,
            config,
            timeout,
            auth: Mutex::new(AuthState::default()),
            policy,
        })
    }

    /// Judge a URL this client is about to request (an IP literal now; a name when resolved).
    fn check(&self, url: &str) -> Result<reqwest::Url, UpstreamError> {
        let url = reqwest::Url::parse(url)
            .map_err(|_| UpstreamError::Denied(format!("{url:?} is not a URL")))?;
        self.policy
            .check_url(&url)
            .map_err(|d| UpstreamError::Denied(d.to_string()))?;
        Ok(url)
    }

    fn auth_state(&self) -> std::sync::MutexGuard<'_, AuthState> {
        self.auth.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cached_auth(&self, scope: &str) -> Result<Option<HeaderValue>, UpstreamError> {
        let st = self.auth_state();
        if let Some((v, exp)) = st.tokens.get(scope) {
            if *exp > Instant::now() {
                return Ok(Some(v.clone()));
            }
        }
        if st.basic {
            drop(st);
            return self
                .config
                .credentials()
                .map_err(|e| UpstreamError::Auth(e.to_string()))?
                .map(|c| basic_header(&c))
                .transpose();
        }
        Ok(None)
    }

    /// Answer a challenge; false when there is nothing more to try.
    async fn authenticate(&self, challenge: Challenge, scope: &str) -> Result<bool, UpstreamError> {
        let creds = self
            .config
            .credentials()
            .map_err(|e| UpstreamError::Auth(e.to_string()))?;
        match challenge {
            Challenge::Basic => {
                let mut st = self.auth_state();
                if st.basic || creds.is_none() {
                    return Ok(false);
                }
                st.basic = true;
                Ok(true)
            }
            Challenge::Bearer {
                realm,
                service,
                scope: challenged,
            } => {
                let realm_url = self.check(&realm)?;
                // Credentials go to a realm over HTTPS, or on this upstream's own host only: a
                // challenge must not be able to collect them in clear from anywhere.
                let own_host = realm_url
                    .host_str()
                    .is_some_and(|h| bare_host(h) == bare_host(&self.host));
                let creds = creds.filter(|_| realm_url.scheme() == "https" || own_host);
                let mut req = self.http.get(realm_url);
                let mut q = Vec::new();
                if let Some(s) = &service {
                    q.push(("service", s.as_str()));
                }
                q.push(("scope", challenged.as_deref().unwrap_or(scope)));
                req = req.query(&q);
                if let Some(c) = &creds {
                    req = req.header(AUTHORIZATION, basic_header(c)?);
                }
                let resp = tokio::time::timeout(self.timeout, req.send())
                    .await
                    .map_err(|_| UpstreamError::Timeout("token request"))?
                    .map_err(send_error)?;
                if !resp.status().is_success() {
                    return Err(UpstreamError::from_response("token request", resp).await);
                }
                #[derive(serde::Deserialize)]
                struct TokenResponse {
                    token: Option<String>,
                    access_token: Option<String>,
                    expires_in: Option<u64>,
                }
                let body = tokio::time::timeout(self.timeout, resp.bytes())
                    .await
                    .map_err(|_| UpstreamError::Timeout("token response"))?
                    .map_err(UpstreamError::Connect)?;
                let t: TokenResponse = serde_json::from_slice(&body).map_err(|_| {
                    UpstreamError::Auth("token endpoint answered no JSON token".into())
                })?;
                let token = t.token.or(t.access_token).ok_or_else(|| {
                    UpstreamError::Auth("token endpoint answered no token".into())
                })?;
                let mut v = HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| UpstreamError::Auth("token is not a valid header".into()))?;
                v.set_sensitive(true);
                // Renew a little early; a token without expires_in is good for 60 s (the spec's default).
                let life = Duration::from_secs(t.expires_in.unwrap_or(60).max(10))
                    - Duration::from_secs(5);
                self.auth_state()
                    .tokens
                    .insert(scope.to_string(), (v, Instant::now() + life));
                Ok(true)
            }
        }
    }

    /// `method /v2/<repo>/<suffix>` with auth and retries. The response may have any status;
    /// callers decide what a 404 means.
    pub async fn request(
        &self,
        method: Method,
        repo: &str,
        suffix: &str,
        accept: Option<&str>,
    ) -> Result<reqwest::Response, UpstreamError> {
        self.request_from(method, repo, suffix, accept, 0, None)
            .await
    }

    /// [`Self::request`] for the bytes from `offset` on, up to `end` (exclusive) when given
    /// (`Range: bytes=<offset>-[<end - 1>]`; none for the whole blob).
    pub async fn request_from(
        &self,
        method: Method,
        repo: &str,
        suffix: &str,
        accept: Option<&str>,
        offset: u64,
        end: Option<u64>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let url = self.check(&format!("{}/v2/{repo}/{suffix}", self.base))?;
        let scope = format!("repository:{repo}:pull");
        let mut authenticated = false;
        let mut attempt = 0;
        loop {
            let mut req = self.http.request(method.clone(), url.clone());
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            match end {
                Some(end) => {
                    let last = end.saturating_sub(1);
                    req = req.header(reqwest::header::RANGE, format!("bytes={offset}-{last}"));
                }
                None if offset > 0 => {
                    req = req.header(reqwest::header::RANGE, format!("bytes={offset}-"));
                }
                None => {}
            }
            if let Some(auth) = self.cached_auth(&scope)? {
                req = req.header(AUTHORIZATION, auth);
            }
            let sent = tokio::time::timeout(self.timeout, req.send()).await;
            let resp = match sent {
                Err(_) => return Err(UpstreamError::Timeout("response headers")),
                Ok(Err(e)) if denial_of(&e).is_some() => return Err(send_error(e)),
                Ok(Err(e)) if e.is_connect() && attempt + 1 < MAX_ATTEMPTS => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                    continue;
                }
                Ok(Err(e)) => return Err(UpstreamError::Connect(e)),
                Ok(Ok(r)) => r,
            };
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && !authenticated {
                authenticated = true;
                let challenge = resp
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_challenge);
                if let Some(c) = challenge {
                    if self.authenticate(c, &scope).await? {
                        continue;
                    }
                }
                return Ok(resp);
            }
            let retryable = status == StatusCode::TOO_MANY_REQUESTS
                || status == StatusCode::REQUEST_TIMEOUT
                || status.is_server_error();
            if retryable && attempt + 1 < MAX_ATTEMPTS {
                attempt += 1;
                let wait =
                    retry_after(resp.headers()).unwrap_or(Duration::from_millis(200 << attempt));
                if wait <= self.timeout {
                    tracing::debug!(host = %self.host, %status, ?wait, "upstream asked to retry");
                    tokio::time::sleep(wait).await;
                    continue;
                }
            }
            return Ok(resp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        match parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#,
        ) {
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => {
                assert_eq!(realm, "https://auth.example/token");
                assert_eq!(service.as_deref(), Some("registry.example"));
                assert_eq!(scope.as_deref(), Some("repository:a/b:pull"));
            }
            _ => panic!("not parsed"),
        }
        assert!(matches!(
            parse_challenge(r#"Basic realm="x""#),
            Some(Challenge::Basic)
        ));
        assert!(parse_challenge("Negotiate").is_none());
    }

    #[test]
    fn base64_encodes() {
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b""), "");
    }
}
