//! The report `check` and `status` produce: plain data, printed as text by `render.rs` and
//! serialized as is for `--output json`. Gathering it is the job of the sibling files.

use serde::Serialize;

use super::permissions::Feature;

/// What a printed report concluded, for `main` to turn into the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to fix (warnings may have been printed: they do not change the verdict).
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

/// One permission the daemon needs, as the API answered a SelfSubjectAccessReview for it.
#[derive(Debug, Clone, Serialize)]
pub struct Permission {
    /// Kubernetes verb.
    pub verb: &'static str,
    /// API group ("" for core).
    pub group: &'static str,
    /// Resource (plural).
    pub resource: &'static str,
    /// Namespace, or `None` for all namespaces (a cluster-wide request).
    pub namespace: Option<String>,
    /// The one object the request is made on (`None`: any), e.g. the election Lease.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The features of the daemon that make this request (at least one).
    pub features: Vec<Feature>,
    /// Whether the API allows it.
    pub allowed: bool,
}

/// A slice on a pair's target that this copier group does not manage: the VIP serves its ready
/// addresses all the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ForeignReport {
    /// Name of the EndpointSlice (in the target's namespace).
    pub name: String,
    /// Who writes it: its managed-by label, `endpoint-copier (group <g>)`, or `unknown`.
    pub manager: String,
    /// Addresses of its ready endpoints, sorted.
    pub ready_addresses: Vec<String>,
    /// What to do about it, in one line.
    pub fix: String,
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
    /// Ready endpoints in the target slices this group manages (adopted ones included).
    pub target_endpoints: usize,
    /// Ready endpoints in the target slices other managers write ([`PairReport::foreign`]).
    pub foreign_endpoints: usize,
    /// Whether the leader would write nothing now; computed over this group's slices only.
    pub in_sync: bool,
    /// Why nothing would be written (fail-static), if so.
    pub holding: Option<String>,
    /// The writes the leader would make now.
    pub plan: Vec<String>,
    /// The target's slices that this group does not manage, sorted by name.
    pub foreign: Vec<ForeignReport>,
    /// The pair's probe in the config's vocabulary (`{ https = "/readyz" }`), `None` when it
    /// does not probe.
    pub probe: Option<String>,
    /// For a pair that probes: each ready source endpoint with the live hosts' votes and the
    /// quorum's decision, sorted by address.
    pub endpoints: Vec<EndpointReport>,
    /// Live hosts whose every verdict is down: presumed cut off, their votes not counted.
    pub presumed_cut_off: Vec<String>,
    /// For a pair that probes and whose target has a LoadBalancer ingress address: the pair's
    /// probe sent through that address (`check` only).
    pub vip: Vec<VipReport>,
    /// Drained Nodes (annotation `endpoint-copier/drain`, not expired), by name.
    pub drained_nodes: Vec<String>,
    /// Endpoints the leader writes not ready because their Node is drained.
    pub drained: Vec<String>,
    /// Endpoints drained or evicted but kept ready, because the target (that family) would
    /// otherwise have no ready endpoint.
    pub kept: Vec<String>,
    /// Source endpoints without an endpoint in a derived family (a Node without an address of
    /// that family, or no Node found), in words.
    pub node_gaps: Vec<String>,
}

/// The pair's probe sent to the target's LoadBalancer address (the VIP) from this host.
#[derive(Debug, Clone, Serialize)]
pub struct VipReport {
    /// What was probed (`https://192.0.2.100:6443/readyz`).
    pub probe: String,
    /// Whether it passed.
    pub ok: bool,
    /// What happened (`HTTP 200`, `timed out after 250 ms`, `TLS: ...`).
    pub detail: String,
}

/// One endpoint of a probing pair, as the live hosts see it.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointReport {
    /// Its address.
    pub address: String,
    /// What is probed (`https://198.51.100.1:6443/readyz`); `None` when no port is known.
    pub probe: Option<String>,
    /// `ready`, `evicted` (a majority sees it down) or `spared` (a majority sees it down but it
    /// is the last ready one).
    pub decision: String,
    /// Live hosts that see it down.
    pub down: Vec<String>,
    /// Live hosts that see it up.
    pub up: Vec<String>,
    /// Live hosts whose votes count and that have a verdict on it: the majority is taken over
    /// these (a host without one abstains).
    pub counted: usize,
    /// Why this host cannot judge it, from one probe `check` sent the way this host's daemon
    /// probes it (its certificate does not name the address, another CA, an anonymous probe
    /// refused); `None` when that probe could judge it, or was not sent (`status`).
    pub abstains_here: Option<String>,
}

/// One verdict a member publishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerdictReport {
    /// The probed endpoint (`https://198.51.100.1:6443/readyz`).
    pub endpoint: String,
    /// `up`, `down`, or `abstains` (that host cannot judge the endpoint; no vote either way).
    pub verdict: String,
    /// When it last changed, by that host's clock (RFC 3339).
    pub since: Option<String>,
    /// Why that host abstains (`TLS: the certificate does not name 198.51.100.1 (...)`).
    pub reason: Option<String>,
}

/// A refused pair.
#[derive(Debug, Clone, Serialize)]
pub struct RefusalReport {
    /// Target Service.
    pub target: String,
    /// The reason, as logged.
    pub reason: String,
}

/// The election Lease as read.
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

/// A pair as a member publishes it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ConfiguredPair {
    /// Source Service, `namespace/name`.
    pub source: String,
    /// Target Service, `namespace/name`.
    pub target: String,
    /// The digest of the pair's full configuration (`group::digest`: `s=…;a=…;p=…;d=…`);
    /// `None` in a record of 0.1.0. Not part of the pair's identity: two copies naming the same
    /// pair with other digests configure it differently.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// One member of the copier group, from its member Lease.
#[derive(Debug, Clone, Serialize)]
pub struct MemberReport {
    /// The identity it names (its object name when its record cannot be read).
    pub identity: String,
    /// Its member Lease, `namespace/name` (the member namespace, or the election Lease's for a
    /// copy of an older version).
    pub lease: String,
    /// Whether this is the copy configured on this host (same identity).
    pub this_host: bool,
    /// Whether it looks live: renewed within its `leaseDurationSeconds` of now, by this host's
    /// clock (a one-shot command has no observation history; clocks may drift).
    pub live: bool,
    /// Seconds between its last renewal and now, by this host's clock (negative when its clock
    /// runs ahead of ours); `None` when it never renewed.
    pub renewed_secs_ago: Option<i64>,
    /// Its `leaseDurationSeconds`.
    pub lease_duration_secs: Option<i32>,
    /// The pairs its own config names, sorted.
    pub pairs: Vec<ConfiguredPair>,
    /// Why its record cannot be read, if so (the leader then counts it as wanting every target).
    pub error: Option<String>,
    /// Its probe verdicts: what that host sees, sorted by endpoint.
    pub verdicts: Vec<VerdictReport>,
    /// The nonce of the process that wrote it (`None`: an older version).
    pub nonce: Option<String>,
    /// The nonce of another live process its writer saw writing under the same identity
    /// (`-`: one without a nonce): a twin, whose ballot does not count.
    pub twin: Option<String>,
    /// Verdicts its writer left out to fit the record's size budget (it abstains on them).
    pub omitted: usize,
    /// The product version its writer runs (`None`: 0.1.0, which writes none, or a record
    /// that cannot be read).
    pub version: Option<String>,
}

/// The copier group this host belongs to.
#[derive(Debug, Clone, Serialize)]
pub struct GroupReport {
    /// Value of the `endpoint-copier/group` label on the group's slices and member Leases.
    pub label: String,
    /// The election Lease, `namespace/name`.
    pub lease: String,
    /// This host's identity in the group.
    pub identity: String,
    /// The member Leases found, sorted by identity; `None` when they could not be read.
    pub members: Option<Vec<MemberReport>>,
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
    /// The copier group and its members.
    pub group: Option<GroupReport>,
    /// Each remote kubeconfig of the configured sources: whether it loads and its cluster
    /// answers, and per source the rights, the Service and its ready endpoints.
    pub remotes: Vec<super::remote::Reach>,
    /// One line per thing worth knowing that does not stop the daemon from working; they do not
    /// change the verdict.
    pub warnings: Vec<String>,
    /// One line per problem; empty when all is well.
    pub problems: Vec<String>,
}
