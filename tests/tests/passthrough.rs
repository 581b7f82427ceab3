//! The API's other endpoints (files, audio, moderations, anything under
//! `/v1/` Switchyard does not answer itself), passed through to a remote
//! backend: through the official openai SDK, with the client's key checked
//! and ours sent, bodies streamed both ways (a 100 MB upload with flat
//! memory), a client that leaves cancelling the upstream call, and the
//! privacy rules refusing a private body.

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use switchyard_e2e::{CloudDouble, DOUBLE_API_KEY, Daemon, http_client, policy_for, python_says_ok};

const AUTH: &str = "auth:\n  keys:\n    - name: sdk\n      key_env: SDK_KEY\n";
const CLIENT_KEY: &str = "sk-client-passthrough";

fn start(double: &CloudDouble, extra: &str) -> Daemon {
    Daemon::start(
        &policy_for(&double.base_url(), &format!("{AUTH}{extra}")),
        &[("DOUBLE_API_KEY", DOUBLE_API_KEY), ("SDK_KEY", CLIENT_KEY)],
    )
}

#[test]
fn files_audio_and_moderations_pass_through_the_openai_sdk() {
    let double = CloudDouble::start();
    let daemon = start(&double, "");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/passthrough_check.py");
    let url = daemon.url("/v1");
    python_says_ok(&daemon, &[script.as_os_str(), url.as_ref(), CLIENT_KEY.as_ref()]);
    let passed = double.passed();
    assert!(passed.len() >= 5, "{passed:?}");
    for call in &passed {
        let sent = format!("Bearer {DOUBLE_API_KEY}");
        assert_eq!(call.authorization.as_deref(), Some(sent.as_str()), "{call:?}");
        assert!(call.request_id.is_some(), "{call:?}");
    }
    assert!(!daemon.log().contains(DOUBLE_API_KEY) && !daemon.log().contains(CLIENT_KEY));
}

#[tokio::test]
async fn the_clients_key_is_checked_and_an_unknown_endpoint_is_the_upstreams_404() {
    let double = CloudDouble::start();
    let daemon = start(&double, "");
    let http = http_client();
    let unauthorized = http.get(daemon.url("/v1/files/x/content")).send().await.unwrap();
    assert_eq!(unauthorized.status(), 401);
    let unknown = http
        .get(daemon.url("/v1/no-such-endpoint"))
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(unknown.headers()["x-switchyard-reason"], "remote-only-endpoint");
    assert!(double.passed().iter().all(|call| call.path != "/v1/files/x/content"));
}

/// Peak resident memory of a process (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

#[tokio::test]
async fn a_hundred_megabyte_upload_streams_through_with_flat_memory() {
    let double = CloudDouble::start();
    let daemon = start(&double, "");
    let http = http_client();
    // Warm up (first connections, TLS-free pools, allocator arenas).
    let small = reqwest::multipart::Form::new().text("purpose", "batch").part(
        "file",
        reqwest::multipart::Part::bytes(vec![1u8; 1000]).file_name("a.jsonl"),
    );
    let warm = http
        .post(daemon.url("/v1/files"))
        .bearer_auth(CLIENT_KEY)
        .multipart(small)
        .send()
        .await
        .unwrap();
    assert_eq!(warm.status(), 200);
    let before = peak_rss(daemon.pid());

    const SIZE: usize = 100 << 20;
    const CHUNK: usize = 64 << 10;
    let chunks = futures_util::stream::iter((0..SIZE / CHUNK).map(|i| Ok::<_, std::io::Error>(vec![i as u8; CHUNK])));
    let part = reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(chunks), SIZE as u64)
        .file_name("big.jsonl");
    let form = reqwest::multipart::Form::new()
        .text("purpose", "batch")
        .part("file", part);
    let started = Instant::now();
    let response = http
        .post(daemon.url("/v1/files"))
        .bearer_auth(CLIENT_KEY)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["bytes"], json!(SIZE), "{body}");
    let grown = peak_rss(daemon.pid()).saturating_sub(before);
    eprintln!(
        "100 MiB upload in {:.1} s; the daemon's peak RSS grew by {:.1} MiB",
        started.elapsed().as_secs_f64(),
        grown as f64 / (1 << 20) as f64
    );
    assert!(
        grown < 16 << 20,
        "peak RSS grew by {grown} bytes for a {SIZE}-byte upload"
    );
}

#[tokio::test]
async fn a_client_that_leaves_cancels_the_upstream_call() {
    let double = CloudDouble::start();
    let daemon = start(&double, "");
    let response = http_client()
        .get(daemon.url("/v1/slow-download"))
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    for _ in 0..3 {
        body.next().await.unwrap().unwrap();
    }
    drop(body);
    let deadline = Instant::now() + Duration::from_secs(5);
    while double.streams_abandoned() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(double.streams_abandoned(), 1, "the upstream download was dropped");
}

#[tokio::test]
async fn a_private_body_is_refused_and_never_sent() {
    let double = CloudDouble::start();
    let privacy = "privacy:\n  patterns:\n    - name: codename\n      regex: '(?i)project bluebird'\n";
    let daemon = start(&double, privacy);
    let http = http_client();
    let ask = |text: &str| {
        http.post(daemon.url("/v1/moderations"))
            .bearer_auth(CLIENT_KEY)
            .json(&json!({ "model": "omni-moderation-latest", "input": text }))
            .send()
    };
    let private = ask("the plans of Project Bluebird").await.unwrap();
    assert_eq!(private.status(), 400);
    let body: Value = private.json().await.unwrap();
    assert_eq!(body["error"]["code"], "privacy_local_only", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("codename"),
        "{body}"
    );
    assert!(double.passed().is_empty(), "nothing went out");
    let plain = ask("a plain sentence").await.unwrap();
    assert_eq!(plain.status(), 200);
    assert_eq!(double.passed().len(), 1);
    let metrics = http
        .get(daemon.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"switchyard_passthrough_requests_total{backend="echo",endpoint="moderations",outcome="2xx"} 1"#
        ) && metrics.contains(
            r#"switchyard_passthrough_requests_total{backend="echo",endpoint="moderations",outcome="4xx"} 1"#
        ),
        "{metrics}"
    );
}
