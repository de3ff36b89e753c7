//! Secure metrics on the real control plane (docs/contract.md §5.3): `/metrics` over HTTPS
//! answers 401 without a valid bearer token, 403 to a ServiceAccount the apiserver does not allow
//! to `get` /metrics, and 200 to one bound to the chart's reader ClusterRole — with the reviews
//! made as the chart's ServiceAccount holding only the chart's metrics-auth ClusterRole, and most
//! scrapes costing the apiserver no call. The probes answer without credentials; the controller
//! binary serves its certificate files, and plain HTTP only when asked.
//!
//! The tests count the apiserver's reviews, so they run one at a time.
mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::chart::render;
use common::etcd::{EtcdServer, Tls};
use common::k8s::service_account_kubeconfig_for;
use common::*;
use leaderlock::http::{Endpoint, Server, Timeouts, auth, tls};
use leaderlock::metrics::Metrics;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const T: Duration = Duration::from_secs(30);

/// Applies the chart's ServiceAccount and the templates of secure metrics (rbac-metrics.yaml),
/// nothing else: the reviews need no other permission. The cluster-scoped objects go on drop.
struct ChartRoles {
    release: String,
    sa: String,
}

impl ChartRoles {
    fn apply(ns: &str, reader: &str) -> ChartRoles {
        let release = format!("ma-{}", std::process::id());
        let subject = |k: &str, v: &str| format!("metrics.reader.subjects[0].{k}={v}");
        let docs = render(&release, ns, &[&subject("kind", "ServiceAccount"), &subject("name", reader), &subject("namespace", ns)]);
        let prefix = format!("{release}-leaderlock-metrics-");
        let picked: Vec<&Value> =
            docs.iter().filter(|d| d["kind"] == "ServiceAccount" || d["metadata"]["name"].as_str().unwrap().starts_with(&prefix)).collect();
        assert_eq!(picked.len(), 5, "the ServiceAccount, two ClusterRoles and their two bindings");
        let yaml: String = picked.iter().map(|d| format!("---\n{}", serde_saphyr::to_string(d).unwrap())).collect();
        kubectl_ok(&["apply", "-n", ns, "-f", "-"], Some(&yaml));
        let sa = picked.iter().find(|d| d["kind"] == "ServiceAccount").unwrap()["metadata"]["name"].as_str().unwrap().to_string();
        ChartRoles { release, sa }
    }
}

impl Drop for ChartRoles {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "clusterrolebinding,clusterrole", "-l", &format!("app.kubernetes.io/instance={}", self.release)], None);
    }
}

/// Waits until the apiserver's authorizer allows `user` to `verb` `what` (bindings take a
/// moment to reach it; a verdict cached before would outlive the test's patience).
fn wait_allowed(user: &str, verb: &str, what: &str) {
    wait_until(&format!("{user} to be allowed to {verb} {what}"), T, || {
        let out = kubectl(&["auth", "can-i", verb, what, &format!("--as={user}")], None);
        (String::from_utf8_lossy(&out.stdout).trim() == "yes").then_some(())
    });
}

fn token(ns: &str, sa: &str) -> String {
    kubectl_ok(&["create", "token", sa, "-n", ns, "--duration", "1h"], None).trim().to_string()
}

/// Accepts any server certificate, as a ServiceMonitor with `insecureSkipVerify` does for the
/// self-signed one.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn skip_verify() -> Arc<rustls::ClientConfig> {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
        .with_no_client_auth();
    Arc::new(config)
}

fn verify_with(ca: &std::path::Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(config.with_no_client_auth())
}

/// GET /metrics over HTTPS with `token` as a bearer token: the whole response.
async fn scrape(addr: SocketAddr, tls: Arc<rustls::ClientConfig>, token: Option<&str>) -> String {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(tls).connect(ServerName::try_from("127.0.0.1").unwrap(), tcp).await.unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    stream.write_all(format!("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(T, stream.read_to_end(&mut out)).await.expect("an answer").unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// GET `path` in plain HTTP: the whole response, empty when the server closes without one.
async fn plain_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(T, stream.read_to_end(&mut out)).await.expect("the server to answer or close");
    String::from_utf8_lossy(&out).into_owned()
}

/// Reviews the apiserver has received since it started, by kind: its own request counter.
fn reviews_served() -> (u64, u64) {
    let text = kubectl_ok(&["get", "--raw", "/metrics"], None);
    let count = |resource: &str| -> u64 {
        let label = format!("resource=\"{resource}\"");
        text.lines()
            .filter(|l| l.starts_with("apiserver_request_total{") && l.contains(&label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    (count("tokenreviews"), count("subjectaccessreviews"))
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_answer_401_without_a_token_403_without_the_role_and_200_to_the_charts_reader_role() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let ns = namespace("metrics-auth");
    kubectl_ok(&["create", "serviceaccount", "prometheus", "-n", &ns], None);
    kubectl_ok(&["create", "serviceaccount", "stranger", "-n", &ns], None);
    let roles = ChartRoles::apply(&ns, "prometheus");
    let controller = format!("system:serviceaccount:{ns}:{}", roles.sa);
    wait_allowed(&controller, "create", "tokenreviews.authentication.k8s.io");
    wait_allowed(&controller, "create", "subjectaccessreviews.authorization.k8s.io");
    wait_allowed(&format!("system:serviceaccount:{ns}:prometheus"), "get", "/metrics");

    // The gate reviews as the chart's ServiceAccount, with only the metrics-auth role.
    let kubeconfig = service_account_kubeconfig_for(&ns, &roles.sa);
    let options = kube::config::KubeConfigOptions::default();
    let config = kube::Config::from_custom_kubeconfig(kube::config::Kubeconfig::read_from(&kubeconfig).unwrap(), &options).await.unwrap();
    let gate = Arc::new(auth::Gate::new(kube::Client::try_from(config).unwrap()));
    let metrics = Arc::new(Metrics::default());
    let tls_config = tls::server_config(&tls::Certificate::SelfSigned).unwrap();
    let any_port = "127.0.0.1:0".parse().unwrap();
    let endpoint = Endpoint::SecureMetrics { tls: tls_config, gate };
    let server = Server::bind(any_port, endpoint, metrics.clone(), Timeouts::default()).await.unwrap();
    let probes = Server::bind(any_port, Endpoint::Probes, metrics, Timeouts::default()).await.unwrap();
    let addr = server.local_addr();

    let none = scrape(addr, skip_verify(), None).await;
    assert!(none.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{none}");
    assert!(none.to_lowercase().contains("www-authenticate: bearer\r\n") && none.contains("Authorization: Bearer <token>"), "{none}");
    let forged = scrape(addr, skip_verify(), Some("not-a-token")).await;
    assert!(forged.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{forged}");

    let stranger = scrape(addr, skip_verify(), Some(&token(&ns, "stranger"))).await;
    assert!(stranger.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{stranger}");
    assert!(stranger.contains(&format!("system:serviceaccount:{ns}:stranger may not get /metrics")), "{stranger}");

    // A new token costs one TokenReview and one SubjectAccessReview; the scrapes after it, none.
    let prometheus = token(&ns, "prometheus");
    let before = reviews_served();
    let scraped = scrape(addr, skip_verify(), Some(&prometheus)).await;
    assert!(scraped.starts_with("HTTP/1.1 200 OK\r\n") && scraped.contains("\nleaderlock_active 0\n"), "{scraped}");
    let first = reviews_served();
    for _ in 0..5 {
        assert!(scrape(addr, skip_verify(), Some(&prometheus)).await.starts_with("HTTP/1.1 200 OK\r\n"));
    }
    let after = reviews_served();
    assert_eq!((first.0 - before.0, first.1 - before.1), (1, 1), "a new token: one review of each kind");
    assert_eq!(after, first, "cached: later scrapes cost the apiserver no call");

    // Never in clear text on the secure port; the probes need no credentials.
    let clear = plain_get(addr, "/metrics").await;
    assert!(!clear.contains("leaderlock_active"), "metrics in clear text: {clear}");
    let readyz = plain_get(probes.local_addr(), "/readyz").await;
    assert!(readyz.starts_with("HTTP/1.1 200 OK\r\n") && readyz.ends_with("ok: standby\n"), "{readyz}");
    let healthz = plain_get(probes.local_addr(), "/healthz").await;
    assert!(healthz.starts_with("HTTP/1.1 200 OK\r\n"), "{healthz}");

    server.shutdown().await;
    probes.shutdown().await;
    drop(roles);
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"], None);
}

/// The binary as the chart runs it: HTTPS with the certificate files given (a CA-issued
/// certificate the scraper verifies), probes in plain HTTP; and `--metrics-secure=false`, the
/// opt-out, serving /metrics in plain HTTP to anyone.
#[tokio::test(flavor = "multi_thread")]
async fn the_controller_serves_its_certificate_and_plain_http_only_when_asked() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let ns = namespace("metrics-binary");
    kubectl_ok(&["create", "serviceaccount", "prometheus", "-n", &ns], None);
    let roles = ChartRoles::apply(&ns, "prometheus");
    wait_allowed(&format!("system:serviceaccount:{ns}:prometheus"), "get", "/metrics");
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().unwrap();
    let certs = Tls::generate(dir.path());

    let cert_args = ["--metrics-cert-file", certs.server_cert.to_str().unwrap(), "--metrics-key-file", certs.server_key.to_str().unwrap()];
    let endpoint = etcd.endpoint();
    let mut args = vec!["--etcd-endpoints", &endpoint];
    args.extend(cert_args);
    // The harness serves plain HTTP through this env var; the chart's default is secure.
    let secure = Launch::new(&args).env("LEADERLOCK_METRICS_SECURE", "true").start();
    let addr: SocketAddr = ([127, 0, 0, 1], secure.http_port("/metrics")).into();
    let log = std::fs::read_to_string(&secure.log).unwrap();
    assert!(log.contains("serving /metrics to authorized callers") && log.contains("server.crt"), "{log}");
    let verified = verify_with(&certs.ca);
    assert!(scrape(addr, verified.clone(), None).await.starts_with("HTTP/1.1 401 Unauthorized\r\n"));
    let scraped = scrape(addr, verified, Some(&token(&ns, "prometheus"))).await;
    assert!(scraped.starts_with("HTTP/1.1 200 OK\r\n") && scraped.contains("leaderlock_reconciles_total"), "{scraped}");
    assert_eq!(secure.http_get("/healthz").as_deref(), Some("ok\n"), "probes without credentials");
    drop(secure);

    // Plain HTTP only when asked; and certificate files with it are a contradiction.
    let plain = ControllerProcess::start(&["--etcd-endpoints", &endpoint]);
    let body = plain.http_get("/metrics").unwrap();
    assert!(body.contains("leaderlock_reconciles_total"), "{body}");
    let log = std::fs::read_to_string(&plain.log).unwrap();
    assert!(log.contains("serving /metrics in plain HTTP to anyone (--metrics-secure=false)"), "{log}");
    drop(plain);
    let out = Command::new(env!("CARGO_BIN_EXE_leaderlock"))
        .args(["controller", "--etcd-endpoints", &endpoint, "--metrics-secure=false"])
        .args(cert_args)
        .args(["--probe-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("drop one of them"), "{}", String::from_utf8_lossy(&out.stderr));

    drop(roles);
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"], None);
}
