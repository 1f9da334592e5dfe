//! Discovery documents and /version, built from the store's resource table: /api (APIVersions),
//! /api/v1 and /apis/<group>/<version> (APIResourceList), /apis (APIGroupList), /version (version.Info).
//!
//! Owns only the shape of these documents (as kube-apiserver 1.33 serves them); which resources exist
//! is the store's RESOURCES table.

use serde_json::{Value, json};

use crate::store::RESOURCES;

/// The Kubernetes version the test bed claims to be (the oldest SUSE Edge ships).
pub const GIT_VERSION: &str = "v1.33.0+testbed";

/// The /version document (k8s.io/apimachinery/pkg/version.Info).
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": GIT_VERSION,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// The /api document (APIVersions).
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn groups() -> Vec<&'static str> {
    let mut gs: Vec<&'static str> = Vec::new();
    for r in RESOURCES {
        if !r.group.is_empty() && !gs.contains(&r.group) {
            gs.push(r.group);
        }
    }
    gs
}

/// The /apis document (APIGroupList), without the core group (as the real server serves it).
pub fn api_group_list() -> Value {
    let groups: Vec<Value> = groups()
        .into_iter()
        .map(|g| {
            let versions: Vec<Value> = versions_of(g)
                .into_iter()
                .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                .collect();
            let preferred = versions.first().cloned().unwrap_or(Value::Null);
            json!({"name": g, "versions": versions, "preferredVersion": preferred})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn versions_of(group: &str) -> Vec<&'static str> {
    let mut vs: Vec<&'static str> = Vec::new();
    for r in RESOURCES.iter().filter(|r| r.group == group) {
        if !vs.contains(&r.version) {
            vs.push(r.version);
        }
    }
    vs
}

/// The /apis/<group> document (APIGroup), or None for an unknown group.
pub fn api_group(group: &str) -> Option<Value> {
    let versions: Vec<Value> = versions_of(group)
        .into_iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    let preferred = versions.first().cloned()?;
    Some(
        json!({"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": versions, "preferredVersion": preferred}),
    )
}

/// The APIResourceList for one group/version ("" group = /api/v1), or None when nothing is served
/// there. authorization.k8s.io/v1 lists selfsubjectaccessreviews (create only), as the real server.
pub fn api_resource_list(group: &str, version: &str) -> Option<Value> {
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    if group == "authorization.k8s.io" && version == "v1" {
        return Some(json!({
            "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
            "resources": [{"name": "selfsubjectaccessreviews", "singularName": "selfsubjectaccessreview",
                "namespaced": false, "kind": "SelfSubjectAccessReview", "verbs": ["create"]}],
        }));
    }
    let resources: Vec<Value> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .map(|r| {
            let mut v = json!({
                "name": r.plural,
                "singularName": r.kind.to_lowercase(),
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": r.verbs,
            });
            if !r.short_names.is_empty() {
                v["shortNames"] = json!(r.short_names);
            }
            v
        })
        .collect();
    if resources.is_empty() {
        return None;
    }
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}),
    )
}

/// Groups served for non-store APIs (SelfSubjectAccessReview), added to /apis.
pub fn api_group_list_with_authorization() -> Value {
    let mut list = api_group_list();
    if let Some(groups) = list["groups"].as_array_mut() {
        let gv = json!({"groupVersion": "authorization.k8s.io/v1", "version": "v1"});
        groups.push(json!({"name": "authorization.k8s.io", "versions": [gv.clone()], "preferredVersion": gv}));
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_lists_endpointslices_as_namespaced_in_discovery_k8s_io_v1() {
        // matches: https://kubernetes.io/docs/reference/using-api/api-concepts/#discovery-api
        let list = api_resource_list("discovery.k8s.io", "v1").unwrap();
        assert_eq!(list["groupVersion"], "discovery.k8s.io/v1");
        let slices = list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "endpointslices")
            .unwrap();
        assert_eq!(slices["kind"], "EndpointSlice");
        assert_eq!(slices["namespaced"], true);
    }

    #[test]
    fn core_group_is_served_under_api_not_apis() {
        let apis = api_group_list_with_authorization();
        assert!(
            apis["groups"]
                .as_array()
                .unwrap()
                .iter()
                .all(|g| g["name"] != "")
        );
        assert!(api_resource_list("", "v1").is_some());
    }
}
