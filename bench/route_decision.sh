#!/usr/bin/env bash
# Decision latency: features + difficulty model + policy (privacy rules, budget,
# sessions, eligibility), without generation, for prompts of about 100, 500 and
# 2,000 tokens; p50/p99 over many decisions in one process (release build).
#
# Usage: bench/route_decision.sh [POLICY] [ITERATIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
POLICY=${1:-policies/default.yaml}
ITERATIONS=${2:-2000}
scripts/fetch-default-model.sh >/dev/null
cargo build --release --quiet -p switchyard
target/release/switchyard route bench --policy "$POLICY" --iterations "$ITERATIONS"
