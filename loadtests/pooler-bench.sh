#!/usr/bin/env bash
# What PgBouncer in transaction pooling costs, in one run on this machine (cluster mode,
# release builds): the same server straight on PostgreSQL (config/cluster.toml) and
# through PgBouncer on 6432 (config/cluster-pgbouncer.toml: unnamed statements, each
# statement outside a transaction in one of its own), alternating ROUNDS times, each a
# fresh process on the same databases: a burst (BUYERS on as many units, all at once) and
# a steady rate (RATE/s for SECONDS_EACH s). CPU is machine-wide (/proc/stat) minus the
# load generator's own, per completed order. Prints every run, the medians and the
# ratios (PgBouncer / direct). Needs scripts/services.sh's services.
#
#   loadtests/pooler-bench.sh            # about 7 minutes after the build
#   ROUNDS=5 BUYERS=20000 loadtests/pooler-bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3}
buyers=${BUYERS:-10000}
rate=${RATE:-1000}
each=${SECONDS_EACH:-10}
out=${BENCH_DIR:-target/pooler-bench}
mkdir -p "$out"
# shellcheck source=loadtests/env.sh
source loadtests/env.sh
ticks=$(getconf CLK_TCK)
machine_cpu() { # CPU seconds the whole machine has spent, every core
  awk -v hz="$ticks" '/^cpu / { printf "%.2f", ($2 + $3 + $4 + $7 + $8) / hz }' /proc/stat
}

# run NAME SCENARIO ARGS...: one flashsale-load run; prints "report.json generator_cpu machine_cpu"
run() {
  local name=$1; shift
  local m0 m1 gen
  m0=$(machine_cpu)
  gen=$( { TIMEFORMAT='%U %S'; time "$bin/flashsale-load" --quiet --max-in-flight 512 \
      --target http://127.0.0.1:8080 --admin-url http://127.0.0.1:9090 \
      --jwt-secret "$FLASHSALE__AUTH__JWT_SECRET" --report-json "$out/$name.json" "$@" \
      > "$out/$name.txt" 2>&1 || true; } 2>&1 | tail -n1 | awk '{print $1 + $2}')
  m1=$(machine_cpu)
  echo "$out/$name.json $gen $(awk -v a="$m0" -v b="$m1" 'BEGIN { printf "%.2f", b - a }')"
}

: > "$out/runs.txt"
for round in $(seq "$rounds"); do
  for kind in direct pgbouncer; do
    config=config/cluster.toml
    [ $kind = pgbouncer ] && config=config/cluster-pgbouncer.toml
    echo "== round $round: $kind"
    "$bin/flashsale" serve --config "$config" > "$out/$kind-$round.log" 2>&1 &
    pid=$!
    wait_ready http://127.0.0.1:9090 || { tail "$out/$kind-$round.log"; exit 1; }
    read -r bjson bgen bcpu < <(run "$kind-$round-burst" burst --buyers "$buyers" --stock "$buyers" --window-ms 0)
    read -r sjson sgen scpu < <(run "$kind-$round-steady" steady --rate "$rate" --duration-secs "$each" --sales 4)
    kill -TERM $pid; wait $pid || true
    echo "$kind $bjson $bgen $bcpu $sjson $sgen $scpu" >> "$out/runs.txt"
  done
done

python3 - "$out/runs.txt" <<'PY' | tee "$out/table.md"
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    kind, bj, bgen, bcpu, sj, sgen, scpu = line.split()
    b, s = json.load(open(bj)), json.load(open(sj))
    def per_order(report, gen, cpu):
        return (float(cpu) - float(gen)) / max(report["accepted"], 1) * 1e6
    rows.setdefault(kind, []).append([
        b["acceptedPerSecond"], b.get("completedAfterSeconds") or float("nan"), per_order(b, bgen, bcpu),
        s["latencyMs"]["p99"], s.get("completedAfterSeconds") or float("nan"), per_order(s, sgen, scpu),
        len(b["violations"]) + len(s["violations"]),
    ])
names = ["burst accepted/s", "burst: every order completed after (s)", "burst CPU per order (µs, machine minus generator)",
         f"steady p99 (ms)", "steady: every order completed after (s)", "steady CPU per order (µs, machine minus generator)",
         "violations (all runs)"]
print("| | direct (runs; median) | PgBouncer (runs; median) | PgBouncer / direct |")
print("|---|---|---|---|")
for i, name in enumerate(names):
    cols = []
    for kind in ("direct", "pgbouncer"):
        vals = [r[i] for r in rows[kind]]
        if i == 6:
            cols.append((str(sum(vals)), sum(vals)))
        else:
            cols.append((" / ".join(f"{v:,.1f}" for v in vals) + f" ({statistics.median(vals):,.1f})", statistics.median(vals)))
    ratio = "" if i == 6 or not cols[0][1] else f"{cols[1][1] / cols[0][1]:.2f}"
    print(f"| {name} | {cols[0][0]} | {cols[1][0]} | {ratio} |")
PY
