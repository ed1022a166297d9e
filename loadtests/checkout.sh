#!/usr/bin/env bash
# The checkout loop against one release server (MODE embedded or cluster, the latter on
# config/cluster.toml's fresh databases, partitions and queues): a sale of STOCK units
# with a WINDOW-second payment window, BUYERS buyers, of whom a share PAY pays each
# order after a random delay up to DELAY_MS; the rest let their orders expire, and the
# units that come back are sold again until the whole stock is paid. Prints the load
# tester's report (held, paid and expired over time, its invariants) and keeps it as
# JSON and HTML under BENCH_DIR. Needs scripts/services.sh's services for cluster mode.
#
#   MODE=embedded loadtests/checkout.sh
#   MODE=cluster STOCK=1000 WINDOW=5 PAY=0.6 loadtests/checkout.sh
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${MODE:-embedded}
out=${BENCH_DIR:-target/checkout-$mode}
mkdir -p "$out"
# shellcheck source=loadtests/env.sh
source loadtests/env.sh
export FLASHSALE__PAYMENTS__WEBHOOK_SECRET=bench-payment-webhook-secret-0123456789
export FLASHSALE__PAYMENTS__SWEEP_EVERY_MS=${SWEEP_MS:-250}
serve "$mode" "$out/server.log"

"$bin/flashsale-load" --max-in-flight 512 --deadline-secs "${DEADLINE:-180}" \
  --target http://127.0.0.1:8080 --admin-url http://127.0.0.1:9090 \
  --jwt-secret "$FLASHSALE__AUTH__JWT_SECRET" --report-json "$out/load.json" \
  --report-html "$out/report.html" \
  checkout --stock "${STOCK:-1000}" --buyers "${BUYERS:-2000}" --window-secs "${WINDOW:-5}" \
  --pay-probability "${PAY:-0.6}" --pay-delay-ms "${DELAY_MS:-1000}"
