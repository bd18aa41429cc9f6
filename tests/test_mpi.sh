#!/usr/bin/env bash
# Description: the distributed build and search under Open MPI
# (`mpirun --oversubscribe -np 3`, as root as CI runs it): the ranks train
# one router together and each stores its own partitions; a search gives
# the recall of a single-node index built from the same data with the same
# router (within 0.01) at the same bytes per query (within 5%), also with
# replicas split across ranks; a distributed index opened by the single-node
# tool (and the reverse, and with the wrong rank count) says what it is; a
# rank that cannot open its part, or that is killed mid-search, makes the
# job stop with a message and a non-zero exit instead of hanging.
set -uo pipefail
A=$1
MPIRUN=$(command -v mpirun) || { echo "mpirun not found: skipped"; exit 77; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
# a container has no network beyond loopback, and no ptrace between ranks for single-copy
export OMPI_MCA_btl=self,vader OMPI_MCA_btl_vader_single_copy_mechanism=none
# Under ASan: Open MPI's own leaks are suppressed, nothing else (tests/lsan_mpi.supp).
export LSAN_OPTIONS="suppressions=$(cd "$(dirname "$0")" && pwd)/lsan_mpi.supp:print_suppressions=0${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}fast_unwind_on_malloc=0"
# Every mpirun runs under a timeout: a hang is a failure, never a stuck test.
mpi() { timeout -k 10 240 "$MPIRUN" --oversubscribe "$@"; }
# expect CODE CMD...: runs CMD, checks its exit status, keeps stderr in $dir/err
expect() {
	local want=$1; shift
	"$@" >"$dir/out" 2>"$dir/err"
	local got=$?
	[ "$got" = "$want" ] || { cat "$dir/out" "$dir/err" >&2; fail "'$*' exited $got, expected $want"; }
}
# nonzero CMD...: must fail, not time out (124/137 from timeout)
nonzero() {
	"$@" >"$dir/out" 2>"$dir/err"
	local got=$?
	[ "$got" != 0 ] || fail "'$*' succeeded"
	[ "$got" != 124 ] && [ "$got" != 137 ] || { cat "$dir/err" >&2; fail "'$*' hung (timeout)"; }
}
"$A" build --distributed --help >/dev/null || fail "build --help"
"$A" search --help | grep -q -- "--distributed" || fail "search --help names no --distributed"

expect 0 "$A" gen --n 20000 --dim 32 --profile real --seed 3 --queries 200 --out "$dir/b.u8bin" \
	--queries-out "$dir/q.u8bin" --quiet
expect 0 "$A" gt --base "$dir/b.u8bin" --queries "$dir/q.u8bin" --k 10 --out "$dir/gt.bin"

# 1. three ranks train the router together and store their partitions
expect 0 mpi -np 3 "$A" build --distributed --data "$dir/b.u8bin" --index "$dir/D" --partitions 60 --mem 64M \
	--quiet --json
python3 - "$dir/out" <<'PY' || fail "build json: $(cat "$dir/out")"
import json, sys
j = json.loads(open(sys.argv[1]).read())
assert j["ranks"] == 3 and j["kmeans_steps"] >= 1 and j["shuffle_rounds"] >= 1, j
assert j["shuffle_bytes_to_other_ranks"] > 0, j
PY
for r in 0 1 2; do
	[ -d "$dir/D/rank-$r" ] || fail "no part rank-$r"
	expect 0 "$A" verify --index "$dir/D/rank-$r" # each part checks alone, as on its own machine
done
grep -q "^ranks 3$" "$dir/D/annann-distributed" || fail "descriptor: $(cat "$dir/D/annann-distributed")"
ls "$dir" | grep -q "D.tmp" && fail "a temporary directory was left behind"
# a single-node index from the same data with the same router
expect 0 "$A" build --data "$dir/b.u8bin" --index "$dir/S" --router-from "$dir/D" --quiet

# compare NAME_SINGLE NAME_DIST: recall within 0.01, bytes/query within 5%
compare() {
	expect 0 "$A" search --index "$1" --queries "$dir/q.u8bin" --gt "$dir/gt.bin" --nprobe 4,12 --json
	cp "$dir/out" "$dir/single.json"
	expect 0 mpi -np 3 "$A" search --distributed --index "$2" --queries "$dir/q.u8bin" --gt "$dir/gt.bin" \
		--nprobe 4,12 --json
	cp "$dir/out" "$dir/dist.json"
	python3 - "$dir/single.json" "$dir/dist.json" <<'PY' || fail "$1 vs $2"
import json, sys
s = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
d = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
assert len(s) == len(d) == 2, (s, d)
for a, b in zip(s, d):
    assert b["ranks"] == 3 and a["nprobe"] == b["nprobe"] and b["queries"] == 200
    assert a["recall_at_k"] > 0.5, a
    assert abs(a["recall_at_k"] - b["recall_at_k"]) <= 0.01, (a["recall_at_k"], b["recall_at_k"])
    assert abs(a["bytes_read"] - b["bytes_read"]) <= 0.05 * a["bytes_read"], (a["bytes_read"], b["bytes_read"])
    assert abs(a["partitions_probed"] - b["partitions_probed"]) < 1e-9
    print("nprobe %d: recall %.4f / %.4f, bytes %.0f / %.0f" % (a["nprobe"], a["recall_at_k"], b["recall_at_k"],
          a["bytes_read"], b["bytes_read"]))
PY
}
compare "$dir/S" "$dir/D"
# the table too, and --out: the distributed answers equal the single-node ones
expect 0 mpi -np 3 "$A" search --distributed --index "$dir/D" --queries "$dir/q.u8bin" --gt "$dir/gt.bin" \
	--nprobe 8 --batch 16 --out "$dir/d.res"
grep -q "recall@k" "$dir/out" && grep -q "3 ranks" "$dir/out" || fail "table: $(cat "$dir/out")"
expect 0 "$A" search --index "$dir/S" --queries "$dir/q.u8bin" --nprobe 8 --batch 16 --out "$dir/s.res"
cmp -s "$dir/d.res" "$dir/s.res" || fail "distributed and single-node answers differ"

# 2. the reverse: a distributed index with the router of a trained single-node
# index, each vector stored twice (replicas across ranks: merged once)
expect 0 "$A" build --data "$dir/b.u8bin" --index "$dir/S2" --partitions 48 --replicas 2 --quiet
expect 0 mpi -np 3 "$A" build --distributed --data "$dir/b.u8bin" --index "$dir/D2" --router-from "$dir/S2" \
	--replicas 2 --quiet
compare "$dir/S2" "$dir/D2"

# 3. one rank is a distributed index too
expect 0 mpi -np 1 "$A" build --distributed --data "$dir/b.u8bin" --index "$dir/D1" --partitions 30 --quiet
expect 0 mpi -np 1 "$A" search --distributed --index "$dir/D1" --queries "$dir/q.u8bin" --gt "$dir/gt.bin"

# 4. what it is: the single-node tool on a distributed index and on a part,
# the distributed search on a single-node index and with the wrong rank count
expect 1 "$A" info --index "$dir/D"
grep -q "distributed index of 3 ranks" "$dir/err" || fail "info on D: $(cat "$dir/err")"
expect 1 "$A" search --index "$dir/D" --queries "$dir/q.u8bin"
grep -q "mpirun -np 3 annann search --distributed" "$dir/err" || fail "search on D: $(cat "$dir/err")"
expect 1 "$A" search --index "$dir/D/rank-1" --queries "$dir/q.u8bin"
grep -q "rank 1's part of a distributed index of 3 ranks" "$dir/err" || fail "part: $(cat "$dir/err")"
expect 1 "$A" insert --index "$dir/D/rank-1" --data "$dir/q.u8bin"
grep -q "part of a distributed index" "$dir/err" || fail "insert into a part: $(cat "$dir/err")"
nonzero mpi -np 3 "$A" search --distributed --index "$dir/S" --queries "$dir/q.u8bin"
grep -q "S is not a distributed index" "$dir/err" || fail "distributed search of S: $(cat "$dir/err")"
nonzero mpi -np 3 "$A" search --distributed --index "$dir/D" --queries "$dir/q.u8bin" --probe-eps 0.3
grep -q "probe-eps does not apply to a distributed search" "$dir/err" || fail "--probe-eps: $(cat "$dir/err")"
nonzero mpi -np 2 "$A" search --distributed --index "$dir/D" --queries "$dir/q.u8bin"
grep -q "built on 3 ranks" "$dir/err" || fail "wrong rank count: $(cat "$dir/err")"
nonzero mpi -np 3 "$A" build --distributed --data "$dir/b.u8bin" --index "$dir/D" --quiet
grep -q "already exists" "$dir/err" || fail "build over D: $(cat "$dir/err")"
nonzero mpi -np 2 "$A" build --distributed --data "$dir/b.u8bin" --index "$dir/D3" --router annann --quiet
grep -q "trains the kmeans router" "$dir/err" || fail "annann router: $(cat "$dir/err")"

# 5. a rank that cannot open its part: the others stop, with a message
cp -r "$dir/D" "$dir/Dbad"
rm -rf "$dir/Dbad/rank-2/catalog.lmdb"
nonzero mpi -np 3 "$A" search --distributed --index "$dir/Dbad" --queries "$dir/q.u8bin"
grep -q "rank 2 of 3" "$dir/err" && grep -q "stopping: rank 2 failed to open its part" "$dir/err" ||
	fail "missing part: $(cat "$dir/err")"
# a part holding another router than the descriptor names
rm -rf "$dir/Dbad/rank-2"
cp -r "$dir/D2/rank-2" "$dir/Dbad/rank-2"
nonzero mpi -np 3 "$A" search --distributed --index "$dir/Dbad" --queries "$dir/q.u8bin"
grep -q "is not the one of" "$dir/err" || fail "foreign part: $(cat "$dir/err")"

# 6. a rank killed mid-search: mpirun ends the job and says so
python3 - "$dir/q.u8bin" "$dir/qbig.u8bin" <<'PY'
import sys
src = open(sys.argv[1], "rb").read()
n, d = int.from_bytes(src[:4], "little"), int.from_bytes(src[4:8], "little")
body = src[8:] * 200
open(sys.argv[2], "wb").write((n * 200).to_bytes(4, "little") + src[4:8] + body)
PY
timeout -k 10 240 "$MPIRUN" --oversubscribe -np 3 "$A" search --distributed --index "$dir/D" \
	--queries "$dir/qbig.u8bin" --nprobe 16,24,32,48 >"$dir/kill.out" 2>"$dir/kill.err" &
job=$!
ranks=""
for _ in $(seq 1 300); do
	ranks=$(pgrep -P "$(pgrep -P $job -x mpirun || echo $job)" -x annann || true)
	[ "$(echo "$ranks" | wc -w)" = 3 ] && grep -q "nprobe" "$dir/kill.out" && break
	sleep 0.1
done
[ "$(echo "$ranks" | wc -w)" = 3 ] || fail "did not see 3 ranks running: '$ranks'"
victim=$(echo "$ranks" | sed -n 2p)
kill -9 "$victim"
wait $job
rc=$?
[ "$rc" != 0 ] || fail "the job survived a killed rank"
# mpirun passes the signal on (128 + 9); timeout's own verdict on a hang is 124
[ "$rc" != 124 ] || { cat "$dir/kill.err" >&2; fail "the job hung after a killed rank"; }
grep -qiE "signal 9|killed" "$dir/kill.err" || fail "no message about the killed rank: $(cat "$dir/kill.err")"
echo "killed rank: exit $rc, $(grep -iE 'signal 9|killed' "$dir/kill.err" | head -1)"
echo "ok"
