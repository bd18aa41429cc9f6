#!/usr/bin/env bash
# Description: the compact k-means router and adaptive probing through the annann tool:
# build --router-bits keeps fewer router bytes than the graph and still finds the exact
# answers when every partition is probed; search --probe-eps inf writes exactly the answers
# of fixed nprobe, --probe-eps E never probes more than nprobe and reports it in JSON; bad
# usage of both options exits 2, a compact router under another metric exits 1 naming it.
set -uo pipefail
# shellcheck source=cli_common.sh
. "$(dirname "$0")/cli_common.sh"

expect 0 "$A" gen --n 6000 --dim 32 --seed 5 --queries 50 --out "$dir/b.u8bin" --queries-out "$dir/q.u8bin" --quiet
expect 0 "$A" gt --base "$dir/b.u8bin" --queries "$dir/q.u8bin" --k 10 --out "$dir/gt.bin" --quiet
expect 2 "$A" build --data "$dir/b.u8bin" --index "$dir/x" --router-bits 9
expect 2 "$A" build --data "$dir/b.u8bin" --index "$dir/x" --router-bits -1
expect 1 "$A" build --data "$dir/b.u8bin" --index "$dir/x" --router-bits 1 --metric ip --quiet
grep -q "metric l2" "$dir/err" || fail "ip compact router message: $(cat "$dir/err")"
[ ! -e "$dir/x" ] || fail "a refused build left $dir/x"
expect 0 "$A" build --data "$dir/b.u8bin" --index "$dir/g" --partitions 40 --hnsw-m 32 --quiet
expect 0 "$A" build --data "$dir/b.u8bin" --index "$dir/c" --partitions 40 --router-bits 2 --quiet
expect 0 "$A" info --index "$dir/g" --json
cp "$dir/out" "$dir/g.json"
expect 0 "$A" info --index "$dir/c" --json
python3 - "$dir/g.json" "$dir/out" <<'PY' || fail "info json"
import json, sys
g = json.load(open(sys.argv[1]))
c = json.load(open(sys.argv[2]))
assert c['router'] == 'kmeans' and c['partitions'] == 40 and c['router_bits'] == 2, c
assert g['router_bits'] == 0, g
assert c['router_ram_bytes'] * 3 < g['router_ram_bytes'], (c['router_ram_bytes'], g['router_ram_bytes'])
PY
expect 0 "$A" search --index "$dir/c" --queries "$dir/q.u8bin" --gt "$dir/gt.bin" --nprobe 40 --json
python3 - "$dir/out" <<'PY' || fail "compact router, every partition: not exact"
import json, sys
j = json.loads(open(sys.argv[1]).read())
assert j['recall_at_k'] == 1.0 and j['partitions_probed'] == 40, j
PY
for ix in g c; do
	expect 0 "$A" search --index "$dir/$ix" --queries "$dir/q.u8bin" --nprobe 6 --out "$dir/fixed.bin"
	expect 0 "$A" search --index "$dir/$ix" --queries "$dir/q.u8bin" --nprobe 6 --probe-eps inf --out "$dir/inf.bin"
	cmp -s "$dir/fixed.bin" "$dir/inf.bin" || fail "$ix: --probe-eps inf changed the answers"
	expect 0 "$A" search --index "$dir/$ix" --queries "$dir/q.u8bin" --gt "$dir/gt.bin" --nprobe 6,12 \
		--probe-eps 0.05 --json
	python3 - "$dir/out" <<'PY' || fail "$ix: adaptive probing json"
import json, sys
for line in open(sys.argv[1]):
	j = json.loads(line)
	assert j['probe_eps'] == 0.05, j
	assert 1 <= j['partitions_probed'] < j['nprobe'], j
PY
done
expect 2 "$A" search --index "$dir/g" --queries "$dir/q.u8bin" --probe-eps -1
expect 2 "$A" search --index "$dir/g" --queries "$dir/q.u8bin" --probe-eps nan
expect 2 "$A" search --index "$dir/g" --queries "$dir/q.u8bin" --probe-eps x
echo ok
