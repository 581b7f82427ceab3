//! Model architectures. Each is one module of the same shape: a config read
//! from GGUF metadata or a Hugging Face `config.json`, weights loaded from a
//! [`source::WeightSource`] (with the fix-ups each source needs), and a
//! forward pass over a [`KvCache`]. The shared pieces (quantized linear
//! layers, norms, RoPE, attention) live in [`crate::ops`] and [`weights`].
//!
//! - [`decoder`]: the dense decoder family: Llama, Qwen2/Qwen2.5, Qwen3.
//! - [`qwen35`]: Qwen3.5, Gated DeltaNet layers with gated attention layers.
//!
//! Both run a batch of sequences at once ([`Model::forward_batch`], see
//! `batch`); a single sequence is a batch of one.

mod batch;
pub mod decoder;
pub mod qwen35;
pub mod source;
pub mod weights;

use std::fmt;
use std::ops::ControlFlow;

use burn::prelude::*;

use crate::gguf::GgufError;
use batch::Batch;
pub use batch::Segment;
use source::WeightSource;
use weights::Quantization;

#[derive(Debug)]
pub enum ModelError {
    Gguf(GgufError),
    /// The file is GGUF but not a model we can run; the message says why.
    Unsupported(String),
    /// A required tensor or metadata key is missing or has the wrong shape.
    Malformed(String),
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelError::Gguf(err) => err.fmt(f),
            ModelError::Unsupported(why) => write!(f, "unsupported model: {why}"),
            ModelError::Malformed(why) => write!(f, "malformed model: {why}"),
        }
    }
}

impl std::error::Error for ModelError {}

fn unsupported(arch: &str) -> ModelError {
    ModelError::Unsupported(format!("architecture {arch:?} (supported: {SUPPORTED})"))
}

impl From<GgufError> for ModelError {
    fn from(err: GgufError) -> Self {
        ModelError::Gguf(err)
    }
}

/// What a loaded model is, for operators (`/v1/models`, `/readyz`, logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// `llama`, `qwen2`, `qwen3`.
    pub architecture: &'static str,
    /// The format of most of its weight bytes (`Q6_K`, `Q4_1`, `F32`, ...).
    pub quant: &'static str,
    pub parameters: u64,
    /// Memory its weights take, as loaded.
    pub weight_bytes: u64,
}

/// A loaded model of any supported architecture.
pub enum Model {
    Decoder(decoder::Decoder),
    Qwen35(qwen35::Qwen35),
}

/// The architectures this engine runs, as GGUF and Hugging Face name them.
const SUPPORTED: &str = "llama, qwen2, qwen3, qwen35 (GGUF) / qwen3_5 (Hugging Face)";

/// The next-token logits of hidden states `[n, d]` through the final norm
/// and the output matrix: `n` rows of the vocabulary's size.
pub(crate) fn output_logits(hidden: Tensor<2>, norm: &Tensor<1>, eps: f32, output: &weights::QLinear) -> Vec<f32> {
    let h = crate::ops::rms_norm(hidden, norm, eps);
    let logits = output.forward(h);
    logits.into_data().try_into_vec::<f32>().expect("logits are f32")
}

/// A model's [`ModelInfo`] from its matrices and its count of f32 values
/// outside them (norms, biases, ...), kept in f32.
pub(crate) fn info_of(architecture: &'static str, matrices: &[&weights::QLinear], vectors: usize) -> ModelInfo {
    let mut bytes_by_format: Vec<(crate::quant::QuantFormat, usize)> = Vec::new();
    for matrix in matrices {
        // Interleaved blocks are reported as the format they hold.
        let format = matrix.format.natural();
        match bytes_by_format.iter_mut().find(|(f, _)| *f == format) {
            Some((_, bytes)) => *bytes += matrix.byte_len(),
            None => bytes_by_format.push((format, matrix.byte_len())),
        }
    }
    let quant = bytes_by_format
        .iter()
        .max_by_key(|(_, bytes)| *bytes)
        .map_or("F32", |(f, _)| f.name());
    ModelInfo {
        architecture,
        quant,
        parameters: (matrices.iter().map(|m| m.out_features * m.in_features).sum::<usize>() + vectors) as u64,
        weight_bytes: (matrices.iter().map(|m| m.byte_len()).sum::<usize>() + 4 * vectors) as u64,
    }
}

impl Model {
    /// Builds the model its source names: a GGUF file's `general.architecture`,
    /// a Hugging Face directory's `model_type`. Float weights are encoded as
    /// `quant` says; a GGUF file's blocks stay as they are.
    pub fn load(source: &WeightSource, quant: Quantization, device: &Device) -> Result<Model, ModelError> {
        let (arch, config) = match source {
            WeightSource::Gguf(file) => {
                let arch = file
                    .get_str("general.architecture")
                    .ok_or_else(|| ModelError::Malformed("general.architecture is missing".into()))?;
                if arch == "qwen35" {
                    let config = qwen35::Qwen35Config::from_gguf(file)?;
                    return Ok(Model::Qwen35(qwen35::Qwen35::load(
                        source,
                        config,
                        Quantization::Keep,
                        device,
                    )?));
                }
                let family = decoder::Family::named(arch).ok_or_else(|| unsupported(arch))?;
                (arch, decoder::DecoderConfig::from_gguf(file, family)?)
            }
            WeightSource::HuggingFace(checkpoint) => {
                let arch = checkpoint
                    .config
                    .get("model_type")
                    .and_then(serde_json::Value::as_str)
                    .ok_or_else(|| ModelError::Malformed("config.json has no model_type".into()))?;
                if matches!(arch, "qwen3_5" | "qwen3_5_text") {
                    let config = qwen35::Qwen35::hf_config(checkpoint)?;
                    return Ok(Model::Qwen35(qwen35::Qwen35::load(source, config, quant, device)?));
                }
                let family = decoder::Family::named(arch).ok_or_else(|| unsupported(arch))?;
                (arch, decoder::Decoder::hf_config(checkpoint, family)?)
            }
        };
        tracing::debug!(arch, "loading the model");
        let quant = match source {
            WeightSource::Gguf(_) => Quantization::Keep,
            WeightSource::HuggingFace(_) => quant,
        };
        Ok(Model::Decoder(decoder::Decoder::load(source, config, quant, device)?))
    }

    pub fn info(&self) -> ModelInfo {
        match self {
            Model::Decoder(m) => m.info(),
            Model::Qwen35(m) => m.info(),
        }
    }

    pub fn context_length(&self) -> usize {
        match self {
            Model::Decoder(m) => m.config.context_length,
            Model::Qwen35(m) => m.config.context_length,
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Model::Decoder(m) => m.config.vocab_size,
            Model::Qwen35(m) => m.config.vocab_size,
        }
    }

    /// An empty cache for up to `capacity` positions.
    pub fn new_cache(&self, capacity: usize, device: &Device) -> KvCache {
        match self {
            Model::Decoder(m) => KvCache::new(
                m.config.block_count,
                m.config.kv_heads,
                m.config.head_dim,
                capacity,
                device,
            ),
            Model::Qwen35(m) => {
                let c = &m.config;
                let mut cache = KvCache::new(c.attention_layers(), c.kv_heads, c.head_dim, capacity, device);
                cache.recurrent = (0..c.linear_layers()).map(|_| c.new_state()).collect();
                cache
            }
        }
    }

    /// Every position's hidden state after `tokens` (run at the cache's next
    /// positions): the batch of this one sequence.
    fn forward_every(&self, tokens: &[u32], cache: &mut KvCache) -> Tensor<2> {
        batch::alone(tokens, cache, |segment, batch| self.forward_rows(segment, batch))
    }

    /// The hidden state of every row of `batch` (`[rows, d]`), each segment's
    /// cache moved past its tokens.
    fn forward_rows(&self, segments: &mut [Segment<'_>], batch: &Batch) -> Tensor<2> {
        match self {
            Model::Decoder(m) => m.forward_rows(segments, batch),
            Model::Qwen35(m) => m.forward_rows(segments, batch),
        }
    }

    /// The next-token logits of hidden states `[n, d]`.
    fn logits(&self, hidden: Tensor<2>) -> Vec<f32> {
        match self {
            Model::Decoder(m) => m.logits(hidden),
            Model::Qwen35(m) => m.logits(hidden),
        }
    }

    /// The final norm's output of hidden states `[n, d]` (what the output
    /// head reads), `n` rows of `d`.
    fn final_hidden(&self, hidden: Tensor<2>) -> Vec<f32> {
        let (norm, eps) = match self {
            Model::Decoder(m) => (&m.output_norm, m.config.rms_eps),
            Model::Qwen35(m) => (&m.output_norm, m.config.rms_eps),
        };
        crate::ops::rms_norm(hidden, norm, eps)
            .into_data()
            .try_into_vec::<f32>()
            .expect("hidden states are f32")
    }

    /// The embedding of `tokens` (a sequence of its own, run on a cache of
    /// its own): the final norm's output at the last position, L2-normalised.
    /// This is last-token pooling, as Qwen3-Embedding pools (its tokenizer
    /// ends each input with `<|endoftext|>`).
    pub fn embed(&self, tokens: &[u32], device: &Device) -> Vec<f32> {
        assert!(!tokens.is_empty(), "an embedding reads at least one token");
        let mut cache = self.new_cache(tokens.len(), device);
        let mut last = None;
        for part in tokens.chunks(Self::PREFILL_CHUNK) {
            let hidden = self.forward_every(part, &mut cache);
            let [s, d] = hidden.dims();
            last = Some(hidden.slice([s - 1..s, 0..d]));
        }
        let mut pooled = self.final_hidden(last.expect("at least one chunk"));
        let norm = pooled.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt();
        if norm > 0.0 {
            pooled.iter_mut().for_each(|x| *x = (f64::from(*x) / norm) as f32);
        }
        pooled
    }

    /// Runs `tokens` at the cache's next positions; returns the logits of the last one.
    ///
    /// A long prompt runs in chunks of at most [`Model::PREFILL_CHUNK`] positions:
    /// the activations of a chunk (about 30 KiB per position for SmolLM2, 15 MiB
    /// for a 512-token prompt at once) are what a prefill holds on top of the
    /// weights and the cache, and the matmuls are as fast on a chunk. The output
    /// head runs once, on the last chunk's last position.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Vec<f32> {
        self.forward_in_chunks(tokens, cache, |_| ControlFlow::Continue(()))
            .expect("nothing stops it")
    }

    /// As [`Model::forward`], asking `between_chunks` after every chunk but the
    /// last whether to go on (it is told how many of `tokens` have run so far);
    /// `None` when it answered `Break`, with the positions run so far left in
    /// the cache. This is what bounds a long prefill in time: a deadline or a
    /// caller gone stops it one chunk after the fact, not at the prompt's end.
    pub fn forward_in_chunks(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        mut between_chunks: impl FnMut(usize) -> ControlFlow<()>,
    ) -> Option<Vec<f32>> {
        assert!(!tokens.is_empty(), "a forward pass runs at least one token");
        let mut run = 0;
        let mut last = None;
        for part in tokens.chunks(Self::PREFILL_CHUNK) {
            if run > 0 && between_chunks(run).is_break() {
                return None;
            }
            let hidden = self.forward_every(part, cache);
            let [s, d] = hidden.dims();
            last = Some(hidden.slice([s - 1..s, 0..d]));
            run += part.len();
        }
        Some(self.logits(last.expect("at least one chunk")))
    }

    /// Runs `tokens` at the cache's next positions; returns the logits of
    /// every position, one row of the vocabulary's size after another (what
    /// reference checks compare; serving needs only the last, see
    /// [`Model::forward`]).
    pub fn forward_all(&self, tokens: &[u32], cache: &mut KvCache) -> Vec<f32> {
        assert!(!tokens.is_empty(), "a forward pass runs at least one token");
        tokens
            .chunks(Self::PREFILL_CHUNK)
            .flat_map(|part| self.logits(self.forward_every(part, cache)))
            .collect()
    }

    /// Runs `tokens` at the cache's next positions; returns the log-probability
    /// the model gave each token after the first (given those before it), and
    /// the log-probabilities of the token after the last. The output head runs
    /// on every position, so this costs more than [`Model::forward`].
    pub fn read(&self, tokens: &[u32], cache: &mut KvCache) -> (Vec<f32>, Vec<f32>) {
        assert!(!tokens.is_empty(), "a forward pass runs at least one token");
        let vocab = self.vocab_size();
        let mut token_logprobs = Vec::with_capacity(tokens.len() - 1);
        let mut next = Vec::new();
        for (chunk, part) in tokens.chunks(Self::PREFILL_CHUNK).enumerate() {
            let logits = self.logits(self.forward_every(part, cache));
            for (i, row) in logits.chunks_exact(vocab).enumerate() {
                let log_z = crate::sampling::log_sum_exp(row);
                match tokens.get(chunk * Self::PREFILL_CHUNK + i + 1) {
                    Some(&following) => token_logprobs.push(row[following as usize] - log_z),
                    None => next = row.iter().map(|&l| l - log_z).collect(),
                }
            }
        }
        (token_logprobs, next)
    }

    /// Positions a forward pass runs at once.
    pub const PREFILL_CHUNK: usize = 128;
}

/// A sequence's state after the positions run so far: the keys and values of
/// every attention layer, in half precision (see [`crate::attention`]), and
/// the recurrent state of every linear-attention layer (Qwen3.5's DeltaNet).
/// It is sized before a request runs (prompt plus the longest answer it may
/// get) and never grows during it; [`KvSlot`] keeps one from request to request.
pub struct KvCache {
    /// Per attention layer: keys and values, `[kv_heads, capacity, head_dim]`, f16 bits in `U16` tensors.
    layers: Vec<(Tensor<3, Int>, Tensor<3, Int>)>,
    /// Per linear-attention layer, in layer order.
    recurrent: Vec<qwen35::RecurrentState>,
    len: usize,
    capacity: usize,
}

impl KvCache {
    fn new(layers: usize, kv_heads: usize, head_dim: usize, capacity: usize, device: &Device) -> KvCache {
        let empty = || {
            Tensor::<3, Int>::zeros(
                [kv_heads, capacity, head_dim],
                burn::tensor::TensorCreationOptions::new(device.clone()).with_dtype(burn::tensor::DType::U16),
            )
        };
        KvCache {
            layers: (0..layers).map(|_| (empty(), empty())).collect(),
            recurrent: Vec::new(),
            len: 0,
            capacity,
        }
    }

    /// Positions filled so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Memory held by the keys and values (two bytes each), whatever is
    /// filled, and by the recurrent states.
    pub fn bytes(&self) -> usize {
        let kv: usize = self
            .layers
            .iter()
            .map(|(k, v)| (k.shape().num_elements() + v.shape().num_elements()) * std::mem::size_of::<u16>())
            .sum();
        kv + self.recurrent.iter().map(qwen35::RecurrentState::bytes).sum::<usize>()
    }

    /// Forgets every position; the memory stays for the next request. Stale
    /// keys and values are never read (attention reads the filled positions
    /// only), but a recurrent state is read whole: it is zeroed.
    fn clear(&mut self) {
        self.len = 0;
        self.recurrent.iter_mut().for_each(qwen35::RecurrentState::clear);
    }

    /// Holds the keys and values of `from`'s first `positions` positions,
    /// copied (a cache with keys and values only: a recurrent state is not
    /// copied).
    fn copy_prefix(&mut self, from: &KvCache, positions: usize) {
        debug_assert!(self.recurrent.is_empty() && from.recurrent.is_empty());
        for ((k, v), (from_k, from_v)) in self.layers.iter_mut().zip(&from.layers) {
            crate::ops::kv_copy(k, from_k, positions);
            crate::ops::kv_copy(v, from_v, positions);
        }
        self.len = positions;
    }

    /// Writes `k` and `v` (`[s, kv_heads × head_dim]`) at positions `len..len + s` of `layer`.
    fn store(&mut self, layer: usize, k: Tensor<2>, v: Tensor<2>) {
        // `kv_store` checks that the rows fit.
        let (k_cache, v_cache) = &mut self.layers[layer];
        crate::ops::kv_store(k_cache, k, self.len);
        crate::ops::kv_store(v_cache, v, self.len);
    }

    fn layer(&self, layer: usize) -> (&Tensor<3, Int>, &Tensor<3, Int>) {
        let (k, v) = &self.layers[layer];
        (k, v)
    }

    fn advance(&mut self, positions: usize) {
        self.len += positions;
    }
}

/// A KV cache kept from one generation to the next, as a serving engine keeps
/// its cache for the life of the process: allocating a fresh one per request
/// made the process's memory swing with the size of whatever request happened
/// to be running. A [`KvSlot::growing`] slot grows to the largest request it
/// has served (in steps of [`KvSlot::STEP`] positions, never past the context
/// window) and stays there, so memory is flat once the traffic's largest
/// request has run; a [`KvSlot::exact`] one, for a single generation, holds
/// just what that generation needs.
///
/// A slot also remembers which tokens its cache holds, so that the next
/// request that starts with them (a conversation's next turn) runs only what
/// is new: keys and values can be cut back to any shorter prefix, but a
/// recurrent state (Qwen3.5's DeltaNet) cannot be rolled back token by token,
/// so it is snapshotted at the turn boundary of each prompt (see
/// [`KvSlot::mark`]) and a later request reuses either the whole history or
/// that snapshot.
///
/// Stale keys and values past the filled positions are never read: attention
/// only looks at positions before the one it computes.
pub struct KvSlot {
    cache: Option<KvCache>,
    /// Capacity is allocated in multiples of this many positions.
    step: usize,
    /// The tokens whose state the cache holds (its `len()` first ones are valid).
    tokens: Vec<u32>,
    /// The recurrent state after the first `.0` tokens, for models that have one.
    snapshot: Option<(usize, Vec<qwen35::RecurrentState>)>,
    /// Where the last prompt's conversation ended (after its last
    /// end-of-turn token): a request sharing that much continues it.
    turn_end: usize,
}

impl KvSlot {
    /// The growth step of a [`KvSlot::growing`] slot: a request slightly
    /// longer than the largest so far does not reallocate.
    pub const STEP: usize = 256;

    /// For a worker serving one request after another.
    pub fn growing() -> KvSlot {
        KvSlot {
            cache: None,
            step: Self::STEP,
            tokens: Vec::new(),
            snapshot: None,
            turn_end: 0,
        }
    }

    /// For one generation: sized to the request exactly.
    pub fn exact() -> KvSlot {
        KvSlot {
            step: 1,
            ..KvSlot::growing()
        }
    }

    /// How many of `prompt`'s first tokens this slot can give the state of:
    /// the prefix it shares with the tokens the cache holds (at most all of
    /// the prompt but its last token, whose logits are needed), cut back for a
    /// model with a recurrent state to the whole history or the snapshot.
    pub fn reusable(&self, prompt: &[u32]) -> usize {
        let Some(cache) = &self.cache else { return 0 };
        let held = &self.tokens[..cache.len().min(self.tokens.len())];
        let shared = held.iter().zip(prompt).take_while(|(a, b)| a == b).count();
        let usable = shared.min(prompt.len().saturating_sub(1));
        if cache.recurrent.is_empty() {
            return usable;
        }
        if usable == held.len() {
            return usable;
        }
        match &self.snapshot {
            Some((position, _)) if *position <= usable => *position,
            _ => 0,
        }
    }

    /// The positions a slot growing in steps of `step` allocates for a
    /// request needing `positions`: whole steps, within the context window
    /// (unless the request itself needs more).
    pub fn capacity_for(step: usize, positions: usize, context_length: usize) -> usize {
        (positions.div_ceil(step) * step).min(context_length.max(positions))
    }

    /// A cache with room for `positions`, holding the state of `prompt`'s
    /// first `reuse` tokens (as [`KvSlot::reusable`] said; 0: empty), reusing
    /// the slot's memory when it is large enough. A cache too small is
    /// replaced by an empty larger one.
    pub fn prepare_reusing(
        &mut self,
        model: &Model,
        prompt: &[u32],
        reuse: usize,
        positions: usize,
        context_length: usize,
        device: &Device,
    ) -> (&mut KvCache, usize) {
        let fits = self.cache.as_ref().is_some_and(|c| c.capacity() >= positions);
        let mut reuse = if fits { reuse } else { 0 };
        if !fits {
            // Free the old cache before allocating the larger one.
            self.cache = None;
            let capacity = Self::capacity_for(self.step, positions, context_length);
            self.cache = Some(model.new_cache(capacity, device));
        }
        let cache = self.cache.as_mut().expect("allocated above");
        if reuse > 0 && reuse < cache.len() && !cache.recurrent.is_empty() {
            match &self.snapshot {
                Some((position, states)) if *position == reuse => cache.recurrent.clone_from(states),
                _ => reuse = 0,
            }
        }
        if reuse == 0 {
            cache.clear();
            self.snapshot = None;
        } else {
            cache.len = reuse;
        }
        self.tokens.clear();
        self.tokens.extend_from_slice(prompt);
        (cache, reuse)
    }

    /// An empty cache with room for `positions`, reusing the slot's memory when
    /// it is large enough.
    pub fn prepare(&mut self, model: &Model, positions: usize, context_length: usize, device: &Device) -> &mut KvCache {
        self.prepare_reusing(model, &[], 0, positions, context_length, device).0
    }

    /// Starts this slot, empty, from a copy of the state `source` holds for
    /// the prefix it shares with `prompt` (a system prompt, or the earlier
    /// turns of the conversation `prompt` forks from), sized for `positions`;
    /// `source` keeps its state for its own conversation. Only for keys and
    /// values: a recurrent state is shared only at `source`'s own turn
    /// boundary or whole history, which `source`'s conversation takes itself
    /// ([`KvSlot::continued_by`]). The positions copied.
    pub fn seed_from(
        &mut self,
        source: &KvSlot,
        prompt: &[u32],
        positions: usize,
        context_length: usize,
        model: &Model,
        device: &Device,
    ) -> usize {
        let Some(from) = source.cache.as_ref().filter(|from| from.recurrent.is_empty()) else {
            return 0;
        };
        let shared = source.reusable(prompt);
        if shared == 0 || self.cache.is_some() {
            return 0;
        }
        let mut cache = model.new_cache(Self::capacity_for(self.step, positions, context_length), device);
        cache.copy_prefix(from, shared);
        self.cache = Some(cache);
        self.tokens = prompt[..shared].to_vec();
        shared
    }

    /// Whether `prompt` continues the conversation this slot last served:
    /// it reuses at least all of that prompt's finished turns.
    pub fn continued_by(&self, prompt: &[u32]) -> bool {
        self.turn_end > 0 && self.reusable(prompt) >= self.turn_end
    }

    /// Records where the prompt being served ends its last finished turn.
    pub fn set_turn_end(&mut self, position: usize) {
        self.turn_end = position;
    }

    /// Snapshots the recurrent state as it is now, at `cache.len()` positions
    /// (a turn boundary of the prompt), for a later request to start from.
    pub fn mark(&mut self) {
        if let Some(cache) = &self.cache
            && !cache.recurrent.is_empty()
        {
            match &mut self.snapshot {
                Some((position, states)) => {
                    *position = cache.len();
                    states.clone_from(&cache.recurrent);
                }
                None => self.snapshot = Some((cache.len(), cache.recurrent.clone())),
            }
        }
    }

    /// Records tokens fed after the prompt (the answer), so that a later
    /// request can find them in the cache.
    pub fn record(&mut self, token: u32) {
        self.tokens.push(token);
    }

    /// The cache as a stopped prefill left it, holding `filled` positions, to
    /// go on from there.
    pub fn resume(&mut self, filled: usize) -> &mut KvCache {
        let cache = self.cache.as_mut().expect("a resumed slot holds a cache");
        assert_eq!(cache.len(), filled, "the slot holds the stopped prefill");
        cache
    }

    /// The cache, when the slot holds one.
    pub fn cache(&mut self) -> Option<&mut KvCache> {
        self.cache.as_mut()
    }

    /// Whether the slot's cache holds a recurrent state (see [`KvSlot::mark`]).
    pub fn has_recurrent_state(&self) -> bool {
        self.cache.as_ref().is_some_and(|c| !c.recurrent.is_empty())
    }

    /// Memory the slot holds: its cache and its snapshot.
    pub fn bytes(&self) -> usize {
        let snapshot = self
            .snapshot
            .as_ref()
            .map_or(0, |(_, states)| states.iter().map(qwen35::RecurrentState::bytes).sum());
        self.cache.as_ref().map_or(0, KvCache::bytes) + snapshot
    }
}
