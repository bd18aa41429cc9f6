#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# bench/peers/faiss_ivf.py: the FAISS IVF-Flat side of bench/peers.sh, with the same number of
# lists and nprobe sweep as annann. Speed from the AVX2 peer binary (../shared/peers/faiss_ivf:
# best of 3 batch passes per run, run --reps times, median); recall and candidates scanned
# (faiss.cvar.indexIVF_stats.ndis) from Debian's generic python3-faiss, trained the same way
# (the first min(n, 256 nlist) base vectors).
import argparse
import json
import os
import time

import numpy as np

from common import (dataset_files, emit, log, median, parse_list, read_bin, read_gt, run, strict_recall,
		    bin_header)


def main():
	ap = argparse.ArgumentParser()
	ap.add_argument('--dir', required=True)
	ap.add_argument('--work', required=True)
	ap.add_argument('--parts', type=int, required=True)
	ap.add_argument('--nprobes', required=True)
	ap.add_argument('--reps', type=int, default=3)
	ap.add_argument('--faiss-bin', required=True)
	ap.add_argument('--out', required=True)
	ap.add_argument('--skip-avx2', action='store_true')
	ap.add_argument('--skip-python', action='store_true')
	ap.add_argument('--train-n', type=int, default=0,
			help='python3-faiss training vectors (default min(n, 256 nlist), as the AVX2 binary)')
	a = ap.parse_args()

	base, query = dataset_files(a.dir)
	n, dim = bin_header(base)
	nprobes = [p for p in parse_list(a.nprobes) if p <= a.parts]
	work = os.path.join(a.work, 'faiss')
	os.makedirs(work, exist_ok=True)
	logp = os.path.join(work, 'log.txt')
	for f in ('base.fbin', 'query.fbin', 'gt100.ivecs'):
		if not os.path.exists(os.path.join(a.dir, f)):
			raise SystemExit('%s: missing %s (bench/peers.sh creates it)' % (a.dir, f))

	if not a.skip_avx2:
		rows = {}
		cmd = [a.faiss_bin, a.dir, str(a.parts), ','.join(map(str, nprobes))]
		for r in range(a.reps):
			log('faiss_ivf (AVX2) run %d/%d' % (r + 1, a.reps))
			out, err, rss, wall = run(cmd, logp, timed=True)
			for line in out.splitlines():
				if line.startswith('{'):
					j = json.loads(line)
					rows.setdefault((j['nprobe'], j['threads']), []).append(j)
		for (p, th), js in sorted(rows.items()):
			emit(a.out, {'system': 'faiss-ivfflat-avx2', 'build': 'FAISS 1.15 AVX2 (../shared/peers/faiss_ivf)',
				     'kind': 'search', 'mode': 'memory_batch', 'nlist': a.parts, 'nprobe': p, 'threads': th,
				     'recall_at_10': js[0]['recall_at_10'], 'qps': median([j['qps'] for j in js]),
				     'qps_runs': [j['qps'] for j in js], 'peak_rss_kb': rss, 'cmd': ' '.join(cmd)})

	if not a.skip_python:
		import faiss
		log('python3-faiss %s IndexIVFFlat nlist %d' % (faiss.__version__, a.parts))
		xb = read_bin(os.path.join(a.dir, 'base.fbin'))
		xq = read_bin(os.path.join(a.dir, 'query.fbin'))
		gt, _ = read_gt(os.path.join(a.dir, 'gt100.bin'))
		faiss.omp_set_num_threads(2)
		quant = faiss.IndexFlatL2(dim)
		idx = faiss.IndexIVFFlat(quant, dim, a.parts)
		t0 = time.monotonic()
		ntrain = a.train_n or min(n, 256 * a.parts)
		idx.train(xb[:ntrain])
		t1 = time.monotonic()
		idx.add(xb)
		t2 = time.monotonic()
		sizes = np.array([idx.invlists.list_size(i) for i in range(a.parts)])
		emit(a.out, {'system': 'faiss-ivfflat-py', 'build': 'python3-faiss %s (Debian, generic)' % faiss.__version__,
			     'kind': 'build', 'nlist': a.parts, 'train_n': ntrain, 'train_s': t1 - t0, 'add_s': t2 - t1, 'largest_list': int(sizes.max()),
			     'smallest_list': int(sizes.min())})
		faiss.omp_set_num_threads(1)
		for p in nprobes:
			idx.nprobe = p
			faiss.cvar.indexIVF_stats.reset()
			t0 = time.monotonic()
			_, I = idx.search(xq, 10)
			s = time.monotonic() - t0
			st = faiss.cvar.indexIVF_stats
			emit(a.out, {'system': 'faiss-ivfflat-py', 'build': 'python3-faiss %s (Debian, generic)' % faiss.__version__,
				     'kind': 'search', 'mode': 'memory_batch', 'nlist': a.parts, 'nprobe': p, 'threads': 1,
				     'recall_at_10': strict_recall(I, gt, 10), 'candidates': st.ndis / len(xq),
				     'lists_probed': st.nlist / len(xq), 'qps_generic': len(xq) / s})


if __name__ == '__main__':
	main()
