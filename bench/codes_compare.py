#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# bench/codes_compare.py: format 1 blocks (zstd, whole-block reads) against codes blocks
# (RaBitQ heads + exact pages, two-round reads) in the same run, from cold storage: the page
# cache is dropped before every setting (needs root), reads are O_DIRECT, batch 1, 1 thread.
# Prints one JSON line per setting and a table of bytes/query and p50 at recall@10 = 0.9
# (linear interpolation between the two sweep points around 0.9).
#
#   python3 bench/codes_compare.py --annann build/tools/annann --base B --queries Q --gt G \
#       --work /tmp/cc --parts 60,256 --bits 1,2,4 --nprobes 1,2,3,4,6,8,12,16 --reranks 50,100,200
import argparse
import json
import os
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
	rows = sorted(rows, key=lambda r: r['nprobe'])
	for a, b in zip(rows, rows[1:]):
		if a['recall_at_k'] < 0.9 <= b['recall_at_k']:
			t = (0.9 - a['recall_at_k']) / (b['recall_at_k'] - a['recall_at_k'])
			return a[key] + t * (b[key] - a[key])
	if rows and rows[0]['recall_at_k'] >= 0.9:
		return rows[0][key]
	return None


def main():
	ap = argparse.ArgumentParser()
	ap.add_argument('--annann', required=True)
	ap.add_argument('--base', required=True)
	ap.add_argument('--queries', required=True)
	ap.add_argument('--gt', required=True)
	ap.add_argument('--work', required=True)
	ap.add_argument('--parts', default='60')
	ap.add_argument('--bits', default='1')
	ap.add_argument('--nprobes', default='1,2,3,4,6,8,12,16')
	ap.add_argument('--reranks', default='100')
	ap.add_argument('--eps', default='0', help='--rerank-eps values (0 = default)')
	ap.add_argument('--phases', default='2', help='--rerank-phases values')
	ap.add_argument('--limit', type=int, default=1000)
	ap.add_argument('--store', default='file')
	ap.add_argument('--reps', type=int, default=1, help='runs per setting; the median p50 is kept')
	ap.add_argument('--no-old', action='store_true', help='skip the format 1 baseline')
	a = ap.parse_args()
	os.makedirs(a.work, exist_ok=True)
	variants = []
	for p in a.parts.split(','):
		if not a.no_old:
			# --codes none and --balance 0: format 1 without a size cap, as measured (the
			# build's defaults would write codes with balance 1.3; docs/DESIGN.md "Defaults")
			variants.append(('old-p%s' % p, ['--partitions', p, '--codes', 'none', '--balance', '0'], [None]))
		for b in a.bits.split(','):
			variants.append(('codes%s-p%s' % (b, p), ['--partitions', p, '--balance', '0', '--codes', 'rabitq',
								  '--code-bits', b],
					 [(int(r), float(e), int(ph)) for r in a.reranks.split(',') for e in a.eps.split(',')
					  for ph in a.phases.split(',')]))
	summary = []
	for name, bargs, reranks in variants:
		idx = os.path.join(a.work, name)
		if not os.path.exists(idx):
			sh([a.annann, 'build', '--data', a.base, '--index', idx, '--store', a.store, '--quiet'] + bargs)
		info = json.loads(sh([a.annann, 'info', '--index', idx, '--json']))
		for rr in reranks:
			rows = []
			for npb in a.nprobes.split(','):
				runs = []
				for _ in range(a.reps):
					drop()
					cmd = [a.annann, 'search', '--index', idx, '--queries', a.queries, '--gt', a.gt, '--nprobe',
					       npb, '--limit', str(a.limit), '--json']
					if rr:
						cmd += ['--rerank', str(rr[0]), '--rerank-eps', str(rr[1]), '--rerank-phases', str(rr[2])]
					runs.append(json.loads([l for l in sh(cmd).splitlines() if l.startswith('{')][0]))
				runs.sort(key=lambda j: j['latency_us']['p50'])
				j = runs[len(runs) // 2]
				row = {'variant': name, 'rerank': rr, 'nprobe': int(npb), 'recall_at_k': j['recall_at_k'],
				       'bytes': j['bytes_read'], 'ios': j['io_requests'], 'p50_us': j['latency_us']['p50'],
				       'cands': j['candidates'], 'stage_us': j['stage_us'], 'codes': j.get('codes'),
				       'disk_ratio': info['bytes_on_disk'] / info['raw_bytes'], 'code_bits': info.get('code_bits', 0),
				       'head_bytes': info.get('head_bytes', 0)}
				print(json.dumps(row), flush=True)
				rows.append(row)
			summary.append((name, rr, at90(rows, 'bytes'), at90(rows, 'p50_us'), rows[0].get('disk_ratio')))
	print('\n| variant | rerank, eps, phases | KiB/query at 0.9 | p50 us at 0.9 | disk / raw |')
	print('| --- | --- | --- | --- | --- |')
	for name, rr, b, p, dr in summary:
		print('| %s | %s | %s | %s | %s |' % (name, '%d, %g, %d' % rr if rr else '-', '%.0f' % (b / 1024) if b else 'n/a',
						       '%.0f' % p if p else 'n/a', '%.2f' % dr if dr else '?'))


if __name__ == '__main__':
	main()
