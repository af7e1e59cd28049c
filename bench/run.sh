#!/usr/bin/env bash
# bench/run.sh: build flechefs (without -race), the benchmark driver and the
# go-fuse RAM ceiling, then run the benchmark (see bench/README.md).
# Arguments go to the driver: bench/run.sh -repeats 5 -only main
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
if [ "$(id -u)" != 0 ]; then
  echo "bench: run as root (it mounts, raises read_ahead_kb and drops caches)" >&2
  exit 1
fi
mkdir -p bin bench/results
go build -trimpath -o bin/flechefs ./cmd/flechefs
go build -trimpath -o bin/flechebench ./bench/cmd/flechebench
go build -trimpath -o bin/memfs ./bench/memfs
exec bin/flechebench -flechefs bin/flechefs -memfs bin/memfs -out bench/results "$@"
