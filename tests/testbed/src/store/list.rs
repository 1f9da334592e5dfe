//! Lists: one page of a resource's objects as a `<Kind>List`, at the resourceVersion asked for,
//! as the registry's List over etcd3 (k8s.io/apiserver/pkg/storage/etcd3/store.go GetList) and
//! the watch cache (resourceVersion "0") answer it.
//!
//! Owns: the list options' validation, which state is listed (the current one, "not older than"
//! N, exactly N, or the first page's for a continued list), the 410s and 504 for revisions out of
//! reach, filtering by selectors, etcd's key order, `limit` and `remainingItemCount`. Leaves the
//! continue token's format to `continue_tokens.rs`, rolling the history back to `watch_cache.rs`,
//! and the objects to the registry (`mod.rs`).
//!
//! Simplification: a future resourceVersion is refused at once (the real watch cache waits up to
//! 3 s for it first).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::{
    ApiError, Inner, ListParams, ObjKey, Resource, continue_tokens, expired, list_options_invalid,
    parse_rv, scope, selectors, too_large,
};
use crate::selector::{FieldSelector, LabelSelector};
use crate::validate::{FieldError, bad_request};

/// A checked list request, ready to be served under the store's lock.
#[derive(Debug)]
pub(super) struct Request<'a> {
    /// Its labelSelector.
    labels: LabelSelector,
    /// Its fieldSelector.
    fields: FieldSelector,
    /// The listed namespace (None: all, or a cluster-scoped resource).
    ns: Option<&'a str>,
    /// resourceVersion as given ("" when unset).
    rv_param: &'a str,
    /// The continue token, if a non-empty one was given.
    continue_token: Option<&'a str>,
    /// The parameters (limit, resourceVersionMatch).
    params: &'a ListParams,
}

impl<'a> Request<'a> {
    /// Parses the selectors and checks the options (no lock needed).
    ///
    /// # Errors
    /// 400 BadRequest for a malformed selector; 422 Invalid for inconsistent options.
    pub(super) fn new(
        r: &Resource,
        ns: Option<&'a str>,
        p: &'a ListParams,
    ) -> Result<Request<'a>, ApiError> {
        let (labels, fields) =
            selectors(r, p.label_selector.as_deref(), p.field_selector.as_deref())?;
        let ns = scope(r, ns);
        let rv_param = p.resource_version.as_deref().unwrap_or("");
        let continue_token = p.continue_token.as_deref().filter(|t| !t.is_empty());
        validate_list_options(
            p.resource_version_match.as_deref(),
            rv_param,
            continue_token,
        )?;
        Ok(Request {
            labels,
            fields,
            ns,
            rv_param,
            continue_token,
            params: p,
        })
    }
}

impl Inner {
    /// Serves `req` on `r`.
    ///
    /// # Errors
    /// 400 BadRequest for a malformed continue token or resourceVersion, or both a continue token
    /// and a resourceVersion; 410 Expired for a continue token or Exact resourceVersion older than
    /// the history kept; 504 for a resourceVersion from the future.
    pub(super) fn list(&self, r: &Resource, req: &Request<'_>) -> Result<Value, ApiError> {
        let Request {
            labels,
            fields,
            ns,
            rv_param,
            continue_token,
            params: p,
        } = req;
        let (ns, rv_param, continue_token) = (*ns, *rv_param, *continue_token);
        let mut start: Option<String> = None;
        let mut list_rv = self.rv;
        let mut snapshot: Option<BTreeMap<ObjKey, Arc<Value>>> = None;
        // resourceVersion="0" is served from the watch cache, which ignores limit (no paging).
        let mut limit = p.limit.filter(|l| *l > 0);
        if let Some(tok) = continue_token {
            if !rv_param.is_empty() && rv_param != "0" {
                return Err(bad_request(
                    "specifying resource version is not allowed when using continue",
                ));
            }
            let (rv, key) = continue_tokens::decode(tok)?;
            if rv < self.watch.floor() {
                return Err(expired(continue_tokens::EXPIRED_MSG.into()));
            }
            // Later pages are served at the first page's revision, as etcd serves them.
            list_rv = rv;
            snapshot = Some(self.watch.snapshot(self.objects.get(&r.key()), r.key(), rv));
            start = Some(key);
        } else if rv_param == "0" {
            limit = None;
        } else if !rv_param.is_empty() {
            let rv = parse_rv(rv_param)?;
            if rv > self.rv {
                return Err(too_large(rv, self.rv));
            }
            if p.resource_version_match.as_deref() == Some("Exact") {
                if rv < self.watch.floor() {
                    // etcd3 interpretListError: a compacted revision.
                    return Err(expired(
                        "The resourceVersion for the provided list is too old.".into(),
                    ));
                }
                if rv < self.rv {
                    snapshot = Some(self.watch.snapshot(self.objects.get(&r.key()), r.key(), rv));
                    list_rv = rv;
                }
            }
            // NotOlderThan (or legacy "N"): the current state is not older than N.
        }
        let empty = BTreeMap::new();
        let objects = match &snapshot {
            Some(s) => s,
            None => self.objects.get(&r.key()).unwrap_or(&empty),
        };
        let prefix = ns.map(|n| format!("{n}/"));
        let range = objects.range::<String, _>((
            match &start {
                Some(k) => std::ops::Bound::Excluded(k.trim_end_matches('\u{0}').to_string()),
                None => match &prefix {
                    Some(pre) => std::ops::Bound::Included(pre.clone()),
                    None => std::ops::Bound::Unbounded,
                },
            },
            std::ops::Bound::Unbounded,
        ));
        let mut items = Vec::new();
        let mut last_key = None;
        let mut remaining = 0usize;
        let mut more = false;
        for (k, o) in range {
            if let Some(pre) = &prefix
                && !k.starts_with(pre.as_str())
            {
                break;
            }
            if !(labels.matches(o) && fields.matches(o)) {
                continue;
            }
            if limit.is_some_and(|l| items.len() >= l) {
                more = true;
                remaining += 1;
                continue;
            }
            let mut item = (**o).clone();
            if let Some(m) = item.as_object_mut() {
                m.remove("apiVersion");
                m.remove("kind");
            }
            items.push(item);
            last_key = Some(k.clone());
        }
        let mut md = json!({"resourceVersion": list_rv.to_string()});
        if more && let Some(k) = last_key {
            md["continue"] = json!(continue_tokens::encode(list_rv, &k));
            // remainingItemCount is only known (and sent) when nothing is filtered out.
            if labels.is_empty() && fields.is_empty() {
                md["remainingItemCount"] = json!(remaining);
            }
        }
        Ok(json!({
            "kind": format!("{}List", r.kind),
            "apiVersion": r.api_version(),
            "metadata": md,
            "items": items,
        }))
    }
}

/// ValidateListOptions for a list (k8s.io/apiserver/pkg/apis/meta/internalversion/validation).
fn validate_list_options(
    rv_match: Option<&str>,
    rv: &str,
    continue_token: Option<&str>,
) -> Result<(), ApiError> {
    let mut errs = Vec::new();
    if let Some(m) = rv_match.filter(|m| !m.is_empty()) {
        if rv.is_empty() {
            errs.push(FieldError::forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden unless resourceVersion is provided",
            ));
        }
        if continue_token.is_some() {
            errs.push(FieldError::forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden when continue is provided",
            ));
        }
        if m != "Exact" && m != "NotOlderThan" {
            errs.push(FieldError::not_supported(
                "resourceVersionMatch",
                &json!(m),
                &["Exact", "NotOlderThan", ""],
            ));
        }
        if m == "Exact" && rv == "0" {
            errs.push(FieldError::forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
            ));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(list_options_invalid(&errs))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::store::fixtures::*;
    use crate::store::{ListParams, WatchParams, WriteParams, rv_of, str_at};

    // matches: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#list-and-watch-filtering
    #[test]
    fn list_filters_by_label_sorts_by_namespace_and_name_and_omits_item_type_meta() {
        let s = store();
        create_slice(&s, "b", json!({"kubernetes.io/service-name": "kubernetes"}));
        create_slice(&s, "a", json!({"kubernetes.io/service-name": "kubernetes"}));
        create_slice(&s, "c", json!({"kubernetes.io/service-name": "other"}));
        s.create(
            slices(),
            Some("kube-system"),
            slice(
                "a",
                json!({"kubernetes.io/service-name": "kubernetes"}),
                &["198.51.100.9"],
            ),
            &WriteParams::default(),
        )
        .unwrap();
        let l = s
            .list(
                slices(),
                None,
                &ListParams {
                    label_selector: Some("kubernetes.io/service-name=kubernetes".into()),
                    ..ListParams::default()
                },
            )
            .unwrap();
        assert_eq!(l["kind"], "EndpointSliceList");
        assert_eq!(l["apiVersion"], "discovery.k8s.io/v1");
        assert_eq!(
            l["metadata"]["resourceVersion"],
            s.resource_version().to_string()
        );
        let names: Vec<String> = l["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                format!(
                    "{}/{}",
                    str_at(i, "/metadata/namespace"),
                    str_at(i, "/metadata/name")
                )
            })
            .collect();
        assert_eq!(names, ["default/a", "default/b", "kube-system/a"]);
        assert!(l["items"][0].get("apiVersion").is_none() && l["items"][0].get("kind").is_none());
        let one_ns = s
            .list(slices(), Some("kube-system"), &ListParams::default())
            .unwrap();
        assert_eq!(one_ns["items"].as_array().unwrap().len(), 1);
        let e = s
            .list(
                slices(),
                None,
                &ListParams {
                    label_selector: Some("a in (b".into()),
                    ..ListParams::default()
                },
            )
            .unwrap_err();
        assert_eq!((e.code, e.reason.as_str()), (400, "BadRequest"));
        let e = s
            .list(
                slices(),
                None,
                &ListParams {
                    field_selector: Some("spec.x=1".into()),
                    ..ListParams::default()
                },
            )
            .unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (400, "field label not supported: spec.x")
        );
    }

    // matches: https://kubernetes.io/docs/reference/using-api/api-concepts/#retrieving-large-results-sets-in-chunks
    #[test]
    fn limit_and_continue_page_through_a_consistent_snapshot() {
        let s = store();
        for n in ["a", "b", "c"] {
            create_slice(&s, n, json!({}));
        }
        let p1 = s
            .list(
                slices(),
                Some("default"),
                &ListParams {
                    limit: Some(2),
                    ..ListParams::default()
                },
            )
            .unwrap();
        assert_eq!(p1["items"].as_array().unwrap().len(), 2);
        assert_eq!(p1["metadata"]["remainingItemCount"], 1);
        let tok = p1["metadata"]["continue"].as_str().unwrap().to_string();
        // A write between pages does not show up: later pages are served at the first page's rv.
        create_slice(&s, "d", json!({}));
        let p2 = s
            .list(
                slices(),
                Some("default"),
                &ListParams {
                    limit: Some(2),
                    continue_token: Some(tok),
                    ..ListParams::default()
                },
            )
            .unwrap();
        let names: Vec<&str> = p2["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| str_at(i, "/metadata/name"))
            .collect();
        assert_eq!(names, ["c"]);
        assert!(p2["metadata"].get("continue").is_none());
        assert_eq!(
            p2["metadata"]["resourceVersion"],
            p1["metadata"]["resourceVersion"]
        );
    }

    // matches: https://kubernetes.io/docs/reference/using-api/api-concepts/#retrieving-large-results-sets-in-chunks (410 Gone for an expired continue token)
    #[test]
    fn a_continue_token_older_than_the_compaction_is_expired() {
        let s = store();
        for n in ["a", "b"] {
            create_slice(&s, n, json!({}));
        }
        let p1 = s
            .list(
                slices(),
                None,
                &ListParams {
                    limit: Some(1),
                    ..ListParams::default()
                },
            )
            .unwrap();
        create_slice(&s, "c", json!({}));
        s.compact();
        let e = s
            .list(
                slices(),
                None,
                &ListParams {
                    limit: Some(1),
                    continue_token: p1["metadata"]["continue"].as_str().map(str::to_string),
                    ..ListParams::default()
                },
            )
            .unwrap_err();
        assert_eq!((e.code, e.reason.as_str()), (410, "Expired"));
        assert!(
            e.message
                .starts_with("The provided continue parameter is too old")
        );
    }

    // matches: https://kubernetes.io/docs/reference/using-api/api-concepts/#resourceversion-in-requests (resourceVersionMatch=Exact)
    #[test]
    fn an_exact_list_shows_the_state_at_that_resource_version() {
        let s = store();
        let a = create_slice(&s, "a", json!({"v": "1"}));
        let mut changed = a.clone();
        changed["metadata"]["labels"] = json!({"v": "2"});
        s.replace(
            slices(),
            Some("default"),
            "a",
            changed,
            &WriteParams::default(),
        )
        .unwrap();
        create_slice(&s, "b", json!({}));
        let l = s
            .list(
                slices(),
                None,
                &ListParams {
                    resource_version: Some(rv_of(&a).into()),
                    resource_version_match: Some("Exact".into()),
                    ..ListParams::default()
                },
            )
            .unwrap();
        assert_eq!(l["metadata"]["resourceVersion"], rv_of(&a));
        assert_eq!(l["items"].as_array().unwrap().len(), 1);
        assert_eq!(l["items"][0]["metadata"]["labels"]["v"], "1");
    }

    // matches: https://github.com/kubernetes/kubernetes/blob/v1.33.0/staging/src/k8s.io/apiserver/pkg/storage/etcd3/store.go (interpretListError: compacted revision)
    #[test]
    fn an_exact_list_older_than_the_compaction_is_expired() {
        let s = store();
        let a = create_slice(&s, "a", json!({}));
        create_slice(&s, "b", json!({}));
        s.compact();
        let e = s
            .list(
                slices(),
                None,
                &ListParams {
                    resource_version: Some(rv_of(&a).into()),
                    resource_version_match: Some("Exact".into()),
                    ..ListParams::default()
                },
            )
            .unwrap_err();
        assert_eq!(
            (e.code, e.reason.as_str(), e.message.as_str()),
            (
                410,
                "Expired",
                "The resourceVersion for the provided list is too old."
            )
        );
    }

    // matches: https://kubernetes.io/docs/reference/using-api/api-concepts/#resourceversion-in-requests (resourceVersion="0" is served from the watch cache, limit ignored)
    #[test]
    fn a_list_at_resource_version_zero_ignores_limit() {
        let s = store();
        for n in ["a", "b", "c"] {
            create_slice(&s, n, json!({}));
        }
        let l = s
            .list(
                slices(),
                None,
                &ListParams {
                    limit: Some(1),
                    resource_version: Some("0".into()),
                    ..ListParams::default()
                },
            )
            .unwrap();
        assert_eq!(l["items"].as_array().unwrap().len(), 3);
        assert!(l["metadata"].get("continue").is_none());
    }

    // matches: https://github.com/kubernetes/kubernetes/blob/v1.33.0/staging/src/k8s.io/apiserver/pkg/storage/cacher/watch_cache.go (waitUntilFreshAndBlock: "Too large resource version")
    #[test]
    fn a_resource_version_from_the_future_times_out_with_504() {
        let s = store();
        let future = (s.resource_version() + 5).to_string();
        let e = s
            .list(
                slices(),
                None,
                &ListParams {
                    resource_version: Some(future.clone()),
                    ..ListParams::default()
                },
            )
            .unwrap_err();
        assert_eq!((e.code, e.reason.as_str()), (504, "Timeout"));
        assert!(
            e.message.contains("Too large resource version"),
            "{}",
            e.message
        );
        let e = s
            .watch(
                slices(),
                None,
                &WatchParams {
                    resource_version: Some(future),
                    ..WatchParams::default()
                },
            )
            .unwrap_err();
        assert_eq!(e.code, 504);
    }

    // matches: https://github.com/kubernetes/kubernetes/blob/v1.33.0/staging/src/k8s.io/apimachinery/pkg/apis/meta/internalversion/validation/validation.go (ValidateListOptions)
    #[test]
    fn inconsistent_list_options_are_invalid() {
        let s = store();
        let bad = |p: ListParams| s.list(slices(), None, &p).unwrap_err();
        let e = bad(ListParams {
            resource_version_match: Some("Exact".into()),
            ..ListParams::default()
        });
        assert_eq!(e.code, 422);
        assert_eq!(
            e.message,
            "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided"
        );
        let e = bad(ListParams {
            resource_version: Some("0".into()),
            resource_version_match: Some("Exact".into()),
            ..ListParams::default()
        });
        assert!(
            e.message.contains("is forbidden for resourceVersion \"0\""),
            "{}",
            e.message
        );
        create_slice(&s, "a", json!({}));
        create_slice(&s, "b", json!({}));
        let p1 = s
            .list(
                slices(),
                None,
                &ListParams {
                    limit: Some(1),
                    ..ListParams::default()
                },
            )
            .unwrap();
        let e = bad(ListParams {
            continue_token: p1["metadata"]["continue"].as_str().map(str::to_string),
            resource_version: Some("5".into()),
            ..ListParams::default()
        });
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                400,
                "specifying resource version is not allowed when using continue"
            )
        );
        let e = bad(ListParams {
            continue_token: Some("not-a-token".into()),
            ..ListParams::default()
        });
        assert_eq!(e.code, 400);
    }
}
