/* SPDX-License-Identifier: MIT */
/*
 * store_lmdb.c: the LMDB block store. Blocks are values of the `blocks` DBI
 * of catalog.lmdb keyed by big-endian partition id, written in the same txn
 * as their directory entries (so publication is one atomic, durable commit)
 * and read zero-copy through the map inside a read txn. Block lengths are
 * 4096*k - 16 so an overflow value fills whole LMDB pages (16-byte page
 * header). One back end of the store layer (store.c, through the ops of
 * store_impl.h), as store_file.c is the other. Format: docs/FORMAT.md.
 */
#include "store_impl.h"

#include <stdio.h>
#include <xxhash.h>

struct lmdb_store {
	uint64_t puts;        /* blocks written by this handle */
	uint64_t write_bytes; /* their bytes */
};

static int lm_open(ann_store *s, const ann_store_opts *o, ann_cat_txn *create_txn, ann_error *err)
{
	(void)o;
	(void)create_txn;
	struct lmdb_store *l = ann_calloc(1, sizeof *l);
	if (!l)
		return ann_err(err, ANN_E_NOMEM, "%s: out of memory opening the LMDB store", ann_store_dir_path(s));
	ann_store_set_impl(s, l);
	return ANN_OK;
}

static void lm_close(ann_store *s)
{
	ann_free(ann_store_impl(s));
	ann_store_set_impl(s, NULL);
}

static int lm_begin(ann_store_txn *t, ann_error *err)
{
	(void)t;
	(void)err;
	return ANN_OK;
}

/* The old value of a rewritten block is replaced inside the txn; older read
 * txns keep seeing it through LMDB's copy-on-write pages until they end. */
static int lm_put(ann_store_txn *t, const ann_block_put *puts, size_t n, ann_dirent *ents, const ann_dirent *olds,
		  ann_error *err)
{
	(void)olds;
	struct lmdb_store *l = ann_store_impl(ann_store_txn_store(t));
	ann_cat_txn *ct = ann_store_txn_catalog(t);
	for (size_t i = 0; i < n; i++) {
		ANN_TRY(ann_catalog_block_put(ct, puts[i].pid, puts[i].data, puts[i].length, err));
		ents[i].offset = 0;
		l->puts++;
		l->write_bytes += puts[i].length;
	}
	return ANN_OK;
}

static int lm_drop(ann_store_txn *t, uint32_t pid, const ann_dirent *old, ann_error *err)
{
	(void)old;
	int rc = ann_catalog_block_del(ann_store_txn_catalog(t), pid, err);
	return rc == ANN_E_NOTFOUND ? ANN_OK : rc;
}

static int lm_precommit(ann_store_txn *t, ann_error *err)
{
	(void)t;
	(void)err;
	return ANN_OK;
}

static void lm_postcommit(ann_store_txn *t, bool committed)
{
	(void)t;
	(void)committed;
}

static int lm_space(ann_store *s, ann_store_space *sp, ann_error *err)
{
	(void)err;
	struct lmdb_store *l = ann_store_impl(s);
	sp->file_bytes = sp->cat.file_bytes;
	sp->disk_bytes = sp->cat.disk_bytes;
	sp->writes = l->puts;
	sp->write_bytes = l->write_bytes;
	return ANN_OK;
}

struct orphan_ctx {
	const ann_dir *d;
	ann_issue_fn fn;
	void *ctx;
	const char *path;
};

static int orphan_each(void *ctx, uint32_t pid, const uint8_t *buf, size_t n, ann_error *err)
{
	(void)buf;
	(void)err;
	struct orphan_ctx *oc = ctx;
	if (pid < oc->d->n && oc->d->ents[pid].kind)
		return 0;
	char msg[256];
	if (pid == UINT32_MAX)
		snprintf(msg, sizeof msg, "%s: blocks: a key that is not a 4-byte partition id (%zu-byte value)",
			 oc->path, n);
	else
		snprintf(msg, sizeof msg, "%s: blocks partition %u (%zu bytes) has no directory entry", oc->path, pid, n);
	ann_issue is = { ANN_ISSUE_ORPHAN, true, pid == UINT32_MAX ? -1 : (int64_t)pid, "blocks", msg };
	oc->fn(oc->ctx, &is);
	return 0;
}

static int lm_verify(ann_store *s, ann_cat_txn *rt, const ann_dir *d, ann_issue_fn fn, void *ctx,
		     ann_verify_stats *st, ann_error *err)
{
	const char *path = ann_catalog_path(ann_store_catalog(s));
	char msg[512];
	for (uint32_t pid = 0; pid < d->n; pid++) {
		const ann_dirent *e = &d->ents[pid];
		if (!e->kind)
			continue;
		st->partitions++;
		ann_issue is = { ANN_ISSUE_EXTENT, false, pid, NULL, msg };
		if (e->kind != ANN_KIND_LMDB) {
			snprintf(msg, sizeof msg, "%s: parts partition %u: store kind %u in an LMDB store", path, pid,
				 e->kind);
			fn(ctx, &is);
			continue;
		}
		const uint8_t *p = NULL;
		size_t n = 0;
		ann_error e2 = { 0 };
		int rc = ann_catalog_block_get(rt, pid, &p, &n, &e2);
		if (rc == ANN_E_NOTFOUND) {
			is.kind = ANN_ISSUE_READ;
			snprintf(msg, sizeof msg, "%s: partition %u: directory entry without block", path, pid);
			fn(ctx, &is);
			continue;
		}
		if (rc < 0) {
			if (err)
				*err = e2;
			return rc;
		}
		if (n != e->length) {
			snprintf(msg, sizeof msg, "%s: partition %u: block of %zu bytes, directory says %u", path, pid, n,
				 e->length);
			fn(ctx, &is);
			continue;
		}
		st->bytes += n;
		uint64_t sum = XXH64(p, n, 0);
		if (sum != e->checksum) {
			is.kind = ANN_ISSUE_CHECKSUM;
			snprintf(msg, sizeof msg,
				 "%s: blocks partition %u (%zu bytes): block checksum %016llx, directory says %016llx", path,
				 pid, n, (unsigned long long)sum, (unsigned long long)e->checksum);
			fn(ctx, &is);
		}
	}
	struct orphan_ctx oc = { d, fn, ctx, path };
	return ann_catalog_block_foreach(rt, orphan_each, &oc, err);
}

const ann_store_ops ann_store_lmdb_ops = {
	.kind = ANN_STORE_LMDB,
	.name = "lmdb",
	.data_file = NULL, /* blocks are read from the catalog snapshot */
	.open = lm_open,
	.close = lm_close,
	.begin = lm_begin,
	.put = lm_put,
	.drop = lm_drop,
	.precommit = lm_precommit,
	.postcommit = lm_postcommit,
	.space = lm_space,
	.verify = lm_verify,
};
