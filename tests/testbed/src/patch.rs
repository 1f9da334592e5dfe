//! JSON merge patch (RFC 7386) and JSON patch (RFC 6902), as kube-apiserver applies them
//! (it uses github.com/evanphx/json-patch on the object's JSON form).
//!
//! Owns: applying a patch document to a JSON value. Leaves to `store/` which object is patched,
//! the preconditions and validation of the result, and how errors become Status objects
//! (merge patch failures are 400 BadRequest, JSON patch application failures 422, as upstream).

use serde_json::Value;

/// Why a patch could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The patch document itself is malformed (upstream: 400 BadRequest).
    #[error("{0}")]
    Malformed(String),
    /// An operation could not be applied to this object (upstream: 422).
    #[error("{0}")]
    Failed(String),
}

/// Applies an RFC 7386 merge patch: objects merge recursively, `null` deletes, anything else
/// (arrays included) replaces.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// Decodes one RFC 6901 pointer into its unescaped tokens.
fn tokens(path: &str) -> Result<Vec<String>, Error> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    if !path.starts_with('/') {
        return Err(Error::Malformed(format!("invalid JSON pointer: {path:?}")));
    }
    Ok(path[1..]
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn index(tok: &str, len: usize, allow_end: bool) -> Option<usize> {
    if allow_end && tok == "-" {
        return Some(len);
    }
    if tok.len() > 1 && tok.starts_with('0') {
        return None;
    }
    let i: usize = tok.parse().ok()?;
    let max = if allow_end {
        len
    } else {
        len.saturating_sub(1)
    };
    (i <= max && (allow_end || len > 0)).then_some(i)
}

fn parent<'a>(doc: &'a mut Value, toks: &[String], path: &str) -> Result<&'a mut Value, Error> {
    let mut cur = doc;
    for t in toks {
        cur = match cur {
            Value::Object(m) => m.get_mut(t),
            Value::Array(a) => {
                let len = a.len();
                index(t, len, false).and_then(|i| a.get_mut(i))
            }
            _ => None,
        }
        .ok_or_else(|| Error::Failed(format!("doc is missing path: {path:?}")))?;
    }
    Ok(cur)
}

fn get(doc: &Value, path: &str) -> Result<Value, Error> {
    let toks = tokens(path)?;
    let mut cur = doc;
    for t in &toks {
        cur = match cur {
            Value::Object(m) => m.get(t),
            Value::Array(a) => index(t, a.len(), false).and_then(|i| a.get(i)),
            _ => None,
        }
        .ok_or_else(|| Error::Failed(format!("doc is missing path: {path:?}")))?;
    }
    Ok(cur.clone())
}

fn add(doc: &mut Value, path: &str, v: Value) -> Result<(), Error> {
    let toks = tokens(path)?;
    let Some((last, init)) = toks.split_last() else {
        *doc = v;
        return Ok(());
    };
    match parent(doc, init, path)? {
        Value::Object(m) => {
            m.insert(last.clone(), v);
            Ok(())
        }
        Value::Array(a) => {
            let i = index(last, a.len(), true).ok_or_else(|| {
                Error::Failed(format!("add operation: index out of range: {path:?}"))
            })?;
            a.insert(i, v);
            Ok(())
        }
        _ => Err(Error::Failed(format!("doc is missing path: {path:?}"))),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, Error> {
    let toks = tokens(path)?;
    let Some((last, init)) = toks.split_last() else {
        return Err(Error::Failed(
            "remove operation: cannot remove the whole document".into(),
        ));
    };
    let missing = || {
        Error::Failed(format!(
            "remove operation does not apply: doc is missing path: {path:?}"
        ))
    };
    match parent(doc, init, path)? {
        Value::Object(m) => m.remove(last).ok_or_else(missing),
        Value::Array(a) => {
            let i = index(last, a.len(), false).ok_or_else(missing)?;
            Ok(a.remove(i))
        }
        _ => Err(missing()),
    }
}

/// Applies an RFC 6902 JSON patch (`add`, `remove`, `replace`, `move`, `copy`, `test`) atomically:
/// on error `target` is left unchanged.
///
/// # Errors
/// [`Error::Malformed`] when `patch` is not an array of operations, [`Error::Failed`] when an
/// operation does not apply (missing path, failed test).
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), Error> {
    let ops = patch.as_array().ok_or_else(|| {
        Error::Malformed(
            "json: cannot unmarshal object into Go value of type jsonpatch.Patch".into(),
        )
    })?;
    let mut doc = target.clone();
    for op in ops {
        let name = op.get("op").and_then(Value::as_str).unwrap_or("");
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::Failed(format!("{name} operation: missing path")))?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| Error::Failed(format!("{name} operation: missing value")))
        };
        let from = || {
            op.get("from")
                .and_then(Value::as_str)
                .ok_or_else(|| Error::Failed(format!("{name} operation: missing from")))
        };
        match name {
            "add" => add(&mut doc, path, value()?)?,
            "remove" => {
                remove(&mut doc, path)?;
            }
            "replace" => {
                get(&doc, path).map_err(|_| {
                    Error::Failed(format!(
                        "replace operation does not apply: doc is missing key: {path}"
                    ))
                })?;
                remove(&mut doc, path)?;
                add(&mut doc, path, value()?)?;
            }
            "move" => {
                let from = from()?;
                let v = remove(&mut doc, from)?;
                add(&mut doc, path, v)?;
            }
            "copy" => {
                let v = get(&doc, from()?)?;
                add(&mut doc, path, v)?;
            }
            "test" => {
                if get(&doc, path)? != value()? {
                    return Err(Error::Failed(format!(
                        "testing value {path} failed: test failed"
                    )));
                }
            }
            other => {
                return Err(Error::Malformed(format!("Unexpected kind: {other}")));
            }
        }
    }
    *target = doc;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // matches: https://www.rfc-editor.org/rfc/rfc7386#section-3 (null deletes, arrays replace)
    #[test]
    fn merge_patch_deletes_nulls_merges_objects_and_replaces_arrays() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        merge(&mut t, &json!({"a": "z", "c": {"f": null}, "l": [3]}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}, "l": [3]}));
    }

    // matches: https://www.rfc-editor.org/rfc/rfc6902#section-4
    #[test]
    fn json_patch_supports_every_operation() {
        let mut t = json!({"a": [1, 2], "b": {"c": 1}});
        json_patch(
            &mut t,
            &json!([
                {"op": "add", "path": "/a/-", "value": 3},
                {"op": "add", "path": "/a/0", "value": 0},
                {"op": "replace", "path": "/b/c", "value": 2},
                {"op": "copy", "from": "/b", "path": "/d"},
                {"op": "move", "from": "/d/c", "path": "/e"},
                {"op": "remove", "path": "/a/1"},
                {"op": "test", "path": "/e", "value": 2},
            ]),
        )
        .unwrap();
        assert_eq!(t, json!({"a": [0, 2, 3], "b": {"c": 2}, "d": {}, "e": 2}));
    }

    // matches: https://www.rfc-editor.org/rfc/rfc6902#section-5 (a failed operation aborts the whole patch)
    #[test]
    fn a_failing_json_patch_leaves_the_document_unchanged() {
        let mut t = json!({"a": 1});
        let e = json_patch(
            &mut t,
            &json!([{"op": "replace", "path": "/a", "value": 2}, {"op": "test", "path": "/a", "value": 1}]),
        )
        .unwrap_err();
        assert_eq!(
            e,
            Error::Failed("testing value /a failed: test failed".into())
        );
        assert_eq!(t, json!({"a": 1}));
        assert!(matches!(
            json_patch(&mut t, &json!([{"op": "remove", "path": "/zz"}])),
            Err(Error::Failed(_))
        ));
    }
}
