//! endpoint-copier keeps the EndpointSlices of a target Service (by default `default/kubernetes-vip`)
//! equal to those of a source Service (by default `default/kubernetes`), from systemd on every
//! control-plane host, with one active copy elected through a Lease.
//!
//! The pipeline, one module per step:
//!
//! ```text
//! config ──► client ──► lease (who writes) ─────────────────────────────┐
//!                  └──► watch (source slices, target Services, our slices)│
//!                              │ snapshots                               │ fence
//!                              ▼                                         ▼
//!              pairs (which pairs, which refused) ──► desired ──► plan ──► apply
//! ```
//!
//! `desired` (with `desired::step::plan_for`, what to write for one pair now), `pairs` (with
//! `pairs::Rules`, the one resolution of which pairs exist), `nodes`, `probe::quorum`,
//! `group::live` and `lease::decide` are pure; everything else is thin I/O around them. The
//! modules form no cycle: `family` and `names` are leaves, `inspect` (the `check`/`status`
//! report) is built on the pure core and never on `daemon`.
//! Every request and watch goes through `client::link`, which restarts the watches a network
//! cut left on dead connections (`docs/development/architecture.md`, "Watch liveness").
//! `daemon` runs the engine — settings apart from its state, its rules unit-tested under paused
//! time — and supervises every long-lived task; `main` wires the process (flags, logging, exit
//! codes).

pub mod apply;
pub mod backoff;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod desired;
pub mod drain;
pub mod error;
pub mod events;
pub mod family;
pub mod group;
pub mod host;
pub mod inspect;
pub mod lease;
pub mod logging;
pub mod metrics;
pub mod names;
pub mod nodes;
pub mod notify;
pub mod pairs;
pub mod probe;
pub mod remote;
pub mod shutdown;
pub mod source;
pub mod watch;
