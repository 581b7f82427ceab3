//! Quantized matrix multiplication over GGUF-encoded weights, on the CPU.
//!
//! Burn's CPU backends dequantize a quantized weight on every matmul, which is
//! 80× slower than an f32 GEMV (see the engine notes), so linear layers run here
//! instead, on the weight bytes exactly as the GGUF file stores them.
//!
//! # How a matmul runs
//!
//! `y[m×n] = x[m×k] · Wᵀ`, W being `n` rows of `k` elements in one of the
//! [`QuantFormat`]s, the way llama.cpp's CPU backend does it, for the same numbers:
//!
//! 1. Each input row is quantized once to 8 bits, in the format the weight format
//!    pairs with ([`QuantFormat::activation_format`]): Q8_0 for Q4_0 and Q8_0, Q8_1
//!    (Q8_0 plus block sums) for Q4_1, Q8_K (blocks of 256) for the K-quants. Float
//!    weights keep f32 inputs. See [`activation`].
//! 2. Every output is an integer dot product per block, scaled by the product of the
//!    two blocks' scales, plus the offset terms (Q4_1's `m`, the K-quants' mins).
//!    See [`dot`]: a scalar reference, and AVX2 / VNNI kernels that compute tiles of
//!    several rows so that each load is used several times.
//! 3. Output columns are split across rayon threads ([`matmul()`]); each output is
//!    computed by one thread start to finish, so results do not depend on threading
//!    (nor on how many rows are in the batch: a prefill row equals the same row
//!    computed alone, bit for bit).
//!
//! # Threads: call from a rayon worker
//!
//! A caller outside the rayon pool hands a parallel job to the pool and sleeps
//! until it is done: 12–20 µs per call on the 2-core target, more than a whole
//! SmolLM2 GEMV. So from outside the pool only big matmuls (≥ 8 M multiply-adds:
//! the lm_head, prefill) go parallel. From a worker thread (the forward pass run
//! inside `rayon::scope` or `ThreadPool::install`), splitting costs well under a
//! microsecond, and everything from ~256 K multiply-adds up is split.
//!
//! # Where things are
//!
//! - [`formats`]: the block layouts (`#[repr(C)]`, size-checked) and [`QuantFormat`].
//! - [`interleave`]: Q4_K, Q6_K and A6_64 blocks reordered at load for the SIMD kernels.
//! - [`dequant`]: the reference decoding of each format to f32 (embedding lookups).
//! - [`activation`]: quantizing input rows.
//! - [`quantize`](mod@quantize): quantizing f32 weights at load, for checkpoints
//!   that are not GGUF (error-minimising searches as in llama.cpp).
//! - [`mlx`]: MLX's affine-quantized matrices, repacked into our blocks at load.
//! - [`dot`]: dot-product kernels and the run-time choice between them.
//! - [`matmul`](mod@matmul): tiling and threads.

pub mod activation;
pub mod dequant;
pub mod dot;
pub mod formats;
pub mod interleave;
pub mod matmul;
pub mod mlx;
pub mod quantize;

#[cfg(test)]
pub(crate) mod random;

pub use dot::Kernel;
pub use formats::{ActivationFormat, QuantFormat};
pub use matmul::{matmul, matmul_reference, matmul_with_kernel};
pub use quantize::quantize_matrix;

/// A weight matrix in GGUF layout: `rows` rows of `cols` elements, each row
/// `format.row_bytes(cols)` bytes, rows contiguous. For a linear layer, `rows` is the
/// number of outputs and `cols` the number of inputs (GGUF dims `[cols, rows]`).
#[derive(Debug, Clone, Copy)]
pub struct QuantMatrix<'a> {
    pub format: QuantFormat,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
}

impl<'a> QuantMatrix<'a> {
    /// Wraps `data`, checking that it is exactly `rows` whole rows of `cols` elements.
    pub fn new(format: QuantFormat, rows: usize, cols: usize, data: &'a [u8]) -> Result<QuantMatrix<'a>, String> {
        let matrix = QuantMatrix {
            format,
            rows,
            cols,
            data,
        };
        matrix.validate()?;
        Ok(matrix)
    }

    /// The checks of [`QuantMatrix::new`], for a matrix built from its public fields.
    pub fn validate(&self) -> Result<(), String> {
        let QuantMatrix {
            format,
            rows,
            cols,
            data,
        } = *self;
        let row_bytes = format.row_bytes(cols).ok_or_else(|| {
            format!(
                "{cols} columns is not a whole number of {format} blocks ({} elements each)",
                format.block_elems()
            )
        })?;
        let expected = row_bytes
            .checked_mul(rows)
            .ok_or_else(|| format!("{rows}×{cols} {format} overflows"))?;
        if data.len() != expected {
            return Err(format!(
                "{rows}×{cols} {format} takes {expected} bytes, got {}",
                data.len()
            ));
        }
        Ok(())
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.format.row_bytes(self.cols).unwrap_or(0)
    }

    /// The bytes of row `r`.
    ///
    /// # Panics
    /// If `r >= rows`.
    pub fn row(&self, r: usize) -> &'a [u8] {
        assert!(r < self.rows, "row {r} of a {}-row matrix", self.rows);
        let row_bytes = self.row_bytes();
        &self.data[r * row_bytes..(r + 1) * row_bytes]
    }

    /// Decodes row `r` into `out` (`cols` values), exactly as ggml would.
    ///
    /// # Panics
    /// If `r >= rows` or `out.len() != cols`.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        assert_eq!(out.len(), self.cols, "a row has {} values", self.cols);
        dequant::dequantize_row(self.format, self.row(r), out);
    }
}

/// The name of the kernel [`matmul()`] uses on this machine: `"avx512vnni"`,
/// `"avxvnni"`, `"avx2"` or `"scalar"`.
pub fn kernel_name() -> &'static str {
    Kernel::selected().name()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_accepts_exactly_the_right_size() {
        let data = vec![0u8; 3 * 18 * 20];
        let w = QuantMatrix::new(QuantFormat::Q4_1, 3, 576, &data).unwrap();
        assert_eq!(w.row_bytes(), 360);
        assert_eq!(w.row(2).len(), 360);
    }

    #[test]
    fn new_rejects_malformed_data() {
        let data = vec![0u8; 3 * 360];
        // One byte short, one byte long.
        assert!(QuantMatrix::new(QuantFormat::Q4_1, 3, 576, &data[1..]).is_err());
        assert!(QuantMatrix::new(QuantFormat::Q4_1, 3, 576, &[&data[..], &[0]].concat()).is_err());
        // Columns not a whole number of blocks.
        let err = QuantMatrix::new(QuantFormat::Q4_1, 3, 570, &data).unwrap_err();
        assert!(err.contains("whole number"), "{err}");
        assert!(QuantMatrix::new(QuantFormat::Q6_K, 1, 128, &data).is_err());
        // Sizes that overflow are errors, not panics.
        assert!(QuantMatrix::new(QuantFormat::F32, usize::MAX, 2, &data).is_err());
        assert!(QuantMatrix::new(QuantFormat::Q8_0, usize::MAX / 2, 32 * 1024, &data).is_err());
        // A wrong format for the bytes: Q8_0 rows of 576 are 612 bytes.
        assert!(QuantMatrix::new(QuantFormat::Q8_0, 3, 576, &data).is_err());
    }

    #[test]
    fn dequantize_row_reads_the_requested_row() {
        // Two Q8_0 rows of one block: row 1 has d = 1.0 and q = 0..32.
        let mut data = vec![0u8; 2 * 34];
        data[34..36].copy_from_slice(&[0x00, 0x3C]);
        for q in 0..32 {
            data[36 + q] = q as u8;
        }
        let w = QuantMatrix::new(QuantFormat::Q8_0, 2, 32, &data).unwrap();
        let mut out = [0f32; 32];
        w.dequantize_row(1, &mut out);
        assert_eq!(out[31], 31.0);
        w.dequantize_row(0, &mut out);
        assert_eq!(out, [0.0; 32]);
    }

    #[test]
    fn kernel_name_is_one_of_the_kernels() {
        assert!(Kernel::ALL.iter().any(|k| k.name() == kernel_name()));
    }
}
