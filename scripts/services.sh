#!/usr/bin/env bash
# Makes sure PostgreSQL, Redis, RabbitMQ and a Kafka-compatible broker are installed and
# running on this machine (127.0.0.1, the default ports, PostgreSQL with trust auth for
# the postgres user). Installs a missing one with apt-get (the broker, tansu, with
# cargo install, once: about 10 minutes on 2 cores) and starts a stopped one. Safe to
# run again.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(cd "$(dirname "$0")" && pwd)/lib.sh"

wait_for() { # wait_for WHAT SECONDS COMMAND...
  local what=$1 secs=$2; shift 2
  for _ in $(seq "$secs"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  echo "$what did not come up" >&2; return 1
}

# PostgreSQL
need psql postgresql postgresql-client
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  ver=$(ls /etc/postgresql | sort -V | tail -n1)
  as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
fi
wait_for PostgreSQL 30 pg_isready -q -h 127.0.0.1 -p 5432
if ! psql -w -h 127.0.0.1 -U postgres -Atc 'select 1' >/dev/null 2>&1; then
  # A fresh install asks for passwords on TCP; the tests connect as postgres with trust.
  ver=$(ls /etc/postgresql | sort -V | tail -n1)
  hba=/etc/postgresql/$ver/main/pg_hba.conf
  as_root sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
  as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main reload
  wait_for "PostgreSQL trust auth" 10 psql -w -h 127.0.0.1 -U postgres -Atc 'select 1'
fi

# A streaming replica of it on 5433 (hot standby): what shard reads go to when a shard
# names a replica (config/cluster-replicas.toml, the replica tests).
ver=$(ls /etc/postgresql | sort -V | tail -n1)
hba=/etc/postgresql/$ver/main/pg_hba.conf
if ! as_root grep -Eq '^host\s+replication\s+all\s+127\.0\.0\.1/32\s+trust' "$hba"; then
  as_root sed -i '1i host replication all 127.0.0.1/32 trust' "$hba"
  as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main reload
fi
if ! as_root pg_lsclusters -h | awk '{print $2}' | grep -qx replica; then
  echo "creating the PostgreSQL replica on 5433 (pg_basebackup of 5432)"
  as_root pg_createcluster "$ver" replica -p 5433 >/dev/null
  replica_dir=/var/lib/postgresql/$ver/replica
  as_root find "$replica_dir" -mindepth 1 -delete
  as_root runuser -u postgres -- pg_basebackup -h 127.0.0.1 -p 5432 -U postgres -D "$replica_dir" -R -X stream -c fast
  as_root sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "/etc/postgresql/$ver/replica/pg_hba.conf"
fi
if ! pg_isready -q -h 127.0.0.1 -p 5433; then
  as_root pg_ctlcluster --skip-systemctl-redirect "$ver" replica start || true
fi
wait_for "PostgreSQL replica" 30 pg_isready -q -h 127.0.0.1 -p 5433

# Redis
need redis-server redis-server redis-tools
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
fi
wait_for Redis 15 redis-cli -h 127.0.0.1 -p 6379 ping
# The inventory partitions, each on a Redis server of its own (as in production), with
# the append-only file on and fsynced every second: a restarted server comes back with
# its reservations and sales instead of empty (which the partition epoch would then
# have to rebuild from the shards).
redis_dir=${FLASHSALE_REDIS_DIR:-$HOME/.cache/flashsale/redis}
for port in 6380 6381; do
  if ! redis-cli -h 127.0.0.1 -p $port ping >/dev/null 2>&1; then
    mkdir -p "$redis_dir/$port"
    redis-server --daemonize yes --bind 127.0.0.1 --port $port --dir "$redis_dir/$port" \
      --appendonly yes --appendfsync everysec --save "" \
      --logfile "$redis_dir/$port/redis.log" --pidfile "$redis_dir/$port/redis.pid"
  fi
  wait_for "Redis $port" 15 redis-cli -h 127.0.0.1 -p $port ping
done

# Partition 1 (6381) can fail over: a replica on 6382 and three Sentinels on 26379-26381
# watching it as "flashsale-p1" (quorum 2). A partition URL may name that service
# (redis+sentinel://127.0.0.1:26379,127.0.0.1:26380,127.0.0.1:26381/flashsale-p1/0).
# A Sentinel rewrites its file with what it learns, so the file is written once.
need redis-sentinel redis-sentinel
if ! redis-cli -h 127.0.0.1 -p 6382 ping >/dev/null 2>&1; then
  mkdir -p "$redis_dir/6382"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6382 --dir "$redis_dir/6382" \
    --replicaof 127.0.0.1 6381 --appendonly yes --appendfsync everysec --save "" \
    --logfile "$redis_dir/6382/redis.log" --pidfile "$redis_dir/6382/redis.pid"
fi
wait_for "Redis 6382" 15 redis-cli -h 127.0.0.1 -p 6382 ping
for port in 26379 26380 26381; do
  if ! redis-cli -h 127.0.0.1 -p $port ping >/dev/null 2>&1; then
    mkdir -p "$redis_dir/$port"
    conf=$redis_dir/$port/sentinel.conf
    if [ ! -s "$conf" ]; then
      printf '%s\n' "bind 127.0.0.1" "port $port" "dir $redis_dir/$port" \
        "logfile $redis_dir/$port/sentinel.log" "pidfile $redis_dir/$port/sentinel.pid" \
        "sentinel monitor flashsale-p1 127.0.0.1 6381 2" \
        "sentinel down-after-milliseconds flashsale-p1 5000" \
        "sentinel failover-timeout flashsale-p1 30000" >"$conf"
    fi
    redis-sentinel "$conf" --daemonize yes
  fi
  wait_for "Redis Sentinel $port" 15 redis-cli -h 127.0.0.1 -p $port ping
done

# PgBouncer on 6432 in transaction pooling mode, in front of the primary (5432): any
# database, as postgres, without a password (trust, like the server here).
# Startup options do not pass it; statement_timeout is set on each server connection.
# Its admin console (database pgbouncer) takes commands from anyone here: the tests
# drop an app's client connections with KILL, as a failover would.
need pgbouncer pgbouncer
pgb_ini=/etc/pgbouncer/flashsale.ini
pgb_pid=/var/run/postgresql/pgbouncer-flashsale.pid
pgb_conf="[databases]
* = host=127.0.0.1 port=5432 user=postgres connect_query='SET statement_timeout = 10000'
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = 6432
unix_socket_dir =
auth_type = any
admin_users = pgbouncer, postgres
pool_mode = transaction
max_client_conn = 2000
default_pool_size = 10
server_idle_timeout = 10
ignore_startup_parameters = extra_float_digits,options
logfile = /var/log/postgresql/pgbouncer-flashsale.log
pidfile = $pgb_pid"
if [ "$(as_root cat "$pgb_ini" 2>/dev/null)" != "$pgb_conf" ]; then
  printf '%s\n' "$pgb_conf" | as_root tee "$pgb_ini" >/dev/null
  # A running one started from an older file stops; it starts again below.
  if [ -f "$pgb_pid" ]; then as_root kill "$(as_root cat "$pgb_pid")" 2>/dev/null || true; sleep 1; fi
fi
if ! psql -w -h 127.0.0.1 -p 6432 -U postgres -Atc 'select 1' postgres >/dev/null 2>&1; then
  as_root mkdir -p /var/run/postgresql /var/log/postgresql
  as_root chown postgres /var/run/postgresql /var/log/postgresql
  as_root runuser -u postgres -- pgbouncer -d "$pgb_ini"
fi
wait_for PgBouncer 15 psql -w -h 127.0.0.1 -p 6432 -U postgres -Atc 'select 1' postgres

# RabbitMQ
need rabbitmq-server rabbitmq-server
if ! (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
  as_root rabbitmq-server -detached || true
  as_root rabbitmqctl await_startup --timeout 120 >/dev/null
fi
wait_for RabbitMQ 60 bash -c 'exec 3<>/dev/tcp/127.0.0.1/5672'
# HAProxy and curl: the load balancer of scripts/fleet.sh (and the fleet tests).
need haproxy haproxy
need curl curl

# Kafka: tansu, an Apache Kafka compatible broker (memory storage), from crates.io.
TANSU_VERSION=0.6.0
tansu=$(command -v tansu || echo "$HOME/.cargo/bin/tansu")
if [ ! -x "$tansu" ]; then
  need cc build-essential
  need pkg-config pkg-config
  echo "installing tansu $TANSU_VERSION (cargo install; about 10 minutes)"
  cargo install tansu --version "$TANSU_VERSION" --features dynostore --locked --quiet
  tansu=$HOME/.cargo/bin/tansu
fi
if ! (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null; then
  log=${TMPDIR:-/tmp}/flashsale-tansu.log
  nohup "$tansu" broker --listener-url tcp://127.0.0.1:9092 \
    --advertised-listener-url tcp://127.0.0.1:9092 >"$log" 2>&1 &
fi
wait_for "Kafka (tansu)" 30 bash -c 'exec 3<>/dev/tcp/127.0.0.1/9092'
echo "services ready: PostgreSQL (replica on 5433, PgBouncer on 6432), Redis (6379; inventory partitions on 6380 and 6381, 6381's replica on 6382, Sentinels on 26379-26381), RabbitMQ, Kafka"
