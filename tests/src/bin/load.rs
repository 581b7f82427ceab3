//! A bounded load of concurrent streaming clients against a running Switchyard,
//! classifying every request's outcome:
//!
//! - `complete`: 200, the stream ends with `data: [DONE]` and carries no error event;
//! - `clean error`: an OpenAI-format error (status >= 400 with an `error` object),
//!   or a 200 stream that ends with exactly one error event;
//! - `lost`: anything else: a transport error, a stream cut without an error
//!   event, a malformed answer, or no end within the per-request timeout.
//!
//! Usage: `load --url http://127.0.0.1:8080 [--clients 64] [--seconds 60]
//! [--timeout-s 120] [--tiers local,remote]`. Clients take turns through the
//! tiers given (sent as `x-switchyard-tier`). Prints one JSON object with the counts and latencies.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};

#[derive(Default)]
struct Tally {
    complete: u64,
    clean_errors: u64,
    lost: u64,
    by_status: std::collections::BTreeMap<u16, u64>,
    /// Per tier asked for.
    latencies_ms: std::collections::BTreeMap<String, Vec<f64>>,
    lost_examples: Vec<String>,
}

enum Outcome {
    Complete,
    CleanError,
    Lost(String),
}

async fn one(client: &reqwest::Client, url: &str, tier: &str, timeout: Duration) -> (u16, Outcome) {
    let body = json!({
        "model": "auto",
        "stream": true,
        "max_tokens": 16,
        "messages": [{ "role": "user", "content": "Name three rivers in Europe." }],
    });
    let request = client.post(url).header("x-switchyard-tier", tier).json(&body).send();
    let run = async {
        let response = match request.await {
            Ok(response) => response,
            Err(err) => return (0, Outcome::Lost(format!("send: {err}"))),
        };
        let status = response.status().as_u16();
        if status >= 400 {
            let clean = response
                .json::<Value>()
                .await
                .is_ok_and(|v| v["error"]["message"].is_string() && v["error"]["type"].is_string());
            return (
                status,
                if clean {
                    Outcome::CleanError
                } else {
                    Outcome::Lost(format!("HTTP {status} without an OpenAI error body"))
                },
            );
        }
        let mut stream = response.bytes_stream();
        let mut text = String::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => text.push_str(&String::from_utf8_lossy(&bytes)),
                Err(err) => return (status, Outcome::Lost(format!("stream broke: {err}"))),
            }
        }
        let errors = text.matches("data: {\"error\"").count();
        let done = text.trim_end().ends_with("data: [DONE]");
        let outcome = match (done, errors) {
            (true, 0) => Outcome::Complete,
            (_, 1) => Outcome::CleanError,
            _ => Outcome::Lost(format!("stream ended without [DONE] or one error event: {text:.200}")),
        };
        (status, outcome)
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(result) => result,
        Err(_) => (0, Outcome::Lost("no end within the timeout".into())),
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let mut url = "http://127.0.0.1:8080".to_string();
    let mut clients = 64usize;
    let mut seconds = 60u64;
    let mut timeout_s = 120u64;
    let mut tiers = vec!["local".to_string(), "remote".to_string()];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--url" => url = value(),
            "--clients" => clients = value().parse().expect("--clients N"),
            "--seconds" => seconds = value().parse().expect("--seconds N"),
            "--timeout-s" => timeout_s = value().parse().expect("--timeout-s N"),
            "--tiers" => tiers = value().split(',').map(str::to_string).collect(),
            other => {
                eprintln!("usage: load --url URL [--clients N] [--seconds N] [--timeout-s N] (unknown {other:?})");
                std::process::exit(2);
            }
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tally = runtime.block_on(async move {
        let client = switchyard_e2e::http_client();
        let endpoint = format!("{url}/v1/chat/completions");
        let stop = Instant::now() + Duration::from_secs(seconds);
        let timeout = Duration::from_secs(timeout_s);
        let workers = (0..clients).map(|i| {
            let tiers = tiers.clone();
            let client = client.clone();
            let endpoint = endpoint.clone();
            tokio::spawn(async move {
                let mut tally = Tally::default();
                let mut n = i;
                while Instant::now() < stop {
                    let tier = tiers[n % tiers.len()].as_str();
                    n += 1;
                    let started = Instant::now();
                    let (status, outcome) = one(&client, &endpoint, tier, timeout).await;
                    tally
                        .latencies_ms
                        .entry(tier.to_string())
                        .or_default()
                        .push(started.elapsed().as_secs_f64() * 1e3);
                    *tally.by_status.entry(status).or_default() += 1;
                    match outcome {
                        Outcome::Complete => tally.complete += 1,
                        Outcome::CleanError => tally.clean_errors += 1,
                        Outcome::Lost(why) => {
                            tally.lost += 1;
                            if tally.lost_examples.len() < 3 {
                                tally.lost_examples.push(why);
                            }
                        }
                    }
                }
                tally
            })
        });
        let mut total = Tally::default();
        for worker in futures_util::future::join_all(workers).await {
            let t = worker.expect("worker");
            total.complete += t.complete;
            total.clean_errors += t.clean_errors;
            total.lost += t.lost;
            for (status, n) in t.by_status {
                *total.by_status.entry(status).or_default() += n;
            }
            for (tier, latencies) in t.latencies_ms {
                total.latencies_ms.entry(tier).or_default().extend(latencies);
            }
            total.lost_examples.extend(t.lost_examples);
        }
        total
    });
    let summary = |mut latencies: Vec<f64>| {
        latencies.sort_by(f64::total_cmp);
        json!({
            "p50": percentile(&latencies, 0.5),
            "p99": percentile(&latencies, 0.99),
            "p999": percentile(&latencies, 0.999),
            "max": latencies.last(),
            "over_1s": latencies.iter().filter(|&&ms| ms > 1000.0).count(),
        })
    };
    let by_tier: serde_json::Map<String, serde_json::Value> = tally
        .latencies_ms
        .iter()
        .map(|(tier, latencies)| (tier.clone(), summary(latencies.clone())))
        .collect();
    let report = json!({
        "clients": clients,
        "seconds": seconds,
        "requests": tally.complete + tally.clean_errors + tally.lost,
        "complete": tally.complete,
        "clean_errors": tally.clean_errors,
        "lost": tally.lost,
        "by_status": tally.by_status,
        "latency_ms": summary(tally.latencies_ms.values().flatten().copied().collect()),
        "latency_ms_by_tier": by_tier,
        "lost_examples": tally.lost_examples,
    });
    println!("{report}");
}
