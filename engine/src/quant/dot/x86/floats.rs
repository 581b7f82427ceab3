//! F32, F16 and BF16 weights against f32 activation rows.

use std::arch::x86_64::*;

use super::{ByteDot, finish};

// ---- float weights against f32 rows ----------------------------------------------

/// F32 / F16 / BF16 weights against f32 activations: 8 elements per step, FMA.
/// (`D` is unused: it is there so that floats share the entry points' shape.)
///
/// Safety: `w` has `RW` rows of `row_bytes` = `k` × (4 or 2) bytes; each activation
/// row has `k` elements; the CPU has AVX2, FMA and F16C.
#[inline(always)]
pub(super) unsafe fn float_body<D: ByteDot, const FORMAT: u8, const RA: usize, const RW: usize>(
    w: *const u8,
    row_bytes: usize,
    k: usize,
    acts: [*const f32; RA],
) -> [[f32; RW]; RA] {
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); RW]; RA];
        let full = k / 8 * 8;
        let mut e = 0;
        while e < full {
            let mut x = [_mm256_setzero_ps(); RA];
            for i in 0..RA {
                x[i] = _mm256_loadu_ps(acts[i].add(e));
            }
            for r in 0..RW {
                let wv = load_8_floats::<FORMAT>(w.add(r * row_bytes), e);
                for i in 0..RA {
                    acc[i][r] = _mm256_fmadd_ps(wv, x[i], acc[i][r]);
                }
            }
            e += 8;
        }
        let mut out = finish(&acc);
        for e in full..k {
            for r in 0..RW {
                let wv = load_float::<FORMAT>(w.add(r * row_bytes), e);
                for i in 0..RA {
                    out[i][r] += wv * *acts[i].add(e);
                }
            }
        }
        out
    }
}

/// Elements `e..e + 8` of a float weight row, widened to f32.
#[inline(always)]
unsafe fn load_8_floats<const FORMAT: u8>(row: *const u8, e: usize) -> __m256 {
    unsafe {
        match FORMAT {
            FLOAT_F32 => _mm256_loadu_ps(row.add(4 * e).cast()),
            FLOAT_F16 => _mm256_cvtph_ps(_mm_loadu_si128(row.add(2 * e).cast())),
            // bf16 is the top half of an f32.
            _ => _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(
                row.add(2 * e).cast(),
            )))),
        }
    }
}

/// Element `e` of a float weight row.
#[inline(always)]
unsafe fn load_float<const FORMAT: u8>(row: *const u8, e: usize) -> f32 {
    use crate::quant::formats::{bf16_to_f32, f16_to_f32};
    unsafe {
        match FORMAT {
            FLOAT_F32 => row.add(4 * e).cast::<f32>().read_unaligned(),
            FLOAT_F16 => f16_to_f32(row.add(2 * e).cast::<[u8; 2]>().read_unaligned()),
            _ => bf16_to_f32(row.add(2 * e).cast::<[u8; 2]>().read_unaligned()),
        }
    }
}

pub(super) const FLOAT_F32: u8 = 0;
pub(super) const FLOAT_F16: u8 = 1;
pub(super) const FLOAT_BF16: u8 = 2;
