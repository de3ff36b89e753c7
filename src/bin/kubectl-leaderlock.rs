//! `kubectl leaderlock`, the kubectl plugin (docs/contract.md §5.8): parses flags and hands
//! them to `leaderlock::plugin`; no logic lives here.
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use leaderlock::contract;
use leaderlock::plugin::connect::{self, Target};
use leaderlock::plugin::{PluginError, exit, pause, request, status};

const EXIT_STATUS: &str = "\
Exit status:
  0  success; with --wait, the Handover is Done (or the Paused condition followed)
  1  the controller refused or superseded the request; stderr has `refused: <Reason>: <message>`
     (or `superseded: ...`)
  2  usage error, or the LeaderLock or its lock does not exist
  3  --timeout passed while waiting (a Handover stays and may still be carried out)
  4  kubeconfig or API error (unreachable apiserver, RBAC refusal, missing CRD)";

#[derive(Parser)]
#[command(
    name = "kubectl-leaderlock",
    bin_name = "kubectl leaderlock",
    version,
    about = "Show and move LeaderLock leadership: status, handover, step-down, pause, resume",
    after_help = EXIT_STATUS
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Namespace of the LeaderLock (default: the kubeconfig context's namespace).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, global = true)]
    context: Option<String>,
    /// Path to one kubeconfig file (default: KUBECONFIG, a list of files, or ~/.kube/config; else in-cluster).
    #[arg(long, global = true, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Every lock of the namespace's LeaderLocks (or of NAME): holder, fencing token, candidates, since, paused.
    #[command(after_help = "Examples:
  kubectl leaderlock status
  kubectl leaderlock status payments -o wide      # adds each lock's queue, holder first
  kubectl leaderlock status -A -o json            # every namespace, status as JSON

Exit status: 0; 2 when NAME does not exist; 4 on an API error.")]
    Status(StatusArgs),
    /// Move a lock to the candidate pod --to (or, without --to, away from its holder to the next in line).
    #[command(after_help = HANDOVER_HELP)]
    Handover(HandoverArgs),
    /// Move a lock away from its holder to the next in line (a Handover without --to).
    #[command(after_help = STEP_DOWN_HELP)]
    StepDown(StepDownArgs),
    /// Freeze every holder of a LeaderLock: no failover, no handover (sets spec.paused).
    #[command(after_help = "Examples:
  kubectl leaderlock pause payments --wait        # returns once the Paused condition is True

Exit status: 0; 2 when the LeaderLock does not exist; 3 on --timeout; 4 on an API error.")]
    Pause(PauseArgs),
    /// Undo `pause`: holders move again as candidates come and go (clears spec.paused).
    #[command(after_help = "Examples:
  kubectl leaderlock resume payments --wait       # returns once the Paused condition is False

Exit status: 0; 2 when the LeaderLock does not exist; 3 on --timeout; 4 on an API error.")]
    Resume(PauseArgs),
}

const HANDOVER_HELP: &str = "Examples:
  kubectl leaderlock handover payments --lock ledger --to payments-worker-2 --wait
  kubectl leaderlock handover payments --to payments-worker-2 --if-holder payments-worker-1 --wait --timeout 1m

Prints the Handover's name; with --wait, then `done: <Reason>: lock <lock> held by <pod> (fencing token <t>, ...)`.
--lock may be left out when the LeaderLock has exactly one lock.

Exit status: 0 created (with --wait: Done); 1 refused or superseded (`refused: <Reason>: <message>` on stderr);
2 usage or not found; 3 --timeout passed; 4 API error.";

const STEP_DOWN_HELP: &str = "Examples:
  kubectl leaderlock step-down payments --lock ledger --wait
  kubectl leaderlock step-down payments --if-holder payments-worker-1 --wait

Exit status: 0 created (with --wait: Done); 1 refused or superseded (`refused: <Reason>: <message>` on stderr);
2 usage or not found; 3 --timeout passed; 4 API error.";

#[derive(Args)]
struct StatusArgs {
    /// Only this LeaderLock.
    name: Option<String>,
    /// LeaderLocks of every namespace (adds a NAMESPACE column).
    #[arg(short = 'A', long, conflicts_with = "name")]
    all_namespaces: bool,
    /// Output format: table, wide (adds the queue), json or yaml.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: status::Format,
}

#[derive(Args)]
struct Waiting {
    /// Wait until the controller reaches a final answer, and print it.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits. Duration syntax: 500ms, 10s, 1.5m or 2h (units ms, s, m, h; a bare number is seconds).
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = contract::parse_duration)]
    timeout: Duration,
}

impl Waiting {
    fn deadline(&self) -> Option<Duration> {
        self.wait.then_some(self.timeout)
    }
}

#[derive(Args)]
struct Move {
    /// The LeaderLock whose lock moves.
    name: String,
    /// The lock to move (optional when the LeaderLock has only one).
    #[arg(long, value_parser = contract::parse_lock_name)]
    lock: Option<String>,
    /// Compare-and-swap guard: move only if this pod holds the lock when the controller judges the request.
    #[arg(long, value_name = "POD")]
    if_holder: Option<String>,
    #[command(flatten)]
    waiting: Waiting,
}

#[derive(Args)]
struct HandoverArgs {
    /// The candidate pod to hand the lock to (default: the next in line, as step-down).
    #[arg(long, value_name = "POD")]
    to: Option<String>,
    #[command(flatten)]
    target: Move,
}

#[derive(Args)]
struct StepDownArgs {
    #[command(flatten)]
    target: Move,
}

#[derive(Args)]
struct PauseArgs {
    /// The LeaderLock.
    name: String,
    #[command(flatten)]
    waiting: Waiting,
}

fn request_of(m: Move, to: Option<String>) -> request::Request {
    request::Request { leaderlock: m.name, lock: m.lock, to, if_holder: m.if_holder, wait: m.waiting.deadline() }
}

async fn run(cli: Cli) -> Result<(), PluginError> {
    let target = Target { kubeconfig: cli.kubeconfig, context: cli.context, namespace: cli.namespace };
    let conn = connect::connect(&target).await?;
    let out = &mut std::io::stdout();
    match cli.command {
        Command::Status(a) => {
            let query = status::Query { name: a.name, all_namespaces: a.all_namespaces, format: a.output };
            status::run(&conn, &query, out).await
        }
        Command::Handover(a) => request::run(&conn, &request_of(a.target, a.to), out).await,
        Command::StepDown(a) => request::run(&conn, &request_of(a.target, None), out).await,
        Command::Pause(a) => pause::run(&conn, &pause_of(a, true), out).await,
        Command::Resume(a) => pause::run(&conn, &pause_of(a, false), out).await,
    }
}

fn pause_of(a: PauseArgs, paused: bool) -> pause::Pause {
    pause::Pause { leaderlock: a.name, paused, wait: a.waiting.deadline() }
}

fn main() -> ExitCode {
    // Usage errors exit 2 (clap's own status); --help and --version exit 0.
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::API);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => {
            eprintln!("{}", e.stderr_line());
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn timeout_means_nothing_without_wait_and_defaults_to_30s() {
        let Ok(Cli { command: Command::StepDown(a), namespace, .. }) =
            Cli::try_parse_from(["kubectl-leaderlock", "step-down", "payments", "-n", "shop", "--timeout", "1.5m"])
        else {
            panic!("step-down refused");
        };
        assert_eq!((a.target.waiting.deadline(), namespace.as_deref()), (None, Some("shop")));
        let Ok(Cli { command: Command::Pause(a), .. }) =
            Cli::try_parse_from(["kubectl-leaderlock", "-n", "shop", "pause", "payments", "--wait"])
        else {
            panic!("pause refused");
        };
        assert_eq!(a.waiting.deadline(), Some(Duration::from_secs(30)));
    }
}
