/* SPDX-License-Identifier: MIT */
/*
 * bench_rabitq.c: RaBitQ codes (src/core/rabitq.h), two measurements.
 *
 * --speed: estimate throughput in ns per code for bits 1..8 at dims 128,
 * 784 and 960, scalar and AVX2 kernels (median of --reps runs over 8192
 * codes, which stay in L2/L3 like one partition's code section), plus
 * ann_rbq_query_prepare time per (query, partition) and encode time per
 * vector (thread CPU time, median of --reps passes over 8192 vectors, 1024
 * from 6 bits on).
 *
 * --base F --query F [--gt F]: quality on real data. k-means partitions
 * (src/routing/kmeans.h, --parts, L2), exact scanning of the nprobe nearest
 * partitions gives the recall@10 curve; for the smallest nprobe reaching
 * each --target recall, and each bits of --bits, the probed partitions'
 * codes are estimated and two re-rank rules are measured against the exact
 * scan's recall R_exact:
 *   - by estimate: re-rank the B candidates with the smallest estimates;
 *     the table gives the smallest fixed B per query with recall@10 >=
 *     R_exact - 0.005 (and - 0.001);
 *   - by bound: re-rank every candidate whose lower bound est - width is
 *     below the 10th smallest upper bound est + width; the table gives the
 *     mean and p99 of re-ranked candidates per query and the recall it
 *     keeps, at eps0 = 2.8 (default) and 1.9 (the paper's).
 * --n N takes the first N base vectors (ground truth is then recomputed
 * exactly; --gt is only used when the whole base is taken). --train T
 * trains k-means on every (n / T)-th vector and assigns all to the nearest
 * centroid.
 *
 *   bench_rabitq --speed [--reps R]
 *   bench_rabitq --base B --query Q [--gt G] [--n N] [--nq Q] [--parts K]
 *                [--train T] [--bits 1,2,3,4,5] [--target 0.9,0.95] [--seed S]
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "distance.h"
#include "gt.h"
#include "kmeans.h"
#include "rabitq.h"
#include "vecio.h"

#define K 10

static void die(const char *what, const ann_error *e)
{
	fprintf(stderr, "bench_rabitq: %s: %s\n", what, e ? e->msg : "failed");
	exit(1);
}

static void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (!p) {
		fprintf(stderr, "bench_rabitq: out of memory (%zu bytes)\n", n);
		exit(1);
	}
	return p;
}

static double now_s(void)
{
	return (double)ann_now_ns() * 1e-9;
}

/* CPU time of this thread: the encoder runs on one thread, and on a shared
 * machine its CPU time varies far less than the wall clock. */
static double cpu_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* ---- speed ---------------------------------------------------------------- */

static void bench_speed(int reps)
{
	const uint32_t dims[] = {128, 784, 960};
	const size_t n = 8192;
	ann_rng rng;
	ann_rng_seed(&rng, 1);
	/* an AVX-512 CPU runs the AVX2 estimate kernels (src/core/rabitq_kernels.h) */
	const ann_simd_level levels[2] = {ANN_SIMD_SCALAR, ANN_SIMD_AVX2};
	printf("| dim | bits | code B | scalar ns/code | avx2 ns/code | prepare us | encode us/vector |\n");
	printf("| --- | --- | --- | --- | --- | --- | --- |\n");
	for (size_t di = 0; di < sizeof(dims) / sizeof(dims[0]); di++) {
		uint32_t d = dims[di];
		float *x = xmalloc(n * d * sizeof(float)), *c = xmalloc(d * sizeof(float)), *qv = xmalloc(d * sizeof(float));
		for (size_t i = 0; i < n * d; i++)
			x[i] = (float)ann_rng_normal(&rng);
		for (size_t j = 0; j < d; j++) {
			c[j] = (float)(0.1 * ann_rng_normal(&rng));
			qv[j] = (float)ann_rng_normal(&rng);
		}
		float *est = xmalloc(n * sizeof(float)), *w = xmalloc(n * sizeof(float));
		for (unsigned bits = 1; bits <= 8; bits++) {
			ann_rbq *q;
			ann_error e = {0};
			if (ann_rbq_new(d, bits, 7, &q, &e) < 0)
				die("rbq_new", &e);
			size_t cb = ann_rbq_code_bytes(q);
			uint8_t *codes = xmalloc(n * cb);
			size_t nenc = bits >= 6 ? n / 8 : n;
			double enc[64];
			for (int r = 0; r < reps; r++) {
				double c0 = cpu_s();
				if (ann_rbq_encode(q, c, x, nenc, codes, &e) < 0)
					die("encode", &e);
				enc[r] = (cpu_s() - c0) / (double)nenc * 1e6;
			}
			qsort(enc, (size_t)reps, sizeof(double), cmp_double);
			double enc_us = enc[reps / 2], t0;
			for (size_t i = nenc; i < n; i++) /* the rest: copies, same cost to estimate */
				memcpy(codes + i * cb, codes + (i % nenc) * cb, cb);
			ann_rbq_query *s;
			if (ann_rbq_query_new(q, &s, &e) < 0)
				die("query_new", &e);
			double prep[64], lvl[2][64];
			for (int r = 0; r < reps; r++) {
				t0 = now_s();
				for (int k = 0; k < 100; k++)
					ann_rbq_query_prepare(s, ANN_METRIC_L2, qv, c);
				prep[r] = (now_s() - t0) / 100 * 1e6;
				for (int l = 0; l < 2; l++) {
					if (l > 0 && !ann_kernels_for(levels[l])) {
						lvl[l][r] = NAN;
						continue;
					}
					ann_rbq_query_set_simd(s, levels[l], NULL);
					t0 = now_s();
					ann_rbq_estimate(s, codes, n, est, w);
					lvl[l][r] = (now_s() - t0) / (double)n * 1e9;
				}
			}
			qsort(prep, (size_t)reps, sizeof(double), cmp_double);
			qsort(lvl[0], (size_t)reps, sizeof(double), cmp_double);
			qsort(lvl[1], (size_t)reps, sizeof(double), cmp_double);
			printf("| %u | %u | %zu | %.1f | %.1f | %.2f | %.1f |\n", d, bits, cb, lvl[0][reps / 2],
			       lvl[1][reps / 2], prep[reps / 2], enc_us);
			fflush(stdout);
			ann_rbq_query_free(s);
			free(codes);
			ann_rbq_free(q);
		}
		free(x);
		free(c);
		free(qv);
		free(est);
		free(w);
	}
}

/* ---- quality --------------------------------------------------------------- */

static float *load(const char *path, size_t max, size_t *n, uint32_t *d)
{
	ann_vreader *r;
	ann_error e = {0};
	if (ann_vreader_open(path, &r, &e) < 0)
		die(path, &e);
	uint64_t cnt = ann_vreader_count(r);
	*d = ann_vreader_dim(r);
	*n = max && max < cnt ? max : (size_t)cnt;
	float *x = xmalloc(*n * *d * sizeof(float));
	size_t got = 0;
	while (got < *n) {
		int64_t k = ann_vreader_read_f32(r, x + got * *d, *n - got, &e);
		if (k < 0)
			die(path, &e);
		if (k == 0)
			break;
		got += (size_t)k;
	}
	ann_vreader_close(r);
	*n = got;
	return x;
}

static size_t parse_list(const char *s, double *out, size_t max)
{
	size_t n = 0;
	while (*s && n < max) {
		char *end;
		out[n++] = strtod(s, &end);
		s = *end == ',' ? end + 1 : end;
		if (end == s && *s)
			break;
	}
	return n;
}

typedef struct qopts {
	const char *base, *query, *gt;
	size_t n, nq, parts, train;
	double bits[8], targets[8];
	size_t nbits, ntargets;
	uint64_t seed;
} qopts;

/* The two-round rule: round 1 re-ranks the 2K smallest estimates exactly;
 * round 2 re-ranks every other candidate whose lower bound is below the
 * 10th exact distance found so far. Candidates are in probe order (m of
 * them, partitions probe[0..] laid out by start). Adds the re-ranked count
 * and the true neighbours in the final top-K. */
static const float *sort_key;
static int cmp_key(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	if (sort_key[x] != sort_key[y])
		return (sort_key[x] > sort_key[y]) - (sort_key[x] < sort_key[y]);
	return (x > y) - (x < y);
}

static void two_round(const float *est, const float *wid, size_t m, const float *qv, const float *xp, size_t d,
		      const uint32_t *probe, const size_t *start, const uint32_t *perm, const int32_t *gt,
		      const ann_kernels *kern, uint32_t *ord, double *count, double *hit)
{
	/* candidate index -> row of xp */
	for (size_t i = 0; i < m; i++)
		ord[i] = (uint32_t)i;
	sort_key = est;
	qsort(ord, m, sizeof(uint32_t), cmp_key);
	float td[K];
	int64_t tid[K];
	ann_topk tk;
	ann_topk_init(&tk, td, tid, K);
	size_t r1 = ANN_MIN(m, (size_t)(2 * K)), cnt = 0;
	for (size_t pass = 0; pass < 2; pass++) {
		float kth = ann_topk_bound(&tk);
		for (size_t j = pass ? r1 : 0; j < (pass ? m : r1); j++) {
			uint32_t ci = ord[j];
			if (pass && !(est[ci] - wid[ci] < kth))
				continue;
			/* locate the row */
			size_t acc = 0, p = 0;
			for (;; p++) {
				size_t c = start[probe[p] + 1] - start[probe[p]];
				if (ci < acc + c)
					break;
				acc += c;
			}
			size_t row = start[probe[p]] + (ci - acc);
			ann_topk_push(&tk, kern->l2_f32(qv, xp + row * d, d), perm[row]);
			cnt++;
		}
	}
	for (size_t a = 0; a < tk.n; a++)
		for (int g = 0; g < K; g++)
			*hit += gt[g] == (int32_t)tk.id[a];
	*count = (double)cnt;
}

static void bench_quality(const qopts *o)
{
	size_t n, nq;
	uint32_t d, dq;
	float *x = load(o->base, o->n, &n, &d);
	float *qs = load(o->query, o->nq, &nq, &dq);
	if (d != dq) {
		fprintf(stderr, "bench_rabitq: base dim %u, query dim %u\n", d, dq);
		exit(2);
	}
	ann_error e = {0};
	/* ground truth: the file's when the whole base is used, else exact */
	int32_t *gt = xmalloc(nq * K * sizeof(int32_t));
	size_t full = 0;
	{
		ann_vreader *r;
		if (ann_vreader_open(o->base, &r, &e) < 0)
			die(o->base, &e);
		full = (size_t)ann_vreader_count(r);
		ann_vreader_close(r);
	}
	if (o->gt && n == full) {
		uint32_t gnq, gk;
		int32_t *ids;
		if (ann_gt_read(o->gt, &gnq, &gk, &ids, NULL, &e) < 0)
			die(o->gt, &e);
		if (gnq < nq || gk < K) {
			fprintf(stderr, "bench_rabitq: %s: %u x %u, need %zu x %d\n", o->gt, gnq, gk, nq, K);
			exit(1);
		}
		for (size_t i = 0; i < nq; i++)
			memcpy(gt + i * K, ids + i * gk, K * sizeof(int32_t));
		ann_free(ids);
	} else {
		ann_gt_opts go;
		ann_gt_opts_init(&go);
		go.k = K;
		go.threads = 2;
		float *gd = xmalloc(nq * K * sizeof(float));
		if (ann_gt_compute_mem(x, n, qs, nq, d, &go, gt, gd, &e) < 0)
			die("ground truth", &e);
		free(gd);
	}
	fprintf(stderr, "bench_rabitq: %zu x %u base, %zu queries, %zu partitions\n", n, d, nq, o->parts);

	/* partitions */
	float *cent = xmalloc(o->parts * d * sizeof(float));
	uint32_t *assign = xmalloc(n * sizeof(uint32_t));
	ann_kmeans_opts ko;
	ann_kmeans_opts_init(&ko);
	ko.k = o->parts;
	ko.max_iter = 20;
	ko.seed = o->seed;
	ko.threads = 2;
	double t0 = now_s();
	if (o->train && o->train < n) {
		/* train on every (n / train)-th row, then assign all */
		size_t step = n / o->train, ns = n / step;
		float *smp = xmalloc(ns * d * sizeof(float));
		for (size_t i = 0; i < ns; i++)
			memcpy(smp + i * d, x + i * step * d, d * sizeof(float));
		if (ann_kmeans(smp, ns, d, &ko, cent, NULL, NULL, &e) < 0)
			die("kmeans", &e);
		free(smp);
		if (ann_nearest_centroids(x, n, d, cent, o->parts, 1, ANN_METRIC_L2, 2, assign, NULL, &e) < 0)
			die("assign", &e);
	} else if (ann_kmeans(x, n, d, &ko, cent, assign, NULL, &e) < 0) {
		die("kmeans", &e);
	}
	fprintf(stderr, "bench_rabitq: kmeans %.1f s\n", now_s() - t0);
	size_t *start = calloc(o->parts + 1, sizeof(size_t));
	uint32_t *perm = xmalloc(n * sizeof(uint32_t));
	for (size_t i = 0; i < n; i++)
		start[assign[i] + 1]++;
	for (size_t p = 0; p < o->parts; p++)
		start[p + 1] += start[p];
	{
		size_t *fill = xmalloc(o->parts * sizeof(size_t));
		memcpy(fill, start, o->parts * sizeof(size_t));
		for (size_t i = 0; i < n; i++)
			perm[fill[assign[i]]++] = (uint32_t)i;
		free(fill);
	}
	float *xp = xmalloc(n * d * sizeof(float)); /* rows in partition order */
	for (size_t i = 0; i < n; i++)
		memcpy(xp + i * d, x + (size_t)perm[i] * d, d * sizeof(float));
	free(x);
	x = NULL;

	/* probe order per query */
	const size_t maxp = ANN_MIN(o->parts, (size_t)128);
	uint32_t *probe = xmalloc(nq * maxp * sizeof(uint32_t));
	if (ann_nearest_centroids(qs, nq, d, cent, o->parts, maxp, ANN_METRIC_L2, 2, probe, NULL, &e) < 0)
		die("nearest centroids", &e);

	/* phase 1: exact recall per nprobe on the first (at most) 1000
	 * queries, a running top-10 over the probed partitions in order */
	const ann_kernels *kern = ann_kernels_best();
	static const size_t plist[] = {1, 2, 3, 4, 5, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 72, 80, 96, 112, 128};
	const size_t np = sizeof(plist) / sizeof(plist[0]);
	const size_t nq1 = ANN_MIN(nq, (size_t)1000);
	double hits[sizeof(plist) / sizeof(plist[0])] = {0}, cands[sizeof(plist) / sizeof(plist[0])] = {0};
	for (size_t qi = 0; qi < nq1; qi++) {
		float td[K];
		int64_t tid[K];
		ann_topk tk;
		ann_topk_init(&tk, td, tid, K);
		size_t m = 0, pi = 0;
		for (size_t p = 0; p < maxp && pi < np; p++) {
			uint32_t part = probe[qi * maxp + p];
			for (size_t i = start[part]; i < start[part + 1]; i++)
				ann_topk_push(&tk, kern->l2_f32(qs + qi * d, xp + i * d, d), perm[i]);
			m += start[part + 1] - start[part];
			while (pi < np && plist[pi] == p + 1) {
				for (size_t a2 = 0; a2 < tk.n; a2++)
					for (int g = 0; g < K; g++)
						hits[pi] += gt[qi * K + g] == (int32_t)tk.id[a2];
				cands[pi] += (double)m;
				pi++;
			}
		}
	}
	printf("\nexact scan of the nprobe nearest partitions (%zu partitions, %zu x %u, first %zu queries):\n\n",
	       o->parts, n, d, nq1);
	printf("| nprobe | recall@10 | candidates/query |\n| --- | --- | --- |\n");
	for (size_t pi = 0; pi < np && plist[pi] <= maxp; pi++)
		printf("| %zu | %.4f | %.0f |\n", plist[pi], hits[pi] / (double)(nq1 * K), cands[pi] / (double)nq1);

	/* codes per bits, in partition order */
	size_t nb = o->nbits;
	ann_rbq *rq[8];
	uint8_t *codes[8];
	for (size_t b = 0; b < nb; b++) {
		if (ann_rbq_new(d, (unsigned)o->bits[b], o->seed, &rq[b], &e) < 0)
			die("rbq_new", &e);
		size_t cb = ann_rbq_code_bytes(rq[b]);
		codes[b] = xmalloc(n * cb);
		t0 = now_s();
		for (size_t p = 0; p < o->parts; p++)
			if (ann_rbq_encode(rq[b], cent + p * d, xp + start[p] * d, start[p + 1] - start[p],
					   codes[b] + start[p] * cb, &e) < 0)
				die("encode", &e);
		fprintf(stderr, "bench_rabitq: encode %u bits: %.1f s\n", (unsigned)o->bits[b], now_s() - t0);
	}

	printf("\nre-ranking from codes, all %zu queries (recall@10 target: the exact scan's minus 0.005 or\n"
	       "0.001; 'by estimate' is the fixed number of smallest estimates re-ranked per query, 'by\n"
	       "bound' re-ranks every candidate with est - width < 10th smallest est + width):\n\n",
	       nq);
	printf("| nprobe | exact recall | candidates | bits | code B/vector | by estimate (-0.005) | by estimate (-0.001) "
	       "| by bound, eps0 2.8: mean | p99 | recall | by bound, eps0 1.9: mean | recall "
	       "| two rounds: mean | p99 | recall |\n");
	printf("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
	size_t maxc = 0;
	for (size_t qi = 0; qi < nq; qi++) {
		size_t m = 0;
		for (size_t p = 0; p < maxp; p++)
			m += start[probe[qi * maxp + p] + 1] - start[probe[qi * maxp + p]];
		maxc = ANN_MAX(maxc, m);
	}
	float *est = xmalloc(maxc * sizeof(float)), *wid = xmalloc(maxc * sizeof(float));
	uint32_t *ord = xmalloc(maxc * sizeof(uint32_t));
	ann_rbq_query *st[8];
	for (size_t b = 0; b < nb; b++)
		if (ann_rbq_query_new(rq[b], &st[b], &e) < 0)
			die("query_new", &e);
	/* per query: candidate index (in probe order) of the exact top-10
	 * members that are true neighbours, -1 for none */
	int64_t *good = xmalloc(nq * K * sizeof(int64_t));
	for (size_t ti = 0; ti < o->ntargets; ti++) {
		size_t pi = 0;
		while (pi < np && plist[pi] <= maxp && hits[pi] / (double)(nq1 * K) < o->targets[ti])
			pi++;
		if (pi == np || plist[pi] > maxp) {
			printf("| (recall %.2f not reached) |\n", o->targets[ti]);
			continue;
		}
		size_t nprobe = plist[pi];
		/* phase 2: exact top-10 among the probed, all queries */
		double found_exact = 0, ncand = 0;
		for (size_t qi = 0; qi < nq; qi++) {
			float td[K];
			int64_t tid[K];
			ann_topk tk;
			ann_topk_init(&tk, td, tid, K);
			size_t m = 0;
			for (size_t p = 0; p < nprobe; p++) {
				uint32_t part = probe[qi * maxp + p];
				for (size_t i = start[part]; i < start[part + 1]; i++, m++)
					ann_topk_push(&tk, kern->l2_f32(qs + qi * d, xp + i * d, d), (int64_t)m);
			}
			ncand += (double)m;
			/* map candidate index back to the base id */
			for (int g = 0; g < K; g++)
				good[qi * K + g] = -1;
			for (size_t a2 = 0; a2 < tk.n; a2++) {
				size_t ci = (size_t)tk.id[a2], acc = 0, p = 0;
				for (;; p++) {
					uint32_t part = probe[qi * maxp + p];
					size_t cnt = start[part + 1] - start[part];
					if (ci < acc + cnt)
						break;
					acc += cnt;
				}
				uint32_t id = perm[start[probe[qi * maxp + p]] + (ci - acc)];
				for (int g = 0; g < K; g++)
					if (gt[qi * K + g] == (int32_t)id) {
						good[qi * K + a2] = (int64_t)ci;
						found_exact++;
					}
			}
		}
		double rexact = found_exact / (double)(nq * K);
		for (size_t b = 0; b < nb; b++) {
			size_t cb = ann_rbq_code_bytes(rq[b]);
			/* hist[r]: true neighbours found at estimate rank r */
			size_t *hist = calloc(maxc + 1, sizeof(size_t));
			double bound_sum[2] = {0}, bound_hit[2] = {0}, two_sum = 0, two_hit = 0;
			double *bound_cnt = xmalloc(nq * sizeof(double)), *two_cnt = xmalloc(nq * sizeof(double));
			for (size_t qi = 0; qi < nq; qi++) {
				const float *qv = qs + qi * d;
				size_t m = 0;
				for (size_t p = 0; p < nprobe; p++) {
					uint32_t part = probe[qi * maxp + p];
					size_t cnt = start[part + 1] - start[part];
					ann_rbq_query_prepare(st[b], ANN_METRIC_L2, qv, cent + (size_t)part * d);
					ann_rbq_estimate(st[b], codes[b] + start[part] * cb, cnt, est + m, wid + m);
					m += cnt;
				}
				two_round(est, wid, m, qv, xp, d, probe + qi * maxp, start, perm, gt + qi * K, kern, ord,
					  &two_cnt[qi], &two_hit);
				two_sum += two_cnt[qi];
				for (int ei = 0; ei < 2; ei++) {
					float scale = ei == 0 ? 1.0f : 1.9f / ANN_RBQ_EPS0;
					float kth = INFINITY;
					if (m >= K) {
						/* the K smallest upper bounds, kept sorted */
						float top[K];
						size_t nt = 0;
						for (size_t i = 0; i < m; i++) {
							float u = est[i] + scale * wid[i];
							if (nt == K && !(u < top[K - 1]))
								continue;
							size_t j = nt < K ? nt++ : K - 1;
							while (j > 0 && top[j - 1] > u) {
								top[j] = top[j - 1];
								j--;
							}
							top[j] = u;
						}
						kth = top[K - 1];
					}
					size_t sel = 0;
					for (size_t i = 0; i < m; i++)
						sel += est[i] - scale * wid[i] < kth;
					bound_sum[ei] += (double)sel;
					if (ei == 0)
						bound_cnt[qi] = (double)sel;
					for (int g = 0; g < K; g++) {
						int64_t ci = good[qi * K + g];
						if (ci < 0)
							continue;
						if (est[ci] - scale * wid[ci] < kth)
							bound_hit[ei]++;
						if (ei == 0) {
							size_t rank = 0;
							for (size_t i = 0; i < m; i++)
								rank += est[i] < est[ci] || (est[i] == est[ci] && (int64_t)i < ci);
							hist[rank]++;
						}
					}
				}
			}
			/* smallest fixed budget keeping recall within 0.005 / 0.001 */
			size_t need[2] = {0, 0};
			const double tol[2] = {0.005, 0.001};
			for (int t = 0; t < 2; t++) {
				double found = 0, goal = (rexact - tol[t]) * (double)(nq * K);
				size_t r = 0;
				while (found < goal - 1e-9 && r < maxc)
					found += (double)hist[r++];
				need[t] = r;
			}
			qsort(bound_cnt, nq, sizeof(double), cmp_double);
			qsort(two_cnt, nq, sizeof(double), cmp_double);
			printf("| %zu | %.4f | %.0f | %u | %zu | %zu | %zu | %.0f | %.0f | %.4f | %.0f | %.4f | %.1f | %.0f | %.4f |\n",
			       nprobe,
			       rexact, ncand / (double)nq, (unsigned)o->bits[b], cb, need[0], need[1],
			       bound_sum[0] / (double)nq, bound_cnt[(size_t)(0.99 * (double)(nq - 1))],
			       bound_hit[0] / (double)(nq * K), bound_sum[1] / (double)nq,
			       bound_hit[1] / (double)(nq * K), two_sum / (double)nq,
			       two_cnt[(size_t)(0.99 * (double)(nq - 1))], two_hit / (double)(nq * K));
			fflush(stdout);
			free(hist);
			free(bound_cnt);
			free(two_cnt);
		}
	}
	free(good);
	for (size_t b = 0; b < nb; b++) {
		ann_rbq_query_free(st[b]);
		ann_rbq_free(rq[b]);
		free(codes[b]);
	}
	free(est);
	free(wid);
	free(ord);
	free(probe);
	free(xp);
	free(perm);
	free(start);
	free(assign);
	free(cent);
	free(gt);
	free(qs);
}

int main(int argc, char **argv)
{
	bool speed = false;
	int reps = 5;
	qopts o = {.parts = 256, .seed = 1};
	o.nbits = parse_list("1,2,3,4,5", o.bits, 8);
	o.ntargets = parse_list("0.9", o.targets, 8);
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--speed")) {
			speed = true;
			continue;
		}
		if (!v) {
			fprintf(stderr, "bench_rabitq: %s needs a value\n", a);
			return 2;
		}
		i++;
		if (!strcmp(a, "--reps"))
			reps = atoi(v) < 1 ? 1 : atoi(v) > 64 ? 64 : atoi(v);
		else if (!strcmp(a, "--base"))
			o.base = v;
		else if (!strcmp(a, "--query"))
			o.query = v;
		else if (!strcmp(a, "--gt"))
			o.gt = v;
		else if (!strcmp(a, "--n"))
			o.n = strtoull(v, NULL, 10);
		else if (!strcmp(a, "--nq"))
			o.nq = strtoull(v, NULL, 10);
		else if (!strcmp(a, "--train"))
			o.train = strtoull(v, NULL, 10);
		else if (!strcmp(a, "--parts"))
			o.parts = strtoull(v, NULL, 10);
		else if (!strcmp(a, "--bits"))
			o.nbits = parse_list(v, o.bits, 8);
		else if (!strcmp(a, "--target"))
			o.ntargets = parse_list(v, o.targets, 8);
		else if (!strcmp(a, "--seed"))
			o.seed = strtoull(v, NULL, 10);
		else {
			fprintf(stderr, "bench_rabitq: unknown option %s\n", a);
			return 2;
		}
	}
	for (size_t b = 0; b < o.nbits; b++)
		if (!(o.bits[b] >= 1 && o.bits[b] <= 8)) {
			fprintf(stderr, "bench_rabitq: --bits values must be 1..8\n");
			return 2;
		}
	if (speed)
		bench_speed(reps);
	if (o.base && o.query) {
		if (o.parts < 1) {
			fprintf(stderr, "bench_rabitq: --parts must be >= 1\n");
			return 2;
		}
		bench_quality(&o);
	} else if (!speed) {
		fprintf(stderr, "usage: bench_rabitq --speed [--reps R]\n"
				"       bench_rabitq --base B --query Q [--gt G] [--n N] [--nq Q] [--parts K]\n"
				"                    [--train T] [--bits 1,2,3,4,5] [--target 0.9,0.95] [--seed S]\n");
		return 2;
	}
	return 0;
}
