//! The learned difficulty score: the probability that the weak (local) model's
//! answer falls short where the strong (remote) one's would not.
//!
//! The model is deliberately small and fast: the prompt's words, word pairs
//! and (for CJK) characters are hashed into [`BUCKETS`] buckets, each with a
//! learned weight, and the structural [`Features`] add a weight each; a logistic
//! function turns the sum into a score. Scoring a 2k-token prompt is one pass
//! over its text and a few thousand additions (see `bench/route_decision.sh`).
//!
//! Training (with Burn's autodiff, [`train`]) and evaluation (APGR/CPT as in the
//! RouteLLM paper, [`eval`]) live beside it; the shipped artifact is
//! `router/assets/difficulty.bin`, reproduced by `switchyard route train`.
//! The same file format holds the TF-IDF + logistic-regression baseline
//! (`router/assets/baseline.bin`) that `switchyard route eval` reports beside it.

pub mod data;
pub mod eval;
pub mod train;

use std::sync::OnceLock;

use super::features::{Features, STRUCTURAL_FEATURES};

/// Hash buckets of the text features (bucket 0 is padding, never a feature).
pub const BUCKETS: u32 = 1 << 18;

const MAGIC: &[u8; 8] = b"SYDIFF01";

/// How the text features are weighted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Binary hashed features, L2-normalised, plus the structural features.
    Hashed = 0,
    /// TF-IDF weighted hashed features, L2-normalised, no structural features
    /// (the baseline).
    TfIdf = 1,
}

pub struct DifficultyModel {
    kind: Kind,
    pub(crate) bias: f32,
    pub(crate) structural: Vec<f32>,
    pub(crate) weights: Vec<f32>,
    /// Inverse document frequency per bucket (TF-IDF only).
    idf: Vec<f32>,
}

static EMBEDDED: OnceLock<DifficultyModel> = OnceLock::new();
static BASELINE: OnceLock<DifficultyModel> = OnceLock::new();

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

    pub fn load(path: &std::path::Path) -> Result<DifficultyModel, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        DifficultyModel::from_bytes(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The score of a request: in [0, 1], higher = more need of the strong model.
    pub fn score(&self, features: &Features, text: &str) -> f32 {
        let mut z = self.bias;
        for (index, value) in self.text_features(text) {
            z += self.weights[index as usize] * value;
        }
        if self.kind == Kind::Hashed {
            for (w, x) in self.structural.iter().zip(features.vector()) {
                z += w * x;
            }
        }
        1.0 / (1.0 + (-z).exp())
    }

    /// The weighted text features of this model's kind.
    pub fn text_features(&self, text: &str) -> Vec<(u32, f32)> {
        match self.kind {
            Kind::Hashed => binary_features(text),
            Kind::TfIdf => tfidf_features(text, &self.idf),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 4 * (self.weights.len() + self.idf.len() + 32));
        out.extend_from_slice(MAGIC);
        out.push(self.kind as u8);
        out.extend_from_slice(&(self.weights.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.structural.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.idf.len() as u32).to_le_bytes());
        for v in std::iter::once(&self.bias)
            .chain(&self.structural)
            .chain(&self.weights)
            .chain(&self.idf)
        {
            out.extend_from_slice(&v.to_le_bytes());
        }
        let checksum = fnv1a(&out);
        out.extend_from_slice(&checksum.to_le_bytes());
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<DifficultyModel, String> {
        let header = MAGIC.len() + 1 + 12;
        if bytes.len() < header + 12 || &bytes[..MAGIC.len()] != MAGIC {
            return Err("not a Switchyard difficulty model (bad magic or too short)".into());
        }
        let (body, tail) = bytes.split_at(bytes.len() - 8);
        let checksum = u64::from_le_bytes(tail.try_into().expect("8 bytes"));
        if fnv1a(body) != checksum {
            return Err("difficulty model checksum mismatch (corrupt file)".into());
        }
        let kind = match body[MAGIC.len()] {
            0 => Kind::Hashed,
            1 => Kind::TfIdf,
            other => return Err(format!("unknown difficulty model kind {other}")),
        };
        let u32_at = |at: usize| u32::from_le_bytes(body[at..at + 4].try_into().expect("4 bytes")) as usize;
        let (buckets, structural, idf) = (u32_at(9), u32_at(13), u32_at(17));
        let expected_structural = if kind == Kind::Hashed { STRUCTURAL_FEATURES } else { 0 };
        let expected_idf = if kind == Kind::TfIdf { BUCKETS as usize } else { 0 };
        if buckets != BUCKETS as usize || structural != expected_structural || idf != expected_idf {
            return Err(format!(
                "difficulty model shape {buckets}/{structural}/{idf} does not match this build ({BUCKETS}/{expected_structural}/{expected_idf})"
            ));
        }
        let floats: Vec<f32> = body[header..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        if floats.len() != 1 + structural + buckets + idf || floats.iter().any(|v| !v.is_finite()) {
            return Err("difficulty model has the wrong length or non-finite weights".into());
        }
        Ok(DifficultyModel {
            kind,
            bias: floats[0],
            structural: floats[1..1 + structural].to_vec(),
            weights: floats[1 + structural..1 + structural + buckets].to_vec(),
            idf: floats[1 + structural + buckets..].to_vec(),
        })
    }

    pub(crate) fn from_parts(kind: Kind, bias: f32, structural: Vec<f32>, weights: Vec<f32>, idf: Vec<f32>) -> Self {
        DifficultyModel {
            kind,
            bias,
            structural,
            weights,
            idf,
        }
    }
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
    let tokens = tokens(text);
    let mut ids: Vec<u32> = Vec::with_capacity(tokens.len() * 8);
    let mut padded = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        ids.push(bucket(&[token]));
        if let Some(next) = tokens.get(i + 1) {
            ids.push(bucket(&[token, next]));
        }
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
    normalise(counts(text).into_iter().map(|(id, _)| (id, 1.0)).collect())
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
    }

    #[test]
    fn numbers_share_features_by_length() {
        assert_eq!(tokens("Add 1234 and 5678!"), ["add", "#4", "and", "#4"]);
        assert_eq!(binary_features("Add 1234"), binary_features("add 9999"));
    }
}
