//! Quantizing f32 weights into GGUF block formats, for checkpoints loaded from
//! Hugging Face files (F32, BF16, F16) rather than from GGUF.
//!
//! [`quantize_matrix`] returns the bytes GGUF would store for the tensor: rows of
//! blocks, the layout [`super::QuantMatrix`] and [`super::dequant`] read, so a model
//! quantized at load runs on the same kernels as one downloaded as GGUF.
//!
//! # Algorithms
//!
//! The searches are those of llama.cpp's reference quantizers (`ggml-quants.c`,
//! what `llama-quantize` runs without an importance matrix), written anew from
//! their description:
//!
//! - **Q8_0**: the largest magnitude of each block of 32 maps to ±127.
//! - **Q6_K**: each sub-block of 16 gets a signed scale from a search over 19
//!   candidate grids around "largest magnitude ↦ −32" (the levels are −32..32, so
//!   the extreme takes the longer side). Each grid is rounded to, and scored by the
//!   least-squares fit its levels allow; the best fit's scale is kept. The 16 scales
//!   are then stored as 8-bit multiples of one f16 super-block scale.
//! - **Q4_K**: each sub-block of 32 is fitted as `scale·q − min`, q in 0..16.
//!   Starting from the grid that spans the sub-block's range in 15 steps, 21 grids
//!   of 14 to 16 steps over the span are each rounded to, and scale and min refitted
//!   to the rounded levels by least squares; the fit of least squared error wins.
//!   The eight scales and eight mins are then stored as 6-bit multiples of two f16
//!   super-block scales.
//! - **Q4_0**: llama.cpp's reference maps the largest magnitude to −8; we run the
//!   Q6_K scale search instead, with 16 levels (as llama.cpp does when it has an
//!   importance matrix).
//!
//! Where we differ from llama.cpp, it is to lower the error:
//!
//! - The fits minimise the plain squared error of the weights, which is what the
//!   error of a matmul's output depends on when nothing is known about its inputs.
//!   llama.cpp weights Q6_K's fit by x² and Q4_K's by |x| + RMS; unweighted, the
//!   RMS error is 2.4% lower for Q6_K and 0.7% for Q4_K (measured on Gaussian rows).
//! - Every quant is rounded against the scales *as stored* (the 6- and 8-bit
//!   sub-scales are multiples of the stored f16 super-scale, not of the unrounded
//!   one), and a stored scale derived from a maximum is rounded away from zero so
//!   that the maximum still fits the levels. Both matter for small weights: a Q6_K
//!   super-scale is about amax/4096, an f16 subnormal for any block whose largest
//!   weight is under 0.25, where f16 has as little as 1% relative precision.
//! - No scale of nonzero weights rounds to 0: the f16 scales round away from zero,
//!   and a sub-block scale is at least one unit of the super-scale. Rounded to
//!   nearest, as in llama.cpp, a sub-block far smaller than the largest of its block
//!   decodes as a constant, and a block of weights around 10⁻⁷ as zeros (100% error;
//!   17% here).
//!
//! # Speed
//!
//! Rows are quantized in parallel (rayon). The searches, nearly all of the time,
//! take eight groups (sub-blocks or blocks) side by side, one per vector lane, and
//! run on AVX2 where the CPU has it.

use half::{bf16, f16};
use rayon::prelude::*;

// Every value rounded here is clamped first, to at most 128 in magnitude, well
// within `round_half_even`'s range.
use super::activation::{max_abs, round_half_even};
use super::formats::{BlockQ4_0, BlockQ4K, BlockQ6K, BlockQ8_0, F16Bytes, GgmlBlock, QuantFormat, pack_k_scales};

/// The formats [`quantize_matrix`] encodes to. Q4_1 and Q5_K are read but not
/// produced: nothing offers them as a load-time choice.
pub const TARGETS: [QuantFormat; 7] = [
    QuantFormat::F32,
    QuantFormat::F16,
    QuantFormat::BF16,
    QuantFormat::Q8_0,
    QuantFormat::Q6_K,
    QuantFormat::Q4_K,
    QuantFormat::Q4_0,
];

/// The largest magnitude a quantized format accepts: f16's largest finite value.
/// Every format's f16 scales stay finite for values up to this (the largest, a
/// Q4_0 scale, is about amax/7), and real weights are far smaller.
const MAX_MAGNITUDE: f32 = 65504.0;

/// A group (a sub-block, or a Q4_0 block) whose values all lie within this of zero
/// (for Q4_K: of each other) gets the scale 0: the smallest nonzero f16 is 6·10⁻⁸,
/// far above any step such a group could use. It also keeps `levels / max` finite.
const NEGLIGIBLE: f32 = 1e-15;

/// Encodes `rows × cols` row-major f32 `values` as `format`, returning the bytes
/// exactly as a GGUF file stores that tensor: `rows` rows of
/// `format.row_bytes(cols)` bytes.
///
/// Rows are quantized in parallel on the rayon pool; the result does not depend on
/// the number of threads.
///
/// # Errors
/// - `cols` is not a whole number of `format`'s blocks (32 elements for Q8_0 and
///   Q4_0, 256 for the K-quants). The caller should then fall back to another
///   format: one with smaller blocks, or F16.
/// - `format` is not one of [`TARGETS`].
/// - `values` does not hold `rows × cols` values.
/// - For a block format, a value is NaN, infinite, or beyond ±65504 (the f16
///   range, which the block scales must stay in). Float formats encode any value.
pub fn quantize_matrix(format: QuantFormat, rows: usize, cols: usize, values: &[f32]) -> Result<Vec<u8>, String> {
    if !TARGETS.contains(&format) {
        let targets: Vec<&str> = TARGETS.iter().map(|f| f.name()).collect();
        return Err(format!(
            "cannot quantize to {format}: the targets are {}",
            targets.join(", ")
        ));
    }
    let row_bytes = format.row_bytes(cols).ok_or_else(|| {
        format!(
            "cannot quantize {rows}×{cols} to {format}: {cols} columns is not a whole number of \
             {format} blocks ({} elements each)",
            format.block_elems()
        )
    })?;
    if rows.checked_mul(cols) != Some(values.len()) {
        return Err(format!(
            "a {rows}×{cols} matrix needs {rows}·{cols} values, got {}",
            values.len()
        ));
    }
    let mut out = vec![0u8; rows * row_bytes];
    if rows == 0 || cols == 0 {
        return Ok(out);
    }
    out.par_chunks_mut(row_bytes)
        .zip(values.par_chunks(cols))
        .enumerate()
        .try_for_each(|(r, (out, row))| encode_row(format, r, row, out))?;
    Ok(out)
}

/// Encodes one row (`r` for error messages) of a target format into `out`.
fn encode_row(format: QuantFormat, r: usize, x: &[f32], out: &mut [u8]) -> Result<(), String> {
    if format.block_elems() > 1 {
        check_row(format, r, x)?;
    }
    match format {
        QuantFormat::F32 => encode_f32(x, out),
        QuantFormat::F16 => encode_f16(x, out),
        QuantFormat::BF16 => encode_bf16(x, out),
        QuantFormat::Q8_0 => each_block(x, out, quantize_q8_0),
        QuantFormat::Q6_K => each_block(x, out, quantize_q6_k),
        QuantFormat::Q4_K => each_block(x, out, quantize_q4_k),
        QuantFormat::Q4_0 => quantize_q4_0_row(x, out),
        QuantFormat::Q4_1
        | QuantFormat::Q5_K
        | QuantFormat::A6_64
        | QuantFormat::A8_64
        | QuantFormat::Q4_K_I
        | QuantFormat::Q6_K_I
        | QuantFormat::A6_64_I => {
            unreachable!("{format} is not a target; checked by the caller")
        }
    }
    Ok(())
}

/// Refuses values a block format cannot encode (see [`quantize_matrix`]).
fn check_row(format: QuantFormat, r: usize, row: &[f32]) -> Result<(), String> {
    match row.iter().position(|v| !v.is_finite() || v.abs() > MAX_MAGNITUDE) {
        None => Ok(()),
        Some(c) => Err(format!(
            "cannot quantize to {format}: the value at row {r}, column {c} is {}, outside ±{MAX_MAGNITUDE}",
            row[c]
        )),
    }
}

/// Quantizes each block of `x` with `quantize` and writes it into its bytes of `out`.
fn each_block<B: GgmlBlock, const N: usize>(x: &[f32], out: &mut [u8], quantize: fn(&[f32; N]) -> B) {
    const { assert!(N == B::ELEMS) };
    for (x, out) in x.chunks_exact(N).zip(out.chunks_exact_mut(B::BYTES)) {
        quantize(x.try_into().expect("chunks_exact")).write(out);
    }
}

fn encode_f32(x: &[f32], out: &mut [u8]) {
    for (o, v) in out.chunks_exact_mut(4).zip(x) {
        o.copy_from_slice(&v.to_le_bytes());
    }
}

fn encode_f16(x: &[f32], out: &mut [u8]) {
    for (o, v) in out.chunks_exact_mut(2).zip(x) {
        o.copy_from_slice(&f16::from_f32(*v).to_bits().to_le_bytes());
    }
}

fn encode_bf16(x: &[f32], out: &mut [u8]) {
    for (o, v) in out.chunks_exact_mut(2).zip(x) {
        o.copy_from_slice(&bf16::from_f32(*v).to_bits().to_le_bytes());
    }
}

fn quantize_q8_0(x: &[f32; 32]) -> BlockQ8_0 {
    let (d_bytes, d) = f16_scale(max_abs(x) / 127.0);
    let qs = if d > 0.0 {
        std::array::from_fn(|i| round_half_even((x[i] / d).clamp(-127.0, 127.0)) as i8)
    } else {
        [0; 32]
    };
    BlockQ8_0 { d: d_bytes, qs }
}

/// Q4_0 takes eight blocks at a time, one per lane of the scale search; a row's last
/// group may be short (its missing lanes are zeros and come out unused).
fn quantize_q4_0_row(x: &[f32], out: &mut [u8]) {
    for (x, out) in x.chunks(LANES * 32).zip(out.chunks_mut(LANES * BlockQ4_0::BYTES)) {
        let blocks = x.len() / 32;
        let group: [Lanes; 32] =
            std::array::from_fn(|i| std::array::from_fn(|k| if k < blocks { x[32 * k + i] } else { 0.0 }));
        let scales = symmetric_scales(&group, 8.0);
        for (k, out) in out.chunks_exact_mut(BlockQ4_0::BYTES).enumerate() {
            let (d_bytes, d) = f16_scale(scales[k]);
            // Level 8 is zero.
            let q: [u8; 32] = std::array::from_fn(|i| {
                if d == 0.0 {
                    8
                } else {
                    (round_half_even((x[32 * k + i] / d).clamp(-8.0, 7.0)) + 8.0) as u8
                }
            });
            let block = BlockQ4_0 {
                d: d_bytes,
                qs: std::array::from_fn(|j| q[j] | (q[j + 16] << 4)),
            };
            block.write(out);
        }
    }
}

fn quantize_q6_k(x: &[f32; 256]) -> BlockQ6K {
    // Two groups of eight sub-blocks of 16, a sub-block per lane.
    let mut scales = [0f32; 16];
    for (g, scales) in scales.chunks_exact_mut(LANES).enumerate() {
        let group: [Lanes; 16] = std::array::from_fn(|i| std::array::from_fn(|k| x[16 * (LANES * g + k) + i]));
        scales.copy_from_slice(&symmetric_scales(&group, 32.0));
    }
    let max_scale = signed_max(&scales);
    if max_scale == 0.0 {
        // Every sub-block is negligible: all-zero bytes decode as zeros.
        return BlockQ6K {
            ql: [0; 128],
            qh: [0; 64],
            scales: [0; 16],
            d: [0; 2],
        };
    }
    // As within a sub-block, the scale of largest magnitude goes to the long end of
    // the signed range, −128.
    let (d_bytes, d) = f16_scale(max_scale / -128.0);
    let sc: [i8; 16] = std::array::from_fn(|j| sub_scale(scales[j], d, -128.0, 127.0) as i8);
    // Levels 0..64 stand for −32..32; 32 is zero.
    let q: [u8; 256] = std::array::from_fn(|e| {
        // The product in dequantization's order, so that the rounding is against the
        // exact step the decoder will use.
        let step = d * sc[e / 16] as f32;
        if step == 0.0 {
            32
        } else {
            (round_half_even((x[e] / step).clamp(-32.0, 31.0)) + 32.0) as u8
        }
    });
    // The inverse of `dequant::q6_k_quant`: per half of 128, low nibbles of elements
    // l and l + 64 share a byte, as do l + 32 and l + 96; their top two bits share
    // `qh[l]`.
    let mut ql = [0u8; 128];
    let mut qh = [0u8; 64];
    for half in 0..2 {
        let q = &q[128 * half..128 * half + 128];
        for l in 0..32 {
            ql[64 * half + l] = (q[l] & 0x0F) | ((q[l + 64] & 0x0F) << 4);
            ql[64 * half + l + 32] = (q[l + 32] & 0x0F) | ((q[l + 96] & 0x0F) << 4);
            qh[32 * half + l] =
                (q[l] >> 4) | ((q[l + 32] >> 4) << 2) | ((q[l + 64] >> 4) << 4) | ((q[l + 96] >> 4) << 6);
        }
    }
    BlockQ6K {
        ql,
        qh,
        scales: sc,
        d: d_bytes,
    }
}

fn quantize_q4_k(x: &[f32; 256]) -> BlockQ4K {
    // The eight sub-blocks of 32, a sub-block per lane.
    let group: [Lanes; 32] = std::array::from_fn(|i| std::array::from_fn(|k| x[32 * k + i]));
    let (scales, mins) = affine_fits(&group);
    let (d_bytes, d) = f16_scale(scales.iter().fold(0f32, |m, &s| m.max(s)) / 63.0);
    let (dmin_bytes, dmin) = f16_scale(mins.iter().fold(0f32, |m, &s| m.max(s)) / 63.0);
    let sc: [u8; 8] = std::array::from_fn(|j| sub_scale(scales[j], d, 0.0, 63.0) as u8);
    // A min may round to zero: an offset of zero is a real value, not a lost one.
    let mn: [u8; 8] = std::array::from_fn(|j| {
        if dmin > 0.0 {
            round_half_even((mins[j] / dmin).clamp(0.0, 63.0)) as u8
        } else {
            0
        }
    });
    let q: [u8; 256] = std::array::from_fn(|e| {
        // Step and offset computed as dequantization computes them.
        let (step, offset) = (d * sc[e / 32] as f32, dmin * mn[e / 32] as f32);
        if step == 0.0 {
            0
        } else {
            round_half_even(((x[e] + offset) / step).clamp(0.0, 15.0)) as u8
        }
    });
    BlockQ4K {
        d: d_bytes,
        dmin: dmin_bytes,
        scales: pack_k_scales(sc, mn),
        // Chunk c of 32 bytes: sub-block 2c in the low nibbles, 2c + 1 in the high.
        qs: std::array::from_fn(|b| {
            let (c, l) = (b / 32, b % 32);
            q[64 * c + l] | (q[64 * c + 32 + l] << 4)
        }),
    }
}

/// Groups searched side by side: `x[i][k]` is value i of group k (a sub-block, or a
/// Q4_0 block). The searches then do every step to eight independent numbers at
/// once, which the compiler turns into vector instructions; one group at a time,
/// the work per candidate grid (sums across the group, divisions, comparisons)
/// would be scalar and take most of the time.
type Lanes = [f32; LANES];
const LANES: usize = 8;

/// Per lane, the scale of the grid that fits the group best: [`symmetric_search`],
/// on AVX2 where the CPU has it.
fn symmetric_scales<const N: usize>(x: &[Lanes; N], nmax: f32) -> Lanes {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // Safety: the CPU has AVX2.
        return unsafe { avx2::symmetric_scales(x, nmax) };
    }
    symmetric_search(x, nmax)
}

/// Per lane, the scale `s` of a grid `s·l`, l in −nmax..nmax, that fits the group
/// best in squared error, from a search over 19 grids around "the signed extreme
/// ↦ −nmax" (0 for a negligible group).
///
/// For fixed levels l the best scale is `Σxl / Σl²`, which lowers the squared error
/// by `(Σxl)² / Σl²` from `Σx²`; so each candidate grid is rounded to, and scored by
/// that reduction. The grids are spaced a tenth of a level apart, from nmax − 0.9
/// to nmax + 0.9 levels for the extreme.
#[inline(always)]
fn symmetric_search<const N: usize>(x: &[Lanes; N], nmax: f32) -> Lanes {
    let mut max = [0f32; LANES];
    for row in x {
        for k in 0..LANES {
            max[k] = if row[k].abs() > max[k].abs() { row[k] } else { max[k] };
        }
    }
    let (mut best_reduction, mut best_scale) = ([0f32; LANES], [0f32; LANES]);
    // The nominal grid first, as llama.cpp, so that it wins ties.
    for tenths in std::iter::once(0).chain((-9..=9).filter(|&t| t != 0)) {
        let extreme = nmax + 0.1 * tenths as f32;
        // A negligible group gets no levels, so no fit, and keeps the scale 0.
        let iscale = lanes(|k| {
            if max[k].abs() < NEGLIGIBLE {
                0.0
            } else {
                -extreme / max[k]
            }
        });
        let sums = LevelSums::new(x, &iscale, &[0.0; LANES], -nmax, nmax - 1.0);
        for k in 0..LANES {
            let (xl, ll) = (sums.xl[k], sums.ll[k]);
            let better = ll > 0.0 && xl * xl > best_reduction[k] * ll;
            let ll = if ll > 0.0 { ll } else { 1.0 };
            best_reduction[k] = if better { xl * xl / ll } else { best_reduction[k] };
            best_scale[k] = if better { xl / ll } else { best_scale[k] };
        }
    }
    best_scale
}

/// Per lane, the `(scale, min)` that fit the group best: [`affine_search`], on AVX2
/// where the CPU has it.
fn affine_fits(x: &[Lanes; 32]) -> (Lanes, Lanes) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // Safety: the CPU has AVX2.
        return unsafe { avx2::affine_fits(x) };
    }
    affine_search(x)
}

/// Per lane, fits the group as `scale·q − min`, q in 0..=15, min ≥ 0, in least
/// squares: returns `(scales, mins)`.
///
/// Starts from the grid that spans [min(x, 0), max(x)] in 15 steps, then tries 21
/// grids from 14 to 16 steps over the current span. Each is rounded to, and scale
/// and offset are refitted to the rounded levels in closed form (a linear
/// regression of x on q; an offset that would come out positive is held at zero,
/// which the format cannot store). A fit that lowers the error replaces the
/// current one, and later grids span from its offset.
#[inline(always)]
fn affine_search(x: &[Lanes; 32]) -> (Lanes, Lanes) {
    const N: f32 = 32.0;
    const NMAX: f32 = 15.0;
    let (mut hi, mut lo) = ([f32::MIN; LANES], [0f32; LANES]);
    let (mut sum_x, mut sum_xx) = ([0f32; LANES], [0f32; LANES]);
    for row in x {
        for k in 0..LANES {
            hi[k] = hi[k].max(row[k]);
            lo[k] = lo[k].min(row[k]);
            sum_x[k] += row[k];
            sum_xx[k] += row[k] * row[k];
        }
    }
    // A constant group (all zero, say) gets no levels, so no fit: its scale stays 0
    // and its offset the value.
    let flat = lanes(|k| hi[k] - lo[k] < NEGLIGIBLE);
    // Σ(scale·l + lo − x)², expanded so that it needs only the sums.
    let error = |k: usize, scale: f32, lo: f32, s: &LevelSums| {
        scale * scale * s.ll[k] + 2.0 * scale * lo * s.l[k] + N * lo * lo - 2.0 * scale * s.xl[k] - 2.0 * lo * sum_x[k]
            + sum_xx[k]
    };
    let mut scale = lanes(|k| if flat[k] { 0.0 } else { (hi[k] - lo[k]) / NMAX });
    let first = LevelSums::new(
        x,
        &lanes(|k| if flat[k] { 0.0 } else { NMAX / (hi[k] - lo[k]) }),
        &lo,
        0.0,
        NMAX,
    );
    let mut best_error = lanes(|k| error(k, scale[k], lo[k], &first));
    for step in 0..=20 {
        let steps = NMAX - 1.0 + 0.1 * step as f32;
        // A lane whose offset has reached `hi` (which no fit should do) gets no levels.
        let iscale = lanes(|k| {
            if flat[k] || hi[k] <= lo[k] {
                0.0
            } else {
                steps / (hi[k] - lo[k])
            }
        });
        let s = LevelSums::new(x, &iscale, &lo, 0.0, NMAX);
        for k in 0..LANES {
            let det = N * s.ll[k] - s.l[k] * s.l[k];
            // With all levels equal there is no slope to fit.
            let fits = det > 0.0;
            let det = if fits { det } else { 1.0 };
            let (mut fit_scale, mut fit_lo) = (
                (N * s.xl[k] - sum_x[k] * s.l[k]) / det,
                (s.ll[k] * sum_x[k] - s.l[k] * s.xl[k]) / det,
            );
            if fit_lo > 0.0 {
                fit_lo = 0.0;
                fit_scale = if s.ll[k] > 0.0 { s.xl[k] / s.ll[k] } else { 0.0 };
            }
            let fit_error = error(k, fit_scale, fit_lo, &s);
            let better = fits && fit_error < best_error[k];
            best_error[k] = if better { fit_error } else { best_error[k] };
            scale[k] = if better { fit_scale } else { scale[k] };
            lo[k] = if better { fit_lo } else { lo[k] };
        }
    }
    (scale, lanes(|k| -lo[k]))
}

/// The sums a least-squares fit to rounded levels needs, per lane: Σl, Σl² and Σxl
/// over `l = round(clamp(iscale·(x − lo), lmin, lmax))`.
struct LevelSums {
    l: Lanes,
    ll: Lanes,
    xl: Lanes,
}

impl LevelSums {
    /// The searches spend their time here: one pass over the groups, every step a
    /// vector operation on the eight lanes. Even and odd rows go to separate sums:
    /// two chains of dependent additions instead of one twice as long (measured up
    /// to 10% faster).
    #[inline(always)]
    fn new<const N: usize>(x: &[Lanes; N], iscale: &Lanes, lo: &Lanes, lmin: f32, lmax: f32) -> LevelSums {
        const { assert!(N.is_multiple_of(2)) };
        let zero = || LevelSums {
            l: [0.0; LANES],
            ll: [0.0; LANES],
            xl: [0.0; LANES],
        };
        let (mut even, mut odd) = (zero(), zero());
        for pair in x.chunks_exact(2) {
            let (a, b) = (&pair[0], &pair[1]);
            for k in 0..LANES {
                let l = round_half_even((iscale[k] * (a[k] - lo[k])).clamp(lmin, lmax));
                even.l[k] += l;
                even.ll[k] += l * l;
                even.xl[k] += a[k] * l;
                let l = round_half_even((iscale[k] * (b[k] - lo[k])).clamp(lmin, lmax));
                odd.l[k] += l;
                odd.ll[k] += l * l;
                odd.xl[k] += b[k] * l;
            }
        }
        LevelSums {
            l: lanes(|k| even.l[k] + odd.l[k]),
            ll: lanes(|k| even.ll[k] + odd.ll[k]),
            xl: lanes(|k| even.xl[k] + odd.xl[k]),
        }
    }
}

/// The searches compiled again with AVX2: the same code, inlined, with the eight
/// lanes in one 256-bit register instead of two 128-bit ones. Every lane does the
/// same operations in the same order, so the results are the same bit for bit
/// (tested); measured 1.3× (Q6_K, Q4_0) to 1.75× (Q4_K) faster than baseline
/// x86-64 code.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Lanes, affine_search, symmetric_search};

    #[target_feature(enable = "avx2")]
    pub(super) fn symmetric_scales<const N: usize>(x: &[Lanes; N], nmax: f32) -> Lanes {
        symmetric_search(x, nmax)
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn affine_fits(x: &[Lanes; 32]) -> (Lanes, Lanes) {
        affine_search(x)
    }
}

/// An array of one value per lane.
#[inline(always)]
fn lanes<T>(f: impl FnMut(usize) -> T) -> [T; LANES] {
    std::array::from_fn(f)
}

/// `v / unit` rounded to an integer in `lo..=hi`, but never 0 for a nonzero `v`
/// (unless 0 is the end of the range it is outside of): a sub-block whose scale
/// rounded to 0 would decode as a constant, while one unit, however coarse for it,
/// keeps each value within half a unit.
fn sub_scale(v: f32, unit: f32, lo: f32, hi: f32) -> f32 {
    if unit == 0.0 || v == 0.0 {
        return 0.0;
    }
    match round_half_even((v / unit).clamp(lo, hi)) {
        0.0 => 1f32.copysign(v / unit).clamp(lo, hi),
        rounded => rounded,
    }
}

/// The value of largest magnitude, with its sign (the first one on a tie).
fn signed_max(x: &[f32]) -> f32 {
    x.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m })
}

/// A scale as stored: the nearest f16 at or beyond `v` from zero (so that values
/// up to the maximum the scale was derived from still fit the levels), as its bytes
/// and the value they read as.
fn f16_scale(v: f32) -> (F16Bytes, f32) {
    let mut h = f16::from_f32(v);
    if h.to_f32().abs() < v.abs() {
        // f16 is sign and magnitude: the next bit pattern is one step further out.
        h = f16::from_bits(h.to_bits() + 1);
    }
    (h.to_bits().to_le_bytes(), h.to_f32())
}

#[cfg(test)]
mod tests {
    use rand::Rng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::quant::dot::activation_rounding_bound;
    use crate::quant::formats::round_to_f16;
    use crate::quant::random;
    use crate::quant::{QuantMatrix, matmul};

    /// The block formats, with the relative RMS error each stays under on Gaussian
    /// rows, a little above what was measured (seed 1, 8 × 4096 values): Q8_0 0.54%,
    /// Q6_K 1.73%, Q4_K 7.04%, Q4_0 8.09%. The error is that of a uniform grid over a
    /// block's range, so it grows with the range in σ: Gaussian blocks of 32 span
    /// about ±2.5σ; real weights, with heavier tails, more.
    const BLOCK_TARGETS: [(QuantFormat, f64); 4] = [
        (QuantFormat::Q8_0, 0.006),
        (QuantFormat::Q6_K, 0.019),
        (QuantFormat::Q4_K, 0.075),
        (QuantFormat::Q4_0, 0.085),
    ];

    /// Normally distributed values (Box–Muller) of standard deviation `sigma`.
    fn gaussian(rng: &mut StdRng, n: usize, sigma: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let (u, v) = (rng.random_range(f32::EPSILON..1.0f32), rng.random::<f32>());
                sigma * (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
            })
            .collect()
    }

    /// Laplace-distributed values of scale `b`: heavier tails than a Gaussian, as
    /// trained weights have.
    fn laplace(rng: &mut StdRng, n: usize, b: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let magnitude = -b * rng.random_range(f32::EPSILON..1.0f32).ln();
                if rng.random_bool(0.5) { magnitude } else { -magnitude }
            })
            .collect()
    }

    /// Quantizes `values` as `rows` rows and decodes them again.
    fn round_trip(format: QuantFormat, rows: usize, values: &[f32]) -> Vec<f32> {
        let cols = values.len() / rows;
        let bytes = quantize_matrix(format, rows, cols, values).unwrap();
        let w = QuantMatrix::new(format, rows, cols, &bytes).unwrap();
        let mut out = vec![f32::NAN; values.len()];
        for (r, out) in out.chunks_exact_mut(cols).enumerate() {
            w.dequantize_row(r, out);
        }
        out
    }

    /// RMS of `approx − exact` over RMS of `exact`.
    fn relative_rms(exact: &[f32], approx: &[f32]) -> f64 {
        let error: f64 = exact.iter().zip(approx).map(|(&a, &b)| ((a - b) as f64).powi(2)).sum();
        let norm: f64 = exact.iter().map(|&a| (a as f64).powi(2)).sum();
        (error / norm).sqrt()
    }

    fn round_trip_error(format: QuantFormat, values: &[f32]) -> f64 {
        relative_rms(values, &round_trip(format, 8, values))
    }

    #[test]
    fn round_trip_error_is_within_the_measured_bounds() {
        let mut rng = random::rng(1);
        let values = gaussian(&mut rng, 8 * 4096, 0.02);
        for (format, bound) in BLOCK_TARGETS {
            let error = round_trip_error(format, &values);
            assert!(error < bound, "{format}: relative RMS error {error:.5} ≥ {bound}");
        }
        // Float targets only round each value: F16 to 11 significant bits (measured
        // 0.021% RMS), BF16 to 8 (measured 0.17%); F32 is exact.
        assert_eq!(round_trip(QuantFormat::F32, 8, &values), values);
        assert!(round_trip_error(QuantFormat::F16, &values) < 0.0003);
        assert!(round_trip_error(QuantFormat::BF16, &values) < 0.0025);
    }

    #[test]
    fn the_k_quant_searches_beat_plain_rounding() {
        // Measured relative RMS errors, ours vs plain rounding:
        //   Gaussian: Q6_K 1.735% vs 1.937%, Q4_K 7.11% vs 7.88%, Q4_0 8.12% vs 8.61%
        //   Laplace:  Q6_K 2.118% vs 2.315%, Q4_K 8.36% vs 9.18%, Q4_0 10.21% vs 10.68%
        let mut rng = random::rng(2);
        let rows = [gaussian(&mut rng, 8 * 4096, 0.02), laplace(&mut rng, 8 * 4096, 0.02)];
        for values in &rows {
            for (format, ratio) in [
                (QuantFormat::Q6_K, 0.95),
                (QuantFormat::Q4_K, 0.95),
                (QuantFormat::Q4_0, 0.98),
            ] {
                let (ours, plain) = (
                    round_trip_error(format, values),
                    relative_rms(values, &plain_rounding(format, values)),
                );
                assert!(
                    ours < ratio * plain,
                    "{format}: searched {ours:.5} is not {ratio}× plain rounding's {plain:.5}"
                );
            }
        }
    }

    #[test]
    fn an_outlier_costs_its_block_not_the_row() {
        // One weight of 50σ per row. Its block's grid must reach it, so the block's
        // other values are rounded to that coarser grid; every other block comes out
        // exactly as without the outlier. Measured over the rows: Q8_0 0.85%, Q6_K
        // 2.8%, Q4_K 7.8%, Q4_0 9.0%; the outlier itself within 0.1%, 0.2%, 1.4%, 0.7%.
        let mut rng = random::rng(3);
        let plain = gaussian(&mut rng, 8 * 4096, 0.02);
        let mut values = plain.clone();
        let outliers: Vec<usize> = (0..8).map(|r| r * 4096 + 100 + 37 * r).collect();
        for &i in &outliers {
            values[i] = 1.0;
        }
        // Levels between 0 and the outlier: the grid's step is about 1 / levels.
        for (format, levels) in [
            (QuantFormat::Q8_0, 127.0),
            (QuantFormat::Q6_K, 31.0),
            (QuantFormat::Q4_K, 14.0),
            (QuantFormat::Q4_0, 7.0),
        ] {
            let (back, back_plain) = (round_trip(format, 8, &values), round_trip(format, 8, &plain));
            let block = format.block_elems();
            for (b, (back, back_plain)) in back.chunks(block).zip(back_plain.chunks(block)).enumerate() {
                let Some(&i) = outliers.iter().find(|&&i| i / block == b) else {
                    assert_eq!(back, back_plain, "{format}: block {b} changed");
                    continue;
                };
                assert!(
                    (back[i % block] - 1.0).abs() < 0.02,
                    "{format}: the outlier came back as {}",
                    back[i % block]
                );
                for (e, (&v, &x)) in back.iter().zip(&values[b * block..]).enumerate() {
                    assert!(
                        (v - x).abs() <= 0.6 / levels,
                        "{format}: element {e} of block {b}: {x} → {v}"
                    );
                }
            }
        }
    }

    #[test]
    fn zeros_stay_zeros() {
        let mut values = vec![0.0; 4 * 512];
        // A row of zeros next to one of values, and a zero block within a row.
        values[3 * 512..].copy_from_slice(&gaussian(&mut random::rng(4), 512, 0.02));
        values[3 * 512 + 256..3 * 512 + 288].fill(0.0);
        for format in TARGETS {
            let back = round_trip(format, 4, &values);
            assert!(back[..3 * 512].iter().all(|&v| v == 0.0), "{format}");
            assert!(back[3 * 512 + 256..3 * 512 + 288].iter().all(|&v| v == 0.0), "{format}");
            assert!(back.iter().all(|v| v.is_finite()), "{format}");
        }
    }

    #[test]
    fn tiny_weights_keep_the_precision_f16_scales_allow() {
        // Scales are f16, whose smallest step is 2⁻²⁴ ≈ 6·10⁻⁸: weights near it keep
        // a few levels, and below it nothing is representable. Measured relative RMS
        // errors at σ = 10⁻⁶: Q8_0 1.7%, Q6_K 9.1%, Q4_K 8.8%, Q4_0 9.4%; at σ = 10⁻⁷
        // 17% for all (with llama.cpp's rounding the Q8_0, Q6_K and Q4_K scales round
        // to 0 there: 100%).
        let gaussian = gaussian(&mut random::rng(5), 8 * 4096, 1.0);
        for (sigma, bound) in [(1e-6, 0.11), (1e-7, 0.19)] {
            let values: Vec<f32> = gaussian.iter().map(|v| v * sigma).collect();
            for (format, _) in BLOCK_TARGETS {
                let back = round_trip(format, 8, &values);
                assert!(back.iter().all(|v| v.is_finite()), "{format} at σ = {sigma}");
                let error = relative_rms(&values, &back);
                assert!(error < bound, "{format} at σ = {sigma}: relative RMS error {error:.5}");
            }
        }
    }

    #[test]
    fn the_output_is_valid_gguf_and_the_matmul_on_it_agrees_with_f32() {
        let mut rng = random::rng(6);
        let (n, m) = (64, 3);
        for format in TARGETS {
            // 512: two K-quant super-blocks; 320: ten blocks of 32, one group of
            // eight and a short one for Q4_0.
            let k = if format.block_elems() == 256 { 512 } else { 320 };
            let bytes = quantize_matrix(format, n, k, &gaussian(&mut rng, n * k, 0.02)).unwrap();
            let w = QuantMatrix::new(format, n, k, &bytes).unwrap();
            w.validate().unwrap();
            let x = random::activations(&mut rng, m * k);
            let mut out = vec![f32::NAN; m * n];
            matmul(&x, m, &w, &mut out);
            let mut wf = vec![0f32; k];
            for j in 0..n {
                w.dequantize_row(j, &mut wf);
                for (i, x) in x.chunks_exact(k).enumerate() {
                    let exact: f64 = wf.iter().zip(x).map(|(&w, &x)| w as f64 * x as f64).sum();
                    let error = (out[i * n + j] as f64 - exact).abs();
                    let bound = activation_rounding_bound(format, &wf, x);
                    assert!(error <= bound, "{format}: output ({i}, {j}) off by {error} > {bound}");
                }
            }
        }
    }

    #[test]
    fn rows_are_quantized_independently() {
        // Each row alone gives the same bytes as within the matrix, whatever the
        // threads did with the others.
        let values = laplace(&mut random::rng(7), 5 * 512, 0.02);
        for format in TARGETS {
            let whole = quantize_matrix(format, 5, 512, &values).unwrap();
            let rows: Vec<u8> = values
                .chunks_exact(512)
                .flat_map(|row| quantize_matrix(format, 1, 512, row).unwrap())
                .collect();
            assert_eq!(whole, rows, "{format}");
        }
    }

    #[test]
    fn bad_shapes_formats_and_values_are_errors() {
        let values = vec![0.5f32; 3 * 100];
        let err = quantize_matrix(QuantFormat::Q4_K, 3, 100, &values).unwrap_err();
        assert!(
            err.contains("100 columns") && err.contains("Q4_K blocks (256 elements each)"),
            "{err}"
        );
        let err = quantize_matrix(QuantFormat::Q8_0, 6, 50, &values).unwrap_err();
        assert!(
            err.contains("50 columns") && err.contains("(32 elements each)"),
            "{err}"
        );
        for format in [QuantFormat::Q4_1, QuantFormat::Q5_K] {
            let err = quantize_matrix(format, 3, 256, &[0.0; 3 * 256]).unwrap_err();
            assert!(err.contains(&format!("to {format}")) && err.contains("Q6_K"), "{err}");
        }
        let err = quantize_matrix(QuantFormat::F16, 4, 100, &values).unwrap_err();
        assert!(err.contains("got 300"), "{err}");
        for bad in [f32::NAN, f32::INFINITY, -1e6] {
            let mut values = vec![0.5f32; 2 * 256];
            values[256 + 7] = bad;
            let err = quantize_matrix(QuantFormat::Q6_K, 2, 256, &values).unwrap_err();
            assert!(err.contains("row 1, column 7"), "{err}");
            // Float formats encode it.
            assert!(quantize_matrix(QuantFormat::F32, 2, 256, &values).is_ok());
        }
    }

    #[test]
    fn stored_scales_round_away_from_zero() {
        for v in [1.0f32, 0.1, -0.1, 3e-5, 1e-7, -1e-7, 2e-8, 1e-20] {
            let (bytes, stored) = f16_scale(v);
            assert_eq!(half::f16::from_le_bytes(bytes).to_f32(), stored);
            assert!(
                stored.abs() >= v.abs() && stored.signum() == v.signum(),
                "{v} → {stored}"
            );
            // The nearest such f16: one step down is below |v|.
            let below = half::f16::from_bits(half::f16::from_f32(stored).to_bits() - 1).to_f32();
            assert!(below.abs() < v.abs(), "{v} → {stored}, but {below} also covers it");
        }
        assert_eq!(f16_scale(0.0).1, 0.0);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_searches_equal_the_portable_ones() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        let mut rng = random::rng(8);
        for _ in 0..200 {
            // Lanes of different magnitudes, some all zero.
            let sigmas: Lanes = lanes(|k| if k == 5 { 0.0 } else { 10f32.powi(-(k as i32)) });
            let wide: Vec<f32> = laplace(&mut rng, 32 * LANES, 1.0);
            let group: [Lanes; 32] = std::array::from_fn(|i| lanes(|k| wide[LANES * i + k] * sigmas[k]));
            let half: &[Lanes; 16] = group[..16].try_into().unwrap();
            // Safety: AVX2 was just detected.
            unsafe {
                assert_eq!(avx2::affine_fits(&group), affine_search(&group));
                assert_eq!(avx2::symmetric_scales(half, 32.0), symmetric_search(half, 32.0));
                assert_eq!(avx2::symmetric_scales(&group, 8.0), symmetric_search(&group, 8.0));
            }
        }
    }

    /// `x` through `format` with plain rounding, no search.
    fn plain_rounding(format: QuantFormat, x: &[f32]) -> Vec<f32> {
        match format {
            QuantFormat::Q6_K => naive_q6_k(x),
            QuantFormat::Q4_K => naive_q4_k(x),
            QuantFormat::Q4_0 => naive_q4_0(x),
            _ => unreachable!("no plain rounding for {format}"),
        }
    }

    /// Q6_K by plain rounding: each sub-block's largest magnitude ↦ ±31, its scale
    /// ↦ ±127 of the super-block scale.
    fn naive_q6_k(x: &[f32]) -> Vec<f32> {
        let mut out = Vec::with_capacity(x.len());
        for block in x.chunks_exact(256) {
            let scales: Vec<f32> = block.chunks_exact(16).map(|s| max_abs(s) / 31.0).collect();
            let d = round_to_f16(scales.iter().fold(0f32, |m, &s| m.max(s)) / 127.0);
            for (sub, &s) in block.chunks_exact(16).zip(&scales) {
                let step = d * (s / d).round().min(127.0);
                out.extend(sub.iter().map(|&v| {
                    if step > 0.0 {
                        step * (v / step).round().clamp(-32.0, 31.0)
                    } else {
                        0.0
                    }
                }));
            }
        }
        out
    }

    /// Q4_K by plain rounding: each sub-block's range [min(x, 0), max] in 15 steps,
    /// scales and mins ↦ 0..63 of their super-block scales.
    fn naive_q4_k(x: &[f32]) -> Vec<f32> {
        let mut out = Vec::with_capacity(x.len());
        for block in x.chunks_exact(256) {
            let fits: Vec<(f32, f32)> = block
                .chunks_exact(32)
                .map(|s| {
                    let lo = s.iter().fold(0f32, |m, &v| m.min(v));
                    let hi = s.iter().fold(f32::MIN, |m, &v| m.max(v));
                    ((hi - lo) / 15.0, -lo)
                })
                .collect();
            let d = round_to_f16(fits.iter().fold(0f32, |m, f| m.max(f.0)) / 63.0);
            let dmin = round_to_f16(fits.iter().fold(0f32, |m, f| m.max(f.1)) / 63.0);
            for (sub, &(s, m)) in block.chunks_exact(32).zip(&fits) {
                let step = d * (s / d).round().min(63.0);
                let offset = if dmin > 0.0 {
                    dmin * (m / dmin).round().min(63.0)
                } else {
                    0.0
                };
                out.extend(sub.iter().map(|&v| {
                    if step > 0.0 {
                        step * ((v + offset) / step).round().clamp(0.0, 15.0) - offset
                    } else {
                        -offset
                    }
                }));
            }
        }
        out
    }

    /// Q4_0 as llama.cpp's reference quantizes it: the signed extreme ↦ −8.
    fn naive_q4_0(x: &[f32]) -> Vec<f32> {
        let mut out = Vec::with_capacity(x.len());
        for block in x.chunks_exact(32) {
            let d = round_to_f16(signed_max(block) / -8.0);
            out.extend(block.iter().map(|&v| {
                if d != 0.0 {
                    d * (v / d).round().clamp(-8.0, 7.0)
                } else {
                    0.0
                }
            }));
        }
        out
    }
}
