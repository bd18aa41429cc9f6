/* SPDX-License-Identifier: MIT */
/*
 * rabitq_avx2.c: the AVX2 form of the RaBitQ estimate kernels
 * (rabitq_kernels.h), built with -mavx2 -mfma. Called by rabitq.c only when
 * the CPU probe of distance.c says AVX2 runs here.
 *
 * Sign plane: 8 groups (32 dims, one 32-bit word of the plane) per step; the
 * 8 nibbles become 8 table indices 16 g + nibble, fetched with one gather
 * and added to 8 lane accumulators (lane l: groups l mod 8), the same float
 * additions in the same order as the scalar kernel. A last partial step (dp
 * is a multiple of 16, so 4 groups) uses a masked gather; the masked lanes
 * add 0.0f, which leaves them unchanged.
 *
 * Ex plane: 16 dims (2 be bytes) per step. The bytes are broadcast to both
 * 128-bit halves; vpshufb places in 16-bit lane j the two bytes holding dim
 * j's be bits, a multiply by 2^(16 - be - shift_j) left-aligns them, a shift
 * right by 16 - be leaves e_j; vpmaddwd with qi sums pairs into 32-bit lanes
 * (each lane < 2 * 127 * 2047 * dp / 16 < 2^31 for dp <= 65536), and the
 * lanes are added in int64 at the end: exact, as the scalar kernel.
 */
#include "rabitq_kernels.h"

#include <immintrin.h>

static inline float lanes_sum(__m256 v)
{
	/* ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)), as the scalar kernel */
	__m128 t = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	__m128 u = _mm_add_ps(t, _mm_movehl_ps(t, t)); /* (t0+t2, t1+t3) */
	__m128 w = _mm_add_ss(u, _mm_shuffle_ps(u, u, 1));
	return _mm_cvtss_f32(w);
}

void ann_rbq_scan_avx2(const ann_rbq_scan *a, const uint8_t *codes, size_t n, float *A, int64_t *E)
{
	const size_t full = a->groups / 8, tail = a->groups % 8;
	const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
	const __m256i nib = _mm256_set1_epi32(15);
	const __m256i lane16 = _mm256_setr_epi32(0, 16, 32, 48, 64, 80, 96, 112);
	const __m256 tailmask = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32((int)tail),
								       _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
	const unsigned be = a->be;
	/* per-lane byte shuffle and left-align multiplier of the ex plane */
	uint8_t shuf[32];
	uint16_t mul[16];
	for (unsigned j = 0; j < 16; j++) {
		unsigned bit = j * (be ? be : 1), b = bit / 8, sh = bit % 8;
		unsigned lane = j % 8, half = j / 8;
		shuf[half * 16 + lane * 2] = (uint8_t)b;
		shuf[half * 16 + lane * 2 + 1] = (uint8_t)(b + 1 < 16 ? b + 1 : 15);
		mul[j] = (uint16_t)(1u << (16 - (be ? be : 1) - sh));
	}
	const __m256i vshuf = _mm256_loadu_si256((const __m256i *)(const void *)shuf);
	const __m256i vmul = _mm256_loadu_si256((const __m256i *)(const void *)mul);
	const __m128i rshift = _mm_cvtsi32_si128((int)(16 - (be ? be : 1)));
	const size_t ex_steps = a->dp / 16, ex_step_bytes = 2 * (size_t)be;

	for (size_t i = 0; i < n; i++) {
		const uint8_t *rec = codes + i * a->rec_bytes;
		__m256 acc = _mm256_setzero_ps();
		size_t s = 0;
		for (; s < full; s++) {
			uint32_t w;
			memcpy(&w, rec + 4 * s, 4);
			__m256i idx = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)w), shifts), nib);
			idx = _mm256_add_epi32(idx, _mm256_add_epi32(lane16, _mm256_set1_epi32((int)(128 * s))));
			acc = _mm256_add_ps(acc, _mm256_i32gather_ps(a->lut, idx, 4));
		}
		if (tail) {
			uint32_t w;
			memcpy(&w, rec + 4 * s, 4); /* reads 2 bytes past the plane, inside the record */
			__m256i idx = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)w), shifts), nib);
			idx = _mm256_add_epi32(idx, _mm256_add_epi32(lane16, _mm256_set1_epi32((int)(128 * s))));
			acc = _mm256_add_ps(acc, _mm256_mask_i32gather_ps(_mm256_setzero_ps(), a->lut, idx, tailmask, 4));
		}
		A[i] = lanes_sum(acc);
		if (!be) {
			E[i] = 0;
			continue;
		}
		const uint8_t *ep = rec + a->sign_bytes;
		__m256i iacc = _mm256_setzero_si256();
		for (size_t t = 0; t < ex_steps; t++) {
			const uint8_t *p = ep + t * ex_step_bytes;
			__m128i raw = be <= 4 ? _mm_loadl_epi64((const __m128i *)(const void *)p)
					      : _mm_loadu_si128((const __m128i *)(const void *)p);
			__m256i v = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(raw), vshuf);
			v = _mm256_srl_epi16(_mm256_mullo_epi16(v, vmul), rshift);
			__m256i qv = _mm256_loadu_si256((const __m256i *)(const void *)(a->qi + 16 * t));
			iacc = _mm256_add_epi32(iacc, _mm256_madd_epi16(v, qv));
		}
		int32_t lanes[8];
		_mm256_storeu_si256((__m256i *)(void *)lanes, iacc);
		int64_t e = 0;
		for (int l = 0; l < 8; l++)
			e += lanes[l];
		E[i] = e;
	}
}
