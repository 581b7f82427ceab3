#!/usr/bin/env bash
# Many streaming clients at once on the local model, Switchyard against
# llama.cpp's llama-server (continuous batching, --parallel N: as many slots as
# clients), same GGUF, same threads, greedy: aggregate decode tok/s and time to
# first token p50/p99 at each concurrency (see concurrency_vs_llama_server.py).
#
# Usage: bench/concurrency_vs_llama_server.sh [THREADS] [GGUF] [CLIENTS...]
#   defaults: 2, the embedded SmolLM2 Q4_1, 1 2 4 8 16.
# llama-server is built with CMake from the llama.cpp source that
# llama-cpp-python's PyPI source package vendors (LLAMA_CPP_SRC, fetched into
# $WORK/src when unset), into $WORK/build-llama-server (a few minutes, once).
# ROUNDS (3) requests per client; MAX_TOKENS (64) per answer.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${1:-2}
GGUF=${2:-$PWD/models/SmolLM2-135M-Instruct.Q4_1.gguf}
CLIENTS=("${@:3}")
[ ${#CLIENTS[@]} -gt 0 ] || CLIENTS=(1 2 4 8 16)
WORK=${WORK:-$PWD/target/bench}
ROUNDS=${ROUNDS:-3}
MAX_TOKENS=${MAX_TOKENS:-64}
OURS=127.0.0.1:${OURS_PORT:-19121}
LLAMA=127.0.0.1:${LLAMA_PORT:-19122}
mkdir -p "$WORK"

scripts/fetch-default-model.sh >/dev/null
cargo build --release --quiet -p switchyard --bins
if [ -z "${LLAMA_CPP_SRC:-}" ]; then
  LLAMA_CPP_SRC=$WORK/src/llama_cpp_python-0.3.36/vendor/llama.cpp
  if [ ! -f "$LLAMA_CPP_SRC/CMakeLists.txt" ]; then
    mkdir -p "$WORK/src"
    python3 -m pip download --quiet --no-deps --no-binary :all: -d "$WORK/src" llama-cpp-python==0.3.36
    tar -xzf "$WORK/src/llama_cpp_python-0.3.36.tar.gz" -C "$WORK/src"
  fi
fi
SERVER=$WORK/build-llama-server/bin/llama-server
if [ ! -x "$SERVER" ]; then
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
wait_up() { for _ in $(seq 600); do curl -sf "http://$1/health" >/dev/null 2>&1 && return 0; curl -sf "http://$1/healthz" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "$1 did not come up" >&2; exit 1; }

max=${CLIENTS[-1]}
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
      max_queue_wait_ms: 600000
routing:
  local_backend: local
YAML
target/release/switchyard serve --policy "$tmp/policy.yaml" 2>"$tmp/ours.log" &
pids+=($!)
wait_up "$OURS"

echo "threads $THREADS, $(basename "$GGUF"), $ROUNDS requests a client, $MAX_TOKENS tokens an answer; $(nproc) cores"
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
  header=
  if [ -z "$single" ]; then
    single=$("$python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["ours"]["tok_s"])' "$tmp/row.json")
  fi
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
done
