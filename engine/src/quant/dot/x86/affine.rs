//! The affine formats ([`BlockA6_64`], [`BlockA8_64`]: `s·q + b` per 64
//! elements, MLX's 6- and 8-bit groups) against Q8 activation rows.
//!
//! A group of 64 spans two Q8 blocks, and both formats lay a group's quants out
//! so that one 32-byte register holds elements 0..32 and another 32..64, in
//! order: each lines up with one activation block as loaded. Per group and row,
//! `s·(d₀·Σ₀ q·a + d₁·Σ₁ q·a) + b·(d₀·Σa₀ + d₁·Σa₁)`, the bias term from the
//! activation's exact block sums.

use std::arch::x86_64::*;
use std::mem::offset_of;

use super::blocks32::Q8Ptrs;
use super::k_quants::prefetch_next_tile;
use super::{ByteDot, broadcast_f16, finish, load_256};
use crate::quant::formats::{BlockA6_64, BlockA8_64};

/// Which affine format a body decodes.
pub(super) const A6: u8 = 0;
pub(super) const A8: u8 = 1;

/// `RA` activation rows against `RW` weight rows of `groups` affine groups.
///
/// The bias term is accumulated as `b · (Σ_h d_h·Σa_h) / 8` in every lane, so
/// that the final sum over the eight lanes restores it (÷8 is exact).
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
    let (block_bytes, s_at, b_at) = if FORMAT == A6 {
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
    };
    unsafe {
        let low4 = _mm256_set1_epi8(0x0F);
        let bits45 = _mm256_set1_epi8(0x30);
        // Per 128-bit lane, the shift that brings the high bits of elements
        // 0..16 | 16..32 (and 32..48 | 48..64) to the bottom of each byte.
        let shifts_first = _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2);
        let shifts_second = _mm256_setr_epi32(4, 4, 4, 4, 6, 6, 6, 6);
        let mut acc = [[_mm256_setzero_ps(); RW]; RA];
        for g in 0..groups {
            let mut a = [[_mm256_setzero_si256(); 2]; RA];
            let mut dx = [[_mm256_setzero_ps(); 2]; RA];
            let mut offset = [_mm256_setzero_ps(); RA];
            // The 8-bit body's signed dot returns Σ(q − 128)·a + SIGNED_BIAS·Σa.
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
                    if FORMAT == A8 {
                        correction[i][h] = (128 - D::SIGNED_BIAS) * s;
                    }
                }
                offset[i] = _mm256_set1_ps(sum * 0.125);
            }
            for r in 0..RW {
                let block = w.add(r * row_bytes + g * block_bytes);
                if RA == 1 {
                    prefetch_next_tile(block, block_bytes, RW * row_bytes);
                }
                let q: [__m256i; 2] = if FORMAT == A6 {
                    let ql = _mm256_loadu_si256(block.add(offset_of!(BlockA6_64, ql)).cast());
                    let qh = _mm256_broadcastsi128_si256(_mm_loadu_si128(block.add(offset_of!(BlockA6_64, qh)).cast()));
                    let high = |shifts| _mm256_and_si256(_mm256_slli_epi16::<4>(_mm256_srlv_epi32(qh, shifts)), bits45);
                    [
                        _mm256_or_si256(_mm256_and_si256(ql, low4), high(shifts_first)),
                        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(ql), low4), high(shifts_second)),
                    ]
                } else {
                    // q − 128 as i8, for the signed dot (q itself would saturate
                    // AVX2's i16 pair sums).
                    let flip = _mm256_set1_epi8(-128);
                    let qs = block.add(offset_of!(BlockA8_64, qs));
                    [
                        _mm256_xor_si256(_mm256_loadu_si256(qs.cast()), flip),
                        _mm256_xor_si256(_mm256_loadu_si256(qs.add(32).cast()), flip),
                    ]
                };
                let sw = broadcast_f16(block.add(s_at));
                let bw = broadcast_f16(block.add(b_at));
                for i in 0..RA {
                    let mut t = _mm256_setzero_ps();
                    for h in 0..2 {
                        let dot = if FORMAT == A6 {
                            D::dpbusd(_mm256_setzero_si256(), q[h], a[i][h])
                        } else {
                            let seed = _mm256_zextsi128_si256(_mm_cvtsi32_si128(correction[i][h]));
                            D::signed_dot(seed, q[h], a[i][h])
                        };
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
