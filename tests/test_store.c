/* SPDX-License-Identifier: MIT */
/*
 * test_store: the io reader (io_uring and forced pread give identical bytes,
 * many mixed-size requests in flight, unaligned requests, a small pool,
 * EOF, unreleased completions, tmpfs without O_DIRECT) and both block stores
 * (round trips, reopen, LMDB map growth from a tiny map, free-space reuse
 * rules including live readers, a reader across writer reopen, a concurrent
 * reader process seeing consistent snapshots, bit flips reported by verify).
 */
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xxhash.h>

#include "store.h"
#include "testutil.h"

static ann_rng rng;

/* Deterministic bytes of (pid, gen) in an aligned buffer. */
static uint8_t *make_block(uint32_t pid, uint32_t gen, size_t len)
{
	uint8_t *b = t_make_block(pid, gen, 0x5eedull, len);
	ASSERT_TRUE(b != NULL);
	return b;
}

static size_t block_len(ann_store_kind k, uint32_t pid, uint32_t gen)
{
	uint64_t h = XXH64(&pid, 4, gen);
	return ann_store_block_bytes(k, (size_t)(h % (40 << 10)) + 1);
}

/* ===== io reader ===== */

static uint8_t file_byte(uint64_t off)
{
	return (uint8_t)((off * 2654435761u) >> 13);
}

static char *make_file(const char *dir, const char *name, size_t n)
{
	char *p = t_path(dir, name);
	uint8_t *b = malloc(n);
	for (size_t i = 0; i < n; i++)
		b[i] = file_byte(i);
	t_write_file(p, b, n);
	free(b);
	return p;
}

/* Reads reqs through r, releasing each completion at once (or holding up
 * to hold of them), and checks the bytes against file_byte. */
static void run_reads(ann_ioreader *r, const ann_ioreq *reqs, size_t n, size_t chunk)
{
	ann_error e = { 0 };
	uint8_t *seen = calloc(n, 1);
	size_t sub = 0, got = 0;
	while (got < n) {
		if (sub < n) {
			size_t k = ANN_MIN(chunk, n - sub);
			ASSERT_OK(ann_ioreader_submit(r, reqs + sub, k, &e));
			sub += k;
		}
		ann_iocomp c;
		int rc = ann_ioreader_next(r, &c, &e);
		if (rc < 0)
			T_FAIL("next: %s", e.msg);
		if (rc == 0) {
			ASSERT_EQ(sub, n);
			break;
		}
		ASSERT_LT(c.tag, n);
		ASSERT_EQ(seen[c.tag], 0);
		seen[c.tag] = 1;
		const ann_ioreq *q = &reqs[c.tag];
		ASSERT_EQ(c.status, ANN_OK);
		ASSERT_EQ(c.length, q->length);
		for (uint32_t i = 0; i < c.length; i++)
			if (c.data[i] != file_byte(q->offset + i))
				T_FAIL("tag %llu byte %u differs", (unsigned long long)c.tag, i);
		if (q->offset % 4096 == 0)
			ASSERT_EQ((uintptr_t)c.data % 4096, 0);
		ann_ioreader_release(r, &c);
		got++;
	}
	ASSERT_EQ(got, n);
	ASSERT_EQ(ann_ioreader_outstanding(r), 0);
	ann_iocomp c;
	ASSERT_EQ(ann_ioreader_next(r, &c, &e), 0);
	free(seen);
}

static void test_ioreader_paths(const char *dir)
{
	t_current = "ioreader_paths";
	const size_t fsize = 8u << 20;
	char *path = make_file(dir, "io.bin", fsize);
	size_t n = 600;
	ann_ioreq *reqs = malloc(n * sizeof *reqs);
	for (size_t i = 0; i < n; i++) {
		bool aligned = ann_rng_below(&rng, 4) != 0;
		uint32_t len = aligned ? (uint32_t)(4096 * (ann_rng_below(&rng, 24) + 1))
				       : (uint32_t)(ann_rng_below(&rng, 70000) + 1);
		uint64_t off = aligned ? 4096 * ann_rng_below(&rng, (fsize - len) / 4096)
				       : ann_rng_below(&rng, fsize - len);
		reqs[i] = (ann_ioreq){ off, len, i };
	}
	ann_error e = { 0 };
	for (int mode = 0; mode < 4; mode++) {
		ann_ioreader_opts o;
		ann_ioreader_opts_init(&o);
		o.queue_depth = mode == 3 ? 1 : 32;
		o.force_pread = mode == 1;
		o.no_register = mode == 2;
		ann_ioreader *r;
		ASSERT_OK(ann_ioreader_open(path, &o, &r, &e));
		ann_ioreader_stats st;
		ann_ioreader_get_stats(r, &st);
		if (mode == 0)
			printf("  io path %s, direct %d, registered %d (uring errno %d)\n", ann_ioreader_path(r),
			       st.direct, st.registered, st.uring_errno);
		if (mode == 1)
			ASSERT_TRUE(strcmp(ann_ioreader_path(r), "pread") == 0);
		else if (st.uring_errno == 0)
			ASSERT_TRUE(strcmp(ann_ioreader_path(r), "io_uring") == 0);
		run_reads(r, reqs, n, mode == 0 ? n : 50);
		ann_ioreader_get_stats(r, &st);
		ASSERT_EQ(st.requests, n);
		ASSERT_EQ(st.errors, 0);
		ann_ioreader_free(r);
	}
	/* A small pool: requests wait for buffers released by the consumer. */
	ann_ioreader_opts o;
	ann_ioreader_opts_init(&o);
	o.queue_depth = 64;
	o.pool_bytes = 200 << 10;
	ann_ioreader *r;
	ASSERT_OK(ann_ioreader_open(path, &o, &r, &e));
	run_reads(r, reqs, n, n);
	/* A request larger than the pool is refused whole. */
	ann_ioreq big = { 0, 300 << 10, 0 };
	ASSERT_ERR(ann_ioreader_submit(r, &big, 1, &e), e, ANN_E_INVAL, "exceeds the buffer pool");
	ASSERT_EQ(ann_ioreader_outstanding(r), 0);
	/* Holding every completion: the reader says so instead of hanging. */
	ann_ioreq hold[8];
	for (int i = 0; i < 8; i++)
		hold[i] = (ann_ioreq){ (uint64_t)i * 65536, 65536, (uint64_t)i };
	ASSERT_OK(ann_ioreader_submit(r, hold, 8, &e));
	ann_iocomp held[8];
	int nh = 0, rc;
	while ((rc = ann_ioreader_next(r, &held[nh], &e)) == 1)
		nh++;
	ASSERT_EQ(rc, ANN_E_BUDGET);
	ASSERT_TRUE(strstr(e.msg, "unreleased") != NULL);
	ASSERT_EQ(nh, 3); /* 200 KiB pool holds three 64 KiB buffers */
	for (int i = 0; i < nh; i++)
		ann_ioreader_release(r, &held[i]);
	while ((rc = ann_ioreader_next(r, &held[0], &e)) == 1)
		ann_ioreader_release(r, &held[0]);
	ASSERT_EQ(rc, 0);
	ann_ioreader_free(r);
	/* A request nearly the size of the pool after a smaller one: the free
	 * run straddles the allocator's hint and must still be found. */
	ann_ioreader_opts_init(&o);
	o.pool_bytes = 1 << 20;
	ASSERT_OK(ann_ioreader_open(path, &o, &r, &e));
	ASSERT_TRUE(fsize >= (1 << 20));
	for (int i = 0; i < 2; i++) {
		ann_ioreq q = { 0, i ? 1000u << 10 : 400u << 10, (uint64_t)i };
		ASSERT_OK(ann_ioreader_submit(r, &q, 1, &e));
		ann_iocomp c;
		if (ann_ioreader_next(r, &c, &e) != 1)
			T_FAIL("read %d of %u KiB from a 1 MiB pool: %s", i, q.length >> 10, e.msg);
		ASSERT_EQ(c.status, ANN_OK);
		ann_ioreader_release(r, &c);
	}
	ann_ioreader_free(r);

	/* Past the end of the file: a failed completion, not a crash. */
	for (int mode = 0; mode < 2; mode++) {
		ann_ioreader_opts_init(&o);
		o.force_pread = mode == 1;
		ASSERT_OK(ann_ioreader_open(path, &o, &r, &e));
		ann_ioreq q[2] = { { fsize - 4096, 8192, 1 }, { fsize + 4096, 4096, 2 } };
		ASSERT_OK(ann_ioreader_submit(r, q, 2, &e));
		for (int i = 0; i < 2; i++) {
			ann_iocomp c;
			ASSERT_EQ(ann_ioreader_next(r, &c, &e), 1);
			ASSERT_EQ(c.status, ANN_E_CORRUPT);
			ASSERT_TRUE(strstr(e.msg, "file ends") != NULL);
			ann_ioreader_release(r, &c);
		}
		ann_ioreader_free(r);
	}
	free(reqs);
	free(path);
}

/* tmpfs (which refuses O_DIRECT before Linux 6.6): same bytes, and a store
 * writing buffered + fdatasync, forced when the kernel allows O_DIRECT. */
static void test_ioreader_tmpfs(void)
{
	t_current = "ioreader_tmpfs";
	struct stat st;
	if (stat("/dev/shm", &st) != 0 || !S_ISDIR(st.st_mode)) {
		printf("  /dev/shm missing, tmpfs case skipped\n");
		return;
	}
	char tmpl[] = "/dev/shm/annann-store-XXXXXX";
	if (!mkdtemp(tmpl)) {
		printf("  cannot use /dev/shm, tmpfs case skipped\n");
		return;
	}
	char *path = make_file(tmpl, "f.bin", 1 << 20);
	ann_ioreader *r;
	ann_error e = { 0 };
	ASSERT_OK(ann_ioreader_open(path, NULL, &r, &e));
	ann_ioreader_stats ist;
	ann_ioreader_get_stats(r, &ist);
	printf("  tmpfs: direct %d path %s\n", ist.direct, ann_ioreader_path(r));
	ann_ioreq q[3] = { { 0, 4096, 0 }, { 5000, 100, 1 }, { 65536, 65536, 2 } };
	run_reads(r, q, 3, 3);
	ann_ioreader_free(r);

	/* A file store on tmpfs writes buffered + fdatasync and says so. */
	char *idx = t_path(tmpl, "idx");
	ann_store_opts so;
	ann_store_opts_init(&so);
	so.create = true;
	so.no_direct = true; /* the buffered path, whatever tmpfs allows */
	ann_store *s;
	ASSERT_OK(ann_store_open(idx, &so, &s, &e));
	ann_store_txn *t;
	ASSERT_OK(ann_store_begin(s, &t, &e));
	uint8_t *b = make_block(0, 1, 8192);
	ann_block_put p = { 0, 1, b, 8192 };
	ASSERT_OK(ann_store_put_blocks(t, &p, 1, NULL, &e));
	ASSERT_OK(ann_store_commit(t, &e));
	ann_store_space sp;
	ASSERT_OK(ann_store_space_get(s, &sp, &e));
	printf("  tmpfs store: direct writes %d\n", sp.direct_writes);
	ASSERT_EQ(sp.direct_writes, 0);
	ASSERT_TRUE(sp.syncs >= 1);
	ASSERT_OK(ann_store_verify(s, NULL, NULL, NULL, &e));
	ann_aligned_free(b);
	ann_store_close(s);
	t_rmtree(tmpl);
	free(idx);
	free(path);
}

/* ===== stores ===== */

static ann_store *open_store(const char *dir, ann_store_kind kind, bool create, bool writable, uint64_t map)
{
	ann_store_opts o;
	ann_store_opts_init(&o);
	o.kind = kind;
	o.create = create;
	o.writable = writable;
	o.map_bytes = map;
	ann_store *s = NULL;
	ann_error e = { 0 };
	if (ann_store_open(dir, &o, &s, &e) < 0)
		T_FAIL("open store %s: %s", dir, e.msg);
	return s;
}

/* Writes gens[pid] for pids [lo, hi) (bumping the generation), in puts of
 * `per` blocks, one commit. */
static void write_gen(ann_store *s, uint32_t *gens, uint32_t lo, uint32_t hi, size_t per)
{
	ann_store_kind k = ann_store_kind_of(s);
	ann_error e = { 0 };
	ann_store_txn *t;
	ASSERT_OK(ann_store_begin(s, &t, &e));
	ann_block_put *ps = calloc(per, sizeof *ps);
	ann_dirent *out = calloc(per, sizeof *out);
	for (uint32_t p = lo; p < hi;) {
		size_t n = 0;
		for (; n < per && p < hi; n++, p++) {
			uint32_t g = gens[p] + 1;
			size_t len = block_len(k, p, g);
			ps[n] = (ann_block_put){ p, p * 10 + g, make_block(p, g, len), len };
		}
		ASSERT_OK(ann_store_put_blocks(t, ps, n, out, &e));
		for (size_t i = 0; i < n; i++) {
			gens[ps[i].pid]++;
			ASSERT_EQ(out[i].generation, gens[ps[i].pid]);
			ASSERT_EQ(out[i].length, ps[i].length);
			ASSERT_TRUE(out[i].checksum == XXH64(ps[i].data, ps[i].length, 0));
			ann_aligned_free((void *)ps[i].data);
		}
	}
	ASSERT_OK(ann_store_commit(t, &e));
	free(ps);
	free(out);
}

/* Reads every pid < n with gens[pid] > 0 in one batch and checks bytes. */
static void check_all(ann_store *s, const uint32_t *gens, uint32_t n, bool force_pread)
{
	ann_store_kind k = ann_store_kind_of(s);
	ann_error e = { 0 };
	ann_store_reader_opts o;
	ann_store_reader_opts_init(&o);
	o.verify = true;
	o.io.force_pread = force_pread;
	o.io.queue_depth = 16;
	ann_store_reader *r;
	ASSERT_OK(ann_store_reader_new(s, &o, &r, &e));
	uint32_t *pids = malloc(n * sizeof *pids);
	uint64_t *tags = malloc(n * sizeof *tags);
	size_t m = 0;
	for (uint32_t p = 0; p < n; p++) {
		if (gens[p]) {
			pids[m] = p;
			tags[m] = 1000 + p;
			m++;
		}
	}
	ASSERT_OK(ann_store_reader_submit(r, pids, tags, m, &e));
	size_t got = 0;
	ann_block_read b;
	int rc;
	while ((rc = ann_store_reader_next(r, &b, &e)) == 1) {
		if (b.status < 0)
			T_FAIL("partition %u: %s", b.pid, e.msg);
		ASSERT_EQ(b.tag, 1000 + b.pid);
		ASSERT_EQ(b.ent.generation, gens[b.pid]);
		size_t len = block_len(k, b.pid, gens[b.pid]);
		ASSERT_EQ(b.length, len);
		uint8_t *want = make_block(b.pid, gens[b.pid], len);
		ASSERT_TRUE(memcmp(want, b.data, len) == 0);
		ann_aligned_free(want);
		ann_store_reader_release(r, &b);
		got++;
	}
	ASSERT_EQ(rc, 0);
	ASSERT_EQ(got, m);
	/* An absent partition completes with NOTFOUND. */
	uint32_t missing = n + 5;
	ASSERT_OK(ann_store_reader_submit(r, &missing, NULL, 1, &e));
	ASSERT_EQ(ann_store_reader_next(r, &b, &e), 1);
	ASSERT_EQ(b.status, ANN_E_NOTFOUND);
	ann_store_reader_release(r, &b);
	ann_store_reader_free(r);
	free(pids);
	free(tags);
}

static void test_block_sizes(void)
{
	t_current = "block_sizes";
	ASSERT_EQ(ann_store_block_bytes(ANN_STORE_FILE, 0), 4096);
	ASSERT_EQ(ann_store_block_bytes(ANN_STORE_FILE, 4096), 4096);
	ASSERT_EQ(ann_store_block_bytes(ANN_STORE_FILE, 4097), 8192);
	ASSERT_EQ(ann_store_block_bytes(ANN_STORE_LMDB, 0), 4080);
	ASSERT_EQ(ann_store_block_bytes(ANN_STORE_LMDB, 4080), 4080);
	ASSERT_EQ(ann_store_block_bytes(ANN_STORE_LMDB, 4081), 8176);
	for (size_t n = 1; n < 70000; n += 997) {
		for (int k = 0; k < 2; k++) {
			ann_store_kind kind = k ? ANN_STORE_LMDB : ANN_STORE_FILE;
			size_t b = ann_store_block_bytes(kind, n);
			ASSERT_TRUE(b >= n && b < n + 4096);
			ASSERT_TRUE(ann_store_block_size_ok(kind, b));
			ASSERT_TRUE(!ann_store_block_size_ok(kind, b + 1));
		}
	}
}

static void test_roundtrip(const char *base, ann_store_kind kind)
{
	t_current = kind == ANN_STORE_FILE ? "roundtrip_file" : "roundtrip_lmdb";
	char *dir = t_path(base, kind == ANN_STORE_FILE ? "rt_file" : "rt_lmdb");
	ann_store *s = open_store(dir, kind, true, true, 0);
	ASSERT_EQ(ann_store_kind_of(s), kind);
	uint32_t gens[120] = { 0 };
	write_gen(s, gens, 0, 100, 7);
	write_gen(s, gens, 20, 40, 20);  /* rewrites */
	write_gen(s, gens, 100, 120, 3); /* new */
	check_all(s, gens, 120, false);
	check_all(s, gens, 120, true);
	if (kind == ANN_STORE_FILE) {
		/* A reader whose pool is smaller than some blocks: those complete
		 * with ANN_E_INVAL, the others read fine; submit itself succeeds. */
		ann_store_reader_opts ro;
		ann_store_reader_opts_init(&ro);
		ro.io.pool_bytes = 8192;
		ro.verify = true;
		ann_store_reader *r;
		ann_error e1 = { 0 };
		ASSERT_OK(ann_store_reader_new(s, &ro, &r, &e1));
		uint32_t pids[120];
		for (uint32_t p = 0; p < 120; p++)
			pids[p] = p;
		ASSERT_OK(ann_store_reader_submit(r, pids, NULL, 120, &e1));
		ann_block_read b;
		int small = 0, large = 0;
		while (ann_store_reader_next(r, &b, &e1) == 1) {
			if (b.ent.length <= 8192) {
				ASSERT_EQ(b.status, ANN_OK);
				small++;
			} else {
				ASSERT_EQ(b.status, ANN_E_INVAL);
				ASSERT_TRUE(strstr(e1.msg, "buffer pool") != NULL);
				large++;
			}
			ann_store_reader_release(r, &b);
		}
		ASSERT_EQ(small + large, 120);
		ASSERT_TRUE(small > 0 && large > 0);
		ann_store_reader_free(r);
	}
	ann_dirent de;
	ann_error e = { 0 };
	ASSERT_OK(ann_store_lookup(s, 25, &de, &e));
	ASSERT_EQ(de.generation, 2);
	ASSERT_EQ(de.count, 25 * 10 + 2);
	/* Drop one. */
	ann_store_txn *t;
	ASSERT_OK(ann_store_begin(s, &t, &e));
	ASSERT_OK(ann_store_drop(t, 7, &e));
	ASSERT_ERR(ann_store_drop(t, 7, &e), e, ANN_E_NOTFOUND, "partition 7");
	ASSERT_OK(ann_store_commit(t, &e));
	gens[7] = 0;
	ASSERT_ERR(ann_store_lookup(s, 7, &de, &e), e, ANN_E_NOTFOUND, "7");
	/* Wrong block sizes, a second txn, duplicate pids. */
	ASSERT_OK(ann_store_begin(s, &t, &e));
	ann_store_txn *t2;
	ASSERT_ERR(ann_store_begin(s, &t2, &e), e, ANN_E_INVAL, "already");
	uint8_t *b = make_block(1, 1, 8192);
	ann_block_put bad = { 1, 1, b, kind == ANN_STORE_FILE ? 5000 : 8192 };
	ASSERT_ERR(ann_store_put_blocks(t, &bad, 1, NULL, &e), e, ANN_E_INVAL, "4096*k");
	size_t ok_len = ann_store_block_bytes(kind, 5000);
	ann_block_put dup[2] = { { 3, 1, b, ok_len }, { 3, 1, b, ok_len } };
	ASSERT_ERR(ann_store_put_blocks(t, dup, 2, NULL, &e), e, ANN_E_INVAL, "twice");
	ann_store_abort(t);
	ann_aligned_free(b);
	ann_verify_stats vs;
	ASSERT_OK(ann_store_verify(s, NULL, NULL, &vs, &e));
	ASSERT_EQ(vs.partitions, 119);
	ASSERT_EQ(vs.warnings, 0);
	ann_store_space sp;
	ASSERT_OK(ann_store_space_get(s, &sp, &e));
	printf("  %s: %llu partitions, %llu live bytes, %llu free bytes, file %llu, disk %llu, direct %d\n",
	       ann_store_kind_name(kind), (unsigned long long)sp.partitions, (unsigned long long)sp.live_bytes,
	       (unsigned long long)sp.free_bytes, (unsigned long long)sp.file_bytes,
	       (unsigned long long)sp.disk_bytes, sp.direct_writes);
	ASSERT_EQ(sp.partitions, 119);
	ann_store_close(s);

	/* Reopen read-only (catalog MDB_RDONLY) and read everything again. */
	ann_store_opts o;
	ann_store_opts_init(&o);
	o.readonly = true;
	ASSERT_OK(ann_store_open(dir, &o, &s, &e));
	ASSERT_EQ(ann_store_kind_of(s), kind);
	check_all(s, gens, 120, false);
	ASSERT_ERR(ann_store_begin(s, &t, &e), e, ANN_E_INVAL, "not opened for writing");
	ann_dir d;
	ASSERT_OK(ann_store_dir_copy(s, &d, &e));
	ASSERT_EQ(d.count, 119);
	ASSERT_EQ(d.n, 120);
	ann_catalog_dir_free(&d);
	ann_store_close(s);
	/* Creating over an existing store is refused. */
	o.readonly = false;
	o.create = true;
	ASSERT_ERR(ann_store_open(dir, &o, &s, &e), e, ANN_E_EXISTS, "already");
	/* Two writers are refused. */
	ann_store *w1 = open_store(dir, kind, false, true, 0);
	o.create = false;
	o.writable = true;
	ASSERT_ERR(ann_store_open(dir, &o, &s, &e), e, ANN_E_STATE, "another process");
	ann_store_close(w1);
	t_rmtree(dir);
	free(dir);
}

static void test_lmdb_growth(const char *base)
{
	t_current = "lmdb_growth";
	char *dir = t_path(base, "grow");
	ann_store *s = open_store(dir, ANN_STORE_LMDB, true, true, 128 << 10);
	uint32_t gens[200] = { 0 };
	write_gen(s, gens, 0, 200, 50); /* ~4 MiB into a 128 KiB map */
	write_gen(s, gens, 0, 100, 10);
	ann_store_space sp;
	ann_error e = { 0 };
	ASSERT_OK(ann_store_space_get(s, &sp, &e));
	printf("  lmdb map grew %llu times to %llu; data.mdb %llu bytes (%llu on disk), in use %llu, blocks %llu pages\n",
	       (unsigned long long)sp.cat.map_grows, (unsigned long long)sp.cat.map_bytes,
	       (unsigned long long)sp.file_bytes, (unsigned long long)sp.disk_bytes,
	       (unsigned long long)sp.cat.used_bytes, (unsigned long long)sp.cat.db_pages[ANN_CAT_BLOCKS]);
	ASSERT_TRUE(sp.cat.map_grows > 0);
	ASSERT_TRUE(sp.cat.map_bytes >= sp.live_bytes);
	/* 4096*k - 16 byte values fill their pages exactly: the pages of the
	 * blocks DBI hold the live bytes with little slack. */
	ASSERT_LE(sp.live_bytes, sp.cat.db_pages[ANN_CAT_BLOCKS] * sp.cat.page_bytes);
	check_all(s, gens, 200, false);
	ann_store_close(s);
	t_rmtree(dir);
	free(dir);
}

static uint64_t offset_of(ann_store *s, uint32_t pid)
{
	ann_dirent d;
	ASSERT_OK(ann_store_lookup(s, pid, &d, NULL));
	return d.offset;
}

static void put_one(ann_store *s, uint32_t pid, uint32_t gen, size_t len)
{
	ann_error e = { 0 };
	ann_store_txn *t;
	ASSERT_OK(ann_store_begin(s, &t, &e));
	uint8_t *b = make_block(pid, gen, len);
	ann_block_put p = { pid, 1, b, len };
	ASSERT_OK(ann_store_put_blocks(t, &p, 1, NULL, &e));
	ASSERT_OK(ann_store_commit(t, &e));
	ann_aligned_free(b);
}

/* Free space: never reused inside the txn that frees it, reused first-fit
 * after, not while a reader older than the freeing commit lives; the tail
 * goes back to the end. */
static void test_free_reuse(const char *base)
{
	t_current = "free_reuse";
	char *dir = t_path(base, "free");
	ann_store *s = open_store(dir, ANN_STORE_FILE, true, true, 0);
	ann_error e = { 0 };
	put_one(s, 0, 1, 16384);
	put_one(s, 1, 1, 8192);
	ASSERT_EQ(offset_of(s, 0), 4096);
	ASSERT_EQ(offset_of(s, 1), 4096 + 16384);
	/* Rewrite 0 and add 2 in one txn: neither lands on 0's old extent. */
	ann_store_txn *t;
	ASSERT_OK(ann_store_begin(s, &t, &e));
	uint8_t *b0 = make_block(0, 2, 16384), *b2 = make_block(2, 1, 8192);
	ann_block_put p0 = { 0, 1, b0, 16384 };
	ASSERT_OK(ann_store_put_blocks(t, &p0, 1, NULL, &e));
	ann_block_put p2 = { 2, 1, b2, 8192 };
	ASSERT_OK(ann_store_put_blocks(t, &p2, 1, NULL, &e));
	ASSERT_OK(ann_store_commit(t, &e));
	ann_aligned_free(b0);
	ann_aligned_free(b2);
	ASSERT_EQ(offset_of(s, 0), 4096 + 16384 + 8192);
	ASSERT_EQ(offset_of(s, 2), 4096 + 16384 + 8192 + 16384);
	ann_store_space sp;
	ASSERT_OK(ann_store_space_get(s, &sp, &e));
	ASSERT_EQ(sp.free_bytes, 16384);
	ASSERT_EQ(sp.free_extents, 1);
	/* After the commit: first fit into the freed extent. */
	put_one(s, 3, 1, 8192);
	ASSERT_EQ(offset_of(s, 3), 4096);
	/* A live reader pins: rewrite 1 while a batch is open; the extent it
	 * frees is not reused until the batch ends. */
	ann_store_reader *r;
	ASSERT_OK(ann_store_reader_new(s, NULL, &r, &e));
	uint32_t pid1 = 1;
	ASSERT_OK(ann_store_reader_submit(r, &pid1, NULL, 1, &e));
	ann_block_read br;
	ASSERT_EQ(ann_store_reader_next(r, &br, &e), 1);
	ASSERT_EQ(br.status, ANN_OK);
	uint64_t old1 = offset_of(s, 1);
	put_one(s, 1, 2, 8192);
	/* The rewrite took the remainder freed before the reader started. */
	ASSERT_EQ(offset_of(s, 1), 4096 + 8192);
	put_one(s, 4, 1, 8192); /* must not take old1 while the reader holds it */
	ASSERT_TRUE(offset_of(s, 4) != old1);
	put_one(s, 5, 1, 8192);
	ASSERT_TRUE(offset_of(s, 5) != old1);
	/* The reader's bytes are still those of generation 1. */
	uint8_t *want = make_block(1, 1, 8192);
	ASSERT_TRUE(memcmp(want, br.data, 8192) == 0);
	ann_aligned_free(want);
	ann_store_reader_release(r, &br);
	put_one(s, 6, 1, 8192);
	ASSERT_EQ(offset_of(s, 6), old1);
	ann_store_reader_free(r);
	/* Dropping the last block gives its extent back to the end. */
	ASSERT_OK(ann_store_space_get(s, &sp, &e));
	uint64_t end = sp.file_end;
	uint32_t last = 0;
	for (uint32_t p = 0; p <= 6; p++)
		if (offset_of(s, p) > offset_of(s, last))
			last = p;
	ann_dirent ld;
	ASSERT_OK(ann_store_lookup(s, last, &ld, &e));
	ASSERT_EQ(ld.offset + ld.length, end);
	ASSERT_OK(ann_store_begin(s, &t, &e));
	ASSERT_OK(ann_store_drop(t, last, &e));
	ASSERT_OK(ann_store_commit(t, &e));
	/* Not by the commit that frees it (a reader may still be older)... */
	ASSERT_OK(ann_store_space_get(s, &sp, &e));
	ASSERT_EQ(sp.file_end, end);
	/* ...but by the next one, when no reader is. */
	ASSERT_OK(ann_store_begin(s, &t, &e));
	ASSERT_OK(ann_store_commit(t, &e));
	ASSERT_OK(ann_store_space_get(s, &sp, &e));
	ASSERT_LE(sp.file_end, ld.offset);
	/* The dropped block's bytes stay (an older reader may still read them)
	 * past the committed end: a warning, not a problem. */
	ann_verify_stats vs;
	ASSERT_OK(ann_store_verify(s, NULL, NULL, &vs, &e));
	ASSERT_EQ(vs.warnings, 1);
	ann_store_close(s);
	/* The writer truncates bytes past the committed end at open. */
	s = open_store(dir, ANN_STORE_FILE, false, true, 0);
	ASSERT_OK(ann_store_space_get(s, &sp, &e));
	ASSERT_EQ(sp.file_bytes, sp.file_end);
	ASSERT_OK(ann_store_verify(s, NULL, NULL, &vs, &e));
	ASSERT_EQ(vs.warnings, 0);
	ann_store_close(s);
	t_rmtree(dir);
	free(dir);
}

/* A reader of one handle keeps working while another handle writes, closes
 * and reopens; new batches see new commits. */
static void test_reader_across_reopen(const char *base)
{
	t_current = "reader_across_reopen";
	char *dir = t_path(base, "reopen");
	for (int k = 0; k < 2; k++) {
		ann_store_kind kind = k ? ANN_STORE_LMDB : ANN_STORE_FILE;
		ann_store *w = open_store(dir, kind, true, true, 0);
		uint32_t gens[40] = { 0 };
		write_gen(w, gens, 0, 20, 5);
		ann_store *rs = open_store(dir, kind, false, false, 0);
		check_all(rs, gens, 40, false);
		ann_store_close(w);
		w = open_store(dir, kind, false, true, 0);
		write_gen(w, gens, 10, 40, 8);
		check_all(rs, gens, 40, false);
		ann_store_close(w);
		w = open_store(dir, kind, false, true, 0);
		write_gen(w, gens, 0, 5, 8);
		ann_store_close(w);
		check_all(rs, gens, 40, true);
		bool changed = false;
		ann_error e = { 0 };
		ASSERT_OK(ann_store_refresh(rs, &changed, &e));
		ASSERT_TRUE(changed);
		ann_dirent d;
		ASSERT_OK(ann_store_lookup(rs, 3, &d, &e));
		ASSERT_EQ(d.generation, gens[3]);
		ASSERT_OK(ann_store_refresh(rs, &changed, &e));
		ASSERT_TRUE(!changed);
		ann_store_close(rs);
		t_rmtree(dir);
	}
	free(dir);
}

/* A reader process reads all partitions in one batch (one snapshot) again
 * and again while the writer rewrites them all each commit: every batch must
 * show one generation and the right bytes for it. */
static void test_concurrent_process(const char *base, ann_store_kind kind)
{
	t_current = kind == ANN_STORE_FILE ? "concurrent_file" : "concurrent_lmdb";
	char *dir = t_path(base, "conc");
	enum { P = 12, ROUNDS = 40 };
	ann_store *w = open_store(dir, kind, true, true, 0);
	uint32_t gens[P] = { 0 };
	write_gen(w, gens, 0, P, P);
	int pfd[2];
	ASSERT_EQ(pipe(pfd), 0);
	pid_t child = fork();
	ASSERT_TRUE(child >= 0);
	if (child == 0) {
		close(pfd[1]);
		ann_store_opts o;
		ann_store_opts_init(&o);
		ann_store *s = NULL;
		if (ann_store_open(dir, &o, &s, NULL) < 0)
			_exit(2);
		/* pread reads at next(): lookups at submit, a pause, then the reads,
		 * so commits (and extent reuse, were it allowed) fall in between. */
		ann_store_reader_opts ro;
		ann_store_reader_opts_init(&ro);
		ro.verify = true;
		ro.io.force_pread = true;
		ann_store_reader *r;
		if (ann_store_reader_new(s, &ro, &r, NULL) < 0)
			_exit(3);
		fcntl(pfd[0], F_SETFL, O_NONBLOCK);
		int batches = 0;
		for (;;) {
			char c;
			ssize_t rd = read(pfd[0], &c, 1);
			if (rd == 0 && batches > 0)
				break; /* writer done */
			uint32_t pids[P];
			for (uint32_t i = 0; i < P; i++)
				pids[i] = i;
			if (ann_store_reader_submit(r, pids, NULL, P, NULL) < 0)
				_exit(4);
			/* Every third batch waits long enough for two commits (one
			 * freeing the extents, the next one reusing them). */
			usleep(batches % 3 == 0 ? 45000 : 1000);
			ann_block_read b[P];
			int n = 0;
			while (n < P && ann_store_reader_next(r, &b[n], NULL) == 1) {
				if (b[n].status < 0)
					_exit(5);
				uint8_t *want = make_block(b[n].pid, b[n].ent.generation, b[n].length);
				int same = b[n].length == block_len(kind, b[n].pid, b[n].ent.generation) &&
					   memcmp(want, b[n].data, b[n].length) == 0;
				ann_aligned_free(want);
				if (!same)
					_exit(6);
				n++;
			}
			if (n != P)
				_exit(7);
			for (int i = 0; i < P; i++)
				if (b[i].ent.generation != b[0].ent.generation)
					_exit(8);
			for (int i = 0; i < P; i++)
				ann_store_reader_release(r, &b[i]);
			batches++;
		}
		ann_store_reader_free(r);
		ann_store_close(s);
		_exit(0);
	}
	close(pfd[0]);
	for (int round = 0; round < ROUNDS; round++)
		write_gen(w, gens, 0, P, 5);
	close(pfd[1]);
	int status;
	ASSERT_EQ(waitpid(child, &status, 0), child);
	ASSERT_TRUE(WIFEXITED(status));
	ASSERT_EQ(WEXITSTATUS(status), 0);
	ann_error e = { 0 };
	ASSERT_OK(ann_store_verify(w, NULL, NULL, NULL, &e));
	ann_store_close(w);
	t_rmtree(dir);
	free(dir);
}

struct issues {
	int problems, warnings;
	int64_t pids[32];
	ann_issue_kind kinds[32];
	int n;
};

static void on_issue(void *ctx, const ann_issue *is)
{
	struct issues *s = ctx;
	if (is->warning)
		s->warnings++;
	else
		s->problems++;
	if (s->n < 32) {
		s->pids[s->n] = is->pid;
		s->kinds[s->n] = is->kind;
		s->n++;
	}
}

static void flip_bit(const char *file, uint64_t byte, unsigned bit)
{
	int fd = open(file, O_RDWR);
	ASSERT_TRUE(fd >= 0);
	uint8_t b;
	ASSERT_EQ(pread(fd, &b, 1, (off_t)byte), 1);
	b ^= (uint8_t)(1u << bit);
	ASSERT_EQ(pwrite(fd, &b, 1, (off_t)byte), 1);
	close(fd);
}

static bool find_in_file(const char *file, const uint8_t *needle, size_t n, uint64_t *at)
{
	size_t sz;
	uint8_t *buf = t_read_file(file, &sz);
	bool found = false;
	for (size_t i = 0; i + n <= sz; i++) {
		if (memcmp(buf + i, needle, n) == 0) {
			*at = i;
			found = true;
			break;
		}
	}
	free(buf);
	return found;
}

static void test_corruption(const char *base)
{
	t_current = "corruption";
	char *dir = t_path(base, "corrupt");
	char *blocks = t_path(dir, "blocks.dat");
	char *data = t_path(dir, "catalog.lmdb/data.mdb");
	ann_error e = { 0 };
	uint32_t gens[30] = { 0 };
	ann_store *s = open_store(dir, ANN_STORE_FILE, true, true, 0);
	write_gen(s, gens, 0, 30, 10);
	ann_store_close(s);

	/* Random single-bit flips inside live blocks: each one reported for
	 * exactly that partition; reads with verify fail it too. */
	for (int iter = 0; iter < 12; iter++) {
		s = open_store(dir, ANN_STORE_FILE, false, false, 0);
		uint32_t pid = (uint32_t)ann_rng_below(&rng, 30);
		ann_dirent d;
		ASSERT_OK(ann_store_lookup(s, pid, &d, &e));
		uint64_t byte = d.offset + ann_rng_below(&rng, d.length);
		unsigned bit = (unsigned)ann_rng_below(&rng, 8);
		flip_bit(blocks, byte, bit);
		struct issues is = { 0 };
		ann_verify_stats vs;
		ASSERT_ERR(ann_store_verify(s, on_issue, &is, &vs, &e), e, ANN_E_CORRUPT, "1 problems");
		ASSERT_EQ(is.problems, 1);
		ASSERT_EQ(is.pids[0], pid);
		ASSERT_EQ(is.kinds[0], ANN_ISSUE_CHECKSUM);
		ann_store_reader_opts ro;
		ann_store_reader_opts_init(&ro);
		ro.verify = true;
		ann_store_reader *r;
		ASSERT_OK(ann_store_reader_new(s, &ro, &r, &e));
		ASSERT_OK(ann_store_reader_submit(r, &pid, NULL, 1, &e));
		ann_block_read b;
		ASSERT_EQ(ann_store_reader_next(r, &b, &e), 1);
		ASSERT_EQ(b.status, ANN_E_CORRUPT);
		char want[32];
		snprintf(want, sizeof want, "partition %u", pid);
		ASSERT_TRUE(strstr(e.msg, want) != NULL);
		ann_store_reader_release(r, &b);
		ann_store_reader_free(r);
		ann_store_close(s);
		flip_bit(blocks, byte, bit); /* restore */
	}
	s = open_store(dir, ANN_STORE_FILE, false, false, 0);
	ASSERT_OK(ann_store_verify(s, NULL, NULL, NULL, &e));
	ann_dirent d9;
	ASSERT_OK(ann_store_lookup(s, 9, &d9, &e));
	ann_store_close(s);

	/* A flipped bit in the directory entry of partition 9. */
	uint8_t enc[ANN_PARTS_VALUE_BYTES];
	ann_catalog_part_encode(enc, &d9);
	uint64_t at;
	ASSERT_TRUE(find_in_file(data, enc, sizeof enc, &at));
	flip_bit(data, at + 8 + ann_rng_below(&rng, 16), (unsigned)ann_rng_below(&rng, 8));
	ann_store_opts o;
	ann_store_opts_init(&o);
	ASSERT_ERR(ann_store_open(dir, &o, &s, &e), e, ANN_E_CORRUPT, "partition 9");
	{
		/* The catalog pass names it; rewriting the entry repairs it. */
		ann_catalog_opts co;
		ann_catalog_opts_init(&co);
		char *cp = t_path(dir, "catalog.lmdb");
		ann_catalog *c;
		ASSERT_OK(ann_catalog_open(cp, &co, &c, &e));
		ann_cat_txn *t;
		ASSERT_OK(ann_catalog_read_begin(c, &t, &e));
		struct issues is = { 0 };
		uint64_t nbad;
		ASSERT_OK(ann_catalog_verify(t, on_issue, &is, &nbad, &e));
		ASSERT_EQ(nbad, 1);
		ASSERT_EQ(is.pids[0], 9);
		ann_catalog_read_end(t);
		ASSERT_OK(ann_catalog_write_begin(c, &t, &e));
		ASSERT_OK(ann_catalog_part_put(t, 9, &d9, &e));
		ASSERT_OK(ann_catalog_commit(t, &e));
		ann_catalog_close(c);
		free(cp);
	}
	s = open_store(dir, ANN_STORE_FILE, false, false, 0);
	ASSERT_OK(ann_store_verify(s, NULL, NULL, NULL, &e));
	ann_store_close(s);

	/* A flipped header bit: open refuses, naming the file. */
	flip_bit(blocks, 100, 3);
	ASSERT_ERR(ann_store_open(dir, &o, &s, &e), e, ANN_E_CORRUPT, "blocks.dat");
	flip_bit(blocks, 100, 3);

	/* Truncated blocks.dat: extents past the end are reported, not read. */
	s = open_store(dir, ANN_STORE_FILE, false, false, 0);
	ann_store_space sp;
	ASSERT_OK(ann_store_space_get(s, &sp, &e));
	ASSERT_EQ(truncate(blocks, (off_t)(sp.file_end - 4096)), 0);
	struct issues is = { 0 };
	ASSERT_ERR(ann_store_verify(s, on_issue, &is, NULL, &e), e, ANN_E_CORRUPT, "problems");
	ASSERT_TRUE(is.problems >= 2); /* the file size and the last extent */
	ann_store_close(s);
	t_rmtree(dir);

	/* LMDB store: a flipped bit inside a block value in data.mdb. */
	memset(gens, 0, sizeof gens);
	s = open_store(dir, ANN_STORE_LMDB, true, true, 0);
	write_gen(s, gens, 0, 10, 10);
	ann_store_close(s);
	size_t len = block_len(ANN_STORE_LMDB, 4, 1);
	uint8_t *b = make_block(4, 1, len);
	ASSERT_TRUE(find_in_file(data, b + 64, 64, &at));
	ann_aligned_free(b);
	flip_bit(data, at + ann_rng_below(&rng, 64), (unsigned)ann_rng_below(&rng, 8));
	s = open_store(dir, ANN_STORE_LMDB, false, false, 0);
	memset(&is, 0, sizeof is);
	ASSERT_ERR(ann_store_verify(s, on_issue, &is, NULL, &e), e, ANN_E_CORRUPT, "1 problems");
	ASSERT_EQ(is.pids[0], 4);
	ASSERT_EQ(is.kinds[0], ANN_ISSUE_CHECKSUM);
	ann_store_close(s);
	t_rmtree(dir);
	free(blocks);
	free(data);
	free(dir);
}

/* Every allocation on the open / write / commit / read paths may fail: a
 * clean ANN_E_NOMEM, no leak, and the index stays consistent. */
static void test_alloc_failures(const char *base)
{
	t_current = "alloc_failures";
	char *dir = t_path(base, "oom");
	for (int k = 0; k < 2; k++) {
		ann_store_kind kind = k ? ANN_STORE_LMDB : ANN_STORE_FILE;
		ann_store_close(open_store(dir, kind, true, true, 0));
		uint8_t *blk[3];
		size_t len = ann_store_block_bytes(kind, 9000);
		for (int i = 0; i < 3; i++)
			blk[i] = make_block((uint32_t)i, 1, len);
		int64_t base_live = ann_mem_live_bytes();
		int ok = 0, streak = 0;
		/* Past the last allocation every round succeeds: stop after a few. */
		int64_t n;
		for (n = 0; n < 400 && streak < 3; n++) {
			ann_error e = { 0 };
			ann_store_opts o;
			ann_store_opts_init(&o);
			o.writable = true;
			ann_store *s = NULL;
			ann_store_txn *t = NULL;
			ann_mem_fail_after(n);
			int rc = ann_store_open(dir, &o, &s, &e);
			if (rc == ANN_OK)
				rc = ann_store_begin(s, &t, &e);
			if (rc == ANN_OK) {
				ann_block_put p[3];
				for (int i = 0; i < 3; i++)
					p[i] = (ann_block_put){ (uint32_t)(i + 3 * (n % 5)), 1, blk[i], len };
				rc = ann_store_put_blocks(t, p, 3, NULL, &e);
				if (rc == ANN_OK) {
					rc = ann_store_commit(t, &e);
				} else {
					ann_store_abort(t);
				}
			}
			ann_store_reader *r = NULL;
			if (rc == ANN_OK)
				rc = ann_store_reader_new(s, NULL, &r, &e);
			if (rc == ANN_OK) {
				uint32_t pid = 0;
				rc = ann_store_reader_submit(r, &pid, NULL, 1, &e);
				ann_block_read b;
				while (rc == ANN_OK && (rc = ann_store_reader_next(r, &b, &e)) == 1)
					ann_store_reader_release(r, &b);
			}
			ann_mem_fail_after(-1);
			if (rc < 0) {
				ASSERT_EQ(rc, ANN_E_NOMEM);
				streak = 0;
			} else {
				ok++;
				streak++;
			}
			ann_store_reader_free(r);
			ann_store_close(s);
			ASSERT_EQ(ann_mem_live_bytes(), base_live);
		}
		ASSERT_TRUE(ok > 0);
		printf("  %s: allocation failure injected at each of the first %lld allocations\n",
		       ann_store_kind_name(kind), (long long)(n - 3));
		ann_store *s = open_store(dir, kind, false, false, 0);
		ann_error e = { 0 };
		ann_verify_stats vs;
		ASSERT_OK(ann_store_verify(s, NULL, NULL, &vs, &e));
		ann_store_close(s);
		for (int i = 0; i < 3; i++)
			ann_aligned_free(blk[i]);
		t_rmtree(dir);
	}
	free(dir);
}

/* Runs one test and prints its time (the suite must stay fast under ASan). */
#define RUN(call)                                                                        \
	do {                                                                             \
		uint64_t t0_ = ann_now_ns();                                             \
		call;                                                                    \
		printf("  %-44s %6.2f s\n", #call, (double)(ann_now_ns() - t0_) / 1e9);  \
	} while (0)

int main(void)
{
	t_init("test_store", &rng);
	char *dir = t_tmpdir();
	RUN(test_ioreader_paths(dir));
	RUN(test_ioreader_tmpfs());
	RUN(test_block_sizes());
	RUN(test_roundtrip(dir, ANN_STORE_FILE));
	RUN(test_roundtrip(dir, ANN_STORE_LMDB));
	RUN(test_lmdb_growth(dir));
	RUN(test_free_reuse(dir));
	RUN(test_reader_across_reopen(dir));
	RUN(test_concurrent_process(dir, ANN_STORE_FILE));
	RUN(test_concurrent_process(dir, ANN_STORE_LMDB));
	RUN(test_corruption(dir));
	RUN(test_alloc_failures(dir));
	t_rmtree(dir);
	free(dir);
	printf("test_store: ok\n");
	return 0;
}
