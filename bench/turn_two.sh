#!/usr/bin/env bash
# Time to first token of a conversation's second turn, as its first turn
# grows: with the first turn's state kept in the engine (the daemon that
# answered turn one) against a cold run of the same turn-two request (a
# daemon that never saw turn one). Turn two's prompt holds turn one's prompt
# and answer, so a cold run's TTFT grows with it; a warm one should not.
#
# Starts two release daemons on the local model (default: the embedded
# SmolLM2; MODEL=path for another, a GGUF file or a Hugging Face directory),
# 2 threads each but run one at a time. For each turn-one length (tokens of
# filler text in its user message): turn one (16 answer tokens, greedy) on the
# warm daemon, then turn two streamed on the warm daemon and on the cold one,
# ROUNDS times each (a new conversation each round, so nothing else is
# reused); prints median TTFT of each and the ratio, and the cached tokens the
# warm daemon reported.
#
# Usage: bench/turn_two.sh [ROUNDS] [LENGTHS...]   (defaults: 5, 128 512 1024 1536)
# BIN=path/to/switchyard uses that binary instead of building target/release.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
shift || true
LENGTHS=${*:-128 512 1024 1536}
MODEL=${MODEL:-$PWD/models/SmolLM2-135M-Instruct.Q4_1.gguf}
PY=${PY:-.venv/bin/python}

scripts/fetch-default-model.sh >/dev/null
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet -p switchyard
  BIN=target/release/switchyard
fi

work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

start() { # name port
  cat >"$work/$1.yaml" <<YAML
server:
  listen: 127.0.0.1:$2
backends:
  local:
    - name: local
      model_path: $MODEL
      threads: 2
      context_length: 4096
      queue_capacity: 4
routing:
  local_backend: local
ladder: { enabled: false }
YAML
  SWITCHYARD_LOG=warn "$BIN" serve --policy "$work/$1.yaml" 2>"$work/$1.log" &
  pids+=($!)
  for _ in $(seq 600); do curl -s -o /dev/null "http://127.0.0.1:$2/healthz" && return; sleep 0.1; done
  echo "daemon $1 did not start" >&2; cat "$work/$1.log" >&2; exit 1
}
start warm 19141
start cold 19142

"$PY" - "$ROUNDS" $LENGTHS <<'PY'
import statistics, sys, time
import openai

rounds = int(sys.argv[1])
lengths = [int(n) for n in sys.argv[2:]]
warm = openai.OpenAI(base_url="http://127.0.0.1:19141/v1", api_key="unused", max_retries=0, timeout=600)
cold = openai.OpenAI(base_url="http://127.0.0.1:19142/v1", api_key="unused", max_retries=0, timeout=600)
words = "the river runs past old mills and quiet fields toward the sea where boats wait ".split()

def answer(client, messages):
    return client.chat.completions.create(model="local", messages=messages, max_tokens=16, temperature=0)

def first_token(client, messages):
    started = time.perf_counter()
    first, usage = None, None
    for chunk in client.chat.completions.create(model="local", messages=messages, max_tokens=16, temperature=0,
                                                stream=True, stream_options={"include_usage": True}):
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - started
        usage = chunk.usage or usage
    return first, usage

print(f"{'turn one':>9} {'warm TTFT ms':>13} {'cold TTFT ms':>13} {'cold/warm':>10} {'cached':>7} {'prompt':>7}")
for length in lengths:
    warm_ms, cold_ms = [], []
    for r in range(rounds):
        # A new conversation each round: nothing but its own turn one to reuse.
        text = f"Conversation {length}-{r}. " + " ".join(words[i % len(words)] for i in range(length))
        turn_one = [{"role": "user", "content": text}]
        reply = answer(warm, turn_one).choices[0].message.content
        turn_two = turn_one + [{"role": "assistant", "content": reply}, {"role": "user", "content": "Say more."}]
        ttft, usage = first_token(warm, turn_two)
        warm_ms.append(ttft * 1e3)
        cached, prompt = usage.prompt_tokens_details.cached_tokens, usage.prompt_tokens
        ttft, _ = first_token(cold, turn_two)
        cold_ms.append(ttft * 1e3)
    w, c = statistics.median(warm_ms), statistics.median(cold_ms)
    print(f"{length:>9} {w:>13.1f} {c:>13.1f} {c / w:>9.2f}x {cached:>7} {prompt:>7}")
PY
