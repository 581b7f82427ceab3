//! Shadow mode: clients get the remote answer byte for byte (whole and
//! streamed), the local model answers the sample in the background within its
//! bound of one comparison at a time, the agreement metrics and the shadow
//! file fill in, and a daemon killed while writing leaves only whole lines.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard_e2e::{
    CloudDouble, DOUBLE_API_KEY, Daemon, get_text, http_client, local_and_echo_policy, sample, sample_with,
};

fn start(double: &CloudDouble) -> Daemon {
    let policy = local_and_echo_policy(
        &double.base_url(),
        &[],
        &[
            "mode: shadow",
            "shadow: { sample: 1.0, max_concurrent: 1, max_tokens: 8 }",
        ],
        "",
    );
    Daemon::start(&policy, &[("DOUBLE_API_KEY", DOUBLE_API_KEY)])
}

/// The shadow file's lines, parsed, once it has at least `n` (or after 30 s).
fn shadow_lines(daemon: &Daemon, n: usize) -> Vec<Value> {
    let path = daemon.dir().join("shadow.jsonl");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lines: Vec<Value> = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What the upstream answers `body` with, asked directly (as the remote
/// backend `echo` asks it).
async fn upstream_bytes(double: &CloudDouble, body: &Value) -> bytes::Bytes {
    let mut body = body.clone();
    body["model"] = json!("echo");
    let response = http_client()
        .post(format!("{}/chat/completions", double.base_url()))
        .bearer_auth(DOUBLE_API_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    response.bytes().await.unwrap()
}

fn ask(text: &str) -> Value {
    json!({ "model": "auto", "messages": [{ "role": "user", "content": text }], "max_tokens": 8 })
}

#[tokio::test]
async fn clients_get_the_remote_answer_byte_for_byte_and_the_comparisons_are_recorded() {
    let double = CloudDouble::start();
    let daemon = start(&double);
    let http = http_client();

    let asked = ask("What is the capital of France?");
    let answered = http
        .post(daemon.url("/v1/chat/completions"))
        .json(&asked)
        .send()
        .await
        .unwrap();
    assert_eq!(answered.headers()["x-switchyard-route"], "remote");
    assert_eq!(answered.headers()["x-switchyard-reason"], "shadow");
    let ours = answered.bytes().await.unwrap();
    assert_eq!(
        ours,
        upstream_bytes(&double, &asked).await,
        "the client gets the upstream's bytes"
    );
    // One comparison at a time: the next request waits for it, or is skipped.
    assert_eq!(shadow_lines(&daemon, 1).len(), 1);

    // Streamed: the same events as the upstream sends them.
    let mut streamed = ask("Name a colour.");
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({ "include_usage": true });
    let ours = http
        .post(daemon.url("/v1/chat/completions"))
        .json(&streamed)
        .send()
        .await
        .unwrap();
    let ours = ours.bytes().await.unwrap();
    assert_eq!(
        ours,
        upstream_bytes(&double, &streamed).await,
        "the stream is the upstream's"
    );

    let lines = shadow_lines(&daemon, 2);
    assert_eq!(lines.len(), 2, "both compared: {lines:?}");
    for line in &lines {
        let agreement = line["agreement"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&agreement), "{line}");
        assert_eq!(line["primary_backend"], "echo");
        assert!(line["would_route"].is_string() && line["score"].is_number(), "{line}");
        assert!(line["local_completion_tokens"].as_u64().unwrap() <= 8, "{line}");
        assert!(line["primary_cost_usd"].as_f64().unwrap() > 0.0, "{line}");
    }
    let metrics = get_text(&daemon, "/metrics").await;
    assert_eq!(sample(&metrics, "switchyard_shadow_agreement_count"), 2.0, "{metrics}");
    let compared = sample_with(&metrics, "switchyard_shadow_requests_total", "outcome=\"compared\"");
    assert_eq!(compared, 2.0, "{metrics}");
    assert_eq!(
        sample(&metrics, "switchyard_requests_total"),
        2.0,
        "two client requests, both remote: {metrics}"
    );

    // The audit reads the shadow file beside a log.
    let out = daemon.dir().join("audit");
    let log = daemon.dir().join("log.jsonl");
    std::fs::write(&log, format!("{}\n", ask("Hello there"))).unwrap();
    let audited = std::process::Command::new(switchyard_e2e::daemon::binary())
        .args([
            "audit",
            "--input",
            log.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .args(["--policy", daemon.policy_path().to_str().unwrap()])
        .args(["--shadow", daemon.dir().join("shadow.jsonl").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(audited.status.success(), "{}", String::from_utf8_lossy(&audited.stderr));
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["shadow"]["compared"], 2, "{}", summary["shadow"]);
    let report = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(report.contains("id=\"shadow-agreement\""));
}

#[tokio::test]
async fn under_load_the_local_work_stays_within_its_bound_and_clients_are_not_delayed() {
    let double = CloudDouble::start();
    let daemon = start(&double);
    let http = http_client();
    let clients = 16;
    let answers = futures_util::future::join_all((0..clients).map(|i| {
        let http = http.clone();
        let url = daemon.url("/v1/chat/completions");
        async move {
            let started = Instant::now();
            let response = http
                .post(url)
                .json(&ask(&format!("Question {i}: why?")))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let body: Value = response.json().await.unwrap();
            (started.elapsed(), body)
        }
    }))
    .await;
    for (elapsed, body) in &answers {
        assert!(
            body["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .starts_with("Echo: ")
        );
        // The double answers at once; a client waiting on local work would not.
        assert!(*elapsed < Duration::from_secs(5), "{elapsed:?}");
    }
    // Wait for the comparisons running to end.
    std::thread::sleep(Duration::from_secs(3));
    let metrics = get_text(&daemon, "/metrics").await;
    let outcomes: f64 = sample(&metrics, "switchyard_shadow_requests_total");
    assert_eq!(outcomes, clients as f64, "every shadowed request accounted: {metrics}");
    let lines = shadow_lines(&daemon, 1);
    assert!(
        !lines.is_empty() && lines.len() < clients,
        "a bound of one at a time skips some: {}",
        lines.len()
    );
    // One comparison at a time: their running times never overlap.
    let mut spans: Vec<(f64, f64)> = lines
        .iter()
        .map(|l| {
            let end = l["at_unix_s"].as_f64().unwrap();
            (end - l["local_latency_ms"].as_f64().unwrap() / 1e3, end)
        })
        .collect();
    spans.sort_by(|a, b| a.0.total_cmp(&b.0));
    for pair in spans.windows(2) {
        assert!(pair[1].0 >= pair[0].1 - 0.005, "comparisons overlapped: {pair:?}");
    }
}

#[tokio::test]
async fn a_daemon_killed_while_writing_leaves_only_whole_lines() {
    let double = CloudDouble::start();
    let mut daemon = start(&double);
    let http = http_client();
    let path = daemon.dir().join("shadow.jsonl");
    // Requests one after another, each compared before the next; the daemon
    // is killed while the fourth comparison runs.
    let lines = |path: &std::path::Path| std::fs::read_to_string(path).map_or(0, |t| t.lines().count());
    for i in 0..4 {
        let response = http
            .post(daemon.url("/v1/chat/completions"))
            .json(&ask(&format!("Tell me about {i}.")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        if i == 3 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            break;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while lines(&path) <= i && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    daemon.kill();
    let text = std::fs::read_to_string(&path).unwrap();
    let whole = text.rfind('\n').map_or(0, |at| at + 1);
    let lines: Vec<&str> = text[..whole].lines().collect();
    assert!(lines.len() >= 3, "{text}");
    for line in lines {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
    // At most the line being written is cut.
    assert!(!text[whole..].contains('\n'));
}
