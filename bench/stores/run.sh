#!/bin/bash
# The runs behind docs/benchmarks.md's "Embedded stores" table, one thing at a time:
# cargo build --release (in bench/stores), then this script, as root.
set -u
S=$(cd "$(dirname "$0")" && pwd); B=$S/target/release/storebench; D=/work/storebench-data; mkdir -p $D; cd $D
# 1-3: latency, group commits, reads: 3 rounds alternating the stores, fresh file each run
for r in 1 2 3; do for s in redb sqlite-full sqlite-normal; do rm -f $s-r$r.db*; $B bench $s $s-r$r.db $r; done; done > /tmp/storebench-results-bench.txt
# 4: open time, cold (page cache dropped) and warm, of the round-3 files (100k keys)
for i in 1 2 3; do for s in redb sqlite-full sqlite-normal; do sync; echo 3 > /proc/sys/vm/drop_caches
  $B open $s $s-r3.db | sed "s/test=open/test=open_cold round=$i/"; $B open $s $s-r3.db | sed "s/test=open/test=open_warm round=$i/"; done; done > /tmp/storebench-results-open.txt
# open after kill -9 in the middle of commits (redb repairs; SQLite replays its WAL)
for i in 1 2; do for s in redb sqlite-full sqlite-normal; do cp $s-r$i.db crash-$s.db; $B crash $s crash-$s.db >/dev/null & p=$!; sleep 2; kill -9 $p; wait $p
  $B open $s crash-$s.db | sed "s/test=open/test=open_after_kill9 round=$i/"; done; done > /tmp/storebench-results-crash.txt; rm -f crash-*
# 4: a second process opens the file while the first holds it (busy_timeout is 5 s, so hold 9 s)
for s in redb sqlite-full sqlite-full-excl; do $B hold $s lock-$s.db 9 & sleep 1; $B tryopen $s lock-$s.db; wait; done; rm -f lock-*
# 6: full disk (8 MiB ext4 on a loop device, 512 KiB ballast file to free afterwards)
for s in redb sqlite-full sqlite-normal sqlite-full-excl; do umount /mnt/tiny 2>/dev/null; rm -f /tmp/tiny.img; truncate -s 8M /tmp/tiny.img
  mkfs.ext4 -q /tmp/tiny.img; mkdir -p /mnt/tiny; mount -o loop /tmp/tiny.img /mnt/tiny; head -c 524288 /dev/urandom > /mnt/tiny/ballast
  echo "=== $s"; $B fill $s /mnt/tiny/fill.db /mnt/tiny/ballast; echo "exit=$?"; done; umount /mnt/tiny
# read-only: `mount -o remount,ro` (as root) and a 0555 directory (as user nobody) -- see results-readonly.txt
# 5: build cost: cd build-redb (or build-sqlite) && cargo clean && time cargo build --release --offline
python3 "$S/summarize.py" /tmp/storebench-results-bench.txt
