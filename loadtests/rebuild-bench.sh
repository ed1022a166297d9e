#!/usr/bin/env bash
# What rebuilding a large sale costs the partition's Redis server, after the partition
# lost its state: the longest script (the server serves nothing else meanwhile), the
# whole rebuild, and the rate checks of buyers meanwhile (every order's first step,
# kept on whatever partition its buyer hashes to). For two versions of the scripts
# (git revisions; default: the one before the rebuild ran in steps, and the work
# tree), on a Redis server of its own:
#   - the partition is marked lost, and ORDERS persisted orders (default 200,000, one
#     unit each, one buyer each) are fed to its rebuild as the reconciler would (one
#     script with every order, or steps of 1,000 orders and 1,000 buyers);
#   - redis-benchmark runs the rate-limit script all along and prints its latency.
# Usage: loadtests/rebuild-bench.sh [BEFORE_REV] [AFTER_REV|worktree]
set -euo pipefail
cd "$(dirname "$0")/.."
before=${1:-1aaad00}
after=${2:-worktree}
orders=${ORDERS:-200000}
port=${PORT:-16399}
lua=src/actors/inventory/lua
dir=$(mktemp -d)
trap 'redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT

script() { # script REV NAME: common.lua and NAME.lua as the partition loads them
  if [ "$1" = worktree ]; then cat "$lua/common.lua" "$lua/$2.lua"
  else git show "$1:$lua/common.lua"; git show "$1:$lua/$2.lua"; fi
}

measure() { # measure REV
  local rev=$1
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
    --dir "$dir" --logfile "$dir/redis.log" --slowlog-log-slower-than 0 --slowlog-max-len 100000
  for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  local rebuild rate
  rebuild=$(redis-cli -p "$port" script load "$(script "$rev" rebuild)")
  rate=$(redis-cli -p "$port" script load "$(script "$rev" rate)")
  redis-cli -p "$port" hset bench:epoch state rebuilding since 1 >/dev/null
  # Rate checks all along, from 20 clients.
  redis-benchmark -p "$port" -n 100000000 -c 20 --precision 2 \
    evalsha "$rate" 0 bench buyer 60000 >"$dir/rate.txt" 2>/dev/null &
  local bench=$!
  sleep 2
  redis-cli -p "$port" slowlog reset >/dev/null
  local took
  # A version whose rebuild runs in steps is fed as the reconciler feeds it.
  local mode=one
  if script "$rev" rebuild | grep -q "step == 'own'"; then mode=steps; fi
  took=$(python3 - "$port" "$rebuild" "$orders" "$mode" <<'EOF'
import socket, sys, time
port, sha, n, mode = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
s = socket.create_connection(("127.0.0.1", port))
f = s.makefile("rb")
def call(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    s.sendall(b"".join(out))
    return read()
def read():
    line = f.readline().rstrip(b"\r\n")
    kind, rest = line[:1], line[1:]
    if kind == b"-":
        raise SystemExit(f"redis: {rest.decode()}")
    if kind in (b"+", b":"):
        return rest.decode()
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = f.read(size + 2)[:-2]
        return data.decode()
    if kind == b"*":
        return [read() for _ in range(int(rest))]
    raise SystemExit(f"unexpected reply {line!r}")
orders = [(f"01a00000-0000-7000-8000-{i:012d}", f"u{i}", 1, "k") for i in range(n)]
pid, stock = 1, n + 10
start = time.monotonic()
if mode == "one":
    args = ["EVALSHA", sha, 0, "bench", pid, stock, 1, 0, 0, 86400]
    for o in orders:
        args += [*o, "s"]
    call(*args)
else:
    base = ["EVALSHA", sha, 0, "bench", "bench-owner", 30000]
    call(*base, "own")
    for i in range(0, n, 1000):
        args = [*base, "orders", pid, 0, 86400]
        for o in orders[i:i + 1000]:
            args += [*o, "s"]
        call(*args)
    for i in range(0, n, 1000):
        args = [*base, "buyers", pid, 0]
        for o in orders[i:i + 1000]:
            args += [o[1], 1]
        call(*args)
    call(*base, "sale", pid, stock, 1, 0, 0, 86400, n)
    call(*base, "finish")
print(f"{time.monotonic() - start:.2f}")
EOF
)
  local longest
  longest=$(redis-cli -p "$port" slowlog get 100000 | python3 -c '
import sys
lines = [l.strip() for l in sys.stdin]
out = [int(lines[i + 2]) for i in range(len(lines) - 3)
       if lines[i + 3].upper() == "EVALSHA" and lines[i + 2].isdigit()]
print(f"{max(out) / 1000:.0f} ms")
')
  sleep 2
  kill -INT "$bench" 2>/dev/null || true
  wait "$bench" 2>/dev/null || true
  local summary
  summary=$(tr '\r' '\n' <"$dir/rate.txt" | python3 -c '
import sys
lines = [l.strip() for l in sys.stdin if l.strip()]
i = next((i for i, l in enumerate(lines) if l.startswith("latency summary")), None)
if i is None:
    print("no summary")
else:
    names, values = lines[i + 1].split(), lines[i + 2].split()
    print(", ".join(f"{n} {v}" for n, v in zip(names, values)))
')
  echo "$rev: the rebuild took ${took} s, its longest script ${longest}; rate checks meanwhile (ms): $summary"
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  sleep 0.5
}

echo "$(date -u +%FT%TZ), $(git rev-parse --short HEAD), a sale of $orders persisted orders"
measure "$before"
measure "$after"
