#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# bench/analysis/code_allocation.py: does a code that spends its bits where the residuals vary
# (PCA basis, bits per dimension by reverse water-filling) estimate distances better than a
# random rotation with the same bits per dimension, as the codes blocks use? Both sides use the
# same scalar quantiser, so only the basis and the allocation differ: each row's unit residual
# u = R (x - c) / |x - c| is quantised per dimension to 2^b levels over +-alpha x (that
# dimension's standard deviation), and <q - c, x - c> is estimated as |x - c| <uh, R (q - c)> /
# <uh, u> (RaBitQ's ratio form). The score is the re-rank budget by estimate: the fewest
# candidates per query, taken by smallest estimate, whose exact distances keep recall@10 within
# 0.005 (0.001) of the exact scan of the probed partitions.
# Partitions: k-means (12 Lloyd rounds) of a random sample of the base, 125 rows per partition
# as the defaults give real1m; queries probe their nearest centroids (nprobe given), ground
# truth is recomputed on the sample. Random rotation: QR of a Gaussian matrix (the codes'
# Walsh-Hadamard rotation is a stand-in for the same thing).
# Usage: code_allocation.py DATA_DIR [SAMPLE [NQ [NPROBE]]] (DATA_DIR: base.u8bin, query.u8bin);
# defaults 250000 rows, 400 queries, nprobe 80. ~12 min and ~3 GB on 2 cores for the defaults.
import sys
import time

import numpy as np

d_dir = sys.argv[1]
N = int(sys.argv[2]) if len(sys.argv) > 2 else 250000
NQ = int(sys.argv[3]) if len(sys.argv) > 3 else 400
NPB = int(sys.argv[4]) if len(sys.argv) > 4 else 80
rng = np.random.default_rng(0)


def read(p):
	n, dim = np.fromfile(p, dtype='<i4', count=2)
	return np.fromfile(p, dtype=np.uint8, offset=8).reshape(n, dim)


def sq(a):
	return (a * a).sum(1)


t0 = time.time()
base = read(d_dir + '/base.u8bin')
X = base[rng.choice(len(base), N, replace=False)].astype(np.float32)
del base
qs = read(d_dir + '/query.u8bin')[:NQ].astype(np.float32)
dim = X.shape[1]
P = N // 125
gt = np.argsort(sq(qs)[:, None] + sq(X)[None, :] - 2 * qs @ X.T, axis=1)[:, :10]
C = X[rng.choice(N, P, replace=False)].copy()
a = np.empty(N, np.int64)
for it in range(12):
	cn = sq(C)
	for s in range(0, N, 50000):
		a[s:s + 50000] = np.argmin(cn[None, :] - 2 * X[s:s + 50000] @ C.T, axis=1)
	cnt = np.bincount(a, minlength=P)
	S = np.zeros_like(C)
	np.add.at(S, a, X)
	C[cnt > 0] = S[cnt > 0] / cnt[cnt > 0, None]
print('%d rows, %d partitions, %d queries; k-means %.0f s' % (N, P, NQ, time.time() - t0), flush=True)

R = X - C[a]
rn = np.sqrt(sq(R))
rn[rn == 0] = 1
U = (R / rn[:, None]).astype(np.float32)
Qr = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)
ev, V = np.linalg.eigh(np.cov(R[rng.choice(N, min(N, 50000), replace=False)].T))
V = V[:, ::-1].astype(np.float32).copy()
ev = ev[::-1]
print('residual variance in the top 16 / 32 / 48 / 64 principal components: %s'
      % ' / '.join('%.3f' % (ev[:k].sum() / ev.sum()) for k in (16, 32, 48, 64)), flush=True)

order = np.argsort(sq(C)[None, :] - 2 * qs @ C.T, axis=1)[:, :NPB]
members = [np.flatnonzero(a == p) for p in range(P)]
cands = [np.concatenate([members[p] for p in order[q]]) for q in range(NQ)]
found = [[g for g in gt[q] if g in set(cands[q].tolist())] for q in range(NQ)]
ER = sum(len(f) for f in found) / (10 * NQ)
print('nprobe %d: exact-scan recall@10 %.4f, %.0f candidates per query' % (NPB, ER, np.mean([len(c) for c in cands])),
      flush=True)


def quantise(T, bits, alpha):
	Y = U @ T
	L = alpha * Y.std(0)
	lev = 2.0 ** bits
	step = np.where(bits > 0, 2 * L / np.maximum(lev, 1), 1)
	k = np.clip(np.floor((Y + L) / step), 0, lev - 1)
	return np.where(bits > 0, -L + (k + 0.5) * step, 0.0).astype(np.float32), Y


def budget(T, bits, alpha):
	Yh, Y = quantise(T, bits, alpha)
	f = 1.0 / np.maximum((Yh * Y).sum(1), 1e-6)
	ranks = []
	for q in range(NQ):
		c = cands[q]
		qc = qs[q][None, :] - C[a[c]]
		est = sq(qc) + rn[c] ** 2 - 2 * rn[c] * f[c] * ((qc @ T) * Yh[c]).sum(1)
		rk = np.empty(len(c), np.int64)
		rk[np.argsort(est)] = np.arange(len(c))
		pos = {int(v): i for i, v in enumerate(c)}
		ranks += [rk[pos[g]] for g in found[q]]
	srt = np.sort(np.array(ranks))
	out = []
	for loss in (0.005, 0.001):
		need = int(np.ceil((ER - loss) * 10 * NQ))
		out.append(int(srt[min(need, len(srt)) - 1]) + 1)
	return out


def waterfill(total):
	lo, hi = 1e-12, float(ev.max()) * 4
	for _ in range(200):
		th = np.sqrt(lo * hi)
		if np.clip(np.round(0.5 * np.log2(ev / th)), 0, 8).sum() > total:
			lo = th
		else:
			hi = th
	b = np.clip(np.round(0.5 * np.log2(ev / hi)), 0, 8)
	i = 0
	while b.sum() < total:
		b[i % dim] += 1
		i += 1
	return b


print('| code | bits / dim | code bytes (128 d) | re-rank budget -0.005 | -0.001 |')
print('| --- | --- | --- | --- | --- |')
for B in (1, 2, 3):
	bits = np.full(dim, float(B))
	for name, T in (('random rotation', Qr), ('PCA, the same bits everywhere', V)):
		best = min((budget(T, bits, al) for al in (2.0, 3.0)), key=lambda r: r[0])
		print('| %s | %d | %d | %d | %d |' % (name, B, dim * B // 8, best[0], best[1]), flush=True)
for tot in (dim, dim * 3 // 2, 2 * dim, dim * 5 // 2):
	b = waterfill(tot)
	best = min((budget(V, b, al) for al in (2.0, 3.0)), key=lambda r: r[0])
	print('| PCA, water-filled (dims at 0/1/2/3/4 bits: %s) | %.2f | %d | %d | %d |'
	      % ('/'.join(str(int((b == k).sum())) for k in range(5)), tot / dim, tot // 8, best[0], best[1]), flush=True)
print('total %.0f s' % (time.time() - t0))
