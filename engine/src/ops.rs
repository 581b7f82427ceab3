//! Our operations, plugged into Burn as backend-extension ops.
//!
//! Burn's own quantized tensors are storage-only on CPU backends (every matmul
//! dequantizes the whole weight first), so the quantized linear layer is ours:
//! GGUF blocks stay as they are in a `U8` Burn tensor, and [`EngineOps::q_linear`]
//! runs the integer kernels of [`crate::quant`] on them. The other ops here are
//! fusions of what would otherwise be five to ten small Burn ops each, on the
//! per-token hot path (RMSNorm, RoPE, SwiGLU, embedding lookup, attention).
//!
//! Every op is written once, in `host`, over plain slices of host memory.
//! A CPU backend takes part by saying how its tensor primitive lends those
//! slices and is built from a result ([`HostTensor`]): Flex (the default) and,
//! with the `ndarray` feature, NdArray, which is kept for comparison only
//! (deprecated upstream and slower on these shapes, see docs/engine.md).

// Naming NdArray's types is what the `ndarray` feature is for.
#![cfg_attr(feature = "ndarray", allow(deprecated))]

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, TensorMetadata, backend_extension};
use burn::prelude::*;
use burn::tensor::{Shape, TensorData};
use burn_flex::FlexTensor;

use crate::quant::{QuantFormat, QuantMatrix};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs (x\[2i\], x\[2i+1\]): GGUF Llama files, whose q/k weights the
    /// converter permuted for it.
    Interleaved,
    /// Halves (x\[i\], x\[i + d/2\]): Qwen and GPT-NeoX.
    Halves,
}

#[backend_extension(Flex, NdArray: cfg(feature = "ndarray"))]
pub trait EngineOps: Backend {
    /// `x[m, k] · Wᵀ` with W `[n, k]` in GGUF block format `format` (a ggml type id).
    fn q_linear(x: FloatTensor<Self>, w: IntTensor<Self>, format: u32, n: usize, k: usize) -> FloatTensor<Self>;
    /// Rows `ids` of a `[rows, k]` GGUF-encoded table, dequantized: `[ids.len(), k]`.
    fn q_embedding(table: IntTensor<Self>, format: u32, rows: usize, k: usize, ids: Vec<u32>) -> FloatTensor<Self>;
    /// RMSNorm over the last dimension of `x[m, d]`, scaled by `weight[d]`.
    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f32) -> FloatTensor<Self>;
    /// Rotates each row of `x[s, heads × head_dim]` for its position in `positions`
    /// (`s` of them: a batch's rows belong to several sequences, each at its own).
    fn rope(
        x: FloatTensor<Self>,
        head_dim: usize,
        rotary_dim: usize,
        positions: Vec<u32>,
        theta: f32,
        halves: bool,
    ) -> FloatTensor<Self>;
    /// `silu(gate) × up`, element-wise.
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self>;
    /// Writes `rows[s, kv_heads × head_dim]` into `cache` (a `U16` tensor of f16 bits,
    /// `[kv_heads, capacity, head_dim]`) at positions `start..start + s`, in place when
    /// the cache is not shared.
    fn kv_store(cache: IntTensor<Self>, rows: FloatTensor<Self>, start: usize) -> IntTensor<Self>;
    /// Copies positions `0..positions` of every head of `from` into `cache`
    /// (both `U16` caches `[kv_heads, capacity, head_dim]`, of any
    /// capacities), in place when `cache` is not shared.
    fn kv_copy(cache: IntTensor<Self>, from: IntTensor<Self>, positions: usize) -> IntTensor<Self>;
    /// Causal grouped-query attention of `q[s, heads × head_dim]` (rows at positions
    /// `start..start + s`) over the first `start + s` entries of the f16 caches
    /// `[kv_heads, capacity, head_dim]` (see [`EngineOps::kv_store`]). Query head h
    /// reads kv head h / (heads / kv_heads).
    fn attention(
        q: FloatTensor<Self>,
        k_cache: IntTensor<Self>,
        v_cache: IntTensor<Self>,
        start: usize,
        heads: usize,
    ) -> FloatTensor<Self>;
}

fn format_of(id: u32) -> QuantFormat {
    QuantFormat::from_id(id).expect("weights are checked when the model loads")
}

/// A CPU backend's tensor primitive seen as host memory: what `host` reads
/// and what it builds its results into.
pub trait HostTensor: TensorMetadata + Sized {
    /// Calls `f` with the f32 values in row-major order (borrowed when the
    /// tensor is laid out contiguously, else copied once).
    fn with_f32<R>(&self, f: impl FnOnce(&[f32]) -> R) -> R;
    /// Calls `f` with the bytes of a `U8` tensor (GGUF blocks) in order.
    fn with_u8<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R;
    /// Calls `f` with the values of a `U16` tensor (f16 bits) in order.
    fn with_u16<R>(&self, f: impl FnOnce(&[u16]) -> R) -> R;
    /// Lets `f` change the values of a `U16` tensor in place (copied first only
    /// if the storage is shared or not laid out contiguously).
    fn update_u16(self, f: impl FnOnce(&mut [u16])) -> Self;
    fn from_f32(values: Vec<f32>, shape: impl Into<Shape>) -> Self;
}

/// Calls `$f` with the `$elem` values of a Flex tensor in row-major order,
/// borrowed when they are laid out contiguously, else copied once.
macro_rules! flex_slice {
    ($tensor:expr, $elem:ty, $f:expr) => {
        match $tensor.layout().contiguous_offsets() {
            Some((start, end)) => $f(&$tensor.storage::<$elem>()[start..end]),
            None => $f($tensor.to_contiguous().storage::<$elem>()),
        }
    };
}

impl HostTensor for FlexTensor {
    fn with_f32<R>(&self, f: impl FnOnce(&[f32]) -> R) -> R {
        flex_slice!(self, f32, f)
    }

    fn with_u8<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        flex_slice!(self, u8, f)
    }

    fn with_u16<R>(&self, f: impl FnOnce(&[u16]) -> R) -> R {
        flex_slice!(self, u16, f)
    }

    fn update_u16(self, f: impl FnOnce(&mut [u16])) -> Self {
        let mut tensor = match self.layout().contiguous_offsets() {
            Some(_) => self,
            None => self.to_contiguous(),
        };
        let (start, end) = tensor.layout().contiguous_offsets().expect("made contiguous above");
        f(&mut tensor.storage_mut::<u16>()[start..end]);
        tensor
    }

    fn from_f32(values: Vec<f32>, shape: impl Into<Shape>) -> Self {
        FlexTensor::from_data(TensorData::new(values, shape.into()))
    }
}

#[cfg(feature = "ndarray")]
mod ndarray_host {
    use burn::backend::ndarray::NdArrayTensor;
    use burn::tensor::{Shape, TensorData};

    use super::HostTensor;

    /// Calls `$f` with the elements of an ndarray storage in row-major order,
    /// borrowed when they already are.
    macro_rules! with_slice {
        ($storage:expr, $f:expr) => {{
            let view = $storage.view();
            match view.as_slice() {
                Some(values) => $f(values),
                None => $f(&view.iter().copied().collect::<Vec<_>>()),
            }
        }};
    }

    /// Our ops are only ever given tensors of the dtypes they are written for.
    fn wrong_dtype(expected: &str, tensor: &NdArrayTensor) -> ! {
        panic!(
            "expected {expected} tensor, got {:?}",
            burn::backend::TensorMetadata::dtype(tensor)
        )
    }

    impl HostTensor for NdArrayTensor {
        fn with_f32<R>(&self, f: impl FnOnce(&[f32]) -> R) -> R {
            match self {
                NdArrayTensor::F32(storage) => with_slice!(storage, f),
                other => wrong_dtype("an f32", other),
            }
        }

        fn with_u8<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
            match self {
                NdArrayTensor::U8(storage) => with_slice!(storage, f),
                other => wrong_dtype("a u8", other),
            }
        }

        fn with_u16<R>(&self, f: impl FnOnce(&[u16]) -> R) -> R {
            match self {
                NdArrayTensor::U16(storage) => with_slice!(storage, f),
                other => wrong_dtype("a u16", other),
            }
        }

        fn update_u16(self, f: impl FnOnce(&mut [u16])) -> Self {
            match self {
                NdArrayTensor::U16(mut storage) => {
                    let array = storage.ensure_owned();
                    if !array.is_standard_layout() {
                        *array = array.as_standard_layout().into_owned().into_shared();
                    }
                    f(array.as_slice_mut().expect("standard layout"));
                    NdArrayTensor::U16(storage)
                }
                other => wrong_dtype("a u16", &other),
            }
        }

        fn from_f32(values: Vec<f32>, shape: impl Into<Shape>) -> Self {
            NdArrayTensor::from_data(TensorData::new(values, shape.into()))
        }
    }
}

/// The ops on host memory, for any [`HostTensor`].
mod host {
    use super::{HostTensor, QuantMatrix, format_of};

    pub fn q_linear<T: HostTensor>(x: T, w: T, format: u32, n: usize, k: usize) -> T {
        let (out, m) = x.with_f32(|xs| {
            w.with_u8(|blocks| {
                let m = xs.len() / k;
                let matrix = QuantMatrix::new(format_of(format), n, k, blocks).expect("checked at load");
                let mut out = vec![0f32; m * n];
                crate::quant::matmul(xs, m, &matrix, &mut out);
                (out, m)
            })
        });
        T::from_f32(out, [m, n])
    }

    pub fn q_embedding<T: HostTensor>(table: T, format: u32, rows: usize, k: usize, ids: Vec<u32>) -> T {
        let out = table.with_u8(|blocks| {
            let matrix = QuantMatrix::new(format_of(format), rows, k, blocks).expect("checked at load");
            let mut out = vec![0f32; ids.len() * k];
            for (row, &id) in out.chunks_exact_mut(k).zip(&ids) {
                matrix.dequantize_row(id as usize, row);
            }
            out
        });
        T::from_f32(out, [ids.len(), k])
    }

    pub fn rms_norm<T: HostTensor>(x: T, weight: T, eps: f32) -> T {
        let out = x.with_f32(|xs| {
            weight.with_f32(|w| {
                let d = w.len();
                let mut out = vec![0f32; xs.len()];
                for (o, row) in out.chunks_exact_mut(d).zip(xs.chunks_exact(d)) {
                    let mean_square = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
                    let scale = 1.0 / (mean_square + eps).sqrt();
                    for ((o, v), w) in o.iter_mut().zip(row).zip(w) {
                        *o = v * scale * w;
                    }
                }
                out
            })
        });
        T::from_f32(out, x.shape())
    }

    pub fn rope<T: HostTensor>(
        x: T,
        head_dim: usize,
        rotary_dim: usize,
        positions: Vec<u32>,
        theta: f32,
        halves: bool,
    ) -> T {
        let shape = x.shape();
        let mut out: Vec<f32> = x.with_f32(<[f32]>::to_vec);
        let width = shape[shape.num_dims() - 1];
        assert_eq!(out.len(), positions.len() * width, "one position per row");
        let half = rotary_dim / 2;
        // Frequencies once per call: θ^(-2i/d) for each rotated pair.
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| theta.powf(-2.0 * i as f32 / rotary_dim as f32))
            .collect();
        for (row, &position) in out.chunks_exact_mut(width).zip(&positions) {
            let position = position as f32;
            let angles: Vec<(f32, f32)> = inv_freq.iter().map(|f| (position * f).sin_cos()).collect();
            for head in row.chunks_exact_mut(head_dim) {
                for (i, &(sin, cos)) in angles.iter().enumerate() {
                    let (a, b) = if halves { (i, i + half) } else { (2 * i, 2 * i + 1) };
                    let (x0, x1) = (head[a], head[b]);
                    head[a] = x0 * cos - x1 * sin;
                    head[b] = x0 * sin + x1 * cos;
                }
            }
        }
        T::from_f32(out, shape)
    }

    pub fn swiglu<T: HostTensor>(gate: T, up: T) -> T {
        let out = gate.with_f32(|g| {
            up.with_f32(|u| {
                g.iter()
                    .zip(u)
                    .map(|(&g, &u)| g / (1.0 + (-g).exp()) * u)
                    .collect::<Vec<f32>>()
            })
        });
        T::from_f32(out, gate.shape())
    }

    pub fn kv_store<T: HostTensor>(cache: T, rows: T, start: usize) -> T {
        let shape = cache.shape();
        let (kv_heads, capacity, head_dim) = (shape[0], shape[1], shape[2]);
        rows.with_f32(|values| {
            let width = kv_heads * head_dim;
            let s = values.len() / width;
            assert!(
                start + s <= capacity,
                "the cache is sized for the request before it runs"
            );
            cache.update_u16(|cache| {
                for (position, row) in (start..).zip(values.chunks_exact(width)) {
                    for (head, part) in row.chunks_exact(head_dim).enumerate() {
                        let at = (head * capacity + position) * head_dim;
                        crate::attention::store_f16(part, &mut cache[at..at + head_dim]);
                    }
                }
            })
        })
    }

    pub fn kv_copy<T: HostTensor>(cache: T, from: T, positions: usize) -> T {
        let (to, source) = (cache.shape(), from.shape());
        let (kv_heads, capacity, head_dim) = (to[0], to[1], to[2]);
        let source_capacity = source[1];
        assert!(
            source[0] == kv_heads && source[2] == head_dim && positions <= capacity.min(source_capacity),
            "copying {positions} positions of a {source:?} cache into a {to:?} one"
        );
        let run = positions * head_dim;
        from.with_u16(|src| {
            cache.update_u16(|dst| {
                for head in 0..kv_heads {
                    let (at, from_at) = (head * capacity * head_dim, head * source_capacity * head_dim);
                    dst[at..at + run].copy_from_slice(&src[from_at..from_at + run]);
                }
            })
        })
    }

    pub fn attention<T: HostTensor>(q: T, k_cache: T, v_cache: T, start: usize, heads: usize) -> T {
        use rayon::prelude::*;
        let cache_shape = k_cache.shape();
        let (kv_heads, capacity, head_dim) = (cache_shape[0], cache_shape[1], cache_shape[2]);
        let width = heads * head_dim;
        let group = heads / kv_heads;
        let (out, rows) = q.with_f32(|qs| {
            k_cache.with_u16(|ks| {
                v_cache.with_u16(|vs| {
                    let rows = qs.len() / width;
                    let mut out = vec![0f32; qs.len()];
                    // One task per (row, head): independent, and enough of them to fill the
                    // cores in prefill; a decode step has `heads` tasks.
                    out.par_chunks_mut(head_dim)
                        .enumerate()
                        .for_each_init(Vec::new, |scores, (task, out)| {
                            let (row, head) = (task / heads, task % heads);
                            let kv = head / group;
                            let keys = start + row + 1;
                            let cache = kv * capacity * head_dim..(kv + 1) * capacity * head_dim;
                            let q = &qs[row * width + head * head_dim..][..head_dim];
                            crate::attention::attend_row(q, &ks[cache.clone()], &vs[cache], keys, out, scores);
                        });
                    (out, rows)
                })
            })
        });
        T::from_f32(out, [rows, width])
    }
}

/// Implements [`EngineOps`] for a CPU backend whose primitive is a [`HostTensor`].
macro_rules! host_engine_ops {
    ($backend:ty, $tensor:ty) => {
        impl EngineOps for $backend {
            fn q_linear(x: $tensor, w: $tensor, format: u32, n: usize, k: usize) -> $tensor {
                host::q_linear(x, w, format, n, k)
            }

            fn q_embedding(table: $tensor, format: u32, rows: usize, k: usize, ids: Vec<u32>) -> $tensor {
                host::q_embedding(table, format, rows, k, ids)
            }

            fn rms_norm(x: $tensor, weight: $tensor, eps: f32) -> $tensor {
                host::rms_norm(x, weight, eps)
            }

            fn rope(
                x: $tensor,
                head_dim: usize,
                rotary_dim: usize,
                positions: Vec<u32>,
                theta: f32,
                halves: bool,
            ) -> $tensor {
                host::rope(x, head_dim, rotary_dim, positions, theta, halves)
            }

            fn swiglu(gate: $tensor, up: $tensor) -> $tensor {
                host::swiglu(gate, up)
            }

            fn kv_store(cache: $tensor, rows: $tensor, start: usize) -> $tensor {
                host::kv_store(cache, rows, start)
            }

            fn kv_copy(cache: $tensor, from: $tensor, positions: usize) -> $tensor {
                host::kv_copy(cache, from, positions)
            }

            fn attention(q: $tensor, k_cache: $tensor, v_cache: $tensor, start: usize, heads: usize) -> $tensor {
                host::attention(q, k_cache, v_cache, start, heads)
            }
        }
    };
}

host_engine_ops!(burn::backend::Flex, FlexTensor);
#[cfg(feature = "ndarray")]
host_engine_ops!(burn::backend::NdArray, burn::backend::ndarray::NdArrayTensor);

type Dispatch = burn::backend::Dispatch;

pub fn q_linear(x: Tensor<2>, w: &Tensor<1, Int>, format: QuantFormat, n: usize, k: usize) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as EngineOps>::q_linear(
        x.into_dispatch(),
        w.clone().into_dispatch(),
        format.id(),
        n,
        k,
    ))
}

pub fn q_embedding(table: &Tensor<1, Int>, format: QuantFormat, rows: usize, k: usize, ids: &[u32]) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as EngineOps>::q_embedding(
        table.clone().into_dispatch(),
        format.id(),
        rows,
        k,
        ids.to_vec(),
    ))
}

pub fn rms_norm(x: Tensor<2>, weight: &Tensor<1>, eps: f32) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as EngineOps>::rms_norm(
        x.into_dispatch(),
        weight.clone().into_dispatch(),
        eps,
    ))
}

/// See [`EngineOps::rope`].
pub fn rope(
    x: Tensor<2>,
    head_dim: usize,
    rotary_dim: usize,
    positions: &[u32],
    theta: f32,
    style: RopeStyle,
) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as EngineOps>::rope(
        x.into_dispatch(),
        head_dim,
        rotary_dim,
        positions.to_vec(),
        theta,
        style == RopeStyle::Halves,
    ))
}

/// See [`EngineOps::kv_store`].
pub fn kv_store(cache: &mut Tensor<3, Int>, rows: Tensor<2>, start: usize) {
    cache.inplace(|c| {
        Tensor::from_dispatch(<Dispatch as EngineOps>::kv_store(
            c.into_dispatch(),
            rows.into_dispatch(),
            start,
        ))
    });
}

/// See [`EngineOps::kv_copy`].
pub fn kv_copy(cache: &mut Tensor<3, Int>, from: &Tensor<3, Int>, positions: usize) {
    cache.inplace(|c| {
        Tensor::from_dispatch(<Dispatch as EngineOps>::kv_copy(
            c.into_dispatch(),
            from.clone().into_dispatch(),
            positions,
        ))
    });
}

pub fn attention(
    q: Tensor<2>,
    k_cache: &Tensor<3, Int>,
    v_cache: &Tensor<3, Int>,
    start: usize,
    heads: usize,
) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as EngineOps>::attention(
        q.into_dispatch(),
        k_cache.clone().into_dispatch(),
        v_cache.clone().into_dispatch(),
        start,
        heads,
    ))
}

pub fn swiglu(gate: Tensor<2>, up: Tensor<2>) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as EngineOps>::swiglu(
        gate.into_dispatch(),
        up.into_dispatch(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `[heads, capacity, dim]` f16-bits cache whose value at each place
    /// names it: `base + (head, position, d)` packed in decimal digits.
    fn cache(heads: usize, capacity: usize, dim: usize, base: u16) -> Tensor<3, Int> {
        let values: Vec<u16> = (0..heads)
            .flat_map(|h| (0..capacity).flat_map(move |p| (0..dim).map(move |d| base + (h * 100 + p * 10 + d) as u16)))
            .collect();
        let options = burn::tensor::TensorCreationOptions::new(Device::flex()).with_dtype(burn::tensor::DType::U16);
        Tensor::from_data(TensorData::new(values, [heads, capacity, dim]), options)
    }

    fn values(tensor: &Tensor<3, Int>) -> Vec<u16> {
        tensor.clone().into_data().convert::<u16>().into_vec::<u16>().unwrap()
    }

    #[test]
    fn kv_copy_copies_each_heads_first_positions_between_capacities() {
        let (heads, dim) = (2, 3);
        for (capacity, source_capacity) in [(8, 5), (4, 6), (5, 5)] {
            let from = cache(heads, source_capacity, dim, 0);
            let mut to = cache(heads, capacity, dim, 5000);
            let before = values(&to);
            kv_copy(&mut to, &from, 3);
            let after = values(&to);
            for h in 0..heads {
                for p in 0..capacity {
                    for d in 0..dim {
                        let at = (h * capacity + p) * dim + d;
                        let expected = if p < 3 {
                            (h * 100 + p * 10 + d) as u16
                        } else {
                            before[at]
                        };
                        assert_eq!(
                            after[at], expected,
                            "head {h} position {p} dim {d}, capacities {capacity}/{source_capacity}"
                        );
                    }
                }
            }
        }
    }
}
