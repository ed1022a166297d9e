#!/usr/bin/env bash
# Checks what deploys flashsale, offline: the alert rules (promtool check and unit
# tests, Debian's prometheus package) and the Helm chart (scripts/chart-check.py: lint,
# render, Kubernetes 1.30 schemas, the rendered config on the real binary). Installs
# what it needs: prometheus with apt-get, helm-python-sdk and kubernetes-validate from
# PyPI into a virtualenv under ~/.cache/flashsale.
#
#   scripts/deploy-check.sh        # after `cargo test --no-run` (it starts the debug binary)
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${FLASHSALE_CACHE:-$HOME/.cache/flashsale}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v promtool >/dev/null 2>&1; then
  echo "installing prometheus (for promtool)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

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
"$venv/bin/python" scripts/chart-check.py
