#!/usr/bin/env bash
# Description: the annann tool end to end: exit codes (0 ok, 1 failure,
# 2 usage), messages on stderr, --help and --json on every command, gen
# determinism, convert round trips, gt, build/info/search/verify, and a
# corrupted index reported by verify.
set -uo pipefail
# shellcheck source=cli_common.sh
. "$(dirname "$0")/cli_common.sh"
json_ok() { python3 -c 'import json,sys; [json.loads(l) for l in sys.stdin if l.strip()]' <"$dir/out" \
	|| fail "not JSON: $(cat "$dir/out")"; }

# usage and help
expect 2 "$A"
expect 0 "$A" help
grep -q "build" "$dir/out" || fail "help lists no build"
expect 0 "$A" version
for c in gen gt convert build search info verify; do
	expect 0 "$A" "$c" --help
	grep -q "usage: annann $c" "$dir/out" || fail "$c --help"
	expect 0 "$A" help "$c"
done
expect 2 "$A" frobnicate
expect 2 "$A" gen --n 10
grep -q "out' is required" "$dir/err" || fail "missing required option message"
expect 2 "$A" gen --n ten --out "$dir/x.fbin"
expect 2 "$A" gen --n 10 --out "$dir/x.fbin" --bogus
expect 2 "$A" build --data x --index y --partitions -3
expect 2 "$A" search --index y --queries q --nprobe 0

# gen: same seed same bytes, other seed other bytes
expect 0 "$A" gen --n 3000 --dim 32 --seed 7 --queries 50 --out "$dir/a.u8bin" --queries-out "$dir/q.u8bin" --quiet
expect 0 "$A" gen --n 3000 --dim 32 --seed 7 --out "$dir/b.u8bin" --quiet --json
json_ok
cmp -s "$dir/a.u8bin" "$dir/b.u8bin" || fail "gen not deterministic"
expect 0 "$A" gen --n 3000 --dim 32 --seed 8 --out "$dir/c.u8bin" --quiet
cmp -s "$dir/a.u8bin" "$dir/c.u8bin" && fail "different seeds gave the same data"
# gen --profile: easy is the default and keeps its bytes (pinned: the easy generator's output
# before profiles existed); real is deterministic, pinned too, and differs from easy
expect 0 "$A" gen --profile easy --n 3000 --dim 32 --seed 7 --out "$dir/e.u8bin" --quiet
cmp -s "$dir/a.u8bin" "$dir/e.u8bin" || fail "--profile easy differs from the default"
sum=$(sha256sum <"$dir/a.u8bin" | cut -c1-16)
[ "$sum" = 568f3796082556af ] || fail "easy profile output changed: sha256 $sum"
expect 0 "$A" gen --profile real --n 3000 --dim 32 --seed 7 --queries 50 --out "$dir/r1.u8bin" \
	--queries-out "$dir/rq.u8bin" --quiet --json
grep -q '"profile": *"real"' "$dir/out" || fail "gen --json lacks the profile: $(cat "$dir/out")"
expect 0 "$A" gen --profile real --n 3000 --dim 32 --seed 7 --out "$dir/r2.u8bin" --quiet
cmp -s "$dir/r1.u8bin" "$dir/r2.u8bin" || fail "gen --profile real not deterministic"
cmp -s "$dir/r1.u8bin" "$dir/a.u8bin" && fail "--profile real gave the easy data"
sum=$(sha256sum <"$dir/r1.u8bin" | cut -c1-16)
[ "$sum" = c0a68fe50172a342 ] || fail "real profile output changed: sha256 $sum"
expect 2 "$A" gen --profile hard --n 10 --out "$dir/x.u8bin"
grep -q "profile hard: expected easy or real" "$dir/err" || fail "bad --profile message: $(cat "$dir/err")"
expect 2 "$A" gen --profile real --drift 0.5 --n 10 --out "$dir/x.u8bin"
grep -q "drift" "$dir/err" || fail "--drift with real: $(cat "$dir/err")"
[ -e "$dir/x.u8bin" ] && fail "a refused gen wrote its output"

# convert round trip through every format
prev="$dir/a.u8bin"
for ext in fbin fvecs bvecs i8bin.skip u8bin; do
	[ "$ext" = i8bin.skip ] && continue
	expect 0 "$A" convert --in "$prev" --out "$dir/r.$ext" --quiet
	prev="$dir/r.$ext"
done
cmp -s "$dir/a.u8bin" "$dir/r.u8bin" || fail "convert round trip changed the data"

# bad input names the file and the vector
head -c 2000 "$dir/r.fvecs" >"$dir/trunc.fvecs"
expect 1 "$A" convert --in "$dir/trunc.fvecs" --out "$dir/t.fbin"
grep -q "trunc.fvecs" "$dir/err" || fail "truncation message lacks the file: $(cat "$dir/err")"
[ -e "$dir/t.fbin" ] && fail "a failed convert left its output"
expect 1 "$A" convert --in "$dir/nonexistent.fbin" --out "$dir/t.fbin"

# gt: big-ann layout and ivecs
expect 0 "$A" gt --base "$dir/a.u8bin" --queries "$dir/q.u8bin" --k 20 --out "$dir/gt.bin" --quiet --json
json_ok
expect 0 "$A" gt --base "$dir/a.u8bin" --queries "$dir/q.u8bin" --k 20 --out "$dir/gt.ivecs" --quiet
[ "$(stat -c %s "$dir/gt.bin")" = $((8 + 50 * 20 * 8)) ] || fail "gt.bin size"
[ "$(stat -c %s "$dir/gt.ivecs")" = $((50 * 21 * 4)) ] || fail "gt.ivecs size"

# recall counts only the neighbours there are: a 30-row set padded its gt rows of 40 with -1
head -c $((8 + 30 * 32)) "$dir/a.u8bin" > "$dir/small.u8bin"
python3 -c "import struct,sys; f=open(sys.argv[1],'r+b'); f.write(struct.pack('<II', 30, 32))" "$dir/small.u8bin"
expect 0 "$A" gt --base "$dir/small.u8bin" --queries "$dir/q.u8bin" --k 40 --out "$dir/gt40.bin" --quiet
expect 0 "$A" build --data "$dir/small.u8bin" --index "$dir/small-idx" --partitions 2 --quiet
expect 0 "$A" search --index "$dir/small-idx" --queries "$dir/q.u8bin" --gt "$dir/gt40.bin" --k 40 --nprobe 2 --json
python3 -c "import json, sys; j = json.loads(open(sys.argv[1]).readline()); assert j['recall_at_k'] == 1.0, j" \
	"$dir/out" || fail "recall with fewer rows than k: $(cat "$dir/out")"

# build, info, search, verify
expect 0 "$A" build --data "$dir/a.u8bin" --index "$dir/idx" --partitions 16 --mem 64M --quiet
# training history: one line per epoch on stderr (not with --quiet)
expect 0 "$A" build --data "$dir/a.u8bin" --index "$dir/idx-ann" --router annann --partitions 8 --ae-epochs 2 \
	--dec-epochs 2 --hidden 32 --embed-dim 8
[ "$(grep -c '^annann ae epoch' "$dir/err")" = 2 ] || fail "ae epochs not printed: $(cat "$dir/err")"
grep -q '^annann dec epoch 2/2: loss .* labels changed' "$dir/err" || fail "dec epochs not printed"
expect 0 "$A" build --data "$dir/a.u8bin" --index "$dir/idx-joint" --router joint --partitions 8 --epochs 3 --rounds 2
grep -q '^nlsh round 0: cut .* balance .* classifier accuracy' "$dir/err" || fail "nlsh round not printed"
grep -q '^joint round 1: cut .* labels changed' "$dir/err" || fail "joint rounds not printed: $(cat "$dir/err")"
expect 1 "$A" build --data "$dir/a.u8bin" --index "$dir/idx" --partitions 16 --quiet
grep -q "already exists" "$dir/err" || fail "rebuild over an index"
expect 0 "$A" info --index "$dir/idx" --json
json_ok
python3 - "$dir/out" <<'PY' || fail "info json keys"
import json, sys
d = json.load(open(sys.argv[1]))
for k in ["vectors", "dim", "partitions", "router", "store", "encoding", "bytes_on_disk", "router_ram_bytes"]:
    assert k in d, k
assert d["vectors"] == 3000 and d["dim"] == 32 and d["partitions"] == 16 and d["router"] == "kmeans"
assert 16 <= d["route_ef"] <= 512, d["route_ef"]  # calibrated by the build
PY
expect 0 "$A" search --index "$dir/idx" --queries "$dir/q.u8bin" --gt "$dir/gt.bin" --k 10 --nprobe 16 --json \
	--out "$dir/res.bin"
json_ok
python3 - "$dir/out" <<'PY' || fail "search json"
import json, sys
d = json.loads(open(sys.argv[1]).readline())
for k in ["recall_at_k", "k", "queries", "qps", "latency_us", "partitions_probed", "candidates", "bytes_read",
          "io_requests", "stage_us", "io_path"]:
    assert k in d, k
assert d["recall_at_k"] == 1.0, d["recall_at_k"]   # all partitions probed: exact
assert d["io_path"] in ("io_uring", "pread", "lmdb")
assert set(d["latency_us"]) >= {"p50", "p95", "p99"} and set(d["stage_us"]) >= {"route", "io_wait", "decode", "scan"}
PY
[ "$(stat -c %s "$dir/res.bin")" = $((8 + 50 * 10 * 8)) ] || fail "--out size"
expect 0 "$A" search --index "$dir/idx" --queries "$dir/q.u8bin" --gt "$dir/res.bin" --k 10 --nprobe 16 --batch 8 \
	--threads 2 --cache 1M --json
python3 -c 'import json,sys; d=json.loads(open(sys.argv[1]).readline()); assert d["recall_at_k"]==1.0' "$dir/out" \
	|| fail "--out results are not what search returns"
# --warmup fills the cache that the measured pass then reads from: nothing from storage
expect 0 "$A" search --index "$dir/idx" --queries "$dir/q.u8bin" --k 10 --nprobe 4 --batch 10 --cache 64M --warmup \
	--json
python3 -c 'import json,sys; d=json.loads(open(sys.argv[1]).readline()); assert d["bytes_read"]==0, d' "$dir/out" \
	|| fail "--warmup did not warm the cache"
expect 0 "$A" search --index "$dir/idx" --queries "$dir/q.u8bin" --nprobe 1,2,4
[ "$(grep -c '^[124] ' "$dir/out")" = 3 ] || fail "sweep rows"
expect 1 "$A" search --index "$dir/idx" --queries "$dir/r.fbin" --gt "$dir/gt.bin" --k 30
grep -q "need" "$dir/err" || fail "gt too short message"
expect 0 "$A" verify --index "$dir/idx" --json
json_ok

# a flipped byte in blocks.dat: verify reports it and exits 1
size=$(stat -c %s "$dir/idx/blocks.dat")
off=$(( 4096 + (size - 4096) / 3 ))
python3 -c 'import sys; f=open(sys.argv[1],"r+b"); o=int(sys.argv[2]); f.seek(o); b=f.read(1)[0]; f.seek(o); f.write(bytes([b^0x10]))' "$dir/idx/blocks.dat" $off
expect 1 "$A" verify --index "$dir/idx"
grep -q "partition" "$dir/err" || fail "verify names no partition: $(cat "$dir/err")"
echo "cli: all checks passed"
