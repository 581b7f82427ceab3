//! Llama and Qwen2 from Hugging Face directories against transformers, on the
//! tiny random checkpoints in fixtures/hf_families (see the README there):
//! `llama/` (its own output matrix, RoPE θ 1e5, eps 1e-5) and `qwen2/` (random
//! q/k/v biases, tied embeddings, θ 1e6, eps 1e-6). Their logits agree with
//! transformers' float32 ones over whole sequences, decoding one token at a
//! time gives the logits of the whole pass, greedy decoding picks the same
//! ids, the hyperparameters and parameter count are transformers', weights
//! quantized to Q8_0 at load stay close, and `llama.gguf` (llama.cpp's
//! converter, which permutes Llama's q and k rows for rotation on adjacent
//! pairs) gives the directory's logits.
//!
//! Tolerances. Our KV cache holds keys and values in f16 (see `attention`).
//! These models have no norm on q and k, so their keys are larger than
//! Qwen3's, and the rounding moves the logits (std 2.4, |max| 12) further:
//! transformers itself, run in float32 with keys (after RoPE) and values
//! rounded to f16 before attention (`logits_f16_kv` in each `expected.json`),
//! lands 3.4e-3, 8.7e-3, 2.4e-2 (llama) and 2.8e-3, 8.3e-3, 1.7e-2 (qwen2)
//! from its own float32 logits at lengths 1, 7, 33, while float32 against
//! float64 is 2.5e-5 at most. The engine measured 3.4e-3, 8.7e-3, 2.4e-2 and
//! 2.8e-3, 8.3e-3, 1.7e-2 from transformers' float32 logits, that same
//! distance, and 2.9e-6, 7.1e-4, 7.6e-4 and 2.9e-6, 5.4e-5, 1.7e-3 from the
//! f16-KV run: not to float32 precision, because float32-level differences
//! flip a few keys or values to the neighbouring f16 value and the flips
//! spread through later layers (even at position 0: 4.1e-4 there in llama's
//! length-7 sequence, where one value rounded the other way). So the logits
//! are held to the f16-KV run at [`F16_KV_TOLERANCE`] and to transformers'
//! own at [`TOLERANCE`]. The greedy runs' smallest top-1/top-2 margin is
//! 0.033 (qwen2; llama 0.11), twice the engine's largest distance from
//! transformers there, so greedy ids must match exactly. What the bounds
//! guard against is far larger: in transformers at length 33, dropping
//! qwen2's biases, θ 1e4 instead of the config's, q and k rows permuted
//! under rotation on halves, or llama's output tied to the embedding move
//! the logits by 11 to 13.

mod common;

use std::path::{Path, PathBuf};

use burn::prelude::*;
use common::{argmax, greedy_ids, ids, max_diff, rows};
use serde_json::Value;
use switchyard_engine::engine::{LoadOptions, LocalModel};
use switchyard_engine::model::Model;
use switchyard_engine::model::source::WeightSource;
use switchyard_engine::model::weights::Quantization;
use switchyard_engine::ops::RopeStyle;

/// The checkpoints, with the architecture name `ModelInfo` gives each.
const FAMILIES: [(&str, &str); 2] = [("llama", "llama"), ("qwen2", "qwen2")];

/// Max abs difference allowed against transformers' float32 logits: the
/// f16 cache's own 2.4e-2 at length 33, plus a quarter.
const TOLERANCE: f32 = 3e-2;
/// Max abs difference allowed against transformers' float32 run with f16
/// keys and values (`logits_f16_kv`); measured up to 1.7e-3.
const F16_KV_TOLERANCE: f32 = 5e-3;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf_families")
        .join(name)
}

fn expected(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture(name).join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn load(path: &Path, quant: Quantization) -> Model {
    let source = WeightSource::open(path).expect("the model opens");
    Model::load(&source, quant, &Device::flex()).expect("the model loads")
}

/// Every position's logits of `tokens`, run in one pass from an empty cache.
fn all_logits(model: &Model, tokens: &[u32]) -> Vec<f32> {
    model.forward_all(tokens, &mut model.new_cache(tokens.len(), &Device::flex()))
}

#[test]
fn whole_sequences_give_transformers_logits() {
    for (name, _) in FAMILIES {
        let model = load(&fixture(name), Quantization::Keep);
        let vocab = model.vocab_size();
        for sequence in expected(name)["sequences"].as_array().unwrap() {
            let tokens = ids(&sequence["input_ids"]);
            let logits = all_logits(&model, &tokens);
            let theirs = rows(&sequence["logits"]);
            let f16_kv = rows(&sequence["logits_f16_kv"]);
            let mut worst = [0f32; 2];
            for (position, row) in logits.chunks_exact(vocab).enumerate() {
                let diffs = [max_diff(row, &theirs[position]), max_diff(row, &f16_kv[position])];
                worst = [worst[0].max(diffs[0]), worst[1].max(diffs[1])];
                let at = format!("{name}, length {}, position {position}", tokens.len());
                assert!(diffs[0] <= TOLERANCE, "{at}: {} from transformers", diffs[0]);
                assert!(diffs[1] <= F16_KV_TOLERANCE, "{at}: {} from the f16-KV run", diffs[1]);
                assert_eq!(argmax(row), argmax(&theirs[position]), "{at}");
            }
            eprintln!(
                "{name}, length {}: {} from transformers, {} from its f16-KV run",
                tokens.len(),
                worst[0],
                worst[1]
            );
        }
    }
}

#[test]
fn decoding_token_by_token_gives_the_logits_of_the_whole_pass() {
    for (name, _) in FAMILIES {
        let model = load(&fixture(name), Quantization::Keep);
        let vocab = model.vocab_size();
        let expected = expected(name);
        let longest = expected["sequences"].as_array().unwrap().last().unwrap();
        let tokens = ids(&longest["input_ids"]);
        let theirs = rows(&longest["logits"]);
        let f16_kv = rows(&longest["logits_f16_kv"]);
        let whole = all_logits(&model, &tokens);
        let prefill = tokens.len() / 2;
        let mut kv = model.new_cache(tokens.len(), &Device::flex());
        model.forward(&tokens[..prefill], &mut kv);
        let mut worst = [0f32; 3];
        for (position, &token) in tokens.iter().enumerate().skip(prefill) {
            let step = model.forward(&[token], &mut kv);
            let ours = &whole[position * vocab..(position + 1) * vocab];
            let diffs = [
                max_diff(&step, ours),
                max_diff(&step, &theirs[position]),
                max_diff(&step, &f16_kv[position]),
            ];
            worst = [0, 1, 2].map(|i| worst[i].max(diffs[i]));
            let at = format!("{name}, position {position}");
            // Measured: bit-identical to the whole pass.
            assert!(diffs[0] <= 1e-4, "{at}: {} from our whole pass", diffs[0]);
            assert!(diffs[1] <= TOLERANCE, "{at}: {} from transformers", diffs[1]);
            assert!(diffs[2] <= F16_KV_TOLERANCE, "{at}: {} from the f16-KV run", diffs[2]);
        }
        eprintln!(
            "{name}: steps {} from our whole pass, {} from transformers, {} from the f16-KV run",
            worst[0], worst[1], worst[2]
        );
    }
}

#[test]
fn greedy_decoding_picks_transformers_ids() {
    for (name, _) in FAMILIES {
        let model = load(&fixture(name), Quantization::Keep);
        let greedy = &expected(name)["greedy"];
        let wanted = ids(&greedy["new_ids"]);
        let picked = greedy_ids(&model, &ids(&greedy["prompt_ids"]), wanted.len());
        assert_eq!(picked, wanted, "{name}");
    }
}

/// The hyperparameters as the engine read them, each source's own way.
fn config(model: &Model) -> (usize, usize, usize, f32, f32, RopeStyle, bool) {
    let Model::Decoder(decoder) = model else {
        panic!("not the dense decoder");
    };
    let c = &decoder.config;
    (
        c.heads,
        c.kv_heads,
        c.head_dim,
        c.rope_theta,
        c.rms_eps,
        c.rope_style,
        c.tied_output,
    )
}

#[test]
fn the_config_and_parameter_count_are_transformers() {
    for (name, architecture) in FAMILIES {
        let model = load(&fixture(name), Quantization::Keep);
        let expected = expected(name);
        let theirs = &expected["config"];
        let number = |key: &str| theirs[key].as_f64().unwrap() as f32;
        // A misread eps moves these logits by 1.7e-3 (qwen2's 1e-6 read as
        // 1e-5) and 3.5e-3 (llama's 1e-5 as 1e-6), inside the tolerances.
        let wanted = (
            4,
            2,
            16,
            number("rope_theta"),
            number("rms_norm_eps"),
            RopeStyle::Halves,
            theirs["tie_word_embeddings"].as_bool().unwrap(),
        );
        assert_eq!(config(&model), wanted, "{name}");
        let info = model.info();
        assert_eq!((info.architecture, info.quant), (architecture, "F32"), "{name}");
        assert_eq!(info.parameters, expected["parameter_count"].as_u64().unwrap(), "{name}");
    }
    // The GGUF file holds eps as f32 (the same f32) and its permuted q and k
    // rows want rotation on adjacent pairs; the rest is the directory's.
    let mut gguf = config(&load(&fixture("llama.gguf"), Quantization::Keep));
    assert_eq!(gguf.5, RopeStyle::Interleaved);
    gguf.5 = RopeStyle::Halves;
    assert_eq!(gguf, config(&load(&fixture("llama"), Quantization::Keep)));
}

#[test]
fn weights_quantized_at_load_stay_close_to_the_float_model() {
    let rms = |v: &[f32]| (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
    // The bound: transformers with every matrix rounded to Q8_0 (weights
    // only) moves these logits by 5.3% (llama, 30 matrices) and 4.5% (qwen2,
    // 29) of their RMS at length 33; Q8_0 here also rounds the activations to
    // 8 bits, about as much again (sqrt 2 ≈ 1.41). Measured: 7.77% and 5.98%,
    // ratios 1.45 and 1.33. Bounds are those figures plus a third. (The
    // random weights make these small models sensitive: Qwen3's 256-wide
    // random checkpoint in reference_qwen3.rs measures 2.5%.)
    for ((name, _), bound) in FAMILIES.into_iter().zip([0.104, 0.08]) {
        // Rows of 64 and 128 elements: whole Q8_0 blocks of 32.
        let tokens = ids(&expected(name)["sequences"].as_array().unwrap().last().unwrap()["input_ids"]);
        let float = all_logits(&load(&fixture(name), Quantization::Keep), &tokens);
        let model = load(&fixture(name), Quantization::parse("q8_0").unwrap());
        assert_eq!(model.info().quant, "Q8_0", "{name}");
        let quantized = all_logits(&model, &tokens);
        let diff: Vec<f32> = quantized.iter().zip(&float).map(|(q, f)| q - f).collect();
        let relative = rms(&diff) / rms(&float);
        eprintln!("{name}: q8_0 logits' RMS error {relative:.4} of their RMS");
        assert!(
            relative <= bound,
            "{name}: {relative} of the logits' RMS (bound {bound})"
        );
    }
}

#[test]
fn the_gguf_conversion_gives_the_checkpoints_logits() {
    let from_checkpoint = load(&fixture("llama"), Quantization::Keep);
    let from_gguf = load(&fixture("llama.gguf"), Quantization::Keep);
    assert_eq!(from_gguf.info(), from_checkpoint.info());
    for sequence in expected("llama")["sequences"].as_array().unwrap() {
        let tokens = ids(&sequence["input_ids"]);
        let ours = all_logits(&from_checkpoint, &tokens);
        let theirs = all_logits(&from_gguf, &tokens);
        // The same F32 weights, q and k rows permuted and rotated on adjacent
        // pairs instead of halves: the rotated values are the same, but each
        // head's q·k sums its terms in another order, so scores differ at
        // float32 level (length 7: 4.4e-6) and, over more positions, flip a
        // few f16 keys as in the f16-KV comparison (length 33: 7.3e-4). A
        // wrong or missing permutation moves logits by whole units.
        let diff = max_diff(&ours, &theirs);
        eprintln!("llama.gguf, length {}: {diff} from the directory", tokens.len());
        let bound = if tokens.len() == 1 { 0.0 } else { F16_KV_TOLERANCE };
        assert!(diff <= bound, "length {}: {diff}", tokens.len());
    }
}

#[test]
fn the_directories_and_the_gguf_file_load_whole() {
    let options = LoadOptions {
        quant: Quantization::Keep,
        ..LoadOptions::default()
    };
    let text = "The capital of France is Paris. Numbers: 2024 3.14159.";
    let mut encodings = Vec::new();
    for name in ["llama", "qwen2", "llama.gguf"] {
        let model = LocalModel::load_with(&fixture(name), &options).expect(name);
        assert_eq!(model.tokenizer.vocab_size(), 512, "{name}");
        assert_eq!(model.template.is_some(), name == "qwen2", "{name}");
        let encoded = model.tokenizer.encode(text, false).unwrap();
        assert_eq!(model.tokenizer.decode(&encoded, false), text, "{name}");
        encodings.push(encoded);
    }
    // llama.gguf carries llama/'s tokenizer as llama.cpp's converter wrote it.
    assert_eq!(encodings[2], encodings[0]);
}
