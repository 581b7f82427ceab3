//! Where a model's weights come from, as their publishers ship them: a GGUF
//! file from llama.cpp's converter, or a Hugging Face directory
//! (`config.json` and one or more `*.safetensors` files, sharded ones listed
//! in `model.safetensors.index.json`). Either hands out named tensors with
//! their format (our [`QuantFormat`], whatever the file's own type numbers)
//! and their shape, outermost dimension first (PyTorch's order: a linear
//! layer's weight is `[out_features, in_features]`).
//!
//! Names are the source's own (`blk.0.attn_q.weight`,
//! `model.layers.0.self_attn.q_proj.weight`): each architecture knows both
//! spellings and the fix-ups that go with each (see `model::decoder`).
//!
//! Files come from users, so every offset and length is checked before use:
//! a damaged file is an error naming what broke, never a panic.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, UncheckedAdvice};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use super::ModelError;
use crate::gguf::GgufFile;
use crate::quant::QuantFormat;
use crate::quant::mlx::{self, MlxMatrix, ScaleType};

/// One tensor of a source.
pub struct Weight<'a> {
    pub format: QuantFormat,
    /// Outermost dimension first.
    pub shape: Vec<usize>,
    /// The encoded elements, little-endian, rows one after another.
    pub bytes: Cow<'a, [u8]>,
}

/// Rows of an MLX matrix repacked together at load.
const MLX_ROWS_AT_ONCE: usize = 4096;

/// A model's weights and configuration.
pub enum WeightSource {
    Gguf(GgufFile),
    HuggingFace(Checkpoint),
}

impl WeightSource {
    /// A GGUF file, or a Hugging Face directory.
    pub fn open(path: &Path) -> Result<WeightSource, ModelError> {
        if path.is_dir() {
            Ok(WeightSource::HuggingFace(Checkpoint::open(path)?))
        } else {
            Ok(WeightSource::Gguf(GgufFile::open(path)?))
        }
    }

    /// The tensor `name`, in the source's own naming.
    pub fn weight(&self, name: &str) -> Result<Option<Weight<'_>>, ModelError> {
        match self {
            WeightSource::Gguf(file) => {
                let Some(info) = file.tensor(name) else {
                    return Ok(None);
                };
                let format = QuantFormat::from_ggml_type(info.ggml_type.0).ok_or_else(|| {
                    ModelError::Unsupported(format!(
                        "tensor {name:?} is {}, which has no kernel here (supported: F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K)",
                        info.ggml_type
                    ))
                })?;
                // Read, not mapped: touching the mapping would fault in the
                // pages around each small tensor too, and keep them counted
                // until the file is closed.
                let bytes = file
                    .read_tensor(info)
                    .map_err(|err| ModelError::Malformed(format!("cannot read tensor {name:?}: {err}")))?;
                Ok(Some(Weight {
                    format,
                    // GGUF lists the fastest-varying dimension first.
                    shape: info.dims.iter().rev().map(|&d| d as usize).collect(),
                    bytes: Cow::Owned(bytes),
                }))
            }
            WeightSource::HuggingFace(checkpoint) => checkpoint.weight(name),
        }
    }

    /// Tells the OS that bytes `range` of tensor `name` (as [`WeightSource::weight`]
    /// hands them out) have been read and will not be again, so that their memory
    /// need not stay counted to this process.
    ///
    /// A Hugging Face checkpoint's tensors are borrowed from mapped files, and
    /// every mapped page read stays resident until the mapping goes: loading a
    /// 3.4 GB BF16 checkpoint quantized to 1.4 GB peaked at 4.7 GB. Releasing
    /// each slice of rows once it is quantized keeps the peak near the quantized
    /// size. (GGUF tensors are read into buffers of their own; nothing to do.)
    pub fn release(&self, name: &str, range: std::ops::Range<usize>) {
        if let WeightSource::HuggingFace(checkpoint) = self {
            checkpoint.release(name, range);
        }
    }

    /// Whether the source has a tensor called `name`.
    pub fn has(&self, name: &str) -> bool {
        match self {
            WeightSource::Gguf(file) => file.tensor(name).is_some(),
            WeightSource::HuggingFace(checkpoint) => checkpoint.tensors.contains_key(name),
        }
    }
}

/// A Hugging Face model directory: its `config.json`, and its safetensors
/// files mapped into memory.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: Value,
    /// `generation_config.json`, when there is one: the publisher's sampling defaults.
    pub generation_config: Option<Value>,
    files: Vec<Mmap>,
    tensors: HashMap<String, Located>,
}

/// Where a tensor's bytes are: which file, and which range of it.
struct Located {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    range: std::ops::Range<usize>,
}

impl Checkpoint {
    pub fn open(dir: &Path) -> Result<Checkpoint, ModelError> {
        let config = read_json(&dir.join("config.json"))?
            .ok_or_else(|| ModelError::Malformed(format!("{} has no config.json", dir.display())))?;
        let generation_config = read_json(&dir.join("generation_config.json"))?;
        let mut checkpoint = Checkpoint {
            dir: dir.to_path_buf(),
            config,
            generation_config,
            files: Vec::new(),
            tensors: HashMap::new(),
        };
        for file in safetensors_files(dir)? {
            checkpoint.add_file(&file)?;
        }
        if checkpoint.tensors.is_empty() {
            return Err(ModelError::Malformed(format!(
                "{} holds no safetensors weights",
                dir.display()
            )));
        }
        Ok(checkpoint)
    }

    fn add_file(&mut self, path: &Path) -> Result<(), ModelError> {
        let broken = |why: String| ModelError::Malformed(format!("{}: {why}", path.display()));
        let file = std::fs::File::open(path).map_err(|err| broken(err.to_string()))?;
        // SAFETY: the mapping is read-only; a file changed under a running
        // model is the same hazard every model loader that maps files accepts.
        let map = unsafe { Mmap::map(&file) }.map_err(|err| broken(err.to_string()))?;
        let (header, metadata) = SafeTensors::read_metadata(&map).map_err(|err| broken(err.to_string()))?;
        // Offsets in the header count from the end of the header; the crate
        // checked that they lie within the file and do not overlap.
        let data_start = 8 + header;
        let index = self.files.len();
        for (name, info) in metadata.tensors() {
            let (start, end) = info.data_offsets;
            if self.tensors.contains_key(&name) {
                return Err(broken(format!("tensor {name:?} is also in another file")));
            }
            self.tensors.insert(
                name,
                Located {
                    file: index,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    range: data_start + start..data_start + end,
                },
            );
        }
        self.files.push(map);
        Ok(())
    }

    fn weight(&self, name: &str) -> Result<Option<Weight<'_>>, ModelError> {
        let Some(located) = self.tensors.get(name) else {
            return Ok(None);
        };
        let format = match located.dtype {
            Dtype::F32 => QuantFormat::F32,
            Dtype::F16 => QuantFormat::F16,
            Dtype::BF16 => QuantFormat::BF16,
            Dtype::U32 => return self.mlx_weight(name, located).map(Some),
            other => {
                return Err(ModelError::Unsupported(format!(
                    "tensor {name:?} is {other:?} (supported in safetensors: F32, F16, BF16, and MLX's U32 \
                     affine-quantized matrices)"
                )));
            }
        };
        Ok(Some(Weight {
            format,
            shape: located.shape.clone(),
            bytes: Cow::Borrowed(&self.files[located.file][located.range.clone()]),
        }))
    }

    /// An MLX affine-quantized matrix (`name` is U32, with `.scales` and
    /// `.biases` beside it), repacked into our blocks; see [`crate::quant::mlx`].
    fn mlx_weight(&self, name: &str, packed: &Located) -> Result<Weight<'_>, ModelError> {
        let bad = |why: String| ModelError::Malformed(format!("{name}: {why}"));
        let module = name
            .strip_suffix(".weight")
            .ok_or_else(|| bad("a U32 tensor that is not a quantized matrix's weight".into()))?;
        let part = |what: &str| {
            self.tensors.get(&format!("{module}.{what}")).ok_or_else(|| {
                ModelError::Unsupported(format!(
                    "{name} is U32 without {module}.{what}: not an MLX affine-quantized matrix"
                ))
            })
        };
        let (scales, biases) = (part("scales")?, part("biases")?);
        let (bits, group) = self.mlx_quantization(module)?;
        let scale_type = match scales.dtype {
            Dtype::F16 => ScaleType::F16,
            Dtype::BF16 => ScaleType::BF16,
            Dtype::F32 => ScaleType::F32,
            other => return Err(bad(format!("scales are {other:?}"))),
        };
        if biases.dtype != scales.dtype {
            return Err(bad(format!(
                "scales are {:?} but biases {:?}",
                scales.dtype, biases.dtype
            )));
        }
        let [rows, words] = packed.shape[..] else {
            return Err(bad(format!("the packed weight is {:?}, not a matrix", packed.shape)));
        };
        if !(words * 32).is_multiple_of(bits) {
            return Err(bad(format!("{words} words per row are not whole {bits}-bit values")));
        }
        let cols = words * 32 / bits;
        if scales.shape != [rows, cols / group] || biases.shape != scales.shape {
            return Err(bad(format!(
                "{bits}-bit groups of {group}: a [{rows}, {words}] packed weight needs scales and biases of \
                 [{rows}, {}], found {:?} and {:?}",
                cols / group,
                scales.shape,
                biases.shape
            )));
        }
        let bytes = |located: &Located| &self.files[located.file][located.range.clone()];
        let (packed_bytes, scale_bytes, bias_bytes) = (bytes(packed), bytes(scales), bytes(biases));
        // A slice of rows at a time, each slice's mapped pages released once
        // repacked: a 248k-token embedding's codes would otherwise stay
        // resident beside their repacked copy until the whole matrix is done.
        let (packed_row, scale_row) = (packed_bytes.len() / rows.max(1), scale_bytes.len() / rows.max(1));
        let unsupported = |why: String| ModelError::Unsupported(format!("{name}: {why}"));
        let format = mlx::format_for(bits, group).map_err(unsupported)?;
        let mut data = Vec::with_capacity(rows * format.row_bytes(cols).unwrap_or(0));
        for first in (0..rows).step_by(MLX_ROWS_AT_ONCE) {
            let last = (first + MLX_ROWS_AT_ONCE).min(rows);
            let matrix = MlxMatrix {
                bits,
                group,
                rows: last - first,
                cols,
                packed: &packed_bytes[first * packed_row..last * packed_row],
                scales: &scale_bytes[first * scale_row..last * scale_row],
                biases: &bias_bytes[first * scale_row..last * scale_row],
                scale_type,
            };
            data.extend_from_slice(&mlx::repack(&matrix).map_err(unsupported)?);
            self.release(&format!("{module}.weight"), first * packed_row..last * packed_row);
            for what in ["scales", "biases"] {
                self.release(&format!("{module}.{what}"), first * scale_row..last * scale_row);
            }
        }
        Ok(Weight {
            format,
            shape: vec![rows, cols],
            bytes: Cow::Owned(data),
        })
    }

    /// MLX's `bits` and `group_size` for `module`: its own entry in
    /// `config.json`'s `quantization` (mlx-lm writes per-layer choices there
    /// under the module's path), else the top-level values.
    fn mlx_quantization(&self, module: &str) -> Result<(usize, usize), ModelError> {
        let settings = self
            .config
            .get("quantization")
            .or_else(|| self.config.get("quantization_config"))
            .ok_or_else(|| {
                ModelError::Malformed(format!(
                    "{module} is quantized (U32) but config.json has no \"quantization\" section"
                ))
            })?;
        let own = settings.get(module).filter(|v| v.is_object()).unwrap_or(settings);
        let mode = own.get("mode").or_else(|| settings.get("mode")).and_then(Value::as_str);
        if let Some(mode) = mode.filter(|&mode| mode != "affine") {
            return Err(ModelError::Unsupported(format!(
                "{module}: MLX quantization mode {mode:?} (supported: affine)"
            )));
        }
        let number = |key: &str| {
            own.get(key)
                .or_else(|| settings.get(key))
                .and_then(Value::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| ModelError::Malformed(format!("config.json's quantization has no {key} for {module}")))
        };
        let (bits, group) = (number("bits")?, number("group_size")?);
        if !(1..=8).contains(&bits) || group == 0 {
            return Err(ModelError::Malformed(format!(
                "config.json's quantization for {module}: {bits} bits, groups of {group}"
            )));
        }
        Ok((bits, group))
    }

    /// See [`WeightSource::release`].
    fn release(&self, name: &str, range: std::ops::Range<usize>) {
        let Some(located) = self.tensors.get(name) else {
            return;
        };
        let start = located.range.start + range.start.min(located.range.len());
        let end = located.range.start + range.end.min(located.range.len());
        if start >= end {
            return;
        }
        // SAFETY: the mapping is read-only and shared with the file: dropped
        // pages are read back from the file if touched again, with the same
        // bytes, so borrowed slices of it stay valid and unchanged. Failure only
        // means the pages stay resident.
        let _ =
            unsafe { self.files[located.file].unchecked_advise_range(UncheckedAdvice::DontNeed, start, end - start) };
    }

    /// Every tensor name, for messages and tools.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }
}

/// The directory's weight files: those `model.safetensors.index.json` lists,
/// else every `*.safetensors` file in it.
fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    if let Some(index) = read_json(&dir.join("model.safetensors.index.json"))? {
        let map = index["weight_map"]
            .as_object()
            .ok_or_else(|| ModelError::Malformed("model.safetensors.index.json has no weight_map object".into()))?;
        let mut files: Vec<PathBuf> = map
            .values()
            .map(|file| {
                file.as_str()
                    .filter(|f| !f.contains('/') && !f.contains('\\') && f.ends_with(".safetensors"))
                    .map(|f| dir.join(f))
                    .ok_or_else(|| {
                        ModelError::Malformed(format!("model.safetensors.index.json names {file} as a weight file"))
                    })
            })
            .collect::<Result<_, _>>()?;
        files.sort();
        files.dedup();
        return Ok(files);
    }
    let entries = std::fs::read_dir(dir).map_err(|err| ModelError::Malformed(format!("{}: {err}", dir.display())))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "safetensors"))
        .collect();
    files.sort();
    Ok(files)
}

/// A JSON file of the directory, `None` when it is not there.
fn read_json(path: &Path) -> Result<Option<Value>, ModelError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|err| ModelError::Malformed(format!("{}: {err}", path.display()))),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(ModelError::Malformed(format!("{}: {err}", path.display()))),
    }
}
