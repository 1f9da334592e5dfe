//! Validation of `[probe]` and `[nodes]`: the probes' timing, thresholds and caps, and the Node
//! selector (a label selector checked here, so that a typo exits 78 instead of failing the watch
//! at every retry). Like every section, each error names the key and, through `provenance`, where
//! it was written; the other sections are `validate.rs`'s.

use std::time::Duration;

use super::raw::{RawNodes, RawProbe};
use super::validate::{Checker, pick};
use super::{Error, NodesSettings, ProbeSettings};
use crate::names;

/// `[probe]`: a period of 100 ms to a minute, a timeout shorter than the period (probes of one
/// target never overlap, so a longer timeout would silently stretch the period), thresholds of
/// 2–100 failures (one failed probe never evicts) and 1–100 successes, flap damping of 0–600 s,
/// and 1–10,000 targets per host.
pub(super) fn probe(
    c: &Checker<'_>,
    rp: RawProbe,
    d: ProbeSettings,
) -> Result<ProbeSettings, Error> {
    let ms = |v: Option<u64>, d: Duration| v.map_or(d, Duration::from_millis);
    let count = |key: &str, v: Option<u64>, d: u32, min: u64| -> Result<u32, Error> {
        match v {
            None => Ok(d),
            Some(n) if (min..=100).contains(&n) => Ok(u32::try_from(n).unwrap_or(d)),
            Some(n) => Err(c.bad(&["probe", key], format!("{n} is outside {min}-100"))),
        }
    };
    let timing = crate::probe::Timing {
        period: ms(rp.period_ms, d.timing.period),
        timeout: ms(rp.timeout_ms, d.timing.timeout),
        failure_threshold: count(
            "failure_threshold",
            rp.failure_threshold,
            d.timing.failure_threshold,
            2,
        )
        .map_err(|e| match e {
            Error::InvalidValue {
                origin,
                key,
                reason,
            } => Error::InvalidValue {
                origin,
                key,
                reason: format!("{reason}: one failed probe must never evict an endpoint"),
            },
            other => other,
        })?,
        success_threshold: count(
            "success_threshold",
            rp.success_threshold,
            d.timing.success_threshold,
            1,
        )?,
        min_up: ms(rp.min_up_ms, d.timing.min_up),
    };
    if timing.min_up > Duration::from_secs(600) {
        return Err(c.bad(
            &["probe", "min_up_ms"],
            "must be 0-600000 (0: no flap damping)",
        ));
    }
    let max_targets = match rp.max_targets {
        None => d.max_targets,
        Some(n @ 1..=10_000) => usize::try_from(n).unwrap_or(d.max_targets),
        Some(n) => {
            return Err(c.bad(&["probe", "max_targets"], format!("{n} is outside 1-10000")));
        }
    };
    if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&timing.period) {
        return Err(c.bad(&["probe", "period_ms"], "must be 100-60000"));
    }
    if timing.timeout < Duration::from_millis(10) {
        return Err(c.bad(&["probe", "timeout_ms"], "must be at least 10"));
    }
    if timing.timeout >= timing.period {
        return Err(c.bad(
            &[
                "probe",
                pick(rp.timeout_ms.is_some(), "timeout_ms", "period_ms"),
            ],
            format!(
                "timeout_ms ({}) must be less than period_ms ({}): probes of one endpoint never overlap",
                timing.timeout.as_millis(),
                timing.period.as_millis()
            ),
        ));
    }
    let tls_server_name = match rp.tls_server_name {
        None => d.tls_server_name,
        Some(name) => {
            let valid = name.parse::<std::net::IpAddr>().is_ok()
                || names::is_dns1123_subdomain(&name.to_ascii_lowercase());
            if !valid {
                return Err(c.bad(
                    &["probe", "tls_server_name"],
                    format!("'{name}' is neither a DNS name nor an IP address"),
                ));
            }
            Some(name)
        }
    };
    Ok(ProbeSettings {
        timing,
        max_targets,
        tls_server_name,
    })
}

/// `[nodes] selector`: `""` selects every Node; otherwise comma-separated requirements, each
/// `key`, `!key`, `key=value`, `key==value`, `key!=value`, `key in (…)` or `key notin (…)`,
/// so that a typo exits 78 here instead of failing the watch at every retry.
pub(super) fn nodes(
    c: &Checker<'_>,
    rn: RawNodes,
    d: NodesSettings,
) -> Result<NodesSettings, Error> {
    let Some(selector) = rn.selector else {
        return Ok(d);
    };
    let selector = selector.trim().to_owned();
    if selector.is_empty() {
        return Ok(NodesSettings { selector: None });
    }
    if let Some(bad) = selector_problem(&selector) {
        return Err(c.bad(
            &["nodes", "selector"],
            format!("'{selector}' is not a label selector: {bad} (\"\" selects every Node)"),
        ));
    }
    Ok(NodesSettings {
        selector: Some(selector),
    })
}

/// What is wrong with a label selector, if anything (a light check of its shape: the API
/// server has the last word).
fn selector_problem(selector: &str) -> Option<String> {
    let key_ok = |k: &str| {
        let (prefix, name) = k.rsplit_once('/').map_or((None, k), |(p, n)| (Some(p), n));
        let name_ok = !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'))
            && name.starts_with(|ch: char| ch.is_ascii_alphanumeric())
            && name.ends_with(|ch: char| ch.is_ascii_alphanumeric());
        name_ok && prefix.is_none_or(names::is_dns1123_subdomain)
    };
    // Split on commas outside parentheses (a set's values are comma-separated too).
    let mut depth = 0usize;
    let mut parts = vec![String::new()];
    for ch in selector.chars() {
        match ch {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(String::new());
                continue;
            }
            _ => {}
        }
        if let Some(last) = parts.last_mut() {
            last.push(ch);
        }
    }
    for part in parts.iter().map(|p| p.trim()) {
        let key = if let Some(k) = part.strip_prefix('!') {
            k.trim()
        } else if let Some((k, _)) = part
            .split_once(" notin ")
            .or_else(|| part.split_once(" in "))
        {
            k.trim()
        } else if let Some((k, _)) = part
            .split_once("!=")
            .or_else(|| part.split_once("=="))
            .or_else(|| part.split_once('='))
        {
            k.trim()
        } else {
            part
        };
        if !key_ok(key) {
            return Some(format!("'{part}' does not start with a valid label key"));
        }
    }
    None
}
