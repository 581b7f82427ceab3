#!/usr/bin/env python3
"""Adds ARC's gold answer letter to RouterBench's ARC-Challenge routing rows.

    scripts/join_arc_answers.py ARC_JSONL IN.jsonl OUT.jsonl

ARC_JSONL holds ARC-Challenge questions (AI2's ARC, CC BY-SA 4.0) one per line
as {"question": ..., "options": [{"label": "A", "text": ...}, ...],
"answer": "C"}. A RouterBench prompt is a few solved examples and, last, the
question asked, its options shuffled ("A) ..." lines): the row's answer is
the letter under which the gold option's text stands in that last block. Rows
get `strong: gpt-4-1106-preview` (RouterBench's frontier model) so that
`route label` can add the local model as their weak side. Rows without a
match are written unchanged; the count goes to stderr.
"""

import json
import sys


def key(text):
    return "".join(c.lower() for c in text if c.isalnum())


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    gold = {}
    with open(sys.argv[1], encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            texts = {o["label"]: o["text"] for o in row["options"]}
            if row["answer"] in texts:
                gold[key(row["question"])] = key(texts[row["answer"]])
    joined = unmatched = 0
    with open(sys.argv[2], encoding="utf-8") as src, open(sys.argv[3], "w", encoding="utf-8") as out:
        for line in src:
            if not line.strip():
                continue
            row = json.loads(line)
            last = row["prompt"].rstrip().split("\n\n")[-1].split("\n")
            options = {l[0]: l[3:] for l in last if len(l) > 3 and l[1:3] == ") " and l[0].isupper()}
            question = "\n".join(l for l in last if not (len(l) > 3 and l[1:3] == ") "))
            question = question.split("\nPrint only")[0]
            wanted = gold.get(key(question))
            letters = [k for k, text in options.items() if key(text) == wanted]
            if wanted is not None and len(letters) == 1:
                row["answer"] = letters[0]
                row["strong"] = "gpt-4-1106-preview"
                joined += 1
            else:
                unmatched += 1
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{joined} rows given an answer, {unmatched} without", file=sys.stderr)


if __name__ == "__main__":
    main()
