//! Every name the product uses, defined once, and [`ServiceRef`], the `namespace/name` of a Service.
//!
//! Other modules build their strings from these constants; nothing else spells `endpoint-copier`.

use std::fmt;
use std::str::FromStr;

/// The crate, binary, unit stem, field manager and managed-by value.
pub const NAME: &str = "endpoint-copier";
/// Field manager sent with every write, so `managedFields` names us.
pub const FIELD_MANAGER: &str = NAME;
/// Prefix of the environment variables that override config keys.
pub const ENV_PREFIX: &str = "ENDPOINT_COPIER_";
/// Environment variable that sets the log filter (wins over `[log] level`).
pub const LOG_ENV: &str = "ENDPOINT_COPIER_LOG";
/// Drop-in folders in increasing precedence: package defaults, runtime, admin.
pub const CONFIG_DIRS: [&str; 3] = [
    "/usr/lib/endpoint-copier/config.d",
    "/run/endpoint-copier/config.d",
    "/etc/endpoint-copier/config.d",
];
/// Kubeconfig files tried, in order, when `kubeconfig = "auto"`: RKE2, then K3s.
pub const AUTO_KUBECONFIGS: [&str; 2] =
    ["/etc/rancher/rke2/rke2.yaml", "/etc/rancher/k3s/k3s.yaml"];

/// Namespace of the Lease that elects the active copy (default).
pub const LEASE_NAMESPACE: &str = "kube-system";
/// Name of the Lease that elects the active copy (default).
pub const LEASE_NAME: &str = NAME;

/// Label that ties an EndpointSlice to its Service (set by us on every target slice).
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label naming the controller that manages an EndpointSlice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// Our value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = NAME;
/// The value endpoint-copier-operator put in [`MANAGED_BY_LABEL`] (v0.2 core/v1 Endpoints).
pub const ECO_MANAGED_BY: &str = "endpoint-copier-operator";
/// Label naming the source EndpointSlice a target slice was copied from (also set by ECO, which
/// is how we recognise its slices to adopt them).
pub const SOURCE_LABEL: &str = "endpoint-copier/source";
/// Label naming which source of a pair with several (or with a source other than one Service of
/// this cluster) a target slice comes from: `service-<hash>`, `remote-<hash>` or `static`
/// (`desired::union::source_id`). How a source that fails keeps its slices in the target.
pub const SOURCE_ID_LABEL: &str = "endpoint-copier/source-id";

/// Annotation that turns a target Service into a pair (value `"true"`).
pub const ANNOTATION_ENABLED: &str = "endpoint-copier/enabled";
/// Annotation naming the source Service of an annotated pair.
pub const ANNOTATION_SOURCE_NAME: &str = "endpoint-copier/default-service-name";
/// Annotation naming the source Service's namespace (default: the target's namespace).
pub const ANNOTATION_SOURCE_NAMESPACE: &str = "endpoint-copier/default-service-namespace";
/// Annotation on an annotated target Service: how its endpoints are probed, in the config's
/// vocabulary as a string (`{ https = "/readyz" }`, `{ tcp = 5432 }`, `false`). Absent: the
/// apiservers' `/readyz` when the source is `default/kubernetes`, no probe otherwise.
pub const ANNOTATION_PROBE: &str = "endpoint-copier/probe";

/// Annotation on a Node that takes every endpoint on it out of every target (`ready: false,
/// serving: false`, the endpoint kept in the slice) while its value is `"true"`: a planned drain
/// for maintenance, set by hand or by `endpoint-copier drain`.
pub const ANNOTATION_DRAIN: &str = "endpoint-copier/drain";
/// Annotation on a Node beside [`ANNOTATION_DRAIN`]: an RFC 3339 instant after which the drain
/// no longer counts (judged by the leader's wall clock) — unless [`ANNOTATION_DRAIN_DURATION`] is
/// set too, which then decides and leaves this one for people to read. Written by
/// `endpoint-copier drain`, so that a drain whose `resume` never ran ends by itself.
pub const ANNOTATION_DRAIN_EXPIRES: &str = "endpoint-copier/drain-expires";
/// Annotation on a Node beside [`ANNOTATION_DRAIN`]: how long the drain lasts, in whole seconds,
/// counted from when the leader first saw it (by its own monotonic clock). Written by
/// `endpoint-copier drain` with [`ANNOTATION_DRAIN_EXPIRES`]; where both are set, this one
/// decides, so no host's wall clock ends a drain early or late.
pub const ANNOTATION_DRAIN_DURATION: &str = "endpoint-copier/drain-duration-secs";
/// The value of [`ANNOTATION_DRAIN`] that drains; any other value is ignored (and reported).
pub const DRAIN_VALUE: &str = "true";
/// The older name of [`CONTROL_PLANE_LABEL`] (Kubernetes before 1.24, and still set by RKE2 and
/// K3s beside it).
pub const MASTER_LABEL: &str = "node-role.kubernetes.io/master";
/// Label that RKE2 and K3s set on server Nodes (the hosts of the apiservers): the default
/// `[nodes] selector`.
pub const CONTROL_PLANE_LABEL: &str = "node-role.kubernetes.io/control-plane";
/// Node label naming its zone, copied into an endpoint's `zone`.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// The default pair's source: the built-in Service the apiservers write.
pub const DEFAULT_SOURCE: &str = "default/kubernetes";
/// The default pair's target: the LoadBalancer Service EIB creates for the VIP.
pub const DEFAULT_TARGET: &str = "default/kubernetes-vip";

/// The `namespace/name` of a Service, validated as Kubernetes validates them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(into = "String")]
pub struct ServiceRef {
    /// Namespace (a DNS-1123 label).
    pub namespace: String,
    /// Service name (a DNS-1035 label).
    pub name: String,
}

/// Why a string is not a valid `namespace/name` Service reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceRefError {
    /// No `/`, or more than one.
    #[error("'{0}' is not of the form namespace/name")]
    Shape(String),
    /// The namespace is not a DNS-1123 label.
    #[error(
        "namespace '{0}' is not a valid DNS-1123 label (lowercase letters, digits and '-', at most 63, starting and ending with a letter or digit)"
    )]
    Namespace(String),
    /// The name is not a DNS-1035 label.
    #[error(
        "Service name '{0}' is not a valid DNS-1035 label (lowercase letters, digits and '-', at most 63, starting with a letter and ending with a letter or digit)"
    )]
    Name(String),
}

impl ServiceRef {
    /// Builds a reference from its parts, validating both.
    ///
    /// # Errors
    /// [`ServiceRefError`] naming the part that is not valid.
    pub fn new(namespace: &str, name: &str) -> Result<Self, ServiceRefError> {
        if !is_dns1123_label(namespace) {
            return Err(ServiceRefError::Namespace(namespace.to_owned()));
        }
        if !is_dns1035_label(name) {
            return Err(ServiceRefError::Name(name.to_owned()));
        }
        Ok(Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }
}

impl FromStr for ServiceRef {
    type Err = ServiceRefError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((ns, name)) if !name.contains('/') => Self::new(ns, name),
            _ => Err(ServiceRefError::Shape(s.to_owned())),
        }
    }
}

impl TryFrom<String> for ServiceRef {
    type Error = ServiceRefError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<ServiceRef> for String {
    fn from(r: ServiceRef) -> Self {
        r.to_string()
    }
}

impl<'de> serde::Deserialize<'de> for ServiceRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A DNS-1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters (namespaces).
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A DNS-1035 label: like DNS-1123 but starting with a letter (Service names).
pub fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

/// A DNS-1123 subdomain: dot-separated DNS-1123 labels, at most 253 characters (EndpointSlice,
/// Lease and Event names).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// Label naming the copier group (the Lease that elects its copies) on every EndpointSlice and
/// member Lease the group writes; its value is `group::Group::label_value`.
pub const GROUP_LABEL: &str = "endpoint-copier/group";
/// Label marking a member Lease (value [`MEMBER_LABEL_VALUE`]): one per running copy, so that the
/// leader knows which copies are live and what each one is configured with.
pub const MEMBER_LABEL: &str = "endpoint-copier/member";
/// The value of [`MEMBER_LABEL`].
pub const MEMBER_LABEL_VALUE: &str = "true";
/// Annotation on a member Lease holding the copy's configured pairs as compact sorted JSON
/// (`[{"source":"default/kubernetes","target":"default/kubernetes-vip"}]`).
pub const MEMBER_PAIRS_ANNOTATION: &str = "endpoint-copier/pairs";
/// Annotation on a member Lease: the copy's probe verdicts, `{"down":[target...],"up":[target...]}`
/// with each target in its display form (`https://198.51.100.1:6443/readyz`). Absent: no verdicts.
pub const MEMBER_VERDICTS_ANNOTATION: &str = "endpoint-copier/verdicts";
/// Annotation on a member Lease: the targets the copy cannot judge and why, as compact sorted
/// JSON (`{"https://198.51.100.1:6443/readyz":"TLS: the certificate does not name ..."}`); these
/// targets are in no list of [`MEMBER_VERDICTS_ANNOTATION`], so they count neither way. Absent:
/// no abstentions.
pub const MEMBER_ABSTENTIONS_ANNOTATION: &str = "endpoint-copier/abstentions";
/// Annotation on a member Lease: the writing process's nonce (16 hex digits drawn at start), so
/// that two live processes sharing one identity are told apart (`group::twins`).
pub const MEMBER_NONCE_ANNOTATION: &str = "endpoint-copier/nonce";
/// Annotation on a member Lease: the nonce of another live process this process saw writing its
/// member Lease under the same identity (`-` when that process wrote none). Readers do not count
/// the ballot of an identity so marked.
pub const MEMBER_TWIN_ANNOTATION: &str = "endpoint-copier/twin";
/// Annotation on a member Lease: the product version of the process that writes it (`0.2.0`;
/// absent in records of 0.1.0). Shown by `status` and STATUS when live members differ.
pub const MEMBER_VERSION_ANNOTATION: &str = "endpoint-copier/version";
/// Default namespace of the member Leases (`[members] namespace`): a namespace of their own, so
/// that the right to create and update member Leases reaches no other component's Lease.
pub const MEMBERS_NAMESPACE: &str = "endpoint-copier";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_ref_parses_namespace_and_name() {
        let r: ServiceRef = "default/kubernetes-vip".parse().unwrap();
        assert_eq!(r.namespace, "default");
        assert_eq!(r.name, "kubernetes-vip");
        assert_eq!(r.to_string(), "default/kubernetes-vip");
    }

    #[test]
    fn service_ref_rejects_bad_shapes_and_names() {
        assert!(matches!(
            "kubernetes".parse::<ServiceRef>(),
            Err(ServiceRefError::Shape(_))
        ));
        assert!(matches!(
            "a/b/c".parse::<ServiceRef>(),
            Err(ServiceRefError::Shape(_))
        ));
        assert!(matches!(
            "Default/x".parse::<ServiceRef>(),
            Err(ServiceRefError::Namespace(_))
        ));
        assert!(matches!(
            "default/1abc".parse::<ServiceRef>(),
            Err(ServiceRefError::Name(_))
        ));
        assert!(matches!(
            "default/".parse::<ServiceRef>(),
            Err(ServiceRefError::Name(_))
        ));
        assert!(matches!(
            "default/a-".parse::<ServiceRef>(),
            Err(ServiceRefError::Name(_))
        ));
        let long = format!("default/{}", "a".repeat(64));
        assert!(matches!(
            long.parse::<ServiceRef>(),
            Err(ServiceRefError::Name(_))
        ));
    }

    #[test]
    fn subdomains_allow_dots_but_not_empty_labels() {
        assert!(is_dns1123_subdomain("kubernetes-vip.abc"));
        assert!(!is_dns1123_subdomain("a..b"));
        assert!(!is_dns1123_subdomain(""));
    }
}
