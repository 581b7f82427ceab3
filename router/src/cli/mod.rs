//! The subcommands besides `serve` and `policy check` (which live in
//! `main.rs`): each is a thin layer over the library, for operators and for
//! the research behind the routing model.
//!
//! - [`local`]: `switchyard generate` and `switchyard chat`, the local engine from the terminal.
//! - [`route`]: `switchyard route ...`, the difficulty model: score, evaluate, train, explain, time;
//!   [`label`]: `route label`, the local model's own correctness as labels.
//! - [`ladder`]: `switchyard ladder eval`, what confidence-based escalation buys on labelled data.
//! - [`audit`]: `switchyard audit`, logged traffic replayed through a policy.
//! - [`calibrate`]: `switchyard calibrate`, thresholds from evidence, written into the policy.
//! - [`budgets`]: `switchyard budgets import`, a single daemon's spend moved into the shared store.

use std::process::ExitCode;

pub mod audit;
pub mod budgets;
pub mod calibrate;
pub mod label;
pub mod ladder;
pub mod local;
pub mod route;

/// A subcommand's exit: success, or its error on stderr, each line prefixed
/// with `switchyard COMMAND:` so that a script's log says which command failed.
pub fn exit_code(command: &str, result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            for line in err.lines() {
                eprintln!("switchyard {command}: {line}");
            }
            ExitCode::FAILURE
        }
    }
}
