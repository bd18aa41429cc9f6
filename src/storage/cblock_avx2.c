/* SPDX-License-Identifier: MIT */
/*
 * cblock_avx2.c: the AVX2 form of the slim factors' widening
 * (cblock_kernels.h), built with -mavx2. 8 records per step: two 32-bit
 * loads per record (bytes p..p+3: |r| and f_ip; p+1..p+4: tan in the top
 * byte) into 8 lanes, then block_f16_to_f32's branch-free conversion lane by
 * lane (the subnormal lanes through an exact int -> float conversion and a
 * multiply by 2^-24, as the scalar form), and the tan scaled in integers.
 * The last n % 8 records go through the scalar form. Measured: round 1 of
 * a codes search, docs/BENCHMARKS.md "Round 1 CPU".
 */
#include "cblock_kernels.h"

#include <immintrin.h>
#include <string.h>

/* block_f16_to_f32 of the low 16 bits of each lane (the high bits zero). */
static inline __m256 f16x8(__m256i h)
{
	const __m256i em = _mm256_and_si256(h, _mm256_set1_epi32(0x7fff));
	const __m256i normal = _mm256_add_epi32(_mm256_slli_epi32(em, 13), _mm256_set1_epi32((127 - 15) << 23));
	const __m256i sub = _mm256_castps_si256(_mm256_mul_ps(_mm256_cvtepi32_ps(em), _mm256_set1_ps(0x1p-24f)));
	const __m256i is_sub = _mm256_cmpgt_epi32(_mm256_set1_epi32(0x0400), em);
	const __m256i is_special = _mm256_cmpgt_epi32(em, _mm256_set1_epi32(0x7bff));
	__m256i bits = _mm256_blendv_epi8(normal, sub, is_sub);
	bits = _mm256_or_si256(bits, _mm256_and_si256(is_special, _mm256_set1_epi32(0x7f800000)));
	bits = _mm256_or_si256(bits, _mm256_slli_epi32(_mm256_and_si256(h, _mm256_set1_epi32(0x8000)), 16));
	return _mm256_castsi256_ps(bits);
}

static inline int ld32(const uint8_t *p)
{
	int v;
	memcpy(&v, p, 4);
	return v;
}

void cblock_factors_avx2(const uint8_t *src, size_t stride, size_t p, size_t n, float *rn, float *fip, float *tan)
{
	const __m256i lo16 = _mm256_set1_epi32(0xffff), sat = _mm256_set1_epi32(255);
	size_t i = 0;
	for (; i + 8 <= n; i += 8) {
		const uint8_t *f = src + i * stride + p;
		__m256i w = _mm256_setr_epi32(ld32(f), ld32(f + stride), ld32(f + 2 * stride), ld32(f + 3 * stride),
					      ld32(f + 4 * stride), ld32(f + 5 * stride), ld32(f + 6 * stride),
					      ld32(f + 7 * stride));
		__m256i t = _mm256_setr_epi32(ld32(f + 1), ld32(f + 1 + stride), ld32(f + 1 + 2 * stride),
					      ld32(f + 1 + 3 * stride), ld32(f + 1 + 4 * stride), ld32(f + 1 + 5 * stride),
					      ld32(f + 1 + 6 * stride), ld32(f + 1 + 7 * stride));
		_mm256_storeu_ps(rn + i, f16x8(_mm256_and_si256(w, lo16)));
		_mm256_storeu_ps(fip + i, f16x8(_mm256_srli_epi32(w, 16)));
		__m256i t8 = _mm256_srli_epi32(t, 24);
		__m256i t16 = _mm256_blendv_epi8(_mm256_slli_epi32(t8, 2), lo16, _mm256_cmpeq_epi32(t8, sat));
		_mm256_storeu_ps(tan + i, _mm256_cvtepi32_ps(t16));
	}
	if (i < n)
		cblock_factors_scalar(src + i * stride, stride, p, n - i, rn + i, fip + i, tan + i);
}
