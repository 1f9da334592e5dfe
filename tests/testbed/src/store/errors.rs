//! The errors the store answers with: [`ApiError`], a metav1.Status, and the constructors for the
//! common ones, worded as k8s.io/apimachinery/pkg/api/errors words them (NotFound, AlreadyExists,
//! Conflict, Expired) and as the watch cache and ValidateListOptions word theirs.
//!
//! Owns: the Status shape and those messages. Leaves 400 BadRequest and 422 Invalid for objects
//! to `validate.rs` (`bad_request`, `invalid_error`), and errors only one job raises (the
//! namespace lifecycle's, the 415 for unsupported patches) to that job's file.

use serde_json::{Value, json};

use super::Resource;
use crate::validate::{FieldError, invalid_error};

/// An API error, rendered as a metav1.Status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// Status reason, e.g. "NotFound".
    pub reason: String,
    /// Human-readable message, worded as kube-apiserver words it.
    pub message: String,
    /// Status details ({name, group, kind, causes}); None when the real server sends none.
    pub details: Option<Value>,
}

impl ApiError {
    /// The full metav1.Status object.
    pub fn status(&self) -> Value {
        let mut s = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code});
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }

    /// An error with these fields (`reason` is the metav1.StatusReason).
    pub(super) fn new(
        code: u16,
        reason: &str,
        message: String,
        details: Option<Value>,
    ) -> ApiError {
        ApiError {
            code,
            reason: reason.into(),
            message,
            details,
        }
    }
}

/// StatusDetails for `name` of `r` (group omitted when empty, as `omitempty` does).
pub(super) fn details(r: &Resource, name: &str) -> Value {
    let mut d = json!({"name": name, "kind": r.plural});
    if !r.group.is_empty() {
        d["group"] = json!(r.group);
    }
    d
}

/// errors.NewNotFound: `<gr> "<name>" not found`.
pub(super) fn not_found(r: &Resource, name: &str) -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        format!("{} {name:?} not found", r.group_resource()),
        Some(details(r, name)),
    )
}

/// errors.NewAlreadyExists: `<gr> "<name>" already exists`.
pub(super) fn already_exists(r: &Resource, name: &str) -> ApiError {
    ApiError::new(
        409,
        "AlreadyExists",
        format!("{} {name:?} already exists", r.group_resource()),
        Some(details(r, name)),
    )
}

/// errors.NewConflict: "Operation cannot be fulfilled on <gr> <name>: <detail>".
pub(super) fn conflict(r: &Resource, name: &str, detail: &str) -> ApiError {
    ApiError::new(
        409,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {} {name:?}: {detail}",
            r.group_resource()
        ),
        Some(details(r, name)),
    )
}

/// The optimistic-concurrency message of storage.ErrConflict / registry OptimisticLockErrorMsg.
pub(super) const MODIFIED_MSG: &str =
    "the object has been modified; please apply your changes to the latest version and try again";

/// errors.NewResourceExpired: 410 Expired with `message` and no details.
pub(super) fn expired(message: String) -> ApiError {
    ApiError::new(410, "Expired", message, None)
}

/// The 504 the watch cache answers after waiting in vain for a future resourceVersion
/// (waitUntilFreshAndBlock; the test bed answers at once instead of after 3 s).
pub(super) fn too_large(rv: u64, current: u64) -> ApiError {
    ApiError::new(
        504,
        "Timeout",
        format!("Timeout: Too large resource version: {rv}, current: {current}"),
        Some(
            json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}], "retryAfterSeconds": 1}),
        ),
    )
}

/// The 422 of ValidateListOptions (kind ListOptions of group meta.k8s.io, no name).
pub(super) fn list_options_invalid(errs: &[FieldError]) -> ApiError {
    static LIST_OPTIONS: Resource = Resource {
        group: "meta.k8s.io",
        version: "v1",
        plural: "listoptions",
        kind: "ListOptions",
        namespaced: false,
        short_names: &[],
        verbs: &[],
    };
    invalid_error(&LIST_OPTIONS, "", errs)
}
