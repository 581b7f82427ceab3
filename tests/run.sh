#!/usr/bin/env bash
# Runs Switchyard's whole test suite: unit tests of every crate and the
# end-to-end tests, which start the real binary and drive it with real clients.
# Usage: tests/run.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

# The official openai SDK, for the client tests, in a venv of the workspace.
if ! .venv/bin/python -c 'import openai' 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
fi

# The embedded default model, for the engine's reference tests and the daemon's
# local backend (a no-op when it is already there and verified).
scripts/fetch-default-model.sh >/dev/null

# The end-to-end tests start target/debug/switchyard: build it first, in the
# same profile as the tests so nothing is compiled twice.
cargo build --workspace --bins
cargo test --workspace "$@"
