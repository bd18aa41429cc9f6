#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# bench/peers/annann_run.py: the annann side of bench/peers.sh. Builds the index (file store,
# k-means router, M partitions, --mem 1G) under /usr/bin/time -v, records `annann info --json`,
# then searches from cold storage (O_DIRECT, no cache, batch 1, 1 thread) over the nprobe sweep
# and in warm batch mode (decoded-block cache for every block, --warmup, batch 10000, 1 thread).
import argparse
import json
import os
import shutil

import numpy as np

from common import (dataset_files, drop_caches, emit, log, median, parse_list, run, bin_header, read_bin)


def search_json(out):
	return [json.loads(line) for line in out.splitlines() if line.startswith('{')]


def main():
	ap = argparse.ArgumentParser()
	ap.add_argument('--dir', required=True)
	ap.add_argument('--work', required=True)
	ap.add_argument('--annann', required=True)
	ap.add_argument('--parts', type=int, required=True)
	ap.add_argument('--nprobes', required=True)
	ap.add_argument('--reps', type=int, default=3)
	ap.add_argument('--variant', default='annann', help='name of this build variant')
	ap.add_argument('--build-args', default='', help='extra annann build options')
	ap.add_argument('--out', required=True)
	ap.add_argument('--rebuild', action='store_true')
	ap.add_argument('--build-attempts', type=int, default=3)
	ap.add_argument('--batch', type=int, default=10000, help='queries per batch in the warm runs')
	ap.add_argument('--build-only', action='store_true')
	ap.add_argument('--cold-limit', type=int, default=1000, help='queries in the cold runs')
	a = ap.parse_args()

	base, query = dataset_files(a.dir)
	gt = os.path.join(a.dir, 'gt100.bin')
	n, dim = bin_header(base)
	nq, _ = bin_header(query)
	work = os.path.join(a.work, a.variant)
	os.makedirs(work, exist_ok=True)
	logp = os.path.join(work, 'log.txt')
	idx = os.path.join(work, 'idx')
	nprobes = [p for p in parse_list(a.nprobes) if p <= a.parts]
	common = {'system': a.variant, 'build': 'annann (this tree, meson release)', 'n': n, 'dim': dim,
		  'parts': a.parts}

	if a.rebuild and os.path.exists(idx):
		shutil.rmtree(idx)
	# Router check: a search with nprobe = all partitions must probe every partition. Builds
	# whose centroid graph leaves partitions unreachable are recorded, kept aside, and rebuilt
	# (at most --build-attempts builds).
	def reachable():
		out, _, _, _ = run([a.annann, 'search', '--index', idx, '--queries', query, '--nprobe', str(a.parts),
				    '--limit', '20', '--json'], logp)
		j = search_json(out)[0]
		return j['partitions_probed'], j['candidates']

	attempt = 0
	while not os.path.exists(idx):
		attempt += 1
		cmd = [a.annann, 'build', '--data', base, '--index', idx, '--router', 'kmeans', '--store', 'file',
		       '--partitions', str(a.parts), '--mem', '1G', '--threads', '2', '--json', '--quiet']
		cmd += a.build_args.split()
		log('%s: build %s' % (a.variant, ' '.join(cmd)))
		out, _, rss, wall = run(cmd, logp, timed=True)
		b = search_json(out)
		probed, cands = reachable()
		emit(a.out, dict(common, kind='build', build_s=wall, build_peak_rss_kb=rss, attempt=attempt,
				 build_args=' '.join(cmd[1:]), detail=b[-1] if b else None,
				 router_check={'nprobe': a.parts, 'partitions_probed': probed, 'candidates': cands}))
		if probed < a.parts and attempt < a.build_attempts:
			bad = os.path.join(work, 'idx-unreachable-%d' % attempt)
			shutil.rmtree(bad, ignore_errors=True)
			os.rename(idx, bad)
			log('%s: only %.0f of %d partitions reachable; kept as %s, rebuilding' % (a.variant, probed, a.parts, bad))
	if attempt == 0:
		log('%s: reusing %s' % (a.variant, idx))
	out, _, _, _ = run([a.annann, 'info', '--index', idx, '--json'], logp)
	info = json.loads(out)
	emit(a.out, dict(common, kind='info', bytes_on_disk=info['bytes_on_disk'], info=info))
	if a.build_only:
		return

	# cold: every block from storage (O_DIRECT), batch 1, one thread; reps runs, medians of times.
	# The first --cold-limit queries only (a cold query at high nprobe costs milliseconds).
	cold = [a.annann, 'search', '--index', idx, '--queries', query, '--gt', gt, '--k', '10',
		'--nprobe', ','.join(map(str, nprobes)), '--batch', '1', '--threads', '1', '--cache', '0',
		'--limit', str(a.cold_limit), '--json']
	runs = []
	rss_cold = None
	dropped = False
	for r in range(a.reps):
		dropped = drop_caches()
		log('%s: cold sweep %d/%d (page cache dropped: %s)' % (a.variant, r + 1, a.reps, dropped))
		out, _, rss, _ = run(cold, logp, timed=True)
		rss_cold = max(rss_cold or 0, rss or 0)
		runs.append(search_json(out))
	for i, p in enumerate(nprobes):
		pts = [rr[i] for rr in runs]
		f = pts[0]
		emit(a.out, dict(common, kind='search', mode='cold', nprobe=p, queries=f['queries'],
				 recall_at_10=f['recall_at_k'], bytes_per_query=f['bytes_read'],
				 ios_per_query=f['io_requests'], candidates=f['candidates'],
				 p50_us=median([x['latency_us']['p50'] for x in pts]),
				 p99_us=median([x['latency_us']['p99'] for x in pts]),
				 mean_us=median([sum(x['stage_us'].values()) for x in pts]),
				 qps=median([x['qps'] for x in pts]),
				 stage_us={k: median([x['stage_us'][k] for x in pts]) for k in f['stage_us']},
				 io_path=f['io_path'], simd=f['simd'], search_peak_rss_kb=rss_cold, reps=len(pts),
				 page_cache_dropped=dropped,
				 cmd=' '.join(cold[1:])))

	# warm batch: a cache large enough for every decoded block (f32 bound), --warmup, --batch (10000),
	# over all queries. `annann search --warmup` runs the warm-up pass with its own searchers, so the
	# measured pass starts from an empty cache (it reads the whole index again: bytes_read > 0). The
	# steady state is therefore also measured: the query set twice in one run (no --warmup), and
	# qps = nq / (T_x2 - T_measured), T_measured being the time of the pass measured above.
	cache = max(1 << 30, int(n * dim * 4 * 1.25))
	warm = [a.annann, 'search', '--index', idx, '--queries', query, '--gt', gt, '--k', '10',
		'--nprobe', ','.join(map(str, nprobes)), '--batch', str(a.batch), '--threads', '1',
		'--cache', str(cache), '--warmup', '--json']
	rep = 2
	qrep = os.path.join(work, 'query_x%d%s' % (rep, os.path.splitext(query)[1]))
	if not os.path.exists(qrep):
		q = read_bin(query)
		qq = np.concatenate([q] * rep)
		with open(qrep, 'wb') as f:
			f.write(np.array([len(qq), dim], dtype='<i4').tobytes())
			f.write(qq.tobytes())
	wrep = [x for x in warm if x != '--warmup']
	wrep[wrep.index(query)] = qrep
	gi = wrep.index('--gt')
	del wrep[gi:gi + 2]
	runs = []
	t1s, tRs = {p: [] for p in nprobes}, {p: [] for p in nprobes}
	for r in range(a.reps):
		log('%s: warm sweep %d/%d' % (a.variant, r + 1, a.reps))
		out, _, rss, _ = run(warm, logp, timed=True)
		runs.append((search_json(out), rss))
		for x in runs[-1][0]:
			t1s[x['nprobe']].append(x['queries'] / x['qps'])
		oR, _, _, _ = run(wrep, logp)
		for x in search_json(oR):
			tRs[x['nprobe']].append(x['queries'] / x['qps'])
	for i, p in enumerate(nprobes):
		pts = [rr[0][i] for rr in runs]
		f = pts[0]
		d = [tr - t1 for tr, t1 in zip(tRs[p], t1s[p])]
		dm = median(d)
		emit(a.out, dict(common, kind='search', mode='warm_batch', nprobe=p, queries=f['queries'],
				 recall_at_10=f['recall_at_k'], candidates=f['candidates'],
				 qps_measured=median([x['qps'] for x in pts]),
				 measured_pass_bytes_per_query=f['bytes_read'],
				 qps=nq / dm if dm and dm > 0 else None,
				 qps_steady_runs=[nq / x if x > 0 else None for x in d],
				 qps_method='steady state: nq / (T(query set x2) - T(measured pass after --warmup))',
				 stage_us={k: median([x['stage_us'][k] for x in pts]) for k in f['stage_us']},
				 cache_bytes=cache, search_peak_rss_kb=max(rr[1] or 0 for rr in runs), reps=len(pts),
				 cmd=' '.join(warm[1:]), cmd_steady=' '.join(wrep[1:])))

if __name__ == '__main__':
	main()
