#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# bench/routers_compare.sh: issue 6's comparison of the routers
# (docs/ROUTER_NLSH.md): candidates scanned and bytes read per query that
# kmeans, nlsh, joint, soft and annann need for recall@10 = 0.85 / 0.90 /
# 0.95 at the same number of parts.
#   bench/routers_compare.sh SET PARTS [ROUTERS]
#     SET      syn1m (1M x 128 u8), real1m (1M x 128 u8, `gen --profile real`,
#              its 2,000-query subset) or fmnist (60000 x 784 u8)
#     PARTS    number of parts (16, 256, 1024 ...)
#     ROUTERS  default "kmeans nlsh joint soft annann"; an entry LABEL=ROUTER
#              builds ROUTER under the name LABEL (with EXTRA_LABEL), so two
#              configurations of one router can be compared
# Every router is built from the same file with the same --sample and
# --seed, one after the other, then searched with k = 10, one query at a
# time (--batch 1: with larger batches a partition read once serves every
# query of the batch that probes it, so bytes per query would depend on the
# batch), one thread, OPENBLAS_NUM_THREADS=1 (the classifiers' single-row
# inference is much slower with OpenBLAS threads on a loaded machine; it
# does not change candidates or bytes), an nprobe sweep that stops once
# recall@10 >= STOP (one `annann search` per setting). Build wall time comes from `build --json`,
# router RAM from `info --json`; for nlsh/joint/soft the training history
# (cut, balance, accuracy, labels changed per round) is read from the
# index's router blob by bench/plot_routers.py history.
# Environment:
#   ANNANN    annann binary (default build/tools/annann)
#   BENCH_DIR indexes and logs (default data/routers); indexes are deleted
#             after their sweep unless KEEP=1
#   NQ        queries (the first NQ of the set's 10k; default 1000)
#   SAMPLE    training sample (default: 60000 for fmnist, max(65536, 128 PARTS) for syn1m)
#   EPOCHS    nlsh/joint/soft classifier epochs (default 20, the build default)
#   STOP      sweep stops at this recall (default 0.96)
#   PROBES    nprobe sweep (default depends on PARTS)
#   REUSE=1   search an existing index instead of building (no build record)
#   QSETS     query sets each index is swept with, "NAME=QUERIES,GT;NAME=..."
#             (default "plain=" the set's own queries and ground truth); the
#             search records carry "queries": NAME (issue 12 item 5: plain and
#             shifted queries against the same index)
#   RESULTS   output file (default bench/results/routers_<SET>_<PARTS>.jsonl)
#   EXTRA_<router>  extra build arguments for one router, e.g. EXTRA_joint="--rounds 8"
# Output: bench/results/routers_<SET>_<PARTS>.jsonl: one {"kind":"build"...}
# object per router, then one search object per setting (the `search --json`
# fields plus "set", "router", "parts"); the history objects
# {"kind":"history"...}. bench/plot_routers.py makes the plot and tables.
set -euo pipefail
SET=${1:?usage: routers_compare.sh SET PARTS [ROUTERS]}
M=${2:?usage: routers_compare.sh SET PARTS [ROUTERS]}
ROUTERS=${3:-"kmeans nlsh joint soft annann"}
A=${ANNANN:-build/tools/annann}
D=${BENCH_DIR:-data/routers}
NQ=${NQ:-1000}
EPOCHS=${EPOCHS:-20}
STOP=${STOP:-0.96}
# LEGACY: build flags of every router (default "--codes none --balance 0": format 1 blocks, no
# size cap, the configuration of the recorded figures, from before issue 12's defaults;
# LEGACY= measures today's defaults)
LEGACY=${LEGACY-"--codes none --balance 0"}
PY=${PYTHON:-/usr/bin/python3}
HERE=$(cd "$(dirname "$0")" && pwd)
case "$SET" in
syn1m)
	BASE=/work/data/syn1m/base.u8bin QUERIES=/work/data/syn1m/query.u8bin GT=/work/data/syn1m/gt100.bin
	SAMPLE=${SAMPLE:-$((M * 128 > 65536 ? M * 128 : 65536))}
	;;
real1m)
	BASE=/work/data/real1m/base.u8bin QUERIES=/work/data/peers/real1m-q2k/query.u8bin
	GT=/work/data/peers/real1m-q2k/gt100.bin
	SAMPLE=${SAMPLE:-$((M * 128 > 65536 ? M * 128 : 65536))}
	;;
fmnist)
	BASE=/work/data/fmnist/base.u8bin QUERIES=/work/data/fmnist/query.u8bin GT=/work/data/fmnist/gt100.bin
	SAMPLE=${SAMPLE:-60000}
	;;
*)
	echo "unknown set $SET (syn1m, real1m, fmnist)" >&2
	exit 2
	;;
esac
if [ -z "${PROBES:-}" ]; then
	if [ "$M" -le 16 ]; then
		PROBES=$(seq -s, 1 "$M")
	elif [ "$M" -le 256 ]; then
		PROBES=1,2,3,4,5,6,7,8,10,12,14,16,20,24,28,32,40,48,56,64,80,96,128
	else
		PROBES=1,2,3,4,5,6,7,8,10,12,14,16,20,24,28,32,40,48,56,64,80,96,128,160,192,256,320,384,512
	fi
fi
OUT=${RESULTS:-$HERE/results/routers_${SET}_${M}.jsonl}
QSETS=${QSETS:-plain=$QUERIES,$GT}
mkdir -p "$D" "$HERE/results"

sweep() { # sweep ROUTER INDEX: appends one search record per query set and nprobe
	local P line rec qs qname qf gf
	IFS=';' read -ra qs <<<"$QSETS"
	for qs1 in "${qs[@]}"; do
		qname=${qs1%%=*} qf=${qs1#*=}
		gf=${qf#*,} qf=${qf%%,*}
		for P in ${PROBES//,/ }; do
			[ "$P" -le "$M" ] || break
			line=$(OPENBLAS_NUM_THREADS=1 "$A" search --index "$2" --queries "$qf" --gt "$gf" --limit "$NQ" \
				--k 10 --nprobe "$P" --batch 1 --json | tail -1)
			echo "$line" | "$PY" -c '
import json, sys
o = json.loads(sys.stdin.read())
o.update(kind="search", set=sys.argv[1], parts=int(sys.argv[2]), router=sys.argv[3], queries=sys.argv[4])
print(json.dumps(o))' "$SET" "$M" "$1" "$qname" >>"$OUT"
			rec=$(echo "$line" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["recall_at_k"])')
			echo "  $1 $qname nprobe $P recall $rec (load $(cut -d' ' -f1 /proc/loadavg))" >&2
			if "$PY" -c 'import sys; sys.exit(0 if float(sys.argv[1]) >= float(sys.argv[2]) else 1)' "$rec" "$STOP"; then
				break
			fi
		done
	done
}

for RL in $ROUTERS; do
	L=${RL%%=*} R=${RL#*=}
	IDX=$D/${SET}_${M}_$L
	LOG=$D/${SET}_${M}_$L.build.log
	if [ "${REUSE:-0}" = 1 ] && [ -d "$IDX" ]; then
		sweep "$L" "$IDX"
		continue
	fi
	rm -rf "$IDX"
	extra_var=EXTRA_$L
	extra=${!extra_var:-}
	case "$R" in
	kmeans) args="--router kmeans --partitions $M" ;;
	annann) args="--router annann --clusters $M" ;;
	nlsh | joint | soft) args="--router $R --partitions $M --epochs $EPOCHS" ;;
	*)
		echo "unknown router $R" >&2
		exit 2
		;;
	esac
	# shellcheck disable=SC2086
	cmd="$A build --data $BASE --index $IDX $args $LEGACY --sample $SAMPLE --seed 1 --threads 2 $extra --json"
	echo "[$(date +%T)] $cmd   (load: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
	# shellcheck disable=SC2086
	bj=$($cmd 2>"$LOG" | tail -1)
	secs=$(echo "$bj" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["seconds"])')
	info=$("$A" info --index "$IDX" --json)
	"$PY" - "$SET" "$M" "$L" "$secs" "$SAMPLE" "$cmd" "$(cut -d' ' -f1 /proc/loadavg)" "$info" "$LOG" >>"$OUT" <<'EOF'
import json, re, sys
s, m, r, secs, sample, cmd, load, info, log = sys.argv[1:]
i = json.loads(info)
phases = {}
for line in open(log, errors="replace"):
    g = re.match(r"(\S+): done in ([0-9.]+)s", line)
    if g:
        phases[g.group(1)] = phases.get(g.group(1), 0) + float(g.group(2))
print(json.dumps({"kind": "build", "set": s, "parts": int(m), "router": r, "build_s": float(secs), "phases_s": phases,
                  "sample": int(sample), "cmd": cmd, "load1": float(load),
                  "router_ram_bytes": i["router_ram_bytes"], "largest_partition": i["largest_partition"],
                  "smallest_partition": i["smallest_partition"]}))
EOF
	case "$R" in
	nlsh | joint | soft)
		"$PY" "$HERE/plot_routers.py" history "$IDX" --jsonl --set "$SET" --parts "$M" --router "$L" >>"$OUT" ||
			echo "history of $IDX not readable" >&2
		;;
	esac
	sweep "$L" "$IDX"
	[ "${KEEP:-0}" = 1 ] || rm -rf "$IDX"
done
