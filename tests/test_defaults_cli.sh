#!/usr/bin/env bash
# Description: the configuration `annann build --data F --index DIR` picks with no other option
# (docs/DESIGN.md "Defaults"): codes blocks (2 bits under 512 dimensions, 1 bit from 512 on,
# with the compact router where it allows finer partitions), more partitions than the old
# n/1000, router RAM within 4 B/vector and disk within 1.5x raw; format 1 where codes do not
# pay (32 dimensions u8) or --codes none; explicit flags win; search without --nprobe uses the
# index's default_nprobe. Fails if the defaults regress to format 1 blocks.
set -uo pipefail
# shellcheck source=cli_common.sh
. "$(dirname "$0")/cli_common.sh"
# check INDEX PYTHON-ASSERTIONS: info --json of INDEX as j
check() {
	expect 0 "$A" info --index "$1" --json
	python3 -c "import json, sys
j = json.load(open(sys.argv[1]))
$2" "$dir/out" || fail "$1: $(cat "$dir/out")"
}

expect 0 "$A" gen --n 20000 --dim 128 --seed 3 --queries 20 --out "$dir/d128.u8bin" --queries-out "$dir/q128.u8bin" --quiet
expect 0 "$A" gen --n 6000 --dim 512 --seed 4 --out "$dir/d512.u8bin" --quiet
expect 0 "$A" gen --n 60000 --dim 32 --seed 5 --out "$dir/d32.u8bin" --quiet

# 128 dimensions: 2-bit codes, the graph router, partitions bounded by the disk budget
expect 0 "$A" build --data "$dir/d128.u8bin" --index "$dir/a128"
grep -q "configuration: .* codes blocks (rabitq, 2 bits)" "$dir/err" || fail "no configuration line: $(cat "$dir/err")"
check "$dir/a128" "
assert j['code_bits'] == 2 and j['router_bits'] == 0 and j['code_factors'] == 16, j
assert j['partitions'] > 2 * (20000 // 1000), j  # the old default: n / 1000
assert j['router_bytes_per_vector'] <= 4.0, j
assert j['bytes_on_disk'] <= 1.5 * j['raw_bytes'], j
assert j['default_nprobe'] == max(16, -(-j['partitions'] // 40)), j"
np=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['default_nprobe'])" "$dir/out")
expect 0 "$A" search --index "$dir/a128" --queries "$dir/q128.u8bin" --json
python3 -c "import json, sys; j = json.loads(open(sys.argv[1]).readline()); assert j['nprobe'] == $np, j" "$dir/out" ||
	fail "search without --nprobe: $(cat "$dir/out")"

# 512 dimensions: 1-bit codes and the compact router (1-bit centroid codes)
expect 0 "$A" build --data "$dir/d512.u8bin" --index "$dir/a512" --quiet
check "$dir/a512" "
assert j['code_bits'] == 1 and j['router_bits'] == 1, j
assert j['partitions'] > 2 * (6000 // 1000), j
assert j['router_bytes_per_vector'] <= 4.0, j
assert j['bytes_on_disk'] <= 1.5 * j['raw_bytes'], j"

# inner product at 96 dimensions u8: its blocks also hold a centre product per row (codes block
# 2.4), which the disk model counts (it did not: 1.516x raw)
expect 0 "$A" gen --n 30000 --dim 96 --seed 3 --out "$dir/d96.u8bin" --quiet
expect 0 "$A" build --data "$dir/d96.u8bin" --index "$dir/ip96" --metric ip --quiet
check "$dir/ip96" "
assert j['code_bits'] == 2 and j['metric'] == 'ip', j
assert j['router_bytes_per_vector'] <= 4.0, j
assert j['bytes_on_disk'] <= 1.5 * j['raw_bytes'], j"

# 32 dimensions u8: a row is not worth its code record: format 1, partitions still by the budgets
expect 0 "$A" build --data "$dir/d32.u8bin" --index "$dir/a32" --quiet
check "$dir/a32" "
assert j['code_bits'] == 0, j
assert j['partitions'] > 2 * (60000 // 1000), j
assert j['bytes_on_disk'] <= 1.5 * j['raw_bytes'], j"
expect 0 "$A" info --index "$dir/a32"
grep -q "format 1 (zstd)" "$dir/out" || fail "info does not name format 1: $(cat "$dir/out")"

# --codes none: format 1 at the 128-dimension set; explicit flags win over every default
expect 0 "$A" build --data "$dir/d128.u8bin" --index "$dir/n128" --codes none --quiet
check "$dir/n128" "assert j['code_bits'] == 0 and j['partitions'] > 20, j"
expect 0 "$A" build --data "$dir/d128.u8bin" --index "$dir/x128" --partitions 10 --code-bits 3 --router-bits 2 \
	--balance 0 --quiet
check "$dir/x128" "assert j['code_bits'] == 3 and j['partitions'] == 10 and j['router_bits'] == 2, j"
expect 0 "$A" build --data "$dir/d512.u8bin" --index "$dir/g512" --router-bits 0 --quiet
check "$dir/g512" "assert j['code_bits'] == 1 and j['router_bits'] == 0 and j['router_bytes_per_vector'] <= 4.0, j"
echo ok
