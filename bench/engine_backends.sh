#!/usr/bin/env bash
# Switchyard's engine on Burn's two CPU backends, Flex (the default) and NdArray,
# on the same GGUF, threads and prompt: prefill tokens/s, decode tokens/s, peak
# RSS, and whether the two generated the same tokens. The two alternate run by
# run, each run its own process.
#
# Usage: bench/engine_backends.sh [MODEL.gguf] [THREADS] [RUNS] [PROMPT_TOKENS]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-$(scripts/fetch-default-model.sh)}
THREADS=${2:-2}
RUNS=${3:-5}
PROMPT_TOKENS=${4:-512}

cargo build --release --quiet -p switchyard --features ndarray
python3 - "$MODEL" "$THREADS" "$RUNS" "$PROMPT_TOKENS" <<'PY'
import json, os, statistics, subprocess, sys

model, threads, runs, want = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
binary = "target/release/switchyard"
base = ("The history of the railway is a story of engineering, commerce and people. "
        "Switching yards sorted freight cars onto the right trains, one track at a time. ")
words = (base * 200).split(" ")


def run(text, backend, max_tokens):
    """One generation, its own process: its JSON report and its peak RSS in MiB (from wait4)."""
    argv = [binary, "generate", "--model", model, "--raw-prompt", text, "--max-tokens", str(max_tokens),
            "--temperature", "0", "--threads", threads, "--json", "--ignore-eos", "--backend", backend]
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = child.stdout.read(), child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{backend} run failed:\n{err}")
    return json.loads(out.strip().splitlines()[-1]), usage.ru_maxrss / 1024


def prompt_tokens(text):
    return len(run(text, "flex", 1)[0]["prompt_tokens"])


# The longest prefix of the text that is at most `want` tokens (our tokenizer).
lo, hi = 1, len(words)
while lo < hi:
    mid = (lo + hi + 1) // 2
    if prompt_tokens(" ".join(words[:mid])) <= want:
        lo = mid
    else:
        hi = mid - 1
text = " ".join(words[:lo])
n = prompt_tokens(text)


results = {"flex": [], "ndarray": []}
for _ in range(runs):
    for backend in results:
        results[backend].append(run(text, backend, 128))
size_mib = os.path.getsize(model) / (1 << 20)
print(f"model {os.path.basename(model)} ({size_mib:.1f} MiB), {threads} threads, prompt {n} tokens, "
      f"128 decoded, median of {runs} alternating runs")
print(f"{'':14}{'prefill tok/s':>15}{'decode tok/s':>14}{'peak RSS MiB':>14}")
medians = {}
for backend, rows in results.items():
    medians[backend] = [statistics.median(r[k] for r, _ in rows) for k in ("prefill_tokens_per_s", "decode_tokens_per_s")]
    medians[backend].append(statistics.median(rss for _, rss in rows))
    print(f"{backend:14}" + "".join(f"{v:{w}.1f}" for v, w in zip(medians[backend], (15, 14, 14))))
f, d = medians["flex"], medians["ndarray"]
print(f"{'flex/ndarray':14}{f[0] / d[0]:14.2f}x{f[1] / d[1]:13.2f}x{f[2] / d[2]:13.2f}x")
same = all(a["tokens"] == b["tokens"] for (a, _), (b, _) in zip(results["flex"], results["ndarray"]))
print(f"same tokens on both backends: {'yes' if same else 'NO'}")
PY
