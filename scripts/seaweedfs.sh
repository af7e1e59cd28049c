#!/usr/bin/env bash
# Builds SeaweedFS's weed binary, the real S3 server of the tests
# (internal/s3test), from its Go module, once per version: `go install
# pkg@version` is refused because its go.mod has replace directives, so the
# module is downloaded and built inside a copy of it. About 7 CPU-minutes
# and 230 MB; the binary is cached where internal/s3test looks for it.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/testbin.sh
testbin Version weed
echo "seaweedfs: building weed $version into $bin (a few minutes, once)" >&2
dir=$(go mod download -json "github.com/seaweedfs/seaweedfs@$version" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
[ -n "$dir" ] || { echo "seaweedfs: go mod download gave no directory" >&2; exit 1; }
work=$(mktemp -d)
trap 'chmod -R u+w "$work"; rm -rf "$work"' EXIT
cp -r "$dir" "$work/src"
chmod -R u+w "$work/src"
(cd "$work/src" && go build -o "$bin.tmp" ./weed)
mv "$bin.tmp" "$bin"
echo "seaweedfs: $bin" >&2
