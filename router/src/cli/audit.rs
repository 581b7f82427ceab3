//! `switchyard audit`: replays a team's logged requests through a policy and
//! writes what it would have cost and where it would have gone
//! (`summary.json`, `report.html`), with `--sample N --local` the local
//! model's own answers to N of them compared with the logged ones.
//!
//! Each replayed request is appended to `OUT/rows.jsonl` as it is done, so an
//! interrupted audit run again with the same `--out` carries on where it
//! stopped (a line cut by the interruption is dropped and done again).

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use serde_json::{Value, json};
use switchyard::audit::summary::{shadow_figures, summarise};
use switchyard::audit::{LocalCheck, Logged, Replayed, Replayer, agreement, judge as judge_answer, report};
use switchyard::backends::local::{GreedyEnd, LocalBackend};
use switchyard::backends::remote::RemoteBackend;
use switchyard::live::Live;
use switchyard::policy::Policy;
use switchyard::routing::features::text_for_scoring;

#[derive(clap::Args)]
pub struct AuditArgs {
    /// Logged traffic: JSON Lines of request bodies, batch-file lines, or
    /// logged calls (`request`, `response`, `usage`, `latency_ms`, `cost_usd`, `timestamp`).
    #[arg(long)]
    input: PathBuf,
    /// The policy to replay them through.
    #[arg(long)]
    policy: PathBuf,
    /// Where `summary.json`, `report.html` and `rows.jsonl` go.
    #[arg(long)]
    out: PathBuf,
    /// The model each request is replayed as: a routing profile (`auto`,
    /// an alias), so the policy routes it.
    #[arg(long, default_value = "auto")]
    model: String,
    /// The days the log covers, for the monthly projection (default: the
    /// span of its timestamps).
    #[arg(long)]
    period_days: Option<f64>,
    /// Answer this many logged requests (ones with a logged answer) with the
    /// local model and compare (needs --local).
    #[arg(long, default_value_t = 0, requires = "local")]
    sample: usize,
    /// Run the policy's local model for the sampled requests.
    #[arg(long)]
    local: bool,
    /// The most tokens a sampled local answer may take.
    #[arg(long, default_value_t = 256)]
    max_tokens: u64,
    /// A remote backend of the policy that judges the sampled open answers
    /// (yes or no: as good as the logged one?) instead of word overlap: one
    /// paid call per open answer, its cost reported (needs --local).
    #[arg(long, requires = "local")]
    judge: Option<String>,
    /// Shadow mode's file (`shadow.file`): its comparisons of live traffic
    /// join the summary.
    #[arg(long)]
    shadow: Option<PathBuf>,
}

pub fn run(args: &AuditArgs) -> ExitCode {
    super::exit_code("audit", audit(args))
}

/// The lines already replayed in `rows.jsonl` (and the unreadable ones in
/// `skipped.jsonl`), with each file cut back to its last whole line.
fn resume(path: &Path) -> Result<Vec<Value>, String> {
    let Ok(mut file) = OpenOptions::new().read(true).write(true).open(path) else {
        return Ok(Vec::new());
    };
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let whole = text.rfind('\n').map_or(0, |at| at + 1);
    if whole < text.len() {
        file.set_len(whole as u64)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    text[..whole]
        .lines()
        .map(|line| serde_json::from_str(line).map_err(|e| format!("{}: {e}", path.display())))
        .collect()
}

fn append(path: &Path) -> Result<File, String> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes `text` to `path` whole or not at all.
fn write_atomically(path: &Path, text: &str) -> Result<(), String> {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text)
        .and_then(|()| std::fs::rename(&partial, path))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// A line's place in the sampling order: a hash of its number, the same on
/// every run (so a resumed audit samples the same lines).
fn rank(line: usize) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (line, "switchyard-audit").hash(&mut hasher);
    hasher.finish()
}

fn audit(args: &AuditArgs) -> Result<(), String> {
    let policy = Policy::load(&args.policy).map_err(|e| e.in_file(&args.policy))?;
    let live = Live::build_offline(&policy).map_err(|e| e.in_file(&args.policy))?;
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let rows_path = args.out.join("rows.jsonl");
    let skipped_path = args.out.join("skipped.jsonl");
    let mut rows: Vec<Replayed> = resume(&rows_path)?
        .into_iter()
        .map(|v| serde_json::from_value(v).map_err(|e| format!("{}: {e}", rows_path.display())))
        .collect::<Result<_, _>>()?;
    let skipped = resume(&skipped_path)?;
    let mut done: HashSet<usize> = rows.iter().map(|r| r.line).collect();
    done.extend(skipped.iter().filter_map(|s| s["line"].as_u64().map(|l| l as usize)));
    let mut unreadable = skipped.len();
    if !done.is_empty() {
        eprintln!("resuming: {} lines already replayed", done.len());
    }

    let open_input = || File::open(&args.input).map_err(|e| format!("{}: {e}", args.input.display()));
    // A first pass counts the requests and draws the sample: of the lines
    // that hold a logged answer, the N whose line numbers hash lowest (the
    // same lines on every run, spread over the whole log).
    let mut total = 0usize;
    let mut answered = Vec::new();
    for (index, line) in BufReader::new(open_input()?).lines().map_while(Result::ok).enumerate() {
        if !line.trim().is_empty() {
            total += 1;
            if line.contains("\"response\"") {
                answered.push((rank(index + 1), index + 1));
            }
        }
    }
    answered.sort_unstable();
    let sample: HashSet<usize> = answered.iter().take(args.sample).map(|(_, line)| *line).collect();
    let local = if args.local {
        let local = live
            .backends
            .all()
            .iter()
            .find_map(|b| b.as_local().filter(|l| !l.embeds()))
            .ok_or("--local: the policy has no local model")?;
        local.readiness().map_err(|e| format!("--local: {e}"))?;
        Some(local)
    } else {
        None
    };
    let judge = match &args.judge {
        None => None,
        Some(name) => {
            let remote = live
                .backends
                .all()
                .iter()
                .find_map(|b| b.as_remote().filter(|remote| remote.name() == name))
                .ok_or_else(|| format!("--judge: the policy has no remote backend named {name:?}"))?;
            remote.readiness().map_err(|e| format!("--judge: {e}"))?;
            Some(remote)
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;

    let replayer = Replayer::new(&live);
    let mut rows_file = append(&rows_path)?;
    let mut skipped_file = append(&skipped_path)?;
    let progress = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut line_no = 0usize;
    let mut seen = 0usize;
    for line in BufReader::new(open_input()?).lines() {
        line_no += 1;
        let line = line.map_err(|e| format!("{}:{line_no}: {e}", args.input.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        seen += 1;
        if progress && (seen.is_multiple_of(50) || seen == total) {
            eprint!(
                "\r{seen}/{total} requests ({:.0}%), {:.0}s",
                100.0 * seen as f64 / total.max(1) as f64,
                started.elapsed().as_secs_f64()
            );
        }
        if done.contains(&line_no) {
            continue;
        }
        let parsed = serde_json::from_str::<Value>(&line)
            .map_err(|e| format!("not JSON: {e}"))
            .and_then(|row| Logged::parse(&row, line_no, &args.model));
        let logged = match parsed {
            Ok(logged) => logged,
            Err(why) => {
                unreadable += 1;
                let entry = json!({ "line": line_no, "error": why });
                writeln!(skipped_file, "{entry}").map_err(|e| e.to_string())?;
                continue;
            }
        };
        let mut row = replayer.replay(line_no, &logged);
        if let (Some(local), Some(answer)) = (&local, &logged.answer)
            && sample.contains(&line_no)
        {
            // A request the local model cannot take (too long, refused) is
            // reported and left uncompared; the audit goes on.
            // A request a privacy rule keeps on the machine is never shown to a remote judge.
            let judge = judge.filter(|_| row.privacy_rule.is_none());
            match runtime.block_on(check_locally(local, &logged, answer, args.max_tokens, judge)) {
                Ok(check) => row.local = Some(check),
                Err(why) => eprintln!("\nwarning: line {line_no}: not compared: {why}"),
            }
        }
        // One write per row: an interruption loses at most the row being written.
        let mut text = serde_json::to_string(&row).map_err(|e| e.to_string())?;
        text.push('\n');
        rows_file.write_all(text.as_bytes()).map_err(|e| e.to_string())?;
        rows.push(row);
    }
    if progress {
        eprintln!();
    }
    rows_file.flush().map_err(|e| e.to_string())?;
    let sampled = rows.iter().filter(|r| r.local.is_some()).count();
    if args.sample > sampled {
        eprintln!(
            "warning: sampled {sampled} of the {} asked (only lines with a logged answer are compared)",
            args.sample
        );
    }
    rows.sort_by_key(|r| r.line);
    let shadow = match &args.shadow {
        None => None,
        Some(path) => {
            // A last line cut by a kill is not JSON: it is skipped.
            let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let lines: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
            shadow_figures(&lines)
        }
    };
    let summary = summarise(&rows, unreadable, args.period_days, shadow);
    let summary_json = serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?;
    write_atomically(&args.out.join("summary.json"), &summary_json)?;
    let source = format!("{} through {}", args.input.display(), args.policy.display());
    write_atomically(&args.out.join("report.html"), &report::render(&summary, &source))?;
    eprintln!(
        "{} requests ({} unreadable lines): {:.1}% kept local, ${:.4} as logged, ${:.4} under the policy; {}",
        summary.rows,
        unreadable,
        100.0 * summary.at_policy.local_share,
        summary.cost.logged_usd,
        summary.cost.policy_usd,
        args.out.join("report.html").display()
    );
    Ok(())
}

/// The local model's answer to a logged request, compared with the logged answer.
async fn check_locally(
    local: &LocalBackend,
    logged: &Logged,
    answer: &str,
    max_tokens: u64,
    judge: Option<&RemoteBackend>,
) -> Result<LocalCheck, String> {
    let started = Instant::now();
    let (text, tokens) = local
        .greedy_answer(logged.request.messages(), max_tokens, false, "audit", |_| false)
        .await
        .map_err(|end| match end {
            GreedyEnd::Failed(why) => why,
            GreedyEnd::GaveWay => "the local model gave way".to_string(),
        })?;
    let latency_ms = started.elapsed().as_secs_f64() * 1e3;
    let (mut agreement, mut method) = agreement(&text, answer);
    let mut judge_cost_usd = None;
    // An open answer goes to the judge, when there is one; a judge that
    // fails or answers neither yes nor no leaves the word overlap (and what
    // the call cost, paid all the same).
    if let Some(remote) = judge
        && method == "similarity"
    {
        let request = text_for_scoring(&logged.request);
        match judge_answer(remote, &request, answer, &text, &format!("audit-judge-{}", logged.id)).await {
            Ok(judgement) => {
                judge_cost_usd = Some(judgement.cost_usd);
                match judgement.verdict {
                    Ok(verdict) => {
                        agreement = f64::from(u8::from(verdict));
                        method = "judge";
                    }
                    Err(why) => eprintln!("\nwarning: request {}: not judged: {why}", logged.id),
                }
            }
            Err(why) => eprintln!("\nwarning: request {}: not judged: {why}", logged.id),
        }
    }
    Ok(LocalCheck {
        agreement,
        method: method.to_string(),
        latency_ms,
        completion_tokens: tokens,
        judge_cost_usd,
    })
}
