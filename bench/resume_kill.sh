#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# bench/resume_kill.sh: the cost of a kill for the resumable build (docs/BENCHMARKS.md
# "Resumable build"). Builds DATA once uninterrupted, once killed with SIGKILL when the
# route log passes KILL_AT bytes (mid-route) and resumed; prints wall/user/RSS of each,
# and checks that both give the same blocks.dat past its header.
#   bash bench/resume_kill.sh ANNANN DATA WORKDIR [KILL_AT_BYTES (default 2000000)] [build options...]
set -uo pipefail
A=$1 D=$2 W=$3 K=${4:-2000000}
shift 3; [ $# -gt 0 ] && shift
OPTS=("$@")
[ ${#OPTS[@]} -gt 0 ] || OPTS=(--mem 1G --threads 2)
mkdir -p "$W" && cd "$W" || exit 1
rm -rf ref kill kill.build-state
/usr/bin/time -f "uninterrupted: %e s wall %U user %S sys %M KB" "$A" build --data "$D" --index ref "${OPTS[@]}" --quiet
"$A" build --data "$D" --index kill "${OPTS[@]}" --quiet &
p=$!
t0=$(date +%s.%N)
while kill -0 $p 2>/dev/null; do
	[ "$(stat -c %s kill.build-state/route.log 2>/dev/null || echo 0)" -gt "$K" ] && break
	sleep 0.2
done
kill -9 $p; wait $p 2>/dev/null
echo "killed after $(echo "$(date +%s.%N) - $t0" | bc) s; state $(du -sh kill.build-state | cut -f1)"
/usr/bin/time -f "resume: %e s wall %U user %S sys %M KB" "$A" build --data "$D" --index kill "${OPTS[@]}"
cmp <(tail -c +4097 ref/blocks.dat) <(tail -c +4097 kill/blocks.dat) && echo "resumed blocks.dat equals the uninterrupted one"
