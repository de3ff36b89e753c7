//! The HTTPS side of `/metrics` (docs/contract.md §5.3): the serving certificate.
//!
//! From files (`--metrics-cert-file`, `--metrics-key-file`: a mounted Secret, e.g. one that
//! cert-manager renews), re-read when they change so a renewal needs no restart; or, without
//! them, a self-signed one made at start, which scrapers cannot verify (the chart's
//! ServiceMonitor then skips verification) but which still keeps the token and the metrics off
//! the wire in clear text.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Where the serving certificate comes from.
#[derive(Clone, Debug)]
pub enum Certificate {
    /// PEM files: the chain (leaf first) and its private key.
    Files { cert: PathBuf, key: PathBuf },
    /// Made at start, for `localhost`, `127.0.0.1` and `::1`, kept in memory only.
    SelfSigned,
}

/// Failures to set up the serving certificate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the metrics certificate {path}: {source}; check --metrics-cert-file (PEM, leaf first)")]
    Cert { path: PathBuf, source: rustls::pki_types::pem::Error },
    #[error("the metrics certificate file {path} holds no certificate; check --metrics-cert-file (PEM, leaf first)")]
    NoCert { path: PathBuf },
    #[error("cannot read the metrics private key {path}: {source}; check --metrics-key-file (PEM: PKCS#8, PKCS#1 or SEC1)")]
    Key { path: PathBuf, source: rustls::pki_types::pem::Error },
    #[error("the metrics certificate {cert} and key {key} do not go together: {source}; give the key of that certificate")]
    Mismatch { cert: PathBuf, key: PathBuf, source: rustls::Error },
    #[error("cannot make a self-signed metrics certificate: {0}; give one with --metrics-cert-file and --metrics-key-file")]
    Generate(#[from] rcgen::Error),
    #[error("cannot set up TLS for /metrics: {0}")]
    Config(#[from] rustls::Error),
}

/// The TLS configuration serving `certificate` over HTTP/1.1.
pub fn server_config(certificate: &Certificate) -> Result<Arc<ServerConfig>, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?.with_no_client_auth();
    let mut config = match certificate {
        Certificate::Files { cert, key } => builder.with_cert_resolver(Arc::new(Reloading::load(cert, key, provider)?)),
        Certificate::SelfSigned => {
            let made = rcgen::generate_simple_self_signed(["localhost".to_string(), "127.0.0.1".into(), "::1".into()])?;
            let key = PrivateKeyDer::Pkcs8(made.signing_key.serialize_der().into());
            builder.with_single_cert(vec![made.cert.der().clone()], key)?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The certificate files as last read, and when they last changed.
#[derive(Debug)]
struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: Mutex<(Stamp, Arc<CertifiedKey>)>,
}

/// Modification time and length of both files (through symlinks: a Secret volume swaps them).
type Stamp = [Option<(SystemTime, u64)>; 2];

impl Reloading {
    fn load(cert: &Path, key: &Path, provider: Arc<CryptoProvider>) -> Result<Reloading, Error> {
        let stamp = stamp(cert, key);
        let certified = read(cert, key, &provider)?;
        Ok(Reloading { cert: cert.into(), key: key.into(), provider, current: Mutex::new((stamp, certified)) })
    }

    /// The certificate to serve: two `stat`s, and a re-read only when a file changed. A renewal
    /// caught half-written fails to load and is retried at the next handshake, the previous
    /// certificate serving meanwhile.
    fn current(&self) -> Arc<CertifiedKey> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let now = stamp(&self.cert, &self.key);
        if now != current.0 {
            match read(&self.cert, &self.key, &self.provider) {
                Ok(certified) => {
                    tracing::info!(cert = %self.cert.display(), "metrics certificate reloaded");
                    *current = (now, certified);
                }
                Err(e) => tracing::warn!(error = %e, "keeping the previous metrics certificate"),
            }
        }
        current.1.clone()
    }
}

impl ResolvesServerCert for Reloading {
    /// Called once per handshake, i.e. once per scrape.
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn stamp(cert: &Path, key: &Path) -> Stamp {
    let of = |p: &Path| std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len())));
    [of(cert), of(key)]
}

fn read(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, Error> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|source| Error::Cert { path: cert.into(), source })?;
    if chain.is_empty() {
        return Err(Error::NoCert { path: cert.into() });
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|source| Error::Key { path: key.into(), source })?;
    let certified = CertifiedKey::from_der(chain, private, provider).map_err(|source| Error::Mismatch {
        cert: cert.into(),
        key: key.into(),
        source,
    })?;
    Ok(Arc::new(certified))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let made = rcgen::generate_simple_self_signed([name.to_string()]).unwrap();
        let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        (cert, key)
    }

    #[test]
    fn a_self_signed_certificate_is_made_when_none_is_given() {
        let config = server_config(&Certificate::SelfSigned).unwrap();
        assert_eq!(config.alpn_protocols, [b"http/1.1".to_vec()]);
    }

    #[test]
    fn files_that_do_not_hold_a_matching_pair_are_refused_saying_which() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = write_pair(dir.path(), "a");
        let (_, other_key) = write_pair(dir.path(), "b");
        let err = server_config(&Certificate::Files { cert: cert.clone(), key: other_key }).unwrap_err();
        assert!(matches!(err, Error::Mismatch { .. }), "{err}");
        let err = server_config(&Certificate::Files { cert: dir.path().join("missing.crt"), key: cert.clone() }).unwrap_err();
        assert!(err.to_string().contains("missing.crt") && err.to_string().contains("--metrics-cert-file"), "{err}");
        let err = server_config(&Certificate::Files { cert: cert.clone(), key: cert }).unwrap_err();
        assert!(err.to_string().contains("--metrics-key-file"), "{err}");
    }

    #[test]
    fn a_renewed_certificate_is_served_from_the_next_handshake_on() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "old");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let files = Reloading::load(&cert, &key, provider).unwrap();
        let before = files.current().cert[0].clone();
        std::fs::write(&key, b"-----BEGIN PRIVATE KEY-----\nhalf-writ").unwrap();
        assert_eq!(files.current().cert[0], before, "a half-written renewal: the previous certificate serves on");
        let (new_cert, new_key) = write_pair(dir.path(), "renewed");
        std::fs::rename(new_cert, &cert).unwrap();
        std::fs::rename(new_key, &key).unwrap();
        assert_ne!(files.current().cert[0], before);
    }
}
