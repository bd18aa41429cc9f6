/* SPDX-License-Identifier: MIT */
/*
 * catalog.c: the LMDB environment catalog.lmdb (see catalog.h): opening and
 * creating it, transactions with transparent map growth, checksummed values,
 * typed meta, the partition directory, free extents, LMDB-store blocks, space
 * figures and value verification. Format: docs/FORMAT.md "catalog.lmdb".
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
#include "catalog.h"
#include "catalog_pages.h"

#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#define CAT_FORMAT_MAJOR 1
#define CAT_FORMAT_MINOR 0
#define CAT_DEFAULT_MAP (16ull << 30)
#define CAT_MAX_KEY 511u
#define CAT_SUM 8u /* appended checksum bytes */
/* meta key: the LMDB txn id of the commit that wrote it (every commit does).
 * A snapshot whose id differs was served from a damaged meta page. */
#define CAT_TXN_KEY "catalog.txn"

static const char *const db_names[ANN_CAT_NDB] = {
	"meta", "parts", "models", "idmap", "free", "tomb", "delta", "blocks",
};

struct ann_catalog {
	MDB_env *env;
	MDB_dbi dbi[ANN_CAT_NDB];
	char *path;    /* catalog.lmdb directory */
	bool readonly; /* opened MDB_RDONLY */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	unsigned active;  /* txns of this process inside the gate */
	bool resizing;    /* a resize waits for active == 0 or runs */
	uint64_t grows;   /* map doublings done by this handle (under mu) */
};

/* Log of a write txn: records of [u8 op][u8 db][u16 0][u32 klen][u64 vlen]
 * key value, each padded to 8 bytes. */
enum { OP_PUT = 1, OP_DEL = 2 };
#define LOG_HDR 16u

struct ann_cat_txn {
	ann_catalog *c;
	MDB_txn *txn;   /* NULL when reset (read) or after a failed replay */
	bool write;     /* write txn */
	bool failed;    /* sticky: only abort remains */
	bool in_gate;   /* counted in c->active */
	uint8_t *log;   /* write txns: operations for replay */
	size_t log_len; /* bytes used in log */
	size_t log_cap; /* bytes allocated */
};

const char *ann_catalog_db_name(ann_cat_db db)
{
	return (unsigned)db < ANN_CAT_NDB ? db_names[db] : "?";
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

static void key_desc(ann_cat_db db, const uint8_t *k, size_t klen, char *buf, size_t cap)
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
static int mdb_fail(const ann_catalog *c, ann_error *err, int rc, const char *what, int db, const void *k,
		    size_t klen)
{
	char kd[256] = "";
	const char *dbn = "";
	if (db >= 0) {
		key_desc((ann_cat_db)db, k, klen, kd, sizeof kd);
		dbn = db_names[db];
	}
	const char *path = c ? c->path : "catalog";
	if (rc > 0) {
		if (rc == ENOMEM)
			return ann_err(err, ANN_E_NOMEM, "%s: %s %s %s: out of memory", path, what, dbn, kd);
		return ann_err_sys(err, rc, "%s: %s %s %s", path, what, dbn, kd);
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
	return ann_err(err, code, "%s: %s %s %s: %s", path, what, dbn, kd, mdb_strerror(rc));
}

/* ---- the gate ------------------------------------------------------------------ */

static void gate_enter(ann_catalog *c)
{
	pthread_mutex_lock(&c->mu);
	while (c->resizing)
		pthread_cond_wait(&c->cv, &c->mu);
	c->active++;
	pthread_mutex_unlock(&c->mu);
}

static void gate_leave(ann_catalog *c)
{
	pthread_mutex_lock(&c->mu);
	c->active--;
	if (c->active == 0)
		pthread_cond_broadcast(&c->cv);
	pthread_mutex_unlock(&c->mu);
}

/* Sets the map size (0: adopt the size another process set; grow: double the
 * current size unless it already reached at least min_bytes meanwhile). The
 * caller must not be inside the gate. */
static int gate_resize(ann_catalog *c, uint64_t min_bytes, bool grow, ann_error *err)
{
	pthread_mutex_lock(&c->mu);
	while (c->resizing)
		pthread_cond_wait(&c->cv, &c->mu);
	c->resizing = true;
	while (c->active > 0)
		pthread_cond_wait(&c->cv, &c->mu);
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
				c->grows++;
		}
	}
	c->resizing = false;
	pthread_cond_broadcast(&c->cv);
	pthread_mutex_unlock(&c->mu);
	if (rc)
		return mdb_fail(c, err, rc, "set map size", -1, NULL, 0);
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
			return mdb_fail(c, err, rc, "begin txn", -1, NULL, 0);
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
			return mdb_fail(c, err, mrc, "begin txn", -1, NULL, 0);
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
		return mdb_fail(c, err, rc, "begin txn", -1, NULL, 0);
	for (int i = 0; i < ANN_CAT_NDB; i++) {
		rc = mdb_dbi_open(txn, db_names[i], wr ? MDB_CREATE : 0, &c->dbi[i]);
		if (rc == MDB_NOTFOUND) {
			mdb_txn_abort(txn);
			return ann_err(err, ANN_E_FORMAT, "%s: no database '%s': not an annann catalog", c->path,
				       db_names[i]);
		}
		if (rc) {
			mdb_txn_abort(txn);
			return mdb_fail(c, err, rc, "open database", i, NULL, 0);
		}
	}
	rc = mdb_txn_commit(txn);
	if (rc)
		return mdb_fail(c, err, rc, "commit", -1, NULL, 0);
	return ANN_OK;
}

static int check_txn_key(ann_cat_txn *t, ann_error *err)
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
	if ((rc = check_txn_key(t, err)) < 0)
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
		return ann_err(err, ANN_E_NOMEM, "%s: out of memory", path);
	size_t plen = strlen(path);
	c->path = ann_malloc(plen + 1);
	if (!c->path) {
		ann_free(c);
		return ann_err(err, ANN_E_NOMEM, "%s: out of memory", path);
	}
	memcpy(c->path, path, plen + 1);
	c->readonly = o->readonly;
	pthread_mutex_init(&c->mu, NULL);
	pthread_cond_init(&c->cv, NULL);

	struct stat st;
	if (stat(path, &st) != 0) {
		if (errno != ENOENT) {
			rc = ann_err_sys(err, errno, "%s: cannot stat", path);
			goto fail;
		}
		if (!o->create || o->readonly) {
			rc = ann_err(err, ANN_E_NOTFOUND, "%s: no such catalog", path);
			goto fail;
		}
		if (mkdir(path, 0755) != 0 && errno != EEXIST) {
			rc = ann_err_sys(err, errno, "%s: cannot create directory", path);
			goto fail;
		}
	} else if (!S_ISDIR(st.st_mode)) {
		rc = ann_err(err, ANN_E_FORMAT, "%s: not a directory (catalog.lmdb is a directory)", path);
		goto fail;
	}

	uint64_t map = o->map_bytes;
	if (map == 0) {
		char dpath[4200];
		snprintf(dpath, sizeof dpath, "%s/data.mdb", path);
		map = CAT_DEFAULT_MAP;
		if (stat(dpath, &st) == 0 && (uint64_t)st.st_size * 2 > map)
			map = (uint64_t)st.st_size * 2;
	}
	if (map > SIZE_MAX / 2)
		map = SIZE_MAX / 2;
	rc = mdb_env_create(&c->env);
	if (rc) {
		c->env = NULL;
		rc = mdb_fail(c, err, rc, "create environment", -1, NULL, 0);
		goto fail;
	}
	mdb_env_set_maxdbs(c->env, 16);
	mdb_env_set_maxreaders(c->env, o->max_readers ? o->max_readers : 510);
	mdb_env_set_mapsize(c->env, (size_t)map);
	ANN_CHECK(rc, ann_lmdb_meta_precheck(path, err));
	rc = mdb_env_open(c->env, path, MDB_NOTLS | (o->readonly ? MDB_RDONLY : 0), 0644);
	if (rc) {
		rc = mdb_fail(c, err, rc, "open environment", -1, NULL, 0);
		goto fail;
	}
	int dead = 0;
	mdb_reader_check(c->env, &dead);
	ANN_CHECK(rc, open_check(c, err));
	ANN_CHECK(rc, open_dbis(c, o->create, err));
	ANN_CHECK(rc, check_format(c, o->create, err));
	*out = c;
	return ANN_OK;
fail:
	ann_catalog_close(c);
	return rc;
}

void ann_catalog_close(ann_catalog *c)
{
	if (!c)
		return;
	if (c->env)
		mdb_env_close(c->env);
	pthread_mutex_destroy(&c->mu);
	pthread_cond_destroy(&c->cv);
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
		return ann_err(err, ANN_E_NOMEM, "%s: out of memory", c->path);
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
		return ann_err(err, ANN_E_NOMEM, "%s: out of memory", c->path);
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
			return mdb_fail(t->c, err, rc, "renew read txn", -1, NULL, 0);
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

static int txn_usable(ann_cat_txn *t, bool need_write, ann_error *err)
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
			rc = mdb_fail(c, err, mrc, "replay after map growth", -1, NULL, 0);
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
	ANN_TRY(txn_usable(t, true, err));
	if (klen == 0 || klen > CAT_MAX_KEY)
		return ann_err(err, ANN_E_INVAL, "%s: %s key of %zu bytes (1..%u allowed)", t->c->path, db_names[db],
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
		return mdb_fail(t->c, err, mrc, "put", db, k, klen);
	}
	return ANN_OK;
}

static int raw_del(ann_cat_txn *t, ann_cat_db db, const void *k, size_t klen, ann_error *err)
{
	ANN_TRY(txn_usable(t, true, err));
	if (klen == 0 || klen > CAT_MAX_KEY)
		return ann_err(err, ANN_E_INVAL, "%s: %s key of %zu bytes", t->c->path, db_names[db], klen);
	size_t mark = t->log_len;
	int rc = log_append(t, OP_DEL, db, k, klen, NULL, 0, NULL, 0, err);
	if (rc < 0) {
		t->failed = true;
		return rc;
	}
	int mrc = apply_del(t, db, k, klen);
	if (mrc == MDB_NOTFOUND) {
		t->log_len = mark;
		return mdb_fail(t->c, err, mrc, "delete", db, k, klen);
	}
	if (mrc == MDB_MAP_FULL)
		return grow_and_replay(t, err);
	if (mrc) {
		t->failed = true;
		return mdb_fail(t->c, err, mrc, "delete", db, k, klen);
	}
	return ANN_OK;
}

int ann_catalog_commit(ann_cat_txn *t, ann_error *err)
{
	int rc = txn_usable(t, true, err);
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
			rc = mdb_fail(t->c, err, mrc, "commit", -1, NULL, 0);
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

static uint64_t value_sum(const void *k, size_t klen, const void *p, size_t n)
{
	return XXH64(p, n, XXH64(k, klen, 0));
}

int ann_catalog_put(ann_cat_txn *t, ann_cat_db db, const void *key, size_t klen, const void *val, size_t vlen,
		ann_error *err)
{
	if ((unsigned)db >= ANN_CAT_NDB || db == ANN_CAT_BLOCKS)
		return ann_err(err, ANN_E_INVAL, "ann_catalog_put: bad database %d", (int)db);
	uint8_t sum[CAT_SUM];
	ann_st64(sum, value_sum(key, klen, val, vlen));
	return raw_put(t, db, key, klen, val, vlen, sum, CAT_SUM, err);
}

/* Checks a stored value; on success val and vlen describe the payload. */
static int check_value(const ann_cat_txn *t, ann_cat_db db, const MDB_val *k, const MDB_val *v,
		       const uint8_t **val, size_t *vlen, ann_error *err)
{
	char kd[256];
	if (v->mv_size < CAT_SUM) {
		key_desc(db, k->mv_data, k->mv_size, kd, sizeof kd);
		return ann_err(err, ANN_E_CORRUPT, "%s: %s %s: value of %zu bytes, at least %u expected", t->c->path,
			       db_names[db], kd, v->mv_size, CAT_SUM);
	}
	size_t n = v->mv_size - CAT_SUM;
	const uint8_t *p = v->mv_data;
	uint64_t want = ann_ld64(p + n), got = value_sum(k->mv_data, k->mv_size, p, n);
	if (want != got) {
		key_desc(db, k->mv_data, k->mv_size, kd, sizeof kd);
		return ann_err(err, ANN_E_CORRUPT,
			       "%s: %s %s: value checksum mismatch (stored %016llx, computed %016llx)", t->c->path,
			       db_names[db], kd, (unsigned long long)want, (unsigned long long)got);
	}
	*val = p;
	*vlen = n;
	return ANN_OK;
}

int ann_catalog_get(ann_cat_txn *t, ann_cat_db db, const void *key, size_t klen, const uint8_t **val, size_t *vlen,
		ann_error *err)
{
	ANN_TRY(txn_usable(t, false, err));
	if ((unsigned)db >= ANN_CAT_NDB || db == ANN_CAT_BLOCKS)
		return ann_err(err, ANN_E_INVAL, "ann_catalog_get: bad database %d", (int)db);
	if (klen == 0 || klen > CAT_MAX_KEY)
		return ann_err(err, ANN_E_INVAL, "%s: %s key of %zu bytes", t->c->path, db_names[db], klen);
	MDB_val k = { klen, (void *)key }, v;
	int rc = mdb_get(t->txn, t->c->dbi[db], &k, &v);
	if (rc)
		return mdb_fail(t->c, err, rc, "get", db, key, klen);
	return check_value(t, db, &k, &v, val, vlen, err);
}

int ann_catalog_del(ann_cat_txn *t, ann_cat_db db, const void *key, size_t klen, ann_error *err)
{
	if ((unsigned)db >= ANN_CAT_NDB)
		return ann_err(err, ANN_E_INVAL, "ann_catalog_del: bad database %d", (int)db);
	return raw_del(t, db, key, klen, err);
}

static int foreach_impl(ann_cat_txn *t, ann_cat_db db, const void *from, size_t flen, ann_cat_each_fn fn,
			void *ctx, bool skip_bad, ann_error *err)
{
	ANN_TRY(txn_usable(t, false, err));
	if ((unsigned)db >= ANN_CAT_NDB || db == ANN_CAT_BLOCKS)
		return ann_err(err, ANN_E_INVAL, "ann_catalog_foreach: bad database %d", (int)db);
	MDB_cursor *cur;
	int mrc = mdb_cursor_open(t->txn, t->c->dbi[db], &cur);
	if (mrc)
		return mdb_fail(t->c, err, mrc, "open cursor", db, NULL, 0);
	MDB_val k = { flen, (void *)from }, v;
	mrc = mdb_cursor_get(cur, &k, &v, from ? MDB_SET_RANGE : MDB_FIRST);
	int rc = ANN_OK;
	while (mrc == 0) {
		const uint8_t *p = NULL;
		size_t n = 0;
		ann_error e2;
		rc = check_value(t, db, &k, &v, &p, &n, skip_bad ? &e2 : err);
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
		return mdb_fail(t->c, err, mrc, "iterate", db, NULL, 0);
	return ANN_OK;
}

int ann_catalog_foreach(ann_cat_txn *t, ann_cat_db db, const void *from, size_t flen, ann_cat_each_fn fn, void *ctx,
		    ann_error *err)
{
	return foreach_impl(t, db, from, flen, fn, ctx, false, err);
}

int ann_catalog_foreach_valid(ann_cat_txn *t, ann_cat_db db, const void *from, size_t flen, ann_cat_each_fn fn,
			      void *ctx, ann_error *err)
{
	return foreach_impl(t, db, from, flen, fn, ctx, true, err);
}

int ann_catalog_count(ann_cat_txn *t, ann_cat_db db, uint64_t *out, ann_error *err)
{
	ANN_TRY(txn_usable(t, false, err));
	MDB_stat st;
	int mrc = mdb_stat(t->txn, t->c->dbi[db], &st);
	if (mrc)
		return mdb_fail(t->c, err, mrc, "stat", db, NULL, 0);
	*out = st.ms_entries;
	return ANN_OK;
}

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

static void part_encode_common(uint8_t *out, const ann_dirent *e, uint8_t version)
{
	out[0] = version;
	out[1] = e->kind;
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
	ANN_TRY(txn_usable(t, false, err));
	uint64_t count = 0;
	ANN_TRY(ann_catalog_count(t, ANN_CAT_PARTS, &count, err));
	d->txnid = ann_catalog_txn_id(t);
	if (count == 0)
		return ANN_OK;
	MDB_cursor *cur;
	int mrc = mdb_cursor_open(t->txn, t->c->dbi[ANN_CAT_PARTS], &cur);
	if (mrc)
		return mdb_fail(t->c, err, mrc, "open cursor", ANN_CAT_PARTS, NULL, 0);
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
		return mdb_fail(t->c, err, mrc, "last key", ANN_CAT_PARTS, NULL, 0);
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
	int rc = foreach_impl(t, ANN_CAT_PARTS, NULL, 0, dir_each, &dc, skip_bad, err);
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

static int free_decode(const ann_catalog *c, const uint8_t *k, size_t klen, const uint8_t *v, size_t n,
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
	int rc = free_decode(fc->c, key, klen, val, vlen, &fc->xs[fc->n], fc->skip_bad ? &e2 : err);
	if (rc < 0)
		return fc->skip_bad ? 0 : rc;
	fc->n++;
	return 0;
}

static int free_load(ann_cat_txn *t, ann_extent **xs, size_t *n, bool skip_bad, ann_error *err)
{
	struct free_ctx fc = { t->c, NULL, 0, 0, skip_bad };
	int rc = foreach_impl(t, ANN_CAT_FREE, NULL, 0, free_each, &fc, skip_bad, err);
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

/* ---- LMDB-store blocks ------------------------------------------------------------------ */

int ann_catalog_block_put(ann_cat_txn *t, uint32_t pid, const void *buf, size_t n, ann_error *err)
{
	uint8_t k[4];
	ann_stbe32(k, pid);
	return raw_put(t, ANN_CAT_BLOCKS, k, 4, buf, n, NULL, 0, err);
}

int ann_catalog_block_get(ann_cat_txn *t, uint32_t pid, const uint8_t **buf, size_t *n, ann_error *err)
{
	ANN_TRY(txn_usable(t, false, err));
	uint8_t kb[4];
	ann_stbe32(kb, pid);
	MDB_val k = { 4, kb }, v;
	int rc = mdb_get(t->txn, t->c->dbi[ANN_CAT_BLOCKS], &k, &v);
	if (rc)
		return mdb_fail(t->c, err, rc, "get", ANN_CAT_BLOCKS, kb, 4);
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
	ANN_TRY(txn_usable(t, false, err));
	MDB_cursor *cur;
	int mrc = mdb_cursor_open(t->txn, t->c->dbi[ANN_CAT_BLOCKS], &cur);
	if (mrc)
		return mdb_fail(t->c, err, mrc, "open cursor", ANN_CAT_BLOCKS, NULL, 0);
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
		return mdb_fail(t->c, err, mrc, "iterate", ANN_CAT_BLOCKS, NULL, 0);
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
	pthread_mutex_lock(&c->mu);
	sp->map_grows = c->grows;
	pthread_mutex_unlock(&c->mu);

	ann_cat_txn *t;
	ANN_TRY(ann_catalog_read_begin(c, &t, err));
	int rc = ANN_OK;
	for (int i = 0; i < ANN_CAT_NDB; i++) {
		MDB_stat s;
		int mrc = mdb_stat(t->txn, c->dbi[i], &s);
		if (mrc) {
			rc = mdb_fail(c, err, mrc, "stat", i, NULL, 0);
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
		rc = mdb_fail(c, err, mrc, "open free-list cursor", -1, NULL, 0);
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

/* ---- verification -------------------------------------------------------------------------- */

static void report(ann_issue_fn fn, void *ctx, ann_issue_kind kind, bool warning, int64_t pid, const char *db,
		   const char *msg)
{
	if (!fn)
		return;
	ann_issue is = { kind, warning, pid, db, msg };
	fn(ctx, &is);
}

/* Checks one value beyond its checksum: the decodings that have a fixed shape. */
static int check_shape(ann_catalog *c, ann_cat_db db, const MDB_val *k, const uint8_t *p, size_t n,
		       ann_error *e)
{
	switch (db) {
	case ANN_CAT_PARTS: {
		if (k->mv_size != 4)
			return ann_err(e, ANN_E_CORRUPT, "%s: parts key of %zu bytes, 4 expected", c->path, k->mv_size);
		ann_dirent de;
		int rc = ann_catalog_part_decode(p, n, ann_ldbe32(k->mv_data), &de, e);
		return rc < 0 ? ann_err_prefix(e, rc, "%s", c->path) : ANN_OK;
	}
	case ANN_CAT_FREE: {
		ann_extent x;
		return free_decode(c, k->mv_data, k->mv_size, p, n, &x, e);
	}
	case ANN_CAT_IDMAP:
		if (k->mv_size != 8 || n != 4)
			return ann_err(e, ANN_E_CORRUPT, "%s: idmap entry with %zu-byte key and %zu-byte value, 8 and 4 expected",
				       c->path, k->mv_size, n);
		return ANN_OK;
	case ANN_CAT_META:
		if (n < 1 || p[0] < ANN_META_U64 || p[0] > ANN_META_BLOB ||
		    ((p[0] == ANN_META_U64 || p[0] == ANN_META_F64) && n != 9)) {
			char kd[256];
			key_desc(db, k->mv_data, k->mv_size, kd, sizeof kd);
			return ann_err(e, ANN_E_CORRUPT, "%s: meta %s: bad type tag or size", c->path, kd);
		}
		return ANN_OK;
	default:
		return ANN_OK;
	}
}

int ann_catalog_verify(ann_cat_txn *t, ann_issue_fn fn, void *ctx, uint64_t *nbad, ann_error *err)
{
	ANN_TRY(txn_usable(t, false, err));
	uint64_t bad = 0;
	/* Structure and page accounting first: walking damaged pages through
	 * LMDB could fault. (A write txn is checked as of its start.) */
	ann_error pe = { 0 };
	int prc = ann_lmdb_pages_check(t->c->path, t->c->env, ann_catalog_txn_id(t) - (t->write ? 1 : 0), true, NULL, NULL, 0, &pe);
	if (prc == ANN_E_CORRUPT) {
		report(fn, ctx, ANN_ISSUE_CATALOG, false, -1, "lmdb", pe.msg);
		if (nbad)
			*nbad = 1;
		return ANN_OK;
	}
	if (prc < 0) {
		if (err)
			*err = pe;
		return prc;
	}
	prc = check_txn_key(t, &pe);
	if (prc == ANN_E_CORRUPT) {
		report(fn, ctx, ANN_ISSUE_CATALOG, false, -1, "lmdb", pe.msg);
		bad++;
	} /* other failures (a bad value) are reported by the scan below */
	for (int db = 0; db < ANN_CAT_NDB; db++) {
		if (db == ANN_CAT_BLOCKS)
			continue;
		MDB_cursor *cur;
		int mrc = mdb_cursor_open(t->txn, t->c->dbi[db], &cur);
		if (mrc)
			return mdb_fail(t->c, err, mrc, "open cursor", db, NULL, 0);
		MDB_val k, v;
		while ((mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) == 0) {
			ann_error e = { 0 };
			const uint8_t *p = NULL;
			size_t n = 0;
			int rc = check_value(t, (ann_cat_db)db, &k, &v, &p, &n, &e);
			if (rc == ANN_OK)
				rc = check_shape(t->c, (ann_cat_db)db, &k, p, n, &e);
			if (rc < 0) {
				bad++;
				int64_t pid = (db == ANN_CAT_PARTS && k.mv_size == 4) ? (int64_t)ann_ldbe32(k.mv_data) : -1;
				report(fn, ctx, ANN_ISSUE_CATALOG, false, pid, db_names[db], e.msg);
			}
		}
		mdb_cursor_close(cur);
		if (mrc != MDB_NOTFOUND)
			return mdb_fail(t->c, err, mrc, "iterate", db, NULL, 0);
	}
	if (nbad)
		*nbad = bad;
	return ANN_OK;
}

/* ---- repair ---------------------------------------------------------------------------------
 * Rebuilds catalog.lmdb entry by entry into a fresh environment. Not
 * mdb_env_copy2(MDB_CP_COMPACT): the compacting copy walks the free DB with a
 * cursor and computes the copy's last page from the free-list counts (a wrong
 * count ends in MDB_INCOMPATIBLE, a damaged free-DB page in a fault), and the
 * free list is exactly what repair is for. A copy through cursors reads only
 * the named databases, whose trees pg_check has just validated in the same
 * snapshot. Values are copied as stored (checksums included): repair restores
 * LMDB's structure, it does not invent data. */

#define REPAIR_TXN_BYTES (64u << 20) /* commit the copy every 64 MiB of values (bounds LMDB's dirty pages) */

static int repair_copy(ann_catalog *src, MDB_txn *stx, MDB_env *dst, const char *dpath, uint64_t *entries,
		       ann_error *err)
{
	MDB_txn *dtx = NULL;
	MDB_cursor *cur = NULL;
	int mrc = 0;
	const char *what = "";
	int db = -1;
	*entries = 0;
	for (db = 0; db < ANN_CAT_NDB; db++) {
		MDB_dbi sdbi, ddbi;
		what = "open database";
		if ((mrc = mdb_dbi_open(stx, db_names[db], 0, &sdbi)) != 0) {
			if (mrc == MDB_NOTFOUND)
				return ann_err(err, ANN_E_FORMAT, "%s: no database '%s': not an annann catalog", src->path,
					       db_names[db]);
			goto fail;
		}
		what = "begin txn";
		if ((mrc = mdb_txn_begin(dst, NULL, 0, &dtx)) != 0)
			goto fail;
		what = "create database";
		if ((mrc = mdb_dbi_open(dtx, db_names[db], MDB_CREATE, &ddbi)) != 0)
			goto fail;
		what = "read";
		if ((mrc = mdb_cursor_open(stx, sdbi, &cur)) != 0)
			goto fail;
		MDB_val k, v;
		size_t bytes = 0;
		while ((mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) == 0) {
			what = "write";
			if ((mrc = mdb_put(dtx, ddbi, &k, &v, MDB_APPEND)) != 0)
				goto fail;
			(*entries)++;
			bytes += k.mv_size + v.mv_size;
			if (bytes >= REPAIR_TXN_BYTES) {
				what = "commit";
				mrc = mdb_txn_commit(dtx);
				dtx = NULL;
				if (mrc)
					goto fail;
				what = "begin txn";
				if ((mrc = mdb_txn_begin(dst, NULL, 0, &dtx)) != 0)
					goto fail;
				bytes = 0;
			}
			what = "read";
		}
		if (mrc != MDB_NOTFOUND)
			goto fail;
		mdb_cursor_close(cur);
		cur = NULL;
		what = "commit";
		mrc = mdb_txn_commit(dtx);
		dtx = NULL;
		if (mrc)
			goto fail;
	}
	/* The copy's txn ids restart: the last commit records its own id. */
	MDB_dbi mdbi;
	db = ANN_CAT_META;
	what = "begin txn";
	if ((mrc = mdb_txn_begin(dst, NULL, 0, &dtx)) != 0)
		goto fail;
	what = "write";
	if ((mrc = mdb_dbi_open(dtx, db_names[ANN_CAT_META], 0, &mdbi)) != 0)
		goto fail;
	uint8_t tb[1 + 8 + CAT_SUM];
	tb[0] = ANN_META_U64;
	ann_st64(tb + 1, (uint64_t)mdb_txn_id(dtx));
	ann_st64(tb + 9, value_sum(CAT_TXN_KEY, strlen(CAT_TXN_KEY), tb, 9));
	MDB_val tk = { strlen(CAT_TXN_KEY), (void *)CAT_TXN_KEY }, tv = { sizeof tb, tb };
	if ((mrc = mdb_put(dtx, mdbi, &tk, &tv, 0)) != 0)
		goto fail;
	what = "commit";
	mrc = mdb_txn_commit(dtx);
	dtx = NULL;
	if (mrc)
		goto fail;
	return ANN_OK;
fail:
	if (cur)
		mdb_cursor_close(cur);
	if (dtx)
		mdb_txn_abort(dtx);
	const char *dbn = db >= 0 && db < ANN_CAT_NDB ? db_names[db] : "";
	if (mrc == ENOMEM)
		return ann_err(err, ANN_E_NOMEM, "%s: repair: %s '%s': out of memory", dpath, what, dbn);
	if (mrc > 0)
		return ann_err_sys(err, mrc, "%s: repair: %s '%s'", dpath, what, dbn);
	return ann_err(err, ANN_E_IO, "%s: repair: %s '%s': %s", dpath, what, dbn, mdb_strerror(mrc));
}

static void rm_env_dir(const char *dir)
{
	char p[4224];
	snprintf(p, sizeof p, "%s/data.mdb", dir);
	unlink(p);
	snprintf(p, sizeof p, "%s/lock.mdb", dir);
	unlink(p);
	rmdir(dir);
}

int ann_catalog_repair(const char *path, const ann_catalog_repair_opts *o, ann_catalog_repair_result *res,
		       ann_error *err)
{
	memset(res, 0, sizeof *res);
	int rc;
	ann_catalog cs;
	memset(&cs, 0, sizeof cs);
	cs.path = (char *)path;
	cs.readonly = true;
	pthread_mutex_init(&cs.mu, NULL);
	pthread_cond_init(&cs.cv, NULL);
	MDB_txn *stx = NULL;
	MDB_env *dst = NULL;
	char tmp[4200], file[4200];
	snprintf(tmp, sizeof tmp, "%s.repair.%ld", path, (long)getpid());
	snprintf(file, sizeof file, "%s/data.mdb", path);
	bool made_tmp = false;
	struct stat st;
	if (strlen(path) > 4000) {
		rc = ann_err(err, ANN_E_INVAL, "catalog path of %zu bytes, at most 4000", strlen(path));
		goto out;
	}
	if (stat(file, &st) != 0) {
		rc = errno == ENOENT ? ann_err(err, ANN_E_NOTFOUND, "%s: no such catalog", file)
				     : ann_err_sys(err, errno, "%s: cannot stat", file);
		goto out;
	}
	uint64_t map = CAT_DEFAULT_MAP;
	if ((uint64_t)st.st_size * 2 > map)
		map = (uint64_t)st.st_size * 2;
	int mrc = mdb_env_create(&cs.env);
	if (mrc) {
		cs.env = NULL;
		rc = mdb_fail(&cs, err, mrc, "create environment", -1, NULL, 0);
		goto out;
	}
	mdb_env_set_maxdbs(cs.env, 16);
	mdb_env_set_mapsize(cs.env, (size_t)map);
	if ((rc = ann_lmdb_meta_precheck(path, err)) < 0) {
		ann_err_prefix(err, rc, "cannot repair");
		goto out;
	}
	if ((mrc = mdb_env_open(cs.env, path, MDB_NOTLS | MDB_RDONLY, 0644)) != 0) {
		rc = mdb_fail(&cs, err, mrc, "open environment", -1, NULL, 0);
		goto out;
	}
	for (int tries = 0;; tries++) {
		if ((mrc = mdb_txn_begin(cs.env, NULL, MDB_RDONLY, &stx)) != 0) {
			stx = NULL;
			rc = mdb_fail(&cs, err, mrc, "begin txn", -1, NULL, 0);
			goto out;
		}
		ann_error pe = { 0 };
		bool repairable = false;
		rc = ann_lmdb_pages_check(cs.path, cs.env, (uint64_t)mdb_txn_id(stx), true, &repairable, res->damage, sizeof res->damage, &pe);
		if (rc == ANN_E_STATE && tries < 4) {
			mdb_txn_abort(stx);
			stx = NULL;
			continue;
		}
		if (rc == ANN_E_CORRUPT && repairable) {
			res->damaged = true;
			rc = ANN_OK;
		}
		if (rc < 0) {
			res->damage[0] = 0;
			if (err)
				*err = pe;
			if (rc == ANN_E_CORRUPT)
				ann_err_prefix(err, rc, "cannot repair");
			goto out;
		}
		break;
	}
	rm_env_dir(tmp); /* a leftover of an earlier repair of this pid */
	if (mkdir(tmp, 0755) != 0) {
		rc = ann_err_sys(err, errno, "%s: cannot create directory", tmp);
		goto out;
	}
	made_tmp = true;
	if ((mrc = mdb_env_create(&dst)) != 0) {
		dst = NULL;
		rc = ann_err(err, ANN_E_IO, "%s: create environment: %s", tmp, mdb_strerror(mrc));
		goto out;
	}
	mdb_env_set_maxdbs(dst, 16);
	mdb_env_set_mapsize(dst, (size_t)map);
	if ((mrc = mdb_env_open(dst, tmp, MDB_NOTLS, 0644)) != 0) {
		rc = ann_err(err, ANN_E_IO, "%s: open environment: %s", tmp, mdb_strerror(mrc));
		goto out;
	}
	if ((rc = repair_copy(&cs, stx, dst, tmp, &res->entries, err)) < 0)
		goto out;
	mdb_env_close(dst); /* commits were durable (default sync mode) */
	dst = NULL;
	mdb_txn_abort(stx);
	stx = NULL;
	mdb_env_close(cs.env);
	cs.env = NULL;

	/* Re-verify the copy as any reader would open it: structure, then values. */
	ann_catalog *nc = NULL;
	ann_catalog_opts co;
	ann_catalog_opts_init(&co);
	co.readonly = true;
	if ((rc = ann_catalog_open(tmp, &co, &nc, err)) < 0) {
		ann_err_prefix(err, rc, "the rebuilt catalog does not open");
		goto out;
	}
	ann_cat_txn *t = NULL;
	if ((rc = ann_catalog_read_begin(nc, &t, err)) == 0) {
		rc = ann_catalog_verify(t, NULL, NULL, &res->bad_values, err);
		ann_catalog_read_end(t);
	}
	ann_catalog_close(nc);
	if (rc < 0)
		goto out;
	if (o && o->dry_run) {
		rc = ANN_OK;
		goto out;
	}

	/* Swap in the copy: one atomic exchange of the two directories, then the
	 * old one moves to the backup name. Without RENAME_EXCHANGE (a file
	 * system lacking it): two renames, with the backup in place first. */
	time_t now = time(NULL);
	struct tm tmv;
	gmtime_r(&now, &tmv);
	char stamp[32];
	strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", &tmv);
	snprintf(res->backup, sizeof res->backup, "%s.damaged.%s.%ld", path, stamp, (long)getpid());
	if (renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RENAME_EXCHANGE) == 0) {
		if (rename(tmp, res->backup) != 0) {
			rc = ann_err_sys(err, errno, "%s: repaired, but the old catalog stays at %s: cannot rename it to %s",
					 path, tmp, res->backup);
			snprintf(res->backup, sizeof res->backup, "%s", tmp);
			made_tmp = false;
			goto sync;
		}
	} else if (errno == EINVAL || errno == ENOSYS || errno == ENOTSUP) {
		if (rename(path, res->backup) != 0) {
			rc = ann_err_sys(err, errno, "%s: cannot move the damaged catalog to %s", path, res->backup);
			goto out;
		}
		if (rename(tmp, path) != 0) {
			rc = ann_err_sys(err, errno, "%s: cannot move the rebuilt catalog %s into place (the damaged "
					 "one is at %s)", path, tmp, res->backup);
			made_tmp = false;
			goto out;
		}
	} else {
		rc = ann_err_sys(err, errno, "%s: cannot swap in the rebuilt catalog %s", path, tmp);
		goto out;
	}
	made_tmp = false;
	rc = ANN_OK;
sync:;
	char parent[4200];
	ann_catalog_index_dir(path, parent, sizeof parent);
	int frc = ann_fsync_dir(parent, err);
	if (rc == ANN_OK)
		rc = frc;
out:
	if (stx)
		mdb_txn_abort(stx);
	if (dst)
		mdb_env_close(dst);
	if (cs.env)
		mdb_env_close(cs.env);
	if (made_tmp)
		rm_env_dir(tmp);
	pthread_mutex_destroy(&cs.mu);
	pthread_cond_destroy(&cs.cv);
	return rc;
}
