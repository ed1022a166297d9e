#!/usr/bin/env bash
# The domain events under a burst, cluster mode: RUNS times, a fresh server sells
# 10,000 units to 10,000 buyers arriving at once while /metrics is sampled every
# 250 ms. Reports per run: how fast the outbox relays published (events/s over the
# publishing window and the best second), when the last event was published and
# consumed (from the burst start), and the end-to-end lag from the change's commit to
# the analytics consumer (p50 / p99). Needs the services of scripts/services.sh,
# Kafka included.
#
#   loadtests/events-bench.sh            # 3 runs, about 2 minutes
#   RUNS=5 BUYERS=20000 loadtests/events-bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-3}
buyers=${BUYERS:-10000}
out=${BENCH_DIR:-target/bench}/events
mkdir -p "$out"
export FLASHSALE__ADMIN__TOKEN=bench-admin-token-0123456789
export FLASHSALE__AUTH__JWT_SECRET=bench-jwt-secret-0123456789-0123456789
export FLASHSALE__HTTP__LISTEN=127.0.0.1:8080 FLASHSALE__ADMIN__LISTEN=127.0.0.1:9090
export RUST_LOG=warn
cargo build --release --workspace -q
bin=${CARGO_TARGET_DIR:-target}/release

# cpu PID: the CPU seconds the process has used so far (0 when there is none)
cpu() {
  if [ -n "$1" ] && [ -r "/proc/$1/stat" ]; then
    awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"
  else
    echo 0
  fi
}
broker=$(pgrep -x tansu | head -n 1 || true) # a local broker, when there is one

# published: events the relays published; consumed: events the analytics consumer read
sample() {
  curl -fs http://127.0.0.1:9090/metrics | awk -v t="$(date +%s.%N)" '
    /^flashsale_events_published_total/ {p += $NF}
    /^flashsale_events_consumed_total\{consumer="analytics"\}/ {c += $NF}
    END {printf "%s %d %d\n", t, p, c}'
}

for run in $(seq "$runs"); do
  # Topics and consumer groups of this run only.
  tag="bench$(date +%s)"
  FLASHSALE__EVENTS__TOPIC_PREFIX="$tag." FLASHSALE__EVENTS__GROUP_PREFIX="$tag" \
    "$bin/flashsale" serve --config config/cluster.toml > "$out/server-$run.log" 2>&1 &
  server=$!
  trap 'kill $server 2>/dev/null || true' EXIT
  for _ in $(seq 60); do curl -fs http://127.0.0.1:8080/readyz >/dev/null 2>&1 && break; sleep 0.5; done
  sleep 2 # the relays and consumers join
  base=$(sample)
  cpu0="$(cpu "$broker") $(cpu $server)"
  : > "$out/samples-$run.txt"
  (while true; do sample >> "$out/samples-$run.txt" || true; sleep 0.25; done) &
  sampler=$!
  start=$(date +%s.%N)
  "$bin/flashsale-load" --quiet --max-in-flight 256 --report-json "$out/burst-$run.json" \
    burst --buyers "$buyers" --stock "$buyers" --window-ms 0 > "$out/burst-$run.txt" || true
  # Each sold order makes two events (OrderCreated, OrderCompleted).
  want=$(python3 -c "import json,sys; print(2 * json.load(open(sys.argv[1]))['statusCounts'].get('201', 0))" "$out/burst-$run.json")
  for _ in $(seq 240); do
    read -r _ p c < <(sample)
    read -r _ p0 c0 <<< "$base"
    [ $((c - c0)) -ge "$want" ] && [ $((p - p0)) -ge "$want" ] && break
    sleep 0.5
  done
  kill $sampler 2>/dev/null || true
  sample >> "$out/samples-$run.txt"
  cpu1="$(cpu "$broker") $(cpu $server)"
  curl -fs http://127.0.0.1:9090/metrics > "$out/metrics-$run.txt"
  kill $server 2>/dev/null || true
  wait $server 2>/dev/null || true
  python3 - "$start" "$base" "$want" "$out/samples-$run.txt" "$out/metrics-$run.txt" "$out/burst-$run.json" "$cpu0" "$cpu1" <<'PY' | tee -a "$out/runs.txt"
import json, re, sys
start = float(sys.argv[1]); _, p0, c0 = sys.argv[2].split(); p0, c0 = int(p0), int(c0)
want = int(sys.argv[3])
rows = [tuple(map(float, l.split())) for l in open(sys.argv[4]) if l.strip()]
rows = [(t - start, p - p0, c - c0) for t, p, c in rows]
first = next(t for t, p, c in rows if p > 0)
done = next((t for t, p, c in rows if p >= want), rows[-1][0])
consumed = next((t for t, p, c in rows if c >= want), float("nan"))
rate = want / (done - first) if done > first else float("nan")
best = 0
for t, p, _ in rows:
    before = [q for s, q, _ in rows if s <= t - 1.0]
    if before:
        best = max(best, p - before[-1])
metrics = open(sys.argv[5]).read()
buckets = sorted(
    (float("inf") if le == "+Inf" else float(le), float(n))
    for le, n in re.findall(r'flashsale_event_lag_seconds_bucket\{consumer="analytics",le="([^"]+)"\} (\S+)', metrics))
def q(quantile):
    """The quantile's bucket bound, interpolated within the bucket, in ms."""
    if not buckets:
        return float("nan")
    total = buckets[-1][1]
    lo_bound, lo_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= quantile * total:
            if bound == float("inf"):
                return lo_bound * 1000
            within = (quantile * total - lo_count) / max(count - lo_count, 1)
            return (lo_bound + (bound - lo_bound) * within) * 1000
        lo_bound, lo_count = bound, count
    return float("nan")
r = json.load(open(sys.argv[6]))
print(f"{r['statusCounts'].get('201', 0)} sold at {r['acceptedPerSecond']:.0f}/s; "
      f"{want} events; relay {rate:.0f} events/s (best second {best}); "
      f"last published {done:.2f} s, last consumed {consumed:.2f} s after the burst start; "
      f"commit-to-consumer lag p50 {q(0.5):.0f} ms, p99 {q(0.99):.0f} ms")
(b0, s0), (b1, s1) = (map(float, a.split()) for a in sys.argv[7:9])
broker = f"broker {b1 - b0:.1f} CPU-s" if b1 > 0 else "broker not local"
print(f"   from the burst to the last event consumed: {broker}, server {s1 - s0:.1f} CPU-s")
PY
done
