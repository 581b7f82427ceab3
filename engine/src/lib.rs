//! Switchyard's in-process inference engine: quantized models (GGUF files,
//! or Hugging Face checkpoints quantized at load) on the CPU, with Burn as the
//! tensor framework and our own quantized matmul kernels.
//!
//! Where to find things:
//! - [`gguf`]: the GGUF file format: a bounds-checked reader over mmap.
//! - [`quant`]: GGUF block formats, dequantization, the SIMD dot kernels, matmul,
//!   and quantizing f32 weights at load.
//! - [`ops`]: our Burn backend-extension ops (quantized linear, norms, RoPE, KV store, attention).
//! - [`attention`]: attention over the f16 KV cache, reference and vector paths.
//! - [`model`]: weight sources (GGUF, Hugging Face), architectures, their weights, the KV cache.
//! - [`tokenizer`], [`chat_template`], [`sampling`], [`generate`]: text in, tokens out;
//!   [`thinking`]: the reasoning of models that think in `<think>` blocks, and its budget;
//!   [`constraint`]: grammars that hold an answer (JSON Schema, regex, Lark);
//!   [`tool_calls`]: tool calls in each model family's format, as grammars and read back.
//! - [`packed`]: many short byte strings in one buffer (vocabularies, merge lists).
//! - [`engine`]: a loaded model on its own threads behind a bounded queue.
pub mod attention;
pub mod chat_template;
pub mod constraint;
pub mod engine;
pub mod generate;
pub mod gguf;
pub mod model;
pub mod ops;
pub mod packed;
pub mod quant;
pub mod sampling;
pub mod thinking;
pub mod tokenizer;
pub mod tool_calls;
