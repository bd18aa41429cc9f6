/* SPDX-License-Identifier: MIT */
/*
 * test_distance.c: every kernel of every SIMD level this CPU runs against a
 * plain double-precision reference (exact for the integer kernels), over
 * every dimension 1..130 and a few large ones, misaligned pointers and
 * extreme values; the many-row forms against the pair forms; the metric and
 * BLAS batch distances against naive loops; the top-k heap against sorting;
 * and the ANNANN_SIMD override in forked children.
 */
#include "testutil.h"

#include <pthread.h>
#include <sys/wait.h>
#include <unistd.h>

#include "distance.h"
#include "heap.h"

static const ann_simd_level all_levels[] = {ANN_SIMD_SCALAR, ANN_SIMD_AVX2, ANN_SIMD_AVX512};
#define N_LEVELS 3

/* ---- references in double / int64 --------------------------------------- */

/* Sum of the terms and sum of their absolute values (the scale of the
 * rounding error a float kernel may make). */
typedef struct ref {
	double v, abs;
} ref;

static ref ref_l2_f32(const float *a, const float *b, size_t d)
{
	ref r = {0, 0};
	for (size_t j = 0; j < d; j++) {
		double t = (double)a[j] - b[j];
		r.v += t * t;
	}
	r.abs = r.v;
	return r;
}

static ref ref_ip_f32(const float *a, const float *b, size_t d)
{
	ref r = {0, 0};
	for (size_t j = 0; j < d; j++) {
		double t = (double)a[j] * b[j];
		r.v += t;
		r.abs += fabs(t);
	}
	return r;
}

static ref ref_l2_f32_u8(const float *q, const uint8_t *x, size_t d)
{
	ref r = {0, 0};
	for (size_t j = 0; j < d; j++) {
		double t = (double)q[j] - x[j];
		r.v += t * t;
	}
	r.abs = r.v;
	return r;
}

static ref ref_ip_f32_u8(const float *q, const uint8_t *x, size_t d)
{
	ref r = {0, 0};
	for (size_t j = 0; j < d; j++) {
		double t = (double)q[j] * x[j];
		r.v += t;
		r.abs += fabs(t);
	}
	return r;
}

static int64_t ref_l2_u8(const uint8_t *a, const uint8_t *b, size_t d)
{
	int64_t s = 0;
	for (size_t j = 0; j < d; j++)
		s += ((int64_t)a[j] - b[j]) * ((int64_t)a[j] - b[j]);
	return s;
}

static int64_t ref_ip_u8(const uint8_t *a, const uint8_t *b, size_t d)
{
	int64_t s = 0;
	for (size_t j = 0; j < d; j++)
		s += (int64_t)a[j] * b[j];
	return s;
}

static int64_t ref_l2_i8(const int8_t *a, const int8_t *b, size_t d)
{
	int64_t s = 0;
	for (size_t j = 0; j < d; j++)
		s += ((int64_t)a[j] - b[j]) * ((int64_t)a[j] - b[j]);
	return s;
}

static int64_t ref_ip_i8(const int8_t *a, const int8_t *b, size_t d)
{
	int64_t s = 0;
	for (size_t j = 0; j < d; j++)
		s += (int64_t)a[j] * b[j];
	return s;
}

/* A float kernel's result is within 1e-4 of the scale of its terms. */
#define ASSERT_REF(got, r)                                                                  \
	do {                                                                                \
		ref rr_ = (r);                                                              \
		double g_ = (double)(got);                                                  \
		if (!(fabs(g_ - rr_.v) <= 1e-4 * rr_.abs + 1e-30))                          \
			T_FAIL("%s = %.9g, reference %.9g (scale %g)", #got, g_, rr_.v, rr_.abs); \
	} while (0)

/* The integer kernels are exact: the int64 sum rounded once to float. */
#define ASSERT_EXACT(got, want)                                                             \
	do {                                                                                \
		float g_ = (got), w_ = (float)(want);                                       \
		if (g_ != w_)                                                               \
			T_FAIL("%s = %.9g, exact %.9g", #got, (double)g_, (double)w_);      \
	} while (0)

/* ---- pair kernels -------------------------------------------------------- */

typedef enum fill_kind { FILL_RANDOM, FILL_EXTREME } fill_kind;

static void fill_f32(ann_rng *r, float *x, size_t n, fill_kind kind)
{
	for (size_t i = 0; i < n; i++) {
		double u = ann_rng_uniform(r) * 2 - 1;
		x[i] = kind == FILL_RANDOM ? (float)u : (float)(u * 1000.0);
	}
}

static void fill_u8(ann_rng *r, uint8_t *x, size_t n, fill_kind kind, int side)
{
	for (size_t i = 0; i < n; i++)
		x[i] = kind == FILL_RANDOM ? (uint8_t)ann_rng_below(r, 256) : (uint8_t)(side ? 255 : 0);
}

static void fill_i8(ann_rng *r, int8_t *x, size_t n, fill_kind kind, int side)
{
	for (size_t i = 0; i < n; i++)
		x[i] = kind == FILL_RANDOM ? (int8_t)((int)ann_rng_below(r, 256) - 128)
					   : (int8_t)(side ? 127 : -128);
}

/* One dimension, one offset: every pair kernel of k. */
static void check_pairs(const ann_kernels *k, ann_rng *r, size_t d, size_t off, fill_kind kind)
{
	/* Each vector starts off elements into its allocation (every alignment)
	 * and ends at its end, so a kernel reading past element d - 1 runs into
	 * ASan's redzone. */
	float *fa = calloc(d + off, sizeof(float)), *fb = calloc(d + off, sizeof(float));
	uint8_t *ua = calloc(d + off, 1), *ub = calloc(d + off, 1);
	int8_t *ia = calloc(d + off, 1), *ib = calloc(d + off, 1);
	ASSERT_TRUE(fa && fb && ua && ub && ia && ib);
	float *a = fa + off, *b = fb + off;
	uint8_t *u = ua + off, *v = ub + off;
	int8_t *s = ia + off, *t = ib + off;
	fill_f32(r, a, d, kind);
	fill_f32(r, b, d, kind);
	fill_u8(r, u, d, kind, 1);
	fill_u8(r, v, d, kind, 0);
	fill_i8(r, s, d, kind, 0);
	fill_i8(r, t, d, kind, 1);

	ASSERT_REF(k->l2_f32(a, b, d), ref_l2_f32(a, b, d));
	ASSERT_REF(k->ip_f32(a, b, d), ref_ip_f32(a, b, d));
	ASSERT_EXACT(k->l2_u8(u, v, d), ref_l2_u8(u, v, d));
	ASSERT_EXACT(k->ip_u8(u, v, d), ref_ip_u8(u, v, d));
	ASSERT_EXACT(k->ip_u8(u, u, d), ref_ip_u8(u, u, d));
	ASSERT_EXACT(k->l2_i8(s, t, d), ref_l2_i8(s, t, d));
	ASSERT_EXACT(k->ip_i8(s, t, d), ref_ip_i8(s, t, d));
	ASSERT_EXACT(k->ip_i8(s, s, d), ref_ip_i8(s, s, d)); /* -128 * -128 when extreme */
	/* u8 rows against a float query; the query may hold u8 values too. */
	ASSERT_REF(k->l2_f32_u8(a, u, d), ref_l2_f32_u8(a, u, d));
	ASSERT_REF(k->ip_f32_u8(a, u, d), ref_ip_f32_u8(a, u, d));
	ASSERT_REF(k->l2_f32_u8(a, v, d), ref_l2_f32_u8(a, v, d));
	free(fa);
	free(fb);
	free(ua);
	free(ub);
	free(ia);
	free(ib);
}

static void test_pairs(ann_rng *r)
{
	static const size_t big[] = {256, 784, 960, 1024, 4099};
	for (int li = 0; li < N_LEVELS; li++) {
		const ann_kernels *k = ann_kernels_for(all_levels[li]);
		if (!k) {
			printf("  level %s: not supported here, skipped\n", ann_simd_name(all_levels[li]));
			continue;
		}
		ASSERT_EQ(k->level, all_levels[li]);
		for (size_t d = 1; d <= 130; d++)
			for (size_t off = 0; off < 4; off++)
				check_pairs(k, r, d, off, (d + off) % 3 == 0 ? FILL_EXTREME : FILL_RANDOM);
		for (size_t i = 0; i < sizeof big / sizeof big[0]; i++)
			for (size_t off = 0; off < 4; off++) {
				check_pairs(k, r, big[i], off, FILL_RANDOM);
				check_pairs(k, r, big[i], off, FILL_EXTREME);
			}
		printf("  level %s: pair kernels ok\n", ann_simd_name(k->level));
	}
}

/* A dimension where extreme values overflow any single 32-bit lane of the
 * vector kernels (AVX-512: one vpmaddwd of 2 * 255^2 per lane per 64
 * elements reaches 2^31 near d = 1.06M): the chunked flush to int64 must keep
 * the result the exact sum. */
static void test_int_overflow(void)
{
	const size_t d = (1u << 21) + 77;
	uint8_t *u = malloc(d), *v = malloc(d);
	int8_t *s = malloc(d), *t = malloc(d);
	ASSERT_TRUE(u && v && s && t);
	memset(u, 255, d);
	memset(v, 0, d);
	for (size_t j = 0; j < d; j++) {
		s[j] = -128;
		t[j] = 127;
	}
	for (int li = 0; li < N_LEVELS; li++) {
		const ann_kernels *k = ann_kernels_for(all_levels[li]);
		if (!k)
			continue;
		ASSERT_EXACT(k->l2_u8(u, v, d), ref_l2_u8(u, v, d));
		ASSERT_EXACT(k->ip_u8(u, u, d), ref_ip_u8(u, u, d));
		ASSERT_EXACT(k->l2_i8(s, t, d), ref_l2_i8(s, t, d));
		ASSERT_EXACT(k->ip_i8(s, s, d), ref_ip_i8(s, s, d));
		ASSERT_EXACT(k->ip_i8(s, t, d), ref_ip_i8(s, t, d));
	}
	free(u);
	free(v);
	free(s);
	free(t);
}

/* ---- many-row forms ------------------------------------------------------ */

static void check_many(const ann_kernels *k, ann_rng *r, size_t n, size_t d, size_t off)
{
	/* The row blocks start off + 1 elements into their allocation and end at
	 * its end (ASan catches an over-read of the last row); the +1 keeps
	 * malloc's size non-zero when n is 0. */
	float *qb = malloc((d + off) * sizeof(float));

	float *xb = malloc((n * d + off + 1) * sizeof(float));
	uint8_t *ub = malloc(n * d + off + 1);
	float *out = malloc((n + 1) * sizeof(float));
	ASSERT_TRUE(qb && xb && ub && out);
	float *q = qb + off, *x = xb + off + 1;
	uint8_t *u = ub + off + 1;
	fill_f32(r, q, d, FILL_RANDOM);
	fill_f32(r, x, n * d, FILL_RANDOM);
	fill_u8(r, u, n * d, FILL_RANDOM, 0);
	for (size_t i = 0; i < d; i++)
		q[i] *= 255.0f; /* a query on the scale of u8 rows */

	out[n] = 12345.0f; /* sentinel: nothing past n is written */
	k->l2_f32_many(q, x, n, d, out);
	for (size_t i = 0; i < n; i++) {
		ASSERT_REF(out[i], ref_l2_f32(q, x + i * d, d));
		ASSERT_NEAR(out[i], k->l2_f32(q, x + i * d, d), 1e-5);
	}
	k->ip_f32_many(q, x, n, d, out);
	for (size_t i = 0; i < n; i++) {
		ASSERT_REF(out[i], ref_ip_f32(q, x + i * d, d));
		ref rr = ref_ip_f32(q, x + i * d, d);
		ASSERT_TRUE(fabs((double)out[i] - k->ip_f32(q, x + i * d, d)) <= 2e-4 * rr.abs + 1e-30);
	}
	k->l2_f32_u8_many(q, u, n, d, out);
	for (size_t i = 0; i < n; i++) {
		ASSERT_REF(out[i], ref_l2_f32_u8(q, u + i * d, d));
		ASSERT_NEAR(out[i], k->l2_f32_u8(q, u + i * d, d), 1e-5);
	}
	ASSERT_TRUE(out[n] == 12345.0f);
	free(qb);
	free(xb);
	free(ub);
	free(out);
}

static void test_many(ann_rng *r)
{
	static const size_t ns[] = {0, 1, 3, 4, 5, 8, 9, 37};
	static const size_t big[] = {784, 960, 1024};
	for (int li = 0; li < N_LEVELS; li++) {
		const ann_kernels *k = ann_kernels_for(all_levels[li]);
		if (!k)
			continue;
		for (size_t d = 1; d <= 130; d++)
			for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++)
				check_many(k, r, ns[ni], d, (d + ni) % 4);
		for (size_t i = 0; i < sizeof big / sizeof big[0]; i++)
			for (size_t off = 0; off < 4; off++)
				check_many(k, r, 9, big[i], off);
		printf("  level %s: many-row kernels ok\n", ann_simd_name(k->level));
	}
}

/* ---- metric distances, norms, batch -------------------------------------- */

static double ref_metric(ann_metric m, const float *a, const float *b, size_t d)
{
	ref dot = ref_ip_f32(a, b, d);
	switch (m) {
	case ANN_METRIC_L2: return ref_l2_f32(a, b, d).v;
	case ANN_METRIC_IP: return -dot.v;
	case ANN_METRIC_COSINE: {
		double na = ref_ip_f32(a, a, d).v, nb = ref_ip_f32(b, b, d).v;
		if (na == 0 || nb == 0)
			return 1.0;
		return 1.0 - dot.v / sqrt(na * nb);
	}
	}
	return NAN;
}

static void test_metric(ann_rng *r)
{
	const size_t d = 77;
	float a[77], b[77], z[77], neg[77];
	fill_f32(r, a, d, FILL_RANDOM);
	fill_f32(r, b, d, FILL_RANDOM);
	memset(z, 0, sizeof z);
	for (size_t j = 0; j < d; j++)
		neg[j] = -2.0f * a[j];
	for (int li = 0; li < N_LEVELS; li++) {
		const ann_kernels *k = ann_kernels_for(all_levels[li]);
		if (!k)
			continue;
		for (int m = 0; m < 3; m++) {
			ann_metric mm = (ann_metric)m;
			ASSERT_NEAR(ann_distance_f32(k, mm, a, b, d), ref_metric(mm, a, b, d), 1e-4);
		}
		/* COSINE: 1 for a zero vector, 0 for itself, 2 for its opposite. */
		ASSERT_EQ(ann_distance_f32(k, ANN_METRIC_COSINE, a, z, d), 1);
		ASSERT_EQ(ann_distance_f32(k, ANN_METRIC_COSINE, z, z, d), 1);
		ASSERT_NEAR(ann_distance_f32(k, ANN_METRIC_COSINE, a, a, d), 0.0, 1e-6);
		ASSERT_NEAR(ann_distance_f32(k, ANN_METRIC_COSINE, a, neg, d), 2.0, 1e-6);
		ASSERT_TRUE(ann_distance_f32(k, ANN_METRIC_COSINE, a, a, d) >= 0);
		ASSERT_EQ(ann_distance_f32(k, ANN_METRIC_L2, a, a, d), 0);
	}
	/* NULL kernels mean the best ones. */
	ASSERT_NEAR(ann_distance_f32(NULL, ANN_METRIC_IP, a, b, d), ref_metric(ANN_METRIC_IP, a, b, d), 1e-4);

	float x[5 * 77], norms[5];
	fill_f32(r, x, 5 * d, FILL_RANDOM);
	ann_norms_f32(x, 5, d, norms);
	for (size_t i = 0; i < 5; i++)
		ASSERT_REF(norms[i], ref_ip_f32(x + i * d, x + i * d, d));
}

static void check_batch(ann_rng *r, size_t nq, size_t nx, size_t d, bool given_norms)
{
	float *q = malloc(nq * d * sizeof(float)), *x = malloc(nx * d * sizeof(float));
	float *qn = malloc(nq * sizeof(float)), *xn = malloc(nx * sizeof(float));
	float *out = malloc(nq * nx * sizeof(float));
	ASSERT_TRUE(q && x && qn && xn && out);
	fill_f32(r, q, nq * d, FILL_RANDOM);
	fill_f32(r, x, nx * d, FILL_RANDOM);
	memset(x + (nx / 2) * d, 0, d * sizeof(float)); /* a zero row: cosine 1 */
	memset(q, 0, d * sizeof(float));                /* and a zero query */
	if (nx > 3)
		memcpy(x + 3 * d, q + (nq - 1) * d, d * sizeof(float)); /* a duplicate: L2 exactly 0 */
	ann_norms_f32(q, nq, d, qn);
	ann_norms_f32(x, nx, d, xn);
	for (int m = 0; m < 3; m++) {
		const float *qn_in = given_norms ? qn : NULL, *xn_in = given_norms ? xn : NULL;
		ann_dist_batch((ann_metric)m, q, nq, qn_in, x, nx, xn_in, d, out);
		for (size_t i = 0; i < nq; i++)
			for (size_t j = 0; j < nx; j++) {
				const float *a = q + i * d, *b = x + j * d;
				double want = ref_metric((ann_metric)m, a, b, d), got = out[i * nx + j];
				/* sgemm's expansion cancels: error scales with the norms. */
				double scale = m == ANN_METRIC_L2 ? qn[i] + xn[j] : m == ANN_METRIC_IP ?
					ref_ip_f32(a, b, d).abs : 1.0;
				if (!(fabs(got - want) <= 1e-5 * scale + 1e-6))
					T_FAIL("batch metric %d nq %zu nx %zu d %zu [%zu,%zu]: %.9g vs %.9g",
					       m, nq, nx, d, i, j, got, want);
				if (m == ANN_METRIC_L2)
					ASSERT_TRUE(got >= 0);
				if (m == ANN_METRIC_COSINE && (qn[i] == 0 || xn[j] == 0))
					ASSERT_EQ(got, 1);
			}
	}
	free(q);
	free(x);
	free(qn);
	free(xn);
	free(out);
}

static void test_batch(ann_rng *r)
{
	ann_blas_threads(1);
	check_batch(r, 1, 1, 1, false);
	check_batch(r, 3, 7, 5, true);
	check_batch(r, 7, 300, 33, false);
	/* Past one tile in both directions (256 queries x 2048 rows). */
	check_batch(r, 259, 2051, 16, false);
	check_batch(r, 259, 2051, 16, true);
	/* d = 0: every vector is empty, so zero: L2 and IP 0, COSINE 1. */
	float q[1] = {0}, out[6];
	for (int m = 0; m < 3; m++) {
		ann_dist_batch((ann_metric)m, q, 2, NULL, q, 3, NULL, 0, out);
		for (int i = 0; i < 6; i++)
			ASSERT_EQ(out[i], m == ANN_METRIC_COSINE ? 1 : 0);
	}
}

/* ann_dist_batch from several threads at once (gt does this): each result
 * must equal the one computed alone. */
typedef struct batch_job {
	const float *q, *x;
	size_t nq, nx, d;
	float *out;
} batch_job;

static void *batch_thread(void *arg)
{
	batch_job *j = arg;
	for (int rep = 0; rep < 3; rep++)
		ann_dist_batch(ANN_METRIC_L2, j->q, j->nq, NULL, j->x, j->nx, NULL, j->d, j->out);
	return NULL;
}

static void test_batch_threads(ann_rng *r)
{
	const size_t nq = 40, nx = 700, d = 24;
	float *q = malloc(nq * d * sizeof(float)), *x = malloc(nx * d * sizeof(float));
	float *want = malloc(nq * nx * sizeof(float)), *got = malloc(2 * nq * nx * sizeof(float));
	ASSERT_TRUE(q && x && want && got);
	fill_f32(r, q, nq * d, FILL_RANDOM);
	fill_f32(r, x, nx * d, FILL_RANDOM);
	ann_dist_batch(ANN_METRIC_L2, q, nq, NULL, x, nx, NULL, d, want);
	batch_job jobs[2] = {{q, x, nq, nx, d, got}, {q, x, nq, nx, d, got + nq * nx}};
	pthread_t tid;
	ASSERT_EQ(pthread_create(&tid, NULL, batch_thread, &jobs[1]), 0);
	batch_thread(&jobs[0]);
	ASSERT_EQ(pthread_join(tid, NULL), 0);
	ASSERT_TRUE(memcmp(want, got, nq * nx * sizeof(float)) == 0);
	ASSERT_TRUE(memcmp(want, got + nq * nx, nq * nx * sizeof(float)) == 0);
	free(q);
	free(x);
	free(want);
	free(got);
}

/* ---- top-k ----------------------------------------------------------------- */

typedef struct pair {
	float d;
	int64_t id;
} pair;

static int pair_cmp(const void *pa, const void *pb)
{
	const pair *a = pa, *b = pb;
	if (a->d != b->d)
		return a->d < b->d ? -1 : 1;
	return a->id < b->id ? -1 : a->id > b->id;
}

static void check_topk(ann_rng *r, size_t n, size_t k, int nvalues)
{
	pair *all = malloc((n + 1) * sizeof(pair)), *sorted = malloc((n + 1) * sizeof(pair));
	float *dist = malloc((k + 1) * sizeof(float));
	int64_t *id = malloc((k + 1) * sizeof(int64_t));
	ASSERT_TRUE(all && sorted && dist && id);
	/* Distinct ids in random order; distances from a few values, so ties. */
	for (size_t i = 0; i < n; i++)
		all[i].id = (int64_t)i * 7 - 50;
	for (size_t i = n; i > 1; i--) {
		size_t j = ann_rng_below(r, i);
		int64_t t = all[i - 1].id;
		all[i - 1].id = all[j].id;
		all[j].id = t;
	}
	for (size_t i = 0; i < n; i++)
		all[i].d = (float)ann_rng_below(r, (uint64_t)nvalues) * 0.5f - 1.0f;

	ann_topk t;
	ann_topk_init(&t, dist, id, k);
	for (size_t i = 0; i < n; i++) {
		/* Kept iff its rank among the pairs seen so far is below k. */
		size_t rank = 0;
		for (size_t j = 0; j < i; j++)
			rank += pair_cmp(&all[j], &all[i]) < 0;
		float bound = ann_topk_bound(&t);
		if (t.n < k)
			ASSERT_TRUE(isinf(bound) && bound > 0);
		bool kept = ann_topk_push(&t, all[i].d, all[i].id);
		ASSERT_EQ(kept, rank < k);
		ASSERT_EQ(t.n, ANN_MIN(i + 1, k));
		if (k > 0 && i % 5 == 0) /* NaN never enters */
			ASSERT_TRUE(!ann_topk_push(&t, NAN, 0));
	}
	memcpy(sorted, all, n * sizeof(pair));
	qsort(sorted, n, sizeof(pair), pair_cmp);
	if (k > 0 && n >= k) {
		/* The bound is the k-th smallest distance once full. */
		ASSERT_EQ(ann_topk_bound(&t), sorted[k - 1].d);
	}
	ann_topk_finish(&t);
	for (size_t i = 0; i < k; i++) {
		if (i < n) {
			ASSERT_TRUE(dist[i] == sorted[i].d);
			ASSERT_EQ(id[i], sorted[i].id);
		} else {
			ASSERT_TRUE(isinf(dist[i]) && dist[i] > 0);
			ASSERT_EQ(id[i], -1);
		}
	}
	free(all);
	free(sorted);
	free(dist);
	free(id);
}

static void test_topk(ann_rng *r)
{
	static const size_t ks[] = {0, 1, 2, 5, 10, 64, 300};
	static const size_t ns[] = {0, 1, 5, 10, 11, 200};
	for (size_t a = 0; a < sizeof ks / sizeof ks[0]; a++)
		for (size_t b = 0; b < sizeof ns / sizeof ns[0]; b++) {
			check_topk(r, ns[b], ks[a], 3);
			check_topk(r, ns[b], ks[a], 1000);
		}
}

/* ---- heap.h, the template behind every heap ---------------------------------
 * A min-heap of pairs with a SET hook recording each id's slot (as the
 * auction's indexed heap does): pushes, changes of an inner entry's key
 * (moved up or down from its slot), pops in order; the hook's positions and
 * the heap order are checked after every step. */
typedef struct hslot {
	float d;
	uint32_t id;
} hslot;
typedef struct hheap {
	hslot *h;
	uint32_t *pos; /* slot of each id */
} hheap;
#define H_AT(c, i) ((c)->h[i])
#define H_SET(c, i, v) ((c)->h[i] = (v), (c)->pos[(v).id] = (uint32_t)(i))
#define H_BEFORE(a, b) ((a).d < (b).d || ((a).d == (b).d && (a).id < (b).id))
ANN_HEAP_DEFINE(th, hheap *, hslot, H_AT, H_SET, H_BEFORE)

static void heap_check(const hheap *c, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		ASSERT_EQ(c->pos[c->h[i].id], i);
		if (i > 0)
			ASSERT_TRUE(!H_BEFORE(c->h[i], c->h[(i - 1) / 2]));
	}
}

static void test_heap_template(ann_rng *r)
{
	enum { N = 300 };
	hslot h[N];
	uint32_t pos[N];
	hheap c = {h, pos};
	size_t n = 0;
	for (uint32_t i = 0; i < N; i++) { /* few values: many ties */
		th_up(&c, n++, (hslot){(float)ann_rng_below(r, 7), i});
		heap_check(&c, n);
	}
	for (int step = 0; step < 500; step++) { /* an entry's key changes where it sits */
		uint32_t id = (uint32_t)ann_rng_below(r, N);
		size_t i = pos[id];
		hslot v = {(float)ann_rng_below(r, 7), id};
		if (H_BEFORE(v, h[i]))
			th_up(&c, i, v);
		else
			th_down(&c, n, i, v);
		heap_check(&c, n);
	}
	hslot prev = {-1.0f, 0};
	while (n > 0) { /* pops come out in (d, id) order */
		hslot top = h[0];
		ASSERT_TRUE(prev.d < 0 || H_BEFORE(prev, top));
		prev = top;
		n--;
		if (n)
			th_down(&c, n, 0, h[n]);
		heap_check(&c, n);
	}
}

/* ---- dispatch ------------------------------------------------------------ */

/* Runs ann_simd_active() in a child with ANNANN_SIMD=value (NULL: unset).
 * Must run before this process probes. Returns the child's level. */
static int child_level(const char *value)
{
	fflush(NULL);
	pid_t pid = fork();
	ASSERT_TRUE(pid >= 0);
	if (pid == 0) {
		if (value)
			setenv("ANNANN_SIMD", value, 1);
		else
			unsetenv("ANNANN_SIMD");
		ann_simd_level a = ann_simd_active();
		const ann_kernels *k = ann_kernels_best();
		_exit(k && k->level == a ? (int)a : 100);
	}
	int st = 0;
	ASSERT_EQ(waitpid(pid, &st, 0), pid);
	ASSERT_TRUE(WIFEXITED(st));
	return WEXITSTATUS(st);
}

static void test_env_override(void)
{
	static const char *values[] = {"scalar", "avx2", "avx512", "AVX2", "bogus", "", NULL};
	int got[7];
	for (int i = 0; i < 7; i++)
		got[i] = child_level(values[i]);
	/* Now this process may probe. */
	ann_simd_level best = ANN_SIMD_SCALAR;
	for (int li = 0; li < N_LEVELS; li++)
		if (ann_kernels_for(all_levels[li]))
			best = all_levels[li];
	int want[7] = {ANN_SIMD_SCALAR, ANN_MIN(ANN_SIMD_AVX2, best), ANN_MIN(ANN_SIMD_AVX512, best),
		       ANN_MIN(ANN_SIMD_AVX2, best), best, best, best};
	for (int i = 0; i < 7; i++) {
		if (got[i] != want[i])
			T_FAIL("ANNANN_SIMD=%s: level %d, expected %d", values[i] ? values[i] : "(unset)",
			       got[i], want[i]);
	}
	printf("  best level here: %s\n", ann_simd_name(best));
}

static void test_dispatch(void)
{
	ASSERT_TRUE(!strcmp(ann_simd_name(ANN_SIMD_SCALAR), "scalar"));
	ASSERT_TRUE(!strcmp(ann_simd_name(ANN_SIMD_AVX2), "avx2"));
	ASSERT_TRUE(!strcmp(ann_simd_name(ANN_SIMD_AVX512), "avx512"));
	ASSERT_TRUE(!strcmp(ann_simd_name((ann_simd_level)42), "unknown"));
	ASSERT_TRUE(ann_kernels_for((ann_simd_level)42) == NULL);
	ASSERT_TRUE(ann_kernels_for(ANN_SIMD_SCALAR) != NULL);
	/* Support is monotone: a level implies the ones below it. */
	if (ann_kernels_for(ANN_SIMD_AVX512))
		ASSERT_TRUE(ann_kernels_for(ANN_SIMD_AVX2) != NULL);
	const ann_kernels *best = ann_kernels_best();
	ASSERT_TRUE(best != NULL);
	ASSERT_EQ(best->level, ann_simd_active());
	ASSERT_TRUE(ann_kernels_for(best->level) == best);
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return (x > y) - (x < y);
}

/* ann_kth_u32 (a radix select that hands its last few keys to a
 * quickselect) against a sort: keys from float distances of a narrow and a
 * wide range, few distinct values, all equal, extremes, sizes around the
 * radix cut-off, every rank of the small ones. */
static void test_kth(ann_rng *r)
{
	t_current = "kth";
	enum { MAXN = 9000 };
	static uint32_t a[MAXN], b[MAXN], s[MAXN];
	static const size_t sizes[] = {1, 2, 3, 63, 64, 65, 66, 127, 300, 2943, 7900, MAXN};
	for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++)
		for (int kind = 0; kind < 6; kind++) {
			size_t n = sizes[si];
			for (size_t i = 0; i < n; i++) {
				switch (kind) {
				case 0: /* a query's centroid distances: one exponent or two */
					a[i] = ann_fkey(20000.0f + (float)ann_rng_below(r, 100000));
					break;
				case 1: /* wide: many exponents, some negative (inner products) */
					a[i] = ann_fkey((float)(ann_rng_normal(r) * exp(10 * ann_rng_uniform(r))));
					break;
				case 2: /* few distinct values */
					a[i] = (uint32_t)ann_rng_below(r, 3) * 1000u + 7u;
					break;
				case 3: /* all equal */
					a[i] = 0xdeadbeefu;
					break;
				case 4: /* the extremes of u32 */
					a[i] = ann_rng_below(r, 2) ? 0u : UINT32_MAX;
					break;
				default: /* raw random bits */
					a[i] = (uint32_t)ann_rng_next(r);
				}
			}
			memcpy(s, a, n * sizeof a[0]);
			qsort(s, n, sizeof s[0], cmp_u32);
			size_t step = n <= 130 ? 1 : n / 37 + 1;
			for (size_t k = 0; k < n; k += step) {
				memcpy(b, a, n * sizeof a[0]);
				uint32_t got = ann_kth_u32(b, n, k);
				if (got != s[k])
					T_FAIL("kth: n %zu kind %d rank %zu: %u, the sort says %u", n, kind, k, got, s[k]);
			}
			memcpy(b, a, n * sizeof a[0]);
			ASSERT_EQ(ann_kth_u32(b, n, n - 1), s[n - 1]);
		}
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return (x > y) - (x < y);
}

/* ann_sort_u64 against qsort: random, few distinct, sorted, reversed,
 * organ-pipe (a quicksort's bad case, where the heap sort takes over) and
 * all equal, at sizes around the insertion cut-off. */
static void test_sort(ann_rng *r)
{
	t_current = "sort";
	enum { MAXN = 5000 };
	static uint64_t a[MAXN], s[MAXN];
	static const size_t sizes[] = {0, 1, 2, 15, 16, 17, 33, 480, MAXN};
	for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++)
		for (int kind = 0; kind < 6; kind++) {
			size_t n = sizes[si];
			for (size_t i = 0; i < n; i++)
				a[i] = kind == 0 ? ann_rng_next(r)
				       : kind == 1 ? ann_rng_below(r, 4)
				       : kind == 2 ? (uint64_t)i * 3
				       : kind == 3 ? (uint64_t)(n - i) << 40
				       : kind == 4 ? (uint64_t)(i < n / 2 ? i : n - i)
						   : UINT64_MAX;
			memcpy(s, a, n * sizeof a[0]);
			if (n)
				qsort(s, n, sizeof s[0], cmp_u64);
			ann_sort_u64(a, n);
			if (n && memcmp(a, s, n * sizeof a[0]) != 0)
				T_FAIL("sort: n %zu kind %d differs from qsort", n, kind);
		}
}

int main(void)
{
	ann_rng rng;
	t_init("test_distance", &rng);
	test_env_override(); /* first: the children must fork before this process probes */
	test_dispatch();
	test_pairs(&rng);
	test_int_overflow();
	test_many(&rng);
	test_metric(&rng);
	test_batch(&rng);
	test_batch_threads(&rng);
	test_topk(&rng);
	test_heap_template(&rng);
	test_kth(&rng);
	test_sort(&rng);
	printf("test_distance: all passed\n");
	return 0;
}
