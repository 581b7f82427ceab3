//! The engine as a service: jobs run on the engine's threads (one at a time
//! here, unless a test says otherwise; batching has its own tests),
//! a full queue says so at once, a job whose caller left is stopped, and no
//! job runs past its deadline.

mod common;

use std::ops::ControlFlow;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use switchyard_engine::engine::{Engine, EngineBusy, EngineOptions, Job, JobEvent, LocalModel};
use switchyard_engine::generate::{FinishReason, GenerateError, GenerationOutput, GenerationRequest};
use switchyard_engine::model::Model;
use switchyard_engine::sampling::SamplingParams;

fn request(engine: &Engine, max_tokens: usize) -> GenerationRequest {
    let prompt = "<|im_start|>user\nTell me a long story.<|im_end|>\n<|im_start|>assistant\n";
    GenerationRequest {
        prompt_tokens: engine.tokenizer().encode(prompt, true).unwrap(),
        ..request_template(max_tokens)
    }
}

/// A job reporting its finish reason (or `None` if it was stopped by its sink) on a channel.
fn job(request: GenerationRequest, stop_after: Option<usize>, done: mpsc::Sender<Option<FinishReason>>) -> Job {
    let mut seen = 0;
    Job {
        request,
        sink: Box::new(move |event| match event {
            JobEvent::Started | JobEvent::Prefilled { .. } => ControlFlow::Continue(()),
            JobEvent::Token(_) => {
                seen += 1;
                if stop_after.is_some_and(|n| seen >= n) {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            }
            JobEvent::Done(result) => {
                let _ = done.send(result.ok().map(|output| output.finish_reason));
                ControlFlow::Continue(())
            }
        }),
    }
}

/// Waits until the worker has taken every queued job.
fn until_taken(engine: &Engine) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while engine.queue_depth() > 0 {
        assert!(std::time::Instant::now() < deadline, "the engine took no job");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_full_queue_refuses_at_once_and_queued_jobs_still_run() {
    let engine = Engine::start(LocalModel::load(&common::smollm2_path(), Some(1024)).unwrap(), 2, 1).unwrap();
    let (done, finished) = mpsc::channel();
    // One job runs (long), one waits in the queue of 1, the third is refused.
    engine.submit(job(request(&engine, 200), None, done.clone())).unwrap();
    until_taken(&engine);
    engine.submit(job(request(&engine, 4), None, done.clone())).unwrap();
    assert_eq!(engine.queue_depth(), 1);
    assert_eq!(
        engine.submit(job(request(&engine, 4), None, done.clone())).unwrap_err(),
        EngineBusy
    );
    let first = finished.recv_timeout(Duration::from_secs(60)).unwrap();
    let second = finished.recv_timeout(Duration::from_secs(60)).unwrap();
    assert_eq!(
        (first, second),
        (Some(FinishReason::Length), Some(FinishReason::Length))
    );
    assert_eq!(engine.queue_depth(), 0);
}

#[test]
fn a_continuation_is_never_refused_and_runs_before_waiting_jobs() {
    let engine = Engine::start(LocalModel::load(&common::smollm2_path(), Some(1024)).unwrap(), 2, 1).unwrap();
    let (done, finished) = mpsc::channel();
    // One job runs (long) and one waits, so the queue of 1 is full; a
    // continuation is still taken, and it runs next.
    engine.submit(tokens_job(request(&engine, 120), done.clone())).unwrap();
    until_taken(&engine);
    engine.submit(tokens_job(request(&engine, 3), done.clone())).unwrap();
    assert_eq!(
        engine
            .submit(tokens_job(request(&engine, 3), done.clone()))
            .unwrap_err(),
        EngineBusy
    );
    engine.submit_continuation(tokens_job(request(&engine, 5), done));
    assert_eq!(engine.queue_depth(), 2);
    let lengths: Vec<usize> = (0..3)
        .map(|_| finished.recv_timeout(Duration::from_secs(60)).unwrap().len())
        .collect();
    assert_eq!(lengths, [120, 5, 3], "the continuation ran before the waiting job");
}

#[test]
fn a_sink_that_stops_cancels_its_generation() {
    let engine = Engine::start(LocalModel::load(&common::smollm2_path(), Some(1024)).unwrap(), 2, 4).unwrap();
    let (done, finished) = mpsc::channel();
    engine.submit(job(request(&engine, 500), Some(3), done)).unwrap();
    assert_eq!(
        finished.recv_timeout(Duration::from_secs(30)).unwrap(),
        Some(FinishReason::Cancelled)
    );
}

#[test]
fn a_prompt_longer_than_the_context_is_an_error_not_a_panic() {
    let engine = Engine::start(LocalModel::load(&common::smollm2_path(), Some(64)).unwrap(), 2, 4).unwrap();
    let (done, finished) = mpsc::channel();
    let mut long = request(&engine, 8);
    long.prompt_tokens = long.prompt_tokens.repeat(10);
    engine.submit(job(long, None, done.clone())).unwrap();
    assert_eq!(finished.recv_timeout(Duration::from_secs(30)).unwrap(), None);
    // The engine keeps serving.
    engine.submit(job(request(&engine, 4), None, done)).unwrap();
    assert_eq!(
        finished.recv_timeout(Duration::from_secs(30)).unwrap(),
        Some(FinishReason::Length)
    );
}

/// A job sending its generated token ids on a channel.
fn tokens_job(request: GenerationRequest, done: mpsc::Sender<Vec<u32>>) -> Job {
    Job {
        request,
        sink: Box::new(move |event| {
            if let JobEvent::Done(result) = event {
                let _ = done.send(result.unwrap().tokens.iter().map(|t| t.id).collect());
            }
            ControlFlow::Continue(())
        }),
    }
}

#[test]
fn a_job_nobody_waits_for_any_more_is_dropped_before_it_runs() {
    let engine = Engine::start(LocalModel::load(&common::smollm2_path(), Some(1024)).unwrap(), 2, 4).unwrap();
    let (done, finished) = mpsc::channel();
    engine.submit(tokens_job(request(&engine, 60), done.clone())).unwrap();
    // Its requester answers `Break` when the worker takes it up: it must not
    // run a single token, and the job behind it must.
    let (events, seen) = mpsc::channel();
    engine
        .submit(Job {
            request: request(&engine, 60),
            sink: Box::new(move |event| {
                let _ = events.send(match event {
                    JobEvent::Started => "started",
                    JobEvent::Prefilled { .. } => "prefilled",
                    JobEvent::Token(_) => "token",
                    JobEvent::Done(_) => "done",
                });
                ControlFlow::Break(())
            }),
        })
        .unwrap();
    engine.submit(tokens_job(request(&engine, 3), done)).unwrap();
    let lengths: Vec<usize> = (0..2)
        .map(|_| finished.recv_timeout(Duration::from_secs(60)).unwrap().len())
        .collect();
    assert_eq!(lengths, [60, 3]);
    assert_eq!(seen.try_iter().collect::<Vec<_>>(), ["started"]);
}

#[test]
fn the_kv_cache_is_kept_between_jobs_and_answers_do_not_change() {
    let model = LocalModel::load(&common::smollm2_path(), Some(1024)).unwrap();
    // What each request gives with a cache of its own.
    let short = request_for(&model, "Say hi.", 12);
    let long = request_for(&model, "Tell me a long story.", 300);
    let fresh = |r: &GenerationRequest| -> Vec<u32> {
        let out = model.generate(r, |_| ControlFlow::Continue(())).unwrap();
        out.tokens.iter().map(|t| t.id).collect()
    };
    let (short_alone, long_alone) = (fresh(&short), fresh(&long));

    let engine = Engine::start(model, 2, 4).unwrap();
    assert_eq!(engine.kv_cache_bytes(), 0);
    let (done, finished) = mpsc::channel();
    // The long answer fills the cache far past where the short one ends; the
    // short one after it must not see any of it.
    for r in [&long, &short, &long] {
        engine.submit(tokens_job(r.clone(), done.clone())).unwrap();
    }
    let wait = || finished.recv_timeout(Duration::from_secs(120)).unwrap();
    assert_eq!(wait(), long_alone);
    assert_eq!(wait(), short_alone);
    assert_eq!(wait(), long_alone);
    // Both conversations' states are kept (well within the default budget):
    // SmolLM2's 30 layers, keys and values of 3 heads × 64 dims in f16, for
    // each request's positions rounded up to the slot's step.
    let positions = |r: &GenerationRequest| (r.prompt_tokens.len() + r.max_tokens).div_ceil(256) * 256;
    assert_eq!(
        engine.kv_cache_bytes(),
        (positions(&long) + positions(&short)) * 30 * 2 * 3 * 64 * 2
    );
}

fn request_for(model: &LocalModel, question: &str, max_tokens: usize) -> GenerationRequest {
    let prompt = format!("<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n");
    GenerationRequest {
        prompt_tokens: model.tokenizer.encode(&prompt, true).unwrap(),
        ..request_template(max_tokens)
    }
}

fn request_template(max_tokens: usize) -> GenerationRequest {
    GenerationRequest {
        prompt_tokens: Vec::new(),
        max_tokens,
        sampling: SamplingParams::greedy(),
        stop_tokens: Vec::new(),
        stop_strings: Vec::new(),
        top_logprobs: 0,
        ignore_eos: true,
        deadline: None,
        thinking: None,
        constraint: None,
    }
}

/// A prompt of about `tokens` tokens: one user turn of repeated prose.
fn long_request(tokenizer: &switchyard_engine::tokenizer::Tokenizer, tokens: usize) -> GenerationRequest {
    let sentence = "The quick brown fox jumps over the lazy dog near the river bank. ";
    let per_sentence = tokenizer.encode(sentence, false).unwrap().len();
    let prompt = format!(
        "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
        sentence.repeat(tokens / per_sentence)
    );
    GenerationRequest {
        prompt_tokens: tokenizer.encode(&prompt, true).unwrap(),
        ..request_template(64)
    }
}

/// A job reporting its whole result, and every event it saw, on channels.
fn watched_job(
    request: GenerationRequest,
    done: mpsc::Sender<Result<GenerationOutput, GenerateError>>,
    events: mpsc::Sender<&'static str>,
) -> Job {
    Job {
        request,
        sink: Box::new(move |event| {
            let _ = events.send(match &event {
                JobEvent::Started => "started",
                JobEvent::Prefilled { .. } => "prefilled",
                JobEvent::Token(_) => "token",
                JobEvent::Done(_) => "done",
            });
            if let JobEvent::Done(result) = event {
                let _ = done.send(result);
            }
            ControlFlow::Continue(())
        }),
    }
}

#[test]
fn a_job_whose_deadline_passed_while_it_waited_is_dropped_without_running() {
    let engine = Engine::start(LocalModel::load(&common::smollm2_path(), Some(1024)).unwrap(), 2, 4).unwrap();
    let (done, finished) = mpsc::channel();
    let (events, seen) = mpsc::channel();
    engine.submit(tokens_job(request(&engine, 60), done.clone())).unwrap();
    // Its deadline is already behind it when the job ahead of it finishes.
    let expired = GenerationRequest {
        deadline: Some(Instant::now()),
        ..request(&engine, 60)
    };
    let (expired_done, expired_result) = mpsc::channel();
    engine.submit(watched_job(expired, expired_done, events)).unwrap();
    engine.submit(tokens_job(request(&engine, 3), done)).unwrap();
    let prompt_tokens = request(&engine, 1).prompt_tokens.len();
    assert_eq!(
        expired_result
            .recv_timeout(Duration::from_secs(60))
            .unwrap()
            .unwrap_err(),
        GenerateError::DeadlinePassed {
            prompt_tokens,
            prefilled: 0,
            generated: 0
        }
    );
    assert_eq!(seen.try_iter().collect::<Vec<_>>(), ["started", "done"]);
    let lengths: Vec<usize> = (0..2)
        .map(|_| finished.recv_timeout(Duration::from_secs(60)).unwrap().len())
        .collect();
    assert_eq!(lengths, [60, 3], "the jobs around it ran whole");
}

#[test]
fn a_long_prefill_stops_at_its_deadline_between_chunks_and_the_engine_serves_on() {
    let engine = Engine::start(LocalModel::load(&common::smollm2_path(), None).unwrap(), 2, 4).unwrap();
    // Near SmolLM2's 8,192-token context: seconds of prefill on any CPU with
    // two threads, far more than the deadline.
    let long = GenerationRequest {
        deadline: Some(Instant::now() + Duration::from_millis(500)),
        ..long_request(engine.tokenizer(), 7_000)
    };
    let prompt_tokens = long.prompt_tokens.len();
    let (done, finished) = mpsc::channel();
    let (events, _seen) = mpsc::channel();
    engine.submit(watched_job(long, done.clone(), events.clone())).unwrap();
    match finished.recv_timeout(Duration::from_secs(120)).unwrap() {
        Err(GenerateError::DeadlinePassed {
            prompt_tokens: reported,
            prefilled,
            generated: 0,
        }) => {
            assert_eq!(reported, prompt_tokens);
            assert!(prefilled < prompt_tokens, "stopped inside the prefill: {prefilled}");
            assert_eq!(
                prefilled % Model::PREFILL_CHUNK,
                0,
                "stopped between chunks: {prefilled}"
            );
        }
        other => panic!("expected the deadline to stop the prefill, got {other:?}"),
    }
    engine.submit(watched_job(request(&engine, 4), done, events)).unwrap();
    let next = finished.recv_timeout(Duration::from_secs(60)).unwrap().unwrap();
    assert_eq!((next.finish_reason, next.tokens.len()), (FinishReason::Length, 4));
}

#[test]
fn a_long_answer_stops_at_its_deadline_between_tokens() {
    let engine = Engine::start(LocalModel::load(&common::smollm2_path(), None).unwrap(), 2, 4).unwrap();
    // 5,000 tokens take tens of seconds to decode; the deadline is 1 s away.
    let long = GenerationRequest {
        deadline: Some(Instant::now() + Duration::from_secs(1)),
        ..request(&engine, 5_000)
    };
    let prompt_tokens = long.prompt_tokens.len();
    let (done, finished) = mpsc::channel();
    let (events, seen) = mpsc::channel();
    engine.submit(watched_job(long, done, events)).unwrap();
    match finished.recv_timeout(Duration::from_secs(120)).unwrap() {
        Err(GenerateError::DeadlinePassed {
            prompt_tokens: reported,
            prefilled,
            generated,
        }) => {
            assert_eq!((reported, prefilled), (prompt_tokens, prompt_tokens));
            assert!((1..5_000).contains(&generated), "{generated} tokens");
            let tokens_seen = seen.try_iter().filter(|e| *e == "token").count();
            assert_eq!(tokens_seen, generated, "every generated token was reported");
        }
        other => panic!("expected the deadline to stop the answer, got {other:?}"),
    }
}

#[test]
fn a_caller_gone_stops_a_long_prefill_between_chunks() {
    let engine = Engine::start(LocalModel::load(&common::smollm2_path(), None).unwrap(), 2, 4).unwrap();
    let (done, finished) = mpsc::channel();
    let (progress, seen) = mpsc::channel();
    engine
        .submit(Job {
            request: long_request(engine.tokenizer(), 2_000),
            sink: Box::new(move |event| match event {
                JobEvent::Started | JobEvent::Token(_) => ControlFlow::Continue(()),
                JobEvent::Prefilled { positions, .. } => {
                    let _ = progress.send(positions);
                    // The client left during the prefill.
                    ControlFlow::Break(())
                }
                JobEvent::Done(result) => {
                    let _ = done.send(result);
                    ControlFlow::Continue(())
                }
            }),
        })
        .unwrap();
    let output = finished.recv_timeout(Duration::from_secs(120)).unwrap().unwrap();
    assert_eq!(output.finish_reason, FinishReason::Cancelled);
    assert!(output.tokens.is_empty());
    assert_eq!(seen.try_iter().collect::<Vec<_>>(), [Model::PREFILL_CHUNK]);
}

/// A job reporting each event, tagged with `name`, on one channel shared by
/// several jobs (so their order shows), and its result on `done`.
fn tagged_job(
    name: &'static str,
    request: GenerationRequest,
    events: mpsc::Sender<(&'static str, &'static str)>,
    done: mpsc::Sender<(&'static str, Result<GenerationOutput, GenerateError>)>,
) -> Job {
    Job {
        request,
        sink: Box::new(move |event| {
            let kind = match &event {
                JobEvent::Started => "started",
                JobEvent::Prefilled { .. } => "prefilled",
                JobEvent::Token(_) => "token",
                JobEvent::Done(_) => "done",
            };
            let _ = events.send((name, kind));
            if let JobEvent::Done(result) = event {
                let _ = done.send((name, result));
            }
            ControlFlow::Continue(())
        }),
    }
}

#[test]
fn short_jobs_run_beside_a_long_prefill_and_its_answer_is_unchanged() {
    let model = LocalModel::load(&common::smollm2_path(), None).unwrap();
    // ~1,500 tokens: a dozen prefill chunks.
    let long = GenerationRequest {
        max_tokens: 8,
        ..long_request(&model.tokenizer, 1_500)
    };
    let alone = model.generate(&long, |_| ControlFlow::Continue(())).unwrap();
    let engine = Engine::start_with(
        model,
        EngineOptions {
            threads: 2,
            queue_capacity: 8,
            max_sequences: 4,
            ..EngineOptions::default()
        },
    )
    .unwrap();
    let (events, seen) = mpsc::channel();
    let (done, finished) = mpsc::channel();
    engine
        .submit(tagged_job("long", long, events.clone(), done.clone()))
        .unwrap();
    // Once the long prefill is under way, three short answers arrive.
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.recv_timeout(Duration::from_secs(60)).unwrap() != ("long", "prefilled") {
        assert!(Instant::now() < deadline, "the long prefill never reported progress");
    }
    for name in ["short-1", "short-2", "short-3"] {
        engine
            .submit(tagged_job(name, request(&engine, 4), events.clone(), done.clone()))
            .unwrap();
    }
    let mut results = std::collections::HashMap::new();
    while results.len() < 4 {
        let (name, result) = finished.recv_timeout(Duration::from_secs(120)).unwrap();
        results.insert(name, result.unwrap());
    }
    drop((events, done));
    let order: Vec<(&str, &str)> = seen.try_iter().filter(|(_, kind)| *kind != "token").collect();
    let at = |event: (&str, &str)| order.iter().position(|e| *e == event).unwrap();
    // Each short answer ran before the long one finished, and the long
    // prefill went on beside them: not the queue order.
    for name in ["short-1", "short-2", "short-3"] {
        assert!(at((name, "done")) < at(("long", "done")), "{order:?}");
        assert_eq!(results[name].tokens.len(), 4);
    }
    let long_between = order[at(("short-1", "started"))..at(("short-3", "done"))]
        .iter()
        .filter(|e| **e == ("long", "prefilled"))
        .count();
    assert!(
        long_between >= 1,
        "the long prefill waited for every short job: {order:?}"
    );
    // Read beside the others, the long answer is the one it gives alone.
    let long = &results["long"];
    let ids = |output: &GenerationOutput| output.tokens.iter().map(|t| t.id).collect::<Vec<_>>();
    assert_eq!(ids(long), ids(&alone));
    assert_eq!(
        (long.prompt_tokens, long.finish_reason),
        (alone.prompt_tokens, alone.finish_reason)
    );
    // The engine serves on.
    assert_eq!(
        engine.submit(tagged_job(
            "after",
            request(&engine, 2),
            mpsc::channel().0,
            mpsc::channel().0
        )),
        Ok(())
    );
}
