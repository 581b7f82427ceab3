#!/usr/bin/env bash
# Many streaming clients at once on the local model, Switchyard against
# llama.cpp's llama-server (continuous batching, --parallel N: as many slots as
# clients), same GGUF, same threads, greedy: aggregate decode tok/s and time to
# first token p50/p99 at each concurrency (see concurrency_vs_llama_server.py).
#
# Usage: bench/concurrency_vs_llama_server.sh [THREADS] [GGUF] [CLIENTS...]
#   defaults: 2, the embedded SmolLM2 Q4_1, 1 2 4 8 16.
#   GGUF `qwen3` is target/bench/qwen3/qwen3-1.7b-random-q4_k.gguf: Qwen3-1.7B's
#   dimensions, random weights, pure Q4_K. A missing qwen3-1.7b-random-{q4_k,q6_k}.gguf
#   is made by bench/qwen3_vs_llama_cpp.sh (MODELS_ONLY=1: its random checkpoint,
#   llama.cpp's converter and quantizer, in its two venvs; see that script).
# llama-server is built with CMake from the llama.cpp source that
# llama-cpp-python's PyPI source package vendors (LLAMA_CPP_SRC, fetched into
# $WORK/src when unset), into $WORK/build-llama-server (a few minutes, once);
# LLAMA_SERVER names an llama-server already built elsewhere.
# ROUNDS (3) requests per client; MAX_TOKENS (64) per answer. Our daemon runs
# with max_sequences = the largest client count and max_state_mb = MAX_STATE_MB.
# Each row's figures (tokens, requests, mean prompt tokens as each server
# counted them) are appended as JSON to $WORK/concurrency-<GGUF name>.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${1:-2}
GGUF=${2:-$PWD/models/SmolLM2-135M-Instruct.Q4_1.gguf}
[ "$GGUF" = qwen3 ] && GGUF=$PWD/target/bench/qwen3/qwen3-1.7b-random-q4_k.gguf
CLIENTS=("${@:3}")
[ ${#CLIENTS[@]} -gt 0 ] || CLIENTS=(1 2 4 8 16)
WORK=${WORK:-$PWD/target/bench}
ROUNDS=${ROUNDS:-3}
MAX_TOKENS=${MAX_TOKENS:-64}
# The running sequences' states, each counted at its prompt plus MAX_TOKENS: an
# f16 KV cache takes 22.5 KiB a position on SmolLM2-135M and 112 KiB on
# Qwen3-1.7B (28 layers x 8 KV heads x 128 x K and V x 2 bytes), so 16 of these
# prompts (under 100 tokens with the template) with 64-token answers need about
# 60 and 290 MiB. 4096 never holds a sequence back.
MAX_STATE_MB=${MAX_STATE_MB:-4096}
OURS=127.0.0.1:${OURS_PORT:-19121}
LLAMA=127.0.0.1:${LLAMA_PORT:-19122}
mkdir -p "$WORK"

scripts/fetch-default-model.sh >/dev/null
if [ ! -f "$GGUF" ]; then
  case $(basename "$GGUF") in
    qwen3-1.7b-random-q4_k.gguf | qwen3-1.7b-random-q6_k.gguf)
      quant=$(basename "$GGUF" .gguf)
      echo "making $GGUF with bench/qwen3_vs_llama_cpp.sh" >&2
      WORK=$(dirname "$GGUF") QUANTS=${quant##*-} MODELS_ONLY=1 bench/qwen3_vs_llama_cpp.sh "$THREADS" ;;
    *) echo "no GGUF at $GGUF" >&2; exit 1 ;;
  esac
fi
# Our daemon answers /v1/chat/completions with the GGUF's own chat template (a
# Qwen3 GGUF made before bench/qwen3_vs_llama_cpp.py gave its tokenizer one has
# none: delete it to have it made again). The metadata comes first in the file.
[ "$(head -c 16M "$GGUF" | grep -ac tokenizer.chat_template)" -gt 0 ] ||
  { echo "$GGUF carries no tokenizer.chat_template" >&2; exit 1; }
cargo build --release --quiet -p switchyard --bins
SERVER=${LLAMA_SERVER:-$WORK/build-llama-server/bin/llama-server}
if [ ! -x "$SERVER" ]; then
  if [ -z "${LLAMA_CPP_SRC:-}" ]; then
    LLAMA_CPP_SRC=$WORK/src/llama_cpp_python-0.3.36/vendor/llama.cpp
    if [ ! -f "$LLAMA_CPP_SRC/CMakeLists.txt" ]; then
      mkdir -p "$WORK/src"
      python3 -m pip download --quiet --no-deps --no-binary :all: -d "$WORK/src" llama-cpp-python==0.3.36
      tar -xzf "$WORK/src/llama_cpp_python-0.3.36.tar.gz" -C "$WORK/src"
    fi
  fi
  command -v cmake >/dev/null || { echo "cmake is needed (apt-get install cmake, or pip install cmake)" >&2; exit 1; }
  echo "building llama-server from $LLAMA_CPP_SRC (once)" >&2
  cmake -S "$LLAMA_CPP_SRC" -B "$WORK/build-llama-server" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON >/dev/null
  cmake --build "$WORK/build-llama-server" --target llama-server -j "$(nproc)" >/dev/null
fi
python=.venv/bin/python
"$python" -c 'import httpx' 2>/dev/null || { python3 -m venv .venv; .venv/bin/pip install --quiet httpx; }

tmp=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
wait_up() { for _ in $(seq 1200); do curl -sf "http://$1/health" >/dev/null 2>&1 && return 0; curl -sf "http://$1/healthz" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "$1 did not come up" >&2; exit 1; }

max=$(printf '%s\n' "${CLIENTS[@]}" | sort -n | tail -1)
cat >"$tmp/policy.yaml" <<YAML
server:
  listen: $OURS
  request_deadline_ms: 600000
backends:
  local:
    - name: local
      model_path: $GGUF
      threads: $THREADS
      queue_capacity: $((max * 2))
      max_sequences: $max
      max_state_mb: $MAX_STATE_MB
      max_queue_wait_ms: 600000
routing:
  local_backend: local
YAML
target/release/switchyard serve --policy "$tmp/policy.yaml" 2>"$tmp/ours.log" &
pids+=($!)
wait_up "$OURS"

echo "threads $THREADS, $(basename "$GGUF"), $ROUNDS requests a client, $MAX_TOKENS tokens an answer; $(nproc) cores"
results=$WORK/concurrency-$(basename "$GGUF" .gguf).jsonl
single=""
header=--header
for n in "${CLIENTS[@]}"; do
  "$SERVER" -m "$GGUF" -t "$THREADS" -tb "$THREADS" --parallel "$n" -c $((n * 1024)) --host 127.0.0.1 \
    --port "${LLAMA##*:}" --no-webui 2>"$tmp/llama-$n.log" &
  server_pid=$!
  wait_up "$LLAMA"
  row=$("$python" bench/concurrency_vs_llama_server.py "http://$OURS/v1" local "http://$LLAMA/v1" \
    --clients "$n" --rounds "$ROUNDS" --max-tokens "$MAX_TOKENS" $header ${single:+--single "$single"} 2>"$tmp/row.json")
  echo "$row"
  cat "$tmp/row.json" >>"$results"
  header=
  if [ -z "$single" ]; then
    single=$("$python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["ours"]["tok_s"])' "$tmp/row.json")
  fi
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
done
echo "rows as JSON: $results" >&2
