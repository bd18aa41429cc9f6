/* SPDX-License-Identifier: MIT */
/*
 * block_encode.c: the write side of the block codec (docs/FORMAT.md, "Block"): the header
 * writer, the five vector encodings with SQ8 parameters and centring, the byte shuffle, zstd
 * compression with optional dictionaries, and dictionary training. It does no I/O and keeps
 * no state outside its encoder. Shared layout and helpers: block_impl.h; the read side
 * (peek, decode), the id coding, padding and the dictionaries: block.c.
 */
#define ZSTD_STATIC_LINKING_ONLY /* ZSTD_customMem: route zstd's allocations through ann_malloc */
#include "block_impl.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <xxhash.h>
#include <zdict.h>
#include <zstd_errors.h>

#define TRAIN_PIECE   (16u << 10)
/* ZDICT_DICTSIZE_MIN, which zdict.h hides behind ZDICT_STATIC_LINKING_ONLY. */
#define BLOCK_DICT_MIN_BYTES 256

/* ---- header ----------------------------------------------------------------------------- */

static void write_header(uint8_t *h, const ann_block_info *in)
{
	memset(h, 0, H_END);
	ann_st32(h + H_MAGIC, BLOCK_MAGIC);
	ann_st16(h + H_MAJOR, BLOCK_VERSION_MAJOR);
	ann_st16(h + H_MINOR, BLOCK_VERSION_MINOR);
	ann_st16(h + H_HDR_BYTES, BLOCK_HEADER_BYTES);
	h[H_ENCODING] = (uint8_t)in->encoding;
	h[H_CODEC] = (uint8_t)in->codec;
	ann_st16(h + H_FLAGS, (uint16_t)in->flags);
	ann_st16(h + H_RESERVED, 0);
	ann_st32(h + H_DIM, in->dim);
	ann_st32(h + H_COUNT, in->count);
	ann_st32(h + H_DICT_ID, in->dict_id);
	ann_st32(h + H_IDS_BYTES, in->ids_bytes);
	ann_st64(h + H_RAW_BYTES, in->raw_bytes);
	ann_st64(h + H_STORED, in->stored_bytes);
	ann_st64(h + H_PARTITION, in->partition);
	ann_st64(h + H_GENERATION, in->generation);
	ann_st64(h + H_PAYLOAD_XXH, in->payload_xxh64);
	ann_st64(h + H_HEADER_XXH, XXH64(h, H_HEADER_XXH, 0));
}

/* ---- encoding --------------------------------------------------------------------------- */

struct ann_block_enc {
	ZSTD_CCtx *cctx;
	uint8_t *raw; /* raw payload being built */
	size_t raw_cap;
	uint8_t *codes; /* converted vectors, row-major, in id order */
	size_t codes_cap;
	uint8_t *z; /* compressed payload */
	size_t z_cap;
	uint8_t *z2; /* the second candidate when centring is tried */
	size_t z2_cap;
	uint8_t *order; /* sort pairs, then the permutation */
	size_t order_cap;
	uint8_t *aux; /* SQ8 parameters (2 * dim floats), then dim reference bytes */
	size_t aux_cap;
};

void block_params_init(ann_block_params *p)
{
	memset(p, 0, sizeof *p);
	p->encoding = ANN_BLOCK_F32;
	p->codec = ANN_BLOCK_CODEC_ZSTD;
	p->level = 3;
	p->shuffle = true;
	p->pad = ANN_BLOCK_PAD_FILE;
	p->center = ANN_BLOCK_CENTER_AUTO;
	p->dict = NULL;
}

int block_enc_new(ann_block_enc **out, ann_error *err)
{
	*out = NULL;
	ann_block_enc *e = ann_calloc(1, sizeof *e);
	if (!e)
		return ann_err(err, ANN_E_NOMEM, "block encoder: out of memory");
	e->cctx = ZSTD_createCCtx_advanced(block_zmem);
	if (!e->cctx) {
		ann_free(e);
		return ann_err(err, ANN_E_NOMEM, "block encoder: cannot create a zstd context");
	}
	*out = e;
	return ANN_OK;
}

void block_enc_free(ann_block_enc *e)
{
	if (!e)
		return;
	ZSTD_freeCCtx(e->cctx);
	ann_aligned_free(e->raw);
	ann_aligned_free(e->codes);
	ann_aligned_free(e->z);
	ann_aligned_free(e->z2);
	ann_aligned_free(e->order);
	ann_aligned_free(e->aux);
	ann_free(e);
}

size_t block_enc_sizeof(const ann_block_enc *e)
{
	if (!e)
		return 0;
	return sizeof *e + ZSTD_sizeof_CCtx(e->cctx) + e->raw_cap + e->codes_cap + e->z_cap + e->z2_cap +
	       e->order_cap + e->aux_cap;
}

typedef struct sort_pair {
	int64_t id;
	uint64_t idx;
} sort_pair;

static int cmp_pair(const void *a, const void *b)
{
	const sort_pair *x = a, *y = b;
	if (x->id != y->id)
		return x->id < y->id ? -1 : 1;
	return x->idx < y->idx ? -1 : x->idx > y->idx;
}

/* Input element i of row s as a double (exact for every input type). */
static inline double in_elem(const void *v, ann_dtype t, size_t i)
{
	if (t == ANN_DTYPE_F32) {
		float f;
		memcpy(&f, (const uint8_t *)v + 4 * i, 4);
		return f;
	}
	if (t == ANN_DTYPE_U8)
		return ((const uint8_t *)v)[i];
	return ((const int8_t *)v)[i];
}

static int bad_value(ann_error *err, size_t s, const int64_t *ids, uint32_t j, double x, const char *why)
{
	return ann_err(err, ANN_E_INVAL,
	               "block encode: vector %zu (id %" PRId64 "), dim %" PRIu32 ": value %.9g %s", s, ids[s],
	               j, x, why);
}

/* Converts input row s into dim stored elements (little-endian) at out; SQ8 gives codes. */
static int encode_row(ann_block_encoding enc, ann_dtype in, const void *vectors, size_t s, uint32_t dim,
                      const float *sq, const int64_t *ids, uint8_t *out, ann_error *err)
{
	size_t base = s * dim;
	for (uint32_t j = 0; j < dim; j++) {
		double x = in_elem(vectors, in, base + j);
		switch (enc) {
		case ANN_BLOCK_F32:
			if (!isfinite(x))
				return bad_value(err, s, ids, j, x, "is not finite");
			ann_stf32(out + 4 * (size_t)j, (float)x);
			break;
		case ANN_BLOCK_F16:
			if (!isfinite(x) || fabs(x) >= 65520.0)
				return bad_value(err, s, ids, j, x, "is outside the F16 range (|x| < 65520)");
			ann_st16(out + 2 * (size_t)j, f32_to_f16((float)x));
			break;
		case ANN_BLOCK_U8:
			if (!(x >= 0 && x <= 255 && x == floor(x)))
				return bad_value(err, s, ids, j, x, "is not an integer in 0..255 (U8)");
			out[j] = (uint8_t)x;
			break;
		case ANN_BLOCK_I8:
			if (!(x >= -128 && x <= 127 && x == floor(x)))
				return bad_value(err, s, ids, j, x, "is not an integer in -128..127 (I8)");
			out[j] = (uint8_t)(int8_t)x;
			break;
		case ANN_BLOCK_SQ8: {
			double off = sq[j], scale = sq[dim + j], q = 0;
			if (scale > 0)
				q = floor((x - off) / scale + 0.5);
			out[j] = (uint8_t)(q < 0 ? 0 : q > 255 ? 255 : q);
			break;
		}
		}
	}
	return ANN_OK;
}

/* Per-dimension SQ8 parameters: sq[j] = min, sq[dim + j] = (max - min) / 255. */
static int sq8_params(ann_dtype in, const void *vectors, size_t count, uint32_t dim, const int64_t *ids,
                      float *sq, ann_error *err)
{
	for (uint32_t j = 0; j < dim; j++) {
		double lo = INFINITY, hi = -INFINITY;
		for (size_t i = 0; i < count; i++) {
			double x = in_elem(vectors, in, i * dim + j);
			if (!isfinite(x))
				return bad_value(err, i, ids, j, x, "is not finite");
			lo = x < lo ? x : lo;
			hi = x > hi ? x : hi;
		}
		if (count == 0)
			lo = hi = 0;
		float off = (float)lo, scale = (float)((hi - lo) / 255.0);
		/* The float offset may sit above the true minimum; the codes clamp at 0 then, and
		 * the error stays within half a step plus the rounding of off. */
		if (!isfinite(scale) || !isfinite(off + 255.0f * scale))
			return ann_err(err, ANN_E_INVAL,
			               "block encode: dim %" PRIu32 ": range %g..%g too wide for SQ8", j, lo,
			               hi);
		sq[j] = off;
		sq[dim + j] = scale;
	}
	return ANN_OK;
}

static int check_params(const ann_block_params *p, uint32_t dim, size_t count, const int64_t *ids,
                        const void *vectors, ann_dtype vt, ann_error *err)
{
	if (!p)
		return ann_err(err, ANN_E_INVAL, "block encode: no parameters");
	if (!encoding_known((unsigned)p->encoding))
		return ann_err(err, ANN_E_INVAL, "block encode: unknown encoding %d", (int)p->encoding);
	if (p->codec != ANN_BLOCK_CODEC_NONE && p->codec != ANN_BLOCK_CODEC_ZSTD)
		return ann_err(err, ANN_E_INVAL, "block encode: unknown codec %d", (int)p->codec);
	if (p->pad != ANN_BLOCK_PAD_FILE && p->pad != ANN_BLOCK_PAD_LMDB)
		return ann_err(err, ANN_E_INVAL, "block encode: unknown padding mode %d", (int)p->pad);
	if (p->center != ANN_BLOCK_CENTER_AUTO && p->center != ANN_BLOCK_CENTER_OFF &&
	    p->center != ANN_BLOCK_CENTER_ON)
		return ann_err(err, ANN_E_INVAL, "block encode: unknown centring mode %d", (int)p->center);
	if (p->codec == ANN_BLOCK_CODEC_ZSTD && !level_ok(p->level))
		return ann_err(err, ANN_E_INVAL, "block encode: zstd level %d outside %d..%d", p->level,
		               ZSTD_minCLevel(), ZSTD_maxCLevel());
	if (p->dict) {
		if (p->codec != ANN_BLOCK_CODEC_ZSTD)
			return ann_err(err, ANN_E_INVAL, "block encode: a dictionary needs codec zstd");
		if (!p->dict->cdict)
			return ann_err(err, ANN_E_INVAL,
			               "block encode: dictionary %" PRIu32 " was loaded decode-only",
			               p->dict->id);
		if (p->dict->level != p->level)
			return ann_err(err, ANN_E_INVAL,
			               "block encode: dictionary %" PRIu32 " was prepared for zstd "
			               "level %d, params ask for %d",
			               p->dict->id, p->dict->level, p->level);
	}
	if (dim == 0)
		return ann_err(err, ANN_E_INVAL, "block encode: dimension 0");
	if (count > UINT32_MAX)
		return ann_err(err, ANN_E_INVAL, "block encode: %zu vectors, at most %" PRIu32 " per block",
		               count, UINT32_MAX);
	if (vt != ANN_DTYPE_F32 && vt != ANN_DTYPE_U8 && vt != ANN_DTYPE_I8)
		return ann_err(err, ANN_E_INVAL,
		               "block encode: input element type %d, expected F32, U8 or I8", (int)vt);
	if (count > 0 && (!ids || !vectors))
		return ann_err(err, ANN_E_INVAL, "block encode: %zu vectors but no %s", count,
		               ids ? "vectors" : "ids");
	return ANN_OK;
}

/* Per-dimension median of the row-major 1-byte codes (signed order for I8): the reference
 * that centring subtracts. */
static void code_medians(const uint8_t *codes, size_t count, size_t dim, bool is_signed, uint8_t *ref)
{
	uint8_t flip = is_signed ? 0x80 : 0;
	for (size_t j = 0; j < dim; j++) {
		uint32_t hist[256] = { 0 };
		for (size_t i = 0; i < count; i++)
			hist[codes[i * dim + j] ^ flip]++;
		size_t seen = 0, v = 0;
		while (v < 255 && (seen += hist[v]) <= count / 2)
			v++;
		ref[j] = (uint8_t)(v ^ flip);
	}
}

/* Lays out the row-major codes (count x dim elements of es bytes) as the vector section:
 * optionally centred (1-byte: minus ref[j], modulo 256), then shuffled or not. */
static void layout_vectors(const uint8_t *codes, size_t count, size_t dim, size_t es, bool shuffle,
                           const uint8_t *ref, uint8_t *vec)
{
	size_t elems = count * dim;
	if (es == 1 && ref) {
		for (size_t r = 0; r < count; r++)
			for (size_t j = 0; j < dim; j++)
				vec[shuffle ? j * count + r : r * dim + j] =
				        (uint8_t)(codes[r * dim + j] - ref[j]);
	} else if (!shuffle) {
		memcpy(vec, codes, elems * es);
	} else if (es == 1) {
		for (size_t r = 0; r < count; r++)
			for (size_t j = 0; j < dim; j++)
				vec[j * count + r] = codes[r * dim + j];
	} else {
		for (size_t b = 0; b < es; b++)
			for (size_t i = 0; i < elems; i++)
				vec[b * elems + i] = codes[i * es + b];
	}
}

static int zstd_compress(ann_block_enc *e, const ann_block_params *p, const uint8_t *raw, size_t raw_bytes,
                         uint8_t **z, size_t *z_cap, size_t *z_bytes, uint64_t partition, ann_error *err)
{
	size_t bound = ZSTD_compressBound(raw_bytes);
	if (ZSTD_isError(bound))
		return ann_err(err, ANN_E_INVAL, "block encode: %zu bytes too large for zstd", raw_bytes);
	ANN_TRY(block_grow(z, z_cap, bound, "compressed payload", err));
	size_t zr = ZSTD_CCtx_reset(e->cctx, ZSTD_reset_session_and_parameters);
	if (!ZSTD_isError(zr))
		zr = p->dict ? ZSTD_CCtx_refCDict(e->cctx, p->dict->cdict)
		             : ZSTD_CCtx_setParameter(e->cctx, ZSTD_c_compressionLevel, p->level);
	if (!ZSTD_isError(zr))
		zr = ZSTD_CCtx_setParameter(e->cctx, ZSTD_c_checksumFlag, 1);
	if (!ZSTD_isError(zr))
		zr = ZSTD_CCtx_setParameter(e->cctx, ZSTD_c_dictIDFlag, 0);
	if (!ZSTD_isError(zr))
		zr = ZSTD_compress2(e->cctx, *z, *z_cap, raw, raw_bytes);
	if (ZSTD_isError(zr))
		return ann_err(err,
		               ZSTD_getErrorCode(zr) == ZSTD_error_memory_allocation ? ANN_E_NOMEM
		                                                                     : ANN_E_UNSUPPORTED,
		               "block encode: partition %" PRIu64 ": zstd: %s", partition,
		               ZSTD_getErrorName(zr));
	*z_bytes = zr;
	return ANN_OK;
}

static int encode_with(ann_block_enc *e, const ann_block_params *p, uint32_t dim, size_t count,
                       const int64_t *ids, const void *vectors, ann_dtype vt, uint64_t partition,
                       uint64_t generation, uint8_t **out, size_t *out_len, ann_error *err)
{
	ann_block_encoding enc = p->encoding;
	size_t es = enc_esize(enc);
	size_t elems, vec_bytes, raw_bound;
	size_t params = enc == ANN_BLOCK_SQ8 ? 8 * (size_t)dim : 0;
	if (!ann_mul_ok(count, dim, &elems) || !ann_mul_ok(elems, es, &vec_bytes) ||
	    __builtin_add_overflow(vec_bytes, params + dim + count * VARINT_MAX, &raw_bound))
		return ann_err(err, ANN_E_INVAL,
		               "block encode: %zu x %" PRIu32 " vectors overflow the address space", count,
		               dim);

	/* Order: identity when the ids already ascend (the common case when a partition is
	 * filled by streaming the input), else a stable sort of (id, index). */
	bool sorted = true;
	for (size_t i = 1; i < count && sorted; i++)
		sorted = ids[i - 1] <= ids[i];
	const uint64_t *perm = NULL;
	if (!sorted) {
		ANN_TRY(block_grow(&e->order, &e->order_cap, count * sizeof(sort_pair), "sort order", err));
		sort_pair *sp = (sort_pair *)(void *)e->order;
		for (size_t i = 0; i < count; i++) {
			sp[i].id = ids[i];
			sp[i].idx = i;
		}
		qsort(sp, count, sizeof *sp, cmp_pair);
		/* Keep only the indices, in place: pair i's idx moves to slot i of a u64 array. */
		uint64_t *pi = (uint64_t *)(void *)e->order;
		for (size_t i = 0; i < count; i++)
			pi[i] = sp[i].idx;
		perm = pi;
	}

	ANN_TRY(block_grow(&e->raw, &e->raw_cap, raw_bound, "raw payload", err));
	ANN_TRY(block_grow(&e->codes, &e->codes_cap, vec_bytes, "converted vectors", err));
	ANN_TRY(block_grow(&e->aux, &e->aux_cap, 8 * (size_t)dim + dim, "SQ8 parameters", err));
	uint8_t *raw = e->raw;

	/* Ids: zigzag(first), then deltas in uint64 order (never negative after the sort). */
	size_t ids_bytes = 0;
	uint64_t prev = 0;
	for (size_t r = 0; r < count; r++) {
		int64_t id = ids[perm ? perm[r] : r];
		uint64_t key = (uint64_t)id ^ ORDER_FLIP;
		ids_bytes += put_varint(raw + ids_bytes, r == 0 ? zigzag(id) : key - prev);
		prev = key;
	}
	if (ids_bytes > UINT32_MAX)
		return ann_err(err, ANN_E_INVAL, "block encode: id section of %zu bytes exceeds 4 GiB",
		               ids_bytes);

	float *sq = (float *)(void *)e->aux; /* 2 * dim floats, then dim reference bytes */
	uint8_t *ref = e->aux + 8 * (size_t)dim;
	if (enc == ANN_BLOCK_SQ8) {
		ANN_TRY(sq8_params(vt, vectors, count, dim, ids, sq, err));
		for (uint32_t j = 0; j < 2 * dim; j++)
			ann_stf32(raw + ids_bytes + 4 * (size_t)j, sq[j]);
	}
	size_t row_bytes = (size_t)dim * es;
	for (size_t r = 0; r < count; r++)
		ANN_TRY(encode_row(enc, vt, vectors, perm ? perm[r] : r, dim, sq, ids,
		                   e->codes + r * row_bytes, err));

	/* Centring pays for zstd on clustered data and loses on some (images full of zeros), so
	 * AUTO compresses both layouts and keeps the smaller. */
	bool try_plain = true, try_center = false;
	if (es == 1 && count > 0 && p->codec == ANN_BLOCK_CODEC_ZSTD) {
		try_center = p->center != ANN_BLOCK_CENTER_OFF;
		try_plain = p->center != ANN_BLOCK_CENTER_ON;
	}
	if (try_center)
		code_medians(e->codes, count, dim, enc == ANN_BLOCK_I8, ref);
	bool center = false;
	size_t raw_bytes = 0, stored_bytes = 0;
	const uint8_t *stored = NULL;
	for (int mode = 0; mode < 2; mode++) {
		bool c = mode == 1;
		if ((c && !try_center) || (!c && !try_plain))
			continue;
		uint8_t *vp = raw + ids_bytes + params;
		if (c) {
			memcpy(vp, ref, dim);
			vp += dim;
		}
		layout_vectors(e->codes, count, dim, es, p->shuffle, c ? ref : NULL, vp);
		size_t rb = ids_bytes + params + (c ? dim : 0) + vec_bytes;
		if (p->codec == ANN_BLOCK_CODEC_NONE) {
			raw_bytes = stored_bytes = rb;
			stored = raw;
			break;
		}
		/* The first candidate's frame sits in z, the second's in z2; keep the smaller. */
		uint8_t **zp = stored ? &e->z2 : &e->z;
		size_t *zc = stored ? &e->z2_cap : &e->z_cap;
		size_t zb = 0;
		ANN_TRY(zstd_compress(e, p, raw, rb, zp, zc, &zb, partition, err));
		if (!stored || zb < stored_bytes) {
			stored = *zp;
			stored_bytes = zb;
			raw_bytes = rb;
			center = c;
		}
	}

	size_t total = block_padded_size(BLOCK_HEADER_BYTES + stored_bytes, p->pad);
	if (total == 0)
		return ann_err(err, ANN_E_INVAL, "block encode: %zu payload bytes overflow", stored_bytes);
	uint8_t *blk = ann_aligned_alloc(ANN_PAGE, total);
	if (!blk)
		return ann_err(err, ANN_E_NOMEM,
		               "block encode: partition %" PRIu64 ": cannot allocate %zu bytes", partition,
		               total);
	ann_block_info hi = {
		.encoding = enc,
		.codec = p->codec,
		.flags = (p->shuffle ? BLOCK_FLAG_SHUFFLE : 0) | (p->dict ? BLOCK_FLAG_DICT : 0) |
		         (p->pad == ANN_BLOCK_PAD_LMDB ? BLOCK_FLAG_PAD_LMDB : 0) |
		         (center ? BLOCK_FLAG_CENTER : 0),
		.dim = dim,
		.count = (uint32_t)count,
		.dict_id = p->dict ? p->dict->id : 0,
		.ids_bytes = (uint32_t)ids_bytes,
		.raw_bytes = raw_bytes,
		.stored_bytes = stored_bytes,
		.partition = partition,
		.generation = generation,
		.payload_xxh64 = XXH64(stored, stored_bytes, 0),
	};
	write_header(blk, &hi);
	memcpy(blk + BLOCK_HEADER_BYTES, stored, stored_bytes);
	memset(blk + BLOCK_HEADER_BYTES + stored_bytes, 0, total - BLOCK_HEADER_BYTES - stored_bytes);
	*out = blk;
	*out_len = total;
	return ANN_OK;
}

int block_encode(ann_block_enc *enc, const ann_block_params *p, uint32_t dim, size_t count,
                 const int64_t *ids, const void *vectors, ann_dtype vec_dtype, uint64_t partition,
                 uint64_t generation, uint8_t **out, size_t *out_len, ann_error *err)
{
	*out = NULL;
	*out_len = 0;
	ANN_TRY(check_params(p, dim, count, ids, vectors, vec_dtype, err));
	ann_block_enc *tmp = NULL;
	if (!enc) {
		ANN_TRY(block_enc_new(&tmp, err));
		enc = tmp;
	}
	int rc = encode_with(enc, p, dim, count, ids, vectors, vec_dtype, partition, generation, out, out_len,
	                     err);
	block_enc_free(tmp);
	return rc;
}

/* ---- dictionary training ---------------------------------------------------------------- */

int block_dict_train(const uint8_t *const *blocks, const size_t *block_lens, size_t nblocks, size_t capacity,
                     uint8_t **out, size_t *out_len, ann_error *err)
{
	*out = NULL;
	*out_len = 0;
	if (capacity < BLOCK_DICT_MIN_BYTES)
		return ann_err(err, ANN_E_INVAL, "block dictionary: capacity %zu below zstd's minimum %d",
		               capacity, BLOCK_DICT_MIN_BYTES);
	size_t total = 0, pieces = 0;
	ann_block_info first = { 0 };
	for (size_t k = 0; k < nblocks; k++) {
		ann_block_info in;
		int rc = block_peek(blocks[k], block_lens[k], &in, err);
		if (rc < 0)
			return ann_err_prefix(err, rc, "dictionary sample %zu", k);
		if (in.codec != ANN_BLOCK_CODEC_NONE)
			return ann_err(err, ANN_E_INVAL,
			               "dictionary sample %zu: compressed; samples must use codec NONE", k);
		if (block_lens[k] - in.header_bytes < in.stored_bytes)
			return ann_err(err, ANN_E_INVAL, "dictionary sample %zu: truncated", k);
		if (k == 0)
			first = in;
		if (in.encoding != first.encoding ||
		    (in.flags & BLOCK_FLAG_SHUFFLE) != (first.flags & BLOCK_FLAG_SHUFFLE))
			return ann_err(err, ANN_E_INVAL,
			               "dictionary sample %zu: encoding or shuffle differs from sample 0", k);
		total += (size_t)in.stored_bytes;
		pieces += ((size_t)in.stored_bytes + TRAIN_PIECE - 1) / TRAIN_PIECE;
	}
	if (pieces == 0 || pieces > UINT32_MAX)
		return ann_err(err, ANN_E_INVAL, "block dictionary: %zu training pieces from %zu samples",
		               pieces, nblocks);
	int rc = ANN_OK;
	uint8_t *cat = ann_malloc(total);
	size_t *sizes = ann_malloc(pieces * sizeof *sizes);
	uint8_t *dict = ann_malloc(capacity);
	if (!cat || !sizes || !dict) {
		rc = ann_err(err, ANN_E_NOMEM, "block dictionary: cannot allocate %zu bytes of samples",
		             total);
		goto fail;
	}
	size_t at = 0, np = 0;
	for (size_t k = 0; k < nblocks; k++) {
		size_t n = (size_t)ann_ld64(blocks[k] + H_STORED), hdr = ann_ld16(blocks[k] + H_HDR_BYTES);
		memcpy(cat + at, blocks[k] + hdr, n);
		at += n;
		for (size_t o = 0; o < n; o += TRAIN_PIECE)
			sizes[np++] = ANN_MIN((size_t)TRAIN_PIECE, n - o);
	}
	size_t r = ZDICT_trainFromBuffer(dict, capacity, cat, sizes, (unsigned)np);
	if (ZDICT_isError(r)) {
		rc = ann_err(err, ANN_E_UNSUPPORTED,
		             "block dictionary: zstd could not train on %zu bytes in %zu "
		             "pieces: %s",
		             total, np, ZDICT_getErrorName(r));
		goto fail;
	}
	ann_free(cat);
	ann_free(sizes);
	*out = dict;
	*out_len = r;
	return ANN_OK;
fail:
	ann_free(cat);
	ann_free(sizes);
	ann_free(dict);
	return rc;
}
