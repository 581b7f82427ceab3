//! Scalar dequantization: GGUF-encoded rows back to f32, with ggml's exact formulas
//! (`dequantize_row_*` in ggml-quants.c), including its order of multiplications so
//! results agree bit for bit.
//!
//! This is the reference for what each format *means*: the tests of the integer
//! kernels compare against a plain f32 dot product over these values. It is also the
//! embedding lookup (one row per token), so it needs to be correct, not fast.

use super::formats::{
    BlockA6_64, BlockA8_64, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8_0, GgmlBlock, QuantFormat,
    bf16_to_f32, blocks, f16_to_f32, k_scales_mins,
};

/// Decodes one row of `format` (`row.len() == format.row_bytes(out.len())`) into `out`.
///
/// # Panics
/// If the lengths disagree; [`super::QuantMatrix`] checks them before calling.
pub fn dequantize_row(format: QuantFormat, row: &[u8], out: &mut [f32]) {
    assert_eq!(
        format.row_bytes(out.len()),
        Some(row.len()),
        "a {format} row of {} elements cannot be {} bytes",
        out.len(),
        row.len()
    );
    match format {
        QuantFormat::F32 => {
            for (o, b) in out.iter_mut().zip(row.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        QuantFormat::F16 => {
            for (o, b) in out.iter_mut().zip(row.chunks_exact(2)) {
                *o = f16_to_f32([b[0], b[1]]);
            }
        }
        QuantFormat::BF16 => {
            for (o, b) in out.iter_mut().zip(row.chunks_exact(2)) {
                *o = bf16_to_f32([b[0], b[1]]);
            }
        }
        QuantFormat::Q4_0 => each_block(row, out, dequantize_q4_0),
        QuantFormat::Q4_1 => each_block(row, out, dequantize_q4_1),
        QuantFormat::Q8_0 => each_block(row, out, dequantize_q8_0),
        QuantFormat::Q4_K => each_block(row, out, dequantize_q4_k),
        QuantFormat::Q5_K => each_block(row, out, dequantize_q5_k),
        QuantFormat::Q6_K => each_block(row, out, dequantize_q6_k),
        QuantFormat::A6_64 => each_block(row, out, dequantize_a6),
        QuantFormat::Q4_K_I | QuantFormat::Q6_K_I | QuantFormat::A6_64_I => {
            let mut natural = vec![0u8; format.block_bytes()];
            for (block, out) in row
                .chunks_exact(format.block_bytes())
                .zip(out.chunks_exact_mut(format.block_elems()))
            {
                super::interleave::natural_block(format, block, &mut natural);
                dequantize_row(format.natural(), &natural, out);
            }
        }
        QuantFormat::A8_64 => each_block(row, out, dequantize_a8),
    }
}

fn each_block<B: GgmlBlock>(row: &[u8], out: &mut [f32], decode: fn(&B, &mut [f32])) {
    for (block, out) in blocks::<B>(row).zip(out.chunks_exact_mut(B::ELEMS)) {
        decode(&block, out);
    }
}

fn dequantize_q4_0(block: &BlockQ4_0, out: &mut [f32]) {
    let d = f16_to_f32(block.d);
    for (j, &byte) in block.qs.iter().enumerate() {
        out[j] = ((byte & 0x0F) as i32 - 8) as f32 * d;
        out[j + 16] = ((byte >> 4) as i32 - 8) as f32 * d;
    }
}

fn dequantize_q4_1(block: &BlockQ4_1, out: &mut [f32]) {
    let d = f16_to_f32(block.d);
    let m = f16_to_f32(block.m);
    for (j, &byte) in block.qs.iter().enumerate() {
        out[j] = (byte & 0x0F) as f32 * d + m;
        out[j + 16] = (byte >> 4) as f32 * d + m;
    }
}

fn dequantize_q8_0(block: &BlockQ8_0, out: &mut [f32]) {
    let d = f16_to_f32(block.d);
    for (o, &q) in out.iter_mut().zip(&block.qs) {
        *o = q as f32 * d;
    }
}

fn dequantize_q4_k(block: &BlockQ4K, out: &mut [f32]) {
    let d = f16_to_f32(block.d);
    let dmin = f16_to_f32(block.dmin);
    let (sc, mins) = k_scales_mins(&block.scales);
    for chunk in 0..4 {
        let qs = &block.qs[32 * chunk..32 * chunk + 32];
        let (d_lo, m_lo) = (d * sc[2 * chunk] as f32, dmin * mins[2 * chunk] as f32);
        let (d_hi, m_hi) = (d * sc[2 * chunk + 1] as f32, dmin * mins[2 * chunk + 1] as f32);
        for (l, &byte) in qs.iter().enumerate() {
            out[64 * chunk + l] = d_lo * (byte & 0x0F) as f32 - m_lo;
            out[64 * chunk + 32 + l] = d_hi * (byte >> 4) as f32 - m_hi;
        }
    }
}

fn dequantize_q5_k(block: &BlockQ5K, out: &mut [f32]) {
    let d = f16_to_f32(block.d);
    let dmin = f16_to_f32(block.dmin);
    let (sc, mins) = k_scales_mins(&block.scales);
    for chunk in 0..4 {
        let qs = &block.qs[32 * chunk..32 * chunk + 32];
        let (d_lo, m_lo) = (d * sc[2 * chunk] as f32, dmin * mins[2 * chunk] as f32);
        let (d_hi, m_hi) = (d * sc[2 * chunk + 1] as f32, dmin * mins[2 * chunk + 1] as f32);
        for (l, &byte) in qs.iter().enumerate() {
            let high_lo = (block.qh[l] >> (2 * chunk)) & 1;
            let high_hi = (block.qh[l] >> (2 * chunk + 1)) & 1;
            out[64 * chunk + l] = d_lo * ((byte & 0x0F) | (high_lo << 4)) as f32 - m_lo;
            out[64 * chunk + 32 + l] = d_hi * ((byte >> 4) | (high_hi << 4)) as f32 - m_hi;
        }
    }
}

/// The 6-bit quant of element `e` (0..256) of a Q6_K block, before the −32 offset.
#[inline(always)]
pub(crate) fn q6_k_quant(block: &BlockQ6K, e: usize) -> u8 {
    let (half, within) = (e / 128, e % 128);
    let (group, l) = (within / 32, within % 32);
    let ql = block.ql[64 * half + l + if group % 2 == 1 { 32 } else { 0 }];
    let low = if group < 2 { ql & 0x0F } else { ql >> 4 };
    let high = (block.qh[32 * half + l] >> (2 * group)) & 3;
    low | (high << 4)
}

fn dequantize_q6_k(block: &BlockQ6K, out: &mut [f32]) {
    let d = f16_to_f32(block.d);
    for (e, o) in out.iter_mut().enumerate() {
        let q = q6_k_quant(block, e) as i32 - 32;
        // ggml: d * sc[is] * q, evaluated left to right.
        *o = d * block.scales[e / 16] as f32 * q as f32;
    }
}

/// `s·q + b`, as MLX dequantizes (`w = scale · q + bias`).
fn dequantize_a6(block: &BlockA6_64, out: &mut [f32]) {
    let (s, b) = (f16_to_f32(block.s), f16_to_f32(block.b));
    for (e, o) in out.iter_mut().enumerate() {
        *o = s * block.quant(e) as f32 + b;
    }
}

fn dequantize_a8(block: &BlockA8_64, out: &mut [f32]) {
    let (s, b) = (f16_to_f32(block.s), f16_to_f32(block.b));
    for (o, &q) in out.iter_mut().zip(&block.qs) {
        *o = s * q as f32 + b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::formats::pack_k_scales;

    const ONE: [u8; 2] = [0x00, 0x3C]; // f16 1.0
    const HALF: [u8; 2] = [0x00, 0x38]; // f16 0.5
    const TWO: [u8; 2] = [0x00, 0x40]; // f16 2.0

    fn decode(format: QuantFormat, bytes: &[u8], k: usize) -> Vec<f32> {
        let mut out = vec![f32::NAN; k];
        dequantize_row(format, bytes, &mut out);
        out
    }

    #[test]
    fn float_rows_decode_little_endian() {
        let f32_bytes: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(decode(QuantFormat::F32, &f32_bytes, 2), [1.5, -2.0]);
        assert_eq!(
            decode(QuantFormat::F16, &[ONE, HALF, [0x00, 0xC0]].concat(), 3),
            [1.0, 0.5, -2.0]
        );
        // bf16 1.0 = 0x3F80, -3.0 = 0xC040.
        assert_eq!(decode(QuantFormat::BF16, &[0x80, 0x3F, 0x40, 0xC0], 2), [1.0, -3.0]);
    }

    #[test]
    fn q4_0_is_d_times_nibble_minus_8() {
        // Byte j = (high nibble 15 − j) << 4 | j: element j is j − 8, element 16 + j is 7 − j.
        let qs: Vec<u8> = (0..16u8).map(|j| ((15 - j) << 4) | j).collect();
        let out = decode(QuantFormat::Q4_0, &[&HALF[..], &qs].concat(), 32);
        for j in 0..16 {
            assert_eq!(out[j], (j as f32 - 8.0) * 0.5);
            assert_eq!(out[j + 16], (7.0 - j as f32) * 0.5);
        }
    }

    #[test]
    fn q4_1_is_d_times_nibble_plus_m() {
        let qs: Vec<u8> = (0..16u8).map(|j| ((15 - j) << 4) | j).collect();
        let out = decode(QuantFormat::Q4_1, &[&TWO[..], &HALF, &qs].concat(), 32);
        assert_eq!(out[0], 0.5);
        assert_eq!(out[3], 3.0 * 2.0 + 0.5);
        assert_eq!(out[16], 15.0 * 2.0 + 0.5);
        assert_eq!(out[31], 0.5);
    }

    #[test]
    fn q8_0_is_d_times_q() {
        let qs: Vec<u8> = (0..32).map(|j: i8| (j - 16) as u8).collect();
        let out = decode(QuantFormat::Q8_0, &[&HALF[..], &qs].concat(), 32);
        assert_eq!(out[0], -8.0);
        assert_eq!(out[16], 0.0);
        assert_eq!(out[31], 7.5);
    }

    #[test]
    fn q4_k_is_d_sc_q_minus_dmin_m() {
        let sc = [1, 2, 3, 4, 5, 6, 7, 63];
        let mins = [0, 1, 2, 3, 4, 5, 6, 40];
        // Every byte 0x93: low nibble 3, high nibble 9.
        let bytes = [&ONE[..], &HALF, &pack_k_scales(sc, mins), &[0x93; 128]].concat();
        let out = decode(QuantFormat::Q4_K, &bytes, 256);
        // Sub-block j covers elements 32j..32j + 32; even ones take low nibbles.
        for j in 0..8 {
            let q = if j % 2 == 0 { 3.0 } else { 9.0 };
            let expected = sc[j] as f32 * q - 0.5 * mins[j] as f32;
            assert!(out[32 * j..32 * j + 32].iter().all(|&v| v == expected), "sub-block {j}");
        }
    }

    #[test]
    fn q5_k_adds_the_fifth_bit_from_qh() {
        let sc = [1; 8];
        let mins = [0; 8];
        let mut qh = [0u8; 32];
        qh[0] = 0b0000_0100; // element 0 of sub-block 2 (chunk 1, low nibbles)
        qh[5] = 0b1000_0000; // element 5 of sub-block 7 (chunk 3, high nibbles)
        let bytes = [&TWO[..], &ONE, &pack_k_scales(sc, mins), &qh, &[0x21; 128]].concat();
        let out = decode(QuantFormat::Q5_K, &bytes, 256);
        assert_eq!(out[0], 2.0); // low nibble 1
        assert_eq!(out[32], 4.0); // high nibble 2
        assert_eq!(out[64], 2.0 * 17.0);
        assert_eq!(out[65], 2.0);
        assert_eq!(out[224 + 5], 2.0 * 18.0);
        assert_eq!(out[224 + 6], 4.0);
    }

    #[test]
    fn q6_k_is_d_sc_times_q_minus_32() {
        let mut ql = [0u8; 128];
        let mut qh = [0u8; 64];
        // Element 0: low 4 bits from ql[0] low nibble, high 2 bits qh[0] bits 0..2.
        ql[0] = 0x05 | (0x0A << 4); // element 0 low = 5, element 64 low = 10
        qh[0] = 0b11_00_00_10; // element 0 high = 2, element 32 high = 0, 64 high = 0, 96 high = 3
        ql[32] = 0x0F; // element 32 low = 15, element 96 low = 0
        ql[64 + 3] = 0x07; // second half: element 128 + 3 low = 7
        qh[32 + 3] = 0b01; // element 131 high = 1
        let scales: [u8; 16] = [2, 0, 3, 0, 4, 0, 5, 0, (-1i8) as u8, 0, 0, 0, 0, 0, 0, 0];
        let bytes = [&ql[..], &qh, &scales, &HALF].concat();
        let out = decode(QuantFormat::Q6_K, &bytes, 256);
        assert_eq!(out[0], 0.5 * 2.0 * ((5 | (2 << 4)) - 32) as f32);
        assert_eq!(out[32], 0.5 * 3.0 * (15 - 32) as f32);
        assert_eq!(out[64], 0.5 * 4.0 * (10 - 32) as f32);
        assert_eq!(out[96], 0.5 * 5.0 * ((3 << 4) - 32) as f32);
        assert_eq!(out[131], -0.5 * ((7 | (1 << 4)) - 32) as f32);
        assert_eq!(out[1], 0.5 * 2.0 * -32.0);
    }

    #[test]
    #[should_panic(expected = "cannot be")]
    fn a_short_row_is_refused() {
        decode(QuantFormat::Q4_1, &[0u8; 19], 32);
    }
}
