#!/usr/bin/env bash
# Constrained decoding's cost per token, Switchyard against llama.cpp's grammar
# sampling on the same GGUF (default: the embedded SmolLM2-135M), free, any
# JSON object, and a JSON schema.
#
# Usage: bench/constraint_cost.sh [THREADS] [RUNS] [GGUF]
# LLAMA_VENV as in bench/llama_cpp_venvs.sh (llama-cpp-python built for this CPU);
# THINKING_OFF=1 for a model that thinks (ours is told --thinking off).
# At Qwen3.5's 248k vocabulary: a tiny random Qwen3.5 with that tokenizer, as
# llama.cpp's converter writes it (the converter environment of
# bench/llama_cpp_venvs.sh):
#   QWEN35_TINY=1 QWEN35_VOCAB=248320 python3 bench/qwen35_vs_llama_cpp.py checkpoint DIR
#   QWEN35_TINY=1 QWEN35_VOCAB=248320 python3 bench/qwen35_vs_llama_cpp.py convert DIR OUT.gguf --converter-dir SRC
#   THINKING_OFF=1 bench/constraint_cost.sh 2 5 OUT.gguf
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${1:-2}
RUNS=${2:-5}
MODEL=${3:-$(scripts/fetch-default-model.sh)}
LLAMA_VENV=${LLAMA_VENV:-bench/.venv-llama}
if ! "$LLAMA_VENV/bin/python" -c 'import llama_cpp' 2>/dev/null; then
  echo "building llama-cpp-python from source for this CPU (one time, ~12 min)" >&2
  python3 -m venv "$LLAMA_VENV"
  CMAKE_ARGS="-DGGML_NATIVE=ON" "$LLAMA_VENV/bin/pip" install --quiet --no-binary llama-cpp-python \
    'llama-cpp-python==0.3.36' >&2
fi
cargo build --release --quiet -p switchyard
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
python3 bench/constraint_cost.py --model "$MODEL" --switchyard target/release/switchyard \
  --python "$LLAMA_VENV/bin/python" --schema-file "$scratch/schema.json" --threads "$THREADS" --runs "$RUNS" \
  ${THINKING_OFF:+--thinking-off}
