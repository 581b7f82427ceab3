//! `switchyard route ...`: score prompts, evaluate and train the difficulty
//! model, explain one decision, and time decisions.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use serde_json::{Value, json};
use switchyard::auth::Caller;
use switchyard::live::Live;
use switchyard::openai::error::ApiError;
use switchyard::openai::request::ChatRequest;
use switchyard::openai::request::kind_of;
use switchyard::policy::Policy;
use switchyard::routing::difficulty::data::{self, Example, NotAnExample, question_key};
use switchyard::routing::difficulty::eval::{Quality, Scored, evaluate, oracle, random};
use switchyard::routing::difficulty::train::{Settings, learns_from, train as train_model};
use switchyard::routing::difficulty::{DifficultyModel, Kind};
use switchyard::routing::features::{Features, text_for_scoring};
use switchyard::routing::sessions::Sessions;
use switchyard::routing::{Decision, Hints};

#[derive(clap::Subcommand)]
pub enum RouteCommand {
    /// Score prompts: rows with `id` and `prompt` (or `messages`) in, `{"id", "score"}` out.
    Score {
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        output: PathBuf,
        /// A difficulty model file instead of the shipped one.
        #[arg(long)]
        model: Option<PathBuf>,
    },
    /// APGR and CPT of the shipped router on labelled rows, beside the TF-IDF
    /// baseline, random and oracle routing.
    Eval {
        /// Labelled rows; give it once per file to evaluate them together.
        #[arg(long, required = true)]
        input: Vec<PathBuf>,
        #[arg(long)]
        model: Option<PathBuf>,
    },
    /// Train the difficulty model and the baseline from the labelled data.
    Train {
        /// A directory of labelled data (`shared/data/routing` format); give
        /// it once per directory. `*_test*` files in any of them never train.
        #[arg(long, required = true)]
        data_dir: Vec<PathBuf>,
        /// Where `difficulty.bin` and `baseline.bin` are written.
        #[arg(long, default_value = "router/assets")]
        out_dir: PathBuf,
        #[arg(long, default_value_t = 17)]
        seed: u64,
        #[arg(long)]
        epochs: Option<usize>,
        #[arg(long)]
        learning_rate: Option<f64>,
        #[arg(long)]
        weight_decay: Option<f64>,
        /// Leave each source out in turn, train on the rest, evaluate on it;
        /// prints the table and writes no artifact. RouterDC's sources never
        /// train the difficulty model (only the baseline), so their rows
        /// measure it on pairs of 7-8B models it never learned from.
        #[arg(long)]
        loso: bool,
    },
    /// Label checkable rows (with a gold `answer`) with the local model's own
    /// correctness, as the weak side `route train` learns from.
    Label(super::label::LabelArgs),
    /// Explain the decision for one prompt under a policy.
    Explain {
        #[arg(long)]
        policy: PathBuf,
        prompt: String,
    },
    /// Time decisions (features + model + policy) for prompts of 100 to 2,000 tokens.
    Bench {
        #[arg(long)]
        policy: PathBuf,
        #[arg(long, default_value_t = 2000)]
        iterations: usize,
    },
}

pub fn run(command: &RouteCommand) -> ExitCode {
    let result = match command {
        RouteCommand::Score { input, output, model } => score(input, output, model.as_deref()),
        RouteCommand::Eval { input, model } => eval(input, model.as_deref()),
        RouteCommand::Train {
            data_dir,
            out_dir,
            seed,
            epochs,
            learning_rate,
            weight_decay,
            loso,
        } => {
            let defaults = Settings::default();
            let settings = Settings {
                seed: *seed,
                epochs: epochs.unwrap_or(defaults.epochs),
                learning_rate: learning_rate.unwrap_or(defaults.learning_rate),
                weight_decay: weight_decay.unwrap_or(defaults.weight_decay),
                ..defaults
            };
            if *loso {
                leave_one_source_out(data_dir, &settings)
            } else {
                train(data_dir, out_dir, &settings)
            }
        }
        RouteCommand::Label(args) => super::label::label(args),
        RouteCommand::Explain { policy, prompt } => explain(policy, prompt),
        RouteCommand::Bench { policy, iterations } => bench(policy, *iterations),
    };
    super::exit_code("route", result)
}

fn model_or_shipped(path: Option<&Path>) -> Result<&'static DifficultyModel, String> {
    match path {
        None => Ok(DifficultyModel::embedded()),
        Some(path) => Ok(Box::leak(Box::new(DifficultyModel::load(path)?))),
    }
}

/// A row as the chat request the daemon would see: its `prompt` as one user
/// turn, or its OpenAI `messages`.
pub(crate) fn row_request(row: &Value) -> Result<ChatRequest, String> {
    let messages = match (&row["prompt"], row.get("messages")) {
        (Value::String(prompt), _) => json!([{ "role": "user", "content": prompt }]),
        (Value::Null, Some(messages)) => messages.clone(),
        (Value::Null, None) => return Err("no `prompt` or `messages`".into()),
        (other, _) => return Err(format!("`prompt` is {}, not a string", kind_of(other))),
    };
    let body = json!({ "model": "auto", "messages": messages });
    ChatRequest::parse(body.to_string().as_bytes()).map_err(|e| e.message())
}

/// A row's score as the daemon computes it for the same request.
pub(crate) fn score_request(model: &DifficultyModel, request: &ChatRequest) -> f32 {
    let text = text_for_scoring(request);
    model.score(&Features::extract(request, &text), &text)
}

fn score(input: &Path, output: &Path, model: Option<&Path>) -> Result<(), String> {
    let model = model_or_shipped(model)?;
    let rows = data::read_jsonl_lines(input)?;
    // Every row is checked and scored before the output is touched, and the
    // output appears whole or not at all.
    let mut scored = Vec::with_capacity(rows.len());
    let mut ids = std::collections::HashSet::new();
    let (mut duplicates, mut without_text) = (0usize, 0usize);
    for (line, row) in &rows {
        let at = |why: String| format!("{}:{line}: {why}", input.display());
        let id = match row.get("id") {
            Some(id @ (Value::String(_) | Value::Number(_))) => id.clone(),
            None => return Err(at("no `id`".into())),
            Some(other) => return Err(at(format!("`id` is {}, not a string or a number", kind_of(other)))),
        };
        let request = row_request(row).map_err(at)?;
        if text_for_scoring(&request).trim().is_empty() {
            without_text += 1;
        }
        if !ids.insert(id.to_string()) {
            duplicates += 1;
        }
        scored.push(json!({ "id": id, "score": score_request(model, &request) }));
    }
    let partial = output.with_file_name(format!(
        ".{}.partial",
        output.file_name().unwrap_or_default().to_string_lossy()
    ));
    let written = (|| {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&partial)?);
        for row in &scored {
            writeln!(out, "{row}")?;
        }
        out.into_inner()
            .map_err(std::io::IntoInnerError::into_error)?
            .sync_all()?;
        std::fs::rename(&partial, output)
    })();
    if let Err(err) = written {
        let _ = std::fs::remove_file(&partial);
        return Err(format!("{}: {err}", output.display()));
    }
    if duplicates > 0 {
        eprintln!("warning: {duplicates} rows repeat an earlier row's id");
    }
    if without_text > 0 {
        eprintln!("warning: {without_text} rows have no user text; they get the score of an empty prompt");
    }
    Ok(())
}

fn scored(model: &DifficultyModel, examples: &[Example]) -> Vec<Scored> {
    examples
        .iter()
        .map(|e| Scored {
            score: model.score(&Features::from_text(&e.prompt), &e.prompt),
            strong: e.strong,
            weak: e.weak,
        })
        .collect()
}

fn print_table(rows: &[(&str, Quality)]) {
    println!("| router | APGR | CPT(50%) | CPT(80%) | strong calls at 95% of strong quality |");
    println!("|---|---:|---:|---:|---:|");
    for (name, q) in rows {
        println!(
            "| {name} | {:.3} | {:.3} | {:.3} | {:.1}% |",
            q.apgr,
            q.cpt50,
            q.cpt80,
            100.0 * q.cpt_95_quality
        );
    }
}

/// The table of a router's rows beside the baseline's, random and oracle
/// routing of the same rows.
fn print_comparison(label: &str, ours: &[Scored], baseline: &[Scored]) {
    print_table(&[
        (label, evaluate(ours)),
        ("TF-IDF + LR baseline", evaluate(baseline)),
        ("random (200 shuffles)", random(ours, 200, 1)),
        ("oracle", oracle(ours)),
    ]);
}

fn eval(inputs: &[PathBuf], model_path: Option<&Path>) -> Result<(), String> {
    let model = model_or_shipped(model_path)?;
    let mut examples: Vec<Example> = Vec::new();
    let mut unlabelled = 0usize;
    for input in inputs {
        for (line, mut row) in data::read_jsonl_lines(input)? {
            // A row in chat form is read as the prompt the daemon would score.
            if row["prompt"].is_null() && row.get("messages").is_some() {
                let request = row_request(&row).map_err(|why| format!("{}:{line}: {why}", input.display()))?;
                row["prompt"] = Value::String(text_for_scoring(&request));
            }
            match data::labelled(&row) {
                Ok(example) => examples.push(example),
                Err(NotAnExample::Unlabelled) => unlabelled += 1,
                Err(NotAnExample::Invalid(why)) => return Err(format!("{}:{line}: {why}", input.display())),
            }
        }
    }
    if unlabelled > 0 {
        eprintln!("{unlabelled} rows left out: a label of their pair is null or NaN");
    }
    if examples.len() < 2 {
        return Err("fewer than two labelled rows with a strong/weak pair".into());
    }
    let ours = scored(model, &examples);
    let q_weak = ours.iter().map(|s| s.weak).sum::<f64>() / ours.len() as f64;
    let q_strong = ours.iter().map(|s| s.strong).sum::<f64>() / ours.len() as f64;
    println!(
        "{} rows; quality all weak {q_weak:.3}, all strong {q_strong:.3}",
        examples.len()
    );
    if q_strong <= q_weak {
        eprintln!(
            "warning: the strong model is not better than the weak one on these rows; APGR and CPT measure nothing here"
        );
    }
    let label = match model_path {
        None => "switchyard (shipped)".to_string(),
        Some(path) => format!("switchyard ({})", path.display()),
    };
    print_comparison(&label, &ours, &scored(DifficultyModel::baseline(), &examples));
    Ok(())
}

fn train(data_dirs: &[PathBuf], out_dir: &Path, settings: &Settings) -> Result<(), String> {
    let started = Instant::now();
    let files = data::load_dirs(data_dirs)?;
    let split = data::split(&files);
    eprintln!(
        "training on {} rows ({} dropped as repeats of held-out questions); held-out MMLU quarter: {} rows",
        split.train.len(),
        split.dropped_as_leaks,
        split.heldout.len()
    );
    eprintln!(
        "the difficulty model learns from the {} of them with a remote-class pair; the baseline from all",
        split.train.iter().filter(|e| learns_from(Kind::Paired, e)).count()
    );
    let settings = Settings {
        verbose: true,
        ..settings.clone()
    };
    let ours = train_model(&split.train, &settings)?;
    let baseline = train_model(
        &split.train,
        &Settings {
            kind: Kind::TfIdf,
            ..settings.clone()
        },
    )?;
    std::fs::create_dir_all(out_dir).map_err(|e| e.to_string())?;
    for (name, model) in [("difficulty.bin", &ours), ("baseline.bin", &baseline)] {
        let path = out_dir.join(name);
        std::fs::write(&path, model.to_bytes()).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if !split.heldout.is_empty() {
        println!("held-out quarter of routellm_mmlu ({} rows):", split.heldout.len());
        print_comparison(
            "switchyard",
            &scored(&ours, &split.heldout),
            &scored(&baseline, &split.heldout),
        );
    }
    for (stem, rows) in files
        .iter()
        .filter(|(stem, rows)| stem.contains("_test") && rows.len() > 1)
    {
        println!("\n{stem} ({} rows, never trained on):", rows.len());
        print_comparison("switchyard", &scored(&ours, rows), &scored(&baseline, rows));
    }
    eprintln!("trained in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn leave_one_source_out(data_dirs: &[PathBuf], settings: &Settings) -> Result<(), String> {
    let files = data::load_dirs(data_dirs)?;
    let mut sources: BTreeMap<String, Vec<Example>> = BTreeMap::new();
    for (stem, rows) in &files {
        sources
            .entry(data::source_name(stem))
            .or_default()
            .extend(rows.iter().cloned());
    }
    println!(
        "| left-out source | rows | switchyard APGR / CPT(80%) | TF-IDF + LR APGR / CPT(80%) | random APGR / CPT(80%) |"
    );
    println!("|---|---:|---:|---:|---:|");
    let mut means = [0.0f64; 6];
    for (source, evaluation) in &sources {
        let keys: std::collections::HashSet<String> = evaluation.iter().map(|e| question_key(&e.prompt)).collect();
        let training: Vec<Example> = files
            .iter()
            .filter(|(stem, _)| !stem.contains("_test") && data::source_name(stem) != *source)
            .flat_map(|(_, rows)| {
                rows.iter()
                    .filter(|r| !keys.contains(&question_key(&r.prompt)))
                    .cloned()
            })
            .collect();
        let ours = train_model(&training, settings).map_err(|e| format!("leaving out {source}: {e}"))?;
        let baseline = train_model(
            &training,
            &Settings {
                kind: Kind::TfIdf,
                ..settings.clone()
            },
        )?;
        let ours = evaluate(&scored(&ours, evaluation));
        let base = evaluate(&scored(&baseline, evaluation));
        let rand = random(&scored(DifficultyModel::embedded(), evaluation), 200, 1);
        println!(
            "| {source} | {} | {:.3} / {:.3} | {:.3} / {:.3} | {:.3} / {:.3} |",
            evaluation.len(),
            ours.apgr,
            ours.cpt80,
            base.apgr,
            base.cpt80,
            rand.apgr,
            rand.cpt80
        );
        for (m, v) in means
            .iter_mut()
            .zip([ours.apgr, ours.cpt80, base.apgr, base.cpt80, rand.apgr, rand.cpt80])
        {
            *m += v / sources.len() as f64;
        }
    }
    println!(
        "| **mean** | | {:.3} / {:.3} | {:.3} / {:.3} | {:.3} / {:.3} |",
        means[0], means[1], means[2], means[3], means[4], means[5]
    );
    Ok(())
}

fn request_for(prompt: &str) -> Result<ChatRequest, String> {
    row_request(&json!({ "prompt": prompt }))
}

/// The daemon's decision for an anonymous request without routing headers.
fn decide_unhinted(live: &Live, request: &ChatRequest, sessions: &Sessions) -> Result<Decision, ApiError> {
    live.routing.decide_remembering(
        request,
        &Caller::Anonymous,
        &Hints::default(),
        &live.backends,
        live.ledger.as_ref(),
        sessions,
    )
}

fn explain(policy_path: &Path, prompt: &str) -> Result<(), String> {
    let policy = Policy::load(policy_path).map_err(|e| e.in_file(policy_path))?;
    let live = Live::build_offline(&policy).map_err(|e| e.in_file(policy_path))?;
    let request = request_for(prompt)?;
    let text = text_for_scoring(&request);
    let features = Features::extract(&request, &text);
    let model = live.routing.difficulty_model();
    let heads = model.heads(&features, &text);
    let score = model.score_of(&heads);
    // The score's two halves: the calibrated chances that each model answers well.
    let (strong, weak) = match model.kind() {
        Kind::Paired => model.calibrated(heads[0], heads[1]),
        Kind::TfIdf => (f32::NAN, f32::NAN),
    };
    let sessions = Sessions::new(std::time::Duration::from_secs(1), 1);
    let decision = decide_unhinted(&live, &request, &sessions);
    let explanation = match decision {
        Ok(decision) => json!({
            "route": decision.tier.as_str(),
            "backend": decision.backend.name(),
            "reason": decision.reason.as_str(),
            "pacing": decision.pacing,
        }),
        Err(err) => json!({ "refused": err.to_json()["error"] }),
    };
    let out = json!({
        "features": features,
        "chance_strong_answers_well": strong,
        "chance_weak_answers_well": weak,
        "score": score,
        "decision": explanation,
    });
    println!("{}", serde_json::to_string_pretty(&out).expect("JSON"));
    Ok(())
}

fn bench(policy_path: &Path, iterations: usize) -> Result<(), String> {
    if iterations == 0 {
        return Err("--iterations must be at least 1".into());
    }
    let policy = Policy::load(policy_path).map_err(|e| e.in_file(policy_path))?;
    let live = Live::build_offline(&policy).map_err(|e| e.in_file(policy_path))?;
    let sessions = Sessions::new(std::time::Duration::from_secs(60), 100_000);
    let paragraph = "The committee reviewed the quarterly figures, compared them with the forecast, and asked \
        whether the 12% rise in costs (mostly cloud inference at $0.60 per million tokens) could be cut by \
        routing simple questions to a local model. Explain the trade-offs step by step. ";
    println!("| prompt tokens (est.) | p50 µs | p99 µs | max µs |");
    println!("|---:|---:|---:|---:|");
    for target in [100u64, 500, 2000] {
        let mut prompt = String::new();
        while Features::from_text(&prompt).prompt_tokens_estimate < target {
            prompt.push_str(paragraph);
        }
        let body = json!({ "model": "auto", "messages": [{ "role": "user", "content": prompt }] });
        let bytes = body.to_string();
        let mut times = Vec::with_capacity(iterations);
        for i in 0..iterations + iterations / 10 {
            let request = ChatRequest::parse(bytes.as_bytes()).map_err(|e| e.message())?;
            let started = Instant::now();
            let decision = decide_unhinted(&live, &request, &sessions);
            let elapsed = started.elapsed();
            std::hint::black_box(decision.is_ok());
            if i >= iterations / 10 {
                times.push(elapsed.as_secs_f64() * 1e6);
            }
        }
        times.sort_by(f64::total_cmp);
        let at = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
        println!(
            "| {} | {:.1} | {:.1} | {:.1} |",
            Features::from_text(&prompt).prompt_tokens_estimate,
            at(0.5),
            at(0.99),
            times[times.len() - 1]
        );
    }
    Ok(())
}
