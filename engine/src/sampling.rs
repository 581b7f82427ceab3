//! Choosing the next token from the model's logits.
//!
//! The chain, in llama.cpp's default order: penalties (repetition, presence,
//! frequency) → top-k → top-p → min-p → temperature → a draw. Temperature 0 is
//! greedy: the arg-max of the penalised logits, no draw.
//!
//! Log-probs reported to clients (OpenAI `logprobs`/`top_logprobs`) are those of
//! the model's own distribution, log-softmax of the raw logits, before any
//! penalty or truncation: that is what "how sure was the model" means, and it is
//! what the confidence signals of the escalation ladder read.
//!
//! The random source is a seeded SplitMix64, so a seed gives the same tokens on
//! every machine and every run.

/// How to choose tokens, as a request asks.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p. 1 = off.
    pub top_p: f32,
    /// Keep the k most likely tokens. 0 = off.
    pub top_k: usize,
    /// Drop tokens less likely than min_p × the most likely one. 0 = off.
    pub min_p: f32,
    /// OpenAI's: subtract this from the logit of every token already generated.
    pub presence_penalty: f32,
    /// OpenAI's: subtract this × the number of times a token was generated.
    pub frequency_penalty: f32,
    /// HF/llama.cpp's: divide positive logits (multiply negative ones) of seen tokens. 1 = off.
    pub repetition_penalty: f32,
    pub seed: Option<u64>,
}

/// The sampling its publisher recommends for a model, each value when given:
/// a Hugging Face checkpoint's `generation_config.json`. Requests and the
/// operator's policy come first; these fill what both leave out.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SamplingHints {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    /// OpenAI's, as Qwen3.5's card recommends it against repetition loops.
    pub presence_penalty: Option<f32>,
}

impl SamplingHints {
    /// From a `generation_config.json`. `do_sample: false` is greedy
    /// (temperature 0), whatever temperature it also gives. A value out of
    /// its range is left out, as if not given.
    pub fn from_generation_config(config: &serde_json::Value) -> SamplingHints {
        let number = |key: &str, valid: fn(f64) -> bool| {
            config
                .get(key)
                .and_then(serde_json::Value::as_f64)
                .filter(|&v| v.is_finite() && valid(v))
                .map(|v| v as f32)
        };
        let greedy = config.get("do_sample").and_then(serde_json::Value::as_bool) == Some(false);
        SamplingHints {
            temperature: if greedy {
                Some(0.0)
            } else {
                number("temperature", |t| (0.0..=2.0).contains(&t))
            },
            top_p: number("top_p", |p| p > 0.0 && p <= 1.0),
            top_k: config
                .get("top_k")
                .and_then(serde_json::Value::as_u64)
                .map(|k| k as usize),
            min_p: number("min_p", |p| (0.0..=1.0).contains(&p)),
            repetition_penalty: number("repetition_penalty", |r| r > 0.0),
            presence_penalty: number("presence_penalty", |p| (-2.0..=2.0).contains(&p)),
        }
    }
}

/// The sampling recommended for each mode of a model: with thinking, and
/// without. Models that do not think use `thinking` for everything.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ModeHints {
    /// Answers with thinking on, and every answer of a model that does not think.
    pub thinking: SamplingHints,
    /// Answers with thinking off.
    pub direct: SamplingHints,
}

/// What model cards recommend per mode, for families whose recommendations
/// differ by mode (a checkpoint's `generation_config.json` holds one set, the
/// thinking one): (architecture, thinking, direct).
const CARD_RECOMMENDATIONS: &[(&str, SamplingHints, SamplingHints)] = &[
    (
        // Qwen3.5's card, general tasks: thinking "temperature=1.0, top_p=0.95,
        // top_k=20, min_p=0.0, presence_penalty=1.5"; non-thinking
        // "temperature=0.7, top_p=0.8, top_k=20, min_p=0.0, presence_penalty=1.5".
        "qwen35",
        SamplingHints {
            temperature: Some(1.0),
            top_p: Some(0.95),
            top_k: Some(20),
            min_p: Some(0.0),
            repetition_penalty: None,
            presence_penalty: Some(1.5),
        },
        SamplingHints {
            temperature: Some(0.7),
            top_p: Some(0.8),
            top_k: Some(20),
            min_p: Some(0.0),
            repetition_penalty: None,
            presence_penalty: Some(1.5),
        },
    ),
    (
        // Qwen3's card: "For thinking mode, use Temperature=0.6, TopP=0.95, TopK=20,
        // and MinP=0 ... For non-thinking mode, we suggest using Temperature=0.7,
        // TopP=0.8, TopK=20, and MinP=0."
        "qwen3",
        SamplingHints {
            temperature: Some(0.6),
            top_p: Some(0.95),
            top_k: Some(20),
            min_p: Some(0.0),
            repetition_penalty: None,
            presence_penalty: None,
        },
        SamplingHints {
            temperature: Some(0.7),
            top_p: Some(0.8),
            top_k: Some(20),
            min_p: Some(0.0),
            repetition_penalty: None,
            presence_penalty: None,
        },
    ),
];

impl SamplingHints {
    /// Each value from here, else from `under`.
    pub fn or(self, under: SamplingHints) -> SamplingHints {
        SamplingHints {
            temperature: self.temperature.or(under.temperature),
            top_p: self.top_p.or(under.top_p),
            top_k: self.top_k.or(under.top_k),
            min_p: self.min_p.or(under.min_p),
            repetition_penalty: self.repetition_penalty.or(under.repetition_penalty),
            presence_penalty: self.presence_penalty.or(under.presence_penalty),
        }
    }
}

impl ModeHints {
    /// The recommendations for a model of `architecture` whose checkpoint
    /// gives `config`: `config` for both modes, except that a model that
    /// `thinks` and whose family's card recommends values per mode gets the
    /// card's thinking values under `config`'s, and the card's direct values
    /// over `config`'s (which are the thinking ones) without thinking.
    pub fn recommended(architecture: &str, thinks: bool, config: SamplingHints) -> ModeHints {
        match CARD_RECOMMENDATIONS.iter().find(|(arch, ..)| *arch == architecture) {
            Some((_, thinking, direct)) if thinks => ModeHints {
                thinking: config.or(*thinking),
                direct: direct.or(config),
            },
            _ => ModeHints {
                thinking: config,
                direct: config,
            },
        }
    }

    pub fn for_mode(&self, thinking: bool) -> SamplingHints {
        if thinking { self.thinking } else { self.direct }
    }
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            seed: None,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Checks ranges the way OpenAI documents them; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        let finite = [
            ("temperature", self.temperature),
            ("top_p", self.top_p),
            ("min_p", self.min_p),
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
            ("repetition_penalty", self.repetition_penalty),
        ];
        if let Some((name, _)) = finite.iter().find(|(_, v)| !v.is_finite()) {
            return Err(format!("{name} must be a finite number"));
        }
        if !(0.0..=2.0).contains(&self.temperature) {
            return Err("temperature must be between 0 and 2".into());
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err("top_p must be greater than 0 and at most 1".into());
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err("min_p must be between 0 and 1".into());
        }
        if !(-2.0..=2.0).contains(&self.presence_penalty) {
            return Err("presence_penalty must be between -2 and 2".into());
        }
        if !(-2.0..=2.0).contains(&self.frequency_penalty) {
            return Err("frequency_penalty must be between -2 and 2".into());
        }
        if self.repetition_penalty <= 0.0 {
            return Err("repetition_penalty must be positive".into());
        }
        Ok(())
    }
}

/// One chosen token and what the model thought of it.
#[derive(Debug, Clone, PartialEq)]
pub struct SampledToken {
    pub id: u32,
    /// Log-probability of `id` under the model's distribution.
    pub logprob: f32,
    /// The `top_logprobs` most likely tokens, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// A seeded, portable random source (SplitMix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    /// How often each token has been generated so far (for the penalties).
    counts: std::collections::HashMap<u32, u32>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        let seed = params.seed.unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            nanos ^ u64::from(std::process::id()).rotate_left(32)
        });
        Sampler {
            params,
            rng: Rng::new(seed),
            counts: Default::default(),
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Chooses the next token from `logits` (one per vocabulary entry) and
    /// records it for the penalties. `top_logprobs` alternatives are reported.
    pub fn sample(&mut self, logits: &[f32], top_logprobs: usize) -> SampledToken {
        let log_z = log_sum_exp(logits);
        let top = top_k_indices(logits, top_logprobs)
            .into_iter()
            .map(|i| (i as u32, logits[i] - log_z))
            .collect();

        let id = if self.needs_adjusting() {
            let mut adjusted = logits.to_vec();
            self.apply_penalties(&mut adjusted);
            self.choose(&adjusted)
        } else {
            self.choose(logits)
        };
        *self.counts.entry(id).or_insert(0) += 1;
        SampledToken {
            id,
            logprob: logits[id as usize] - log_z,
            top,
        }
    }

    /// Chooses the next token as [`Sampler::sample`] does, without recording
    /// it: the caller may refuse it (a grammar) and choose again.
    pub fn propose(&mut self, logits: &[f32]) -> u32 {
        if self.needs_adjusting() {
            let mut adjusted = logits.to_vec();
            self.apply_penalties(&mut adjusted);
            self.choose(&adjusted)
        } else {
            self.choose(logits)
        }
    }

    /// Takes `id` as the next token whatever `logits` say (a forced token),
    /// reporting its log-prob and alternatives as [`Sampler::sample`] does, and
    /// recording it for the penalties.
    pub fn force(&mut self, logits: &[f32], id: u32, top_logprobs: usize) -> SampledToken {
        let log_z = log_sum_exp(logits);
        let top = top_k_indices(logits, top_logprobs)
            .into_iter()
            .map(|i| (i as u32, logits[i] - log_z))
            .collect();
        *self.counts.entry(id).or_insert(0) += 1;
        SampledToken {
            id,
            logprob: logits.get(id as usize).map_or(f32::NEG_INFINITY, |l| l - log_z),
            top,
        }
    }

    fn needs_adjusting(&self) -> bool {
        let p = &self.params;
        !self.counts.is_empty()
            && (p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 || p.repetition_penalty != 1.0)
    }

    fn apply_penalties(&self, logits: &mut [f32]) {
        let p = &self.params;
        for (&id, &count) in &self.counts {
            let Some(logit) = logits.get_mut(id as usize) else {
                continue;
            };
            if p.repetition_penalty != 1.0 {
                *logit = if *logit > 0.0 {
                    *logit / p.repetition_penalty
                } else {
                    *logit * p.repetition_penalty
                };
            }
            *logit -= count as f32 * p.frequency_penalty + p.presence_penalty;
        }
    }

    fn choose(&mut self, logits: &[f32]) -> u32 {
        if self.params.temperature == 0.0 {
            return argmax(logits) as u32;
        }
        let p = &self.params;
        // Candidates sorted by logit, most likely first; top-k bounds the sort.
        let k = if p.top_k == 0 {
            logits.len()
        } else {
            p.top_k.min(logits.len())
        };
        let mut candidates: Vec<(usize, f32)> = top_k_indices(logits, k).into_iter().map(|i| (i, logits[i])).collect();
        let max = candidates[0].1;
        // Probabilities at temperature 1 decide top-p and min-p, as in llama.cpp.
        let mut probs: Vec<f64> = candidates.iter().map(|&(_, l)| f64::from(l - max).exp()).collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= total);
        let mut keep = candidates.len();
        if p.top_p < 1.0 {
            let mut cumulative = 0.0;
            for (i, q) in probs.iter().enumerate() {
                cumulative += q;
                if cumulative >= f64::from(p.top_p) {
                    keep = i + 1;
                    break;
                }
            }
        }
        if p.min_p > 0.0 {
            let floor = probs[0] * f64::from(p.min_p);
            keep = keep.min(probs.iter().take_while(|&&q| q >= floor).count().max(1));
        }
        candidates.truncate(keep);
        let weights: Vec<f64> = candidates
            .iter()
            .map(|&(_, l)| (f64::from(l - max) / f64::from(p.temperature)).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        let mut target = self.rng.next_f64() * total;
        for (&(id, _), w) in candidates.iter().zip(&weights) {
            if target < *w {
                return id as u32;
            }
            target -= w;
        }
        candidates.last().expect("at least one candidate").0 as u32
    }
}

/// log Σ exp(x), stable.
pub fn log_sum_exp(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return max;
    }
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    max + sum.ln() as f32
}

/// Index of the largest value; the first one on ties (as llama.cpp's greedy sampler).
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// Indices of the k largest values, largest first (ties: lower index first).
pub fn top_k_indices(values: &[f32], k: usize) -> Vec<usize> {
    let k = k.min(values.len());
    if k == 0 {
        return Vec::new();
    }
    let order = |a: &usize, b: &usize| values[*b].total_cmp(&values[*a]).then(a.cmp(b));
    let mut indices: Vec<usize> = (0..values.len()).collect();
    if k < indices.len() {
        indices.select_nth_unstable_by(k - 1, order);
        indices.truncate(k);
    }
    indices.sort_by(order);
    indices
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.0, -1.0, 3.0, 0.5]
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut sampler = Sampler::new(SamplingParams::greedy());
        assert_eq!(sampler.sample(&logits(), 0).id, 1);
    }

    #[test]
    fn logprobs_are_the_models_own_distribution() {
        let mut sampler = Sampler::new(SamplingParams {
            temperature: 0.7,
            top_k: 2,
            seed: Some(1),
            ..Default::default()
        });
        let token = sampler.sample(&logits(), 3);
        let z: f32 = logits().iter().map(|l| l.exp()).sum::<f32>().ln();
        assert!((token.logprob - (logits()[token.id as usize] - z)).abs() < 1e-5);
        assert_eq!(token.top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 4, 2]);
        assert!((token.top[0].1 - (3.0 - z)).abs() < 1e-5);
    }

    #[test]
    fn the_same_seed_gives_the_same_tokens() {
        let run = |seed| {
            let mut sampler = Sampler::new(SamplingParams {
                temperature: 1.0,
                seed: Some(seed),
                ..Default::default()
            });
            (0..50).map(|_| sampler.sample(&logits(), 0).id).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_k_one_is_greedy_whatever_the_temperature() {
        let mut sampler = Sampler::new(SamplingParams {
            temperature: 2.0,
            top_k: 1,
            seed: Some(3),
            ..Default::default()
        });
        assert!((0..20).all(|_| sampler.sample(&logits(), 0).id == 1));
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        // Two tokens share almost all the mass; a tiny top_p keeps only the first.
        let logits = vec![10.0, 9.9, -5.0, -5.0];
        let mut sampler = Sampler::new(SamplingParams {
            top_p: 0.1,
            seed: Some(1),
            ..Default::default()
        });
        assert!((0..50).all(|_| sampler.sample(&logits, 0).id == 0));
        let mut sampler = Sampler::new(SamplingParams {
            min_p: 0.5,
            seed: Some(2),
            ..Default::default()
        });
        assert!((0..200).all(|_| sampler.sample(&logits, 0).id <= 1));
    }

    #[test]
    fn penalties_push_away_from_repeats() {
        let logits = vec![2.0, 1.9];
        let mut sampler = Sampler::new(SamplingParams {
            temperature: 0.0,
            frequency_penalty: 1.0,
            ..SamplingParams::default()
        });
        let first = sampler.sample(&logits, 0).id;
        let second = sampler.sample(&logits, 0).id;
        assert_eq!((first, second), (0, 1));
        let mut sampler = Sampler::new(SamplingParams {
            temperature: 0.0,
            repetition_penalty: 1.5,
            ..Default::default()
        });
        assert_eq!(sampler.sample(&logits, 0).id, 0);
        assert_eq!(sampler.sample(&logits, 0).id, 1, "2.0 / 1.5 < 1.9");
    }

    #[test]
    fn validation_names_the_field() {
        let bad = SamplingParams {
            temperature: 3.0,
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("temperature"));
        let bad = SamplingParams {
            top_p: 0.0,
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("top_p"));
        assert!(SamplingParams::default().validate().is_ok());
    }

    #[test]
    fn top_k_indices_handles_ties_and_bounds() {
        assert_eq!(top_k_indices(&[1.0, 3.0, 3.0, 2.0], 3), [1, 2, 3]);
        assert_eq!(top_k_indices(&[1.0], 5), [0]);
        assert!(top_k_indices(&[1.0], 0).is_empty());
    }

    #[test]
    fn a_generation_config_gives_its_sampling_and_greedy_wins() {
        let qwen3 = serde_json::json!({ "do_sample": true, "temperature": 0.6, "top_k": 20, "top_p": 0.95 });
        assert_eq!(
            SamplingHints::from_generation_config(&qwen3),
            SamplingHints {
                temperature: Some(0.6),
                top_p: Some(0.95),
                top_k: Some(20),
                min_p: None,
                repetition_penalty: None,
                presence_penalty: None,
            }
        );
        let qwen35 = serde_json::json!({ "temperature": 1.0, "presence_penalty": 1.5 });
        assert_eq!(
            SamplingHints::from_generation_config(&qwen35).presence_penalty,
            Some(1.5)
        );
        let greedy = serde_json::json!({ "do_sample": false, "temperature": 0.7, "top_p": 7.0 });
        let hints = SamplingHints::from_generation_config(&greedy);
        assert_eq!(
            (hints.temperature, hints.top_p),
            (Some(0.0), None),
            "greedy; an invalid top_p is left out"
        );
        assert_eq!(
            SamplingHints::from_generation_config(&serde_json::json!({})),
            SamplingHints::default()
        );
    }

    #[test]
    fn a_thinking_qwen3_gets_its_cards_values_per_mode_and_others_one_set() {
        let config = SamplingHints {
            temperature: Some(0.6),
            top_p: Some(0.95),
            top_k: Some(20),
            repetition_penalty: Some(1.05),
            ..SamplingHints::default()
        };
        let qwen3 = ModeHints::recommended("qwen3", true, config);
        assert_eq!(
            qwen3.for_mode(true),
            SamplingHints {
                min_p: Some(0.0),
                ..config
            }
        );
        let direct = qwen3.for_mode(false);
        assert_eq!(
            (
                direct.temperature,
                direct.top_p,
                direct.top_k,
                direct.min_p,
                direct.repetition_penalty
            ),
            (Some(0.7), Some(0.8), Some(20), Some(0.0), Some(1.05))
        );
        // A GGUF file gives no generation config: the card's values alone.
        assert_eq!(
            ModeHints::recommended("qwen3", true, SamplingHints::default())
                .thinking
                .temperature,
            Some(0.6)
        );
        // A Qwen3 without thinking markers, or another family: one set.
        for (arch, thinks) in [("qwen3", false), ("llama", true)] {
            let hints = ModeHints::recommended(arch, thinks, config);
            assert_eq!((hints.thinking, hints.direct), (config, config));
        }
    }
}
