//! Helpers shared by the test bed's own integration tests: kube clients from the test bed's
//! kubeconfig files, fixture objects (documentation-range addresses only), and a raw HTTP/1.1 client
//! over rustls for what kube-rs hides (framing, headers, missing credentials).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::Path;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use endpoint_copier_testbed::TestBed;

/// A kube client from a kubeconfig file the test bed wrote, loaded as the daemon loads rke2.yaml.
pub async fn client(kubeconfig: &Path) -> kube::Client {
    endpoint_copier_testbed::cluster::client(kubeconfig)
        .await
        .unwrap()
}

/// A selectorless Service like EIB's kubernetes-vip.
pub fn vip_service(name: &str) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "labels": {"serviceType": "kubernetes-vip"}},
        "spec": {"type": "ClusterIP", "ports": [{"name": "k8s-api", "port": 6443, "protocol": "TCP", "targetPort": 6443}]},
    }))
    .unwrap()
}

/// An EndpointSlice for `service` with one ready endpoint per address (IPv4).
pub fn slice(name: &str, service: &str, addresses: &[&str]) -> EndpointSlice {
    let endpoints: Vec<_> = addresses
        .iter()
        .map(|a| json!({"addresses": [a], "conditions": {"ready": true}}))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default", "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
    }))
    .unwrap()
}

/// A raw HTTP response.
#[derive(Debug)]
pub struct Raw {
    /// Status code.
    pub code: u16,
    /// Header lines, lowercased names.
    pub headers: Vec<(String, String)>,
    /// The raw body bytes as sent on the wire (chunk framing included when chunked).
    pub body: Vec<u8>,
}

impl Raw {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body with chunked framing removed.
    pub fn decoded(&self) -> Vec<u8> {
        if self.header("transfer-encoding") != Some("chunked") {
            return self.body.clone();
        }
        let mut out = Vec::new();
        let mut rest = &self.body[..];
        while let Some(nl) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..nl]).unwrap().trim(), 16)
                .unwrap();
            rest = &rest[nl + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        out
    }

    /// The decoded body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.decoded()).unwrap()
    }
}

/// Sends one HTTP/1.1 request over TLS (trusting the test bed's CA, no client certificate) with
/// `Connection: close`, and reads the whole response.
pub async fn raw(
    bed: &TestBed,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Raw {
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(bed.ca_pem().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", bed.port()))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\nAccept: application/json\r\n",
        bed.port()
    );
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    // A clean close_notify or a plain EOF both end the response.
    let _ = tls.read_to_end(&mut buf).await;
    parse(&buf)
}

fn parse(buf: &[u8]) -> Raw {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = std::str::from_utf8(&buf[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap();
    let code = status.split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Raw {
        code,
        headers,
        body: buf[end + 4..].to_vec(),
    }
}

/// The bearer token inside a kubeconfig written by `kubeconfig_with_token`.
pub fn token_of(kubeconfig: &Path) -> String {
    let v: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(kubeconfig).unwrap()).unwrap();
    v["users"][0]["user"]["token"].as_str().unwrap().to_string()
}
