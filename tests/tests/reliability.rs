//! Fault injection through the real daemon: the cloud double refuses
//! connections, fails, rate-limits, stalls and cuts streams; the local engine
//! fills up; the daemon is stopped mid-stream. Every request must end in a
//! complete answer or one clean error: none hang, none are lost.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use switchyard_e2e::routed::send;
use switchyard_e2e::{
    CloudDouble, DOUBLE_API_KEY, Daemon, default_model, http_client, remote_backends_on, sample, without_reasoning,
};

const ALL_REMOTE: &str = "{ local_below: 0.0, remote_above: 0.0, ambiguous: remote }";
const ALL_LOCAL: &str = "{ local_below: 1.0, remote_above: 1.0, ambiguous: local-reasoning }";

/// One remote backend per upstream model name (the backend is named after it),
/// `remote_backends` in the given order, the local model, and `extra` settings
/// for every remote backend. The local model answers one request at a time:
/// one long answer fills it, and the others wait in its queue.
fn policy(double: &CloudDouble, models: &[&str], order: &[&str], thresholds: &str, remote_extra: &str) -> String {
    let mut text = format!(
        "server:\n  request_deadline_ms: 20000\n  shutdown_drain_ms: 20000\nbackends:\n  local:\n    - name: smollm2\n      model_path: {}\n      threads: 2\n      context_length: 1024\n      max_sequences: 1\n      queue_capacity: 1\n      default_max_tokens: 8\n      reasoning_max_tokens: 16\n  remote:\n",
        default_model().display()
    );
    text.push_str(&remote_backends_on(
        double,
        models,
        "{ connect_ms: 500, first_byte_ms: 1000, idle_ms: 2000, total_ms: 30000 }",
        remote_extra,
    ));
    text.push_str(&format!(
        "routing:\n  local_backend: smollm2\n  remote_backends: [{}]\n  thresholds: {thresholds}\n  sessions: {{ sticky: false }}\n",
        order.join(", ")
    ));
    text
}

fn start(policy: &str) -> Daemon {
    Daemon::start(policy, &[("DOUBLE_API_KEY", DOUBLE_API_KEY)])
}

fn ask(model: &str, content: &str) -> Value {
    json!({ "model": model, "max_tokens": 8, "temperature": 0, "messages": [{ "role": "user", "content": content }] })
}

/// A long streamed answer from the local model, asked for by name (not
/// routed), in the background: it holds the engine, from its turn until the
/// returned sender fires or is dropped, when its client leaves (which ends the
/// generation at the next token). The task gives its status.
fn hold_engine(daemon: &Daemon) -> (tokio::task::JoinHandle<u16>, tokio::sync::oneshot::Sender<()>) {
    let mut body = ask("smollm2", "Write a long story about a dragon.");
    body["max_tokens"] = json!(900);
    body["stream"] = json!(true);
    let url = daemon.url("/v1/chat/completions");
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let response = http_client().post(url).json(&body).send().await.unwrap();
        let status = response.status().as_u16();
        let mut stream = response.bytes_stream();
        tokio::select! {
            _ = released => {}
            _ = async { while stream.next().await.is_some() {} } => {}
        }
        status
    });
    (task, release)
}

/// Waits until the local engine runs `running` generations with `queued`
/// requests waiting, as its gauges say. On a loaded machine, arrival order is
/// not a matter of sleeping long enough between requests.
async fn until_engine(daemon: &Daemon, running: i64, queued: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = daemon.metrics().await;
        if sample(&text, "switchyard_local_in_flight") == running as f64
            && sample(&text, "switchyard_local_queue_depth") == queued as f64
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the engine never ran {running} with {queued} waiting:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn with_tools(mut body: Value) -> Value {
    body["tools"] = json!([{ "type": "function", "function": { "name": "lookup", "parameters": {} } }]);
    body
}

const FAST_RETRIES: &str = "      retry: { max_attempts: 3, base_delay_ms: 10, max_delay_ms: 2000 }\n";

#[tokio::test]
async fn refused_connections_fall_back_to_the_next_backend_then_to_the_local_model() {
    let double = CloudDouble::start();
    let daemon = start(&policy(
        &double,
        &["unreachable", "echo"],
        &["unreachable", "echo"],
        ALL_REMOTE,
        FAST_RETRIES,
    ));
    let r = send(&daemon, &ask("auto", "hello"), &[]).await;
    assert_eq!(
        (r.status, r.route.as_str(), r.backend.as_str()),
        (200, "remote", "echo"),
        "{}",
        r.body
    );
    assert_eq!(r.degraded, None);

    let daemon = start(&policy(
        &double,
        &["unreachable"],
        &["unreachable"],
        ALL_REMOTE,
        FAST_RETRIES,
    ));
    // Named directly, the upstream's own error comes back as it was (after
    // three attempts, which count towards the breaker).
    let r = send(&daemon, &ask("unreachable", "hello"), &[]).await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (502, Some("upstream_unreachable")),
        "{}",
        r.body
    );
    // Routed: the remote tier fails, the local model answers.
    let r = send(&daemon, &ask("auto", "hello"), &[]).await;
    assert_eq!(
        (r.status, r.route.as_str(), r.backend.as_str(), r.degraded.as_deref()),
        (200, "local-reasoning", "smollm2", Some("remote-unavailable")),
        "{}",
        r.body
    );
    // A local model that does not reason answers plainly.
    let plain = start(&without_reasoning(&policy(
        &double,
        &["unreachable"],
        &["unreachable"],
        ALL_REMOTE,
        FAST_RETRIES,
    )));
    let r = send(&plain, &ask("auto", "hello"), &[]).await;
    assert_eq!(
        (r.status, r.route.as_str(), r.backend.as_str(), r.degraded.as_deref()),
        (200, "local", "smollm2", Some("remote-unavailable")),
        "{}",
        r.body
    );
    assert!(r.body["choices"][0]["message"].get("reasoning_content").is_none());
    // Not servable locally: one clean 503 that says when to come back.
    let r = send(&daemon, &with_tools(ask("auto", "hello")), &[]).await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (503, Some("no_backend_available")),
        "{}",
        r.body
    );
    assert_eq!(r.retry_after.as_deref(), Some("5"));
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff_until_one_succeeds() {
    let double = CloudDouble::start();
    let daemon = start(&policy(
        &double,
        &["fail-2-then-echo"],
        &["fail-2-then-echo"],
        ALL_REMOTE,
        FAST_RETRIES,
    ));
    for stream in [false, true] {
        let mut body = ask("fail-2-then-echo", "hello");
        body["stream"] = json!(stream);
        let response = http_client()
            .post(daemon.url("/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        assert!(text.contains("Echo: hello") || text.contains("Echo:"), "{text}");
    }
    assert_eq!(double.calls("fail-2-then-echo"), 4, "two failures, then two answers");
}

#[tokio::test]
async fn a_429_is_retried_after_its_retry_after_and_a_long_one_moves_on() {
    let double = CloudDouble::start();
    let daemon = start(&policy(
        &double,
        &["busy-1-then-echo", "rate-limited", "echo"],
        &["rate-limited", "echo"],
        ALL_REMOTE,
        FAST_RETRIES,
    ));
    let started = Instant::now();
    let r = send(&daemon, &ask("busy-1-then-echo", "hello"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "waited the 1 s Retry-After"
    );
    assert_eq!(double.calls("busy-1-then-echo"), 2);

    // `rate-limited` asks for 7 s, over max_delay_ms: no waiting, the next
    // backend answers at once.
    let started = Instant::now();
    let r = send(&daemon, &ask("auto", "hello"), &[]).await;
    assert_eq!((r.status, r.backend.as_str()), (200, "echo"), "{}", r.body);
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert_eq!(double.calls("rate-limited"), 1);
}

#[tokio::test]
async fn a_slow_first_byte_times_out_per_attempt_and_the_request_moves_on() {
    let double = CloudDouble::start();
    let retries = "      retry: { max_attempts: 2, base_delay_ms: 10, max_delay_ms: 100 }\n";
    let daemon = start(&policy(
        &double,
        &["slow-first-byte", "echo"],
        &["slow-first-byte", "echo"],
        ALL_REMOTE,
        retries,
    ));
    let r = send(&daemon, &ask("slow-first-byte", "hello"), &[]).await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (504, Some("upstream_timeout")),
        "{}",
        r.body
    );
    assert_eq!(double.calls("slow-first-byte"), 2);
    let r = send(&daemon, &ask("auto", "hello"), &[]).await;
    assert_eq!((r.status, r.backend.as_str()), (200, "echo"), "{}", r.body);
}

#[tokio::test]
async fn a_stream_cut_mid_way_ends_with_an_error_event_and_is_not_retried() {
    let double = CloudDouble::start();
    let daemon = start(&policy(
        &double,
        &["cut-stream", "echo"],
        &["cut-stream", "echo"],
        ALL_REMOTE,
        FAST_RETRIES,
    ));
    let mut body = ask("auto", "hello there");
    body["stream"] = json!(true);
    let response = http_client()
        .post(daemon.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-switchyard-backend"], "cut-stream");
    let text = response.text().await.unwrap();
    assert!(text.contains("\"content\""), "the first chunks arrived: {text}");
    assert!(text.contains("\"error\""), "then one error event: {text}");
    assert_eq!(double.calls("cut-stream"), 1, "bytes reached the client: no retry");
    assert_eq!(double.calls("echo"), 0, "and no fallback");
}

#[tokio::test]
async fn the_breaker_opens_after_failures_and_closes_after_a_good_probe() {
    let double = CloudDouble::start();
    let extra = "      retry: { max_attempts: 1 }\n      breaker: { failure_threshold: 2, cooldown_ms: 3000 }\n";
    let daemon = start(&policy(
        &double,
        &["switchable", "echo"],
        &["switchable", "echo"],
        ALL_REMOTE,
        extra,
    ));
    double.set_outage(true);
    for _ in 0..2 {
        let r = send(&daemon, &ask("switchable", "hello"), &[]).await;
        assert_eq!(r.status, 503, "{}", r.body);
    }
    // Open: refused without calling upstream; routed requests skip it.
    let r = send(&daemon, &ask("switchable", "hello"), &[]).await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (503, Some("backend_unavailable")),
        "{}",
        r.body
    );
    assert_eq!(double.calls("switchable"), 2);
    let r = send(&daemon, &ask("auto", "hello"), &[]).await;
    assert_eq!((r.status, r.backend.as_str()), (200, "echo"));
    assert_eq!(double.calls("switchable"), 2);
    // Readiness says so, and the daemon stays ready on its other backends.
    let ready = http_client().get(daemon.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    let switchable = ready["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "switchable")
        .unwrap();
    assert_eq!(switchable["ready"], false, "{ready}");
    assert!(
        switchable["reason"].as_str().unwrap().contains("circuit breaker"),
        "{ready}"
    );
    assert!(
        daemon.log().contains("breaker=\"open\"") || daemon.log().contains("breaker=open"),
        "{}",
        daemon.log()
    );

    // After the cooldown one probe goes through; the upstream is back, so it closes.
    double.set_outage(false);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let r = send(&daemon, &ask("auto", "hello"), &[]).await;
    assert_eq!((r.status, r.backend.as_str()), (200, "switchable"), "{}", r.body);
    let r = send(&daemon, &ask("switchable", "hello"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(double.calls("switchable"), 4);
}

/// Sends `n` local requests at once and returns their outcomes.
async fn flood(daemon: &Daemon, n: usize, body: &Value) -> Vec<switchyard_e2e::routed::Routed> {
    let requests = (0..n).map(|_| send(daemon, body, &[]));
    futures_util::future::join_all(requests).await
}

#[tokio::test]
async fn a_full_local_queue_goes_remote_when_allowed_else_429() {
    let double = CloudDouble::start();
    let daemon = start(&policy(&double, &["echo"], &["echo"], ALL_LOCAL, FAST_RETRIES));
    let mut body = ask("auto", "Write a long story about a dragon.");
    body["max_tokens"] = json!(48);
    let outcomes = flood(&daemon, 6, &body).await;
    assert!(outcomes.iter().all(|r| r.status == 200), "all answered");
    let local = outcomes.iter().filter(|r| r.backend == "smollm2").count();
    let spilled: Vec<_> = outcomes.iter().filter(|r| r.backend == "echo").collect();
    assert!(
        local >= 1 && !spilled.is_empty(),
        "local {local}, spilled {}",
        spilled.len()
    );
    assert!(
        spilled
            .iter()
            .all(|r| r.degraded.as_deref() == Some("local-busy") && r.route == "remote")
    );

    // A request that may not leave the machine waits for nobody: 429, Retry-After.
    let mut private = body.clone();
    private["messages"][0]["content"] = json!("Summarise the account of jane.doe@example.com in a long story.");
    let text = policy(&double, &["echo"], &["echo"], ALL_LOCAL, FAST_RETRIES) + "privacy:\n  detectors: [email]\n";
    let daemon = start(&text);
    let outcomes = flood(&daemon, 6, &private).await;
    let busy: Vec<_> = outcomes.iter().filter(|r| r.status == 429).collect();
    assert!(
        !busy.is_empty(),
        "{:?}",
        outcomes.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(
        busy.iter()
            .all(|r| r.body["error"]["code"] == "engine_busy" && r.retry_after.as_deref() == Some("1"))
    );
    assert!(outcomes.iter().all(|r| r.status == 200 || r.status == 429));
    assert_eq!(double.calls("echo"), spilled.len(), "nothing private went out");
}

#[tokio::test]
async fn a_busy_local_engine_whose_spill_the_budget_refuses_is_429_not_402() {
    let double = CloudDouble::start();
    // A remote answer of 48 tokens may cost about $0.0005: the day's budget
    // has room for one, not two.
    let budgets = "budgets:\n  state_file: spend.json\n  global: { daily_usd: 0.0006 }\n";
    let text = policy(&double, &["echo", "switchable"], &["echo"], ALL_LOCAL, FAST_RETRIES)
        .replace("queue_capacity: 1\n", "queue_capacity: 8\n      max_queue_wait_ms: 5000\n")
        // The held call below waits for its first byte as long as it is held.
        .replace(
            "model: switchable\n      price: { input_per_mtok_usd: 2.5, output_per_mtok_usd: 10.0 }\n      timeouts: { connect_ms: 500, first_byte_ms: 1000,",
            "model: switchable\n      price: { input_per_mtok_usd: 2.5, output_per_mtok_usd: 10.0 }\n      timeouts: { connect_ms: 500, first_byte_ms: 25000,",
        )
        + budgets;
    assert!(text.contains("first_byte_ms: 25000"), "{text}");
    let daemon = start(&text);
    let mut body = ask("auto", "Say hello.");
    body["max_tokens"] = json!(48);
    // A long answer holds the engine; the request is decided while nothing is
    // spent (it may go remote) and waits for a turn.
    let (long, release) = hold_engine(&daemon);
    until_engine(&daemon, 1, 0).await;
    let waiting = send(&daemon, &body, &[]);
    let mut pinned = body.clone();
    pinned["model"] = json!("switchable");
    let mut held = None;
    let (r, ()) = tokio::join!(waiting, async {
        until_engine(&daemon, 1, 1).await;
        // Meanwhile a remote call in flight holds most of the budget.
        double.set_stall(true);
        held = Some(tokio::spawn(send_owned(daemon.url("/v1/chat/completions"), pinned)));
        while double.calls("switchable") == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    // No turn came in time, and the budget refuses the spill: the engine is busy.
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str(), r.retry_after.as_deref()),
        (429, Some("engine_busy"), Some("1")),
        "{}",
        r.body
    );
    assert_eq!(double.calls("echo"), 0, "the budget let nothing out");
    double.set_stall(false);
    assert_eq!(held.expect("the held call was sent").await.unwrap(), 200);
    drop(release);
    assert_eq!(long.await.unwrap(), 200);
}

/// A request to `url` that owns what it needs, for `tokio::spawn`; its status.
async fn send_owned(url: String, body: Value) -> u16 {
    http_client()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_request_that_finds_no_turn_in_time_goes_remote_when_allowed_else_429() {
    let double = CloudDouble::start();
    let text = policy(&double, &["echo"], &["echo"], ALL_LOCAL, FAST_RETRIES).replace(
        "queue_capacity: 1\n",
        "queue_capacity: 8\n      max_queue_wait_ms: 300\n",
    ) + "privacy:\n  detectors: [email]\n";
    let daemon = start(&text);
    // A long answer holds the engine; the queue has room, so only the wait bounds the others.
    let (long, release) = hold_engine(&daemon);
    until_engine(&daemon, 1, 0).await;

    let r = send(&daemon, &ask("auto", "Say hello."), &[]).await;
    assert_eq!(
        (r.status, r.backend.as_str(), r.degraded.as_deref()),
        (200, "echo", Some("local-busy")),
        "{}",
        r.body
    );
    let private = ask("auto", "Write to jane.doe@example.com about the meeting.");
    let r = send(&daemon, &private, &[]).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "engine_busy");
    let message = r.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("no turn within 300 ms"), "{message}");
    assert!(!long.is_finished(), "neither waited for the long answer");
    drop(release);
    assert_eq!(long.await.unwrap(), 200);
    assert_eq!(double.calls("echo"), 1, "nothing private went out");
}

#[tokio::test]
async fn sigterm_lets_streams_in_flight_finish_and_refuses_new_ones() {
    let double = CloudDouble::start();
    let mut daemon = start(&policy(&double, &["echo"], &["echo"], ALL_LOCAL, FAST_RETRIES));
    let mut streams = Vec::new();
    for i in 0..3 {
        let mut body = ask(if i == 0 { "echo" } else { "auto" }, "Tell me about the sea.");
        body["stream"] = json!(true);
        body["max_tokens"] = json!(24);
        let response = http_client()
            .post(daemon.url("/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        streams.push(response.bytes_stream());
    }
    let url = daemon.url("/v1/chat/completions");
    let pid = daemon.pid();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    // New connections are refused once shutdown began (the signal may take a
    // moment to land on a loaded machine).
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_client().post(&url).json(&ask("auto", "hi")).send().await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "new connections still accepted after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for mut stream in streams {
        let mut text = String::new();
        while let Some(chunk) = stream.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.expect("the stream is not cut")));
        }
        assert!(text.trim_end().ends_with("data: [DONE]"), "complete: {text}");
    }
    assert!(daemon.terminate(Duration::from_secs(20)).success());
}

/// A policy whose local answers are cut by our own limit (2 tokens) when the
/// client sets none: provably weak answers. The pre-commit window (64 tokens)
/// covers a whole reasoning answer (16 + 2 tokens), so streams climb too.
fn truncating_policy(double: &CloudDouble, remote: &str, extra: &str) -> String {
    policy(double, &[remote], &[remote], ALL_LOCAL, FAST_RETRIES)
        .replace("default_max_tokens: 8", "default_max_tokens: 2")
        // Long enough that a streamed answer is always judged whole, also
        // on a loaded machine (10 s once ran out before a two-pass answer
        // ended, and the stream was committed unjudged).
        + "ladder: { precommit_tokens: 64, precommit_ms: 60000 }\n"
        + extra
}

#[tokio::test]
async fn the_rungs_of_a_climb_share_one_wait_for_a_turn() {
    let double = CloudDouble::start();
    // Long enough that one bound per rung (wait + wait / 2) and one shared
    // bound (wait plus a 2-token answer) stay apart by seconds on a loaded
    // 2-core machine.
    let wait = Duration::from_millis(10_000);
    let text = truncating_policy(&double, "echo", "privacy:\n  detectors: [email]\n").replace(
        "queue_capacity: 1\n",
        &format!("queue_capacity: 8\n      max_queue_wait_ms: {}\n", wait.as_millis()),
    );
    let daemon = start(&text);
    // The first long answer holds the engine while the private request waits
    // for its first rung, until its client leaves wait / 2 in; the second, queued
    // behind the private request, then holds the engine while the private
    // request's second rung (its answer, cut at 2 tokens, is weak) waits again.
    let (first, release_first) = hold_engine(&daemon);
    until_engine(&daemon, 1, 0).await;
    let mut private = ask("auto", "Write to jane.doe@example.com about the meeting.");
    // No client limit: the policy's 2 tokens cut the answer, which makes it weak.
    private.as_object_mut().unwrap().remove("max_tokens");
    let asked = Instant::now();
    let climb = async {
        let r = send(&daemon, &private, &[]).await;
        (r, asked.elapsed())
    };
    let others = async {
        until_engine(&daemon, 1, 1).await;
        let second = hold_engine(&daemon);
        until_engine(&daemon, 1, 2).await;
        tokio::time::sleep_until((asked + wait / 2).into()).await;
        release_first.send(()).unwrap();
        second
    };
    let ((r, took), (second, release_second)) = tokio::join!(climb, others);
    assert_eq!(r.status, 429, "{}", r.body);
    let message = r.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("counting the"),
        "the second rung had what the first left: {message}"
    );
    // Both waits together stay within one bound (plus a 2-token answer); one
    // bound per rung would add the first rung's wait / 2 (5 s).
    assert!(took < wait + Duration::from_millis(3000), "took {took:?}");
    drop(release_second);
    assert_eq!((first.await.unwrap(), second.await.unwrap()), (200, 200));
    assert_eq!(double.calls("echo"), 0, "nothing private went out");
}

#[tokio::test]
async fn a_weak_local_answer_climbs_the_ladder_streamed_and_not() {
    let double = CloudDouble::start();
    let daemon = start(&truncating_policy(&double, "echo", ""));
    let question = json!({ "model": "auto", "messages": [{ "role": "user", "content": "Explain photosynthesis." }] });
    let r = send(&daemon, &question, &[]).await;
    assert_eq!(
        (r.status, r.route.as_str(), r.backend.as_str(), r.reason.as_str()),
        (200, "remote", "echo", "weak-truncated"),
        "{}",
        r.body
    );
    assert_eq!(r.escalated_from.as_deref(), Some("local"));
    assert!(
        r.body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .starts_with("Echo:")
    );

    let mut streamed = question.clone();
    streamed["stream"] = json!(true);
    let r = send(&daemon, &streamed, &[]).await;
    assert_eq!(
        (r.route.as_str(), r.escalated_from.as_deref(), r.reason.as_str()),
        ("remote", Some("local"), "weak-truncated")
    );
    let text = r.text;
    assert!(
        text.contains("Echo:") && !text.contains("\"model\":\"smollm2\""),
        "no local byte leaked: {text}"
    );
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");

    // Cut where the client asked is what the client wanted: kept local.
    let mut short = question.clone();
    short["max_tokens"] = json!(2);
    let r = send(&daemon, &short, &[]).await;
    assert_eq!(
        (r.route.as_str(), r.reason.as_str(), r.escalated_from),
        ("local", "score-low", None)
    );
}

#[tokio::test]
async fn a_weak_answer_of_a_model_that_does_not_reason_climbs_straight_to_remote() {
    let double = CloudDouble::start();
    let question = json!({ "model": "auto", "messages": [{ "role": "user", "content": "Explain photosynthesis." }] });
    let escalations = |log: &str| {
        log.lines()
            .filter(|l| l.contains("escalating a weak local answer"))
            .map(|l| l.contains("to=\"local-reasoning\""))
            .collect::<Vec<bool>>()
    };
    // With reasoning, the climb has a reasoning rung ...
    let daemon = start(&truncating_policy(&double, "echo", ""));
    assert_eq!(send(&daemon, &question, &[]).await.route, "remote");
    assert_eq!(escalations(&daemon.log()), [true, false], "{}", daemon.log());
    // ... without, it goes from the plain answer to remote.
    let daemon = start(&without_reasoning(&truncating_policy(&double, "echo", "")));
    let r = send(&daemon, &question, &[]).await;
    assert_eq!(
        (r.route.as_str(), r.reason.as_str(), r.escalated_from.as_deref()),
        ("remote", "weak-truncated", Some("local"))
    );
    assert_eq!(escalations(&daemon.log()), [false], "{}", daemon.log());

    // When the remote rung fails, the weak plain answer is served, and says why
    // it is weak; it was not escalated from anywhere.
    let daemon = start(&without_reasoning(&truncating_policy(&double, "server-error", "")));
    let r = send(&daemon, &question, &[]).await;
    assert_eq!(
        (
            r.status,
            r.route.as_str(),
            r.reason.as_str(),
            r.degraded.as_deref(),
            r.escalated_from.as_deref()
        ),
        (200, "local", "weak-truncated", Some("remote-unavailable"), None),
        "{}",
        r.body
    );
}

#[tokio::test]
async fn a_weak_local_answer_is_served_when_the_remote_rung_fails_streamed_and_not() {
    let double = CloudDouble::start();
    let daemon = start(&truncating_policy(&double, "server-error", ""));
    let question = json!({ "model": "auto", "messages": [{ "role": "user", "content": "Explain photosynthesis." }] });
    let r = send(&daemon, &question, &[]).await;
    assert_eq!(
        (
            r.status,
            r.route.as_str(),
            r.backend.as_str(),
            r.degraded.as_deref(),
            r.escalated_from.as_deref()
        ),
        (
            200,
            "local-reasoning",
            "smollm2",
            Some("remote-unavailable"),
            Some("local")
        ),
        "{}",
        r.body
    );
    assert_eq!(r.reason, "weak-truncated", "the served answer's own weakness");
    assert_eq!(
        r.body["choices"][0]["finish_reason"], "length",
        "the last local rung's answer"
    );
    let remote_calls = double.requests().len();
    assert_eq!(
        remote_calls, 3,
        "every retry was spent before settling for the local answer"
    );

    let mut streamed = question.clone();
    streamed["stream"] = json!(true);
    let r = send(&daemon, &streamed, &[]).await;
    assert_eq!(
        (r.status, r.route.as_str(), r.degraded.as_deref()),
        (200, "local-reasoning", Some("remote-unavailable")),
        "{}\ndaemon log:\n{}",
        r.text,
        daemon.log()
    );
    let text = r.text;
    assert!(
        text.contains("\"reasoning_content\"") || text.contains("\"content\""),
        "{text}"
    );
    assert!(!text.contains("\"error\""), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    // The breaker (5 failures in a row) may open during these attempts; the
    // remote rung was tried all the same.
    assert!(double.requests().len() > remote_calls, "the remote rung was tried");
}

#[tokio::test]
async fn the_ladder_stops_below_remote_when_the_request_may_not_leave() {
    let double = CloudDouble::start();
    let daemon = start(&truncating_policy(&double, "echo", "privacy:\n  detectors: [email]\n"));
    let question = json!({ "model": "auto", "messages": [{ "role": "user", "content": "Write to jane.doe@example.com about the meeting." }] });
    let r = send(&daemon, &question, &[]).await;
    assert_eq!(
        (
            r.status,
            r.route.as_str(),
            r.backend.as_str(),
            r.escalated_from.as_deref()
        ),
        (200, "local-reasoning", "smollm2", Some("local")),
        "{}",
        r.body
    );
    assert_eq!(
        r.body["choices"][0]["finish_reason"],
        "length",
        "the last rung's answer, cut as it is: {}\ndaemon log:\n{}",
        r.body,
        daemon.log()
    );
    assert_eq!(double.calls("echo"), 0);
}
