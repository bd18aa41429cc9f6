/* SPDX-License-Identifier: MIT */
/*
 * rabitq_avx2.c: the AVX2 form of the RaBitQ estimate kernels
 * (rabitq_kernels.h), built with -mavx2 -mfma. Called by rabitq.c only when
 * the CPU probe of distance.c says AVX2 runs here (AVX-512 CPUs included).
 *
 * Planes of one bit a dim (the sign plane; the ex plane of 2-bit codes): a
 * fast scan, 32 records a step. Records r and r + 16 share a register (low
 * and high 128-bit lanes), so a 16 x 16 byte transpose in four rounds of
 * unpacks leaves in register j byte rev4(j) of the 16 plane bytes of all 32
 * records. Each nibble indexes its group's table of U = T + 8192 with two
 * vpshufb (low and high bytes). The looked-up bytes are summed in 16-bit
 * lanes as whole words (acc += v) and as their odd bytes (odd += v >> 8):
 * odd holds the odd records' sums, acc - 256 odd (mod 2^16) the even
 * records', both exact for up to 256 groups (255 * 256 < 2^16), after which
 * they are carried into 64-bit totals. Exact integers: the scalar kernel's
 * Y, bit for bit. A last step of fewer than 32 records repeats its last
 * record in the empty slots (their sums are dropped), so every read is of a
 * real record; a plane that is not a whole number of 16-byte chunks has its
 * last chunk copied into zeroed buffers, and groups past the end are not
 * looked up.
 *
 * Ex plane of 3 and more bits: rabitq_ex_avx2.h, per record.
 *
 * Query set-up: the rotation and the quantised query in the same float
 * operations as rabitq.c (rabitq_kernels.h). Measured: bench/bench_rabitq.c
 * --speed.
 */
#include "rabitq_ex_avx2.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

#define FS_ROWS 32
#define FS_BLOCK 256 /* groups summed in 16-bit lanes before the carry */

/* x[j] = byte rev4(j) of the 16 rows of each 128-bit lane (rows in order) */
static inline void transpose16(__m256i x[16])
{
	__m256i t[16];
	for (int k = 0; k < 8; k++) {
		t[k] = _mm256_unpacklo_epi8(x[2 * k], x[2 * k + 1]);
		t[k + 8] = _mm256_unpackhi_epi8(x[2 * k], x[2 * k + 1]);
	}
	for (int k = 0; k < 8; k++) {
		x[k] = _mm256_unpacklo_epi16(t[2 * k], t[2 * k + 1]);
		x[k + 8] = _mm256_unpackhi_epi16(t[2 * k], t[2 * k + 1]);
	}
	for (int k = 0; k < 8; k++) {
		t[k] = _mm256_unpacklo_epi32(x[2 * k], x[2 * k + 1]);
		t[k + 8] = _mm256_unpackhi_epi32(x[2 * k], x[2 * k + 1]);
	}
	for (int k = 0; k < 8; k++) {
		x[k] = _mm256_unpacklo_epi64(t[2 * k], t[2 * k + 1]);
		x[k + 8] = _mm256_unpackhi_epi64(t[2 * k], t[2 * k + 1]);
	}
}

static const int rev4[16] = {0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15};

typedef struct fs_acc {
	__m256i lo, lo_odd, hi, hi_odd;
} fs_acc;

static inline void fs_look(fs_acc *a, const uint8_t *tab, __m256i nib)
{
	__m256i tl = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)tab));
	__m256i th = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)(tab + 16)));
	__m256i l = _mm256_shuffle_epi8(tl, nib), h = _mm256_shuffle_epi8(th, nib);
	a->lo = _mm256_add_epi16(a->lo, l);
	a->lo_odd = _mm256_add_epi16(a->lo_odd, _mm256_srli_epi16(l, 8));
	a->hi = _mm256_add_epi16(a->hi, h);
	a->hi_odd = _mm256_add_epi16(a->hi_odd, _mm256_srli_epi16(h, 8));
}

/* tot[r] += the block's sums of U: 16-bit word k of lane h holds rows
 * 16 h + 2 k (even byte) and 16 h + 2 k + 1 (odd byte) */
static inline void fs_carry(const fs_acc *a, int64_t tot[FS_ROWS])
{
	uint16_t lo[16], lo_odd[16], hi[16], hi_odd[16];
	_mm256_storeu_si256((__m256i *)(void *)lo, a->lo);
	_mm256_storeu_si256((__m256i *)(void *)lo_odd, a->lo_odd);
	_mm256_storeu_si256((__m256i *)(void *)hi, a->hi);
	_mm256_storeu_si256((__m256i *)(void *)hi_odd, a->hi_odd);
	for (int k = 0; k < 16; k++) {
		int r = 16 * (k / 8) + 2 * (k % 8);
		uint16_t le = (uint16_t)(lo[k] - (uint16_t)(lo_odd[k] << 8));
		uint16_t he = (uint16_t)(hi[k] - (uint16_t)(hi_odd[k] << 8));
		tot[r] += (int64_t)le + 256 * (int64_t)he;
		tot[r + 1] += (int64_t)lo_odd[k] + 256 * (int64_t)hi_odd[k];
	}
}

/* out[r] = sum over groups g < groups of T_g[nibble g of the 1-bit plane at
 * byte offset off of record p[r]], for the 32 records p[0..31] */
static void fs_plane(const uint8_t *const p[FS_ROWS], size_t off, const uint8_t *tab, size_t groups,
		     int64_t out[FS_ROWS])
{
	const __m256i m4 = _mm256_set1_epi8(0x0f);
	int64_t tot[FS_ROWS];
	memset(tot, 0, sizeof(tot));
	for (size_t g0 = 0; g0 < groups; g0 += FS_BLOCK) {
		const size_t gend = groups - g0 < FS_BLOCK ? groups : g0 + FS_BLOCK;
		fs_acc a = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
			    _mm256_setzero_si256()};
		for (size_t g = g0; g < gend; g += 32) {
			const size_t ng = gend - g < 32 ? gend - g : 32, boff = off + g / 2;
			__m256i x[16];
			if (ng == 32) {
				for (int r = 0; r < 16; r++)
					x[r] = _mm256_loadu2_m128i((const __m128i *)(const void *)(p[r + 16] + boff),
								   (const __m128i *)(const void *)(p[r] + boff));
			} else {
				uint8_t buf[FS_ROWS][16];
				memset(buf, 0, sizeof(buf));
				for (int r = 0; r < FS_ROWS; r++)
					memcpy(buf[r], p[r] + boff, (ng + 1) / 2);
				for (int r = 0; r < 16; r++)
					x[r] = _mm256_loadu2_m128i((const __m128i *)(const void *)buf[r + 16],
								   (const __m128i *)(const void *)buf[r]);
			}
			transpose16(x);
			for (int j = 0; j < 16; j++) {
				const size_t b = (size_t)rev4[j];
				if (2 * b >= ng)
					continue;
				const uint8_t *t = tab + 32 * (g + 2 * b);
				fs_look(&a, t, _mm256_and_si256(x[j], m4));
				if (2 * b + 1 < ng)
					fs_look(&a, t + 32, _mm256_and_si256(_mm256_srli_epi16(x[j], 4), m4));
			}
		}
		fs_carry(&a, tot);
	}
	for (int r = 0; r < FS_ROWS; r++)
		out[r] = tot[r] - 8192 * (int64_t)groups;
}

void ann_rbq_scan_avx2(const ann_rbq_scan *a, const uint8_t *codes, size_t n, int64_t *Y)
{
	const unsigned be = a->be;
	const rbq_ex ex = rbq_ex_setup(a);
	for (size_t i0 = 0; i0 < n; i0 += FS_ROWS) {
		const size_t cnt = n - i0 < FS_ROWS ? n - i0 : FS_ROWS;
		const uint8_t *p[FS_ROWS];
		for (size_t r = 0; r < FS_ROWS; r++)
			p[r] = codes + (i0 + (r < cnt ? r : cnt - 1)) * a->rec_bytes;
		int64_t A[FS_ROWS], E[FS_ROWS];
		fs_plane(p, 0, a->tab, a->groups, A);
		if (be == 1)
			fs_plane(p, a->sign_bytes, a->tab, a->dp / 4, E);
		for (size_t r = 0; r < cnt; r++) {
			int64_t e = be == 0 ? 0 : be == 1 ? E[r] : rbq_ex_row(a, &ex, p[r]);
			Y[i0 + r] = A[r] * ((int64_t)1 << be) + e;
		}
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

/* ann_rbq_tables in AVX2: lane m of a group's 16 int16 sums adds qi[4 g + t]
 * where bit t of m is set (exact: |sum| <= 8188); + 8192, then the low bytes
 * and the high bytes gathered into the two 16-byte halves of the entry. */
void ann_rbq_tables_avx2(const int16_t *qi, size_t groups, uint8_t *tab)
{
	const __m256i b0 = _mm256_setr_epi16(0, -1, 0, -1, 0, -1, 0, -1, 0, -1, 0, -1, 0, -1, 0, -1);
	const __m256i b1 = _mm256_setr_epi16(0, 0, -1, -1, 0, 0, -1, -1, 0, 0, -1, -1, 0, 0, -1, -1);
	const __m256i b2 = _mm256_setr_epi16(0, 0, 0, 0, -1, -1, -1, -1, 0, 0, 0, 0, -1, -1, -1, -1);
	const __m256i b3 = _mm256_setr_epi16(0, 0, 0, 0, 0, 0, 0, 0, -1, -1, -1, -1, -1, -1, -1, -1);
	const __m256i off = _mm256_set1_epi16(8192);
	const __m256i split = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15, 0, 2, 4, 6, 8, 10,
					       12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
	for (size_t g = 0; g < groups; g++) {
		const int16_t *v = qi + 4 * g;
		__m256i t = _mm256_add_epi16(_mm256_and_si256(b0, _mm256_set1_epi16(v[0])),
					     _mm256_and_si256(b1, _mm256_set1_epi16(v[1])));
		t = _mm256_add_epi16(t, _mm256_add_epi16(_mm256_and_si256(b2, _mm256_set1_epi16(v[2])),
							 _mm256_and_si256(b3, _mm256_set1_epi16(v[3]))));
		/* lane 0: low bytes of entries 0..7, high bytes of 0..7; lane 1: 8..15 */
		__m256i sp = _mm256_shuffle_epi8(_mm256_add_epi16(t, off), split);
		_mm256_storeu_si256((__m256i *)(void *)(tab + 32 * g), _mm256_permute4x64_epi64(sp, _MM_SHUFFLE(3, 1, 2, 0)));
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
size_t ann_rbq_finish_avx2(const ann_rbq_fin *f, const int64_t *Y, const float *rn, const float *fip,
			   const float *tan, size_t n, float *est, float *width)
{
	const __m256d delta = _mm256_set1_pd(f->delta), yc = _mm256_set1_pd(f->yconst);
	const __m256d qn2 = _mm256_set1_pd(f->qn2), cq = _mm256_set1_pd(f->cq), ws = _mm256_set1_pd(f->wscale);
	const __m256d two = _mm256_set1_pd(2.0), sign = _mm256_set1_pd(-0.0);
	size_t i = 0;
	for (; i + 4 <= n; i += 4) {
		__m256d y = _mm256_setr_pd((double)Y[i], (double)Y[i + 1], (double)Y[i + 2], (double)Y[i + 3]);
		__m256d r = _mm256_cvtps_pd(_mm_loadu_ps(rn + i));
		__m256d fp = _mm256_cvtps_pd(_mm_loadu_ps(fip + i));
		__m256d yq = _mm256_sub_pd(_mm256_mul_pd(delta, y), yc);
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
