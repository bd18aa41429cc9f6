/* SPDX-License-Identifier: MIT */
/*
 * rabitq_ex_avx2.h: the ex plane of the RaBitQ estimate kernels for 3 and
 * more bits a dim (be >= 2), used by rabitq_avx2.c (built with -mavx2;
 * include it nowhere else). 16 dims (2 be bytes) per step: the bytes are broadcast to
 * both 128-bit halves; vpshufb places in 16-bit lane j the two bytes holding
 * dim j's be bits, a multiply by 2^(16 - be - shift_j) left-aligns them, a
 * shift right by 16 - be leaves e_j; vpmaddwd with qi sums pairs into 32-bit
 * lanes (each lane < 2 * 127 * 2047 * dp / 16 < 2^31 for dp <= 65536), and
 * the lanes are added in int64 at the end: exact, as the scalar kernel.
 */
#ifndef ANN_RABITQ_EX_AVX2_H
#define ANN_RABITQ_EX_AVX2_H

#include <immintrin.h>

#include "rabitq_kernels.h"

typedef struct rbq_ex {
	__m256i shuf, mul;
	__m128i rshift;
	size_t steps, step_bytes;
} rbq_ex;

static inline rbq_ex rbq_ex_setup(const ann_rbq_scan *a)
{
	const unsigned be = a->be ? a->be : 1;
	/* per-lane byte shuffle and left-align multiplier */
	uint8_t shuf[32];
	uint16_t mul[16];
	for (unsigned j = 0; j < 16; j++) {
		unsigned bit = j * be, b = bit / 8, sh = bit % 8;
		unsigned lane = j % 8, half = j / 8;
		shuf[half * 16 + lane * 2] = (uint8_t)b;
		shuf[half * 16 + lane * 2 + 1] = (uint8_t)(b + 1 < 16 ? b + 1 : 15);
		mul[j] = (uint16_t)(1u << (16 - be - sh));
	}
	rbq_ex x;
	x.shuf = _mm256_loadu_si256((const __m256i *)(const void *)shuf);
	x.mul = _mm256_loadu_si256((const __m256i *)(const void *)mul);
	x.rshift = _mm_cvtsi32_si128((int)(16 - be));
	x.steps = a->dp / 16;
	x.step_bytes = 2 * (size_t)a->be;
	return x;
}

/* E of one record (a->be > 0). */
static inline int64_t rbq_ex_row(const ann_rbq_scan *a, const rbq_ex *x, const uint8_t *rec)
{
	const uint8_t *ep = rec + a->sign_bytes;
	__m256i iacc = _mm256_setzero_si256();
	for (size_t t = 0; t < x->steps; t++) {
		const uint8_t *p = ep + t * x->step_bytes;
		__m128i raw = a->be <= 4 ? _mm_loadl_epi64((const __m128i *)(const void *)p)
					 : _mm_loadu_si128((const __m128i *)(const void *)p);
		__m256i v = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(raw), x->shuf);
		v = _mm256_srl_epi16(_mm256_mullo_epi16(v, x->mul), x->rshift);
		__m256i qv = _mm256_loadu_si256((const __m256i *)(const void *)(a->qi + 16 * t));
		iacc = _mm256_add_epi32(iacc, _mm256_madd_epi16(v, qv));
	}
	int32_t lanes[8];
	_mm256_storeu_si256((__m256i *)(void *)lanes, iacc);
	int64_t e = 0;
	for (int l = 0; l < 8; l++)
		e += lanes[l];
	return e;
}

#endif /* ANN_RABITQ_EX_AVX2_H */
