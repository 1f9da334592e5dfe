//! `endpoint-copier check` and `endpoint-copier status`: one-shot, read-only views for an operator.
//!
//! `check` answers "would the daemon work on this node?": config (already validated by `main`),
//! kubeconfig, API reachable, every right the daemon uses, grouped by the feature that uses it
//! (SelfSubjectAccessReview; a missing optional right is a warning naming what it disables), the
//! pairs with their refusals, the plan the leader would apply now (dry run), the slices on each
//! target that this copier group does not manage, the Lease holder and the group's members.
//! `status` answers "is it working?": the Lease, the group's members and, per pair, source and
//! target endpoint counts (ours and foreign apart) and whether they are in sync. Neither writes
//! anything but the access reviews (which the API evaluates without storing). Both print text or
//! JSON; `main` maps the verdict to the exit code.
//!
//! Files: this one holds the entry points and the order of the checks; `report.rs` the report
//! types; `permissions.rs` the rights per feature; `pairs.rs` the per-pair dry run and foreign
//! slices; `members.rs` the member Leases; `probes.rs` what this host and the members cannot
//! judge (abstentions, with the certificate's missing names) and the cap on probe targets;
//! `render.rs` the text form.

mod members;
mod pairs;
pub mod permissions;
mod probes;
pub mod remote;
mod render;
mod report;

use std::collections::BTreeSet;

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};

pub use permissions::Feature;
pub use render::render;
pub use report::{
    ConfiguredPair, ForeignReport, GroupReport, LeaseReport, MemberReport, PairReport, Permission,
    RefusalReport, Report, Verdict,
};

use crate::cli::Output;
use crate::config::Config;
use crate::group::Group;
use crate::probe::quorum::{Ballot, Count};

/// Why `check` or `status` could not produce a report. Problems the report lists are not
/// errors: they are the [`Verdict`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API request failed after the API answered once (it went down, or we may not read
    /// something).
    #[error("failed to {what}")]
    Api {
        /// What we tried.
        what: String,
        /// What the API said.
        #[source]
        source: kube::Error,
    },
    /// The JSON report could not be written.
    #[error("failed to write the JSON report")]
    Json(#[source] serde_json::Error),
}

impl Error {
    /// Whether the API refused the request for lack of a right (403).
    pub fn is_forbidden(&self) -> bool {
        matches!(self, Error::Api { source: kube::Error::Api(s), .. } if s.code == 403)
    }
}

/// Runs `endpoint-copier check`, prints its report and returns what it concluded.
///
/// # Errors
/// [`Error`] when the checks could not run at all or the report could not be written.
pub async fn check(
    config: &Config,
    files: &[std::path::PathBuf],
    output: Output,
) -> Result<Verdict, Error> {
    let mut report = check_report(config).await?;
    report.config_files = files.iter().map(|f| f.display().to_string()).collect();
    finish(&report, output)
}

/// Runs `endpoint-copier status`, prints its report and returns what it concluded.
///
/// # Errors
/// As [`check`].
pub async fn status(config: &Config, output: Output) -> Result<Verdict, Error> {
    finish(&status_report(config).await?, output)
}

/// What `check` finds, without printing it. An unusable kubeconfig or an unreachable API is a
/// problem in the report, not an error: that is exactly what an operator runs `check` to learn.
///
/// # Errors
/// [`Error::Api`] when a read the report needs fails after the API answered once (a read that
/// a missing right forbids is reported as that missing right instead).
pub async fn check_report(config: &Config) -> Result<Report, Error> {
    let mut report = Report::default();
    let Some(loaded) = connect(config, &mut report).await else {
        return Ok(report);
    };
    let client = loaded.client.clone();
    match tokio::time::timeout(crate::apply::REQUEST_TIMEOUT, client.apiserver_version()).await {
        Ok(Ok(v)) => report.server_version = Some(v.git_version),
        Ok(Err(e)) => {
            report.problems.push(format!(
                "cannot reach the API server: {}",
                crate::error::chain(&e)
            ));
            return Ok(report);
        }
        Err(_) => {
            report
                .problems
                .push("cannot reach the API server: no answer in 10 s".to_owned());
            return Ok(report);
        }
    }
    // The pairs first: the rights asked depend on their namespaces. Without the right to list
    // Services there are no pairs to inspect; the permissions below say so.
    let resolved = match pairs::resolve(&client, config).await {
        Ok(r) => Some(r),
        Err(e) if e.is_forbidden() => None,
        Err(e) => return Err(e),
    };
    let refs = match &resolved {
        Some(r) => r.pair_refs(),
        None => pairs::local_refs(config.pairs.iter().map(|p| (&p.sources, &p.target))),
    };
    let group = group_of(config);
    let wanted = permissions::wanted(&refs, &group, config.annotations.enabled);
    report.permissions = permissions::ask(&client, wanted).await?;
    let (problems, warnings) = permissions::findings(&report.permissions);
    report.problems.extend(problems);
    report.warnings.extend(warnings);
    election_lease_creation(&client, config, &mut report).await?;
    let may_list_members = report.permissions.iter().all(|p| {
        p.allowed
            || p.resource != "leases"
            || p.verb != "list"
            || !p.features.contains(&Feature::Members)
    });
    // The members first: their probe verdicts are the ballots the pairs' decisions count.
    members_into(&client, config, &group, may_list_members, &mut report).await;
    let count = count_of(&report);
    // A read that a missing right forbids is left out: that right is a problem above already.
    if let Some(resolved) = &resolved {
        // The VIP is probed as the hosts probe the endpoints: same TLS, credentials, timeout.
        let prober = match crate::probe::Prober::new(
            &loaded.config,
            config.probe.tls_server_name.as_deref(),
        ) {
            Ok(p) => Some(std::sync::Arc::new(p)),
            Err(e) => {
                report.problems.push(format!(
                    "cannot build the probes' TLS from the kubeconfig: {}",
                    crate::error::chain(&e)
                ));
                None
            }
        };
        match pairs::inspect(
            &client,
            config,
            resolved,
            &group.owner(),
            &count,
            prober.as_ref(),
            config.probe.timing.timeout,
        )
        .await
        {
            Ok((pairs, refused)) => {
                report.pairs = pairs;
                report.refused = refused;
            }
            Err(e) if e.is_forbidden() => {}
            Err(e) => return Err(e),
        }
        // Each endpoint once from here, as this host's daemon probes it: what it cannot judge
        // (a certificate without the endpoint's address names the SANs it has) is a problem.
        if let Some(prober) = &prober {
            probes::probe_endpoints(
                &mut report,
                prober,
                config.probe.timing.timeout,
                config.probe.max_targets,
            )
            .await;
        }
    }
    for r in &report.refused {
        report
            .problems
            .push(format!("pair for {} refused: {}", r.target, r.reason));
    }
    // The VIP serves every slice labelled for it: a foreign one adds addresses no copy of this
    // group controls, so it is a problem for `check` even while our own slices are in sync.
    for p in &report.pairs {
        for f in &p.foreign {
            report.problems.push(pairs::foreign_line(p, f));
        }
    }
    probe_findings(&mut report);
    probes::findings(&mut report, config.probe.max_targets, true);
    remotes_into(config, &mut report).await;
    report.lease = match lease(&client, config).await {
        Ok(l) => Some(l),
        Err(e) if e.is_forbidden() => None,
        Err(e) => return Err(e),
    };
    Ok(report)
}

/// What `status` finds, without printing it.
///
/// # Errors
/// As [`check_report`].
pub async fn status_report(config: &Config) -> Result<Report, Error> {
    let mut report = Report::default();
    let Some(loaded) = connect(config, &mut report).await else {
        return Ok(report);
    };
    let client = loaded.client;
    match lease(&client, config).await {
        Ok(l) => report.lease = Some(l),
        Err(e) => {
            report.problems.push(crate::error::chain(&e));
            return Ok(report);
        }
    }
    let group = group_of(config);
    members_into(&client, config, &group, true, &mut report).await;
    let count = count_of(&report);
    let resolved = pairs::resolve(&client, config).await?;
    let (pairs, refused) = pairs::inspect(
        &client,
        config,
        &resolved,
        &group.owner(),
        &count,
        None,
        config.probe.timing.timeout,
    )
    .await?;
    report.pairs = pairs;
    report.refused = refused;
    for p in report.pairs.iter().filter(|p| !p.in_sync) {
        report
            .problems
            .push(format!("{} is not in sync with {}", p.target, p.source));
    }
    for p in &report.pairs {
        for f in &p.foreign {
            report.warnings.push(pairs::foreign_line(p, f));
        }
    }
    probe_findings(&mut report);
    probes::findings(&mut report, config.probe.max_targets, false);
    remotes_into(config, &mut report).await;
    Ok(report)
}

/// Reaches every remote kubeconfig of the configured sources (`inspect::remote::check`, each request
/// bounded) and adds what keeps a source from being read to the problems: a remote source that
/// fails keeps its last endpoints in the target, but it no longer follows its cluster.
async fn remotes_into(config: &Config, report: &mut Report) {
    let sources = config.remote_sources();
    if sources.is_empty() {
        return;
    }
    report.remotes = remote::check(&sources, config.allow_insecure_tls).await;
    for reach in &report.remotes {
        report.problems.extend(reach.problems.iter().cloned());
        for source in &reach.sources {
            report.problems.extend(source.problems.iter().cloned());
        }
    }
}

/// What the Nodes do to each pair: a drained Node and a missing derived address are warnings
/// (someone planned the drain; a Node may lack an IPv6 address on purpose); a drain the leader
/// does not apply because it would empty the target is a problem.
fn node_findings(report: &mut Report) {
    for p in &report.pairs {
        for node in &p.drained_nodes {
            report.warnings.push(format!(
                "Node {node} is drained (annotation endpoint-copier/drain): its endpoints are not ready in {}",
                p.target
            ));
        }
        for gap in &p.node_gaps {
            report.warnings.push(format!("{}: {gap}", p.target));
        }
        if !p.kept.is_empty() && !p.drained_nodes.is_empty() {
            report.problems.push(format!(
                "drains and probe evictions would leave {} without a ready endpoint; {} stays ready",
                p.target,
                p.kept.join(", ")
            ));
        }
    }
}

/// The live members' ballots as read into `report.group`, counted (no members read: nothing
/// counted, so nothing is evicted in the report's plans).
fn count_of(report: &Report) -> Count {
    let ballots = report
        .group
        .as_ref()
        .and_then(|g| g.members.as_ref())
        .map(|m| members::ballots(m))
        .unwrap_or_default();
    let ballots: Vec<Ballot<'_>> = ballots
        .iter()
        .map(|(voter, verdicts)| Ballot {
            voter,
            live: true,
            verdicts,
        })
        .collect();
    Count::of(&ballots)
}

/// What the probes found: an evicted endpoint and a host presumed cut off are warnings (the
/// daemon is doing its job: someone should look at that apiserver or host); an endpoint kept
/// ready only because it is the last is a problem (a majority sees every endpoint down).
fn probe_findings(report: &mut Report) {
    node_findings(report);
    for p in &report.pairs {
        for e in &p.endpoints {
            let who = e.down.join(", ");
            match e.decision.as_str() {
                "evicted" => report.warnings.push(format!(
                    "{} is out of {} (not ready): {} of {} live hosts see it down ({who})",
                    e.address,
                    p.target,
                    e.down.len(),
                    e.counted
                )),
                "spared" => report.problems.push(format!(
                    "every endpoint of {} looks down; {} is kept ready only so that the target is never empty ({who} see it down)",
                    p.target, e.address
                )),
                _ => {}
            }
        }
        for v in p.vip.iter().filter(|v| !v.ok) {
            report.problems.push(format!(
                "{} does not answer through the VIP of {}: {}",
                v.probe, p.target, v.detail
            ));
        }
        for host in &p.presumed_cut_off {
            report.warnings.push(format!(
                "host {host} sees every endpoint of {} down: presumed cut off, its votes are not counted",
                p.target
            ));
        }
    }
}

/// The copier group of `config`, as the daemon forms it.
fn group_of(config: &Config) -> Group {
    Group::configured(config)
}

/// The right to create the election Lease is needed only while it does not exist (the shipped
/// RBAC creates it instead: a create cannot be narrowed to one name). When it is denied, reads
/// the Lease: missing, that is a problem — the daemon could not elect a leader.
async fn election_lease_creation(
    client: &Client,
    config: &Config,
    report: &mut Report,
) -> Result<(), Error> {
    let denied = report
        .permissions
        .iter()
        .any(|p| !p.allowed && p.features.contains(&Feature::LeaseCreation));
    if !denied {
        return Ok(());
    }
    let api: Api<Lease> = Api::namespaced(client.clone(), &config.lease.namespace);
    match api.get_opt(&config.lease.name).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => {
            report.problems.push(format!(
                "the election Lease {}/{} does not exist and this identity may not create it: the daemon cannot elect a leader (apply packaging/rbac/10-mirroring.yaml, which creates it)",
                config.lease.namespace, config.lease.name
            ));
            Ok(())
        }
        // A read we may not make is a missing permission reported above already.
        Err(kube::Error::Api(s)) if s.code == 403 => Ok(()),
        Err(source) => Err(Error::Api {
            what: format!(
                "read Lease {}/{}",
                config.lease.namespace, config.lease.name
            ),
            source,
        }),
    }
}

/// This host's identity in the group, as the daemon computes it.
fn identity(config: &Config) -> String {
    match &config.lease.identity {
        Some(id) => id.clone(),
        None => crate::host::hostname().unwrap_or_else(|_| "(unknown host name)".to_owned()),
    }
}

/// Reads the group's members into `report.group`, with their warnings. A failed read is a
/// problem (the leader cannot delete safely without them), unless `may_list` says the missing
/// right was reported already.
async fn members_into(
    client: &Client,
    config: &Config,
    group: &Group,
    may_list: bool,
    report: &mut Report,
) {
    let identity = identity(config);
    let members = if may_list {
        let now = jiff::Timestamp::now();
        match members::read(client, group, &identity, now, config.members.expiry).await {
            Ok(m) => Some(m),
            Err(e) => {
                report.problems.push(format!(
                    "cannot read the members of copier group {group}: {}",
                    crate::error::chain(&e)
                ));
                None
            }
        }
    } else {
        None
    };
    if let Some(m) = &members {
        let own: BTreeSet<ConfiguredPair> = config
            .pairs
            .iter()
            .map(|p| ConfiguredPair {
                source: p.record_source().to_string(),
                target: p.target.to_string(),
                digest: Some(crate::group::digest::PairDigest::of(p).to_string()),
            })
            .collect();
        report
            .warnings
            .extend(members::warnings(&identity, &own, m));
        report.problems.extend(members::problems(m));
    }
    report.group = Some(GroupReport {
        label: group.label_value().to_owned(),
        lease: group.to_string(),
        identity,
        members,
    });
}

/// Builds the client; on failure records the problem and returns `None`.
async fn connect(config: &Config, report: &mut Report) -> Option<crate::client::Loaded> {
    let built = match crate::client::locate(&config.kubeconfig) {
        Some(path) => crate::client::build(&path, config.allow_insecure_tls).await,
        None => Err(crate::client::Error::NotFound),
    };
    match built {
        Ok(loaded) => {
            report.kubeconfig = Some(loaded.path.display().to_string());
            report.server = Some(loaded.server.clone());
            report.problems.extend(loaded.warnings.iter().cloned());
            Some(loaded)
        }
        Err(e) => {
            report.problems.push(crate::error::chain(&e));
            None
        }
    }
}

async fn lease(client: &Client, config: &Config) -> Result<LeaseReport, Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &config.lease.namespace);
    let lease = api
        .get_opt(&config.lease.name)
        .await
        .map_err(|source| Error::Api {
            what: format!(
                "read Lease {}/{}",
                config.lease.namespace, config.lease.name
            ),
            source,
        })?;
    let spec = lease.and_then(|l| l.spec);
    let now = jiff::Timestamp::now();
    Ok(LeaseReport {
        lease: format!("{}/{}", config.lease.namespace, config.lease.name),
        holder: spec
            .as_ref()
            .and_then(|s| s.holder_identity.clone())
            .filter(|h| !h.is_empty()),
        renewed_secs_ago: spec
            .as_ref()
            .and_then(|s| s.renew_time.as_ref())
            .map(|t| (now - t.0).get_seconds()),
        transitions: spec.as_ref().and_then(|s| s.lease_transitions),
    })
}

fn finish(report: &Report, output: Output) -> Result<Verdict, Error> {
    match output {
        Output::Json => {
            let json = serde_json::to_string_pretty(report).map_err(Error::Json)?;
            println!("{json}");
        }
        Output::Text => print!("{}", render(report)),
    }
    Ok(Verdict::of(report))
}
