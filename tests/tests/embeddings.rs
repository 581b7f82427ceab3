//! `/v1/embeddings`: a local embedding model (the tiny random Qwen3 as
//! llama.cpp's converter writes it, last-token pooling) through the openai SDK, equal to transformers' pooled hidden
//! states through the daemon; a remote embedding model passed through; and
//! private text kept on the machine.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use switchyard_e2e::{CloudDouble, DOUBLE_API_KEY, Daemon, http_client, python_says_ok};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/fixtures/qwen")
}

fn start(double: &CloudDouble) -> Daemon {
    let policy = format!(
        "backends:
  local:
    - name: embed
      model_path: {}
      threads: 2
      embeddings: true
    - name: chat
      model_path: {}
      quant: none
      threads: 2
  remote:
{}routing:
  local_backend: chat
  remote_backends: [echo]
privacy:
  patterns:
    - name: codename
      regex: '(?i)project bluebird'
",
        fixtures().join("qwen3.gguf").display(),
        fixtures().join("qwen3_thinking").display(),
        // The upstream's embedding price: what a local answer saves.
        switchyard_e2e::echo_remote(&double.base_url())
            + "      endpoint_prices:\n        - { endpoint: embeddings, input_per_mtok_usd: 1000 }\n"
    );
    Daemon::start(&policy, &[("DOUBLE_API_KEY", DOUBLE_API_KEY)])
}

#[test]
fn embeddings_through_the_openai_sdk_local_and_remote() {
    let double = CloudDouble::start();
    let daemon = start(&double);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/embeddings_check.py");
    let url = daemon.url("/v1");
    python_says_ok(&daemon, &[script.as_os_str(), url.as_ref(), "embed".as_ref()]);
    let remote = double.passed().iter().filter(|c| c.path == "/v1/embeddings").count();
    assert_eq!(remote, 2, "only the remote model's calls went out");
}

/// Through the daemon, the embedding of the fixture's length-7 sequence (as
/// token ids) is transformers' final-norm output at its last position,
/// normalised; private text named for the remote model is answered locally.
#[tokio::test]
async fn local_embeddings_equal_transformers_and_private_text_stays_local() {
    let double = CloudDouble::start();
    let daemon = start(&double);
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("qwen3/expected.json")).unwrap()).unwrap();
    let debug = &expected["debug_len7"];
    let rows = debug["hidden_states"]["final_norm"].as_array().unwrap();
    let last: Vec<f64> = rows
        .last()
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let norm = last.iter().map(|x| x * x).sum::<f64>().sqrt();
    let http = http_client();
    let reply: Value = http
        .post(daemon.url("/v1/embeddings"))
        .json(&json!({ "model": "embed", "input": [debug["input_ids"]], "encoding_format": "float" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ours = reply["data"][0]["embedding"].as_array().unwrap();
    let diff = ours
        .iter()
        .zip(&last)
        .map(|(o, t)| (o.as_f64().unwrap() - t / norm).abs())
        .fold(0.0, f64::max);
    assert!(diff < 2e-3, "max |diff| {diff}: {reply}");

    let private = http
        .post(daemon.url("/v1/embeddings"))
        .json(&json!({ "model": "text-embedding-3-small", "input": "notes on Project Bluebird" }))
        .send()
        .await
        .unwrap();
    assert_eq!(private.status(), 200);
    assert_eq!(private.headers()["x-switchyard-backend"], "embed");
    assert_eq!(private.headers()["x-switchyard-reason"], "privacy-rule");
    let private: Value = private.json().await.unwrap();
    assert!(double.passed().is_empty(), "nothing went out");

    // Both answered locally, free, saving what the upstream charges a token.
    let tokens =
        reply["usage"]["prompt_tokens"].as_u64().unwrap() + private["usage"]["prompt_tokens"].as_u64().unwrap();
    let status = switchyard_e2e::get_json(&daemon, "/status.json").await;
    let embeddings = &status["endpoints"]["embeddings"];
    assert_eq!(embeddings["requests"], 2, "{status}");
    assert_eq!(embeddings["cost_usd"], 0.0, "{status}");
    let saved = embeddings["saved_usd"].as_f64().unwrap();
    assert!(
        (saved - tokens as f64 * 1000.0 / 1e6).abs() < 1e-12,
        "{saved} for {tokens} tokens: {status}"
    );
    assert_eq!(status["recent"][0]["route"], "local", "{status}");
}
