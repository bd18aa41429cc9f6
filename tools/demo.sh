#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# tools/demo.sh ANNANN_BINARY: the main job. Generates a data set in the
# realistic profile (`gen --profile real`: SIFT-like descriptors that barely
# compress, queries from a shifted distribution), computes exact ground
# truth, builds a disk index with the build's defaults (docs/DESIGN.md
# "Defaults": for this 128-d u8 set 2-bit RaBitQ codes read first, exact rows
# re-ranked by page, k-means router, as many partitions as the RAM and disk
# budgets allow: 7900 for the 1M set; learned adaptive probing fitted on
# synthetic queries, so nprobe is the mean budget) under a memory
# budget, and searches it from cold storage (O_DIRECT, no cache) over an
# nprobe sweep, printing recall@10 against bytes read and latency, so the
# table shows what the defaults cost. Then adaptive probing refitted on a
# "log": 2000 more queries of the same shifted distribution (the generator's
# next ones) with their ground truth (`annann tune`), and the same sweep
# runs again.
# Environment: DEMO_N (base vectors, default 1000000), DEMO_DIR (default
# data/demo), DEMO_PARTS (default: the build's), DEMO_MEM (default 1G).
set -euo pipefail
ANN=${1:-build/tools/annann}
N=${DEMO_N:-1000000}
DIR=${DEMO_DIR:-data/demo}
PARTS=${DEMO_PARTS:-}
MEM=${DEMO_MEM:-1G}
mkdir -p "$DIR"
base="$DIR/real-base-$N.u8bin"
query="$DIR/real-query-$N.u8bin"
gt="$DIR/real-gt100-$N.bin"
index="$DIR/real-index-$N${PARTS:+-$PARTS}"

if [ ! -f "$base" ] || [ ! -f "$query" ]; then
	echo "== generating $N realistic SIFT-like vectors (128-d, u8) and 1000 shifted queries"
	"$ANN" gen --profile real --n "$N" --queries 1000 --seed 1 --out "$base" --queries-out "$query"
fi
if [ ! -f "$gt" ]; then
	echo "== exact ground truth (top-100)"
	"$ANN" gt --base "$base" --queries "$query" --k 100 --out "$gt"
fi
rm -rf "$index"
echo "== building the index with the defaults (the first line says what they chose), memory budget $MEM"
"$ANN" build --data "$base" --index "$index" --mem "$MEM" ${PARTS:+--partitions "$PARTS"}
"$ANN" info --index "$index"
echo "== searching from disk (O_DIRECT, no cache), one query at a time; the default nprobe first"
"$ANN" search --index "$index" --queries "$query" --gt "$gt" --k 10 --batch 1
# The sweep around the default (1 partition in 40): 1/8 of it to 1.5x, so
# that it crosses recall 0.9 whatever partition count the defaults chose.
dn=$("$ANN" info --index "$index" --json | /usr/bin/python3 -c 'import json, sys; print(json.load(sys.stdin)["default_nprobe"])')
sweep=$(/usr/bin/python3 -c "import sys; d = int(sys.argv[1]); print(','.join(str(p) for p in sorted({max(1, d * m // 8) for m in (1, 2, 4, 5, 6, 8, 12)})))" "$dn")
"$ANN" search --index "$index" --queries "$query" --gt "$gt" --k 10 --batch 1 --nprobe "$sweep"

# The same sweep drawn by the Python explorer when the package (built by
# meson into BUILD/python) and matplotlib are present. DEMO_PEERS: JSON
# lines of other systems to put on the same axes (bench/results/).
BUILD=$(dirname "$(dirname "$ANN")")
if PYTHONPATH="$BUILD/python" /usr/bin/python3 -c 'import annann, matplotlib' 2>/dev/null; then
	echo "== plotting recall@10 against bytes/query and p50 latency: $DIR/curve-$N.png"
	# shellcheck disable=SC2086
	PYTHONPATH="$BUILD/python" /usr/bin/python3 -m annann.explore --index "$index" --queries "$query" \
		--gt "$gt" --nprobe "$sweep" --out "$DIR/curve-$N.png" ${DEMO_PEERS:+--peers $DEMO_PEERS}
else
	echo "== (no plot: the annann Python package or python3-matplotlib is missing)"
fi

tuneq="$DIR/real-tune-query-$N.u8bin"
tunegt="$DIR/real-tune-gt100-$N.bin"
if [ ! -f "$tuneq" ]; then
	echo "== 2000 more shifted queries to tune on (the generator's queries 1000-2999; the searched ones are 0-999)"
	"$ANN" gen --profile real --n "$N" --queries 3000 --seed 1 --out "$DIR/.tune-base.u8bin" \
		--queries-out "$DIR/.tune-q3k.u8bin" --quiet
	rm -f "$DIR/.tune-base.u8bin"
	/usr/bin/python3 - "$DIR/.tune-q3k.u8bin" "$tuneq.tmp" <<'PY'
import struct, sys
with open(sys.argv[1], "rb") as f:
    n, d = struct.unpack("<II", f.read(8))
    f.seek(8 + 1000 * d)
    rows = f.read((n - 1000) * d)
with open(sys.argv[2], "wb") as f:
    f.write(struct.pack("<II", n - 1000, d))
    f.write(rows)
PY
	mv "$tuneq.tmp" "$tuneq"
	rm -f "$DIR/.tune-q3k.u8bin"
fi
[ -f "$tunegt" ] || "$ANN" gt --base "$base" --queries "$tuneq" --k 10 --out "$tunegt"
echo "== learned adaptive probing refitted: annann tune on those 2000 queries, then the same sweep (nprobe = the mean budget)"
"$ANN" tune --index "$index" --queries "$tuneq" --gt "$tunegt"
"$ANN" search --index "$index" --queries "$query" --gt "$gt" --k 10 --batch 1 --nprobe "$sweep"
