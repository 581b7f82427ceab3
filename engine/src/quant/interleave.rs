//! Q4_K and Q6_K blocks with their quants interleaved across sub-blocks, the
//! order the SIMD kernels read fastest ([`QuantFormat::Q4_K_I`], [`QuantFormat::Q6_K_I`]).
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
//! Weights are interleaved at load (a GGUF file's blocks, or our quantizer's) when a
//! SIMD kernel will read them; the scalar reference reads either order.

use std::mem::offset_of;

use rayon::prelude::*;

use super::Kernel;
use super::formats::{BlockQ4K, BlockQ6K, QuantFormat};

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

/// The interleaved format of `format`'s blocks, if it has one.
pub fn interleaved(format: QuantFormat) -> Option<QuantFormat> {
    match format {
        QuantFormat::Q4_K => Some(QuantFormat::Q4_K_I),
        QuantFormat::Q6_K => Some(QuantFormat::Q6_K_I),
        _ => None,
    }
}

/// The format to keep `rows` of `format` in for the kernel this process runs
/// ([`Kernel::selected`]): interleaved, in place, when a SIMD kernel will read
/// them and the format has an interleaved form; else `format`, untouched.
pub fn for_selected_kernel(format: QuantFormat, rows: &mut [u8]) -> QuantFormat {
    match interleaved(format) {
        Some(_) if Kernel::selected() != Kernel::Scalar => interleave_rows(format, rows),
        _ => format,
    }
}

/// Puts the quants of every block of `rows` (rows of `format`, which must have an
/// interleaved form) in the interleaved order; returns that format.
///
/// # Panics
/// If `format` has no interleaved form or `rows` is not whole blocks.
pub fn interleave_rows(format: QuantFormat, rows: &mut [u8]) -> QuantFormat {
    let target = interleaved(format).unwrap_or_else(|| panic!("{format} has no interleaved form"));
    reorder_blocks(format, rows, |natural, out| {
        for (v, q) in out.iter_mut().enumerate() {
            *q = natural[NATURAL[v] as usize];
        }
    });
    target
}

/// A block of `format` (Q4_K_I or Q6_K_I) back in ggml's order, in `out`.
///
/// # Panics
/// If `format` is not interleaved or the lengths are not one block.
pub fn natural_block(format: QuantFormat, block: &[u8], out: &mut [u8]) {
    let natural = format.natural();
    assert!(natural != format, "{format} is not an interleaved format");
    out.copy_from_slice(block);
    reorder_blocks(natural, out, |interleaved, out| {
        for (v, &q) in interleaved.iter().enumerate() {
            out[NATURAL[v] as usize] = q;
        }
    });
}

/// Rewrites each block's quants of `rows` (Q4_K or Q6_K encoding) by `reorder`,
/// which maps the 256 quants as read to the 256 to write.
fn reorder_blocks(format: QuantFormat, rows: &mut [u8], reorder: impl Fn(&[u8; BLOCK], &mut [u8; BLOCK]) + Sync) {
    let block_bytes = format.block_bytes();
    assert!(
        rows.len().is_multiple_of(block_bytes),
        "{} bytes are no whole number of {format} blocks",
        rows.len()
    );
    // Blocks are independent; a model's weights are a few gigabytes of them.
    rows.par_chunks_mut(block_bytes * BLOCKS_PER_TASK).for_each(|blocks| {
        let mut read = [0u8; BLOCK];
        let mut write = [0u8; BLOCK];
        for block in blocks.chunks_exact_mut(block_bytes) {
            reorder_block(format, block, &reorder, &mut read, &mut write);
        }
    });
}

/// Blocks reordered per parallel task.
const BLOCKS_PER_TASK: usize = 1024;

fn reorder_block(
    format: QuantFormat,
    block: &mut [u8],
    reorder: &impl Fn(&[u8; BLOCK], &mut [u8; BLOCK]),
    read: &mut [u8; BLOCK],
    write: &mut [u8; BLOCK],
) {
    match format {
        QuantFormat::Q4_K => {
            let qs = &mut block[offset_of!(BlockQ4K, qs)..][..BLOCK / 2];
            q4_quants(qs, read);
            reorder(read, write);
            q4_encode(write, qs);
        }
        QuantFormat::Q6_K => {
            let quants = &mut block[..offset_of!(BlockQ6K, scales)];
            q6_quants(quants, read);
            reorder(read, write);
            q6_encode(write, quants);
        }
        other => panic!("{other} has no interleaved form"),
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
        for format in [QuantFormat::Q4_K, QuantFormat::Q6_K] {
            let (rows, k) = (3, 512);
            let natural = random::weights(&mut rng, format, rows, k, Scales::Random);
            let mut data = natural.clone();
            let target = interleave_rows(format, &mut data);
            assert_eq!(target.natural(), format);
            assert_ne!(data, natural, "{format}: the quants moved");
            let (mut want, mut got) = (vec![0f32; rows * k], vec![0f32; rows * k]);
            dequantize_row(format, &natural, &mut want);
            dequantize_row(target, &data, &mut got);
            assert_eq!(got, want, "{format}");
            let mut back = vec![0u8; data.len()];
            for (block, out) in data
                .chunks_exact(format.block_bytes())
                .zip(back.chunks_exact_mut(format.block_bytes()))
            {
                natural_block(target, block, out);
            }
            assert_eq!(back, natural, "{format}");
        }
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
