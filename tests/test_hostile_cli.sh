#!/usr/bin/env bash
# Description: issue 13, hostile inputs, options and output files through the
# real annann binary: each case must end in one line on stderr naming the
# file or option, exit 1 (bad data) or 2 (bad usage), never a signal, and
# must leave no file outside the output path. docs/HOSTILE.md lists the cases.
set -uo pipefail
# shellcheck source=cli_common.sh
. "$(dirname "$0")/cli_common.sh"
# says TEXT: stderr holds TEXT
says() { grep -qF -- "$1" "$dir/err" || fail "stderr lacks '$1': $(cat "$dir/err")"; }

expect 0 "$A" gen --n 3000 --dim 32 --seed 3 --queries 20 --out "$dir/b.u8bin" --queries-out "$dir/q.u8bin" --quiet
expect 0 "$A" build --data "$dir/b.u8bin" --index "$dir/idx" --partitions 8 --quiet

# ---- D1: insert checks the file's dimension and element type against the index
expect 0 "$A" gen --n 10 --dim 64 --out "$dir/d64.u8bin" --quiet
expect 0 "$A" gen --n 20 --dim 16 --out "$dir/d16.u8bin" --quiet
expect 0 "$A" gen --n 10 --dim 32 --out "$dir/f32.fbin" --quiet
expect 1 "$A" insert --index "$dir/idx" --data "$dir/d64.u8bin"
says "d64.u8bin: vectors of dimension 64, but the index $dir/idx has dimension 32"
expect 1 "$A" insert --index "$dir/idx" --data "$dir/d16.u8bin"
says "dimension 16"
expect 1 "$A" insert --index "$dir/idx" --data "$dir/f32.fbin"
says "f32.fbin: f32 elements do not fit the u8 index"
expect 0 "$A" info --index "$dir/idx" --json
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["live_vectors"]==3000, d' "$dir/out" \
	|| fail "a refused insert changed the index"
expect 0 "$A" verify --index "$dir/idx"

# ---- D9: every numeric option: exit 2 naming the option, the value and the range
I="$dir/idx"; Q="$dir/q.u8bin"
expect 2 "$A" search --index "$I" --queries "$Q" --cache 1.5e30G
says "option '--cache': '1.5e30G' is not a size"; says "expected 0..1024T"
expect 2 "$A" build --data "$dir/b.u8bin" --index "$dir/i2" --mem 1.5e30G
says "option '--mem': '1.5e30G'"; says "expected 16M..1024T"
[ -e "$dir/i2" ] && fail "a refused build left its directory"
expect 2 "$A" build --data "$dir/b.u8bin" --index "$dir/i2" --mem 99999999999999999999G
says "is larger than 2^64-1"
expect 2 "$A" build --data "$dir/b.u8bin" --index "$dir/i2" --mem 2000T
says "option '--mem': 2000T is out of range"
expect 2 "$A" search --index "$I" --queries "$Q" --limit " -1"
says "option '--limit': ' -1' is not a non-negative integer"
expect 2 "$A" search --index "$I" --queries "$Q" --limit -1
says "option '--limit': '-1' is negative"
expect 2 "$A" compact --index "$I" --split-limit " -1"
says "option '--split-limit': ' -1'"
expect 2 "$A" compact --index "$I" --split-limit "+5"
expect 2 "$A" search --index "$I" --queries "$Q" --ef 4294967297
says "option '--ef': 4294967297 is out of range; expected 0..4096"
expect 2 "$A" search --index "$I" --queries "$Q" --ef 4000000000
expect 2 "$A" search --index "$I" --queries "$Q" --candidates-factor 4294967297
says "option '--candidates-factor': 4294967297 is out of range"
expect 2 "$A" gen --n 10 --out "$dir/x.u8bin" --clusters 4294967297
says "option '--clusters': 4294967297 is out of range; expected 0..4096"
expect 2 "$A" gen --n 18446744073709551616 --out "$dir/x.u8bin"
says "option '--n'"
expect 2 "$A" gen --n 0x10 --out "$dir/x.u8bin"
expect 2 "$A" gen --n 10 --out "$dir/x.u8bin" --drift nan
says "option '--drift': 'nan'"
expect 2 "$A" build --data "$dir/b.u8bin" --index "$dir/i2" --mem 1.5
says "fraction of a byte"
expect 2 "$A" search --index "$I" --queries "$Q" --nprobe 1,,2
says "option '--nprobe': item ''"
expect 2 "$A" search --index "$I" --queries "$Q" --nprobe 4097
expect 2 "$A" build --data "$dir/b.u8bin" --index "$dir/i2" --hidden 0
says "option '--hidden': item 0 is out of range; expected 1..65536"
[ -e "$dir/x.u8bin" ] || [ -e "$dir/i2" ] && fail "a refused command wrote output"
true
# sizes that are right keep working: a fraction with a unit, KiB/MB spellings
expect 0 "$A" search --index "$I" --queries "$Q" --cache 1.5M --k 5 --nprobe 2
expect 0 "$A" search --index "$I" --queries "$Q" --cache 64KiB --k 5 --nprobe 2 --limit 3

# ---- k: the tool and the library agree on ANN_MAX_K (100000)
expect 2 "$A" search --index "$I" --queries "$Q" --k 100001
says "option '--k': 100001 is out of range; expected 1..100000"
expect 2 "$A" gt --base "$dir/b.u8bin" --queries "$Q" --out "$dir/g.bin" --k 100001
says "expected 1..100000"
expect 0 "$A" search --index "$I" --queries "$Q" --k 20000 --nprobe 8 --limit 2

# ---- D11: sizes checked before anything is written; writer and reader agree
expect 2 "$A" gen --n 3000000000 --out "$dir/big.u8bin" --quiet
says "option '--n': 3000000000 vectors, but the u8bin format of $dir/big.u8bin holds at most 2147483647"
expect 2 "$A" gen --n 10 --queries 3000000000 --queries-out "$dir/bigq.fbin" --out "$dir/small.fbin" --quiet
says "option '--queries'"
# more bytes than any disk here holds: refused by the free-space check, at once
expect 1 "$A" gen --n 2000000000 --dim 65536 --clusters 16 --out "$dir/big.fvecs" --quiet
says "bytes free; nothing was written"
expect 2 "$A" convert --in "$dir/b.u8bin" --out "$dir/c0.fbin" --limit 0
says "option '--limit': 0 is out of range; expected 1.."
expect 2 "$A" convert --in "$dir/b.u8bin" --out "$dir/c0.fbin" --offset 3000
says "leaves no vector"
! ls "$dir" | grep -Eq 'big|small|c0' || fail "a refused gen or convert left a file: $(ls "$dir")"

# ---- D5: a link planted at the temporary name is never followed
# (bash -c '... exec': the planting shell's pid is the tool's pid)
echo VICTIM >"$dir/victim"
mkdir "$dir/victimdir"
plant() { # plant NAME CMD...: link $dir/NAME.tmp.<pid> -> victim, then run CMD as that pid
	local name=$1; shift
	bash -c 'ln -s "$1" "$2.tmp.$$"; shift 2; exec "$@"' _ "$dir/victim" "$dir/$name" "$@" >"$dir/out" 2>"$dir/err"
}
check_victim() {
	[ "$(cat "$dir/victim")" = VICTIM ] || fail "$1 wrote through a planted link"
	[ -z "$(ls -A "$dir/victimdir")" ] || fail "$1 wrote into a planted directory link"
}
plant o.fbin "$A" gen --n 10 --dim 8 --out "$dir/o.fbin" --quiet || fail "gen beside a planted link: $(cat "$dir/err")"
check_victim gen
expect 0 "$A" convert --in "$dir/o.fbin" --out "$dir/o2.u8bin" --quiet
plant c.fbin "$A" convert --in "$dir/o.fbin" --out "$dir/c.fbin" --quiet || fail "convert: $(cat "$dir/err")"
check_victim convert
cmp -s <(tail -c +9 "$dir/o.fbin") <(tail -c +9 "$dir/c.fbin") || fail "convert beside a link changed the data"
plant gt.bin "$A" gt --base "$dir/b.u8bin" --queries "$Q" --k 5 --out "$dir/gt.bin" --quiet || fail "gt: $(cat "$dir/err")"
check_victim gt
plant res.bin "$A" search --index "$I" --queries "$Q" --k 5 --nprobe 8 --out "$dir/res.bin" || fail "search --out: $(cat "$dir/err")"
check_victim "search --out"
[ "$(stat -c %s "$dir/res.bin")" = $((8 + 20 * 5 * 8)) ] || fail "search --out beside a link: wrong size"
# the build's temporary directory: a link to another directory is left alone
bash -c 'ln -s "$1" "$2.tmp.$$"; shift 2; exec "$@"' _ "$dir/victimdir" "$dir/idx3" \
	"$A" build --data "$dir/b.u8bin" --index "$dir/idx3" --partitions 4 --quiet >"$dir/out" 2>"$dir/err" \
	|| fail "build beside a planted link: $(cat "$dir/err")"
check_victim build
expect 0 "$A" verify --index "$dir/idx3"
[ -L "$(ls -d "$dir"/idx3.tmp.* | head -1)" ] || fail "the planted link was removed or replaced"
rm -f "$dir"/*.tmp.*

# ---- D12: a killed build leaves its state (resumable, tests/test_resume.sh);
# the next build with other data or options says why it starts over; temporaries
# of builds before the resumable one ("DIR.tmp.<pid>" with a marker of a gone
# process) are still removed, and said so; nothing without a marker is touched
"$A" gen --n 60000 --dim 64 --out "$dir/big.u8bin" --quiet >/dev/null || fail gen
"$A" build --data "$dir/big.u8bin" --index "$dir/killed" --partitions 64 --quiet &
bpid=$!
for _ in $(seq 100); do [ -e "$dir/killed.build-state/sample" ] && break; sleep 0.05; done
kill -9 "$bpid"; wait "$bpid" 2>/dev/null
[ -d "$dir/killed.build-state" ] || fail "no build state left (the build ended before the kill?)"
mkdir "$dir/killed.tmp.77777777"   # no marker: not ours, must stay
mkdir "$dir/killed.tmp.99999998"   # killed between creating and writing its marker
: >"$dir/killed.tmp.99999998/annann-build.pid"
mkdir "$dir/killed.tmp.99999997"
echo "annann build pid 99999997 start 1" >"$dir/killed.tmp.99999997/annann-build.pid"
expect 0 "$A" build --data "$dir/b.u8bin" --index "$dir/killed" --partitions 4
says "killed.build-state: the data file changed"
says "starting over"
says "removed stale temporary $dir/killed.tmp.99999997 from a killed build"
says "removed stale temporary $dir/killed.tmp.99999998"
[ -d "$dir/killed.tmp.77777777" ] || fail "a directory without the marker was removed"
[ -e "$dir/killed.build-state" ] && fail "the build state stayed after the build"
expect 0 "$A" verify --index "$dir/killed"
# a link planted at the state's name is refused, never followed
ln -s "$dir/victimdir" "$dir/idx4.build-state"
expect 1 "$A" build --data "$dir/b.u8bin" --index "$dir/idx4" --partitions 4 --quiet
says "idx4.build-state: exists and is not a build state directory"
check_victim "build beside a planted state link"
[ -L "$dir/idx4.build-state" ] || fail "the planted state link was removed"
rm -f "$dir/idx4.build-state"
# ---- D10: a budget far above the data sizes the spill buffer to the data
expect 0 "$A" build --data "$dir/b.u8bin" --index "$dir/idx100g" --partitions 8 --mem 100G --quiet
expect 0 "$A" verify --index "$dir/idx100g"
# ---- dimension over 4096: inserts and a compaction that splits (was "out of memory")
expect 0 "$A" gen --n 400 --dim 5000 --clusters 4 --out "$dir/d5k.u8bin" --quiet
expect 0 "$A" build --data "$dir/d5k.u8bin" --index "$dir/idx5k" --partitions 2 --quiet
expect 0 "$A" gen --n 600 --dim 5000 --clusters 4 --seed 9 --out "$dir/i5k.u8bin" --quiet
expect 0 "$A" insert --index "$dir/idx5k" --data "$dir/i5k.u8bin" --quiet
expect 0 "$A" compact --index "$dir/idx5k" --split-limit 300 --json
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["partitions_split"]>=1, d' "$dir/out" \
	|| fail "no split at dimension 5000: $(cat "$dir/out")"
expect 0 "$A" verify --index "$dir/idx5k"
rm -rf "$dir/idx5k" "$dir/d5k.u8bin" "$dir/i5k.u8bin"

# ---- --json with a path that is not UTF-8: the output still parses (strict UTF-8)
bad=$(printf '%s/bad\xff\xc3(\xe2\x82.fbin' "$dir")
expect 0 "$A" gen --n 10 --dim 8 --out "$bad" --quiet --json
python3 -c 'import json,sys; d=json.loads(open(sys.argv[1],"rb").read().decode("utf-8")); assert d["out"].endswith("bad\ufffd\ufffd(\ufffd\ufffd.fbin"), d' "$dir/out" \
	|| fail "--json with a non-UTF-8 path is not valid JSON: $(od -c "$dir/out" | head -3)"
expect 0 "$A" gen --n 10 --dim 8 --out "$dir/$(printf 'ok\xc3\xa9\x01.fbin')" --quiet --json
python3 -c 'import json,sys; d=json.loads(open(sys.argv[1],"rb").read().decode("utf-8")); assert d["out"].endswith("ok\u00e9\u0001.fbin"), d' "$dir/out" \
	|| fail "--json mangled valid UTF-8: $(cat "$dir/out")"

# ---- a full disk during insert: "no space left on device", naming the index
# (needs a small file system: a 3 MiB tmpfs, when this user may mount one)
mkdir "$dir/full"
if mount -t tmpfs -o size=3M tmpfs "$dir/full" 2>/dev/null; then
	trap 'umount "$dir/full" 2>/dev/null; rm -rf "$dir"' EXIT
	expect 0 "$A" build --data "$dir/b.u8bin" --index "$dir/full/idx" --partitions 8 --quiet
	expect 0 "$A" gen --n 50000 --dim 32 --seed 5 --out "$dir/ins.u8bin" --quiet
	expect 1 "$A" insert --index "$dir/full/idx" --data "$dir/ins.u8bin" --batch 1000 --quiet
	says "$dir/full/idx: no space left on device"
	grep -q "Input/output error$" "$dir/err" && fail "ENOSPC reported as EIO: $(cat "$dir/err")"
	expect 0 "$A" verify --index "$dir/full/idx"
	umount "$dir/full"
else
	echo "skipped: full-disk insert (cannot mount a tmpfs here)"
fi

echo "hostile_cli: all checks passed"
