#!/usr/bin/env bash
# The test command: starts (or installs) the services the suite talks to, clears what
# earlier interrupted runs may have left behind, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
# The admin page is tested in a real headless browser.
if ! command -v chromium >/dev/null 2>&1; then
  echo "installing chromium"
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo=sudo; fi
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

# What test runs leave behind: test databases, test queues, the test Redis databases.
# Cleared before the run (an interrupted run may have left some) and after it.
cleanup() {
  psql -w -h 127.0.0.1 -U postgres -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'fs\_test\_%'" |
    while read -r db; do psql -w -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)"; done
  redis-cli -p 6380 -n 14 flushdb >/dev/null
  redis-cli -p 6381 -n 15 flushdb >/dev/null
  # The tests' topics are deleted here, once no test process can read them: a client
  # still fetching a topic the broker no longer knows is answered in a way that crashes
  # librdkafka (a zero topic id with a leader update: it looks the topic up by a name
  # it does not have), so the tests never delete topics themselves.
  tansu=$(command -v tansu || echo "$HOME/.cargo/bin/tansu")
  "$tansu" topic list --broker tcp://127.0.0.1:9092 2>/dev/null |
    python3 -c 'import json,sys; [print(t["name"]) for t in json.load(sys.stdin) if t["name"].startswith("fstest.")]' 2>/dev/null |
    while read -r topic; do "$tansu" topic delete --broker tcp://127.0.0.1:9092 "$topic" >/dev/null 2>&1 || true; done
  if command -v rabbitmqctl >/dev/null; then
    rabbitmqctl -q list_queues name 2>/dev/null | { grep '^fstest\.' || true; } | while read -r q; do
      rabbitmqctl -q delete_queue "$q" </dev/null >/dev/null 2>&1 || true
    done
  fi
}
cleanup
trap cleanup EXIT

cargo test --locked --workspace -- --test-threads 2 "$@"
# The API suite once more in the whole topology (README, "Topology"): the catalog and
# the shards behind PgBouncer in transaction pooling mode, and order reads from the
# shards' streaming replica.
FLASHSALE_TEST_PGBOUNCER=6432 FLASHSALE_TEST_REPLICA=5433 \
  cargo test --locked --test api -- --test-threads 2 "$@"
bash scripts/schemathesis.sh
# What deploys it: the container image, the Helm chart, alerts and dashboard, workflows.
bash scripts/image-test.sh
bash scripts/deploy-check.sh
