//! Native thinking on a real (tiny, random) Qwen3 checkpoint that thinks in
//! `<think>` blocks (`fixtures/qwen/qwen3_thinking`, see its README): markers
//! found from the tokenizer and template, reasoning told apart from the
//! answer token by token, the budget forcing `</think>`, budget 0 closing a
//! block the template opened, and each mode's sampling recommendations.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::OnceLock;

use serde_json::{Map, Value, json};
use switchyard_engine::engine::{LoadOptions, LocalModel, encode_conversation};
use switchyard_engine::generate::{GenerationOutput, GenerationRequest, TokenEvent};
use switchyard_engine::model::weights::Quantization;
use switchyard_engine::sampling::SamplingParams;
use switchyard_engine::thinking::Thinking;

fn model() -> &'static LocalModel {
    static MODEL: OnceLock<LocalModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen/qwen3_thinking");
        let options = LoadOptions {
            quant: Quantization::Keep,
            ..LoadOptions::default()
        };
        LocalModel::load_with(&path, &options).expect("the thinking fixture loads")
    })
}

fn prompt(thinking: bool) -> Vec<u32> {
    let model = model();
    let mut extra = Map::new();
    extra.insert("enable_thinking".into(), Value::Bool(thinking));
    encode_conversation(
        &model.tokenizer,
        model.template.as_deref(),
        model.context_length,
        &json!([{ "role": "user", "content": "What is 2+2?" }]),
        &extra,
    )
    .unwrap()
}

fn run(
    prompt_tokens: Vec<u32>,
    budget: Option<usize>,
    max_tokens: usize,
    seed: u64,
) -> (GenerationOutput, Vec<TokenEvent>) {
    let model = model();
    let request = GenerationRequest {
        prompt_tokens,
        max_tokens,
        sampling: SamplingParams {
            temperature: 1.0,
            seed: Some(seed),
            ..SamplingParams::default()
        },
        stop_tokens: Vec::new(),
        stop_strings: Vec::new(),
        top_logprobs: 0,
        ignore_eos: true,
        deadline: None,
        thinking: Some(Thinking {
            markers: model.thinking.clone().expect("the fixture thinks"),
            budget,
        }),
        constraint: None,
    };
    let mut events = Vec::new();
    let output = model
        .generate(&request, |event| {
            events.push(event.clone());
            ControlFlow::Continue(())
        })
        .unwrap();
    (output, events)
}

#[test]
fn the_markers_come_from_the_vocabulary_and_the_template() {
    let model = model();
    let markers = model
        .thinking
        .as_ref()
        .expect("<think> and </think> are tokens and the template writes them");
    let tokenizer = &model.tokenizer;
    assert_eq!(
        (markers.open, markers.close),
        (
            tokenizer.token_id("<think>").unwrap(),
            tokenizer.token_id("</think>").unwrap()
        )
    );
    assert_eq!(tokenizer.decode(&markers.forced_close, false), "\n</think>\n\n");
    assert!(markers.switchable, "Qwen3.5's template reads enable_thinking");
    // Thinking on, the template opens the block; off, it writes an empty one.
    assert!(markers.open_after(&prompt(true)));
    assert!(!markers.open_after(&prompt(false)));
}

#[test]
fn reasoning_and_answer_are_told_apart_and_the_budget_forces_the_close() {
    let model = model();
    let markers = model.thinking.clone().unwrap();
    for budget in [3, 10] {
        let (output, events) = run(prompt(true), Some(budget), 24, 5);
        let ids: Vec<u32> = output.tokens.iter().map(|t| t.id).collect();
        // The block the template opened: `budget` sampled tokens, then the forced close.
        let close_at = ids.iter().position(|&id| id == markers.close).expect("closed");
        assert_eq!(close_at, budget + 1, "{ids:?}");
        assert_eq!(&ids[budget..budget + 3], markers.forced_close.as_slice(), "{ids:?}");
        assert_eq!(output.reasoning_tokens, budget + 2);
        // The events' channels and texts make the output's two texts.
        let reasoning: String = events.iter().filter(|e| e.reasoning).map(|e| e.text.as_str()).collect();
        let answer: String = events
            .iter()
            .filter(|e| !e.reasoning)
            .map(|e| e.text.as_str())
            .collect();
        assert_eq!(
            (reasoning.as_str(), answer.as_str()),
            (output.reasoning.as_str(), output.text.as_str())
        );
        let tagged: Vec<bool> = events
            .iter()
            .filter(|e| e.token.is_some())
            .map(|e| e.reasoning)
            .collect();
        assert_eq!(tagged.iter().filter(|&&r| r).count(), budget + 2);
        assert!(tagged[..budget + 2].iter().all(|&r| r) && tagged[budget + 2..].iter().all(|&r| !r));
        // The texts are the tokens' own, trimmed as the templates' whitespace is.
        let decoded = model.tokenizer.decode(&ids[..budget], true);
        assert_eq!(output.reasoning, decoded.trim());
        let decoded = model.tokenizer.decode(&ids[budget + 3..], true);
        assert_eq!(output.text, decoded.trim_start());
    }
}

#[test]
fn a_budget_of_zero_closes_a_block_the_template_opened_at_once() {
    let markers = model().thinking.clone().unwrap();
    let (output, _) = run(prompt(true), Some(0), 8, 5);
    let ids: Vec<u32> = output.tokens.iter().map(|t| t.id).collect();
    assert_eq!(&ids[..3], markers.forced_close.as_slice());
    assert_eq!((output.reasoning_tokens, output.reasoning.as_str()), (2, ""));
}

#[test]
fn without_a_budget_the_model_thinks_until_it_stops_and_all_of_it_is_reasoning() {
    let (output, _) = run(prompt(true), None, 12, 5);
    assert!(
        !output
            .tokens
            .iter()
            .any(|t| t.id == model().thinking.as_ref().unwrap().close)
    );
    assert_eq!(output.reasoning_tokens, 12);
    assert_eq!(output.text, "");
    // Thinking off: the template closed the block; all of it is the answer.
    let (output, _) = run(prompt(false), Some(0), 12, 5);
    assert_eq!(output.reasoning_tokens, 0);
    assert_eq!(output.reasoning, "");
}

#[test]
fn each_mode_has_its_sampling_recommendation() {
    let hints = model().sampling_hints;
    // generation_config.json (Qwen3's thinking values) with thinking...
    assert_eq!(
        (hints.thinking.temperature, hints.thinking.top_p, hints.thinking.top_k),
        (Some(0.6), Some(0.95), Some(20))
    );
    // ...and Qwen3's card's values without.
    assert_eq!(
        (
            hints.direct.temperature,
            hints.direct.top_p,
            hints.direct.top_k,
            hints.direct.min_p
        ),
        (Some(0.7), Some(0.8), Some(20), Some(0.0))
    );
}

#[test]
fn qwen35_gets_its_cards_values_per_mode() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen/qwen35_thinking");
    let options = LoadOptions {
        quant: Quantization::Keep,
        ..LoadOptions::default()
    };
    let model = LocalModel::load_with(&path, &options).unwrap();
    assert!(model.thinking.is_some());
    let hints = model.sampling_hints;
    assert_eq!(
        (
            hints.thinking.temperature,
            hints.thinking.top_p,
            hints.thinking.presence_penalty
        ),
        (Some(1.0), Some(0.95), Some(1.5))
    );
    assert_eq!(
        (
            hints.direct.temperature,
            hints.direct.top_p,
            hints.direct.top_k,
            hints.direct.presence_penalty
        ),
        (Some(0.7), Some(0.8), Some(20), Some(1.5))
    );
}
