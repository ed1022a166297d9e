# Shared by the scripts (sourced): run as root (with sudo when not), and install a
# missing command's Debian packages, updating the package lists once per run.
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=0
need() { # need COMMAND PACKAGE... (apt-get options may come among the packages)
  command -v "$1" >/dev/null 2>&1 && return 0
  if [ $apt_updated = 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
  echo "installing ${*:2}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${@:2}" >/dev/null
}
