#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# bench/peers/tables.py: the tables of docs/BENCHMARKS.md (section "Peers") from the JSON lines
# that bench/peers.sh leaves in WORK/out/ (or from bench/results/peers-*.jsonl, which hold the
# same rows): per partition count, annann against FAISS IVF-Flat per nprobe; then annann, DiskANN
# and SPANN from cold storage at recall@10 = 0.9; and the fio limit.
#
#   bench/peers/tables.py JSONL_OR_WORKDIR... > tables.md
import glob
import os
import sys

from common import interp_at, load_jsonl

TARGET = 0.9


def f(x, fmt='%.3f'):
	return '-' if x is None else fmt % x


def table(head, rows):
	out = ['| ' + ' | '.join(head) + ' |', '|' + '|'.join(['---'] * len(head)) + '|']
	out += ['| ' + ' | '.join(str(c) for c in r) + ' |' for r in rows]
	return '\n'.join(out) + '\n'


def first_reaching(points, key_r, key_v):
	pts = sorted([p for p in points if p.get(key_r) is not None], key=lambda p: p.get('nprobe', p.get('value', 0)))
	for p in pts:
		if p[key_r] >= TARGET:
			return p
	return None


def main():
	rows = []
	for arg in sys.argv[1:]:
		if os.path.isdir(arg):
			for p in sorted(glob.glob(os.path.join(arg, 'out', '*.jsonl'))):
				rows += load_jsonl(p)
		else:
			rows += load_jsonl(arg)
	sel = lambda **kw: [r for r in rows if all(r.get(k) == v for k, v in kw.items())]
	fio = sel(system='fio')
	bw = {(r['bs'], r['iodepth']): r['bw_MBps'] * 1e6 for r in fio}
	variants = sorted({r['system'] for r in rows if r.get('system', '').startswith('annann')},
			  key=lambda v: int(v.rsplit('-', 1)[1]))
	out = []
	for v in variants:
		parts = next(r['parts'] for r in sel(system=v) if 'parts' in r)
		cold = {r['nprobe']: r for r in sel(system=v, kind='search', mode='cold')}
		warm = {r['nprobe']: r for r in sel(system=v, kind='search', mode='warm_batch')}
		fpy = {r['nprobe']: r for r in sel(system='faiss-ivfflat-py', kind='search', nlist=parts)}
		fav = {r['nprobe']: r for r in sel(system='faiss-ivfflat-avx2', kind='search', threads=1, nlist=parts)}
		body = []
		for p in sorted(set(cold) | set(warm)):
			c, w, fp, fa = cold.get(p, {}), warm.get(p, {}), fpy.get(p, {}), fav.get(p, {})
			rec = w.get('recall_at_10')
			steady = [x for x in (w.get('qps_steady_runs') or []) if x]
			body.append([p, f(rec, '%.4f'), f(fa.get('recall_at_10'), '%.4f'), f(fp.get('recall_at_10'), '%.4f'),
				     f(c.get('bytes_per_query') and c['bytes_per_query'] / 1024, '%.1f'),
				     '%s / %s' % (f(w.get('candidates'), '%.0f'), f(fp.get('candidates'), '%.0f')),
				     f(c.get('p50_us'), '%.0f'),
				     '/'.join('%.0f' % c['stage_us'][k] for k in ('route', 'io_wait', 'decode', 'scan'))
				     if c.get('stage_us') else '-',
				     f(w.get('qps_measured'), '%.0f'),
				     '%s (%s)' % (f(w.get('qps'), '%.0f'), '..'.join('%.0f' % x for x in (min(steady), max(steady))))
				     if steady else '-',
				     f(fa.get('qps'), '%.0f'), f(fp.get('qps_generic'), '%.0f')])
		out.append('### %s: %d partitions\n' % (v, parts))
		out.append(table(['nprobe', 'annann recall@10', 'FAISS AVX2 recall@10', 'python3-faiss recall@10',
				  'annann KiB/query (cold)', 'candidates annann / FAISS', 'p50 cold us',
				  'cold route/io/decode/scan us', 'annann warm batch QPS, measured pass',
				  'annann warm QPS, steady (min..max)', 'faiss_ivf AVX2 QPS', 'python3-faiss QPS'], body))
		wl = list(warm.values())
		fa_l = list(fav.values())
		wq = interp_at(wl, TARGET, 'recall_at_10', 'qps')
		wm = interp_at(wl, TARGET, 'recall_at_10', 'qps_measured')
		fq = interp_at(fa_l, TARGET, 'recall_at_10', 'qps')
		fpq = interp_at(list(fpy.values()), TARGET, 'recall_at_10', 'qps_generic')
		out.append('At recall@10 = %.2f (linear interpolation in recall between the two nprobe values around it): '
			   'annann warm batch %s QPS steady (%s QPS in the measured pass), faiss_ivf AVX2 %s QPS, '
			   'python3-faiss %s QPS; annann / faiss_ivf = %s (steady), %s (measured pass).\n' %
			   (TARGET, f(wq, '%.0f'), f(wm, '%.0f'), f(fq, '%.0f'), f(fpq, '%.0f'),
			    f(wq / fq if wq and fq else None, '%.2f'), f(wm / fq if wm and fq else None, '%.2f')))
	# disk-resident at recall 0.9
	body = []
	for v in variants:
		pts = sel(system=v, kind='search', mode='cold')
		if not pts:
			continue
		info = (sel(system=v, kind='info') or [{}])[-1]
		bld = (sel(system=v, kind='build') or [{}])[-1]
		bq = interp_at(pts, TARGET, 'recall_at_10', 'bytes_per_query')
		lat = interp_at(pts, TARGET, 'recall_at_10', 'p50_us')
		mean = interp_at(pts, TARGET, 'recall_at_10', 'mean_us')
		rss = max((r.get('search_peak_rss_kb') or 0) for r in pts)
		body.append([v, f(bq and bq / 1024, '%.1f'), f(lat, '%.0f') + ' p50, ' + f(mean, '%.0f') + ' mean',
			     '%.2f MiB router + %.0f MiB process peak RSS' % (info['info']['router_ram_bytes'] / 2 ** 20, rss / 1024),
			     '%.1f' % (info['bytes_on_disk'] / 2 ** 20), f(bld.get('build_s'), '%.0f'),
			     f(bld.get('build_peak_rss_kb') and bld['build_peak_rss_kb'] / 1024, '%.0f'),
			     f(bq / bw[('64k', 16)] * 1e6 if bq and ('64k', 16) in bw else None, '%.0f'),
			     f(bq / bw[('4k', 64)] * 1e6 if bq and ('4k', 64) in bw else None, '%.0f')])
	dk = sel(system='diskann', kind='search')
	if dk:
		info = (sel(system='diskann', kind='info') or [{}])[-1]
		bld = (sel(system='diskann', kind='build') or [{}])[-1]
		bq = interp_at(dk, TARGET, 'recall_at_10', 'bytes_per_query')
		lat = interp_at(dk, TARGET, 'recall_at_10', 'mean_us')
		rss = max((r.get('search_peak_rss_kb') or 0) for r in dk)
		body.append(['DiskANN R%s L%s' % (bld.get('R', '?'), bld.get('L', '?')), f(bq and bq / 1024, '%.1f'),
			     'mean ' + f(lat, '%.0f') + ' (no p50 printed)',
			     '%.1f MiB PQ codes + %.0f MiB process peak RSS' % (31 * bld.get('n', 0) / 2 ** 20 if False else
										(info.get('pq_bytes_per_vector', 0) * info.get('n', 0)) / 2 ** 20, rss / 1024),
			     '%.1f' % (info['bytes_on_disk'] / 2 ** 20), f(bld.get('build_s'), '%.0f'),
			     f(bld.get('build_peak_rss_kb') and bld['build_peak_rss_kb'] / 1024, '%.0f'),
			     f(bq / bw[('64k', 16)] * 1e6 if bq and ('64k', 16) in bw else None, '%.0f'),
			     f(bq / bw[('4k', 64)] * 1e6 if bq and ('4k', 64) in bw else None, '%.0f')])
	sp = sel(system='spann', kind='search')
	if sp:
		info = (sel(system='spann', kind='info') or [{}])[-1]
		bld = (sel(system='spann', kind='build') or [{}])[-1]
		bq = interp_at(sp, TARGET, 'recall_at_10', 'bytes_per_query')
		lat = interp_at(sp, TARGET, 'recall_at_10', 'p50_us')
		rss = max((r.get('search_peak_rss_kb') or 0) for r in sp)
		body.append(['SPANN', f(bq and bq / 1024, '%.1f'), f(lat, '%.0f') + ' (p50)',
			     '%.0f MiB process peak RSS' % (rss / 1024), '%.1f' % (info['bytes_on_disk'] / 2 ** 20),
			     f(bld.get('build_s'), '%.0f'),
			     f(bld.get('build_peak_rss_kb') and bld['build_peak_rss_kb'] / 1024, '%.0f'),
			     f(bq / bw[('64k', 16)] * 1e6 if bq and ('64k', 16) in bw else None, '%.0f'),
			     f(bq / bw[('4k', 64)] * 1e6 if bq and ('4k', 64) in bw else None, '%.0f')])
	if body:
		out.append('### Disk-resident, cold storage, one thread, batch 1, at recall@10 = %.2f\n' % TARGET)
		out.append(table(['system', 'KiB/query', 'latency us', 'RAM held', 'disk MiB', 'build s (wall)',
				  'build peak RSS MiB', 'us/query at fio 64 KiB QD16 bandwidth',
				  'us/query at fio 4 KiB QD64 bandwidth'], body))
	if dk:
		out.append('DiskANN sweep (strict recall@10 recomputed from its result files):\n')
		out.append(table(['L', 'recall@10', 'its recall (ties credited)', 'IOs/query', 'KiB/query', 'mean us',
				  'p99.9 us', 'QPS'],
				 [[r['value'], f(r['recall_at_10'], '%.4f'), f(r['recall_own'], '%.4f'),
				   f(r['ios_per_query'], '%.1f'), f(r['bytes_per_query'] / 1024, '%.1f'), f(r['mean_us'], '%.0f'),
				   f(r['p999_us'], '%.0f'), f(r['qps'], '%.0f')] for r in dk]))
	if fio:
		out.append('### Storage limit (fio randread, io_uring, O_DIRECT, 2 GiB file on /work, 15 s)\n')
		out.append(table(['block', 'QD', 'IOPS', 'MB/s', 'clat p50 us', 'clat p99 us'],
				 [[r['bs'], r['iodepth'], '%.0f' % r['iops'], '%.0f' % r['bw_MBps'], '%.0f' % r['clat_p50_us'],
				   '%.0f' % r['clat_p99_us']] for r in fio]))
	print('\n'.join(out))


if __name__ == '__main__':
	main()
