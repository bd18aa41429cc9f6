/* SPDX-License-Identifier: MIT */
/*
 * catalog_repair.c: what runs on a catalog that may be damaged (catalog.h):
 * ann_catalog_verify (LMDB's pages first, then every value's checksum and
 * shape) and ann_catalog_repair (a copy through cursors into a fresh
 * environment, re-verified, then swapped in with the old one kept as a
 * backup). Page checks: catalog_pages.c; the catalog itself: catalog.c.
 */
#include "catalog_impl.h"
#include "catalog_pages.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

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
		return ann_cat_free_decode(c, k->mv_data, k->mv_size, p, n, &x, e);
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
			ann_cat_key_desc(db, k->mv_data, k->mv_size, kd, sizeof kd);
			return ann_err(e, ANN_E_CORRUPT, "%s: meta %s: bad type tag or size", c->path, kd);
		}
		return ANN_OK;
	default:
		return ANN_OK;
	}
}

int ann_catalog_verify(ann_cat_txn *t, ann_issue_fn fn, void *ctx, uint64_t *nbad, ann_error *err)
{
	ANN_TRY(ann_cat_txn_usable(t, false, err));
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
	prc = ann_cat_check_txn_key(t, &pe);
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
			return ann_cat_mdb_fail(t->c, err, mrc, "open cursor", db, NULL, 0);
		MDB_val k, v;
		while ((mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) == 0) {
			ann_error e = { 0 };
			const uint8_t *p = NULL;
			size_t n = 0;
			int rc = ann_cat_check_value(t, (ann_cat_db)db, &k, &v, &p, &n, &e);
			if (rc == ANN_OK)
				rc = check_shape(t->c, (ann_cat_db)db, &k, p, n, &e);
			if (rc < 0) {
				bad++;
				int64_t pid = (db == ANN_CAT_PARTS && k.mv_size == 4) ? (int64_t)ann_ldbe32(k.mv_data) : -1;
				report(fn, ctx, ANN_ISSUE_CATALOG, false, pid, ann_cat_db_names[db], e.msg);
			}
		}
		mdb_cursor_close(cur);
		if (mrc != MDB_NOTFOUND)
			return ann_cat_mdb_fail(t->c, err, mrc, "iterate", db, NULL, 0);
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
		if ((mrc = mdb_dbi_open(stx, ann_cat_db_names[db], 0, &sdbi)) != 0) {
			if (mrc == MDB_NOTFOUND)
				return ann_err(err, ANN_E_FORMAT, "%s: no database '%s': not an annann catalog", src->path,
					       ann_cat_db_names[db]);
			goto fail;
		}
		what = "begin txn";
		if ((mrc = mdb_txn_begin(dst, NULL, 0, &dtx)) != 0)
			goto fail;
		what = "create database";
		if ((mrc = mdb_dbi_open(dtx, ann_cat_db_names[db], MDB_CREATE, &ddbi)) != 0)
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
	if ((mrc = mdb_dbi_open(dtx, ann_cat_db_names[ANN_CAT_META], 0, &mdbi)) != 0)
		goto fail;
	uint8_t tb[1 + 8 + CAT_SUM];
	tb[0] = ANN_META_U64;
	ann_st64(tb + 1, (uint64_t)mdb_txn_id(dtx));
	ann_st64(tb + 9, ann_cat_value_sum(CAT_TXN_KEY, strlen(CAT_TXN_KEY), tb, 9));
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
	const char *dbn = db >= 0 && db < ANN_CAT_NDB ? ann_cat_db_names[db] : "";
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
		rc = ann_cat_mdb_fail(&cs, err, mrc, "create environment", -1, NULL, 0);
		goto out;
	}
	mdb_env_set_maxdbs(cs.env, 16);
	mdb_env_set_mapsize(cs.env, (size_t)map);
	if ((rc = ann_lmdb_meta_precheck(path, err)) < 0) {
		ann_err_prefix(err, rc, "cannot repair");
		goto out;
	}
	if ((mrc = mdb_env_open(cs.env, path, MDB_NOTLS | MDB_RDONLY, 0644)) != 0) {
		rc = ann_cat_mdb_fail(&cs, err, mrc, "open environment", -1, NULL, 0);
		goto out;
	}
	for (int tries = 0;; tries++) {
		if ((mrc = mdb_txn_begin(cs.env, NULL, MDB_RDONLY, &stx)) != 0) {
			stx = NULL;
			rc = ann_cat_mdb_fail(&cs, err, mrc, "begin txn", -1, NULL, 0);
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
	return rc;
}
