/* SPDX-License-Identifier: MIT */
/*
 * test_block.c: the block codec against naive references: F16 conversion against the
 * compiler's _Float16, round trips of every encoding x shuffle x codec x dictionary on random
 * and SIFT-like data for dims 1..20, 128, 784 and counts 0, 1, many; padded sizes for both
 * stores; every single-bit flip, truncation and random garbage must be an error; version
 * refusal and forward-compatible minors; input validation; allocation failure at every site.
 */
#include <float.h>
#include <xxhash.h>

#include "block.h"
#include "testutil.h"

/* ---- helpers ------------------------------------------------------------------------------ */

static const ann_block_encoding all_enc[] = { ANN_BLOCK_F32, ANN_BLOCK_F16, ANN_BLOCK_U8, ANN_BLOCK_I8,
	                                      ANN_BLOCK_SQ8 };

static double in_elem(const void *v, ann_dtype t, size_t i)
{
	if (t == ANN_DTYPE_F32)
		return ((const float *)v)[i];
	if (t == ANN_DTYPE_U8)
		return ((const uint8_t *)v)[i];
	return ((const int8_t *)v)[i];
}

/* Recomputes the header checksum (FORMAT.md: XXH64 of [0, header_bytes - 8), seed 0) when
 * the header size field points inside the buffer of len bytes. */
static void fix_header_n(uint8_t *b, size_t len)
{
	size_t hdr = ann_ld16(b + 8);
	if (hdr >= 16 && hdr <= len)
		ann_st64(b + hdr - 8, XXH64(b, hdr - 8, 0));
}
#define fix_header(b) fix_header_n((b), 80)

/* Recomputes the payload checksum, then the header checksum. */
static void fix_payload(uint8_t *b)
{
	size_t hdr = ann_ld16(b + 8);
	uint64_t stored = ann_ld64(b + 40);
	ann_st64(b + 64, XXH64(b + hdr, (size_t)stored, 0));
	fix_header(b);
}

/* Stable order of the pairs by id: the reference for the codec's sort. */
static size_t *stable_order(const int64_t *ids, size_t n)
{
	size_t *o = malloc((n ? n : 1) * sizeof *o);
	for (size_t i = 0; i < n; i++) {
		size_t k = i;
		while (k > 0 && ids[o[k - 1]] > ids[i]) {
			o[k] = o[k - 1];
			k--;
		}
		o[k] = i;
	}
	return o;
}

#ifdef __FLT16_MAX__
#define HAVE_F16_ORACLE 1
static uint16_t oracle_f32_to_f16(float f)
{
	__extension__ _Float16 h = (_Float16)f;
	uint16_t u;
	memcpy(&u, &h, 2);
	return u;
}
static float oracle_f16_to_f32(uint16_t u)
{
	__extension__ _Float16 h;
	memcpy(&h, &u, 2);
	return (float)h;
}
#else
#define HAVE_F16_ORACLE 0
#endif

/* Vectors with integer values 0..255 drawn from a Gaussian mixture (SIFT-like). */
static void gen_sift(ann_rng *rng, float *x, size_t count, uint32_t dim)
{
	enum { K = 4 };
	float *cent = malloc(sizeof(float) * K * dim);
	for (size_t i = 0; i < (size_t)K * dim; i++)
		cent[i] = (float)(-30.0 * log(1.0 - ann_rng_uniform(rng)));
	for (size_t i = 0; i < count; i++) {
		size_t c = ann_rng_below(rng, K);
		for (uint32_t j = 0; j < dim; j++) {
			double v = floor(cent[c * dim + j] + 12.0 * ann_rng_normal(rng) + 0.5);
			x[i * dim + j] = (float)(v < 0 ? 0 : v > 255 ? 255 : v);
		}
	}
	free(cent);
}

typedef struct tcase {
	uint32_t dim;
	size_t count;
	int64_t *ids;
	void *vecs;
	ann_dtype vt;
} tcase;

/* Input for encoding enc: SIFT-like (sift) or random values of the widest kind enc accepts. */
static void make_case(ann_rng *rng, tcase *c, ann_block_encoding enc, bool sift, uint32_t dim, size_t count)
{
	c->dim = dim;
	c->count = count;
	c->ids = malloc((count ? count : 1) * 8);
	size_t n = count * dim;
	float *f = malloc((n ? n : 1) * sizeof(float));
	/* Ids: a scattered subset of a large range, some negative, with a few duplicates. */
	for (size_t i = 0; i < count; i++) {
		c->ids[i] = (int64_t)ann_rng_below(rng, 1u << 20) - (1 << 18);
		if (i > 0 && ann_rng_below(rng, 10) == 0)
			c->ids[i] = c->ids[ann_rng_below(rng, i)];
	}
	if (sift)
		gen_sift(rng, f, count, dim);
	c->vt = ANN_DTYPE_F32;
	c->vecs = f;
	switch (enc) {
	case ANN_BLOCK_F32:
	case ANN_BLOCK_SQ8:
		if (!sift)
			for (size_t i = 0; i < n; i++)
				f[i] = (float)((ann_rng_uniform(rng) - 0.5) * 2000.0 *
				               pow(10.0, -(double)ann_rng_below(rng, 4)));
		break;
	case ANN_BLOCK_F16:
		if (!sift)
			for (size_t i = 0; i < n; i++)
				f[i] = (float)((ann_rng_uniform(rng) - 0.5) *
				               pow(10.0, (double)ann_rng_below(rng, 14) - 9.0));
		break;
	case ANN_BLOCK_U8: {
		/* Alternate between u8 input and integral floats. */
		bool raw = ann_rng_below(rng, 2);
		uint8_t *u = malloc(n ? n : 1);
		for (size_t i = 0; i < n; i++)
			u[i] = sift ? (uint8_t)f[i] : (uint8_t)ann_rng_below(rng, 256);
		if (raw) {
			free(f);
			c->vecs = u;
			c->vt = ANN_DTYPE_U8;
		} else {
			for (size_t i = 0; i < n; i++)
				f[i] = u[i];
			free(u);
		}
		break;
	}
	case ANN_BLOCK_I8: {
		bool raw = ann_rng_below(rng, 2);
		int8_t *s = malloc(n ? n : 1);
		for (size_t i = 0; i < n; i++)
			s[i] = sift ? (int8_t)((int)f[i] - 128)
			            : (int8_t)((int)ann_rng_below(rng, 256) - 128);
		if (raw) {
			free(f);
			c->vecs = s;
			c->vt = ANN_DTYPE_I8;
		} else {
			for (size_t i = 0; i < n; i++)
				f[i] = s[i];
			free(s);
		}
		break;
	}
	}
}

static void free_case(tcase *c)
{
	free(c->ids);
	free(c->vecs);
}

/* Checks a decoded block against the input: ids in stable id order, each element within the
 * encoding's bound of the input. */
static void check_decoded(const ann_block_params *p, const tcase *c, const int64_t *ids, const void *vecs)
{
	size_t *o = stable_order(c->ids, c->count);
	uint32_t dim = c->dim;
	double *lo = malloc(sizeof(double) * dim), *hi = malloc(sizeof(double) * dim);
	for (uint32_t j = 0; j < dim; j++) {
		lo[j] = INFINITY;
		hi[j] = -INFINITY;
		for (size_t i = 0; i < c->count; i++) {
			double x = in_elem(c->vecs, c->vt, i * dim + j);
			lo[j] = fmin(lo[j], x);
			hi[j] = fmax(hi[j], x);
		}
	}
	for (size_t r = 0; r < c->count; r++) {
		size_t s = o[r];
		if (ids[r] != c->ids[s])
			T_FAIL("row %zu: id %" PRId64 ", expected %" PRId64 " (input %zu)", r, ids[r],
			       c->ids[s], s);
		for (uint32_t j = 0; j < dim; j++) {
			double x = in_elem(c->vecs, c->vt, s * dim + j);
			size_t k = r * dim + j;
			switch (p->encoding) {
			case ANN_BLOCK_F32: ASSERT_TRUE(((const float *)vecs)[k] == (float)x); break;
			case ANN_BLOCK_F16: {
				double y = ((const float *)vecs)[k];
				double bound = fmax(fabs(x) * 0x1p-11, 0x1p-25);
				if (!(fabs(y - x) <= bound))
					T_FAIL("F16 row %zu dim %u: %.9g decoded as %.9g", r, j, x, y);
#if HAVE_F16_ORACLE
				ASSERT_TRUE((float)y == oracle_f16_to_f32(oracle_f32_to_f16((float)x)));
#endif
				break;
			}
			case ANN_BLOCK_U8: ASSERT_EQ(((const uint8_t *)vecs)[k], x); break;
			case ANN_BLOCK_I8: ASSERT_EQ(((const int8_t *)vecs)[k], x); break;
			case ANN_BLOCK_SQ8: {
				double y = ((const float *)vecs)[k];
				double scale = (hi[j] - lo[j]) / 255.0;
				double tol = 0.5 * scale * (1 + 1e-5) +
				             4 * FLT_EPSILON * (fabs(lo[j]) + fabs(hi[j]));
				if (!(fabs(y - x) <= tol))
					T_FAIL("SQ8 row %zu dim %u: %.9g decoded as %.9g, scale %g", r, j, x,
					       y, scale);
				break;
			}
			}
		}
	}
	free(lo);
	free(hi);
	free(o);
}

/* Encodes, checks the padded length and header, decodes both ways, checks the data. */
static void roundtrip(ann_block_enc *enc, ann_block_dec *dec, const ann_block_params *p, const tcase *c,
                      uint64_t part)
{
	ann_error e = { 0 };
	uint8_t *b = NULL;
	size_t len = 0;
	int rc = block_encode(enc, p, c->dim, c->count, c->ids, c->vecs, c->vt, part, part * 3 + 1, &b, &len,
	                      &e);
	if (rc < 0)
		T_FAIL("encode enc %d dim %u count %zu: %s", (int)p->encoding, c->dim, c->count, e.msg);
	ASSERT_EQ((uintptr_t)b % 4096, 0);
	ann_block_info in;
	ASSERT_OK(block_peek(b, len, &in, &e));
	ASSERT_EQ(in.total_bytes, len);
	ASSERT_EQ(len, block_padded_size(in.header_bytes + in.stored_bytes, p->pad));
	if (p->pad == ANN_BLOCK_PAD_FILE)
		ASSERT_EQ(len % 4096, 0);
	else
		ASSERT_EQ((len + 16) % 4096, 0);
	ASSERT_EQ(in.partition, part);
	ASSERT_EQ(in.generation, part * 3 + 1);
	ASSERT_EQ(in.count, c->count);
	ASSERT_EQ(in.dim, c->dim);
	ASSERT_EQ(in.encoding, p->encoding);
	ASSERT_EQ(in.codec, p->codec);
	ASSERT_EQ(in.dict_id, p->dict ? block_dict_id(p->dict) : 0);
	ASSERT_EQ(!!(in.flags & BLOCK_FLAG_SHUFFLE), p->shuffle);
	/* Centring: only 1-byte encodings under zstd; ON forces it, OFF forbids it. */
	bool one_byte =
	        p->encoding == ANN_BLOCK_U8 || p->encoding == ANN_BLOCK_I8 || p->encoding == ANN_BLOCK_SQ8;
	bool can_center = one_byte && p->codec == ANN_BLOCK_CODEC_ZSTD && c->count > 0;
	if (!can_center || p->center == ANN_BLOCK_CENTER_OFF)
		ASSERT_EQ(in.flags & BLOCK_FLAG_CENTER, 0);
	if (can_center && p->center == ANN_BLOCK_CENTER_ON)
		ASSERT_NE(in.flags & BLOCK_FLAG_CENTER, 0);
	if (p->codec == ANN_BLOCK_CODEC_NONE)
		ASSERT_EQ(in.stored_bytes, in.raw_bytes);

	ann_block_view v;
	rc = block_decode(dec, b, len, p->dict, &v, &e);
	if (rc < 0)
		T_FAIL("decode enc %d dim %u count %zu: %s", (int)p->encoding, c->dim, c->count, e.msg);
	ASSERT_EQ((uintptr_t)v.vectors % 64, 0);
	check_decoded(p, c, v.ids, v.vectors);

	/* Caller-owned buffers, exact sizes; then one byte short. */
	int64_t *ids = malloc(in.ids_out_bytes + 8);
	uint8_t *vec = malloc(in.vec_out_bytes + 8);
	ann_block_info in2;
	ASSERT_OK(block_decode_into(dec, b, len, p->dict, ids, in.ids_out_bytes, vec, in.vec_out_bytes, &in2,
	                            &e));
	check_decoded(p, c, ids, vec);
	ASSERT_EQ(in2.stored_bytes, in.stored_bytes);
	if (in.vec_out_bytes > 0)
		ASSERT_ERR(block_decode_into(dec, b, len, p->dict, ids, in.ids_out_bytes, vec,
		                             in.vec_out_bytes - 1, NULL, &e),
		           e, ANN_E_INVAL, "output buffers");
	free(ids);
	free(vec);
	ann_aligned_free(b);
}

/* ---- tests --------------------------------------------------------------------------------- */

static void test_f16(ann_rng *rng)
{
	t_current = "f16";
	/* Every half: f16 -> f32 -> f16 is the identity (NaN stays NaN), and f16 -> f32 is exact. */
	for (uint32_t h = 0; h < 65536; h++) {
		float f = block_f16_to_f32((uint16_t)h);
		uint16_t back = block_f32_to_f16(f);
		if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) {
			ASSERT_TRUE(isnan(f));
			ASSERT_EQ(back & 0x7e00, 0x7e00);
			continue;
		}
		ASSERT_EQ(back, h);
#if HAVE_F16_ORACLE
		ASSERT_TRUE(f == oracle_f16_to_f32((uint16_t)h) &&
		            signbit(f) == signbit(oracle_f16_to_f32((uint16_t)h)));
#endif
	}
#if HAVE_F16_ORACLE
	/* Rounding: the float bits right around every half-way point, and random floats. */
	for (uint32_t h = 0; h < 0x7c00; h++) {
		for (int s = 0; s < 2; s++) {
			float a = block_f16_to_f32((uint16_t)(h | (s << 15)));
			uint32_t ab;
			memcpy(&ab, &a, 4);
			for (int d = -3; d <= 3; d++) {
				/* halfway between h and h+1 lies at ab + 2^12 (normal) in float bits */
				uint32_t x = ab + 0x1000u + (uint32_t)d;
				float f;
				memcpy(&f, &x, 4);
				uint16_t want = oracle_f32_to_f16(f), got = block_f32_to_f16(f);
				if (isnan(f))
					continue;
				if (want != got)
					T_FAIL("f32 %08x: f16 %04x, expected %04x", x, got, want);
			}
		}
	}
	for (int i = 0; i < 2000000; i++) {
		uint32_t x = (uint32_t)ann_rng_next(rng);
		float f;
		memcpy(&f, &x, 4);
		uint16_t want = oracle_f32_to_f16(f), got = block_f32_to_f16(f);
		if (isnan(f)) {
			ASSERT_TRUE(isnan(block_f16_to_f32(got)));
			continue;
		}
		if (want != got)
			T_FAIL("f32 %08x: f16 %04x, expected %04x", x, got, want);
	}
#else
	(void)rng;
	printf("  no _Float16: rounding checked by the round trips only\n");
#endif
}

static void test_padded_size(void)
{
	t_current = "padded_size";
	for (size_t n = 1; n < 3 * 4096 + 100; n++) {
		size_t f = block_padded_size(n, ANN_BLOCK_PAD_FILE);
		ASSERT_TRUE(f >= n && f % 4096 == 0 && f - 4096 < n);
		size_t l = block_padded_size(n, ANN_BLOCK_PAD_LMDB);
		/* LMDB: a value of l bytes after the 16-byte page header fills whole pages, and one
		 * page less would not hold n. */
		ASSERT_TRUE(l >= n && (l + 16) % 4096 == 0 && (l < 4096 || l - 4096 < n));
	}
	ASSERT_EQ(block_padded_size(4096, ANN_BLOCK_PAD_FILE), 4096);
	ASSERT_EQ(block_padded_size(4097, ANN_BLOCK_PAD_FILE), 8192);
	ASSERT_EQ(block_padded_size(4080, ANN_BLOCK_PAD_LMDB), 4080);
	ASSERT_EQ(block_padded_size(4081, ANN_BLOCK_PAD_LMDB), 8176);
	ASSERT_EQ(block_padded_size(SIZE_MAX - 10, ANN_BLOCK_PAD_FILE), 0);
	ASSERT_EQ(block_padded_size(SIZE_MAX - 10, ANN_BLOCK_PAD_LMDB), 0);
	ASSERT_EQ(block_padded_size(100, (ann_block_pad)7), 0);
}

static void test_roundtrip(ann_rng *rng)
{
	t_current = "roundtrip";
	ann_block_enc *enc;
	ann_block_dec *dec;
	ann_block_dict *dict;
	ASSERT_OK(block_enc_new(&enc, NULL));
	ASSERT_OK(block_dec_new(0, &dec, NULL));
	/* A raw-content dictionary (any bytes are valid): enough to exercise the dict path. */
	uint8_t content[4096];
	for (size_t i = 0; i < sizeof content; i++)
		content[i] = (uint8_t)(i % 7 == 0 ? ann_rng_below(rng, 256) : i / 64);
	ASSERT_OK(block_dict_new(7, content, sizeof content, 1, &dict, NULL));

	static const uint32_t dims[] = { 1,  2,  3,  4,  5,  6,  7,  8,  9,  10,  11,
		                         12, 13, 14, 15, 16, 17, 18, 19, 20, 128, 784 };
	size_t blocks = 0;
	uint64_t part = 1;
	for (size_t ei = 0; ei < sizeof all_enc / sizeof all_enc[0]; ei++) {
		for (int shuffle = 0; shuffle < 2; shuffle++) {
			for (int cv = 0; cv < 3; cv++) { /* none, zstd, zstd + dictionary */
				for (int sift = 0; sift < 2; sift++) {
					for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++) {
						uint32_t dim = dims[di];
						size_t counts[3] = {
							0, 1, dim >= 128 ? 37 : 8 + ann_rng_below(rng, 250)
						};
						for (int ci = 0; ci < 3; ci++) {
							ann_block_params p;
							block_params_init(&p);
							p.encoding = all_enc[ei];
							p.shuffle = shuffle;
							p.codec = cv ? ANN_BLOCK_CODEC_ZSTD
							             : ANN_BLOCK_CODEC_NONE;
							p.level = 1;
							p.dict = cv == 2 ? dict : NULL;
							p.pad = (part & 1) ? ANN_BLOCK_PAD_LMDB
							                   : ANN_BLOCK_PAD_FILE;
							p.center = (ann_block_center)(part % 3);
							tcase c;
							make_case(rng, &c, p.encoding, sift, dim, counts[ci]);
							roundtrip(enc, dec, &p, &c, part++);
							free_case(&c);
							blocks++;
						}
					}
				}
			}
		}
	}
	printf("  %zu blocks round-tripped; decoder holds %zu bytes\n", blocks, block_dec_sizeof(dec));

	/* Sorted input takes the no-permutation path; extreme ids survive the delta coding. */
	int64_t ids[6] = { INT64_MIN, INT64_MIN + 1, -1, 0, INT64_MAX - 1, INT64_MAX };
	uint8_t vec[6 * 3];
	for (size_t i = 0; i < sizeof vec; i++)
		vec[i] = (uint8_t)(i * 37);
	for (int rev = 0; rev < 2; rev++) {
		if (rev) { /* reversed: the sort path */
			for (int i = 0; i < 3; i++) {
				int64_t t = ids[i];
				ids[i] = ids[5 - i];
				ids[5 - i] = t;
			}
		}
		tcase c = { .dim = 3, .count = 6, .ids = ids, .vecs = vec, .vt = ANN_DTYPE_U8 };
		ann_block_params p;
		block_params_init(&p);
		p.encoding = ANN_BLOCK_U8;
		roundtrip(enc, dec, &p, &c, 99);
	}

	block_dict_free(dict);
	block_enc_free(enc);
	block_dec_free(dec);
}

/* A small block for the corruption tests. */
static uint8_t *small_block(ann_rng *rng, const ann_block_params *p, uint32_t dim, size_t count, size_t *len)
{
	tcase c;
	make_case(rng, &c, p->encoding, true, dim, count);
	uint8_t *b;
	ASSERT_OK(block_encode(NULL, p, dim, count, c.ids, c.vecs, c.vt, 4242, 5, &b, len, NULL));
	free_case(&c);
	return b;
}

static void expect_bad(ann_block_dec *dec, const uint8_t *b, size_t len, const ann_block_dict *dict,
                       const char *what, size_t pos)
{
	ann_error e = { 0 };
	ann_block_view v;
	int rc = block_decode(dec, b, len, dict, &v, &e);
	/* A forged dictionary id is reported as a missing dictionary. */
	if (rc != ANN_E_CORRUPT && rc != ANN_E_FORMAT && !(rc == ANN_E_NOTFOUND && strstr(what, "forged")))
		T_FAIL("%s at %zu: decode returned %d (%s): %s", what, pos, rc, ann_strerror(rc), e.msg);
}

static void test_corruption(ann_rng *rng)
{
	t_current = "corruption";
	ann_block_dec *dec;
	ASSERT_OK(block_dec_new(0, &dec, NULL));
	ann_block_dict *dict;
	uint8_t content[512];
	for (size_t i = 0; i < sizeof content; i++)
		content[i] = (uint8_t)ann_rng_below(rng, 16);
	ASSERT_OK(block_dict_new(11, content, sizeof content, 3, &dict, NULL));

	struct {
		ann_block_encoding enc;
		ann_block_codec codec;
		bool shuffle, dict;
		ann_block_pad pad;
		uint32_t dim;
		size_t count;
		ann_block_center center;
	} cases[] = {
		{ ANN_BLOCK_U8, ANN_BLOCK_CODEC_ZSTD, true, false, ANN_BLOCK_PAD_FILE, 12, 9,
		  ANN_BLOCK_CENTER_OFF },
		{ ANN_BLOCK_SQ8, ANN_BLOCK_CODEC_NONE, true, false, ANN_BLOCK_PAD_LMDB, 5, 7,
		  ANN_BLOCK_CENTER_AUTO },
		{ ANN_BLOCK_F16, ANN_BLOCK_CODEC_ZSTD, false, true, ANN_BLOCK_PAD_LMDB, 3, 4,
		  ANN_BLOCK_CENTER_AUTO },
		{ ANN_BLOCK_F32, ANN_BLOCK_CODEC_NONE, false, false, ANN_BLOCK_PAD_FILE, 2, 3,
		  ANN_BLOCK_CENTER_AUTO },
		{ ANN_BLOCK_I8, ANN_BLOCK_CODEC_ZSTD, true, false, ANN_BLOCK_PAD_FILE, 4, 0,
		  ANN_BLOCK_CENTER_AUTO },
		{ ANN_BLOCK_SQ8, ANN_BLOCK_CODEC_ZSTD, false, false, ANN_BLOCK_PAD_FILE, 6, 5,
		  ANN_BLOCK_CENTER_ON },
	};
	for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
		ann_block_params p;
		block_params_init(&p);
		p.encoding = cases[k].enc;
		p.codec = cases[k].codec;
		p.shuffle = cases[k].shuffle;
		p.pad = cases[k].pad;
		p.dict = cases[k].dict ? dict : NULL;
		p.center = cases[k].center;
		size_t len;
		uint8_t *b = small_block(rng, &p, cases[k].dim, cases[k].count, &len);
		ann_block_view v;
		ASSERT_OK(block_decode(dec, b, len, p.dict, &v, NULL));

		/* Every single-bit flip, header, payload and padding alike. */
		for (size_t bit = 0; bit < len * 8; bit++) {
			b[bit / 8] ^= (uint8_t)(1u << (bit % 8));
			expect_bad(dec, b, len, p.dict, "bit flip", bit);
			b[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		}
		/* Every truncation (a copy of exactly that size, so ASan sees any overread). */
		for (size_t n = 0; n < len; n++) {
			uint8_t *t = malloc(n ? n : 1);
			memcpy(t, b, n);
			expect_bad(dec, t, n, p.dict, "truncation", n);
			free(t);
		}
		/* Random multi-byte garbage over random spans. */
		uint8_t *g = malloc(len);
		for (int it = 0; it < 2000; it++) {
			memcpy(g, b, len);
			size_t at = ann_rng_below(rng, len), n = 1 + ann_rng_below(rng, 16);
			for (size_t i = at; i < at + n && i < len; i++)
				g[i] = (uint8_t)ann_rng_next(rng);
			if (memcmp(g, b, len) != 0)
				expect_bad(dec, g, len, p.dict, "garbage", at);
		}
		/* Garbage with valid checksums: must never crash; any answer but success with data
		 * read out of bounds is acceptable, and ASan/UBSan watch for that. */
		uint64_t stored = ann_ld64(b + 40);
		for (int it = 0; it < 2000 && stored > 0; it++) {
			memcpy(g, b, len);
			size_t at = 80 + ann_rng_below(rng, stored), n = 1 + ann_rng_below(rng, 8);
			for (size_t i = at; i < at + n && i < 80 + stored; i++)
				g[i] = (uint8_t)ann_rng_next(rng);
			fix_payload(g);
			(void)block_decode(dec, g, len, p.dict, &v, NULL);
		}
		/* Header fields changed with a valid header checksum. */
		static const struct {
			size_t off, size;
		} fields[] = { { 8, 2 },  { 10, 1 }, { 11, 1 }, { 12, 2 }, { 14, 2 }, { 16, 4 },
			       { 20, 4 }, { 24, 4 }, { 28, 4 }, { 32, 8 }, { 40, 8 } };
		for (size_t f = 0; f < sizeof fields / sizeof fields[0]; f++) {
			for (int it = 0; it < 64; it++) {
				memcpy(g, b, len);
				uint64_t old = 0, val;
				for (size_t i = 0; i < fields[f].size; i++)
					old |= (uint64_t)g[fields[f].off + i] << (8 * i);
				switch (it % 4) {
				case 0: val = old + 1; break;
				case 1: val = old - 1; break;
				case 2:
					val = old ^ (UINT64_C(1) << ann_rng_below(rng, 8 * fields[f].size));
					break;
				default: val = ann_rng_next(rng); break;
				}
				for (size_t i = 0; i < fields[f].size; i++)
					g[fields[f].off + i] = (uint8_t)(val >> (8 * i));
				if (memcmp(g, b, len) == 0)
					continue;
				fix_header_n(g, len);
				if ((fields[f].off >= 10 && fields[f].off <= 12) ||
				    (fields[f].off == 16 && cases[k].count == 0)) {
					/* A forged encoding, codec or flags byte can describe another valid
					 * block (U8 <-> I8, shuffle on/off), as can the dimension of an
					 * empty block: only "no crash" holds. */
					(void)block_decode(dec, g, len, p.dict, &v, NULL);
					continue;
				}
				expect_bad(dec, g, len, p.dict, "forged header field", fields[f].off);
			}
		}
		free(g);
		ann_aligned_free(b);
	}

	/* Whole-buffer garbage of random lengths, some with a valid magic and version. */
	for (int it = 0; it < 5000; it++) {
		size_t n = ann_rng_below(rng, 300);
		uint8_t *g = malloc(n ? n : 1);
		for (size_t i = 0; i < n; i++)
			g[i] = (uint8_t)ann_rng_next(rng);
		if (n >= 10 && it % 2) {
			ann_st32(g, BLOCK_MAGIC);
			ann_st16(g + 4, 1);
			ann_st16(g + 8, 80);
			if (n >= 80 && it % 4 == 1)
				fix_header(g);
		}
		expect_bad(dec, g, n, NULL, "random buffer", n);
		free(g);
	}
	block_dict_free(dict);
	block_dec_free(dec);
}

static void test_errors(ann_rng *rng)
{
	t_current = "errors";
	ann_error e = { 0 };
	ann_block_dec *dec;
	ann_block_view v;
	ASSERT_OK(block_dec_new(0, &dec, NULL));
	ann_block_params p;
	block_params_init(&p);
	p.encoding = ANN_BLOCK_U8;
	size_t len;
	uint8_t *b = small_block(rng, &p, 16, 40, &len);

	/* Version refusal names both versions; a newer minor of the same major is read. */
	uint8_t *g = malloc(len);
	memcpy(g, b, len);
	ann_st16(g + 4, 2);
	fix_header(g);
	ASSERT_ERR(block_decode(dec, g, len, NULL, &v, &e), e, ANN_E_FORMAT, "version 2.0");
	ASSERT_TRUE(strstr(e.msg, "supports 1.x") != NULL);
	ASSERT_ERR(block_peek(g, len, &v.info, &e), e, ANN_E_FORMAT, "version 2.0");
	memcpy(g, b, len);
	ann_st16(g + 6, 9);
	fix_header(g);
	ASSERT_OK(block_decode(dec, g, len, NULL, &v, &e));
	ASSERT_EQ(v.info.version_minor, 9);
	/* Unknown encoding, codec, flag bits, reserved field: ANN_E_FORMAT. */
	static const size_t off[] = { 10, 11, 12, 14 };
	static const unsigned val[] = { 3, 2, 0x10, 1 };
	for (int i = 0; i < 4; i++) {
		memcpy(g, b, len);
		g[off[i]] |= (uint8_t)val[i];
		fix_header(g);
		ASSERT_ERR(block_decode(dec, g, len, NULL, &v, &e), e, ANN_E_FORMAT, "partition 4242");
	}
	memcpy(g, b, len);
	g[0] ^= 0x80;
	ASSERT_ERR(block_decode(dec, g, len, NULL, &v, &e), e, ANN_E_FORMAT, "magic");
	/* Checksums name the partition. */
	memcpy(g, b, len);
	g[100] ^= 1;
	ASSERT_ERR(block_decode(dec, g, len, NULL, &v, &e), e, ANN_E_CORRUPT,
	           "partition 4242: payload checksum");
	memcpy(g, b, len);
	g[33] ^= 1;
	ASSERT_ERR(block_decode(dec, g, len, NULL, &v, &e), e, ANN_E_CORRUPT, "header claims partition 4242");
	memcpy(g, b, len);
	g[len - 1] = 1;
	ASSERT_ERR(block_decode(dec, g, len, NULL, &v, &e), e, ANN_E_CORRUPT, "padding");
	free(g);

	/* A header grown by a later minor (88 bytes, 8 unknown bytes) is still read. */
	uint64_t stored = ann_ld64(b + 40);
	size_t len2 = block_padded_size(88 + stored, ANN_BLOCK_PAD_FILE);
	g = calloc(1, len2);
	memcpy(g, b, 72);
	memset(g + 72, 0xab, 8);
	memcpy(g + 88, b + 80, stored);
	ann_st16(g + 6, 1);
	ann_st16(g + 8, 88);
	fix_header_n(g, len2);
	ASSERT_OK(block_decode(dec, g, len2, NULL, &v, &e));
	ASSERT_EQ(v.info.header_bytes, 88);
	ASSERT_EQ(v.info.count, 40);
	ann_block_view v0;
	ann_block_dec *dec2;
	ASSERT_OK(block_dec_new(0, &dec2, NULL));
	ASSERT_OK(block_decode(dec2, b, len, NULL, &v0, &e));
	ASSERT_TRUE(memcmp(v0.vectors, v.vectors, 40 * 16) == 0 && memcmp(v0.ids, v.ids, 40 * 8) == 0);
	block_dec_free(dec2);
	free(g);

	/* Decoded-size limit. */
	ann_block_dec *small;
	ASSERT_OK(block_dec_new(40 * 16 + 40 * 8 - 1, &small, NULL));
	ASSERT_ERR(block_decode(small, b, len, NULL, &v, &e), e, ANN_E_CORRUPT, "limit");
	block_dec_free(small);
	ASSERT_OK(block_dec_new(40 * 16 + 40 * 8, &small, NULL));
	ASSERT_OK(block_decode(small, b, len, NULL, &v, &e));
	block_dec_free(small);
	ann_aligned_free(b);

	/* Dictionary: missing, wrong id, decode-only dict cannot encode, level mismatch. */
	uint8_t content[1024];
	for (size_t i = 0; i < sizeof content; i++)
		content[i] = (uint8_t)(i * 7);
	ann_block_dict *d5, *d6, *d5dec;
	ASSERT_OK(block_dict_new(5, content, sizeof content, 3, &d5, NULL));
	ASSERT_OK(block_dict_new(6, content, sizeof content, 3, &d6, NULL));
	ASSERT_OK(block_dict_new(5, content, sizeof content, BLOCK_DICT_DECODE_ONLY, &d5dec, NULL));
	p.dict = d5;
	b = small_block(rng, &p, 16, 40, &len);
	ASSERT_ERR(block_decode(dec, b, len, NULL, &v, &e), e, ANN_E_NOTFOUND, "dictionary 5, none given");
	ASSERT_ERR(block_decode(dec, b, len, d6, &v, &e), e, ANN_E_NOTFOUND, "given dictionary 6");
	ASSERT_OK(block_decode(dec, b, len, d5dec, &v, &e));
	ann_aligned_free(b);
	uint8_t *out;
	int64_t id1 = 1;
	uint8_t x1 = 1;
	p.dict = d5dec;
	ASSERT_ERR(block_encode(NULL, &p, 1, 1, &id1, &x1, ANN_DTYPE_U8, 0, 0, &out, &len, &e), e,
	           ANN_E_INVAL, "decode-only");
	p.dict = d5;
	p.level = 4;
	ASSERT_ERR(block_encode(NULL, &p, 1, 1, &id1, &x1, ANN_DTYPE_U8, 0, 0, &out, &len, &e), e,
	           ANN_E_INVAL, "level 3");
	p.level = 3;
	p.codec = ANN_BLOCK_CODEC_NONE;
	ASSERT_ERR(block_encode(NULL, &p, 1, 1, &id1, &x1, ANN_DTYPE_U8, 0, 0, &out, &len, &e), e,
	           ANN_E_INVAL, "needs codec zstd");
	block_dict_free(d6);
	ASSERT_ERR(block_dict_new(0, content, sizeof content, 3, &d6, &e), e, ANN_E_INVAL, "id 0");
	ASSERT_TRUE(d6 == NULL);
	block_dict_free(d5);
	block_dict_free(d5dec);

	/* Input validation names the vector, its id, the dimension and the value. */
	block_params_init(&p);
	int64_t ids2[2] = { 10, 20 };
	float fx[4] = { 1, 2, 3, NAN };
	ASSERT_ERR(block_encode(NULL, &p, 2, 2, ids2, fx, ANN_DTYPE_F32, 0, 0, &out, &len, &e), e,
	           ANN_E_INVAL, "vector 1 (id 20), dim 1");
	ASSERT_TRUE(out == NULL);
	p.encoding = ANN_BLOCK_SQ8;
	ASSERT_ERR(block_encode(NULL, &p, 2, 2, ids2, fx, ANN_DTYPE_F32, 0, 0, &out, &len, &e), e,
	           ANN_E_INVAL, "not finite");
	p.encoding = ANN_BLOCK_F16;
	fx[3] = 70000;
	ASSERT_ERR(block_encode(NULL, &p, 2, 2, ids2, fx, ANN_DTYPE_F32, 0, 0, &out, &len, &e), e,
	           ANN_E_INVAL, "F16 range");
	fx[3] = 65519;
	ASSERT_OK(block_encode(NULL, &p, 2, 2, ids2, fx, ANN_DTYPE_F32, 0, 0, &out, &len, &e));
	ann_aligned_free(out);
	p.encoding = ANN_BLOCK_U8;
	fx[3] = 3.5f;
	ASSERT_ERR(block_encode(NULL, &p, 2, 2, ids2, fx, ANN_DTYPE_F32, 0, 0, &out, &len, &e), e,
	           ANN_E_INVAL, "0..255");
	fx[3] = 256;
	ASSERT_ERR(block_encode(NULL, &p, 2, 2, ids2, fx, ANN_DTYPE_F32, 0, 0, &out, &len, &e), e,
	           ANN_E_INVAL, "0..255");
	int8_t sx[4] = { 1, 2, 3, -1 };
	ASSERT_ERR(block_encode(NULL, &p, 2, 2, ids2, sx, ANN_DTYPE_I8, 0, 0, &out, &len, &e), e, ANN_E_INVAL,
	           "0..255");
	p.encoding = ANN_BLOCK_I8;
	uint8_t ux[4] = { 1, 2, 3, 200 };
	ASSERT_ERR(block_encode(NULL, &p, 2, 2, ids2, ux, ANN_DTYPE_U8, 0, 0, &out, &len, &e), e, ANN_E_INVAL,
	           "-128..127");
	ASSERT_ERR(block_encode(NULL, &p, 0, 2, ids2, ux, ANN_DTYPE_U8, 0, 0, &out, &len, &e), e, ANN_E_INVAL,
	           "dimension 0");
	ASSERT_ERR(block_encode(NULL, &p, 2, 2, ids2, ux, ANN_DTYPE_I32, 0, 0, &out, &len, &e), e,
	           ANN_E_INVAL, "input element type");
	ASSERT_ERR(block_encode(NULL, &p, 2, 2, NULL, ux, ANN_DTYPE_U8, 0, 0, &out, &len, &e), e, ANN_E_INVAL,
	           "no ids");
	p.level = 1000;
	ASSERT_ERR(block_encode(NULL, &p, 2, 2, ids2, ux, ANN_DTYPE_U8, 0, 0, &out, &len, &e), e, ANN_E_INVAL,
	           "zstd level");
	block_dec_free(dec);
}

static void test_dict_training(ann_rng *rng)
{
	t_current = "dict_training";
	enum { NS = 40, DIM = 128, CNT = 24 };
	ann_block_params p;
	block_params_init(&p);
	p.encoding = ANN_BLOCK_U8;
	p.codec = ANN_BLOCK_CODEC_NONE;
	uint8_t *samples[NS];
	size_t lens[NS];
	/* One mixture for every block, as partitions of one data set share a distribution. */
	float *x = malloc(sizeof(float) * DIM * CNT * (NS + 1));
	uint8_t *all = malloc((size_t)DIM * CNT * (NS + 1));
	gen_sift(rng, x, (size_t)CNT * (NS + 1), DIM);
	for (size_t i = 0; i < (size_t)DIM * CNT * (NS + 1); i++)
		all[i] = (uint8_t)x[i];
	int64_t ids[CNT];
	for (int s = 0; s < NS; s++) {
		for (int i = 0; i < CNT; i++)
			ids[i] = s * 1000 + i * 7;
		ASSERT_OK(block_encode(NULL, &p, DIM, CNT, ids, all + (size_t)s * DIM * CNT, ANN_DTYPE_U8,
		                       (uint64_t)s, 0, &samples[s], &lens[s], NULL));
	}
	uint8_t *u = all + (size_t)NS * DIM * CNT; /* held out */
	uint8_t *dbytes;
	size_t dlen;
	ann_error e = { 0 };
	int rc = block_dict_train((const uint8_t *const *)samples, lens, NS, 16 << 10, &dbytes, &dlen, &e);
	if (rc == ANN_E_UNSUPPORTED) {
		printf("  zstd declined to train: %s\n", e.msg);
	} else {
		ASSERT_OK(rc);
		ASSERT_TRUE(dlen > 0 && dlen <= 16 << 10);
		ann_block_dict *d;
		ASSERT_OK(block_dict_new(9, dbytes, dlen, 3, &d, NULL));
		ann_block_dec *dec;
		ASSERT_OK(block_dec_new(0, &dec, NULL));
		p.codec = ANN_BLOCK_CODEC_ZSTD;
		tcase c = { .dim = DIM, .count = CNT, .ids = ids, .vecs = u, .vt = ANN_DTYPE_U8 };
		p.dict = d;
		roundtrip(NULL, dec, &p, &c, 77);
		block_dec_free(dec);
		block_dict_free(d);
		ann_free(dbytes);
	}
	/* Compressed samples are refused. */
	uint8_t *zb;
	size_t zlen;
	p.dict = NULL;
	p.codec = ANN_BLOCK_CODEC_ZSTD;
	ASSERT_OK(block_encode(NULL, &p, DIM, CNT, ids, u, ANN_DTYPE_U8, 0, 0, &zb, &zlen, NULL));
	ASSERT_ERR(block_dict_train((const uint8_t *const *)&zb, &zlen, 1, 4096, &dbytes, &dlen, &e), e,
	           ANN_E_INVAL, "codec NONE");
	ann_aligned_free(zb);
	for (int s = 0; s < NS; s++)
		ann_aligned_free(samples[s]);
	free(x);
	free(all);
}

/* Allocation failure at every allocation site: an error (never a crash), nothing leaked. */
static void test_alloc_failure(ann_rng *rng)
{
	t_current = "alloc_failure";
	tcase c;
	make_case(rng, &c, ANN_BLOCK_SQ8, true, 24, 50);
	uint8_t content[600];
	for (size_t i = 0; i < sizeof content; i++)
		content[i] = (uint8_t)(i / 3);
	int64_t base = ann_mem_live_bytes();
	int failures = 0;
	for (int64_t n = 0;; n++) {
		ann_mem_fail_after(n);
		ann_block_enc *enc = NULL;
		ann_block_dec *dec = NULL;
		ann_block_dict *d = NULL;
		uint8_t *b = NULL;
		size_t len;
		ann_block_view v;
		ann_block_params p;
		block_params_init(&p);
		p.encoding = ANN_BLOCK_SQ8;
		p.center = ANN_BLOCK_CENTER_AUTO;
		int rc = block_dict_new(3, content, sizeof content, 3, &d, NULL);
		if (rc == ANN_OK)
			rc = block_enc_new(&enc, NULL);
		if (rc == ANN_OK) {
			p.dict = d;
			rc = block_encode(enc, &p, c.dim, c.count, c.ids, c.vecs, c.vt, 1, 1, &b, &len, NULL);
		}
		if (rc == ANN_OK)
			rc = block_dec_new(0, &dec, NULL);
		if (rc == ANN_OK)
			rc = block_decode(dec, b, len, d, &v, NULL);
		ann_mem_fail_after(-1);
		if (rc == ANN_OK)
			check_decoded(&p, &c, v.ids, v.vectors);
		block_dec_free(dec);
		ann_aligned_free(b);
		block_enc_free(enc);
		block_dict_free(d);
		ASSERT_EQ(ann_mem_live_bytes(), base);
		if (rc == ANN_OK)
			break;
		ASSERT_EQ(rc, ANN_E_NOMEM);
		failures++;
	}
	printf("  %d allocation sites failed cleanly\n", failures);
	ASSERT_TRUE(failures >= 8);
	free_case(&c);
}

int main(void)
{
	ann_rng rng;
	t_init("test_block", &rng);
	int64_t live = ann_mem_live_bytes();
	test_f16(&rng);
	test_padded_size();
	test_roundtrip(&rng);
	test_corruption(&rng);
	test_errors(&rng);
	test_dict_training(&rng);
	test_alloc_failure(&rng);
	ASSERT_EQ(ann_mem_live_bytes(), live);
	printf("test_block: ok\n");
	return 0;
}
