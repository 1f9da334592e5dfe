//! What to write for one pair now ([`plan_for`]): the union of its sources after the Node facts
//! and the probes' quorum, as creates, updates and deletes of the target's slices — or a
//! [`Hold`] when nothing may be written. Pure: the engine (from its caches) and
//! `endpoint-copier check` (from fresh reads) both call it, so what `check` shows is what the
//! leader writes.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::nodes::{Gap, Withheld};
use super::{Hold, Owner, Plan};
use crate::desired;
use crate::names::ServiceRef;
use crate::nodes::{At, NodeIndex};
use crate::probe::Spec;
use crate::probe::quorum::{self, Count, Decision};
use crate::source::Source;

/// What a pair asks of its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent<'a> {
    /// Mirror these sources into it.
    Mirror(&'a [Source]),
    /// Nothing: the pair is refused, its slices stay exactly as they are.
    Keep,
    /// Remove its slices: the pair is gone (removed, or found by the orphan scan).
    Clear,
}
/// The writes for one pair, and whether they remove the target's slices altogether.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Creates, updates and deletes, in apply order.
    pub plan: Plan,
    /// The plan deletes every slice of the target (pair removed, target gone). Such a plan runs
    /// only after a fresh read of the target Service confirms it, never on a cache alone.
    pub clears_target: bool,
    /// What the quorum decided for a pair that probes (the plan already carries it).
    pub decision: Option<Decision>,
    /// What the Nodes did (the plan already carries it).
    pub nodes: NodeOutcome,
    /// Sources that had nothing to give: their slices in the target are kept as they are.
    pub held: Vec<(Source, Hold)>,
}

/// The Nodes as one plan sees them: the index, when drains are judged (this copy's clocks and
/// when it first saw each timed drain) and whether the pair derives missing families.
#[derive(Debug, Clone, Copy)]
pub struct NodeView<'a> {
    /// The watched Nodes.
    pub index: &'a NodeIndex,
    /// Now: a drain that ended does not count.
    pub at: At<'a>,
    /// Derive a family the target serves but the source lacks.
    pub derive: bool,
}

/// How a plan decides the probed endpoints' readiness.
#[derive(Debug, Clone, Copy)]
pub enum Verdicts<'a> {
    /// By the quorum of these counted ballots.
    Counted(&'a Count),
    /// By two counts that may differ: the members seen renewing (`confirmed`), and every member
    /// that looks live (`all`: a record read from a list may be a dead host's last words, or a
    /// live host's not yet renewed). Where the two agree, that is the decision; where they
    /// differ, the endpoint stays as written.
    Agreed {
        /// Ballots of this copy and the members seen renewing.
        confirmed: &'a Count,
        /// Those and the members not yet seen renewing.
        all: &'a Count,
    },
    /// As the target has them written now: the leader's view of the members is not complete
    /// (not listed yet, its watch failing or silent, a live member not yet seen renewing), so
    /// nothing is evicted and nothing evicted returns until it is.
    AsWritten,
}

/// What the facts beside the slices make of a plan: probes and Nodes. `Default`: neither.
#[derive(Debug, Clone, Copy, Default)]
pub struct Facts<'a> {
    /// The pair's probe and how its verdicts are decided, for a pair that probes.
    pub probe: Option<(&'a Spec, Verdicts<'a>)>,
    /// The Nodes, when the Node watch delivered them.
    pub nodes: Option<NodeView<'a>>,
    /// Set when the Node view cannot be had (the watch fails: a missing right, an error): the
    /// endpoints last written drained, which stay drained; and a family the plan has nothing for
    /// (a derived one) keeps its slices as written. A missing view is never "no Nodes".
    pub nodes_unknown: Option<&'a BTreeSet<std::net::IpAddr>>,
}

/// What the Nodes did to one plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeOutcome {
    /// Source endpoints without an endpoint in a derived family (Node lacking the address, or
    /// no Node found).
    pub gaps: Vec<Gap>,
    /// Drained Nodes (at plan time), by name.
    pub drained_nodes: Vec<String>,
    /// Endpoints marked not ready by drains, and those kept ready so no family empties.
    pub withheld: Withheld,
}

/// What a source gives now, as the engine's caches (or `check`'s reads) say. Static sources
/// are not asked: [`plan_for`] makes their slices.
pub type Read<'a> = dyn Fn(&Source) -> Given + 'a;

/// What one source gives a plan now.
#[derive(Debug, Clone, PartialEq)]
pub struct Given {
    /// A Service's slices here or in its cluster; `Err` when it has nothing to give (never
    /// read, its Service missing there): its slices in the target are kept as they are.
    pub slices: Result<Vec<EndpointSlice>, Hold>,
    /// How far what it gives — or what the target keeps of it — can be trusted.
    pub freshness: Freshness,
}

/// How far a source's endpoints can be trusted now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Read now (a Service of this cluster, a remote one read fine, static addresses).
    Fresh,
    /// A remote source in trouble: what it gives is this copy's last known.
    LastKnown,
    /// A remote source in trouble for longer than `[sync] keep_last_known_secs`.
    Expired,
}

impl From<Result<Vec<EndpointSlice>, Hold>> for Given {
    /// What a source read now gives.
    fn from(slices: Result<Vec<EndpointSlice>, Hold>) -> Given {
        Given {
            slices,
            freshness: Freshness::Fresh,
        }
    }
}

/// Each source of a pair with what it gives now (its slices, or why it has none, and how
/// fresh).
pub type Prepared = Vec<(Source, Given)>;

/// Each source of a pair with its slices for target Service `svc`, after the Node facts: a
/// Service of this cluster gets nodeName, zone and (when `derive`) the missing family; static
/// addresses get nodeName and zone. A remote Service's endpoints are another cluster's, which
/// this cluster's Nodes cannot tell anything about.
pub fn prepare(
    sources: &[Source],
    target: &ServiceRef,
    svc: &Service,
    read: &Read<'_>,
    nodes: Option<&NodeView<'_>>,
) -> (Prepared, Vec<Gap>) {
    let mut gaps = Vec::new();
    let prepared = sources
        .iter()
        .map(|source| {
            let given = match source {
                Source::Static(s) => Given::from(Ok(desired::union::static_slices(s, svc))),
                other => read(other),
            };
            let slices = given.slices.map(|slices| match (nodes, source) {
                (Some(view), Source::Service(service)) => {
                    let with =
                        desired::nodes::with_nodes(service, svc, &slices, view.index, view.derive);
                    gaps.extend(with.gaps);
                    with.slices
                }
                (Some(view), Source::Static(_)) => {
                    desired::nodes::with_nodes(target, svc, &slices, view.index, false).slices
                }
                _ => slices,
            });
            let given = Given {
                slices,
                freshness: given.freshness,
            };
            (source.clone(), given)
        })
        .collect();
    (prepared, gaps)
}

/// What a pair probing with `spec` probes: the ready endpoints of every source that gave some,
/// each with the port of its slice. Static addresses must be seen up before they count as ready
/// (kubelet's readiness starts at failure); a Service's endpoints are ready until seen down.
pub fn candidates(
    spec: &Spec,
    target: &ServiceRef,
    svc: &Service,
    prepared: &Prepared,
) -> Vec<quorum::Candidate> {
    prepared
        .iter()
        .filter_map(|(source, given)| Some((source, given.slices.as_ref().ok()?)))
        .flat_map(|(source, slices)| {
            let (of, needs_up) = match source {
                Source::Service(s) => (s, false),
                Source::Remote(r) => (&r.service, false),
                Source::Static(_) => (target, true),
            };
            quorum::candidates(spec, desired::probed_endpoints(of, svc, slices), needs_up)
        })
        .collect()
}

/// Without a Node view: every family the target serves for which `want` has no slice keeps our
/// slices of that family in `actual` as they are (a derived family cannot be derived now, and
/// planning it away would delete it).
fn keep_missing_families(
    want: &mut Vec<EndpointSlice>,
    svc: &Service,
    actual: &[EndpointSlice],
    owner: &Owner,
) {
    let planned: BTreeSet<String> = want.iter().map(|s| s.address_type.clone()).collect();
    let kept: Vec<EndpointSlice> = actual
        .iter()
        .filter(|s| desired::served_families(svc).contains(&s.address_type))
        .filter(|s| !planned.contains(&s.address_type))
        .filter(|s| desired::manager_of(s, owner).is_ours_to_change())
        .cloned()
        .collect();
    want.extend(kept);
}

/// The endpoints ready in `want` that our slices in `actual` have written not ready: what an
/// eviction (or a drain) wrote, which [`Verdicts::AsWritten`] keeps as it is.
fn written_not_ready(
    want: &[EndpointSlice],
    actual: &[EndpointSlice],
    owner: &Owner,
) -> BTreeSet<std::net::IpAddr> {
    let addresses = |slices: &mut dyn Iterator<Item = &EndpointSlice>, ready: bool| {
        slices
            .flat_map(|s| s.endpoints.iter())
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true) == ready)
            .flat_map(|e| e.addresses.iter())
            .filter_map(|a| a.parse().ok())
            .collect::<BTreeSet<std::net::IpAddr>>()
    };
    let ours = &mut actual
        .iter()
        .filter(|s| desired::manager_of(s, owner).is_ours_to_change());
    let written = addresses(ours, false);
    let wanted = addresses(&mut want.iter(), true);
    written.intersection(&wanted).copied().collect()
}

/// The probe candidates of the slices `desired::union` keeps in the target for the sources of
/// `prepared` that have nothing to give (found in `actual` as the union finds them): kept
/// endpoints are probed like any other, so one that dies while its source cannot be read
/// leaves the target. Ready until seen down, as their source last said.
pub fn kept_candidates(
    spec: &Spec,
    target: &ServiceRef,
    svc: &Service,
    prepared: &Prepared,
    actual: &[EndpointSlice],
    owner: &Owner,
) -> Vec<quorum::Candidate> {
    // The union's rule: the first Service of this cluster (in source order) also owns our
    // slices without a source id.
    let legacy = prepared
        .iter()
        .filter_map(|(s, _)| match s {
            Source::Service(_) => Some(s),
            _ => None,
        })
        .min();
    let mut kept: Vec<EndpointSlice> = Vec::new();
    for (source, _) in prepared.iter().filter(|(_, g)| g.slices.is_err()) {
        let id = desired::union::source_id(source);
        kept.extend(
            desired::union::kept_slices(target, actual, owner, &id, legacy == Some(source))
                .cloned(),
        );
    }
    if kept.is_empty() || !desired::union::is_union(&sources_of(prepared)) {
        return Vec::new();
    }
    quorum::candidates(spec, desired::probed_endpoints(target, svc, &kept), false)
}

/// The sources of `prepared`, in order.
fn sources_of(prepared: &Prepared) -> Vec<Source> {
    prepared.iter().map(|(s, _)| s.clone()).collect()
}

/// How fresh each source's part of the target is ([`desired::nodes::Ages`]): a source with
/// nothing to give has its slices kept as they are, a remote one in trouble gives its last
/// known ones — both stale; one in trouble for longer than `[sync] keep_last_known_secs` is
/// expired when the pair does not `probe` (a pair that probes goes by its probes).
pub fn ages(prepared: &Prepared, probe: bool) -> desired::nodes::Ages {
    let mut ages = desired::nodes::Ages::default();
    for (source, given) in prepared {
        let id = desired::union::source_id(source);
        if given.slices.is_err() || given.freshness != Freshness::Fresh {
            ages.stale.insert(id.clone());
        }
        if given.freshness == Freshness::Expired && !probe {
            ages.expired.insert(id);
        }
    }
    ages
}

/// What to write for the target `target` as `intent` asks, from the caches: the Service objects kept
/// by the watch, what each source gives (`read`) and the target's slices (`actual`, every
/// manager's). The target gets the union of the sources (`desired::union`): a source with
/// nothing to give keeps its slices as they are. A pair that probes passes its probe and the
/// ballots counted now: endpoints a majority sees down (static ones: not seen up) are written
/// `ready: false, serving: false`. With the Nodes, endpoints get `nodeName` and zone, a missing
/// family is derived (`desired::nodes::with_nodes`) and endpoints on drained Nodes are written
/// not ready too — never the last ready one of a family (`desired::nodes::withhold`).
///
/// # Errors
/// A [`Hold`] when nothing may be written now (fail-static: the target keeps what it has).
pub fn plan_for(
    intent: Intent<'_>,
    target: &ServiceRef,
    services: &BTreeMap<ServiceRef, Service>,
    read: &Read<'_>,
    actual: &[EndpointSlice],
    owner: &Owner,
    facts: &Facts<'_>,
) -> Result<Step, Hold> {
    let clear = || Step {
        plan: desired::plan(target, &[], actual, owner),
        clears_target: true,
        decision: None,
        nodes: NodeOutcome::default(),
        held: Vec::new(),
    };
    match intent {
        Intent::Clear => Ok(clear()),
        // The target Service is gone: the garbage collector removes our slices through their
        // ownerReference; we remove them too (after a fresh read), so nothing waits on it.
        Intent::Mirror(_) if !services.contains_key(target) => Ok(clear()),
        Intent::Mirror(sources) => {
            let svc = services.get(target).ok_or(Hold::TargetMissing)?;
            let mut outcome = NodeOutcome::default();
            let (prepared, gaps) = prepare(sources, target, svc, read, facts.nodes.as_ref());
            outcome.gaps = gaps;
            let inputs: Vec<desired::union::Input<'_>> = prepared
                .iter()
                .map(|(source, given)| desired::union::Input {
                    source,
                    slices: given.slices.as_deref().map_err(|h| *h),
                })
                .collect();
            let union = desired::union::union(target, svc, &inputs, actual, owner)?;
            let mut want = union.slices;
            if facts.nodes_unknown.is_some() {
                keep_missing_families(&mut want, svc, actual, owner);
            }
            let mut decision = facts.probe.map(|(spec, verdicts)| {
                let mut candidates = candidates(spec, target, svc, &prepared);
                candidates.extend(kept_candidates(spec, target, svc, &prepared, actual, owner));
                match verdicts {
                    Verdicts::Counted(count) => quorum::decide(&candidates, count),
                    Verdicts::Agreed { confirmed, all } => {
                        let (a, b) = (
                            quorum::decide(&candidates, confirmed),
                            quorum::decide(&candidates, all),
                        );
                        let written = written_not_ready(&want, actual, owner);
                        quorum::Decision {
                            evicted: a
                                .evicted
                                .union(&b.evicted)
                                .filter(|x| {
                                    (a.evicted.contains(x) && b.evicted.contains(x))
                                        || written.contains(x)
                                })
                                .copied()
                                .collect(),
                            spared: a.spared.or(b.spared),
                        }
                    }
                    Verdicts::AsWritten => quorum::Decision {
                        evicted: written_not_ready(&want, actual, owner),
                        spared: None,
                    },
                }
            });
            let evicted = decision
                .as_ref()
                .map(|d| d.evicted.clone())
                .unwrap_or_default();
            let drained_nodes = facts
                .nodes
                .map(|view| view.index.drained(view.at))
                .unwrap_or_default();
            // Without a Node view, the drains this copy last wrote stay — those the target still
            // holds not ready: another leader may have ended a drain since (this copy's memory
            // of its last term must not drain again what the target shows ready).
            let still_drained: Option<BTreeSet<std::net::IpAddr>> =
                facts.nodes_unknown.map(|remembered| {
                    remembered
                        .intersection(&written_not_ready(&want, actual, owner))
                        .copied()
                        .collect()
                });
            let drains = match (facts.nodes, still_drained.as_ref()) {
                (Some(view), _) => Some(desired::nodes::Drains::Nodes {
                    index: view.index,
                    nodes: &drained_nodes,
                }),
                (None, Some(written)) => Some(desired::nodes::Drains::AsWritten(written)),
                (None, None) => None,
            };
            let ages = ages(&prepared, facts.probe.is_some());
            outcome.withheld = desired::nodes::withhold(&mut want, &evicted, drains, &ages);
            outcome.drained_nodes = drained_nodes.into_iter().collect();
            if let Some(d) = decision.as_mut() {
                // An endpoint kept ready so that its family is not empty is not evicted.
                d.evicted.retain(|a| !outcome.withheld.kept.contains(a));
            }
            Ok(Step {
                plan: desired::plan(target, &want, actual, owner),
                clears_target: false,
                decision,
                nodes: outcome,
                held: union.held,
            })
        }
        Intent::Keep => Err(Hold::Refused),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use k8s_openapi::api::core::v1::ServiceSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn r(s: &str) -> ServiceRef {
        s.parse().unwrap()
    }

    fn owner() -> Owner {
        crate::group::Group::default_group().owner()
    }

    fn vip() -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("kubernetes-vip".into()),
                namespace: Some("default".into()),
                uid: Some("u1".into()),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                ip_families: Some(vec!["IPv4".into()]),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    }

    #[test]
    fn an_active_pair_without_source_slices_holds() {
        let services = BTreeMap::from([(r("default/kubernetes-vip"), vip())]);
        let phase_sources = vec![Source::Service(r("default/kubernetes"))];
        let phase = Intent::Mirror(&phase_sources);
        let got = plan_for(
            phase,
            &r("default/kubernetes-vip"),
            &services,
            &|_: &Source| Ok(Vec::new()).into(),
            &[],
            &owner(),
            &Facts::default(),
        );
        assert_eq!(got, Err(Hold::NoSourceSlices));
    }

    #[test]
    fn a_refused_pair_is_held_and_a_retired_or_targetless_one_clears_after_confirmation() {
        let target = r("default/kubernetes-vip");
        let refused = Intent::Keep;
        assert_eq!(
            plan_for(
                refused,
                &target,
                &BTreeMap::new(),
                &|_: &Source| Ok(Vec::new()).into(),
                &[],
                &owner(),
                &Facts::default()
            ),
            Err(Hold::Refused)
        );
        let retired = plan_for(
            Intent::Clear,
            &target,
            &BTreeMap::new(),
            &|_: &Source| Ok(Vec::new()).into(),
            &[],
            &owner(),
            &Facts::default(),
        );
        assert!(retired.is_ok_and(|s| s.clears_target));
        let active_sources = vec![Source::Service(r("default/kubernetes"))];
        let active = Intent::Mirror(&active_sources);
        let gone = plan_for(
            active,
            &target,
            &BTreeMap::new(),
            &|_: &Source| Ok(Vec::new()).into(),
            &[],
            &owner(),
            &Facts::default(),
        );
        assert!(gone.is_ok_and(|s| s.clears_target));
    }

    /// The built-in `default/kubernetes` slice with `addrs` on port 6443.
    pub(crate) fn apiserver_slice(addrs: &[&str]) -> EndpointSlice {
        use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort};
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some("kubernetes".into()),
                namespace: Some("default".into()),
                ..ObjectMeta::default()
            },
            address_type: "IPv4".into(),
            endpoints: addrs
                .iter()
                .map(|a| Endpoint {
                    addresses: vec![(*a).to_owned()],
                    ..Endpoint::default()
                })
                .collect(),
            ports: Some(vec![EndpointPort {
                name: Some("https".into()),
                port: Some(6443),
                protocol: Some("TCP".into()),
                app_protocol: None,
            }]),
        }
    }

    /// A union of `default/kubernetes` (.1, .2) and a remote `app/db` (203.0.113.1) that gives
    /// `remote`, into `kubernetes-vip`.
    fn union_plan(remote: Given, actual: &[EndpointSlice], facts: &Facts<'_>) -> Step {
        // With its port, as EIB creates it: kept slices are probed on the target's port.
        let mut svc = vip();
        if let Some(spec) = svc.spec.as_mut() {
            spec.ports = Some(vec![k8s_openapi::api::core::v1::ServicePort {
                name: Some("https".into()),
                port: 6443,
                ..Default::default()
            }]);
        }
        let services = BTreeMap::from([(r("default/kubernetes-vip"), svc)]);
        let db = Source::Remote(crate::source::RemoteSource {
            kubeconfig: "/etc/endpoint-copier/remote.yaml".into(),
            service: r("app/db"),
        });
        let phase_sources = vec![Source::Service(r("default/kubernetes")), db];
        let phase = Intent::Mirror(&phase_sources);
        let local = [apiserver_slice(&["198.51.100.1", "198.51.100.2"])];
        plan_for(
            phase,
            &r("default/kubernetes-vip"),
            &services,
            &|source: &Source| match source {
                Source::Remote(_) => remote.clone(),
                _ => Ok(local.to_vec()).into(),
            },
            actual,
            &owner(),
            facts,
        )
        .unwrap()
    }

    fn remote_db() -> EndpointSlice {
        let mut s = apiserver_slice(&["203.0.113.1"]);
        s.metadata.name = Some("db-1".into());
        s.metadata.namespace = Some("app".into());
        s
    }

    /// (address, ready) of every endpoint the plan creates.
    fn created(step: &Step) -> Vec<(String, bool)> {
        let mut v: Vec<(String, bool)> = step
            .plan
            .creates
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .map(|e| (e.addresses[0].clone(), desired::is_ready(e)))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_remote_source_unreadable_for_longer_than_the_limit_leaves_a_pair_that_does_not_probe() {
        let last_known = |freshness| Given {
            slices: Ok(vec![remote_db()]),
            freshness,
        };
        let kept = union_plan(last_known(Freshness::LastKnown), &[], &Facts::default());
        assert!(created(&kept).iter().all(|(_, ready)| *ready));
        let gone = union_plan(last_known(Freshness::Expired), &[], &Facts::default());
        assert_eq!(
            created(&gone),
            [
                ("198.51.100.1".to_owned(), true),
                ("198.51.100.2".to_owned(), true),
                ("203.0.113.1".to_owned(), false)
            ]
        );
        // A pair that probes goes by its probes: nobody sees it down, it stays.
        use crate::probe::quorum::Count;
        let spec = Spec::readyz();
        let count = Count::default();
        let probed = union_plan(
            last_known(Freshness::Expired),
            &[],
            &Facts {
                probe: Some((&spec, Verdicts::Counted(&count))),
                nodes: None,
                nodes_unknown: None,
            },
        );
        assert!(created(&probed).iter().all(|(_, ready)| *ready));
    }

    #[test]
    fn the_slices_kept_for_a_source_with_nothing_to_give_are_probed() {
        use crate::probe::quorum::{Ballot, Count};
        use crate::probe::{Target, Verdict};
        // The remote was never read by this leader: its slice in the target is kept as it is.
        let first = union_plan(Ok(vec![remote_db()]).into(), &[], &Facts::default());
        let mut actual = first.plan.creates.clone();
        for s in &mut actual {
            s.metadata.namespace = Some("default".into());
        }
        let t = |s: &str| s.parse::<Target>().unwrap();
        let seen = BTreeMap::from([
            (t("https://198.51.100.1:6443/readyz"), Verdict::Up),
            (t("https://198.51.100.2:6443/readyz"), Verdict::Up),
            (t("https://203.0.113.1:6443/readyz"), Verdict::Down),
        ]);
        let count = Count::of(&[Ballot {
            voter: "node-1",
            live: true,
            verdicts: &seen,
        }]);
        let spec = Spec::readyz();
        let step = union_plan(
            Given {
                slices: Err(Hold::NoSourceSlices),
                freshness: Freshness::LastKnown,
            },
            &actual,
            &Facts {
                probe: Some((&spec, Verdicts::Counted(&count))),
                nodes: None,
                nodes_unknown: None,
            },
        );
        assert_eq!(
            step.decision.map(|d| d.evicted),
            Some(["203.0.113.1".parse().unwrap()].into()),
            "the kept endpoint is a candidate, and a majority sees it down"
        );
        let ready: Vec<(String, bool)> = step
            .plan
            .updates
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .map(|e| (e.addresses[0].clone(), desired::is_ready(e)))
            .collect();
        assert_eq!(ready, [("203.0.113.1".to_owned(), false)]);
    }

    #[test]
    fn without_a_complete_member_view_or_where_two_counts_differ_evictions_stay_as_written() {
        use crate::probe::quorum::{Ballot, Count};
        use crate::probe::{Target, Verdict};
        let target = r("default/kubernetes-vip");
        let services = BTreeMap::from([(target.clone(), vip())]);
        let phase_sources = vec![Source::Service(r("default/kubernetes"))];
        let phase = Intent::Mirror(&phase_sources);
        let source = [apiserver_slice(&["198.51.100.1", "198.51.100.2"])];
        let t = |s: &str| s.parse::<Target>().unwrap();
        let sees = |down: bool| {
            BTreeMap::from([
                (t("https://198.51.100.1:6443/readyz"), Verdict::Up),
                (
                    t("https://198.51.100.2:6443/readyz"),
                    if down { Verdict::Down } else { Verdict::Up },
                ),
            ])
        };
        let (up, down) = (sees(false), sees(true));
        let ballot = |voter, verdicts| Ballot {
            voter,
            live: true,
            verdicts,
        };
        // What the group wrote: .2 evicted by two hosts that see it down.
        let evicting = Count::of(&[ballot("node-2", &down), ballot("node-3", &down)]);
        let spec = Spec::readyz();
        let plan = |actual: &[EndpointSlice], verdicts| {
            plan_for(
                phase,
                &target,
                &services,
                &|_: &Source| Ok(source.to_vec()).into(),
                actual,
                &owner(),
                &Facts {
                    probe: Some((&spec, verdicts)),
                    nodes: None,
                    nodes_unknown: None,
                },
            )
            .unwrap()
            .plan
        };
        let mut written = plan(&[], Verdicts::Counted(&evicting)).creates;
        written[0].metadata.resource_version = Some("7".into());
        // A restarted leader: its own ballot sees .2 up, the others are not seen renewing yet.
        let confirmed = Count::of(&[ballot("node-1", &up)]);
        let all = Count::of(&[
            ballot("node-1", &up),
            ballot("node-2", &down),
            ballot("node-3", &down),
        ]);
        let agreed = Verdicts::Agreed {
            confirmed: &confirmed,
            all: &all,
        };
        assert!(
            plan(&written, agreed).is_empty(),
            "the counts differ: as written"
        );
        assert!(plan(&written, Verdicts::AsWritten).is_empty());
        // Where both counts see it up, it returns.
        let back = Verdicts::Agreed {
            confirmed: &confirmed,
            all: &confirmed,
        };
        assert_eq!(plan(&written, back).updates.len(), 1);
    }

    #[test]
    fn a_probing_pair_writes_what_the_quorum_evicts_as_not_ready() {
        use crate::probe::quorum::{Ballot, Count};
        use crate::probe::{Target, Verdict};
        let services = BTreeMap::from([(r("default/kubernetes-vip"), vip())]);
        let phase_sources = vec![Source::Service(r("default/kubernetes"))];
        let phase = Intent::Mirror(&phase_sources);
        let source = [apiserver_slice(&[
            "198.51.100.1",
            "198.51.100.2",
            "198.51.100.3",
        ])];
        let t = |s: &str| s.parse::<Target>().unwrap();
        let seen = BTreeMap::from([
            (t("https://198.51.100.1:6443/readyz"), Verdict::Up),
            (t("https://198.51.100.2:6443/readyz"), Verdict::Down),
            (t("https://198.51.100.3:6443/readyz"), Verdict::Up),
        ]);
        let count = Count::of(&[Ballot {
            voter: "node-1",
            live: true,
            verdicts: &seen,
        }]);
        let spec = Spec::readyz();
        let step = plan_for(
            phase,
            &r("default/kubernetes-vip"),
            &services,
            &|_: &Source| Ok(source.to_vec()).into(),
            &[],
            &owner(),
            &Facts {
                probe: Some((&spec, Verdicts::Counted(&count))),
                nodes: None,
                nodes_unknown: None,
            },
        )
        .unwrap();
        let decision = step.decision.unwrap();
        assert_eq!(decision.evicted.len(), 1);
        let slice = &step.plan.creates[0];
        let ready: Vec<(&str, Option<bool>, Option<bool>)> = slice
            .endpoints
            .iter()
            .map(|e| {
                let c = e.conditions.as_ref();
                (
                    e.addresses[0].as_str(),
                    c.and_then(|c| c.ready),
                    c.and_then(|c| c.serving),
                )
            })
            .collect();
        assert_eq!(
            ready,
            [
                ("198.51.100.1", None, None),
                ("198.51.100.2", Some(false), Some(false)),
                ("198.51.100.3", None, None)
            ]
        );
        // The same pair without probes copies every endpoint as it is.
        let plain = plan_for(
            phase,
            &r("default/kubernetes-vip"),
            &services,
            &|_: &Source| Ok(source.to_vec()).into(),
            &[],
            &owner(),
            &Facts::default(),
        )
        .unwrap();
        assert!(plain.decision.is_none());
        assert_eq!(desired::ready_endpoints(&plain.plan.creates), 3);
    }

    #[test]
    fn without_a_node_view_a_remembered_drain_stays_only_while_the_target_holds_it_not_ready() {
        let target = r("default/kubernetes-vip");
        let services = BTreeMap::from([(target.clone(), vip())]);
        let sources = vec![Source::Service(r("default/kubernetes"))];
        let source = [apiserver_slice(&["198.51.100.1", "198.51.100.2"])];
        let remembered = BTreeSet::from(["198.51.100.2".parse().unwrap()]);
        let plan = |actual: &[EndpointSlice]| {
            plan_for(
                Intent::Mirror(&sources),
                &target,
                &services,
                &|_: &Source| Ok(source.to_vec()).into(),
                actual,
                &owner(),
                &Facts {
                    probe: None,
                    nodes: None,
                    nodes_unknown: Some(&remembered),
                },
            )
            .unwrap()
            .plan
        };
        let ready_of = |slices: &[EndpointSlice]| -> Vec<(String, bool)> {
            slices
                .iter()
                .flat_map(|s| s.endpoints.iter())
                .map(|e| (e.addresses[0].clone(), desired::is_ready(e)))
                .collect()
        };
        // This copy drained .2 in its last term; another leader has written it ready since.
        let mut written = plan(&[]).creates;
        assert_eq!(
            ready_of(&written),
            [
                ("198.51.100.1".to_owned(), true),
                ("198.51.100.2".to_owned(), true)
            ],
            "nothing written not ready: nothing to keep drained"
        );
        written[0].metadata.resource_version = Some("7".into());
        assert!(plan(&written).is_empty(), "the target stays as it is");
        // The target still holds .2 not ready: the drain stays as written.
        for e in &mut written[0].endpoints {
            if e.addresses[0] == "198.51.100.2" {
                e.conditions = Some(k8s_openapi::api::discovery::v1::EndpointConditions {
                    ready: Some(false),
                    serving: Some(false),
                    terminating: None,
                });
            }
        }
        assert!(plan(&written).is_empty(), "kept not ready as written");
    }
}
