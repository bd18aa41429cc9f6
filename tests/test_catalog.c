/* SPDX-License-Identifier: MIT */
/*
 * test_catalog: catalog.lmdb: typed meta, directory, id map, models, free
 * extents round trips; numeric key order; map growth from a tiny map inside
 * one txn (replay) with reader threads running; snapshot isolation in-process
 * and from another process; value checksums (bit flips in data.mdb ->
 * ANN_E_CORRUPT naming the key, and reported by ann_catalog_verify); format
 * refusal; allocation failure injection.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include <unistd.h>

#include "catalog.h"
#include "catalog_impl.h"
#include "testutil.h"

static ann_rng rng;

static ann_catalog *open_cat(const char *path, uint64_t map, bool create)
{
	ann_catalog_opts o;
	ann_catalog_opts_init(&o);
	o.create = create;
	o.map_bytes = map;
	ann_catalog *c = NULL;
	ann_error e = { 0 };
	int rc = ann_catalog_open(path, &o, &c, &e);
	if (rc < 0)
		T_FAIL("open %s: %s", path, e.msg);
	return c;
}

static void test_meta_types(const char *dir)
{
	t_current = "meta_types";
	char *path = t_path(dir, "meta.lmdb");
	ann_catalog *c = open_cat(path, 0, true);
	ann_cat_txn *t;
	ann_error e = { 0 };
	ASSERT_OK(ann_catalog_write_begin(c, &t, &e));
	ASSERT_OK(ann_catalog_meta_put_u64(t, "dim", 128, &e));
	ASSERT_OK(ann_catalog_meta_put_u64(t, "big", UINT64_MAX, &e));
	ASSERT_OK(ann_catalog_meta_put_f64(t, "build.seconds", 12.375, &e));
	ASSERT_OK(ann_catalog_meta_put_f64(t, "negzero", -0.0, &e));
	ASSERT_OK(ann_catalog_meta_put_str(t, "metric", "l2", &e));
	ASSERT_OK(ann_catalog_meta_put_str(t, "empty", "", &e));
	uint8_t blob[300];
	for (size_t i = 0; i < sizeof blob; i++)
		blob[i] = (uint8_t)ann_rng_next(&rng);
	ASSERT_OK(ann_catalog_meta_put_blob(t, "params", blob, sizeof blob, &e));
	ASSERT_OK(ann_catalog_commit(t, &e));

	ASSERT_OK(ann_catalog_read_begin(c, &t, &e));
	uint64_t u = 0;
	double d = 0;
	char s[16];
	const uint8_t *p;
	size_t n;
	ASSERT_OK(ann_catalog_meta_get_u64(t, "dim", &u, &e));
	ASSERT_EQ(u, 128);
	ASSERT_OK(ann_catalog_meta_get_u64(t, "big", &u, &e));
	ASSERT_TRUE(u == UINT64_MAX);
	ASSERT_OK(ann_catalog_meta_get_f64(t, "build.seconds", &d, &e));
	ASSERT_TRUE(d == 12.375);
	ASSERT_OK(ann_catalog_meta_get_f64(t, "negzero", &d, &e));
	ASSERT_TRUE(d == 0.0 && signbit(d));
	ASSERT_OK(ann_catalog_meta_get_str(t, "metric", s, sizeof s, &e));
	ASSERT_TRUE(strcmp(s, "l2") == 0);
	ASSERT_OK(ann_catalog_meta_get_str(t, "empty", s, sizeof s, &e));
	ASSERT_TRUE(s[0] == '\0');
	ASSERT_OK(ann_catalog_meta_get_blob(t, "params", &p, &n, &e));
	ASSERT_EQ(n, sizeof blob);
	ASSERT_TRUE(memcmp(p, blob, n) == 0);
	/* Wrong type, missing key, small buffer. */
	ASSERT_ERR(ann_catalog_meta_get_u64(t, "metric", &u, &e), e, ANN_E_CORRUPT, "'metric'");
	ASSERT_ERR(ann_catalog_meta_get_str(t, "dim", s, sizeof s, &e), e, ANN_E_CORRUPT, "expected string");
	ASSERT_ERR(ann_catalog_meta_get_u64(t, "nope", &u, &e), e, ANN_E_NOTFOUND, "'nope'");
	ASSERT_ERR(ann_catalog_meta_get_str(t, "metric", s, 2, &e), e, ANN_E_INVAL, "metric");
	/* Writes in a read txn are refused. */
	ASSERT_ERR(ann_catalog_meta_put_u64(t, "x", 1, &e), e, ANN_E_INVAL, "read txn");
	ann_catalog_read_end(t);
	ann_catalog_close(c);
	free(path);
}

struct collect {
	uint32_t pids[64];
	size_t n;
};

static int collect_parts(void *ctx, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen, ann_error *err)
{
	(void)val;
	(void)vlen;
	(void)err;
	struct collect *c = ctx;
	ASSERT_EQ(klen, 4);
	if (c->n < 64)
		c->pids[c->n++] = ann_ldbe32(key);
	return 0;
}

static void test_directory(const char *dir)
{
	t_current = "directory";
	char *path = t_path(dir, "dir.lmdb");
	ann_catalog *c = open_cat(path, 0, true);
	ann_cat_txn *t;
	ann_error e = { 0 };
	/* Ids around byte boundaries: big-endian keys keep numeric order. */
	uint32_t pids[] = { 70000, 3, 255, 256, 0, 65535, 65536, 1 };
	size_t np = sizeof pids / sizeof *pids;
	ann_dirent ref[8];
	ASSERT_OK(ann_catalog_write_begin(c, &t, &e));
	for (size_t i = 0; i < np; i++) {
		ann_dirent *d = &ref[i];
		memset(d, 0, sizeof *d);
		d->kind = (i & 1) ? ANN_KIND_LMDB : ANN_KIND_FILE;
		d->offset = 4096 * (ann_rng_below(&rng, 1000) + 1);
		d->length = (uint32_t)(4096 * (ann_rng_below(&rng, 16) + 1));
		d->count = (uint32_t)ann_rng_below(&rng, 100000);
		d->generation = (uint32_t)ann_rng_below(&rng, 9) + 1;
		d->checksum = ann_rng_next(&rng);
		ASSERT_OK(ann_catalog_part_put(t, pids[i], d, &e));
	}
	for (uint64_t id = 0; id < 1000; id++)
		ASSERT_OK(ann_catalog_idmap_put(t, id * 7919, (uint32_t)(id % 13), &e));
	uint8_t model[5000];
	for (size_t i = 0; i < sizeof model; i++)
		model[i] = (uint8_t)(i * 31);
	ASSERT_OK(ann_catalog_model_put(t, "encoder", model, sizeof model, &e));
	ann_extent x = { 8192, 12288, 5 };
	ASSERT_OK(ann_catalog_free_put(t, &x, &e));
	ann_extent y = { 4096, 4096, 7 };
	ASSERT_OK(ann_catalog_free_put(t, &y, &e));
	ASSERT_OK(ann_catalog_commit(t, &e));

	ASSERT_OK(ann_catalog_read_begin(c, &t, &e));
	for (size_t i = 0; i < np; i++) {
		ann_dirent d;
		ASSERT_OK(ann_catalog_part_get(t, pids[i], &d, &e));
		ASSERT_TRUE(memcmp(&d, &ref[i], sizeof d) == 0);
	}
	ann_dirent d;
	ASSERT_ERR(ann_catalog_part_get(t, 4, &d, &e), e, ANN_E_NOTFOUND, "partition 4");
	struct collect col = { { 0 }, 0 };
	ASSERT_OK(ann_catalog_foreach(t, ANN_CAT_PARTS, NULL, 0, collect_parts, &col, &e));
	ASSERT_EQ(col.n, np);
	for (size_t i = 1; i < col.n; i++)
		ASSERT_LT(col.pids[i - 1], col.pids[i]);
	uint64_t cnt;
	ASSERT_OK(ann_catalog_count(t, ANN_CAT_IDMAP, &cnt, &e));
	ASSERT_EQ(cnt, 1000);
	for (uint64_t id = 0; id < 1000; id += 37) {
		uint32_t pid;
		ASSERT_OK(ann_catalog_idmap_get(t, id * 7919, &pid, &e));
		ASSERT_EQ(pid, id % 13);
	}
	uint32_t pid;
	ASSERT_ERR(ann_catalog_idmap_get(t, 5, &pid, &e), e, ANN_E_NOTFOUND, "id 5");
	const uint8_t *m;
	size_t mn;
	ASSERT_OK(ann_catalog_model_get(t, "encoder", &m, &mn, &e));
	ASSERT_EQ(mn, sizeof model);
	ASSERT_TRUE(memcmp(m, model, mn) == 0);
	ann_extent *xs;
	size_t nx;
	ASSERT_OK(ann_catalog_free_load(t, &xs, &nx, &e));
	ASSERT_EQ(nx, 2);
	ASSERT_EQ(xs[0].offset, 4096);
	ASSERT_EQ(xs[0].freed_tx, 7);
	ASSERT_EQ(xs[1].offset, 8192);
	ASSERT_EQ(xs[1].length, 12288);
	ann_free(xs);
	/* RAM directory: dense by id. */
	ann_dir dir_ram;
	ASSERT_OK(ann_catalog_dir_load(t, &dir_ram, &e));
	ASSERT_EQ(dir_ram.n, 70001);
	ASSERT_EQ(dir_ram.count, np);
	for (size_t i = 0; i < np; i++)
		ASSERT_TRUE(memcmp(&dir_ram.ents[pids[i]], &ref[i], sizeof ref[i]) == 0);
	ASSERT_EQ(dir_ram.ents[2].kind, ANN_KIND_NONE);
	ann_catalog_dir_free(&dir_ram);
	uint64_t nbad = 99;
	ASSERT_OK(ann_catalog_verify(t, NULL, NULL, &nbad, &e));
	ASSERT_EQ(nbad, 0);
	ann_catalog_read_end(t);

	/* Deletes. */
	ASSERT_OK(ann_catalog_write_begin(c, &t, &e));
	ASSERT_OK(ann_catalog_part_del(t, 255, &e));
	ASSERT_ERR(ann_catalog_part_del(t, 255, &e), e, ANN_E_NOTFOUND, "partition 255");
	ASSERT_OK(ann_catalog_idmap_del(t, 0, &e));
	ASSERT_OK(ann_catalog_free_del(t, 4096, &e));
	/* A NOTFOUND delete does not fail the txn. */
	ASSERT_OK(ann_catalog_commit(t, &e));
	ASSERT_OK(ann_catalog_read_begin(c, &t, &e));
	ASSERT_ERR(ann_catalog_part_get(t, 255, &d, &e), e, ANN_E_NOTFOUND, "255");
	ASSERT_OK(ann_catalog_count(t, ANN_CAT_IDMAP, &cnt, &e));
	ASSERT_EQ(cnt, 999);
	ann_catalog_read_end(t);
	ann_catalog_close(c);
	free(path);
}

/* ---- map growth with reader threads ---- */

struct reader_arg {
	ann_catalog *c;
	atomic_int *stop;
	uint64_t reads;
	int bad;
};

static void *reader_thread(void *p)
{
	struct reader_arg *a = p;
	while (!atomic_load(a->stop)) {
		ann_cat_txn *t;
		ann_error e = { 0 };
		if (ann_catalog_read_begin(a->c, &t, &e) < 0) {
			a->bad++;
			break;
		}
		uint64_t x = 0, y = 0;
		int r1 = ann_catalog_meta_get_u64(t, "x", &x, &e);
		int r2 = ann_catalog_meta_get_u64(t, "y", &y, &e);
		if (r1 != r2 || x != y)
			a->bad++;
		ann_catalog_read_end(t);
		a->reads++;
	}
	return NULL;
}

static void test_map_growth(const char *dir)
{
	t_current = "map_growth";
	char *path = t_path(dir, "grow.lmdb");
	ann_catalog *c = open_cat(path, 64 << 10, true);
	atomic_int stop = 0;
	struct reader_arg ra[2] = { { c, &stop, 0, 0 }, { c, &stop, 0, 0 } };
	pthread_t th[2];
	for (int i = 0; i < 2; i++)
		ASSERT_EQ(pthread_create(&th[i], NULL, reader_thread, &ra[i]), 0);
	ann_error e = { 0 };
	const uint64_t n = 20000;
	for (int round = 0; round < 3; round++) {
		ann_cat_txn *t;
		ASSERT_OK(ann_catalog_write_begin(c, &t, &e));
		for (uint64_t i = 0; i < n; i++)
			ASSERT_OK(ann_catalog_idmap_put(t, i + (uint64_t)round * n, (uint32_t)i, &e));
		/* A value much larger than the initial map: overflow pages. */
		size_t big = 300 << 10;
		uint8_t *blob = malloc(big);
		for (size_t i = 0; i < big; i++)
			blob[i] = (uint8_t)(i ^ (size_t)round);
		ASSERT_OK(ann_catalog_model_put(t, "big", blob, big, &e));
		free(blob);
		ASSERT_OK(ann_catalog_meta_put_u64(t, "x", (uint64_t)round, &e));
		ASSERT_OK(ann_catalog_meta_put_u64(t, "y", (uint64_t)round, &e));
		ASSERT_OK(ann_catalog_commit(t, &e));
	}
	atomic_store(&stop, 1);
	for (int i = 0; i < 2; i++) {
		pthread_join(th[i], NULL);
		ASSERT_EQ(ra[i].bad, 0);
	}
	ann_catalog_space sp;
	ASSERT_OK(ann_catalog_space_get(c, &sp, &e));
	printf("  map grew %llu times to %llu bytes; data.mdb %llu bytes, %llu on disk, %llu in use\n",
	       (unsigned long long)sp.map_grows, (unsigned long long)sp.map_bytes, (unsigned long long)sp.file_bytes,
	       (unsigned long long)sp.disk_bytes, (unsigned long long)sp.used_bytes);
	ASSERT_TRUE(sp.map_grows > 0);
	ASSERT_TRUE(sp.map_bytes > (64u << 10));
	ASSERT_EQ(sp.db_entries[ANN_CAT_IDMAP], 3 * n);
	ASSERT_LE(sp.used_bytes, sp.last_page * sp.page_bytes);
	ann_cat_txn *t;
	ASSERT_OK(ann_catalog_read_begin(c, &t, &e));
	for (uint64_t i = 0; i < 3 * n; i += 997) {
		uint32_t pid;
		ASSERT_OK(ann_catalog_idmap_get(t, i, &pid, &e));
		ASSERT_EQ(pid, i % n);
	}
	ann_catalog_read_end(t);
	ann_catalog_close(c);
	/* Reopen with a map smaller than the file: LMDB adopts the file size. */
	c = open_cat(path, 64 << 10, false);
	ASSERT_OK(ann_catalog_read_begin(c, &t, &e));
	uint64_t x;
	ASSERT_OK(ann_catalog_meta_get_u64(t, "x", &x, &e));
	ASSERT_EQ(x, 2);
	ann_catalog_read_end(t);
	ann_catalog_close(c);
	free(path);
}

/* ---- snapshots ---- */

static void test_snapshot_inprocess(const char *dir)
{
	t_current = "snapshot_inprocess";
	char *path = t_path(dir, "snap.lmdb");
	ann_catalog *c = open_cat(path, 0, true);
	ann_error e = { 0 };
	ann_cat_txn *w, *r;
	ASSERT_OK(ann_catalog_write_begin(c, &w, &e));
	ASSERT_OK(ann_catalog_meta_put_u64(w, "v", 1, &e));
	ASSERT_OK(ann_catalog_commit(w, &e));
	ASSERT_OK(ann_catalog_read_begin(c, &r, &e));
	uint64_t snap = ann_catalog_txn_id(r);
	uint64_t oldest;
	ASSERT_OK(ann_catalog_oldest_reader(c, &oldest, &e));
	ASSERT_EQ(oldest, snap);
	ASSERT_OK(ann_catalog_write_begin(c, &w, &e));
	ASSERT_EQ(ann_catalog_txn_id(w), snap + 1);
	ASSERT_OK(ann_catalog_meta_put_u64(w, "v", 2, &e));
	/* The write txn reads its own write; the reader does not. */
	uint64_t v;
	ASSERT_OK(ann_catalog_meta_get_u64(w, "v", &v, &e));
	ASSERT_EQ(v, 2);
	ASSERT_OK(ann_catalog_commit(w, &e));
	ASSERT_OK(ann_catalog_meta_get_u64(r, "v", &v, &e));
	ASSERT_EQ(v, 1);
	ASSERT_EQ(ann_catalog_last_txnid(c), snap + 1);
	/* Reset/renew moves the reader to the newest snapshot. */
	ann_catalog_read_reset(r);
	ASSERT_OK(ann_catalog_oldest_reader(c, &oldest, &e));
	ASSERT_TRUE(oldest == UINT64_MAX);
	ASSERT_OK(ann_catalog_read_renew(r, &e));
	ASSERT_OK(ann_catalog_meta_get_u64(r, "v", &v, &e));
	ASSERT_EQ(v, 2);
	ann_catalog_read_end(r);
	/* Aborted writes vanish. */
	ASSERT_OK(ann_catalog_write_begin(c, &w, &e));
	ASSERT_OK(ann_catalog_meta_put_u64(w, "v", 3, &e));
	ann_catalog_abort(w);
	ASSERT_OK(ann_catalog_read_begin(c, &r, &e));
	ASSERT_OK(ann_catalog_meta_get_u64(r, "v", &v, &e));
	ASSERT_EQ(v, 2);
	ann_catalog_read_end(r);
	ann_catalog_close(c);
	free(path);
}

/* A child process reads (a, b, a+b == 1000 invariant) while the parent
 * commits; every snapshot it sees must satisfy the invariant. */
static void test_snapshot_process(const char *dir)
{
	t_current = "snapshot_process";
	char *path = t_path(dir, "proc.lmdb");
	ann_catalog *c = open_cat(path, 0, true);
	ann_error e = { 0 };
	ann_cat_txn *w;
	ASSERT_OK(ann_catalog_write_begin(c, &w, &e));
	ASSERT_OK(ann_catalog_meta_put_u64(w, "a", 1000, &e));
	ASSERT_OK(ann_catalog_meta_put_u64(w, "b", 0, &e));
	ASSERT_OK(ann_catalog_commit(w, &e));
	int go[2];
	ASSERT_EQ(pipe(go), 0);
	pid_t child = fork();
	ASSERT_TRUE(child >= 0);
	if (child == 0) {
		close(go[1]);
		ann_catalog_opts o;
		ann_catalog_opts_init(&o);
		ann_catalog *cc = NULL;
		if (ann_catalog_open(path, &o, &cc, NULL) < 0)
			_exit(2);
		char ch;
		if (read(go[0], &ch, 1) != 1)
			_exit(3);
		uint64_t seen = 0, last = 0;
		int bad = 0;
		for (int i = 0; i < 3000 && !bad; i++) {
			ann_cat_txn *r;
			if (ann_catalog_read_begin(cc, &r, NULL) < 0)
				_exit(4);
			uint64_t a = 0, b = 0;
			if (ann_catalog_meta_get_u64(r, "a", &a, NULL) < 0 || ann_catalog_meta_get_u64(r, "b", &b, NULL) < 0)
				bad = 1;
			if (a + b != 1000 || b < last)
				bad = 1;
			if (b != last)
				seen++;
			last = b;
			ann_catalog_read_end(r);
		}
		ann_catalog_close(cc);
		_exit(bad ? 1 : 0);
	}
	close(go[0]);
	ASSERT_EQ(write(go[1], "g", 1), 1);
	for (uint64_t i = 1; i <= 200; i++) {
		ASSERT_OK(ann_catalog_write_begin(c, &w, &e));
		ASSERT_OK(ann_catalog_meta_put_u64(w, "a", 1000 - i, &e));
		ASSERT_OK(ann_catalog_meta_put_u64(w, "b", i, &e));
		ASSERT_OK(ann_catalog_commit(w, &e));
	}
	close(go[1]);
	int status;
	ASSERT_EQ(waitpid(child, &status, 0), child);
	ASSERT_TRUE(WIFEXITED(status));
	ASSERT_EQ(WEXITSTATUS(status), 0);
	ann_catalog_close(c);
	free(path);
}

/* ---- corruption ---- */

/* Finds needle in the file and flips one bit of it (bit index bit). */
static bool flip_in_file(const char *file, const uint8_t *needle, size_t nlen, size_t bit)
{
	size_t n;
	uint8_t *buf = t_read_file(file, &n);
	bool done = false;
	for (size_t i = 0; i + nlen <= n && !done; i++) {
		if (memcmp(buf + i, needle, nlen) == 0) {
			int fd = open(file, O_WRONLY);
			uint8_t b = buf[i + bit / 8] ^ (uint8_t)(1u << (bit % 8));
			ASSERT_EQ(pwrite(fd, &b, 1, (off_t)(i + bit / 8)), 1);
			close(fd);
			done = true;
		}
	}
	free(buf);
	return done;
}

struct issues {
	int n;
	char last[512];
	int64_t pid;
	const char *db;
};

static void on_issue(void *ctx, const ann_issue *is)
{
	struct issues *s = ctx;
	s->n++;
	s->pid = is->pid;
	s->db = is->db;
	snprintf(s->last, sizeof s->last, "%s", is->msg);
}

static void test_corruption(const char *dir)
{
	t_current = "corruption";
	char *path = t_path(dir, "bad.lmdb");
	char *data = t_path(path, "data.mdb");
	ann_catalog *c = open_cat(path, 0, true);
	ann_error e = { 0 };
	ann_cat_txn *t;
	uint8_t blob[64];
	for (size_t i = 0; i < sizeof blob; i++)
		blob[i] = (uint8_t)(0xA0 + i);
	ann_dirent d = { 40960, 0x1122334455667788ull, 8192, 77, 3, ANN_KIND_FILE };
	ASSERT_OK(ann_catalog_write_begin(c, &t, &e));
	ASSERT_OK(ann_catalog_meta_put_blob(t, "params", blob, sizeof blob, &e));
	ASSERT_OK(ann_catalog_part_put(t, 42, &d, &e));
	ASSERT_OK(ann_catalog_commit(t, &e));
	ann_catalog_close(c);

	/* One bit of the meta blob, one of the parts entry. */
	ASSERT_TRUE(flip_in_file(data, blob, sizeof blob, ann_rng_below(&rng, sizeof blob * 8)));
	uint8_t enc[ANN_PARTS_VALUE_BYTES];
	ann_catalog_part_encode(enc, &d);
	ASSERT_TRUE(flip_in_file(data, enc, sizeof enc, 8 + ann_rng_below(&rng, 24 * 8)));

	c = open_cat(path, 0, false);
	ASSERT_OK(ann_catalog_read_begin(c, &t, &e));
	const uint8_t *p;
	size_t n;
	ASSERT_ERR(ann_catalog_meta_get_blob(t, "params", &p, &n, &e), e, ANN_E_CORRUPT, "meta 'params'");
	ASSERT_ERR(ann_catalog_part_get(t, 42, &d, &e), e, ANN_E_CORRUPT, "parts partition 42");
	ann_dir dr;
	ASSERT_ERR(ann_catalog_dir_load(t, &dr, &e), e, ANN_E_CORRUPT, "partition 42");
	ASSERT_OK(ann_catalog_dir_load_valid(t, &dr, &e));
	ASSERT_EQ(dr.count, 0);
	ann_catalog_dir_free(&dr);
	struct issues is = { 0, "", 0, NULL };
	uint64_t nbad = 0;
	ASSERT_OK(ann_catalog_verify(t, on_issue, &is, &nbad, &e));
	ASSERT_EQ(nbad, 2);
	ASSERT_EQ(is.n, 2);
	ASSERT_EQ(is.pid, 42); /* parts is scanned after meta */
	ASSERT_TRUE(strcmp(is.db, "parts") == 0);
	ASSERT_TRUE(strstr(is.last, "checksum") != NULL);
	/* The others still read. */
	uint64_t v;
	ASSERT_OK(ann_catalog_meta_get_u64(t, "catalog.major", &v, &e));
	ann_catalog_read_end(t);
	ann_catalog_close(c);
	free(data);
	free(path);
}

static void test_format(const char *dir)
{
	t_current = "format";
	ann_error e = { 0 };
	ann_catalog *c = NULL;
	ann_catalog_opts o;
	ann_catalog_opts_init(&o);
	char *path = t_path(dir, "nope.lmdb");
	ASSERT_ERR(ann_catalog_open(path, &o, &c, &e), e, ANN_E_NOTFOUND, "nope.lmdb");
	ASSERT_TRUE(c == NULL);
	free(path);
	path = t_path(dir, "v2.lmdb");
	c = open_cat(path, 0, true);
	ann_cat_txn *t;
	ASSERT_OK(ann_catalog_write_begin(c, &t, &e));
	ASSERT_OK(ann_catalog_meta_put_u64(t, "catalog.major", 2, &e));
	ASSERT_OK(ann_catalog_commit(t, &e));
	ann_catalog_close(c);
	c = NULL;
	ASSERT_ERR(ann_catalog_open(path, &o, &c, &e), e, ANN_E_FORMAT, "format 2.0");
	free(path);
	/* A file where the directory should be. */
	path = t_path(dir, "plain");
	t_write_file(path, "x", 1);
	ASSERT_ERR(ann_catalog_open(path, &o, &c, &e), e, ANN_E_FORMAT, "not a directory");
	free(path);
	/* Read-only open refuses write txns. */
	path = t_path(dir, "ro.lmdb");
	ann_catalog_close(open_cat(path, 0, true));
	o.readonly = true;
	ASSERT_OK(ann_catalog_open(path, &o, &c, &e));
	ASSERT_ERR(ann_catalog_write_begin(c, &t, &e), e, ANN_E_INVAL, "read-only");
	ann_catalog_close(c);
	free(path);
}

/* Every allocation of open/txn/put/commit may fail: a clean error, no leak. */
static void test_alloc_failures(const char *dir)
{
	t_current = "alloc_failures";
	char *path = t_path(dir, "oom.lmdb");
	ann_catalog_close(open_cat(path, 0, true));
	int64_t base = ann_mem_live_bytes();
	int ok = 0;
	for (int64_t k = 0; k < 40; k++) {
		ann_mem_fail_after(k);
		ann_catalog_opts o;
		ann_catalog_opts_init(&o);
		ann_catalog *c = NULL;
		ann_error e = { 0 };
		int rc = ann_catalog_open(path, &o, &c, &e);
		ann_cat_txn *t = NULL;
		if (rc == ANN_OK)
			rc = ann_catalog_write_begin(c, &t, &e);
		for (int i = 0; rc == ANN_OK && i < 50; i++)
			rc = ann_catalog_idmap_put(t, (uint64_t)i, (uint32_t)k, &e);
		if (rc == ANN_OK) {
			rc = ann_catalog_commit(t, &e);
		} else if (t) {
			ann_catalog_abort(t);
		}
		ann_mem_fail_after(-1);
		if (rc < 0)
			ASSERT_EQ(rc, ANN_E_NOMEM);
		else
			ok++;
		ann_catalog_close(c);
		ASSERT_EQ(ann_mem_live_bytes(), base);
	}
	ASSERT_TRUE(ok > 0);
	free(path);
}

/* Reader slots of this process in the lock file's table, as mdb_reader_list
 * prints them ("pid thread txnid" per line, after a header). */
static int count_mine(const char *msg, void *ctx)
{
	long pid = 0;
	if (sscanf(msg, "%ld", &pid) == 1 && pid == (long)getpid())
		(*(int *)ctx)++;
	return 0;
}

static int my_readers(MDB_env *env)
{
	int n = 0;
	ASSERT_TRUE(mdb_reader_list(env, count_mine, &n) >= 0);
	return n;
}

/* One LMDB environment per catalog per process: a reader and a writer of
 * the same catalog in one process share it. With two environments, the
 * second one's open took the lock file's exclusive lock (POSIX locks do not
 * conflict within a process), believed itself the first user and reset the
 * reader table, so the reader's slot vanished while its txn lived on: a
 * writer could reuse the pages it was reading. Its close then dropped the
 * process's locks on the file. */
static void test_one_env(const char *dir)
{
	t_current = "one env";
	char *path = t_path(dir, "oneenv.lmdb");
	ann_catalog *w = open_cat(path, 0, true);
	ann_cat_txn *t;
	ASSERT_OK(ann_catalog_write_begin(w, &t, NULL));
	ASSERT_OK(ann_catalog_meta_put_u64(t, "x", 1, NULL));
	ASSERT_OK(ann_catalog_commit(t, NULL));
	ann_catalog_close(w);
	ann_catalog_opts ro;
	ann_catalog_opts_init(&ro);
	ro.readonly = true;
	ann_catalog *r = NULL;
	ASSERT_OK(ann_catalog_open(path, &ro, &r, NULL));
	ann_cat_txn *rt;
	ASSERT_OK(ann_catalog_read_begin(r, &rt, NULL)); /* a live reader slot */
	ASSERT_EQ(my_readers(r->env), 1);
	w = open_cat(path, 0, false);
	ASSERT_EQ(my_readers(r->env), 1); /* the writer's open kept it */
	ASSERT_TRUE(w->env == r->env);    /* shared */
	ASSERT_OK(ann_catalog_write_begin(w, &t, NULL));
	ASSERT_OK(ann_catalog_meta_put_u64(t, "x", 2, NULL));
	ASSERT_OK(ann_catalog_commit(t, NULL));
	ann_catalog_close(w); /* the writer goes; the reader stays */
	ASSERT_EQ(my_readers(r->env), 1);
	ann_error e = {0};
	ASSERT_ERR(ann_catalog_write_begin(r, &t, &e), e, ANN_E_INVAL, "read-only"); /* still a reader */
	uint64_t x = 0;
	ASSERT_OK(ann_catalog_meta_get_u64(rt, "x", &x, NULL));
	ASSERT_EQ(x, 1); /* its snapshot */
	ann_catalog_read_end(rt);
	ann_catalog_close(r);
	/* closed by the last handle: a new open makes a new environment and works */
	r = open_cat(path, 0, false);
	ASSERT_OK(ann_catalog_read_begin(r, &rt, NULL));
	ASSERT_OK(ann_catalog_meta_get_u64(rt, "x", &x, NULL));
	ASSERT_EQ(x, 2);
	ann_catalog_read_end(rt);
	ann_catalog_close(r);
	free(path);
}

int main(void)
{
	t_init("test_catalog", &rng);
	char *dir = t_tmpdir();
	test_meta_types(dir);
	test_directory(dir);
	test_map_growth(dir);
	test_snapshot_inprocess(dir);
	test_snapshot_process(dir);
	test_one_env(dir);
	test_corruption(dir);
	test_format(dir);
	test_alloc_failures(dir);
	t_rmtree(dir);
	free(dir);
	printf("test_catalog: ok\n");
	return 0;
}
