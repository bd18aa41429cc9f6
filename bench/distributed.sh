#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# bench/distributed.sh: the distributed build and search (issue 15 item 3)
# at R = 1, 2, 4 ranks on this machine, against the single-node tool.
#   bench/distributed.sh [N] [RANKS]    (default N=500000, RANKS="1 2 4")
# Data: `annann gen --profile real` N x 128 u8 and 1000 queries, exact
# ground truth. For each R: `mpirun -np R annann build --distributed`
# (times per phase, slowest rank; seconds inside MPI; bytes shuffled), then
# `mpirun -np R annann search --distributed` at nprobe NPROBE with batch 1
# (latency) and batch 100 (throughput). The single-node build and search of
# the same data are the baseline (single row). Every rank gets --mem MEM.
# Output: markdown table on stdout, JSON lines in
# bench/results/distributed-<N>.jsonl. Ranks beyond the cores are
# oversubscribed (--oversubscribe): see docs/BENCHMARKS.md for what one
# machine can and cannot show.
set -euo pipefail
N=${1:-500000}
RANKS=${2:-"1 2 4"}
A=${ANNANN:-build/tools/annann}
D=${BENCH_DIR:-data/bench-dist}
NPROBE=${NPROBE:-16}
MEM=${MEM:-512M}
PARTS=$((N / 1000))
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
export OMPI_MCA_btl=self,vader OMPI_MCA_btl_vader_single_copy_mechanism=none
mkdir -p "$D" bench/results
out=bench/results/distributed-$N.jsonl
: >"$out"
[ -f "$D/base.u8bin" ] || "$A" gen --n "$N" --queries 1000 --seed 5 --profile real --out "$D/base.u8bin" \
	--queries-out "$D/query.u8bin" --quiet
[ -f "$D/gt.bin" ] || "$A" gt --base "$D/base.u8bin" --queries "$D/query.u8bin" --k 10 --out "$D/gt.bin" >/dev/null
now() { date +%s.%N; }
row() { # name ranks build_json search1_json search100_json
	python3 - "$@" <<'PY' | tee -a "$out"
import json, sys
name, ranks, b, s1, s100 = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4]), json.loads(sys.argv[5])
print(json.dumps({"setup": name, "ranks": ranks, "build": b, "search_batch1": s1, "search_batch100": s100}))
PY
}
# single-node baseline
rm -rf "$D/single"
t0=$(now)
"$A" build --data "$D/base.u8bin" --index "$D/single" --partitions "$PARTS" --mem "$MEM" --threads 1 --quiet >/dev/null
t1=$(now)
b=$(python3 -c "print('{\"seconds\": %.2f}' % ($t1 - $t0))")
s1=$("$A" search --index "$D/single" --queries "$D/query.u8bin" --gt "$D/gt.bin" --nprobe "$NPROBE" --json)
s100=$("$A" search --index "$D/single" --queries "$D/query.u8bin" --gt "$D/gt.bin" --nprobe "$NPROBE" --batch 100 --json)
row single 0 "$b" "$s1" "$s100" >/dev/null
for R in $RANKS; do
	rm -rf "$D/dist$R"
	t0=$(now)
	b=$(mpirun --oversubscribe -np "$R" "$A" build --distributed --data "$D/base.u8bin" --index "$D/dist$R" \
		--partitions "$PARTS" --mem "$MEM" --threads 1 --quiet --json)
	t1=$(now)
	b=$(python3 -c "import json,sys; j=json.loads(sys.argv[1]); j['mpirun_seconds']=round($t1-$t0,2); print(json.dumps(j))" "$b")
	s1=$(mpirun --oversubscribe -np "$R" "$A" search --distributed --index "$D/dist$R" --queries "$D/query.u8bin" \
		--gt "$D/gt.bin" --nprobe "$NPROBE" --json)
	s100=$(mpirun --oversubscribe -np "$R" "$A" search --distributed --index "$D/dist$R" --queries "$D/query.u8bin" \
		--gt "$D/gt.bin" --nprobe "$NPROBE" --batch 100 --json)
	row "distributed" "$R" "$b" "$s1" "$s100" >/dev/null
done
python3 - "$out" "$N" "$NPROBE" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("N = %s, 128-d u8 (gen --profile real), nprobe %s, k 10, 1000 queries\n" % (sys.argv[2], sys.argv[3]))
print("| setup | build s | sample / kmeans / router / shuffle / pack s (slowest rank) | in MPI s | shuffled MiB | recall@10 | KB/query | p50 ms (batch 1) | p99 ms | QPS batch 1 | QPS batch 100 |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for r in rows:
    b, s1, s100 = r["build"], r["search_batch1"], r["search_batch100"]
    ph = b.get("phase_seconds_max_over_ranks")
    name = "single node" if r["setup"] == "single" else "R = %d" % r["ranks"]
    print("| %s | %.1f | %s | %s | %s | %.4f | %.1f | %.3f | %.3f | %.0f | %.0f |" % (
        name, b.get("seconds", 0),
        "%.1f / %.1f / %.1f / %.1f / %.1f" % (ph["sample"], ph["kmeans"], ph["router"], ph["shuffle"], ph["pack"]) if ph else "-",
        "%.1f" % ph["in_mpi"] if ph else "-",
        "%.1f" % (b["shuffle_bytes_to_other_ranks"] / 1048576) if ph else "-",
        s1["recall_at_k"], s1["bytes_read"] / 1024, s1["latency_us"]["p50"] / 1e3, s1["latency_us"]["p99"] / 1e3,
        s1["qps"], s100["qps"]))
PY
