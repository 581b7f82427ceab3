//! Q4_0, Q4_1 and Q8_0 weights against Q8_0/Q8_1 activation rows.

use std::arch::x86_64::*;
use std::mem::offset_of;

use super::k_quants::prefetch_next_tile;
use super::{ByteDot, broadcast_f16, finish, hsum, load_256, nibbles_32};
use crate::quant::activation::{GROUP_BLOCKS, GROUP_ORDER, Q8_BLOCK, Q8Row};
use crate::quant::formats::{BlockQ4_0, BlockQ4_1, BlockQ8_0};

// ---- one block per step: the last `blocks % 8` blocks of a row -------------------

/// What the Q8 tile bodies read from an activation row, as raw pointers.
#[derive(Clone, Copy)]
pub(super) struct Q8Ptrs {
    pub(super) qs: *const i8,
    pub(super) d: *const f32,
    s: *const f32,
    pub(super) sum: *const i32,
    group_qs: *const i8,
    group_d: *const f32,
    group_s: *const f32,
    group_sum: *const i32,
}

impl Q8Ptrs {
    pub(super) fn of(row: &Q8Row) -> Q8Ptrs {
        Q8Ptrs {
            qs: row.qs.as_ptr(),
            d: row.d.as_ptr(),
            s: row.s.as_ptr(),
            sum: row.sum.as_ptr(),
            group_qs: row.groups.qs.as_ptr(),
            group_d: row.groups.d.as_ptr(),
            group_s: row.groups.s.as_ptr(),
            group_sum: row.groups.sum.as_ptr(),
        }
    }

    /// The per-block arrays from block `b` on (the groups are not used past there).
    /// Safety: `b` is within the row.
    unsafe fn skip_blocks(self, b: usize) -> Q8Ptrs {
        unsafe {
            Q8Ptrs {
                qs: self.qs.add(32 * b),
                d: self.d.add(b),
                s: self.s.add(b),
                sum: self.sum.add(b),
                ..self
            }
        }
    }
}

/// Q4_0 × Q8_0, block by block. Σ (q − 8)·a is computed as Σ q·a − 8·Σa, with −8·Σa seeded into the
/// dot product's accumulator so the nibbles go in unsigned and unshifted.
///
/// Safety: `w` has `RW` rows of `row_bytes` = `blocks` × 18 bytes; each activation
/// row has `blocks` blocks; the CPU supports `D`.
#[inline(always)]
unsafe fn q4_0_body<D: ByteDot, const RA: usize, const RW: usize>(
    w: *const u8,
    row_bytes: usize,
    blocks: usize,
    acts: [Q8Ptrs; RA],
) -> [[f32; RW]; RA] {
    const D_AT: usize = offset_of!(BlockQ4_0, d);
    const QS_AT: usize = offset_of!(BlockQ4_0, qs);
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); RW]; RA];
        for b in 0..blocks {
            let mut a = [_mm256_setzero_si256(); RA];
            let mut seed = [_mm256_setzero_si256(); RA];
            let mut dx = [_mm256_setzero_ps(); RA];
            for i in 0..RA {
                a[i] = load_256(acts[i].qs.add(32 * b));
                seed[i] = _mm256_zextsi128_si256(_mm_cvtsi32_si128(-8 * *acts[i].sum.add(b)));
                dx[i] = _mm256_set1_ps(*acts[i].d.add(b));
            }
            for r in 0..RW {
                let block = w.add(r * row_bytes + b * size_of::<BlockQ4_0>());
                let q = nibbles_32(block.add(QS_AT));
                let dw = broadcast_f16(block.add(D_AT));
                for i in 0..RA {
                    let dot = D::dpbusd(seed[i], q, a[i]);
                    acc[i][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(dw, dx[i]), acc[i][r]);
                }
            }
        }
        finish(&acc)
    }
}

/// Q4_1 × Q8_1, block by block: `(d_w·d_x)·Σ q·a + m_w·s_x` per block. The `m·s` terms go to their
/// own accumulators so that the two FMAs per block do not form one dependency chain.
///
/// Safety: as [`q4_0_body`] with 20-byte blocks.
#[inline(always)]
unsafe fn q4_1_body<D: ByteDot, const RA: usize, const RW: usize>(
    w: *const u8,
    row_bytes: usize,
    blocks: usize,
    acts: [Q8Ptrs; RA],
) -> [[f32; RW]; RA] {
    const D_AT: usize = offset_of!(BlockQ4_1, d);
    const M_AT: usize = offset_of!(BlockQ4_1, m);
    const QS_AT: usize = offset_of!(BlockQ4_1, qs);
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); RW]; RA];
        let mut acc_m = [[_mm256_setzero_ps(); RW]; RA];
        for b in 0..blocks {
            let mut a = [_mm256_setzero_si256(); RA];
            let mut dx = [_mm256_setzero_ps(); RA];
            let mut sx = [_mm256_setzero_ps(); RA];
            for i in 0..RA {
                a[i] = load_256(acts[i].qs.add(32 * b));
                dx[i] = _mm256_set1_ps(*acts[i].d.add(b));
                sx[i] = _mm256_set1_ps(*acts[i].s.add(b));
            }
            for r in 0..RW {
                let block = w.add(r * row_bytes + b * size_of::<BlockQ4_1>());
                let q = nibbles_32(block.add(QS_AT));
                let dw = broadcast_f16(block.add(D_AT));
                let mw = broadcast_f16(block.add(M_AT));
                for i in 0..RA {
                    let dot = D::dpbusd(_mm256_setzero_si256(), q, a[i]);
                    acc[i][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(dw, dx[i]), acc[i][r]);
                    acc_m[i][r] = _mm256_fmadd_ps(mw, sx[i], acc_m[i][r]);
                }
            }
        }
        let mut out = finish(&acc);
        for i in 0..RA {
            for r in 0..RW {
                // Every lane of acc_m holds the same sum; take one.
                out[i][r] += _mm256_cvtss_f32(acc_m[i][r]);
            }
        }
        out
    }
}

/// Q8_0 × Q8_0, block by block. Both sides are signed; the u8×i8 instruction gets
/// |w| and a·sign(w).
///
/// Safety: as [`q4_0_body`] with 34-byte blocks.
#[inline(always)]
unsafe fn q8_0_body<D: ByteDot, const RA: usize, const RW: usize>(
    w: *const u8,
    row_bytes: usize,
    blocks: usize,
    acts: [Q8Ptrs; RA],
) -> [[f32; RW]; RA] {
    const D_AT: usize = offset_of!(BlockQ8_0, d);
    const QS_AT: usize = offset_of!(BlockQ8_0, qs);
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); RW]; RA];
        for b in 0..blocks {
            let mut a = [_mm256_setzero_si256(); RA];
            let mut dx = [_mm256_setzero_ps(); RA];
            for i in 0..RA {
                a[i] = load_256(acts[i].qs.add(32 * b));
                dx[i] = _mm256_set1_ps(*acts[i].d.add(b));
            }
            for r in 0..RW {
                let block = w.add(r * row_bytes + b * size_of::<BlockQ8_0>());
                let q = _mm256_loadu_si256(block.add(QS_AT).cast());
                let q_abs = _mm256_sign_epi8(q, q);
                let dw = broadcast_f16(block.add(D_AT));
                for i in 0..RA {
                    let dot = D::dpbusd(_mm256_setzero_si256(), q_abs, _mm256_sign_epi8(a[i], q));
                    acc[i][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(dw, dx[i]), acc[i][r]);
                }
            }
        }
        finish(&acc)
    }
}

// ---- eight blocks per step -------------------------------------------------------

/// Which 32-element format a grouped body decodes.
pub(super) const Q4_0: u8 = 0;
pub(super) const Q4_1: u8 = 1;
pub(super) const Q8_0: u8 = 2;

/// Reduces four vectors, each holding one block's partial sums in its low 128 bits
/// and the next block's in its high 128 bits, to one lane per block, in
/// [`GROUP_ORDER`]: three `vphaddd` for eight blocks.
#[inline(always)]
unsafe fn reduce_block_pairs(v: [__m256i; 4]) -> __m256i {
    unsafe { _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3])) }
}

/// Two 16-byte pieces, at `lo` and `hi`, as one register.
#[inline(always)]
unsafe fn load_2x128(lo: *const u8, hi: *const u8) -> __m256i {
    unsafe {
        _mm256_inserti128_si256::<1>(
            _mm256_castsi128_si256(_mm_loadu_si128(lo.cast())),
            _mm_loadu_si128(hi.cast()),
        )
    }
}

/// The 16-bit fields at byte 0 (and byte 2) of 8 consecutive blocks of
/// `block_bytes`, in [`GROUP_ORDER`], widened to f32: `(d, m)`.
#[inline(always)]
unsafe fn group_scales(first: *const u8, block_bytes: usize) -> (__m256, __m256) {
    unsafe { f16_pairs(std::array::from_fn(|j| first.add(GROUP_ORDER[j] * block_bytes))) }
}

/// The two f16 at each of the eight addresses (bytes 0..2 and 2..4), widened
/// to f32 in that order: `(first halves, second halves)`. Eight scalar loads
/// (measured faster than a `vpgatherdd` on Zen 4), a byte shuffle and a
/// cross-lane permute to split the halves, two conversions.
#[inline(always)]
pub(super) unsafe fn f16_pairs(at: [*const u8; 8]) -> (__m256, __m256) {
    unsafe {
        let at = |j: usize| at[j].cast::<i32>().read_unaligned();
        let fields = _mm256_setr_epi32(at(0), at(1), at(2), at(3), at(4), at(5), at(6), at(7));
        // Per 128-bit lane: the four low halves, then the four high halves.
        let split = _mm256_shuffle_epi8(
            fields,
            _mm256_setr_epi8(
                0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15, 0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14,
                15,
            ),
        );
        let split = _mm256_permute4x64_epi64::<0b11_01_10_00>(split);
        (
            _mm256_cvtph_ps(_mm256_castsi256_si128(split)),
            _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(split)),
        )
    }
}

/// Q4_0, Q4_1 and Q8_0 against Q8 rows, eight blocks per step.
///
/// Converting each block's integer dot to float and scaling it on its own costs
/// two f16 conversions, a multiply and one or two FMAs per block, on the same
/// execution ports as the dot product itself, which made that the bottleneck.
/// Here the integer dots of eight blocks are first reduced to one lane each (three
/// horizontal adds), so conversion and scaling run once per eight blocks. Blocks go
/// in pairs: one register holds the low 16 bytes of two blocks, which for Q4 is
/// exactly how their nibbles unpack, and the activation's [`Q8Groups`] layout
/// matches it. The last `blocks % 8` blocks go through the per-block bodies.
///
/// Every output sees the same operations in the same order whatever `RA` and `RW`
/// are, so a prefill row equals the same row computed alone.
///
/// Safety: `w` has `RW` rows of `row_bytes` = `blocks` × block size bytes; every
/// activation row has `blocks` blocks and consistent groups; the CPU supports `D`.
///
/// [`Q8Groups`]: crate::quant::activation::Q8Groups
#[inline(always)]
pub(super) unsafe fn grouped_q8_body<D: ByteDot, const FORMAT: u8, const RA: usize, const RW: usize>(
    w: *const u8,
    row_bytes: usize,
    blocks: usize,
    acts: [Q8Ptrs; RA],
) -> [[f32; RW]; RA] {
    let (block_bytes, qs_at) = match FORMAT {
        Q4_0 => (size_of::<BlockQ4_0>(), offset_of!(BlockQ4_0, qs)),
        Q4_1 => (size_of::<BlockQ4_1>(), offset_of!(BlockQ4_1, qs)),
        _ => (size_of::<BlockQ8_0>(), offset_of!(BlockQ8_0, qs)),
    };
    // What each block's dot product carries per unit of Σa, removed with the
    // activation's block sums: Q4_0's nibbles go in without their −8, and the
    // signed dot may add a bias.
    let bias = match FORMAT {
        Q4_0 => 8,
        Q8_0 => D::SIGNED_BIAS,
        _ => 0,
    };
    unsafe {
        let low4 = _mm256_set1_epi8(0x0F);
        let mut acc = [[_mm256_setzero_ps(); RW]; RA];
        let mut acc_m = [[_mm256_setzero_ps(); RW]; RA];
        let groups = blocks / GROUP_BLOCKS;
        for g in 0..groups {
            let b0 = GROUP_BLOCKS * g;
            // Activation side, shared by the RW weight rows.
            let mut dx = [_mm256_setzero_ps(); RA];
            let mut sx = [_mm256_setzero_ps(); RA];
            let mut correction = [_mm256_setzero_si256(); RA];
            for i in 0..RA {
                dx[i] = _mm256_loadu_ps(acts[i].group_d.add(b0));
                if FORMAT == Q4_1 {
                    sx[i] = _mm256_loadu_ps(acts[i].group_s.add(b0));
                }
                if bias != 0 {
                    let sums = _mm256_loadu_si256(acts[i].group_sum.add(b0).cast());
                    correction[i] = _mm256_mullo_epi32(sums, _mm256_set1_epi32(bias));
                }
            }
            for r in 0..RW {
                let row = w.add(r * row_bytes + b0 * block_bytes);
                prefetch_next_tile::<RA>(row, GROUP_BLOCKS * block_bytes, RW * row_bytes);
                // Weight side, shared by the RA activation rows: per block pair,
                // elements 0..16 of both blocks, then 16..32 of both.
                let mut w_lo = [_mm256_setzero_si256(); 4];
                let mut w_hi = [_mm256_setzero_si256(); 4];
                for t in 0..4 {
                    let first = row.add(2 * t * block_bytes + qs_at);
                    let second = first.add(block_bytes);
                    if FORMAT == Q8_0 {
                        w_lo[t] = load_2x128(first, second);
                        w_hi[t] = load_2x128(first.add(16), second.add(16));
                    } else {
                        let packed = load_2x128(first, second);
                        w_lo[t] = _mm256_and_si256(packed, low4);
                        w_hi[t] = _mm256_and_si256(_mm256_srli_epi16::<4>(packed), low4);
                    }
                }
                let (dw, mw) = group_scales(row, block_bytes);
                for i in 0..RA {
                    let qs = acts[i].group_qs.add(GROUP_BLOCKS * Q8_BLOCK * g);
                    let mut dots = [_mm256_setzero_si256(); 4];
                    for t in 0..4 {
                        let a_lo = load_256(qs.add(64 * t));
                        let a_hi = load_256(qs.add(64 * t + 32));
                        dots[t] = if FORMAT == Q8_0 {
                            D::signed_dot(D::signed_dot(_mm256_setzero_si256(), w_lo[t], a_lo), w_hi[t], a_hi)
                        } else {
                            D::dpbusd(D::dpbusd(_mm256_setzero_si256(), w_lo[t], a_lo), w_hi[t], a_hi)
                        };
                    }
                    let isum = _mm256_sub_epi32(reduce_block_pairs(dots), correction[i]);
                    acc[i][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(dw, dx[i]), acc[i][r]);
                    if FORMAT == Q4_1 {
                        acc_m[i][r] = _mm256_fmadd_ps(mw, sx[i], acc_m[i][r]);
                    }
                }
            }
        }
        let mut out = [[0f32; RW]; RA];
        for i in 0..RA {
            for r in 0..RW {
                out[i][r] = hsum(_mm256_add_ps(acc[i][r], acc_m[i][r]));
            }
        }
        let done = GROUP_BLOCKS * groups;
        if done < blocks {
            let rest = w.add(done * block_bytes);
            let acts = acts.map(|a| a.skip_blocks(done));
            let tail = match FORMAT {
                Q4_0 => q4_0_body::<D, RA, RW>(rest, row_bytes, blocks - done, acts),
                Q4_1 => q4_1_body::<D, RA, RW>(rest, row_bytes, blocks - done, acts),
                _ => q8_0_body::<D, RA, RW>(rest, row_bytes, blocks - done, acts),
            };
            for i in 0..RA {
                for r in 0..RW {
                    out[i][r] += tail[i][r];
                }
            }
        }
        out
    }
}
