//! Several sequences through one forward pass: the step of continuous batching.
//!
//! Each sequence brings a [`Segment`]: one token to decode, or a chunk of its
//! prompt, run at its own cache's next positions. Their rows are stacked,
//! segment after segment, into one `[R, d]` activation (R = Σ segment lengths)
//! that goes through every matrix at once, so one read of each weight serves
//! every row: decoding is bound by reading the weights, and B sequences then
//! read them once a step rather than B times. What relates positions to each
//! other stays per sequence: the KV store and attention (each segment over its
//! own cache, [`attend`]) and Qwen3.5's recurrent state. RoPE rotates every row
//! by its own position in one op ([`Batch::positions`]), not one op per segment.
//!
//! A row's result does not depend on the batch, bit for bit: every op over the
//! stacked rows computes a row exactly as it would alone (the matmul kernels do,
//! see [`crate::quant::matmul`]; norms, RoPE, SwiGLU, biases and gates are
//! row-wise), so a sequence's logits are the same whatever it runs beside. A
//! single sequence's forward pass is the batch of one segment.

use std::ops::Range;

use burn::prelude::*;
use rayon::prelude::*;

use super::{KvCache, Model};
use crate::ops;

/// One sequence's share of a batched forward pass (see [`Model::forward_batch`]).
pub struct Segment<'a> {
    /// Run at the cache's next positions.
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
    /// Whether the logits of its last position are wanted (a prefill chunk
    /// that is not the prompt's last needs none).
    pub logits: bool,
}

/// Where each segment's rows sit in the stacked activations, and what they run.
pub(super) struct Batch {
    /// Per segment, its rows: consecutive, in segment order.
    spans: Vec<Range<usize>>,
    /// Per row, its token.
    tokens: Vec<u32>,
    /// Per row, its position in its own sequence.
    positions: Vec<u32>,
}

impl Batch {
    pub(super) fn of(segments: &[Segment<'_>]) -> Batch {
        let rows = segments.iter().map(|s| s.tokens.len()).sum();
        let mut batch = Batch {
            spans: Vec::with_capacity(segments.len()),
            tokens: Vec::with_capacity(rows),
            positions: Vec::with_capacity(rows),
        };
        for segment in segments {
            assert!(!segment.tokens.is_empty(), "a segment runs at least one token");
            let first = batch.tokens.len();
            let start = segment.cache.len();
            batch.spans.push(first..first + segment.tokens.len());
            batch.tokens.extend_from_slice(segment.tokens);
            batch
                .positions
                .extend((start..start + segment.tokens.len()).map(|p| p as u32));
        }
        batch
    }

    /// Every row's token, segment after segment.
    pub(super) fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Every row's position in its own sequence (what RoPE rotates it by).
    pub(super) fn positions(&self) -> &[u32] {
        &self.positions
    }

    /// Segment `i`'s rows.
    pub(super) fn span(&self, i: usize) -> Range<usize> {
        self.spans[i].clone()
    }

    /// Rows in all.
    pub(super) fn rows(&self) -> usize {
        self.tokens.len()
    }

    /// Moves every segment's cache past the positions it ran.
    pub(super) fn advance(&self, segments: &mut [Segment<'_>]) {
        for (segment, span) in segments.iter_mut().zip(&self.spans) {
            segment.cache.advance(span.len());
        }
    }
}

/// Runs `forward` on the batch of one sequence: `tokens` at `cache`'s next positions.
pub(super) fn alone<T>(
    tokens: &[u32],
    cache: &mut KvCache,
    forward: impl FnOnce(&mut [Segment<'_>], &Batch) -> T,
) -> T {
    let mut segment = [Segment {
        tokens,
        cache,
        logits: false,
    }];
    let batch = Batch::of(&segment);
    forward(&mut segment, &batch)
}

/// Stores each segment's keys and values in attention layer `layer` of its own
/// cache, at its next positions, and attends its queries over that cache
/// (causal, grouped-query): q `[R, heads·hd]`, k and v `[R, kv_heads·hd]`, RoPE
/// applied, give `[R, heads·hd]`.
pub(super) fn attend(
    segments: &mut [Segment<'_>],
    batch: &Batch,
    layer: usize,
    [q, k, v]: [Tensor<2>; 3],
    heads: usize,
) -> Tensor<2> {
    let rows_of = |t: &Tensor<2>, rows: Range<usize>| {
        let [_, width] = t.dims();
        t.clone().slice([rows, 0..width])
    };
    // Segments in parallel, each attention op splitting over its own rows and
    // heads within: rayon balances the (segment, head) tasks of a decode batch
    // over the threads, where one op after another split nine heads (SmolLM2)
    // over two threads at a time (a SmolLM2 step of 8 or 16 decodes ran ~5%
    // faster so).
    let mut attended: Vec<Tensor<2>> = segments
        .par_iter_mut()
        .enumerate()
        .map(|(i, segment)| {
            let rows = batch.span(i);
            let start = segment.cache.len();
            segment
                .cache
                .store(layer, rows_of(&k, rows.clone()), rows_of(&v, rows.clone()));
            let (k_cache, v_cache) = segment.cache.layer(layer);
            ops::attention(rows_of(&q, rows), k_cache, v_cache, start, heads)
        })
        .collect();
    if attended.len() == 1 {
        attended.pop().expect("one segment")
    } else {
        Tensor::cat(attended, 0)
    }
}

impl Model {
    /// Runs every segment's tokens at its own cache's next positions, all
    /// segments' rows through each matrix together (one weight read serves
    /// every row), attention, RoPE, the KV store and recurrent state per
    /// segment; returns per segment the logits of its last position when asked
    /// (`None` otherwise). The output head runs once over the wanted rows.
    ///
    /// The rows are activations held at once (see [`Model::PREFILL_CHUNK`]):
    /// the caller bounds them, as a prefill bounds its chunks.
    pub fn forward_batch(&self, segments: &mut [Segment<'_>]) -> Vec<Option<Vec<f32>>> {
        if segments.is_empty() {
            return Vec::new();
        }
        let batch = Batch::of(segments);
        let wanted: Vec<i64> = (0..segments.len())
            .filter(|&i| segments[i].logits)
            .map(|i| batch.span(i).end as i64 - 1)
            .collect();
        let hidden = self.forward_rows(segments, &batch);
        if wanted.is_empty() {
            return vec![None; segments.len()];
        }
        let count = wanted.len();
        let last_rows = Tensor::<1, Int>::from_data(TensorData::new(wanted, [count]), &hidden.device());
        let logits = self.logits(hidden.select(0, last_rows));
        let mut rows = logits.chunks_exact(logits.len() / count);
        segments
            .iter()
            .map(|s| {
                s.logits
                    .then(|| rows.next().expect("a row per wanted segment").to_vec())
            })
            .collect()
    }
}
