//! Leader election over a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does it:
//! one operator acts at a time, however many replicas run.
//!
//! A candidate takes the Lease when nobody holds it or its holder has not renewed it within
//! `leaseDurationSeconds`; the leader renews it every `retry`; every write is an update with the
//! Lease's resourceVersion, so two candidates racing for it cannot both win (the second gets 409
//! and reads again). A leader that cannot renew within `renew_deadline` stops acting (the process
//! exits, and its pod restarts as a candidate): by then another may have taken over. A leader that
//! stops cleanly releases the Lease, so a standby takes over at once rather than after the lease
//! duration.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};

use crate::Error;

/// Who competes for which Lease, and the timing (client-go's defaults).
#[derive(Clone, Debug)]
pub struct LeaderConfig {
    pub namespace: String,
    pub lease: String,
    /// This candidate (its pod name, made unique).
    pub identity: String,
    /// How long a holder's last renewal keeps others away.
    pub lease_duration: Duration,
    /// How long a leader keeps acting without a successful renewal.
    pub renew_deadline: Duration,
    /// How often a leader renews, and a candidate tries.
    pub retry: Duration,
}

impl LeaderConfig {
    pub fn new(namespace: String, lease: String, identity: String) -> Self {
        LeaderConfig {
            namespace,
            lease,
            identity,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// A candidate for the Lease, with what it has observed of it: client-go's rule that a holder's
/// lease has expired when its record has not changed for `lease_duration` *by this process's
/// own clock* (the holder's `renewTime` is its clock, not ours: comparing them would let a
/// skewed node take a live lease).
pub struct Candidate {
    api: Api<Lease>,
    cfg: LeaderConfig,
    /// The last record seen (holder, renewTime, resourceVersion) and when it was first seen.
    observed: Option<(String, Instant)>,
    /// Whether the last read of the Lease succeeded (a standby's readiness).
    readable: Arc<AtomicBool>,
}

impl Candidate {
    pub fn new(api: Api<Lease>, cfg: LeaderConfig) -> Self {
        Candidate {
            api,
            cfg,
            observed: None,
            readable: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn config(&self) -> &LeaderConfig {
        &self.cfg
    }

    /// Whether the last read of the Lease succeeded.
    pub fn readable(&self) -> Arc<AtomicBool> {
        self.readable.clone()
    }

    /// Whether the Lease is free for this candidate: nobody holds it, this candidate does, or
    /// its record has not changed for its duration since this candidate first saw it.
    fn free(&mut self, lease: &Lease) -> bool {
        let spec = lease.spec.clone().unwrap_or_default();
        let key = format!(
            "{:?}|{:?}|{:?}",
            spec.holder_identity,
            spec.renew_time.as_ref().map(|t| t.0),
            lease.metadata.resource_version
        );
        let seen = match &self.observed {
            Some((k, at)) if *k == key => *at,
            _ => {
                let now = Instant::now();
                self.observed = Some((key, now));
                now
            }
        };
        match spec.holder_identity.as_deref() {
            None | Some("") => true,
            Some(h) if h == self.cfg.identity => true,
            Some(_) => {
                let secs = u64::try_from(spec.lease_duration_seconds.unwrap_or(15)).unwrap_or(15);
                seen.elapsed() > Duration::from_secs(secs)
            }
        }
    }

    async fn get(&self) -> Result<Option<Lease>, Error> {
        let r = tokio::time::timeout(self.cfg.renew_deadline, self.api.get_opt(&self.cfg.lease))
            .await
            .map_err(|_| Error::Config("reading the lease timed out".into()))
            .and_then(|r| r.map_err(Error::from));
        self.readable.store(r.is_ok(), Ordering::Release);
        r
    }

    /// One attempt to take or renew the Lease; whether this candidate holds it now. Every call
    /// to the API server is bounded by `renew_deadline`.
    pub async fn try_acquire(&mut self) -> Result<bool, Error> {
        let cfg = self.cfg.clone();
        let duration = i32::try_from(cfg.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let bounded = |what: &'static str| {
            move |r: Result<Result<Lease, kube::Error>, tokio::time::error::Elapsed>| match r {
                Err(_) => Err(Error::Config(format!("{what} the lease timed out"))),
                Ok(r) => Ok(r),
            }
        };
        let Some(mut lease) = self.get().await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.lease.clone()),
                    namespace: Some(cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(cfg.identity.clone()),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            let r = tokio::time::timeout(
                cfg.renew_deadline,
                self.api.create(&PostParams::default(), &lease),
            )
            .await;
            return match bounded("creating")(r)? {
                Ok(_) => Ok(true),
                // Another candidate created it first.
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e.into()),
            };
        };
        if !self.free(&lease) {
            return Ok(false);
        }
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
            spec.holder_identity = Some(cfg.identity.clone());
            spec.acquire_time = Some(now());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        spec.lease_duration_seconds = Some(duration);
        spec.renew_time = Some(now());
        // The resourceVersion read above makes this a compare-and-swap.
        let r = tokio::time::timeout(
            cfg.renew_deadline,
            self.api.replace(&cfg.lease, &PostParams::default(), &lease),
        )
        .await;
        match bounded("updating")(r)? {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Wait until this candidate leads.
    pub async fn acquire(&mut self) {
        let mut waiting_logged = false;
        loop {
            match self.try_acquire().await {
                Ok(true) => {
                    tracing::info!(identity = %self.cfg.identity, lease = %self.cfg.lease, "leading");
                    return;
                }
                Ok(false) if !waiting_logged => {
                    tracing::info!(identity = %self.cfg.identity, lease = %self.cfg.lease, "standing by: another operator leads");
                    waiting_logged = true;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %crate::controller::error_chain(&e), "cannot read or take the lease")
                }
            }
            tokio::time::sleep(self.cfg.retry).await;
        }
    }

    /// Renew the Lease every `retry` while leading; returns when it was not renewed within
    /// `renew_deadline` (a hung call counts: each attempt races the deadline) or another
    /// candidate holds it: the caller must stop acting at once.
    pub async fn hold(&mut self) {
        let mut renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.cfg.retry).await;
            let deadline = renewed + self.cfg.renew_deadline;
            let attempt = tokio::select! {
                r = self.try_acquire() => Some(r),
                _ = tokio::time::sleep_until(deadline) => None,
            };
            match attempt {
                Some(Ok(true)) => renewed = tokio::time::Instant::now(),
                Some(Ok(false)) => {
                    tracing::error!(lease = %self.cfg.lease, "another operator holds the lease");
                    return;
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %crate::controller::error_chain(&e), "cannot renew the lease");
                }
                None => {
                    tracing::error!(lease = %self.cfg.lease, "renewing the lease hung past its deadline");
                    return;
                }
            }
            if tokio::time::Instant::now() >= renewed + self.cfg.renew_deadline {
                tracing::error!(lease = %self.cfg.lease, "the lease was not renewed in time");
                return;
            }
        }
    }

    /// Give the Lease up (a clean stop): a standby takes it at its next try.
    pub async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.get().await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        spec.acquire_time = None;
        let r = tokio::time::timeout(
            self.cfg.renew_deadline,
            self.api
                .replace(&self.cfg.lease, &PostParams::default(), &lease),
        )
        .await;
        match r {
            Ok(Ok(_)) => tracing::info!(lease = %self.cfg.lease, "released the lease"),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot release the lease"),
            Err(_) => tracing::warn!("releasing the lease timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, rv: &str) -> Lease {
        Lease {
            metadata: ObjectMeta {
                resource_version: Some(rv.into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                lease_duration_seconds: Some(1),
                renew_time: Some(now()),
                ..LeaseSpec::default()
            }),
        }
    }

    #[tokio::test]
    async fn a_held_lease_expires_by_this_processs_clock_not_the_holders() {
        let client =
            kube::Client::try_from(kube::Config::new("http://127.0.0.1:1".parse().unwrap()))
                .unwrap();
        let mut c = Candidate::new(
            Api::namespaced(client, "ns"),
            LeaderConfig::new("ns".into(), "l".into(), "me".into()),
        );
        assert!(c.free(&lease(None, "1")));
        assert!(c.free(&lease(Some("me"), "1")));
        // Another's record, just seen: not free, whatever its renewTime says.
        let other = lease(Some("other"), "2");
        assert!(!c.free(&other));
        std::thread::sleep(Duration::from_millis(1100));
        // Unchanged for longer than its duration since first seen: free.
        assert!(c.free(&other));
        // Renewed (a new resourceVersion): the clock starts again.
        assert!(!c.free(&lease(Some("other"), "3")));
    }
}
