#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# bench/peers/gt_vs_faiss.py: `annann gt` against FAISS IndexFlatL2 (Debian python3-faiss) on
# the same base and queries, top-100, in the same run: wall times (median of --reps, both on 2
# threads) and whether the ids agree. Where the two lists hold different ids at a rank, the
# exact squared distances (float64, from the vectors) decide: equal distances are ties; else
# the side with the larger distance at that rank is wrong there.
import argparse
import json
import os
import time

import numpy as np

from common import bin_header, dataset_files, emit, log, median, read_bin, read_gt, run


def exact_d2(xb, xq, ids):
	"""Exact squared L2 distances (float64) of xq[i] to xb[ids[i, :]]."""
	out = np.empty(ids.shape, dtype=np.float64)
	for i in range(ids.shape[0]):
		v = xb[ids[i]].astype(np.float64) - xq[i].astype(np.float64)
		out[i] = np.einsum('ij,ij->i', v, v)
	return out


def main():
	ap = argparse.ArgumentParser()
	ap.add_argument('--dir', required=True)
	ap.add_argument('--work', required=True)
	ap.add_argument('--annann', required=True)
	ap.add_argument('--reps', type=int, default=3)
	ap.add_argument('--k', type=int, default=100)
	ap.add_argument('--out', required=True)
	a = ap.parse_args()
	import faiss

	base, query = dataset_files(a.dir)
	n, dim = bin_header(base)
	work = os.path.join(a.work, 'gt')
	os.makedirs(work, exist_ok=True)
	logp = os.path.join(work, 'log.txt')
	mine = os.path.join(work, 'gt_annann.bin')
	cmd = [a.annann, 'gt', '--base', base, '--queries', query, '--out', mine, '--k', str(a.k),
	       '--threads', '2', '--mem', '1G', '--json', '--quiet']
	walls, selfs, rss = [], [], None
	for r in range(a.reps):
		log('annann gt %d/%d' % (r + 1, a.reps))
		out, _, rss, wall = run(cmd, logp, timed=True)
		walls.append(wall)
		selfs.append(json.loads(out.strip().splitlines()[-1]).get('seconds'))
	faiss.omp_set_num_threads(2)
	ftot, fsearch = [], []
	for r in range(a.reps):
		log('faiss IndexFlatL2 %d/%d' % (r + 1, a.reps))
		t0 = time.monotonic()
		xb = read_bin(base).astype(np.float32)
		xq = read_bin(query).astype(np.float32)
		idx = faiss.IndexFlatL2(dim)
		idx.add(xb)
		t1 = time.monotonic()
		D, I = idx.search(xq, a.k)
		t2 = time.monotonic()
		ftot.append(t2 - t0)
		fsearch.append(t2 - t1)
	ga, gd = read_gt(mine)
	nq = ga.shape[0]
	xbr = read_bin(base)
	xqr = read_bin(query)
	da = exact_d2(xbr, xqr, ga)
	df = exact_d2(xbr, xqr, I)
	diff = ga != I
	tol = 1e-9 * np.maximum(1.0, np.abs(df))
	tie = diff & (np.abs(da - df) <= tol)
	ann_worse = diff & (da > df + tol)
	faiss_worse = diff & (df > da + tol)
	# annann's stored distances against the exact ones
	dist_err = float(np.max(np.abs(gd.astype(np.float64) - da) / np.maximum(1.0, da))) if gd is not None else None
	emit(a.out, {'system': 'gt', 'kind': 'gt', 'n': n, 'dim': dim, 'queries': int(nq), 'k': a.k,
		     'annann_wall_s': median(walls), 'annann_self_s': median(selfs), 'annann_peak_rss_kb': rss,
		     'faiss_total_s': median(ftot), 'faiss_search_s': median(fsearch),
		     'ratio_annann_over_faiss': median(walls) / median(ftot),
		     'faiss_build': 'python3-faiss %s (Debian, generic; BLAS from OpenBLAS)' % faiss.__version__,
		     'positions_differing': int(diff.sum()), 'ties': int(tie.sum()),
		     'annann_wrong_positions': int(ann_worse.sum()), 'faiss_wrong_positions': int(faiss_worse.sum()),
		     'queries_with_annann_wrong': int(ann_worse.any(axis=1).sum()),
		     'queries_with_faiss_wrong': int(faiss_worse.any(axis=1).sum()),
		     'annann_max_rel_dist_error': dist_err, 'reps': a.reps, 'cmd': ' '.join(cmd[1:])})


if __name__ == '__main__':
	main()
