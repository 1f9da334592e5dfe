//! Kubeconfig files written the way RKE2 writes `/etc/rancher/rke2/rke2.yaml`: YAML, one cluster,
//! context and user all named "default", credentials embedded as base64 `*-data`, mode 0600, replaced
//! atomically (temp file + rename).
//!
//! Owns the file format and the atomic write; the credentials come from tls.rs and auth.rs.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::tls::base64;

/// Errors writing a kubeconfig.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Creating, writing or renaming the file failed.
    #[error("failed to write kubeconfig '{path}'")]
    Write {
        /// The kubeconfig path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// How the kubeconfig's user authenticates.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// A client certificate and its key (PEM), embedded as client-certificate-data/client-key-data.
    Cert {
        /// Certificate PEM.
        cert_pem: String,
        /// Key PEM ("EC PRIVATE KEY").
        key_pem: String,
    },
    /// A bearer token.
    Token(String),
    /// No user credentials at all (to show 401).
    None,
}

/// Renders the kubeconfig YAML.
pub fn render(server: &str, ca_pem: &str, creds: &Credentials) -> String {
    let user = match creds {
        Credentials::Cert { cert_pem, key_pem } => format!(
            "    client-certificate-data: {}\n    client-key-data: {}\n",
            base64(cert_pem.as_bytes()),
            base64(key_pem.as_bytes())
        ),
        Credentials::Token(t) => format!("    token: {t}\n"),
        Credentials::None => "    {}\n".to_string(),
    };
    let user = if matches!(creds, Credentials::None) {
        "  user: {}\n".to_string()
    } else {
        format!("  user:\n{user}")
    };
    format!(
        "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {ca}\n    server: {server}\n  name: default\ncontexts:\n- context:\n    cluster: default\n    user: default\n  name: default\ncurrent-context: default\nkind: Config\npreferences: {{}}\nusers:\n- name: default\n{user}",
        ca = base64(ca_pem.as_bytes()),
    )
}

/// Writes `contents` to `path` atomically with mode 0600: a temp file in the same directory, then
/// rename, so a reader never sees a half-written file (RKE2 rewrites rke2.yaml the same way).
///
/// # Errors
/// [`Error::Write`] naming `path`.
pub fn write_atomic(path: &Path, contents: &str) -> Result<(), Error> {
    let err = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "kubeconfig".into());
    let tmp = dir.join(format!(
        ".{file_name}.tmp-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(err)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(err)?;
    f.write_all(contents.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_has_rke2_shape_and_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rke2.yaml");
        let yaml = render(
            "https://127.0.0.1:6443",
            "CA",
            &Credentials::Token("t0k".into()),
        );
        write_atomic(&path, &yaml).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let v: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v["current-context"], "default");
        assert_eq!(v["clusters"][0]["name"], "default");
        assert_eq!(
            v["clusters"][0]["cluster"]["server"],
            "https://127.0.0.1:6443"
        );
        assert_eq!(v["contexts"][0]["context"]["user"], "default");
        assert_eq!(v["users"][0]["user"]["token"], "t0k");
        // No temp file left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
