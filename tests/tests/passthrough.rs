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
use switchyard_e2e::{
    CloudDouble, DOUBLE_API_KEY, Daemon, get_json, get_text, http_client, policy_for, python_says_ok, upload_form,
};

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
    let small = upload_form(&[("purpose", "batch")], "a.jsonl", vec![1u8; 1000]);
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
    let metrics = get_text(&daemon, "/metrics").await;
    assert!(
        metrics.contains(
            r#"switchyard_requests_total{backend="echo",endpoint="moderations",outcome="2xx",reason="remote-only-endpoint",route="remote"} 1"#
        ) && metrics.contains(
            r#"switchyard_requests_total{backend="switchyard",endpoint="moderations",outcome="4xx",reason="privacy-rule",route="none"} 1"#
        ),
        "{metrics}"
    );
}

/// The value of the metric line that starts with `series` (labels included).
fn metric(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in {metrics}"))
}

#[tokio::test]
async fn priced_calls_are_charged_what_their_usage_says_and_the_budget_stops_them() {
    let double = CloudDouble::start();
    // Prices large enough to see: embeddings by the request's model, audio
    // by the minute, moderations by the call; files are not priced.
    let prices = "      endpoint_prices:
        - { endpoint: embeddings, model: text-embedding-3-small, input_per_mtok_usd: 1000 }
        - { endpoint: audio/transcriptions, per_minute_usd: 0.06 }
        - { endpoint: moderations, per_call_usd: 0.2 }
";
    let retry = "      retry: { max_attempts: 1 }\n";
    let policy = policy_for(
        &double.base_url(),
        &format!("{AUTH}budgets:\n  state_file: spend.json\n  global: {{ daily_usd: 1.0 }}\n"),
    )
    .replacen(retry, &format!("{retry}{prices}"), 1);
    let daemon = Daemon::start(&policy, &[("DOUBLE_API_KEY", DOUBLE_API_KEY), ("SDK_KEY", CLIENT_KEY)]);
    let http = http_client();
    let post = |path: &str, body: Value| http.post(daemon.url(path)).bearer_auth(CLIENT_KEY).json(&body).send();

    // 24 characters: the double counts them as tokens. 24 * 1000 / 1e6.
    let embedded = post(
        "/v1/embeddings",
        json!({ "model": "text-embedding-3-small", "input": ["twelve chars", "twelve chars"] }),
    )
    .await
    .unwrap();
    assert_eq!(embedded.status(), 200);
    // Another model of the same endpoint has no price: free to the budgets.
    let unpriced = post(
        "/v1/embeddings",
        json!({ "model": "text-embedding-3-large", "input": "x" }),
    )
    .await
    .unwrap();
    assert_eq!(unpriced.status(), 200);
    // 96,000 bytes of "audio": 3 seconds, billed as 3/60 minutes.
    let form = upload_form(&[("model", "whisper-1")], "a.wav", vec![0u8; 96_000]);
    let heard = http
        .post(daemon.url("/v1/audio/transcriptions"))
        .bearer_auth(CLIENT_KEY)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(heard.status(), 200);
    let embeddings_cost = 24.0 * 1000.0 / 1e6;
    let audio_cost = 3.0 / 60.0 * 0.06;
    let metrics = get_text(&daemon, "/metrics").await;
    let spent = metric(&metrics, r#"switchyard_cost_usd_total{backend="echo"}"#);
    assert!(
        (spent - embeddings_cost - audio_cost).abs() < 1e-9,
        "{spent}: {metrics}"
    );

    // Moderations at 0.20 a call: admitted while the budget has room for
    // one more (each holds its price while it runs), then refused without
    // going out: the budget is never exceeded.
    let spent_before = embeddings_cost + audio_cost;
    let affordable = ((1.0 - spent_before) / 0.2).floor() as usize;
    for _ in 0..affordable {
        let answered = post("/v1/moderations", json!({ "input": "a plain sentence" }))
            .await
            .unwrap();
        assert_eq!(answered.status(), 200);
    }
    let sent = double.passed().len();
    let refused = post("/v1/moderations", json!({ "input": "a plain sentence" }))
        .await
        .unwrap();
    assert_eq!(refused.status(), 402);
    assert_eq!(refused.headers()["x-switchyard-reason"], "budget-exhausted");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "budget_exhausted", "{body}");
    assert_eq!(double.passed().len(), sent, "the refused call never went out");
    // What is not priced still passes: the budget guards money, not files.
    let file = upload_form(&[("purpose", "batch")], "a.jsonl", b"{}\n".to_vec());
    let uploaded = http
        .post(daemon.url("/v1/files"))
        .bearer_auth(CLIENT_KEY)
        .multipart(file)
        .send()
        .await
        .unwrap();
    assert_eq!(uploaded.status(), 200);

    // The ledger, the metrics and the status page agree.
    let total = spent_before + 0.2 * affordable as f64;
    let metrics = get_text(&daemon, "/metrics").await;
    let spent = metric(&metrics, r#"switchyard_cost_usd_total{backend="echo"}"#);
    assert!((spent - total).abs() < 1e-9, "{spent} against {total}");
    let budget = metric(&metrics, r#"switchyard_budget_spent_usd{period="day",scope="global"}"#);
    assert!((budget - total).abs() < 1e-9, "{budget} against {total}");
    assert_eq!(
        metric(
            &metrics,
            r#"switchyard_requests_total{backend="switchyard",endpoint="moderations",outcome="4xx",reason="budget-exhausted",route="none"}"#
        ),
        1.0
    );
    let status = get_json(&daemon, "/status.json").await;
    let endpoints = &status["endpoints"];
    assert_eq!(endpoints["embeddings"]["requests"], 2, "{status}");
    assert_eq!(endpoints["moderations"]["requests"], affordable as u64 + 1, "{status}");
    assert_eq!(endpoints["moderations"]["errors"], 1, "{status}");
    assert_eq!(endpoints["files"]["requests"], 1, "{status}");
    let moderation_cost = endpoints["moderations"]["cost_usd"].as_f64().unwrap();
    assert!((moderation_cost - 0.2 * affordable as f64).abs() < 1e-9, "{status}");
    assert_eq!(status["recent"][0]["endpoint"], "files", "{status}");
}
