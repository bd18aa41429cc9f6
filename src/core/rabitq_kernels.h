/* SPDX-License-Identifier: MIT */
/*
 * rabitq_kernels.h: private to rabitq.c, rabitq_avx2.c and rabitq_avx512.c
 * (and tests/test_rabitq.c, which calls the encoder's scale search alone).
 * The inner loop of ann_rbq_estimate, in a scalar reference (rabitq.c) and
 * an AVX2 form (rabitq_avx2.c, built with -mavx2 -mfma; it serves AVX-512
 * CPUs too): for each of n code records the integer
 *
 *   Y[i] = 2^be A[i] + E[i],
 *   A[i] = sum over the first `groups` 4-dim groups g of T_g[nibble g of
 *          the sign plane], T_g[m] = the sum of qi[4 g + t] over the bits t
 *          of m (|T_g| <= 4 * 2047), so A = sum of qi_j over the set sign
 *          bits of dims j < 4 groups;
 *   E[i] = sum over dims j of ex_j * qi[j] (ex_j the extra-bits code of dim
 *          j, be bits, LSB-first bit stream), 0 when be is 0.
 *
 * Both are exact integer sums, so every form and every order of additions
 * gives the same Y: the forms agree bit for bit by construction.
 *
 * The AVX2 form is a fast scan (as FAISS's 4-bit PQ fast-scan and the RaBitQ
 * paper's): 32 records at a time, their plane bytes transposed so that one
 * register holds one byte of all 32, and each nibble looked up in its
 * group's 16-entry table with one vpshufb. The tables hold U = T + 8192
 * (0..16380, 14 bits) split into a low and a high byte (tab: per group the
 * 16 low bytes, then the 16 high bytes), summed in 16-bit lanes (exact for
 * up to 256 groups, then carried into 64 bits). With 2-bit codes (be 1) the
 * ex plane is one bit a dim laid out as the sign plane, so it is scanned the
 * same way with the same tables.
 *
 * Records may be read up to 6 bytes past their ex plane for be >= 2: the
 * factor bytes that close every record are there, so no read leaves the
 * record. The sign plane and a 1-bit ex plane are read within the plane.
 */
#ifndef ANN_RABITQ_KERNELS_H
#define ANN_RABITQ_KERNELS_H

#include "common.h"

typedef struct ann_rbq_scan {
	const uint8_t *tab; /* groups * 32 bytes: group g's U = T_g + 8192, 16 low bytes then 16 high */
	const int16_t *qi;  /* dp quantised query coordinates, |qi| <= 2047 */
	size_t groups;      /* sign-plane groups summed: dp / 4, or a prefix's */
	size_t dp;          /* padded dim, a multiple of 16 */
	unsigned be;        /* extra bits per dim, 0..7 */
	size_t sign_bytes;  /* dp / 8 */
	size_t rec_bytes;   /* one record */
} ann_rbq_scan;

/* The query side's per-partition set-up (ann_rbq_query_prepare) and the
 * rotation, in an AVX2 form that does the same float operations in the same
 * order as rabitq.c's scalar code, so codes, tables and estimates agree bit
 * for bit whichever form ran (tests/test_rabitq.c):
 *   rotate: sign flips (exact), the Walsh-Hadamard butterflies stage by
 *           stage (a + b and a - b, the first three stages inside one
 *           8-float register), the 1/sqrt(L) scaling, the Kac step;
 *   quant:  max |q'_i| (exact in any order) and qi = clamp(round(q'/delta)). */
typedef struct ann_rbq_rot {
	const uint64_t *signs; /* rounds * dp bits, LSB first */
	size_t dim, dp, L;     /* dp a multiple of 16, L the largest power of two <= dp */
	unsigned rounds;
} ann_rbq_rot;

void ann_rbq_rotate_avx2(const ann_rbq_rot *r, const float *v, float *out);
/* res = q - c and the sums of (q - c)^2 (L2), or of q^2 and q c (c != NULL
 * only then, res NULL), and of r (n floats), in double, each in 4 chains:
 * element j adds to chain j mod 4, and the chains are combined as
 * (a0 + a1) + (a2 + a3), as the scalar loops in rabitq.c. */
double ann_rbq_resid_avx2(const float *q, const float *c, size_t n, float *res);
void ann_rbq_dots_avx2(const float *q, const float *c, size_t n, double *qq, double *qc);
double ann_rbq_sum_avx2(const float *r, size_t n);
float ann_rbq_absmax_avx2(const float *rq, size_t dp);
void ann_rbq_quant_avx2(const float *rq, size_t dp, float inv, int16_t *qi);

/* The encoder's scale search (rabitq.c, quantise_ex), callable for
 * tests/test_rabitq.c, which checks it against the first version: k (n
 * bytes) = the levels of extended RaBitQ for magnitudes a (n >= 1 values,
 * >= 0, finite) at be = 1..7 extra bits; scratch of
 * ann_rbq_quantise_ex_bytes(n, be) bytes, 8-byte aligned. */
size_t ann_rbq_quantise_ex_bytes(size_t n, unsigned be);
void ann_rbq_quantise_ex(const double *a, size_t n, unsigned be, uint8_t *k, void *scratch);

/* The fast scan's tables (ann_rbq_scan.tab) from the quantised query:
 * groups * 32 bytes. */
void ann_rbq_tables(const int16_t *qi, size_t groups, uint8_t *tab);
void ann_rbq_tables_avx2(const int16_t *qi, size_t groups, uint8_t *tab);

/* The last step of ann_rbq_estimate_split, from Y and the factors (rn, fip,
 * tan: floats), per record in double, the operations of rabitq.c's scalar
 * loop in its order (no contraction: C11 mode):
 *   yq = delta Y - yconst,  ip = fip yq,
 *   est = (float)((rn rn + qn2) - 2 ip)  (L2)  or  (float)-(cq + ip)  (IP),
 *   width = (float)((wscale rn) tan)  (when width is not NULL);
 * whole steps of 4 records; returns the records done, the caller's scalar
 * loop does the rest. */
typedef struct ann_rbq_fin {
	double delta, yconst, qn2, cq, wscale;
	bool l2;
} ann_rbq_fin;

size_t ann_rbq_finish_avx2(const ann_rbq_fin *f, const int64_t *Y, const float *rn, const float *fip,
			   const float *tan, size_t n, float *est, float *width);

void ann_rbq_scan_scalar(const ann_rbq_scan *a, const uint8_t *codes, size_t n, int64_t *Y);
void ann_rbq_scan_avx2(const ann_rbq_scan *a, const uint8_t *codes, size_t n, int64_t *Y);

#endif /* ANN_RABITQ_KERNELS_H */
