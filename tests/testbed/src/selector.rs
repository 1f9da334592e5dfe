//! Label and field selectors as kube-apiserver parses and evaluates them.
//!
//! Owns: parsing `labelSelector` (the full grammar of k8s.io/apimachinery/pkg/labels/selector.go)
//! and `fieldSelector` (k8s.io/apimachinery/pkg/fields/selector.go), and matching them against a
//! stored object. Leaves to `store/` which objects are matched and what a parse error becomes
//! (a 400 BadRequest Status).

use serde_json::Value;

use crate::validate;

/// Why a selector could not be parsed; the message is what kube-apiserver puts in its 400 Status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A label selector requirement is malformed.
    #[error("unable to parse requirement: {0}")]
    LabelRequirement(String),
    /// The label selector's tokens are out of order.
    #[error("{0}")]
    LabelSyntax(String),
    /// A field selector term is malformed.
    #[error("invalid selector: '{0}'; can't understand '{1}'")]
    FieldTerm(String, String),
    /// A field selector names a field this resource does not index.
    #[error("field label not supported: {0}")]
    FieldUnsupported(String),
}

/// One label requirement's operator.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    /// `key=value`, `key==value`, `key in (a,b)`.
    In(Vec<String>),
    /// `key!=value`, `key notin (a,b)`: also true when the key is absent.
    NotIn(Vec<String>),
    /// `key`.
    Exists,
    /// `!key`.
    DoesNotExist,
    /// `key>n` (integer compare; false when the value is not an integer).
    Gt(i64),
    /// `key<n`.
    Lt(i64),
}

/// A parsed label selector: every requirement must hold (comma means AND).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    /// (key, operator) pairs; empty selects everything.
    reqs: Vec<(String, Op)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Not,
    Eq,
    DoubleEq,
    NotEq,
    In,
    NotInKw,
    Gt,
    Lt,
    Open,
    Close,
    Comma,
}

impl Tok {
    fn show(&self) -> String {
        match self {
            Tok::Ident(s) => s.clone(),
            Tok::Not => "!".into(),
            Tok::Eq => "=".into(),
            Tok::DoubleEq => "==".into(),
            Tok::NotEq => "!=".into(),
            Tok::In => "in".into(),
            Tok::NotInKw => "notin".into(),
            Tok::Gt => ">".into(),
            Tok::Lt => "<".into(),
            Tok::Open => "(".into(),
            Tok::Close => ")".into(),
            Tok::Comma => ",".into(),
        }
    }
}

// The lexer of labels/selector.go: special characters end identifiers, whitespace separates,
// and the words `in`/`notin` are keywords only where an identifier is otherwise read.
fn lex(s: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '\t' | '\r' | '\n' => i += 1,
            '(' => {
                out.push(Tok::Open);
                i += 1;
            }
            ')' => {
                out.push(Tok::Close);
                i += 1;
            }
            ',' => {
                out.push(Tok::Comma);
                i += 1;
            }
            '>' => {
                out.push(Tok::Gt);
                i += 1;
            }
            '<' => {
                out.push(Tok::Lt);
                i += 1;
            }
            '!' if chars.get(i + 1) == Some(&'=') => {
                out.push(Tok::NotEq);
                i += 2;
            }
            '!' => {
                out.push(Tok::Not);
                i += 1;
            }
            '=' if chars.get(i + 1) == Some(&'=') => {
                out.push(Tok::DoubleEq);
                i += 2;
            }
            '=' => {
                out.push(Tok::Eq);
                i += 1;
            }
            _ => {
                let start = i;
                while i < chars.len() && !" \t\r\n()!,=<>".contains(chars[i]) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                out.push(match word.as_str() {
                    "in" => Tok::In,
                    "notin" => Tok::NotInKw,
                    _ => Tok::Ident(word),
                });
            }
        }
    }
    out
}

fn check_key(key: &str) -> Result<(), Error> {
    if let Some(msg) = validate::qualified_name_errors(key).into_iter().next() {
        return Err(Error::LabelRequirement(format!(
            "key: Invalid value: \"{key}\": {msg}"
        )));
    }
    Ok(())
}

fn check_value(i: usize, v: &str) -> Result<(), Error> {
    if let Some(msg) = validate::label_value_errors(v).into_iter().next() {
        return Err(Error::LabelRequirement(format!(
            "values[{i}]: Invalid value: \"{v}\": {msg}"
        )));
    }
    Ok(())
}

impl LabelSelector {
    /// Parses a `labelSelector` query value; the empty string selects everything.
    ///
    /// # Errors
    /// [`Error::LabelRequirement`] / [`Error::LabelSyntax`] with kube-apiserver's wording.
    pub fn parse(s: &str) -> Result<LabelSelector, Error> {
        let toks = lex(s);
        let mut reqs = Vec::new();
        let mut i = 0;
        let expect_err = |found: Option<&Tok>, what: &str| {
            Error::LabelSyntax(format!(
                "found '{}', expected: {what}",
                found.map(Tok::show).unwrap_or_default()
            ))
        };
        while i < toks.len() {
            let negated = toks[i] == Tok::Not;
            if negated {
                i += 1;
            }
            let key = match toks.get(i) {
                Some(Tok::Ident(k)) => k.clone(),
                other => return Err(expect_err(other, "!, identifier, or 'end of string'")),
            };
            check_key(&key)?;
            i += 1;
            if negated {
                reqs.push((key, Op::DoesNotExist));
            } else {
                match toks.get(i) {
                    None | Some(Tok::Comma) => reqs.push((key, Op::Exists)),
                    Some(Tok::Eq) | Some(Tok::DoubleEq) | Some(Tok::NotEq) => {
                        let neg = toks[i] == Tok::NotEq;
                        i += 1;
                        // `a=` selects the empty value, as the real lexer allows.
                        let v = match toks.get(i) {
                            Some(Tok::Ident(v)) => {
                                i += 1;
                                v.clone()
                            }
                            Some(Tok::In) | Some(Tok::NotInKw) => {
                                let v = toks[i].show();
                                i += 1;
                                v
                            }
                            None | Some(Tok::Comma) => String::new(),
                            other => return Err(expect_err(other, "identifier")),
                        };
                        check_value(0, &v)?;
                        reqs.push((
                            key,
                            if neg {
                                Op::NotIn(vec![v])
                            } else {
                                Op::In(vec![v])
                            },
                        ));
                    }
                    Some(Tok::In) | Some(Tok::NotInKw) => {
                        let neg = toks[i] == Tok::NotInKw;
                        i += 1;
                        if toks.get(i) != Some(&Tok::Open) {
                            return Err(expect_err(toks.get(i), "'('"));
                        }
                        i += 1;
                        let mut vals = Vec::new();
                        loop {
                            match toks.get(i) {
                                Some(Tok::Ident(v)) => {
                                    check_value(vals.len(), v)?;
                                    vals.push(v.clone());
                                    i += 1;
                                }
                                Some(Tok::Close) if vals.is_empty() => {}
                                other => return Err(expect_err(other, "',', ')' or identifier")),
                            }
                            match toks.get(i) {
                                Some(Tok::Comma) => i += 1,
                                Some(Tok::Close) => {
                                    i += 1;
                                    break;
                                }
                                other => return Err(expect_err(other, "',' or ')'")),
                            }
                        }
                        if vals.is_empty() {
                            return Err(Error::LabelRequirement(
                                "values: Invalid value: []string{}: for 'in', 'notin' operators, values set can't be empty".into(),
                            ));
                        }
                        reqs.push((key, if neg { Op::NotIn(vals) } else { Op::In(vals) }));
                    }
                    Some(Tok::Gt) | Some(Tok::Lt) => {
                        let gt = toks[i] == Tok::Gt;
                        i += 1;
                        let n = match toks.get(i) {
                            Some(Tok::Ident(v)) => v.parse::<i64>().map_err(|_| {
                                Error::LabelRequirement(format!(
                                    "values[0]: Invalid value: \"{v}\": for 'Gt', 'Lt' operators, the value must be an integer"
                                ))
                            })?,
                            other => return Err(expect_err(other, "identifier")),
                        };
                        i += 1;
                        reqs.push((key, if gt { Op::Gt(n) } else { Op::Lt(n) }));
                    }
                    other => {
                        return Err(expect_err(other, "in, notin, =, ==, !=, gt, lt"));
                    }
                }
            }
            match toks.get(i) {
                None => break,
                Some(Tok::Comma) => {
                    i += 1;
                    if i == toks.len() {
                        return Err(expect_err(None, "!, identifier, or 'end of string'"));
                    }
                }
                other => return Err(expect_err(other, "',' or 'end of string'")),
            }
        }
        Ok(LabelSelector { reqs })
    }

    /// True when this selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// Whether an object (its `metadata.labels`) satisfies every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        if self.reqs.is_empty() {
            return true;
        }
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.reqs.iter().all(|(k, op)| match op {
            Op::In(vals) => get(k).is_some_and(|v| vals.iter().any(|x| x == v)),
            Op::NotIn(vals) => get(k).is_none_or(|v| vals.iter().all(|x| x != v)),
            Op::Exists => get(k).is_some(),
            Op::DoesNotExist => get(k).is_none(),
            Op::Gt(n) => get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v > *n),
            Op::Lt(n) => get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v < *n),
        })
    }
}

/// A parsed field selector: every term must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    /// (JSON path segments, wanted value, equal?) triples.
    terms: Vec<(Vec<String>, String, bool)>,
}

/// Field labels every resource supports (the generic `DefaultClusterScopedAttr` /
/// `DefaultNamespaceScopedAttr` of k8s.io/apiserver/pkg/registry/generic).
const GENERIC_FIELDS: &[&str] = &["metadata.name", "metadata.namespace"];

/// Extra field labels per kind (pkg/registry/*/strategy.go `*ToSelectableFields`), for the kinds the
/// test bed serves.
fn extra_fields(kind: &str, group: &str) -> &'static [&'static str] {
    match (group, kind) {
        ("", "Event") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        ("", "Namespace") => &["status.phase"],
        ("", "Node") => &["spec.unschedulable"],
        ("", "Service") => &["spec.clusterIP", "spec.type"],
        _ => &[],
    }
}

// Splits on unescaped `sep`, as fields.splitTerms / splitTerm do (backslash escapes).
fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut esc = false;
    for c in s.chars() {
        if esc {
            if let Some(last) = out.last_mut() {
                last.push('\\');
                last.push(c);
            }
            esc = false;
        } else if c == '\\' {
            esc = true;
        } else if c == sep {
            out.push(String::new());
        } else if let Some(last) = out.last_mut() {
            last.push(c);
        }
    }
    out
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut esc = false;
    for c in s.chars() {
        if esc {
            out.push(c);
            esc = false;
        } else if c == '\\' {
            esc = true;
        } else {
            out.push(c);
        }
    }
    out
}

impl FieldSelector {
    /// Parses a `fieldSelector` for objects of `kind` in `group`.
    ///
    /// # Errors
    /// [`Error::FieldTerm`] for a term without an operator, [`Error::FieldUnsupported`] for a field
    /// the real server does not index for this kind.
    pub fn parse(s: &str, group: &str, kind: &str) -> Result<FieldSelector, Error> {
        let mut terms = Vec::new();
        if s.trim().is_empty() {
            return Ok(FieldSelector { terms });
        }
        for term in split_unescaped(s, ',') {
            if term.is_empty() {
                continue;
            }
            // Order matters: "!=" and "==" before "=", as fields.splitTerm tries them.
            let (field, value, eq) = if let Some((f, v)) = term.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, v, true)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, v, true)
            } else {
                return Err(Error::FieldTerm(s.to_string(), term.clone()));
            };
            let field = field.trim();
            if !GENERIC_FIELDS.contains(&field) && !extra_fields(kind, group).contains(&field) {
                return Err(Error::FieldUnsupported(field.to_string()));
            }
            terms.push((
                field.split('.').map(str::to_string).collect(),
                unescape(value),
                eq,
            ));
        }
        Ok(FieldSelector { terms })
    }

    /// True when this selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// Whether an object satisfies every term; an absent field compares as the empty string.
    pub fn matches(&self, obj: &Value) -> bool {
        self.terms.iter().all(|(path, want, eq)| {
            let mut cur = Some(obj);
            for seg in path {
                cur = cur.and_then(|v| v.get(seg.as_str()));
            }
            let got = match cur {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Number(n)) => n.to_string(),
                _ => String::new(),
            };
            (got == *want) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "namespace": "default", "labels": labels}})
    }

    // matches: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#equality-based-requirement
    #[test]
    fn equality_requirements_accept_single_and_double_equals_and_negation() {
        let o = obj(json!({"app": "web", "tier": "front"}));
        assert!(LabelSelector::parse("app=web").unwrap().matches(&o));
        assert!(LabelSelector::parse("app==web").unwrap().matches(&o));
        assert!(!LabelSelector::parse("app!=web").unwrap().matches(&o));
        // `!=` also selects objects without the key at all.
        assert!(LabelSelector::parse("missing!=x").unwrap().matches(&o));
        assert!(
            LabelSelector::parse("app=web,tier=front")
                .unwrap()
                .matches(&o)
        );
        assert!(
            !LabelSelector::parse("app=web,tier=back")
                .unwrap()
                .matches(&o)
        );
    }

    // matches: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#set-based-requirement
    #[test]
    fn set_requirements_select_by_membership_existence_and_absence() {
        let o = obj(json!({"env": "prod"}));
        assert!(
            LabelSelector::parse("env in (prod, qa)")
                .unwrap()
                .matches(&o)
        );
        assert!(
            !LabelSelector::parse("env notin (prod,qa)")
                .unwrap()
                .matches(&o)
        );
        assert!(
            LabelSelector::parse("other notin (prod)")
                .unwrap()
                .matches(&o)
        );
        assert!(!LabelSelector::parse("other in (prod)").unwrap().matches(&o));
        assert!(LabelSelector::parse("env").unwrap().matches(&o));
        assert!(!LabelSelector::parse("!env").unwrap().matches(&o));
        assert!(LabelSelector::parse("!other").unwrap().matches(&o));
        assert!(LabelSelector::parse("").unwrap().matches(&o));
    }

    // matches: k8s.io/apimachinery/pkg/labels/selector.go (parse errors become 400 BadRequest)
    #[test]
    fn malformed_label_selectors_are_rejected_with_the_parser_message() {
        let e = LabelSelector::parse("app in (web").unwrap_err();
        assert_eq!(e.to_string(), "found '', expected: ',' or ')'");
        let e = LabelSelector::parse("bad key=x").unwrap_err();
        assert!(e.to_string().starts_with("found 'key', expected:"), "{e}");
        let e = LabelSelector::parse("app=in valid").unwrap_err();
        assert!(e.to_string().starts_with("found 'valid'"), "{e}");
        let e = LabelSelector::parse("app=-bad").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("unable to parse requirement: values[0]: Invalid value: \"-bad\": a valid label must be"),
            "{e}"
        );
        let e = LabelSelector::parse("bad key=x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "found 'key', expected: in, notin, =, ==, !=, gt, lt"
        );
    }

    // matches: https://kubernetes.io/docs/concepts/overview/working-with-objects/field-selectors/
    #[test]
    fn field_selectors_support_name_and_namespace_with_all_three_operators() {
        let o = obj(json!({}));
        let p = |s| FieldSelector::parse(s, "discovery.k8s.io", "EndpointSlice").unwrap();
        assert!(p("metadata.name=a").matches(&o));
        assert!(p("metadata.name==a").matches(&o));
        assert!(!p("metadata.name!=a").matches(&o));
        assert!(p("metadata.namespace=default,metadata.name!=b").matches(&o));
        assert!(!p("metadata.namespace=kube-system").matches(&o));
    }

    // matches: https://kubernetes.io/docs/concepts/overview/working-with-objects/field-selectors/#supported-fields
    #[test]
    fn unsupported_field_labels_are_rejected() {
        let e =
            FieldSelector::parse("spec.foo=bar", "discovery.k8s.io", "EndpointSlice").unwrap_err();
        assert_eq!(e.to_string(), "field label not supported: spec.foo");
        let ok = FieldSelector::parse("involvedObject.name=x", "", "Event");
        assert!(ok.is_ok());
    }
}
