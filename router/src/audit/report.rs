//! `report.html`: the audit's summary as one self-contained page (inline CSS
//! and SVG drawn here, no script, no CDN), to open from disk or mail around.

use std::fmt::Write;

use super::summary::{CurvePoint, Percentiles, Summary};

const COLORS: [(&str, &str); 4] = [
    ("local", "#3fb950"),
    ("local-reasoning", "#d29922"),
    ("remote", "#58a6ff"),
    ("refused", "#8b98a5"),
];

fn color(route: &str) -> &'static str {
    COLORS.iter().find(|(r, _)| *r == route).map_or("#8b98a5", |(_, c)| c)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn usd(value: f64) -> String {
    if value.abs() >= 100.0 {
        format!("${value:.0}")
    } else if value.abs() >= 1.0 {
        format!("${value:.2}")
    } else {
        format!("${value:.4}")
    }
}

fn percent(value: f64) -> String {
    format!("{:.1}%", value * 100.0)
}

/// Horizontal bars, one per `(label, value, color)`.
fn bars(id: &str, items: &[(String, f64, &str)], unit: fn(f64) -> String) -> String {
    let max = items
        .iter()
        .map(|(_, v, _)| *v)
        .fold(0.0, f64::max)
        .max(f64::MIN_POSITIVE);
    let height = 28 * items.len() + 8;
    let mut svg = format!(r#"<svg id="{id}" class="chart" viewBox="0 0 560 {height}" width="100%" height="{height}">"#);
    for (i, (label, value, fill)) in items.iter().enumerate() {
        let y = 4 + i * 28;
        let width = (value / max * 300.0).max(1.0);
        let _ = write!(
            svg,
            r#"<text x="0" y="{ty}">{label}</text><rect class="bar" data-label="{label}" data-value="{value}" x="170" y="{y}" width="{width:.1}" height="20" rx="3" fill="{fill}"/><text x="{tx:.1}" y="{ty}">{shown}</text>"#,
            ty = y + 15,
            label = escape(label),
            tx = 176.0 + width,
            shown = unit(*value),
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The cost (and quality) curve against the share kept local.
fn curve(points: &[CurvePoint], policy: &CurvePoint) -> String {
    let (w, h, left, bottom, top) = (560.0, 260.0, 60.0, 30.0, 10.0);
    let max_cost = points
        .iter()
        .map(|p| p.cost_usd)
        .fold(0.0, f64::max)
        .max(f64::MIN_POSITIVE);
    let x = |share: f64| left + share * (w - left - 50.0);
    let y_cost = |cost: f64| top + (1.0 - cost / max_cost) * (h - top - bottom);
    let y_quality = |q: f64| top + (1.0 - q) * (h - top - bottom);
    let mut svg = format!(r#"<svg id="curve" class="chart" viewBox="0 0 {w} {h}" width="100%" height="{h}">"#);
    let _ = write!(
        svg,
        r##"<line x1="{left}" y1="{yb}" x2="{xr}" y2="{yb}" stroke="#263140"/><text x="{left}" y="{yl}">0% local</text><text x="{xm}" y="{yl}">100% local</text><text x="0" y="{yt}">{max}</text><text x="0" y="{yb}">$0</text>"##,
        yb = h - bottom,
        xr = w - 50.0,
        yl = h - 8.0,
        xm = w - 120.0,
        yt = top + 10.0,
        max = usd(max_cost),
    );
    let path = |f: &dyn Fn(&CurvePoint) -> Option<f64>| {
        points
            .iter()
            .filter_map(|p| Some(format!("{:.1},{:.1}", x(p.local_share), f(p)?)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let _ = write!(
        svg,
        r##"<polyline class="cost" points="{}" fill="none" stroke="#58a6ff" stroke-width="2"/>"##,
        path(&|p| Some(y_cost(p.cost_usd)))
    );
    if points.iter().any(|p| p.quality.is_some()) {
        let _ = write!(
            svg,
            r##"<polyline class="quality" points="{}" fill="none" stroke="#3fb950" stroke-width="2" stroke-dasharray="5 3"/><text x="{xq}" y="{yq}">quality 1</text><text x="{xq}" y="{yb}">quality 0</text>"##,
            path(&|p| p.quality.map(y_quality)),
            xq = w - 48.0,
            yq = top + 10.0,
            yb = h - bottom,
        );
    }
    let _ = write!(
        svg,
        r##"<circle class="policy" cx="{:.1}" cy="{:.1}" r="6" fill="#d29922"/><text x="{:.1}" y="{:.1}">the policy</text></svg>"##,
        x(policy.local_share),
        y_cost(policy.cost_usd),
        x(policy.local_share) + 9.0,
        y_cost(policy.cost_usd) - 8.0,
    );
    svg
}

fn latency_row(label: &str, p: Option<&Percentiles>) -> String {
    match p {
        Some(p) => format!(
            "<tr><td>{label}</td><td>{}</td><td>{:.0} ms</td><td>{:.0} ms</td><td>{:.0} ms</td></tr>",
            p.n, p.p50, p.p95, p.p99
        ),
        None => format!("<tr><td>{label}</td><td>0</td><td>–</td><td>–</td><td>–</td></tr>"),
    }
}

/// The page for `summary`; `source` names the log and the policy.
pub fn render(summary: &Summary, source: &str) -> String {
    let routes: Vec<(String, f64, &str)> = summary
        .by_route
        .iter()
        .map(|(route, n)| (route.clone(), *n as f64, color(route)))
        .collect();
    let (cost_title, cost_items) = match &summary.cost.monthly {
        Some(m) => (
            "Projected monthly cost",
            vec![
                ("as logged".to_string(), m.logged_usd, "#58a6ff"),
                ("under the policy".to_string(), m.policy_usd, "#d29922"),
                ("saved".to_string(), m.savings_usd.max(0.0), "#3fb950"),
            ],
        ),
        None => (
            "Cost of the logged requests",
            vec![
                ("as logged".to_string(), summary.cost.logged_usd, "#58a6ff"),
                ("under the policy".to_string(), summary.cost.policy_usd, "#d29922"),
                ("saved".to_string(), summary.cost.saved_usd.max(0.0), "#3fb950"),
            ],
        ),
    };
    let categories: Vec<(String, f64, &str)> = summary
        .by_category
        .iter()
        .map(|(category, routes)| {
            let total: usize = routes.values().sum();
            let local: usize = routes
                .iter()
                .filter(|(r, _)| r.starts_with("local"))
                .map(|(_, n)| n)
                .sum();
            (category.clone(), local as f64 / total.max(1) as f64, "#3fb950")
        })
        .collect();
    let spenders: String = summary
        .top_remote_spend
        .iter()
        .map(|s| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&s.id),
                escape(&s.category),
                s.score.map_or("–".to_string(), |v| format!("{v:.3}")),
                escape(&s.reason),
                usd(s.cost_usd),
                escape(&s.preview)
            )
        })
        .collect();
    let privacy_rules: String = summary
        .privacy
        .by_rule
        .iter()
        .map(|(rule, n)| format!("<li><code>{}</code>: {n}</li>", escape(rule)))
        .collect();
    let quality = summary.quality.as_ref().map_or(String::new(), |q| {
        format!(
            r#"<div class="card"><h2>Quality on the labelled requests</h2><p>{} labelled requests. Under the policy: quality {:.3} against {:.3} all-remote and {:.3} all-local, a retention of <b id="retention">{}</b>. The score ranks them with APGR <b id="apgr">{:.4}</b> (random {:.4}); CPT(50%) {:.3}, CPT(80%) {:.3}.</p></div>"#,
            q.labelled_rows,
            q.policy_quality,
            q.strong_quality,
            q.weak_quality,
            percent(q.retention),
            q.router.apgr,
            q.random.apgr,
            q.router.cpt50,
            q.router.cpt80
        )
    });
    let agreement = summary.agreement.as_ref().map_or(String::new(), |a| {
        let rows: String = a
            .by_category
            .iter()
            .map(|(c, (n, mean))| format!("<tr><td>{}</td><td>{n}</td><td>{mean:.3}</td></tr>", escape(c)))
            .collect();
        format!(
            r#"<div class="card"><h2>The local model against the logged answers</h2><p>{} sampled, mean agreement <b id="agreement">{:.3}</b>{}{}{}.</p><table><tr><th>category</th><th>sampled</th><th>agreement</th></tr>{rows}</table></div>"#,
            a.sampled,
            a.mean,
            a.exact
                .map_or(String::new(), |(n, v)| format!("; exact answers {n}, matching {}", percent(v))),
            a.similarity
                .map_or(String::new(), |(n, v)| format!("; open answers {n}, similarity {v:.3}")),
            a.judged.map_or(String::new(), |(n, v)| format!(
                "; open answers judged by a model {n}, as good as the logged one {} (the judge cost ${:.4})",
                percent(v),
                a.judge_cost_usd
            )),
        )
    });
    let shadow = summary.shadow.as_ref().map_or(String::new(), |sh| {
        let rows: String = sh
            .by_would_route
            .iter()
            .map(|(route, (n, mean))| format!("<tr><td>{}</td><td>{n}</td><td>{mean:.3}</td></tr>", escape(route)))
            .collect();
        format!(
            r#"<div class="card"><h2>Shadow mode on live traffic</h2><p>{} requests answered remotely were also answered locally: mean agreement <b id="shadow-agreement">{:.3}</b>. Of their {} remote cost, routing would have saved {}.</p><table><tr><th>would route</th><th>compared</th><th>agreement</th></tr>{rows}</table></div>"#,
            sh.compared,
            sh.mean_agreement,
            usd(sh.primary_cost_usd),
            usd(sh.would_save_usd),
        )
    });
    let period = summary
        .cost
        .period_days
        .map_or("period unknown (no timestamps; see --period-days)".to_string(), |d| {
            format!("{d:.2} days of traffic")
        });
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Switchyard audit</title>
<style>
body {{ margin: 0; font: 14px/1.45 system-ui, sans-serif; background: #0f1419; color: #e6edf3; }}
header {{ padding: 18px 28px; border-bottom: 1px solid #263140; }} h1 {{ margin: 0; font-size: 20px; }}
header p, .dim {{ color: #8b98a5; margin: 4px 0 0; }}
main {{ padding: 20px 28px; display: grid; gap: 16px; grid-template-columns: repeat(2, minmax(0, 1fr)); }}
.card {{ background: #182029; border-radius: 10px; padding: 16px; }} .wide {{ grid-column: span 2; }}
h2 {{ margin: 0 0 10px; font-size: 13px; color: #8b98a5; text-transform: uppercase; letter-spacing: .8px; }}
.kpi {{ font-size: 26px; font-weight: 600; }} svg text {{ fill: #e6edf3; font-size: 12px; }}
table {{ width: 100%; border-collapse: collapse; }} td, th {{ text-align: left; padding: 5px 8px; border-bottom: 1px solid #263140; }}
th {{ color: #8b98a5; font-weight: 500; font-size: 12px; }}
</style></head><body>
<header><h1>Switchyard audit</h1><p>{source} · {rows} requests · {period}</p></header>
<main>
<div class="card"><h2>Saved against the log</h2><div class="kpi" id="saved">{saved}</div><p class="dim">{share} of {logged} as logged; {policy} under the policy</p></div>
<div class="card"><h2>Kept on the machine</h2><div class="kpi" id="local-share">{local_share}</div><p class="dim">requests a privacy rule keeps local: {private} ({private_tokens} prompt tokens)</p><ul>{privacy_rules}</ul></div>
<div class="card"><h2>Route mix</h2>{route_chart}</div>
<div class="card"><h2>{cost_title}</h2>{cost_chart}</div>
<div class="card wide"><h2>Cost and quality over thresholds</h2>{curve_chart}<p class="dim">Each point moves one threshold: requests scoring at or above it go remote. Rules (privacy, what the local model cannot serve) keep their routes. The dot is the policy as written.</p></div>
<div class="card"><h2>Share kept local, by category</h2>{category_chart}</div>
<div class="card"><h2>Latency</h2><table><tr><th></th><th>n</th><th>p50</th><th>p95</th><th>p99</th></tr>{lat_remote}{lat_moved}{lat_local}</table></div>
{quality}{agreement}{shadow}
<div class="card wide"><h2>What drives the remaining cloud spend</h2><table><tr><th>request</th><th>category</th><th>score</th><th>reason</th><th>cost</th><th>text</th></tr>{spenders}</table></div>
</main></body></html>
"#,
        source = escape(source),
        rows = summary.rows,
        saved = usd(summary.cost.saved_usd),
        share = percent(summary.cost.saved_share),
        logged = usd(summary.cost.logged_usd),
        policy = usd(summary.cost.policy_usd),
        local_share = percent(summary.at_policy.local_share),
        private = summary.privacy.requests,
        private_tokens = summary.privacy.prompt_tokens,
        route_chart = bars("routes", &routes, |v| format!("{v:.0}")),
        cost_chart = bars("cost", &cost_items, usd),
        curve_chart = curve(&summary.curve, &summary.at_policy),
        category_chart = bars("categories", &categories, percent),
        lat_remote = latency_row("logged, staying remote", summary.latency.logged_remote_ms.as_ref()),
        lat_moved = latency_row("logged, moving local", summary.latency.logged_moved_local_ms.as_ref()),
        lat_local = latency_row("local model, sampled", summary.latency.local_measured_ms.as_ref()),
    )
}
