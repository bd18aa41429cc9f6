#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# tools/run.sh: one entry point for a fresh Debian 12 machine (run as root).
#
#   bash tools/run.sh demo    install dependencies, build, run the demo
#   bash tools/run.sh test    install dependencies, build, run every test in a
#                             release build and in an ASan+UBSan build, then
#                             each libFuzzer target for FUZZ_SECONDS (15 s)
#   bash tools/run.sh deps    only install the Debian packages
#   bash tools/run.sh bench   also install the peers' packages (FAISS, SPTAG,
#                             fio, Fashion-MNIST) used by bench/
#
# The Python package is built by meson (python/annann) with Debian's
# /usr/bin/python3, and `test` also installs it the way users do
# (pip install --no-build-isolation . into a venv that sees Debian's numpy)
# and runs its pytest suite against that installation.
#
# Environment: DEMO_N (demo base size, default 1000000), BUILD_DIR (default
# build), JOBS (ninja -j, default nproc), FUZZ_SECONDS (per fuzz target, 15),
# FUZZ_SEED (libFuzzer seed, 1).
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR=${BUILD_DIR:-build}
JOBS=${JOBS:-$(nproc)}
DEPS="gcc pkg-config meson ninja-build liburing-dev liblmdb-dev libopenblas-dev libzstd-dev
      libmetis-dev libxxhash-dev zlib1g-dev
      python3-dev python3-numpy python3-mesonpy python3-pytest python3-matplotlib python3-venv python3-pip"
# clang and libFuzzer for tests/fuzz (run by `test`).
FUZZ_DEPS="clang libclang-rt-14-dev libfuzzer-14-dev"
BENCH_DEPS="python3 python3-numpy python3-faiss python3-matplotlib sptag fio jq dataset-fashion-mnist time
            lmdb-utils libaio1 libboost-program-options1.74.0 liblapacke libgoogle-perftools4 libgomp1"

install_pkgs() {
	local missing=()
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
	done
	if [ ${#missing[@]} -gt 0 ]; then
		echo "== installing: ${missing[*]}"
		if [ "$(id -u)" -ne 0 ]; then
			echo "run as root (or install these packages yourself): ${missing[*]}" >&2
			exit 1
		fi
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq
		apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	fi
}

PY=/usr/bin/python3

# pip install --no-build-isolation . into a throw-away venv, then pytest on
# the installed package. pytest's exit 5 (no test collected) is a failure:
# the suite must exist and be found.
python_tests() {
	local tmp
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' RETURN
	"$PY" -m venv --system-site-packages "$tmp/venv"
	"$tmp/venv/bin/pip" install -q --no-build-isolation --no-index . >"$tmp/pip.log" 2>&1 ||
		{ cat "$tmp/pip.log" >&2; echo "pip install --no-build-isolation . failed" >&2; return 1; }
	local rc=0
	(cd "$tmp" && ANNANN_TOOL="$OLDPWD/$BUILD_DIR/tools/annann" OPENBLAS_NUM_THREADS=1 \
		"$tmp/venv/bin/python" -m pytest -q -p no:cacheprovider "$OLDPWD/python/tests" \
		"$OLDPWD/bench/ann_benchmarks/tests") || rc=$?
	if [ "$rc" -eq 5 ]; then
		echo "pytest collected no tests from python/tests and bench/ann_benchmarks/tests" >&2
		return 1
	fi
	return "$rc"
}

build() {
	local dir=$1
	shift
	if [ ! -f "$dir/build.ninja" ]; then
		meson setup "$dir" "$@" >/dev/null
	fi
	ninja -C "$dir" -j "$JOBS"
}

cmd=${1:-}
case "$cmd" in
deps)
	install_pkgs $DEPS
	;;
test)
	install_pkgs $DEPS $FUZZ_DEPS
	build "$BUILD_DIR"
	meson test -C "$BUILD_DIR" --print-errorlogs --num-processes "$JOBS"
	echo "== sanitizer build (address, undefined)"
	build "$BUILD_DIR-asan" -Dbuildtype=debug -Db_sanitize=address,undefined -Db_lundef=false
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
		meson test -C "$BUILD_DIR-asan" --print-errorlogs --num-processes "$JOBS" --timeout-multiplier 4
	echo "== Python package: pip install --no-build-isolation ., pytest"
	python_tests
	# A fixed seed (tests/fuzz/run.sh): the same mutations on every machine, so
	# what CI fuzzes can be fuzzed, and further, before a change is submitted.
	echo "== fuzzing (libFuzzer, ASan+UBSan), ${FUZZ_SECONDS:-15} s per target, seed ${FUZZ_SEED:-1}"
	FUZZ_BUILD_DIR="$BUILD_DIR-fuzz" JOBS="$JOBS" FUZZ_SEED="${FUZZ_SEED:-1}" \
		bash tests/fuzz/run.sh "${FUZZ_SECONDS:-15}"
	echo "== all tests passed"
	;;
demo)
	install_pkgs $DEPS
	build "$BUILD_DIR"
	exec bash tools/demo.sh "$BUILD_DIR/tools/annann"
	;;
bench)
	install_pkgs $DEPS $BENCH_DEPS
	build "$BUILD_DIR"
	;;
*)
	echo "usage: bash tools/run.sh demo|test|deps|bench" >&2
	exit 2
	;;
esac
