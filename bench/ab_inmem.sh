#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Paired in-memory A/B of two annann binaries on one index: `annann search --cache 4G --warmup
# --batch B --threads 1` with BIN_A and BIN_B alternately, REPS times each, and per binary its
# QPS sorted (the median is the middle one).
#   bench/ab_inmem.sh REPS INDEX NPROBE BIN_A BIN_B
# Q (default /work/data/fmnist) holds query.u8bin and gt100.bin; BATCH defaults to 10000.
# Example (docs/BENCHMARKS.md "Fast scan and the router's top-n"):
#   Q=/work/data/sift-photos bench/ab_inmem.sh 5 $W/newdef 24 old/annann build/tools/annann
set -euo pipefail
if [ $# -ne 5 ]; then
	echo "usage: $0 REPS INDEX NPROBE BIN_A BIN_B" >&2
	exit 2
fi
reps=$1 idx=$2 np=$3 A=$4 B=$5
Q=${Q:-/work/data/fmnist}
for r in $(seq "$reps"); do
	for b in A B; do
		bin=${!b}
		"$bin" search --index "$idx" --queries "$Q/query.u8bin" --gt "$Q/gt100.bin" --k 10 --cache 4G --warmup \
			--threads 1 --batch "${BATCH:-10000}" --nprobe "$np" --json 2>/dev/null |
			python3 -c "import sys, json; j = json.loads(sys.stdin.read()); print('$b', j['qps'])"
	done
done | sort -k1,1 -k2,2n | awk '{a[$1] = a[$1] " " int($2)} END {for (k in a) print k, a[k]}'
