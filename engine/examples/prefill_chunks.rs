//! Prefill speed by chunk size: what [`Model::PREFILL_CHUNK`] costs.
//!
//! `cargo run --release -p switchyard-engine --example prefill_chunks -- MODEL.gguf [PROMPT_TOKENS] [THREADS]`
//!
//! A generation checks its deadline (and whether its caller is still there)
//! between prefill chunks, so a chunk is the longest it runs past either; a
//! smaller chunk answers sooner but gives the matmuls fewer rows to share each
//! weight block's decoding. For each chunk size this prefills one prompt of
//! `PROMPT_TOKENS` (default 2,048) tokens, in rounds that alternate the sizes
//! (so a machine whose load drifts shifts every size alike), and prints the
//! median prefill speed and the median of the slowest chunk (the last: its
//! attention reads the most keys), i.e. how late a deadline can be noticed.

use std::path::Path;
use std::time::{Duration, Instant};

use switchyard_engine::engine::LocalModel;
use switchyard_engine::model::Model;

/// Rounds per chunk size: enough for a median that ignores a stray slow run.
const ROUNDS: usize = 5;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.first() else {
        eprintln!("usage: prefill_chunks MODEL.gguf [PROMPT_TOKENS] [THREADS]");
        std::process::exit(2);
    };
    let prompt_tokens: usize = args
        .get(1)
        .map_or(2_048, |n| n.parse().expect("PROMPT_TOKENS is a number"));
    let threads: usize = args.get(2).map_or(2, |n| n.parse().expect("THREADS is a number"));
    let local = LocalModel::load(Path::new(path), None).expect("load the model");
    let sentence = local
        .tokenizer
        .encode(
            "The quick brown fox jumps over the lazy dog near the river bank. ",
            false,
        )
        .expect("tokenize");
    let prompt: Vec<u32> = sentence.iter().copied().cycle().take(prompt_tokens).collect();
    assert!(prompt.len() < local.context_length, "the prompt must fit the context");
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool");
    let Model::Decoder(llama) = &local.model else {
        panic!("SmolLM2 is a Llama decoder");
    };
    let sizes = [32, 64, 128, 256, 512, prompt_tokens];
    // Per size: (whole prefill, slowest chunk) of each round.
    let mut runs: Vec<Vec<(Duration, Duration)>> = vec![Vec::new(); sizes.len()];
    pool.install(|| {
        // One warm-up pass: page in the weights, size the allocator's pools.
        let mut cache = local.model.new_cache(prompt.len(), &local.device);
        local.model.forward(&prompt, &mut cache);
        for _ in 0..ROUNDS {
            for (i, &size) in sizes.iter().enumerate() {
                let mut cache = local.model.new_cache(prompt.len(), &local.device);
                let started = Instant::now();
                let mut slowest = Duration::ZERO;
                let mut last = None;
                for part in prompt.chunks(size) {
                    let chunk_started = Instant::now();
                    last = Some(llama.forward(part, &mut cache));
                    slowest = slowest.max(chunk_started.elapsed());
                }
                std::hint::black_box(llama.logits(last.expect("a chunk")));
                runs[i].push((started.elapsed(), slowest));
            }
        }
    });
    println!(
        "SmolLM2 prefill of {prompt_tokens} tokens on {threads} threads, median of {ROUNDS} alternated rounds (PREFILL_CHUNK = {})",
        Model::PREFILL_CHUNK
    );
    println!("| chunk | tokens/s | slowest chunk, ms |");
    println!("|---:|---:|---:|");
    let median = |mut values: Vec<Duration>| {
        values.sort();
        values[values.len() / 2]
    };
    for (size, rounds) in sizes.iter().zip(runs) {
        let total = median(rounds.iter().map(|r| r.0).collect());
        let slowest = median(rounds.iter().map(|r| r.1).collect());
        let label = if *size == prompt_tokens {
            "whole".to_string()
        } else {
            size.to_string()
        };
        println!(
            "| {label} | {:.0} | {:.0} |",
            prompt_tokens as f64 / total.as_secs_f64(),
            slowest.as_secs_f64() * 1e3
        );
    }
}
