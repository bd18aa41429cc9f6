/* SPDX-License-Identifier: MIT */
/*
 * store.c: the generic block-store layer (store.h): opening an index
 * directory (writer lock, catalog, the back end named by meta 'store.kind'),
 * store txns, the RAM directory, batched block readers, verification and
 * space figures. What differs between blocks.dat and LMDB sits behind the
 * ops table of store_impl.h (store_file.c, store_lmdb.c); the publication
 * protocol is stated atop store_file.c (block side) and catalog.c.
 *
 * Invariants:
 *  - The RAM directory d mirrors the catalog's parts DBI as of d.txnid; the
 *    writer's commits patch it (dir_apply), other processes reload it
 *    (ann_store_refresh); d.txnid 0 marks it stale until the next reload.
 *  - At most one store txn runs per handle (in_txn, cur); close aborts it.
 *  - A failed writer (s->failed) stays failed: only ann_store_close remains.
 *  - A store reader's batch holds one catalog snapshot (its own or the
 *    caller's) from its first submit until every read is returned and
 *    released; the extents it looked up cannot be reused meanwhile.
 *
 * Writer states:  idle --ann_store_begin--> in txn --ann_store_commit/abort--> idle
 *                 any --I/O error--> failed (only ann_store_close remains)
 */
#include "store_impl.h"

#include "cblock.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#define NO_SLOT UINT32_MAX

struct dir_change {
	uint32_t pid;
	ann_dirent e; /* kind NONE: dropped */
};

struct ann_store {
	const ann_store_ops *ops;
	ann_catalog *cat;
	char *dir;          /* index directory */
	int lock_fd;        /* flock'd directory (writer), else -1 */
	bool writable;
	bool failed;        /* sticky writer failure */
	bool in_txn;
	ann_store_txn *cur; /* the running txn (aborted by close) */
	void *impl;         /* backend state */
	pthread_rwlock_t dir_lock; /* guards d and dir_cap */
	ann_dir d;          /* RAM directory */
	uint32_t dir_cap;   /* entries allocated in d.ents */
};

struct ann_store_txn {
	ann_store *s;
	ann_cat_txn *ct;
	bool failed;
	struct dir_change *ch; /* changes to apply to the RAM directory at commit */
	size_t nch, capch;
};

ann_catalog *ann_store_catalog(ann_store *s)
{
	return s->cat;
}

ann_store_kind ann_store_kind_of(const ann_store *s)
{
	return s->ops->kind;
}

const char *ann_store_kind_name(ann_store_kind k)
{
	return k == ANN_STORE_LMDB ? "lmdb" : k == ANN_STORE_FILE ? "file" : "?";
}

const char *ann_store_dir_path(const ann_store *s)
{
	return s->dir;
}

ann_store *ann_store_txn_store(ann_store_txn *t)
{
	return t->s;
}

void *ann_store_impl(ann_store *s)
{
	return s->impl;
}

void ann_store_set_impl(ann_store *s, void *impl)
{
	s->impl = impl;
}

bool ann_store_writable(const ann_store *s)
{
	return s->writable;
}

void ann_store_fail(ann_store *s)
{
	s->failed = true;
}

bool ann_store_failed(const ann_store *s)
{
	return s->failed;
}

ann_cat_txn *ann_store_txn_catalog(ann_store_txn *t)
{
	return t->ct;
}

size_t ann_store_block_bytes(ann_store_kind k, size_t payload)
{
	if (k == ANN_STORE_LMDB)
		return ANN_ALIGN_UP(payload + 16, (size_t)ANN_PAGE) - 16;
	return ANN_ALIGN_UP(payload ? payload : 1, (size_t)ANN_PAGE);
}

bool ann_store_block_size_ok(ann_store_kind k, size_t n)
{
	if (n == 0 || n > UINT32_MAX - ANN_PAGE)
		return false;
	if (k == ANN_STORE_LMDB)
		return (n + 16) % ANN_PAGE == 0;
	return n % ANN_PAGE == 0;
}

void ann_store_opts_init(ann_store_opts *o)
{
	memset(o, 0, sizeof *o);
	o->kind = ANN_STORE_FILE;
}

static char *path_join(const char *a, const char *b)
{
	size_t na = strlen(a), nb = strlen(b);
	char *p = ann_malloc(na + nb + 2);
	if (!p)
		return NULL;
	memcpy(p, a, na);
	p[na] = '/';
	memcpy(p + na + 1, b, nb + 1);
	return p;
}

char *ann_store_path(const ann_store *s, const char *name)
{
	return path_join(s->dir, name);
}

static int load_dir(ann_store *s, ann_error *err)
{
	ann_cat_txn *rt;
	ANN_TRY(ann_catalog_read_begin(s->cat, &rt, err));
	ann_dir d;
	int rc = ann_catalog_dir_load(rt, &d, err);
	ann_catalog_read_end(rt);
	if (rc < 0)
		return rc;
	pthread_rwlock_wrlock(&s->dir_lock);
	ann_catalog_dir_free(&s->d);
	s->d = d;
	s->dir_cap = d.n;
	pthread_rwlock_unlock(&s->dir_lock);
	return ANN_OK;
}

int ann_store_open(const char *dir, const ann_store_opts *o, ann_store **out, ann_error *err)
{
	ann_store_opts defaults;
	if (!o) {
		ann_store_opts_init(&defaults);
		o = &defaults;
	}
	*out = NULL;
	bool writable = o->writable || o->create;
	if (writable && o->readonly)
		return ann_err(err, ANN_E_INVAL, "%s: a read-only store cannot be writable", dir);
	if (o->create && o->kind != ANN_STORE_FILE && o->kind != ANN_STORE_LMDB)
		return ann_err(err, ANN_E_INVAL, "%s: unknown store kind %d", dir, (int)o->kind);
	int rc;
	char *catpath = NULL;
	ann_cat_txn *t = NULL;
	ann_store *s = ann_calloc(1, sizeof *s);
	if (!s)
		return ann_err(err, ANN_E_NOMEM, "%s: out of memory opening the store", dir);
	s->lock_fd = -1;
	s->writable = writable;
	pthread_rwlock_init(&s->dir_lock, NULL);
	size_t dl = strlen(dir);
	s->dir = ann_malloc(dl + 1);
	catpath = path_join(dir, "catalog.lmdb");
	if (!s->dir || !catpath) {
		rc = ann_err(err, ANN_E_NOMEM, "%s: out of memory opening the store", dir);
		goto fail;
	}
	memcpy(s->dir, dir, dl + 1);
	if (o->create && mkdir(dir, 0755) != 0 && errno != EEXIST) {
		rc = ann_err_sys(err, errno, "%s: cannot create directory", dir);
		goto fail;
	}
	if (writable) {
		s->lock_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (s->lock_fd < 0) {
			rc = errno == ENOENT ? ann_err(err, ANN_E_NOTFOUND, "%s: no such index directory", dir)
					     : ann_err_sys(err, errno, "%s: cannot open directory", dir);
			goto fail;
		}
		if (flock(s->lock_fd, LOCK_EX | LOCK_NB) != 0) {
			rc = errno == EWOULDBLOCK
				     ? ann_err(err, ANN_E_STATE, "%s: another process has the index open for writing", dir)
				     : ann_err_sys(err, errno, "%s: cannot lock directory", dir);
			goto fail;
		}
	}
	ann_catalog_opts co;
	ann_catalog_opts_init(&co);
	co.create = o->create;
	co.readonly = o->readonly;
	co.map_bytes = o->map_bytes;
	co.max_readers = o->max_readers;
	ANN_CHECK(rc, ann_catalog_open(catpath, &co, &s->cat, err));

	uint64_t kind_code = 0;
	ANN_CHECK(rc, ann_catalog_read_begin(s->cat, &t, err));
	rc = ann_catalog_meta_get_u64(t, "store.kind", &kind_code, err);
	ann_catalog_read_end(t);
	t = NULL;
	if (rc < 0 && rc != ANN_E_NOTFOUND)
		goto fail;
	bool exists = rc == ANN_OK;
	if (o->create && exists) {
		rc = ann_err(err, ANN_E_EXISTS, "%s: already holds a store", dir);
		goto fail;
	}
	if (!o->create && !exists) {
		rc = ann_err(err, ANN_E_FORMAT, "%s: catalog has no meta 'store.kind' (unfinished creation?)", dir);
		goto fail;
	}
	if (o->create)
		kind_code = ann_kind_code(o->kind);
	if (kind_code == ANN_KIND_FILE) {
		s->ops = &ann_store_file_ops;
	} else if (kind_code == ANN_KIND_LMDB) {
		s->ops = &ann_store_lmdb_ops;
	} else {
		rc = ann_err(err, ANN_E_FORMAT, "%s: meta 'store.kind' is %llu, expected 1 (file) or 2 (lmdb)", dir,
			     (unsigned long long)kind_code);
		goto fail;
	}
	if (o->create) {
		ANN_CHECK(rc, ann_catalog_write_begin(s->cat, &t, err));
		ANN_CHECK(rc, s->ops->open(s, o, t, err));
		ANN_CHECK(rc, ann_catalog_meta_put_u64(t, "store.kind", kind_code, err));
		rc = ann_catalog_commit(t, err);
		t = NULL;
		if (rc < 0)
			goto fail;
		/* Reopen through the ordinary path so a created store is in the
		 * same state as an opened one. */
		s->ops->close(s);
		s->impl = NULL;
	}
	ANN_CHECK(rc, s->ops->open(s, o, NULL, err));
	ANN_CHECK(rc, load_dir(s, err));
	ann_free(catpath);
	*out = s;
	return ANN_OK;
fail:
	if (t)
		ann_catalog_abort(t);
	ann_free(catpath);
	ann_store_close(s);
	return rc;
}

void ann_store_close(ann_store *s)
{
	if (!s)
		return;
	if (s->cur)
		ann_store_abort(s->cur);
	if (s->ops && s->impl)
		s->ops->close(s);
	ann_catalog_close(s->cat);
	if (s->lock_fd >= 0)
		close(s->lock_fd);
	ann_catalog_dir_free(&s->d);
	pthread_rwlock_destroy(&s->dir_lock);
	ann_free(s->dir);
	ann_free(s);
}

/* ---- txns ------------------------------------------------------------------- */

static int txn_check(ann_store_txn *t, ann_error *err)
{
	if (t->s->failed)
		return ann_err(err, ANN_E_STATE, "%s: the writer failed earlier; reopen the index", t->s->dir);
	if (t->failed)
		return ann_err(err, ANN_E_STATE, "%s: the txn failed earlier; only abort remains", t->s->dir);
	return ANN_OK;
}

int ann_store_begin(ann_store *s, ann_store_txn **out, ann_error *err)
{
	*out = NULL;
	if (!s->writable)
		return ann_err(err, ANN_E_INVAL, "%s: store not opened for writing", s->dir);
	if (s->failed)
		return ann_err(err, ANN_E_STATE, "%s: the writer failed earlier; reopen the index", s->dir);
	if (s->in_txn)
		return ann_err(err, ANN_E_INVAL, "%s: a store txn is already running", s->dir);
	ann_store_txn *t = ann_calloc(1, sizeof *t);
	if (!t)
		return ann_err(err, ANN_E_NOMEM, "%s: out of memory for a write transaction", s->dir);
	t->s = s;
	int rc = ann_catalog_write_begin(s->cat, &t->ct, err);
	if (rc < 0) {
		ann_free(t);
		return rc;
	}
	rc = s->ops->begin(t, err);
	if (rc < 0) {
		ann_catalog_abort(t->ct);
		ann_free(t);
		return rc;
	}
	s->in_txn = true;
	s->cur = t;
	*out = t;
	return ANN_OK;
}

static int add_change(ann_store_txn *t, uint32_t pid, const ann_dirent *e, ann_error *err)
{
	if (t->nch == t->capch) {
		size_t cap = t->capch ? t->capch * 2 : 64;
		struct dir_change *p = ann_realloc(t->ch, cap * sizeof *p);
		if (!p)
			return ann_err(err, ANN_E_NOMEM, "%s: out of memory for %zu directory changes", t->s->dir, cap);
		t->ch = p;
		t->capch = cap;
	}
	t->ch[t->nch].pid = pid;
	t->ch[t->nch].e = *e;
	t->nch++;
	return ANN_OK;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

/* The current entry of pid inside the txn (kind NONE when absent). */
static int txn_entry(ann_store_txn *t, uint32_t pid, ann_dirent *e, ann_error *err)
{
	int rc = ann_catalog_part_get(t->ct, pid, e, err);
	if (rc == ANN_E_NOTFOUND) {
		memset(e, 0, sizeof *e);
		return ANN_OK;
	}
	if (rc == ANN_OK && e->kind != ann_kind_code(t->s->ops->kind))
		return ann_err(err, ANN_E_CORRUPT, "%s: partition %u: directory entry of store kind %u in a %s store",
			       t->s->dir, pid, e->kind, t->s->ops->name);
	return rc;
}

int ann_store_put_blocks(ann_store_txn *t, const ann_block_put *puts, size_t n, ann_dirent *out, ann_error *err)
{
	ANN_TRY(txn_check(t, err));
	if (n == 0)
		return ANN_OK;
	ann_store_kind kind = t->s->ops->kind;
	for (size_t i = 0; i < n; i++) {
		if (!puts[i].data || !ann_store_block_size_ok(kind, puts[i].length) || puts[i].head > puts[i].length)
			return ann_err(err, ANN_E_INVAL,
				       "%s: partition %u: block of %zu bytes; the %s store takes %s", t->s->dir,
				       puts[i].pid, puts[i].length, t->s->ops->name,
				       kind == ANN_STORE_LMDB ? "4096*k - 16 bytes" : "4096*k bytes");
	}
	int rc;
	uint32_t *pids = ann_malloc(n * sizeof *pids);
	ann_dirent *ents = ann_malloc(n * sizeof *ents);
	ann_dirent *olds = ann_malloc(n * sizeof *olds);
	if (!pids || !ents || !olds) {
		rc = ann_err(err, ANN_E_NOMEM, "%s: out of memory for %zu block puts", t->s->dir, n);
		goto out;
	}
	for (size_t i = 0; i < n; i++)
		pids[i] = puts[i].pid;
	qsort(pids, n, sizeof *pids, cmp_u32);
	for (size_t i = 1; i < n; i++) {
		if (pids[i] == pids[i - 1]) {
			rc = ann_err(err, ANN_E_INVAL, "%s: partition %u twice in one put", t->s->dir, pids[i]);
			goto out;
		}
	}
	for (size_t i = 0; i < n; i++) {
		ANN_CHECK(rc, txn_entry(t, puts[i].pid, &olds[i], err));
		ann_dirent *e = &ents[i];
		memset(e, 0, sizeof *e);
		e->kind = ann_kind_code(kind);
		e->length = (uint32_t)puts[i].length;
		e->count = puts[i].count;
		e->checksum = XXH64(puts[i].data, puts[i].length, 0);
		e->head = puts[i].head;
		e->generation = olds[i].kind ? olds[i].generation + 1 : 1;
		if (e->head) { /* the probe order's spread, from the head's norms */
			ann_cblock_info in;
			rc = cblock_peek(puts[i].data, puts[i].length, &in, err);
			if (rc < 0 || in.head_bytes != puts[i].head || in.count != puts[i].count) {
				rc = rc < 0 ? ann_err_prefix(err, rc, "%s: partition %u", t->s->dir, puts[i].pid)
					    : ann_err(err, ANN_E_INVAL, "%s: partition %u: a codes block of head %u and %u "
						      "rows put as head %u and %u rows", t->s->dir, puts[i].pid,
						      in.head_bytes, in.count, puts[i].head, puts[i].count);
				goto out;
			}
			e->spread = (float)cblock_spread(&in, puts[i].data);
		}
	}
	ANN_CHECK(rc, t->s->ops->put(t, puts, n, ents, olds, err));
	for (size_t i = 0; i < n; i++) {
		ANN_CHECK(rc, ann_catalog_part_put(t->ct, puts[i].pid, &ents[i], err));
		ANN_CHECK(rc, add_change(t, puts[i].pid, &ents[i], err));
	}
	if (out)
		memcpy(out, ents, n * sizeof *ents);
	rc = ANN_OK;
out:
fail:
	if (rc < 0)
		t->failed = true;
	ann_free(pids);
	ann_free(ents);
	ann_free(olds);
	return rc;
}

int ann_store_drop(ann_store_txn *t, uint32_t pid, ann_error *err)
{
	ANN_TRY(txn_check(t, err));
	ann_dirent old;
	int rc;
	ANN_CHECK(rc, txn_entry(t, pid, &old, err));
	if (!old.kind)
		return ann_err(err, ANN_E_NOTFOUND, "%s: no partition %u to drop", t->s->dir, pid);
	ANN_CHECK(rc, t->s->ops->drop(t, pid, &old, err));
	ANN_CHECK(rc, ann_catalog_part_del(t->ct, pid, err));
	memset(&old, 0, sizeof old);
	ANN_CHECK(rc, add_change(t, pid, &old, err));
	return ANN_OK;
fail:
	t->failed = true;
	return rc;
}

static void dir_apply(ann_store *s, const struct dir_change *ch, size_t n, uint64_t txnid)
{
	bool lost = false;
	pthread_rwlock_wrlock(&s->dir_lock);
	for (size_t i = 0; i < n; i++) {
		uint32_t pid = ch[i].pid;
		if (pid >= s->dir_cap) {
			if (!ch[i].e.kind)
				continue;
			uint64_t cap = s->dir_cap ? (uint64_t)s->dir_cap * 2 : 64;
			if (cap < (uint64_t)pid + 1)
				cap = (uint64_t)pid + 1;
			if (cap > UINT32_MAX)
				cap = UINT32_MAX;
			ann_dirent *p = ann_realloc(s->d.ents, (size_t)cap * sizeof *p);
			if (!p) {
				/* Keep serving what we have; ann_store_refresh reloads it. */
				lost = true;
				continue;
			}
			memset(p + s->dir_cap, 0, (size_t)(cap - s->dir_cap) * sizeof *p);
			s->d.ents = p;
			s->dir_cap = (uint32_t)cap;
		}
		bool had = pid < s->d.n && s->d.ents[pid].kind;
		s->d.ents[pid] = ch[i].e;
		if (ch[i].e.kind && pid >= s->d.n)
			s->d.n = pid + 1;
		s->d.count += (ch[i].e.kind ? 1u : 0u) - (had ? 1u : 0u);
	}
	while (s->d.n > 0 && !s->d.ents[s->d.n - 1].kind)
		s->d.n--;
	/* 0 marks a stale directory (sticky until ann_store_refresh reloads it). */
	s->d.txnid = (lost || s->d.txnid == 0) ? 0 : txnid;
	pthread_rwlock_unlock(&s->dir_lock);
}

int ann_store_commit(ann_store_txn *t, ann_error *err)
{
	ann_store *s = t->s;
	int rc = txn_check(t, err);
	if (rc < 0) {
		ann_store_abort(t);
		return rc;
	}
	uint64_t txnid = ann_catalog_txn_id(t->ct);
	rc = s->ops->precommit(t, err);
	if (rc < 0) {
		ann_store_abort(t);
		return rc;
	}
	rc = ann_catalog_commit(t->ct, err);
	t->ct = NULL;
	if (rc < 0) {
		/* Whether LMDB's commit reached the disk is unknown; stop writing. */
		s->failed = true;
		s->ops->postcommit(t, false);
		s->in_txn = false;
		s->cur = NULL;
		ann_free(t->ch);
		ann_free(t);
		return rc;
	}
	s->ops->postcommit(t, true);
	dir_apply(s, t->ch, t->nch, txnid);
	s->in_txn = false;
	s->cur = NULL;
	ann_free(t->ch);
	ann_free(t);
	return ANN_OK;
}

void ann_store_abort(ann_store_txn *t)
{
	if (!t)
		return;
	if (t->ct)
		ann_catalog_abort(t->ct);
	t->s->ops->postcommit(t, false);
	t->s->in_txn = false;
	t->s->cur = NULL;
	ann_free(t->ch);
	ann_free(t);
}

/* ---- RAM directory ------------------------------------------------------------ */

int ann_store_lookup(ann_store *s, uint32_t pid, ann_dirent *e, ann_error *err)
{
	pthread_rwlock_rdlock(&s->dir_lock);
	bool found = pid < s->d.n && s->d.ents[pid].kind;
	if (found)
		*e = s->d.ents[pid];
	pthread_rwlock_unlock(&s->dir_lock);
	if (!found)
		return ann_err(err, ANN_E_NOTFOUND, "%s: no partition %u", s->dir, pid);
	return ANN_OK;
}

int ann_store_dir_copy(ann_store *s, ann_dir *d, ann_error *err)
{
	memset(d, 0, sizeof *d);
	pthread_rwlock_rdlock(&s->dir_lock);
	d->ents = ann_malloc((size_t)(s->d.n ? s->d.n : 1) * sizeof *d->ents);
	if (d->ents) {
		if (s->d.n)
			memcpy(d->ents, s->d.ents, (size_t)s->d.n * sizeof *d->ents);
		d->n = s->d.n;
		d->count = s->d.count;
		d->txnid = s->d.txnid;
	}
	pthread_rwlock_unlock(&s->dir_lock);
	if (!d->ents)
		return ann_err(err, ANN_E_NOMEM, "%s: directory copy: out of memory", s->dir);
	return ANN_OK;
}

int ann_store_refresh(ann_store *s, bool *changed, ann_error *err)
{
	if (changed)
		*changed = false;
	pthread_rwlock_rdlock(&s->dir_lock);
	uint64_t have = s->d.txnid;
	pthread_rwlock_unlock(&s->dir_lock);
	if (have != 0 && have == ann_catalog_last_txnid(s->cat))
		return ANN_OK;
	ANN_TRY(load_dir(s, err));
	if (changed)
		*changed = true;
	return ANN_OK;
}

/* ---- batched block reader -------------------------------------------------------- */

struct rd_info {
	uint64_t tag;
	uint32_t pid;
	int status;       /* set when the lookup failed (completed without I/O) */
	bool bad_range;   /* the range does not lie within the block */
	uint64_t off;     /* range within the block */
	uint32_t len;     /* range length; 0 = the whole block */
	uint32_t io_slot; /* io reader slot while delivered, else NO_SLOT */
	uint32_t next;    /* free-list link */
	ann_dirent ent;
};

struct ann_store_reader {
	ann_store *s;
	ann_store_reader_opts o;
	ann_ioreader *io;     /* file store */
	ann_cat_txn *rt;      /* batch snapshot; reset between batches */
	ann_cat_txn *ext;     /* the caller's snapshot (ann_store_reader_use_txn), or NULL */
	bool io_direct;       /* reads are widened to pages (O_DIRECT) */
	bool in_batch;
	struct rd_info *info; /* per outstanding or held request */
	uint32_t ninfo, free_info;
	uint32_t *ready;      /* FIFO ring of info indices completed without I/O (or LMDB fetches) */
	size_t rhead, rlen, rcap;
	ann_ioreq *reqbuf;    /* scratch for submitting to io */
	size_t reqcap;
	size_t outstanding;   /* submitted, not yet returned */
	size_t held;          /* returned, not released */
	uint64_t requests, bytes;
};

void ann_store_reader_opts_init(ann_store_reader_opts *o)
{
	memset(o, 0, sizeof *o);
	ann_ioreader_opts_init(&o->io);
}

int ann_store_reader_new(ann_store *s, const ann_store_reader_opts *o, ann_store_reader **out, ann_error *err)
{
	ann_store_reader_opts defaults;
	if (!o) {
		ann_store_reader_opts_init(&defaults);
		o = &defaults;
	}
	*out = NULL;
	ann_store_reader *r = ann_calloc(1, sizeof *r);
	if (!r)
		return ann_err(err, ANN_E_NOMEM, "%s: out of memory for a block reader", s->dir);
	r->s = s;
	r->o = *o;
	r->free_info = NO_SLOT;
	int rc;
	if (s->ops->data_file) {
		char *p = ann_store_path(s, s->ops->data_file);
		if (!p) {
			rc = ann_err(err, ANN_E_NOMEM, "%s: out of memory for a block reader", s->dir);
			goto fail;
		}
		rc = ann_ioreader_open(p, &o->io, &r->io, err);
		ann_free(p);
		if (rc < 0)
			goto fail;
		ann_ioreader_stats st;
		ann_ioreader_get_stats(r->io, &st);
		r->io_direct = st.direct;
	}
	ANN_CHECK(rc, ann_catalog_read_begin(s->cat, &r->rt, err));
	ann_catalog_read_reset(r->rt);
	*out = r;
	return ANN_OK;
fail:
	ann_store_reader_free(r);
	return rc;
}

void ann_store_reader_free(ann_store_reader *r)
{
	if (!r)
		return;
	ann_ioreader_free(r->io);
	if (r->rt)
		ann_catalog_read_end(r->rt);
	ann_free(r->info);
	ann_free(r->ready);
	ann_free(r->reqbuf);
	ann_free(r);
}

const char *ann_store_reader_path(const ann_store_reader *r)
{
	return r->io ? ann_ioreader_path(r->io) : "lmdb";
}

void ann_store_reader_stats(const ann_store_reader *r, ann_ioreader_stats *st)
{
	if (r->io) {
		ann_ioreader_get_stats(r->io, st);
		return;
	}
	memset(st, 0, sizeof *st);
	st->requests = r->requests;
	st->bytes = r->bytes;
}

static int info_get(ann_store_reader *r, uint32_t *out, ann_error *err)
{
	if (r->free_info == NO_SLOT) {
		uint32_t cap = r->ninfo ? r->ninfo * 2 : 64;
		if (cap < r->ninfo || cap >= NO_SLOT)
			return ann_err(err, ANN_E_INVAL, "%s: too many outstanding block reads", r->s->dir);
		struct rd_info *p = ann_realloc(r->info, (size_t)cap * sizeof *p);
		if (!p)
			return ann_err(err, ANN_E_NOMEM, "%s: out of memory for %u block reads", r->s->dir, cap);
		for (uint32_t i = r->ninfo; i < cap; i++)
			p[i].next = i + 1 < cap ? i + 1 : NO_SLOT;
		r->free_info = r->ninfo;
		r->info = p;
		r->ninfo = cap;
	}
	*out = r->free_info;
	r->free_info = r->info[*out].next;
	return ANN_OK;
}

static void info_put(ann_store_reader *r, uint32_t i)
{
	r->info[i].next = r->free_info;
	r->free_info = i;
}

static int ready_push(ann_store_reader *r, uint32_t i, ann_error *err)
{
	if (r->rlen == r->rcap) {
		size_t cap = r->rcap ? r->rcap * 2 : 64;
		uint32_t *p = ann_malloc(cap * sizeof *p);
		if (!p)
			return ann_err(err, ANN_E_NOMEM, "%s: out of memory for %zu finished block reads", r->s->dir,
				       cap);
		for (size_t k = 0; k < r->rlen; k++)
			p[k] = r->ready[(r->rhead + k) % r->rcap];
		ann_free(r->ready);
		r->ready = p;
		r->rcap = cap;
		r->rhead = 0;
	}
	r->ready[(r->rhead + r->rlen) % r->rcap] = i;
	r->rlen++;
	return ANN_OK;
}

static void batch_maybe_end(ann_store_reader *r)
{
	if (r->in_batch && r->outstanding == 0 && r->held == 0) {
		if (!r->ext)
			ann_catalog_read_reset(r->rt);
		r->in_batch = false;
	}
}

int ann_store_reader_use_txn(ann_store_reader *r, ann_cat_txn *t, ann_error *err)
{
	if (r->in_batch)
		return ann_err(err, ANN_E_STATE, "%s: store reader: snapshot changed during a batch", r->s->dir);
	r->ext = t;
	return ANN_OK;
}

/* Bytes a read of [off, off + len) of blocks.dat costs: the io reader widens
 * O_DIRECT reads to whole pages. */
static uint64_t io_cost(const ann_store_reader *r, uint64_t off, uint64_t len)
{
	if (!r->io_direct)
		return len;
	return ANN_ALIGN_UP(off + len, (uint64_t)ANN_PAGE) - (off & ~(uint64_t)(ANN_PAGE - 1));
}

int ann_store_reader_submit(ann_store_reader *r, const uint32_t *pids, const uint64_t *tags, size_t n,
			    ann_error *err)
{
	if (n == 0)
		return ANN_OK;
	ann_block_range *rs = ann_malloc(n * sizeof *rs);
	if (!rs)
		return ann_err(err, ANN_E_NOMEM, "%s: out of memory for %zu block reads", r->s->dir, n);
	for (size_t i = 0; i < n; i++)
		rs[i] = (ann_block_range){ pids[i], 0, 0, tags ? tags[i] : i };
	int rc = ann_store_reader_submit_ranges(r, rs, n, err);
	ann_free(rs);
	return rc;
}

int ann_store_reader_submit_ranges(ann_store_reader *r, const ann_block_range *rs, size_t n, ann_error *err)
{
	if (n == 0)
		return ANN_OK;
	if (!r->in_batch) {
		if (!r->ext)
			ANN_TRY(ann_catalog_read_renew(r->rt, err));
		r->in_batch = true;
	}
	ann_cat_txn *tx = r->ext ? r->ext : r->rt;
	uint8_t want = ann_kind_code(r->s->ops->kind);
	size_t nreq = 0;
	if (r->io && r->reqcap < n) {
		ann_ioreq *p = ann_realloc(r->reqbuf, n * sizeof *p);
		if (!p)
			return ann_err(err, ANN_E_NOMEM, "%s: out of memory for %zu read requests", r->s->dir, n);
		r->reqbuf = p;
		r->reqcap = n;
	}
	int rc = ANN_OK;
	size_t i;
	for (i = 0; i < n; i++) {
		uint32_t k = 0;
		rc = info_get(r, &k, err);
		if (rc < 0)
			break;
		struct rd_info *in = &r->info[k];
		in->tag = rs[i].tag;
		in->pid = rs[i].pid;
		in->off = rs[i].offset;
		in->len = rs[i].length;
		in->status = ANN_OK;
		in->bad_range = false;
		in->io_slot = NO_SLOT;
		ann_error e2;
		int lrc = ann_catalog_part_get(tx, rs[i].pid, &in->ent, &e2);
		if (lrc == ANN_OK && in->ent.kind != want)
			lrc = ANN_E_CORRUPT;
		if (lrc == ANN_OK && (in->len ? in->off + in->len > in->ent.length : in->off != 0)) {
			in->bad_range = true;
			lrc = ANN_E_CORRUPT;
		}
		uint64_t rlen = in->len ? in->len : in->ent.length;
		if (lrc == ANN_E_NOTFOUND || lrc == ANN_E_CORRUPT || lrc == ANN_E_FORMAT) {
			memset(&in->ent, 0, sizeof in->ent);
			in->status = lrc == ANN_E_NOTFOUND ? ANN_E_NOTFOUND : ANN_E_CORRUPT;
			if ((rc = ready_push(r, k, err)) < 0)
				info_put(r, k);
		} else if (lrc < 0) {
			info_put(r, k);
			if (err)
				*err = e2;
			rc = lrc;
		} else if (r->io && io_cost(r, in->ent.offset + in->off, rlen) > ann_ioreader_max_request(r->io)) {
			in->status = ANN_E_INVAL; /* completes alone; the others still read */
			if ((rc = ready_push(r, k, err)) < 0)
				info_put(r, k);
		} else if (r->io) {
			r->reqbuf[nreq++] = (ann_ioreq){ in->ent.offset + in->off, (uint32_t)rlen, k };
		} else if ((rc = ready_push(r, k, err)) < 0) {
			info_put(r, k);
		}
		if (rc < 0)
			break;
		r->outstanding++;
	}
	if (nreq > 0) {
		ann_error e2;
		int src = ann_ioreader_submit(r->io, r->reqbuf, nreq, &e2);
		/* Requests the io reader refused (a block larger than its pool,
		 * no memory) complete with that status, one by one. */
		for (size_t q = 0; src < 0 && q < nreq; q++) {
			uint32_t k = (uint32_t)r->reqbuf[q].tag;
			r->info[k].status = src;
			int prc = ready_push(r, k, err);
			if (prc < 0) {
				/* Not even that: forget them and fail the submit. */
				info_put(r, k);
				r->outstanding--;
				rc = prc;
			}
		}
	}
	return rc;
}

static void fill_read(ann_store_reader *r, uint32_t k, ann_block_read *b)
{
	struct rd_info *in = &r->info[k];
	memset(b, 0, sizeof *b);
	b->tag = in->tag;
	b->pid = in->pid;
	b->ent = in->ent;
	b->offset = in->off;
	b->slot = k;
	b->status = in->status;
}

static void check_block(ann_store_reader *r, ann_block_read *b, ann_error *err)
{
	if (b->status < 0 || !r->o.verify || r->info[b->slot].len)
		return; /* a range cannot be checked against the whole block's sum */
	uint64_t sum = XXH64(b->data, b->length, 0);
	if (sum != b->ent.checksum) {
		b->status = ann_err(err, ANN_E_CORRUPT,
				    "%s: partition %u (%s store, offset %llu, %zu bytes): block checksum %016llx, "
				    "directory says %016llx",
				    r->s->dir, b->pid, r->s->ops->name, (unsigned long long)b->ent.offset, b->length,
				    (unsigned long long)sum, (unsigned long long)b->ent.checksum);
	}
}

int ann_store_reader_next(ann_store_reader *r, ann_block_read *b, ann_error *err)
{
	if (r->rlen > 0) {
		uint32_t k = r->ready[r->rhead];
		r->rhead = (r->rhead + 1) % r->rcap;
		r->rlen--;
		r->outstanding--;
		r->held++;
		fill_read(r, k, b);
		struct rd_info *in = &r->info[k];
		if (b->status == ANN_E_NOTFOUND) {
			ann_err(err, ANN_E_NOTFOUND, "%s: no partition %u", r->s->dir, b->pid);
		} else if (in->bad_range) {
			ann_err(err, ANN_E_CORRUPT, "%s: partition %u: range %llu+%u lies outside its block of %u bytes",
				r->s->dir, b->pid, (unsigned long long)in->off, in->len, b->ent.length);
		} else if (b->status == ANN_E_CORRUPT) {
			ann_err(err, b->status, "%s: partition %u: directory entry unreadable or of the wrong store kind",
				r->s->dir, b->pid);
		} else if (b->status < 0) {
			ann_err(err, b->status, "%s: partition %u: block of %u bytes at offset %llu not read (%s; "
				"larger than the reader's buffer pool?)", r->s->dir, b->pid, b->ent.length,
				(unsigned long long)b->ent.offset, ann_strerror(b->status));
		} else {
			/* LMDB store: a pointer into the map, valid while the batch lasts. */
			const uint8_t *p = NULL;
			size_t len = 0;
			int rc = ann_catalog_block_get(r->ext ? r->ext : r->rt, b->pid, &p, &len, err);
			if (rc < 0) {
				b->status = rc == ANN_E_NOTFOUND ? ANN_E_CORRUPT : rc;
				if (rc == ANN_E_NOTFOUND)
					ann_err(err, ANN_E_CORRUPT, "%s: partition %u: directory entry without block",
						r->s->dir, b->pid);
			} else if (len != b->ent.length) {
				b->status = ann_err(err, ANN_E_CORRUPT,
						    "%s: partition %u: block of %zu bytes, directory says %u", r->s->dir,
						    b->pid, len, b->ent.length);
			} else if (in->len) {
				/* A range: the LMDB pages it touches count as read. */
				b->data = p + in->off;
				b->length = in->len;
				uintptr_t a = (uintptr_t)b->data;
				b->cost = ANN_ALIGN_UP(a + in->len, (uintptr_t)ANN_PAGE) - (a & ~(uintptr_t)(ANN_PAGE - 1));
				r->requests++;
				r->bytes += b->cost;
			} else {
				b->data = p;
				b->length = len;
				b->cost = len;
				r->requests++;
				r->bytes += len;
				check_block(r, b, err);
			}
		}
		return 1;
	}
	if (!r->io || ann_ioreader_outstanding(r->io) == 0) {
		batch_maybe_end(r);
		return 0;
	}
	ann_iocomp c;
	int rc = ann_ioreader_next(r->io, &c, err);
	if (rc <= 0)
		return rc;
	uint32_t k = (uint32_t)c.tag;
	r->info[k].io_slot = c.slot;
	r->outstanding--;
	r->held++;
	fill_read(r, k, b);
	b->status = c.status;
	if (c.status < 0)
		ann_err_prefix(err, c.status, "partition %u", b->pid);
	b->data = c.data;
	b->length = c.length;
	b->cost = io_cost(r, b->ent.offset + b->offset, c.length);
	check_block(r, b, err);
	return 1;
}

void ann_store_reader_release(ann_store_reader *r, const ann_block_read *b)
{
	if (b->slot >= r->ninfo)
		return;
	struct rd_info *in = &r->info[b->slot];
	if (in->io_slot != NO_SLOT) {
		ann_iocomp c = { .slot = in->io_slot };
		ann_ioreader_release(r->io, &c);
		in->io_slot = NO_SLOT;
	}
	info_put(r, b->slot);
	r->held--;
	batch_maybe_end(r);
}

/* ---- verification --------------------------------------------------------------- */

struct vctx {
	ann_issue_fn fn;
	void *ctx;
	ann_verify_stats *st;
};

static void vcount(void *ctx, const ann_issue *is)
{
	struct vctx *v = ctx;
	if (is->warning)
		v->st->warnings++;
	else
		v->st->problems++;
	if (v->fn)
		v->fn(v->ctx, is);
}

struct idmap_vctx {
	const ann_dir *d;
	struct vctx *v;
	uint64_t reported;
};

static int idmap_check(void *ctx, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen, ann_error *err)
{
	(void)err;
	struct idmap_vctx *ic = ctx;
	if (klen != 8 || vlen != 4)
		return 0; /* reported by the catalog pass */
	uint32_t pid = ann_ld32(val);
	if (pid < ic->d->n && ic->d->ents[pid].kind)
		return 0;
	char msg[200];
	snprintf(msg, sizeof msg, "idmap: id %llu maps to partition %u, which is not in the directory",
		 (unsigned long long)ann_ldbe64(key), pid);
	ann_issue is = { ANN_ISSUE_IDMAP, true, (int64_t)pid, "idmap", msg };
	vcount(ic->v, &is);
	return 0;
}

int ann_store_verify(ann_store *s, ann_issue_fn fn, void *ctx, ann_verify_stats *st, ann_error *err)
{
	ann_verify_stats local;
	if (!st)
		st = &local;
	memset(st, 0, sizeof *st);
	struct vctx v = { fn, ctx, st };
	ann_cat_txn *rt;
	ANN_TRY(ann_catalog_read_begin(s->cat, &rt, err));
	ann_dir d = { 0 };
	int rc;
	ANN_CHECK(rc, ann_catalog_verify(rt, vcount, &v, NULL, err));
	ANN_CHECK(rc, ann_catalog_dir_load_valid(rt, &d, err));
	ANN_CHECK(rc, s->ops->verify(s, rt, &d, vcount, &v, st, err));
	struct idmap_vctx ic = { &d, &v, 0 };
	ANN_CHECK(rc, ann_catalog_foreach_valid(rt, ANN_CAT_IDMAP, NULL, 0, idmap_check, &ic, err));
	if (st->problems > 0)
		rc = ann_err(err, ANN_E_CORRUPT, "%s: %llu problems found (%llu warnings)", s->dir,
			     (unsigned long long)st->problems, (unsigned long long)st->warnings);
	else
		rc = ANN_OK;
fail:
	ann_catalog_dir_free(&d);
	ann_catalog_read_end(rt);
	return rc;
}

int ann_store_space_get(ann_store *s, ann_store_space *sp, ann_error *err)
{
	memset(sp, 0, sizeof *sp);
	sp->kind = s->ops->kind;
	pthread_rwlock_rdlock(&s->dir_lock);
	sp->partitions = s->d.count;
	for (uint32_t i = 0; i < s->d.n; i++)
		if (s->d.ents[i].kind)
			sp->live_bytes += s->d.ents[i].length;
	pthread_rwlock_unlock(&s->dir_lock);
	ANN_TRY(ann_catalog_space_get(s->cat, &sp->cat, err));
	return s->ops->space(s, sp, err);
}
