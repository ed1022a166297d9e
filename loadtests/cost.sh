#!/usr/bin/env bash
# What an order costs, by process: one release server in cluster mode (CONFIG, default
# config/cluster.toml) on this machine, a steady rate (RATE/s for SECONDS_EACH s) and a
# burst (BUYERS on as many units, all at once), each measured from before its first
# request until every accepted order completed; prints each run's CPU seconds and µs
# per order for the server, the Kafka broker, PostgreSQL, Redis and RabbitMQ (the load
# generator left out), from /proc (loadtests/cpu.py). First, IDLE seconds (10) of the
# server and the services doing nothing: the floor that every second of a run pays
# whatever its orders. Writes each table as Markdown and JSON under BENCH_DIR.
# Needs scripts/services.sh's services.
#
# With config/cluster.toml it starts on empty databases, partitions and queues (FRESH=0
# keeps them); BIN_DIR runs another build's binaries (to compare two builds).
#
#   loadtests/cost.sh                          # about 2 minutes after the build
#   BIN_DIR=/tmp/before loadtests/cost.sh
#   RATE=2000 CONFIG=config/cluster-pgbouncer.toml loadtests/cost.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${RATE:-1000}
each=${SECONDS_EACH:-10}
buyers=${BUYERS:-10000}
config=${CONFIG:-config/cluster.toml}
out=${BENCH_DIR:-target/cost}
mkdir -p "$out"
# shellcheck source=loadtests/env.sh
source loadtests/env.sh
if [ "${FRESH:-1}" = 1 ] && [ "$config" = config/cluster.toml ]; then
  echo "== fresh databases, partitions and queues (FRESH=0 keeps them)"
  fresh_cluster
fi
"$bin/flashsale" serve --config "$config" > "$out/server.log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null && wait $server || true' EXIT
wait_ready http://127.0.0.1:9090 || { tail "$out/server.log"; exit 1; }
sleep 2

measure() { # measure NAME SCENARIO ARGS...
  local name=$1; shift
  # Dirty pages of earlier work are written now, not inside this run's window.
  sync
  python3 loadtests/cpu.py snapshot "$out/$name-0.json"
  "$bin/flashsale-load" --quiet --max-in-flight 512 --target http://127.0.0.1:8080 \
    --admin-url http://127.0.0.1:9090 --jwt-secret "$FLASHSALE__AUTH__JWT_SECRET" \
    --report-json "$out/$name.json" "$@" | head -n 1
  python3 loadtests/cpu.py snapshot "$out/$name-1.json"
  local accepted
  accepted=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['accepted'])" "$out/$name.json")
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(f\"every accepted order completed {r['completedAfterSeconds'] or 'NOT'} s after the start; violations: {len(r['violations'])}\")" "$out/$name.json"
  python3 loadtests/cpu.py diff "$out/$name-0.json" "$out/$name-1.json" "$accepted" "$out/$name-cpu.json" | tee "$out/$name.md"
}

idle=${IDLE:-10}
echo "== idle for $idle s: what each part spends with no orders"
python3 loadtests/cpu.py snapshot "$out/idle-0.json"
sleep "$idle"
python3 loadtests/cpu.py snapshot "$out/idle-1.json"
python3 loadtests/cpu.py diff "$out/idle-0.json" "$out/idle-1.json" 0 "$out/idle-cpu.json" | tee "$out/idle.md"

echo "== steady $rate/s for $each s ($config)"
measure steady steady --rate "$rate" --duration-secs "$each" --sales 4
echo "== burst: $buyers buyers on $buyers units"
measure burst burst --buyers "$buyers" --stock "$buyers" --window-ms 0
