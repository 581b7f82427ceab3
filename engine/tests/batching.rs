//! Continuous batching: sequences join and leave the running batch at any
//! step, and each one's answer is exactly the one it gives alone (greedy and
//! seeded sampling alike), for every architecture; one cancelled mid-batch
//! leaves the others as they were; a long prompt read beside running answers
//! does not stall them; and a job waits for room in the batch, by count and
//! by memory.

mod common;

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use switchyard_engine::engine::{Engine, EngineOptions, Job, JobEvent, LoadOptions, LocalModel};
use switchyard_engine::generate::{FinishReason, GenerationOutput, GenerationRequest};
use switchyard_engine::model::weights::Quantization;
use switchyard_engine::sampling::SamplingParams;

const WAIT: Duration = Duration::from_secs(300);

fn smollm2() -> LocalModel {
    LocalModel::load(&common::smollm2_path(), Some(2048)).unwrap()
}

fn tiny(name: &str, quant: Quantization) -> LocalModel {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/qwen")
        .join(name);
    LocalModel::load_with(
        &path,
        &LoadOptions {
            quant,
            context_length: Some(2048),
            ..LoadOptions::default()
        },
    )
    .unwrap()
}

/// The models, one per architecture (and a quantized Qwen3).
fn models() -> Vec<(&'static str, LocalModel)> {
    vec![
        ("smollm2", smollm2()),
        ("qwen3", tiny("qwen3_thinking", Quantization::Keep)),
        (
            "qwen3-q4_k",
            tiny("qwen3_thinking", Quantization::parse("q4_k").unwrap()),
        ),
        ("qwen3.5", tiny("qwen35_thinking", Quantization::Keep)),
    ]
}

/// Six requests of different prompt lengths (one longer than a prefill
/// piece) and answer lengths, greedy and seeded-sampled in turn, running to
/// their length.
fn requests(model: &LocalModel) -> Vec<GenerationRequest> {
    let words = ["apple", "river", "seven", "cloud", "green", "stone"];
    (0..6)
        .map(|i| {
            let text =
                words[i..]
                    .iter()
                    .chain(&words[..i])
                    .cycle()
                    .take(4 + 35 * i)
                    .fold(String::new(), |mut text, word| {
                        text.push_str(word);
                        text.push(' ');
                        text
                    });
            let sampling = if i % 2 == 0 {
                SamplingParams::greedy()
            } else {
                SamplingParams {
                    temperature: 0.9,
                    top_p: 0.95,
                    seed: Some(i as u64),
                    ..SamplingParams::greedy()
                }
            };
            GenerationRequest {
                ignore_eos: true,
                top_logprobs: 2,
                ..GenerationRequest::new(model.tokenizer.encode(&text, true).unwrap(), 3 + 4 * i, sampling)
            }
        })
        .collect()
}

fn start(model: LocalModel, max_sequences: usize, max_state_bytes: usize) -> Engine {
    Engine::start_with(
        model,
        EngineOptions {
            threads: 2,
            queue_capacity: 16,
            max_sequences,
            max_state_bytes,
            ..EngineOptions::default()
        },
    )
    .unwrap()
}

/// What a job reports, tagged with its index, on one channel shared by
/// several jobs (so their order shows).
#[derive(Debug)]
enum Seen {
    Started(usize),
    Prefilled(usize),
    Token(usize),
    Done(usize, Box<GenerationOutput>),
}

/// A job reporting on `events`; its sink answers `Break` after `stop_after` tokens.
fn job(index: usize, request: GenerationRequest, events: mpsc::Sender<Seen>, stop_after: Option<usize>) -> Job {
    let mut tokens = 0;
    Job {
        request,
        sink: Box::new(move |event| {
            let seen = match event {
                JobEvent::Started => Seen::Started(index),
                JobEvent::Prefilled { .. } => Seen::Prefilled(index),
                JobEvent::Token(event) => {
                    if event.token.is_none() {
                        return ControlFlow::Continue(());
                    }
                    tokens += 1;
                    let _ = events.send(Seen::Token(index));
                    if stop_after.is_some_and(|n| tokens >= n) {
                        return ControlFlow::Break(());
                    }
                    return ControlFlow::Continue(());
                }
                JobEvent::Done(result) => Seen::Done(index, Box::new(result.expect("the generation runs"))),
            };
            let _ = events.send(seen);
            ControlFlow::Continue(())
        }),
    }
}

/// Each request's answer, run alone.
fn alone(model: &LocalModel, requests: &[GenerationRequest]) -> Vec<GenerationOutput> {
    requests
        .iter()
        .map(|r| model.generate(r, |_| ControlFlow::Continue(())).unwrap())
        .collect()
}

fn ids(output: &GenerationOutput) -> Vec<u32> {
    output.tokens.iter().map(|t| t.id).collect()
}

/// Same tokens, same log-probs (bit for bit), same text and finish.
fn assert_same(name: &str, index: usize, batched: &GenerationOutput, alone: &GenerationOutput) {
    assert_eq!(ids(batched), ids(alone), "{name}, request {index}: tokens");
    let logprobs = |o: &GenerationOutput| o.tokens.iter().map(|t| t.logprob.to_bits()).collect::<Vec<_>>();
    assert_eq!(logprobs(batched), logprobs(alone), "{name}, request {index}: log-probs");
    assert_eq!(batched.text, alone.text, "{name}, request {index}: text");
    assert_eq!(batched.finish_reason, alone.finish_reason, "{name}, request {index}");
}

#[test]
fn every_answer_is_the_one_it_gives_alone_whoever_runs_beside_it() {
    for (name, model) in models() {
        let requests = requests(&model);
        let alone = alone(&model, &requests);
        // Four at most together: the last two join as the first leave; the
        // first three come at once, the others one by one, each once the one
        // before it has answered a token, so sequences join and leave while
        // others are mid-answer.
        let engine = start(model, 4, usize::MAX);
        let (events, seen) = mpsc::channel();
        for (i, request) in requests.iter().enumerate().take(3) {
            engine.submit(job(i, request.clone(), events.clone(), None)).unwrap();
        }
        let mut next = 3;
        let mut outputs: Vec<Option<GenerationOutput>> = vec![None; requests.len()];
        let mut most_running = 0;
        while outputs.iter().any(Option::is_none) {
            let event = seen.recv_timeout(WAIT).expect("the engine answers");
            most_running = most_running.max(engine.running());
            match event {
                Seen::Token(i) if i + 1 == next && next < requests.len() => {
                    engine
                        .submit(job(next, requests[next].clone(), events.clone(), None))
                        .unwrap();
                    next += 1;
                }
                Seen::Done(i, output) => outputs[i] = Some(*output),
                _ => {}
            }
        }
        for (i, (batched, alone)) in outputs.iter().zip(&alone).enumerate() {
            assert_same(name, i, batched.as_ref().unwrap(), alone);
        }
        assert!(most_running >= 2, "{name}: the sequences never ran together");
    }
}

#[test]
fn a_sequence_cancelled_mid_batch_leaves_the_others_unchanged() {
    let model = smollm2();
    let requests = requests(&model);
    let alone = alone(&model, &requests);
    let engine = start(model, 8, usize::MAX);
    let (events, seen) = mpsc::channel();
    for (i, request) in requests.iter().enumerate() {
        // The fourth stops after three tokens, while the others run on.
        let stop_after = (i == 3).then_some(3);
        engine
            .submit(job(i, request.clone(), events.clone(), stop_after))
            .unwrap();
    }
    let mut outputs: Vec<Option<GenerationOutput>> = vec![None; requests.len()];
    while outputs.iter().any(Option::is_none) {
        if let Seen::Done(i, output) = seen.recv_timeout(WAIT).unwrap() {
            outputs[i] = Some(*output);
        }
    }
    let cancelled = outputs[3].as_ref().unwrap();
    assert_eq!(cancelled.finish_reason, FinishReason::Cancelled);
    assert_eq!(ids(cancelled), ids(&alone[3])[..3]);
    for i in [0, 1, 2, 4, 5] {
        assert_same("smollm2", i, outputs[i].as_ref().unwrap(), &alone[i]);
    }
}

#[test]
fn a_long_prompt_read_beside_running_answers_does_not_stall_them() {
    let model = smollm2();
    let long_text = "The history of the river valley, told one season after another. ".repeat(90);
    let long = GenerationRequest {
        ignore_eos: true,
        ..GenerationRequest::new(
            model.tokenizer.encode(&long_text, true).unwrap(),
            4,
            SamplingParams::greedy(),
        )
    };
    assert!(long.prompt_tokens.len() > 8 * switchyard_engine::model::Model::PREFILL_CHUNK);
    let short = |text: &str| GenerationRequest {
        ignore_eos: true,
        ..GenerationRequest::new(
            model.tokenizer.encode(text, true).unwrap(),
            40,
            SamplingParams::greedy(),
        )
    };
    let requests = [short("Tell me a story."), short("Count to twenty."), long];
    let alone = alone(&model, &requests);
    let engine = start(model, 8, usize::MAX);
    let (events, seen) = mpsc::channel();
    engine
        .submit(job(0, requests[0].clone(), events.clone(), None))
        .unwrap();
    engine
        .submit(job(1, requests[1].clone(), events.clone(), None))
        .unwrap();
    let mut log = Vec::new();
    let mut outputs: Vec<Option<GenerationOutput>> = vec![None; 3];
    let mut submitted = false;
    while outputs.iter().any(Option::is_none) {
        let event = seen.recv_timeout(WAIT).unwrap();
        match &event {
            // Once both answers are under way, the long prompt comes.
            Seen::Token(1) if !submitted => {
                engine
                    .submit(job(2, requests[2].clone(), events.clone(), None))
                    .unwrap();
                submitted = true;
            }
            Seen::Done(i, output) => outputs[*i] = Some((**output).clone()),
            _ => {}
        }
        log.push(event);
    }
    // While the long prompt was read piece by piece, the running answers
    // went on: tokens of theirs between every two of its pieces.
    let pieces: Vec<usize> = (0..log.len())
        .filter(|&i| matches!(log[i], Seen::Prefilled(2)))
        .collect();
    assert!(pieces.len() >= 8, "{} pieces", pieces.len());
    let first_done = log.iter().position(|e| matches!(e, Seen::Done(0 | 1, _))).unwrap();
    for pair in pieces.windows(2).filter(|pair| pair[1] < first_done) {
        assert!(
            log[pair[0]..pair[1]].iter().any(|e| matches!(e, Seen::Token(0 | 1))),
            "no answer moved between two pieces of the long prompt"
        );
    }
    for (i, (batched, alone)) in outputs.iter().zip(&alone).enumerate() {
        assert_same("smollm2", i, batched.as_ref().unwrap(), alone);
    }
}

/// The order in which the jobs of `requests` start and finish on `engine`.
fn starts_and_ends(engine: &Engine, requests: &[GenerationRequest]) -> Vec<String> {
    let (events, seen) = mpsc::channel();
    for (i, request) in requests.iter().enumerate() {
        engine.submit(job(i, request.clone(), events.clone(), None)).unwrap();
    }
    drop(events);
    let mut order = Vec::new();
    while let Ok(event) = seen.recv_timeout(WAIT) {
        match event {
            Seen::Started(i) => order.push(format!("start {i}")),
            Seen::Done(i, _) => order.push(format!("done {i}")),
            _ => {}
        }
    }
    order
}

#[test]
fn a_job_waits_for_room_in_the_batch_by_count_and_by_memory() {
    let model = smollm2();
    let requests: Vec<GenerationRequest> = requests(&model).into_iter().take(3).collect();
    // Two at most: the third starts when one has finished.
    let engine = start(smollm2(), 2, usize::MAX);
    let order = starts_and_ends(&engine, &requests);
    let at = |what: &str| order.iter().position(|e| e == what).unwrap();
    assert!(at("start 1") < at("done 0"), "{order:?}");
    assert!(at("start 2") > at("done 0").min(at("done 1")), "{order:?}");
    // Memory for one only: each starts when the one before it has finished.
    drop(engine);
    let engine = start(model, 8, 1);
    let order = starts_and_ends(&engine, &requests);
    assert_eq!(
        order,
        ["start 0", "done 0", "start 1", "done 1", "start 2", "done 2"],
        "one sequence always runs, and no second fits"
    );
}
