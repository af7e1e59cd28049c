#!/bin/bash
# Remount read of 8 values of 4 MiB through a mount of RAM + bbolt, with the
# database file in the page cache (warm) and dropped from it (cold).
# Usage: bench/remount-4mib.sh [FLECHEFS_BINARY]   (as root; uses /tmp/m1, /tmp/rm.db)
BIN=${1:-flechefs}; DB=/tmp/rm.db; MNT=/tmp/m1
mkdir -p $MNT
rm -f $DB; 
start() { $BIN mount --bolt $DB $MNT 2>/tmp/rm.log & for i in $(seq 100); do mountpoint -q $MNT && break; sleep 0.1; done; }
stop() { $BIN umount $MNT; wait; }
start
for i in 0 1 2 3 4 5 6 7; do k=$(printf '%s' "v$i" | sha256sum | cut -c1-64); head -c 4194304 /dev/urandom > $MNT/$k; done
ls $MNT > /tmp/rm.keys
stop
for mode in warm cold warm cold; do
  [ $mode = cold ] && python3 -c "import os;fd=os.open('$DB',os.O_RDONLY);os.posix_fadvise(fd,0,0,os.POSIX_FADV_DONTNEED)"
  start
  s=$(date +%s.%N); for k in $(cat /tmp/rm.keys); do cat $MNT/$k > /dev/null; done; e=$(date +%s.%N)
  echo "$mode: $(python3 -c "print(f'{32/($e-$s):.0f} MiB/s')")"
  stop
done
