//! Which watch failed: a closed set of scopes, so that clearing the error of one namespace can
//! never clear another's (a string key once did: `prod`'s restart cleared `preprod`'s error, and
//! a namespace named `members` cleared the entry that stops deletes).

use std::collections::BTreeMap;
use std::fmt;

/// One watch of the engine's.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// The Service watch (every namespace).
    Services,
    /// The group's member Leases.
    Members,
    /// The Nodes (`[nodes] selector`).
    Nodes,
    /// The EndpointSlices of one namespace.
    Slices(String),
}

impl Scope {
    /// The `watch` label of `endpoint_copier_watch_restarts_total` for this scope.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Scope::Services | Scope::Members => "services",
            Scope::Nodes => "nodes",
            Scope::Slices(_) => "endpointslices",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Services => f.write_str("services"),
            Scope::Members => f.write_str("members"),
            Scope::Nodes => f.write_str("nodes"),
            Scope::Slices(ns) => write!(f, "endpointslices in {ns}"),
        }
    }
}

/// The watches failing now, each with its last error, until it delivers again.
#[derive(Debug, Default)]
pub struct WatchErrors(BTreeMap<Scope, String>);

impl WatchErrors {
    /// Whether `scope` fails now.
    pub fn fails(&self, scope: &Scope) -> bool {
        self.0.contains_key(scope)
    }

    /// `scope` failed with `message`; whether it was failing already (one warning per streak).
    pub fn failed(&mut self, scope: Scope, message: String) -> bool {
        self.0.insert(scope, message).is_some()
    }

    /// `scope` delivered; whether it was failing.
    pub fn recovered(&mut self, scope: &Scope) -> bool {
        self.0.remove(scope).is_some()
    }

    /// The slice watches of `namespaces` were started over: their errors are forgotten (the
    /// new watches report their own).
    pub fn restarted<'a>(&mut self, namespaces: impl IntoIterator<Item = &'a String>) {
        for ns in namespaces {
            self.0.remove(&Scope::Slices(ns.clone()));
        }
    }

    /// The first failing scope, for STATUS.
    pub fn first(&self) -> Option<(&Scope, &String)> {
        self.0.iter().next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarting_one_namespace_clears_only_its_own_error() {
        let mut errors = WatchErrors::default();
        errors.failed(Scope::Slices("preprod".into()), "503".into());
        errors.failed(Scope::Members, "403".into());
        errors.failed(Scope::Nodes, "403".into());
        // Namespaces whose names end like another scope's, or are another scope's name.
        errors.restarted(&["prod".to_owned(), "members".to_owned(), "nodes".to_owned()]);
        assert!(errors.fails(&Scope::Slices("preprod".into())));
        assert!(errors.fails(&Scope::Members));
        assert!(errors.fails(&Scope::Nodes));
        errors.restarted(&["preprod".to_owned()]);
        assert!(!errors.fails(&Scope::Slices("preprod".into())));
    }

    #[test]
    fn a_failing_streak_is_news_once() {
        let mut errors = WatchErrors::default();
        assert!(!errors.failed(Scope::Services, "a".into()));
        assert!(errors.failed(Scope::Services, "b".into()));
        assert!(errors.recovered(&Scope::Services));
        assert!(!errors.recovered(&Scope::Services));
    }
}
