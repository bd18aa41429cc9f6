#!/usr/bin/env bash
# Description: docs/API.md's example builds an index and finds a vector of
# the file as its own nearest neighbour.
set -euo pipefail
example=$1
annann=$2
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$annann" gen --n 2000 --dim 16 --seed 3 --out "$dir/base.fbin" --quiet >/dev/null
out=$("$example" "$dir/base.fbin" "$dir/idx")
echo "$out"
grep -q "^2000 vectors of dimension 16 in 16 partitions, router kmeans$" <<<"$out"
[ "$(grep -c '^query [01] (4 partitions' <<<"$out")" = 2 ]
grep -q "^inserted 1 vector as id 2000$" <<<"$out"
# A second build into the same directory must refuse.
if "$example" "$dir/base.fbin" "$dir/idx" 2>"$dir/err"; then
	echo "second build succeeded"; exit 1
fi
grep -q "already exists" "$dir/err"
