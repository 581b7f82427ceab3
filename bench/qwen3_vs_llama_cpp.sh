#!/usr/bin/env bash
# Switchyard's engine against llama.cpp at Qwen3-1.7B's real dimensions (random weights),
# Q6_K and Q4_K, same threads, same 512-id prompt: prefill tokens/s, decode tokens/s, peak
# RSS; plus this machine's read bandwidth and decode's share of the ceiling it sets
# (decode tok/s x bytes of weights read per token / bandwidth).
#
# 1. Writes a random Qwen3-1.7B Hugging Face directory (BF16 safetensors, 3.4 GB, with a
#    byte-level BPE tokenizer.json laid out as Qwen3's: 151643 ordinary tokens, its 26 added
#    ones, padding to the 151936 rows; and Qwen3's chat template) into WORK/hf (weights
#    reused if present).
# 2. Converts it with llama.cpp's own convert_hf_to_gguf.py (--outtype bf16) and quantizes
#    that with llama.cpp's llama_model_quantize to Q6_K and Q4_K, "pure" (every matrix in
#    that type, as ours; llama.cpp's default mixes would put token_embd in Q6_K and some
#    attn_v / ffn_down higher). The BF16 GGUF is deleted afterwards.
# 3. Runs ours on the Hugging Face directory (--quant q6_k / q4_k, quantized at load) and
#    llama.cpp on its GGUF, alternating, one process per run (peak RSS = that process's
#    ru_maxrss), median of RUNS rounds; a read-bandwidth test runs in each round too.
#
# llama.cpp is llama-cpp-python 0.3.36 built from its PyPI source package for this CPU
# (GGML_NATIVE=ON); its sdist's vendored llama.cpp supplies the converter, run in a venv
# with the converter's requirements (torch, transformers).
#
# Usage: bench/qwen3_vs_llama_cpp.sh [THREADS] [RUNS] [DECODE_TOKENS]
# Env: WORK (default target/bench/qwen3), LLAMA_VENV (default bench/.venv-llama, built if
#      missing, ~12 min), CONVERT_VENV (default bench/.venv-convert, made if missing),
#      LLAMA_CPP_SRC (the sdist's vendor/llama.cpp; downloaded into WORK if unset),
#      OURS_ON_GGUF=1 also runs ours on llama.cpp's quantized GGUFs, QUANTS (default
#      "q6_k q4_k") the GGUFs made and measured, MODELS_ONLY=1 stops once they are made
#      (bench/concurrency_vs_llama_server.sh makes its Qwen3 GGUF so).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${1:-2}
RUNS=${2:-3}
DECODE=${3:-128}
WORK=${WORK:-target/bench/qwen3}
helper=bench/qwen3_vs_llama_cpp.py
mkdir -p "$WORK"
. bench/llama_cpp_venvs.sh

"$CONVERT_VENV/bin/python" "$helper" checkpoint "$WORK/hf"
bf16=$WORK/qwen3-1.7b-random-bf16.gguf
QUANTS=${QUANTS:-q6_k q4_k}
for q in $QUANTS; do
  out=$WORK/qwen3-1.7b-random-$q.gguf
  [ -f "$out" ] && continue
  if [ ! -f "$bf16" ]; then
    echo "converting with llama.cpp's convert_hf_to_gguf.py" >&2
    "$CONVERT_VENV/bin/python" "$helper" convert "$WORK/hf" "$bf16" --converter-dir "$LLAMA_CPP_SRC" >&2
  fi
  echo "quantizing to $q with llama.cpp" >&2
  "$LLAMA_VENV/bin/python" "$helper" quantize "$bf16" "$out" "$q" --threads "$THREADS" 2>"$WORK/quantize-$q.log"
done
rm -f "$bf16"
[ "${MODELS_ONLY:-0}" = 1 ] && exit 0

cargo build --release --quiet -p switchyard --bins
"$LLAMA_VENV/bin/python" "$helper" bandwidth "$WORK" --threads "$THREADS"
extra=()
[ "${OURS_ON_GGUF:-0}" = 1 ] && extra=(--ours-on-gguf)
exec "$LLAMA_VENV/bin/python" "$helper" bench --checkpoint "$WORK/hf" --workdir "$WORK" \
  --switchyard target/release/switchyard --quants $QUANTS --threads "$THREADS" --runs "$RUNS" --decode-tokens "$DECODE" \
  --json-out "$WORK/results.json" "${extra[@]}"
