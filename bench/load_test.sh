#!/usr/bin/env bash
# Load test: concurrent streaming clients for a fixed time against Switchyard
# serving the local model and a remote upstream that fails 20% of its calls.
#
# Every request must end as a complete answer or one clean error (none lost,
# none hanging), the daemon must not panic, and its RSS less the engine's KV
# caches (bounded by the policy, they grow to the longest requests served)
# must stay flat after warm-up (less the most they have held so far: memory
# they let go stays with the allocator). Loopback only; bounded in time.
#
# Usage: bench/load_test.sh [CLIENTS] [SECONDS]   (defaults: 64, 60)
# PROFILE=debug uses the test build instead of a release build; MAX_QUEUE_WAIT_MS
# sets the local backend's max_queue_wait_ms (default 2000), MAX_SEQUENCES its
# max_sequences and STATE_CACHE_MB its state_cache_mb (unset: the policy's
# defaults; STATE_CACHE_MB=0 keeps no conversation states, whose cache
# otherwise grows RSS until it is full). Also prints the
# share of answers the local model gave (the rest came from the remote: local-tier
# requests that found the local queue full spill there), from /metrics.
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${1:-64}
SECONDS_TOTAL=${2:-60}
WARMUP_S=${WARMUP_S:-20}
PROFILE=${PROFILE:-release}
UPSTREAM=127.0.0.1:${UPSTREAM_PORT:-19111}
PROXY=127.0.0.1:${PROXY_PORT:-19112}

scripts/fetch-default-model.sh >/dev/null
if [ "$PROFILE" = release ]; then
  # Two builds: built together, the daemon would get the test crate's features
  # (OpenTelemetry export, NdArray), which cost the proxy ~30 us a request.
  cargo build --release --quiet -p switchyard --bins
  cargo build --release --quiet -p switchyard-e2e --bin cloud-double --bin load
else
  cargo build --quiet -p switchyard -p switchyard-e2e --bins
fi
bin=target/$PROFILE

work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

"$bin/cloud-double" --listen "$UPSTREAM" 2>"$work/double.log" &
pids+=($!)
sequences=
[ -n "${MAX_SEQUENCES:-}" ] && sequences="      max_sequences: $MAX_SEQUENCES"
state_cache=
[ -n "${STATE_CACHE_MB:-}" ] && state_cache="      state_cache_mb: $STATE_CACHE_MB"
cat >"$work/policy.yaml" <<YAML
server:
  request_deadline_ms: 60000
backends:
  local:
    - name: smollm2
      model_path: $PWD/models/SmolLM2-135M-Instruct.Q4_1.gguf
      threads: 2
      queue_capacity: 8
      max_queue_wait_ms: ${MAX_QUEUE_WAIT_MS:-2000}
      default_max_tokens: 16
$sequences
$state_cache
  remote:
    - name: flaky
      base_url: http://$UPSTREAM/v1
      model: flaky-20
      price: { input_per_mtok_usd: 2.5, output_per_mtok_usd: 10.0 }
      retry: { max_attempts: 3, base_delay_ms: 50, max_delay_ms: 1000 }
      breaker: { failure_threshold: 50, cooldown_ms: 2000 }
routing:
  local_backend: smollm2
  remote_backends: [flaky]
YAML
SWITCHYARD_LOG=warn "$bin/switchyard" serve --policy "$work/policy.yaml" --listen "$PROXY" 2>"$work/proxy.log" &
proxy=$!
pids+=($proxy)
for _ in $(seq 200); do curl -s -o /dev/null "http://$PROXY/healthz" && break; sleep 0.1; done

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$proxy/status"; }
# With the memory the engine's KV caches hold (switchyard_local_kv_cache_bytes:
# each batch slot's cache grows to the longest request it served, bounded by
# max_sequences x context_length), so that what else the daemon holds can be
# told apart.
kv_kib() { curl -s --max-time 1 "http://$PROXY/metrics" | awk '/^switchyard_local_kv_cache_bytes/ {s += $2} END {printf "%d", s / 1024}'; }
( start=$(date +%s)
  while kill -0 "$proxy" 2>/dev/null; do
    echo "$(( $(date +%s) - start )) $(rss_kib) $(kv_kib)"
    sleep 2
  done ) >"$work/rss.txt" &
pids+=($!)

echo "$CLIENTS streaming clients for ${SECONDS_TOTAL}s (half local, half remote; the remote fails 20% of calls)" >&2
"$bin/load" --url "http://$PROXY" --clients "$CLIENTS" --seconds "$SECONDS_TOTAL" --timeout-s 120 --tiers "${TIERS:-local,remote}" >"$work/report.json"
alive=yes
kill -0 "$proxy" 2>/dev/null || alive=no
# Which tier answered (switchyard_requests_total's route label): the local
# model's share of the answers.
curl -s "http://$PROXY/metrics" >"$work/metrics.txt" || true

python3 - "$work/report.json" "$work/rss.txt" "$work/proxy.log" "$WARMUP_S" "$alive" "$work/metrics.txt" <<'PY'
import json, re, sys
report = json.load(open(sys.argv[1]))
samples = [tuple(map(int, l.split())) for l in open(sys.argv[2]) if len(l.split()) == 3]
log = open(sys.argv[3], errors="replace").read()
warmup = int(sys.argv[4])
after = [kib for t, kib, _ in samples if t >= warmup]
# Less the most the KV caches have held so far: memory they let go stays
# with the allocator, for the next long request.
rest, peak = [], 0
for t, kib, kv in samples:
    peak = max(peak, kv)
    if t >= warmup:
        rest.append(kib - peak)
panics = log.count("panicked")
print(f"requests {report['requests']}: complete {report['complete']}, clean errors {report['clean_errors']}, lost {report['lost']}")
print(f"by status: {report['by_status']}")
answered = {}  # (route, reason) -> chat requests answered 2xx
for line in open(sys.argv[6], errors="replace"):
    m = re.match(r"switchyard_requests_total\{(.*)\} (\S+)$", line.strip())
    if not m:
        continue
    labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
    if labels.get("endpoint") == "chat" and labels.get("outcome") == "2xx":
        key = (labels.get("route", "?"), labels.get("reason", "?"))
        answered[key] = answered.get(key, 0) + int(float(m.group(2)))
total = sum(answered.values())
if total:
    local = sum(n for (route, _), n in answered.items() if route == "local")
    print(f"answered (2xx): {total}; by the local model {local} ({100 * local / total:.1f}%), "
          f"remotely {total - local} ({100 * (total - local) / total:.1f}%)")
    print("answered by tier and reason:", ", ".join(f"{r}/{why} {n}" for (r, why), n in sorted(answered.items())))
else:
    print("answered (2xx): no switchyard_requests_total in /metrics")
for tier, l in [("all", report["latency_ms"]), *report["latency_ms_by_tier"].items()]:
    print(f"latency ms ({tier}): p50 {l['p50']:.0f}, p99 {l['p99']:.0f}, p99.9 {l['p999']:.0f}, max {l['max']:.0f}; "
          f"{l['over_1s']} over 1 s")
if report["lost_examples"]:
    print("lost examples:", *report["lost_examples"], sep="\n  ")
print("RSS MiB every 2 s:", " ".join(f"{kib/1024:.0f}" for t, kib, _ in samples))
print("of which the engine's KV caches:", " ".join(f"{kv/1024:.0f}" for t, _, kv in samples))
def flat(name, values):
    lo, hi = min(values), max(values)
    third = max(1, len(values) // 3)
    first, last = sum(values[:third]) / third, sum(values[-third:]) / third
    print(f"{name} after {warmup}s warm-up: min {lo/1024:.1f} MiB, max {hi/1024:.1f} MiB, spread {100*(hi-lo)/lo:.1f}%; "
          f"trend (mean of the last third vs the first) {100*(last-first)/first:+.1f}%")
    return hi <= 1.10 * lo
if after:
    flat("RSS", after)
    # The KV caches are bounded by the policy; everything else must stay flat.
    rest_flat = flat("RSS less the KV caches' peak so far", rest)
print(f"panics in the daemon's log: {panics}; daemon alive at the end: {sys.argv[5]}")
ok = report["lost"] == 0 and panics == 0 and sys.argv[5] == "yes" and (not after or rest_flat)
print("PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
PY
