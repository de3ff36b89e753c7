//! A second Kubernetes cluster for the tests of several clusters on one lock etcd: another
//! kube-apiserver (`hack/cluster.sh second-apiserver`) on the same storage etcd under another
//! prefix, so with its own `kube-system` UID, and its own objects.

use super::{env, kubectl_ok};

/// Starts the second apiserver (once per control plane: the script reuses a running one) and
/// installs the CRD there. Returns its kubeconfig.
pub fn second_cluster() -> String {
    static SECOND: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SECOND
        .get_or_init(|| {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/hack/cluster.sh");
            let out = std::process::Command::new(script).arg("second-apiserver").output().unwrap();
            assert!(out.status.success(), "second apiserver: {}", String::from_utf8_lossy(&out.stderr));
            let kubeconfig = format!("{}/kubeconfig-second", env("LEADERLOCK_CLUSTER_DIR"));
            let crd = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/leaderlock.dev_leaderlocks.yaml");
            kubectl_ok(&["--kubeconfig", &kubeconfig, "apply", "--server-side", "--force-conflicts", "-f", crd], None);
            kubectl_ok(
                &["--kubeconfig", &kubeconfig, "wait", "--for=condition=Established", "--timeout=60s", "crd/leaderlocks.leaderlock.dev"],
                None,
            );
            kubeconfig
        })
        .clone()
}

/// A client of the cluster `kubeconfig` names.
pub async fn client_of(kubeconfig: &str) -> kube::Client {
    let config = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(config, &Default::default()).await.unwrap();
    kube::Client::try_from(config).unwrap()
}
