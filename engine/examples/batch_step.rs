//! Decode speed by batch size: what one step of B sequences costs.
//!
//! `cargo run --release -p switchyard-engine --example batch_step -- MODEL [QUANT] [THREADS] [CONTEXT]`
//!
//! MODEL is a GGUF file or a Hugging Face directory (its float weights
//! encoded as QUANT says at load: `q6_k` by default, `none` to keep them).
//! For each B in 1, 2, 4, 8, 16: B sequences, each with CONTEXT (default 200)
//! positions of its own tokens in its cache, decode one token each per step,
//! all in one [`Model::forward_batch`]. The batch sizes take turns, a few
//! steps each per round (so that a machine whose load drifts shifts them
//! alike), and each sequence's context grows by [`ROUNDS`] × [`STEPS`] over
//! the run. Prints per B the median step, the aggregate tokens/s (B tokens a
//! step) and that against B = 1. Runs on a rayon pool of THREADS (default 2),
//! as the engine does.

use std::path::Path;
use std::time::{Duration, Instant};

use burn::prelude::*;
use switchyard_engine::model::source::WeightSource;
use switchyard_engine::model::weights::Quantization;
use switchyard_engine::model::{KvCache, Model, Segment};

/// Batch sizes measured.
const BATCHES: [usize; 5] = [1, 2, 4, 8, 16];

/// Rounds over the batch sizes, and timed steps of each per round: a median
/// of 24 steps per size ignores a stray slow one.
const ROUNDS: usize = 6;
const STEPS: usize = 4;

/// B sequences decoding together.
struct Batch {
    caches: Vec<KvCache>,
    /// Per sequence, the xorshift state its tokens come from.
    streams: Vec<u64>,
    times: Vec<Duration>,
}

impl Batch {
    /// `size` sequences, each with `context` positions of its own tokens
    /// (pseudo-random: which tokens does not change the work).
    fn prefilled(model: &Model, device: &Device, size: usize, context: usize) -> Batch {
        let capacity = context + ROUNDS * STEPS + 1;
        let mut batch = Batch {
            caches: (0..size).map(|_| model.new_cache(capacity, device)).collect(),
            streams: (0..size as u64).map(|i| 0x9E37_79B9_7F4A_7C15 ^ (i + 1)).collect(),
            times: Vec::new(),
        };
        let vocab = model.vocab_size();
        for i in 0..size {
            let prompt: Vec<u32> = (0..context).map(|_| batch.next_token(i, vocab)).collect();
            model.forward(&prompt, &mut batch.caches[i]);
        }
        batch
    }

    fn next_token(&mut self, sequence: usize, vocab: usize) -> u32 {
        let s = &mut self.streams[sequence];
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        (*s % vocab as u64) as u32
    }

    /// One decode step of every sequence, in one forward pass; its time.
    fn step(&mut self, model: &Model) -> Duration {
        let vocab = model.vocab_size();
        let tokens: Vec<[u32; 1]> = (0..self.caches.len()).map(|i| [self.next_token(i, vocab)]).collect();
        let mut segments: Vec<Segment<'_>> = tokens
            .iter()
            .zip(self.caches.iter_mut())
            .map(|(token, cache)| Segment {
                tokens: token,
                cache,
                logits: true,
            })
            .collect();
        let started = Instant::now();
        std::hint::black_box(model.forward_batch(&mut segments));
        started.elapsed()
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.first() else {
        eprintln!("usage: batch_step MODEL [QUANT] [THREADS] [CONTEXT]");
        std::process::exit(2);
    };
    let quant = args.get(1).map_or(Quantization::default(), |q| {
        Quantization::parse(q).unwrap_or_else(|| panic!("QUANT is one of {}", Quantization::NAMES))
    });
    let threads: usize = args.get(2).map_or(2, |n| n.parse().expect("THREADS is a number"));
    let context: usize = args.get(3).map_or(200, |n| n.parse().expect("CONTEXT is a number"));
    let device = Device::flex();
    let source = WeightSource::open(Path::new(path)).expect("the model opens");
    let model = Model::load(&source, quant, &device).expect("the model loads");
    drop(source);
    let info = model.info();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool");
    let batches = pool.install(|| {
        let mut batches: Vec<Batch> = BATCHES
            .iter()
            .map(|&size| Batch::prefilled(&model, &device, size, context))
            .collect();
        // One untimed step each: the allocator's pools for each batch size.
        for batch in &mut batches {
            batch.step(&model);
        }
        for _ in 0..ROUNDS {
            for batch in &mut batches {
                for _ in 0..STEPS {
                    let time = batch.step(&model);
                    batch.times.push(time);
                }
            }
        }
        batches
    });
    println!(
        "{} {} ({:.2} GB of weights), {threads} threads, contexts of {context}+ positions, median of {} steps",
        info.architecture,
        info.quant,
        info.weight_bytes as f64 / 1e9,
        ROUNDS * STEPS
    );
    println!("| B | ms/step | tok/s | × B = 1 |");
    println!("|---:|---:|---:|---:|");
    let mut single = None;
    for mut batch in batches {
        batch.times.sort();
        let step = batch.times[batch.times.len() / 2].as_secs_f64();
        let size = batch.caches.len();
        let tokens_per_s = size as f64 / step;
        let single = *single.get_or_insert(tokens_per_s);
        println!(
            "| {size} | {:.2} | {tokens_per_s:.1} | {:.2} |",
            step * 1e3,
            tokens_per_s / single
        );
    }
}
