//! The audit's figures from its replayed rows: where the traffic would go,
//! what it costs as logged and under the policy (and per month, when the log
//! spans a known period), the cost and quality curve over thresholds, privacy
//! exposure avoided, latency, the local model's agreement with the logged
//! answers, and the requests that drive the remaining cloud spend.

use std::collections::BTreeMap;

use serde::Serialize;

use super::Replayed;
use crate::routing::difficulty::eval::{Quality, Scored, evaluate, random};

#[derive(Debug, Serialize)]
pub struct Summary {
    /// Requests replayed, and lines that were not requests (each reported).
    pub rows: usize,
    pub unreadable_lines: usize,
    pub by_route: BTreeMap<String, usize>,
    pub by_reason: BTreeMap<String, usize>,
    /// Per category, the requests each route takes.
    pub by_category: BTreeMap<String, BTreeMap<String, usize>>,
    pub cost: Cost,
    pub tokens: Tokens,
    /// Every route following the score moved with one threshold: at `t`, a
    /// request scoring `t` or more goes remote. Rules (privacy, eligibility)
    /// keep their routes.
    pub curve: Vec<CurvePoint>,
    /// Where the policy's own thresholds put the traffic.
    pub at_policy: CurvePoint,
    pub quality: Option<QualityFigures>,
    pub privacy: Privacy,
    pub latency: Latency,
    pub agreement: Option<Agreement>,
    /// The requests the policy still sends to the cloud, most expensive first.
    pub top_remote_spend: Vec<Spender>,
    /// The remaining cloud spend per category, most first.
    pub remote_spend_by_category: Vec<(String, f64)>,
    /// What shadow mode observed on live traffic (`--shadow FILE`).
    pub shadow: Option<ShadowFigures>,
}

/// Shadow mode's comparisons, from its file.
#[derive(Debug, Serialize)]
pub struct ShadowFigures {
    pub compared: usize,
    pub mean_agreement: f64,
    /// Per route the routing would have taken: comparisons and mean agreement.
    pub by_would_route: BTreeMap<String, (usize, f64)>,
    /// The remote cost of the compared requests, and of those the routing
    /// would have kept local (what routing would have saved on them).
    pub primary_cost_usd: f64,
    pub would_save_usd: f64,
    pub local_latency_ms: Option<Percentiles>,
}

/// The figures of shadow mode's file lines (`agreement`, `would_route`,
/// `primary_cost_usd`, `local_latency_ms`); lines without an agreement are skipped.
pub fn shadow_figures(lines: &[serde_json::Value]) -> Option<ShadowFigures> {
    let compared: Vec<&serde_json::Value> = lines.iter().filter(|l| l["agreement"].is_number()).collect();
    if compared.is_empty() {
        return None;
    }
    let agreement = |l: &serde_json::Value| l["agreement"].as_f64().unwrap_or(0.0);
    let mut by_would_route: BTreeMap<String, (usize, f64)> = BTreeMap::new();
    for line in &compared {
        let entry = by_would_route
            .entry(line["would_route"].as_str().unwrap_or("unknown").to_string())
            .or_default();
        entry.0 += 1;
        entry.1 += agreement(line);
    }
    for entry in by_would_route.values_mut() {
        entry.1 /= entry.0 as f64;
    }
    let cost = |l: &&serde_json::Value| l["primary_cost_usd"].as_f64().unwrap_or(0.0);
    Some(ShadowFigures {
        compared: compared.len(),
        mean_agreement: compared.iter().map(|l| agreement(l)).sum::<f64>() / compared.len() as f64,
        by_would_route,
        primary_cost_usd: compared.iter().map(cost).sum(),
        would_save_usd: compared
            .iter()
            .filter(|l| l["would_route"].as_str().is_some_and(is_local))
            .map(cost)
            .sum(),
        local_latency_ms: percentiles(compared.iter().filter_map(|l| l["local_latency_ms"].as_f64()).collect()),
    })
}

#[derive(Debug, Serialize)]
pub struct Cost {
    /// As logged (the line's `cost_usd`, else its tokens at the baseline's prices).
    pub logged_usd: f64,
    /// Under the policy: remote answers at their backend's prices, local ones free.
    pub policy_usd: f64,
    pub saved_usd: f64,
    /// `saved_usd / logged_usd`.
    pub saved_share: f64,
    /// The period the log covers: `--period-days`, else its timestamps' span.
    pub period_days: Option<f64>,
    pub monthly: Option<Monthly>,
    pub per_1000_requests: Monthly,
}

#[derive(Debug, Serialize)]
pub struct Monthly {
    pub logged_usd: f64,
    pub policy_usd: f64,
    pub savings_usd: f64,
}

#[derive(Debug, Serialize)]
pub struct Tokens {
    pub prompt: u64,
    pub completion: u64,
    /// Rows whose counts are the upstream's own (logged usage), counted with
    /// the local model's tokenizer, or estimated from characters.
    pub from_logged_usage: usize,
    pub from_local_tokenizer: usize,
    pub estimated: usize,
    /// Rows with no answer to count: their cost is their prompt's alone.
    pub without_completion: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct CurvePoint {
    pub threshold: f64,
    pub local_share: f64,
    pub cost_usd: f64,
    /// Mean quality of the labelled rows routed so (strong model's label
    /// when remote, weak model's when local).
    pub quality: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct QualityFigures {
    pub labelled_rows: usize,
    /// How well the score ranks the labelled rows (as `switchyard route eval`).
    pub router: Quality,
    pub random: Quality,
    pub strong_quality: f64,
    pub weak_quality: f64,
    /// Quality under the policy's routing, and as a share of all-strong quality.
    pub policy_quality: f64,
    pub retention: f64,
}

#[derive(Debug, Serialize)]
pub struct Privacy {
    /// Requests a privacy rule would keep on the machine.
    pub requests: usize,
    pub by_rule: BTreeMap<String, usize>,
    /// Their prompt tokens: text that would not leave the machine.
    pub prompt_tokens: u64,
    /// Of them, requests the log shows went to the cloud (all, in a log of cloud calls).
    pub share_of_requests: f64,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    /// Logged latencies of the requests the policy keeps remote / moves local.
    pub logged_remote_ms: Option<Percentiles>,
    pub logged_moved_local_ms: Option<Percentiles>,
    /// The local model's own latency on the sampled requests.
    pub local_measured_ms: Option<Percentiles>,
}

#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub n: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

#[derive(Debug, Serialize)]
pub struct Agreement {
    pub sampled: usize,
    pub mean: f64,
    pub exact: Option<(usize, f64)>,
    pub similarity: Option<(usize, f64)>,
    /// Open answers a judge model compared (`--judge`): how many, and the
    /// share it found as good as the logged one.
    pub judged: Option<(usize, f64)>,
    /// What the judge's calls cost.
    pub judge_cost_usd: f64,
    pub by_category: BTreeMap<String, (usize, f64)>,
}

#[derive(Debug, Serialize)]
pub struct Spender {
    pub line: usize,
    pub id: String,
    pub category: String,
    pub score: Option<f32>,
    pub cost_usd: f64,
    pub reason: String,
    pub preview: String,
}

/// Thresholds the curve is traced at.
const CURVE_STEPS: usize = 50;
/// Requests listed as the largest remaining spenders.
const TOP_SPENDERS: usize = 20;
const DAYS_PER_MONTH: f64 = 365.25 / 12.0;

fn percentiles(mut values: Vec<f64>) -> Option<Percentiles> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    Some(Percentiles {
        n: values.len(),
        p50: at(0.5),
        p95: at(0.95),
        p99: at(0.99),
    })
}

fn is_remote(route: &str) -> bool {
    route == "remote"
}

fn is_local(route: &str) -> bool {
    route == "local" || route == "local-reasoning"
}

/// The traffic routed at threshold `t` (`None`: as the policy routes it).
fn point(rows: &[Replayed], threshold: Option<f64>) -> CurvePoint {
    let (mut local, mut routed, mut cost) = (0usize, 0usize, 0.0);
    let (mut quality, mut labelled) = (0.0, 0usize);
    for row in rows.iter().filter(|r| r.route != "refused") {
        let remote = match threshold {
            Some(t) if row.scored_route => row.score.is_some_and(|s| f64::from(s) >= t),
            _ => is_remote(&row.route),
        };
        routed += 1;
        if remote {
            cost += if threshold.is_some() && row.scored_route {
                row.remote_cost_usd
            } else {
                row.policy_cost_usd
            };
        } else {
            local += 1;
        }
        if let Some((strong, weak)) = row.quality {
            quality += if remote { strong } else { weak };
            labelled += 1;
        }
    }
    CurvePoint {
        threshold: threshold.unwrap_or(f64::NAN),
        local_share: if routed == 0 { 0.0 } else { local as f64 / routed as f64 },
        cost_usd: cost,
        quality: (labelled > 0).then(|| quality / labelled as f64),
    }
}

/// The summary of `rows`. `period_days` overrides the span the rows'
/// timestamps show.
pub fn summarise(
    rows: &[Replayed],
    unreadable_lines: usize,
    period_days: Option<f64>,
    shadow: Option<ShadowFigures>,
) -> Summary {
    let mut by_route = BTreeMap::new();
    let mut by_reason = BTreeMap::new();
    let mut by_category: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for row in rows {
        *by_route.entry(row.route.clone()).or_default() += 1;
        *by_reason.entry(row.reason.clone()).or_default() += 1;
        *by_category
            .entry(row.category.clone())
            .or_default()
            .entry(row.route.clone())
            .or_default() += 1;
    }

    let logged_usd: f64 = rows.iter().map(|r| r.logged_cost_usd).sum();
    let policy_usd: f64 = rows.iter().map(|r| r.policy_cost_usd).sum();
    let times: Vec<f64> = rows.iter().filter_map(|r| r.at_unix_s).collect();
    let span_days = match (
        times.iter().copied().reduce(f64::min),
        times.iter().copied().reduce(f64::max),
    ) {
        (Some(first), Some(last)) if last > first => Some((last - first) / 86_400.0),
        _ => None,
    };
    let period_days = period_days.or(span_days);
    let scaled = |factor: f64| Monthly {
        logged_usd: logged_usd * factor,
        policy_usd: policy_usd * factor,
        savings_usd: (logged_usd - policy_usd) * factor,
    };
    let cost = Cost {
        logged_usd,
        policy_usd,
        saved_usd: logged_usd - policy_usd,
        saved_share: if logged_usd > 0.0 {
            (logged_usd - policy_usd) / logged_usd
        } else {
            0.0
        },
        period_days,
        monthly: period_days.filter(|d| *d > 0.0).map(|d| scaled(DAYS_PER_MONTH / d)),
        per_1000_requests: scaled(if rows.is_empty() {
            0.0
        } else {
            1000.0 / rows.len() as f64
        }),
    };
    let count = |from: &str| rows.iter().filter(|r| r.tokens_from == from).count();
    let tokens = Tokens {
        prompt: rows.iter().map(|r| r.prompt_tokens).sum(),
        completion: rows.iter().map(|r| r.completion_tokens).sum(),
        from_logged_usage: count("logged"),
        from_local_tokenizer: count("local-tokenizer"),
        estimated: count("estimate"),
        without_completion: rows.iter().filter(|r| r.completion_tokens == 0).count(),
    };

    let curve = (0..=CURVE_STEPS)
        .map(|i| point(rows, Some(i as f64 / CURVE_STEPS as f64)))
        .collect();
    let at_policy = point(rows, None);

    let labelled: Vec<&Replayed> = rows.iter().filter(|r| r.quality.is_some()).collect();
    let quality = (!labelled.is_empty()).then(|| {
        let scored: Vec<Scored> = labelled
            .iter()
            .map(|r| {
                let (strong, weak) = r.quality.expect("labelled");
                Scored {
                    score: r.score.unwrap_or(0.5),
                    strong,
                    weak,
                }
            })
            .collect();
        let mean = |f: fn(&Scored) -> f64| scored.iter().map(f).sum::<f64>() / scored.len() as f64;
        let strong_quality = mean(|s| s.strong);
        let policy_quality = at_policy.quality.unwrap_or(f64::NAN);
        QualityFigures {
            labelled_rows: scored.len(),
            router: evaluate(&scored),
            random: random(&scored, 200, 17),
            strong_quality,
            weak_quality: mean(|s| s.weak),
            policy_quality,
            retention: if strong_quality > 0.0 {
                policy_quality / strong_quality
            } else {
                f64::NAN
            },
        }
    });

    let private: Vec<&Replayed> = rows.iter().filter(|r| r.privacy_rule.is_some()).collect();
    let mut by_rule = BTreeMap::new();
    for row in &private {
        *by_rule.entry(row.privacy_rule.clone().expect("private")).or_default() += 1;
    }
    let privacy = Privacy {
        requests: private.len(),
        by_rule,
        prompt_tokens: private.iter().map(|r| r.prompt_tokens).sum(),
        share_of_requests: if rows.is_empty() {
            0.0
        } else {
            private.len() as f64 / rows.len() as f64
        },
    };

    let latencies = |keep: fn(&str) -> bool| {
        percentiles(
            rows.iter()
                .filter(|r| keep(&r.route))
                .filter_map(|r| r.latency_ms)
                .collect(),
        )
    };
    let latency = Latency {
        logged_remote_ms: latencies(is_remote),
        logged_moved_local_ms: latencies(is_local),
        local_measured_ms: percentiles(rows.iter().filter_map(|r| Some(r.local.as_ref()?.latency_ms)).collect()),
    };

    let sampled: Vec<&Replayed> = rows.iter().filter(|r| r.local.is_some()).collect();
    let agreement = (!sampled.is_empty()).then(|| {
        let of = |method: &str| {
            let values: Vec<f64> = sampled
                .iter()
                .filter_map(|r| r.local.as_ref().filter(|l| l.method == method).map(|l| l.agreement))
                .collect();
            (!values.is_empty()).then(|| (values.len(), values.iter().sum::<f64>() / values.len() as f64))
        };
        let mut by_category: BTreeMap<String, (usize, f64)> = BTreeMap::new();
        for row in &sampled {
            let entry = by_category.entry(row.category.clone()).or_default();
            entry.0 += 1;
            entry.1 += row.local.as_ref().expect("sampled").agreement;
        }
        for entry in by_category.values_mut() {
            entry.1 /= entry.0 as f64;
        }
        Agreement {
            sampled: sampled.len(),
            mean: sampled
                .iter()
                .map(|r| r.local.as_ref().expect("sampled").agreement)
                .sum::<f64>()
                / sampled.len() as f64,
            exact: of("exact"),
            similarity: of("similarity"),
            judged: of("judge"),
            judge_cost_usd: sampled.iter().filter_map(|r| r.local.as_ref()?.judge_cost_usd).sum(),
            by_category,
        }
    });

    let mut remote: Vec<&Replayed> = rows.iter().filter(|r| is_remote(&r.route)).collect();
    remote.sort_by(|a, b| b.policy_cost_usd.total_cmp(&a.policy_cost_usd));
    let top_remote_spend = remote
        .iter()
        .take(TOP_SPENDERS)
        .map(|r| Spender {
            line: r.line,
            id: r.id.clone(),
            category: r.category.clone(),
            score: r.score,
            cost_usd: r.policy_cost_usd,
            reason: r.reason.clone(),
            preview: r.preview.clone(),
        })
        .collect();
    let mut spend: BTreeMap<String, f64> = BTreeMap::new();
    for row in &remote {
        *spend.entry(row.category.clone()).or_default() += row.policy_cost_usd;
    }
    let mut remote_spend_by_category: Vec<(String, f64)> = spend.into_iter().collect();
    remote_spend_by_category.sort_by(|a, b| b.1.total_cmp(&a.1));

    Summary {
        rows: rows.len(),
        unreadable_lines,
        by_route,
        by_reason,
        by_category,
        cost,
        tokens,
        curve,
        at_policy,
        quality,
        privacy,
        latency,
        agreement,
        top_remote_spend,
        remote_spend_by_category,
        shadow,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(line: usize, route: &str, score: f32, cost: f64, quality: Option<(f64, f64)>) -> Replayed {
        Replayed {
            line,
            id: format!("r{line}"),
            endpoint: "chat".into(),
            category: if line.is_multiple_of(2) { "even" } else { "odd" }.into(),
            route: route.into(),
            backend: String::new(),
            reason: "score-low".into(),
            score: Some(score),
            prompt_tokens: 100,
            completion_tokens: 10,
            tokens_from: "logged".into(),
            logged_cost_usd: cost,
            policy_cost_usd: if route == "remote" { cost } else { 0.0 },
            remote_cost_usd: cost,
            scored_route: true,
            privacy_rule: None,
            latency_ms: Some(line as f64),
            at_unix_s: Some(1_700_000_000.0 + line as f64 * 8_640.0),
            quality,
            preview: String::new(),
            local: None,
        }
    }

    #[test]
    fn the_curve_moves_the_scored_routes_and_the_policy_point_is_as_routed() {
        let rows: Vec<Replayed> = (0..10)
            .map(|i| {
                let route = if i < 6 { "local" } else { "remote" };
                row(
                    i,
                    route,
                    i as f32 / 10.0,
                    1.0,
                    Some((1.0, if i < 5 { 1.0 } else { 0.0 })),
                )
            })
            .collect();
        let summary = summarise(&rows, 0, None, None);
        assert_eq!(summary.cost.logged_usd, 10.0);
        assert_eq!(summary.cost.policy_usd, 4.0);
        assert_eq!(summary.at_policy.local_share, 0.6);
        assert_eq!(summary.at_policy.quality, Some(0.9));
        let first = &summary.curve[0];
        assert_eq!(
            (first.local_share, first.cost_usd, first.quality),
            (0.0, 10.0, Some(1.0))
        );
        let last = summary.curve.last().unwrap();
        assert_eq!((last.local_share, last.cost_usd, last.quality), (1.0, 0.0, Some(0.5)));
        // Nine rows 8,640 s apart: 0.9 days, scaled to a month.
        let monthly = summary.cost.monthly.unwrap();
        assert!((monthly.policy_usd - 4.0 * DAYS_PER_MONTH / 0.9).abs() < 1e-9);
        assert_eq!(summary.quality.as_ref().unwrap().retention, 0.9);
        assert_eq!(summary.top_remote_spend.len(), 4);
        assert_eq!(summary.by_category["even"]["local"], 3);
    }

    #[test]
    fn shadow_lines_sum_up_by_the_route_they_would_take() {
        let lines = vec![
            serde_json::json!({ "agreement": 1.0, "would_route": "local", "primary_cost_usd": 0.5, "local_latency_ms": 100.0 }),
            serde_json::json!({ "agreement": 0.5, "would_route": "local", "primary_cost_usd": 0.25, "local_latency_ms": 300.0 }),
            serde_json::json!({ "agreement": 0.0, "would_route": "remote", "primary_cost_usd": 1.0, "local_latency_ms": 200.0 }),
            serde_json::json!({ "half": "a line cut by a kill is skipped" }),
        ];
        let figures = shadow_figures(&lines).unwrap();
        assert_eq!((figures.compared, figures.mean_agreement), (3, 0.5));
        assert_eq!(figures.by_would_route["local"], (2, 0.75));
        assert_eq!((figures.primary_cost_usd, figures.would_save_usd), (1.75, 0.75));
        assert_eq!(figures.local_latency_ms.unwrap().p50, 200.0);
        assert!(shadow_figures(&lines[3..]).is_none());
    }
}
