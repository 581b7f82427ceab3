//! The learned difficulty score: how much the request needs the strong
//! (remote) model rather than the weak (local) one.
//!
//! The model is deliberately small and fast: the prompt's words, word pairs
//! and (for CJK) characters are hashed into [`BUCKETS`] buckets, and the
//! structural [`Features`] are added to them (for multiple-choice questions
//! only, see [`Features::vector`]). Two logistic heads read the same
//! features: the chance that the strong model answers well, and the chance
//! that the weak one does. A calibration layer, fitted on rows the heads never
//! trained on, turns the pair into calibrated chances `s` and `w`, and the
//! score is `(1 + s - w) / 2`: the expected gain of asking the strong model,
//! mapped to [0, 1] (0.5 = no gain either way). Ranking by the gain, not by
//! "the weak model fails", keeps questions both models fail (or both answer)
//! away from the paid model. Scoring a 2k-token prompt is one pass over its text
//! and a few thousand additions (see `bench/route_decision.sh`).
//!
//! Training (with Burn's autodiff, [`train`]) and evaluation (APGR/CPT as in the
//! RouteLLM paper, [`eval`]) live beside it; the shipped artifact is
//! `router/assets/difficulty.bin`, reproduced by `switchyard route train`.
//! The same file format holds the TF-IDF + logistic-regression baseline
//! (`router/assets/baseline.bin`, one head scoring "the strong model is right
//! where the weak one is wrong") that `switchyard route eval` reports beside it.

pub mod data;
pub mod eval;
pub mod train;

use std::sync::OnceLock;

use super::features::{Features, SCORED_TEXT_MAX_BYTES, STRUCTURAL_FEATURES};

/// Hash buckets of the text features (bucket 0 is padding, never a feature).
pub const BUCKETS: u32 = 1 << 18;

/// The file format: `SYDIFF03` adds what the model was trained for (a JSON
/// header) to `SYDIFF02`, which is still read.
const MAGIC: &[u8; 8] = b"SYDIFF03";
const MAGIC_V2: &[u8; 8] = b"SYDIFF02";

/// The local model whose own correctness a paired model's weak head learned
/// (rows labelled by `switchyard route label`): its label name and the
/// SHA-256 of its weights (see `backends::local::fingerprint`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TrainedFor {
    pub model: String,
    pub sha256: String,
}

/// What a model reads and how it scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Binary hashed features, L2-normalised, plus the structural features;
    /// two heads (strong answers well, weak answers well) and a calibration.
    Paired = 0,
    /// TF-IDF weighted hashed features, L2-normalised, no structural features,
    /// one head (the baseline).
    TfIdf = 1,
}

impl Kind {
    /// Logistic heads of this kind.
    pub fn heads(self) -> usize {
        match self {
            Kind::Paired => 2,
            Kind::TfIdf => 1,
        }
    }

    fn structural(self) -> usize {
        match self {
            Kind::Paired => STRUCTURAL_FEATURES,
            Kind::TfIdf => 0,
        }
    }

    fn idf(self) -> usize {
        match self {
            Kind::Paired => 0,
            Kind::TfIdf => BUCKETS as usize,
        }
    }
}

/// Calibration of a paired model's heads: `s = σ(a·(p_s, p_w) + b)` and
/// `w = σ(c·(p_s, p_w) + d)`, as `[a0, a1, b, c0, c1, d]`.
pub type Calibration = [f32; 6];

/// The identity-like calibration a paired model starts from.
pub const UNCALIBRATED: Calibration = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0];

pub struct DifficultyModel {
    kind: Kind,
    /// One bias per head.
    pub(crate) bias: Vec<f32>,
    /// `[feature][head]`.
    pub(crate) structural: Vec<f32>,
    /// `[bucket][head]`: a bucket's weights for every head side by side.
    pub(crate) weights: Vec<f32>,
    pub(crate) calibration: Calibration,
    /// Inverse document frequency per bucket (TF-IDF only).
    idf: Vec<f32>,
    /// The local model the weak head learned, when it learned one (a model
    /// trained on cloud model pairs has none).
    pub trained_for: Option<TrainedFor>,
}

static EMBEDDED: OnceLock<DifficultyModel> = OnceLock::new();
static BASELINE: OnceLock<DifficultyModel> = OnceLock::new();

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

/// The text up to [`SCORED_TEXT_MAX_BYTES`], cut at a character boundary.
fn scoring_window(text: &str) -> &str {
    if text.len() <= SCORED_TEXT_MAX_BYTES {
        return text;
    }
    let mut cut = SCORED_TEXT_MAX_BYTES;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    &text[..cut]
}

impl DifficultyModel {
    /// The shipped model, decoded once.
    pub fn embedded() -> &'static DifficultyModel {
        EMBEDDED.get_or_init(|| {
            DifficultyModel::from_bytes(include_bytes!("../../../assets/difficulty.bin"))
                .expect("the shipped difficulty model is valid (checked by a test)")
        })
    }

    /// The shipped TF-IDF + logistic-regression baseline.
    pub fn baseline() -> &'static DifficultyModel {
        BASELINE.get_or_init(|| {
            DifficultyModel::from_bytes(include_bytes!("../../../assets/baseline.bin"))
                .expect("the shipped baseline is valid (checked by a test)")
        })
    }

    /// The policy's `routing.difficulty_model`, loaded (its path is
    /// relative to the policy file); `None` when the policy keeps the shipped one.
    pub fn of_policy(policy: &crate::policy::Policy) -> Result<Option<DifficultyModel>, String> {
        policy
            .routing
            .difficulty_model()
            .map(|path| {
                DifficultyModel::load(&policy.base_dir.join(path))
                    .map_err(|err| format!("routing.difficulty_model: {err}"))
            })
            .transpose()
    }

    pub fn load(path: &std::path::Path) -> Result<DifficultyModel, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        DifficultyModel::from_bytes(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The score of a request: in [0, 1], higher = more need of the strong model.
    pub fn score(&self, features: &Features, text: &str) -> f32 {
        self.score_of(&self.heads(features, text))
    }

    /// Each head's probability, before calibration.
    pub fn heads(&self, features: &Features, text: &str) -> Vec<f32> {
        self.heads_of(&self.text_features(text), &features.vector())
    }

    /// Each head's probability from already extracted features.
    pub(crate) fn heads_of(&self, text: &[(u32, f32)], structural: &[f32; STRUCTURAL_FEATURES]) -> Vec<f32> {
        let n = self.kind.heads();
        let mut z = self.bias.clone();
        for &(index, value) in text {
            let row = &self.weights[index as usize * n..][..n];
            for (z, w) in z.iter_mut().zip(row) {
                *z += w * value;
            }
        }
        for (row, x) in self.structural.chunks_exact(n).zip(structural) {
            for (z, w) in z.iter_mut().zip(row) {
                *z += w * x;
            }
        }
        z.into_iter().map(sigmoid).collect()
    }

    /// The score from the heads' probabilities.
    pub fn score_of(&self, heads: &[f32]) -> f32 {
        match self.kind {
            Kind::TfIdf => heads[0],
            Kind::Paired => {
                let (s, w) = self.calibrated(heads[0], heads[1]);
                (1.0 + s - w) / 2.0
            }
        }
    }

    /// A paired model's calibrated chances that the strong and the weak model
    /// answer well, from its heads' probabilities.
    pub fn calibrated(&self, p_strong: f32, p_weak: f32) -> (f32, f32) {
        let c = &self.calibration;
        (
            sigmoid(c[0] * p_strong + c[1] * p_weak + c[2]),
            sigmoid(c[3] * p_strong + c[4] * p_weak + c[5]),
        )
    }

    /// The weighted text features of this model's kind, read from the first
    /// [`SCORED_TEXT_MAX_BYTES`] of the text.
    pub fn text_features(&self, text: &str) -> Vec<(u32, f32)> {
        let text = scoring_window(text);
        match self.kind {
            Kind::Paired => binary_features(text),
            Kind::TfIdf => tfidf_features(text, &self.idf),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let floats = self.bias.len() + self.structural.len() + self.weights.len() + 6 + self.idf.len();
        let header = serde_json::json!({ "trained_for": self.trained_for }).to_string();
        let mut out = Vec::with_capacity(32 + header.len() + 4 * floats);
        out.extend_from_slice(MAGIC);
        out.push(self.kind as u8);
        out.extend_from_slice(&BUCKETS.to_le_bytes());
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        for v in self
            .bias
            .iter()
            .chain(&self.structural)
            .chain(&self.weights)
            .chain(&self.calibration)
            .chain(&self.idf)
        {
            out.extend_from_slice(&v.to_le_bytes());
        }
        let checksum = fnv1a(&out);
        out.extend_from_slice(&checksum.to_le_bytes());
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<DifficultyModel, String> {
        let fixed = MAGIC.len() + 1 + 4;
        let magic = bytes.get(..MAGIC.len());
        if bytes.len() < fixed + 8 || (magic != Some(MAGIC) && magic != Some(MAGIC_V2)) {
            return Err("not a Switchyard difficulty model of this version (bad magic or too short)".into());
        }
        let (body, tail) = bytes.split_at(bytes.len() - 8);
        let checksum = u64::from_le_bytes(tail.try_into().expect("8 bytes"));
        if fnv1a(body) != checksum {
            return Err("difficulty model checksum mismatch (corrupt file)".into());
        }
        let kind = match body[MAGIC.len()] {
            0 => Kind::Paired,
            1 => Kind::TfIdf,
            other => return Err(format!("unknown difficulty model kind {other}")),
        };
        let buckets = u32::from_le_bytes(body[MAGIC.len() + 1..fixed].try_into().expect("4 bytes"));
        if buckets != BUCKETS {
            return Err(format!(
                "difficulty model has {buckets} hash buckets; this build uses {BUCKETS}"
            ));
        }
        let (header, trained_for) = if magic == Some(MAGIC_V2) {
            (fixed, None)
        } else {
            let length = body
                .get(fixed..fixed + 4)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
                .ok_or("difficulty model header cut short")?;
            let json = body
                .get(fixed + 4..fixed + 4 + length)
                .ok_or("difficulty model header cut short")?;
            #[derive(serde::Deserialize)]
            struct Header {
                trained_for: Option<TrainedFor>,
            }
            let parsed: Header = serde_json::from_slice(json).map_err(|e| format!("difficulty model header: {e}"))?;
            (fixed + 4 + length, parsed.trained_for)
        };
        let mut floats = body[header..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")));
        let n = kind.heads();
        let sizes = [n, kind.structural() * n, BUCKETS as usize * n, 6, kind.idf()];
        if body.len() - header != 4 * sizes.iter().sum::<usize>() {
            return Err("difficulty model has the wrong length for its kind".into());
        }
        let mut take = |len: usize| -> Vec<f32> { floats.by_ref().take(len).collect() };
        let [bias, structural, weights, calibration, idf] = sizes.map(&mut take);
        let model = DifficultyModel {
            kind,
            bias,
            structural,
            weights,
            calibration: calibration.try_into().expect("6 floats"),
            idf,
            trained_for,
        };
        let all = model.bias.iter().chain(&model.structural).chain(&model.weights);
        if all.chain(&model.calibration).chain(&model.idf).any(|v| !v.is_finite()) {
            return Err("difficulty model has non-finite weights".into());
        }
        Ok(model)
    }

    pub(crate) fn from_parts(
        kind: Kind,
        bias: Vec<f32>,
        structural: Vec<f32>,
        weights: Vec<f32>,
        calibration: Calibration,
        idf: Vec<f32>,
    ) -> Self {
        DifficultyModel {
            kind,
            bias,
            structural,
            weights,
            calibration,
            idf,
            trained_for: None,
        }
    }
}

/// Whether a model trained for `trained_for` fits the local model at
/// `model_path` loaded with `quant` (hashes its weights: call it off the
/// request path). `Err` says why not, in words for the operator's log.
pub fn fits(
    trained_for: Option<&TrainedFor>,
    model_path: &std::path::Path,
    quant: switchyard_engine::model::weights::Quantization,
) -> Result<(), String> {
    let advice = "label it with `switchyard route label`, train with `switchyard route train` and set routing.difficulty_model (docs/routing.md, \"A router for your local model\")";
    let Some(trained_for) = trained_for else {
        return Err(format!(
            "the difficulty model learned cloud model pairs (GPT-4 against Mixtral-8x7B), not {}'s answers: its score does not know where this model falls short; {advice}",
            model_path.display()
        ));
    };
    let sha256 =
        crate::backends::local::fingerprint(model_path, quant).map_err(|e| format!("{}: {e}", model_path.display()))?;
    if sha256 == trained_for.sha256 {
        return Ok(());
    }
    Err(format!(
        "the difficulty model learned the answers of {} (sha256 {}), not of {} (sha256 {sha256}): its score does not know where this model falls short; {advice}",
        trained_for.model,
        trained_for.sha256,
        model_path.display()
    ))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The text's tokens for hashing: lower-cased words (numbers reduced to their
/// digit count, so "1234" and "5678" share a feature), each CJK character alone.
fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut Vec<String>| {
        if word.is_empty() {
            return;
        }
        if word.bytes().all(|b| b.is_ascii_digit()) {
            out.push(format!("#{}", word.len().min(6)));
        } else {
            out.push(std::mem::take(word));
        }
        word.clear();
    };
    for c in text.chars() {
        if super::features::is_cjk_char(c) {
            flush(&mut word, &mut out);
            out.push(c.to_string());
        } else if c.is_alphanumeric() {
            word.extend(c.to_lowercase());
        } else {
            flush(&mut word, &mut out);
            if matches!(c, '?' | '=' | '$' | '\\' | '{' | '(' | '`') {
                out.push(c.to_string());
            }
        }
    }
    flush(&mut word, &mut out);
    out
}

fn bucket(parts: &[&str]) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            h = (h ^ 0x1f).wrapping_mul(0x0100_0000_01b3);
        }
        for &b in part.as_bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    1 + (h % u64::from(BUCKETS - 1)) as u32
}

/// Hashed word unigrams and bigrams, and character 3- to 5-grams inside
/// words (with their boundaries, so "ing" at a word's end differs from inside),
/// with their counts.
fn counts(text: &str) -> Vec<(u32, f32)> {
    let mut ids = hashed_ids(text, false);
    ids.sort_unstable();
    let mut out: Vec<(u32, f32)> = Vec::with_capacity(ids.len());
    for id in ids {
        match out.last_mut() {
            Some((last, n)) if *last == id => *n += 1.0,
            _ => out.push((id, 1.0)),
        }
    }
    out
}

/// The hashed ids of [`counts`], unsorted, one per occurrence; with
/// `distinct`, a word seen before adds only its bigram (its own ids are
/// already in), which is all binary features need and saves most of the
/// hashing and sorting on long prompts, where words repeat.
fn hashed_ids(text: &str, distinct: bool) -> Vec<u32> {
    let tokens = tokens(text);
    let mut seen = std::collections::HashSet::new();
    let mut ids: Vec<u32> = Vec::with_capacity(tokens.len() * if distinct { 4 } else { 8 });
    let mut padded = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        if let Some(next) = tokens.get(i + 1) {
            ids.push(bucket(&[token, next]));
        }
        if distinct && !seen.insert(token.as_str()) {
            continue;
        }
        ids.push(bucket(&[token]));
        padded.clear();
        padded.push(b'<');
        padded.extend_from_slice(token.as_bytes());
        padded.push(b'>');
        if padded.len() > 4 && token.is_ascii() {
            for n in 3..=5 {
                for gram in padded.windows(n) {
                    ids.push(char_bucket(gram));
                }
            }
        }
    }
    ids
}

fn normalise(mut features: Vec<(u32, f32)>) -> Vec<(u32, f32)> {
    let norm = features.iter().map(|(_, v)| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        features.iter_mut().for_each(|(_, v)| *v /= norm);
    }
    features
}

fn char_bucket(gram: &[u8]) -> u32 {
    let h = gram.iter().fold(0x84222325_cbf29ce4u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    1 + (h % u64::from(BUCKETS - 1)) as u32
}

/// Distinct hashed n-grams, each 1, L2-normalised.
pub fn binary_features(text: &str) -> Vec<(u32, f32)> {
    let mut ids = hashed_ids(text, true);
    ids.sort_unstable();
    ids.dedup();
    normalise(ids.into_iter().map(|id| (id, 1.0)).collect())
}

/// Hashed n-grams weighted by (1 + ln tf) * idf, L2-normalised.
pub fn tfidf_features(text: &str, idf: &[f32]) -> Vec<(u32, f32)> {
    normalise(
        counts(text)
            .into_iter()
            .map(|(id, tf)| (id, (1.0 + tf.ln()) * idf[id as usize]))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_models_load_and_score_in_range() {
        for model in [DifficultyModel::embedded(), DifficultyModel::baseline()] {
            for text in ["hi", "Prove that the square root of 2 is irrational.", "", "请解释"] {
                let s = model.score(&Features::from_text(text), text);
                assert!((0.0..=1.0).contains(&s), "{s}");
            }
        }
    }

    #[test]
    fn only_the_first_window_of_a_huge_prompt_is_read_for_its_score() {
        let model = DifficultyModel::embedded();
        // Multi-byte characters across the cut: it must land on a boundary.
        let head = "Prove that √2 is irrational. ".repeat(SCORED_TEXT_MAX_BYTES / 20);
        let window = scoring_window(&head);
        assert!(window.len() <= SCORED_TEXT_MAX_BYTES && window.len() > SCORED_TEXT_MAX_BYTES - 4);
        let tail = "Summarise the following table of quarterly results.".repeat(50_000);
        assert_eq!(
            model.text_features(&format!("{head}{tail}")),
            model.text_features(&head),
            "what follows the window changes nothing"
        );
        let short = "hi there";
        assert_eq!(scoring_window(short), short);
    }

    #[test]
    fn a_paired_score_is_the_expected_gain_of_the_strong_model() {
        let text = "prove the conjecture";
        let features = binary_features(text);
        let model = |strong: f32, weak: f32| {
            let mut weights = vec![0.0; 2 * BUCKETS as usize];
            for &(id, _) in &features {
                weights[2 * id as usize] = strong;
                weights[2 * id as usize + 1] = weak;
            }
            let structural = vec![0.0; 2 * STRUCTURAL_FEATURES];
            DifficultyModel::from_parts(
                Kind::Paired,
                vec![0.0; 2],
                structural,
                weights,
                UNCALIBRATED,
                Vec::new(),
            )
        };
        let f = Features::from_text(text);
        // Both heads alike: no gain either way.
        assert!((model(1.0, 1.0).score(&f, text) - 0.5).abs() < 1e-6);
        // The strong model likely right, the weak one likely wrong: a high score.
        let hard = model(4.0, -4.0);
        let heads = hard.heads(&f, text);
        assert!(heads[0] > 0.8 && heads[1] < 0.2, "{heads:?}");
        assert!(hard.score(&f, text) > 0.6);
        assert!(model(-4.0, 4.0).score(&f, text) < 0.4);
        // The file keeps every part, what it was trained for included.
        let mut hard = hard;
        hard.trained_for = Some(TrainedFor {
            model: "tiny@0123".into(),
            sha256: "0123".repeat(16),
        });
        let bytes = hard.to_bytes();
        let back = DifficultyModel::from_bytes(&bytes).unwrap();
        assert_eq!(back.to_bytes(), bytes);
        assert_eq!(back.trained_for, hard.trained_for);
        assert_eq!(back.score(&f, text), hard.score(&f, text));
        // A file of the previous version (no header) still reads, trained for nothing.
        let mut v2 = MAGIC_V2.to_vec();
        v2.extend_from_slice(&bytes[MAGIC.len()..MAGIC.len() + 5]);
        let header = u32::from_le_bytes(bytes[MAGIC.len() + 5..MAGIC.len() + 9].try_into().unwrap()) as usize;
        v2.extend_from_slice(&bytes[MAGIC.len() + 9 + header..bytes.len() - 8]);
        let checksum = fnv1a(&v2);
        v2.extend_from_slice(&checksum.to_le_bytes());
        let old = DifficultyModel::from_bytes(&v2).unwrap();
        assert_eq!(old.trained_for, None);
        assert_eq!(old.score(&f, text), hard.score(&f, text));
    }

    #[test]
    fn a_corrupt_artifact_is_refused() {
        let mut bytes = DifficultyModel::embedded().to_bytes();
        assert!(DifficultyModel::from_bytes(&bytes).is_ok());
        let middle = bytes.len() / 2;
        bytes[middle] ^= 1;
        assert!(
            DifficultyModel::from_bytes(&bytes)
                .err()
                .expect("refused")
                .contains("checksum")
        );
        assert!(DifficultyModel::from_bytes(b"GGUF....").is_err());
        // A checksummed file one weight short.
        let mut short = DifficultyModel::embedded().to_bytes();
        short.truncate(short.len() - 12);
        let checksum = fnv1a(&short);
        short.extend_from_slice(&checksum.to_le_bytes());
        let err = DifficultyModel::from_bytes(&short).err().expect("refused");
        assert!(err.contains("wrong length"), "{err}");
    }

    #[test]
    fn numbers_share_features_by_length() {
        assert_eq!(tokens("Add 1234 and 5678!"), ["add", "#4", "and", "#4"]);
        assert_eq!(binary_features("Add 1234"), binary_features("add 9999"));
    }

    #[test]
    fn binary_features_are_the_distinct_ngrams_of_every_occurrence() {
        let text = "the cat and the dog and the cat again, 12 and 34";
        let every: Vec<(u32, f32)> = normalise(counts(text).into_iter().map(|(id, _)| (id, 1.0)).collect());
        assert_eq!(binary_features(text), every);
    }
}
