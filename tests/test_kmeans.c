/* SPDX-License-Identifier: MIT */
/* Description: kmeans.c: planted clusters recovered exactly, inertia never
 * rises, equality with a naive scalar Lloyd from the same start, the size cap
 * (respected, only clusters over it move, better than blind overflow),
 * empty-cluster repair, determinism across seeds and thread counts,
 * mini-batch, spherical metrics, nearest-centroids against brute force,
 * two-level k-means (balanced, near one-level Lloyd's inertia, deterministic,
 * centroids in no cell order), no cluster left far below n / k by outliers,
 * and the two-level tree's assignment against the exact scan. */
#include "testutil.h"

#include "kmeans.h"

/* n points around k planted centres (centres spread `sep`, noise sd 1),
 * cluster sizes proportional to 1 + skew * c. */
static float *planted(ann_rng *r, size_t n, size_t d, size_t k, double sep, double skew, uint32_t *label)
{
	float *ctr = malloc(k * d * sizeof(float)), *x = malloc(n * d * sizeof(float));
	for (size_t i = 0; i < k * d; i++)
		ctr[i] = (float)(sep * ann_rng_normal(r));
	double tot = 0;
	for (size_t c = 0; c < k; c++)
		tot += 1 + skew * (double)c;
	size_t i = 0;
	for (size_t c = 0; c < k; c++) {
		size_t m = c + 1 == k ? n - i : (size_t)((double)n * (1 + skew * (double)c) / tot);
		for (size_t q = 0; q < m; q++, i++) {
			label[i] = (uint32_t)c;
			for (size_t j = 0; j < d; j++)
				x[i * d + j] = ctr[c * d + j] + (float)ann_rng_normal(r);
		}
	}
	free(ctr);
	return x;
}

static double sqdist(const float *a, const float *b, size_t d)
{
	double s = 0;
	for (size_t j = 0; j < d; j++)
		s += ((double)a[j] - b[j]) * ((double)a[j] - b[j]);
	return s;
}

/* Assignments equal labels up to a permutation of cluster ids. */
static void assert_same_partition(const uint32_t *a, const uint32_t *label, size_t n, size_t k)
{
	uint32_t *map = malloc(k * sizeof(uint32_t)), *inv = malloc(k * sizeof(uint32_t));
	for (size_t c = 0; c < k; c++)
		map[c] = inv[c] = UINT32_MAX;
	for (size_t i = 0; i < n; i++) {
		uint32_t l = label[i], c = a[i];
		ASSERT_TRUE(c < k);
		if (map[l] == UINT32_MAX && inv[c] == UINT32_MAX) {
			map[l] = c;
			inv[c] = l;
		}
		if (map[l] != c)
			T_FAIL("point %zu: planted %u maps to %u, assigned %u", i, l, map[l], c);
	}
	free(map);
	free(inv);
}

/* Exact inertia of assign against centroids (means recomputed if recompute). */
static double inertia_of(const float *x, size_t n, size_t d, size_t k, const uint32_t *assign,
			 const float *cent, bool recompute)
{
	double *m = calloc(k * d, sizeof(double));
	size_t *cnt = calloc(k, sizeof(size_t));
	if (recompute) {
		for (size_t i = 0; i < n; i++) {
			cnt[assign[i]]++;
			for (size_t j = 0; j < d; j++)
				m[assign[i] * d + j] += x[i * d + j];
		}
		for (size_t c = 0; c < k; c++)
			for (size_t j = 0; j < d; j++)
				m[c * d + j] = cnt[c] ? m[c * d + j] / (double)cnt[c] : 0;
	} else {
		for (size_t i = 0; i < k * d; i++)
			m[i] = cent[i];
	}
	double s = 0;
	for (size_t i = 0; i < n; i++)
		for (size_t j = 0; j < d; j++) {
			double t = x[i * d + j] - m[assign[i] * d + j];
			s += t * t;
		}
	free(m);
	free(cnt);
	return s;
}

static void test_planted(ann_rng *r)
{
	t_current = "test_planted";
	size_t n = 6000, d = 16, k = 10;
	uint32_t *label = malloc(n * sizeof(uint32_t)), *a = malloc(n * sizeof(uint32_t));
	float *x = planted(r, n, d, k, 20.0, 0.3, label);
	float *c = malloc(k * d * sizeof(float));
	for (int threads = 1; threads <= 2; threads++) {
		ann_kmeans_opts o;
		ann_kmeans_opts_init(&o);
		o.k = k;
		o.threads = threads;
		o.seed = 7;
		ann_kmeans_stats st;
		ASSERT_OK(ann_kmeans(x, n, d, &o, c, a, &st, NULL));
		assert_same_partition(a, label, n, k);
		ASSERT_TRUE(st.iterations >= 2 && st.iterations <= o.max_iter);
		ASSERT_NEAR(st.inertia, inertia_of(x, n, d, k, a, c, false), 1e-4);
		ASSERT_TRUE(st.work_bytes > 0);
	}
	/* Random seeding and the batched (k > 128 style) seeding: force small
	 * rounds through a tiny init sample still equal to n. */
	ann_kmeans_opts o;
	ann_kmeans_opts_init(&o);
	o.k = k;
	o.init = ANN_KMEANS_RANDOM;
	o.max_iter = 50;
	o.seed = 3;
	ASSERT_OK(ann_kmeans(x, n, d, &o, c, a, NULL, NULL));
	/* Random seeding may merge two planted clusters; only sanity here. */
	for (size_t i = 0; i < n; i++)
		ASSERT_TRUE(a[i] < k);
	free(x);
	free(c);
	free(a);
	free(label);
}

static void test_spherical(ann_rng *r)
{
	t_current = "test_spherical";
	/* Planted directions with random scales: COSINE recovers them. */
	size_t n = 3000, d = 24, k = 6;
	uint32_t *label = malloc(n * sizeof(uint32_t)), *a = malloc(n * sizeof(uint32_t));
	float *x = planted(r, n, d, k, 10.0, 0.0, label);
	for (size_t i = 0; i < n; i++) {
		float s = 0.5f + 4.0f * (float)ann_rng_uniform(r);
		for (size_t j = 0; j < d; j++)
			x[i * d + j] *= s;
	}
	float *c = malloc(k * d * sizeof(float));
	ann_kmeans_opts o;
	ann_kmeans_opts_init(&o);
	o.k = k;
	o.metric = ANN_METRIC_COSINE;
	o.seed = 11;
	ann_kmeans_stats st;
	ASSERT_OK(ann_kmeans(x, n, d, &o, c, a, &st, NULL));
	assert_same_partition(a, label, n, k);
	for (size_t q = 0; q < k; q++) {
		double nn = 0;
		for (size_t j = 0; j < d; j++)
			nn += (double)c[q * d + j] * c[q * d + j];
		ASSERT_NEAR(nn, 1.0, 1e-4);
	}
	o.metric = ANN_METRIC_IP;
	ASSERT_OK(ann_kmeans(x, n, d, &o, c, a, &st, NULL));
	assert_same_partition(a, label, n, k);
	free(x);
	free(c);
	free(a);
	free(label);
}

static uint64_t prog_calls, prog_last;
static void on_progress(void *ctx, const char *phase, uint64_t done, uint64_t total)
{
	(void)ctx;
	ASSERT_LE(done, total);
	if (strcmp(phase, "kmeans") == 0) {
		ASSERT_EQ(done, prog_last + 1);
		prog_calls++;
		prog_last = done;
	} else {
		ASSERT_TRUE(strcmp(phase, "kmeans-seed") == 0);
	}
}

static void test_monotone(ann_rng *r)
{
	t_current = "test_monotone";
	size_t n = 5000, d = 32, k = 60;
	uint32_t *label = malloc(n * sizeof(uint32_t));
	float *x = planted(r, n, d, 20, 2.0, 0.1, label);
	float *c = malloc(k * d * sizeof(float));
	double hist[32];
	for (int init = 0; init < 2; init++) {
		ann_kmeans_opts o;
		ann_kmeans_opts_init(&o);
		o.k = k;
		o.max_iter = 30;
		o.tol = 0;
		o.history = hist;
		o.init = init ? ANN_KMEANS_RANDOM : ANN_KMEANS_PLUSPLUS;
		o.progress = on_progress;
		prog_calls = prog_last = 0;
		ann_kmeans_stats st;
		ASSERT_OK(ann_kmeans(x, n, d, &o, c, NULL, &st, NULL));
		ASSERT_EQ(st.iterations, 30);
		ASSERT_EQ(prog_calls, 30);
		for (uint32_t i = 1; i < st.iterations; i++)
			ASSERT_LE(hist[i], hist[i - 1] * (1 + 1e-6));
		ASSERT_LT(hist[st.iterations - 1], hist[0]);
		/* the small-cluster pass runs after the recorded steps */
		if (st.small_repaired == 0)
			ASSERT_NEAR(st.inertia, hist[st.iterations - 1], 1e-4);
		else
			ASSERT_LT(st.inertia, hist[0]);
	}
	free(x);
	free(c);
	free(label);
}

/* Naive Lloyd in double from the given centroids: iters assignments with
 * iters - 1 updates in between, like ann_kmeans. */
static void naive_lloyd(const float *x, size_t n, size_t d, size_t k, float *cent, uint32_t *a, int iters)
{
	double *m = malloc(k * d * sizeof(double));
	size_t *cnt = malloc(k * sizeof(size_t));
	for (int it = 0; it < iters; it++) {
		for (size_t i = 0; i < n; i++) {
			double best = INFINITY;
			for (size_t c = 0; c < k; c++) {
				double dd = sqdist(x + i * d, cent + c * d, d);
				if (dd < best) {
					best = dd;
					a[i] = (uint32_t)c;
				}
			}
		}
		if (it + 1 == iters)
			break;
		memset(m, 0, k * d * sizeof(double));
		memset(cnt, 0, k * sizeof(size_t));
		for (size_t i = 0; i < n; i++) {
			cnt[a[i]]++;
			for (size_t j = 0; j < d; j++)
				m[a[i] * d + j] += x[i * d + j];
		}
		for (size_t c = 0; c < k; c++)
			if (cnt[c])
				for (size_t j = 0; j < d; j++)
					cent[c * d + j] = (float)(m[c * d + j] / (double)cnt[c]);
	}
	free(m);
	free(cnt);
}

static void test_naive(ann_rng *r)
{
	t_current = "test_naive";
	size_t n = 1500, d = 8, k = 12;
	float *x = malloc(n * d * sizeof(float));
	t_fill_uniform(r, x, n * d, -1, 1);
	float *c0 = malloc(k * d * sizeof(float)), *c1 = malloc(k * d * sizeof(float));
	for (size_t c = 0; c < k; c++)
		memcpy(c0 + c * d, x + (c * 97) * d, d * sizeof(float));
	memcpy(c1, c0, k * d * sizeof(float));
	uint32_t *a0 = malloc(n * sizeof(uint32_t)), *a1 = malloc(n * sizeof(uint32_t));
	ann_kmeans_opts o;
	ann_kmeans_opts_init(&o);
	o.k = k;
	o.init = ANN_KMEANS_GIVEN;
	o.max_iter = 8;
	o.tol = 0;
	ann_kmeans_stats st;
	ASSERT_OK(ann_kmeans(x, n, d, &o, c1, a1, &st, NULL));
	ASSERT_EQ(st.empty_repaired, 0);
	naive_lloyd(x, n, d, k, c0, a0, 8);
	size_t diff = 0;
	for (size_t i = 0; i < n; i++)
		diff += a0[i] != a1[i];
	ASSERT_LE(diff, n / 500); /* only float near-ties may differ */
	for (size_t i = 0; i < k * d; i++)
		ASSERT_NEAR(c1[i], c0[i], 2e-3);
	ASSERT_NEAR(st.inertia, inertia_of(x, n, d, k, a0, c0, false), 1e-3);
	free(x);
	free(c0);
	free(c1);
	free(a0);
	free(a1);
}

/* Blind overflow: points in index order keep their cluster while it has room,
 * else take the nearest cluster with room. */
static void blind_cap(const float *x, size_t n, size_t d, size_t k, const float *cent, const uint32_t *a0,
		      size_t cap, uint32_t *out)
{
	size_t *occ = calloc(k, sizeof(size_t));
	for (size_t i = 0; i < n; i++) {
		uint32_t c = a0[i];
		if (occ[c] >= cap) {
			double best = INFINITY;
			for (size_t q = 0; q < k; q++) {
				double dd = sqdist(x + i * d, cent + q * d, d);
				if (occ[q] < cap && dd < best) {
					best = dd;
					c = (uint32_t)q;
				}
			}
		}
		out[i] = c;
		occ[c]++;
	}
	free(occ);
}

static void test_balance(ann_rng *r)
{
	t_current = "test_balance";
	size_t n = 8000, d = 16, k = 16;
	uint32_t *label = malloc(n * sizeof(uint32_t));
	float *x = planted(r, n, d, 64, 1.0, 0.05, label);
	float *c0 = malloc(k * d * sizeof(float)), *c1 = malloc(k * d * sizeof(float));
	uint32_t *a0 = malloc(n * sizeof(uint32_t)), *a1 = malloc(n * sizeof(uint32_t)),
		 *ab = malloc(n * sizeof(uint32_t));
	ann_kmeans_opts o;
	ann_kmeans_opts_init(&o);
	o.k = k;
	o.seed = 5;
	ann_kmeans_stats st0, st1;
	ASSERT_OK(ann_kmeans(x, n, d, &o, c0, a0, &st0, NULL));
	size_t cap = (n / k) * 11 / 10;
	ASSERT_TRUE(st0.largest > cap); /* the test must exercise the cap */
	o.max_size = cap;
	o.threads = 2;
	ASSERT_OK(ann_kmeans(x, n, d, &o, c1, a1, &st1, NULL));
	ASSERT_NEAR(st1.inertia_unbalanced, st0.inertia, 1e-9);
	ASSERT_LE(st1.largest, cap);
	size_t *cnt0 = calloc(k, sizeof(size_t)), *cnt1 = calloc(k, sizeof(size_t));
	for (size_t i = 0; i < n; i++) {
		cnt0[a0[i]]++;
		cnt1[a1[i]]++;
	}
	size_t moved = 0;
	for (size_t i = 0; i < n; i++) {
		if (a0[i] != a1[i]) {
			moved++;
			ASSERT_TRUE(cnt0[a0[i]] > cap); /* only over-full clusters give points away */
		}
	}
	for (size_t c = 0; c < k; c++)
		ASSERT_LE(cnt1[c], cap);
	ASSERT_EQ(moved, st1.moved);
	/* Cost: modestly above the uncapped optimum, below blind overflow. */
	double ours = inertia_of(x, n, d, k, a1, c1, true);
	blind_cap(x, n, d, k, c0, a0, cap, ab);
	double blind = inertia_of(x, n, d, k, ab, NULL, true);
	printf("balance: cap %zu, largest %zu -> %zu, moved %zu, inertia %.1f -> %.1f (blind %.1f)\n", cap,
	       st0.largest, st1.largest, moved, st0.inertia, ours, blind);
	ASSERT_NEAR(ours, st1.inertia, 1e-4);
	ASSERT_LE(st0.inertia * (1 - 1e-6), ours);
	ASSERT_LT(ours, st0.inertia * 1.10);
	ASSERT_LT(ours, blind);
	/* The tightest cap: k * cap == n. */
	o.max_size = n / k;
	ASSERT_OK(ann_kmeans(x, n, d, &o, c1, a1, &st1, NULL));
	ASSERT_EQ(st1.largest, n / k);
	/* Infeasible cap. */
	ann_error e = {0};
	o.max_size = n / k - 1;
	ASSERT_ERR(ann_kmeans(x, n, d, &o, c1, a1, NULL, &e), e, ANN_E_INVAL, "max_size");
	free(cnt0);
	free(cnt1);
	free(x);
	free(c0);
	free(c1);
	free(a0);
	free(a1);
	free(ab);
	free(label);
}

static void test_empty_repair(ann_rng *r)
{
	t_current = "test_empty_repair";
	size_t n = 4000, d = 8, k = 8;
	uint32_t *label = malloc(n * sizeof(uint32_t)), *a = malloc(n * sizeof(uint32_t));
	float *x = planted(r, n, d, k, 20.0, 0.0, label);
	float *c = malloc(k * d * sizeof(float));
	size_t *cnt = calloc(k, sizeof(size_t));
	double hist[40];
	ann_kmeans_opts o;
	ann_kmeans_opts_init(&o);
	o.k = k;
	o.init = ANN_KMEANS_GIVEN;
	o.max_iter = 40;
	o.history = hist;
	ann_kmeans_stats st;
	/* One centroid per planted cluster but the last, which is far away:
	 * its cluster is empty, the cluster that swallowed planted cluster 7 is
	 * the largest, and splitting it restores the planted partition. */
	for (size_t q = 0; q < k; q++)
		for (size_t j = 0; j < d; j++)
			c[q * d + j] = q < k - 1 ? x[(q * 500 + 7) * d + j] : 1e4f;
	ASSERT_OK(ann_kmeans(x, n, d, &o, c, a, &st, NULL));
	ASSERT_TRUE(st.empty_repaired >= 1);
	assert_same_partition(a, label, n, k);
	/* Three far centroids and one duplicate: four clusters are empty after
	 * the first assignment. */
	for (size_t q = 0; q < k; q++)
		for (size_t j = 0; j < d; j++)
			c[q * d + j] = q < 4    ? x[(q * 1000 + 3) * d + j]
				       : q == 4 ? x[3 * d + j]
						: 1e4f * (float)q;
	ASSERT_OK(ann_kmeans(x, n, d, &o, c, a, &st, NULL));
	ASSERT_TRUE(st.empty_repaired >= 4);
	for (uint32_t i = 1; i < st.iterations; i++)
		ASSERT_LE(hist[i], hist[i - 1] * (1 + 1e-6));
	ASSERT_LT(st.inertia, hist[0] / 4);
	for (size_t i = 0; i < n; i++)
		cnt[a[i]]++;
	for (size_t q = 0; q < k; q++)
		ASSERT_TRUE(cnt[q] > 0);
	/* All centroids identical: k - 1 empty clusters at once. */
	for (size_t q = 0; q < k; q++)
		memcpy(c + q * d, x, d * sizeof(float));
	ASSERT_OK(ann_kmeans(x, n, d, &o, c, a, &st, NULL));
	ASSERT_TRUE(st.empty_repaired >= k - 1);
	memset(cnt, 0, k * sizeof(size_t));
	for (size_t i = 0; i < n; i++)
		cnt[a[i]]++;
	for (size_t q = 0; q < k; q++)
		ASSERT_TRUE(cnt[q] > 0);
	/* Fewer distinct points than k: no crash, and no split can fill the
	 * empty clusters. */
	for (size_t i = 0; i < n; i++)
		memcpy(x + i * d, x + (i % 3) * d, d * sizeof(float));
	o.init = ANN_KMEANS_PLUSPLUS;
	ASSERT_OK(ann_kmeans(x, n, d, &o, c, a, &st, NULL));
	ASSERT_NEAR(st.inertia, 0, 1e-6);
	free(cnt);
	free(x);
	free(c);
	free(a);
	free(label);
}

static void test_determinism(ann_rng *r)
{
	t_current = "test_determinism";
	size_t n = 20000, d = 12, k = 300; /* k > 128: batched seeding */
	uint32_t *label = malloc(n * sizeof(uint32_t));
	float *x = planted(r, n, d, 50, 3.0, 0.0, label);
	float *c[3];
	uint32_t *a[3];
	ann_kmeans_stats st[3];
	for (int t = 0; t < 3; t++) {
		c[t] = malloc(k * d * sizeof(float));
		a[t] = malloc(n * sizeof(uint32_t));
		ann_kmeans_opts o;
		ann_kmeans_opts_init(&o);
		o.k = k;
		o.max_iter = 6;
		o.seed = t == 2 ? 99 : 42;
		o.threads = t == 1 ? 2 : 1;
		o.init_sample = 8000;
		ASSERT_OK(ann_kmeans(x, n, d, &o, c[t], a[t], &st[t], NULL));
	}
	ASSERT_TRUE(memcmp(c[0], c[1], k * d * sizeof(float)) == 0);
	ASSERT_TRUE(memcmp(a[0], a[1], n * sizeof(uint32_t)) == 0);
	ASSERT_TRUE(st[0].inertia == st[1].inertia);
	ASSERT_TRUE(memcmp(c[0], c[2], k * d * sizeof(float)) != 0);
	/* Seeding quality: k-means++ beats random seeding after as few steps. */
	ann_kmeans_opts o;
	ann_kmeans_opts_init(&o);
	o.k = k;
	o.max_iter = 6;
	o.init = ANN_KMEANS_RANDOM;
	ann_kmeans_stats sr;
	ASSERT_OK(ann_kmeans(x, n, d, &o, c[2], NULL, &sr, NULL));
	printf("k=%zu: inertia after 6 steps: k-means++ %.1f, random %.1f\n", k, st[0].inertia, sr.inertia);
	ASSERT_LT(st[0].inertia, sr.inertia);
	for (int t = 0; t < 3; t++) {
		free(c[t]);
		free(a[t]);
	}
	free(x);
	free(label);
}

static void test_minibatch(ann_rng *r)
{
	t_current = "test_minibatch";
	/* No planted structure: local optima then differ little in inertia. */
	size_t n = 20000, d = 8, k = 20;
	uint32_t *a = malloc(n * sizeof(uint32_t));
	float *x = malloc(n * d * sizeof(float));
	t_fill_uniform(r, x, n * d, -1, 1);
	float *c = malloc(k * d * sizeof(float));
	double hist[64];
	ann_kmeans_opts o;
	ann_kmeans_opts_init(&o);
	o.k = k;
	ann_kmeans_stats full, mb;
	ASSERT_OK(ann_kmeans(x, n, d, &o, c, a, &full, NULL));
	o.minibatch = 1024;
	o.max_iter = 40;
	o.history = hist;
	ASSERT_OK(ann_kmeans(x, n, d, &o, c, a, &mb, NULL));
	ASSERT_TRUE(mb.iterations >= 3 && mb.iterations <= 42);
	printf("minibatch: %u steps, inertia %.1f vs Lloyd %.1f\n", mb.iterations, mb.inertia, full.inertia);
	ASSERT_LT(mb.inertia, full.inertia * 1.05);
	ASSERT_NEAR(mb.inertia, inertia_of(x, n, d, k, a, c, false), 1e-4);
	free(x);
	free(c);
	free(a);
}

/* nearest_centroids against an exact scan: each returned list is sorted and
 * agrees with the exact top-nprobe up to float near-ties. */
static void test_nearest(ann_rng *r)
{
	t_current = "test_nearest";
	size_t n = 500, d = 20, k = 1500, np = 7;
	float *x = malloc(n * d * sizeof(float)), *c = malloc(k * d * sizeof(float));
	t_fill_uniform(r, x, n * d, -1, 1);
	t_fill_uniform(r, c, k * d, -1, 1);
	uint32_t *ids = malloc(n * np * sizeof(uint32_t));
	float *dd = malloc(n * np * sizeof(float));
	double *ex = malloc(k * sizeof(double));
	for (int m = 0; m < 3; m++) {
		ann_metric metric = (ann_metric)m;
		ASSERT_OK(ann_nearest_centroids(x, n, d, c, k, np, metric, 2, ids, dd, NULL));
		for (size_t i = 0; i < n; i++) {
			const float *xi = x + i * d;
			for (size_t q = 0; q < k; q++) {
				const float *cq = c + q * d;
				double dot = 0, nx = 0, nc = 0;
				for (size_t j = 0; j < d; j++) {
					dot += (double)xi[j] * cq[j];
					nx += (double)xi[j] * xi[j];
					nc += (double)cq[j] * cq[j];
				}
				ex[q] = m == 0 ? sqdist(xi, cq, d) : m == 1 ? -dot : 1 - dot / sqrt(nx * nc);
			}
			/* the exact np-th smallest distance */
			double *sorted = malloc(k * sizeof(double));
			memcpy(sorted, ex, k * sizeof(double));
			for (size_t a = 0; a < np; a++)
				for (size_t b = a + 1; b < k; b++)
					if (sorted[b] < sorted[a]) {
						double t = sorted[a];
						sorted[a] = sorted[b];
						sorted[b] = t;
					}
			for (size_t j = 0; j < np; j++) {
				uint32_t id = ids[i * np + j];
				ASSERT_TRUE(id < k);
				ASSERT_NEAR(dd[i * np + j], ex[id], 1e-4);
				ASSERT_LE(ex[id], sorted[np - 1] + 1e-4);
				if (j)
					ASSERT_LE(dd[i * np + j - 1], dd[i * np + j]);
			}
			free(sorted);
		}
	}
	/* nprobe > k pads. */
	uint32_t pid[5];
	float pd[5];
	ASSERT_OK(ann_nearest_centroids(x, 1, d, c, 3, 5, ANN_METRIC_L2, 1, pid, pd, NULL));
	ASSERT_TRUE(pid[0] < 3 && pid[1] < 3 && pid[2] < 3);
	ASSERT_EQ(pid[3], UINT32_MAX);
	ASSERT_TRUE(isinf(pd[4]));
	free(x);
	free(c);
	free(ids);
	free(dd);
	free(ex);
}

/* Top-n with many exact ties (small integer coordinates: every distance is an
 * exact float): the lists are the n smallest (distance, id) pairs, ties by
 * id, pair for pair, for n from 1 to all the centroids (the selection buffer
 * is cut many times, once or never). */
typedef struct ref_pair {
	float d;
	uint32_t id;
} ref_pair;

static int ref_cmp(const void *a, const void *b)
{
	const ref_pair *x = a, *y = b;
	if (x->d != y->d)
		return x->d < y->d ? -1 : 1;
	return x->id < y->id ? -1 : x->id > y->id;
}

static void test_topn_ties(ann_rng *r)
{
	t_current = "test_topn_ties";
	const size_t n = 300, d = 8, k = 3000;
	float *x = malloc(n * d * sizeof(float)), *c = malloc(k * d * sizeof(float));
	for (size_t i = 0; i < n * d; i++)
		x[i] = (float)(ann_rng_next(r) % 4);
	for (size_t i = 0; i < k * d; i++)
		c[i] = (float)(ann_rng_next(r) % 4);
	ref_pair *ref = malloc(k * sizeof(ref_pair));
	const size_t nps[] = {1, 7, 48, 200, 1100, 2999, 3000};
	for (size_t t = 0; t < sizeof(nps) / sizeof(nps[0]); t++) {
		size_t np = nps[t];
		uint32_t *ids = malloc(n * np * sizeof(uint32_t));
		float *dd = malloc(n * np * sizeof(float));
		ASSERT_OK(ann_nearest_centroids(x, n, d, c, k, np, ANN_METRIC_L2, 2, ids, dd, NULL));
		for (size_t i = 0; i < n; i++) {
			for (size_t q = 0; q < k; q++)
				ref[q] = (ref_pair){(float)sqdist(x + i * d, c + q * d, d), (uint32_t)q};
			qsort(ref, k, sizeof(ref_pair), ref_cmp);
			for (size_t j = 0; j < np; j++)
				if (ids[i * np + j] != ref[j].id || dd[i * np + j] != ref[j].d)
					T_FAIL("nprobe %zu row %zu rank %zu: (%g, %u), expected (%g, %u)", np, i, j,
					       dd[i * np + j], ids[i * np + j], ref[j].d, ref[j].id);
		}
		free(ids);
		free(dd);
	}
	free(ref);
	free(x);
	free(c);
}

static void test_errors(void)
{
	t_current = "test_errors";
	float x[8] = {0}, c[8];
	ann_kmeans_opts o;
	ann_kmeans_opts_init(&o);
	ann_error e = {0};
	o.k = 5;
	ASSERT_ERR(ann_kmeans(x, 4, 2, &o, c, NULL, NULL, &e), e, ANN_E_INVAL, "k");
	o.k = 2;
	o.metric = (ann_metric)7;
	ASSERT_ERR(ann_kmeans(x, 4, 2, &o, c, NULL, NULL, &e), e, ANN_E_INVAL, "metric");
	o.metric = ANN_METRIC_L2;
	o.threads = 0;
	ASSERT_ERR(ann_kmeans(x, 4, 2, &o, c, NULL, NULL, &e), e, ANN_E_INVAL, "threads");
	o.threads = 1;
	/* k = n = 4 on all-zero points, k = 1. */
	o.k = 4;
	ASSERT_OK(ann_kmeans(x, 4, 2, &o, c, NULL, NULL, NULL));
	o.k = 1;
	ann_kmeans_stats st;
	ASSERT_OK(ann_kmeans(x, 4, 2, &o, c, NULL, &st, NULL));
	ASSERT_EQ(st.largest, 4);
	uint32_t id;
	ASSERT_ERR(ann_nearest_centroids(x, 1, 2, c, 1, 0, ANN_METRIC_L2, 1, &id, NULL, &e), e, ANN_E_INVAL,
		   "nprobe");
	/* An allocation failure is reported, not crashed on. */
	for (int64_t f = 0; f < 40; f++) {
		float y[64];
		for (int i = 0; i < 64; i++)
			y[i] = (float)(i % 7);
		o.k = 4;
		o.max_size = 9;
		ann_mem_fail_after(f);
		int rc = ann_kmeans(y, 32, 2, &o, c, NULL, NULL, &e);
		ann_mem_fail_after(-1);
		if (rc != ANN_OK && rc != ANN_E_NOMEM)
			T_FAIL("allocation %lld failing: %d (%s)", (long long)f, rc, e.msg);
	}
}

/* Two levels against one: every cluster used, sizes about n / k, inertia
 * near one-level Lloyd's, the same result on 1 and 2 threads, the cap. */
static void test_two_level(ann_rng *r)
{
	t_current = "test_two_level";
	size_t n = 30000, d = 16, k = 300, C = 17;
	uint32_t *label = malloc(n * sizeof(uint32_t)), *a1 = malloc(n * sizeof(uint32_t)),
		 *a2 = malloc(n * sizeof(uint32_t)), *af = malloc(n * sizeof(uint32_t));
	float *x = planted(r, n, d, k, 1.0, 0.5, label);
	float *cf = malloc(k * d * sizeof(float)), *c1 = malloc(k * d * sizeof(float)), *c2 = malloc(k * d * sizeof(float));
	ann_kmeans_opts o;
	ann_kmeans_opts_init(&o);
	o.k = k;
	o.max_iter = 20;
	o.seed = 5;
	ann_kmeans_stats sf, s1, s2;
	ASSERT_OK(ann_kmeans(x, n, d, &o, cf, af, &sf, NULL));
	o.coarse = C;
	o.threads = 1;
	ASSERT_OK(ann_kmeans(x, n, d, &o, c1, a1, &s1, NULL));
	o.threads = 2;
	ASSERT_OK(ann_kmeans(x, n, d, &o, c2, a2, &s2, NULL));
	ASSERT_TRUE(memcmp(c1, c2, k * d * sizeof(float)) == 0);
	ASSERT_TRUE(memcmp(a1, a2, n * sizeof(uint32_t)) == 0);
	size_t *cnt = calloc(k, sizeof(size_t));
	for (size_t i = 0; i < n; i++) {
		ASSERT_TRUE(a1[i] < k);
		cnt[a1[i]]++;
	}
	size_t largest = 0;
	for (size_t c = 0; c < k; c++) {
		ASSERT_TRUE(cnt[c] > 0);
		largest = ANN_MAX(largest, cnt[c]);
	}
	ASSERT_EQ(largest, s1.largest);
	double in1 = inertia_of(x, n, d, k, a1, c1, false);
	ASSERT_NEAR(s1.inertia / in1, 1.0, 1e-4);
	printf("  two levels (C %zu): inertia %.4g vs one level %.4g (ratio %.4f), largest %zu vs %zu (n/k %zu)\n", C,
	       in1, sf.inertia, in1 / sf.inertia, largest, sf.largest, n / k);
	ASSERT_TRUE(in1 <= 1.10 * sf.inertia);
	ASSERT_TRUE(largest <= 2 * sf.largest && largest <= 4 * n / k);
	/* with a cap */
	o.max_size = n / k + n / k / 4;
	ASSERT_OK(ann_kmeans(x, n, d, &o, c1, a1, &s1, NULL));
	ASSERT_TRUE(s1.largest <= 2 * n / k);
	/* no history, no given centroids */
	double hist[32];
	o.history = hist;
	ann_error e = {0};
	ASSERT_EQ(ann_kmeans(x, n, d, &o, c1, a1, &s1, &e), ANN_E_INVAL);
	o.history = NULL;
	/* C >= k: one level, as documented */
	o.max_size = 0;
	o.coarse = k;
	o.threads = 1;
	ASSERT_OK(ann_kmeans(x, n, d, &o, c1, a1, NULL, NULL));
	ASSERT_TRUE(memcmp(c1, cf, k * d * sizeof(float)) == 0);
	free(cnt);
	free(x);
	free(label);
	free(a1);
	free(a2);
	free(af);
	free(cf);
	free(c1);
	free(c2);
}

/* Sizes of the k clusters of assign: the smallest. */
static size_t smallest_cluster(const uint32_t *a, size_t n, size_t k)
{
	size_t *cnt = calloc(k, sizeof(size_t)), mn = SIZE_MAX;
	for (size_t i = 0; i < n; i++) {
		ASSERT_TRUE(a[i] < k);
		cnt[a[i]]++;
	}
	for (size_t c = 0; c < k; c++)
		mn = ANN_MIN(mn, cnt[c]);
	free(cnt);
	return mn;
}

/* Outliers do not become clusters of their own (issue 15: 48 of the 10M
 * build's 10,000 partitions held one vector). Planted clusters plus 0.5% of
 * points scattered far from everything: k-means++ seeding favours such
 * points (squared distance), a seed on one keeps it as a cluster of 1
 * through every Lloyd step, and the two levels' fine k-means (a few
 * hundred points per cell) picked one in most cells. The small-cluster pass
 * moves every cluster below n / (8 k) points; here every cluster keeps at
 * least half that, with and without the cap, on one level and two. */
static void test_small_clusters(ann_rng *r)
{
	t_current = "test_small_clusters";
	size_t n = 24000, d = 16, k = 240, C = 16, bound = n / (8 * k) / 2;
	uint32_t *label = malloc(n * sizeof(uint32_t)), *a = malloc(n * sizeof(uint32_t));
	float *x = planted(r, n, d, 40, 3.0, 0.5, label), *c = malloc(k * d * sizeof(float));
	for (size_t i = 0; i < n; i += 200) /* 120 outliers */
		for (size_t j = 0; j < d; j++)
			x[i * d + j] += (float)(5.0 * ann_rng_normal(r));
	for (int cap = 0; cap < 2; cap++)
		for (size_t coarse = 0; coarse <= C; coarse += C) {
			ann_kmeans_opts o;
			ann_kmeans_opts_init(&o);
			o.k = k;
			o.max_iter = 20;
			o.seed = 3;
			o.threads = 2;
			o.coarse = coarse;
			o.max_size = cap ? n / k + n / k / 4 : 0;
			ann_kmeans_stats st;
			ASSERT_OK(ann_kmeans(x, n, d, &o, c, a, &st, NULL));
			size_t mn = smallest_cluster(a, n, k);
			printf("  small clusters (%s, %s): smallest %zu (bound %zu, n/k %zu), %llu moved, inertia %.4g\n",
			       coarse ? "two levels" : "one level", cap ? "cap" : "no cap", mn, bound, n / k,
			       (unsigned long long)st.small_repaired, st.inertia);
			ASSERT_TRUE(mn >= bound);
			ASSERT_TRUE(st.small_repaired > 0);
		}
	free(x);
	free(c);
	free(a);
	free(label);
}

/* Two levels emit the centroids in a seeded random order, not coarse cell
 * by cell: the k-means router inserts its centroids into the HNSW graph in
 * id order, and a graph built cell by cell needed ef 384 where a random
 * order needs 32 (real1m, 1000 partitions; docs/DESIGN.md). Measured here:
 * how often centroid j + 1 is among the k / C nearest centroids of
 * centroid j. Cell by cell that is most pairs (most neighbours share the
 * cell); in a random order about 1 / C of them. */
static void test_two_level_order(ann_rng *r)
{
	t_current = "test_two_level_order";
	size_t n = 20000, d = 16, k = 256, C = 16, m = k / C;
	uint32_t *label = malloc(n * sizeof(uint32_t)), *a = malloc(n * sizeof(uint32_t));
	float *x = planted(r, n, d, 64, 2.0, 0.0, label), *c = malloc(k * d * sizeof(float));
	uint32_t *nn = malloc(k * (m + 1) * sizeof(uint32_t));
	ann_kmeans_opts o;
	ann_kmeans_opts_init(&o);
	o.k = k;
	o.max_iter = 10;
	o.coarse = C;
	ASSERT_OK(ann_kmeans(x, n, d, &o, c, a, NULL, NULL));
	ASSERT_OK(ann_nearest_centroids(c, k, d, c, k, m + 1, ANN_METRIC_L2, 1, nn, NULL, NULL));
	size_t near = 0;
	for (size_t j = 0; j + 1 < k; j++)
		for (size_t q = 0; q <= m; q++)
			near += nn[j * (m + 1) + q] == j + 1;
	printf("  two levels: centroid j + 1 among the %zu nearest of centroid j for %zu of %zu pairs\n", m, near,
	       k - 1);
	ASSERT_TRUE(near * 4 < k - 1);
	free(x);
	free(c);
	free(a);
	free(nn);
	free(label);
}

/* The two-level tree: exact when every cell is probed, nearly so at 8
 * probes, the same on 1 and 2 threads, padded past k. */
static void test_tree(ann_rng *r)
{
	t_current = "test_tree";
	size_t k = 3000, n = 4000, d = 16, np = 4;
	uint32_t *label = malloc((k + n) * sizeof(uint32_t));
	float *all = planted(r, k + n, d, 200, 3.0, 0.5, label);
	/* centroids: every other point of the set, queries the rest, shuffled
	 * by the planted order not mattering */
	float *c = malloc(k * d * sizeof(float)), *x = malloc(n * d * sizeof(float));
	for (size_t i = 0, ic = 0, ix = 0; i < k + n; i++) {
		if (ic < k && (i % 7 < 3 || ix == n))
			memcpy(c + ic++ * d, all + i * d, d * sizeof(float));
		else
			memcpy(x + ix++ * d, all + i * d, d * sizeof(float));
	}
	uint32_t *ex = malloc(n * np * sizeof(uint32_t)), *t1 = malloc(n * np * sizeof(uint32_t)),
		 *t2 = malloc(n * np * sizeof(uint32_t));
	float *exd = malloc(n * np * sizeof(float)), *td = malloc(n * np * sizeof(float));
	ASSERT_OK(ann_nearest_centroids(x, n, d, c, k, np, ANN_METRIC_L2, 2, ex, exd, NULL));
	ann_kmeans_tree *t;
	ASSERT_OK(ann_kmeans_tree_new(c, k, d, ANN_METRIC_L2, 0, 1, 2, &t, NULL));
	size_t C = ann_kmeans_tree_coarse(t);
	ASSERT_EQ(C, (size_t)55);
	ASSERT_TRUE(ann_kmeans_tree_bytes(t) >= k * d * sizeof(float));
	/* every cell probed: the exact answer (distances up to sgemm rounding) */
	ASSERT_OK(ann_kmeans_tree_nearest(t, x, n, np, C, 2, t1, td, NULL));
	for (size_t i = 0; i < n * np; i++) {
		ASSERT_TRUE(t1[i] < k);
		ASSERT_NEAR(td[i], exd[i], 1e-3 * (1 + exd[i]));
	}
	/* 8 probes: the nearest centroid found for almost every point */
	ASSERT_OK(ann_kmeans_tree_nearest(t, x, n, np, 8, 1, t1, td, NULL));
	ASSERT_OK(ann_kmeans_tree_nearest(t, x, n, np, 8, 2, t2, NULL, NULL));
	ASSERT_TRUE(memcmp(t1, t2, n * np * sizeof(uint32_t)) == 0);
	size_t same = 0;
	for (size_t i = 0; i < n; i++) {
		same += t1[i * np] == ex[i * np];
		ASSERT_TRUE(td[i * np] >= exd[i * np] - 1e-3f * (1 + exd[i * np]));
	}
	printf("  tree (k %zu, C %zu, 8 probes): nearest centroid found for %.4f of points\n", k, C,
	       (double)same / (double)n);
	ASSERT_TRUE(same >= n * 95 / 100);
	ann_kmeans_tree_free(t);
	/* fewer centroids than nprobe: padded */
	ASSERT_OK(ann_kmeans_tree_new(c, 5, d, ANN_METRIC_L2, 2, 1, 1, &t, NULL));
	ASSERT_OK(ann_kmeans_tree_nearest(t, x, 3, 8, 2, 1, t1, td, NULL));
	for (size_t i = 0; i < 3; i++)
		for (size_t j = 0; j < 8; j++)
			ASSERT_TRUE(j < 5 ? t1[i * 8 + j] < 5 : (t1[i * 8 + j] == UINT32_MAX && isinf(td[i * 8 + j])));
	ann_error e = {0};
	ASSERT_EQ(ann_kmeans_tree_nearest(t, x, 3, 0, 2, 1, t1, td, &e), ANN_E_INVAL);
	ann_kmeans_tree_free(t);
	ann_kmeans_tree_free(NULL);
	free(all);
	free(label);
	free(c);
	free(x);
	free(ex);
	free(exd);
	free(t1);
	free(t2);
	free(td);
}

/* Data far from the origin: clusters of unit spread 1e5 away from it. The
 * sgemm's |x|^2 - 2 x.c + |c|^2 then rounds at ~1e3, far above the distances
 * between a point and the centroids near it; every pass shifts rows and
 * centroids by the first centroid first, so k-means, the nearest-centroid
 * query and the tree answer as they do at the origin. Before the shift
 * k-means put ~80% of such points in one cluster. */
static void test_off_origin(ann_rng *r)
{
	t_current = "test_off_origin";
	size_t n = 6000, d = 16, k = 10, np = 3;
	uint32_t *label = malloc(n * sizeof(uint32_t)), *a = malloc(n * sizeof(uint32_t));
	float *x = planted(r, n, d, k, 20.0, 0.3, label);
	for (size_t i = 0; i < n * d; i++)
		x[i] += 1e5f;
	float *c = malloc(k * d * sizeof(float));
	ann_kmeans_opts o;
	ann_kmeans_opts_init(&o);
	o.k = k;
	o.seed = 7;
	o.threads = 2;
	ASSERT_OK(ann_kmeans(x, n, d, &o, c, a, NULL, NULL));
	assert_same_partition(a, label, n, k);
	/* the nearest centroids, and their distances, as computed pair by pair in double */
	uint32_t *ids = malloc(n * np * sizeof(uint32_t)), *tid = malloc(n * np * sizeof(uint32_t));
	float *dd = malloc(n * np * sizeof(float)), *td = malloc(n * np * sizeof(float));
	ASSERT_OK(ann_nearest_centroids(x, n, d, c, k, np, ANN_METRIC_L2, 2, ids, dd, NULL));
	ann_kmeans_tree *t;
	ASSERT_OK(ann_kmeans_tree_new(c, k, d, ANN_METRIC_L2, 3, 1, 1, &t, NULL));
	ASSERT_OK(ann_kmeans_tree_nearest(t, x, n, np, 3, 2, tid, td, NULL));
	for (size_t i = 0; i < n; i++) {
		double best = INFINITY;
		for (size_t j = 0; j < k; j++)
			best = fmin(best, sqdist(x + i * d, c + j * d, d));
		for (size_t m = 0; m < np; m++) {
			double e = sqdist(x + i * d, c + (size_t)ids[i * np + m] * d, d);
			ASSERT_NEAR(dd[i * np + m], e, 1e-3 * (1 + e));
			ASSERT_NEAR(td[i * np + m], sqdist(x + i * d, c + (size_t)tid[i * np + m] * d, d), 1e-3 * (1 + e) + 1);
		}
		ASSERT_NEAR(sqdist(x + i * d, c + (size_t)ids[i * np] * d, d), best, 1e-3 * (1 + best));
		ASSERT_EQ(tid[i * np], ids[i * np]);
	}
	ann_kmeans_tree_free(t);
	free(x);
	free(c);
	free(a);
	free(label);
	free(ids);
	free(tid);
	free(dd);
	free(td);
}

int main(void)
{
	ann_rng rng;
	t_init("test_kmeans", &rng);
	int64_t live = ann_mem_live_bytes();
	test_planted(&rng);
	test_spherical(&rng);
	test_monotone(&rng);
	test_naive(&rng);
	test_balance(&rng);
	test_empty_repair(&rng);
	test_determinism(&rng);
	test_minibatch(&rng);
	test_nearest(&rng);
	test_topn_ties(&rng);
	test_two_level(&rng);
	test_small_clusters(&rng);
	test_two_level_order(&rng);
	test_tree(&rng);
	test_off_origin(&rng);
	test_errors();
	ASSERT_EQ(ann_mem_live_bytes(), live);
	printf("test_kmeans: ok\n");
	return 0;
}
