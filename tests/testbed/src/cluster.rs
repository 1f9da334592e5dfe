//! The one helper that gives integration tests their API server: a real cluster when
//! `ENDPOINT_COPIER_TEST_KUBECONFIG` names a kubeconfig, else a fresh [`TestBed`]. Tests work in
//! namespaces made unique per test (cleaned up on drop) and skip, saying so, when they need what only
//! the test bed has (fault injection, the request log) — see [`require_testbed!`].
//!
//! Owns connecting, unique namespaces and their cleanup; everything else is the test bed's or the test's.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};

use crate::TestBed;

/// The environment variable naming a real cluster's kubeconfig.
pub const ENV_KUBECONFIG: &str = "ENDPOINT_COPIER_TEST_KUBECONFIG";

/// Errors talking to the cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kubeconfig could not be read or parsed.
    #[error("failed to read kubeconfig '{path}'")]
    Kubeconfig {
        /// Its path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// A client could not be built from it.
    #[error("failed to build a client from kubeconfig '{path}'")]
    Client {
        /// Its path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// Creating the namespace failed.
    #[error("failed to create namespace '{name}'")]
    CreateNamespace {
        /// The namespace.
        name: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
}

/// Builds a kube client from a kubeconfig file exactly as the daemon loads RKE2's rke2.yaml.
///
/// # Errors
/// [`Error::Kubeconfig`] or [`Error::Client`], naming the file.
pub async fn client(kubeconfig: &Path) -> Result<Client, Error> {
    let kc = Kubeconfig::read_from(kubeconfig).map_err(|source| Error::Kubeconfig {
        path: kubeconfig.to_path_buf(),
        source,
    })?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|source| Error::Kubeconfig {
            path: kubeconfig.to_path_buf(),
            source,
        })?;
    Client::try_from(config).map_err(|source| Error::Client {
        path: kubeconfig.to_path_buf(),
        source,
    })
}

/// Where the integration tests run.
// One per test, never moved in a hot path: boxing the TestBed would only make matching clumsier.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Cluster {
    /// The in-process test bed (fault injection and the request log available).
    TestBed(TestBed),
    /// A real cluster, from `ENDPOINT_COPIER_TEST_KUBECONFIG`.
    Real {
        /// The kubeconfig file.
        kubeconfig: PathBuf,
        /// Namespaces created by [`Cluster::unique_namespace`], deleted on drop.
        namespaces: Mutex<Vec<String>>,
    },
}

impl Cluster {
    /// A real cluster when `ENDPOINT_COPIER_TEST_KUBECONFIG` names a kubeconfig, else `TestBed::start()`.
    pub async fn connect() -> Cluster {
        match std::env::var_os(ENV_KUBECONFIG) {
            Some(path) if !path.is_empty() => Cluster::Real {
                kubeconfig: PathBuf::from(path),
                namespaces: Mutex::default(),
            },
            _ => Cluster::TestBed(TestBed::start().await),
        }
    }

    /// The kubeconfig to give the daemon and clients.
    pub fn kubeconfig(&self) -> PathBuf {
        match self {
            Cluster::TestBed(bed) => bed.kubeconfig().to_path_buf(),
            Cluster::Real { kubeconfig, .. } => kubeconfig.clone(),
        }
    }

    /// The test bed, or None on a real cluster.
    pub fn testbed(&self) -> Option<&TestBed> {
        match self {
            Cluster::TestBed(bed) => Some(bed),
            Cluster::Real { .. } => None,
        }
    }

    /// A kube client from [`Cluster::kubeconfig`].
    ///
    /// # Panics
    /// When the kubeconfig cannot be loaded (a broken test environment).
    pub async fn client(&self) -> Client {
        let path = self.kubeconfig();
        client(&path)
            .await
            .unwrap_or_else(|e| panic!("cluster: {}", error_chain(&e)))
    }

    /// Creates namespace `<prefix>-<random>` through the API and remembers it for cleanup.
    ///
    /// # Panics
    /// When the namespace cannot be created.
    pub async fn unique_namespace(&self, prefix: &str) -> String {
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
        // A DNS-1123 label: at most 63 characters.
        let prefix: String = prefix.chars().take(63 - 9).collect();
        let name = format!("{}-{suffix}", prefix.trim_end_matches('-'));
        let api: Api<Namespace> = Api::all(self.client().await);
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
        }))
        .unwrap_or_else(|e| panic!("cluster: namespace object: {e}"));
        if let Err(source) = api.create(&PostParams::default(), &ns).await {
            let e = Error::CreateNamespace {
                name: name.clone(),
                source,
            };
            panic!("cluster: {}", error_chain(&e));
        }
        if let Cluster::Real { namespaces, .. } = self {
            namespaces
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(name.clone());
        }
        name
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The test bed's namespaces vanish with it; only a real cluster needs cleaning.
        let Cluster::Real {
            kubeconfig,
            namespaces,
        } = self
        else {
            return;
        };
        let names = std::mem::take(
            namespaces
                .get_mut()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if names.is_empty() {
            return;
        }
        let kubeconfig = kubeconfig.clone();
        // Drop may run inside a runtime (where block_on panics): clean up from a fresh thread with
        // its own runtime, best effort.
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(client) = client(&kubeconfig).await else {
                    return;
                };
                let api: Api<Namespace> = Api::all(client);
                for name in names {
                    if let Err(e) = api.delete(&name, &DeleteParams::background()).await {
                        eprintln!("cleanup: failed to delete namespace '{name}': {e}");
                    }
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// Returns the test bed of `cluster`, or returns early from the calling test (printing why) when
/// connected to a real cluster. For tests that need fault injection or the request log.
#[macro_export]
macro_rules! require_testbed {
    ($cluster:expr) => {
        match $cluster.testbed() {
            Some(bed) => bed,
            None => {
                eprintln!("skipped: needs the test bed (fault injection/request log)");
                return;
            }
        }
    };
}
