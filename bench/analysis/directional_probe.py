#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# bench/analysis/directional_probe.py: would a probe order that knows each partition's shape
# read fewer rows than today's (centroid distance + 0.125 x spread)? A partition stretched
# towards the query is likelier to hold its neighbours than a round one at the same centroid
# distance. Each partition keeps its top m principal directions u_j (of the rows' residuals
# around the centroid, eigenvalues l_j) and the mean eigenvalue r of the rest; a query's score
# for it is |q - c|^2 + 0.125 spread - beta sum_j (1 - r / l_j) <q - c, u_j>^2, that is
# today's score with the distance along the stretched directions discounted as a Mahalanobis
# distance would (beta 1 would be the full discount). Only the nc best partitions by today's
# score are re-scored (the router returns a short list). Directions are stored with b bits a
# component (uniform levels over +-max, renormalised), as RAM would hold them.
# Score: routing coverage, the rows a query scans (partitions in score order) until its true
# 10 nearest neighbours' partitions are reached, as mean coverage against rows; "rows@0.9" is
# the rows for mean coverage 0.9 (interpolated). Partitions: k-means (10 Lloyd rounds) of the
# whole base into n/127 partitions, as the defaults give SIFT photos.
# Usage: directional_probe.py DATA_DIR [NQ] (base.u8bin, query.u8bin, gt100.bin); ~8 min and
# ~2 GB on 2 cores for SIFT photos (372,542 x 128) with 1000 queries.
import sys
import time

import numpy as np

D = sys.argv[1]
NQ = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
t0 = time.time()
rng = np.random.default_rng(0)


def read(p):
	n, d = np.fromfile(p, dtype='<i4', count=2)
	return np.fromfile(p, dtype=np.uint8, offset=8).reshape(n, d)


def sq(a):
	return (a * a).sum(1)


X = read(D + '/base.u8bin').astype(np.float32)
N, dim = X.shape
Q = read(D + '/query.u8bin')[:NQ].astype(np.float32)
n, k = np.fromfile(D + '/gt100.bin', dtype='<i4', count=2)
G = np.fromfile(D + '/gt100.bin', dtype='<i4', count=n * k, offset=8).reshape(n, k)[:NQ, :10]
P = N // 127


def assign(C, bs=20000):
	cn = sq(C)
	a = np.empty(N, np.int64)
	for i in range(0, N, bs):
		a[i:i + bs] = (cn[None, :] - 2 * X[i:i + bs] @ C.T).argmin(1)
	return a


C = X[rng.choice(N, P, replace=False)].copy()
for it in range(10):
	a = assign(C)
	cnt = np.bincount(a, minlength=P)
	s = np.zeros_like(C)
	np.add.at(s, a, X)
	nz = cnt > 0
	C[nz] = s[nz] / cnt[nz, None]
a = assign(C)
cnt = np.bincount(a, minlength=P)
order = np.argsort(a, kind='stable')
starts = np.concatenate([[0], np.cumsum(cnt)])
M = 8
U = np.zeros((P, M, dim), np.float32)
L = np.ones((P, M), np.float32)
spread = np.zeros(P, np.float32)
rest = np.ones(P, np.float32)
for j in range(P):
	R = X[order[starts[j]:starts[j + 1]]] - C[j]
	if len(R) == 0:
		continue
	spread[j] = sq(R).mean()
	w, v = np.linalg.eigh(R.T @ R / len(R))
	w, v = w[::-1], v[:, ::-1]
	U[j], L[j] = v[:, :M].T, np.maximum(w[:M], 1e-3)
	rest[j] = max((w.sum() - w[:M].sum()) / (dim - M), 1e-3)
print('%d partitions of %d x %d, k-means and PCA %.0f s' % (P, N, dim, time.time() - t0), flush=True)


def quant(V, bits):
	if bits == 0:
		return V
	if bits == 1:
		q = np.sign(V)
	else:
		lv = (1 << bits) - 1
		mx = np.abs(V).max(-1, keepdims=True)
		q = np.round((V / mx + 1) / 2 * lv) / lv * 2 - 1
	return q / np.linalg.norm(q, axis=-1, keepdims=True)


gtp = a[G]
cn = sq(C)
budgets = np.array([500, 1000, 1500, 2000, 2500, 3000, 4000, 5000, 6000, 8000])


def evaluate(name, score):
	cov = np.zeros(len(budgets))
	for i in range(NQ):
		o = np.argsort(score(i))
		cum = np.cumsum(cnt[o])
		rank = np.empty(P, np.int64)
		rank[o] = np.arange(P)
		need = cum[rank[gtp[i]]]
		cov += (need[:, None] <= budgets[None, :]).mean(0)
	cov /= NQ
	print('%-40s rows@0.9 %5.0f  coverage %s' % (name, np.interp(0.9, cov, budgets),
						    ' '.join('%.3f' % c for c in cov)), flush=True)


def today(i):
	return cn - 2 * C @ Q[i] + Q[i] @ Q[i] + 0.125 * spread


def directional(m, beta, bits, nc):
	Ub = quant(U[:, :m], bits)

	def f(i):
		s = today(i)
		cand = np.argpartition(s, nc)[:nc]
		proj = np.einsum('pmd,pd->pm', Ub[cand], Q[i] - C[cand])
		r = rest[cand]
		red = (proj ** 2 * (1 - r[:, None] / np.maximum(L[cand, :m], r[:, None]))).sum(1)
		out = np.full(P, np.inf, np.float32)
		out[cand] = s[cand] - beta * red
		return out
	return f


evaluate('centroid distance', lambda i: cn - 2 * C @ Q[i])
evaluate('+ 0.125 spread (today)', today)
for m, beta, bits, nc in [(1, 0.5, 0, 400), (2, 0.5, 0, 400), (4, 0.5, 0, 400), (8, 0.5, 0, 400), (8, 1.0, 0, 400),
			  (8, 0.5, 2, 400), (8, 0.5, 2, 100), (8, 0.5, 2, 48), (8, 0.5, 1, 100), (4, 0.5, 2, 100),
			  (2, 0.5, 2, 100)]:
	evaluate('directional m %d beta %.2f bits %s nc %d' % (m, beta, bits or 'f32', nc),
		 directional(m, beta, bits, nc))
