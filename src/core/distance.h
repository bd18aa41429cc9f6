/* SPDX-License-Identifier: MIT */
/*
 * distance.h: distance kernels with runtime SIMD dispatch, the BLAS batch
 * form and the bounded top-k heap. distance.c holds the scalar reference and
 * the dispatch; distance_avx2.c and distance_avx512.c the vector kernels,
 * compiled with their own flags. OpenBLAS is called from here and from nn
 * only. All distances follow ann_metric: smaller is nearer (L2 squared,
 * IP negated). u8/i8 kernels accumulate in integers, so they are exact.
 */
#ifndef ANN_DISTANCE_H
#define ANN_DISTANCE_H

#include "common.h"

typedef struct ann_kernels {
	ann_simd_level level;
	/* one pair; d >= 1, no alignment required */
	float (*l2_f32)(const float *a, const float *b, size_t d);
	float (*ip_f32)(const float *a, const float *b, size_t d); /* plain dot product, not negated */
	float (*l2_u8)(const uint8_t *a, const uint8_t *b, size_t d);
	float (*ip_u8)(const uint8_t *a, const uint8_t *b, size_t d);
	float (*l2_i8)(const int8_t *a, const int8_t *b, size_t d);
	float (*ip_i8)(const int8_t *a, const int8_t *b, size_t d);
	/* float query against stored u8 vectors (the common SIFT case) */
	float (*l2_f32_u8)(const float *q, const uint8_t *x, size_t d);
	float (*ip_f32_u8)(const float *q, const uint8_t *x, size_t d);
	/* one query against n contiguous rows of x (row stride d): out[i] */
	void (*l2_f32_many)(const float *q, const float *x, size_t n, size_t d, float *out);
	void (*l2_f32_u8_many)(const float *q, const uint8_t *x, size_t n, size_t d, float *out);
	void (*ip_f32_many)(const float *q, const float *x, size_t n, size_t d, float *out);
} ann_kernels;

/* The vector tables, defined in distance_avx2.c and distance_avx512.c. Never
 * use them directly: ann_kernels_for() hands them out only when CPUID and the
 * OS's saved state say this CPU can run them. */
extern const ann_kernels ann_kernels_avx2;
extern const ann_kernels ann_kernels_avx512;

/* Kernels of one level, or NULL if this CPU cannot run it. */
const ann_kernels *ann_kernels_for(ann_simd_level level);
/* Kernels of ann_simd_active(). Never NULL. */
const ann_kernels *ann_kernels_best(void);

/* Metric-aware distance for float vectors (cosine computes norms). */
float ann_distance_f32(const ann_kernels *k, ann_metric m, const float *a, const float *b, size_t d);

/* Squared norms of n rows of x into out. */
void ann_norms_f32(const float *x, size_t n, size_t d, float *out);

/* out = a - b, d floats (out may be a). The shift that the sgemm passes of
 * kmeans.c and knngraph.c apply to rows before |x|^2 - 2 x.y + |y|^2. */
void ann_sub_f32(float *out, const float *a, const float *b, size_t d);

/* Batch distances via OpenBLAS sgemm: out[i * nx + j] = dist(q_i, x_j) for
 * nq queries and nx rows, row-major, dimension d. For L2 it computes
 * |q|^2 - 2 q.x + |x|^2 (clamped at 0); qnorm/xnorm may be NULL (then
 * computed) or precomputed squared norms. For IP it is -q.x. For COSINE
 * 1 - q.x / (|q||x|). out must hold nq * nx floats. */
void ann_dist_batch(ann_metric m, const float *q, size_t nq, const float *qnorm, const float *x, size_t nx,
		    const float *xnorm, size_t d, float *out);

/* Sets the OpenBLAS thread count (1 by default in the library). */
void ann_blas_threads(int n);
/* Makes OpenBLAS single-threaded unless ann_blas_threads chose otherwise:
 * the library runs its own threads, and OpenBLAS's pool on top of them
 * cost 0.5-8 ms per single-row sgemv (a query through a router's network)
 * on a busy 2-core machine. Called by ann_build and ann_index_load. */
void ann_blas_single(void);

/* ---- top-k ---------------------------------------------------------------
 * Keeps the k smallest (dist, id) pairs seen, as a max-heap in caller-owned
 * arrays of k entries. Ties on distance keep the smaller id. */
typedef struct ann_topk {
	float *dist;
	int64_t *id;
	size_t k;
	size_t n; /* entries held, <= k */
} ann_topk;

void ann_topk_init(ann_topk *t, float *dist, int64_t *id, size_t k);
/* The distance a candidate must beat to enter (+inf until full). */
static inline float ann_topk_bound(const ann_topk *t)
{
	return t->n < t->k ? __builtin_inff() : t->dist[0];
}
/* Offers a pair; returns true if it was kept. */
bool ann_topk_push(ann_topk *t, float dist, int64_t id);
/* Sorts the held entries ascending by (dist, id) in place and pads the
 * remaining k - n slots with +inf / -1. The heap is unusable afterwards
 * until ann_topk_init. */
void ann_topk_finish(ann_topk *t);

/* ---- selection by key ------------------------------------------------------
 * A float's bits as an unsigned key in the float's order (NaN past +inf; -0
 * just below +0), and back; the r-th smallest key of a[0..n) (0-based,
 * r < n) by quickselect, reordering a. Used where a top-k is cut by value
 * (ann_hnsw_scan, the k-means router's pre-bound). */
static inline uint32_t ann_fkey(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	return u & 0x80000000u ? ~u : u | 0x80000000u;
}

static inline float ann_fval(uint32_t u)
{
	u = u & 0x80000000u ? u & 0x7fffffffu : ~u;
	float f;
	memcpy(&f, &u, 4);
	return f;
}

uint32_t ann_kth_u32(uint32_t *a, size_t n, size_t r);
/* Scales v (d floats) to unit length, as a cosine search takes its query
 * (the squared norm summed in double); a zero vector stays zero. */
void ann_unit_f32(float *v, size_t d);
/* Sorts a ascending in place: an introsort (median-of-3 quicksort, a heap
 * sort past 2 log2 n levels, insertion below 16 keys) on plain integers,
 * with no comparator call. */
void ann_sort_u64(uint64_t *a, size_t n);

#endif /* ANN_DISTANCE_H */
