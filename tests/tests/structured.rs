//! Tools and structured outputs answered by the local model: tiny random
//! Qwen checkpoints (Qwen3's template, whose calls are JSON in `<tool_call>`
//! tags, and Qwen3.5's, whose calls are XML), driven by the official openai
//! SDK; and where such requests go when the local model cannot take them.

use std::path::{Path, PathBuf};

use serde_json::json;
use switchyard_e2e::routed::send;
use switchyard_e2e::{Daemon, python_says_ok};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/fixtures/qwen")
}

/// Both tiny Qwens as local backends; `auto` stays on the first.
fn policy() -> String {
    format!(
        "backends:
  local:
    - name: qwen3
      model_path: {}
      threads: 2
      context_length: 2048
    - name: qwen3-5
      model_path: {}
      quant: none
      threads: 2
      context_length: 2048
      reasoning_max_tokens: 8
routing:
  local_backend: qwen3
  thresholds: {{ local_below: 1.0, remote_above: 1.0, ambiguous: local-reasoning }}
ladder: {{ enabled: false }}
",
        fixtures().join("qwen3.gguf").display(),
        fixtures().join("qwen3_thinking").display()
    )
}

#[test]
fn tool_calls_and_schemas_through_the_openai_sdk_in_both_qwen_formats() {
    let daemon = Daemon::start(&policy(), &[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/structured_check.py");
    let url = daemon.url("/v1");
    // The tiny Qwen3 has no `<think>` tokens; the tiny Qwen3.5 thinks.
    for args in [&["qwen3"][..], &["qwen3-5", "thinks"]] {
        let mut argv = vec![script.as_os_str(), url.as_ref()];
        argv.extend(args.iter().map(std::ffi::OsStr::new));
        python_says_ok(&daemon, &argv);
    }
    assert!(!daemon.log().contains("panicked"), "{}", daemon.log());
}

/// Routed (`auto`), a request with tools stays on a local model whose
/// template offers tools, and says why it went where it went.
#[tokio::test]
async fn routed_tool_requests_stay_local_when_the_model_calls_tools() {
    let daemon = Daemon::start(&policy(), &[]);
    let body = json!({
        "model": "auto", "max_tokens": 300, "temperature": 0,
        "messages": [{ "role": "user", "content": "Weather in Lima?" }],
        "tools": [{ "type": "function", "function": { "name": "get_weather",
            "parameters": { "type": "object", "properties": { "city": { "type": "string", "maxLength": 8 } },
                            "required": ["city"], "additionalProperties": false } } }],
        "tool_choice": "required",
    });
    let reply = send(&daemon, &body, &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(
        (reply.route.as_str(), reply.backend.as_str()),
        ("local", "qwen3"),
        "{}",
        reply.text
    );
    let call = &reply.body["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather", "{}", reply.text);
    let arguments: serde_json::Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(
        arguments["city"].as_str().is_some_and(|c| c.chars().count() <= 8),
        "{arguments}"
    );
}

/// The Responses API through the SDK: answered by the tiny Qwen3.5 (plain,
/// streamed, a function call and its round trip, structured output,
/// reasoning), relayed from a remote backend.
#[test]
fn the_responses_api_through_the_openai_sdk_local_and_remote() {
    let double = switchyard_e2e::CloudDouble::start();
    let policy = policy().replace(
        "routing:\n",
        &format!(
            "  remote:\n{}routing:\n  remote_backends: [echo]\n",
            switchyard_e2e::echo_remote(&double.base_url())
        ),
    );
    let daemon = Daemon::start(&policy, &[("DOUBLE_API_KEY", switchyard_e2e::DOUBLE_API_KEY)]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/responses_check.py");
    let url = daemon.url("/v1");
    python_says_ok(
        &daemon,
        &[script.as_os_str(), url.as_ref(), "qwen3-5".as_ref(), "echo".as_ref()],
    );
    let remote: Vec<_> = double
        .passed()
        .into_iter()
        .filter(|c| c.path == "/v1/responses")
        .collect();
    assert_eq!(remote.len(), 2, "the remote calls went to /responses");
}
