//! Training the difficulty model with Burn's autodiff (Flex CPU backend).
//!
//! Each head is logistic regression over the hashed text features and the
//! structural features: an embedding table of one weight per bucket and head,
//! summed over a prompt's features (the sparse dot product), plus a linear
//! layer over the structural vector. Binary cross-entropy on soft targets,
//! Adam, a fixed seed: the same data gives the same artifact. A paired model's
//! calibration is fitted after each epoch on the validation rows.
//!
//! A paired model's two heads learn from the same rows: those whose pair is a
//! remote-class model against a weaker one (GPT-4 against Mixtral). Its score
//! is the difference of the heads, and a difference is only meaningful when
//! both sides saw the same prompts. A weak head that also learned from pairs of
//! 7-8B models (RouterDC) learned their failures where the strong head learned
//! nothing, and the gap read as a gain: 0.659 APGR on held-out MMLU with those
//! rows, 0.670 without (docs/routing.md, "Training").
//!
//! The only regularisation is early stopping: the number of epochs is chosen on
//! a validation tenth of the training rows (by id hash, never the test split),
//! and the model of the epoch with the best validation APGR (with that epoch's
//! calibration) is kept. Adam's coupled weight decay is available but off: on
//! sparse n-grams it shrinks the rare ones hardest, since a bucket absent from a
//! batch gets only the decay as its gradient, which Adam scales up to a full
//! step (0.640 -> 0.659 on held-out MMLU without it).

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Initializer, Linear, LinearConfig};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::data::Example;
use super::eval::{Scored, evaluate};
use super::{BUCKETS, Calibration, DifficultyModel, Kind, UNCALIBRATED, binary_features, tfidf_features};
use crate::routing::features::{Features, STRUCTURAL_FEATURES};

#[derive(Module, Debug)]
struct Net {
    text: Embedding,
    structural: Linear,
}

/// Training settings; the defaults reproduce the shipped artifact.
#[derive(Debug, Clone)]
pub struct Settings {
    pub kind: Kind,
    pub epochs: usize,
    pub batch: usize,
    pub learning_rate: f64,
    /// L2 penalty on every weight (Adam's coupled weight decay).
    pub weight_decay: f64,
    pub seed: u64,
    /// Print progress to stderr.
    pub verbose: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            kind: Kind::Paired,
            epochs: 12,
            batch: 256,
            learning_rate: 0.005,
            weight_decay: 0.0,
            seed: 17,
            verbose: false,
        }
    }
}

struct Prepared {
    text: Vec<(u32, f32)>,
    structural: [f32; STRUCTURAL_FEATURES],
    /// One target per head: (strong answers well, weak answers well) for a
    /// paired model, the example's target for a one-head model.
    targets: Vec<f32>,
}

/// Inverse document frequencies of the hashed n-grams, smoothed: ln((1+n)/(1+df)) + 1.
fn idf(examples: &[&Example]) -> Vec<f32> {
    let mut df = vec![0u32; BUCKETS as usize];
    for e in examples {
        for (id, _) in binary_features(&e.prompt) {
            df[id as usize] += 1;
        }
    }
    let n = examples.len() as f32;
    df.iter().map(|&d| ((1.0 + n) / (1.0 + d as f32)).ln() + 1.0).collect()
}

pub(crate) fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn is_validation(id: &str) -> bool {
    let h = id.bytes().fold(0x8422_2325_cbf2_9ce4u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    h % 10 == 3
}

/// Binary cross-entropy with logits, stable for soft targets:
/// max(z, 0) - z*y + ln(1 + e^-|z|), averaged.
fn cross_entropy(logits: Tensor<2>, targets: Tensor<2>) -> Tensor<1> {
    let loss = logits.clone().clamp_min(0.0) - logits.clone() * targets + logits.abs().neg().exp().log1p();
    loss.mean()
}

/// A paired model's targets: the strong and the weak model answer well.
fn paired_targets(e: &Example) -> [f32; 2] {
    [e.strong as f32, e.weak as f32]
}

/// Whether a model of `kind` learns from `example`: a paired model only from
/// rows with a remote-class pair (see the module comment), the baseline from all.
pub fn learns_from(kind: Kind, example: &Example) -> bool {
    kind == Kind::TfIdf || example.frontier
}

/// Trains a model on those of `examples` it [`learns_from`].
pub fn train(examples: &[Example], settings: &Settings) -> Result<DifficultyModel, String> {
    let kind = settings.kind;
    let examples: Vec<&Example> = examples.iter().filter(|e| learns_from(kind, e)).collect();
    if examples.is_empty() {
        return Err(match kind {
            Kind::Paired => "no training examples with a remote-class strong model".into(),
            Kind::TfIdf => "no training examples".into(),
        });
    }
    let trained_for = match kind {
        Kind::Paired => weak_model(&examples)?,
        Kind::TfIdf => None,
    };
    let heads = kind.heads();
    let idf = match kind {
        Kind::TfIdf => idf(&examples),
        Kind::Paired => Vec::new(),
    };
    let prepare = |e: &Example| match kind {
        Kind::Paired => Prepared {
            text: binary_features(&e.prompt),
            structural: Features::from_text(&e.prompt).vector(),
            targets: paired_targets(e).to_vec(),
        },
        Kind::TfIdf => Prepared {
            text: tfidf_features(&e.prompt, &idf),
            structural: [0.0; STRUCTURAL_FEATURES],
            targets: vec![e.target],
        },
    };
    let (validation, training): (Vec<&Example>, Vec<&Example>) =
        examples.into_iter().partition(|e| is_validation(&e.id));
    let training: Vec<Prepared> = training.iter().map(|e| prepare(e)).collect();
    let validation_rows: Vec<(Prepared, &Example)> = validation.iter().map(|e| (prepare(e), *e)).collect();

    let device = Device::flex().autodiff();
    let mut net = Net {
        text: EmbeddingConfig::new(BUCKETS as usize, heads)
            .with_initializer(Initializer::Zeros)
            .init(&device),
        structural: LinearConfig::new(STRUCTURAL_FEATURES, heads)
            .with_initializer(Initializer::Zeros)
            .init(&device),
    };
    let mut optimizer = AdamConfig::new()
        .with_weight_decay((settings.weight_decay > 0.0).then(|| WeightDecayConfig::new(settings.weight_decay as f32)))
        .init();
    let mut rng = settings.seed;
    let mut order: Vec<usize> = (0..training.len()).collect();
    let mut best: Option<(f64, DifficultyModel)> = None;
    for epoch in 1..=settings.epochs {
        for i in (1..order.len()).rev() {
            order.swap(i, (splitmix(&mut rng) % (i as u64 + 1)) as usize);
        }
        let mut loss_sum = 0.0;
        let mut batches = 0;
        for batch in order.chunks(settings.batch) {
            let rows: Vec<&Prepared> = batch.iter().map(|&i| &training[i]).collect();
            let (logits, targets) = forward(&net, &rows, heads, &device);
            let loss = cross_entropy(logits, targets);
            loss_sum += loss.clone().into_scalar::<f32>() as f64;
            batches += 1;
            let grads = GradientsParams::from_grads(loss.backward(), &net);
            net = optimizer.step(settings.learning_rate, net, grads);
        }
        let mut model = export(&net, kind, idf.clone());
        let validation_heads: Vec<(Vec<f32>, &Example)> = validation_rows
            .iter()
            .map(|(p, e)| (model.heads_of(&p.text, &p.structural), *e))
            .collect();
        if kind == Kind::Paired {
            model.calibration = calibrate(&validation_heads, &device);
        }
        let validation_apgr = validation_quality(&model, &validation_heads);
        if settings.verbose {
            eprintln!(
                "epoch {epoch}: training loss {:.4}, validation APGR {validation_apgr:.3}",
                loss_sum / f64::from(batches)
            );
        }
        if best.as_ref().is_none_or(|(apgr, _)| validation_apgr > *apgr) {
            best = Some((validation_apgr, model));
        }
    }
    let mut model = best.expect("at least one epoch").1;
    model.trained_for = trained_for;
    Ok(model)
}

/// The one local model whose own correctness the rows' weak labels are, if
/// they are one's: a weak head learns one model, so a mix is refused.
fn weak_model(examples: &[&Example]) -> Result<Option<super::TrainedFor>, String> {
    let mut models: Vec<Option<&super::TrainedFor>> = examples.iter().map(|e| e.weak_model.as_ref()).collect();
    models.sort_by_key(|m| m.map(|m| (&m.model, &m.sha256)));
    models.dedup();
    match models.as_slice() {
        [] | [None] => Ok(None),
        [Some(model)] => Ok(Some((*model).clone())),
        several => Err(format!(
            "the weak labels are of several models ({}); a paired model learns one local model's answers: train on the rows labelled for it",
            several
                .iter()
                .map(|m| m.map_or("cloud model pairs", |m| m.model.as_str()))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Fits a paired model's calibration on rows its heads never trained on: two
/// logistic regressions from the heads' probabilities to whether the strong
/// and the weak model answered well.
fn calibrate(rows: &[(Vec<f32>, &Example)], device: &Device) -> Calibration {
    if rows.len() < 20 {
        return UNCALIBRATED;
    }
    let n = rows.len();
    let inputs: Vec<f32> = rows.iter().flat_map(|(h, _)| [h[0], h[1]]).collect();
    let targets: Vec<f32> = rows.iter().flat_map(|(_, e)| paired_targets(e)).collect();
    let inputs = Tensor::<2>::from_data(TensorData::new(inputs, [n, 2]), device);
    let targets = Tensor::<2>::from_data(TensorData::new(targets, [n, 2]), device);
    let mut layer = LinearConfig::new(2, 2)
        .with_initializer(Initializer::Zeros)
        .init(device);
    let mut optimizer = AdamConfig::new().init();
    for _ in 0..400 {
        let loss = cross_entropy(layer.forward(inputs.clone()), targets.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &layer);
        layer = optimizer.step(0.05, layer, grads);
    }
    // Burn's weight is [input][output]: output j = Σ_i x_i · W[i][j] + b_j.
    let w = layer.weight.val().into_data().try_to_vec::<f32>().expect("f32 weights");
    let b = layer.bias.as_ref().map_or(vec![0.0; 2], |b| {
        b.val().into_data().try_to_vec::<f32>().expect("f32 bias")
    });
    [w[0], w[2], b[0], w[1], w[3], b[1]]
}

/// Validation APGR of each source's validation rows, averaged with the
/// sources' row counts as weights.
fn validation_quality(model: &DifficultyModel, rows: &[(Vec<f32>, &Example)]) -> f64 {
    let mut by_source: std::collections::BTreeMap<&str, Vec<Scored>> = Default::default();
    for (heads, example) in rows {
        by_source.entry(&example.source).or_default().push(Scored {
            score: model.score_of(heads),
            strong: example.strong,
            weak: example.weak,
        });
    }
    let (mut sum, mut weight) = (0.0, 0.0);
    for rows in by_source.values().filter(|rows| rows.len() >= 20) {
        let apgr = evaluate(rows).apgr;
        if apgr.is_finite() {
            sum += apgr * rows.len() as f64;
            weight += rows.len() as f64;
        }
    }
    sum / weight.max(1.0)
}

fn forward(net: &Net, rows: &[&Prepared], heads: usize, device: &Device) -> (Tensor<2>, Tensor<2>) {
    let b = rows.len();
    let width = rows.iter().map(|r| r.text.len()).max().unwrap_or(1).max(1);
    let mut ids = vec![0i64; b * width];
    let mut values = vec![0f32; b * width];
    let mut structural = Vec::with_capacity(b * STRUCTURAL_FEATURES);
    let mut targets = Vec::with_capacity(b * heads);
    for (r, row) in rows.iter().enumerate() {
        for (j, &(id, v)) in row.text.iter().enumerate() {
            ids[r * width + j] = i64::from(id);
            values[r * width + j] = v;
        }
        structural.extend_from_slice(&row.structural);
        targets.extend_from_slice(&row.targets);
    }
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, width]), device);
    let values = Tensor::<3>::from_data(TensorData::new(values, [b, width, 1]), device);
    let structural = Tensor::<2>::from_data(TensorData::new(structural, [b, STRUCTURAL_FEATURES]), device);
    let targets = Tensor::<2>::from_data(TensorData::new(targets, [b, heads]), device);
    let text = (net.text.forward(ids) * values).sum_dim(1).reshape([b, heads]);
    (text + net.structural.forward(structural), targets)
}

fn export(net: &Net, kind: Kind, idf: Vec<f32>) -> DifficultyModel {
    let floats = |t: Tensor<2>| t.into_data().try_to_vec::<f32>().expect("f32 weights");
    let weights = floats(net.text.weight.val());
    let structural = match kind {
        Kind::Paired => floats(net.structural.weight.val()),
        Kind::TfIdf => Vec::new(),
    };
    let bias = net.structural.bias.as_ref().map_or(vec![0.0; kind.heads()], |b| {
        b.val().into_data().try_to_vec::<f32>().expect("f32 bias")
    });
    DifficultyModel::from_parts(kind, bias, structural, weights, UNCALIBRATED, idf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::difficulty::data::{example, read_jsonl};

    fn sample() -> Vec<Example> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/data/routing/routellm_mmlu_train_sample.jsonl"
        );
        read_jsonl(std::path::Path::new(path))
            .unwrap()
            .iter()
            .filter_map(example)
            .collect()
    }

    #[test]
    fn training_is_deterministic_and_learns_something() {
        let examples = sample();
        assert!(examples.len() > 1000);
        let settings = Settings {
            epochs: 3,
            ..Settings::default()
        };
        let a = train(&examples, &settings).unwrap();
        let b = train(&examples, &settings).unwrap();
        assert_eq!(a.to_bytes(), b.to_bytes(), "same data and seed, same artifact");
        let other_seed = train(&examples, &Settings { seed: 5, ..settings }).unwrap();
        assert_ne!(a.to_bytes(), other_seed.to_bytes());
        // On its own training rows the model must rank far better than chance.
        let rows: Vec<Scored> = examples
            .iter()
            .map(|e| Scored {
                score: a.score(&Features::from_text(&e.prompt), &e.prompt),
                strong: e.strong,
                weak: e.weak,
            })
            .collect();
        assert!(evaluate(&rows).apgr > 0.6, "{:?}", evaluate(&rows));
    }

    #[test]
    fn a_paired_model_learns_only_from_rows_with_a_remote_class_pair() {
        let examples = sample();
        let settings = Settings {
            epochs: 2,
            ..Settings::default()
        };
        // The same prompts as a pair of 7B models, with the labels flipped:
        // were they learned from, the artifact would change.
        let sevens: Vec<Example> = examples
            .iter()
            .map(|e| Example {
                id: format!("{}/7b", e.id),
                strong: 1.0 - e.weak,
                weak: 1.0 - e.strong,
                frontier: false,
                ..e.clone()
            })
            .collect();
        let mixed: Vec<Example> = examples.iter().chain(&sevens).cloned().collect();
        assert_eq!(
            train(&examples, &settings).unwrap().to_bytes(),
            train(&mixed, &settings).unwrap().to_bytes()
        );
        let err = train(&sevens, &settings).err().expect("nothing to learn from");
        assert!(err.contains("remote-class"), "{err}");
        // The one-head baseline learns from every row.
        let baseline = Settings {
            kind: Kind::TfIdf,
            ..settings
        };
        assert_ne!(
            train(&examples, &baseline).unwrap().to_bytes(),
            train(&mixed, &baseline).unwrap().to_bytes()
        );
    }

    #[test]
    fn a_model_trained_on_one_local_models_labels_records_it_and_a_mix_is_refused() {
        let examples = sample();
        let settings = Settings {
            epochs: 1,
            ..Settings::default()
        };
        assert_eq!(train(&examples, &settings).unwrap().trained_for, None);
        let local = |model: &str| super::super::TrainedFor {
            model: model.into(),
            sha256: format!("{model:0>64}"),
        };
        let labelled: Vec<Example> = examples
            .iter()
            .map(|e| Example {
                weak_model: Some(local("tiny")),
                ..e.clone()
            })
            .collect();
        let model = train(&labelled, &settings).unwrap();
        assert_eq!(model.trained_for, Some(local("tiny")));
        assert_eq!(
            super::super::DifficultyModel::from_bytes(&model.to_bytes())
                .unwrap()
                .trained_for,
            Some(local("tiny"))
        );
        let mut mixed = labelled.clone();
        mixed[0].weak_model = Some(local("other"));
        let err = train(&mixed, &settings).err().expect("a mix of weak models");
        assert!(err.contains("tiny") && err.contains("other"), "{err}");
        mixed[0].weak_model = None;
        let err = train(&mixed, &settings).err().expect("a mix with cloud pairs");
        assert!(err.contains("cloud model pairs"), "{err}");
    }
}
