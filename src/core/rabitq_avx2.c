/* SPDX-License-Identifier: MIT */
/*
 * rabitq_avx2.c: the AVX2 form of the RaBitQ estimate kernels
 * (rabitq_kernels.h), built with -mavx2 -mfma. Called by rabitq.c only when
 * the CPU probe of distance.c says AVX2 runs here.
 *
 * Sign plane: 8 codes at a time without gathers (scan8_sign); the last n % 8
 * codes one at a time, 8 groups (32 dims, one 32-bit word of the plane) per
 * step; the 8 nibbles become 8 table indices 16 g + nibble, fetched with one gather
 * and added to 8 lane accumulators (lane l: groups l mod 8), the same float
 * additions in the same order as the scalar kernel. A last partial step (dp
 * is a multiple of 16, so 4 groups) uses a masked gather; the masked lanes
 * add 0.0f, which leaves them unchanged.
 *
 * Ex plane: rabitq_ex_avx2.h.
 *
 * Query set-up: the rotation, the group tables and the quantised query in
 * the same float operations as rabitq.c (rabitq_kernels.h). Measured:
 * bench/bench_rabitq.c --speed, column "prepare us".
 */
#include "rabitq_ex_avx2.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

static inline float lanes_sum(__m256 v)
{
	/* ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)), as the scalar kernel */
	__m128 t = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	__m128 u = _mm_add_ps(t, _mm_movehl_ps(t, t)); /* (t0+t2, t1+t3) */
	__m128 w = _mm_add_ss(u, _mm_shuffle_ps(u, u, 1));
	return _mm_cvtss_f32(w);
}

/* The sign plane of 8 codes at once, without gathers: lane c is code c, and
 * for each group the 8 nibbles index the group's 16-entry table, held as two
 * 8-float halves (vpermps on each, blended on the nibble's bit 3). acc[l]
 * holds, for the 8 codes, what lane l of the one-code kernel holds (groups l
 * mod 8, in the same order, 0.0f added where the last step has no group), and
 * the final sum pairs them as lanes_sum does: the same float additions, so
 * the same bits. Gathers are slow on the CPUs without AVX-512 that this path
 * serves (docs/BENCHMARKS.md "This machine has no AVX-512"). */
static void scan8_sign(const ann_rbq_scan *a, const uint8_t *codes, float *out)
{
	const size_t rb = a->rec_bytes, groups = a->groups;
	const __m256i nib = _mm256_set1_epi32(15);
	__m256 acc[8];
	for (int l = 0; l < 8; l++)
		acc[l] = _mm256_setzero_ps();
	for (size_t s = 0; 8 * s < groups; s++) {
		uint32_t w[8];
		for (int c = 0; c < 8; c++)
			memcpy(&w[c], codes + (size_t)c * rb + 4 * s, 4); /* as the one-code kernel reads */
		__m256i words = _mm256_loadu_si256((const __m256i *)w);
		size_t lim = groups - 8 * s < 8 ? groups - 8 * s : 8;
		for (size_t l = 0; l < 8; l++) {
			if (l >= lim) {
				acc[l] = _mm256_add_ps(acc[l], _mm256_setzero_ps());
				continue;
			}
			const float *t = a->lut + 16 * (8 * s + l);
			__m256i idx = _mm256_and_si256(_mm256_srli_epi32(words, (int)(4 * l)), nib);
			__m256 lo = _mm256_permutevar8x32_ps(_mm256_loadu_ps(t), idx);
			__m256 hi = _mm256_permutevar8x32_ps(_mm256_loadu_ps(t + 8), idx);
			__m256 pick = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));
			acc[l] = _mm256_add_ps(acc[l], _mm256_blendv_ps(lo, hi, pick));
		}
	}
	__m256 r = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[4]), _mm256_add_ps(acc[2], acc[6])),
				 _mm256_add_ps(_mm256_add_ps(acc[1], acc[5]), _mm256_add_ps(acc[3], acc[7])));
	_mm256_storeu_ps(out, r);
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

	size_t i8 = n - n % 8;
	for (size_t i = 0; i < i8; i += 8) {
		scan8_sign(a, codes + i * a->rec_bytes, A + i);
		for (size_t c = i; c < i + 8; c++)
			E[c] = be ? rbq_ex_row(a, &ex, codes + c * a->rec_bytes) : 0;
	}
	for (size_t i = i8; i < n; i++) {
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

/* ---- query set-up (rabitq_kernels.h: the same operations as rabitq.c) ---- */

/* lane masks of the 8 coordinates whose flip bits are the byte b */
static inline __m256 flip_mask(unsigned b)
{
	const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
	__m256i on = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)b), bit), bit);
	return _mm256_castsi256_ps(_mm256_and_si256(on, _mm256_set1_epi32(INT32_MIN)));
}

static void fwht_avx2(float *x, size_t n)
{
	for (size_t i = 0; i < n; i += 8) {
		__m256 v = _mm256_loadu_ps(x + i);
		/* h = 1, 2, 4: low lanes take self + partner, high lanes partner - self */
		__m256 p = _mm256_permute_ps(v, _MM_SHUFFLE(2, 3, 0, 1));
		v = _mm256_blend_ps(_mm256_add_ps(v, p), _mm256_sub_ps(p, v), 0xAA);
		p = _mm256_permute_ps(v, _MM_SHUFFLE(1, 0, 3, 2));
		v = _mm256_blend_ps(_mm256_add_ps(v, p), _mm256_sub_ps(p, v), 0xCC);
		p = _mm256_permute2f128_ps(v, v, 0x01);
		v = _mm256_blend_ps(_mm256_add_ps(v, p), _mm256_sub_ps(p, v), 0xF0);
		_mm256_storeu_ps(x + i, v);
	}
	for (size_t h = 8; h < n; h *= 2)
		for (size_t i = 0; i < n; i += 2 * h)
			for (size_t j = i; j < i + h; j += 8) {
				__m256 a = _mm256_loadu_ps(x + j), b = _mm256_loadu_ps(x + j + h);
				_mm256_storeu_ps(x + j, _mm256_add_ps(a, b));
				_mm256_storeu_ps(x + j + h, _mm256_sub_ps(a, b));
			}
	const __m256 s = _mm256_set1_ps((float)(1.0 / sqrt((double)n)));
	for (size_t i = 0; i < n; i += 8)
		_mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), s));
}

void ann_rbq_rotate_avx2(const ann_rbq_rot *r, const float *v, float *out)
{
	const size_t dp = r->dp, L = r->L, h = dp / 2;
	const uint8_t *sb = (const uint8_t *)r->signs; /* little-endian words: byte k holds bits 8k..8k+7 */
	memcpy(out, v, r->dim * sizeof(float));
	for (size_t i = r->dim; i < dp; i++)
		out[i] = 0.0f;
	const __m256 kac = _mm256_set1_ps((float)(1.0 / sqrt(2.0)));
	for (unsigned k = 0; k < r->rounds; k++) {
		const uint8_t *rb = sb + (size_t)k * dp / 8;
		for (size_t i = 0; i < dp; i += 8)
			_mm256_storeu_ps(out + i, _mm256_xor_ps(_mm256_loadu_ps(out + i), flip_mask(rb[i / 8])));
		if (L == dp) {
			fwht_avx2(out, dp);
			continue;
		}
		fwht_avx2(out + ((k & 1) ? dp - L : 0), L);
		for (size_t i = 0; i < h; i += 8) {
			__m256 a = _mm256_loadu_ps(out + i), b = _mm256_loadu_ps(out + i + h);
			_mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_add_ps(a, b), kac));
			_mm256_storeu_ps(out + i + h, _mm256_mul_ps(_mm256_sub_ps(a, b), kac));
		}
	}
}

void ann_rbq_lut_avx2(const float *rq, size_t groups, float *lut)
{
	/* lane m (entries 0..7, then 8..15) keeps v_t where bit t of m is set */
	const __m256 m0 = _mm256_castsi256_ps(_mm256_setr_epi32(0, -1, 0, -1, 0, -1, 0, -1));
	const __m256 m1 = _mm256_castsi256_ps(_mm256_setr_epi32(0, 0, -1, -1, 0, 0, -1, -1));
	const __m256 m2 = _mm256_castsi256_ps(_mm256_setr_epi32(0, 0, 0, 0, -1, -1, -1, -1));
	const __m256 zero = _mm256_setzero_ps();
	for (size_t g = 0; g < groups; g++) {
		const float *v = rq + 4 * g;
		__m256 v0 = _mm256_and_ps(_mm256_set1_ps(v[0]), m0), v1 = _mm256_and_ps(_mm256_set1_ps(v[1]), m1);
		__m256 v2 = _mm256_and_ps(_mm256_set1_ps(v[2]), m2);
		__m256 lo = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(zero, v2), v1), v0);
		__m256 hi = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(_mm256_add_ps(zero, _mm256_set1_ps(v[3])), v2), v1),
					  v0);
		_mm256_storeu_ps(lut + 16 * g, lo);
		_mm256_storeu_ps(lut + 16 * g + 8, hi);
	}
}

float ann_rbq_absmax_avx2(const float *rq, size_t dp)
{
	const __m256 abs = _mm256_castsi256_ps(_mm256_set1_epi32(INT32_MAX));
	__m256 m = _mm256_setzero_ps();
	for (size_t j = 0; j < dp; j += 8)
		m = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(rq + j), abs), m);
	float l[8];
	_mm256_storeu_ps(l, m);
	float r = 0;
	for (int i = 0; i < 8; i++)
		r = l[i] > r ? l[i] : r;
	return r;
}

void ann_rbq_quant_avx2(const float *rq, size_t dp, float inv, int16_t *qi)
{
	const __m256i hi = _mm256_set1_epi32(2047), lo = _mm256_set1_epi32(-2047);
	const __m256 vinv = _mm256_set1_ps(inv);
	for (size_t j = 0; j < dp; j += 16) {
		/* cvtps rounds to nearest even, as lrintf in the default mode */
		__m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(rq + j), vinv));
		__m256i b = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(rq + j + 8), vinv));
		a = _mm256_max_epi32(_mm256_min_epi32(a, hi), lo);
		b = _mm256_max_epi32(_mm256_min_epi32(b, hi), lo);
		__m256i p = _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), _MM_SHUFFLE(3, 1, 2, 0));
		_mm256_storeu_si256((__m256i *)(void *)(qi + j), p);
	}
}

double ann_rbq_resid_avx2(const float *q, const float *c, size_t n, float *res)
{
	__m256d acc = _mm256_setzero_pd();
	size_t j = 0;
	for (; j + 4 <= n; j += 4) {
		__m128 qv = _mm_loadu_ps(q + j), cv = _mm_loadu_ps(c + j);
		_mm_storeu_ps(res + j, _mm_sub_ps(qv, cv));
		__m256d d = _mm256_sub_pd(_mm256_cvtps_pd(qv), _mm256_cvtps_pd(cv));
		acc = _mm256_add_pd(acc, _mm256_mul_pd(d, d));
	}
	double l[4];
	_mm256_storeu_pd(l, acc);
	for (; j < n; j++) {
		res[j] = q[j] - c[j];
		double d = (double)q[j] - c[j];
		l[j & 3] += d * d;
	}
	return (l[0] + l[1]) + (l[2] + l[3]);
}

void ann_rbq_dots_avx2(const float *q, const float *c, size_t n, double *qq, double *qc)
{
	__m256d a = _mm256_setzero_pd(), b = _mm256_setzero_pd();
	size_t j = 0;
	for (; j + 4 <= n; j += 4) {
		__m256d qv = _mm256_cvtps_pd(_mm_loadu_ps(q + j)), cv = _mm256_cvtps_pd(_mm_loadu_ps(c + j));
		a = _mm256_add_pd(a, _mm256_mul_pd(qv, qv));
		b = _mm256_add_pd(b, _mm256_mul_pd(qv, cv));
	}
	double la[4], lb[4];
	_mm256_storeu_pd(la, a);
	_mm256_storeu_pd(lb, b);
	for (; j < n; j++) {
		la[j & 3] += (double)q[j] * q[j];
		lb[j & 3] += (double)q[j] * c[j];
	}
	*qq = (la[0] + la[1]) + (la[2] + la[3]);
	*qc = (lb[0] + lb[1]) + (lb[2] + lb[3]);
}

double ann_rbq_sum_avx2(const float *r, size_t n)
{
	__m256d acc = _mm256_setzero_pd();
	size_t j = 0;
	for (; j + 4 <= n; j += 4)
		acc = _mm256_add_pd(acc, _mm256_cvtps_pd(_mm_loadu_ps(r + j)));
	double l[4];
	_mm256_storeu_pd(l, acc);
	for (; j < n; j++)
		l[j & 3] += r[j];
	return (l[0] + l[1]) + (l[2] + l[3]);
}

/* The last step of the split estimate, 4 records a step in double: rabitq.c's
 * scalar operations in their order (no contraction), so the same floats. The
 * whole steps only: returns the records done, the caller's scalar loop the rest. */
size_t ann_rbq_finish_avx2(const ann_rbq_fin *f, const float *A, const int64_t *E, const float *rn, const float *fip,
			   const float *tan, size_t n, float *est, float *width)
{
	const __m256d hi = _mm256_set1_pd(f->hi), delta = _mm256_set1_pd(f->delta), yc = _mm256_set1_pd(f->yconst);
	const __m256d qn2 = _mm256_set1_pd(f->qn2), cq = _mm256_set1_pd(f->cq), ws = _mm256_set1_pd(f->wscale);
	const __m256d two = _mm256_set1_pd(2.0), sign = _mm256_set1_pd(-0.0);
	size_t i = 0;
	for (; i + 4 <= n; i += 4) {
		__m256d a = _mm256_cvtps_pd(_mm_loadu_ps(A + i));
		__m256d e = _mm256_setr_pd((double)E[i], (double)E[i + 1], (double)E[i + 2], (double)E[i + 3]);
		__m256d r = _mm256_cvtps_pd(_mm_loadu_ps(rn + i));
		__m256d fp = _mm256_cvtps_pd(_mm_loadu_ps(fip + i));
		__m256d yq = _mm256_sub_pd(_mm256_add_pd(_mm256_mul_pd(hi, a), _mm256_mul_pd(delta, e)), yc);
		__m256d ip = _mm256_mul_pd(fp, yq);
		__m256d v = f->l2 ? _mm256_sub_pd(_mm256_add_pd(_mm256_mul_pd(r, r), qn2), _mm256_mul_pd(two, ip))
				  : _mm256_xor_pd(_mm256_add_pd(cq, ip), sign); /* negation, as C's unary minus */
		_mm_storeu_ps(est + i, _mm256_cvtpd_ps(v));
		if (width) {
			__m256d t = _mm256_cvtps_pd(_mm_loadu_ps(tan + i));
			_mm_storeu_ps(width + i, _mm256_cvtpd_ps(_mm256_mul_pd(_mm256_mul_pd(ws, r), t)));
		}
	}
	return i;
}
