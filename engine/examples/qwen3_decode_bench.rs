//! Times one decode step's matmuls at Qwen3-1.7B's dimensions, matmuls only.
//!
//! `cargo run --release -p switchyard-engine --example qwen3_decode_bench [-- q6_k|q4_k [THREADS [STEPS]]]`
//!
//! 28 layers of q (2048×2048), k and v (2048→1024), o (2048×2048), gate and up
//! (2048→6144), down (6144→2048), each layer with its own random (valid) blocks,
//! then the tied 151936×2048 lm_head: 1.41 GB in Q6_K, 0.97 GB in Q4_K, far more
//! than any cache, so the figure is what the kernels get out of DRAM. Runs on a
//! rayon pool of THREADS (default 2) as the engine does, and prints ms per step,
//! tokens/s and GB/s of weights read (median and best of STEPS, default 10).
//!
//! The blocks are interleaved as a model's are at load (`quant::interleave`);
//! `--natural` keeps ggml's order, for the kernels that read it. `--in-cache
//! --m=M` times M activation rows against a matrix that stays in L2 instead.

use std::hint::black_box;
use std::time::Instant;

use switchyard_engine::quant::interleave::for_selected_kernel;
use switchyard_engine::quant::{QuantFormat, QuantMatrix, kernel_name, matmul};

mod common;

use common::{XorShift, random_weights};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let format = match args.first().map(String::as_str) {
        None | Some("q6_k") => QuantFormat::Q6_K,
        Some("q4_k") => QuantFormat::Q4_K,
        Some(other) => panic!("unknown format {other}"),
    };
    let threads: usize = args.get(1).map_or(2, |t| t.parse().expect("threads"));
    let steps: usize = args.get(2).map_or(10, |t| t.parse().expect("steps"));
    // As a model loads them (interleaved for the SIMD kernels), unless --natural
    // keeps ggml's order.
    let natural = args.iter().any(|a| a == "--natural");
    let weights = |rng: &mut XorShift, n: usize, k: usize| {
        let mut data = random_weights(rng, format, n, k);
        let format = if natural {
            format
        } else {
            for_selected_kernel(format, k, &mut data)
        };
        (format, data)
    };
    if args.iter().any(|a| a == "--in-cache") {
        let m = args
            .iter()
            .find_map(|a| a.strip_prefix("--m="))
            .map_or(1, |m| m.parse().expect("m"));
        return in_cache(weights, threads, m);
    }
    let (d, ffn, kv, vocab, layers) = (2048, 6144, 1024, 151936, 28);
    // (inputs, outputs) of each matmul of a layer, in order.
    let layer_shapes = [(d, d), (d, kv), (d, kv), (d, d), (d, ffn), (d, ffn), (ffn, d)];
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let matrices: Vec<(usize, usize, QuantFormat, Vec<u8>)> = (0..layers)
        .flat_map(|_| layer_shapes)
        .chain([(d, vocab)])
        .map(|(k, n)| {
            let (format, data) = weights(&mut rng, n, k);
            (k, n, format, data)
        })
        .collect();
    let gb = matrices.iter().map(|(_, _, _, w)| w.len()).sum::<usize>() as f64 / 1e9;
    let x: Vec<f32> = (0..ffn).map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0).collect();
    let mut out = vec![0f32; vocab];
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    let mut times = Vec::new();
    pool.install(|| {
        for step in 0..=steps {
            let start = Instant::now();
            for (k, n, format, data) in &matrices {
                let w = QuantMatrix::new(*format, *n, *k, data).unwrap();
                matmul(black_box(&x[..*k]), 1, &w, &mut out[..*n]);
            }
            // The first step pages the weights in.
            if step > 0 {
                times.push(start.elapsed().as_secs_f64());
            }
        }
    });
    times.sort_by(f64::total_cmp);
    let (median, best) = (times[times.len() / 2], times[0]);
    println!(
        "{} {format} {gb:.3} GB, {threads} threads: {:.1} ms/step (best {:.1}), {:.2} tok/s, {:.1} GB/s (best {:.1})",
        kernel_name(),
        median * 1e3,
        best * 1e3,
        1.0 / median,
        gb / median,
        gb / best
    );
}

/// The kernels' compute rate without DRAM in the way: 256 rows of 2048 (430 KB in
/// Q6_K) that stay in L2, multiplied by `m` activation rows over and over.
fn in_cache(weights: impl Fn(&mut XorShift, usize, usize) -> (QuantFormat, Vec<u8>), threads: usize, m: usize) {
    let (n, k) = (256, 2048);
    let mut rng = XorShift(7);
    let (format, data) = weights(&mut rng, n, k);
    let w = QuantMatrix::new(format, n, k, &data).unwrap();
    let x: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0).collect();
    let mut out = vec![0f32; m * n];
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    let reps = 2000 / m.max(1) + 1;
    let mut best = f64::INFINITY;
    pool.install(|| {
        for _ in 0..5 {
            let start = Instant::now();
            for _ in 0..reps {
                matmul(black_box(&x), m, &w, &mut out);
            }
            best = best.min(start.elapsed().as_secs_f64());
        }
    });
    let per_call = best / reps as f64;
    println!(
        "{} {format} in cache ({} KB), {threads} threads, m = {m}: {:.1} µs per call, {:.2} ns per block × activation row",
        kernel_name(),
        data.len() / 1024,
        per_call * 1e6,
        per_call * 1e9 / (m * n * k / 256) as f64
    );
}
