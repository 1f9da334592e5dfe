//! The task of one remote kubeconfig: waits for the file, builds one client shared by every source
//! that names it, runs two watches per source, re-reads the file when it is rewritten or the
//! remote answers 401, and sends each source's [`View`] when it changes.
//!
//! What an event means is `state.rs`'s; this file only moves events and credentials.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::{BoxStream, SelectAll};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource};
use tokio::sync::mpsc::Sender;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info, warn};

use super::state::SourceState;
use super::{RemoteSource, Trouble, Update, View};
use crate::client::{self, Credentials, Reloadable, Reloaded};
use crate::error::chain;
use crate::names;
use crate::shutdown::Shutdown;
use crate::watch::watch_backoff;

/// How often a missing or unusable kubeconfig is looked at again (as the node kubeconfig's wait).
const WAIT_POLL: Duration = Duration::from_secs(2);
/// How often a loaded kubeconfig's file is checked for a rewrite (as the node kubeconfig's poll):
/// a rotated certificate is picked up within this, or at once after a 401.
const KUBECONFIG_POLL: Duration = Duration::from_secs(5);
/// A watch that ran this long before failing starts its retries from the shortest delay again;
/// one that fails sooner (a list allowed but a watch forbidden) keeps backing off, so a refused
/// remote gets one list and one watch every few seconds, not five a second.
const HEALTHY_RUN: Duration = Duration::from_secs(30);

/// A watch's events, as kube's watcher yields them.
type Events<K> = BoxStream<'static, Result<Event<K>, watcher::Error>>;

/// How often each watched remote is asked for its version. A black-holed remote leaves its
/// watches silent, not failed (no read timeout on a watch, and TCP takes many minutes to give
/// up): only a request with a deadline tells.
const LIVENESS_INTERVAL: Duration = Duration::from_secs(5);
/// How long that request may take before the remote counts as unreachable.
const LIVENESS_TIMEOUT: Duration = Duration::from_secs(5);

/// The sources of each distinct kubeconfig path.
pub fn by_kubeconfig(sources: &BTreeSet<RemoteSource>) -> BTreeMap<PathBuf, Vec<RemoteSource>> {
    let mut out: BTreeMap<PathBuf, Vec<RemoteSource>> = BTreeMap::new();
    for s in sources {
        out.entry(s.kubeconfig.clone()).or_default().push(s.clone());
    }
    out
}

/// One watch event of one source, tagged with which of its two watches produced it.
enum Tagged {
    /// From the watch of the Service by name.
    Service(Box<Result<Event<Service>, watcher::Error>>),
    /// From the watch of its EndpointSlices by label.
    Slices(Box<Result<Event<EndpointSlice>, watcher::Error>>),
}

/// The sources of one kubeconfig, their states and what was last sent of each.
struct Sources {
    /// Per source: the source, what is known of it, the view last sent, and since when (this
    /// copy's monotonic clock) it has been in trouble without a break.
    each: Vec<(RemoteSource, SourceState, View, Option<Instant>)>,
    /// How long a source may stay in trouble before its view says `expired`.
    keep_last_known: Duration,
    /// Where views go.
    updates: Sender<Update>,
    /// Ends a send blocked on a full channel.
    shutdown: Shutdown,
}

impl Sources {
    /// Sends source `i`'s view if it changed since the last one sent, logging a change of
    /// trouble. Returns false when nobody listens any more (or shutdown came first).
    async fn publish(&mut self, i: usize) -> bool {
        let keep = self.keep_last_known;
        let Some((source, state, sent, since)) = self.each.get_mut(i) else {
            return true;
        };
        let mut view = state.view();
        // The trouble's spell: it starts with the first trouble and ends with the first view
        // without one (a change of kind does not restart it).
        let now = Instant::now();
        match (&view.trouble, *since) {
            (None, _) => *since = None,
            (Some(_), None) => *since = Some(now),
            (Some(_), Some(_)) => {}
        }
        view.expired = since.is_some_and(|t| now.saturating_duration_since(t) >= keep);
        if view == *sent {
            return true;
        }
        log_trouble(source, sent.trouble.as_ref(), view.trouble.as_ref());
        if view.expired && !sent.expired {
            warn!(source = %source, keep_last_known_secs = keep.as_secs(), "remote source unreadable for longer than keep_last_known_secs; its last known endpoints no longer count as ready where the pair does not probe");
        }
        *sent = view.clone();
        let update = Update {
            source: source.clone(),
            view,
        };
        tokio::select! {
            () = self.shutdown.cancelled() => false,
            sent = self.updates.send(update) => sent.is_ok(),
        }
    }

    /// Sets the kubeconfig's trouble on every source and sends what changed.
    async fn set_credentials(&mut self, trouble: Option<Trouble>) -> bool {
        for i in 0..self.each.len() {
            if let Some((_, state, _, _)) = self.each.get_mut(i) {
                state.set_credentials(trouble.clone());
            }
            if !self.publish(i).await {
                return false;
            }
        }
        true
    }

    /// When the next source in trouble expires, if one will.
    fn next_expiry(&self) -> Option<Instant> {
        self.each
            .iter()
            .filter(|(_, _, sent, _)| !sent.expired)
            .filter_map(|(_, _, _, since)| *since)
            .min()
            .map(|t| t + self.keep_last_known)
    }

    /// Sends every source's view that changed. False when nobody listens any more.
    async fn publish_all(&mut self) -> bool {
        for i in 0..self.each.len() {
            if !self.publish(i).await {
                return false;
            }
        }
        true
    }
}

/// Logs a change of a source's trouble: warn for a new kind, info when it is gone, debug when only
/// the message changed.
fn log_trouble(source: &RemoteSource, before: Option<&Trouble>, now: Option<&Trouble>) {
    match (before, now) {
        (Some(b), Some(n)) if b.kind() == n.kind() => {
            if b != n {
                debug!(source = %source, error = %n, "remote source still in trouble");
            }
        }
        (_, Some(n)) => warn!(source = %source, error = %n, "remote source cannot be read"),
        (Some(_), None) => info!(source = %source, "remote source recovered"),
        (None, None) => {}
    }
}

/// Sleeps until `at`, or for ever without one.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Runs the sources of `kubeconfig` until `shutdown` (or until `updates` has no receiver).
pub async fn run(
    kubeconfig: PathBuf,
    sources: Vec<RemoteSource>,
    options: super::Options,
    updates: Sender<Update>,
    shutdown: Shutdown,
) {
    let allow_insecure_tls = options.allow_insecure_tls;
    let mut all = Sources {
        each: sources
            .into_iter()
            .map(|s| (s, SourceState::default(), View::default(), None))
            .collect(),
        keep_last_known: options.keep_last_known,
        updates,
        shutdown: shutdown.clone(),
    };
    let Some(loaded) = connect(&kubeconfig, &options, &mut all).await else {
        return;
    };
    info!(kubeconfig = %kubeconfig.display(), server = %loaded.server, "remote cluster connected");
    for warning in &loaded.warnings {
        warn!(kubeconfig = %kubeconfig.display(), error = %warning, "remote kubeconfig needs attention");
    }
    if !all.set_credentials(None).await {
        return;
    }
    let mut credentials = Credentials::new(loaded, allow_insecure_tls, "remote kubeconfig")
        .with_connector(options.connector.clone());
    // Every watch runs on the Reloadable's client: a swap after a rotation reaches all of them,
    // and each one's next request (a retry after the 401, or the next re-watch) uses it.
    let client = credentials.reloadable.client();
    let mut events = start_watches(&client, &all);
    let mut alive = Box::pin(liveness(client.clone()));
    let mut cut = false;
    let mut poll = tokio::time::interval_at(Instant::now() + KUBECONFIG_POLL, KUBECONFIG_POLL);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            Some((i, event)) = events.next() => {
                if let Some((_, state, _, _)) = all.each.get_mut(i) {
                    match event {
                        Tagged::Service(e) => state.apply_service(*e),
                        Tagged::Slices(e) => state.apply_slices(*e),
                    }
                }
                if !all.publish(i).await {
                    return;
                }
            }
            answer = &mut alive => {
                alive = Box::pin(liveness(client.clone()));
                match answer {
                    Err(message) => {
                        cut = true;
                        for (_, state, _, _) in &mut all.each {
                            state.set_liveness(Some(Trouble::Unreachable(message.clone())));
                        }
                    }
                    Ok(()) if cut => {
                        cut = false;
                        // A watch through a black hole may be dead without knowing it: start
                        // every watch over, so each source is listed afresh.
                        for (_, state, _, _) in &mut all.each {
                            state.rewatch();
                        }
                        events = start_watches(&client, &all);
                    }
                    Ok(()) => continue,
                }
                for i in 0..all.each.len() {
                    if !all.publish(i).await {
                        return;
                    }
                }
            }
            // A source in trouble for `keep_last_known` expires now, even if nothing else
            // happens (a black-holed cluster sends nothing).
            () = until(all.next_expiry()) => {
                if !all.publish_all().await {
                    return;
                }
            }
            after_401 = reload_due(&mut poll, &credentials.reloadable) => {
                if after_401 {
                    debug!(kubeconfig = %kubeconfig.display(), "the remote answered 401 Unauthorized; re-reading the kubeconfig");
                }
                // In the branch, not in the select: a reload is never abandoned half-way.
                if credentials.reload(&kubeconfig, after_401).await != Reloaded::Repointed {
                    continue;
                }
                // Another cluster behind the same file: the watches would resume there with the
                // old cluster's resourceVersions (or keep streaming from the old one on their
                // open connections), mixing two clusters in one view. Start from nothing.
                for (_, state, _, _) in &mut all.each {
                    state.repointed();
                }
                events = start_watches(&client, &all);
                alive = Box::pin(liveness(client.clone()));
                cut = false;
                for i in 0..all.each.len() {
                    if !all.publish(i).await {
                        return;
                    }
                }
            }
        }
    }
}

/// Waits for the next kubeconfig poll (`false`) or a 401 from the remote (`true`: the file is
/// re-read even if unchanged). Both waits are cancel-safe.
async fn reload_due(poll: &mut tokio::time::Interval, reloadable: &Reloadable) -> bool {
    tokio::select! {
        _ = poll.tick() => false,
        () = reloadable.unauthorized() => true,
    }
}

/// The two watches of every source, tagged with the source's index.
fn start_watches(
    client: &kube::Client,
    all: &Sources,
) -> SelectAll<BoxStream<'static, (usize, Tagged)>> {
    let mut events = SelectAll::new();
    for (i, (source, _, _, _)) in all.each.iter().enumerate() {
        let ns = &source.service.namespace;
        let name = &source.service.name;
        events.push(
            restarting(
                Api::<Service>::namespaced(client.clone(), ns),
                watcher::Config::default().fields(&format!("metadata.name={name}")),
            )
            .map(move |e| (i, Tagged::Service(Box::new(e))))
            .boxed(),
        );
        events.push(
            restarting(
                Api::<EndpointSlice>::namespaced(client.clone(), ns),
                watcher::Config::default().labels(&format!("{}={name}", names::SERVICE_NAME_LABEL)),
            )
            .map(move |e| (i, Tagged::Slices(Box::new(e))))
            .boxed(),
        );
    }
    events
}

/// After [`LIVENESS_INTERVAL`], asks the remote for its version: `Err` with the reason when it
/// does not answer within [`LIVENESS_TIMEOUT`] or the connection fails. Any answer, even 401 or
/// 403, proves the remote is there (the watches report those).
async fn liveness(client: kube::Client) -> Result<(), String> {
    tokio::time::sleep(LIVENESS_INTERVAL).await;
    match tokio::time::timeout(LIVENESS_TIMEOUT, client.apiserver_version()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) if client::classify(&e) == client::ErrorClass::Transient => Err(chain(&e)),
        Ok(Err(_)) => Ok(()),
        Err(_) => Err(format!("no answer within {} s", LIVENESS_TIMEOUT.as_secs())),
    }
}

/// Waits until `kubeconfig` exists and loads, reporting [`Trouble::Waiting`] or
/// [`Trouble::Kubeconfig`] meanwhile; `None` at shutdown or when nobody listens.
async fn connect(
    kubeconfig: &std::path::Path,
    options: &super::Options,
    all: &mut Sources,
) -> Option<client::Loaded> {
    loop {
        let trouble = if kubeconfig.exists() {
            match client::build_with(kubeconfig, options.allow_insecure_tls, &options.connector)
                .await
            {
                Ok(loaded) => return Some(loaded),
                Err(e) => Trouble::Kubeconfig(chain(&e)),
            }
        } else {
            Trouble::Waiting
        };
        if !all.set_credentials(Some(trouble)).await {
            return None;
        }
        tokio::select! {
            () = all.shutdown.cancelled() => return None,
            () = tokio::time::sleep(WAIT_POLL) => {}
        }
    }
}

/// A watch that starts over from a fresh list after every error, after a delay of
/// [`watch_backoff`].
///
/// Not kube's `watcher(..).backoff(..)` alone: after a failed watch start that watcher resumes
/// from its last resourceVersion and, when that succeeds, yields nothing, so a recovery (the
/// remote back, a right granted again) would stay invisible until the next change. A fresh list
/// ends in `InitDone`, which says "fine again" and replaces the slices with what exists now. A
/// source's list is a handful of objects; a 410 Gone is left to the watcher, which re-lists
/// itself.
fn restarting<K>(api: Api<K>, config: watcher::Config) -> Events<K>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    /// The state carried from one event to the next.
    struct Restarting<K: 'static> {
        /// What is watched.
        api: Api<K>,
        /// How (selectors).
        config: watcher::Config,
        /// The running watcher and when it started; `None` after an error.
        inner: Option<(Events<K>, Instant)>,
        /// Delays between attempts.
        backoff: crate::backoff::Backoff,
        /// The wait before the next attempt.
        delay: Option<Duration>,
    }
    let start = Restarting {
        api,
        config,
        inner: None,
        backoff: watch_backoff(),
        delay: None,
    };
    futures::stream::unfold(start, |mut st| async move {
        loop {
            if let Some(d) = st.delay.take() {
                tokio::time::sleep(d).await;
            }
            let (inner, started) = st.inner.get_or_insert_with(|| {
                (
                    watcher::watcher(st.api.clone(), st.config.clone()).boxed(),
                    Instant::now(),
                )
            });
            let started = *started;
            let failed = match inner.next().await {
                Some(Ok(event)) => return Some((Ok(event), st)),
                Some(Err(watcher::Error::WatchError(status))) if status.code == 410 => {
                    return Some((Err(watcher::Error::WatchError(status)), st));
                }
                Some(Err(e)) => Some(e),
                // kube's watcher never ends; should it, start over all the same.
                None => None,
            };
            if started.elapsed() >= HEALTHY_RUN {
                st.backoff.reset();
            }
            st.inner = None;
            st.delay = st.backoff.next();
            if let Some(e) = failed {
                return Some((Err(e), st));
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(path: &str, service: &str) -> RemoteSource {
        RemoteSource {
            kubeconfig: path.into(),
            service: service.parse().unwrap(),
        }
    }

    #[test]
    fn sources_naming_the_same_kubeconfig_share_it() {
        let sources: BTreeSet<RemoteSource> = [
            remote("/etc/a.yaml", "app/db"),
            remote("/etc/b.yaml", "app/db"),
            remote("/etc/a.yaml", "app/cache"),
        ]
        .into();
        let grouped = by_kubeconfig(&sources);
        assert_eq!(grouped.len(), 2);
        assert_eq!(grouped[&PathBuf::from("/etc/a.yaml")].len(), 2);
        assert_eq!(grouped[&PathBuf::from("/etc/b.yaml")].len(), 1);
    }
}
