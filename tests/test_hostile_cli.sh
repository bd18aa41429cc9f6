#!/usr/bin/env bash
# Description: issue 13, hostile inputs, options and output files through the
# real annann binary: each case must end in one line on stderr naming the
# file or option, exit 1 (bad data) or 2 (bad usage), never a signal, and
# must leave no file outside the output path. docs/HOSTILE.md lists the cases.
set -uo pipefail
A=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
# expect CODE CMD...: runs CMD, checks its exit status, keeps stdout/stderr in $dir/out, $dir/err
expect() {
	local want=$1; shift
	"$@" >"$dir/out" 2>"$dir/err"
	local got=$?
	[ "$got" = "$want" ] || { cat "$dir/err" >&2; fail "'$*' exited $got, expected $want"; }
}
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
