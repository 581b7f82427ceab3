//! `y = x·Wᵀ` over GGUF-encoded weights: activation quantization, tiling, threads.
//!
//! The work is split over *weight rows* (output columns), never over the reduction:
//! each output is one dot product computed start to finish by one thread, so the
//! result does not depend on the thread count.

use std::cell::Cell;
use std::ops::Range;

use rayon::prelude::*;

use super::QuantMatrix;
use super::dot::{Activations, Kernel, SpareRows, dot_rows};

/// Weight rows visited together for every group of activation rows in prefill.
/// Each panel is read once per 4 activation rows, so it should stay in L1/L2
/// between reads: 64 rows of a 1536-wide Q4_1 matrix are 60 KiB. (Decode reads
/// every weight once; it takes its rows in one piece.)
const PANEL_ROWS: usize = 64;

/// Fewest weight rows one parallel task takes. Smaller tasks cost more in rayon
/// scheduling (a few µs per fork-join) than they save.
const MIN_ROWS_PER_TASK: usize = 64;

/// Below this many multiply-adds a matmul called from a rayon worker runs on that
/// thread alone. From a worker, a parallel split costs well under a microsecond:
/// the caller starts on its share at once and an idle worker steals the rest, or
/// the caller does it all. ~256 K multiply-adds is ~5 µs of single-thread work.
const PARALLEL_MIN_MACS_ON_WORKER: usize = 256 * 1024;

/// The same threshold for a caller outside the rayon pool. Such a caller hands
/// the whole job to the pool and sleeps until it is done; the two thread switches
/// measured 12–20 µs on the 2-core target, more than a SmolLM2 576×1536 GEMV takes
/// on one thread. Only big matmuls (the lm_head, prefill) are worth it from there.
const PARALLEL_MIN_MACS_OFF_WORKER: usize = 8 * 1024 * 1024;

/// Tasks per thread, so that a thread that finishes early (or was descheduled) can
/// take over work from the others.
const TASKS_PER_THREAD: usize = 4;

/// `out[m×n] = x[m×k] · Wᵀ` (W is n×k): a linear layer `y = x·Wᵀ`, row-major f32,
/// on the best kernel for this CPU ([`super::kernel_name`]).
///
/// Each row of `x` is quantized once to the activation format `W`'s format pairs
/// with, then every output is an integer dot product per block (float formats
/// compute in f32). Output columns are split across rayon threads in tasks of at
/// least 64 weight rows when the matmul is big enough (see the module docs).
///
/// # Panics
/// If `x` is not `m × W.cols`, `out` is not `m × W.rows`, or `W`'s fields
/// disagree with its data (as [`QuantMatrix::validate`] checks).
pub fn matmul(x: &[f32], m: usize, w: &QuantMatrix, out: &mut [f32]) {
    run(Kernel::selected(), x, m, w, out);
}

/// As [`matmul`] on the scalar reference kernels.
pub fn matmul_reference(x: &[f32], m: usize, w: &QuantMatrix, out: &mut [f32]) {
    run(Kernel::Scalar, x, m, w, out);
}

/// As [`matmul`] on a chosen kernel (benchmarks and tests).
///
/// # Panics
/// If the kernel cannot run on this CPU.
pub fn matmul_with_kernel(kernel: Kernel, x: &[f32], m: usize, w: &QuantMatrix, out: &mut [f32]) {
    assert!(
        kernel.is_available(),
        "the {} kernel cannot run on this CPU",
        kernel.name()
    );
    run(kernel, x, m, w, out);
}

fn run(kernel: Kernel, x: &[f32], m: usize, w: &QuantMatrix, out: &mut [f32]) {
    if let Err(why) = w.validate() {
        panic!("malformed weight matrix: {why}");
    }
    let (n, k) = (w.rows, w.cols);
    assert_eq!(x.len(), m * k, "x must be {m}×{k}");
    assert_eq!(out.len(), m * n, "out must be {m}×{n}");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        out.fill(0.0);
        return;
    }
    // Quantize each activation row once; every weight row reuses it.
    let acts = Activations::quantize_reusing(w.format, x, m, k, SPARE_ROWS.take());
    compute(kernel, w, &acts, out);
    SPARE_ROWS.set(acts.into_spare());
}

thread_local! {
    /// The calling thread's activation buffers, reused from one matmul to the next.
    static SPARE_ROWS: Cell<SpareRows> = Cell::new(SpareRows::default());
}

/// Runs the dot products for all of `out`, on one thread or several.
fn compute(kernel: Kernel, w: &QuantMatrix, acts: &Activations, out: &mut [f32]) {
    let (n, k, m) = (w.rows, w.cols, acts.rows());

    let threads = rayon::current_num_threads();
    let macs = m.saturating_mul(n).saturating_mul(k);
    let min_macs = match rayon::current_thread_index() {
        Some(_) => PARALLEL_MIN_MACS_ON_WORKER,
        None => PARALLEL_MIN_MACS_OFF_WORKER,
    };
    if threads <= 1 || macs < min_macs || n < 2 * MIN_ROWS_PER_TASK {
        compute_rows(kernel, w, acts, 0..n, out, n);
        return;
    }
    // Multiples of 8 rows: whole decode tiles per task.
    let rows_per_task = n
        .div_ceil(threads * TASKS_PER_THREAD)
        .max(MIN_ROWS_PER_TASK)
        .next_multiple_of(8);
    if m == 1 {
        // Decode: each task owns a contiguous piece of the single output row.
        out.par_chunks_mut(rows_per_task).enumerate().for_each(|(task, out)| {
            let start = task * rows_per_task;
            compute_rows(kernel, w, acts, start..start + out.len(), out, out.len());
        });
        return;
    }
    // Prefill: a task's outputs are a column band of `out`, strided by n, so each
    // task fills its own m × rows buffer, copied into place afterwards (m·n floats,
    // small next to the m·n·k multiply-adds).
    let starts: Vec<usize> = (0..n).step_by(rows_per_task).collect();
    let bands: Vec<(Range<usize>, Vec<f32>)> = starts
        .into_par_iter()
        .map(|start| {
            let rows = start..(start + rows_per_task).min(n);
            let mut band = vec![0f32; m * rows.len()];
            compute_rows(kernel, w, acts, rows.clone(), &mut band, rows.len());
            (rows, band)
        })
        .collect();
    for (rows, band) in bands {
        for (i, band_row) in band.chunks_exact(rows.len()).enumerate() {
            out[i * n + rows.start..i * n + rows.end].copy_from_slice(band_row);
        }
    }
}

/// Fills `out[i·stride + (j − rows.start)]` with the dot of weight row `j` and
/// activation row `i`, for all activation rows and `j` in `rows`, a panel at a time.
fn compute_rows(
    kernel: Kernel,
    w: &QuantMatrix,
    acts: &Activations,
    rows: Range<usize>,
    out: &mut [f32],
    stride: usize,
) {
    let row_bytes = w.row_bytes();
    let panel_rows = if acts.rows() >= 4 { PANEL_ROWS } else { rows.len() };
    let mut panel = rows.start;
    while panel < rows.end {
        let panel_end = (panel + panel_rows).min(rows.end);
        let weights = QuantMatrix {
            rows: panel_end - panel,
            data: &w.data[panel * row_bytes..panel_end * row_bytes],
            ..*w
        };
        dot_rows(
            kernel,
            &weights,
            acts,
            0..acts.rows(),
            &mut out[panel - rows.start..],
            stride,
        );
        panel = panel_end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::QuantFormat;
    use crate::quant::random::{self, Scales};

    /// Σ |w|·|x| for every output: the scale float rounding is judged against.
    fn abs_products(w: &QuantMatrix, x: &[f32], m: usize) -> Vec<f32> {
        let mut wf = vec![0f32; w.cols];
        let mut out = vec![0f32; m * w.rows];
        for j in 0..w.rows {
            w.dequantize_row(j, &mut wf);
            for (i, x) in x.chunks_exact(w.cols).enumerate() {
                out[i * w.rows + j] = wf.iter().zip(x).map(|(w, x)| (w * x).abs()).sum();
            }
        }
        out
    }

    /// Runs `matmul_with_kernel` as a caller outside the pool or on a rayon worker
    /// (the two take different parallel thresholds).
    fn run_with(kernel: Kernel, on_worker: bool, x: &[f32], m: usize, w: &QuantMatrix, out: &mut [f32]) {
        if on_worker {
            rayon::scope(|_| matmul_with_kernel(kernel, x, m, w, out));
        } else {
            matmul_with_kernel(kernel, x, m, w, out);
        }
    }

    fn check_against_reference(format: QuantFormat, n: usize, k: usize, m: usize, seed: u64) {
        check_against_reference_on(format, n, k, m, seed, false);
    }

    fn check_against_reference_on(format: QuantFormat, n: usize, k: usize, m: usize, seed: u64, on_worker: bool) {
        let mut rng = random::rng(seed);
        let data = random::weights(&mut rng, format, n, k, Scales::Random);
        let w = QuantMatrix::new(format, n, k, &data).unwrap();
        let x = random::activations(&mut rng, m * k);
        let mut reference = vec![f32::NAN; m * n];
        matmul_reference(&x, m, &w, &mut reference);
        let scales = abs_products(&w, &x, m);
        for kernel in Kernel::ALL.into_iter().filter(|k| k.is_available()) {
            let mut out = vec![f32::NAN; m * n];
            run_with(kernel, on_worker, &x, m, &w, &mut out);
            for (o, ((fast, reference), scale)) in out.iter().zip(&reference).zip(&scales).enumerate() {
                assert!(
                    (fast - reference).abs() <= 1e-5 * scale,
                    "{format} {m}×{k}·{n}ᵀ on {kernel:?}: output ({}, {}) is {fast}, reference {reference}",
                    o / n,
                    o % n
                );
            }
        }
    }

    #[test]
    fn matmul_matches_the_reference_for_every_format_and_row_count() {
        for (f, format) in QuantFormat::ALL.into_iter().enumerate() {
            // Ten 32-blocks: one group of eight and a tail; floats not a multiple of 8.
            let k = match format.block_elems() {
                256 => 512,
                64 => 320,
                32 => 320,
                _ => 100,
            };
            for m in [1, 3, 8] {
                // Odd n: tiles of 4 weight rows leave a tail.
                check_against_reference(format, 37, k, m, 100 * f as u64 + m as u64);
            }
        }
    }

    #[test]
    fn matmul_matches_the_reference_when_split_across_threads() {
        // From a worker, large enough to take the parallel paths (decode and
        // prefill); odd n so the last task is short.
        for format in [
            QuantFormat::Q4_1,
            QuantFormat::Q8_0,
            QuantFormat::Q6_K,
            QuantFormat::A6_64,
            QuantFormat::F16,
        ] {
            let k = if format.block_elems() == 256 { 768 } else { 576 };
            for m in [1, 3, 8] {
                check_against_reference_on(format, 517, k, m, 7 + m as u64, true);
            }
        }
        // From outside the pool the threshold is higher.
        check_against_reference_on(QuantFormat::Q4_1, 517, 1024, 17, 5, false);
    }

    /// Every row of `x` (`m` rows) computed alone: what a batch must give each row.
    fn each_row_alone(kernel: Kernel, on_worker: bool, x: &[f32], m: usize, w: &QuantMatrix) -> Vec<f32> {
        let (n, k) = (w.rows, w.cols);
        let mut out = vec![f32::NAN; m * n];
        for (x, out) in x.chunks_exact(k).zip(out.chunks_exact_mut(n)) {
            run_with(kernel, on_worker, x, 1, w, out);
        }
        out
    }

    #[test]
    fn matmul_rows_are_independent_of_the_batch() {
        // A sequence's logits must not depend on what it is batched with: each row
        // of an m-row matmul (4-row tiles, a tail of single rows) must equal, bit
        // for bit, that row computed alone (the decode path's 8-row weight tiles),
        // for every format, every m up to two tiles and a tail, every kernel. The
        // shape takes the parallel paths from a rayon worker and from outside the
        // pool even at m = 1 (1100·7680 is past both thresholds), with a short
        // last task (1100 is no multiple of the 8-row task granularity).
        let (n, k) = (1100, 7680);
        for (f, format) in QuantFormat::ALL.into_iter().enumerate() {
            let mut rng = random::rng(11 + f as u64);
            let data = random::weights(&mut rng, format, n, k, Scales::Random);
            let w = QuantMatrix::new(format, n, k, &data).unwrap();
            let x = random::activations(&mut rng, 9 * k);
            // The scalar reference is row by row by construction, and slow here.
            for kernel in Kernel::ALL
                .into_iter()
                .filter(|k| *k != Kernel::Scalar && k.is_available())
            {
                for on_worker in [true, false] {
                    let alone = each_row_alone(kernel, on_worker, &x, 9, &w);
                    for m in 1..=9 {
                        let mut batch = vec![f32::NAN; m * n];
                        run_with(kernel, on_worker, &x[..m * k], m, &w, &mut batch);
                        for i in 0..m {
                            let (got, want) = (&batch[i * n..(i + 1) * n], &alone[i * n..(i + 1) * n]);
                            let differs = got.iter().zip(want).position(|(a, b)| a.to_bits() != b.to_bits());
                            assert!(
                                differs.is_none(),
                                "{format} on {kernel:?} (on a worker: {on_worker}), row {i} of {m}: \
                                 output {differs:?} differs from the row computed alone"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn empty_shapes_are_fine() {
        let w = QuantMatrix::new(QuantFormat::Q8_0, 0, 64, &[]).unwrap();
        matmul(&[0.0; 64], 1, &w, &mut []);
        let data = vec![0u8; 3 * 34];
        let w = QuantMatrix::new(QuantFormat::Q8_0, 3, 32, &data).unwrap();
        let mut out = vec![1.0; 0];
        matmul(&[], 0, &w, &mut out);
    }

    #[test]
    #[should_panic(expected = "x must be")]
    fn a_short_input_is_refused() {
        let data = vec![0u8; 2 * 34];
        let w = QuantMatrix::new(QuantFormat::Q8_0, 2, 32, &data).unwrap();
        matmul(&[0.0; 31], 1, &w, &mut [0.0; 2]);
    }
}
