#!/usr/bin/env bash
# A fleet on this machine: N api pods and M worker pods of the release build against
# the cluster services of a config file, each on its own ports, behind HAProxy (the
# stand-in for the load balancer in front of the pods in production) on one public
# port, with health checks on /readyz.
#
#   scripts/fleet.sh up [--api N] [--workers M] [--port P] [--config FILE] [--bin PATH] [--dir DIR]
#   scripts/fleet.sh status [--dir DIR]
#   scripts/fleet.sh restart POD [--dir DIR]   SIGTERM, wait for the exit, start again
#   scripts/fleet.sh roll [--dir DIR]          restart every pod in turn (a rolling deploy)
#   scripts/fleet.sh down [--dir DIR]          stop exactly what `up` started (by pid file)
#
# Ports from P (default 8080): HAProxy P (public) and P+1000 (its stats page); api pod i
# public P+1+i and admin P+1001+i; worker j admin P+1101+j. Every pod shares one admin
# token ($FLASHSALE__ADMIN__TOKEN, or one generated into DIR/admin-token), which the
# fleet view needs. Pods log to DIR/POD.log; a pod's exit code lands in DIR/POD.exit.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "fleet.sh: $*" >&2; exit 2; }

cmd=${1:-}
[ -n "$cmd" ] || { usage; exit 2; }
shift
pod_arg=""
if [ "$cmd" = restart ]; then
  pod_arg=${1:-}
  [ -n "$pod_arg" ] || die "restart needs a pod name (see: fleet.sh status)"
  shift
fi
apis=2 workers=1 port=8080 config=config/cluster.toml bin="" dir=.fleet
while [ $# -gt 0 ]; do
  case "$1" in
    --api) apis=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument $1 (see: fleet.sh --help)" ;;
  esac
done
dir=$(realpath -m "$dir")
for n in "$apis" "$workers" "$port"; do
  [[ "$n" =~ ^[0-9]+$ ]] || die "--api, --workers and --port take whole numbers"
done

# shellcheck source=scripts/lib.sh
source scripts/lib.sh

alive() { # alive PIDFILE WHAT: the process of the pid file is running and is WHAT
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -q -- "$2"
}

ready() { curl -fs -o /dev/null --max-time 2 "$1/readyz"; }

exited() { # exited NAME [PROGRAM]: a pod's exit code is recorded (its parent subshell
  # writes it once the process is gone: the pid alone may still be the fork that has
  # not become flashsale yet), or PROGRAM's pid file names no such process
  if [ -n "${2:-}" ]; then
    [ -e "$dir/$1.pid" ] && ! alive "$dir/$1.pid" "$2"
  else
    [ -e "$dir/$1.exit" ]
  fi
}

wait_ready() { # wait_ready NAME URL SECONDS [PROGRAM]: a process that exits meanwhile has failed
  for _ in $(seq $(($3 * 10))); do
    if exited "$1" "${4:-}"; then
      echo "fleet.sh: $1 exited at start; its log:" >&2
      tail -n 20 "$dir/$1.log" >&2 || true
      return 1
    fi
    ready "$2" && return 0
    sleep 0.1
  done
  echo "fleet.sh: $1 did not become ready within $3 s; its log:" >&2
  tail -n 20 "$dir/$1.log" >&2 || true
  return 1
}

# The recorded spec of each pod: NAME ROLE PUBLIC_PORT ADMIN_PORT (public 0 for a worker).
pods() { cat "$dir/pods"; }
admin_port() { awk -v n="$1" '$1 == n { print $4 }' "$dir/pods"; }

start_pod() { # start_pod NAME
  local name=$1 role public admin
  read -r _ role public admin < <(awk -v n="$name" '$1 == n' "$dir/pods")
  [ -n "${role:-}" ] || die "no pod named $name (see: fleet.sh status)"
  # The last run's files go first: the wait below must see this run's pid, not a
  # dead one that would read as "exited at start".
  rm -f "$dir/$name.exit" "$dir/$name.pid"
  local listen=()
  [ "$public" != 0 ] && listen=(FLASHSALE__HTTP__LISTEN="127.0.0.1:$public")
  # The subshell stays as the pod's parent to record its exit code.
  (
    env "${listen[@]}" \
      FLASHSALE__ADMIN__LISTEN="127.0.0.1:$admin" \
      FLASHSALE__ADMIN__TOKEN="$(cat "$dir/admin-token")" \
      FLASHSALE__POD__ID="$name" \
      FLASHSALE__HTTP__TRUSTED_PROXIES='["127.0.0.1"]' \
      "$(cat "$dir/bin")" serve --config "$(cat "$dir/config")" --role "$role" \
      >>"$dir/$name.log" 2>&1 </dev/null &
    echo $! >"$dir/$name.pid"
    wait $! && code=0 || code=$?
    # Written whole, then renamed: whoever sees the file sees the code.
    echo "$code" >"$dir/$name.exit.partial" && mv "$dir/$name.exit.partial" "$dir/$name.exit"
  ) </dev/null >/dev/null 2>&1 &
  for _ in $(seq 50); do [ -s "$dir/$name.pid" ] && break; sleep 0.1; done
  disown -a
}

stop_pod() { # stop_pod NAME [signalled]: SIGTERM (once: a second one exits at once) and
  # wait while the pod drains within its grace period
  local name=$1
  if alive "$dir/$name.pid" flashsale; then
    [ "${2:-}" = signalled ] || kill -TERM "$(cat "$dir/$name.pid")"
    for _ in $(seq 400); do alive "$dir/$name.pid" flashsale || break; sleep 0.1; done
    if alive "$dir/$name.pid" flashsale; then
      echo "fleet.sh: $name did not exit within 40 s; killing it" >&2
      kill -KILL "$(cat "$dir/$name.pid")" || true
    fi
  fi
  for _ in $(seq 50); do [ -e "$dir/$name.exit" ] && break; sleep 0.1; done
  local code
  code=$(cat "$dir/$name.exit" 2>/dev/null || echo unknown)
  echo "  $name stopped (exit code $code)"
  if [ "$code" != 0 ]; then
    echo "fleet.sh: $name did not exit cleanly; the end of its log:" >&2
    tail -n 15 "$dir/$name.log" >&2 || true
  fi
}

balanced() { # balanced NAME: HAProxy counts the pod UP (workers are not behind it)
  local role
  role=$(awk -v n="$1" '$1 == n { print $2 }' "$dir/pods")
  [ "$role" = api ] || return 0
  curl -fs --max-time 2 "http://127.0.0.1:$(($(cat "$dir/port") + 1000))/;csv" |
    awk -F, -v n="$1" '$1 == "api" && $2 == n { print $18 }' | grep -q '^UP'
}

wait_balanced() { # wait_balanced NAME: before the next pod of a roll may stop
  for _ in $(seq 300); do balanced "$1" && return 0; sleep 0.1; done
  echo "fleet.sh: HAProxy did not count $1 up within 30 s" >&2
  return 1
}

pod_url() { # pod_url NAME: where its readiness is read (admin listener: every role has one)
  echo "http://127.0.0.1:$(admin_port "$1")"
}

haproxy_cfg() {
  # Two descriptors per proxied connection, within what this process may open.
  local maxconn=$(( $(ulimit -n) / 2 - 64 ))
  [ "$maxconn" -gt 20000 ] && maxconn=20000
  cat <<EOF
global
    maxconn $maxconn
    pidfile $dir/haproxy.pid

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    option forwardfor
    option http-buffer-request
    # A pod that refuses the connection (stopped) is skipped for another one.
    retries 3
    option redispatch
    retry-on conn-failure empty-response

frontend public
    bind 127.0.0.1:$port
    default_backend api

backend api
    balance roundrobin
    # No api pod up (never in a rolling restart: the next pod stops only once the
    # balancer has the restarted one back): the API's own 503, with Retry-After.
    http-error status 503 content-type application/json hdr Retry-After 1 string "{\"error\":\"unavailable\",\"message\":\"no api pod is available; retry shortly\"}"
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 300ms fall 2 rise 2
EOF
  while read -r name role public _; do
    [ "$role" = api ] && echo "    server $name 127.0.0.1:$public check"
  done < <(pods)
  cat <<EOF

listen stats
    bind 127.0.0.1:$((port + 1000))
    stats enable
    stats uri /
EOF
}

status() {
  [ -f "$dir/pods" ] || { echo "no fleet in $dir"; return 1; }
  echo "fleet in $dir: public API http://127.0.0.1:$(cat "$dir/port") (HAProxy; stats http://127.0.0.1:$(($(cat "$dir/port") + 1000))/)"
  printf '  %-10s %-7s %-8s %-10s %-28s %s\n' POD ROLE PID STATE PUBLIC ADMIN
  while read -r name role public admin; do
    local pid state url
    pid=$(cat "$dir/$name.pid" 2>/dev/null || echo -)
    if ! alive "$dir/$name.pid" flashsale; then
      state="exited($(cat "$dir/$name.exit" 2>/dev/null || echo ?))"
    elif ready "http://127.0.0.1:$admin"; then
      state=ready
    else
      state=not-ready
    fi
    url=-
    [ "$public" != 0 ] && url="http://127.0.0.1:$public"
    printf '  %-10s %-7s %-8s %-10s %-28s %s\n' "$name" "$role" "$pid" "$state" "$url" "http://127.0.0.1:$admin/admin"
  done < <(pods)
  if alive "$dir/haproxy.pid" haproxy; then
    echo "  haproxy    pid $(cat "$dir/haproxy.pid")"
  else
    echo "  haproxy    not running"
  fi
}

case "$cmd" in
  up)
    if [ -f "$dir/pods" ]; then
      die "a fleet is already up in $dir (fleet.sh status; fleet.sh down first)"
    fi
    [ "$apis" -ge 1 ] || die "--api must be at least 1"
    [ "$workers" -ge 1 ] || die "--workers must be at least 1"
    [ -f "$config" ] || die "no config file $config"
    need haproxy haproxy
    need curl curl
    # Every port of the fleet must be free: a process already listening there would
    # answer for a pod that could not bind (HAProxy even shares its port).
    taken=()
    for p in "$port" $((port + 1000)) $(seq $((port + 1)) $((port + apis))) \
      $(seq $((port + 1001)) $((port + 1000 + apis))) $(seq $((port + 1101)) $((port + 1100 + workers))); do
      (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && taken+=("$p")
    done
    [ ${#taken[@]} = 0 ] || die "port(s) ${taken[*]} already in use (another fleet? fleet.sh status --dir …; or --port)"
    if [ -z "$bin" ]; then
      bin=${CARGO_TARGET_DIR:-target}/release/flashsale
      [ -x "$bin" ] || cargo build --release --locked -p flashsale
    fi
    [ -x "$bin" ] || die "no flashsale binary at $bin"
    mkdir -p "$dir"
    realpath "$bin" >"$dir/bin"
    realpath "$config" >"$dir/config"
    echo "$port" >"$dir/port"
    if [ -n "${FLASHSALE__ADMIN__TOKEN:-}" ]; then
      printf '%s' "$FLASHSALE__ADMIN__TOKEN" >"$dir/admin-token"
    elif [ ! -s "$dir/admin-token" ]; then
      head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/admin-token"
    fi
    chmod 600 "$dir/admin-token"
    : >"$dir/pods"
    for i in $(seq 0 $((apis - 1))); do
      echo "api-$i api $((port + 1 + i)) $((port + 1001 + i))" >>"$dir/pods"
    done
    for j in $(seq 0 $((workers - 1))); do
      echo "worker-$j worker 0 $((port + 1101 + j))" >>"$dir/pods"
    done
    echo "migrating"
    "$(cat "$dir/bin")" migrate --config "$(cat "$dir/config")" >"$dir/migrate.log" 2>&1 ||
      { cat "$dir/migrate.log" >&2; die "migrate failed"; }
    while read -r name _; do start_pod "$name"; done < <(pods)
    while read -r name _; do wait_ready "$name" "$(pod_url "$name")" 60; done < <(pods)
    haproxy_cfg >"$dir/haproxy.cfg"
    haproxy -c -q -f "$dir/haproxy.cfg" || die "HAProxy refused $dir/haproxy.cfg"
    haproxy -D -f "$dir/haproxy.cfg" </dev/null >/dev/null 2>&1
    wait_ready haproxy "http://127.0.0.1:$port" 15 haproxy
    echo "fleet is up: $apis api pod(s), $workers worker(s)"
    status
    echo "  admin token: $dir/admin-token"
    echo "  fleet view:  flashsale tree --fleet --admin-url http://127.0.0.1:$((port + 1001)) --admin-token \"\$(cat $dir/admin-token)\""
    ;;
  status)
    status
    ;;
  restart)
    [ -f "$dir/pods" ] || die "no fleet in $dir"
    stop_pod "$pod_arg"
    start_pod "$pod_arg"
    wait_ready "$pod_arg" "$(pod_url "$pod_arg")" 60
    wait_balanced "$pod_arg"
    echo "  $pod_arg ready again"
    ;;
  roll)
    [ -f "$dir/pods" ] || die "no fleet in $dir"
    while read -r name _; do
      stop_pod "$name"
      start_pod "$name"
      wait_ready "$name" "$(pod_url "$name")" 60
      wait_balanced "$name"
      echo "  $name ready again"
    done < <(pods)
    ;;
  down)
    [ -f "$dir/pods" ] || { echo "no fleet in $dir"; exit 0; }
    while read -r name _; do
      alive "$dir/$name.pid" flashsale && kill -TERM "$(cat "$dir/$name.pid")"
    done < <(pods)
    while read -r name _; do stop_pod "$name" signalled; done < <(pods)
    if alive "$dir/haproxy.pid" haproxy; then
      kill -TERM "$(cat "$dir/haproxy.pid")"
      echo "  haproxy stopped"
    fi
    rm -f "$dir"/pods "$dir"/*.pid "$dir"/*.exit "$dir/haproxy.cfg"
    echo "fleet down (logs kept in $dir)"
    ;;
  *)
    usage
    exit 2
    ;;
esac
