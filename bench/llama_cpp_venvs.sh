# Sourced by the benchmarks against llama.cpp (bench/qwen3_vs_llama_cpp.sh,
# bench/qwen35_vs_llama_cpp.sh): the two Python environments they run in, made
# when missing, and llama.cpp's source (for its converter).
#
# LLAMA_VENV (default bench/.venv-llama): llama-cpp-python 0.3.36 built from its
#   PyPI source package for this CPU (GGML_NATIVE=ON), ~12 min the first time.
# CONVERT_VENV (default bench/.venv-convert): the converter's requirements
#   (torch, transformers).
# LLAMA_CPP_SRC: the sdist's vendor/llama.cpp; downloaded into $WORK/src if unset.
LLAMA_VENV=${LLAMA_VENV:-bench/.venv-llama}
CONVERT_VENV=${CONVERT_VENV:-bench/.venv-convert}
if ! "$LLAMA_VENV/bin/python" -c 'import llama_cpp, numpy, jinja2, gguf' 2>/dev/null; then
  echo "building llama-cpp-python from source for this CPU (one time, ~12 min)" >&2
  python3 -m venv "$LLAMA_VENV"
  CMAKE_ARGS="-DGGML_NATIVE=ON" "$LLAMA_VENV/bin/pip" install --quiet --no-binary llama-cpp-python \
    'llama-cpp-python==0.3.36' numpy jinja2 gguf >&2
fi
if ! "$CONVERT_VENV/bin/python" -c 'import torch, transformers, safetensors, numpy, regex' 2>/dev/null; then
  echo "making the converter's venv (torch, transformers)" >&2
  python3 -m venv "$CONVERT_VENV"
  "$CONVERT_VENV/bin/pip" install --quiet torch==2.11.0 transformers==4.57.6 "numpy~=2.2.6" \
    "sentencepiece>=0.1.98,<0.3.0" "protobuf>=4.21.0,<5.0.0" safetensors >&2
fi
if [ -z "${LLAMA_CPP_SRC:-}" ]; then
  LLAMA_CPP_SRC=$WORK/src/llama_cpp_python-0.3.36/vendor/llama.cpp
  if [ ! -f "$LLAMA_CPP_SRC/convert_hf_to_gguf.py" ]; then
    "$LLAMA_VENV/bin/pip" download --quiet --no-deps --no-binary :all: -d "$WORK/src" llama-cpp-python==0.3.36 >&2
    tar -xzf "$WORK/src/llama_cpp_python-0.3.36.tar.gz" -C "$WORK/src"
  fi
fi
