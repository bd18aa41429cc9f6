#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# bench/route_compare.py: routers and probing rules on built indexes, in one run (issue 12):
# the k-means router's HNSW graph against its compact form (--router-bits), fixed nprobe
# against adaptive probing (--probe-eps). Reads are O_DIRECT, batch 1, one thread; with
# --drop the page cache is dropped before every setting (needs root; it also empties the
# cache of everything else running on the machine). Prints one JSON line per setting and a
# table of bytes/query, partitions probed and p50 at recall@10 = 0.9 (linear interpolation
# between the two sweep points around 0.9), router RAM per vector and disk / raw (annann info).
#
#   python3 bench/route_compare.py --annann build/tools/annann --queries Q --gt G \
#       --index graph=/tmp/i1 --index codes1=/tmp/i2 --nprobes 4,5,6,7,8 --eps 0,0.3,0.5
import argparse
import json
import statistics
import subprocess
import sys


def sh(cmd):
	r = subprocess.run(cmd, capture_output=True, text=True)
	if r.returncode != 0:
		sys.exit('failed: %s\n%s' % (' '.join(cmd), r.stderr))
	return r.stdout


def drop():
	subprocess.run(['sync'])
	try:
		with open('/proc/sys/vm/drop_caches', 'w') as f:
			f.write('3\n')
	except OSError as e:
		sys.exit('cannot drop the page cache (%s): run as root' % e)


def at90(rows, key):
	rows = sorted(rows, key=lambda r: (r['recall_at_k'], r['nprobe']))
	for a, b in zip(rows, rows[1:]):
		if a['recall_at_k'] < 0.9 <= b['recall_at_k']:
			t = (0.9 - a['recall_at_k']) / (b['recall_at_k'] - a['recall_at_k'])
			return a[key] + t * (b[key] - a[key])
	return None


def main():
	ap = argparse.ArgumentParser()
	ap.add_argument('--annann', required=True)
	ap.add_argument('--queries', required=True)
	ap.add_argument('--gt', required=True)
	ap.add_argument('--index', action='append', required=True, help='LABEL=DIR, repeatable')
	ap.add_argument('--nprobes', default='4,5,6,7,8')
	ap.add_argument('--eps', default='0', help='--probe-eps values (0 = fixed nprobe)')
	ap.add_argument('--limit', type=int, default=2000)
	ap.add_argument('--reps', type=int, default=1, help='runs per setting; the median p50 is kept')
	ap.add_argument('--drop', action='store_true', help='drop the page cache before every setting')
	a = ap.parse_args()
	nprobes = [int(x) for x in a.nprobes.split(',')]
	epss = [x for x in a.eps.split(',')]
	res = {}
	for spec in a.index:
		label, path = spec.split('=', 1)
		info = json.loads(sh([a.annann, 'info', '--index', path, '--json']))
		for eps in epss:
			rows = []
			for np in nprobes:
				runs = []
				for _ in range(a.reps):
					if a.drop:
						drop()
					cmd = [a.annann, 'search', '--index', path, '--queries', a.queries, '--gt', a.gt,
					       '--nprobe', str(np), '--limit', str(a.limit), '--json']
					if eps != '0':
						cmd += ['--probe-eps', eps]
					runs.append(json.loads(sh(cmd)))
				r = runs[0]
				r['p50_us'] = statistics.median(x['latency_us']['p50'] for x in runs)
				r['label'] = label
				r['probe_eps'] = eps
				print(json.dumps(r), flush=True)
				rows.append(r)
			res[(label, eps)] = (rows, info)
	print('| index | probe eps | KiB/query at 0.9 | partitions probed | p50 us | router B/vector | disk / raw |')
	print('| --- | --- | --- | --- | --- | --- | --- |')
	for (label, eps), (rows, info) in res.items():
		kib = at90(rows, 'bytes_read')
		parts = at90(rows, 'partitions_probed')
		p50 = at90(rows, 'p50_us')
		f = lambda v, fmt: fmt % v if v is not None else 'not reached'
		print('| %s | %s | %s | %s | %s | %.2f | %.2f |' % (
			label, eps if eps != '0' else 'off', f(kib / 1024 if kib else None, '%.1f'), f(parts, '%.2f'),
			f(p50, '%.0f'), info['router_bytes_per_vector'], info['bytes_on_disk'] / info['raw_bytes']))


if __name__ == '__main__':
	main()
