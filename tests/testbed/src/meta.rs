//! System-set metadata: uid, timestamps, generateName suffixes and managedFields entries.
//!
//! Owns: the values kube-apiserver generates (k8s.io/apiserver/pkg/registry/rest/create.go
//! `FillObjectMetaSystemFields`, names.SimpleNameGenerator, the field manager's managedFields).
//! Leaves to `store/` when each is applied (create vs update) and the resourceVersion counter.

use serde_json::{Map, Value, json};

/// The alphabet of `k8s.io/apiserver/pkg/storage/names.SimpleNameGenerator` (utilrand.String):
/// no vowels, no look-alike characters, so generated names never spell words.
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
/// Random characters appended to a generateName prefix.
const NAME_RANDOM_LEN: usize = 5;
/// The prefix is cut so that prefix + suffix stays within 63 characters (maxGeneratedNameLength).
const MAX_GENERATED_PREFIX: usize = 63 - NAME_RANDOM_LEN;

/// The current time as metav1.Time serializes it: RFC 3339, UTC, whole seconds.
pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// A new random uid (uuid v4, as apiserver's `uuid.NewUUID()`).
pub fn new_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// `prefix` (cut to 58 characters) followed by 5 random characters from the apiserver's alphabet.
pub fn generate_name(prefix: &str) -> String {
    let cut: String = prefix.chars().take(MAX_GENERATED_PREFIX).collect();
    // uuid v4 bytes are a ready source of randomness without another dependency.
    let bytes = uuid::Uuid::new_v4().into_bytes();
    let suffix: String = bytes[..NAME_RANDOM_LEN]
        .iter()
        .map(|b| NAME_ALPHABET[usize::from(*b) % NAME_ALPHABET.len()] as char)
        .collect();
    format!("{cut}{suffix}")
}

/// The `fieldsV1` set of an object: every field present, as `f:<name>` keys.
///
/// Simplified from structured-merge-diff: lists are recorded as one atomic leaf (the real server
/// writes `k:{...}`/`v:...` entries for associative lists), and metadata is limited to labels,
/// annotations and ownerReferences, as the real field manager ignores the system fields.
pub fn fields_v1(obj: &Value) -> Value {
    let mut out = Map::new();
    if let Some(m) = obj.as_object() {
        for (k, v) in m {
            match k.as_str() {
                "apiVersion" | "kind" | "status" => {}
                "metadata" => {
                    let mut meta = Map::new();
                    for key in ["labels", "annotations", "ownerReferences"] {
                        if let Some(v) = v.get(key).filter(|v| !v.is_null()) {
                            meta.insert(format!("f:{key}"), set_of(v));
                        }
                    }
                    if !meta.is_empty() {
                        out.insert("f:metadata".into(), Value::Object(meta));
                    }
                }
                _ => {
                    out.insert(format!("f:{k}"), set_of(v));
                }
            }
        }
    }
    Value::Object(out)
}

fn set_of(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            out.insert(".".into(), json!({}));
            for (k, v) in m {
                out.insert(format!("f:{k}"), set_of(v));
            }
            Value::Object(out)
        }
        _ => json!({}),
    }
}

/// Records a write by `manager` in `obj.metadata.managedFields`: one entry per (manager,
/// operation), replaced on each write, as the field manager does when one manager owns the object.
/// Entries of other managers are kept as they were (simplification: the real server also removes
/// from them the fields this write took over).
pub fn record_manager(obj: &mut Value, manager: &str, operation: &str, api_version: &str) {
    let fields = fields_v1(obj);
    let entry = json!({
        "manager": manager,
        "operation": operation,
        "apiVersion": api_version,
        "time": now(),
        "fieldsType": "FieldsV1",
        "fieldsV1": fields,
    });
    let meta = &mut obj["metadata"];
    let mut list: Vec<Value> = meta
        .get("managedFields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    list.retain(|e| {
        !(e.get("manager").and_then(Value::as_str) == Some(manager)
            && e.get("operation").and_then(Value::as_str) == Some(operation))
    });
    list.push(entry);
    meta["managedFields"] = Value::Array(list);
}

#[cfg(test)]
mod tests {
    use super::*;

    // matches: https://github.com/kubernetes/kubernetes/blob/v1.33.0/staging/src/k8s.io/apiserver/pkg/storage/names/generate.go
    #[test]
    fn generated_names_append_five_characters_from_the_apiserver_alphabet() {
        let n = generate_name("kubernetes-vip-");
        assert_eq!(n.len(), "kubernetes-vip-".len() + 5);
        assert!(n.starts_with("kubernetes-vip-"));
        assert!(n[15..].bytes().all(|b| NAME_ALPHABET.contains(&b)), "{n}");
        let long = generate_name(&"a".repeat(100));
        assert_eq!(long.len(), 63);
    }

    // matches: https://kubernetes.io/docs/reference/using-api/server-side-apply/#field-management
    #[test]
    fn managed_fields_record_manager_operation_and_present_fields() {
        let mut o = json!({"apiVersion": "v1", "metadata": {"name": "x", "labels": {"a": "b"}}, "spec": {"ports": [1]}});
        record_manager(&mut o, "endpoint-copier", "Update", "v1");
        record_manager(&mut o, "endpoint-copier", "Update", "v1");
        let mf = o["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(mf.len(), 1);
        assert_eq!(mf[0]["manager"], "endpoint-copier");
        assert_eq!(mf[0]["operation"], "Update");
        assert_eq!(mf[0]["fieldsType"], "FieldsV1");
        assert_eq!(
            mf[0]["fieldsV1"],
            json!({"f:metadata": {"f:labels": {".": {}, "f:a": {}}}, "f:spec": {".": {}, "f:ports": {}}})
        );
    }

    // matches: https://kubernetes.io/docs/reference/using-api/api-concepts/#resourceversion-in-metadata (timestamps are RFC 3339 seconds)
    #[test]
    fn timestamps_are_rfc3339_utc_seconds() {
        let t = now();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.ends_with('Z'));
        assert_eq!(new_uid().len(), 36);
    }
}
