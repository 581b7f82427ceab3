//! The dense decoder family: one forward pass for the architectures that
//! differ only in what a layer adds to the Llama layer.
//!
//! - **Llama** (SmolLM2, Llama 2/3, TinyLlama): as below.
//! - **Qwen2** (Qwen2, Qwen2.5): a bias on the q, k and v projections.
//! - **Qwen3** (dense): an RMSNorm over each head of q and k, before RoPE; no
//!   biases; `heads × head_dim` need not equal the hidden size.
//!
//! Per layer, for `s` new tokens at positions `p..p+s` (a batch stacks several
//! sequences' rows; see `super::batch`):
//!
//! ```text
//! h = RMSNorm(x)                                  [s, d]
//! q, k, v = h·Wqᵀ (+bq), h·Wkᵀ (+bk), h·Wvᵀ (+bv)  [s, heads·hd], [s, kv_heads·hd] ×2
//! q, k = RMSNorm_hd(q), RMSNorm_hd(k)             Qwen3 only, per head
//! q, k = RoPE(q), RoPE(k)
//! cache[p..p+s] = k, v                            [kv_heads, capacity, hd]
//! x = x + Attention(q, cache[..p+s])·Woᵀ          causal, grouped-query
//! x = x + (SiLU(RMSNorm(x)·Wgateᵀ) ⊙ RMSNorm(x)·Wupᵀ)·Wdownᵀ
//! ```
//!
//! then logits = RMSNorm(x\[last\])·Woutᵀ, with Wout tied to the embedding table
//! when the model has no output matrix of its own.
//!
//! Both sources are read here, each with its names and its fix-ups: GGUF's
//! `blk.N.attn_q` and Hugging Face's `model.layers.N.self_attn.q_proj`; RoPE
//! on adjacent pairs for a GGUF Llama file (llama.cpp's converter permutes
//! Llama's q and k rows for it) and on halves everywhere else (Hugging Face's
//! `rotate_half`, which llama.cpp keeps for Qwen).

use burn::prelude::*;
use serde_json::Value;

use super::batch::{self, Batch, Segment};
use super::source::{Checkpoint, WeightSource};
use super::weights::{QLinear, Quantization, load_vector};
use super::{KvCache, ModelError, ModelInfo};
use crate::gguf::GgufFile;
use crate::ops::{self, RopeStyle};

/// The architectures of this family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llama,
    Qwen2,
    Qwen3,
}

impl Family {
    /// The family of a GGUF `general.architecture` or a Hugging Face
    /// `model_type`, which spell these the same.
    pub fn named(name: &str) -> Option<Family> {
        match name {
            "llama" => Some(Family::Llama),
            "qwen2" => Some(Family::Qwen2),
            "qwen3" => Some(Family::Qwen3),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
        }
    }
}

#[derive(Debug, Clone)]
pub struct DecoderConfig {
    pub family: Family,
    pub block_count: usize,
    pub embedding_length: usize,
    pub feed_forward_length: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rotary_dim: usize,
    pub rope_theta: f32,
    pub rope_style: RopeStyle,
    pub rms_eps: f32,
    pub context_length: usize,
    pub vocab_size: usize,
    /// The output matrix is the embedding table.
    pub tied_output: bool,
}

/// Dimensions past this are a corrupt file, not a model.
const MAX_DIMENSION: u64 = 1 << 24;

impl DecoderConfig {
    /// From a GGUF file's metadata (`{arch}.embedding_length`, ...).
    pub fn from_gguf(file: &GgufFile, family: Family) -> Result<DecoderConfig, ModelError> {
        let arch = family.name();
        let key = |name: &str| format!("{arch}.{name}");
        let required = |name: &str| {
            file.get_u64(&key(name))
                .filter(|&v| v > 0 && v <= MAX_DIMENSION)
                .map(|v| v as usize)
                .ok_or_else(|| ModelError::Malformed(format!("metadata {arch}.{name} is missing or out of range")))
        };
        let embedding_length = required("embedding_length")?;
        let heads = required("attention.head_count")?;
        let kv_heads = file
            .get_u64(&key("attention.head_count_kv"))
            .map_or(heads, |v| v as usize);
        let head_dim = file
            .get_u64(&key("attention.key_length"))
            .map_or(embedding_length / heads, |v| v as usize);
        let rotary_dim = file
            .get_u64(&key("rope.dimension_count"))
            .map_or(head_dim, |v| v as usize);
        if file.tensor("rope_freqs.weight").is_some() {
            return Err(ModelError::Unsupported(
                "Llama 3.1-style RoPE frequency scaling (rope_freqs.weight)".into(),
            ));
        }
        let vocab_size = file
            .metadata("tokenizer.ggml.tokens")
            .and_then(|v| v.array_len())
            .or_else(|| file.get_u64(&key("vocab_size")).map(|v| v as usize))
            .ok_or_else(|| ModelError::Malformed("the vocabulary size is unknown".into()))?;
        DecoderConfig {
            family,
            block_count: required("block_count")?,
            embedding_length,
            feed_forward_length: required("feed_forward_length")?,
            heads,
            kv_heads,
            head_dim,
            rotary_dim,
            rope_theta: file.get_f64(&key("rope.freq_base")).unwrap_or(10_000.0) as f32,
            // llama.cpp's converter permutes a Llama's q and k rows for
            // adjacent pairs; it leaves Qwen's as they are.
            rope_style: match family {
                Family::Llama => RopeStyle::Interleaved,
                Family::Qwen2 | Family::Qwen3 => RopeStyle::Halves,
            },
            rms_eps: file.get_f64(&key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5) as f32,
            context_length: required("context_length")?,
            vocab_size,
            tied_output: file.tensor("output.weight").is_none(),
        }
        .checked()
    }

    /// From a Hugging Face `config.json`, in the form transformers 4.x writes
    /// (`rope_theta`, `rope_scaling`) or 5.x (`rope_parameters`).
    pub fn from_hf(config: &Value, family: Family) -> Result<DecoderConfig, ModelError> {
        let number = |name: &str| config.get(name).and_then(Value::as_u64);
        let required = |name: &str| {
            number(name)
                .filter(|&v| v > 0 && v <= MAX_DIMENSION)
                .map(|v| v as usize)
                .ok_or_else(|| ModelError::Malformed(format!("config.json: {name} is missing or out of range")))
        };
        let embedding_length = required("hidden_size")?;
        let heads = required("num_attention_heads")?;
        let kv_heads = number("num_key_value_heads").map_or(heads, |v| v as usize);
        let head_dim = number("head_dim").map_or(embedding_length / heads, |v| v as usize);
        let (rope_theta, partial) = hf_rope(config, 10_000.0, 1.0)?;
        DecoderConfig {
            family,
            block_count: required("num_hidden_layers")?,
            embedding_length,
            feed_forward_length: required("intermediate_size")?,
            heads,
            kv_heads,
            head_dim,
            rotary_dim: (head_dim as f64 * partial) as usize,
            rope_theta: rope_theta as f32,
            rope_style: RopeStyle::Halves,
            rms_eps: config.get("rms_norm_eps").and_then(Value::as_f64).unwrap_or(1e-6) as f32,
            context_length: required("max_position_embeddings")?,
            vocab_size: required("vocab_size")?,
            tied_output: config
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        }
        .checked()
    }

    fn checked(self) -> Result<DecoderConfig, ModelError> {
        let (heads, kv_heads) = (self.heads, self.kv_heads);
        if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(ModelError::Malformed(format!(
                "{heads} attention heads over {kv_heads} kv heads"
            )));
        }
        if self.head_dim == 0 || self.rotary_dim > self.head_dim || !self.rotary_dim.is_multiple_of(2) {
            return Err(ModelError::Malformed(format!(
                "rotary dimension {} for heads of {}",
                self.rotary_dim, self.head_dim
            )));
        }
        Ok(self)
    }
}

/// RoPE's θ and the rotated fraction of each head from a Hugging Face
/// `config.json`, in the form transformers 4.x writes (`rope_theta`,
/// `rope_scaling`) or 5.x (`rope_parameters`), with the architecture's
/// defaults; scaled RoPE (YaRN, linear, ...) is refused.
pub(super) fn hf_rope(config: &Value, theta: f64, partial: f64) -> Result<(f64, f64), ModelError> {
    let rope = config.get("rope_parameters").filter(|v| v.is_object());
    let scaling = config.get("rope_scaling").filter(|v| !v.is_null());
    let rope_type = rope
        .or(scaling)
        .and_then(|r| r.get("rope_type").or_else(|| r.get("type")))
        .and_then(Value::as_str)
        .unwrap_or("default");
    if rope_type != "default" {
        return Err(ModelError::Unsupported(format!(
            "RoPE scaling of type {rope_type:?} (only unscaled RoPE is implemented)"
        )));
    }
    let number = |name: &str, default: f64| {
        rope.and_then(|r| r.get(name))
            .or_else(|| config.get(name))
            .and_then(Value::as_f64)
            .unwrap_or(default)
    };
    Ok((number("rope_theta", theta), number("partial_rotary_factor", partial)))
}

/// The parts of the model, named as each source names them.
#[derive(Clone, Copy)]
enum Part {
    AttnNorm,
    Q,
    K,
    V,
    O,
    QNorm,
    KNorm,
    FfnNorm,
    Gate,
    Up,
    Down,
}

fn layer_name(source: &WeightSource, layer: usize, part: Part, suffix: &str) -> String {
    match source {
        WeightSource::Gguf(_) => {
            let part = match part {
                Part::AttnNorm => "attn_norm",
                Part::Q => "attn_q",
                Part::K => "attn_k",
                Part::V => "attn_v",
                Part::O => "attn_output",
                Part::QNorm => "attn_q_norm",
                Part::KNorm => "attn_k_norm",
                Part::FfnNorm => "ffn_norm",
                Part::Gate => "ffn_gate",
                Part::Up => "ffn_up",
                Part::Down => "ffn_down",
            };
            format!("blk.{layer}.{part}.{suffix}")
        }
        WeightSource::HuggingFace(_) => {
            let part = match part {
                Part::AttnNorm => "input_layernorm",
                Part::Q => "self_attn.q_proj",
                Part::K => "self_attn.k_proj",
                Part::V => "self_attn.v_proj",
                Part::O => "self_attn.o_proj",
                Part::QNorm => "self_attn.q_norm",
                Part::KNorm => "self_attn.k_norm",
                Part::FfnNorm => "post_attention_layernorm",
                Part::Gate => "mlp.gate_proj",
                Part::Up => "mlp.up_proj",
                Part::Down => "mlp.down_proj",
            };
            format!("model.layers.{layer}.{part}.{suffix}")
        }
    }
}

/// The embedding table, the final norm and the output matrix, in the source's naming.
fn top_names(source: &WeightSource) -> [&'static str; 3] {
    match source {
        WeightSource::Gguf(_) => ["token_embd.weight", "output_norm.weight", "output.weight"],
        WeightSource::HuggingFace(_) => ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"],
    }
}

struct Layer {
    attn_norm: Tensor<1>,
    wq: QLinear,
    wk: QLinear,
    wv: QLinear,
    /// Qwen2's biases; `None` where the model has none.
    biases: Option<[Tensor<1>; 3]>,
    /// Qwen3's per-head norms of q and k.
    qk_norms: Option<[Tensor<1>; 2]>,
    wo: QLinear,
    ffn_norm: Tensor<1>,
    gate: QLinear,
    up: QLinear,
    down: QLinear,
}

pub struct Decoder {
    pub config: DecoderConfig,
    embedding: QLinear,
    layers: Vec<Layer>,
    pub(super) output_norm: Tensor<1>,
    /// `None`: tied to the embedding table.
    output: Option<QLinear>,
}

impl Decoder {
    /// The config of a Hugging Face checkpoint of this family.
    pub fn hf_config(checkpoint: &Checkpoint, family: Family) -> Result<DecoderConfig, ModelError> {
        DecoderConfig::from_hf(&checkpoint.config, family)
    }

    /// The model's weights from `source`, float ones encoded as `quant` says.
    pub fn load(
        source: &WeightSource,
        config: DecoderConfig,
        quant: Quantization,
        device: &Device,
    ) -> Result<Decoder, ModelError> {
        let d = config.embedding_length;
        let linear = |name: String, out_features: usize, in_features: usize| {
            QLinear::load(source, &name, [out_features, in_features], quant, device)
        };
        let vector = |name: String, len: usize| load_vector(source, &name, len, device);
        let (q_width, kv_width) = (config.heads * config.head_dim, config.kv_heads * config.head_dim);
        let mut layers = Vec::with_capacity(config.block_count);
        for i in 0..config.block_count {
            let name = |part: Part| layer_name(source, i, part, "weight");
            let bias = |part: Part| layer_name(source, i, part, "bias");
            // Biases are the model's when it has them (Qwen2 always does;
            // a Llama may, with `attention_bias`).
            let biases = if source.has(&bias(Part::Q)) {
                Some([
                    vector(bias(Part::Q), q_width)?,
                    vector(bias(Part::K), kv_width)?,
                    vector(bias(Part::V), kv_width)?,
                ])
            } else {
                None
            };
            let qk_norms = match config.family {
                Family::Qwen3 => Some([
                    vector(name(Part::QNorm), config.head_dim)?,
                    vector(name(Part::KNorm), config.head_dim)?,
                ]),
                Family::Llama | Family::Qwen2 => None,
            };
            layers.push(Layer {
                attn_norm: vector(name(Part::AttnNorm), d)?,
                wq: linear(name(Part::Q), q_width, d)?,
                wk: linear(name(Part::K), kv_width, d)?,
                wv: linear(name(Part::V), kv_width, d)?,
                biases,
                qk_norms,
                wo: linear(name(Part::O), d, q_width)?,
                ffn_norm: vector(name(Part::FfnNorm), d)?,
                gate: linear(name(Part::Gate), config.feed_forward_length, d)?,
                up: linear(name(Part::Up), config.feed_forward_length, d)?,
                down: linear(name(Part::Down), d, config.feed_forward_length)?,
            });
        }
        let [embedding, output_norm, output] = top_names(source);
        let embedding = linear(embedding.into(), config.vocab_size, d)?;
        let output = if config.tied_output {
            None
        } else {
            Some(linear(output.into(), config.vocab_size, d)?)
        };
        Ok(Decoder {
            output_norm: vector(output_norm.into(), d)?,
            config,
            embedding,
            layers,
            output,
        })
    }

    /// What the loaded model is: its architecture, the format of most of its
    /// weight bytes, its parameters and bytes.
    pub fn info(&self) -> ModelInfo {
        let c = &self.config;
        let mut matrices: Vec<&QLinear> = vec![&self.embedding];
        matrices.extend(&self.output);
        for layer in &self.layers {
            matrices.extend([
                &layer.wq,
                &layer.wk,
                &layer.wv,
                &layer.wo,
                &layer.gate,
                &layer.up,
                &layer.down,
            ]);
        }
        // Norms and biases, kept in f32.
        let per_layer_vectors = 2 * c.embedding_length
            + self.layers.first().map_or(0, |l| {
                l.biases.as_ref().map_or(0, |_| (c.heads + 2 * c.kv_heads) * c.head_dim)
                    + l.qk_norms.as_ref().map_or(0, |_| 2 * c.head_dim)
            });
        let vectors = c.block_count * per_layer_vectors + c.embedding_length;
        super::info_of(c.family.name(), &matrices, vectors)
    }

    /// Runs `tokens` at positions `cache.len()..` in one pass (no chunks);
    /// returns the last position's hidden state `[1, d]` (see [`Decoder::logits`]).
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Tensor<2> {
        let s = tokens.len();
        batch::alone(tokens, cache, |segment, batch| self.forward_rows(segment, batch))
            .slice([s - 1..s, 0..self.config.embedding_length])
    }

    /// Runs every segment's tokens at its cache's next positions, all rows
    /// through each matrix together (see [`super::batch`]); returns every
    /// row's hidden state `[rows, d]`.
    pub(super) fn forward_rows(&self, segments: &mut [Segment<'_>], batch: &Batch) -> Tensor<2> {
        let c = &self.config;
        let mut x = self.embedding.rows(batch.tokens()); // [R, d]
        for (i, layer) in self.layers.iter().enumerate() {
            let h = ops::rms_norm(x.clone(), &layer.attn_norm, c.rms_eps);
            let mut q = layer.wq.forward(h.clone()); // [R, heads·hd]
            let mut k = layer.wk.forward(h.clone()); // [R, kv_heads·hd]
            let mut v = layer.wv.forward(h);
            if let Some([bq, bk, bv]) = &layer.biases {
                q = q + bq.clone().unsqueeze_dim(0);
                k = k + bk.clone().unsqueeze_dim(0);
                v = v + bv.clone().unsqueeze_dim(0);
            }
            if let Some([q_norm, k_norm]) = &layer.qk_norms {
                q = head_norm(q, q_norm, c.head_dim, c.rms_eps);
                k = head_norm(k, k_norm, c.head_dim, c.rms_eps);
            }
            let positions = batch.positions();
            let q = ops::rope(q, c.head_dim, c.rotary_dim, positions, c.rope_theta, c.rope_style);
            let k = ops::rope(k, c.head_dim, c.rotary_dim, positions, c.rope_theta, c.rope_style);
            let attended = batch::attend(segments, batch, i, [q, k, v], c.heads); // [R, heads·hd]
            x = x + layer.wo.forward(attended);

            let h = ops::rms_norm(x.clone(), &layer.ffn_norm, c.rms_eps);
            let gated = ops::swiglu(layer.gate.forward(h.clone()), layer.up.forward(h));
            x = x + layer.down.forward(gated);
        }
        batch.advance(segments);
        x
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

/// RMSNorm over each `head_dim`-wide head of `x` `[s, heads·head_dim]`.
pub(super) fn head_norm(x: Tensor<2>, weight: &Tensor<1>, head_dim: usize, eps: f32) -> Tensor<2> {
    let [s, width] = x.dims();
    let heads = ops::rms_norm(x.reshape([s * width / head_dim, head_dim]), weight, eps);
    heads.reshape([s, width])
}
