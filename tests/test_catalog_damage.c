/* SPDX-License-Identifier: MIT */
/*
 * Description: a damaged catalog.lmdb/data.mdb never faults a reader or a
 * writer (issue 13 D2-D4). On a real index built through the API:
 *  - truncated at every page boundary: open, verify and search each fail
 *    with one ANN_E_CORRUPT naming data.mdb (no SIGBUS);
 *  - one bit flipped in each byte of both meta pages' fields, of every page
 *    header and node table, in every 3rd node byte and every 64th byte
 *    elsewhere (every 8th of these by default, ANNANN_FLIP_STRIDE=1 for all): in a child process, open, info, verify, a write and
 *    search end in exit 0 with the very answers of the intact index, or in a
 *    clean error naming the index; never a signal;
 *  - a free list naming a page past the end, or a page that a database uses:
 *    open refuses with "run 'annann repair", a write txn begun on a catalog
 *    damaged while open refuses and changes nothing, ann_repair rebuilds the
 *    catalog (verify clean, search unchanged, writes work) and keeps the old
 *    one; repair refuses damage inside a database and changes nothing.
 *  - the catalog's facts against the blocks, the directory and the router
 *    (D7, D8): a changed index.encoding, index.dim, index.metric,
 *    index.vectors or index.stored_vectors (valid checksums) fails the open
 *    with a message saying what disagrees; a sound block of another dimension
 *    or encoding spliced into the last partition fails search cleanly and is
 *    reported by verify.
 *  - a tombstone whose value is damaged after the searcher opened (the
 *    disk, not a writer): the search fails with ANN_E_CORRUPT naming the id,
 *    never answers with the deleted id brought back.
 * Seed: ANNANN_TEST_SEED (printed on failure).
 */
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "block.h"
#include "catalog.h"
#include "index.h"
#include "store.h"
#include "testutil.h"
#include "vecio.h"

#define N 2000
#define D 16
#define NQ 8
#define K 5
#define PARTS 6
#define PS 4096u

static float base[N * D], queries[NQ * D];
static int64_t want_ids[NQ * K];

static void make_index(const char *dir, const char *data, const char *name, ann_rng *rng, bool first)
{
	if (first) {
		for (size_t i = 0; i < (N + NQ) * D; i++) {
			float x = (float)(int)(ann_rng_below(rng, 200) + 20);
			if (i < N * D)
				base[i] = x;
			else
				queries[i - N * D] = x;
		}
		ann_vwriter *w;
		ASSERT_OK(ann_vwriter_open(data, D, &w, NULL));
		ASSERT_OK(ann_vwriter_write_f32(w, base, N, NULL));
		ASSERT_OK(ann_vwriter_close(w, NULL));
	}
	ann_build_opts o;
	ann_build_opts_init(&o);
	o.partitions = PARTS;
	o.mem_bytes = (size_t)64 << 20;
	o.threads = 1;
	char *path = t_path(dir, name);
	ann_error e = {0};
	if (ann_build(data, path, &o, &e) < 0)
		T_FAIL("build: %s", e.msg);
	free(path);
}

/* Searches every query over all partitions into ids (NQ * K). */
static int search_ids(const char *path, int64_t *ids, ann_error *e)
{
	ann_index *idx;
	int rc = ann_index_open(path, &idx, e);
	if (rc < 0)
		return rc;
	ann_index_info in;
	rc = ann_index_get_info(idx, &in, e);
	ann_search_opts so;
	ann_search_opts_init(&so);
	so.k = K;
	so.nprobe = PARTS;
	ann_searcher *s = NULL;
	if (rc == 0)
		rc = ann_searcher_new(idx, &so, &s, e);
	float dists[NQ * K];
	if (rc == 0)
		rc = ann_search(s, queries, NQ, ids, dists, NULL, e);
	ann_searcher_free(s);
	ann_index_close(idx);
	return rc;
}

static char *data_mdb(const char *idx)
{
	char *cat = t_path(idx, "catalog.lmdb");
	char *p = t_path(cat, "data.mdb");
	free(cat);
	return p;
}

static void copy_tree(const char *from, const char *to)
{
	char cmd[2048];
	snprintf(cmd, sizeof cmd, "rm -rf '%s' && cp -r '%s' '%s'", to, from, to);
	ASSERT_EQ(system(cmd), 0);
}

static void xor_byte(const char *file, uint64_t off, uint8_t mask)
{
	int fd = open(file, O_RDWR);
	ASSERT_TRUE(fd >= 0);
	uint8_t b;
	ASSERT_EQ(pread(fd, &b, 1, (off_t)off), 1);
	b ^= mask;
	ASSERT_EQ(pwrite(fd, &b, 1, (off_t)off), 1);
	close(fd);
}

static void put_u64(const char *file, uint64_t off, uint64_t v)
{
	uint8_t b[8];
	ann_st64(b, v);
	int fd = open(file, O_RDWR);
	ASSERT_TRUE(fd >= 0);
	ASSERT_EQ(pwrite(fd, b, 8, (off_t)off), 8);
	close(fd);
}

/* The newer meta page: offset of its free-DB record, its last page. */
static void newest_meta(const uint8_t *f, uint64_t *last, uint64_t *free_root)
{
	int m = ann_ld64(f + 144) > ann_ld64(f + PS + 144) ? 0 : 1;
	*last = ann_ld64(f + (size_t)m * PS + 136);
	*free_root = ann_ld64(f + (size_t)m * PS + 40 + 40);
}

/* Byte offset of the first page number listed in the free list, and the
 * page number of some leaf page of the named databases (not free, not meta). */
static uint64_t free_entry(const char *file, uint64_t *used_page)
{
	size_t n;
	uint8_t *f = t_read_file(file, &n);
	uint64_t last, fr;
	newest_meta(f, &last, &fr);
	ASSERT_TRUE(fr != UINT64_MAX && fr <= last);
	const uint8_t *p = f + fr * PS;
	ASSERT_EQ(ann_ld16(p + 10), 2); /* a leaf: the test index's free list fits one page */
	uint16_t node = ann_ld16(p + 16);
	const uint8_t *nd = p + node;
	ASSERT_EQ(ann_ld16(nd + 6), 8);
	ASSERT_TRUE(ann_ld64(nd + 16) >= 1); /* the list: count, then pages */
	uint64_t off = fr * PS + node + 8 + 8 + 8;
	*used_page = 0;
	for (uint64_t pg = 2; pg <= last && !*used_page; pg++)
		if (pg != fr && ann_ld16(f + pg * PS + 10) == 2 && ann_ld64(f + pg * PS) == pg)
			*used_page = pg;
	ASSERT_TRUE(*used_page != 0);
	free(f);
	return off;
}

static void expect_damaged(const char *path, const char *needle)
{
	ann_error e = {0};
	ann_index *idx = NULL;
	int rc = ann_index_open(path, &idx, &e);
	if (rc != ANN_E_CORRUPT || !strstr(e.msg, "data.mdb") || !strstr(e.msg, "damaged catalog") ||
	    !strstr(e.msg, needle))
		T_FAIL("open %s: rc %d '%s', expected a damaged catalog mentioning '%s'", path, rc, e.msg, needle);
	uint64_t problems = 0;
	ASSERT_OK(ann_verify(path, NULL, NULL, &problems, &e));
	ASSERT_TRUE(problems >= 1);
}

/* D2: every truncation that cuts a page in use fails cleanly. */
static void test_truncation(const char *dir, const char *idx)
{
	t_current = "test_truncation";
	char *file = data_mdb(idx);
	struct stat st;
	ASSERT_EQ(stat(file, &st), 0);
	char *t = t_path(dir, "trunc");
	char *tf = data_mdb(t);
	for (off_t cut = 0; cut < st.st_size; cut += PS / 2) {
		copy_tree(idx, t);
		ASSERT_EQ(truncate(tf, cut), 0);
		ann_error e = {0};
		int64_t ids[NQ * K];
		int rc = search_ids(t, ids, &e);
		if (rc >= 0)
			T_FAIL("truncated to %lld bytes: the index still opens", (long long)cut);
		if (!strstr(e.msg, "catalog") && !strstr(e.msg, "data.mdb"))
			T_FAIL("truncated to %lld bytes: '%s' names no catalog", (long long)cut, e.msg);
		if (cut >= 2 * PS && (rc != ANN_E_CORRUPT || !strstr(e.msg, "truncated")))
			T_FAIL("truncated to %lld bytes: rc %d '%s', expected a truncated catalog", (long long)cut, rc, e.msg);
		uint64_t problems = 0;
		rc = ann_verify(t, NULL, NULL, &problems, &e);
		ASSERT_TRUE(rc < 0 || problems >= 1);
	}
	free(tf);
	free(t);
	free(file);
}

/* Runs open, info, verify, search and (every 16th run: its commit fsyncs)
 * a delete in a child on a copy of the index with one byte flipped. Child exit: 0 healthy and same answers,
 * 1 clean error naming the index, 3 wrong answers, 4 an error naming nothing. */
static int named(const char *path, const ann_error *e)
{
	if (strstr(e->msg, path))
		return 1;
	fprintf(stderr, "error naming no file: %s\n", e->msg);
	return 4;
}

static int child_run(const char *path, bool write)
{
	ann_error e = {0};
	int64_t ids[NQ * K];
	int rc = search_ids(path, ids, &e);
	if (rc < 0)
		return named(path, &e);
	if (memcmp(ids, want_ids, sizeof ids) != 0)
		return 3;
	uint64_t problems = 0;
	rc = ann_verify(path, NULL, NULL, &problems, &e);
	if (rc < 0)
		return named(path, &e);
	if (problems)
		return 1;
	if (!write)
		return 0;
	ann_writer *w;
	rc = ann_writer_open(path, &w, &e);
	if (rc < 0)
		return named(path, &e);
	int64_t del = 7;
	rc = ann_delete(w, &del, 1, NULL, &e);
	ann_writer_close(w);
	if (rc < 0)
		return named(path, &e);
	/* A write that commits must leave a healthy catalog. */
	rc = ann_verify(path, NULL, NULL, &problems, &e);
	if (rc < 0 || problems)
		return 5;
	return 0;
}

static void test_flips(const char *dir, const char *idx, ann_rng *rng)
{
	t_current = "test_flips";
	char *file = data_mdb(idx);
	size_t n;
	uint8_t *f = t_read_file(file, &n);
	char *t = t_path(dir, "flip");
	char *tf = data_mdb(t);
	copy_tree(idx, t);
	/* The candidates below number about 2800 on this index; by default every
	 * 8th runs, from a seed-chosen phase (ANNANN_FLIP_STRIDE=1: all of them). */
	size_t runs = 0, clean = 0, errors = 0, cand = 0, stride = 8;
	const char *env = getenv("ANNANN_FLIP_STRIDE");
	if (env && atoi(env) >= 1)
		stride = (size_t)atoi(env);
	size_t phase = (size_t)ann_rng_below(rng, stride);
	for (size_t pg = 0; pg < n / PS; pg++) {
		const uint8_t *p = f + pg * PS;
		unsigned lower = ann_ld16(p + 12), upper = ann_ld16(p + 14);
		bool meta = pg < 2, overflow = ann_ld16(p + 10) == 4, leafish = !meta && !overflow && lower <= upper &&
										 upper <= PS;
		for (size_t b = 0; b < PS; b++) {
			/* Every byte of the meta fields and of page headers and node
			 * tables; one in 3 node bytes; one in 64 elsewhere (overflow
			 * values are checksummed, free space is never read). */
			bool take;
			if (meta)
				take = b < 152;
			else if (b < 16 || (leafish && b < lower))
				take = true;
			else if (leafish && b >= upper)
				take = b % 3 == pg % 3;
			else
				take = b % 64 == pg % 64;
			if (!take || cand++ % stride != phase)
				continue;
			uint8_t mask = (uint8_t)(1u << ann_rng_below(rng, 8));
			/* Restore the intact file (a child may have committed), then flip. */
			int fd = open(tf, O_RDWR);
			ASSERT_TRUE(fd >= 0);
			ASSERT_EQ(ftruncate(fd, (off_t)n), 0);
			ASSERT_EQ(pwrite(fd, f, n, 0), (ssize_t)n);
			uint8_t x = f[pg * PS + b] ^ mask;
			ASSERT_EQ(pwrite(fd, &x, 1, (off_t)(pg * PS + b)), 1);
			close(fd);
			fflush(NULL);
			pid_t pid = fork();
			ASSERT_TRUE(pid >= 0);
			if (pid == 0)
				_exit(child_run(t, runs % 16 == 0));
			int status;
			ASSERT_EQ(waitpid(pid, &status, 0), pid);
			runs++;
			if (WIFSIGNALED(status))
				T_FAIL("byte %zu (page %zu) xor 0x%02x: killed by signal %d", pg * PS + b, pg, mask,
				       WTERMSIG(status));
			int code = WEXITSTATUS(status);
			if (code == 0)
				clean++;
			else if (code == 1)
				errors++;
			else
				T_FAIL("byte %zu (page %zu) xor 0x%02x: child exit %d (3: wrong answers, 4: error naming "
				       "nothing, 5: a committed write left damage)", pg * PS + b, pg, mask, code);
		}
	}
	printf("flips: %zu runs, %zu harmless, %zu clean errors\n", runs, clean, errors);
	ASSERT_TRUE(errors > 0 && clean > 0);
	free(tf);
	free(t);
	free(f);
	free(file);
}

/* D4: free-list damage is refused by open and by a write txn begun before
 * the damage, and ann_repair fixes it. */
static void test_free_list(const char *dir, const char *idx)
{
	t_current = "test_free_list";
	char *t = t_path(dir, "freelist");
	char *tf = data_mdb(t);
	uint64_t used = 0;

	/* A page number past the last page (the byte: the top byte of an entry). */
	copy_tree(idx, t);
	uint64_t off = free_entry(tf, &used);
	xor_byte(tf, off + 7, 0x08);
	expect_damaged(t, "run 'annann repair --index");

	/* A write txn on a catalog damaged while it is open refuses, writes nothing. */
	copy_tree(idx, t);
	char *cat = t_path(t, "catalog.lmdb");
	ann_catalog *c;
	ann_error e = {0};
	ASSERT_OK(ann_catalog_open(cat, NULL, &c, &e));
	ann_cat_txn *tx;
	ASSERT_OK(ann_catalog_write_begin(c, &tx, &e));
	ann_catalog_abort(tx);
	xor_byte(tf, off + 7, 0x08);
	size_t n0, n1;
	uint8_t *before = t_read_file(tf, &n0);
	ASSERT_ERR(ann_catalog_write_begin(c, &tx, &e), e, ANN_E_CORRUPT, "run 'annann repair --index");
	ASSERT_TRUE(strstr(e.msg, "data.mdb") != NULL);
	ann_catalog_close(c);
	uint8_t *after = t_read_file(tf, &n1);
	ASSERT_TRUE(n0 == n1 && memcmp(before, after, n0) == 0);
	free(before);
	free(after);

	/* ann_repair rebuilds it: verify clean, same answers, writes work, backup kept. */
	ann_repair_result r;
	ASSERT_OK(ann_repair(t, 1, &r, &e)); /* dry run: nothing changes */
	ASSERT_TRUE(r.damaged && r.backup[0] == 0);
	expect_damaged(t, "free list");
	ASSERT_OK(ann_repair(t, 0, &r, &e));
	ASSERT_TRUE(r.damaged && strstr(r.damage, "free list") && r.entries > 0 && r.bad_values == 0);
	struct stat st;
	ASSERT_EQ(stat(r.backup, &st), 0);
	ASSERT_TRUE(S_ISDIR(st.st_mode));
	uint64_t problems = 1;
	ASSERT_OK(ann_verify(t, NULL, NULL, &problems, &e));
	ASSERT_EQ(problems, 0);
	int64_t ids[NQ * K];
	ASSERT_OK(search_ids(t, ids, &e));
	ASSERT_TRUE(memcmp(ids, want_ids, sizeof ids) == 0);
	ann_writer *w;
	ASSERT_OK(ann_writer_open(t, &w, &e));
	int64_t del[3] = {1, 2, 3};
	uint64_t nd = 0;
	ASSERT_OK(ann_delete(w, del, 3, &nd, &e));
	ASSERT_EQ(nd, 3);
	ann_writer_close(w);
	ASSERT_OK(ann_verify(t, NULL, NULL, &problems, &e));
	ASSERT_EQ(problems, 0);

	/* A free page that a database uses: only the full walk sees it. */
	copy_tree(idx, t);
	off = free_entry(tf, &used);
	put_u64(tf, off, used);
	expect_damaged(t, "counted twice");
	ASSERT_OK(ann_repair(t, 0, &r, &e));
	ASSERT_OK(ann_verify(t, NULL, NULL, &problems, &e));
	ASSERT_EQ(problems, 0);

	/* Damage inside a database: repair refuses and changes nothing. */
	copy_tree(idx, t);
	uint64_t pg = used;
	xor_byte(tf, pg * PS + 12, 0x40); /* the node table's lower bound */
	before = t_read_file(tf, &n0);
	ASSERT_ERR(ann_repair(t, 0, &r, &e), e, ANN_E_CORRUPT, "cannot repair");
	ASSERT_TRUE(strstr(e.msg, "rebuild the index") != NULL);
	after = t_read_file(tf, &n1);
	ASSERT_TRUE(n0 == n1 && memcmp(before, after, n0) == 0);
	free(before);
	free(after);
	free(cat);
	free(tf);
	free(t);
}

static void set_meta(const char *idx, const char *name, uint64_t v)
{
	char *cat = t_path(idx, "catalog.lmdb");
	ann_catalog *c;
	ann_cat_txn *t;
	ann_error e = {0};
	ASSERT_OK(ann_catalog_open(cat, NULL, &c, &e));
	ASSERT_OK(ann_catalog_write_begin(c, &t, &e));
	ASSERT_OK(ann_catalog_meta_put_u64(t, name, v, &e));
	ASSERT_OK(ann_catalog_commit(t, &e));
	ann_catalog_close(c);
	free(cat);
}

static void expect_open_fails(const char *idx, const char *needle, const char *not_needle)
{
	ann_error e = {0};
	ann_index *x = NULL;
	int rc = ann_index_open(idx, &x, &e);
	if (rc != ANN_E_CORRUPT || !strstr(e.msg, idx) || !strstr(e.msg, needle) ||
	    (not_needle && strstr(e.msg, not_needle)))
		T_FAIL("open: rc %d '%s', expected ANN_E_CORRUPT naming the index and '%s'", rc, e.msg, needle);
	uint64_t problems = 0;
	ASSERT_OK(ann_verify(idx, NULL, NULL, &problems, &e));
	ASSERT_TRUE(problems >= 1);
}

/* Replaces partition pid's block by a sound one of another dimension or
 * encoding (checksummed, directory entry updated): D7's spliced block. */
static void splice_block(const char *idx, uint32_t pid, uint32_t dim, ann_block_encoding enc)
{
	ann_store_opts so;
	ann_store_opts_init(&so);
	so.writable = true;
	ann_store *st;
	ann_error e = {0};
	ASSERT_OK(ann_store_open(idx, &so, &st, &e));
	ann_dirent de;
	ASSERT_OK(ann_store_lookup(st, pid, &de, &e));
	size_t cnt = de.count;
	int64_t *ids = malloc(cnt * sizeof *ids);
	float *v = malloc(cnt * dim * sizeof *v);
	for (size_t i = 0; i < cnt; i++)
		ids[i] = (int64_t)i;
	for (size_t i = 0; i < cnt * dim; i++)
		v[i] = base[i % (N * D)];
	ann_block_params bp;
	block_params_init(&bp);
	bp.encoding = enc;
	bp.pad = ann_store_kind_of(st) == ANN_STORE_LMDB ? ANN_BLOCK_PAD_LMDB : ANN_BLOCK_PAD_FILE;
	ann_block_enc *be;
	ASSERT_OK(block_enc_new(&be, &e));
	uint8_t *out = NULL;
	size_t len = 0;
	ASSERT_OK(block_encode(be, &bp, dim, cnt, ids, v, ANN_DTYPE_F32, pid, de.generation + 1, &out, &len, &e));
	ann_store_txn *tx;
	ASSERT_OK(ann_store_begin(st, &tx, &e));
	ann_block_put put = {pid, (uint32_t)cnt, out, len}; /* out is 4096-aligned */
	ASSERT_OK(ann_store_put_blocks(tx, &put, 1, NULL, &e));
	ASSERT_OK(ann_store_commit(tx, &e));
	ann_aligned_free(out);
	block_enc_free(be);
	ann_store_close(st);
	free(ids);
	free(v);
}

/* D7, D8 and the minor meta cases: the catalog's facts against the blocks,
 * the directory and the router. */
static void test_meta(const char *dir, const char *idx)
{
	t_current = "test_meta";
	char *t = t_path(dir, "meta");
	ann_index *x;
	ann_error e = {0};
	ASSERT_OK(ann_index_open(idx, &x, &e));
	ann_encoding enc = x->meta.encoding;
	uint32_t last = UINT32_MAX;
	for (uint32_t p = 0; p < x->dir.n; p++)
		if (x->dir.ents[p].kind != ANN_KIND_NONE)
			last = p;
	ann_index_close(x);
	ann_block_encoding benc = ann_encoding_block(enc);
	ann_block_encoding other = benc == ANN_BLOCK_U8 ? ANN_BLOCK_F32 : ANN_BLOCK_U8;

	/* D8: index.encoding changed with a valid checksum. */
	copy_tree(idx, t);
	set_meta(t, "index.encoding", enc == ANN_ENC_U8 ? ANN_ENC_F32 : ANN_ENC_U8);
	expect_open_fails(t, "encoding", NULL);

	/* D7: a sound block of another dimension or encoding in the last
	 * partition (open probes the first): search fails cleanly, verify names it. */
	for (int k = 0; k < 2; k++) {
		copy_tree(idx, t);
		splice_block(t, last, k ? D : D / 2, k ? other : benc);
		int64_t ids[NQ * K];
		int rc = search_ids(t, ids, &e);
		if (rc != ANN_E_CORRUPT || !strstr(e.msg, "the block holds") || !strstr(e.msg, t))
			T_FAIL("spliced %s: search rc %d '%s'", k ? "encoding" : "dimension", rc, e.msg);
		uint64_t problems = 0;
		ASSERT_OK(ann_verify(t, NULL, NULL, &problems, &e));
		ASSERT_TRUE(problems >= 1);
	}

	/* index.vectors = 2^63 - 1; index.stored_vectors off by one. */
	copy_tree(idx, t);
	set_meta(t, "index.vectors", (uint64_t)INT64_MAX);
	expect_open_fails(t, "index.vectors", NULL);
	copy_tree(idx, t);
	ann_index_meta m;
	ASSERT_OK(ann_index_open(idx, &x, &e));
	m = x->meta;
	ann_index_close(x);
	set_meta(t, "index.stored_vectors", m.stored_vectors + 1);
	expect_open_fails(t, "index.stored_vectors", NULL);

	/* index.metric = ip: the message says what disagrees. */
	copy_tree(idx, t);
	set_meta(t, "index.metric", ANN_METRIC_IP);
	expect_open_fails(t, "metric", "dimension");

	/* index.dim changed: the router's dimension disagrees. */
	copy_tree(idx, t);
	set_meta(t, "index.dim", D * 2);
	expect_open_fails(t, "dimension", NULL);
	free(t);
}

/* A tombstone damaged under an open searcher (its value checksum flipped in
 * data.mdb, which the searcher's map shares): the lookup fails with
 * something other than not-found, and the search must fail naming the id
 * instead of counting the id as live (search_tombed). */
static void test_tomb_damage(const char *dir, const char *idx)
{
	t_current = "test_tomb_damage";
	char *t = t_path(dir, "tomb");
	copy_tree(idx, t);
	int64_t dead = want_ids[0];
	ann_error e = {0};
	ann_writer *w;
	ASSERT_OK(ann_writer_open(t, &w, &e));
	uint64_t deleted = 0;
	ASSERT_OK(ann_delete(w, &dead, 1, &deleted, &e));
	ASSERT_EQ(deleted, 1);
	ann_writer_close(w);

	ann_index *x;
	ASSERT_OK(ann_index_open(t, &x, &e));
	ann_search_opts so;
	ann_search_opts_init(&so);
	so.k = K;
	so.nprobe = PARTS;
	ann_searcher *s;
	ASSERT_OK(ann_searcher_new(x, &so, &s, &e));
	int64_t ids[NQ * K];
	float dists[NQ * K];
	ASSERT_OK(ann_search(s, queries, NQ, ids, dists, NULL, &e));
	for (size_t i = 0; i < NQ * K; i++)
		ASSERT_TRUE(ids[i] != dead);

	/* The tombstone's leaf node: flags 0, key size 8, data size 8 (the
	 * empty value's checksum), the key the id big-endian. Flip the first
	 * checksum byte of every copy (an older copy may sit in a free page). */
	char *file = data_mdb(t);
	size_t n;
	uint8_t *f = t_read_file(file, &n);
	uint8_t node[16] = { 8, 0, 0, 0, 0, 0, 8, 0 };
	ann_stbe64(node + 8, (uint64_t)dead);
	size_t hits = 0;
	for (size_t off = 2 * PS; off + sizeof node + 8 <= n; off += 2)
		if (memcmp(f + off, node, sizeof node) == 0) {
			xor_byte(file, off + sizeof node, 0x5a);
			hits++;
		}
	ASSERT_TRUE(hits >= 1);
	int rc = ann_search(s, queries, NQ, ids, dists, NULL, &e);
	char want[64];
	snprintf(want, sizeof want, "tombstone of id %lld", (long long)dead);
	if (rc != ANN_E_CORRUPT || !strstr(e.msg, want) || !strstr(e.msg, t))
		T_FAIL("search over a damaged tombstone: rc %d '%s', expected ANN_E_CORRUPT naming '%s' and the index",
		       rc, e.msg, want);
	ann_searcher_free(s);
	ann_index_close(x);

	/* Opened afresh, the damage is refused or the search fails: never the id. */
	rc = search_ids(t, ids, &e);
	if (rc == ANN_OK)
		T_FAIL("a fresh search over the damaged tombstone answered");
	ASSERT_EQ(rc, ANN_E_CORRUPT);
	free(f);
	free(file);
	free(t);
}

int main(void)
{
	ann_rng rng;
	t_init("test_catalog_damage", &rng);
	char *dir = t_tmpdir();
	char *data = t_path(dir, "base.fbin");
	char *idx = t_path(dir, "idx");
	make_index(dir, data, "idx", &rng, true);
	ann_error e = {0};
	if (search_ids(idx, want_ids, &e) < 0)
		T_FAIL("search: %s", e.msg);
	test_truncation(dir, idx);
	test_free_list(dir, idx);
	test_meta(dir, idx);
	test_tomb_damage(dir, idx);
	test_flips(dir, idx, &rng);
	t_rmtree(dir);
	free(idx);
	free(data);
	free(dir);
	return 0;
}
