#!/usr/bin/env bash
# Constrained decoding's added cost per generated token, Switchyard (llguidance) against
# llama.cpp's grammar sampling (llama-cpp-python), any JSON object and a JSON schema, on the same
# GGUF: SmolLM2-135M, then a tiny random Qwen3.5 with Qwen3.5's 248,320-token vocabulary (written
# from a converter-made fixture with the PyPI `gguf` package, no torch; see bench/constraint_cost.py).
#
# Usage: bench/constraint_cost.sh [THREADS] [RUNS] [smollm2|248k|both]
# LLAMA_VENV as in bench/llama_cpp_venvs.sh (llama-cpp-python 0.3.36 built for this CPU);
# GGUF_VENV: a venv for the `gguf` package (made here when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${1:-2}
RUNS=${2:-5}
WHICH=${3:-both}
LLAMA_VENV=${LLAMA_VENV:-bench/.venv-llama}
GGUF_VENV=${GGUF_VENV:-target/bench/.venv-gguf}
if ! "$LLAMA_VENV/bin/python" -c 'import llama_cpp' 2>/dev/null; then
  echo "building llama-cpp-python from source for this CPU (one time, ~12 min)" >&2
  python3 -m venv "$LLAMA_VENV"
  CMAKE_ARGS="-DGGML_NATIVE=ON" "$LLAMA_VENV/bin/pip" install --quiet --no-binary llama-cpp-python \
    'llama-cpp-python==0.3.36' >&2
fi
cargo build --release --quiet -p switchyard
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
bench() {
  python3 bench/constraint_cost.py bench --switchyard target/release/switchyard --python "$LLAMA_VENV/bin/python" \
    --schema-file "$scratch/schema.json" --threads "$THREADS" --runs "$RUNS" "$@"
}
if [[ $WHICH != 248k ]]; then
  bench --model "$(scripts/fetch-default-model.sh)"
fi
if [[ $WHICH != smollm2 ]]; then
  VOCAB_GGUF=target/bench/qwen35-tiny-248k-fixture.gguf
  if [[ ! -f $VOCAB_GGUF ]]; then
    if ! "$GGUF_VENV/bin/python" -c 'import gguf' 2>/dev/null; then
      python3 -m venv "$GGUF_VENV"
      "$GGUF_VENV/bin/pip" install --quiet 'gguf==0.19.0' >&2
    fi
    mkdir -p target/bench
    "$GGUF_VENV/bin/python" bench/constraint_cost.py gguf "$VOCAB_GGUF"
  fi
  # A real Qwen3.5-2B step at Q6_K, 2 threads (docs/engine.md, 2026-12-04:
  # OURS_ON_GGUF=1 bench/qwen35_vs_llama_cpp.sh 2 3 128): ours 12.11 tok/s, llama.cpp 10.44 tok/s.
  bench --model "$VOCAB_GGUF" --thinking-off --reference-step-ms-ours 82.6 --reference-step-ms-llama 95.8
fi
