#!/usr/bin/env bash
# Switchyard's engine against llama.cpp on the same GGUF, same threads, same
# prompt: prefill tokens/s (512-token prompt), decode tokens/s, peak RSS.
#
# llama.cpp is llama-cpp-python built from its PyPI source package for this CPU
# (GGML_NATIVE=ON), in bench/.venv-llama (the first run builds it: ~12 min).
#
# Usage: bench/engine_vs_llama_cpp.sh [MODEL.gguf] [THREADS] [RUNS]
# NDARRAY=1 adds Switchyard on Burn's NdArray backend to each round, for comparison.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-$(scripts/fetch-default-model.sh)}
THREADS=${2:-2}
RUNS=${3:-3}

venv=bench/.venv-llama
if ! "$venv/bin/python" -c 'import llama_cpp' 2>/dev/null; then
  echo "building llama-cpp-python from source for this CPU (one time, ~12 min)" >&2
  python3 -m venv "$venv"
  CMAKE_ARGS="-DGGML_NATIVE=ON" "$venv/bin/pip" install --quiet --no-binary llama-cpp-python \
    'llama-cpp-python==0.3.36' >&2
fi
extra=()
if [ "${NDARRAY:-0}" = 1 ]; then
  cargo build --release --quiet -p switchyard --features ndarray
  extra=(--ndarray)
else
  cargo build --release --quiet -p switchyard
fi
exec "$venv/bin/python" bench/engine_vs_llama_cpp.py --model "$MODEL" --threads "$THREADS" --runs "$RUNS" \
  --switchyard target/release/switchyard "${extra[@]}"
