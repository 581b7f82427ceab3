//! Random but valid GGUF rows and activation rows, for the kernel tests.
//!
//! "Valid" means finite f16 scales of realistic size; the quant bytes are uniformly
//! random, which covers every nibble, every 6-bit scale and every sign.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::activation::{Q8_BLOCK, Q8K_BLOCK, Q8K_SUM_GROUP, Q8KRow, Q8Row};
use super::formats::QuantFormat;

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// How block scales (and float weights) are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scales {
    /// Realistic magnitudes, random signs.
    Random,
    /// Every scale, min and offset 1.0, and float weights small integers: every dot
    /// product is then an exact integer in f32, so kernels must agree exactly.
    Unit,
}

fn f16_bytes(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_bits().to_le_bytes()
}

fn scale(rng: &mut StdRng, scales: Scales, magnitude: f32) -> [u8; 2] {
    match scales {
        Scales::Unit => f16_bytes(1.0),
        Scales::Random => {
            let v = rng.random_range(0.02..1.0f32) * magnitude;
            f16_bytes(if rng.random_bool(0.2) { -v } else { v })
        }
    }
}

fn random_bytes(rng: &mut StdRng, n: usize) -> Vec<u8> {
    (0..n).map(|_| rng.random::<u8>()).collect()
}

/// `rows` random rows of `k` elements of `format`, contiguous.
pub fn weights(rng: &mut StdRng, format: QuantFormat, rows: usize, k: usize, scales: Scales) -> Vec<u8> {
    let blocks = rows * k / format.block_elems();
    assert_eq!(blocks * format.block_elems(), rows * k);
    let mut out = Vec::with_capacity(rows * format.row_bytes(k).unwrap());
    for _ in 0..blocks {
        let block: Vec<u8> = match format {
            QuantFormat::F32 | QuantFormat::F16 | QuantFormat::BF16 => {
                let v = match scales {
                    Scales::Unit => rng.random_range(-8..=8) as f32,
                    Scales::Random => rng.random_range(-1.0..1.0f32),
                };
                match format {
                    QuantFormat::F32 => v.to_le_bytes().to_vec(),
                    QuantFormat::F16 => f16_bytes(v).to_vec(),
                    _ => half::bf16::from_f32(v).to_bits().to_le_bytes().to_vec(),
                }
            }
            QuantFormat::Q4_0 => [&scale(rng, scales, 0.05)[..], &random_bytes(rng, 16)].concat(),
            QuantFormat::Q4_1 => [
                &scale(rng, scales, 0.05)[..],
                &scale(rng, scales, 0.5),
                &random_bytes(rng, 16),
            ]
            .concat(),
            QuantFormat::Q8_0 => [&scale(rng, scales, 0.01)[..], &random_bytes(rng, 32)].concat(),
            QuantFormat::Q4_K | QuantFormat::Q4_K_I => [
                &scale(rng, scales, 0.005)[..],
                &scale(rng, scales, 0.01),
                &random_bytes(rng, 12 + 128),
            ]
            .concat(),
            QuantFormat::Q5_K => [
                &scale(rng, scales, 0.003)[..],
                &scale(rng, scales, 0.01),
                &random_bytes(rng, 12 + 32 + 128),
            ]
            .concat(),
            QuantFormat::Q6_K | QuantFormat::Q6_K_I => {
                [&random_bytes(rng, 128 + 64 + 16)[..], &scale(rng, scales, 0.002)].concat()
            }
            QuantFormat::A6_64 => [
                &scale(rng, scales, 0.003)[..],
                &scale(rng, scales, 0.1),
                &random_bytes(rng, 48),
            ]
            .concat(),
            QuantFormat::A6_64_I => [
                &random_bytes(rng, 192)[..],
                &[
                    scale(rng, scales, 0.003),
                    scale(rng, scales, 0.003),
                    scale(rng, scales, 0.003),
                    scale(rng, scales, 0.003),
                ]
                .concat(),
                &[
                    scale(rng, scales, 0.1),
                    scale(rng, scales, 0.1),
                    scale(rng, scales, 0.1),
                    scale(rng, scales, 0.1),
                ]
                .concat(),
            ]
            .concat(),
            QuantFormat::A8_64 => [
                &scale(rng, scales, 0.0008)[..],
                &scale(rng, scales, 0.1),
                &random_bytes(rng, 64),
            ]
            .concat(),
        };
        debug_assert_eq!(block.len(), format.block_bytes());
        out.extend_from_slice(&block);
    }
    out
}

/// A random activation row: mostly small values with a few outliers, as hidden
/// states have.
pub fn activations(rng: &mut StdRng, len: usize) -> Vec<f32> {
    (0..len)
        .map(|_| {
            let v = rng.random_range(-1.0..1.0f32);
            if rng.random_bool(0.02) { v * 20.0 } else { v }
        })
        .collect()
}

/// A Q8 row with unit scales and quants in −3..=3: dot products with unit-scale
/// weights are exact integers.
pub fn unit_q8_row(rng: &mut StdRng, len: usize) -> Q8Row {
    let qs: Vec<i8> = (0..len).map(|_| rng.random_range(-3..=3)).collect();
    let sum: Vec<i32> = qs
        .chunks_exact(Q8_BLOCK)
        .map(|b| b.iter().map(|&q| q as i32).sum())
        .collect();
    Q8Row::from_parts(qs, vec![1.0; sum.len()], sum.iter().map(|&s| s as f32).collect(), sum)
}

/// As [`unit_q8_row`] in Q8_K blocks.
pub fn unit_q8k_row(rng: &mut StdRng, len: usize) -> Q8KRow {
    let qs: Vec<i8> = (0..len).map(|_| rng.random_range(-3..=3)).collect();
    let bsums = qs
        .chunks_exact(Q8K_SUM_GROUP)
        .map(|g| g.iter().map(|&q| q as i16).sum())
        .collect();
    Q8KRow {
        d: vec![1.0; len / Q8K_BLOCK],
        bsums,
        qs,
        interleaved: false,
    }
}
