#!/usr/bin/env bash
# Installs, from Debian packages, what flechefs and its tests need, when missing.
# Usage: scripts/deps.sh [run|test|bench]
set -euo pipefail
want=(fuse3)
case "${1:-test}" in
  run) ;;
  test) want+=(openssh-server openssh-client python3 iproute2 e2fsprogs util-linux mount procps diffutils) ;;
  bench) want+=(openssh-server openssh-client sshfs rclone) ;;
esac
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "deps: missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install -y ${missing[*]})" >&2
    exit 1
  fi
  echo "deps: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v go >/dev/null || { echo "deps: Go is not installed (need Go 1.26: /usr/local/go/bin)" >&2; exit 1; }
