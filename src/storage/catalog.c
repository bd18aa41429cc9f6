/* SPDX-License-Identifier: MIT */
/*
 * catalog.c: the LMDB environment catalog.lmdb (see catalog.h): opening and
 * creating it, transactions with transparent map growth, checksummed values,
 * LMDB-store blocks and space figures. The typed records (meta, partition
 * directory, models, id map, free extents) are in catalog_records.c,
 * verification and repair in catalog_repair.c, LMDB's page checks in
 * catalog_pages.c; catalog_impl.h is what they share.
 * Format: docs/FORMAT.md "catalog.lmdb".
 *
 * Publication protocol (what makes a crash at any instant leave the last
 * committed index readable; store_file.c states the block-side half):
 *  (1) The directory (`parts`) is the only thing that makes a block visible.
 *      A block is reachable iff a committed `parts` entry points at it.
 *  (2) A block referenced by a `parts` entry is written and made durable
 *      (fdatasync of blocks.dat, or inside the same LMDB txn for the LMDB
 *      store) before the txn that writes the entry commits.
 *  (3) A rewrite writes the new block elsewhere (copy-on-write); the old block
 *      stays intact until the txn that repoints the entry commits, and
 *      afterwards until no read txn older than that commit is alive.
 *  (4) Extents freed by a txn are recorded in `free`, with the freeing txn id,
 *      in that same txn; they become allocatable only after it commits and
 *      only once every live reader's snapshot is at least that txn id.
 *  (5) The committed end of blocks.dat (meta "store.file_end") moves in the
 *      same txn as the entries that use the space; bytes past it are garbage
 *      of an unfinished txn and are overwritten or truncated by the next
 *      writer. Every byte of [4096, file_end) is in exactly one live or free
 *      extent.
 *  (6) LMDB runs in its default durable mode (no MDB_NOSYNC / MDB_NOMETASYNC):
 *      mdb_txn_commit returns after data and meta pages are on disk.
 *  (7) Every catalog value carries xxh64(payload, seed xxh64(key)); a value
 *      that fails it is ANN_E_CORRUPT naming DBI and key, never trusted.
 *  (8) One writer process at a time (flock on the index directory, taken by
 *      the store); LMDB serialises txns, the lock protects the writer's
 *      in-memory allocator state between txns.
 *
 * Map growth: MDB_MAP_FULL aborts the txn, doubles the map size and replays
 * the txn's logged operations. mdb_env_set_mapsize needs every txn of the
 * process to be finished, so txns pass a gate (active count + resizing flag)
 * that the resizer closes and waits on.
 */
#include "catalog_impl.h"
#include "catalog_pages.h"

#include <errno.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#define CAT_FORMAT_MAJOR 1
#define CAT_FORMAT_MINOR 0
#define CAT_MAX_KEY 511u

const char *const ann_cat_db_names[ANN_CAT_NDB] = {
	"meta", "parts", "models", "idmap", "free", "tomb", "delta", "blocks",
};

/* Log of a write txn: records of [u8 op][u8 db][u16 0][u32 klen][u64 vlen]
 * key value, each padded to 8 bytes. */
enum { OP_PUT = 1, OP_DEL = 2 };
#define LOG_HDR 16u

const char *ann_catalog_db_name(ann_cat_db db)
{
	return (unsigned)db < ANN_CAT_NDB ? ann_cat_db_names[db] : "?";
}

const char *ann_catalog_path(const ann_catalog *c)
{
	return c->path;
}

void ann_catalog_opts_init(ann_catalog_opts *o)
{
	memset(o, 0, sizeof *o);
}

/* ---- errors ------------------------------------------------------------------ */

void ann_cat_key_desc(ann_cat_db db, const uint8_t *k, size_t klen, char *buf, size_t cap)
{
	if (!k) {
		snprintf(buf, cap, "(none)");
		return;
	}
	if ((db == ANN_CAT_PARTS || db == ANN_CAT_BLOCKS) && klen == 4) {
		snprintf(buf, cap, "partition %u", ann_ldbe32(k));
		return;
	}
	if (db == ANN_CAT_IDMAP && klen == 8) {
		snprintf(buf, cap, "id %llu", (unsigned long long)ann_ldbe64(k));
		return;
	}
	if (db == ANN_CAT_FREE && klen == 8) {
		snprintf(buf, cap, "offset %llu", (unsigned long long)ann_ldbe64(k));
		return;
	}
	bool text = db == ANN_CAT_META || db == ANN_CAT_MODELS;
	for (size_t i = 0; i < klen && text; i++)
		text = k[i] >= 0x20 && k[i] < 0x7f;
	if (text) {
		snprintf(buf, cap, "'%.*s'", (int)ANN_MIN(klen, 200), (const char *)k);
		return;
	}
	size_t o = (size_t)snprintf(buf, cap, "0x");
	for (size_t i = 0; i < klen && i < 32 && o + 3 < cap; i++)
		o += (size_t)snprintf(buf + o, cap - o, "%02x", k[i]);
}

/* Maps an LMDB result to an ann_status with a message naming path, DBI, key. */
int ann_cat_mdb_fail(const ann_catalog *c, ann_error *err, int rc, const char *what, int db, const void *k,
		    size_t klen)
{
	char kd[256] = "";
	const char *dbn = "";
	/* Not for a caller that takes no message: search looks up a tomb for
	 * every row of a block, and most lookups find none. */
	if (db >= 0 && err) {
		if (k) /* no key: a database, not a record ("open database tomb") */
			ann_cat_key_desc((ann_cat_db)db, k, klen, kd, sizeof kd);
		dbn = ann_cat_db_names[db];
	}
	const char *path = c ? c->path : "catalog";
	/* "get meta 'x'", "commit": no blanks where a part is empty */
	const char *sp1 = *dbn ? " " : "", *sp2 = *kd ? " " : "";
	if (rc > 0) {
		if (rc == ENOMEM)
			return ann_err(err, ANN_E_NOMEM, "%s: %s%s%s%s%s: out of memory", path, what, sp1, dbn, sp2, kd);
		return ann_err_sys(err, rc, "%s: %s%s%s%s%s", path, what, sp1, dbn, sp2, kd);
	}
	int code;
	switch (rc) {
	case MDB_NOTFOUND: code = ANN_E_NOTFOUND; break;
	case MDB_CORRUPTED:
	case MDB_PAGE_NOTFOUND: code = ANN_E_CORRUPT; break;
	case MDB_INVALID:
	case MDB_VERSION_MISMATCH: code = ANN_E_FORMAT; break;
	case MDB_BAD_TXN: code = ANN_E_STATE; break;
	case MDB_BAD_VALSIZE:
	case MDB_BAD_DBI: code = ANN_E_INVAL; break;
	default: code = ANN_E_IO; break;
	}
	return ann_err(err, code, "%s: %s%s%s%s%s: %s", path, what, sp1, dbn, sp2, kd, mdb_strerror(rc));
}

/* ---- the gate ------------------------------------------------------------------ */

static void gate_enter(ann_catalog *c)
{
	pthread_mutex_lock(&c->sh->mu);
	while (c->sh->resizing)
		pthread_cond_wait(&c->sh->cv, &c->sh->mu);
	c->sh->active++;
	pthread_mutex_unlock(&c->sh->mu);
}

static void gate_leave(ann_catalog *c)
{
	pthread_mutex_lock(&c->sh->mu);
	c->sh->active--;
	if (c->sh->active == 0)
		pthread_cond_broadcast(&c->sh->cv);
	pthread_mutex_unlock(&c->sh->mu);
}

/* Sets the map size (0: adopt the size another process set; grow: double the
 * current size unless it already reached at least min_bytes meanwhile). The
 * caller must not be inside the gate. */
static int gate_resize(ann_catalog *c, uint64_t min_bytes, bool grow, ann_error *err)
{
	pthread_mutex_lock(&c->sh->mu);
	while (c->sh->resizing)
		pthread_cond_wait(&c->sh->cv, &c->sh->mu);
	c->sh->resizing = true;
	while (c->sh->active > 0)
		pthread_cond_wait(&c->sh->cv, &c->sh->mu);
	int rc = 0;
	if (!grow) {
		rc = mdb_env_set_mapsize(c->env, 0);
	} else {
		MDB_envinfo info;
		mdb_env_info(c->env, &info);
		if (info.me_mapsize < min_bytes) {
			uint64_t want = (uint64_t)info.me_mapsize * 2;
			if (want < min_bytes)
				want = min_bytes;
			if (want > (uint64_t)SIZE_MAX / 2)
				rc = ENOMEM;
			else
				rc = mdb_env_set_mapsize(c->env, (size_t)want);
			if (rc == 0)
				c->sh->grows++;
		}
	}
	c->sh->resizing = false;
	pthread_cond_broadcast(&c->sh->cv);
	pthread_mutex_unlock(&c->sh->mu);
	if (rc)
		return ann_cat_mdb_fail(c, err, rc, "set map size", -1, NULL, 0);
	return ANN_OK;
}

static uint64_t cur_mapsize(ann_catalog *c)
{
	MDB_envinfo info;
	mdb_env_info(c->env, &info);
	return info.me_mapsize;
}

/* Begins an LMDB txn inside the gate, adopting a map grown by another process. */
static int txn_begin_gated(ann_catalog *c, unsigned flags, MDB_txn **out, ann_error *err)
{
	for (int tries = 0;; tries++) {
		gate_enter(c);
		int rc = mdb_txn_begin(c->env, NULL, flags, out);
		if (rc == 0)
			return ANN_OK;
		gate_leave(c);
		if (rc != MDB_MAP_RESIZED || tries > 8)
			return ann_cat_mdb_fail(c, err, rc, "begin txn", -1, NULL, 0);
		ANN_TRY(gate_resize(c, 0, false, err));
	}
}

/* ---- open / close ----------------------------------------------------------------- */

/* The full page check of the newest snapshot, before anything reads a data
 * page through the map (a truncated or damaged file would fault there). */
static int open_check(ann_catalog *c, ann_error *err)
{
	for (int tries = 0;; tries++) {
		MDB_txn *txn;
		int mrc = mdb_txn_begin(c->env, NULL, MDB_RDONLY, &txn);
		if (mrc == MDB_MAP_RESIZED) {
			mdb_env_set_mapsize(c->env, 0);
			mrc = mdb_txn_begin(c->env, NULL, MDB_RDONLY, &txn);
		}
		if (mrc)
			return ann_cat_mdb_fail(c, err, mrc, "begin txn", -1, NULL, 0);
		int rc = ann_lmdb_pages_check(c->path, c->env, (uint64_t)mdb_txn_id(txn), true, NULL, NULL, 0, err);
		mdb_txn_abort(txn);
		if (rc != ANN_E_STATE || tries >= 4)
			return rc;
	}
}

static int open_dbis(ann_catalog *c, bool create, ann_error *err)
{
	bool wr = create && !c->readonly;
	MDB_txn *txn;
	int rc = mdb_txn_begin(c->env, NULL, wr ? 0 : MDB_RDONLY, &txn);
	if (rc == MDB_MAP_RESIZED) {
		mdb_env_set_mapsize(c->env, 0);
		rc = mdb_txn_begin(c->env, NULL, wr ? 0 : MDB_RDONLY, &txn);
	}
	if (rc)
		return ann_cat_mdb_fail(c, err, rc, "begin txn", -1, NULL, 0);
	for (int i = 0; i < ANN_CAT_NDB; i++) {
		rc = mdb_dbi_open(txn, ann_cat_db_names[i], wr ? MDB_CREATE : 0, &c->dbi[i]);
		if (rc == MDB_NOTFOUND) {
			mdb_txn_abort(txn);
			return ann_err(err, ANN_E_FORMAT, "%s: no database '%s': not an annann catalog", c->path,
				       ann_cat_db_names[i]);
		}
		if (rc) {
			mdb_txn_abort(txn);
			return ann_cat_mdb_fail(c, err, rc, "open database", i, NULL, 0);
		}
	}
	rc = mdb_txn_commit(txn);
	if (rc)
		return ann_cat_mdb_fail(c, err, rc, "commit", -1, NULL, 0);
	return ANN_OK;
}

int ann_cat_check_txn_key(ann_cat_txn *t, ann_error *err)
{
	uint64_t wrote = 0, id = ann_catalog_txn_id(t) - (t->write ? 1 : 0);
	int rc = ann_catalog_meta_get_u64(t, CAT_TXN_KEY, &wrote, err);
	if (rc == ANN_E_NOTFOUND) /* written by a build before the key existed */
		return ANN_OK;
	if (rc < 0)
		return rc;
	if (wrote != id)
		return ann_err(err, ANN_E_CORRUPT, "%s/data.mdb: damaged catalog: the meta page says txn %llu, but that "
			       "snapshot was written by txn %llu (a damaged meta page: LMDB serves an older state); "
			       "rebuild the index (annann build)", t->c->path, (unsigned long long)id,
			       (unsigned long long)wrote);
	return ANN_OK;
}

static int check_format(ann_catalog *c, bool create, ann_error *err)
{
	ann_cat_txn *t = NULL;
	uint64_t major = 0, minor = 0;
	int rc;
	if (create && !c->readonly) {
		ANN_TRY(ann_catalog_write_begin(c, &t, err));
		rc = ann_catalog_meta_get_u64(t, "catalog.major", &major, err);
		if (rc == ANN_E_NOTFOUND) {
			ANN_CHECK(rc, ann_catalog_meta_put_u64(t, "catalog.major", CAT_FORMAT_MAJOR, err));
			ANN_CHECK(rc, ann_catalog_meta_put_u64(t, "catalog.minor", CAT_FORMAT_MINOR, err));
			return ann_catalog_commit(t, err);
		}
		if (rc < 0)
			goto fail;
		ann_catalog_abort(t);
		t = NULL;
	}
	ANN_TRY(ann_catalog_read_begin(c, &t, err));
	rc = ann_catalog_meta_get_u64(t, "catalog.major", &major, err);
	if (rc == ANN_E_NOTFOUND)
		rc = ann_err(err, ANN_E_FORMAT, "%s: meta 'catalog.major' missing: not an annann catalog", c->path);
	if (rc < 0)
		goto fail;
	rc = ann_catalog_meta_get_u64(t, "catalog.minor", &minor, err);
	if (rc == ANN_E_NOTFOUND)
		minor = 0, rc = ANN_OK;
	if (rc < 0)
		goto fail;
	if ((rc = ann_cat_check_txn_key(t, err)) < 0)
		goto fail;
	ann_catalog_read_end(t);
	if (major != CAT_FORMAT_MAJOR)
		return ann_err(err, ANN_E_FORMAT, "%s: catalog format %llu.%llu, this build reads %d.x", c->path,
			       (unsigned long long)major, (unsigned long long)minor, CAT_FORMAT_MAJOR);
	return ANN_OK;
fail:
	if (t && t->write)
		ann_catalog_abort(t);
	else if (t)
		ann_catalog_read_end(t);
	return rc;
}

/* ---- one environment per process --------------------------------------------------
 * LMDB allows one environment per file per process: its locks on lock.mdb
 * are POSIX fcntl locks, which belong to the process and never conflict
 * within it. A second environment's open took the exclusive lock that tells
 * LMDB it is the file's first user and reset the reader table (a live reader
 * of the first lost its slot, so a writer could reuse the pages it read),
 * and its close dropped the first one's locks. So every
 * handle of a directory in this process (an Index and a writer of the same
 * index, an Index and annann.tune) shares one environment, opened by the
 * first and closed by the last; the gate covers all of their txns. A forked
 * child does not use its parent's (LMDB forbids it): it opens its own. */

static pthread_mutex_t shared_mu = PTHREAD_MUTEX_INITIALIZER;
static cat_shared *shared_list; /* under shared_mu */

static void shared_release_locked(cat_shared *sh)
{
	if (--sh->refs > 0)
		return;
	for (cat_shared **p = &shared_list; *p; p = &(*p)->next)
		if (*p == sh) {
			*p = sh->next;
			break;
		}
	mdb_env_close(sh->env);
	pthread_mutex_destroy(&sh->mu);
	pthread_cond_destroy(&sh->cv);
	ann_free(sh);
}

/* Whether this process may open the environment at path read-write: the
 * directory, and data.mdb and lock.mdb where they exist, writable. */
static bool env_writable(const char *path)
{
	if (access(path, W_OK) != 0)
		return false;
	static const char *const files[] = {"data.mdb", "lock.mdb"};
	for (size_t i = 0; i < 2; i++) {
		char f[4200];
		snprintf(f, sizeof f, "%s/%s", path, files[i]);
		if (access(f, W_OK) != 0 && errno != ENOENT)
			return false;
	}
	return true;
}

/* A new environment for the directory path (identity st). */
static int shared_new_locked(ann_catalog *c, const char *path, const struct stat *st, const ann_catalog_opts *o,
			     ann_error *err)
{
	uint64_t map = o->map_bytes;
	if (map == 0) {
		char dpath[4200];
		snprintf(dpath, sizeof dpath, "%s/data.mdb", path);
		struct stat ds;
		map = CAT_DEFAULT_MAP;
		if (stat(dpath, &ds) == 0 && (uint64_t)ds.st_size * 2 > map)
			map = (uint64_t)ds.st_size * 2;
	}
	if (map > SIZE_MAX / 2)
		map = SIZE_MAX / 2;
	cat_shared *sh = ann_calloc(1, sizeof *sh);
	if (!sh)
		return ann_err(err, ANN_E_NOMEM, "%s: out of memory opening the catalog", path);
	int rc = mdb_env_create(&sh->env);
	if (rc) {
		ann_free(sh);
		return ann_cat_mdb_fail(c, err, rc, "create environment", -1, NULL, 0);
	}
	mdb_env_set_maxdbs(sh->env, 16);
	mdb_env_set_maxreaders(sh->env, o->max_readers ? o->max_readers : 510);
	mdb_env_set_mapsize(sh->env, (size_t)map);
	/* Read-write whenever the directory and its files allow it, so that a
	 * writer opened after a reader of the same index can share the
	 * environment; read-only where they do not, as the handle asked. */
	sh->readonly = o->readonly && !env_writable(path);
	rc = ann_lmdb_meta_precheck(path, err);
	if (rc == ANN_OK) {
		int mrc = mdb_env_open(sh->env, path, MDB_NOTLS | (sh->readonly ? MDB_RDONLY : 0), 0644);
		if (mrc)
			rc = ann_cat_mdb_fail(c, err, mrc, "open environment", -1, NULL, 0);
	}
	if (rc < 0) {
		mdb_env_close(sh->env);
		ann_free(sh);
		return rc;
	}
	sh->dev = st->st_dev;
	sh->ino = st->st_ino;
	sh->pid = getpid();
	sh->refs = 1;
	pthread_mutex_init(&sh->mu, NULL);
	pthread_cond_init(&sh->cv, NULL);
	sh->next = shared_list;
	shared_list = sh;
	c->sh = sh;
	c->env = sh->env;
	return ANN_OK;
}

/* ann_catalog_open under shared_mu: the directory, its environment (shared or
 * new), the checks of a new handle. */
static int open_locked(ann_catalog *c, const char *path, const ann_catalog_opts *o, ann_error *err)
{
	struct stat st;
	if (stat(path, &st) != 0) {
		if (errno != ENOENT)
			return ann_err_sys(err, errno, "%s: cannot stat", path);
		if (!o->create || o->readonly)
			return ann_err(err, ANN_E_NOTFOUND, "%s: no such catalog", path);
		if (mkdir(path, 0755) != 0 && errno != EEXIST)
			return ann_err_sys(err, errno, "%s: cannot create directory", path);
		if (stat(path, &st) != 0)
			return ann_err_sys(err, errno, "%s: cannot stat", path);
	}
	if (!S_ISDIR(st.st_mode))
		return ann_err(err, ANN_E_FORMAT, "%s: not a directory (catalog.lmdb is a directory)", path);
	pid_t me = getpid();
	for (cat_shared *sh = shared_list; sh; sh = sh->next)
		if (sh->dev == st.st_dev && sh->ino == st.st_ino && sh->pid == me) {
			if (sh->readonly && !o->readonly)
				return ann_err(err, ANN_E_INVAL, "%s: open read-only in this process (the directory or "
					       "its files are not writable), so it cannot be opened for writing too", path);
			sh->refs++;
			c->sh = sh;
			c->env = sh->env;
			break;
		}
	if (!c->sh)
		ANN_TRY(shared_new_locked(c, path, &st, o, err));
	int dead = 0;
	mdb_reader_check(c->env, &dead);
	ANN_TRY(open_check(c, err));
	ANN_TRY(open_dbis(c, o->create, err));
	return check_format(c, o->create, err);
}

int ann_catalog_open(const char *path, const ann_catalog_opts *o, ann_catalog **out, ann_error *err)
{
	ann_catalog_opts defaults;
	if (!o) {
		ann_catalog_opts_init(&defaults);
		o = &defaults;
	}
	*out = NULL;
	int rc;
	ann_catalog *c = ann_calloc(1, sizeof *c);
	if (!c)
		return ann_err(err, ANN_E_NOMEM, "%s: out of memory opening the catalog", path);
	size_t plen = strlen(path);
	c->path = ann_malloc(plen + 1);
	if (!c->path) {
		ann_free(c);
		return ann_err(err, ANN_E_NOMEM, "%s: out of memory opening the catalog", path);
	}
	memcpy(c->path, path, plen + 1);
	c->readonly = o->readonly;
	/* Held through the whole open: the registry, and mdb_dbi_open, which
	 * two txns of one environment must not call at once. */
	pthread_mutex_lock(&shared_mu);
	rc = open_locked(c, path, o, err);
	if (rc < 0 && c->sh) {
		shared_release_locked(c->sh);
		c->sh = NULL;
		c->env = NULL;
	}
	pthread_mutex_unlock(&shared_mu);
	if (rc < 0) {
		ann_catalog_close(c);
		return rc;
	}
	*out = c;
	return ANN_OK;
}

void ann_catalog_close(ann_catalog *c)
{
	if (!c)
		return;
	if (c->sh) {
		pthread_mutex_lock(&shared_mu);
		shared_release_locked(c->sh);
		pthread_mutex_unlock(&shared_mu);
	}
	ann_free(c->path);
	ann_free(c);
}

/* ---- transactions ------------------------------------------------------------------ */

int ann_catalog_write_begin(ann_catalog *c, ann_cat_txn **out, ann_error *err)
{
	*out = NULL;
	if (c->readonly)
		return ann_err(err, ANN_E_INVAL, "%s: opened read-only, no write txn", c->path);
	ann_cat_txn *t = ann_calloc(1, sizeof *t);
	if (!t)
		return ann_err(err, ANN_E_NOMEM, "%s: out of memory for a write transaction", c->path);
	t->c = c;
	t->write = true;
	/* Keep a quarter of the map as headroom so MAP_FULL and its replay stay rare. */
	MDB_envinfo info;
	MDB_stat est;
	mdb_env_info(c->env, &info);
	mdb_env_stat(c->env, &est);
	uint64_t used = ((uint64_t)info.me_last_pgno + 1) * est.ms_psize;
	if (used > (uint64_t)info.me_mapsize / 4 * 3) {
		int rc = gate_resize(c, (uint64_t)info.me_mapsize * 2, true, err);
		if (rc < 0) {
			ann_free(t);
			return rc;
		}
	}
	int rc = txn_begin_gated(c, 0, &t->txn, err);
	if (rc < 0) {
		ann_free(t);
		return rc;
	}
	t->in_gate = true;
	/* Refuse to write into a damaged catalog: LMDB would hand out pages
	 * from a bad free list and overwrite live data (the cheap check: the
	 * main and free trees, the free list, the page accounting). */
	rc = ann_lmdb_pages_check(c->path, c->env, (uint64_t)mdb_txn_id(t->txn) - 1, false, NULL, NULL, 0, err);
	if (rc < 0) {
		ann_catalog_abort(t);
		return rc;
	}
	*out = t;
	return ANN_OK;
}

static void txn_release(ann_cat_txn *t)
{
	if (t->txn)
		mdb_txn_abort(t->txn);
	t->txn = NULL;
	if (t->in_gate)
		gate_leave(t->c);
	t->in_gate = false;
}

void ann_catalog_abort(ann_cat_txn *t)
{
	if (!t)
		return;
	txn_release(t);
	ann_free(t->log);
	ann_free(t);
}

int ann_catalog_read_begin(ann_catalog *c, ann_cat_txn **out, ann_error *err)
{
	*out = NULL;
	ann_cat_txn *t = ann_calloc(1, sizeof *t);
	if (!t)
		return ann_err(err, ANN_E_NOMEM, "%s: out of memory for a read transaction", c->path);
	t->c = c;
	int rc = txn_begin_gated(c, MDB_RDONLY, &t->txn, err);
	if (rc < 0) {
		ann_free(t);
		return rc;
	}
	t->in_gate = true;
	*out = t;
	return ANN_OK;
}

void ann_catalog_read_end(ann_cat_txn *t)
{
	ann_catalog_abort(t);
}

void ann_catalog_read_reset(ann_cat_txn *t)
{
	if (!t->in_gate)
		return;
	mdb_txn_reset(t->txn);
	gate_leave(t->c);
	t->in_gate = false;
}

int ann_catalog_read_renew(ann_cat_txn *t, ann_error *err)
{
	if (t->in_gate)
		return ANN_OK;
	for (int tries = 0;; tries++) {
		gate_enter(t->c);
		int rc = mdb_txn_renew(t->txn);
		if (rc == 0) {
			t->in_gate = true;
			return ANN_OK;
		}
		gate_leave(t->c);
		if (rc != MDB_MAP_RESIZED || tries > 8)
			return ann_cat_mdb_fail(t->c, err, rc, "renew read txn", -1, NULL, 0);
		/* mdb_txn_renew left the txn reset; adopt the new size and retry. */
		ANN_TRY(gate_resize(t->c, 0, false, err));
	}
}

bool ann_catalog_txn_is_write(const ann_cat_txn *t)
{
	return t->write;
}

uint64_t ann_catalog_txn_id(const ann_cat_txn *t)
{
	return t->txn ? (uint64_t)mdb_txn_id(t->txn) : 0;
}

uint64_t ann_catalog_last_txnid(ann_catalog *c)
{
	MDB_envinfo info;
	mdb_env_info(c->env, &info);
	return (uint64_t)info.me_last_txnid;
}

struct oldest_ctx {
	uint64_t oldest;
};

static int oldest_cb(const char *msg, void *ctx)
{
	struct oldest_ctx *oc = ctx;
	int pid;
	size_t tid;
	char tx[32];
	if (sscanf(msg, "%d %zx %31s", &pid, &tid, tx) != 3 || tx[0] == '-')
		return 0;
	char *end;
	unsigned long long v = strtoull(tx, &end, 10);
	if (end != tx && v < oc->oldest)
		oc->oldest = v;
	return 0;
}

int ann_catalog_oldest_reader(ann_catalog *c, uint64_t *out, ann_error *err)
{
	struct oldest_ctx oc = { UINT64_MAX };
	int dead = 0;
	mdb_reader_check(c->env, &dead);
	int rc = mdb_reader_list(c->env, oldest_cb, &oc);
	if (rc < 0)
		return ann_err(err, ANN_E_IO, "%s: cannot list readers (%d)", c->path, rc);
	*out = oc.oldest;
	return ANN_OK;
}

int ann_cat_txn_usable(ann_cat_txn *t, bool need_write, ann_error *err)
{
	if (t->failed)
		return ann_err(err, ANN_E_STATE, "%s: txn failed earlier; only abort remains", t->c->path);
	if (need_write && !t->write)
		return ann_err(err, ANN_E_INVAL, "%s: write in a read txn", t->c->path);
	if (!t->txn || !t->in_gate)
		return ann_err(err, ANN_E_STATE, "%s: txn is not active", t->c->path);
	return ANN_OK;
}

static int log_append(ann_cat_txn *t, int op, ann_cat_db db, const void *k, size_t klen, const void *v1,
		      size_t n1, const void *v2, size_t n2, ann_error *err)
{
	size_t vlen = n1 + n2;
	size_t rec = LOG_HDR + ANN_ALIGN_UP(klen + vlen, 8);
	if (t->log_len + rec > t->log_cap) {
		size_t cap = t->log_cap ? t->log_cap : 4096;
		while (cap < t->log_len + rec)
			cap *= 2;
		uint8_t *p = ann_realloc(t->log, cap);
		if (!p)
			return ann_err(err, ANN_E_NOMEM, "%s: txn log of %zu bytes: out of memory", t->c->path, cap);
		t->log = p;
		t->log_cap = cap;
	}
	uint8_t *h = t->log + t->log_len;
	memset(h, 0, rec);
	h[0] = (uint8_t)op;
	h[1] = (uint8_t)db;
	ann_st32(h + 4, (uint32_t)klen);
	ann_st64(h + 8, vlen);
	memcpy(h + LOG_HDR, k, klen);
	if (n1)
		memcpy(h + LOG_HDR + klen, v1, n1);
	if (n2)
		memcpy(h + LOG_HDR + klen + n1, v2, n2);
	t->log_len += rec;
	return ANN_OK;
}

static int apply_put(ann_cat_txn *t, ann_cat_db db, const void *k, size_t klen, const void *v1, size_t n1,
		     const void *v2, size_t n2)
{
	MDB_val key = { klen, (void *)k }, val = { n1 + n2, NULL };
	int rc = mdb_put(t->txn, t->c->dbi[db], &key, &val, MDB_RESERVE);
	if (rc)
		return rc;
	if (n1)
		memcpy(val.mv_data, v1, n1);
	if (n2)
		memcpy((uint8_t *)val.mv_data + n1, v2, n2);
	return 0;
}

static int apply_del(ann_cat_txn *t, ann_cat_db db, const void *k, size_t klen)
{
	MDB_val key = { klen, (void *)k };
	return mdb_del(t->txn, t->c->dbi[db], &key, NULL);
}

/* After MDB_MAP_FULL (t->txn already aborted or freed): grow the map and
 * replay the log into a new txn. */
static int grow_and_replay(ann_cat_txn *t, ann_error *err)
{
	ann_catalog *c = t->c;
	int rc = ANN_E_IO;
	for (int attempt = 0; attempt < 48; attempt++) {
		if (t->txn)
			mdb_txn_abort(t->txn);
		t->txn = NULL;
		if (t->in_gate)
			gate_leave(c);
		t->in_gate = false;
		rc = gate_resize(c, cur_mapsize(c) * 2, true, err);
		if (rc < 0)
			goto failed;
		rc = txn_begin_gated(c, 0, &t->txn, err);
		if (rc < 0) {
			t->txn = NULL;
			goto failed;
		}
		t->in_gate = true;
		int mrc = 0;
		size_t pos = 0;
		while (pos < t->log_len && mrc == 0) {
			const uint8_t *h = t->log + pos;
			ann_cat_db db = (ann_cat_db)h[1];
			size_t klen = ann_ld32(h + 4);
			size_t vlen = (size_t)ann_ld64(h + 8);
			const uint8_t *k = h + LOG_HDR;
			if (h[0] == OP_PUT)
				mrc = apply_put(t, db, k, klen, k + klen, vlen, NULL, 0);
			else
				mrc = apply_del(t, db, k, klen);
			pos += LOG_HDR + ANN_ALIGN_UP(klen + vlen, 8);
		}
		if (mrc == 0)
			return ANN_OK;
		if (mrc != MDB_MAP_FULL) {
			rc = ann_cat_mdb_fail(c, err, mrc, "replay after map growth", -1, NULL, 0);
			goto failed;
		}
	}
	rc = ann_err(err, ANN_E_IO, "%s: map still full after 48 doublings", c->path);
failed:
	t->failed = true;
	return rc;
}

static int raw_put(ann_cat_txn *t, ann_cat_db db, const void *k, size_t klen, const void *v1, size_t n1,
		   const void *v2, size_t n2, ann_error *err)
{
	ANN_TRY(ann_cat_txn_usable(t, true, err));
	if (klen == 0 || klen > CAT_MAX_KEY)
		return ann_err(err, ANN_E_INVAL, "%s: %s key of %zu bytes (1..%u allowed)", t->c->path, ann_cat_db_names[db],
			       klen, CAT_MAX_KEY);
	int rc = log_append(t, OP_PUT, db, k, klen, v1, n1, v2, n2, err);
	if (rc < 0) {
		t->failed = true;
		return rc;
	}
	int mrc = apply_put(t, db, k, klen, v1, n1, v2, n2);
	if (mrc == MDB_MAP_FULL)
		return grow_and_replay(t, err);
	if (mrc) {
		t->failed = true;
		return ann_cat_mdb_fail(t->c, err, mrc, "put", db, k, klen);
	}
	return ANN_OK;
}

static int raw_del(ann_cat_txn *t, ann_cat_db db, const void *k, size_t klen, ann_error *err)
{
	ANN_TRY(ann_cat_txn_usable(t, true, err));
	if (klen == 0 || klen > CAT_MAX_KEY)
		return ann_err(err, ANN_E_INVAL, "%s: %s key of %zu bytes", t->c->path, ann_cat_db_names[db], klen);
	size_t mark = t->log_len;
	int rc = log_append(t, OP_DEL, db, k, klen, NULL, 0, NULL, 0, err);
	if (rc < 0) {
		t->failed = true;
		return rc;
	}
	int mrc = apply_del(t, db, k, klen);
	if (mrc == MDB_NOTFOUND) {
		t->log_len = mark;
		return ann_cat_mdb_fail(t->c, err, mrc, "delete", db, k, klen);
	}
	if (mrc == MDB_MAP_FULL)
		return grow_and_replay(t, err);
	if (mrc) {
		t->failed = true;
		return ann_cat_mdb_fail(t->c, err, mrc, "delete", db, k, klen);
	}
	return ANN_OK;
}

int ann_catalog_commit(ann_cat_txn *t, ann_error *err)
{
	int rc = ann_cat_txn_usable(t, true, err);
	if (rc == ANN_OK)
		rc = ann_catalog_meta_put_u64(t, CAT_TXN_KEY, (uint64_t)mdb_txn_id(t->txn), err);
	if (rc < 0) {
		ann_catalog_abort(t);
		return rc;
	}
	for (int attempt = 0;; attempt++) {
		int mrc = mdb_txn_commit(t->txn);
		t->txn = NULL; /* freed by LMDB whatever the result */
		if (mrc == 0)
			break;
		if (mrc != MDB_MAP_FULL || attempt > 8) {
			rc = ann_cat_mdb_fail(t->c, err, mrc, "commit", -1, NULL, 0);
			ann_catalog_abort(t);
			return rc;
		}
		rc = grow_and_replay(t, err);
		if (rc < 0) {
			ann_catalog_abort(t);
			return rc;
		}
	}
	ann_catalog_abort(t); /* leaves the gate, frees the log */
	return ANN_OK;
}

/* ---- checked values ------------------------------------------------------------------ */

uint64_t ann_cat_value_sum(const void *k, size_t klen, const void *p, size_t n)
{
	return XXH64(p, n, XXH64(k, klen, 0));
}

int ann_catalog_put(ann_cat_txn *t, ann_cat_db db, const void *key, size_t klen, const void *val, size_t vlen,
		ann_error *err)
{
	if ((unsigned)db >= ANN_CAT_NDB || db == ANN_CAT_BLOCKS)
		return ann_err(err, ANN_E_INVAL, "ann_catalog_put: bad database %d", (int)db);
	uint8_t sum[CAT_SUM];
	ann_st64(sum, ann_cat_value_sum(key, klen, val, vlen));
	return raw_put(t, db, key, klen, val, vlen, sum, CAT_SUM, err);
}

/* Checks a stored value; on success val and vlen describe the payload. */
int ann_cat_check_value(const ann_cat_txn *t, ann_cat_db db, const MDB_val *k, const MDB_val *v,
		       const uint8_t **val, size_t *vlen, ann_error *err)
{
	char kd[256];
	if (v->mv_size < CAT_SUM) {
		ann_cat_key_desc(db, k->mv_data, k->mv_size, kd, sizeof kd);
		return ann_err(err, ANN_E_CORRUPT, "%s: %s %s: value of %zu bytes, at least %u expected", t->c->path,
			       ann_cat_db_names[db], kd, v->mv_size, CAT_SUM);
	}
	size_t n = v->mv_size - CAT_SUM;
	const uint8_t *p = v->mv_data;
	uint64_t want = ann_ld64(p + n), got = ann_cat_value_sum(k->mv_data, k->mv_size, p, n);
	if (want != got) {
		ann_cat_key_desc(db, k->mv_data, k->mv_size, kd, sizeof kd);
		return ann_err(err, ANN_E_CORRUPT,
			       "%s: %s %s: value checksum mismatch (stored %016llx, computed %016llx)", t->c->path,
			       ann_cat_db_names[db], kd, (unsigned long long)want, (unsigned long long)got);
	}
	*val = p;
	*vlen = n;
	return ANN_OK;
}

int ann_catalog_get(ann_cat_txn *t, ann_cat_db db, const void *key, size_t klen, const uint8_t **val, size_t *vlen,
		ann_error *err)
{
	ANN_TRY(ann_cat_txn_usable(t, false, err));
	if ((unsigned)db >= ANN_CAT_NDB || db == ANN_CAT_BLOCKS)
		return ann_err(err, ANN_E_INVAL, "ann_catalog_get: bad database %d", (int)db);
	if (klen == 0 || klen > CAT_MAX_KEY)
		return ann_err(err, ANN_E_INVAL, "%s: %s key of %zu bytes", t->c->path, ann_cat_db_names[db], klen);
	MDB_val k = { klen, (void *)key }, v;
	int rc = mdb_get(t->txn, t->c->dbi[db], &k, &v);
	if (rc)
		return ann_cat_mdb_fail(t->c, err, rc, "get", db, key, klen);
	return ann_cat_check_value(t, db, &k, &v, val, vlen, err);
}

int ann_catalog_del(ann_cat_txn *t, ann_cat_db db, const void *key, size_t klen, ann_error *err)
{
	if ((unsigned)db >= ANN_CAT_NDB)
		return ann_err(err, ANN_E_INVAL, "ann_catalog_del: bad database %d", (int)db);
	return raw_del(t, db, key, klen, err);
}

int ann_cat_foreach(ann_cat_txn *t, ann_cat_db db, const void *from, size_t flen, ann_cat_each_fn fn,
			void *ctx, bool skip_bad, ann_error *err)
{
	ANN_TRY(ann_cat_txn_usable(t, false, err));
	if ((unsigned)db >= ANN_CAT_NDB || db == ANN_CAT_BLOCKS)
		return ann_err(err, ANN_E_INVAL, "ann_catalog_foreach: bad database %d", (int)db);
	MDB_cursor *cur;
	int mrc = mdb_cursor_open(t->txn, t->c->dbi[db], &cur);
	if (mrc)
		return ann_cat_mdb_fail(t->c, err, mrc, "open cursor", db, NULL, 0);
	MDB_val k = { flen, (void *)from }, v;
	mrc = mdb_cursor_get(cur, &k, &v, from ? MDB_SET_RANGE : MDB_FIRST);
	int rc = ANN_OK;
	while (mrc == 0) {
		const uint8_t *p = NULL;
		size_t n = 0;
		ann_error e2;
		rc = ann_cat_check_value(t, db, &k, &v, &p, &n, skip_bad ? &e2 : err);
		if (rc < 0 && skip_bad) {
			rc = ANN_OK;
		} else {
			if (rc < 0)
				break;
			rc = fn(ctx, k.mv_data, k.mv_size, p, n, err);
			if (rc != 0)
				break;
		}
		mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
	}
	mdb_cursor_close(cur);
	if (rc < 0)
		return rc;
	if (mrc && mrc != MDB_NOTFOUND)
		return ann_cat_mdb_fail(t->c, err, mrc, "iterate", db, NULL, 0);
	return ANN_OK;
}

int ann_catalog_foreach(ann_cat_txn *t, ann_cat_db db, const void *from, size_t flen, ann_cat_each_fn fn, void *ctx,
		    ann_error *err)
{
	return ann_cat_foreach(t, db, from, flen, fn, ctx, false, err);
}

int ann_catalog_foreach_valid(ann_cat_txn *t, ann_cat_db db, const void *from, size_t flen, ann_cat_each_fn fn,
			      void *ctx, ann_error *err)
{
	return ann_cat_foreach(t, db, from, flen, fn, ctx, true, err);
}

int ann_catalog_count(ann_cat_txn *t, ann_cat_db db, uint64_t *out, ann_error *err)
{
	ANN_TRY(ann_cat_txn_usable(t, false, err));
	MDB_stat st;
	int mrc = mdb_stat(t->txn, t->c->dbi[db], &st);
	if (mrc)
		return ann_cat_mdb_fail(t->c, err, mrc, "stat", db, NULL, 0);
	*out = st.ms_entries;
	return ANN_OK;
}

/* ---- LMDB-store blocks ------------------------------------------------------------------ */

int ann_catalog_block_put(ann_cat_txn *t, uint32_t pid, const void *buf, size_t n, ann_error *err)
{
	uint8_t k[4];
	ann_stbe32(k, pid);
	return raw_put(t, ANN_CAT_BLOCKS, k, 4, buf, n, NULL, 0, err);
}

int ann_catalog_block_get(ann_cat_txn *t, uint32_t pid, const uint8_t **buf, size_t *n, ann_error *err)
{
	ANN_TRY(ann_cat_txn_usable(t, false, err));
	uint8_t kb[4];
	ann_stbe32(kb, pid);
	MDB_val k = { 4, kb }, v;
	int rc = mdb_get(t->txn, t->c->dbi[ANN_CAT_BLOCKS], &k, &v);
	if (rc)
		return ann_cat_mdb_fail(t->c, err, rc, "get", ANN_CAT_BLOCKS, kb, 4);
	*buf = v.mv_data;
	*n = v.mv_size;
	return ANN_OK;
}

int ann_catalog_block_del(ann_cat_txn *t, uint32_t pid, ann_error *err)
{
	uint8_t k[4];
	ann_stbe32(k, pid);
	return raw_del(t, ANN_CAT_BLOCKS, k, 4, err);
}

int ann_catalog_block_foreach(ann_cat_txn *t, ann_cat_block_fn fn, void *ctx, ann_error *err)
{
	ANN_TRY(ann_cat_txn_usable(t, false, err));
	MDB_cursor *cur;
	int mrc = mdb_cursor_open(t->txn, t->c->dbi[ANN_CAT_BLOCKS], &cur);
	if (mrc)
		return ann_cat_mdb_fail(t->c, err, mrc, "open cursor", ANN_CAT_BLOCKS, NULL, 0);
	MDB_val k, v;
	int rc = ANN_OK;
	while ((mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) == 0) {
		uint32_t pid = k.mv_size == 4 ? ann_ldbe32(k.mv_data) : UINT32_MAX;
		rc = fn(ctx, pid, v.mv_data, v.mv_size, err);
		if (rc != 0)
			break;
	}
	mdb_cursor_close(cur);
	if (rc < 0)
		return rc;
	if (mrc && mrc != MDB_NOTFOUND)
		return ann_cat_mdb_fail(t->c, err, mrc, "iterate", ANN_CAT_BLOCKS, NULL, 0);
	return ANN_OK;
}

/* ---- space ------------------------------------------------------------------------------- */

int ann_catalog_space_get(ann_catalog *c, ann_catalog_space *sp, ann_error *err)
{
	memset(sp, 0, sizeof *sp);
	char dpath[4200];
	snprintf(dpath, sizeof dpath, "%s/data.mdb", c->path);
	struct stat st;
	if (stat(dpath, &st) != 0)
		return ann_err_sys(err, errno, "%s: cannot stat", dpath);
	sp->file_bytes = (uint64_t)st.st_size;
	sp->disk_bytes = (uint64_t)st.st_blocks * 512;
	MDB_envinfo info;
	MDB_stat est;
	mdb_env_info(c->env, &info);
	mdb_env_stat(c->env, &est);
	sp->map_bytes = info.me_mapsize;
	sp->page_bytes = est.ms_psize;
	sp->last_page = (uint64_t)info.me_last_pgno + 1;
	pthread_mutex_lock(&c->sh->mu);
	sp->map_grows = c->sh->grows;
	pthread_mutex_unlock(&c->sh->mu);

	ann_cat_txn *t;
	ANN_TRY(ann_catalog_read_begin(c, &t, err));
	int rc = ANN_OK;
	for (int i = 0; i < ANN_CAT_NDB; i++) {
		MDB_stat s;
		int mrc = mdb_stat(t->txn, c->dbi[i], &s);
		if (mrc) {
			rc = ann_cat_mdb_fail(c, err, mrc, "stat", i, NULL, 0);
			goto out;
		}
		sp->db_pages[i] = s.ms_branch_pages + s.ms_leaf_pages + s.ms_overflow_pages;
		sp->db_entries[i] = s.ms_entries;
	}
	/* LMDB's free list lives in DBI 0: values are page-number lists whose
	 * first word is their length. */
	MDB_cursor *cur;
	int mrc = mdb_cursor_open(t->txn, 0, &cur);
	if (mrc) {
		rc = ann_cat_mdb_fail(c, err, mrc, "open free-list cursor", -1, NULL, 0);
		goto out;
	}
	MDB_val k, v;
	while ((mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) == 0) {
		size_t cnt;
		if (v.mv_size >= sizeof cnt) {
			memcpy(&cnt, v.mv_data, sizeof cnt);
			sp->free_pages += cnt;
		}
	}
	mdb_cursor_close(cur);
out:
	ann_catalog_read_end(t);
	if (sp->free_pages > sp->last_page)
		sp->free_pages = sp->last_page;
	sp->used_bytes = (sp->last_page - sp->free_pages) * sp->page_bytes;
	return rc;
}

