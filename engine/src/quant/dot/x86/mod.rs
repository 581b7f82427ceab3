//! AVX2 / AVX-VNNI / AVX-512-VNNI dot-product kernels for x86-64.
//!
//! Every kernel body computes a *tile*: `RA` activation rows against `RW`
//! consecutive weight rows. Decode (one activation row) runs tiles of 8 weight
//! rows, so each activation load serves eight of them; prefill runs 4 (for some
//! bodies 8) activation rows against one weight row, so each weight block is
//! unpacked once for four (eight);
//! a pair of rows (a batch of two or three decodes) runs against 4 weight rows,
//! halving the weight reads of two single rows. Each output sees the same
//! operations in the same order whatever the tile, so a row's result does not
//! depend on the rows batched with it, bit for bit.
//!
//! The integer core is a u8×i8 dot product of 4-byte groups into i32 lanes
//! ([`ByteDot`]): `vpdpbusd` where the CPU has VNNI (one instruction), else AVX2's
//! `vpmaddubsw` + `vpmaddwd` (three). The bodies are generic over it and
//! `#[inline(always)]`, so each `#[target_feature]` entry point gets its own copy
//! compiled for its instruction set (256-bit registers throughout; with AVX-512 the
//! compiler also gets 32 of them).
//!
//! - Q4_0, Q4_1, Q8_0: [`grouped_q8_body`], eight blocks per step with one float
//!   conversion per eight blocks; the per-block bodies handle the last `blocks % 8`.
//! - Q4_K, Q5_K, Q6_K: one 256-element super-block per step, scales applied to
//!   i16 pair sums (`vpmaddwd`/`vpdpwssd`), mins and offsets through Q8_K's sums.
//! - Q4_K_I, Q6_K_I (the K-quants interleaved at load, `quant::interleave`):
//!   [`q4_k_i_body`], [`q6_k_i_body`], the products of several registers summed
//!   in i16 before one multiply by the scales.
//! - A6_64, A8_64 (MLX's affine groups): [`affine_body`], one group of 64 per step;
//!   A6_64_I (four A6 groups interleaved): [`a6_i_body`].
//! - F32, F16, BF16: FMA over f32, 8 elements per step.
//!
//! Nothing here is safe to call without its preconditions; [`dot_rows`] at the
//! bottom checks every length (and that the CPU has the features) first.

// Tile loops index several parallel arrays (accumulators, activations, outputs) by
// the same row number; iterator chains would hide that.
#![allow(clippy::needless_range_loop)]

mod affine;
mod blocks32;
mod floats;
mod k_quants;

use std::arch::x86_64::*;

use self::affine::{A6, A8, a6_i_body, affine_body};
use self::blocks32::{Q4_0, Q4_1, Q8_0, Q8Ptrs, grouped_q8_body};
use self::floats::{FLOAT_BF16, FLOAT_F16, FLOAT_F32, float_body};
use self::k_quants::{Q8KPtrs, q4_k_i_body, q6_k_body, q6_k_i_body, q45_k_body};
use super::Kernel;
use crate::quant::QuantMatrix;
use crate::quant::activation::{Q8KRow, Q8Row};
use crate::quant::formats::QuantFormat;

/// Sums u8×i8 products of each 4-byte group into an i32 lane.
pub(super) trait ByteDot {
    /// `acc + Σ₄ u·s` per i32 lane. The AVX2 form goes through i16 pair sums, which
    /// saturate unless `|u₀s₀ + u₁s₁| < 2¹⁵`; every caller keeps `u <= 128` and
    /// `|s| <= 127`, which bounds it by 32 512.
    unsafe fn dpbusd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i;
    /// `acc + Σ₂ a·b` per i32 lane, over i16 pairs.
    unsafe fn dpwssd(acc: __m256i, a: __m256i, b: __m256i) -> __m256i;

    /// What [`ByteDot::signed_dot`] adds per unit of activation: its lanes hold
    /// `Σ w·a + SIGNED_BIAS·Σ a`.
    const SIGNED_BIAS: i32;
    /// `acc + Σ₄ w·a` (both signed) per i32 lane, plus `SIGNED_BIAS·Σ₄ a`.
    /// With VNNI, `w ^ 0x80` = w + 128 as an unsigned byte makes it one instruction
    /// (the bias is removed later with the activation's block sum, once per block
    /// rather than per product); AVX2's i16 pair sums would overflow on that, so it
    /// moves w's sign onto a instead.
    #[inline(always)]
    unsafe fn signed_dot(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
        unsafe {
            if Self::SIGNED_BIAS == 0 {
                Self::dpbusd(acc, _mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w))
            } else {
                Self::dpbusd(acc, _mm256_xor_si256(w, _mm256_set1_epi8(-128)), a)
            }
        }
    }
}

struct Avx2Dot;
struct AvxVnniDot;
struct Avx512VnniDot;

impl ByteDot for Avx2Dot {
    const SIGNED_BIAS: i32 = 0;
    #[inline(always)]
    unsafe fn dpbusd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        unsafe {
            let pairs = _mm256_maddubs_epi16(u, s);
            _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
        }
    }
    #[inline(always)]
    unsafe fn dpwssd(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        unsafe { _mm256_add_epi32(acc, _mm256_madd_epi16(a, b)) }
    }
}

impl ByteDot for AvxVnniDot {
    const SIGNED_BIAS: i32 = 128;
    #[inline(always)]
    unsafe fn dpbusd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        unsafe { _mm256_dpbusd_avx_epi32(acc, u, s) }
    }
    #[inline(always)]
    unsafe fn dpwssd(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        unsafe { _mm256_dpwssd_avx_epi32(acc, a, b) }
    }
}

impl ByteDot for Avx512VnniDot {
    const SIGNED_BIAS: i32 = 128;
    #[inline(always)]
    unsafe fn dpbusd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        unsafe { _mm256_dpbusd_epi32(acc, u, s) }
    }
    #[inline(always)]
    unsafe fn dpwssd(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        unsafe { _mm256_dpwssd_epi32(acc, a, b) }
    }
}

// ---- small helpers -------------------------------------------------------------

/// Horizontal sum of 8 floats.
#[inline(always)]
pub(super) unsafe fn hsum(v: __m256) -> f32 {
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }
}

/// The f16 at `p`, widened and broadcast to 8 lanes: `vpbroadcastw` + `vcvtph2ps`.
#[inline(always)]
pub(super) unsafe fn broadcast_f16(p: *const u8) -> __m256 {
    unsafe { _mm256_cvtph_ps(_mm_set1_epi16(p.cast::<i16>().read_unaligned())) }
}

/// 16 bytes of packed nibbles at `p` as 32 bytes: low nibbles first (elements
/// 0..16 of a Q4 block), then high nibbles (elements 16..32).
#[inline(always)]
pub(super) unsafe fn nibbles_32(p: *const u8) -> __m256i {
    unsafe {
        let packed = _mm_loadu_si128(p.cast());
        let both = _mm256_set_m128i(_mm_srli_epi16::<4>(packed), packed);
        _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
    }
}

#[inline(always)]
pub(super) unsafe fn load_256(p: *const i8) -> __m256i {
    unsafe { _mm256_loadu_si256(p.cast()) }
}

/// Reduces each tile accumulator to its lane sum.
#[inline(always)]
pub(super) unsafe fn finish<const RA: usize, const RW: usize>(acc: &[[__m256; RW]; RA]) -> [[f32; RW]; RA] {
    let mut out = [[0f32; RW]; RA];
    for i in 0..RA {
        for r in 0..RW {
            out[i][r] = unsafe { hsum(acc[i][r]) };
        }
    }
    out
}

// ---- entry points ------------------------------------------------------------------

/// A run of weight rows as the entry points read them: `count` rows of `row_bytes`
/// from `ptr`, each `units` blocks (or elements, for float formats).
#[derive(Clone, Copy)]
struct Rows {
    ptr: *const u8,
    row_bytes: usize,
    units: usize,
    count: usize,
}

/// Weight rows per decode tile: one pass over an activation row serves this many
/// weight rows (8 measured ~10% faster than 4; more runs out of registers).
const DECODE_TILE_ROWS: usize = 8;

/// Weight rows per tile of two activation rows: as many accumulators as a
/// decode tile (eight, Q4_1 sixteen).
const PAIR_TILE_ROWS: usize = 4;

/// For each body, one `#[target_feature]` function per instruction set and a
/// dispatcher over them. Each computes `out[i·stride + r]` for `RA` activation rows
/// and `rows` weight rows, tiling the weight rows by [`DECODE_TILE_ROWS`] when
/// `RA` is 1 (decode), by [`PAIR_TILE_ROWS`] when it is 2, and one at a time
/// otherwise (prefill: the `RA` activation rows already share each weight block),
/// the rows left over one at a time. The features listed are exactly what
/// `Kernel::is_available` checks.
macro_rules! entry_points {
    ($dispatch:ident, $ptrs:ty, $body:ident $(, $format:expr)?) => {
        /// Safety: `w` is valid as described on [`Rows`]; the activation pointers
        /// cover `w.units` each; `kernel` is available on this CPU. `out` is
        /// indexed (checked) up to `(RA − 1)·stride + w.count`.
        unsafe fn $dispatch<const RA: usize>(kernel: Kernel, w: Rows, acts: [$ptrs; RA], out: &mut [f32], stride: usize) {
            /// Tiles of `RW` weight rows from row `r` on, as many as fit;
            /// returns the first row left.
            #[inline(always)]
            unsafe fn tiles<D: ByteDot, const RA: usize, const RW: usize>(w: Rows, mut r: usize, acts: [$ptrs; RA], out: &mut [f32], stride: usize) -> usize {
                while r + RW <= w.count {
                    let first = unsafe { w.ptr.add(r * w.row_bytes) };
                    let tile = unsafe { $body::<D, $({ $format },)? RA, RW>(first, w.row_bytes, w.units, acts) };
                    for (i, tile) in tile.iter().enumerate() {
                        out[i * stride + r..i * stride + r + RW].copy_from_slice(tile);
                    }
                    r += RW;
                }
                r
            }
            #[inline(always)]
            unsafe fn run<D: ByteDot, const RA: usize>(w: Rows, acts: [$ptrs; RA], out: &mut [f32], stride: usize) {
                let r = match RA {
                    1 => unsafe { tiles::<D, RA, DECODE_TILE_ROWS>(w, 0, acts, out, stride) },
                    2 => unsafe { tiles::<D, RA, PAIR_TILE_ROWS>(w, 0, acts, out, stride) },
                    _ => 0,
                };
                unsafe { tiles::<D, RA, 1>(w, r, acts, out, stride) };
            }
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn avx2<const RA: usize>(w: Rows, acts: [$ptrs; RA], out: &mut [f32], stride: usize) {
                unsafe { run::<Avx2Dot, RA>(w, acts, out, stride) }
            }
            #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
            unsafe fn avxvnni<const RA: usize>(w: Rows, acts: [$ptrs; RA], out: &mut [f32], stride: usize) {
                unsafe { run::<AvxVnniDot, RA>(w, acts, out, stride) }
            }
            #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
            unsafe fn avx512vnni<const RA: usize>(w: Rows, acts: [$ptrs; RA], out: &mut [f32], stride: usize) {
                unsafe { run::<Avx512VnniDot, RA>(w, acts, out, stride) }
            }
            unsafe {
                match kernel {
                    Kernel::Avx2 => avx2::<RA>(w, acts, out, stride),
                    Kernel::AvxVnni => avxvnni::<RA>(w, acts, out, stride),
                    Kernel::Avx512Vnni => avx512vnni::<RA>(w, acts, out, stride),
                    Kernel::Scalar => unreachable!("the scalar kernel has no SIMD entry point"),
                }
            }
        }
    };
}

entry_points!(q4_0_rows, Q8Ptrs, grouped_q8_body, Q4_0);
entry_points!(q4_1_rows, Q8Ptrs, grouped_q8_body, Q4_1);
entry_points!(q8_0_rows, Q8Ptrs, grouped_q8_body, Q8_0);
entry_points!(q4_k_rows, Q8KPtrs, q45_k_body, false);
entry_points!(q5_k_rows, Q8KPtrs, q45_k_body, true);
entry_points!(q6_k_rows, Q8KPtrs, q6_k_body);
entry_points!(q4_k_i_rows, Q8KPtrs, q4_k_i_body);
entry_points!(q6_k_i_rows, Q8KPtrs, q6_k_i_body);
entry_points!(a6_rows, Q8Ptrs, affine_body, A6);
entry_points!(a8_rows, Q8Ptrs, affine_body, A8);
entry_points!(a6_i_rows, Q8Ptrs, a6_i_body);
entry_points!(f32_rows, *const f32, float_body, FLOAT_F32);
entry_points!(f16_rows, *const f32, float_body, FLOAT_F16);
entry_points!(bf16_rows, *const f32, float_body, FLOAT_BF16);

// ---- checked public functions ------------------------------------------------------

/// The activation rows of one call, by encoding.
pub(super) enum ActRows<'a> {
    F32(&'a [&'a [f32]]),
    Q8(&'a [Q8Row]),
    Q8K(&'a [Q8KRow]),
}

/// An entry point for `RA` activation rows at a time.
type RowsFn<P, const RA: usize> = unsafe fn(Kernel, Rows, [P; RA], &mut [f32], usize);

/// A body's entry points for tiles of 8 (where it has them), 4, 2 and 1
/// activation rows.
struct Tiles<P> {
    eight: Option<RowsFn<P, 8>>,
    four: RowsFn<P, 4>,
    two: RowsFn<P, 2>,
    one: RowsFn<P, 1>,
}

/// The [`Tiles`] of an `entry_points!` dispatcher; `eight` adds tiles of 8
/// activation rows, for bodies whose weight unpacking is worth sharing among
/// eight (Q6_K_I and A6_64_I, about 9% faster than tiles of 4 with the weights
/// in L2 on a prototype; Q4_K_I gained nothing).
macro_rules! tiles {
    ($dispatch:ident) => {
        Tiles {
            eight: None,
            four: $dispatch::<4>,
            two: $dispatch::<2>,
            one: $dispatch::<1>,
        }
    };
    ($dispatch:ident, eight) => {
        Tiles {
            eight: Some($dispatch::<8>),
            four: $dispatch::<4>,
            two: $dispatch::<2>,
            one: $dispatch::<1>,
        }
    };
}

/// Runs `tiles` over `acts`: whole groups of 8 activation rows (where the body
/// has them), then of 4, then a pair, then a single row, each with the output
/// from its first row on. (A batch of two or three decodes reads each weight
/// block once per pair, not per row.)
///
/// Safety: as the entry points', for every row of `acts`.
unsafe fn in_tiles<T, P>(
    kernel: Kernel,
    w: Rows,
    acts: &[T],
    ptrs: impl Fn(&T) -> P,
    out: &mut [f32],
    stride: usize,
    tiles: Tiles<P>,
) {
    let mut a = 0;
    unsafe {
        if let Some(eight) = tiles.eight {
            while a + 8 <= acts.len() {
                eight(
                    kernel,
                    w,
                    std::array::from_fn(|i| ptrs(&acts[a + i])),
                    &mut out[a * stride..],
                    stride,
                );
                a += 8;
            }
        }
        while a + 4 <= acts.len() {
            (tiles.four)(
                kernel,
                w,
                std::array::from_fn(|i| ptrs(&acts[a + i])),
                &mut out[a * stride..],
                stride,
            );
            a += 4;
        }
        if a + 2 <= acts.len() {
            (tiles.two)(
                kernel,
                w,
                std::array::from_fn(|i| ptrs(&acts[a + i])),
                &mut out[a * stride..],
                stride,
            );
            a += 2;
        }
        if a < acts.len() {
            (tiles.one)(kernel, w, [ptrs(&acts[a])], &mut out[a * stride..], stride);
        }
    }
}

/// `out[a·stride + r]` = dot of row `r` of `w` with activation row `a` of `acts`,
/// on a SIMD kernel.
///
/// Every length is checked here, once per call; the kernels run unchecked.
pub(super) fn dot_rows(kernel: Kernel, w: &QuantMatrix, acts: ActRows, out: &mut [f32], stride: usize) {
    assert!(
        kernel != Kernel::Scalar && kernel.is_available(),
        "{kernel:?} cannot run on this CPU"
    );
    if let Err(why) = w.validate() {
        panic!("malformed weights: {why}");
    }
    let format = w.format;
    let rows = Rows {
        ptr: w.data.as_ptr(),
        row_bytes: w.row_bytes(),
        units: w.cols / format.block_elems(),
        count: w.rows,
    };
    let act_count = match acts {
        ActRows::F32(a) => a.len(),
        ActRows::Q8(a) => a.len(),
        ActRows::Q8K(a) => a.len(),
    };
    if act_count == 0 || w.rows == 0 {
        return;
    }
    assert!(
        stride >= w.rows && out.len() >= (act_count - 1) * stride + w.rows,
        "output too small"
    );
    let units = rows.units;
    // Safety of every call below: weights, outputs and kernel checked above, the
    // activation rows against `units` in each arm.
    match acts {
        ActRows::Q8(acts) => {
            // One Q8 block of 32 per weight block, two per affine group of 64.
            let q8_blocks = w.cols / crate::quant::activation::Q8_BLOCK;
            let interleaved = format.natural() != format;
            assert!(
                acts.iter()
                    .all(|a| a.is_consistent() && a.blocks() == q8_blocks && a.interleaved == interleaved),
                "activations do not match the weights"
            );
            let tiles = match format {
                QuantFormat::Q4_0 => tiles!(q4_0_rows),
                QuantFormat::Q4_1 => tiles!(q4_1_rows),
                QuantFormat::Q8_0 => tiles!(q8_0_rows),
                QuantFormat::A6_64 => tiles!(a6_rows),
                QuantFormat::A8_64 => tiles!(a8_rows),
                QuantFormat::A6_64_I => tiles!(a6_i_rows, eight),
                other => panic!("{other} does not pair with Q8_0/Q8_1 activations"),
            };
            unsafe { in_tiles(kernel, rows, acts, Q8Ptrs::of, out, stride, tiles) };
        }
        ActRows::Q8K(acts) => {
            let interleaved = format.natural() != format;
            assert!(
                acts.iter()
                    .all(|a| a.is_consistent() && a.blocks() == units && a.interleaved == interleaved),
                "activations do not match the weights"
            );
            let tiles = match format {
                QuantFormat::Q4_K => tiles!(q4_k_rows),
                QuantFormat::Q5_K => tiles!(q5_k_rows),
                QuantFormat::Q6_K => tiles!(q6_k_rows),
                QuantFormat::Q4_K_I => tiles!(q4_k_i_rows),
                QuantFormat::Q6_K_I => tiles!(q6_k_i_rows, eight),
                other => panic!("{other} does not pair with Q8_K activations"),
            };
            unsafe { in_tiles(kernel, rows, acts, Q8KPtrs::of, out, stride, tiles) };
        }
        ActRows::F32(acts) => {
            assert!(
                acts.iter().all(|a| a.len() == units),
                "activations do not match the weights"
            );
            let tiles = match format {
                QuantFormat::F32 => tiles!(f32_rows),
                QuantFormat::F16 => tiles!(f16_rows),
                QuantFormat::BF16 => tiles!(bf16_rows),
                other => panic!("{other} is not a float format"),
            };
            unsafe { in_tiles(kernel, rows, acts, |a| a.as_ptr(), out, stride, tiles) };
        }
    }
}
