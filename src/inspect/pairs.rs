//! Per pair: the engine's own plan from a fresh read (dry run), endpoint counts, and the slices
//! on the target that this copier group does not manage, each with the one-line fix an operator
//! applies. The pairs themselves are resolved as the daemon resolves them (`crate::pairs`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ListParams;
use kube::{Api, Client};

use super::Error;
use super::report::{EndpointReport, ForeignReport, PairReport, RefusalReport, VipReport};
use crate::config::Config;
use crate::desired::step::{Facts, Intent, NodeOutcome, NodeView, Verdicts, plan_for};
use crate::desired::{self, ForeignSlice, Hold, Owner, manager_of};
use crate::names::{self, ServiceRef};
use crate::pairs::{self, Resolution};
use crate::probe::quorum::{Candidate, Count, Decision};
use crate::source::{RemoteSource, Source};

/// The managed-by value of kube-controller-manager's endpointslice-mirroring controller.
const MIRRORING_CONTROLLER: &str = "endpointslicemirroring-controller.k8s.io";
/// The managed-by value of kube-controller-manager's endpointslice controller.
const ENDPOINTSLICE_CONTROLLER: &str = "endpointslice-controller.k8s.io";
/// The label that tells the mirroring controller to leave an Endpoints object alone.
const SKIP_MIRROR_LABEL: &str = "endpointslice.kubernetes.io/skip-mirror";

/// The pairs as the daemon would resolve them now, with the Services they were resolved from.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Configured targets and every annotated Service, by reference.
    pub known: BTreeMap<ServiceRef, Service>,
    /// Active pairs and refusals.
    pub resolution: Resolution,
    /// The Nodes the daemon watches (`[nodes] selector`), as projected; `None` when they cannot
    /// be listed (the missing right is a warning of its own).
    pub nodes: Option<crate::nodes::NodeIndex>,
}

impl Resolved {
    /// The active pairs as `(source, target)`, one per Service of this cluster a pair reads
    /// (`(target, target)` for a pair that reads none here): what the daemon reads and writes in
    /// this cluster, for the permissions.
    pub fn pair_refs(&self) -> Vec<(ServiceRef, ServiceRef)> {
        local_refs(
            self.resolution
                .pairs
                .iter()
                .map(|p| (&p.sources, &p.target)),
        )
    }
}

/// `(source, target)` per Service of this cluster each pair reads, `(target, target)` for a pair
/// reading none here.
pub fn local_refs<'a>(
    pairs: impl IntoIterator<Item = (&'a Vec<Source>, &'a ServiceRef)>,
) -> Vec<(ServiceRef, ServiceRef)> {
    let mut out = Vec::new();
    for (sources, target) in pairs {
        let local: Vec<&ServiceRef> = sources.iter().filter_map(Source::local_service).collect();
        if local.is_empty() {
            out.push((target.clone(), target.clone()));
        }
        out.extend(local.into_iter().map(|s| (s.clone(), target.clone())));
    }
    out
}

/// Lists the Services and resolves the pairs exactly as the engine does.
///
/// # Errors
/// [`Error::Api`] when the Services cannot be listed.
pub async fn resolve(client: &Client, config: &Config) -> Result<Resolved, Error> {
    let services: Api<Service> = Api::all(client.clone());
    let list = services
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::Api {
            what: "list Services".into(),
            source,
        })?;
    let rules = pairs::Rules::of(config);
    let known: BTreeMap<ServiceRef, Service> = list
        .items
        .into_iter()
        .filter_map(|svc| Some((crate::watch::service_ref(&svc)?, svc)))
        .filter(|(r, svc)| rules.concerns(r, svc))
        .collect();
    let resolution = rules.resolve(&known);
    let nodes = list_nodes(client, config).await?;
    Ok(Resolved {
        known,
        resolution,
        nodes,
    })
}

/// The Nodes the daemon watches, projected as its cache keeps them; `None` when listing them
/// is forbidden.
///
/// # Errors
/// [`Error::Api`] when the list fails for another reason.
async fn list_nodes(
    client: &Client,
    config: &Config,
) -> Result<Option<crate::nodes::NodeIndex>, Error> {
    let api: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let params = match &config.nodes.selector {
        Some(s) => ListParams::default().labels(s),
        None => ListParams::default(),
    };
    match api.list(&params).await {
        Ok(list) => Ok(Some(crate::nodes::NodeIndex::new(
            list.items
                .iter()
                .filter_map(crate::nodes::NodeFacts::from_node),
        ))),
        Err(kube::Error::Api(s)) if s.code == 403 => Ok(None),
        Err(source) => Err(Error::Api {
            what: "list Nodes".into(),
            source,
        }),
    }
}

/// Reads every resolved pair's source and target slices and reports what the leader would do,
/// with the target's foreign slices.
///
/// # Errors
/// [`Error::Api`] when a pair's slices cannot be listed.
pub async fn inspect(
    client: &Client,
    config: &Config,
    resolved: &Resolved,
    owner: &Owner,
    count: &Count,
    vip_prober: Option<&std::sync::Arc<crate::probe::Prober>>,
    timeout: std::time::Duration,
) -> Result<(Vec<PairReport>, Vec<RefusalReport>), Error> {
    let refused = resolved
        .resolution
        .refusals
        .iter()
        .map(|r| RefusalReport {
            target: r.target.to_string(),
            reason: r.reason.to_string(),
        })
        .collect();
    let mut reports = Vec::new();
    let mut remote_clients: BTreeMap<std::path::PathBuf, Option<Client>> = BTreeMap::new();
    for pair in &resolved.resolution.pairs {
        let mut read: BTreeMap<Source, Result<Vec<EndpointSlice>, Hold>> = BTreeMap::new();
        for source in &pair.sources {
            let slices = match source {
                Source::Service(service) => Ok(slices_of(client, service).await?),
                Source::Remote(r) => {
                    remote_slices(r, config.allow_insecure_tls, timeout, &mut remote_clients).await
                }
                Source::Static(_) => continue,
            };
            read.insert(source.clone(), slices);
        }
        let actual = slices_of(client, &pair.target).await?;
        // The engine's own decision, from the same inputs.
        let rules = pairs::Rules::of(config);
        let probe = rules.probe_of(pair, &resolved.known);
        let derive = rules.derives(pair);
        // One reading: a timed drain counts as seen now (the leader's count started when it
        // first saw it).
        let view = resolved
            .nodes
            .as_ref()
            .filter(|index| !index.is_empty())
            .map(|index| NodeView {
                index,
                at: crate::nodes::At::once(),
                derive,
            });
        // Without a Node view the engine keeps what it wrote (a derived family, drains); `check`
        // has no memory of the drains it wrote, so it shows only the families kept.
        let no_drains = std::collections::BTreeSet::new();
        let (plan, holding, decision, node_outcome) = match plan_for(
            Intent::Mirror(&pair.sources),
            &pair.target,
            &resolved.known,
            &|source| {
                read.get(source)
                    .cloned()
                    .unwrap_or(Err(Hold::NoSourceSlices))
                    .into()
            },
            &actual,
            owner,
            &Facts {
                probe: probe.as_ref().map(|p| (p, Verdicts::Counted(count))),
                nodes: view,
                nodes_unknown: view.is_none().then_some(&no_drains),
            },
        ) {
            Ok(step) if step.clears_target => (
                step.plan,
                Some(format!("target Service {} does not exist", pair.target)),
                None,
                NodeOutcome::default(),
            ),
            Ok(step) => (step.plan, None, step.decision, step.nodes),
            Err(hold) => (
                desired::Plan::default(),
                Some(hold.to_string()),
                None,
                NodeOutcome::default(),
            ),
        };
        // The probes cover derived endpoints too, as the daemon's do.
        let (prepared, _) = match resolved.known.get(&pair.target) {
            Some(svc) => crate::desired::step::prepare(
                &pair.sources,
                &pair.target,
                svc,
                &|source| {
                    read.get(source)
                        .cloned()
                        .unwrap_or(Err(Hold::NoSourceSlices))
                        .into()
                },
                view.as_ref(),
            ),
            None => (Vec::new(), Vec::new()),
        };
        let source_slices: Vec<EndpointSlice> = prepared
            .iter()
            .filter_map(|(_, given)| given.slices.as_ref().ok())
            .flatten()
            .cloned()
            .collect();
        let mut vip = Vec::new();
        if let (Some(prober), Some(spec), Some(svc)) =
            (vip_prober, &probe, resolved.known.get(&pair.target))
        {
            let source_port = crate::desired::step::candidates(spec, &pair.target, svc, &prepared)
                .first()
                .and_then(|c| c.target.as_ref().map(|t| t.port))
                .or(spec.port);
            // As the daemon would: the node's credentials for a pair of this host's config only.
            let auth = match pair.origin {
                pairs::Origin::Config => crate::probe::Auth::Node,
                pairs::Origin::Annotation => crate::probe::Auth::Anonymous,
            };
            for target in vip_targets(svc, spec, source_port) {
                let mut session = crate::probe::Session::new(prober.clone(), target.clone(), auth);
                let outcome = session.probe(timeout).await;
                vip.push(VipReport {
                    probe: target.to_string(),
                    ok: outcome.ok(),
                    detail: outcome.detail,
                });
            }
        }
        let endpoints = match (&probe, decision, resolved.known.get(&pair.target)) {
            (Some(spec), Some(decision), Some(svc)) => {
                crate::desired::step::candidates(spec, &pair.target, svc, &prepared)
                    .into_iter()
                    .map(|c| endpoint_report(&c, &decision, count))
                    .collect()
            }
            _ => Vec::new(),
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
        let (ours, theirs): (Vec<EndpointSlice>, Vec<EndpointSlice>) = actual
            .iter()
            .cloned()
            .partition(|s| manager_of(s, owner).is_ours_to_change());
        let foreign = desired::foreign_slices(&actual, owner)
            .into_iter()
            .map(|f| foreign_report(&pair.target, f))
            .collect();
        reports.push(PairReport {
            target: pair.target.to_string(),
            source: crate::source::describe(&pair.sources),
            origin: pair.origin.to_string(),
            source_endpoints: desired::ready_endpoints(&source_slices),
            target_endpoints: desired::ready_endpoints(&ours),
            foreign_endpoints: desired::ready_endpoints(&theirs),
            // The plan covers our slices only: a foreign slice never makes a pair out of sync,
            // it is a finding of its own.
            in_sync: plan.is_empty() && holding.is_none(),
            holding,
            plan: lines,
            foreign,
            probe: probe.as_ref().map(|p| crate::probe::spec::to_toml(Some(p))),
            endpoints,
            presumed_cut_off: if probe.is_some() {
                count.cut_off.clone()
            } else {
                Vec::new()
            },
            vip,
            drained_nodes: node_outcome.drained_nodes,
            drained: node_outcome
                .withheld
                .drained
                .iter()
                .map(ToString::to_string)
                .collect(),
            kept: node_outcome
                .withheld
                .kept
                .iter()
                .map(ToString::to_string)
                .collect(),
            node_gaps: node_outcome.gaps.iter().map(ToString::to_string).collect(),
        });
    }
    Ok((reports, refused))
}

/// The probe targets that reach `target`'s LoadBalancer ingress addresses with `spec`: the port
/// is the Service port whose targetPort is the probed source port (`kubernetes-vip` 6443 →
/// 6443), else the spec's own port. Names (`ingress[].hostname`) are skipped: the probes dial
/// addresses only.
pub fn vip_targets(
    target: &Service,
    spec: &crate::probe::Spec,
    source_port: Option<u16>,
) -> Vec<crate::probe::Target> {
    let ingress = target
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    let probed = spec.port.or(source_port);
    let port = target
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .and_then(|ports| {
            ports.iter().find(|p| {
                let to = match &p.target_port {
                    Some(IntOrString::Int(n)) if *n != 0 => Some(*n),
                    Some(IntOrString::String(_)) => None,
                    _ => Some(p.port),
                };
                to.and_then(|n| u16::try_from(n).ok()) == probed
            })
        })
        .and_then(|p| u16::try_from(p.port).ok())
        .or(probed);
    let Some(port) = port else {
        return Vec::new();
    };
    ingress
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .map(|address| crate::probe::Target {
            address,
            port,
            kind: spec.kind.clone(),
        })
        .collect()
}

/// One candidate endpoint with its votes and the quorum's decision.
fn endpoint_report(c: &Candidate, decision: &Decision, count: &Count) -> EndpointReport {
    let votes = c.target.as_ref().and_then(|t| count.votes.get(t));
    EndpointReport {
        address: c.address.to_string(),
        probe: c.target.as_ref().map(ToString::to_string),
        decision: if decision.evicted.contains(&c.address) {
            "evicted"
        } else if decision.spared == Some(c.address) {
            "spared"
        } else {
            "ready"
        }
        .to_owned(),
        down: votes.map(|v| v.down.clone()).unwrap_or_default(),
        up: votes.map(|v| v.up.clone()).unwrap_or_default(),
        counted: votes.map_or(0, crate::probe::quorum::Votes::voters),
        abstains_here: None,
    }
}

/// A foreign slice of `target` with its fix.
pub fn foreign_report(target: &ServiceRef, slice: ForeignSlice) -> ForeignReport {
    let fix = fix_for(target, &slice);
    ForeignReport {
        name: slice.name,
        manager: slice.manager,
        ready_addresses: slice.ready_addresses,
        fix,
    }
}

/// What to do about a foreign slice of `target`, in one line.
pub fn fix_for(target: &ServiceRef, slice: &ForeignSlice) -> String {
    let ns = &target.namespace;
    match slice.manager.as_str() {
        MIRRORING_CONTROLLER => {
            format!("remove the Endpoints object {target}, or label it {SKIP_MIRROR_LABEL}=true")
        }
        ENDPOINTSLICE_CONTROLLER => format!(
            "the Service {target} has (or had) a selector: remove it, then delete the slices the endpointslice controller wrote (it keeps them once the selector is gone)"
        ),
        m if m.starts_with("endpoint-copier (group ") => format!(
            "another copier group mirrors into {target}: configure the pair in one group only, then delete EndpointSlice {ns}/{}",
            slice.name
        ),
        m if m.starts_with(desired::NEWER_VERSION) => format!(
            "written by a newer endpoint-copier of this group, which this host does not understand: upgrade every host to one version (docs/usage/upgrade.md); EndpointSlice {ns}/{} is never deleted or rewritten meanwhile",
            slice.name
        ),
        m if m.starts_with("endpoint-copier (no group") => format!(
            "written by an endpoint-copier without copier groups, which only the default group adopts: delete EndpointSlice {ns}/{} once no such copy runs",
            slice.name
        ),
        _ => format!(
            "find who writes EndpointSlice {ns}/{} and stop it, or delete the slice",
            slice.name
        ),
    }
}

/// The problem line for a foreign slice of `pair`.
pub fn foreign_line(pair: &PairReport, f: &ForeignReport) -> String {
    let adds = if f.ready_addresses.is_empty() {
        "no ready address for now".to_owned()
    } else {
        f.ready_addresses.join(", ")
    };
    format!(
        "EndpointSlice {} on {} is managed by {}, not by this copier group, and adds {adds} to the target: {}",
        f.name, pair.target, f.manager, f.fix
    )
}

/// A remote source's slices, read through a client of its kubeconfig (built once per file,
/// bounded by `timeout`); nothing to give when the cluster cannot be read — `check` reports why
/// through `inspect::remote::check`.
async fn remote_slices(
    r: &RemoteSource,
    allow_insecure_tls: bool,
    timeout: std::time::Duration,
    clients: &mut BTreeMap<std::path::PathBuf, Option<Client>>,
) -> Result<Vec<EndpointSlice>, Hold> {
    if !clients.contains_key(&r.kubeconfig) {
        let built = tokio::time::timeout(
            timeout,
            crate::client::build(&r.kubeconfig, allow_insecure_tls),
        )
        .await;
        let client = match built {
            Ok(Ok(loaded)) => Some(loaded.client),
            _ => None,
        };
        clients.insert(r.kubeconfig.clone(), client);
    }
    let Some(Some(client)) = clients.get(&r.kubeconfig) else {
        return Err(Hold::NoSourceSlices);
    };
    match tokio::time::timeout(timeout, slices_of(client, &r.service)).await {
        Ok(Ok(slices)) if !slices.is_empty() => Ok(slices),
        _ => Err(Hold::NoSourceSlices),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(manager: &str) -> ForeignSlice {
        ForeignSlice {
            name: "kubernetes-vip-x1".into(),
            manager: manager.into(),
            ready_addresses: vec!["203.0.113.9".into()],
        }
    }

    #[test]
    fn the_fix_for_a_mirrored_slice_names_the_endpoints_object_and_the_skip_label() {
        let target: ServiceRef = "default/kubernetes-vip".parse().unwrap();
        assert_eq!(
            fix_for(&target, &slice(MIRRORING_CONTROLLER)),
            "remove the Endpoints object default/kubernetes-vip, or label it endpointslice.kubernetes.io/skip-mirror=true"
        );
        assert!(
            fix_for(&target, &slice("endpoint-copier (group kube-system.b)"))
                .starts_with("another copier group")
        );
        assert!(fix_for(&target, &slice("someone")).contains("default/kubernetes-vip-x1"));
    }

    #[test]
    fn the_vip_is_probed_on_the_service_port_that_leads_to_the_probed_port() {
        use k8s_openapi::api::core::v1::{
            LoadBalancerIngress, LoadBalancerStatus, ServicePort, ServiceSpec, ServiceStatus,
        };
        let port = |name: &str, n: i32| ServicePort {
            name: Some(name.into()),
            port: n,
            target_port: Some(IntOrString::Int(n)),
            ..ServicePort::default()
        };
        let vip = Service {
            spec: Some(ServiceSpec {
                ports: Some(vec![port("rke2-api", 9345), port("k8s-api", 6443)]),
                ..ServiceSpec::default()
            }),
            status: Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(vec![
                        LoadBalancerIngress {
                            ip: Some("192.0.2.100".into()),
                            ..LoadBalancerIngress::default()
                        },
                        LoadBalancerIngress {
                            hostname: Some("vip.example".into()),
                            ..LoadBalancerIngress::default()
                        },
                    ]),
                }),
                ..ServiceStatus::default()
            }),
            ..Service::default()
        };
        let got: Vec<String> = vip_targets(&vip, &crate::probe::Spec::readyz(), Some(6443))
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(got, ["https://192.0.2.100:6443/readyz"]);
        // No ingress address yet: nothing to probe.
        let pending = Service {
            status: None,
            ..vip
        };
        assert!(vip_targets(&pending, &crate::probe::Spec::readyz(), Some(6443)).is_empty());
    }
}
