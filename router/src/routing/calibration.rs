//! Thresholds from evidence: the most traffic the local model may take while
//! the quality kept stays at or above a target, with a stated confidence.
//!
//! Each calibration row has the difficulty score the router gives it and two
//! qualities in [0, 1]: the remote (strong) model's and the local (weak)
//! model's. Labelled routing data gives both; shadow or audit rows give the
//! local answer's agreement with the remote one (the remote answer being the
//! reference, quality 1).
//!
//! At threshold `t` a request scoring below `t` is answered locally. Its loss
//! is the quality it gives up, `max(strong - weak, 0)` when local, 0 when
//! remote: bounded in [0, 1] and never smaller for a larger `t`. Quality
//! retention is at least the target when the expected loss is at most
//! `alpha = (1 - target) * E[strong]`.
//!
//! The method is a risk-controlling threshold (Bates, Angelopoulos, Lei,
//! Malik and Jordan, "Distribution-free, risk-controlling prediction sets",
//! 2021): with `delta = 1 - confidence`, split in two by Bonferroni, `E[strong]`
//! gets a lower and each threshold's expected loss an upper bound from the
//! `n` rows, by Hoeffding's inequality in its relative-entropy form (1963,
//! Theorem 1; valid for any values in [0, 1], and much tighter than the
//! square-root form when the loss allowed is a few percent); thresholds are
//! tested from all-remote upward and the last one whose upper bound stays
//! within `alpha` is kept (fixed-sequence testing, valid because the loss only
//! grows with `t`). Then, with probability at least `confidence` over the
//! calibration rows, new traffic from the same distribution keeps at least the
//! target's share of the remote model's quality in expectation. The bound errs
//! towards the remote model.

use serde::Serialize;

/// One calibration row.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    pub score: f32,
    pub strong: f64,
    pub weak: f64,
}

/// The chosen threshold and what it means on the calibration rows.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Calibrated {
    /// Requests scoring below it may be answered locally.
    pub threshold: f32,
    pub rows: usize,
    /// The share of the calibration rows below the threshold.
    pub local_share: f64,
    /// The quality kept on the calibration rows (losses only, as the bound).
    pub retention: f64,
    /// The retention asked, which the threshold keeps at the confidence asked.
    pub target: f64,
}

/// The relative entropy of Bernoulli(`q`) from Bernoulli(`p`).
fn kl(p: f64, q: f64) -> f64 {
    let term = |a: f64, b: f64| if a <= 0.0 { 0.0 } else { a * (a / b).ln() };
    term(p, q) + term(1.0 - p, 1.0 - q)
}

/// The mean's bound at `delta` from `n` values in [0, 1] averaging `mean`:
/// the farthest `q` (above when `upper`, else below) with
/// `n * kl(mean, q) <= ln(1 / delta)`.
fn bound(mean: f64, n: usize, delta: f64, upper: bool) -> f64 {
    let budget = (1.0 / delta).ln() / n as f64;
    let (mut inside, mut outside) = (mean, if upper { 1.0 } else { 0.0 });
    for _ in 0..60 {
        let mid = (inside + outside) / 2.0;
        if kl(mean, mid) <= budget {
            inside = mid;
        } else {
            outside = mid;
        }
    }
    inside
}

/// The largest threshold that keeps `target` of the strong model's quality
/// with probability `confidence`; `Err` when even all-remote cannot be
/// certified (too few rows for the confidence asked).
pub fn calibrate(rows: &[Row], target: f64, confidence: f64) -> Result<Calibrated, String> {
    if !(0.0..=1.0).contains(&target) || !(0.0..1.0).contains(&confidence) {
        return Err("the target must be in [0, 1] and the confidence in [0, 1)".into());
    }
    let n = rows.len();
    if n == 0 {
        return Err("no calibration rows".into());
    }
    let delta = (1.0 - confidence) / 2.0;
    let strong_mean = rows.iter().map(|r| r.strong).sum::<f64>() / n as f64;
    let alpha = (1.0 - target) * bound(strong_mean, n, delta, false);
    let certified = |loss: f64| bound(loss / n as f64, n, delta, true) <= alpha;
    // Rows in score order: a threshold just above the k-th score makes the
    // first k local.
    let mut sorted: Vec<&Row> = rows.iter().collect();
    sorted.sort_by(|a, b| a.score.total_cmp(&b.score));
    let mut loss = 0.0;
    let mut local = 0usize;
    let mut best: Option<(usize, f64)> = certified(0.0).then_some((0, 0.0));
    if best.is_none() {
        return Err(format!(
            "{n} rows cannot certify even all-remote routing at confidence {confidence}: give more rows or ask less"
        ));
    }
    while local < n {
        // Every row of the same score moves together.
        let score = sorted[local].score;
        let mut next = local;
        let mut added = 0.0;
        while next < n && sorted[next].score == score {
            added += (sorted[next].strong - sorted[next].weak).max(0.0);
            next += 1;
        }
        if !certified(loss + added) {
            break;
        }
        loss += added;
        local = next;
        best = Some((local, loss));
    }
    let (local, loss) = best.expect("all-remote is certified");
    let threshold = if local == 0 {
        0.0
    } else if local == n {
        1.0
    } else {
        // Between the last local row's score and the first remote one's.
        (sorted[local - 1].score + sorted[local].score) / 2.0
    };
    let strong_total = strong_mean * n as f64;
    Ok(Calibrated {
        threshold,
        rows: n,
        local_share: local as f64 / n as f64,
        retention: if strong_total > 0.0 {
            1.0 - loss / strong_total
        } else {
            1.0
        },
        target,
    })
}

/// The quality kept at `threshold` on `rows` (gains of the weak model counted
/// too): what a team would see on new traffic.
pub fn retention_at(rows: &[Row], threshold: f32) -> f64 {
    let strong: f64 = rows.iter().map(|r| r.strong).sum();
    let routed: f64 = rows
        .iter()
        .map(|r| if r.score < threshold { r.weak } else { r.strong })
        .sum();
    if strong > 0.0 { routed / strong } else { 1.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_weak_model_as_good_as_the_strong_one_takes_everything() {
        let rows: Vec<Row> = (0..2000)
            .map(|i| Row {
                score: i as f32 / 2000.0,
                strong: 1.0,
                weak: 1.0,
            })
            .collect();
        let c = calibrate(&rows, 0.95, 0.9).unwrap();
        assert_eq!((c.threshold, c.local_share, c.retention), (1.0, 1.0, 1.0));
    }

    #[test]
    fn the_threshold_stops_where_the_bound_would_pass_the_target() {
        // The weak model fails every row scoring 0.5 or more.
        let rows: Vec<Row> = (0..4000)
            .map(|i| {
                let score = i as f32 / 4000.0;
                Row {
                    score,
                    strong: 1.0,
                    weak: if score < 0.5 { 1.0 } else { 0.0 },
                }
            })
            .collect();
        let c = calibrate(&rows, 0.9, 0.9).unwrap();
        // The 0.1 budget less the bound's slack at n = 4000 lets ~9% of all
        // rows be lost above 0.5.
        assert!(c.threshold > 0.55 && c.threshold < 0.6, "{c:?}");
        assert!(c.retention >= 0.9 && retention_at(&rows, c.threshold) >= 0.9, "{c:?}");
        assert!(
            calibrate(&rows[..10], 0.99, 0.99).is_err(),
            "ten rows certify nothing at 99%"
        );
    }

    /// Held-out MMLU, scored by the shipped router, split at random into a
    /// calibration half and a half standing for new traffic, 200 times: the
    /// quality kept on the new half meets the target in at least the
    /// confidence's share of the splits, and the calibrated thresholds do
    /// move traffic to the local model.
    #[test]
    fn retention_holds_on_held_out_traffic_across_resamples() {
        use crate::routing::difficulty::{DifficultyModel, data};
        use crate::routing::features::Features;
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/routing/routellm_mmlu_heldout.jsonl");
        let model = DifficultyModel::embedded();
        let rows: Vec<Row> = data::read_jsonl(std::path::Path::new(path))
            .unwrap()
            .iter()
            .filter_map(data::example)
            .map(|e| Row {
                score: model.score(&Features::from_text(&e.prompt), &e.prompt),
                strong: e.strong,
                weak: e.weak,
            })
            .collect();
        assert!(rows.len() > 3000);
        // A fixed stream of splits.
        let mut state = 0x5eed_u64;
        let mut next = || crate::routing::difficulty::train::splitmix(&mut state);
        for (target, confidence) in [(0.9, 0.9), (0.95, 0.9), (0.98, 0.8)] {
            let (mut held, mut shares) = (0usize, 0.0);
            let resamples = 200;
            for _ in 0..resamples {
                let (mut calibration, mut fresh) = (Vec::new(), Vec::new());
                for row in &rows {
                    if next() % 2 == 0 {
                        calibration.push(*row)
                    } else {
                        fresh.push(*row)
                    }
                }
                let c = calibrate(&calibration, target, confidence).unwrap();
                held += usize::from(retention_at(&fresh, c.threshold) >= target);
                shares += c.local_share;
            }
            let rate = held as f64 / resamples as f64;
            let share = shares / resamples as f64;
            println!("target {target}, confidence {confidence}: held in {rate} of the splits, {share:.3} kept local");
            assert!(rate >= confidence, "target {target}: held in {rate} of the splits");
            assert!(share > 0.02, "target {target}: only {share} kept local");
        }
    }
}
