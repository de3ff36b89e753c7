//! The `leaderlock` binary: parses flags and wires the library together; no logic lives here.
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use leaderlock::contract;
use leaderlock::controller::{self, Settings};
use leaderlock::etcd::engine::{Engine, EngineConfig};
use leaderlock::etcd::ownership::ClusterId;
use leaderlock::etcd::registration::{self, Registration};
use leaderlock::etcd::{self, EtcdConfig, election};
use leaderlock::http;
use leaderlock::keyspace::Keyspace;
use leaderlock::metrics::Metrics;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "leaderlock", version, about = "Leader election for Kubernetes pods on etcd locks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format.
    #[arg(long, env = "LEADERLOCK_LOG_FORMAT", value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    /// Log filter, e.g. `info` or `leaderlock=debug` (RUST_LOG syntax).
    #[arg(long, env = "LEADERLOCK_LOG_LEVEL", default_value = "info", global = true)]
    log_level: String,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller: elect holders for every LeaderLock, annotate pods, write status.
    Controller(Box<ControllerArgs>),
    /// Print the CustomResourceDefinitions as YAML (pipe them to `kubectl apply -f -`).
    Crd {
        /// Only this CRD, by plural: leaderlocks or handovers. Default: both, as one YAML stream.
        kind: Option<String>,
    },
    /// Copy this binary to DEST (executable): an init container uses it to hand `leaderlock run`
    /// to an application container through a shared emptyDir (the image has no shell or `cp`).
    CopySelf {
        /// Destination path, e.g. /opt/leaderlock/leaderlock on a shared emptyDir.
        dest: PathBuf,
    },
    /// In a pod: print its role for a lock (`leader <token>`, `leader` or `standby`); exit 0 leader, 1 standby, 2 error.
    ///
    /// Reads the downward-API file once and prints `leader <fencing token>` when the file projects all
    /// annotations, `leader` when it projects only `leaderlock.dev/<lock>`, or `standby`.
    ///
    /// Exit status: 0 leader, 1 standby, 2 when the file is missing or unreadable, is not a
    /// downward-API projection, or lacks the lock's annotation (the pod is not a candidate).
    Role(RoleArgs),
    /// In a pod: block until it is leader of a lock, print `leader [<token>]`, exit 0 (2 on error or timeout).
    ///
    /// Watches the downward-API file's directory (kubelet swaps a `..data` symlink there) and re-reads
    /// the file on every change. A missing annotation is waited through: the pod is not a candidate yet.
    ///
    /// Exit status: 0 once leader; 2 when the file is missing, unreadable or not a downward-API
    /// projection, or on --timeout.
    Wait(WaitArgs),
    /// In a pod: run CMD only while it is leader of a lock: start on election, SIGTERM then SIGKILL on demotion.
    ///
    /// CMD starts when the role becomes `leader`, with LEADERLOCK_FENCING_TOKEN set when the file carries
    /// the token. It gets SIGTERM when the role becomes `standby` or the annotation disappears, SIGKILL
    /// after --grace-period, and starts again on re-election; a new fencing token while leader restarts
    /// it too. Signals go to CMD's process group.
    ///
    /// A `leader` role already in the file when `run` starts is inherited: it was granted before this
    /// process started (a restarted container) and may already be revoked, its demotion still on its way
    /// to the file. CMD starts on it only once a change of the file still says `leader` with the same
    /// token, or after --inherited-role-wait with no change.
    ///
    /// When the file carries the controller's renewal (leaderlock.dev/roles.renewed, `<D> <mark>`:
    /// a LeaderLock with renewDeadlineSeconds), a `leader` role counts only until D after a new mark
    /// was read: past that, CMD is stopped as on a demotion (the controller cannot reach this pod),
    /// and a new mark while still leader starts it again.
    ///
    /// SIGTERM and SIGINT sent to `run` are forwarded to CMD (SIGKILL after --grace-period).
    ///
    /// Exit status: CMD's own (128+signal if a signal killed it) when CMD ends by itself while leader or
    /// after a forwarded signal; 128+signal when a signal arrives while CMD is not running; 2 when the
    /// role file is missing, unreadable or garbage (CMD is stopped first) or CMD cannot be started.
    Run(RunArgs),
    /// In a pod: run CMD once and tell it which locks (shards) the pod leads, on every change.
    ///
    /// CMD starts at once, leading shards or not, with LEADERLOCK_SHARDS set to the locks the pod leads
    /// (names comma-separated, sorted with a trailing number compared as a number: shard-2 before
    /// shard-10) and LEADERLOCK_SHARDS_FILE to --shards-file. The file holds one `<lock> <token>` line per
    /// lock led, in the same order. Whenever the set or a fencing token changes, the file is replaced
    /// atomically and then CMD (its process, not its group) gets --signal; re-read the file then, and
    /// treat a new token for a shard you serve as a fresh acquisition. Install the signal handler first
    /// thing: SIGHUP's default action ends a program.
    ///
    /// Shards already led in the file when `shards` starts are inherited (granted before this process
    /// started, possibly already revoked): they are left out of the set until a change of the file
    /// confirms them, or until --inherited-role-wait passes with no change; then they are added as any
    /// change is.
    ///
    /// When the file carries the controller's renewal (leaderlock.dev/roles.renewed, `<D> <mark>`), every
    /// shard leaves the set once D passes with no new mark read, and returns with the next new mark.
    ///
    /// Needs the projection of metadata.annotations (every lock's role and token).
    ///
    /// SIGTERM and SIGINT sent to `shards` are forwarded to CMD's process group (SIGKILL after
    /// --grace-period).
    ///
    /// Exit status: CMD's own (128+signal if a signal killed it) when CMD ends; 128+signal when a
    /// signal arrives and CMD is gone; 2 when the role file or the shards file fails (CMD is stopped
    /// first), when CMD cannot be started, or on a usage error.
    Shards(ShardsArgs),
}

#[derive(Args)]
struct ControllerArgs {
    /// etcd endpoints, comma-separated (http:// or https://).
    #[arg(long, env = "LEADERLOCK_ETCD_ENDPOINTS", value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    etcd_endpoints: Vec<String>,
    /// CA bundle to verify etcd's serving certificate.
    #[arg(long, env = "LEADERLOCK_ETCD_CA_FILE")]
    etcd_ca_file: Option<PathBuf>,
    /// Client certificate for etcd (with --etcd-key-file).
    #[arg(long, env = "LEADERLOCK_ETCD_CERT_FILE", requires = "etcd_key_file")]
    etcd_cert_file: Option<PathBuf>,
    /// Client key for etcd (with --etcd-cert-file).
    #[arg(long, env = "LEADERLOCK_ETCD_KEY_FILE", requires = "etcd_cert_file")]
    etcd_key_file: Option<PathBuf>,
    /// etcd user name (with --etcd-password).
    #[arg(long, env = "LEADERLOCK_ETCD_USERNAME", requires = "etcd_password")]
    etcd_username: Option<String>,
    /// etcd password (prefer the env var over the flag).
    #[arg(long, env = "LEADERLOCK_ETCD_PASSWORD", hide_env_values = true, requires = "etcd_username")]
    etcd_password: Option<String>,
    /// Root of every key LeaderLock owns in etcd; locks live under `<prefix>locks/<ns>/<lock>`.
    #[arg(long, env = "LEADERLOCK_ETCD_PREFIX", default_value = "/leaderlock.dev/", value_parser = root_prefix)]
    etcd_prefix: String,
    /// An etcd prefix that `spec.locks[].etcdKey` may use (repeatable; default: none).
    #[arg(long = "allowed-key-prefix", env = "LEADERLOCK_ALLOWED_KEY_PREFIXES", value_delimiter = ',')]
    allowed_key_prefixes: Vec<String>,
    /// Bound for every single etcd call. Duration syntax: 500ms, 10s, 1.5m or 2h (units ms, s, m, h; a bare number is seconds).
    #[arg(long, env = "LEADERLOCK_ETCD_TIMEOUT", default_value = "5s", value_name = "DURATION", value_parser = contract::parse_duration)]
    etcd_timeout: Duration,
    /// This replica's name in Events (the pod name in a cluster).
    #[arg(long, env = "POD_NAME", default_value = "leaderlock")]
    instance: String,
    /// Watch LeaderLocks and pods of this namespace only (default: every namespace).
    #[arg(long, env = "LEADERLOCK_NAMESPACE")]
    namespace: Option<String>,
    /// Reconciles run at once (each talks to etcd and the apiserver): bounds bursts at start-up.
    #[arg(long, env = "LEADERLOCK_MAX_CONCURRENT_RECONCILES", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    max_concurrent_reconciles: u16,
    #[command(flatten)]
    http: HttpArgs,
    /// TTL of each replica's election lease, whole seconds from 2s to 60s: a standby takes over this
    /// long after the active replica dies. Keep it well below the LeaderLocks' ttlSeconds.
    /// Duration syntax: 500ms, 10s, 1.5m or 2h (units ms, s, m, h; a bare number is seconds).
    #[arg(long, env = "LEADERLOCK_ELECTION_TTL", default_value = "3", value_name = "DURATION", value_parser = election_ttl_secs)]
    election_ttl: i64,
    /// How long after a pod's leadership changes the controller writes it once more (the
    /// `leaderlock.dev/roles.resync` annotation), so that a kubelet that lost the change projects
    /// it again; `0` turns it off. Duration syntax: 500ms, 10s, 1.5m or 2h (units ms, s, m, h; a bare number is seconds).
    #[arg(long, env = "LEADERLOCK_RESYNC_AFTER", default_value = "2s", value_name = "DURATION", value_parser = contract::parse_duration)]
    resync_after: Duration,
    /// How long a node's Lease in kube-node-lease may go unrenewed (kubelets renew every 10 s)
    /// before the node counts as lost and all its pods stop being candidates at once; a
    /// LeaderLock's spec.nodeLostAfterSeconds overrides it, `0` turns it off. Duration syntax:
    /// 500ms, 10s, 1.5m or 2h (units ms, s, m, h; a bare number is seconds).
    #[arg(long, env = "LEADERLOCK_NODE_LOST_AFTER", default_value = "15s", value_name = "DURATION", value_parser = contract::parse_duration)]
    node_lost_after: Duration,
    /// This cluster's identity in etcd, written into every key the controller creates and into
    /// its root's registration (default: the UID of the `kube-system` namespace). Controllers of
    /// several clusters on one etcd need distinct identities and distinct --etcd-prefix roots.
    #[arg(long, env = "LEADERLOCK_CLUSTER_ID")]
    cluster_id: Option<ClusterId>,
}

/// The probes and the metrics endpoint (docs/contract.md §5.3).
#[derive(Args)]
struct HttpArgs {
    /// Where to serve the health probes /healthz and /readyz, in plain HTTP with no authentication
    /// (what the kubelet's probes need).
    #[arg(long, env = "LEADERLOCK_PROBE_ADDR", default_value = "0.0.0.0:8080")]
    probe_addr: std::net::SocketAddr,
    /// Where to serve /metrics: over HTTPS to callers whose bearer token the apiserver
    /// authenticates (TokenReview) and allows to `get` the non-resource URL /metrics
    /// (SubjectAccessReview); in plain HTTP to anyone with --metrics-secure=false.
    #[arg(long, env = "LEADERLOCK_METRICS_ADDR", default_value = "0.0.0.0:8443")]
    metrics_addr: std::net::SocketAddr,
    /// Serve /metrics over HTTPS to authenticated and authorized callers only. `false` serves it
    /// in plain HTTP to anyone who reaches --metrics-addr (an explicit opt-out).
    #[arg(long, env = "LEADERLOCK_METRICS_SECURE", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    metrics_secure: bool,
    /// Serving certificate of /metrics, PEM, leaf first (with --metrics-key-file); re-read when it
    /// changes. Default: a self-signed certificate made at start.
    #[arg(long, env = "LEADERLOCK_METRICS_CERT_FILE", requires = "metrics_key_file")]
    metrics_cert_file: Option<PathBuf>,
    /// Private key of --metrics-cert-file, PEM.
    #[arg(long, env = "LEADERLOCK_METRICS_KEY_FILE", requires = "metrics_cert_file")]
    metrics_key_file: Option<PathBuf>,
}

#[derive(Args)]
struct RoleFileArgs {
    /// The lock's name, as in `spec.locks[].name` (the pod's annotation is `leaderlock.dev/<lock>`).
    #[arg(long, env = "LEADERLOCK_LOCK", value_parser = contract::parse_lock_name)]
    lock: String,
    /// The downward-API file: a projection of `metadata.annotations` (gives the fencing token) or of
    /// `metadata.annotations['leaderlock.dev/<lock>']`; the form is detected from the content.
    #[arg(long, env = "LEADERLOCK_ROLE_FILE", default_value = leaderlock::podside::DEFAULT_ROLE_FILE)]
    file: PathBuf,
}

#[derive(Args)]
struct RoleArgs {
    #[command(flatten)]
    role_file: RoleFileArgs,
}

#[derive(Args)]
struct WaitArgs {
    #[command(flatten)]
    role_file: RoleFileArgs,
    /// Give up with exit status 2 after this long (default: wait forever). Duration syntax: 500ms, 10s, 1.5m or 2h (units ms, s, m, h; a bare number is seconds).
    #[arg(long, env = "LEADERLOCK_WAIT_TIMEOUT", value_name = "DURATION", value_parser = contract::parse_duration)]
    timeout: Option<Duration>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    role_file: RoleFileArgs,
    /// How long CMD has between SIGTERM and SIGKILL, on demotion or shutdown. Duration syntax: 500ms, 10s, 1.5m or 2h (units ms, s, m, h; a bare number is seconds).
    #[arg(long, env = "LEADERLOCK_GRACE_PERIOD", default_value = "10s", value_name = "DURATION", value_parser = contract::parse_duration)]
    grace_period: Duration,
    /// How long a `leader` role found in the file at start (inherited: granted before this process
    /// started, perhaps already revoked) waits for a change of the file to confirm or revoke it before
    /// CMD starts on it anyway; 0 starts CMD at once. Duration syntax: 500ms, 10s, 1.5m or 2h (units ms, s, m, h; a bare number is seconds).
    #[arg(long, env = "LEADERLOCK_INHERITED_ROLE_WAIT", default_value = "5s", value_name = "DURATION", value_parser = contract::parse_duration)]
    inherited_role_wait: Duration,
    /// The command to run while leader, and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

#[derive(Args)]
struct ShardsArgs {
    /// Only locks whose name starts with this, e.g. `shard-` (default: every lock in the file).
    #[arg(long, env = "LEADERLOCK_LOCK_PREFIX", default_value = "", value_parser = leaderlock::podside::shards::parse_lock_prefix)]
    lock_prefix: String,
    /// The downward-API projection of `metadata.annotations`: every lock's role and fencing token.
    #[arg(long, env = "LEADERLOCK_ROLE_FILE", default_value = leaderlock::podside::DEFAULT_ROLE_FILE)]
    file: PathBuf,
    /// Where to write the set for CMD (one `<lock> <token>` line per lock led), replaced atomically
    /// on every change: a path in a writable directory such as an emptyDir.
    #[arg(long, env = "LEADERLOCK_SHARDS_FILE")]
    shards_file: PathBuf,
    /// Sent to CMD after every change of the shards file: a name such as SIGHUP, HUP or SIGUSR1.
    #[arg(long, env = "LEADERLOCK_SHARDS_SIGNAL", default_value = "SIGHUP", value_parser = leaderlock::podside::shards::parse_signal)]
    signal: nix::sys::signal::Signal,
    /// How long CMD has between SIGTERM and SIGKILL when it is stopped. Duration syntax: 500ms, 10s, 1.5m or 2h (units ms, s, m, h; a bare number is seconds).
    #[arg(long, env = "LEADERLOCK_GRACE_PERIOD", default_value = "10s", value_name = "DURATION", value_parser = contract::parse_duration)]
    grace_period: Duration,
    /// How long shards led in the file at start (inherited: granted before this process started,
    /// perhaps already revoked) stay out of the set while waiting for a change of the file to confirm
    /// or revoke them; 0 adds them at once. Duration syntax: 500ms, 10s, 1.5m or 2h (units ms, s, m, h; a bare number is seconds).
    #[arg(long, env = "LEADERLOCK_INHERITED_ROLE_WAIT", default_value = "5s", value_name = "DURATION", value_parser = contract::parse_duration)]
    inherited_role_wait: Duration,
    /// The command to run, and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

fn root_prefix(s: &str) -> Result<String, String> {
    if s.starts_with('/') && s.ends_with('/') { Ok(s.to_string()) } else { Err("the etcd prefix must start and end with '/'".into()) }
}

/// etcd grants leases in whole seconds; below 2 s a busy replica could lose its lease between
/// keep-alives, above 60 s a takeover would keep every LeaderLock waiting too long.
fn election_ttl_secs(text: &str) -> Result<i64, String> {
    let ttl = contract::parse_duration(text).map_err(|e| e.to_string())?;
    match i64::try_from(ttl.as_secs()) {
        Ok(secs @ 2..=60) if ttl.subsec_nanos() == 0 => Ok(secs),
        _ => Err(format!("{text:?} is not a whole number of seconds from 2s to 60s")),
    }
}

fn init_logging(cli: &Cli) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log_level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Cancels `shutdown` on SIGTERM or SIGINT: the root of the process's cancellation tree. The
/// controller (or the refusal) holds a child; once it has finished, the election is resigned
/// and the HTTP server stopped, in that order, each through its own token.
fn cancel_on_signal(shutdown: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down");
        shutdown.cancel();
    });
    Ok(())
}

async fn run_controller(args: Box<ControllerArgs>) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone())?;
    let etcd_cfg = EtcdConfig {
        endpoints: args.etcd_endpoints,
        ca_file: args.etcd_ca_file,
        cert_file: args.etcd_cert_file,
        key_file: args.etcd_key_file,
        username: args.etcd_username,
        password: args.etcd_password,
        call_timeout: args.etcd_timeout,
    };
    let etcd_client = etcd::connect(&etcd_cfg).await.context("connecting to etcd")?;
    let kube_client =
        kube::Client::try_default().await.context("cannot build a Kubernetes client from KUBECONFIG or the in-cluster config")?;
    let metrics = Arc::new(Metrics::default());
    let http = serve_http(&args.http, &kube_client, &metrics).await?;
    let cluster_id = match args.cluster_id {
        Some(id) => id,
        None => kube_system_uid(&kube_client).await?,
    };

    // A root registered to another cluster is not ours to serve: write nothing, not even an
    // election key, and say why (log, /readyz, every LeaderLock's Ready condition).
    let keyspace = Keyspace::new(args.etcd_prefix.clone(), args.allowed_key_prefixes.clone());
    if let Registration::Other(refusal) = registration::register(&etcd_client, &keyspace, &cluster_id, args.etcd_timeout)
        .await
        .with_context(|| format!("registering this cluster as the owner of {}", args.etcd_prefix))?
    {
        tracing::error!(root = %refusal.root, owner = %refusal.owner, cluster = %refusal.me, "{refusal}");
        metrics.set_not_ready(refusal.to_string());
        leaderlock::refusal::run(kube_client, args.namespace, refusal, shutdown.child_token()).await;
        http.shutdown().await;
        return Ok(());
    }
    tracing::info!(cluster = %cluster_id, root = %args.etcd_prefix, "serving this root as this cluster");

    // Only one replica acts at a time; the others wait on a watch of etcd's election key. The
    // election runs on its own thread and etcd connection, so no burst of reconciles can delay
    // the keep-alives that keep this replica active.
    let mut leadership =
        election::ElectionThread::start(etcd_cfg.clone(), args.etcd_prefix.clone(), args.instance.clone(), args.election_ttl)
            .context("starting the controller election")?;
    // A standby told to stop while it waits must not win the election on its way out: it would
    // hold it, serving nothing, until killed, and the lock leases would expire meanwhile.
    let key = tokio::select! {
        key = leadership.elected() => key.map_err(anyhow::Error::msg).context("campaigning in the controller election")?,
        () = shutdown.cancelled() => {
            leadership.resign().await;
            http.shutdown().await;
            return Ok(());
        }
    };
    metrics.set_active(true);
    tracing::info!(key = %key, "active: this replica reconciles");
    let engine_cfg =
        EngineConfig { root: args.etcd_prefix, allowed_prefixes: args.allowed_key_prefixes, call_timeout: args.etcd_timeout, cluster_id };
    let engine = Arc::new(Engine::start(etcd_client, engine_cfg).await.context("starting the lock engine (etcd mirror and leases)")?);
    let maps = controller::Maps::default();
    sample_maps(&metrics, &engine, &maps);
    let settings = Settings {
        instance: args.instance,
        metrics: metrics.clone(),
        namespace: args.namespace,
        concurrency: args.max_concurrent_reconciles,
        maps,
        resync_after: Some(args.resync_after).filter(|d| !d.is_zero()),
        node_lost_after: Some(args.node_lost_after).filter(|d| !d.is_zero()),
    };
    tokio::select! {
        () = controller::run(kube_client, engine.clone(), settings, shutdown.child_token()) => {
            leadership.resign().await;
            http.shutdown().await;
            Ok(())
        }
        () = leadership.lost() => {
            metrics.set_active(false);
            controller::demote_before_exit(&engine).await;
            anyhow::bail!("lost the controller election lease (etcd unreachable for longer than --election-ttl); exiting so a standby takes over")
        }
    }
}

/// Serves the probes and /metrics (docs/contract.md §5.3), /metrics secured unless opted out.
async fn serve_http(args: &HttpArgs, kube_client: &kube::Client, metrics: &Arc<Metrics>) -> anyhow::Result<http::Endpoints> {
    let certificate = match (&args.metrics_cert_file, &args.metrics_key_file) {
        (Some(cert), Some(key)) => http::tls::Certificate::Files { cert: cert.clone(), key: key.clone() },
        _ => http::tls::Certificate::SelfSigned,
    };
    let endpoint = if args.metrics_secure {
        let tls = http::tls::server_config(&certificate)?;
        http::Endpoint::SecureMetrics { tls, gate: Arc::new(http::auth::Gate::new(kube_client.clone())) }
    } else {
        anyhow::ensure!(
            matches!(certificate, http::tls::Certificate::SelfSigned),
            "--metrics-cert-file is for HTTPS, but --metrics-secure=false serves /metrics in plain HTTP; drop one of them"
        );
        http::Endpoint::PlainMetrics
    };
    let timeouts = http::Timeouts::default();
    let probes = http::Server::bind(args.probe_addr, http::Endpoint::Probes, metrics.clone(), timeouts).await?;
    tracing::info!(addr = %probes.local_addr(), "serving /healthz and /readyz (plain HTTP)");
    let scheme = if args.metrics_secure { "https" } else { "http" };
    let served = http::Server::bind(args.metrics_addr, endpoint, metrics.clone(), timeouts).await?;
    match (&certificate, args.metrics_secure) {
        (_, false) => {
            tracing::warn!(addr = %served.local_addr(), scheme, "serving /metrics in plain HTTP to anyone (--metrics-secure=false)")
        }
        (http::tls::Certificate::SelfSigned, true) => {
            tracing::info!(addr = %served.local_addr(), scheme, certificate = "self-signed", "serving /metrics to authorized callers")
        }
        (http::tls::Certificate::Files { cert, .. }, true) => {
            tracing::info!(addr = %served.local_addr(), scheme, certificate = %cert.display(), "serving /metrics to authorized callers")
        }
    }
    Ok(http::Endpoints { probes, metrics: served })
}

/// Exports every map that grows with churn as `leaderlock_map_entries{map}`, read at scrape time,
/// so a soak can show they stay flat (docs/contract.md §5).
fn sample_maps(metrics: &Metrics, engine: &Arc<Engine>, maps: &controller::Maps) {
    metrics.sample_watch_restarts(Box::new({
        let e = engine.clone();
        move || e.mirror().restarts()
    }));
    type Len = fn(&Engine) -> usize;
    let engine_maps: [(&'static str, Len); 4] = [
        ("engine_last_holder", |e| e.holder_map_len()),
        ("mirror_deleted_at", |e| e.mirror().deleted_at_len()),
        ("mirror_keys", |e| e.mirror().len()),
        ("lease_pool", |e| e.leases().len()),
    ];
    for (name, len) in engine_maps {
        let e = engine.clone();
        metrics.sample_map(name, Box::new(move || len(&e)));
    }
    for (name, _) in maps.sizes() {
        let m = maps.clone();
        metrics.sample_map(name, Box::new(move || m.sizes().iter().find(|(n, _)| *n == name).map_or(0, |(_, v)| *v)));
    }
}

/// The default cluster identity: the `kube-system` namespace's UID, stable for a cluster's life
/// and distinct between clusters.
async fn kube_system_uid(client: &kube::Client) -> anyhow::Result<ClusterId> {
    let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client.clone());
    let ns = api.get("kube-system").await.context(
        "cannot read the kube-system namespace's UID for the default --cluster-id; grant `get` on the kube-system namespace or set --cluster-id",
    )?;
    let uid = ns.metadata.uid.context("the kube-system namespace has no UID; set --cluster-id")?;
    ClusterId::new(uid).context("the kube-system namespace's UID is not a valid --cluster-id; set --cluster-id")
}

/// Caps glibc's malloc at two arenas. By default each thread that meets contention gets its own
/// (up to 8 per core), and memory freed in one arena is never reused by another: at 10,000
/// LeaderLocks that held about 12 MB of RSS that the heap no longer used (`make bench`).
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: first thing in main, before any other thread exists; mallopt only sets a parameter.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Prints the CRD named `kind` (a plural), or every CRD as one multi-document YAML stream.
fn print_crds(kind: Option<&str>) -> ExitCode {
    let all = leaderlock::resource::crds();
    let known: Vec<&str> = all.iter().map(|(k, _)| *k).collect();
    let chosen: Vec<_> = all.into_iter().filter(|(k, _)| kind.is_none_or(|want| want == *k)).collect();
    if chosen.is_empty() {
        eprintln!("error: no CRD named {:?}; choose one of {}", kind.unwrap_or_default(), known.join(", "));
        return ExitCode::from(2);
    }
    let mut docs = Vec::new();
    for (name, yaml) in chosen {
        match yaml {
            Ok(y) => docs.push(y),
            Err(e) => {
                eprintln!("error: cannot render the {name} CRD: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    print!("{}", docs.join("---\n"));
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    init_logging(&cli);
    match cli.command {
        Command::Crd { kind } => print_crds(kind.as_deref()),
        Command::CopySelf { dest } => match leaderlock::podside::copy_self(&dest) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Controller(args) => {
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(run_controller(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Role(args) => ExitCode::from(leaderlock::podside::role_main(&args.role_file.file, &args.role_file.lock)),
        Command::Wait(args) => ExitCode::from(leaderlock::podside::wait_main(&args.role_file.file, &args.role_file.lock, args.timeout)),
        Command::Run(args) => ExitCode::from(leaderlock::podside::run_main(
            &args.role_file.file,
            &args.role_file.lock,
            args.grace_period,
            args.inherited_role_wait,
            args.command,
        )),
        Command::Shards(args) => ExitCode::from(leaderlock::podside::shards_main(leaderlock::podside::ShardsOptions {
            file: args.file,
            lock_prefix: args.lock_prefix,
            shards_file: args.shards_file,
            signal: args.signal,
            grace: args.grace_period,
            inherited_wait: args.inherited_role_wait,
            command: args.command,
        })),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// Forms every duration flag takes, all within `--election-ttl`'s range, and what they mean.
    const FORMS: [(&str, Duration); 6] = [
        ("3", Duration::from_secs(3)),
        ("3s", Duration::from_secs(3)),
        ("3000ms", Duration::from_secs(3)),
        ("0.5m", Duration::from_secs(30)),
        ("1m", Duration::from_secs(60)),
        (" 45s", Duration::from_secs(45)),
    ];

    #[test]
    fn every_duration_flag_of_every_subcommand_takes_the_one_syntax_and_says_so() {
        let cli = Cli::command();
        let mut durations = Vec::new();
        for sub in cli.get_subcommands() {
            for arg in sub.get_arguments() {
                let flag = arg.get_long().unwrap_or_default();
                let is_duration = arg.get_value_names().is_some_and(|names| names == ["DURATION"]);
                let named_like_one = ["timeout", "period", "ttl", "interval", "delay", "wait", "after"].iter().any(|w| flag.ends_with(w));
                assert_eq!(is_duration, named_like_one, "{} --{flag}: a duration flag has the value name DURATION", sub.get_name());
                if !is_duration {
                    continue;
                }
                let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
                assert!(help.contains(contract::DURATION_SYNTAX), "{} --{flag} help does not give the syntax: {help}", sub.get_name());
                // Only this flag is judged: nothing else is required.
                let alone = sub.clone().mut_args(|arg| arg.required(false));
                for (form, _) in FORMS {
                    let parsed = alone.clone().try_get_matches_from([sub.get_name().to_string(), format!("--{flag}={form}")]);
                    assert!(parsed.is_ok(), "{} --{flag} {form:?}: {parsed:?}", sub.get_name());
                }
                durations.push(format!("{} --{flag}", sub.get_name()));
            }
        }
        assert_eq!(
            durations,
            [
                "controller --etcd-timeout",
                "controller --election-ttl",
                "controller --resync-after",
                "wait --timeout",
                "run --grace-period",
                "run --inherited-role-wait",
                "shards --grace-period",
                "shards --inherited-role-wait"
            ]
        );
    }

    #[test]
    fn etcd_timeout_and_the_pod_side_durations_mean_the_same_thing() {
        for (form, expected) in FORMS.into_iter().chain([
            ("500ms", Duration::from_millis(500)),
            ("1.5s", Duration::from_millis(1500)),
            ("1h", Duration::from_secs(3600)),
        ]) {
            let Ok(Cli { command: Command::Controller(args), .. }) =
                Cli::try_parse_from(["leaderlock", "controller", "--etcd-timeout", form])
            else {
                panic!("--etcd-timeout {form} refused");
            };
            assert_eq!(args.etcd_timeout, expected, "--etcd-timeout {form}");
            let Ok(Cli { command: Command::Run(args), .. }) =
                Cli::try_parse_from(["leaderlock", "run", "--lock", "l", "--grace-period", form, "--", "true"])
            else {
                panic!("--grace-period {form} refused");
            };
            assert_eq!(args.grace_period, expected, "--grace-period {form}");
        }
    }

    #[test]
    fn the_election_ttl_is_whole_seconds_from_2_to_60() {
        for (form, secs) in [("2", 2), ("3", 3), ("60", 60), ("5s", 5), ("1m", 60), ("2000ms", 2)] {
            assert_eq!(election_ttl_secs(form), Ok(secs), "{form}");
        }
        for bad in ["1", "61", "1.5", "2500ms", "2h", "0", "soon"] {
            assert!(election_ttl_secs(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(election_ttl_secs("61").unwrap_err(), "\"61\" is not a whole number of seconds from 2s to 60s");
    }
}
