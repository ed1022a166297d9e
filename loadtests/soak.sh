#!/usr/bin/env bash
# A soak: one release server (MODE embedded or cluster, the latter on
# config/cluster.toml's fresh databases, partitions and queues), a steady RATE/s over
# SALES sales for DURATION seconds, the server's resident memory sampled every SAMPLE seconds
# beside the load tester's timeline. Prints, a minute a row, the memory and the p99 of
# the orders answered in that minute; writes both as JSON under BENCH_DIR. TTL sets
# inventory.idempotency_ttl_secs (keys and accepted orders are kept that long: in the
# embedded partition's memory, in Redis in cluster mode), so that a 20-minute soak
# also shows where memory levels off once they expire. Needs scripts/services.sh's
# services for cluster mode.
#
# BUYERS makes the load come from that many buyers, each ordering again on its next
# turn (a new Idempotency-Key each time), instead of a new buyer every order: the
# buyers' counts are kept for a sale's life, so only a bounded crowd lets memory
# level off.
#
#   MODE=embedded RATE=500 DURATION=1200 TTL=300 BUYERS=100000 loadtests/soak.sh
#   MODE=cluster RATE=1500 DURATION=1200 loadtests/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${MODE:-embedded}
rate=${RATE:-1000}
seconds=${DURATION:-1200}
sales=${SALES:-4}
sample=${SAMPLE:-10}
out=${BENCH_DIR:-target/soak-$mode}
mkdir -p "$out"
# shellcheck source=loadtests/env.sh
source loadtests/env.sh
[ -n "${TTL:-}" ] && export FLASHSALE__INVENTORY__IDEMPOTENCY_TTL_SECS=$TTL
serve "$mode" "$out/server.log"

# Every $sample s, from /proc, while the load runs: the server's resident memory (MB),
# and the CPU time (in clock ticks) so far of the server and of the Kafka broker
# (scripts/services.sh's, whose storage is its memory: it slows as the topics grow).
cpu() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
broker=$(pgrep -x tansu | head -n 1 || true)
(
  start=$(date +%s)
  while kill -0 "$server" 2>/dev/null; do
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$server/status" 2>/dev/null || echo 0)
    echo "$(( $(date +%s) - start )) $((rss / 1024)) $(cpu "$server") $([ -n "$broker" ] && cpu "$broker" || echo 0)"
    sleep "$sample"
  done
) > "$out/rss.txt" &
sampler=$!

# A run with violations (orders not completed by the deadline, when the server cannot
# keep up) still gets its table; the script then exits as the load tester did.
status=0
"$bin/flashsale-load" --quiet --max-in-flight 512 --deadline-secs 300 \
  --target http://127.0.0.1:8080 --admin-url http://127.0.0.1:9090 \
  --jwt-secret "$FLASHSALE__AUTH__JWT_SECRET" --report-json "$out/load.json" \
  steady --rate "$rate" --duration-secs "$seconds" --sales "$sales" ${BUYERS:+--buyers "$BUYERS"} |
  head -n 3 || status=$?
sleep "$sample"
kill "$sampler" 2>/dev/null || true

python3 - "$out" <<'EOF'
import json, subprocess, sys
out = sys.argv[1]
r = json.load(open(f"{out}/load.json"))
samples = [tuple(map(int, l.split())) for l in open(f"{out}/rss.txt") if l.strip()]
rss = [(t, mb) for t, mb, *_ in samples]
hz = int(subprocess.run(["getconf", "CLK_TCK"], capture_output=True, text=True).stdout or 100)
minutes = {}
for b in r["timeline"]:
    minutes.setdefault(b["startMs"] // 60000, []).append(b["p99Ms"])

def busy(m, column):
    """The share of a core (%) the process used in minute m, from the samples."""
    inside = [s for s in samples if m * 60 <= s[0] <= (m + 1) * 60]
    if len(inside) < 2 or inside[-1][0] == inside[0][0]:
        return None
    return round(100 * (inside[-1][column] - inside[0][column]) / hz / (inside[-1][0] - inside[0][0]))

rows = []
print("minute  RSS MB (end)  p99 ms (median of its buckets, worst)  CPU % of a core (server, Kafka broker)")
for m in sorted(minutes):
    p = sorted(minutes[m])
    mem = [v for t, v in rss if t <= (m + 1) * 60]
    rows.append({"minute": m + 1, "rssMb": mem[-1] if mem else None,
                 "p99MedianMs": p[len(p) // 2], "p99WorstMs": p[-1],
                 "serverCpuPct": busy(m, 2), "brokerCpuPct": busy(m, 3)})
    print(f"{m + 1:6}  {rows[-1]['rssMb']:>12}  {p[len(p) // 2]:8.1f} {p[-1]:8.1f}"
          f"  {rows[-1]['serverCpuPct']!s:>6} {rows[-1]['brokerCpuPct']!s:>6}")
errors = r["statusCounts"].get("error", 0)
print(f"requests {r['requests']}, accepted {r['accepted']}, unanswered {errors}, "
      f"violations {len(r['violations'])}, completed after {r['completedAfterSeconds']} s, "
      f"RSS first {rss[0][1]} MB, last {rss[-1][1]} MB")
json.dump({"minutes": rows, "rss": rss, "unanswered": errors}, open(f"{out}/soak.json", "w"))
EOF
exit "$status"
