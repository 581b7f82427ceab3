#!/usr/bin/env bash
# Runs Switchyard's whole test suite: unit tests of every crate and the
# end-to-end tests, which start the real binary and drive it with real clients.
# Usage: tests/run.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

# The observability tests drive a real Prometheus (and promtool) and headless
# Chromium; the shared-state tests a real Redis (redis-server, with redis-cli)
# and replicas each in a network namespace of its own where they can be made
# (root, iproute2's `ip`; SWITCHYARD_TEST_NETNS=off keeps them on loopback):
# Debian packages, installed when missing (with sudo unless root). The
# package's own service may not start (policy-rc.d in containers): the tests
# start their own servers.
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null || ! command -v chromium >/dev/null \
  || ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  if ! command -v apt-get >/dev/null; then
    echo "tests/run.sh: the observability tests need prometheus (with promtool) and chromium, the shared-state tests redis-server (with redis-cli), on PATH; install them and run again" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  sudo_or_not=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
  echo "tests/run.sh: installing prometheus, chromium and redis-server (Debian packages) for the observability and shared-state tests" >&2
  $sudo_or_not apt-get update -qq
  $sudo_or_not apt-get install -y -qq prometheus chromium redis-server >/dev/null
fi

# The official openai SDK, for the client tests, and kubernetes-validate, for
# the manifests in deploy/k8s, in a venv of the workspace.
if ! .venv/bin/python -c 'import openai, kubernetes_validate' 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
fi

# The official openai Node SDK, for the Node client test (pinned in tests/node).
if [ ! -d tests/node/node_modules/openai ]; then
  npm ci --prefix tests/node --no-audit --no-fund --silent
fi

# The embedded default model, for the engine's reference tests and the daemon's
# local backend (a no-op when it is already there and verified).
scripts/fetch-default-model.sh >/dev/null

# The end-to-end tests start target/debug/switchyard: build it first, in the
# same profile as the tests so nothing is compiled twice.
cargo build --workspace --bins
cargo test --workspace "$@"
