/* SPDX-License-Identifier: MIT */
/*
 * update.c: inserts, deletes and compaction without rebuilding
 * (docs/UPDATES.md). The writer is the store's single writer process.
 *
 * Catalog records (docs/FORMAT.md, "catalog.lmdb"):
 *   delta  (partition be32, id be64) -> vector in the delta type
 *   idmap  id be64 -> partition        for every inserted id (live), or
 *                                      ANN_IDMAP_GONE for a build id whose
 *                                      dead copy compaction removed
 *   tomb   id be64 -> (empty)          a copy of id inside a block is dead
 *   meta   index.next_id, index.live_vectors, compact.* figures
 *
 * Invariants:
 *  1. Every insert or delete call is one catalog transaction: after its
 *     commit it is durable and visible to every search that starts later;
 *     before it, nothing of it is.
 *  2. An id is live iff it is in idmap (an inserted copy, in a delta or,
 *     after compaction, in a block), or it is a build id (< index.vectors)
 *     with no tomb and no idmap entry. Search skips block copies whose id has
 *     a tomb unless the copy's partition equals the id's idmap partition and
 *     the tomb was written before... which cannot happen: compaction clears
 *     the tomb of every id in the same transaction that rewrites the blocks
 *     holding its dead copies (rule 3), so a tomb always means "every block
 *     copy of this id is dead".
 *  3. Compaction is one transaction: new blocks are written and fsynced
 *     first (store publication protocol), then the directory switch, the
 *     removal of merged deltas and applied tombs, and the router update
 *     commit together; the old blocks stay readable until then and their
 *     space is reused only after every older reader is gone.
 *
 * State diagram of ann_writer: OPEN --(insert/delete/compact ok)--> OPEN;
 * any I/O failure inside a commit leaves the store failed (sticky,
 * ANN_E_STATE from then on, store_file.c invariant 6) --> only close.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/statvfs.h>

#include "distance.h"
#include "index.h"
#include "kmeans.h"
#include "update.h"

#define ANN_IDMAP_GONE UINT32_MAX

struct ann_writer {
	ann_index *x;
	uint64_t next_id;
	uint64_t live;
	bool failed; /* a compaction's reload of x failed: x no longer holds the index; only close */
};

/* ANN_E_STATE once the writer's index in RAM is not the committed one. */
static int writer_usable(const ann_writer *w, ann_error *err)
{
	if (w && w->failed)
		return ann_err(err, ANN_E_STATE, "%s: the writer failed to reload the index after a compaction; "
			       "close it and open a new one", w->x->path);
	/* The store stops writing after a commit whose outcome it cannot know;
	 * the writer then refuses everything, not only what writes. */
	if (w && ann_store_failed(w->x->store))
		return ann_err(err, ANN_E_STATE, "%s: the writer failed earlier (a commit that may not have reached "
			       "the disk); close it and open a new one", w->x->path);
	return ANN_OK;
}

static int meta_u64_or(ann_cat_txn *t, const char *name, uint64_t def, uint64_t *v, ann_error *err)
{
	int rc = ann_catalog_meta_get_u64(t, name, v, err);
	if (rc == ANN_E_NOTFOUND) {
		*v = def;
		return ANN_OK;
	}
	return rc;
}

int ann_writer_open(const char *index_dir, ann_writer **out, ann_error *err)
{
	*out = NULL;
	ann_writer *w = ann_calloc(1, sizeof *w);
	if (!w)
		return ann_err(err, ANN_E_NOMEM, "%s: out of memory for a writer", index_dir);
	int rc = ann_index_load(index_dir, true, &w->x, err);
	if (rc < 0) {
		ann_free(w);
		return rc;
	}
	ann_cat_txn *t;
	rc = ann_catalog_read_begin(ann_store_catalog(w->x->store), &t, err);
	if (rc >= 0) {
		rc = meta_u64_or(t, "index.next_id", w->x->meta.vectors, &w->next_id, err);
		if (rc >= 0)
			rc = meta_u64_or(t, "index.live_vectors", w->x->meta.vectors, &w->live, err);
		ann_catalog_read_end(t);
	}
	if (rc < 0) {
		ann_writer_close(w);
		return rc;
	}
	*out = w;
	return ANN_OK;
}

void ann_writer_close(ann_writer *w)
{
	if (!w)
		return;
	ann_index_close(w->x);
	ann_free(w);
}

static void id_key(uint8_t k[8], int64_t id)
{
	ann_stbe64(k, (uint64_t)id);
}

static void delta_key(uint8_t k[ANN_DELTA_KEY], uint32_t pid, int64_t id)
{
	ann_stbe32(k, pid);
	ann_stbe64(k + 4, (uint64_t)id);
}

static int has_key(ann_cat_txn *t, ann_cat_db db, const uint8_t *k, size_t klen, bool *yes, ann_error *err)
{
	const uint8_t *v;
	size_t n;
	int rc = ann_catalog_get(t, db, k, klen, &v, &n, err);
	*yes = rc == ANN_OK;
	return rc == ANN_E_NOTFOUND ? ANN_OK : rc;
}

/* Removes id if live. *done tells whether it was. */
static int delete_one(ann_writer *w, ann_cat_txn *t, int64_t id, bool *done, ann_error *err)
{
	uint8_t k[8];
	id_key(k, id);
	uint32_t pid;
	*done = false;
	int rc = ann_catalog_idmap_get(t, (uint64_t)id, &pid, err);
	if (rc == ANN_OK && pid == ANN_IDMAP_GONE)
		return ANN_OK;
	if (rc == ANN_OK) {
		/* An inserted copy: in the delta, or (after compaction) in a block. */
		uint8_t dk[ANN_DELTA_KEY];
		delta_key(dk, pid, id);
		rc = ann_catalog_del(t, ANN_CAT_DELTA, dk, sizeof dk, err);
		if (rc == ANN_E_NOTFOUND)
			rc = ann_catalog_put(t, ANN_CAT_TOMB, k, sizeof k, "", 0, err);
		ANN_TRY(rc);
		ANN_TRY(ann_catalog_idmap_del(t, (uint64_t)id, err));
		*done = true;
		return ANN_OK;
	}
	if (rc != ANN_E_NOTFOUND)
		return rc;
	if (id < 0 || (uint64_t)id >= w->x->meta.vectors)
		return ANN_OK;
	bool dead;
	ANN_TRY(has_key(t, ANN_CAT_TOMB, k, sizeof k, &dead, err));
	if (dead)
		return ANN_OK;
	ANN_TRY(ann_catalog_put(t, ANN_CAT_TOMB, k, sizeof k, "", 0, err));
	*done = true;
	return ANN_OK;
}

static int live(ann_writer *w, ann_cat_txn *t, int64_t id, bool *yes, ann_error *err)
{
	uint32_t pid;
	int rc = ann_catalog_idmap_get(t, (uint64_t)id, &pid, err);
	if (rc == ANN_OK) {
		*yes = pid != ANN_IDMAP_GONE;
		return ANN_OK;
	}
	if (rc != ANN_E_NOTFOUND)
		return rc;
	*yes = false;
	if (id < 0 || (uint64_t)id >= w->x->meta.vectors)
		return ANN_OK;
	uint8_t k[8];
	id_key(k, id);
	bool dead;
	ANN_TRY(has_key(t, ANN_CAT_TOMB, k, sizeof k, &dead, err));
	*yes = !dead;
	return ANN_OK;
}

/* Bytes of free space below which a failed commit is blamed on a full disk. */
#define WRITER_NOSPACE_BYTES ((uint64_t)1 << 20)

/* Commits txn (consumed). A write that fails on a full file system reaches
 * us from LMDB as EIO (a short write) or ENOSPC; say "no space left on
 * device" and name the index, rather than "Input/output error" (issue 13). */
static int writer_commit(ann_writer *w, ann_store_txn *txn, const char *what, ann_error *err)
{
	int rc = ann_store_commit(txn, err);
	if (rc != ANN_E_IO || !err || (err->sys_errno != EIO && err->sys_errno != ENOSPC))
		return rc;
	struct statvfs sv;
	if (statvfs(w->x->path, &sv) != 0)
		return rc;
	uint64_t avail = (uint64_t)sv.f_bavail * (uint64_t)sv.f_frsize;
	if (err->sys_errno != ENOSPC && avail >= WRITER_NOSPACE_BYTES)
		return rc;
	char was[sizeof err->msg];
	snprintf(was, sizeof was, "%s", err->msg);
	ann_err(err, ANN_E_IO, "%s: no space left on device (%llu bytes free): the %s was not committed (%s)",
		w->x->path, (unsigned long long)avail, what, was);
	err->sys_errno = ENOSPC;
	return ANN_E_IO;
}

int ann_writer_live(ann_writer *w, int64_t id, bool *yes, ann_error *err)
{
	ann_cat_txn *t;
	ANN_TRY(ann_catalog_read_begin(ann_store_catalog(w->x->store), &t, err));
	int rc = live(w, t, id, yes, err);
	ann_catalog_read_end(t);
	return rc;
}

/* Converts vector i of the input to the delta type, checking its values. */
static int to_delta(const ann_index *x, const float *v, size_t i, uint8_t *out, ann_error *err)
{
	size_t d = x->meta.dim;
	ann_dtype t = ann_index_delta_type(x);
	for (size_t j = 0; j < d; j++) {
		float f = v[j];
		if (!ann_f32_input_ok(f))
			return ann_err(err, ANN_E_INVAL, "insert: vector %zu, component %zu is %g: not finite, or beyond "
				       "+-2^50 (1.1e15), where squared distances overflow float", i, j, (double)f);
		if (t == ANN_DTYPE_U8 || t == ANN_DTYPE_I8) {
			float lo = t == ANN_DTYPE_U8 ? 0.0f : -128.0f, hi = t == ANN_DTYPE_U8 ? 255.0f : 127.0f;
			if (f != rintf(f) || f < lo || f > hi)
				return ann_err(err, ANN_E_INVAL, "insert: vector %zu, component %zu is %g; this %s index "
					       "stores integers in %g..%g", i, j, (double)f,
					       t == ANN_DTYPE_U8 ? "u8" : "i8", (double)lo, (double)hi);
			out[j] = t == ANN_DTYPE_U8 ? (uint8_t)f : (uint8_t)(int8_t)f;
		}
	}
	if (t == ANN_DTYPE_F32) {
		if (x->meta.metric == ANN_METRIC_COSINE) {
			double s = 0;
			for (size_t j = 0; j < d; j++)
				s += (double)v[j] * v[j];
			float inv = s > 0 ? (float)(1.0 / sqrt(s)) : 1.0f;
			for (size_t j = 0; j < d; j++)
				ann_stf32(out + 4 * j, v[j] * inv);
		} else {
			for (size_t j = 0; j < d; j++)
				ann_stf32(out + 4 * j, v[j]);
		}
	}
	return ANN_OK;
}

int ann_writer_get_info(const ann_writer *w, ann_index_info *info, ann_error *err)
{
	if (!w || !info)
		return ann_err(err, ANN_E_INVAL, "ann_writer_get_info: NULL writer or info");
	ANN_TRY(writer_usable(w, err));
	return ann_index_get_info(w->x, info, err);
}

int ann_insert(ann_writer *w, const float *vectors, size_t n, uint32_t dim, const int64_t *ids, int upsert,
	       int64_t *ids_out, ann_error *err)
{
	if (!w || (n && !vectors))
		return ann_err(err, ANN_E_INVAL, "insert: NULL writer or vectors");
	ANN_TRY(writer_usable(w, err));
	ann_index *x = w->x;
	/* Checked before the first read of vectors: a caller with vectors of
	 * another dimension must get an error, never a read past its array. */
	if (dim != x->meta.dim)
		return ann_err(err, ANN_E_INVAL, "insert: the vectors have dimension %u, the index %s has %u", dim,
			       x->path, x->meta.dim);
	if (n > SIZE_MAX / ((size_t)dim * sizeof(float) + 64))
		return ann_err(err, ANN_E_INVAL, "insert: %zu vectors of dimension %u overflow", n, dim);
	size_t d = x->meta.dim, db = ann_index_delta_bytes(x);
	uint32_t *parts = ann_malloc((n ? n : 1) * sizeof(uint32_t));
	float *routed = ann_malloc((n ? n : 1) * d * sizeof(float));
	uint8_t *payload = ann_malloc(db);
	ann_store_txn *txn = NULL;
	int rc;
	if (!parts || !routed || !payload) {
		rc = ann_err(err, ANN_E_NOMEM, "insert: out of memory for %zu vectors", n);
		goto fail;
	}
	/* Route in the space the build routed in (unit vectors for cosine). */
	memcpy(routed, vectors, n * d * sizeof(float));
	if (x->meta.metric == ANN_METRIC_COSINE)
		for (size_t i = 0; i < n; i++) {
			double s = 0;
			for (size_t j = 0; j < d; j++)
				s += (double)routed[i * d + j] * routed[i * d + j];
			if (s > 0)
				for (size_t j = 0; j < d; j++)
					routed[i * d + j] = (float)(routed[i * d + j] / sqrt(s));
		}
	const ann_assign_rule one = {.copies = 1};
	ANN_CHECK(rc, x->router->ops->assign(x->router, routed, n, &one, 1, parts, err));
	ANN_CHECK(rc, ann_store_begin(x->store, &txn, err));
	ann_cat_txn *t = ann_store_txn_catalog(txn);
	uint64_t next = w->next_id, added = 0;
	for (size_t i = 0; i < n; i++) {
		int64_t id = ids ? ids[i] : (int64_t)next++;
		if (id < 0) {
			rc = ann_err(err, ANN_E_INVAL, "insert: vector %zu has the negative id %lld", i, (long long)id);
			goto fail;
		}
		bool exists = false;
		ANN_CHECK(rc, live(w, t, id, &exists, err));
		if (exists) {
			if (!upsert) {
				rc = ann_err(err, ANN_E_EXISTS, "insert: id %lld (vector %zu) already exists; use upsert to "
					     "replace it", (long long)id, i);
				goto fail;
			}
			bool gone;
			ANN_CHECK(rc, delete_one(w, t, id, &gone, err));
		} else {
			added++;
		}
		ANN_CHECK(rc, to_delta(x, vectors + i * d, i, payload, err));
		uint8_t dk[ANN_DELTA_KEY];
		delta_key(dk, parts[i], id);
		ANN_CHECK(rc, ann_catalog_put(t, ANN_CAT_DELTA, dk, sizeof dk, payload, db, err));
		ANN_CHECK(rc, ann_catalog_idmap_put(t, (uint64_t)id, parts[i], err));
		if (ids_out)
			ids_out[i] = id;
		if ((uint64_t)id >= next)
			next = (uint64_t)id + 1;
	}
	ANN_CHECK(rc, ann_catalog_meta_put_u64(t, "index.next_id", next, err));
	ANN_CHECK(rc, ann_catalog_meta_put_u64(t, "index.live_vectors", w->live + added, err));
	ann_store_txn *c = txn;
	txn = NULL;
	ANN_CHECK(rc, writer_commit(w, c, "insert", err));
	w->next_id = next;
	w->live += added;
	rc = ANN_OK;
fail:
	if (txn)
		ann_store_abort(txn);
	ann_free(parts);
	ann_free(routed);
	ann_free(payload);
	return rc;
}

int ann_delete(ann_writer *w, const int64_t *ids, size_t n, uint64_t *deleted, ann_error *err)
{
	ann_store_txn *txn;
	uint64_t count = 0;
	if (deleted)
		*deleted = 0;
	ANN_TRY(writer_usable(w, err));
	ANN_TRY(ann_store_begin(w->x->store, &txn, err));
	ann_cat_txn *t = ann_store_txn_catalog(txn);
	int rc;
	for (size_t i = 0; i < n; i++) {
		bool done;
		ANN_CHECK(rc, delete_one(w, t, ids[i], &done, err));
		count += done;
	}
	ANN_CHECK(rc, ann_catalog_meta_put_u64(t, "index.live_vectors", w->live - count, err));
	rc = writer_commit(w, txn, "delete", err);
	if (rc < 0)
		return rc;
	w->live -= count;
	if (deleted)
		*deleted = count;
	return ANN_OK;
fail:
	ann_store_abort(txn);
	return rc;
}

/* ---- compaction ------------------------------------------------------------ */

typedef struct idset {
	int64_t *v; /* sorted */
	size_t n;
} idset;

static bool idset_has(const idset *s, int64_t id)
{
	size_t lo = 0, hi = s->n;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (s->v[mid] < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < s->n && s->v[lo] == id;
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return x < y ? -1 : x > y;
}

typedef struct collect {
	int64_t *ids;
	size_t n, cap;
	uint32_t *pids; /* for deltas: partition of each */
	uint8_t *vecs;  /* for deltas */
	size_t vbytes;
} collect;

static int collect_push(collect *c, int64_t id, uint32_t pid, const uint8_t *v, ann_error *err)
{
	if (c->n == c->cap) {
		size_t nc = c->cap ? 2 * c->cap : 1024;
		int64_t *a = ann_realloc(c->ids, nc * sizeof(int64_t));
		if (a)
			c->ids = a;
		uint32_t *b = ann_realloc(c->pids, nc * sizeof(uint32_t));
		if (b)
			c->pids = b;
		uint8_t *d = c->vbytes ? ann_realloc(c->vecs, nc * c->vbytes) : c->vecs;
		if (c->vbytes && d)
			c->vecs = d;
		if (!a || !b || (c->vbytes && !d))
			return ann_err(err, ANN_E_NOMEM, "compact: out of memory collecting %zu records", nc);
		c->cap = nc;
	}
	c->ids[c->n] = id;
	c->pids[c->n] = pid;
	if (c->vbytes && v)
		memcpy(c->vecs + c->n * c->vbytes, v, c->vbytes);
	c->n++;
	return ANN_OK;
}

static int tomb_each(void *ctx, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen, ann_error *err)
{
	(void)val;
	(void)vlen;
	if (klen != 8)
		return ann_err(err, ANN_E_CORRUPT, "tomb: key of %zu bytes, expected 8", klen);
	return collect_push(ctx, (int64_t)ann_ldbe64(key), 0, NULL, err);
}

static int delta_each(void *ctx, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen, ann_error *err)
{
	collect *c = ctx;
	if (klen != ANN_DELTA_KEY || vlen != c->vbytes)
		return ann_err(err, ANN_E_CORRUPT, "delta: record of %zu+%zu bytes, expected %u+%zu", klen, vlen,
			       ANN_DELTA_KEY, c->vbytes);
	return collect_push(c, (int64_t)ann_ldbe64(key + 4), ann_ldbe32(key), val, err);
}

/* Decoded rows of a codes block (format 2), kept between reads. */
typedef struct cscratch {
	int64_t *ids;
	uint8_t *rows;
	size_t ids_cap, rows_cap;
} cscratch;

/* Reads partition pid's block (decoded: format 1 through dec, codes blocks
 * into cs) through a fresh store reader. */
static int read_block(ann_index *x, ann_store_reader *rd, ann_block_dec *dec, cscratch *cs, uint32_t pid,
		      ann_block_view *view, ann_error *err)
{
	ANN_TRY(ann_store_reader_submit(rd, &pid, NULL, 1, err));
	ann_block_read br;
	int rc = ann_store_reader_next(rd, &br, err);
	if (rc <= 0)
		return rc < 0 ? rc : ann_err(err, ANN_E_IO, "compact: partition %u: no read completion", pid);
	rc = br.status;
	if (rc >= 0 && (br.ent.head || cblock_is(br.data, br.length))) {
		ann_cblock_info in;
		rc = cblock_decode(br.data, br.length, &in, &cs->ids, &cs->ids_cap, &cs->rows, &cs->rows_cap, err);
		if (rc >= 0 && (in.dim != x->meta.dim || in.encoding != ann_encoding_block(x->meta.encoding)))
			rc = ann_err(err, ANN_E_CORRUPT, "codes block of dimension %u, encoding %u; the index has %u, %u",
				     in.dim, (unsigned)in.encoding, x->meta.dim,
				     (unsigned)ann_encoding_block(x->meta.encoding));
		if (rc >= 0) {
			memset(view, 0, sizeof *view);
			view->info.count = in.count;
			view->info.dim = in.dim;
			view->info.partition = in.partition;
			view->ids = cs->ids;
			view->vectors = cs->rows;
		}
	} else if (rc >= 0) {
		rc = block_decode(dec, br.data, br.length, x->dict, view, err);
	}
	ann_store_reader_release(rd, &br);
	/* Drain (there is nothing else in flight). */
	while (ann_store_reader_next(rd, &br, NULL) > 0)
		ann_store_reader_release(rd, &br);
	if (rc < 0)
		ann_err_prefix(err, rc, "compact: partition %u", pid);
	return rc;
}

/* Splits the m vectors of partition p (nids, nvecs in the delta type) by
 * 2-means: on return the first *keep stay in p, the rest form the new
 * partition *q, whose centroid the router has learned. Inserted ids that
 * move get their idmap entry updated. */
static int split_partition(ann_writer *w, ann_cat_txn *t, uint32_t p, int64_t *nids, uint8_t *nvecs, size_t m,
			   size_t *keep, uint32_t *q, ann_error *err)
{
	ann_index *x = w->x;
	size_t d = x->meta.dim, db = ann_index_delta_bytes(x);
	ann_dtype dt = ann_index_delta_type(x);
	float *f = ann_malloc(m * d * sizeof(float));
	uint32_t *assign = ann_malloc(m * sizeof(uint32_t));
	/* The two centroids live on the heap: any dimension the index has can be
	 * split (a fixed 2 x 4096 stack array made d > 4096 "out of memory"). */
	float *cent = ann_malloc(2 * d * sizeof(float));
	int64_t *tid = ann_malloc(m * sizeof(int64_t));
	uint8_t *tv = ann_malloc(m * db);
	int rc = ANN_OK;
	if (!f || !assign || !cent || !tid || !tv) {
		rc = ann_err(err, ANN_E_NOMEM, "compact: out of memory splitting partition %u (%zu vectors of dimension %zu)",
			     p, m, d);
		goto out;
	}
	for (size_t i = 0; i < m * d; i++)
		f[i] = dt == ANN_DTYPE_U8   ? (float)nvecs[i]
		       : dt == ANN_DTYPE_I8 ? (float)(int8_t)nvecs[i]
					    : ((const float *)(const void *)nvecs)[i];
	ann_kmeans_opts ko;
	ann_kmeans_opts_init(&ko);
	ko.k = 2;
	ko.max_iter = 20;
	ko.seed = p + 1;
	ko.metric = x->meta.metric;
	ANN_CHECK(rc, ann_kmeans(f, m, d, &ko, cent, assign, NULL, err));
	size_t a = 0;
	for (size_t i = 0; i < m; i++)
		a += assign[i] == 0;
	if (a == 0 || a == m) { /* identical vectors: nothing to split */
		*keep = m;
		*q = UINT32_MAX;
		goto out;
	}
	ANN_CHECK(rc, x->router->ops->split(x->router, p, cent, cent + d, q, err));
	size_t i0 = 0, i1 = a;
	for (size_t i = 0; i < m; i++) {
		size_t o = assign[i] == 0 ? i0++ : i1++;
		tid[o] = nids[i];
		memcpy(tv + o * db, nvecs + i * db, db);
		if (assign[i] != 0) {
			uint32_t ip;
			rc = ann_catalog_idmap_get(t, (uint64_t)nids[i], &ip, err);
			if (rc == ANN_OK && ip == p)
				rc = ann_catalog_idmap_put(t, (uint64_t)nids[i], *q, err);
			if (rc < 0 && rc != ANN_E_NOTFOUND)
				goto fail;
			rc = ANN_OK;
		}
	}
	memcpy(nids, tid, m * sizeof(int64_t));
	memcpy(nvecs, tv, m * db);
	*keep = a;
fail:
out:
	ann_free(f);
	ann_free(assign);
	ann_free(cent);
	ann_free(tid);
	ann_free(tv);
	return rc;
}

/* Encodes a rewritten partition in the index's layout: a codes block when
 * the index has codes (so inserts, compaction and splits keep one layout),
 * else format 1 with bp. vecs are in the delta type. */
static int encode_part(ann_index *x, ann_block_enc *enc, const ann_block_params *bp, size_t n, const int64_t *ids,
		       const uint8_t *vecs, uint32_t pid, uint64_t gen, uint8_t **blk, size_t *len, uint32_t *head,
		       ann_error *err)
{
	*head = 0;
	if (x->rbq)
		return cblock_encode(x->rbq, bp->encoding, bp->pad,
				     cblock_opts(x->meta.code_f16, x->meta.code_order, cblock_head_page_default(),
						 cblock_cr_default(x->meta.metric)),
				     x->meta.dim, n, ids, vecs, ann_index_delta_type(x), pid, gen, blk, len, head, err);
	return block_encode(enc, bp, x->meta.dim, n, ids, vecs, ann_index_delta_type(x), pid, gen, blk, len, err);
}

int ann_compact(ann_writer *w, uint64_t split_limit, ann_compact_stats *stats, ann_error *err)
{
	ANN_TRY(writer_usable(w, err));
	ann_index *x = w->x;
	ann_compact_stats st;
	memset(&st, 0, sizeof st);
	uint64_t t0 = ann_now_ns();
	size_t d = x->meta.dim, db = ann_index_delta_bytes(x);
	ann_dtype dt = ann_index_delta_type(x);
	collect tombs = {0}, deltas = {0};
	deltas.vbytes = db;
	ann_store_reader *rd = NULL;
	ann_block_dec *dec = NULL;
	ann_block_enc *enc = NULL;
	cscratch cs = {0};
	ann_store_txn *txn = NULL;
	uint8_t *dirty = NULL, *blk = NULL;
	int64_t *nids = NULL;
	uint8_t *nvecs = NULL;
	/* A split changes the router in RAM before the commit (its new centroid
	 * is the partition the second block is written to): a compaction that
	 * fails after one reloads the committed router, whether or not the
	 * split itself finished. */
	bool router_touched = false;
	int rc;
	ANN_CHECK(rc, ann_store_begin(x->store, &txn, err));
	ann_cat_txn *t = ann_store_txn_catalog(txn);
	ANN_CHECK(rc, ann_catalog_foreach(t, ANN_CAT_TOMB, NULL, 0, tomb_each, &tombs, err));
	ANN_CHECK(rc, ann_catalog_foreach(t, ANN_CAT_DELTA, NULL, 0, delta_each, &deltas, err));
	if (tombs.n)
		qsort(tombs.ids, tombs.n, sizeof(int64_t), cmp_i64);
	idset dead = {tombs.ids, tombs.n};
	uint32_t np = x->dir.n;
	dirty = ann_calloc(np ? np : 1, 1);
	if (!dirty) {
		rc = ann_err(err, ANN_E_NOMEM, "compact: out of memory");
		goto fail;
	}
	for (size_t i = 0; i < deltas.n; i++)
		if (deltas.pids[i] < np)
			dirty[deltas.pids[i]] = 1;
	ann_store_reader_opts ro;
	ann_store_reader_opts_init(&ro);
	ANN_CHECK(rc, ann_store_reader_new(x->store, &ro, &rd, err));
	ANN_CHECK(rc, block_dec_new(0, &dec, err));
	ANN_CHECK(rc, block_enc_new(&enc, err));
	/* Partitions holding dead copies: found by reading the ids of every block. */
	if (dead.n) {
		for (uint32_t p = 0; p < np; p++) {
			if (x->dir.ents[p].kind == ANN_KIND_NONE || dirty[p])
				continue;
			ann_block_view v;
			ANN_CHECK(rc, read_block(x, rd, dec, &cs, p, &v, err));
			for (uint32_t i = 0; i < v.info.count && !dirty[p]; i++)
				if (idset_has(&dead, v.ids[i]))
					dirty[p] = 1;
		}
	}
	ann_block_params bp;
	uint64_t level = 3, shuffle = 0;
	ANN_CHECK(rc, meta_u64_or(t, "build.zstd_level", 3, &level, err));
	ANN_CHECK(rc, meta_u64_or(t, "build.shuffle", 0, &shuffle, err));
	/* rewritten blocks do not use the build's dictionary */
	ann_index_block_params(x->meta.encoding, x->meta.store, (int)level, ann_shuffle_from_meta(shuffle), &bp);
	if (!split_limit)
		split_limit = 4 * (x->meta.stored_vectors / (x->dir.count ? x->dir.count : 1) + 1);
	uint64_t stored = x->meta.stored_vectors;
	for (uint32_t p = 0; p < np; p++) {
		if (!dirty[p] || x->dir.ents[p].kind == ANN_KIND_NONE)
			continue;
		ann_block_view v;
		ANN_CHECK(rc, read_block(x, rd, dec, &cs, p, &v, err));
		size_t nd = 0;
		for (size_t i = 0; i < deltas.n; i++)
			nd += deltas.pids[i] == p;
		size_t cap = v.info.count + nd;
		ann_free(nids);
		ann_free(nvecs);
		nids = ann_malloc((cap ? cap : 1) * sizeof(int64_t));
		nvecs = ann_malloc((cap ? cap : 1) * db);
		if (!nids || !nvecs) {
			rc = ann_err(err, ANN_E_NOMEM, "compact: out of memory for partition %u (%zu vectors)", p, cap);
			goto fail;
		}
		/* Live block copies: decoded vectors come back in the delta type,
		 * except f16/sq8 which decode to float (the delta type too). */
		size_t m = 0;
		size_t esz = db / d;
		for (uint32_t i = 0; i < v.info.count; i++) {
			if (idset_has(&dead, v.ids[i])) {
				st.tombstones_applied++;
				continue;
			}
			nids[m] = v.ids[i];
			memcpy(nvecs + m * db, (const uint8_t *)v.vectors + (size_t)i * d * esz, db);
			m++;
		}
		for (size_t i = 0; i < deltas.n; i++) {
			if (deltas.pids[i] != p)
				continue;
			nids[m] = deltas.ids[i];
			if (dt == ANN_DTYPE_F32)
				for (size_t j = 0; j < d; j++)
					((float *)(void *)(nvecs + m * db))[j] = ann_ldf32(deltas.vecs + i * db + 4 * j);
			else
				memcpy(nvecs + m * db, deltas.vecs + i * db, db);
			m++;
			st.deltas_merged++;
			uint8_t dk[ANN_DELTA_KEY];
			delta_key(dk, p, deltas.ids[i]);
			ANN_CHECK(rc, ann_catalog_del(t, ANN_CAT_DELTA, dk, sizeof dk, err));
		}
		stored = stored - v.info.count + m;
		size_t keep = m;
		uint32_t q = UINT32_MAX;
		if (m > split_limit && m >= 4 && x->router->ops->split) {
			router_touched = true;
			ANN_CHECK(rc, split_partition(w, t, p, nids, nvecs, m, &keep, &q, err));
		}
		size_t len = 0;
		uint32_t head = 0;
		ANN_CHECK(rc, encode_part(x, enc, &bp, keep, nids, nvecs, p, (uint64_t)x->dir.ents[p].generation + 1, &blk,
					  &len, &head, err));
		ann_block_put put = {p, (uint32_t)keep, blk, len, head};
		ANN_CHECK(rc, ann_store_put_blocks(txn, &put, 1, NULL, err));
		ann_aligned_free(blk);
		blk = NULL;
		st.partitions_rewritten++;
		st.bytes_written += len;
		st.bytes_freed += x->dir.ents[p].length;
		if (q != UINT32_MAX) {
			ANN_CHECK(rc, encode_part(x, enc, &bp, m - keep, nids + keep, nvecs + keep * db, q, 1, &blk, &len,
						  &head, err));
			ann_block_put put2 = {q, (uint32_t)(m - keep), blk, len, head};
			ANN_CHECK(rc, ann_store_put_blocks(txn, &put2, 1, NULL, err));
			ann_aligned_free(blk);
			blk = NULL;
			st.partitions_split++;
			st.bytes_written += len;
		}
	}
	/* Every tomb has been applied: clear them. A build id without an idmap
	 * entry would read as live once its tomb is gone: mark it gone. */
	for (size_t i = 0; i < tombs.n; i++) {
		uint8_t k[8];
		id_key(k, tombs.ids[i]);
		ANN_CHECK(rc, ann_catalog_del(t, ANN_CAT_TOMB, k, sizeof k, err));
		if (tombs.ids[i] < 0 || (uint64_t)tombs.ids[i] >= x->meta.vectors)
			continue;
		uint32_t pid;
		rc = ann_catalog_idmap_get(t, (uint64_t)tombs.ids[i], &pid, err);
		if (rc == ANN_E_NOTFOUND)
			rc = ann_catalog_idmap_put(t, (uint64_t)tombs.ids[i], ANN_IDMAP_GONE, err);
		if (rc < 0)
			goto fail;
	}
	st.seconds = (double)(ann_now_ns() - t0) / 1e9;
	uint64_t ncompact;
	ANN_CHECK(rc, meta_u64_or(t, "compact.count", 0, &ncompact, err));
	ANN_CHECK(rc, ann_catalog_meta_put_u64(t, "compact.count", ncompact + 1, err));
	char summary[256];
	snprintf(summary, sizeof summary,
		 "{\"partitions_rewritten\":%u,\"partitions_split\":%u,\"deltas_merged\":%llu,"
		 "\"tombstones_applied\":%llu,\"bytes_written\":%llu,\"seconds\":%.3f}",
		 st.partitions_rewritten, st.partitions_split, (unsigned long long)st.deltas_merged,
		 (unsigned long long)st.tombstones_applied, (unsigned long long)st.bytes_written, st.seconds);
	ANN_CHECK(rc, ann_catalog_meta_put_str(t, "compact.last", summary, err));
	ANN_CHECK(rc, ann_catalog_meta_put_u64(t, "index.stored_vectors", stored, err));
	if (st.partitions_split) {
		uint8_t *blob = NULL;
		size_t blen = 0;
		ANN_CHECK(rc, x->router->ops->save(x->router, &blob, &blen, err));
		rc = ann_catalog_model_put(t, "router", blob, blen, err);
		ann_free(blob);
		if (rc < 0)
			goto fail;
		ANN_CHECK(rc, ann_catalog_meta_put_u64(t, "index.partitions", x->router->nparts, err));
	}
	/* Directions of rewritten partitions are stale until the refit below
	 * commits; a mark already there (an earlier refit that did not happen)
	 * makes that refit a full one. */
	uint64_t was_stale = 0;
	if (x->dirs.m)
		ANN_CHECK(rc, meta_u64_or(t, ANN_DIRS_STALE_META, 0, &was_stale, err));
	/* A mark left by an earlier compaction is repaired by this one, even
	 * when it has nothing else to rewrite. */
	bool dirs_stale = x->dirs.m && (st.partitions_rewritten || was_stale);
	if (dirs_stale)
		ANN_CHECK(rc, ann_catalog_meta_put_u64(t, ANN_DIRS_STALE_META, 1, err));
	ann_store_txn *c = txn;
	txn = NULL;
	ANN_CHECK(rc, writer_commit(w, c, "compaction", err));
	x->meta.stored_vectors = stored;
	rc = ann_index_reload(x, err);
	if (rc < 0) {
		w->failed = true; /* committed, but x holds neither the old index nor the new one */
		ann_err_prefix(err, rc, "%s: compaction committed; reloading it", x->path);
		goto fail;
	}
	/* The rewritten partitions have other rows, and the new ones (splits)
	 * no directions: refit those, reading only their blocks; the others
	 * keep theirs. The compaction has committed; a refit that fails leaves
	 * the old directions (stale for the rewritten partitions, none for the
	 * new ones, which annann info reports as short of the partitions), and
	 * directions_refit 0 says so. */
	if (dirs_stale && x->dirs.m) {
		uint32_t nr = 0;
		for (uint32_t p = 0; p < x->dir.n; p++)
			nr += (was_stale || p >= np || dirty[p] || p >= x->dirs.nparts) &&
			      x->dir.ents[p].kind != ANN_KIND_NONE;
		if (ann_dirs_fit(x, x->dirs.m, was_stale ? NULL : dirty, np, NULL, NULL, NULL, NULL) >= 0)
			st.directions_refit = nr;
	}
	if (stats)
		*stats = st;
	rc = ANN_OK;
fail:
	if (txn)
		ann_store_abort(txn);
	if (router_touched && rc < 0 && !w->failed && ann_index_reload(x, NULL) < 0)
		w->failed = true; /* dropping the uncommitted splits from the router in RAM failed: x is empty */
	ann_store_reader_free(rd);
	block_dec_free(dec);
	block_enc_free(enc);
	ann_free(cs.ids);
	ann_free(cs.rows);
	ann_aligned_free(blk);
	ann_free(dirty);
	ann_free(nids);
	ann_free(nvecs);
	ann_free(tombs.ids);
	ann_free(tombs.pids);
	ann_free(deltas.ids);
	ann_free(deltas.pids);
	ann_free(deltas.vecs);
	return rc;
}
