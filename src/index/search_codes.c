/* SPDX-License-Identifier: MIT */
/*
 * search_codes.c: the two-round path of codes blocks (docs/DESIGN.md, "Codes
 * and re-ranking"), called by search.c for every partition whose directory
 * entry has a head:
 *  - round 1 (codes_head): the head is checked against the directory and the
 *    index, its page sums kept for round 2, and its codes estimate the
 *    distance of every row for every query probing it; per query two heaps
 *    are fed: the k smallest upper bounds (ub) and the `rerank` best
 *    estimates whose lower bound beats the k-th upper bound (cands);
 *  - round 2 (codes_round2): per query the kept candidates whose lower bound
 *    is still below the k-th upper bound have their exact rows read (the
 *    pages that hold them, deduplicated within the batch, adjacent pages of
 *    a partition coalesced into one read), checked against the page sums and
 *    re-ranked exactly into the query's top k.
 * Invariants: every distance pushed to a top k is exact; a page is used only
 * after its sum matched the head's; tombstones are filtered in round 1.
 */
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "heap.h"
#include "search_int.h"

int codes_searcher_init(ann_searcher *s, ann_error *err)
{
	ann_index *idx = s->idx;
	ANN_TRY(ann_rbq_query_new(idx->rbq, &s->rq, err));
	float eps = s->o.rerank_eps > 0 ? s->o.rerank_eps : idx->rerank_eps; /* the option, else the calibration */
	ann_rbq_query_set_eps0(s->rq, eps > 0 ? eps : ANN_DEFAULT_RERANK_EPS);
	s->centre = ann_malloc((size_t)idx->meta.dim * sizeof(float));
	s->crot = ann_malloc((size_t)ann_rbq_padded_dim(idx->rbq) * sizeof(float));
	s->rowf = ann_malloc((size_t)idx->meta.dim * sizeof(float));
	s->rowcat = ann_malloc((size_t)idx->meta.dim * sizeof(float));
	if (!s->centre || !s->crot || !s->rowf || !s->rowcat)
		return ann_err(err, ANN_E_NOMEM, "%s: out of memory for a searcher", idx->path);
	return ANN_OK;
}

void codes_searcher_free(ann_searcher *s)
{
	ann_rbq_query_free(s->rq);
	ann_free(s->est);
	ann_free(s->width);
	ann_free(s->hids);
	ann_free(s->centre);
	ann_free(s->rowf);
	ann_free(s->rowcat);
	ann_free(s->covp);
	ann_free(s->uh);
	ann_free(s->sums);
	ann_free(s->p0);
	ann_free(s->cands);
	ann_free(s->ncand);
	ann_free(s->ub);
	ann_free(s->ubid);
	ann_free(s->nub);
	ann_free(s->ents);
	ann_free(s->flags);
	ann_free(s->runlo);
	ann_free(s->fac);
	ann_free(s->held);
	ann_free(s->crot);
	ann_free(s->ubase);
	ann_free(s->kcnt);
	ann_free(s->ents2);
	ann_free(s->qrot);
	ann_free(s->qrot_ok);
	ann_free(s->hrefs);
	ann_free(s->ecand);
}

int codes_batch(ann_searcher *s, size_t n, ann_error *err)
{
	if (!s->rq)
		return ANN_OK;
	size_t k = s->o.k, r = s->rerank;
	size_t dp = ann_rbq_padded_dim(s->idx->rbq);
	void **const slots[] = {(void **)&s->cands, (void **)&s->ncand, (void **)&s->ub,     (void **)&s->ubid,
				(void **)&s->nub,   (void **)&s->ents,  (void **)&s->qrot, (void **)&s->qrot_ok};
	const size_t bytes[] = {n * r * sizeof(cand),    n * sizeof(uint32_t), n * k * sizeof(float),
				n * k * sizeof(int64_t), n * sizeof(uint32_t), n * r * sizeof(r2ent),
				n * dp * sizeof(float),  n};
	if (search_resize(slots, bytes, 8) < 0)
		return ann_err(err, ANN_E_NOMEM, "search: out of memory for a batch of %zu queries", n);
	s->ents_cap = n * r;
	return ANN_OK;
}

/* ---- codes blocks: candidate heaps ----------------------------------------------------- */

/* Max-heap on est of query qi's kept candidates (the rerank best). */
#define CAND_ABOVE(a, b) ((a).est > (b).est)
ANN_HEAP_DEFINE(cand_heap, cand *, cand, ANN_HEAP_ARRAY_AT, ANN_HEAP_ARRAY_SET, CAND_ABOVE)

static void cand_push(ann_searcher *s, size_t qi, const cand *c)
{
	cand *h = s->cands + qi * s->rerank;
	uint32_t n = s->ncand[qi];
	if (n == s->rerank) {
		if (c->est < h[0].est)
			cand_heap_down(h, n, 0, *c);
		return;
	}
	cand_heap_up(h, n, *c);
	s->ncand[qi] = n + 1;
}

/* The k-th smallest upper bound of query qi so far (+inf until k are known). */
static float ub_kth(const ann_searcher *s, size_t qi)
{
	return s->nub[qi] == s->o.k ? s->ub[qi * s->o.k] : INFINITY;
}

/* Max-heap of the k smallest upper bounds of one query (distinct ids when
 * replicated), over the searcher's two arrays. */
typedef struct ub_heap_ref {
	float *v;
	int64_t *id;
} ub_heap_ref;
typedef struct ub_ent {
	float v;
	int64_t id;
} ub_ent;
#define UB_AT(r, i) ((ub_ent){(r).v[i], (r).id[i]})
#define UB_SET(r, i, e) ((r).v[i] = (e).v, (r).id[i] = (e).id)
#define UB_ABOVE(a, b) ((a).v > (b).v)
ANN_HEAP_DEFINE(ub_heap, ub_heap_ref, ub_ent, UB_AT, UB_SET, UB_ABOVE)

static void ub_push(ann_searcher *s, size_t qi, float v, int64_t id)
{
	size_t k = s->o.k;
	ub_heap_ref h = {s->ub + qi * k, s->ubid + qi * k};
	uint32_t n = s->nub[qi];
	if (s->idx->meta.replicas > 1)
		for (uint32_t i = 0; i < n; i++)
			if (h.id[i] == id)
				return; /* a replica already in: keep its bound (a tighter one is rare, the looser still valid) */
	if (n == k) {
		if (v < h.v[0])
			ub_heap_down(h, n, 0, (ub_ent){v, id});
		return;
	}
	ub_heap_up(h, n, (ub_ent){v, id});
	s->nub[qi] = n + 1;
}

void codes_probe_state(const ann_searcher *s, size_t qi, float *ub_k, float *best)
{
	*ub_k = ub_kth(s, qi);
	float b = INFINITY;
	const cand *h = s->cands + qi * s->rerank;
	for (uint32_t i = 0; i < s->ncand[qi]; i++)
		b = h[i].est < b ? h[i].est : b;
	*best = b;
}

/* The inner-product distances -<q, x> of a 2.4 block's rows from their L2
 * estimates, in place (codes_head): <q, x> = <q, c> + cross + <c, r> with
 * cross = (|r|^2 + |q - c|^2 - est) / 2, and the cross term's width, half
 * the L2 width. |r| from the widened factors (fac, slim records) or the
 * full records. */
static void ip_from_l2(const ann_cblock_info *in, const uint8_t *blk, const uint8_t *codes, const float *fac,
		       const float *qv, const float *c, size_t d, float *est, float *width)
{
	double qc = 0, qc2 = 0;
	for (size_t j = 0; j < d; j++) {
		qc += (double)qv[j] * c[j];
		qc2 += ((double)qv[j] - c[j]) * ((double)qv[j] - c[j]);
	}
	const uint8_t *cr = blk + in->cr_off;
	size_t np = in->full_code_bytes - 10; /* the norm's offset in a full record (planes, then the factors) */
	for (uint32_t i = 0; i < in->count; i++) {
		double rn = fac ? fac[i] : ann_ldf32(codes + (size_t)i * in->code_bytes + np);
		double cross = 0.5 * (rn * rn + qc2 - (double)est[i]);
		est[i] = (float)(-(qc + cross + (double)ann_ldf32(cr + 4 * (size_t)i)));
		width[i] *= 0.5f;
	}
}

/* Whether any of 8 rows' lower bounds (est scale + shift) - wid scale is at or below kth:
 * the candidate loop's test, in the same float operations (so the same answer, NaN never). */
static inline bool block_may_pass(const float *est, const float *wid, float scale, float shift, float kth)
{
#if defined(__SSE2__)
	const __m128 vs = _mm_set1_ps(scale), vsh = _mm_set1_ps(shift), vk = _mm_set1_ps(kth);
	__m128 l0 = _mm_sub_ps(_mm_add_ps(_mm_mul_ps(_mm_loadu_ps(est), vs), vsh), _mm_mul_ps(_mm_loadu_ps(wid), vs));
	__m128 l1 = _mm_sub_ps(_mm_add_ps(_mm_mul_ps(_mm_loadu_ps(est + 4), vs), vsh),
			       _mm_mul_ps(_mm_loadu_ps(wid + 4), vs));
	return _mm_movemask_ps(_mm_or_ps(_mm_cmple_ps(l0, vk), _mm_cmple_ps(l1, vk))) != 0;
#else
	bool any = false;
	for (int t = 0; t < 8; t++)
		any |= (est[t] * scale + shift) - wid[t] * scale <= kth;
	return any;
#endif
}

/* Round 1 of a codes block (search_int.h). */
int codes_head(ann_searcher *s, size_t u, const ann_block_read *br, bool cached, uint64_t *est_ns, ann_error *err)
{
	ann_index *x = s->idx;
	uint32_t pid = s->upids[u];
	uint64_t t0 = ann_now_ns();
	uhead *uh = &s->uh[u];
	ann_cblock_info *in = &uh->in;
	size_t need = br->ent.count ? br->ent.count : 1;
	size_t wcap = s->est_cap;
	if (search_grow((void **)&s->hids, &s->hids_cap, need, sizeof(int64_t)) < 0 ||
	    search_grow((void **)&s->width, &wcap, need, sizeof(float)) < 0 ||
	    search_grow((void **)&s->est, &s->est_cap, need, sizeof(float)) < 0)
		return ann_err(err, ANN_E_NOMEM, "search: out of memory for %zu estimates", need);
	int rc = cblock_head(br->data, br->length, in, NULL, err);
	if (rc < 0)
		return ann_err_prefix(err, rc, "%s: partition %u", x->path, pid);
	if (in->count > s->hids_cap || in->count != br->ent.count)
		return ann_err(err, ANN_E_CORRUPT, "%s: partition %u: codes block holds %u vectors, the directory says %u",
			       x->path, pid, in->count, br->ent.count);
	bool ids_done = false; /* decoded when a row first passes a bound (many heads have none) */
	if (in->partition != pid || in->head_bytes != br->ent.head || in->dim != x->meta.dim ||
	    in->encoding != ann_encoding_block(x->meta.encoding) || in->code_bits != ann_rbq_bits(x->rbq) ||
	    in->code_seed != ann_rbq_seed(x->rbq) || in->full_code_bytes != ann_rbq_code_bytes(x->rbq))
		return ann_err(err, ANN_E_CORRUPT, "%s: partition %u: codes block of partition %llu (head %u bytes, "
			       "dimension %u, encoding %u, %u-bit codes) where the directory and meta expect head %u, "
			       "dimension %u, encoding %u, %u-bit codes", x->path, pid, (unsigned long long)in->partition,
			       in->head_bytes, in->dim, (unsigned)in->encoding, in->code_bits, br->ent.head, x->meta.dim,
			       (unsigned)ann_encoding_block(x->meta.encoding), ann_rbq_bits(x->rbq));
	/* Keep the page sums for round 2. */
	size_t sb = (size_t)in->exact_pages * 4;
	if (search_grow((void **)&s->sums, &s->sums_cap, s->sums_len + sb + 1, 1) < 0)
		return ann_err(err, ANN_E_NOMEM, "search: out of memory for page sums");
	memcpy(s->sums + s->sums_len, br->data + in->sums_off, sb);
	uh->sums_at = s->sums_len;
	s->sums_len += sb;
	uh->codes = true;
	uh->p0 = 0;
	/* A 2.3 block's exact page 0 came with the head's pages (not from the
	 * cache, which keeps the head alone): its rows, 0..page0_rows, are
	 * candidates like any, and round 2 serves them without a read. */
	uint32_t p0rows = (in->flags & CBLOCK_FLAG_HEAD_PAGE) && br->length >= in->exact_offset + CBLOCK_PAGE
				  ? in->page0_rows
				  : 0;
	bool p0_cand = false;
	size_t d = x->meta.dim;
	cblock_centre(in, br->data, s->centre);
	/* 2.1 slim records: their factors are widened once per head (not per
	 * query) into s->fac (|r|, f_ip, tan: count floats each) and the
	 * estimate reads the stored codes in place (the page sums follow them
	 * in the head, so the kernels' reads past the last record stay in it). */
	const uint8_t *codes = br->data + in->codes_off;
	const float *fac = NULL;
	if ((in->flags & CBLOCK_FLAG_F16) && in->count) {
		if (search_grow((void **)&s->fac, &s->fac_cap, (size_t)in->count * 3, sizeof(float)) < 0)
			return ann_err(err, ANN_E_NOMEM, "search: out of memory for %u codes' factors", in->count);
		fac = s->fac;
		cblock_factors(in, codes, in->count, s->fac, s->fac + in->count, s->fac + 2 * (size_t)in->count);
	}
	ann_metric m = x->meta.metric;
	uint32_t sharers = s->ustart[u + 1] - s->ustart[u];
	size_t dp = ann_rbq_padded_dim(x->rbq);
	bool rotated = sharers > 1 && (m != ANN_METRIC_IP || in->cr_off); /* the centre rotated once for its queries' L2 set-ups */
	if (rotated)
		ann_rbq_rotate(x->rbq, s->centre, s->crot);
	for (uint32_t j = s->ustart[u]; j < s->ustart[u + 1]; j++) {
		uint32_t qi = s->pairs[j].q;
		if (j + 1 < s->ustart[u + 1]) { /* the next sharer's heaps: a batch's are many MiB, visited out of order */
			uint32_t qn = s->pairs[j + 1].q;
			__builtin_prefetch(s->ub + (size_t)qn * s->o.k);
			__builtin_prefetch(s->cands + (size_t)qn * s->rerank);
		}
		if (!cached) {
			s->qbytes[qi] += (double)br->cost / sharers;
			s->qb1[qi] += (double)br->cost / sharers;
			s->qreqs[qi] += 1.0 / sharers;
			s->qio1[qi] += 1.0 / sharers;
		}
		if (s->stage_a && s->pairs[j].rank < s->pm->p1) /* a feature of learned adaptive probing */
			s->pf[(size_t)qi * s->pm->p1 + s->pairs[j].rank] =
				s->kern->l2_f32(s->qnorm + (size_t)qi * d, s->centre, d);
		if (in->count == 0)
			continue;
		/* Cosine: rows and (non-zero) queries are unit vectors, so 1 - <q, x> =
		 * |q - x|^2 / 2, and the L2 estimator, whose error scales with |q - c|
		 * rather than the IP estimator's |q|, gives it halved. Off-centre data
		 * (all components positive, as most embeddings and descriptors) made
		 * the IP form's bounds so wide that 64 re-ranks held 0.85 of the
		 * neighbours with every partition probed (docs/DESIGN.md "Cosine and inner
		 * product on off-centre data"). */
		const float *qv = s->qnorm + (size_t)qi * d;
		float shift = 0.0f, scale = 1.0f;
		ann_metric em = m == ANN_METRIC_L2 ? ANN_METRIC_L2 : ANN_METRIC_IP;
		if (m == ANN_METRIC_COSINE) {
			float qq = s->kern->ip_f32(qv, qv, d);
			if (fabsf(qq - 1.0f) < 1e-3f)
				em = ANN_METRIC_L2, scale = 0.5f;
			else
				shift = 1.0f; /* the zero query: 1 - the IP estimate */
		}
		/* Inner product with the block's centre products (2.4): <q, x> = <q, c>
		 * + <q - c, r> + <c, r>, the middle term the L2 estimator's cross term
		 * (its error scales with |q - c|), recovered from the L2 estimate
		 * |r|^2 + |q - c|^2 - 2 <q - c, r>; the width of that term is half the
		 * L2 width. The distance is -<q, x>. */
		bool ipcr = m == ANN_METRIC_IP && in->cr_off;
		if (ipcr)
			em = ANN_METRIC_L2;
		if (rotated && em == ANN_METRIC_L2) {
			float *qr = s->qrot + (size_t)qi * dp;
			if (!s->qrot_ok[qi]) {
				ann_rbq_rotate(x->rbq, qv, qr);
				s->qrot_ok[qi] = 1;
			}
			ann_rbq_query_prepare_rotated(s->rq, qr, s->crot);
		} else {
			ann_rbq_query_prepare(s->rq, em, qv, s->centre);
		}
		if (fac)
			ann_rbq_estimate_split(s->rq, codes, in->code_bytes, in->count, fac, fac + in->count,
					       fac + 2 * (size_t)in->count, s->est, s->width);
		else
			ann_rbq_estimate(s->rq, codes, in->count, s->est, s->width);
		if (ipcr)
			ip_from_l2(in, br->data, codes, fac, qv, s->centre, d, s->est, s->width);
		s->qest[qi] += in->count;
		s->qcand[qi] += in->count;
		float kth = ub_kth(s, qi);
		/* locals: the heap pushes store through pointers the compiler cannot
		 * tell from the searcher's, so it would reload these every row */
		const float *est = s->est, *wid = s->width;
		const uint32_t count = in->count;
		for (uint32_t i0 = 0; i0 < count; i0 += 8) {
			/* ~4% of rows pass the bound (SIFT photos): a block of 8 none of which passes at
			 * the threshold of its start is skipped; the threshold only falls, so the rows
			 * looked at one by one are the same */
			const uint32_t iend = count - i0 < 8 ? count : i0 + 8;
			if (iend == i0 + 8 && !block_may_pass(est + i0, wid + i0, scale, shift, kth))
				continue;
			for (uint32_t i = i0; i < iend; i++) {
				float e = est[i] * scale + shift, w = wid[i] * scale;
				if (!(e - w <= kth))
					continue; /* cannot enter the top k (a tie can): the threshold only falls */
				if (!ids_done) {
					rc = cblock_ids(in, br->data, s->hids, err);
					if (rc < 0)
						return ann_err_prefix(err, rc, "%s: partition %u", x->path, pid);
					ids_done = true;
				}
				if (s->ntomb) {
					int tomb = search_tombed(s, s->hids[i], err);
					if (tomb < 0)
						return tomb;
					if (tomb)
						continue;
				}
				ub_push(s, qi, e + w, s->hids[i]);
				kth = ub_kth(s, qi);
				cand c = {e, w, s->hids[i], (uint32_t)u, i};
				cand_push(s, qi, &c);
				p0_cand |= i < p0rows;
			}
		}
	}
	if (p0_cand) { /* a candidate on page 0: keep the page (its sum is checked when round 2 uses it) */
		if (search_grow((void **)&s->p0, &s->p0_cap, s->p0_len + CBLOCK_PAGE, 1) < 0)
			return ann_err(err, ANN_E_NOMEM, "search: out of memory for exact pages");
		memcpy(s->p0 + s->p0_len, br->data + in->exact_offset, CBLOCK_PAGE);
		uh->p0_at = s->p0_len;
		uh->p0 = 1;
		s->p0_len += CBLOCK_PAGE;
	}
	*est_ns += ann_now_ns() - t0;
	if (s->cmap && !cached)
		search_cache_put_head(s, pid, br->ent.generation, br->data, in->head_bytes, in->exact_pages);
	return ANN_OK;
}

static int r2_cmp(const void *a, const void *b)
{
	const r2ent *x = a, *y = b;
	if (x->u != y->u)
		return x->u < y->u ? -1 : 1;
	if (x->row != y->row)
		return x->row < y->row ? -1 : 1;
	return x->q < y->q ? -1 : x->q > y->q;
}

/* Sorts s->ents[0..ne) by (u, row, q). Entries come in ascending q, so a
 * stable counting sort on (u, row) gives r2_cmp's order: linear where a
 * batch's hundreds of thousands of entries made qsort a tenth of the search
 * (in memory, batches of 10000); qsort below SORT_COUNTING entries. The key
 * space is the rows of the batch's codes blocks. */
#define SORT_COUNTING 512
static int sort_ents(ann_searcher *s, size_t ne, ann_error *err)
{
	bool ascending_q = true;
	for (size_t i = 1; i < ne && ascending_q; i++)
		ascending_q = s->ents[i - 1].q <= s->ents[i].q;
	if (ne < SORT_COUNTING || !ascending_q) {
		qsort(s->ents, ne, sizeof(r2ent), r2_cmp);
		return ANN_OK;
	}
	uint32_t umax = 0;
	for (size_t i = 0; i < ne; i++)
		umax = s->ents[i].u > umax ? s->ents[i].u : umax;
	if (search_grow((void **)&s->ubase, &s->ubase_cap, (size_t)umax + 2, sizeof(size_t)) < 0)
		return ann_err(err, ANN_E_NOMEM, "search: out of memory for %u partitions' keys", umax + 2);
	size_t keys = 0;
	for (uint32_t u = 0; u <= umax; u++) {
		s->ubase[u] = keys;
		keys += s->uh[u].codes ? s->uh[u].in.count : 0;
	}
	if (search_grow((void **)&s->kcnt, &s->kcnt_cap, keys + 1, sizeof(uint32_t)) < 0 ||
	    search_grow((void **)&s->ents2, &s->ents2_cap, s->ents_cap, sizeof(r2ent)) < 0) /* both hold a batch */
		return ann_err(err, ANN_E_NOMEM, "search: out of memory sorting %zu re-ranks", ne);
	memset(s->kcnt, 0, (keys + 1) * sizeof(uint32_t));
	for (size_t i = 0; i < ne; i++)
		s->kcnt[s->ubase[s->ents[i].u] + s->ents[i].row + 1]++;
	for (size_t j = 1; j <= keys; j++)
		s->kcnt[j] += s->kcnt[j - 1];
	for (size_t i = 0; i < ne; i++)
		s->ents2[s->kcnt[s->ubase[s->ents[i].u] + s->ents[i].row]++] = s->ents[i];
	r2ent *t = s->ents;
	size_t tc = s->ents_cap;
	s->ents = s->ents2;
	s->ents_cap = s->ents2_cap;
	s->ents2 = t;
	s->ents2_cap = tc;
	return ANN_OK;
}

/* Exact distance of query qi to a stored row (element type of the index). */
static float exact_dist(ann_searcher *s, size_t qi, const uint8_t *row)
{
	size_t d = s->idx->meta.dim;
	const float *q = s->qnorm + qi * d;
	ann_metric m = s->idx->meta.metric;
	float ip;
	if (s->vec_type == ANN_DTYPE_U8) {
		if (m == ANN_METRIC_L2)
			return s->kern->l2_f32_u8(q, row, d);
		ip = s->kern->ip_f32_u8(q, row, d);
	} else {
		float *f = s->rowf;
		if (s->vec_type == ANN_DTYPE_I8)
			for (size_t j = 0; j < d; j++)
				f[j] = (float)(int8_t)row[j];
		else
			for (size_t j = 0; j < d; j++)
				f[j] = ann_ldf32(row + 4 * j);
		if (m == ANN_METRIC_L2)
			return s->kern->l2_f32(q, f, d);
		ip = s->kern->ip_f32(q, f, d);
	}
	return (m == ANN_METRIC_COSINE ? 1.0f : 0.0f) - ip;
}

/* Block-relative page range of entry e's row. */
static void ent_pages(const ann_searcher *s, const r2ent *e, uint64_t *off, uint64_t *end)
{
	uint32_t len;
	cblock_row_pages(&s->uh[e->u].in, e->row, off, &len);
	*end = *off + len;
}

/* Re-ranks one entry from its stored row: exact distance, top-k push. */
static void rerank_row(ann_searcher *s, const r2ent *en, const uint8_t *row, bool dedupe)
{
	float dist = exact_dist(s, en->q, row);
	s->qrr[en->q]++;
	ann_topk *h = &s->heaps[en->q];
	if (dist > ann_topk_bound(h) || (dedupe && search_heap_has(h, en->id)))
		return;
	ann_topk_push(h, dist, en->id); /* tombstones were filtered in round 1 */
}

/* Exact page p of unique partition u when it is in memory without a read:
 * a 2.3 block's page 0 kept from round 1 once its sum was checked
 * (held_page), or a page the cache holds (checked when read); else NULL. */
static const uint8_t *mem_page(const ann_searcher *s, uint32_t u, uint32_t p)
{
	const uhead *uh = &s->uh[u];
	if (p == 0 && uh->p0 == 2)
		return s->p0 + uh->p0_at;
	for (uint32_t h = uh->held; h; h = s->hrefs[h - 1].next)
		if (s->hrefs[h - 1].page == p)
			return s->held + s->hrefs[h - 1].at;
	return search_cache_page(s, s->upids[u], p);
}

/* mem_page, checking a kept page 0's sum on its first use (and caching it
 * then, when the searcher caches). 1 with *pg set, 0 when the page is not in
 * memory, ANN_E_CORRUPT when the sum disagrees (nothing of it was used). */
static int held_page(ann_searcher *s, uint32_t u, uint32_t p, const uint8_t **pg, ann_error *err)
{
	uhead *uh = &s->uh[u];
	if (p == 0 && uh->p0 == 1) {
		const uint8_t *d = s->p0 + uh->p0_at;
		int rc = cblock_check_pages(&uh->in, s->sums + uh->sums_at, d, uh->in.exact_offset, CBLOCK_PAGE, err);
		if (rc < 0)
			return ann_err_prefix(err, rc, "%s: partition %u", s->idx->path, s->upids[u]);
		uh->p0 = 2;
		if (s->cmap)
			search_cache_put_pages(s, s->upids[u], 0, d, 1);
	}
	*pg = mem_page(s, u, p);
	return *pg != NULL;
}

/* The in-memory row of entry en (a row over two pages is put together in
 * s->rowcat), or NULL when a page of it is not in memory. */
static const uint8_t *cached_row(ann_searcher *s, const r2ent *en)
{
	const ann_cblock_info *in = &s->uh[en->u].in;
	uint32_t len;
	uint64_t off;
	cblock_row_pages(in, en->row, &off, &len);
	uint32_t p0 = (uint32_t)((off - in->exact_offset) / CBLOCK_PAGE), np = len / CBLOCK_PAGE;
	size_t ro = (size_t)(cblock_row_offset(in, en->row) - off); /* within the first page */
	if (np == 1) {
		const uint8_t *pg = mem_page(s, en->u, p0);
		return pg ? pg + ro : NULL;
	}
	size_t got = 0, need = in->row_bytes;
	for (uint32_t p = 0; p < np && got < need; p++) {
		const uint8_t *pg = mem_page(s, en->u, p0 + p);
		if (!pg)
			return NULL;
		size_t from = p == 0 ? ro : 0, take = ANN_MIN(CBLOCK_PAGE - from, need - got);
		memcpy(s->rowcat + got, pg + from, take);
		got += take;
	}
	return s->rowcat;
}

/* The read phase's work for the pages in memory (the cache's, a 2.3 block's
 * page 0 from round 1), without a read and
 * with the same outcome: a wanted entry's cached pages count as read, and
 * every pending entry (wanted or not) whose pages all count as read is
 * re-ranked, as read_phase does for the pages it reads. Entries are in
 * (u, row) order, so a partition's pages ascend with its entries. */
static int rerank_cached(ann_searcher *s, size_t ne, const uint8_t *want, uint8_t *done, uint64_t *rerank_ns,
			 ann_error *err)
{
	uint64_t t0 = ann_now_ns();
	bool dedupe = s->idx->meta.replicas > 1;
	for (size_t lo = 0, hi; lo < ne; lo = hi) {
		uint32_t u = s->ents[lo].u;
		for (hi = lo; hi < ne && s->ents[hi].u == u; hi++)
			;
		const ann_cblock_info *in = &s->uh[u].in;
		if (search_grow((void **)&s->covp, &s->covp_cap, in->exact_pages ? in->exact_pages : 1,
				sizeof(uint32_t)) < 0)
			return ann_err(err, ANN_E_NOMEM, "search: out of memory for %u page numbers", in->exact_pages);
		size_t nc = 0; /* cached pages of wanted entries, ascending */
		for (size_t i = lo; i < hi; i++) {
			if (!want[i] || done[i])
				continue;
			uint64_t off, end;
			ent_pages(s, &s->ents[i], &off, &end);
			for (uint64_t o = off; o < end; o += CBLOCK_PAGE) {
				uint32_t p = (uint32_t)((o - in->exact_offset) / CBLOCK_PAGE);
				const uint8_t *pg;
				if (nc && s->covp[nc - 1] >= p)
					continue;
				int h = held_page(s, u, p, &pg, err);
				if (h < 0)
					return h;
				if (h)
					s->covp[nc++] = p;
			}
		}
		for (size_t i = lo, j = 0; i < hi && nc; i++) {
			if (done[i])
				continue;
			uint64_t off, end;
			ent_pages(s, &s->ents[i], &off, &end);
			uint32_t p0 = (uint32_t)((off - in->exact_offset) / CBLOCK_PAGE);
			uint32_t np = (uint32_t)((end - off) / CBLOCK_PAGE);
			while (j < nc && s->covp[j] < p0)
				j++;
			if (j + np > nc || s->covp[j] != p0 || s->covp[j + np - 1] != p0 + np - 1)
				continue; /* covp ascends without repeats: its np entries from j are p0.. */
			const uint8_t *row = cached_row(s, &s->ents[i]);
			if (!row)
				continue;
			done[i] = 1;
			rerank_row(s, &s->ents[i], row, dedupe);
		}
	}
	*rerank_ns += ann_now_ns() - t0;
	return ANN_OK;
}

/* The reads of one phase: the pages of the entries marked `want` and not
 * done (deduplicated, adjacent pages of a partition coalesced into one
 * read), into s->reqs from base on, each tagged its run's number | tagbit;
 * *nrun is their count. */
static int phase_runs(ann_searcher *s, size_t ne, const uint8_t *want, const uint8_t *done, uint64_t tagbit,
		      size_t base, size_t *nrun_out, ann_error *err)
{
	size_t nrun = 0;
	uint64_t run_end = 0;
	uint32_t run_u = UINT32_MAX;
	for (size_t i = 0; i < ne; i++) {
		if (!want[i] || done[i])
			continue;
		uint64_t off, end;
		ent_pages(s, &s->ents[i], &off, &end);
		if (s->ents[i].u == run_u && off <= run_end) {
			run_end = ANN_MAX(run_end, end);
			s->reqs[base + nrun - 1].length = (uint32_t)(run_end - s->reqs[base + nrun - 1].offset);
			s->ents[i].run = (uint32_t)(nrun - 1);
			continue;
		}
		if (search_grow((void **)&s->reqs, &s->reqs_cap, base + nrun + 1, sizeof(ann_block_range)) < 0 ||
		    search_grow((void **)&s->runlo, &s->runlo_cap, nrun + 1, sizeof(size_t)) < 0)
			return ann_err(err, ANN_E_NOMEM, "search: out of memory for %zu reads", nrun + 1);
		run_u = s->ents[i].u;
		run_end = end;
		s->reqs[base + nrun] = (ann_block_range){s->upids[run_u], (uint32_t)(end - off), off, nrun | tagbit};
		s->runlo[nrun] = i;
		s->ents[i].run = (uint32_t)nrun;
		nrun++;
	}
	*nrun_out = nrun;
	return ANN_OK;
}

/* Holds the n checked pages read from page page0 of unique partition u. */
static int hold_pages(ann_searcher *s, uint32_t u, uint32_t page0, const uint8_t *data, uint32_t n, ann_error *err)
{
	if (search_grow((void **)&s->held, &s->held_cap, s->held_len + (size_t)n * CBLOCK_PAGE, 1) < 0 ||
	    search_grow((void **)&s->hrefs, &s->hrefs_cap, s->nheld + n, sizeof(held_ref)) < 0)
		return ann_err(err, ANN_E_NOMEM, "search: out of memory for %u early pages", n);
	for (uint32_t i = 0; i < n; i++) {
		memcpy(s->held + s->held_len, data + (size_t)i * CBLOCK_PAGE, CBLOCK_PAGE);
		s->hrefs[s->nheld] = (held_ref){page0 + i, s->uh[u].held, s->held_len};
		s->uh[u].held = (uint32_t)++s->nheld;
		s->held_len += CBLOCK_PAGE;
	}
	return ANN_OK;
}

/* A phase's completed read br (tag: its run): checks its pages' sums,
 * counts its cost to the pending entries whose rows lie in it, and either
 * re-ranks them (round 2) or holds the pages (hold: the early pages, which
 * round 2 re-ranks from memory). */
static int phase_take(ann_searcher *s, const ann_block_read *br, size_t ne, uint8_t *done, bool hold, ann_error *err)
{
	ann_index *x = s->idx;
	if (br->status < 0)
		return ann_err_prefix(err, br->status, "%s: partition %u: exact pages", x->path, br->pid);
	size_t r = (size_t)(br->tag & ~SEARCH_EARLY_TAG);
	uint32_t u = s->ents[s->runlo[r]].u;
	const uhead *uh = &s->uh[u];
	int crc = cblock_check_pages(&uh->in, s->sums + uh->sums_at, br->data, br->offset, br->length, err);
	if (crc < 0)
		return ann_err_prefix(err, crc, "%s: partition %u", x->path, br->pid);
	/* Every pending entry of this partition whose row lies in the pages
	 * read: contiguous in (u, row) order around runlo[r]. */
	uint64_t lo_off = br->offset, hi_off = br->offset + br->length;
	size_t lo = s->runlo[r], hi = lo;
	while (lo > 0 && s->ents[lo - 1].u == u) {
		uint64_t o, e;
		ent_pages(s, &s->ents[lo - 1], &o, &e);
		if (o < lo_off)
			break;
		lo--;
	}
	size_t n_in = 0;
	for (hi = lo; hi < ne && s->ents[hi].u == u; hi++) {
		uint64_t o, e;
		ent_pages(s, &s->ents[hi], &o, &e);
		if (o >= hi_off)
			break;
		if (!done[hi] && o >= lo_off && e <= hi_off)
			n_in++;
	}
	double share = n_in ? 1.0 / (double)n_in : 0;
	bool dedupe = x->meta.replicas > 1;
	for (size_t i = lo; i < hi; i++) {
		const r2ent *en = &s->ents[i];
		uint64_t o, e;
		ent_pages(s, en, &o, &e);
		if (done[i] || o < lo_off || e > hi_off)
			continue;
		done[i] = 1;
		s->qb2[en->q] += (double)br->cost * share;
		s->qbytes[en->q] += (double)br->cost * share;
		s->qio2[en->q] += share;
		s->qreqs[en->q] += share;
		if (!hold)
			rerank_row(s, en, br->data + (cblock_row_offset(&uh->in, en->row) - br->offset), dedupe);
	}
	uint32_t page0 = (uint32_t)((br->offset - uh->in.exact_offset) / CBLOCK_PAGE);
	if (hold)
		ANN_TRY(hold_pages(s, u, page0, br->data, (uint32_t)(br->length / CBLOCK_PAGE), err));
	if (s->cmap)
		search_cache_put_pages(s, br->pid, page0, br->data, (uint32_t)(br->length / CBLOCK_PAGE));
	return ANN_OK;
}

/* One read phase of round 2: reads the pages of the entries marked `want`
 * and re-ranks every pending entry whose row lies in a page read. */
static int read_phase(ann_searcher *s, size_t ne, const uint8_t *want, uint8_t *done, uint64_t *wait_ns,
		      uint64_t *rerank_ns, ann_error *err)
{
	size_t nrun;
	ANN_TRY(phase_runs(s, ne, want, done, 0, 0, &nrun, err));
	if (nrun == 0)
		return ANN_OK;
	ANN_TRY(ann_store_reader_submit_ranges(s->rd, s->reqs, nrun, err));
	s->waves++;
	int first_error = ANN_OK;
	ann_error first = {0};
	for (;;) {
		ann_block_read br;
		ann_error e2 = {0};
		uint64_t tw = ann_now_ns();
		int rc = ann_store_reader_next(s->rd, &br, &e2);
		*wait_ns += ann_now_ns() - tw;
		if (rc < 0) {
			if (err)
				*err = e2;
			return rc;
		}
		if (rc == 0)
			break;
		if (first_error == ANN_OK) {
			uint64_t t0 = ann_now_ns();
			first_error = phase_take(s, &br, ne, done, false, &e2);
			*rerank_ns += ann_now_ns() - t0;
			if (first_error < 0)
				first = e2;
		}
		ann_store_reader_release(s->rd, &br);
	}
	if (first_error < 0 && err)
		*err = first;
	return first_error;
}

/* Is exact page p of unique partition u in memory (the cache's, an early
 * page, a 2.3 block's page 0 from round 1, checked or not)? */
static bool page_in_memory(const ann_searcher *s, uint32_t u, uint32_t p)
{
	return (p == 0 && s->uh[u].p0) || mem_page(s, u, p);
}

/* Selects query qi's candidates for round 2 into s->ents from ne on (lower
 * bound below the k-th upper bound), best estimates first, at most lim of
 * them; sorts the query's candidate heap h in place (after round 1 only, or
 * on a copy). Returns the new ne. */
static size_t select_cands(ann_searcher *s, size_t qi, cand *h, uint32_t n, uint32_t lim, size_t ne)
{
	float kth = ub_kth(s, qi);
	/* h is a max-heap on est (cand_push): sorted in place, ascending */
	for (uint32_t i = n; i > 1; i--) {
		cand last = h[i - 1];
		h[i - 1] = h[0];
		cand_heap_down(h, i - 1, 0, last);
	}
	uint32_t rank = 0;
	for (uint32_t i = 0; i < n && rank < lim; i++)
		if (h[i].est - h[i].width <= kth) /* <=: rows whose estimate is exact (width 0) tie with it */
			s->ents[ne++] = (r2ent){h[i].u, h[i].row, (uint32_t)qi, 0, rank++, h[i].est - h[i].width, h[i].id};
	return ne;
}

int codes_early_reads(ann_searcher *s, size_t nq, size_t base, size_t *nreads, ann_error *err)
{
	*nreads = 0;
	size_t ne = 0, k = s->o.k;
	if (search_grow((void **)&s->ecand, &s->ecand_cap, s->rerank, sizeof(cand)) < 0)
		return ann_err(err, ANN_E_NOMEM, "search: out of memory for %u candidates", s->rerank);
	for (size_t qi = 0; qi < nq; qi++) {
		memcpy(s->ecand, s->cands + qi * s->rerank, s->ncand[qi] * sizeof(cand)); /* the heap stays a heap */
		ne = select_cands(s, qi, s->ecand, s->ncand[qi], (uint32_t)k, ne);
	}
	/* A row spans at most 2 pages, and the reads cover only the rows'
	 * pages: past the budget the batch reads its phase 1 as before (all or
	 * none: a query whose k best were not read early has no bound for
	 * phase 2) */
	if (ne == 0 || ne * 2 * CBLOCK_PAGE > SEARCH_EARLY_BYTES)
		return ANN_OK;
	ANN_TRY(sort_ents(s, ne, err));
	if (search_grow((void **)&s->flags, &s->flags_cap, 2 * ne, 1) < 0)
		return ann_err(err, ANN_E_NOMEM, "search: out of memory for %zu early re-ranks", ne);
	uint8_t *want = s->flags, *done = s->flags + ne;
	for (size_t i = 0; i < ne; i++) {
		uint64_t off, end;
		ent_pages(s, &s->ents[i], &off, &end);
		const ann_cblock_info *in = &s->uh[s->ents[i].u].in;
		bool all = true;
		for (uint64_t o = off; o < end && all; o += CBLOCK_PAGE)
			all = page_in_memory(s, s->ents[i].u, (uint32_t)((o - in->exact_offset) / CBLOCK_PAGE));
		want[i] = 1;
		done[i] = all; /* round 2 finds it in memory */
	}
	s->nearly = ne;
	return phase_runs(s, ne, want, done, SEARCH_EARLY_TAG, base, nreads, err);
}

int codes_early_take(ann_searcher *s, const ann_block_read *br, ann_error *err)
{
	return phase_take(s, br, s->nearly, s->flags + s->nearly, true, err);
}

/* Round 2: selects each query's candidates (lower bound below the k-th upper
 * bound, the `rerank` best estimates) and re-ranks them from exact pages.
 * With rerank_phases 2 it first reads the pages of each query's k best
 * estimates (re-ranking every selected row those pages hold), then only the
 * candidates whose lower bound still beats the exact k-th distance found. */
int codes_round2(ann_searcher *s, size_t nq, uint64_t *wait_ns, uint64_t *rerank_ns, ann_error *err)
{
	size_t ne = 0;
	for (size_t qi = 0; qi < nq; qi++)
		ne = select_cands(s, qi, s->cands + qi * s->rerank, s->ncand[qi], UINT32_MAX, ne);
	if (ne == 0)
		return ANN_OK;
	ANN_TRY(sort_ents(s, ne, err));
	if (search_grow((void **)&s->flags, &s->flags_cap, 2 * ne, 1) < 0)
		return ann_err(err, ANN_E_NOMEM, "search: out of memory for %zu re-ranks", ne);
	uint8_t *want = s->flags, *done = s->flags + ne;
	memset(done, 0, ne);
	bool early = s->nheld > 0;
	bool mem = s->cmap || s->p0_len || early; /* pages in memory: cached, early, or 2.3 pages 0 from round 1 */
	if (s->o.rerank_phases < 2) {
		memset(want, 1, ne);
		if (mem)
			ANN_TRY(rerank_cached(s, ne, want, done, rerank_ns, err));
		return read_phase(s, ne, want, done, wait_ns, rerank_ns, err);
	}
	/* Phase 1: each query's k best estimates. Phase p > 1: of the next
	 * ranks (up to k 2^(p-1), the last phase all), only those whose lower
	 * bound still beats the query's k-th exact distance so far. With early
	 * pages (the k best of stage A, read with stage B's heads), phase 1 is
	 * what memory holds, and the k best it misses join phase 2. */
	uint32_t p1 = 1;
	if (early) {
		memset(want, 1, ne);
		ANN_TRY(rerank_cached(s, ne, want, done, rerank_ns, err));
		p1 = 2;
	}
	for (uint32_t p = p1; p <= s->o.rerank_phases; p++) {
		uint64_t lim = p == s->o.rerank_phases ? UINT64_MAX : (uint64_t)s->o.k << (p - 1);
		for (size_t i = 0; i < ne; i++)
			want[i] = !done[i] && s->ents[i].rank < lim &&
				  (p == 1 || s->ents[i].lower <= ann_topk_bound(&s->heaps[s->ents[i].q]) ||
				   (early && s->ents[i].rank < s->o.k));
		if (mem)
			ANN_TRY(rerank_cached(s, ne, want, done, rerank_ns, err));
		ANN_TRY(read_phase(s, ne, want, done, wait_ns, rerank_ns, err));
	}
	return ANN_OK;
}
