/* SPDX-License-Identifier: MIT */
/*
 * rabitq_avx512.c: the AVX-512 form of the RaBitQ estimate kernels
 * (rabitq_kernels.h), built with -mavx512f -mavx512bw -mavx512vl
 * -mavx512dq -mavx2. Called by rabitq.c only when the CPU probe of
 * distance.c says AVX-512 runs here.
 *
 * Sign plane: 16 records at a time, one per 32-bit lane. One gather fetches
 * from each record the 32-bit word of 8 groups; for each of the 8 groups the
 * lanes' nibbles index the group's 16-entry table, which is exactly one zmm
 * register, with one vpermps (no gather per group, as the AVX2 form needs).
 * Group g is added to accumulator g mod 8, in group order, and the 8
 * accumulators are reduced as ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)): the same
 * float additions in the same order as the scalar kernel, so the three forms
 * agree bit for bit (tests/test_rabitq.c). A last partial step (dp is a
 * multiple of 16, so 4 groups) reads the same 2 bytes past the sign plane,
 * inside the record, as the AVX2 form. The last block of fewer than 16
 * records masks the gather and the store. Measured: bench/bench_rabitq.c.
 *
 * The last step of the split estimate (ann_rbq_finish_avx512): 8 records
 * a step in double, rabitq.c's scalar operations in their order.
 *
 * Ex plane: rabitq_ex_avx2.h, per record; for 2-bit codes (one ex bit a
 * dim) as the sign plane, 16 records a step: the same gathers (of the ex
 * plane's words, the partial step reading 2 bytes past the plane) index
 * integer tables of the quantised query's group sums (ann_rbq_elut_avx512,
 * built by ann_rbq_query_prepare), added in int32: exact, so equal to the
 * per-record sum.
 */
#include "rabitq_ex_avx2.h"

#include <immintrin.h>

void ann_rbq_scan_avx512(const ann_rbq_scan *a, const uint8_t *codes, size_t n, float *A, int64_t *E)
{
	const size_t full = a->groups / 8, tail = a->groups % 8;
	const __m512i nib = _mm512_set1_epi32(15);
	const __m512i rows = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
						_mm512_set1_epi32((int)a->rec_bytes));
	const rbq_ex ex = rbq_ex_setup(a);

	for (size_t i0 = 0; i0 < n; i0 += 16) {
		const size_t cnt = n - i0 < 16 ? n - i0 : 16;
		const __mmask16 m = (__mmask16)((1u << cnt) - 1u);
		const uint8_t *base = codes + i0 * a->rec_bytes;
		__m512 acc[8];
		for (int t = 0; t < 8; t++)
			acc[t] = _mm512_setzero_ps();
		for (size_t s = 0; s < full + (tail ? 1 : 0); s++) {
			__m512i w = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, rows, base + 4 * s, 1);
			const size_t groups = s < full ? 8 : tail;
			const float *lut = a->lut + 128 * s;
			for (size_t t = 0; t < groups; t++) {
				__m512i idx = _mm512_and_si512(_mm512_srl_epi32(w, _mm_cvtsi32_si128((int)(4 * t))), nib);
				acc[t] = _mm512_add_ps(acc[t], _mm512_permutexvar_ps(idx, _mm512_loadu_ps(lut + 16 * t)));
			}
		}
		__m512 t0 = _mm512_add_ps(acc[0], acc[4]), t1 = _mm512_add_ps(acc[1], acc[5]);
		__m512 t2 = _mm512_add_ps(acc[2], acc[6]), t3 = _mm512_add_ps(acc[3], acc[7]);
		_mm512_mask_storeu_ps(A + i0, m, _mm512_add_ps(_mm512_add_ps(t0, t2), _mm512_add_ps(t1, t3)));
		if (a->elut) {
			/* 2-bit codes: the ex plane is one bit a dim, summed like the sign
			 * plane through integer tables (exact in any order) */
			__m512i eacc = _mm512_setzero_si512();
			const uint8_t *eb = base + a->sign_bytes;
			for (size_t s = 0; s < full + (tail ? 1 : 0); s++) {
				__m512i w = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, rows, eb + 4 * s, 1);
				const size_t groups = s < full ? 8 : tail;
				const int32_t *lut = a->elut + 128 * s;
				for (size_t t = 0; t < groups; t++) {
					__m512i idx = _mm512_and_si512(_mm512_srl_epi32(w, _mm_cvtsi32_si128((int)(4 * t))), nib);
					eacc = _mm512_add_epi32(eacc, _mm512_permutexvar_epi32(idx, _mm512_loadu_si512(lut + 16 * t)));
				}
			}
			_mm512_mask_storeu_epi64(E + i0, (__mmask8)m, _mm512_cvtepi32_epi64(_mm512_castsi512_si256(eacc)));
			_mm512_mask_storeu_epi64(E + i0 + 8, (__mmask8)(m >> 8),
						 _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(eacc, 1)));
			continue;
		}
		for (size_t i = 0; i < cnt; i++)
			E[i0 + i] = a->be ? rbq_ex_row(a, &ex, base + i * a->rec_bytes) : 0;
	}
}

void ann_rbq_elut_avx512(const int16_t *qi, size_t groups, int32_t *elut)
{
	/* entry m: qi[4 g] where bit 0 of m is set (lanes 0xaaaa), plus qi[4 g + 1]
	 * where bit 1 is (0xcccc), ... */
	for (size_t g = 0; g < groups; g++) {
		const int16_t *v = qi + 4 * g;
		__m512i t = _mm512_maskz_mov_epi32(0xaaaa, _mm512_set1_epi32(v[0]));
		t = _mm512_mask_add_epi32(t, 0xcccc, t, _mm512_set1_epi32(v[1]));
		t = _mm512_mask_add_epi32(t, 0xf0f0, t, _mm512_set1_epi32(v[2]));
		t = _mm512_mask_add_epi32(t, 0xff00, t, _mm512_set1_epi32(v[3]));
		_mm512_storeu_si512(elut + 16 * g, t);
	}
}

void ann_rbq_finish_avx512(const ann_rbq_fin *f, const float *A, const int64_t *E, const float *rn, const float *fip,
			   const float *tan, size_t n, float *est, float *width)
{
	const __m512d hi = _mm512_set1_pd(f->hi), delta = _mm512_set1_pd(f->delta), yc = _mm512_set1_pd(f->yconst);
	const __m512d qn2 = _mm512_set1_pd(f->qn2), cq = _mm512_set1_pd(f->cq), ws = _mm512_set1_pd(f->wscale);
	const __m512d two = _mm512_set1_pd(2.0), sign = _mm512_set1_pd(-0.0);
	for (size_t i = 0; i < n; i += 8) {
		const __mmask8 m = (__mmask8)(n - i >= 8 ? 0xffu : (1u << (n - i)) - 1u);
		__m512d a = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(m, A + i));
		__m512d e = _mm512_cvtepi64_pd(_mm512_maskz_loadu_epi64(m, E + i));
		__m512d r = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(m, rn + i));
		__m512d fp = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(m, fip + i));
		__m512d yq = _mm512_sub_pd(_mm512_add_pd(_mm512_mul_pd(hi, a), _mm512_mul_pd(delta, e)), yc);
		__m512d ip = _mm512_mul_pd(fp, yq);
		__m512d v = f->l2 ? _mm512_sub_pd(_mm512_add_pd(_mm512_mul_pd(r, r), qn2), _mm512_mul_pd(two, ip))
				  : _mm512_xor_pd(_mm512_add_pd(cq, ip), sign); /* negation, as C's unary minus */
		_mm256_mask_storeu_ps(est + i, m, _mm512_cvtpd_ps(v));
		if (width) {
			__m512d t = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(m, tan + i));
			_mm256_mask_storeu_ps(width + i, m, _mm512_cvtpd_ps(_mm512_mul_pd(_mm512_mul_pd(ws, r), t)));
		}
	}
}
