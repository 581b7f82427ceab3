"""Does a static semantic reading of the prompt tell the router anything?

Two logistic regressions (strong right, weak right) on the local model's token
embeddings pooled over the prompt (mean and maximum of each dimension, from the
engine's `prompt_embeddings` example) and the log of the prompt's length,
standardised, are trained on the `--train` files and ranked by their
difference on each `--eval` file. Printed per eval file, as APGR / CPT(80%):
the router's score (`switchyard route score`), the embeddings' gain alone, and
the two z-scored and summed with the embeddings weighted 0.25, 0.5 and 1.

Rows of `--exclude` files, and training rows that repeat one of their questions
(the text before the options, normalised), never train: pass the held-out MMLU
quarter there.

    cargo build --release -p switchyard-engine --example prompt_embeddings
    target/release/examples/prompt_embeddings models/SmolLM2-135M-Instruct.Q4_1.gguf EMB TRAIN.jsonl... EVAL.jsonl...
    switchyard route score --input EVAL.jsonl --output SCORES.jsonl   # once per eval file, then concatenate
    python3 bench/prompt_embeddings.py EMB SCORES.jsonl --train TRAIN.jsonl... \
        --exclude router/data/routing/routellm_mmlu_heldout.jsonl --eval EVAL.jsonl...   # needs numpy, scikit-learn

Rows without both models' labels are left out. RouterBench rows, which carry
eleven models, are read as GPT-4-1106 against Mixtral-8x7B.
"""

import argparse
import re

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from prompt_signals import curve, jsonl

ROUTERBENCH_PAIR = ("gpt-4-1106-preview", "mistralai/mixtral-8x7b-chat")


def question(prompt):
    return re.sub(r"\W+", " ", prompt.split("\nA")[0].lower()).strip()[:200]


def labels(row):
    strong, weak = (row["strong"], row["weak"]) if "strong" in row else ROUTERBENCH_PAIR
    s, w = row["labels"].get(strong), row["labels"].get(weak)
    if s is None or w is None or s != s or w != w:
        return None
    return float(s), float(w)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("embeddings")
    parser.add_argument("scores")
    parser.add_argument("--train", nargs="+", required=True)
    parser.add_argument("--eval", nargs="+", required=True)
    parser.add_argument("--exclude", nargs="*", default=[])
    parser.add_argument("--C", type=float, default=0.01)
    args = parser.parse_args()

    ids = [line.split("\t") for line in open(args.embeddings + ".ids")]
    vectors = np.fromfile(args.embeddings + ".f32", dtype=np.float32).reshape(len(ids), -1)
    lengths = np.log1p([int(n) for _, n in ids])
    features = {i: np.append(v, l) for (i, _), v, l in zip(ids, vectors, lengths)}
    scores = {r["id"]: r["score"] for r in jsonl(args.scores)}

    excluded = set()
    excluded_questions = set()
    for path in args.exclude:
        for row in jsonl(path):
            excluded.add(row["id"])
            excluded_questions.add(question(row["prompt"]))

    x, s, w = [], [], []
    for path in args.train:
        for row in jsonl(path):
            pair = labels(row)
            if pair and row["id"] not in excluded and question(row["prompt"]) not in excluded_questions:
                x.append(features[row["id"]])
                s.append(pair[0] > 0.5)
                w.append(pair[1] > 0.5)
    print(f"{len(x)} training rows")
    scaler = StandardScaler().fit(x)
    x = scaler.transform(x)
    strong_head = LogisticRegression(C=args.C, max_iter=2000).fit(x, s)
    weak_head = LogisticRegression(C=args.C, max_iter=2000).fit(x, w)

    def z(v):
        return (v - v.mean()) / v.std()

    for path in args.eval:
        rows = [r for r in jsonl(path) if labels(r) and r["id"] in scores]
        pairs = np.array([labels(r) for r in rows])
        x = scaler.transform([features[r["id"]] for r in rows])
        gain = strong_head.predict_proba(x)[:, 1] - weak_head.predict_proba(x)[:, 1]
        router = np.array([scores[r["id"]] for r in rows])
        cells = [curve(router, *pairs.T), curve(gain, *pairs.T)]
        cells += [curve(z(router) + k * z(gain), *pairs.T) for k in (0.25, 0.5, 1.0)]
        line = " | ".join(f"{apgr:.3f} / {cpt80:.3f}" for apgr, _, cpt80 in cells)
        print(f"{path.split('/')[-1]} ({len(rows)} rows) | {line}")


if __name__ == "__main__":
    main()
