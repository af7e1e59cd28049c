# Sourced by the scripts that build the S3 servers of the tests
# (seaweedfs.sh, versitygw.sh). testbin CONST NAME sets version to the Go
# constant CONST of internal/s3test/s3test.go and bin to the cached binary
# NAME-version, where internal/s3test looks for it, and exits when that
# binary is there already.
testbin() {
  version=$(sed -n "s/^const $1 = \"\(.*\)\"\$/\1/p" internal/s3test/s3test.go)
  [ -n "$version" ] || { echo "$2: no const $1 in internal/s3test/s3test.go" >&2; exit 1; }
  cache="${XDG_CACHE_HOME:-$HOME/.cache}/flechefs-test"
  bin="$cache/$2-$version"
  if [ -x "$bin" ]; then
    exit 0
  fi
  mkdir -p "$cache"
}
