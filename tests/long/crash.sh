#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# tests/long/crash.sh: the full crash-safety runs (CI runs the same tests with fewer kills).
#
#   bash tests/long/crash.sh [BUILD_DIR] [KILLS]      (defaults: build, 200)
#
# test_publish_crash: a child writes blocks and commits partitions while the parent SIGKILLs it
# at random moments; after each kill the index must open, verify and hold exactly the committed
# partitions (issue: storage, publication protocol).
# test_update: a child inserts, deletes and compacts; after each kill every acknowledged insert
# and delete holds and nothing else changed (issue: updates).
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${1:-build}
KILLS=${2:-200}
[ -x "$B/tests/test_publish_crash" ] || { echo "crash.sh: build first (ninja -C $B)" >&2; exit 1; }
for t in test_publish_crash test_update; do
	echo "== $t, $KILLS kills"
	start=$(date +%s)
	ANNANN_CRASH_ITERS=$KILLS ANNANN_TOOL="$B/tools/annann" "$B/tests/$t"
	echo "== $t passed in $(( $(date +%s) - start )) s"
done
