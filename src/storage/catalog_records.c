/* SPDX-License-Identifier: MIT */
/*
 * catalog_records.c: the typed records of the catalog (catalog.h) on top of
 * its checked values (catalog.c): typed meta, the partition directory and
 * its loading into RAM, models, the id map and the free extents of the file
 * store. Each encodes and decodes one value layout of docs/FORMAT.md
 * "catalog.lmdb" and stores it through catalog.c's checked put, get and
 * foreach; only the directory load reads LMDB itself (its last key sizes
 * the RAM directory).
 */
#include "catalog_impl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

/* ---- meta ---------------------------------------------------------------------------- */

static int meta_put(ann_cat_txn *t, const char *name, ann_meta_type type, const void *p, size_t n,
		    ann_error *err)
{
	size_t klen = strlen(name);
	uint8_t small[1 + 64];
	uint8_t *buf = small;
	if (n + 1 > sizeof small) {
		buf = ann_malloc(n + 1);
		if (!buf)
			return ann_err(err, ANN_E_NOMEM, "meta '%s': out of memory", name);
	}
	buf[0] = (uint8_t)type;
	if (n)
		memcpy(buf + 1, p, n);
	int rc = ann_catalog_put(t, ANN_CAT_META, name, klen, buf, n + 1, err);
	if (buf != small)
		ann_free(buf);
	return rc;
}

static int meta_get(ann_cat_txn *t, const char *name, ann_meta_type type, const uint8_t **p, size_t *n,
		    ann_error *err)
{
	static const char *const tnames[] = { "?", "u64", "f64", "string", "blob" };
	const uint8_t *v = NULL;
	size_t vlen = 0;
	ANN_TRY(ann_catalog_get(t, ANN_CAT_META, name, strlen(name), &v, &vlen, err));
	if (vlen < 1 || v[0] != type || ((type == ANN_META_U64 || type == ANN_META_F64) && vlen != 9))
		return ann_err(err, ANN_E_CORRUPT, "%s: meta '%s' holds %s of %zu bytes, expected %s", t->c->path,
			       name, vlen >= 1 && v[0] >= 1 && v[0] <= 4 ? tnames[v[0]] : "an unknown type",
			       vlen ? vlen - 1 : 0, tnames[type]);
	*p = v + 1;
	*n = vlen - 1;
	return ANN_OK;
}

int ann_catalog_meta_put_u64(ann_cat_txn *t, const char *name, uint64_t v, ann_error *err)
{
	uint8_t b[8];
	ann_st64(b, v);
	return meta_put(t, name, ANN_META_U64, b, 8, err);
}

int ann_catalog_meta_put_f64(ann_cat_txn *t, const char *name, double v, ann_error *err)
{
	uint64_t bits;
	memcpy(&bits, &v, 8);
	uint8_t b[8];
	ann_st64(b, bits);
	return meta_put(t, name, ANN_META_F64, b, 8, err);
}

int ann_catalog_meta_put_str(ann_cat_txn *t, const char *name, const char *s, ann_error *err)
{
	return meta_put(t, name, ANN_META_STR, s, strlen(s), err);
}

int ann_catalog_meta_put_blob(ann_cat_txn *t, const char *name, const void *p, size_t n, ann_error *err)
{
	return meta_put(t, name, ANN_META_BLOB, p, n, err);
}

int ann_catalog_meta_get_u64(ann_cat_txn *t, const char *name, uint64_t *v, ann_error *err)
{
	const uint8_t *p = NULL;
	size_t n = 0;
	ANN_TRY(meta_get(t, name, ANN_META_U64, &p, &n, err));
	*v = ann_ld64(p);
	return ANN_OK;
}

int ann_catalog_meta_get_f64(ann_cat_txn *t, const char *name, double *v, ann_error *err)
{
	const uint8_t *p = NULL;
	size_t n = 0;
	ANN_TRY(meta_get(t, name, ANN_META_F64, &p, &n, err));
	uint64_t bits = ann_ld64(p);
	memcpy(v, &bits, 8);
	return ANN_OK;
}

int ann_catalog_meta_get_str(ann_cat_txn *t, const char *name, char *buf, size_t cap, ann_error *err)
{
	const uint8_t *p = NULL;
	size_t n = 0;
	ANN_TRY(meta_get(t, name, ANN_META_STR, &p, &n, err));
	if (n + 1 > cap)
		return ann_err(err, ANN_E_INVAL, "meta '%s': string of %zu bytes, buffer holds %zu", name, n,
			       cap ? cap - 1 : 0);
	memcpy(buf, p, n);
	buf[n] = '\0';
	return ANN_OK;
}

int ann_catalog_meta_get_blob(ann_cat_txn *t, const char *name, const uint8_t **p, size_t *n, ann_error *err)
{
	return meta_get(t, name, ANN_META_BLOB, p, n, err);
}

int ann_catalog_meta_del(ann_cat_txn *t, const char *name, ann_error *err)
{
	return ann_catalog_del(t, ANN_CAT_META, name, strlen(name), err);
}

/* ---- partition directory ------------------------------------------------------------ */

#define PARTS_ENTRY_VERSION 1
#define PARTS_ENTRY_VERSION_HEAD 2 /* + head length of a codes block */

/* The spread as bfloat16 (the high half of the binary32, rounded to nearest
 * even; a value that would round to infinity keeps the largest finite one):
 * 8 bits of precision are plenty for an order. 0 (and anything not positive
 * and finite) is 0, "not known". */
static uint16_t spread_bf16(float v)
{
	if (!(v > 0.0f) || !isfinite(v))
		return 0;
	uint32_t b;
	memcpy(&b, &v, 4);
	b += 0x7FFFu + ((b >> 16) & 1u);
	uint16_t h = (uint16_t)(b >> 16);
	return (h & 0x7F80u) == 0x7F80u ? 0x7F7Fu : h;
}

static float spread_f32(uint16_t h)
{
	uint32_t b = (uint32_t)h << 16;
	float v;
	memcpy(&v, &b, 4);
	return v;
}

float ann_catalog_spread_stored(float v)
{
	return spread_f32(spread_bf16(v));
}

static void part_encode_common(uint8_t *out, const ann_dirent *e, uint8_t version)
{
	out[0] = version;
	out[1] = e->kind;
	ann_st16(out + 2, spread_bf16(e->spread));
	ann_st32(out + 4, e->generation);
	ann_st64(out + 8, e->offset);
	ann_st32(out + 16, e->length);
	ann_st32(out + 20, e->count);
	ann_st64(out + 24, e->checksum);
}

void ann_catalog_part_encode(uint8_t out[ANN_PARTS_VALUE_BYTES], const ann_dirent *e)
{
	memset(out, 0, ANN_PARTS_VALUE_BYTES);
	part_encode_common(out, e, PARTS_ENTRY_VERSION);
}

int ann_catalog_part_encode_any(uint8_t out[ANN_PARTS_VALUE_BYTES], const ann_dirent *e, ann_error *err)
{
	memset(out, 0, ANN_PARTS_VALUE_BYTES);
	if (!e->head) {
		part_encode_common(out, e, PARTS_ENTRY_VERSION);
		return ANN_OK;
	}
	/* Version 2: the offset in 4 KiB units makes room for the head length in
	 * the same 32 bytes, so an older reader meets the version byte first. */
	if (e->offset % 4096 || e->offset / 4096 > UINT32_MAX)
		return ann_err(err, ANN_E_UNSUPPORTED, "parts: a codes block at offset %llu (must be 4096-aligned, "
			       "below 16 TiB)", (unsigned long long)e->offset);
	out[0] = PARTS_ENTRY_VERSION_HEAD;
	out[1] = e->kind;
	ann_st16(out + 2, spread_bf16(e->spread));
	ann_st32(out + 4, e->generation);
	ann_st32(out + 8, (uint32_t)(e->offset / 4096));
	ann_st32(out + 12, e->head);
	ann_st32(out + 16, e->length);
	ann_st32(out + 20, e->count);
	ann_st64(out + 24, e->checksum);
	return ANN_OK;
}

int ann_catalog_part_decode(const uint8_t *p, size_t n, uint32_t pid, ann_dirent *e, ann_error *err)
{
	if (n != ANN_PARTS_VALUE_BYTES)
		return ann_err(err, ANN_E_CORRUPT, "parts partition %u: entry of %zu bytes, %u expected", pid, n,
			       ANN_PARTS_VALUE_BYTES);
	if (p[0] != PARTS_ENTRY_VERSION && p[0] != PARTS_ENTRY_VERSION_HEAD)
		return ann_err(err, ANN_E_FORMAT, "parts partition %u: entry version %u, this build reads %u and %u", pid,
			       p[0], PARTS_ENTRY_VERSION, PARTS_ENTRY_VERSION_HEAD);
	memset(e, 0, sizeof *e);
	e->kind = p[1];
	e->generation = ann_ld32(p + 4);
	e->length = ann_ld32(p + 16);
	e->count = ann_ld32(p + 20);
	e->checksum = ann_ld64(p + 24);
	e->spread = spread_f32(ann_ld16(p + 2));
	if (!(e->spread >= 0.0f) || !isfinite(e->spread))
		return ann_err(err, ANN_E_CORRUPT, "parts partition %u: spread 0x%04x, expected a finite value >= 0", pid,
			       ann_ld16(p + 2));
	if (p[0] == PARTS_ENTRY_VERSION_HEAD) {
		e->offset = (uint64_t)ann_ld32(p + 8) * 4096;
		e->head = ann_ld32(p + 12);
		if (e->head == 0 || e->head > e->length)
			return ann_err(err, ANN_E_CORRUPT, "parts partition %u: head of %u bytes in a block of %u", pid,
				       e->head, e->length);
	} else {
		e->offset = ann_ld64(p + 8);
	}
	if (e->kind != ANN_KIND_FILE && e->kind != ANN_KIND_LMDB)
		return ann_err(err, ANN_E_CORRUPT, "parts partition %u: store kind %u, expected 1 (file) or 2 (lmdb)",
			       pid, e->kind);
	if (e->length == 0)
		return ann_err(err, ANN_E_CORRUPT, "parts partition %u: empty block", pid);
	return ANN_OK;
}

int ann_catalog_part_put(ann_cat_txn *t, uint32_t pid, const ann_dirent *e, ann_error *err)
{
	uint8_t k[4], v[ANN_PARTS_VALUE_BYTES];
	ann_stbe32(k, pid);
	ANN_TRY(ann_catalog_part_encode_any(v, e, err));
	return ann_catalog_put(t, ANN_CAT_PARTS, k, 4, v, sizeof v, err);
}

int ann_catalog_part_get(ann_cat_txn *t, uint32_t pid, ann_dirent *e, ann_error *err)
{
	uint8_t k[4];
	ann_stbe32(k, pid);
	const uint8_t *v = NULL;
	size_t n = 0;
	ANN_TRY(ann_catalog_get(t, ANN_CAT_PARTS, k, 4, &v, &n, err));
	int rc = ann_catalog_part_decode(v, n, pid, e, err);
	if (rc < 0)
		return ann_err_prefix(err, rc, "%s", t->c->path);
	return ANN_OK;
}

int ann_catalog_part_del(ann_cat_txn *t, uint32_t pid, ann_error *err)
{
	uint8_t k[4];
	ann_stbe32(k, pid);
	return ann_catalog_del(t, ANN_CAT_PARTS, k, 4, err);
}

struct dir_ctx {
	ann_dir *d;
	const char *path;
	bool skip_bad;
};

static int dir_each(void *ctx, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen, ann_error *err)
{
	struct dir_ctx *dc = ctx;
	if (klen != 4) {
		if (dc->skip_bad)
			return 0;
		return ann_err(err, ANN_E_CORRUPT, "%s: parts key of %zu bytes, 4 expected", dc->path, klen);
	}
	uint32_t pid = ann_ldbe32(key);
	if (pid >= dc->d->n)
		return ann_err(err, ANN_E_CORRUPT, "%s: parts partition %u appeared during the scan", dc->path, pid);
	ann_error e2;
	int rc = ann_catalog_part_decode(val, vlen, pid, &dc->d->ents[pid], dc->skip_bad ? &e2 : err);
	if (rc < 0) {
		memset(&dc->d->ents[pid], 0, sizeof dc->d->ents[pid]);
		if (dc->skip_bad)
			return 0;
		return ann_err_prefix(err, rc, "%s", dc->path);
	}
	dc->d->count++;
	return 0;
}

static int dir_load(ann_cat_txn *t, ann_dir *d, bool skip_bad, ann_error *err)
{
	memset(d, 0, sizeof *d);
	ANN_TRY(ann_cat_txn_usable(t, false, err));
	uint64_t count = 0;
	ANN_TRY(ann_catalog_count(t, ANN_CAT_PARTS, &count, err));
	d->txnid = ann_catalog_txn_id(t);
	if (count == 0)
		return ANN_OK;
	MDB_cursor *cur;
	int mrc = mdb_cursor_open(t->txn, t->c->dbi[ANN_CAT_PARTS], &cur);
	if (mrc)
		return ann_cat_mdb_fail(t->c, err, mrc, "open cursor", ANN_CAT_PARTS, NULL, 0);
	MDB_val k, v;
	uint64_t n = 0;
	/* The largest well-formed key (a skipping load steps over bad last keys). */
	mrc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
	while (mrc == 0 && k.mv_size != 4 && skip_bad)
		mrc = mdb_cursor_get(cur, &k, &v, MDB_PREV);
	mdb_cursor_close(cur);
	if (mrc == MDB_NOTFOUND && skip_bad)
		return ANN_OK;
	if (mrc)
		return ann_cat_mdb_fail(t->c, err, mrc, "last key", ANN_CAT_PARTS, NULL, 0);
	if (k.mv_size != 4)
		return ann_err(err, ANN_E_CORRUPT, "%s: parts key of %zu bytes, 4 expected", t->c->path, k.mv_size);
	n = (uint64_t)ann_ldbe32(k.mv_data) + 1;
	if (n > 4 * count + (1u << 20))
		return ann_err(err, ANN_E_UNSUPPORTED,
			       "%s: partition ids too sparse for the RAM directory (max id %llu, %llu partitions)",
			       t->c->path, (unsigned long long)(n - 1), (unsigned long long)count);
	d->ents = ann_calloc((size_t)n, sizeof *d->ents);
	if (!d->ents)
		return ann_err(err, ANN_E_NOMEM, "%s: directory of %llu entries: out of memory", t->c->path,
			       (unsigned long long)n);
	d->n = (uint32_t)n;
	struct dir_ctx dc = { d, t->c->path, skip_bad };
	int rc = ann_cat_foreach(t, ANN_CAT_PARTS, NULL, 0, dir_each, &dc, skip_bad, err);
	if (rc < 0) {
		ann_catalog_dir_free(d);
		return rc;
	}
	return ANN_OK;
}

int ann_catalog_dir_load(ann_cat_txn *t, ann_dir *d, ann_error *err)
{
	return dir_load(t, d, false, err);
}

int ann_catalog_dir_load_valid(ann_cat_txn *t, ann_dir *d, ann_error *err)
{
	return dir_load(t, d, true, err);
}

void ann_catalog_dir_free(ann_dir *d)
{
	if (!d)
		return;
	ann_free(d->ents);
	memset(d, 0, sizeof *d);
}

/* ---- models, id map ----------------------------------------------------------------- */

int ann_catalog_model_put(ann_cat_txn *t, const char *name, const void *blob, size_t n, ann_error *err)
{
	return ann_catalog_put(t, ANN_CAT_MODELS, name, strlen(name), blob, n, err);
}

int ann_catalog_model_get(ann_cat_txn *t, const char *name, const uint8_t **blob, size_t *n, ann_error *err)
{
	return ann_catalog_get(t, ANN_CAT_MODELS, name, strlen(name), blob, n, err);
}

int ann_catalog_idmap_put(ann_cat_txn *t, uint64_t id, uint32_t pid, ann_error *err)
{
	uint8_t k[8], v[4];
	ann_stbe64(k, id);
	ann_st32(v, pid);
	return ann_catalog_put(t, ANN_CAT_IDMAP, k, 8, v, 4, err);
}

int ann_catalog_idmap_get(ann_cat_txn *t, uint64_t id, uint32_t *pid, ann_error *err)
{
	uint8_t k[8];
	ann_stbe64(k, id);
	const uint8_t *v = NULL;
	size_t n = 0;
	ANN_TRY(ann_catalog_get(t, ANN_CAT_IDMAP, k, 8, &v, &n, err));
	if (n != 4)
		return ann_err(err, ANN_E_CORRUPT, "%s: idmap id %llu: value of %zu bytes, 4 expected", t->c->path,
			       (unsigned long long)id, n);
	*pid = ann_ld32(v);
	return ANN_OK;
}

int ann_catalog_idmap_del(ann_cat_txn *t, uint64_t id, ann_error *err)
{
	uint8_t k[8];
	ann_stbe64(k, id);
	return ann_catalog_del(t, ANN_CAT_IDMAP, k, 8, err);
}

/* ---- free extents --------------------------------------------------------------------- */

int ann_cat_free_decode(const ann_catalog *c, const uint8_t *k, size_t klen, const uint8_t *v, size_t n,
		       ann_extent *x, ann_error *err)
{
	if (klen != 8 || n != 16)
		return ann_err(err, ANN_E_CORRUPT, "%s: free entry with %zu-byte key and %zu-byte value, 8 and 16 expected",
			       c->path, klen, n);
	x->offset = ann_ldbe64(k);
	x->length = ann_ld64(v);
	x->freed_tx = ann_ld64(v + 8);
	if (x->offset % ANN_PAGE || x->length % ANN_PAGE || x->length == 0 || x->offset < ANN_PAGE ||
	    x->offset + x->length < x->offset)
		return ann_err(err, ANN_E_CORRUPT, "%s: free extent at offset %llu length %llu: not 4096-aligned",
			       c->path, (unsigned long long)x->offset, (unsigned long long)x->length);
	return ANN_OK;
}

int ann_catalog_free_put(ann_cat_txn *t, const ann_extent *x, ann_error *err)
{
	uint8_t k[8], v[16];
	ann_stbe64(k, x->offset);
	ann_st64(v, x->length);
	ann_st64(v + 8, x->freed_tx);
	return ann_catalog_put(t, ANN_CAT_FREE, k, 8, v, 16, err);
}

int ann_catalog_free_del(ann_cat_txn *t, uint64_t offset, ann_error *err)
{
	uint8_t k[8];
	ann_stbe64(k, offset);
	return ann_catalog_del(t, ANN_CAT_FREE, k, 8, err);
}

struct free_ctx {
	const ann_catalog *c;
	ann_extent *xs;
	size_t n, cap;
	bool skip_bad;
};

static int free_each(void *ctx, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen, ann_error *err)
{
	struct free_ctx *fc = ctx;
	if (fc->n == fc->cap) {
		size_t cap = fc->cap ? fc->cap * 2 : 64;
		ann_extent *p = ann_realloc(fc->xs, cap * sizeof *p);
		if (!p)
			return ann_err(err, ANN_E_NOMEM, "%s: free list: out of memory", fc->c->path);
		fc->xs = p;
		fc->cap = cap;
	}
	ann_error e2;
	int rc = ann_cat_free_decode(fc->c, key, klen, val, vlen, &fc->xs[fc->n], fc->skip_bad ? &e2 : err);
	if (rc < 0)
		return fc->skip_bad ? 0 : rc;
	fc->n++;
	return 0;
}

static int free_load(ann_cat_txn *t, ann_extent **xs, size_t *n, bool skip_bad, ann_error *err)
{
	struct free_ctx fc = { t->c, NULL, 0, 0, skip_bad };
	int rc = ann_cat_foreach(t, ANN_CAT_FREE, NULL, 0, free_each, &fc, skip_bad, err);
	if (rc < 0) {
		ann_free(fc.xs);
		return rc;
	}
	*xs = fc.xs;
	*n = fc.n;
	return ANN_OK;
}

int ann_catalog_free_load(ann_cat_txn *t, ann_extent **xs, size_t *n, ann_error *err)
{
	return free_load(t, xs, n, false, err);
}

int ann_catalog_free_load_valid(ann_cat_txn *t, ann_extent **xs, size_t *n, ann_error *err)
{
	return free_load(t, xs, n, true, err);
}

