//! Q4_K, Q5_K and Q6_K weights against Q8_K activation rows.

use std::arch::x86_64::*;
use std::mem::offset_of;

use super::{ByteDot, broadcast_f16, finish, load_256};
use crate::quant::activation::Q8KRow;
use crate::quant::formats::{BlockQ4K, BlockQ5K, BlockQ6K};

// ---- K-quants against Q8_K rows --------------------------------------------------

#[derive(Clone, Copy)]
pub(super) struct Q8KPtrs {
    qs: *const i8,
    d: *const f32,
    bsums: *const i16,
}

impl Q8KPtrs {
    pub(super) fn of(row: &Q8KRow) -> Q8KPtrs {
        Q8KPtrs {
            qs: row.qs.as_ptr(),
            d: row.d.as_ptr(),
            bsums: row.bsums.as_ptr(),
        }
    }
}

/// `vpshufb` masks that repeat i16 element j (bytes 2j, 2j + 1) across a register.
const fn splat_i16_masks() -> [[u8; 32]; 8] {
    let mut masks = [[0u8; 32]; 8];
    let mut j = 0;
    while j < 8 {
        let mut t = 0;
        while t < 32 {
            masks[j][t] = (2 * j + t % 2) as u8;
            t += 1;
        }
        j += 1;
    }
    masks
}
static SPLAT_I16: [[u8; 32]; 8] = splat_i16_masks();

/// `vpshufb` masks that repeat i16 element 2g across the low 128-bit half of a
/// register and element 2g + 1 across the high half.
const fn pair_i16_masks() -> [[u8; 32]; 4] {
    let mut masks = [[0u8; 32]; 4];
    let mut g = 0;
    while g < 4 {
        let mut t = 0;
        while t < 32 {
            masks[g][t] = (2 * (2 * g + t / 16) + t % 2) as u8;
            t += 1;
        }
        g += 1;
    }
    masks
}
static PAIR_I16: [[u8; 32]; 4] = pair_i16_masks();

/// The eight 6-bit scales of a Q4_K/Q5_K super-block as i16 in one register (each
/// repeated in both 128-bit halves, ready for [`SPLAT_I16`]), and the eight mins as
/// the 16 i16 `[m0, m0, m1, m1, ...]` that pair with the activation's 16 `bsums`.
#[inline(always)]
unsafe fn k_scale_vectors(scales: *const u8) -> (__m256i, __m256i) {
    let packed = unsafe { scales.cast::<[u8; 12]>().read_unaligned() };
    let (sc, mins) = crate::quant::formats::k_scales_mins(&packed);
    unsafe {
        let sc16 = _mm_cvtepu8_epi16(_mm_loadl_epi64(sc.as_ptr().cast()));
        let m8 = _mm_loadl_epi64(mins.as_ptr().cast());
        let mins16 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8));
        (_mm256_broadcastsi128_si256(sc16), mins16)
    }
}

/// Q4_K / Q5_K × Q8_K (`FIVE_BITS` selects Q5_K's extra `qh` bit).
///
/// Per super-block: `isum = Σ_j sc_j·Σ q·a` via `vpmaddubsw` (u8×i8 → i16 pairs)
/// then a multiply-add of the pairs by the scale, and `imin = Σ_j m_j·Σa` from the
/// activation's block sums; then `(d_w·d_x)·isum − (dmin_w·d_x)·imin`.
///
/// Safety: `w` has `RW` rows of `row_bytes` = `blocks` × 144 (176) bytes; each
/// activation row has `blocks` blocks; the CPU supports `D`.
#[inline(always)]
pub(super) unsafe fn q45_k_body<D: ByteDot, const FIVE_BITS: bool, const RA: usize, const RW: usize>(
    w: *const u8,
    row_bytes: usize,
    blocks: usize,
    acts: [Q8KPtrs; RA],
) -> [[f32; RW]; RA] {
    let (block_bytes, d_at, dmin_at, scales_at, qs_at, qh_at) = if FIVE_BITS {
        (
            size_of::<BlockQ5K>(),
            offset_of!(BlockQ5K, d),
            offset_of!(BlockQ5K, dmin),
            offset_of!(BlockQ5K, scales),
            offset_of!(BlockQ5K, qs),
            offset_of!(BlockQ5K, qh),
        )
    } else {
        (
            size_of::<BlockQ4K>(),
            offset_of!(BlockQ4K, d),
            offset_of!(BlockQ4K, dmin),
            offset_of!(BlockQ4K, scales),
            offset_of!(BlockQ4K, qs),
            0,
        )
    };
    unsafe {
        let low4 = _mm256_set1_epi8(0x0F);
        let one = _mm256_set1_epi8(1);
        let mut acc = [[_mm256_setzero_ps(); RW]; RA];
        for b in 0..blocks {
            for r in 0..RW {
                let block = w.add(r * row_bytes + b * block_bytes);
                prefetch_next_tile::<RA>(block, block_bytes, RW * row_bytes);
                let (sc16, mins16) = k_scale_vectors(block.add(scales_at));
                let dw = broadcast_f16(block.add(d_at));
                let dminw = broadcast_f16(block.add(dmin_at));
                let mut high = if FIVE_BITS {
                    _mm256_loadu_si256(block.add(qh_at).cast())
                } else {
                    one
                };
                let mut isum = [_mm256_setzero_si256(); RA];
                for c in 0..4 {
                    let raw = _mm256_loadu_si256(block.add(qs_at + 32 * c).cast());
                    let mut lo = _mm256_and_si256(raw, low4);
                    let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(raw), low4);
                    if FIVE_BITS {
                        // Bit 2c of qh[l] tops element l of the low half, bit 2c + 1
                        // of the high half; shift the register down 2 bits per chunk.
                        let lo_bit = _mm256_and_si256(high, one);
                        let hi_bit = _mm256_and_si256(_mm256_srli_epi16::<1>(high), one);
                        lo = _mm256_or_si256(lo, _mm256_slli_epi16::<4>(lo_bit));
                        hi = _mm256_or_si256(hi, _mm256_slli_epi16::<4>(hi_bit));
                        high = _mm256_srli_epi16::<2>(high);
                    }
                    let sc_lo = _mm256_shuffle_epi8(sc16, _mm256_loadu_si256(SPLAT_I16[2 * c].as_ptr().cast()));
                    let sc_hi = _mm256_shuffle_epi8(sc16, _mm256_loadu_si256(SPLAT_I16[2 * c + 1].as_ptr().cast()));
                    for i in 0..RA {
                        let a_lo = load_256(acts[i].qs.add(256 * b + 64 * c));
                        let a_hi = load_256(acts[i].qs.add(256 * b + 64 * c + 32));
                        isum[i] = D::dpwssd(isum[i], _mm256_maddubs_epi16(lo, a_lo), sc_lo);
                        isum[i] = D::dpwssd(isum[i], _mm256_maddubs_epi16(hi, a_hi), sc_hi);
                    }
                }
                for i in 0..RA {
                    let bsums = _mm256_loadu_si256(acts[i].bsums.add(16 * b).cast());
                    let imin = _mm256_madd_epi16(bsums, mins16);
                    let dx = _mm256_set1_ps(*acts[i].d.add(b));
                    acc[i][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[i]), _mm256_mul_ps(dw, dx), acc[i][r]);
                    acc[i][r] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(imin), _mm256_mul_ps(dminw, dx), acc[i][r]);
                }
            }
        }
        finish(&acc)
    }
}

/// Scales 2g and 2g + 1 of a Q6_K half's eight (`half`: each i16 repeated in
/// both 128-bit lanes), for its groups of 16 elements `32g + 0..16` (low lane)
/// and `32g + 16..32` (high lane).
#[inline(always)]
unsafe fn pair_scales(half: __m256i, g: usize) -> __m256i {
    unsafe { _mm256_shuffle_epi8(half, _mm256_loadu_si256(PAIR_I16[g].as_ptr().cast())) }
}

/// The four registers of Q6_K quants (0..64, unsigned) of half `h` of the
/// block at `block`: groups of 32 elements `128h + 32g ..`, g = 0..4.
#[inline(always)]
pub(super) unsafe fn q6_k_quants(block: *const u8, h: usize) -> [__m256i; 4] {
    const QL_AT: usize = offset_of!(BlockQ6K, ql);
    const QH_AT: usize = offset_of!(BlockQ6K, qh);
    unsafe {
        let low4 = _mm256_set1_epi8(0x0F);
        let high2 = _mm256_set1_epi8(0x30);
        let ql0 = _mm256_loadu_si256(block.add(QL_AT + 64 * h).cast());
        let ql1 = _mm256_loadu_si256(block.add(QL_AT + 64 * h + 32).cast());
        let qh = _mm256_loadu_si256(block.add(QH_AT + 32 * h).cast());
        // Bits 2g, 2g + 1 of qh[l] are bits 4, 5 of quant g's element l.
        // (16-bit shifts: what crosses into the neighbouring byte is masked off.)
        [
            _mm256_or_si256(
                _mm256_and_si256(ql0, low4),
                _mm256_and_si256(_mm256_slli_epi16::<4>(qh), high2),
            ),
            _mm256_or_si256(
                _mm256_and_si256(ql1, low4),
                _mm256_and_si256(_mm256_slli_epi16::<2>(qh), high2),
            ),
            _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), low4),
                _mm256_and_si256(qh, high2),
            ),
            _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), low4),
                _mm256_and_si256(_mm256_srli_epi16::<2>(qh), high2),
            ),
        ]
    }
}

/// Q6_K × Q8_K: `(d_w·d_x)·Σ_j sc_j·Σ (q − 32)·a` over groups j of 16. The −32 is
/// folded in through the activation's group sums: `Σ_j sc_j·Σ q·a − 32·Σ_j sc_j·bsum_j`.
///
/// Decode (one activation row) unpacks each group and uses it at once.
/// Prefill (several) first unpacks a block's eight groups and their scales into
/// `staged`, in L1, then runs each activation row over them: kept in registers
/// across the rows they did not fit and were spilled anyway, with more besides
/// (a 4-row tile measured 9.0 against 6.7 ns per block and activation row,
/// weights in L2, alternating runs).
///
/// Safety: as [`q45_k_body`] with 210-byte blocks.
#[inline(always)]
pub(super) unsafe fn q6_k_body<D: ByteDot, const RA: usize, const RW: usize>(
    w: *const u8,
    row_bytes: usize,
    blocks: usize,
    acts: [Q8KPtrs; RA],
) -> [[f32; RW]; RA] {
    const SCALES_AT: usize = offset_of!(BlockQ6K, scales);
    const D_AT: usize = offset_of!(BlockQ6K, d);
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); RW]; RA];
        let mut staged = [[_mm256_setzero_si256(); 2]; 8];
        for b in 0..blocks {
            for r in 0..RW {
                let block = w.add(r * row_bytes + b * size_of::<BlockQ6K>());
                prefetch_next_tile::<RA>(block, size_of::<BlockQ6K>(), RW * row_bytes);
                // The 16 scales as i16, s0..s7 in the low half and s8..s15 in the
                // high half; each half of the block then takes its eight, repeated
                // in both halves, for in-lane shuffles (`PAIR_I16`).
                let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(block.add(SCALES_AT).cast()));
                let halves = [
                    _mm256_permute2x128_si256::<0x00>(sc16, sc16),
                    _mm256_permute2x128_si256::<0x11>(sc16, sc16),
                ];
                // −32·sc_j per group, against the activation's 16 group sums.
                let offset16 = _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16::<5>(sc16));
                let dw = broadcast_f16(block.add(D_AT));
                let mut isum = [_mm256_setzero_si256(); RA];
                for i in 0..RA {
                    let bsums = _mm256_loadu_si256(acts[i].bsums.add(16 * b).cast());
                    isum[i] = D::dpwssd(isum[i], bsums, offset16);
                }
                if RA == 1 {
                    for h in 0..2 {
                        for (g, &q) in q6_k_quants(block, h).iter().enumerate() {
                            let a = load_256(acts[0].qs.add(256 * b + 128 * h + 32 * g));
                            isum[0] = D::dpwssd(isum[0], _mm256_maddubs_epi16(q, a), pair_scales(halves[h], g));
                        }
                    }
                } else {
                    for h in 0..2 {
                        for (g, q) in q6_k_quants(block, h).into_iter().enumerate() {
                            staged[4 * h + g] = [q, pair_scales(halves[h], g)];
                        }
                    }
                    for i in 0..RA {
                        let a = acts[i].qs.add(256 * b);
                        for (j, [q, sc]) in staged.iter().enumerate() {
                            isum[i] = D::dpwssd(isum[i], _mm256_maddubs_epi16(*q, load_256(a.add(32 * j))), *sc);
                        }
                    }
                }
                for i in 0..RA {
                    let dx = _mm256_set1_ps(*acts[i].d.add(b));
                    acc[i][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[i]), _mm256_mul_ps(dw, dx), acc[i][r]);
                }
            }
        }
        finish(&acc)
    }
}

/// Asks for the block `tile_bytes` further on: the same block of the same row
/// of the next tile. Rows are contiguous, so a tile's rows sweep their span
/// of memory block by block while the next span is fetched. A tile reads
/// several rows a block at a time, and short rows (a 2048-wide matrix's are
/// 8 Q6_K blocks) make streams too short for the hardware prefetcher to pick
/// up: without this the loads wait on memory. Past the matrix's end the
/// address is never read (prefetches do not fault), and it is computed with
/// wrapping arithmetic.
///
/// Tiles of one or two activation rows only (`RA`), what a decode batch of
/// fewer than four runs, reading every weight once from memory: prefill reads
/// each panel of weight rows once per group of four activation rows, from L2
/// after the first, where the prefetches are pure overhead (SmolLM2 prefill
/// ran ~6% slower with them).
///
/// Safety: none needed beyond a valid `block` pointer's provenance.
#[inline(always)]
pub(super) unsafe fn prefetch_next_tile<const RA: usize>(block: *const u8, block_bytes: usize, tile_bytes: usize) {
    if RA > 2 {
        return;
    }
    let ahead = block.wrapping_add(tile_bytes);
    let mut line = 0;
    while line < block_bytes {
        unsafe { _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line).cast()) };
        line += 64;
    }
}

// ---- interleaved K-quants (`Q4_K_I`, `Q6_K_I`) against interleaved Q8_K rows ----------

/// The eight 6-bit scales and mins of a Q4_K super-block, each repeated in two
/// adjacent i16 lanes: lanes `2g`, `2g + 1` hold sub-block `g`'s, as an
/// interleaved register's `vpmaddubsw` products and Q8_K's 16 `bsums` line up.
#[inline(always)]
unsafe fn k_scale_pairs(scales: *const u8) -> (__m256i, __m256i) {
    let packed = unsafe { scales.cast::<[u8; 12]>().read_unaligned() };
    let (sc, mins) = crate::quant::formats::k_scales_mins(&packed);
    unsafe {
        let pairs = |v: [u8; 8]| {
            let v8 = _mm_loadl_epi64(v.as_ptr().cast());
            _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(v8, v8))
        };
        (pairs(sc), pairs(mins))
    }
}

/// Q4_K_I × interleaved Q8_K ([`crate::quant::interleave`]): the eight registers'
/// `vpmaddubsw` products are added in i16 (lane `l` is sub-block `l/2` in every
/// register; eight sums of ≤ 2·15·127 stay below 2¹⁵), then one `vpmaddwd` by the
/// scales per block; the mins through Q8_K's sums as in [`q45_k_body`].
///
/// Safety: as [`q45_k_body`], with interleaved weights and activations.
#[inline(always)]
pub(super) unsafe fn q4_k_i_body<D: ByteDot, const RA: usize, const RW: usize>(
    w: *const u8,
    row_bytes: usize,
    blocks: usize,
    acts: [Q8KPtrs; RA],
) -> [[f32; RW]; RA] {
    const D_AT: usize = offset_of!(BlockQ4K, d);
    const DMIN_AT: usize = offset_of!(BlockQ4K, dmin);
    const SCALES_AT: usize = offset_of!(BlockQ4K, scales);
    const QS_AT: usize = offset_of!(BlockQ4K, qs);
    unsafe {
        let low4 = _mm256_set1_epi8(0x0F);
        let mut acc = [[_mm256_setzero_ps(); RW]; RA];
        for b in 0..blocks {
            // Row by row: a decode tile's eight rows would not fit the registers
            // together; the activation loads a row repeats come from L1.
            for r in 0..RW {
                let block = w.add(r * row_bytes + b * size_of::<BlockQ4K>());
                prefetch_next_tile::<RA>(block, size_of::<BlockQ4K>(), RW * row_bytes);
                let mut isum = [_mm256_setzero_si256(); RA];
                for c in 0..4 {
                    let raw = _mm256_loadu_si256(block.add(QS_AT + 32 * c).cast());
                    let lo = _mm256_and_si256(raw, low4);
                    let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(raw), low4);
                    for i in 0..RA {
                        let a_lo = load_256(acts[i].qs.add(256 * b + 64 * c));
                        let a_hi = load_256(acts[i].qs.add(256 * b + 64 * c + 32));
                        let both = _mm256_add_epi16(_mm256_maddubs_epi16(lo, a_lo), _mm256_maddubs_epi16(hi, a_hi));
                        isum[i] = _mm256_add_epi16(isum[i], both);
                    }
                }
                let (sc16, mins16) = k_scale_pairs(block.add(SCALES_AT));
                let dw = broadcast_f16(block.add(D_AT));
                let dminw = broadcast_f16(block.add(DMIN_AT));
                for i in 0..RA {
                    let bsums = _mm256_loadu_si256(acts[i].bsums.add(16 * b).cast());
                    let isum = _mm256_madd_epi16(isum[i], sc16);
                    let imin = _mm256_madd_epi16(bsums, mins16);
                    let dx = _mm256_set1_ps(*acts[i].d.add(b));
                    acc[i][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(dw, dx), acc[i][r]);
                    acc[i][r] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(imin), _mm256_mul_ps(dminw, dx), acc[i][r]);
                }
            }
        }
        finish(&acc)
    }
}

/// Q6_K_I × interleaved Q8_K: registers taken in pairs, whose `vpmaddubsw`
/// products are added in i16 (two sums of ≤ 2·63·127 stay below 2¹⁵; lane `l` is
/// sub-block `l` in every register) before one `vpmaddwd` by the 16 scales; the
/// −32 offset through Q8_K's sums as in [`q6_k_body`].
///
/// Safety: as [`q6_k_body`], with interleaved weights and activations.
#[inline(always)]
pub(super) unsafe fn q6_k_i_body<D: ByteDot, const RA: usize, const RW: usize>(
    w: *const u8,
    row_bytes: usize,
    blocks: usize,
    acts: [Q8KPtrs; RA],
) -> [[f32; RW]; RA] {
    const SCALES_AT: usize = offset_of!(BlockQ6K, scales);
    const D_AT: usize = offset_of!(BlockQ6K, d);
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); RW]; RA];
        for b in 0..blocks {
            // Row by row, as in `q4_k_i_body`.
            for r in 0..RW {
                let block = w.add(r * row_bytes + b * size_of::<BlockQ6K>());
                prefetch_next_tile::<RA>(block, size_of::<BlockQ6K>(), RW * row_bytes);
                let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(block.add(SCALES_AT).cast()));
                // −32·sc_j per sub-block, against the activation's 16 sums.
                let offset16 = _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16::<5>(sc16));
                let mut isum = [_mm256_setzero_si256(); RA];
                for i in 0..RA {
                    let bsums = _mm256_loadu_si256(acts[i].bsums.add(16 * b).cast());
                    isum[i] = _mm256_madd_epi16(bsums, offset16);
                }
                for h in 0..2 {
                    let q = q6_k_quants(block, h);
                    for p in 0..2 {
                        for i in 0..RA {
                            let a = acts[i].qs.add(256 * b + 128 * h + 64 * p);
                            let both = _mm256_add_epi16(
                                _mm256_maddubs_epi16(q[2 * p], load_256(a)),
                                _mm256_maddubs_epi16(q[2 * p + 1], load_256(a.add(32))),
                            );
                            isum[i] = D::dpwssd(isum[i], both, sc16);
                        }
                    }
                }
                let dw = broadcast_f16(block.add(D_AT));
                for i in 0..RA {
                    let dx = _mm256_set1_ps(*acts[i].d.add(b));
                    acc[i][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[i]), _mm256_mul_ps(dw, dx), acc[i][r]);
                }
            }
        }
        finish(&acc)
    }
}
