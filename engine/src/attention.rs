//! Attention over a KV cache held in half precision.
//!
//! Keys and values are stored as IEEE 754 binary16 (the bits, in `u16`), as
//! llama.cpp stores them by default: half the memory of f32, and half the bytes
//! a decode step reads from the cache. Queries, scores and the weighted sum
//! stay f32; only the stored keys and values are rounded (to nearest, ties to
//! even, at write time).
//!
//! [`attend_row`] runs on a plain-Rust reference path or, where the CPU has
//! AVX2, FMA and F16C, on a vector path that widens eight halves per
//! instruction. The two differ only by rounding (the vector path fuses
//! multiply and add); the choice follows [`Kernel::selected`], so
//! `SWITCHYARD_QUANT_KERNEL=scalar` runs the reference here too.

use half::f16;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};

use crate::quant::Kernel;

/// Writes `src` into `dst` as f16 bits (round to nearest, ties to even).
pub fn store_f16(src: &[f32], dst: &mut [u16]) {
    dst.reinterpret_cast_mut::<f16>().convert_from_f32_slice(src);
}

/// One f16 value, widened.
pub fn f16_to_f32(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

/// One query row of one head: `out = softmax(q·Kᵀ/√d) · V` over the first
/// `keys` rows of `k` and `v` (`head_dim` = `q.len()` halves per row).
/// `scores` is scratch, reused between calls.
pub fn attend_row(q: &[f32], k: &[u16], v: &[u16], keys: usize, out: &mut [f32], scores: &mut Vec<f32>) {
    #[cfg(target_arch = "x86_64")]
    if Kernel::selected() != Kernel::Scalar {
        // Safety: every kernel past Scalar is only selected on a CPU with AVX2, FMA and F16C.
        return unsafe { x86::attend_row(q, k, v, keys, out, scores) };
    }
    attend_row_scalar(q, k, v, keys, out, scores);
}

/// The reference: what [`attend_row`] computes, in plain Rust.
pub fn attend_row_scalar(q: &[f32], k: &[u16], v: &[u16], keys: usize, out: &mut [f32], scores: &mut Vec<f32>) {
    let head_dim = q.len();
    let scale = 1.0 / (head_dim as f32).sqrt();
    scores.clear();
    scores.extend(k[..keys * head_dim].chunks_exact(head_dim).map(|key| {
        let dot: f32 = q.iter().zip(key).map(|(&a, &b)| a * f16_to_f32(b)).sum();
        dot * scale
    }));
    let total = softmax_unnormalised(scores);
    out.fill(0.0);
    for (p, value) in scores.iter().zip(v[..keys * head_dim].chunks_exact(head_dim)) {
        let weight = p / total;
        for (o, &x) in out.iter_mut().zip(value) {
            *o += weight * f16_to_f32(x);
        }
    }
}

/// `scores[i] = exp(scores[i] - max)`; returns their sum.
fn softmax_unnormalised(scores: &mut [f32]) -> f32 {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut total = 0.0;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        total += *s;
    }
    total
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{f16_to_f32, softmax_unnormalised};

    /// Safety: the CPU has AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn attend_row(
        q: &[f32],
        k: &[u16],
        v: &[u16],
        keys: usize,
        out: &mut [f32],
        scores: &mut Vec<f32>,
    ) {
        let head_dim = q.len();
        let scale = 1.0 / (head_dim as f32).sqrt();
        scores.clear();
        scores.extend(
            k[..keys * head_dim]
                .chunks_exact(head_dim)
                .map(|key| unsafe { dot(q, key) } * scale),
        );
        let total = softmax_unnormalised(scores);
        out.fill(0.0);
        for (p, value) in scores.iter().zip(v[..keys * head_dim].chunks_exact(head_dim)) {
            unsafe { axpy(out, p / total, value) };
        }
    }

    /// Eight halves from `bits`, widened. Safety: 8 values are readable there.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(bits: *const u16) -> __m256 {
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(bits.cast())) }
    }

    /// `Σ a[i]·b[i]`, `a.len() == b.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot(a: &[f32], b: &[u16]) -> f32 {
        let n = a.len().min(b.len());
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        // Safety: every load below is within the first `n` elements of both slices.
        unsafe {
            while i + 16 <= n {
                acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(i)), load8(b.as_ptr().add(i)), acc0);
                acc1 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(a.as_ptr().add(i + 8)),
                    load8(b.as_ptr().add(i + 8)),
                    acc1,
                );
                i += 16;
            }
            if i + 8 <= n {
                acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(i)), load8(b.as_ptr().add(i)), acc0);
                i += 8;
            }
        }
        let acc = _mm256_add_ps(acc0, acc1);
        let quad = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
        let mut sum = _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)));
        for j in i..n {
            sum += a[j] * f16_to_f32(b[j]);
        }
        sum
    }

    /// `out[i] += w·x[i]`, `out.len() == x.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn axpy(out: &mut [f32], w: f32, x: &[u16]) {
        let n = out.len().min(x.len());
        let weight = _mm256_set1_ps(w);
        let mut i = 0;
        // Safety: every access below is within the first `n` elements of both slices.
        unsafe {
            while i + 8 <= n {
                let o = out.as_mut_ptr().add(i);
                _mm256_storeu_ps(o, _mm256_fmadd_ps(weight, load8(x.as_ptr().add(i)), _mm256_loadu_ps(o)));
                i += 8;
            }
        }
        for j in i..n {
            out[j] += w * f16_to_f32(x[j]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn halves(values: &[f32]) -> Vec<u16> {
        let mut bits = vec![0u16; values.len()];
        store_f16(values, &mut bits);
        bits
    }

    #[test]
    fn storing_rounds_to_the_nearest_half() {
        let bits = halves(&[1.0, -2.5, 65504.0, 1.0e-8, 0.1]);
        let back: Vec<f32> = bits.iter().map(|&b| f16_to_f32(b)).collect();
        assert_eq!(&back[..3], &[1.0, -2.5, 65504.0]);
        assert_eq!(back[3], 0.0, "below the smallest subnormal rounds to zero");
        assert!((back[4] - 0.1).abs() < 0.1 / 1024.0, "{}", back[4]);
    }

    /// What attention means, in f64 over the widened halves.
    fn exact(q: &[f32], k: &[u16], v: &[u16], keys: usize) -> Vec<f64> {
        let d = q.len();
        let scores: Vec<f64> = (0..keys)
            .map(|j| {
                let dot: f64 = (0..d).map(|i| q[i] as f64 * f16_to_f32(k[j * d + i]) as f64).sum();
                dot / (d as f64).sqrt()
            })
            .collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let total: f64 = weights.iter().sum();
        (0..d)
            .map(|i| {
                (0..keys)
                    .map(|j| weights[j] / total * f16_to_f32(v[j * d + i]) as f64)
                    .sum()
            })
            .collect()
    }

    fn close(got: &[f32], want: &[f64], path: &str, head_dim: usize, keys: usize) {
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g as f64 - w).abs() < 1e-4,
                "{path}, head_dim {head_dim}, {keys} keys, [{i}]: {g} vs {w}"
            );
        }
    }

    #[test]
    fn both_paths_compute_attention_on_random_rows() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        // Head sizes with and without a vector tail; one key and many.
        for (head_dim, keys) in [(64, 1), (64, 300), (128, 37), (80, 5), (7, 3)] {
            let q: Vec<f32> = (0..head_dim).map(|_| rng.random_range(-2.0..2.0)).collect();
            let k = halves(
                &(0..head_dim * keys)
                    .map(|_| rng.random_range(-2.0..2.0))
                    .collect::<Vec<f32>>(),
            );
            let v = halves(
                &(0..head_dim * keys)
                    .map(|_| rng.random_range(-2.0..2.0))
                    .collect::<Vec<f32>>(),
            );
            let want = exact(&q, &k, &v, keys);
            let (mut out, mut scores) = (vec![9f32; head_dim], Vec::new());
            attend_row_scalar(&q, &k, &v, keys, &mut out, &mut scores);
            close(&out, &want, "scalar", head_dim, keys);
            #[cfg(target_arch = "x86_64")]
            if Kernel::Avx2.is_available() {
                out.fill(9.0);
                // Safety: checked just above.
                unsafe { x86::attend_row(&q, &k, &v, keys, &mut out, &mut scores) };
                close(&out, &want, "avx2", head_dim, keys);
            }
        }
    }
}
