//! The routing brain through the real daemon: tiers, aliases, overrides, privacy
//! rules, eligibility, budgets (pacing, exhaustion, surviving a restart), sticky
//! sessions and hot reload. The local tier is the embedded SmolLM2 model; the
//! remote tier is the loopback cloud double.
//!
//! Thresholds at the ends of [0, 1] pin the tier whatever a prompt scores, so
//! each test exercises one rule and does not depend on the learned model.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard_e2e::routed::send;
use switchyard_e2e::{
    CloudDouble, DOUBLE_API_KEY, Daemon, daemon, http_client, local_and_echo_policy, sample, without_reasoning,
};

const ALL_LOCAL: &str = "{ local_below: 1.0, remote_above: 1.0, ambiguous: local-reasoning }";
const ALL_REMOTE: &str = "{ local_below: 0.0, remote_above: 0.0, ambiguous: remote }";
const ALL_AMBIGUOUS: &str = "{ local_below: 0.0, remote_above: 1.0, ambiguous: local-reasoning }";

/// A policy with the local model and the double's `echo` backend, `auto` on
/// `thresholds`, and `extra` appended (privacy, budgets, auth, ...). The
/// ladder's pre-commit window holds a whole local answer (8 tokens, 16 more of
/// reasoning), streamed or not, so a stream is judged on the same tokens
/// whatever the machine's load, not on as many as 1.5 s allowed.
fn policy(double: &CloudDouble, thresholds: &str, extra: &str) -> String {
    local_and_echo_policy(
        &double.base_url(),
        &[
            "context_length: 1024",
            "queue_capacity: 8",
            "default_max_tokens: 8",
            "reasoning_max_tokens: 16",
        ],
        &[
            &format!("thresholds: {thresholds}"),
            "aliases:",
            &format!("  auto-quality: {ALL_REMOTE}"),
            &format!("  auto-fast: {ALL_LOCAL}"),
        ],
        &format!("ladder: {{ precommit_tokens: 64, precommit_ms: 60000 }}\n{extra}"),
    )
}

fn start(policy: &str) -> Daemon {
    Daemon::start(policy, &[("DOUBLE_API_KEY", DOUBLE_API_KEY)])
}

fn ask(content: &str) -> Value {
    json!({ "model": "auto", "max_tokens": 4, "temperature": 0, "messages": [{ "role": "user", "content": content }] })
}

#[tokio::test]
async fn thresholds_pick_the_tier_and_every_answer_says_why() {
    let double = CloudDouble::start();
    let local = start(&policy(&double, ALL_LOCAL, ""));
    let r = send(&local, &ask("What is the capital of France?"), &[]).await;
    assert_eq!(
        (r.status, r.route.as_str(), r.backend.as_str()),
        (200, "local", "smollm2"),
        "{}",
        r.body
    );
    assert_eq!(r.reason, "score-low");
    let score = r.score.expect("x-switchyard-score");
    assert!((0.0..=1.0).contains(&score), "{score}");
    assert_eq!(r.cost, Some(0.0));
    assert_eq!(r.body["model"], "smollm2");

    let remote = start(&policy(&double, ALL_REMOTE, ""));
    let r = send(&remote, &ask("What is the capital of France?"), &[]).await;
    assert_eq!(
        (r.status, r.route.as_str(), r.backend.as_str()),
        (200, "remote", "echo"),
        "{}",
        r.body
    );
    assert_eq!(r.reason, "score-high");
    let usage = &r.body["usage"];
    let expected =
        (usage["prompt_tokens"].as_f64().unwrap() * 2.5 + usage["completion_tokens"].as_f64().unwrap() * 10.0) / 1e6;
    assert!((r.cost.unwrap() - expected).abs() < 1e-9, "{:?} vs {expected}", r.cost);

    let ambiguous = start(&policy(&double, ALL_AMBIGUOUS, ""));
    let r = send(&ambiguous, &ask("Is 91 a prime number?"), &[]).await;
    assert_eq!(
        (r.status, r.route.as_str(), r.backend.as_str()),
        (200, "local-reasoning", "smollm2"),
        "{}",
        r.body
    );
    assert_eq!(r.reason, "score-ambiguous");
    // The reasoning comes back apart from the answer, and is counted.
    let message = &r.body["choices"][0]["message"];
    let reasoning = message["reasoning_content"].as_str().expect("reasoning_content");
    assert!(
        !reasoning.is_empty() && !message["content"].as_str().unwrap().contains(reasoning),
        "{message}"
    );
    let usage = &r.body["usage"];
    let reasoning_tokens = usage["completion_tokens_details"]["reasoning_tokens"].as_u64().unwrap();
    assert!(
        reasoning_tokens > 0 && reasoning_tokens < usage["completion_tokens"].as_u64().unwrap(),
        "{usage}"
    );
    let plain = send(&local, &ask("Is 91 a prime number?"), &[]).await;
    assert!(plain.body["choices"][0]["message"].get("reasoning_content").is_none());
    assert!(
        usage["prompt_tokens"].as_u64() > plain.body["usage"]["prompt_tokens"].as_u64(),
        "two passes read more prompt: {usage} vs {}",
        plain.body["usage"]
    );

    // Streamed, the reasoning arrives as reasoning_content deltas before the content.
    let mut streamed = ask("Is 91 a prime number?");
    streamed["stream"] = json!(true);
    let text = http_client()
        .post(ambiguous.url("/v1/chat/completions"))
        .json(&streamed)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let deltas: Vec<Value> = text
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .filter_map(|data| serde_json::from_str::<Value>(data).ok())
        .filter_map(|chunk| chunk["choices"][0].get("delta").cloned())
        .collect();
    let position = |field: &str| {
        deltas
            .iter()
            .position(|d| d[field].as_str().is_some_and(|t| !t.is_empty()))
    };
    let first_reasoning = position("reasoning_content").expect("reasoning deltas");
    assert!(position("content").is_none_or(|c| first_reasoning < c), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
}

#[tokio::test]
async fn a_local_model_that_does_not_reason_answers_that_tier_plainly() {
    let double = CloudDouble::start();
    let daemon = start(&without_reasoning(&policy(&double, ALL_AMBIGUOUS, "")));
    let question = ask("Is 91 a prime number?");
    let r = send(&daemon, &question, &[]).await;
    assert_eq!(
        (r.status, r.route.as_str(), r.reason.as_str()),
        (200, "local", "score-ambiguous"),
        "{}",
        r.body
    );
    let plain = r.body["choices"][0]["message"].clone();
    assert!(plain.get("reasoning_content").is_none(), "{plain}");
    assert_eq!(r.body["usage"]["completion_tokens_details"]["reasoning_tokens"], 0);
    // Asked for by header: still the plain answer.
    let r = send(&daemon, &question, &[("x-switchyard-tier", "local-reasoning")]).await;
    assert_eq!((r.route.as_str(), r.reason.as_str()), ("local", "tier-override"));
    assert_eq!(r.body["choices"][0]["message"], plain);
    // A client's reasoning_effort on the model's own name is ignored too.
    let mut pinned = question.clone();
    pinned["model"] = json!("smollm2");
    pinned["reasoning_effort"] = json!("high");
    let r = send(&daemon, &pinned, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["choices"][0]["message"], plain);
    assert_eq!(double.calls("echo"), 0);
}

#[tokio::test]
async fn aliases_choose_a_profile_and_backend_names_bypass_routing() {
    let double = CloudDouble::start();
    let daemon = start(&policy(&double, ALL_AMBIGUOUS, ""));
    let mut body = ask("hello");
    body["model"] = json!("auto-quality");
    assert_eq!(send(&daemon, &body, &[]).await.route, "remote");
    body["model"] = json!("auto-fast");
    assert_eq!(send(&daemon, &body, &[]).await.route, "local");
    body["model"] = json!("echo");
    let r = send(&daemon, &body, &[]).await;
    assert_eq!(
        (r.route.as_str(), r.reason.as_str(), r.score),
        ("remote", "model-pinned", None)
    );
    body["model"] = json!("auto-cheap");
    let r = send(&daemon, &body, &[]).await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );

    let models: Value = daemon.get_json("/v1/models").await;
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    for id in ["auto", "auto-fast", "auto-quality", "echo", "smollm2"] {
        assert!(ids.contains(&id), "{id} in {ids:?}");
    }
}

#[tokio::test]
async fn headers_override_the_tier_and_cap_the_cost() {
    let double = CloudDouble::start();
    let daemon = start(&policy(&double, ALL_LOCAL, ""));
    let r = send(&daemon, &ask("hello"), &[("x-switchyard-tier", "remote")]).await;
    assert_eq!((r.route.as_str(), r.reason.as_str()), ("remote", "tier-override"));

    let remote = start(&policy(&double, ALL_REMOTE, ""));
    let r = send(&remote, &ask("hello"), &[("x-switchyard-max-cost-usd", "0")]).await;
    assert_eq!(
        (r.status, r.route.as_str(), r.reason.as_str()),
        (200, "local-reasoning", "max-cost")
    );
    let r = send(&remote, &ask("hello"), &[("x-switchyard-max-cost-usd", "1.0")]).await;
    assert_eq!(r.route, "remote");
    // What only remote can serve, over the cap: a clear 402.
    let mut tools = ask("what's the weather?");
    tools["tools"] = json!([{ "type": "function", "function": { "name": "weather", "parameters": {} } }]);
    let r = send(&remote, &tools, &[("x-switchyard-max-cost-usd", "0")]).await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str(), r.reason.as_str()),
        (402, Some("max_cost_exceeded"), "max-cost"),
        "{}",
        r.body
    );
    // Naming the remote backend does not lift the client's own cap.
    let mut pinned = ask("hello");
    pinned["model"] = json!("echo");
    let r = send(&remote, &pinned, &[("x-switchyard-max-cost-usd", "0")]).await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (402, Some("max_cost_exceeded")),
        "{}",
        r.body
    );
    let r = send(&remote, &pinned, &[("x-switchyard-max-cost-usd", "1.0")]).await;
    assert_eq!((r.status, r.route.as_str()), (200, "remote"), "{}", r.body);

    for (name, value) in [
        ("x-switchyard-tier", "cloud"),
        ("x-switchyard-max-cost-usd", "-1"),
        ("x-switchyard-max-cost-usd", "cheap"),
    ] {
        let r = send(&daemon, &ask("hello"), &[(name, value)]).await;
        assert_eq!(
            (r.status, r.body["error"]["param"].as_str()),
            (400, Some(name)),
            "{}",
            r.body
        );
    }
}

#[tokio::test]
async fn a_privacy_rule_keeps_a_card_number_local_even_when_the_score_says_remote() {
    let double = CloudDouble::start();
    let privacy = "privacy:\n  detectors: [card, email]\n  patterns:\n    - name: codename\n      regex: '(?i)project bluebird'\n";
    let daemon = start(&policy(&double, ALL_REMOTE, privacy));
    for prompt in [
        "Charge my card 4111 1111 1111 1111 for the order",
        "Card 4111 1111 1111 1111 12/26 CVV 123",
        "card number 4111.1111.1111.1111",
        "Forward this to jane.doe@example.com please",
        "What is the status of Project Bluebird?",
    ] {
        let r = send(&daemon, &ask(prompt), &[("x-switchyard-tier", "remote")]).await;
        assert_eq!(
            (r.status, r.route.as_str(), r.reason.as_str(), r.backend.as_str()),
            (200, "local-reasoning", "privacy-rule", "smollm2"),
            "{prompt}: {}",
            r.body
        );
    }
    // A look-alike that fails the Luhn check is not a card.
    let r = send(&daemon, &ask("Order 4111 1111 1111 1112 shipped"), &[]).await;
    assert_eq!(r.route, "remote");
    // Private and only servable remotely: refused, never sent.
    let mut tools = ask("Charge 4111 1111 1111 1111");
    tools["tools"] = json!([{ "type": "function", "function": { "name": "charge", "parameters": {} } }]);
    let r = send(&daemon, &tools, &[]).await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str(), r.reason.as_str()),
        (400, Some("privacy_local_only"), "privacy-rule"),
        "{}",
        r.body
    );
    // Naming the remote backend does not get around the rule.
    let mut pinned = ask("Charge 4111 1111 1111 1111");
    pinned["model"] = json!("echo");
    let r = send(&daemon, &pinned, &[]).await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (400, Some("privacy_local_only")),
        "{}",
        r.body
    );
    // Whatever part of the request carries it: a tool call's arguments go
    // upstream with the conversation.
    let mut in_a_tool_call = ask("Did the payment go through?");
    in_a_tool_call["model"] = json!("echo");
    in_a_tool_call["messages"] = json!([
        { "role": "user", "content": "Pay the invoice" },
        { "role": "assistant", "content": null, "tool_calls": [{ "id": "call_1", "type": "function",
            "function": { "name": "pay", "arguments": "{\"card\": \"4111 1111 1111 1111\"}" } }] },
        { "role": "tool", "tool_call_id": "call_1", "content": "paid" },
        { "role": "user", "content": "Did it go through?" },
    ]);
    let r = send(&daemon, &in_a_tool_call, &[]).await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (400, Some("privacy_local_only")),
        "{}",
        r.body
    );
    assert!(!daemon.log().contains("4111 1111"), "the matched text is never logged");
    assert!(daemon.log().contains("codename"), "the rule's name is logged");
}

#[tokio::test]
async fn what_the_local_model_cannot_serve_goes_remote() {
    let double = CloudDouble::start();
    let daemon = start(&policy(&double, ALL_LOCAL, ""));
    let mut tools = ask("what's the weather?");
    tools["tools"] = json!([{ "type": "function", "function": { "name": "weather", "parameters": {} } }]);
    let mut json_mode = ask("list three colours as JSON");
    json_mode["response_format"] = json!({ "type": "json_schema",
        "json_schema": { "name": "colours", "schema": { "type": "array", "uniqueItems": true } } });
    let mut image = ask("");
    image["messages"][0]["content"] = json!([{ "type": "text", "text": "what is this?" }, { "type": "image_url", "image_url": { "url": "data:image/png;base64,AAAA" } }]);
    let long = ask(&"lorem ipsum dolor sit amet ".repeat(400));
    // Fields that ask for nothing the local model lacks keep it eligible.
    let mut plain = ask("hello");
    plain["tools"] = json!([]);
    plain["response_format"] = json!({ "type": "text" });
    let r = send(&daemon, &plain, &[]).await;
    assert_eq!((r.status, r.route.as_str()), (200, "local"), "{}", r.body);
    // JSON the local model's grammar holds stays local, and parses.
    let mut colours = ask("list three colours as JSON");
    colours["response_format"] = json!({ "type": "json_schema", "json_schema": { "name": "colours", "strict": true,
        "schema": { "type": "object", "properties": { "colours": { "type": "array", "items": { "type": "string", "maxLength": 12 }, "maxItems": 3 } },
                    "required": ["colours"], "additionalProperties": false } } });
    colours["max_tokens"] = json!(120);
    let r = send(&daemon, &colours, &[]).await;
    assert_eq!((r.status, r.route.as_str()), (200, "local"), "{}", r.body);
    let content = r.body["choices"][0]["message"]["content"].as_str().unwrap();
    let answer: Value = serde_json::from_str(content).unwrap_or_else(|err| panic!("{content:?}: {err}"));
    assert!(answer["colours"].as_array().is_some_and(|c| c.len() <= 3), "{answer}");
    for (body, reason) in [
        (tools, "ineligible-tools"),
        (json_mode, "ineligible-json"),
        (image, "ineligible-images"),
        (long, "ineligible-context"),
    ] {
        let r = send(&daemon, &body, &[]).await;
        assert_eq!(
            (r.status, r.route.as_str(), r.reason.as_str()),
            (200, "remote", reason),
            "{}",
            r.body
        );
    }
}

/// Today's spend in the budget file, and the file itself.
fn spend_file(daemon: &Daemon) -> (std::path::PathBuf, Value) {
    let path = daemon.dir().join("spend.json");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(text) = std::fs::read_to_string(&path) {
            return (path, serde_json::from_str(&text).unwrap());
        }
        assert!(Instant::now() < deadline, "the budget file was not written");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test]
async fn budgets_pace_remote_spend_then_stop_it_and_survive_a_restart() {
    let double = CloudDouble::start();
    let budgets = "budgets:\n  state_file: spend.json\n  pacing_from: 0.5\n  global: { daily_usd: 0.001 }\n";
    let text = policy(&double, ALL_REMOTE, budgets);
    let mut daemon = start(&text);
    let r = send(&daemon, &ask("hello"), &[]).await;
    assert_eq!((r.route.as_str(), r.reason.as_str()), ("remote", "score-high"));
    let (path, mut state) = spend_file(&daemon);
    assert!(
        (state["global"]["daily_usd"].as_f64().unwrap() - r.cost.unwrap()).abs() < 1e-12,
        "{state}"
    );

    // Restart with 90% of the day's budget spent: pacing raises the bar to go
    // remote above what this prompt scores.
    daemon.terminate(Duration::from_secs(10));
    state["global"]["daily_usd"] = json!(0.0009);
    // A day's spend is part of its month's (a file saying otherwise is refused).
    state["global"]["monthly_usd"] = json!(0.0009);
    std::fs::write(&path, state.to_string()).unwrap();
    let mut daemon = Daemon::start_in(daemon.dir().to_path_buf(), &text, &[("DOUBLE_API_KEY", DOUBLE_API_KEY)]);
    let r = send(&daemon, &ask("hello"), &[]).await;
    assert_eq!(
        (r.status, r.route.as_str(), r.reason.as_str()),
        (200, "local-reasoning", "budget-paced"),
        "{}",
        r.body
    );
    // An override still goes remote while its worst case fits in what is left.
    let r = send(
        &daemon,
        &ask("hello there, how are you?"),
        &[("x-switchyard-tier", "remote")],
    )
    .await;
    assert_eq!(r.route, "remote");

    // Restart with the whole day's budget spent.
    daemon.terminate(Duration::from_secs(10));
    let (path, mut state) = spend_file(&daemon);
    assert!(state["global"]["daily_usd"].as_f64().unwrap() > 0.0009, "{state}");
    state["global"]["daily_usd"] = json!(0.001);
    state["global"]["monthly_usd"] = json!(0.001);
    std::fs::write(&path, state.to_string()).unwrap();
    let mut daemon = Daemon::start_in(daemon.dir().to_path_buf(), &text, &[("DOUBLE_API_KEY", DOUBLE_API_KEY)]);
    // Spent: remote is off, and what only remote could serve is refused.
    let r = send(&daemon, &ask("hello"), &[("x-switchyard-tier", "remote")]).await;
    assert_eq!(
        (r.route.as_str(), r.reason.as_str()),
        ("local-reasoning", "budget-exhausted")
    );
    let mut tools = ask("what's the weather?");
    tools["tools"] = json!([{ "type": "function", "function": { "name": "weather", "parameters": {} } }]);
    let r = send(&daemon, &tools, &[]).await;
    assert_eq!(
        (
            r.status,
            r.body["error"]["code"].as_str(),
            r.reason.as_str(),
            r.route.as_str()
        ),
        (402, Some("budget_exhausted"), "budget-exhausted", ""),
        "{}",
        r.body
    );

    // And it stays spent across a restart.
    daemon.terminate(Duration::from_secs(10));
    let daemon = Daemon::start_in(daemon.dir().to_path_buf(), &text, &[("DOUBLE_API_KEY", DOUBLE_API_KEY)]);
    let r = send(&daemon, &tools, &[]).await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (402, Some("budget_exhausted")),
        "{}",
        r.body
    );
}

#[test]
fn a_budget_file_with_an_impossible_spend_stops_the_start_naming_the_file_and_the_entry() {
    let double = CloudDouble::start();
    let policy = switchyard_e2e::policy_for(
        &double.base_url(),
        "budgets:\n  state_file: spend.json\n  global: { daily_usd: 10 }\n",
    );
    for (spend, entry) in [
        (r#"{"daily_usd": -4, "monthly_usd": 1}"#, "global.daily_usd is -4"),
        (r#"{"daily_usd": 2, "monthly_usd": 1}"#, "global.daily_usd is 2 but"),
    ] {
        let dir = daemon::scratch_dir("corrupt-budget");
        let file = dir.join("spend.json");
        let state = format!(r#"{{"day": "2026-11-24", "month": "2026-11", "global": {spend}, "keys": {{}}}}"#);
        std::fs::write(&file, state).unwrap();
        let (code, output) = daemon::refused_start(dir, "127.0.0.1:0", &policy, &[("DOUBLE_API_KEY", DOUBLE_API_KEY)]);
        assert_ne!(code, Some(0), "{output}");
        assert!(
            output.contains(&format!("budget state file {} is corrupt", file.display())) && output.contains(entry),
            "{output}"
        );
    }
}

#[test]
fn a_second_daemon_on_the_same_budget_file_is_refused_until_the_first_is_gone() {
    let double = CloudDouble::start();
    let shared = daemon::scratch_dir("shared-budget").join("spend.json");
    let policy = switchyard_e2e::policy_for(
        &double.base_url(),
        &format!(
            "budgets:\n  state_file: {}\n  global: {{ daily_usd: 0.4 }}\n",
            shared.display()
        ),
    );
    let env = [("DOUBLE_API_KEY", DOUBLE_API_KEY)];
    let mut first = Daemon::start_in(daemon::scratch_dir("first"), &policy, &env);
    let (code, output) = daemon::refused_start(daemon::scratch_dir("second"), "127.0.0.1:0", &policy, &env);
    assert_ne!(code, Some(0), "{output}");
    assert!(
        output.contains(&format!(
            "budget state file {} is kept by another running Switchyard (pid {})",
            shared.display(),
            first.pid()
        )) && output.contains("spending the budget twice")
            && output.contains("state.backend: redis"),
        "{output}"
    );
    assert!(!output.contains("does not have yet"), "{output}");
    // The lock goes with its process, however it ends.
    first.kill();
    let _third = Daemon::start_in(daemon::scratch_dir("third"), &policy, &env);
}

#[tokio::test]
async fn a_deleted_policy_file_is_logged_the_policy_in_force_stays_and_its_return_is_reloaded() {
    let double = CloudDouble::start();
    let text = switchyard_e2e::policy_for(&double.base_url(), "");
    let daemon = start(&text);
    std::fs::remove_file(daemon.policy_path()).unwrap();
    daemon.until_logged("policy file cannot be read").await;
    assert!(daemon.log().contains("the policy in force stays"), "{}", daemon.log());
    let r = send(
        &daemon,
        &json!({ "model": "echo", "messages": [{ "role": "user", "content": "hi" }] }),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);

    std::fs::write(daemon.policy_path(), &text).unwrap();
    daemon.until_logged("policy file is back").await;
    daemon.until_logged("policy reloaded").await;
}

#[test]
fn an_unclosed_flow_mapping_is_reported_where_it_opens() {
    let double = CloudDouble::start();
    let good = policy(&double, ALL_LOCAL, "");
    let bad = good.replacen(
        "{ local_below: 1.0, remote_above: 1.0, ambiguous: local-reasoning }",
        "{ local_below: 1.0, remote_above: 1.0, ambiguous: local-reasoning",
        1,
    );
    assert_ne!(bad, good);
    let line = bad.lines().position(|l| l.starts_with("  thresholds: {")).unwrap() + 1;
    let (ok, text) = daemon::policy_check(&bad);
    assert!(!ok);
    assert!(text.starts_with(&format!("FILE:{line}:15: ")), "line {line}: {text}");
}

/// Requests admitted together cannot overrun the budget: each remote call holds
/// what it may cost from before it is sent until its real cost is in.
#[tokio::test]
async fn concurrent_remote_calls_cannot_overspend_the_budget() {
    let double = CloudDouble::start();
    // Each call really costs 2.25e-5 USD (1 prompt word, "Echo: hello") and
    // may cost up to its prompt plus max_tokens 4; the slow upstream keeps
    // every call in flight while the others are decided.
    let budget = 0.0002;
    let budgets =
        format!("budgets:\n  state_file: spend.json\n  pacing_from: 0.5\n  global: {{ daily_usd: {budget} }}\n");
    let text = policy(&double, ALL_REMOTE, &budgets).replace("model: echo", "model: slow-first-byte");
    let daemon = start(&text);
    // Tools: only remote can serve them, so what the budget cannot take is refused.
    let mut tools = ask("hello");
    tools["tools"] = json!([{ "type": "function", "function": { "name": "weather", "parameters": {} } }]);
    let answers = futures_util::future::join_all((0..24).map(|_| send(&daemon, &tools, &[]))).await;
    let remote: Vec<_> = answers.iter().filter(|r| r.status == 200).collect();
    let refused = answers
        .iter()
        .filter(|r| (r.status, r.body["error"]["code"].as_str()) == (402, Some("budget_exhausted")))
        .count();
    assert!(!remote.is_empty(), "some calls fit the budget");
    assert_eq!(remote.len() + refused, answers.len(), "every other call is refused");
    let spent: f64 = remote.iter().map(|r| r.cost.unwrap()).sum();
    assert!(spent <= budget, "spent {spent} of {budget} in {} calls", remote.len());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, state) = spend_file(&daemon);
        if (state["global"]["daily_usd"].as_f64().unwrap() - spent).abs() < 1e-12 {
            break;
        }
        assert!(Instant::now() < deadline, "the budget file holds {state}, not {spent}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // What was held is released once the calls are done.
    let metrics = daemon.metrics().await;
    assert!(metrics.contains("\nswitchyard_budget_reserved_usd "), "{metrics}");
    assert_eq!(sample(&metrics, "switchyard_budget_reserved_usd"), 0.0, "{metrics}");

    // A client that leaves mid-call does not make the call free: the
    // upstream bills it, so the budget is charged the call's worst case.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(1000))
        .build()
        .unwrap();
    let gone = impatient
        .post(daemon.url("/v1/chat/completions"))
        .json(&tools)
        .send()
        .await;
    assert!(gone.is_err(), "the client gave up first");
    daemon.until_logged("ended without a known cost").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, state) = spend_file(&daemon);
        if state["global"]["daily_usd"].as_f64().unwrap() > spent {
            break;
        }
        assert!(Instant::now() < deadline, "the abandoned call was not charged: {state}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_conversation_only_moves_up() {
    let double = CloudDouble::start();
    let daemon = start(&policy(&double, ALL_LOCAL, ""));
    let first = ask("Prove that there are infinitely many primes.");
    let r = send(&daemon, &first, &[("x-switchyard-tier", "remote")]).await;
    assert_eq!(r.route, "remote");
    let answer = r.body["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    let follow_up = json!({ "model": "auto", "max_tokens": 4, "messages": [
        { "role": "user", "content": "Prove that there are infinitely many primes." },
        { "role": "assistant", "content": answer },
        { "role": "user", "content": "thanks!" },
    ]});
    let r = send(&daemon, &follow_up, &[]).await;
    assert_eq!((r.route.as_str(), r.reason.as_str()), ("remote", "sticky-session"));
    // A different conversation is not affected.
    let r = send(&daemon, &ask("thanks!"), &[]).await;
    assert_eq!(r.route, "local");

    // Client-named sessions.
    let session = [("x-switchyard-session", "support-ticket-42")];
    let r = send(
        &daemon,
        &ask("hi"),
        &[session[0], ("x-switchyard-tier", "local-reasoning")],
    )
    .await;
    assert_eq!(r.route, "local-reasoning");
    let r = send(&daemon, &ask("something else entirely"), &session).await;
    assert_eq!(
        (r.route.as_str(), r.reason.as_str()),
        ("local-reasoning", "sticky-session")
    );
}

async fn wait_for_route(daemon: &Daemon, route: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if send(daemon, &ask("hello"), &[]).await.route == route {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

#[tokio::test]
async fn the_policy_reloads_when_edited_and_a_bad_edit_keeps_the_old_one() {
    let double = CloudDouble::start();
    let local = policy(&double, ALL_LOCAL, "");
    let daemon = start(&local);
    assert_eq!(send(&daemon, &ask("hello"), &[]).await.route, "local");

    std::fs::write(daemon.policy_path(), policy(&double, ALL_REMOTE, "")).unwrap();
    assert!(wait_for_route(&daemon, "remote").await, "{}", daemon.log());
    daemon.until_logged("policy reloaded").await;
    // The model was kept, not loaded again.
    assert_eq!(
        daemon.log().matches("local model loaded").count(),
        1,
        "{}",
        daemon.log()
    );

    // A typo: rejected with its line and column, and the last good policy serves on.
    let bad = policy(&double, ALL_LOCAL, "").replace("remote_backends:", "remote_backendz:");
    std::fs::write(daemon.policy_path(), &bad).unwrap();
    let line = bad.lines().position(|l| l.contains("remote_backendz")).unwrap() + 1;
    daemon.until_logged(&format!("policy.yaml:{line}:3: ")).await;
    assert!(daemon.log().contains("policy reload rejected"), "{}", daemon.log());
    assert_eq!(send(&daemon, &ask("hello"), &[]).await.route, "remote");

    // A file that reads well but cannot be applied (a client key from an
    // unset variable): rejected with where, and the last good policy serves on.
    let unset = policy(
        &double,
        ALL_LOCAL,
        "auth:\n  keys:\n    - name: team\n      key_env: SWITCHYARD_TEST_UNSET_KEY\n",
    );
    std::fs::write(daemon.policy_path(), &unset).unwrap();
    let line = unset
        .lines()
        .position(|l| l.contains("SWITCHYARD_TEST_UNSET_KEY"))
        .unwrap()
        + 1;
    daemon
        .until_logged(&format!("policy.yaml:{line}:16: client key \"team\""))
        .await;
    assert_eq!(send(&daemon, &ask("hello"), &[]).await.route, "remote");

    // SIGHUP reloads too (here after a good edit).
    std::fs::write(daemon.policy_path(), &local).unwrap();
    std::process::Command::new("kill")
        .args(["-HUP", &daemon.pid().to_string()])
        .status()
        .unwrap();
    assert!(wait_for_route(&daemon, "local").await, "{}", daemon.log());
    daemon.until_logged("sighup").await;
}
