//! Weights as they come out of a GGUF file, on a Burn device.

use burn::prelude::*;
use burn::tensor::{DType, TensorCreationOptions, TensorData};

use super::ModelError;
use crate::gguf::{GgufFile, TensorInfo};
use crate::ops;
use crate::quant::QuantFormat;

/// A linear layer `y = x Wᵀ` whose weight `[out_features, in_features]` stays in
/// its GGUF block encoding; see [`ops::q_linear`].
pub struct QLinear {
    bytes: Tensor<1, Int>,
    pub format: QuantFormat,
    pub out_features: usize,
    pub in_features: usize,
}

impl QLinear {
    pub fn load(file: &GgufFile, name: &str, device: &Device) -> Result<QLinear, ModelError> {
        let info = tensor(file, name)?;
        let [in_features, out_features] = match info.dims[..] {
            [k, n] => [k as usize, n as usize],
            ref dims => {
                return Err(ModelError::Malformed(format!(
                    "{name} has shape {dims:?}, expected 2-D"
                )));
            }
        };
        let format = QuantFormat::from_ggml_type(info.ggml_type.0).ok_or_else(|| {
            ModelError::Unsupported(format!(
                "tensor {name:?} is {}, which has no kernel here (supported: F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K)",
                info.ggml_type
            ))
        })?;
        let data = file
            .read_tensor(info)
            .map_err(|err| ModelError::Malformed(format!("cannot read tensor {name:?}: {err}")))?;
        crate::quant::QuantMatrix::new(format, out_features, in_features, &data)
            .map_err(|why| ModelError::Malformed(format!("{name}: {why}")))?;
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

    /// Rows `ids` of the matrix, dequantized: the embedding lookup of a token table.
    pub fn rows(&self, ids: &[u32]) -> Tensor<2> {
        ops::q_embedding(&self.bytes, self.format, self.out_features, self.in_features, ids)
    }
}

/// A small f32 vector (norm weights), dequantized at load.
pub fn load_vector(file: &GgufFile, name: &str, len: usize, device: &Device) -> Result<Tensor<1>, ModelError> {
    let info = tensor(file, name)?;
    if info.element_count() != len as u64 || info.dims.len() != 1 {
        return Err(ModelError::Malformed(format!(
            "{name} has shape {:?}, expected [{len}]",
            info.dims
        )));
    }
    let format = QuantFormat::from_ggml_type(info.ggml_type.0)
        .ok_or_else(|| ModelError::Unsupported(format!("tensor {name:?} is {}", info.ggml_type)))?;
    // Read, not mapped: touching the mapping would fault in the pages around each
    // small vector too, and keep them counted until the file is closed.
    let data = file
        .read_tensor(info)
        .map_err(|err| ModelError::Malformed(format!("cannot read tensor {name:?}: {err}")))?;
    let matrix = crate::quant::QuantMatrix::new(format, 1, len, &data)
        .map_err(|why| ModelError::Malformed(format!("{name}: {why}")))?;
    let mut values = vec![0f32; len];
    matrix.dequantize_row(0, &mut values);
    if let Some(bad) = values.iter().position(|v| !v.is_finite()) {
        return Err(ModelError::Malformed(format!(
            "{name} holds a non-finite value at {bad}"
        )));
    }
    Ok(Tensor::<1>::from_data(TensorData::new(values, [len]), device))
}

pub fn tensor<'a>(file: &'a GgufFile, name: &str) -> Result<&'a TensorInfo, ModelError> {
    file.tensor(name)
        .ok_or_else(|| ModelError::Malformed(format!("tensor {name:?} is missing")))
}
