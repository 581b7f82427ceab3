//! Q4_K, Q6_K and MLX 6-bit blocks with their quants interleaved across
//! sub-blocks, the order the SIMD kernels read fastest ([`QuantFormat::Q4_K_I`],
//! [`QuantFormat::Q6_K_I`], [`QuantFormat::A6_64_I`]).
//!
//! A K-quant super-block of 256 elements has one scale per sub-block: 16 elements
//! for Q6_K, 32 for Q4_K. In ggml's order a 32-byte register of quants holds one or
//! two whole sub-blocks, so every register's products must be scaled on their own:
//! one `vpmaddubsw` (u8×i8 → i16 pair sums) and one `vpmaddwd` (× scale → i32) per
//! 32 elements, and `vpmaddwd` competes with `vpmaddubsw` for the multipliers.
//!
//! Interleaved, register `j` (of 8) holds elements `2j, 2j + 1` of each of the 16
//! sub-blocks of 16: its byte `t` is element `16·(t/2) + 2j + t%2`. Every register
//! then has the same sub-block in the same i16 lane after `vpmaddubsw` (lane `l` is
//! sub-block `l`; for Q4_K's sub-blocks of 32, lanes `2g` and `2g + 1` are sub-block
//! `g`), so the i16 products of several registers can be added before one
//! multiply by the scales: all 8 for Q4_K (|q·a| pair sums ≤ 2·15·127, eight of them
//! ≤ 30 480 < 2¹⁵), pairs for Q6_K (≤ 2·63·127 each, two ≤ 32 004). That is 9
//! multiplies per 256 elements instead of 16 for Q4_K, 12 for Q6_K, on the same
//! bytes: the blocks keep their size, scales and fields; only the order of the
//! quants within each block changes, and the activation row is put in the same
//! order once per matmul ([`interleave_activations`]). The sums of 16 consecutive
//! elements that the mins and Q6_K's offset use stay in ggml's order.
//!
//! MLX's 6-bit groups of 64 ([`QuantFormat::A6_64`]) take the same order four
//! groups at a time ([`QuantFormat::A6_64_I`]): their activation blocks of 32 are
//! sub-blocks `2k, 2k + 1`, so after the pairs of registers are summed in i16 and
//! widened, i32 lane `k` is activation block `k`'s whole dot, ready for its scale,
//! where before each register's dot was reduced on its own.
//!
//! Weights are interleaved at load (a GGUF file's blocks, our quantizer's, an MLX
//! checkpoint's repacked groups) when a SIMD kernel will read them; the scalar
//! reference reads either order.

use std::mem::offset_of;

use rayon::prelude::*;

use super::Kernel;
use super::formats::{BlockA6_64, BlockA6I, BlockQ4K, BlockQ6K, GgmlBlock, QuantFormat};

/// Elements per super-block.
pub const BLOCK: usize = 256;

/// `NATURAL[v]`: the element (in ggml's order) at position `v` of an interleaved
/// block.
pub const NATURAL: [u8; BLOCK] = {
    let mut order = [0u8; BLOCK];
    let mut v = 0;
    while v < BLOCK {
        let (j, t) = (v / 32, v % 32);
        order[v] = (16 * (t / 2) + 2 * j + t % 2) as u8;
        v += 1;
    }
    order
};

/// The interleaved format of `format`'s blocks for rows of `cols` elements, if it
/// has one (A6_64's takes four groups a block: rows of whole 256s).
pub fn interleaved(format: QuantFormat, cols: usize) -> Option<QuantFormat> {
    match format {
        QuantFormat::Q4_K => Some(QuantFormat::Q4_K_I),
        QuantFormat::Q6_K => Some(QuantFormat::Q6_K_I),
        QuantFormat::A6_64 if cols.is_multiple_of(BLOCK) => Some(QuantFormat::A6_64_I),
        _ => None,
    }
}

/// The format to keep `rows` (of `cols` elements) of `format` in for the kernel
/// this process runs ([`Kernel::selected`]): interleaved, in place, when a SIMD
/// kernel will read them and the format has an interleaved form; else `format`,
/// untouched.
pub fn for_selected_kernel(format: QuantFormat, cols: usize, rows: &mut [u8]) -> QuantFormat {
    match interleaved(format, cols) {
        Some(_) if Kernel::selected() != Kernel::Scalar => interleave_rows(format, cols, rows),
        _ => format,
    }
}

/// Puts the quants of every block of `rows` (rows of `cols` elements of `format`,
/// which must have an interleaved form) in the interleaved order; returns that
/// format. A row keeps its size.
///
/// # Panics
/// If `format` has no interleaved form for `cols` or `rows` is not whole rows.
pub fn interleave_rows(format: QuantFormat, cols: usize, rows: &mut [u8]) -> QuantFormat {
    let target =
        interleaved(format, cols).unwrap_or_else(|| panic!("{format} has no interleaved form for rows of {cols}"));
    let block_bytes = target.block_bytes();
    assert!(
        format.row_bytes(cols).is_some_and(|row| rows.len().is_multiple_of(row)),
        "{} bytes are no whole number of rows of {cols} {format}",
        rows.len()
    );
    // Blocks are independent; a model's weights are a few gigabytes of them.
    rows.par_chunks_mut(block_bytes * BLOCKS_PER_TASK).for_each(|blocks| {
        let mut quants = [0u8; BLOCK];
        for block in blocks.chunks_exact_mut(block_bytes) {
            interleave_block(format, block, &mut quants);
        }
    });
    target
}

/// Blocks reordered per parallel task.
const BLOCKS_PER_TASK: usize = 1024;

/// 256 elements of `format` (one Q4_K or Q6_K block, four A6_64 blocks), in
/// place, into one block of its interleaved format.
fn interleave_block(format: QuantFormat, block: &mut [u8], quants: &mut [u8; BLOCK]) {
    let natural = natural_quants(format, block);
    for (v, q) in quants.iter_mut().enumerate() {
        *q = natural[NATURAL[v] as usize];
    }
    match format {
        QuantFormat::Q4_K => q4_encode(quants, &mut block[offset_of!(BlockQ4K, qs)..][..BLOCK / 2]),
        QuantFormat::Q6_K => q6_encode(quants, &mut block[..offset_of!(BlockQ6K, scales)]),
        QuantFormat::A6_64 => {
            let mut out = BlockA6I {
                ql: [0; 128],
                qh: [0; 64],
                s: [0; 8],
                b: [0; 8],
            };
            for (g, group) in block.chunks_exact(BlockA6_64::BYTES).enumerate() {
                let group = BlockA6_64::read(group);
                out.s[2 * g..2 * g + 2].copy_from_slice(&group.s);
                out.b[2 * g..2 * g + 2].copy_from_slice(&group.b);
            }
            let mut bytes = [0u8; 192];
            q6_encode(quants, &mut bytes);
            out.ql.copy_from_slice(&bytes[..128]);
            out.qh.copy_from_slice(&bytes[128..]);
            out.write(block);
        }
        other => panic!("{other} has no interleaved form"),
    }
}

/// The 256 quants of `block` (one block of a natural format with an interleaved
/// form, as [`interleave_block`] takes it) in their order.
fn natural_quants(format: QuantFormat, block: &[u8]) -> [u8; BLOCK] {
    let mut quants = [0u8; BLOCK];
    match format {
        QuantFormat::Q4_K => q4_quants(&block[offset_of!(BlockQ4K, qs)..][..BLOCK / 2], &mut quants),
        QuantFormat::Q6_K => q6_quants(&block[..offset_of!(BlockQ6K, scales)], &mut quants),
        QuantFormat::A6_64 => {
            for (g, group) in block.chunks_exact(BlockA6_64::BYTES).enumerate() {
                let group = BlockA6_64::read(group);
                for e in 0..BlockA6_64::ELEMS {
                    quants[BlockA6_64::ELEMS * g + e] = group.quant(e);
                }
            }
        }
        other => panic!("{other} has no interleaved form"),
    }
    quants
}

/// A block of an interleaved format back in its natural format's encoding, in
/// `out` (the same number of bytes: one Q4_K or Q6_K block, four A6_64 blocks).
///
/// # Panics
/// If `format` is not interleaved or the lengths are not one block.
pub fn natural_block(format: QuantFormat, block: &[u8], out: &mut [u8]) {
    assert!(format.natural() != format, "{format} is not an interleaved format");
    assert_eq!(block.len(), format.block_bytes(), "one {format} block");
    let mut interleaved = [0u8; BLOCK];
    match format {
        QuantFormat::Q4_K_I => q4_quants(&block[offset_of!(BlockQ4K, qs)..][..BLOCK / 2], &mut interleaved),
        _ => q6_quants(&block[..192], &mut interleaved),
    }
    let mut quants = [0u8; BLOCK];
    for (v, &q) in interleaved.iter().enumerate() {
        quants[NATURAL[v] as usize] = q;
    }
    out.copy_from_slice(block);
    match format {
        QuantFormat::Q4_K_I => q4_encode(&quants, &mut out[offset_of!(BlockQ4K, qs)..][..BLOCK / 2]),
        QuantFormat::Q6_K_I => q6_encode(&quants, &mut out[..offset_of!(BlockQ6K, scales)]),
        _ => {
            let a6 = BlockA6I::read(block);
            for (g, group) in out.chunks_exact_mut(BlockA6_64::BYTES).enumerate() {
                let q: &[u8; 64] = quants[64 * g..64 * g + 64].try_into().expect("64 quants");
                let s = [a6.s[2 * g], a6.s[2 * g + 1]];
                let b = [a6.b[2 * g], a6.b[2 * g + 1]];
                BlockA6_64::pack(s, b, q).write(group);
            }
        }
    }
}

/// Q4_K's 128 bytes of nibbles as 256 quants: chunk `c`'s byte `l` holds element
/// `64c + l` low and `64c + 32 + l` high.
fn q4_quants(qs: &[u8], out: &mut [u8; BLOCK]) {
    for (c, chunk) in qs.chunks_exact(32).enumerate() {
        for (l, &byte) in chunk.iter().enumerate() {
            out[64 * c + l] = byte & 0x0F;
            out[64 * c + 32 + l] = byte >> 4;
        }
    }
}

fn q4_encode(quants: &[u8; BLOCK], qs: &mut [u8]) {
    for (c, chunk) in qs.chunks_exact_mut(32).enumerate() {
        for (l, byte) in chunk.iter_mut().enumerate() {
            *byte = quants[64 * c + l] | (quants[64 * c + 32 + l] << 4);
        }
    }
}

/// Q6_K's `ql` (128 bytes) and `qh` (64) as 256 quants of 6 bits: in half `h`,
/// `ql[64h + l]` holds elements `128h + l` (low nibble) and `128h + 64 + l` (high),
/// `ql[64h + 32 + l]` elements `+ 32` and `+ 96`; `qh[32h + l]` their top two bits,
/// two bits each in that order (`+0`, `+32`, `+64`, `+96`).
fn q6_quants(bytes: &[u8], out: &mut [u8; BLOCK]) {
    let (ql, qh) = bytes.split_at(128);
    for h in 0..2 {
        for l in 0..32 {
            let high = qh[32 * h + l];
            let (a, b) = (ql[64 * h + l], ql[64 * h + 32 + l]);
            out[128 * h + l] = (a & 0x0F) | ((high & 3) << 4);
            out[128 * h + 32 + l] = (b & 0x0F) | (((high >> 2) & 3) << 4);
            out[128 * h + 64 + l] = (a >> 4) | (((high >> 4) & 3) << 4);
            out[128 * h + 96 + l] = (b >> 4) | (((high >> 6) & 3) << 4);
        }
    }
}

fn q6_encode(quants: &[u8; BLOCK], bytes: &mut [u8]) {
    let (ql, qh) = bytes.split_at_mut(128);
    for h in 0..2 {
        for l in 0..32 {
            let q = |part: usize| quants[128 * h + 32 * part + l];
            ql[64 * h + l] = (q(0) & 0x0F) | ((q(2) & 0x0F) << 4);
            ql[64 * h + 32 + l] = (q(1) & 0x0F) | ((q(3) & 0x0F) << 4);
            qh[32 * h + l] = (q(0) >> 4) | ((q(1) >> 4) << 2) | ((q(2) >> 4) << 4) | ((q(3) >> 4) << 6);
        }
    }
}

/// Puts each block of 256 activation quants in the interleaved order, in place.
///
/// In 16-bit units (pairs of quants) this is a transpose: the pair at `8g + j`
/// (sub-block `g`, pair `j`) moves to `16j + g`.
pub fn interleave_activations(qs: &mut [i8]) {
    assert!(
        qs.len().is_multiple_of(BLOCK),
        "activations are whole blocks of {BLOCK}"
    );
    for block in qs.chunks_exact_mut(BLOCK) {
        let natural: [i8; BLOCK] = block.try_into().expect("chunks_exact");
        for (v, q) in block.iter_mut().enumerate() {
            *q = natural[NATURAL[v] as usize];
        }
    }
}

/// The activation quants `qs` (interleaved) in ggml's order.
pub fn natural_activations(qs: &[i8]) -> Vec<i8> {
    assert!(
        qs.len().is_multiple_of(BLOCK),
        "activations are whole blocks of {BLOCK}"
    );
    let mut out = vec![0i8; qs.len()];
    for (block, out) in qs.chunks_exact(BLOCK).zip(out.chunks_exact_mut(BLOCK)) {
        for (v, &q) in block.iter().enumerate() {
            out[NATURAL[v] as usize] = q;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::dequant::dequantize_row;
    use crate::quant::random::{self, Scales};

    #[test]
    fn the_order_is_a_permutation_that_keeps_sub_blocks_in_lanes() {
        let mut seen = [false; BLOCK];
        for (v, &e) in NATURAL.iter().enumerate() {
            assert!(!seen[e as usize], "element {e} twice");
            seen[e as usize] = true;
            // Byte t of every register is in sub-block t/2 (of 16), hence in
            // sub-block t/4 of 32.
            assert_eq!(e as usize / 16, (v % 32) / 2);
            assert_eq!(e as usize / 32, (v % 32) / 4);
        }
    }

    #[test]
    fn interleaved_blocks_dequantize_to_the_same_values_and_convert_back() {
        let mut rng = random::rng(5);
        for format in [QuantFormat::Q4_K, QuantFormat::Q6_K, QuantFormat::A6_64] {
            let (rows, k) = (3, 512);
            let natural = random::weights(&mut rng, format, rows, k, Scales::Random);
            let mut data = natural.clone();
            let target = interleave_rows(format, k, &mut data);
            assert_eq!(target.natural(), format);
            assert_ne!(data, natural, "{format}: the quants moved");
            let (mut want, mut got) = (vec![0f32; rows * k], vec![0f32; rows * k]);
            dequantize_row(format, &natural, &mut want);
            dequantize_row(target, &data, &mut got);
            assert_eq!(got, want, "{format}");
            let mut back = vec![0u8; data.len()];
            for (block, out) in data
                .chunks_exact(target.block_bytes())
                .zip(back.chunks_exact_mut(target.block_bytes()))
            {
                natural_block(target, block, out);
            }
            assert_eq!(back, natural, "{format}");
        }
    }

    #[test]
    fn interleaved_matrices_multiply_as_the_natural_ones() {
        // The whole path: activations quantized and interleaved for the format,
        // the dispatch, the kernels (SIMD where the CPU has them, the reference
        // otherwise), on 8 + 4 + 2 + 1 activation rows.
        let mut rng = random::rng(9);
        for format in [QuantFormat::Q4_K, QuantFormat::Q6_K, QuantFormat::A6_64] {
            let (n, k, m) = (37, 768, 15);
            let natural = random::weights(&mut rng, format, n, k, Scales::Random);
            let mut data = natural.clone();
            let target = interleave_rows(format, k, &mut data);
            let x = random::activations(&mut rng, m * k);
            let (mut want, mut got) = (vec![0f32; m * n], vec![0f32; m * n]);
            crate::quant::matmul(
                &x,
                m,
                &crate::quant::QuantMatrix::new(format, n, k, &natural).unwrap(),
                &mut want,
            );
            crate::quant::matmul(
                &x,
                m,
                &crate::quant::QuantMatrix::new(target, n, k, &data).unwrap(),
                &mut got,
            );
            for (o, (got, want)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                    "{target} output {o}: {got}, {format} gives {want}"
                );
            }
        }
    }

    #[test]
    fn a6_rows_interleave_only_in_whole_256s() {
        assert_eq!(interleaved(QuantFormat::A6_64, 512), Some(QuantFormat::A6_64_I));
        assert_eq!(interleaved(QuantFormat::A6_64, 448), None);
        assert_eq!(interleaved(QuantFormat::Q8_0, 512), None);
    }

    #[test]
    fn activations_round_trip() {
        let qs: Vec<i8> = (0..2 * BLOCK).map(|i| (i % 251) as i8).collect();
        let mut interleaved = qs.clone();
        interleave_activations(&mut interleaved);
        assert_eq!(interleaved[1], qs[1]);
        assert_eq!(interleaved[2], qs[16], "byte 2 of register 0 is sub-block 1's first");
        assert_eq!(interleaved[32], qs[2], "register 1 starts at element 2");
        assert_eq!(natural_activations(&interleaved), qs);
    }
}
