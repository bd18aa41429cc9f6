#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# bench/analysis/lossy_recall_ceiling.py: how much recall@10 a lossy b-bit scalar code would
# cost even if routing were perfect. For each query, its true 100 nearest neighbours are
# quantised to b bits per dimension (offset and step from their own per-dimension range, as a
# per-block code would) and re-ranked by the quantised distance; the score is how many of the
# true 10 nearest stay in the top 10. Usage: lossy_recall_ceiling.py DATA_DIR [NQ]
# (DATA_DIR holds base.u8bin, query.u8bin, gt100.bin in the big-ann layout).
import sys

import numpy as np

d = sys.argv[1]
nq = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
b = np.fromfile(d + '/base.u8bin', dtype=np.uint8, offset=8)
dim = int(np.fromfile(d + '/base.u8bin', dtype='<i4', count=2)[1])
b = b.reshape(-1, dim)
q = np.fromfile(d + '/query.u8bin', dtype=np.uint8, offset=8).reshape(-1, dim)[:nq].astype(np.float32)
n, k = np.fromfile(d + '/gt100.bin', dtype='<i4', count=2)
g = np.fromfile(d + '/gt100.bin', dtype='<i4', count=n * k, offset=8).reshape(n, k)[:nq]
for bits in (8, 6, 5, 4, 3):
	levels = (1 << bits) - 1
	hits = 0
	for i in range(nq):
		c = b[g[i]].astype(np.float32)
		lo, hi = c.min(0), c.max(0)
		step = np.maximum(hi - lo, 1) / levels
		cq = np.round((c - lo) / step) * step + lo
		top = np.argsort(((cq - q[i]) ** 2).sum(1), kind='stable')[:10]
		hits += len(set(top.tolist()) & set(range(10)))
	print('%d bits per dimension: recall@10 ceiling %.4f' % (bits, hits / (10 * nq)))
