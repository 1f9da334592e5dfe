//! `endpoint-copier check` and `endpoint-copier status`: one-shot, read-only views for an operator.
//!
//! `check` answers "would the daemon work on this node?": config (already validated by `main`),
//! kubeconfig, API reachable, every permission the daemon needs (SelfSubjectAccessReview), the
//! pairs with their refusals, the plan the leader would apply now (dry run) and the Lease holder.
//! `status` answers "is it working?": the Lease and, per pair, source and target endpoint counts
//! and whether they are in sync. Neither writes anything but the access reviews (which the API
//! evaluates without storing). Both print text or JSON; `main` maps the result to the exit code.

use crate::daemon::pair::{Phase, plan_for};
use crate::group::Group;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use serde::Serialize;

use crate::cli::Output;
use crate::config::Config;
use crate::desired;
use crate::names::{self, ServiceRef};
use crate::pairs;

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

/// What a printed report concluded, for `main` to turn into the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to fix.
    Ok,
    /// This many `problem:` lines were printed.
    Problems(usize),
}

impl Verdict {
    /// The verdict of a report: [`Verdict::Ok`] when it lists no problem.
    pub fn of(report: &Report) -> Verdict {
        match report.problems.len() {
            0 => Verdict::Ok,
            n => Verdict::Problems(n),
        }
    }
}

/// One permission the daemon needs.
#[derive(Debug, Clone, Serialize)]
pub struct Permission {
    /// Kubernetes verb.
    pub verb: &'static str,
    /// API group ("" for core).
    pub group: &'static str,
    /// Resource (plural).
    pub resource: &'static str,
    /// Namespace, or `None` for all namespaces.
    pub namespace: Option<String>,
    /// Whether the API allows it.
    pub allowed: bool,
}

/// What `check` and `status` found about one pair.
#[derive(Debug, Clone, Serialize)]
pub struct PairReport {
    /// Target Service.
    pub target: String,
    /// Source Service.
    pub source: String,
    /// Where it comes from: config or annotation.
    pub origin: String,
    /// Ready endpoints in the source's slices.
    pub source_endpoints: usize,
    /// Ready endpoints in the target's slices.
    pub target_endpoints: usize,
    /// Whether the leader would write nothing now.
    pub in_sync: bool,
    /// Why nothing would be written (fail-static), if so.
    pub holding: Option<String>,
    /// The writes the leader would make now.
    pub plan: Vec<String>,
}

/// A refused pair.
#[derive(Debug, Clone, Serialize)]
pub struct RefusalReport {
    /// Target Service.
    pub target: String,
    /// The reason, as logged.
    pub reason: String,
}

/// The Lease as read.
#[derive(Debug, Clone, Serialize)]
pub struct LeaseReport {
    /// `namespace/name`.
    pub lease: String,
    /// Current holder, if any.
    pub holder: Option<String>,
    /// Seconds since the holder last renewed, by the holder's clock (approximate).
    pub renewed_secs_ago: Option<i64>,
    /// Holder changes so far.
    pub transitions: Option<i32>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    /// Config drop-ins merged, in merge order.
    pub config_files: Vec<String>,
    /// The kubeconfig used.
    pub kubeconfig: Option<String>,
    /// API server URL.
    pub server: Option<String>,
    /// API server version.
    pub server_version: Option<String>,
    /// Permissions checked (check only).
    pub permissions: Vec<Permission>,
    /// Active pairs.
    pub pairs: Vec<PairReport>,
    /// Refused pairs.
    pub refused: Vec<RefusalReport>,
    /// The Lease.
    pub lease: Option<LeaseReport>,
    /// One line per problem; empty when all is well.
    pub problems: Vec<String>,
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
/// [`Error::Api`] when a read the report needs fails after the API answered once.
pub async fn check_report(config: &Config) -> Result<Report, Error> {
    let mut report = Report::default();
    let Some(client) = connect(config, &mut report).await else {
        return Ok(report);
    };
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
    report.permissions = permissions(&client, config).await?;
    for p in report.permissions.iter().filter(|p| !p.allowed) {
        let group = if p.group.is_empty() {
            String::new()
        } else {
            format!(".{}", p.group)
        };
        report.problems.push(format!(
            "missing permission: {} {}{group} in {}",
            p.verb,
            p.resource,
            p.namespace.as_deref().unwrap_or("all namespaces"),
        ));
    }
    inspect_pairs(&client, config, &mut report).await?;
    for r in &report.refused {
        report
            .problems
            .push(format!("pair for {} refused: {}", r.target, r.reason));
    }
    report.lease = Some(lease(&client, config).await?);
    Ok(report)
}

/// What `status` finds, without printing it.
///
/// # Errors
/// As [`check_report`].
pub async fn status_report(config: &Config) -> Result<Report, Error> {
    let mut report = Report::default();
    let Some(client) = connect(config, &mut report).await else {
        return Ok(report);
    };
    match lease(&client, config).await {
        Ok(l) => report.lease = Some(l),
        Err(e) => {
            report.problems.push(crate::error::chain(&e));
            return Ok(report);
        }
    }
    inspect_pairs(&client, config, &mut report).await?;
    for p in report.pairs.iter().filter(|p| !p.in_sync) {
        report
            .problems
            .push(format!("{} is not in sync with {}", p.target, p.source));
    }
    Ok(report)
}

/// Builds the client; on failure records the problem and returns `None`.
async fn connect(config: &Config, report: &mut Report) -> Option<Client> {
    let built = match crate::client::locate(&config.kubeconfig) {
        Some(path) => crate::client::build(&path, config.allow_insecure_tls).await,
        None => Err(crate::client::Error::NotFound),
    };
    match built {
        Ok(loaded) => {
            report.kubeconfig = Some(loaded.path.display().to_string());
            report.server = Some(loaded.server.clone());
            report.problems.extend(loaded.warnings.iter().cloned());
            Some(loaded.client)
        }
        Err(e) => {
            report.problems.push(crate::error::chain(&e));
            None
        }
    }
}

/// The permissions the daemon uses, each asked of the API.
async fn permissions(client: &Client, config: &Config) -> Result<Vec<Permission>, Error> {
    let lease_ns = Some(config.lease.namespace.clone());
    let mut wanted: Vec<(&'static str, &'static str, &'static str, Option<String>)> = vec![
        ("list", "", "services", None),
        ("watch", "", "services", None),
        ("get", "coordination.k8s.io", "leases", lease_ns.clone()),
        ("watch", "coordination.k8s.io", "leases", lease_ns.clone()),
        ("create", "coordination.k8s.io", "leases", lease_ns.clone()),
        ("update", "coordination.k8s.io", "leases", lease_ns),
    ];
    // Annotated pairs can be in any namespace: then the cluster-wide grant is the one that
    // matters (and implies every namespace's). Otherwise, each configured target's namespace.
    let mut namespaces: Vec<Option<String>> = if config.annotations.enabled {
        vec![None]
    } else {
        config
            .pairs
            .iter()
            .map(|p| Some(p.target.namespace.clone()))
            .collect()
    };
    namespaces.sort();
    namespaces.dedup();
    for ns in namespaces {
        for verb in ["list", "watch", "create", "update", "delete"] {
            wanted.push((verb, "discovery.k8s.io", "endpointslices", ns.clone()));
        }
        wanted.push(("create", "events.k8s.io", "events", ns.clone()));
        wanted.push(("patch", "events.k8s.io", "events", ns.clone()));
        wanted.push(("get", "", "endpoints", ns.clone()));
        wanted.push(("delete", "", "endpoints", ns));
    }
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let mut out = Vec::new();
    for (verb, group, resource, namespace) in wanted {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(verb.into()),
                    group: Some(group.into()),
                    resource: Some(resource.into()),
                    namespace: namespace.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|source| Error::Api {
                what: format!("ask whether we may {verb} {resource}"),
                source,
            })?;
        let allowed = answer.status.is_some_and(|s| s.allowed);
        out.push(Permission {
            verb,
            group,
            resource,
            namespace,
            allowed,
        });
    }
    Ok(out)
}

async fn inspect_pairs(client: &Client, config: &Config, report: &mut Report) -> Result<(), Error> {
    let services: Api<Service> = Api::all(client.clone());
    let list = services
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::Api {
            what: "list Services".into(),
            source,
        })?;
    let configured: Vec<(ServiceRef, ServiceRef)> = config
        .pairs
        .iter()
        .map(|p| (p.source.clone(), p.target.clone()))
        .collect();
    let mut known: BTreeMap<ServiceRef, Service> = BTreeMap::new();
    for svc in list.items {
        if let Some(r) = crate::watch::service_ref(&svc) {
            let annotated = svc
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(names::ANNOTATION_ENABLED));
            if annotated || configured.iter().any(|(_, t)| *t == r) {
                known.insert(r, svc);
            }
        }
    }
    let resolution = pairs::resolve(
        &configured,
        config.annotations.enabled,
        &config.annotations.allowed_sources,
        &known,
    );
    for r in resolution.refusals {
        report.refused.push(RefusalReport {
            target: r.target.to_string(),
            reason: r.reason.to_string(),
        });
    }
    let owner = Group::new(&config.lease.namespace, &config.lease.name).owner();
    for pair in resolution.pairs {
        let source_slices = slices_of(client, &pair.source).await?;
        let actual = slices_of(client, &pair.target).await?;
        // The engine's own decision, from the same inputs.
        let phase = Phase::Active {
            source: pair.source.clone(),
        };
        let (plan, holding) = match plan_for(
            &phase,
            &pair.target,
            &known,
            &source_slices,
            &actual,
            &owner,
        ) {
            Ok(step) if step.clears_target => (
                step.plan,
                Some(format!("target Service {} does not exist", pair.target)),
            ),
            Ok(step) => (step.plan, None),
            Err(hold) => (desired::Plan::default(), Some(hold.to_string())),
        };
        let mut lines = Vec::new();
        for s in &plan.creates {
            lines.push(format!(
                "create {}",
                s.metadata.name.as_deref().unwrap_or("?")
            ));
        }
        for s in &plan.updates {
            lines.push(format!(
                "update {}",
                s.metadata.name.as_deref().unwrap_or("?")
            ));
        }
        for d in &plan.deletes {
            lines.push(format!("delete {}", d.name));
        }
        report.pairs.push(PairReport {
            target: pair.target.to_string(),
            source: pair.source.to_string(),
            origin: format!("{:?}", pair.origin).to_lowercase(),
            source_endpoints: desired::ready_endpoints(&source_slices),
            target_endpoints: desired::ready_endpoints(&actual),
            in_sync: plan.is_empty() && holding.is_none(),
            holding,
            plan: lines,
        });
    }
    Ok(())
}

async fn slices_of(client: &Client, service: &ServiceRef) -> Result<Vec<EndpointSlice>, Error> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), &service.namespace);
    let lp =
        ListParams::default().labels(&format!("{}={}", names::SERVICE_NAME_LABEL, service.name));
    api.list(&lp)
        .await
        .map(|l| l.items)
        .map_err(|source| Error::Api {
            what: format!("list the EndpointSlices of {service}"),
            source,
        })
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

/// The text form of a report.
pub fn render(report: &Report) -> String {
    let mut s = String::new();
    if !report.config_files.is_empty() {
        let _ = writeln!(s, "config: {}", report.config_files.join(", "));
    }
    if let Some(k) = &report.kubeconfig {
        let _ = writeln!(s, "kubeconfig: {k}");
    }
    if let Some(server) = &report.server {
        let _ = match &report.server_version {
            Some(version) => writeln!(s, "api server: {server} {version}"),
            None => writeln!(s, "api server: {server}"),
        };
    }
    if !report.permissions.is_empty() {
        let denied = report.permissions.iter().filter(|p| !p.allowed).count();
        let _ = writeln!(
            s,
            "permissions: {} checked, {} missing",
            report.permissions.len(),
            denied
        );
    }
    if let Some(l) = &report.lease {
        let _ = writeln!(
            s,
            "lease {}: holder {}, renewed {} ago, {} transitions",
            l.lease,
            l.holder.as_deref().unwrap_or("(none)"),
            l.renewed_secs_ago
                .map_or_else(|| "never".to_owned(), |x| format!("{x}s")),
            l.transitions.unwrap_or(0),
        );
    }
    for p in &report.pairs {
        let state = if p.in_sync {
            "in sync".to_owned()
        } else if let Some(h) = &p.holding {
            format!("holding: {h}")
        } else {
            "out of sync".to_owned()
        };
        let _ = writeln!(
            s,
            "pair {} <- {} ({}): source {} ready, target {} ready, {state}",
            p.target, p.source, p.origin, p.source_endpoints, p.target_endpoints
        );
        for line in &p.plan {
            let _ = writeln!(s, "  would {line}");
        }
    }
    for r in &report.refused {
        let _ = writeln!(s, "refused {}: {}", r.target, r.reason);
    }
    for p in &report.problems {
        let _ = writeln!(s, "problem: {p}");
    }
    if report.problems.is_empty() {
        let _ = writeln!(s, "ok");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            config_files: vec!["/usr/lib/endpoint-copier/config.d/10-defaults.toml".into()],
            kubeconfig: Some("/etc/rancher/rke2/rke2.yaml".into()),
            server: Some("https://127.0.0.1:6443/".into()),
            server_version: Some("v1.33.5+rke2r1".into()),
            permissions: vec![Permission {
                verb: "list",
                group: "",
                resource: "services",
                namespace: None,
                allowed: true,
            }],
            pairs: vec![PairReport {
                target: "default/kubernetes-vip".into(),
                source: "default/kubernetes".into(),
                origin: "config".into(),
                source_endpoints: 3,
                target_endpoints: 2,
                in_sync: false,
                holding: None,
                plan: vec!["update kubernetes-vip".into()],
            }],
            refused: vec![],
            lease: Some(LeaseReport {
                lease: "kube-system/endpoint-copier".into(),
                holder: Some("cp-1".into()),
                renewed_secs_ago: Some(1),
                transitions: Some(4),
            }),
            problems: vec![],
        }
    }

    #[test]
    fn the_text_report_reads_top_down_and_ends_with_ok() {
        assert_eq!(
            render(&report()),
            "config: /usr/lib/endpoint-copier/config.d/10-defaults.toml
kubeconfig: /etc/rancher/rke2/rke2.yaml
api server: https://127.0.0.1:6443/ v1.33.5+rke2r1
permissions: 1 checked, 0 missing
lease kube-system/endpoint-copier: holder cp-1, renewed 1s ago, 4 transitions
pair default/kubernetes-vip <- default/kubernetes (config): source 3 ready, target 2 ready, out of sync
  would update kubernetes-vip
ok
"
        );
    }

    #[test]
    fn problems_are_one_line_each_and_replace_ok() {
        let mut r = report();
        r.problems = vec![
            "missing permission: update endpointslices.discovery.k8s.io in all namespaces".into(),
        ];
        let text = render(&r);
        assert!(text.ends_with("problem: missing permission: update endpointslices.discovery.k8s.io in all namespaces\n"), "{text}");
        assert!(!text.contains("\nok\n"));
        assert_eq!(Verdict::of(&r), Verdict::Problems(1));
        assert_eq!(Verdict::of(&report()), Verdict::Ok);
    }

    #[test]
    fn no_line_ends_in_a_space_when_the_server_version_is_unknown() {
        let mut r = report();
        r.server_version = None;
        let text = render(&r);
        assert!(
            text.contains("api server: https://127.0.0.1:6443/\n"),
            "{text}"
        );
        assert!(text.lines().all(|l| !l.ends_with(' ')), "{text:?}");
    }
}
