//! Reference dot products: one weight row (GGUF bytes) against one activation row,
//! in plain Rust, block by block.
//!
//! These define the numbers the SIMD kernels must reproduce: the integer part of
//! every block (or sub-block) exactly, and the float combination `Σ (d_w·d_x)·isum`
//! (plus the offset terms) up to summation order. They follow the arithmetic of
//! ggml's `ggml_vec_dot_*_generic` functions.

use crate::quant::QuantFormat;
use crate::quant::activation::{Q8KRow, Q8Row};
use crate::quant::dequant::q6_k_quant;
use crate::quant::formats::{
    BlockA6_64, BlockA8_64, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8_0, bf16_to_f32, blocks,
    f16_to_f32, k_scales_mins,
};
use crate::quant::interleave;

/// Σ w·x for an F32 weight row.
pub fn dot_f32(w: &[u8], x: &[f32]) -> f32 {
    assert_eq!(w.len(), 4 * x.len());
    w.chunks_exact(4)
        .zip(x)
        .map(|(b, &x)| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * x)
        .sum()
}

/// Σ w·x for an F16 weight row.
pub fn dot_f16(w: &[u8], x: &[f32]) -> f32 {
    assert_eq!(w.len(), 2 * x.len());
    w.chunks_exact(2)
        .zip(x)
        .map(|(b, &x)| f16_to_f32([b[0], b[1]]) * x)
        .sum()
}

/// Σ w·x for a BF16 weight row.
pub fn dot_bf16(w: &[u8], x: &[f32]) -> f32 {
    assert_eq!(w.len(), 2 * x.len());
    w.chunks_exact(2)
        .zip(x)
        .map(|(b, &x)| bf16_to_f32([b[0], b[1]]) * x)
        .sum()
}

fn check_q8(w: &[u8], block_bytes: usize, a: &Q8Row) {
    assert!(a.is_consistent());
    assert!(!a.interleaved, "interleaved activations against weights in order");
    assert_eq!(
        w.len(),
        a.blocks() * block_bytes,
        "weight row and activation row differ in length"
    );
}

/// Σ over 64-element groups of `s·Σ_h d_h·Σ q·a + b·Σ_h d_h·Σa`, over the
/// group's two Q8 blocks h: the affine formats' `s·q + b` against Q8 blocks,
/// with the exact block sums (not Q8_1's f16 `s`).
fn dot_affine<B: crate::quant::formats::GgmlBlock>(
    w: &[u8],
    a: &Q8Row,
    scale_bias: impl Fn(&B) -> (f32, f32),
    quant: impl Fn(&B, usize) -> u8,
) -> f32 {
    assert!(a.is_consistent());
    assert!(!a.interleaved, "interleaved activations against weights in order");
    assert_eq!(
        w.len() * 2,
        a.blocks() * B::BYTES,
        "weight row and activation row differ in length"
    );
    let mut sum = 0f32;
    for (g, block) in blocks::<B>(w).enumerate() {
        let (s, b) = scale_bias(&block);
        let (mut dot, mut offset) = (0f32, 0f32);
        for h in 0..2 {
            let at = 2 * g + h;
            let qa = &a.qs[32 * at..32 * at + 32];
            let isum: i32 = (0..32).map(|j| quant(&block, 32 * h + j) as i32 * qa[j] as i32).sum();
            dot += a.d[at] * isum as f32;
            offset += a.d[at] * a.sum[at] as f32;
        }
        sum += s * dot + b * offset;
    }
    sum
}

/// [`QuantFormat::A6_64`] against Q8 blocks.
pub fn dot_a6(w: &[u8], a: &Q8Row) -> f32 {
    dot_affine::<BlockA6_64>(w, a, |b| (f16_to_f32(b.s), f16_to_f32(b.b)), |b, e| b.quant(e))
}

/// [`QuantFormat::A8_64`] against Q8 blocks.
pub fn dot_a8(w: &[u8], a: &Q8Row) -> f32 {
    dot_affine::<BlockA8_64>(w, a, |b| (f16_to_f32(b.s), f16_to_f32(b.b)), |b, e| b.qs[e])
}

/// Σ over blocks of `(d_w·d_x) · Σ (q − 8)·a`.
pub fn dot_q4_0(w: &[u8], a: &Q8Row) -> f32 {
    check_q8(w, size_of::<BlockQ4_0>(), a);
    let mut sum = 0f32;
    for (b, block) in blocks::<BlockQ4_0>(w).enumerate() {
        let qa = &a.qs[32 * b..32 * b + 32];
        let mut isum = 0i32;
        for (j, &byte) in block.qs.iter().enumerate() {
            isum += ((byte & 0x0F) as i32 - 8) * qa[j] as i32;
            isum += ((byte >> 4) as i32 - 8) * qa[j + 16] as i32;
        }
        sum += (f16_to_f32(block.d) * a.d[b]) * isum as f32;
    }
    sum
}

/// Σ over blocks of `(d_w·d_x) · Σ q·a + m_w·s_x`, with Q8_1's `s_x = d_x·Σa`.
pub fn dot_q4_1(w: &[u8], a: &Q8Row) -> f32 {
    check_q8(w, size_of::<BlockQ4_1>(), a);
    let mut sum = 0f32;
    for (b, block) in blocks::<BlockQ4_1>(w).enumerate() {
        let qa = &a.qs[32 * b..32 * b + 32];
        let mut isum = 0i32;
        for (j, &byte) in block.qs.iter().enumerate() {
            isum += (byte & 0x0F) as i32 * qa[j] as i32;
            isum += (byte >> 4) as i32 * qa[j + 16] as i32;
        }
        sum += (f16_to_f32(block.d) * a.d[b]) * isum as f32 + f16_to_f32(block.m) * a.s[b];
    }
    sum
}

/// Σ over blocks of `(d_w·d_x) · Σ q·a`.
pub fn dot_q8_0(w: &[u8], a: &Q8Row) -> f32 {
    check_q8(w, size_of::<BlockQ8_0>(), a);
    let mut sum = 0f32;
    for (b, block) in blocks::<BlockQ8_0>(w).enumerate() {
        let isum: i32 = block
            .qs
            .iter()
            .zip(&a.qs[32 * b..32 * b + 32])
            .map(|(&q, &x)| q as i32 * x as i32)
            .sum();
        sum += (f16_to_f32(block.d) * a.d[b]) * isum as f32;
    }
    sum
}

fn check_q8k(w: &[u8], block_bytes: usize, a: &Q8KRow) {
    assert!(a.is_consistent());
    assert!(!a.interleaved, "interleaved activations against ggml-ordered weights");
    assert_eq!(
        w.len(),
        a.blocks() * block_bytes,
        "weight row and activation row differ in length"
    );
}

/// The integer parts of a Q4_K/Q5_K super-block: `Σ_j sc_j·Σ q·a` and `Σ_j m_j·Σ a`.
fn k_integer_parts(quants: &[u8; 256], scales: &[u8; 12], qa: &[i8], bsums: &[i16]) -> (i32, i32) {
    let (sc, mins) = k_scales_mins(scales);
    let mut isum = 0i32;
    let mut imin = 0i32;
    for j in 0..8 {
        let dot: i32 = (32 * j..32 * j + 32).map(|e| quants[e] as i32 * qa[e] as i32).sum();
        isum += sc[j] as i32 * dot;
        imin += mins[j] as i32 * (bsums[2 * j] as i32 + bsums[2 * j + 1] as i32);
    }
    (isum, imin)
}

/// Σ over super-blocks of `(d_w·d_x)·Σ_j sc_j·Σ q·a − (dmin_w·d_x)·Σ_j m_j·Σ a`.
pub fn dot_q4_k(w: &[u8], a: &Q8KRow) -> f32 {
    check_q8k(w, size_of::<BlockQ4K>(), a);
    let mut sum = 0f32;
    for (b, block) in blocks::<BlockQ4K>(w).enumerate() {
        let mut quants = [0u8; 256];
        for (c, chunk) in block.qs.chunks_exact(32).enumerate() {
            for (l, &byte) in chunk.iter().enumerate() {
                quants[64 * c + l] = byte & 0x0F;
                quants[64 * c + 32 + l] = byte >> 4;
            }
        }
        let (isum, imin) = k_integer_parts(
            &quants,
            &block.scales,
            &a.qs[256 * b..256 * b + 256],
            &a.bsums[16 * b..16 * b + 16],
        );
        sum += (f16_to_f32(block.d) * a.d[b]) * isum as f32 - (f16_to_f32(block.dmin) * a.d[b]) * imin as f32;
    }
    sum
}

/// As [`dot_q4_k`] with 5-bit quants.
pub fn dot_q5_k(w: &[u8], a: &Q8KRow) -> f32 {
    check_q8k(w, size_of::<BlockQ5K>(), a);
    let mut sum = 0f32;
    for (b, block) in blocks::<BlockQ5K>(w).enumerate() {
        let mut quants = [0u8; 256];
        for (c, chunk) in block.qs.chunks_exact(32).enumerate() {
            for (l, &byte) in chunk.iter().enumerate() {
                quants[64 * c + l] = (byte & 0x0F) | (((block.qh[l] >> (2 * c)) & 1) << 4);
                quants[64 * c + 32 + l] = (byte >> 4) | (((block.qh[l] >> (2 * c + 1)) & 1) << 4);
            }
        }
        let (isum, imin) = k_integer_parts(
            &quants,
            &block.scales,
            &a.qs[256 * b..256 * b + 256],
            &a.bsums[16 * b..16 * b + 16],
        );
        sum += (f16_to_f32(block.d) * a.d[b]) * isum as f32 - (f16_to_f32(block.dmin) * a.d[b]) * imin as f32;
    }
    sum
}

/// Σ over super-blocks of `(d_w·d_x)·Σ_j sc_j·Σ (q − 32)·a`, j over groups of 16.
pub fn dot_q6_k(w: &[u8], a: &Q8KRow) -> f32 {
    check_q8k(w, size_of::<BlockQ6K>(), a);
    let mut sum = 0f32;
    for (b, block) in blocks::<BlockQ6K>(w).enumerate() {
        let qa = &a.qs[256 * b..256 * b + 256];
        let mut isum = 0i32;
        for j in 0..16 {
            let dot: i32 = (16 * j..16 * j + 16)
                .map(|e| (q6_k_quant(&block, e) as i32 - 32) * qa[e] as i32)
                .sum();
            isum += block.scales[j] as i32 * dot;
        }
        sum += (f16_to_f32(block.d) * a.d[b]) * isum as f32;
    }
    sum
}

/// A row of Q4_K_I or Q6_K_I against an interleaved activation row: both put back
/// in ggml's order, then as [`dot_q4_k`] / [`dot_q6_k`].
pub fn dot_k_interleaved(format: QuantFormat, w: &[u8], a: &Q8KRow) -> f32 {
    assert!(a.interleaved, "{format} weights need interleaved activations");
    let block_bytes = format.block_bytes();
    let mut natural = vec![0u8; w.len()];
    for (block, out) in w.chunks_exact(block_bytes).zip(natural.chunks_exact_mut(block_bytes)) {
        interleave::natural_block(format, block, out);
    }
    let a = Q8KRow {
        qs: interleave::natural_activations(&a.qs),
        d: a.d.clone(),
        bsums: a.bsums.clone(),
        interleaved: false,
    };
    match format {
        QuantFormat::Q4_K_I => dot_q4_k(&natural, &a),
        QuantFormat::Q6_K_I => dot_q6_k(&natural, &a),
        other => panic!("{other} is not an interleaved K-quant"),
    }
}

/// A row of A6_64_I against an interleaved Q8 row: both put back in order, then
/// as [`dot_a6`].
pub fn dot_a6_interleaved(w: &[u8], a: &Q8Row) -> f32 {
    assert!(a.interleaved, "A6_64_I weights need interleaved activations");
    let block_bytes = QuantFormat::A6_64_I.block_bytes();
    let mut natural = vec![0u8; w.len()];
    for (block, out) in w.chunks_exact(block_bytes).zip(natural.chunks_exact_mut(block_bytes)) {
        interleave::natural_block(QuantFormat::A6_64_I, block, out);
    }
    let a = Q8Row::from_parts(
        interleave::natural_activations(&a.qs),
        a.d.clone(),
        a.s.clone(),
        a.sum.clone(),
    );
    dot_a6(&natural, &a)
}
