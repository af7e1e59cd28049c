#!/bin/bash
# Remount read of N values of 4 MiB (default 32) through RAM + bbolt, three
# fresh mounts, with the time of each call (bench/cmd/percall, built to
# /tmp/percall).
# Usage: bench/remount-percall.sh [FLECHEFS_BINARY]   (as root; uses /tmp/m4, /tmp/r4.db)
BIN=${1:-bin/flechefs}; N=${N:-32}; DB=/tmp/r4.db; MNT=/tmp/m4; D=/tmp/r4names
mkdir -p $MNT; rm -rf $D; mkdir -p $D
start() { $BIN mount --bolt $DB $MNT $EXTRA 2>>/tmp/r4.log & for i in $(seq 100); do mountpoint -q $MNT && break; sleep 0.1; done; }
stop() { $BIN umount $MNT; wait; }
go build -o /tmp/percall ./bench/cmd/percall || exit 1
if [ ! -f $DB ]; then
start
for i in $(seq $N); do k=$(printf '%s' "v$i" | sha256sum | cut -c1-64); head -c 4194304 /dev/urandom > $MNT/$k; done
stop
fi
python3 - <<PY
import hashlib,os
for i in range(1,$N+1):
    k=hashlib.sha256(b"v%d"%i).hexdigest()
    f=open("$D/"+k,"wb"); f.truncate(4194304); f.close()
PY
for r in 1 2 3; do
  start
  /tmp/percall $MNT $D 4194304
  stop
done
