//! Health probes: every copy probes every endpoint address of the pairs that probe, and the
//! leader evicts an endpoint (`ready: false, serving: false` in the target) when a strict majority
//! of the live copies see it down.
//!
//! This file owns the vocabulary every step shares: what a pair's probe is ([`Spec`]), one probed
//! thing ([`Target`]: address, port, kind), the timing ([`Timing`]) and a copy's verdict on a
//! target ([`Verdict`], [`Finding`], [`Report`]), and whose credentials a probe may carry
//! ([`Auth`]). The steps:
//! - `spec`: a pair's probe from its config value or annotation (pure), and what an
//!   annotation may ask for (health paths on the target's ports, never more);
//! - `check`: one probe (HTTPS with the kubeconfig's CA — and its credentials only for probes the
//!   host's config names —, HTTP, TCP) over one kept-alive connection, classified as passed,
//!   failed or not judged (a certificate that does not verify is not a dead endpoint);
//!   `tracker`: the thresholds and the flap damping (pure);
//! - `run`: one task per target, never overlapping, thresholds applied; it sends a [`Report`]
//!   when a target's verdict is first known and whenever it changes;
//! - `quorum`: the pure decision — which targets the leader evicts, from the votes of the live
//!   copies, never the last ready endpoint of a target.

mod check;
mod failure;
pub mod quorum;
mod run;
pub mod spec;
mod tracker;

pub use check::{Dialer, Error as ProberError, Outcome, ProbeDial, Prober, Session};
pub use run::spawn;
pub use run::{Reach, Wanted, capped};
pub use tracker::{Change, Tracker};

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use tokio::time::Instant;

/// What a probe does to one address.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `GET <path>` over TLS, verified against the kubeconfig's CA; authenticated with the
    /// kubeconfig's credentials when the host's config names the probe ([`Auth::Node`]: RKE2/K3s
    /// run the apiserver with anonymous auth off), anonymous otherwise. Up = 2xx.
    Https {
        /// Absolute path, with an optional query (`/readyz`).
        path: String,
    },
    /// `GET <path>` in clear text. Up = 2xx.
    Http {
        /// Absolute path, with an optional query (`/healthz`).
        path: String,
    },
    /// A TCP connect. Up = connected.
    Tcp,
}

impl Kind {
    /// `https`, `http` or `tcp`: the metric label and the scheme of [`Target`]'s display form.
    pub fn scheme(&self) -> &'static str {
        match self {
            Kind::Https { .. } => "https",
            Kind::Http { .. } => "http",
            Kind::Tcp => "tcp",
        }
    }
}

/// A pair's probe as configured (`probe = { https = "/readyz" }`, `{ tcp = 6443 }`, ...) or
/// annotated (`endpoint-copier/probe`), before an endpoint's address is known.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Spec {
    /// What to do.
    pub kind: Kind,
    /// The port to probe; `None`: the source endpoint's port (the first port of the source
    /// EndpointSlice, by name). `{ tcp = N }` always sets it.
    pub port: Option<u16>,
}

impl Spec {
    /// The built-in default pair's probe: `GET /readyz` over HTTPS on the source port.
    pub fn readyz() -> Spec {
        Spec {
            kind: Kind::Https {
                path: "/readyz".to_owned(),
            },
            port: None,
        }
    }
}

/// One probed thing: an endpoint address, a port and a kind. Copies publish their verdicts keyed
/// by its display form, so it must stay stable across versions.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    /// The endpoint's address (never a name: a VIP routes to addresses).
    pub address: IpAddr,
    /// The port probed.
    pub port: u16,
    /// What is done there.
    pub kind: Kind,
}

impl fmt::Display for Target {
    /// `https://198.51.100.1:6443/readyz`, `http://[2001:db8::1]:80/healthz`,
    /// `tcp://198.51.100.1:6443`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = match self.address {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
        };
        match &self.kind {
            Kind::Https { path } | Kind::Http { path } => {
                write!(f, "{}://{host}:{}{path}", self.kind.scheme(), self.port)
            }
            Kind::Tcp => write!(f, "tcp://{host}:{}", self.port),
        }
    }
}

/// Why a string is not a [`Target`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a probe target (scheme://address:port[/path], scheme https, http or tcp)")]
pub struct ParseTargetError(pub String);

impl FromStr for Target {
    type Err = ParseTargetError;

    fn from_str(s: &str) -> Result<Target, ParseTargetError> {
        let bad = || ParseTargetError(s.to_owned());
        let (scheme, rest) = s.split_once("://").ok_or_else(bad)?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(&rest[i..])),
            None => (rest, None),
        };
        let (host, port) = authority.rsplit_once(':').ok_or_else(bad)?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let address: IpAddr = host.parse().map_err(|_| bad())?;
        if host.contains(':') != address.is_ipv6()
            || authority.starts_with('[') != address.is_ipv6()
        {
            return Err(bad());
        }
        let port: u16 = port.parse().map_err(|_| bad())?;
        let kind = match (scheme, path) {
            ("https", Some(path)) => Kind::Https {
                path: path.to_owned(),
            },
            ("http", Some(path)) => Kind::Http {
                path: path.to_owned(),
            },
            ("tcp", None) => Kind::Tcp,
            _ => return Err(bad()),
        };
        Ok(Target {
            address,
            port,
            kind,
        })
    }
}

/// How often and how patiently every target is probed (`[probe]`), the same for every pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Time between the starts of two probes of one target (key `period_ms`, default 300 ms). A
    /// probe still running when the next is due delays it: probes of one target never overlap.
    /// With the defaults a refused endpoint is down within 2 × 300 ms and a black-holed one within
    /// 300 + 300 + 250 ms on every host that probes it (the design's goals are ≤ 1 s and ≤ 2 s to
    /// eviction, quorum and write included).
    pub period: Duration,
    /// How long one probe may take, connect and TLS included (key `timeout_ms`, default 250 ms,
    /// less than `period`): a kept-alive `/readyz` answers in about a millisecond.
    pub timeout: Duration,
    /// Consecutive failures that turn a verdict to down (key `failure_threshold`, default 2, at
    /// least 2: one failed probe never evicts).
    pub failure_threshold: u32,
    /// Consecutive successes that turn a verdict to up (key `success_threshold`, default 1).
    pub success_threshold: u32,
    /// Flap damping (key `min_up_ms`, default 1500 ms; 0 turns it off): once this host has seen
    /// a target down, it sees it up again only after every probe passed for this long (and at
    /// least `success_threshold` of them). A flapping endpoint then stays down instead of
    /// changing verdicts twice a second, and an evicted one returns only after it has been up
    /// this long. The first verdict of a target is never damped.
    pub min_up: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            period: Duration::from_millis(300),
            timeout: Duration::from_millis(250),
            failure_threshold: 2,
            success_threshold: 1,
            min_up: Duration::from_millis(1500),
        }
    }
}

/// Whose credentials a probe carries: a host spends its node credentials only on what its own
/// config asks for. A Service annotation belongs to whoever may edit that namespace, so the
/// probes it asks for send nothing that person could not send without any credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Auth {
    /// A probe the host's config names (a `[[pair]]`'s `probe`, or its default): HTTPS carries
    /// the node kubeconfig's client certificate or token.
    Node,
    /// A probe only annotations ask for: no client certificate, no token (the server is still
    /// verified against the kubeconfig's CA).
    Anonymous,
}

/// A copy's view of one target, after the thresholds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// `success_threshold` probes in a row passed.
    Up,
    /// `failure_threshold` probes in a row failed.
    Down,
}

/// How one probe went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// Connected (TCP) or a 2xx answer (HTTP, HTTPS).
    Pass,
    /// Anything that says the endpoint is not serving: refused, reset, timed out, a non-2xx
    /// answer (with credentials).
    Fail,
    /// Says nothing about the endpoint's health, only about this host's means to judge it: the
    /// server certificate does not verify (a name missing from its SANs, an unknown authority,
    /// expired), the host has no TLS configuration, or an anonymous probe was refused (401, 403).
    Abstain,
}

/// A copy's finding on one target after the thresholds: a vote, or no vote at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Finding {
    /// Up or down: the host's ballot names the target with this verdict.
    Vote(Verdict),
    /// This host cannot judge the target (`failure_threshold` probes in a row said so): its
    /// ballot does not name it, so it counts neither way, and the reason is reported apart.
    Abstain,
}

/// A finding as the prober reports it to the engine: sent when a target's finding is first
/// known and whenever it changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// What was probed.
    pub target: Target,
    /// The finding now: a vote, or an abstention (why: `detail`).
    pub finding: Finding,
    /// When the streak that produced this finding began (the first probe of the streak finished;
    /// local monotonic clock): for a down verdict, when the target was first seen failing.
    pub since: Instant,
    /// The last probe's outcome in words, for logs and `status`: `HTTP 200`, `connection
    /// refused`, `timed out after 250 ms`, `HTTP 500`, `TLS: the certificate does not name
    /// 198.51.100.1 (it names 198.51.100.9)`...
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_read_back_what_they_print() {
        for s in [
            "https://198.51.100.1:6443/readyz",
            "http://[2001:db8::1]:80/healthz?verbose",
            "tcp://203.0.113.7:5432",
            "tcp://[2001:db8::10]:5432",
        ] {
            let t: Target = s.parse().unwrap();
            assert_eq!(t.to_string(), s);
        }
    }

    #[test]
    fn malformed_targets_are_refused() {
        for s in [
            "",
            "https://198.51.100.1:6443",
            "tcp://198.51.100.1:6443/x",
            "ftp://198.51.100.1:21/",
            "https://host.example:6443/readyz",
            "tcp://2001:db8::1:80",
            "tcp://[198.51.100.1]:80",
            "tcp://198.51.100.1:99999",
        ] {
            assert!(s.parse::<Target>().is_err(), "{s} must not parse");
        }
    }
}
