//! The member watch over two places: the member namespace (`[members] namespace`) and, while
//! copies of older versions may still run, the place they keep their member Leases (the
//! election Lease's namespace). Two watchers become one stream that `Members::apply` reads as if
//! it came from one: a single first list once both places were listed, then plain changes — a
//! re-list of either place becomes the changes it brings (applies, and deletes of what vanished),
//! so that one place's re-list never drops the other's members.
//!
//! The legacy place is read-only and optional: an identity that may not list Leases there (the
//! narrowed RBAC, applied once every copy runs this version) reads it as empty, said once at
//! info. Any other failure of either watch is passed on, so the engine holds deletes as for any
//! failing member watch.

use std::collections::BTreeMap;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::watcher::{self, Event};
use tracing::info;

use crate::watch::{Events, is_forbidden};

/// One of the two watched places.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// The member namespace.
    Members = 0,
    /// Where older versions keep their member Leases.
    Legacy = 1,
}

/// Merges the watch of the member namespace (`members`) with the read-only watch of the legacy
/// place `legacy_namespace` (`legacy`).
pub(super) fn merged(
    members: Events<Lease>,
    legacy: Events<Lease>,
    legacy_namespace: &str,
) -> Events<Lease> {
    // A legacy place we may not read stays so (the RBAC was narrowed after the upgrade): its
    // watch ends after the first refusal instead of asking again every few seconds forever.
    let legacy = legacy.scan(false, |refused, item| {
        let out = (!*refused).then_some(item);
        if let Some(Err(e)) = &out {
            *refused = is_forbidden(e);
        }
        futures::future::ready(out)
    });
    let tagged = futures::stream::select(
        members.map(|e| (Place::Members, e)),
        legacy.map(|e| (Place::Legacy, e)),
    );
    let mut merge = Merge::new(legacy_namespace);
    tagged
        .flat_map(move |(place, event)| futures::stream::iter(merge.step(place, event)))
        .boxed()
}

/// `namespace/name` of a member Lease.
pub(super) fn key(lease: &Lease) -> String {
    format!(
        "{}/{}",
        lease.metadata.namespace.as_deref().unwrap_or_default(),
        lease.metadata.name.as_deref().unwrap_or_default()
    )
}

/// What the merge remembers.
struct Merge {
    /// Namespace of the legacy place, for the log.
    legacy_namespace: String,
    /// Per place: the objects of a list in progress (between `Init` and `InitDone`).
    listing: [Option<Vec<Lease>>; 2],
    /// Per place: whether its first list arrived (the legacy place: or may not be read).
    listed: [bool; 2],
    /// Per place: the objects known now, by key.
    known: [BTreeMap<String, Lease>; 2],
    /// Whether the merged first list was passed on.
    ready: bool,
    /// Whether the legacy place's refusal was logged.
    refusal_logged: bool,
}

type Item = Result<Event<Lease>, watcher::Error>;

impl Merge {
    fn new(legacy_namespace: &str) -> Merge {
        Merge {
            legacy_namespace: legacy_namespace.to_owned(),
            listing: [None, None],
            listed: [false, false],
            known: [BTreeMap::new(), BTreeMap::new()],
            ready: false,
            refusal_logged: false,
        }
    }

    /// The events to pass on for `event` of `place`.
    fn step(&mut self, place: Place, event: Item) -> Vec<Item> {
        let p = place as usize;
        match event {
            Ok(Event::Init) => {
                self.listing[p] = Some(Vec::new());
                Vec::new()
            }
            Ok(Event::InitApply(lease)) => {
                if let Some(listing) = self.listing[p].as_mut() {
                    listing.push(lease);
                }
                Vec::new()
            }
            Ok(Event::InitDone) => {
                let fresh: BTreeMap<String, Lease> = self.listing[p]
                    .take()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|l| (key(&l), l))
                    .collect();
                let old = std::mem::replace(&mut self.known[p], fresh);
                self.listed[p] = true;
                if !self.ready {
                    return self.first_list();
                }
                let mut out: Vec<Item> = self.known[p]
                    .values()
                    .map(|l| Ok(Event::Apply(l.clone())))
                    .collect();
                out.extend(
                    old.into_iter()
                        .filter(|(k, _)| !self.known[p].contains_key(k))
                        .map(|(_, l)| Ok(Event::Delete(l))),
                );
                out
            }
            Ok(Event::Apply(lease)) => {
                self.known[p].insert(key(&lease), lease.clone());
                if self.ready {
                    vec![Ok(Event::Apply(lease))]
                } else {
                    Vec::new()
                }
            }
            Ok(Event::Delete(lease)) => {
                self.known[p].remove(&key(&lease));
                if self.ready {
                    vec![Ok(Event::Delete(lease))]
                } else {
                    Vec::new()
                }
            }
            Err(e) if place == Place::Legacy && is_forbidden(&e) => {
                if !self.refusal_logged {
                    self.refusal_logged = true;
                    info!(namespace = %self.legacy_namespace, "member Leases of older versions cannot be read here (no right to list Leases): none are counted; expected once every copy runs this version");
                }
                // Whatever was known there is gone from our view: read as empty.
                let gone = std::mem::take(&mut self.known[p]);
                self.listed[p] = true;
                if !self.ready {
                    return self.first_list();
                }
                gone.into_values().map(|l| Ok(Event::Delete(l))).collect()
            }
            Err(e) => vec![Err(e)],
        }
    }

    /// Once both places were listed: the merged first list.
    fn first_list(&mut self) -> Vec<Item> {
        if !self.listed.iter().all(|l| *l) {
            return Vec::new();
        }
        self.ready = true;
        let mut out = vec![Ok(Event::Init)];
        out.extend(
            self.known
                .iter()
                .flat_map(|k| k.values())
                .map(|l| Ok(Event::InitApply(l.clone()))),
        );
        out.push(Ok(Event::InitDone));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    /// A member Lease named `name` in `namespace`, with nothing else (tests).
    fn named(namespace: &str, name: &str, rv: &str) -> Lease {
        Lease {
            metadata: ObjectMeta {
                namespace: Some(namespace.to_owned()),
                name: Some(name.to_owned()),
                resource_version: Some(rv.to_owned()),
                ..ObjectMeta::default()
            },
            spec: None,
        }
    }

    fn names(items: &[Item]) -> Vec<String> {
        items
            .iter()
            .map(|i| match i {
                Ok(Event::Init) => "init".to_owned(),
                Ok(Event::InitApply(l)) => format!("list {}", key(l)),
                Ok(Event::InitDone) => "done".to_owned(),
                Ok(Event::Apply(l)) => format!("apply {}", key(l)),
                Ok(Event::Delete(l)) => format!("delete {}", key(l)),
                Err(_) => "error".to_owned(),
            })
            .collect()
    }

    fn list(m: &mut Merge, place: Place, leases: &[Lease]) -> Vec<Item> {
        let mut out = m.step(place, Ok(Event::Init));
        for l in leases {
            out.extend(m.step(place, Ok(Event::InitApply(l.clone()))));
        }
        out.extend(m.step(place, Ok(Event::InitDone)));
        out
    }

    fn forbidden() -> watcher::Error {
        watcher::Error::InitialListFailed(kube::Error::Api(Box::new(kube::core::Status {
            code: 403,
            ..Default::default()
        })))
    }

    #[test]
    fn the_first_list_waits_for_both_places_and_holds_both() {
        let mut m = Merge::new("kube-system");
        let a = named("endpoint-copier", "a", "1");
        let b = named("kube-system", "b", "1");
        assert!(list(&mut m, Place::Members, std::slice::from_ref(&a)).is_empty());
        // A change before the legacy list is part of the first list, not an event of its own.
        assert!(
            m.step(
                Place::Members,
                Ok(Event::Apply(named("endpoint-copier", "c", "2")))
            )
            .is_empty()
        );
        assert_eq!(
            names(&list(&mut m, Place::Legacy, &[b])),
            vec![
                "init",
                "list endpoint-copier/a",
                "list endpoint-copier/c",
                "list kube-system/b",
                "done"
            ]
        );
    }

    #[test]
    fn a_relist_of_one_place_keeps_the_other_and_deletes_what_vanished() {
        let mut m = Merge::new("kube-system");
        list(
            &mut m,
            Place::Members,
            &[named("endpoint-copier", "a", "1")],
        );
        list(
            &mut m,
            Place::Legacy,
            &[
                named("kube-system", "b", "1"),
                named("kube-system", "old", "1"),
            ],
        );
        assert_eq!(
            names(&list(
                &mut m,
                Place::Legacy,
                &[named("kube-system", "b", "2")]
            )),
            vec!["apply kube-system/b", "delete kube-system/old"]
        );
        assert_eq!(
            names(&m.step(
                Place::Members,
                Ok(Event::Delete(named("endpoint-copier", "a", "3")))
            )),
            vec!["delete endpoint-copier/a"]
        );
    }

    #[tokio::test]
    async fn a_legacy_watch_refused_once_is_not_asked_again() {
        let members: Events<Lease> = futures::stream::iter(vec![
            Ok(Event::Init),
            Ok(Event::InitApply(named("endpoint-copier", "a", "1"))),
            Ok(Event::InitDone),
        ])
        .boxed();
        // What the watcher would yield if polled again after the refusal: never passed on.
        let legacy: Events<Lease> = futures::stream::iter(vec![
            Err(forbidden()),
            Ok(Event::Init),
            Ok(Event::InitApply(named("kube-system", "x", "1"))),
            Ok(Event::InitDone),
        ])
        .boxed();
        let out: Vec<Item> = merged(members, legacy, "kube-system").collect().await;
        assert_eq!(names(&out), vec!["init", "list endpoint-copier/a", "done"]);
    }

    #[test]
    fn a_legacy_place_we_may_not_read_is_empty_and_other_failures_pass_on() {
        let mut m = Merge::new("kube-system");
        list(
            &mut m,
            Place::Members,
            &[named("endpoint-copier", "a", "1")],
        );
        assert_eq!(
            names(&m.step(Place::Legacy, Err(forbidden()))),
            vec!["init", "list endpoint-copier/a", "done"]
        );
        // Later refusals say nothing more; a member-namespace failure is passed on.
        assert!(m.step(Place::Legacy, Err(forbidden())).is_empty());
        assert_eq!(
            names(&m.step(Place::Members, Err(forbidden()))),
            vec!["error"]
        );
    }
}
