//! The integration suite, one binary: the real daemon and its commands against the in-process
//! test bed (or a real cluster through `ENDPOINT_COPIER_TEST_KUBECONFIG`), one module per
//! behaviour. One binary links kube and tokio once instead of once per file.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

mod binary;
mod coldleader;
mod combustion;
mod conflicts;
mod drain;
mod eviction;
mod group;
mod groups;
mod heal;
mod inspect;
mod journald;
mod kubeconfig;
mod leader;
mod metrics;
mod migration;
mod nodes;
mod notify;
mod probes;
mod rbac;
mod refusals;
mod remote;
mod safety;
mod skew;
mod sources;
mod sync;
mod systemd;
mod upgrade;
