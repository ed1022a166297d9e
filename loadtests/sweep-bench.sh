#!/usr/bin/env bash
# What the reconciler's sweep of unpublished reservations costs a partition that holds
# many published ones (consumers or shards away: orders pile up in the queue, each with
# its reservation), and what that does to reservations meanwhile. For each of two
# versions of the scripts (git revisions, default: the one before the sweep read an
# index, and the work tree), on a Redis server of its own:
#   - fills one sale with RESERVATIONS published reservations (default 200,000);
#   - times sweeps (SLOWLOG, every command's duration);
#   - runs redis-benchmark on the reservation script (a replay: one key, one order)
#     while a sweep runs every SWEEP_MS (default 250 ms: twenty api pods' reconcilers
#     at their 5 s period), and prints its latency summary.
# Usage: loadtests/sweep-bench.sh [BEFORE_REV] [AFTER_REV|worktree]
set -euo pipefail
cd "$(dirname "$0")/.."
before=${1:-85507ce}
after=${2:-worktree}
reservations=${RESERVATIONS:-200000}
sweep_ms=${SWEEP_MS:-250}
port=${PORT:-16398}
lua=src/actors/inventory/lua
dir=$(mktemp -d)
trap 'redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT

script() { # script REV NAME: common.lua and NAME.lua as the partition loads them
  if [ "$1" = worktree ]; then cat "$lua/common.lua" "$lua/$2.lua"
  else git show "$1:$lua/common.lua"; git show "$1:$lua/$2.lua"; fi
}

measure() { # measure REV
  local rev=$1 P=bench pid=1
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
    --dir "$dir" --logfile "$dir/redis.log" --slowlog-log-slower-than 0 --slowlog-max-len 100000
  for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  local cli=(redis-cli -p "$port")
  local now; now=$(($(date +%s%N) / 1000000))
  # The partition, its sale and the published reservations.
  python3 - "$P" "$pid" "$reservations" "$now" >"$dir/fill.resp" <<'EOF'
import sys
P, pid, n, now = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def cmd(*a):
    out = [f"*{len(a)}\r\n"]
    for x in a:
        x = str(x).encode()
        out.append(f"${len(x)}\r\n")
        out.append(x.decode() + "\r\n")
    sys.stdout.write("".join(out))
cmd("HSET", f"{P}:epoch", "state", "ready", "since", 0)
cmd("SADD", f"{P}:sales", pid)
cmd("HSET", f"{P}:sale:{pid}", "stock", n + 10, "remaining", 10, "limit", 1, "starts", 0, "ends", 0, "pending", n)
for i in range(n):
    oid = f"01a00000-0000-7000-8000-{i:012d}"
    cmd("HSET", f"{P}:resv:{pid}", oid, f"P|{now - 60000}|1|u{i}|k")
# One more, with its key: the reservation every benchmark request replays.
cmd("SET", f"{P}:idem:{pid}:replayer:k", "01a00000-0000-7000-8000-999999999999")
cmd("HSET", f"{P}:resv:{pid}", "01a00000-0000-7000-8000-999999999999", f"P|{now}|1|replayer|k")
EOF
  "${cli[@]}" --pipe <"$dir/fill.resp" >/dev/null
  local sweep reserve
  sweep=$("${cli[@]}" script load "$(script "$rev" release_stale)")
  reserve=$("${cli[@]}" script load "$(script "$rev" reserve)")
  "${cli[@]}" slowlog reset >/dev/null
  for _ in 1 2 3 4 5; do "${cli[@]}" evalsha "$sweep" 0 "$P" "$now" 15000 1000 >/dev/null; done
  local durations
  durations=$("${cli[@]}" slowlog get 100000 | python3 -c '
import sys
lines = [l.strip() for l in sys.stdin]
# Each entry: id, timestamp, duration (us), then the command: keep the EVALSHA ones.
out = []
for i in range(len(lines) - 3):
    if lines[i + 3].upper() == "EVALSHA" and lines[i + 2].isdigit():
        out.append(int(lines[i + 2]))
out.sort()
print(f"sweep of {len(out)} calls: median {out[len(out)//2]/1000:.1f} ms, max {out[-1]/1000:.1f} ms")
')
  # Reservations meanwhile, with sweeps in the background.
  (
    end=$((SECONDS + 600))
    while [ $SECONDS -lt $end ]; do
      "${cli[@]}" evalsha "$sweep" 0 "$P" "$(($(date +%s%N) / 1000000))" 15000 1000 >/dev/null
      sleep "$(awk "BEGIN {print $sweep_ms / 1000}")"
    done
  ) &
  local sweeper=$!
  local summary
  summary=$(redis-benchmark -p "$port" -n 100000 -c 20 --precision 2 \
    evalsha "$reserve" 0 "$P" "$pid" replayer k 1 01a00000-0000-7000-8000-000000000000 "$now" 15000 86400 2>/dev/null |
    tr '\r' '\n' | python3 -c '
import sys
lines = [l.strip() for l in sys.stdin if l.strip()]
rate = next((l for l in lines if l.startswith("throughput summary")), "?")
i = next(i for i, l in enumerate(lines) if l.startswith("latency summary"))
names, values = lines[i + 1].split(), lines[i + 2].split()
print(rate.replace("throughput summary: ", "") + ", latency ms " + ", ".join(f"{n} {v}" for n, v in zip(names, values)))
')
  kill "$sweeper" 2>/dev/null || true
  wait "$sweeper" 2>/dev/null || true
  echo "$rev: $durations; reservations meanwhile: $summary"
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  sleep 0.5
}

echo "$(date -u +%FT%TZ), $(git rev-parse --short HEAD), $reservations published reservations, a sweep every $sweep_ms ms"
measure "$before"
measure "$after"
