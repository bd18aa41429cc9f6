/* SPDX-License-Identifier: MIT */
/*
 * rabitq_kernels.h: private to rabitq.c, rabitq_avx2.c and rabitq_avx512.c.
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
 *          extra-bits code of dim j, be bits, LSB-first bit stream).
 *
 * Records may be read up to 6 bytes past their ex plane: the 10 factor bytes
 * that close every record are there, so no read leaves the record.
 */
#ifndef ANN_RABITQ_KERNELS_H
#define ANN_RABITQ_KERNELS_H

#include "common.h"

typedef struct ann_rbq_scan {
	const float *lut;  /* groups * 16 floats */
	const int16_t *qi; /* dp quantised query coordinates, |qi| <= 2047 */
	size_t groups;     /* dp / 4 */
	size_t dp;         /* padded dim, a multiple of 16 */
	unsigned be;       /* extra bits per dim, 0..7 */
	size_t sign_bytes; /* dp / 8 */
	size_t rec_bytes;  /* one record */
} ann_rbq_scan;

void ann_rbq_scan_scalar(const ann_rbq_scan *a, const uint8_t *codes, size_t n, float *A, int64_t *E);
void ann_rbq_scan_avx2(const ann_rbq_scan *a, const uint8_t *codes, size_t n, float *A, int64_t *E);
void ann_rbq_scan_avx512(const ann_rbq_scan *a, const uint8_t *codes, size_t n, float *A, int64_t *E);

#endif /* ANN_RABITQ_KERNELS_H */
