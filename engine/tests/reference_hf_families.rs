//! Llama and Qwen2 from Hugging Face directories against transformers, on tiny
//! random checkpoints (`fixtures/hf_families`, made by `make_fixtures.py`
//! there): Llama with an untied output matrix and RoPE on halves as
//! transformers stores q and k (the GGUF path's interleaved pairs are tested
//! on SmolLM2), Qwen2 with its q, k and v biases and tied embeddings. Whole
//! passes within tolerance, token-by-token decoding equal to the whole pass,
//! greedy ids equal, and parameters counted as transformers counts them.
//!
//! Tolerance: our KV cache holds keys and values in f16, which moves these
//! logits from transformers' float32 ones as it moves Qwen3's (reference_qwen3.rs,
//! up to 9.6e-3, explained there with an f16-KV reference). Measured here:
//! Llama (logits std 1.6) 1.5e-3 at length 1 (one key: the rounding of v
//! alone), 6.1e-3 at 7, 1.06e-2 at 33; Qwen2 (std 2.4) 1.9e-3, 7.6e-3 and
//! 1.40e-2. [`TOLERANCE`] is 2e-2, still more than
//! ten times below what a real mistake moves logits by (the Qwen fixtures'
//! injected bugs: 0.28 and up), and every position's argmax and the greedy
//! ids must match exactly. Decoding token by token runs the same operations
//! as the whole pass, position by position.

mod common;

use std::path::{Path, PathBuf};

use burn::prelude::*;
use common::{argmax, ids, max_diff, rows};
use serde_json::Value;
use switchyard_engine::model::Model;
use switchyard_engine::model::source::WeightSource;
use switchyard_engine::model::weights::Quantization;

const TOLERANCE: f32 = 2e-2;
const STEP_TOLERANCE: f32 = 1e-4;
const FIXTURES: [(&str, &str); 2] = [("llama", "llama"), ("qwen2", "qwen2")];

fn dir(fixture: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf_families")
        .join(fixture)
}

fn expected(fixture: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir(fixture).join("expected.json")).unwrap()).unwrap()
}

fn load(fixture: &str) -> (Model, Device) {
    let device = Device::flex();
    let source = WeightSource::open(&dir(fixture)).unwrap();
    (Model::load(&source, Quantization::Keep, &device).unwrap(), device)
}

#[test]
fn llama_and_qwen2_directories_give_transformers_logits() {
    for (fixture, architecture) in FIXTURES {
        let (model, device) = load(fixture);
        let expected = expected(fixture);
        let info = model.info();
        assert_eq!(info.architecture, architecture);
        assert_eq!(
            info.parameters,
            expected["parameter_count"].as_u64().unwrap(),
            "{fixture}"
        );
        let vocab = model.vocab_size();
        for sequence in expected["sequences"].as_array().unwrap() {
            let tokens = ids(&sequence["input_ids"]);
            let whole = model.forward_all(&tokens, &mut model.new_cache(tokens.len(), &device));
            let theirs = rows(&sequence["logits"]);
            let mut worst = 0f32;
            for (position, row) in whole.chunks_exact(vocab).enumerate() {
                let diff = max_diff(row, &theirs[position]);
                worst = worst.max(diff);
                assert!(
                    diff <= TOLERANCE,
                    "{fixture}, length {}, position {position}: {diff}",
                    tokens.len()
                );
                assert_eq!(argmax(row), argmax(&theirs[position]), "{fixture}, position {position}");
            }
            eprintln!("{fixture}, length {}: {worst} from transformers", tokens.len());
            let mut cache = model.new_cache(tokens.len(), &device);
            for (position, token) in tokens.iter().enumerate() {
                let row = model.forward_all(&[*token], &mut cache);
                let diff = max_diff(&row, &whole[position * vocab..(position + 1) * vocab]);
                assert!(diff <= STEP_TOLERANCE, "{fixture}, step {position}: {diff}");
            }
        }
    }
}

#[test]
fn greedy_decoding_picks_transformers_ids() {
    for (fixture, _) in FIXTURES {
        let (model, device) = load(fixture);
        let greedy = &expected(fixture)["greedy"];
        let prompt = ids(&greedy["prompt_ids"]);
        let want = ids(&greedy["new_ids"]);
        let mut cache = model.new_cache(prompt.len() + want.len(), &device);
        let mut logits = model.forward(&prompt, &mut cache);
        let mut got = Vec::new();
        for _ in 0..want.len() {
            let next = argmax(&logits);
            got.push(next);
            logits = model.forward(&[next], &mut cache);
        }
        assert_eq!(got, want, "{fixture}");
    }
}
