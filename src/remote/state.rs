//! Pure: what one remote source's watch events (and its kubeconfig's state) add up to, as a
//! [`View`]; and the one mapping from a failed request or watch to a [`Trouble`].
//!
//! `cluster.rs` feeds it and sends the views; nothing here does I/O or knows about time.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};

use super::{Trouble, View};
use crate::client::{ErrorClass, classify};
use crate::error::chain;

/// Everything known of one remote source, fed event by event.
#[derive(Debug, Default)]
pub struct SourceState {
    /// The slices by name as of the last completed list and the events since.
    slices: BTreeMap<String, EndpointSlice>,
    /// Whether a list of the slices ever completed.
    listed: bool,
    /// The slices of a re-list in progress; they replace `slices` at its end.
    relisting: Option<BTreeMap<String, EndpointSlice>>,
    /// Whether the Service exists, once a list or an event said so.
    service_exists: Option<bool>,
    /// What the Service's re-list in progress found so far.
    service_relisting: Option<bool>,
    /// The kubeconfig's trouble (missing, unusable) before a client exists.
    credentials: Option<Trouble>,
    /// The Service watch's last error, until its next event.
    service_error: Option<Trouble>,
    /// The slice watch's last error, until its next event.
    slices_error: Option<Trouble>,
    /// The cluster's liveness probe failed: the watches may be silent rather than fine.
    liveness: Option<Trouble>,
}

impl SourceState {
    /// Records the kubeconfig's trouble (`None` once a client is built).
    pub fn set_credentials(&mut self, trouble: Option<Trouble>) {
        self.credentials = trouble;
    }

    /// Records that the cluster stopped answering its liveness probe (`Some`), or answers again.
    pub fn set_liveness(&mut self, trouble: Option<Trouble>) {
        self.liveness = trouble;
    }

    /// The kubeconfig now points at another cluster (another server or CA): nothing known of
    /// the old one says anything about the new one. Back to "not read yet" — the slices, the
    /// Service's existence and the watches' errors are forgotten until the new cluster's lists
    /// complete (the union keeps the target's slices of this source as they are meanwhile).
    pub fn repointed(&mut self) {
        *self = SourceState {
            credentials: self.credentials.take(),
            ..SourceState::default()
        };
    }

    /// Both watches start over from a fresh list: what kept the source in trouble stays until
    /// each list completes (its first event clears it), not until the restart.
    pub fn rewatch(&mut self) {
        if let Some(t) = self.liveness.take() {
            self.service_error.get_or_insert_with(|| t.clone());
            self.slices_error.get_or_insert(t);
        }
    }

    /// Applies one event (or error) of the Service watch.
    pub fn apply_service(&mut self, event: Result<Event<Service>, watcher::Error>) {
        match event {
            // Init comes before the list request is even sent: it proves nothing about the remote.
            Ok(Event::Init) => self.service_relisting = Some(false),
            Ok(event) => {
                self.service_error = None;
                match event {
                    Event::Init => {}
                    Event::InitApply(_) => self.service_relisting = Some(true),
                    Event::InitDone => {
                        self.service_exists = Some(self.service_relisting.take().unwrap_or(false));
                    }
                    Event::Apply(_) => self.service_exists = Some(true),
                    Event::Delete(_) => self.service_exists = Some(false),
                }
            }
            Err(e) => {
                if let Some(trouble) = from_watch(&e) {
                    self.service_error = Some(trouble);
                }
            }
        }
    }

    /// Applies one event (or error) of the slice watch.
    pub fn apply_slices(&mut self, event: Result<Event<EndpointSlice>, watcher::Error>) {
        match event {
            Ok(Event::Init) => self.relisting = Some(BTreeMap::new()),
            Ok(event) => {
                self.slices_error = None;
                match event {
                    Event::Init => {}
                    Event::InitApply(slice) => {
                        if let Some((name, slice)) = keyed(slice) {
                            self.relisting
                                .get_or_insert_with(BTreeMap::new)
                                .insert(name, slice);
                        }
                    }
                    Event::InitDone => {
                        // A re-list replaces everything: slices deleted while the watch was down
                        // are gone from it.
                        self.slices = self.relisting.take().unwrap_or_default();
                        self.listed = true;
                    }
                    Event::Apply(slice) => {
                        if let Some((name, slice)) = keyed(slice) {
                            self.slices.insert(name, slice);
                        }
                    }
                    Event::Delete(slice) => {
                        if let Some(name) = slice.metadata.name {
                            self.slices.remove(&name);
                        }
                    }
                }
            }
            Err(e) => {
                if let Some(trouble) = from_watch(&e) {
                    self.slices_error = Some(trouble);
                }
            }
        }
    }

    /// The view of the source now.
    pub fn view(&self) -> View {
        View {
            slices: self.listed.then(|| self.slices.values().cloned().collect()),
            service_exists: self.service_exists,
            trouble: self.trouble(),
            // Timed by `cluster.rs`, which owns the clock.
            expired: false,
        }
    }

    /// The most pressing trouble: the kubeconfig's, then the watches' (401 before 403 before the
    /// rest: a refused credential explains a refused right), then a missing Service.
    fn trouble(&self) -> Option<Trouble> {
        if let Some(t) = &self.credentials {
            return Some(t.clone());
        }
        let rank = |t: &Trouble| match t {
            Trouble::Unauthorized(_) => 0,
            Trouble::Forbidden(_) => 1,
            _ => 2,
        };
        let worst = [&self.service_error, &self.slices_error, &self.liveness]
            .into_iter()
            .flatten()
            .min_by_key(|t| rank(t));
        if let Some(t) = worst {
            return Some(t.clone());
        }
        (self.service_exists == Some(false)).then_some(Trouble::ServiceMissing)
    }
}

/// A slice's name and the slice without `managedFields` (never read, and the bulk of its size).
fn keyed(mut slice: EndpointSlice) -> Option<(String, EndpointSlice)> {
    let name = slice.metadata.name.clone()?;
    slice.metadata.managed_fields = None;
    Some((name, slice))
}

/// The trouble a failed request means (message: its error chain).
pub fn from_request(error: &kube::Error) -> Trouble {
    let message = chain(error);
    match (error, classify(error)) {
        (kube::Error::Api(s), _) if s.code == 403 => Trouble::Forbidden(message),
        (_, ErrorClass::Auth) => Trouble::Unauthorized(message),
        // 5xx, transport, timeouts; and what a person must fix but that is none of the above
        // (a 404 for a resource the remote does not serve): the remote cannot be read.
        _ => Trouble::Unreachable(message),
    }
}

/// The trouble a watch error means; `None` for 410 Gone, the routine end of a watch whose
/// history was compacted (the watcher re-lists at once).
pub fn from_watch(error: &watcher::Error) -> Option<Trouble> {
    match error {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => Some(from_request(e)),
        watcher::Error::WatchError(status) => {
            let message = chain(error);
            match status.code {
                410 => None,
                401 => Some(Trouble::Unauthorized(message)),
                403 => Some(Trouble::Forbidden(message)),
                _ => Some(Trouble::Unreachable(message)),
            }
        }
        watcher::Error::NoResourceVersion => Some(Trouble::Unreachable(chain(error))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};

    fn status(code: u16) -> kube::core::Status {
        kube::core::Status::failure("refused", "Reason").with_code(code)
    }

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(status(code).boxed())
    }

    fn slice(name: &str, addr: &str) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("app".into()),
                managed_fields: Some(vec![ManagedFieldsEntry::default()]),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: vec![k8s_openapi::api::discovery::v1::Endpoint {
                addresses: vec![addr.into()],
                ..Default::default()
            }],
            ports: None,
        }
    }

    fn service() -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("db".into()),
                namespace: Some("app".into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn names(view: &View) -> Vec<String> {
        view.slices
            .iter()
            .flatten()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect()
    }

    #[test]
    fn each_status_code_maps_to_one_trouble() {
        assert!(matches!(from_request(&api(401)), Trouble::Unauthorized(_)));
        assert!(matches!(from_request(&api(403)), Trouble::Forbidden(_)));
        for code in [500, 503, 429, 404] {
            assert!(
                matches!(from_request(&api(code)), Trouble::Unreachable(_)),
                "{code}"
            );
        }
        let refused = kube::Error::Service(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        assert!(matches!(from_request(&refused), Trouble::Unreachable(_)));
    }

    #[test]
    fn watch_errors_carry_the_request_error_and_gone_is_no_trouble() {
        let t = from_watch(&watcher::Error::InitialListFailed(api(403))).unwrap();
        let Trouble::Forbidden(message) = t else {
            panic!("{t:?}")
        };
        assert!(message.contains("refused"), "{message}");
        assert!(matches!(
            from_watch(&watcher::Error::WatchStartFailed(api(401))),
            Some(Trouble::Unauthorized(_))
        ));
        assert_eq!(
            from_watch(&watcher::Error::WatchError(status(410).boxed())),
            None
        );
        assert!(matches!(
            from_watch(&watcher::Error::WatchError(status(500).boxed())),
            Some(Trouble::Unreachable(_))
        ));
    }

    #[test]
    fn nothing_is_known_before_the_first_list_completes() {
        let mut s = SourceState::default();
        assert_eq!(s.view(), View::default());
        s.apply_slices(Ok(Event::Init));
        s.apply_slices(Ok(Event::InitApply(slice("a", "198.51.100.1"))));
        assert_eq!(s.view().slices, None, "a list half-way is not a view");
        s.apply_slices(Ok(Event::InitDone));
        assert_eq!(names(&s.view()), ["a"]);
        assert!(
            s.view().slices.unwrap()[0]
                .metadata
                .managed_fields
                .is_none(),
            "managedFields dropped"
        );
    }

    #[test]
    fn an_error_keeps_the_slices_and_the_next_event_clears_it() {
        let mut s = SourceState::default();
        s.apply_slices(Ok(Event::Init));
        s.apply_slices(Ok(Event::InitApply(slice("a", "198.51.100.1"))));
        s.apply_slices(Ok(Event::InitDone));
        let refused = kube::Error::Service(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        s.apply_slices(Err(watcher::Error::WatchStartFailed(refused)));
        let troubled = s.view();
        assert!(matches!(troubled.trouble, Some(Trouble::Unreachable(_))));
        assert_eq!(names(&troubled), ["a"], "fail-static");
        // The re-list's Init is sent before the request: still in trouble.
        s.apply_slices(Ok(Event::Init));
        assert_eq!(s.view(), troubled);
        s.apply_slices(Ok(Event::InitApply(slice("b", "203.0.113.1"))));
        s.apply_slices(Ok(Event::InitDone));
        let healed = s.view();
        assert_eq!(healed.trouble, None);
        assert_eq!(names(&healed), ["b"], "the re-list replaced the slices");
    }

    #[test]
    fn a_change_of_the_same_slice_changes_the_view_and_a_repeat_does_not() {
        let mut s = SourceState::default();
        s.apply_slices(Ok(Event::Init));
        s.apply_slices(Ok(Event::InitDone));
        let empty = s.view();
        assert_eq!(empty.slices, Some(vec![]));
        s.apply_slices(Ok(Event::Apply(slice("a", "198.51.100.1"))));
        let one = s.view();
        assert_ne!(one, empty);
        s.apply_slices(Ok(Event::Apply(slice("a", "198.51.100.1"))));
        assert_eq!(s.view(), one);
        s.apply_slices(Ok(Event::Apply(slice("a", "198.51.100.2"))));
        assert_ne!(s.view(), one);
        s.apply_slices(Ok(Event::Delete(slice("a", "198.51.100.2"))));
        assert_eq!(s.view(), empty);
    }

    #[test]
    fn a_deleted_service_is_missing_and_a_created_one_is_not() {
        let mut s = SourceState::default();
        s.apply_service(Ok(Event::Init));
        s.apply_service(Ok(Event::InitApply(service())));
        s.apply_service(Ok(Event::InitDone));
        assert_eq!(s.view().service_exists, Some(true));
        assert_eq!(s.view().trouble, None);
        s.apply_service(Ok(Event::Delete(service())));
        assert_eq!(s.view().service_exists, Some(false));
        assert_eq!(s.view().trouble, Some(Trouble::ServiceMissing));
        s.apply_service(Ok(Event::Apply(service())));
        assert_eq!(s.view().trouble, None);
        // A re-list that finds nothing.
        s.apply_service(Ok(Event::Init));
        s.apply_service(Ok(Event::InitDone));
        assert_eq!(s.view().trouble, Some(Trouble::ServiceMissing));
    }

    #[test]
    fn a_silent_cluster_stays_in_trouble_until_both_watches_listed_again() {
        let mut s = SourceState::default();
        s.apply_service(Ok(Event::InitApply(service())));
        s.apply_service(Ok(Event::InitDone));
        s.apply_slices(Ok(Event::InitDone));
        assert_eq!(s.view().trouble, None);
        let cut = Trouble::Unreachable("no answer within 5 s".into());
        s.set_liveness(Some(cut.clone()));
        assert_eq!(s.view().trouble, Some(cut.clone()));
        s.rewatch();
        assert_eq!(s.view().trouble, Some(cut.clone()));
        s.apply_service(Ok(Event::InitApply(service())));
        s.apply_service(Ok(Event::InitDone));
        assert_eq!(s.view().trouble, Some(cut), "the slices are not listed yet");
        s.apply_slices(Ok(Event::InitDone));
        assert_eq!(s.view().trouble, None);
    }

    #[test]
    fn a_repointed_kubeconfig_forgets_the_old_cluster_until_the_new_one_is_listed() {
        let mut s = SourceState::default();
        s.apply_service(Ok(Event::InitApply(service())));
        s.apply_service(Ok(Event::InitDone));
        s.apply_slices(Ok(Event::InitApply(slice("old", "198.51.100.1"))));
        s.apply_slices(Ok(Event::InitDone));
        s.set_liveness(Some(Trouble::Unreachable("no answer within 5 s".into())));
        s.repointed();
        assert_eq!(
            s.view(),
            View::default(),
            "nothing of the old cluster is left"
        );
        s.apply_service(Ok(Event::Init));
        s.apply_service(Ok(Event::InitApply(service())));
        s.apply_service(Ok(Event::InitDone));
        s.apply_slices(Ok(Event::Init));
        s.apply_slices(Ok(Event::InitApply(slice("new", "203.0.113.1"))));
        s.apply_slices(Ok(Event::InitDone));
        assert_eq!(names(&s.view()), ["new"]);
        assert_eq!(s.view().trouble, None);
    }

    #[test]
    fn the_kubeconfig_hides_the_watches_and_401_hides_403() {
        let mut s = SourceState::default();
        s.apply_service(Err(watcher::Error::WatchStartFailed(api(403))));
        s.apply_slices(Err(watcher::Error::WatchStartFailed(api(401))));
        assert!(matches!(s.view().trouble, Some(Trouble::Unauthorized(_))));
        s.set_credentials(Some(Trouble::Waiting));
        assert_eq!(s.view().trouble, Some(Trouble::Waiting));
        s.set_credentials(None);
        s.apply_slices(Ok(Event::InitDone));
        assert!(matches!(s.view().trouble, Some(Trouble::Forbidden(_))));
    }
}
