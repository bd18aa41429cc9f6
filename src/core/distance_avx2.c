/* SPDX-License-Identifier: MIT */
/*
 * distance_avx2.c: the AVX2 + FMA kernel table (ann_kernels_avx2), built with
 * -mavx2 -mfma -mf16c. Nothing here runs unless distance.c's CPU probe says
 * the CPU can; the table is the only symbol this file exports. Float tails
 * use masked loads, u8 tails a shifted 8-byte load, integer tails masked 4-byte words; integer kernels
 * split bytes into 16-bit lanes and sum pairs with vpmaddwd into 32-bit
 * lanes, flushed to 64 bits often enough to stay exact.
 */
#include "distance.h"

#include <immintrin.h>

/* Elements per integer chunk, a multiple of 32. No product exceeds 255^2 in
 * magnitude, so any partial sum within a chunk, and the chunk's horizontal
 * sum, stays below 32768 * 255^2 < 2^31 and a 32-bit lane is exact; chunks
 * add in int64. */
#define INT_CHUNK 32768

static const int32_t mask_table[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

/* A mask selecting the first r lanes, 0 <= r <= 8. */
static inline __m256i tail_mask(size_t r)
{
	return _mm256_loadu_si256((const __m256i *)(mask_table + 8 - r));
}

static inline float hsum_ps(__m256 v)
{
	__m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
	return _mm_cvtss_f32(s);
}

/* The four horizontal sums of a, b, c, e as one vector [sum a, sum b, ...]. */
static inline __m128 hsum4_ps(__m256 a, __m256 b, __m256 c, __m256 e)
{
	__m256 ab = _mm256_hadd_ps(a, b);
	__m256 ce = _mm256_hadd_ps(c, e);
	__m256 abce = _mm256_hadd_ps(ab, ce);
	return _mm_add_ps(_mm256_castps256_ps128(abce), _mm256_extractf128_ps(abce, 1));
}

/* Horizontal sum; exact when the true sum fits in int32 (see INT_CHUNK). */
static inline int32_t hsum_epi32(__m256i v)
{
	__m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
	s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
	s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
	return _mm_cvtsi128_si32(s);
}

/* Eight u8 as floats. */
static inline __m256 load8_u8(const uint8_t *p)
{
	return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

/* The last r < 8 u8 of a vector of d, starting at p, as floats, zeros after.
 * With d >= 8 one 8-byte load ending at the vector's end, shifted down;
 * only tiny vectors copy byte by byte. */
static inline __m256 load_tail_u8(const uint8_t *p, size_t r, size_t d)
{
	uint64_t v = 0;
	if (d >= 8) {
		memcpy(&v, p + r - 8, 8);
		v >>= 8 * (8 - r);
	} else {
		memcpy(&v, p, r);
	}
	return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)v)));
}

static inline __m256 l2_acc(__m256 acc, __m256 x, __m256 q)
{
	__m256 t = _mm256_sub_ps(x, q);
	return _mm256_fmadd_ps(t, t, acc);
}

static inline __m256 ip_acc(__m256 acc, __m256 x, __m256 q)
{
	return _mm256_fmadd_ps(x, q, acc);
}

/* ---- one pair ------------------------------------------------------------ */

#define PAIR_F32(name, ACC)                                                                          \
	static float name(const float *a, const float *b, size_t d)                                  \
	{                                                                                            \
		__m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;                          \
		size_t j = 0;                                                                        \
		for (; j + 32 <= d; j += 32) {                                                       \
			s0 = ACC(s0, _mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j));                \
			s1 = ACC(s1, _mm256_loadu_ps(a + j + 8), _mm256_loadu_ps(b + j + 8));        \
			s2 = ACC(s2, _mm256_loadu_ps(a + j + 16), _mm256_loadu_ps(b + j + 16));      \
			s3 = ACC(s3, _mm256_loadu_ps(a + j + 24), _mm256_loadu_ps(b + j + 24));      \
		}                                                                                    \
		for (; j + 8 <= d; j += 8)                                                           \
			s0 = ACC(s0, _mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j));                \
		if (j < d) {                                                                         \
			__m256i m = tail_mask(d - j);                                                \
			s1 = ACC(s1, _mm256_maskload_ps(a + j, m), _mm256_maskload_ps(b + j, m));    \
		}                                                                                    \
		return hsum_ps(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));         \
	}

PAIR_F32(avx2_l2_f32, l2_acc)
PAIR_F32(avx2_ip_f32, ip_acc)

#define PAIR_F32_U8(name, ACC)                                                                       \
	static float name(const float *q, const uint8_t *x, size_t d)                                \
	{                                                                                            \
		__m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;                          \
		size_t j = 0;                                                                        \
		for (; j + 32 <= d; j += 32) {                                                       \
			s0 = ACC(s0, load8_u8(x + j), _mm256_loadu_ps(q + j));                       \
			s1 = ACC(s1, load8_u8(x + j + 8), _mm256_loadu_ps(q + j + 8));               \
			s2 = ACC(s2, load8_u8(x + j + 16), _mm256_loadu_ps(q + j + 16));             \
			s3 = ACC(s3, load8_u8(x + j + 24), _mm256_loadu_ps(q + j + 24));             \
		}                                                                                    \
		for (; j + 8 <= d; j += 8)                                                           \
			s0 = ACC(s0, load8_u8(x + j), _mm256_loadu_ps(q + j));                       \
		if (j < d)                                                                           \
			s1 = ACC(s1, load_tail_u8(x + j, d - j, d),                                  \
				 _mm256_maskload_ps(q + j, tail_mask(d - j)));                       \
		return hsum_ps(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));         \
	}

PAIR_F32_U8(avx2_l2_f32_u8, l2_acc)
PAIR_F32_U8(avx2_ip_f32_u8, ip_acc)

/* Integer kernels: 32 bytes per step, split into 16-bit halves by unpacking
 * (the pairing of lanes is the same for both operands, which is all a dot
 * product needs), products summed in pairs by vpmaddwd. L2 works on |a - b|
 * computed in u8 as max - min; i8 maps to u8 by flipping the sign bit, which
 * preserves differences. Each step adds four products to every 32-bit lane. */
static inline __m256i l2u8_step(__m256i a, __m256i b)
{
	__m256i z = _mm256_setzero_si256();
	__m256i t = _mm256_sub_epi8(_mm256_max_epu8(a, b), _mm256_min_epu8(a, b));
	__m256i lo = _mm256_unpacklo_epi8(t, z), hi = _mm256_unpackhi_epi8(t, z);
	return _mm256_add_epi32(_mm256_madd_epi16(lo, lo), _mm256_madd_epi16(hi, hi));
}

static inline __m256i l2i8_step(__m256i a, __m256i b)
{
	__m256i sign = _mm256_set1_epi8(-128);
	return l2u8_step(_mm256_xor_si256(a, sign), _mm256_xor_si256(b, sign));
}

static inline __m256i ipu8_step(__m256i a, __m256i b)
{
	__m256i z = _mm256_setzero_si256();
	return _mm256_add_epi32(_mm256_madd_epi16(_mm256_unpacklo_epi8(a, z), _mm256_unpacklo_epi8(b, z)),
				_mm256_madd_epi16(_mm256_unpackhi_epi8(a, z), _mm256_unpackhi_epi8(b, z)));
}

/* Sign extension: a byte unpacked with itself, shifted right arithmetically. */
static inline __m256i ipi8_step(__m256i a, __m256i b)
{
	__m256i alo = _mm256_srai_epi16(_mm256_unpacklo_epi8(a, a), 8);
	__m256i ahi = _mm256_srai_epi16(_mm256_unpackhi_epi8(a, a), 8);
	__m256i blo = _mm256_srai_epi16(_mm256_unpacklo_epi8(b, b), 8);
	__m256i bhi = _mm256_srai_epi16(_mm256_unpackhi_epi8(b, b), 8);
	return _mm256_add_epi32(_mm256_madd_epi16(alo, blo), _mm256_madd_epi16(ahi, bhi));
}

#define LOAD32(p) _mm256_loadu_si256((const __m256i *)(const void *)(p))
#define LOAD_WORDS(p, m) _mm256_maskload_epi32((const int *)(const void *)(p), (m))

static inline int32_t l2_one(int32_t a, int32_t b)
{
	return (a - b) * (a - b);
}

static inline int32_t ip_one(int32_t a, int32_t b)
{
	return a * b;
}

/* Tails: whole 4-byte words by a masked load (zeros, which every step maps
 * to nothing, in the other lanes), the last 0-3 bytes one by one. */
#define PAIR_INT(name, T, STEP, ONE)                                                                 \
	static float name(const T *a, const T *b, size_t d)                                          \
	{                                                                                            \
		int64_t total = 0;                                                                   \
		size_t j = 0;                                                                        \
		while (j < d) {                                                                      \
			size_t end = ANN_MIN(d, j + INT_CHUNK);                                      \
			__m256i s0 = _mm256_setzero_si256(), s1 = s0;                                \
			for (; j + 64 <= end; j += 64) {                                             \
				s0 = _mm256_add_epi32(s0, STEP(LOAD32(a + j), LOAD32(b + j)));       \
				s1 = _mm256_add_epi32(s1, STEP(LOAD32(a + j + 32), LOAD32(b + j + 32))); \
			}                                                                            \
			if (j + 32 <= end) {                                                         \
				s0 = _mm256_add_epi32(s0, STEP(LOAD32(a + j), LOAD32(b + j)));       \
				j += 32;                                                             \
			}                                                                            \
			if (j + 4 <= end) {                                                          \
				__m256i m = tail_mask((end - j) / 4);                                \
				s1 = _mm256_add_epi32(s1, STEP(LOAD_WORDS(a + j, m), LOAD_WORDS(b + j, m))); \
				j += (end - j) & ~(size_t)3;                                         \
			}                                                                            \
			for (; j < end; j++)                                                         \
				total += ONE(a[j], b[j]);                                            \
			total += hsum_epi32(_mm256_add_epi32(s0, s1));                               \
		}                                                                                    \
		return (float)total;                                                                 \
	}

PAIR_INT(avx2_l2_u8, uint8_t, l2u8_step, l2_one)
PAIR_INT(avx2_ip_u8, uint8_t, ipu8_step, ip_one)
PAIR_INT(avx2_l2_i8, int8_t, l2i8_step, l2_one)
PAIR_INT(avx2_ip_i8, int8_t, ipi8_step, ip_one)

/* ---- one query against many rows -----------------------------------------
 * Four rows at a time share each load of the query; two accumulators per row
 * give eight independent FMA chains. Rows left over use the pair kernel.
 * Reading four rows in step is not a pattern the hardware prefetchers follow
 * well from DRAM, so the float forms prefetch the group PREFETCH_BYTES ahead.
 * The u8 form computes more per byte and gains nothing from it. */

#define PREFETCH_BYTES 8192

static inline size_t prefetch_rows_ahead(size_t row_bytes)
{
	return ANN_MAX((size_t)4, PREFETCH_BYTES / row_bytes);
}

static inline void prefetch_bytes(const void *p, size_t n)
{
	const char *c = p;
	for (size_t b = 0; b < n; b += 64)
		_mm_prefetch(c + b, _MM_HINT_T0);
}

#define MANY_F32(name, ACC, PAIR)                                                                    \
	static void name(const float *q, const float *x, size_t n, size_t d, float *out)             \
	{                                                                                            \
		size_t i = 0, ahead = prefetch_rows_ahead(d * sizeof(float));                        \
		for (; i + 4 <= n; i += 4) {                                                         \
			const float *x0 = x + i * d, *x1 = x0 + d, *x2 = x1 + d, *x3 = x2 + d;       \
			if (i + ahead + 4 <= n)                                                      \
				prefetch_bytes(x + (i + ahead) * d, 4 * d * sizeof(float));          \
			__m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                  \
			__m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0;                                   \
			size_t j = 0;                                                                \
			for (; j + 16 <= d; j += 16) {                                               \
				__m256 q0 = _mm256_loadu_ps(q + j), q1 = _mm256_loadu_ps(q + j + 8); \
				a0 = ACC(a0, _mm256_loadu_ps(x0 + j), q0);                           \
				a1 = ACC(a1, _mm256_loadu_ps(x1 + j), q0);                           \
				a2 = ACC(a2, _mm256_loadu_ps(x2 + j), q0);                           \
				a3 = ACC(a3, _mm256_loadu_ps(x3 + j), q0);                           \
				b0 = ACC(b0, _mm256_loadu_ps(x0 + j + 8), q1);                       \
				b1 = ACC(b1, _mm256_loadu_ps(x1 + j + 8), q1);                       \
				b2 = ACC(b2, _mm256_loadu_ps(x2 + j + 8), q1);                       \
				b3 = ACC(b3, _mm256_loadu_ps(x3 + j + 8), q1);                       \
			}                                                                            \
			if (j + 8 <= d) {                                                            \
				__m256 q0 = _mm256_loadu_ps(q + j);                                  \
				a0 = ACC(a0, _mm256_loadu_ps(x0 + j), q0);                           \
				a1 = ACC(a1, _mm256_loadu_ps(x1 + j), q0);                           \
				a2 = ACC(a2, _mm256_loadu_ps(x2 + j), q0);                           \
				a3 = ACC(a3, _mm256_loadu_ps(x3 + j), q0);                           \
				j += 8;                                                              \
			}                                                                            \
			if (j < d) {                                                                 \
				__m256i m = tail_mask(d - j);                                        \
				__m256 q0 = _mm256_maskload_ps(q + j, m);                            \
				b0 = ACC(b0, _mm256_maskload_ps(x0 + j, m), q0);                     \
				b1 = ACC(b1, _mm256_maskload_ps(x1 + j, m), q0);                     \
				b2 = ACC(b2, _mm256_maskload_ps(x2 + j, m), q0);                     \
				b3 = ACC(b3, _mm256_maskload_ps(x3 + j, m), q0);                     \
			}                                                                            \
			_mm_storeu_ps(out + i, hsum4_ps(_mm256_add_ps(a0, b0), _mm256_add_ps(a1, b1), \
							_mm256_add_ps(a2, b2), _mm256_add_ps(a3, b3))); \
		}                                                                                    \
		for (; i < n; i++)                                                                   \
			out[i] = PAIR(q, x + i * d, d);                                              \
	}

MANY_F32(avx2_l2_f32_many, l2_acc, avx2_l2_f32)
MANY_F32(avx2_ip_f32_many, ip_acc, avx2_ip_f32)

static void avx2_l2_f32_u8_many(const float *q, const uint8_t *x, size_t n, size_t d, float *out)
{
	size_t i = 0;
	for (; i + 4 <= n; i += 4) {
		const uint8_t *x0 = x + i * d, *x1 = x0 + d, *x2 = x1 + d, *x3 = x2 + d;
		__m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
		__m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
		size_t j = 0;
		for (; j + 16 <= d; j += 16) {
			__m256 q0 = _mm256_loadu_ps(q + j), q1 = _mm256_loadu_ps(q + j + 8);
			a0 = l2_acc(a0, load8_u8(x0 + j), q0);
			a1 = l2_acc(a1, load8_u8(x1 + j), q0);
			a2 = l2_acc(a2, load8_u8(x2 + j), q0);
			a3 = l2_acc(a3, load8_u8(x3 + j), q0);
			b0 = l2_acc(b0, load8_u8(x0 + j + 8), q1);
			b1 = l2_acc(b1, load8_u8(x1 + j + 8), q1);
			b2 = l2_acc(b2, load8_u8(x2 + j + 8), q1);
			b3 = l2_acc(b3, load8_u8(x3 + j + 8), q1);
		}
		if (j + 8 <= d) {
			__m256 q0 = _mm256_loadu_ps(q + j);
			a0 = l2_acc(a0, load8_u8(x0 + j), q0);
			a1 = l2_acc(a1, load8_u8(x1 + j), q0);
			a2 = l2_acc(a2, load8_u8(x2 + j), q0);
			a3 = l2_acc(a3, load8_u8(x3 + j), q0);
			j += 8;
		}
		if (j < d) {
			size_t r = d - j;
			__m256 q0 = _mm256_maskload_ps(q + j, tail_mask(r));
			b0 = l2_acc(b0, load_tail_u8(x0 + j, r, d), q0);
			b1 = l2_acc(b1, load_tail_u8(x1 + j, r, d), q0);
			b2 = l2_acc(b2, load_tail_u8(x2 + j, r, d), q0);
			b3 = l2_acc(b3, load_tail_u8(x3 + j, r, d), q0);
		}
		_mm_storeu_ps(out + i, hsum4_ps(_mm256_add_ps(a0, b0), _mm256_add_ps(a1, b1),
						_mm256_add_ps(a2, b2), _mm256_add_ps(a3, b3)));
	}
	for (; i < n; i++)
		out[i] = avx2_l2_f32_u8(q, x + i * d, d);
}

const ann_kernels ann_kernels_avx2 = {
	.level = ANN_SIMD_AVX2,
	.l2_f32 = avx2_l2_f32,
	.ip_f32 = avx2_ip_f32,
	.l2_u8 = avx2_l2_u8,
	.ip_u8 = avx2_ip_u8,
	.l2_i8 = avx2_l2_i8,
	.ip_i8 = avx2_ip_i8,
	.l2_f32_u8 = avx2_l2_f32_u8,
	.ip_f32_u8 = avx2_ip_f32_u8,
	.l2_f32_many = avx2_l2_f32_many,
	.l2_f32_u8_many = avx2_l2_f32_u8_many,
	.ip_f32_many = avx2_ip_f32_many,
};
