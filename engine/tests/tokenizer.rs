//! The tokenizer against ids from other implementations:
//! - the real SmolLM2-135M-Instruct GGUF against llama.cpp's prompt and output ids
//!   (fixtures/smollm2_reference.json, recorded with llama-cpp-python 0.3.36);
//! - small BPE vocabularies trained with HF `tokenizers`, one per pre-tokenizer family,
//!   as tokenizer-only GGUFs and as a tokenizer.json, against HF's own ids
//!   (fixtures/tiny_bpe, made by generate.py there).
//!
//! The SmolLM2 model is not in the repository: `scripts/fetch-default-model.sh` fetches
//! it into `models/`, or `SWITCHYARD_TEST_MODEL` points at it. Without it these tests
//! fail, saying so; they never pass by skipping.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;
use switchyard_engine::gguf::GgufFile;
use switchyard_engine::tokenizer::{StreamDecoder, Tokenizer};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn smollm2() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let file = GgufFile::open(&common::smollm2_path()).expect("the SmolLM2 GGUF opens");
        Tokenizer::from_gguf(&file).expect("the SmolLM2 tokenizer builds")
    })
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_u64().unwrap() as u32)
        .collect()
}

fn reference_cases() -> Vec<Value> {
    read_json(&fixtures().join("smollm2_reference.json"))["cases"]
        .as_array()
        .unwrap()
        .clone()
}

const ROUND_TRIP_TEXTS: &[&str] = &[
    "In 2024, 12 + 7 = 19 and 3.14159 ≈ π; 1,234,567 items.",
    "Décris le café « crème » — naïve façade, señor, Müller.",
    "中文分词测试，日本語でもお願いします。한국어",
    "emoji 🙂👍🏽 🇫🇷 👩‍💻 done",
    "  two spaces,   three,\ttab\n\nblank line\r\n   trailing   ",
    "<|im_start|>user\nHi<|im_end|>\n",
    "",
];

#[test]
fn smollm2_prompts_encode_to_llama_cpp_ids() {
    for case in reference_cases() {
        let prompt = case["prompt"].as_str().unwrap();
        assert_eq!(
            smollm2().encode(prompt, true).unwrap(),
            ids(&case["prompt_tokens"]),
            "case {}",
            case["name"]
        );
    }
}

#[test]
fn smollm2_generated_ids_decode_to_llama_cpp_text() {
    for case in reference_cases() {
        let text = smollm2().decode(&ids(&case["greedy_tokens"]), true);
        assert_eq!(text, case["greedy_text"].as_str().unwrap(), "case {}", case["name"]);
    }
}

#[test]
fn smollm2_decode_inverts_encode() {
    for text in ROUND_TRIP_TEXTS {
        let ids = smollm2().encode(text, true).unwrap();
        assert_eq!(smollm2().decode(&ids, false), *text);
    }
}

#[test]
fn smollm2_splits_digits_one_by_one() {
    let tok = smollm2();
    let ids = tok.encode("2024", true).unwrap();
    let digits: Vec<u32> = "2024".chars().map(|d| tok.token_id(&d.to_string()).unwrap()).collect();
    assert_eq!(ids, digits);
}

#[test]
fn smollm2_special_tokens_come_from_the_metadata() {
    let tok = smollm2();
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.bos_token(), Some((1, "<|im_start|>".to_string())));
    assert_eq!(tok.eos_token(), Some((2, "<|im_end|>".to_string())));
    assert!(!tok.add_bos_token());
    assert_eq!(tok.token_id("<|im_end|>"), Some(2));
    // <|im_end|> is eos; <|endoftext|> (id 0) ends documents.
    assert_eq!(tok.end_of_turn_ids(), vec![0, 2]);
    assert!(tok.chat_template().unwrap().contains("<|im_start|>"));
}

#[test]
fn smollm2_without_parse_special_reads_markers_as_text() {
    let tok = smollm2();
    let ids = tok.encode("<|im_start|>user", false).unwrap();
    assert!(!ids.contains(&1), "{ids:?}");
    assert_eq!(tok.decode(&ids, true), "<|im_start|>user");
    assert_eq!(tok.encode("<|im_start|>user", true).unwrap()[0], 1);
}

#[test]
fn decode_can_skip_control_tokens() {
    let tok = smollm2();
    let ids = tok.encode("<|im_start|>assistant\nHi<|im_end|>", true).unwrap();
    assert_eq!(tok.decode(&ids, true), "assistant\nHi");
    assert_eq!(tok.decode(&ids, false), "<|im_start|>assistant\nHi<|im_end|>");
}

#[test]
fn stream_decoder_matches_decode_without_replacement_characters() {
    let tok = smollm2();
    let text = "Décris le café « crème » — 日本語でもお願いします 🙂👍🏽 👩‍💻 中文";
    let ids = tok.encode(text, true).unwrap();
    let mut stream = StreamDecoder::new(tok);
    let chunks: Vec<String> = ids.iter().map(|&id| stream.push(id)).collect();
    let tail = stream.finish();
    // Some character must really have been split over tokens, or this proves nothing.
    assert!(
        chunks.iter().any(String::is_empty),
        "no token held back a partial character"
    );
    assert!(chunks.iter().all(|chunk| !chunk.contains('\u{FFFD}')), "{chunks:?}");
    assert_eq!(tail, "");
    assert_eq!(chunks.concat(), tok.decode(&ids, true));
    assert_eq!(chunks.concat(), text);
}

#[test]
fn stream_decoder_skips_control_tokens_like_decode() {
    let tok = smollm2();
    let ids = tok.encode("<|im_start|>assistant\nOui, café.<|im_end|>", true).unwrap();
    let mut stream = StreamDecoder::new(tok);
    let text: String = ids.iter().map(|&id| stream.push(id)).collect::<String>() + &stream.finish();
    assert_eq!(text, tok.decode(&ids, true));
}

fn tiny_bpe_cases(family: &str) -> Vec<Value> {
    read_json(&fixtures().join("tiny_bpe/expected.json"))["cases"][family]
        .as_array()
        .unwrap()
        .clone()
}

fn assert_matches_hf(tok: &Tokenizer, family: &str) {
    for case in tiny_bpe_cases(family) {
        let text = case["text"].as_str().unwrap();
        assert_eq!(tok.encode(text, true).unwrap(), ids(&case["ids"]), "{family}: {text:?}");
    }
}

fn tiny_gguf(family: &str) -> Tokenizer {
    let file = GgufFile::open(&fixtures().join(format!("tiny_bpe/{family}.gguf"))).unwrap();
    Tokenizer::from_gguf(&file).unwrap()
}

#[test]
fn smollm_pre_tokenizer_matches_hf() {
    assert_matches_hf(&tiny_gguf("smollm"), "smollm");
}

#[test]
fn llama3_pre_tokenizer_matches_hf() {
    assert_matches_hf(&tiny_gguf("llama-bpe"), "llama-bpe");
}

#[test]
fn qwen2_pre_tokenizer_matches_hf() {
    assert_matches_hf(&tiny_gguf("qwen2"), "qwen2");
}

#[test]
fn qwen35_pre_tokenizer_matches_hf() {
    assert_matches_hf(&tiny_gguf("qwen35"), "qwen35");
}

#[test]
fn tokenizer_json_matches_hf_and_reads_its_config_files() {
    let tok = Tokenizer::from_tokenizer_json(&fixtures().join("tiny_bpe/qwen35/tokenizer.json")).unwrap();
    assert_matches_hf(&tok, "qwen35");
    let im_end = tok.token_id("<|im_end|>").unwrap();
    let endoftext = tok.token_id("<|endoftext|>").unwrap();
    assert_eq!(tok.eos_token(), Some((im_end, "<|im_end|>".to_string())));
    assert_eq!(tok.bos_token(), None);
    assert!(!tok.add_bos_token());
    assert_eq!(tok.end_of_turn_ids(), {
        let mut expected = vec![im_end, endoftext];
        expected.sort();
        expected
    });
    // The named "default" template of the list, not "tool_use".
    assert!(tok.chat_template().unwrap().starts_with("{% for m in messages %}"));
    // <think> is a user-defined token: parsed even without parse_special, never skipped.
    let think = tok.token_id("<think>").unwrap();
    assert_eq!(tok.encode("<think>", false).unwrap(), vec![think]);
    assert_eq!(tok.decode(&[think, im_end], true), "<think>");
}

#[test]
fn a_tokenizer_json_that_is_not_byte_level_bpe_is_refused() {
    let dir = std::env::temp_dir().join(format!("switchyard-wordlevel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tokenizer.json");
    let word_level = r#"{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "a": 1}, "unk_token": "[UNK]"}}"#;
    std::fs::write(&path, word_level).unwrap();
    let err = Tokenizer::from_tokenizer_json(&path).unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(err.to_string().contains("byte-level BPE"), "{err}");
}

/// Text well over one encoding chunk, mixing what each pre-tokenizer treats
/// differently: prose, code, digits, contractions, runs of spaces and
/// newlines, accents written with combining marks, CJK, emoji, and the special
/// tokens' spellings.
fn long_mixed_text() -> String {
    let mut text = String::new();
    for text_case in ROUND_TRIP_TEXTS {
        text.push_str(text_case);
    }
    text.push_str("We'll see: it's THEIR call. fn main() {\n    let x = 12345;\n}\n\n   \t e\u{301}te\u{301} ");
    text.push_str("<|im_end|> <think> word word 2024 ");
    text.repeat(2000)
}

#[test]
fn chunked_chat_encoding_gives_the_ids_of_the_whole_text_in_every_pre_tokenizer_family() {
    let text = long_mixed_text();
    assert!(text.len() > 4 * switchyard_engine::tokenizer::TOKENIZE_CHUNK_BYTES);
    let tokenizers = [
        (
            "smollm2",
            Tokenizer::from_gguf(&GgufFile::open(&common::smollm2_path()).unwrap()).unwrap(),
        ),
        ("smollm", tiny_gguf("smollm")),
        ("llama-bpe", tiny_gguf("llama-bpe")),
        ("qwen2", tiny_gguf("qwen2")),
        ("qwen35", tiny_gguf("qwen35")),
        (
            "qwen35 tokenizer.json",
            Tokenizer::from_tokenizer_json(&fixtures().join("tiny_bpe/qwen35/tokenizer.json")).unwrap(),
        ),
    ];
    for (family, tok) in &tokenizers {
        let mut escaped = serde_json::Value::String(text.clone());
        tok.escape_control_text_in(&mut escaped);
        let chunked = tok.encode_chat(escaped.as_str().unwrap(), usize::MAX).unwrap();
        assert!(
            chunked == tok.encode(&text, false).unwrap(),
            "{family}: chunked encoding differs from the whole text's"
        );
        // Unescaped, its control-token spellings are control tokens, split out
        // chunk by chunk as they would be from the whole.
        assert!(
            tok.encode_chat(&text, usize::MAX).unwrap() == tok.encode(&text, true).unwrap(),
            "{family}: chunked encoding with control tokens differs from the whole text's"
        );
    }
}

/// An added token that ends with a letter and strips the whitespace after it
/// would take the space a cut falls before: such a vocabulary is encoded whole.
#[test]
fn an_added_token_that_strips_the_space_after_it_keeps_the_text_whole() {
    let mut json = read_json(&fixtures().join("tiny_bpe/qwen35/tokenizer.json"));
    let added = json["added_tokens"].as_array_mut().unwrap();
    let next_id = added.iter().map(|t| t["id"].as_u64().unwrap()).max().unwrap() + 1;
    added.push(serde_json::json!({
        "id": next_id, "content": "word", "single_word": false, "lstrip": false,
        "rstrip": true, "normalized": false, "special": false
    }));
    let dir = std::env::temp_dir().join(format!("switchyard-rstrip-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
    let tok = Tokenizer::from_tokenizer_json(&path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    // Every space a cut may fall before follows the token.
    let text = "word ".repeat(80_000);
    assert!(text.len() > 4 * switchyard_engine::tokenizer::TOKENIZE_CHUNK_BYTES);
    let whole = tok.encode(&text, true).unwrap();
    assert!(whole.contains(&(next_id as u32)), "the added token is in use");
    assert!(tok.encode_chat(&text, usize::MAX).unwrap() == whole);
}

#[test]
fn encoding_a_prompt_past_its_limit_stops_at_the_limit() {
    let tok = smollm2();
    // Under the byte floor (so the text is encoded), far over the limit.
    let limit = 1000;
    let text = "word ".repeat(tok.longest_token_bytes() * limit / 5 - 10);
    match tok.encode_chat(&text, limit) {
        Err(switchyard_engine::tokenizer::ChatEncodeError::TooLong { at_least_tokens }) => {
            assert!(at_least_tokens >= limit);
            // It stopped after the first chunk rather than encoding all of it.
            assert!(
                at_least_tokens < tok.encode(&text, false).unwrap().len() / 2,
                "{at_least_tokens}"
            );
        }
        other => panic!("{other:?}"),
    }
}
