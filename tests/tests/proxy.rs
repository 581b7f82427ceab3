//! The daemon as a drop-in OpenAI proxy: what a client sees when the cloud
//! answers, fails, stalls or breaks, and when the client itself misbehaves.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard_e2e::{CloudDouble, DOUBLE_API_KEY, Daemon, daemon, http_client, policy_for, sample};

fn start() -> (CloudDouble, Daemon) {
    let double = CloudDouble::start();
    let daemon = Daemon::start(
        &policy_for(&double.base_url(), ""),
        &[("DOUBLE_API_KEY", DOUBLE_API_KEY)],
    );
    (double, daemon)
}

async fn post_chat(daemon: &Daemon, body: Value) -> reqwest::Response {
    http_client()
        .post(daemon.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn chat(model: &str, stream: bool) -> Value {
    json!({ "model": model, "stream": stream, "messages": [{ "role": "user", "content": "hello there" }] })
}

/// Asserts an OpenAI-format error with the given status and code.
async fn assert_error(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_error_code(response, status, json!(code)).await
}

async fn assert_error_code(response: reqwest::Response, status: u16, code: Value) -> Value {
    assert_eq!(response.status().as_u16(), status);
    assert!(response.headers().contains_key("x-request-id"));
    assert!(response.headers().contains_key("x-switchyard-backend"));
    let body: Value = response.json().await.expect("error body is JSON");
    let error = &body["error"];
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(error["type"].is_string(), "{body}");
    assert!(error.get("param").is_some(), "{body}");
    assert_eq!(error["code"], code, "{body}");
    body
}

fn sse_events(text: &str) -> Vec<String> {
    assert!(text.ends_with("\n\n"), "stream must end on an event boundary: {text:?}");
    text.split_terminator("\n\n")
        .map(|event| {
            event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {event:?}"))
                .to_string()
        })
        .collect()
}

#[tokio::test]
async fn non_streamed_completion_is_relayed_with_the_upstream_key_injected() {
    let (double, daemon) = start();
    let response = http_client()
        .post(daemon.url("/v1/chat/completions"))
        .header("authorization", "Bearer client-key-that-must-not-travel")
        .json(&chat("auto", false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-switchyard-backend"], "echo");
    assert!(!response.headers()["x-request-id"].is_empty());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["content"], "Echo: hello there");
    assert_eq!(body["usage"]["completion_tokens"], 3);

    let seen = double.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some(format!("Bearer {DOUBLE_API_KEY}").as_str())
    );
    assert_eq!(
        seen[0].body["model"], "echo",
        "`auto` is resolved to the backend's upstream model"
    );
}

#[tokio::test]
async fn fields_switchyard_does_not_act_on_pass_through_untouched() {
    let (double, daemon) = start();
    let request = json!({
        "model": "echo",
        "messages": [{ "role": "system", "content": "be brief" }, { "role": "user", "content": "hi" }],
        "tools": [{ "type": "function", "function": { "name": "lookup", "parameters": { "type": "object", "properties": {} } } }],
        "tool_choice": "auto",
        "response_format": { "type": "json_object" },
        "logprobs": true, "top_logprobs": 3, "seed": 42, "n": 1, "user": "u-1",
        "metadata": { "team": "search" }, "reasoning_effort": "low",
        "vendor_extra": { "nested": [1, 2, { "x": null }] }
    });
    assert_eq!(post_chat(&daemon, request.clone()).await.status(), 200);
    let seen = &double.requests()[0].body;
    assert_eq!(seen, &request, "upstream must receive the request exactly as sent");
    let keys: Vec<&String> = seen.as_object().unwrap().keys().collect();
    let sent: Vec<&String> = request.as_object().unwrap().keys().collect();
    assert_eq!(keys, sent, "key order is kept");
}

#[tokio::test]
async fn a_stream_is_relayed_in_openai_framing_without_usage_unless_asked() {
    let (double, daemon) = start();
    let response = post_chat(&daemon, chat("echo", true)).await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = response.text().await.unwrap();
    let events = sse_events(&text);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let mut content = String::new();
    for event in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(event).unwrap();
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert!(chunk.get("usage").is_none(), "client did not ask for usage: {event}");
        assert!(
            !chunk["choices"].as_array().unwrap().is_empty(),
            "no usage-only chunk: {event}"
        );
        content.push_str(chunk["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
    }
    assert_eq!(content, "Echo: hello there");
    // Upstream was asked for usage anyway, so the call can be priced.
    assert_eq!(double.requests()[0].body["stream_options"]["include_usage"], true);
}

#[tokio::test]
async fn include_usage_is_honoured_in_streams() {
    let (_double, daemon) = start();
    let mut request = chat("echo", true);
    request["stream_options"] = json!({ "include_usage": true });
    let text = post_chat(&daemon, request).await.text().await.unwrap();
    let events = sse_events(&text);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let usage_chunk: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["prompt_tokens"], 2);
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 3);
}

#[tokio::test]
async fn upstream_429_passes_through_with_retry_after() {
    let (_double, daemon) = start();
    let response = post_chat(&daemon, chat("rate-limited", false)).await;
    assert_eq!(response.headers()["retry-after"], "7");
    assert_eq!(response.headers()["x-switchyard-backend"], "rate-limited");
    let body = assert_error(response, 429, "rate_limit_exceeded").await;
    assert_eq!(body["error"]["type"], "requests");
}

#[tokio::test]
async fn upstream_500_passes_through() {
    let (_double, daemon) = start();
    let response = post_chat(&daemon, chat("server-error", true)).await;
    let body = assert_error_code(response, 500, Value::Null).await.to_string();
    assert!(body.contains("Sorry about that"), "{body}");
}

#[tokio::test]
async fn a_non_json_upstream_error_is_wrapped_in_openai_format() {
    let (_double, daemon) = start();
    let response = post_chat(&daemon, chat("html-error", false)).await;
    let body = assert_error(response, 502, "upstream_error").await;
    assert!(body["error"]["message"].as_str().unwrap().contains("502 Bad Gateway"));
}

#[tokio::test]
async fn a_slow_first_byte_times_out_with_504() {
    let (_double, daemon) = start();
    let started = Instant::now();
    let response = post_chat(&daemon, chat("slow-first-byte", true)).await;
    assert!(
        started.elapsed() < Duration::from_millis(2900),
        "gave up at the 1 s first-byte timeout"
    );
    assert_error(response, 504, "upstream_timeout").await;
}

#[tokio::test]
async fn an_unreachable_upstream_is_502() {
    let (_double, daemon) = start();
    let body = assert_error(
        post_chat(&daemon, chat("unreachable", false)).await,
        502,
        "upstream_unreachable",
    )
    .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("refused"),
        "{body}"
    );
}

#[tokio::test]
async fn a_stream_cut_mid_way_ends_with_an_error_event_not_a_silent_truncation() {
    let (_double, daemon) = start();
    let response = post_chat(&daemon, chat("cut-stream", true)).await;
    assert_eq!(
        response.status(),
        200,
        "headers were already sent when the cut happened"
    );
    let text = response.text().await.unwrap();
    let events = sse_events(&text);
    assert!(!events.contains(&"[DONE]".to_string()), "{text}");
    assert_eq!(events.len(), 4, "role chunk, two content chunks, error: {text}");
    let error: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(error["error"]["code"], "upstream_stream_cut", "{error}");
}

#[tokio::test]
async fn a_completion_cut_mid_way_is_502() {
    let (_double, daemon) = start();
    assert_error(
        post_chat(&daemon, chat("cut-stream", false)).await,
        502,
        "upstream_unreachable",
    )
    .await;
    // Logged as an error, not as an answer.
    let log = daemon.log();
    let finished = log
        .lines()
        .find(|l| l.contains("request finished"))
        .expect("a finished line");
    assert!(
        finished.contains("status=502") && finished.contains("outcome=\"error\""),
        "{finished}"
    );
}

#[tokio::test]
async fn a_client_that_disconnects_cancels_the_upstream_stream() {
    let (double, daemon) = start();
    let mut response = post_chat(&daemon, chat("slow-stream", true)).await;
    assert_eq!(response.status(), 200);
    let first = response.chunk().await.unwrap().expect("a first chunk");
    assert!(first.starts_with(b"data: "));
    drop(response);
    let deadline = Instant::now() + Duration::from_secs(5);
    while double.streams_abandoned() == 0 {
        assert!(
            Instant::now() < deadline,
            "upstream stream still running 5 s after the client left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = daemon.log();
    assert!(log.contains("client_disconnected"), "{log}");
}

#[tokio::test]
async fn request_ids_are_kept_forwarded_and_generated() {
    let (double, daemon) = start();
    let response = http_client()
        .post(daemon.url("/v1/chat/completions"))
        .header("x-request-id", "trace-abc-123")
        .json(&chat("echo", false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-abc-123");
    assert_eq!(double.requests()[0].request_id.as_deref(), Some("trace-abc-123"));

    let generated = post_chat(&daemon, chat("echo", false)).await;
    let id = generated.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let bad = http_client()
        .post(daemon.url("/v1/chat/completions"))
        .header("x-request-id", "x".repeat(500))
        .json(&chat("echo", false))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.headers()["x-request-id"].len(), 36, "an oversized id is replaced");
}

#[tokio::test]
async fn bad_inputs_get_their_documented_status_and_error() {
    let (double, daemon) = start();
    let raw = |body: Vec<u8>| {
        http_client()
            .post(daemon.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let body = assert_error(
        raw(b"{\"model\": \"echo\", \"messages\": [".to_vec()).await.unwrap(),
        400,
        "invalid_json",
    )
    .await;
    assert!(
        body["error"]["message"].as_str().unwrap().contains("line 1 column"),
        "{body}"
    );
    assert_error(raw(Vec::new()).await.unwrap(), 400, "invalid_json").await;
    assert_error(
        raw(b"{\"model\":\"echo\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}".to_vec())
            .await
            .unwrap(),
        400,
        "invalid_json",
    )
    .await;
    assert_error(raw(b"[1,2]".to_vec()).await.unwrap(), 400, "invalid_request").await;

    let wrong_type = assert_error(
        post_chat(&daemon, json!({"model": "echo", "messages": "hi"})).await,
        400,
        "invalid_request",
    )
    .await;
    assert_eq!(wrong_type["error"]["param"], "messages");
    let missing = assert_error(
        post_chat(&daemon, json!({"model": "echo"})).await,
        400,
        "invalid_request",
    )
    .await;
    assert_eq!(missing["error"]["param"], "messages");
    let stream_type = assert_error(
        post_chat(
            &daemon,
            json!({"model": "echo", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}),
        )
        .await,
        400,
        "invalid_request",
    )
    .await;
    assert_eq!(stream_type["error"]["param"], "stream");

    let mut huge = chat("echo", false);
    huge["max_tokens"] = json!(1_000_000_000_000u64);
    assert_eq!(
        assert_error(post_chat(&daemon, huge.clone()).await, 400, "invalid_request").await["error"]["param"],
        "max_tokens"
    );
    huge["max_tokens"] = json!(5000); // over this backend's max_output_tokens of 4096
    let over = assert_error(post_chat(&daemon, huge).await, 400, "invalid_request").await;
    assert!(over["error"]["message"].as_str().unwrap().contains("4096"), "{over}");

    let unknown = assert_error(
        post_chat(&daemon, chat("gpt-17-ultra", false)).await,
        404,
        "model_not_found",
    )
    .await;
    assert_eq!(unknown["error"]["param"], "model");

    let mut big = chat("echo", false);
    big["messages"][0]["content"] = json!("a".repeat(5 * 1024 * 1024));
    assert_error(post_chat(&daemon, big).await, 413, "request_too_large").await;

    // Within the byte limit, but too many values to parse (each would cost ~70
    // bytes of memory for its two bytes of body): refused while parsing.
    let mut many_values = chat("echo", false);
    many_values["logit_bias_typo"] = json!(vec![0; 200_000]);
    let refused = assert_error(post_chat(&daemon, many_values).await, 413, "request_too_complex").await;
    assert!(
        refused["error"]["message"].as_str().unwrap().contains("131072"),
        "{refused}"
    );
    let mut many_messages = chat("echo", false);
    many_messages["messages"] = json!(vec![json!({"role": "user", "content": "hi"}); 50_000]);
    assert_error(post_chat(&daemon, many_messages).await, 413, "request_too_complex").await;

    assert_error(
        http_client()
            .get(daemon.url("/v1/chat/completions"))
            .send()
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;
    assert_error(
        http_client().get(daemon.url("/v2/nothing")).send().await.unwrap(),
        404,
        "not_found",
    )
    .await;

    assert!(double.requests().is_empty(), "no bad request reached the upstream");
    // The daemon is still serving after all of that.
    assert_eq!(post_chat(&daemon, chat("echo", false)).await.status(), 200);
}

/// The heap is trimmed after a request with a large body, and only then (a
/// trim after every request cost ~70 us each).
#[tokio::test]
async fn only_a_large_body_trims_the_heap() {
    let (_double, daemon) = start();
    let trims = || async { sample(&daemon.metrics().await, "switchyard_heap_trims_total") };
    for _ in 0..20 {
        assert_eq!(post_chat(&daemon, chat("echo", false)).await.status(), 200);
    }
    assert_eq!(trims().await, 0.0, "small requests do not trim");
    let mut large = chat("echo", false);
    large["messages"][0]["content"] = json!("word ".repeat(30_000));
    assert_eq!(post_chat(&daemon, large).await.status(), 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while trims().await < 1.0 {
        assert!(std::time::Instant::now() < deadline, "no trim after a 150 KB body");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_is_413_too() {
    let (_double, daemon) = start();
    let chunk = bytes::Bytes::from(vec![b' '; 1024 * 1024]);
    let chunks = futures_util::stream::iter((0..5).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let response = http_client()
        .post(daemon.url("/v1/chat/completions"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_error(response, 413, "request_too_large").await;
}

#[tokio::test]
async fn client_keys_are_enforced_when_configured() {
    let double = CloudDouble::start();
    let policy = policy_for(
        &double.base_url(),
        "auth:\n  keys:\n    - name: team-a\n      key_env: TEAM_A_KEY\n",
    );
    let daemon = Daemon::start(
        &policy,
        &[("DOUBLE_API_KEY", DOUBLE_API_KEY), ("TEAM_A_KEY", "sk-team-a-secret")],
    );
    assert_error(post_chat(&daemon, chat("echo", false)).await, 401, "invalid_api_key").await;
    let wrong = http_client()
        .post(daemon.url("/v1/chat/completions"))
        .bearer_auth("sk-guess")
        .json(&chat("echo", false))
        .send()
        .await
        .unwrap();
    assert_error(wrong, 401, "invalid_api_key").await;
    let models = http_client().get(daemon.url("/v1/models")).send().await.unwrap();
    assert_error(models, 401, "invalid_api_key").await;
    let right = http_client()
        .post(daemon.url("/v1/chat/completions"))
        .bearer_auth("sk-team-a-secret")
        .json(&chat("echo", false))
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    // The client's key is not forwarded upstream: the proxy's own key is.
    assert_eq!(
        double.requests()[0].authorization.as_deref(),
        Some(format!("Bearer {DOUBLE_API_KEY}").as_str())
    );
    assert_eq!(
        http_client().get(daemon.url("/healthz")).send().await.unwrap().status(),
        200,
        "probes need no key"
    );
    assert!(!daemon.log().contains("sk-team-a-secret"));
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive_and_may_be_followed_by_several_spaces() {
    let double = CloudDouble::start();
    let policy = policy_for(
        &double.base_url(),
        "auth:\n  keys:\n    - name: team-a\n      key_env: TEAM_A_KEY\n",
    );
    let daemon = Daemon::start(
        &policy,
        &[("DOUBLE_API_KEY", DOUBLE_API_KEY), ("TEAM_A_KEY", "sk-team-a-secret")],
    );
    let send = |authorization: &'static str| {
        http_client()
            .post(daemon.url("/v1/chat/completions"))
            .header("authorization", authorization)
            .json(&chat("echo", false))
            .send()
    };
    // RFC 7235: the scheme is case-insensitive, and 1*SP separates it from the key.
    for authorization in [
        "bearer sk-team-a-secret",
        "BEARER sk-team-a-secret",
        "Bearer   sk-team-a-secret",
    ] {
        assert_eq!(send(authorization).await.unwrap().status(), 200, "{authorization:?}");
    }
    // Nothing looser: no tab, no missing space, no other scheme.
    for authorization in [
        "Bearer\tsk-team-a-secret",
        "Bearersk-team-a-secret",
        "Basic sk-team-a-secret",
    ] {
        assert_error(send(authorization).await.unwrap(), 401, "invalid_api_key").await;
    }
}

/// `policy_for` with `setting` added to its `server:` section.
fn with_server_setting(policy: &str, setting: &str) -> String {
    let changed = policy.replacen("server:\n", &format!("server:\n  {setting}\n"), 1);
    assert_ne!(changed, policy, "no server section");
    changed
}

#[tokio::test]
async fn listening_beyond_loopback_without_client_keys_is_refused_unless_the_policy_allows_it() {
    let double = CloudDouble::start();
    let env = [("DOUBLE_API_KEY", DOUBLE_API_KEY)];
    let open = policy_for(&double.base_url(), "");

    // The command line's address is held to the same rule as the file's.
    let (code, output) = daemon::refused_start(daemon::scratch_dir("open"), "0.0.0.0:0", &open, &env);
    assert_ne!(code, Some(0), "{output}");
    assert!(
        output.contains("--listen 0.0.0.0:0 is not a loopback address") && output.contains("allow_unauthenticated"),
        "{output}"
    );
    // `policy check` says it of the file, where `server.listen` is.
    let (ok, text) = daemon::policy_check(&with_server_setting(&open, "listen: 0.0.0.0:8080"));
    assert!(!ok, "{text}");
    assert!(
        text.starts_with("FILE:2:11: server.listen 0.0.0.0:8080 is not a loopback address"),
        "{text}"
    );

    // Said explicitly, it starts, and the warning stays.
    let allowed = with_server_setting(&open, "allow_unauthenticated: true");
    assert!(daemon::policy_check(&allowed).0);
    let daemon = Daemon::start_listening(daemon::scratch_dir("open"), "0.0.0.0:0", &allowed, &env);
    assert_eq!(post_chat(&daemon, chat("echo", false)).await.status(), 200);
    assert!(
        daemon.log().contains("no client keys are configured"),
        "{}",
        daemon.log()
    );
}

#[tokio::test]
async fn a_reload_that_would_open_a_non_loopback_address_to_anyone_is_rejected() {
    let double = CloudDouble::start();
    let keyed = policy_for(
        &double.base_url(),
        "auth:\n  keys:\n    - name: team-a\n      key_env: TEAM_A_KEY\n",
    );
    let daemon = Daemon::start_listening(
        daemon::scratch_dir("reload-open"),
        "0.0.0.0:0",
        &keyed,
        &[("DOUBLE_API_KEY", DOUBLE_API_KEY), ("TEAM_A_KEY", "sk-team-a-secret")],
    );
    std::fs::write(daemon.policy_path(), policy_for(&double.base_url(), "")).unwrap();
    daemon.until_logged("policy reload rejected").await;
    assert!(
        daemon.log().contains("--listen 0.0.0.0:0 is not a loopback address"),
        "{}",
        daemon.log()
    );
    // The policy in force, with its key, keeps serving.
    assert_error(post_chat(&daemon, chat("echo", false)).await, 401, "invalid_api_key").await;
}

#[tokio::test]
async fn no_secret_appears_in_logs_or_responses() {
    let (_double, daemon) = start();
    let mut seen = String::new();
    for model in [
        "echo",
        "rate-limited",
        "server-error",
        "html-error",
        "unreachable",
        "cut-stream",
    ] {
        for stream in [false, true] {
            seen.push_str(&post_chat(&daemon, chat(model, stream)).await.text().await.unwrap());
        }
    }
    assert!(!seen.contains(DOUBLE_API_KEY));
    let log = daemon.log();
    assert!(log.contains("request finished"), "the log is being written: {log}");
    assert!(!log.contains(DOUBLE_API_KEY), "upstream key leaked into the log");
    assert!(
        !log.contains('\u{1b}'),
        "a log written to a file, not a terminal, carries no colour codes: {log}"
    );
}

#[tokio::test]
async fn models_health_and_readiness_describe_the_backends() {
    let (_double, daemon) = start();
    let models: Value = daemon.get_json("/v1/models").await;
    assert_eq!(models["object"], "list");
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    for id in ["auto", "echo", "rate-limited", "unreachable", "nothing"] {
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
    }
    let one: Value = daemon.get_json("/v1/models/auto").await;
    assert_eq!(
        one["backend"], "switchyard",
        "the router picks auto's backend per request"
    );
    assert_error(
        http_client().get(daemon.url("/v1/models/nope")).send().await.unwrap(),
        404,
        "model_not_found",
    )
    .await;
    assert_eq!(
        http_client().get(daemon.url("/healthz")).send().await.unwrap().status(),
        200
    );
    let ready = http_client().get(daemon.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn a_backend_without_its_key_is_unready_and_says_why() {
    let double = CloudDouble::start();
    let daemon = Daemon::start(&policy_for(&double.base_url(), ""), &[]);
    let ready: Value = daemon.get_json("/readyz").await;
    let echo = ready["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "echo")
        .unwrap()
        .clone();
    assert_eq!(echo["ready"], false);
    assert!(echo["reason"].as_str().unwrap().contains("DOUBLE_API_KEY"));
    let body = assert_error(
        post_chat(&daemon, chat("echo", false)).await,
        503,
        "backend_unavailable",
    )
    .await;
    assert!(body["error"]["message"].as_str().unwrap().contains("DOUBLE_API_KEY"));
    assert!(double.requests().is_empty());
}

#[tokio::test]
async fn a_stream_still_running_at_the_drain_deadline_ends_with_an_error_event_and_is_recorded() {
    let double = CloudDouble::start();
    let policy = policy_for(&double.base_url(), "").replace("shutdown_drain_ms: 5000", "shutdown_drain_ms: 300");
    let mut daemon = Daemon::start(&policy, &[("DOUBLE_API_KEY", DOUBLE_API_KEY)]);
    // slow-stream sends a chunk every 100 ms for a minute: far past the drain.
    let mut response = http_client()
        .post(daemon.url("/v1/chat/completions"))
        .header("x-request-id", "cut-at-shutdown")
        .json(&chat("slow-stream", true))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let first = response.chunk().await.unwrap().expect("a first chunk");
    let status = daemon.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status}");

    let mut text = String::from_utf8_lossy(&first).to_string();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => text.push_str(&String::from_utf8_lossy(&chunk)),
            Ok(None) => break,
            Err(err) => panic!("the stream was cut without its end ({err}):\n{text}"),
        }
    }
    let events = sse_events(&text);
    let (last, ticks) = events.split_last().unwrap();
    assert!(ticks.iter().all(|e| e.contains("tick")), "{text}");
    let error: Value = serde_json::from_str(last).unwrap();
    assert_eq!(error["error"]["code"], "server_shutting_down", "{text}");
    assert_eq!(error["error"]["type"], "server_error", "{text}");
    assert!(
        error["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{text}"
    );

    let log = daemon.log();
    let finished = log
        .lines()
        .find(|l| l.contains("request finished") && l.contains("cut-at-shutdown"))
        .unwrap_or_else(|| panic!("the cut stream was not recorded:\n{log}"));
    assert!(finished.contains("status=503"), "{finished}");
}

#[tokio::test]
async fn sigterm_stops_the_daemon_cleanly() {
    let (_double, mut daemon) = start();
    assert_eq!(post_chat(&daemon, chat("echo", false)).await.status(), 200);
    let status = daemon.terminate(Duration::from_secs(10));
    assert!(status.success(), "{status}");
}
