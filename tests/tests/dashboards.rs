//! The dashboards directory is valid: alert rules check and pass their unit
//! tests, and every PromQL expression of the Grafana dashboard parses.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use switchyard_e2e::{daemon, tool};

fn dashboards() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dashboards")
}

fn promtool(args: &[&str]) -> String {
    let output = Command::new(tool("promtool")).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn alert_rules_check_and_pass_their_unit_tests() {
    let dir = dashboards().join("prometheus");
    let out = promtool(&["check", "rules", dir.join("alerts.yml").to_str().unwrap()]);
    assert!(out.contains("SUCCESS: 6 rules found"), "{out}");
    promtool(&["test", "rules", dir.join("alerts_test.yml").to_str().unwrap()]);
    promtool(&[
        "check",
        "config",
        "--syntax-only",
        dir.join("prometheus.yml").to_str().unwrap(),
    ]);
}

#[test]
fn every_dashboard_expression_parses() {
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(dashboards().join("grafana/switchyard.json")).unwrap()).unwrap();
    let exprs: Vec<&str> = json["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
        .map(|t| t["expr"].as_str().unwrap())
        .collect();
    assert!(exprs.len() >= 12, "{exprs:?}");
    // Each expression becomes a recording rule; promtool parses them all.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:expr_{i}\n        expr: {}\n",
            serde_json::to_string(expr).unwrap()
        ));
    }
    let path = daemon::scratch_dir("dashboard-exprs").join("rules.yml");
    std::fs::write(&path, rules).unwrap();
    let out = promtool(&["check", "rules", path.to_str().unwrap()]);
    assert!(out.contains(&format!("SUCCESS: {} rules found", exprs.len())), "{out}");
    // Every metric the dashboard reads is one Switchyard exports.
    let exported =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../router/src/metrics.rs")).unwrap();
    for expr in &exprs {
        for name in expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("switchyard_"))
        {
            // A histogram's series: its buckets, sum and count.
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            assert!(exported.contains(&format!("\"{base}\"")), "{base} is not exported");
        }
    }
}
