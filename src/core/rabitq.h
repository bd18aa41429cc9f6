/* SPDX-License-Identifier: MIT */
/*
 * rabitq.h: compact codes for re-ranked scans (issue 12): RaBitQ (Gao & Long,
 * SIGMOD 2024) with its extension to B bits per dimension (extended RaBitQ,
 * Gao et al., SIGMOD 2025).
 *
 * A vector x of a partition with centre c is coded from its residual
 * r = x - c: a rotation P (fixed per index, made from a seed) is applied to
 * r / |r| and each rotated coordinate is quantised to `bits` bits. With the
 * code come a few factors per vector (|r| and the inner product of the
 * quantised unit vector with the true one), so that for a query q the
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
 * The math, the invariants and the memory of every allocation are stated at
 * the top of rabitq.c.
 *
 * Contract status: this header is the interface between the code module
 * (rabitq.c) and its users (block layout, search). Change it only together.
 * Changes since the first contract (all additions; names and meaning of the
 * original functions unchanged):
 *   - ann_rbq_padded_dim: the rotation works in dim rounded up to a multiple
 *     of 16; the code size follows it.
 *   - dim is limited to 1..65536 (integer accumulators stay exact).
 *   - ann_rbq_rotate: the rotation itself (tests, tools).
 *   - ann_rbq_query_set_eps0, ann_rbq_query_set_simd: the bound's eps0 and
 *     the kernel level (tests and benchmarks compare scalar and AVX2).
 *   - the default eps0 is 2.8, not the paper's 1.9 (see ANN_RBQ_EPS0).
 */
#ifndef ANN_RABITQ_H
#define ANN_RABITQ_H

#include "common.h"

/* Largest dimension accepted (the integer dot products of the extra bits
 * stay below 2^31 per lane up to here). */
#define ANN_RBQ_MAX_DIM 65536u
/* The default eps0 of the bound. The papers use 1.9, but measured over
 * random and clustered pairs (tests/test_rabitq.c) the error is close to
 * normal with standard deviation ~ the bound at eps0 = 1, so 1.9 leaves
 * about 5% of pairs outside est +- width; 2.8 leaves 0.5%. */
#define ANN_RBQ_EPS0 2.8f

/* Parameters shared by every partition of an index: dimension, bits per
 * dimension (1..8; 1 is plain RaBitQ), the rotation. Immutable after creation,
 * so one instance may serve any number of threads. */
typedef struct ann_rbq ann_rbq;

/* dim 1..ANN_RBQ_MAX_DIM; bits 1..8; seed fixes the rotation. Memory:
 * ann_rbq_sizeof, O(dim): the struct and 4 * padded_dim random sign bits of
 * the randomised Hadamard / Kac-walk rotation (no dense matrix). */
int ann_rbq_new(uint32_t dim, unsigned bits, uint64_t seed, ann_rbq **out, ann_error *err);
void ann_rbq_free(ann_rbq *q);
size_t ann_rbq_sizeof(const ann_rbq *q);
uint32_t ann_rbq_dim(const ann_rbq *q);
unsigned ann_rbq_bits(const ann_rbq *q);
uint64_t ann_rbq_seed(const ann_rbq *q);
/* dim rounded up to a multiple of 16 (at least 16): the rotation's and the
 * code's dimension. */
uint32_t ann_rbq_padded_dim(const ann_rbq *q);

/* Bytes of one vector's code including its factors (fixed per ann_rbq):
 * padded_dim * bits / 8 + 10. Codes of a partition are stored as n
 * consecutive records of this size. */
size_t ann_rbq_code_bytes(const ann_rbq *q);

/* out (padded_dim floats) = P v, where v is dim floats zero-padded to
 * padded_dim. P is orthogonal (up to float rounding). No allocation. */
void ann_rbq_rotate(const ann_rbq *q, const float *v, float *out);

/* Encodes n float rows x (row-major, dim) relative to centre c (dim floats)
 * into codes (n * ann_rbq_code_bytes bytes). Scratch is internal: one
 * allocation per call of 4 * dim + 13 * padded_dim bytes at 1 bit, plus the
 * scale search's from 2 bits on: 44 * padded_dim + 16 at 2 bits, at most
 * 36 * padded_dim + 416 from 3. Rows and centre must be
 * finite, and so must their difference (ANN_E_INVAL naming the row); nothing
 * is guaranteed about codes already written when a row fails. */
int ann_rbq_encode(const ann_rbq *q, const float *c, const float *x, size_t n, uint8_t *codes,
		   ann_error *err);

/* Per-thread query state: the rotated query residual and its look-up tables.
 * Memory (ann_rbq_query_sizeof): one allocation of 22 * padded_dim + 4 * dim
 * (2-bit codes: 38 * padded_dim + 4 * dim, the ex plane's integer tables)
 * bytes plus the struct. */
typedef struct ann_rbq_query ann_rbq_query;

int ann_rbq_query_new(const ann_rbq *q, ann_rbq_query **out, ann_error *err);
void ann_rbq_query_free(ann_rbq_query *s);
size_t ann_rbq_query_sizeof(const ann_rbq_query *s);

/* Prepares the state for query vector qv (dim floats) against a partition of
 * centre c (dim floats), for metric m (ANN_METRIC_L2 or ANN_METRIC_IP; the
 * caller normalises for cosine, and passes COSINE as IP). Call once per
 * (query, partition). Cost: one rotation, O(padded_dim log padded_dim). */
void ann_rbq_query_prepare(ann_rbq_query *s, ann_metric m, const float *qv, const float *c);

/* ann_rbq_query_prepare for L2 from rotations made once: rq = R qv and rc =
 * R c (ann_rbq_rotate, padded_dim floats each). R is linear and orthonormal,
 * so R (qv - c) = rq - rc and |qv - c| = |rq - rc|: the same state up to
 * rounding, without a rotation. For a batch, where many queries share a
 * partition and each query meets many partitions. */
void ann_rbq_query_prepare_rotated(ann_rbq_query *s, const float *rq, const float *rc);

/* For n codes (as written by ann_rbq_encode with the same centre): est[i] is
 * the estimated distance in ann_metric convention (L2 squared; IP negated),
 * width[i] >= 0 the half-width of its confidence interval (eps0 =
 * ANN_RBQ_EPS0 unless ann_rbq_query_set_eps0 says otherwise).
 * width may be NULL. est and width of one code do not depend on the kernel
 * level (scalar and AVX2 give bit-identical results) nor on n. est is
 * unbiased, not clamped: an L2 estimate may be below 0. Call only after
 * ann_rbq_query_prepare. Cost per code (AVX2): padded_dim / 4 table look-ups
 * for the sign plane, padded_dim / 16 integer multiply-adds for the extra
 * bits. */
void ann_rbq_estimate(const ann_rbq_query *s, const uint8_t *codes, size_t n, float *est, float *width);

/* A coarse estimate of the same quantity from the sign bits of the first
 * pdims rotated coordinates only (1-bit codes: bits 1): the prefix's inner
 * product scaled by padded_dim / pdims. Since the rotation spreads every
 * direction over all coordinates, this is the full estimator on a random
 * subset of the dimensions, about sqrt(padded_dim / pdims) times as noisy,
 * at pdims / padded_dim of the cost: a first pass that a full estimate of
 * its best few refines. pdims: a multiple of 32 in 32..padded_dim. */
void ann_rbq_estimate_prefix(const ann_rbq_query *s, const uint8_t *codes, size_t n, uint32_t pdims, float *est);

/* ann_rbq_estimate of n records whose factors are kept apart: record i is
 * its sign and ex planes at codes + i * stride (stride >= the planes' bytes;
 * what follows the planes is not read as factors, but the buffer must
 * extend 6 bytes past the planes of the last record, which the kernels may
 * read), its factors rn[i] = |r|, fip[i] = f_ip and tan[i] = tan in 1/256
 * units (the values a full record holds, as floats). est and width are bit
 * for bit those of ann_rbq_estimate on the full records. Lets a reader of
 * records with narrower factors (the codes block's slim records) skip
 * rebuilding full ones. */
void ann_rbq_estimate_split(const ann_rbq_query *s, const uint8_t *codes, size_t stride, size_t n, const float *rn,
			    const float *fip, const float *tan, float *est, float *width);

/* eps0 > 0 of later estimates (default ANN_RBQ_EPS0). */
void ann_rbq_query_set_eps0(ann_rbq_query *s, float eps0);
/* Kernel level of later estimates (default: ann_simd_active(); AVX-512
 * machines run the AVX2 kernels). ANN_E_UNSUPPORTED if this CPU cannot. */
int ann_rbq_query_set_simd(ann_rbq_query *s, ann_simd_level level, ann_error *err);

#endif /* ANN_RABITQ_H */
