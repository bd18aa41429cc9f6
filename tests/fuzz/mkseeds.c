/* SPDX-License-Identifier: MIT */
/*
 * mkseeds: writes the seed corpora of the fuzz targets into DIR/<target>/
 * (tests/fuzz/corpus in git), each a small valid input produced by the
 * library's own writers: vector and ground-truth files (ann_vwriter,
 * ann_gt_write), blocks (block_encode), MLP blobs (ann_mlp_save), and, from
 * tiny indexes built with ann_build, router blobs (k-means = HNSW, annann,
 * nlsh) and catalog records. Deterministic (fixed seeds).
 *   usage: fuzz_mkseeds DIR
 */
#include <errno.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "block.h"
#include "cblock.h"
#include "catalog.h"
#include "nn.h"
#include "vecio.h"

static const char *out_dir;
static char scratch[256];

__attribute__((noreturn)) static void die(const char *what, const ann_error *e)
{
	fprintf(stderr, "mkseeds: %s: %s\n", what, e ? e->msg : strerror(errno));
	exit(1);
}

static void *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		die(path, NULL);
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	uint8_t *b = malloc((size_t)n + 1);
	if (!b || fread(b, 1, (size_t)n, f) != (size_t)n)
		die(path, NULL);
	fclose(f);
	*len = (size_t)n;
	return b;
}

/* DIR/target/name = prefix (plen bytes) || data. */
static void seed(const char *target, const char *name, const void *prefix, size_t plen, const void *data,
		 size_t len)
{
	char p[1024];
	snprintf(p, sizeof p, "%s/%s", out_dir, target);
	mkdir(p, 0755);
	snprintf(p, sizeof p, "%s/%s/%s", out_dir, target, name);
	FILE *f = fopen(p, "wb");
	if (!f || (plen && fwrite(prefix, 1, plen, f) != plen) || (len && fwrite(data, 1, len, f) != len) ||
	    fclose(f) != 0)
		die(p, NULL);
}

static void seed_file(const char *target, const char *name, const void *prefix, size_t plen, const char *path)
{
	size_t len;
	uint8_t *b = slurp(path, &len);
	seed(target, name, prefix, plen, b, len);
	free(b);
}

static void vectors(void)
{
	static const char *const ext[7] = { "fvecs", "bvecs", "ivecs", "fbin", "u8bin", "i8bin", "ibin" };
	float v[3 * 4];
	for (int i = 0; i < 12; i++)
		v[i] = (float)(i * 7 % 23);
	ann_error e = {0};
	for (uint8_t s = 0; s < 7; s++) {
		char path[512], name[32];
		snprintf(path, sizeof path, "%s/in.%s", scratch, ext[s]);
		ann_vwriter *w;
		if (ann_vwriter_open(path, 4, &w, &e) < 0 || ann_vwriter_write_f32(w, v, 3, &e) < 0 ||
		    ann_vwriter_close(w, &e) < 0)
			die(path, &e);
		snprintf(name, sizeof name, "%s", ext[s]);
		seed_file("vecio", name, &s, 1, path);
		if (s == 2) { /* ivecs of ids: also ground truth */
			uint8_t g = 2;
			seed_file("gt", "ivecs", &g, 1, path);
		}
	}
	/* MNIST idx3-ubyte: big-endian magic 0x803, n, rows, cols, then bytes. */
	uint8_t idx[16 + 2 * 2 * 3] = { 0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3 };
	for (int i = 16; i < (int)sizeof idx; i++)
		idx[i] = (uint8_t)(i * 13);
	uint8_t s = 7;
	seed("vecio", "idx3", &s, 1, idx, sizeof idx);
	s = 9; /* the target gzips it */
	seed("vecio", "idx3-gz", &s, 1, idx, sizeof idx);
	char gzp[512];
	snprintf(gzp, sizeof gzp, "%s/x.gz", scratch);
	gzFile gz = gzopen(gzp, "wb");
	if (!gz || gzwrite(gz, idx, sizeof idx) != (int)sizeof idx || gzclose(gz) != Z_OK)
		die("gzip", NULL);
	s = 8;
	seed_file("vecio", "idx3-gz-raw", &s, 1, gzp);

	/* Ground truth: 2 queries x 3 neighbours. */
	int32_t ids[6] = { 0, 1, 2, 2, -1, 0 };
	float dists[6] = { 0.5f, 1, 2, 0, 3, 4 };
	char path[512];
	snprintf(path, sizeof path, "%s/gt.bin", scratch);
	if (ann_gt_write(path, 2, 3, ids, dists, &e) < 0)
		die(path, &e);
	uint8_t g = 0;
	seed_file("gt", "bin", &g, 1, path);
	g = 0x80;
	seed_file("gt", "bin-dists", &g, 1, path);
	g = 0x81;
	size_t len;
	uint8_t *b = slurp(path, &len);
	seed("gt", "ibin-ids-only", &g, 1, b, 8 + 6 * 4);
	free(b);
}

static void blocks(void)
{
	struct { const char *name; ann_block_encoding enc; ann_block_codec codec; bool shuffle;
		 ann_block_center center; ann_block_pad pad; } cfg[] = {
		{ "f32-zstd", ANN_BLOCK_F32, ANN_BLOCK_CODEC_ZSTD, true, ANN_BLOCK_CENTER_OFF, ANN_BLOCK_PAD_FILE },
		{ "f32-raw", ANN_BLOCK_F32, ANN_BLOCK_CODEC_NONE, false, ANN_BLOCK_CENTER_OFF, ANN_BLOCK_PAD_FILE },
		{ "u8-center-lmdb", ANN_BLOCK_U8, ANN_BLOCK_CODEC_ZSTD, true, ANN_BLOCK_CENTER_ON, ANN_BLOCK_PAD_LMDB },
		{ "i8-raw", ANN_BLOCK_I8, ANN_BLOCK_CODEC_NONE, false, ANN_BLOCK_CENTER_OFF, ANN_BLOCK_PAD_FILE },
		{ "f16-zstd", ANN_BLOCK_F16, ANN_BLOCK_CODEC_ZSTD, true, ANN_BLOCK_CENTER_OFF, ANN_BLOCK_PAD_FILE },
		{ "sq8-raw", ANN_BLOCK_SQ8, ANN_BLOCK_CODEC_NONE, true, ANN_BLOCK_CENTER_OFF, ANN_BLOCK_PAD_FILE },
	};
	enum { N = 6, D = 5 };
	float v[N * D];
	int64_t ids[N];
	for (int i = 0; i < N; i++) {
		ids[i] = 1000 - 37 * i;
		for (int j = 0; j < D; j++)
			v[i * D + j] = (float)((i * 31 + j * 17) % 100);
	}
	for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
		ann_block_params p;
		block_params_init(&p);
		p.encoding = cfg[c].enc;
		p.codec = cfg[c].codec;
		p.shuffle = cfg[c].shuffle;
		p.center = cfg[c].center;
		p.pad = cfg[c].pad;
		uint8_t *b;
		size_t len;
		ann_error e = {0};
		if (block_encode(NULL, &p, D, N, ids, v, ANN_DTYPE_F32, 7, 2, &b, &len, &e) < 0)
			die(cfg[c].name, &e);
		seed("block", cfg[c].name, NULL, 0, b, len);
		ann_aligned_free(b);
	}
}

/* Codes blocks (block format 2): small rows in one page, rows larger than a
 * page, both paddings, the three row types. The input byte after the block
 * is 0, so the target recomputes the checksums (see fuzz_cblock.c). */
static void cblocks(void)
{
	struct {
		const char *name;
		ann_block_encoding enc;
		ann_block_pad pad;
		uint32_t dim, n;
		unsigned bits;
		bool f16, order, hp, cr;
	} cfg[] = {
		{ "u8-1bit-file", ANN_BLOCK_U8, ANN_BLOCK_PAD_FILE, 24, 40, 1, false, false, false, false },
		{ "f32-2bit-lmdb", ANN_BLOCK_F32, ANN_BLOCK_PAD_LMDB, 16, 12, 2, false, false, false, false },
		{ "i8-3bit-file", ANN_BLOCK_I8, ANN_BLOCK_PAD_FILE, 8, 9, 3, false, false, false, false },
		{ "f32-bigrow-file", ANN_BLOCK_F32, ANN_BLOCK_PAD_FILE, 1100, 2, 1, false, false, false, false },
		{ "u8-2bit-f16-file", ANN_BLOCK_U8, ANN_BLOCK_PAD_FILE, 24, 40, 2, true, false, false, false }, /* 2.1: slim records */
		{ "i8-1bit-f16-lmdb", ANN_BLOCK_I8, ANN_BLOCK_PAD_LMDB, 8, 9, 1, true, false, false, false },
		/* 2.2: page-local rows and a page map (3 rows per page, 5 pages) */
		{ "u8-1bit-order-file", ANN_BLOCK_U8, ANN_BLOCK_PAD_FILE, 1300, 14, 1, false, true, false, false },
		{ "f32-2bit-f16-order-lmdb", ANN_BLOCK_F32, ANN_BLOCK_PAD_LMDB, 300, 8, 2, true, true, false, false },
		/* 2.3: exact page 0 shares the head's last page (one page in all;
		 * 400 ordered rows over 3 pages in LMDB padding) */
		{ "u8-1bit-hp-file", ANN_BLOCK_U8, ANN_BLOCK_PAD_FILE, 24, 40, 1, false, false, true, false },
		{ "u8-2bit-f16-order-hp-lmdb", ANN_BLOCK_U8, ANN_BLOCK_PAD_LMDB, 24, 400, 2, true, true, true, false },
		/* 2.4: centre products after the ids (inner-product indexes) */
		{ "f32-2bit-f16-order-hp-cr-file", ANN_BLOCK_F32, ANN_BLOCK_PAD_FILE, 24, 200, 2, true, true, true, true },
	};
	for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
		uint32_t d = cfg[c].dim, n = cfg[c].n;
		float *v = malloc((size_t)n * d * sizeof(float));
		int64_t *ids = malloc(n * sizeof(int64_t));
		if (!v || !ids)
			die("out of memory", NULL);
		for (uint32_t i = 0; i < n; i++) {
			ids[i] = 500 + 7 * (int64_t)i;
			for (uint32_t j = 0; j < d; j++)
				v[(size_t)i * d + j] = (float)((int)((i * 31 + j * 17) % 100) - (cfg[c].enc == ANN_BLOCK_I8 ? 50 : 0));
		}
		ann_rbq *q;
		uint8_t *b;
		size_t len;
		uint32_t head;
		ann_error e = {0};
		if (ann_rbq_new(d, cfg[c].bits, 11, &q, &e) < 0 ||
		    cblock_encode(q, cfg[c].enc, cfg[c].pad, cblock_opts(cfg[c].f16, cfg[c].order, cfg[c].hp, cfg[c].cr), d, n, ids, v,
				  ANN_DTYPE_F32, 3, 1, &b, &len, &head, &e) < 0)
			die(cfg[c].name, &e);
		const uint8_t zero = 0;
		seed("cblock", cfg[c].name, b, len, &zero, 1);
		ann_aligned_free(b);
		ann_rbq_free(q);
		free(v);
		free(ids);
	}
}

static void mlps(void)
{
	ann_mlp_spec s = { .in_dim = 4, .out_dim = 3, .n_hidden = 1, .hidden = { 5 },
			   .hidden_act = ANN_ACT_RELU, .out_act = ANN_ACT_SOFTMAX };
	ann_rng rng;
	ann_rng_seed(&rng, 1);
	ann_mlp *m;
	uint8_t *b;
	size_t len;
	ann_error e = {0};
	if (ann_mlp_new(&s, &rng, &m, &e) < 0 || ann_mlp_save(m, &b, &len, &e) < 0)
		die("mlp", &e);
	seed("mlp", "relu-softmax", NULL, 0, b, len);
	ann_free(b);
	ann_mlp_free(m);
	s.n_hidden = 0;
	s.out_act = ANN_ACT_TANH;
	if (ann_mlp_new(&s, &rng, &m, &e) < 0 || ann_mlp_save(m, &b, &len, &e) < 0)
		die("mlp", &e);
	seed("mlp", "one-layer", NULL, 0, b, len);
	ann_free(b);
	ann_mlp_free(m);
}

/* Catalog records of an index (target catalog's input format), a few per DBI. */
static void dump_catalog(const char *index, const char *name)
{
	char p[600];
	snprintf(p, sizeof p, "%s/catalog.lmdb", index);
	MDB_env *env;
	MDB_txn *txn;
	if (mdb_env_create(&env) || mdb_env_set_maxdbs(env, 16) || mdb_env_open(env, p, MDB_RDONLY, 0) ||
	    mdb_txn_begin(env, NULL, MDB_RDONLY, &txn))
		die("open catalog", NULL);
	uint8_t *buf = malloc(1 << 16);
	size_t n = 0;
	for (int db = 0; db < ANN_CAT_NDB; db++) {
		MDB_dbi dbi;
		MDB_cursor *cur;
		MDB_val k, v;
		if (mdb_dbi_open(txn, ann_catalog_db_name((ann_cat_db)db), 0, &dbi) ||
		    mdb_cursor_open(txn, dbi, &cur))
			die("open dbi", NULL);
		int taken = 0;
		for (int rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0 && taken < 6;
		     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
			/* Values without their checksum; the target appends it (flag 1). */
			size_t vl = db == ANN_CAT_BLOCKS ? v.mv_size : v.mv_size - 8;
			if (k.mv_size > 255 || vl > 512 || n + 5 + k.mv_size + vl > (1 << 16))
				continue;
			if (db == ANN_CAT_META && strncmp(k.mv_data, "build.", 6) == 0 &&
			    strcmp(k.mv_data, "build.input") != 0)
				continue; /* keep the seed small: build parameters are plain u64/f64 */
			buf[n++] = (uint8_t)db;
			buf[n++] = db == ANN_CAT_BLOCKS ? 0 : 1;
			buf[n++] = (uint8_t)k.mv_size;
			memcpy(buf + n, k.mv_data, k.mv_size);
			n += k.mv_size;
			ann_st16(buf + n, (uint16_t)vl);
			n += 2;
			memcpy(buf + n, v.mv_data, vl);
			n += vl;
			if (db != ANN_CAT_META)
				taken++;
		}
		mdb_cursor_close(cur);
	}
	seed("catalog", name, NULL, 0, buf, n);
	free(buf);
	mdb_txn_abort(txn);
	mdb_env_close(env);
}

/* The router blob of an index (models "router"). */
static void dump_router(const char *index, ann_router_kind kind, const char *name, bool hnsw_too)
{
	char p[600];
	snprintf(p, sizeof p, "%s/catalog.lmdb", index);
	ann_catalog *c;
	ann_cat_txn *t;
	ann_error e = {0};
	const uint8_t *blob;
	size_t len;
	ann_catalog_opts o;
	ann_catalog_opts_init(&o);
	o.readonly = true;
	if (ann_catalog_open(p, &o, &c, &e) < 0 || ann_catalog_read_begin(c, &t, &e) < 0 ||
	    ann_catalog_model_get(t, "router", &blob, &len, &e) < 0)
		die(p, &e);
	uint8_t pre[2] = { (uint8_t)kind, 0 };
	seed("router", name, pre, 2, blob, len);
	if (hnsw_too)
		seed("hnsw", name, NULL, 0, blob, len);
	ann_catalog_read_end(t);
	ann_catalog_close(c);
}

static void indexes(void)
{
	enum { N = 300, D = 6 };
	static float v[N * D];
	ann_rng rng;
	ann_rng_seed(&rng, 7);
	for (int i = 0; i < N; i++)
		for (int j = 0; j < D; j++)
			v[i * D + j] = (float)((i % 4) * 50 + (int)(ann_rng_next(&rng) % 20));
	ann_error e = {0};
	char in[512], fin[512];
	snprintf(in, sizeof in, "%s/base.u8bin", scratch);
	snprintf(fin, sizeof fin, "%s/base.fbin", scratch);
	ann_vwriter *w;
	if (ann_vwriter_open(in, D, &w, &e) < 0 || ann_vwriter_write_f32(w, v, N, &e) < 0 ||
	    ann_vwriter_close(w, &e) < 0)
		die(in, &e);
	if (ann_vwriter_open(fin, D, &w, &e) < 0 || ann_vwriter_write_f32(w, v, N, &e) < 0 ||
	    ann_vwriter_close(w, &e) < 0)
		die(fin, &e);
	struct { const char *name, *input; ann_router_kind kind; ann_store_kind store; bool hnsw; } cfg[] = {
		{ "kmeans-u8", in, ANN_ROUTER_KMEANS, ANN_STORE_FILE, true },
		{ "kmeans-f32-lmdb", fin, ANN_ROUTER_KMEANS, ANN_STORE_LMDB, true },
		{ "annann", fin, ANN_ROUTER_ANNANN, ANN_STORE_FILE, false },
		{ "nlsh", fin, ANN_ROUTER_NLSH, ANN_STORE_FILE, false },
	};
	for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
		ann_build_opts o;
		ann_build_opts_init(&o);
		o.router = cfg[c].kind;
		o.store = cfg[c].store;
		o.partitions = 4;
		o.threads = 1;
		o.kmeans.hnsw_m = o.annann.hnsw_m = 4;
		o.annann.embed_dim = 3;
		memset(o.annann.hidden, 0, sizeof o.annann.hidden);
		memset(o.nlsh.hidden, 0, sizeof o.nlsh.hidden);
		o.annann.hidden[0] = o.nlsh.hidden[0] = 4;
		o.annann.ae_epochs = 2;
		o.nlsh.nlsh_epochs = 2;
		o.nlsh.knn_k = 4;
		o.mem_bytes = 64u << 20;
		char idx[512];
		snprintf(idx, sizeof idx, "%s/idx-%s", scratch, cfg[c].name);
		if (ann_build(cfg[c].input, idx, &o, &e) < 0)
			die(cfg[c].name, &e);
		dump_router(idx, cfg[c].kind, cfg[c].name, cfg[c].hnsw);
		if (c < 2)
			dump_catalog(idx, cfg[c].name);
	}
}

static void numbers(void)
{
	static const struct { uint8_t sel; const char *s; } nums[] = {
		{ 0, "0" }, { 0, "18446744073709551615" }, { 1, "512M" }, { 1, "1.5GiB" }, { 1, "4096" },
		{ 1, "2TB" }, { 2, "0.25" }, { 2, "1e-3" }, { 3, "1,2,3" }, { 3, "16" },
	};
	for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
		char name[32];
		snprintf(name, sizeof name, "n%zu", i);
		seed("cli_number", name, &nums[i].sel, 1, nums[i].s, strlen(nums[i].s));
	}
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: fuzz_mkseeds DIR\n");
		return 2;
	}
	out_dir = argv[1];
	mkdir(out_dir, 0755);
	snprintf(scratch, sizeof scratch, "%s/.scratch.XXXXXX", out_dir);
	if (!mkdtemp(scratch))
		die("mkdtemp", NULL);
	vectors();
	blocks();
	cblocks();
	mlps();
	indexes();
	numbers();
	char cmd[600];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", scratch);
	return system(cmd) == 0 ? 0 : 1;
}
