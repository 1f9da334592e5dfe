//! The text form of a report: one fact per line, read top-down (where we are, who leads, the
//! group, each pair), then `warning:` and `problem:` lines, and `ok` when there is no problem.

use std::fmt::Write as _;

use super::report::{GroupReport, MemberReport, PairReport, Report};
use crate::group::member::UNVERSIONED;

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
    if let Some(g) = &report.group {
        group(&mut s, g);
    }
    for p in &report.pairs {
        pair(&mut s, p);
    }
    for r in &report.refused {
        let _ = writeln!(s, "refused {}: {}", r.target, r.reason);
    }
    for reach in &report.remotes {
        remote(&mut s, reach);
    }
    for w in &report.warnings {
        let _ = writeln!(s, "warning: {w}");
    }
    for p in &report.problems {
        let _ = writeln!(s, "problem: {p}");
    }
    if report.problems.is_empty() {
        let _ = writeln!(s, "ok");
    }
    s
}

/// `remote /etc/endpoint-copier/remote.yaml: https://203.0.113.5:6443`, then one line per source:
/// `  app/db: 2 ready endpoints` (or why not).
fn remote(s: &mut String, r: &super::remote::Reach) {
    let _ = writeln!(
        s,
        "remote {}: {}",
        r.kubeconfig.display(),
        r.server.as_deref().unwrap_or("not reached")
    );
    for source in &r.sources {
        let what = match (source.service_exists, source.ready_endpoints) {
            (Some(false), _) => "Service missing".to_owned(),
            (_, Some(1)) => "1 ready endpoint".to_owned(),
            (_, Some(n)) => format!("{n} ready endpoints"),
            (_, None) => "not read".to_owned(),
        };
        let _ = writeln!(s, "  {}: {what}", source.source.service);
    }
}

fn group(s: &mut String, g: &GroupReport) {
    let count = match &g.members {
        Some(m) if m.len() == 1 => "1 member".to_owned(),
        Some(m) => format!("{} members", m.len()),
        None => "members unknown".to_owned(),
    };
    let _ = writeln!(
        s,
        "group {} (lease {}), this host {}: {count}",
        g.label, g.lease, g.identity
    );
    for m in g.members.iter().flatten() {
        member(s, m);
    }
}

fn member(s: &mut String, m: &MemberReport) {
    let here = if m.this_host { " (this host)" } else { "" };
    let state = if m.live { "live" } else { "not live" };
    let renewed = match m.renewed_secs_ago {
        None => "never renewed".to_owned(),
        Some(ago) if ago < 0 => format!("renewed {}s ahead of our clock", -ago),
        Some(ago) => format!("renewed {ago}s ago"),
    };
    let pairs = match &m.error {
        Some(e) => format!("record unreadable: {e}"),
        None if m.pairs.is_empty() => "no configured pairs".to_owned(),
        None => {
            let list: Vec<String> = m
                .pairs
                .iter()
                .map(|p| {
                    // A short sum of the digest: two hosts showing other sums configure the
                    // pair differently.
                    let config = p
                        .digest
                        .as_deref()
                        .and_then(crate::group::digest::PairDigest::parse)
                        .map(|d| format!(" (config {})", d.short()))
                        .unwrap_or_default();
                    format!("{} <- {}{config}", p.target, p.source)
                })
                .collect();
            format!("pairs {}", list.join(", "))
        }
    };
    let twin = m
        .twin
        .as_deref()
        .map(|t| format!(", another live process writes under this identity (nonce {t})"))
        .unwrap_or_default();
    let omitted = match m.omitted {
        0 => String::new(),
        n => format!(", {n} verdicts left out (over its size budget)"),
    };
    let version = match (&m.version, &m.error) {
        (Some(v), _) => format!(", version {v}"),
        (None, None) => format!(", version {UNVERSIONED} (writes none)"),
        (None, Some(_)) => String::new(),
    };
    let _ = writeln!(
        s,
        "  member {}{here}: {state}, {renewed}{version}, {pairs}{twin}{omitted}",
        m.identity
    );
    for v in &m.verdicts {
        let since = v
            .since
            .as_deref()
            .map(|at| format!(" since {at}"))
            .unwrap_or_default();
        let reason = v
            .reason
            .as_deref()
            .map(|why| format!(" ({why})"))
            .unwrap_or_default();
        let _ = writeln!(s, "    sees {} {}{since}{reason}", v.endpoint, v.verdict);
    }
}

fn pair(s: &mut String, p: &PairReport) {
    let state = if p.in_sync {
        "in sync".to_owned()
    } else if let Some(h) = &p.holding {
        format!("holding: {h}")
    } else {
        "out of sync".to_owned()
    };
    let target = if p.foreign.is_empty() {
        format!("target {} ready", p.target_endpoints)
    } else {
        format!(
            "target {} ready ours + {} ready foreign",
            p.target_endpoints, p.foreign_endpoints
        )
    };
    let _ = writeln!(
        s,
        "pair {} <- {} ({}): source {} ready, {target}, {state}",
        p.target, p.source, p.origin, p.source_endpoints
    );
    if let Some(probe) = &p.probe {
        let cut_off = if p.presumed_cut_off.is_empty() {
            String::new()
        } else {
            format!(
                ", presumed cut off (votes not counted): {}",
                p.presumed_cut_off.join(", ")
            )
        };
        let _ = writeln!(s, "  probe {probe}{cut_off}");
    }
    if !p.drained_nodes.is_empty() {
        let _ = writeln!(
            s,
            "  drained Nodes: {} (not ready: {})",
            p.drained_nodes.join(", "),
            if p.drained.is_empty() {
                "none".to_owned()
            } else {
                p.drained.join(", ")
            }
        );
    }
    for v in &p.vip {
        let verdict = if v.ok { "answers" } else { "does not answer" };
        let _ = writeln!(s, "  vip {}: {verdict} ({})", v.probe, v.detail);
    }
    for e in &p.endpoints {
        let names = |v: &[String]| {
            if v.is_empty() {
                "none".to_owned()
            } else {
                v.join(", ")
            }
        };
        let _ = writeln!(
            s,
            "  endpoint {}: {} ({} of {} live hosts see it down: {}; up: {})",
            e.address,
            e.decision,
            e.down.len(),
            e.counted,
            names(&e.down),
            names(&e.up)
        );
        if let Some(why) = &e.abstains_here {
            let _ = writeln!(s, "    this host cannot judge it: {why}");
        }
    }
    for f in &p.foreign {
        let addresses = if f.ready_addresses.is_empty() {
            "no ready address".to_owned()
        } else {
            f.ready_addresses.join(", ")
        };
        let _ = writeln!(
            s,
            "  foreign slice {} by {}: {addresses}",
            f.name, f.manager
        );
    }
    for line in &p.plan {
        let _ = writeln!(s, "  would {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::Feature;
    use crate::inspect::report::*;

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
                name: None,
                features: vec![Feature::Mirroring],
                allowed: true,
            }],
            pairs: vec![PairReport {
                target: "default/kubernetes-vip".into(),
                source: "default/kubernetes".into(),
                origin: "config".into(),
                source_endpoints: 3,
                target_endpoints: 2,
                foreign_endpoints: 0,
                in_sync: false,
                holding: None,
                plan: vec!["update kubernetes-vip".into()],
                foreign: vec![],
                probe: None,
                endpoints: vec![],
                presumed_cut_off: vec![],
                vip: vec![],
                drained_nodes: vec![],
                drained: vec![],
                kept: vec![],
                node_gaps: vec![],
            }],
            refused: vec![],
            lease: Some(LeaseReport {
                lease: "kube-system/endpoint-copier".into(),
                holder: Some("cp-1".into()),
                renewed_secs_ago: Some(1),
                transitions: Some(4),
            }),
            group: None,
            remotes: vec![],
            warnings: vec![],
            problems: vec![],
        }
    }

    #[test]
    fn each_remote_kubeconfig_gets_a_line_and_each_of_its_sources_one_more() {
        use crate::inspect::remote::{Reach, SourceReach};
        use crate::source::RemoteSource;
        let mut r = report();
        let source = |s: &str| RemoteSource {
            kubeconfig: "/etc/endpoint-copier/remote.yaml".into(),
            service: s.parse().unwrap(),
        };
        r.remotes = vec![Reach {
            kubeconfig: "/etc/endpoint-copier/remote.yaml".into(),
            server: Some("https://203.0.113.5:6443/".into()),
            problems: vec![],
            sources: vec![
                SourceReach {
                    source: source("app/db"),
                    service_exists: Some(true),
                    ready_endpoints: Some(2),
                    problems: vec![],
                },
                SourceReach {
                    source: source("app/cache"),
                    service_exists: Some(false),
                    ready_endpoints: None,
                    problems: vec![],
                },
            ],
        }];
        let text = render(&r);
        assert!(
            text.contains(
                "remote /etc/endpoint-copier/remote.yaml: https://203.0.113.5:6443/\n  app/db: 2 ready endpoints\n  app/cache: Service missing\n"
            ),
            "{text}"
        );
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

    #[test]
    fn members_and_foreign_slices_get_a_line_each_and_warnings_keep_ok() {
        let mut r = report();
        r.config_files.clear();
        r.kubeconfig = None;
        r.server = None;
        r.permissions.clear();
        r.lease = None;
        r.group = Some(GroupReport {
            label: "kube-system.endpoint-copier".into(),
            lease: "kube-system/endpoint-copier".into(),
            identity: "cp-1".into(),
            members: Some(vec![
                MemberReport {
                    identity: "cp-1".into(),
                    lease: "endpoint-copier.cp-1-00000000".into(),
                    this_host: true,
                    live: true,
                    renewed_secs_ago: Some(3),
                    lease_duration_secs: Some(30),
                    pairs: vec![ConfiguredPair {
                        source: "default/kubernetes".into(),
                        target: "default/kubernetes-vip".into(),
                        digest: Some("s=b327c2da;a=811c9dc5;p=143ef665;d=4db211e5".into()),
                    }],
                    error: None,
                    verdicts: vec![],
                    nonce: None,
                    twin: None,
                    omitted: 0,
                    version: Some("0.2.0".into()),
                },
                MemberReport {
                    identity: "cp-2".into(),
                    lease: "endpoint-copier.cp-2-00000000".into(),
                    this_host: false,
                    live: false,
                    renewed_secs_ago: Some(120),
                    lease_duration_secs: Some(30),
                    pairs: vec![],
                    error: None,
                    verdicts: vec![],
                    nonce: None,
                    twin: None,
                    omitted: 0,
                    version: None,
                },
            ]),
        });
        r.pairs[0].foreign_endpoints = 1;
        r.pairs[0].foreign = vec![ForeignReport {
            name: "kubernetes-vip-x1".into(),
            manager: "endpointslicemirroring-controller.k8s.io".into(),
            ready_addresses: vec!["203.0.113.9".into()],
            fix: "remove it".into(),
        }];
        r.warnings = vec!["something to know".into()];
        assert_eq!(
            render(&r),
            "group kube-system.endpoint-copier (lease kube-system/endpoint-copier), this host cp-1: 2 members
  member cp-1 (this host): live, renewed 3s ago, version 0.2.0, pairs default/kubernetes-vip <- default/kubernetes (config 3b4f5ce4)
  member cp-2: not live, renewed 120s ago, version 0.1.0 (writes none), no configured pairs
pair default/kubernetes-vip <- default/kubernetes (config): source 3 ready, target 2 ready ours + 1 ready foreign, out of sync
  foreign slice kubernetes-vip-x1 by endpointslicemirroring-controller.k8s.io: 203.0.113.9
  would update kubernetes-vip
warning: something to know
ok
"
        );
    }

    #[test]
    fn a_probing_pair_shows_each_endpoint_with_its_votes_and_each_host_what_it_sees() {
        let mut r = report();
        r.config_files.clear();
        r.kubeconfig = None;
        r.server = None;
        r.permissions.clear();
        r.lease = None;
        r.pairs[0].probe = Some("{ https = \"/readyz\" }".into());
        r.pairs[0].endpoints = vec![super::super::report::EndpointReport {
            address: "198.51.100.2".into(),
            probe: Some("https://198.51.100.2:6443/readyz".into()),
            decision: "evicted".into(),
            down: vec!["cp-1".into(), "cp-3".into()],
            up: vec!["cp-2".into()],
            counted: 3,
            abstains_here: Some("TLS: the certificate does not name 198.51.100.2 (its subject alternative names: 198.51.100.9)".into()),
        }];
        r.pairs[0].presumed_cut_off = vec!["cp-4".into()];
        r.group = Some(GroupReport {
            label: "kube-system.endpoint-copier".into(),
            lease: "kube-system/endpoint-copier".into(),
            identity: "cp-1".into(),
            members: Some(vec![MemberReport {
                identity: "cp-1".into(),
                lease: "endpoint-copier.cp-1-00000000".into(),
                this_host: true,
                live: true,
                renewed_secs_ago: Some(3),
                lease_duration_secs: Some(30),
                pairs: vec![],
                error: None,
                verdicts: vec![
                    super::super::report::VerdictReport {
                        endpoint: "https://198.51.100.2:6443/readyz".into(),
                        verdict: "down".into(),
                        since: Some("2026-11-30T19:00:00Z".into()),
                        reason: None,
                    },
                    super::super::report::VerdictReport {
                        endpoint: "https://[2001:db8::2]:6443/readyz".into(),
                        verdict: "abstains".into(),
                        since: None,
                        reason: Some("TLS: the certificate does not name 2001:db8::2 (its subject alternative names: 198.51.100.2)".into()),
                    },
                ],
                nonce: None,
                twin: None,
                omitted: 0,
                version: Some("0.2.0".into()),
            }]),
        });
        assert_eq!(
            render(&r),
            "group kube-system.endpoint-copier (lease kube-system/endpoint-copier), this host cp-1: 1 member
  member cp-1 (this host): live, renewed 3s ago, version 0.2.0, no configured pairs
    sees https://198.51.100.2:6443/readyz down since 2026-11-30T19:00:00Z
    sees https://[2001:db8::2]:6443/readyz abstains (TLS: the certificate does not name 2001:db8::2 (its subject alternative names: 198.51.100.2))
pair default/kubernetes-vip <- default/kubernetes (config): source 3 ready, target 2 ready, out of sync
  probe { https = \"/readyz\" }, presumed cut off (votes not counted): cp-4
  endpoint 198.51.100.2: evicted (2 of 3 live hosts see it down: cp-1, cp-3; up: cp-2)
    this host cannot judge it: TLS: the certificate does not name 198.51.100.2 (its subject alternative names: 198.51.100.9)
  would update kubernetes-vip
ok
"
        );
    }
}
