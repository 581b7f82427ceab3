//! What the kernel benchmarks share: a seeded generator and random but valid
//! weight matrices.

use switchyard_engine::quant::QuantFormat;

/// A small deterministic generator: enough randomness for weights, no dependency.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in −1..1.
    pub fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// `rows` random rows of `cols` elements of `format`: random bytes with every
/// f16 scale field overwritten by a small finite value; float formats hold
/// small values (random bit patterns would include NaNs).
pub fn random_weights(rng: &mut XorShift, format: QuantFormat, rows: usize, cols: usize) -> Vec<u8> {
    let row_bytes = format.row_bytes(cols).expect("whole blocks");
    if format.block_elems() == 1 {
        let values: Vec<f32> = (0..rows * cols).map(|_| rng.unit()).collect();
        return match format {
            QuantFormat::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            QuantFormat::F16 => values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_bits().to_le_bytes())
                .collect(),
            _ => values
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_bits().to_le_bytes())
                .collect(),
        };
    }
    // Eight bytes per draw: a 1.7B model's weights are 1.4 GB.
    let mut data = vec![0u8; rows * row_bytes];
    for chunk in data.chunks_mut(8) {
        let bytes = rng.next().to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    let scale = half::f16::from_f32(0.01).to_bits().to_le_bytes();
    let scale_fields: &[usize] = match format {
        QuantFormat::Q4_0 | QuantFormat::Q8_0 => &[0],
        QuantFormat::Q4_1 | QuantFormat::Q4_K | QuantFormat::Q5_K | QuantFormat::A6_64 | QuantFormat::A8_64 => &[0, 2],
        QuantFormat::Q6_K => &[208],
        _ => &[],
    };
    for block in data.chunks_exact_mut(format.block_bytes()) {
        for &at in scale_fields {
            block[at..at + 2].copy_from_slice(&scale);
        }
    }
    data
}
