//! MLX's affine quantization, as mlx-lm writes it (`mlx.core.quantize`, mode
//! `affine`), repacked at load into blocks our kernels read.
//!
//! MLX stores a quantized `[out, in]` matrix as three arrays:
//! - `weight`: `uint32 [out, in·bits/32]`, each row a little-endian bit stream
//!   in which element j occupies bits `j·bits .. (j+1)·bits`;
//! - `scales`, `biases`: `[out, in/group]` in the model's dtype (f16 or bf16);
//!
//! and element j of a row is `scales[j/group]·q_j + biases[j/group]`. Groups run
//! along the input axis, as our blocks do, so each group maps onto blocks of ours
//! with the same `q`, scale and bias:
//!
//! | MLX bits | groups of | ours |
//! |---|---|---|
//! | 4 | 32, 64, 128 | [`QuantFormat::Q4_1`] (`d·q + m` per 32) |
//! | 6 | 64, 128 | [`QuantFormat::A6_64`] |
//! | 8 | 64, 128 | [`QuantFormat::A8_64`] |
//!
//! The quants move bit for bit. Scales and biases are stored as f16 in our
//! blocks: exact for f16 sources, and for bf16 sources whenever the value is
//! zero or at least 2⁻¹⁴ in magnitude (bf16's 8 significant bits fit f16's 11).
//! Smaller values become f16 subnormals, off by at most 2⁻²⁵ absolute: for a
//! scale, at most 2⁻²⁵·(2^bits − 1) on a weight.

use half::{bf16, f16};

use super::QuantFormat;
use super::formats::{BlockA6_64, BlockA8_64, BlockQ4_1, F16Bytes, GgmlBlock};

/// The dtype of MLX's `scales` and `biases`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleType {
    F16,
    BF16,
    F32,
}

impl ScaleType {
    fn bytes(self) -> usize {
        match self {
            ScaleType::F16 | ScaleType::BF16 => 2,
            ScaleType::F32 => 4,
        }
    }

    fn read(self, bytes: &[u8], i: usize) -> f32 {
        match self {
            ScaleType::F16 => f16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32(),
            ScaleType::BF16 => bf16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32(),
            ScaleType::F32 => f32::from_le_bytes([bytes[4 * i], bytes[4 * i + 1], bytes[4 * i + 2], bytes[4 * i + 3]]),
        }
    }
}

/// One MLX-quantized matrix, borrowed from its file.
pub struct MlxMatrix<'a> {
    pub bits: usize,
    pub group: usize,
    pub rows: usize,
    pub cols: usize,
    /// `weight`: `rows · cols·bits/8` bytes.
    pub packed: &'a [u8],
    pub scales: &'a [u8],
    pub biases: &'a [u8],
    pub scale_type: ScaleType,
}

/// What [`repack`] supports, for messages.
pub const SUPPORTED: &str = "4-bit in groups of 32, 64 or 128; 6- and 8-bit in groups of 64 or 128";

/// The format MLX's `bits`/`group` repack into; an error says what is supported.
pub fn format_for(bits: usize, group: usize) -> Result<QuantFormat, String> {
    match (bits, group) {
        (4, 32 | 64 | 128) => Ok(QuantFormat::Q4_1),
        (6, 64 | 128) => Ok(QuantFormat::A6_64),
        (8, 64 | 128) => Ok(QuantFormat::A8_64),
        _ => Err(format!(
            "MLX {bits}-bit quantization in groups of {group} has no kernel here (supported: {SUPPORTED})"
        )),
    }
}

/// Element `j` of a little-endian bit stream of `bits`-wide fields.
#[inline(always)]
fn field(stream: &[u8], j: usize, bits: usize) -> u8 {
    let at = j * bits;
    let (byte, shift) = (at / 8, at % 8);
    let mut window = stream[byte] as u16;
    if shift + bits > 8 {
        window |= (stream[byte + 1] as u16) << 8;
    }
    ((window >> shift) & ((1u16 << bits) - 1)) as u8
}

fn to_f16(value: f32) -> F16Bytes {
    f16::from_f32(value).to_le_bytes()
}

/// Repacks `m` into its format of ours (see [`format_for`]): the bytes of
/// `m.rows` rows of `m.cols` elements.
///
/// # Errors
/// An unsupported `bits`/`group`, or arrays whose sizes do not fit the shape.
pub fn repack(m: &MlxMatrix) -> Result<Vec<u8>, String> {
    let format = format_for(m.bits, m.group)?;
    if !m.cols.is_multiple_of(m.group) {
        return Err(format!("{} columns are not whole groups of {}", m.cols, m.group));
    }
    let packed_row = m.cols * m.bits / 8;
    let groups = m.cols / m.group;
    let scale_row = groups * m.scale_type.bytes();
    if m.packed.len() != m.rows * packed_row {
        return Err(format!(
            "the packed weight has {} bytes, {} rows of {} {}-bit values need {}",
            m.packed.len(),
            m.rows,
            m.cols,
            m.bits,
            m.rows * packed_row
        ));
    }
    for (what, array) in [("scales", m.scales), ("biases", m.biases)] {
        if array.len() != m.rows * scale_row {
            return Err(format!(
                "{what} have {} bytes, {} rows of {groups} groups need {}",
                array.len(),
                m.rows,
                m.rows * scale_row
            ));
        }
    }
    let row_bytes = format.row_bytes(m.cols).expect("whole groups are whole blocks");
    let block_elems = format.block_elems();
    let mut out = vec![0u8; m.rows * row_bytes];
    let mut q = [0u8; 64];
    for r in 0..m.rows {
        let stream = &m.packed[r * packed_row..(r + 1) * packed_row];
        let scales = &m.scales[r * scale_row..(r + 1) * scale_row];
        let biases = &m.biases[r * scale_row..(r + 1) * scale_row];
        let row_out = &mut out[r * row_bytes..(r + 1) * row_bytes];
        for (b, block_out) in row_out.chunks_exact_mut(format.block_bytes()).enumerate() {
            let first = b * block_elems;
            let g = first / m.group;
            let (s, bias) = (
                to_f16(m.scale_type.read(scales, g)),
                to_f16(m.scale_type.read(biases, g)),
            );
            for (e, q) in q[..block_elems].iter_mut().enumerate() {
                *q = field(stream, first + e, m.bits);
            }
            match format {
                QuantFormat::Q4_1 => {
                    let qs = std::array::from_fn(|j| q[j] | (q[j + 16] << 4));
                    BlockQ4_1 { d: s, m: bias, qs }.write(block_out);
                }
                QuantFormat::A6_64 => BlockA6_64::pack(s, bias, &q).write(block_out),
                _ => BlockA8_64 { s, b: bias, qs: q }.write(block_out),
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::dequant::dequantize_row;

    /// MLX's packing, written out directly from its definition: values
    /// appended to a bit stream, least significant bit first.
    fn pack_stream(values: &[u8], bits: usize) -> Vec<u8> {
        let mut out = vec![0u8; values.len() * bits / 8];
        for (j, &v) in values.iter().enumerate() {
            for bit in 0..bits {
                if (v >> bit) & 1 == 1 {
                    let at = j * bits + bit;
                    out[at / 8] |= 1 << (at % 8);
                }
            }
        }
        out
    }

    #[test]
    fn six_bit_fields_follow_mlx_byte_layout() {
        // notes: v0 = b0 & 63, v1 = b0 >> 6 | (b1 & 15) << 2, v2 = b1 >> 4 | (b2 & 3) << 4, v3 = b2 >> 2
        let bytes = [0b1011_0101u8, 0b0110_1100, 0b1110_0111];
        assert_eq!(field(&bytes, 0, 6), bytes[0] & 63);
        assert_eq!(field(&bytes, 1, 6), (bytes[0] >> 6) | ((bytes[1] & 15) << 2));
        assert_eq!(field(&bytes, 2, 6), (bytes[1] >> 4) | ((bytes[2] & 3) << 4));
        assert_eq!(field(&bytes, 3, 6), bytes[2] >> 2);
    }

    #[test]
    fn repacked_rows_dequantize_to_mlx_values() {
        let (rows, cols) = (3, 256);
        for (bits, group) in [(4, 32), (4, 64), (4, 128), (6, 64), (6, 128), (8, 64), (8, 128)] {
            for scale_type in [ScaleType::BF16, ScaleType::F16, ScaleType::F32] {
                let q: Vec<u8> = (0..rows * cols)
                    .map(|i| ((i * 7919 + 13) % (1 << bits)) as u8)
                    .collect();
                let groups = rows * cols / group;
                let scale_values: Vec<f32> = (0..groups).map(|g| 0.001 * (g as f32 + 1.0)).collect();
                let bias_values: Vec<f32> = (0..groups).map(|g| (g as f32 - 5.0) / 128.0).collect();
                let encode = |values: &[f32]| -> Vec<u8> {
                    values
                        .iter()
                        .flat_map(|&v| match scale_type {
                            ScaleType::BF16 => bf16::from_f32(v).to_le_bytes().to_vec(),
                            ScaleType::F16 => f16::from_f32(v).to_le_bytes().to_vec(),
                            ScaleType::F32 => v.to_le_bytes().to_vec(),
                        })
                        .collect()
                };
                let (scales, biases) = (encode(&scale_values), encode(&bias_values));
                let packed: Vec<u8> = q.chunks(cols).flat_map(|row| pack_stream(row, bits)).collect();
                let matrix = MlxMatrix {
                    bits,
                    group,
                    rows,
                    cols,
                    packed: &packed,
                    scales: &scales,
                    biases: &biases,
                    scale_type,
                };
                let bytes = repack(&matrix).unwrap();
                let format = format_for(bits, group).unwrap();
                let row_bytes = format.row_bytes(cols).unwrap();
                for r in 0..rows {
                    let mut got = vec![0f32; cols];
                    dequantize_row(format, &bytes[r * row_bytes..(r + 1) * row_bytes], &mut got);
                    for (c, &got) in got.iter().enumerate() {
                        let g = (r * cols + c) / group;
                        let s = scale_type.read(&scales, g);
                        let b = scale_type.read(&biases, g);
                        let want = s * q[r * cols + c] as f32 + b;
                        // Exact but for the f16 rounding of f32 scales and biases.
                        let tolerance = if scale_type == ScaleType::F32 {
                            (s.abs() * q[r * cols + c] as f32 + b.abs()) * 1e-3
                        } else {
                            0.0
                        };
                        assert!(
                            (got - want).abs() <= tolerance,
                            "{bits}-bit group {group} {scale_type:?} row {r} col {c}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn refuses_what_it_cannot_repack() {
        let matrix = |bits, group, packed: &'static [u8]| MlxMatrix {
            bits,
            group,
            rows: 1,
            cols: 64,
            packed,
            scales: &[0; 4],
            biases: &[0; 4],
            scale_type: ScaleType::F16,
        };
        let err = repack(&matrix(3, 64, &[0; 24])).unwrap_err();
        assert!(err.contains("3-bit") && err.contains("supported"), "{err}");
        let err = repack(&matrix(6, 32, &[0; 48])).unwrap_err();
        assert!(err.contains("groups of 32"), "{err}");
        let err = repack(&matrix(6, 64, &[0; 40])).unwrap_err();
        assert!(err.contains("packed weight has 40 bytes"), "{err}");
    }
}
