#!/bin/sh
# SPDX-License-Identifier: MIT
# fio_compare.sh: random O_DIRECT reads of the same file by fio (ioengine=io_uring,
# direct=1, rw=randread) and by bench_io (the library's io reader), same block size
# and queue depth, runs interleaved so drift hits both; prints bench_io's bandwidth
# as a percentage of fio's (medians). Target: >= 90%.
#
#   bench/fio_compare.sh [BENCH_IO] [FILE] [SIZE_GIB]
#   env: SECONDS_PER_RUN (default 5), RUNS (default 3),
#        CONFIGS (default "4096:64 32768:16 65536:16 65536:32", bs:qd pairs)
set -eu

BENCH=${1:-build/bench/bench_io}
FILE=${2:-/tmp/annann-bench-io/blocks.bin}
SIZE_GIB=${3:-2}
SECS=${SECONDS_PER_RUN:-5}
RUNS=${RUNS:-3}
CONFIGS=${CONFIGS:-"4096:64 32768:16 65536:16 65536:32"}

command -v fio >/dev/null || { echo "fio not installed" >&2; exit 77; }
command -v jq >/dev/null || { echo "jq not installed" >&2; exit 77; }
[ -x "$BENCH" ] || { echo "bench_io not found at $BENCH (ninja -C build first)" >&2; exit 2; }

# bench_io creates the file (O_DIRECT writes of random bytes) if missing.
"$BENCH" --file "$FILE" --size-gib "$SIZE_GIB" --bs 65536 --qd 1 --seconds 0.1 --runs 1 --path uring >/dev/null
SIZE=$(stat -c %s "$FILE")

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "file $FILE ($(df -T "$FILE" | awk 'NR==2 {print $2}'), $SIZE bytes; kernel $(uname -r); fio $(fio --version)"
echo "$SECS s per run, $RUNS runs each, interleaved; MB/s = 1e6 bytes/s"
printf '%8s %4s %12s %12s %10s %10s %8s\n' bs qd "fio MB/s" "annann MB/s" "fio IOPS" "ann IOPS" "ann/fio"
for cfg in $CONFIGS; do
	bs=${cfg%%:*}
	qd=${cfg##*:}
	fio_bw=""
	ann_bw=""
	fio_iops=""
	ann_iops=""
	i=0
	while [ "$i" -lt "$RUNS" ]; do
		out=$(fio --name=randread --filename="$FILE" --size="$SIZE" --ioengine=io_uring --direct=1 \
			--rw=randread --bs="$bs" --iodepth="$qd" --runtime="$SECS" --time_based \
			--randrepeat=0 --norandommap --output-format=json 2>/dev/null)
		fio_bw="$fio_bw $(echo "$out" | jq '.jobs[0].read.bw_bytes / 1e6')"
		fio_iops="$fio_iops $(echo "$out" | jq '.jobs[0].read.iops')"
		out=$("$BENCH" --file "$FILE" --size-gib "$SIZE_GIB" --bs "$bs" --qd "$qd" --seconds "$SECS" \
			--runs 1 --path uring --seed "$((i + 1))" --json)
		ann_bw="$ann_bw $(echo "$out" | jq '.results[0].mbps')"
		ann_iops="$ann_iops $(echo "$out" | jq '.results[0].iops')"
		i=$((i + 1))
	done
	f=$(echo "$fio_bw" | tr ' ' '\n' | grep . | median)
	a=$(echo "$ann_bw" | tr ' ' '\n' | grep . | median)
	fi=$(echo "$fio_iops" | tr ' ' '\n' | grep . | median)
	ai=$(echo "$ann_iops" | tr ' ' '\n' | grep . | median)
	printf '%8s %4s %12.1f %12.1f %10.0f %10.0f %7.1f%%   (fio:%s | annann:%s)\n' "$bs" "$qd" "$f" "$a" "$fi" "$ai" \
		"$(echo "$a $f" | awk '{print 100 * $1 / $2}')" "$fio_bw" "$ann_bw"
done
