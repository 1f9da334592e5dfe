//! Validation and static defaulting of objects, with kube-apiserver's rules and messages.
//!
//! Owns: name/label/annotation rules (k8s.io/apimachinery/pkg/util/validation), ObjectMeta and
//! ownerReference checks (apimachinery/pkg/api/validation), per-kind checks for EndpointSlices
//! (pkg/apis/discovery/validation), Services (pkg/apis/core/validation), Leases
//! (pkg/apis/coordination/validation) and Events (pkg/apis/core/validation/events.go), the decoding
//! checks the real server does before validation (MicroTime and Time formats → 400), and defaults
//! that need no allocation (pkg/apis/*/v1/defaults.go). Leaves to `store/` anything needing
//! state: cluster IP / node port allocation, conflicts, existence.
//!
//! Field errors render exactly as `field.Error` does: `<field>: <body>`, where the body is what the
//! Status cause carries as its message.

use std::net::IpAddr;

use serde_json::{Value, json};

use crate::store::{ApiError, Resource};

/// One field error (k8s.io/apimachinery/pkg/util/validation/field.Error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Status cause reason, e.g. "FieldValueInvalid".
    pub reason: &'static str,
    /// Field path, e.g. "endpoints[0].addresses[0]".
    pub field: String,
    /// Everything after "<field>: ", e.g. `Invalid value: "x": must be ...`.
    pub body: String,
}

/// Renders a value as field.Error does: strings quoted (%q), numbers and booleans bare, anything
/// else as JSON (e.g. `["10.43.0.10"]`, as recent servers print lists).
fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

impl FieldError {
    /// `Invalid value: <v>: <detail>`.
    pub fn invalid(field: impl Into<String>, v: &Value, detail: &str) -> FieldError {
        FieldError {
            reason: "FieldValueInvalid",
            field: field.into(),
            body: if detail.is_empty() {
                format!("Invalid value: {}", show(v))
            } else {
                format!("Invalid value: {}: {detail}", show(v))
            },
        }
    }
    /// `Required value[: detail]`.
    pub fn required(field: impl Into<String>, detail: &str) -> FieldError {
        FieldError {
            reason: "FieldValueRequired",
            field: field.into(),
            body: if detail.is_empty() {
                "Required value".into()
            } else {
                format!("Required value: {detail}")
            },
        }
    }
    /// `Unsupported value: <v>: supported values: "a", "b"`.
    pub fn not_supported(field: impl Into<String>, v: &Value, supported: &[&str]) -> FieldError {
        let list = supported
            .iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        FieldError {
            reason: "FieldValueNotSupported",
            field: field.into(),
            body: format!("Unsupported value: {}: supported values: {list}", show(v)),
        }
    }
    /// `Too many: <n>: must have at most <max> items`.
    pub fn too_many(field: impl Into<String>, n: usize, max: usize) -> FieldError {
        FieldError {
            reason: "FieldValueTooMany",
            field: field.into(),
            body: format!("Too many: {n}: must have at most {max} items"),
        }
    }
    /// `Duplicate value: <v>`.
    pub fn duplicate(field: impl Into<String>, v: &Value) -> FieldError {
        FieldError {
            reason: "FieldValueDuplicate",
            field: field.into(),
            body: format!("Duplicate value: {}", show(v)),
        }
    }
    /// `Forbidden: <detail>`.
    pub fn forbidden(field: impl Into<String>, detail: &str) -> FieldError {
        FieldError {
            reason: "FieldValueForbidden",
            field: field.into(),
            body: format!("Forbidden: {detail}"),
        }
    }
    /// `Too long: may not be more than <max> bytes`.
    pub fn too_long(field: impl Into<String>, max: usize) -> FieldError {
        FieldError {
            reason: "FieldValueTooLong",
            field: field.into(),
            body: format!("Too long: may not be more than {max} bytes"),
        }
    }
    /// The whole error as field.Error.Error() prints it.
    pub fn message(&self) -> String {
        format!("{}: {}", self.field, self.body)
    }
}

/// The 422 Invalid error for `errs` on object `name` of resource `r`
/// (k8s.io/apimachinery/pkg/api/errors.NewInvalid).
pub fn invalid_error(r: &Resource, name: &str, errs: &[FieldError]) -> ApiError {
    let qualified = if r.group.is_empty() {
        r.kind.to_string()
    } else {
        format!("{}.{}", r.kind, r.group)
    };
    // errors.ToAggregate: one error prints bare, several print as "[a, b]".
    let agg = if errs.len() == 1 {
        errs[0].message()
    } else {
        format!(
            "[{}]",
            errs.iter()
                .map(FieldError::message)
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let causes: Vec<Value> = errs
        .iter()
        .map(|e| json!({"reason": e.reason, "message": e.body, "field": e.field}))
        .collect();
    ApiError {
        code: 422,
        reason: "Invalid".into(),
        message: format!("{qualified} {name:?} is invalid: {agg}"),
        details: Some({
            // StatusDetails fields are omitempty: no "group" for the core group, no empty name.
            let mut d = json!({"kind": r.kind, "causes": causes});
            if !name.is_empty() {
                d["name"] = json!(name);
            }
            if !r.group.is_empty() {
                d["group"] = json!(r.group);
            }
            d
        }),
    }
}

/// A 400 BadRequest error with `message`.
pub fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError {
        code: 400,
        reason: "BadRequest".into(),
        message: message.into(),
        details: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Name and label rules (k8s.io/apimachinery/pkg/util/validation/validation.go), same wording.

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";
const QUALIFIED_NAME_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const QUALIFIED_NAME_WHOLE_MSG: &str = "a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

fn is_lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn dns1123_label_ok(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| is_lower_alnum(c) || c == '-')
        && s.starts_with(is_lower_alnum)
        && s.ends_with(is_lower_alnum)
}

/// Messages for a DNS-1123 label (max 63), empty when valid.
pub fn dns1123_label_errors(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 63 {
        out.push("must be no more than 63 characters".into());
    }
    if !dns1123_label_ok(s) {
        out.push(DNS1123_LABEL_MSG.into());
    }
    out
}

/// Messages for a DNS-1123 subdomain (max 253), empty when valid.
pub fn dns1123_subdomain_errors(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 253 {
        out.push("must be no more than 253 characters".into());
    }
    if !s.split('.').all(dns1123_label_ok) {
        out.push(DNS1123_SUBDOMAIN_MSG.into());
    }
    out
}

/// Messages for a DNS-1035 label (max 63), empty when valid.
pub fn dns1035_label_errors(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 63 {
        out.push("must be no more than 63 characters".into());
    }
    if !(dns1123_label_ok(s) && s.starts_with(|c: char| c.is_ascii_lowercase())) {
        out.push(DNS1035_LABEL_MSG.into());
    }
    out
}

fn qualified_part_ok(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    !s.is_empty()
        && s.chars()
            .all(|c| alnum(c) || c == '-' || c == '_' || c == '.')
        && s.starts_with(alnum)
        && s.ends_with(alnum)
}

/// Messages for a qualified name `[prefix/]name` (label and annotation keys), empty when valid.
pub fn qualified_name_errors(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let parts: Vec<&str> = s.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                out.push("prefix part must be non-empty".into());
            } else {
                for m in dns1123_subdomain_errors(prefix) {
                    out.push(format!("prefix part {m}"));
                }
            }
            *name
        }
        _ => {
            out.push(QUALIFIED_NAME_WHOLE_MSG.into());
            return out;
        }
    };
    if name.is_empty() {
        out.push("name part must be non-empty".into());
    } else if name.len() > 63 {
        out.push("name part must be no more than 63 characters".into());
    }
    if !name.is_empty() && !qualified_part_ok(name) {
        out.push(QUALIFIED_NAME_MSG.into());
    }
    out
}

/// Messages for a label value (empty allowed, max 63), empty when valid.
pub fn label_value_errors(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 63 {
        out.push("must be no more than 63 characters".into());
    }
    if !s.is_empty() && !qualified_part_ok(s) {
        out.push(LABEL_VALUE_MSG.into());
    }
    out
}

fn push_msgs(errs: &mut Vec<FieldError>, field: &str, v: &str, msgs: Vec<String>) {
    for m in msgs {
        errs.push(FieldError::invalid(field, &Value::String(v.into()), &m));
    }
}

/// Validates a label map at `field` (ValidateLabels).
pub fn validate_labels(labels: Option<&Value>, field: &str, errs: &mut Vec<FieldError>) {
    let Some(map) = labels.and_then(Value::as_object) else {
        return;
    };
    for (k, v) in map {
        push_msgs(errs, field, k, qualified_name_errors(k));
        match v.as_str() {
            Some(s) => push_msgs(errs, field, s, label_value_errors(s)),
            None => errs.push(FieldError::invalid(field, v, "must be a string")),
        }
    }
}

/// Total annotation size limit in bytes (TotalAnnotationSizeLimitB = 256 KiB).
pub const ANNOTATIONS_MAX_BYTES: usize = 256 * 1024;

/// Which name rule a kind uses (the `ValidateNameFunc` its strategy passes to ValidateObjectMeta).
fn name_errors(r: &Resource, name: &str) -> Vec<String> {
    match (r.group, r.kind) {
        ("", "Service") => dns1035_label_errors(name),
        ("", "Namespace") => dns1123_label_errors(name),
        // Core Events skip the strategy's name check (no ObjectMeta validation for v1 requests):
        // only the generic path segment rule (ValidatePathSegmentName) applies.
        ("", "Event") => {
            if name == "." || name == ".." {
                vec![format!("may not be '{name}'")]
            } else {
                ["/", "%"]
                    .iter()
                    .filter(|c| name.contains(**c))
                    .map(|c| format!("may not contain '{c}'"))
                    .collect()
            }
        }
        _ => dns1123_subdomain_errors(name),
    }
}

/// Validates ObjectMeta: name (after generateName resolution), labels, annotations,
/// ownerReferences (k8s.io/apimachinery/pkg/api/validation/objectmeta.go).
pub fn validate_meta(r: &Resource, obj: &Value, errs: &mut Vec<FieldError>) {
    let meta = obj.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if name.is_empty() {
        errs.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else {
        push_msgs(errs, "metadata.name", name, name_errors(r, name));
    }
    validate_labels(meta.and_then(|m| m.get("labels")), "metadata.labels", errs);
    if let Some(ann) = meta
        .and_then(|m| m.get("annotations"))
        .and_then(Value::as_object)
    {
        let mut total = 0;
        for (k, v) in ann {
            push_msgs(
                errs,
                "metadata.annotations",
                k,
                qualified_name_errors(&k.to_lowercase()),
            );
            total += k.len() + v.as_str().map_or(0, str::len);
        }
        if total > ANNOTATIONS_MAX_BYTES {
            errs.push(FieldError::too_long(
                "metadata.annotations",
                ANNOTATIONS_MAX_BYTES,
            ));
        }
    }
    if let Some(refs) = meta
        .and_then(|m| m.get("ownerReferences"))
        .and_then(Value::as_array)
    {
        let f = "metadata.ownerReferences";
        let mut first_controller: Option<String> = None;
        for o in refs {
            let s = |k: &str| o.get(k).and_then(Value::as_str).unwrap_or("");
            // validateOwnerReference: paths carry no index, as upstream.
            if s("apiVersion").rsplit('/').next().is_none_or(str::is_empty) {
                errs.push(FieldError::invalid(
                    format!("{f}.apiVersion"),
                    &json!(s("apiVersion")),
                    "version must not be empty",
                ));
            }
            for k in ["kind", "name", "uid"] {
                if s(k).is_empty() {
                    errs.push(FieldError::invalid(
                        format!("{f}.{k}"),
                        &json!(s(k)),
                        &format!("{k} must not be empty"),
                    ));
                }
            }
            if o.get("controller").and_then(Value::as_bool) == Some(true) {
                let cur = format!("{}/{}", s("kind"), s("name"));
                match &first_controller {
                    Some(first) => errs.push(FieldError::invalid(
                        f,
                        &Value::Array(refs.clone()),
                        &format!(
                            "Only one reference can have Controller set to true. Found \"true\" in references for {first} and {cur}"
                        ),
                    )),
                    None => first_controller = Some(cur),
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding checks: what the real server's JSON decoder rejects with 400 before validation runs.

/// Parses a metav1.MicroTime as its UnmarshalJSON does: `time.Parse(RFC3339Micro)` with layout
/// "2006-01-02T15:04:05.000000Z07:00", so exactly six fractional digits; returns the UTC form the
/// server stores and serializes.
pub fn parse_micro_time(s: &str) -> Option<String> {
    let (date_time, _) = s.split_once('.')?;
    let rest = &s[date_time.len() + 1..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    if digits.len() != 6 || date_time.len() != 19 {
        return None;
    }
    let ts: jiff::Timestamp = s.parse().ok()?;
    Some(ts.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
}

/// Parses a metav1.Time (`time.Parse(time.RFC3339)`; a fraction is accepted and dropped) and
/// returns the seconds-precision UTC form the server serializes.
pub fn parse_time(s: &str) -> Option<String> {
    let ts: jiff::Timestamp = s.parse().ok()?;
    Some(ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
}

fn decode_err(r: &Resource, detail: String) -> ApiError {
    bad_request(format!(
        "{} in version {:?} cannot be handled as a {}: {detail}",
        r.kind, r.version, r.kind
    ))
}

/// Normalizes a time field in place; `micro` picks MicroTime's layout over Time's.
fn fix_time(r: &Resource, v: Option<&mut Value>, micro: bool) -> Result<(), ApiError> {
    let Some(v) = v else { return Ok(()) };
    match v {
        Value::Null => Ok(()),
        Value::String(s) => {
            let parsed = if micro {
                parse_micro_time(s)
            } else {
                parse_time(s)
            };
            match parsed {
                Some(p) => {
                    *v = Value::String(p);
                    Ok(())
                }
                None if micro => Err(decode_err(
                    r,
                    format!(
                        "parsing time {s:?} as \"2006-01-02T15:04:05.000000Z07:00\": cannot parse {s:?} as \"2006-01-02T15:04:05.000000Z07:00\""
                    ),
                )),
                None => Err(decode_err(
                    r,
                    format!(
                        "parsing time {s:?} as \"2006-01-02T15:04:05Z07:00\": cannot parse {s:?} as \"2006-01-02T15:04:05Z07:00\""
                    ),
                )),
            }
        }
        other => Err(decode_err(
            r,
            format!(
                "json: cannot unmarshal {} into Go value of type string",
                json_type(other)
            ),
        )),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The JSON shapes of an EndpointSlice's lists, which the typed decoder enforces (400).
fn check_shape(r: &Resource, obj: &Value) -> Result<(), ApiError> {
    let wrong = |path: &str, v: &Value, want: &str| {
        Err(decode_err(
            r,
            format!(
                "json: cannot unmarshal {} into Go struct field {path} of type {want}",
                json_type(v)
            ),
        ))
    };
    for (k, want) in [
        ("endpoints", "[]v1.Endpoint"),
        ("ports", "[]v1.EndpointPort"),
    ] {
        match obj.get(k) {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for it in items {
                    if !it.is_object() {
                        return wrong(&format!("EndpointSlice.{k}"), it, &want[2..]);
                    }
                }
            }
            Some(v) => return wrong(&format!("EndpointSlice.{k}"), v, want),
        }
    }
    for ep in obj
        .get("endpoints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match ep.get("addresses") {
            None | Some(Value::Null) => {}
            Some(Value::Array(a)) => {
                if let Some(v) = a.iter().find(|v| !v.is_string()) {
                    return wrong("Endpoint.endpoints.addresses", v, "string");
                }
            }
            Some(v) => return wrong("Endpoint.endpoints.addresses", v, "[]string"),
        }
    }
    Ok(())
}

/// The checks and normalizations the real server's decoder applies: body must be an object,
/// time fields parse with their Go layout (and are re-serialized in UTC), integers are integers.
///
/// # Errors
/// 400 BadRequest with the decoder's wording.
pub fn decode(r: &Resource, obj: &mut Value) -> Result<(), ApiError> {
    if !obj.is_object() {
        return Err(decode_err(
            r,
            format!(
                "json: cannot unmarshal {} into Go value of type struct",
                json_type(obj)
            ),
        ));
    }
    if let Some(m) = obj.get("metadata")
        && !m.is_object()
        && !m.is_null()
    {
        return Err(decode_err(
            r,
            "json: cannot unmarshal into Go struct field .metadata of type v1.ObjectMeta".into(),
        ));
    }
    for k in ["labels", "annotations"] {
        if let Some(map) = obj
            .pointer(&format!("/metadata/{k}"))
            .filter(|v| !v.is_null())
        {
            let bad = match map.as_object() {
                Some(m) => m.values().find(|v| !v.is_string()).map(json_type),
                None => Some(json_type(map)),
            };
            if let Some(t) = bad {
                let want = if map.is_object() {
                    "string"
                } else {
                    "map[string]string"
                };
                return Err(decode_err(
                    r,
                    format!(
                        "json: cannot unmarshal {t} into Go struct field ObjectMeta.metadata.{k} of type {want}"
                    ),
                ));
            }
        }
    }
    if (r.group, r.kind) == ("discovery.k8s.io", "EndpointSlice") {
        check_shape(r, obj)?;
    }
    let has_spec = matches!(r.kind, "Namespace" | "Node" | "Service" | "Lease");
    if let Some(spec) = obj
        .get("spec")
        .filter(|v| has_spec && !v.is_null() && !v.is_object())
    {
        return Err(decode_err(
            r,
            format!(
                "json: cannot unmarshal {} into Go struct field {}.spec of type v1.{}Spec",
                json_type(spec),
                r.kind,
                r.kind
            ),
        ));
    }
    fix_time(r, obj.pointer_mut("/metadata/creationTimestamp"), false)?;
    fix_time(r, obj.pointer_mut("/metadata/deletionTimestamp"), false)?;
    match (r.group, r.kind) {
        ("coordination.k8s.io", "Lease") => {
            fix_time(r, obj.pointer_mut("/spec/acquireTime"), true)?;
            fix_time(r, obj.pointer_mut("/spec/renewTime"), true)?;
            for k in ["leaseDurationSeconds", "leaseTransitions"] {
                if let Some(v) = obj.pointer(&format!("/spec/{k}"))
                    && !v.is_null()
                    && v.as_i64().is_none_or(|n| i32::try_from(n).is_err())
                {
                    return Err(decode_err(
                        r,
                        format!(
                            "json: cannot unmarshal {} into Go struct field LeaseSpec.spec.{k} of type int32",
                            json_type(v)
                        ),
                    ));
                }
            }
        }
        ("events.k8s.io", "Event") => {
            fix_time(r, obj.pointer_mut("/eventTime"), true)?;
            fix_time(r, obj.pointer_mut("/series/lastObservedTime"), true)?;
            fix_time(r, obj.pointer_mut("/deprecatedFirstTimestamp"), false)?;
            fix_time(r, obj.pointer_mut("/deprecatedLastTimestamp"), false)?;
        }
        ("", "Event") => {
            fix_time(r, obj.pointer_mut("/eventTime"), true)?;
            fix_time(r, obj.pointer_mut("/series/lastObservedTime"), true)?;
            fix_time(r, obj.pointer_mut("/firstTimestamp"), false)?;
            fix_time(r, obj.pointer_mut("/lastTimestamp"), false)?;
        }
        _ => {}
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Static defaults (pkg/apis/core/v1/defaults.go, pkg/apis/discovery/v1/defaults.go) and the
// serialization quirks of typed objects.

/// Applies the defaults that need no allocation, and shapes fields as the real server serializes
/// them (an EndpointSlice with no endpoints reads back as `"endpoints": null`).
pub fn default_object(r: &Resource, obj: &mut Value) {
    match (r.group, r.kind) {
        ("discovery.k8s.io", "EndpointSlice") => default_endpoint_slice(obj),
        ("", "Service") => default_service(obj),
        ("", "Namespace") => {
            // Namespace strategy PrepareForCreate: finalizer "kubernetes", phase Active.
            if obj.pointer("/spec/finalizers").is_none() {
                obj["spec"] = json!({"finalizers": ["kubernetes"]});
            }
            if obj.pointer("/status/phase").is_none() {
                obj["status"] = json!({"phase": "Active"});
            }
        }
        // LeaseSpec is a non-pointer struct without omitempty: always serialized.
        ("coordination.k8s.io", "Lease") if obj.get("spec").is_none_or(Value::is_null) => {
            obj["spec"] = json!({});
        }
        _ => {}
    }
}

fn default_endpoint_slice(obj: &mut Value) {
    // `endpoints` and `ports` have no omitempty and round-trip through protobuf, where an empty
    // list becomes nil: both read back as null when empty.
    for k in ["endpoints", "ports"] {
        let empty = match obj.get(k) {
            None | Some(Value::Null) => true,
            Some(Value::Array(a)) => a.is_empty(),
            _ => false,
        };
        if empty {
            obj[k] = Value::Null;
        }
    }
    if let Some(eps) = obj.get_mut("endpoints").and_then(Value::as_array_mut) {
        for ep in eps {
            // EndpointConditions is a struct without omitempty: always present.
            if ep.is_object() && ep.get("conditions").is_none_or(Value::is_null) {
                ep["conditions"] = json!({});
            }
            // matches: pkg/registry/discovery/endpointslice/strategy.go — dropTopologyOnV1 removes
            // deprecatedTopology on every v1 write, and dropDisabledFieldsOnCreate/Update removes
            // hints.forNodes while the alpha PreferSameTrafficDistribution gate is off (1.33).
            if let Some(ep) = ep.as_object_mut() {
                ep.remove("deprecatedTopology");
                if let Some(hints) = ep.get_mut("hints").and_then(Value::as_object_mut) {
                    hints.remove("forNodes");
                }
            }
        }
    }
    if let Some(ports) = obj.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports {
            // SetDefaults_EndpointPort: protocol TCP, name "".
            if p.is_object() {
                if p.get("protocol").is_none_or(Value::is_null) {
                    p["protocol"] = json!("TCP");
                }
                if p.get("name").is_none_or(Value::is_null) {
                    p["name"] = json!("");
                }
            }
        }
    }
}

fn default_service(obj: &mut Value) {
    if !obj.get("spec").is_some_and(Value::is_object) {
        obj["spec"] = json!({});
    }
    let spec = &mut obj["spec"];
    if spec.get("type").is_none_or(Value::is_null) {
        spec["type"] = json!("ClusterIP");
    }
    if spec.get("sessionAffinity").is_none_or(Value::is_null) {
        spec["sessionAffinity"] = json!("None");
    }
    let ty = spec["type"].as_str().unwrap_or("").to_string();
    if ty != "ExternalName" && spec.get("internalTrafficPolicy").is_none_or(Value::is_null) {
        spec["internalTrafficPolicy"] = json!("Cluster");
    }
    if (ty == "NodePort" || ty == "LoadBalancer")
        && spec.get("externalTrafficPolicy").is_none_or(Value::is_null)
    {
        spec["externalTrafficPolicy"] = json!("Cluster");
    }
    if ty == "LoadBalancer"
        && spec
            .get("allocateLoadBalancerNodePorts")
            .is_none_or(Value::is_null)
    {
        spec["allocateLoadBalancerNodePorts"] = json!(true);
    }
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports {
            if !p.is_object() {
                continue;
            }
            if p.get("protocol").is_none_or(Value::is_null) {
                p["protocol"] = json!("TCP");
            }
            // SetDefaults_Service: targetPort defaults to port.
            let tp_missing = match p.get("targetPort") {
                None | Some(Value::Null) => true,
                Some(Value::Number(n)) => n.as_i64() == Some(0),
                Some(Value::String(s)) => s.is_empty(),
                _ => false,
            };
            if tp_missing && let Some(port) = p.get("port").cloned() {
                p["targetPort"] = port;
            }
        }
    }
    // ServiceStatus is a struct without omitempty: `status: {loadBalancer: {}}` is always there.
    if obj.get("status").is_none_or(Value::is_null) {
        obj["status"] = json!({"loadBalancer": {}});
    }
}

// ---------------------------------------------------------------------------------------------
// Per-kind validation.

/// Runs every validation for `obj` (and, on update, against `old`); empty when valid.
pub fn validate(r: &Resource, obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    validate_meta(r, obj, &mut errs);
    match (r.group, r.kind) {
        ("discovery.k8s.io", "EndpointSlice") => validate_endpoint_slice(obj, old, &mut errs),
        ("", "Service") => validate_service(obj, old, &mut errs),
        ("coordination.k8s.io", "Lease") => validate_lease(obj, &mut errs),
        ("events.k8s.io", "Event") => validate_event(obj, old, true, &mut errs),
        ("", "Event") => validate_event(obj, old, false, &mut errs),
        _ => {}
    }
    errs
}

/// EndpointSlice limits (pkg/apis/discovery/validation/validation.go).
const MAX_ENDPOINTS: usize = 1000;
const MAX_ADDRESSES: usize = 100;
/// The API reference says "a maximum of 100 ports", but the validation code has allowed 20000
/// since the limit was raised upstream (`maxPorts = 20000`); the server's behaviour wins.
const MAX_PORTS: usize = 20000;
const MAX_ZONE_HINTS: usize = 8;
const MAX_NODE_HINTS: usize = 8;
const ADDRESS_TYPES: &[&str] = &["FQDN", "IPv4", "IPv6"];
const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];

/// ValidateEndpointIP (pkg/apis/core/validation): the ranges an endpoint may not use.
fn endpoint_ip_errors(field: &str, s: &str, ip: IpAddr, errs: &mut Vec<FieldError>) {
    let v = json!(s);
    let (unspecified, loopback, link_local, ll_multicast) = match ip {
        IpAddr::V4(a) => (
            a.is_unspecified(),
            a.is_loopback(),
            a.is_link_local(),
            a.octets()[..3] == [224, 0, 0],
        ),
        IpAddr::V6(a) => {
            let seg = a.segments();
            // Go's net.IP treats IPv4-mapped IPv6 as IPv4, so judge those by their IPv4 form.
            if let Some(v4) = a.to_ipv4_mapped() {
                return endpoint_ip_errors(field, s, IpAddr::V4(v4), errs);
            }
            (
                a.is_unspecified(),
                a.is_loopback(),
                seg[0] & 0xffc0 == 0xfe80,
                seg[0] & 0xff0f == 0xff02,
            )
        }
    };
    if unspecified {
        errs.push(FieldError::invalid(
            field,
            &v,
            &format!("may not be unspecified ({s})"),
        ));
    }
    if loopback {
        errs.push(FieldError::invalid(
            field,
            &v,
            "may not be in the loopback range (127.0.0.0/8, ::1/128)",
        ));
    }
    if link_local {
        errs.push(FieldError::invalid(
            field,
            &v,
            "may not be in the link-local range (169.254.0.0/16, fe80::/10)",
        ));
    }
    if ll_multicast {
        errs.push(FieldError::invalid(
            field,
            &v,
            "may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)",
        ));
    }
}

fn validate_endpoint_slice(obj: &Value, old: Option<&Value>, errs: &mut Vec<FieldError>) {
    let at = obj.get("addressType").and_then(Value::as_str).unwrap_or("");
    if at.is_empty() {
        errs.push(FieldError::required("addressType", ""));
    } else if !ADDRESS_TYPES.contains(&at) {
        errs.push(FieldError::not_supported(
            "addressType",
            &json!(at),
            ADDRESS_TYPES,
        ));
    }
    if let Some(old) = old {
        let old_at = old.get("addressType").and_then(Value::as_str).unwrap_or("");
        if old_at != at {
            errs.push(FieldError::invalid(
                "addressType",
                &json!(at),
                "field is immutable",
            ));
        }
    }
    let eps = obj
        .get("endpoints")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    // Endpoints unchanged by an update are not validated again (ratcheting, so slices accepted
    // under older, laxer IP rules stay writable).
    let unchanged = old.is_some_and(|o| o.get("endpoints") == obj.get("endpoints"));
    if !unchanged {
        if eps.len() > MAX_ENDPOINTS {
            errs.push(FieldError::too_many("endpoints", eps.len(), MAX_ENDPOINTS));
        } else {
            for (i, ep) in eps.iter().enumerate() {
                validate_endpoint(at, i, ep, errs);
            }
        }
    }
    let ports = obj
        .get("ports")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if ports.len() > MAX_PORTS {
        errs.push(FieldError::too_many("ports", ports.len(), MAX_PORTS));
        return;
    }
    let mut names = std::collections::HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let f = format!("ports[{i}]");
        let name = p.get("name").and_then(Value::as_str).unwrap_or("");
        if !name.is_empty() {
            push_msgs(errs, &format!("{f}.name"), name, dns1123_label_errors(name));
        }
        if !names.insert(name.to_string()) {
            errs.push(FieldError::duplicate(format!("{f}.name"), &json!(name)));
        }
        match p.get("protocol").and_then(Value::as_str) {
            None => errs.push(FieldError::required(format!("{f}.protocol"), "")),
            Some(proto) if !PROTOCOLS.contains(&proto) => errs.push(FieldError::not_supported(
                format!("{f}.protocol"),
                &json!(proto),
                PROTOCOLS,
            )),
            Some(_) => {}
        }
        if let Some(port) = p.get("port").filter(|v| !v.is_null())
            && !port.as_i64().is_some_and(|n| (0..=65535).contains(&n))
        {
            errs.push(FieldError::invalid(
                format!("{f}.port"),
                port,
                "must be between 0 and 65535, inclusive",
            ));
        }
        if let Some(ap) = p.get("appProtocol").and_then(Value::as_str) {
            for m in qualified_name_errors(ap) {
                errs.push(FieldError::invalid(
                    format!("{f}.appProtocol"),
                    &json!(ap),
                    &m,
                ));
            }
        }
    }
}

fn validate_endpoint(at: &str, i: usize, ep: &Value, errs: &mut Vec<FieldError>) {
    let f = format!("endpoints[{i}]");
    let addrs = ep
        .get("addresses")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if addrs.is_empty() {
        errs.push(FieldError::required(
            format!("{f}.addresses"),
            "must contain at least 1 address",
        ));
    } else if addrs.len() > MAX_ADDRESSES {
        errs.push(FieldError::too_many(
            format!("{f}.addresses"),
            addrs.len(),
            MAX_ADDRESSES,
        ));
    }
    for (j, a) in addrs.iter().enumerate().take(MAX_ADDRESSES) {
        let af = format!("{f}.addresses[{j}]");
        let s = a.as_str().unwrap_or("");
        match at {
            // IsValidIPv4Address/IsValidIPv6Address, then ValidateNonSpecialIP on any family:
            // both run, so "::1" in an IPv4 slice gets two errors, as upstream.
            "IPv4" | "IPv6" => {
                let parsed = s.parse::<IpAddr>().ok();
                let fam_ok = match parsed {
                    Some(IpAddr::V4(_)) => at == "IPv4",
                    Some(IpAddr::V6(_)) => at == "IPv6",
                    None => false,
                };
                if !fam_ok {
                    errs.push(FieldError::invalid(
                        &af,
                        &json!(s),
                        &format!("must be a valid {at} address"),
                    ));
                }
                match parsed {
                    Some(ip) => endpoint_ip_errors(&af, s, ip, errs),
                    None => errs.push(FieldError::invalid(
                        &af,
                        &json!(s),
                        "must be a valid IP address",
                    )),
                }
            }
            "FQDN" => push_msgs(errs, &af, s, dns1123_subdomain_errors(s)),
            _ => {}
        }
    }
    if let Some(node) = ep.get("nodeName").and_then(Value::as_str) {
        push_msgs(
            errs,
            &format!("{f}.nodeName"),
            node,
            dns1123_subdomain_errors(node),
        );
    }
    // `zone` is not validated upstream; `hostname` is a DNS-1123 label.
    if let Some(h) = ep.get("hostname").and_then(Value::as_str) {
        push_msgs(errs, &format!("{f}.hostname"), h, dns1123_label_errors(h));
    }
    if let Some(hints) = ep.get("hints").filter(|h| h.is_object()) {
        let zones = hints
            .get("forZones")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        if zones.len() > MAX_ZONE_HINTS {
            errs.push(FieldError::too_many(
                format!("{f}.hints.forZones"),
                zones.len(),
                MAX_ZONE_HINTS,
            ));
        } else {
            let mut seen = std::collections::HashSet::new();
            for (k, z) in zones.iter().enumerate() {
                let zf = format!("{f}.hints.forZones[{k}].name");
                let name = z.get("name").and_then(Value::as_str).unwrap_or("");
                if !seen.insert(name) {
                    errs.push(FieldError::duplicate(&zf, &json!(name)));
                }
                push_msgs(errs, &zf, name, label_value_errors(name));
            }
        }
        let nodes = hints
            .get("forNodes")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        if nodes.len() > MAX_NODE_HINTS {
            errs.push(FieldError::too_many(
                format!("{f}.hints.forNodes"),
                nodes.len(),
                MAX_NODE_HINTS,
            ));
        }
    }
}

const SERVICE_TYPES: &[&str] = &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
const IP_FAMILY_POLICIES: &[&str] = &["PreferDualStack", "RequireDualStack", "SingleStack"];

fn validate_service(obj: &Value, old: Option<&Value>, errs: &mut Vec<FieldError>) {
    let spec = &obj["spec"];
    let ty = spec.get("type").and_then(Value::as_str).unwrap_or("");
    if !SERVICE_TYPES.contains(&ty) {
        errs.push(FieldError::not_supported(
            "spec.type",
            &json!(ty),
            SERVICE_TYPES,
        ));
    }
    let ports = spec
        .get("ports")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
    if ports.is_empty() && !headless && ty != "ExternalName" {
        errs.push(FieldError::required("spec.ports", ""));
    }
    let mut names = std::collections::HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let f = format!("spec.ports[{i}]");
        let name = p.get("name").and_then(Value::as_str).unwrap_or("");
        if ports.len() > 1 && name.is_empty() {
            errs.push(FieldError::required(format!("{f}.name"), ""));
        } else if !name.is_empty() {
            push_msgs(errs, &format!("{f}.name"), name, dns1123_label_errors(name));
            if !names.insert(name.to_string()) {
                errs.push(FieldError::duplicate(format!("{f}.name"), &json!(name)));
            }
        }
        let port = p.get("port").cloned().unwrap_or(json!(0));
        if !port.as_i64().is_some_and(|n| (1..=65535).contains(&n)) {
            errs.push(FieldError::invalid(
                format!("{f}.port"),
                &port,
                "must be between 1 and 65535, inclusive",
            ));
        }
        let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("");
        if !PROTOCOLS.contains(&proto) {
            errs.push(FieldError::not_supported(
                format!("{f}.protocol"),
                &json!(proto),
                PROTOCOLS,
            ));
        }
        match p.get("targetPort") {
            Some(Value::Number(n)) if !n.as_i64().is_some_and(|n| (1..=65535).contains(&n)) => {
                errs.push(FieldError::invalid(
                    format!("{f}.targetPort"),
                    &Value::Number(n.clone()),
                    "must be between 1 and 65535, inclusive",
                ));
            }
            Some(Value::String(s)) => {
                // IsValidPortName: an IANA service name, at most 15 characters, with a letter.
                let ok = s.len() <= 15
                    && s.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && s.chars().any(|c| c.is_ascii_lowercase())
                    && !s.starts_with('-')
                    && !s.ends_with('-')
                    && !s.contains("--");
                if !ok {
                    errs.push(FieldError::invalid(
                        format!("{f}.targetPort"),
                        &json!(s),
                        "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)",
                    ));
                }
            }
            _ => {}
        }
        if let Some(np) = p.get("nodePort").filter(|v| !v.is_null())
            && !(ty == "NodePort" || ty == "LoadBalancer")
            && np.as_i64() != Some(0)
        {
            errs.push(FieldError::forbidden(
                format!("{f}.nodePort"),
                &format!("may not be used when `type` is '{ty}'"),
            ));
        }
    }
    validate_labels(spec.get("selector"), "spec.selector", errs);
    if let Some(pol) = spec.get("ipFamilyPolicy").and_then(Value::as_str)
        && !IP_FAMILY_POLICIES.contains(&pol)
    {
        errs.push(FieldError::not_supported(
            "spec.ipFamilyPolicy",
            &json!(pol),
            IP_FAMILY_POLICIES,
        ));
    }
    if let Some(fams) = spec.get("ipFamilies").and_then(Value::as_array) {
        for (i, fam) in fams.iter().enumerate() {
            let s = fam.as_str().unwrap_or("");
            if s != "IPv4" && s != "IPv6" {
                errs.push(FieldError::not_supported(
                    format!("spec.ipFamilies[{i}]"),
                    fam,
                    &["IPv4", "IPv6"],
                ));
            }
        }
        if fams.len() > 2 {
            errs.push(FieldError::invalid(
                "spec.ipFamilies",
                &Value::Array(fams.clone()),
                "may specify no more than one IP for each IP family",
            ));
        }
    }
    if let Some(old) = old {
        // ValidateServiceUpdate: clusterIPs[0] may not change once set (except to/from ExternalName).
        let old_ip = old.pointer("/spec/clusterIP").and_then(Value::as_str);
        let new_ip = spec.get("clusterIP").and_then(Value::as_str);
        let old_ty = old.pointer("/spec/type").and_then(Value::as_str);
        if old_ip.is_some_and(|s| !s.is_empty())
            && old_ip != new_ip
            && old_ty != Some("ExternalName")
            && ty != "ExternalName"
        {
            errs.push(FieldError::invalid(
                "spec.clusterIPs[0]",
                &json!(new_ip.unwrap_or("")),
                "may not change once set",
            ));
        }
    }
}

fn validate_lease(obj: &Value, errs: &mut Vec<FieldError>) {
    if let Some(d) = obj
        .pointer("/spec/leaseDurationSeconds")
        .filter(|v| !v.is_null())
        && d.as_i64().is_some_and(|n| n <= 0)
    {
        errs.push(FieldError::invalid(
            "spec.leaseDurationSeconds",
            d,
            "must be greater than 0",
        ));
    }
    if let Some(t) = obj
        .pointer("/spec/leaseTransitions")
        .filter(|v| !v.is_null())
        && t.as_i64().is_some_and(|n| n < 0)
    {
        errs.push(FieldError::invalid(
            "spec.leaseTransitions",
            t,
            "must be greater than or equal to 0",
        ));
    }
    if let Some(s) = obj.pointer("/spec/strategy").and_then(Value::as_str) {
        let supported = ["OldestEmulationVersion"];
        if !supported.contains(&s) {
            errs.push(FieldError::not_supported(
                "spec.strategy",
                &json!(s),
                &supported,
            ));
        }
    }
    let preferred = obj
        .pointer("/spec/preferredHolder")
        .and_then(Value::as_str)
        .unwrap_or("");
    let strategy = obj
        .pointer("/spec/strategy")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !preferred.is_empty() && strategy.is_empty() {
        errs.push(FieldError::forbidden(
            "spec.preferredHolder",
            "preferredHolder can only be set if strategy is set",
        ));
    }
}

fn str_at<'a>(obj: &'a Value, ptr: &str) -> &'a str {
    obj.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

/// An Event seen through the internal type's field names, whichever API version it came in
/// (events.k8s.io/v1 `regarding`/`note`/`deprecated*` map to core's `involvedObject`/`message`/...),
/// because pkg/apis/core/validation/events.go validates the internal type and names its fields.
struct EventView<'a> {
    obj: &'a Value,
    v1: bool,
}

impl EventView<'_> {
    fn field(&self, internal: &str) -> Option<&Value> {
        let name = if self.v1 {
            match internal {
                "involvedObject" => "regarding",
                "message" => "note",
                "firstTimestamp" => "deprecatedFirstTimestamp",
                "lastTimestamp" => "deprecatedLastTimestamp",
                "count" => "deprecatedCount",
                "source" => "deprecatedSource",
                other => other,
            }
        } else {
            match internal {
                "reportingController" => "reportingComponent",
                other => other,
            }
        };
        self.obj.get(name).filter(|v| !v.is_null())
    }
    fn s(&self, internal: &str) -> &str {
        self.field(internal).and_then(Value::as_str).unwrap_or("")
    }
    fn set(&self, internal: &str) -> bool {
        self.field(internal).is_some()
    }
}

const EVENT_TEXT_LIMIT: usize = 128;
const EVENT_NOTE_LIMIT: usize = 1024;

// legacyValidateEvent: runs for every API version.
fn legacy_validate_event(ev: &EventView, errs: &mut Vec<FieldError>) {
    let ns = str_at(ev.obj, "/metadata/namespace");
    let ins = ev
        .field("involvedObject")
        .and_then(|o| o.get("namespace"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let mismatch = |errs: &mut Vec<FieldError>| {
        errs.push(FieldError::invalid(
            "involvedObject.namespace",
            &json!(ins),
            "does not match event.namespace",
        ));
    };
    if !ev.set("eventTime") {
        if ins.is_empty() {
            // event.Namespace must also be empty (or "default", for old clients).
            if !ns.is_empty() && ns != "default" {
                mismatch(errs);
            }
        } else if ns != ins {
            mismatch(errs);
        }
        return;
    }
    if ins.is_empty() && ns != "default" && ns != "kube-system" {
        mismatch(errs);
    }
    let rc = ev.s("reportingController");
    if rc.is_empty() {
        errs.push(FieldError::required("reportingController", ""));
    }
    for m in qualified_name_errors(rc) {
        errs.push(FieldError::invalid("reportingController", &json!(rc), &m));
    }
    let too_long = |errs: &mut Vec<FieldError>, f: &str, n: usize| {
        errs.push(FieldError::invalid(
            f,
            &json!(""),
            &format!("can have at most {n} characters"),
        ));
    };
    let ri = ev.s("reportingInstance");
    if ri.is_empty() {
        errs.push(FieldError::required("reportingInstance", ""));
    }
    if ri.len() > EVENT_TEXT_LIMIT {
        too_long(errs, "reportingInstance", EVENT_TEXT_LIMIT);
    }
    let action = ev.s("action");
    if action.is_empty() {
        errs.push(FieldError::required("action", ""));
    }
    if action.len() > EVENT_TEXT_LIMIT {
        too_long(errs, "action", EVENT_TEXT_LIMIT);
    }
    let reason = ev.s("reason");
    if reason.is_empty() {
        errs.push(FieldError::required("reason", ""));
    }
    if reason.len() > EVENT_TEXT_LIMIT {
        too_long(errs, "reason", EVENT_TEXT_LIMIT);
    }
    if ev.s("message").len() > EVENT_NOTE_LIMIT {
        too_long(errs, "message", EVENT_NOTE_LIMIT);
    }
}

// validateV1EventSeries.
fn validate_event_series(ev: &EventView, errs: &mut Vec<FieldError>) {
    if let Some(series) = ev.field("series") {
        if series.get("count").and_then(Value::as_i64).unwrap_or(0) < 2 {
            errs.push(FieldError::invalid(
                "series.count",
                &json!(""),
                "should be at least 2",
            ));
        }
        if series.get("lastObservedTime").is_none_or(Value::is_null) {
            errs.push(FieldError::required("series.lastObservedTime", ""));
        }
    }
}

/// ValidateEventCreate / ValidateEventUpdate (pkg/apis/core/validation/events.go): core/v1
/// requests get only the legacy checks; events.k8s.io/v1 requests get the strict ones too, and on
/// update most fields are immutable.
fn validate_event(obj: &Value, old: Option<&Value>, v1: bool, errs: &mut Vec<FieldError>) {
    let ev = EventView { obj, v1 };
    legacy_validate_event(&ev, errs);
    if !v1 {
        return;
    }
    match old {
        None => {
            validate_event_series(&ev, errs);
            if !ev.set("eventTime") {
                errs.push(FieldError::required("eventTime", ""));
            }
            let ty = ev.s("type");
            if ty != "Normal" && ty != "Warning" {
                errs.push(FieldError::invalid(
                    "type",
                    &json!(""),
                    &format!("has invalid value: {ty}"),
                ));
            }
            for f in ["firstTimestamp", "lastTimestamp"] {
                if ev.set(f) {
                    errs.push(FieldError::invalid(f, &json!(""), "needs to be unset"));
                }
            }
            if ev.field("count").and_then(Value::as_i64).unwrap_or(0) != 0 {
                errs.push(FieldError::invalid(
                    "count",
                    &json!(""),
                    "needs to be unset",
                ));
            }
            let src = ev.field("source");
            let src_set = |k: &str| {
                src.and_then(|s| s.get(k))
                    .and_then(Value::as_str)
                    .is_some_and(|v| !v.is_empty())
            };
            if src_set("component") || src_set("host") {
                errs.push(FieldError::invalid(
                    "source",
                    &json!(""),
                    "needs to be unset",
                ));
            }
        }
        Some(old) => {
            let old_ev = EventView { obj: old, v1 };
            if ev.field("series") != old_ev.field("series") {
                validate_event_series(&ev, errs);
            }
            for f in [
                "involvedObject",
                "reason",
                "message",
                "source",
                "firstTimestamp",
                "lastTimestamp",
                "count",
                "type",
                "eventTime",
                "action",
                "related",
                "reportingController",
                "reportingInstance",
            ] {
                if ev.field(f) != old_ev.field(f) {
                    errs.push(FieldError::invalid(
                        f,
                        ev.field(f).unwrap_or(&Value::Null),
                        "field is immutable",
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::resource;

    fn slice_res() -> &'static Resource {
        resource("discovery.k8s.io", "v1", "endpointslices").unwrap()
    }

    fn slice(at: &str, addrs: &[&str]) -> Value {
        json!({"metadata": {"name": "s", "namespace": "default"}, "addressType": at,
               "endpoints": [{"addresses": addrs}], "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]})
    }

    // matches: https://github.com/kubernetes/kubernetes/blob/v1.33.0/pkg/apis/core/validation/validation.go (ValidateEndpointIP)
    #[test]
    fn loopback_endpoint_addresses_are_rejected_with_the_real_message() {
        let r = slice_res();
        let errs = validate(r, &slice("IPv4", &["127.0.0.1"]), None);
        let e = invalid_error(r, "s", &errs);
        assert_eq!(e.code, 422);
        assert_eq!(
            e.message,
            "EndpointSlice.discovery.k8s.io \"s\" is invalid: endpoints[0].addresses[0]: Invalid value: \"127.0.0.1\": may not be in the loopback range (127.0.0.0/8, ::1/128)"
        );
        let cause = &e.details.unwrap()["causes"][0];
        assert_eq!(cause["reason"], "FieldValueInvalid");
        assert_eq!(cause["field"], "endpoints[0].addresses[0]");
    }

    // matches: https://github.com/kubernetes/kubernetes/blob/v1.33.0/pkg/apis/core/validation/validation.go (ValidateEndpointIP)
    #[test]
    fn link_local_unspecified_and_multicast_addresses_are_rejected() {
        let r = slice_res();
        for (at, a, want) in [
            ("IPv4", "169.254.1.1", "link-local range"),
            ("IPv6", "fe80::1", "link-local range"),
            ("IPv4", "0.0.0.0", "may not be unspecified (0.0.0.0)"),
            ("IPv6", "::", "may not be unspecified (::)"),
            ("IPv6", "::1", "loopback range"),
            ("IPv4", "224.0.0.5", "link-local multicast range"),
            ("IPv6", "ff02::1", "link-local multicast range"),
        ] {
            let errs = validate(r, &slice(at, &[a]), None);
            assert_eq!(errs.len(), 1, "{a}: {errs:?}");
            assert!(errs[0].body.contains(want), "{a}: {}", errs[0].body);
        }
        assert!(validate(r, &slice("IPv6", &["2001:db8::1"]), None).is_empty());
        assert!(validate(r, &slice("IPv4", &["198.51.100.7"]), None).is_empty());
    }

    // matches: https://github.com/kubernetes/kubernetes/blob/v1.33.0/pkg/apis/discovery/validation/validation.go (validateEndpoints)
    #[test]
    fn addresses_of_the_wrong_family_are_rejected() {
        let r = slice_res();
        let errs = validate(r, &slice("IPv4", &["2001:db8::1"]), None);
        assert_eq!(
            errs[0].message(),
            "endpoints[0].addresses[0]: Invalid value: \"2001:db8::1\": must be a valid IPv4 address"
        );
        let errs = validate(r, &slice("IPv6", &["203.0.113.1"]), None);
        assert_eq!(
            errs[0].body,
            "Invalid value: \"203.0.113.1\": must be a valid IPv6 address"
        );
    }

    // matches: https://github.com/kubernetes/kubernetes/blob/v1.33.0/pkg/apis/discovery/validation/validation.go (ValidateEndpointSliceUpdate)
    #[test]
    fn address_type_is_required_supported_and_immutable() {
        let r = slice_res();
        let mut s = slice("IPv4", &["198.51.100.1"]);
        s["addressType"] = json!("IPv5");
        let errs = validate(r, &s, None);
        assert_eq!(
            errs[0].message(),
            "addressType: Unsupported value: \"IPv5\": supported values: \"FQDN\", \"IPv4\", \"IPv6\""
        );
        s.as_object_mut().unwrap().remove("addressType");
        assert_eq!(
            validate(r, &s, None)[0].message(),
            "addressType: Required value"
        );
        let old = slice("IPv4", &["198.51.100.1"]);
        let new = slice("IPv6", &["2001:db8::1"]);
        let errs = validate(r, &new, Some(&old));
        assert_eq!(
            errs[0].message(),
            "addressType: Invalid value: \"IPv6\": field is immutable"
        );
    }

    // matches: https://github.com/kubernetes/kubernetes/blob/v1.33.0/pkg/apis/discovery/validation/validation.go (maxEndpoints, maxPorts, maxAddresses)
    #[test]
    fn endpoint_slice_size_limits_are_enforced() {
        let r = slice_res();
        let mut s = slice("IPv4", &["198.51.100.1"]);
        s["endpoints"] = Value::Array(
            (0..1001)
                .map(|i| json!({"addresses": [format!("198.51.100.{}", i % 250 + 1)]}))
                .collect(),
        );
        assert_eq!(
            validate(r, &s, None)[0].message(),
            "endpoints: Too many: 1001: must have at most 1000 items"
        );
        let mut s = slice("IPv4", &["198.51.100.1"]);
        s["ports"] = Value::Array(
            (0..20001)
                .map(|i| json!({"name": format!("p{i}"), "port": 80, "protocol": "TCP"}))
                .collect(),
        );
        assert_eq!(
            validate(r, &s, None)[0].message(),
            "ports: Too many: 20001: must have at most 20000 items"
        );
        let s = json!({"metadata": {"name": "s"}, "addressType": "IPv4", "endpoints": [{"addresses": []}]});
        assert_eq!(
            validate(r, &s, None)[0].message(),
            "endpoints[0].addresses: Required value: must contain at least 1 address"
        );
    }

    // matches: https://github.com/kubernetes/kubernetes/blob/v1.33.0/pkg/apis/discovery/validation/validation.go (validatePorts)
    #[test]
    fn endpoint_slice_port_names_must_be_unique_labels_and_protocols_supported() {
        let r = slice_res();
        let mut s = slice("IPv4", &["198.51.100.1"]);
        s["ports"] = json!([
            {"name": "https", "port": 443, "protocol": "TCP"},
            {"name": "https", "port": 444, "protocol": "TCP"},
            {"name": "Bad_Name", "port": 1, "protocol": "ICMP"},
        ]);
        let msgs: Vec<String> = validate(r, &s, None)
            .iter()
            .map(FieldError::message)
            .collect();
        assert!(msgs.contains(&"ports[1].name: Duplicate value: \"https\"".to_string()));
        assert!(msgs.iter().any(|m| m.starts_with(
            "ports[2].name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 label"
        )));
        assert!(msgs.contains(
            &"ports[2].protocol: Unsupported value: \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\"".to_string()
        ));
    }

    // matches: https://github.com/kubernetes/kubernetes/blob/v1.33.0/pkg/apis/discovery/validation/validation.go (family check and ValidateNonSpecialIP both run)
    #[test]
    fn a_special_address_of_the_wrong_family_gets_both_errors() {
        let r = slice_res();
        let msgs: Vec<String> = validate(r, &slice("IPv4", &["::1"]), None)
            .iter()
            .map(FieldError::message)
            .collect();
        assert_eq!(
            msgs,
            vec![
                "endpoints[0].addresses[0]: Invalid value: \"::1\": must be a valid IPv4 address".to_string(),
                "endpoints[0].addresses[0]: Invalid value: \"::1\": may not be in the loopback range (127.0.0.0/8, ::1/128)".to_string(),
            ]
        );
        let msgs = validate(r, &slice("IPv6", &["not-an-ip"]), None);
        assert_eq!(msgs.len(), 2);
        assert_eq!(
            msgs[1].body,
            "Invalid value: \"not-an-ip\": must be a valid IP address"
        );
    }

    // matches: https://github.com/kubernetes/kubernetes/blob/v1.33.0/pkg/apis/discovery/validation/validation.go (unchanged endpoints are not re-validated on update)
    #[test]
    fn unchanged_endpoints_are_not_revalidated_on_update() {
        let r = slice_res();
        let old = slice("IPv4", &["127.0.0.1"]);
        let mut new = old.clone();
        new["metadata"]["labels"] = json!({"a": "b"});
        assert!(validate(r, &new, Some(&old)).is_empty());
        new["endpoints"][0]["hostname"] = json!("Not_A_Label");
        let msgs: Vec<String> = validate(r, &new, Some(&old))
            .iter()
            .map(FieldError::message)
            .collect();
        assert_eq!(msgs.len(), 2, "{msgs:?}");
        assert!(msgs[0].contains("loopback") && msgs[1].starts_with("endpoints[0].hostname: "));
    }

    // matches: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#syntax-and-character-set
    #[test]
    fn label_keys_and_values_follow_the_documented_syntax() {
        assert!(qualified_name_errors("app.kubernetes.io/name").is_empty());
        assert!(qualified_name_errors("kubernetes.io/service-name").is_empty());
        assert!(!qualified_name_errors("Example.com/x").is_empty());
        assert!(!qualified_name_errors("a/b/c").is_empty());
        assert!(!qualified_name_errors("-x").is_empty());
        assert_eq!(
            qualified_name_errors(&"a".repeat(64)),
            vec!["name part must be no more than 63 characters".to_string()]
        );
        assert!(label_value_errors("").is_empty());
        assert!(label_value_errors("My_value.1").is_empty());
        assert!(!label_value_errors("x y").is_empty());
        assert_eq!(
            label_value_errors(&"v".repeat(64)),
            vec!["must be no more than 63 characters".to_string()]
        );
    }

    // matches: https://kubernetes.io/docs/concepts/overview/working-with-objects/names/
    #[test]
    fn services_need_dns1035_labels_while_slices_take_dns1123_subdomains() {
        let svc = resource("", "v1", "services").unwrap();
        let ns = resource("", "v1", "namespaces").unwrap();
        let mut errs = Vec::new();
        validate_meta(svc, &json!({"metadata": {"name": "1abc"}}), &mut errs);
        assert_eq!(errs.len(), 1);
        assert!(errs[0].body.contains("a DNS-1035 label"), "{:?}", errs);
        let mut errs = Vec::new();
        validate_meta(ns, &json!({"metadata": {"name": "a.b"}}), &mut errs);
        assert!(errs[0].body.contains("RFC 1123 label"), "{:?}", errs);
        let mut errs = Vec::new();
        validate_meta(
            slice_res(),
            &json!({"metadata": {"name": "kubernetes.vip-1"}}),
            &mut errs,
        );
        assert!(errs.is_empty(), "{errs:?}");
        let mut errs = Vec::new();
        validate_meta(slice_res(), &json!({"metadata": {}}), &mut errs);
        assert_eq!(
            errs[0].message(),
            "metadata.name: Required value: name or generateName is required"
        );
    }

    // matches: https://github.com/kubernetes/kubernetes/blob/v1.33.0/staging/src/k8s.io/apimachinery/pkg/api/validation/objectmeta.go (ValidateOwnerReferences)
    #[test]
    fn owner_references_need_all_fields_and_at_most_one_controller() {
        let mut errs = Vec::new();
        let o = json!({"metadata": {"name": "s", "ownerReferences": [
            {"apiVersion": "v1", "kind": "Service", "name": "a", "uid": "u1", "controller": true},
            {"apiVersion": "v1", "kind": "Service", "name": "b", "uid": "u2", "controller": true},
            {"apiVersion": "", "kind": "Service", "name": "c", "uid": ""},
        ]}});
        validate_meta(slice_res(), &o, &mut errs);
        let msgs: Vec<String> = errs.iter().map(FieldError::message).collect();
        assert!(msgs.iter().any(|m| m.contains("version must not be empty")));
        assert!(msgs.iter().any(|m| m.contains("uid must not be empty")));
        assert!(msgs.iter().any(|m| m.contains(
            "Only one reference can have Controller set to true. Found \"true\" in references for Service/a and Service/b"
        )));
    }

    // matches: https://github.com/kubernetes/kubernetes/blob/v1.33.0/staging/src/k8s.io/apimachinery/pkg/apis/meta/v1/micro_time.go (UnmarshalJSON)
    #[test]
    fn micro_time_needs_exactly_six_fractional_digits() {
        assert_eq!(
            parse_micro_time("2026-11-21T06:03:13.123456Z").as_deref(),
            Some("2026-11-21T06:03:13.123456Z")
        );
        assert_eq!(
            parse_micro_time("2026-11-21T07:03:13.123456+01:00").as_deref(),
            Some("2026-11-21T06:03:13.123456Z")
        );
        assert_eq!(parse_micro_time("2026-11-21T06:03:13Z"), None);
        assert_eq!(parse_micro_time("2026-11-21T06:03:13.123Z"), None);
        assert_eq!(parse_micro_time("2026-11-21T06:03:13.123456789Z"), None);
        let lease = resource("coordination.k8s.io", "v1", "leases").unwrap();
        let mut o =
            json!({"metadata": {"name": "l"}, "spec": {"renewTime": "2026-11-21T06:03:13Z"}});
        let e = decode(lease, &mut o).unwrap_err();
        assert_eq!(e.code, 400);
        assert_eq!(e.reason, "BadRequest");
        assert!(
            e.message
                .starts_with("Lease in version \"v1\" cannot be handled as a Lease: parsing time"),
            "{}",
            e.message
        );
    }

    // matches: https://github.com/kubernetes/kubernetes/blob/v1.33.0/staging/src/k8s.io/apimachinery/pkg/apis/meta/v1/types.go (labels are map[string]string: other JSON types fail decoding with 400)
    #[test]
    fn non_string_label_values_fail_decoding_with_400() {
        let mut o = json!({"metadata": {"name": "s", "labels": {"a": 1}}});
        let e = decode(slice_res(), &mut o).unwrap_err();
        assert_eq!(e.code, 400);
        assert_eq!(
            e.message,
            "EndpointSlice in version \"v1\" cannot be handled as a EndpointSlice: json: cannot unmarshal number into Go struct field ObjectMeta.metadata.labels of type string"
        );
    }

    // matches: https://github.com/kubernetes/kubernetes/blob/v1.33.0/staging/src/k8s.io/api/discovery/v1/types.go (typed decoding rejects wrong JSON shapes with 400)
    #[test]
    fn endpoint_slices_of_the_wrong_shape_fail_decoding_with_400() {
        for bad in [
            json!({"metadata": {"name": "s"}, "addressType": "IPv4", "endpoints": "x"}),
            json!({"metadata": {"name": "s"}, "addressType": "IPv4", "endpoints": [{"addresses": "198.51.100.1"}]}),
            json!({"metadata": {"name": "s"}, "addressType": "IPv4", "ports": [1]}),
        ] {
            let mut o = bad;
            let e = decode(slice_res(), &mut o).unwrap_err();
            assert_eq!(e.code, 400, "{o}");
            assert!(
                e.message.contains("json: cannot unmarshal"),
                "{}",
                e.message
            );
        }
    }

    // matches: https://github.com/kubernetes/kubernetes/blob/v1.33.0/pkg/apis/coordination/validation/validation.go (ValidateLeaseSpec)
    #[test]
    fn lease_duration_must_be_positive_and_transitions_non_negative() {
        let lease = resource("coordination.k8s.io", "v1", "leases").unwrap();
        let o = json!({"metadata": {"name": "l"}, "spec": {"leaseDurationSeconds": 0, "leaseTransitions": -1}});
        let msgs: Vec<String> = validate(lease, &o, None)
            .iter()
            .map(FieldError::message)
            .collect();
        assert_eq!(
            msgs,
            vec![
                "spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0".to_string(),
                "spec.leaseTransitions: Invalid value: -1: must be greater than or equal to 0"
                    .to_string()
            ]
        );
    }

    // matches: https://github.com/kubernetes/kubernetes/blob/v1.33.0/pkg/apis/core/validation/events.go (ValidateEventCreate, events.k8s.io/v1)
    #[test]
    fn events_v1_require_event_time_reporting_fields_action_and_reason() {
        let ev = resource("events.k8s.io", "v1", "events").unwrap();
        let required = |o: &Value| -> Vec<String> {
            validate(ev, o, None)
                .iter()
                .filter(|e| e.reason == "FieldValueRequired")
                .map(|e| e.field.clone())
                .collect()
        };
        let o = json!({"metadata": {"name": "e", "namespace": "default"}, "type": "Normal"});
        assert_eq!(required(&o), vec!["eventTime"]);
        let o = json!({"metadata": {"name": "e", "namespace": "default"}, "type": "Normal",
                       "eventTime": "2026-11-21T06:03:13.123456Z"});
        assert_eq!(
            required(&o),
            vec![
                "reportingController",
                "reportingInstance",
                "action",
                "reason"
            ]
        );
    }

    // matches: https://github.com/kubernetes/kubernetes/blob/v1.33.0/pkg/apis/core/validation/events.go (ValidateEventUpdate: immutable fields, series re-validated)
    #[test]
    fn events_v1_updates_may_change_the_series_but_not_the_note() {
        let ev = resource("events.k8s.io", "v1", "events").unwrap();
        let old = json!({"metadata": {"name": "e", "namespace": "default"}, "type": "Warning",
            "eventTime": "2026-11-21T06:03:13.123456Z", "reportingController": "endpoint-copier",
            "reportingInstance": "node-1", "action": "Sync", "reason": "SourceMissing", "note": "a",
            "regarding": {"kind": "Service", "namespace": "default", "name": "kubernetes-vip"}});
        assert!(validate(ev, &old, None).is_empty());
        let mut new = old.clone();
        new["series"] = json!({"count": 2, "lastObservedTime": "2026-11-21T06:04:00.000000Z"});
        assert!(validate(ev, &new, Some(&old)).is_empty());
        new["series"]["count"] = json!(1);
        new["note"] = json!("b");
        let msgs: Vec<String> = validate(ev, &new, Some(&old))
            .iter()
            .map(FieldError::message)
            .collect();
        assert_eq!(
            msgs,
            vec![
                "series.count: Invalid value: \"\": should be at least 2".to_string(),
                "message: Invalid value: \"b\": field is immutable".to_string()
            ]
        );
    }

    // matches: https://github.com/kubernetes/kubernetes/blob/v1.33.0/pkg/apis/core/validation/events.go (legacyValidateEvent, core/v1 requests)
    #[test]
    fn core_events_only_need_matching_namespaces() {
        let ev = resource("", "v1", "events").unwrap();
        let ok = json!({"metadata": {"name": "kubernetes-vip.17a9", "namespace": "default"},
                        "involvedObject": {"kind": "Service", "namespace": "default", "name": "kubernetes-vip"}});
        assert!(validate(ev, &ok, None).is_empty());
        let mut bad = ok.clone();
        bad["involvedObject"]["namespace"] = json!("kube-system");
        assert_eq!(
            validate(ev, &bad, None)[0].message(),
            "involvedObject.namespace: Invalid value: \"kube-system\": does not match event.namespace"
        );
    }

    // matches: https://github.com/kubernetes/kubernetes/blob/v1.33.0/pkg/apis/core/v1/defaults.go (SetDefaults_Service, SetDefaults_ServicePort)
    #[test]
    fn service_defaults_fill_type_affinity_protocol_and_target_port() {
        let svc = resource("", "v1", "services").unwrap();
        let mut o = json!({"metadata": {"name": "s"}, "spec": {"ports": [{"name": "k8s-api", "port": 6443}]}});
        default_object(svc, &mut o);
        assert_eq!(o["spec"]["type"], "ClusterIP");
        assert_eq!(o["spec"]["sessionAffinity"], "None");
        assert_eq!(o["spec"]["internalTrafficPolicy"], "Cluster");
        assert_eq!(o["spec"]["ports"][0]["protocol"], "TCP");
        assert_eq!(o["spec"]["ports"][0]["targetPort"], 6443);
        let mut lb = json!({"metadata": {"name": "s"}, "spec": {"type": "LoadBalancer", "ports": [{"port": 1}]}});
        default_object(svc, &mut lb);
        assert_eq!(lb["spec"]["externalTrafficPolicy"], "Cluster");
        assert_eq!(lb["spec"]["allocateLoadBalancerNodePorts"], true);
    }

    // matches: https://github.com/kubernetes/kubernetes/blob/v1.33.0/pkg/apis/core/validation/validation.go (validateServicePort)
    #[test]
    fn services_with_several_ports_need_unique_names() {
        let svc = resource("", "v1", "services").unwrap();
        let mut o = json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 1}, {"name": "a", "port": 2}, {"name": "a", "port": 70000}]}});
        default_object(svc, &mut o);
        let msgs: Vec<String> = validate(svc, &o, None)
            .iter()
            .map(FieldError::message)
            .collect();
        assert!(msgs.contains(&"spec.ports[0].name: Required value".to_string()));
        assert!(msgs.contains(&"spec.ports[2].name: Duplicate value: \"a\"".to_string()));
        assert!(
            msgs.contains(
                &"spec.ports[2].port: Invalid value: 70000: must be between 1 and 65535, inclusive"
                    .to_string()
            )
        );
    }

    // matches: https://github.com/kubernetes/kubernetes/blob/v1.33.0/staging/src/k8s.io/apimachinery/pkg/api/errors/errors.go (NewInvalid aggregates several errors as "[a, b]")
    #[test]
    fn several_field_errors_are_aggregated_in_brackets() {
        let r = slice_res();
        let errs = validate(r, &slice("IPv4", &["127.0.0.1", "169.254.0.1"]), None);
        let e = invalid_error(r, "s", &errs);
        assert!(
            e.message.starts_with(
                "EndpointSlice.discovery.k8s.io \"s\" is invalid: [endpoints[0].addresses[0]: "
            ),
            "{}",
            e.message
        );
        assert_eq!(e.details.unwrap()["causes"].as_array().unwrap().len(), 2);
    }
}
