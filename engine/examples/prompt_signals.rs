//! How the local model reads each prompt of a JSONL file (rows with `id` and
//! `prompt`): its surprise at the prompt's tokens and its confidence about what
//! comes next, one JSON row per prompt. Research input for the router.
//! `cargo run --release -p switchyard-engine --example prompt_signals -- MODEL.gguf IN.jsonl OUT.jsonl`

use std::io::{BufRead, BufWriter, Write};
use std::path::Path;

use switchyard_engine::engine::LocalModel;

fn entropy(logprobs: &[f32]) -> f64 {
    logprobs
        .iter()
        .map(|&lp| {
            let p = f64::from(lp).exp();
            if p > 0.0 { -p * f64::from(lp) } else { 0.0 }
        })
        .sum()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, input, output] = args.as_slice() else {
        eprintln!("usage: prompt_signals MODEL.gguf IN.jsonl OUT.jsonl");
        std::process::exit(2);
    };
    let model = LocalModel::load(Path::new(model), Some(4096)).expect("load the model");
    let letters: Vec<u32> = ["ĠA", "ĠB", "ĠC", "ĠD"]
        .iter()
        .map(|t| model.tokenizer.token_id(t).expect("letter tokens"))
        .collect();
    let reader = std::io::BufReader::new(std::fs::File::open(input).expect("open the input"));
    let mut out = BufWriter::new(std::fs::File::create(output).expect("create the output"));
    let started = std::time::Instant::now();
    for (n, line) in reader.lines().enumerate() {
        let line = line.expect("read a line");
        let row: serde_json::Value = serde_json::from_str(&line).expect("a JSON row");
        let prompt = row["prompt"].as_str().expect("a prompt");
        let mut tokens = model.tokenizer.encode(prompt, false).expect("encode");
        tokens.truncate(2048);
        let reading = model.read_prompt(&tokens).expect("read the prompt");
        let mut lps = reading.token_logprobs.clone();
        let mean = lps.iter().map(|&l| f64::from(l)).sum::<f64>() / lps.len().max(1) as f64;
        lps.sort_by(|a, b| a.total_cmp(b));
        let quantile = |q: f64| lps.get(((lps.len() as f64 - 1.0) * q) as usize).copied().unwrap_or(0.0);
        let next = &reading.next_logprobs;
        let top1 = next.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let letter_lps: Vec<f32> = letters.iter().map(|&id| next[id as usize]).collect();
        let letter_z = switchyard_engine::sampling::log_sum_exp(&letter_lps);
        let letter_norm: Vec<f32> = letter_lps.iter().map(|&l| l - letter_z).collect();
        let record = serde_json::json!({
            "id": row["id"],
            "tokens": tokens.len(),
            "mean_logprob": mean,
            "p10_logprob": quantile(0.1),
            "p50_logprob": quantile(0.5),
            "min_logprob": quantile(0.0),
            "next_entropy": entropy(next),
            "next_top1": top1,
            "letter_mass": f64::from(letter_z).exp(),
            "letter_max": f64::from(letter_norm.iter().copied().fold(f32::NEG_INFINITY, f32::max)).exp(),
            "letter_entropy": entropy(&letter_norm),
        });
        writeln!(out, "{record}").expect("write");
        if (n + 1) % 200 == 0 {
            eprintln!("{} rows, {:.0} s", n + 1, started.elapsed().as_secs_f64());
        }
    }
}
