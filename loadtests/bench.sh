#!/usr/bin/env bash
# The benchmark, all in one run on this machine:
#   baseline   what a user would build instead: a PostgreSQL hot row (pgbench: UPDATE stock
#              WHERE stock > 0 plus the order INSERT in one transaction, 32 clients)
#   ceilings   redis-benchmark running flashsale's own reservation script (EVALSHA,
#              pipelined), and the server's HTTP-alone ceiling: the same generator against
#              GET /healthz of the same server (the countdown scenario's --baseline)
#   cluster    steady at increasing rates (accepted/s, p50, p99, and how long after the
#              load ended every order had completed: the persistence lag) and a burst of
#              100,000 buyers on 1,000 units
#   cost       loadtests/cost.sh: the CPU each process spends per order, a steady
#              1,000/s and a burst of 10,000 on 10,000, and what each spends idle
#   embedded   the same burst against one embedded-mode server
# It prints every row as it goes, then the tables and the ratios (table.md), and writes
# a self-contained HTML report (report.html). Needs scripts/services.sh's services plus
# pgbench and redis-benchmark.
#
#   loadtests/bench.sh                # about 8 minutes after the build
#   SECONDS_EACH=20 RATES="1000 5000" loadtests/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
each=${SECONDS_EACH:-10}
rates=${RATES:-"1000 2000 4000 5000 6000 8000 10000"}
out=${BENCH_DIR:-target/bench}
mkdir -p "$out"
rm -f "$out"/steady-*.json
# shellcheck source=loadtests/env.sh
source loadtests/env.sh
load() { # load ARGS...: the load generator against the server on 8080/9090
  "$bin/flashsale-load" --quiet --target http://127.0.0.1:8080 --admin-url http://127.0.0.1:9090 "$@"
}

pct() { # pct FILE Q: the Q quantile (0..1) of the numbers in FILE
  sort -n "$1" | awk -v q="$2" '{a[NR]=$1} END {i=int(NR*q); if (i<1) i=1; printf "%.2f", a[i]}'
}

echo "== baseline: PostgreSQL hot row (pgbench, 32 clients, ${each} s)"
psql -w -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS flashsale_bench" >/dev/null
psql -w -q -h 127.0.0.1 -U postgres -c "CREATE DATABASE flashsale_bench" >/dev/null
psql -w -q -h 127.0.0.1 -U postgres -d flashsale_bench >/dev/null <<'SQL'
CREATE TABLE inventory (product_id int PRIMARY KEY, stock bigint NOT NULL);
CREATE TABLE orders (id bigserial PRIMARY KEY, product_id int NOT NULL, user_id int NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
INSERT INTO inventory VALUES (1, 1000000000);
SQL
cat > "$out/hot-row.sql" <<'SQL'
\set uid random(1, 10000000)
BEGIN;
UPDATE inventory SET stock = stock - 1 WHERE product_id = 1 AND stock > 0;
INSERT INTO orders (product_id, user_id) VALUES (1, :uid);
END;
SQL
(cd "$out" && rm -f pgbench_log.* && pgbench -n -h 127.0.0.1 -U postgres -c 32 -j 2 -T "$each" -l -f hot-row.sql flashsale_bench > pgbench.txt)
pg_tps=$(awk '/^tps = /{print $3; exit}' "$out/pgbench.txt")
cat "$out"/pgbench_log.* | awk '{print $3/1000}' > "$out/pg_latency_ms.txt"
pg_p50=$(pct "$out/pg_latency_ms.txt" 0.5); pg_p99=$(pct "$out/pg_latency_ms.txt" 0.99)
rm -f "$out"/pgbench_log.*
psql -w -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS flashsale_bench" >/dev/null
echo "   ${pg_tps} orders/s, p50 ${pg_p50} ms, p99 ${pg_p99} ms"

echo "== ceiling: the reservation script in redis-benchmark (EVALSHA, 50 clients, pipeline 32)"
script="$(cat src/actors/inventory/lua/common.lua src/actors/inventory/lua/reserve.lua)"
redis-cli -n 3 flushdb >/dev/null
sha=$(redis-cli -n 3 SCRIPT LOAD "$script")
redis-cli -n 3 HSET bench:epoch state ready since 0 >/dev/null
redis-cli -n 3 HSET bench:sale:1 stock 1000000000 remaining 1000000000 limit 1000000000 starts 0 ends 0 pending 0 >/dev/null
now=$(($(date +%s) * 1000))
redis-benchmark -n 400000 -c 50 -P 32 -r 100000000 --dbnum 3 --csv \
  EVALSHA "$sha" 0 bench 1 user:__rand_int__ key:__rand_int__ 1 order:__rand_int__ "$now" 15000 3600 > "$out/redis.csv"
read -r rd_rps rd_p50 rd_p99 < <(awk -F'","' 'NR==2 {print $2, $5, $7}' "$out/redis.csv")
redis-cli -n 3 flushdb >/dev/null
echo "   ${rd_rps} reservations/s, p50 ${rd_p50} ms, p99 ${rd_p99} ms"

echo "== flashsale (cluster mode)"
"$bin/flashsale" serve --config config/cluster.toml > "$out/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
wait_ready http://127.0.0.1:9090 || { tail "$out/server.log"; exit 1; }
load --max-in-flight 256 --report-json "$out/http.json" \
  countdown --pollers 30000 --countdown-secs 8 --buyers 100 --stock 100 --baseline > /dev/null || true
http_rps=$(python3 -c "import json,sys; print(f\"{json.load(open(sys.argv[1]))['countdown']['healthzPerSecond']:.0f}\")" "$out/http.json")
echo "   HTTP alone (GET /healthz, 256 in flight): ${http_rps} requests/s"
for rate in $rates; do
  load --max-in-flight 2048 --report-json "$out/steady-$rate.json" \
    steady --rate "$rate" --duration-secs "$each" --sales 4 > "$out/steady-$rate.txt" || true
  python3 - "$out/steady-$rate.json" "$rate" "$each" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
done = r["completedAfterSeconds"]
lag = f"{max(done - float(sys.argv[3]), 0):.1f} s after the load" if done else "NOT within the deadline"
print(f"   steady {sys.argv[2]}/s: {r['acceptedPerSecond']:.0f} accepted/s, p50 {r['latencyMs']['p50']:.2f} ms, "
      f"p99 {r['latencyMs']['p99']:.2f} ms, every order completed {lag}, "
      f"invariants {'ok' if not r['violations'] else 'VIOLATED'}")
PY
done
load --max-in-flight 2048 --report-json "$out/burst.json" --report-html "$out/burst.html" \
  burst --buyers 100000 --stock 1000 --window-ms 1000 > "$out/burst.txt" || true
python3 - "$out/burst.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"   burst 100,000 on 1,000: {r['requestsPerSecond']:.0f} answers/s, {r['statusCounts'].get('201', 0)} sold, "
      f"p50 {r['latencyMs']['p50']:.2f} ms, p99 {r['latencyMs']['p99']:.2f} ms, "
      f"invariants {'ok' if not r['violations'] else 'VIOLATED'}")
PY
kill -TERM $server; wait $server || true

echo "== cost per order, by process (loadtests/cost.sh)"
BENCH_DIR="$out/cost" bash loadtests/cost.sh

echo "== embedded mode: the same burst of 10,000 on 10,000"
emb=$(mktemp -d)
(cd "$emb" && exec "$bin/flashsale" serve) > "$out/embedded.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$emb"' EXIT
wait_ready http://127.0.0.1:9090 || { tail "$out/embedded.log"; exit 1; }
sleep 2
load --max-in-flight 512 --report-json "$out/embedded.json" \
  burst --buyers 10000 --stock 10000 --window-ms 0 | head -n 1
kill -TERM $server; wait $server || true

python3 loadtests/bench_report.py "$out" "$each" "$pg_tps" "$pg_p50" "$pg_p99" "$rd_rps" "$rd_p50" "$rd_p99" "$http_rps" |
  tee "$out/table.md"
echo "report: $out/report.html"
