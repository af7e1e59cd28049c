#!/usr/bin/env bash
# Installs the Versity S3 Gateway (versitygw), the second real S3 server of
# the tests (internal/s3test, Options.Gateway "versitygw"), from its Go
# module, once per version: about 2 CPU-minutes and 85 MB; the binary is
# cached where internal/s3test looks for it.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/testbin.sh
testbin VersityVersion versitygw
echo "versitygw: installing versitygw $version into $bin (a minute or two, once)" >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
GOBIN="$work" go install "github.com/versity/versitygw/cmd/versitygw@$version"
mv "$work/versitygw" "$bin"
echo "versitygw: $bin" >&2
