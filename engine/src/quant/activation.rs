//! Quantizing an input (activation) row before the integer dot products.
//!
//! llama.cpp's CPU backend never multiplies quantized weights by f32: it first
//! quantizes the input row to 8 bits (`vec_dot_type`), then runs integer dot products
//! block by block. We do the same, with the same rounding, so that our logits match
//! llama.cpp's to within float summation order:
//!
//! - [`Q8Row`] holds Q8_0 numbers (blocks of 32, scale `amax / 127` stored as f16)
//!   and Q8_1's extra `s = d·Σq` (also f16), which the Q4_1 kernel needs for the `m`
//!   offset. It follows the x86 build of ggml (`quantize_row_q8_0`/`_q8_1` in
//!   `ggml-cpu/arch/x86/quants.c`): multiply by `127 / amax`, round half to even.
//! - [`Q8KRow`] holds Q8_K numbers (blocks of 256, f32 scale, sums of each 16) for the
//!   K-quants, following `quantize_row_q8_K_ref`: scale by `−127 / max` where `max` is
//!   the signed value of largest magnitude, round half to even, clamp at 127.
//!
//! The layout in memory is ours, not ggml's: separate arrays for quants, scales and
//! sums, so the kernels load 32 quants with one vector load and read scales as plain
//! f32 (already rounded through f16 where ggml stores f16, so the numbers are
//! ggml's). [`Q8Row`] also keeps a second arrangement of the same numbers,
//! [`Q8Groups`], for the SIMD kernels that work on eight blocks at a time.

use super::formats::round_to_f16;

/// Elements per Q8_0/Q8_1 block.
pub const Q8_BLOCK: usize = 32;
/// Elements per Q8_K block.
pub const Q8K_BLOCK: usize = 256;
/// Elements per Q8_K partial sum.
pub const Q8K_SUM_GROUP: usize = 16;

/// Rounds half to even, like `_mm256_round_ps(_MM_ROUND_NEAREST)` and ggml's
/// `nearest_int`. Adding and subtracting 1.5·2²³ leaves the integer part in the
/// mantissa under the default rounding mode; valid for |v| < 2²², and ours are
/// at most about 127. Written this way (not `round_ties_even`) because it
/// vectorizes on baseline x86-64, where `roundps` is not available.
#[inline(always)]
pub(crate) fn round_half_even(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

/// The largest |x| of a block (a multiple of 8 long), computed in 8 lanes so that
/// it vectorizes.
#[inline(always)]
pub(crate) fn max_abs(x: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    for chunk in x.chunks_exact(8) {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            let a = v.abs();
            *lane = if a > *lane { a } else { *lane };
        }
    }
    lanes.into_iter().fold(0f32, |m, v| if v > m { v } else { m })
}

/// Blocks per group in [`Q8Groups`].
pub const GROUP_BLOCKS: usize = 8;

/// The order of the blocks within a group of [`Q8Groups`]: the order in which three
/// rounds of pairwise horizontal adds (`vphaddd`) leave the sums of eight blocks
/// whose partial sums sit two blocks to a register.
pub const GROUP_ORDER: [usize; GROUP_BLOCKS] = [0, 2, 4, 6, 1, 3, 5, 7];

/// The whole groups of eight blocks of a [`Q8Row`], rearranged for the SIMD kernels
/// (the scalar reference reads [`Q8Row`] as is). Same numbers, different places:
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Q8Groups {
    /// Per pair of blocks (64 bytes): elements 0..16 of both blocks, then elements
    /// 16..32 of both. A Q4 weight register loaded from two blocks' 16 packed bytes
    /// unpacks into exactly this order (low nibbles, then high nibbles).
    pub qs: Vec<i8>,
    /// Per group: the blocks' `d` in [`GROUP_ORDER`].
    pub d: Vec<f32>,
    /// Per group: the blocks' `s` in [`GROUP_ORDER`].
    pub s: Vec<f32>,
    /// Per group: the blocks' Σq in [`GROUP_ORDER`].
    pub sum: Vec<i32>,
}

impl Q8Groups {
    /// Number of whole groups.
    pub fn groups(&self) -> usize {
        self.d.len() / GROUP_BLOCKS
    }
}

/// The interleaving of [`Q8Row::interleave`] and [`Q8KRow::interleave`]: `qs`
/// reordered ([`super::interleave::interleave_activations`]) and the row's flag set.
fn interleave_quants(qs: &mut [i8], interleaved: &mut bool) {
    assert!(!*interleaved, "the row is interleaved already");
    super::interleave::interleave_activations(qs);
    *interleaved = true;
}

/// An input row as Q8_0/Q8_1 blocks of 32.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Q8Row {
    /// The quants, one per element, in −127..=127.
    pub qs: Vec<i8>,
    /// Per block: `d = amax / 127`, rounded to f16 as ggml stores it, widened.
    pub d: Vec<f32>,
    /// Per block: Q8_1's `s = d·Σq` (with the unrounded `d`), rounded to f16, widened.
    pub s: Vec<f32>,
    /// Per block: Σq, exact, for offset corrections in the integer domain.
    pub sum: Vec<i32>,
    /// The first `blocks / 8 · 8` blocks again, arranged for the SIMD kernels.
    pub groups: Q8Groups,
    /// Whether `qs` are in the interleaved order of [`super::interleave`], each 256
    /// elements (eight blocks) at a time; the per-block arrays and `groups` stay
    /// in order either way.
    pub interleaved: bool,
}

impl Q8Row {
    /// A row from its per-block numbers (tests build rows with chosen values).
    pub fn from_parts(qs: Vec<i8>, d: Vec<f32>, s: Vec<f32>, sum: Vec<i32>) -> Q8Row {
        let mut row = Q8Row {
            qs,
            d,
            s,
            sum,
            groups: Q8Groups::default(),
            interleaved: false,
        };
        assert!(row.is_consistent_ungrouped(), "inconsistent Q8 row parts");
        row.regroup();
        row
    }

    /// Rebuilds [`Q8Row::groups`] from the per-block arrays.
    fn regroup(&mut self) {
        let groups = self.blocks() / GROUP_BLOCKS;
        let g = &mut self.groups;
        g.qs.clear();
        for pair in self.qs[..groups * GROUP_BLOCKS * Q8_BLOCK].chunks_exact(2 * Q8_BLOCK) {
            // [b0 0..16, b0 16..32, b1 0..16, b1 16..32] → [b0 0..16, b1 0..16, b0 16..32, b1 16..32]
            g.qs.extend_from_slice(&pair[0..16]);
            g.qs.extend_from_slice(&pair[32..48]);
            g.qs.extend_from_slice(&pair[16..32]);
            g.qs.extend_from_slice(&pair[48..64]);
        }
        let reorder = |values: &[f32], out: &mut Vec<f32>| {
            out.clear();
            for group in values[..groups * GROUP_BLOCKS].chunks_exact(GROUP_BLOCKS) {
                out.extend(GROUP_ORDER.iter().map(|&j| group[j]));
            }
        };
        reorder(&self.d, &mut g.d);
        reorder(&self.s, &mut g.s);
        g.sum.clear();
        for group in self.sum[..groups * GROUP_BLOCKS].chunks_exact(GROUP_BLOCKS) {
            g.sum.extend(GROUP_ORDER.iter().map(|&j| group[j]));
        }
    }

    /// Quantizes `x`, whose length must be a multiple of 32.
    pub fn quantize(x: &[f32]) -> Q8Row {
        let mut row = Q8Row::default();
        row.quantize_from(x);
        row
    }

    /// Quantizes `x` (whole blocks of 256) into this row, reusing its buffers,
    /// with the quants in the interleaved order ([`super::interleave`]).
    pub fn quantize_interleaved_from(&mut self, x: &[f32]) {
        self.quantize_from(x);
        self.interleave();
    }

    /// Puts the quants of a row in order in the interleaved order.
    ///
    /// # Panics
    /// If they already are, or the row is no whole number of 256s.
    pub fn interleave(&mut self) {
        interleave_quants(&mut self.qs, &mut self.interleaved);
    }

    /// Quantizes `x` into this row, reusing its buffers.
    pub fn quantize_from(&mut self, x: &[f32]) {
        self.interleaved = false;
        assert!(
            x.len().is_multiple_of(Q8_BLOCK),
            "a Q8 row needs whole blocks of {Q8_BLOCK}, got {}",
            x.len()
        );
        let blocks = x.len() / Q8_BLOCK;
        self.qs.resize(x.len(), 0);
        self.d.resize(blocks, 0.0);
        self.s.resize(blocks, 0.0);
        self.sum.resize(blocks, 0);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("f16c") {
            // Safety: AVX2 and F16C were just detected.
            unsafe { x86::quantize_q8_blocks(x, &mut self.qs, &mut self.d, &mut self.s, &mut self.sum) };
            self.regroup();
            return;
        }
        quantize_q8_blocks(x, &mut self.qs, &mut self.d, &mut self.s, &mut self.sum);
        self.regroup();
    }

    /// Number of 32-element blocks.
    pub fn blocks(&self) -> usize {
        self.d.len()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.qs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.qs.is_empty()
    }

    /// Whether the arrays agree with each other (the kernels' precondition).
    pub fn is_consistent(&self) -> bool {
        let groups = self.blocks() / GROUP_BLOCKS;
        let g = &self.groups;
        self.is_consistent_ungrouped()
            && g.qs.len() == groups * GROUP_BLOCKS * Q8_BLOCK
            && g.d.len() == groups * GROUP_BLOCKS
            && g.s.len() == groups * GROUP_BLOCKS
            && g.sum.len() == groups * GROUP_BLOCKS
    }

    fn is_consistent_ungrouped(&self) -> bool {
        let blocks = self.d.len();
        self.qs.len() == blocks * Q8_BLOCK && self.s.len() == blocks && self.sum.len() == blocks
    }
}

/// The scalar quantizer behind [`Q8Row::quantize`]; the x86 one must match it bit
/// for bit (tested).
fn quantize_q8_blocks(x: &[f32], qs: &mut [i8], ds: &mut [f32], ss: &mut [f32], sums: &mut [i32]) {
    for (b, (x, qs)) in x.chunks_exact(Q8_BLOCK).zip(qs.chunks_exact_mut(Q8_BLOCK)).enumerate() {
        let amax = max_abs(x);
        let d = amax / 127.0;
        let inverse = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in qs.iter_mut().zip(x) {
            // In range by construction (|v·inverse| <= 127 up to rounding).
            let rounded = round_half_even(v * inverse) as i32;
            *q = rounded as i8;
            sum += rounded;
        }
        ds[b] = round_to_f16(d);
        ss[b] = round_to_f16(d * sum as f32);
        sums[b] = sum;
    }
}

/// Quantizes one Q8_K block, returning its scale; the scalar reference for the
/// x86 version, which must match it bit for bit (tested).
fn quantize_q8k_block(x: &[f32; Q8K_BLOCK], qs: &mut [i8; Q8K_BLOCK]) -> f32 {
    // ggml scales by the *signed* extreme (the first of largest magnitude) so that
    // it maps to exactly −127.
    let amax = max_abs(x);
    if amax == 0.0 {
        qs.fill(0);
        return 0.0;
    }
    let max = x.iter().copied().find(|v| v.abs() == amax).unwrap_or(0.0);
    let iscale = -127.0 / max;
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = (round_half_even(iscale * v) as i32).min(127) as i8;
    }
    1.0 / iscale
}

/// An input row as Q8_K blocks of 256.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Q8KRow {
    /// The quants, one per element, in −127..=127.
    pub qs: Vec<i8>,
    /// Per block: the f32 scale `1 / iscale` (0 for an all-zero block).
    pub d: Vec<f32>,
    /// Per 16 elements: Σq. Used for the K-quants' mins and Q6_K's −32 offset.
    pub bsums: Vec<i16>,
    /// Whether each block's `qs` are in the interleaved order of the `_I` weight
    /// formats ([`super::interleave`]); `bsums` are in ggml's order either way.
    pub interleaved: bool,
}

impl Q8KRow {
    /// Quantizes `x`, whose length must be a multiple of 256.
    pub fn quantize(x: &[f32]) -> Q8KRow {
        let mut row = Q8KRow::default();
        row.quantize_from(x);
        row
    }

    /// Quantizes `x` into this row, reusing its buffers, with the quants in the
    /// interleaved order ([`super::interleave`]).
    pub fn quantize_interleaved_from(&mut self, x: &[f32]) {
        self.quantize_from(x);
        self.interleave();
    }

    /// Puts the quants of a row in ggml's order in the interleaved order.
    ///
    /// # Panics
    /// If they already are.
    pub fn interleave(&mut self) {
        interleave_quants(&mut self.qs, &mut self.interleaved);
    }

    /// Quantizes `x` into this row, reusing its buffers.
    pub fn quantize_from(&mut self, x: &[f32]) {
        self.interleaved = false;
        assert!(
            x.len().is_multiple_of(Q8K_BLOCK),
            "a Q8_K row needs whole blocks of {Q8K_BLOCK}, got {}",
            x.len()
        );
        let blocks = x.len() / Q8K_BLOCK;
        self.qs.resize(x.len(), 0);
        self.d.resize(blocks, 0.0);
        self.bsums.resize(x.len() / Q8K_SUM_GROUP, 0);
        #[cfg(target_arch = "x86_64")]
        let simd = std::arch::is_x86_feature_detected!("avx2");
        for (b, (x, qs)) in x
            .chunks_exact(Q8K_BLOCK)
            .zip(self.qs.chunks_exact_mut(Q8K_BLOCK))
            .enumerate()
        {
            let x: &[f32; Q8K_BLOCK] = x.try_into().expect("chunks_exact");
            let qs: &mut [i8; Q8K_BLOCK] = qs.try_into().expect("chunks_exact");
            #[cfg(target_arch = "x86_64")]
            if simd {
                // Safety: AVX2 was detected.
                self.d[b] = unsafe { x86::quantize_q8k_block(x, qs) };
            } else {
                self.d[b] = quantize_q8k_block(x, qs);
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                self.d[b] = quantize_q8k_block(x, qs);
            }
            let sums = &mut self.bsums[b * (Q8K_BLOCK / Q8K_SUM_GROUP)..(b + 1) * (Q8K_BLOCK / Q8K_SUM_GROUP)];
            for (sum, group) in sums.iter_mut().zip(qs.chunks_exact(Q8K_SUM_GROUP)) {
                *sum = group.iter().map(|&q| q as i16).sum();
            }
        }
    }

    /// Number of 256-element blocks.
    pub fn blocks(&self) -> usize {
        self.d.len()
    }

    /// Whether the arrays agree with each other (the kernels' precondition).
    pub fn is_consistent(&self) -> bool {
        let blocks = self.d.len();
        self.qs.len() == blocks * Q8K_BLOCK && self.bsums.len() == blocks * (Q8K_BLOCK / Q8K_SUM_GROUP)
    }
}

/// The Q8 quantizer with AVX2: the same arithmetic as the scalar one, 8 lanes at a
/// time. `_mm256_round_ps` to nearest rounds half to even, like `round_half_even`.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Q8_BLOCK, Q8K_BLOCK};

    /// The largest |v|. `maxps` returns its second operand when either is NaN, so the
    /// running maximum goes second and NaNs are skipped, as in the scalar `max_abs`.
    #[inline(always)]
    unsafe fn max_abs(v: &[__m256]) -> f32 {
        unsafe {
            let sign = _mm256_set1_ps(-0.0);
            let mut lanes = _mm256_setzero_ps();
            for &v in v {
                lanes = _mm256_max_ps(_mm256_andnot_ps(sign, v), lanes);
            }
            let m = _mm_max_ps(_mm256_extractf128_ps::<1>(lanes), _mm256_castps256_ps128(lanes));
            let m = _mm_max_ps(_mm_movehl_ps(m, m), m);
            _mm_cvtss_f32(_mm_max_ss(_mm_movehdup_ps(m), m))
        }
    }

    /// `round_half_even(v · scale)` as i32 lanes.
    #[inline(always)]
    unsafe fn scale_round(v: __m256, scale: __m256) -> __m256i {
        unsafe {
            _mm256_cvtps_epi32(_mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm256_mul_ps(v, scale),
            ))
        }
    }

    /// 32 i32 lanes as 32 i8 in element order, saturating (`vpacks*` work per
    /// 128-bit lane; the permute restores the order).
    #[inline(always)]
    unsafe fn pack_32(q: [__m256i; 4]) -> __m256i {
        unsafe {
            let packed = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
            _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
        }
    }

    /// As `quantize_q8k_block`. The clamp at 127 is the packing's saturation.
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn quantize_q8k_block(x: &[f32; Q8K_BLOCK], qs: &mut [i8; Q8K_BLOCK]) -> f32 {
        // Safety: the arrays are exactly one block; every access is within them.
        unsafe {
            let v: [__m256; 32] = std::array::from_fn(|j| _mm256_loadu_ps(x.as_ptr().add(8 * j)));
            let amax = max_abs(&v);
            if amax == 0.0 {
                qs.fill(0);
                return 0.0;
            }
            // The first element of largest magnitude, with its sign.
            let target = _mm256_set1_ps(amax);
            let sign = _mm256_set1_ps(-0.0);
            let mut max = 0.0;
            for (j, &v) in v.iter().enumerate() {
                let hits = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(_mm256_andnot_ps(sign, v), target));
                if hits != 0 {
                    max = x[8 * j + hits.trailing_zeros() as usize];
                    break;
                }
            }
            let iscale = -127.0 / max;
            let scale = _mm256_set1_ps(iscale);
            for c in 0..Q8K_BLOCK / 32 {
                let q = std::array::from_fn(|j| scale_round(v[4 * c + j], scale));
                _mm256_storeu_si256(qs.as_mut_ptr().add(32 * c).cast(), pack_32(q));
            }
            1.0 / iscale
        }
    }

    /// As `quantize_q8_blocks`.
    ///
    /// # Safety
    /// The CPU has AVX2 and F16C.
    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn quantize_q8_blocks(
        x: &[f32],
        qs: &mut [i8],
        ds: &mut [f32],
        ss: &mut [f32],
        sums: &mut [i32],
    ) {
        let blocks = x.len() / Q8_BLOCK;
        assert!(qs.len() == x.len() && ds.len() == blocks && ss.len() == blocks && sums.len() == blocks);
        assert_eq!(blocks * Q8_BLOCK, x.len());
        for b in 0..blocks {
            // Safety: block b's 32 floats and 32 quants are in bounds (checked above).
            unsafe {
                let p = x.as_ptr().add(Q8_BLOCK * b);
                let v = [
                    _mm256_loadu_ps(p),
                    _mm256_loadu_ps(p.add(8)),
                    _mm256_loadu_ps(p.add(16)),
                    _mm256_loadu_ps(p.add(24)),
                ];
                let amax = max_abs(&v);
                let d = amax / 127.0;
                let inverse = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
                let q = v.map(|v| scale_round(v, inverse));
                let total = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
                let t = _mm_add_epi32(_mm256_castsi256_si128(total), _mm256_extracti128_si256::<1>(total));
                let t = _mm_add_epi32(t, _mm_unpackhi_epi64(t, t));
                let sum = _mm_cvtsi128_si32(_mm_add_epi32(t, _mm_shuffle_epi32::<0b01>(t)));
                _mm256_storeu_si256(qs.as_mut_ptr().add(Q8_BLOCK * b).cast(), pack_32(q));
                // Round d and d·Σq to f16 and back in one conversion each way
                // (`vcvtps2ph` rounds to nearest even, as `round_to_f16` does).
                let pair = _mm_cvtph_ps(_mm_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT }>(_mm_setr_ps(
                    d,
                    d * sum as f32,
                    0.0,
                    0.0,
                )));
                ds[b] = _mm_cvtss_f32(pair);
                ss[b] = _mm_cvtss_f32(_mm_movehdup_ps(pair));
                sums[b] = sum;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_q8_quantizer_matches_the_scalar_one_bit_for_bit() {
        if !(std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("f16c")) {
            return;
        }
        let mut x: Vec<f32> = (0..32 * 40)
            .map(|i| ((i * 7919 % 2003) as f32 - 1001.0) * 0.013)
            .collect();
        x[..32].fill(0.0); // an all-zero block
        for (i, v) in x[32..64].iter_mut().enumerate() {
            *v = (i as f32 - 16.0) * 0.5; // exact halves after scaling: ties to even
        }
        x[100] = 1e-30; // tiny values
        let blocks = x.len() / 32;
        let mut scalar = (
            vec![0i8; x.len()],
            vec![0f32; blocks],
            vec![0f32; blocks],
            vec![0i32; blocks],
        );
        quantize_q8_blocks(&x, &mut scalar.0, &mut scalar.1, &mut scalar.2, &mut scalar.3);
        let mut simd = (
            vec![0i8; x.len()],
            vec![0f32; blocks],
            vec![0f32; blocks],
            vec![0i32; blocks],
        );
        // Safety: AVX2 and F16C detected above.
        unsafe { x86::quantize_q8_blocks(&x, &mut simd.0, &mut simd.1, &mut simd.2, &mut simd.3) };
        assert_eq!(scalar, simd);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_q8k_quantizer_matches_the_scalar_one_bit_for_bit() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        let mut blocks: Vec<[f32; 256]> = Vec::new();
        blocks.push([0.0; 256]);
        blocks.push(std::array::from_fn(|i| ((i * 7919 % 2003) as f32 - 1001.0) * 0.013));
        // Equal magnitudes of both signs: the first one decides the sign of the scale.
        blocks.push(std::array::from_fn(|i| {
            if i == 40 {
                -3.0
            } else if i == 90 {
                3.0
            } else {
                (i as f32 - 128.0) * 0.01
            }
        }));
        blocks.push(std::array::from_fn(|i| {
            if i == 255 { 5.0 } else { (i % 7) as f32 * 0.5 - 1.5 }
        }));
        for x in &blocks {
            let (mut scalar, mut simd) = ([0i8; 256], [0i8; 256]);
            let d_scalar = quantize_q8k_block(x, &mut scalar);
            // Safety: AVX2 detected above.
            let d_simd = unsafe { x86::quantize_q8k_block(x, &mut simd) };
            assert_eq!((d_scalar, scalar), (d_simd, simd));
        }
        assert_eq!(Q8KRow::quantize(&blocks[2]).qs[40], -127);
    }

    #[test]
    fn round_half_even_matches_the_std_rounding() {
        for v in [-127.5f32, -2.5, -1.5, -0.5, 0.0, 0.49, 0.5, 1.5, 2.5, 126.5, 127.0] {
            assert_eq!(round_half_even(v), v.round_ties_even(), "{v}");
        }
    }

    #[test]
    fn q8_maps_the_block_maximum_to_127() {
        let mut x: Vec<f32> = (0..64).map(|i| (i as f32 - 20.0) * 0.1).collect();
        x[40] = -9.0; // second block's extreme is negative
        let row = Q8Row::quantize(&x);
        assert_eq!(row.blocks(), 2);
        assert_eq!(row.qs[0], -127); // -2.0 is the largest |x| of block 0 (x[0])
        assert_eq!(row.qs[40], -127);
        assert_eq!(row.d[0], round_to_f16(2.0 / 127.0));
        assert_eq!(row.d[1], round_to_f16(9.0 / 127.0));
        // x[20] = 0 quantizes to 0; x[25] = 0.5 → 0.5·127/2 = 31.75 → 32.
        assert_eq!(row.qs[20], 0);
        assert_eq!(row.qs[25], 32);
    }

    #[test]
    fn q8_sums_are_the_block_sums_of_the_quants() {
        let x: Vec<f32> = (0..96).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.37).collect();
        let row = Q8Row::quantize(&x);
        for b in 0..3 {
            let sum: i32 = row.qs[32 * b..32 * b + 32].iter().map(|&q| q as i32).sum();
            assert_eq!(row.sum[b], sum);
            let amax = x[32 * b..32 * b + 32].iter().fold(0f32, |m, v| m.max(v.abs()));
            assert_eq!(row.s[b], round_to_f16(amax / 127.0 * sum as f32));
        }
    }

    #[test]
    fn q8_groups_hold_the_same_numbers_in_kernel_order() {
        let x: Vec<f32> = (0..32 * 17).map(|i| ((i * 29 % 31) as f32 - 15.0) * 0.1).collect();
        let row = Q8Row::quantize(&x);
        assert_eq!(row.groups.groups(), 2); // 17 blocks: two whole groups, one left over
        assert!(row.is_consistent());
        // Block 9 is the second block of the pair starting at block 8 (group 1, pair 0).
        let paired = &row.groups.qs[8 * 32..10 * 32];
        assert_eq!(&paired[16..32], &row.qs[9 * 32..9 * 32 + 16]);
        assert_eq!(&paired[48..64], &row.qs[9 * 32 + 16..10 * 32]);
        // Group 1 in GROUP_ORDER: blocks 8, 10, 12, 14, 9, 11, 13, 15.
        assert_eq!(row.groups.d[8 + 4], row.d[9]);
        assert_eq!(row.groups.sum[8 + 1], row.sum[10]);
        assert_eq!(row.groups.s[8 + 7], row.s[15]);
    }

    #[test]
    fn q8_of_zeros_is_zero() {
        let row = Q8Row::quantize(&[0.0; 32]);
        assert!(row.qs.iter().all(|&q| q == 0));
        assert_eq!((row.d[0], row.s[0], row.sum[0]), (0.0, 0.0, 0));
    }

    #[test]
    fn q8k_maps_the_signed_extreme_to_minus_127() {
        let mut x: Vec<f32> = (0..256).map(|i| (i as f32 - 100.0) * 0.01).collect();
        x[7] = 3.0;
        let row = Q8KRow::quantize(&x);
        assert_eq!(row.qs[7], -127);
        assert_eq!(row.d[0], 1.0 / (-127.0 / 3.0));
        // Element 100 is 0; element 0 is -1.0 → -127/3·-1 = 42.33 → 42.
        assert_eq!(row.qs[100], 0);
        assert_eq!(row.qs[0], 42);
        for g in 0..16 {
            let sum: i16 = row.qs[16 * g..16 * g + 16].iter().map(|&q| q as i16).sum();
            assert_eq!(row.bsums[g], sum);
        }
    }

    #[test]
    fn q8k_of_zeros_has_zero_scale_and_sums() {
        let row = Q8KRow::quantize(&[0.0; 512]);
        assert_eq!(row.d, [0.0, 0.0]);
        assert!(row.bsums.iter().all(|&s| s == 0));
    }
}
