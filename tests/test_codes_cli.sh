#!/usr/bin/env bash
# Description: codes through the annann tool: build --codes rabitq, info and search --json
# report the two rounds (round 1 + round 2 bytes = bytes read, re-ranks within --rerank),
# recall with codes near the exact scan's, verify clean and then catching a flipped byte of
# a head, and bad usage of the new options (exit 2).
set -uo pipefail
# shellcheck source=cli_common.sh
. "$(dirname "$0")/cli_common.sh"

expect 0 "$A" gen --n 4000 --dim 32 --seed 3 --queries 40 --out "$dir/b.u8bin" --queries-out "$dir/q.u8bin" --quiet
expect 0 "$A" gt --base "$dir/b.u8bin" --queries "$dir/q.u8bin" --k 10 --out "$dir/gt.bin" --quiet
expect 2 "$A" build --data "$dir/b.u8bin" --index "$dir/x" --codes pq
expect 2 "$A" build --data "$dir/b.u8bin" --index "$dir/x" --codes rabitq --code-bits 9
expect 2 "$A" build --data "$dir/b.u8bin" --index "$dir/x" --codes none --code-bits 2
expect 2 "$A" build --data "$dir/b.u8bin" --index "$dir/x" --page-fit maybe
grep -q "page-fit: 'maybe' is not on or off" "$dir/err" || fail "--page-fit message: $(cat "$dir/err")"
expect 2 "$A" build --data "$dir/b.u8bin" --index "$dir/x" --codes none --page-fit on
# --page-fit off and on both build; the fitted build says how many rows it moved
expect 0 "$A" build --data "$dir/b.u8bin" --index "$dir/pf0" --partitions 8 --page-fit off --quiet
expect 0 "$A" build --data "$dir/b.u8bin" --index "$dir/pf1" --partitions 8 --page-fit on
[ ! -e "$dir/x" ] || fail "a refused build left $dir/x"
expect 1 "$A" build --data "$dir/b.u8bin" --index "$dir/x" --codes rabitq --encoding f16 --quiet
grep -q "codes need encoding f32, u8 or i8" "$dir/err" || fail "f16 codes message: $(cat "$dir/err")"
expect 0 "$A" build --data "$dir/b.u8bin" --index "$dir/e" --partitions 8 --codes none --quiet
expect 0 "$A" info --index "$dir/e" --json
python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); assert j["code_bits"] == 0, j' "$dir/out" ||
	fail "--codes none wrote codes"
# --code-bits alone implies --codes rabitq
expect 0 "$A" build --data "$dir/b.u8bin" --index "$dir/cb" --partitions 8 --code-bits 3 --quiet
expect 0 "$A" info --index "$dir/cb" --json
python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); assert j["code_bits"] == 3, j' "$dir/out" ||
	fail "--code-bits 3 without --codes"
for st in file lmdb; do
	expect 0 "$A" build --data "$dir/b.u8bin" --index "$dir/c_$st" --partitions 8 --store $st --codes rabitq --code-factors 32 \
		--code-bits 2 --page-fit off --quiet
	expect 0 "$A" info --index "$dir/c_$st" --json
	python3 - "$dir/out" <<'PY' || fail "info json"
import json, sys
j = json.load(open(sys.argv[1]))
assert j['code_bits'] == 2 and j['head_bytes'] > 0, j
PY
	expect 0 "$A" search --index "$dir/c_$st" --queries "$dir/q.u8bin" --gt "$dir/gt.bin" --nprobe 8 --rerank 400 --json
	cp "$dir/out" "$dir/codes.json"
	expect 0 "$A" search --index "$dir/e" --queries "$dir/q.u8bin" --gt "$dir/gt.bin" --nprobe 8 --json
	python3 - "$dir/codes.json" "$dir/out" <<'PY' || fail "search json ($st)"
import json, sys
c = json.loads(open(sys.argv[1]).read().splitlines()[0])
e = json.loads(open(sys.argv[2]).read().splitlines()[0])
cc = c['codes']
assert abs(cc['bytes_round1'] + cc['bytes_round2'] - c['bytes_read']) < 1e-4 * c['bytes_read'], c
assert 10 <= cc['reranked'] <= 400 and cc['estimated'] > cc['reranked'], c
assert c['recall_at_k'] >= e['recall_at_k'] - 0.02, (c['recall_at_k'], e['recall_at_k'])
PY
	expect 0 "$A" verify --index "$dir/c_$st"
done
expect 2 "$A" search --index "$dir/c_file" --queries "$dir/q.u8bin" --rerank 0
# slim records (--code-factors 16, codes block 2.1): smaller heads, the same answers' recall
expect 2 "$A" build --data "$dir/b.u8bin" --index "$dir/x" --codes rabitq --code-factors 8
expect 2 "$A" build --data "$dir/b.u8bin" --index "$dir/x" --codes none --code-factors 16
# (page fitting off in both: it moves rows by head size, which the records change)
expect 0 "$A" build --data "$dir/b.u8bin" --index "$dir/c16" --partitions 8 --codes rabitq --code-bits 2 \
	--code-factors 16 --page-fit off --quiet
expect 0 "$A" info --index "$dir/c16"
grep -q "16-bit factors" "$dir/out" || fail "info names no 16-bit factors: $(cat "$dir/out")"
expect 0 "$A" info --index "$dir/c16" --json
cp "$dir/out" "$dir/i16.json"
expect 0 "$A" info --index "$dir/c_file" --json
python3 - "$dir/i16.json" "$dir/out" <<'PY' || fail "info json (f16)"
import json, sys
s, f = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
assert s['code_factors'] == 16 and f['code_factors'] == 32, (s, f)
# 5 bytes a record; 2.3 blocks (head page) may also differ by a page each
# (a 4-byte page sum, and the page map may grow a bit per row): 8 blocks
d = 5 * 4000 - (f['head_bytes'] - s['head_bytes'])
assert abs(d) <= 8 * 4 + 4000 // 8, (s['head_bytes'], f['head_bytes'])
PY
expect 0 "$A" search --index "$dir/c16" --queries "$dir/q.u8bin" --gt "$dir/gt.bin" --nprobe 8 --rerank 400 --json
cp "$dir/out" "$dir/s16.json"
expect 0 "$A" search --index "$dir/c_file" --queries "$dir/q.u8bin" --gt "$dir/gt.bin" --nprobe 8 --rerank 400 --json
python3 - "$dir/s16.json" "$dir/out" <<'PY' || fail "search json (f16)"
import json, sys
s = json.loads(open(sys.argv[1]).read().splitlines()[0])
f = json.loads(open(sys.argv[2]).read().splitlines()[0])
assert abs(s['recall_at_k'] - f['recall_at_k']) <= 0.01, (s['recall_at_k'], f['recall_at_k'])
assert s['codes']['bytes_round1'] <= f['codes']['bytes_round1'], (s['codes'], f['codes'])
PY
expect 0 "$A" verify --index "$dir/c16"
expect 2 "$A" search --index "$dir/c_lmdb" --queries "$dir/q.u8bin" --rerank-phases 5
expect 0 "$A" search --index "$dir/c_lmdb" --queries "$dir/q.u8bin" --gt "$dir/gt.bin" --nprobe 8 --rerank-phases 4 --json
python3 -c 'import json,sys; j=json.loads(open(sys.argv[1]).read()); assert j["recall_at_k"] > 0.8, j' "$dir/out" ||
	fail "--rerank-phases 4: $(cat "$dir/out")"
# polled completions: the bound; the same answers as sleeping, and the JSON says it
expect 2 "$A" search --index "$dir/c_file" --queries "$dir/q.u8bin" --poll-us 10001
grep -q -- "--poll-us" "$dir/err" || fail "--poll-us 10001: $(cat "$dir/err")"
expect 2 "$A" search --index "$dir/c_file" --queries "$dir/q.u8bin" --poll-us autox
grep -q -- "--poll-us" "$dir/err" || fail "--poll-us autox: $(cat "$dir/err")"
expect 0 "$A" search --index "$dir/c_file" --queries "$dir/q.u8bin" --gt "$dir/gt.bin" --nprobe 8 --poll-us 0 --out "$dir/r0.bin" --json
cp "$dir/out" "$dir/p0.json"
expect 0 "$A" search --index "$dir/c_file" --queries "$dir/q.u8bin" --gt "$dir/gt.bin" --nprobe 8 --poll-us 500 --out "$dir/r1.bin" --json
cmp -s "$dir/r0.bin" "$dir/r1.bin" || fail "--poll-us 500 answers differently"
cp "$dir/out" "$dir/p1.json"
# auto (the default): 300 while --threads is below the online CPUs, else 0
ncpu=$(getconf _NPROCESSORS_ONLN)
expect 0 "$A" search --index "$dir/c_file" --queries "$dir/q.u8bin" --gt "$dir/gt.bin" --nprobe 8 --out "$dir/r2.bin" --json
cmp -s "$dir/r0.bin" "$dir/r2.bin" || fail "--poll-us auto answers differently"
cp "$dir/out" "$dir/p2.json"
expect 0 "$A" search --index "$dir/c_file" --queries "$dir/q.u8bin" --nprobe 8 --poll-us auto --threads "$ncpu" --json
python3 - "$dir/p0.json" "$dir/p1.json" "$dir/p2.json" "$dir/out" "$ncpu" <<'PY' || fail "search json (poll)"
import json, sys
a, b, d, t = (json.loads(open(p).read().splitlines()[-1]) for p in sys.argv[1:5])
ncpu = int(sys.argv[5])
assert a['poll_us'] == 0 and b['poll_us'] == 500, (a['poll_us'], b['poll_us'])
assert d['poll_us'] == (300 if ncpu > 1 else 0), (d['poll_us'], ncpu)
assert t['poll_us'] == 0 and t['threads'] == ncpu, (t['poll_us'], t['threads'])
assert a['bytes_read'] == b['bytes_read'] == d['bytes_read'], (a, b, d)
assert a['codes']['read_waves'] == b['codes']['read_waves'], (a, b)
assert b['codes']['read_waves'] >= 2, b['codes']
PY
# the spread-aware probe order: info says it applies; the weight's range; 0 turns it off
expect 0 "$A" info --index "$dir/c_lmdb"
grep -q "^probe order    centroid distance + 0.125 x spread" "$dir/out" || fail "info probe order: $(cat "$dir/out")"
[ "$(grep -c "^probe order" "$dir/out")" = 1 ] || fail "info: more than one probe order line: $(cat "$dir/out")"
expect 2 "$A" search --index "$dir/c_lmdb" --queries "$dir/q.u8bin" --spread-weight -1
expect 2 "$A" search --index "$dir/c_lmdb" --queries "$dir/q.u8bin" --spread-weight 101
for w in 0 0.5; do
	expect 0 "$A" search --index "$dir/c_lmdb" --queries "$dir/q.u8bin" --gt "$dir/gt.bin" --nprobe 8 --spread-weight $w --json
	python3 -c 'import json,sys; j=json.loads(open(sys.argv[1]).read()); assert j["recall_at_k"] > 0.8, j' "$dir/out" ||
		fail "--spread-weight $w: $(cat "$dir/out")"
done
# learned adaptive probing: tune's usage and refusals, then a model that search uses
expect 2 "$A" tune --index "$dir/c_lmdb" --queries "$dir/q.u8bin"
grep -q -- "--gt" "$dir/err" || fail "tune without --gt: $(cat "$dir/err")"
expect 2 "$A" search --index "$dir/c_lmdb" --queries "$dir/q.u8bin" --adaptive sometimes
expect 2 "$A" search --index "$dir/c_lmdb" --queries "$dir/q.u8bin" --nprobe 4 --adaptive on
grep -q "no probe model" "$dir/err" || fail "--adaptive on without a model: $(cat "$dir/err")"
expect 2 "$A" tune --index "$dir/e" --queries "$dir/q.u8bin" --gt "$dir/gt.bin" --quiet
grep -q "not a codes index" "$dir/err" || fail "tune of a format 1 index: $(cat "$dir/err")"
expect 0 "$A" tune --index "$dir/c_lmdb" --queries "$dir/q.u8bin" --gt "$dir/gt.bin" --p1 2 --json --quiet
python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); assert j["p1"] == 2 and j["queries"] == 40 and j["rows"], j
assert len(j["eps_rows"]) == 4 and j["eps_rows"][0]["eps"] == 2 and j["rerank_eps"] in [r["eps"] for r in j["eps_rows"]], j' \
	"$dir/out" || fail "tune json: $(cat "$dir/out")"
eps=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["rerank_eps"])' "$dir/out")
expect 0 "$A" info --index "$dir/c_lmdb" --json
python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); assert j["probe_p1"] == 2 and j["rerank_eps_tuned"] == 1, j
assert abs(j["rerank_eps"] - float(sys.argv[2])) < 1e-6, j' "$dir/out" "$eps" ||
	fail "info shows no probe model or no calibrated re-rank bound"
expect 0 "$A" info --index "$dir/c_lmdb"
grep -q "^re-rank bound  eps0 .* (calibrated by annann tune" "$dir/out" || fail "info text: no re-rank bound line"
expect 0 "$A" search --index "$dir/c_lmdb" --queries "$dir/q.u8bin" --nprobe 4 --json
python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); assert abs(j["codes"]["rerank_eps"] - float(sys.argv[2])) < 1e-6, j' \
	"$dir/out" "$eps" || fail "search json: not the calibrated eps0"
expect 0 "$A" search --index "$dir/c_lmdb" --queries "$dir/q.u8bin" --nprobe 4 --rerank-eps 0.7 --json
python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); assert abs(j["codes"]["rerank_eps"] - 0.7) < 1e-6, j' \
	"$dir/out" || fail "search json: --rerank-eps did not override"
expect 0 "$A" search --index "$dir/c_lmdb" --queries "$dir/q.u8bin" --gt "$dir/gt.bin" --nprobe 4 --adaptive on --json
python3 - "$dir/out" <<'PY' || fail "adaptive search json: $(cat "$dir/out")"
import json, sys
j = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
assert 2 <= j['partitions_probed'] <= 8 and j['recall_at_k'] > 0.5, j
PY
expect 0 "$A" search --index "$dir/c_lmdb" --queries "$dir/q.u8bin" --nprobe 4 --adaptive off --json
python3 -c 'import json,sys; j=json.loads(open(sys.argv[1]).read()); assert j["partitions_probed"] == 4, j' "$dir/out" ||
	fail "--adaptive off probed other than nprobe"
# synthetic tuning: annann tune --data, and build --tune
expect 2 "$A" tune --index "$dir/c_lmdb"
expect 2 "$A" tune --index "$dir/c_lmdb" --data "$dir/b.u8bin" --queries "$dir/q.u8bin"
grep -q "not with --queries" "$dir/err" || fail "tune --data --queries: $(cat "$dir/err")"
expect 2 "$A" tune --index "$dir/c_lmdb" --synthetic 100 --queries "$dir/q.u8bin" --gt "$dir/gt.bin"
expect 2 "$A" tune --index "$dir/c_lmdb" --data "$dir/b.u8bin" --synthetic 8
expect 2 "$A" tune --index "$dir/c_lmdb" --data "$dir/q.u8bin" --quiet
grep -q "at least" "$dir/err" || fail "tune --data with 40 rows: $(cat "$dir/err")"
expect 2 "$A" tune --index "$dir/e" --data "$dir/b.u8bin" --quiet
grep -q "not a codes index" "$dir/err" || fail "tune --data of a format 1 index: $(cat "$dir/err")"
expect 2 "$A" tune --index "$dir/e" --directions 3 --quiet
grep -q "directions: not a k-means codes index" "$dir/err" || fail "tune --directions of a format 1 index: $(cat "$dir/err")"
[ "$(grep -o "$dir/e" "$dir/err" | wc -l)" = 1 ] || fail "tune --directions: the index named other than once: $(cat "$dir/err")"
expect 0 "$A" tune --index "$dir/c_lmdb" --data "$dir/b.u8bin" --synthetic 300 --seed 5 --json --quiet
python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); assert j["queries"] == 300 and j["rows"], j' \
	"$dir/out" || fail "tune --data json: $(cat "$dir/out")"
expect 2 "$A" build --data "$dir/b.u8bin" --index "$dir/x" --tune sometimes
expect 2 "$A" build --data "$dir/b.u8bin" --index "$dir/x" --codes none --tune on
expect 2 "$A" build --data "$dir/b.u8bin" --index "$dir/x" --router-from "$dir/c_lmdb" --tune on
grep -q "annann tune --data" "$dir/err" || fail "build --router-from --tune on: $(cat "$dir/err")"
expect 1 "$A" build --data "$dir/b.u8bin" --index "$dir/t_on" --partitions 8 --tune on --quiet
grep -q "format 1 blocks: add codes" "$dir/err" || fail "build --tune on, format 1 defaults: $(cat "$dir/err")"
[ ! -e "$dir/t_on" ] || fail "build --tune on refused but left $dir/t_on"
expect 0 "$A" build --data "$dir/b.u8bin" --index "$dir/t_on" --partitions 8 --codes rabitq --tune on
grep -q "adaptive probing: fitted on 2000 synthetic queries" "$dir/err" "$dir/out" ||
	fail "build --tune on: $(cat "$dir/out" "$dir/err")"
expect 0 "$A" info --index "$dir/t_on" --json
python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); assert j["probe_fit_queries"] == 2000, j' "$dir/out" ||
	fail "build --tune on stored no model: $(cat "$dir/out")"
expect 0 "$A" build --data "$dir/b.u8bin" --index "$dir/t_auto" --partitions 8 --codes rabitq --quiet
expect 0 "$A" info --index "$dir/t_auto" --json
python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); assert j.get("probe_p1", 0) == 0, j' "$dir/out" ||
	fail "build --tune auto fitted a model below its thresholds: $(cat "$dir/out")"
# a flipped byte in the first block's head (file store: blocks start at 4096)
python3 - "$dir/c_file/blocks.dat" <<'PY'
import sys
with open(sys.argv[1], 'r+b') as f:
	f.seek(4096 + 700)
	b = f.read(1)
	f.seek(4096 + 700)
	f.write(bytes([b[0] ^ 0x20]))
PY
expect 1 "$A" verify --index "$dir/c_file"
grep -q "checksum" "$dir/out" "$dir/err" || fail "verify names no checksum: $(cat "$dir/out" "$dir/err")"
expect 1 "$A" search --index "$dir/c_file" --queries "$dir/q.u8bin" --nprobe 8
grep -q "checksum" "$dir/err" || fail "search names no checksum: $(cat "$dir/err")"
echo ok
