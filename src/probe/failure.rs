//! Why a probe did not pass, in words an operator can act on, and whether that is the
//! endpoint's failure ([`Class::Fail`]) or only says this host cannot judge it
//! ([`Class::Abstain`]): the classification `check.rs`'s dial, handshake and request share.

use super::Class;

/// Why a probe did not pass, in words, and whether that is the endpoint's failure.
#[derive(Debug)]
pub(super) struct Failure {
    /// [`Class::Fail`] or [`Class::Abstain`].
    pub(super) class: Class,
    /// What happened.
    pub(super) detail: String,
}

impl Failure {
    /// The endpoint failed.
    pub(super) fn fail(detail: String) -> Failure {
        Failure {
            class: Class::Fail,
            detail,
        }
    }

    /// This host cannot judge the endpoint.
    pub(super) fn abstain(detail: String) -> Failure {
        Failure {
            class: Class::Abstain,
            detail,
        }
    }

    /// An I/O error; a certificate rustls refused inside it is an abstention.
    pub(super) fn io(e: &std::io::Error) -> Failure {
        match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(tls) => Failure::tls(tls),
            None => Failure::fail(describe_io(e)),
        }
    }

    /// A rustls error: a certificate that does not verify is a matter of configuration (a SAN
    /// missing, another CA, expired), not of health; any other TLS error is the endpoint's.
    pub(super) fn tls(e: &rustls::Error) -> Failure {
        match e {
            rustls::Error::InvalidCertificate(cert) => {
                Failure::abstain(format!("TLS: {}", describe_certificate(cert)))
            }
            other => Failure::fail(format!("TLS: {other}")),
        }
    }

    pub(super) fn hyper(e: &hyper::Error) -> Failure {
        // The interesting part is usually an I/O or TLS error a few sources down.
        let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
        while let Some(s) = source {
            if let Some(tls) = s.downcast_ref::<rustls::Error>() {
                return Failure::tls(tls);
            }
            if let Some(io) = s.downcast_ref::<std::io::Error>() {
                return Failure::io(io);
            }
            source = s.source();
        }
        if e.is_incomplete_message() {
            return Failure::fail("connection closed before the answer".to_owned());
        }
        Failure::fail(format!("HTTP: {e}"))
    }
}

/// A certificate rustls refused, in words an operator can act on: for a name mismatch, the
/// address (or name) expected and the subject alternative names the certificate has.
pub(crate) fn describe_certificate(e: &rustls::CertificateError) -> String {
    use rustls::CertificateError as C;
    match e {
        C::NotValidForNameContext {
            expected,
            presented,
        } => {
            let names: Vec<String> = presented.iter().map(|n| san(n)).collect();
            let has = if names.is_empty() {
                "it has no subject alternative names".to_owned()
            } else {
                format!("its subject alternative names: {}", names.join(", "))
            };
            format!(
                "the certificate does not name {} ({has})",
                expected.to_str()
            )
        }
        C::NotValidForName => "the certificate does not name the address dialled".to_owned(),
        C::UnknownIssuer | C::BadSignature => format!(
            "the certificate is not signed by the kubeconfig's CA (invalid peer certificate: {e})"
        ),
        C::Expired | C::ExpiredContext { .. } => {
            format!("the certificate has expired (invalid peer certificate: {e})")
        }
        C::NotValidYet | C::NotValidYetContext { .. } => {
            format!("the certificate is not valid yet (invalid peer certificate: {e})")
        }
        other => format!("invalid peer certificate: {other}"),
    }
}

/// One subject alternative name as webpki lists it (`IpAddress(198.51.100.1)`,
/// `DnsName("kubernetes")`), as an operator writes it (`198.51.100.1`, `DNS:kubernetes`).
fn san(presented: &str) -> String {
    if let Some(ip) = presented
        .strip_prefix("IpAddress(")
        .and_then(|r| r.strip_suffix(')'))
    {
        return ip.to_owned();
    }
    if let Some(dns) = presented
        .strip_prefix("DnsName(\"")
        .and_then(|r| r.strip_suffix("\")"))
    {
        return format!("DNS:{dns}");
    }
    presented.to_owned()
}

/// An I/O error in words; a TLS error inside it is named as such.
pub(super) fn describe_io(e: &std::io::Error) -> String {
    if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return match tls {
            rustls::Error::InvalidCertificate(cert) => {
                format!("TLS: {}", describe_certificate(cert))
            }
            other => format!("TLS: {other}"),
        };
    }
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "connection refused".to_owned(),
        K::ConnectionReset => "connection reset".to_owned(),
        K::ConnectionAborted => "connection aborted".to_owned(),
        K::TimedOut => "timed out".to_owned(),
        K::HostUnreachable => "host unreachable".to_owned(),
        K::NetworkUnreachable => "network unreachable".to_owned(),
        K::UnexpectedEof => "connection closed".to_owned(),
        _ => e.to_string(),
    }
}
