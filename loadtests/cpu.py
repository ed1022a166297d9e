"""CPU time by process, machine-wide: `cpu.py snapshot FILE` records every process's
user + system seconds; `cpu.py diff BEFORE AFTER ORDERS` prints what each part of the
system spent in between, in seconds and per order (flashsale's server, the Kafka
broker, PostgreSQL, Redis, RabbitMQ, the rest). Processes that started after BEFORE
count from zero (PostgreSQL backends, for one); the load generator is left out."""

import collections
import json
import os
import sys

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
    procs = {}
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


def diff(before, after, orders):
    a, b = json.load(open(before)), json.load(open(after))
    spent = collections.Counter()
    for pid, (comm, exe, t) in b.items():
        part = next((name for name, match in PARTS if match(comm, exe)), "other")
        spent[part] += t - (a[pid][2] if pid in a and a[pid][0] == comm else 0.0)
    spent.pop("load generator", None)
    orders = max(int(orders), 1)
    print(f"| process | CPU s | µs per order |")
    print(f"|---|---|---|")
    for part, s in spent.most_common():
        print(f"| {part} | {s:.2f} | {s / orders * 1e6:,.0f} |")
    total = sum(spent.values())
    print(f"| all but the load generator | {total:.2f} | {total / orders * 1e6:,.0f} |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["snapshot"]:
        snapshot(sys.argv[2])
    elif sys.argv[1:2] == ["diff"]:
        diff(*sys.argv[2:5])
    else:
        sys.exit(__doc__)
