//! A conversation's next turn reuses the state its earlier turns left in the
//! engine: only what is new runs, and the answer is the one a cold run gives.
//! For a model with keys and values only (SmolLM2) any shared prefix is
//! reused; for one with a recurrent state (Qwen3.5) the whole history or the
//! snapshot taken at the last turn boundary. Finished requests' states are
//! kept within a memory budget, least recently used first out.

mod common;

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::mpsc;

use serde_json::{Map, Value, json};
use switchyard_engine::engine::{Engine, EngineOptions, Job, JobEvent, LoadOptions, LocalModel, encode_conversation};
use switchyard_engine::generate::{FinishReason, GenerationOutput, GenerationRequest};
use switchyard_engine::model::weights::Quantization;
use switchyard_engine::sampling::SamplingParams;

fn smollm2() -> LocalModel {
    LocalModel::load(&common::smollm2_path(), Some(2048)).unwrap()
}

/// A tiny random checkpoint of `tests/fixtures/qwen`, its weights as they are.
fn tiny(name: &str) -> LocalModel {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/qwen")
        .join(name);
    let options = LoadOptions {
        quant: Quantization::Keep,
        ..LoadOptions::default()
    };
    LocalModel::load_with(&path, &options).unwrap()
}

fn qwen35() -> LocalModel {
    tiny("qwen35_thinking")
}

fn qwen3() -> LocalModel {
    tiny("qwen3_thinking")
}

fn prompt(model: &LocalModel, messages: &Value) -> Vec<u32> {
    let mut extra = Map::new();
    extra.insert("enable_thinking".into(), Value::Bool(false));
    encode_conversation(
        &model.tokenizer,
        model.template.as_deref(),
        model.context_length,
        messages,
        &extra,
    )
    .unwrap()
}

fn request(prompt_tokens: Vec<u32>) -> GenerationRequest {
    GenerationRequest::new(prompt_tokens, 24, SamplingParams::greedy())
}

/// Runs a request on the engine and waits for its output.
fn run(engine: &Engine, request: GenerationRequest) -> GenerationOutput {
    let (done, output) = mpsc::channel();
    engine
        .submit(Job {
            request,
            sink: Box::new(move |event| {
                if let JobEvent::Done(result) = event {
                    let _ = done.send(result.expect("the generation runs"));
                }
                ControlFlow::Continue(())
            }),
        })
        .unwrap();
    output.recv().unwrap()
}

fn ids(output: &GenerationOutput) -> Vec<u32> {
    output.tokens.iter().map(|t| t.id).collect()
}

/// Turn one of a conversation, then turn two (turn one's answer as the
/// assistant's message): the two outputs, and turn two's prompt.
fn two_turns(engine: &Engine, model: &LocalModel, topic: &str) -> (GenerationOutput, GenerationOutput, Vec<u32>) {
    let mut messages = json!([{ "role": "user", "content": format!("Tell me about {topic}.") }]);
    let first = run(engine, request(prompt(model, &messages)));
    let list = messages.as_array_mut().unwrap();
    list.push(json!({ "role": "assistant", "content": first.text }));
    list.push(json!({ "role": "user", "content": "And why does it matter?" }));
    let second_prompt = prompt(model, &messages);
    let second = run(engine, request(second_prompt.clone()));
    (first, second, second_prompt)
}

/// The position after the last end-of-turn token of turn one's prompt: where
/// a recurrent state is snapshotted.
fn turn_boundary(model: &LocalModel, first_prompt: &[u32]) -> usize {
    let ends = model.tokenizer.end_of_turn_ids();
    first_prompt.iter().rposition(|id| ends.contains(id)).unwrap() + 1
}

#[test]
fn a_second_turn_reuses_the_first_and_answers_as_a_cold_run() {
    for (name, load) in [("smollm2", smollm2 as fn() -> LocalModel), ("qwen35", qwen35)] {
        let model = load();
        let engine = Engine::start(load(), 2, 4).unwrap();
        let (first, second, second_prompt) = two_turns(&engine, &model, "rivers");
        assert_eq!(first.cached_tokens, 0, "{name}: nothing to reuse yet");
        let cold = model
            .generate(&request(second_prompt.clone()), |_| ControlFlow::Continue(()))
            .unwrap();
        assert_eq!(cold.cached_tokens, 0);
        assert_eq!(ids(&second), ids(&cold), "{name}: turn two answers as a cold run");
        let first_prompt = prompt(&model, &json!([{ "role": "user", "content": "Tell me about rivers." }]));
        // What turn one ran: its prompt and its answer (but the token it
        // ended on, never fed back when it was cut for length).
        let mut history = first_prompt.clone();
        history.extend(ids(&first));
        if first.finish_reason == FinishReason::Length {
            history.pop();
        }
        let shared = history.iter().zip(&second_prompt).take_while(|(a, b)| a == b).count();
        let expected = match name {
            // Keys and values of every shared token: turn one's prompt, and
            // its answer as far as it re-renders token for token.
            "smollm2" => {
                assert!(shared > first_prompt.len(), "the answer re-renders as it was generated");
                shared
            }
            // The snapshot at the end of turn one's last message (Qwen3.5's
            // template drops the earlier turn's empty think block, so the
            // prompts part right after the assistant header).
            _ => turn_boundary(&model, &first_prompt),
        };
        assert!(expected > 10, "{name}: {expected}");
        assert_eq!(second.cached_tokens, expected, "{name}");
        assert!(engine.kv_cache_bytes() > 0);
    }
}

#[test]
fn the_same_prompt_again_reuses_all_of_it_but_its_last_token() {
    for load in [smollm2 as fn() -> LocalModel, qwen35] {
        let model = load();
        let engine = Engine::start(load(), 2, 4).unwrap();
        let tokens = prompt(&model, &json!([{ "role": "user", "content": "Hello there." }]));
        let first = run(&engine, request(tokens.clone()));
        let again = run(&engine, request(tokens.clone()));
        assert_eq!(ids(&first), ids(&again));
        // The whole history is a prefix of the prompt only for keys and
        // values (the recurrent state ran past it): Qwen3.5 starts from the snapshot.
        let expected = if model.model.info().architecture == "qwen35" {
            turn_boundary(&model, &tokens)
        } else {
            tokens.len() - 1
        };
        assert_eq!(again.cached_tokens, expected);
    }
}

#[test]
fn interleaved_conversations_each_keep_their_state_within_the_budget() {
    let model = smollm2();
    let user = |topic: &str| json!([{ "role": "user", "content": format!("Tell me about {topic}.") }]);
    let follow_up = |topic: &str, answer: &str| {
        json!([
            { "role": "user", "content": format!("Tell me about {topic}.") },
            { "role": "assistant", "content": answer },
            { "role": "user", "content": "Go on." },
        ])
    };
    let cached_after_interleaving = |budget: usize| {
        let engine = Engine::start_with(
            smollm2(),
            EngineOptions {
                threads: 2,
                queue_capacity: 4,
                state_cache_bytes: budget,
                max_sequences: 1,
                ..EngineOptions::default()
            },
        )
        .unwrap();
        let a = run(&engine, request(prompt(&model, &user("volcanoes"))));
        let _b = run(
            &engine,
            request(prompt(&model, &user("the history of the printing press"))),
        );
        let a2 = run(&engine, request(prompt(&model, &follow_up("volcanoes", &a.text))));
        (a2.cached_tokens, engine.kv_cache_bytes())
    };
    let a_prompt = prompt(&model, &user("volcanoes"));
    let (kept, kept_bytes) = cached_after_interleaving(Engine::DEFAULT_STATE_CACHE_BYTES);
    // Conversation A's state survived B's turn: all of A's first prompt but
    // the assistant header's last tokens is reused.
    assert!(kept > a_prompt.len() - 4, "{kept} of {}", a_prompt.len());
    // With no budget one slot is kept (B's): only the system prompt both share.
    let (shared_only, one_slot_bytes) = cached_after_interleaving(0);
    assert!(shared_only < kept && shared_only > 0, "{shared_only} vs {kept}");
    assert!(one_slot_bytes < kept_bytes, "{one_slot_bytes} vs {kept_bytes}");
}

#[test]
fn a_new_conversation_starts_from_a_copy_of_the_system_prompt_a_kept_one_shares() {
    let system = "You are the help desk of a bicycle shop. Answer in two sentences, politely, \
                  and never recommend a competitor.";
    let conversation = |question: &str| {
        json!([
            { "role": "system", "content": system },
            { "role": "user", "content": question },
        ])
    };
    for (name, load) in [("smollm2", smollm2 as fn() -> LocalModel), ("qwen3", qwen3)] {
        let model = load();
        let engine = Engine::start(load(), 2, 4).unwrap();
        let a_prompt = prompt(&model, &conversation("How do I fix a flat tyre?"));
        let b_prompt = prompt(&model, &conversation("What does a tune-up cost?"));
        let shared = a_prompt.iter().zip(&b_prompt).take_while(|(a, b)| a == b).count();
        assert!(shared > 20, "{name}: the system prompt is {shared} tokens");

        let a = run(&engine, request(a_prompt.clone()));
        // A request refused at its start (its deadline passed while it
        // waited) keeps no copy: what the engine holds is unchanged.
        let held = engine.kv_cache_bytes();
        let mut expired = request(b_prompt.clone());
        expired.deadline = Some(std::time::Instant::now());
        let (done, refused) = mpsc::channel();
        engine
            .submit(Job {
                request: expired,
                sink: Box::new(move |event| {
                    if let JobEvent::Done(result) = event {
                        let _ = done.send(result.is_err());
                    }
                    ControlFlow::Continue(())
                }),
            })
            .unwrap();
        assert!(refused.recv().unwrap(), "{name}: the expired request is refused");
        assert_eq!(engine.kv_cache_bytes(), held, "{name}: nothing kept for it");
        let b = run(&engine, request(b_prompt.clone()));
        // B ran only what follows the shared prefix, and answers as a cold run.
        assert_eq!(b.cached_tokens, shared, "{name}");
        let cold = model
            .generate(&request(b_prompt), |_| ControlFlow::Continue(()))
            .unwrap();
        assert_eq!(ids(&b), ids(&cold), "{name}: the copied state answers as a cold run");

        // A's own state was copied from, not taken: its next turn reuses it all.
        let follow_up = json!([
            { "role": "system", "content": system },
            { "role": "user", "content": "How do I fix a flat tyre?" },
            { "role": "assistant", "content": a.text },
            { "role": "user", "content": "And a slow puncture?" },
        ]);
        let a2_prompt = prompt(&model, &follow_up);
        let parted = a_prompt.iter().zip(&a2_prompt).take_while(|(a, b)| a == b).count();
        assert!(parted > shared, "{name}");
        let a2 = run(&engine, request(a2_prompt));
        assert!(
            a2.cached_tokens >= parted,
            "{name}: {} reused, {parted} shared with turn one's prompt",
            a2.cached_tokens
        );
    }
}
