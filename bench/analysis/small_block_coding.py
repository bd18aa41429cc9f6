#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# bench/analysis/small_block_coding.py: bytes per vector of small partitions (about 60 u8
# vectors, as at 16384 partitions of 1M) under three codings: zstd -3 of the centred bytes (what
# block.c does), a per-dimension Golomb-Rice code of the zigzagged residual from the
# per-dimension median (best parameter per dimension, 4 bits to store it, plus the medians),
# and the per-block empirical entropy per dimension (a lower bound that ignores the model's
# cost; biased low at 60 samples). Partitions: 4 Lloyd rounds of k-means (1600 clusters) on a
# 100 000-vector sample. Usage: small_block_coding.py BASE.u8bin [BLOCKS]. Needs the zstd tool.
import subprocess
import sys

import numpy as np

path = sys.argv[1]
nblocks = int(sys.argv[2]) if len(sys.argv) > 2 else 200
rng = np.random.default_rng(1)
dim = int(np.fromfile(path, dtype='<i4', count=2)[1])
b = np.fromfile(path, dtype=np.uint8, offset=8).reshape(-1, dim)
x = b[rng.choice(len(b), 100000, replace=False)].astype(np.float32)
K = 1600
c = x[rng.choice(len(x), K, replace=False)].copy()
for _ in range(4):
	a = ((x * x).sum(1)[:, None] - 2 * x @ c.T + (c * c).sum(1)[None, :]).argmin(1)
	for j in range(K):
		m = a == j
		if m.any():
			c[j] = x[m].mean(0)
xi = x.astype(np.int32)
rice = ent = zs = 0.0
nv = 0
for j in range(nblocks):
	m = xi[a == j]
	if len(m) < 2:
		continue
	med = np.round(np.median(m, 0)).astype(np.int32)
	r = m - med
	z = np.where(r >= 0, 2 * r, -2 * r - 1)
	bits = 0
	for t in range(dim):
		bits += min(((z[:, t] >> p) + 1 + p).sum() for p in range(9)) + 4
		_, cnt = np.unique(r[:, t], return_counts=True)
		ent += -(cnt * np.log2(cnt / len(m))).sum() / 8
	rice += bits / 8 + dim
	centred = ((m - med) % 256).astype(np.uint8).tobytes()
	zs += len(subprocess.run(['zstd', '-3', '-c', '-q'], input=centred, capture_output=True, check=True).stdout)
	nv += len(m)
print('%d vectors in %d blocks (%.1f per block)' % (nv, nblocks, nv / nblocks))
print('zstd -3, centred:           %.1f bytes/vector' % (zs / nv))
print('Golomb-Rice per dimension:  %.1f bytes/vector' % (rice / nv))
print('empirical entropy (bound):  %.1f bytes/vector' % (ent / nv))
