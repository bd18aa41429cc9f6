#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# bench/peers.sh: annann side by side with its peers on one dataset, in one run: FAISS IVF-Flat
# (AVX2 peer binary for speed, python3-faiss for recall and candidates), SPANN (Debian sptag),
# DiskANN (../shared/peers/diskann), the storage limit (fio) and the ground truth against FAISS
# IndexFlatL2. Steps run one at a time (the machine is shared); each writes JSON lines under
# WORK/out/, and the report step turns them into bench/results/<name>-<date>.{md,jsonl}.
#
#   bench/peers.sh DATASET_DIR [--parts M] [--nprobes 1,2,4,...] [--only annann,faiss,sptag,diskann,gt,fio]
#                  [--name NAME] [--reps R] [--annann BIN] [--variant NAME:BUILD_ARGS]...
#                  [--spann-sweep 1,2,4,...] [--diskann-L 10,20,...] [--work DIR] [--rebuild] [--no-report]
#
# DATASET_DIR holds base.u8bin (or base.fbin), query.u8bin (or query.fbin) and gt100.bin (big-ann
# ground truth from `annann gt`); base.fbin, query.fbin and gt100.ivecs, which FAISS wants, are
# made here when missing. Indexes are kept in WORK (default DATASET_DIR/peers-work) and reused by
# later runs unless --rebuild.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PY=/usr/bin/python3
PEERS=${PEERS_DIR:-$(cd "$ROOT/.." && pwd)/shared/peers}

usage() { sed -n '9,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

[ $# -ge 1 ] || usage
DIR=$(cd "$1" && pwd); shift
PARTS=""
NPROBES=1,2,4,8,16,32,64
ONLY=fio,gt,annann,faiss,sptag,diskann
NAME=$(basename "$DIR")
REPS=3
ANNANN=${ANNANN:-$ROOT/build/tools/annann}
VARIANTS=("annann:")
SPANN_SWEEP=1,2,4,8,16,32,64
DISKANN_L=10,15,20,30,50,75,100
WORK=""
REBUILD=""
REPORT=1
while [ $# -gt 0 ]; do
	case "$1" in
	--parts) PARTS=$2; shift 2 ;;
	--nprobes) NPROBES=$2; shift 2 ;;
	--only) ONLY=$2; shift 2 ;;
	--name) NAME=$2; shift 2 ;;
	--reps) REPS=$2; shift 2 ;;
	--annann) ANNANN=$2; shift 2 ;;
	--variant) VARIANTS+=("$2"); shift 2 ;;
	--spann-sweep) SPANN_SWEEP=$2; shift 2 ;;
	--diskann-L) DISKANN_L=$2; shift 2 ;;
	--work) WORK=$2; shift 2 ;;
	--rebuild) REBUILD=--rebuild; shift ;;
	--no-report) REPORT=""; shift ;;
	-h|--help) usage ;;
	*) echo "peers.sh: unknown option $1" >&2; usage ;;
	esac
done
WORK=${WORK:-$DIR/peers-work}
mkdir -p "$WORK/out"
WORK=$(cd "$WORK" && pwd)
ANNANN=$(readlink -f "$ANNANN")
[ -x "$ANNANN" ] || { echo "peers.sh: no annann binary at $ANNANN (use --annann or ANNANN=)" >&2; exit 1; }
has() { case ",$ONLY," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
say() { echo "[peers $(date +%H:%M:%S)] $*" >&2; }

base=""; query=""
for e in u8bin i8bin fbin; do
	[ -z "$base" ] && [ -f "$DIR/base.$e" ] && base=$DIR/base.$e
	[ -z "$query" ] && [ -f "$DIR/query.$e" ] && query=$DIR/query.$e
done
[ -n "$base" ] && [ -n "$query" ] || { echo "peers.sh: $DIR needs base.{u8bin,fbin} and query.{u8bin,fbin}" >&2; exit 1; }
n=$($PY -c "import numpy as np; print(int(np.fromfile('$base', dtype='<i4', count=1)[0]))")
[ -n "$PARTS" ] || PARTS=$(( n / 1000 > 1 ? n / 1000 : 1 ))
say "dataset $DIR: base $(basename "$base") ($n vectors), queries $(basename "$query"), $PARTS partitions"

# inputs the peers want
[ -f "$DIR/gt100.bin" ] || { say "gt100.bin"; "$ANNANN" gt --base "$base" --queries "$query" --out "$DIR/gt100.bin" --k 100 --quiet; }
[ -f "$DIR/base.fbin" ] || "$ANNANN" convert --in "$base" --out "$DIR/base.fbin" --quiet
[ -f "$DIR/query.fbin" ] || "$ANNANN" convert --in "$query" --out "$DIR/query.fbin" --quiet
[ -f "$DIR/gt100.ivecs" ] || { say "gt100.ivecs"; "$ANNANN" gt --base "$base" --queries "$query" --out "$DIR/gt100.ivecs" --k 100 --quiet; }

cd "$HERE/peers"
step() { # NAME CMD...: runs one step, its rows replace the previous ones of that name
	local name=$1; shift
	: > "$WORK/out/$name.jsonl"
	say "== $name"
	"$@" --out "$WORK/out/$name.jsonl" || { say "step $name FAILED (exit $?); see $WORK/*/log.txt"; return 0; }
}
has fio && step fio $PY fio_limit.py --work "$WORK"
has gt && step gt $PY gt_vs_faiss.py --dir "$DIR" --work "$WORK" --annann "$ANNANN" --reps "$REPS"
if has annann; then
	for v in "${VARIANTS[@]}"; do
		vname=${v%%:*}; vargs=${v#*:}
		[ "$vname" = annann ] || vname=annann-$vname
		step "$vname" $PY annann_run.py --dir "$DIR" --work "$WORK" --annann "$ANNANN" --parts "$PARTS" \
			--nprobes "$NPROBES" --reps "$REPS" --variant "$vname" --build-args "$vargs" $REBUILD
	done
fi
has faiss && step faiss $PY faiss_ivf.py --dir "$DIR" --work "$WORK" --parts "$PARTS" --nprobes "$NPROBES" \
	--reps "$REPS" --faiss-bin "$PEERS/faiss_ivf"
has sptag && step spann $PY spann.py --dir "$DIR" --work "$WORK" --sweep "$SPANN_SWEEP" --reps "$REPS" $REBUILD
has diskann && step diskann $PY diskann.py --dir "$DIR" --work "$WORK" --bin "$PEERS/diskann" --sweep "$DISKANN_L" \
	--reps "$REPS" $REBUILD
if [ -n "$REPORT" ]; then
	$PY report.py --work "$WORK" --name "$NAME" --results "$ROOT/bench/results" --dataset "$DIR" \
		--command "bench/peers.sh $DIR --parts $PARTS --nprobes $NPROBES --reps $REPS"
fi
