/* SPDX-License-Identifier: MIT */
/*
 * block.c: the block codec (docs/FORMAT.md, "Block"), its read side and what both sides
 * need: the id coding (sorted, zigzag first id, varint deltas), binary16, the padding rules,
 * dictionaries, block_peek and decoding (the five vector encodings, the byte shuffle, zstd
 * framing, the xxh64 checksums). block_encode.c is the write side; block_impl.h the header
 * layout and helpers the two share. It does no I/O and keeps no state outside its contexts.
 * Decoding treats every input as hostile: each length is checked against the buffer before
 * it is used, so no input can make it read out of bounds, and every single-bit change of a
 * block is reported as an error.
 */
#define ZSTD_STATIC_LINKING_ONLY /* ZSTD_customMem: route zstd's allocations through ann_malloc */
#include "block_impl.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <xxhash.h>
#include <zstd.h>
#include <zstd_errors.h>

/* ---- small helpers ---------------------------------------------------------------------- */

static void *zmem_alloc(void *opaque, size_t n)
{
	(void)opaque;
	return ann_malloc(n);
}

static void zmem_free(void *opaque, void *p)
{
	(void)opaque;
	ann_free(p);
}

const ZSTD_customMem block_zmem = { zmem_alloc, zmem_free, NULL };

static const char *encoding_name(unsigned e)
{
	switch (e) {
	case ANN_BLOCK_F32: return "F32";
	case ANN_BLOCK_U8: return "U8";
	case ANN_BLOCK_I8: return "I8";
	case ANN_BLOCK_F16: return "F16";
	case ANN_BLOCK_SQ8: return "SQ8";
	default: return "?";
	}
}

static ann_dtype enc_out_dtype(ann_block_encoding e)
{
	return e == ANN_BLOCK_U8 ? ANN_DTYPE_U8 : e == ANN_BLOCK_I8 ? ANN_DTYPE_I8 : ANN_DTYPE_F32;
}

int block_grow(uint8_t **p, size_t *cap, size_t need, const char *what, ann_error *err)
{
	if (need == 0)
		need = 64;
	if (*cap >= need && *p)
		return ANN_OK;
	if (need > SIZE_MAX / 2)
		return ann_err(err, ANN_E_NOMEM, "block: %zu bytes for %s exceed the address space", need, what);
	size_t n = need + need / 8;
	n = ANN_ALIGN_UP(n, 64);
	uint8_t *q = ann_aligned_alloc(64, n);
	if (!q)
		return ann_err(err, ANN_E_NOMEM, "block: cannot allocate %zu bytes for %s", n, what);
	ann_aligned_free(*p);
	*p = q;
	*cap = n;
	return ANN_OK;
}

/* Reads one canonical LEB128 value from [*pp, end). @return false on truncation, more than
 * 64 bits, or a redundant trailing zero byte. */
static inline bool get_varint(const uint8_t **pp, const uint8_t *end, uint64_t *v)
{
	const uint8_t *p = *pp;
	/* The common cases of the id sections' deltas first: one byte, or two
	 * whose second is a canonical last byte (not 0). */
	if (p < end && !(p[0] & 0x80)) {
		*v = p[0];
		*pp = p + 1;
		return true;
	}
	if (end - p >= 2 && p[1] && !(p[1] & 0x80)) {
		*v = (uint64_t)(p[0] & 0x7f) | (uint64_t)p[1] << 7;
		*pp = p + 2;
		return true;
	}
	uint64_t x = 0;
	for (unsigned shift = 0; shift < 64; shift += 7) {
		if (p == end)
			return false;
		uint8_t b = *p++;
		if (shift == 63 && b > 1)
			return false;
		x |= (uint64_t)(b & 0x7f) << shift;
		if (!(b & 0x80)) {
			if (b == 0 && shift != 0)
				return false;
			*v = x;
			*pp = p;
			return true;
		}
	}
	return false;
}

static int64_t unzigzag(uint64_t z)
{
	uint64_t u = (z >> 1) ^ (0 - (z & 1));
	int64_t v;
	memcpy(&v, &u, 8);
	return v;
}

static int64_t from_key(uint64_t key)
{
	uint64_t u = key ^ ORDER_FLIP;
	int64_t v;
	memcpy(&v, &u, 8);
	return v;
}

/* The id section's code (docs/FORMAT.md "Ids"), shared with the codes block. */
size_t block_ids_encode(const int64_t *ids, size_t n, uint8_t *out)
{
	size_t bytes = 0;
	uint64_t prev = 0;
	for (size_t r = 0; r < n; r++) {
		uint64_t key = (uint64_t)ids[r] ^ ORDER_FLIP;
		bytes += put_varint(out + bytes, r == 0 ? zigzag(ids[r]) : key - prev);
		prev = key;
	}
	return bytes;
}

bool block_ids_decode(const uint8_t *p, size_t len, size_t n, int64_t *ids)
{
	const uint8_t *end = p + len;
	uint64_t v, key = 0;
	for (size_t i = 0; i < n; i++) {
		if (!get_varint(&p, end, &v))
			return false;
		if (i == 0) {
			ids[0] = unzigzag(v);
			key = (uint64_t)ids[0] ^ ORDER_FLIP;
			continue;
		}
		if (__builtin_add_overflow(key, v, &key))
			return false;
		ids[i] = from_key(key);
	}
	return p == end;
}

/* ---- IEEE binary16 ---------------------------------------------------------------------- */

uint16_t block_f32_to_f16(float f)
{
	return f32_to_f16(f);
}


/* ---- padding ---------------------------------------------------------------------------- */

size_t block_padded_size(size_t n, ann_block_pad pad)
{
	if (pad == ANN_BLOCK_PAD_FILE) {
		if (n > SIZE_MAX - (ANN_PAGE - 1))
			return 0;
		return n == 0 ? ANN_PAGE : ANN_ALIGN_UP(n, ANN_PAGE);
	}
	if (pad == ANN_BLOCK_PAD_LMDB) {
		if (n > SIZE_MAX - BLOCK_LMDB_PAGE_HEADER - (ANN_PAGE - 1))
			return 0;
		size_t k = (n + BLOCK_LMDB_PAGE_HEADER + ANN_PAGE - 1) / ANN_PAGE;
		return k * ANN_PAGE - BLOCK_LMDB_PAGE_HEADER;
	}
	return 0;
}

/* ---- dictionaries ----------------------------------------------------------------------- */

int block_dict_new(uint32_t id, const void *data, size_t len, int level, ann_block_dict **out, ann_error *err)
{
	*out = NULL;
	if (id == 0)
		return ann_err(err, ANN_E_INVAL, "block dictionary: id 0 is reserved for \"no dictionary\"");
	if (!data || len == 0)
		return ann_err(err, ANN_E_INVAL, "block dictionary %" PRIu32 ": empty", id);
	if (level != BLOCK_DICT_DECODE_ONLY && !level_ok(level))
		return ann_err(err, ANN_E_INVAL, "block dictionary %" PRIu32 ": zstd level %d outside %d..%d",
		               id, level, ZSTD_minCLevel(), ZSTD_maxCLevel());
	ann_block_dict *d = ann_calloc(1, sizeof *d);
	if (!d)
		return ann_err(err, ANN_E_NOMEM, "block dictionary %" PRIu32 ": out of memory", id);
	d->id = id;
	d->level = level;
	d->bytes = len;
	d->ddict = ZSTD_createDDict_advanced(data, len, ZSTD_dlm_byCopy, ZSTD_dct_auto, block_zmem);
	if (!d->ddict)
		goto fail;
	if (level != BLOCK_DICT_DECODE_ONLY) {
		/* zstd 1.5.4 (Debian 12) dereferences NULL in ZSTD_createCDict_advanced2 when an
		 * allocation fails (fixed upstream in 1.5.6, PR #3847), so the CDict uses stdlib
		 * malloc, whose failure is far rarer than an injected one; block_dict_sizeof counts it. */
		ZSTD_compressionParameters cp = ZSTD_getCParams(level, 0, len);
		d->cdict = ZSTD_createCDict_advanced(data, len, ZSTD_dlm_byCopy, ZSTD_dct_auto, cp,
		                                     ZSTD_defaultCMem);
		if (!d->cdict)
			goto fail;
	}
	*out = d;
	return ANN_OK;
fail:
	block_dict_free(d);
	/* zstd reports neither cause; both are allocation failures or a malformed dictionary. */
	return ann_err(err, ANN_E_NOMEM,
	               "block dictionary %" PRIu32 ": zstd could not load %zu bytes "
	               "(out of memory or malformed dictionary)",
	               id, len);
}

void block_dict_free(ann_block_dict *d)
{
	if (!d)
		return;
	ZSTD_freeCDict(d->cdict);
	ZSTD_freeDDict(d->ddict);
	ann_free(d);
}

uint32_t block_dict_id(const ann_block_dict *d)
{
	return d ? d->id : 0;
}

size_t block_dict_sizeof(const ann_block_dict *d)
{
	if (!d)
		return 0;
	return sizeof *d + ZSTD_sizeof_CDict(d->cdict) + ZSTD_sizeof_DDict(d->ddict);
}

/* ---- header ----------------------------------------------------------------------------- */

int block_peek(const void *buf, size_t len, ann_block_info *info, ann_error *err)
{
	const uint8_t *h = buf;
	memset(info, 0, sizeof *info);
	if (!buf || len < H_END)
		return ann_err(err, ANN_E_CORRUPT, "block header: truncated: %zu bytes, need at least %u",
		               len, (unsigned)H_END);
	uint32_t magic = ann_ld32(h + H_MAGIC);
	if (magic != BLOCK_MAGIC)
		return ann_err(err, ANN_E_FORMAT,
		               "block header: bad magic 0x%08" PRIx32 ", expected 0x%08" PRIx32, magic,
		               (uint32_t)BLOCK_MAGIC);
	unsigned major = ann_ld16(h + H_MAJOR), minor = ann_ld16(h + H_MINOR);
	if (major != BLOCK_VERSION_MAJOR)
		return ann_err(err, ANN_E_FORMAT,
		               "block header: format version %u.%u, this reader supports %u.x "
		               "(up to %u.%u)",
		               major, minor, BLOCK_VERSION_MAJOR, BLOCK_VERSION_MAJOR, BLOCK_VERSION_MINOR);
	unsigned hdr = ann_ld16(h + H_HDR_BYTES);
	if (hdr < H_END || hdr > HDR_BYTES_MAX || hdr % 8 != 0)
		return ann_err(err, ANN_E_CORRUPT,
		               "block header: header size %u, expected a multiple of 8 in %u..%u", hdr,
		               (unsigned)H_END, HDR_BYTES_MAX);
	if (len < hdr)
		return ann_err(err, ANN_E_CORRUPT, "block header: truncated: %zu bytes, header size %u", len,
		               hdr);
	uint64_t want = ann_ld64(h + hdr - 8), got = XXH64(h, hdr - 8, 0);
	if (want != got)
		return ann_err(err, ANN_E_CORRUPT,
		               "block header: checksum mismatch (stored %016" PRIx64 ", "
		               "computed %016" PRIx64 "; header claims partition %" PRIu64 ")",
		               want, got, ann_ld64(h + H_PARTITION));

	info->version_major = (uint16_t)major;
	info->version_minor = (uint16_t)minor;
	info->header_bytes = hdr;
	info->flags = ann_ld16(h + H_FLAGS);
	info->dim = ann_ld32(h + H_DIM);
	info->count = ann_ld32(h + H_COUNT);
	info->dict_id = ann_ld32(h + H_DICT_ID);
	info->ids_bytes = ann_ld32(h + H_IDS_BYTES);
	info->raw_bytes = ann_ld64(h + H_RAW_BYTES);
	info->stored_bytes = ann_ld64(h + H_STORED);
	info->partition = ann_ld64(h + H_PARTITION);
	info->generation = ann_ld64(h + H_GENERATION);
	info->payload_xxh64 = ann_ld64(h + H_PAYLOAD_XXH);
	uint64_t part = info->partition;
	unsigned enc = h[H_ENCODING], codec = h[H_CODEC];

	if (!encoding_known(enc))
		return ann_err(err, ANN_E_FORMAT,
		               "block of partition %" PRIu64 ": unknown encoding %u (format %u.%u)", part,
		               enc, major, minor);
	if (codec != ANN_BLOCK_CODEC_NONE && codec != ANN_BLOCK_CODEC_ZSTD)
		return ann_err(err, ANN_E_FORMAT,
		               "block of partition %" PRIu64 ": unknown codec %u (format %u.%u)", part, codec,
		               major, minor);
	if (info->flags & ~BLOCK_FLAGS_KNOWN)
		return ann_err(err, ANN_E_FORMAT,
		               "block of partition %" PRIu64 ": unknown flag bits 0x%" PRIx32
		               " (format %u.%u)",
		               part, info->flags & ~BLOCK_FLAGS_KNOWN, major, minor);
	if (ann_ld16(h + H_RESERVED) != 0)
		return ann_err(err, ANN_E_FORMAT,
		               "block of partition %" PRIu64 ": reserved field is %u, expected 0", part,
		               ann_ld16(h + H_RESERVED));
	info->encoding = (ann_block_encoding)enc;
	info->codec = (ann_block_codec)codec;
	info->vec_dtype = enc_out_dtype(info->encoding);

	if (info->dim == 0)
		return ann_err(err, ANN_E_CORRUPT, "block of partition %" PRIu64 ": dimension 0", part);
	bool has_dict = info->flags & BLOCK_FLAG_DICT;
	if (has_dict != (info->dict_id != 0) || (has_dict && info->codec != ANN_BLOCK_CODEC_ZSTD))
		return ann_err(err, ANN_E_CORRUPT,
		               "block of partition %" PRIu64 ": dictionary flag %d, id %" PRIu32
		               ", codec %u are inconsistent",
		               part, has_dict, info->dict_id, codec);
	bool center = info->flags & BLOCK_FLAG_CENTER;
	if (center && enc_esize(info->encoding) != 1)
		return ann_err(err, ANN_E_CORRUPT,
		               "block of partition %" PRIu64 ": centring flag on %s vectors", part,
		               encoding_name(enc));
	uint64_t n = info->count;
	if (info->ids_bytes < n || info->ids_bytes > n * VARINT_MAX)
		return ann_err(err, ANN_E_CORRUPT,
		               "block of partition %" PRIu64 ": id section of %" PRIu32 " bytes for %" PRIu64
		               " ids",
		               part, info->ids_bytes, n);
	uint64_t elems = n * info->dim; /* < 2^64: both factors < 2^32 */
	uint64_t vec_bytes, raw;
	uint64_t params =
	        (info->encoding == ANN_BLOCK_SQ8 ? 8 * (uint64_t)info->dim : 0) + (center ? info->dim : 0);
	if (__builtin_mul_overflow(elems, (uint64_t)enc_esize(info->encoding), &vec_bytes) ||
	    __builtin_add_overflow(vec_bytes, params + info->ids_bytes, &raw) || raw != info->raw_bytes)
		return ann_err(err, ANN_E_CORRUPT,
		               "block of partition %" PRIu64 ": raw payload length %" PRIu64
		               " does not match %" PRIu64 " x %" PRIu32 " %s vectors and %" PRIu32
		               " id bytes",
		               part, info->raw_bytes, n, info->dim, encoding_name(enc), info->ids_bytes);
	if (info->codec == ANN_BLOCK_CODEC_NONE && info->stored_bytes != info->raw_bytes)
		return ann_err(err, ANN_E_CORRUPT,
		               "block of partition %" PRIu64 ": uncompressed payload stores %" PRIu64
		               " bytes, raw length is %" PRIu64,
		               part, info->stored_bytes, info->raw_bytes);
	uint64_t unpadded;
	size_t total = 0;
	if (!__builtin_add_overflow(info->stored_bytes, (uint64_t)hdr, &unpadded) && unpadded <= SIZE_MAX)
		total = block_padded_size((size_t)unpadded, (info->flags & BLOCK_FLAG_PAD_LMDB)
		                                                    ? ANN_BLOCK_PAD_LMDB
		                                                    : ANN_BLOCK_PAD_FILE);
	if (total == 0)
		return ann_err(err, ANN_E_CORRUPT,
		               "block of partition %" PRIu64 ": stored length %" PRIu64 " is too large", part,
		               info->stored_bytes);
	info->total_bytes = total;
	size_t oes = info->vec_dtype == ANN_DTYPE_F32 ? 4 : 1;
	if (elems > SIZE_MAX / oes || n > SIZE_MAX / 8)
		return ann_err(err, ANN_E_CORRUPT, "block of partition %" PRIu64 ": decoded size overflows",
		               part);
	info->ids_out_bytes = (size_t)n * 8;
	info->vec_out_bytes = (size_t)elems * oes;
	return ANN_OK;
}

/* ---- decoding --------------------------------------------------------------------------- */

struct ann_block_dec {
	ZSTD_DCtx *dctx;
	size_t max_decoded; /* limit on raw payload and on decoded ids + vectors, bytes */
	uint8_t *raw;       /* decompressed payload */
	size_t raw_cap;
	uint8_t *ids; /* block_decode's id output */
	size_t ids_cap;
	uint8_t *vec; /* block_decode's vector output */
	size_t vec_cap;
	uint8_t *tile; /* SQ8 shuffle: TILE rows of codes */
	size_t tile_cap;
};

#define TILE 32u /* rows per transpose tile (a multiple of 8) */

int block_dec_new(size_t max_decoded_bytes, ann_block_dec **out, ann_error *err)
{
	*out = NULL;
	ann_block_dec *d = ann_calloc(1, sizeof *d);
	if (!d)
		return ann_err(err, ANN_E_NOMEM, "block decoder: out of memory");
	d->max_decoded = max_decoded_bytes ? max_decoded_bytes : BLOCK_DEFAULT_MAX_DECODED;
	d->dctx = ZSTD_createDCtx_advanced(block_zmem);
	if (!d->dctx) {
		ann_free(d);
		return ann_err(err, ANN_E_NOMEM, "block decoder: cannot create a zstd context");
	}
	*out = d;
	return ANN_OK;
}

void block_dec_free(ann_block_dec *d)
{
	if (!d)
		return;
	ZSTD_freeDCtx(d->dctx);
	ann_aligned_free(d->raw);
	ann_aligned_free(d->ids);
	ann_aligned_free(d->vec);
	ann_aligned_free(d->tile);
	ann_free(d);
}

size_t block_dec_sizeof(const ann_block_dec *d)
{
	if (!d)
		return 0;
	return sizeof *d + ZSTD_sizeof_DCtx(d->dctx) + d->raw_cap + d->ids_cap + d->vec_cap + d->tile_cap;
}

static inline void st_f32(uint8_t *o, float f)
{
	memcpy(o, &f, 4);
}

static inline void st_u32(uint8_t *o, uint32_t v)
{
	memcpy(o, &v, 4);
}

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define HOST_LE 1
#else
#define HOST_LE 0
#endif

static inline uint64_t ld64_host(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, 8);
	return v;
}

#if HOST_LE
/* Transposes an 8x8 byte matrix held as 8 little-endian words (row k = word k, column c =
 * byte c) in place, by swapping 4x4, then 2x2, then 1x1 sub-blocks. */
static inline void transpose8x8(uint64_t x[8])
{
	const uint64_t m32 = UINT64_C(0x00000000ffffffff);
	const uint64_t m16 = UINT64_C(0x0000ffff0000ffff);
	const uint64_t m8 = UINT64_C(0x00ff00ff00ff00ff);
	static const int pair2[4] = { 0, 1, 4, 5 };
	for (int k = 0; k < 4; k++) {
		uint64_t a = x[k], b = x[k + 4];
		x[k] = (a & m32) | (b << 32);
		x[k + 4] = (a >> 32) | (b & ~m32);
	}
	for (int t = 0; t < 4; t++) {
		int k = pair2[t];
		uint64_t a = x[k], b = x[k + 2];
		x[k] = (a & m16) | ((b & m16) << 16);
		x[k + 2] = ((a >> 16) & m16) | (b & ~m16);
	}
	for (int k = 0; k < 8; k += 2) {
		uint64_t a = x[k], b = x[k + 1];
		x[k] = (a & m8) | ((b & m8) << 8);
		x[k + 1] = ((a >> 8) & m8) | (b & ~m8);
	}
}
#endif

/* Rows [i0, i0 + nr) of a column-major count x dim byte matrix (column j at col + j * count)
 * into row-major out (row stride dim). */
static void cols_to_rows(const uint8_t *col, size_t count, size_t dim, size_t i0, size_t nr, uint8_t *out)
{
	size_t i8 = 0;
#if HOST_LE
	size_t j8 = dim & ~(size_t)7;
	i8 = nr & ~(size_t)7;
	for (size_t i = 0; i < i8; i += 8) {
		for (size_t j = 0; j < j8; j += 8) {
			uint64_t x[8];
			for (int k = 0; k < 8; k++)
				x[k] = ld64_host(col + (j + (size_t)k) * count + i0 + i);
			transpose8x8(x);
			for (int k = 0; k < 8; k++)
				memcpy(out + (i + (size_t)k) * dim + j, &x[k], 8);
		}
		for (size_t j = j8; j < dim; j++)
			for (size_t k = 0; k < 8; k++)
				out[(i + k) * dim + j] = col[j * count + i0 + i + k];
	}
#endif
	for (size_t i = i8; i < nr; i++)
		for (size_t j = 0; j < dim; j++)
			out[i * dim + j] = col[j * count + i0 + i];
}

static void sq8_row(const uint8_t *code, const float *off, const float *scale, const uint8_t *ref, size_t dim,
                    uint8_t *out)
{
	for (size_t j = 0; j < dim; j++)
		st_f32(out + 4 * j, off[j] + scale[j] * (float)(uint8_t)(code[j] + ref[j]));
}

/* out[j] = in[j] + ref[j] modulo 256; in may equal out. */
static void add_ref_row(uint8_t *out, const uint8_t *in, const uint8_t *ref, size_t dim)
{
	for (size_t j = 0; j < dim; j++)
		out[j] = (uint8_t)(in[j] + ref[j]);
}

/* Decodes the vector section vs (count x dim stored elements) into out. ref: the dim
 * reference bytes of a centred block, else NULL; sq: the SQ8 parameters, else NULL. */
static int decode_vectors(ann_block_dec *d, const ann_block_info *in, const uint8_t *vs, const uint8_t *ref,
                          const uint8_t *sq, uint8_t *out, ann_error *err)
{
	size_t count = in->count, dim = in->dim, n = count * dim;
	bool shuf = in->flags & BLOCK_FLAG_SHUFFLE;
	if (n == 0)
		return ANN_OK;
	switch (in->encoding) {
	case ANN_BLOCK_F32:
		if (!shuf) {
			if (HOST_LE) {
				memcpy(out, vs, n * 4);
			} else {
				for (size_t i = 0; i < n; i++)
					st_f32(out + 4 * i, ann_ldf32(vs + 4 * i));
			}
		} else {
			const uint8_t *p0 = vs, *p1 = vs + n, *p2 = vs + 2 * n, *p3 = vs + 3 * n;
			for (size_t i = 0; i < n; i++)
				st_u32(out + 4 * i, (uint32_t)p0[i] | (uint32_t)p1[i] << 8 |
				                            (uint32_t)p2[i] << 16 | (uint32_t)p3[i] << 24);
		}
		break;
	case ANN_BLOCK_F16:
		if (!shuf) {
			for (size_t i = 0; i < n; i++)
				st_f32(out + 4 * i, block_f16_to_f32(ann_ld16(vs + 2 * i)));
		} else {
			const uint8_t *p0 = vs, *p1 = vs + n;
			for (size_t i = 0; i < n; i++)
				st_f32(out + 4 * i, block_f16_to_f32((uint16_t)(p0[i] | p1[i] << 8)));
		}
		break;
	case ANN_BLOCK_U8:
	case ANN_BLOCK_I8:
		if (!shuf && !ref) {
			memcpy(out, vs, n);
		} else if (!shuf) {
			for (size_t i = 0; i < count; i++)
				add_ref_row(out + i * dim, vs + i * dim, ref, dim);
		} else {
			for (size_t i0 = 0; i0 < count; i0 += TILE) {
				size_t nr = ANN_MIN((size_t)TILE, count - i0);
				cols_to_rows(vs, count, dim, i0, nr, out + i0 * dim);
				for (size_t i = 0; ref && i < nr; i++)
					add_ref_row(out + (i0 + i) * dim, out + (i0 + i) * dim, ref, dim);
			}
		}
		break;
	case ANN_BLOCK_SQ8: {
		/* The parameters sit byte-aligned in the raw payload; copy them, with the
		 * reference (zeros when not centred), next to the tile as aligned arrays. */
		size_t tile = ANN_ALIGN_UP((size_t)TILE * dim, 64);
		ANN_TRY(block_grow(&d->tile, &d->tile_cap, tile + 9 * dim, "SQ8 tile", err));
		float *off = (float *)(void *)(d->tile + tile);
		float *scale = off + dim;
		uint8_t *r8 = (uint8_t *)(scale + dim);
		for (size_t j = 0; j < dim; j++) {
			off[j] = ann_ldf32(sq + 4 * j);
			scale[j] = ann_ldf32(sq + 4 * (dim + j));
			r8[j] = ref ? ref[j] : 0;
			if (!isfinite(off[j]) || !(scale[j] >= 0) || !isfinite(off[j] + 255.0f * scale[j]))
				return ann_err(err, ANN_E_CORRUPT,
				               "block of partition %" PRIu64 ": SQ8 dim %zu: offset "
				               "%g, scale %g are not finite and non-negative",
				               in->partition, j, (double)off[j], (double)scale[j]);
		}
		if (!shuf) {
			for (size_t i = 0; i < count; i++)
				sq8_row(vs + i * dim, off, scale, r8, dim, out + 4 * i * dim);
		} else {
			for (size_t i0 = 0; i0 < count; i0 += TILE) {
				size_t nr = ANN_MIN((size_t)TILE, count - i0);
				cols_to_rows(vs, count, dim, i0, nr, d->tile);
				for (size_t i = 0; i < nr; i++)
					sq8_row(d->tile + i * dim, off, scale, r8, dim,
					        out + 4 * (i0 + i) * dim);
			}
		}
		break;
	}
	}
	return ANN_OK;
}

static int decode_ids(const ann_block_info *in, const uint8_t *p, int64_t *ids, ann_error *err)
{
	const uint8_t *end = p + in->ids_bytes;
	uint64_t v, key = 0;
	for (uint32_t i = 0; i < in->count; i++) {
		if (!get_varint(&p, end, &v))
			return ann_err(err, ANN_E_CORRUPT,
			               "block of partition %" PRIu64 ": id %" PRIu32 " of %" PRIu32
			               ": bad varint",
			               in->partition, i, in->count);
		if (i == 0) {
			ids[0] = unzigzag(v);
			key = (uint64_t)ids[0] ^ ORDER_FLIP;
			continue;
		}
		if (__builtin_add_overflow(key, v, &key))
			return ann_err(err, ANN_E_CORRUPT,
			               "block of partition %" PRIu64 ": id %" PRIu32 " overflows",
			               in->partition, i);
		ids[i] = from_key(key);
	}
	if (p != end)
		return ann_err(err, ANN_E_CORRUPT,
		               "block of partition %" PRIu64 ": id section has %td trailing bytes",
		               in->partition, end - p);
	return ANN_OK;
}

/* The raw payload, and the decoded ids + vectors, must each fit in max_decoded. */
static int check_limit(const ann_block_dec *d, const ann_block_info *in, ann_error *err)
{
	if (in->raw_bytes > d->max_decoded || in->ids_out_bytes > d->max_decoded ||
	    in->vec_out_bytes > d->max_decoded - in->ids_out_bytes)
		return ann_err(err, ANN_E_CORRUPT,
		               "block of partition %" PRIu64 ": decodes to %" PRIu64 " raw and "
		               "%zu + %zu output bytes, above this decoder's limit of %zu bytes",
		               in->partition, in->raw_bytes, in->ids_out_bytes, in->vec_out_bytes,
		               d->max_decoded);
	return ANN_OK;
}

/* Everything after the header check. */
static int decode_payload(ann_block_dec *d, const uint8_t *b, size_t len, const ann_block_dict *dict,
                          const ann_block_info *in, int64_t *ids, uint8_t *vec, ann_error *err)
{
	uint64_t part = in->partition;
	if (len < in->total_bytes)
		return ann_err(err, ANN_E_CORRUPT,
		               "block of partition %" PRIu64 ": truncated: %zu bytes, header "
		               "says %" PRIu64,
		               part, len, in->total_bytes);
	size_t pay_end = (size_t)(in->header_bytes + in->stored_bytes);
	uint64_t nz = 0;
	size_t i = pay_end;
	for (; i + 8 <= in->total_bytes; i += 8)
		nz |= ld64_host(b + i);
	for (; i < in->total_bytes; i++)
		nz |= b[i];
	if (nz)
		return ann_err(err, ANN_E_CORRUPT,
		               "block of partition %" PRIu64 ": padding after byte %zu is not zero", part,
		               pay_end);
	ANN_TRY(check_limit(d, in, err));
	if (in->flags & BLOCK_FLAG_DICT) {
		if (!dict)
			return ann_err(err, ANN_E_NOTFOUND,
			               "block of partition %" PRIu64 ": needs zstd dictionary %" PRIu32
			               ", none given",
			               part, in->dict_id);
		if (dict->id != in->dict_id)
			return ann_err(err, ANN_E_NOTFOUND,
			               "block of partition %" PRIu64 ": needs zstd dictionary %" PRIu32
			               ", given dictionary %" PRIu32,
			               part, in->dict_id, dict->id);
	}
	const uint8_t *stored = b + in->header_bytes;
	uint64_t h = XXH64(stored, (size_t)in->stored_bytes, 0);
	if (h != in->payload_xxh64)
		return ann_err(err, ANN_E_CORRUPT,
		               "block of partition %" PRIu64 ": payload checksum mismatch "
		               "(stored %016" PRIx64 ", computed %016" PRIx64 ")",
		               part, in->payload_xxh64, h);
	const uint8_t *raw = stored;
	if (in->codec == ANN_BLOCK_CODEC_ZSTD) {
		ANN_TRY(block_grow(&d->raw, &d->raw_cap, (size_t)in->raw_bytes, "decompressed payload", err));
		size_t r = (in->flags & BLOCK_FLAG_DICT)
		                   ? ZSTD_decompress_usingDDict(d->dctx, d->raw, (size_t)in->raw_bytes,
		                                                stored, (size_t)in->stored_bytes, dict->ddict)
		                   : ZSTD_decompressDCtx(d->dctx, d->raw, (size_t)in->raw_bytes, stored,
		                                         (size_t)in->stored_bytes);
		if (ZSTD_isError(r))
			return ann_err(err,
			               ZSTD_getErrorCode(r) == ZSTD_error_memory_allocation ? ANN_E_NOMEM
			                                                                    : ANN_E_CORRUPT,
			               "block of partition %" PRIu64 ": zstd: %s", part,
			               ZSTD_getErrorName(r));
		if (r != in->raw_bytes)
			return ann_err(err, ANN_E_CORRUPT,
			               "block of partition %" PRIu64 ": zstd gave %zu bytes, header "
			               "says %" PRIu64,
			               part, r, in->raw_bytes);
		raw = d->raw;
	}
	ANN_TRY(decode_ids(in, raw, ids, err));
	/* Raw payload: ids | SQ8 parameters (8 * dim) | reference (dim, centred only) | vectors */
	const uint8_t *sq = in->encoding == ANN_BLOCK_SQ8 ? raw + in->ids_bytes : NULL;
	const uint8_t *ref = raw + in->ids_bytes + (sq ? 8 * (size_t)in->dim : 0);
	const uint8_t *vs = ref + ((in->flags & BLOCK_FLAG_CENTER) ? in->dim : 0);
	return decode_vectors(d, in, vs, (in->flags & BLOCK_FLAG_CENTER) ? ref : NULL, sq, vec, err);
}

int block_decode_into(ann_block_dec *d, const void *buf, size_t len, const ann_block_dict *dict, int64_t *ids,
                      size_t ids_cap, void *vectors, size_t vec_cap, ann_block_info *info, ann_error *err)
{
	ann_block_info tmp, *in = info ? info : &tmp;
	ANN_TRY(block_peek(buf, len, in, err));
	if (ids_cap < in->ids_out_bytes || vec_cap < in->vec_out_bytes ||
	    (in->count > 0 && (!ids || !vectors)))
		return ann_err(err, ANN_E_INVAL,
		               "block of partition %" PRIu64 ": output buffers of %zu and %zu bytes,"
		               " need %zu and %zu",
		               in->partition, ids_cap, vec_cap, in->ids_out_bytes, in->vec_out_bytes);
	return decode_payload(d, buf, len, dict, in, ids, vectors, err);
}

int block_decode(ann_block_dec *d, const void *buf, size_t len, const ann_block_dict *dict,
                 ann_block_view *out, ann_error *err)
{
	memset(out, 0, sizeof *out);
	ann_block_info *in = &out->info;
	ANN_TRY(block_peek(buf, len, in, err));
	/* Refuse oversized blocks before growing any buffer for them. */
	ANN_TRY(check_limit(d, in, err));
	ANN_TRY(block_grow(&d->ids, &d->ids_cap, in->ids_out_bytes, "decoded ids", err));
	ANN_TRY(block_grow(&d->vec, &d->vec_cap, in->vec_out_bytes, "decoded vectors", err));
	int rc = decode_payload(d, buf, len, dict, in, (int64_t *)(void *)d->ids, d->vec, err);
	if (rc < 0)
		return rc;
	out->ids = (const int64_t *)(void *)d->ids;
	out->vectors = d->vec;
	return ANN_OK;
}
