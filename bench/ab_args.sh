#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Paired cold A/B of two search settings on one index and one binary (bench/ab_search.py
# compares two binaries): runs `annann search --json` with ARGS_A and ARGS_B alternately, REPS
# times each (so machine noise hits both alike), and prints per
# setting its p50s sorted (the median is the middle one), bytes read per query, recall@10 and
# read waves per query (the last run's).
#   bench/ab_args.sh REPS INDEX QDIR "ARGS_A" "ARGS_B"
# QDIR holds query.u8bin and gt100.bin; ANNANN (default build/tools/annann) is the binary.
# Example (docs/BENCHMARKS.md "Fast scan and the router's top-n"):
#   bench/ab_args.sh 7 $W/ph /work/data/peers/sift-q2k "--nprobe 24 --rerank-phases 2" \
#     "--nprobe 24 --rerank-phases 1"
set -euo pipefail
if [ $# -ne 5 ]; then
	echo "usage: $0 REPS INDEX QDIR ARGS_A ARGS_B" >&2
	exit 2
fi
reps=$1 idx=$2 qdir=$3
A=${ANNANN:-build/tools/annann}
for r in $(seq "$reps"); do
	for s in A B; do
		if [ $s = A ]; then args=$4; else args=$5; fi
		# shellcheck disable=SC2086
		"$A" search --index "$idx" --queries "$qdir/query.u8bin" --gt "$qdir/gt100.bin" $args --json 2>/dev/null |
			python3 -c "
import sys, json
j = json.loads(sys.stdin.read().strip().splitlines()[-1])
c = j.get('codes', {})
print('$s', j['latency_us']['p50'], j['bytes_read'], j['recall_at_k'], c.get('read_waves', 0))"
	done
done | python3 -c "
import sys
rows = {}
for l in sys.stdin:
    s, p50, b, rec, w = l.split()
    rows.setdefault(s, []).append((float(p50), float(b), rec, float(w)))
for s in sorted(rows):
    r = rows[s]
    p = sorted(x[0] for x in r)
    print('%s: p50 us %s (median %.0f); bytes %.0f; recall %s; waves %.3f' % (s, ' '.join('%.0f' % v for v in p),
          p[len(p) // 2], r[-1][1], r[-1][2], r[-1][3]))
"
