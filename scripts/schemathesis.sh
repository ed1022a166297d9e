#!/usr/bin/env bash
# Checks that the API documents tell the truth. Starts the server in embedded mode (no
# services needed: its data in a temporary directory, both listeners on free ports),
# seeds a product with an open sale and a registered buyer, then runs schemathesis with
# every check against the public document (GET /openapi.json on the public listener)
# and the admin document (GET /admin/openapi.json on the admin listener). Exits
# non-zero on any failure. Check settings and their few exceptions:
# scripts/schemathesis.toml.
#
#   bash scripts/schemathesis.sh                 # the debug binary that cargo test builds
#   FLASHSALE_BIN=target/release/flashsale bash scripts/schemathesis.sh
#   SCHEMATHESIS_EXAMPLES=200 SCHEMATHESIS_SEED=random bash scripts/schemathesis.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

SCHEMATHESIS_VERSION=4.32.5
# Test cases per operation and phase; with 50 both runs take about a minute on 2 cores.
examples=${SCHEMATHESIS_EXAMPLES:-50}
# A fixed seed makes a red run repeatable; SCHEMATHESIS_SEED=random explores further.
seed=${SCHEMATHESIS_SEED:-20240601}
venv=${FLASHSALE_VENV:-$HOME/.cache/flashsale/venv}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  echo "installing $*"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# schemathesis, pinned, in a virtualenv kept between runs.
command -v python3 >/dev/null 2>&1 || apt_install python3
if [ "$("$venv/bin/schemathesis" --version 2>/dev/null)" != "schemathesis, version $SCHEMATHESIS_VERSION" ]; then
  rm -rf "$venv"
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    # Debian ships venv's pip bootstrap in a package of its own.
    apt_install python3-venv
    rm -rf "$venv"
    python3 -m venv "$venv"
  fi
  echo "installing schemathesis $SCHEMATHESIS_VERSION into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
"$venv/bin/schemathesis" --version

if [ -z "${FLASHSALE_BIN:-}" ]; then
  # What scripts/test.sh's cargo test builds (a no-op right after it), the server among
  # it; a plain `cargo build` would resolve features without the dev-dependencies and
  # rebuild part of the tree.
  cargo test --locked --workspace --no-run --quiet
  FLASHSALE_BIN=${CARGO_TARGET_DIR:-target}/debug/flashsale
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/flashsale-schemathesis.XXXXXX")
server=""
stop_server() {
  [ -n "$server" ] || return 0
  kill -TERM "$server" 2>/dev/null || true
  for _ in $(seq 300); do kill -0 "$server" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  server=""
}
finish() {
  status=$?
  stop_server
  if [ "$status" != 0 ] && [ -s "$work/server.log" ]; then
    echo "--- the server's log (last 40 lines) ---" >&2
    tail -n 40 "$work/server.log" >&2
  fi
  rm -rf "$work"
}
trap finish EXIT

admin_token=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')
payment_secret=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
# One buyer places every order of the run, far more than the 10 a minute a buyer may:
# the rate limit would turn the order path into 429s and hide what it answers otherwise.
# The payment confirmation exists only with a webhook secret: the server has one, so
# that its document is checked (unsigned requests are answered 401, as documented).
FLASHSALE__EMBEDDED__DATA_DIR="$work/data" \
  FLASHSALE__HTTP__LISTEN=127.0.0.1:0 \
  FLASHSALE__ADMIN__LISTEN=127.0.0.1:0 \
  FLASHSALE__ADMIN__TOKEN="$admin_token" \
  FLASHSALE__PAYMENTS__WEBHOOK_SECRET="$payment_secret" \
  FLASHSALE__LIMITS__RATE_PER_MINUTE=1000000 \
  RUST_LOG=${RUST_LOG:-warn} \
  "$FLASHSALE_BIN" serve >"$work/server.out" 2>"$work/server.log" &
server=$!

# Both listeners bind port 0; the server prints the addresses it got.
public="" admin=""
for _ in $(seq 600); do
  public=$(sed -n 's|^  public API   \(http://[^ ]*\)$|\1|p' "$work/server.out")
  admin=$(sed -n 's|^  admin API    \(http://[^ ]*\)/admin$|\1|p' "$work/server.out")
  if [ -n "$public" ] && [ -n "$admin" ] && curl -fs "$public/readyz" >/dev/null; then break; fi
  kill -0 "$server" 2>/dev/null || { echo "the server exited" >&2; exit 1; }
  sleep 0.1
done
curl -fs "$public/readyz" >/dev/null || { echo "the server never became ready" >&2; exit 1; }
echo "server: public API $public, admin API $admin"

# Seed: a product with a sale open now (the documents' examples name product 1, the
# first of a fresh catalog), and a buyer with a token.
json() { python3 -c "import json, sys; print(json.load(sys.stdin)$1)"; }
call() { # call METHOD URL BODY [CURL_ARG...]: the body of a 2xx answer
  local method=$1 url=$2 body=$3
  shift 3
  curl -fsS -X "$method" "$url" -H 'Content-Type: application/json' "$@" -d "$body"
}
product=$(call POST "$admin/admin/products" '{"name":"Phone","priceCents":19900}' \
  -H "Authorization: Bearer $admin_token" | json '["id"]')
[ "$product" = 1 ] || { echo "the first product is $product, not 1" >&2; exit 1; }
call PUT "$admin/admin/flash-sales/$product" '{"stock":1000000000,"perUserLimit":1000000000}' \
  -H "Authorization: Bearer $admin_token" >/dev/null
credentials='{"email":"buyer@example.com","password":"correct horse"}'
call POST "$public/auth/register" "$credentials" >/dev/null
token=$(call POST "$public/auth/login" "$credentials" | json '["token"]')
echo "seeded: product $product on sale, a buyer with a token"

seed_option=(--seed "$seed")
if [ "$seed" = random ]; then seed_option=(); fi
run() { # run DOCUMENT_URL BEARER_TOKEN
  # One worker: the server has two cores to itself, and with two workers schemathesis
  # on Python 3.11 failed with internal errors (SystemError: AST constructor recursion
  # depth mismatch).
  (cd "$work" && "$venv/bin/schemathesis" --config-file "$root/scripts/schemathesis.toml" \
    run "$1" \
    --checks all \
    --max-examples "$examples" \
    "${seed_option[@]}" \
    --generation-database none \
    --workers 1 \
    --no-color \
    -H "Authorization: Bearer $2")
}
failed=0
echo "=== the public API: $public/openapi.json"
run "$public/openapi.json" "$token" || failed=1
echo "=== the admin API: $admin/admin/openapi.json"
run "$admin/admin/openapi.json" "$admin_token" || failed=1

if ! kill -0 "$server" 2>/dev/null; then
  echo "the server exited during the run" >&2
  exit 1
fi
# What the run reached: the public listener's answers per route and status.
echo "=== what the public API answered (from /metrics)"
curl -fsS "$admin/metrics" | python3 -c '
import re, sys
seen = {}
for line in sys.stdin:
    m = re.match(r"flashsale_http_requests_total\{method=\"(\w+)\",route=\"([^\"]+)\",status=\"(\d+)\"\} (\d+)", line)
    if m:
        method, route, status, n = m.groups()
        seen.setdefault(f"{method} {route}", []).append(f"{status}x{n}")
for operation, answers in sorted(seen.items()):
    if not all(a.startswith("405x") for a in answers):
        print(f"  {operation}: {sorted(answers)}")
'
stop_server
if [ "$failed" != 0 ]; then
  echo "schemathesis found places where an API document and the server disagree" >&2
  exit 1
fi
echo "both API documents agree with the server"
