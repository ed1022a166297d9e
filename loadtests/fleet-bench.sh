#!/usr/bin/env bash
# The fleet against one process, in one run on this machine (cluster mode, release
# build): RUNS rounds (default 3), alternating, each on fresh databases, queues, Redis
# keys and topics:
#   one     a single process with role `all` (public 8080, admin 9090)
#   fleet   scripts/fleet.sh up --api 2 --workers 1, the load through HAProxy (8080)
# Each round runs the same burst (BUYERS buyers on as many units, all at once) and the
# same steady rate (RATE/s for SECONDS_EACH s), and reads the CPU time every server
# process (and HAProxy) spent on each. Prints a table of medians and the ratios.
#
#   loadtests/fleet-bench.sh                  # about 5 minutes
#   RUNS=5 BUYERS=20000 RATE=2000 loadtests/fleet-bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-3} buyers=${BUYERS:-10000} rate=${RATE:-1000} each=${SECONDS_EACH:-10}
out=$(realpath -m "${BENCH_DIR:-target/fleet-bench}")
mkdir -p "$out"
export FLASHSALE__ADMIN__TOKEN=bench-admin-token-0123456789
export FLASHSALE__AUTH__JWT_SECRET=bench-jwt-secret-0123456789-0123456789
export RUST_LOG=warn

echo "== building (release)"
cargo build --release --workspace -q
bin=$(realpath "${CARGO_TARGET_DIR:-target}/release")

ticks=$(getconf CLK_TCK)
cpu() { # cpu PID...: CPU seconds (user + system) the processes have used so far
  local total=0 pid t
  for pid in "$@"; do
    t=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
    total=$((total + t))
  done
  awk -v t="$total" -v hz="$ticks" 'BEGIN { printf "%.2f", t / hz }'
}

config() { # config NAME: config/cluster.toml with databases, keys, queues and topics of its own
  sed -e "s/flashsale_catalog/fsb_${1}_catalog/; s/flashsale_shard_/fsb_${1}_shard_/" \
      -e "s/^key_prefix = .*/key_prefix = \"fsb${1}\"/" \
      -e "s/flashsale\.orders/fsb.${1}.orders/; s/flashsale\.notifications/fsb.${1}.notifications/" \
      config/cluster.toml > "$out/$1.toml"
  printf '\n[shutdown]\ndrain_secs = 1\n' >> "$out/$1.toml"
  # Topics of its own as well (events.topic_prefix).
  sed -i "s/^\[events\]$/[events]\ntopic_prefix = \"fsb.${1}.\"/" "$out/$1.toml"
  echo "$out/$1.toml"
}

drop() { # drop NAME: its databases and queues
  for db in catalog shard_0 shard_1 shard_2 shard_3; do
    psql -w -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS fsb_${1}_${db} WITH (FORCE)" >/dev/null
  done
  for q in orders notifications; do rabbitmqctl -q delete_queue "fsb.${1}.$q" >/dev/null 2>&1 || true; done
}

# load NAME ADMIN_URL PIDS: the burst and the steady rate; one line of figures
load() {
  local name=$1 admin=$2; shift 2
  local c0 c1 c2 pid
  c0=$(cpu "$@")
  for pid in "$@"; do echo "$pid $(cpu "$pid")"; done > "$out/$name-cpu0.txt"
  "$bin/flashsale-load" --quiet --max-in-flight 256 --target http://127.0.0.1:8080 --admin-url "$admin" \
    --report-json "$out/$name-burst.json" burst --buyers "$buyers" --stock "$buyers" --window-ms 0 \
    > "$out/$name-burst.txt" || true
  c1=$(cpu "$@")
  for pid in "$@"; do echo "$pid $(cpu "$pid")"; done > "$out/$name-cpu1.txt"
  "$bin/flashsale-load" --quiet --max-in-flight 2048 --target http://127.0.0.1:8080 --admin-url "$admin" \
    --report-json "$out/$name-steady.json" steady --rate "$rate" --duration-secs "$each" --sales 4 \
    > "$out/$name-steady.txt" || true
  c2=$(cpu "$@")
  python3 - "$out/$name-burst.json" "$out/$name-steady.json" "$c0" "$c1" "$c2" <<'PY'
import json, sys
b, s = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
c0, c1, c2 = map(float, sys.argv[3:6])
ok = int(not b["violations"] and not s["violations"])
print(f"{b['acceptedPerSecond']:.0f} {b['latencyMs']['p99']:.1f} {b.get('completedAfterSeconds') or 0:.1f} {c1 - c0:.2f} "
      f"{s['acceptedPerSecond']:.0f} {s['latencyMs']['p99']:.1f} {s.get('completedAfterSeconds') or 0:.1f} {c2 - c1:.2f} {ok}")
PY
}

wait_ready() { for _ in $(seq 120); do curl -fs "$1/readyz" >/dev/null 2>&1 && return 0; sleep 0.5; done; return 1; }

: > "$out/one.txt"; : > "$out/fleet.txt"; : > "$out/fleet-cpu.txt"
for run in $(seq "$runs"); do
  echo "== round $run: one process (role all)"
  name="one$run"; cfg=$(config "$name")
  FLASHSALE__HTTP__LISTEN=127.0.0.1:8080 FLASHSALE__ADMIN__LISTEN=127.0.0.1:9090 \
    "$bin/flashsale" serve --config "$cfg" > "$out/$name.log" 2>&1 &
  server=$!
  wait_ready http://127.0.0.1:8080 || { echo "the server did not start; see $out/$name.log"; exit 1; }
  line=$(load "$name" http://127.0.0.1:9090 "$server")
  echo "   $line" | tee -a "$out/one.txt"
  kill -TERM "$server"; wait "$server" || true
  drop "$name"

  echo "== round $run: fleet (2 api + 1 worker behind HAProxy)"
  name="fleet$run"; cfg=$(config "$name")
  scripts/fleet.sh up --api 2 --workers 1 --port 8080 --config "$cfg" --bin "$bin/flashsale" \
    --dir "$out/$name" > "$out/$name-up.txt"
  pids=$(cat "$out/$name"/api-*.pid "$out/$name"/worker-*.pid "$out/$name/haproxy.pid")
  # shellcheck disable=SC2086
  line=$(load "$name" http://127.0.0.1:9081 $pids)
  echo "   $line" | tee -a "$out/fleet.txt"
  # The burst's CPU per process of the fleet, by name.
  for f in "$out/$name"/api-*.pid "$out/$name"/worker-*.pid "$out/$name/haproxy.pid"; do
    p=$(cat "$f"); n=$(basename "$f" .pid)
    a=$(awk -v p="$p" '$1 == p {print $2}' "$out/$name-cpu0.txt")
    b=$(awk -v p="$p" '$1 == p {print $2}' "$out/$name-cpu1.txt")
    echo "$n $(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.2f", b - a}')"
  done >> "$out/fleet-cpu.txt"
  scripts/fleet.sh down --dir "$out/$name" > /dev/null
  drop "$name"
done

python3 - "$out/one.txt" "$out/fleet.txt" "$out/fleet-cpu.txt" <<'PY' | tee "$out/table.md"
import statistics, sys
def rows(path):
    return [list(map(float, l.split())) for l in open(path) if l.strip()]
one, fleet = rows(sys.argv[1]), rows(sys.argv[2])
names = ["burst accepted/s", "burst p99 ms", "burst completed after s", "burst CPU s (servers + HAProxy)",
         "steady accepted/s", "steady p99 ms", "steady completed after s", "steady CPU s (servers + HAProxy)"]
print()
print("| median of %d rounds | one process (all) | fleet (2 api + 1 worker + HAProxy) | fleet / one |" % len(one))
print("|---|---|---|---|")
for i, n in enumerate(names):
    a = statistics.median(r[i] for r in one); b = statistics.median(r[i] for r in fleet)
    print(f"| {n} | {a:,.1f} | {b:,.1f} | {b / a if a else float('nan'):.2f}× |")
per = {}
for line in open(sys.argv[3]):
    n, c = line.split()
    per.setdefault(n, []).append(float(c))
print()
print("the fleet's burst CPU by process (median s): " + ", ".join(f"{n} {statistics.median(v):.2f}" for n, v in sorted(per.items())))
ok = all(r[8] == 1 for r in one + fleet)
print()
print("invariants (exactly the stock, every accepted order completed):", "ok in every round" if ok else "VIOLATED")
PY
