# Shared by the benchmark scripts (sourced, from the repository's root): the settings
# every benchmark server runs with, the release build, and a wait for readiness.
export FLASHSALE__ADMIN__TOKEN=bench-admin-token-0123456789
export FLASHSALE__AUTH__JWT_SECRET=bench-jwt-secret-0123456789-0123456789
export FLASHSALE__HTTP__LISTEN=127.0.0.1:8080 FLASHSALE__ADMIN__LISTEN=127.0.0.1:9090
export RUST_LOG=warn

echo "== building (release)"
cargo build --release --workspace -q
bin=$(realpath "${CARGO_TARGET_DIR:-target}/release")

wait_ready() { # wait_ready URL: up to a minute for URL/readyz to answer 200
  for _ in $(seq 120); do curl -fs "$1/readyz" >/dev/null 2>&1 && return 0; sleep 0.5; done
  return 1
}
