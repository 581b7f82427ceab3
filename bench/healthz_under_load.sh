#!/usr/bin/env bash
# /healthz latency while clients send the local model the largest bodies the
# daemon accepts: prompt preparation (JSON, routing features, rendering,
# tokenizing) must not hold the async workers that answer everything else.
#
# Starts the release daemon on policies/default.yaml, then CLIENTS clients each
# send maximum-size bodies (4 MiB of text, pinned to the local model) in a
# loop for SECONDS, while /healthz is requested every 50 ms (one at a time,
# each timed by curl). Prints p50, p99 and max of /healthz, how many samples,
# and how many large bodies were answered (and with which statuses).
#
# Usage: bench/healthz_under_load.sh [CLIENTS] [SECONDS]   (defaults: 16, 30)
# BIN=path/to/switchyard uses that binary instead of building target/release.
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${1:-16}
SECONDS_TOTAL=${2:-30}
PORT=${PORT:-19132}

scripts/fetch-default-model.sh >/dev/null
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet -p switchyard
  BIN=target/release/switchyard
fi

work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

sed -e "s|^  listen: .*|  listen: 127.0.0.1:$PORT|" \
    -e "s|model_path: \.\./models/|model_path: $PWD/models/|" policies/default.yaml >"$work/policy.yaml"
SWITCHYARD_LOG=warn "$BIN" serve --policy "$work/policy.yaml" 2>"$work/daemon.log" &
pids+=($!)
for _ in $(seq 600); do curl -s -o /dev/null "http://127.0.0.1:$PORT/healthz" && break; sleep 0.1; done

# One body just under the 4 MiB limit: a single user message of "word ".
python3 - "$work/body.json" <<'PY'
import json, sys
size = 4 * 1024 * 1024 - 64
head = len(json.dumps({"model": "smollm2", "messages": [{"role": "user", "content": ""}]}))
body = json.dumps({"model": "smollm2", "messages": [{"role": "user", "content": ("word " * size)[: size - head]}]})
open(sys.argv[1], "w").write(body)
PY

end=$(( $(date +%s) + SECONDS_TOTAL ))
for c in $(seq "$CLIENTS"); do
  ( while [ "$(date +%s)" -lt "$end" ]; do
      curl -s -o /dev/null -w '%{http_code}\n' --max-time 300 -H 'content-type: application/json' \
        --data-binary "@$work/body.json" "http://127.0.0.1:$PORT/v1/chat/completions" || echo failed
    done ) >"$work/load.$c" &
  pids+=($!)
done
# /healthz every 50 ms, one at a time, for the same period.
while [ "$(date +%s)" -lt "$end" ]; do
  curl -s -o /dev/null -w '%{http_code} %{time_total}\n' --max-time 60 "http://127.0.0.1:$PORT/healthz" >>"$work/healthz.txt" || echo "failed 60" >>"$work/healthz.txt"
  sleep 0.05
done
wait "${pids[@]:1}" 2>/dev/null || true

python3 - "$work" "$CLIENTS" "$SECONDS_TOTAL" <<'PY'
import collections, glob, sys
work, clients, seconds = sys.argv[1], sys.argv[2], sys.argv[3]
samples = [line.split() for line in open(f"{work}/healthz.txt")]
bad = [s for s in samples if s[0] != "200"]
times_ms = sorted(float(s[1]) * 1000 for s in samples)
pick = lambda q: times_ms[min(len(times_ms) - 1, int(q * len(times_ms)))]
statuses = collections.Counter(l.strip() for f in glob.glob(f"{work}/load.*") for l in open(f))
print(f"{clients} clients sending 4 MiB bodies to the local model for {seconds}s; "
      f"large bodies answered: {dict(statuses)}")
print(f"/healthz: {len(times_ms)} samples, p50 {pick(0.5):.1f} ms, p99 {pick(0.99):.1f} ms, "
      f"max {times_ms[-1]:.1f} ms, failures {len(bad)}")
PY
