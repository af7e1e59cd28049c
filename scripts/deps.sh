#!/usr/bin/env bash
# Installs, from Debian packages, what flechefs and its tests need, when missing.
# Usage: scripts/deps.sh [run|test|bench]
set -euo pipefail
want=(fuse3)
case "${1:-test}" in
  run) want+=(attr) ;; # getfattr, for the README's user.flechefs.* examples
  test) want+=(attr openssh-server openssh-client python3 iproute2 e2fsprogs util-linux mount procps diffutils
         systemd # systemd-analyze verify, for contrib/systemd
         # integration/patterns_test.go: the real programs that write results
         # (numpy for Debian's /usr/bin/python3; npm only when Node.js does not bring its own)
         bash dash zsh busybox perl rsync python3 python3-numpy nodejs tar coreutils findutils gawk)
        command -v npm >/dev/null || want+=(npm) ;;
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
# write-file-atomic (npm) for integration/patterns_test.go, in a fixed folder.
npmdir=/opt/flechefs-testdeps
if [ "${1:-test}" = test ] && [ ! -f "$npmdir/node_modules/write-file-atomic/package.json" ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "deps: missing npm package write-file-atomic in $npmdir (run as root)" >&2
    exit 1
  fi
  echo "deps: installing npm write-file-atomic into $npmdir" >&2
  mkdir -p "$npmdir"
  [ -f "$npmdir/package.json" ] || echo '{"name":"flechefs-testdeps","private":true}' > "$npmdir/package.json"
  npm install --prefix "$npmdir" --no-audit --no-fund --loglevel=error write-file-atomic@5 >/dev/null
fi
command -v go >/dev/null || { echo "deps: Go is not installed (need Go 1.26: /usr/local/go/bin)" >&2; exit 1; }
# SeaweedFS and versitygw, the S3 servers of the S3 tier's tests
# (internal/s3test), built once.
if [ "${1:-test}" = test ]; then
  "$(dirname "$0")/seaweedfs.sh"
  "$(dirname "$0")/versitygw.sh"
fi
