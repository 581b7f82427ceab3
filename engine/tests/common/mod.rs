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
