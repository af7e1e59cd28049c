#!/bin/bash
# Writes 2000 × 16 KiB (bench/cmd/writeburst) into a fresh RAM + bbolt mount
# of each binary in turn, ROUNDS times (default 8), alternating, and prints
# one line per mount: the burst's time and each call's median.
# Usage: bench/write-burst.sh BINARY... (as root; uses /tmp/wb, /tmp/wb.db)
ROUNDS=${ROUNDS:-8}; MNT=/tmp/wb; DB=/tmp/wb.db
[ $# -gt 0 ] || { echo "usage: bench/write-burst.sh BINARY..." >&2; exit 2; }
go build -o /tmp/writeburst ./bench/cmd/writeburst || exit 1
mkdir -p $MNT
for i in $(seq $ROUNDS); do for BIN in "$@"; do
  rm -f $DB
  $BIN mount --bolt $DB --remote none $MNT 2>>/tmp/wb.log &
  for j in $(seq 100); do mountpoint -q $MNT && break; sleep 0.1; done
  sleep 0.5
  echo "$BIN $(/tmp/writeburst $MNT 2000 16384)"
  sleep 0.5
  $BIN umount $MNT; wait
done; done
