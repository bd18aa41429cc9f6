#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# bench/cold_sweep.sh ANNANN INDEX QUERIES GT P...: one `annann search --batch 1 --json` per
# nprobe value P, each from cold storage (`sync; echo 3 > /proc/sys/vm/drop_caches` first, so
# the catalog and anything else come from the device too; blocks are read with O_DIRECT anyway).
# P = "default" runs without --nprobe (the index's default_nprobe). Needs root for the drop.
# Prints one JSON object per setting (docs/CLI.md "search" names the keys).
set -euo pipefail
A=$1 idx=$2 q=$3 gt=$4
shift 4
for p in "$@"; do
	sync
	echo 3 > /proc/sys/vm/drop_caches
	if [ "$p" = default ]; then
		"$A" search --index "$idx" --queries "$q" --gt "$gt" --batch 1 --json
	else
		"$A" search --index "$idx" --queries "$q" --gt "$gt" --batch 1 --nprobe "$p" --json
	fi
done
