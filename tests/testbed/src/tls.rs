//! Certificates and TLS for the test bed: a fresh CA per test bed, the server certificate, client
//! certificates shaped like RKE2's admin certificate, and the rustls server configuration.
//!
//! Owns key generation and PEM encoding. Deciding who a certificate belongs to (and whether it was
//! revoked) is left to auth.rs; writing kubeconfig files is left to kubeconfig.rs.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Errors while creating certificates or the TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// rcgen refused to generate a key or certificate.
    #[error("failed to generate the {what}")]
    Generate {
        /// What was being generated ("CA certificate", "client certificate for 'x'", ...).
        what: String,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
    /// rustls refused the generated material.
    #[error("failed to build the TLS server configuration")]
    Rustls(#[source] rustls::Error),
    /// rustls refused the client certificate verifier.
    #[error("failed to build the client certificate verifier")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    /// A PKCS#8 key did not have the shape ring produces for P-256.
    #[error("unexpected PKCS#8 layout for a P-256 key")]
    Pkcs8Layout,
}

/// A certificate and its private key, both PEM encoded.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate, PEM ("CERTIFICATE").
    pub cert_pem: String,
    /// The certificate, DER (what the server sees in the handshake).
    pub cert_der: Vec<u8>,
    /// The private key as RKE2 writes it: SEC1 "EC PRIVATE KEY" PEM.
    pub key_pem: String,
}

/// The test bed's certificate authority (EC P-256), which signs the server and client certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub cert_pem: String,
    cert_der: CertificateDer<'static>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

fn gen_err(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> Error {
    let what = what.into();
    move |source| Error::Generate { what, source }
}

/// A random positive serial number (63 bits, so the DER INTEGER never needs a sign byte).
fn serial() -> SerialNumber {
    let v = (uuid::Uuid::new_v4().as_u128() as u64) >> 1;
    SerialNumber::from(v.max(1))
}

impl Ca {
    /// Generates a fresh CA named like RKE2's client/server CA.
    ///
    /// # Errors
    /// [`Error::Generate`] when rcgen fails.
    pub fn new() -> Result<Ca, Error> {
        let key = KeyPair::generate().map_err(gen_err("CA key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "endpoint-copier-testbed-ca");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(serial());
        let cert = params
            .self_signed(&key)
            .map_err(gen_err("CA certificate"))?;
        let cert_pem = cert.pem();
        let cert_der = cert.der().clone();
        Ok(Ca {
            issuer: Issuer::new(params, key),
            cert_pem,
            cert_der,
        })
    }

    /// Issues the server certificate: IP SAN 127.0.0.1, DNS SANs localhost and kubernetes (as
    /// kube-apiserver's serving certificate has).
    ///
    /// # Errors
    /// [`Error::Generate`] when rcgen fails.
    pub fn issue_server(&self) -> Result<Issued, Error> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "kube-apiserver");
        params.distinguished_name = dn;
        params.subject_alt_names = vec![
            SanType::IpAddress(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
            SanType::DnsName(
                "localhost"
                    .try_into()
                    .map_err(gen_err("server certificate SAN"))?,
            ),
            SanType::DnsName(
                "kubernetes"
                    .try_into()
                    .map_err(gen_err("server certificate SAN"))?,
            ),
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.issue(params, "server certificate")
    }

    /// Issues a serving certificate for exactly `ips` (IP SANs, no DNS names), like the
    /// certificate an apiserver on a node serves at its node addresses: what a health probe that
    /// dials an endpoint address verifies.
    ///
    /// # Errors
    /// [`Error::Generate`] when rcgen fails.
    pub fn issue_server_for(&self, ips: &[std::net::IpAddr]) -> Result<Issued, Error> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "kube-apiserver");
        params.distinguished_name = dn;
        params.subject_alt_names = ips.iter().map(|ip| SanType::IpAddress(*ip)).collect();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.issue(params, "server certificate for endpoint addresses")
    }

    /// Issues a client certificate with CN = `identity` and O = each of `groups`, like RKE2's
    /// `client-admin.crt` (CN system:admin, O system:masters).
    ///
    /// # Errors
    /// [`Error::Generate`] when rcgen fails.
    pub fn issue_client(&self, identity: &str, groups: &[&str]) -> Result<Issued, Error> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        for g in groups {
            dn.push(DnType::OrganizationName, *g);
        }
        dn.push(DnType::CommonName, identity);
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.issue(params, format!("client certificate for '{identity}'"))
    }

    fn issue(
        &self,
        mut params: CertificateParams,
        what: impl Into<String>,
    ) -> Result<Issued, Error> {
        let what = what.into();
        params.serial_number = Some(serial());
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().map_err(gen_err(what.clone()))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(gen_err(what))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem: sec1_pem(&key)?,
        })
    }

    /// Builds the rustls server configuration: the server certificate, ALPN http/1.1, and client
    /// certificates verified against this CA but optional, so bearer tokens work too (as
    /// kube-apiserver with `--client-ca-file` does).
    ///
    /// # Errors
    /// [`Error::Rustls`] / [`Error::Verifier`] when rustls refuses the material.
    pub fn server_config(&self, server: &Issued) -> Result<Arc<rustls::ServerConfig>, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert_der.clone()).map_err(Error::Rustls)?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(Error::Verifier)?;
        let key = key_of_pem(&server.key_pem)?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(Error::Rustls)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![CertificateDer::from(server.cert_der.clone())], key)
            .map_err(Error::Rustls)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The subject of a client certificate: CN and every O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// Common name: the user name.
    pub common_name: String,
    /// Organizations: the groups.
    pub organizations: Vec<String>,
}

/// Reads CN and O from a DER certificate (already verified by rustls). None when it cannot be parsed.
pub fn subject_of(der: &[u8]) -> Option<Subject> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let common_name = subject
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())?
        .to_string();
    let organizations = subject
        .iter_organization()
        .filter_map(|a| a.as_str().ok().map(str::to_string))
        .collect();
    Some(Subject {
        common_name,
        organizations,
    })
}

/// Encodes a P-256 key as SEC1 "EC PRIVATE KEY" PEM with the curve parameters, byte for byte what
/// Go's `x509.MarshalECPrivateKey` writes into RKE2's kubeconfig.
fn sec1_pem(key: &KeyPair) -> Result<String, Error> {
    // ring's PKCS#8 for P-256 wraps ECPrivateKey { version 1, privateKey OCTET STRING(32), [1] pub }.
    // Find the 32-byte private scalar: the OCTET STRING right after INTEGER 1.
    let der = key.serialize_der();
    let marker = [0x02, 0x01, 0x01, 0x04, 0x20];
    let at = der
        .windows(marker.len())
        .position(|w| w == marker)
        .ok_or(Error::Pkcs8Layout)?;
    let scalar = der
        .get(at + marker.len()..at + marker.len() + 32)
        .ok_or(Error::Pkcs8Layout)?;
    let public = key.public_key_raw();
    if public.len() != 65 {
        return Err(Error::Pkcs8Layout);
    }
    let mut out = vec![0x30, 0x77, 0x02, 0x01, 0x01, 0x04, 0x20];
    out.extend_from_slice(scalar);
    // [0] namedCurve prime256v1 (1.2.840.10045.3.1.7)
    out.extend_from_slice(&[
        0xa0, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
    ]);
    // [1] publicKey BIT STRING (no unused bits)
    out.extend_from_slice(&[0xa1, 0x44, 0x03, 0x42, 0x00]);
    out.extend_from_slice(public);
    Ok(pem_encode("EC PRIVATE KEY", &out))
}

/// Parses a key PEM written by [`sec1_pem`] back for rustls (which accepts SEC1 directly).
fn key_of_pem(pem: &str) -> Result<PrivateKeyDer<'static>, Error> {
    use rustls::pki_types::pem::PemObject;
    match PrivateKeyDer::from_pem_slice(pem.as_bytes()) {
        Ok(k) => Ok(k),
        Err(_) => Err(Error::Pkcs8Layout),
    }
}

/// Minimal PEM encoding (64-column base64 lines).
fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        s.push_str(&String::from_utf8_lossy(chunk));
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

/// Standard base64 with padding (RFC 4648), used for PEM and kubeconfig `*-data` fields.
pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn client_key_is_sec1_pem_that_rustls_accepts() {
        use rustls::pki_types::pem::PemObject;
        let ca = Ca::new().unwrap();
        let issued = ca
            .issue_client("system:admin", &["system:masters"])
            .unwrap();
        assert!(
            issued
                .key_pem
                .starts_with("-----BEGIN EC PRIVATE KEY-----\n")
        );
        let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap();
        assert!(matches!(key, PrivateKeyDer::Sec1(_)));
        rustls::crypto::ring::sign::any_supported_type(&key).unwrap();
        let subject = subject_of(&issued.cert_der).unwrap();
        assert_eq!(subject.common_name, "system:admin");
        assert_eq!(subject.organizations, vec!["system:masters".to_string()]);
    }
}
