#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# bench/peers/report.py: gathers the JSON lines the steps of bench/peers.sh wrote into the work
# directory and writes bench/results/<name>-<date>.jsonl (every row, plus machine and
# dataset rows) and .md (the side-by-side tables, and the comparison at recall@10 = 0.9,
# interpolated linearly between the two sweep points around it).
import argparse
import datetime
import glob
import json
import os
import platform
import subprocess

from common import interp_at, load_jsonl

TARGET = 0.9


def sh(cmd):
	try:
		return subprocess.run(cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
				      universal_newlines=True).stdout.strip()
	except OSError:
		return ''


def machine(work):
	lscpu = sh('lscpu')
	get = lambda key: next((l.split(':', 1)[1].strip() for l in lscpu.splitlines() if l.startswith(key)), '?')
	flags = get('Flags')
	simd = [f for f in ('avx2', 'fma', 'avx512f', 'avx512bw', 'avx512_vnni') if f in flags.split()]
	mem = sh("awk '/MemTotal/ {print $2}' /proc/meminfo")
	return {'kind': 'machine', 'cpu': get('Model name'), 'cpus': get('CPU(s)'), 'simd': simd,
		'ram_gib': round(int(mem or 0) / 2 ** 20, 1), 'kernel': platform.release(),
		'fs': sh('stat -f -c %%T %s' % work), 'device': sh('df --output=source %s | tail -1' % work),
		'os': sh('. /etc/os-release && echo $PRETTY_NAME'), 'load_avg_at_report': os.getloadavg()[0]}


def f(x, fmt='%.3f', none='-'):
	return none if x is None else fmt % x


def kb(x):
	return '-' if x is None else '%.1f' % (x / 1024)


def mib(x):
	return '-' if x is None else '%.1f' % (x / 2 ** 20)


def table(head, rows):
	out = ['| ' + ' | '.join(head) + ' |', '|' + '|'.join(['---'] * len(head)) + '|']
	out += ['| ' + ' | '.join(str(c) for c in r) + ' |' for r in rows]
	return '\n'.join(out) + '\n'


def main():
	ap = argparse.ArgumentParser()
	ap.add_argument('--work', required=True)
	ap.add_argument('--name', required=True)
	ap.add_argument('--results', required=True)
	ap.add_argument('--dataset', default='')
	ap.add_argument('--command', default='')
	a = ap.parse_args()
	rows = []
	for p in sorted(glob.glob(os.path.join(a.work, 'out', '*.jsonl'))):
		rows += load_jsonl(p)
	mach = machine(a.work)
	date = datetime.date.today().isoformat()
	os.makedirs(a.results, exist_ok=True)
	stem = os.path.join(a.results, '%s-%s' % (a.name, date))
	ds = {'kind': 'dataset', 'name': a.name, 'path': a.dataset, 'date': date, 'command': a.command}
	with open(stem + '.jsonl', 'w') as fo:
		for r in [mach, ds] + rows:
			fo.write(json.dumps(r) + '\n')

	sel = lambda **kw: [r for r in rows if all(r.get(k) == v for k, v in kw.items())]
	md = ['# Peers on %s (%s)\n' % (a.name, date)]
	any_row = next((r for r in rows if 'n' in r), {})
	md.append('Dataset: `%s`, n = %s, dim = %s. Command: `%s`\n' % (a.dataset, any_row.get('n', '?'),
									  any_row.get('dim', '?'), a.command))
	md.append('Machine: %s, %s CPUs (%s), %s GiB RAM, kernel %s, %s on %s; load average %.1f when the '
		  'report was written (shared machine: compare ratios within this run).\n' %
		  (mach['cpu'], mach['cpus'], ' '.join(mach['simd']), mach['ram_gib'], mach['kernel'], mach['fs'],
		   mach['device'], mach['load_avg_at_report']))

	fio = sel(system='fio')
	bw = None
	if fio:
		md.append('## Storage limit (fio, io_uring, O_DIRECT, random reads)\n')
		md.append(table(['block', 'QD', 'IOPS', 'MB/s', 'clat p50 us', 'clat p99 us'],
				[[r['bs'], r['iodepth'], '%.0f' % r['iops'], '%.0f' % r['bw_MBps'], '%.0f' % r['clat_p50_us'],
				  '%.0f' % r['clat_p99_us']] for r in fio]))
		bw = max(r['bw_MBps'] for r in fio) * 1e6

	variants = sorted({r['system'] for r in rows if r.get('system', '').startswith('annann')})
	favs = {}
	for v in variants:
		parts = next((r['parts'] for r in sel(system=v) if 'parts' in r), None)
		fpy = {r['nprobe']: r for r in sel(system='faiss-ivfflat-py', kind='search', nlist=parts)}
		fav = {r['nprobe']: r for r in sel(system='faiss-ivfflat-avx2', kind='search', threads=1, nlist=parts)}
		favs[v] = fav
		cold = {r['nprobe']: r for r in sel(system=v, kind='search', mode='cold')}
		warm = {r['nprobe']: r for r in sel(system=v, kind='search', mode='warm_batch')}
		blds = sel(system=v, kind='build')
		bld = blds[-1] if blds else None
		md.append('## %s against FAISS IVF-Flat, per nprobe\n' % v)
		if bld:
			md.append('Build: `annann %s`: %.1f s, peak RSS %.0f MiB.\n' %
				  (bld['build_args'], bld['build_s'], bld['build_peak_rss_kb'] / 1024))
		for b in blds:
			rc = b.get('router_check') or {}
			if rc and rc['partitions_probed'] < rc['nprobe']:
				md.append('**Router check failed on build attempt %d**: a search with nprobe = %d probed only '
					  '%.1f partitions (%.0f candidates of %d vectors): the centroid graph leaves partitions '
					  'unreachable. That index was set aside%s.\n' %
					  (b['attempt'], rc['nprobe'], rc['partitions_probed'], rc['candidates'], b['n'],
					   ' and rebuilt' if b is not bld else '; the figures below come from it'))
		head = ['nprobe', 'recall annann', 'recall FAISS AVX2', 'recall python3-faiss', 'Δ vs FAISS',
			'cands annann', 'cands FAISS', 'cold KiB/q', 'cold p50 us', 'cold p99 us', 'cold QPS',
			'route/io/decode/scan us', 'annann warm batch QPS', 'FAISS AVX2 QPS (1T)', 'python3-faiss QPS (1T)',
			'annann / FAISS AVX2']
		body = []
		for p in sorted(set(cold) | set(warm)):
			c, w, fp, fa = cold.get(p, {}), warm.get(p, {}), fpy.get(p, {}), fav.get(p, {})
			rec = w.get('recall_at_10', c.get('recall_at_10'))   # warm runs use every query
			ref = fa.get('recall_at_10', fp.get('recall_at_10'))
			st = c.get('stage_us')
			body.append([p, f(rec, '%.4f'), f(fa.get('recall_at_10'), '%.4f'), f(fp.get('recall_at_10'), '%.4f'),
				     f(rec - ref if rec is not None and ref is not None else None, '%+.4f'),
				     f(c.get('candidates'), '%.0f'), f(fp.get('candidates'), '%.0f'),
				     kb(c.get('bytes_per_query')), f(c.get('p50_us'), '%.0f'), f(c.get('p99_us'), '%.0f'),
				     f(c.get('qps'), '%.0f'),
				     '/'.join('%.0f' % st[k] for k in ('route', 'io_wait', 'decode', 'scan')) if st else '-',
				     f(w.get('qps'), '%.0f'), f(fa.get('qps'), '%.0f'), f(fp.get('qps_generic'), '%.0f'),
				     f(w['qps'] / fa['qps'] if w.get('qps') and fa.get('qps') else None, '%.2f')])
		md.append(table(head, body))
		if warm:
			md.append('Warm batch QPS: %s. The QPS of the pass measured right after --warmup, which still '
				  'read every block once: %s.\n' % (next(iter(warm.values()))['qps_method'],
								   ', '.join('%d: %.0f' % (p, warm[p]['qps_measured'])
									     for p in sorted(warm))))

	sp = sel(system='spann', kind='search')
	if sp:
		md.append('## SPANN (sptag-ssdserving), cold, 1 thread, sweep of InternalResultNum\n')
		b = next(iter(sel(system='spann', kind='build')), None)
		if b:
			md.append('Build: %.0f s (%s), peak RSS %.0f MiB, posting page limit %d.\n' %
				  (b['build_s'], ', '.join('%s %.0f s' % kv for kv in (b.get('phases_s') or {}).items()),
				   b['build_peak_rss_kb'] / 1024, b['page_limit']))
		md.append(table(['InternalResultNum', 'recall@10', 'KiB/q', 'pages/q', 'reads/q', 'cands', 'p50 us',
				 'p99 us', 'mean us', 'head mean us', 'QPS'],
				[[r['value'], f(r['recall_at_10'], '%.4f'), kb(r['bytes_per_query']),
				  f(r['pages_per_query'], '%.1f'), f(r['ios_per_query'], '%.1f'), f(r['candidates'], '%.0f'),
				  f(r['p50_us'], '%.0f'), f(r['p99_us'], '%.0f'), f(r['mean_us'], '%.0f'),
				  f(r['head_mean_us'], '%.0f'), f(r['qps'], '%.0f')] for r in sp]))
	dk = sel(system='diskann', kind='search')
	if dk:
		md.append('## DiskANN, cold, W 4, 1 thread, no node cache, sweep of L\n')
		b = next(iter(sel(system='diskann', kind='build')), None)
		i = next(iter(sel(system='diskann', kind='info')), None)
		if b:
			md.append('Build: %.0f s, peak RSS %.0f MiB; PQ %s bytes/vector.\n' %
				  (b['build_s'], b['build_peak_rss_kb'] / 1024, i and i['pq_bytes_per_vector']))
		md.append(table(['L', 'recall@10 (strict)', 'recall (its own, ties credited)', 'KiB/q', 'IOs/q',
				 'mean us', 'p99.9 us', 'QPS'],
				[[r['value'], f(r['recall_at_10'], '%.4f'), f(r['recall_own'], '%.4f'),
				  kb(r['bytes_per_query']), f(r['ios_per_query'], '%.1f'), f(r['mean_us'], '%.0f'),
				  f(r['p999_us'], '%.0f'), f(r['qps'], '%.0f')] for r in dk]))

	# at recall 0.9
	md.append('## At recall@10 = %.2f (linear between the sweep points around it)\n' % TARGET)
	body = []
	summary = []
	systems = [(v, sel(system=v, kind='search', mode='cold')) for v in variants] + \
		[('spann', sp), ('diskann', dk)]
	for name, pts in systems:
		if not pts:
			continue
		info = next(iter(sel(system=name, kind='info')), {})
		bld = (sel(system=name, kind='build') or [{}])[-1]
		lat_key = 'p50_us' if name != 'diskann' else 'mean_us'
		bq = interp_at(pts, TARGET, 'recall_at_10', 'bytes_per_query')
		lat = interp_at(pts, TARGET, 'recall_at_10', lat_key)
		mean = interp_at(pts, TARGET, 'recall_at_10', 'mean_us')
		qps = interp_at(pts, TARGET, 'recall_at_10', 'qps')
		rss = max((r.get('search_peak_rss_kb') or 0) for r in pts)
		reach = max(r['recall_at_10'] for r in pts) >= TARGET
		row = {'kind': 'at_recall', 'recall': TARGET, 'system': name, 'bytes_per_query': bq,
		       'latency_us': lat, 'latency_kind': 'p50' if lat_key == 'p50_us' else 'mean', 'mean_us': mean,
		       'qps': qps, 'search_peak_rss_kb': rss, 'bytes_on_disk': info.get('bytes_on_disk'),
		       'build_s': bld.get('build_s'), 'build_peak_rss_kb': bld.get('build_peak_rss_kb'),
		       'storage_MBps': bq * qps / 1e6 if bq and qps else None, 'reached': reach}
		summary.append(row)
		body.append([name, kb(bq) if reach else 'not reached', f(lat, '%.0f') + ('' if lat_key == 'p50_us' else ' (mean)'),
			     f(mean, '%.0f'), f(qps, '%.0f'), '%.1f' % (rss / 1024), mib(info.get('bytes_on_disk')),
			     f(bld.get('build_s'), '%.0f'), f((bld.get('build_peak_rss_kb') or 0) / 1024, '%.0f'),
			     f(row['storage_MBps'], '%.1f'),
			     f(100 * row['storage_MBps'] * 1e6 / bw if bw and row['storage_MBps'] else None, '%.1f')])
	md.append(table(['system', 'KiB/query', 'latency us (p50)', 'mean us', 'QPS (1 thread)', 'search RSS MiB',
			 'index MiB on disk', 'build s', 'build RSS MiB', 'read MB/s', '% of fio max MB/s'], body))
	for v in variants:
		warm = sel(system=v, kind='search', mode='warm_batch')
		wq = interp_at(warm, TARGET, 'recall_at_10', 'qps')
		fq = interp_at(list(favs[v].values()), TARGET, 'recall_at_10', 'qps')
		if wq and fq:
			summary.append({'kind': 'at_recall', 'recall': TARGET, 'system': v + '-warm-vs-faiss-avx2',
					'annann_warm_qps': wq, 'faiss_avx2_qps_1t': fq, 'ratio': wq / fq})
			md.append('Warm batch QPS at recall %.2f, one thread: %s %.0f, FAISS IVF-Flat AVX2 %.0f '
				  '(ratio %.2f).\n' % (TARGET, v, wq, fq, wq / fq))
	gt = sel(system='gt')
	if gt:
		g = gt[0]
		md.append('## Ground truth: `annann gt` against FAISS IndexFlatL2 (top-%d, %d queries, 2 threads)\n' %
			  (g['k'], g['queries']))
		md.append(table(['annann gt wall s', 'annann self s', 'FAISS read+add+search s', 'FAISS search s',
				 'ratio annann/FAISS', 'positions differing', 'ties', 'annann wrong', 'FAISS wrong',
				 'annann max rel. dist error'],
				[[f(g['annann_wall_s'], '%.2f'), f(g['annann_self_s'], '%.2f'), f(g['faiss_total_s'], '%.2f'),
				  f(g['faiss_search_s'], '%.2f'), f(g['ratio_annann_over_faiss'], '%.2f'),
				  g['positions_differing'], g['ties'], g['annann_wrong_positions'],
				  g['faiss_wrong_positions'], f(g['annann_max_rel_dist_error'], '%.2g')]]))
	with open(stem + '.jsonl', 'a') as fo:
		for r in summary:
			fo.write(json.dumps(r) + '\n')
	with open(stem + '.md', 'w') as fo:
		fo.write('\n'.join(md))
	print('\n'.join(md))
	print('wrote %s.md and %s.jsonl' % (stem, stem))


if __name__ == '__main__':
	main()
