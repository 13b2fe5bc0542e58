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

use std::time::Duration;

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

/// Whether a Lease is free for `me` to take: nobody holds it, `me` does, or its holder's last
/// renewal is older than its duration.
fn free_for(lease: &Lease, me: &str) -> bool {
    let Some(spec) = lease.spec.as_ref() else {
        return true;
    };
    match spec.holder_identity.as_deref() {
        None | Some("") => true,
        Some(h) if h == me => true,
        Some(_) => {
            let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
            match &spec.renew_time {
                None => true,
                Some(t) => Timestamp::now().as_second() - t.0.as_second() > duration,
            }
        }
    }
}

/// One attempt to take or renew the Lease; whether this candidate holds it now.
pub async fn try_acquire(api: &Api<Lease>, cfg: &LeaderConfig) -> Result<bool, Error> {
    let duration = i32::try_from(cfg.lease_duration.as_secs()).unwrap_or(i32::MAX);
    let existing = api.get_opt(&cfg.lease).await?;
    let Some(mut lease) = existing else {
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
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            // Another candidate created it first.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        };
    };
    if !free_for(&lease, &cfg.identity) {
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
    match api
        .replace(&cfg.lease, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Wait until this candidate leads.
pub async fn acquire(api: &Api<Lease>, cfg: &LeaderConfig) {
    let mut waiting_logged = false;
    loop {
        match try_acquire(api, cfg).await {
            Ok(true) => {
                tracing::info!(identity = %cfg.identity, lease = %cfg.lease, "leading");
                return;
            }
            Ok(false) if !waiting_logged => {
                tracing::info!(identity = %cfg.identity, lease = %cfg.lease, "standing by: another operator leads");
                waiting_logged = true;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %crate::controller::error_chain(&e), "cannot read or take the lease")
            }
        }
        tokio::time::sleep(cfg.retry).await;
    }
}

/// Renew the Lease every `retry` while leading; returns when it could not be renewed within
/// `renew_deadline` (or another candidate holds it): the caller must stop acting.
pub async fn hold(api: &Api<Lease>, cfg: &LeaderConfig) {
    let mut renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(cfg.retry).await;
        match try_acquire(api, cfg).await {
            Ok(true) => renewed = tokio::time::Instant::now(),
            Ok(false) => {
                tracing::error!(lease = %cfg.lease, "another operator holds the lease");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %crate::controller::error_chain(&e), "cannot renew the lease");
            }
        }
        if renewed.elapsed() > cfg.renew_deadline {
            tracing::error!(lease = %cfg.lease, "the lease was not renewed in time");
            return;
        }
    }
}

/// Give the Lease up (a clean stop): a standby takes it at its next try.
pub async fn release(api: &Api<Lease>, cfg: &LeaderConfig) {
    let Ok(Some(mut lease)) = api.get_opt(&cfg.lease).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    spec.renew_time = None;
    spec.acquire_time = None;
    match api
        .replace(&cfg.lease, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => tracing::info!(lease = %cfg.lease, "released the lease"),
        Err(e) => tracing::warn!(error = %e, "cannot release the lease"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, renewed_secs_ago: i64) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(
                    Timestamp::from_second(Timestamp::now().as_second() - renewed_secs_ago)
                        .unwrap(),
                )),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn a_lease_is_free_when_unheld_mine_or_expired() {
        assert!(free_for(&lease(None, 0), "me"));
        assert!(free_for(&lease(Some("me"), 0), "me"));
        assert!(!free_for(&lease(Some("other"), 5), "me"));
        assert!(free_for(&lease(Some("other"), 20), "me"));
    }
}
