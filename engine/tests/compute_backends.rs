//! The compute backends: Flex (default) and NdArray (for comparison, behind
//! the `ndarray` feature) run the same ops, so they must give the same answers.

mod common;

use switchyard_engine::engine::ComputeBackend;

#[test]
fn backends_are_named_on_the_command_line_as_in_the_docs() {
    for backend in [ComputeBackend::Flex, ComputeBackend::NdArray] {
        assert_eq!(backend.name().parse::<ComputeBackend>(), Ok(backend));
    }
    let err = "cuda".parse::<ComputeBackend>().unwrap_err();
    assert!(err.contains("flex or ndarray"), "{err}");
}

#[cfg(not(feature = "ndarray"))]
#[test]
fn asking_for_a_backend_this_build_lacks_is_a_clear_error() {
    use switchyard_engine::engine::LocalModel;
    let err = LocalModel::load_on(&common::smollm2_path(), Some(256), ComputeBackend::NdArray)
        .err()
        .expect("ndarray is not compiled in");
    assert!(err.to_string().contains("`ndarray` feature"), "{err}");
}

#[cfg(feature = "ndarray")]
mod ndarray {
    use std::ops::ControlFlow;

    use switchyard_engine::engine::{ComputeBackend, LocalModel};
    use switchyard_engine::generate::{GenerationOutput, GenerationRequest};
    use switchyard_engine::sampling::SamplingParams;

    use super::common;

    fn answer(model: &LocalModel, question: &str) -> GenerationOutput {
        let prompt = format!("<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n");
        let request = GenerationRequest {
            prompt_tokens: model.tokenizer.encode(&prompt, true).unwrap(),
            max_tokens: 24,
            sampling: SamplingParams::greedy(),
            stop_tokens: Vec::new(),
            stop_strings: Vec::new(),
            top_logprobs: 5,
            ignore_eos: true,
            deadline: None,
            thinking: None,
            constraint: None,
        };
        model
            .generate(&request, |_| ControlFlow::Continue(()))
            .expect("generation runs")
    }

    #[test]
    fn ndarray_gives_the_answers_flex_gives() {
        let flex = LocalModel::load_on(&common::smollm2_path(), Some(512), ComputeBackend::Flex).unwrap();
        let ndarray = LocalModel::load_on(&common::smollm2_path(), Some(512), ComputeBackend::NdArray).unwrap();
        for question in ["What is the capital of France?", "Write a haiku about trains."] {
            let (a, b) = (answer(&flex, question), answer(&ndarray, question));
            let ids = |o: &GenerationOutput| o.tokens.iter().map(|t| t.id).collect::<Vec<_>>();
            assert_eq!(ids(&a), ids(&b), "{question}");
            // The kernels are the same code on the same bytes; only Burn's own
            // reshapes and cache writes differ, and those move no value.
            for (x, y) in a.tokens.iter().zip(&b.tokens) {
                assert!(
                    (x.logprob - y.logprob).abs() < 1e-4,
                    "{question}: {} vs {}",
                    x.logprob,
                    y.logprob
                );
            }
            for (x, y) in a.first_step_top.iter().zip(&b.first_step_top) {
                assert_eq!(x.0, y.0, "{question}");
                assert!((x.1 - y.1).abs() < 1e-4, "{question}: {} vs {}", x.1, y.1);
            }
        }
    }
}
