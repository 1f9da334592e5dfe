//! Authentication and authorization as RKE2's kube-apiserver does them: client certificates (EC,
//! CN/O), bearer tokens, 401 without credentials, revocation, certificate rotation in place, 403
//! with RBAC's message, and SelfSubjectAccessReview.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

use endpoint_copier_testbed::{TestBed, Verb};

use common::{client, raw, token_of};

fn api_code(e: kube::Error) -> (u16, String, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason, s.message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn admin_kubeconfig_is_shaped_like_rke2_yaml() {
    // matches: RKE2's /etc/rancher/rke2/rke2.yaml (https://docs.rke2.io/cluster_access): cluster,
    // context and user named "default", embedded CA and EC client certificate/key, mode 0600
    use std::os::unix::fs::PermissionsExt;
    let bed = TestBed::start().await;
    let text = std::fs::read_to_string(bed.kubeconfig()).unwrap();
    let v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(v["current-context"], "default");
    assert_eq!(v["clusters"][0]["name"], "default");
    assert_eq!(v["clusters"][0]["cluster"]["server"], bed.url().as_str());
    assert!(v["clusters"][0]["cluster"]["certificate-authority-data"].is_string());
    assert_eq!(v["users"][0]["name"], "default");
    let key = v["users"][0]["user"]["client-key-data"].as_str().unwrap();
    let key = String::from_utf8(decode_b64(key)).unwrap();
    assert!(key.starts_with("-----BEGIN EC PRIVATE KEY-----"), "{key}");
    let mode = std::fs::metadata(bed.kubeconfig())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    // The certificate's subject is what the server authenticates.
    let c = client(bed.kubeconfig()).await;
    Api::<Service>::namespaced(c, "default")
        .get("kubernetes")
        .await
        .unwrap();
    assert_eq!(bed.requests().last().unwrap().identity, "system:admin");
}

fn decode_b64(s: &str) -> Vec<u8> {
    const T: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes().filter(|c| *c != b'=') {
        bits = (bits << 6) | T.find(c as char).unwrap() as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    out
}

#[tokio::test]
async fn request_without_credentials_gets_401_unauthorized_status() {
    // matches: https://kubernetes.io/docs/reference/access-authn-authz/authentication/#anonymous-requests
    // (with anonymous auth off, an unauthenticated request is answered 401 with a Status)
    let bed = TestBed::start().await;
    let r = raw(
        &bed,
        "GET",
        "/api/v1/namespaces/default/services",
        None,
        None,
    )
    .await;
    assert_eq!(r.code, 401);
    let s = r.json();
    assert_eq!(s["kind"], "Status");
    assert_eq!(s["reason"], "Unauthorized");
    assert_eq!(s["code"], 401);
    // And through kube, with a kubeconfig that has no user credentials.
    let c = client(&bed.kubeconfig_without_credentials()).await;
    let e = Api::<Service>::namespaced(c, "default")
        .get("kubernetes")
        .await
        .unwrap_err();
    assert_eq!(api_code(e).0, 401);
    assert!(
        bed.requests()
            .iter()
            .all(|r| r.identity == "anonymous" && r.code == 401)
    );
}

#[tokio::test]
async fn bearer_token_authenticates_as_its_identity() {
    // matches: https://kubernetes.io/docs/reference/access-authn-authz/authentication/#putting-a-bearer-token-in-a-request
    let bed = TestBed::start().await;
    let path = bed.kubeconfig_with_token("node-1");
    let c = client(&path).await;
    Api::<Service>::namespaced(c, "default")
        .get("kubernetes")
        .await
        .unwrap();
    let r = raw(
        &bed,
        "GET",
        "/api/v1/namespaces/default/services/kubernetes",
        Some(&token_of(&path)),
        None,
    )
    .await;
    assert_eq!(r.code, 200);
    let log = bed.requests();
    assert_eq!(log.len(), 2);
    assert!(log.iter().all(|r| r.identity == "node-1"));
    let r = raw(
        &bed,
        "GET",
        "/api/v1/namespaces/default/services/kubernetes",
        Some("not-a-token"),
        None,
    )
    .await;
    assert_eq!(r.code, 401);
}

#[tokio::test]
async fn client_certificate_identity_is_its_common_name() {
    // matches: https://kubernetes.io/docs/reference/access-authn-authz/authentication/#x509-client-certificates
    let bed = TestBed::start().await;
    let c = client(&bed.kubeconfig_for("system:node:node-2")).await;
    Api::<Service>::namespaced(c, "default")
        .get("kubernetes")
        .await
        .unwrap();
    assert_eq!(bed.requests()[0].identity, "system:node:node-2");
}

#[tokio::test]
async fn revoked_identity_gets_401_until_its_certificate_is_rotated() {
    // matches: RKE2 client certificate rotation (https://docs.rke2.io/advanced#certificate-rotation):
    // an expired certificate is refused with 401; the rewritten kubeconfig works
    let bed = TestBed::start().await;
    let path = bed.kubeconfig_for("node-1");
    let before = std::fs::read_to_string(&path).unwrap();
    bed.revoke("node-1");
    let e = Api::<Service>::namespaced(client(&path).await, "default")
        .get("kubernetes")
        .await
        .unwrap_err();
    assert_eq!(api_code(e).0, 401);
    assert_eq!(bed.requests().last().unwrap().identity, "anonymous");
    bed.rotate_client_certificate(&path);
    let after = std::fs::read_to_string(&path).unwrap();
    assert_ne!(before, after, "rotation must write a new certificate");
    Api::<Service>::namespaced(client(&path).await, "default")
        .get("kubernetes")
        .await
        .unwrap();
    assert_eq!(bed.requests().last().unwrap().identity, "node-1");
}

#[tokio::test]
async fn rotated_certificate_keeps_the_old_one_working() {
    // matches: RKE2 rotation leaves the old certificate valid until it expires
    let bed = TestBed::start().await;
    let path = bed.kubeconfig_for("node-1");
    let old = client(&path).await;
    bed.rotate_client_certificate(&path);
    Api::<Service>::namespaced(old, "default")
        .get("kubernetes")
        .await
        .unwrap();
    Api::<Service>::namespaced(client(&path).await, "default")
        .get("kubernetes")
        .await
        .unwrap();
    assert!(
        bed.requests()
            .iter()
            .all(|r| r.identity == "node-1" && r.code == 200)
    );
}

#[tokio::test]
async fn denied_verb_gets_403_with_rbac_message() {
    // matches: k8s.io/apiserver/pkg/endpoints/filters/authorization.go (forbiddenMessage) and
    // https://kubernetes.io/docs/reference/access-authn-authz/rbac/
    let bed = TestBed::start().await;
    let api: Api<Lease> = Api::namespaced(client(bed.kubeconfig()).await, "kube-system");
    bed.set_allowed("system:admin", Verb::Create, "leases", false);
    let lease: Lease =
        serde_json::from_value(json!({"metadata": {"name": "x"}, "spec": {}})).unwrap();
    let (code, reason, message) = api_code(
        api.create(&PostParams::default(), &lease)
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        message,
        "leases.coordination.k8s.io is forbidden: User \"system:admin\" cannot create resource \"leases\" in API group \"coordination.k8s.io\" in the namespace \"kube-system\""
    );
    bed.set_allowed("system:admin", Verb::Create, "leases", true);
    let created = api.create(&PostParams::default(), &lease).await.unwrap();
    bed.set_allowed("system:admin", Verb::Update, "leases", false);
    let (code, _, message) = api_code(
        api.replace("x", &PostParams::default(), &created)
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 403);
    assert_eq!(
        message,
        "leases.coordination.k8s.io \"x\" is forbidden: User \"system:admin\" cannot update resource \"leases\" in API group \"coordination.k8s.io\" in the namespace \"kube-system\""
    );
}

async fn review(bed: &TestBed, verb: &str, resource: &str, group: &str) -> SelfSubjectAccessReview {
    let api: Api<SelfSubjectAccessReview> = Api::all(client(bed.kubeconfig()).await);
    let r: SelfSubjectAccessReview = serde_json::from_value(json!({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {"namespace": "kube-system", "verb": verb, "group": group, "resource": resource}},
    }))
    .unwrap();
    api.create(&PostParams::default(), &r).await.unwrap()
}

#[tokio::test]
async fn self_subject_access_review_answers_from_the_allow_table() {
    // matches: https://kubernetes.io/docs/reference/access-authn-authz/authorization/#checking-api-access
    let bed = TestBed::start().await;
    let allowed = review(&bed, "update", "leases", "coordination.k8s.io").await;
    assert!(allowed.status.unwrap().allowed);
    bed.set_allowed("system:admin", Verb::Update, "leases", false);
    let denied = review(&bed, "update", "leases", "coordination.k8s.io").await;
    assert!(!denied.status.unwrap().allowed);
    // Other verbs stay allowed.
    assert!(
        review(&bed, "get", "leases", "coordination.k8s.io")
            .await
            .status
            .unwrap()
            .allowed
    );
}
