//! The member publisher: the task that keeps this copy's member Lease equal to its latest
//! [`MemberRecord`] and renewed every heartbeat, for as long as the daemon runs.
//!
//! It never gives up: a record the API refuses (400, 422: too big, or refused by a policy) is
//! written again with a smaller budget (`wire::encode`), down to no verdicts at all, and every
//! other failure is retried with capped jittered backoff. What happens is put into
//! [`SelfHealth`] for the engine to report (STATUS, `/readyz`, the metric
//! `endpoint_copier_member_publisher_up`): a copy whose record is not written is not a voter,
//! and must not look like one. It also watches for a twin: after its own first write, a re-read
//! that shows our member Lease written by another process under our identity (another nonce)
//! proves that process alive, since a dead predecessor's requests carry a resourceVersion our
//! write made stale (`twins.rs`).
//!
//! The record's content comes from the engine through a `watch` channel; the Lease itself is
//! built by `member.rs`. On shutdown the object is left in place: a restart must not look like
//! the member left.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::health::{SeenOn, SelfHealth, TwinSeen, Written};
use super::member::{
    Error, MIN_WRITE_GAP, MemberRecord, member_lease_within, member_name, request, timeout,
};
use super::wire::{Form, MIN_BUDGET, RECORD_BUDGET};
use super::{Group, Settings};
use crate::clock::Clock;
use crate::names;

/// The request timeout of the publisher: a heartbeat, but at least 1 s (a request slower than a
/// heartbeat is late anyway; the next one carries fresher content).
fn request_timeout(settings: &Settings) -> Duration {
    settings.heartbeat.max(Duration::from_secs(1))
}

/// Keeps `record.identity`'s member Lease in `group` equal to the latest `record` and renewed
/// every `settings.heartbeat` (its renewals stamped by `clock`), until `shutdown` is cancelled;
/// reports to `health`.
///
/// Each write is a PUT carrying the resourceVersion last read or written (409: re-read and
/// retry), or a create when the object is missing (and, when the member namespace itself is
/// missing, one attempt to create it). A change of `record` is written at once, but not sooner
/// than [`MIN_WRITE_GAP`] after the previous write; a dropped sender just freezes the content.
/// Failures are retried with capped jittered backoff (`backoff::delay` from 200 ms, capped at
/// one heartbeat), with one warning per failure streak and a notice when it ends.
///
/// `api` may be scoped to any namespace: requests use the group's member namespace.
pub async fn publish(
    api: kube::Api<Lease>,
    group: Group,
    mut record: watch::Receiver<MemberRecord>,
    settings: Settings,
    health: SelfHealth,
    clock: Clock,
    shutdown: CancellationToken,
) {
    let client = api.into_client();
    let mut publisher = Publisher {
        api: Api::namespaced(client.clone(), group.members_namespace()),
        namespaces: Api::all(client),
        group,
        settings,
        health,
        clock,
        current: None,
        failures: 0,
        warned: false,
        budget: RECORD_BUDGET,
        written_once: false,
        last_form: None,
        namespace_tried: false,
    };
    let mut sender_alive = true;
    // Write at once: our first heartbeat is how the leader learns we exist.
    let mut next = Instant::now();
    // A changed record is written at once, but never before the backoff of a failure has passed.
    let mut not_before = next;
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            changed = record.changed(), if sender_alive => {
                if changed.is_err() {
                    // The content is frozen; keep renewing it.
                    sender_alive = false;
                    continue;
                }
                next = Instant::now().max(not_before);
            }
            () = sleep_until(next) => {
                let mut content = record.borrow_and_update().clone();
                // Our own word on a twin travels with every write while it is remembered.
                content.twin = publisher.health.twin_mark(Instant::now());
                let outcome = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return,
                    outcome = publisher.write(&content) => outcome,
                };
                (next, not_before) = match outcome {
                    // A changed record waits MIN_WRITE_GAP after a write: a burst of verdict
                    // changes becomes one write, and a flapping endpoint costs at most
                    // 1 / MIN_WRITE_GAP writes a second.
                    Ok(sent) => (
                        sent + publisher.settings.heartbeat,
                        Instant::now() + MIN_WRITE_GAP,
                    ),
                    Err(_) => {
                        let retry = Instant::now() + publisher.backoff();
                        (retry, retry)
                    }
                };
            }
        }
    }
}

/// The publisher's state between writes.
struct Publisher {
    api: Api<Lease>,
    /// For creating the member namespace when it is missing.
    namespaces: Api<Namespace>,
    group: Group,
    settings: Settings,
    health: SelfHealth,
    /// The wall clock renewals are stamped with.
    clock: Clock,
    /// The member Lease as last read or written (`None`: unknown, read it first).
    current: Option<Lease>,
    /// Consecutive failed attempts (0 after a success).
    failures: u32,
    /// Whether this failure streak was logged as a warning (once per streak).
    warned: bool,
    /// Bytes the record's annotations may take: [`RECORD_BUDGET`], lowered for the rest of the
    /// process's life each time the API refuses a record.
    budget: usize,
    /// Whether a write of ours succeeded: from then on, a record of our identity written by
    /// another nonce is a live twin's.
    written_once: bool,
    /// The form of the last record written, to log a change of form once.
    last_form: Option<(Form, usize)>,
    /// Whether creating the missing member namespace was tried already.
    namespace_tried: bool,
}

impl Publisher {
    /// One write: read if needed, then create or update. Returns when the write was sent.
    async fn write(&mut self, record: &MemberRecord) -> Result<Instant, Error> {
        let name = member_name(&self.group, &record.identity);
        let lease_ref = format!("{}/{name}", self.group.members_namespace());
        let (lease, encoded) = member_lease_within(
            &self.group,
            record,
            self.settings.expiry,
            self.clock.now(),
            self.budget,
        )?;
        let result = self.send(record, &name, &lease_ref, lease).await;
        let now = Instant::now();
        match result {
            Ok((sent, written)) => {
                if self.warned {
                    info!(lease = %lease_ref, identity = %record.identity, attempt = self.failures, "member Lease written again");
                }
                self.failures = 0;
                self.warned = false;
                self.written_once = true;
                self.current = Some(written);
                self.note_form(
                    &lease_ref,
                    encoded.form,
                    encoded.omitted.up + encoded.omitted.down,
                );
                self.health.written(
                    Written {
                        form: encoded.form,
                        omitted: encoded.omitted,
                        bytes: encoded.bytes,
                        budget: self.budget,
                    },
                    now,
                );
                Ok(sent)
            }
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                // 409 (stale resourceVersion, or AlreadyExists on create) and 404 (deleted under
                // us) mean our copy is stale: read again before the next attempt.
                if matches!(e.code(), Some(404 | 409)) {
                    self.current = None;
                }
                if e.is_refused() {
                    self.shrink(&lease_ref, encoded.bytes, &e);
                }
                // A lone 409 is a lost race, not trouble: it neither fails the publisher nor
                // warns; only the first other failure of a streak is a warning.
                let lost_race = matches!(e.code(), Some(409)) && self.failures == 1;
                if !lost_race {
                    self.health.failed(crate::error::chain(&e), now);
                }
                if !self.warned && !lost_race {
                    self.warned = true;
                    warn!(lease = %lease_ref, identity = %record.identity, error = %crate::error::chain(&e), "member Lease write failed, retrying");
                } else {
                    debug!(lease = %lease_ref, attempt = self.failures, error = %crate::error::chain(&e), "member Lease write failed again");
                }
                Err(e)
            }
        }
    }

    /// Sends `lease` (create, or update with the resourceVersion we hold), reading first when
    /// we hold nothing; returns when the request left and what the API stored.
    async fn send(
        &mut self,
        record: &MemberRecord,
        name: &str,
        lease_ref: &str,
        mut lease: Lease,
    ) -> Result<(Instant, Lease), Error> {
        let after = request_timeout(&self.settings);
        let params = PostParams {
            dry_run: false,
            field_manager: Some(names::FIELD_MANAGER.to_owned()),
        };
        if self.current.is_none() {
            let read = tokio::time::timeout(after, self.api.get_opt(name))
                .await
                .map_err(|_| timeout("get", lease_ref, after))?
                .map_err(|source| request("get", lease_ref, source))?;
            if let Some(existing) = &read {
                self.check_writer(existing, record, lease_ref);
            }
            self.current = Some(read.unwrap_or_default());
        }
        let sent = Instant::now();
        let existing_rv = self
            .current
            .as_ref()
            .and_then(|l| l.metadata.resource_version.clone());
        let written = match existing_rv {
            None => {
                let created = tokio::time::timeout(after, self.api.create(&params, &lease))
                    .await
                    .map_err(|_| timeout("create", lease_ref, after))?;
                match created {
                    Err(kube::Error::Api(s)) if is_namespace_missing(&s) => {
                        self.create_namespace().await;
                        Err(request("create", lease_ref, kube::Error::Api(s)))
                    }
                    other => other.map_err(|source| request("create", lease_ref, source)),
                }?
            }
            Some(rv) => {
                // The resourceVersion we read: a concurrent writer (a twin, a person) makes
                // this a 409 instead of a silent overwrite of what we did not see.
                lease.metadata.resource_version = Some(rv);
                tokio::time::timeout(after, self.api.replace(name, &params, &lease))
                    .await
                    .map_err(|_| timeout("update", lease_ref, after))?
                    .map_err(|source| request("update", lease_ref, source))?
            }
        };
        Ok((sent, written))
    }

    /// Looks at who wrote the member Lease we just read: another identity (two identities
    /// sharing a member name: overwritten, with a warning), or our identity under another
    /// nonce after our own first write (a live twin: reported).
    fn check_writer(&mut self, existing: &Lease, record: &MemberRecord, lease_ref: &str) {
        let holder = existing
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref());
        if holder.is_some_and(|h| h != record.identity) {
            warn!(lease = %lease_ref, identity = %record.identity, holder = holder.unwrap_or(""), "member Lease names another identity, overwriting it (two identities with the same member name?)");
            return;
        }
        let theirs = existing
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(names::MEMBER_NONCE_ANNOTATION))
            .cloned();
        if !self.written_once || holder.is_none() || theirs == record.nonce {
            return;
        }
        let now = Instant::now();
        if self.health.twin(now).is_none() {
            error!(
                lease = %lease_ref,
                identity = %record.identity,
                nonce = record.nonce.as_deref().unwrap_or("-"),
                twin = theirs.as_deref().unwrap_or("-"),
                "another live process writes this copy's member Lease under the same identity; the ballots of this identity are not counted until one of them stops (two hosts with one host name, a cloned machine?)"
            );
        }
        self.health.twin_seen(TwinSeen {
            on: SeenOn::MemberLease,
            nonce: theirs,
            pid: None,
            at: now,
        });
    }

    /// The API refused a record of `bytes` bytes: the next one gets a quarter of the budget,
    /// then none for verdicts at all (the pairs always go).
    fn shrink(&mut self, lease_ref: &str, bytes: usize, e: &Error) {
        let next = if self.budget > MIN_BUDGET {
            (self.budget / 4).max(MIN_BUDGET)
        } else {
            0
        };
        if next == self.budget {
            return;
        }
        warn!(
            lease = %lease_ref,
            bytes,
            budget = next,
            error = %crate::error::chain(e),
            "the API refused this copy's member record; writing a smaller one (verdicts left out count as abstentions)"
        );
        self.budget = next;
    }

    /// Logs a change of the record's form: leaving verdicts out is a warning (this copy's
    /// ballot abstains on them), the lossless forms only debug.
    fn note_form(&mut self, lease_ref: &str, form: Form, omitted: usize) {
        if self.last_form == Some((form, omitted)) {
            return;
        }
        let was_partial = self.last_form.is_some_and(|(f, _)| f == Form::Partial);
        self.last_form = Some((form, omitted));
        if form == Form::Partial && !was_partial {
            warn!(lease = %lease_ref, omitted, budget = self.budget, "member record over its size budget: verdicts left out (down first), this copy abstains on them");
        } else if form != Form::Partial && was_partial {
            info!(lease = %lease_ref, ?form, "member record fits its size budget again");
        } else {
            debug!(lease = %lease_ref, ?form, omitted, "member record form");
        }
    }

    /// Creates the member namespace, once per process: the node kubeconfig may; a dedicated
    /// identity gets it from `packaging/rbac/20-members.yaml` instead.
    async fn create_namespace(&mut self) {
        if self.namespace_tried {
            return;
        }
        self.namespace_tried = true;
        let namespace = self.group.members_namespace().to_owned();
        let object = Namespace {
            metadata: ObjectMeta {
                name: Some(namespace.clone()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/name".to_owned(),
                    names::NAME.to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        let params = PostParams {
            dry_run: false,
            field_manager: Some(names::FIELD_MANAGER.to_owned()),
        };
        let after = request_timeout(&self.settings);
        match tokio::time::timeout(after, self.namespaces.create(&params, &object)).await {
            Ok(Ok(_)) => {
                info!(namespace = %namespace, "created the namespace of the member Leases")
            }
            Ok(Err(kube::Error::Api(s))) if s.code == 409 => {}
            Ok(Err(e)) => warn!(
                namespace = %namespace,
                error = %crate::error::chain(&e),
                "the namespace of the member Leases does not exist and could not be created: apply packaging/rbac/20-members.yaml, or set [members] namespace"
            ),
            Err(_) => {
                warn!(namespace = %namespace, "creating the namespace of the member Leases timed out")
            }
        }
    }

    /// The wait before the next attempt after `failures` failures in a row.
    fn backoff(&self) -> Duration {
        crate::backoff::delay(
            self.failures,
            Duration::from_millis(200),
            self.settings.heartbeat,
        )
    }
}

/// Whether a create failed because its namespace does not exist (the NamespaceLifecycle
/// admission plugin's 404 names the namespace, kind `namespaces`).
fn is_namespace_missing(status: &kube::core::Status) -> bool {
    status.code == 404
        && status
            .details
            .as_ref()
            .is_some_and(|d| d.kind == "namespaces")
}
