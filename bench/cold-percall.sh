#!/bin/bash
# Cold read of 32 values of 4 MiB from the bench's loopback sshd, with the
# time of each call (bench/cmd/percall): each round mounts every flechefs
# binary given (fresh RAM + bbolt + sftp tiers) and sshfs, one after
# another, on the same remote files, and prints percall's line for each.
# Usage: bench/cold-percall.sh [ROUNDS] FLECHEFS_BINARY...
#        (as root; builds bin/flechebench and /tmp/percall; uses /var/tmp/coldpc)
set -e
ROUNDS=${1:-3}; shift || true
BINS=("${@:-bin/flechefs}")
W=/var/tmp/coldpc; R=$W/sshd/remote4; M=$W/mnt
go build -o bin/flechebench ./bench/cmd/flechebench
go build -o /tmp/percall ./bench/cmd/percall
# The sshd tree (keys, config) and a flechefs config are the bench's own.
bin/flechebench -flechefs "${BINS[0]}" -work $W -keep -only main -clients flechefs -scenarios cold -repeats 1 -out $W-out > $W.log 2>&1 ||
  { echo "flechebench failed: $W.log"; exit 1; }
mkdir -p $R $M
for i in $(seq 32); do head -c 4194304 /dev/urandom > $R/$(head -c 32 /dev/urandom | sha256sum | cut -c1-64); done
/usr/sbin/sshd -f $W/sshd/etc/sshd_config
trap 'kill $(cat $W/sshd/sshd.pid) 2>/dev/null' EXIT
sed 's#sshd/remote"#sshd/remote4"#' $W/flechefs/config.toml > $W/config.toml
PORT=$(grep -o '127.0.0.1:[0-9]*' $W/config.toml | cut -d: -f2)
flechefs() { # BINARY
  rm -rf $W/flechefs/cache.db $W/flechefs/spool
  "$1" mount --config $W/config.toml $M 2>>$W/mount.log & for i in $(seq 100); do mountpoint -q $M && break; sleep 0.1; done
  /tmp/percall $M $R 4194304
  "$1" umount $M; wait
}
sshfs_() {
  sshfs -f -p $PORT -o IdentityFile=$W/sshd/etc/id_ed25519,UserKnownHostsFile=$W/sshd/etc/known_hosts,StrictHostKeyChecking=yes,BatchMode=yes,IdentitiesOnly=yes,Ciphers=aes128-gcm@openssh.com root@127.0.0.1:$R $M &
  for i in $(seq 100); do mountpoint -q $M && break; sleep 0.1; done
  /tmp/percall $M $R 4194304
  fusermount3 -u $M; wait
}
# Files without a record are served only 5 s after their last change; the
# first pass records their sums, as values written through flechefs have.
sleep 6; flechefs "${BINS[0]}" > /dev/null
for r in $(seq $ROUNDS); do
  for b in "${BINS[@]}"; do echo "round $r, $b: $(flechefs "$b")"; done
  echo "round $r, sshfs: $(sshfs_)"
done
