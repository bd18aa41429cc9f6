#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# bench/peers/diskann.py: the DiskANN side of bench/peers.sh (../shared/peers/diskann, AVX2
# build against OpenBLAS). build_disk_index with R 64, L 100 and B sized for ~32 bytes of PQ
# code per vector (B = 32 n / 2^30 GiB); search_disk_index from cold storage (O_DIRECT + libaio,
# beam width 4, one thread, no node cache) over a sweep of L, run --reps times (medians).
# Figures: recall@10 recomputed strictly from its result files; bytes per query = mean IOs x
# 4096 (one sector per node visited); mean latency (it prints mean and 99.9%, not p50); peak
# RSS of the search process; index size = the files search opens (disk index + PQ data).
import argparse
import glob
import json
import os
import re

import numpy as np

from common import (bin_header, build_record, dataset_files, drop_caches, dir_bytes, emit, log, median, parse_list,
		    read_gt, run, strict_recall)

DT = {'.u8bin': 'uint8', '.i8bin': 'int8', '.fbin': 'float'}


def main():
	ap = argparse.ArgumentParser()
	ap.add_argument('--dir', required=True)
	ap.add_argument('--work', required=True)
	ap.add_argument('--bin', required=True, help='directory holding build_disk_index, search_disk_index')
	ap.add_argument('--sweep', default='10,15,20,30,50,75,100')
	ap.add_argument('--pq-bytes', type=int, default=32)
	ap.add_argument('--reps', type=int, default=3)
	ap.add_argument('--out', required=True)
	ap.add_argument('--rebuild', action='store_true')
	ap.add_argument('--R', type=int, default=32, help='graph degree')
	ap.add_argument('--L', type=int, default=64, help='build list size')
	ap.add_argument('--build-only', action='store_true')
	ap.add_argument('--limit', type=int, default=0, help='search only the first N queries')
	a = ap.parse_args()

	base, query = dataset_files(a.dir)
	gtp = os.path.join(a.dir, 'gt100.bin')
	n, dim = bin_header(base)
	dt = DT[os.path.splitext(base)[1]]
	work = os.path.abspath(os.path.join(a.work, 'diskann'))
	os.makedirs(work, exist_ok=True)
	logp = os.path.join(work, 'log.txt')
	prefix = os.path.join(work, 'd')
	common = {'system': 'diskann', 'build': 'DiskANN cpp_main 78256bb, x86-64-v3 (../shared/peers/diskann)',
		  'n': n, 'dim': dim}
	if a.rebuild:
		for f in glob.glob(prefix + '_*'):
			os.remove(f)
	B = a.pq_bytes * n / 2 ** 30
	if not os.path.exists(prefix + '_disk.index'):
		cmd = [os.path.join(a.bin, 'build_disk_index'), '--data_type', dt, '--dist_fn', 'l2',
		       '--data_path', os.path.abspath(base), '--index_path_prefix', prefix, '-R', str(a.R), '-L', str(a.L),
		       '-B', '%.6f' % B, '-M', '4', '-T', '2']
		log('diskann: build B=%.6f' % B)
		out, err, rss, wall = run(cmd, logp, timed=True, stream=True)
		rec = dict(common, kind='build', build_s=wall, build_peak_rss_kb=rss, R=a.R, L=a.L,
			   cmd=' '.join(['build_disk_index'] + cmd[1:]))
		build_record(work, a.out, rec)
	else:
		build_record(work, a.out)
	if a.build_only:
		return
	search_files = [prefix + '_disk.index', prefix + '_pq_pivots.bin', prefix + '_pq_compressed.bin']
	pqn, pqd = bin_header(prefix + '_pq_compressed.bin')
	emit(a.out, dict(common, kind='info', bytes_on_disk=dir_bytes(search_files),
			 disk_index_bytes=dir_bytes(search_files[:1]), pq_bytes_per_vector=pqd,
			 all_files_bytes=dir_bytes(glob.glob(prefix + '_*'))))
	gt, _ = read_gt(gtp)
	if a.limit and a.limit < bin_header(query)[0]:
		# DiskANN searches every query of its file: write the first --limit queries and their truth
		ext = os.path.splitext(query)[1]
		q = np.fromfile(query, dtype=np.uint8 if ext != '.fbin' else np.float32, count=a.limit * dim, offset=8)
		query = os.path.join(work, 'query%d%s' % (a.limit, ext))
		with open(query, 'wb') as f:
			f.write(np.array([a.limit, dim], dtype='<i4').tobytes())
			f.write(q.tobytes())
		gn, gk = bin_header(gtp)
		ids = np.fromfile(gtp, dtype='<i4', count=gn * gk, offset=8).reshape(gn, gk)[:a.limit]
		dd = np.fromfile(gtp, dtype='<f4', count=gn * gk, offset=8 + 4 * gn * gk).reshape(gn, gk)[:a.limit]
		gtp = os.path.join(work, 'gt%d.bin' % a.limit)
		with open(gtp, 'wb') as f:
			f.write(np.array([a.limit, gk], dtype='<i4').tobytes())
			f.write(ids.astype('<i4').tobytes())
			f.write(dd.astype('<f4').tobytes())
		gt = ids
	Ls = parse_list(a.sweep)
	res = os.path.join(work, 'res')
	cmd = [os.path.join(a.bin, 'search_disk_index'), '--data_type', dt, '--dist_fn', 'l2',
	       '--index_path_prefix', prefix, '--query_file', os.path.abspath(query), '--gt_file', os.path.abspath(gtp),
	       '-K', '10', '-L'] + [str(x) for x in Ls] + ['-W', '4', '-T', '1', '--num_nodes_to_cache', '0',
							   '--result_path', res]
	rows = {L: [] for L in Ls}
	rss_max = 0
	for r in range(a.reps):
		dropped = drop_caches()
		log('diskann: search sweep %d/%d (page cache dropped: %s)' % (r + 1, a.reps, dropped))
		out, err, rss, wall = run(cmd, logp, timed=True)
		rss_max = max(rss_max, rss or 0)
		for line in out.splitlines():
			f = line.split()
			if len(f) == 9 and re.fullmatch(r'\d+', f[0]) and int(f[0]) in rows and f[1] == '4':
				rows[int(f[0])].append({'qps': float(f[2]), 'mean_us': float(f[3]), 'p999_us': float(f[4]),
							'ios': float(f[5]), 'io_us': float(f[6]), 'recall_own': float(f[8])})
	for L in Ls:
		pts = rows[L]
		if not pts:
			continue
		rf = '%s_%d_idx_uint32.bin' % (res, L)
		nr, kr = bin_header(rf)
		ids = np.fromfile(rf, dtype='<u4', count=nr * kr, offset=8).reshape(nr, kr).astype(np.int64)
		emit(a.out, dict(common, kind='search', mode='cold', param='L', value=L, queries=int(nr),
				 recall_at_10=strict_recall(ids, gt, 10), recall_own=pts[0]['recall_own'] / 100,
				 bytes_per_query=pts[0]['ios'] * 4096, ios_per_query=pts[0]['ios'],
				 mean_us=median([p['mean_us'] for p in pts]), p999_us=median([p['p999_us'] for p in pts]),
				 io_us=median([p['io_us'] for p in pts]), qps=median([p['qps'] for p in pts]),
				 search_peak_rss_kb=rss_max, reps=len(pts), cmd=' '.join(cmd[1:])))


if __name__ == '__main__':
	main()
