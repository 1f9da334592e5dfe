//! The resources the test bed serves, and the per-resource facts the registry's strategies encode.
//!
//! Owns: [`RESOURCES`] (group, version, plural, kind, scope, short names and verbs, which
//! `discovery.rs` serves and every request is routed by), looking a resource up, and the strategy
//! flags the write path asks (`AllowCreateOnUpdate`, `AllowUnconditionalUpdate`, whether
//! metadata.generation is kept). Leaves what a strategy does with an object to `writes.rs` and
//! `validate.rs`.
//!
//! Simplification: core/v1 and events.k8s.io/v1 Events are two resources here, each with its own
//! storage; the real server serves both from one storage, converting between the versions.

/// Storage identity of a resource: (group, plural).
pub(super) type ResKey = (&'static str, &'static str);

/// One API resource the test bed serves.
#[derive(Debug)]
pub struct Resource {
    /// API group ("" for core).
    pub group: &'static str,
    /// API version, e.g. "v1".
    pub version: &'static str,
    /// Plural resource name, e.g. "endpointslices".
    pub plural: &'static str,
    /// Kind, e.g. "EndpointSlice".
    pub kind: &'static str,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// Short names served by discovery.
    pub short_names: &'static [&'static str],
    /// Verbs served by discovery.
    pub verbs: &'static [&'static str],
}

impl Resource {
    /// `apiVersion` of this resource's objects ("v1", "discovery.k8s.io/v1").
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The group-qualified resource as errors name it ("services", "leases.coordination.k8s.io").
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Storage identity: (group, plural).
    pub(super) fn key(&self) -> ResKey {
        (self.group, self.plural)
    }

    /// Whether a PUT to a missing object creates it (each strategy's `AllowCreateOnUpdate`).
    pub(super) fn allow_create_on_update(&self) -> bool {
        // Events went to false upstream ("POST is needed to create one").
        matches!(
            (self.group, self.plural),
            ("", "services") | ("", "endpoints") | ("coordination.k8s.io", "leases")
        )
    }

    /// Whether a PUT without metadata.resourceVersion is allowed (each strategy's
    /// `AllowUnconditionalUpdate`; false for Leases, so leader election is always conditional).
    pub(super) fn allow_unconditional_update(&self) -> bool {
        !(self.group == "coordination.k8s.io" && self.plural == "leases")
    }

    /// Whether the strategy maintains metadata.generation (only EndpointSlice among ours:
    /// pkg/registry/discovery/endpointslice/strategy.go; Services, Leases, Events have none).
    pub(super) fn has_generation(&self) -> bool {
        self.group == "discovery.k8s.io" && self.plural == "endpointslices"
    }
}

/// The verbs discovery lists for most resources (Namespaces have no deletecollection).
const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// Every resource the test bed serves.
pub static RESOURCES: &[Resource] = &[
    Resource {
        group: "",
        version: "v1",
        plural: "namespaces",
        kind: "Namespace",
        namespaced: false,
        short_names: &["ns"],
        verbs: &[
            "create", "delete", "get", "list", "patch", "update", "watch",
        ],
    },
    Resource {
        group: "",
        version: "v1",
        plural: "nodes",
        kind: "Node",
        namespaced: false,
        short_names: &["no"],
        verbs: VERBS,
    },
    Resource {
        group: "",
        version: "v1",
        plural: "services",
        kind: "Service",
        namespaced: true,
        short_names: &["svc"],
        verbs: VERBS,
    },
    Resource {
        group: "",
        version: "v1",
        plural: "endpoints",
        kind: "Endpoints",
        namespaced: true,
        short_names: &["ep"],
        verbs: VERBS,
    },
    Resource {
        group: "",
        version: "v1",
        plural: "events",
        kind: "Event",
        namespaced: true,
        short_names: &["ev"],
        verbs: VERBS,
    },
    Resource {
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
        kind: "EndpointSlice",
        namespaced: true,
        short_names: &[],
        verbs: VERBS,
    },
    Resource {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        kind: "Lease",
        namespaced: true,
        short_names: &[],
        verbs: VERBS,
    },
    Resource {
        group: "events.k8s.io",
        version: "v1",
        plural: "events",
        kind: "Event",
        namespaced: true,
        short_names: &["ev"],
        verbs: VERBS,
    },
];

/// Looks a resource up by group, version and plural.
pub fn resource(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Looks a resource up by its storage identity.
pub(super) fn resource_by_key(k: ResKey) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.key() == k)
}
