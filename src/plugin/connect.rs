//! Which cluster and namespace the plugin talks to, found the way kubectl users expect:
//! `--kubeconfig` (one file), else `KUBECONFIG` (a list of files, merged) or `~/.kube/config`,
//! `--context` within it, else the in-cluster service account; `-n` or the context's namespace.

use std::path::PathBuf;

use kube::config::{Config, KubeConfigOptions, Kubeconfig};

use super::PluginError;

/// The connection flags every command takes.
#[derive(Clone, Debug, Default)]
pub struct Target {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    pub namespace: Option<String>,
}

/// A client and the namespace the command acts in.
pub struct Connection {
    pub client: kube::Client,
    pub namespace: String,
}

pub async fn connect(target: &Target) -> Result<Connection, PluginError> {
    let config = load(target).await?;
    let namespace = target.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
    let url = config.cluster_url.to_string();
    let client = kube::Client::try_from(config).map_err(|source| PluginError::Client { url, source })?;
    Ok(Connection { client, namespace })
}

async fn load(target: &Target) -> Result<Config, PluginError> {
    let boxed = |e: Box<dyn std::error::Error + Send + Sync>| PluginError::Kubeconfig { source: e };
    let options = KubeConfigOptions { context: target.context.clone(), ..KubeConfigOptions::default() };
    match &target.kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path).map_err(|e| boxed(format!("--kubeconfig {}: {e}", path.display()).into()))?;
            Config::from_custom_kubeconfig(file, &options).await.map_err(|e| boxed(Box::new(e)))
        }
        // A context only means something in a kubeconfig: no in-cluster fallback.
        None if target.context.is_some() => Config::from_kubeconfig(&options).await.map_err(|e| boxed(Box::new(e))),
        None => Config::infer().await.map_err(|e| boxed(Box::new(e))),
    }
}
