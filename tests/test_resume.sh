#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# tests/test_resume.sh: the resumable build (issue 15 item 2). Kills builds
# with SIGKILL at random moments, several times in a row, resumes them with
# the same command, and checks that the result equals an uninterrupted
# build's: blocks.dat byte for byte past its 4 KiB header (same partitions,
# same vectors, same layout), `annann info --json`, `annann verify`, and the
# result file of a fixed query set (`search --out`) byte for byte. First it
# checks that two uninterrupted builds (threads 2 and 1) agree, which the
# comparison rests on. Then: changed data or option starts over with a
# message naming it, --restart, state of another version refused, a second
# build of the same index refused while the first runs.
#
#   bash tests/test_resume.sh ANNANN [SEED]
#
# The seed (random unless given, or RESUME_SEED) is printed: rerun with it to
# get the same kill delays. ANNANN_BUILD_SMALL_UNITS=1 (a library test hook)
# makes every unit small (a spill checkpoint per chunk, a commit per
# partition) so that kills land between many units of small data.
set -uo pipefail
A=$(realpath "$1")
SEED=${2:-${RESUME_SEED:-$(( $(date +%s%N) % 1000000007 ))}}
echo "seed $SEED (rerun: bash tests/test_resume.sh ANNANN $SEED)"
dir=$(mktemp -d "${TMPDIR:-/tmp}/annann-resume.XXXXXX")
trap 'kill -9 $bpid 2>/dev/null; rm -rf "$dir"' EXIT
bpid=
fails=0
fail() { echo "FAIL: $* (seed $SEED)"; fails=$((fails + 1)); }
says() { grep -qF -- "$1" "$2" || fail "$2 lacks '$1': $(cat "$2")"; }
export OPENBLAS_NUM_THREADS=1 ANNANN_BUILD_SMALL_UNITS=1
cd "$dir" || exit 1
RANDOM=$SEED

"$A" gen --n 20000 --dim 32 --seed 7 --out b.u8bin --queries 50 --queries-out q.u8bin --quiet >/dev/null || exit 1
"$A" gen --n 20000 --dim 32 --seed 8 --out other.u8bin --quiet >/dev/null || exit 1

# The configurations: k-means (no observe), and replicas with SOAR and a
# dictionary (more state: the dictionary unit, several copies per vector).
CONFIGS=("--partitions 20" "--partitions 16 --replicas 2 --soar 1 --dict --encoding f32")

build() { # build IDX CONFIG [extra...]: the command every run of one build repeats
	local idx=$1 cfg=$2
	shift 2
	# shellcheck disable=SC2086
	"$A" build --data b.u8bin --index "$idx" $cfg --mem 16M --seed 3 --quiet "$@"
}
bg() { # bg IDX CONFIG: build in the background, its pid in bpid (exec: the pid is annann's)
	local idx=$1 cfg=$2
	# shellcheck disable=SC2086
	exec "$A" build --data b.u8bin --index "$idx" $cfg --mem 16M --seed 3 --quiet
}

# sig IDX OUT: what must be equal
sig() {
	"$A" verify --index "$1" >/dev/null 2>&1 || { fail "verify $1: $("$A" verify --index "$1" 2>&1 | tail -3)"; return 1; }
	"$A" info --index "$1" --json | sed 's/"bytes_on_disk":[0-9]*,//' >"$2.info"
	"$A" search --index "$1" --queries q.u8bin --k 10 --nprobe 4 --out "$2.res" >/dev/null 2>&1 || fail "search $1"
	tail -c +4097 "$1/blocks.dat" >"$2.blocks"
}
same() { # same A B: signatures equal
	cmp -s "$1.info" "$2.info" || fail "info differs: $(cat "$1.info") vs $(cat "$2.info")"
	cmp -s "$1.res" "$2.res" || fail "search results differ ($1 vs $2)"
	cmp -s "$1.blocks" "$2.blocks" || fail "blocks.dat differs past its header ($1 vs $2)"
}

resumed_any=""
for c in "${!CONFIGS[@]}"; do
	cfg=${CONFIGS[$c]}
	# ---- reference: two uninterrupted builds agree (threads 2 and 1)
	t0=$(date +%s%N)
	build ref$c "$cfg" --threads 2 || { fail "reference build ($cfg)"; continue; }
	ms=$(( ($(date +%s%N) - t0) / 1000000 ))
	sig ref$c R$c
	if [ "$c" = 0 ]; then
		build ref${c}b "$cfg" --threads 1 || fail "second reference build"
		sig ref${c}b R${c}b && same R$c R${c}b
	fi
	[ -e ref$c.build-state ] && fail "the state stayed after a finished build"
	echo "config '$cfg': uninterrupted build ${ms} ms"
	# ---- kill rounds: each round kills 1..3 times at random delays within
	# the reference's duration, then lets the build finish
	for round in 1 2; do
		idx=k$c.$round
		kills=$(( RANDOM % 3 + 1 ))
		log=""
		published_then_killed=""
		for k in $(seq "$kills"); do
			delay=$(( RANDOM % (ms + 1) ))
			bg "$idx" "$cfg" 2>"err.$k" &
			bpid=$!
			sleep "$(awk -v d="$delay" 'BEGIN { printf "%.3f", d / 1000 }')"
			kill -9 "$bpid" 2>/dev/null
			wait "$bpid" 2>/dev/null
			bpid=
			log="$log kill@${delay}ms[$(grep -ho 'resuming: [a-z]* [0-9/]*' "err.$k" | tr '\n' ';')]"
			# finished before the kill; or published, then killed before it
			# removed its state (the next build of the name clears that one:
			# the "killed between publishing DIR and removing the state" case below)
			[ -e "$idx" ] && { published_then_killed=1; break; }
		done
		if [ ! -e "$idx" ]; then
			build "$idx" "$cfg" 2>err.final || { fail "resumed build: $(cat err.final)"; continue; }
			log="$log final[$(grep -ho 'resuming: [a-z]* [0-9/]*' err.final | tr '\n' ';')]"
		fi
		echo "config $c round $round:$log"
		case $log in *resuming:*) resumed_any=1 ;; esac
		[ -z "$published_then_killed" ] && [ -e "$idx.build-state" ] &&
			fail "the state stayed after the resumed build finished"
		rm -rf "$idx.build-state"
		sig "$idx" S && same R$c S
		rm -rf "$idx"
	done
done
[ -n "$resumed_any" ] || echo "note: no round resumed anything (every kill came before the first unit)"

# ---- resumes from each phase, deterministically: stop the build with
# SIGSTOP once a unit file appears, kill it, resume, compare
cfg=${CONFIGS[0]}
for unit in sample spill.ckpt routed; do
	bg p "$cfg" 2>/dev/null &
	bpid=$!
	for _ in $(seq 400); do [ -e p.build-state/$unit ] && break; sleep 0.01; done
	kill -9 "$bpid" 2>/dev/null; wait "$bpid" 2>/dev/null; bpid=
	[ -e p ] && { rm -rf p; continue; } # finished first: nothing to resume
	build p "$cfg" 2>err.p || fail "resume after $unit: $(cat err.p)"
	case $unit in
	sample) says "resuming: sample done" err.p ;;
	router) says "resuming: router done" err.p ;;
	route.log | spill.ckpt) says "resuming: r" err.p ;;
	routed) says "resuming: route done" err.p ;;
	esac
	sig p S && same R0 S
	rm -rf p
done

# ---- invalidation: another option, changed data, --restart, another version
stop_after_state() { # stop_after_state IDX CFG: leaves IDX.build-state of a killed build
	bg "$1" "$2" 2>/dev/null &
	bpid=$!
	for _ in $(seq 400); do [ -e "$1.build-state/router" ] && break; sleep 0.01; done
	kill -9 "$bpid" 2>/dev/null; wait "$bpid" 2>/dev/null; bpid=
	[ -d "$1.build-state" ] || fail "no state left by the killed build of $1"
}
stop_after_state v "$cfg"
build v "$cfg" --zstd-level 5 2>err.v || fail "build with another option: $(cat err.v)"
says "v.build-state: option zstd_level changed (3 -> 5): the saved state is invalid, starting over" err.v
"$A" verify --index v >/dev/null || fail "verify v"
[ "$("$A" info --index v --json | grep -o '"block_bytes":[0-9]*')" = "$(grep -o '"block_bytes":[0-9]*' R0.info)" ] &&
	fail "the build with --zstd-level 5 has the blocks of level 3 (the old state was used?)"
rm -rf v

stop_after_state w "$cfg"
touch -d '2001-01-01' b.u8bin
build w "$cfg" 2>err.w || fail "build after the data changed: $(cat err.w)"
says "the data file changed (modification time)" err.w
says "starting over" err.w
sig w S && same R0 S
rm -rf w

stop_after_state x "$cfg"
cp other.u8bin b.u8bin.new && mv b.u8bin b.u8bin.keep && mv b.u8bin.new b.u8bin
touch -r b.u8bin.keep b.u8bin # same size and mtime, other content
build x "$cfg" 2>err.x || fail "build after the content changed: $(cat err.x)"
says "the data file changed (content of its sampled pages)" err.x
rm -rf x
mv b.u8bin.keep b.u8bin

stop_after_state y "$cfg"
build y "$cfg" --restart 2>err.y || fail "--restart: $(cat err.y)"
says "y.build-state: --restart: the saved build state is thrown away" err.y
grep -q "resuming:" err.y && fail "--restart resumed: $(cat err.y)"
sig y S && same R0 S
rm -rf y

stop_after_state z "$cfg"
printf 'ANNBSU00' | dd of=z.build-state/state bs=1 seek=0 conv=notrunc status=none
build z "$cfg" 2>err.z
rc=$?
[ $rc = 1 ] || fail "state of another version: exit $rc, expected 1"
says "z.build-state: saved by another annann version" err.z
says "--restart" err.z
[ -e z ] && fail "a build from state of another version published an index"
build z "$cfg" --restart 2>err.z || fail "--restart over another version's state: $(cat err.z)"
sig z S && same R0 S
rm -rf z

# ---- one builder per index: a second build while the first runs is refused
bg s "$cfg" 2>/dev/null &
bpid=$!
for _ in $(seq 400); do [ -e s.build-state/state ] && break; sleep 0.01; done
kill -STOP "$bpid"
build s "$cfg" 2>err.s
rc=$?
kill -CONT "$bpid"
wait "$bpid" || fail "the first build failed after the second was refused"
bpid=
[ $rc = 1 ] || fail "a second build of a running one: exit $rc, expected 1"
says "s.build-state: another build of this index is running (annann build pid" err.s
sig s S && same R0 S

# ---- killed between publishing DIR and removing the state: the next build
# of DIR removes that state (no index/ in it, nobody holds its lock)
mkdir s.build-state && echo "annann build pid 1" >s.build-state/lock && cp R0.info s.build-state/state
build s "$cfg" 2>err.s2
rc=$?
[ $rc = 1 ] || fail "a build over an existing index: exit $rc, expected 1"
says "already exists" err.s2
says "s.build-state: removed the state of a build that had published s" err.s2
[ -e s.build-state ] && fail "the published build's state stayed"
mkdir s.build-state s.build-state/index && : >s.build-state/lock
build s "$cfg" 2>err.s3
[ -d s.build-state/index ] || fail "a state with index/ was removed while DIR exists"

[ $fails = 0 ] && echo "resume: all checks passed" || echo "resume: $fails failure(s)"
[ $fails = 0 ]
