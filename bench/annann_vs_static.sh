#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# bench/annann_vs_static.sh: the ANNANN seed's experiment (docs/ROUTER_ANNANN.md).
#   bench/annann_vs_static.sh [SETS]        (default SETS="syn1m fm")
# "dynamic" = the annann router (autoencoder + DEC, HNSW over embedded
# centroids, re-rank by original-space means); "static" = the kmeans router
# with the same K (k-means and HNSW over the centroids in the original
# space). Both are built from the same file and searched with the same C
# sweep (--C = --nprobe), k = 10, one query at a time; recall@10, candidates
# scanned and bytes read per query come from `annann search --json`.
# Sets (the shared data when present, else generated / converted here):
#   syn1m = $SYN_DIR/{base.u8bin,query.u8bin,gt100.bin} (`annann gen --n 1000000
#           --seed 1 --queries 10000`, u8, d 128), else generated with
#           1000 queries;
#   fm    = Fashion-MNIST train (60000 x 784, f32) with t10k queries,
#           $FM_DIR/{base.fbin,query.fbin,gt100.bin}, else converted from $FMSRC.
# The first NQ_SYN / NQ_FM queries are used (`annann convert --limit`); the
# ground truth files hold every query and `annann search` uses their first
# rows, which belong to the same queries.
# Environment:
#   ANNANN      the annann binary (default build/tools/annann)
#   BENCH_DIR   derived data and indexes (default data/bench)
#   SYN_DIR FM_DIR  shared data (default /work/data/syn1m, /work/data/fmnist)
#   CS          C sweep (default 1,2,4,8,16,32,64)
#   K_SYN K_FM  clusters (default 1000 and 300)
#   DYN_ARGS    build arguments of "dynamic" (default none: the defaults)
#   VARIANTS    extra dynamic configurations, "label=build args;label=args..."
#               e.g. VARIANTS="e16=--embed-dim 16;nodec=--dec-epochs 0"
#   FACTORS     candidate factors F for the dynamic router (default "10 1")
#   NQ_SYN NQ_FM  queries used (default 2000 each)
#   LEGACY      build flags of both (default "--codes none --balance 0": format 1
#               blocks and no size cap, the configuration of the figures in
#               docs/ROUTER_ANNANN.md, from before the defaults of issue 12; set
#               LEGACY= to measure today's defaults)
# Output: bench/results/annann_vs_static_<set>.jsonl (one JSON object per
# build and per search setting), the build logs next to the indexes, and
# by bench/plot_annann.py the plot docs/plots/annann_<set>.png and the
# markdown tables bench/results/annann_vs_static_<set>.md.
set -euo pipefail
SETS=${1:-"syn1m fm"}
A=${ANNANN:-build/tools/annann}
D=${BENCH_DIR:-data/bench}
CS=${CS:-1,2,4,8,16,32,64}
LEGACY=${LEGACY-"--codes none --balance 0"}
K_SYN=${K_SYN:-1000}
K_FM=${K_FM:-300}
FACTORS=${FACTORS:-"10 1"}
NQ_FM=${NQ_FM:-2000}
NQ_SYN=${NQ_SYN:-2000}
SYN_DIR=${SYN_DIR:-/work/data/syn1m}
FM_DIR=${FM_DIR:-/work/data/fmnist}
DYN_ARGS=${DYN_ARGS:-}
VARIANTS=${VARIANTS:-}
FMSRC=${FMSRC:-/usr/share/datasets/fashion-mnist}
PY=${PYTHON:-/usr/bin/python3}
mkdir -p "$D" bench/results

prepare() { # prepare SET -> sets BASE QUERIES GT K
	case "$1" in
	syn1m)
		K=$K_SYN
		if [ -f "$SYN_DIR/base.u8bin" ]; then
			BASE=$SYN_DIR/base.u8bin GT=$SYN_DIR/gt100.bin QUERIES=$D/syn1m.q$NQ_SYN.u8bin
			[ -f "$QUERIES" ] || "$A" convert --in "$SYN_DIR/query.u8bin" --out "$QUERIES" --limit "$NQ_SYN" --quiet
		else
			BASE=$D/syn1m.u8bin QUERIES=$D/syn1m.q.u8bin GT=$D/syn1m.gt
			[ -f "$BASE" ] || "$A" gen --n 1000000 --queries "$NQ_SYN" --seed 1 --out "$BASE" \
				--queries-out "$QUERIES" --quiet
		fi
		;;
	fm)
		K=$K_FM
		if [ -f "$FM_DIR/base.fbin" ]; then
			BASE=$FM_DIR/base.fbin GT=$FM_DIR/gt100.bin QUERIES=$D/fm.q$NQ_FM.fbin
			[ -f "$QUERIES" ] || "$A" convert --in "$FM_DIR/query.fbin" --out "$QUERIES" --limit "$NQ_FM" --quiet
		else
			BASE=$D/fm.fbin QUERIES=$D/fm.q.fbin GT=$D/fm.gt
			[ -f "$BASE" ] || "$A" convert --in "$FMSRC/train-images-idx3-ubyte.gz" --out "$BASE" --quiet
			[ -f "$QUERIES" ] || "$A" convert --in "$FMSRC/t10k-images-idx3-ubyte.gz" --out "$QUERIES" \
				--limit "$NQ_FM" --quiet
		fi
		;;
	*)
		echo "unknown set $1 (syn1m, fm)" >&2
		exit 2
		;;
	esac
	[ -f "$GT" ] || "$A" gt --base "$BASE" --queries "$QUERIES" --k 100 --out "$GT" --quiet
}

# build SET LABEL ROUTER ARGS...: builds (once) and appends a build record:
# wall time, the time of each training phase (from the progress lines) and
# the router's RAM (annann info).
build() {
	local set=$1 label=$2 router=$3
	shift 3
	local idx=$D/idx-$set-$label log=$D/idx-$set-$label.log
	if [ ! -d "$idx" ]; then
		local t0 t1
		t0=$(date +%s.%N)
		"$A" build --data "$BASE" --index "$idx" --router "$router" --partitions "$K" $LEGACY "$@" 2>"$log" >/dev/null
		t1=$(date +%s.%N)
		awk -v a="$t0" -v b="$t1" 'BEGIN { printf "wall %.3f\n", b - a }' >>"$log"
	fi
	"$A" info --index "$idx" --json | "$PY" -c '
import json, re, sys
info = json.load(sys.stdin)
set_, label, router, log, args = sys.argv[1:6]
phases = {}
wall = None
for line in open(log):
    m = re.match(r"(\S+): done in ([0-9.]+)s", line)
    if m:
        phases[m.group(1)] = phases.get(m.group(1), 0) + float(m.group(2))
    m = re.match(r"wall ([0-9.]+)", line)
    if m:
        wall = float(m.group(1))
train = sum(v for k, v in phases.items() if k in ("ae", "dec", "kmeans", "kmeans-seed", "hnsw"))
print(json.dumps({"kind": "build", "set": set_, "label": label, "router": router, "args": args,
                  "partitions": info["partitions"], "router_ram_bytes": info["router_ram_bytes"],
                  "largest_partition": info["largest_partition"], "smallest_partition": info["smallest_partition"],
                  "empty_partitions": sum(h["partitions"] for h in info["partition_size_histogram"] if h["max"] == 0),
                  "phases_s": phases, "train_s": train, "build_wall_s": wall}))
' "$set" "$label" "$router" "$log" "$*" >>"$OUT"
}

# sweep SET LABEL F: one JSON line per C.
sweep() {
	local set=$1 label=$2 f=$3
	# one BLAS thread: the encoder's single-row sgemv otherwise goes through
	# OpenBLAS's thread pool, which costs milliseconds per query on a busy machine
	OPENBLAS_NUM_THREADS=1 "$A" search --index "$D/idx-$set-$label" --queries "$QUERIES" --gt "$GT" --k 10 --C "$CS" \
		--candidates-factor "$f" --json | "$PY" -c '
import json, sys
for line in sys.stdin:
    d = json.loads(line)
    d.update({"kind": "search", "set": sys.argv[1], "label": sys.argv[2], "F": int(sys.argv[3])})
    print(json.dumps(d))
' "$set" "$label" "$f" >>"$OUT"
}

for S in $SETS; do
	prepare "$S"
	OUT=bench/results/annann_vs_static_$S.jsonl
	: >"$OUT"
	build "$S" static kmeans
	sweep "$S" static 10
	read -ra dyn <<<"$DYN_ARGS"
	build "$S" dynamic annann ${dyn[@]+"${dyn[@]}"}
	for f in $FACTORS; do
		sweep "$S" dynamic "$f"
	done
	if [ -n "$VARIANTS" ]; then
		IFS=';' read -ra vs <<<"$VARIANTS"
		for v in "${vs[@]}"; do
			label=${v%%=*}
			read -ra args <<<"${v#*=}"
			build "$S" "$label" annann "${args[@]}"
			sweep "$S" "$label" 10
		done
	fi
	mkdir -p docs/plots
	"$PY" bench/plot_annann.py "$OUT" "docs/plots/annann_$S.png" >"bench/results/annann_vs_static_$S.md"
done
