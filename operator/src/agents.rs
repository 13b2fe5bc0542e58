//! The node agents' admin API, as the operator calls it: one typed client per agent, the shared
//! token (re-read when its file changes), and a timeout on every call.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use manta_api::{Client, Job, PinTarget, PrefetchRequest, Reclaim};

use crate::inventory::AgentState;
use crate::Error;

/// How long a read token stays in use before its file is read again.
const TOKEN_TTL: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct Agents {
    inner: Arc<Inner>,
}

struct Inner {
    token_file: Option<PathBuf>,
    timeout: Duration,
    token: Mutex<Option<(Option<String>, Instant)>>,
    /// One HTTP client (one connection pool) for every agent, built for the token it carries.
    http: Mutex<Option<(Option<String>, reqwest::Client)>>,
    clients: Mutex<HashMap<String, (Option<String>, Client)>>,
}

impl Agents {
    /// Agents reached with the token in `token_file` (none: the agents' listener takes no
    /// token, as in a test on loopback), each call bounded by `timeout`.
    pub fn new(token_file: Option<PathBuf>, timeout: Duration) -> Self {
        Agents {
            inner: Arc::new(Inner {
                token_file,
                timeout,
                token: Mutex::new(None),
                http: Mutex::new(None),
                clients: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn token(&self) -> Result<Option<String>, Error> {
        let Some(path) = &self.inner.token_file else {
            return Ok(None);
        };
        let mut cached = self.inner.token.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((t, at)) = cached.as_ref() {
            if at.elapsed() < TOKEN_TTL {
                return Ok(t.clone());
            }
        }
        let text = std::fs::read_to_string(path).map_err(|source| Error::TokenFile {
            path: path.clone(),
            source,
        })?;
        let token = manta_api::first_token(&text)
            .map(str::to_string)
            .ok_or_else(|| Error::NoToken { path: path.clone() })?;
        *cached = Some((Some(token.clone()), Instant::now()));
        Ok(Some(token))
    }

    fn client(&self, url: &str) -> Result<Client, Error> {
        let token = self.token()?;
        let mut clients = self.inner.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((t, c)) = clients.get(url) {
            if *t == token {
                return Ok(c.clone());
            }
        }
        let http = {
            let mut http = self.inner.http.lock().unwrap_or_else(|p| p.into_inner());
            match http.as_ref() {
                Some((t, h)) if *t == token => h.clone(),
                _ => {
                    let h = Client::http_client(token.as_deref(), Some(self.inner.timeout))?;
                    *http = Some((token.clone(), h.clone()));
                    h
                }
            }
        };
        let base = url::Url::parse(url).map_err(|_| Error::AgentUrl(url.to_string()))?;
        let c = Client::with_http(http, base);
        clients.insert(url.to_string(), (token, c.clone()));
        Ok(c)
    }

    /// Forget the clients of agents that are gone.
    pub fn retain(&self, urls: &std::collections::BTreeSet<String>) {
        let mut clients = self.inner.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients.retain(|u, _| urls.contains(u));
    }

    /// The agent's space, cached revisions and pin names.
    pub async fn report(&self, url: &str) -> Result<AgentState, Error> {
        let c = self.client(url)?;
        let (cache, pins) = futures_util::try_join!(c.cache(false), c.pins())?;
        Ok(AgentState {
            space: cache.value.space,
            revisions: cache.value.revisions,
            pins: pins.value.into_iter().map(|p| p.name).collect(),
        })
    }

    pub async fn prefetch(&self, url: &str, req: &PrefetchRequest) -> Result<Job, Error> {
        Ok(self.client(url)?.prefetch(req).await?.value)
    }

    /// A job; `None` when the agent no longer knows it (it restarted, or forgot the job an hour
    /// after it ended).
    pub async fn job(&self, url: &str, id: &str) -> Result<Option<Job>, Error> {
        match self.client(url)?.job(id).await {
            Ok(a) => Ok(Some(a.value)),
            Err(e) if e.status() == Some(reqwest::StatusCode::NOT_FOUND) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// A job once its version is not `version`, or after `wait` unchanged; `None` when the
    /// agent no longer knows it.
    pub async fn job_wait(
        &self,
        url: &str,
        id: &str,
        version: u64,
        wait: Duration,
    ) -> Result<Option<Job>, Error> {
        match self.client(url)?.job_wait(id, version, wait).await {
            Ok(a) => Ok(Some(a.value)),
            Err(e) if e.status() == Some(reqwest::StatusCode::NOT_FOUND) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn pin(&self, url: &str, name: &str, target: &PinTarget) -> Result<(), Error> {
        self.client(url)?.put_pin(name, target).await?;
        Ok(())
    }

    /// Release a pin; whether it existed.
    pub async fn unpin(&self, url: &str, name: &str, reclaim: Reclaim) -> Result<bool, Error> {
        Ok(self.client(url)?.delete_pin(name, reclaim).await?.is_some())
    }
}
