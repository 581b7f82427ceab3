//! `switchyard ladder eval`: what confidence-based escalation buys on labelled data.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::Value;
use switchyard::backends::local::LocalBackend;
use switchyard::ladder::eval::{Row, evaluate};
use switchyard::policy::{AmbiguousChoice, Policy};

#[derive(clap::Args)]
pub struct EvalArgs {
    /// The policy whose local backend, thresholds and ladder settings are used.
    #[arg(long)]
    policy: PathBuf,
    /// Labelled rows (routing data format, with `strong` and `weak`).
    #[arg(long)]
    input: PathBuf,
    /// `{"id", "score"}` rows, as `switchyard route score` writes them.
    #[arg(long)]
    scores: PathBuf,
    /// Rows to use, from the top of the file (the local model answers each
    /// row kept local, which takes a while).
    #[arg(long, default_value_t = 400)]
    limit: usize,
    /// The client's `max_tokens` for each local answer.
    #[arg(long, default_value_t = 32)]
    max_tokens: u64,
    /// Score below which a row is kept local (default: the policy's remote cut).
    #[arg(long)]
    cut: Option<f32>,
}

fn read_jsonl(path: &Path) -> Result<Vec<Value>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    std::io::BufReader::new(file)
        .lines()
        .enumerate()
        .filter(|(_, line)| line.as_ref().map_or(true, |l| !l.trim().is_empty()))
        .map(|(i, line)| {
            let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
            serde_json::from_str(&line).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))
        })
        .collect()
}

pub fn eval(args: &EvalArgs) -> ExitCode {
    super::exit_code("ladder eval", run(args))
}

fn run(args: &EvalArgs) -> Result<(), String> {
    let policy = Policy::load(&args.policy).map_err(|e| e.to_string())?;
    let local_name = policy
        .routing
        .local_backend()
        .ok_or("the policy has no routing.local_backend")?;
    let config = policy
        .backends
        .local
        .iter()
        .find(|b| b.name() == local_name)
        .ok_or("routing.local_backend is not a local backend")?;
    let scores: HashMap<String, f32> = read_jsonl(&args.scores)?
        .iter()
        .filter_map(|v| Some((v["id"].as_str()?.to_string(), v["score"].as_f64()? as f32)))
        .collect();
    let rows: Vec<Row> = read_jsonl(&args.input)?
        .iter()
        .filter_map(|v| Row::from_labelled(v, &scores))
        .take(args.limit)
        .collect();
    if rows.is_empty() {
        return Err("no labelled row with strong/weak labels and a score".into());
    }
    let thresholds = policy.routing.thresholds();
    let cut = args.cut.unwrap_or(match thresholds.ambiguous {
        AmbiguousChoice::Remote => thresholds.local_below,
        AmbiguousChoice::LocalReasoning => thresholds.remote_above,
    });
    let local = LocalBackend::load(config, &policy.base_dir);
    local.readiness()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let report = runtime.block_on(evaluate(&local, &rows, cut, args.max_tokens, &policy.ladder))?;
    println!(
        "{} rows; all weak {:.3}, all strong {:.3}; cut {:.3}",
        report.rows, report.all_weak, report.all_strong, report.cut
    );
    println!("| strategy | kept local | quality | PGR |\n|---|---:|---:|---:|");
    for s in &report.strategies {
        println!(
            "| {} | {:.1}% | {:.3} | {:.3} |",
            s.name,
            100.0 * s.local_share,
            s.quality,
            s.pgr
        );
    }
    let mut escalations: Vec<_> = report.escalations.iter().collect();
    escalations.sort();
    println!("escalations: {escalations:?}");
    println!("\ncalibration of ladder.min_mean_logprob (escalating the least confident local answers):");
    println!("| min_mean_logprob | kept local | ladder PGR | routing alone PGR, same share |\n|---:|---:|---:|---:|");
    for p in &report.sweep {
        println!(
            "| {:.3} | {:.1}% | {:.3} | {:.3} |",
            p.min_mean_logprob,
            100.0 * p.local_share,
            p.ladder_pgr,
            p.routing_alone_pgr
        );
    }
    Ok(())
}
