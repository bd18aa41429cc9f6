/* SPDX-License-Identifier: MIT */
/*
 * search.c: searchers (docs/DESIGN.md, "Search"). A batch of queries is
 * routed first; the (partition, query) pairs are grouped by partition so
 * each block is read once per batch; the reads go to the store reader
 * (io_uring, queue depth bounded, completions in any order) and every block
 * is decoded and scanned for all its queries as soon as it arrives, while
 * the other reads are in flight. An optional cache keeps decoded blocks
 * (LRU, bounded in bytes).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "distance.h"
#include "index.h"
#include <string.h>

void ann_search_opts_init(ann_search_opts *o)
{
	memset(o, 0, sizeof *o);
	o->k = 10;
	o->nprobe = 16;
	o->candidates_factor = 10;
	o->queue_depth = 32;
	o->io_buffer_bytes = (size_t)16 << 20;
}

/* A decoded block held by the cache: ids then vectors in one allocation. */
typedef struct cblock {
	uint32_t pid;
	uint32_t generation;
	uint32_t count;
	size_t bytes;
	int64_t *ids;
	void *vecs;
	struct cblock *prev, *next; /* LRU list, most recent at head */
} cblock;

typedef struct pair {
	uint32_t pid;
	uint32_t q;
} pair;

struct ann_searcher {
	ann_index *idx;
	ann_search_opts o;
	const ann_kernels *kern;
	ann_cat_txn *rt;      /* catalog snapshot, renewed per batch, reset after */
	ann_ioreader *io;     /* blocks.dat reader (file store) */
	ann_block_dec *dec;
	uint64_t ntomb;       /* tombstones in the batch's snapshot */
	/* deltas of one partition */
	int64_t *dids;
	uint8_t *dvecs;
	size_t dcap, dn, dbytes;
	uint32_t dpid;
	/* requests of a batch */
	ann_ioreq *reqs;
	size_t reqs_cap;
	ann_router_ctx *rctx;
	size_t vec_esize;     /* bytes per decoded element */
	ann_dtype vec_type;
	/* batch scratch, grown to the largest batch seen */
	size_t cap_q;
	uint32_t *parts;      /* cap_q * nprobe */
	uint32_t *nparts;     /* cap_q */
	pair *pairs;          /* cap_q * nprobe */
	uint32_t *upids;      /* unique partitions of the batch */
	uint32_t *ustart;     /* start of each unique partition's pairs */
	float *qnorm;         /* cap_q * dim: queries (normalised for cosine) */
	ann_topk *heaps;      /* cap_q */
	double *qbytes, *qreqs, *qdec; /* per-query attributions */
	uint64_t *qscan, *qcand;
	float *dist;          /* distances of one block's rows */
	size_t dist_cap;
	float *conv;          /* i8 blocks converted to float */
	size_t conv_cap;
	/* cache */
	cblock **cmap;        /* dir.n entries */
	cblock *chead, *ctail;
	size_t cbytes;
};

static int grow(void **p, size_t *cap, size_t need, size_t esz)
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

int ann_searcher_new(ann_index *idx, const ann_search_opts *o, ann_searcher **out, ann_error *err)
{
	*out = NULL;
	ann_searcher *s = ann_calloc(1, sizeof *s);
	if (!s)
		return ann_err(err, ANN_E_NOMEM, "out of memory for a searcher");
	int rc;
	s->idx = idx;
	if (o)
		s->o = *o;
	else
		ann_search_opts_init(&s->o);
	if (s->o.k == 0 || s->o.k > ANN_MAX_K || s->o.nprobe == 0 || s->o.nprobe > 4096) {
		rc = ann_err(err, ANN_E_INVAL, "search: k must be within 1..%u and nprobe within 1..4096", ANN_MAX_K);
		goto fail;
	}
	s->kern = ann_kernels_best();
	if (idx->meta.store == ANN_STORE_FILE) {
		ann_ioreader_opts io;
		ann_ioreader_opts_init(&io);
		io.queue_depth = s->o.queue_depth ? s->o.queue_depth : 32;
		io.pool_bytes = s->o.io_buffer_bytes ? s->o.io_buffer_bytes : ((size_t)16 << 20);
		/* A partition is one read: the pool must hold the largest block
		 * (a few huge partitions, e.g. 16 parts of 1M vectors, are 21 MB). */
		uint64_t largest = 0;
		for (uint32_t p = 0; p < idx->dir.n; p++)
			if (idx->dir.ents[p].kind != ANN_KIND_NONE)
				largest = ANN_MAX(largest, (uint64_t)idx->dir.ents[p].length);
		io.pool_bytes = ANN_MAX(io.pool_bytes, (size_t)largest + 4096);
		io.force_pread = s->o.force_pread != 0;
		size_t plen = strlen(ann_store_dir_path(idx->store)) + 16;
		char *path = ann_malloc(plen);
		if (!path) {
			rc = ann_err(err, ANN_E_NOMEM, "out of memory");
			goto fail;
		}
		snprintf(path, plen, "%s/blocks.dat", ann_store_dir_path(idx->store));
		rc = ann_ioreader_open(path, &io, &s->io, err);
		ann_free(path);
		if (rc < 0)
			goto fail;
	}
	ANN_CHECK(rc, ann_catalog_read_begin(ann_store_catalog(idx->store), &s->rt, err));
	ann_catalog_read_reset(s->rt);
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
			rc = ann_err(err, ANN_E_NOMEM, "out of memory for the cache map");
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

void ann_searcher_free(ann_searcher *s)
{
	if (!s)
		return;
	for (cblock *c = s->chead, *n; c; c = n) {
		n = c->next;
		ann_free(c);
	}
	ann_free(s->cmap);
	if (s->rctx)
		s->idx->router->ops->ctx_free(s->rctx);
	block_dec_free(s->dec);
	ann_ioreader_free(s->io);
	if (s->rt)
		ann_catalog_read_end(s->rt);
	ann_free(s->dids);
	ann_free(s->dvecs);
	ann_free(s->reqs);
	ann_free(s->parts);
	ann_free(s->nparts);
	ann_free(s->pairs);
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
	return s->io ? ann_ioreader_path(s->io) : "lmdb";
}

/* Inserts a decoded block into the cache, evicting from the tail. */
static void cache_put(ann_searcher *s, uint32_t pid, uint32_t gen, const int64_t *ids, const void *vecs,
		      uint32_t count)
{
	size_t vbytes = (size_t)count * s->idx->meta.dim * s->vec_esize;
	size_t bytes = sizeof(cblock) + (size_t)count * 8 + vbytes + 64;
	if (bytes > s->o.cache_bytes || pid >= s->idx->dir.n || s->cmap[pid])
		return;
	while (s->cbytes + bytes > s->o.cache_bytes && s->ctail) {
		cblock *v = s->ctail;
		cache_unlink(s, v);
		s->cmap[v->pid] = NULL;
		s->cbytes -= v->bytes;
		ann_free(v);
	}
	cblock *c = ann_malloc(bytes);
	if (!c)
		return; /* the cache is an optimisation: no memory, no caching */
	c->pid = pid;
	c->generation = gen;
	c->count = count;
	c->bytes = bytes;
	c->ids = (int64_t *)(c + 1);
	c->vecs = (void *)ANN_ALIGN_UP((uintptr_t)(c->ids + count), 64);
	memcpy(c->ids, ids, (size_t)count * 8);
	memcpy(c->vecs, vecs, vbytes);
	c->prev = c->next = NULL;
	cache_push_front(s, c);
	s->cmap[pid] = c;
	s->cbytes += bytes;
}

static bool heap_has(const ann_topk *h, int64_t id)
{
	for (size_t i = 0; i < h->n; i++)
		if (h->id[i] == id)
			return true;
	return false;
}

/* Scans count rows for query qi, pushing into its heap. */
/* Is id deleted in the batch's snapshot (its block copies are dead)? */
static bool tombed(ann_searcher *s, int64_t id)
{
	uint8_t k[8];
	ann_stbe64(k, (uint64_t)id);
	const uint8_t *v;
	size_t n;
	return ann_catalog_get(s->rt, ANN_CAT_TOMB, k, sizeof k, &v, &n, NULL) == ANN_OK;
}

/* Scans count rows for query qi, pushing into its heap. Block rows
 * (from_block) are checked against the tombstones. */
static int scan_block(ann_searcher *s, size_t qi, const int64_t *ids, const void *vecs, uint32_t count,
		      bool from_block, ann_error *err)
{
	size_t d = s->idx->meta.dim;
	if (grow((void **)&s->dist, &s->dist_cap, count, sizeof(float)) < 0)
		return ann_err(err, ANN_E_NOMEM, "search: out of memory for %u distances", count);
	const float *q = s->qnorm + qi * d;
	float *dist = s->dist;
	ann_metric m = s->idx->meta.metric;
	const void *rows = vecs;
	ann_dtype t = s->vec_type;
	if (t == ANN_DTYPE_I8) {
		if (grow((void **)&s->conv, &s->conv_cap, (size_t)count * d, sizeof(float)) < 0)
			return ann_err(err, ANN_E_NOMEM, "search: out of memory converting a block");
		const int8_t *src = vecs;
		for (size_t i = 0; i < (size_t)count * d; i++)
			s->conv[i] = src[i];
		rows = s->conv;
		t = ANN_DTYPE_F32;
	}
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
		if (dedupe && heap_has(h, ids[i]))
			continue;
		if (from_block && s->ntomb && tombed(s, ids[i]))
			continue;
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

static int ensure_batch(ann_searcher *s, size_t nq, ann_error *err)
{
	if (nq <= s->cap_q)
		return ANN_OK;
	size_t np = s->o.nprobe, d = s->idx->meta.dim;
	size_t n = nq;
	void *p[14];
	p[0] = ann_realloc(s->parts, n * np * sizeof(uint32_t));
	if (p[0])
		s->parts = p[0];
	p[1] = ann_realloc(s->nparts, n * sizeof(uint32_t));
	if (p[1])
		s->nparts = p[1];
	p[2] = ann_realloc(s->pairs, n * np * sizeof(pair));
	if (p[2])
		s->pairs = p[2];
	p[3] = ann_realloc(s->upids, n * np * sizeof(uint32_t));
	if (p[3])
		s->upids = p[3];
	p[4] = ann_realloc(s->ustart, (n * np + 1) * sizeof(uint32_t));
	if (p[4])
		s->ustart = p[4];
	p[5] = ann_realloc(s->qnorm, n * d * sizeof(float));
	if (p[5])
		s->qnorm = p[5];
	p[6] = ann_realloc(s->heaps, n * sizeof(ann_topk));
	if (p[6])
		s->heaps = p[6];
	p[7] = ann_realloc(s->qbytes, n * sizeof(double));
	if (p[7])
		s->qbytes = p[7];
	p[8] = ann_realloc(s->qreqs, n * sizeof(double));
	if (p[8])
		s->qreqs = p[8];
	p[9] = ann_realloc(s->qdec, n * sizeof(double));
	if (p[9])
		s->qdec = p[9];
	p[10] = ann_realloc(s->qscan, n * sizeof(uint64_t));
	if (p[10])
		s->qscan = p[10];
	p[11] = ann_realloc(s->qcand, n * sizeof(uint64_t));
	if (p[11])
		s->qcand = p[11];
	for (int i = 0; i < 12; i++)
		if (!p[i])
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
	memcpy(s->dvecs + s->dn * s->dbytes, val, s->dbytes); /* f32 deltas are little-endian, as is x86 */
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
	for (uint32_t j = s->ustart[u]; j < s->ustart[u + 1]; j++) {
		s->qbytes[s->pairs[j].q] += bytes / sharers; /* catalog pages holding the deltas */
		ANN_TRY(scan_block(s, s->pairs[j].q, s->dids, s->dvecs, (uint32_t)s->dn, false, err));
	}
	*scan_ns += ann_now_ns() - ts;
	return ANN_OK;
}

/* Decodes one block and scans it for the queries of unique partition u. */
static int process_block(ann_searcher *s, size_t u, const ann_dirent *e, const uint8_t *data, size_t len,
			 uint64_t *decode_ns, uint64_t *scan_ns, ann_error *err)
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
	for (uint32_t j = s->ustart[u]; j < s->ustart[u + 1]; j++) {
		uint32_t qi = s->pairs[j].q;
		s->qbytes[qi] += (double)len / sharers;
		s->qreqs[qi] += 1.0 / sharers;
		s->qdec[qi] += (double)dec_ns / sharers;
		ANN_TRY(scan_block(s, qi, view.ids, view.vectors, view.info.count, true, err));
	}
	*scan_ns += ann_now_ns() - ts;
	if (s->cmap)
		cache_put(s, pid, e->generation, view.ids, view.vectors, view.info.count);
	return ANN_OK;
}

/* Steps 3-5 of ann_search inside the snapshot s->rt. */
static int search_snapshot(ann_searcher *s, size_t npairs, size_t nu, uint64_t *scan_ns, uint64_t *decode_ns,
			   uint64_t *wait_ns, ann_error *err)
{
	ann_index *x = s->idx;
	(void)npairs;
	ANN_TRY(ann_catalog_count(s->rt, ANN_CAT_TOMB, &s->ntomb, err));
	uint64_t ndelta = 0;
	ANN_TRY(ann_catalog_count(s->rt, ANN_CAT_DELTA, &ndelta, err));
	if (grow((void **)&s->reqs, &s->reqs_cap, nu ? nu : 1, sizeof(ann_ioreq)) < 0)
		return ann_err(err, ANN_E_NOMEM, "search: out of memory for %zu requests", nu);
	size_t nreq = 0;
	for (size_t u = 0; u < nu; u++) {
		uint32_t pid = s->upids[u];
		ann_dirent e;
		int rc = ann_catalog_part_get(s->rt, pid, &e, err);
		if (rc == ANN_E_NOTFOUND)
			continue; /* a partition the router knows but that holds nothing yet */
		ANN_TRY(rc);
		if (ndelta)
			ANN_TRY(scan_deltas(s, u, scan_ns, err));
		cblock *c = s->cmap && pid < x->dir.n ? s->cmap[pid] : NULL;
		if (c && c->generation == e.generation) {
			cache_unlink(s, c);
			cache_push_front(s, c);
			uint64_t ts = ann_now_ns();
			for (uint32_t j = s->ustart[u]; j < s->ustart[u + 1]; j++)
				ANN_TRY(scan_block(s, s->pairs[j].q, c->ids, c->vecs, c->count, true, err));
			*scan_ns += ann_now_ns() - ts;
			continue;
		}
		if (c) { /* stale: the partition was rewritten */
			cache_unlink(s, c);
			s->cmap[pid] = NULL;
			s->cbytes -= c->bytes;
			ann_free(c);
		}
		if (!s->io) {
			/* LMDB store: the block is read through the map, inside the snapshot. */
			const uint8_t *buf;
			size_t len;
			uint64_t tw = ann_now_ns();
			rc = ann_catalog_block_get(s->rt, pid, &buf, &len, err);
			*wait_ns += ann_now_ns() - tw;
			if (rc < 0)
				return ann_err_prefix(err, rc, "%s: partition %u", x->path, pid);
			ANN_TRY(process_block(s, u, &e, buf, len, decode_ns, scan_ns, err));
			continue;
		}
		s->reqs[nreq].offset = e.offset;
		s->reqs[nreq].length = e.length;
		s->reqs[nreq].tag = u;
		nreq++;
	}
	if (nreq == 0)
		return ANN_OK;
	ANN_TRY(ann_ioreader_submit(s->io, s->reqs, nreq, err));
	int first_error = ANN_OK;
	ann_error first = {0};
	for (;;) {
		ann_iocomp c;
		uint64_t tw = ann_now_ns();
		int rc = ann_ioreader_next(s->io, &c, err);
		*wait_ns += ann_now_ns() - tw;
		if (rc < 0)
			return rc;
		if (rc == 0)
			break;
		if (first_error == ANN_OK) {
			size_t u = (size_t)c.tag;
			ann_error e2 = {0};
			if (c.status < 0) {
				first_error = ann_err(&e2, c.status, "%s: partition %u: read of %u bytes failed%s%s", x->path,
						      s->upids[u], c.length, c.sys_errno ? ": " : "",
						      c.sys_errno ? strerror(c.sys_errno) : "");
			} else {
				ann_dirent e;
				rc = ann_catalog_part_get(s->rt, s->upids[u], &e, &e2);
				if (rc >= 0)
					rc = process_block(s, u, &e, c.data, c.length, decode_ns, scan_ns, &e2);
				first_error = rc < 0 ? rc : ANN_OK;
			}
			if (first_error < 0)
				first = e2;
		}
		ann_ioreader_release(s->io, &c); /* after an error: drain so the reader is idle again */
	}
	if (first_error < 0 && err)
		*err = first;
	return first_error;
}

int ann_search(ann_searcher *s, const float *queries, size_t nq, int64_t *ids, float *dists, ann_query_stats *stats,
	       ann_error *err)
{
	if (nq == 0)
		return ANN_OK;
	uint64_t t_start = ann_now_ns();
	ANN_TRY(ensure_batch(s, nq, err));
	ann_index *x = s->idx;
	size_t d = x->meta.dim, k = s->o.k, np = s->o.nprobe;
	int rc;
	/* Queries: copied (normalised for cosine), heaps over the caller's arrays. */
	memcpy(s->qnorm, queries, nq * d * sizeof(float));
	for (size_t i = 0; i < nq; i++) {
		const float *v = s->qnorm + i * d;
		for (size_t j = 0; j < d; j++)
			if (!isfinite(v[j]))
				return ann_err(err, ANN_E_INVAL, "search: query %zu, component %zu is not finite", i, j);
		if (x->meta.metric == ANN_METRIC_COSINE) {
			double n2 = 0;
			for (size_t j = 0; j < d; j++)
				n2 += (double)v[j] * v[j];
			if (n2 > 0)
				for (size_t j = 0; j < d; j++)
					s->qnorm[i * d + j] = (float)(v[j] / sqrt(n2));
		}
		ann_topk_init(&s->heaps[i], dists + i * k, ids + i * k, k);
		s->qbytes[i] = s->qreqs[i] = s->qdec[i] = 0;
		s->qscan[i] = s->qcand[i] = 0;
	}
	/* 1. route */
	uint64_t t0 = ann_now_ns();
	size_t npairs = 0;
	int batched = 0;
	if (x->router->ops->route_batch) {
		batched = x->router->ops->route_batch(x->router, s->rctx, s->qnorm, nq, &s->o, s->parts, s->nparts, err);
		if (batched < 0)
			return batched;
	}
	for (size_t i = 0; i < nq; i++) {
		if (!batched) {
			rc = x->router->ops->route(x->router, s->rctx, s->qnorm + i * d, &s->o, s->parts + i * np, err);
			if (rc < 0)
				return rc;
			s->nparts[i] = (uint32_t)rc;
		}
		rc = (int)s->nparts[i];
		for (int j = 0; j < rc; j++) {
			s->pairs[npairs].pid = s->parts[i * np + (size_t)j];
			s->pairs[npairs].q = (uint32_t)i;
			npairs++;
		}
	}
	uint64_t route_ns = ann_now_ns() - t0;
	/* 2. group by partition */
	if (nq > 1)
		qsort(s->pairs, npairs, sizeof(pair), pair_cmp);
	else
		for (size_t a = 1; a < npairs; a++) /* one query: insertion sort of nprobe entries */
			for (size_t b = a; b > 0 && s->pairs[b - 1].pid > s->pairs[b].pid; b--) {
				pair t = s->pairs[b];
				s->pairs[b] = s->pairs[b - 1];
				s->pairs[b - 1] = t;
			}
	size_t nu = 0;
	for (size_t i = 0; i < npairs; i++) {
		if (i == 0 || s->pairs[i].pid != s->pairs[i - 1].pid) {
			s->upids[nu] = s->pairs[i].pid;
			s->ustart[nu] = (uint32_t)i;
			nu++;
		}
	}
	s->ustart[nu] = (uint32_t)npairs;
	/* 3. One snapshot for the batch: directory entries, blocks, deltas and
	 * tombstones all come from it (docs/UPDATES.md). */
	uint64_t scan_ns = 0, decode_ns = 0, wait_ns = 0;
	ANN_TRY(ann_catalog_read_renew(s->rt, err));
	rc = search_snapshot(s, npairs, nu, &scan_ns, &decode_ns, &wait_ns, err);
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
		}
	}
	return ANN_OK;
}
