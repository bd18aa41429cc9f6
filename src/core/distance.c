/* SPDX-License-Identifier: MIT */
/*
 * distance.c: the scalar kernels (the reference every vector path is tested
 * against), the CPU probe and ANNANN_SIMD override that pick a kernel table,
 * the metric-aware and BLAS batch distances, and the bounded top-k heap.
 * This file is built with baseline flags: it only names the AVX2 and AVX-512
 * tables, and hands them out only after CPUID and XGETBV say they can run.
 */
#include "distance.h"
#include "heap.h"

#include <cblas.h>
#include <cpuid.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <strings.h>

/* ---- scalar kernels ------------------------------------------------------
 * Four independent accumulators give the out-of-order core some parallelism
 * (and let the compiler pack them into one SSE register) without changing
 * what "scalar" means: one element at a time, baseline instructions. */

static float scalar_l2_f32(const float *a, const float *b, size_t d)
{
	float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
	size_t j = 0;
	for (; j + 4 <= d; j += 4) {
		float t0 = a[j] - b[j], t1 = a[j + 1] - b[j + 1];
		float t2 = a[j + 2] - b[j + 2], t3 = a[j + 3] - b[j + 3];
		s0 += t0 * t0;
		s1 += t1 * t1;
		s2 += t2 * t2;
		s3 += t3 * t3;
	}
	for (; j < d; j++) {
		float t = a[j] - b[j];
		s0 += t * t;
	}
	return (s0 + s1) + (s2 + s3);
}

static float scalar_ip_f32(const float *a, const float *b, size_t d)
{
	float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
	size_t j = 0;
	for (; j + 4 <= d; j += 4) {
		s0 += a[j] * b[j];
		s1 += a[j + 1] * b[j + 1];
		s2 += a[j + 2] * b[j + 2];
		s3 += a[j + 3] * b[j + 3];
	}
	for (; j < d; j++)
		s0 += a[j] * b[j];
	return (s0 + s1) + (s2 + s3);
}

/* Integer kernels sum int32 products in chunks small enough that a 32-bit
 * accumulator cannot overflow (16384 * 255^2 < 2^31), then in int64, so the
 * result is the exact integer rounded once to float. */
#define SCALAR_INT_CHUNK 16384

static float scalar_l2_u8(const uint8_t *a, const uint8_t *b, size_t d)
{
	int64_t total = 0;
	for (size_t j0 = 0; j0 < d; j0 += SCALAR_INT_CHUNK) {
		size_t j1 = ANN_MIN(d, j0 + SCALAR_INT_CHUNK);
		int32_t s = 0;
		for (size_t j = j0; j < j1; j++) {
			int32_t t = (int32_t)a[j] - (int32_t)b[j];
			s += t * t;
		}
		total += s;
	}
	return (float)total;
}

static float scalar_ip_u8(const uint8_t *a, const uint8_t *b, size_t d)
{
	int64_t total = 0;
	for (size_t j0 = 0; j0 < d; j0 += SCALAR_INT_CHUNK) {
		size_t j1 = ANN_MIN(d, j0 + SCALAR_INT_CHUNK);
		int32_t s = 0;
		for (size_t j = j0; j < j1; j++)
			s += (int32_t)a[j] * (int32_t)b[j];
		total += s;
	}
	return (float)total;
}

static float scalar_l2_i8(const int8_t *a, const int8_t *b, size_t d)
{
	int64_t total = 0;
	for (size_t j0 = 0; j0 < d; j0 += SCALAR_INT_CHUNK) {
		size_t j1 = ANN_MIN(d, j0 + SCALAR_INT_CHUNK);
		int32_t s = 0;
		for (size_t j = j0; j < j1; j++) {
			int32_t t = (int32_t)a[j] - (int32_t)b[j];
			s += t * t;
		}
		total += s;
	}
	return (float)total;
}

static float scalar_ip_i8(const int8_t *a, const int8_t *b, size_t d)
{
	int64_t total = 0;
	for (size_t j0 = 0; j0 < d; j0 += SCALAR_INT_CHUNK) {
		size_t j1 = ANN_MIN(d, j0 + SCALAR_INT_CHUNK);
		int32_t s = 0;
		for (size_t j = j0; j < j1; j++)
			s += (int32_t)a[j] * (int32_t)b[j];
		total += s;
	}
	return (float)total;
}

static float scalar_l2_f32_u8(const float *q, const uint8_t *x, size_t d)
{
	float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
	size_t j = 0;
	for (; j + 4 <= d; j += 4) {
		float t0 = q[j] - (float)x[j], t1 = q[j + 1] - (float)x[j + 1];
		float t2 = q[j + 2] - (float)x[j + 2], t3 = q[j + 3] - (float)x[j + 3];
		s0 += t0 * t0;
		s1 += t1 * t1;
		s2 += t2 * t2;
		s3 += t3 * t3;
	}
	for (; j < d; j++) {
		float t = q[j] - (float)x[j];
		s0 += t * t;
	}
	return (s0 + s1) + (s2 + s3);
}

static float scalar_ip_f32_u8(const float *q, const uint8_t *x, size_t d)
{
	float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
	size_t j = 0;
	for (; j + 4 <= d; j += 4) {
		s0 += q[j] * (float)x[j];
		s1 += q[j + 1] * (float)x[j + 1];
		s2 += q[j + 2] * (float)x[j + 2];
		s3 += q[j + 3] * (float)x[j + 3];
	}
	for (; j < d; j++)
		s0 += q[j] * (float)x[j];
	return (s0 + s1) + (s2 + s3);
}

static void scalar_l2_f32_many(const float *q, const float *x, size_t n, size_t d, float *out)
{
	for (size_t i = 0; i < n; i++)
		out[i] = scalar_l2_f32(q, x + i * d, d);
}

static void scalar_l2_f32_u8_many(const float *q, const uint8_t *x, size_t n, size_t d, float *out)
{
	for (size_t i = 0; i < n; i++)
		out[i] = scalar_l2_f32_u8(q, x + i * d, d);
}

static void scalar_ip_f32_many(const float *q, const float *x, size_t n, size_t d, float *out)
{
	for (size_t i = 0; i < n; i++)
		out[i] = scalar_ip_f32(q, x + i * d, d);
}

static const ann_kernels kernels_scalar = {
	.level = ANN_SIMD_SCALAR,
	.l2_f32 = scalar_l2_f32,
	.ip_f32 = scalar_ip_f32,
	.l2_u8 = scalar_l2_u8,
	.ip_u8 = scalar_ip_u8,
	.l2_i8 = scalar_l2_i8,
	.ip_i8 = scalar_ip_i8,
	.l2_f32_u8 = scalar_l2_f32_u8,
	.ip_f32_u8 = scalar_ip_f32_u8,
	.l2_f32_many = scalar_l2_f32_many,
	.l2_f32_u8_many = scalar_l2_f32_u8_many,
	.ip_f32_many = scalar_ip_f32_many,
};

/* ---- CPU probe and dispatch ----------------------------------------------
 * Written once under pthread_once, read-only afterwards. */

static pthread_once_t probe_once = PTHREAD_ONCE_INIT;
static ann_simd_level probe_cpu_max; /* best level this CPU and OS can run */
static ann_simd_level probe_active;  /* the level ann_kernels_best() hands out */

/* XCR0 via xgetbv; inline assembly because the intrinsic needs -mxsave. */
static uint64_t probe_xcr0(void)
{
	uint32_t lo, hi;
	__asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	return ((uint64_t)hi << 32) | lo;
}

static ann_simd_level probe_cpu(void)
{
	unsigned a, b, c, d;
	if (!__get_cpuid(1, &a, &b, &c, &d))
		return ANN_SIMD_SCALAR;
	bool fma = c & (1u << 12), osxsave = c & (1u << 27), avx = c & (1u << 28), f16c = c & (1u << 29);
	if (!osxsave || !avx || !fma || !f16c)
		return ANN_SIMD_SCALAR;
	uint64_t xcr0 = probe_xcr0();
	if ((xcr0 & 0x6) != 0x6) /* SSE and YMM state enabled by the OS */
		return ANN_SIMD_SCALAR;
	if (__get_cpuid_max(0, NULL) < 7)
		return ANN_SIMD_SCALAR;
	__cpuid_count(7, 0, a, b, c, d);
	if (!(b & (1u << 5))) /* AVX2 */
		return ANN_SIMD_SCALAR;
	const unsigned avx512_fdqbwvl = (1u << 16) | (1u << 17) | (1u << 30) | (1u << 31);
	if ((b & avx512_fdqbwvl) != avx512_fdqbwvl)
		return ANN_SIMD_AVX2;
	if ((xcr0 & 0xe6) != 0xe6) /* opmask, ZMM_Hi256 and Hi16_ZMM state */
		return ANN_SIMD_AVX2;
	return ANN_SIMD_AVX512;
}

static void probe_run(void)
{
	probe_cpu_max = probe_cpu();
	probe_active = probe_cpu_max;
	const char *env = getenv("ANNANN_SIMD");
	if (!env || !*env)
		return;
	ann_simd_level want;
	if (!strcasecmp(env, "scalar"))
		want = ANN_SIMD_SCALAR;
	else if (!strcasecmp(env, "avx2"))
		want = ANN_SIMD_AVX2;
	else if (!strcasecmp(env, "avx512"))
		want = ANN_SIMD_AVX512;
	else
		return; /* unknown names are ignored: the best level runs */
	probe_active = want <= probe_cpu_max ? want : probe_cpu_max;
}

ann_simd_level ann_simd_active(void)
{
	pthread_once(&probe_once, probe_run);
	return probe_active;
}

const char *ann_simd_name(ann_simd_level level)
{
	switch (level) {
	case ANN_SIMD_SCALAR: return "scalar";
	case ANN_SIMD_AVX2: return "avx2";
	case ANN_SIMD_AVX512: return "avx512";
	default: return "unknown";
	}
}

const ann_kernels *ann_kernels_for(ann_simd_level level)
{
	pthread_once(&probe_once, probe_run);
	switch (level) {
	case ANN_SIMD_SCALAR: return &kernels_scalar;
	case ANN_SIMD_AVX2: return probe_cpu_max >= ANN_SIMD_AVX2 ? &ann_kernels_avx2 : NULL;
	case ANN_SIMD_AVX512: return probe_cpu_max >= ANN_SIMD_AVX512 ? &ann_kernels_avx512 : NULL;
	default: return NULL;
	}
}

const ann_kernels *ann_kernels_best(void)
{
	return ann_kernels_for(ann_simd_active());
}

/* ---- metric-aware distances ---------------------------------------------- */

/* 1 - dot / sqrt(na * nb) from squared norms, 1 when either vector is zero,
 * clamped to [0, 2] against rounding. */
static float cosine_from(double dot, double na, double nb)
{
	if (!(na > 0) || !(nb > 0))
		return 1.0f;
	double r = 1.0 - dot / sqrt(na * nb);
	return (float)(r < 0 ? 0 : r > 2 ? 2 : r);
}

float ann_distance_f32(const ann_kernels *k, ann_metric m, const float *a, const float *b, size_t d)
{
	if (!k)
		k = ann_kernels_best();
	switch (m) {
	case ANN_METRIC_L2: return k->l2_f32(a, b, d);
	case ANN_METRIC_IP: return -k->ip_f32(a, b, d);
	case ANN_METRIC_COSINE:
		return cosine_from(k->ip_f32(a, b, d), k->ip_f32(a, a, d), k->ip_f32(b, b, d));
	}
	return NAN;
}

void ann_norms_f32(const float *x, size_t n, size_t d, float *out)
{
	const ann_kernels *k = ann_kernels_best();
	for (size_t i = 0; i < n; i++)
		out[i] = k->ip_f32(x + i * d, x + i * d, d);
}

void ann_sub_f32(float *out, const float *a, const float *b, size_t d)
{
	for (size_t j = 0; j < d; j++)
		out[j] = a[j] - b[j];
}

/* ---- BLAS batch ----------------------------------------------------------
 * Tiles of BATCH_QB queries by BATCH_XB rows: one sgemm per tile, then the
 * metric's fix-up while the tile is still in cache. Norms that the caller did
 * not supply are computed per tile into stack buffers, so the function needs
 * no allocation and cannot fail; recomputing query norms for each row tile
 * costs 1/BATCH_XB of the sgemm work. Stack use: about 17 KiB. */
#define BATCH_QB 256
#define BATCH_XB 2048

static pthread_once_t blas_once = PTHREAD_ONCE_INIT;

static void blas_init(void)
{
	openblas_set_num_threads(1);
}

void ann_blas_single(void)
{
	pthread_once(&blas_once, blas_init);
}

void ann_blas_threads(int n)
{
	pthread_once(&blas_once, blas_init);
	openblas_set_num_threads(n < 1 ? 1 : n);
}

/* 1 / |v| from a squared norm, 0 for a zero (or NaN) vector. */
static inline float inv_norm(float sq)
{
	return sq > 0 ? (float)(1.0 / sqrt((double)sq)) : 0.0f;
}

/* Turns the sgemm tile (scaled dot products) into the metric's distances. */
static void batch_fixup(ann_metric m, float *out, size_t ldo, size_t mi, size_t nj, const float *qn,
			const float *xn, float *xinv)
{
	if (m == ANN_METRIC_L2) {
		for (size_t i = 0; i < mi; i++) {
			float *row = out + i * ldo, qi = qn[i];
			for (size_t j = 0; j < nj; j++) {
				float v = row[j] + qi + xn[j];
				row[j] = v > 0 ? v : 0;
			}
		}
		return;
	}
	/* COSINE: 1 - dot / (|q||x|), 1 when either is zero, clamped to [0, 2]. */
	for (size_t j = 0; j < nj; j++)
		xinv[j] = inv_norm(xn[j]);
	for (size_t i = 0; i < mi; i++) {
		float *row = out + i * ldo, qinv = inv_norm(qn[i]);
		for (size_t j = 0; j < nj; j++) {
			float v = 1.0f - row[j] * qinv * xinv[j];
			v = v > 0 ? v : 0;
			row[j] = v < 2 ? v : 2;
			if (qinv == 0 || xinv[j] == 0)
				row[j] = 1.0f;
		}
	}
}

/* The kernel loop, for dimensions beyond what BLAS's int arguments hold. */
static void batch_naive(ann_metric m, const float *q, size_t nq, const float *x, size_t nx, size_t d,
			float *out)
{
	const ann_kernels *k = ann_kernels_best();
	for (size_t i = 0; i < nq; i++)
		for (size_t j = 0; j < nx; j++)
			out[i * nx + j] = ann_distance_f32(k, m, q + i * d, x + j * d, d);
}

void ann_dist_batch(ann_metric m, const float *q, size_t nq, const float *qnorm, const float *x, size_t nx,
		    const float *xnorm, size_t d, float *out)
{
	if (nq == 0 || nx == 0)
		return;
	if (d == 0) { /* empty vectors: distance 0, cosine 1 (both are zero vectors) */
		for (size_t i = 0; i < nq * nx; i++)
			out[i] = m == ANN_METRIC_COSINE ? 1.0f : 0.0f;
		return;
	}
	if (d > INT_MAX) {
		batch_naive(m, q, nq, x, nx, d, out);
		return;
	}
	pthread_once(&blas_once, blas_init);
	/* ldc is nx; past INT_MAX go one query per tile, where ldc need only cover the tile. */
	size_t qb = nx > INT_MAX ? 1 : BATCH_QB;
	int ldc = nx > INT_MAX ? BATCH_XB : (int)nx;
	float alpha = m == ANN_METRIC_L2 ? -2.0f : m == ANN_METRIC_IP ? -1.0f : 1.0f;
	bool norms = m != ANN_METRIC_IP;
	float qn_buf[BATCH_QB], xn_buf[BATCH_XB], xinv_buf[BATCH_XB];
	for (size_t j0 = 0; j0 < nx; j0 += BATCH_XB) {
		size_t nj = ANN_MIN((size_t)BATCH_XB, nx - j0);
		const float *xt = x + j0 * d;
		const float *xn = xnorm ? xnorm + j0 : xn_buf;
		if (norms && !xnorm)
			ann_norms_f32(xt, nj, d, xn_buf);
		for (size_t i0 = 0; i0 < nq; i0 += qb) {
			size_t mi = ANN_MIN(qb, nq - i0);
			const float *qt = q + i0 * d;
			const float *qn = qnorm ? qnorm + i0 : qn_buf;
			if (norms && !qnorm)
				ann_norms_f32(qt, mi, d, qn_buf);
			float *ot = out + i0 * nx + j0;
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)mi, (int)nj, (int)d, alpha,
				    qt, (int)d, xt, (int)d, 0.0f, ot, ldc);
			if (norms)
				batch_fixup(m, ot, nx, mi, nj, qn, xn, xinv_buf);
		}
	}
}

/* ---- top-k ---------------------------------------------------------------
 * A max-heap under the strict total order (dist, id): the root is the worst
 * pair kept, and a new pair enters when it is smaller. NaN never enters. */

/* The top-k is a max-heap on (dist, id) over the caller's two arrays. */
typedef struct topk_ent {
	float d;
	int64_t id;
} topk_ent;
#define TOPK_AT(t, i) ((topk_ent){(t)->dist[i], (t)->id[i]})
#define TOPK_SET(t, i, v) ((t)->dist[i] = (v).d, (t)->id[i] = (v).id)
#define TOPK_BEFORE(a, b) ((a).d > (b).d || ((a).d == (b).d && (a).id > (b).id))
ANN_HEAP_DEFINE(topk_heap, ann_topk *, topk_ent, TOPK_AT, TOPK_SET, TOPK_BEFORE)

void ann_topk_init(ann_topk *t, float *dist, int64_t *id, size_t k)
{
	t->dist = dist;
	t->id = id;
	t->k = k;
	t->n = 0;
}

bool ann_topk_push(ann_topk *t, float dist, int64_t id)
{
	if (isnan(dist))
		return false;
	topk_ent v = {dist, id};
	if (t->n < t->k) {
		topk_heap_up(t, t->n++, v);
		return true;
	}
	if (t->k == 0 || !TOPK_BEFORE(TOPK_AT(t, 0), v))
		return false;
	topk_heap_down(t, t->n, 0, v);
	return true;
}

void ann_topk_finish(ann_topk *t)
{
	/* Heap sort: the max goes to the end of the shrinking heap, so ascending. */
	for (size_t e = t->n; e > 1; e--) {
		topk_ent v = TOPK_AT(t, e - 1);
		t->dist[e - 1] = t->dist[0];
		t->id[e - 1] = t->id[0];
		topk_heap_down(t, e - 1, 0, v);
	}
	for (size_t i = t->n; i < t->k; i++) {
		t->dist[i] = INFINITY;
		t->id[i] = -1;
	}
}

/* ---- selection by key (distance.h) ---- */

static void sift_u64(uint64_t *a, size_t n, size_t i)
{
	uint64_t v = a[i];
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= n)
			break;
		if (c + 1 < n && a[c + 1] > a[c])
			c++;
		if (a[c] <= v)
			break;
		a[i] = a[c];
		i = c;
	}
	a[i] = v;
}

static void sort_u64(uint64_t *a, size_t n, unsigned depth)
{
	while (n > 16) {
		if (depth-- == 0) { /* heap sort: no quadratic case */
			for (size_t i = n / 2; i-- > 0;)
				sift_u64(a, n, i);
			for (size_t e = n; e-- > 1;) {
				uint64_t t = a[0];
				a[0] = a[e];
				a[e] = t;
				sift_u64(a, e, 0);
			}
			return;
		}
		uint64_t x = a[n / 2], y = a[0], z = a[n - 1];
		uint64_t p = x < y ? (y < z ? y : x < z ? z : x) : (x < z ? x : y < z ? z : y);
		size_t i = 0, j = n - 1;
		for (;;) { /* Hoare: a[0..j] <= p <= a[j+1..] */
			while (a[i] < p)
				i++;
			while (a[j] > p)
				j--;
			if (i >= j)
				break;
			uint64_t t = a[i];
			a[i] = a[j];
			a[j] = t;
			i++;
			j--;
		}
		size_t left = j + 1; /* the smaller side recursively, the larger in the loop */
		if (left < n - left) {
			sort_u64(a, left, depth);
			a += left;
			n -= left;
		} else {
			sort_u64(a + left, n - left, depth);
			n = left;
		}
	}
	for (size_t i = 1; i < n; i++) {
		uint64_t v = a[i];
		size_t j = i;
		for (; j > 0 && a[j - 1] > v; j--)
			a[j] = a[j - 1];
		a[j] = v;
	}
}

void ann_sort_u64(uint64_t *a, size_t n)
{
	unsigned depth = 0;
	for (size_t m = n; m > 1; m >>= 1)
		depth += 2;
	sort_u64(a, n, depth);
}

void ann_unit_f32(float *v, size_t d)
{
	double n2 = 0;
	for (size_t j = 0; j < d; j++)
		n2 += (double)v[j] * v[j];
	if (n2 > 0)
		for (size_t j = 0; j < d; j++)
			v[j] = (float)(v[j] / sqrt(n2));
}

/* Hoare quickselect: for the few keys a radix pass leaves. */
static uint32_t kth_quick(uint32_t *a, size_t n, size_t r)
{
	size_t lo = 0, hi = n - 1;
	while (lo < hi) {
		uint32_t x = a[lo + (hi - lo) / 2], y = a[lo], z = a[hi];
		uint32_t p = x < y ? (y < z ? y : x < z ? z : x) : (x < z ? x : y < z ? z : y); /* median of 3 */
		size_t i = lo, j = hi;
		while (i <= j) {
			while (a[i] < p)
				i++;
			while (a[j] > p)
				j--;
			if (i <= j) {
				uint32_t t = a[i];
				a[i] = a[j];
				a[j] = t;
				i++;
				if (j == 0)
					break;
				j--;
			}
		}
		if (r <= j)
			hi = j;
		else if (r >= i)
			lo = i;
		else
			return a[r];
	}
	return a[r];
}

/* Radix select. Each pass takes the live keys' range, counts their digit
 * of the 11 bits below the highest bit where the range's ends differ (the
 * bits above are common: a query's centroid distances share their sign,
 * exponent and first mantissa bits), finds the bucket that holds rank r and
 * keeps only its keys, at the front of a (branch-free compaction). Two
 * interleaved counts keep repeated digits from serialising the increments.
 * A quickselect's comparisons mispredict instead: 18 us for a query's 2943
 * centroid keys, 52 for 7900, against 2-3 (docs/BENCHMARKS.md "Routing's
 * selection"). The last few keys go to the quickselect. */
#define KTH_RADIX_MIN 64u
uint32_t ann_kth_u32(uint32_t *a, size_t n, size_t r)
{
	uint32_t c0[2048], c1[2048];
	while (n > KTH_RADIX_MIN) {
		uint32_t lo = a[0], hi = a[0];
		for (size_t i = 1; i < n; i++) {
			lo = a[i] < lo ? a[i] : lo;
			hi = a[i] > hi ? a[i] : hi;
		}
		if (lo == hi)
			return lo;
		unsigned top = 31u - (unsigned)__builtin_clz(lo ^ hi), s = top >= 10 ? top - 10 : 0;
		uint32_t mk = (uint32_t)((2ull << (top - s)) - 1), nb = mk + 1;
		memset(c0, 0, nb * sizeof c0[0]);
		memset(c1, 0, nb * sizeof c1[0]);
		size_t i = 0;
		for (; i + 1 < n; i += 2) {
			c0[(a[i] >> s) & mk]++;
			c1[(a[i + 1] >> s) & mk]++;
		}
		if (i < n)
			c0[(a[i] >> s) & mk]++;
		uint32_t b = 0;
		size_t below = 0;
		while (below + c0[b] + c1[b] <= r) /* r < n: some bucket holds it */
			below += c0[b] + c1[b], b++;
		r -= below;
		size_t w = 0;
		for (i = 0; i < n; i++) {
			uint32_t v = a[i];
			a[w] = v;
			w += ((v >> s) & mk) == b;
		}
		n = w;
	}
	return kth_quick(a, n, r);
}
