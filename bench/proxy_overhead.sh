#!/usr/bin/env bash
# Latency Switchyard adds between a client and an OpenAI-compatible upstream.
#
# A zero-latency upstream (the test suite's cloud double, release build) is
# loaded at a fixed request rate twice, directly and through the proxy, with
# the same load tool, connections and body; the difference of the latency
# percentiles is the proxy's overhead. Then the proxy is loaded without a rate
# limit to find the highest rate it sustains. Everything runs on loopback.
#
# Usage: bench/proxy_overhead.sh [RATE_PER_S] [SECONDS]   (defaults: 2000, 20)
# Needs: oha (installed with `cargo install oha --locked` when missing), python3.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:-2000}
SECONDS_PER_RUN=${2:-20}
CONNECTIONS=${CONNECTIONS:-32}
UPSTREAM=127.0.0.1:${UPSTREAM_PORT:-19101}
PROXY=127.0.0.1:${PROXY_PORT:-19102}
PROXY_NOMETRICS=127.0.0.1:${PROXY_NOMETRICS_PORT:-19103}

if ! command -v oha >/dev/null; then
  echo "installing oha (load generator) with cargo" >&2
  cargo install oha --locked
fi
# Two builds: built together, the daemon would get the test crate's features
# (OpenTelemetry export, NdArray), which cost the proxy ~30 us a request.
cargo build --release --quiet -p switchyard --bins
cargo build --release --quiet -p switchyard-e2e --bin cloud-double

work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

target/release/cloud-double --listen "$UPSTREAM" 2>"$work/double.log" &
pids+=($!)
cat >"$work/policy.yaml" <<YAML
backends:
  remote:
    - name: echo
      base_url: http://$UPSTREAM/v1
      model: echo
      price: { input_per_mtok_usd: 2.5, output_per_mtok_usd: 10.0 }
routing:
  remote_backends: [echo]
YAML
SWITCHYARD_LOG=warn target/release/switchyard serve --policy "$work/policy.yaml" --listen "$PROXY" 2>"$work/proxy.log" &
pids+=($!)
# The same proxy with metrics off, to measure what the metrics path costs.
{ echo "server:"; echo "  metrics: false"; cat "$work/policy.yaml"; } >"$work/policy-nometrics.yaml"
SWITCHYARD_LOG=warn target/release/switchyard serve --policy "$work/policy-nometrics.yaml" --listen "$PROXY_NOMETRICS" 2>"$work/proxy-nometrics.log" &
pids+=($!)
for addr in "$UPSTREAM" "$PROXY" "$PROXY_NOMETRICS"; do
  for _ in $(seq 100); do curl -s -o /dev/null "http://$addr/" && break; sleep 0.1; done
done

body='{"model":"echo","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Summarise the benchmark in one line."}]}'
load() { # load URL OUT [extra oha args...]
  local url=$1 out=$2; shift 2
  oha --no-tui --output-format json -m POST -H 'content-type: application/json' -d "$body" "$@" "$url" >"$out"
}

echo "fixed rate: $RATE req/s for ${SECONDS_PER_RUN}s, $CONNECTIONS connections, non-streamed chat completions" >&2
load "http://$UPSTREAM/v1/chat/completions" "$work/direct.json" -z "${SECONDS_PER_RUN}s" -q "$RATE" -c "$CONNECTIONS" --latency-correction
load "http://$PROXY/v1/chat/completions" "$work/proxy.json" -z "${SECONDS_PER_RUN}s" -q "$RATE" -c "$CONNECTIONS" --latency-correction
echo "unbounded rate for 10s, 64 connections, through the proxy" >&2
load "http://$PROXY/v1/chat/completions" "$work/max.json" -z 10s -c 64
echo "metrics on vs off: 10 pairs of 40,000 requests (64 connections), in alternating order" >&2
# Fixed work, paired: each pair's time ratio is taken on its own, so a drift in
# the machine's speed during the bench hits both sides of a pair alike.
for i in $(seq 10); do
  if [ $((i % 2)) = 1 ]; then
    load "http://$PROXY/v1/chat/completions" "$work/on$i.json" -n 40000 -c 64
    load "http://$PROXY_NOMETRICS/v1/chat/completions" "$work/off$i.json" -n 40000 -c 64
  else
    load "http://$PROXY_NOMETRICS/v1/chat/completions" "$work/off$i.json" -n 40000 -c 64
    load "http://$PROXY/v1/chat/completions" "$work/on$i.json" -n 40000 -c 64
  fi
done

python3 - "$work" "$RATE" <<'PY'
import json, sys
work, rate = sys.argv[1], int(sys.argv[2])
def read(name):
    with open(f"{work}/{name}.json") as f:
        return json.load(f)
def pct(run, p):
    return run["latencyPercentiles"][f"p{p}"] * 1000.0
def ok_share(run):
    codes = run.get("statusCodeDistribution", {})
    total = sum(codes.values()) or 1
    return codes.get("200", 0) / total, total
direct, proxy, peak = read("direct"), read("proxy"), read("max")
print(f"{'':22}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'req/s':>10}{'200s':>9}")
for name, run in (("direct", direct), ("through switchyard", proxy)):
    share, total = ok_share(run)
    print(f"{name:22}{pct(run,50):10.3f}{pct(run,90):10.3f}{pct(run,99):10.3f}{run['summary']['requestsPerSec']:10.0f}{share:9.1%}")
print(f"{'overhead':22}{pct(proxy,50)-pct(direct,50):10.3f}{pct(proxy,90)-pct(direct,90):10.3f}{pct(proxy,99)-pct(direct,99):10.3f}")
share, total = ok_share(peak)
print(f"max sustained through switchyard: {peak['summary']['requestsPerSec']:.0f} req/s "
      f"(64 connections, p99 {pct(peak,99):.2f} ms, {share:.1%} of {total} answered 200)")
import statistics
pairs = [read(f"on{i}")["summary"]["total"] / read(f"off{i}")["summary"]["total"] for i in range(1, 11)]
ratio = statistics.median(pairs)
print("metrics on/off time per pair: " + ", ".join(f"{r:.3f}" for r in pairs))
print(f"metrics on/off, median of the pairs: {ratio:.3f} (metrics cost {100*(ratio-1):+.1f}% of the time per request)")
PY
