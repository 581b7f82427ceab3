//! Dot products of weight rows with activation rows, and the choice of kernel.
//!
//! - [`scalar`]: the reference, one weight row × one activation row, plain Rust.
//!   Runs everywhere; defines the numbers.
//! - `x86`: AVX2 / AVX-VNNI / AVX-512-VNNI tiles of several rows at once.
//!
//! [`Kernel::selected`] picks the best instruction set once per process (feature
//! detection is cached); [`dot_rows`] runs a panel of dot products on any kernel,
//! from [`Activations`] quantized once per matmul.

pub mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::sync::OnceLock;

use super::QuantMatrix;
use super::activation::{Q8KRow, Q8Row};
use super::formats::{ActivationFormat, QuantFormat};

/// An instruction set the dot products can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Plain Rust: the reference, and the fallback on any CPU.
    Scalar,
    /// AVX2 + FMA + F16C; u8×i8 products through `vpmaddubsw` + `vpmaddwd`.
    Avx2,
    /// As AVX2 with the VEX-encoded `vpdpbusd` (Alder Lake and later, Zen 5).
    AvxVnni,
    /// As AVX2 with the EVEX-encoded `vpdpbusd` on 256-bit registers (Ice Lake, Zen 4).
    /// 256-bit, not 512: the 32 vector registers of AVX-512 matter more here than the
    /// width, and Zen 4 splits 512-bit operations in two anyway.
    Avx512Vnni,
}

impl Kernel {
    /// Every kernel, best last.
    pub const ALL: [Kernel; 4] = [Kernel::Scalar, Kernel::Avx2, Kernel::AvxVnni, Kernel::Avx512Vnni];

    /// The name `kernel_name` reports and `SWITCHYARD_QUANT_KERNEL` accepts.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Scalar => "scalar",
            Kernel::Avx2 => "avx2",
            Kernel::AvxVnni => "avxvnni",
            Kernel::Avx512Vnni => "avx512vnni",
        }
    }

    /// Whether this CPU can run the kernel. Cached after the first call.
    pub fn is_available(self) -> bool {
        static AVAILABLE: OnceLock<[bool; 4]> = OnceLock::new();
        let available = AVAILABLE.get_or_init(|| Kernel::ALL.map(Kernel::detect));
        available[self as usize]
    }

    #[cfg(target_arch = "x86_64")]
    fn detect(self) -> bool {
        use std::arch::is_x86_feature_detected as has;
        let avx2 = has!("avx2") && has!("fma") && has!("f16c");
        match self {
            Kernel::Scalar => true,
            Kernel::Avx2 => avx2,
            Kernel::AvxVnni => avx2 && has!("avxvnni"),
            Kernel::Avx512Vnni => avx2 && has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512vnni"),
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn detect(self) -> bool {
        self == Kernel::Scalar
    }

    /// The kernel `matmul` uses: the best available, unless the environment variable
    /// `SWITCHYARD_QUANT_KERNEL` names another available one (for comparisons; an
    /// unknown or unavailable name is ignored). Decided once per process.
    pub fn selected() -> Kernel {
        static SELECTED: OnceLock<Kernel> = OnceLock::new();
        *SELECTED.get_or_init(|| {
            let best = Kernel::ALL
                .into_iter()
                .rev()
                .find(|k| k.is_available())
                .unwrap_or(Kernel::Scalar);
            match std::env::var("SWITCHYARD_QUANT_KERNEL") {
                Ok(name) => Kernel::ALL
                    .into_iter()
                    .find(|k| k.name() == name && k.is_available())
                    .unwrap_or(best),
                Err(_) => best,
            }
        })
    }
}

/// The activation rows of one matmul, in the encoding the weight format pairs with.
pub enum Activations<'x> {
    F32(Vec<&'x [f32]>),
    Q8(Vec<Q8Row>),
    Q8K(Vec<Q8KRow>),
}

/// Buffers of finished [`Activations`], for the next matmul to quantize into:
/// decode runs hundreds of small matmuls per token, and allocating ten vectors
/// for each cost more than quantizing the row.
#[derive(Default)]
pub struct SpareRows {
    q8: Vec<Q8Row>,
    q8k: Vec<Q8KRow>,
}

impl SpareRows {
    /// Rows kept for reuse; more are dropped, so that one long prefill does not pin
    /// its buffers for the rest of the process.
    const MAX_ROWS: usize = 16;
}

impl<'x> Activations<'x> {
    /// Splits `x` (`m` rows of `k`) and quantizes each row for `format`.
    pub fn quantize(format: QuantFormat, x: &'x [f32], m: usize, k: usize) -> Activations<'x> {
        Activations::quantize_reusing(format, x, m, k, SpareRows::default())
    }

    /// As [`Activations::quantize`], in the buffers of `spare` where it has them.
    pub fn quantize_reusing(
        format: QuantFormat,
        x: &'x [f32],
        m: usize,
        k: usize,
        spare: SpareRows,
    ) -> Activations<'x> {
        assert_eq!(x.len(), m * k, "x must hold {m} rows of {k}");
        let rows = x.chunks_exact(k.max(1)).take(m);
        /// `spare`, resized to `m` rows, each refilled from its row of `x`.
        fn refill<'x, R: Default>(
            mut spare: Vec<R>,
            rows: impl Iterator<Item = &'x [f32]>,
            m: usize,
            fill: fn(&mut R, &[f32]),
        ) -> Vec<R> {
            spare.resize_with(m, R::default);
            for (row, x) in spare.iter_mut().zip(rows) {
                fill(row, x);
            }
            spare
        }
        match format.activation_format() {
            ActivationFormat::F32 => Activations::F32(rows.collect()),
            ActivationFormat::Q8_0 | ActivationFormat::Q8_1 => {
                Activations::Q8(refill(spare.q8, rows, m, Q8Row::quantize_from))
            }
            ActivationFormat::Q8_1_I => Activations::Q8(refill(spare.q8, rows, m, Q8Row::quantize_interleaved_from)),
            ActivationFormat::Q8_K => Activations::Q8K(refill(spare.q8k, rows, m, Q8KRow::quantize_from)),
            ActivationFormat::Q8_K_I => Activations::Q8K(refill(spare.q8k, rows, m, Q8KRow::quantize_interleaved_from)),
        }
    }

    /// The buffers, for [`Activations::quantize_reusing`].
    pub fn into_spare(self) -> SpareRows {
        let mut spare = SpareRows::default();
        match self {
            Activations::F32(_) => {}
            Activations::Q8(rows) => spare.q8 = rows,
            Activations::Q8K(rows) => spare.q8k = rows,
        }
        spare.q8.truncate(SpareRows::MAX_ROWS);
        spare.q8k.truncate(SpareRows::MAX_ROWS);
        spare
    }

    pub fn rows(&self) -> usize {
        match self {
            Activations::F32(rows) => rows.len(),
            Activations::Q8(rows) => rows.len(),
            Activations::Q8K(rows) => rows.len(),
        }
    }
}

/// The reference dot product of one weight row with activation row `i`.
pub fn dot_reference(format: QuantFormat, w: &[u8], acts: &Activations, i: usize) -> f32 {
    match (format, acts) {
        (QuantFormat::F32, Activations::F32(x)) => scalar::dot_f32(w, x[i]),
        (QuantFormat::F16, Activations::F32(x)) => scalar::dot_f16(w, x[i]),
        (QuantFormat::BF16, Activations::F32(x)) => scalar::dot_bf16(w, x[i]),
        (QuantFormat::Q4_0, Activations::Q8(a)) => scalar::dot_q4_0(w, &a[i]),
        (QuantFormat::Q4_1, Activations::Q8(a)) => scalar::dot_q4_1(w, &a[i]),
        (QuantFormat::Q8_0, Activations::Q8(a)) => scalar::dot_q8_0(w, &a[i]),
        (QuantFormat::Q4_K, Activations::Q8K(a)) => scalar::dot_q4_k(w, &a[i]),
        (QuantFormat::Q5_K, Activations::Q8K(a)) => scalar::dot_q5_k(w, &a[i]),
        (QuantFormat::Q6_K, Activations::Q8K(a)) => scalar::dot_q6_k(w, &a[i]),
        (QuantFormat::Q4_K_I | QuantFormat::Q6_K_I, Activations::Q8K(a)) => scalar::dot_k_interleaved(format, w, &a[i]),
        (QuantFormat::A6_64, Activations::Q8(a)) => scalar::dot_a6(w, &a[i]),
        (QuantFormat::A8_64, Activations::Q8(a)) => scalar::dot_a8(w, &a[i]),
        (QuantFormat::A6_64_I, Activations::Q8(a)) => scalar::dot_a6_interleaved(w, &a[i]),
        (format, _) => panic!("activations were not quantized for {format}"),
    }
}

/// `out[a·stride + r]` = dot of row `r` of `w` with activation row
/// `act_rows.start + a`.
///
/// One call covers a whole panel of weight rows so that the kernels' checks and
/// dispatch are paid once per panel, not once per few rows.
///
/// # Panics
/// If `w` is malformed, the activations do not match it, or `out` is too small.
pub fn dot_rows(
    kernel: Kernel,
    w: &QuantMatrix,
    acts: &Activations,
    act_rows: std::ops::Range<usize>,
    out: &mut [f32],
    stride: usize,
) {
    if kernel == Kernel::Scalar {
        for (a, i) in act_rows.enumerate() {
            for r in 0..w.rows {
                out[a * stride + r] = dot_reference(w.format, w.row(r), acts, i);
            }
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let acts = match acts {
            Activations::F32(x) => x86::ActRows::F32(&x[act_rows]),
            Activations::Q8(a) => x86::ActRows::Q8(&a[act_rows]),
            Activations::Q8K(a) => x86::ActRows::Q8K(&a[act_rows]),
        };
        x86::dot_rows(kernel, w, acts, out, stride);
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("only the scalar kernel is available off x86-64")
}

/// The most a quantized dot product of the weights `w` (dequantized) with `x` may
/// differ from the f32 one through the quantization of `x` to `format`'s activation
/// format, plus float rounding: each activation moves by at most half a step,
/// amax/254 of its block, plus the f16 rounding of the block scale (2⁻¹¹ relative
/// on a value up to amax); Q8_1's f16 block sum adds m·Σa rounding for Q4_1.
#[cfg(test)]
pub(crate) fn activation_rounding_bound(format: QuantFormat, w: &[f32], x: &[f32]) -> f64 {
    let block = format.activation_format().block_elems();
    let abs_dot: f64 = w.iter().zip(x).map(|(w, x)| (w * x).abs() as f64).sum();
    let mut bound = 1e-5 * abs_dot;
    if block > 1 {
        for (wb, xb) in w.chunks(block).zip(x.chunks(block)) {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
            let abs_w: f64 = wb.iter().map(|w| w.abs() as f64).sum();
            bound += abs_w * amax * (0.5 / 127.0 + 1e-3);
            if format == QuantFormat::Q4_1 {
                bound += 32.0 * 0.5 * amax * 1e-3; // |m| <= 0.5 in `random`'s blocks
            }
        }
    }
    bound
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::dequant::dequantize_row;
    use crate::quant::random::{self, Scales};

    fn simd_kernels() -> Vec<Kernel> {
        Kernel::ALL
            .into_iter()
            .filter(|k| *k != Kernel::Scalar && k.is_available())
            .collect()
    }

    /// Row length for tests: 19 blocks of 32 are two groups of eight and three left
    /// over, an odd count, so no kernel can rely on pairs or whole groups.
    fn test_cols(format: QuantFormat) -> usize {
        match format.block_elems() {
            256 => 3 * 256,
            64 => 7 * 64,
            32 => 19 * 32,
            // Float rows: not a multiple of 8, to exercise the tails.
            _ => 611,
        }
    }

    /// Weight rows in the kernel tests: one decode tile of 8 and a tail of 3.
    const ROWS: usize = 11;
    /// Activation rows in the kernel tests: one tile of each height (8, 4, 2, 1).
    const ACTS: usize = 15;

    /// The kernel's results for every (activation row, weight row), computed as
    /// decode (one activation row per call) and as prefill (all rows in one call),
    /// with the reference: `(kernel result, reference result, activation row, weight row)`.
    fn kernel_and_reference(
        kernel: Kernel,
        format: QuantFormat,
        w: &[u8],
        acts: &Activations,
    ) -> Vec<(f32, f32, usize, usize)> {
        let k = match acts {
            Activations::F32(x) => x[0].len(),
            Activations::Q8(a) => a[0].len(),
            Activations::Q8K(a) => a[0].qs.len(),
        };
        let w = QuantMatrix::new(format, ROWS, k, w).unwrap();
        let mut prefill = vec![f32::NAN; ACTS * ROWS];
        dot_rows(kernel, &w, acts, 0..ACTS, &mut prefill, ROWS);
        let mut results = Vec::new();
        for i in 0..ACTS {
            let mut decode = vec![f32::NAN; ROWS];
            dot_rows(kernel, &w, acts, i..i + 1, &mut decode, ROWS);
            for r in 0..ROWS {
                let reference = dot_reference(format, w.row(r), acts, i);
                results.push((decode[r], reference, i, r));
                results.push((prefill[i * ROWS + r], reference, i, r));
            }
        }
        results
    }

    #[test]
    fn simd_kernels_equal_the_reference_exactly_with_unit_scales() {
        let mut rng = random::rng(1);
        for format in QuantFormat::ALL {
            let k = test_cols(format);
            let w = random::weights(&mut rng, format, ROWS, k, Scales::Unit);
            let xs: Vec<Vec<f32>> = (0..ACTS)
                .map(|_| {
                    (0..k)
                        .map(|_| rand::Rng::random_range(&mut rng, -3..=3) as f32)
                        .collect()
                })
                .collect();
            let acts = match format.activation_format() {
                ActivationFormat::F32 => Activations::F32(xs.iter().map(Vec::as_slice).collect()),
                ActivationFormat::Q8_0 | ActivationFormat::Q8_1 => {
                    Activations::Q8((0..ACTS).map(|_| random::unit_q8_row(&mut rng, k)).collect())
                }
                ActivationFormat::Q8_K => {
                    Activations::Q8K((0..ACTS).map(|_| random::unit_q8k_row(&mut rng, k)).collect())
                }
                ActivationFormat::Q8_1_I => Activations::Q8(
                    (0..ACTS)
                        .map(|_| {
                            let mut row = random::unit_q8_row(&mut rng, k);
                            row.interleave();
                            row
                        })
                        .collect(),
                ),
                ActivationFormat::Q8_K_I => Activations::Q8K(
                    (0..ACTS)
                        .map(|_| {
                            let mut row = random::unit_q8k_row(&mut rng, k);
                            row.interleave();
                            row
                        })
                        .collect(),
                ),
            };
            for kernel in simd_kernels() {
                let results = kernel_and_reference(kernel, format, &w, &acts);
                for &(fast, reference, i, r) in &results {
                    assert_eq!(
                        fast, reference,
                        "{format} on {kernel:?}, activation {i}, weight row {r}"
                    );
                }
                // Small integers can cancel in a few dots, not in most.
                let zeros = results.iter().filter(|(_, reference, ..)| *reference == 0.0).count();
                assert!(zeros * 10 < results.len(), "degenerate test data for {format}");
            }
        }
    }

    /// Σ |w|·|x| over a row: the scale against which float rounding is judged.
    fn abs_dot(format: QuantFormat, w: &[u8], x: &[f32]) -> f32 {
        let mut wf = vec![0f32; x.len()];
        dequantize_row(format, w, &mut wf);
        wf.iter().zip(x).map(|(w, x)| (w * x).abs()).sum()
    }

    #[test]
    fn simd_kernels_match_the_reference_on_random_blocks() {
        let mut rng = random::rng(2);
        for format in QuantFormat::ALL {
            let k = test_cols(format);
            let w = random::weights(&mut rng, format, ROWS, k, Scales::Random);
            let xs: Vec<Vec<f32>> = (0..ACTS).map(|_| random::activations(&mut rng, k)).collect();
            let x = xs.concat();
            let acts = Activations::quantize(format, &x, ACTS, k);
            let row_bytes = w.len() / ROWS;
            for kernel in simd_kernels() {
                for (fast, reference, i, r) in kernel_and_reference(kernel, format, &w, &acts) {
                    let scale = abs_dot(format, &w[r * row_bytes..(r + 1) * row_bytes], &xs[i]);
                    assert!(
                        (fast - reference).abs() <= 1e-5 * scale,
                        "{format} on {kernel:?}: {fast} vs {reference} (scale {scale}), activation {i}, weight row {r}"
                    );
                }
            }
        }
    }

    #[test]
    fn quantized_dot_is_within_activation_rounding_of_the_f32_dot() {
        let mut rng = random::rng(3);
        for format in QuantFormat::ALL {
            let k = test_cols(format);
            for _ in 0..8 {
                let w = random::weights(&mut rng, format, 1, k, Scales::Random);
                let x = random::activations(&mut rng, k);
                let acts = Activations::quantize(format, &x, 1, k);
                let quantized = dot_reference(format, &w, &acts, 0);
                let mut wf = vec![0f32; k];
                dequantize_row(format, &w, &mut wf);
                let exact: f64 = wf.iter().zip(&x).map(|(&w, &x)| w as f64 * x as f64).sum();
                let bound = activation_rounding_bound(format, &wf, &x);
                let error = (quantized as f64 - exact).abs();
                assert!(
                    error <= bound,
                    "{format}: quantized {quantized} vs f32 {exact}, error {error} > {bound}"
                );
                // The bound is a worst case (all roundings aligned); typical errors are
                // far smaller, and a wrong kernel would be off by the dot's own scale.
                let scale = abs_dot(format, &w, &x) as f64;
                assert!(
                    error <= 0.02 * scale,
                    "{format}: error {error} is {:.1}% of Σ|w·x|",
                    100.0 * error / scale
                );
            }
        }
    }

    #[test]
    fn kernel_selection_prefers_the_widest_available_instruction_set() {
        let selected = Kernel::selected();
        assert!(selected.is_available());
        assert!(Kernel::Scalar.is_available());
        if std::env::var("SWITCHYARD_QUANT_KERNEL").is_err() {
            let best = Kernel::ALL.into_iter().rev().find(|k| k.is_available()).unwrap();
            assert_eq!(selected, best);
        }
    }
}
