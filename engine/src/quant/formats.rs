//! The weight encodings we compute with, as data: GGML's, as GGUF files store
//! them, and two of our own for MLX's affine quantization.
//!
//! Every quantized format stores a row as a run of fixed-size blocks. Each block
//! is a `#[repr(C)]` struct here whose size is checked at compile time against the
//! size in ggml's `ggml-common.h`, so a layout mistake fails the build instead of
//! corrupting numbers. Two choices make the structs safe to read straight out of a
//! memory-mapped file without `unsafe`:
//!
//! - Half-precision fields are byte pairs ([`F16Bytes`]), not `u16`, so every block
//!   has alignment 1 and may start at any byte offset of the mmap.
//! - Blocks are *read* (copied out of a `&[u8; N]`) rather than cast; the copies are
//!   free after inlining, and the SIMD kernels use the same field offsets through
//!   `offset_of!` so the struct stays the single source of truth for the layout.
//!
//! The activation-side formats (`Q8_0`, `Q8_1`, `Q8_K`) never occur as weights in the
//! models we load; they are what llama.cpp's CPU backend quantizes the *input* row to
//! before an integer dot product ([`ActivationFormat`]).

use half::{bf16, f16};

/// An IEEE binary16 value as its two little-endian bytes (GGUF is little-endian).
pub type F16Bytes = [u8; 2];

/// Widens a stored half to f32. Exact: every f16 value is representable in f32.
#[inline]
pub fn f16_to_f32(bytes: F16Bytes) -> f32 {
    f16::from_bits(u16::from_le_bytes(bytes)).to_f32()
}

/// Rounds to the nearest f16 (ties to even), as ggml's `GGML_FP32_TO_FP16` does on x86
/// (`_cvtss_sh(x, 0)`), and widens back: the value a stored f16 scale would read as.
#[inline]
pub fn round_to_f16(value: f32) -> f32 {
    f16::from_f32(value).to_f32()
}

/// Widens a stored bfloat16 to f32 (exact: bf16 is the top half of an f32).
#[inline]
pub fn bf16_to_f32(bytes: [u8; 2]) -> f32 {
    bf16::from_bits(u16::from_le_bytes(bytes)).to_f32()
}

/// The weight encodings we have kernels for, named as ggml names them.
///
/// `Q4_K` and friends keep ggml's spelling so that log lines, error messages and
/// GGUF tooling all agree on one name per format. `A6_64` and `A8_64` are ours:
/// the affine groups of MLX's 6- and 8-bit quantization (`w = s·q + b` per 64
/// elements), repacked at load into blocks our kernels read (see
/// [`BlockA6_64`]); MLX's 4-bit groups are exactly [`QuantFormat::Q4_1`] blocks.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantFormat {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q8_0,
    Q4_K,
    Q5_K,
    Q6_K,
    A6_64,
    A8_64,
    /// [`QuantFormat::Q4_K`]'s blocks with their quants in the kernels' order
    /// ([`super::interleave`]); made at load from Q4_K, never stored in files.
    Q4_K_I,
    /// [`QuantFormat::Q6_K`]'s blocks, interleaved as `Q4_K_I`.
    Q6_K_I,
    /// Four [`QuantFormat::A6_64`] groups (256 elements) in one block with their
    /// quants interleaved as `Q4_K_I` ([`BlockA6I`]); made at load from A6_64.
    A6_64_I,
}

impl QuantFormat {
    /// Every format, for tests and tools that iterate over them.
    pub const ALL: [QuantFormat; 14] = [
        QuantFormat::F32,
        QuantFormat::F16,
        QuantFormat::BF16,
        QuantFormat::Q4_0,
        QuantFormat::Q4_1,
        QuantFormat::Q8_0,
        QuantFormat::Q4_K,
        QuantFormat::Q5_K,
        QuantFormat::Q6_K,
        QuantFormat::A6_64,
        QuantFormat::A8_64,
        QuantFormat::Q4_K_I,
        QuantFormat::Q6_K_I,
        QuantFormat::A6_64_I,
    ];

    /// The format of a GGUF tensor's `ggml_type` id, if we can compute with it.
    pub fn from_ggml_type(id: u32) -> Option<QuantFormat> {
        QuantFormat::ALL
            .into_iter()
            .find(|format| format.ggml_type() == Some(id))
    }

    /// The `ggml_type` id (`enum ggml_type` in ggml.h); `None` for our own formats.
    pub fn ggml_type(self) -> Option<u32> {
        Some(match self {
            QuantFormat::F32 => 0,
            QuantFormat::F16 => 1,
            QuantFormat::Q4_0 => 2,
            QuantFormat::Q4_1 => 3,
            QuantFormat::Q8_0 => 8,
            QuantFormat::Q4_K => 12,
            QuantFormat::Q5_K => 13,
            QuantFormat::Q6_K => 14,
            QuantFormat::BF16 => 30,
            QuantFormat::A6_64
            | QuantFormat::A8_64
            | QuantFormat::Q4_K_I
            | QuantFormat::Q6_K_I
            | QuantFormat::A6_64_I => return None,
        })
    }

    /// Our id for the format (its place in [`QuantFormat::ALL`]), as the backend
    /// operations carry it.
    pub fn id(self) -> u32 {
        QuantFormat::ALL
            .iter()
            .position(|&format| format == self)
            .expect("ALL lists every format") as u32
    }

    /// The format with [`QuantFormat::id`] `id`.
    pub fn from_id(id: u32) -> Option<QuantFormat> {
        QuantFormat::ALL.get(id as usize).copied()
    }

    /// Elements per block: 1 for the float types, 32 or 256 for quantized ones.
    pub fn block_elems(self) -> usize {
        match self {
            QuantFormat::F32 | QuantFormat::F16 | QuantFormat::BF16 => 1,
            QuantFormat::Q4_0 => BlockQ4_0::ELEMS,
            QuantFormat::Q4_1 => BlockQ4_1::ELEMS,
            QuantFormat::Q8_0 => BlockQ8_0::ELEMS,
            QuantFormat::Q4_K | QuantFormat::Q4_K_I => BlockQ4K::ELEMS,
            QuantFormat::Q5_K => BlockQ5K::ELEMS,
            QuantFormat::Q6_K | QuantFormat::Q6_K_I => BlockQ6K::ELEMS,
            QuantFormat::A6_64 => BlockA6_64::ELEMS,
            QuantFormat::A6_64_I => BlockA6I::ELEMS,
            QuantFormat::A8_64 => BlockA8_64::ELEMS,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            QuantFormat::F32 => 4,
            QuantFormat::F16 | QuantFormat::BF16 => 2,
            QuantFormat::Q4_0 => BlockQ4_0::BYTES,
            QuantFormat::Q4_1 => BlockQ4_1::BYTES,
            QuantFormat::Q8_0 => BlockQ8_0::BYTES,
            QuantFormat::Q4_K | QuantFormat::Q4_K_I => BlockQ4K::BYTES,
            QuantFormat::Q5_K => BlockQ5K::BYTES,
            QuantFormat::Q6_K | QuantFormat::Q6_K_I => BlockQ6K::BYTES,
            QuantFormat::A6_64 => BlockA6_64::BYTES,
            QuantFormat::A6_64_I => BlockA6I::BYTES,
            QuantFormat::A8_64 => BlockA8_64::BYTES,
        }
    }

    /// Bytes of a row of `k` elements; `None` if `k` is not a whole number of blocks
    /// (ggml cannot encode such a row) or the size overflows.
    pub fn row_bytes(self, k: usize) -> Option<usize> {
        if !k.is_multiple_of(self.block_elems()) {
            return None;
        }
        (k / self.block_elems()).checked_mul(self.block_bytes())
    }

    /// ggml's name for the format: `"Q4_1"`, `"BF16"`, ...
    pub fn name(self) -> &'static str {
        match self {
            QuantFormat::F32 => "F32",
            QuantFormat::F16 => "F16",
            QuantFormat::BF16 => "BF16",
            QuantFormat::Q4_0 => "Q4_0",
            QuantFormat::Q4_1 => "Q4_1",
            QuantFormat::Q8_0 => "Q8_0",
            QuantFormat::Q4_K => "Q4_K",
            QuantFormat::Q5_K => "Q5_K",
            QuantFormat::Q6_K => "Q6_K",
            QuantFormat::A6_64 => "A6_64",
            QuantFormat::A8_64 => "A8_64",
            QuantFormat::Q4_K_I => "Q4_K_I",
            QuantFormat::Q6_K_I => "Q6_K_I",
            QuantFormat::A6_64_I => "A6_64_I",
        }
    }

    /// The format whose blocks this one holds: Q4_K for Q4_K_I, Q6_K for Q6_K_I,
    /// A6_64 for A6_64_I (whose block holds four), else itself. What a model's
    /// weights are reported as. A row takes the same bytes in both.
    pub fn natural(self) -> QuantFormat {
        match self {
            QuantFormat::Q4_K_I => QuantFormat::Q4_K,
            QuantFormat::Q6_K_I => QuantFormat::Q6_K,
            QuantFormat::A6_64_I => QuantFormat::A6_64,
            other => other,
        }
    }

    /// What the input row is converted to before the dot products, as llama.cpp's CPU
    /// backend pairs them (`vec_dot_type` in `ggml-cpu.c`). Matching that pairing is
    /// what makes our logits agree with llama.cpp's to within rounding.
    pub fn activation_format(self) -> ActivationFormat {
        match self {
            // llama.cpp rounds the input to f16/bf16 for these; we keep f32 (more
            // accurate, and the difference is far below what our comparisons resolve).
            QuantFormat::F32 | QuantFormat::F16 | QuantFormat::BF16 => ActivationFormat::F32,
            QuantFormat::Q4_0 | QuantFormat::Q8_0 => ActivationFormat::Q8_0,
            // The `_1` formats have an offset (`m`), whose contribution needs the block
            // sum of the input: Q8_1 carries it.
            QuantFormat::Q4_1 => ActivationFormat::Q8_1,
            // Two Q8 blocks per group; the bias term uses their exact sums.
            QuantFormat::A6_64 | QuantFormat::A8_64 => ActivationFormat::Q8_1,
            QuantFormat::Q4_K | QuantFormat::Q5_K | QuantFormat::Q6_K => ActivationFormat::Q8_K,
            QuantFormat::Q4_K_I | QuantFormat::Q6_K_I => ActivationFormat::Q8_K_I,
            QuantFormat::A6_64_I => ActivationFormat::Q8_1_I,
        }
    }
}

impl std::fmt::Display for QuantFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The encodings an input (activation) row is quantized to; see
/// [`QuantFormat::activation_format`] and [`super::activation`].
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActivationFormat {
    /// Kept as f32 (float weight formats).
    F32,
    /// Blocks of 32 int8 with an f16 scale.
    Q8_0,
    /// As Q8_0 plus `s = d·Σq` per block, in f16.
    Q8_1,
    /// Blocks of 256 int8 with an f32 scale and the sums of each 16.
    Q8_K,
    /// As Q8_1 with the quants of each 256 elements (eight blocks) interleaved as
    /// the `_I` weight formats' ([`super::interleave`]); scales and sums per block
    /// of 32 stay in order.
    Q8_1_I,
    /// As Q8_K with each block's quants interleaved as the `_I` weight formats'
    /// ([`super::interleave`]); the sums stay those of 16 consecutive elements.
    Q8_K_I,
}

impl ActivationFormat {
    /// The `ggml_type` id.
    pub fn ggml_type(self) -> u32 {
        match self {
            ActivationFormat::F32 => 0,
            ActivationFormat::Q8_0 => 8,
            ActivationFormat::Q8_1 | ActivationFormat::Q8_1_I => 9,
            ActivationFormat::Q8_K | ActivationFormat::Q8_K_I => 15,
        }
    }

    /// Elements per block.
    pub fn block_elems(self) -> usize {
        match self {
            ActivationFormat::F32 => 1,
            ActivationFormat::Q8_0 => BlockQ8_0::ELEMS,
            ActivationFormat::Q8_1 | ActivationFormat::Q8_1_I => BlockQ8_1::ELEMS,
            ActivationFormat::Q8_K | ActivationFormat::Q8_K_I => BlockQ8K::ELEMS,
        }
    }

    /// Bytes per block in ggml's own layout (ours in memory differs; see `activation`).
    pub fn block_bytes(self) -> usize {
        match self {
            ActivationFormat::F32 => 4,
            ActivationFormat::Q8_0 => BlockQ8_0::BYTES,
            ActivationFormat::Q8_1 | ActivationFormat::Q8_1_I => BlockQ8_1::BYTES,
            ActivationFormat::Q8_K | ActivationFormat::Q8_K_I => BlockQ8K::BYTES,
        }
    }
}

/// Reads consecutive fixed-size fields out of a block's bytes, front to back.
pub struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Fields { rest: bytes }
    }

    /// The next `N` bytes. Callers read exactly a struct's fields from exactly its
    /// `size_of` bytes (both fixed at compile time), so this cannot run short.
    #[inline(always)]
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (head, rest) = self
            .rest
            .split_first_chunk::<N>()
            .expect("block layout is fixed at compile time");
        self.rest = rest;
        *head
    }
}

/// A field type a block can hold: a byte array, signed or not.
pub trait Field: Sized {
    fn take(fields: &mut Fields<'_>) -> Self;
    /// Writes the field's bytes at the front of `out` and returns the rest.
    fn put<'b>(&self, out: &'b mut [u8]) -> &'b mut [u8];
}

impl<const N: usize> Field for [u8; N] {
    #[inline(always)]
    fn take(fields: &mut Fields<'_>) -> Self {
        fields.take::<N>()
    }

    #[inline(always)]
    fn put<'b>(&self, out: &'b mut [u8]) -> &'b mut [u8] {
        let (head, rest) = out
            .split_first_chunk_mut::<N>()
            .expect("block layout is fixed at compile time");
        *head = *self;
        rest
    }
}

impl<const N: usize> Field for [i8; N] {
    #[inline(always)]
    fn take(fields: &mut Fields<'_>) -> Self {
        fields.take::<N>().map(|b| b as i8)
    }

    #[inline(always)]
    fn put<'b>(&self, out: &'b mut [u8]) -> &'b mut [u8] {
        self.map(|q| q as u8).put(out)
    }
}

/// A block of a GGML format: its element count, its size, and how to read and
/// write one.
pub trait GgmlBlock: Copy {
    const ELEMS: usize;
    const BYTES: usize;
    /// Reads a block from exactly [`Self::BYTES`] bytes.
    fn read(bytes: &[u8]) -> Self;
    /// Writes the block into exactly [`Self::BYTES`] bytes, as [`GgmlBlock::read`]
    /// reads them (the quantizers' output).
    fn write(&self, bytes: &mut [u8]);
}

/// Iterates over the blocks of a row that is a whole number of blocks long.
pub fn blocks<B: GgmlBlock>(row: &[u8]) -> impl Iterator<Item = B> {
    debug_assert!(row.len().is_multiple_of(B::BYTES));
    row.chunks_exact(B::BYTES).map(B::read)
}

macro_rules! ggml_block {
    (
        $(#[$doc:meta])*
        $name:ident, elems = $elems:expr, bytes = $bytes:expr,
        { $($(#[$fdoc:meta])* $field:ident : $ty:ty),* $(,)? }
    ) => {
        $(#[$doc])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub struct $name {
            $($(#[$fdoc])* pub $field: $ty,)*
        }

        // The layout must match ggml-common.h byte for byte, and alignment 1 lets a
        // block start anywhere in a memory-mapped file.
        const _: () = assert!(size_of::<$name>() == $bytes);
        const _: () = assert!(align_of::<$name>() == 1);

        impl GgmlBlock for $name {
            const ELEMS: usize = $elems;
            const BYTES: usize = $bytes;
            #[inline(always)]
            fn read(bytes: &[u8]) -> Self {
                assert_eq!(bytes.len(), Self::BYTES);
                let mut fields = Fields::new(bytes);
                // Struct literal fields are evaluated in the order written: the
                // declaration order, which is the byte order.
                $name { $($field: <$ty as Field>::take(&mut fields),)* }
            }

            #[inline(always)]
            fn write(&self, bytes: &mut [u8]) {
                assert_eq!(bytes.len(), Self::BYTES);
                let rest = bytes;
                $(let rest = self.$field.put(rest);)*
                debug_assert!(rest.is_empty());
            }
        }
    };
}

ggml_block! {
    /// `block_q4_0`: 32 weights `d·(q − 8)`, q in 0..16. Byte j of `qs` holds element j
    /// in its low nibble and element j + 16 in its high nibble.
    BlockQ4_0, elems = 32, bytes = 18,
    { d: F16Bytes, qs: [u8; 16] }
}

ggml_block! {
    /// `block_q4_1`: 32 weights `d·q + m`, q in 0..16, nibbles as in [`BlockQ4_0`].
    BlockQ4_1, elems = 32, bytes = 20,
    { d: F16Bytes, m: F16Bytes, qs: [u8; 16] }
}

ggml_block! {
    /// `block_q8_0`: 32 weights `d·q`, q in −128..=127 (the quantizer emits −127..=127).
    BlockQ8_0, elems = 32, bytes = 34,
    { d: F16Bytes, qs: [i8; 32] }
}

ggml_block! {
    /// `block_q8_1` (activation side only): Q8_0 plus `s = d·Σq` as f16.
    BlockQ8_1, elems = 32, bytes = 36,
    { d: F16Bytes, s: F16Bytes, qs: [i8; 32] }
}

ggml_block! {
    /// `block_q4_K`: a super-block of 256 weights in 8 sub-blocks of 32.
    /// Weight = `d·sc[j]·q − dmin·m[j]`, q in 0..16, with 6-bit `sc` and `m` packed in
    /// `scales` (see [`k_scale_min`]). `qs` holds four 32-byte chunks; chunk c's low
    /// nibbles are sub-block 2c and its high nibbles sub-block 2c + 1.
    BlockQ4K, elems = 256, bytes = 144,
    { d: F16Bytes, dmin: F16Bytes, scales: [u8; 12], qs: [u8; 128] }
}

ggml_block! {
    /// `block_q5_K`: as [`BlockQ4K`] with a fifth bit per weight: bit 2c of `qh[l]` is
    /// the high bit of element l of sub-block 2c, bit 2c + 1 that of sub-block 2c + 1.
    BlockQ5K, elems = 256, bytes = 176,
    { d: F16Bytes, dmin: F16Bytes, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128] }
}

ggml_block! {
    /// `block_q6_K`: 256 weights `d·sc[j]·(q − 32)`, q in 0..64, one signed 8-bit scale
    /// per 16 elements (element e uses `scales[e / 16]`). Per half h (128 elements):
    /// the low 4 bits are in `ql[64h..64h + 64]` (byte l < 32 holds element l in its
    /// low nibble and l + 64 in its high nibble; byte l + 32 holds l + 32 and l + 96),
    /// the high 2 bits in `qh[32h + l]` at shifts 0, 2, 4, 6 for elements l, l + 32,
    /// l + 64, l + 96.
    BlockQ6K, elems = 256, bytes = 210,
    { ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: F16Bytes }
}

ggml_block! {
    /// Ours: 64 weights `s·q + b`, q in 0..64 (MLX's affine 6-bit group of 64,
    /// repacked). Element e's low 4 bits are in `ql[e % 32]`, the low nibble for
    /// e < 32 and the high one above; its high 2 bits are in `qh[e % 16]` at
    /// shift `2·(e / 16)`. So one 32-byte load of `ql` splits into elements 0..32
    /// and 32..64 in order, each lining up with a Q8 activation block.
    BlockA6_64, elems = 64, bytes = 52,
    { s: F16Bytes, b: F16Bytes, ql: [u8; 32], qh: [u8; 16] }
}

ggml_block! {
    /// Ours: four [`BlockA6_64`] groups, 256 weights `s_g·q + b_g` (g = e / 64), with
    /// the quants in the interleaved order of [`super::interleave`] and encoded as
    /// [`BlockQ6K`]'s `ql` and `qh`; `s` and `b` are the groups' four f16 scales and
    /// biases.
    BlockA6I, elems = 256, bytes = 208,
    { ql: [u8; 128], qh: [u8; 64], s: [u8; 8], b: [u8; 8] }
}

ggml_block! {
    /// Ours: 64 weights `s·q + b`, q in 0..256 (MLX's affine 8-bit group of 64).
    BlockA8_64, elems = 64, bytes = 68,
    { s: F16Bytes, b: F16Bytes, qs: [u8; 64] }
}

impl BlockA6_64 {
    /// The 6-bit quant of element `e` (0..64).
    #[inline(always)]
    pub fn quant(&self, e: usize) -> u8 {
        let low = (self.ql[e % 32] >> (4 * (e / 32))) & 0x0F;
        let high = (self.qh[e % 16] >> (2 * (e / 16))) & 3;
        low | (high << 4)
    }

    /// The block of quants `q` (each below 64) with scale and bias bytes `s`, `b`.
    pub fn pack(s: F16Bytes, b: F16Bytes, q: &[u8; 64]) -> BlockA6_64 {
        let mut block = BlockA6_64 {
            s,
            b,
            ql: [0; 32],
            qh: [0; 16],
        };
        for (e, &q) in q.iter().enumerate() {
            debug_assert!(q < 64);
            block.ql[e % 32] |= (q & 0x0F) << (4 * (e / 32));
            block.qh[e % 16] |= (q >> 4) << (2 * (e / 16));
        }
        block
    }
}

/// `block_q8_K` (activation side only), for its size: our in-memory activation rows
/// keep the same numbers in separate arrays (see `activation`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ8K {
    /// Scale, f32 (not f16: the K-quant dot products keep the extra precision).
    pub d: f32,
    pub qs: [i8; 256],
    /// Sum of each 16 consecutive `qs`.
    pub bsums: [i16; 16],
}

const _: () = assert!(size_of::<BlockQ8K>() == 292);

impl BlockQ8K {
    pub const ELEMS: usize = 256;
    pub const BYTES: usize = size_of::<BlockQ8K>();
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K/Q5_K super-block.
///
/// The 12 bytes pack eight 6-bit scales and eight 6-bit mins: for j < 4 the low
/// 6 bits of bytes j and j + 4; for j >= 4 the nibbles of byte j + 4 hold the low
/// 4 bits and the top 2 bits of bytes j − 4 and j hold the high 2 bits.
#[inline(always)]
pub fn k_scale_min(j: usize, scales: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        (
            (scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
        )
    }
}

/// Packs eight 6-bit scales and mins (each below 64) into the 12 bytes that
/// [`k_scale_min`] unpacks: the inverse of [`k_scales_mins`].
pub fn pack_k_scales(sc: [u8; 8], mins: [u8; 8]) -> [u8; 12] {
    debug_assert!(sc.iter().chain(&mins).all(|&v| v < 64));
    let mut packed = [0u8; 12];
    for j in 0..4 {
        packed[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        packed[j + 4] = mins[j] | ((mins[j + 4] >> 4) << 6);
        packed[j + 8] = (sc[j + 4] & 0x0F) | ((mins[j + 4] & 0x0F) << 4);
    }
    packed
}

/// All eight (scale, min) pairs of a Q4_K/Q5_K super-block, as `(scales, mins)`.
///
/// The same unpacking as [`k_scale_min`], four fields per 32-bit operation: with
/// the 12 bytes as little-endian words `w0, w1, w2`, scales 0..4 are the low 6 bits
/// of `w0`'s bytes, scales 4..8 the low nibbles of `w2` topped by the high 2 bits of
/// `w0`'s bytes, and the mins likewise from `w1` and `w2`'s high nibbles. A dozen
/// integer operations instead of sixteen byte extractions, per super-block per row.
#[inline(always)]
pub fn k_scales_mins(scales: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    const LOW6: u32 = 0x3F3F_3F3F;
    const LOW4: u32 = 0x0F0F_0F0F;
    const LOW2: u32 = 0x0303_0303;
    let word = |i: usize| u32::from_le_bytes([scales[4 * i], scales[4 * i + 1], scales[4 * i + 2], scales[4 * i + 3]]);
    let (w0, w1, w2) = (word(0), word(1), word(2));
    let sc_lo = w0 & LOW6;
    let sc_hi = (w2 & LOW4) | (((w0 >> 6) & LOW2) << 4);
    let min_lo = w1 & LOW6;
    let min_hi = ((w2 >> 4) & LOW4) | (((w1 >> 6) & LOW2) << 4);
    let join = |lo: u32, hi: u32| {
        let mut out = [0u8; 8];
        out[..4].copy_from_slice(&lo.to_le_bytes());
        out[4..].copy_from_slice(&hi.to_le_bytes());
        out
    };
    (join(sc_lo, sc_hi), join(min_lo, min_hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ggml_type_ids_round_trip() {
        for format in QuantFormat::ALL {
            if let Some(id) = format.ggml_type() {
                assert_eq!(QuantFormat::from_ggml_type(id), Some(format));
            }
            assert_eq!(QuantFormat::from_id(format.id()), Some(format));
        }
        assert_eq!(QuantFormat::A6_64.ggml_type(), None);
        assert_eq!(QuantFormat::from_ggml_type(3), Some(QuantFormat::Q4_1));
        assert_eq!(QuantFormat::from_ggml_type(30), Some(QuantFormat::BF16));
        // Q8_1 and Q8_K are activation formats, never weights here; Q5_0 has no kernel.
        for id in [6, 9, 15, 10, 11, 16, 1000] {
            assert_eq!(QuantFormat::from_ggml_type(id), None, "id {id}");
        }
    }

    #[test]
    fn block_sizes_match_ggml() {
        let expected = [
            (QuantFormat::F32, 1, 4),
            (QuantFormat::F16, 1, 2),
            (QuantFormat::BF16, 1, 2),
            (QuantFormat::Q4_0, 32, 18),
            (QuantFormat::Q4_1, 32, 20),
            (QuantFormat::Q8_0, 32, 34),
            (QuantFormat::Q4_K, 256, 144),
            (QuantFormat::Q5_K, 256, 176),
            (QuantFormat::Q6_K, 256, 210),
            (QuantFormat::A6_64, 64, 52),
            (QuantFormat::A8_64, 64, 68),
        ];
        for (format, elems, bytes) in expected {
            assert_eq!((format.block_elems(), format.block_bytes()), (elems, bytes), "{format}");
        }
        assert_eq!(ActivationFormat::Q8_1.block_bytes(), 36);
        assert_eq!(ActivationFormat::Q8_K.block_bytes(), 292);
    }

    #[test]
    fn row_bytes_rejects_partial_blocks_and_overflow() {
        assert_eq!(QuantFormat::Q4_1.row_bytes(576), Some(18 * 20));
        assert_eq!(QuantFormat::Q4_1.row_bytes(48), None);
        assert_eq!(QuantFormat::Q6_K.row_bytes(128), None);
        assert_eq!(QuantFormat::F16.row_bytes(7), Some(14));
        assert_eq!(QuantFormat::F32.row_bytes(usize::MAX), None);
    }

    #[test]
    fn k_scale_min_unpacks_the_six_bit_fields() {
        // Scales and mins packed by hand per the layout comment: scale 4 (45 =
        // 0b10_1101) is the low nibble of byte 8 and the top two bits of byte 0.
        let sc: [u8; 8] = [1, 2, 3, 4, 45, 46, 47, 48];
        let mn: [u8; 8] = [11, 12, 13, 14, 55, 56, 57, 58];
        let packed = pack_k_scales(sc, mn);
        assert_eq!(packed[0], 1 | (0b10 << 6));
        assert_eq!(packed[8], 0b1101 | ((55 & 0x0F) << 4));
        assert_eq!(k_scales_mins(&packed), (sc, mn));
    }

    #[test]
    fn pack_k_scales_inverts_the_unpacking() {
        let mut state = 7u32;
        for _ in 0..500 {
            let mut six_bits = || {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 26) as u8
            };
            let sc: [u8; 8] = std::array::from_fn(|_| six_bits());
            let mins: [u8; 8] = std::array::from_fn(|_| six_bits());
            assert_eq!(k_scales_mins(&pack_k_scales(sc, mins)), (sc, mins));
        }
    }

    #[test]
    fn word_wise_k_scale_unpacking_agrees_with_the_per_field_one() {
        // Every byte value in every position, through a simple generator.
        let mut state = 12345u32;
        for _ in 0..2000 {
            let packed: [u8; 12] = std::array::from_fn(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 24) as u8
            });
            let (sc, mins) = k_scales_mins(&packed);
            for j in 0..8 {
                assert_eq!((sc[j], mins[j]), k_scale_min(j, &packed), "{packed:?} field {j}");
            }
        }
    }

    #[test]
    fn a6_blocks_pack_and_unpack_every_quant() {
        let q: [u8; 64] = std::array::from_fn(|e| ((e * 37 + 11) % 64) as u8);
        let block = BlockA6_64::pack([1, 2], [3, 4], &q);
        for (e, &q) in q.iter().enumerate() {
            assert_eq!(block.quant(e), q, "element {e}");
        }
        let mut bytes = [0u8; 52];
        block.write(&mut bytes);
        assert_eq!(BlockA6_64::read(&bytes), block);
        assert_eq!(&bytes[..4], &[1, 2, 3, 4]);
    }

    #[test]
    fn blocks_read_fields_in_byte_order() {
        let mut bytes = [0u8; 210];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = i as u8;
        }
        let block = BlockQ6K::read(&bytes);
        assert_eq!(block.ql[0], 0);
        assert_eq!(block.qh[0], 128);
        assert_eq!(block.scales[0], 192u8 as i8);
        assert_eq!(block.d, [208, 209]);
        assert_eq!(std::mem::offset_of!(BlockQ6K, d), 208);
        // Writing puts every field back where it was read from.
        let mut written = [0u8; 210];
        block.write(&mut written);
        assert_eq!(written, bytes);
    }
}
