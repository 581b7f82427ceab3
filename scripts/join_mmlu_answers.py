#!/usr/bin/env python3
"""Adds MMLU's gold answer letter to routing rows whose prompt is an MMLU question.

    scripts/join_mmlu_answers.py MMLU_DATA_DIR IN.jsonl OUT.jsonl

MMLU_DATA_DIR is the `data` folder of MMLU's release (Hendrycks et al., MIT
licence), with `test/<subject>_test.csv` (question, four options, answer
letter). A row matches a question when its prompt is the question in the
routing data's format ("question\\nA. ...\\nB. ...\\nC. ...\\nD. ...\\nAnswer:"),
or, failing that, when it is the same text in letters and digits (case,
spacing and punctuation ignored) and all such questions share one answer. Rows without a match are written unchanged; the count goes to stderr.
"""

import csv
import json
import sys
from pathlib import Path


def key(text):
    return "".join(c.lower() for c in text if c.isalnum())


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    data_dir, source, target = (Path(a) for a in sys.argv[1:])
    exact, by_key = {}, {}
    for split in ("test", "val", "dev"):
        for path in sorted((data_dir / split).glob("*.csv")):
            with open(path, newline="", encoding="utf-8") as f:
                for row in csv.reader(f):
                    if len(row) != 6 or row[5] not in ("A", "B", "C", "D"):
                        continue
                    question, *options, answer = row
                    prompt = question + "".join(f"\n{l}. {o}" for l, o in zip("ABCD", options)) + "\nAnswer:"
                    exact.setdefault(prompt, answer)
                    by_key.setdefault(key(prompt), set()).add(answer)
    joined = unmatched = 0
    with open(source, encoding="utf-8") as src, open(target, "w", encoding="utf-8") as out:
        for line in src:
            if not line.strip():
                continue
            row = json.loads(line)
            prompt = row.get("prompt") or ""
            answer = exact.get(prompt)
            if answer is None and len(by_key.get(key(prompt), ())) == 1:
                answer = next(iter(by_key[key(prompt)]))
            if answer is None:
                unmatched += 1
            else:
                row["answer"] = answer
                joined += 1
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{joined} rows given an answer, {unmatched} without", file=sys.stderr)


if __name__ == "__main__":
    main()
