"""CPU time by process, machine-wide: `cpu.py snapshot FILE` records every process's
user + system seconds; `cpu.py diff BEFORE AFTER ORDERS [JSON]` prints what each part of
the system spent in between, in seconds and per order (flashsale's server, the Kafka
broker, PostgreSQL, Redis, RabbitMQ, the rest), and writes it to JSON if named.
Processes that started after BEFORE count from zero (PostgreSQL backends, for one); the
load generator is left out. With ORDERS 0 the table gives CPU seconds per second of
wall time between the snapshots instead (what each part spends idle)."""

import collections
import json
import os
import sys
import time

PARTS = [
    ("flashsale server", lambda comm, exe: exe == "flashsale"),
    ("load generator", lambda comm, exe: exe == "flashsale-load"),
    ("Kafka broker (tansu)", lambda comm, exe: exe == "tansu" or comm == "tansu"),
    ("PostgreSQL", lambda comm, exe: exe.startswith("postgres") or comm.startswith("postgres")),
    ("PgBouncer", lambda comm, exe: comm == "pgbouncer"),
    ("Redis", lambda comm, exe: comm.startswith("redis-server")),
    ("RabbitMQ", lambda comm, exe: comm in ("beam.smp", "erl_child_setup", "inet_gethost", "epmd")),
    # The kernel's writeback of what the others fsync (WAL, append-only files, queues).
    ("kernel workers (writeback)", lambda comm, exe: comm.startswith("kworker")),
]


def snapshot(path):
    hz = os.sysconf("SC_CLK_TCK")
    procs = {"_at": time.time()}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = open(f"/proc/{pid}/stat").read()
            comm = open(f"/proc/{pid}/comm").read().strip()
            exe = os.path.basename(open(f"/proc/{pid}/cmdline").read().split("\0")[0])
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        procs[pid] = [comm, exe, (int(fields[11]) + int(fields[12])) / hz]
    json.dump(procs, open(path, "w"))


def diff(before, after, orders, out=None):
    a, b = json.load(open(before)), json.load(open(after))
    wall = b.pop("_at") - a.pop("_at")
    spent = collections.Counter()
    for pid, (comm, exe, t) in b.items():
        part = next((name for name, match in PARTS if match(comm, exe)), "other")
        spent[part] += t - (a[pid][2] if pid in a and a[pid][0] == comm else 0.0)
    spent.pop("load generator", None)
    total = sum(spent.values())
    orders = int(orders)
    if orders > 0:
        unit, per = "µs per order", 1e6 / orders
    else:
        unit, per = "% of a core", 100 / max(wall, 1e-9)
    print(f"| process | CPU s | {unit} |")
    print(f"|---|---|---|")
    for part, s in spent.most_common():
        print(f"| {part} | {s:.2f} | {s * per:,.0f} |")
    print(f"| all but the load generator | {total:.2f} | {total * per:,.0f} |")
    if out:
        parts = {part: round(s, 3) for part, s in spent.most_common()}
        json.dump({"orders": orders, "wallSeconds": round(wall, 2), "cpuSeconds": parts,
                   "totalCpuSeconds": round(total, 3)}, open(out, "w"), indent=1)


if __name__ == "__main__":
    if sys.argv[1:2] == ["snapshot"]:
        snapshot(sys.argv[2])
    elif sys.argv[1:2] == ["diff"]:
        diff(*sys.argv[2:6])
    else:
        sys.exit(__doc__)
