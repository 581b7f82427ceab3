//! Switchyard's in-process inference engine: quantized GGUF models on the CPU,
//! with Burn as the tensor framework and our own quantized matmul kernels.
//!
//! Where to find things:
//! - [`gguf`]: the GGUF file format: a bounds-checked reader over mmap.
pub mod chat_template;
pub mod engine;
pub mod generate;
pub mod gguf;
pub mod model;
pub mod ops;
pub mod quant;
pub mod sampling;
pub mod tokenizer;
