/* SPDX-License-Identifier: MIT */
/*
 * search.c: searchers (docs/DESIGN.md, "Search" and "Codes and re-ranking").
 * route -> group -> read -> estimate/scan -> (re-rank) -> merge:
 *  1. the batch is routed; (partition, query) pairs are grouped by partition
 *     so each block is read once per batch;
 *  2. round 1: every probed partition is read through the store reader, the
 *     only door to blocks (io_uring or the LMDB map, inside the batch's one
 *     catalog snapshot): a format 1 block whole (decoded and scanned exactly
 *     as it arrives), a codes block only its head, whose codes estimate the
 *     distance of every row for every query that probes it;
 *  3. round 2 (codes blocks): per query, the candidates whose lower bound
 *     (estimate - width) is below the k-th smallest upper bound, at most
 *     `rerank` of them by best estimate, have their exact rows read: the
 *     pages that hold them, deduplicated within the batch and coalesced into
 *     one read per run of adjacent pages; exact distances go to the top k.
 * Deltas (inserted, not yet compacted) are scanned exactly; tombstones and
 * replicas are filtered at every push. The optional cache (LRU, bounded in
 * bytes) keeps decoded format 1 blocks and the heads of codes blocks with the
 * exact pages round 2 read (search_codes.c re-ranks from them).
 * The codes path (round 1 estimates, round 2 exact pages) is search_codes.c;
 * this file routes, groups, reads round 1, scans format 1 blocks and deltas,
 * keeps the cache and merges.
 * Invariants: every distance in the answer is exact; every byte used was
 * checked (format 1: payload checksum; codes: header, head and page sums).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "build_defaults.h"
#include "search_int.h"

void ann_search_opts_init(ann_search_opts *o)
{
	memset(o, 0, sizeof *o);
	o->k = 10;
	o->nprobe = 0; /* the index's default (ann_default_nprobe) */
	o->candidates_factor = ANN_DEFAULT_CANDIDATES_FACTOR;
	o->queue_depth = 32;
	o->io_buffer_bytes = (size_t)16 << 20;
	o->rerank = 0; /* ann_default_rerank(k) */
}

uint32_t ann_default_rerank(uint32_t k)
{
	uint64_t r = (uint64_t)ANN_RERANK_PER_K * k;
	return (uint32_t)ANN_MIN(ANN_MAX(r, (uint64_t)ANN_RERANK_MIN), (uint64_t)ANN_MAX_RERANK);
}

/* Grows *p to hold need elements of esz bytes (search_int.h). */
int search_grow(void **p, size_t *cap, size_t need, size_t esz)
{
	if (need <= *cap)
		return ANN_OK;
	size_t n = ANN_MAX(need, *cap * 2);
	void *q = ann_realloc(*p, n * esz);
	if (!q)
		return ANN_E_NOMEM;
	*p = q;
	*cap = n;
	return ANN_OK;
}

/* The mean spread of the partitions whose directory entries hold one (codes
 * blocks written since the directory kept it), 0 when none does. */
static float dir_spread_mean(const ann_dir *d)
{
	double sum = 0;
	uint64_t n = 0;
	for (uint32_t p = 0; p < d->n; p++)
		if (d->ents[p].kind != ANN_KIND_NONE && d->ents[p].spread > 0.0f) {
			sum += d->ents[p].spread;
			n++;
		}
	return n ? (float)(sum / (double)n) : 0.0f;
}

/* A partition's sort key: its score's order key, then its id (ties by id).
 * A NaN score (inf - inf from a query of extreme scale) sorts last. */
static inline uint64_t scored_key(float score, uint32_t pid)
{
	return (uint64_t)ann_fkey(isnan(score) ? INFINITY : score) << 32 | pid;
}

/* The spread-aware probe order: the found partitions of one query, routed by
 * their squared centroid distances (ascending), reordered by distance +
 * weight x spread (a partition the directory has no spread of gets the mean);
 * the first keep are kept. Returns their count. */
static uint32_t spread_order(ann_searcher *s, uint32_t *parts, const float *dists, uint32_t found, uint32_t keep,
			     const float *q)
{
	const ann_dir *d = &s->idx->dir;
	float l2 = ann_route_l2_scale(s->idx->meta.metric); /* the route's distances as |q - c|^2 */
	const ann_dirs *dd = &s->idx->dirs;
	bool dirs = s->dir_w > 0.0f; /* and along each partition's stretched directions (dirs.h) */
	if (dirs) {
		for (uint32_t j = 0; j < found && j < 8; j++)
			ann_dirs_prefetch(dd, parts[j]);
		ann_dirs_query_table(dd, q, s->dtab);
	}
	for (uint32_t j = 0; j < found; j++) {
		uint32_t p = parts[j];
		float sp = p < d->n && d->ents[p].spread > 0.0f ? d->ents[p].spread : s->spread_mean;
		float score = l2 * dists[j] + s->spread_w * sp;
		if (dirs) {
			if (j + 8 < found)
				ann_dirs_prefetch(dd, parts[j + 8]);
			score -= s->dir_w * ann_dirs_discount(dd, p, s->dtab);
		}
		s->sbuf[j] = scored_key(score, p);
	}
	ann_sort_u64(s->sbuf, found);
	uint32_t n = ANN_MIN(found, keep);
	for (uint32_t j = 0; j < n; j++)
		parts[j] = (uint32_t)s->sbuf[j];
	return n;
}

int ann_searcher_new(ann_index *idx, const ann_search_opts *o, ann_searcher **out, ann_error *err)
{
	*out = NULL;
	ann_searcher *s = ann_calloc(1, sizeof *s);
	if (!s)
		return ann_err(err, ANN_E_NOMEM, "%s: out of memory for a searcher", idx->path);
	int rc;
	s->idx = idx;
	if (o)
		s->o = *o;
	else
		ann_search_opts_init(&s->o);
	if (s->o.nprobe == 0)
		s->o.nprobe = ann_default_nprobe(idx->router->nparts);
	s->rerank = s->o.rerank ? s->o.rerank : ann_default_rerank(s->o.k);
	if (s->o.rerank_phases == 0)
		s->o.rerank_phases = ANN_DEFAULT_RERANK_PHASES;
	if (s->o.rerank_phases > ANN_MAX_RERANK_PHASES) {
		rc = ann_err(err, ANN_E_INVAL, "search: rerank phases must be within 1..%u", ANN_MAX_RERANK_PHASES);
		goto fail;
	}
	if (s->o.io_poll_us > ANN_MAX_IO_POLL_US) {
		rc = ann_err(err, ANN_E_INVAL, "search: io poll must be within 0..%u microseconds (0 = sleep), not %u",
			     ANN_MAX_IO_POLL_US, s->o.io_poll_us);
		goto fail;
	}
	if (!(s->o.probe_eps >= 0)) {
		rc = ann_err(err, ANN_E_INVAL, "search: probe eps must be >= 0 (0 = off) or infinite (off)");
		goto fail;
	}
	if (!(s->o.rerank_eps >= 0 && s->o.rerank_eps <= 100)) {
		rc = ann_err(err, ANN_E_INVAL, "search: rerank eps must be within 0..100 (0 = the default)");
		goto fail;
	}
	_Static_assert(ANN_MAX_RERANK >= ANN_MAX_K, "a default budget below k would re-rank fewer rows than k");
	if (s->o.k == 0 || s->o.k > ANN_MAX_K || s->o.nprobe == 0 || s->o.nprobe > ANN_MAX_NPROBE || s->rerank > ANN_MAX_RERANK ||
	    s->o.hnsw_ef > ANN_MAX_EF || s->o.candidates_factor > 1000) {
		rc = ann_err(err, ANN_E_INVAL, "search: k must be within 1..%u, nprobe within 1..%u, rerank within "
			     "1..100000, ef within 0..%u and the candidates factor within 0..1000", ANN_MAX_K,
			     ANN_MAX_NPROBE, ANN_MAX_EF);
		goto fail;
	}
	s->rerank = ANN_MAX(s->rerank, s->o.k);
	s->npmax = s->o.nprobe;
	if (s->o.adaptive < -1 || s->o.adaptive > 1) {
		rc = ann_err(err, ANN_E_INVAL, "search: adaptive must be -1 (off), 0 (the index's model when it has "
			     "one) or 1 (required)");
		goto fail;
	}
	if (s->o.adaptive >= 0 && idx->probe.p1 && idx->rbq && ann_metric_euclid(idx->meta.metric) &&
	    s->o.nprobe >= idx->probe.p1) {
		s->pm = &idx->probe;
		s->npmax = (uint32_t)ANN_MIN((uint64_t)s->o.nprobe * ANN_PROBE_WIDTH, (uint64_t)ANN_MAX_NPROBE);
	} else if (s->o.adaptive > 0) {
		rc = ann_err(err, ANN_E_INVAL, "search: adaptive probing required, but %s %s", idx->path,
			     !idx->probe.p1 ? "has no probe model (annann tune fits one)"
			     : s->o.nprobe < idx->probe.p1 ? "has a model whose first stage is larger than nprobe"
							   : "is not a codes index under L2 or cosine");
		goto fail;
	}
	if (!(isfinite(s->o.direction_weight) && s->o.direction_weight <= 1.0f)) {
		rc = ann_err(err, ANN_E_INVAL, "search: direction weight must be at most 1 (0 = the default %g, "
			     "negative = off)", (double)ANN_DEFAULT_DIRECTION_WEIGHT);
		goto fail;
	}
	if (!(isfinite(s->o.spread_weight) && s->o.spread_weight <= 100.0f)) {
		rc = ann_err(err, ANN_E_INVAL, "search: spread weight must be at most 100 (0 = the default %g, "
			     "negative = off)", (double)ANN_DEFAULT_SPREAD_WEIGHT);
		goto fail;
	}
	s->pwidth = s->npmax;
	float w = s->o.spread_weight == 0.0f ? ANN_DEFAULT_SPREAD_WEIGHT : s->o.spread_weight;
	if (w > 0.0f && ann_metric_euclid(idx->meta.metric) && idx->router->ops->route_dists &&
	    (s->spread_mean = dir_spread_mean(&idx->dir)) > 0.0f) {
		s->spread_w = w;
		/* The order reaches past the nearest centroids: route half as many
		 * again (measured on real1m, the 125th partition by score is within
		 * the 1.5 x 125 nearest centroids for 99% of queries). */
		s->pwidth = (uint32_t)ANN_MIN(ANN_MAX((uint64_t)s->npmax, ((uint64_t)s->o.nprobe * 3 + 1) / 2),
					      (uint64_t)ANN_MAX_NPROBE);
		float dw = s->o.direction_weight == 0.0f ? ANN_DEFAULT_DIRECTION_WEIGHT : s->o.direction_weight;
		if (dw > 0.0f && idx->dirs.m) {
			/* the discount reaches further still: 3 x nprobe are routed
			 * (bench/analysis/directional_probe.py: a list of 2 x keeps
			 * 87% of the gain, 4 x all of it) */
			s->dir_w = dw;
			s->pwidth = (uint32_t)ANN_MIN(ANN_MAX((uint64_t)s->pwidth, (uint64_t)s->o.nprobe * 3),
						      (uint64_t)ANN_MAX_NPROBE);
			if (!(s->dtab = ann_malloc(ann_dirs_table_floats(&idx->dirs) * sizeof(float)))) {
				rc = ann_err(err, ANN_E_NOMEM, "%s: out of memory for a searcher", idx->path);
				goto fail;
			}
		}
		if (!(s->sbuf = ann_malloc(s->pwidth * sizeof *s->sbuf))) {
			rc = ann_err(err, ANN_E_NOMEM, "%s: out of memory for a searcher", idx->path);
			goto fail;
		}
	}
	const char *kh = getenv("ANNANN_KEEP_HEADS");
	s->keep_off = kh && strcmp(kh, "0") == 0;
	const char *ep = getenv("ANNANN_EARLY_PAGES");
	s->early_off = ep && strcmp(ep, "0") == 0;
	s->kern = ann_kernels_best();
	ann_store_reader_opts ro;
	ann_store_reader_opts_init(&ro);
	ro.io.queue_depth = s->o.queue_depth ? s->o.queue_depth : 32;
	ro.io.pool_bytes = s->o.io_buffer_bytes ? s->o.io_buffer_bytes : ((size_t)16 << 20);
	/* A partition is one read: the pool must hold the largest block
	 * (a few huge partitions, e.g. 16 parts of 1M vectors, are 21 MB). */
	uint64_t largest = 0;
	for (uint32_t p = 0; p < idx->dir.n; p++)
		if (idx->dir.ents[p].kind != ANN_KIND_NONE)
			largest = ANN_MAX(largest, (uint64_t)idx->dir.ents[p].length);
	ro.io.pool_bytes = ANN_MAX(ro.io.pool_bytes, (size_t)largest + ANN_PAGE);
	ro.io.force_pread = s->o.force_pread != 0;
	ro.io.poll_us = s->o.io_poll_us;
	ANN_CHECK(rc, ann_store_reader_new(idx->store, &ro, &s->rd, err));
	ANN_CHECK(rc, ann_catalog_read_begin(ann_store_catalog(idx->store), &s->rt, err));
	ann_catalog_read_reset(s->rt);
	ANN_CHECK(rc, ann_store_reader_use_txn(s->rd, s->rt, err));
	if (idx->rbq)
		ANN_CHECK(rc, codes_searcher_init(s, err));
	s->dbytes = ann_index_delta_bytes(idx);
	ANN_CHECK(rc, block_dec_new(0, &s->dec, err));
	ANN_CHECK(rc, idx->router->ops->ctx_new(idx->router, &s->rctx, err));
	switch (idx->meta.encoding) {
	case ANN_ENC_U8: s->vec_type = ANN_DTYPE_U8; s->vec_esize = 1; break;
	case ANN_ENC_I8: s->vec_type = ANN_DTYPE_I8; s->vec_esize = 1; break;
	default: s->vec_type = ANN_DTYPE_F32; s->vec_esize = 4; break;
	}
	if (s->o.cache_bytes) {
		s->cmap = ann_calloc(idx->dir.n ? idx->dir.n : 1, sizeof(cblock *));
		if (!s->cmap) {
			rc = ann_err(err, ANN_E_NOMEM, "%s: out of memory for the cache map", idx->path);
			goto fail;
		}
	}
	*out = s;
	return ANN_OK;
fail:
	ann_searcher_free(s);
	return rc;
}

static void cache_unlink(ann_searcher *s, cblock *c)
{
	if (c->prev)
		c->prev->next = c->next;
	else
		s->chead = c->next;
	if (c->next)
		c->next->prev = c->prev;
	else
		s->ctail = c->prev;
	c->prev = c->next = NULL;
}

static void cache_push_front(ann_searcher *s, cblock *c)
{
	c->next = s->chead;
	c->prev = NULL;
	if (s->chead)
		s->chead->prev = c;
	s->chead = c;
	if (!s->ctail)
		s->ctail = c;
}

/* Frees a cache entry and its pages (unlinked, or the whole list going). */
static void cache_free(cblock *c)
{
	for (uint32_t i = 0; c->pages && i < c->npages; i++)
		ann_free(c->pages[i]);
	ann_free(c);
}

/* Unlinks, unmaps and frees an entry. */
static void cache_drop(ann_searcher *s, cblock *c)
{
	cache_unlink(s, c);
	s->cmap[c->pid] = NULL;
	s->cbytes -= c->bytes;
	cache_free(c);
}

void ann_searcher_free(ann_searcher *s)
{
	if (!s)
		return;
	for (cblock *c = s->chead, *n; c; c = n) {
		n = c->next;
		cache_free(c);
	}
	ann_free(s->cmap);
	if (s->rctx)
		s->idx->router->ops->ctx_free(s->rctx);
	block_dec_free(s->dec);
	ann_store_reader_free(s->rd); /* before the txn it reads in */
	if (s->rt)
		ann_catalog_read_end(s->rt);
	codes_searcher_free(s);
	ann_free(s->qb1);
	ann_free(s->qb2);
	ann_free(s->qio1);
	ann_free(s->qio2);
	ann_free(s->qest);
	ann_free(s->qrr);
	ann_free(s->dids);
	ann_free(s->dvecs);
	ann_free(s->reqs);
	ann_free(s->parts);
	ann_free(s->nparts);
	ann_free(s->pf);
	ann_free(s->rdist);
	ann_free(s->sbuf);
	ann_free(s->dtab);
	ann_free(s->keep);
	ann_free(s->kept);
	ann_free(s->pairs);
	ann_free(s->ptmp);
	ann_free(s->pcount);
	ann_free(s->upids);
	ann_free(s->ustart);
	ann_free(s->qnorm);
	ann_free(s->heaps);
	ann_free(s->qbytes);
	ann_free(s->qreqs);
	ann_free(s->qdec);
	ann_free(s->qscan);
	ann_free(s->qcand);
	ann_free(s->dist);
	ann_free(s->conv);
	ann_free(s);
}

const char *ann_searcher_io_path(const ann_searcher *s)
{
	return ann_store_reader_path(s->rd);
}

void ann_searcher_io_totals(const ann_searcher *s, uint64_t *bytes, uint64_t *requests)
{
	ann_ioreader_stats st;
	ann_store_reader_stats(s->rd, &st);
	*bytes = st.bytes;
	*requests = st.requests;
}

/* Room for an entry of bytes, evicting from the tail; NULL when it cannot be cached. */
static cblock *cache_alloc(ann_searcher *s, uint32_t pid, size_t bytes)
{
	if (bytes > s->o.cache_bytes || pid >= s->idx->dir.n || s->cmap[pid])
		return NULL;
	while (s->cbytes + bytes > s->o.cache_bytes && s->ctail)
		cache_drop(s, s->ctail);
	cblock *c = ann_calloc(1, bytes);
	if (c)
		c->bytes = bytes;
	return c; /* the cache is an optimisation: no memory, no caching */
}

static void cache_link(ann_searcher *s, cblock *c)
{
	c->prev = c->next = NULL;
	cache_push_front(s, c);
	s->cmap[c->pid] = c;
	s->cbytes += c->bytes;
}

/* Caches a codes block's head as read (search_int.h). */
void search_cache_put_head(ann_searcher *s, uint32_t pid, uint32_t gen, const uint8_t *head, uint32_t len,
			   uint32_t exact_pages)
{
	size_t slots = (size_t)exact_pages * sizeof(uint8_t *);
	cblock *c = cache_alloc(s, pid, sizeof(cblock) + slots + (size_t)len + 64);
	if (!c)
		return;
	c->pid = pid;
	c->generation = gen;
	c->head_len = len;
	c->npages = exact_pages;
	c->pages = (uint8_t **)(void *)(c + 1); /* zeroed by cache_alloc */
	c->head = (uint8_t *)ANN_ALIGN_UP((uintptr_t)((uint8_t *)(c + 1) + slots), 64);
	memcpy(c->head, head, len);
	cache_link(s, c);
}

const uint8_t *search_cache_page(const ann_searcher *s, uint32_t pid, uint32_t page)
{
	const cblock *c = s->cmap && pid < s->idx->dir.n ? s->cmap[pid] : NULL;
	return c && c->head_len && page < c->npages ? c->pages[page] : NULL;
}

void search_cache_put_pages(ann_searcher *s, uint32_t pid, uint32_t page0, const uint8_t *data, uint32_t n)
{
	cblock *c = s->cmap && pid < s->idx->dir.n ? s->cmap[pid] : NULL;
	if (!c || !c->head_len)
		return;
	for (uint32_t i = 0; i < n && page0 + i < c->npages; i++) {
		if (c->pages[page0 + i])
			continue;
		while (s->cbytes + CACHE_PAGE_BYTES > s->o.cache_bytes && s->ctail && s->ctail != c)
			cache_drop(s, s->ctail);
		if (s->cbytes + CACHE_PAGE_BYTES > s->o.cache_bytes)
			return; /* only this partition left: it keeps what it has */
		uint8_t *pg = ann_malloc(CBLOCK_PAGE);
		if (!pg)
			return; /* the cache is an optimisation */
		memcpy(pg, data + (size_t)i * CBLOCK_PAGE, CBLOCK_PAGE);
		c->pages[page0 + i] = pg;
		c->bytes += CACHE_PAGE_BYTES;
		s->cbytes += CACHE_PAGE_BYTES;
	}
}

/* Inserts a decoded block into the cache, evicting from the tail. */
static void cache_put(ann_searcher *s, uint32_t pid, uint32_t gen, const int64_t *ids, const void *vecs,
		      uint32_t count)
{
	size_t vbytes = (size_t)count * s->idx->meta.dim * s->vec_esize;
	size_t bytes = sizeof(cblock) + (size_t)count * 8 + vbytes + 64;
	cblock *c = cache_alloc(s, pid, bytes);
	if (!c)
		return;
	c->pid = pid;
	c->generation = gen;
	c->count = count;
	c->ids = (int64_t *)(c + 1);
	c->vecs = (void *)ANN_ALIGN_UP((uintptr_t)(c->ids + count), 64);
	memcpy(c->ids, ids, (size_t)count * 8);
	memcpy(c->vecs, vecs, vbytes);
	cache_link(s, c);
}

bool search_heap_has(const ann_topk *h, int64_t id)
{
	for (size_t i = 0; i < h->n; i++)
		if (h->id[i] == id)
			return true;
	return false;
}

/* Is id deleted in the batch's snapshot (its block copies are dead)? 1 yes,
 * 0 no, or the catalog's error: a tombstone that cannot be read fails the
 * search rather than bringing the deleted id back. */
int search_tombed(ann_searcher *s, int64_t id, ann_error *err)
{
	uint8_t k[8];
	ann_stbe64(k, (uint64_t)id);
	const uint8_t *v;
	size_t n;
	int rc = ann_catalog_get(s->rt, ANN_CAT_TOMB, k, sizeof k, &v, &n, NULL);
	if (rc == ANN_OK)
		return 1;
	if (rc == ANN_E_NOTFOUND)
		return 0;
	rc = ann_catalog_get(s->rt, ANN_CAT_TOMB, k, sizeof k, &v, &n, err); /* again, for the message */
	return ann_err_prefix(err, rc < 0 ? rc : ANN_E_CORRUPT, "%s: tombstone of id %lld", s->idx->path,
			      (long long)id);
}

/* The rows of a block as the kernels take them: i8 rows are converted to
 * float once per block (into s->conv, count * dim floats, the largest block's
 * size), u8 and f32 rows are used as they are. */
static int block_rows(ann_searcher *s, const void *vecs, uint32_t count, const void **rows, ann_dtype *t,
		      ann_error *err)
{
	*rows = vecs;
	*t = s->vec_type;
	if (*t != ANN_DTYPE_I8)
		return ANN_OK;
	size_t n = (size_t)count * s->idx->meta.dim;
	if (search_grow((void **)&s->conv, &s->conv_cap, n, sizeof(float)) < 0)
		return ann_err(err, ANN_E_NOMEM, "search: out of memory converting a block of %u vectors", count);
	const int8_t *src = vecs;
	for (size_t i = 0; i < n; i++)
		s->conv[i] = src[i];
	*rows = s->conv;
	*t = ANN_DTYPE_F32;
	return ANN_OK;
}

/* Scans count rows (as block_rows gives them, of type t) for query qi,
 * pushing into its heap. Block rows (from_block) are checked against the
 * tombstones. */
static int scan_block(ann_searcher *s, size_t qi, const int64_t *ids, const void *rows, ann_dtype t, uint32_t count,
		      bool from_block, ann_error *err)
{
	size_t d = s->idx->meta.dim;
	if (search_grow((void **)&s->dist, &s->dist_cap, count, sizeof(float)) < 0)
		return ann_err(err, ANN_E_NOMEM, "search: out of memory for %u distances", count);
	const float *q = s->qnorm + qi * d;
	float *dist = s->dist;
	ann_metric m = s->idx->meta.metric;
	if (m == ANN_METRIC_L2) {
		if (t == ANN_DTYPE_U8)
			s->kern->l2_f32_u8_many(q, rows, count, d, dist);
		else
			s->kern->l2_f32_many(q, rows, count, d, dist);
	} else {
		if (t == ANN_DTYPE_U8) {
			for (uint32_t i = 0; i < count; i++)
				dist[i] = s->kern->ip_f32_u8(q, (const uint8_t *)rows + (size_t)i * d, d);
		} else {
			s->kern->ip_f32_many(q, rows, count, d, dist);
		}
		float base = m == ANN_METRIC_COSINE ? 1.0f : 0.0f;
		for (uint32_t i = 0; i < count; i++)
			dist[i] = base - dist[i];
	}
	ann_topk *h = &s->heaps[qi];
	bool dedupe = s->idx->meta.replicas > 1;
	float bound = ann_topk_bound(h);
	for (uint32_t i = 0; i < count; i++) {
		if (dist[i] > bound)
			continue;
		if (dedupe && search_heap_has(h, ids[i]))
			continue;
		if (from_block && s->ntomb) {
			int tomb = search_tombed(s, ids[i], err);
			if (tomb < 0)
				return tomb;
			if (tomb)
				continue;
		}
		ann_topk_push(h, dist[i], ids[i]);
		bound = ann_topk_bound(h);
	}
	s->qcand[qi] += count;
	return ANN_OK;
}

static int pair_cmp(const void *a, const void *b)
{
	const pair *x = a, *y = b;
	if (x->pid != y->pid)
		return x->pid < y->pid ? -1 : 1;
	return x->q < y->q ? -1 : x->q > y->q;
}

/* Resizes each array *slots[i] to bytes[i] (search_int.h). */
int search_resize(void **const slots[], const size_t bytes[], size_t n)
{
	int rc = ANN_OK;
	for (size_t i = 0; i < n; i++) {
		void *p = ann_realloc(*slots[i], bytes[i]);
		if (p)
			*slots[i] = p;
		else
			rc = ANN_E_NOMEM;
	}
	return rc;
}

static int ensure_batch(ann_searcher *s, size_t nq, ann_error *err)
{
	if (nq <= s->cap_q)
		return ANN_OK;
	size_t n = nq, np = s->npmax, pw = s->pwidth, d = s->idx->meta.dim;
	void **const slots[] = {
		(void **)&s->parts, (void **)&s->nparts, (void **)&s->pairs, (void **)&s->upids, (void **)&s->ustart,
		(void **)&s->qnorm, (void **)&s->heaps, (void **)&s->qbytes, (void **)&s->qreqs, (void **)&s->qdec,
		(void **)&s->qscan, (void **)&s->qcand, (void **)&s->qb1, (void **)&s->qb2, (void **)&s->qio1,
		(void **)&s->qio2, (void **)&s->qest, (void **)&s->qrr, (void **)&s->pf, (void **)&s->rdist,
	};
	const size_t bytes[] = {
		n * pw * sizeof(uint32_t), n * sizeof(uint32_t), n * np * sizeof(pair), n * np * sizeof(uint32_t),
		(n * np + 1) * sizeof(uint32_t), n * d * sizeof(float), n * sizeof(ann_topk), n * sizeof(double),
		n * sizeof(double), n * sizeof(double), n * sizeof(uint64_t), n * sizeof(uint64_t), n * sizeof(double),
		n * sizeof(double), n * sizeof(double), n * sizeof(double), n * sizeof(uint64_t), n * sizeof(uint64_t),
		n * (s->pm ? s->pm->p1 : 1) * sizeof(float), n * (s->spread_w > 0.0f ? pw : 1) * sizeof(float),
	};
	_Static_assert(sizeof slots / sizeof slots[0] == sizeof bytes / sizeof bytes[0], "one size per array");
	if (search_resize(slots, bytes, sizeof bytes / sizeof bytes[0]) < 0 || codes_batch(s, n, err) < 0)
		return ann_err(err, ANN_E_NOMEM, "search: out of memory for a batch of %zu queries", nq);
	s->cap_q = n;
	return ANN_OK;
}

static int delta_each(void *ctx, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen, ann_error *err)
{
	ann_searcher *s = ctx;
	if (klen != ANN_DELTA_KEY || ann_ldbe32(key) != s->dpid)
		return 1; /* past this partition's deltas */
	if (vlen != s->dbytes)
		return ann_err(err, ANN_E_CORRUPT, "delta of partition %u: %zu bytes, expected %zu", s->dpid, vlen,
			       s->dbytes);
	if (s->dn == s->dcap) {
		size_t nc = s->dcap ? 2 * s->dcap : 256;
		int64_t *a = ann_realloc(s->dids, nc * sizeof(int64_t));
		if (a)
			s->dids = a;
		uint8_t *b = ann_realloc(s->dvecs, nc * s->dbytes + 64);
		if (b)
			s->dvecs = b;
		if (!a || !b)
			return ann_err(err, ANN_E_NOMEM, "search: out of memory for %zu deltas", nc);
		s->dcap = nc;
	}
	s->dids[s->dn] = (int64_t)ann_ldbe64(key + 4);
	uint8_t *dst = s->dvecs + s->dn * s->dbytes;
	if (s->vec_type == ANN_DTYPE_F32) /* f32 deltas are stored little-endian (docs/FORMAT.md) */
		for (size_t j = 0; j < s->dbytes / 4; j++)
			((float *)(void *)dst)[j] = ann_ldf32(val + 4 * j);
	else
		memcpy(dst, val, s->dbytes);
	s->dn++;
	return ANN_OK;
}

/* Scans the deltas (inserted vectors not yet compacted) of unique partition u. */
static int scan_deltas(ann_searcher *s, size_t u, uint64_t *scan_ns, ann_error *err)
{
	uint8_t from[4];
	s->dpid = s->upids[u];
	s->dn = 0;
	ann_stbe32(from, s->dpid);
	ANN_TRY(ann_catalog_foreach(s->rt, ANN_CAT_DELTA, from, sizeof from, delta_each, s, err));
	if (s->dn == 0)
		return ANN_OK;
	uint64_t ts = ann_now_ns();
	uint32_t sharers = s->ustart[u + 1] - s->ustart[u];
	double bytes = (double)s->dn * (double)(s->dbytes + ANN_DELTA_KEY + 8);
	const void *rows;
	ann_dtype t;
	ANN_TRY(block_rows(s, s->dvecs, (uint32_t)s->dn, &rows, &t, err));
	for (uint32_t j = s->ustart[u]; j < s->ustart[u + 1]; j++) {
		s->qbytes[s->pairs[j].q] += bytes / sharers; /* catalog pages holding the deltas */
		ANN_TRY(scan_block(s, s->pairs[j].q, s->dids, rows, t, (uint32_t)s->dn, false, err));
	}
	*scan_ns += ann_now_ns() - ts;
	return ANN_OK;
}

/* Decodes one block and scans it for the queries of unique partition u. */
static int process_block(ann_searcher *s, size_t u, const ann_dirent *e, const uint8_t *data, size_t len,
			 uint64_t cost, uint64_t *decode_ns, uint64_t *scan_ns, ann_error *err)
{
	ann_index *x = s->idx;
	uint32_t pid = s->upids[u];
	uint64_t td = ann_now_ns();
	ann_block_view view;
	int rc = block_decode(s->dec, data, len, x->dict, &view, err);
	uint64_t dec_ns = ann_now_ns() - td;
	*decode_ns += dec_ns;
	if (rc < 0)
		return ann_err_prefix(err, rc, "%s: partition %u", x->path, pid);
	if (view.info.partition != pid)
		return ann_err(err, ANN_E_CORRUPT, "%s: partition %u: the block belongs to partition %llu", x->path,
			       pid, (unsigned long long)view.info.partition);
	/* The scan trusts the catalog's dimension and element type: a block
	 * (checksummed, but from elsewhere) that disagrees would be read out of
	 * bounds or misread. */
	if (view.info.dim != x->meta.dim || view.info.encoding != ann_encoding_block(x->meta.encoding) ||
	    view.info.count != e->count)
		return ann_err(err, ANN_E_CORRUPT, "%s: partition %u: the block holds %u vectors of dimension %u in "
			       "block encoding %d; the catalog says %u vectors of dimension %u in %s (block encoding %d)",
			       x->path, pid, view.info.count, view.info.dim, (int)view.info.encoding, e->count,
			       x->meta.dim, ann_encoding_name(x->meta.encoding),
			       (int)ann_encoding_block(x->meta.encoding));
	uint32_t sharers = s->ustart[u + 1] - s->ustart[u];
	uint64_t ts = ann_now_ns();
	const void *rows;
	ann_dtype t;
	ANN_TRY(block_rows(s, view.vectors, view.info.count, &rows, &t, err));
	for (uint32_t j = s->ustart[u]; j < s->ustart[u + 1]; j++) {
		uint32_t qi = s->pairs[j].q;
		s->qbytes[qi] += (double)cost / sharers;
		s->qreqs[qi] += 1.0 / sharers;
		s->qdec[qi] += (double)dec_ns / sharers;
		ANN_TRY(scan_block(s, qi, view.ids, rows, t, view.info.count, true, err));
	}
	*scan_ns += ann_now_ns() - ts;
	if (s->cmap)
		cache_put(s, pid, e->generation, view.ids, view.vectors, view.info.count);
	return ANN_OK;
}


/* Sorts n pairs, made in query order, by (partition, query) with a stable counting sort by
 * partition id; false (nothing done) when the ids span more than 4 n values or the scratch
 * cannot grow, and the caller sorts by comparison. A batch of 10000 SIFT photos queries (240k
 * pairs) spent ~2.5% of its in-memory time in qsort. */
static bool count_sort_pairs(ann_searcher *s, pair *pr, size_t n)
{
	uint32_t maxp = 0;
	for (size_t i = 0; i < n; i++) {
		maxp = pr[i].pid > maxp ? pr[i].pid : maxp;
		if (i && pr[i].q < pr[i - 1].q)
			return false; /* not in query order: stability would not give (partition, query) */
	}
	size_t nb = (size_t)maxp + 1;
	if (nb > 4 * n || search_grow((void **)&s->pcount, &s->pcount_cap, nb + 1, sizeof(uint32_t)) < 0 ||
	    search_grow((void **)&s->ptmp, &s->ptmp_cap, n, sizeof(pair)) < 0)
		return false;
	memset(s->pcount, 0, (nb + 1) * sizeof(uint32_t));
	for (size_t i = 0; i < n; i++)
		s->pcount[pr[i].pid + 1]++;
	for (size_t b = 1; b <= nb; b++)
		s->pcount[b] += s->pcount[b - 1];
	for (size_t i = 0; i < n; i++)
		s->ptmp[s->pcount[pr[i].pid]++] = pr[i];
	memcpy(pr, s->ptmp, n * sizeof(pair));
	return true;
}

/* Groups pairs [p0, p1) by partition: unique partitions from u0 on
 * (upids, ustart; ustart[returned] = p1). Returns the new count. */
static size_t group_pairs(ann_searcher *s, size_t nq, size_t p0, size_t p1, size_t u0)
{
	pair *pr = s->pairs + p0;
	size_t n = p1 - p0;
	if (nq > 1) {
		if (!count_sort_pairs(s, pr, n))
			qsort(pr, n, sizeof(pair), pair_cmp);
	} else
		for (size_t a = 1; a < n; a++) /* one query: insertion sort of nprobe entries */
			for (size_t b = a; b > 0 && pr[b - 1].pid > pr[b].pid; b--) {
				pair t = pr[b];
				pr[b] = pr[b - 1];
				pr[b - 1] = t;
			}
	size_t nu = u0;
	for (size_t i = p0; i < p1; i++) {
		if (i == p0 || s->pairs[i].pid != s->pairs[i - 1].pid) {
			s->upids[nu] = s->pairs[i].pid;
			s->ustart[nu] = (uint32_t)i;
			nu++;
		}
	}
	s->ustart[nu] = (uint32_t)p1;
	return nu;
}

/* The most bytes of stage A heads a batch keeps for its stage B. */
#define SEARCH_KEEP_BYTES ((size_t)16 << 20)

typedef struct search_kept {
	uint32_t pid;
	uint32_t len; /* bytes read: the head's pages (a 2.3 block's exact page 0 with them) */
	size_t at;    /* offset in s->keep */
} search_kept;

static int kept_cmp(const void *a, const void *b)
{
	const search_kept *x = a, *y = b;
	return x->pid < y->pid ? -1 : x->pid > y->pid;
}

/* Keeps a stage A head a batch read (a batch of one never needs it again).
 * Over the budget or out of memory it is simply not kept: stage B reads
 * it again. */
static void keep_head(ann_searcher *s, const ann_block_read *br)
{
	if (s->keep_len + br->length > SEARCH_KEEP_BYTES ||
	    search_grow((void **)&s->keep, &s->keep_cap, s->keep_len + br->length, 1) < 0 ||
	    search_grow((void **)&s->kept, &s->kept_cap, s->nkept + 1, sizeof(search_kept)) < 0)
		return;
	memcpy(s->keep + s->keep_len, br->data, br->length);
	s->kept[s->nkept++] = (search_kept){br->pid, (uint32_t)br->length, s->keep_len};
	s->keep_len += br->length;
}

static const search_kept *kept_find(const ann_searcher *s, uint32_t pid)
{
	search_kept key = {pid, 0, 0};
	return s->nkept ? bsearch(&key, s->kept, s->nkept, sizeof key, kept_cmp) : NULL;
}

/* Round 1 of unique partitions [u0, nu): requests, reads, estimates and scans. */
static int round1(ann_searcher *s, size_t nq, size_t u0, size_t nu, uint64_t ndelta, bool early, bool *any_codes_io,
		  uint64_t *scan_ns, uint64_t *decode_ns, uint64_t *wait_ns, uint64_t tm[4], ann_error *err)
{
	ann_index *x = s->idx;
	if (search_grow((void **)&s->reqs, &s->reqs_cap, nu ? nu : 1, sizeof(ann_block_range)) < 0 ||
	    search_grow((void **)&s->uh, &s->uh_cap, nu ? nu : 1, sizeof(uhead)) < 0)
		return ann_err(err, ANN_E_NOMEM, "search: out of memory for %zu requests", nu);
	bool any_codes = *any_codes_io;
	size_t nreq = 0;
	for (size_t u = u0; u < nu; u++) {
		uint32_t pid = s->upids[u];
		s->uh[u].codes = false;
		s->uh[u].held = 0;
		ann_dirent e;
		int rc = ann_catalog_part_get(s->rt, pid, &e, err);
		if (rc == ANN_E_NOTFOUND)
			continue; /* a partition the router knows but that holds nothing yet */
		ANN_TRY(rc);
		if (ndelta)
			ANN_TRY(scan_deltas(s, u, scan_ns, err));
		cblock *c = s->cmap && pid < x->dir.n ? s->cmap[pid] : NULL;
		if (c && (c->generation != e.generation || (c->head_len != 0) != (e.head != 0))) {
			cache_drop(s, c); /* stale: the partition was rewritten */
			c = NULL;
		}
		if (e.head) {
			if (!s->rq)
				return ann_err(err, ANN_E_CORRUPT, "%s: partition %u is a codes block but the index has no "
					       "codes (meta codes.kind missing)", x->path, pid);
			if (!any_codes) {
				for (size_t i = 0; i < nq; i++)
					s->ncand[i] = s->nub[i] = 0;
				any_codes = true;
			}
			if (c) { /* a cached head: round 1 without a read */
				cache_unlink(s, c);
				cache_push_front(s, c);
				ann_block_read br;
				memset(&br, 0, sizeof br);
				br.pid = pid;
				br.data = c->head;
				br.length = c->head_len;
				br.ent = e;
				ANN_TRY(codes_head(s, u, &br, true, &tm[1], err));
				continue;
			}
			const search_kept *kh = u0 > 0 ? kept_find(s, pid) : NULL;
			if (kh) { /* stage B: stage A of this batch read it for another query */
				ann_block_read br;
				memset(&br, 0, sizeof br);
				br.pid = pid;
				br.data = s->keep + kh->at;
				br.length = kh->len;
				br.ent = e;
				ANN_TRY(codes_head(s, u, &br, true, &tm[1], err));
				continue;
			}
			/* the head's pages whole: a 2.3 block's exact page 0 comes along */
			s->reqs[nreq++] = (ann_block_range){pid, cblock_head_read_len(e.head, e.length, e.kind == ANN_KIND_LMDB),
							    0, u};
			continue;
		}
		if (c) {
			cache_unlink(s, c);
			cache_push_front(s, c);
			uint64_t ts = ann_now_ns();
			const void *rows;
			ann_dtype t;
			ANN_TRY(block_rows(s, c->vecs, c->count, &rows, &t, err));
			for (uint32_t j = s->ustart[u]; j < s->ustart[u + 1]; j++)
				ANN_TRY(scan_block(s, s->pairs[j].q, c->ids, rows, t, c->count, true, err));
			*scan_ns += ann_now_ns() - ts;
			continue;
		}
		s->reqs[nreq++] = (ann_block_range){pid, 0, 0, u};
	}
	/* Stage B: the k best pages so far come along (docs/DESIGN.md "Read
	 * waves"), when there are head reads to share the wait with; one
	 * submission for both (each costs a device notification). */
	size_t nearly = 0;
	if (early && nreq > 0 && any_codes)
		ANN_TRY(codes_early_reads(s, nq, nreq, &nearly, err));
	if (nreq > 0) { /* with every head cached, round 1 reads nothing */
		ANN_TRY(ann_store_reader_submit_ranges(s->rd, s->reqs, nreq + nearly, err));
		s->waves++;
	}
	int first_error = ANN_OK;
	ann_error first = {0};
	for (;;) {
		ann_block_read br;
		ann_error e2 = {0};
		uint64_t tw = ann_now_ns();
		int rc = ann_store_reader_next(s->rd, &br, &e2);
		uint64_t dt = ann_now_ns() - tw;
		*wait_ns += dt;
		if (rc < 0) {
			if (err)
				*err = e2;
			return rc;
		}
		if (rc == 0)
			break;
		if (first_error == ANN_OK) {
			size_t u = (size_t)br.tag;
			if (br.tag & SEARCH_EARLY_TAG) {
				tm[2] += dt;
				uint64_t t0 = ann_now_ns();
				first_error = codes_early_take(s, &br, &e2);
				tm[3] += ann_now_ns() - t0;
			} else if (br.status < 0) {
				first_error = ann_err_prefix(&e2, br.status, "%s", x->path);
			} else if (br.ent.head) {
				tm[0] += dt;
				first_error = codes_head(s, u, &br, false, &tm[1], &e2);
				if (first_error >= 0 && s->stage_a && nq > 1 && !s->keep_off)
					keep_head(s, &br);
			} else {
				first_error = process_block(s, u, &br.ent, br.data, br.length, br.cost, decode_ns, scan_ns,
							    &e2);
			}
			if (first_error < 0)
				first = e2;
		}
		ann_store_reader_release(s->rd, &br); /* after an error: drain so the reader is idle again */
	}
	*any_codes_io = any_codes;
	if (first_error < 0) {
		if (err)
			*err = first;
		return first_error;
	}
	return ANN_OK;
}

/* The second stage of learned adaptive probing (probe.h): each query's
 * partitions beyond the first stage, as many as its features predict. */
static size_t stage_b(ann_searcher *s, size_t nq, size_t npairs)
{
	const ann_probe_model *pm = s->pm;
	size_t at = npairs;
	for (size_t i = 0; i < nq; i++) {
		uint32_t lo = ANN_MIN(pm->p1, s->nparts[i]);
		float ubk, best;
		double f[ANN_PROBE_FEATURES];
		codes_probe_state(s, i, &ubk, &best);
		ann_probe_features(s->pf + i * pm->p1, lo, ubk, best, f);
		uint32_t p = lo;
		if (s->feat_out)
			memcpy(s->feat_out + i * ANN_PROBE_FEATURES, f, sizeof f);
		else
			p = ann_probe_predict(pm, f, s->o.nprobe, lo, s->nparts[i]);
		for (uint32_t j = lo; j < p; j++)
			s->pairs[at++] = (pair){s->parts[i * s->pwidth + j], (uint32_t)i, j};
		s->nparts[i] = p;
	}
	return at;
}

/* Steps 3-5 of ann_search inside the snapshot s->rt: round 1 (in two stages
 * with a probe model), round 2. */
static int search_snapshot(ann_searcher *s, size_t nq, size_t nu, size_t npairs, uint64_t *scan_ns,
			   uint64_t *decode_ns, uint64_t *wait_ns, uint64_t tm[4], ann_error *err)
{
	ANN_TRY(ann_catalog_count(s->rt, ANN_CAT_TOMB, &s->ntomb, err));
	uint64_t ndelta = 0;
	ANN_TRY(ann_catalog_count(s->rt, ANN_CAT_DELTA, &ndelta, err));
	s->sums_len = 0;
	s->p0_len = 0;
	s->held_len = s->nheld = 0;
	if (s->qrot_ok)
		memset(s->qrot_ok, 0, nq);
	s->waves = 0;
	bool any_codes = false;
	if (s->pm)
		for (size_t i = 0; i < nq * s->pm->p1; i++)
			s->pf[i] = INFINITY;
	s->stage_a = s->pm != NULL;
	s->keep_len = s->nkept = 0;
	int rc = round1(s, nq, 0, nu, ndelta, false, &any_codes, scan_ns, decode_ns, wait_ns, tm, err);
	s->stage_a = false;
	ANN_TRY(rc);
	if (s->nkept > 1)
		qsort(s->kept, s->nkept, sizeof *s->kept, kept_cmp);
	if (s->pm && any_codes) {
		size_t np2 = stage_b(s, nq, npairs);
		if (np2 > npairs) {
			size_t nu2 = group_pairs(s, nq, npairs, np2, nu);
			bool early = s->o.rerank_phases >= 2 && !s->early_off && !s->feat_out;
			ANN_TRY(round1(s, nq, nu, nu2, ndelta, early, &any_codes, scan_ns, decode_ns, wait_ns, tm, err));
		}
	}
	if (!any_codes)
		return ANN_OK;
	uint64_t w2 = 0;
	rc = codes_round2(s, nq, &w2, &tm[3], err);
	tm[2] += w2;
	*wait_ns += w2;
	return rc;
}

int ann_search(ann_searcher *s, const float *queries, size_t nq, int64_t *ids, float *dists, ann_query_stats *stats,
	       ann_error *err)
{
	if (nq == 0)
		return ANN_OK;
	uint64_t t_start = ann_now_ns();
	ANN_TRY(ensure_batch(s, nq, err));
	ann_index *x = s->idx;
	size_t d = x->meta.dim, k = s->o.k, np = s->pwidth;
	int rc;
	/* Queries: copied (normalised for cosine), heaps over the caller's arrays. */
	memcpy(s->qnorm, queries, nq * d * sizeof(float));
	for (size_t i = 0; i < nq; i++) {
		const float *v = s->qnorm + i * d;
		for (size_t j = 0; j < d; j++)
			if (!ann_f32_input_ok(v[j]))
				return ann_err(err, ANN_E_INVAL, "search: query %zu, component %zu is %g: not finite, or "
					       "beyond +-2^50 (1.1e15), where squared distances overflow float", i, j,
					       (double)v[j]);
		if (x->meta.metric == ANN_METRIC_COSINE)
			ann_unit_f32(s->qnorm + i * d, d);
		ann_topk_init(&s->heaps[i], dists + i * k, ids + i * k, k);
		s->qbytes[i] = s->qreqs[i] = s->qdec[i] = 0;
		s->qscan[i] = s->qcand[i] = 0;
		s->qb1[i] = s->qb2[i] = s->qio1[i] = s->qio2[i] = 0;
		s->qest[i] = s->qrr[i] = 0;
	}
	/* 1. route */
	uint64_t t0 = ann_now_ns();
	size_t npairs = 0;
	int batched = 0;
	ann_search_opts ro = s->o; /* with a probe model: routed to twice the budget; more for the spread order */
	ro.nprobe = s->pwidth;
	bool spread = s->spread_w > 0.0f;
	if (x->router->ops->route_batch) {
		batched = x->router->ops->route_batch(x->router, s->rctx, s->qnorm, nq, &ro, s->parts, s->nparts,
						      spread ? s->rdist : NULL, err);
		if (batched < 0)
			return batched;
	}
	/* A single query's graph search for more than the budget keeps the ef of
	 * the budget (the ranks past it only feed the second stage or the spread
	 * order): the route then costs what a fixed nprobe's does. */
	if ((s->pm || spread) && !ro.hnsw_ef && x->meta.router == ANN_ROUTER_KMEANS) {
		uint32_t cal = ann_router_kmeans_ef(x->router);
		ro.hnsw_ef = ANN_MIN(ANN_MAX(cal ? cal : 128u, 2 * s->o.nprobe), ANN_MAX_EF);
	}
	for (size_t i = 0; i < nq; i++) {
		if (!batched) {
			rc = x->router->ops->route(x->router, s->rctx, s->qnorm + i * d, &ro, s->parts + i * np, err);
			if (rc < 0)
				return rc;
			s->nparts[i] = (uint32_t)rc;
		}
		if (spread)
			s->nparts[i] = spread_order(s, s->parts + i * np,
						    batched ? s->rdist + i * np : x->router->ops->route_dists(s->rctx),
						    s->nparts[i], s->npmax, s->qnorm + i * d);
		/* every routed partition, or with a probe model the first stage's P1 */
		uint32_t lim = s->pm ? ANN_MIN(s->pm->p1, s->nparts[i]) : s->nparts[i];
		for (uint32_t j = 0; j < lim; j++)
			s->pairs[npairs++] = (pair){s->parts[i * np + j], (uint32_t)i, j};
	}
	uint64_t route_ns = ann_now_ns() - t0;
	/* 2. group by partition */
	size_t nu = group_pairs(s, nq, 0, npairs, 0);
	/* 3. One snapshot for the batch: directory entries, blocks, deltas and
	 * tombstones all come from it (docs/UPDATES.md). */
	uint64_t scan_ns = 0, decode_ns = 0, wait_ns = 0, tm[4] = {0, 0, 0, 0};
	ANN_TRY(ann_catalog_read_renew(s->rt, err));
	rc = search_snapshot(s, nq, nu, npairs, &scan_ns, &decode_ns, &wait_ns, tm, err);
	ann_catalog_read_reset(s->rt);
	if (rc < 0)
		return rc;
	for (size_t i = 0; i < nq; i++)
		ann_topk_finish(&s->heaps[i]);
	if (stats) {
		uint64_t total = ann_now_ns() - t_start;
		for (size_t i = 0; i < nq; i++) {
			ann_query_stats *st = &stats[i];
			st->partitions = s->nparts[i];
			st->candidates = s->qcand[i];
			st->bytes_read = s->qbytes[i];
			st->io_requests = s->qreqs[i];
			st->latency_ns = total;
			st->route_ns = route_ns / nq;
			st->io_wait_ns = wait_ns / nq;
			st->decode_ns = (uint64_t)s->qdec[i];
			st->scan_ns = scan_ns / nq;
			st->bytes_round1 = s->qb1[i];
			st->bytes_round2 = s->qb2[i];
			st->ios_round1 = s->qio1[i];
			st->ios_round2 = s->qio2[i];
			st->estimated = s->qest[i];
			st->reranked = s->qrr[i];
			st->round1_wait_ns = tm[0] / nq;
			st->estimate_ns = tm[1] / nq;
			st->round2_wait_ns = tm[2] / nq;
			st->rerank_ns = tm[3] / nq;
			st->read_waves = s->waves;
		}
	}
	return ANN_OK;
}

