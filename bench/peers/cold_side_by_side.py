#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# bench/peers/cold_side_by_side.py: annann and SPANN from cold storage, interleaved in one run,
# so that both see the same machine. Every setting is its own process, started after the page
# cache is dropped (echo 3 > /proc/sys/vm/drop_caches: needs root); a repetition runs every
# setting once, in the order given, and the medians over the repetitions are reported.
#
#   annann: `annann search --batch 1 --threads 1 --json` on the whole query file (io_uring,
#           O_DIRECT, no cache); bytes = its bytes_read per query; RAM = router_ram_bytes of
#           `annann info --json` and the search process's peak RSS.
#   SPANN:  sptag-ssdserving with the search file written by spann.py (O_DIRECT + AIO for the
#           postings; the head index in RAM); bytes = "Total Disk Page Access" mean x 4096.
#   recall@10 is strict (no tie credit) for both, from their result ids against gt100.bin.
#
# Usage:
#   cold_side_by_side.py --dir DATA --annann BIN --index "NAME=DIR:P1,P2[|MORE ARGS]" [--index ...]
#                        --spann-work W/spann --spann-irn 6,8 --reps 3 --out FILE.jsonl
import argparse
import json
import os
import tempfile

from common import bin_header, drop_caches, emit, log, median, parse_list, read_gt, run, strict_recall
import numpy as np
import spann


def annann_once(a, idx, nprobe, extra, query, gtp, tmp):
	out = os.path.join(tmp, 'res.bin')
	o, _, rss, _ = run([a.annann, 'search', '--index', idx, '--queries', query, '--gt', gtp, '--k', '10',
			    '--nprobe', str(nprobe), '--batch', '1', '--threads', '1', '--out', out, '--json'] + extra,
			   timed=True)
	j = json.loads(o.strip().splitlines()[-1])
	nres, kres = bin_header(out)
	ids = np.fromfile(out, dtype='<i4', count=nres * kres, offset=8).reshape(nres, kres)
	gt, _ = read_gt(gtp)
	return {'recall': strict_recall(ids, gt, 10), 'recall_reported': j['recall_at_k'],
		'bytes': j['bytes_read'], 'ios': j['io_requests'], 'cands': j['candidates'],
		'p50_us': j['latency_us']['p50'], 'p99_us': j['latency_us']['p99'], 'mean_us': 1e6 / j['qps'],
		'stage_us': j['stage_us'], 'io_path': j['io_path'], 'rss_kb': rss}


def spann_once(a, irn, query, gtp, tmp):
	work = a.spann_work
	base_guess = query  # VectorPath is empty at search time; the base is not read
	ini = os.path.join(tmp, 'search_%d.ini' % irn)
	res = os.path.join(tmp, 'spann_res_%d.bin' % irn)
	n, dim = bin_header(query)
	vtype = spann.VTYPE[os.path.splitext(query)[1]][0]
	with open(os.path.join(work, 'build.json')) as f:
		page_limit = json.load(f).get('page_limit', 4)
	with open(ini, 'w') as f:
		f.write(spann.config(base_guess, query, gtp, os.path.join(work, 'idx'), os.path.join(work, 'tmp') + '/',
				     dim, vtype, page_limit, False, irn, res))
	o, e, rss, _ = run(['sptag-ssdserving', ini], timed=True, cwd=work)
	text = o + e
	lat = spann.percentiles(text, 'Total Latency Distribution')
	pages = spann.percentiles(text, 'Total Disk Page Access Distribution')
	head = spann.percentiles(text, 'Head Latency Distribution')
	nres, kres = bin_header(res)
	raw = np.fromfile(res, dtype='<i4', count=nres * kres * 2, offset=8).reshape(nres, kres, 2)
	gt, _ = read_gt(gtp)
	return {'recall': strict_recall(raw[:, :, 0], gt, 10), 'bytes': pages['avg'] * 4096,
		'p50_us': lat['p50'] * 1e3, 'p99_us': lat['p99'] * 1e3, 'mean_us': lat['avg'] * 1e3,
		'head_us': head['avg'] * 1e3 if head else None, 'rss_kb': rss}


def main():
	ap = argparse.ArgumentParser()
	ap.add_argument('--dir', required=True, help='dataset directory: query.u8bin (or .fbin), gt100.bin')
	ap.add_argument('--annann', required=True)
	ap.add_argument('--index', action='append', default=[],
			help='NAME=DIR:P1,P2,... (nprobe values), optionally followed by |ARGS: more search options')
	ap.add_argument('--spann-work', help='the spann directory of bench/peers/spann.py (holds idx, build.json)')
	ap.add_argument('--spann-irn', default='6,8')
	ap.add_argument('--reps', type=int, default=3)
	ap.add_argument('--out', required=True)
	a = ap.parse_args()
	query = next(os.path.join(a.dir, q) for q in ('query.u8bin', 'query.fbin', 'query.i8bin')
		     if os.path.exists(os.path.join(a.dir, q)))
	gtp = os.path.join(a.dir, 'gt100.bin')
	settings = []
	for spec in a.index:
		spec, _, extra = spec.partition('|')
		name, rest = spec.split('=', 1)
		d, probes = rest.rsplit(':', 1)
		info = json.loads(run([a.annann, 'info', '--index', d, '--json'])[0])
		info['extra'] = extra.split()
		for p in parse_list(probes):
			settings.append(('annann', name, d, p, info))
	if a.spann_work:
		for irn in parse_list(a.spann_irn):
			settings.append(('spann', 'spann', None, irn, None))
	runs = {i: [] for i in range(len(settings))}
	with tempfile.TemporaryDirectory() as tmp:
		for r in range(a.reps):
			for i, (system, name, d, p, info) in enumerate(settings):
				log('cold: rep %d/%d %s %s' % (r + 1, a.reps, name, p))
				if not drop_caches():
					raise SystemExit('cold_side_by_side: cannot drop the page cache (run as root)')
				if system == 'annann':
					runs[i].append(annann_once(a, d, p, info['extra'], query, gtp, tmp))
				else:
					runs[i].append(spann_once(a, p, query, gtp, tmp))
	print('| system | setting | recall@10 | KiB/query | p50 us (median; runs) | mean us | peak RSS MiB | index RAM |')
	print('|---|---|---|---|---|---|---|---|')
	for i, (system, name, d, p, info) in enumerate(settings):
		rs = runs[i]
		rec = {'system': system, 'variant': name, 'param': 'nprobe' if system == 'annann' else 'InternalResultNum',
		       'value': p, 'reps': len(rs), 'recall_at_10': rs[0]['recall'],
		       'bytes_per_query': median([x['bytes'] for x in rs]),
		       'p50_us': median([x['p50_us'] for x in rs]), 'p50_us_runs': [x['p50_us'] for x in rs],
		       'p99_us': median([x['p99_us'] for x in rs]), 'mean_us': median([x['mean_us'] for x in rs]),
		       'peak_rss_kb': max(x['rss_kb'] or 0 for x in rs), 'runs': rs}
		if info:
			rec['router_ram_bytes'] = info['router_ram_bytes']
			rec['bytes_on_disk'] = info['bytes_on_disk']
			rec['search_args'] = info['extra']
			ram = '%.2f MiB router' % (info['router_ram_bytes'] / 2**20)
		else:
			hb = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in
				 os.walk(os.path.join(a.spann_work, 'idx', 'HeadIndex')) for f in fs)
			rec['head_index_bytes'] = hb
			ram = '%.1f MiB head index' % (hb / 2**20)
		emit(a.out, rec)
		print('| %s | %s %s | %.4f | %.1f | %.0f (%s) | %.0f | %.1f | %s |' % (
			name, rec['param'], p, rec['recall_at_10'], rec['bytes_per_query'] / 1024, rec['p50_us'],
			', '.join('%.0f' % x for x in rec['p50_us_runs']), rec['mean_us'], rec['peak_rss_kb'] / 1024, ram))


if __name__ == '__main__':
	main()
