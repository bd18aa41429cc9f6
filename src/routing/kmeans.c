/* SPDX-License-Identifier: MIT */
/*
 * kmeans.c: k-means as specified in kmeans.h: seeding, Lloyd and mini-batch
 * iterations over blocked sgemm distance tiles shared among pthreads,
 * empty-cluster repair by splitting, the small-cluster pass, the
 * regret-ordered size cap, the two levels, and the
 * nearest-centroids query. All distances come from distance.h.
 */
#include "kmeans.h"

#include <assert.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#if defined(__SSE2__)
#include <xmmintrin.h>
#endif

#include "distance.h"

#define KM_TILE_FLOATS ((size_t)1 << 18) /* distance tile per worker: 1 MiB */
#define KM_CHUNK 1024                    /* centroids per tile */
#define KM_BLOCK_MIN 16
#define KM_BLOCK_MAX 4096
#define KM_MAX_THREADS 16
#define KM_PP_ROUNDS 128 /* seeding rounds for large k */
#define KM_BAL_CAND 16   /* candidate clusters per point in the size cap */
#define KM_MB_PATIENCE 10 /* mini-batches without improvement before stopping */
#define KM_NONE UINT32_MAX
#define KM_REFINE 3        /* two levels: Lloyd steps over all k centroids after the fine level */
#define KM_REFINE_PROBES 8 /* ... each assigning through the tree's 8 nearest cells */
#define KM_SMALL_DIV 8     /* small cluster: fewer than n / (8 k) points (the small-cluster pass) */
#define KM_SMALL_ROUNDS 3  /* small-cluster passes at most, each followed by an assignment */

/* ---- blocked passes ------------------------------------------------------
 * A pass runs rows (points, or points picked by idx) against a set of
 * centroids, block by block; each block is independent and writes only its
 * own rows (and blocksum[b]), so the outcome does not depend on how blocks
 * are spread over threads. Block size depends on the centroid count only. */

enum km_mode {
	KM_ARGMIN, /* assign[i], mind[i] if set, blocksum[b] = sum of the minima */
	KM_MINUPD, /* mind[i] = min(mind[i], distance to the nearest centroid) */
	KM_TOPN,   /* top_ids / top_d rows of `stride`, nprobe sorted then padding */
};

/* ---- top-n of a row: a filtered buffer and quickselect ---------------------
 * The n smallest (distance, id) pairs of a row, ties by id, as ann_topk keeps
 * them, but without a heap push per improvement: entries below the bound are
 * appended to a buffer of KM_SEL_CAP(n) pairs, and a full buffer is cut back
 * to its n smallest by quickselect, which lowers the bound to the largest
 * distance kept. A row offers its entries in increasing id, so an entry equal
 * to the bound has a larger id than every pair kept and rightly stays out,
 * and a stale (higher) bound only lets more in: the result is the heap's,
 * pair for pair. A heap spent ~30 ns per improvement, ~250 of them per query
 * at nprobe 48 of 2943 centroids (9% of an in-memory SIFT search). */
typedef struct km_pair {
	float d;
	uint32_t id;
} km_pair;

typedef struct km_sel {
	km_pair *a;
	size_t cnt, cap, n;
	float bound; /* +inf until n pairs are known */
	uint32_t *pre; /* KM_PRE_KEYS keys of scratch, shared by a worker's rows (km_sel_prebound) */
} km_sel;

#define KM_SEL_CAP(n) (2 * (n) + 64)
#define KM_GROUP 8 /* km_sel_prebound's groups */
#define KM_PRE_KEYS (KM_CHUNK / KM_GROUP) /* one key per group of a chunk */

static inline bool km_pair_lt(km_pair x, km_pair y)
{
	return x.d < y.d || (x.d == y.d && x.id < y.id);
}

static void km_sel_init(km_sel *s, km_pair *buf, size_t n, uint32_t *pre)
{
	s->pre = pre;
	s->a = buf;
	s->cnt = 0;
	s->cap = KM_SEL_CAP(n);
	s->n = n;
	s->bound = __builtin_inff();
}

static int km_pair_cmp(const void *x, const void *y)
{
	const km_pair *a = x, *b = y;
	return km_pair_lt(*a, *b) ? -1 : km_pair_lt(*b, *a);
}

/* Sorts a[0..n) by (distance, id): insertion sort for the few, qsort for the many. */
static void km_pair_sort(km_pair *a, size_t n)
{
	if (n > 32) {
		qsort(a, n, sizeof *a, km_pair_cmp);
		return;
	}
	for (size_t i = 1; i < n; i++) {
		km_pair v = a[i];
		size_t j = i;
		for (; j > 0 && km_pair_lt(v, a[j - 1]); j--)
			a[j] = a[j - 1];
		a[j] = v;
	}
}

/* a[0..n) := the n smallest of a[0..cnt) (n < cnt), in no order; distinct pairs */
static void km_pair_select(km_pair *a, size_t cnt, size_t n)
{
	size_t lo = 0, hi = cnt; /* a[0..lo) < a[lo..hi) < a[hi..cnt), lo <= n <= hi */
	while (hi - lo > 16) {
		km_pair x = a[lo], y = a[lo + (hi - lo) / 2], z = a[hi - 1], p;
		if (km_pair_lt(x, y))
			p = km_pair_lt(y, z) ? y : km_pair_lt(x, z) ? z : x;
		else
			p = km_pair_lt(x, z) ? x : km_pair_lt(y, z) ? z : y;
		size_t i = lo, at = lo;
		for (size_t j = lo; j < hi; j++) {
			if (km_pair_lt(a[j], p)) {
				km_pair t = a[i];
				a[i] = a[j];
				a[j] = t;
				if (at == i)
					at = j; /* the pivot moved with the swap */
				i++;
			} else if (a[j].d == p.d && a[j].id == p.id) {
				at = j;
			}
		}
		if (i >= n) {
			hi = i;
		} else { /* all of a[lo..i) and the pivot, the smallest of the rest */
			km_pair t = a[i];
			a[i] = a[at];
			a[at] = t;
			lo = i + 1;
		}
		if (lo == n || hi == n)
			return;
	}
	km_pair_sort(a + lo, hi - lo);
}

static void km_sel_cut(km_sel *s)
{
	km_pair_select(s->a, s->cnt, s->n);
	s->cnt = s->n;
	float b = s->a[0].d;
	for (size_t i = 1; i < s->n; i++)
		b = s->a[i].d > b ? s->a[i].d : b;
	if (b < s->bound) /* a pre-bound may be tighter already */
		s->bound = b;
}

/* Before a row's first chunk is offered (km_row_topn): a bound from n values that are real,
 * distinct entries of the row (each group of KM_GROUP consecutive entries' smallest), so that the n-th smallest of the row is at most their n-th smallest and an
 * entry above it cannot be in the top n. Entries equal to it still pass (the bound is the next
 * float up). On SIFT photos' 2943 centroids at n = 48 the first chunk then lets ~60 entries in
 * instead of ~250. Done once a row: for later chunks the kept pairs bound as tightly. */
static void km_sel_prebound(km_sel *s, const float *r, size_t kc)
{
	size_t m = 0, g = 0;
#if defined(__SSE2__)
	/* 4 groups a step: min of each group's two halves, a 4 x 4 transpose, the mins across; a
	 * min selects one of its inputs (the second when either is NaN), so every value kept is an
	 * entry of the row, and NaN fails the bound test */
	const __m128 vb = _mm_set1_ps(s->bound);
	for (; g + 4 * KM_GROUP <= kc; g += 4 * KM_GROUP) {
		__m128 a0 = _mm_min_ps(_mm_loadu_ps(r + g), _mm_loadu_ps(r + g + 4));
		__m128 a1 = _mm_min_ps(_mm_loadu_ps(r + g + 8), _mm_loadu_ps(r + g + 12));
		__m128 a2 = _mm_min_ps(_mm_loadu_ps(r + g + 16), _mm_loadu_ps(r + g + 20));
		__m128 a3 = _mm_min_ps(_mm_loadu_ps(r + g + 24), _mm_loadu_ps(r + g + 28));
		_MM_TRANSPOSE4_PS(a0, a1, a2, a3);
		__m128 v = _mm_min_ps(_mm_min_ps(a0, a1), _mm_min_ps(a2, a3));
		int keep = _mm_movemask_ps(_mm_cmplt_ps(v, vb));
		float t[4];
		_mm_storeu_ps(t, v);
		for (int l = 0; l < 4; l++)
			if (keep & (1 << l))
				s->pre[m++] = ann_fkey(t[l]);
	}
#endif
	for (; g + KM_GROUP <= kc; g += KM_GROUP) {
		float v = r[g];
		for (size_t i = 1; i < KM_GROUP; i++)
			v = r[g + i] < v ? r[g + i] : v;
		if (v < s->bound) /* NaN never */
			s->pre[m++] = ann_fkey(v);
	}
	if (m < s->n)
		return;
	float b = nextafterf(ann_fval(ann_kth_u32(s->pre, m, s->n - 1)), __builtin_inff());
	if (b < s->bound)
		s->bound = b;
}

static inline void km_sel_offer(km_sel *s, float d, uint32_t id)
{
	if (s->cnt == s->cap) {
		km_sel_cut(s);
		if (!(d < s->bound))
			return;
	}
	s->a[s->cnt++] = (km_pair){d, id};
	if (s->cnt == s->n && s->bound == __builtin_inff()) {
		/* the first n: the bound is their largest */
		float b = s->a[0].d;
		for (size_t i = 1; i < s->n; i++)
			b = s->a[i].d > b ? s->a[i].d : b;
		s->bound = b;
	}
}

/* The row's n best ascending into dist/id[0..n), padded with (+inf, -1). */
static void km_sel_finish(km_sel *s, float *dist, int64_t *id)
{
	if (s->cnt > s->n)
		km_pair_select(s->a, s->cnt, s->n);
	size_t m = ANN_MIN(s->cnt, s->n);
	km_pair_sort(s->a, m);
	for (size_t i = 0; i < s->n; i++) {
		dist[i] = i < m ? s->a[i].d : __builtin_inff();
		id[i] = i < m ? (int64_t)s->a[i].id : -1;
	}
}

typedef struct km_pass {
	enum km_mode mode;
	ann_metric metric;
	const float *x;
	const uint32_t *idx; /* row i is x[idx[i]] when set, else x[i] */
	size_t n;            /* rows */
	size_t d;
	const float *c;     /* centroids of this pass, k * d */
	const float *cnorm; /* their squared norms (L2, COSINE), else NULL */
	size_t k;
	/* Set by km_run for L2: rows and centroids are shifted by the first
	 * centroid (cs = c - shift, csn their norms) before the sgemm's
	 * |x|^2 - 2 x.c + |c|^2, so that its rounding is of the data's spread,
	 * not of its distance from the origin: on rows 1e5 from it, k-means put
	 * 80% of them in one partition. Distances do not move under a shift. */
	const float *shift, *cs, *csn;
	size_t block; /* rows per block (set by km_run) */
	size_t nprobe;
	size_t stride;
	uint32_t *assign;
	float *mind;
	double *blocksum;
	uint32_t *top_ids;
	float *top_d;
	atomic_size_t next; /* next block to take */
} km_pass;

typedef struct km_worker {
	km_pass *p;
	float *tile;   /* block * chunk */
	float *xn;     /* block squared norms */
	float *gather; /* block * d, for idx passes */
	float *bd;     /* block running minima */
	uint32_t *bi;  /* block running argmins */
	float *hd;     /* block * nprobe_max top-n distances */
	int64_t *hid;  /* block * nprobe_max top-n ids */
	km_sel *tk;    /* block selections */
	km_pair *sb;   /* block * KM_SEL_CAP(nprobe_max) selection buffers */
	uint32_t *pre; /* KM_PRE_KEYS: km_sel_prebound's scratch */
} km_worker;

typedef struct km_pool {
	int threads;
	size_t d, kmax, chunk, block, nprobe_max;
	size_t bytes; /* allocated by the pool */
	float *shift, *cs, *csn; /* d, kmax * d, kmax: an L2 pass's shifted centroids (km_pass) */
	km_worker w[KM_MAX_THREADS];
} km_pool;

static void *km_alloc(size_t count, size_t size, size_t *bytes)
{
	size_t n;
	if (!ann_mul_ok(count, size, &n))
		return NULL;
	void *p = ann_aligned_alloc(64, n ? n : 1);
	if (p)
		*bytes += n;
	return p;
}

static void km_pool_free(km_pool *pl)
{
	ann_aligned_free(pl->shift);
	ann_aligned_free(pl->cs);
	ann_aligned_free(pl->csn);
	pl->shift = pl->cs = pl->csn = NULL;
	for (int t = 0; t < KM_MAX_THREADS; t++) {
		km_worker *w = &pl->w[t];
		ann_aligned_free(w->tile);
		ann_aligned_free(w->xn);
		ann_aligned_free(w->gather);
		ann_aligned_free(w->bd);
		ann_aligned_free(w->bi);
		ann_aligned_free(w->hd);
		ann_aligned_free(w->hid);
		ann_aligned_free(w->tk);
		ann_aligned_free(w->sb);
		ann_aligned_free(w->pre);
		memset(w, 0, sizeof *w);
	}
}

static size_t km_block_rows(size_t kmax)
{
	size_t chunk = ANN_MIN(kmax, (size_t)KM_CHUNK);
	size_t b = KM_TILE_FLOATS / chunk;
	return ANN_MAX((size_t)KM_BLOCK_MIN, ANN_MIN(b, (size_t)KM_BLOCK_MAX));
}

/* gather: rows are copied into a per-worker buffer (passes with idx, and
 * every L2 pass, whose rows are shifted there). */
static int km_pool_init(km_pool *pl, int threads, size_t d, size_t kmax, size_t nprobe_max, bool gather,
			ann_metric metric, ann_error *err)
{
	memset(pl, 0, sizeof *pl);
	pl->threads = threads;
	pl->d = d;
	pl->kmax = kmax;
	pl->chunk = ANN_MIN(kmax, (size_t)KM_CHUNK);
	pl->block = km_block_rows(kmax);
	pl->nprobe_max = nprobe_max;
	size_t B = pl->block;
	if (metric == ANN_METRIC_L2) {
		gather = true;
		pl->shift = km_alloc(d, sizeof(float), &pl->bytes);
		pl->cs = km_alloc(kmax, d * sizeof(float), &pl->bytes);
		pl->csn = km_alloc(kmax, sizeof(float), &pl->bytes);
		if (!pl->shift || !pl->cs || !pl->csn)
			goto nomem;
	}
	for (int t = 0; t < threads; t++) {
		km_worker *w = &pl->w[t];
		w->tile = km_alloc(B * pl->chunk, sizeof(float), &pl->bytes);
		w->xn = km_alloc(B, sizeof(float), &pl->bytes);
		w->bd = km_alloc(B, sizeof(float), &pl->bytes);
		w->bi = km_alloc(B, sizeof(uint32_t), &pl->bytes);
		if (!w->tile || !w->xn || !w->bd || !w->bi)
			goto nomem;
		if (gather && !(w->gather = km_alloc(B, d * sizeof(float), &pl->bytes)))
			goto nomem;
		if (nprobe_max) {
			w->hd = km_alloc(B * nprobe_max, sizeof(float), &pl->bytes);
			w->hid = km_alloc(B * nprobe_max, sizeof(int64_t), &pl->bytes);
			w->tk = km_alloc(B, sizeof(km_sel), &pl->bytes);
			w->sb = km_alloc(B * KM_SEL_CAP(nprobe_max), sizeof(km_pair), &pl->bytes);
			w->pre = km_alloc(KM_PRE_KEYS, sizeof(uint32_t), &pl->bytes);
			if (!w->hd || !w->hid || !w->tk || !w->sb || !w->pre)
				goto nomem;
		}
	}
	return ANN_OK;
nomem:
	km_pool_free(pl);
	return ann_err(err, ANN_E_NOMEM, "kmeans: cannot allocate tiles (%d threads, %zu x %zu)", threads, B,
		       kmax);
}

/* Smallest of n floats (n >= 1). */
static inline float km_rowmin(const float *r, size_t n)
{
	size_t j = 0;
	float m = r[0];
#if defined(__SSE2__)
	if (n >= 16) {
		__m128 a = _mm_loadu_ps(r), b = _mm_loadu_ps(r + 4);
		__m128 c = _mm_loadu_ps(r + 8), e = _mm_loadu_ps(r + 12);
		for (j = 16; j + 16 <= n; j += 16) {
			a = _mm_min_ps(a, _mm_loadu_ps(r + j));
			b = _mm_min_ps(b, _mm_loadu_ps(r + j + 4));
			c = _mm_min_ps(c, _mm_loadu_ps(r + j + 8));
			e = _mm_min_ps(e, _mm_loadu_ps(r + j + 12));
		}
		a = _mm_min_ps(_mm_min_ps(a, b), _mm_min_ps(c, e));
		float t[4];
		_mm_storeu_ps(t, a);
		m = ANN_MIN(ANN_MIN(t[0], t[1]), ANN_MIN(t[2], t[3]));
	}
#endif
	for (; j < n; j++)
		if (r[j] < m)
			m = r[j];
	return m;
}

/* Offers row entries r[0..n) with ids base.. to t. */
static inline void km_row_topn(const float *r, size_t n, uint32_t base, km_sel *t)
{
	if (t->n == 0)
		return;
	if (t->cnt == 0 && n >= 4 * t->n && t->n <= KM_CHUNK / KM_GROUP / 2) /* a row's first chunk */
		km_sel_prebound(t, r, n);
	size_t j = 0;
#if defined(__SSE2__)
	for (; j + 4 <= n; j += 4) {
		int mask = _mm_movemask_ps(_mm_cmplt_ps(_mm_loadu_ps(r + j), _mm_set1_ps(t->bound)));
		while (mask) {
			int l = __builtin_ctz((unsigned)mask);
			mask &= mask - 1;
			if (r[j + l] < t->bound)
				km_sel_offer(t, r[j + l], base + (uint32_t)(j + (size_t)l));
		}
	}
#endif
	for (; j < n; j++)
		if (r[j] < t->bound)
			km_sel_offer(t, r[j], base + (uint32_t)j);
}

static void km_block(km_worker *w, size_t b)
{
	const km_pass *p = w->p;
	size_t d = p->d, lo = b * p->block;
	size_t nb = ANN_MIN(p->block, p->n - lo);
	size_t chunk = ANN_MIN(p->k, (size_t)KM_CHUNK);
	const float *xb = p->x + lo * d;

	if (p->shift) {
		for (size_t i = 0; i < nb; i++)
			ann_sub_f32(w->gather + i * d, p->idx ? p->x + (size_t)p->idx[lo + i] * d : xb + i * d, p->shift, d);
		xb = w->gather;
	} else if (p->idx) {
		for (size_t i = 0; i < nb; i++)
			memcpy(w->gather + i * d, p->x + (size_t)p->idx[lo + i] * d, d * sizeof(float));
		xb = w->gather;
	}
	const float *cb = p->shift ? p->cs : p->c, *cnb = p->shift ? p->csn : p->cnorm;
	const float *xn = NULL;
	if (p->metric != ANN_METRIC_IP) {
		ann_norms_f32(xb, nb, d, w->xn);
		xn = w->xn;
	}
	for (size_t i = 0; i < nb; i++) {
		w->bd[i] = __builtin_inff();
		w->bi[i] = KM_NONE;
		if (p->mode == KM_TOPN)
			km_sel_init(&w->tk[i], w->sb + i * KM_SEL_CAP(p->nprobe), p->nprobe, w->pre);
	}
	for (size_t c0 = 0; c0 < p->k; c0 += chunk) {
		size_t kc = ANN_MIN(chunk, p->k - c0);
		const float *cn = cnb ? cnb + c0 : NULL;
		ann_dist_batch(p->metric, xb, nb, xn, cb + c0 * d, kc, cn, d, w->tile);
		for (size_t i = 0; i < nb; i++) {
			const float *row = w->tile + i * kc;
			if (p->mode == KM_TOPN) {
				km_row_topn(row, kc, (uint32_t)c0, &w->tk[i]);
				continue;
			}
			float m = km_rowmin(row, kc);
			if (m < w->bd[i]) {
				w->bd[i] = m;
				if (p->mode == KM_ARGMIN) {
					size_t j = 0;
					while (j + 1 < kc && !(row[j] == m))
						j++;
					w->bi[i] = (uint32_t)(c0 + j);
				}
			}
		}
	}
	switch (p->mode) {
	case KM_ARGMIN: {
		double s = 0;
		for (size_t i = 0; i < nb; i++) {
			/* NaN distances (bad input) must not index out of range. */
			p->assign[lo + i] = w->bi[i] == KM_NONE ? 0 : w->bi[i];
			if (p->mind)
				p->mind[lo + i] = w->bd[i];
			s += w->bd[i];
		}
		p->blocksum[b] = s;
		break;
	}
	case KM_MINUPD:
		for (size_t i = 0; i < nb; i++)
			if (w->bd[i] < p->mind[lo + i])
				p->mind[lo + i] = w->bd[i];
		break;
	case KM_TOPN:
		for (size_t i = 0; i < nb; i++) {
			float *hd = w->hd + i * p->nprobe;
			int64_t *hid = w->hid + i * p->nprobe;
			km_sel_finish(&w->tk[i], hd, hid);
			uint32_t *oid = p->top_ids + (lo + i) * p->stride;
			float *od = p->top_d ? p->top_d + (lo + i) * p->stride : NULL;
			for (size_t j = 0; j < p->stride; j++) {
				bool have = j < p->nprobe && hid[j] >= 0;
				oid[j] = have ? (uint32_t)hid[j] : KM_NONE;
				if (od)
					od[j] = have ? hd[j] : __builtin_inff();
			}
		}
		break;
	}
}

static void *km_thread(void *arg)
{
	km_worker *w = arg;
	km_pass *p = w->p;
	size_t nblk = (p->n + p->block - 1) / p->block;
	for (;;) {
		size_t b = atomic_fetch_add(&p->next, 1);
		if (b >= nblk)
			break;
		km_block(w, b);
	}
	return NULL;
}

/* Runs p on the pool's threads; the calling thread is worker 0. A thread
 * that cannot be started only means fewer workers: the result is the same. */
static void km_run(km_pool *pl, km_pass *p)
{
	p->block = pl->block;
	atomic_store(&p->next, 0);
	if (p->n == 0)
		return;
	p->shift = NULL;
	/* an L2 pass runs on a pool made for L2, whose buffers hold its centroids */
	assert(p->metric != ANN_METRIC_L2 || (pl->cs && p->k <= pl->kmax));
	if (p->metric == ANN_METRIC_L2 && p->k) {
		size_t d = p->d;
		memcpy(pl->shift, p->c, d * sizeof(float));
		for (size_t i = 0; i < p->k; i++)
			ann_sub_f32(pl->cs + i * d, p->c + i * d, pl->shift, d);
		ann_norms_f32(pl->cs, p->k, d, pl->csn);
		p->shift = pl->shift;
		p->cs = pl->cs;
		p->csn = pl->csn;
	}
	size_t nblk = (p->n + p->block - 1) / p->block;
	int t = pl->threads;
	if ((size_t)t > nblk)
		t = (int)nblk;
	pthread_t tid[KM_MAX_THREADS];
	int started = 0;
	for (int i = 1; i < t; i++) {
		pl->w[i].p = p;
		if (pthread_create(&tid[i], NULL, km_thread, &pl->w[i]) != 0)
			break;
		started = i;
	}
	pl->w[0].p = p;
	km_thread(&pl->w[0]);
	for (int i = 1; i <= started; i++)
		pthread_join(tid[i], NULL);
}

/* ---- k-means state --------------------------------------------------------- */

typedef struct km {
	const ann_kmeans_opts *o;
	const ann_kernels *kern;
	const float *x;
	size_t n, d, k;
	ann_metric metric;
	float *c;          /* k * d, the caller's centroids */
	float *cnorm;      /* k squared norms (L2, COSINE) */
	uint32_t *assign;  /* n */
	double *sums;      /* k * d */
	size_t *cnt;       /* k */
	float *xscale;     /* n inverse norms (COSINE) or NULL */
	double *blocksum;  /* per block of the largest pass */
	size_t nblocksum;
	km_pool pool;
	ann_rng rng;
	ann_kmeans_stats st;
	size_t bytes;      /* live working bytes */
	size_t peak;
} km;

static void km_note(km *s, size_t more)
{
	s->bytes += more;
	if (s->bytes > s->peak)
		s->peak = s->bytes;
}

static void km_normalize(float *v, size_t d)
{
	double s = 0;
	for (size_t j = 0; j < d; j++)
		s += (double)v[j] * v[j];
	if (s > 0) {
		float inv = (float)(1.0 / sqrt(s));
		for (size_t j = 0; j < d; j++)
			v[j] *= inv;
	}
}

/* Copies point i into centroid slot c (unit length for IP/COSINE). */
static void km_set_centroid(km *s, size_t c, size_t i)
{
	float *dst = s->c + c * s->d;
	memcpy(dst, s->x + i * s->d, s->d * sizeof(float));
	if (s->metric != ANN_METRIC_L2)
		km_normalize(dst, s->d);
}

/* Exact distance of point i to centroid c. */
static float km_dist(const km *s, size_t i, size_t c)
{
	const float *xi = s->x + i * s->d, *ci = s->c + c * s->d;
	switch (s->metric) {
	case ANN_METRIC_IP:
		return -s->kern->ip_f32(xi, ci, s->d);
	case ANN_METRIC_COSINE:
		return 1.0f - s->kern->ip_f32(xi, ci, s->d) * s->xscale[i];
	default:
		return s->kern->l2_f32(xi, ci, s->d);
	}
}

/* Norms for the passes: cosine's; L2 passes take those of the shifted
 * centroids (km_run), inner product none. */
static void km_centroid_norms(km *s)
{
	if (s->metric == ANN_METRIC_COSINE)
		ann_norms_f32(s->c, s->k, s->d, s->cnorm);
}

/* One assignment step over all points; returns the inertia. */
static double km_assign(km *s)
{
	km_centroid_norms(s);
	km_pass p = {
		.mode = KM_ARGMIN,
		.metric = s->metric,
		.x = s->x,
		.n = s->n,
		.d = s->d,
		.c = s->c,
		.cnorm = s->metric != ANN_METRIC_IP ? s->cnorm : NULL,
		.k = s->k,
		.assign = s->assign,
		.blocksum = s->blocksum,
	};
	km_run(&s->pool, &p);
	double tot = 0;
	size_t nblk = (s->n + s->pool.block - 1) / s->pool.block;
	for (size_t b = 0; b < nblk; b++)
		tot += s->blocksum[b];
	return tot;
}

/* Sums of the (scaled) points of each cluster over the dimensions [d0, d1):
 * threads split the dimensions, each sum still runs in point order. */
typedef struct km_upd {
	km *s;
	size_t d0, d1;
} km_upd;

static void *km_upd_thread(void *arg)
{
	km_upd *u = arg;
	const km *s = u->s;
	size_t d = s->d;
	for (size_t i = 0; i < s->n; i++) {
		double *sm = s->sums + (size_t)s->assign[i] * d;
		const float *xi = s->x + i * d;
		if (s->xscale) {
			double sc = s->xscale[i];
			for (size_t j = u->d0; j < u->d1; j++)
				sm[j] += sc * xi[j];
		} else {
			for (size_t j = u->d0; j < u->d1; j++)
				sm[j] += xi[j];
		}
	}
	return NULL;
}

/* Centroid c from its sums: the mean (L2) or the unit-length direction. */
static void kv_from_sums(ann_metric metric, float *cv, const double *sm, size_t count, size_t d);
static void km_centroid_from_sums(km *s, size_t c, const double *sm, size_t count)
{
	kv_from_sums(s->metric, s->c + c * s->d, sm, count, s->d);
}

/* Recomputes every non-empty centroid from the current assignment. */
static void km_recompute(km *s)
{
	size_t k = s->k, d = s->d;
	memset(s->sums, 0, k * d * sizeof(double));
	memset(s->cnt, 0, k * sizeof(size_t));
	for (size_t i = 0; i < s->n; i++)
		s->cnt[s->assign[i]]++;
	int t = s->pool.threads;
	if ((size_t)t > d)
		t = (int)d;
	km_upd u[KM_MAX_THREADS];
	pthread_t tid[KM_MAX_THREADS];
	int started = 0;
	for (int i = 0; i < t; i++) {
		u[i].s = s;
		u[i].d0 = d * (size_t)i / (size_t)t;
		u[i].d1 = d * (size_t)(i + 1) / (size_t)t;
	}
	/* When a thread cannot start, worker 0 takes over the remaining range. */
	for (int i = 1; i < t; i++) {
		if (pthread_create(&tid[i], NULL, km_upd_thread, &u[i]) != 0)
			break;
		started = i;
	}
	km_upd_thread(&u[0]);
	for (int i = 1; i <= started; i++)
		pthread_join(tid[i], NULL);
	if (started + 1 < t) {
		km_upd rest = {s, u[started].d1, d};
		km_upd_thread(&rest);
	}
	for (size_t c = 0; c < k; c++)
		km_centroid_from_sums(s, c, s->sums + c * d, s->cnt[c]);
}

/* ---- splitting a cluster, and the small-cluster pass ------------------------
 * A view of a clustering (points, centroids, assignment, counts) for the
 * helpers below, which serve both the one-level state (km) and the two-level
 * refinement (which has no km). */
typedef struct km_view {
	const float *x;
	size_t n, d, k;
	ann_metric metric;
	const ann_kernels *kern;
	const float *xscale; /* COSINE: inverse norms, or NULL (computed per point) */
	float *c;            /* k x d */
	uint32_t *assign;    /* n */
	size_t *cnt;         /* k, the sizes of assign */
} km_view;

/* The weight of point i in a centroid's sum: 1, or its inverse norm (COSINE). */
static double kv_scale(const km_view *v, size_t i)
{
	if (v->metric != ANN_METRIC_COSINE)
		return 1;
	if (v->xscale)
		return v->xscale[i];
	const float *xi = v->x + i * v->d;
	double s = 0;
	for (size_t j = 0; j < v->d; j++)
		s += (double)xi[j] * xi[j];
	return s > 0 ? 1 / sqrt(s) : 0;
}

/* Centre cv from the sums of its count points: the mean (L2) or the
 * unit-length direction. Left as it is when count is 0. */
static void kv_from_sums(ann_metric metric, float *cv, const double *sm, size_t count, size_t d)
{
	if (count == 0)
		return;
	if (metric == ANN_METRIC_L2) {
		double inv = 1.0 / (double)count;
		for (size_t j = 0; j < d; j++)
			cv[j] = (float)(sm[j] * inv);
		return;
	}
	double nn = 0;
	for (size_t j = 0; j < d; j++)
		nn += sm[j] * sm[j];
	if (nn <= 0)
		return;
	double inv = 1.0 / sqrt(nn);
	for (size_t j = 0; j < d; j++)
		cv[j] = (float)(sm[j] * inv);
}

/* Sums (weighted, see kv_scale) and count of the members of cluster c. */
static size_t kv_sums(const km_view *v, size_t c, double *sm)
{
	size_t d = v->d, m = 0;
	memset(sm, 0, d * sizeof(double));
	for (size_t i = 0; i < v->n; i++) {
		if (v->assign[i] != c)
			continue;
		const float *xi = v->x + i * d;
		double sc = kv_scale(v, i);
		for (size_t j = 0; j < d; j++)
			sm[j] += sc * xi[j];
		m++;
	}
	return m;
}

/* Splits cluster L in two, the second half going to cluster e (empty, or
 * emptied by the caller): L's members are cut by the hyperplane through
 * their mean normal to far - mean, where far is the member farthest from
 * the mean, and both halves take their means. Since the hyperplane passes
 * through the mean, both halves hold points and neither is made of a few
 * outliers: the rule before (far became e's centre and took the members
 * nearer to it, the same as 2-means from there) gave an outlier a cluster of
 * its own whenever the largest cluster held one, and 2-means steps after the
 * cut drift there too (an isolated point is what 2-means prefers). Under L2
 * the cut only lowers the inertia. Returns false (and changes nothing but
 * L's centre, set to the mean) when no cut exists: every member on the
 * mean. sl, se: d doubles of scratch each. For IP/COSINE the same in the
 * space of the (normalised) points, the centres made unit. */
static bool kv_split(const km_view *v, size_t L, size_t e, double *sl, double *se)
{
	size_t d = v->d, n = v->n;
	float *cl = v->c + L * d, *ce = v->c + e * d;
	size_t m = kv_sums(v, L, sl);
	if (m < 2)
		return false;
	/* the plain mean of the (scaled) points, whatever the metric */
	for (size_t j = 0; j < d; j++)
		se[j] = sl[j] / (double)m;
	size_t far = SIZE_MAX;
	double fd = 0;
	for (size_t i = 0; i < n; i++) {
		if (v->assign[i] != L)
			continue;
		const float *xi = v->x + i * d;
		double sc = kv_scale(v, i), dd = 0;
		for (size_t j = 0; j < d; j++)
			dd += (sc * xi[j] - se[j]) * (sc * xi[j] - se[j]);
		if (far == SIZE_MAX || dd > fd) {
			fd = dd;
			far = i;
		}
	}
	if (!(fd > 0)) {
		kv_from_sums(v->metric, cl, sl, m, d);
		return false;
	}
	/* the normal (far - mean) in ce, the mean's offset along it */
	const float *xf = v->x + far * d;
	double sf = kv_scale(v, far), off = 0;
	for (size_t j = 0; j < d; j++) {
		ce[j] = (float)(sf * xf[j] - se[j]);
		off += se[j] * ce[j];
	}
	memset(sl, 0, d * sizeof(double));
	memset(se, 0, d * sizeof(double));
	size_t nl = 0, ne = 0;
	for (size_t i = 0; i < n; i++) {
		if (v->assign[i] != L)
			continue;
		const float *xi = v->x + i * d;
		double sc = kv_scale(v, i), p = 0;
		for (size_t j = 0; j < d; j++)
			p += sc * xi[j] * ce[j];
		double *dst = sl;
		if (p > off) {
			v->assign[i] = (uint32_t)e;
			dst = se;
			ne++;
		} else {
			nl++;
		}
		for (size_t j = 0; j < d; j++)
			dst[j] += sc * xi[j];
	}
	if (ne == 0 || nl == 0) { /* rounding put every member on one side */
		for (size_t i = 0; i < n; i++)
			if (v->assign[i] == e)
				v->assign[i] = (uint32_t)L;
		for (size_t j = 0; j < d; j++)
			sl[j] += se[j];
		kv_from_sums(v->metric, cl, sl, m, d);
		return false;
	}
	kv_from_sums(v->metric, cl, sl, nl, d);
	kv_from_sums(v->metric, ce, se, ne, d);
	v->cnt[L] = nl;
	v->cnt[e] = ne;
	return true;
}

/* The largest cluster (the lowest index among equals). */
static size_t kv_largest(const km_view *v)
{
	size_t L = 0;
	for (size_t c = 1; c < v->k; c++)
		if (v->cnt[c] > v->cnt[L])
			L = c;
	return L;
}

/* The small-cluster pass (kmeans.h): every cluster with fewer than
 * max(1, n / (KM_SMALL_DIV k)) points gives its points to their nearest
 * other non-small centroid, and its centroid splits the largest cluster
 * (kv_split), in index order, while the largest has at least twice the
 * bound. Returns the clusters moved. Memory: k bytes, d floats and 2 d
 * doubles. Sequential: the result does not depend on threads. */
static int kv_small(km_view *v, size_t *moved, ann_error *err)
{
	size_t k = v->k, d = v->d, n = v->n;
	size_t T = ANN_MAX((size_t)1, n / ((size_t)KM_SMALL_DIV * k));
	*moved = 0;
	memset(v->cnt, 0, k * sizeof(size_t));
	for (size_t i = 0; i < n; i++)
		v->cnt[v->assign[i]]++;
	size_t ns = 0, pts = 0;
	for (size_t c = 0; c < k; c++)
		if (v->cnt[c] < T) {
			ns++;
			pts += v->cnt[c];
		}
	if (ns == 0 || ns == k)
		return ANN_OK;
	uint8_t *small = ann_calloc(k, 1);
	float *dk = pts ? ann_malloc(k * sizeof(float)) : NULL;
	double *sl = ann_malloc(2 * d * sizeof(double));
	if (!small || (pts && !dk) || !sl) {
		ann_free(small);
		ann_free(dk);
		ann_free(sl);
		return ann_err(err, ANN_E_NOMEM, "kmeans: out of memory for the small-cluster pass (k %zu)", k);
	}
	for (size_t c = 0; c < k; c++)
		small[c] = v->cnt[c] < T;
	/* the points of the small clusters: to their nearest other centroid */
	for (size_t i = 0; i < n && pts; i++) {
		if (!small[v->assign[i]])
			continue;
		const float *xi = v->x + i * d;
		if (v->metric == ANN_METRIC_L2) {
			v->kern->l2_f32_many(xi, v->c, k, d, dk);
		} else {
			v->kern->ip_f32_many(xi, v->c, k, d, dk);
			float sc = (float)kv_scale(v, i), off = v->metric == ANN_METRIC_COSINE ? 1.0f : 0.0f;
			for (size_t c = 0; c < k; c++)
				dk[c] = off - dk[c] * (v->metric == ANN_METRIC_COSINE ? sc : 1.0f);
		}
		size_t b = SIZE_MAX;
		for (size_t c = 0; c < k; c++)
			if (!small[c] && (b == SIZE_MAX || dk[c] < dk[b]))
				b = c;
		v->cnt[v->assign[i]]--;
		v->assign[i] = (uint32_t)b;
		v->cnt[b]++;
	}
	/* their centroids: each splits the largest cluster */
	for (size_t e = 0; e < k; e++) {
		if (!small[e])
			continue;
		size_t L = kv_largest(v);
		if (v->cnt[L] < 2 * T || !kv_split(v, L, e, sl, sl + d))
			break;
		(*moved)++;
	}
	ann_free(small);
	ann_free(dk);
	ann_free(sl);
	return ANN_OK;
}

static km_view km_view_of(km *s)
{
	return (km_view){s->x, s->n, s->d, s->k, s->metric, s->kern, s->xscale, s->c, s->assign, s->cnt};
}

/* Refills each empty cluster by splitting the largest one (kv_split). Runs
 * after km_recompute, so every centroid is its cluster's mean and the L2
 * inertia only falls. Uses the rows of sums of the two clusters as
 * scratch. */
static void km_repair(km *s)
{
	size_t k = s->k, d = s->d;
	km_view v = km_view_of(s);
	for (size_t e = 0; e < k; e++) {
		if (s->cnt[e])
			continue;
		size_t L = kv_largest(&v);
		/* the largest cluster holds identical points (or one): no split
		 * exists, and the others are smaller */
		if (s->cnt[L] < 2 || !kv_split(&v, L, e, s->sums + L * d, s->sums + e * d))
			return;
		s->st.empty_repaired++;
	}
}

/* Exact inertia of the current assignment (kernel distances). */
static double km_exact_inertia(const km *s)
{
	double tot = 0;
	for (size_t i = 0; i < s->n; i++)
		tot += km_dist(s, i, s->assign[i]);
	return tot;
}

/* ---- seeding ------------------------------------------------------------- */

/* m sorted distinct indices out of n (Knuth's selection sampling). */
static void km_select(ann_rng *r, size_t n, size_t m, uint32_t *out)
{
	size_t got = 0;
	for (size_t i = 0; i < n && got < m; i++)
		if (ann_rng_below(r, n - i) < m - got)
			out[got++] = (uint32_t)i;
}

/* The caller's cancel poll (ann_build_opts.cancel, passed down). */
static int km_canceled(const km *s, const char *phase, ann_error *err)
{
	if (s->o->cancel && s->o->cancel(s->o->cancel_ctx))
		return ann_err(err, ANN_E_CANCELED, "kmeans canceled during %s", phase);
	return ANN_OK;
}

static int km_seed_random(km *s, ann_error *err)
{
	uint32_t *pick = ann_malloc(s->k * sizeof(uint32_t));
	if (!pick)
		return ann_err(err, ANN_E_NOMEM, "kmeans: cannot allocate %zu seed indices", s->k);
	km_select(&s->rng, s->n, s->k, pick);
	for (size_t c = 0; c < s->k; c++)
		km_set_centroid(s, c, pick[c]);
	ann_free(pick);
	return ANN_OK;
}

/* Batched D^2 sampling; see ANN_KMEANS_PLUSPLUS. */
static int km_seed_pp(km *s, ann_error *err)
{
	size_t n = s->n, k = s->k, d = s->d;
	size_t m = s->o->init_sample ? s->o->init_sample : ANN_MAX((size_t)65536, 16 * k);
	m = ANN_MAX(ANN_MIN(m, n), k);
	size_t batch = (k + KM_PP_ROUNDS - 1) / KM_PP_ROUNDS;
	size_t extra = 0;
	uint32_t *sidx = NULL, *pick = NULL;
	float *D = NULL;
	double *P = NULL;
	int rc = ANN_OK;

	if (m < n)
		sidx = km_alloc(m, sizeof(uint32_t), &extra);
	D = km_alloc(m, sizeof(float), &extra);
	P = km_alloc(m, sizeof(double), &extra);
	pick = km_alloc(batch, sizeof(uint32_t), &extra);
	km_note(s, extra);
	if ((m < n && !sidx) || !D || !P || !pick)
		goto nomem;
	if (sidx)
		km_select(&s->rng, n, m, sidx);
	for (size_t i = 0; i < m; i++)
		D[i] = __builtin_inff();

	/* D^2 on unit vectors is 2(1 - cos), so IP and COSINE seed by cosine. */
	ann_metric dm = s->metric == ANN_METRIC_L2 ? ANN_METRIC_L2 : ANN_METRIC_COSINE;
	size_t r0 = ann_rng_below(&s->rng, m);
	km_set_centroid(s, 0, sidx ? sidx[r0] : r0);
	size_t nc = 1, fresh = 0;
	uint64_t last = ann_now_ns(), last2 = last;
	while (nc < k) {
		if (dm == ANN_METRIC_COSINE)
			ann_norms_f32(s->c + fresh * d, nc - fresh, d, s->cnorm + fresh);
		km_pass p = {
			.mode = KM_MINUPD,
			.metric = dm,
			.x = s->x,
			.idx = sidx,
			.n = m,
			.d = d,
			.c = s->c + fresh * d,
			.cnorm = s->cnorm + fresh,
			.k = nc - fresh,
			.mind = D,
		};
		km_run(&s->pool, &p);
		fresh = nc;
		double tot = 0;
		for (size_t i = 0; i < m; i++) {
			tot += D[i] > 0 ? D[i] : 0;
			P[i] = tot;
		}
		size_t want = ANN_MIN(batch, k - nc), got = 0;
		for (size_t t = 0; t < want && tot > 0 && isfinite(tot); t++) {
			double u = ann_rng_uniform(&s->rng) * tot;
			size_t lo = 0, hi = m - 1; /* first i with P[i] > u */
			while (lo < hi) {
				size_t mid = lo + (hi - lo) / 2;
				if (P[mid] > u)
					hi = mid;
				else
					lo = mid + 1;
			}
			if (!(D[lo] > 0))
				continue;
			bool dup = false;
			for (size_t q = 0; q < got && !dup; q++)
				dup = pick[q] == lo;
			if (!dup)
				pick[got++] = (uint32_t)lo;
		}
		if (got == 0)
			break; /* every sampled point coincides with a centre */
		for (size_t q = 0; q < got; q++)
			km_set_centroid(s, nc + q, sidx ? sidx[pick[q]] : pick[q]);
		nc += got;
		if (s->o->progress && (nc == k || ann_now_ns() - last >= 200000000ull)) {
			s->o->progress(s->o->progress_ctx, "kmeans-seed", nc, k);
			last = ann_now_ns();
		}
		if (nc < k && s->o->cancel && ann_now_ns() - last2 >= 200000000ull) {
			last2 = ann_now_ns();
			if ((rc = km_canceled(s, "seeding", err)) < 0)
				goto out;
		}
	}
	/* Fewer distinct points than k: the rest start on random points and
	 * are handled as empty clusters by the first update. */
	for (; nc < k; nc++) {
		size_t r = ann_rng_below(&s->rng, m);
		km_set_centroid(s, nc, sidx ? sidx[r] : r);
	}
	goto out;
nomem:
	rc = ann_err(err, ANN_E_NOMEM, "kmeans: cannot allocate the seeding sample of %zu points", m);
out:
	s->bytes -= ANN_MIN(s->bytes, extra);
	ann_aligned_free(sidx);
	ann_aligned_free(D);
	ann_aligned_free(P);
	ann_aligned_free(pick);
	return rc;
}

/* ---- iterations ------------------------------------------------------------ */

static void km_progress(const km *s, uint32_t done, uint32_t total)
{
	if (s->o->progress)
		s->o->progress(s->o->progress_ctx, "kmeans", done, total);
}


static void km_record(km *s, double inertia)
{
	if (s->o->history)
		s->o->history[s->st.iterations] = inertia;
	s->st.iterations++;
}

static int km_lloyd(km *s, ann_error *err)
{
	uint32_t max_iter = s->o->max_iter;
	double prev = 0;
	for (uint32_t it = 0; it < max_iter; it++) {
		double cur = km_assign(s);
		km_record(s, cur);
		km_progress(s, it + 1, max_iter);
		ANN_TRY(km_canceled(s, "its iterations", err));
		if (it > 0 && s->o->tol > 0 && prev - cur <= s->o->tol * fabs(prev))
			break;
		prev = cur;
		if (it + 1 == max_iter)
			break;
		km_recompute(s);
		km_repair(s);
	}
	return ANN_OK;
}

static int km_minibatch(km *s, ann_error *err)
{
	size_t mb = s->o->minibatch, d = s->d, k = s->k;
	size_t extra = 0;
	int rc = ANN_OK;
	uint32_t *bidx = km_alloc(mb, sizeof(uint32_t), &extra);
	uint32_t *bas = km_alloc(mb, sizeof(uint32_t), &extra);
	uint64_t *seen = km_alloc(k, sizeof(uint64_t), &extra);
	km_note(s, extra);
	if (!bidx || !bas || !seen) {
		rc = ann_err(err, ANN_E_NOMEM, "kmeans: cannot allocate a mini-batch of %zu points", mb);
		goto out;
	}
	memset(seen, 0, k * sizeof(uint64_t));
	double ewa = 0, best = 0, alpha = ANN_MIN(1.0, 2.0 * (double)mb / (double)(s->n + 1));
	uint32_t stale = 0;
	for (uint32_t it = 0; it < s->o->max_iter; it++) {
		for (size_t i = 0; i < mb; i++)
			bidx[i] = (uint32_t)ann_rng_below(&s->rng, s->n);
		km_centroid_norms(s);
		km_pass p = {
			.mode = KM_ARGMIN,
			.metric = s->metric,
			.x = s->x,
			.idx = bidx,
			.n = mb,
			.d = d,
			.c = s->c,
			.cnorm = s->metric != ANN_METRIC_IP ? s->cnorm : NULL,
			.k = k,
			.assign = bas,
			.blocksum = s->blocksum,
		};
		km_run(&s->pool, &p);
		double cur = 0;
		for (size_t b = 0; b < (mb + s->pool.block - 1) / s->pool.block; b++)
			cur += s->blocksum[b];
		cur *= (double)s->n / (double)mb;
		km_record(s, cur);
		km_progress(s, it + 1, s->o->max_iter);
		if ((rc = km_canceled(s, "its mini-batches", err)) < 0)
			goto out;
		for (size_t i = 0; i < mb; i++) {
			size_t c = bas[i];
			float *cc = s->c + c * d;
			const float *xi = s->x + (size_t)bidx[i] * d;
			float eta = (float)(1.0 / (double)++seen[c]);
			float sc = s->xscale ? s->xscale[bidx[i]] : 1.0f;
			for (size_t j = 0; j < d; j++)
				cc[j] += eta * (sc * xi[j] - cc[j]);
		}
		if (s->metric != ANN_METRIC_L2)
			for (size_t c = 0; c < k; c++)
				km_normalize(s->c + c * d, d);
		/* Stop after KM_MB_PATIENCE batches without the moving average
		 * of the batch inertia improving by tol (as scikit-learn). */
		ewa = it == 0 ? cur : (1 - alpha) * ewa + alpha * cur;
		if (it == 0 || ewa < best - s->o->tol * fabs(best)) {
			best = ewa;
			stale = 0;
		} else if (s->o->tol > 0 && ++stale >= KM_MB_PATIENCE) {
			break;
		}
	}
	/* Two full steps: the assignment, an update with repair, the final one. */
	km_record(s, km_assign(s));
	km_recompute(s);
	km_repair(s);
	km_record(s, km_assign(s));
out:
	s->bytes -= ANN_MIN(s->bytes, extra);
	ann_aligned_free(bidx);
	ann_aligned_free(bas);
	ann_aligned_free(seen);
	return rc;
}

/* ---- size cap ------------------------------------------------------------ */

typedef struct km_bal {
	float regret; /* loss if the point does not get `best` */
	uint32_t s;   /* index into the list of points to place */
	uint32_t best;
} km_bal;

/* Max-heap order: larger regret first, then the earlier point. */
static bool km_bal_before(const km_bal *a, const km_bal *b)
{
	return a->regret > b->regret || (a->regret == b->regret && a->s < b->s);
}

static void km_bal_down(km_bal *h, size_t n, size_t i)
{
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, m = i;
		if (l < n && km_bal_before(&h[l], &h[m]))
			m = l;
		if (r < n && km_bal_before(&h[r], &h[m]))
			m = r;
		if (m == i)
			return;
		km_bal t = h[i];
		h[i] = h[m];
		h[m] = t;
		i = m;
	}
}

/* Best and second-best open candidates of row (R entries) into e. */
static void km_bal_eval(const uint32_t *ids, const float *dd, size_t R, const size_t *occ, size_t cap,
			km_bal *e)
{
	size_t f = SIZE_MAX;
	e->best = KM_NONE;
	e->regret = __builtin_inff();
	for (size_t j = 0; j < R && ids[j] != KM_NONE; j++) {
		if (occ[ids[j]] >= cap)
			continue;
		if (f == SIZE_MAX) {
			f = j;
			e->best = ids[j];
		} else {
			e->regret = dd[j] - dd[f];
			return;
		}
	}
}

static int km_balance(km *s, size_t cap, ann_error *err)
{
	size_t n = s->n, k = s->k, d = s->d;
	size_t extra = 0, ns = 0;
	int rc = ANN_OK;
	uint32_t *S = NULL, *cid = NULL;
	float *cd = NULL, *full = NULL;
	km_bal *heap = NULL;

	memset(s->cnt, 0, k * sizeof(size_t));
	for (size_t i = 0; i < n; i++)
		s->cnt[s->assign[i]]++;
	for (size_t c = 0; c < k; c++)
		if (s->cnt[c] > cap)
			ns += s->cnt[c];
	if (ns == 0)
		return ANN_OK;
	size_t R = ANN_MIN(k, (size_t)KM_BAL_CAND);
	S = km_alloc(ns, sizeof(uint32_t), &extra);
	cid = km_alloc(ns * R, sizeof(uint32_t), &extra);
	cd = km_alloc(ns * R, sizeof(float), &extra);
	heap = km_alloc(ns, sizeof(km_bal), &extra);
	full = km_alloc(k, sizeof(float), &extra);
	km_note(s, extra);
	if (!S || !cid || !cd || !heap || !full) {
		rc = ann_err(err, ANN_E_NOMEM, "kmeans: cannot allocate the size cap of %zu points", ns);
		goto out;
	}
	size_t q = 0;
	for (size_t i = 0; i < n; i++)
		if (s->cnt[s->assign[i]] > cap)
			S[q++] = (uint32_t)i;
	km_centroid_norms(s);
	km_pass p = {
		.mode = KM_TOPN,
		.metric = s->metric,
		.x = s->x,
		.idx = S,
		.n = ns,
		.d = d,
		.c = s->c,
		.cnorm = s->metric != ANN_METRIC_IP ? s->cnorm : NULL,
		.k = k,
		.nprobe = R,
		.stride = R,
		.top_ids = cid,
		.top_d = cd,
	};
	km_run(&s->pool, &p);

	/* Occupancy: clusters within the cap keep their points; the over-full
	 * ones start empty and take the placed points up to the cap. */
	size_t *occ = s->cnt;
	for (size_t c = 0; c < k; c++)
		if (occ[c] > cap)
			occ[c] = 0;
	for (size_t j = 0; j < ns; j++) {
		heap[j].s = (uint32_t)j;
		km_bal_eval(cid + j * R, cd + j * R, R, occ, cap, &heap[j]);
	}
	for (size_t j = ns / 2; j-- > 0;)
		km_bal_down(heap, ns, j);
	size_t hn = ns;
	while (hn > 0) {
		km_bal *top = &heap[0];
		const uint32_t *ids = cid + (size_t)top->s * R;
		uint32_t b = top->best;
		if (b == KM_NONE || occ[b] >= cap) {
			km_bal e = {.s = top->s};
			km_bal_eval(ids, cd + (size_t)top->s * R, R, occ, cap, &e);
			if (e.best != KM_NONE) {
				/* Its choice filled up: requeue with the new regret. */
				*top = e;
				km_bal_down(heap, hn, 0);
				continue;
			}
			/* All R candidates are full: nearest open cluster of all k. */
			size_t i = S[top->s];
			const float *xi = s->x + i * d;
			if (s->metric == ANN_METRIC_L2) {
				s->kern->l2_f32_many(xi, s->c, k, d, full);
			} else {
				s->kern->ip_f32_many(xi, s->c, k, d, full);
				float sc = s->metric == ANN_METRIC_COSINE ? s->xscale[i] : 1.0f;
				float off = s->metric == ANN_METRIC_COSINE ? 1.0f : 0.0f;
				for (size_t c = 0; c < k; c++)
					full[c] = off - full[c] * sc;
			}
			b = KM_NONE;
			for (size_t c = 0; c < k; c++)
				if (occ[c] < cap && (b == KM_NONE || full[c] < full[b]))
					b = (uint32_t)c;
		}
		size_t i = S[top->s];
		if (s->assign[i] != b)
			s->st.moved++;
		s->assign[i] = b;
		occ[b]++;
		heap[0] = heap[--hn];
		km_bal_down(heap, hn, 0);
	}
	km_recompute(s);
out:
	s->bytes -= ANN_MIN(s->bytes, extra);
	ann_aligned_free(S);
	ann_aligned_free(cid);
	ann_aligned_free(cd);
	ann_aligned_free(heap);
	ann_aligned_free(full);
	return rc;
}

/* ---- entry points ---------------------------------------------------------- */

void ann_kmeans_opts_init(ann_kmeans_opts *o)
{
	memset(o, 0, sizeof *o);
	o->max_iter = 25;
	o->seed = 1;
	o->init = ANN_KMEANS_PLUSPLUS;
	o->metric = ANN_METRIC_L2;
	o->threads = 1;
	o->tol = 1e-4;
}

static int km_check_metric(ann_metric m, ann_error *err)
{
	if (m != ANN_METRIC_L2 && m != ANN_METRIC_IP && m != ANN_METRIC_COSINE)
		return ann_err(err, ANN_E_INVAL, "kmeans: unknown metric %d", (int)m);
	return ANN_OK;
}

static int km_two_level(const float *x, size_t n, size_t d, const ann_kmeans_opts *o, float *centroids,
			uint32_t *assign, ann_kmeans_stats *st, ann_error *err);

static void km_free(km *s, bool own_assign)
{
	km_pool_free(&s->pool);
	ann_aligned_free(s->cnorm);
	ann_aligned_free(s->sums);
	ann_aligned_free(s->cnt);
	ann_aligned_free(s->xscale);
	ann_aligned_free(s->blocksum);
	if (own_assign)
		ann_aligned_free(s->assign);
}

int ann_kmeans(const float *x, size_t n, size_t d, const ann_kmeans_opts *o, float *centroids,
	       uint32_t *assign, ann_kmeans_stats *st, ann_error *err)
{
	if (!o || !x || !centroids)
		return ann_err(err, ANN_E_INVAL, "kmeans: NULL %s",
			       !o ? "options" : !x ? "sample" : "centroids");
	size_t k = o->k;
	ANN_TRY(km_check_metric(o->metric, err));
	if (d == 0 || k == 0 || k > n || n > UINT32_MAX || k >= KM_NONE)
		return ann_err(err, ANN_E_INVAL,
			       "kmeans: need 1 <= k <= n < 2^32 and d >= 1 (k %zu, n %zu, d %zu)", k, n, d);
	if (o->max_iter == 0 || o->threads < 1 || !(o->tol >= 0) || !isfinite(o->tol) ||
	    (unsigned)o->init > ANN_KMEANS_GIVEN)
		return ann_err(err, ANN_E_INVAL,
			       "kmeans: bad options (max_iter %u, threads %d, tol %g, init %d)", o->max_iter,
			       o->threads, o->tol, (int)o->init);
	size_t capk;
	if (o->max_size && (!ann_mul_ok(o->max_size, k, &capk) ? false : capk < n))
		return ann_err(err, ANN_E_INVAL, "kmeans: max_size %zu x k %zu cannot hold %zu points",
			       o->max_size, k, n);
	if (o->minibatch > UINT32_MAX)
		return ann_err(err, ANN_E_INVAL, "kmeans: minibatch %zu too large", o->minibatch);
	if (o->coarse >= 2 && o->coarse < k)
		return km_two_level(x, n, d, o, centroids, assign, st, err);

	km s;
	memset(&s, 0, sizeof s);
	s.o = o;
	s.kern = ann_kernels_best();
	s.x = x;
	s.n = n;
	s.d = d;
	s.k = k;
	s.metric = o->metric;
	s.c = centroids;
	ann_rng_seed(&s.rng, o->seed);
	int threads = ANN_MIN(o->threads, KM_MAX_THREADS);
	bool own_assign = assign == NULL;
	int rc;
	size_t extra = 0;

	size_t nprobe_max = o->max_size ? ANN_MIN(k, (size_t)KM_BAL_CAND) : 0;
	ANN_CHECK(rc, km_pool_init(&s.pool, threads, d, k, nprobe_max, true, o->metric, err));
	km_note(&s, s.pool.bytes);
	size_t rows = ANN_MAX(n, o->minibatch);
	s.nblocksum = (rows + s.pool.block - 1) / s.pool.block;
	s.cnorm = km_alloc(k, sizeof(float), &extra);
	s.sums = km_alloc(k * d, sizeof(double), &extra);
	s.cnt = km_alloc(k, sizeof(size_t), &extra);
	s.blocksum = km_alloc(s.nblocksum, sizeof(double), &extra);
	s.assign = own_assign ? km_alloc(n, sizeof(uint32_t), &extra) : assign;
	if (o->metric == ANN_METRIC_COSINE)
		s.xscale = km_alloc(n, sizeof(float), &extra);
	km_note(&s, extra);
	if (!s.cnorm || !s.sums || !s.cnt || !s.blocksum || !s.assign ||
	    (o->metric == ANN_METRIC_COSINE && !s.xscale)) {
		rc = ann_err(err, ANN_E_NOMEM, "kmeans: cannot allocate working memory (k %zu, d %zu, n %zu)",
			     k, d, n);
		goto fail;
	}
	if (s.xscale) {
		ann_norms_f32(x, n, d, s.xscale);
		for (size_t i = 0; i < n; i++)
			s.xscale[i] = s.xscale[i] > 0 ? (float)(1.0 / sqrt((double)s.xscale[i])) : 0.0f;
	}

	switch (o->init) {
	case ANN_KMEANS_PLUSPLUS:
		ANN_CHECK(rc, km_seed_pp(&s, err));
		break;
	case ANN_KMEANS_RANDOM:
		ANN_CHECK(rc, km_seed_random(&s, err));
		break;
	case ANN_KMEANS_GIVEN:
		if (o->metric != ANN_METRIC_L2)
			for (size_t c = 0; c < k; c++)
				km_normalize(centroids + c * d, d);
		break;
	}

	if (o->minibatch)
		ANN_CHECK(rc, km_minibatch(&s, err));
	else
		ANN_CHECK(rc, km_lloyd(&s, err));

	/* The small-cluster pass, each followed by an assignment step (not in
	 * history) so that assign is again each point's nearest centroid; again
	 * while that leaves small clusters, at most KM_SMALL_ROUNDS times. */
	for (int round = 0; round < KM_SMALL_ROUNDS; round++) {
		km_view v = km_view_of(&s);
		size_t moved;
		ANN_CHECK(rc, kv_small(&v, &moved, err));
		if (!moved)
			break;
		s.st.small_repaired += moved;
		km_assign(&s);
	}
	s.st.inertia_unbalanced = km_exact_inertia(&s);
	s.st.inertia = s.st.inertia_unbalanced;
	if (o->max_size) {
		ANN_CHECK(rc, km_balance(&s, o->max_size, err));
		s.st.inertia = km_exact_inertia(&s);
	}
	memset(s.cnt, 0, k * sizeof(size_t));
	for (size_t i = 0; i < n; i++)
		s.cnt[s.assign[i]]++;
	for (size_t c = 0; c < k; c++)
		s.st.largest = ANN_MAX(s.st.largest, s.cnt[c]);
	s.st.work_bytes = s.peak;
	if (st)
		*st = s.st;
	rc = ANN_OK;
fail:
	km_free(&s, own_assign);
	return rc;
}

int ann_nearest_centroids(const float *x, size_t n, size_t d, const float *centroids, size_t k, size_t nprobe,
			  ann_metric metric, int threads, uint32_t *ids, float *dists, ann_error *err)
{
	ANN_TRY(km_check_metric(metric, err));
	if (d == 0 || k == 0 || k >= KM_NONE || nprobe == 0 || threads < 1)
		return ann_err(err, ANN_E_INVAL,
			       "nearest_centroids: need d, k, nprobe, threads >= 1 "
			       "(d %zu, k %zu, nprobe %zu, threads %d)",
			       d, k, nprobe, threads);
	if (n == 0)
		return ANN_OK;
	if (!x || !centroids || !ids)
		return ann_err(err, ANN_E_INVAL, "nearest_centroids: NULL array");
	size_t np = ANN_MIN(nprobe, k);
	km_pool pool;
	float *cnorm = NULL;
	int rc = km_pool_init(&pool, ANN_MIN(threads, KM_MAX_THREADS), d, k, np, false, metric, err);
	if (rc < 0)
		return rc;
	if (metric == ANN_METRIC_COSINE) { /* L2 passes use the shifted centroids' (km_run) */
		cnorm = ann_malloc(k * sizeof(float));
		if (!cnorm) {
			km_pool_free(&pool);
			return ann_err(err, ANN_E_NOMEM, "nearest_centroids: cannot allocate %zu norms", k);
		}
		ann_norms_f32(centroids, k, d, cnorm);
	}
	km_pass p = {
		.mode = KM_TOPN,
		.metric = metric,
		.x = x,
		.n = n,
		.d = d,
		.c = centroids,
		.cnorm = cnorm,
		.k = k,
		.nprobe = np,
		.stride = nprobe,
		.top_ids = ids,
		.top_d = dists,
	};
	km_run(&pool, &p);
	ann_free(cnorm);
	km_pool_free(&pool);
	return ANN_OK;
}

/* ---- two levels ------------------------------------------------------------
 * ann_kmeans with o->coarse >= 2 (kmeans.h): coarse clusters, then each
 * clustered on its own into its share of the k fine clusters. */

/* Is coarse cluster a owed the next fine cluster before b? The one with more
 * points per fine cluster (n_a / k_a > n_b / k_b), ties to the lower index. */
static bool km_deal_before(const size_t *nj, const size_t *kj, uint32_t a, uint32_t b)
{
	uint64_t l = (uint64_t)nj[a] * kj[b], r = (uint64_t)nj[b] * kj[a];
	return l != r ? l > r : a < b;
}

static void km_deal_down(uint32_t *h, size_t n, size_t i, const size_t *nj, const size_t *kj)
{
	for (;;) {
		size_t l = 2 * i + 1, best = i;
		if (l < n && km_deal_before(nj, kj, h[l], h[best]))
			best = l;
		if (l + 1 < n && km_deal_before(nj, kj, h[l + 1], h[best]))
			best = l + 1;
		if (best == i)
			return;
		uint32_t t = h[i];
		h[i] = h[best];
		h[best] = t;
		i = best;
	}
}

/* Deals k fine clusters over C coarse ones of nj points (sum >= k, at most
 * k non-empty): kj[j] = 1 for every non-empty one, then one at a time to
 * the one with the most points per fine cluster that has room (kj < nj).
 * heap: C entries of scratch. */
static void km_deal(const size_t *nj, size_t C, size_t k, size_t *kj, uint32_t *heap)
{
	size_t given = 0, hn = 0;
	for (size_t j = 0; j < C; j++) {
		kj[j] = nj[j] ? 1 : 0;
		given += kj[j];
		if (nj[j] > 1)
			heap[hn++] = (uint32_t)j;
	}
	for (size_t i = hn / 2; i-- > 0;)
		km_deal_down(heap, hn, i, nj, kj);
	while (given < k && hn > 0) {
		uint32_t j = heap[0];
		kj[j]++;
		given++;
		if (kj[j] == nj[j])
			heap[0] = heap[--hn];
		km_deal_down(heap, hn, 0, nj, kj);
	}
}

/* Lloyd steps over all k centroids after the two levels, each assignment
 * through a tree over the current centroids (KM_REFINE_PROBES cells): the
 * fine clusters' borders that the coarse level cut are redrawn. Each step
 * moves every centroid to the mean of its points (an empty one stays) and
 * reassigns (km_two_level_tail measures the result). Memory: k d doubles
 * and k counts, plus the tree (kmeans.h). */
static int km_refine(const float *x, size_t n, size_t d, const ann_kmeans_opts *o, float *c, uint32_t *a,
		     ann_kmeans_stats *st, size_t *bytes, ann_error *err)
{
	size_t k = o->k;
	double *sums = ann_malloc(k * d * sizeof(double));
	size_t *cnt = ann_malloc(k * sizeof(size_t));
	ann_kmeans_tree *t = NULL;
	int rc = ANN_OK;
	if (!sums || !cnt) {
		rc = ann_err(err, ANN_E_NOMEM, "kmeans: out of memory refining %zu centroids", k);
		goto fail;
	}
	*bytes = k * (d * sizeof(double) + sizeof(size_t));
	for (uint32_t it = 0; it < KM_REFINE; it++) {
		memset(sums, 0, k * d * sizeof(double));
		memset(cnt, 0, k * sizeof(size_t));
		for (size_t i = 0; i < n; i++) {
			const float *v = x + i * d;
			double w = 1;
			if (o->metric == ANN_METRIC_COSINE) {
				double s2 = 0;
				for (size_t j = 0; j < d; j++)
					s2 += (double)v[j] * v[j];
				w = s2 > 0 ? 1 / sqrt(s2) : 0;
			}
			double *sm = sums + (size_t)a[i] * d;
			for (size_t j = 0; j < d; j++)
				sm[j] += w * v[j];
			cnt[a[i]]++;
		}
		for (size_t cl = 0; cl < k; cl++) {
			if (!cnt[cl])
				continue;
			float *cv = c + cl * d;
			for (size_t j = 0; j < d; j++)
				cv[j] = (float)(sums[cl * d + j] / (double)cnt[cl]);
			if (o->metric != ANN_METRIC_L2)
				km_normalize(cv, d);
		}
		ann_kmeans_tree_free(t);
		t = NULL;
		ANN_CHECK(rc, ann_kmeans_tree_new(c, k, d, o->metric, 0, o->seed, ANN_MIN(o->threads, KM_MAX_THREADS), &t,
						  err));
		*bytes = ANN_MAX(*bytes, k * (d * sizeof(double) + sizeof(size_t)) + ann_kmeans_tree_bytes(t));
		ANN_CHECK(rc, ann_kmeans_tree_nearest(t, x, n, 1, KM_REFINE_PROBES, ANN_MIN(o->threads, KM_MAX_THREADS), a,
						      NULL, err));
		if (o->progress)
			o->progress(o->progress_ctx, "kmeans-refine", it + 1, KM_REFINE);
		if (o->cancel && o->cancel(o->cancel_ctx)) {
			rc = ann_err(err, ANN_E_CANCELED, "kmeans canceled (refinement step %u)", it + 1);
			goto fail;
		}
	}
	st->iterations += KM_REFINE; /* the inertia: km_two_level_tail */
	rc = ANN_OK;
fail:
	ann_kmeans_tree_free(t);
	ann_free(sums);
	ann_free(cnt);
	return rc;
}

/* The end of two levels: the small-cluster pass over all k clusters (the
 * refinement can empty a fine cluster, which keeps its centroid), then the
 * centroids in a seeded random order, the assignment renumbered with them.
 * The levels leave the centroids coarse cell by coarse cell, and an HNSW
 * graph built over them in that order (the k-means router inserts its
 * centroids in id order) links each cell before the next exists: on real1m
 * at 1000 partitions (C 32) its top-16 overlap with the exact scan was
 * 0.9921 at ef 32 and reached 0.9992 only at ef 384, against 0.9998 at ef
 * 32 in a random order, as one level's centroids come (docs/DESIGN.md).
 * Memory: 16 k bytes (counts, the order and its inverse) and one row,
 * plus kv_small's (5 k bytes); *bytes gets them. st gets the exact inertia, the
 * largest cluster and the clusters moved. */
static int km_two_level_tail(const float *x, size_t n, size_t d, const ann_kmeans_opts *o, float *c, uint32_t *a,
			     ann_kmeans_stats *st, size_t *bytes, ann_error *err)
{
	size_t k = o->k;
	size_t *cnt = ann_malloc(k * sizeof(size_t));
	uint32_t *src = ann_malloc(k * sizeof(uint32_t)), *pos = ann_malloc(k * sizeof(uint32_t));
	float *row = ann_malloc(d * sizeof(float));
	int rc = ANN_OK;
	if (!cnt || !src || !pos || !row) {
		rc = ann_err(err, ANN_E_NOMEM, "kmeans: out of memory ordering %zu centroids", k);
		goto fail;
	}
	/* with kv_small's k flags, k distances and 2 d doubles */
	*bytes = k * (sizeof(size_t) + 2 * sizeof(uint32_t) + 1 + sizeof(float)) + d * sizeof(float) +
		 2 * d * sizeof(double);
	km_view v = {x, n, d, k, o->metric, ann_kernels_best(), NULL, c, a, cnt};
	size_t moved;
	ANN_CHECK(rc, kv_small(&v, &moved, err));
	st->small_repaired += moved;
	/* new row j holds old centroid src[j] (Fisher-Yates); pos inverts src */
	ann_rng rng;
	ann_rng_seed(&rng, o->seed ^ 0x6f72646572ull);
	for (size_t j = 0; j < k; j++)
		src[j] = (uint32_t)j;
	for (size_t j = k; j > 1; j--) {
		size_t r = ann_rng_below(&rng, j);
		uint32_t t = src[j - 1];
		src[j - 1] = src[r];
		src[r] = t;
	}
	for (size_t j = 0; j < k; j++)
		pos[src[j]] = (uint32_t)j;
	/* the rows moved along the permutation's cycles with one row of
	 * scratch; src[j] = j marks row j done */
	for (size_t j0 = 0; j0 < k; j0++) {
		if (src[j0] == j0)
			continue;
		memcpy(row, c + j0 * d, d * sizeof(float));
		size_t j = j0;
		while (src[j] != j0) {
			size_t next = src[j];
			memcpy(c + j * d, c + next * d, d * sizeof(float));
			src[j] = (uint32_t)j;
			j = next;
		}
		memcpy(c + j * d, row, d * sizeof(float));
		src[j] = (uint32_t)j;
	}
	for (size_t i = 0; i < n; i++)
		a[i] = pos[a[i]];
	double in = 0;
	const ann_kernels *kern = ann_kernels_best();
	memset(cnt, 0, k * sizeof(size_t));
	for (size_t i = 0; i < n; i++) {
		in += ann_distance_f32(kern, o->metric, x + i * d, c + (size_t)a[i] * d, d);
		cnt[a[i]]++;
	}
	st->largest = 0;
	for (size_t cl = 0; cl < k; cl++)
		st->largest = ANN_MAX(st->largest, cnt[cl]);
	/* with a cap, the fine levels' capped inertia stays "unbalanced" */
	st->inertia = in;
	if (!o->max_size)
		st->inertia_unbalanced = in;
	rc = ANN_OK;
fail:
	ann_free(cnt);
	ann_free(src);
	ann_free(pos);
	ann_free(row);
	return rc;
}

static int km_two_level(const float *x, size_t n, size_t d, const ann_kmeans_opts *o, float *centroids,
			uint32_t *assign, ann_kmeans_stats *st, ann_error *err)
{
	size_t C = o->coarse, k = o->k;
	if (o->history || o->init == ANN_KMEANS_GIVEN)
		return ann_err(err, ANN_E_INVAL, "kmeans: two levels take neither a history nor given centroids");
	uint32_t *ca = ann_malloc(n * sizeof(uint32_t));
	uint32_t *order = ann_malloc(n * sizeof(uint32_t));
	uint32_t *heap = ann_malloc(C * sizeof(uint32_t));
	size_t *nj = ann_calloc(C, sizeof(size_t)), *kj = ann_calloc(C, sizeof(size_t));
	size_t *first = ann_calloc(C + 1, sizeof(size_t));
	float *cc = ann_malloc(C * d * sizeof(float));
	float *g = NULL;
	uint32_t *sa = NULL;
	uint32_t *own_fa = assign ? NULL : ann_malloc(n * sizeof(uint32_t)), *fa = assign ? assign : own_fa;
	int rc = ANN_OK;
	if (!ca || !order || !heap || !nj || !kj || !first || !cc || !fa) {
		rc = ann_err(err, ANN_E_NOMEM, "kmeans: out of memory for two levels (n %zu, %zu coarse)", n, C);
		goto fail;
	}
	ann_kmeans_opts co = *o;
	co.k = C;
	co.coarse = 0;
	co.max_size = 0;
	ann_kmeans_stats cst, fst, sum;
	memset(&sum, 0, sizeof sum);
	ANN_CHECK(rc, ann_kmeans(x, n, d, &co, cc, ca, &cst, err));
	for (size_t i = 0; i < n; i++)
		nj[ca[i]]++;
	km_deal(nj, C, k, kj, heap);
	size_t maxn = 0;
	for (size_t j = 0; j < C; j++) {
		first[j + 1] = first[j] + nj[j];
		maxn = ANN_MAX(maxn, nj[j]);
	}
	/* points cell by cell, in point order within a cell */
	{
		size_t *at = ann_malloc(C * sizeof(size_t));
		if (!at) {
			rc = ann_err(err, ANN_E_NOMEM, "kmeans: out of memory for two levels");
			goto fail;
		}
		memcpy(at, first, C * sizeof(size_t));
		for (size_t i = 0; i < n; i++)
			order[at[ca[i]]++] = (uint32_t)i;
		ann_free(at);
	}
	size_t own = n * (own_fa ? 12 : 8) + C * (d * sizeof(float) + 3 * sizeof(size_t) + 4);
	g = ann_malloc(maxn * d * sizeof(float));
	sa = ann_malloc(maxn * sizeof(uint32_t));
	if (!g || !sa) {
		rc = ann_err(err, ANN_E_NOMEM, "kmeans: out of memory gathering %zu points", maxn);
		goto fail;
	}
	own += maxn * (d * sizeof(float) + sizeof(uint32_t));
	sum.iterations = cst.iterations;
	sum.empty_repaired = cst.empty_repaired;
	sum.small_repaired = cst.small_repaired;
	sum.work_bytes = cst.work_bytes;
	ann_kmeans_opts fo = *o;
	fo.coarse = 0;
	fo.progress = NULL;
	size_t base = 0;
	for (size_t j = 0; j < C; j++) {
		if (kj[j] == 0)
			continue;
		size_t m = nj[j];
		for (size_t i = 0; i < m; i++)
			memcpy(g + i * d, x + (size_t)order[first[j] + i] * d, d * sizeof(float));
		fo.k = kj[j];
		fo.seed = o->seed + 1 + j;
		fo.max_size = o->max_size ? ANN_MAX(o->max_size, (m + kj[j] - 1) / kj[j]) : 0;
		ANN_CHECK(rc, ann_kmeans(g, m, d, &fo, centroids + base * d, sa, &fst, err));
		for (size_t i = 0; i < m; i++)
			fa[order[first[j] + i]] = (uint32_t)(base + sa[i]);
		sum.iterations = ANN_MAX(sum.iterations, fst.iterations);
		sum.inertia += fst.inertia;
		sum.inertia_unbalanced += fst.inertia_unbalanced;
		sum.empty_repaired += fst.empty_repaired;
		sum.small_repaired += fst.small_repaired;
		sum.moved += fst.moved;
		sum.largest = ANN_MAX(sum.largest, fst.largest);
		sum.work_bytes = ANN_MAX(sum.work_bytes, fst.work_bytes);
		base += kj[j];
		if (o->progress)
			o->progress(o->progress_ctx, "kmeans-fine", j + 1, C);
		if (o->cancel && o->cancel(o->cancel_ctx)) {
			rc = ann_err(err, ANN_E_CANCELED, "kmeans canceled (fine level, %zu of %zu coarse clusters)", j + 1,
				     C);
			goto fail;
		}
	}
	if (!o->max_size && KM_REFINE > 0) {
		size_t extra = 0;
		ANN_CHECK(rc, km_refine(x, n, d, o, centroids, fa, &sum, &extra, err));
		own += extra;
	}
	size_t tail = 0;
	ANN_CHECK(rc, km_two_level_tail(x, n, d, o, centroids, fa, &sum, &tail, err));
	own += tail;
	sum.work_bytes += own;
	if (st)
		*st = sum;
	rc = ANN_OK;
fail:
	ann_free(ca);
	ann_free(order);
	ann_free(heap);
	ann_free(nj);
	ann_free(kj);
	ann_free(first);
	ann_free(cc);
	ann_free(g);
	ann_free(sa);
	ann_free(own_fa);
	return rc;
}

/* ---- the two-level search structure (kmeans.h) ---------------------------- */

struct ann_kmeans_tree {
	size_t k, d, C, maxcell;
	ann_metric metric;
	float *cc;     /* C x d coarse centres */
	float *fc;     /* k x d centroids, cell by cell */
	float *fnorm;  /* their squared norms (L2, COSINE), else NULL */
	float *shift;  /* L2: d, the first centroid; fc holds centroid - shift and queries are shifted too (km_pass) */
	uint32_t *id;  /* k: the caller's number of row r of fc */
	size_t *first; /* C + 1: cell j holds rows first[j] .. first[j + 1] - 1 */
	size_t bytes;
};

void ann_kmeans_tree_free(ann_kmeans_tree *t)
{
	if (!t)
		return;
	ann_free(t->cc);
	ann_free(t->fc);
	ann_free(t->fnorm);
	ann_free(t->shift);
	ann_free(t->id);
	ann_free(t->first);
	ann_free(t);
}

size_t ann_kmeans_tree_bytes(const ann_kmeans_tree *t)
{
	return t ? t->bytes : 0;
}

size_t ann_kmeans_tree_coarse(const ann_kmeans_tree *t)
{
	return t ? t->C : 0;
}

int ann_kmeans_tree_new(const float *centroids, size_t k, size_t d, ann_metric metric, size_t coarse, uint64_t seed,
			int threads, ann_kmeans_tree **out, ann_error *err)
{
	*out = NULL;
	ANN_TRY(km_check_metric(metric, err));
	if (!centroids || k == 0 || d == 0 || k >= KM_NONE || threads < 1)
		return ann_err(err, ANN_E_INVAL, "kmeans tree: need centroids, 1 <= k < 2^32 - 1, d >= 1, threads >= 1");
	size_t C = coarse ? coarse : (size_t)ceil(sqrt((double)k));
	C = ANN_MAX((size_t)1, ANN_MIN(C, k));
	ann_kmeans_tree *t = ann_calloc(1, sizeof *t);
	uint32_t *ca = ann_malloc(k * sizeof(uint32_t));
	size_t *at = ann_malloc(C * sizeof(size_t));
	int rc = ANN_OK;
	if (!t || !ca || !at)
		goto nomem;
	t->k = k;
	t->d = d;
	t->C = C;
	t->metric = metric;
	t->cc = ann_malloc(C * d * sizeof(float));
	t->fc = ann_malloc(k * d * sizeof(float));
	t->id = ann_malloc(k * sizeof(uint32_t));
	t->first = ann_calloc(C + 1, sizeof(size_t));
	if (metric != ANN_METRIC_IP)
		t->fnorm = ann_malloc(k * sizeof(float));
	if (metric == ANN_METRIC_L2)
		t->shift = ann_malloc(d * sizeof(float));
	if (!t->cc || !t->fc || !t->id || !t->first || (metric != ANN_METRIC_IP && !t->fnorm) ||
	    (metric == ANN_METRIC_L2 && !t->shift))
		goto nomem;
	t->bytes = sizeof *t + (C + k) * d * sizeof(float) + k * (sizeof(uint32_t) + (t->fnorm ? sizeof(float) : 0)) +
		   (C + 1) * sizeof(size_t) + (t->shift ? d * sizeof(float) : 0);
	ann_kmeans_opts ko;
	ann_kmeans_opts_init(&ko);
	ko.k = C;
	ko.max_iter = 10;
	ko.seed = seed;
	ko.metric = metric;
	ko.threads = threads;
	ANN_CHECK(rc, ann_kmeans(centroids, k, d, &ko, t->cc, ca, NULL, err));
	for (size_t i = 0; i < k; i++)
		t->first[ca[i] + 1]++;
	for (size_t j = 0; j < C; j++) {
		t->maxcell = ANN_MAX(t->maxcell, t->first[j + 1]);
		t->first[j + 1] += t->first[j];
	}
	memcpy(at, t->first, C * sizeof(size_t));
	for (size_t i = 0; i < k; i++) {
		size_t r = at[ca[i]]++;
		t->id[r] = (uint32_t)i;
		memcpy(t->fc + r * d, centroids + i * d, d * sizeof(float));
	}
	if (t->shift) {
		memcpy(t->shift, centroids, d * sizeof(float));
		for (size_t r = 0; r < k; r++)
			ann_sub_f32(t->fc + r * d, t->fc + r * d, t->shift, d);
	}
	if (t->fnorm)
		ann_norms_f32(t->fc, k, d, t->fnorm);
	ann_free(ca);
	ann_free(at);
	*out = t;
	return ANN_OK;
nomem:
	rc = ann_err(err, ANN_E_NOMEM, "kmeans tree: out of memory for %zu centroids", k);
fail:
	ann_free(ca);
	ann_free(at);
	ann_kmeans_tree_free(t);
	return rc;
}

/* One ann_kmeans_tree_nearest call: the rows probing each cell, and per
 * (row, probe) slot the M nearest centroids of that cell. */
typedef struct kt_job {
	const ann_kmeans_tree *t;
	const float *x;
	size_t P, M;          /* probes per row, results per slot */
	const size_t *off;    /* C + 1: cell j's slots are lst[off[j] .. off[j + 1]) */
	const uint32_t *lst;  /* slot numbers (row * P + probe) */
	uint32_t *sid;        /* slot results: M ids each */
	float *sd;            /* ... and distances */
	size_t block;         /* rows per tile */
	atomic_size_t next;   /* next cell */
} kt_job;

typedef struct kt_worker {
	kt_job *j;
	float *gather, *xn, *tile, *hd;
	int64_t *hid;
	km_sel *tk;
	km_pair *sb; /* block * KM_SEL_CAP(M) */
	uint32_t *pre; /* KM_PRE_KEYS */
} kt_worker;

static void kt_cell(kt_worker *w, size_t c)
{
	const kt_job *j = w->j;
	const ann_kmeans_tree *t = j->t;
	size_t d = t->d, f0 = t->first[c], f = t->first[c + 1] - f0, M = j->M;
	size_t chunk = ANN_MIN(f, (size_t)KM_CHUNK);
	for (size_t lo = j->off[c]; lo < j->off[c + 1]; lo += j->block) {
		size_t nb = ANN_MIN(j->block, j->off[c + 1] - lo);
		for (size_t i = 0; i < nb; i++) {
			const float *r = j->x + (size_t)(j->lst[lo + i] / j->P) * d;
			if (t->shift)
				ann_sub_f32(w->gather + i * d, r, t->shift, d);
			else
				memcpy(w->gather + i * d, r, d * sizeof(float));
			km_sel_init(&w->tk[i], w->sb + i * KM_SEL_CAP(M), M, w->pre);
		}
		if (t->metric != ANN_METRIC_IP)
			ann_norms_f32(w->gather, nb, d, w->xn);
		for (size_t c0 = 0; c0 < f; c0 += chunk) {
			size_t kc = ANN_MIN(chunk, f - c0);
			ann_dist_batch(t->metric, w->gather, nb, t->metric != ANN_METRIC_IP ? w->xn : NULL,
				       t->fc + (f0 + c0) * d, kc, t->fnorm ? t->fnorm + f0 + c0 : NULL, d, w->tile);
			for (size_t i = 0; i < nb; i++)
				km_row_topn(w->tile + i * kc, kc, (uint32_t)(f0 + c0), &w->tk[i]);
		}
		for (size_t i = 0; i < nb; i++) {
			float *hd = w->hd + i * M;
			int64_t *hid = w->hid + i * M;
			km_sel_finish(&w->tk[i], hd, hid);
			size_t s = j->lst[lo + i];
			for (size_t m = 0; m < M; m++) {
				bool have = hid[m] >= 0;
				j->sid[s * M + m] = have ? t->id[hid[m]] : KM_NONE;
				j->sd[s * M + m] = have ? hd[m] : __builtin_inff();
			}
		}
	}
}

static void *kt_thread(void *arg)
{
	kt_worker *w = arg;
	for (;;) {
		size_t c = atomic_fetch_add(&w->j->next, 1);
		if (c >= w->j->t->C)
			break;
		kt_cell(w, c);
	}
	return NULL;
}

int ann_kmeans_tree_nearest(const ann_kmeans_tree *t, const float *x, size_t n, size_t nprobe, size_t probes,
			    int threads, uint32_t *ids, float *dists, ann_error *err)
{
	if (!t || nprobe == 0 || probes == 0 || threads < 1)
		return ann_err(err, ANN_E_INVAL, "kmeans tree: need a tree, nprobe, probes and threads >= 1");
	if (n == 0)
		return ANN_OK;
	if (!x || !ids)
		return ann_err(err, ANN_E_INVAL, "kmeans tree: NULL array");
	size_t P = ANN_MIN(probes, t->C), M = ANN_MIN(nprobe, t->k), d = t->d;
	size_t slots;
	if (!ann_mul_ok(n, P, &slots) || slots >= KM_NONE)
		return ann_err(err, ANN_E_INVAL, "kmeans tree: %zu points x %zu probes per call is too many", n, P);
	int nt = ANN_MIN(threads, KM_MAX_THREADS);
	uint32_t *cid = ann_malloc(slots * sizeof(uint32_t));
	uint32_t *lst = ann_malloc(slots * sizeof(uint32_t));
	size_t *off = ann_calloc(t->C + 1, sizeof(size_t));
	uint32_t *sid = ann_malloc(slots * M * sizeof(uint32_t));
	float *sd = ann_malloc(slots * M * sizeof(float));
	float *md = ann_malloc(nprobe * sizeof(float));
	int64_t *mid = ann_malloc(nprobe * sizeof(int64_t));
	kt_worker w[KM_MAX_THREADS];
	memset(w, 0, sizeof w);
	int rc = ANN_OK;
	if (!cid || !lst || !off || !sid || !sd || !md || !mid)
		goto nomem;
	ANN_CHECK(rc, ann_nearest_centroids(x, n, d, t->cc, t->C, P, t->metric, nt, cid, NULL, err));
	/* slots by cell, in slot order within a cell */
	for (size_t s = 0; s < slots; s++) {
		sid[s * M] = KM_NONE; /* a slot no cell fills (padding) stays empty */
		sd[s * M] = __builtin_inff();
		for (size_t m = 1; m < M; m++) {
			sid[s * M + m] = KM_NONE;
			sd[s * M + m] = __builtin_inff();
		}
		if (cid[s] != KM_NONE)
			off[cid[s] + 1]++;
	}
	for (size_t c = 0; c < t->C; c++)
		off[c + 1] += off[c];
	{
		size_t *at = ann_malloc(t->C * sizeof(size_t));
		if (!at)
			goto nomem;
		memcpy(at, off, t->C * sizeof(size_t));
		for (size_t s = 0; s < slots; s++)
			if (cid[s] != KM_NONE)
				lst[at[cid[s]]++] = (uint32_t)s;
		ann_free(at);
	}
	kt_job job = {.t = t, .x = x, .P = P, .M = M, .off = off, .lst = lst, .sid = sid, .sd = sd,
		      .block = km_block_rows(t->maxcell)};
	atomic_store(&job.next, 0);
	size_t B = job.block, chunk = ANN_MIN(t->maxcell, (size_t)KM_CHUNK);
	for (int i = 0; i < nt; i++) {
		w[i].j = &job;
		w[i].gather = ann_malloc(B * d * sizeof(float));
		w[i].xn = ann_malloc(B * sizeof(float));
		w[i].tile = ann_malloc(B * chunk * sizeof(float));
		w[i].hd = ann_malloc(B * M * sizeof(float));
		w[i].hid = ann_malloc(B * M * sizeof(int64_t));
		w[i].tk = ann_malloc(B * sizeof(km_sel));
		w[i].sb = ann_malloc(B * KM_SEL_CAP(M) * sizeof(km_pair));
		w[i].pre = ann_malloc(KM_PRE_KEYS * sizeof(uint32_t));
		if (!w[i].gather || !w[i].xn || !w[i].tile || !w[i].hd || !w[i].hid || !w[i].tk || !w[i].sb ||
		    !w[i].pre)
			goto nomem;
	}
	{
		pthread_t tid[KM_MAX_THREADS];
		int started = 0;
		for (int i = 1; i < nt && (size_t)i < t->C; i++) {
			if (pthread_create(&tid[i], NULL, kt_thread, &w[i]) != 0)
				break;
			started = i;
		}
		kt_thread(&w[0]);
		for (int i = 1; i <= started; i++)
			pthread_join(tid[i], NULL);
	}
	/* each row: the nprobe nearest of its P * M slot results, by (distance, id) */
	for (size_t i = 0; i < n; i++) {
		ann_topk h;
		ann_topk_init(&h, md, mid, nprobe);
		for (size_t e = i * P * M; e < (i + 1) * P * M; e++)
			if (sid[e] != KM_NONE)
				ann_topk_push(&h, sd[e], (int64_t)sid[e]);
		ann_topk_finish(&h);
		for (size_t m = 0; m < nprobe; m++) {
			ids[i * nprobe + m] = mid[m] >= 0 ? (uint32_t)mid[m] : KM_NONE;
			if (dists)
				dists[i * nprobe + m] = mid[m] >= 0 ? md[m] : __builtin_inff();
		}
	}
	goto out;
nomem:
	rc = ann_err(err, ANN_E_NOMEM, "kmeans tree: out of memory for %zu points", n);
fail:
out:
	for (int i = 0; i < KM_MAX_THREADS; i++) {
		ann_free(w[i].gather);
		ann_free(w[i].xn);
		ann_free(w[i].tile);
		ann_free(w[i].hd);
		ann_free(w[i].hid);
		ann_free(w[i].tk);
		ann_free(w[i].sb);
		ann_free(w[i].pre);
	}
	ann_free(cid);
	ann_free(lst);
	ann_free(off);
	ann_free(sid);
	ann_free(sd);
	ann_free(md);
	ann_free(mid);
	return rc;
}
