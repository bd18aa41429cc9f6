/* SPDX-License-Identifier: MIT */
/*
 * cblock_kernels.h: private to cblock.c and cblock_avx2.c. The widening of
 * the slim records' factors (CBLOCK_FLAG_F16) for round 1, in a scalar
 * reference (cblock.c) and an AVX2 form (cblock_avx2.c, built with -mavx2,
 * called only when the CPU probe of distance.c says AVX2 runs here): for
 * each of n records of `stride` bytes whose 5 factor bytes start at offset
 * p (f16 |r|, f16 f_ip, u8 tan in 1/64 units),
 *   rn[i], fip[i] = the f16 widened as block_f16_to_f32 does (exact, every
 *                   bit pattern: zero, subnormal, normal, inf, NaN payload),
 *   tan[i]        = the tan in 1/256 units (t8 * 4; 255, saturated: 65535),
 * all three as floats. The AVX2 form does the same integer and float
 * operations on 8 records at a time, so the two agree bit for bit
 * (tests/test_codes.c). Neither reads outside the factor bytes.
 */
#ifndef ANN_CBLOCK_KERNELS_H
#define ANN_CBLOCK_KERNELS_H

#include "common.h"

void cblock_factors_scalar(const uint8_t *src, size_t stride, size_t p, size_t n, float *rn, float *fip, float *tan);
void cblock_factors_avx2(const uint8_t *src, size_t stride, size_t p, size_t n, float *rn, float *fip, float *tan);

#endif /* ANN_CBLOCK_KERNELS_H */
