//! Reading a pair's probe from its config value or its `endpoint-copier/probe` annotation: one
//! vocabulary for both — `false`, `{ https = "/readyz" }`, `{ http = "/healthz" }`,
//! `{ tcp = 6443 }`, with `port = N` to override the source port of `https` and `http`.
//!
//! Pure: the config passes the value it deserialised (as JSON, so this module needs no figment),
//! the annotation passes its string; both get one error sentence naming what is wrong.
//!
//! An annotation is narrower than the config ([`check_annotated`]): a Service annotation belongs
//! to whoever may edit that namespace, so its probe may ask only for what that person could do
//! without any rights — a health path ([`ANNOTATION_PATHS`]) with no query, on the source
//! endpoint's own port or a port the target Service sends traffic to — and it never carries the
//! node's credentials ([`super::Auth::Anonymous`], decided by the engine).

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::{Kind, Spec};
use crate::names::ServiceRef;

/// The source whose pairs probe `{ https = "/readyz" }` unless they say otherwise: its endpoints
/// are the apiservers.
pub const APISERVER_SOURCE: (&str, &str) = ("default", "kubernetes");

/// What a pair probes when its config or annotation says nothing: the apiservers' `/readyz` for
/// a pair whose source is `default/kubernetes`, nothing for any other.
pub fn default_for(source: &ServiceRef) -> Option<Spec> {
    (source.namespace == APISERVER_SOURCE.0 && source.name == APISERVER_SOURCE.1).then(Spec::readyz)
}

/// What a pair reading `sources` probes when its config says nothing: the apiservers' `/readyz`
/// when one of them is `default/kubernetes` of this cluster, nothing otherwise.
pub fn default_for_sources(sources: &[crate::source::Source]) -> Option<Spec> {
    sources
        .iter()
        .filter_map(crate::source::Source::local_service)
        .find_map(default_for)
}

/// The paths a probe from an annotation may GET: the health endpoints an apiserver serves to
/// anyone (`system:public-info-viewer`), which most servers have too. Nothing that lists,
/// proxies or reads objects.
pub const ANNOTATION_PATHS: [&str; 3] = ["/readyz", "/livez", "/healthz"];

/// The words every error ends with.
const VOCABULARY: &str = "use { https = \"/readyz\" }, { http = \"/healthz\" }, { tcp = PORT } (https and http take \
     port = N to override the source port), or false";

/// Why a probe value is refused: a sentence naming the offending key or value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(String);

fn refuse(what: impl Into<String>) -> SpecError {
    SpecError(format!("{}; {VOCABULARY}", what.into()))
}

/// Reads a probe value: `false` → `Ok(None)` (this pair does not probe), a table → `Ok(Some)`.
///
/// # Errors
/// [`SpecError`] for `true`, a table naming no kind or two, an unknown key, a path that is not
/// absolute, a port outside 1–65535, or `port` beside `tcp`.
pub fn from_value(value: &serde_json::Value) -> Result<Option<Spec>, SpecError> {
    use serde_json::Value;
    let table = match value {
        Value::Bool(false) => return Ok(None),
        Value::Bool(true) => return Err(refuse("'true' does not say what to probe")),
        Value::Object(table) => table,
        other => return Err(refuse(format!("'{other}' is not a probe"))),
    };
    if let Some(key) = table
        .keys()
        .find(|k| !["https", "http", "tcp", "port"].contains(&k.as_str()))
    {
        return Err(refuse(format!("unknown key '{key}'")));
    }
    let port = |key: &str| -> Result<Option<u16>, SpecError> {
        match table.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n != 0)
                .map(Some)
                .ok_or_else(|| refuse(format!("{key} = {v} is not a port (1-65535)"))),
        }
    };
    let path = |key: &str| -> Result<Option<String>, SpecError> {
        match table.get(key) {
            None => Ok(None),
            Some(Value::String(p))
                if p.starts_with('/')
                    && !p.chars().any(|c| c.is_whitespace() || c.is_control()) =>
            {
                Ok(Some(p.clone()))
            }
            Some(v) => Err(refuse(format!(
                "{key} = {v} is not an absolute path such as \"/readyz\""
            ))),
        }
    };
    let kinds: Vec<&str> = ["https", "http", "tcp"]
        .into_iter()
        .filter(|k| table.contains_key(*k))
        .collect();
    match kinds.as_slice() {
        ["https"] => Ok(Some(Spec {
            kind: Kind::Https {
                path: path("https")?.unwrap_or_default(),
            },
            port: port("port")?,
        })),
        ["http"] => Ok(Some(Spec {
            kind: Kind::Http {
                path: path("http")?.unwrap_or_default(),
            },
            port: port("port")?,
        })),
        ["tcp"] => {
            if table.contains_key("port") {
                return Err(refuse("tcp names its port already; drop 'port'"));
            }
            Ok(Some(Spec {
                kind: Kind::Tcp,
                port: port("tcp")?,
            }))
        }
        [] => Err(refuse("the probe names no kind")),
        many => Err(refuse(format!(
            "the probe names {} kinds ({}); name one",
            many.len(),
            many.join(", ")
        ))),
    }
}

/// Reads the `endpoint-copier/probe` annotation: the config's vocabulary as a string
/// (`{ https = "/readyz" }`, `{ tcp = 5432 }`, `false`).
///
/// # Errors
/// [`SpecError`] when the string is not TOML for such a value, or [`from_value`] refuses it.
pub fn from_annotation(text: &str) -> Result<Option<Spec>, SpecError> {
    let parsed: toml::Table = toml::from_str(&format!("probe = {text}"))
        .map_err(|_| refuse(format!("'{text}' is not a TOML value")))?;
    let value = parsed
        .get("probe")
        .and_then(|v| serde_json::to_value(v).ok())
        .ok_or_else(|| refuse(format!("'{text}' is not a probe")))?;
    from_value(&value)
}

/// Checks that `spec`, read from the `endpoint-copier/probe` annotation of a target Service
/// whose traffic goes to `target_ports` (its numeric `targetPort`s, or `port` where `targetPort`
/// is unset: what its EndpointSlices carry), asks for nothing the annotating tenant could not do
/// itself: a path in [`ANNOTATION_PATHS`] without a query, and no port but the source
/// endpoint's own (no `port`) or one of `target_ports`.
///
/// # Errors
/// [`SpecError`] naming the path, query or port that is refused and what is allowed.
pub fn check_annotated(spec: &Spec, target_ports: &BTreeSet<u16>) -> Result<(), SpecError> {
    const RULE: &str = "a probe from an annotation may only GET /readyz, /livez or /healthz (no query), on the source endpoint's port or a port the target Service sends traffic to, and never carries the node's credentials (name the probe in the host's config for more)";
    if let Kind::Https { path } | Kind::Http { path } = &spec.kind {
        let (bare, query) = match path.split_once('?') {
            Some((bare, query)) => (bare, Some(query)),
            None => (path.as_str(), None),
        };
        if !ANNOTATION_PATHS.contains(&bare) {
            return Err(SpecError(format!(
                "path \"{path}\" is not a health endpoint; {RULE}"
            )));
        }
        if let Some(query) = query {
            return Err(SpecError(format!(
                "query \"?{query}\" is not allowed; {RULE}"
            )));
        }
    }
    if let Some(port) = spec.port
        && !target_ports.contains(&port)
    {
        let allowed = if target_ports.is_empty() {
            "none".to_owned()
        } else {
            target_ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(SpecError(format!(
            "port {port} is not a port the target Service sends traffic to (those are: {allowed}); {RULE}"
        )));
    }
    Ok(())
}

/// The config form of `spec`, for `check` and the defaults file: `{ https = "/readyz" }`.
pub fn to_toml(spec: Option<&Spec>) -> String {
    let Some(spec) = spec else {
        return "false".to_owned();
    };
    let port = spec
        .port
        .map(|p| format!(", port = {p}"))
        .unwrap_or_default();
    match &spec.kind {
        Kind::Https { path } => format!("{{ https = \"{path}\"{port} }}"),
        Kind::Http { path } => format!("{{ http = \"{path}\"{port} }}"),
        Kind::Tcp => format!("{{ tcp = {} }}", spec.port.unwrap_or_default()),
    }
}

/// The [`super::Target`] that probes endpoint `address` for `spec`, given the source endpoint's
/// port (`None` when the source slice lists none); `None` when no port is known.
pub fn target(spec: &Spec, address: IpAddr, source_port: Option<u16>) -> Option<super::Target> {
    Some(super::Target {
        address,
        port: spec.port.or(source_port)?,
        kind: spec.kind.clone(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_kind_reads_and_prints_back() {
        for text in [
            "{ https = \"/readyz\" }",
            "{ https = \"/readyz\", port = 6443 }",
            "{ http = \"/healthz?verbose\" }",
            "{ tcp = 5432 }",
            "false",
        ] {
            let spec = from_annotation(text).unwrap();
            assert_eq!(to_toml(spec.as_ref()), text);
        }
    }

    #[test]
    fn only_the_apiserver_source_probes_by_default() {
        assert_eq!(
            default_for(&"default/kubernetes".parse().unwrap()),
            Some(Spec::readyz())
        );
        assert_eq!(default_for(&"default/other".parse().unwrap()), None);
        assert_eq!(default_for(&"apps/kubernetes".parse().unwrap()), None);
    }

    #[test]
    fn bad_values_are_refused_with_the_culprit_named() {
        for (value, says) in [
            (json!(true), "'true' does not say what to probe"),
            (json!({}), "names no kind"),
            (
                json!({"https": "/readyz", "tcp": 1}),
                "names 2 kinds (https, tcp)",
            ),
            (
                json!({"https": "readyz"}),
                "https = \"readyz\" is not an absolute path",
            ),
            (json!({"http": "/a b"}), "is not an absolute path"),
            (json!({"tcp": 0}), "tcp = 0 is not a port"),
            (json!({"tcp": 70000}), "tcp = 70000 is not a port"),
            (json!({"tcp": 1, "port": 2}), "tcp names its port already"),
            (
                json!({"https": "/readyz", "timeout": 1}),
                "unknown key 'timeout'",
            ),
            (json!("https"), "'\"https\"' is not a probe"),
        ] {
            let err = from_value(&value).unwrap_err().to_string();
            assert!(err.contains(says), "{value}: {err}");
            assert!(err.contains("or false"), "{value}: {err}");
        }
        assert!(
            from_annotation("https:/readyz")
                .unwrap_err()
                .to_string()
                .contains("is not a TOML value")
        );
    }

    #[test]
    fn an_annotation_may_probe_health_paths_on_the_targets_ports_only() {
        let ports = BTreeSet::from([6443, 9345]);
        let check = |text: &str| {
            let spec = from_annotation(text).unwrap().unwrap();
            check_annotated(&spec, &ports).map_err(|e| e.to_string())
        };
        for ok in [
            "{ https = \"/readyz\" }",
            "{ https = \"/livez\", port = 9345 }",
            "{ http = \"/healthz\" }",
            "{ tcp = 6443 }",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        for (bad, says) in [
            (
                "{ https = \"/api/v1/pods\" }",
                "path \"/api/v1/pods\" is not a health endpoint",
            ),
            (
                "{ https = \"/api/v1/nodes/n1/proxy/healthz\" }",
                "is not a health endpoint",
            ),
            ("{ https = \"/readyz/\" }", "is not a health endpoint"),
            (
                "{ https = \"/readyz?verbose\" }",
                "query \"?verbose\" is not allowed",
            ),
            (
                "{ http = \"/healthz?x=1\" }",
                "query \"?x=1\" is not allowed",
            ),
            (
                "{ https = \"/readyz\", port = 10250 }",
                "port 10250 is not a port the target Service sends traffic to (those are: 6443, 9345)",
            ),
            ("{ tcp = 2379 }", "port 2379 is not a port"),
        ] {
            let err = check(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
            assert!(
                err.contains("never carries the node's credentials"),
                "{err}"
            );
        }
    }

    #[test]
    fn the_port_comes_from_the_spec_then_the_source() {
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        let https = Spec::readyz();
        assert_eq!(target(&https, a, Some(6443)).unwrap().port, 6443);
        assert_eq!(target(&https, a, None), None);
        let tcp = from_annotation("{ tcp = 5432 }").unwrap().unwrap();
        assert_eq!(target(&tcp, a, Some(6443)).unwrap().port, 5432);
    }
}
