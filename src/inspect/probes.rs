//! What `check` and `status` say about the probes beyond the votes: the endpoints this host
//! cannot judge (from one probe `check` sends to each, the way this host's daemon would: the
//! node's credentials only for what this host's config probes), the endpoints other hosts
//! abstain on (from their member records), and probe targets over `[probe] max_targets`.
//!
//! The votes and the quorum's decision per endpoint are `pairs.rs`'s; the member records are
//! read by `members.rs`. This file only adds the findings.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::report::Report;
use crate::pairs::Origin;
use crate::probe::{Auth, Class, Prober, Session, Target, Wanted};

/// The targets the report's probing pairs list, each with the credentials this host's daemon
/// would give it: [`Auth::Node`] when a pair of this host's config probes it.
fn wanted(report: &Report) -> Wanted {
    let config = Origin::Config.to_string();
    let mut wanted = Wanted::new();
    for p in &report.pairs {
        let auth = if p.origin == config {
            Auth::Node
        } else {
            Auth::Anonymous
        };
        for target in p.endpoints.iter().filter_map(|e| e.probe.as_deref()) {
            if let Ok(target) = target.parse::<Target>() {
                let entry = wanted.entry(target).or_insert(auth);
                *entry = (*entry).min(auth);
            }
        }
    }
    wanted
}

/// Probes every target the report's probing pairs list once from this host (at most
/// `max_targets`, the ones the daemon would keep, all at once, each within `timeout`) and
/// records, on each endpoint probed with a target that could not be judged, why
/// ([`super::report::EndpointReport::abstains_here`]): the subject alternative names a
/// certificate lacks, another CA, an anonymous probe refused. A failed probe is not recorded:
/// the votes say how the hosts see the endpoint.
pub async fn probe_endpoints(
    report: &mut Report,
    prober: &Arc<Prober>,
    timeout: Duration,
    max_targets: usize,
) {
    let (wanted, _) = crate::probe::capped(wanted(report), max_targets);
    let probes = wanted.into_iter().map(|(target, auth)| async move {
        let mut session = Session::new(Arc::clone(prober), target.clone(), auth);
        (target.to_string(), session.probe(timeout).await)
    });
    let abstained: BTreeMap<String, String> = futures::future::join_all(probes)
        .await
        .into_iter()
        .filter(|(_, outcome)| outcome.class == Class::Abstain)
        .map(|(target, outcome)| (target, outcome.detail))
        .collect();
    for e in report.pairs.iter_mut().flat_map(|p| p.endpoints.iter_mut()) {
        e.abstains_here = e.probe.as_ref().and_then(|t| abstained.get(t)).cloned();
    }
}

/// What an operator does about an abstention, by its reason.
fn remedy(why: &str) -> &'static str {
    if why.contains("does not name") {
        "add the address to the apiserver certificate's subject alternative names (RKE2/K3s: tls-san in config.yaml, then restart the server), or set [probe] tls_server_name to a name the certificate has"
    } else if why.contains("anonymous") {
        "a probe only an annotation asks for carries no credentials; name the pair in this host's config to probe with the node's credentials"
    } else if why.contains("kubeconfig's CA") {
        "the apiserver's certificate is not signed by the CA of this host's kubeconfig (a CA rotation not finished on every host?)"
    } else {
        "until this is fixed, this host has no vote on it"
    }
}

/// Adds the probes' findings to `report`: this host's abstentions (from
/// [`probe_endpoints`]) are problems — the hosts cannot evict that endpoint if none can judge
/// it —, other hosts' abstentions are warnings (this host's own too when `probed_here` is
/// false, for `status`), and targets over `max_targets` a warning.
pub fn findings(report: &mut Report, max_targets: usize, probed_here: bool) {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    for p in &report.pairs {
        for e in &p.endpoints {
            if let (Some(why), Some(probe)) = (&e.abstains_here, &e.probe) {
                problems.push(format!(
                    "{probe}: this host cannot judge {} for {} and abstains (no vote either way): {why}; {}",
                    e.address,
                    p.target,
                    remedy(why)
                ));
            }
        }
    }
    let members = report.group.as_ref().and_then(|g| g.members.as_ref());
    for m in members.into_iter().flatten() {
        if !m.live || (probed_here && m.this_host) {
            continue;
        }
        for v in m.verdicts.iter().filter(|v| v.verdict == "abstains") {
            let why = v.reason.as_deref().unwrap_or("no reason given");
            warnings.push(format!(
                "host {} cannot judge {} and abstains (no vote either way): {why}; {}",
                m.identity,
                v.endpoint,
                remedy(why)
            ));
        }
    }
    let total = wanted(report).len();
    if total > max_targets {
        warnings.push(format!(
            "the probing pairs name {total} probe targets, more than [probe] max_targets ({max_targets}): {} are not probed by any host (the config's come first, then annotated pairs' in address order); raise max_targets or remove probe annotations",
            total - max_targets
        ));
    }
    report.problems.extend(problems);
    report.warnings.extend(warnings);
}

#[cfg(test)]
mod tests {
    use super::super::report::{EndpointReport, PairReport};
    use super::*;

    fn pair(origin: &str, target: &str, endpoints: &[&str]) -> PairReport {
        PairReport {
            target: target.into(),
            source: "default/kubernetes".into(),
            origin: origin.into(),
            source_endpoints: endpoints.len(),
            target_endpoints: endpoints.len(),
            foreign_endpoints: 0,
            in_sync: true,
            holding: None,
            plan: vec![],
            foreign: vec![],
            probe: Some("{ https = \"/readyz\" }".into()),
            endpoints: endpoints
                .iter()
                .map(|a| EndpointReport {
                    address: (*a).into(),
                    probe: Some(format!("https://{a}:6443/readyz")),
                    decision: "ready".into(),
                    down: vec![],
                    up: vec![],
                    counted: 1,
                    abstains_here: None,
                })
                .collect(),
            presumed_cut_off: vec![],
            vip: vec![],
            drained_nodes: vec![],
            drained: vec![],
            kept: vec![],
            node_gaps: vec![],
        }
    }

    #[test]
    fn a_target_a_config_pair_probes_gets_the_node_credentials_even_beside_an_annotation() {
        let report = Report {
            pairs: vec![
                pair("annotation", "apps/vip", &["198.51.100.1", "198.51.100.2"]),
                pair("config", "default/kubernetes-vip", &["198.51.100.2"]),
            ],
            ..Report::default()
        };
        let got: Vec<(String, Auth)> = wanted(&report)
            .into_iter()
            .map(|(t, a)| (t.to_string(), a))
            .collect();
        assert_eq!(
            got,
            vec![
                ("https://198.51.100.1:6443/readyz".into(), Auth::Anonymous),
                ("https://198.51.100.2:6443/readyz".into(), Auth::Node),
            ]
        );
    }

    #[test]
    fn an_abstention_here_is_a_problem_naming_the_sans_and_over_the_cap_a_warning() {
        let mut report = Report {
            pairs: vec![pair(
                "config",
                "default/kubernetes-vip",
                &["198.51.100.1", "198.51.100.2"],
            )],
            ..Report::default()
        };
        report.pairs[0].endpoints[1].abstains_here = Some(
            "TLS: the certificate does not name 198.51.100.2 (its subject alternative names: 198.51.100.9)"
                .into(),
        );
        findings(&mut report, 1, true);
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        let problem = &report.problems[0];
        assert!(
            problem.starts_with("https://198.51.100.2:6443/readyz: this host cannot judge 198.51.100.2 for default/kubernetes-vip"),
            "{problem}"
        );
        assert!(
            problem.contains(
                "does not name 198.51.100.2 (its subject alternative names: 198.51.100.9)"
            )
        );
        assert!(problem.contains("tls-san"), "{problem}");
        assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
        assert!(
            report.warnings[0]
                .contains("2 probe targets, more than [probe] max_targets (1): 1 are not probed"),
            "{:?}",
            report.warnings
        );
    }
}
