//! Real clients against the real daemon: the official `openai` Python SDK, and
//! the `switchyard` command line itself.

use std::path::PathBuf;
use std::process::Command;

use switchyard_e2e::daemon::policy_check;
use switchyard_e2e::{CloudDouble, DOUBLE_API_KEY, Daemon, daemon, policy_for, python};

#[test]
fn the_openai_python_sdk_works_through_the_proxy() {
    let double = CloudDouble::start();
    let policy = policy_for(
        &double.base_url(),
        "auth:\n  keys:\n    - name: sdk\n      key_env: SDK_KEY\n",
    );
    let daemon = Daemon::start(
        &policy,
        &[("DOUBLE_API_KEY", DOUBLE_API_KEY), ("SDK_KEY", "sk-sdk-client")],
    );
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/openai_sdk_check.py");
    let output = Command::new(python())
        .arg(script)
        .arg(daemon.url("/v1"))
        .arg("sk-sdk-client")
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.trim() == "ok",
        "stdout:\n{stdout}\nstderr:\n{stderr}\ndaemon log:\n{}",
        daemon.log()
    );
}

#[test]
fn policy_check_accepts_the_shipped_policies() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies");
    for entry in std::fs::read_dir(root).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let (ok, text) = policy_check(&std::fs::read_to_string(&path).unwrap());
            assert!(ok, "{}: {text}", path.display());
        }
    }
}

#[test]
fn policy_check_prints_every_problem_with_line_and_column() {
    let double = CloudDouble::start();
    let good = policy_for(&double.base_url(), "");
    let bad = good
        .replacen("api_key_env: DOUBLE_API_KEY", "api_key_env: 9-not-a-var", 1)
        .replace("remote_backends: [echo]", "remote_backends: [nowhere]");
    let (ok, text) = policy_check(&bad);
    assert!(!ok);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("FILE:8:20: "), "{text}");
    assert!(lines[1].contains("nowhere") && lines[1].starts_with("FILE:"), "{text}");

    let typo = good.replacen("max_output_tokens", "max_output_tokenz", 1);
    let (ok, text) = policy_check(&typo);
    assert!(!ok);
    assert!(
        text.starts_with("FILE:11:7: ") && text.contains("max_output_tokenz"),
        "{text}"
    );
}

#[test]
fn policy_check_locates_an_empty_batch_and_a_zero_state_budget() {
    let double = CloudDouble::start();
    let bad =
        switchyard_e2e::local_and_echo_policy(&double.base_url(), &["max_sequences: 0", "max_state_mb: 0"], &[], "");
    let line_of = |key: &str| bad.lines().position(|l| l.trim_start().starts_with(key)).unwrap() + 1;
    let (ok, text) = policy_check(&bad);
    assert!(!ok);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    // The value's column: six spaces of indentation, then the key.
    assert_eq!(
        lines[0],
        format!(
            "FILE:{}:22: max_sequences must be from 1 to 256",
            line_of("max_sequences:")
        ),
        "{text}"
    );
    assert_eq!(
        lines[1],
        format!("FILE:{}:21: max_state_mb must be positive", line_of("max_state_mb:")),
        "{text}"
    );
}

#[test]
fn serve_refuses_an_invalid_policy_with_its_location() {
    let dir = daemon::scratch_dir("serve-invalid");
    let path = dir.join("policy.yaml");
    std::fs::write(&path, "backends: {}\nrouting: {remote_backends: [x]}\nextra: 1\n").unwrap();
    let output = Command::new(daemon::binary())
        .args(["serve", "--policy"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(":3:1: ") && stderr.contains("extra"), "{stderr}");
}

/// Legacy text completions through the SDK: the local model continues the
/// prompt as written; a remote backend gets the request at its own
/// `/completions`.
#[test]
fn legacy_completions_through_the_openai_sdk_local_and_remote() {
    let double = CloudDouble::start();
    let policy = switchyard_e2e::local_and_echo_policy(&double.base_url(), &["context_length: 512"], &[], "");
    let daemon = Daemon::start(&policy, &[("DOUBLE_API_KEY", DOUBLE_API_KEY)]);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/completions_check.py");
    switchyard_e2e::python_says_ok(&daemon, &[script.as_os_str(), daemon.url("/v1").as_ref()]);
    let legacy: Vec<_> = double
        .passed()
        .into_iter()
        .filter(|c| c.path == "/v1/completions")
        .collect();
    assert_eq!(legacy.len(), 2, "the remote calls went to /completions");
}

/// The official openai Node SDK (tests/node, installed by tests/run.sh),
/// unchanged: chat, the Responses API (structured output included), legacy
/// completions, local and remote embeddings, files and audio through the
/// pass-through.
#[test]
fn the_openai_node_sdk_works_through_the_daemon() {
    let double = CloudDouble::start();
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/fixtures/qwen");
    let policy = format!(
        "backends:
  local:
    - name: qwen
      model_path: {}
      quant: none
      threads: 2
      context_length: 2048
    - name: embed
      model_path: {}
      threads: 2
      embeddings: true
  remote:
{}routing:
  local_backend: qwen
  remote_backends: [echo]
",
        fixtures.join("qwen3_thinking").display(),
        fixtures.join("qwen3.gguf").display(),
        switchyard_e2e::echo_remote(&double.base_url())
    );
    let daemon = Daemon::start(&policy, &[("DOUBLE_API_KEY", DOUBLE_API_KEY)]);
    let node = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("node");
    assert!(
        node.join("node_modules/openai").exists(),
        "tests/node/node_modules is missing: run tests/run.sh (it runs npm ci there)"
    );
    let output = Command::new("node")
        .arg(node.join("check.mjs"))
        .args([daemon.url("/v1").as_str(), "qwen", "embed", "echo"])
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.trim() == "ok",
        "stdout:\n{stdout}\nstderr:\n{}\ndaemon log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        daemon.log()
    );
}
