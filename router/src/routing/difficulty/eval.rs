//! How well a score routes, as in the RouteLLM paper: sort the prompts by
//! score (highest first to the strong model), send the top fraction to the
//! strong model and the rest to the weak one, and trace quality against the
//! fraction of strong calls.
//!
//! PGR(f) = (q(f) - q_weak) / (q_strong - q_weak); APGR is the area under PGR
//! over f in [0, 1] (trapezoids over every possible number of strong calls);
//! CPT(x) is the smallest fraction of strong calls whose PGR reaches x.

use serde::Serialize;

/// One prompt's labels and score.
#[derive(Debug, Clone, Copy)]
pub struct Scored {
    pub score: f32,
    pub strong: f64,
    pub weak: f64,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Quality {
    pub apgr: f64,
    pub cpt50: f64,
    pub cpt80: f64,
    /// CPT at the PGR that reaches 95% of the strong model's quality.
    pub cpt_95_quality: f64,
}

/// PGR after 0, 1, ..., n strong calls, in the order given.
fn pgr_curve(order: &[Scored]) -> Vec<f64> {
    let n = order.len() as f64;
    let q_weak: f64 = order.iter().map(|s| s.weak).sum::<f64>() / n;
    let q_strong: f64 = order.iter().map(|s| s.strong).sum::<f64>() / n;
    let gap = q_strong - q_weak;
    let mut q = q_weak;
    let mut curve = Vec::with_capacity(order.len() + 1);
    curve.push(0.0);
    for s in order {
        q += (s.strong - s.weak) / n;
        curve.push(if gap.abs() < 1e-12 { 1.0 } else { (q - q_weak) / gap });
    }
    curve
}

fn summarise(curve: &[f64], q_weak: f64, q_strong: f64) -> Quality {
    let steps = (curve.len() - 1) as f64;
    let apgr = curve.windows(2).map(|w| (w[0] + w[1]) / 2.0).sum::<f64>() / steps;
    let cpt = |x: f64| curve.iter().position(|&p| p >= x).map_or(1.0, |k| k as f64 / steps);
    // 95% of the strong model's quality, as a PGR.
    let gap = q_strong - q_weak;
    let pgr_95 = if gap.abs() < 1e-12 {
        0.0
    } else {
        (0.95 * q_strong - q_weak) / gap
    };
    Quality {
        apgr,
        cpt50: cpt(0.5),
        cpt80: cpt(0.8),
        cpt_95_quality: cpt(pgr_95.max(0.0)),
    }
}

fn qualities(rows: &[Scored]) -> (f64, f64) {
    let n = rows.len() as f64;
    (
        rows.iter().map(|s| s.weak).sum::<f64>() / n,
        rows.iter().map(|s| s.strong).sum::<f64>() / n,
    )
}

/// The router's quality: highest score first; ties keep the given order.
pub fn evaluate(rows: &[Scored]) -> Quality {
    let mut order = rows.to_vec();
    order.sort_by(|a, b| b.score.total_cmp(&a.score));
    let (q_weak, q_strong) = qualities(rows);
    summarise(&pgr_curve(&order), q_weak, q_strong)
}

/// The best possible router: rows where the strong model gains most first.
pub fn oracle(rows: &[Scored]) -> Quality {
    let mut order = rows.to_vec();
    order.sort_by(|a, b| (b.strong - b.weak).total_cmp(&(a.strong - a.weak)));
    let (q_weak, q_strong) = qualities(rows);
    summarise(&pgr_curve(&order), q_weak, q_strong)
}

/// Random routing, averaged over `repeats` seeded shuffles.
pub fn random(rows: &[Scored], repeats: usize, seed: u64) -> Quality {
    let mut state = seed;
    let mut next = || super::train::splitmix(&mut state);
    let (q_weak, q_strong) = qualities(rows);
    let mut total = Quality {
        apgr: 0.0,
        cpt50: 0.0,
        cpt80: 0.0,
        cpt_95_quality: 0.0,
    };
    for _ in 0..repeats {
        let mut order = rows.to_vec();
        for i in (1..order.len()).rev() {
            order.swap(i, (next() % (i as u64 + 1)) as usize);
        }
        let q = summarise(&pgr_curve(&order), q_weak, q_strong);
        total.apgr += q.apgr;
        total.cpt50 += q.cpt50;
        total.cpt80 += q.cpt80;
        total.cpt_95_quality += q.cpt_95_quality;
    }
    let r = repeats as f64;
    Quality {
        apgr: total.apgr / r,
        cpt50: total.cpt50 / r,
        cpt80: total.cpt80 / r,
        cpt_95_quality: total.cpt_95_quality / r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(pattern: &[(f32, f64, f64)]) -> Vec<Scored> {
        pattern
            .iter()
            .map(|&(score, strong, weak)| Scored { score, strong, weak })
            .collect()
    }

    #[test]
    fn a_perfect_ranking_recovers_the_gap_first() {
        // Two rows where only the strong model is right, two where both are.
        let data = rows(&[(0.9, 1.0, 0.0), (0.8, 1.0, 0.0), (0.2, 1.0, 1.0), (0.1, 1.0, 1.0)]);
        let q = evaluate(&data);
        assert!((q.cpt80 - 0.5).abs() < 1e-12 && (q.cpt50 - 0.25).abs() < 1e-12, "{q:?}");
        // PGR 0, .5, 1, 1, 1: area (0.25 + 0.75 + 1 + 1) / 4.
        assert!((q.apgr - 0.75).abs() < 1e-12, "{q:?}");
        assert_eq!(q, oracle(&data));
        let reversed = evaluate(&rows(&[
            (0.1, 1.0, 0.0),
            (0.2, 1.0, 0.0),
            (0.8, 1.0, 1.0),
            (0.9, 1.0, 1.0),
        ]));
        assert!(reversed.apgr < 0.3 && reversed.cpt80 == 1.0, "{reversed:?}");
    }

    #[test]
    fn random_routing_is_about_half() {
        let data: Vec<Scored> = (0..400)
            .map(|i| Scored {
                score: 0.0,
                strong: 1.0,
                weak: f64::from(u8::from(i % 3 == 0)),
            })
            .collect();
        let q = random(&data, 50, 7);
        assert!((q.apgr - 0.5).abs() < 0.02 && (q.cpt80 - 0.8).abs() < 0.03, "{q:?}");
    }
}
