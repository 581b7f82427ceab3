#!/usr/bin/env python3
"""Converts RouteLLM's GSM8K and MT-Bench evaluation data into Switchyard's
labelled routing format (one JSON row per prompt, see router/data/routing/README.md).

Usage: scripts/import_routellm_evals.py ROUTELLM_CHECKOUT OUT_DIR

ROUTELLM_CHECKOUT is a checkout of https://github.com/lm-sys/RouteLLM (Apache-2.0);
the files read are routellm/evals/gsm8k/gsm8k_responses.csv and
routellm/evals/mt_bench/{question,judgements}.jsonl. Written, each as a
`_train` and a `_test` file (a quarter of the questions, chosen by a hash of the
question, so both turns of an MT-Bench question fall on the same side; training
never reads `_test` files):

- routellm_gsm8k: GSM8K test questions, GPT-4-1106 and Mixtral-8x7B
  correctness (correct_0_1).
- routellm_mt_bench: MT-Bench questions, one row per turn, each model's
  GPT-4 judge score divided by 10 (score_0_1). A second turn's prompt is what
  Switchyard scores for that conversation: the user turns, each followed by a
  newline.
"""

import csv
import hashlib
import json
import os
import sys

STRONG = "gpt-4-1106-preview"
WEAK = "mixtral-8x7b-instruct"
MIXTRAL = "mistralai/Mixtral-8x7B-Instruct-v0.1"


def is_test(question):
    """A quarter of the questions, by a hash of the question's text."""
    return hashlib.sha256(question.encode("utf-8")).digest()[0] % 4 == 0


def truth(value):
    if value not in ("True", "False"):
        raise ValueError(f"not a correctness label: {value!r}")
    return 1.0 if value == "True" else 0.0


def gsm8k(root):
    path = os.path.join(root, "routellm/evals/gsm8k/gsm8k_responses.csv")
    with open(path, newline="", encoding="utf-8") as f:
        for i, row in enumerate(csv.DictReader(f)):
            yield row["prompt"], {
                "id": f"routellm_gsm8k/{i}",
                "source": "routellm_gsm8k",
                "category": "gsm8k",
                "prompt": row["prompt"],
                "label_kind": "correct_0_1",
                "labels": {STRONG: truth(row[STRONG]), WEAK: truth(row[MIXTRAL])},
                "strong": STRONG,
                "weak": WEAK,
            }


def mt_bench(root):
    base = os.path.join(root, "routellm/evals/mt_bench")
    questions = {}
    with open(os.path.join(base, "question.jsonl"), encoding="utf-8") as f:
        for line in f:
            q = json.loads(line)
            questions[q["question_id"]] = q
    scores = {}
    with open(os.path.join(base, "judgements.jsonl"), encoding="utf-8") as f:
        for line in f:
            j = json.loads(line)
            model = {STRONG: STRONG, MIXTRAL: WEAK}.get(j["model"])
            if model is None or j["score"] < 0:
                continue
            scores.setdefault((j["question_id"], j["turn"]), {})[model] = j["score"] / 10.0
    for (qid, turn), labels in sorted(scores.items()):
        if set(labels) != {STRONG, WEAK}:
            continue
        q = questions[qid]
        yield q["turns"][0], {
            "id": f"routellm_mt_bench/{qid}/{turn}",
            "source": "routellm_mt_bench",
            "category": f"mt_bench:{q['category']}",
            "prompt": "".join(t + "\n" for t in q["turns"][:turn]) if turn > 1 else q["turns"][0],
            "turn": turn,
            "label_kind": "score_0_1",
            "labels": labels,
            "strong": STRONG,
            "weak": WEAK,
        }


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    root, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    for name, rows in (("routellm_gsm8k", gsm8k(root)), ("routellm_mt_bench", mt_bench(root))):
        paths = {side: os.path.join(out, f"{name}_{side}.jsonl") for side in ("train", "test")}
        files = {side: open(path, "w", encoding="utf-8") for side, path in paths.items()}
        counts = {"train": 0, "test": 0}
        for question, row in rows:
            side = "test" if is_test(question) else "train"
            files[side].write(json.dumps(row, ensure_ascii=False) + "\n")
            counts[side] += 1
        for side, f in files.items():
            f.close()
            print(f"{paths[side]}: {counts[side]} rows")


if __name__ == "__main__":
    main()
