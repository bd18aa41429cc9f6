#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# tests/fuzz/run.sh: builds the libFuzzer targets (clang, -fsanitize=fuzzer,
# address, undefined) in a build directory of their own and runs each for
# SECONDS, starting from the seed corpus in tests/fuzz/corpus/<target>.
#
#   bash tests/fuzz/run.sh [SECONDS] [TARGET...]     default 60 s, every target
#
# Environment: FUZZ_BUILD_DIR (default build-fuzz), FUZZ_WORK (where the
# growing corpora and crash files go; default $FUZZ_BUILD_DIR/work),
# JOBS (ninja -j, default 2), FUZZ_SEEDS=1 (regenerate the seed corpora with
# fuzz_mkseeds into tests/fuzz/corpus, then exit), FUZZ_SEED (libFuzzer's
# -seed; default random). With a fixed FUZZ_SEED and a fresh FUZZ_WORK the
# mutations are the same sequence on every machine, a slower one running a
# prefix of it: tools/run.sh's `test` (CI) uses seed 1, so a session can run
# CI's fuzzing, and more of it, before it stops.
# A failing target's crash file is replayed with its messages shown, so the
# log says which property or sanitizer check failed.
# Exit status: 0 when no target crashed; 1 otherwise, naming the crash files
# (each is a reproducer: build-fuzz/tests/fuzz/fuzz_<target> <file>).
# tests/fuzz/crashers/<target>/ holds reproducers of bugs found but not fixed
# yet (in code another change owns). Each is replayed first: while one still
# crashes, its target is reported as KNOWN and not fuzzed (the fuzzer would
# only find it again); once all of a target's crashers pass, the target is
# fuzzed again and the script says which files to move into the seed corpus.
set -euo pipefail
cd "$(dirname "$0")/../.."

SECONDS_EACH=${1:-60}
shift || true
ALL="vecio gt block cblock catalog hnsw mlp router cli_number"
TARGETS=${*:-$ALL}
BUILD=${FUZZ_BUILD_DIR:-build-fuzz}
WORK=${FUZZ_WORK:-$BUILD/work}
JOBS=${JOBS:-2}
SEED_ARGS=()
[ -n "${FUZZ_SEED:-}" ] && SEED_ARGS=(-seed="$FUZZ_SEED")

if ! command -v clang >/dev/null; then
	echo "tests/fuzz/run.sh: clang is missing (apt-get install clang libclang-rt-14-dev libfuzzer-14-dev)" >&2
	exit 1
fi
if [ ! -f "$BUILD/build.ninja" ]; then
	# clang warns about SIMD loads that gcc accepts (-Wcast-align on x86); the
	# intrinsics take unaligned pointers, so that one warning is off here.
	CC=clang meson setup "$BUILD" -Dfuzz=true -Dbuildtype=debugoptimized \
		-Db_sanitize=address,undefined -Db_lundef=false -Dc_args=-Wno-cast-align >/dev/null
fi
bins=()
for t in $TARGETS; do bins+=("tests/fuzz/fuzz_$t"); done
if [ "${FUZZ_SEEDS:-0}" = 1 ]; then
	ninja -C "$BUILD" -j "$JOBS" tests/fuzz/fuzz_mkseeds
	rm -rf tests/fuzz/corpus
	"$BUILD/tests/fuzz/fuzz_mkseeds" tests/fuzz/corpus
	exit 0
fi
ninja -C "$BUILD" -j "$JOBS" "${bins[@]}"

# The targets' scratch files (tmpfs when there is one); libFuzzer's exits skip
# the targets' own clean-up, so the directory goes here.
ANNANN_FUZZ_TMP=$(mktemp -d "$( [ -w /dev/shm ] && echo /dev/shm || echo "${TMPDIR:-/tmp}")/annann-fuzz-run.XXXXXX")
export ANNANN_FUZZ_TMP
trap 'rm -rf "$ANNANN_FUZZ_TMP"' EXIT
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export OPENBLAS_NUM_THREADS=1
failed=()
printf '%-12s %12s %10s %8s %s\n' target executions exec/s corpus result
for t in $TARGETS; do
	known=()
	stale=()
	for f in tests/fuzz/crashers/"$t"/*; do
		[ -f "$f" ] || continue
		if "$BUILD/tests/fuzz/fuzz_$t" "$f" >/dev/null 2>&1; then stale+=("$f"); else known+=("$f"); fi
	done
	if [ ${#known[@]} -gt 0 ]; then
		printf '%-12s %12s %10s %8s %s\n' "$t" - - - "KNOWN BUG, not fuzzed: ${known[*]}"
		continue
	fi
	for f in "${stale[@]}"; do echo "note: $f no longer crashes: move it to tests/fuzz/corpus/$t/"; done
	corpus="$WORK/corpus/$t"
	crashes="$WORK/crashes/$t"
	mkdir -p "$corpus" "$crashes"
	log="$WORK/$t.log"
	set +e
	# -close_fd_mask=3: the readers' own refusals are not printed (libFuzzer
	# and the sanitizers still report). rss_limit bounds a target's memory.
	"$BUILD/tests/fuzz/fuzz_$t" "$corpus" "tests/fuzz/corpus/$t" \
		-max_total_time="$SECONDS_EACH" -max_len=65536 -timeout=20 -rss_limit_mb=2048 \
		-close_fd_mask=3 -print_final_stats=1 -artifact_prefix="$crashes/" ${SEED_ARGS[@]+"${SEED_ARGS[@]}"} \
		>"$log" 2>&1
	rc=$?
	set -e
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
	rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
	files=$(find "$corpus" -type f | wc -l)
	if [ $rc -eq 0 ]; then
		res=ok
	else
		res="FAILED (exit $rc, log $log)"
		failed+=("$t")
		# -close_fd_mask hid the target's own message (a violated property
		# names itself on stderr): replay the crash file with it shown.
		for f in "$crashes"/*; do
			[ -f "$f" ] || continue
			echo "== replay of $f" >>"$log"
			"$BUILD/tests/fuzz/fuzz_$t" "$f" >>"$log" 2>&1 || true
		done
	fi
	printf '%-12s %12s %10s %8s %s\n' "$t" "${execs:-?}" "${rate:-?}" "$files" "$res"
done
if [ ${#failed[@]} -gt 0 ]; then
	for t in "${failed[@]}"; do
		echo "== $t: $WORK/$t.log"
		grep -E "ERROR|SUMMARY|property|status|Test unit written|replay|runtime error|\.c:[0-9]+" "$WORK/$t.log" |
			head -30 || true
	done
	exit 1
fi
