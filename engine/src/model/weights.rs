//! Weights as a [`WeightSource`] hands them out, on a Burn device, quantized
//! at load when they come as floats and a [`Quantization`] asks for it.

use burn::prelude::*;
use burn::tensor::{DType, TensorCreationOptions, TensorData};

use super::ModelError;
use super::source::{Weight, WeightSource};
use crate::ops;
use crate::quant::{QuantFormat, QuantMatrix};

/// A linear layer `y = x Wᵀ` whose weight `[out_features, in_features]` stays in
/// its block encoding; see [`ops::q_linear`].
pub struct QLinear {
    bytes: Tensor<1, Int>,
    pub format: QuantFormat,
    pub out_features: usize,
    pub in_features: usize,
}

/// Rows of a float matrix dequantized and encoded together at load.
const QUANTIZED_ROWS_AT_ONCE: usize = 1024;

/// What float weights (a Hugging Face checkpoint's F32, F16 or BF16) become
/// when loaded. A GGUF file's tensors keep the blocks they were written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantization {
    /// As the checkpoint stores them.
    Keep,
    /// Encoded in this block format, with our own quantizer (see
    /// [`crate::quant::quantize`]); a matrix whose rows do not divide into its
    /// blocks takes the nearest format they do divide into (see [`Quantization::for_rows`]).
    To(QuantFormat),
}

impl Default for Quantization {
    /// Six bits: the size the product is built around, with quality close to
    /// the float weights.
    fn default() -> Quantization {
        Quantization::To(QuantFormat::Q6_K)
    }
}

impl Quantization {
    /// The spellings users give (`q8_0`, `q6_k`, `q4_k`, `q4_0`, `none`).
    pub const NAMES: &'static str = "q8_0, q6_k, q4_k, q4_0, none";

    pub fn parse(name: &str) -> Option<Quantization> {
        Some(match name.to_ascii_lowercase().as_str() {
            "none" => Quantization::Keep,
            "q8_0" => Quantization::To(QuantFormat::Q8_0),
            "q6_k" => Quantization::To(QuantFormat::Q6_K),
            "q4_k" => Quantization::To(QuantFormat::Q4_K),
            "q4_0" => Quantization::To(QuantFormat::Q4_0),
            _ => return None,
        })
    }

    /// The format a float matrix with rows of `cols` elements is stored in:
    /// the asked one, else (rows too short for its blocks of 256) Q8_0 for a
    /// K-quant asked for, as llama.cpp falls back, else the floats as they are.
    pub fn for_rows(self, stored: QuantFormat, cols: usize) -> QuantFormat {
        let fits = |format: QuantFormat| cols.is_multiple_of(format.block_elems());
        match self {
            Quantization::Keep => stored,
            Quantization::To(format) if fits(format) => format,
            Quantization::To(_) if fits(QuantFormat::Q8_0) => QuantFormat::Q8_0,
            Quantization::To(_) => stored,
        }
    }
}

impl std::fmt::Display for Quantization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Quantization::Keep => f.write_str("none"),
            Quantization::To(format) => f.write_str(&format.name().to_ascii_lowercase()),
        }
    }
}

impl QLinear {
    /// The matrix `name`, which must be `[out_features, in_features]`; float
    /// weights are encoded as `quant` says.
    pub fn load(
        source: &WeightSource,
        name: &str,
        shape: [usize; 2],
        quant: Quantization,
        device: &Device,
    ) -> Result<QLinear, ModelError> {
        let weight = required(source, name)?;
        if weight.shape != shape {
            return Err(ModelError::Malformed(format!(
                "{name} is {}, expected {}×{}",
                describe_shape(&weight.shape),
                shape[0],
                shape[1]
            )));
        }
        let [out_features, in_features] = shape;
        let matrix = QuantMatrix::new(weight.format, out_features, in_features, &weight.bytes)
            .map_err(|why| ModelError::Malformed(format!("{name}: {why}")))?;
        let is_float = matches!(weight.format, QuantFormat::F32 | QuantFormat::F16 | QuantFormat::BF16);
        let format = if is_float {
            quant.for_rows(weight.format, in_features)
        } else {
            weight.format
        };
        let stored_row_bytes = matrix.row_bytes();
        let data = if format == weight.format {
            let data = weight.bytes.into_owned();
            source.release(name, 0..data.len());
            data
        } else {
            // A slice of rows at a time: a large vocabulary's embedding
            // table in f32 is over a gigabyte, more than the model's whole
            // quantized size.
            let mut encoded = Vec::with_capacity(out_features * format.row_bytes(in_features).unwrap_or(0));
            let mut values = vec![0f32; QUANTIZED_ROWS_AT_ONCE.min(out_features) * in_features];
            for first in (0..out_features).step_by(QUANTIZED_ROWS_AT_ONCE) {
                let rows = QUANTIZED_ROWS_AT_ONCE.min(out_features - first);
                let values = &mut values[..rows * in_features];
                for (r, row) in values.chunks_exact_mut(in_features).enumerate() {
                    matrix.dequantize_row(first + r, row);
                }
                source.release(name, first * stored_row_bytes..(first + rows) * stored_row_bytes);
                let part =
                    crate::quant::quantize::quantize_matrix(format, rows, in_features, values).map_err(|why| {
                        ModelError::Malformed(format!("{name}: cannot quantize to {}: {why}", format.name()))
                    })?;
                encoded.extend_from_slice(&part);
            }
            encoded
        };
        let mut data = data;
        let format = crate::quant::interleave::for_selected_kernel(format, in_features, &mut data);
        let len = data.len();
        let bytes = Tensor::<1, Int>::from_data(
            TensorData::new(data, [len]),
            TensorCreationOptions::new(device.clone()).with_dtype(DType::U8),
        );
        Ok(QLinear {
            bytes,
            format,
            out_features,
            in_features,
        })
    }

    /// `x[m, in_features]` → `[m, out_features]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        ops::q_linear(x, &self.bytes, self.format, self.out_features, self.in_features)
    }

    /// Bytes the encoded matrix holds.
    pub fn byte_len(&self) -> usize {
        self.bytes.shape().num_elements()
    }

    /// Rows `ids` of the matrix, dequantized: the embedding lookup of a token table.
    pub fn rows(&self, ids: &[u32]) -> Tensor<2> {
        ops::q_embedding(&self.bytes, self.format, self.out_features, self.in_features, ids)
    }
}

/// A small f32 vector (norm weights, biases), dequantized at load.
pub fn load_vector(source: &WeightSource, name: &str, len: usize, device: &Device) -> Result<Tensor<1>, ModelError> {
    let values = load_floats(source, name, &[len])?;
    Ok(Tensor::<1>::from_data(TensorData::new(values, [len]), device))
}

/// A small float tensor of exactly `shape`, dequantized to f32 values on the host.
pub fn load_floats(source: &WeightSource, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
    let weight = required(source, name)?;
    if weight.shape != shape {
        return Err(ModelError::Malformed(format!(
            "{name} is {}, expected {}",
            describe_shape(&weight.shape),
            describe_shape(shape)
        )));
    }
    let len = shape.iter().product();
    let matrix = QuantMatrix::new(weight.format, 1, len, &weight.bytes)
        .map_err(|why| ModelError::Malformed(format!("{name}: {why}")))?;
    let mut values = vec![0f32; len];
    matrix.dequantize_row(0, &mut values);
    source.release(name, 0..weight.bytes.len());
    if let Some(bad) = values.iter().position(|v| !v.is_finite()) {
        return Err(ModelError::Malformed(format!(
            "{name} holds a non-finite value at {bad}"
        )));
    }
    Ok(values)
}

fn required<'a>(source: &'a WeightSource, name: &str) -> Result<Weight<'a>, ModelError> {
    source
        .weight(name)?
        .ok_or_else(|| ModelError::Malformed(format!("tensor {name:?} is missing")))
}

fn describe_shape(shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    format!("[{}]", dims.join("×"))
}
