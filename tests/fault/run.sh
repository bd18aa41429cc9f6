#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# tests/fault/run.sh: fault injection in the I/O layer and the allocator. Runs
# the real `annann` tool for build, insert, delete, compact and search with one
# fault at a time, at every fault point N (or a stride of them with --quick),
# and checks after each (search: exit 0 with the clean search's answers to the
# byte, or 1 with a message and no output file; the index verifies):
#   - the tool exited 0, or 1 with a message line "annann ...: ..." (never a
#     signal, a hang, a usage error or a silent exit);
#   - `annann verify` finds no problem (run without faults);
#   - the index answers exactly as before the operation, or exactly as after
#     it ran without faults (info counts + the bytes of `search --out`); a
#     success (exit 0) must be the latter: an acknowledged operation is whole;
#   - a failed build leaves neither the index nor a DIR.tmp.* directory; when
#     it leaves its resumable state (DIR.build-state: I/O errors keep it), the
#     same build run again without faults (the disk freed) resumes it, succeeds,
#     gives the after state and removes the state (also with --quick);
#   - (full run) running the operation again without faults then succeeds and
#     gives the after state (the index is still writable).
# Faults: tests/fault/libfault.c (LD_PRELOAD: write/pwrite/writev/pwritev,
# fsync/fdatasync, read/pread/readv/preadv on regular files; EIO, ENOSPC from
# the Nth write on, short transfers; out of memory at the Nth allocation of
# the process from main on, or at every one from it on: the tool's, the
# library's, LMDB's and libc's) and the library's io_uring hook
# (ANNANN_FAULT_OP=uring, src/storage/ioreader.c).
#
#   bash tests/fault/run.sh [--quick] [--store file|lmdb|both] [ANNANN [LIBFAULT]]
#
# Without paths it uses build/tools/annann and build/tests/libfault.so (a
# release build: LD_PRELOAD and ASan do not mix). --quick (what meson runs)
# takes every 4th I/O fault point (every 16th allocation) of the file store,
# without the rerun; the default is every fault point of both stores (about
# 400 I/O points and ~2,000 allocations a store: ~20 min on a busy 2-core
# machine). --sanitized exits 77 (meson: skipped).
# Exit: 0 all cases held, 1 otherwise (each failure is printed with the command
# that reproduces it), 77 skipped.
set -uo pipefail

QUICK=0
STORES=both
ARGS=()
while [ $# -gt 0 ]; do
	case $1 in
	--quick) QUICK=1; STORES=file ;;
	--store) STORES=$2; shift ;;
	--sanitized) echo "fault injection needs LD_PRELOAD, which ASan refuses: skipped"; exit 77 ;;
	*) ARGS+=("$1") ;;
	esac
	shift
done
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
A=$(realpath "${ARGS[0]:-$ROOT/build/tools/annann}")
LIB=$(realpath "${ARGS[1]:-$ROOT/build/tests/libfault.so}")
[ -x "$A" ] || { echo "no annann at $A" >&2; exit 1; }
[ -f "$LIB" ] || { echo "no libfault.so at $LIB" >&2; exit 1; }
if ldd "$A" | grep -q libasan; then
	echo "annann is built with ASan, which refuses LD_PRELOAD: skipped"
	exit 77
fi
export OPENBLAS_NUM_THREADS=1
W=$(mktemp -d "${TMPDIR:-/tmp}/annann-fault.XXXXXX")
trap 'rm -rf "$W"' EXIT
cd "$W"

"$A" gen --n 3000 --dim 16 --queries 20 --queries-out q.fbin --out base.fbin --quiet >/dev/null || exit 1
"$A" gen --n 200 --dim 16 --seed 2 --out ins.fbin --quiet >/dev/null || exit 1
python3 - <<'PY' || exit 1
import struct
# ids 0, 37, 74, ... (82 of the base) and 3000..3049 (inserted ones)
ids = list(range(0, 3000, 37)) + list(range(3000, 3050))
open('del.ivecs', 'wb').write(b''.join(struct.pack('<ii', 1, i) for i in ids))
PY

# Signature of an index's answers: counts and search results.
sig() { # dir out
	"$A" info --index "$1" --json | grep -o '"vectors":[0-9]*,"stored_vectors":[0-9]*,"live_vectors":[0-9]*' >"$2" &&
		"$A" search --index "$1" --queries q.fbin --k 10 --nprobe 8 --out "$2.res.ibin" >/dev/null
}
same() { cmp -s "$1" "$2" && cmp -s "$1.res.ibin" "$2.res.ibin"; }

op_cmd() { # op dir
	case $1 in
	build) echo "$A build --data base.fbin --index $2 --partitions 6 --threads 1 --store $STORE --quiet" ;;
	insert) echo "$A insert --index $2 --data ins.fbin --quiet" ;;
	delete) echo "$A delete --index $2 --ids del.ivecs" ;;
	compact) echo "$A compact --index $2" ;;
	search) echo "$A search --index $2 --queries q.fbin --k 10 --nprobe 8 --out $2.res.ibin" ;;
	esac
}
# The state each operation starts from (an index dir, or none for build).
prepare() { # op dir
	rm -rf "$2" "$2".tmp.* "$2".build-state
	case $1 in
	build) ;;
	insert) cp -a "pre-$STORE" "$2" ;;
	delete | compact | search) cp -a "mid-$STORE" "$2" ;;
	esac
	rm -f "$2.res.ibin"
}

fails=0
cases=0
n_resumed=0
n_ok=0
n_err=0
fail() {
	echo "FAIL: $*"
	echo "  reproduce: cd <dir with the inputs above> && ${REPRO:-}"
	fails=$((fails + 1))
}

# One case: op with fault (class, N, mode). Modes: eio, enospc (sticky), short.
run_case() { # op class n mode
	local op=$1 cls=$2 n=$3 mode=$4 dir=c
	local env=(ANNANN_FAULT_OP=$cls ANNANN_FAULT_N=$n)
	case $mode in
	eio) env+=(ANNANN_FAULT_ERRNO=EIO) ;;
	enospc) env+=(ANNANN_FAULT_ERRNO=ENOSPC ANNANN_FAULT_STICKY=1) ;;
	short) env+=(ANNANN_FAULT_SHORT=1) ;;
	once) ;;                              # malloc: one allocation fails
	sticky) env+=(ANNANN_FAULT_STICKY=1) ;; # malloc: every one from the Nth on
	esac
	[ "$cls" = uring ] || env+=(LD_PRELOAD=$LIB)
	prepare "$op" $dir
	local cmd
	cmd=$(op_cmd "$op" $dir)
	REPRO="${env[*]} $cmd"
	cases=$((cases + 1))
	env "${env[@]}" timeout 120 $cmd >out.txt 2>err.txt
	local rc=$?
	local what="$op, $STORE store, $cls fault $mode at call $n"
	if [ $rc -ne 0 ] && [ $rc -ne 1 ]; then
		fail "$what: exit $rc (signal, hang or usage error): $(head -c 300 err.txt)"
		return
	fi
	if [ $rc -eq 1 ] && ! grep -q "^annann [a-z]*: ." err.txt; then
		fail "$what: exit 1 without an 'annann CMD: message' line: $(head -c 300 err.txt)"
		return
	fi
	if [ "$op" = search ]; then # reads only: the answer or a message, and the index untouched
		if [ $rc -eq 0 ] && ! cmp -s $dir.res.ibin "pre-search-$STORE.sig.res.ibin"; then
			fail "$what: exit 0 with answers that differ from a clean search's"
			return
		fi
		if [ $rc -eq 1 ] && compgen -G "$dir.res.ibin*" >/dev/null; then
			fail "$what: the search failed but left $(echo $dir.res.ibin*)"
			return
		fi
		if ! "$A" verify --index $dir >verify.txt 2>&1; then
			fail "$what: exit $rc, then verify: $(head -c 600 verify.txt)"
			return
		fi
	elif [ "$op" = build ] && [ $rc -eq 1 ]; then
		if [ -e $dir ]; then
			fail "$what: the build failed but left $dir"
		fi
		if compgen -G "$dir.tmp.*" >/dev/null; then
			fail "$what: the build failed but left $(echo $dir.tmp.*)"
			rm -rf $dir.tmp.*
		fi
		if [ -d $dir.build-state ]; then # the disk is freed: the same build resumes
			n_resumed=$((n_resumed + 1))
			if ! $cmd >out.txt 2>err.txt; then
				fail "$what: the rerun over the kept state failed: $(head -c 300 err.txt)"
			elif [ -e $dir.build-state ]; then
				fail "$what: the resumed build left $dir.build-state"
			elif ! "$A" verify --index $dir >verify.txt 2>&1; then
				fail "$what: the resumed build does not verify: $(head -c 600 verify.txt)"
			elif ! sig $dir s.txt || ! same s.txt "post-build-$STORE.sig"; then
				fail "$what: the resumed build differs from an uninterrupted one: $(cat s.txt)"
			fi
			rm -rf $dir $dir.build-state
		fi
	else
		if ! "$A" verify --index $dir >verify.txt 2>&1; then
			fail "$what: exit $rc, then verify: $(head -c 600 verify.txt)"
			return
		fi
		if ! sig $dir s.txt; then
			fail "$what: exit $rc, then info/search failed"
			return
		fi
		if same s.txt "post-$op-$STORE.sig"; then
			:
		elif [ $rc -eq 1 ] && [ "$op" != build ] && same s.txt "pre-$op-$STORE.sig"; then
			:
		else
			fail "$what: exit $rc, and the index is neither as before nor as after: $(cat s.txt) vs before $(cat "pre-$op-$STORE.sig" 2>/dev/null) after $(cat "post-$op-$STORE.sig")"
			return
		fi
	fi
	[ $rc -eq 0 ] && n_ok=$((n_ok + 1)) || n_err=$((n_err + 1))
	if [ $rc -eq 1 ] && [ $QUICK = 0 ] && [ "$op" != search ]; then # still writable: the operation goes through without faults
		if [ "$op" != build ] && same s.txt "post-$op-$STORE.sig"; then
			return # the failure came after the commit: nothing left to redo
		fi
		if ! $cmd >out.txt 2>err.txt; then
			fail "$what: after the fault, the operation fails without one: $(head -c 300 err.txt)"
			return
		fi
		if ! sig $dir s.txt || ! same s.txt "post-$op-$STORE.sig"; then
			fail "$what: after the fault, a clean rerun does not give the after state"
		fi
	fi
}

[ "$STORES" = both ] && STORES="file lmdb"
for STORE in $STORES; do
	# The states and signatures without faults.
	rm -rf "pre-$STORE" "mid-$STORE" x
	$(op_cmd build "pre-$STORE") >/dev/null || exit 1
	cp -a "pre-$STORE" "mid-$STORE"
	$(op_cmd insert "mid-$STORE") >/dev/null || exit 1
	sig "pre-$STORE" "post-build-$STORE.sig" && sig "pre-$STORE" "pre-insert-$STORE.sig" &&
		sig "mid-$STORE" "post-insert-$STORE.sig" && sig "mid-$STORE" "pre-delete-$STORE.sig" &&
		sig "mid-$STORE" "pre-compact-$STORE.sig" && sig "mid-$STORE" "pre-search-$STORE.sig" || exit 1
	for op in delete compact; do
		prepare $op x
		$(op_cmd $op x) >/dev/null || exit 1
		sig x "post-$op-$STORE.sig" || exit 1
	done
	total=0
	for op in build insert delete compact search; do
		# Calls per class in a run without faults.
		prepare $op x
		rm -f count.txt
		ANNANN_FAULT_OP=count ANNANN_FAULT_COUNT="$W/count.txt" LD_PRELOAD=$LIB $(op_cmd $op x) >/dev/null || exit 1
		prepare $op x
		ANNANN_FAULT_OP=uring ANNANN_FAULT_COUNT="$W/count.txt" $(op_cmd $op x) >/dev/null || exit 1
		read -r nw nf nr nm < <(awk '$1=="write"{w=$2>w?$2:w; f=$4>f?$4:f; r=$6>r?$6:r; m=$10>m?$10:m}
			END{print w+0, f+0, r+0, m+0}' count.txt)
		nu=$(awk '$1=="uring"{u=$2>u?$2:u} END{print u+0}' count.txt)
		echo "== $op ($STORE store): $nw writes, $nf fsyncs, $nr reads, $nu io_uring completions, $nm allocations"
		for spec in "write $nw eio" "write $nw enospc" "write $nw short" "fsync $nf eio" \
			"read $nr eio" "read $nr short" "uring $nu eio" "uring $nu short" \
			"malloc $nm once" "malloc $nm sticky"; do
			set -- $spec
			stride=1
			[ $QUICK = 1 ] && stride=4
			[ $QUICK = 1 ] && [ $1 = malloc ] && stride=16 # hundreds of allocations an operation
			start=1
			[ $QUICK = 1 ] && start=$(( (cases % stride) + 1 ))
			for ((n = start; n <= $2; n += stride)); do
				run_case $op $1 $n $3
				total=$((total + 1))
			done
		done
	done
	echo "== $STORE store: $total fault points"
done
echo "fault injection: $cases cases ($n_ok exited 0, $n_err exited 1 with a message; $n_resumed failed builds resumed over their kept state), $fails failures"
[ $fails -eq 0 ]
