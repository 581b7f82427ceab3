//! The affine formats ([`BlockA6_64`], [`BlockA8_64`]: `s·q + b` per 64
//! elements, MLX's 6- and 8-bit groups) against Q8 activation rows.
//!
//! A group of 64 spans two Q8 blocks, and both formats lay a group's quants out
//! so that one 32-byte register holds elements 0..32 and another 32..64, in
//! order: each lines up with one activation block as loaded. Per group and row,
//! `s·(d₀·Σ₀ q·a + d₁·Σ₁ q·a) + b·(d₀·Σa₀ + d₁·Σa₁)`, the bias term from the
//! activation's exact block sums.
//!
//! Four groups (eight Q8 blocks) go per step: their eight integer dots are
//! reduced to one lane per block (six horizontal adds, two lane permutes, an
//! add), so the conversion to float and the scaling run once per eight blocks
//! rather than once per block, which had made them the bottleneck (as in
//! [`super::blocks32`]'s grouped body). The last `groups % 4` go one at a time.

use std::arch::x86_64::*;
use std::mem::offset_of;

use super::blocks32::{Q8Ptrs, f16_pairs};
use super::k_quants::{prefetch_next_tile, q6_k_quants};
use super::{ByteDot, broadcast_f16, finish, load_256};
use crate::quant::formats::{BlockA6_64, BlockA6I, BlockA8_64};

/// Which affine format a body decodes.
pub(super) const A6: u8 = 0;
pub(super) const A8: u8 = 1;

/// A block's size and the offsets of its scale and bias.
const fn layout(format: u8) -> (usize, usize, usize) {
    if format == A6 {
        (
            size_of::<BlockA6_64>(),
            offset_of!(BlockA6_64, s),
            offset_of!(BlockA6_64, b),
        )
    } else {
        (
            size_of::<BlockA8_64>(),
            offset_of!(BlockA8_64, s),
            offset_of!(BlockA8_64, b),
        )
    }
}

/// What a block's integer dot carries per unit of Σa (the 8-bit format's
/// `q − 128` through the signed dot), removed with the activation's block sums.
const fn sum_bias<D: ByteDot, const FORMAT: u8>() -> i32 {
    if FORMAT == A8 { D::SIGNED_BIAS - 128 } else { 0 }
}

/// Groups per step of the grouped loop.
const STEP_GROUPS: usize = 4;

/// A group's two registers of quants, elements 0..32 and 32..64: unsigned
/// 0..64 for A6, `q − 128` as i8 for A8 (q itself would saturate AVX2's i16
/// pair sums; the 128 comes back through the activation sums).
#[inline(always)]
unsafe fn quants<const FORMAT: u8>(block: *const u8) -> [__m256i; 2] {
    unsafe {
        if FORMAT == A6 {
            let low4 = _mm256_set1_epi8(0x0F);
            let bits45 = _mm256_set1_epi8(0x30);
            let ql = _mm256_loadu_si256(block.add(offset_of!(BlockA6_64, ql)).cast());
            let qh = _mm256_broadcastsi128_si256(_mm_loadu_si128(block.add(offset_of!(BlockA6_64, qh)).cast()));
            // Per 128-bit lane, the shift that brings the high bits of elements
            // 0..16 | 16..32 (and 32..48 | 48..64) to the bottom of each byte.
            let high_first = _mm256_srlv_epi32(qh, _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2));
            let high_second = _mm256_srlv_epi32(qh, _mm256_setr_epi32(4, 4, 4, 4, 6, 6, 6, 6));
            [
                _mm256_or_si256(
                    _mm256_and_si256(ql, low4),
                    _mm256_and_si256(_mm256_slli_epi16::<4>(high_first), bits45),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(ql), low4),
                    _mm256_and_si256(_mm256_slli_epi16::<4>(high_second), bits45),
                ),
            ]
        } else {
            let flip = _mm256_set1_epi8(-128);
            let qs = block.add(offset_of!(BlockA8_64, qs));
            [
                _mm256_xor_si256(_mm256_loadu_si256(qs.cast()), flip),
                _mm256_xor_si256(_mm256_loadu_si256(qs.add(32).cast()), flip),
            ]
        }
    }
}

/// One Q8 block's integer dot, 8 partial sums: `Σ q·a` for A6; for A8
/// `Σ (q − 128)·a + SIGNED_BIAS·Σa`, corrected later with the block sums.
#[inline(always)]
unsafe fn block_dot<D: ByteDot, const FORMAT: u8>(q: __m256i, a: __m256i) -> __m256i {
    unsafe {
        if FORMAT == A6 {
            D::dpbusd(_mm256_setzero_si256(), q, a)
        } else {
            D::signed_dot(_mm256_setzero_si256(), q, a)
        }
    }
}

/// Eight blocks' partial sums, folded in pairs by one `vphaddd` each
/// (`pairs[g]` = hadd of blocks 2g and 2g + 1), to one lane per block in block
/// order.
#[inline(always)]
unsafe fn reduce_pairs(pairs: [__m256i; STEP_GROUPS]) -> __m256i {
    unsafe {
        let q0 = _mm256_hadd_epi32(pairs[0], pairs[1]);
        let q1 = _mm256_hadd_epi32(pairs[2], pairs[3]);
        // q0 holds blocks 0..4's sums of their low 128 bits, then of their high
        // 128 bits; q1 the same for blocks 4..8.
        _mm256_add_epi32(
            _mm256_permute2x128_si256::<0x20>(q0, q1),
            _mm256_permute2x128_si256::<0x31>(q0, q1),
        )
    }
}

/// `RA` activation rows against `RW` weight rows of `groups` affine groups.
///
/// Safety: `w` has `RW` rows of `row_bytes` = `groups` × block size bytes; each
/// activation row has `2·groups` Q8 blocks; the CPU supports `D`.
#[inline(always)]
pub(super) unsafe fn affine_body<D: ByteDot, const FORMAT: u8, const RA: usize, const RW: usize>(
    w: *const u8,
    row_bytes: usize,
    groups: usize,
    acts: [Q8Ptrs; RA],
) -> [[f32; RW]; RA] {
    let (block_bytes, _, _) = layout(FORMAT);
    let bias = sum_bias::<D, FORMAT>();
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); RW]; RA];
        let steps = groups / STEP_GROUPS;
        for step in 0..steps {
            let g0 = STEP_GROUPS * step;
            let b0 = 2 * g0;
            // Activation side, shared by the RW weight rows: the eight blocks'
            // scales, `d·Σa` for the bias term, and the A8 correction.
            let mut dx = [_mm256_setzero_ps(); RA];
            let mut offset = [_mm256_setzero_ps(); RA];
            let mut correction = [_mm256_setzero_si256(); RA];
            for i in 0..RA {
                dx[i] = _mm256_loadu_ps(acts[i].d.add(b0));
                let sums = _mm256_loadu_si256(acts[i].sum.add(b0).cast());
                offset[i] = _mm256_mul_ps(dx[i], _mm256_cvtepi32_ps(sums));
                if bias != 0 {
                    correction[i] = _mm256_mullo_epi32(sums, _mm256_set1_epi32(bias));
                }
            }
            for r in 0..RW {
                let first = w.add(r * row_bytes + g0 * block_bytes);
                prefetch_next_tile::<RA>(first, STEP_GROUPS * block_bytes, RW * row_bytes);
                // Plain loops, not closures: a closure is not compiled with the
                // caller's target features, and the intrinsics in it become calls.
                let mut q = [[_mm256_setzero_si256(); 2]; STEP_GROUPS];
                for (g, q) in q.iter_mut().enumerate() {
                    *q = quants::<FORMAT>(first.add(g * block_bytes));
                }
                // Scale and bias per block: each group's twice.
                let (sw, bw) = f16_pairs(std::array::from_fn(|j| first.add(j / 2 * block_bytes)));
                for i in 0..RA {
                    let a = acts[i].qs.add(32 * b0);
                    // Each group's two block dots folded at once (fewer live registers).
                    let mut pairs = [_mm256_setzero_si256(); STEP_GROUPS];
                    for (g, pair) in pairs.iter_mut().enumerate() {
                        let lo = block_dot::<D, FORMAT>(q[g][0], load_256(a.add(64 * g)));
                        let hi = block_dot::<D, FORMAT>(q[g][1], load_256(a.add(64 * g + 32)));
                        *pair = _mm256_hadd_epi32(lo, hi);
                    }
                    let isum = _mm256_sub_epi32(reduce_pairs(pairs), correction[i]);
                    let dot = _mm256_mul_ps(_mm256_cvtepi32_ps(isum), dx[i]);
                    acc[i][r] = _mm256_fmadd_ps(dot, sw, acc[i][r]);
                    acc[i][r] = _mm256_fmadd_ps(bw, offset[i], acc[i][r]);
                }
            }
        }
        let mut out = finish(&acc);
        let done = STEP_GROUPS * steps;
        if done < groups {
            let tail = affine_groups::<D, FORMAT, RA, RW>(w, row_bytes, done..groups, acts);
            for i in 0..RA {
                for r in 0..RW {
                    out[i][r] += tail[i][r];
                }
            }
        }
        out
    }
}

/// Groups `range` one at a time (the last `groups % 4` of a row).
///
/// The bias term is accumulated as `b · (Σ_h d_h·Σa_h) / 8` in every lane, so
/// that the final sum over the eight lanes restores it (÷8 is exact).
///
/// Safety: as [`affine_body`], `range` within the row's groups.
#[inline(always)]
unsafe fn affine_groups<D: ByteDot, const FORMAT: u8, const RA: usize, const RW: usize>(
    w: *const u8,
    row_bytes: usize,
    range: std::ops::Range<usize>,
    acts: [Q8Ptrs; RA],
) -> [[f32; RW]; RA] {
    let (block_bytes, s_at, b_at) = layout(FORMAT);
    let bias = sum_bias::<D, FORMAT>();
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); RW]; RA];
        for g in range {
            let mut a = [[_mm256_setzero_si256(); 2]; RA];
            let mut dx = [[_mm256_setzero_ps(); 2]; RA];
            let mut offset = [_mm256_setzero_ps(); RA];
            let mut correction = [[0i32; 2]; RA];
            for i in 0..RA {
                let mut sum = 0f32;
                for h in 0..2 {
                    let blk = 2 * g + h;
                    a[i][h] = load_256(acts[i].qs.add(32 * blk));
                    let d = *acts[i].d.add(blk);
                    let s = *acts[i].sum.add(blk);
                    dx[i][h] = _mm256_set1_ps(d);
                    sum += d * s as f32;
                    correction[i][h] = bias * s;
                }
                offset[i] = _mm256_set1_ps(sum * 0.125);
            }
            for r in 0..RW {
                let block = w.add(r * row_bytes + g * block_bytes);
                let q = quants::<FORMAT>(block);
                let sw = broadcast_f16(block.add(s_at));
                let bw = broadcast_f16(block.add(b_at));
                for i in 0..RA {
                    let mut t = _mm256_setzero_ps();
                    for h in 0..2 {
                        let dot = block_dot::<D, FORMAT>(q[h], a[i][h]);
                        let dot = _mm256_sub_epi32(dot, _mm256_zextsi128_si256(_mm_cvtsi32_si128(correction[i][h])));
                        t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), dx[i][h], t);
                    }
                    acc[i][r] = _mm256_fmadd_ps(t, sw, acc[i][r]);
                    acc[i][r] = _mm256_fmadd_ps(bw, offset[i], acc[i][r]);
                }
            }
        }
        finish(&acc)
    }
}

/// A6_64_I (four groups a block, quants interleaved as Q6_K_I's) against
/// interleaved Q8 rows ([`crate::quant::interleave`]): registers taken in pairs
/// whose `vpmaddubsw` products are added in i16 (≤ 2·63·127 each, two below
/// 2¹⁵) and widened by one `vpmaddwd`, after which i32 lane `k` is activation
/// block `k`'s share, so the eight blocks need no reduction: then as
/// [`affine_body`], lane by lane (the same floats in the same order).
/// `vpmaddubsw` serves every instruction set (VNNI's `vpdpbusd` would sum the
/// four bytes of two sub-blocks together); the widening is `vpdpwssd` where
/// the CPU has it.
///
/// Safety: `w` has `RW` rows of `row_bytes` = `blocks` × 208 bytes; each
/// activation row has `8·blocks` Q8 blocks, interleaved; the CPU supports `D`.
#[inline(always)]
pub(super) unsafe fn a6_i_body<D: ByteDot, const RA: usize, const RW: usize>(
    w: *const u8,
    row_bytes: usize,
    blocks: usize,
    acts: [Q8Ptrs; RA],
) -> [[f32; RW]; RA] {
    const S_AT: usize = offset_of!(BlockA6I, s);
    const B_AT: usize = offset_of!(BlockA6I, b);
    unsafe {
        let ones = _mm256_set1_epi16(1);
        // Each of four f16 twice, widened: lanes 2g, 2g + 1 hold group g's.
        let pairs = |at: *const u8| {
            let four = _mm_loadl_epi64(at.cast());
            _mm256_cvtph_ps(_mm_unpacklo_epi16(four, four))
        };
        let mut acc = [[_mm256_setzero_ps(); RW]; RA];
        for sb in 0..blocks {
            let b0 = 8 * sb;
            let mut dx = [_mm256_setzero_ps(); RA];
            let mut offset = [_mm256_setzero_ps(); RA];
            for i in 0..RA {
                dx[i] = _mm256_loadu_ps(acts[i].d.add(b0));
                let sums = _mm256_loadu_si256(acts[i].sum.add(b0).cast());
                offset[i] = _mm256_mul_ps(dx[i], _mm256_cvtepi32_ps(sums));
            }
            for r in 0..RW {
                let block = w.add(r * row_bytes + sb * size_of::<BlockA6I>());
                prefetch_next_tile::<RA>(block, size_of::<BlockA6I>(), RW * row_bytes);
                let mut isum = [_mm256_setzero_si256(); RA];
                for h in 0..2 {
                    let q = q6_k_quants(block, h);
                    for p in 0..2 {
                        for i in 0..RA {
                            let a = acts[i].qs.add(256 * sb + 128 * h + 64 * p);
                            let both = _mm256_add_epi16(
                                _mm256_maddubs_epi16(q[2 * p], load_256(a)),
                                _mm256_maddubs_epi16(q[2 * p + 1], load_256(a.add(32))),
                            );
                            isum[i] = D::dpwssd(isum[i], both, ones);
                        }
                    }
                }
                let (sw, bw) = (pairs(block.add(S_AT)), pairs(block.add(B_AT)));
                for i in 0..RA {
                    let dot = _mm256_mul_ps(_mm256_cvtepi32_ps(isum[i]), dx[i]);
                    acc[i][r] = _mm256_fmadd_ps(dot, sw, acc[i][r]);
                    acc[i][r] = _mm256_fmadd_ps(bw, offset[i], acc[i][r]);
                }
            }
        }
        finish(&acc)
    }
}
