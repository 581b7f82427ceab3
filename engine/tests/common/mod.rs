//! Shared by the engine's integration tests (each test file uses what it
//! needs of it).
#![allow(dead_code)]

use std::path::PathBuf;

/// The SmolLM2 GGUF: `SWITCHYARD_TEST_MODEL`, else `models/` of the workspace
/// (scripts/fetch-default-model.sh puts it there; tests/run.sh runs it).
pub fn smollm2_path() -> PathBuf {
    let path = std::env::var_os("SWITCHYARD_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert!(
        path.is_file(),
        "the SmolLM2 test model is missing at {}: run scripts/fetch-default-model.sh or set SWITCHYARD_TEST_MODEL",
        path.display()
    );
    path
}

/// Token ids as the reference files write them: a JSON array of numbers.
pub fn ids(value: &serde_json::Value) -> Vec<u32> {
    value
        .as_array()
        .expect("an array of ids")
        .iter()
        .map(|v| v.as_u64().expect("an id") as u32)
        .collect()
}

/// Rows of numbers as the reference files write them: a JSON array of arrays.
pub fn rows(value: &serde_json::Value) -> Vec<Vec<f32>> {
    value
        .as_array()
        .expect("an array of rows")
        .iter()
        .map(|row| {
            row.as_array()
                .expect("a row")
                .iter()
                .map(|v| v.as_f64().expect("a number") as f32)
                .collect()
        })
        .collect()
}

/// The largest absolute difference between two equally long rows.
pub fn max_diff(ours: &[f32], theirs: &[f32]) -> f32 {
    assert_eq!(ours.len(), theirs.len());
    ours.iter().zip(theirs).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
}

/// The index of the largest value.
pub fn argmax(row: &[f32]) -> u32 {
    (0..row.len())
        .max_by(|&a, &b| row[a].total_cmp(&row[b]))
        .expect("a non-empty row") as u32
}
