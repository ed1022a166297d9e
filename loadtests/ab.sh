#!/usr/bin/env bash
# Two builds of the server on the same burst, alternating, in one run: a change is
# judged against its baseline on the same machine in the same minutes, never against a
# figure from another day. For each run and mode, each binary gets a fresh server
# (cluster mode: config/cluster.toml with topics, databases, Redis keys and queues of
# its own; embedded mode: an empty data directory) and the same burst; the table
# gives the median of each.
#
#   loadtests/ab.sh BASELINE_BIN CANDIDATE_BIN
#   RUNS=5 MODES=cluster BUYERS=20000 loadtests/ab.sh old/flashsale target/release/flashsale
#
# Needs the services of scripts/services.sh for cluster mode, and a release build of
# flashsale-load (LOAD_BIN, default target/release/flashsale-load).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -ne 2 ]; then
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
baseline=$1 candidate=$2
runs=${RUNS:-3}
modes=${MODES:-"cluster embedded"}
buyers=${BUYERS:-10000}
load=${LOAD_BIN:-${CARGO_TARGET_DIR:-target}/release/flashsale-load}
out=${BENCH_DIR:-target/ab}
for bin in "$baseline" "$candidate" "$load"; do
  [ -x "$bin" ] || { echo "not an executable: $bin" >&2; exit 2; }
done
baseline=$(realpath "$baseline") candidate=$(realpath "$candidate")
mkdir -p "$out"
rm -f "$out"/*.json
export FLASHSALE__ADMIN__TOKEN=ab-admin-token-0123456789
export FLASHSALE__AUTH__JWT_SECRET=ab-jwt-secret-0123456789-0123456789
export FLASHSALE__HTTP__LISTEN=127.0.0.1:8080 FLASHSALE__ADMIN__LISTEN=127.0.0.1:9090
export RUST_LOG=warn
server=""
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; true' EXIT

# one MODE LABEL BIN RUN: a fresh server of BIN, one burst, its report in $out.
one() {
  local mode=$1 label=$2 bin=$3 run=$4 data config=()
  data=$(mktemp -d)
  if [ "$mode" = cluster ]; then
    config=(--config "$PWD/config/cluster.toml")
    export FLASHSALE__EVENTS__TOPIC_PREFIX="ab$(date +%s%N)." FLASHSALE__EVENTS__GROUP_PREFIX="ab$(date +%s%N)"
    # Each build keeps to databases, keys and queues of its own: a build with newer
    # migrations must not migrate the other's databases from under it.
    local pg=postgres://postgres@127.0.0.1:5432/flashsale_ab_$label
    export FLASHSALE__CATALOG__URL="${pg}_catalog"
    export FLASHSALE__SHARDS__URLS="[\"${pg}_shard_0\",\"${pg}_shard_1\",\"${pg}_shard_2\",\"${pg}_shard_3\"]"
    export FLASHSALE__INVENTORY__KEY_PREFIX="ab_$label"
    export FLASHSALE__QUEUE__ORDERS_QUEUE="ab.$label.orders" FLASHSALE__QUEUE__NOTIFICATIONS_QUEUE="ab.$label.notifications"
  fi
  # Embedded mode keeps its data under ./data: each server starts in an empty directory.
  (cd "$data" && exec "$bin" serve "${config[@]}") > "$out/server-$mode-$label-$run.log" 2>&1 &
  server=$!
  for _ in $(seq 120); do curl -fs http://127.0.0.1:8080/readyz >/dev/null 2>&1 && break; sleep 0.5; done
  curl -fs http://127.0.0.1:8080/readyz >/dev/null || { echo "$label did not become ready (see $out)" >&2; exit 1; }
  sleep 2 # relays and consumers join
  "$load" --quiet --max-in-flight 256 --report-json "$out/$mode-$label-$run.json" \
    burst --buyers "$buyers" --stock "$buyers" --window-ms 0 > "$out/$mode-$label-$run.txt" || true
  kill "$server"
  wait "$server" 2>/dev/null || true
  server=""
  rm -rf "$data"
}

for run in $(seq "$runs"); do
  for mode in $modes; do
    # Alternate which goes first, so that neither always meets a warmer machine.
    if [ $((run % 2)) = 1 ]; then order="baseline candidate"; else order="candidate baseline"; fi
    for label in $order; do
      bin=$baseline
      [ "$label" = candidate ] && bin=$candidate
      echo "== run $run, $mode, $label"
      one "$mode" "$label" "$bin" "$run"
    done
  done
done

python3 - "$out" "$runs" "$modes" <<'PY'
import json, statistics, sys
out, runs, modes = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")
print(f"\n{'mode':<9} {'build':<10} {'accepted/s (each run)':<28} {'median':>8} {'p50 ms':>8} {'p99 ms':>8} {'completed after s':>18}")
for mode in modes:
    medians = {}
    for label in ("baseline", "candidate"):
        reports = [json.load(open(f"{out}/{mode}-{label}-{r}.json")) for r in range(1, runs + 1)]
        rates = [r["acceptedPerSecond"] for r in reports]
        bad = [v for r in reports for v in r["violations"]]
        medians[label] = med(rates)
        print(f"{mode:<9} {label:<10} {' / '.join(f'{x:,.0f}' for x in rates):<28} {med(rates):>8,.0f} "
              f"{med([r['latencyMs']['p50'] for r in reports]):>8.0f} {med([r['latencyMs']['p99'] for r in reports]):>8.0f} "
              f"{med([r['completedAfterSeconds'] for r in reports]):>18.1f}" + (f"  VIOLATIONS: {bad}" if bad else ""))
    print(f"{mode:<9} candidate / baseline: {medians['candidate'] / medians['baseline']:.2f}")
PY
