"""Does learning every model's failures (IRT-style) help the strong-vs-weak ranking?

The router's two heads learn whether the strong and the weak model answer a
prompt well. RouterBench rows label eleven models and RouterDC rows seven: a
difficulty that many models share might be learned better from all of them.
This trains the same network twice and compares, on each `--eval` file:
- `pair`: only the strong and weak heads, from the `--train` rows;
- `every model`: one head per labelled model, from the `--train` rows and the
  `--aux` rows, each head learning only where its model has a label.

The network: hashed word 1-2-grams and in-word character 3-5-grams (binary,
L2-normalised, close to the router's own features), a linear layer to every
head, plus a shared tanh hidden layer feeding every head. Masked binary
cross-entropy (graded labels as soft targets), Adam, minibatches of 256, a
fixed seed. The epoch is chosen on a validation tenth of the `--train` rows,
split by question (prompts that share a passage fall together), and the score
is P(strong right) - P(weak right).

Rows of `--exclude` files, and training rows that repeat one of their questions
(the text before the options, normalised), never train: pass the held-out MMLU
quarter there. RouterBench's Mixtral-8x7B-chat and RouteLLM's
Mixtral-8x7B-instruct share the weak head.

    python3 bench/multitask_difficulty.py \
        --train DATA/routellm_mmlu.jsonl DATA/routerbench_*_train.jsonl \
        --aux $(ls DATA/routerdc7_*.jsonl | grep -v _test) \
        --exclude router/data/routing/routellm_mmlu_heldout.jsonl \
        --eval router/data/routing/routellm_mmlu_heldout.jsonl   # needs numpy, scipy, scikit-learn

(`DATA` is `shared/data/routing`.) Prints each epoch's validation and eval
APGR to stderr and the chosen epochs' APGR / CPT(80%) to stdout.
"""

import argparse
import sys
import zlib

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.preprocessing import normalize

from prompt_embeddings import ROUTERBENCH_PAIR, labels, question
from prompt_signals import curve, jsonl

SAME_MODEL = {"mixtral-8x7b-instruct": ROUTERBENCH_PAIR[1]}
WORDS = HashingVectorizer(
    analyzer="word", ngram_range=(1, 2), binary=True, norm=None, alternate_sign=False, n_features=2**17
)
GRAMS = HashingVectorizer(
    analyzer="char_wb", ngram_range=(3, 5), binary=True, norm=None, alternate_sign=False, n_features=2**17
)


def features(prompts):
    x = sparse.hstack([WORDS.transform(prompts), GRAMS.transform(prompts)]).tocsr()
    return normalize(x).astype(np.float32)


def model_labels(row):
    """Every finite label of the row, by model, with the pair's names first."""
    strong, weak = (row["strong"], row["weak"]) if "strong" in row else ROUTERBENCH_PAIR
    out = {}
    for model, value in row["labels"].items():
        if value is not None and value == value:
            name = {strong: "strong", weak: "weak"}.get(model, SAME_MODEL.get(model, model))
            out[name] = float(value)
    return out


class Net:
    def __init__(self, inputs, heads, hidden, seed):
        rng = np.random.default_rng(seed)
        self.p = {
            "linear": np.zeros((inputs, heads), np.float32),
            "bias": np.zeros(heads, np.float32),
            "hidden": (rng.standard_normal((inputs, hidden)) * 0.1).astype(np.float32),
            "hidden_bias": np.zeros(hidden, np.float32),
            "out": (rng.standard_normal((hidden, heads)) * 0.1).astype(np.float32),
        }
        self.m = {k: np.zeros_like(v) for k, v in self.p.items()}
        self.v = {k: np.zeros_like(v) for k, v in self.p.items()}
        self.t = 0

    def forward(self, x):
        h = np.tanh(x @ self.p["hidden"] + self.p["hidden_bias"])
        return x @ self.p["linear"] + h @ self.p["out"] + self.p["bias"], h

    def gain(self, x):
        p = 1 / (1 + np.exp(-self.forward(x)[0]))
        return p[:, 0] - p[:, 1]

    def step(self, x, y, mask, lr):
        z, h = self.forward(x)
        g = mask * (1 / (1 + np.exp(-z)) - y) / max(mask.sum(), 1.0)
        back = (g @ self.p["out"].T) * (1 - h * h)
        grads = {
            "linear": np.asarray(x.T @ g),
            "bias": g.sum(0),
            "hidden": np.asarray(x.T @ back),
            "hidden_bias": back.sum(0),
            "out": h.T @ g,
        }
        self.t += 1
        for k, grad in grads.items():
            self.m[k] = 0.9 * self.m[k] + 0.1 * grad
            self.v[k] = 0.999 * self.v[k] + 0.001 * grad * grad
            m_hat = self.m[k] / (1 - 0.9**self.t)
            v_hat = self.v[k] / (1 - 0.999**self.t)
            self.p[k] -= lr * m_hat / (np.sqrt(v_hat) + 1e-8)


def fit(train_rows, aux_rows, every, evals, args):
    rows = train_rows + aux_rows
    heads = ["strong", "weak"]
    for row in rows if every else []:
        heads += [m for m in model_labels(row) if m not in heads]
    index = {m: i for i, m in enumerate(heads)}
    y = np.zeros((len(rows), len(heads)), np.float32)
    mask = np.zeros_like(y)
    for i, row in enumerate(rows):
        for model, value in model_labels(row).items():
            if model in index:
                y[i, index[model]], mask[i, index[model]] = value, 1.0
    validation = np.array(
        [i < len(train_rows) and zlib.crc32(question(r["prompt"]).encode()) % 10 == 3 for i, r in enumerate(rows)]
    )
    x = features([r["prompt"] for r in rows])
    net = Net(x.shape[1], len(heads), args.hidden, args.seed)
    rng = np.random.default_rng(args.seed)
    order = np.where(~validation)[0]
    best = (-1.0, None)
    for epoch in range(1, args.epochs + 1):
        rng.shuffle(order)
        for start in range(0, len(order), 256):
            batch = order[start : start + 256]
            net.step(x[batch], y[batch], mask[batch], args.lr)
        held = y[validation]
        score = curve(net.gain(x[validation]), held[:, 0], held[:, 1])[0]
        results = [curve(net.gain(ex), *pairs.T) for ex, pairs in evals]
        shown = " ".join(f"{apgr:.3f}" for apgr, _, _ in results)
        print(f"  {len(heads)} heads, epoch {epoch}: validation {score:.3f}, eval {shown}", file=sys.stderr)
        if score > best[0]:
            best = (score, (epoch, results))
    return len(heads), best[1]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", nargs="+", required=True)
    parser.add_argument("--aux", nargs="*", default=[])
    parser.add_argument("--eval", nargs="+", required=True)
    parser.add_argument("--exclude", nargs="*", default=[])
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=17)
    args = parser.parse_args()

    excluded, excluded_questions = set(), set()
    for path in args.exclude:
        for row in jsonl(path):
            excluded.add(row["id"])
            excluded_questions.add(question(row["prompt"]))

    def kept(paths, need_pair):
        return [
            r
            for path in paths
            for r in jsonl(path)
            if r["id"] not in excluded
            and question(r["prompt"]) not in excluded_questions
            and (labels(r) if need_pair else model_labels(r))
        ]

    train_rows, aux_rows = kept(args.train, True), kept(args.aux, False)
    print(f"{len(train_rows)} training rows, {len(aux_rows)} auxiliary rows")
    evals = []
    for path in args.eval:
        rows = [r for r in jsonl(path) if labels(r)]
        evals.append((features([r["prompt"] for r in rows]), np.array([labels(r) for r in rows])))
    for name, aux, every in (("pair", [], False), ("every model", aux_rows, True)):
        heads, (epoch, results) = fit(train_rows, aux, every, evals, args)
        cells = " | ".join(f"{apgr:.3f} / {cpt80:.3f}" for apgr, _, cpt80 in results)
        print(f"{name} ({heads} heads, epoch {epoch}) | {cells}")


if __name__ == "__main__":
    main()
