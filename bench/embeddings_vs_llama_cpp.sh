#!/usr/bin/env bash
# Local embeddings per second, Switchyard against llama.cpp's embedding mode on
# the same GGUFs (last-token pooling, --threads each), batched and one by one.
#
# Usage: bench/embeddings_vs_llama_cpp.sh [THREADS] [RUNS] [GGUF ...]
# Default GGUFs: the tiny random Qwen3 of the engine's fixtures and the
# embedded SmolLM2-135M (a real model's dimensions). LLAMA_VENV as in
# bench/llama_cpp_venvs.sh (llama-cpp-python built for this CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${1:-2}
RUNS=${2:-3}
shift $(( $# > 2 ? 2 : $# ))
LLAMA_VENV=${LLAMA_VENV:-bench/.venv-llama}
if ! "$LLAMA_VENV/bin/python" -c 'import llama_cpp' 2>/dev/null; then
  echo "building llama-cpp-python from source for this CPU (one time, ~12 min)" >&2
  python3 -m venv "$LLAMA_VENV"
  CMAKE_ARGS="-DGGML_NATIVE=ON" "$LLAMA_VENV/bin/pip" install --quiet --no-binary llama-cpp-python \
    'llama-cpp-python==0.3.36' >&2
fi
models=("$@")
if [ ${#models[@]} -eq 0 ]; then
  models=(engine/tests/fixtures/qwen/qwen3.gguf "$(scripts/fetch-default-model.sh)")
fi
cargo build --release --quiet -p switchyard
args=()
for m in "${models[@]}"; do args+=(--model "$m"); done
exec python3 bench/embeddings_vs_llama_cpp.py "${args[@]}" --switchyard target/release/switchyard \
  --python "$LLAMA_VENV/bin/python" --threads "$THREADS" --runs "$RUNS"
