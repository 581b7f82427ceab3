//! The engine as a service: jobs run one at a time on the engine's threads,
//! a full queue says so at once, and a job whose caller left is stopped.

mod common;

use std::ops::ControlFlow;
use std::sync::mpsc;
use std::time::Duration;

use switchyard_engine::engine::{Engine, EngineBusy, Job, JobEvent, LocalModel};
use switchyard_engine::generate::{FinishReason, GenerationRequest};
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
            JobEvent::Started => ControlFlow::Continue(()),
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
    // SmolLM2: 30 layers, keys and values of 3 heads × 64 dims in f16, for the
    // long request's positions rounded up to the slot's step.
    let positions = (long.prompt_tokens.len() + 300).div_ceil(256) * 256;
    assert_eq!(engine.kv_cache_bytes(), positions * 30 * 2 * 3 * 64 * 2);
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
    }
}
