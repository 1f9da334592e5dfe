//! RBAC for the test bed: Roles, ClusterRoles, RoleBindings and ClusterRoleBindings, evaluated as
//! kube-apiserver's RBAC authorizer evaluates them, for the requests the test bed serves.
//!
//! Owns the policy (loaded from manifests with [`Policy::load_yaml`]) and the decision
//! ([`Policy::allows`]). Turning a request into [`Attributes`] (verb, group, resource,
//! namespace, name — a list or watch named by the field selector `metadata.name=`) and a denial
//! into a 403 is server.rs's; authentication is auth.rs's.
//!
//! Semantics, from Kubernetes v1.28 (`plugin/pkg/auth/authorizer/rbac/rbac.go` `RuleAllows`,
//! `pkg/apis/rbac/v1/evaluation_helpers.go`, `pkg/registry/rbac/validation/rule.go`
//! `VisitRulesFor` and `appliesToUser`):
//! - a request is allowed when any rule reachable by the user allows it: the rules of every
//!   ClusterRoleBinding whose subjects include the user, and, for a namespaced request, of
//!   every RoleBinding in that namespace whose subjects include the user (a RoleBinding may
//!   reference a Role of its namespace or a ClusterRole, whose rules then apply in that
//!   namespace only). RBAC only allows: there is no deny rule.
//! - a subject is a User (by name), a Group (by membership) or a ServiceAccount
//!   (`system:serviceaccount:<namespace>:<name>`, the namespace defaulting to the binding's);
//! - a rule allows a resource request when its verbs contain the verb or `*`, its apiGroups the
//!   group or `*`, its resources the resource (`resource/subresource` for a subresource, `*`,
//!   or `*/subresource`), and its resourceNames are empty or contain the request's name. A
//!   request without a name (create, a list without a `metadata.name` field selector) matches
//!   only rules without resourceNames: RBAC cannot narrow a create to a name.
//!
//! Not modelled: aggregated ClusterRoles, non-resource URLs (every test bed request to them is
//! allowed), escalation checks on writing RBAC objects (they are loaded, not written).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// One rule of a Role or ClusterRole.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// Verbs, or `*`.
    #[serde(default)]
    pub verbs: Vec<String>,
    /// API groups (`""` for core), or `*`.
    #[serde(default)]
    pub api_groups: Vec<String>,
    /// Resources (plural, `resource/subresource`), `*` or `*/subresource`.
    #[serde(default)]
    pub resources: Vec<String>,
    /// Object names; empty means every object.
    #[serde(default)]
    pub resource_names: Vec<String>,
}

/// A subject of a binding.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Subject {
    /// `User`, `Group` or `ServiceAccount`.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// A ServiceAccount's namespace.
    #[serde(default)]
    pub namespace: Option<String>,
}

/// What a binding grants to its subjects.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RoleRef {
    /// `Role` or `ClusterRole`.
    pub kind: String,
    /// Its name.
    pub name: String,
}

/// A RoleBinding (with its namespace) or a ClusterRoleBinding (without).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Binding {
    namespace: Option<String>,
    role_ref: RoleRef,
    subjects: Vec<Subject>,
}

/// The user a request is made by.
#[derive(Debug, Clone, Copy)]
pub struct UserInfo<'a> {
    /// User name.
    pub name: &'a str,
    /// Group names.
    pub groups: &'a [String],
}

/// A resource request as the authorizer sees it.
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    /// The verb (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, ...).
    pub verb: &'a str,
    /// The API group (`""` for core).
    pub api_group: &'a str,
    /// The resource (plural).
    pub resource: &'a str,
    /// The subresource, if any.
    pub subresource: Option<&'a str>,
    /// The namespace; `None` for a cluster-scoped or all-namespaces request.
    pub namespace: Option<&'a str>,
    /// The object's name when the request names one.
    pub name: Option<&'a str>,
}

/// Why manifests could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A YAML document could not be parsed.
    #[error("a manifest document does not parse: {0}")]
    Yaml(#[from] serde_yaml::Error),
    /// An RBAC object is malformed.
    #[error("{kind} {name}: {source}")]
    Object {
        /// Its kind.
        kind: String,
        /// Its name.
        name: String,
        /// What is wrong.
        #[source]
        source: serde_json::Error,
    },
}

/// Roles, ClusterRoles and their bindings.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    roles: BTreeMap<(String, String), Vec<Rule>>,
    cluster_roles: BTreeMap<String, Vec<Rule>>,
    bindings: Vec<Binding>,
}

/// The parts of a role or binding object the policy reads.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Object {
    metadata: Meta,
    #[serde(default)]
    rules: Vec<Rule>,
    role_ref: Option<RoleRef>,
    #[serde(default)]
    subjects: Vec<Subject>,
}

#[derive(Deserialize)]
struct Meta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

impl Policy {
    /// Loads every RBAC object of the YAML documents in `text`; returns the other objects (a
    /// Namespace, a Lease...) for the caller to create.
    ///
    /// # Errors
    /// [`Error`] when a document does not parse or an RBAC object is malformed.
    pub fn load_yaml(&mut self, text: &str) -> Result<Vec<Value>, Error> {
        let mut others = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(text) {
            let value = Value::deserialize(doc)?;
            if value.is_null() {
                continue;
            }
            if !self.add(&value)? {
                others.push(value);
            }
        }
        Ok(others)
    }

    /// Adds `object` if it is a Role, ClusterRole, RoleBinding or ClusterRoleBinding of
    /// `rbac.authorization.k8s.io/v1`; returns whether it was one.
    ///
    /// # Errors
    /// [`Error::Object`] when it is one but malformed.
    pub fn add(&mut self, object: &Value) -> Result<bool, Error> {
        let kind = object["kind"].as_str().unwrap_or_default().to_string();
        if object["apiVersion"] != "rbac.authorization.k8s.io/v1"
            || !matches!(
                kind.as_str(),
                "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding"
            )
        {
            return Ok(false);
        }
        let o: Object = serde_json::from_value(object.clone()).map_err(|source| Error::Object {
            kind: kind.clone(),
            name: object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            source,
        })?;
        let name = o.metadata.name;
        match (kind.as_str(), o.metadata.namespace, o.role_ref) {
            ("Role", Some(ns), _) => {
                self.roles.insert((ns, name), o.rules);
            }
            ("ClusterRole", _, _) => {
                self.cluster_roles.insert(name, o.rules);
            }
            ("RoleBinding", Some(ns), Some(role_ref)) => self.bindings.push(Binding {
                namespace: Some(ns),
                role_ref,
                subjects: o.subjects,
            }),
            ("ClusterRoleBinding", _, Some(role_ref)) => self.bindings.push(Binding {
                namespace: None,
                role_ref,
                subjects: o.subjects,
            }),
            // A namespaced kind without namespace, a binding without roleRef: the API would
            // have refused it; keep nothing.
            _ => {}
        }
        Ok(true)
    }

    /// Whether `user` may make the request `attrs` (see the module documentation).
    pub fn allows(&self, user: UserInfo<'_>, attrs: &Attributes<'_>) -> bool {
        self.bindings
            .iter()
            .filter(|b| match (&b.namespace, attrs.namespace) {
                // ClusterRoleBindings apply everywhere; RoleBindings in their namespace only.
                (None, _) => true,
                (Some(ns), Some(req)) => ns == req,
                (Some(_), None) => false,
            })
            .filter(|b| {
                b.subjects
                    .iter()
                    .any(|s| applies_to(user, s, b.namespace.as_deref()))
            })
            .flat_map(|b| self.rules_of(b))
            .any(|rule| rule_allows(rule, attrs))
    }

    /// The rules `binding` grants (none when its role does not exist, as the API would say).
    fn rules_of(&self, binding: &Binding) -> &[Rule] {
        let rules = match (binding.role_ref.kind.as_str(), &binding.namespace) {
            ("ClusterRole", _) => self.cluster_roles.get(&binding.role_ref.name),
            ("Role", Some(ns)) => self.roles.get(&(ns.clone(), binding.role_ref.name.clone())),
            _ => None,
        };
        rules.map_or(&[], Vec::as_slice)
    }

    /// Every rule reachable by `user` in `namespace` (cluster-wide ones with `None`), as
    /// `(namespace the rule applies in, rule)`: for least-privilege checks in tests.
    pub fn rules_for(&self, user: UserInfo<'_>) -> Vec<(Option<String>, Rule)> {
        self.bindings
            .iter()
            .filter(|b| {
                b.subjects
                    .iter()
                    .any(|s| applies_to(user, s, b.namespace.as_deref()))
            })
            .flat_map(|b| {
                self.rules_of(b)
                    .iter()
                    .map(|r| (b.namespace.clone(), r.clone()))
            })
            .collect()
    }
}

/// `appliesToUser`: whether `subject` of a binding in `namespace` names `user`.
fn applies_to(user: UserInfo<'_>, subject: &Subject, namespace: Option<&str>) -> bool {
    match subject.kind.as_str() {
        "User" => user.name == subject.name,
        "Group" => user.groups.contains(&subject.name),
        "ServiceAccount" => {
            let Some(ns) = subject.namespace.as_deref().or(namespace) else {
                return false;
            };
            user.name == format!("system:serviceaccount:{ns}:{}", subject.name)
        }
        _ => false,
    }
}

/// `RuleAllows` for a resource request.
pub fn rule_allows(rule: &Rule, attrs: &Attributes<'_>) -> bool {
    let combined = match attrs.subresource {
        Some(sub) => format!("{}/{sub}", attrs.resource),
        None => attrs.resource.to_string(),
    };
    let verb = rule.verbs.iter().any(|v| v == "*" || v == attrs.verb);
    let group = rule
        .api_groups
        .iter()
        .any(|g| g == "*" || g == attrs.api_group);
    let resource = rule.resources.iter().any(|r| {
        r == "*"
            || *r == combined
            || attrs
                .subresource
                .is_some_and(|sub| r.strip_prefix("*/") == Some(sub))
    });
    let name = rule.resource_names.is_empty()
        || attrs
            .name
            .is_some_and(|n| rule.resource_names.iter().any(|r| r == n));
    verb && group && resource && name
}

/// `fieldSelector.RequiresExactMatch("metadata.name")`: the name a list or watch is narrowed
/// to, when its field selector requires exactly one value of `metadata.name` (the apiserver's
/// RequestInfoFactory then authorizes it as a request on that name).
pub fn name_from_field_selector(selector: &str) -> Option<&str> {
    let mut found = None;
    for term in selector.split(',').map(str::trim) {
        let value = term
            .strip_prefix("metadata.name==")
            .or_else(|| term.strip_prefix("metadata.name="));
        if let Some(v) = value {
            if found.is_some() || v.is_empty() {
                return None;
            }
            found = Some(v);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFESTS: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: lease, namespace: kube-system}
rules:
  - apiGroups: ["coordination.k8s.io"]
    resources: ["leases"]
    verbs: ["get", "update", "watch"]
    resourceNames: ["endpoint-copier"]
  - apiGroups: ["coordination.k8s.io"]
    resources: ["leases"]
    verbs: ["create"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: lease, namespace: kube-system}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: lease}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: copiers}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: read-nodes}
rules: [{apiGroups: [""], resources: ["nodes", "pods/log"], verbs: ["list"]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: nodes-here, namespace: team}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: read-nodes}
subjects: [{kind: ServiceAccount, name: bot}]
---
apiVersion: v1
kind: Namespace
metadata: {name: team}
"#;

    fn attrs<'a>(
        verb: &'a str,
        resource: &'a str,
        namespace: Option<&'a str>,
        name: Option<&'a str>,
    ) -> Attributes<'a> {
        Attributes {
            verb,
            api_group: "coordination.k8s.io",
            resource,
            subresource: None,
            namespace,
            name,
        }
    }

    #[test]
    fn resource_names_narrow_named_requests_and_never_match_an_unnamed_one() {
        let mut p = Policy::default();
        let others = p.load_yaml(MANIFESTS).unwrap();
        assert_eq!(others.len(), 1, "the Namespace is not RBAC");
        let groups = vec!["copiers".to_string()];
        let u = UserInfo {
            name: "endpoint-copier-node-1",
            groups: &groups,
        };
        let ks = Some("kube-system");
        assert!(p.allows(u, &attrs("update", "leases", ks, Some("endpoint-copier"))));
        assert!(!p.allows(u, &attrs("update", "leases", ks, Some("kube-scheduler"))));
        // A watch narrowed by name is a request on that name; an unnarrowed one is not.
        assert!(p.allows(u, &attrs("watch", "leases", ks, Some("endpoint-copier"))));
        assert!(!p.allows(u, &attrs("watch", "leases", ks, None)));
        // A create has no name: only a rule without resourceNames allows it.
        assert!(p.allows(u, &attrs("create", "leases", ks, None)));
        // Another namespace, another user: nothing.
        assert!(!p.allows(
            u,
            &attrs("update", "leases", Some("default"), Some("endpoint-copier"))
        ));
        let nobody = UserInfo {
            name: "someone",
            groups: &[],
        };
        assert!(!p.allows(
            nobody,
            &attrs("update", "leases", ks, Some("endpoint-copier"))
        ));
    }

    #[test]
    fn a_rolebinding_to_a_clusterrole_grants_its_rules_in_its_namespace_only() {
        let mut p = Policy::default();
        p.load_yaml(MANIFESTS).unwrap();
        let bot = UserInfo {
            name: "system:serviceaccount:team:bot",
            groups: &[],
        };
        let core = |resource, subresource, namespace| Attributes {
            verb: "list",
            api_group: "",
            resource,
            subresource,
            namespace,
            name: None,
        };
        assert!(p.allows(bot, &core("nodes", None, Some("team"))));
        assert!(p.allows(bot, &core("pods", Some("log"), Some("team"))));
        assert!(!p.allows(bot, &core("pods", None, Some("team"))));
        assert!(!p.allows(bot, &core("nodes", None, None)));
        assert!(!p.allows(bot, &core("nodes", None, Some("other"))));
    }

    #[test]
    fn the_name_of_a_list_comes_from_an_exact_field_selector_only() {
        assert_eq!(
            name_from_field_selector("metadata.name=endpoint-copier"),
            Some("endpoint-copier")
        );
        assert_eq!(
            name_from_field_selector("metadata.namespace=a,metadata.name==x"),
            Some("x")
        );
        assert_eq!(name_from_field_selector("metadata.name!=x"), None);
        assert_eq!(
            name_from_field_selector("metadata.name=a,metadata.name=b"),
            None
        );
        assert_eq!(name_from_field_selector(""), None);
    }
}
