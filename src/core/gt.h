/* SPDX-License-Identifier: MIT */
/*
 * gt.h: exact k-nearest-neighbour ground truth. The base file is streamed in
 * chunks sized from a memory budget, so it may be larger than RAM; the query
 * set is held whole. Distances are screened with OpenBLAS sgemm and every
 * candidate that may enter a top-k is re-measured with the exact kernel, so
 * the result equals a naive scan (ties broken by the smaller id).
 */
#ifndef ANN_GT_H
#define ANN_GT_H

#include "common.h"

typedef struct ann_gt_opts {
	uint32_t k;                /* neighbours per query */
	ann_metric metric;         /* L2, IP or COSINE */
	int threads;               /* worker threads (>= 1), each owns a share of the queries */
	size_t mem_bytes;          /* budget for base chunks + distance tiles (queries and results extra) */
	ann_progress_fn progress;  /* called with phase "gt", done/total in base vectors */
	void *progress_ctx;
} ann_gt_opts;

void ann_gt_opts_init(ann_gt_opts *o);

/* Memory the call needs beyond mem_bytes: the queries as float32 and the
 * nq * k results, in bytes. */
size_t ann_gt_fixed_bytes(uint64_t nq, uint32_t dim, uint32_t k);

/* Computes the exact top-k of every query of query_path among the vectors of
 * base_path. ids and dists must hold nq * k entries (nq = vectors in the
 * query file; ann_gt_compute_alloc allocates them). Rows with fewer than k
 * base vectors are padded with -1 / +inf. */
int ann_gt_compute(const char *base_path, const char *query_path, const ann_gt_opts *o, uint32_t *nq_out,
		   int32_t **ids_out, float **dists_out, ann_error *err);

/* The same over arrays in memory (base n x d, queries nq x d): the reference
 * the file version is tested against, and a helper for benchmarks. */
int ann_gt_compute_mem(const float *base, size_t n, const float *q, size_t nq, size_t d, const ann_gt_opts *o,
		       int32_t *ids, float *dists, ann_error *err);

#endif /* ANN_GT_H */
