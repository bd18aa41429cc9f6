/* SPDX-License-Identifier: MIT */
/*
 * fuzz_catalog: what decodes bytes from catalog.lmdb (src/storage/catalog.c,
 * catalog_records.c and catalog_repair.c, and the index metadata reader
 * src/index/index_meta.c): the value checksum check, meta values of each type,
 * parts entries (directory), free extents, the id map, models,
 * ann_catalog_verify, and the first write transaction on the result.
 * The LMDB file itself is well formed (written by liblmdb); its values are
 * hostile.
 *
 * Input: a list of records, each
 *   u8 db (mod 8, ann_cat_db), u8 flags (bit 0: append the correct value
 *   checksum, else store the bytes as they are), u8 klen, klen key bytes,
 *   u16 vlen (LE), vlen value bytes.
 * For each input the target writes a fresh environment with liblmdb (the
 * eight DBIs and a valid catalog.major = 1 that a record may overwrite), then
 * opens it with ann_catalog_open and runs every reader on it.
 */
#include <dirent.h>
#include <lmdb.h>
#include <xxhash.h>

#include "catalog.h"
#include "fuzz.h"
#include "index_meta.h"

static void put(MDB_txn *txn, MDB_dbi dbi, const uint8_t *k, size_t klen, const uint8_t *v, size_t vlen,
		bool sum)
{
	uint8_t buf[65536 + 8];
	memcpy(buf, v, vlen);
	if (sum) {
		ann_st64(buf + vlen, XXH64(v, vlen, XXH64(k, klen, 0)));
		vlen += 8;
	}
	MDB_val mk = { klen, (void *)k }, mv = { vlen, buf };
	(void)mdb_put(txn, dbi, &mk, &mv, 0); /* a key LMDB refuses is skipped */
}

static void write_env(const char *dir, const uint8_t *data, size_t size)
{
	char p[600];
	snprintf(p, sizeof p, "%s/data.mdb", dir);
	unlink(p);
	snprintf(p, sizeof p, "%s/lock.mdb", dir);
	unlink(p);
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi dbi[ANN_CAT_NDB];
	if (mdb_env_create(&env) || mdb_env_set_maxdbs(env, 16) || mdb_env_set_mapsize(env, 64u << 20) ||
	    mdb_env_open(env, dir, MDB_NOSYNC, 0600) || mdb_txn_begin(env, NULL, 0, &txn))
		abort();
	for (int i = 0; i < ANN_CAT_NDB; i++)
		if (mdb_dbi_open(txn, ann_catalog_db_name((ann_cat_db)i), MDB_CREATE, &dbi[i]))
			abort();
	uint8_t major[9] = { ANN_META_U64, 1 };
	put(txn, dbi[ANN_CAT_META], (const uint8_t *)"catalog.major", 13, major, 9, true);
	size_t off = 0;
	while (size - off >= 5) {
		unsigned db = data[off] % ANN_CAT_NDB, flags = data[off + 1], klen = data[off + 2];
		off += 3;
		if (size - off < klen + 2u)
			break;
		const uint8_t *k = data + off;
		off += klen;
		size_t vlen = ann_ld16(data + off);
		off += 2;
		if (size - off < vlen)
			vlen = size - off;
		if (klen > 0)
			put(txn, dbi[db], k, klen, data + off, vlen, flags & 1);
		off += vlen;
	}
	if (mdb_txn_commit(txn))
		abort();
	mdb_env_close(env);
}

static int each(void *ctx, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen, ann_error *err)
{
	(void)err;
	uint64_t *sum = ctx;
	*sum += klen + vlen + (vlen ? val[0] + val[vlen - 1] : 0) + key[0];
	return 0;
}

static void issue(void *ctx, const ann_issue *is)
{
	(void)ctx;
	FZ_ASSERT(is->msg && is->msg[0]);
}

static void read_all(ann_catalog *c)
{
	ann_error e = {0};
	ann_cat_txn *t;
	int rc = ann_catalog_read_begin(c, &t, &e);
	FZ_CHECK(rc, e);
	if (rc < 0)
		return;
	uint64_t nbad = 0, sum = 0;
	rc = ann_catalog_verify(t, issue, NULL, &nbad, &e);
	FZ_CHECK(rc, e);
	for (int db = 0; db < ANN_CAT_NDB; db++) {
		uint64_t n;
		rc = ann_catalog_count(t, (ann_cat_db)db, &n, &e);
		FZ_CHECK(rc, e);
		if (db == ANN_CAT_BLOCKS)
			continue;
		rc = ann_catalog_foreach(t, (ann_cat_db)db, NULL, 0, each, &sum, &e);
		FZ_CHECK(rc, e);
		rc = ann_catalog_foreach_valid(t, (ann_cat_db)db, NULL, 0, each, &sum, &e);
		FZ_CHECK(rc, e);
	}
	ann_index_meta m;
	rc = ann_index_meta_read(t, &m, &e);
	FZ_CHECK(rc, e);
	ann_dir d = {0};
	rc = ann_catalog_dir_load(t, &d, &e);
	FZ_CHECK(rc, e);
	ann_catalog_dir_free(&d);
	memset(&d, 0, sizeof d);
	rc = ann_catalog_dir_load_valid(t, &d, &e);
	FZ_CHECK(rc, e);
	if (rc == 0) {
		for (uint32_t i = 0; i < d.n; i++) {
			ann_dirent x;
			int grc = ann_catalog_part_get(t, i, &x, &e);
			FZ_CHECK(grc, e);
		}
	}
	ann_catalog_dir_free(&d);
	ann_extent *xs = NULL;
	size_t nx = 0;
	rc = ann_catalog_free_load(t, &xs, &nx, &e);
	FZ_CHECK(rc, e);
	ann_free(xs);
	xs = NULL;
	rc = ann_catalog_free_load_valid(t, &xs, &nx, &e);
	FZ_CHECK(rc, e);
	ann_free(xs);
	const uint8_t *blob;
	size_t blen;
	rc = ann_catalog_model_get(t, "router", &blob, &blen, &e);
	FZ_CHECK(rc, e);
	char s[64];
	rc = ann_catalog_meta_get_str(t, "build.input", s, sizeof s, &e);
	FZ_CHECK(rc, e);
	double f;
	rc = ann_catalog_meta_get_f64(t, "build.replica_eps", &f, &e);
	FZ_CHECK(rc, e);
	for (uint64_t id = 0; id < 4; id++) {
		uint32_t pid;
		rc = ann_catalog_idmap_get(t, id, &pid, &e);
		FZ_CHECK(rc, e);
	}
	for (uint32_t pid = 0; pid < 4; pid++) {
		rc = ann_catalog_block_get(t, pid, &blob, &blen, &e);
		FZ_CHECK(rc, e);
	}
	ann_catalog_read_end(t);
	ann_catalog_space sp;
	rc = ann_catalog_space_get(c, &sp, &e);
	FZ_CHECK(rc, e);
}

static void write_one(ann_catalog *c)
{
	ann_error e = {0};
	ann_cat_txn *t;
	int rc = ann_catalog_write_begin(c, &t, &e);
	FZ_CHECK(rc, e);
	if (rc < 0)
		return;
	rc = ann_catalog_meta_put_u64(t, "fuzz.write", 1, &e);
	FZ_CHECK(rc, e);
	if (rc == 0) {
		rc = ann_catalog_commit(t, &e);
		FZ_CHECK(rc, e);
	} else {
		ann_catalog_abort(t);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > ((size_t)1 << 20))
		return 0;
	char dir[512];
	snprintf(dir, sizeof dir, "%s/catalog.lmdb", fz_tmpdir());
	mkdir(dir, 0700);
	write_env(dir, data, size);
	ann_catalog_opts o;
	ann_catalog_opts_init(&o);
	o.map_bytes = 64u << 20;
	ann_error e = {0};
	ann_catalog *c = NULL;
	int rc = ann_catalog_open(dir, &o, &c, &e);
	FZ_CHECK(rc, e);
	if (rc < 0) {
		FZ_ASSERT(c == NULL);
		return 0;
	}
	read_all(c);
	write_one(c);
	ann_catalog_close(c);
	return 0;
}
