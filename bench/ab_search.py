#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""bench/ab_search.py: an interleaved A/B of two annann binaries on one search.

    python3 bench/ab_search.py --old OLD/annann --new build/tools/annann [--runs 5] \
        -- --index DIR --queries Q --gt GT --nprobe 96 --batch 1 --limit 1000 [--cache 1G --warmup]

Runs `annann search ARGS --json --out FILE` alternately with each binary (old, new, new,
old, ... so neither always runs first), `--runs` times each, and prints per binary the
medians of the round-1 estimate stage (stage_us.estimate, per-query mean), of p50 and of
QPS, with every run's figures. Checks that the two binaries answer the same: the --out
files (ids and distances of the last run of each) compared byte for byte, and every JSON
field but the timings (qps, latency_us, stage_us) equal across all runs of both. Exit
status 1 when they differ, 2 on bad usage. On a shared machine, quote medians of 3 or more
runs and the load average (printed before and after).
"""
import argparse
import filecmp
import json
import os
import statistics
import subprocess
import sys
import tempfile

TIMINGS = ('qps', 'latency_us', 'stage_us')


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    ap.add_argument('--old', required=True, help='the baseline annann binary')
    ap.add_argument('--new', required=True, help='the annann binary under test')
    ap.add_argument('--runs', type=int, default=5, help='runs of each binary (default 5)')
    ap.add_argument('search', nargs=argparse.REMAINDER, help='-- then the arguments of annann search')
    a = ap.parse_args()
    args = a.search[1:] if a.search[:1] == ['--'] else a.search
    if not args or a.runs < 1:
        ap.error('give the search arguments after --, and --runs >= 1')
    bins = {'old': a.old, 'new': a.new}
    res = {k: [] for k in bins}
    ref = None
    same_stats = True
    print('load average', ' '.join(f'{x:.2f}' for x in os.getloadavg()))
    with tempfile.TemporaryDirectory(prefix='ab_search.') as tmp:
        outs = {k: os.path.join(tmp, k + '.out') for k in bins}
        for r in range(a.runs):
            order = ['old', 'new'] if r % 2 == 0 else ['new', 'old']
            for k in order:
                cmd = [bins[k], 'search'] + args + ['--json', '--out', outs[k]]
                p = subprocess.run(cmd, capture_output=True, text=True)
                if p.returncode != 0:
                    sys.exit(f'{k}: {" ".join(cmd)} failed (exit {p.returncode}): {p.stderr.strip()}')
                j = json.loads(p.stdout.strip().splitlines()[-1])
                res[k].append(j)
                fixed = {x: j[x] for x in j if x not in TIMINGS}
                if ref is None:
                    ref = fixed
                elif fixed != ref:
                    same_stats = False
                    print(f'{k} run {r}: stats differ: {fixed} against {ref}')
        same_out = filecmp.cmp(outs['old'], outs['new'], shallow=False)
    print('load average', ' '.join(f'{x:.2f}' for x in os.getloadavg()))
    print(f"--out {'identical' if same_out else 'DIFFERS'}; per-query stats "
          f"{'identical' if same_stats else 'DIFFER'}; recall {ref['recall_at_k']}")
    for k in bins:
        est = [j['stage_us']['estimate'] for j in res[k]]
        p50 = [j['latency_us']['p50'] for j in res[k]]
        qps = [j['qps'] for j in res[k]]
        print(f'{k}: estimate {statistics.median(est):8.1f} us  p50 {statistics.median(p50):8.1f} us  '
              f'QPS {statistics.median(qps):7.0f}   (estimate {[round(x) for x in est]}, '
              f'p50 {[round(x) for x in p50]})')
    return 0 if same_out and same_stats else 1


if __name__ == '__main__':
    sys.exit(main())
