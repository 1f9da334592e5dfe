//! Authentication and authorization for the test bed: which identity a request belongs to (client
//! certificate CN or bearer token), revocation, the allow/deny table tests set per identity, and
//! — once RBAC manifests are loaded — Kubernetes' RBAC for every user outside `system:masters`.
//!
//! Owns the credential registry and the authorization decision ([`Auth::authorize`]). Issuing
//! certificates is left to tls.rs; RBAC's rules to rbac.rs; turning a denial into a 403 Status
//! and answering SelfSubjectAccessReview is left to server.rs.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use crate::rbac::{Attributes, Policy, UserInfo};
use crate::reqlog::Verb;

/// The authenticated user of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// User name: certificate CN or the token's user.
    pub name: String,
    /// Groups: certificate O fields; tokens get `system:masters` (the test bed's tokens stand in for
    /// admin credentials) plus `system:authenticated`.
    pub groups: Vec<String>,
}

/// A verified client certificate, parsed once per connection (parsing X.509 on every request would
/// cost more than the rest of a small request).
#[derive(Debug, Clone)]
pub struct PeerCert {
    /// The certificate, DER (checked against the revocation set on every request).
    pub der: Vec<u8>,
    /// The user it names (CN, O + system:authenticated); None when the subject has no CN.
    pub user: Option<User>,
}

impl PeerCert {
    /// Parses the subject of a certificate rustls already verified.
    pub fn new(der: Vec<u8>) -> PeerCert {
        let user = crate::tls::subject_of(&der).map(|subject| {
            let mut groups = subject.organizations;
            groups.push("system:authenticated".into());
            User {
                name: subject.common_name,
                groups,
            }
        });
        PeerCert { der, user }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Token → identity.
    tokens: HashMap<String, String>,
    /// DER of every certificate issued, with its identity (to revoke by identity).
    certs: HashMap<Vec<u8>, String>,
    /// Certificates revoked (DER).
    revoked_certs: HashSet<Vec<u8>>,
    /// (identity, verb, plural) → allowed; absent means allowed.
    rules: HashMap<(String, Verb, String), bool>,
    /// RBAC, once manifests were loaded: then a user outside `system:masters` may do only what
    /// it grants (kube-apiserver authorizes `system:masters` before RBAC, as a privileged group).
    rbac: Option<Policy>,
}

/// The credential registry and authorization table.
#[derive(Debug, Default)]
pub struct Auth {
    state: Mutex<State>,
}

impl Auth {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Plain maps: a panic elsewhere cannot leave them half-updated.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Remembers a client certificate issued to `identity`.
    pub fn register_cert(&self, identity: &str, der: Vec<u8>) {
        self.lock().certs.insert(der, identity.to_string());
    }

    /// Creates a new bearer token for `identity` and returns it.
    pub fn new_token(&self, identity: &str) -> String {
        // Shaped like a K3s/RKE2 node token secret: long, random, no structure the server relies on.
        let token = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        self.lock()
            .tokens
            .insert(token.clone(), identity.to_string());
        token
    }

    /// Revokes every credential issued to `identity` so far (certificates and tokens); credentials
    /// issued afterwards (rotation, a new kubeconfig) work again.
    pub fn revoke(&self, identity: &str) {
        let mut s = self.lock();
        let certs: Vec<Vec<u8>> = s
            .certs
            .iter()
            .filter(|(_, id)| id.as_str() == identity)
            .map(|(der, _)| der.clone())
            .collect();
        s.revoked_certs.extend(certs);
        s.tokens.retain(|_, id| id != identity);
    }

    /// Authenticates from the verified peer certificate (if any) and the Authorization header (if
    /// any). The certificate wins when both are present, as kube-apiserver's union authenticator
    /// tries x509 first. None means 401.
    pub fn authenticate(
        &self,
        peer_cert: Option<&PeerCert>,
        authorization: Option<&str>,
    ) -> Option<User> {
        if let Some(cert) = peer_cert {
            let revoked = self.lock().revoked_certs.contains(&cert.der);
            if !revoked && let Some(user) = &cert.user {
                return Some(user.clone());
            }
        }
        let token = authorization?.strip_prefix("Bearer ")?.trim();
        let name = self.lock().tokens.get(token).cloned()?;
        Some(User {
            name,
            groups: vec!["system:masters".into(), "system:authenticated".into()],
        })
    }

    /// Sets whether `identity` may use `verb` on `resource` (plural, any group).
    pub fn set_allowed(&self, identity: &str, verb: Verb, resource: &str, allowed: bool) {
        self.lock()
            .rules
            .insert((identity.to_string(), verb, resource.to_string()), allowed);
    }

    /// Whether `identity` may use `verb` on `resource` by the deny table; everything is allowed
    /// unless denied there.
    pub fn allowed(&self, identity: &str, verb: Verb, resource: &str) -> bool {
        self.lock()
            .rules
            .get(&(identity.to_string(), verb, resource.to_string()))
            .copied()
            .unwrap_or(true)
    }

    /// Loads RBAC manifests (Roles, ClusterRoles and their bindings) into the policy, turning
    /// RBAC on; returns the objects that are not RBAC, for the caller to create.
    ///
    /// # Errors
    /// [`crate::rbac::Error`] when a document does not parse.
    pub fn load_rbac(&self, yaml: &str) -> Result<Vec<serde_json::Value>, crate::rbac::Error> {
        let mut s = self.lock();
        s.rbac.get_or_insert_with(Policy::default).load_yaml(yaml)
    }

    /// The RBAC policy loaded so far (`None`: RBAC off, everything allowed but the deny table).
    pub fn rbac(&self) -> Option<Policy> {
        self.lock().rbac.clone()
    }

    /// Whether `user` may make the request `attrs`: the deny table, then — when RBAC is on and
    /// the user is not in `system:masters` — RBAC.
    pub fn authorize(&self, user: &User, attrs: &Attributes<'_>) -> bool {
        if let Some(verb) = Verb::parse(attrs.verb)
            && !self.allowed(&user.name, verb, attrs.resource)
        {
            return false;
        }
        let s = self.lock();
        match &s.rbac {
            None => true,
            Some(_) if user.groups.iter().any(|g| g == crate::MASTERS) => true,
            Some(policy) => policy.allows(
                UserInfo {
                    name: &user.name,
                    groups: &user.groups,
                },
                attrs,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoking_an_identity_rejects_its_existing_tokens_but_not_new_ones() {
        let auth = Auth::default();
        let old = auth.new_token("node-1");
        auth.revoke("node-1");
        assert_eq!(
            auth.authenticate(None, Some(&format!("Bearer {old}"))),
            None
        );
        let new = auth.new_token("node-1");
        let user = auth
            .authenticate(None, Some(&format!("Bearer {new}")))
            .unwrap();
        assert_eq!(user.name, "node-1");
    }

    #[test]
    fn denial_is_per_identity_verb_and_resource() {
        let auth = Auth::default();
        auth.set_allowed("node-1", Verb::Update, "leases", false);
        assert!(!auth.allowed("node-1", Verb::Update, "leases"));
        assert!(auth.allowed("node-1", Verb::Get, "leases"));
        assert!(auth.allowed("node-2", Verb::Update, "leases"));
        auth.set_allowed("node-1", Verb::Update, "leases", true);
        assert!(auth.allowed("node-1", Verb::Update, "leases"));
    }
}
