/* SPDX-License-Identifier: MIT */
/*
 * hnsw.c: the HNSW graph of hnsw.h. Storage: vectors row-major (float32, or
 * uint8 in u8 storage), level-0 lists in fixed slots of 1 + 2M words (count,
 * ids), upper-level lists in one pool of 1 + M word slots per level per
 * node. Parallel construction follows hnswlib: striped per-node locks guard
 * lists, one global lock guards the entry point, and a node whose level
 * exceeds the current top holds it while it is inserted. Distances come from
 * the kernel table of distance.h (f32 x u8 for queries in u8 storage, u8 x
 * u8 between stored vectors).
 */
#include "hnsw_int.h"

#include <assert.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "heap.h"

static inline bool hn_less(hn_pair a, hn_pair b)
{
	return a.d < b.d || (a.d == b.d && a.id < b.id);
}

#define HN_ABOVE_MIN(a, b) hn_less(a, b)
#define HN_ABOVE_MAX(a, b) hn_less(b, a)
ANN_HEAP_DEFINE(hn_minh, hn_pair *, hn_pair, ANN_HEAP_ARRAY_AT, ANN_HEAP_ARRAY_SET, HN_ABOVE_MIN)
ANN_HEAP_DEFINE(hn_maxh, hn_pair *, hn_pair, ANN_HEAP_ARRAY_AT, ANN_HEAP_ARRAY_SET, HN_ABOVE_MAX)

static inline void hn_min_push(hn_pair *h, size_t *n, hn_pair v)
{
	hn_minh_up(h, (*n)++, v);
}

static inline hn_pair hn_min_pop(hn_pair *h, size_t *n)
{
	hn_pair top = h[0];
	if (--*n)
		hn_minh_down(h, *n, 0, h[*n]);
	return top;
}

static inline void hn_max_push(hn_pair *h, size_t *n, hn_pair v)
{
	hn_maxh_up(h, (*n)++, v);
}

/* Replaces the root of a max-heap of n entries by v and restores order. */
static inline void hn_max_replace(hn_pair *h, size_t m, hn_pair v)
{
	hn_maxh_down(h, m, 0, v);
}

static inline hn_pair hn_max_pop(hn_pair *h, size_t *n)
{
	hn_pair top = h[0];
	if (--*n)
		hn_maxh_down(h, *n, 0, h[*n]);
	return top;
}

/* Order of candidates when linking node `base`: by distance, equal
 * distances in an order that differs per base. With ids as the tie-break,
 * every copy of a duplicated vector would link to the same few lowest ids and
 * the other copies would have no incoming edges. */
static inline uint64_t hn_tie(uint32_t id, uint32_t base)
{
	uint64_t z = (((uint64_t)base << 32) | id) * 0x9e3779b97f4a7c15ull;
	return z ^ (z >> 31);
}

static inline bool hn_less_for(hn_pair a, hn_pair b, uint32_t base)
{
	return a.d < b.d || (a.d == b.d && hn_tie(a.id, base) < hn_tie(b.id, base));
}

/* Insertion sort: the input is short (<= 2 M + 1) or nearly sorted. */
static void hn_sort(hn_pair *a, size_t n, uint32_t base)
{
	for (size_t i = 1; i < n; i++) {
		hn_pair v = a[i];
		size_t j = i;
		while (j > 0 && hn_less_for(v, a[j - 1], base)) {
			a[j] = a[j - 1];
			j--;
		}
		a[j] = v;
	}
}

static bool hn_grow(void **p, size_t *cap, size_t need, size_t elem)
{
	if (need <= *cap)
		return true;
	size_t nc = ANN_MAX(need, *cap + *cap / 2);
	nc = ANN_MAX(nc, (size_t)16);
	size_t bytes;
	if (!ann_mul_ok(nc, elem, &bytes))
		return false;
	void *q = ann_realloc(*p, bytes);
	if (!q)
		return false;
	*p = q;
	*cap = nc;
	return true;
}

/* ---- search context -------------------------------------------------------- */

int ann_hnsw_ctx_new(ann_hnsw_ctx **out, ann_error *err)
{
	*out = ann_calloc(1, sizeof(ann_hnsw_ctx));
	if (!*out)
		return ann_err(err, ANN_E_NOMEM, "hnsw: cannot allocate a search context");
	return ANN_OK;
}

void ann_hnsw_ctx_free(ann_hnsw_ctx *c)
{
	if (!c)
		return;
	ann_free(c->tag);
	ann_free(c->cand);
	ann_free(c->res);
	ann_free(c->sorted);
	ann_free(c->q);
	ann_free(c->nb);
	ann_free(c->sel);
	ann_free(c->pruned);
	ann_free(c);
}

size_t ann_hnsw_ctx_bytes(const ann_hnsw_ctx *c)
{
	return sizeof *c + c->tag_cap * sizeof(uint16_t) +
	       (c->cand_cap + c->res_cap + c->sorted_cap + 2 * c->sel_cap) * sizeof(hn_pair) +
	       c->q_cap * sizeof(float) + c->nb_cap * sizeof(uint32_t);
}

/* Sizes c for a search of h with candidate list ef. */
int hn_ctx_prepare(const ann_hnsw *h, ann_hnsw_ctx *c, size_t ef, ann_error *err)
{
	if (c->tag_cap < h->n) {
		size_t nc = ANN_MAX(h->n, h->cap);
		uint16_t *t = ann_calloc(nc, sizeof(uint16_t));
		if (!t)
			return ann_err(err, ANN_E_NOMEM, "hnsw: cannot allocate a visited set of %zu", nc);
		ann_free(c->tag);
		c->tag = t;
		c->tag_cap = nc;
		c->gen = 0;
	}
	size_t lmax = (size_t)ANN_MAX(h->M0, h->M) + 1;
	if (!hn_grow((void **)&c->res, &c->res_cap, ef + 2, sizeof(hn_pair)) ||
	    !hn_grow((void **)&c->cand, &c->cand_cap, 2 * ef + 2, sizeof(hn_pair)) ||
	    !hn_grow((void **)&c->sorted, &c->sorted_cap, ANN_MAX(ef + 2, lmax), sizeof(hn_pair)) ||
	    !hn_grow((void **)&c->q, &c->q_cap, h->d, sizeof(float)) ||
	    !hn_grow((void **)&c->nb, &c->nb_cap, lmax, sizeof(uint32_t)))
		return ann_err(err, ANN_E_NOMEM, "hnsw: cannot grow a search context for ef %zu", ef);
	if (c->sel_cap < lmax) {
		size_t cap1 = c->sel_cap, cap2 = c->sel_cap;
		if (!hn_grow((void **)&c->sel, &cap1, lmax, sizeof(hn_pair)) ||
		    !hn_grow((void **)&c->pruned, &cap2, lmax, sizeof(hn_pair)))
			return ann_err(err, ANN_E_NOMEM, "hnsw: cannot grow a search context");
		c->sel_cap = ANN_MIN(cap1, cap2);
	}
	return ANN_OK;
}

static void hn_visit_reset(ann_hnsw_ctx *c)
{
	if (++c->gen == 0) {
		memset(c->tag, 0, c->tag_cap * sizeof(uint16_t));
		c->gen = 1;
	}
}

/* ---- graph search ---------------------------------------------------------- */

static void hn_lock(const ann_hnsw *h, uint32_t id)
{
	if (h->locks)
		pthread_mutex_lock(&h->locks[id % HN_STRIPES]);
}

static void hn_unlock(const ann_hnsw *h, uint32_t id)
{
	if (h->locks)
		pthread_mutex_unlock(&h->locks[id % HN_STRIPES]);
}

/* The list of id at level lc: in place, or during a parallel build copied
 * into c->nb under the node's lock. *cnt gets its length. */
static const uint32_t *hn_read_links(const ann_hnsw *h, ann_hnsw_ctx *c, uint32_t id, int lc, uint32_t *cnt)
{
	const uint32_t *l = hn_links(h, id, lc);
	if (!h->locks) {
		*cnt = l[0];
		return l + 1;
	}
	hn_lock(h, id);
	*cnt = l[0];
	memcpy(c->nb, l + 1, *cnt * sizeof(uint32_t));
	hn_unlock(h, id);
	return c->nb;
}

/* Greedy descent at level lc from *ep (distance *epd). */
void hn_greedy(const ann_hnsw *h, ann_hnsw_ctx *c, const float *q, uint32_t *ep, float *epd, int lc)
{
	bool changed = true;
	while (changed) {
		changed = false;
		uint32_t cnt;
		const uint32_t *l = hn_read_links(h, c, *ep, lc, &cnt);
		for (uint32_t j = 0; j < cnt; j++) {
			uint32_t nb = l[j];
			float dd = hn_dist(h, q, nb);
			if (dd < *epd || (dd == *epd && nb < *ep)) {
				*epd = dd;
				*ep = nb;
				changed = true;
			}
		}
	}
}

/* Beam search at level lc from ep: leaves the best ef in the max-heap c->res.
 * Returns ANN_E_NOMEM if the candidate heap cannot grow. */
int hn_search_layer(const ann_hnsw *h, ann_hnsw_ctx *c, const float *q, uint32_t ep, float epd,
			   size_t ef, int lc)
{
	hn_visit_reset(c);
	uint16_t gen = c->gen;
	c->ncand = c->nres = 0;
	c->tag[ep] = gen;
	hn_pair e = {epd, ep};
	hn_min_push(c->cand, &c->ncand, e);
	hn_max_push(c->res, &c->nres, e);
	while (c->ncand) {
		hn_pair cur = c->cand[0];
		if (c->nres >= ef && cur.d > c->res[0].d)
			break;
		hn_min_pop(c->cand, &c->ncand);
		uint32_t cnt, fresh = 0;
		const uint32_t *l = hn_read_links(h, c, cur.id, lc, &cnt);
		/* Unvisited neighbours go to c->nb (in place: fresh <= j). */
		for (uint32_t j = 0; j < cnt; j++) {
			uint32_t nb = l[j];
			if (c->tag[nb] == gen)
				continue;
			c->tag[nb] = gen;
			__builtin_prefetch(hn_row(h, nb));
			c->nb[fresh++] = nb;
		}
		if (c->ncand + fresh > c->cand_cap &&
		    !hn_grow((void **)&c->cand, &c->cand_cap, c->ncand + fresh, sizeof(hn_pair)))
			return ANN_E_NOMEM;
		for (uint32_t j = 0; j < fresh; j++) {
			uint32_t nb = c->nb[j];
			if (j + 1 < fresh)
				__builtin_prefetch((const uint8_t *)hn_row(h, c->nb[j + 1]) + 64);
			float dd = hn_dist(h, q, nb);
			hn_pair p = {dd, nb};
			if (c->nres < ef) {
				hn_min_push(c->cand, &c->ncand, p);
				hn_max_push(c->res, &c->nres, p);
			} else if (hn_less(p, c->res[0])) {
				hn_min_push(c->cand, &c->ncand, p);
				hn_max_replace(c->res, c->nres, p);
			}
		}
	}
	return ANN_OK;
}

/* Drains c->res into c->sorted ascending; returns the count. */
size_t hn_drain(ann_hnsw_ctx *c)
{
	size_t m = c->nres;
	for (size_t i = m; i-- > 0;)
		c->sorted[i] = hn_max_pop(c->res, &c->nres);
	return m;
}

/* ---- construction ---------------------------------------------------------- */

/* The heuristic of the paper (Algorithm 4): walk the candidates (ascending
 * distance to the base) and keep one only if it is nearer to the base than
 * to every one kept so far; with keep-pruned, discarded ones fill the
 * remaining slots in order. Copies of the base (distance 0) occlude
 * nothing, so at most m / 2 of them are kept: a list of copies only would
 * make a duplicated vector a trap the search cannot leave. */
static size_t hn_select(const ann_hnsw *h, ann_hnsw_ctx *c, const hn_pair *cand, size_t nc, size_t m)
{
	size_t ns = 0, np = 0, ncopy = 0, max_copy = ANN_MAX(m / 2, (size_t)1);
	/* A copy is at distance 0 (L2), or 0 up to rounding (COSINE); IP has
	 * no such distance, so copies are not recognised there. */
	float copy_d = h->metric == ANN_METRIC_L2 ? 0.0f : h->metric == ANN_METRIC_COSINE ? 1e-6f : -INFINITY;
	for (size_t i = 0; i < nc && ns < m; i++) {
		if (cand[i].d <= copy_d && ncopy++ >= max_copy)
			continue; /* surplus copy: not even kept as pruned */
		bool good = true;
		for (size_t r = 0; r < ns && good; r++)
			good = !(hn_dist_nodes(h, cand[i].id, c->sel[r].id) < cand[i].d);
		if (good)
			c->sel[ns++] = cand[i];
		else if (np < m)
			c->pruned[np++] = cand[i];
	}
	if (h->flags & HN_FLAG_KEEP_PRUNED)
		for (size_t i = 0; i < np && ns < m; i++)
			c->sel[ns++] = c->pruned[i];
	return ns;
}

/* Adds id to the level-lc list of e, pruning it with the heuristic when
 * full. Needs c->sorted (>= 2 M + 1 entries) as scratch. */
static void hn_connect(ann_hnsw *h, ann_hnsw_ctx *c, uint32_t e, uint32_t id, float d_e_id, int lc)
{
	uint32_t cap = lc ? h->M : h->M0;
	hn_lock(h, e);
	uint32_t *l = hn_links(h, e, lc);
	uint32_t cnt = l[0];
	for (uint32_t j = 0; j < cnt; j++) {
		if (l[1 + j] == id) {
			hn_unlock(h, e);
			return;
		}
	}
	if (cnt < cap) {
		l[1 + cnt] = id;
		l[0] = cnt + 1;
		hn_unlock(h, e);
		return;
	}
	hn_pair *cand = c->sorted;
	for (uint32_t j = 0; j < cnt; j++)
		cand[j] = (hn_pair){hn_dist_nodes(h, e, l[1 + j]), l[1 + j]};
	cand[cnt] = (hn_pair){d_e_id, id};
	hn_sort(cand, cnt + 1, e);
	size_t ns = hn_select(h, c, cand, cnt + 1, cap);
	for (size_t j = 0; j < ns; j++)
		l[1 + j] = c->sel[j].id;
	l[0] = (uint32_t)ns;
	hn_unlock(h, e);
}

/* Links node id (vector, level and empty lists already in place). */
static int hn_insert(ann_hnsw *h, ann_hnsw_ctx *c, uint32_t id)
{
	int L = h->level[id];
	if (h->locks)
		pthread_mutex_lock(&h->glock);
	int maxl = h->max_level;
	uint32_t ep = h->entry;
	bool top = L > maxl;
	if (!top && h->locks)
		pthread_mutex_unlock(&h->glock);
	int rc = ANN_OK;
	if (maxl < 0)
		goto done;
	const float *q = hn_query_of(h, c, id);
	float epd = hn_dist(h, q, ep);
	for (int lc = maxl; lc > L; lc--)
		hn_greedy(h, c, q, &ep, &epd, lc);
	for (int lc = ANN_MIN(L, maxl); lc >= 0; lc--) {
		rc = hn_search_layer(h, c, q, ep, epd, h->efc, lc);
		if (rc < 0)
			goto done;
		size_t nc = hn_drain(c), w = 0;
		for (size_t j = 0; j < nc; j++)
			if (c->sorted[j].id != id)
				c->sorted[w++] = c->sorted[j];
		nc = w;
		if (nc == 0)
			continue;
		ep = c->sorted[0].id;
		epd = c->sorted[0].d;
		hn_sort(c->sorted, nc, id);
		size_t ns = hn_select(h, c, c->sorted, nc, h->M);
		/* c->sel is overwritten by hn_connect's pruning: keep a copy. */
		hn_pair chosen[ANN_HNSW_MAX_M];
		memcpy(chosen, c->sel, ns * sizeof(hn_pair));
		uint32_t *l = hn_links(h, id, lc);
		hn_lock(h, id);
		for (size_t j = 0; j < ns; j++)
			l[1 + j] = chosen[j].id;
		l[0] = (uint32_t)ns;
		hn_unlock(h, id);
		for (size_t j = 0; j < ns; j++)
			hn_connect(h, c, chosen[j].id, id, chosen[j].d, lc);
	}
done:
	if (top) {
		h->entry = id;
		h->max_level = L;
		if (h->locks)
			pthread_mutex_unlock(&h->glock);
	}
	return rc;
}

static int hn_draw_level(ann_hnsw *h)
{
	double u = 1.0 - ann_rng_uniform(&h->rng); /* (0, 1] */
	double l = floor(-log(u) * h->mult);
	return l > ANN_HNSW_MAX_LEVEL ? ANN_HNSW_MAX_LEVEL : (int)l;
}

int hn_set_cap(ann_hnsw *h, size_t cap, ann_error *err)
{
	if (cap <= h->cap)
		return ANN_OK;
	size_t vb, lb;
	if (!ann_mul_ok(cap, h->row, &vb) || !ann_mul_ok(cap, (1 + (size_t)h->M0) * 4, &lb))
		return ann_err(err, ANN_E_INVAL, "hnsw: capacity %zu overflows", cap);
	uint8_t *v = ann_realloc(h->vec, vb);
	if (!v)
		goto nomem;
	h->vec = v;
	uint32_t *l = ann_realloc(h->link0, lb);
	if (!l)
		goto nomem;
	h->link0 = l;
	uint8_t *lv = ann_realloc(h->level, cap);
	if (!lv)
		goto nomem;
	h->level = lv;
	size_t *uo = ann_realloc(h->uoff, cap * sizeof(size_t));
	if (!uo)
		goto nomem;
	h->uoff = uo;
	h->cap = cap;
	return ANN_OK;
nomem:
	return ann_err(err, ANN_E_NOMEM, "hnsw: cannot grow to %zu vectors of dimension %zu", cap, h->d);
}

/* Reserves upper-list words for `words` more. */
int hn_upper_reserve(ann_hnsw *h, size_t words, ann_error *err)
{
	if (!hn_grow((void **)&h->upper, &h->upper_cap, h->upper_n + words, sizeof(uint32_t)))
		return ann_err(err, ANN_E_NOMEM, "hnsw: cannot grow the upper-level lists to %zu words",
			       h->upper_n + words);
	return ANN_OK;
}

/* In u8 storage, v must be on the integer grid 0..255 (hn_place stores it
 * as is); row is the row number for the message. */
static int hn_check_row(const ann_hnsw *h, const float *v, size_t row, ann_error *err)
{
	if (!h->u8)
		return ANN_OK;
	for (size_t j = 0; j < h->d; j++)
		if (!(v[j] >= 0.0f && v[j] <= 255.0f && v[j] == (float)(int)v[j]))
			return ann_err(err, ANN_E_INVAL,
				       "hnsw: u8 storage: vector %zu component %zu is %g, not an integer in 0..255",
				       row, j, (double)v[j]);
	return ANN_OK;
}

/* Stores v as node id = h->n with level L (capacity already reserved). */
static void hn_place(ann_hnsw *h, const float *v, int L)
{
	size_t id = h->n, d = h->d;
	if (h->u8) {
		uint8_t *dst = h->vec + id * h->row;
		for (size_t j = 0; j < d; j++)
			dst[j] = (uint8_t)v[j];
	} else {
		float *dst = (float *)(void *)(h->vec + id * h->row);
		memcpy(dst, v, h->row);
		if (h->metric == ANN_METRIC_COSINE) {
			double s = 0;
			for (size_t j = 0; j < d; j++)
				s += (double)dst[j] * dst[j];
			if (s > 0) {
				float inv = (float)(1.0 / sqrt(s));
				for (size_t j = 0; j < d; j++)
					dst[j] *= inv;
			}
		}
	}
	h->level[id] = (uint8_t)L;
	h->link0[id * (1 + h->M0)] = 0;
	h->uoff[id] = h->upper_n;
	for (int lc = 1; lc <= L; lc++)
		h->upper[h->upper_n + (size_t)(lc - 1) * (1 + h->M)] = 0;
	h->upper_n += (size_t)L * (1 + h->M);
	h->n = id + 1;
}

/* ---- public: life cycle ------------------------------------------------------ */

int hn_check_params(size_t d, ann_metric metric, uint32_t M, uint32_t efc, ann_error *err)
{
	if (d == 0 || d > ANN_HNSW_MAX_DIM)
		return ann_err(err, ANN_E_INVAL, "hnsw: dimension %zu not in 1..%d", d, ANN_HNSW_MAX_DIM);
	if (metric != ANN_METRIC_L2 && metric != ANN_METRIC_IP && metric != ANN_METRIC_COSINE)
		return ann_err(err, ANN_E_INVAL, "hnsw: unknown metric %d", (int)metric);
	if (M < 2 || M > ANN_HNSW_MAX_M)
		return ann_err(err, ANN_E_INVAL, "hnsw: M %u not in 2..%d", M, ANN_HNSW_MAX_M);
	if (efc == 0 || efc > (1u << 20))
		return ann_err(err, ANN_E_INVAL, "hnsw: ef_construction %u not in 1..2^20", efc);
	return ANN_OK;
}

int hn_create(size_t d, ann_metric metric, bool u8, uint32_t M, uint32_t ef_construction, uint64_t seed,
		     ann_hnsw **out, ann_error *err)
{
	*out = NULL;
	ANN_TRY(hn_check_params(d, metric, M, ef_construction, err));
	if (u8 && metric != ANN_METRIC_L2)
		return ann_err(err, ANN_E_INVAL, "hnsw: u8 storage needs metric L2, not %d", (int)metric);
	ann_hnsw *h = ann_calloc(1, sizeof *h);
	if (!h)
		return ann_err(err, ANN_E_NOMEM, "hnsw: cannot allocate the graph");
	h->d = d;
	h->metric = metric;
	h->u8 = u8;
	h->row = u8 ? d : d * sizeof(float);
	h->M = M;
	h->M0 = 2 * M;
	h->efc = ef_construction;
	h->flags = HN_FLAG_KEEP_PRUNED;
	h->mult = 1.0 / log((double)M);
	ann_rng_seed(&h->rng, seed);
	h->kern = ann_kernels_best();
	h->max_level = -1;
	h->entry = HN_NONE;
	*out = h;
	return ANN_OK;
}

int ann_hnsw_create(size_t d, ann_metric metric, uint32_t M, uint32_t ef_construction, uint64_t seed,
		    ann_hnsw **out, ann_error *err)
{
	return hn_create(d, metric, false, M, ef_construction, seed, out, err);
}

int ann_hnsw_create_u8(size_t d, ann_metric metric, uint32_t M, uint32_t ef_construction, uint64_t seed,
		       ann_hnsw **out, ann_error *err)
{
	return hn_create(d, metric, true, M, ef_construction, seed, out, err);
}

void ann_hnsw_free(ann_hnsw *h)
{
	if (!h)
		return;
	ann_free(h->vec);
	ann_free(h->link0);
	ann_free(h->level);
	ann_free(h->uoff);
	ann_free(h->upper);
	ann_hnsw_ctx_free(h->actx);
	ann_free(h);
}

int ann_hnsw_reserve(ann_hnsw *h, size_t n, ann_error *err)
{
	if (n > HN_MAX_N)
		return ann_err(err, ANN_E_INVAL, "hnsw: %zu vectors exceed the limit of %zu", n, HN_MAX_N);
	return hn_set_cap(h, n, err);
}

size_t ann_hnsw_count(const ann_hnsw *h)
{
	return h->n;
}

size_t ann_hnsw_dim(const ann_hnsw *h)
{
	return h->d;
}

ann_metric ann_hnsw_metric(const ann_hnsw *h)
{
	return h->metric;
}

uint32_t ann_hnsw_degree(const ann_hnsw *h)
{
	return h->M;
}

uint32_t ann_hnsw_ef_construction(const ann_hnsw *h)
{
	return h->efc;
}

uint32_t ann_hnsw_search_ef(const ann_hnsw *h)
{
	return h->search_ef;
}

void ann_hnsw_set_search_ef(ann_hnsw *h, uint32_t ef)
{
	h->search_ef = ANN_MIN(ef, (uint32_t)ANN_MAX_EF);
}

bool ann_hnsw_is_u8(const ann_hnsw *h)
{
	return h->u8;
}

void ann_hnsw_vector_get(const ann_hnsw *h, uint32_t id, float *out)
{
	assert(id < h->n);
	if (!h->u8) {
		memcpy(out, hn_row(h, id), h->row);
		return;
	}
	const uint8_t *v = hn_row(h, id);
	for (size_t j = 0; j < h->d; j++)
		out[j] = v[j];
}

const float *ann_hnsw_vectors(const ann_hnsw *h)
{
	return h->u8 ? NULL : (const float *)(const void *)h->vec;
}

size_t ann_hnsw_bytes(const ann_hnsw *h)
{
	size_t per_node = h->row + (1 + (size_t)h->M0) * 4 + 1 + sizeof(size_t);
	size_t b = sizeof *h + h->cap * per_node + h->upper_cap * sizeof(uint32_t);
	if (h->actx)
		b += ann_hnsw_ctx_bytes(h->actx);
	return b;
}

/* ---- public: construction -------------------------------------------------- */

int ann_hnsw_add(ann_hnsw *h, const float *v, uint32_t *id, ann_error *err)
{
	if (h->failed)
		return ann_err(err, ANN_E_STATE, "hnsw: an earlier add or build failed, no more adds");
	if (h->n >= HN_MAX_N)
		return ann_err(err, ANN_E_INVAL, "hnsw: already %zu vectors, the limit", h->n);
	ANN_TRY(hn_check_row(h, v, h->n, err));
	if (h->n == h->cap)
		ANN_TRY(hn_set_cap(h, ANN_MAX(h->cap + h->cap / 2, (size_t)64), err));
	if (!h->actx)
		ANN_TRY(ann_hnsw_ctx_new(&h->actx, err));
	/* Draw the level only once nothing can fail before the node is placed,
	 * so a failed add leaves the generator where it was. */
	ann_rng saved = h->rng;
	int L = hn_draw_level(h);
	int rc = hn_upper_reserve(h, (size_t)L * (1 + h->M), err);
	if (rc == ANN_OK)
		rc = hn_ctx_prepare(h, h->actx, h->efc, err);
	if (rc < 0) {
		h->rng = saved;
		return rc;
	}
	/* The visited set must cover the new node too. */
	if (h->actx->tag_cap < h->n + 1) {
		h->n++;
		rc = hn_ctx_prepare(h, h->actx, h->efc, err);
		h->n--;
		if (rc < 0) {
			h->rng = saved;
			return rc;
		}
	}
	hn_place(h, v, L);
	uint32_t nid = (uint32_t)(h->n - 1);
	if (id)
		*id = nid;
	rc = hn_insert(h, h->actx, nid);
	if (rc < 0) {
		h->failed = true;
		return ann_err(err, rc, "hnsw: out of memory while linking vector %u", nid);
	}
	return ANN_OK;
}

typedef struct hn_job {
	ann_hnsw *h;
	ann_hnsw_ctx *ctx;
	size_t first, last; /* ids to insert */
	atomic_size_t *next;
	atomic_size_t *done;
	atomic_int *rc;
} hn_job;

static void *hn_build_thread(void *arg)
{
	hn_job *j = arg;
	for (;;) {
		if (atomic_load(j->rc) < 0)
			break;
		size_t i = atomic_fetch_add(j->next, 1);
		if (i >= j->last - j->first)
			break;
		int rc = hn_insert(j->h, j->ctx, (uint32_t)(j->first + i));
		if (rc < 0) {
			atomic_store(j->rc, rc);
			break;
		}
		atomic_fetch_add(j->done, 1);
	}
	return NULL;
}

static int hn_build_links(ann_hnsw *h, const float *x, size_t n, int threads, ann_progress_fn progress,
			  void *progress_ctx, ann_error *err)
{
	if (h->failed)
		return ann_err(err, ANN_E_STATE, "hnsw: an earlier add or build failed, no more adds");
	if (threads < 1 || threads > HN_MAX_THREADS)
		return ann_err(err, ANN_E_INVAL, "hnsw: threads %d not in 1..%d", threads, HN_MAX_THREADS);
	if (n == 0)
		return ANN_OK;
	if (!x)
		return ann_err(err, ANN_E_INVAL, "hnsw: NULL vectors");
	if (n > HN_MAX_N - h->n)
		return ann_err(err, ANN_E_INVAL, "hnsw: %zu + %zu vectors exceed the limit of %zu", h->n, n,
			       HN_MAX_N);
	/* Every row is checked before any is placed: a refused build adds nothing. */
	for (size_t i = 0; i < n; i++)
		ANN_TRY(hn_check_row(h, x + i * h->d, h->n + i, err));
	if (threads == 1) {
		uint64_t last = ann_now_ns();
		ANN_TRY(hn_set_cap(h, h->n + n, err));
		for (size_t i = 0; i < n; i++) {
			ANN_TRY(ann_hnsw_add(h, x + i * h->d, NULL, err));
			if (progress && (i + 1 == n || ann_now_ns() - last >= HN_PROGRESS_NS)) {
				progress(progress_ctx, "hnsw", i + 1, n);
				last = ann_now_ns();
			}
		}
		return ANN_OK;
	}

	/* Parallel: levels are drawn and nodes placed serially, then linked. */
	ANN_TRY(hn_set_cap(h, h->n + n, err));
	ann_rng saved = h->rng;
	size_t first = h->n, words = 0;
	ann_hnsw_ctx *ctx[HN_MAX_THREADS] = {0};
	pthread_t tid[HN_MAX_THREADS];
	hn_job job[HN_MAX_THREADS];
	atomic_size_t next = 0, done = 0;
	atomic_int arc = ANN_OK;
	int started = 0, rc;
	bool locks_ready = false;
	uint8_t *lv = ann_malloc(n);
	if (!lv)
		return ann_err(err, ANN_E_NOMEM, "hnsw: cannot allocate %zu levels", n);
	for (size_t i = 0; i < n; i++) {
		lv[i] = (uint8_t)hn_draw_level(h);
		words += (size_t)lv[i] * (1 + h->M);
	}
	ANN_CHECK(rc, hn_upper_reserve(h, words, err));
	h->locks = ann_malloc(HN_STRIPES * sizeof(pthread_mutex_t));
	if (!h->locks) {
		rc = ann_err(err, ANN_E_NOMEM, "hnsw: cannot allocate build locks");
		goto fail;
	}
	for (unsigned i = 0; i < HN_STRIPES; i++)
		pthread_mutex_init(&h->locks[i], NULL);
	pthread_mutex_init(&h->glock, NULL);
	locks_ready = true;
	/* Size every context for the final count before any node is linked. */
	h->n = first + n;
	for (int t = 0; t < threads && rc == ANN_OK; t++) {
		rc = ann_hnsw_ctx_new(&ctx[t], err);
		if (rc == ANN_OK)
			rc = hn_ctx_prepare(h, ctx[t], h->efc, err);
	}
	h->n = first;
	if (rc < 0)
		goto fail;
	for (size_t i = 0; i < n; i++)
		hn_place(h, x + i * h->d, lv[i]);

	/* From here a failure leaves nodes half-linked: the graph stays valid
	 * for searches but takes no more adds (ANN_E_STATE). */
	if (h->max_level < 0) {
		/* The first node becomes the entry point before others search. */
		rc = hn_insert(h, ctx[0], (uint32_t)first);
		if (rc < 0)
			goto linkfail;
		atomic_store(&next, 1);
		atomic_store(&done, 1);
	}
	for (int t = 0; t < threads; t++)
		job[t] = (hn_job){h, ctx[t], first, first + n, &next, &done, &arc};
	for (int t = 1; t < threads; t++) {
		if (pthread_create(&tid[t], NULL, hn_build_thread, &job[t]) != 0)
			break;
		started = t;
	}
	/* The calling thread inserts too, and reports progress between inserts. */
	uint64_t last = ann_now_ns();
	for (;;) {
		if (atomic_load(&arc) < 0)
			break;
		size_t i = atomic_fetch_add(&next, 1);
		if (i >= n)
			break;
		int r = hn_insert(h, ctx[0], (uint32_t)(first + i));
		if (r < 0) {
			atomic_store(&arc, r);
			break;
		}
		atomic_fetch_add(&done, 1);
		if (progress && ann_now_ns() - last >= HN_PROGRESS_NS) {
			progress(progress_ctx, "hnsw", atomic_load(&done), n);
			last = ann_now_ns();
		}
	}
	for (int t = 1; t <= started; t++)
		pthread_join(tid[t], NULL);
	rc = atomic_load(&arc);
	if (rc < 0)
		goto linkfail;
	if (progress)
		progress(progress_ctx, "hnsw", n, n);
	goto out;
linkfail:
	h->failed = true;
	rc = ann_err(err, rc, "hnsw: out of memory while linking vectors %zu..%zu", first, first + n - 1);
	goto out;
fail:
	h->rng = saved; /* nothing was placed: the build can be retried */
out:
	if (locks_ready) {
		for (unsigned i = 0; i < HN_STRIPES; i++)
			pthread_mutex_destroy(&h->locks[i]);
		pthread_mutex_destroy(&h->glock);
	}
	ann_free(h->locks);
	h->locks = NULL;
	for (int t = 0; t < threads; t++)
		ann_hnsw_ctx_free(ctx[t]);
	ann_free(lv);
	return rc;
}

int ann_hnsw_build(ann_hnsw *h, const float *x, size_t n, int threads, ann_progress_fn progress,
		   void *progress_ctx, ann_error *err)
{
	ANN_TRY(hn_build_links(h, x, n, threads, progress, progress_ctx, err));
	return n ? ann_hnsw_repair(h, NULL, err) : ANN_OK;
}

/* ---- public: search ---------------------------------------------------------- */

int ann_hnsw_scan(const ann_hnsw *h, const float *q, size_t k, int32_t *ids, float *dists, uint64_t *sel,
		  uint32_t *scratch)
{
	enum { BLK = 256 };
	float buf[BLK];
	size_t n = h->n;
	k = ANN_MIN(k, n);
	if (k == 0)
		return 0;
	float qinv = 1.0f;
	if (h->metric == ANN_METRIC_COSINE) {
		double n2 = 0;
		for (size_t j = 0; j < h->d; j++)
			n2 += (double)q[j] * q[j];
		qinv = n2 > 0 ? (float)(1.0 / sqrt(n2)) : 0.0f;
	}
	uint32_t *key = scratch, *tmp = scratch + n;
	for (size_t at = 0; at < n; at += BLK) {
		size_t m = ANN_MIN((size_t)BLK, n - at);
		if (h->u8 && h->metric == ANN_METRIC_L2)
			h->kern->l2_f32_u8_many(q, hn_row(h, (uint32_t)at), m, h->d, buf);
		else if (!h->u8 && h->metric == ANN_METRIC_L2)
			h->kern->l2_f32_many(q, hn_row(h, (uint32_t)at), m, h->d, buf);
		else if (h->metric == ANN_METRIC_COSINE)
			for (size_t j = 0; j < m; j++) /* the stored rows are unit vectors (ann_hnsw_search normalises q) */
				buf[j] = 1.0f - h->kern->ip_f32(q, hn_row(h, (uint32_t)(at + j)), h->d) * qinv;
		else
			for (size_t j = 0; j < m; j++)
				buf[j] = hn_dist(h, q, (uint32_t)(at + j));
		for (size_t j = 0; j < m; j++)
			key[at + j] = ann_fkey(buf[j]);
	}
	/* the k-th smallest key, then every key below it and the first ties by id */
	memcpy(tmp, key, n * sizeof *tmp);
	uint32_t thr = ann_kth_u32(tmp, n, k - 1);
	size_t m = 0;
	for (size_t i = 0; i < n && m < k; i++)
		if (key[i] < thr)
			sel[m++] = (uint64_t)key[i] << 32 | i;
	for (size_t i = 0; i < n && m < k; i++)
		if (key[i] == thr)
			sel[m++] = (uint64_t)key[i] << 32 | i;
	ann_sort_u64(sel, m);
	for (size_t j = 0; j < m; j++) {
		ids[j] = (int32_t)(uint32_t)sel[j];
		dists[j] = ann_fval((uint32_t)(sel[j] >> 32));
	}
	return (int)m;
}

int ann_hnsw_search(const ann_hnsw *h, ann_hnsw_ctx *ctx, const float *q, size_t k, size_t ef, int32_t *ids,
		    float *dists, ann_error *err)
{
	if (k == 0)
		return 0;
	if (!q || !ids)
		return ann_err(err, ANN_E_INVAL, "hnsw: NULL query or output");
	ann_hnsw_ctx *own = NULL;
	size_t found = 0;
	int rc = ANN_OK;
	if (h->n > 0) {
		if (!ctx)
			ANN_TRY(ann_hnsw_ctx_new(&own, err));
		ann_hnsw_ctx *c = ctx ? ctx : own;
		ef = ANN_MAX(ef, k);
		ANN_CHECK(rc, hn_ctx_prepare(h, c, ef, err));
		if (h->metric == ANN_METRIC_COSINE) {
			double s = 0;
			for (size_t j = 0; j < h->d; j++)
				s += (double)q[j] * q[j];
			float inv = s > 0 ? (float)(1.0 / sqrt(s)) : 0.0f;
			for (size_t j = 0; j < h->d; j++)
				c->q[j] = q[j] * inv;
			q = c->q;
		}
		uint32_t ep = h->entry;
		float epd = hn_dist(h, q, ep);
		for (int lc = h->max_level; lc > 0; lc--)
			hn_greedy(h, c, q, &ep, &epd, lc);
		if (hn_search_layer(h, c, q, ep, epd, ef, 0) < 0) {
			rc = ann_err(err, ANN_E_NOMEM, "hnsw: cannot grow the candidate heap (ef %zu)", ef);
			goto fail;
		}
		size_t m = hn_drain(c);
		found = ANN_MIN(m, k);
		for (size_t j = 0; j < found; j++) {
			ids[j] = (int32_t)c->sorted[j].id;
			if (dists)
				dists[j] = c->sorted[j].d;
		}
	}
	for (size_t j = found; j < k; j++) {
		ids[j] = -1;
		if (dists)
			dists[j] = __builtin_inff();
	}
	rc = (int)found;
fail:
	ann_hnsw_ctx_free(own);
	return rc;
}

int ann_hnsw_nearest_rows(const ann_hnsw *h, const float *x, size_t n, uint32_t m, uint32_t *ids, float *dists,
			  ann_error *err)
{
	ann_hnsw_ctx *hc;
	ANN_TRY(ann_hnsw_ctx_new(&hc, err));
	size_t d = ann_hnsw_dim(h);
	int rc = ANN_OK;
	for (size_t i = 0; i < n && rc >= 0; i++) {
		/* int32_t and uint32_t may alias: found ids in place, -1 -> UINT32_MAX */
		int32_t *row = (int32_t *)(ids + i * m);
		rc = ann_hnsw_search(h, hc, x + i * d, m, ANN_MAX(64u, 4 * m), row, dists + i * m, err);
		for (uint32_t j = 0; j < m; j++)
			ids[i * m + j] = row[j] < 0 ? UINT32_MAX : (uint32_t)row[j];
	}
	ann_hnsw_ctx_free(hc);
	return rc < 0 ? rc : ANN_OK;
}

