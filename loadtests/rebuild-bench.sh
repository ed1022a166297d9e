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
#   - a client runs the rate-limit script all along, one call after another, and
#     its latency is printed.
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

cat >"$dir/drive.py" <<'PY'
import socket, sys, threading, time
port, sha, rate, n, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]

class Conn:
    def __init__(self):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.f = self.s.makefile("rb")

    def call(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.s.sendall(b"".join(out))
        return self.read()

    def read(self):
        line = self.f.readline().rstrip(b"\r\n")
        kind, rest = line[:1], line[1:]
        if kind == b"-":
            raise SystemExit(f"redis: {rest.decode()}")
        if kind in (b"+", b":"):
            return rest.decode()
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self.f.read(size + 2)[:-2].decode()
        if kind == b"*":
            return [self.read() for _ in range(int(rest))]
        raise SystemExit(f"unexpected reply {line!r}")

# Rate checks all along, one after another: how long a buyer's first step waits.
done, waits = threading.Event(), []
def probe():
    c = Conn()
    while not done.is_set():
        t = time.monotonic()
        c.call("EVALSHA", rate, 0, "bench", "buyer", 60000)
        waits.append(time.monotonic() - t)
prober = threading.Thread(target=probe)
prober.start()
time.sleep(1)

c = Conn()
orders = [(f"01a00000-0000-7000-8000-{i:012d}", f"u{i}", 1, "k") for i in range(n)]
pid, stock = 1, n + 10
start = time.monotonic()
if mode == "one":
    args = ["EVALSHA", sha, 0, "bench", pid, stock, 1, 0, 0, 86400]
    for o in orders:
        args += [*o, "s"]
    sold = c.call(*args)
else:
    base = ["EVALSHA", sha, 0, "bench", "bench-owner", 1, 30000]
    c.call(*base, "own")
    for i in range(0, n, 1000):
        args = [*base, "orders", pid, 0, 86400]
        for o in orders[i:i + 1000]:
            args += [*o, "s"]
        c.call(*args)
    for i in range(0, n, 1000):
        args = [*base, "buyers", pid, 0]
        for o in orders[i:i + 1000]:
            args += [o[1], 1]
        c.call(*args)
    sold = c.call(*base, "sale", pid, stock, 1, 0, 0, 86400, n)[1]
    c.call(*base, "finish")
took = time.monotonic() - start
time.sleep(1)
done.set()
prober.join()
w = sorted(waits)
q = lambda p: w[min(len(w) - 1, int(p * len(w)))] * 1000
print(f"sold {sold}, the rebuild took {took:.2f} s; rate checks meanwhile: {len(w)}, "
      f"p50 {q(0.5):.2f} ms, p99 {q(0.99):.2f} ms, max {w[-1] * 1000:.0f} ms")
PY

measure() { # measure REV
  local rev=$1
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
    --dir "$dir" --logfile "$dir/redis.log" --slowlog-log-slower-than 0 --slowlog-max-len 100000
  for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  local rebuild rate
  rebuild=$(redis-cli -p "$port" script load "$(script "$rev" rebuild)")
  rate=$(redis-cli -p "$port" script load "$(script "$rev" rate)")
  redis-cli -p "$port" hset bench:epoch state rebuilding since 1 >/dev/null
  redis-cli -p "$port" slowlog reset >/dev/null
  # A version whose rebuild runs in steps is fed as the reconciler feeds it.
  local mode=one
  if script "$rev" rebuild | grep -q "step == 'own'"; then mode=steps; fi
  local result longest
  result=$(python3 "$dir/drive.py" "$port" "$rebuild" "$rate" "$orders" "$mode")
  longest=$(redis-cli -p "$port" slowlog get 100000 | python3 -c '
import sys
lines = [l.strip() for l in sys.stdin]
out = [int(lines[i + 2]) for i in range(len(lines) - 3)
       if lines[i + 3].upper() == "EVALSHA" and lines[i + 2].isdigit()]
print(f"{max(out) / 1000:.1f} ms")
')
  echo "$rev ($mode script): $result; the longest script $longest"
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  sleep 0.5
}

echo "$(date -u +%FT%TZ), $(git rev-parse --short HEAD), a sale of $orders persisted orders"
measure "$before"
measure "$after"
