//! The labelled routing data (`shared/data/routing/` format, see its README):
//! loading, the strong/weak pair of each source, training targets, and the
//! splits that keep evaluation honest.
//!
//! - The held-out quarter of `routellm_mmlu` is chosen by a hash of the prompt,
//!   so duplicated prompts fall on the same side.
//! - The same MMLU questions appear in other files in another format: every
//!   training row whose question (the text before the options, normalised)
//!   matches a held-out question is dropped, whatever its file.
//! - `*_test*` files never train.

use std::collections::HashSet;
use std::io::BufRead;
use std::path::Path;

use serde_json::Value;

use crate::openai::request::kind_of;

/// One labelled prompt.
#[derive(Debug, Clone)]
pub struct Example {
    pub id: String,
    /// The file's source, without `_train`/`_test`.
    pub source: String,
    pub prompt: String,
    /// The one-head baseline's training target in [0, 1] (a paired model
    /// learns `strong` and `weak` instead).
    pub target: f32,
    /// The strong and the weak model's labels, for APGR/CPT.
    pub strong: f64,
    pub weak: f64,
    /// Whether the strong label is a remote-class model's (a row's own named
    /// pair, GPT-4 in RouterBench); RouterDC's pairs are two 7B-8B models,
    /// whose stronger one says little about a frontier model. Only such rows
    /// train a paired model (see [`super::train`]).
    pub frontier: bool,
    /// The local model whose answers the weak label is, for rows that
    /// `switchyard route label` labelled (`weak` and `weak_sha256`).
    pub weak_model: Option<super::TrainedFor>,
}

/// The held-out part of `routellm_mmlu`: a quarter, by prompt hash.
pub fn is_heldout_mmlu(prompt: &str) -> bool {
    let h = prompt.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    h % 4 == 0
}

/// A question's identity across formats: the text before its first option,
/// lower-cased, letters and digits only.
pub fn question_key(prompt: &str) -> String {
    let stem = prompt.split("\nA.").next().unwrap_or(prompt);
    stem.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

/// Why a row is not an example.
#[derive(Debug, Clone, PartialEq)]
pub enum NotAnExample {
    /// A label the pair needs is `null` or `NaN`: the model was not scored on
    /// this prompt (the shared data has such rows).
    Unlabelled,
    /// The row is malformed; the message says how.
    Invalid(String),
}

/// The strong and weak models compared for a row, and whether the strong one
/// is a frontier model: the row's own `strong`/`weak`, or the pair chosen for
/// its source (RouterBench: GPT-4 vs Mixtral, as RouteLLM; RouterDC: the best
/// vs the weakest of its 7B-8B models).
fn pair(row: &Value) -> Result<(f64, f64, bool), NotAnExample> {
    let invalid = |message: String| NotAnExample::Invalid(message);
    let label = |model: &str| match row["labels"].get(model) {
        None => Err(invalid(format!("no label for `{model}` in `labels`"))),
        Some(Value::Null) => Err(NotAnExample::Unlabelled),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(v) if v.is_nan() => Err(NotAnExample::Unlabelled),
            Some(v) if (0.0..=1.0).contains(&v) => Ok(v),
            _ => Err(invalid(format!("the label of `{model}` is {n}, outside [0, 1]"))),
        },
        Some(other) => Err(invalid(format!("the label of `{model}` is {other}, not a number"))),
    };
    match (&row["strong"], &row["weak"]) {
        (Value::String(strong), Value::String(weak)) => return Ok((label(strong)?, label(weak)?, true)),
        (Value::Null, Value::Null) => {}
        _ => return Err(invalid("`strong` and `weak` must both name a model of `labels`".into())),
    }
    let source = row["source"].as_str().unwrap_or_default();
    if source.starts_with("routerbench") {
        Ok((
            label("gpt-4-1106-preview")?,
            label("mistralai/mixtral-8x7b-chat")?,
            true,
        ))
    } else if source.starts_with("routerdc7") {
        Ok((
            label("cognitivecomputations/dolphin-2.9-llama3-8b")?,
            label("mistralai/Mistral-7B-v0.1")?,
            false,
        ))
    } else {
        Err(invalid(
            "no model pair: give `strong` and `weak`, each naming a model of `labels`".into(),
        ))
    }
}

/// One row as an example, or `None` when it has none (see [`labelled`]).
pub fn example(row: &Value) -> Option<Example> {
    labelled(row).ok()
}

/// One row as an example, or why it is not one.
pub fn labelled(row: &Value) -> Result<Example, NotAnExample> {
    let prompt = match &row["prompt"] {
        Value::String(prompt) => prompt.clone(),
        Value::Null => return Err(NotAnExample::Invalid("no `prompt`".into())),
        other => {
            return Err(NotAnExample::Invalid(format!(
                "`prompt` is {}, not a string",
                kind_of(other)
            )));
        }
    };
    let id = match &row["id"] {
        Value::String(id) => id.clone(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    };
    let (strong, weak, frontier) = pair(row)?;
    let source = row["source"].as_str().unwrap_or_default();
    // Correctness pairs: "strong right where weak is wrong". Graded scores of
    // weak-vs-weak pairs carry little of that; "the weak model falls short"
    // does, and transfers better to unseen kinds of prompts.
    let target = if row["label_kind"] == "score_0_1" {
        (1.0 - weak) as f32
    } else {
        f32::from(u8::from(strong > weak))
    };
    let weak_model = match (&row["weak"], &row["weak_sha256"]) {
        (Value::String(model), Value::String(sha256)) => Some(super::TrainedFor {
            model: model.clone(),
            sha256: sha256.clone(),
        }),
        _ => None,
    };
    Ok(Example {
        id,
        source: source_name(source),
        prompt,
        target,
        strong,
        weak,
        frontier,
        weak_model,
    })
}

pub fn source_name(source: &str) -> String {
    source.trim_end_matches("_train").trim_end_matches("_test").to_string()
}

pub fn read_jsonl(path: &Path) -> Result<Vec<Value>, String> {
    Ok(read_jsonl_lines(path)?.into_iter().map(|(_, row)| row).collect())
}

/// The rows of a JSON Lines file with their line numbers (blank lines skipped).
pub fn read_jsonl_lines(path: &Path) -> Result<Vec<(usize, Value)>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut rows = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let at = || format!("{}:{}", path.display(), i + 1);
        let line = line.map_err(|e| format!("{}: {e}", at()))?;
        let line = if i == 0 {
            line.trim_start_matches('\u{feff}')
        } else {
            &line
        };
        if line.trim().is_empty() {
            continue;
        }
        // Python's json writes NaN for a missing label; JSON has no NaN: read it as null.
        let parsed = serde_json::from_str(line)
            .or_else(|_| serde_json::from_str(&line.replace(": NaN", ": null").replace(":NaN", ":null")))
            .map_err(|e| format!("{}: {e}", at()))?;
        rows.push((i + 1, parsed));
    }
    Ok(rows)
}

/// Every labelled file of several data directories, each in name order.
pub fn load_dirs(dirs: &[std::path::PathBuf]) -> Result<Vec<(String, Vec<Example>)>, String> {
    let mut files = Vec::new();
    for dir in dirs {
        files.extend(load_dir(dir)?);
    }
    Ok(files)
}

/// Every labelled file of a data directory: (file stem, examples).
pub fn load_dir(dir: &Path) -> Result<Vec<(String, Vec<Example>)>, String> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|path| {
            let stem = path.file_stem().unwrap_or_default().to_string_lossy().to_string();
            let examples = read_jsonl(path)?.iter().filter_map(example).collect();
            Ok((stem, examples))
        })
        .collect()
}

/// The standard split: the held-out quarter of `routellm_mmlu` for testing,
/// and for training every non-test file's rows that do not repeat a held-out
/// question.
pub struct Split {
    pub train: Vec<Example>,
    pub heldout: Vec<Example>,
    pub dropped_as_leaks: usize,
}

pub fn split(files: &[(String, Vec<Example>)]) -> Split {
    let heldout: Vec<Example> = files
        .iter()
        .filter(|(stem, _)| stem == "routellm_mmlu")
        .flat_map(|(_, rows)| rows.iter().filter(|r| is_heldout_mmlu(&r.prompt)).cloned())
        .collect();
    let held_keys: HashSet<String> = heldout.iter().map(|r| question_key(&r.prompt)).collect();
    let mut dropped_as_leaks = 0;
    let mut train = Vec::new();
    for (stem, rows) in files {
        if stem.contains("_test") {
            continue;
        }
        for row in rows {
            if stem == "routellm_mmlu" && is_heldout_mmlu(&row.prompt) {
                continue;
            }
            if held_keys.contains(&question_key(&row.prompt)) {
                dropped_as_leaks += 1;
                continue;
            }
            train.push(row.clone());
        }
    }
    Split {
        train,
        heldout,
        dropped_as_leaks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn questions_match_across_formats() {
        let a = "The field of psychology arose out of which of the following?\nA. Biochemistry\nB. Physics";
        let b = "The field of  Psychology arose out of which of the following?\nA. Biochemistry\nB. Physics\nAnswer:";
        assert_eq!(question_key(a), question_key(b));
    }

    #[test]
    fn targets_follow_the_label_kind() {
        let pair = json!({"id": "x/1", "source": "routellm_mmlu", "prompt": "q", "label_kind": "correct_0_1",
            "labels": {"s": 1.0, "w": 0.0}, "strong": "s", "weak": "w"});
        let e = example(&pair).unwrap();
        assert_eq!((e.target, e.strong, e.weak, e.frontier), (1.0, 1.0, 0.0, true));
        let graded = json!({"id": "y/1", "source": "routerdc7_mmlu_train", "prompt": "q", "label_kind": "score_0_1",
            "labels": {"cognitivecomputations/dolphin-2.9-llama3-8b": 1.0, "mistralai/Mistral-7B-v0.1": 0.25}});
        let e = example(&graded).unwrap();
        assert_eq!((e.target, e.source.as_str()), (0.75, "routerdc7_mmlu"));
        // RouterDC's stronger model is another 8B model: not a remote-class label.
        assert!(!e.frontier);
        let nan = json!({"id": "z", "source": "routerbench_mbpp_train", "prompt": "q", "label_kind": "correct_0_1",
            "labels": {"gpt-4-1106-preview": f64::NAN, "mistralai/mixtral-8x7b-chat": 1.0}});
        assert!(example(&nan).is_none());
    }
}
