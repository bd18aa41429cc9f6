/* SPDX-License-Identifier: MIT */
/*
 * rabitq.h: compact codes for re-ranked scans (issue 12): RaBitQ (Gao & Long,
 * SIGMOD 2024) with its extension to B bits per dimension (extended RaBitQ,
 * Gao et al., SIGMOD 2025).
 *
 * A vector x of a partition with centre c is coded from its residual
 * r = x - c: a rotation P (fixed per index, made from a seed) is applied to
 * r / |r| and each rotated coordinate is quantised to `bits` bits. With the
 * code comes a few float factors per vector (|r| and the inner product of
 * the quantised unit vector with the true one), so that for a query q the
 * squared L2 distance |x - q|^2 (or the inner product) is estimated from the
 * code alone, with an error bound that holds with high probability:
 *
 *     est - width <= true distance <= est + width
 *
 * The estimate ranks the candidates of the probed partitions; only those whose
 * lower bound can still beat the current k-th distance need their exact
 * vector read (docs/DESIGN.md, "Codes and re-ranking").
 *
 * Codes are a storage format: their layout (docs/FORMAT.md "RaBitQ codes")
 * is fixed by (dim, bits, seed) and never depends on the machine.
 *
 * Contract status: this header is the interface between the code module
 * (rabitq.c) and its users (block layout, search). Change it only together.
 */
#ifndef ANN_RABITQ_H
#define ANN_RABITQ_H

#include "common.h"

/* Parameters shared by every partition of an index: dimension, bits per
 * dimension (1..8; 1 is plain RaBitQ), the rotation. Immutable after creation,
 * so one instance may serve any number of threads. */
typedef struct ann_rbq ann_rbq;

/* dim >= 1; bits 1..8; seed fixes the rotation. Memory: stated by
 * ann_rbq_sizeof (the rotation: O(dim) for a randomised Hadamard transform,
 * O(dim^2) floats for a dense orthogonal matrix). */
int ann_rbq_new(uint32_t dim, unsigned bits, uint64_t seed, ann_rbq **out, ann_error *err);
void ann_rbq_free(ann_rbq *q);
size_t ann_rbq_sizeof(const ann_rbq *q);
uint32_t ann_rbq_dim(const ann_rbq *q);
unsigned ann_rbq_bits(const ann_rbq *q);
uint64_t ann_rbq_seed(const ann_rbq *q);

/* Bytes of one vector's code including its factors (fixed per ann_rbq). Codes
 * of a partition are stored as n consecutive records of this size. */
size_t ann_rbq_code_bytes(const ann_rbq *q);

/* Encodes n float rows x (row-major, dim) relative to centre c (dim floats)
 * into codes (n * ann_rbq_code_bytes bytes). Scratch is internal and bounded
 * by O(dim) per call. Rows must be finite (ANN_E_INVAL naming the row). */
int ann_rbq_encode(const ann_rbq *q, const float *c, const float *x, size_t n, uint8_t *codes,
		   ann_error *err);

/* Per-thread query state: the rotated query residual and its look-up tables.
 * Memory O(dim * 2^bits) floats at most; see ann_rbq_query_sizeof. */
typedef struct ann_rbq_query ann_rbq_query;

int ann_rbq_query_new(const ann_rbq *q, ann_rbq_query **out, ann_error *err);
void ann_rbq_query_free(ann_rbq_query *s);
size_t ann_rbq_query_sizeof(const ann_rbq_query *s);

/* Prepares the state for query vector qv (dim floats) against a partition of
 * centre c (dim floats), for metric m (ANN_METRIC_L2 or ANN_METRIC_IP; the
 * caller normalises for cosine). Call once per (query, partition). */
void ann_rbq_query_prepare(ann_rbq_query *s, ann_metric m, const float *qv, const float *c);

/* For n codes (as written by ann_rbq_encode with the same centre): est[i] is
 * the estimated distance in ann_metric convention (L2 squared; IP negated),
 * width[i] >= 0 the half-width of its confidence interval (eps0 = 1.9 as in
 * the paper; the module may add a setter if measurement calls for another).
 * width may be NULL. */
void ann_rbq_estimate(const ann_rbq_query *s, const uint8_t *codes, size_t n, float *est, float *width);

#endif /* ANN_RABITQ_H */
