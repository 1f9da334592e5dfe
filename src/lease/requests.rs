//! The elector's requests: reading the Lease, writing a claim or renewal (create, or update with
//! the resourceVersion read), releasing it on shutdown, and the bookkeeping of a failed request
//! (backoff, warning). The loop that decides when to make them is `elector.rs`.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::Error;
use super::decide::{self, Decision, Role};
use super::elector::{BACKOFF_BASE, Elector};
use super::observed::{Observed, Sent};
use super::runtime;
use crate::names;

impl Elector {
    /// Timeout for the next request: a leader must not wait past its deadline; a follower has
    /// no deadline, the renew deadline is a generous bound.
    pub(super) fn request_timeout(&self) -> Duration {
        match self.role {
            Role::Leader { renewed_at } => decide::fence_until(renewed_at, &self.timing)
                .saturating_duration_since(Instant::now()),
            Role::Follower => self.timing.renew_deadline,
        }
        .max(Duration::from_millis(1))
    }

    pub(super) async fn read(&mut self) -> Result<(), Error> {
        let after = self.request_timeout();
        let lease = match tokio::time::timeout(after, self.api.get_opt(&self.settings.name)).await {
            Err(_) => Err(self.timeout("get", after)),
            Ok(result) => result.map_err(|source| self.request("get", source)),
        }?;
        self.failures = 0;
        self.retry_at = None;
        self.observe(lease);
        Ok(())
    }

    pub(super) async fn write(&mut self, decision: Decision) -> Result<(), Error> {
        let current = self.observed.as_ref().and_then(Observed::spec);
        let spec = decide::claim(
            current,
            &self.settings.identity,
            self.clock.now(),
            &self.timing,
        );
        let after = self.request_timeout();
        let params = PostParams {
            dry_run: false,
            field_manager: Some(names::FIELD_MANAGER.to_owned()),
        };
        // Our claim is as old as the moment the request leaves: peers may see it any time after.
        let sent = Instant::now();
        // Remembered before the request: if its reply is lost, seeing this record is how we
        // learn that it committed (see `recognise_own_write`).
        self.sent = Some(Sent {
            spec: spec.clone(),
            at: sent,
        });
        let (verb, result) = if decision == Decision::Create {
            let mut metadata = ObjectMeta {
                name: Some(self.settings.name.clone()),
                namespace: Some(self.settings.namespace.clone()),
                ..ObjectMeta::default()
            };
            runtime::mark_claim(
                self.runtime.as_ref(),
                self.nonce.as_deref(),
                &mut metadata,
                &spec,
            );
            let lease = Lease {
                metadata,
                spec: Some(spec),
            };
            (
                "create",
                tokio::time::timeout(after, self.api.create(&params, &lease)).await,
            )
        } else {
            // The body carries the resourceVersion we read: the API refuses it (409) if anyone
            // wrote in between, so two candidates can never both win.
            let mut lease = self
                .observed
                .as_ref()
                .and_then(|o| o.lease.clone())
                .unwrap_or_default();
            runtime::mark_claim(
                self.runtime.as_ref(),
                self.nonce.as_deref(),
                &mut lease.metadata,
                &spec,
            );
            lease.spec = Some(spec);
            let name = self.settings.name.clone();
            (
                "update",
                tokio::time::timeout(after, self.api.replace(&name, &params, &lease)).await,
            )
        };
        let result = match result {
            Err(_) => Err(self.timeout(verb, after)),
            Ok(r) => r.map_err(|source| self.request(verb, source)),
        };
        match result {
            Ok(lease) => {
                self.failures = 0;
                self.retry_at = None;
                self.written_rv = lease.metadata.resource_version.clone();
                self.written_before = true;
                self.observe(Some(lease));
                self.lead(sent);
                Ok(())
            }
            Err(e) if e.is_lost_race() => {
                debug!(lease = %self.lease_ref, error = %crate::error::chain(&e), "lease changed under us, re-reading");
                self.observed = None;
                Ok(())
            }
            Err(e) if e.is_transient() => {
                self.failed(&e);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    pub(super) fn failed(&mut self, error: &Error) {
        self.failures = self.failures.saturating_add(1);
        let wait = crate::backoff::delay(self.failures, BACKOFF_BASE, self.timing.retry_period);
        self.retry_at = Some(Instant::now() + wait);
        warn!(
            lease = %self.lease_ref,
            identity = %self.settings.identity,
            attempt = self.failures,
            backoff_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            error = %crate::error::chain(error),
            "lease request failed, retrying"
        );
    }

    /// Releases the Lease if the record as last read names us; best effort, bounded by the renew
    /// deadline (failure only means peers wait for expiry).
    pub(super) async fn release(&mut self) {
        let deadline = Instant::now() + self.timing.renew_deadline;
        let params = PostParams {
            dry_run: false,
            field_manager: Some(names::FIELD_MANAGER.to_owned()),
        };
        for _ in 0..3 {
            let Some(mut lease) = self.observed.as_ref().and_then(|o| o.lease.clone()) else {
                return;
            };
            let spec = lease.spec.clone().unwrap_or_default();
            // Only a record this process wrote: a twin's record naming us is not ours to end.
            if decide::holder(&spec) != Some(self.settings.identity.as_str()) || !self.wrote_it() {
                return;
            }
            lease.spec = Some(decide::release(&spec, self.clock.now()));
            if let Some(a) = lease.metadata.annotations.as_mut() {
                a.remove(decide::CLAIM_ANNOTATION);
            }
            let name = self.settings.name.clone();
            match tokio::time::timeout_at(deadline, self.api.replace(&name, &params, &lease)).await
            {
                Ok(Ok(lease)) => {
                    info!(lease = %self.lease_ref, identity = %self.settings.identity, "released lease");
                    self.observe(Some(lease));
                    return;
                }
                Ok(Err(source)) => {
                    let e = self.request("update", source);
                    if !e.is_transient() {
                        warn!(lease = %self.lease_ref, error = %crate::error::chain(&e), "could not release lease, peers wait for expiry");
                        return;
                    }
                    // A conflict means the record changed (our own renewal seen late, or a
                    // takeover): re-read, and release only if it still names us.
                    match tokio::time::timeout_at(deadline, self.api.get_opt(&name)).await {
                        Ok(Ok(lease)) => self.observe(lease),
                        _ => {
                            warn!(lease = %self.lease_ref, error = %crate::error::chain(&e), "could not release lease, peers wait for expiry");
                            return;
                        }
                    }
                }
                Err(_) => {
                    warn!(lease = %self.lease_ref, "lease release timed out, peers wait for expiry");
                    return;
                }
            }
        }
    }

    pub(super) fn timeout(&self, verb: &'static str, after: Duration) -> Error {
        Error::Timeout {
            verb,
            lease: self.lease_ref.clone(),
            after_ms: after.as_millis(),
        }
    }

    pub(super) fn request(&self, verb: &'static str, source: kube::Error) -> Error {
        Error::Request {
            verb,
            lease: self.lease_ref.clone(),
            source,
        }
    }
}
