/* SPDX-License-Identifier: MIT */
/*
 * rabitq_kernels.h: private to rabitq.c, rabitq_avx2.c and rabitq_avx512.c
 * (and tests/test_rabitq.c, which calls the encoder's scale search alone).
 * The two inner loops of ann_rbq_estimate, in a scalar reference (rabitq.c),
 * an AVX2 form (rabitq_avx2.c, built with -mavx2 -mfma) and an AVX-512 form
 * (rabitq_avx512.c): for each of n code records
 *
 *   A[i] = sum over 4-dim groups g of lut[16 g + nibble g of the sign plane],
 *          summed in 8 lanes (lane l takes the groups g = l mod 8 in order)
 *          and reduced as ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)), so both
 *          forms do the same float operations in the same order and agree
 *          bit for bit (the AVX-512 form too, 16 records per step);
 *   E[i] = sum over dims j of ex_j * qi[j], exact in int64 (ex_j the
 *          extra-bits code of dim j, be bits, LSB-first bit stream); with
 *          2-bit codes (be 1) the AVX-512 form sums it as the sign plane,
 *          by 4-dim group through integer tables (elut), 16 records at a
 *          time, in int32 (|E| <= dp * 2047 < 2^31): exact all the same.
 *
 * Records may be read up to 6 bytes past their ex plane: the 10 factor bytes
 * that close every record are there, so no read leaves the record.
 */
#ifndef ANN_RABITQ_KERNELS_H
#define ANN_RABITQ_KERNELS_H

#include "common.h"

typedef struct ann_rbq_scan {
	const float *lut;  /* groups * 16 floats */
	const int32_t *elut; /* be == 1, AVX-512 only: groups * 16 ints, entry m of group g = the sum of
			      * qi[4 g + t] over the bits t of m (exact); NULL: the per-record ex path */
	const int16_t *qi; /* dp quantised query coordinates, |qi| <= 2047 */
	size_t groups;     /* dp / 4 */
	size_t dp;         /* padded dim, a multiple of 16 */
	unsigned be;       /* extra bits per dim, 0..7 */
	size_t sign_bytes; /* dp / 8 */
	size_t rec_bytes;  /* one record */
} ann_rbq_scan;

/* The query side's per-partition set-up (ann_rbq_query_prepare) and the
 * rotation, in an AVX2 form that does the same float operations in the same
 * order as rabitq.c's scalar code, so codes, tables and estimates agree bit
 * for bit whichever form ran (tests/test_rabitq.c):
 *   rotate: sign flips (exact), the Walsh-Hadamard butterflies stage by
 *           stage (a + b and a - b, the first three stages inside one
 *           8-float register), the 1/sqrt(L) scaling, the Kac step;
 *   lut:    table entry m of a group = ((0 + v3) + v2) + v1) + v0 over the
 *           bits of m from the highest down, as the scalar builder (the
 *           lanes whose bit is clear add +0.0f, which changes no partial sum
 *           since none of them can be -0.0f);
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
void ann_rbq_lut_avx2(const float *rq, size_t groups, float *lut);
float ann_rbq_absmax_avx2(const float *rq, size_t dp);
void ann_rbq_quant_avx2(const float *rq, size_t dp, float inv, int16_t *qi);

/* The encoder's scale search (rabitq.c, quantise_ex), callable for
 * tests/test_rabitq.c, which checks it against the first version: k (n
 * bytes) = the levels of extended RaBitQ for magnitudes a (n >= 1 values,
 * >= 0, finite) at be = 1..7 extra bits; scratch of
 * ann_rbq_quantise_ex_bytes(n, be) bytes, 8-byte aligned. */
size_t ann_rbq_quantise_ex_bytes(size_t n, unsigned be);
void ann_rbq_quantise_ex(const double *a, size_t n, unsigned be, uint8_t *k, void *scratch);

/* The last step of ann_rbq_estimate_split, from A and E and the factors
 * (rn, fip, tan: floats), per record in double, the operations of rabitq.c's
 * scalar loop in its order (no contraction: C11 mode):
 *   yq = (hi A + delta E) - yconst,  ip = fip yq,
 *   est = (float)((rn rn + qn2) - 2 ip)  (L2)  or  (float)-(cq + ip)  (IP),
 *   width = (float)((wscale rn) tan)  (when width is not NULL);
 * the AVX-512 form 8 records a step, bit for bit the scalar one. */
typedef struct ann_rbq_fin {
	double hi, delta, yconst, qn2, cq, wscale;
	bool l2;
} ann_rbq_fin;

void ann_rbq_finish_avx512(const ann_rbq_fin *f, const float *A, const int64_t *E, const float *rn, const float *fip,
			   const float *tan, size_t n, float *est, float *width);
size_t ann_rbq_finish_avx2(const ann_rbq_fin *f, const float *A, const int64_t *E, const float *rn, const float *fip,
			   const float *tan, size_t n, float *est, float *width);

/* The ex plane's tables for 2-bit codes (be 1), as ann_rbq_scan.elut. */
void ann_rbq_elut_avx512(const int16_t *qi, size_t groups, int32_t *elut);

void ann_rbq_scan_scalar(const ann_rbq_scan *a, const uint8_t *codes, size_t n, float *A, int64_t *E);
void ann_rbq_scan_avx2(const ann_rbq_scan *a, const uint8_t *codes, size_t n, float *A, int64_t *E);
void ann_rbq_scan_avx512(const ann_rbq_scan *a, const uint8_t *codes, size_t n, float *A, int64_t *E);

#endif /* ANN_RABITQ_KERNELS_H */
