//! Switchyard's in-process inference engine: quantized GGUF models on the CPU,
//! with Burn as the tensor framework and our own quantized matmul kernels.
//!
//! Where to find things:
//! - [`gguf`]: the GGUF file format: a bounds-checked reader over mmap.
pub mod gguf;
