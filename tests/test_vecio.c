/* SPDX-License-Identifier: MIT */
/* Description: vecio.c and gen.c: round trips through every format against an
 * independent encoder, every malformed-input message (file, vector index),
 * idx files (synthetic, gzip, and the real Fashion-MNIST t10k if present),
 * ground truth, writer failure states, allocation failures; the generator
 * against a reference reimplementation of the algorithm in gen.c's comment,
 * its determinism, value range, clustering, drift and queries. */
#include "testutil.h"

#include <errno.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include "gen.h"
#include "vecio.h"

static char *dir;

/* ---- helpers --------------------------------------------------------------- */

static bool file_exists(const char *p)
{
	struct stat st;
	return stat(p, &st) == 0;
}

/* No "*.tmp.*" leftovers in the test directory. */
static void assert_no_tmp(void)
{
	char cmd[4200];
	snprintf(cmd, sizeof cmd, "ls %s | grep -q '\\.tmp\\.'", dir);
	ASSERT_TRUE(system(cmd) != 0);
}

static void put32(uint8_t **p, uint32_t v)
{
	ann_st32(*p, v);
	*p += 4;
}

/* Independent encoder: the bytes a file of format fmt holding n x d vectors
 * with elements elems (file type, native layout) must have. */
static uint8_t *encode(ann_vfmt fmt, const void *elems, size_t n, uint32_t d, size_t *len)
{
	size_t es = ann_dtype_size(ann_vfmt_dtype(fmt));
	bool vecs = fmt == ANN_VFMT_FVECS || fmt == ANN_VFMT_BVECS || fmt == ANN_VFMT_IVECS;
	*len = vecs ? n * (4 + d * es) : 8 + n * d * es;
	uint8_t *buf = malloc(*len + 1), *p = buf;
	const uint8_t *e = elems;
	if (!vecs) {
		put32(&p, (uint32_t)n);
		put32(&p, d);
	}
	for (size_t i = 0; i < n; i++) {
		if (vecs)
			put32(&p, d);
		for (size_t j = 0; j < d * es; j++)
			*p++ = e[i * d * es + j];
	}
	return buf;
}

static void write_bin(const char *path, int32_t n, int32_t d, const void *data, size_t bytes)
{
	uint8_t *b = malloc(8 + bytes);
	ann_st32(b, (uint32_t)n);
	ann_st32(b + 4, (uint32_t)d);
	if (bytes)
		memcpy(b + 8, data, bytes);
	t_write_file(path, b, 8 + bytes);
	free(b);
}

/* Opening path must fail with code and a message containing both the path
 * and needle. */
static void expect_open_err(const char *path, int code, const char *needle)
{
	ann_error e = {0};
	ann_vreader *r = (ann_vreader *)1;
	ASSERT_ERR(ann_vreader_open(path, &r, &e), e, code, needle);
	ASSERT_TRUE(r == NULL);
	ASSERT_TRUE(strstr(e.msg, path) != NULL);
	ASSERT_EQ(e.code, code);
}

/* ---- formats ----------------------------------------------------------------- */

static void test_formats(void)
{
	t_current = "formats";
	static const struct {
		const char *p;
		ann_vfmt f;
		ann_dtype t;
	} cases[] = {
		{"a.fvecs", ANN_VFMT_FVECS, ANN_DTYPE_F32},
		{"x/b.bvecs", ANN_VFMT_BVECS, ANN_DTYPE_U8},
		{"c.ivecs", ANN_VFMT_IVECS, ANN_DTYPE_I32},
		{"d.fbin", ANN_VFMT_FBIN, ANN_DTYPE_F32},
		{"e.u8bin", ANN_VFMT_U8BIN, ANN_DTYPE_U8},
		{"f.i8bin", ANN_VFMT_I8BIN, ANN_DTYPE_I8},
		{"g.ibin", ANN_VFMT_IBIN, ANN_DTYPE_I32},
		{"train-images-idx3-ubyte", ANN_VFMT_IDX, ANN_DTYPE_U8},
		{"t10k-images-idx3-ubyte.gz", ANN_VFMT_IDX, ANN_DTYPE_U8},
		{"train-images.idx3-ubyte", ANN_VFMT_IDX, ANN_DTYPE_U8},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		ann_vfmt f;
		ASSERT_OK(ann_vfmt_from_path(cases[i].p, &f, NULL));
		ASSERT_EQ(f, cases[i].f);
		ASSERT_EQ(ann_vfmt_dtype(f), cases[i].t);
		ASSERT_TRUE(strcmp(ann_vfmt_name(f), "unknown") != 0);
	}
	ann_error e = {0};
	ann_vfmt f;
	ASSERT_ERR(ann_vfmt_from_path("vectors.npy", &f, &e), e, ANN_E_INVAL, "vectors.npy");
	ASSERT_ERR(ann_vfmt_from_path("x.fvecs.gz", &f, &e), e, ANN_E_INVAL, "unknown vector file extension");
	ASSERT_EQ(ann_dtype_size(ANN_DTYPE_F32), 4);
	ASSERT_EQ(ann_dtype_size(ANN_DTYPE_I32), 4);
	ASSERT_EQ(ann_dtype_size(ANN_DTYPE_U8), 1);
	ASSERT_EQ(ann_dtype_size(ANN_DTYPE_I8), 1);
	ASSERT_EQ(ann_dtype_size(ANN_DTYPE_F16), 2);
	/* Unknown extension through the reader and writer too. */
	char *p = t_path(dir, "v.txt");
	t_write_file(p, "1234", 4);
	expect_open_err(p, ANN_E_INVAL, "unknown vector file extension");
	ann_vwriter *w;
	ASSERT_ERR(ann_vwriter_open(p, 4, &w, &e), e, ANN_E_INVAL, "v.txt");
	free(p);
	p = t_path(dir, "missing.fbin");
	expect_open_err(p, ANN_E_NOTFOUND, "cannot open");
	free(p);
}

/* ---- round trips -------------------------------------------------------------- */

/* Random elements of the file type, and the same values as floats. */
static void fill_elems(ann_rng *rng, ann_dtype t, size_t cnt, void *elems, float *asf)
{
	for (size_t i = 0; i < cnt; i++) {
		switch (t) {
		case ANN_DTYPE_F32: {
			float v = (float)(ann_rng_normal(rng) * 100.0);
			((float *)elems)[i] = v;
			asf[i] = v;
			break;
		}
		case ANN_DTYPE_U8: {
			uint8_t v = (uint8_t)ann_rng_below(rng, 256);
			((uint8_t *)elems)[i] = v;
			asf[i] = v;
			break;
		}
		case ANN_DTYPE_I8: {
			int8_t v = (int8_t)((int)ann_rng_below(rng, 256) - 128);
			((int8_t *)elems)[i] = v;
			asf[i] = v;
			break;
		}
		default: {
			int32_t v = (int32_t)ann_rng_below(rng, 1u << 25) - (1 << 24); /* exact as float */
			((int32_t *)elems)[i] = v;
			asf[i] = (float)v;
			break;
		}
		}
	}
}

static void roundtrip_one(ann_rng *rng, const char *name, size_t n, uint32_t d, bool check_alloc)
{
	char *p = t_path(dir, name);
	ann_vfmt fmt;
	ASSERT_OK(ann_vfmt_from_path(p, &fmt, NULL));
	ann_dtype t = ann_vfmt_dtype(fmt);
	size_t es = ann_dtype_size(t), cnt = n * d;
	uint8_t *elems = malloc(cnt * es + 1);
	float *asf = malloc(cnt * sizeof(float) + 1);
	fill_elems(rng, t, cnt, elems, asf);

	/* Write in pieces of random size, alternating float and raw input. */
	ann_error e = {0};
	ann_vwriter *w;
	ASSERT_OK(ann_vwriter_open(p, d, &w, &e));
	size_t done = 0;
	int turn = 0;
	while (done < n) {
		size_t k = (size_t)ann_rng_below(rng, 3 * n / 4 + 2);
		k = ANN_MIN(n - done, k);
		if (turn++ & 1)
			ASSERT_OK(ann_vwriter_write_raw(w, elems + done * d * es, k, &e));
		else
			ASSERT_OK(ann_vwriter_write_f32(w, asf + done * d, k, &e));
		done += k;
		ASSERT_EQ(ann_vwriter_count(w), done);
	}
	ASSERT_TRUE(!file_exists(p)); /* appears only at close */
	ASSERT_OK(ann_vwriter_close(w, &e));
	assert_no_tmp();

	size_t len, flen;
	uint8_t *want = encode(fmt, elems, n, d, &len);
	uint8_t *got = t_read_file(p, &flen);
	ASSERT_EQ(flen, len);
	ASSERT_TRUE(memcmp(want, got, len) == 0);
	free(want);
	free(got);

	ann_vreader *r;
	ASSERT_OK(ann_vreader_open(p, &r, &e));
	ASSERT_EQ(ann_vreader_count(r), n);
	ASSERT_EQ(ann_vreader_dim(r), d);
	ASSERT_EQ(ann_vreader_dtype(r), t);
	ASSERT_EQ(ann_vreader_fmt(r), fmt);
	ASSERT_TRUE(strcmp(ann_vreader_path(r), p) == 0);
	float *f = malloc(cnt * sizeof(float) + 4);
	uint8_t *raw = malloc(cnt * es + 4);
	/* Whole file as float32 in chunks of random size. */
	done = 0;
	while (done < n) {
		size_t k = 1 + (size_t)ann_rng_below(rng, n / 3 + 1);
		int64_t g = ann_vreader_read_f32(r, f + done * d, k, &e);
		ASSERT_TRUE(g > 0);
		ASSERT_EQ(g, ANN_MIN(k, n - done));
		done += (size_t)g;
		ASSERT_EQ(ann_vreader_pos(r), done);
	}
	ASSERT_EQ(ann_vreader_read_f32(r, f, 5, &e), 0);
	ASSERT_TRUE(memcmp(f, asf, cnt * sizeof(float)) == 0);
	/* Raw, from the start. */
	ASSERT_OK(ann_vreader_seek(r, 0, &e));
	ASSERT_EQ(ann_vreader_read_raw(r, raw, n, &e), (int64_t)n);
	ASSERT_TRUE(memcmp(raw, elems, cnt * es) == 0);
	/* Random seeks, both directions, both conversions. */
	for (int it = 0; it < 30; it++) {
		uint64_t i = ann_rng_below(rng, n + 1);
		size_t k = 1 + (size_t)ann_rng_below(rng, 40);
		size_t expect = (size_t)ANN_MIN((uint64_t)k, n - i);
		ASSERT_OK(ann_vreader_seek(r, i, &e));
		ASSERT_EQ(ann_vreader_pos(r), i);
		if (it & 1) {
			ASSERT_EQ(ann_vreader_read_raw(r, raw, k, &e), (int64_t)expect);
			ASSERT_TRUE(memcmp(raw, elems + i * d * es, expect * d * es) == 0);
		} else {
			ASSERT_EQ(ann_vreader_read_f32(r, f, k, &e), (int64_t)expect);
			ASSERT_TRUE(memcmp(f, asf + i * d, expect * d * sizeof(float)) == 0);
		}
		ASSERT_EQ(ann_vreader_pos(r), i + expect);
	}
	ASSERT_ERR(ann_vreader_seek(r, n + 1, &e), e, ANN_E_INVAL, p);
	ASSERT_EQ(ann_vreader_read_f32(r, f, 0, &e), 0);
	ann_vreader_close(r);

	if (check_alloc) {
		/* Every allocation of open/read/write/close may fail: no leak, a
		 * clean ANN_E_NOMEM, and success once the injection is past. */
		int64_t base = ann_mem_live_bytes();
		for (int64_t k = 0;; k++) {
			ann_mem_fail_after(k);
			int rc = ann_vreader_open(p, &r, &e);
			if (rc == ANN_OK) {
				ann_mem_fail_after(-1);
				ann_vreader_close(r);
				break;
			}
			ASSERT_EQ(rc, ANN_E_NOMEM);
			ASSERT_EQ(ann_mem_live_bytes(), base);
		}
		char *p2 = t_path(dir, "alloc.fvecs");
		for (int64_t k = 0;; k++) {
			ann_mem_fail_after(k);
			int rc = ann_vwriter_open(p2, d, &w, &e);
			if (rc == ANN_OK) {
				ann_mem_fail_after(-1);
				ASSERT_OK(ann_vwriter_write_f32(w, asf, 1, &e));
				ASSERT_OK(ann_vwriter_close(w, &e));
				break;
			}
			ASSERT_EQ(rc, ANN_E_NOMEM);
			ASSERT_EQ(ann_mem_live_bytes(), base);
		}
		ann_mem_fail_after(-1);
		assert_no_tmp();
		ASSERT_EQ(ann_mem_live_bytes(), base);
		unlink(p2);
		free(p2);
	}
	free(f);
	free(raw);
	free(elems);
	free(asf);
	unlink(p);
	free(p);
}

static void test_roundtrip(ann_rng *rng)
{
	t_current = "roundtrip";
	const char *names[] = {"r.fvecs", "r.bvecs", "r.ivecs", "r.fbin", "r.u8bin", "r.i8bin", "r.ibin"};
	for (size_t i = 0; i < 7; i++) {
		roundtrip_one(rng, names[i], 1, 1, false);
		roundtrip_one(rng, names[i], 300, 37, i == 0);
	}
	/* Larger than the 4 MiB buffers: reads and writes cross chunk edges
	 * (bvecs records are 132 bytes, so chunks do not align with 4 MiB). */
	roundtrip_one(rng, "big.bvecs", 40000, 128, false);
	roundtrip_one(rng, "big.fbin", 9000, 128, false);
	roundtrip_one(rng, "big.u8bin", 40000, 129, false);
}

/* write_f32 into integer formats: round half to even, range-checked. */
static void test_write_conversion(void)
{
	t_current = "write_conversion";
	ann_error e = {0};
	char *p = t_path(dir, "conv.u8bin");
	ann_vwriter *w;
	ASSERT_OK(ann_vwriter_open(p, 4, &w, &e));
	const float ok[8] = {0.5f, 1.5f, 2.5f, 254.6f, -0.5f, 255.49f, 7.4999f, 100.0f};
	ASSERT_OK(ann_vwriter_write_f32(w, ok, 2, &e));
	const float bad[8] = {1, 2, 3, 4, 5, 6, 255.6f, 8};
	ASSERT_ERR(ann_vwriter_write_f32(w, bad, 2, &e), e, ANN_E_INVAL, "vector 3: component 2");
	ASSERT_TRUE(strstr(e.msg, p) != NULL);
	const float neg[4] = {1, -0.6f, 3, 4};
	ASSERT_ERR(ann_vwriter_write_f32(w, neg, 1, &e), e, ANN_E_INVAL, "vector 2: component 1");
	const float nan[4] = {1, 2, NAN, 4};
	ASSERT_ERR(ann_vwriter_write_f32(w, nan, 1, &e), e, ANN_E_INVAL, "vector 2: component 2");
	/* Input errors write nothing and leave the writer usable. */
	ASSERT_EQ(ann_vwriter_count(w), 2);
	ASSERT_OK(ann_vwriter_write_f32(w, ok, 1, &e));
	ASSERT_OK(ann_vwriter_close(w, &e));
	ann_vreader *r;
	uint8_t got[12];
	ASSERT_OK(ann_vreader_open(p, &r, &e));
	ASSERT_EQ(ann_vreader_count(r), 3);
	ASSERT_EQ(ann_vreader_read_raw(r, got, 3, &e), 3);
	const uint8_t want[12] = {0, 2, 2, 255, 0, 255, 7, 100, 0, 2, 2, 255};
	ASSERT_TRUE(memcmp(got, want, 12) == 0);
	ann_vreader_close(r);
	free(p);

	p = t_path(dir, "conv.i8bin");
	ASSERT_OK(ann_vwriter_open(p, 2, &w, &e));
	const float i8[4] = {-128.4f, 127.4f, -3.5f, 3.5f};
	ASSERT_OK(ann_vwriter_write_f32(w, i8, 2, &e));
	const float i8bad[2] = {-128.6f, 0};
	ASSERT_ERR(ann_vwriter_write_f32(w, i8bad, 1, &e), e, ANN_E_INVAL, "vector 2: component 0");
	ASSERT_OK(ann_vwriter_close(w, &e));
	int8_t g8[4];
	ASSERT_OK(ann_vreader_open(p, &r, &e));
	ASSERT_EQ(ann_vreader_read_raw(r, g8, 2, &e), 2);
	ASSERT_TRUE(g8[0] == -128 && g8[1] == 127 && g8[2] == -4 && g8[3] == 4);
	ann_vreader_close(r);
	free(p);

	p = t_path(dir, "conv.ivecs");
	ASSERT_OK(ann_vwriter_open(p, 2, &w, &e));
	const float ibad[2] = {3e9f, 0};
	ASSERT_ERR(ann_vwriter_write_f32(w, ibad, 1, &e), e, ANN_E_INVAL, "vector 0: component 0");
	ASSERT_OK(ann_vwriter_write_f32(w, i8, 2, &e));
	ASSERT_OK(ann_vwriter_close(w, &e));
	free(p);

	/* Float files refuse NaN and Inf on write too. */
	p = t_path(dir, "conv.fvecs");
	ASSERT_OK(ann_vwriter_open(p, 3, &w, &e));
	const float inf[6] = {1, 2, 3, 4, INFINITY, 6};
	ASSERT_ERR(ann_vwriter_write_f32(w, inf, 2, &e), e, ANN_E_INVAL, "vector 1: component 1");
	ASSERT_ERR(ann_vwriter_write_raw(w, inf, 2, &e), e, ANN_E_INVAL, "vector 1: component 1");
	ann_vwriter_abort(w);
	ASSERT_TRUE(!file_exists(p));
	assert_no_tmp();
	free(p);

	/* Misuse of open. */
	p = t_path(dir, "x-idx3-ubyte");
	ASSERT_ERR(ann_vwriter_open(p, 3, &w, &e), e, ANN_E_UNSUPPORTED, "read but not written");
	free(p);
	p = t_path(dir, "dim0.fbin");
	ASSERT_ERR(ann_vwriter_open(p, 0, &w, &e), e, ANN_E_INVAL, "dimension 0");
	free(p);
	p = t_path(dir, "no/such/dir/x.fbin");
	ASSERT_ERR(ann_vwriter_open(p, 3, &w, &e), e, ANN_E_IO, "cannot create");
	free(p);
}

/* An I/O error while writing makes the writer sticky-failed (RLIMIT_FSIZE
 * turns the flush into EFBIG). */
static void test_writer_io_error(void)
{
	t_current = "writer_io_error";
	struct rlimit old, lim;
	ASSERT_TRUE(getrlimit(RLIMIT_FSIZE, &old) == 0);
	void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
	lim = old;
	lim.rlim_cur = 1 << 20;
	ASSERT_TRUE(setrlimit(RLIMIT_FSIZE, &lim) == 0);
	char *p = t_path(dir, "big.u8bin");
	size_t n = 8192, d = 1024; /* 8 MiB: at least one flush fails */
	uint8_t *v = calloc(n, d);
	ann_error e = {0};
	ann_vwriter *w;
	ASSERT_OK(ann_vwriter_open(p, (uint32_t)d, &w, &e));
	ASSERT_ERR(ann_vwriter_write_raw(w, v, n, &e), e, ANN_E_IO, "big.u8bin.tmp.");
	ASSERT_TRUE(e.sys_errno == EFBIG);
	ASSERT_ERR(ann_vwriter_write_raw(w, v, 1, &e), e, ANN_E_STATE, "failed earlier");
	ASSERT_ERR(ann_vwriter_close(w, &e), e, ANN_E_STATE, "failed earlier");
	ASSERT_TRUE(!file_exists(p));
	assert_no_tmp();
	ASSERT_TRUE(setrlimit(RLIMIT_FSIZE, &old) == 0);
	signal(SIGXFSZ, prev);
	free(v);
	free(p);
}

/* ---- malformed input ------------------------------------------------------ */

static void test_bad_bin(void)
{
	t_current = "bad_bin";
	char *p = t_path(dir, "bad.fbin");
	float v[40];
	for (int i = 0; i < 40; i++)
		v[i] = (float)i;
	/* Header n * d disagrees with the file size: 10 x 4 announced, 9.5 present. */
	write_bin(p, 10, 4, v, 38 * 4);
	expect_open_err(p, ANN_E_BADINPUT, "vector 9: truncated: header says 10 vectors of dimension 4");
	/* Trailing bytes after the last vector. */
	write_bin(p, 9, 4, v, 38 * 4);
	expect_open_err(p, ANN_E_BADINPUT, "8 bytes after vector 8");
	write_bin(p, -3, 4, v, 0);
	expect_open_err(p, ANN_E_BADINPUT, "header says -3 vectors");
	write_bin(p, 0, 4, v, 0);
	expect_open_err(p, ANN_E_BADINPUT, "header says 0 vectors");
	write_bin(p, 1, 0, v, 0);
	expect_open_err(p, ANN_E_BADINPUT, "header says dimension 0");
	write_bin(p, 1, -4, v, 16);
	expect_open_err(p, ANN_E_BADINPUT, "header says dimension -4");
	write_bin(p, 1, 1 << 30, v, 16);
	expect_open_err(p, ANN_E_BADINPUT, "header says dimension 1073741824");
	write_bin(p, 2000000000, 128, v, 16); /* absurd n: size check */
	expect_open_err(p, ANN_E_BADINPUT, "header says 2000000000 vectors of dimension 128");
	t_write_file(p, "", 0);
	expect_open_err(p, ANN_E_BADINPUT, "empty file");
	t_write_file(p, "\x01\x00\x00", 3);
	expect_open_err(p, ANN_E_BADINPUT, "shorter than the 8-byte header");
	/* NaN and Inf name vector and component, through both read calls;
	 * the position stays put on error. */
	v[4 * 5 + 3] = NAN;
	write_bin(p, 10, 4, v, 40 * 4);
	ann_vreader *r;
	ann_error e = {0};
	float out[40];
	ASSERT_OK(ann_vreader_open(p, &r, &e));
	ASSERT_EQ(ann_vreader_read_f32(r, out, 3, &e), 3);
	ASSERT_ERR((int)ann_vreader_read_f32(r, out, 10, &e), e, ANN_E_BADINPUT,
		   "vector 5: component 3 is NaN");
	ASSERT_TRUE(strstr(e.msg, p) != NULL);
	ASSERT_EQ(ann_vreader_pos(r), 3);
	ASSERT_EQ(ann_vreader_read_f32(r, out, 2, &e), 2);
	ASSERT_ERR((int)ann_vreader_read_raw(r, out, 1, &e), e, ANN_E_BADINPUT,
		   "vector 5: component 3 is NaN");
	ann_vreader_close(r);
	v[4 * 5 + 3] = 1;
	v[4 * 7] = -INFINITY;
	write_bin(p, 10, 4, v, 40 * 4);
	ASSERT_OK(ann_vreader_open(p, &r, &e));
	ASSERT_ERR((int)ann_vreader_read_f32(r, out, 10, &e), e, ANN_E_BADINPUT,
		   "vector 7: component 0 is -Inf");
	ann_vreader_close(r);
	/* finite but beyond +-2^50: refused by name; 2^50 itself is taken */
	v[4 * 7] = -ANN_F32_INPUT_MAX;
	v[4 * 8 + 1] = nextafterf(ANN_F32_INPUT_MAX, INFINITY);
	write_bin(p, 10, 4, v, 40 * 4);
	ASSERT_OK(ann_vreader_open(p, &r, &e));
	ASSERT_EQ(ann_vreader_read_f32(r, out, 8, &e), 8);
	ASSERT_ERR((int)ann_vreader_read_raw(r, out, 2, &e), e, ANN_E_BADINPUT,
		   "vector 8: component 1 is 1.1259e+15, beyond +-2^50");
	ann_vreader_close(r);
	v[4 * 7] = v[4 * 8 + 1] = 1;
	free(p);
	/* Integer formats have no NaN: same bytes as ibin read fine. */
	p = t_path(dir, "bad.ibin");
	write_bin(p, 10, 4, v, 40 * 4);
	ASSERT_OK(ann_vreader_open(p, &r, &e));
	ASSERT_EQ(ann_vreader_read_raw(r, out, 10, &e), 10);
	ann_vreader_close(r);
	free(p);
}

/* A *vecs file of n records of dimension d (floats), where record bad_i
 * declares bad_d but still holds payload_d floats. */
static void write_fvecs(const char *path, int n, int d, int bad_i, int bad_d, int payload_d)
{
	size_t cap = (size_t)n * (4 + 4 * (size_t)ANN_MAX(d, payload_d)), len = 0;
	uint8_t *b = malloc(cap + 1);
	for (int i = 0; i < n; i++) {
		int dd = i == bad_i ? bad_d : d, pd = i == bad_i ? payload_d : d;
		ann_st32(b + len, (uint32_t)dd);
		len += 4;
		for (int j = 0; j < pd; j++, len += 4)
			ann_stf32(b + len, (float)(i * 1000 + j));
	}
	t_write_file(path, b, len);
	free(b);
}

static void test_bad_vecs(void)
{
	t_current = "bad_vecs";
	char *p = t_path(dir, "x.fvecs");
	ann_error e = {0};
	ann_vreader *r;
	/* A dimension that changes midway (file size no longer a multiple). */
	write_fvecs(p, 20, 128, 17, 96, 96);
	expect_open_err(p, ANN_E_BADINPUT, "x.fvecs: vector 17: dimension 96, expected 128");
	/* Same, but the file size stays a multiple: found when reading. */
	write_fvecs(p, 20, 128, 17, 96, 128);
	ASSERT_OK(ann_vreader_open(p, &r, &e));
	ASSERT_EQ(ann_vreader_count(r), 20);
	float *out = malloc(20 * 128 * sizeof(float));
	ASSERT_EQ(ann_vreader_read_f32(r, out, 17, &e), 17);
	ASSERT_EQ(out[16 * 128 + 5], 16005.0f);
	ASSERT_ERR((int)ann_vreader_read_f32(r, out, 10, &e), e, ANN_E_BADINPUT,
		   "x.fvecs: vector 17: dimension 96, expected 128");
	ASSERT_EQ(ann_vreader_pos(r), 17);
	ASSERT_OK(ann_vreader_seek(r, 18, &e));
	ASSERT_EQ(ann_vreader_read_raw(r, out, 10, &e), 2);
	ann_vreader_close(r);
	/* Partial last record. */
	write_fvecs(p, 6, 8, 5, 8, 3);
	expect_open_err(p, ANN_E_BADINPUT, "vector 5: truncated");
	/* First dimension zero, negative or absurd; empty and tiny files. */
	write_fvecs(p, 3, 0, -1, 0, 0);
	expect_open_err(p, ANN_E_BADINPUT, "vector 0: dimension 0");
	write_fvecs(p, 1, -5, -1, 0, 0);
	expect_open_err(p, ANN_E_BADINPUT, "vector 0: dimension -5");
	write_fvecs(p, 1, 8, 0, 1 << 30, 8);
	expect_open_err(p, ANN_E_BADINPUT, "vector 0: dimension 1073741824");
	t_write_file(p, "", 0);
	expect_open_err(p, ANN_E_BADINPUT, "empty file");
	t_write_file(p, "\x04\x00", 2);
	expect_open_err(p, ANN_E_BADINPUT, "vector 0: truncated");
	/* NaN names vector and component. */
	write_fvecs(p, 5, 4, -1, 0, 0);
	size_t len;
	uint8_t *b = t_read_file(p, &len);
	ann_stf32(b + 3 * 20 + 4 + 2 * 4, NAN);
	t_write_file(p, b, len);
	free(b);
	ASSERT_OK(ann_vreader_open(p, &r, &e));
	ASSERT_ERR((int)ann_vreader_read_f32(r, out, 5, &e), e, ANN_E_BADINPUT,
		   "vector 3: component 2 is NaN");
	ann_vreader_close(r);
	free(out);
	free(p);
	/* bvecs with a dimension change, found while reading through the buffer. */
	p = t_path(dir, "y.bvecs");
	uint8_t rec[3 * 8];
	for (int i = 0; i < 3; i++) {
		ann_st32(rec + 8 * i, i == 2 ? 5 : 4);
		memset(rec + 8 * i + 4, i, 4);
	}
	t_write_file(p, rec, sizeof rec);
	ASSERT_OK(ann_vreader_open(p, &r, &e));
	float fo[12];
	ASSERT_ERR((int)ann_vreader_read_f32(r, fo, 3, &e), e, ANN_E_BADINPUT,
		   "y.bvecs: vector 2: dimension 5, expected 4");
	ann_vreader_close(r);
	free(p);
}

/* ---- idx ------------------------------------------------------------------------ */

static uint8_t *make_idx(uint32_t magic, uint32_t n, uint32_t rows, uint32_t cols, size_t *len)
{
	size_t data = (size_t)n * rows * cols;
	uint8_t *b = malloc(16 + data + 1);
	uint32_t h[4] = {magic, n, rows, cols};
	for (int i = 0; i < 4; i++) {
		b[4 * i] = (uint8_t)(h[i] >> 24);
		b[4 * i + 1] = (uint8_t)(h[i] >> 16);
		b[4 * i + 2] = (uint8_t)(h[i] >> 8);
		b[4 * i + 3] = (uint8_t)h[i];
	}
	for (size_t i = 0; i < data; i++)
		b[16 + i] = (uint8_t)(i * 7 + i / 13);
	*len = 16 + data;
	return b;
}

static void write_gz(const char *path, const void *data, size_t len)
{
	gzFile g = gzopen(path, "wb");
	ASSERT_TRUE(g != NULL);
	ASSERT_EQ(gzwrite(g, data, (unsigned)len), (int)len);
	ASSERT_EQ(gzclose(g), Z_OK);
}

static void check_idx_reader(const char *p, const uint8_t *b, uint32_t n, uint32_t dim)
{
	ann_error e = {0};
	ann_vreader *r;
	ASSERT_OK(ann_vreader_open(p, &r, &e));
	ASSERT_EQ(ann_vreader_count(r), n);
	ASSERT_EQ(ann_vreader_dim(r), dim);
	ASSERT_EQ(ann_vreader_fmt(r), ANN_VFMT_IDX);
	uint8_t *raw = malloc((size_t)n * dim);
	float *f = malloc((size_t)n * dim * sizeof(float));
	ASSERT_EQ(ann_vreader_read_raw(r, raw, n, &e), n);
	ASSERT_TRUE(memcmp(raw, b + 16, (size_t)n * dim) == 0);
	/* Backwards seek (gzip rewinds), then float conversion. */
	ASSERT_OK(ann_vreader_seek(r, 1, &e));
	ASSERT_EQ(ann_vreader_read_f32(r, f, n, &e), n - 1);
	for (size_t i = 0; i < (size_t)(n - 1) * dim; i++)
		ASSERT_EQ(f[i], b[16 + dim + i]);
	ann_vreader_close(r);
	free(raw);
	free(f);
}

static void test_idx(void)
{
	t_current = "idx";
	size_t len;
	uint8_t *b = make_idx(0x803, 50, 28, 28, &len);
	char *p = t_path(dir, "syn-images-idx3-ubyte");
	char *pz = t_path(dir, "syn-images-idx3-ubyte.gz");
	t_write_file(p, b, len);
	write_gz(pz, b, len);
	check_idx_reader(p, b, 50, 784);
	check_idx_reader(pz, b, 50, 784);
	/* Truncated: uncompressed at open, gzip when the data run out. */
	t_write_file(p, b, len - 100);
	expect_open_err(p, ANN_E_BADINPUT, "vector 49: truncated");
	write_gz(pz, b, len - 100);
	ann_error e = {0};
	ann_vreader *r;
	ASSERT_OK(ann_vreader_open(pz, &r, &e));
	uint8_t *raw = malloc(50 * 784);
	ASSERT_ERR((int)ann_vreader_read_raw(r, raw, 50, &e), e, ANN_E_BADINPUT, "vector 49: truncated");
	ASSERT_TRUE(strstr(e.msg, pz) != NULL);
	ann_vreader_close(r);
	/* A corrupt gzip stream (flipped bytes in the deflate data). */
	write_gz(pz, b, len);
	uint8_t *gzb = t_read_file(pz, &len);
	for (size_t i = 20; i < 60 && i < len; i++)
		gzb[i] ^= 0x5a;
	t_write_file(pz, gzb, len);
	free(gzb);
	if (ann_vreader_open(pz, &r, &e) == ANN_OK) {
		ASSERT_ERR((int)ann_vreader_read_raw(r, raw, 50, &e), e, ANN_E_BADINPUT, pz);
		ann_vreader_close(r);
	} else {
		ASSERT_EQ(e.code, ANN_E_BADINPUT);
	}
	free(raw);
	free(b);
	/* Labels file (idx1 magic), zero images, zero columns. */
	b = make_idx(0x801, 3, 1, 1, &len);
	t_write_file(p, b, len);
	expect_open_err(p, ANN_E_BADINPUT, "magic 0x00000801, expected 0x00000803");
	free(b);
	b = make_idx(0x803, 0, 28, 28, &len);
	t_write_file(p, b, len);
	expect_open_err(p, ANN_E_BADINPUT, "header says 0 images");
	free(b);
	b = make_idx(0x803, 1, 28, 0, &len);
	write_gz(pz, b, len);
	expect_open_err(pz, ANN_E_BADINPUT, "28 x 0 pixels");
	free(b);
	t_write_file(pz, "", 0);
	expect_open_err(pz, ANN_E_BADINPUT, "empty file");
	free(p);
	free(pz);
}

/* The real Fashion-MNIST test images, if installed, against zlib read whole. */
static void test_fashion_mnist(void)
{
	t_current = "fashion_mnist";
	const char *p = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz";
	if (!file_exists(p)) {
		printf("fashion_mnist: %s absent, skipped\n", p);
		return;
	}
	size_t total = 16 + 10000 * 784;
	uint8_t *want = malloc(total + 1);
	gzFile g = gzopen(p, "rb");
	ASSERT_TRUE(g != NULL);
	ASSERT_EQ(gzread(g, want, (unsigned)total + 1), (int)total);
	gzclose(g);
	ann_error e = {0};
	ann_vreader *r;
	uint64_t t0 = ann_now_ns();
	ASSERT_OK(ann_vreader_open(p, &r, &e));
	ASSERT_EQ(ann_vreader_count(r), 10000);
	ASSERT_EQ(ann_vreader_dim(r), 784);
	ASSERT_EQ(ann_vreader_dtype(r), ANN_DTYPE_U8);
	float *f = malloc(1000 * 784 * sizeof(float));
	size_t done = 0;
	double sum = 0;
	while (done < 10000) {
		int64_t k = ann_vreader_read_f32(r, f, 1000, &e);
		ASSERT_EQ(k, 1000);
		for (size_t i = 0; i < 1000 * 784; i++) {
			ASSERT_TRUE(f[i] == (float)want[16 + done * 784 + i]);
			sum += f[i];
		}
		done += 1000;
	}
	double secs = (double)(ann_now_ns() - t0) / 1e9;
	ASSERT_EQ(ann_vreader_read_f32(r, f, 1000, &e), 0);
	ASSERT_OK(ann_vreader_seek(r, 9999, &e));
	ASSERT_EQ(ann_vreader_read_f32(r, f, 10, &e), 1);
	for (size_t i = 0; i < 784; i++)
		ASSERT_TRUE(f[i] == (float)want[16 + 9999 * 784 + i]);
	ann_vreader_close(r);
	printf("fashion_mnist: t10k 10000 x 784, mean pixel %.2f, read+check %.3f s\n", sum / (10000.0 * 784),
	       secs);
	free(f);
	free(want);
}

/* ---- ground truth ----------------------------------------------------------- */

static void test_gt(ann_rng *rng)
{
	t_current = "gt";
	uint32_t nq = 37, k = 10;
	int32_t *ids = malloc(nq * k * 4);
	float *ds = malloc(nq * k * 4);
	for (uint32_t i = 0; i < nq * k; i++) {
		ids[i] = (int32_t)ann_rng_below(rng, 1000000);
		ds[i] = (float)ann_rng_uniform(rng);
	}
	ids[5] = -1;
	ds[5] = INFINITY;
	char *p = t_path(dir, "gt.bin");
	ann_error e = {0};
	ASSERT_OK(ann_gt_write(p, nq, k, ids, ds, &e));
	assert_no_tmp();
	size_t len;
	uint8_t *b = t_read_file(p, &len);
	ASSERT_EQ(len, 8 + nq * k * 8);
	ASSERT_EQ(ann_ld32(b), nq);
	ASSERT_EQ(ann_ld32(b + 4), k);
	ASSERT_EQ((int32_t)ann_ld32(b + 8 + 4 * 13), ids[13]);
	ASSERT_TRUE(ann_ldf32(b + 8 + 4 * nq * k + 4 * 13) == ds[13]);
	uint32_t gq, gk;
	int32_t *gi;
	float *gd;
	ASSERT_OK(ann_gt_read(p, &gq, &gk, &gi, &gd, &e));
	ASSERT_EQ(gq, nq);
	ASSERT_EQ(gk, k);
	ASSERT_TRUE(memcmp(gi, ids, nq * k * 4) == 0);
	ASSERT_TRUE(memcmp(gd, ds, nq * k * 4) == 0);
	ann_free(gi);
	ann_free(gd);
	ASSERT_OK(ann_gt_read(p, &gq, &gk, &gi, NULL, &e));
	ASSERT_TRUE(memcmp(gi, ids, nq * k * 4) == 0);
	ann_free(gi);
	/* Ids-only big-ann layout. */
	t_write_file(p, b, 8 + nq * k * 4);
	ASSERT_OK(ann_gt_read(p, &gq, &gk, &gi, &gd, &e));
	ASSERT_TRUE(memcmp(gi, ids, nq * k * 4) == 0);
	ASSERT_TRUE(isnan(gd[0]));
	ann_free(gi);
	ann_free(gd);
	/* Size disagreeing with the header; bad header; bad id; NaN distance. */
	t_write_file(p, b, len - 4);
	gi = (int32_t *)1;
	ASSERT_ERR(ann_gt_read(p, &gq, &gk, &gi, &gd, &e), e, ANN_E_BADINPUT, "header says 37 queries x 10");
	ASSERT_TRUE(gi == NULL && gd == NULL);
	ASSERT_TRUE(strstr(e.msg, p) != NULL);
	uint8_t *b2 = malloc(len);
	memcpy(b2, b, len);
	ann_st32(b2 + 4, 0);
	t_write_file(p, b2, len);
	ASSERT_ERR(ann_gt_read(p, &gq, &gk, &gi, &gd, &e), e, ANN_E_BADINPUT, "expected positive");
	memcpy(b2, b, len);
	ann_st32(b2 + 8 + 4 * (3 * k + 4), (uint32_t)-7);
	t_write_file(p, b2, len);
	ASSERT_ERR(ann_gt_read(p, &gq, &gk, &gi, &gd, &e), e, ANN_E_BADINPUT, "query 3: id -7 at rank 4");
	memcpy(b2, b, len);
	ann_stf32(b2 + 8 + 4 * nq * k + 4 * (2 * k + 1), NAN);
	t_write_file(p, b2, len);
	ASSERT_ERR(ann_gt_read(p, &gq, &gk, &gi, &gd, &e), e, ANN_E_BADINPUT,
		   "query 2: distance at rank 1 is NaN");
	t_write_file(p, "", 0);
	ASSERT_ERR(ann_gt_read(p, &gq, &gk, &gi, &gd, &e), e, ANN_E_BADINPUT, "empty file");
	free(b2);
	free(b);
	/* An .ivecs file of ids. */
	char *pi = t_path(dir, "gt.ivecs");
	ann_vwriter *w;
	ASSERT_OK(ann_vwriter_open(pi, k, &w, &e));
	ASSERT_OK(ann_vwriter_write_raw(w, ids, nq, &e));
	ASSERT_OK(ann_vwriter_close(w, &e));
	ASSERT_OK(ann_gt_read(pi, &gq, &gk, &gi, &gd, &e));
	ASSERT_EQ(gq, nq);
	ASSERT_EQ(gk, k);
	ASSERT_TRUE(memcmp(gi, ids, nq * k * 4) == 0);
	ASSERT_TRUE(isnan(gd[nq * k - 1]));
	ann_free(gi);
	ann_free(gd);
	/* An id below -1 in an .ivecs file is refused as in the big-ann layout
	 * (found by tests/fuzz: the .ivecs path skipped the check). */
	ids[k + 1] = -16777216;
	ASSERT_OK(ann_vwriter_open(pi, k, &w, &e));
	ASSERT_OK(ann_vwriter_write_raw(w, ids, nq, &e));
	ASSERT_OK(ann_vwriter_close(w, &e));
	ASSERT_ERR(ann_gt_read(pi, &gq, &gk, &gi, &gd, &e), e, ANN_E_BADINPUT, "query 1: id -16777216 at rank 1");
	/* Misuse. */
	ASSERT_ERR(ann_gt_write(p, 0, k, ids, ds, &e), e, ANN_E_INVAL, "0 queries");
	ASSERT_ERR(ann_gt_write(p, nq, k, ids, NULL, &e), e, ANN_E_INVAL, "NULL");
	free(pi);
	free(p);
	free(ids);
	free(ds);
}

/* ---- generator -------------------------------------------------------------- */

/* A second implementation of the algorithm written from gen.c's header
 * comment alone (scalar, no blocking), the oracle for ann_gen_rows. */
typedef struct ref_model {
	uint32_t K, D;
	uint64_t *cum;
	float *mean, *s, *f;
	double *radius;
	ann_rng root[2];
} ref_model;

static int64_t ref_t(ann_rng *r)
{
	uint64_t v = ann_rng_next(r);
	return (int64_t)((v & 0xffff) + ((v >> 16) & 0xffff) + ((v >> 32) & 0xffff) + (v >> 48)) - 131070;
}

static double ref_u(ann_rng *r)
{
	return (double)(ann_rng_next(r) >> 40) / 16777216.0;
}

static float ref_q6(float x)
{
	uint32_t b;
	memcpy(&b, &x, 4);
	b = (b + 0x20000) & 0xfffc0000;
	memcpy(&x, &b, 4);
	return x;
}

static void ref_build(ref_model *m, uint64_t seed, uint32_t K, uint32_t D, float drift)
{
	const uint32_t R = 8;
	const double SIG2 = 1431655765.0, SIG = sqrt(SIG2);
	m->K = K;
	m->D = D;
	m->cum = malloc(K * 8);
	m->mean = malloc((size_t)K * D * 4);
	m->s = malloc((size_t)K * D * 4);
	m->f = malloc((size_t)K * R * D * 4);
	m->radius = malloc(K * 8);
	ann_rng master, M, DR;
	ann_rng_seed(&master, seed);
	ann_rng_fork(&master, 1, &M);
	ann_rng_fork(&master, 2, &DR);
	ann_rng_fork(&master, 3, &m->root[0]);
	ann_rng_fork(&master, 4, &m->root[1]);
	uint64_t acc = 0;
	for (uint32_t c = 0; c < K; c++) {
		int64_t a = ref_t(&M);
		int64_t b = ref_t(&M);
		acc += 143165577ull + (uint64_t)(a * a) + (uint64_t)(b * b);
		m->cum[c] = acc;
	}
	for (uint32_t c = 0; c < K; c++) {
		double S = 30.0 * (0.5 + ref_u(&M));
		for (uint32_t d = 0; d < D; d++) {
			double u = ref_u(&M), u3 = (u * u) * u;
			m->mean[c * D + d] = (float)(150.0 * (u3 * u3));
		}
		for (uint32_t d = 0; d < D; d++) {
			double a = 0.125 + 0.875 * ref_u(&M);
			m->s[c * D + d] = ref_q6((float)(((S * a) * a) / SIG));
		}
		for (uint32_t j = 0; j < R; j++)
			for (uint32_t d = 0; d < D; d++)
				m->f[((size_t)c * R + j) * D + d] =
					ref_q6((float)(((S * 0.375) * (double)ref_t(&M)) / SIG / SIG));
		double tr = 0;
		for (uint32_t d = 0; d < D; d++)
			tr += (double)m->s[c * D + d] * m->s[c * D + d];
		for (uint32_t i = 0; i < R * D; i++)
			tr += (double)m->f[(size_t)c * R * D + i] * m->f[(size_t)c * R * D + i];
		m->radius[c] = SIG * sqrt(tr);
	}
	if (drift > 0) {
		int64_t *t = malloc(D * 8);
		for (uint32_t c = 0; c < K; c++) {
			uint64_t n2 = 0;
			for (uint32_t d = 0; d < D; d++) {
				t[d] = ref_t(&DR);
				n2 += (uint64_t)(t[d] * t[d]);
			}
			double nrm = sqrt((double)n2);
			for (uint32_t d = 0; d < D; d++)
				m->mean[c * D + d] =
					(float)((double)m->mean[c * D + d] +
						(((double)drift * m->radius[c]) * (double)t[d]) / nrm);
		}
		free(t);
	}
}

static void ref_row(const ref_model *m, int set, uint64_t i, float *out, uint32_t *comp)
{
	const uint32_t R = 8, D = m->D;
	ann_rng root = m->root[set], v;
	ann_rng_fork(&root, i, &v);
	__extension__ typedef unsigned __int128 u128;
	uint64_t r = (uint64_t)(((u128)ann_rng_next(&v) * m->cum[m->K - 1]) >> 64);
	uint32_t c = 0;
	while (m->cum[c] <= r)
		c++;
	*comp = c;
	float w[8];
	for (uint32_t j = 0; j < R; j++)
		w[j] = (float)ref_t(&v);
	for (uint32_t d = 0; d < D; d++) {
		float z = (float)ref_t(&v);
		float x = m->mean[c * D + d] + z * m->s[c * D + d];
		for (uint32_t j = 0; j < R; j++)
			x = x + w[j] * m->f[((size_t)c * R + j) * D + d];
		float y = (x + 0x1.8p23f) - 0x1.8p23f;
		y = y < 0 ? 0 : y;
		y = y > 255 ? 255 : y;
		out[d] = y + 0.0f;
	}
}

static void ref_free(ref_model *m)
{
	free(m->cum);
	free(m->mean);
	free(m->s);
	free(m->f);
	free(m->radius);
}

static void test_gen_reference(void)
{
	t_current = "gen_reference";
	const struct {
		uint64_t seed;
		uint32_t K, D;
		float drift;
	} cfg[] = {{1, 16, 128, 0}, {t_seed, 5, 300, 0}, {99, 3, 7, 0.75f}, {t_seed + 1, 40, 33, 2.5f}};
	for (size_t ci = 0; ci < sizeof cfg / sizeof cfg[0]; ci++) {
		ann_gen_opts o;
		ann_gen_opts_init(&o);
		o.seed = cfg[ci].seed;
		o.clusters = cfg[ci].K;
		o.dim = cfg[ci].D;
		o.drift = cfg[ci].drift;
		ann_gen_model *m;
		ASSERT_OK(ann_gen_model_new(&o, &m, NULL));
		ref_model rm;
		ref_build(&rm, o.seed, o.clusters, o.dim, o.drift);
		ASSERT_EQ(ann_gen_model_clusters(m), o.clusters);
		ASSERT_EQ(ann_gen_model_dim(m), o.dim);
		double wsum = 0;
		for (uint32_t c = 0; c < o.clusters; c++) {
			ASSERT_TRUE(memcmp(ann_gen_model_mean(m, c), rm.mean + (size_t)c * o.dim,
					   o.dim * 4) == 0);
			ASSERT_TRUE(ann_gen_model_radius(m, c) == rm.radius[c]);
			wsum += ann_gen_model_weight(m, c);
		}
		ASSERT_NEAR(wsum, 1.0, 1e-12);
		size_t n = 200, D = o.dim;
		float *x = malloc(n * D * 4), *y = malloc(D * 4);
		uint32_t *comp = malloc(n * 4);
		for (int set = 0; set < 2; set++) {
			uint64_t first = set ? 12345 : 0;
			ann_gen_rows(m, (ann_gen_set)set, first, n, x, comp);
			for (size_t i = 0; i < n; i++) {
				uint32_t rc;
				ref_row(&rm, set, first + i, y, &rc);
				ASSERT_EQ(comp[i], rc);
				if (memcmp(x + i * D, y, D * 4) != 0)
					T_FAIL("config %zu set %d row %zu differs from the reference", ci,
					       set, i);
			}
		}
		free(x);
		free(y);
		free(comp);
		ref_free(&rm);
		ann_gen_model_free(m);
	}
}

static uint64_t fnv1a(const uint8_t *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x100000001b3ull;
	return h;
}

static void progress_cb(void *ctx, const char *phase, uint64_t done, uint64_t total)
{
	uint64_t *last = ctx;
	ASSERT_TRUE(done <= total);
	if (strcmp(phase, "gen") == 0)
		last[0] = done;
	else if (strcmp(phase, "gen-queries") == 0)
		last[1] = done;
	else
		T_FAIL("unexpected phase %s", phase);
}

static void test_gen_files(void)
{
	t_current = "gen_files";
	char *b1 = t_path(dir, "g1.u8bin"), *q1 = t_path(dir, "g1q.u8bin");
	char *b2 = t_path(dir, "g2.u8bin"), *q2 = t_path(dir, "g2q.fvecs");
	char *b3 = t_path(dir, "g3.fbin");
	ann_gen_opts o;
	ann_gen_opts_init(&o);
	ASSERT_EQ(o.dim, 128);
	o.n = 3000;
	o.nq = 100;
	o.seed = 42;
	uint64_t last[2] = {0, 0};
	o.progress = progress_cb;
	o.progress_ctx = last;
	ann_error e = {0};
	ASSERT_OK(ann_gen_write(&o, b1, q1, &e));
	ASSERT_EQ(last[0], 3000);
	ASSERT_EQ(last[1], 100);
	o.progress = NULL;
	ASSERT_OK(ann_gen_write(&o, b2, q2, &e));
	assert_no_tmp();
	size_t l1, l2, lq1;
	uint8_t *f1 = t_read_file(b1, &l1), *f2 = t_read_file(b2, &l2);
	ASSERT_EQ(l1, 8 + 3000 * 128);
	ASSERT_TRUE(l1 == l2 && memcmp(f1, f2, l1) == 0); /* same seed, same bytes */
	/* Pinned fingerprint: the generator's output must never change silently
	 * (it defines published data sets). */
	printf("gen: seed 42 3000 x 128 u8bin fnv1a %#llx\n", (unsigned long long)fnv1a(f1, l1));
	ASSERT_EQ(fnv1a(f1, l1), 0x0a63663cce81f6cbull);
	free(f2);

	/* Values are integers in 0..255 and the file equals ann_gen_rows. */
	ann_gen_model *m;
	ASSERT_OK(ann_gen_model_new(&o, &m, &e));
	ASSERT_EQ(ann_gen_model_clusters(m), 16);
	float *x = malloc(3000 * 128 * 4), *q = malloc(100 * 128 * 4), *qf = malloc(100 * 128 * 4);
	ann_gen_rows(m, ANN_GEN_BASE, 0, 3000, x, NULL);
	ann_gen_rows(m, ANN_GEN_QUERY, 0, 100, q, NULL);
	double sum = 0;
	size_t zeros = 0;
	for (size_t i = 0; i < 3000 * 128; i++) {
		ASSERT_TRUE(x[i] >= 0 && x[i] <= 255 && x[i] == floorf(x[i]));
		ASSERT_EQ(f1[8 + i], (int)x[i]);
		sum += x[i];
		zeros += x[i] == 0;
	}
	printf("gen: mean value %.2f, zeros %.1f%%\n", sum / (3000 * 128),
	       100.0 * (double)zeros / (3000 * 128));
	ASSERT_TRUE(sum / (3000 * 128) > 10 && sum / (3000 * 128) < 60);
	uint8_t *fq = t_read_file(q1, &lq1);
	ASSERT_EQ(lq1, 8 + 100 * 128);
	for (size_t i = 0; i < 100 * 128; i++)
		ASSERT_EQ(fq[8 + i], (int)q[i]);
	free(fq);
	/* The .fvecs query file holds the same values. */
	ann_vreader *r;
	ASSERT_OK(ann_vreader_open(q2, &r, &e));
	ASSERT_EQ(ann_vreader_read_f32(r, qf, 100, &e), 100);
	ASSERT_TRUE(memcmp(qf, q, 100 * 128 * 4) == 0);
	ann_vreader_close(r);
	/* Prefix stability: any range equals the matching rows. */
	float *mid = malloc(10 * 128 * 4);
	ann_gen_rows(m, ANN_GEN_BASE, 1234, 10, mid, NULL);
	ASSERT_TRUE(memcmp(mid, x + 1234 * 128, 10 * 128 * 4) == 0);
	free(mid);
	/* Queries are not base rows. */
	for (size_t i = 0; i < 100; i++)
		for (size_t j = 0; j < 3000; j++)
			ASSERT_TRUE(memcmp(q + i * 128, x + j * 128, 128 * 4) != 0);
	ann_gen_model_free(m);

	/* A different seed gives different data; an fbin base equals the u8bin. */
	o.seed = 43;
	o.nq = 0;
	ASSERT_OK(ann_gen_write(&o, b2, NULL, &e));
	f2 = t_read_file(b2, &l2);
	ASSERT_EQ(l2, l1);
	size_t same = 0;
	for (size_t i = 8; i < l1; i++)
		same += f1[i] == f2[i];
	ASSERT_LT(same, (l1 - 8) / 2);
	free(f2);
	o.seed = 42;
	ASSERT_OK(ann_gen_write(&o, b3, NULL, &e));
	ASSERT_OK(ann_vreader_open(b3, &r, &e));
	ASSERT_EQ(ann_vreader_count(r), 3000);
	float *xf = malloc(3000 * 128 * 4);
	ASSERT_EQ(ann_vreader_read_f32(r, xf, 3000, &e), 3000);
	ASSERT_TRUE(memcmp(xf, x, 3000 * 128 * 4) == 0);
	ann_vreader_close(r);
	free(xf);
	free(x);
	free(q);
	free(qf);
	free(f1);

	/* Option errors. */
	ann_gen_opts_init(&o);
	o.n = 10;
	o.dim = 0;
	ASSERT_ERR(ann_gen_write(&o, b1, NULL, &e), e, ANN_E_INVAL, "dimension 0");
	o.dim = 16;
	o.clusters = 5000;
	ASSERT_ERR(ann_gen_write(&o, b1, NULL, &e), e, ANN_E_INVAL, "5000 clusters");
	o.clusters = 0;
	o.drift = -1;
	ASSERT_ERR(ann_gen_write(&o, b1, NULL, &e), e, ANN_E_INVAL, "drift");
	o.drift = NAN;
	ASSERT_ERR(ann_gen_write(&o, b1, NULL, &e), e, ANN_E_INVAL, "drift");
	o.drift = 1e9f;
	ASSERT_ERR(ann_gen_write(&o, b1, NULL, &e), e, ANN_E_INVAL, "too far");
	o.drift = 0;
	o.nq = 5;
	ASSERT_ERR(ann_gen_write(&o, b1, NULL, &e), e, ANN_E_INVAL, "query path");
	o.nq = 0;
	o.n = 0;
	ASSERT_ERR(ann_gen_write(&o, b1, NULL, &e), e, ANN_E_INVAL, "n = 0");
	o.n = 10;
	char *bad = t_path(dir, "g.txt");
	ASSERT_ERR(ann_gen_write(&o, bad, NULL, &e), e, ANN_E_INVAL, "g.txt");
	o.dim = 65536;
	o.clusters = 4096;
	ASSERT_ERR(ann_gen_write(&o, b1, NULL, &e), e, ANN_E_INVAL, "model");
	ASSERT_EQ(ann_gen_default_clusters(1000), 16);
	ASSERT_EQ(ann_gen_default_clusters(400000), 100);
	ASSERT_EQ(ann_gen_default_clusters(1ull << 40), 4096);
	free(bad);
	free(b1);
	free(q1);
	free(b2);
	free(q2);
	free(b3);
}

/* The mixture clusters: with 16 components in 64 dimensions, the nearest
 * model mean is almost always the row's true component, rows lie much nearer
 * their own mean than any other, and the partition explains a large share of
 * the variance (about half; a few heavy components keep it from more). */
static void test_gen_clusters(void)
{
	t_current = "gen_clusters";
	ann_gen_opts o;
	ann_gen_opts_init(&o);
	o.seed = t_seed;
	o.clusters = 16;
	o.dim = 64;
	const size_t n = 4000, D = 64, K = 16;
	ann_gen_model *m;
	ASSERT_OK(ann_gen_model_new(&o, &m, NULL));
	float *x = malloc(n * D * 4);
	uint32_t *comp = malloc(n * 4);
	ann_gen_rows(m, ANN_GEN_BASE, 0, n, x, comp);
	/* Clipped model means approximate the cluster centres. */
	double gm[64] = {0}, cm[16][64] = {{0}};
	size_t cnt[16] = {0}, agree = 0, pred[4000];
	double own = 0, other = 0;
	for (size_t i = 0; i < n; i++) {
		double best = INFINITY, d2[16];
		for (size_t c = 0; c < K; c++) {
			const float *mu = ann_gen_model_mean(m, (uint32_t)c);
			double s = 0;
			for (size_t d = 0; d < D; d++) {
				double t = x[i * D + d] - (mu[d] < 0 ? 0 : mu[d]);
				s += t * t;
			}
			d2[c] = s;
			if (s < best) {
				best = s;
				pred[i] = c;
			}
		}
		double near_other = INFINITY;
		for (size_t c = 0; c < K; c++)
			if (c != comp[i])
				near_other = fmin(near_other, d2[c]);
		own += sqrt(d2[comp[i]]);
		other += sqrt(near_other);
		agree += pred[i] == comp[i];
		cnt[pred[i]]++;
		for (size_t d = 0; d < D; d++) {
			gm[d] += x[i * D + d];
			cm[pred[i]][d] += x[i * D + d];
		}
	}
	for (size_t d = 0; d < D; d++) {
		gm[d] /= (double)n;
		for (size_t c = 0; c < K; c++)
			cm[c][d] /= cnt[c] ? (double)cnt[c] : 1.0;
	}
	double tot = 0, within = 0;
	for (size_t i = 0; i < n; i++)
		for (size_t d = 0; d < D; d++) {
			double a = x[i * D + d] - gm[d], b = x[i * D + d] - cm[pred[i]][d];
			tot += a * a;
			within += b * b;
		}
	double explained = 1 - within / tot;
	printf("gen_clusters: nearest mean matches the true component for %.1f%%, explains %.1f%% of "
	       "variance; "
	       "distance to own mean / to nearest other %.2f\n",
	       100.0 * (double)agree / (double)n, 100.0 * explained, own / other);
	ASSERT_LT(0.95 * (double)n, (double)agree);
	ASSERT_LT(0.35, explained);
	ASSERT_LT(own / other, 0.8);
	/* Component frequencies follow the weights (binomial, 6 sigma). */
	size_t tc[16] = {0};
	for (size_t i = 0; i < n; i++)
		tc[comp[i]]++;
	for (size_t c = 0; c < K; c++) {
		double w = ann_gen_model_weight(m, (uint32_t)c), sd = sqrt((double)n * w * (1 - w));
		ASSERT_LT(fabs((double)tc[c] - (double)n * w), 6 * sd + 1);
	}
	/* Anisotropy and correlation: within one component the per-axis spread
	 * varies widely, and some axis pairs are strongly correlated. */
	size_t c0 = comp[0], n0 = 0;
	double mu[64] = {0}, var[64] = {0};
	for (size_t i = 0; i < n; i++)
		if (comp[i] == c0) {
			n0++;
			for (size_t d = 0; d < D; d++)
				mu[d] += x[i * D + d];
		}
	for (size_t d = 0; d < D; d++)
		mu[d] /= (double)n0;
	double maxcorr = 0, vmin = INFINITY, vmax = 0;
	for (size_t i = 0; i < n; i++)
		if (comp[i] == c0)
			for (size_t d = 0; d < D; d++)
				var[d] += (x[i * D + d] - mu[d]) * (x[i * D + d] - mu[d]);
	for (size_t a = 0; a < D; a++) {
		if (mu[a] > 30) {
			vmin = fmin(vmin, var[a]);
			vmax = fmax(vmax, var[a]);
		}
		for (size_t b = a + 1; b < D; b++) {
			if (mu[a] < 30 || mu[b] < 30) /* skip axes flattened by clipping */
				continue;
			double cov = 0;
			for (size_t i = 0; i < n; i++)
				if (comp[i] == c0)
					cov += (x[i * D + a] - mu[a]) * (x[i * D + b] - mu[b]);
			maxcorr = fmax(maxcorr, fabs(cov) / sqrt(var[a] * var[b]));
		}
	}
	printf("gen_clusters: component %zu: %zu rows, axis variance ratio %.1f, max |corr| %.2f\n", c0, n0,
	       vmax / vmin, maxcorr);
	ASSERT_LT(1.5, vmax / vmin);
	ASSERT_LT(0.3, maxcorr);
	free(x);
	free(comp);
	ann_gen_model_free(m);
}

/* Drift moves every mean by drift * radius and changes nothing else. */
static void test_gen_drift(void)
{
	t_current = "gen_drift";
	ann_gen_opts o;
	ann_gen_opts_init(&o);
	o.seed = t_seed;
	o.clusters = 8;
	o.dim = 96;
	ann_gen_model *m0, *m1;
	ASSERT_OK(ann_gen_model_new(&o, &m0, NULL));
	o.drift = 0.5f;
	ASSERT_OK(ann_gen_model_new(&o, &m1, NULL));
	for (uint32_t c = 0; c < 8; c++) {
		const float *a = ann_gen_model_mean(m0, c), *b = ann_gen_model_mean(m1, c);
		double s = 0;
		for (size_t d = 0; d < 96; d++)
			s += ((double)b[d] - a[d]) * ((double)b[d] - a[d]);
		ASSERT_NEAR(sqrt(s), 0.5 * ann_gen_model_radius(m0, c), 1e-4);
		ASSERT_TRUE(ann_gen_model_radius(m0, c) == ann_gen_model_radius(m1, c));
		ASSERT_TRUE(ann_gen_model_weight(m0, c) == ann_gen_model_weight(m1, c));
	}
	/* Same component sequence; the data's per-component means moved. */
	const size_t n = 2000, D = 96;
	float *x0 = malloc(n * D * 4), *x1 = malloc(n * D * 4);
	uint32_t *c0 = malloc(n * 4), *c1 = malloc(n * 4);
	ann_gen_rows(m0, ANN_GEN_BASE, 0, n, x0, c0);
	ann_gen_rows(m1, ANN_GEN_BASE, 0, n, x1, c1);
	ASSERT_TRUE(memcmp(c0, c1, n * 4) == 0);
	double shift = 0;
	size_t nc = 0;
	for (size_t d = 0; d < D; d++) {
		double s0 = 0, s1 = 0;
		for (size_t i = 0; i < n; i++)
			if (c0[i] == c0[0]) {
				s0 += x0[i * D + d];
				s1 += x1[i * D + d];
				nc += d == 0;
			}
		shift += (s1 - s0) * (s1 - s0);
	}
	shift = sqrt(shift) / (double)nc;
	printf("gen_drift: component %u empirical mean moved %.1f (radius %.1f, drift 0.5)\n", c0[0], shift,
	       ann_gen_model_radius(m0, c0[0]));
	ASSERT_LT(0.1 * ann_gen_model_radius(m0, c0[0]), shift);
	free(x0);
	free(x1);
	free(c0);
	free(c1);
	ann_gen_model_free(m0);
	ann_gen_model_free(m1);
}

/* ---- throughput (printed, never asserted) ------------------------------------ */

static void test_throughput(void)
{
	t_current = "throughput";
	char *p = t_path(dir, "tp.u8bin");
	ann_gen_opts o;
	ann_gen_opts_init(&o);
	o.n = 200000;
	ann_error e = {0};
	uint64_t t0 = ann_now_ns();
	ASSERT_OK(ann_gen_write(&o, p, NULL, &e));
	double gs = (double)(ann_now_ns() - t0) / 1e9;
	ann_vreader *r;
	float *f = malloc((size_t)8192 * 128 * 4);
	t0 = ann_now_ns();
	ASSERT_OK(ann_vreader_open(p, &r, &e));
	int64_t k, tot = 0;
	while ((k = ann_vreader_read_f32(r, f, 8192, &e)) > 0)
		tot += k;
	ASSERT_EQ(tot, 200000);
	ann_vreader_close(r);
	double rs = (double)(ann_now_ns() - t0) / 1e9;
	printf("throughput: gen 200000 x 128 u8bin %.0f vectors/s (%.1f MB/s); read_f32 %.0f vectors/s "
	       "(%.0f MB/s of floats)\n",
	       2e5 / gs, 2e5 * 128 / gs / 1e6, 2e5 / rs, 2e5 * 512 / rs / 1e6);
	free(f);
	unlink(p);
	free(p);
}

/* Issue 13 D6 and D11: size products that wrap, and files the writer must
 * not produce because no reader accepts them. */
static void test_hostile_sizes(void)
{
	t_current = "hostile sizes";
	ann_error e = {0};
	char *p = t_path(dir, "wrap.bin");
	/* 8 + n * k * 8 wraps to 537,560 bytes (mod 2^64) for these. */
	uint32_t n = 1073764994u, k = 2147437309u;
	uint64_t wrapped = 8 + (uint64_t)n * k * 8;
	ASSERT_EQ(wrapped, 537560);
	uint8_t *b = calloc(1, 537560);
	ann_st32(b, n);
	ann_st32(b + 4, k);
	t_write_file(p, b, 537560);
	free(b);
	uint32_t gq, gk;
	int32_t *gi;
	float *gd;
	ASSERT_ERR(ann_gt_read(p, &gq, &gk, &gi, &gd, &e), e, ANN_E_BADINPUT, "but the file has 537560 bytes");
	ASSERT_TRUE(strstr(e.msg, "wrap.bin") != NULL);
	ASSERT_TRUE(gi == NULL && gd == NULL);
	free(p);

	/* A writer closed without a vector fails and leaves nothing: readers
	 * refuse a file of n = 0, so the writer must not make one. */
	const char *names[] = {"empty.u8bin", "empty.fvecs", "empty.ibin"};
	for (int i = 0; i < 3; i++) {
		p = t_path(dir, names[i]);
		ann_vwriter *w;
		ASSERT_OK(ann_vwriter_open(p, 8, &w, &e));
		ASSERT_ERR(ann_vwriter_close(w, &e), e, ANN_E_INVAL, "no vector was written");
		ASSERT_TRUE(!file_exists(p));
		free(p);
	}
	assert_no_tmp();

	/* Up-front size checks of gen: the format's count limit, then free space. */
	p = t_path(dir, "huge.u8bin");
	ASSERT_ERR(ann_vfile_check_size(p, 3000000000ull, 128, &e), e, ANN_E_INVAL, "holds at most 2147483647");
	ann_gen_opts o;
	ann_gen_opts_init(&o);
	o.n = 3000000000ull;
	ASSERT_ERR(ann_gen_write(&o, p, NULL, &e), e, ANN_E_INVAL, "holds at most");
	ASSERT_TRUE(!file_exists(p));
	free(p);
	p = t_path(dir, "huge.fvecs");
	ASSERT_ERR(ann_vfile_check_size(p, 2000000000ull, 65536, &e), e, ANN_E_IO, "bytes free; nothing was written");
	ASSERT_ERR(ann_vfile_check_size(p, UINT64_MAX / 2, 65536, &e), e, ANN_E_INVAL, "overflow");
	ASSERT_OK(ann_vfile_check_size(p, 10, 16, &e));
	free(p);
	assert_no_tmp();
}

/* ---- real profile ------------------------------------------------------------
 * A second implementation of the real profile from gen.c's header comment
 * alone (int64 and 128-bit integers only, no doubles), the oracle for
 * ann_gen_rows with ANN_GEN_REAL. */
__extension__ typedef unsigned __int128 ref_u128;

typedef struct ref_real {
	uint32_t K, D;
	uint64_t *cum, *qcum, norm;
	int64_t *centre, *load, *bias;
	ann_rng root[2];
} ref_real;

static int64_t ref_a(ann_rng *r)
{
	int64_t t = ref_t(r);
	return 128 + ((t < 0 ? -t : t) * 443) / 65536;
}

static uint64_t ref_isqrt(ref_u128 x)
{
	uint64_t lo = 0, hi = (uint64_t)1 << 63; /* largest r with r * r <= x, by bisection */
	while (lo < hi) {
		uint64_t mid = lo + (hi - lo + 1) / 2;
		if ((ref_u128)mid * mid <= x)
			lo = mid;
		else
			hi = mid - 1;
	}
	return lo;
}

static void ref_real_build(ref_real *m, uint64_t seed, uint32_t K, uint32_t D)
{
	m->K = K;
	m->D = D;
	m->cum = malloc(K * 8);
	m->qcum = malloc(K * 8);
	m->centre = malloc((size_t)K * 48 * 8);
	m->load = malloc((size_t)D * 48 * 8);
	m->bias = malloc((size_t)D * 8);
	ann_rng master, M, DR;
	ann_rng_seed(&master, seed);
	ann_rng_fork(&master, 1, &M);
	ann_rng_fork(&master, 2, &DR);
	ann_rng_fork(&master, 3, &m->root[0]);
	ann_rng_fork(&master, 4, &m->root[1]);
	for (int set = 0; set < 2; set++) {
		uint64_t acc = 0, *cum = set ? m->qcum : m->cum;
		for (uint32_t c = 0; c < K; c++) {
			int64_t a = ref_t(&M), b = ref_t(&M);
			acc += 143165577ull + (uint64_t)(a * a) + (uint64_t)(b * b);
			cum[c] = acc;
		}
	}
	for (size_t i = 0; i < (size_t)K * 48; i++)
		m->centre[i] = ref_t(&M);
	for (size_t i = 0; i < (size_t)D * 48; i++)
		m->load[i] = ref_t(&M) / 3547;
	for (uint32_t d = 0; d < D; d++)
		m->bias[d] = 1450000000 + 9472 * ref_t(&M);
	m->norm = ref_isqrt((ref_u128)1200 * 1200 * D / 128);
}

static void ref_real_row(const ref_real *m, int set, uint64_t i, float *out, uint32_t *comp)
{
	const uint32_t D = m->D;
	ann_rng root = m->root[set], v;
	ann_rng_fork(&root, i, &v);
	const uint64_t *cum = set ? m->qcum : m->cum;
	uint64_t r = (uint64_t)(((ref_u128)ann_rng_next(&v) * cum[m->K - 1]) >> 64);
	uint32_t c = 0;
	while (cum[c] <= r)
		c++;
	*comp = c;
	int64_t s = ref_a(&v), h[48];
	for (int l = 0; l < 48; l++)
		h[l] = m->centre[c * 48 + l] * 256 + s * ref_t(&v);
	if (set)
		for (int l = 0; l < 48; l++)
			h[l] += 384 * ref_t(&v);
	uint64_t *q = malloc(D * 8);
	ref_u128 Q = 0;
	for (uint32_t d = 0; d < D; d++) {
		int64_t t = ref_t(&v), a = ref_a(&v);
		int64_t x = m->bias[d] + t * a * 30;
		for (int l = 0; l < 48; l++)
			x += m->load[d * 48 + l] * h[l];
		q[d] = x > 0 ? (uint64_t)x >> 15 : 0;
		Q += (ref_u128)q[d] * q[d];
	}
	uint64_t rt = ref_isqrt(Q), mult = rt ? (m->norm << 32) / rt : 0;
	for (uint32_t d = 0; d < D; d++) {
		uint64_t y = (q[d] * mult + (1ull << 31)) >> 32;
		if (y > 180)
			y = 180 + (y - 180) * 3 / 10;
		out[d] = (float)(y > 255 ? 255 : y);
	}
	free(q);
}

static void test_gen_real_reference(void)
{
	t_current = "gen_real_reference";
	const struct {
		uint64_t seed;
		uint32_t K, D;
	} cfg[] = {{1, 64, 128, }, {t_seed, 5, 300}, {99, 1, 7}, {t_seed + 1, 700, 33}};
	for (size_t ci = 0; ci < sizeof cfg / sizeof cfg[0]; ci++) {
		ann_gen_opts o;
		ann_gen_opts_init(&o);
		o.profile = ANN_GEN_REAL;
		o.seed = cfg[ci].seed;
		o.clusters = ci == 0 ? 0 : cfg[ci].K; /* 0: the real profile's default, 64 */
		o.dim = cfg[ci].D;
		ann_gen_model *m;
		ASSERT_OK(ann_gen_model_new(&o, &m, NULL));
		ASSERT_EQ(ann_gen_model_profile(m), ANN_GEN_REAL);
		ASSERT_EQ(ann_gen_model_clusters(m), cfg[ci].K);
		ASSERT_TRUE(ann_gen_model_mean(m, 0) == NULL);
		ref_real rm;
		ref_real_build(&rm, o.seed, cfg[ci].K, o.dim);
		size_t n = 200, D = o.dim;
		float *x = malloc(n * D * 4), *y = malloc(D * 4);
		uint32_t *comp = malloc(n * 4);
		for (int set = 0; set < 2; set++) {
			uint64_t first = set ? 777 : 0;
			ann_gen_rows(m, (ann_gen_set)set, first, n, x, comp);
			for (size_t i = 0; i < n; i++) {
				uint32_t rc;
				ref_real_row(&rm, set, first + i, y, &rc);
				ASSERT_EQ(comp[i], rc);
				if (memcmp(x + i * D, y, D * 4) != 0)
					T_FAIL("real config %zu set %d row %zu differs from the reference", ci,
					       set, i);
			}
		}
		free(x);
		free(y);
		free(comp);
		free(rm.cum);
		free(rm.qcum);
		free(rm.centre);
		free(rm.load);
		free(rm.bias);
		ann_gen_model_free(m);
	}
	/* The real profile refuses drift, and profiles other than easy and real. */
	ann_gen_opts o;
	ann_gen_opts_init(&o);
	o.n = 10;
	o.profile = ANN_GEN_REAL;
	o.drift = 0.5f;
	ann_error e = {0};
	ann_gen_model *m = NULL;
	ASSERT_ERR(ann_gen_model_new(&o, &m, &e), e, ANN_E_INVAL, "real profile");
	o.drift = 0;
	o.profile = (ann_gen_profile)7;
	ASSERT_ERR(ann_gen_model_new(&o, &m, &e), e, ANN_E_INVAL, "profile 7");
	ASSERT_EQ(ann_gen_profile_parse("easy"), ANN_GEN_EASY);
	ASSERT_EQ(ann_gen_profile_parse("real"), ANN_GEN_REAL);
	ASSERT_EQ(ann_gen_profile_parse("Real"), -1);
	ASSERT_EQ(ann_gen_profile_parse(NULL), -1);
}

static double l2sq(const float *a, const float *b, size_t d)
{
	double s = 0;
	for (size_t i = 0; i < d; i++)
		s += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
	return s;
}

/* The statistics the real profile is calibrated for, at a small scale, with
 * margins that the easy profile fails (checked below, so the test can fail):
 * a partition-like block (the 340 base rows nearest a base row, as a k-means
 * partition holds neighbours) compresses with zstd to >= 0.85 of raw, and
 * queries lie farther from their nearest base row than held-out base-like
 * rows (rows n.. of the base stream) lie from theirs. */
static void gen_stats(ann_gen_profile prof, double *zratio, double *qnn, double *bnn)
{
	const size_t n = 20000, D = 128, np = 100, blk = 340;
	ann_gen_opts o;
	ann_gen_opts_init(&o);
	o.profile = prof;
	o.seed = t_seed;
	o.clusters = prof == ANN_GEN_EASY ? ann_gen_default_clusters(1000000) : 0; /* the 1M set's */
	ann_gen_model *m;
	ASSERT_OK(ann_gen_model_new(&o, &m, NULL));
	float *x = malloc((n + np) * D * 4), *q = malloc(np * D * 4);
	ann_gen_rows(m, ANN_GEN_BASE, 0, n + np, x, NULL);
	ann_gen_rows(m, ANN_GEN_QUERY, 0, np, q, NULL);
	/* nearest-neighbour distances: queries, and held-out base rows n..n+np-1 */
	double sq = 0, sb = 0;
	for (size_t i = 0; i < np; i++) {
		double bq = INFINITY, bb = INFINITY;
		for (size_t j = 0; j < n; j++) {
			bq = ANN_MIN(bq, l2sq(q + i * D, x + j * D, D));
			bb = ANN_MIN(bb, l2sq(x + (n + i) * D, x + j * D, D));
		}
		sq += sqrt(bq);
		sb += sqrt(bb);
	}
	*qnn = sq / np;
	*bnn = sb / np;
	/* a block: the blk rows nearest row 0, by partial selection on distances */
	double *dist = malloc(n * sizeof *dist);
	size_t *idx = malloc(n * sizeof *idx);
	for (size_t j = 0; j < n; j++) {
		dist[j] = l2sq(x, x + j * D, D);
		idx[j] = j;
	}
	for (size_t a = 0; a < blk; a++)
		for (size_t b = a + 1; b < n; b++)
			if (dist[idx[b]] < dist[idx[a]]) {
				size_t t = idx[a];
				idx[a] = idx[b];
				idx[b] = t;
			}
	uint8_t *raw = malloc(blk * D);
	for (size_t a = 0; a < blk; a++)
		for (size_t d = 0; d < D; d++)
			raw[a * D + d] = (uint8_t)x[idx[a] * D + d];
	size_t cap = ZSTD_compressBound(blk * D);
	void *z = malloc(cap);
	size_t zn = ZSTD_compress(z, cap, raw, blk * D, 3);
	ASSERT_TRUE(!ZSTD_isError(zn));
	*zratio = (double)zn / (double)(blk * D);
	free(z);
	free(raw);
	free(dist);
	free(idx);
	free(x);
	free(q);
	ann_gen_model_free(m);
}

static void test_gen_real_stats(void)
{
	t_current = "gen_real_stats";
	double zr, qnn, bnn, ezr, eqnn, ebnn;
	gen_stats(ANN_GEN_REAL, &zr, &qnn, &bnn);
	gen_stats(ANN_GEN_EASY, &ezr, &eqnn, &ebnn);
	fprintf(stderr, "gen_real_stats: real zstd %.3f, query NN %.1f vs base NN %.1f; "
			"easy zstd %.3f, query NN %.1f vs base NN %.1f\n",
		zr, qnn, bnn, ezr, eqnn, ebnn);
	ASSERT_TRUE(zr >= 0.85);
	ASSERT_TRUE(qnn > 1.05 * bnn);
	/* The block check discriminates: the easy profile compresses well below
	 * 0.85. (Its queries are base-like: query NN / base NN is 1 +- a few %.) */
	ASSERT_TRUE(ezr < 0.85);
}

int main(void)
{
	ann_rng rng;
	t_init("test_vecio", &rng);
	dir = t_tmpdir();
	int64_t live = ann_mem_live_bytes();
	test_formats();
	test_roundtrip(&rng);
	test_write_conversion();
	test_writer_io_error();
	test_bad_bin();
	test_bad_vecs();
	test_idx();
	test_fashion_mnist();
	test_gt(&rng);
	test_hostile_sizes();
	test_gen_reference();
	test_gen_files();
	test_gen_clusters();
	test_gen_drift();
	test_gen_real_reference();
	test_gen_real_stats();
	test_throughput();
	ASSERT_EQ(ann_mem_live_bytes(), live);
	t_rmtree(dir);
	free(dir);
	printf("test_vecio: all passed\n");
	return 0;
}
