"""Does the local model's own reading of a prompt tell the router anything?

Reads labelled routing rows, the router's scores for them (`switchyard route
score`) and the local model's reading of each prompt (the engine's
`prompt_signals` example: its surprise at the prompt's tokens, and its
confidence about the next one, including over the answer letters A-D), and
prints APGR / CPT for:
- the router's score;
- each signal alone, both ways round;
- the router's score restacked, the signals alone, and both together: two
  logistic regressions (strong right, weak right) on the standardised inputs,
  ranked by their difference, 5-fold cross-validated within the rows given
  (so the router's own line is comparable with the stacked ones). `tokens`
  (the prompt's length) is the text's, not the model's; the model's own
  signals are also stacked without it.

    cargo build --release -p switchyard-engine --example prompt_signals
    target/release/examples/prompt_signals models/SmolLM2-135M-Instruct.Q4_1.gguf ROWS.jsonl SIGNALS.jsonl
    switchyard route score --input ROWS.jsonl --output SCORES.jsonl
    python3 bench/prompt_signals.py ROWS.jsonl SCORES.jsonl SIGNALS.jsonl   # needs numpy, scikit-learn

Rows missing from either file are left out.
"""

import json
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold

SIGNALS = [
    "tokens",
    "mean_logprob",
    "p10_logprob",
    "p50_logprob",
    "min_logprob",
    "next_entropy",
    "next_top1",
    "letter_mass",
    "letter_max",
    "letter_entropy",
]


def jsonl(path):
    with open(path) as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def curve(score, strong, weak):
    """APGR, CPT(50%) and CPT(80%) of ranking the rows by `score` (higher goes to the strong model)."""
    order = np.argsort(-score, kind="stable")
    n = len(order)
    quality = weak.mean() + np.concatenate([[0.0], np.cumsum((strong - weak)[order])]) / n
    pgr = (quality - weak.mean()) / (strong.mean() - weak.mean())
    apgr = np.trapezoid(pgr, dx=1 / n)
    return apgr, np.argmax(pgr >= 0.5) / n, np.argmax(pgr >= 0.8) / n


def main():
    rows_path, scores_path, signals_path = sys.argv[1:4]
    scores = {r["id"]: r["score"] for r in jsonl(scores_path)}
    signals = {r["id"]: r for r in jsonl(signals_path)}
    rows = [r for r in jsonl(rows_path) if r["id"] in scores and r["id"] in signals]
    strong = np.array([r["labels"][r["strong"]] for r in rows])
    weak = np.array([r["labels"][r["weak"]] for r in rows])

    x = np.array([[signals[r["id"]][k] for k in SIGNALS] for r in rows], dtype=float)
    x[:, 0] = np.log(x[:, 0])
    router = np.array([scores[r["id"]] for r in rows])
    print(f"{len(rows)} rows; strong {strong.mean():.3f}, weak {weak.mean():.3f}")
    print("| ranking | APGR | CPT(50%) | CPT(80%) |")
    print("|---|---:|---:|---:|")
    print("| router score | %.3f | %.3f | %.3f |" % curve(router, strong, weak))
    rng = np.random.default_rng(0)
    print("| random (20 shuffles), APGR | %.3f | | |" % np.mean([curve(rng.random(len(rows)), strong, weak)[0] for _ in range(20)]))
    for i, name in enumerate(SIGNALS):
        up, down = curve(x[:, i], strong, weak)[0], curve(-x[:, i], strong, weak)[0]
        print(f"| {name} alone, high first / low first, APGR | {up:.3f} / {down:.3f} | | |")

    def stacked(inputs, name):
        predicted = np.zeros(len(rows))
        for train, test in KFold(5, shuffle=True, random_state=0).split(inputs):
            z = (inputs - inputs[train].mean(0)) / (inputs[train].std(0) + 1e-9)
            p_strong = LogisticRegression(max_iter=2000).fit(z[train], strong[train] > 0.5)
            p_weak = LogisticRegression(max_iter=2000).fit(z[train], weak[train] > 0.5)
            predicted[test] = p_strong.predict_proba(z[test])[:, 1] - p_weak.predict_proba(z[test])[:, 1]
        print(f"| {name} | %.3f | %.3f | %.3f |" % curve(predicted, strong, weak))

    stacked(router[:, None], "router score, restacked (5-fold)")
    stacked(x, "signals alone, stacked (5-fold)")
    stacked(x[:, 1:], "the model's signals alone (no length), stacked (5-fold)")
    stacked(np.column_stack([router, x[:, 1:]]), "router score + the model's signals, stacked (5-fold)")
    stacked(np.column_stack([router, x]), "router score + signals, stacked (5-fold)")


if __name__ == "__main__":
    main()
