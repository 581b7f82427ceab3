"""Does the local-reasoning tier answer better than plain local? Prints both.

Asks a running daemon the same questions twice, with `x-switchyard-tier: local`
and `x-switchyard-tier: local-reasoning` (greedy, 48 answer tokens), and
prints how many each answers right and the mean time per request:
- 40 generated arithmetic questions (two numbers from 2 to 30, plus, minus or
  times, a fixed seed); right when the last number of the answer is the result;
- 20 everyday factual questions; right when the answer contains the expected
  word.

The default policy turns the embedded model's reasoning tier off (this script
is why); to measure it, serve a copy with it on, beside the original (its paths
are relative to its own directory):

    sed 's/reasoning: false/reasoning: true/' policies/default.yaml > policies/reasoning-on.yaml
    cargo run --release -p switchyard -- serve --policy policies/reasoning-on.yaml &
    python3 bench/local_reasoning.py --url http://127.0.0.1:8080
"""

import argparse
import json
import random
import re
import time
import urllib.request

FACTS = [
    ("What is the capital of France?", "paris"),
    ("What is the capital of Japan?", "tokyo"),
    ("What is the capital of Italy?", "rome"),
    ("How many days are in a week?", "7|seven"),
    ("What color is the sky on a clear day?", "blue"),
    ("What is the largest planet in the solar system?", "jupiter"),
    ("What is the opposite of hot?", "cold"),
    ("How many legs does a spider have?", "8|eight"),
    ("What is frozen water called?", "ice"),
    ("Which animal says moo?", "cow"),
    ("What day comes after Monday?", "tuesday"),
    ("How many hours are in a day?", "24|twenty-four"),
    ("What is the chemical symbol for gold?", r"au\b"),
    ("Who wrote Romeo and Juliet?", "shakespeare"),
    ("What is the boiling point of water in Celsius?", "100"),
    ("How many continents are there?", "7|seven"),
    ("What gas do plants absorb from the air?", "carbon dioxide|co2"),
    ("What is the capital of Germany?", "berlin"),
    ("How many minutes are in an hour?", "60|sixty"),
    ("What is 10 divided by 2?", "5|five"),
]


def arithmetic(n, seed):
    rng = random.Random(seed)
    questions = []
    for _ in range(n):
        a, b = rng.randint(2, 30), rng.randint(2, 30)
        word, result = rng.choice([("plus", a + b), ("minus", a - b), ("times", a * b)])
        questions.append((f"What is {a} {word} {b}? Answer with the number.", result))
    return questions


def ask(url, model, prompt, tier):
    body = json.dumps({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 48,
        "temperature": 0,
    }).encode()
    request = urllib.request.Request(
        url.rstrip("/") + "/v1/chat/completions",
        data=body,
        headers={"content-type": "application/json", "x-switchyard-tier": tier},
    )
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        route = response.headers.get("x-switchyard-route")
        reply = json.load(response)
    if route != tier:
        raise SystemExit(f"asked for {tier}, the daemon answered {route} (a local backend with `reasoning: false`?)")
    return reply["choices"][0]["message"]["content"], time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--model", default="auto")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    sums = arithmetic(40, args.seed)
    print(f"{'tier':16}{'arithmetic':>12}{'facts':>8}{'s/request':>11}")
    for tier in ("local", "local-reasoning"):
        right_sums = right_facts = 0
        seconds = 0.0
        for prompt, result in sums:
            answer, took = ask(args.url, args.model, prompt, tier)
            numbers = re.findall(r"-?\d+", answer.replace(",", ""))
            right_sums += bool(numbers) and int(numbers[-1]) == result
            seconds += took
        for prompt, expected in FACTS:
            answer, took = ask(args.url, args.model, prompt, tier)
            right_facts += re.search(expected, answer.lower()) is not None
            seconds += took
        total = len(sums) + len(FACTS)
        print(f"{tier:16}{f'{right_sums}/{len(sums)}':>12}{f'{right_facts}/{len(FACTS)}':>8}{seconds / total:>11.2f}")


if __name__ == "__main__":
    main()
