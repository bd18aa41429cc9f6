#!/usr/bin/env bash
# Description: a damaged catalog through the real annann binary (issue 13
# D2, D4): a truncated data.mdb and a free list naming a page past the end
# make info, verify, search and insert exit 1 with one line naming data.mdb
# (never a signal), insert writes nothing, and 'annann repair' (named in the
# message) rebuilds the catalog, keeps the old one, and leaves an index that
# verifies clean, answers as before and takes inserts.
set -uo pipefail
# shellcheck source=cli_common.sh
. "$(dirname "$0")/cli_common.sh"
# one_line NEEDLE...: stderr is one line holding every needle
one_line() {
	[ "$(wc -l <"$dir/err")" = 1 ] || fail "expected one line on stderr, got: $(cat "$dir/err")"
	for n in "$@"; do grep -qF -- "$n" "$dir/err" || fail "stderr lacks '$n': $(cat "$dir/err")"; done
}

expect 0 "$A" repair --help
grep -q "usage: annann repair" "$dir/out" || fail "repair --help"
expect 2 "$A" repair
expect 0 "$A" gen --n 3000 --dim 32 --queries 20 --out "$dir/base.u8bin" --queries-out "$dir/q.u8bin" --quiet
expect 0 "$A" gen --n 50 --dim 32 --seed 9 --out "$dir/more.u8bin" --quiet
expect 0 "$A" build --data "$dir/base.u8bin" --index "$dir/idx" --partitions 8 --quiet
expect 0 "$A" search --index "$dir/idx" --queries "$dir/q.u8bin" --k 5 --nprobe 8 --out "$dir/want.bin"
db="$dir/t/catalog.lmdb/data.mdb"

# D2: truncated at 2 pages and mid-file
for size in 8192 $(( $(stat -c %s "$dir/idx/catalog.lmdb/data.mdb") / 2 )); do
	rm -rf "$dir/t"; cp -r "$dir/idx" "$dir/t"
	truncate -s "$size" "$db"
	for c in info verify; do
		expect 1 "$A" $c --index "$dir/t"
		one_line "data.mdb" "damaged catalog" "truncated"
	done
	expect 1 "$A" search --index "$dir/t" --queries "$dir/q.u8bin"
	one_line "data.mdb" "damaged catalog"
done

# D4: the first free-list entry's page number gets its top byte flipped
rm -rf "$dir/t"; cp -r "$dir/idx" "$dir/t"
python3 - "$db" <<'PY' || fail "no free list to damage"
import struct, sys
f = open(sys.argv[1], "r+b"); d = f.read(); ps = 4096
m = max((0, 1), key=lambda i: struct.unpack_from("<Q", d, i * ps + 144)[0])
root = struct.unpack_from("<Q", d, m * ps + 80)[0]  # mm_dbs[0] (free) at 40, md_root at +40
page = root * ps
assert struct.unpack_from("<H", d, page + 10)[0] == 2, "free DB root is not a leaf"
node = page + struct.unpack_from("<H", d, page + 16)[0]
off = node + 8 + 8 + 8 + 7          # node header, txn id key, count, first page number's top byte
f.seek(off); f.write(bytes([d[off] ^ 0x08]))
PY
expect 1 "$A" verify --index "$dir/t"
grep -qF "run 'annann repair --index $dir/t'" "$dir/err" || fail "verify does not name repair: $(cat "$dir/err")"
cp "$db" "$dir/before.mdb"
expect 1 "$A" insert --index "$dir/t" --data "$dir/more.u8bin"
one_line "data.mdb" "free list" "annann repair"
cmp -s "$db" "$dir/before.mdb" || fail "a refused insert changed data.mdb"
expect 0 "$A" repair --index "$dir/t" --dry-run
cmp -s "$db" "$dir/before.mdb" || fail "a dry run changed data.mdb"
expect 0 "$A" repair --index "$dir/t"
grep -q "free list" "$dir/out" || fail "repair does not say what it found: $(cat "$dir/out")"
backup=$(sed -n 's/.*the old catalog is kept at //p' "$dir/out")
[ -n "$backup" ] && [ -f "$backup/data.mdb" ] || fail "repair kept no backup: $(cat "$dir/out")"
expect 0 "$A" verify --index "$dir/t"
expect 0 "$A" search --index "$dir/t" --queries "$dir/q.u8bin" --k 5 --nprobe 8 --out "$dir/got.bin"
cmp -s "$dir/want.bin" "$dir/got.bin" || fail "answers changed after repair"
expect 0 "$A" insert --index "$dir/t" --data "$dir/more.u8bin"
expect 0 "$A" verify --index "$dir/t"

# repair of a healthy index: nothing found, still a clean catalog
expect 0 "$A" repair --index "$dir/idx" --json
grep -q '"damaged":false' "$dir/out" || fail "healthy index reported damaged: $(cat "$dir/out")"
expect 0 "$A" verify --index "$dir/idx"

# a failing search with several threads ends cleanly (every worker joined)
rm -rf "$dir/t"; cp -r "$dir/idx" "$dir/t"
size=$(stat -c %s "$dir/t/blocks.dat")
python3 -c 'import sys; f=open(sys.argv[1],"r+b"); o=int(sys.argv[2]); f.seek(o); b=f.read(1)[0]; f.seek(o); f.write(bytes([b^0x10]))' "$dir/t/blocks.dat" $(( 4096 + (size - 4096) / 2 ))
expect 1 "$A" search --index "$dir/t" --queries "$dir/q.u8bin" --nprobe 8 --threads 4
grep -q "partition" "$dir/err" || fail "threaded search failure names no partition: $(cat "$dir/err")"
echo "catalog cli: all checks passed"
