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
        max_tokens,
        sampling: SamplingParams::greedy(),
        stop_tokens: Vec::new(),
        stop_strings: Vec::new(),
        top_logprobs: 0,
        ignore_eos: true,
    }
}

/// A job reporting its finish reason (or `None` if it was stopped by its sink) on a channel.
fn job(request: GenerationRequest, stop_after: Option<usize>, done: mpsc::Sender<Option<FinishReason>>) -> Job {
    let mut seen = 0;
    Job {
        request,
        sink: Box::new(move |event| match event {
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

#[test]
fn a_full_queue_refuses_at_once_and_queued_jobs_still_run() {
    let engine = Engine::start(LocalModel::load(&common::smollm2_path(), Some(1024)).unwrap(), 2, 1).unwrap();
    let (done, finished) = mpsc::channel();
    // One job runs (long), one waits in the queue of 1, the third is refused.
    engine.submit(job(request(&engine, 200), None, done.clone())).unwrap();
    std::thread::sleep(Duration::from_millis(200));
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
