//! What the engine is told once and never changes: built from the config at start (zincati's
//! split of settings from state). The engine's mutable state lives in its sub-states; nothing
//! here is written after [`Settings::of`].

use std::time::Duration;

use crate::config::Config;
use crate::desired::Owner;
use crate::group::Group;
use crate::pairs::Rules;

/// The engine's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The copier group (the Lease that elects its writer) whose slices these are.
    pub group: Group,
    /// The group as the pure core names the manager of a slice.
    pub owner: Owner,
    /// Which pairs exist: the configured ones and the annotation rules.
    pub rules: Rules,
    /// Cap of a pair's write backoff (`[sync] max_backoff_secs`).
    pub max_backoff: Duration,
    /// Cap of the background checks' backoff: a check that keeps failing runs once per resync.
    pub chore_backoff: Duration,
    /// How often every pair is planned again and the orphan scan runs (`[sync]
    /// resync_interval_secs`).
    pub resync_interval: Duration,
    /// How often this copy's member Lease is renewed (`[members] heartbeat_secs`): a member
    /// watch quiet for two of them is silent.
    pub heartbeat: Duration,
    /// The Node watch's label selector (`[nodes] selector`; `None`: every Node).
    pub node_selector: Option<String>,
}

impl Settings {
    /// The settings of `config`.
    pub fn of(config: &Config) -> Settings {
        let group = Group::configured(config);
        Settings {
            owner: group.owner(),
            group,
            rules: Rules::of(config),
            max_backoff: config.sync.max_backoff,
            chore_backoff: config.sync.resync_interval.max(config.sync.max_backoff),
            resync_interval: config.sync.resync_interval,
            heartbeat: config.members.heartbeat,
            node_selector: config.nodes.selector.clone(),
        }
    }

    /// Whether `target` is a pair of this host's config (not an annotated one).
    pub fn is_configured(&self, target: &crate::names::ServiceRef) -> bool {
        self.rules.is_configured(target)
    }
}
