//! Leader election with a `coordination.k8s.io/v1` Lease, so exactly one replica of a
//! controller writes at a time. Optimistic concurrency (resourceVersion) settles races:
//! of two candidates updating the same Lease, one gets a conflict and stays follower.
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, PostParams};
use std::time::Duration;
use tokio::sync::watch;

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This candidate's identity (the pod name).
    pub identity: String,
    /// How long a holder's claim lasts without renewal.
    pub lease_duration: Duration,
    /// How often the holder renews (well under `lease_duration`).
    pub renew_every: Duration,
}

pub struct LeaderElector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    leader: watch::Sender<bool>,
}

/// Whether `spec` is held by someone other than `me` and still valid at `now`.
pub fn held_by_other(spec: &LeaseSpec, me: &str, now: Timestamp) -> bool {
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder.is_empty() || holder == me {
        return false;
    }
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
    match spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) {
        Some(t) => t.0.saturating_add(duration).is_ok_and(|expiry| expiry > now),
        None => false,
    }
}

/// The spec `me` writes to an existing Lease whose spec is `current`: a renewal when
/// `me` holds it (acquire time and transition count kept), a takeover when it is free
/// or its holder's claim has expired (new acquire time, one more transition). `None`
/// while another holder's claim is valid: `me` must not write.
pub fn claim(mut current: LeaseSpec, me: &str, now: Timestamp, duration_secs: i32) -> Option<LeaseSpec> {
    if held_by_other(&current, me, now) {
        return None;
    }
    if current.holder_identity.as_deref() != Some(me) {
        current.holder_identity = Some(me.to_owned());
        current.acquire_time = Some(MicroTime(now));
        current.lease_transitions = Some(current.lease_transitions.unwrap_or(0) + 1);
    }
    current.renew_time = Some(MicroTime(now));
    current.lease_duration_seconds = Some(duration_secs);
    Some(current)
}

impl LeaderElector {
    pub fn new(client: Client, cfg: LeaseConfig) -> Self {
        let api = Api::namespaced(client, &cfg.namespace);
        LeaderElector { api, cfg, leader: watch::channel(false).0 }
    }

    /// Flips to `true` while this candidate leads.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leader.subscribe()
    }

    /// One election round: acquires a free or expired Lease, renews our own.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let me = self.cfg.identity.as_str();
        let secs = i32::try_from(self.cfg.lease_duration.as_secs()).unwrap_or(15);
        let Some(mut lease) = self.api.get_opt(&self.cfg.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.cfg.name.clone()), ..ObjectMeta::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me.to_owned()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let Some(spec) = claim(lease.spec.take().unwrap_or_default(), me, now, secs) else {
            return Ok(false);
        };
        lease.spec = Some(spec);
        // `replace` carries the resourceVersion we read: a concurrent update conflicts.
        match self.api.replace(&self.cfg.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Runs election rounds forever. Leadership is dropped when renewal has failed for
    /// a whole lease duration (another candidate may have taken over by then).
    pub async fn run(self) {
        let mut last_renewed: Option<tokio::time::Instant> = None;
        let mut tick = tokio::time::interval(self.cfg.renew_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let leading = match self.try_acquire_or_renew().await {
                Ok(true) => {
                    last_renewed = Some(tokio::time::Instant::now());
                    true
                }
                Ok(false) => false,
                Err(e) => {
                    tracing::warn!(lease = %self.cfg.name, error = %e, "lease renewal failed");
                    last_renewed.is_some_and(|t| t.elapsed() < self.cfg.lease_duration)
                }
            };
            if !leading {
                last_renewed = None;
            }
            if *self.leader.borrow() != leading {
                tracing::info!(lease = %self.cfg.name, identity = %self.cfg.identity, leading, "leadership changed");
                self.leader.send_replace(leading);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed: &str) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(renewed.parse().expect("time"))),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn lease_ownership() {
        let now: Timestamp = "2026-01-01T00:00:10Z".parse().expect("time");
        assert!(held_by_other(&spec("other", "2026-01-01T00:00:00Z"), "me", now), "valid for 5 more seconds");
        assert!(!held_by_other(
            &spec("other", "2026-01-01T00:00:00Z"),
            "me",
            "2026-01-01T00:00:16Z".parse().expect("t")
        ));
        assert!(!held_by_other(&spec("me", "2026-01-01T00:00:09Z"), "me", now));
        assert!(!held_by_other(&spec("", "2026-01-01T00:00:09Z"), "me", now));
        assert!(!held_by_other(&LeaseSpec::default(), "me", now));
    }

    #[test]
    fn claims_renew_take_over_or_back_off() {
        let t = |s: &str| -> Timestamp { s.parse().expect("time") };
        let acquired = MicroTime(t("2026-01-01T00:00:00Z"));
        let held = |holder: &str, renewed: &str| LeaseSpec {
            acquire_time: Some(acquired.clone()),
            lease_transitions: Some(3),
            ..spec(holder, renewed)
        };

        // Our own lease: renewed, same acquire time and transitions.
        let now = t("2026-01-01T00:00:10Z");
        let renewed = claim(held("me", "2026-01-01T00:00:08Z"), "me", now, 15).expect("ours");
        assert_eq!(renewed.holder_identity.as_deref(), Some("me"));
        assert_eq!(renewed.renew_time, Some(MicroTime(now)));
        assert_eq!(renewed.acquire_time, Some(acquired.clone()));
        assert_eq!(renewed.lease_transitions, Some(3));

        // Another holder within its lease: back off, write nothing.
        assert_eq!(claim(held("other", "2026-01-01T00:00:08Z"), "me", now, 15), None);

        // Another holder that stopped renewing: taken over, counted as a transition.
        let later = t("2026-01-01T00:00:30Z");
        let taken = claim(held("other", "2026-01-01T00:00:08Z"), "me", later, 20).expect("expired");
        assert_eq!(taken.holder_identity.as_deref(), Some("me"));
        assert_eq!(taken.acquire_time, Some(MicroTime(later)));
        assert_eq!(taken.renew_time, Some(MicroTime(later)));
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.lease_duration_seconds, Some(20), "our configured duration is written");

        // A released (holder-less) lease: taken at once.
        let released = LeaseSpec { holder_identity: None, ..held("", "2026-01-01T00:00:09Z") };
        assert_eq!(claim(released, "me", now, 15).and_then(|s| s.holder_identity), Some("me".into()));
    }
}
