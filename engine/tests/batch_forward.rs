//! Several sequences in one forward pass ([`Model::forward_batch`]): each gets
//! the logits it gets alone, bit for bit, whatever it is batched with.
//!
//! Five sequences with different prompts go through a schedule of steps that
//! mixes prompt chunks (some of which want no logits) with one-token decodes,
//! sequences joining, leaving and rejoining, in an order that is not theirs.
//! The same schedule runs twice: batched, and each segment alone (a batch of
//! one, on caches of its own). Every logit must have the same f32 bits, and
//! so must every position of one whole pass over the sequence (`forward_all`,
//! which a wrong position common to both runs would not escape), every cache
//! must have advanced by exactly its segment, and each sequence continued
//! alone afterwards must still give the same bits (what the batch wrote in
//! its cache and recurrent state is what a run alone writes).
//!
//! Bit equality is the contract, not a tolerance: the matmul kernels compute
//! each row as they would alone (`matmul_rows_are_independent_of_the_batch`)
//! and every other op is per row or per sequence. A row run at another
//! sequence's position, or against another sequence's cache, changes its
//! logits by far more than a rounding: the models here are random, and two
//! sequences never share a prefix.

mod common;

use std::path::{Path, PathBuf};

use burn::prelude::*;
use switchyard_engine::model::source::WeightSource;
use switchyard_engine::model::weights::Quantization;
use switchyard_engine::model::{KvCache, Model, Segment};
use switchyard_engine::quant::QuantFormat;

/// What one sequence runs in a step: its next `tokens`, and whether it wants
/// the logits of the last.
#[derive(Clone, Copy)]
struct Part {
    sequence: usize,
    tokens: usize,
    logits: bool,
}

const fn part(sequence: usize, tokens: usize, logits: bool) -> Part {
    Part {
        sequence,
        tokens,
        logits,
    }
}

/// Prompts of 7, 12, 3, 20 and 9 tokens; sequence 1's in two chunks, 3's in
/// three and 4's in two, the first ones wanting no logits (step 3 wants none
/// at all); 0 and 2 leave at step 4 and come back at 5, 1 leaves at 5; step 6
/// decodes all five. Within a step the order is mixed.
const SCHEDULE: [&[Part]; 8] = [
    &[part(0, 7, true), part(1, 5, false)],
    &[part(1, 7, true), part(0, 1, true), part(2, 3, true)],
    &[part(2, 1, true), part(0, 1, true), part(1, 1, true), part(3, 8, false)],
    &[part(4, 4, false), part(3, 6, false)],
    &[part(3, 6, true), part(1, 1, true), part(4, 5, true)],
    &[part(4, 1, true), part(0, 1, true), part(3, 1, true), part(2, 1, true)],
    &[
        part(1, 1, true),
        part(2, 1, true),
        part(3, 1, true),
        part(4, 1, true),
        part(0, 1, true),
    ],
    &[part(3, 1, true), part(0, 2, true), part(4, 1, true)],
];

const SEQUENCES: usize = 5;

/// Tokens each sequence runs after the schedule, alone.
const AFTERWARDS: usize = 3;

/// Every sequence's tokens: what the schedule runs of it, then [`AFTERWARDS`]
/// more; different for each sequence from the first (pseudo-random ids).
fn streams(vocab: usize) -> Vec<Vec<u32>> {
    (0..SEQUENCES)
        .map(|sequence| {
            let scheduled: usize = SCHEDULE
                .iter()
                .flat_map(|step| step.iter())
                .filter(|p| p.sequence == sequence)
                .map(|p| p.tokens)
                .sum();
            let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (sequence as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            (0..scheduled + AFTERWARDS)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state % vocab as u64) as u32
                })
                .collect()
        })
        .collect()
}

/// Logits as their bits, for exact comparison.
fn bits(logits: &[f32]) -> Vec<u32> {
    logits.iter().map(|l| l.to_bits()).collect()
}

/// Per step, per part: the logits it gave (`None` when it asked for none).
type Results = Vec<Vec<Option<Vec<u32>>>>;

/// Runs [`SCHEDULE`] on fresh caches, each step as one batch (`batched`) or
/// each part as a batch of its own; checks every cache advanced by its part.
/// Returns the results and the caches.
fn run_schedule(model: &Model, device: &Device, streams: &[Vec<u32>], batched: bool) -> (Results, Vec<KvCache>) {
    // One capacity for all: a row that read another sequence's cache would
    // find positions there, not a bounds panic.
    let capacity = streams.iter().map(Vec::len).max().expect("sequences");
    let mut caches: Vec<KvCache> = (0..streams.len()).map(|_| model.new_cache(capacity, device)).collect();
    let mut results = Vec::new();
    for (s, step) in SCHEDULE.iter().enumerate() {
        let before: Vec<usize> = caches.iter().map(KvCache::len).collect();
        let logits = if batched {
            // Each sequence's cache, lent to its segment in the step's order.
            let mut lent: Vec<Option<&mut KvCache>> = caches.iter_mut().map(Some).collect();
            let mut segments: Vec<Segment<'_>> = step
                .iter()
                .map(|p| Segment {
                    tokens: &streams[p.sequence][before[p.sequence]..before[p.sequence] + p.tokens],
                    cache: lent[p.sequence].take().expect("a sequence runs once a step"),
                    logits: p.logits,
                })
                .collect();
            model.forward_batch(&mut segments)
        } else {
            step.iter()
                .map(|p| {
                    let tokens = &streams[p.sequence][before[p.sequence]..before[p.sequence] + p.tokens];
                    let mut alone = [Segment {
                        tokens,
                        cache: &mut caches[p.sequence],
                        logits: p.logits,
                    }];
                    model.forward_batch(&mut alone).pop().expect("one result")
                })
                .collect()
        };
        assert_eq!(logits.len(), step.len(), "step {s}: one result per segment");
        for (p, logits) in step.iter().zip(&logits) {
            assert_eq!(logits.is_some(), p.logits, "step {s}, sequence {}", p.sequence);
            if let Some(logits) = logits {
                assert_eq!(logits.len(), model.vocab_size(), "step {s}, sequence {}", p.sequence);
            }
        }
        for (sequence, cache) in caches.iter().enumerate() {
            let ran: usize = step.iter().filter(|p| p.sequence == sequence).map(|p| p.tokens).sum();
            assert_eq!(
                cache.len(),
                before[sequence] + ran,
                "step {s}: sequence {sequence}'s cache"
            );
        }
        results.push(logits.into_iter().map(|l| l.map(|l| bits(&l))).collect());
    }
    (results, caches)
}

/// The whole check of the module docs on one model.
fn batches_give_each_sequence_its_logits_alone(name: &str, model: &Model) {
    let device = Device::flex();
    assert!(
        model.forward_batch(&mut []).is_empty(),
        "{name}: an empty batch runs nothing"
    );
    let vocab = model.vocab_size();
    let streams = streams(vocab);
    let (batched, mut batched_caches) = run_schedule(model, &device, &streams, true);
    let (alone, mut alone_caches) = run_schedule(model, &device, &streams, false);

    // One whole pass over each sequence: its logits at every position.
    let whole: Vec<Vec<f32>> = streams
        .iter()
        .map(|tokens| model.forward_all(tokens, &mut model.new_cache(tokens.len(), &device)))
        .collect();
    let mut ran = [0usize; SEQUENCES];
    for (s, step) in SCHEDULE.iter().enumerate() {
        for (i, p) in step.iter().enumerate() {
            let at = format!("{name}, step {s}, sequence {}", p.sequence);
            assert_eq!(batched[s][i], alone[s][i], "{at}: batched and alone differ");
            ran[p.sequence] += p.tokens;
            if let Some(logits) = &batched[s][i] {
                let position = ran[p.sequence] - 1;
                let in_whole = &whole[p.sequence][position * vocab..(position + 1) * vocab];
                assert_eq!(
                    logits,
                    &bits(in_whole),
                    "{at}: differs from the whole pass at {position}"
                );
            }
        }
    }

    // Each sequence goes on alone from what the batch left in its cache.
    for (sequence, tokens) in streams.iter().enumerate() {
        for position in ran[sequence]..tokens.len() {
            let token = &tokens[position..=position];
            let after_batch = model.forward(token, &mut batched_caches[sequence]);
            let after_alone = model.forward(token, &mut alone_caches[sequence]);
            let at = format!("{name}, sequence {sequence} alone at {position}");
            assert_eq!(bits(&after_batch), bits(&after_alone), "{at}");
            let in_whole = &whole[sequence][position * vocab..(position + 1) * vocab];
            assert_eq!(bits(&after_batch), bits(in_whole), "{at}: differs from the whole pass");
        }
    }
}

fn load(path: &Path, quant: Quantization) -> Model {
    let source = WeightSource::open(path).expect("the model opens");
    Model::load(&source, quant, &Device::flex()).expect("the model loads")
}

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(path)
}

#[test]
fn smollm2_batches_give_each_sequence_its_logits_alone() {
    let model = load(&common::smollm2_path(), Quantization::Keep);
    assert_eq!(model.info().quant, "Q4_1");
    batches_give_each_sequence_its_logits_alone("SmolLM2", &model);
}

#[test]
fn qwen3_batches_give_each_sequence_its_logits_alone() {
    // As stored (f32), and quantized at load. Q6_K and Q4_K blocks of 256 do
    // not fit these rows of 64 and 128 (Q6_K falls back to Q8_0), so the
    // 32-element formats: the kernels' tests cover every format.
    for quant in [
        Quantization::Keep,
        Quantization::To(QuantFormat::Q6_K),
        Quantization::To(QuantFormat::Q4_0),
    ] {
        let model = load(&fixture("qwen/qwen3"), quant);
        batches_give_each_sequence_its_logits_alone(&format!("Qwen3 at {quant}"), &model);
    }
}

#[test]
fn qwen2_batches_give_each_sequence_its_logits_alone() {
    // The q, k and v biases are added over the stacked rows.
    let model = load(&fixture("hf_families/qwen2"), Quantization::Keep);
    batches_give_each_sequence_its_logits_alone("Qwen2", &model);
}

#[test]
fn qwen35_batches_give_each_sequence_its_logits_alone() {
    // Value heads sharing key heads (grouped, and tiled as in GGUF files),
    // as many key as value heads, and MLX's 6-bit affine weights.
    for path in [
        "qwen/qwen3_5",
        "qwen/qwen3_5.gguf",
        "qwen/qwen3_5_asym",
        "qwen/qwen3_5_mlx6",
    ] {
        let model = load(&fixture(path), Quantization::Keep);
        batches_give_each_sequence_its_logits_alone(path, &model);
    }
}
