#!/usr/bin/env bash
# Latency the shared state store (`state.backend: redis`) adds to a routed
# request, against the in-process default, on loopback.
#
# One zero-latency upstream (the test suite's cloud double, release build), one
# real redis-server (no persistence) and two daemons with the same policy: a
# priced remote backend, routing to it, a budget (held and settled around each
# remote call), rate limits per key and global (far above the load) and sticky
# sessions (on by default). They differ only in where that state lives: in the
# process (spend in budgets.state_file) or in Redis (hold and settle scripts,
# a session raise script, one GCRA script per request). Requests are routed
# (`"model": "auto"`) non-streamed chat completions, each a second turn of a
# conversation, at a fixed rate, with latency correction. They are routed to
# the remote, so the request's one round trip to the store carries its rate
# limits and its budget hold (the session's floor cannot change a remote
# decision, so it is not looked up; the tier is remembered after). The double
# loaded directly is the zero point; a PING sent to the same redis-server
# every 5 ms during the runs is the floor of any store asked on the path.
#
# The daemons are loaded in pairs in alternating order (memory, redis, then
# redis, memory, ...), each pair with its own direct run, so that a drift in
# the machine's speed hits both sides of a pair alike; the redis-minus-memory
# difference is taken per pair and its median reported. Then each daemon's
# own view from /metrics: the time spent before the backend is called
# (switchyard_router_overhead_seconds), the routing decision, and each state
# store round trip (switchyard_state_store_seconds, by op), over the measured
# runs only (the warm-up is subtracted).
#
# Goal: Redis adds under 0.5 ms at p99 over in-process at 2000 req/s.
#
# Usage: bench/state_overhead.sh [RATE_PER_S] [SECONDS]   (defaults: 2000, 20)
#   env: PAIRS (3), CONNECTIONS (32), WARMUP_SECONDS (3)
# Needs: redis-server (Debian's package: /usr/bin/redis-server), oha (installed
# with `cargo install oha --locked` when missing), python3, curl.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:-2000}
SECONDS_PER_RUN=${2:-20}
PAIRS=${PAIRS:-3}
CONNECTIONS=${CONNECTIONS:-32}
WARMUP_SECONDS=${WARMUP_SECONDS:-3}
GOAL_P99_MS=0.5

REDIS_SERVER=${REDIS_SERVER:-$(command -v redis-server || echo /usr/bin/redis-server)}
if [ ! -x "$REDIS_SERVER" ]; then
  echo "redis-server is not installed (apt-get install redis-server)" >&2
  exit 1
fi
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
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Four free loopback ports (all held open while chosen, so they differ).
read -r P_REDIS P_UPSTREAM P_MEMORY P_REDISD < <(python3 - <<'PY'
import socket
socks = []
for _ in range(4):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
)
UPSTREAM=127.0.0.1:${UPSTREAM_PORT:-$P_UPSTREAM}
MEMORY=127.0.0.1:${MEMORY_PORT:-$P_MEMORY}
REDISD=127.0.0.1:${REDISD_PORT:-$P_REDISD}
REDIS_PORT=${REDIS_PORT:-$P_REDIS}

mkdir -p "$work/redis"
"$REDIS_SERVER" --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$work/redis" --logfile "$work/redis.log" --daemonize no &
pids+=($!)
target/release/cloud-double --listen "$UPSTREAM" 2>"$work/double.log" &
pids+=($!)
for _ in $(seq 100); do
  [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && break
  sleep 0.1
done
[ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] || { echo "redis-server did not start:" >&2; cat "$work/redis.log" >&2; exit 1; }

# The common policy: everything but where the state lives. Limits far above
# what the bench spends or sends (a request holds ~$0.01 at worst and counts
# ~1,030 tokens), so that nothing is refused and pacing stays off.
common() {
  cat <<YAML
backends:
  remote:
    - name: echo
      base_url: http://$UPSTREAM/v1
      model: echo
      price: { input_per_mtok_usd: 2.5, output_per_mtok_usd: 10.0 }
routing:
  remote_backends: [echo]
  sessions: { sticky: true }
rate_limits:
  per_key: { requests_per_minute: 1000000000, tokens_per_minute: 1000000000 }
  global: { requests_per_minute: 1000000000, tokens_per_minute: 1000000000 }
YAML
}
{
  common
  cat <<YAML
budgets:
  state_file: $work/spend.json
  global: { daily_usd: 100000 }
YAML
} >"$work/policy-memory.yaml"
{
  common
  cat <<YAML
budgets:
  global: { daily_usd: 100000 }
state:
  backend: redis
  url_env: SWITCHYARD_BENCH_REDIS_URL
  key_prefix: bench
YAML
} >"$work/policy-redis.yaml"

SWITCHYARD_LOG=warn target/release/switchyard serve --policy "$work/policy-memory.yaml" --listen "$MEMORY" 2>"$work/memory.log" &
pids+=($!)
SWITCHYARD_BENCH_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0 SWITCHYARD_LOG=warn \
  target/release/switchyard serve --policy "$work/policy-redis.yaml" --listen "$REDISD" 2>"$work/redis-daemon.log" &
pids+=($!)
for addr in "$UPSTREAM" "$MEMORY" "$REDISD"; do
  for _ in $(seq 100); do curl -s -o /dev/null "http://$addr/" && break; sleep 0.1; done
done
# The redis daemon counts the store down until its first probe answers (and
# would serve fail-safe meanwhile): wait until /readyz says it is up.
for _ in $(seq 100); do
  curl -s "http://$REDISD/readyz" | grep -q '"up": *true' && break
  sleep 0.1
done
if ! curl -s "http://$REDISD/readyz" | grep -q '"up": *true'; then
  echo "the redis daemon does not see its store up:" >&2
  curl -s "http://$REDISD/readyz" >&2
  cat "$work/redis-daemon.log" >&2
  exit 1
fi

# A conversation's second turn: its history is looked up in the sticky
# sessions (a first turn has none to look up, and only remembers its tier).
body='{"model":"auto","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"What does the benchmark measure?"},{"role":"assistant","content":"The latency the shared state store adds."},{"role":"user","content":"Summarise it in one line."}]}'
# One request each, to fail early (and say where the routing sent it).
for side in memory redis; do
  addr=$MEMORY; [ $side = redis ] && addr=$REDISD
  curl -s -D "$work/check-$side.headers" -o "$work/check-$side.body" -H 'content-type: application/json' \
    -d "$body" "http://$addr/v1/chat/completions"
  status=$(head -1 "$work/check-$side.headers" | awk '{print $2}')
  route=$(grep -i '^x-switchyard-route:' "$work/check-$side.headers" | tr -d '\r' | awk '{print $2}')
  backend=$(grep -i '^x-switchyard-backend:' "$work/check-$side.headers" | tr -d '\r' | awk '{print $2}')
  if [ "$status" != 200 ]; then
    echo "a routed request through the $side daemon answered $status:" >&2
    cat "$work/check-$side.body" >&2
    exit 1
  fi
  echo "check: $side daemon answered 200, route=${route:-?} backend=${backend:-?}" >&2
done

load() { # load URL OUT [extra oha args...]
  local url=$1 out=$2; shift 2
  oha --no-tui --output-format json -m POST -H 'content-type: application/json' -d "$body" "$@" "$url" >"$out"
}
fixed() { # fixed URL OUT SECONDS
  load "$1" "$2" -z "${3}s" -q "$RATE" -c "$CONNECTIONS" --latency-correction
}
# The floor: one loopback round trip to the same redis-server, from another
# process, while a daemon is under the load: a PING every 5 ms (light enough
# to add nothing measurable), timed from the send to the whole reply. Any
# store asked once on a request's path pays at least this.
cat >"$work/probe.py" <<'PY'
import socket, sys, time
port, seconds, out = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
s = socket.create_connection(("127.0.0.1", port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
samples, start = [], time.perf_counter()
tick = start
while tick - start < seconds:
    tick += 0.005
    pause = tick - time.perf_counter()
    if pause > 0:
        time.sleep(pause)
    sent = time.perf_counter_ns()
    s.sendall(b"*1\r\n$4\r\nPING\r\n")
    reply = b""
    while not reply.endswith(b"\r\n"):
        reply += s.recv(64)
    samples.append(time.perf_counter_ns() - sent)
open(out, "w").write("\n".join(str(n) for n in samples))
PY
probed() { # probed SIDE URL OUT SECONDS: a fixed-rate run with the probe beside it
  python3 "$work/probe.py" "$REDIS_PORT" "$4" "$work/probe-$1-$(basename "$3" .json).txt" &
  local probe=$!
  fixed "$2" "$3" "$4"
  wait "$probe"
}
direct_url=http://$UPSTREAM/v1/chat/completions
memory_url=http://$MEMORY/v1/chat/completions
redis_url=http://$REDISD/v1/chat/completions

echo "warm-up: ${WARMUP_SECONDS}s at $RATE req/s on each target" >&2
fixed "$direct_url" "$work/warm-direct.json" "$WARMUP_SECONDS"
fixed "$memory_url" "$work/warm-memory.json" "$WARMUP_SECONDS"
fixed "$redis_url" "$work/warm-redis.json" "$WARMUP_SECONDS"
curl -s "http://$MEMORY/metrics" >"$work/metrics-memory-before.txt"
curl -s "http://$REDISD/metrics" >"$work/metrics-redis-before.txt"
redis-cli -p "$REDIS_PORT" config resetstat >/dev/null

echo "fixed rate: $RATE req/s for ${SECONDS_PER_RUN}s a run, $CONNECTIONS connections, routed non-streamed chat completions; $PAIRS pairs in alternating order" >&2
for i in $(seq "$PAIRS"); do
  fixed "$direct_url" "$work/direct$i.json" "$SECONDS_PER_RUN"
  if [ $((i % 2)) = 1 ]; then
    probed memory "$memory_url" "$work/memory$i.json" "$SECONDS_PER_RUN"
    probed redis "$redis_url" "$work/redis$i.json" "$SECONDS_PER_RUN"
  else
    probed redis "$redis_url" "$work/redis$i.json" "$SECONDS_PER_RUN"
    probed memory "$memory_url" "$work/memory$i.json" "$SECONDS_PER_RUN"
  fi
  echo "pair $i done" >&2
done
curl -s "http://$MEMORY/metrics" >"$work/metrics-memory-after.txt"
curl -s "http://$REDISD/metrics" >"$work/metrics-redis-after.txt"
curl -s "http://$REDISD/readyz" >"$work/readyz-redis.json"
redis-cli -p "$REDIS_PORT" info commandstats >"$work/redis-commandstats.txt"
redis-cli -p "$REDIS_PORT" dbsize >"$work/redis-dbsize.txt"
# What the store keeps: every settled call's id stays in the `done` set for a
# day (so a repeated settlement is not charged twice).
{
  redis-cli -p "$REDIS_PORT" info memory | grep -E '^used_memory:' | tr -d '\r'
  echo "done_members:$(redis-cli -p "$REDIS_PORT" zcard 'bench:{bench}:done')"
  echo "done_bytes:$(redis-cli -p "$REDIS_PORT" memory usage 'bench:{bench}:done' samples 0)"
} >"$work/redis-memory.txt"

python3 - "$work" "$RATE" "$SECONDS_PER_RUN" "$PAIRS" "$CONNECTIONS" "$GOAL_P99_MS" <<'PY'
import json, re, statistics, sys
work, rate, secs, pairs, conns, goal = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
def read(name):
    with open(f"{work}/{name}.json") as f:
        return json.load(f)
def pct(run, p):
    return run["latencyPercentiles"][f"p{p}"] * 1000.0
CUT = "aborted due to deadline"  # oha: in flight when the run's time was up
def ok_share(run):
    """(share of the answers that were 200, answers, requests cut at the deadline, other errors)"""
    codes = run.get("statusCodeDistribution", {})
    errors = dict(run.get("errorDistribution", {}))
    cut = errors.pop(CUT, 0)
    answers = sum(codes.values())
    return codes.get("200", 0) / (answers or 1), answers, cut, errors
P = (50, 90, 99)
runs = {side: [read(f"{side}{i}") for i in range(1, pairs + 1)] for side in ("direct", "memory", "redis")}

print(f"fixed rate {rate} req/s, {secs} s a run, {conns} connections, routed (model auto) non-streamed chat completions, loopback")
print("(200s: share of the answers with status 200, of `answers`; cut: requests still in flight when the run's")
print(" time was up, which oha drops unanswered and leaves out of the percentiles)")
print(f"{'':26}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'req/s':>8}{'200s':>9}{'answers':>9}{'cut':>5}")
odd = []
all_answers = all_ok = all_cut = 0
for i in range(pairs):
    order = ("direct", "memory", "redis") if i % 2 == 0 else ("direct", "redis", "memory")
    for side in order:
        run = runs[side][i]
        share, answers, cut, errors = ok_share(run)
        all_answers += answers
        all_ok += run.get("statusCodeDistribution", {}).get("200", 0)
        all_cut += cut
        if share < 1.0 or errors:
            odd.append(f"pair {i+1} {side}: {share:.2%} of {answers} answers were 200 "
                       f"(codes {run.get('statusCodeDistribution')}, errors {run.get('errorDistribution')})")
        print(f"{'pair %d %s' % (i + 1, side):26}" + "".join(f"{pct(run, p):9.3f}" for p in P)
              + f"{run['summary']['requestsPerSec']:8.0f}{share:9.2%}{answers:9d}{cut:5d}")
print(f"all measured runs: {all_ok} of {all_answers} answers were 200 ({all_ok / (all_answers or 1):.3%}); "
      f"{all_cut} requests cut unanswered at the end of a run")
print()
print("median over the pairs")
label = {"direct": "direct (zero point)", "memory": "memory (in-process)", "redis": "redis (shared state)"}
for side in ("direct", "memory", "redis"):
    print(f"{label[side]:26}" + "".join(f"{statistics.median(pct(r, p) for r in runs[side]):9.3f}" for p in P))
print("added over direct (median of the pairs' differences)")
for side in ("memory", "redis"):
    print(f"{label[side]:26}" + "".join(
        f"{statistics.median(pct(runs[side][i], p) - pct(runs['direct'][i], p) for i in range(pairs)):9.3f}" for p in P))
print()
d50 = [pct(runs["redis"][i], 50) - pct(runs["memory"][i], 50) for i in range(pairs)]
d99 = [pct(runs["redis"][i], 99) - pct(runs["memory"][i], 99) for i in range(pairs)]
print("redis - memory, per pair:  p50 " + ", ".join(f"{d:+.3f}" for d in d50) + " ms;  p99 " + ", ".join(f"{d:+.3f}" for d in d99) + " ms")
m50, m99 = statistics.median(d50), statistics.median(d99)
print(f"redis - memory, median:    p50 {m50:+.3f} ms, p99 {m99:+.3f} ms")
def probe(side):
    samples = []
    for i in range(1, pairs + 1):
        with open(f"{work}/probe-{side}-{side}{i}.txt") as f:
            samples += [int(line) / 1e6 for line in f if line.strip()]
    samples.sort()
    q = lambda p: samples[min(len(samples) - 1, int(p / 100 * len(samples)))]
    return q(50), q(99), len(samples)
print("the floor: one PING round trip to the same redis-server from another process, every 5 ms, during the runs")
for side in ("memory", "redis"):
    p50, p99, n = probe(side)
    print(f"  beside the {side} daemon's runs:{'':6}p50 {p50:.3f} ms, p99 {p99:.3f} ms ({n} round trips)")
verdict = "MET" if m99 < goal else "NOT MET"
print(f"goal: the redis state backend adds under {goal} ms at p99 over in-process at 2000 req/s on loopback: "
      f"{verdict} at {rate} req/s (median p99 difference {m99:+.3f} ms"
      + ("" if rate == 2000 else f"; this run was at {rate} req/s, not 2000") + ")")

# The daemons' own view, over the measured runs (after minus before the runs).
line_re = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)')
label_re = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
def scrape(name):
    out = {}
    with open(f"{work}/{name}.txt") as f:
        for line in f:
            m = line_re.match(line)
            if not m or line.startswith("#"):
                continue
            labels = tuple(sorted(label_re.findall(m.group(3) or "")))
            out[(m.group(1), labels)] = float(m.group(4))
    return out
def delta(side):
    before, after = scrape(f"metrics-{side}-before"), scrape(f"metrics-{side}-after")
    return {k: v - before.get(k, 0.0) for k, v in after.items()}
def histograms(metrics, name):
    """{labels without le: (sorted [(le, cumulative count)], sum, count)}"""
    out = {}
    for (metric, labels), value in metrics.items():
        if metric != f"{name}_bucket":
            continue
        le = dict(labels)["le"]
        key = tuple(l for l in labels if l[0] != "le")
        out.setdefault(key, []).append((float("inf") if le == "+Inf" else float(le), value))
    result = {}
    for key, buckets in out.items():
        buckets.sort()
        total = metrics.get((f"{name}_count", key), 0.0)
        result[key] = (buckets, metrics.get((f"{name}_sum", key), 0.0), total)
    return result
def quantile(buckets, q):
    """Prometheus' histogram_quantile: linear within the bucket holding the rank."""
    total = buckets[-1][1]
    if total <= 0:
        return float("nan")
    rank = q * total
    lower, below = 0.0, 0.0
    for le, cum in buckets:
        if cum >= rank:
            if le == float("inf"):
                return lower  # past the last finite bound: that bound
            return lower + (le - lower) * ((rank - below) / (cum - below) if cum > below else 1.0)
        lower, below = le, cum
    return lower
def us(seconds):
    return f"{seconds * 1e6:8.1f}"
print()
print("the daemons' own view (/metrics, measured runs only; p50/p99 interpolated within histogram buckets")
print("as Prometheus' histogram_quantile does, so only as fine as the bucket bounds (10, 25, 50, 100, 250, 500 us, ...")
print("for the router, 50, 100, 250, 500 us, ... for the store); mean = _sum/_count, exact)")
print(f"{'':54}{'p50 us':>8}{'p99 us':>8}{'mean us':>8}{'count':>9}")
for side in ("memory", "redis"):
    metrics = delta(side)
    for name in ("switchyard_router_overhead_seconds", "switchyard_decision_duration_seconds", "switchyard_state_store_seconds"):
        for key, (buckets, total_s, count) in sorted(histograms(metrics, name).items()):
            if count <= 0:
                continue
            tag = ",".join(f"{k}={v}" for k, v in key)
            short = name.replace("switchyard_", "").replace("_seconds", "")
            print(f"{side + ' ' + short + '{' + tag + '}':54}{us(quantile(buckets, 0.5))}{us(quantile(buckets, 0.99))}{us(total_s / count)}{int(count):9d}")
    for (metric, labels), value in sorted(metrics.items()):
        if metric in ("switchyard_state_store_errors_total", "switchyard_rate_limited_total") and value:
            odd.append(f"{side} daemon: {metric}{dict(labels)} rose by {value:.0f} during the runs")
    after = scrape(f"metrics-{side}-after")
    for (metric, labels), value in after.items():
        if metric == "switchyard_state_store_up" and value != 1:
            odd.append(f"{side} daemon: switchyard_state_store_up{dict(labels)} = {value:.0f} at the end")
print("(before the backend is called, together in one round trip: op=ratelimit and op=hold; op=session is the raise")
print(" script sent in the background after the decision; op=settle is written in the background too)")
print()
print("redis-server's side (INFO commandstats over the measured runs; usec_per_call is the server's own time):")
with open(f"{work}/redis-commandstats.txt") as f:
    for line in f:
        line = line.strip()
        if line.startswith("cmdstat_"):
            name, _, fields = line.partition(":")
            kv = dict(x.split("=", 1) for x in fields.split(","))
            print(f"  {name[8:]:12} calls {int(kv['calls']):9d}  usec_per_call {float(kv['usec_per_call']):7.2f}"
                  + (f"  failed {kv['failed_calls']}" if kv.get('failed_calls', '0') != '0' else "")
                  + (f"  rejected {kv['rejected_calls']}" if kv.get('rejected_calls', '0') != '0' else ""))
with open(f"{work}/redis-dbsize.txt") as f:
    print(f"  keys at the end: {f.read().strip()}")
mem = dict(l.strip().split(":", 1) for l in open(f"{work}/redis-memory.txt") if ":" in l)
try:
    members, done_bytes, used = int(mem["done_members"]), int(mem["done_bytes"]), int(mem["used_memory"])
    per = done_bytes / (members or 1)
    print(f"  memory at the end: {used / 2**20:.1f} MiB used; the settled-call set holds {members} ids in "
          f"{done_bytes / 2**20:.1f} MiB ({per:.0f} B an id; kept a day, so at {rate} remote calls/s "
          f"~{per * rate * 86400 / 2**30:.1f} GiB)")
except (KeyError, ValueError):
    print(f"  memory: {mem}")

for log in ("memory.log", "redis-daemon.log", "double.log", "redis.log"):
    with open(f"{work}/{log}", errors="replace") as f:
        lines = [l.rstrip() for l in f if l.strip()]
    if log == "double.log":
        lines = [l for l in lines if "listening on" not in l]
    if log == "redis.log":
        # (Its warning about vm.overcommit_memory concerns background saves: none here.)
        lines = [l for l in lines if re.search(r"WARNING|error|fail", l, re.I) and "overcommit" not in l]
    if lines:
        odd.append(f"{log}: {len(lines)} line(s), first: " + " | ".join(lines[:3]))
print()
if odd:
    print("odd things noticed:")
    for o in odd:
        print("  - " + o)
else:
    print("all answers were 200; no warnings or errors in the daemons' logs; no store errors, no rate-limited requests")
PY
