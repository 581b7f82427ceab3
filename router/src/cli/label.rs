//! `switchyard route label`: the local model's own correctness on checkable
//! prompts, as a label column `route train` learns the weak side from.
//!
//! A row is checkable when it carries its gold `answer`:
//! - multiple choice (the answer is one capital letter, and the prompt lists
//!   options `A.`/`A)` on lines of their own, or the row has `choices`): the
//!   model's pick is the option letter it gives the highest log-probability as
//!   the first token of its answer (the letter alone or after a space), after
//!   the chat template, thinking off;
//! - otherwise a short answer: the model answers greedily (thinking off) and
//!   is right when its answer equals the gold one after normalisation
//!   (case, punctuation, articles and spacing ignored), or, for a numeric gold
//!   answer, when the last number of its answer is that number.
//!
//! The label's model is named `<file stem>@<first 16 hex digits of its
//! SHA-256>`; each labelled row names it as its `weak` side and carries the
//! whole digest as `weak_sha256`, which `route train` records in the artifact.

use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{Map, Value, json};
use switchyard::backends::local::fingerprint;
use switchyard::routing::difficulty::data;
use switchyard_engine::engine::{ComputeBackend, LocalModel, encode_conversation};
use switchyard_engine::generate::GenerationRequest;
use switchyard_engine::model::weights::Quantization;
use switchyard_engine::sampling::{SamplingParams, argmax};
use switchyard_engine::thinking::Thinking;
use switchyard_engine::tokenizer::Tokenizer;

use super::local::{load, parse_quant};

#[derive(clap::Args)]
pub struct LabelArgs {
    /// The local model: a GGUF file or a Hugging Face / MLX directory.
    #[arg(long)]
    model: PathBuf,
    /// Rows in the routing data format with a gold `answer`.
    #[arg(long)]
    input: PathBuf,
    /// Where the labelled rows go. An existing file is resumed: rows whose
    /// `id` it already holds are not answered again.
    #[arg(long)]
    output: PathBuf,
    /// The label's model name (default: file stem @ hash prefix).
    #[arg(long)]
    name: Option<String>,
    /// Tokens at most of a short answer.
    #[arg(long, default_value_t = 48)]
    max_tokens: usize,
    /// Label only the first N checkable rows (a quick look).
    #[arg(long)]
    limit: Option<usize>,
    /// What a Hugging Face checkpoint's float weights become: q8_0, q6_k, q4_k, q4_0 or none.
    #[arg(long, default_value_t = Quantization::default(), value_parser = parse_quant)]
    quant: Quantization,
    /// Compute threads (default: all cores, at most 8).
    #[arg(long)]
    threads: Option<usize>,
}

/// What the model is asked: pick a letter, or answer in a few words.
#[derive(Debug, Clone, PartialEq)]
enum Check {
    Choice { letters: Vec<char>, gold: char },
    Short { gold: String },
}

/// The option letters a multiple-choice prompt lists, in order: lines that
/// start with a capital letter and `.` or `)` then a space, the letters
/// consecutive from `A`.
fn option_letters(prompt: &str) -> Vec<char> {
    let mut letters = Vec::new();
    for line in prompt.lines() {
        let mut chars = line.trim_start().chars();
        if let (Some(letter), Some('.' | ')'), Some(' ')) = (chars.next(), chars.next(), chars.next())
            && letter.is_ascii_uppercase()
            && letter as u8 == b'A' + letters.len() as u8
        {
            letters.push(letter);
        }
    }
    letters
}

fn check_of(row: &Value) -> Option<Check> {
    let gold = match &row["answer"] {
        Value::String(s) if !s.trim().is_empty() => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let letters = match row.get("choices").and_then(Value::as_array) {
        Some(choices) if (2..=26).contains(&choices.len()) => {
            (0..choices.len()).map(|i| (b'A' + i as u8) as char).collect()
        }
        _ => option_letters(row["prompt"].as_str().unwrap_or_default()),
    };
    let mut gold_chars = gold.chars();
    match (gold_chars.next(), gold_chars.next()) {
        (Some(letter), None) if letters.len() >= 2 && letters.contains(&letter) => {
            Some(Check::Choice { letters, gold: letter })
        }
        _ => Some(Check::Short { gold }),
    }
}

/// The user turn of a row: its `prompt`, with its `choices` listed when the
/// prompt does not list them.
fn user_text(row: &Value) -> String {
    let prompt = row["prompt"].as_str().unwrap_or_default().to_string();
    match row.get("choices").and_then(Value::as_array) {
        Some(choices) if option_letters(&prompt).len() < choices.len() => {
            let mut text = prompt;
            for (i, choice) in choices.iter().enumerate() {
                let choice = choice.as_str().map_or_else(|| choice.to_string(), str::to_string);
                text.push_str(&format!("\n{}. {choice}", (b'A' + i as u8) as char));
            }
            text.push_str("\nAnswer:");
            text
        }
        _ => prompt,
    }
}

/// SQuAD's normalisation: lower case, no punctuation, no articles, single spaces.
pub fn normalise(text: &str) -> String {
    let lower: String = text
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c.is_whitespace() {
                c
            } else {
                ' '
            }
        })
        .collect();
    lower
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The last number written in `text` (digits with `,` separators and one `.`), as a value.
fn last_number(text: &str) -> Option<f64> {
    let mut found = None;
    let mut current = String::new();
    for c in text.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_digit()
            || (c == '.' && !current.is_empty() && !current.contains('.'))
            || (c == '-' && current.is_empty())
        {
            current.push(c);
        } else if c == ',' && !current.is_empty() {
            continue;
        } else {
            let trimmed = current.trim_end_matches('.');
            if let Ok(value) = trimmed.parse::<f64>() {
                found = Some(value);
            }
            current.clear();
        }
    }
    found
}

/// Whether a short answer says the gold one.
pub fn short_answer_right(answer: &str, gold: &str) -> bool {
    let (a, g) = (normalise(answer), normalise(gold));
    if !g.is_empty() && a == g {
        return true;
    }
    match gold.trim().replace(',', "").parse::<f64>() {
        Ok(value) => last_number(answer).is_some_and(|got| (got - value).abs() < 1e-9 * value.abs().max(1.0)),
        Err(_) => false,
    }
}

/// The token ids that can begin an answer with `letter`: the letter alone
/// and after a space, each where it is one token of its own (BOS and EOS
/// aside; a SentencePiece `▁` + `A` is not an answer's first token).
fn letter_tokens(tokenizer: &Tokenizer, letter: char) -> Vec<u32> {
    let markers = [tokenizer.bos_token(), tokenizer.eos_token()].map(|t| t.map(|(id, _)| id));
    let mut ids = Vec::new();
    for text in [letter.to_string(), format!(" {letter}")] {
        let Ok(encoded) = tokenizer.encode(&text, false) else {
            continue;
        };
        let body: Vec<u32> = encoded.into_iter().filter(|id| !markers.contains(&Some(*id))).collect();
        if let [one] = body[..]
            && !ids.contains(&one)
        {
            ids.push(one);
        }
    }
    ids
}

/// Each option letter's first tokens; an error when a letter has none of its
/// own or two letters share one (the pick would mean nothing).
fn option_tokens(tokenizer: &Tokenizer, letters: &[char]) -> Result<Vec<Vec<u32>>, String> {
    let tokens: Vec<Vec<u32>> = letters.iter().map(|&l| letter_tokens(tokenizer, l)).collect();
    for (i, ids) in tokens.iter().enumerate() {
        if ids.is_empty() {
            return Err(format!(
                "the option letter {} is not one token of this vocabulary",
                letters[i]
            ));
        }
        if let Some(j) = (0..i).find(|&j| tokens[j].iter().any(|id| ids.contains(id))) {
            return Err(format!(
                "the option letters {} and {} share a token",
                letters[j], letters[i]
            ));
        }
    }
    Ok(tokens)
}

struct Labeller<'a> {
    local: &'a LocalModel,
    extra: Map<String, Value>,
    thinking: Option<Thinking>,
    max_tokens: usize,
}

impl Labeller<'_> {
    fn prompt(&self, text: &str) -> Result<Vec<u32>, String> {
        encode_conversation(
            &self.local.tokenizer,
            self.local.template.as_deref(),
            self.local.context_length,
            &json!([{ "role": "user", "content": text }]),
            &self.extra,
        )
        .map_err(|e| e.to_string())
    }

    /// The model's pick or answer, and whether it is right.
    fn answer(&self, row: &Value, check: &Check) -> Result<(String, bool), String> {
        let tokens = self.prompt(&user_text(row))?;
        match check {
            Check::Choice { letters, gold } => {
                let options = option_tokens(&self.local.tokenizer, letters)?;
                let logprobs = self.local.next_logprobs(&tokens).map_err(|e| e.to_string())?;
                let scores: Vec<f32> = options
                    .iter()
                    .map(|ids| {
                        ids.iter()
                            .filter_map(|&id| logprobs.get(id as usize).copied())
                            .fold(f32::NEG_INFINITY, f32::max)
                    })
                    .collect();
                let pick = letters[argmax(&scores)];
                Ok((pick.to_string(), pick == *gold))
            }
            Check::Short { gold } => {
                let request = GenerationRequest {
                    thinking: self.thinking.clone(),
                    ..GenerationRequest::new(tokens, self.max_tokens, SamplingParams::greedy())
                };
                let output = self
                    .local
                    .generate(&request, |_| std::ops::ControlFlow::Continue(()))
                    .map_err(|e| e.to_string())?;
                let right = short_answer_right(&output.text, gold);
                Ok((output.text, right))
            }
        }
    }
}

/// The `id` of a row, as a string.
fn row_id(row: &Value) -> Option<String> {
    match &row["id"] {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The ids an earlier run already wrote, checked to be `sha256`'s labels; a
/// last line cut by an interruption (no newline at its end) is dropped from
/// the file. A whole line that is not a labelled row is an error: the file is
/// not this command's output.
fn resume(output: &Path, sha256: &str) -> Result<HashSet<String>, String> {
    let at = |why: String| format!("{}: {why}", output.display());
    let bytes = match std::fs::read(output) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(at(e.to_string())),
    };
    let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |at| at + 1);
    let mut done = HashSet::new();
    for (i, line) in bytes[..whole].split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let row: Value = serde_json::from_slice(line).map_err(|e| at(format!("line {}: {e}", i + 1)))?;
        let id = row_id(&row).ok_or_else(|| at(format!("line {}: no `id`", i + 1)))?;
        if row["weak_sha256"] != sha256 {
            return Err(at(format!(
                "line {}: labelled with another model (sha256 {}); give another --output",
                i + 1,
                row["weak_sha256"]
            )));
        }
        done.insert(id);
    }
    if whole < bytes.len() {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(output)
            .map_err(|e| at(e.to_string()))?;
        file.set_len(whole as u64).map_err(|e| at(e.to_string()))?;
    }
    Ok(done)
}

pub fn label(args: &LabelArgs) -> Result<(), String> {
    let started = Instant::now();
    let rows = data::read_jsonl_lines(&args.input)?;
    let (local, pool) = load(&args.model, args.threads, ComputeBackend::default(), args.quant)?;
    let sha256 = fingerprint(&args.model, args.quant).map_err(|e| format!("{}: {e}", args.model.display()))?;
    let name = args.name.clone().unwrap_or_else(|| {
        // A directory by its name (`Qwen2.5-0.5B-Instruct`), a file without its extension.
        let stem = if args.model.is_dir() {
            args.model.file_name()
        } else {
            args.model.file_stem()
        };
        format!("{}@{}", stem.unwrap_or_default().to_string_lossy(), &sha256[..16])
    });
    // Thinking off, said to the template, for a model that thinks.
    let (thinking, extra) = match &local.thinking {
        Some(markers) => (
            Some(Thinking {
                markers: markers.clone(),
                budget: Some(0),
            }),
            Map::from_iter([("enable_thinking".to_string(), Value::Bool(false))]),
        ),
        None => (None, Map::new()),
    };
    let labeller = Labeller {
        local: &local,
        extra,
        thinking,
        max_tokens: args.max_tokens,
    };
    let done = resume(&args.output, &sha256)?;
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.output)
        .map_err(|e| format!("{}: {e}", args.output.display()))?;
    let mut checkable: Vec<(usize, &Value, Check)> = rows
        .iter()
        .filter_map(|(line, row)| check_of(row).map(|check| (*line, row, check)))
        .collect();
    let unanswerable = rows.len() - checkable.len();
    checkable.truncate(args.limit.unwrap_or(usize::MAX));
    // Resuming is by id: every checkable row needs one, once.
    let mut ids = HashSet::new();
    for (line, row, _) in &checkable {
        let id = row_id(row).ok_or_else(|| {
            format!(
                "{}:{line}: no `id` (a labelled run resumes by id)",
                args.input.display()
            )
        })?;
        if !ids.insert(id.clone()) {
            return Err(format!(
                "{}:{line}: the id {id:?} is an earlier row's too",
                args.input.display()
            ));
        }
    }
    let without_strong = checkable
        .iter()
        .filter(|(_, row, _)| !row["strong"].is_string())
        .count();
    let total = checkable.len();
    let (mut labelled, mut right, mut failed) = (0usize, 0usize, 0usize);
    // A progress line for a person watching; none in a log.
    let progress = std::io::stderr().is_terminal();
    let mut last_shown = Instant::now();
    for (i, (line, row, check)) in checkable.iter().enumerate() {
        let id = row_id(row).expect("checked above");
        if done.contains(&id) {
            continue;
        }
        let at = |why: String| format!("{}:{line}: {why}", args.input.display());
        let (said, correct) = match pool.install(|| labeller.answer(row, check)) {
            Ok(result) => result,
            Err(why) => {
                // A prompt the model cannot take (too long for its context): no label.
                failed += 1;
                eprintln!("{}{}", if progress { "\n" } else { "" }, at(why));
                continue;
            }
        };
        let mut row = (*row).clone();
        let object = row.as_object_mut().ok_or_else(|| at("not a JSON object".into()))?;
        let labels = object.entry("labels").or_insert_with(|| json!({}));
        if !labels.is_object() {
            return Err(at("`labels` is not an object".into()));
        }
        labels[name.as_str()] = json!(if correct { 1.0 } else { 0.0 });
        object.insert("weak".into(), json!(name));
        object.insert("weak_sha256".into(), json!(sha256));
        object.entry("label_kind").or_insert_with(|| json!("correct_0_1"));
        object
            .entry("predictions")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .map(|p| p.insert(name.clone(), json!(said)));
        // One write per row: an interruption cuts at most the row being written.
        let mut text = Value::Object(object.clone()).to_string();
        text.push('\n');
        out.write_all(text.as_bytes())
            .map_err(|e| format!("{}: {e}", args.output.display()))?;
        labelled += 1;
        right += usize::from(correct);
        if progress && last_shown.elapsed().as_millis() > 500 {
            last_shown = Instant::now();
            eprint!(
                "\r{}/{total} rows, {:.1}% right, {:.1} rows/s",
                i + 1,
                100.0 * right as f64 / labelled as f64,
                labelled as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    out.sync_all().map_err(|e| format!("{}: {e}", args.output.display()))?;
    if progress {
        eprintln!();
    }
    if without_strong > 0 {
        eprintln!(
            "warning: {without_strong} rows name no `strong` model: route train and route eval need one beside the local label"
        );
    }
    eprintln!(
        "{name}: {labelled} rows labelled ({right} right, {:.1}%), {} already there, {failed} not answerable, {unanswerable} without a gold answer; {:.0} s",
        if labelled > 0 {
            100.0 * right as f64 / labelled as f64
        } else {
            0.0
        },
        done.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiple_choice_needs_its_letter_among_the_options() {
        let row = json!({ "prompt": "Q?\nA. one\nB. two\nC. three\nD. four\nAnswer:", "answer": "C" });
        assert_eq!(
            check_of(&row),
            Some(Check::Choice {
                letters: vec!['A', 'B', 'C', 'D'],
                gold: 'C'
            })
        );
        let row = json!({ "prompt": "Which?", "choices": ["x", "y", "z"], "answer": "B" });
        assert_eq!(
            check_of(&row),
            Some(Check::Choice {
                letters: vec!['A', 'B', 'C'],
                gold: 'B'
            })
        );
        assert_eq!(user_text(&row), "Which?\nA. x\nB. y\nC. z\nAnswer:");
        // A letter that is no option is a short answer; no answer, no check.
        let row = json!({ "prompt": "Q?\nA. one\nB. two", "answer": "E" });
        assert_eq!(check_of(&row), Some(Check::Short { gold: "E".into() }));
        assert_eq!(check_of(&json!({ "prompt": "Q?" })), None);
        assert_eq!(
            check_of(&json!({ "prompt": "Q?", "answer": 42 })),
            Some(Check::Short { gold: "42".into() })
        );
    }

    #[test]
    fn an_option_letter_is_its_own_token_never_bos() {
        // Llama 3's vocabulary (byte-level BPE with a BOS).
        let fixture =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/fixtures/hf_families/llama/tokenizer.json");
        let tokenizer = Tokenizer::from_tokenizer_json(&fixture).unwrap();
        let bos = tokenizer.bos_token().map(|(id, _)| id);
        assert!(bos.is_some());
        let options = option_tokens(&tokenizer, &['A', 'B', 'C', 'D']).unwrap();
        for (letter, ids) in ['A', 'B', 'C', 'D'].iter().zip(&options) {
            assert!(!ids.is_empty() && !ids.contains(&bos.unwrap()), "{letter}: {ids:?}");
            for &id in ids {
                assert_eq!(tokenizer.decode(&[id], true).trim(), letter.to_string());
            }
        }
    }

    #[test]
    fn short_answers_match_after_normalisation_or_by_their_last_number() {
        assert!(short_answer_right("The Eiffel Tower.", "eiffel tower"));
        assert!(!short_answer_right("The Eiffel Tower is in Paris", "eiffel tower"));
        assert!(short_answer_right(
            "She pays 12 + 6 = 18, so the answer is 1,018.",
            "1018"
        ));
        assert!(short_answer_right("It is -3.5 degrees.", "-3.5"));
        assert!(!short_answer_right("It is 17.", "18"));
        assert!(!short_answer_right("", ""));
    }
}
