//! Qwen3.5: a hybrid of Gated DeltaNet layers (linear attention with a
//! recurrent state) and gated full-attention layers, `layer_types` saying
//! which is which (three DeltaNet layers to one attention layer in every
//! published size).
//!
//! Per layer, for `s` new tokens at positions `p..p+s` (a batch stacks several
//! sequences' rows; see `super::batch`):
//!
//! ```text
//! x = x + Mixer(RMSNorm1p(x))          RMSNorm1p(x) = x̂·(1 + w)
//! x = x + (SiLU(h·Wgateᵀ) ⊙ h·Wupᵀ)·Wdownᵀ,   h = RMSNorm1p(x)
//! ```
//!
//! Gated attention: `q_proj` gives each head its query and an output gate
//! (`[q(hd) | gate(hd)]` per head); q and k get a per-head RMSNorm1p, then
//! RoPE on the first `rotary_dim` dimensions of each head (halves); causal
//! grouped-query attention over the KV cache; the output is multiplied by
//! `sigmoid(gate)` before `o_proj`.
//!
//! Gated DeltaNet, per token t and value head h (state `S_h`: `[Dk, Dv]`, f32):
//!
//! ```text
//! c_t = SiLU(causal depthwise conv1d over the last K rows of h·Wqkvᵀ)   (q | k | v)
//! q, k = l2norm(q)/√Dk, l2norm(k)              per key head; a key head serves
//!                                              Hv/Hk consecutive value heads
//! β = sigmoid(h·Wbᵀ),  g = −exp(A_log)·softplus(h·Waᵀ + dt_bias)
//! S = exp(g)·S;  S = S + k ⊗ β(v − Sᵀk);  o = Sᵀq
//! o = RMSNorm(o)·w·SiLU(h·Wzᵀ)   per head (w not zero-centred), then out_proj
//! ```
//!
//! The conv's last `K − 1` input rows and each head's `S` are the layer's
//! state ([`RecurrentState`]), carried from one forward pass to the next
//! beside the attention layers' KV cache.
//!
//! Sources, each with its names and fix-ups (see `Names`): Hugging Face
//! directories (`Qwen3_5ForCausalLM`, and the text part of
//! `Qwen3_5ForConditionalGeneration`, under `model.language_model.` with its
//! config in `text_config`), whose RMSNorm1p weights are stored as `w` (the
//! `1 +` is added at load) and `A_log` as is; and `qwen35` GGUF files as
//! llama.cpp's converter writes them, with `1 + w` and `−exp(A_log)` baked
//! in and, where key heads serve several value heads, the value heads in
//! tiled order (see `tests/fixtures/qwen/qwen35_gguf.md`).

use std::ops::Range;

use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::sigmoid;
use rayon::prelude::*;
use serde_json::Value;

use super::batch::{self, Batch, Segment};
use super::source::{Checkpoint, WeightSource};
use super::weights::{QLinear, Quantization, load_floats, load_vector};
use super::{ModelError, ModelInfo};
use crate::gguf::GgufFile;
use crate::ops::{self, RopeStyle};

/// Dimensions no real model comes near; a config past them is malformed.
const MAX_DIMENSION: u64 = 1 << 20;

/// What each layer mixes tokens with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// Gated DeltaNet: linear attention with a recurrent state.
    Linear,
    /// Gated full attention over the KV cache.
    Full,
}

#[derive(Debug, Clone)]
pub struct Qwen35Config {
    pub layers: Vec<LayerKind>,
    pub embedding_length: usize,
    pub feed_forward_length: usize,
    /// Full attention.
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rotary_dim: usize,
    pub rope_theta: f32,
    /// Gated DeltaNet: key heads, value heads and their widths; conv kernel.
    pub linear_key_heads: usize,
    pub linear_value_heads: usize,
    pub linear_key_dim: usize,
    pub linear_value_dim: usize,
    pub conv_kernel: usize,
    pub rms_eps: f32,
    pub context_length: usize,
    pub vocab_size: usize,
    pub tied_output: bool,
    /// Value heads in tiled order (value head g served by key head g mod Hk,
    /// as llama.cpp's converter reorders them) instead of grouped (value head
    /// h served by key head h / (Hv/Hk), as transformers keeps them).
    pub tiled_value_heads: bool,
}

impl Qwen35Config {
    /// From a Hugging Face `config.json`: a `qwen3_5_text` config, or a
    /// `qwen3_5` one whose `text_config` is.
    pub fn from_hf(config: &Value) -> Result<Qwen35Config, ModelError> {
        let text = config.get("text_config").filter(|t| t.is_object()).unwrap_or(config);
        let number = |name: &str| text.get(name).and_then(Value::as_u64);
        let required = |name: &str| {
            number(name)
                .filter(|&v| v > 0 && v <= MAX_DIMENSION)
                .map(|v| v as usize)
                .ok_or_else(|| ModelError::Malformed(format!("config.json: {name} is missing or out of range")))
        };
        let block_count = required("num_hidden_layers")?;
        let layers = match text.get("layer_types").and_then(Value::as_array) {
            Some(types) => types
                .iter()
                .map(|t| match t.as_str() {
                    Some("linear_attention") => Ok(LayerKind::Linear),
                    Some("full_attention") => Ok(LayerKind::Full),
                    _ => Err(ModelError::Malformed(format!("config.json: layer type {t} is unknown"))),
                })
                .collect::<Result<Vec<_>, _>>()?,
            None => every_nth_full(block_count, number("full_attention_interval").unwrap_or(4) as usize),
        };
        check_layer_count(&layers, block_count)?;
        let (rope_theta, partial) = super::decoder::hf_rope(text, 10_000_000.0, 0.25)?;
        let heads = required("num_attention_heads")?;
        let head_dim = required("head_dim")?;
        let linear_key_heads = required("linear_num_key_heads")?;
        let linear_value_heads = required("linear_num_value_heads")?;
        let config = Qwen35Config {
            layers,
            embedding_length: required("hidden_size")?,
            feed_forward_length: required("intermediate_size")?,
            heads,
            kv_heads: required("num_key_value_heads")?,
            head_dim,
            rotary_dim: (head_dim as f64 * partial) as usize,
            rope_theta: rope_theta as f32,
            linear_key_heads,
            linear_value_heads,
            linear_key_dim: required("linear_key_head_dim")?,
            linear_value_dim: required("linear_value_head_dim")?,
            conv_kernel: required("linear_conv_kernel_dim")?,
            rms_eps: text.get("rms_norm_eps").and_then(Value::as_f64).unwrap_or(1e-6) as f32,
            context_length: required("max_position_embeddings")?,
            vocab_size: required("vocab_size")?,
            // transformers' default for this config is untied; the small
            // models say true.
            tied_output: text
                .get("tie_word_embeddings")
                .or_else(|| config.get("tie_word_embeddings"))
                .and_then(Value::as_bool)
                .unwrap_or(false),
            tiled_value_heads: false,
        };
        config.checked()
    }

    /// From the metadata of a `qwen35` GGUF file as llama.cpp's converter
    /// writes it (`qwen35.ssm.*` for the DeltaNet: `state_size` Dk,
    /// `group_count` Hk, `time_step_rank` Hv, `inner_size` Hv·Dv).
    pub fn from_gguf(file: &GgufFile) -> Result<Qwen35Config, ModelError> {
        let required = |name: &str| {
            file.get_u64(&format!("qwen35.{name}"))
                .filter(|&v| v > 0 && v <= MAX_DIMENSION)
                .map(|v| v as usize)
                .ok_or_else(|| ModelError::Malformed(format!("metadata qwen35.{name} is missing or out of range")))
        };
        let block_count = required("block_count")?;
        let layers = match file
            .metadata("qwen35.attention.recurrent_layers")
            .and_then(|v| v.as_array())
        {
            Some(flags) => flags
                .iter()
                .map(|flag| match flag.as_bool() {
                    Some(true) => Ok(LayerKind::Linear),
                    Some(false) => Ok(LayerKind::Full),
                    None => Err(ModelError::Malformed(
                        "qwen35.attention.recurrent_layers holds a non-bool".into(),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?,
            None => every_nth_full(block_count, required("full_attention_interval").unwrap_or(4)),
        };
        check_layer_count(&layers, block_count)?;
        let linear_value_heads = required("ssm.time_step_rank")?;
        let inner = required("ssm.inner_size")?;
        if !inner.is_multiple_of(linear_value_heads) {
            return Err(ModelError::Malformed(format!(
                "qwen35.ssm.inner_size {inner} over {linear_value_heads} value heads"
            )));
        }
        let head_dim = required("attention.key_length")?;
        let vocab_size = file
            .tensor("token_embd.weight")
            .and_then(|t| t.dims.get(1).map(|&v| v as usize))
            .ok_or_else(|| ModelError::Malformed("tensor token_embd.weight is missing".into()))?;
        Qwen35Config {
            layers,
            embedding_length: required("embedding_length")?,
            feed_forward_length: required("feed_forward_length")?,
            heads: required("attention.head_count")?,
            kv_heads: required("attention.head_count_kv")?,
            head_dim,
            rotary_dim: required("rope.dimension_count").unwrap_or(head_dim / 4),
            rope_theta: file.get_f64("qwen35.rope.freq_base").unwrap_or(10_000_000.0) as f32,
            linear_key_heads: required("ssm.group_count")?,
            linear_value_heads,
            linear_key_dim: required("ssm.state_size")?,
            linear_value_dim: inner / linear_value_heads,
            conv_kernel: required("ssm.conv_kernel")?,
            rms_eps: file.get_f64("qwen35.attention.layer_norm_rms_epsilon").unwrap_or(1e-6) as f32,
            context_length: required("context_length")?,
            vocab_size,
            tied_output: file.tensor("output.weight").is_none(),
            tiled_value_heads: true,
        }
        .checked()
    }

    fn checked(self) -> Result<Qwen35Config, ModelError> {
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(ModelError::Malformed(format!(
                "{} attention heads over {} kv heads",
                self.heads, self.kv_heads
            )));
        }
        if !self.linear_value_heads.is_multiple_of(self.linear_key_heads) {
            return Err(ModelError::Malformed(format!(
                "{} DeltaNet value heads over {} key heads",
                self.linear_value_heads, self.linear_key_heads
            )));
        }
        if self.rotary_dim > self.head_dim || !self.rotary_dim.is_multiple_of(2) {
            return Err(ModelError::Malformed(format!(
                "rotary dimension {} for heads of {}",
                self.rotary_dim, self.head_dim
            )));
        }
        Ok(self)
    }

    /// Width of the DeltaNet's q, k and v together (what its conv runs over).
    pub fn conv_dim(&self) -> usize {
        2 * self.linear_key_heads * self.linear_key_dim + self.linear_value_heads * self.linear_value_dim
    }

    /// Layers with a KV cache.
    pub fn attention_layers(&self) -> usize {
        self.layers.iter().filter(|&&k| k == LayerKind::Full).count()
    }

    /// Layers with a recurrent state.
    pub fn linear_layers(&self) -> usize {
        self.layers.len() - self.attention_layers()
    }

    /// A DeltaNet layer's state, zeroed.
    pub fn new_state(&self) -> RecurrentState {
        RecurrentState {
            conv: vec![0.0; (self.conv_kernel - 1) * self.conv_dim()],
            state: vec![0.0; self.linear_value_heads * self.linear_key_dim * self.linear_value_dim],
        }
    }
}

/// Layer kinds when a source lists none: every `interval`-th layer is full
/// attention (the 4th, 8th, ...), the rest DeltaNet.
fn every_nth_full(layers: usize, interval: usize) -> Vec<LayerKind> {
    let interval = interval.max(1);
    (0..layers)
        .map(|i| {
            if (i + 1) % interval == 0 {
                LayerKind::Full
            } else {
                LayerKind::Linear
            }
        })
        .collect()
}

fn check_layer_count(kinds: &[LayerKind], layers: usize) -> Result<(), ModelError> {
    if kinds.len() == layers {
        Ok(())
    } else {
        Err(ModelError::Malformed(format!(
            "{} layer kinds for {layers} layers",
            kinds.len()
        )))
    }
}

/// A Gated DeltaNet layer's state for one sequence: the conv's last `K − 1`
/// input rows (`[K−1, conv_dim]`, oldest first) and each value head's
/// `[Dk, Dv]` matrix (`[Hv, Dk, Dv]`).
#[derive(Debug, Clone, PartialEq)]
pub struct RecurrentState {
    pub conv: Vec<f32>,
    pub state: Vec<f32>,
}

impl RecurrentState {
    /// Back to the state before any token.
    pub fn clear(&mut self) {
        self.conv.fill(0.0);
        self.state.fill(0.0);
    }

    pub fn bytes(&self) -> usize {
        (self.conv.len() + self.state.len()) * std::mem::size_of::<f32>()
    }
}

struct DeltaNet {
    in_qkv: QLinear,
    in_z: QLinear,
    in_a: QLinear,
    in_b: QLinear,
    /// `[conv_dim, K]`: channel-major, the last tap multiplies the current row.
    conv: Vec<f32>,
    /// `−exp(A_log)` per value head.
    decay: Vec<f32>,
    dt_bias: Vec<f32>,
    /// The gated norm's weight, `[Dv]`.
    norm: Vec<f32>,
    out: QLinear,
}

struct GatedAttention {
    /// `[heads × 2·hd, d]`: per head, its query rows then its gate rows.
    q: QLinear,
    k: QLinear,
    v: QLinear,
    q_norm: Tensor<1>,
    k_norm: Tensor<1>,
    o: QLinear,
}

enum Mixer {
    Linear(DeltaNet),
    Full(GatedAttention),
}

struct Layer {
    attn_norm: Tensor<1>,
    mixer: Mixer,
    ffn_norm: Tensor<1>,
    gate: QLinear,
    up: QLinear,
    down: QLinear,
}

pub struct Qwen35 {
    pub config: Qwen35Config,
    embedding: QLinear,
    layers: Vec<Layer>,
    pub(super) output_norm: Tensor<1>,
    output: Option<QLinear>,
    /// Per-layer and top-level f32 values (norms, conv, decay), for the parameter count.
    vector_parameters: usize,
}

/// The tensors of the model, named as each source names them.
#[derive(Clone, Copy)]
enum Part {
    AttnNorm,
    FfnNorm,
    Gate,
    Up,
    Down,
    Qkv,
    Z,
    A,
    B,
    Conv,
    /// HF: `A_log`; GGUF: `ssm_a`, which is `−exp(A_log)`.
    Decay,
    DtBias,
    DeltaNorm,
    DeltaOut,
    Q,
    K,
    V,
    O,
    QNorm,
    KNorm,
}

/// How a source names and stores the model's tensors.
struct Names {
    gguf: bool,
    /// Hugging Face: `model.` or `model.language_model.`; MLX (mlx-lm's
    /// conversion of the published checkpoints): `language_model.model.`.
    prefix: &'static str,
    /// The conv weight's shape as stored: GGUF squeezes it to `[C, K]`, Hugging
    /// Face has `[C, 1, K]`, MLX `[C, K, 1]` (the same values in the same order).
    conv_layout: ConvLayout,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ConvLayout {
    Squeezed,
    Torch,
    Mlx,
}

impl Names {
    fn of(source: &WeightSource) -> Names {
        let prefix = ["model.language_model.", "language_model.model.", "model."]
            .into_iter()
            .find(|prefix| source.has(&format!("{prefix}embed_tokens.weight")))
            .unwrap_or("model.");
        let mut names = Names {
            gguf: matches!(source, WeightSource::Gguf(_)),
            prefix: if matches!(source, WeightSource::Gguf(_)) {
                ""
            } else {
                prefix
            },
            conv_layout: ConvLayout::Squeezed,
        };
        if !names.gguf {
            // mlx-lm moves the conv's kernel axis last when it converts a
            // checkpoint, and adds the norms' 1 at the same time: the conv's
            // shape tells which of the two a directory holds (as mlx-lm itself
            // decides whether to convert).
            let mlx = (0..)
                .map(|layer| names.layer(layer, Part::Conv))
                .take(64)
                .find_map(|name| source.weight(&name).ok().flatten())
                .is_some_and(|conv| conv.shape.len() == 3 && conv.shape[2] == 1 && conv.shape[1] != 1);
            names.conv_layout = if mlx { ConvLayout::Mlx } else { ConvLayout::Torch };
        }
        names
    }

    /// Whether the zero-centred norms are stored as `1 + w` (GGUF, MLX) rather
    /// than `w` (Hugging Face).
    fn norms_baked(&self) -> bool {
        self.conv_layout != ConvLayout::Torch
    }

    fn layer(&self, layer: usize, part: Part) -> String {
        let (gguf, hf) = match part {
            Part::AttnNorm => ("attn_norm.weight", "input_layernorm.weight"),
            Part::FfnNorm => ("post_attention_norm.weight", "post_attention_layernorm.weight"),
            Part::Gate => ("ffn_gate.weight", "mlp.gate_proj.weight"),
            Part::Up => ("ffn_up.weight", "mlp.up_proj.weight"),
            Part::Down => ("ffn_down.weight", "mlp.down_proj.weight"),
            Part::Qkv => ("attn_qkv.weight", "linear_attn.in_proj_qkv.weight"),
            Part::Z => ("attn_gate.weight", "linear_attn.in_proj_z.weight"),
            Part::A => ("ssm_alpha.weight", "linear_attn.in_proj_a.weight"),
            Part::B => ("ssm_beta.weight", "linear_attn.in_proj_b.weight"),
            Part::Conv => ("ssm_conv1d.weight", "linear_attn.conv1d.weight"),
            Part::Decay => ("ssm_a", "linear_attn.A_log"),
            Part::DtBias => ("ssm_dt.bias", "linear_attn.dt_bias"),
            Part::DeltaNorm => ("ssm_norm.weight", "linear_attn.norm.weight"),
            Part::DeltaOut => ("ssm_out.weight", "linear_attn.out_proj.weight"),
            Part::Q => ("attn_q.weight", "self_attn.q_proj.weight"),
            Part::K => ("attn_k.weight", "self_attn.k_proj.weight"),
            Part::V => ("attn_v.weight", "self_attn.v_proj.weight"),
            Part::O => ("attn_output.weight", "self_attn.o_proj.weight"),
            Part::QNorm => ("attn_q_norm.weight", "self_attn.q_norm.weight"),
            Part::KNorm => ("attn_k_norm.weight", "self_attn.k_norm.weight"),
        };
        if self.gguf {
            format!("blk.{layer}.{gguf}")
        } else {
            format!("{}layers.{layer}.{hf}", self.prefix)
        }
    }

    /// The embedding table, the final norm and the output matrix.
    fn top(&self) -> [String; 3] {
        if self.gguf {
            [
                "token_embd.weight".into(),
                "output_norm.weight".into(),
                "output.weight".into(),
            ]
        } else {
            // `lm_head` sits beside the text model: `lm_head.weight`, or
            // `language_model.lm_head.weight` in MLX's nesting.
            let outer = if self.prefix == "language_model.model." {
                "language_model."
            } else {
                ""
            };
            [
                format!("{}embed_tokens.weight", self.prefix),
                format!("{}norm.weight", self.prefix),
                format!("{outer}lm_head.weight"),
            ]
        }
    }

    fn conv_shape(&self, channels: usize, kernel: usize) -> Vec<usize> {
        match self.conv_layout {
            ConvLayout::Squeezed => vec![channels, kernel],
            ConvLayout::Torch => vec![channels, 1, kernel],
            ConvLayout::Mlx => vec![channels, kernel, 1],
        }
    }
}

impl Qwen35 {
    pub fn hf_config(checkpoint: &Checkpoint) -> Result<Qwen35Config, ModelError> {
        Qwen35Config::from_hf(&checkpoint.config)
    }

    pub fn load(
        source: &WeightSource,
        config: Qwen35Config,
        quant: Quantization,
        device: &Device,
    ) -> Result<Qwen35, ModelError> {
        let c = &config;
        let d = c.embedding_length;
        let names = Names::of(source);
        let linear = |name: String, out_features: usize, in_features: usize| {
            QLinear::load(source, &name, [out_features, in_features], quant, device)
        };
        // The zero-centred norms multiply by `1 + w`: Hugging Face stores
        // `w`, GGUF and MLX files `1 + w` already.
        let norm1p = |name: String, len: usize| -> Result<Tensor<1>, ModelError> {
            let weight = load_vector(source, &name, len, device)?;
            Ok(if names.norms_baked() { weight } else { weight + 1.0 })
        };
        let mut vector_parameters = d;
        let mut layers = Vec::with_capacity(c.layers.len());
        for (i, kind) in c.layers.iter().enumerate() {
            let at = |part: Part| names.layer(i, part);
            let mixer = match kind {
                LayerKind::Linear => {
                    let (hv, dv) = (c.linear_value_heads, c.linear_value_dim);
                    let conv_dim = c.conv_dim();
                    let decay = load_floats(source, &at(Part::Decay), &[hv])?;
                    vector_parameters += conv_dim * c.conv_kernel + 2 * hv + dv;
                    Mixer::Linear(DeltaNet {
                        in_qkv: linear(at(Part::Qkv), conv_dim, d)?,
                        in_z: linear(at(Part::Z), hv * dv, d)?,
                        in_a: linear(at(Part::A), hv, d)?,
                        in_b: linear(at(Part::B), hv, d)?,
                        conv: load_floats(source, &at(Part::Conv), &names.conv_shape(conv_dim, c.conv_kernel))?,
                        decay: if names.gguf {
                            decay
                        } else {
                            decay.iter().map(|a| -a.exp()).collect()
                        },
                        dt_bias: load_floats(source, &at(Part::DtBias), &[hv])?,
                        norm: load_floats(source, &at(Part::DeltaNorm), &[dv])?,
                        out: linear(at(Part::DeltaOut), d, hv * dv)?,
                    })
                }
                LayerKind::Full => {
                    let (q_width, kv_width) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
                    vector_parameters += 2 * c.head_dim;
                    Mixer::Full(GatedAttention {
                        q: linear(at(Part::Q), 2 * q_width, d)?,
                        k: linear(at(Part::K), kv_width, d)?,
                        v: linear(at(Part::V), kv_width, d)?,
                        q_norm: norm1p(at(Part::QNorm), c.head_dim)?,
                        k_norm: norm1p(at(Part::KNorm), c.head_dim)?,
                        o: linear(at(Part::O), d, q_width)?,
                    })
                }
            };
            vector_parameters += 2 * d;
            layers.push(Layer {
                attn_norm: norm1p(at(Part::AttnNorm), d)?,
                mixer,
                ffn_norm: norm1p(at(Part::FfnNorm), d)?,
                gate: linear(at(Part::Gate), c.feed_forward_length, d)?,
                up: linear(at(Part::Up), c.feed_forward_length, d)?,
                down: linear(at(Part::Down), d, c.feed_forward_length)?,
            });
        }
        let [embedding, output_norm, output] = names.top();
        let embedding = linear(embedding, c.vocab_size, d)?;
        let output = if c.tied_output {
            None
        } else {
            Some(linear(output, c.vocab_size, d)?)
        };
        Ok(Qwen35 {
            output_norm: norm1p(output_norm, d)?,
            embedding,
            layers,
            output,
            vector_parameters,
            config,
        })
    }

    pub fn info(&self) -> ModelInfo {
        let mut matrices: Vec<&QLinear> = vec![&self.embedding];
        matrices.extend(&self.output);
        for layer in &self.layers {
            match &layer.mixer {
                Mixer::Linear(m) => matrices.extend([&m.in_qkv, &m.in_z, &m.in_a, &m.in_b, &m.out]),
                Mixer::Full(m) => matrices.extend([&m.q, &m.k, &m.v, &m.o]),
            }
            matrices.extend([&layer.gate, &layer.up, &layer.down]);
        }
        super::info_of("qwen35", &matrices, self.vector_parameters)
    }

    /// Runs every segment's tokens at its cache's next positions, all rows
    /// through each matrix together (see [`super::batch`]); returns every
    /// row's hidden state `[rows, d]`.
    pub(super) fn forward_rows(&self, segments: &mut [Segment<'_>], batch: &Batch) -> Tensor<2> {
        let c = &self.config;
        let mut x = self.embedding.rows(batch.tokens());
        let (mut attention_layer, mut linear_layer) = (0, 0);
        for layer in &self.layers {
            let h = ops::rms_norm(x.clone(), &layer.attn_norm, c.rms_eps);
            let mixed = match &layer.mixer {
                Mixer::Full(attention) => {
                    let out = self.gated_attention(attention, h, segments, batch, attention_layer);
                    attention_layer += 1;
                    out
                }
                Mixer::Linear(delta) => {
                    let out = self.delta_net(delta, h, segments, batch, linear_layer);
                    linear_layer += 1;
                    out
                }
            };
            x = x + mixed;
            let h = ops::rms_norm(x.clone(), &layer.ffn_norm, c.rms_eps);
            let gated = ops::swiglu(layer.gate.forward(h.clone()), layer.up.forward(h));
            x = x + layer.down.forward(gated);
        }
        batch.advance(segments);
        x
    }

    fn gated_attention(
        &self,
        m: &GatedAttention,
        h: Tensor<2>,
        segments: &mut [Segment<'_>],
        batch: &Batch,
        layer: usize,
    ) -> Tensor<2> {
        let c = &self.config;
        let [s, _] = h.dims();
        let (heads, hd) = (c.heads, c.head_dim);
        let qg = m.q.forward(h.clone()).reshape([s, heads, 2 * hd]);
        let q = qg.clone().slice([0..s, 0..heads, 0..hd]).reshape([s, heads * hd]);
        let gate = qg.slice([0..s, 0..heads, hd..2 * hd]).reshape([s, heads * hd]);
        let q = super::decoder::head_norm(q, &m.q_norm, hd, c.rms_eps);
        let k = super::decoder::head_norm(m.k.forward(h.clone()), &m.k_norm, hd, c.rms_eps);
        let v = m.v.forward(h);
        let positions = batch.positions();
        let q = ops::rope(q, hd, c.rotary_dim, positions, c.rope_theta, RopeStyle::Halves);
        let k = ops::rope(k, hd, c.rotary_dim, positions, c.rope_theta, RopeStyle::Halves);
        let attended = batch::attend(segments, batch, layer, [q, k, v], heads);
        m.o.forward(attended * sigmoid(gate))
    }

    /// The DeltaNet layer `layer` (in linear-layer order) over every row of
    /// `batch`: the projections over all rows at once, the causal conv and the
    /// delta rule per segment, on that segment's recurrent state.
    fn delta_net(
        &self,
        m: &DeltaNet,
        h: Tensor<2>,
        segments: &mut [Segment<'_>],
        batch: &Batch,
        layer: usize,
    ) -> Tensor<2> {
        let c = &self.config;
        let rows = batch.rows();
        let device = h.device();
        let host = |t: Tensor<2>| t.into_data().try_into_vec::<f32>().expect("f32 activations");
        let qkv = host(m.in_qkv.forward(h.clone()));
        let z = host(m.in_z.forward(h.clone()));
        let a = host(m.in_a.forward(h.clone()));
        let b = host(m.in_b.forward(h));
        let (hk, hv, dk, dv) = (
            c.linear_key_heads,
            c.linear_value_heads,
            c.linear_key_dim,
            c.linear_value_dim,
        );
        let conv_dim = c.conv_dim();
        let kernel = c.conv_kernel;
        let q_scale = 1.0 / (dk as f32).sqrt();
        // The causal conv and the q/k normalisation, every row (cheap, and a
        // conv state runs through its segment's positions in order).
        let mut mixed = vec![0f32; rows * conv_dim];
        for (i, segment) in segments.iter_mut().enumerate() {
            let state = &mut segment.cache.recurrent[layer];
            for t in batch.span(i) {
                let row = &qkv[t * conv_dim..(t + 1) * conv_dim];
                let mixed = &mut mixed[t * conv_dim..(t + 1) * conv_dim];
                // Causal depthwise conv over the last K rows, then SiLU.
                for (ch, value) in mixed.iter_mut().enumerate() {
                    let taps = &m.conv[ch * kernel..(ch + 1) * kernel];
                    let mut sum = taps[kernel - 1] * row[ch];
                    for (j, tap) in taps[..kernel - 1].iter().enumerate() {
                        sum += tap * state.conv[j * conv_dim + ch];
                    }
                    *value = silu(sum);
                }
                if kernel > 1 {
                    state.conv.copy_within(conv_dim.., 0);
                    let last = (kernel - 2) * conv_dim;
                    state.conv[last..].copy_from_slice(row);
                }
                let (q, rest) = mixed.split_at_mut(hk * dk);
                for head in q.chunks_exact_mut(dk) {
                    l2_normalize(head, q_scale);
                }
                for head in rest[..hk * dk].chunks_exact_mut(dk) {
                    l2_normalize(head, 1.0);
                }
            }
        }
        // The delta rule, each (segment, value head) over its segment's rows on
        // its own (they are independent): one parallel split per layer for the
        // whole batch, rather than one per segment or per position; on one
        // thread a segment's heads alone kept a core idle.
        let tasks: Vec<(Range<usize>, usize, &mut [f32])> = segments
            .iter_mut()
            .enumerate()
            .flat_map(|(i, segment)| {
                let span = batch.span(i);
                segment.cache.recurrent[layer]
                    .state
                    .chunks_exact_mut(dk * dv)
                    .enumerate()
                    .map(move |(vh, s_h)| (span.clone(), vh, s_h))
            })
            .collect();
        let head_outputs: Vec<(Range<usize>, usize, Vec<f32>)> = tasks
            .into_par_iter()
            .map(|(span, vh, s_h)| {
                let kh = if c.tiled_value_heads { vh % hk } else { vh / (hv / hk) };
                let mut head_out = vec![0f32; span.len() * dv];
                let mut kv = vec![0f32; dv];
                for (t, o) in span.clone().zip(head_out.chunks_exact_mut(dv)) {
                    let mixed = &mixed[t * conv_dim..(t + 1) * conv_dim];
                    let (q, k, v) = (
                        &mixed[kh * dk..(kh + 1) * dk],
                        &mixed[hk * dk + kh * dk..hk * dk + (kh + 1) * dk],
                        &mixed[2 * hk * dk + vh * dv..2 * hk * dk + (vh + 1) * dv],
                    );
                    let beta = sigmoid_f32(b[t * hv + vh]);
                    let g = m.decay[vh] * softplus(a[t * hv + vh] + m.dt_bias[vh]);
                    let decay = g.exp();
                    s_h.iter_mut().for_each(|x| *x *= decay);
                    kv.fill(0.0);
                    for (i, &ki) in k.iter().enumerate() {
                        for (acc, &sij) in kv.iter_mut().zip(&s_h[i * dv..(i + 1) * dv]) {
                            *acc += sij * ki;
                        }
                    }
                    for (delta, &vj) in kv.iter_mut().zip(v) {
                        *delta = (vj - *delta) * beta;
                    }
                    for (i, (&ki, &qi)) in k.iter().zip(q).enumerate() {
                        let s_row = &mut s_h[i * dv..(i + 1) * dv];
                        for ((sij, &delta), oj) in s_row.iter_mut().zip(&kv).zip(o.iter_mut()) {
                            *sij += ki * delta;
                            *oj += *sij * qi;
                        }
                    }
                    // Gated RMSNorm of the head's output.
                    let mean_square = o.iter().map(|x| x * x).sum::<f32>() / dv as f32;
                    let scale = 1.0 / (mean_square + c.rms_eps).sqrt();
                    let z = &z[(t * hv + vh) * dv..(t * hv + vh + 1) * dv];
                    for ((oj, &w), &zj) in o.iter_mut().zip(&m.norm).zip(z) {
                        *oj = *oj * scale * w * silu(zj);
                    }
                }
                (span, vh, head_out)
            })
            .collect();
        let mut out = vec![0f32; rows * hv * dv];
        for (span, vh, head_out) in &head_outputs {
            for (t, o) in span.clone().zip(head_out.chunks_exact(dv)) {
                out[(t * hv + vh) * dv..(t * hv + vh + 1) * dv].copy_from_slice(o);
            }
        }
        let out = Tensor::<2>::from_data(TensorData::new(out, [rows, hv * dv]), &device);
        m.out.forward(out)
    }

    /// The next-token logits of hidden states `[n, d]`, `n` rows of the vocabulary's size.
    pub fn logits(&self, hidden: Tensor<2>) -> Vec<f32> {
        super::output_logits(
            hidden,
            &self.output_norm,
            self.config.rms_eps,
            self.output.as_ref().unwrap_or(&self.embedding),
        )
    }
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

fn sigmoid_f32(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `ln(1 + eˣ)`, as torch computes it (linear past 20).
fn softplus(x: f32) -> f32 {
    if x > 20.0 { x } else { x.exp().ln_1p() }
}

/// `x · scale / sqrt(Σx² + 1e-6)`.
fn l2_normalize(x: &mut [f32], scale: f32) {
    let norm = 1.0 / (x.iter().map(|v| v * v).sum::<f32>() + 1e-6).sqrt();
    x.iter_mut().for_each(|v| *v *= norm * scale);
}
