# shellcheck shell=bash
# Sourced by the CLI test scripts (`. "$(dirname "$0")/cli_common.sh"` after `set -uo
# pipefail`), with the script's own arguments: A is the annann binary ($1), dir a temporary
# directory removed at exit, fail prints FAIL and exits 1, and expect CODE CMD... runs CMD,
# keeps its stdout and stderr in $dir/out and $dir/err, and fails unless it exits CODE.
A=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
expect() {
	local want=$1; shift
	"$@" >"$dir/out" 2>"$dir/err"
	local got=$?
	[ "$got" = "$want" ] || { cat "$dir/err" >&2; fail "'$*' exited $got, expected $want"; }
}
