//! GGUF, the model file format of llama.cpp: a bounds-checked reader over mmap.
//!
//! Layout of a GGUF v2/v3 file (all integers little-endian):
//!
//! ```text
//! u32 magic "GGUF" | u32 version | u64 tensor_count | u64 metadata_kv_count
//! metadata_kv_count × { string key | u32 value_type | value }
//! tensor_count × { string name | u32 n_dims | u64 dims[n_dims] | u32 ggml_type | u64 offset }
//! padding to `general.alignment` (default 32)
//! tensor data: each tensor at data_start + offset, offsets aligned
//! ```
//!
//! A string is `u64 length` + UTF-8 bytes; an array is `u32 element_type` +
//! `u64 length` + elements. `dims[0]` is the fastest-varying dimension (a row's
//! length), the reverse of PyTorch's shape order.
//!
//! Model files come from users and the internet, so every length and offset is
//! checked against the file before it is used: a truncated or corrupt file is an
//! error naming what broke, never a panic or an out-of-bounds read.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use crate::packed::Packed;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Far above any real model (Llama-405B has ~1.1k tensors); bounds a corrupt count.
const MAX_TENSORS: u64 = 1 << 20;
const MAX_METADATA_ENTRIES: u64 = 1 << 20;
const MAX_DIMS: u32 = 4;
/// Nesting of arrays of arrays; GGUF writers use at most one level.
const MAX_ARRAY_DEPTH: usize = 4;

/// The tensor element types GGML defines: id, name, elements per block, bytes per block.
/// Listed in full so that an unsupported type is named in errors, not just numbered.
const GGML_TYPES: &[(u32, &str, u64, u64)] = &[
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 36),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (39, "MXFP4", 32, 17),
];

/// A GGML tensor element type, as stored in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GgmlType(pub u32);

impl GgmlType {
    fn entry(self) -> Option<&'static (u32, &'static str, u64, u64)> {
        GGML_TYPES.iter().find(|t| t.0 == self.0)
    }

    /// `Q4_1`, `F16`, ... or `type 99` for an id GGML does not define.
    pub fn name(self) -> String {
        self.entry()
            .map_or_else(|| format!("type {}", self.0), |t| t.1.to_string())
    }

    /// (elements per block, bytes per block), for types GGML defines.
    pub fn block_layout(self) -> Option<(u64, u64)> {
        self.entry().map(|t| (t.2, t.3))
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    /// An array of anything but strings (arrays of arrays included).
    Array(Vec<Value>),
    /// An array of strings, kept in one buffer: vocabularies and merge lists run to
    /// hundreds of thousands of entries, which as separate `String`s would cost
    /// several times their bytes.
    Strings(Strings),
}

/// The strings of a GGUF string array, in order, in one buffer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Strings(Packed);

impl Strings {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, i: usize) -> Option<&str> {
        let bytes = self.0.get(i)?;
        Some(std::str::from_utf8(bytes).expect("only strings are pushed"))
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        (0..self.len()).map(|i| self.get(i).expect("in range"))
    }

    fn push(&mut self, s: &str) {
        self.0.push(s.as_bytes());
    }
}

impl Value {
    /// Any integer type, as u64, when it is non-negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer type, as i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// Any float or integer type, as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The items of an array that is not of strings (see [`Value::as_strings`]).
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }

    pub fn as_strings(&self) -> Option<&Strings> {
        match self {
            Value::Strings(strings) => Some(strings),
            _ => None,
        }
    }

    /// The number of items of an array of any kind.
    pub fn array_len(&self) -> Option<usize> {
        match self {
            Value::Array(items) => Some(items.len()),
            Value::Strings(strings) => Some(strings.len()),
            _ => None,
        }
    }
}

/// Where one tensor is and what it holds.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// GGML order: `dims[0]` is the row length.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset of the data from the start of the file.
    pub file_offset: u64,
    pub size_bytes: u64,
}

impl TensorInfo {
    pub fn element_count(&self) -> u64 {
        self.dims.iter().product()
    }
}

#[derive(Debug)]
pub enum GgufError {
    Io(std::io::Error),
    NotGguf {
        magic: [u8; 4],
    },
    UnsupportedVersion(u32),
    /// The file ends inside the named structure.
    Truncated {
        what: String,
        offset: u64,
    },
    /// A structure has an impossible value.
    Corrupt(String),
    /// A tensor has a type GGML does not define, or a shape its type cannot hold.
    BadTensor {
        tensor: String,
        reason: String,
    },
}

impl fmt::Display for GgufError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GgufError::Io(err) => write!(f, "cannot read model file: {err}"),
            GgufError::NotGguf { magic } => write!(
                f,
                "not a GGUF file: it starts with {:?} instead of \"GGUF\"",
                String::from_utf8_lossy(magic)
            ),
            GgufError::UnsupportedVersion(v) => write!(f, "GGUF version {v} is not supported (only 2 and 3)"),
            GgufError::Truncated { what, offset } => {
                write!(f, "GGUF file is truncated: it ends inside {what} (at byte {offset})")
            }
            GgufError::Corrupt(what) => write!(f, "GGUF file is corrupt: {what}"),
            GgufError::BadTensor { tensor, reason } => write!(f, "tensor {tensor:?}: {reason}"),
        }
    }
}

impl std::error::Error for GgufError {}

impl From<std::io::Error> for GgufError {
    fn from(err: std::io::Error) -> Self {
        GgufError::Io(err)
    }
}

enum Bytes {
    /// The mapping and the file it maps (for positioned reads of tensor data).
    Mapped(memmap2::Mmap, std::fs::File),
    Owned(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped(map, _) => map,
            Bytes::Owned(vec) => vec,
        }
    }
}

/// An open GGUF file: metadata and tensor index parsed, tensor data mapped, not copied.
pub struct GgufFile {
    bytes: Bytes,
    pub version: u32,
    metadata: HashMap<String, Value>,
    /// Metadata keys in file order, for listing.
    metadata_order: Vec<String>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("metadata_entries", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let file = std::fs::File::open(path)?;
        // SAFETY: the map is read-only. A file truncated by another process while
        // mapped would fault; model files are not rewritten in place while served.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        GgufFile::parse(Bytes::Mapped(map, file))
    }

    /// Parses a GGUF image held in memory (tests, embedded files).
    pub fn from_vec(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
        GgufFile::parse(Bytes::Owned(bytes))
    }

    fn parse(bytes: Bytes) -> Result<GgufFile, GgufError> {
        let data = bytes.as_slice();
        let mut r = Reader { data, pos: 0 };
        let magic: [u8; 4] = r.take(4, "the magic number")?.try_into().expect("4 bytes");
        if &magic != MAGIC {
            return Err(GgufError::NotGguf { magic });
        }
        let version = r.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let tensor_count = r.u64("the tensor count")?;
        let kv_count = r.u64("the metadata count")?;
        if tensor_count > MAX_TENSORS {
            return Err(GgufError::Corrupt(format!("{tensor_count} tensors")));
        }
        if kv_count > MAX_METADATA_ENTRIES {
            return Err(GgufError::Corrupt(format!("{kv_count} metadata entries")));
        }

        let mut metadata = HashMap::with_capacity(kv_count as usize);
        let mut metadata_order = Vec::with_capacity(kv_count as usize);
        for i in 0..kv_count {
            let key = r.string(&format!("metadata key #{i}"))?;
            let value_type = r.u32(&format!("the type of metadata {key:?}"))?;
            let value = r.value(value_type, &key, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(GgufError::Corrupt(format!("metadata key {key:?} appears twice")));
            }
            metadata_order.push(key);
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
                _ => return Err(GgufError::Corrupt(format!("general.alignment is {v:?}"))),
            },
        };

        let mut raw_tensors = Vec::with_capacity(tensor_count as usize);
        for i in 0..tensor_count {
            let name = r.string(&format!("the name of tensor #{i}"))?;
            let what = format!("the header of tensor {name:?}");
            let n_dims = r.u32(&what)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(GgufError::BadTensor {
                    tensor: name,
                    reason: format!("{n_dims} dimensions"),
                });
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64(&what)?);
            }
            let ggml_type = GgmlType(r.u32(&what)?);
            let offset = r.u64(&what)?;
            raw_tensors.push((name, dims, ggml_type, offset));
        }

        let data_start = align_up(r.pos as u64, alignment)
            .ok_or_else(|| GgufError::Corrupt("tensor data offset overflows".into()))?;
        let file_len = data.len() as u64;
        let mut tensors = Vec::with_capacity(raw_tensors.len());
        let mut tensor_index = HashMap::with_capacity(raw_tensors.len());
        for (name, dims, ggml_type, offset) in raw_tensors {
            let bad = |reason: String| GgufError::BadTensor {
                tensor: name.clone(),
                reason,
            };
            let Some((block_elems, block_bytes)) = ggml_type.block_layout() else {
                return Err(bad(format!("unknown tensor type id {}", ggml_type.0)));
            };
            let elements = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| bad(format!("shape {dims:?} overflows")))?;
            if dims[0] % block_elems != 0 {
                return Err(bad(format!(
                    "rows of {} elements are not whole {ggml_type} blocks of {block_elems}",
                    dims[0]
                )));
            }
            let size_bytes = (elements / block_elems)
                .checked_mul(block_bytes)
                .ok_or_else(|| bad("size overflows".into()))?;
            if offset % alignment != 0 {
                return Err(bad(format!("data offset {offset} is not aligned to {alignment}")));
            }
            let file_offset = data_start
                .checked_add(offset)
                .ok_or_else(|| bad("offset overflows".into()))?;
            let end = file_offset
                .checked_add(size_bytes)
                .ok_or_else(|| bad("offset overflows".into()))?;
            if end > file_len {
                return Err(GgufError::Truncated {
                    what: format!("the data of tensor {name:?}"),
                    offset: file_len,
                });
            }
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(bad("appears twice".into()));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                file_offset,
                size_bytes,
            });
        }

        Ok(GgufFile {
            bytes,
            version,
            metadata,
            metadata_order,
            tensors,
            tensor_index,
        })
    }

    pub fn metadata(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// Metadata keys in file order.
    pub fn metadata_keys(&self) -> impl Iterator<Item = &str> {
        self.metadata_order.iter().map(String::as_str)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.metadata(key).and_then(Value::as_str)
    }

    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.metadata(key).and_then(Value::as_u64)
    }

    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.metadata(key).and_then(Value::as_f64)
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.metadata(key).and_then(Value::as_bool)
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The raw bytes of a tensor (bounds were checked when the file was opened).
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        &self.bytes.as_slice()[info.file_offset as usize..(info.file_offset + info.size_bytes) as usize]
    }

    /// A copy of a tensor's bytes, read from the file without going through the
    /// mapping: a model loaded into its own buffers this way never has the
    /// mapped pages counted in the process's memory on top of the copies.
    pub fn read_tensor(&self, info: &TensorInfo) -> std::io::Result<Vec<u8>> {
        match &self.bytes {
            Bytes::Mapped(_, file) => {
                use std::os::unix::fs::FileExt;
                let mut data = vec![0u8; info.size_bytes as usize];
                file.read_exact_at(&mut data, info.file_offset)?;
                Ok(data)
            }
            Bytes::Owned(_) => Ok(self.tensor_data(info).to_vec()),
        }
    }

    /// Size of the whole file in bytes.
    pub fn file_size(&self) -> u64 {
        self.bytes.as_slice().len() as u64
    }
}

fn align_up(value: u64, alignment: u64) -> Option<u64> {
    value.checked_add(alignment - 1).map(|v| v / alignment * alignment)
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize, what: &str) -> Result<&'a [u8], GgufError> {
        let end = self.pos.checked_add(len).filter(|&end| end <= self.data.len());
        match end {
            Some(end) => {
                let bytes = &self.data[self.pos..end];
                self.pos = end;
                Ok(bytes)
            }
            None => Err(GgufError::Truncated {
                what: what.to_string(),
                offset: self.data.len() as u64,
            }),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        Ok(self.take(N, what)?.try_into().expect("take returns N bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        self.str(what).map(std::borrow::Cow::into_owned)
    }

    fn str(&mut self, what: &str) -> Result<std::borrow::Cow<'a, str>, GgufError> {
        let len = self.u64(what)?;
        let len = usize::try_from(len).map_err(|_| GgufError::Corrupt(format!("{what}: length {len}")))?;
        let bytes = self.take(len, what)?;
        // Token strings of some converters hold invalid UTF-8 fragments; keep them
        // readable rather than refusing the whole model.
        Ok(String::from_utf8_lossy(bytes))
    }

    fn value(&mut self, value_type: u32, key: &str, depth: usize) -> Result<Value, GgufError> {
        let what = format!("the value of metadata {key:?}");
        Ok(match value_type {
            0 => Value::U8(self.array::<1>(&what)?[0]),
            1 => Value::I8(self.array::<1>(&what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(&what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(&what)?)),
            4 => Value::U32(u32::from_le_bytes(self.array(&what)?)),
            5 => Value::I32(i32::from_le_bytes(self.array(&what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(&what)?)),
            7 => match self.array::<1>(&what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(GgufError::Corrupt(format!("metadata {key:?}: bool byte {b}"))),
            },
            8 => Value::String(self.string(&what)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::Corrupt(format!("metadata {key:?}: arrays nested too deep")));
                }
                let element_type = self.u32(&what)?;
                let len = self.u64(&what)?;
                // Every element takes at least one byte: a length beyond the rest
                // of the file is corrupt, and must not drive an allocation.
                let remaining = (self.data.len() - self.pos) as u64;
                if len > remaining {
                    return Err(GgufError::Truncated {
                        what,
                        offset: self.data.len() as u64,
                    });
                }
                if element_type == 8 {
                    let mut strings = Strings::default();
                    for _ in 0..len {
                        strings.push(&self.str(&what)?);
                    }
                    strings.0.shrink_to_fit();
                    Value::Strings(strings)
                } else {
                    let mut items = Vec::with_capacity(len as usize);
                    for _ in 0..len {
                        items.push(self.value(element_type, key, depth + 1)?);
                    }
                    Value::Array(items)
                }
            }
            10 => Value::U64(self.u64(&what)?),
            11 => Value::I64(i64::from_le_bytes(self.array(&what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(&what)?)),
            other => {
                return Err(GgufError::Corrupt(format!(
                    "metadata {key:?} has unknown value type {other}"
                )));
            }
        })
    }
}

/// Writes GGUF images, for tests of everything that reads them.
#[cfg(test)]
pub(crate) mod writer {
    use super::Value;

    pub struct GgufWriter {
        metadata: Vec<(String, Value)>,
        tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
    }

    impl GgufWriter {
        pub fn new() -> Self {
            Self {
                metadata: Vec::new(),
                tensors: Vec::new(),
            }
        }

        pub fn meta(mut self, key: &str, value: Value) -> Self {
            self.metadata.push((key.to_string(), value));
            self
        }

        pub fn tensor(mut self, name: &str, dims: &[u64], ggml_type: u32, data: Vec<u8>) -> Self {
            self.tensors.push((name.to_string(), dims.to_vec(), ggml_type, data));
            self
        }

        pub fn build(self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(b"GGUF");
            out.extend_from_slice(&3u32.to_le_bytes());
            out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
            out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
            for (key, value) in &self.metadata {
                write_string(&mut out, key);
                write_value(&mut out, value, true);
            }
            let mut offset = 0u64;
            let mut offsets = Vec::new();
            for (name, dims, ggml_type, data) in &self.tensors {
                write_string(&mut out, name);
                out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
                for d in dims {
                    out.extend_from_slice(&d.to_le_bytes());
                }
                out.extend_from_slice(&ggml_type.to_le_bytes());
                out.extend_from_slice(&offset.to_le_bytes());
                offsets.push(offset);
                offset += (data.len() as u64).div_ceil(32) * 32;
            }
            while out.len() % 32 != 0 {
                out.push(0);
            }
            let start = out.len();
            for ((_, _, _, data), offset) in self.tensors.iter().zip(offsets) {
                out.resize(start + offset as usize, 0);
                out.extend_from_slice(data);
            }
            out
        }
    }

    fn write_string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    fn type_id(value: &Value) -> u32 {
        match value {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(_) | Value::Strings(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    fn write_value(out: &mut Vec<u8>, value: &Value, with_type: bool) {
        if with_type {
            out.extend_from_slice(&type_id(value).to_le_bytes());
        }
        match value {
            Value::U8(v) => out.push(*v),
            Value::I8(v) => out.push(*v as u8),
            Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::Bool(v) => out.push(u8::from(*v)),
            Value::String(s) => write_string(out, s),
            Value::Strings(strings) => {
                out.extend_from_slice(&8u32.to_le_bytes());
                out.extend_from_slice(&(strings.len() as u64).to_le_bytes());
                for s in strings.iter() {
                    write_string(out, s);
                }
            }
            Value::Array(items) => {
                let element_type = items.first().map_or(8, type_id);
                out.extend_from_slice(&element_type.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for item in items {
                    write_value(out, item, false);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::writer::GgufWriter;
    use super::*;

    fn sample() -> Vec<u8> {
        GgufWriter::new()
            .meta("general.architecture", Value::String("llama".into()))
            .meta("llama.block_count", Value::U32(2))
            .meta(
                "tokenizer.ggml.tokens",
                Value::Array(vec![Value::String("a".into()), Value::String("b".into())]),
            )
            .tensor(
                "w",
                &[4, 2],
                0,
                (0..8u32).flat_map(|i| (i as f32).to_le_bytes()).collect(),
            )
            .tensor("q", &[32, 1], 8, vec![7; 34])
            .build()
    }

    #[test]
    fn reads_metadata_and_tensors() {
        let file = GgufFile::from_vec(sample()).unwrap();
        assert_eq!(file.get_str("general.architecture"), Some("llama"));
        assert_eq!(file.get_u64("llama.block_count"), Some(2));
        let tokens = file.metadata("tokenizer.ggml.tokens").unwrap();
        assert_eq!(tokens.array_len(), Some(2));
        let strings: Vec<&str> = tokens.as_strings().unwrap().iter().collect();
        assert_eq!(strings, ["a", "b"]);
        let w = file.tensor("w").unwrap();
        assert_eq!(
            (w.dims.clone(), w.ggml_type.name(), w.size_bytes),
            (vec![4, 2], "F32".to_string(), 32)
        );
        assert_eq!(&file.tensor_data(w)[4..8], &1f32.to_le_bytes());
        let q = file.tensor("q").unwrap();
        assert_eq!(q.file_offset % 32, 0);
        assert_eq!(file.tensor_data(q), &[7; 34][..]);
    }

    #[test]
    fn a_file_that_is_not_gguf_is_named_as_such() {
        let err = GgufFile::from_vec(b"PK\x03\x04 this is a zip".to_vec()).unwrap_err();
        assert!(matches!(err, GgufError::NotGguf { .. }), "{err}");
        assert!(
            GgufFile::from_vec(Vec::new())
                .unwrap_err()
                .to_string()
                .contains("truncated")
        );
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = sample();
        for len in 0..bytes.len() {
            let result = GgufFile::from_vec(bytes[..len].to_vec());
            assert!(
                result.is_err(),
                "a file cut at {len} of {} bytes was accepted",
                bytes.len()
            );
        }
    }

    #[test]
    fn a_truncated_tensor_names_the_tensor() {
        let bytes = sample();
        let err = GgufFile::from_vec(bytes[..bytes.len() - 1].to_vec()).unwrap_err();
        assert!(err.to_string().contains("\"q\""), "{err}");
    }

    #[test]
    fn an_unknown_tensor_type_names_tensor_and_type() {
        let bytes = GgufWriter::new().tensor("blk.0.weird", &[32], 77, vec![0; 64]).build();
        let err = GgufFile::from_vec(bytes).unwrap_err().to_string();
        assert!(err.contains("blk.0.weird") && err.contains("77"), "{err}");
    }

    #[test]
    fn corrupt_counts_do_not_allocate() {
        let mut bytes = sample();
        bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(GgufFile::from_vec(bytes).is_err());
        let huge_array = {
            let mut b = b"GGUF".to_vec();
            b.extend_from_slice(&3u32.to_le_bytes());
            b.extend_from_slice(&0u64.to_le_bytes());
            b.extend_from_slice(&1u64.to_le_bytes());
            b.extend_from_slice(&1u64.to_le_bytes());
            b.push(b'k');
            b.extend_from_slice(&9u32.to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
            b.extend_from_slice(&(1u64 << 60).to_le_bytes());
            b
        };
        assert!(GgufFile::from_vec(huge_array).is_err());
    }

    #[test]
    fn type_names_cover_ggml() {
        assert_eq!(GgmlType(14).name(), "Q6_K");
        assert_eq!(GgmlType(30).name(), "BF16");
        assert_eq!(GgmlType(99).name(), "type 99");
    }
}
