//! `switchyard audit` on a public prompt set turned into request logs (the
//! held-out GSM8K rows of RouteLLM's data, in each of the log forms): its
//! summary agrees with `route eval` on the same rows, counts what it cannot
//! read, projects a month from the timestamps, finds the private request,
//! resumes after an interruption without counting a row twice, and its report
//! renders in headless Chromium.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use switchyard_e2e::{daemon, default_model};

fn switchyard(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(daemon::binary()).args(args).output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

fn gsm8k() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../router/data/routing/routellm/routellm_gsm8k_test.jsonl")
}

const START: u64 = 1_796_083_200; // 2026-12-01T00:00:00Z
const EMAIL: &str = "write to jane.doe@example.com about it";

/// The labelled rows as a week of logged calls: every third a plain logged
/// call, every third a batch-file line, the rest plain request bodies
/// carrying their labels; one unreadable line; one private request.
fn write_log(dir: &Path) -> (PathBuf, usize) {
    let rows: Vec<Value> = std::fs::read_to_string(gsm8k())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut lines = Vec::new();
    let step = 7 * 86_400 / (rows.len() as u64 - 1);
    for (i, row) in rows.iter().enumerate() {
        let messages = json!([{ "role": "user", "content": row["prompt"] }]);
        let labels = |mut line: Value| {
            for key in ["id", "category", "labels", "strong", "weak", "source", "label_kind"] {
                line[key] = row[key].clone();
            }
            line
        };
        let at = START + i as u64 * step;
        let line = match i % 3 {
            0 => labels(json!({
                "request": { "model": "gpt-4o", "messages": messages },
                "response": { "choices": [{ "message": { "role": "assistant", "content": "The answer is 42." } }],
                              "usage": { "prompt_tokens": 80, "completion_tokens": 120 } },
                "latency_ms": 900 + i, "timestamp": at,
            })),
            1 => labels(json!({
                "custom_id": format!("batch-{i}"), "method": "POST", "url": "/v1/chat/completions",
                "body": { "model": "gpt-4o", "messages": messages }, "timestamp": at,
            })),
            _ => labels(json!({ "model": "gpt-4o", "messages": messages, "timestamp": at })),
        };
        lines.push(line.to_string());
    }
    lines.push("this line is not JSON".to_string());
    lines.push(
        json!({ "model": "gpt-4o", "messages": [{ "role": "user", "content": EMAIL }], "timestamp": START })
            .to_string(),
    );
    let path = dir.join("traffic.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    (path, rows.len())
}

fn write_policy(dir: &Path) -> PathBuf {
    let policy = format!(
        "backends:
  local:
    - name: smollm2
      model_path: {}
      threads: 2
  remote:
    - name: cloud
      base_url: http://127.0.0.1:9/v1
      model: gpt-4o
      price: {{ input_per_mtok_usd: 2.5, output_per_mtok_usd: 10.0 }}
routing:
  local_backend: smollm2
  remote_backends: [cloud]
privacy:
  detectors: [email]
",
        default_model().display()
    );
    let path = dir.join("policy.yaml");
    std::fs::write(&path, policy).unwrap();
    path
}

fn audit(input: &Path, policy: &Path, out: &Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "audit",
        "--input",
        input.to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (ok, _, err) = switchyard(&args);
    assert!(ok, "{err}");
    serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn audit_agrees_with_route_eval_resumes_and_its_report_renders() {
    let dir = daemon::scratch_dir("audit");
    let (log, labelled) = write_log(&dir);
    let policy = write_policy(&dir);
    let out = dir.join("audit");
    let summary = audit(&log, &policy, &out, &[]);

    assert_eq!(summary["rows"], labelled as u64 + 1, "{summary}");
    assert_eq!(summary["unreadable_lines"], 1);
    let routed: u64 = summary["by_route"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(routed, labelled as u64 + 1);
    assert_eq!(summary["privacy"]["requests"], 1, "{summary}");
    assert_eq!(summary["privacy"]["by_rule"]["email"], 1);
    assert_eq!(
        summary["by_category"]["gsm8k"]
            .as_object()
            .unwrap()
            .values()
            .map(|n| n.as_u64().unwrap())
            .sum::<u64>(),
        labelled as u64
    );

    // The router's ranking of the labelled rows is `route eval`'s.
    let (ok, table, err) = switchyard(&["route", "eval", "--input", gsm8k().to_str().unwrap()]);
    assert!(ok, "{err}");
    let line = table.lines().find(|l| l.starts_with("| switchyard")).unwrap();
    let eval_apgr: f64 = line.split('|').nth(2).unwrap().trim().parse().unwrap();
    let quality = &summary["quality"];
    assert_eq!(quality["labelled_rows"], labelled as u64);
    let apgr = quality["router"]["apgr"].as_f64().unwrap();
    assert!(
        (apgr - eval_apgr).abs() < 5e-4,
        "audit {apgr} against route eval {eval_apgr}"
    );
    assert!((quality["random"]["apgr"].as_f64().unwrap() - 0.5).abs() < 0.05);

    // Money: logged calls at their usage, the rest at the prompt's tokens
    // counted with the local model's tokenizer; a week scaled to a month.
    let cost = &summary["cost"];
    let (logged, policy_cost) = (
        cost["logged_usd"].as_f64().unwrap(),
        cost["policy_usd"].as_f64().unwrap(),
    );
    assert!(logged > 0.0 && policy_cost < logged, "{cost}");
    assert!((cost["period_days"].as_f64().unwrap() - 7.0).abs() < 0.01, "{cost}");
    let monthly = cost["monthly"]["logged_usd"].as_f64().unwrap();
    assert!((monthly - logged * 365.25 / 12.0 / cost["period_days"].as_f64().unwrap()).abs() < 1e-9);
    let tokens = &summary["tokens"];
    assert_eq!(tokens["from_logged_usage"], (labelled as u64).div_ceil(3), "{tokens}");
    assert_eq!(tokens["estimated"], 0, "{tokens}");
    // The curve runs from all remote to all local, the policy on it.
    let curve = summary["curve"].as_array().unwrap();
    assert!(
        curve.first().unwrap()["local_share"].as_f64().unwrap() < 0.01,
        "{curve:?}"
    );
    assert!(
        curve.last().unwrap()["local_share"].as_f64().unwrap() > 0.99,
        "{curve:?}"
    );
    assert!(curve.first().unwrap()["quality"].as_f64().unwrap() >= curve.last().unwrap()["quality"].as_f64().unwrap());

    // Interrupted half way (the last row cut mid-line), then run again: the
    // same summary, no row counted twice.
    let rows_path = out.join("rows.jsonl");
    let text = std::fs::read_to_string(&rows_path).unwrap();
    let half: Vec<&str> = text.lines().take(labelled / 2).collect();
    std::fs::write(
        &rows_path,
        format!(
            "{}\n{}",
            half.join("\n"),
            &text.lines().nth(labelled / 2).unwrap()[..20]
        ),
    )
    .unwrap();
    std::fs::remove_file(out.join("summary.json")).unwrap();
    let resumed = audit(&log, &policy, &out, &[]);
    assert_eq!(resumed, summary, "a resumed audit sums up the same");
    assert_eq!(
        std::fs::read_to_string(&rows_path).unwrap().lines().count(),
        labelled + 1
    );

    // The report, self-contained, drawn in a real browser.
    let report = out.join("report.html");
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://") && !html.contains("<script"),
        "self-contained"
    );
    let url = format!("file://{}", report.display());
    let chromium = |extra: &[String]| switchyard_e2e::chromium(&dir, "1300,1800", extra, &url);
    let dom = chromium(&["--dump-dom".to_string()]);
    assert!(dom.status.success(), "{}", String::from_utf8_lossy(&dom.stderr));
    let dom = String::from_utf8_lossy(&dom.stdout);
    for chart in ["routes", "cost", "curve", "categories"] {
        assert!(dom.contains(&format!("<svg id=\"{chart}\"")), "chart {chart}: {dom}");
    }
    assert_eq!(
        dom.matches("class=\"bar\"").count(),
        summary["by_route"].as_object().unwrap().len() + 3 + 2
    );
    assert!(dom.contains(&format!("id=\"apgr\">{apgr:.4}<")), "{dom}");
    let shot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/audit-report.png");
    let taken = chromium(&[format!("--screenshot={}", shot.display())]);
    assert!(taken.status.success(), "{}", String::from_utf8_lossy(&taken.stderr));
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "a real screenshot");
    println!("audit report screenshot: {}", shot.display());
}

#[test]
fn sampled_requests_are_answered_by_the_local_model_and_compared() {
    let dir = daemon::scratch_dir("audit-local");
    let (log, _) = write_log(&dir);
    let policy = write_policy(&dir);
    let out = dir.join("audit");
    let summary = audit(&log, &policy, &out, &["--sample", "6", "--local", "--max-tokens", "12"]);
    let agreement = &summary["agreement"];
    assert_eq!(agreement["sampled"], 6, "{agreement}");
    // The logged answers ("The answer is 42.") are open answers: similarity.
    assert_eq!(agreement["similarity"][0], 6, "{agreement}");
    let mean = agreement["mean"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&mean), "{agreement}");
    let measured = &summary["latency"]["local_measured_ms"];
    assert_eq!(measured["n"], 6, "{measured}");
    assert!(measured["p50"].as_f64().unwrap() > 0.0);
    let rows = std::fs::read_to_string(out.join("rows.jsonl")).unwrap();
    let checked: Vec<Value> = rows
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| !r["local"].is_null())
        .collect();
    assert_eq!(checked.len(), 6);
    assert!(
        checked
            .iter()
            .all(|r| r["local"]["completion_tokens"].as_u64().unwrap() <= 12)
    );
}

#[test]
fn a_judge_model_decides_on_open_answers_at_a_stated_cost() {
    let double = switchyard_e2e::CloudDouble::start();
    let dir = daemon::scratch_dir("audit-judge");
    let (log, _) = write_log(&dir);
    let policy = dir.join("policy.yaml");
    let judge = format!(
        "    - name: judge\n      base_url: {}\n      api_key_env: DOUBLE_API_KEY\n      model: judge\n      price: {{ input_per_mtok_usd: 3.0, output_per_mtok_usd: 15.0 }}\n",
        double.base_url()
    );
    let text = std::fs::read_to_string(write_policy(&dir))
        .unwrap()
        .replace("routing:\n", &format!("{judge}routing:\n"));
    std::fs::write(&policy, text).unwrap();
    let out = dir.join("audit");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "audit",
            "--input",
            log.to_str().unwrap(),
            "--policy",
            policy.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        Command::new(daemon::binary())
            .args(&args)
            .env("DOUBLE_API_KEY", switchyard_e2e::DOUBLE_API_KEY)
            .output()
            .unwrap()
    };
    let output = run(&[
        "--out",
        out.to_str().unwrap(),
        "--sample",
        "6",
        "--local",
        "--max-tokens",
        "12",
        "--judge",
        "judge",
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let agreement = &summary["agreement"];
    // Every logged answer is open ("The answer is 42."): all six go to the judge.
    assert_eq!(agreement["judged"][0], 6, "{agreement}");
    assert!(agreement["similarity"].is_null(), "{agreement}");
    // The judge saw the request, the logged answer and the local one, and its
    // verdicts and its price are what the summary reports.
    let calls: Vec<Value> = double
        .requests()
        .into_iter()
        .filter(|r| r.body["model"] == "judge")
        .map(|r| r.body)
        .collect();
    assert_eq!(calls.len(), 6);
    let (mut yes, mut cost) = (0usize, 0.0f64);
    for call in &calls {
        let user = call["messages"][1]["content"].as_str().unwrap();
        assert!(
            user.starts_with("Request:\n") && user.contains("Reference answer:\nThe answer is 42."),
            "{user}"
        );
        let candidate = user.split("Candidate answer:\n").nth(1).unwrap();
        let words = |t: &str| -> Vec<String> {
            t.split(|c: char| !c.is_alphanumeric())
                .filter(|w| !w.is_empty())
                .map(str::to_lowercase)
                .collect()
        };
        let said = words(candidate);
        if ["the", "answer", "is", "42"]
            .iter()
            .all(|w| said.contains(&w.to_string()))
        {
            yes += 1;
        }
        let prompt_words: usize = call["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["content"].as_str().unwrap().split_whitespace().count())
            .sum();
        cost += (prompt_words as f64 * 3.0 + 15.0) / 1e6;
        assert_eq!(call["temperature"], 0, "{call}");
    }
    let judged = agreement["judged"][1].as_f64().unwrap();
    assert!((judged - yes as f64 / 6.0).abs() < 1e-9, "{agreement}");
    assert!(
        (agreement["judge_cost_usd"].as_f64().unwrap() - cost).abs() < 1e-12,
        "{agreement} against {cost}"
    );
    // The upstream key went to the judge, never to the report.
    let report = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(report.contains("judged by a model 6") && !report.contains(switchyard_e2e::DOUBLE_API_KEY));
    // A judge the policy does not have is named.
    let output = run(&[
        "--out",
        dir.join("never").to_str().unwrap(),
        "--sample",
        "1",
        "--local",
        "--judge",
        "oracle",
    ]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no remote backend named \"oracle\""));
}

#[test]
fn calibrate_writes_thresholds_that_keep_the_target_into_the_policy() {
    let dir = daemon::scratch_dir("calibrate");
    let policy = write_policy(&dir);
    let original = std::fs::read_to_string(&policy)
        .unwrap()
        .replace("routing:\n", "routing:\n  # tuned by hand last spring\n  thresholds: { local_below: 0.3, remote_above: 0.7, ambiguous: remote }  # keep\n");
    std::fs::write(&policy, &original).unwrap();
    let (ok, out, err) = switchyard(&[
        "calibrate",
        "--input",
        gsm8k().to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
        "--target-quality",
        "0.9",
        "--confidence",
        "0.9",
    ]);
    assert!(ok, "{err}");
    let printed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(printed["rows"], 362, "{printed}");
    let threshold = printed["threshold"].as_f64().unwrap();
    let share = printed["expected_local_share"].as_f64().unwrap();
    assert!(share > 0.0 && share < 1.0, "{printed}");
    assert!(printed["retention_on_these_rows"].as_f64().unwrap() >= 0.9, "{printed}");
    // `ambiguous: remote`: everything below the threshold is local.
    assert_eq!(printed["local_below"], printed["threshold"]);
    let written = std::fs::read_to_string(&policy).unwrap();
    let expected = original.replace(
        "{ local_below: 0.3, remote_above: 0.7, ambiguous: remote }  # keep",
        &format!(
            "{{ local_below: {}, remote_above: 0.7, ambiguous: remote }}  # keep",
            threshold as f32
        ),
    );
    assert_eq!(written, expected, "only the thresholds change; comments stay");
    let (ok, _, err) = switchyard(&["policy", "check", policy.to_str().unwrap()]);
    assert!(ok, "{err}");
}
