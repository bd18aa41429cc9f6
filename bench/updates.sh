#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# bench/updates.sh: the index absorbing change without a rebuild (issue 7).
#   bench/updates.sh [N] [ROUTERS]     (default N=1000000, ROUTERS="kmeans annann")
# For each router: build on the first 50% of a generated set, insert the
# rest in 10% steps (recall@10 and bytes/query at a fixed nprobe after each
# step), delete 20%, search before and after compaction; then the drift case:
# build on 50% of one mixture, insert vectors drawn from the same mixture
# with shifted components (gen --drift), queries from the shifted mixture.
# Insert throughput is reported by `annann insert --json`. APPEND=1 adds to the results file
# instead of starting it afresh (to rerun one router). Output: markdown
# table on stdout and JSON lines in bench/results/updates-<N>.jsonl.
set -euo pipefail
N=${1:-1000000}
ROUTERS=${2:-"kmeans annann"}
A=${ANNANN:-build/tools/annann}
D=${BENCH_DIR:-data/bench-updates}
NPROBE=${NPROBE:-8}
# LEGACY: build flags (default "--codes none --balance 0": format 1 blocks, no size cap, the
# configuration of the recorded figures, from before issue 12's defaults; LEGACY= measures
# today's defaults)
LEGACY=${LEGACY-"--codes none --balance 0"}
PARTS=$((N / 1000))
mkdir -p "$D" bench/results
out=bench/results/updates-$N.jsonl
[ -n "${APPEND:-}" ] || : >"$out" # APPEND=1 keeps the rows of other routers
half=$((N / 2))
step=$((N / 10))
q="$D/query.u8bin"
[ -f "$D/base.u8bin" ] || "$A" gen --n "$N" --queries 1000 --seed 11 --out "$D/base.u8bin" --queries-out "$q" --quiet
# drifted inserts and queries: same seed, components shifted
[ -f "$D/drift.u8bin" ] || "$A" gen --n "$N" --queries 1000 --seed 11 --drift 1.0 --out "$D/drift.u8bin" \
	--queries-out "$D/dquery.u8bin" --quiet
"$A" convert --in "$D/base.u8bin" --out "$D/h1.u8bin" --limit "$half" --quiet >/dev/null

gt_for() { # gt_for BASEFILE QUERIES OUT
	"$A" gt --base "$1" --queries "$2" --k 10 --out "$3" --quiet >/dev/null
}
# live base file after a prefix of vectors: ids = positions, so a prefix file is the live set
search() { # search INDEX QUERIES GT LABEL ROUTER
	local j
	j=$("$A" search --index "$1" --queries "$2" --gt "$3" --k 10 --nprobe "$NPROBE" --batch 100 --json)
	python3 - "$4" "$5" "$j" <<'PY' | tee -a "$out" | python3 -c '
import json,sys
for l in sys.stdin:
    d=json.loads(l); print("| %-8s | %-34s | %.4f | %9.1f | %8.0f |" % (d["router"], d["step"], d["recall_at_k"], d["bytes_read"]/1024, d["candidates"]))'
import json, sys
d = json.loads(sys.argv[3]); d["step"] = sys.argv[1]; d["router"] = sys.argv[2]; print(json.dumps(d))
PY
}
echo "| router | step | recall@10 | KB/query | candidates |"
echo "|---|---|---|---|---|"
for R in $ROUTERS; do
	idx="$D/idx-$R"
	rm -rf "$idx"
	"$A" build --data "$D/h1.u8bin" --index "$idx" --router "$R" --partitions "$PARTS" $LEGACY --quiet >/dev/null
	for pct in 50 60 70 80 90 100; do
		n=$((N * pct / 100))
		if [ "$pct" -gt 50 ]; then
			"$A" convert --in "$D/base.u8bin" --out "$D/step.u8bin" --offset $((n - step)) --limit "$step" --quiet >/dev/null
			"$A" insert --index "$idx" --data "$D/step.u8bin" --batch 10000 --json --quiet |
				python3 -c 'import json,sys; d=json.load(sys.stdin); print("| '"$R"' | insert '"$step"': %.0f vectors/s | | | |" % d["vectors_per_second"])'
		fi
		"$A" convert --in "$D/base.u8bin" --out "$D/live.u8bin" --limit "$n" --quiet >/dev/null
		gt_for "$D/live.u8bin" "$q" "$D/gt-live.bin"
		label="grown to ${pct}% by inserts"
		[ "$pct" -gt 50 ] || label="built on 50%"
		search "$idx" "$q" "$D/gt-live.bin" "$label" "$R"
	done
	# delete the last 20% of ids (so the live set is a prefix again)
	python3 - "$D/del.ibin" "$((N * 8 / 10))" "$N" <<'PY'
import struct, sys
a, b = int(sys.argv[2]), int(sys.argv[3])
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<ii", b - a, 1)); f.write(struct.pack("<%di" % (b - a), *range(a, b)))
PY
	"$A" delete --index "$idx" --ids "$D/del.ibin" >/dev/null
	"$A" convert --in "$D/base.u8bin" --out "$D/live.u8bin" --limit $((N * 8 / 10)) --quiet >/dev/null
	gt_for "$D/live.u8bin" "$q" "$D/gt-live.bin"
	search "$idx" "$q" "$D/gt-live.bin" "deleted 20%, not compacted" "$R"
	"$A" compact --index "$idx" >/dev/null
	search "$idx" "$q" "$D/gt-live.bin" "deleted 20%, compacted" "$R"
	rm -rf "$idx"
	"$A" build --data "$D/live.u8bin" --index "$idx" --router "$R" --partitions "$PARTS" $LEGACY --quiet >/dev/null
	search "$idx" "$q" "$D/gt-live.bin" "rebuilt from scratch (reference)" "$R"

	# drift: base half from the original mixture, inserts from the shifted one
	idx="$D/idx-drift-$R"
	rm -rf "$idx"
	"$A" build --data "$D/h1.u8bin" --index "$idx" --router "$R" --partitions "$PARTS" $LEGACY --quiet >/dev/null
	"$A" convert --in "$D/drift.u8bin" --out "$D/d2.u8bin" --offset "$half" --quiet >/dev/null
	"$A" insert --index "$idx" --data "$D/d2.u8bin" --batch 10000 --quiet >/dev/null
	python3 - "$D/h1.u8bin" "$D/d2.u8bin" "$D/mixed.u8bin" <<'PY'
import struct, sys
a = open(sys.argv[1], "rb").read(); b = open(sys.argv[2], "rb").read()
na, d = struct.unpack("<ii", a[:8]); nb, _ = struct.unpack("<ii", b[:8])
open(sys.argv[3], "wb").write(struct.pack("<ii", na + nb, d) + a[8:] + b[8:])
PY
	gt_for "$D/mixed.u8bin" "$D/dquery.u8bin" "$D/gt-mixed.bin"
	search "$idx" "$D/dquery.u8bin" "$D/gt-mixed.bin" "drift: 50% base + 50% shifted inserts" "$R"
	"$A" compact --index "$idx" >/dev/null
	search "$idx" "$D/dquery.u8bin" "$D/gt-mixed.bin" "drift: after compaction (splits)" "$R"
	rm -rf "$idx"
	"$A" build --data "$D/mixed.u8bin" --index "$idx" --router "$R" --partitions "$PARTS" $LEGACY --quiet >/dev/null
	search "$idx" "$D/dquery.u8bin" "$D/gt-mixed.bin" "drift: rebuilt from scratch (reference)" "$R"
done
