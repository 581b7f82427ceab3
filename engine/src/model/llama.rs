//! The Llama decoder (SmolLM2, Llama 2/3, TinyLlama, ...), as GGUF stores it.
//!
//! Per layer, for `s` new tokens at positions `p..p+s`:
//!
//! ```text
//! h = RMSNorm(x)                                  [s, d]
//! q, k, v = h·Wqᵀ, h·Wkᵀ, h·Wvᵀ                   [s, heads·hd], [s, kv_heads·hd] ×2
//! q, k = RoPE(q), RoPE(k)  (adjacent pairs: the GGUF converter permuted Wq, Wk for it)
//! cache[p..p+s] = k, v                            [kv_heads, capacity, hd]
//! x = x + Attention(q, cache[..p+s])·Woᵀ          causal, grouped-query
//! x = x + (SiLU(RMSNorm(x)·Wgateᵀ) ⊙ RMSNorm(x)·Wupᵀ)·Wdownᵀ
//! ```
//!
//! then logits = RMSNorm(x[last])·Woutᵀ, with Wout tied to the embedding table
//! when the file has no `output.weight`.

use burn::prelude::*;

use super::weights::{QLinear, load_vector};
use super::{KvCache, ModelError};
use crate::gguf::GgufFile;
use crate::ops::{self, RopeStyle};

#[derive(Debug, Clone)]
pub struct LlamaConfig {
    pub block_count: usize,
    pub embedding_length: usize,
    pub feed_forward_length: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rotary_dim: usize,
    pub rope_theta: f32,
    pub rms_eps: f32,
    pub context_length: usize,
    pub vocab_size: usize,
}

impl LlamaConfig {
    pub fn from_gguf(file: &GgufFile) -> Result<LlamaConfig, ModelError> {
        let key = |name: &str| format!("llama.{name}");
        let required = |name: &str| {
            file.get_u64(&key(name))
                .filter(|&v| v > 0 && v <= 1 << 24)
                .map(|v| v as usize)
                .ok_or_else(|| ModelError::Malformed(format!("metadata llama.{name} is missing or out of range")))
        };
        let embedding_length = required("embedding_length")?;
        let heads = required("attention.head_count")?;
        let kv_heads = file
            .get_u64(&key("attention.head_count_kv"))
            .map_or(heads, |v| v as usize);
        if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(ModelError::Malformed(format!(
                "{heads} attention heads over {kv_heads} kv heads"
            )));
        }
        let head_dim = file
            .get_u64(&key("attention.key_length"))
            .map_or(embedding_length / heads, |v| v as usize);
        let rotary_dim = file
            .get_u64(&key("rope.dimension_count"))
            .map_or(head_dim, |v| v as usize);
        if rotary_dim > head_dim || !rotary_dim.is_multiple_of(2) {
            return Err(ModelError::Malformed(format!(
                "rotary dimension {rotary_dim} for heads of {head_dim}"
            )));
        }
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
        Ok(LlamaConfig {
            block_count: required("block_count")?,
            embedding_length,
            feed_forward_length: required("feed_forward_length")?,
            heads,
            kv_heads,
            head_dim,
            rotary_dim,
            rope_theta: file.get_f64(&key("rope.freq_base")).unwrap_or(10_000.0) as f32,
            rms_eps: file.get_f64(&key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5) as f32,
            context_length: required("context_length")?,
            vocab_size,
        })
    }
}

struct Layer {
    attn_norm: Tensor<1>,
    wq: QLinear,
    wk: QLinear,
    wv: QLinear,
    wo: QLinear,
    ffn_norm: Tensor<1>,
    gate: QLinear,
    up: QLinear,
    down: QLinear,
}

pub struct Llama {
    pub config: LlamaConfig,
    embedding: QLinear,
    layers: Vec<Layer>,
    output_norm: Tensor<1>,
    /// `None`: tied to the embedding table.
    output: Option<QLinear>,
}

impl Llama {
    pub fn from_gguf(file: &GgufFile, device: &Device) -> Result<Llama, ModelError> {
        let config = LlamaConfig::from_gguf(file)?;
        let d = config.embedding_length;
        let linear = |name: String, out_features: usize, in_features: usize| {
            let layer = QLinear::load(file, &name, device)?;
            if (layer.out_features, layer.in_features) != (out_features, in_features) {
                return Err(ModelError::Malformed(format!(
                    "{name} is {}×{}, expected {out_features}×{in_features}",
                    layer.out_features, layer.in_features
                )));
            }
            Ok(layer)
        };
        let (q_width, kv_width) = (config.heads * config.head_dim, config.kv_heads * config.head_dim);
        let mut layers = Vec::with_capacity(config.block_count);
        for i in 0..config.block_count {
            let name = |part: &str| format!("blk.{i}.{part}.weight");
            layers.push(Layer {
                attn_norm: load_vector(file, &name("attn_norm"), d, device)?,
                wq: linear(name("attn_q"), q_width, d)?,
                wk: linear(name("attn_k"), kv_width, d)?,
                wv: linear(name("attn_v"), kv_width, d)?,
                wo: linear(name("attn_output"), d, q_width)?,
                ffn_norm: load_vector(file, &name("ffn_norm"), d, device)?,
                gate: linear(name("ffn_gate"), config.feed_forward_length, d)?,
                up: linear(name("ffn_up"), config.feed_forward_length, d)?,
                down: linear(name("ffn_down"), d, config.feed_forward_length)?,
            });
        }
        let embedding = linear("token_embd.weight".into(), config.vocab_size, d)?;
        let output = match file.tensor("output.weight") {
            Some(_) => Some(linear("output.weight".into(), config.vocab_size, d)?),
            None => None,
        };
        Ok(Llama {
            output_norm: load_vector(file, "output_norm.weight", d, device)?,
            config,
            embedding,
            layers,
            output,
        })
    }

    /// Runs `tokens` at positions `cache.len()..`; returns the last position's
    /// hidden state `[1, d]` (see [`Llama::logits`]).
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Tensor<2> {
        let s = tokens.len();
        self.forward_every(tokens, cache)
            .slice([s - 1..s, 0..self.config.embedding_length])
    }

    /// Runs `tokens` at positions `cache.len()..`; returns every position's
    /// hidden state `[s, d]`.
    pub fn forward_every(&self, tokens: &[u32], cache: &mut KvCache) -> Tensor<2> {
        let c = &self.config;
        let start = cache.len();
        let s = tokens.len();
        let mut x = self.embedding.rows(tokens); // [s, d]
        for (i, layer) in self.layers.iter().enumerate() {
            let h = ops::rms_norm(x.clone(), &layer.attn_norm, c.rms_eps);
            let q = layer.wq.forward(h.clone()); // [s, heads·hd]
            let k = layer.wk.forward(h.clone()); // [s, kv_heads·hd]
            let v = layer.wv.forward(h);
            let q = ops::rope(q, c.head_dim, c.rotary_dim, start, c.rope_theta, RopeStyle::Interleaved);
            let k = ops::rope(k, c.head_dim, c.rotary_dim, start, c.rope_theta, RopeStyle::Interleaved);
            cache.store(i, k, v);
            let (k_cache, v_cache) = cache.layer(i);
            let attended = ops::attention(q, k_cache, v_cache, start, c.heads); // [s, heads·hd]
            x = x + layer.wo.forward(attended);

            let h = ops::rms_norm(x.clone(), &layer.ffn_norm, c.rms_eps);
            let gated = ops::swiglu(layer.gate.forward(h.clone()), layer.up.forward(h));
            x = x + layer.down.forward(gated);
        }
        cache.advance(s);
        x
    }

    /// The next-token logits of hidden states `[n, d]`, `n` rows of the vocabulary's size.
    pub fn logits(&self, hidden: Tensor<2>) -> Vec<f32> {
        let h = ops::rms_norm(hidden, &self.output_norm, self.config.rms_eps);
        let logits = self.output.as_ref().unwrap_or(&self.embedding).forward(h);
        logits.into_data().try_into_vec::<f32>().expect("logits are f32")
    }
}
