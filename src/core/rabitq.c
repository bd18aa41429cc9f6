/* SPDX-License-Identifier: MIT */
/*
 * rabitq.c: RaBitQ codes (Gao & Long, SIGMOD 2024) and extended RaBitQ with
 * B bits per dimension (Gao et al., SIGMOD 2025): the rotation, the encoder,
 * the query tables and the scalar estimate kernels. The AVX2 kernels are in
 * rabitq_avx2.c. Written from the papers; the reference library
 * (VectorDB-NTU/RaBitQ-Library) was read for its rotation and its ex-bits
 * search, not copied.
 *
 * ---- Math (the paper's notation) -------------------------------------------
 * D = padded dim (dim rounded up to a multiple of 16), B = bits, be = B - 1.
 * A data vector o_r of a partition with centre c has residual r = o_r - c and
 * unit direction o = r / |r|. R is our rotation (the paper's P^-1), o' = R o.
 * The code is a point of the grid
 *     y_i in { -(2^B - 1)/2, ..., -1/2, +1/2, ..., (2^B - 1)/2 }   (step 1)
 * stored as u_i = y_i + (2^B - 1)/2 in 0..2^B - 1, split into its top bit
 * s_i (the sign of o'_i: plain 1-bit RaBitQ) and its low be bits e_i (the
 * "ex" code). The quantised unit vector is o-bar = R^-1 y / |y|. For be = 0,
 * y_i = +-1/2 (the paper's x-bar up to scale). For be > 0 the encoder picks
 * |y_i| = k_i + 1/2 with k_i = min(floor(t |o'_i|), 2^be - 1) for the scale t
 * that maximises <y, o'> / |y| (extended RaBitQ's search over the critical
 * values of t, where some k_i steps; see quantise_ex), and the sign of o'_i.
 *
 * For any vector q (a rotated query q' = R q), the estimator is
 *     <o, q>  ~=  <o-bar, q> / <o-bar, o>  =  <y, q'> / <y, o'>
 * unbiased over the random rotation, with the bound (eq. 15 of the 2024
 * paper, extended RaBitQ's Theorem for B bits): with probability at least
 * 1 - 2 exp(-c0 eps0^2),
 *     |<y, q'> / <y, o'> - <o, q>| <= |q| * eps0 * sqrt((1 - cos^2) / cos^2) / sqrt(D - 1)
 * where cos = <o-bar, o> = <y, o'> / |y|. Then with q_r = q - c,
 *     L2:  |o_r - q|^2 = |r|^2 + |q_r|^2 - 2 |r| <o, q_r>
 *          est   = |r|^2 + |q_r|^2 - 2 f_ip <y, R q_r>,   f_ip = |r| / <y, o'>
 *          width = 2 |r| |q_r| eps0 tan / sqrt(D - 1),     tan = sqrt(1 - cos^2) / cos
 *     IP:  <o_r, q> = <c, q> + |r| <o, q>
 *          est   = -(<c, q> + f_ip <y, R q>)
 *          width = |r| |q| eps0 tan / sqrt(D - 1)
 * Per vector the record keeps |r|, f_ip and tan (rounded up to 1/256, so
 * the stored bound is never narrower than the exact one).
 *
 * With u_i = s_i 2^be + e_i, the encoder stores e_i = k_i where s_i = 1 and
 * e_i = 2^be - 1 - k_i where s_i = 0, so that y_i = u_i - (2^B - 1)/2 is
 * +-(k_i + 1/2), and
 *     <y, q'> = 2^be <s, q'> + <e, q'> - (2^B - 1)/2 sum_i q'_i.
 * The query side computes
 *   2^be <s, q'> + <e, q'>  as delta * (2^be <s, qi> + <e, qi>) with
 *            qi = round(q' / delta) in int16, delta = max |q'_i| / 2047: one
 *            exact integer sum (rabitq_kernels.h), <s, qi> through a table
 *            per 4-dim group (16 entries: the sums of qi over each subset of
 *            the group), D/4 look-ups per code, 32 codes at a time in the
 *            AVX2 form (a fast scan). The rounding adds at most delta/2 *
 *            sum (2^be s_i + e_i) to <y, q'> (D = 128: about 1e-3 of the
 *            sum's scale, far inside the bound's width); it is
 *            deterministic, so this part is not re-randomised. Until
 *            2026-12-07 <s, q'> was a float sum of float tables: the same
 *            estimate within that rounding, 5x slower to scan.
 *
 * ---- Rotation ----------------------------------------------------------------
 * R = K H_4 S_4 ... K H_1 S_1 on the padded D coordinates: S_j flips signs by
 * 4 D random bits drawn from xoshiro256** seeded with `seed` (ann_rng),
 * H_j is the normalised Walsh-Hadamard transform on L = the largest power of
 * two <= D coordinates (on [0, L) in odd rounds, [D - L, D) in even ones, so
 * together they cover all of them since 2L > D), K is one Kac-walk step
 * mixing coordinate i with i + D/2 by a 45-degree rotation. When D = L, K is
 * left out. Each factor is orthogonal, so R is; memory is D/2 bytes of signs.
 * The rotation is in float, in a fixed order of operations, so codes are the
 * same on every machine with IEEE binary32 and no FMA contraction (C11 mode).
 *
 * ---- Invariants --------------------------------------------------------------
 *  - An ann_rbq is immutable after ann_rbq_new; a query state belongs to one
 *    thread at a time.
 *  - A record is sign plane (D/8 bytes) | ex plane (D be/8 bytes) | |r| f32 |
 *    f_ip f32 | tan u16, little-endian (docs/FORMAT.md "RaBitQ codes").
 *  - |r| = 0 codes all-zero planes with f_ip = 0, tan = 0: est is exact.
 *  - Scalar and AVX2 estimates are bit-identical (rabitq_kernels.h); an
 *    AVX-512 CPU runs the AVX2 kernels.
 *
 * ---- Memory -------------------------------------------------------------------
 *  ann_rbq: struct + D/2 bytes of signs. Query state: struct + one block of
 *  4 dim (residual) + 4 D (rotated query) + 2 D (qi) + 8 D (tables) bytes.
 *  Encode: one scratch block per call: 4 dim + 8 D + 4 D + D bytes, plus
 *  the scale search's for be > 0 (rbq_search_bytes): 44 D + 16 for be = 1,
 *  28 D + 4 max(2 D, 101) rounded up to 16 (at most 36 D + 416) for be >= 2.
 *  Estimate: 768 bytes of stack, no allocation.
 */
#include "rabitq.h"

#include <assert.h>
#include <math.h>

#include "distance.h"
#include "rabitq_kernels.h"

#define RBQ_ROUNDS 4
#define RBQ_QI_MAX 2047
_Static_assert(RBQ_QI_MAX == 2047, "ann_rbq_quant_avx2 clamps to 2047");
#define RBQ_TAN_SCALE 256.0
#define RBQ_FACTOR_BYTES 10
#define RBQ_CHUNK 64 /* codes per kernel call in ann_rbq_estimate */

struct ann_rbq {
	uint32_t dim, dp, L;
	unsigned bits, be;
	uint64_t seed;
	size_t sign_bytes, ex_bytes, rec_bytes;
	uint64_t *signs; /* RBQ_ROUNDS * dp bits: bit (r dp + i) flips coordinate i in round r */
	size_t sign_words;
	ann_simd_level simd; /* the rotation's form: scalar or AVX2 (the CPU's) */
};

struct ann_rbq_query {
	const ann_rbq *q;
	ann_metric m;
	float eps0;
	ann_simd_level simd; /* kernel: scalar or AVX2 (AVX-512 CPUs run the AVX2 kernels) */
	bool prepared;
	float *tmp;  /* dim: q - c */
	float *rq;   /* dp: rotated query (residual for L2) */
	int16_t *qi; /* dp */
	uint8_t *tab; /* dp / 4 * 32: the fast scan's tables (rabitq_kernels.h) */
	double delta, sum_rq, qn2, qnorm, cq;
	size_t block_bytes;
};

/* ---- parameters and rotation ------------------------------------------------- */

int ann_rbq_new(uint32_t dim, unsigned bits, uint64_t seed, ann_rbq **out, ann_error *err)
{
	*out = NULL;
	if (dim < 1 || dim > ANN_RBQ_MAX_DIM)
		return ann_err(err, ANN_E_INVAL, "rabitq: dim %u out of range 1..%u", dim, ANN_RBQ_MAX_DIM);
	if (bits < 1 || bits > 8)
		return ann_err(err, ANN_E_INVAL, "rabitq: bits %u out of range 1..8", bits);
	ann_rbq *q = ann_calloc(1, sizeof(*q));
	if (!q)
		return ann_err(err, ANN_E_NOMEM, "rabitq: out of memory");
	q->dim = dim;
	q->dp = ANN_ALIGN_UP(dim, 16u);
	q->L = 1;
	while (q->L * 2 <= q->dp)
		q->L *= 2;
	q->bits = bits;
	q->be = bits - 1;
	q->seed = seed;
	q->sign_bytes = q->dp / 8;
	q->ex_bytes = (size_t)q->dp * q->be / 8;
	q->rec_bytes = q->sign_bytes + q->ex_bytes + RBQ_FACTOR_BYTES;
	q->sign_words = ((size_t)RBQ_ROUNDS * q->dp + 63) / 64;
	q->signs = ann_malloc(q->sign_words * sizeof(uint64_t));
	if (!q->signs) {
		ann_free(q);
		return ann_err(err, ANN_E_NOMEM, "rabitq: out of memory");
	}
	ann_rng rng;
	ann_rng_seed(&rng, seed);
	for (size_t w = 0; w < q->sign_words; w++)
		q->signs[w] = ann_rng_next(&rng);
	q->simd = ann_simd_active() >= ANN_SIMD_AVX2 && ann_kernels_for(ANN_SIMD_AVX2) ? ANN_SIMD_AVX2 : ANN_SIMD_SCALAR;
	*out = q;
	return 0;
}

void ann_rbq_free(ann_rbq *q)
{
	if (!q)
		return;
	ann_free(q->signs);
	ann_free(q);
}

size_t ann_rbq_sizeof(const ann_rbq *q)
{
	return sizeof(*q) + q->sign_words * sizeof(uint64_t);
}
uint32_t ann_rbq_dim(const ann_rbq *q)
{
	return q->dim;
}
unsigned ann_rbq_bits(const ann_rbq *q)
{
	return q->bits;
}
uint64_t ann_rbq_seed(const ann_rbq *q)
{
	return q->seed;
}
uint32_t ann_rbq_padded_dim(const ann_rbq *q)
{
	return q->dp;
}
size_t ann_rbq_code_bytes(const ann_rbq *q)
{
	return q->rec_bytes;
}

/* In-place normalised Walsh-Hadamard transform of n (a power of two) floats. */
static void fwht(float *x, size_t n)
{
	for (size_t h = 1; h < n; h *= 2)
		for (size_t i = 0; i < n; i += 2 * h)
			for (size_t j = i; j < i + h; j++) {
				float a = x[j], b = x[j + h];
				x[j] = a + b;
				x[j + h] = a - b;
			}
	float s = (float)(1.0 / sqrt((double)n));
	for (size_t i = 0; i < n; i++)
		x[i] *= s;
}

static void rotate_scalar(const ann_rbq *q, const float *v, float *out)
{
	const size_t dp = q->dp, L = q->L, h = dp / 2;
	memcpy(out, v, (size_t)q->dim * sizeof(float));
	for (size_t i = q->dim; i < dp; i++)
		out[i] = 0.0f;
	const float kac = (float)(1.0 / sqrt(2.0));
	for (unsigned r = 0; r < RBQ_ROUNDS; r++) {
		for (size_t i = 0; i < dp; i++) {
			size_t b = (size_t)r * dp + i;
			if ((q->signs[b / 64] >> (b % 64)) & 1)
				out[i] = -out[i];
		}
		if (L == dp) {
			fwht(out, dp);
			continue;
		}
		fwht(out + ((r & 1) ? dp - L : 0), L);
		for (size_t i = 0; i < h; i++) {
			float a = out[i], b = out[i + h];
			out[i] = (a + b) * kac;
			out[i + h] = (a - b) * kac;
		}
	}
}

/* the rotation in the form `level` allows (bit-identical either way) */
static void rotate_at(const ann_rbq *q, ann_simd_level level, const float *v, float *out)
{
	if (level >= ANN_SIMD_AVX2) {
		const ann_rbq_rot r = {q->signs, q->dim, q->dp, q->L, RBQ_ROUNDS};
		ann_rbq_rotate_avx2(&r, v, out);
	} else {
		rotate_scalar(q, v, out);
	}
}

void ann_rbq_rotate(const ann_rbq *q, const float *v, float *out)
{
	rotate_at(q, q->simd, v, out);
}

/* ---- encoder ------------------------------------------------------------------ */

typedef struct rbq_event {
	double t;
	uint32_t i;
} rbq_event;

typedef struct rbq_ev1 {
	double t, a;
} rbq_ev1;

/* Extended RaBitQ's scale search. a: |o'_i| (n values, unit vector), levels
 * K = 2^be. Sets k[i] = min(floor(t a_i), K - 1) for the t in [t_lo, t_hi]
 * that maximises sum (k_i + 1/2) a_i / sqrt(sum (k_i + 1/2)^2), where
 * t_hi = (K - 1 + 10) / max a (past it the largest coordinates only clip)
 * and t_lo = rbq_t_lo[be] t_hi.
 * rbq_t_lo: measured over 300 rotated Gaussian unit vectors of dims 128 and
 * 784, the best t lay at 0.19, 0.30, 0.44, 0.57, 0.66, 0.78, 0.86 of t_hi
 * at least (be = 1..7; the means are 0.07-0.12 higher); starting 0.15
 * below that skips the events that cannot win and halves the encode time.
 * (The reference library starts at a similar table, kTightStart.)
 *
 * The walk. The objective only changes where some k_i steps, at the
 * critical values ("events") t = (k + 1) / a_i, k = k_i(t_lo) .. K - 2, so
 * the search visits the events up to t_hi in increasing t, judging the
 * state once all the coordinates that step at the same t have stepped,
 * and remembers the best as a t halfway to the next event (so that
 * floor(t a_i) reproduces it without ties). The events are ordered by
 * buckets, not by a heap (the first version: O(events log n), 75% of the
 * pack phase of a 2-bit build; tests/test_rabitq.c keeps it and requires
 * the same k and the same bytes):
 *  - be = 1 (quantise_ex1): a coordinate has at most one event, t = 1 / a_i,
 *    so the walk is a sort: a counting sort of the events in range into
 *    ~2n buckets by the bits of t, then an insertion sort within buckets;
 *  - be >= 2: a bucket queue (calendar queue) over [t_lo, t_hi] holding
 *    each coordinate's next event; its 2n equal buckets are at most
 *    0.4 / max a wide, so a coordinate's following event, 1 / a_i later,
 *    falls in a strictly later bucket, and a bucket once reached is
 *    complete and is sorted by insertion as it is gathered.
 * Cost O(n + buckets + events + inversions within buckets). The running
 * sums are the first version's, in its order: the initial num and den in
 * index order, then a_i and 2 k_i + 2 per event in t order. Only within a
 * group of equal t may the order of the a_i differ (the heap's there,
 * bucket order here), so that the float sum, hence a near tie between two
 * states, could resolve differently; test_search checks the objectives
 * agree within 1e-12 and has seen no such case. States whose num^2 is
 * below best^2 (1 - 1e-12) den cannot win whatever the rounding, and skip
 * the square root. */
static const double rbq_t_lo[8] = {0, 0.04, 0.15, 0.29, 0.42, 0.51, 0.63, 0.71};

/* Buckets for n coordinates: 2 n, and for be >= 2 at least enough for a
 * width of 0.4 / max a: 2.5 (t_hi - t_lo) max a = 2.5 (1 - rbq_t_lo) (K + 9). */
static size_t rbq_buckets(size_t n, unsigned be)
{
	size_t lo = (size_t)(2.5 * (1.0 - rbq_t_lo[be]) * (double)((1u << be) + 9)) + 2;
	return 2 * n > lo ? 2 * n : lo;
}

/* Scratch of quantise_ex, a multiple of 16 bytes (bucket heads and counts
 * are 4 bytes each):
 *   be = 1:  events (t, a) twice (16 n each), bucket of each event (4 n),
 *            counts (4 (nb + 1));
 *   be >= 2: the gathered bucket (16 n), each coordinate's pending event
 *            time (8 n) and list link (4 n), bucket heads (4 nb). */
static size_t rbq_search_bytes(size_t n, unsigned be)
{
	size_t nb = rbq_buckets(n, be), b;
	if (be == 1)
		b = n * (2 * sizeof(rbq_ev1) + sizeof(uint32_t)) + (nb + 1) * sizeof(uint32_t);
	else
		b = n * (sizeof(rbq_event) + sizeof(double) + sizeof(int32_t)) + nb * sizeof(int32_t);
	return ANN_ALIGN_UP(b, (size_t)16);
}

typedef struct rbq_queue {
	double t_lo, t_hi, inv_w; /* inv_w = nb / (t_hi - t_lo) */
	size_t nb;
	double *nt;   /* n: pending event time of coordinate i */
	int32_t *nx;  /* n: next coordinate in the same bucket, -1 ends */
	int32_t *head; /* nb: first coordinate of each bucket, -1 if empty */
	double beyond; /* the smallest pending event past t_hi, if any */
	bool has_beyond;
} rbq_queue;

static size_t rbq_bucket(const rbq_queue *qu, double t)
{
	double x = (t - qu->t_lo) * qu->inv_w;
	size_t b = x > 0 ? (size_t)x : 0;
	return b < qu->nb ? b : qu->nb - 1;
}

/* Queues event t of coordinate i; returns its bucket, or nb if past t_hi. */
static size_t rbq_push(rbq_queue *qu, uint32_t i, double t)
{
	if (t <= qu->t_hi) {
		size_t b = rbq_bucket(qu, t);
		qu->nt[i] = t;
		qu->nx[i] = qu->head[b];
		qu->head[b] = (int32_t)i;
		return b;
	}
	if (!qu->has_beyond || t < qu->beyond)
		qu->beyond = t;
	qu->has_beyond = true;
	return qu->nb;
}

static uint64_t rbq_bits(double t)
{
	uint64_t u;
	memcpy(&u, &t, sizeof(u));
	return u;
}

/* The scale search for be = 1 (the walk described above rbq_t_lo). */
static void quantise_ex1(const double *a, size_t n, uint8_t *k, double amax, void *scratch)
{
	const double t_hi = (double)(1 + 10) / amax;
	const double t_lo = rbq_t_lo[1] * t_hi;
	const double first = 1u / amax;
	/* buckets by the bits of t (monotone in t > 0, and about linear in
	 * log t, where the events are spread more evenly than in t): bucket
	 * (bits(t) - bits(first)) >> shift, shift the least with
	 * bits(t_hi) - bits(first) >> shift < nb */
	size_t nb = rbq_buckets(n, 1);
	const uint64_t base = rbq_bits(first), span = rbq_bits(t_hi) - base;
	unsigned shift = 0;
	while ((span >> shift) >= nb)
		shift++;
	nb = (size_t)(span >> shift) + 1;
	rbq_ev1 *tmp = scratch, *ev = tmp + n;
	uint32_t *bi = (uint32_t *)(void *)(ev + n), *cnt = bi + n;
	double *tt = (double *)(void *)ev; /* event times, before ev is filled */
	memset(cnt, 0, (nb + 1) * sizeof(uint32_t));
	/* At t_lo every k_i is 0 (t_lo a_i <= 0.44 (1 + 10) / 11 < 1): num and
	 * den are the first version's sums of (0 + 0.5) a_i and 0.25 in index
	 * order; every a_i > 0 has its event at t = 1 / a_i, the first of them
	 * at 1 / max a (a_i = 0 gives t = +inf, never in range). */
	double num = 0, den = 0;
	for (size_t i = 0; i < n; i++) {
		num += 0.5 * a[i];
		den += 0.25;
	}
	for (size_t i = 0; i < n; i++)
		tt[i] = 1u / a[i];
	/* events past t_hi are written at m but not kept */
	size_t m = 0;
	for (size_t i = 0; i < n; i++) {
		double t = tt[i];
		uint64_t b = (rbq_bits(t) - base) >> shift;
		b = b < nb ? b : nb - 1;
		size_t in = t <= t_hi;
		tmp[m] = (rbq_ev1){t, a[i]};
		bi[m] = (uint32_t)b;
		cnt[b + 1] += (uint32_t)in;
		m += in;
	}
	for (size_t b = 1; b <= nb; b++)
		cnt[b] += cnt[b - 1];
	for (size_t j = 0; j < m; j++)
		ev[cnt[bi[j]]++] = tmp[j];
	for (size_t j = 1; j < m; j++) {
		rbq_ev1 e = ev[j];
		size_t i = j;
		for (; i > 0 && ev[i - 1].t > e.t; i--)
			ev[i] = ev[i - 1];
		ev[i] = e;
	}
	double best = num / sqrt(den);
	double best_t = (t_lo + first) / 2;
	bool last = false; /* the best state is the last event's in range */
	/* skip = best^2 (1 - 1e-12): a state with num^2 < skip den has
	 * num / sqrt(den) < best by far more than the rounding of either
	 * side, so it cannot win and needs no square root */
	double skip = best * best * (1 - 1e-12);
	for (size_t j = 0; j < m; j++) {
		double t = ev[j].t;
		num += ev[j].a;
		den += 2.0;
		if (j + 1 < m && ev[j + 1].t <= t)
			continue;
		if (num * num < skip * den)
			continue;
		double v = num / sqrt(den);
		if (v > best) {
			best = v;
			skip = best * best * (1 - 1e-12);
			best_t = j + 1 < m ? (t + ev[j + 1].t) / 2 : t;
			last = j + 1 == m;
		}
	}
	if (last) {
		/* halfway to the first event past t_hi, or twice t if none */
		double beyond = INFINITY;
		bool has_beyond = false;
		for (size_t i = 0; i < n; i++) {
			double t = 1u / a[i]; /* tt is ev's now */
			if (a[i] > 0 && !(t <= t_hi)) {
				beyond = t < beyond ? t : beyond;
				has_beyond = true;
			}
		}
		best_t = has_beyond ? (best_t + beyond) / 2 : best_t * 2;
	}
	for (size_t i = 0; i < n; i++)
		k[i] = best_t * a[i] >= 1.0;
}

static void quantise_ex(const double *a, size_t n, unsigned be, uint8_t *k, void *scratch)
{
	const uint32_t K = 1u << be;
	double amax = 0;
	for (size_t i = 0; i < n; i++)
		amax = a[i] > amax ? a[i] : amax;
	if (!(amax > 0)) {
		memset(k, 0, n);
		return;
	}
	if (be == 1) {
		quantise_ex1(a, n, k, amax, scratch);
		return;
	}
	rbq_queue qu;
	qu.t_hi = (double)(K - 1 + 10) / amax;
	qu.t_lo = rbq_t_lo[be] * qu.t_hi;
	qu.nb = rbq_buckets(n, be);
	qu.inv_w = (double)qu.nb / (qu.t_hi - qu.t_lo);
	rbq_event *cur = scratch;
	qu.nt = (double *)(void *)(cur + n);
	qu.nx = (int32_t *)(void *)(qu.nt + n);
	qu.head = qu.nx + n;
	qu.has_beyond = false;
	qu.beyond = 0;
	for (size_t b = 0; b < qu.nb; b++)
		qu.head[b] = -1;
	/* k at t_lo (min(floor(x), K - 1) as x >= 0: a truncation) */
	double num = 0, den = 0, first = 0;
	bool any = false;
	for (size_t i = 0; i < n; i++) {
		double x = qu.t_lo * a[i];
		uint32_t ki = x >= (double)(K - 1) ? K - 1 : (uint32_t)x;
		k[i] = (uint8_t)ki;
		num += (ki + 0.5) * a[i];
		den += (ki + 0.5) * (ki + 0.5);
		if (ki < K - 1 && a[i] > 0) {
			double t = (ki + 1) / a[i];
			first = !any || t < first ? t : first;
			any = true;
			rbq_push(&qu, (uint32_t)i, t);
		}
	}
	/* The best state is remembered as a t strictly between two events, so
	 * that floor(t a_i) reproduces it without ties; when its event closes
	 * a bucket, the next event is the first of the next bucket that holds
	 * one ("open" until then). */
	double best = num / sqrt(den);
	double best_t = any ? (qu.t_lo + first) / 2 : qu.t_lo;
	bool open = false;
	double open_t = 0;
	double skip = best * best * (1 - 1e-12); /* as in quantise_ex1 */
	for (size_t b = 0; b < qu.nb; b++) {
		size_t m = 0;
		for (int32_t e = qu.head[b]; e >= 0; e = qu.nx[e]) {
			double t = qu.nt[e];
			size_t j = m++;
			for (; j > 0 && cur[j - 1].t > t; j--)
				cur[j] = cur[j - 1];
			cur[j] = (rbq_event){t, (uint32_t)e};
		}
		if (!m)
			continue;
		if (open) {
			best_t = (open_t + cur[0].t) / 2;
			open = false;
		}
		for (size_t j = 0; j < m; j++) {
			double t = cur[j].t;
			uint32_t i = cur[j].i;
			uint32_t ki = k[i];
			num += a[i];
			den += 2.0 * ki + 2.0;
			k[i] = (uint8_t)++ki;
			if (ki < K - 1) {
				size_t b2 = rbq_push(&qu, i, (ki + 1) / a[i]);
				assert(b2 > b);
				(void)b2;
			}
			/* several coordinates may step at the same t: judge the
			 * state only once all of them have */
			if (j + 1 < m && cur[j + 1].t <= t)
				continue;
			if (num * num < skip * den)
				continue;
			double v = num / sqrt(den);
			if (v > best) {
				best = v;
				skip = best * best * (1 - 1e-12);
				if (j + 1 < m) {
					best_t = (t + cur[j + 1].t) / 2;
				} else {
					open = true;
					open_t = t;
				}
			}
		}
	}
	if (open)
		best_t = qu.has_beyond ? (open_t + qu.beyond) / 2 : open_t * 2;
	for (size_t i = 0; i < n; i++) {
		double x = best_t * a[i];
		k[i] = (uint8_t)(x >= (double)(K - 1) ? K - 1 : (uint32_t)x);
	}
}

size_t ann_rbq_quantise_ex_bytes(size_t n, unsigned be)
{
	return rbq_search_bytes(n, be);
}

void ann_rbq_quantise_ex(const double *a, size_t n, unsigned be, uint8_t *k, void *scratch)
{
	quantise_ex(a, n, be, k, scratch);
}

static bool finite_row(const float *x, size_t d, size_t *bad)
{
	for (size_t j = 0; j < d; j++)
		if (!isfinite(x[j])) {
			*bad = j;
			return false;
		}
	return true;
}

int ann_rbq_encode(const ann_rbq *q, const float *c, const float *x, size_t n, uint8_t *codes,
		   ann_error *err)
{
	const size_t dim = q->dim, dp = q->dp;
	const unsigned be = q->be;
	size_t bad;
	if (!finite_row(c, dim, &bad))
		return ann_err(err, ANN_E_INVAL, "rabitq encode: centre coordinate %zu is not finite", bad);
	/* scratch: the scale search's (rbq_search_bytes), a (dp f64), r (dim
	 * f32), o (dp f32), k (dp u8) */
	size_t search = be ? rbq_search_bytes(dp, be) : 0;
	size_t bytes = search + dp * sizeof(double) + dim * sizeof(float) + dp * sizeof(float) + dp;
	uint8_t *scratch = ann_malloc(bytes);
	if (!scratch)
		return ann_err(err, ANN_E_NOMEM, "rabitq encode: out of memory (%zu bytes of scratch)", bytes);
	double *a = (double *)(void *)(scratch + search);
	float *r = (float *)(void *)(a + dp);
	float *o = r + dim;
	uint8_t *k = (uint8_t *)(o + dp);
	const uint32_t K = 1u << be;
	int rc = 0;
	for (size_t row = 0; row < n; row++) {
		const float *xr = x + row * dim;
		uint8_t *rec = codes + row * q->rec_bytes;
		double n2 = 0;
		for (size_t j = 0; j < dim; j++) {
			r[j] = xr[j] - c[j];
			if (!isfinite(r[j])) {
				rc = ann_err(err, ANN_E_INVAL,
					     "rabitq encode: row %zu, coordinate %zu: %s", row, j,
					     isfinite(xr[j]) ? "residual to the centre overflows" : "value is not finite");
				goto out;
			}
			n2 += (double)r[j] * r[j];
		}
		memset(rec, 0, q->rec_bytes);
		double norm = sqrt(n2);
		if (!(norm > 0) || !isfinite(norm) || !isfinite((float)norm))
			goto factors_zero;
		ann_rbq_rotate(q, r, o);
		for (size_t j = 0; j < dp; j++) {
			/* the transform's float partial sums can overflow before its
			 * scaling though |r| fits: refused, never a NaN level */
			if (!isfinite(o[j])) {
				rc = ann_err(err, ANN_E_INVAL, "rabitq encode: row %zu: the rotation of its residual "
					     "(norm %g) overflows float", row, norm);
				goto out;
			}
			a[j] = fabs((double)o[j]) / norm;
		}
		if (be)
			quantise_ex(a, dp, be, k, scratch);
		else
			memset(k, 0, dp);
		double yo = 0, yy = 0;
		for (size_t j = 0; j < dp; j++) {
			double y = k[j] + 0.5;
			yo += y * a[j];
			yy += y * y;
		}
		/* sign plane: bit j of byte j / 8; ex plane: e_j in bits j be ..
		 * j be + be - 1 of an LSB-first stream (dp be is a multiple of 8) */
		uint8_t *sp = rec, *ep = rec + q->sign_bytes;
		for (size_t j = 0; j < dp; j += 8) {
			unsigned byte = 0;
			for (unsigned b = 0; b < 8; b++)
				byte |= (unsigned)(o[j + b] > 0) << b;
			sp[j / 8] = (uint8_t)byte;
		}
		if (be) {
			uint32_t acc = 0;
			unsigned nbits = 0;
			for (size_t j = 0; j < dp; j++) {
				uint32_t e = o[j] > 0 ? k[j] : K - 1 - k[j];
				acc |= e << nbits;
				nbits += be;
				if (nbits >= 8) {
					*ep++ = (uint8_t)acc;
					acc >>= 8;
					nbits -= 8;
				}
			}
		}
		if (!(yo > 0))
			goto factors_zero;
		double cosv = yo / sqrt(yy);
		double tanv = cosv >= 1 ? 0 : sqrt(1 - cosv * cosv) / cosv;
		double t16 = ceil(tanv * RBQ_TAN_SCALE);
		uint8_t *fp = rec + q->sign_bytes + q->ex_bytes;
		ann_stf32(fp, (float)norm);
		ann_stf32(fp + 4, (float)(norm / yo));
		ann_st16(fp + 8, (uint16_t)(t16 > 65535 ? 65535 : t16));
		continue;
	factors_zero:
		/* all-zero record: est = |q_r|^2 (L2) or -<c, q> (IP), exact
		 * since the vector is the centre; a norm overflowing float is
		 * refused instead */
		if (isfinite(norm) && !isfinite((float)norm)) {
			rc = ann_err(err, ANN_E_INVAL, "rabitq encode: row %zu: residual norm %g overflows float",
				     row, norm);
			goto out;
		}
		memset(rec, 0, q->rec_bytes);
	}
out:
	ann_free(scratch);
	return rc;
}

/* ---- query state ------------------------------------------------------------ */

int ann_rbq_query_new(const ann_rbq *q, ann_rbq_query **out, ann_error *err)
{
	*out = NULL;
	const size_t dim = q->dim, dp = q->dp;
	size_t bytes = dp / 4 * 32 + dp * sizeof(float) + dim * sizeof(float) + dp * sizeof(int16_t);
	ann_rbq_query *s = ann_calloc(1, sizeof(*s));
	uint8_t *blk = ann_aligned_alloc(64, bytes);
	if (!s || !blk) {
		ann_free(s);
		ann_aligned_free(blk);
		return ann_err(err, ANN_E_NOMEM, "rabitq query: out of memory (%zu bytes)", bytes);
	}
	s->q = q;
	s->eps0 = ANN_RBQ_EPS0;
	s->simd = ANN_SIMD_SCALAR;
	if (ann_simd_active() >= ANN_SIMD_AVX2 && ann_kernels_for(ANN_SIMD_AVX2))
		s->simd = ANN_SIMD_AVX2;
	s->rq = (float *)(void *)blk; /* 64-byte aligned */
	s->tmp = s->rq + dp;
	s->qi = (int16_t *)(void *)(s->tmp + dim);
	s->tab = (uint8_t *)(void *)(s->qi + dp);
	s->block_bytes = bytes;
	*out = s;
	return 0;
}

void ann_rbq_query_free(ann_rbq_query *s)
{
	if (!s)
		return;
	ann_aligned_free(s->rq);
	ann_free(s);
}

size_t ann_rbq_query_sizeof(const ann_rbq_query *s)
{
	return sizeof(*s) + s->block_bytes;
}

void ann_rbq_query_set_eps0(ann_rbq_query *s, float eps0)
{
	s->eps0 = eps0;
}

int ann_rbq_query_set_simd(ann_rbq_query *s, ann_simd_level level, ann_error *err)
{
	if (level != ANN_SIMD_SCALAR && !ann_kernels_for(level))
		return ann_err(err, ANN_E_UNSUPPORTED, "rabitq: this CPU cannot run %s kernels",
			       ann_simd_name(level));
	s->simd = level >= ANN_SIMD_AVX2 ? ANN_SIMD_AVX2 : ANN_SIMD_SCALAR;
	return 0;
}

void ann_rbq_tables(const int16_t *qi, size_t groups, uint8_t *tab)
{
	/* entry m = sum of qi[4 g + t] over the bits t of m, built from the
	 * entry without m's lowest bit; stored as U = T + 8192 in two bytes */
	for (size_t g = 0; g < groups; g++) {
		int32_t t[16];
		const int16_t *v = qi + 4 * g;
		uint8_t *o = tab + 32 * g;
		t[0] = 0;
		for (unsigned m = 1; m < 16; m++) {
			unsigned low = m & (0u - m);
			t[m] = t[m ^ low] + v[__builtin_ctz(m)];
		}
		for (unsigned m = 0; m < 16; m++) {
			uint32_t u = (uint32_t)(t[m] + 8192);
			o[m] = (uint8_t)(u & 255u);
			o[16 + m] = (uint8_t)(u >> 8);
		}
	}
}

/* What follows the rotated residual s->rq and s->qn2 in every prepare:
 * its sum, the quantised query and the tables. */
static void prepare_tail(ann_rbq_query *s)
{
	const size_t dp = s->q->dp;
	s->qnorm = sqrt(s->qn2);
	if (s->simd >= ANN_SIMD_AVX2) {
		s->sum_rq = ann_rbq_sum_avx2(s->rq, dp);
		float amax = ann_rbq_absmax_avx2(s->rq, dp);
		s->delta = amax > 0 ? (double)amax / RBQ_QI_MAX : 1.0;
		ann_rbq_quant_avx2(s->rq, dp, (float)(1.0 / s->delta), s->qi);
		ann_rbq_tables_avx2(s->qi, dp / 4, s->tab);
		s->prepared = true;
		return;
	}
	double sum[4] = {0, 0, 0, 0};
	for (size_t j = 0; j < dp; j++)
		sum[j & 3] += s->rq[j];
	s->sum_rq = (sum[0] + sum[1]) + (sum[2] + sum[3]);
	float amax = 0;
	for (size_t j = 0; j < dp; j++) {
		float v = fabsf(s->rq[j]);
		amax = v > amax ? v : amax;
	}
	s->delta = amax > 0 ? (double)amax / RBQ_QI_MAX : 1.0;
	float inv = (float)(1.0 / s->delta);
	for (size_t j = 0; j < dp; j++) {
		long v = lrintf(s->rq[j] * inv);
		s->qi[j] = (int16_t)(v > RBQ_QI_MAX ? RBQ_QI_MAX : v < -RBQ_QI_MAX ? -RBQ_QI_MAX : v);
	}
	ann_rbq_tables(s->qi, dp / 4, s->tab);
	s->prepared = true;
}

void ann_rbq_query_prepare(ann_rbq_query *s, ann_metric m, const float *qv, const float *c)
{
	const ann_rbq *q = s->q;
	const size_t dim = q->dim;
	s->m = m == ANN_METRIC_L2 ? ANN_METRIC_L2 : ANN_METRIC_IP;
	/* double sums in 4 interleaved chains (coordinate j adds to chain j mod
	 * 4), combined as (a0 + a1) + (a2 + a3): the same order in every form,
	 * four times the throughput of one chain */
	if (s->simd >= ANN_SIMD_AVX2) {
		s->cq = 0;
		if (s->m == ANN_METRIC_L2) {
			s->qn2 = ann_rbq_resid_avx2(qv, c, dim, s->tmp);
			rotate_at(q, s->simd, s->tmp, s->rq);
		} else {
			ann_rbq_dots_avx2(qv, c, dim, &s->qn2, &s->cq);
			rotate_at(q, s->simd, qv, s->rq);
		}
		prepare_tail(s);
		return;
	}
	double n2[4] = {0, 0, 0, 0}, cq[4] = {0, 0, 0, 0};
	if (s->m == ANN_METRIC_L2) {
		for (size_t j = 0; j < dim; j++) {
			s->tmp[j] = qv[j] - c[j];
			double d = (double)qv[j] - c[j];
			n2[j & 3] += d * d;
		}
		rotate_at(q, s->simd, s->tmp, s->rq);
	} else {
		for (size_t j = 0; j < dim; j++) {
			n2[j & 3] += (double)qv[j] * qv[j];
			cq[j & 3] += (double)qv[j] * c[j];
		}
		rotate_at(q, s->simd, qv, s->rq);
	}
	s->qn2 = (n2[0] + n2[1]) + (n2[2] + n2[3]);
	s->cq = (cq[0] + cq[1]) + (cq[2] + cq[3]);
	prepare_tail(s);
}

void ann_rbq_query_prepare_rotated(ann_rbq_query *s, const float *rq, const float *rc)
{
	const size_t dp = s->q->dp;
	s->m = ANN_METRIC_L2;
	s->cq = 0;
	if (s->simd >= ANN_SIMD_AVX2) {
		s->qn2 = ann_rbq_resid_avx2(rq, rc, dp, s->rq);
	} else {
		double n2[4] = {0, 0, 0, 0};
		for (size_t j = 0; j < dp; j++) {
			s->rq[j] = rq[j] - rc[j];
			double d = (double)rq[j] - rc[j];
			n2[j & 3] += d * d;
		}
		s->qn2 = (n2[0] + n2[1]) + (n2[2] + n2[3]);
	}
	prepare_tail(s);
}

/* ---- estimate ----------------------------------------------------------------- */

/* sum over groups g of T_g[nibble g of the 1-bit plane p] */
static int64_t plane_sum(const uint8_t *tab, const uint8_t *p, size_t groups)
{
	int64_t s = 0;
	for (size_t g = 0; g < groups; g++) {
		unsigned nib = (p[g / 2] >> (4 * (g & 1))) & 15u;
		s += (int64_t)tab[32 * g + nib] + 256 * (int64_t)tab[32 * g + 16 + nib];
	}
	return s - 8192 * (int64_t)groups;
}

void ann_rbq_scan_scalar(const ann_rbq_scan *a, const uint8_t *codes, size_t n, int64_t *Y)
{
	const unsigned be = a->be;
	const uint32_t mask = (1u << be) - 1;
	for (size_t i = 0; i < n; i++) {
		const uint8_t *rec = codes + i * a->rec_bytes;
		int64_t s = plane_sum(a->tab, rec, a->groups), e = 0;
		if (be == 1) {
			e = plane_sum(a->tab, rec + a->sign_bytes, a->dp / 4);
		} else if (be) {
			const uint8_t *ep = rec + a->sign_bytes;
			for (size_t j = 0; j < a->dp; j++) {
				size_t bit = j * be;
				uint32_t v = ep[bit / 8];
				if ((bit % 8) + be > 8)
					v |= (uint32_t)ep[bit / 8 + 1] << 8;
				e += (int64_t)((v >> (bit % 8)) & mask) * a->qi[j];
			}
		}
		Y[i] = s * ((int64_t)1 << be) + e;
	}
}

/* ann_rbq_estimate and ann_rbq_estimate_split: records of `stride` bytes,
 * their factors in the record (f NULL) or in f->rn, f->fip, f->tan. */
typedef struct factors {
	const float *rn, *fip, *tan;
} factors;

/* One chunk's sums in the query's kernel form (rabitq_kernels.h). */
static void scan(const ann_rbq_query *s, const ann_rbq_scan *a, const uint8_t *base, size_t cn, int64_t *Y)
{
	if (s->simd >= ANN_SIMD_AVX2)
		ann_rbq_scan_avx2(a, base, cn, Y);
	else
		ann_rbq_scan_scalar(a, base, cn, Y);
}

static void estimate(const ann_rbq_query *s, const uint8_t *codes, size_t stride, const factors *f, size_t n,
		     float *est, float *width)
{
	const ann_rbq *q = s->q;
	ann_rbq_scan a = {
		.tab = s->tab,
		.qi = s->qi,
		.groups = q->dp / 4,
		.dp = q->dp,
		.be = q->be,
		.sign_bytes = q->sign_bytes,
		.rec_bytes = stride,
	};
	const double half = ((double)(1u << q->bits) - 1) / 2;
	const double yconst = half * s->sum_rq;
	const double wscale = (double)s->eps0 / sqrt((double)q->dp - 1) / RBQ_TAN_SCALE * s->qnorm *
			      (s->m == ANN_METRIC_L2 ? 2.0 : 1.0);
	const ann_rbq_fin fin = {s->delta, yconst, s->qn2, s->cq, wscale, s->m == ANN_METRIC_L2};
	int64_t Y[RBQ_CHUNK];
	for (size_t i0 = 0; i0 < n; i0 += RBQ_CHUNK) {
		size_t cn = ANN_MIN(n - i0, (size_t)RBQ_CHUNK);
		const uint8_t *base = codes + i0 * stride;
		scan(s, &a, base, cn, Y);
		size_t done = 0; /* AVX2: its whole steps, the scalar loop the rest */
		if (f && s->simd >= ANN_SIMD_AVX2)
			done = ann_rbq_finish_avx2(&fin, Y, f->rn + i0, f->fip + i0, f->tan + i0, cn, est + i0,
						   width ? width + i0 : NULL);
		for (size_t i = done; i < cn; i++) {
			double rn, fip, tan16;
			if (f) {
				rn = f->rn[i0 + i];
				fip = f->fip[i0 + i];
				tan16 = f->tan[i0 + i];
			} else {
				const uint8_t *fp = base + i * stride + q->sign_bytes + q->ex_bytes;
				rn = ann_ldf32(fp);
				fip = ann_ldf32(fp + 4);
				tan16 = ann_ld16(fp + 8);
			}
			double yq = s->delta * (double)Y[i] - yconst;
			double ip = fip * yq; /* |r| <o, q'> estimate */
			if (s->m == ANN_METRIC_L2)
				est[i0 + i] = (float)(rn * rn + s->qn2 - 2.0 * ip);
			else
				est[i0 + i] = (float)(-(s->cq + ip));
			if (width)
				width[i0 + i] = (float)(wscale * rn * tan16);
		}
	}
}

void ann_rbq_estimate(const ann_rbq_query *s, const uint8_t *codes, size_t n, float *est, float *width)
{
	estimate(s, codes, s->q->rec_bytes, NULL, n, est, width);
}

void ann_rbq_estimate_split(const ann_rbq_query *s, const uint8_t *codes, size_t stride, size_t n, const float *rn,
			    const float *fip, const float *tan, float *est, float *width)
{
	const factors f = {rn, fip, tan};
	estimate(s, codes, stride, &f, n, est, width);
}

void ann_rbq_estimate_prefix(const ann_rbq_query *s, const uint8_t *codes, size_t n, uint32_t pdims, float *est)
{
	const ann_rbq *q = s->q;
	ann_rbq_scan a = {
		.tab = s->tab,
		.qi = s->qi,
		.groups = pdims / 4,
		.dp = pdims,
		.be = 0, /* the sign plane only */
		.sign_bytes = q->sign_bytes,
		.rec_bytes = q->rec_bytes,
	};
	double psum[4] = {0, 0, 0, 0};
	for (size_t j = 0; j < pdims; j++)
		psum[j & 3] += s->rq[j];
	const double yconst = 0.5 * ((psum[0] + psum[1]) + (psum[2] + psum[3]));
	const double scale = (double)q->dp / pdims;
	int64_t Y[RBQ_CHUNK];
	for (size_t i0 = 0; i0 < n; i0 += RBQ_CHUNK) {
		size_t cn = ANN_MIN(n - i0, (size_t)RBQ_CHUNK);
		const uint8_t *base = codes + i0 * q->rec_bytes;
		scan(s, &a, base, cn, Y);
		for (size_t i = 0; i < cn; i++) {
			const uint8_t *fp = base + i * q->rec_bytes + q->sign_bytes + q->ex_bytes;
			double rn = ann_ldf32(fp), fip = ann_ldf32(fp + 4);
			double ip = fip * scale * (s->delta * (double)Y[i] - yconst);
			if (s->m == ANN_METRIC_L2)
				est[i0 + i] = (float)(rn * rn + s->qn2 - 2.0 * ip);
			else
				est[i0 + i] = (float)(-(s->cq + ip));
		}
	}
}
