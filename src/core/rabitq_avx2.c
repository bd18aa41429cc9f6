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
 * Ex plane: rabitq_ex_avx2.h.
 */
#include "rabitq_ex_avx2.h"

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
	const rbq_ex ex = rbq_ex_setup(a);

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
		E[i] = rbq_ex_row(a, &ex, rec);
	}
}
