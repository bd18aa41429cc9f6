/* SPDX-License-Identifier: MIT */
/*
 * block.h: the block codec. One partition is one block: a fixed 80-byte header, the payload
 * (ids delta+varint coded, then the vectors in one of five encodings, optionally centred and
 * byte-shuffled, optionally zstd-compressed with a trained dictionary) and zero padding to the store's unit.
 * This module owns the byte layout (docs/FORMAT.md, "Block"), the checksums and the padding
 * rules; it does no I/O. Stores and the catalog read blocks through block_peek/block_decode.
 */
#ifndef ANN_BLOCK_H
#define ANN_BLOCK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common.h"

/* Format version written by this code (docs/FORMAT.md, "Version"). A reader accepts any minor
 * of its major and refuses another major with ANN_E_FORMAT. */
#define BLOCK_VERSION_MAJOR 1
#define BLOCK_VERSION_MINOR 0
/* On disk F7 0C B1 A1: non-ASCII, four distinct bytes. */
#define BLOCK_MAGIC 0xA1B10CF7u
/* Header size of format 1.0 (a later minor may be longer). */
#define BLOCK_HEADER_BYTES 80u
/* Bytes LMDB puts in front of a value stored in overflow pages. */
#define BLOCK_LMDB_PAGE_HEADER    16u
#define BLOCK_DEFAULT_MAX_DECODED ((size_t)256 << 20)

/* Element encoding of the stored vectors. The values equal ann_dtype where both exist. */
typedef enum ann_block_encoding {
	ANN_BLOCK_F32 = 0, /* IEEE binary32, decodes to float */
	ANN_BLOCK_U8 = 1,  /* unsigned bytes, decodes to uint8_t */
	ANN_BLOCK_I8 = 2,  /* signed bytes, decodes to int8_t */
	ANN_BLOCK_F16 = 4, /* IEEE binary16 (round to nearest even), decodes to float */
	ANN_BLOCK_SQ8 = 5, /* 8-bit scalar quantisation, per-dimension offset and scale; decodes to float */
} ann_block_encoding;

typedef enum ann_block_codec {
	ANN_BLOCK_CODEC_NONE = 0,
	ANN_BLOCK_CODEC_ZSTD = 1,
} ann_block_codec;

/* Padding of the whole block (header + payload + zeros). */
typedef enum ann_block_pad {
	ANN_BLOCK_PAD_FILE = 0, /* total is a multiple of 4096 (O_DIRECT file store) */
	ANN_BLOCK_PAD_LMDB = 1, /* total is 4096*k - 16: exactly k overflow pages in LMDB */
} ann_block_pad;

/* Header flag bits; any other bit set is ANN_E_FORMAT. */
#define BLOCK_FLAG_SHUFFLE  0x1u /* vectors byte-shuffled (multi-byte) or column-major (1-byte) */
#define BLOCK_FLAG_DICT     0x2u /* zstd frame needs dictionary dict_id */
#define BLOCK_FLAG_PAD_LMDB 0x4u /* padded for LMDB (else for the file store) */
#define BLOCK_FLAG_CENTER   0x8u /* 1-byte codes stored minus a per-dimension reference, mod 256 */
#define BLOCK_FLAGS_KNOWN   0xfu

/* Centring of 1-byte encodings (U8, I8, SQ8) before zstd: each dimension's median is
 * subtracted (modulo 256), which narrows the byte histogram of clustered data. */
typedef enum ann_block_center {
	ANN_BLOCK_CENTER_AUTO = 0, /* compress with and without, keep the smaller (2x encode time) */
	ANN_BLOCK_CENTER_OFF = 1,
	ANN_BLOCK_CENTER_ON = 2,
} ann_block_center;

/* A zstd dictionary with its id, shared read-only by any number of encoders and decoders
 * in any threads. Holds a ZSTD_DDict and, when built with a level, a ZSTD_CDict. */
typedef struct ann_block_dict ann_block_dict;

/* Encoding parameters: a plain struct owned by the caller; block_params_init sets defaults. */
typedef struct ann_block_params {
	ann_block_encoding encoding; /* default ANN_BLOCK_F32 */
	ann_block_codec codec;       /* default ANN_BLOCK_CODEC_ZSTD */
	int level;                   /* zstd level, ZSTD_minCLevel()..ZSTD_maxCLevel(), 0 = zstd's default;
	                                with a dictionary it must equal the dictionary's level */
	bool shuffle;                /* default true */
	ann_block_center center;     /* default AUTO; only 1-byte encodings with codec ZSTD centre */
	ann_block_pad pad;           /* default ANN_BLOCK_PAD_FILE */
	const ann_block_dict *dict;  /* NULL (default) or a dictionary built with a level; codec ZSTD only */
} ann_block_params;

/* Everything the header says, after validation (block_peek). */
typedef struct ann_block_info {
	uint16_t version_major, version_minor;
	uint32_t header_bytes; /* 80 for format 1.0 */
	ann_block_encoding encoding;
	ann_block_codec codec;
	uint32_t flags;        /* BLOCK_FLAG_* */
	uint32_t dim;          /* >= 1 */
	uint32_t count;        /* vectors in the block, may be 0 */
	uint32_t dict_id;      /* 0 = no dictionary */
	uint32_t ids_bytes;    /* bytes of the varint id section inside the raw payload */
	uint64_t raw_bytes;    /* decompressed payload bytes */
	uint64_t stored_bytes; /* payload bytes as stored (compressed) after the header */
	uint64_t partition;
	uint64_t generation;
	uint64_t payload_xxh64; /* XXH64 (seed 0) of the stored payload */
	uint64_t total_bytes;   /* header + stored payload + padding: the bytes to read */
	ann_dtype vec_dtype;    /* decoded element type: F32 (F32, F16, SQ8), U8 or I8 */
	size_t ids_out_bytes;   /* decoded ids: count * 8 */
	size_t vec_out_bytes;   /* decoded vectors: count * dim * sizeof(element of vec_dtype) */
} ann_block_info;

/* Decoded block. Pointers are owned by the decoder and valid until its next decode or free. */
typedef struct ann_block_view {
	ann_block_info info;
	const int64_t *ids;  /* info.count ids, ascending (ties keep the encoder's input order) */
	const void *vectors; /* info.count rows of info.dim elements of info.vec_dtype, 64-byte aligned */
} ann_block_view;

typedef struct ann_block_enc ann_block_enc;
typedef struct ann_block_dec ann_block_dec;

/* ---- sizes ------------------------------------------------------------------------------ */

/* @return the padded total for an unpadded length n (header + stored payload) in mode pad:
 * FILE: the next multiple of 4096 >= n; LMDB: 4096*k - 16 for the smallest k >= 1 that fits n.
 * Returns 0 if that overflows size_t or pad is unknown. */
size_t block_padded_size(size_t n, ann_block_pad pad);

/* ---- encoding --------------------------------------------------------------------------- */

void block_params_init(ann_block_params *p);

/* Encoder context (ZSTD_CCtx + scratch), one per thread. Scratch grows to the largest block
 * encoded so far: about count * (dim * 8 + 26) bytes plus zstd's bound; block_enc_sizeof
 * reports it. Free accepts NULL. */
int block_enc_new(ann_block_enc **out, ann_error *err);
void block_enc_free(ann_block_enc *enc);
size_t block_enc_sizeof(const ann_block_enc *enc);

/* Encodes count vectors of dim elements (row-major, element type vec_dtype: ANN_DTYPE_F32,
 * U8 or I8) with their ids into a new block. enc may be NULL (a temporary context is used).
 * The pairs are sorted by id (stable). Element rules: float input must be finite; F16 needs
 * |x| < 65520; U8 and I8 need integral values in range (float input converts exactly);
 * a violation is ANN_E_INVAL naming the vector, its id, the dimension and the value.
 * *out gets a buffer from ann_aligned_alloc(4096, ...) of *out_len bytes (padded, zeros after
 * the payload); the caller frees it with ann_aligned_free. *out is NULL after a failure.
 * @return ANN_OK, ANN_E_INVAL (bad params or input), ANN_E_NOMEM, ANN_E_UNSUPPORTED (zstd
 * failure). */
int block_encode(ann_block_enc *enc, const ann_block_params *p, uint32_t dim, size_t count,
                 const int64_t *ids, const void *vectors, ann_dtype vec_dtype, uint64_t partition,
                 uint64_t generation, uint8_t **out, size_t *out_len, ann_error *err);

/* ---- decoding --------------------------------------------------------------------------- */

/* Validates the header only (magic, version, header checksum, field values and the length
 * arithmetic; needs len >= the header size) and fills *info. The payload is not read.
 * @return ANN_OK, ANN_E_FORMAT (magic, other major, unknown encoding/codec/flag bits),
 * ANN_E_CORRUPT (checksum or inconsistent fields). */
int block_peek(const void *buf, size_t len, ann_block_info *info, ann_error *err);

/* Decoder context (ZSTD_DCtx + scratch), one per searcher thread. max_decoded_bytes (0 =
 * BLOCK_DEFAULT_MAX_DECODED) bounds what a block may ask for: its raw payload and its decoded
 * ids + vectors must each fit, else ANN_E_CORRUPT. Scratch is therefore at most
 * 2 * max_decoded_bytes and is kept between calls, so steady-state decoding does not
 * allocate. Free accepts NULL. */
int block_dec_new(size_t max_decoded_bytes, ann_block_dec **out, ann_error *err);
void block_dec_free(ann_block_dec *dec);
size_t block_dec_sizeof(const ann_block_dec *dec);

/* Decodes the block in buf[0, len) (len >= info.total_bytes; bytes after it are ignored) into
 * buffers owned by dec (view valid until the next decode/free on dec). dict is needed exactly
 * when the block names a dictionary (ANN_E_NOTFOUND naming the id otherwise) and ignored
 * otherwise. Checks, in order: header (as block_peek), length, zero padding, size limit,
 * payload xxh64, zstd frame (with its content checksum), ids, SQ8 parameters.
 * @return ANN_OK, ANN_E_FORMAT, ANN_E_CORRUPT (naming the partition), ANN_E_NOTFOUND,
 * ANN_E_NOMEM. */
int block_decode(ann_block_dec *dec, const void *buf, size_t len, const ann_block_dict *dict,
                 ann_block_view *out, ann_error *err);

/* As block_decode, but writes ids (ids_cap bytes) and vectors (vec_cap bytes) to caller
 * buffers, which must hold info.ids_out_bytes and info.vec_out_bytes (ANN_E_INVAL otherwise;
 * learn them with block_peek). info may be NULL. */
int block_decode_into(ann_block_dec *dec, const void *buf, size_t len, const ann_block_dict *dict,
                      int64_t *ids, size_t ids_cap, void *vectors, size_t vec_cap, ann_block_info *info,
                      ann_error *err);

/* ---- dictionaries ----------------------------------------------------------------------- */

/* Trains a zstd dictionary of at most capacity bytes (ZDICT_trainFromBuffer) from sample
 * blocks encoded with codec NONE and the encoding and shuffle the dictionary will serve.
 * Their payloads are cut into pieces of at most 16 KiB as training samples. *out gets an
 * ann_malloc'd buffer of *out_len bytes. Memory: a copy of the payloads plus zstd's ~6 MB
 * (zstd allocates that itself). @return ANN_OK, ANN_E_INVAL (bad or compressed sample),
 * ANN_E_UNSUPPORTED (zstd could not train: too few or too small samples), ANN_E_NOMEM. */
int block_dict_train(const uint8_t *const *blocks, const size_t *block_lens, size_t nblocks, size_t capacity,
                     uint8_t **out, size_t *out_len, ann_error *err);

/* Loads a dictionary (trained or raw content) under id (>= 1, written into block headers).
 * level: the zstd level blocks will be encoded at, or BLOCK_DICT_DECODE_ONLY to skip the
 * compression tables. The bytes are copied. */
#define BLOCK_DICT_DECODE_ONLY (-1000000)
int block_dict_new(uint32_t id, const void *data, size_t len, int level, ann_block_dict **out,
                   ann_error *err);
void block_dict_free(ann_block_dict *dict);
uint32_t block_dict_id(const ann_block_dict *dict);
size_t block_dict_sizeof(const ann_block_dict *dict);

/* ---- helpers shared with tests ----------------------------------------------------------- */

/* The id section's code (docs/FORMAT.md "Ids"): n ids, ascending, as LEB128
 * varints (zigzag first, then deltas in unsigned order) into out, which holds
 * 10 * n bytes; @return the bytes written. decode: false unless exactly len
 * bytes hold n canonical varints without overflow. */
size_t block_ids_encode(const int64_t *ids, size_t n, uint8_t *out);
bool block_ids_decode(const uint8_t *p, size_t len, size_t n, int64_t *ids);

/* IEEE binary16 conversion, portable scalar code. f32->f16 rounds to nearest even; overflow
 * gives infinity, NaN stays NaN (quiet). f16->f32 is exact. */
uint16_t block_f32_to_f16(float f);
/* Inline and branch-free, so that decode loops (block.c's F16 decoding, the
 * codes block's slim factors) vectorise or at least pay no call; subnormals
 * go through an exact integer to float conversion, so the result does not
 * depend on the FPU's denormal mode. */
static inline float block_f16_to_f32(uint16_t h)
{
	uint32_t em = h & 0x7fffu;
	uint32_t normal = (em << 13) + ((uint32_t)(127 - 15) << 23);
	float sf = (float)(int32_t)em * 0x1p-24f;
	uint32_t sub;
	memcpy(&sub, &sf, 4);
	uint32_t is_sub = 0u - (uint32_t)(em < 0x0400u), is_special = 0u - (uint32_t)(em >= 0x7c00u);
	uint32_t bits = (sub & is_sub) | (normal & ~is_sub);
	bits |= is_special & 0x7f800000u;
	bits |= (uint32_t)(h & 0x8000u) << 16;
	float f;
	memcpy(&f, &bits, 4);
	return f;
}

#endif /* ANN_BLOCK_H */
