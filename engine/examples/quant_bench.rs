//! Times the quantized matmul kernels on SmolLM2-135M's shapes.
//!
//! `cargo run --release -p switchyard-engine --example quant_bench [-- --quick]`
//!
//! Prints µs per call (median and minimum of repeated runs) for GEMV (one token) and a 64-row
//! prefill, per format and kernel, and then one decode step's worth of SmolLM2-135M
//! matmuls (30 layers of q, k, v, o, gate, up, down in Q4_1 plus the Q8_0 tied
//! lm_head), each layer with its own weights, so that the 96 MB do not sit in cache
//! as a single repeated matrix would. Weights are random but valid blocks.
//!
//! Then GEMV per format (Q8_0, Q6_K, Q4_K) at Qwen3-1.7B's MLP shapes, as GB/s of weights.
//!
//! Last, the load-time quantizers: MB/s of f32 weights in, per target format, on a
//! Qwen2.5-1.5B MLP matrix (SmolLM2's 576 columns are no whole number of K-quant
//! super-blocks), on all of rayon's threads as a model load runs them.

use std::hint::black_box;
use std::time::{Duration, Instant};

use switchyard_engine::quant::interleave::for_selected_kernel;
use switchyard_engine::quant::{Kernel, QuantFormat, QuantMatrix, kernel_name, matmul_with_kernel, quantize};

mod common;

use common::{XorShift, random_weights};

/// Median and minimum time of `f` over repeated runs lasting about `budget`. On a
/// shared machine the minimum shows what the code can do, the median what it did.
fn time_runs(budget: Duration, mut f: impl FnMut()) -> (Duration, Duration) {
    f(); // warm up: page in the weights, wake the thread pool
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 5 || (start.elapsed() < budget && times.len() < 10_000) {
        let t = Instant::now();
        f();
        times.push(t.elapsed());
    }
    times.sort();
    (times[times.len() / 2], times[0])
}

fn micros(t: Duration) -> f64 {
    t.as_secs_f64() * 1e6
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let budget = Duration::from_millis(if quick { 100 } else { 400 });
    let kernels: Vec<Kernel> = Kernel::ALL.into_iter().filter(|k| k.is_available()).collect();
    println!(
        "selected kernel: {}, rayon threads: {}",
        kernel_name(),
        rayon::current_num_threads()
    );
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);

    // (k, n): inputs, outputs. SmolLM2-135M: hidden 576, MLP 1536, vocab 49152.
    let shapes = [(576, 576), (576, 1536), (1536, 576), (576, 49152)];
    println!("\nµs per call, median (minimum); GEMV is m = 1, prefill m = 64");
    print!("{:<6} {:>11} {:>4}", "format", "k×n", "m");
    for kernel in &kernels {
        print!(" {:>19}", kernel.name());
    }
    println!();
    for format in [QuantFormat::Q4_1, QuantFormat::Q8_0] {
        for (k, n) in shapes {
            let data = random_weights(&mut rng, format, n, k);
            let w = QuantMatrix::new(format, n, k, &data).unwrap();
            for m in [1, 64] {
                let x: Vec<f32> = (0..m * k).map(|_| rng.unit()).collect();
                let mut out = vec![0f32; m * n];
                print!("{:<6} {:>11} {:>4}", format.name(), format!("{k}×{n}"), m);
                for &kernel in &kernels {
                    // The scalar reference on big shapes takes seconds; skip those.
                    if kernel == Kernel::Scalar && m * n * k > 64 * 576 * 1536 {
                        print!(" {:>19}", "-");
                        continue;
                    }
                    let (median, min) =
                        time_runs(budget, || matmul_with_kernel(kernel, black_box(&x), m, &w, &mut out));
                    print!(" {:>19}", format!("{:.1} ({:.1})", micros(median), micros(min)));
                }
                println!();
            }
        }
    }

    // One decode step of SmolLM2-135M: every matmul of the model once, in order.
    let layers = 30;
    let layer_shapes = [
        (576, 576),
        (576, 192),
        (576, 192),
        (576, 576),
        (576, 1536),
        (576, 1536),
        (1536, 576),
    ];
    let layer_weights: Vec<Vec<(usize, usize, Vec<u8>)>> = (0..layers)
        .map(|_| {
            layer_shapes
                .iter()
                .map(|&(k, n)| (k, n, random_weights(&mut rng, QuantFormat::Q4_1, n, k)))
                .collect()
        })
        .collect();
    let head = random_weights(&mut rng, QuantFormat::Q8_0, 49152, 576);
    let total_mb = (layer_weights.iter().flatten().map(|(_, _, d)| d.len()).sum::<usize>() + head.len()) as f64 / 1e6;
    let x: Vec<f32> = (0..1536).map(|_| rng.unit()).collect();
    let mut out = vec![0f32; 49152];
    println!("\none SmolLM2-135M decode step ({total_mb:.1} MB of weights: 210 Q4_1 matmuls + Q8_0 lm_head)");
    for &kernel in kernels.iter().filter(|k| **k != Kernel::Scalar) {
        let mut step = || {
            for layer in &layer_weights {
                for (k, n, data) in layer {
                    let w = QuantMatrix::new(QuantFormat::Q4_1, *n, *k, data).unwrap();
                    matmul_with_kernel(kernel, black_box(&x[..*k]), 1, &w, &mut out[..*n]);
                }
            }
            let w = QuantMatrix::new(QuantFormat::Q8_0, 49152, 576, &head).unwrap();
            matmul_with_kernel(kernel, black_box(&x[..576]), 1, &w, &mut out);
        };
        // A caller outside the rayon pool only parallelises big matmuls; one on a
        // worker (the forward pass inside `rayon::scope`) splits them all cheaply.
        let outside = time_runs(budget * 3, &mut step);
        let inside = rayon::scope(|_| time_runs(budget * 3, &mut step));
        for (place, (median, min)) in [("outside the pool", outside), ("on a rayon worker", inside)] {
            let (ms, min_ms) = (micros(median) / 1e3, micros(min) / 1e3);
            println!(
                "{:<11} {place:<17} {ms:>6.2} ms/token (min {min_ms:.2}): {:.0} tok/s matmul-only, {:.1} GB/s",
                kernel.name(),
                1e3 / ms,
                total_mb / ms
            );
        }
    }

    // One GEMV per format at Qwen3-1.7B's MLP shapes (gate/up 2048 -> 6144, down
    // 6144 -> 2048), 8 copies each so the 80-150 MB do not sit in cache: the
    // bytes of weights streamed per second on a rayon worker, as decode runs them.
    let copies = 8;
    println!("\nGEMV at Qwen3-1.7B's MLP shapes, {copies} copies of each, on a rayon worker: GB/s of weights");
    for format in [QuantFormat::Q8_0, QuantFormat::Q6_K, QuantFormat::Q4_K] {
        for (k, n) in [(2048, 6144), (6144, 2048)] {
            // As a model loads them: K-quants interleaved for the SIMD kernels.
            let mut mats: Vec<Vec<u8>> = (0..copies).map(|_| random_weights(&mut rng, format, n, k)).collect();
            let loaded = mats
                .iter_mut()
                .map(|data| for_selected_kernel(format, k, data))
                .last()
                .unwrap_or(format);
            let bytes = mats.iter().map(Vec::len).sum::<usize>() as f64;
            let x: Vec<f32> = (0..k).map(|_| rng.unit()).collect();
            let mut out = vec![0f32; n];
            for &kernel in kernels.iter().filter(|k| **k != Kernel::Scalar) {
                let (median, min) = rayon::scope(|_| {
                    time_runs(budget, || {
                        for data in &mats {
                            let w = QuantMatrix::new(loaded, n, k, data).unwrap();
                            matmul_with_kernel(kernel, black_box(&x), 1, &w, &mut out);
                        }
                    })
                });
                println!(
                    "{:<6} {:>11} {:<11} {:>6.1} GB/s (best {:.1})",
                    format.name(),
                    format!("{k}×{n}"),
                    kernel.name(),
                    bytes / median.as_secs_f64() / 1e9,
                    bytes / min.as_secs_f64() / 1e9
                );
            }
        }
    }

    let (rows, cols) = (8960, 1536);
    let values: Vec<f32> = (0..rows * cols).map(|_| 0.05 * rng.unit()).collect();
    let f32_mb = (values.len() * 4) as f64 / 1e6;
    println!("\nquantizing {rows}×{cols} f32 ({f32_mb:.0} MB): MB/s of f32 in, median (best)");
    for format in quantize::TARGETS {
        let (median, min) = time_runs(budget, || {
            black_box(quantize::quantize_matrix(format, rows, cols, black_box(&values)).unwrap());
        });
        let rate = |t: Duration| f32_mb / t.as_secs_f64();
        println!("{:<6} {:>6.0} ({:.0})", format.name(), rate(median), rate(min));
    }
}
