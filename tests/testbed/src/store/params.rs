//! The parameters the [`Store`](super::Store) methods take: the query parameters and options of
//! list, watch, write, delete and patch requests, already taken apart by `server.rs` (or built by a
//! test). Owns only their shape and defaults; what each parameter does is the job of the file that
//! reads it (`list.rs`, `watch_cache.rs`, `writes.rs`).

/// List parameters.
#[derive(Debug, Default, Clone)]
pub struct ListParams {
    /// labelSelector (None = everything).
    pub label_selector: Option<String>,
    /// fieldSelector (None = everything).
    pub field_selector: Option<String>,
    /// limit: at most this many items per page (None or 0 = all).
    pub limit: Option<usize>,
    /// continue: the token of the previous page.
    pub continue_token: Option<String>,
    /// resourceVersion ("" / None = most recent, "0" = any, "N").
    pub resource_version: Option<String>,
    /// resourceVersionMatch ("Exact" or "NotOlderThan").
    pub resource_version_match: Option<String>,
}

/// Watch parameters.
#[derive(Debug, Default, Clone)]
pub struct WatchParams {
    /// labelSelector (None = everything).
    pub label_selector: Option<String>,
    /// fieldSelector (None = everything).
    pub field_selector: Option<String>,
    /// resourceVersion ("" / None = current state then changes, "0" = same, "N" = changes after N).
    pub resource_version: Option<String>,
    /// resourceVersionMatch (only "NotOlderThan", only with sendInitialEvents).
    pub resource_version_match: Option<String>,
    /// allowWatchBookmarks (default: false).
    pub allow_bookmarks: bool,
    /// sendInitialEvents (streaming list).
    pub send_initial_events: Option<bool>,
}

/// Write parameters.
#[derive(Debug, Default, Clone)]
pub struct WriteParams {
    /// fieldManager: recorded in managedFields when given.
    pub field_manager: Option<String>,
    /// dryRun=All: validate and answer, store nothing.
    pub dry_run: bool,
}

/// Delete parameters.
#[derive(Debug, Default, Clone)]
pub struct DeleteParams {
    /// preconditions.uid.
    pub precondition_uid: Option<String>,
    /// preconditions.resourceVersion.
    pub precondition_resource_version: Option<String>,
    /// dryRun=All.
    pub dry_run: bool,
}

/// Patch types.
#[derive(Debug, Clone, Copy)]
pub enum PatchKind {
    /// application/merge-patch+json (RFC 7386).
    Merge,
    /// application/json-patch+json (RFC 6902).
    Json,
    /// application/strategic-merge-patch+json (not implemented: 415).
    StrategicMerge,
    /// application/apply-patch+yaml (not implemented: 415).
    Apply {
        /// force=true.
        force: bool,
    },
}
