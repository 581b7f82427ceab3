//! Observability through the real daemon: `/metrics` passes `promtool check
//! metrics` and counts what was sent, a real Prometheus scrapes it and agrees,
//! and the status page renders live numbers in headless Chromium.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard_e2e::routed::send;
use switchyard_e2e::{
    CloudDouble, DOUBLE_API_KEY, Daemon, daemon, default_model, get_json, http_client, local_and_echo_policy, sample,
    sample_with, tool,
};

const REMOTE_PRICE: (f64, f64) = (2.5, 10.0);

fn policy(double: &CloudDouble) -> String {
    format!(
        "backends:\n  local:\n    - name: smollm2\n      model_path: {}\n      threads: 2\n      context_length: 1024\n      default_max_tokens: 8\n  remote:\n    - name: echo\n      base_url: {}\n      api_key_env: DOUBLE_API_KEY\n      model: echo\n      price: {{ input_per_mtok_usd: {}, output_per_mtok_usd: {} }}\nrouting:\n  local_backend: smollm2\n  remote_backends: [echo]\n",
        default_model().display(),
        double.base_url(),
        REMOTE_PRICE.0,
        REMOTE_PRICE.1
    )
}

/// What was sent and what it should have cost.
#[derive(Default, Debug)]
struct Sent {
    local: u64,
    remote: u64,
    cost: f64,
    baseline: f64,
}

fn price(usage: &Value) -> f64 {
    (usage["prompt_tokens"].as_f64().unwrap() * REMOTE_PRICE.0
        + usage["completion_tokens"].as_f64().unwrap() * REMOTE_PRICE.1)
        / 1e6
}

/// Local and remote requests, streamed and not; returns what they should add up to.
async fn traffic(daemon: &Daemon) -> Sent {
    let mut sent = Sent::default();
    for (model, stream) in [
        ("echo", false),
        ("echo", true),
        ("echo", false),
        ("smollm2", false),
        ("smollm2", true),
    ] {
        let mut body = json!({ "model": model, "max_tokens": 6, "temperature": 0,
            "messages": [{ "role": "user", "content": "Say hello to the metrics." }] });
        if stream {
            body["stream"] = json!(true);
            body["stream_options"] = json!({ "include_usage": true });
        }
        let response = http_client()
            .post(daemon.url("/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        let usage = if stream {
            text.lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .filter_map(|d| serde_json::from_str::<Value>(d).ok())
                .find_map(|c| c.get("usage").filter(|u| u.is_object()).cloned())
                .expect("usage chunk")
        } else {
            serde_json::from_str::<Value>(&text).unwrap()["usage"].clone()
        };
        sent.baseline += price(&usage);
        if model == "echo" {
            sent.remote += 1;
            sent.cost += price(&usage);
        } else {
            sent.local += 1;
        }
    }
    sent
}

fn start(double: &CloudDouble) -> Daemon {
    Daemon::start(&policy(double), &[("DOUBLE_API_KEY", DOUBLE_API_KEY)])
}

#[tokio::test]
async fn metrics_pass_promtool_and_count_what_was_sent() {
    let double = CloudDouble::start();
    let daemon = start(&double);
    let sent = traffic(&daemon).await;
    // Streams are recorded when they end, just after their last byte: scrape
    // until every request sent is counted (a loaded machine can lag).
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let response = http_client().get(daemon.url("/metrics")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain; version=0.0.4")
        );
        let text = response.text().await.unwrap();
        if sample(&text, "switchyard_requests_total") >= (sent.local + sent.remote) as f64 || Instant::now() > deadline
        {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let mut check = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    check.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = check.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    let requests = |route: &str| sample_with(&text, "switchyard_requests_total", &format!("route=\"{route}\""));
    assert_eq!(requests("remote"), sent.remote as f64, "{text}");
    assert_eq!(requests("local"), sent.local as f64, "{text}");
    let cost = sample(&text, "switchyard_cost_usd_total");
    let baseline = sample(&text, "switchyard_baseline_cost_usd_total");
    let savings = sample(&text, "switchyard_savings_usd");
    assert!((cost - sent.cost).abs() < 1e-9, "cost {cost} vs {sent:?}");
    assert!(
        (baseline - sent.baseline).abs() < 1e-9,
        "baseline {baseline} vs {sent:?}"
    );
    assert!(
        (savings - (sent.baseline - sent.cost)).abs() < 1e-9 && savings > 0.0,
        "savings {savings} vs {sent:?}"
    );
    for family in [
        "switchyard_request_duration_seconds_bucket",
        "switchyard_time_to_first_token_seconds_bucket",
        "switchyard_decision_duration_seconds_bucket",
        "switchyard_router_overhead_seconds_bucket",
        "switchyard_local_tokens_per_second",
        "switchyard_local_model_bytes",
        "switchyard_local_batch_sequences",
        "switchyard_local_batch_max_sequences",
        "switchyard_local_inter_token_latency_seconds_bucket",
        "switchyard_breaker_state",
        "switchyard_build_info",
    ] {
        assert!(text.contains(family), "{family} missing:\n{text}");
    }
    // Local answers ran, so the engine holds a KV cache: 30 layers of keys and
    // values, 3 heads x 64 dims in f16, for a whole number of 256-position steps.
    let kv = sample(&text, "switchyard_local_kv_cache_bytes");
    let per_step = (256 * 30 * 2 * 3 * 64 * 2) as f64;
    assert!(kv >= per_step && kv % per_step == 0.0, "KV cache bytes {kv}");
    assert!(
        !text.contains(DOUBLE_API_KEY) && !text.contains("Say hello"),
        "no secret or prompt in metrics"
    );
}

/// The policy of the batch tests: the embedded model, three sequences at
/// once, five more may wait.
fn batch_of_three(double: &CloudDouble) -> String {
    local_and_echo_policy(
        &double.base_url(),
        &["context_length: 1024", "max_sequences: 3", "queue_capacity: 5"],
        &[],
        "",
    )
}

/// Scrapes until `until` holds for the metrics or `within` passes; the last scrape.
async fn metrics_until(daemon: &Daemon, within: Duration, until: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + within;
    loop {
        let text = daemon.metrics().await;
        if until(&text) || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_local_batch_and_the_time_between_tokens_are_exported() {
    let double = CloudDouble::start();
    let daemon = Daemon::start(&batch_of_three(&double), &[("DOUBLE_API_KEY", DOUBLE_API_KEY)]);
    let running = |text: &str| sample(text, "switchyard_local_batch_sequences");
    let waiting = |text: &str| sample(text, "switchyard_local_queue_depth");
    let idle = daemon.metrics().await;
    assert_eq!(sample(&idle, "switchyard_local_batch_max_sequences"), 3.0, "{idle}");
    assert_eq!(sample(&idle, "switchyard_local_queue_capacity"), 5.0, "{idle}");
    assert_eq!(running(&idle), 0.0, "{idle}");
    assert_eq!(sample(&idle, "switchyard_local_inter_token_latency_seconds_count"), 0.0);

    // Counting to 100 runs to `max_tokens` at temperature 0: four answers
    // long enough (seconds) to be seen at work, one more than the batch holds.
    let ask = json!({ "model": "smollm2", "max_tokens": 96, "temperature": 0,
        "messages": [{ "role": "user", "content": "Count from 1 to 100, separated by commas." }] });
    let answers = futures_util::future::join_all((0..4).map(|_| send(&daemon, &ask, &[])));
    let watch = metrics_until(&daemon, Duration::from_secs(30), |text| {
        assert!(running(text) <= 3.0, "more than max_sequences run:\n{text}");
        (running(text), waiting(text)) == (3.0, 1.0)
    });
    let (answers, busy) = tokio::join!(answers, watch);
    assert_eq!(
        (running(&busy), waiting(&busy)),
        (3.0, 1.0),
        "three answers run together while the fourth waits for a place"
    );
    let completion_tokens: Vec<u64> = answers
        .iter()
        .map(|answer| {
            assert_eq!(answer.status, 200, "{}", answer.text);
            answer.body["usage"]["completion_tokens"].as_u64().unwrap()
        })
        .collect();

    // The gauge drops once the step that ended the last answers is over.
    let done = metrics_until(&daemon, Duration::from_secs(10), |text| running(text) == 0.0).await;
    assert_eq!((running(&done), waiting(&done)), (0.0, 0.0), "{done}");
    // One gap between each two tokens of an answer, each a decode step.
    let gaps = sample(&done, "switchyard_local_inter_token_latency_seconds_count");
    let expected: u64 = completion_tokens.iter().map(|n| n.saturating_sub(1)).sum();
    assert_eq!(gaps, expected as f64, "{completion_tokens:?}\n{done}");
    let mean = sample(&done, "switchyard_local_inter_token_latency_seconds_sum") / gaps;
    assert!(mean > 0.0 && mean < 2.0, "mean gap {mean} s");
    // Each local answer's time to its first token, once.
    let first_tokens = sample_with(&done, "switchyard_time_to_first_token_seconds_count", "route=\"local\"");
    assert_eq!(first_tokens, 4.0, "{done}");

    let status = get_json(&daemon, "/status.json").await;
    let local = &status["local"][0];
    assert_eq!(
        (&local["backend"], &local["running"], &local["max_sequences"]),
        (&json!("smollm2"), &json!(0), &json!(3)),
        "{status}"
    );
}

#[tokio::test]
async fn a_reload_with_another_batch_size_restarts_the_local_engine_with_it() {
    let double = CloudDouble::start();
    let three = batch_of_three(&double);
    let daemon = Daemon::start(&three, &[("DOUBLE_API_KEY", DOUBLE_API_KEY)]);
    assert_eq!(
        sample(&daemon.metrics().await, "switchyard_local_batch_max_sequences"),
        3.0
    );
    std::fs::write(
        daemon.policy_path(),
        three.replace("max_sequences: 3\n", "max_sequences: 5\n"),
    )
    .unwrap();
    daemon.until_logged("policy reloaded").await;
    let text = daemon.metrics().await;
    assert_eq!(sample(&text, "switchyard_local_batch_max_sequences"), 5.0, "{text}");
    assert_eq!(
        daemon.log().matches("local model loaded").count(),
        2,
        "the model was loaded again for the new engine:\n{}",
        daemon.log()
    );
}

#[tokio::test]
async fn a_request_whose_client_leaves_before_its_answer_is_still_recorded() {
    let double = CloudDouble::start();
    let daemon = Daemon::start(
        &switchyard_e2e::policy_for(&double.base_url(), ""),
        &[("DOUBLE_API_KEY", DOUBLE_API_KEY)],
    );
    // slow-first-byte answers after 3 s, and the daemon gives it 1 s from
    // when it calls it: a client that gives up after 0.5 s of its own always
    // leaves first, however slow the machine.
    let _ = rustls::crypto::ring::default_provider().install_default(); // as http_client() does
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let gone = impatient
        .post(daemon.url("/v1/chat/completions"))
        .header("x-request-id", "client-left")
        .json(&json!({ "model": "slow-first-byte", "messages": [{ "role": "user", "content": "hello" }] }))
        .send()
        .await;
    assert!(gone.is_err_and(|err| err.is_timeout()), "the client gave up");

    let deadline = Instant::now() + Duration::from_secs(10);
    let finished = loop {
        let log = daemon.log();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("request finished") && l.contains("request_id=client-left"))
        {
            break line.to_string();
        }
        assert!(Instant::now() < deadline, "the request was not recorded:\n{log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for field in [
        "status=499",
        "outcome=\"client_disconnected\"",
        "route=\"remote\"",
        "backend=\"slow-first-byte\"",
        "reason=\"model-pinned\"",
    ] {
        assert!(finished.contains(field), "{field} missing: {finished}");
    }
    let metrics = daemon.metrics().await;
    let labels = [
        "route=\"remote\"",
        "backend=\"slow-first-byte\"",
        "outcome=\"4xx\"",
        "reason=\"model-pinned\"",
    ];
    let counted: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("switchyard_requests_total{") && labels.iter().all(|label| l.contains(label)))
        .collect();
    assert!(counted.len() == 1 && counted[0].ends_with("} 1"), "{metrics}");
}

/// A free loopback port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Prometheus on a free loopback port, ready to answer queries.
async fn start_prometheus(dir: &std::path::Path) -> (u16, std::process::Child) {
    for _attempt in 0..5 {
        let port = free_port();
        let mut prometheus = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if prometheus.try_wait().unwrap().is_some() {
                break;
            }
            let ready = http_client()
                .get(format!("http://127.0.0.1:{port}/-/ready"))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if ready.is_ok_and(|response| response.status().is_success()) {
                return (port, prometheus);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let _ = prometheus.kill();
        let _ = prometheus.wait();
    }
    let log = std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
    panic!("prometheus did not get ready on any of five ports; its log:\n{log}");
}

#[tokio::test]
async fn prometheus_scrapes_the_daemon_and_agrees_with_what_was_sent() {
    let double = CloudDouble::start();
    let daemon = start(&double);
    let sent = traffic(&daemon).await;
    let target = daemon.url("").trim_start_matches("http://").to_string();
    let dir = daemon::scratch_dir("prometheus");
    std::fs::write(
        dir.join("prometheus.yml"),
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: switchyard\n    static_configs:\n      - targets: [\"{target}\"]\n"),
    )
    .unwrap();
    // The port is picked by binding port 0 and letting it go, so another
    // process may take it before Prometheus binds it: a Prometheus that exits
    // instead of getting ready is started again on another port.
    let (port, mut prometheus) = start_prometheus(&dir).await;
    let query = |q: &str| {
        let url = format!("http://127.0.0.1:{port}/api/v1/query");
        let q = q.to_string();
        async move {
            let encoded: String = q
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
                    _ => format!("%{b:02X}"),
                })
                .collect();
            let response = http_client().get(format!("{url}?query={encoded}")).send().await.ok()?;
            let body: Value = response.json().await.ok()?;
            body["data"]["result"][0]["value"][1].as_str()?.parse::<f64>().ok()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut total = None;
    while Instant::now() < deadline {
        total = query("sum(switchyard_requests_total)").await;
        if total == Some((sent.local + sent.remote) as f64) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let log = std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
    let remote = query("sum(switchyard_requests_total{route=\"remote\"})").await;
    let cost = query("sum(switchyard_cost_usd_total)").await;
    let savings = query("switchyard_savings_usd").await;
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    assert_eq!(total, Some((sent.local + sent.remote) as f64), "prometheus log:\n{log}");
    assert_eq!(remote, Some(sent.remote as f64));
    assert!((cost.unwrap() - sent.cost).abs() < 1e-9, "{cost:?} vs {sent:?}");
    assert!(
        (savings.unwrap() - (sent.baseline - sent.cost)).abs() < 1e-9,
        "{savings:?} vs {sent:?}"
    );
}

#[tokio::test]
async fn the_status_page_renders_live_numbers_in_chromium() {
    let double = CloudDouble::start();
    let daemon = start(&double);
    let sent = traffic(&daemon).await;
    let dir = daemon::scratch_dir("chromium");
    let url = daemon.url("/");
    let chromium = |extra: &[String]| switchyard_e2e::chromium(&dir, "1400,1150", extra, &url);
    let dom = chromium(&["--dump-dom".to_string()]);
    let html = String::from_utf8_lossy(&dom.stdout).to_string();
    assert!(dom.status.success(), "{}", String::from_utf8_lossy(&dom.stderr));
    let requests = format!("id=\"requests\">{}<", sent.local + sent.remote);
    assert!(html.contains(&requests), "request count rendered: {html}");
    assert!(
        html.contains("data-route=\"remote\" data-count=\"3\""),
        "route mix drawn: {html}"
    );
    assert!(
        html.contains("data-route=\"local\" data-count=\"2\""),
        "route mix drawn: {html}"
    );
    assert_eq!(
        html.matches("class=\"badge\" style=\"background:var(").count(),
        5,
        "the last decisions are listed"
    );
    let savings = format!("${:.6}", sent.baseline - sent.cost);
    assert!(html.contains(&savings), "savings {savings} shown: {html}");
    // The local batch: its size over time against the policy's default most.
    assert!(
        html.contains("data-backend=\"smollm2\" data-max=\"8\"")
            && html.contains("data-backend=\"smollm2\" data-running=\"0\"")
            && html.contains("smollm2: 0 of 8 running, 0 waiting"),
        "the batch drawn: {html}"
    );

    let screenshot = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/status-page.png");
    let shot = chromium(&[format!("--screenshot={}", screenshot.display())]);
    assert!(shot.status.success(), "{}", String::from_utf8_lossy(&shot.stderr));
    let png = std::fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "a real screenshot");
    println!("status page screenshot: {}", screenshot.display());
}

/// An OTLP/HTTP collector on loopback that keeps every JSON export it receives.
async fn otlp_collector() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    use axum::routing::post;
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let store = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: axum::body::Bytes| {
            let store = store.clone();
            async move {
                match serde_json::from_slice::<Value>(&body) {
                    Ok(export) => {
                        store.lock().unwrap().push(export);
                        (axum::http::StatusCode::OK, axum::Json(json!({})))
                    }
                    Err(err) => (
                        axum::http::StatusCode::BAD_REQUEST,
                        axum::Json(json!({ "error": err.to_string() })),
                    ),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

/// One exported span, flattened.
#[derive(Debug, Clone)]
struct Span {
    name: String,
    trace: String,
    id: String,
    parent: String,
    attributes: Value,
    service: String,
}

fn spans(exports: &[Value]) -> Vec<Span> {
    let attr = |attrs: &Value, key: &str| -> Option<Value> {
        attrs
            .as_array()?
            .iter()
            .find(|a| a["key"] == key)
            .map(|a| a["value"].clone())
    };
    let mut out = Vec::new();
    for export in exports {
        for resource in export["resourceSpans"].as_array().into_iter().flatten() {
            let service = attr(&resource["resource"]["attributes"], "service.name")
                .and_then(|v| v["stringValue"].as_str().map(str::to_string))
                .unwrap_or_default();
            for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                for span in scope["spans"].as_array().into_iter().flatten() {
                    out.push(Span {
                        name: span["name"].as_str().unwrap_or_default().to_string(),
                        trace: span["traceId"].as_str().unwrap_or_default().to_string(),
                        id: span["spanId"].as_str().unwrap_or_default().to_string(),
                        parent: span["parentSpanId"].as_str().unwrap_or_default().to_string(),
                        attributes: span["attributes"].clone(),
                        service: service.clone(),
                    });
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn request_stages_are_exported_as_opentelemetry_traces() {
    let (collector, received) = otlp_collector().await;
    let double = CloudDouble::start();
    let daemon = Daemon::start(
        &policy(&double),
        &[
            ("DOUBLE_API_KEY", DOUBLE_API_KEY),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &collector),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("SWITCHYARD_LOG", "info,switchyard=debug"),
        ],
    );
    let prompt = "Say hello to the tracer.";
    for (id, model, stream) in [("traced-local", "smollm2", true), ("traced-remote", "echo", false)] {
        let response = http_client()
            .post(daemon.url("/v1/chat/completions"))
            .header("x-request-id", id)
            .json(&json!({ "model": model, "max_tokens": 4, "stream": stream,
                "messages": [{ "role": "user", "content": prompt }] }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap();
    }

    // The request span carries the request id; its trace holds every stage.
    let trace_of = |spans: &[Span], id: &str| -> Option<Vec<Span>> {
        let root = spans
            .iter()
            .find(|s| s.name == "request" && s.attributes.to_string().contains(&format!("\"stringValue\":\"{id}\"")))?;
        Some(spans.iter().filter(|s| s.trace == root.trace).cloned().collect())
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let (local, remote) = loop {
        let all = spans(&received.lock().unwrap());
        let names =
            |trace: &Option<Vec<Span>>| -> Vec<String> { trace.iter().flatten().map(|s| s.name.clone()).collect() };
        let (local, remote) = (trace_of(&all, "traced-local"), trace_of(&all, "traced-remote"));
        let complete =
            |trace: &Option<Vec<Span>>, stages: &[&str]| stages.iter().all(|s| names(trace).contains(&s.to_string()));
        if complete(&local, &["request", "parse", "decide", "answer", "stream"])
            && complete(&remote, &["request", "parse", "decide", "answer"])
        {
            break (local.unwrap(), remote.unwrap());
        }
        assert!(
            Instant::now() < deadline,
            "traces incomplete after 20 s: local {:?}, remote {:?}\nlog:\n{}",
            names(&local),
            names(&remote),
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for trace in [&local, &remote] {
        let root = trace.iter().find(|s| s.name == "request").unwrap();
        assert_eq!(root.service, "switchyard");
        assert!(root.parent.is_empty(), "the request span is the root: {root:?}");
        for stage in trace
            .iter()
            .filter(|s| ["parse", "decide", "answer", "stream"].contains(&s.name.as_str()))
        {
            assert_eq!(stage.parent, root.id, "{} is a child of the request span", stage.name);
        }
    }
    let answer = local.iter().find(|s| s.name == "answer").unwrap();
    assert!(
        answer.attributes.to_string().contains("\"stringValue\":\"local\""),
        "{answer:?}"
    );
    let exported = serde_json::to_string(&*received.lock().unwrap()).unwrap();
    assert!(
        !exported.contains("tracer") && !exported.contains(DOUBLE_API_KEY),
        "no prompt text or secret in traces"
    );
}
