#!/usr/bin/env bash
# Switchyard's engine against llama.cpp at Qwen3.5-2B's real dimensions (random weights):
# Q6_K, Q4_K and MLX 6-bit, same threads, same 512-id prompt: prefill tokens/s, decode tokens/s,
# peak RSS, decode's share of the bandwidth ceiling (decode tok/s x bytes of weights read per
# token / this machine's read bandwidth); then the time to first token of a conversation's
# second turn. The Qwen3-1.7B benchmark (bench/qwen3_vs_llama_cpp.sh) does the same for a
# plain transformer; its helpers are imported.
#
# 1. Writes a random Qwen3.5-2B text model (Qwen3_5ForCausalLM, model_type qwen3_5_text:
#    24 layers, [DeltaNet x 3, gated full attention] x 6, hidden 2048, vocab 248320, tied)
#    as a Hugging Face directory, BF16 safetensors (3.8 GB) with a 248320-token byte-level BPE
#    tokenizer.json and Qwen3.5's chat template, into WORK/hf (reused if present).
# 2. Writes the same weights as mlx-lm converts them (affine, 6 bits, groups of 64) into
#    WORK/mlx6.
# 3. Converts WORK/hf with llama.cpp's own convert_hf_to_gguf.py (--outtype bf16 --no-mtp) and
#    quantizes that with llama_model_quantize to Q6_K and Q4_K, "pure" (every matrix in that
#    type, as ours). The BF16 GGUF is deleted afterwards.
# 4. Prefill / decode / RSS: ours on the Hugging Face directory (--quant q6_k / q4_k, quantized
#    at load) and on the MLX directory, llama.cpp on its GGUFs, alternating, one process per run
#    (peak RSS = that process's ru_maxrss), median of RUNS rounds, with a read-bandwidth test in
#    each round. The MLX rows are compared with llama.cpp's Q6_K (llama.cpp cannot read MLX).
# 5. Turn two: a conversation's turn one (a 512-token templated user message, thinking off, and
#    a 32-token greedy answer), then turn two (turn one, its answer, about 32 new tokens); TTFT
#    of turn two and the tokens each engine reused and ran. Ours through a daemon (`switchyard
#    serve`, as bench/turn_two.sh), which keeps the conversation's state (the DeltaNet state
#    snapshotted at turn one's last turn boundary); llama.cpp through llama-cpp-python's Llama in
#    one process, which reuses the longest common prefix of what it evaluated when its memory
#    can be cut back there. Qwen3.5's template drops turn one's think block from the history,
#    so turn two always parts from what was evaluated right after turn one's
#    `<|im_start|>assistant\n` ("chat" rows, the same messages for both engines); "switchyard
#    cold" is that turn two without the state, "llama.cpp ids" turn two as the exact token
#    continuation (llama.cpp's best case, which no chat client of Qwen3.5 sends). See
#    bench/qwen35_vs_llama_cpp.py, section 5.
#
# llama.cpp is llama-cpp-python 0.3.36 built from its PyPI source package for this CPU
# (GGML_NATIVE=ON); its sdist's vendored llama.cpp supplies the converter, run in a venv with
# the converter's requirements (torch, transformers).
#
# Usage: bench/qwen35_vs_llama_cpp.sh [THREADS] [RUNS] [DECODE_TOKENS]
# Env: WORK (default target/bench/qwen35; target/bench/qwen35-tiny with QWEN35_TINY=1),
#      LLAMA_VENV (default bench/.venv-llama, built if missing, ~12 min), CONVERT_VENV (default
#      bench/.venv-convert, made if missing), LLAMA_CPP_SRC (the sdist's vendor/llama.cpp;
#      downloaded into WORK if unset), OURS_ON_GGUF=1 also runs ours on llama.cpp's GGUFs,
#      BIN=path/to/switchyard uses that binary instead of building target/release,
#      ANSWER_TOKENS (32) and NEW_TOKENS (32) shape turn two, TURN_TWO=0 skips it, BW_MIB (1024)
#      sizes the bandwidth test's buffer.
#      QWEN35_TINY=1: tiny dimensions for a smoke test (hidden 256, 4 layers, vocab 8192,
#      intermediate 512; head sizes as the 2B's); QWEN35_LAYERS, QWEN35_HIDDEN,
#      QWEN35_INTERMEDIATE, QWEN35_VOCAB override single values; SHARD_MB the largest
#      safetensors shard (default 5000, as save_pretrained).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${1:-2}
RUNS=${2:-3}
DECODE=${3:-128}
if [ "${QWEN35_TINY:-0}" = 1 ]; then
  WORK=${WORK:-target/bench/qwen35-tiny}
  name=qwen3.5-tiny
else
  WORK=${WORK:-target/bench/qwen35}
  name=qwen3.5-2b
fi
helper=bench/qwen35_vs_llama_cpp.py
mkdir -p "$WORK"
. bench/llama_cpp_venvs.sh

"$CONVERT_VENV/bin/python" "$helper" checkpoint "$WORK/hf" --shard-mb "${SHARD_MB:-5000}"
check_mlx=()
"$CONVERT_VENV/bin/python" -c 'import mlx.core' 2>/dev/null && check_mlx=(--check-mlx)
"$CONVERT_VENV/bin/python" "$helper" mlx "$WORK/hf" "$WORK/mlx6" "${check_mlx[@]}"
bf16=$WORK/$name-random-bf16.gguf
for q in q6_k q4_k; do
  out=$WORK/$name-random-$q.gguf
  # A GGUF older than the checkpoint is from an earlier one.
  [ -f "$out" ] && [ "$out" -nt "$WORK/hf/config.json" ] && continue
  if [ ! -f "$bf16" ] || [ "$bf16" -ot "$WORK/hf/config.json" ]; then
    echo "converting with llama.cpp's convert_hf_to_gguf.py" >&2
    "$CONVERT_VENV/bin/python" "$helper" convert "$WORK/hf" "$bf16" --converter-dir "$LLAMA_CPP_SRC" \
      >"$WORK/convert.log" 2>&1 || { tail -n 30 "$WORK/convert.log" >&2; exit 1; }
  fi
  echo "quantizing to $q with llama.cpp" >&2
  "$LLAMA_VENV/bin/python" "$helper" quantize "$bf16" "$out" "$q" --threads "$THREADS" 2>"$WORK/quantize-$q.log"
done
rm -f "$bf16"

if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet -p switchyard --bins
  BIN=target/release/switchyard
fi
"$LLAMA_VENV/bin/python" "$helper" bandwidth "$WORK" --threads "$THREADS" --mib "${BW_MIB:-1024}"
extra=()
[ "${OURS_ON_GGUF:-0}" = 1 ] && extra=(--ours-on-gguf)
"$LLAMA_VENV/bin/python" "$helper" bench --checkpoint "$WORK/hf" --mlx "$WORK/mlx6" --workdir "$WORK" \
  --switchyard "$BIN" --threads "$THREADS" --runs "$RUNS" --decode-tokens "$DECODE" --bw-mib "${BW_MIB:-1024}" \
  --json-out "$WORK/results.json" "${extra[@]}"
[ "${TURN_TWO:-1}" = 0 ] && exit 0
exec "$LLAMA_VENV/bin/python" "$helper" turn-two --checkpoint "$WORK/hf" --mlx "$WORK/mlx6" --workdir "$WORK" \
  --switchyard "$BIN" --threads "$THREADS" --runs "$RUNS" --answer-tokens "${ANSWER_TOKENS:-32}" \
  --new-tokens "${NEW_TOKENS:-32}" --json-out "$WORK/turn_two.json" "${extra[@]}"
