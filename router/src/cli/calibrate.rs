//! `switchyard calibrate`: thresholds chosen from evidence (see
//! [`switchyard::routing::calibration`]) and written into the policy file,
//! its comments and layout kept.

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::{Value, json};
use switchyard::policy::{AmbiguousChoice, Policy, edit};
use switchyard::routing::calibration::{Row, calibrate};
use switchyard::routing::difficulty::DifficultyModel;
use switchyard::routing::difficulty::data::{self, read_jsonl_lines};

use super::route::{row_request, score_request};

#[derive(clap::Args)]
pub struct CalibrateArgs {
    /// Labelled rows (`labels`, `strong`, `weak`, with `prompt` or
    /// `messages`), or shadow and audit rows (`score` with `agreement`, or
    /// `local.agreement` as `audit` writes them in `rows.jsonl`).
    #[arg(long)]
    input: PathBuf,
    /// The share of the remote model's quality to keep.
    #[arg(long, default_value_t = 0.95)]
    target_quality: f64,
    /// The probability the guarantee holds, over the rows given.
    #[arg(long, default_value_t = 0.9)]
    confidence: f64,
    /// The policy whose `routing.thresholds` are set.
    #[arg(long)]
    policy: PathBuf,
    /// Print the thresholds without writing them.
    #[arg(long)]
    dry_run: bool,
}

pub fn run(args: &CalibrateArgs) -> ExitCode {
    super::exit_code("calibrate", calibrate_policy(args))
}

/// A row's evidence: labelled qualities, or a local answer's agreement with
/// the remote one (the reference, quality 1).
fn evidence(row: &Value, model: &DifficultyModel) -> Result<Option<Row>, String> {
    let agreement = row["agreement"].as_f64().or_else(|| row["local"]["agreement"].as_f64());
    if let (Some(score), Some(agreement)) = (row["score"].as_f64(), agreement) {
        return Ok(Some(Row {
            score: score as f32,
            strong: 1.0,
            weak: agreement.clamp(0.0, 1.0),
        }));
    }
    if row.get("labels").is_none() {
        return Ok(None);
    }
    let request = row_request(row)?;
    let mut probe = row.clone();
    probe["prompt"] = Value::String(switchyard::routing::features::text_for_scoring(&request));
    match data::labelled(&probe) {
        Ok(example) => Ok(Some(Row {
            score: score_request(model, &request),
            strong: example.strong,
            weak: example.weak,
        })),
        Err(data::NotAnExample::Unlabelled) => Ok(None),
        Err(data::NotAnExample::Invalid(why)) => Err(why),
    }
}

fn calibrate_policy(args: &CalibrateArgs) -> Result<(), String> {
    let text = std::fs::read_to_string(&args.policy).map_err(|e| format!("{}: {e}", args.policy.display()))?;
    let policy = Policy::load(&args.policy).map_err(|e| e.in_file(&args.policy))?;
    // The model the daemon would score with under this policy.
    let configured = DifficultyModel::of_policy(&policy)?;
    let model = configured.as_ref().unwrap_or_else(|| DifficultyModel::embedded());
    let mut rows = Vec::new();
    let mut without_evidence = 0usize;
    for (line, row) in read_jsonl_lines(&args.input)? {
        match evidence(&row, model).map_err(|why| format!("{}:{line}: {why}", args.input.display()))? {
            Some(row) => rows.push(row),
            None => without_evidence += 1,
        }
    }
    let calibrated = calibrate(&rows, args.target_quality, args.confidence)?;
    // Every request scoring below the threshold is answered locally, by
    // either local tier, and none above it.
    let current = policy.routing.thresholds();
    let t = calibrated.threshold;
    let (local_below, remote_above) = match current.ambiguous {
        AmbiguousChoice::LocalReasoning => (current.local_below.min(t), t),
        AmbiguousChoice::Remote => (t, current.remote_above.max(t)),
    };
    let out = json!({
        "rows": calibrated.rows,
        "rows_without_evidence": without_evidence,
        "target_quality": args.target_quality,
        "confidence": args.confidence,
        "threshold": calibrated.threshold,
        "expected_local_share": calibrated.local_share,
        "retention_on_these_rows": calibrated.retention,
        "local_below": local_below,
        "remote_above": remote_above,
        "written": !args.dry_run,
    });
    println!("{}", serde_json::to_string_pretty(&out).expect("JSON"));
    if !args.dry_run {
        let edited = edit::set_thresholds(&text, local_below, remote_above)?;
        // The file a symlink names is the one changed, and it keeps its
        // permissions.
        let target = std::fs::canonicalize(&args.policy).map_err(|e| format!("{}: {e}", args.policy.display()))?;
        let permissions = std::fs::metadata(&target).map(|m| m.permissions());
        let partial = target.with_extension("calibrating");
        std::fs::write(&partial, edited)
            .and_then(|()| permissions.and_then(|p| std::fs::set_permissions(&partial, p)))
            .and_then(|()| std::fs::rename(&partial, &target))
            .map_err(|e| format!("{}: {e}", target.display()))?;
        eprintln!(
            "{}: routing.thresholds set to local_below {local_below}, remote_above {remote_above}; about {:.0}% of traffic like this stays local",
            args.policy.display(),
            100.0 * calibrated.local_share
        );
    }
    Ok(())
}
