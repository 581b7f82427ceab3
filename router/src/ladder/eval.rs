//! What the ladder buys on labelled data.
//!
//! Each labelled row says whether the weak and the strong model answered it
//! correctly. Routing alone keeps the rows scoring below a cut local (the weak
//! model's label counts) and sends the rest remote (the strong model's label).
//! With the ladder, the local model really answers each row kept local, and the
//! rows whose answer it judges weak are escalated (they get the strong label).
//! Both are compared at the policy's cut, and routing alone also at the cut that
//! keeps as many rows local as the ladder does, so the two are compared at equal
//! cost.
//!
//! The local model's own correctness is not in the labels: the weak model's
//! label stands in for it. What is measured is whether the local model's
//! confidence picks out the rows where the weak answer falls short, beyond what
//! the score already knew.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::{Value, json};

use super::hold;
use crate::backends::local::LocalBackend;
use crate::openai::request::ChatRequest;
use crate::policy::LadderConfig;

/// One labelled row, with its difficulty score.
pub struct Row {
    pub id: String,
    pub prompt: String,
    pub score: f32,
    pub weak_correct: f64,
    pub strong_correct: f64,
}

impl Row {
    /// A row of the routing data format (with `strong`/`weak` named), or `None`.
    pub fn from_labelled(value: &Value, scores: &HashMap<String, f32>) -> Option<Row> {
        let id = value["id"].as_str()?.to_string();
        let label = |field: &str| value["labels"][value[field].as_str()?].as_f64();
        Some(Row {
            score: *scores.get(&id)?,
            prompt: value["prompt"].as_str()?.to_string(),
            weak_correct: label("weak")?,
            strong_correct: label("strong")?,
            id,
        })
    }
}

#[derive(Debug, Serialize)]
pub struct Strategy {
    pub name: String,
    pub local_share: f64,
    pub quality: f64,
    /// Performance gap recovered: (quality - all weak) / (all strong - all weak).
    pub pgr: f64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub rows: usize,
    pub cut: f32,
    pub all_weak: f64,
    pub all_strong: f64,
    pub strategies: Vec<Strategy>,
    /// How often each weakness escalated a row.
    pub escalations: HashMap<String, usize>,
    /// The calibration sweep: for each candidate `min_mean_logprob`, the
    /// ladder against routing alone at the same local share.
    pub sweep: Vec<SweepPoint>,
}

#[derive(Debug, Serialize)]
pub struct SweepPoint {
    pub min_mean_logprob: f64,
    pub local_share: f64,
    pub ladder_pgr: f64,
    pub routing_alone_pgr: f64,
}

/// Runs the local model on every row below `cut` and compares the strategies.
pub async fn evaluate(
    local: &LocalBackend,
    rows: &[Row],
    cut: f32,
    max_tokens: u64,
    ladder: &LadderConfig,
) -> Result<Report, String> {
    let n = rows.len() as f64;
    let all_weak = rows.iter().map(|r| r.weak_correct).sum::<f64>() / n;
    let all_strong = rows.iter().map(|r| r.strong_correct).sum::<f64>() / n;
    let pgr = |q: f64| (q - all_weak) / (all_strong - all_weak);
    let strategy = |name: String, local: &[bool]| {
        let quality = rows
            .iter()
            .zip(local)
            .map(|(r, &l)| if l { r.weak_correct } else { r.strong_correct })
            .sum::<f64>()
            / n;
        Strategy {
            name,
            local_share: local.iter().filter(|&&l| l).count() as f64 / n,
            quality,
            pgr: pgr(quality),
        }
    };

    let routed: Vec<bool> = rows.iter().map(|r| r.score < cut).collect();
    let mut laddered = routed.clone();
    let mut escalations: HashMap<String, usize> = HashMap::new();
    // Mean token log-probability of each local answer judged only on confidence.
    let mut confidence: Vec<Option<f32>> = vec![None; rows.len()];
    for (i, row) in rows.iter().enumerate().filter(|(i, _)| routed[*i]) {
        let body = json!({
            "model": "local",
            "max_tokens": max_tokens,
            "temperature": 0,
            "messages": [{ "role": "user", "content": row.prompt }],
        });
        let request = ChatRequest::parse(body.to_string().as_bytes()).map_err(|e| e.message())?;
        let mut generation = match local.generate(&request, &row.id).await {
            Ok(generation) => generation,
            // Too long for the local model: the router would not have kept it local.
            Err(crate::outcome::BackendError::ContextLengthExceeded { .. }) => {
                laddered[i] = false;
                *escalations.entry("ineligible-context".into()).or_default() += 1;
                continue;
            }
            Err(err) => return Err(crate::openai::error::ApiError::from(err).message()),
        };
        let (held, weakness) = hold(&mut generation, false, ladder).await;
        let mut signals = super::confidence::Signals::default();
        held.iter().for_each(|p| signals.observe(p));
        if weakness.is_none() || weakness == Some(super::confidence::Weakness::LowConfidence) {
            confidence[i] = Some(signals.mean_logprob);
        }
        if let Some(weakness) = weakness {
            laddered[i] = false;
            *escalations.entry(weakness.reason().as_str().into()).or_default() += 1;
        }
    }

    // Routing alone at equal cost: the same number of rows kept local, the
    // lowest-scoring ones.
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by(|&a, &b| rows[a].score.total_cmp(&rows[b].score));
    let matched_to = |kept: &[bool]| {
        let share = kept.iter().filter(|&&l| l).count();
        let mut matched = vec![false; rows.len()];
        for &i in order.iter().take(share) {
            matched[i] = true;
        }
        matched
    };
    let matched = matched_to(&laddered);
    // The sweep: escalate the rows whose confidence is below each candidate.
    let mut values: Vec<f32> = confidence.iter().flatten().copied().collect();
    values.sort_by(f32::total_cmp);
    let mut sweep = Vec::new();
    for q in [0.05, 0.1, 0.2, 0.3, 0.4, 0.5] {
        let Some(&threshold) = values.get((values.len() as f64 * q) as usize) else {
            continue;
        };
        let kept: Vec<bool> = (0..rows.len())
            .map(|i| laddered[i] && confidence[i].is_none_or(|c| c >= threshold))
            .collect();
        let ladder = strategy(String::new(), &kept);
        let alone = strategy(String::new(), &matched_to(&kept));
        sweep.push(SweepPoint {
            min_mean_logprob: f64::from(threshold),
            local_share: ladder.local_share,
            ladder_pgr: ladder.pgr,
            routing_alone_pgr: alone.pgr,
        });
    }
    let strategies = vec![
        strategy(format!("routing alone, cut {cut}"), &routed),
        strategy(format!("routing + ladder, cut {cut}"), &laddered),
        strategy("routing alone, same local share as the ladder".into(), &matched),
    ];
    Ok(Report {
        rows: rows.len(),
        cut,
        all_weak,
        all_strong,
        strategies,
        escalations,
        sweep,
    })
}
