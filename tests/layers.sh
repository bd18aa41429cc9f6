#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# tests/layers.sh: src/ is laid out by layer, and dependencies run one way,
# downward (docs/DESIGN.md, "Module map"):
#
#   core     <- errors, distances and SIMD, vector I/O, spill, gen, gt, RaBitQ codes
#   storage  <- core               (block codecs, catalog, stores)
#   routing  <- core               (k-means, HNSW, MLPs, partitioning, routers)
#   index    <- core, storage, routing   (open, build, search, update)
#
# This script fails when a file includes a project header from a layer it may
# not use, or a header that is in no layer (or in two).
set -euo pipefail
cd "$(dirname "$0")/../src"
declare -A allowed=(
	[core]="core"
	[storage]="core storage"
	[routing]="core routing"
	[index]="core storage routing index"
)
declare -A layer_of=()
for d in core storage routing index; do
	for h in "$d"/*.h; do
		b=$(basename "$h")
		if [ -n "${layer_of[$b]:-}" ]; then
			echo "layers: $b is in both src/${layer_of[$b]} and src/$d" >&2
			exit 1
		fi
		layer_of[$b]=$d
	done
done
bad=0
for d in core storage routing index; do
	for f in "$d"/*.[ch]; do
		while IFS= read -r h; do
			[ "$h" = annann.h ] && continue
			l=${layer_of[$h]:-}
			if [ -z "$l" ]; then
				echo "layers: src/$f includes \"$h\", which is in no layer of src/" >&2
				bad=1
			elif [[ " ${allowed[$d]} " != *" $l "* ]]; then
				echo "layers: src/$f ($d) includes \"$h\" from $l; $d may use only: ${allowed[$d]}" >&2
				bad=1
			fi
		done < <(sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1/p' "$f")
	done
done
[ "$bad" = 0 ] && echo "layers: every include in src/ runs downward"
exit "$bad"
