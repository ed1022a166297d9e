# Shared by the benchmark scripts (sourced, from the repository's root): the settings
# every benchmark server runs with, the release build, and a wait for readiness.
export FLASHSALE__ADMIN__TOKEN=bench-admin-token-0123456789
export FLASHSALE__AUTH__JWT_SECRET=bench-jwt-secret-0123456789-0123456789
export FLASHSALE__HTTP__LISTEN=127.0.0.1:8080 FLASHSALE__ADMIN__LISTEN=127.0.0.1:9090
export RUST_LOG=warn

# BIN_DIR names prebuilt binaries instead (flashsale and flashsale-load, another build).
if [ -n "${BIN_DIR:-}" ]; then
  bin=$(realpath "$BIN_DIR")
else
  echo "== building (release)"
  cargo build --release --workspace -q
  bin=$(realpath "${CARGO_TARGET_DIR:-target}/release")
fi

wait_ready() { # wait_ready URL: up to a minute for URL/readyz to answer 200
  for _ in $(seq 120); do curl -fs "$1/readyz" >/dev/null 2>&1 && return 0; sleep 0.5; done
  return 1
}

fresh_cluster() { # the cluster's databases, partitions and queues emptied (config/cluster.toml's)
  local db
  for db in flashsale_catalog flashsale_shard_0 flashsale_shard_1 flashsale_shard_2 flashsale_shard_3; do
    PGOPTIONS=--client-min-messages=warning psql -w -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
  done
  redis-cli -p 6380 -n 0 flushdb >/dev/null
  redis-cli -p 6381 -n 0 flushdb >/dev/null
  if command -v rabbitmqctl >/dev/null; then
    for q in flashsale.orders flashsale.notifications; do
      rabbitmqctl -q delete_queue "$q" </dev/null >/dev/null 2>&1 || true
    done
  fi
}

serve() { # serve MODE LOG: a release server in the background ($server), on a fresh
  # data directory ($data, embedded) or config/cluster.toml's fresh stores (cluster);
  # stopped, and its data removed, when the script exits
  case $1 in
    embedded)
      data=$(mktemp -d)
      export FLASHSALE__EMBEDDED__DATA_DIR=$data
      "$bin/flashsale" serve > "$2" 2>&1 &
      ;;
    cluster)
      fresh_cluster
      "$bin/flashsale" serve --config config/cluster.toml > "$2" 2>&1 &
      ;;
    *) echo "MODE is embedded or cluster" >&2; exit 2 ;;
  esac
  server=$!
  trap 'kill -TERM $server 2>/dev/null && wait $server || true; [ -n "${data:-}" ] && rm -rf "$data"' EXIT
  wait_ready http://127.0.0.1:9090 || { tail "$2"; exit 1; }
}
