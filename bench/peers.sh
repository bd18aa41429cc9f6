#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# bench/peers.sh: annann side by side with its peers on one dataset, in one run: FAISS IVF-Flat
# (AVX2 peer binary for speed, python3-faiss for recall and candidates), SPANN (Debian sptag),
# DiskANN (../shared/peers/diskann), the storage limit (fio) and the ground truth against FAISS
# IndexFlatL2. Steps run one at a time (the machine is shared); each writes JSON lines under
# WORK/out/, and the report step turns them into bench/results/peers-<name>-<date>.{md,jsonl}.
#
#   bench/peers.sh DATASET_DIR [--parts M[,M2...]] [--nprobes 1,2,4,...] [--only annann,faiss,sptag,diskann,gt,fio]
#                  [--name NAME] [--reps R] [--annann BIN] [--variant NAME:BUILD_ARGS]...
#                  [--spann-sweep 1,2,4,...] [--diskann-L 10,20,...] [--diskann-R R] [--diskann-build-L L]
#                  [--spann-build-maxcheck C] [--cold-limit N] [--faiss-reps R] [--work DIR] [--rebuild] [--no-report]
#
# DATASET_DIR holds base.u8bin (or base.fbin), query.u8bin (or query.fbin) and gt100.bin (big-ann
# ground truth from `annann gt`); it is only read. WORK/in gets links to those files and the
# base.fbin, query.fbin and gt100.ivecs that FAISS wants. Indexes are kept in WORK (default
# /work/data/peers/NAME-work, beside the repository) and reused by later runs unless --rebuild.
# Each value of --parts gives one annann build (variant annann-M) and one FAISS run (nlist M).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PY=/usr/bin/python3
PEERS=${PEERS_DIR:-$(cd "$ROOT/.." && pwd)/shared/peers}

usage() { sed -n '9,13p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

[ $# -ge 1 ] || usage
DIR=$(cd "$1" && pwd); shift
PARTS=""
NPROBES=1,2,4,8,16,32,64
ONLY=fio,annann,faiss,sptag,diskann
NAME=$(basename "$DIR")
REPS=3
ANNANN=${ANNANN:-$ROOT/build/tools/annann}
VARIANTS=("annann:")
SPANN_SWEEP=1,2,4,8,16,32,64
DISKANN_L=10,15,20,30,50,75,100
DISKANN_R=32
DISKANN_BL=64
SPANN_BMC=2048
COLD_LIMIT=1000
FAISS_REPS=1
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
	--diskann-R) DISKANN_R=$2; shift 2 ;;
	--diskann-build-L) DISKANN_BL=$2; shift 2 ;;
	--spann-build-maxcheck) SPANN_BMC=$2; shift 2 ;;
	--cold-limit) COLD_LIMIT=$2; shift 2 ;;
	--faiss-reps) FAISS_REPS=$2; shift 2 ;;
	--work) WORK=$2; shift 2 ;;
	--rebuild) REBUILD=--rebuild; shift ;;
	--no-report) REPORT=""; shift ;;
	-h|--help) usage ;;
	*) echo "peers.sh: unknown option $1" >&2; usage ;;
	esac
done
WORK=${WORK:-$(cd "$ROOT/.." && pwd)/data/peers/$NAME-work}
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
say "dataset $DIR: base $(basename "$base") ($n vectors), queries $(basename "$query"), partitions $PARTS"

# inputs the peers want, in WORK/in (the dataset directory is shared and read-only)
[ -f "$DIR/gt100.bin" ] || { echo "peers.sh: $DIR/gt100.bin missing (annann gt --base ... --k 100)" >&2; exit 1; }
IN=$WORK/in
mkdir -p "$IN"
for f in "$DIR"/base.* "$DIR"/query.* "$DIR"/gt100.*; do
	[ -e "$IN/$(basename "$f")" ] || ln -s "$f" "$IN/$(basename "$f")"
done
[ -e "$IN/base.fbin" ] || "$ANNANN" convert --in "$base" --out "$IN/base.fbin" --quiet
[ -e "$IN/query.fbin" ] || "$ANNANN" convert --in "$query" --out "$IN/query.fbin" --quiet
[ -e "$IN/gt100.ivecs" ] || $PY -c "
import numpy as np
n, k = np.fromfile('$IN/gt100.bin', dtype='<i4', count=2)
ids = np.fromfile('$IN/gt100.bin', dtype='<i4', count=n * k, offset=8).reshape(n, k)
out = np.empty((n, k + 1), dtype='<i4'); out[:, 0] = k; out[:, 1:] = ids; out.tofile('$IN/gt100.ivecs')"
ORIG=$DIR; DIR=$IN

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
	for M in ${PARTS//,/ }; do
		for v in "${VARIANTS[@]}"; do
			vname=${v%%:*}; vargs=${v#*:}
			[ "$vname" = annann ] && vname=annann-$M || vname=annann-$vname-$M
			step "$vname" $PY annann_run.py --dir "$DIR" --work "$WORK" --annann "$ANNANN" --parts "$M" \
				--nprobes "$NPROBES" --reps "$REPS" --cold-limit "$COLD_LIMIT" --variant "$vname" \
				--build-args "$vargs" $REBUILD
		done
	done
fi
if has faiss; then
	for M in ${PARTS//,/ }; do
		step "faiss-$M" $PY faiss_ivf.py --dir "$DIR" --work "$WORK" --parts "$M" --nprobes "$NPROBES" \
			--reps "$FAISS_REPS" --faiss-bin "$PEERS/faiss_ivf"
	done
fi
has sptag && step spann $PY spann.py --dir "$DIR" --work "$WORK" --sweep "$SPANN_SWEEP" --reps "$REPS" \
	--build-maxcheck "$SPANN_BMC" $REBUILD
has diskann && step diskann $PY diskann.py --dir "$DIR" --work "$WORK" --bin "$PEERS/diskann" --sweep "$DISKANN_L" \
	--R "$DISKANN_R" --L "$DISKANN_BL" --limit "$COLD_LIMIT" --reps "$REPS" $REBUILD
if [ -n "$REPORT" ]; then
	$PY report.py --work "$WORK" --name "peers-$NAME" --results "$ROOT/bench/results" --dataset "$ORIG" \
		--command "bench/peers.sh $ORIG --parts $PARTS --nprobes $NPROBES --reps $REPS --only $ONLY"
fi
