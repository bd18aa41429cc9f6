#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# tools/demo.sh ANNANN_BINARY: the main job. Generates a SIFT-like data set,
# computes exact ground truth, builds a disk index with the k-means router
# under a memory budget, and searches it from cold storage (O_DIRECT, no
# cache) over an nprobe sweep, printing recall@10 against bytes read and
# latency. Environment: DEMO_N (base vectors, default 1000000), DEMO_DIR
# (default data/demo), DEMO_PARTS (default DEMO_N/1000), DEMO_MEM (default 1G).
set -euo pipefail
ANN=${1:-build/tools/annann}
N=${DEMO_N:-1000000}
DIR=${DEMO_DIR:-data/demo}
PARTS=${DEMO_PARTS:-$(( N / 1000 > 1 ? N / 1000 : 1 ))}
MEM=${DEMO_MEM:-1G}
mkdir -p "$DIR"
base="$DIR/base-$N.u8bin"
query="$DIR/query-$N.u8bin"
gt="$DIR/gt100-$N.bin"
index="$DIR/index-$N-$PARTS"

if [ ! -f "$base" ] || [ ! -f "$query" ]; then
	echo "== generating $N SIFT-like vectors (128-d, u8) and 1000 queries"
	"$ANN" gen --n "$N" --queries 1000 --seed 1 --out "$base" --queries-out "$query"
fi
if [ ! -f "$gt" ]; then
	echo "== exact ground truth (top-100)"
	"$ANN" gt --base "$base" --queries "$query" --k 100 --out "$gt"
fi
rm -rf "$index"
echo "== building the index: $PARTS partitions, k-means router, memory budget $MEM"
"$ANN" build --data "$base" --index "$index" --partitions "$PARTS" --mem "$MEM"
"$ANN" info --index "$index"
echo "== searching from disk (O_DIRECT, no cache), one query at a time"
"$ANN" search --index "$index" --queries "$query" --gt "$gt" --k 10 --batch 1 \
	--nprobe 1,2,4,8,16,32,64

# The same sweep drawn by the Python explorer when the package (built by
# meson into BUILD/python) and matplotlib are present. DEMO_PEERS: JSON
# lines of other systems to put on the same axes (bench/results/).
BUILD=$(dirname "$(dirname "$ANN")")
if PYTHONPATH="$BUILD/python" /usr/bin/python3 -c 'import annann, matplotlib' 2>/dev/null; then
	echo "== plotting recall@10 against bytes/query and p50 latency: $DIR/curve-$N.png"
	# shellcheck disable=SC2086
	PYTHONPATH="$BUILD/python" /usr/bin/python3 -m annann.explore --index "$index" --queries "$query" \
		--gt "$gt" --out "$DIR/curve-$N.png" ${DEMO_PEERS:+--peers $DEMO_PEERS}
else
	echo "== (no plot: the annann Python package or python3-matplotlib is missing)"
fi
