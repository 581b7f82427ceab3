//! The `switchyard` command line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod cli;

use clap::{Parser, Subcommand};
use switchyard::policy::{Policy, PolicyError};

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "OpenAI-compatible proxy that routes LLM calls to a local model or the cloud"
)]
struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        #[arg(long)]
        policy: PathBuf,
        /// Overrides `server.listen` from the policy.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Work with policy files.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Generate from a raw prompt with a local model (no chat template).
    Generate(cli::local::GenerateArgs),
    /// Chat with a local model in the terminal.
    Chat(cli::local::ChatArgs),
    /// The routing brain: score, evaluate, train, explain, time.
    Route {
        #[command(subcommand)]
        command: cli::route::RouteCommand,
    },
    /// Replay logged traffic through a policy: where it would go, what it
    /// would cost, what it would save (summary.json, report.html).
    Audit(cli::audit::AuditArgs),
    /// Choose the routing thresholds that keep a target share of the remote
    /// model's quality at a stated confidence, and write them into the policy.
    Calibrate(cli::calibrate::CalibrateArgs),
    /// The escalation ladder.
    Ladder {
        #[command(subcommand)]
        command: LadderCommand,
    },
    /// Budgets kept in the shared state store.
    Budgets {
        #[command(subcommand)]
        command: BudgetsCommand,
    },
}

#[derive(Subcommand)]
enum BudgetsCommand {
    /// Add the spend a single daemon kept in its budgets.state_file to the
    /// shared store's books (once per file), when its budgets move there.
    Import(cli::budgets::ImportArgs),
}

#[derive(Subcommand)]
enum LadderCommand {
    /// Compare routing alone with routing plus the ladder on labelled data.
    Eval(cli::ladder::EvalArgs),
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a policy file; print each problem as FILE:LINE:COLUMN: MESSAGE.
    Check { file: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Serve { .. }) {
        switchyard::memory::limit_arenas();
    } else {
        die_quietly_on_closed_stdout();
    }
    let _telemetry = switchyard::telemetry::init(cli.log_json);
    match cli.command {
        Command::Serve { policy, listen } => serve(&policy, listen),
        Command::Policy {
            command: PolicyCommand::Check { file },
        } => check(&file),
        Command::Generate(args) => cli::local::generate(&args),
        Command::Chat(args) => cli::local::chat(&args),
        Command::Ladder {
            command: LadderCommand::Eval(args),
        } => cli::ladder::eval(&args),
        Command::Route { command } => cli::route::run(&command),
        Command::Audit(args) => cli::audit::run(&args),
        Command::Calibrate(args) => cli::calibrate::run(&args),
        Command::Budgets {
            command: BudgetsCommand::Import(args),
        } => cli::budgets::import(&args),
    }
}

fn serve(path: &Path, listen: Option<SocketAddr>) -> ExitCode {
    let policy = match Policy::load(path) {
        Ok(policy) => policy,
        Err(err) => {
            report_policy_error(path, &err);
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime starts");
    match runtime.block_on(switchyard::server::serve(policy, path, listen)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("switchyard: {err}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &Path) -> ExitCode {
    match Policy::load(path) {
        Ok(_) => {
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(err) => {
            report_policy_error(path, &err);
            ExitCode::FAILURE
        }
    }
}

fn report_policy_error(path: &Path, err: &PolicyError) {
    eprintln!("{}", err.in_file(path));
}

/// A command whose output is piped into `head` stops when the reader leaves,
/// as Unix tools do, instead of panicking on the broken pipe. Rust ignores
/// SIGPIPE for every program; the daemon keeps that (a client that hangs up
/// is an error on one socket, not the end of the process), the other commands
/// restore the default.
fn die_quietly_on_closed_stdout() {
    // SAFETY: called once at start-up, before any thread exists; SIG_DFL is
    // a valid disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
