//! What an upstream's faults look like through the real daemon: a breaker
//! probe whose client left, errors that quote our key, answers that stall,
//! break or are not OpenAI's format before or after their first event. The
//! cloud double speaks OpenAI's wire format; every fault must end in a good
//! answer from elsewhere or one clean OpenAI error, and our key must never
//! reach a client or the log.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard_e2e::routed::{Routed, send};
use switchyard_e2e::{CloudDouble, DOUBLE_API_KEY, Daemon, http_client, python, remote_backends_on};

const ALL_REMOTE: &str = "{ local_below: 0.0, remote_above: 0.0, ambiguous: remote }";
/// Three attempts per call, quickly.
const FAST_RETRIES: &str = "      retry: { max_attempts: 3, base_delay_ms: 10, max_delay_ms: 2000 }\n";
/// Long enough for a loaded CI machine to answer a loopback call, short
/// enough that three stalled attempts stay well within a test's patience.
const IDLE_MS: u64 = 1000;

/// One remote backend per upstream model name (the backend is named after
/// it), `remote_backends` in the given order, no local model, and `extra`
/// settings for every backend.
fn policy(double: &CloudDouble, models: &[&str], order: &[&str], extra: &str) -> String {
    let mut text = String::from("server:\n  request_deadline_ms: 60000\nbackends:\n  remote:\n");
    text.push_str(&remote_backends_on(
        double,
        models,
        &format!("{{ connect_ms: 1000, first_byte_ms: 5000, idle_ms: {IDLE_MS}, total_ms: 120000 }}"),
        extra,
    ));
    text.push_str(&format!(
        "routing:\n  remote_backends: [{}]\n  thresholds: {ALL_REMOTE}\n  sessions: {{ sticky: false }}\n",
        order.join(", ")
    ));
    text
}

fn start(policy: &str) -> Daemon {
    Daemon::start(policy, &[("DOUBLE_API_KEY", DOUBLE_API_KEY)])
}

fn ask(model: &str, stream: bool) -> Value {
    json!({ "model": model, "stream": stream, "max_tokens": 8, "messages": [{ "role": "user", "content": "hello there" }] })
}

/// Every form of our key an upstream may quote: whole, its secret middle,
/// OpenAI's masked form (the first 8 and last 4 characters).
fn assert_no_key(text: &str, what: &str) {
    let last_4 = &DOUBLE_API_KEY[DOUBLE_API_KEY.len() - 4..];
    for leak in [DOUBLE_API_KEY, "SECRET", &DOUBLE_API_KEY[..8], last_4] {
        assert!(!text.contains(leak), "{leak:?} leaked into {what}:\n{text}");
    }
}

/// Polls `until` every 50 ms for up to 30 s (a loaded CI machine is slow, never this slow).
async fn eventually(what: &str, mut until: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !until().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn error_of(r: &Routed) -> (u16, &str, &str) {
    (
        r.status,
        r.body["error"]["type"].as_str().unwrap_or("-"),
        r.body["error"]["code"].as_str().unwrap_or("-"),
    )
}

#[tokio::test]
async fn a_breaker_probe_whose_client_left_does_not_jam_the_breaker() {
    let double = CloudDouble::start();
    let breaker = "      retry: { max_attempts: 1 }\n      breaker: { failure_threshold: 1, cooldown_ms: 200 }\n";
    let daemon = start(&policy(&double, &["switchable"], &["switchable"], breaker));
    double.set_outage(true);
    assert_eq!(send(&daemon, &ask("switchable", false), &[]).await.status, 503);
    double.set_outage(false);
    double.set_stall(true);
    // After the cooldown the breaker is half-open, which readiness counts as ready.
    eventually("the breaker's cooldown passed", async || {
        let ready: Value = daemon.get_json("/readyz").await;
        ready["backends"][0]["ready"] == true
    })
    .await;

    // The probe goes out and hangs upstream; its client gives up and leaves.
    let probe = tokio::spawn({
        let url = daemon.url("/v1/chat/completions");
        async move { http_client().post(url).json(&ask("switchable", false)).send().await }
    });
    eventually("the probe reached the upstream", async || {
        double.calls("switchable") == 2
    })
    .await;
    probe.abort();
    eventually("the daemon dropped the probe's upstream call", async || {
        double.stalls_abandoned() == 1
    })
    .await;

    // A cancelled probe proves nothing: the next call is the probe.
    double.set_stall(false);
    let r = send(&daemon, &ask("switchable", false), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(double.calls("switchable"), 3, "the next call reached the upstream");
    let r = send(&daemon, &ask("switchable", false), &[]).await;
    assert_eq!(r.status, 200, "and closed the breaker: {}", r.body);
}

#[tokio::test]
async fn a_breaker_refusal_says_when_the_probe_may_go() {
    let double = CloudDouble::start();
    let breaker = "      retry: { max_attempts: 1 }\n      breaker: { failure_threshold: 1, cooldown_ms: 30000 }\n";
    let daemon = start(&policy(&double, &["switchable"], &["switchable"], breaker));
    double.set_outage(true);
    assert_eq!(send(&daemon, &ask("switchable", false), &[]).await.status, 503);
    let r = send(&daemon, &ask("switchable", false), &[]).await;
    assert_eq!(
        error_of(&r),
        (503, "upstream_error", "backend_unavailable"),
        "{}",
        r.body
    );
    let seconds: u64 = r.retry_after.as_deref().expect("a Retry-After").parse().unwrap();
    assert!((1..=30).contains(&seconds), "Retry-After: {seconds}");
    assert_eq!(double.calls("switchable"), 1, "refused without calling upstream");
}

#[tokio::test]
async fn an_upstream_that_refuses_our_key_is_a_502_that_points_at_the_key_setting() {
    let double = CloudDouble::start();
    let models = ["auth-echo-key", "auth-masked-key", "echo"];
    let daemon = start(&policy(&double, &models, &["auth-echo-key", "echo"], FAST_RETRIES));
    for model in ["auth-echo-key", "auth-masked-key"] {
        for stream in [false, true] {
            let r = send(&daemon, &ask(model, stream), &[]).await;
            assert_eq!(
                error_of(&r),
                (502, "upstream_error", "upstream_auth_failed"),
                "{}",
                r.text
            );
            let message = r.body["error"]["message"].as_str().unwrap();
            assert!(
                message.contains(model) && message.contains("DOUBLE_API_KEY"),
                "{message}"
            );
            assert_no_key(&r.text, "the response");
        }
        assert_eq!(double.calls(model), 2, "{model}: once per request, never retried");
    }
    // Routed, the next backend answers.
    let r = send(&daemon, &ask("auto", false), &[]).await;
    assert_eq!((r.status, r.backend.as_str()), (200, "echo"), "{}", r.body);
    assert_no_key(&daemon.log(), "the log");
}

#[tokio::test]
async fn upstream_errors_keep_their_status_type_and_code_but_never_our_key() {
    let double = CloudDouble::start();
    let models = ["key-quoting-400", "headers-dump-400", "unreachable"];
    let daemon = start(&policy(&double, &models, &["key-quoting-400"], FAST_RETRIES));
    for stream in [false, true] {
        let r = send(&daemon, &ask("key-quoting-400", stream), &[]).await;
        assert_eq!(
            error_of(&r),
            (400, "invalid_request_error", "invalid_value"),
            "{}",
            r.text
        );
        assert_eq!(r.body["error"]["param"], "api_key");
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("[redacted]") && message.contains("cannot be used with organization"),
            "the rest of the message is kept: {message}"
        );
        assert_no_key(&r.text, "the response");

        // A body that is not an OpenAI error (this one dumps our request's
        // headers) is described, not relayed.
        let r = send(&daemon, &ask("headers-dump-400", stream), &[]).await;
        assert_eq!(error_of(&r), (400, "upstream_error", "upstream_error"), "{}", r.text);
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(message.contains("bytes, not shown"), "{message}");
        assert!(!r.text.to_lowercase().contains("authorization"), "{}", r.text);
        assert_no_key(&r.text, "the response");

        // A refused connection says so, but not where to.
        let r = send(&daemon, &ask("unreachable", stream), &[]).await;
        assert_eq!(
            error_of(&r),
            (502, "upstream_error", "upstream_unreachable"),
            "{}",
            r.text
        );
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(message.to_lowercase().contains("refused"), "{message}");
        assert!(
            !message.contains("127.0.0.1:9") && !message.contains("http://"),
            "{message}"
        );
    }
    assert_no_key(&daemon.log(), "the log");
}

/// The upstream models whose streams fail before their first event, and the
/// error (status, type, code) a client gets when the failure has nowhere else
/// to go. An in-band error keeps the upstream's own type and (null) code.
const BAD_STARTS: [(&str, (u16, &str, &str)); 5] = [
    ("stall-after-headers", (504, "upstream_error", "upstream_timeout")),
    ("cut-before-first-event", (502, "upstream_error", "upstream_stream_cut")),
    (
        "broken-first-event",
        (502, "upstream_error", "upstream_invalid_response"),
    ),
    ("error-first-event", (502, "server_error", "-")),
    ("hello-world", (502, "upstream_error", "upstream_invalid_response")),
];

#[tokio::test]
async fn a_stream_that_fails_before_its_first_event_is_retried_then_answered_elsewhere() {
    let double = CloudDouble::start();
    for (model, _) in BAD_STARTS {
        let daemon = start(&policy(&double, &[model, "echo"], &[model, "echo"], FAST_RETRIES));
        let r = send(&daemon, &ask("auto", true), &[]).await;
        assert_eq!((r.status, r.backend.as_str()), (200, "echo"), "{model}: {}", r.text);
        assert!(r.text.contains("Echo:"), "{model}: {}", r.text);
        assert!(r.text.trim_end().ends_with("data: [DONE]"), "{model}: {}", r.text);
        assert!(
            !r.text.contains("broken") && !r.text.contains("hello\":"),
            "{model}: {}",
            r.text
        );
        assert_eq!(double.calls(model), 3, "{model}: every attempt was spent");
    }
}

#[tokio::test]
async fn a_stream_that_fails_before_its_first_event_with_nowhere_to_go_is_one_clean_error() {
    let double = CloudDouble::start();
    let models = BAD_STARTS.map(|(model, _)| model);
    let daemon = start(&policy(
        &double,
        &models,
        &[models[0]],
        "      retry: { max_attempts: 1 }\n",
    ));
    for (model, error) in BAD_STARTS {
        let r = send(&daemon, &ask(model, true), &[]).await;
        assert_eq!(error_of(&r), error, "{model}: {}", r.text);
        assert!(r.body["error"]["message"].is_string(), "{model}: {}", r.text);
    }
}

#[tokio::test]
async fn a_stream_that_breaks_after_its_first_event_ends_with_an_error_event_and_counts_against_the_breaker() {
    let double = CloudDouble::start();
    let breaker = "      retry: { max_attempts: 1 }\n      breaker: { failure_threshold: 1, cooldown_ms: 60000 }\n";
    let daemon = start(&policy(
        &double,
        &["broken-mid-stream"],
        &["broken-mid-stream"],
        breaker,
    ));
    let r = send(&daemon, &ask("broken-mid-stream", true), &[]).await;
    assert_eq!(r.status, 200, "the first events were answered: {}", r.text);
    let events: Vec<&str> = r.text.split_terminator("\n\n").collect();
    assert_eq!(events.len(), 3, "role chunk, content chunk, error: {}", r.text);
    assert!(events[..2].iter().all(|e| e.starts_with("data: {\"id\"")), "{}", r.text);
    let error: Value = serde_json::from_str(events[2].strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(error["error"]["code"], "upstream_invalid_response", "{error}");
    assert!(
        !r.text.contains("{broken json"),
        "the garbage is not relayed: {}",
        r.text
    );

    let r = send(&daemon, &ask("broken-mid-stream", true), &[]).await;
    assert_eq!(
        error_of(&r),
        (503, "upstream_error", "backend_unavailable"),
        "{}",
        r.text
    );
    assert_eq!(
        double.calls("broken-mid-stream"),
        1,
        "the broken answer opened the breaker"
    );
}

#[tokio::test]
async fn a_completion_without_choices_is_retried_then_answered_elsewhere() {
    let double = CloudDouble::start();
    let daemon = start(&policy(
        &double,
        &["hello-world", "echo"],
        &["hello-world", "echo"],
        FAST_RETRIES,
    ));
    let r = send(&daemon, &ask("hello-world", false), &[]).await;
    assert_eq!(
        error_of(&r),
        (502, "upstream_error", "upstream_invalid_response"),
        "{}",
        r.text
    );
    assert_eq!(double.calls("hello-world"), 3);
    let r = send(&daemon, &ask("auto", false), &[]).await;
    assert_eq!((r.status, r.backend.as_str()), (200, "echo"), "{}", r.text);
}

#[tokio::test]
async fn a_completion_that_stalls_after_its_headers_times_out_at_the_idle_bound() {
    let double = CloudDouble::start();
    let once = "      retry: { max_attempts: 1 }\n";
    let daemon = start(&policy(
        &double,
        &["stall-after-headers"],
        &["stall-after-headers"],
        once,
    ));
    let asked = Instant::now();
    let r = send(&daemon, &ask("stall-after-headers", false), &[]).await;
    assert_eq!(error_of(&r), (504, "upstream_error", "upstream_timeout"), "{}", r.text);
    let message = r.body["error"]["message"].as_str().unwrap();
    assert!(message.contains(&format!("{IDLE_MS} ms")), "{message}");
    // total_ms is 120 s and the double stalls for 60 s: only the idle bound ends it sooner.
    assert!(asked.elapsed() < Duration::from_secs(50), "took {:?}", asked.elapsed());
}

#[test]
fn the_openai_sdk_raises_api_errors_for_malformed_upstream_answers() {
    let double = CloudDouble::start();
    let once = "      retry: { max_attempts: 1 }\n";
    let daemon = start(&policy(
        &double,
        &["hello-world", "broken-mid-stream"],
        &["hello-world"],
        once,
    ));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/malformed_upstream_check.py");
    let output = Command::new(python())
        .arg(script)
        .arg(daemon.url("/v1"))
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
