//! Validation of `[[pair]] sources`, one entry at a time: which keys go together, the Service
//! references, remote kubeconfig paths (absolute; readable when they exist, waited for when
//! not) and static addresses (IP addresses the EndpointSlice API accepts, without ports). Every
//! error names the entry's key and, through `provenance`, where it was written.

use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};

use super::Error;
use super::raw::RawSource;
use super::validate::Checker;
use crate::source::{RemoteSource, Source, StaticSource};

/// `pair[idx].sources`: at least one; each a local Service, a remote Service (with its
/// kubeconfig) or addresses; no Service listed twice. Every `addresses` entry of the pair is
/// merged into one static source (the target gets one slice per family from it).
pub(super) fn sources(
    c: &Checker<'_>,
    idx: &str,
    list: &[RawSource],
) -> Result<Vec<Source>, Error> {
    if list.is_empty() {
        return Err(c.bad(
            &["pair", idx, "sources"],
            "a pair needs at least one source",
        ));
    }
    let mut out: Vec<Source> = Vec::with_capacity(list.len());
    let mut addresses: Vec<IpAddr> = Vec::new();
    for (j, raw) in list.iter().enumerate() {
        let j = j.to_string();
        let at = |key: &'static str| -> [&str; 5] { ["pair", idx, "sources", &j, key] };
        let whole = ["pair", idx, "sources", j.as_str()];
        let source = match (&raw.service, &raw.kubeconfig, &raw.addresses) {
            (Some(_), _, Some(_)) => {
                return Err(c.bad(
                    &whole,
                    "a source is either a Service ('service') or addresses ('addresses'), not both",
                ));
            }
            (None, Some(_), _) => {
                return Err(c.bad(
                    &at("kubeconfig"),
                    "'kubeconfig' goes with 'service' (the Service to read in that cluster)",
                ));
            }
            (None, None, None) => {
                return Err(c.bad(
                    &whole,
                    "a source needs 'service' (\"namespace/name\") or 'addresses' ([\"IP\", ...])",
                ));
            }
            (Some(service), None, None) => Source::Service(c.service_ref(&at("service"), service)?),
            (Some(service), Some(path), None) => Source::Remote(RemoteSource {
                service: c.service_ref(&at("service"), service)?,
                kubeconfig: remote_kubeconfig(c, &at("kubeconfig"), path)?,
            }),
            (None, None, Some(list)) => {
                if list.is_empty() {
                    return Err(c.bad(&at("addresses"), "lists no address"));
                }
                for (k, text) in list.iter().enumerate() {
                    let k = k.to_string();
                    let address = static_address(text).map_err(|why| {
                        c.bad(&["pair", idx, "sources", &j, "addresses", &k], why)
                    })?;
                    addresses.push(address);
                }
                continue;
            }
        };
        if out.contains(&source) {
            return Err(c.bad(&whole, format!("{} is listed twice", source)));
        }
        out.push(source);
    }
    if !addresses.is_empty() {
        out.push(Source::Static(StaticSource::new(addresses)));
    }
    Ok(out)
}

/// A static source's address: an IP address the EndpointSlice API accepts.
fn static_address(text: &str) -> Result<IpAddr, String> {
    if let Ok(address) = text.parse::<IpAddr>() {
        return match crate::family::unusable_endpoint_address(address) {
            Some(why) => Err(format!(
                "'{text}' is {why}, which the EndpointSlice API refuses"
            )),
            None => Ok(address),
        };
    }
    let unbracketed = text.trim_start_matches('[');
    let port_split = text
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|s| s.ip().to_string())
        .or_else(|| {
            // `198.51.100.10:https` or `[2001:db8::1]:https`: a named port.
            let (host, _) = unbracketed.rsplit_once(':')?;
            let host = host.trim_end_matches(']');
            host.parse::<IpAddr>().ok().map(|a| a.to_string())
        });
    if let Some(host) = port_split {
        return Err(format!(
            "'{text}' names a port; write the address alone ('{host}'): the ports come from the target Service (a named targetPort needs a Service source that defines it)"
        ));
    }
    if text.chars().any(|ch| ch.is_ascii_alphabetic()) && !text.contains(':') {
        return Err(format!(
            "'{text}' is a host name; static sources take IP addresses (an EndpointSlice of type IPv4 or IPv6 holds addresses, never names)"
        ));
    }
    Err(format!("'{text}' is not an IPv4 or IPv6 address"))
}

/// A remote source's `kubeconfig`: an absolute path that, when it exists, can be read (a missing
/// one is waited for at run time, like the node kubeconfig on first boot), normalized.
///
/// The path is the source's identity: its slices are named and labelled from a hash of it, and
/// each distinct path gets one client. So `/etc//r.yaml` and `/etc/./r.yaml` are written
/// `/etc/r.yaml` (the same file by POSIX rules): two hosts that spell one file two ways must not
/// rename the slices on a leader change. A `..` is refused rather than resolved: through a
/// symbolic link, `a/link/../b` need not be `a/b`.
fn remote_kubeconfig(c: &Checker<'_>, key: &[&str], path: &str) -> Result<PathBuf, Error> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(c.bad(key, format!("'{path}' is not an absolute path")));
    }
    if p.components().any(|part| part == Component::ParentDir) {
        return Err(c.bad(
            key,
            format!("'{path}' contains '..'; write the path without it"),
        ));
    }
    let normal = normalized(p);
    match std::fs::File::open(&normal).and_then(|mut f| {
        let mut buf = [0u8; 1];
        std::io::Read::read(&mut f, &mut buf)
    }) {
        Ok(_) => Ok(normal),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(normal),
        Err(e) => Err(c.bad(key, format!("'{path}' cannot be read: {e}"))),
    }
}

/// `path` without repeated separators, `.` components or a trailing separator: the same file,
/// spelled one way (what [`Path::components`] yields, put back together).
fn normalized(path: &Path) -> PathBuf {
    path.components().collect()
}
