/* SPDX-License-Identifier: MIT */
/*
 * block_impl.h: what the two files of the block codec share: the header
 * layout (docs/FORMAT.md "Block header"), the dictionary, zstd's allocator,
 * the binary16 encoder (the decoder is block.h's block_f16_to_f32) and a few small helpers. block.c holds the read side and what both need
 * (ids, binary16, padding, dictionaries, block_peek, decoding);
 * block_encode.c the write side (encoding, dictionary training). Internal to
 * the codec: everything else includes block.h. Include it after defining
 * ZSTD_STATIC_LINKING_ONLY (ZSTD_customMem).
 */
#ifndef ANN_BLOCK_IMPL_H
#define ANN_BLOCK_IMPL_H

#include <zstd.h>

#include "block.h"

/* ---- header layout (FORMAT.md, "Block header") ------------------------------------------ */

enum {
	H_MAGIC = 0,        /* u32 BLOCK_MAGIC */
	H_MAJOR = 4,        /* u16 */
	H_MINOR = 6,        /* u16 */
	H_HDR_BYTES = 8,    /* u16 header size, >= 80, multiple of 8 */
	H_ENCODING = 10,    /* u8 ann_block_encoding */
	H_CODEC = 11,       /* u8 ann_block_codec */
	H_FLAGS = 12,       /* u16 BLOCK_FLAG_* */
	H_RESERVED = 14,    /* u16 zero */
	H_DIM = 16,         /* u32 */
	H_COUNT = 20,       /* u32 */
	H_DICT_ID = 24,     /* u32 */
	H_IDS_BYTES = 28,   /* u32 */
	H_RAW_BYTES = 32,   /* u64 */
	H_STORED = 40,      /* u64 */
	H_PARTITION = 48,   /* u64 */
	H_GENERATION = 56,  /* u64 */
	H_PAYLOAD_XXH = 64, /* u64 XXH64 of the stored payload */
	H_HEADER_XXH = 72,  /* u64 XXH64 of header bytes [0, header_bytes - 8); last field */
	H_END = 80,
};
_Static_assert(H_END == BLOCK_HEADER_BYTES, "block header 1.0 is 80 bytes (FORMAT.md)");
_Static_assert(H_HEADER_XXH + 8 == H_END, "the header checksum is the header's last field");

#define HDR_BYTES_MAX 4096u /* a later minor may grow the header up to this */
#define VARINT_MAX    10u   /* bytes of a 64-bit LEB128 value */
#define ORDER_FLIP (UINT64_C(1) << 63) /* maps int64 order onto uint64 order */

struct ann_block_dict {
	uint32_t id;       /* written into headers, >= 1 */
	int level;         /* zstd level of cdict, or BLOCK_DICT_DECODE_ONLY */
	size_t bytes;      /* dictionary size */
	ZSTD_CDict *cdict; /* NULL when decode only */
	ZSTD_DDict *ddict;
};

/* zstd's allocations go through ann_malloc (block.c). */
extern const ZSTD_customMem block_zmem;

/* Replaces *p by an aligned buffer of at least need bytes when it is smaller. Contents are
 * not kept. */
int block_grow(uint8_t **p, size_t *cap, size_t need, const char *what, ann_error *err);

static inline bool encoding_known(unsigned e)
{
	return e == ANN_BLOCK_F32 || e == ANN_BLOCK_U8 || e == ANN_BLOCK_I8 || e == ANN_BLOCK_F16 ||
	       e == ANN_BLOCK_SQ8;
}

/* Stored bytes per element. */
static inline size_t enc_esize(ann_block_encoding e)
{
	return e == ANN_BLOCK_F32 ? 4 : e == ANN_BLOCK_F16 ? 2 : 1;
}

static inline size_t put_varint(uint8_t *p, uint64_t v)
{
	size_t n = 0;
	while (v >= 0x80) {
		p[n++] = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	p[n++] = (uint8_t)v;
	return n;
}

static inline uint64_t zigzag(int64_t v)
{
	uint64_t u = (uint64_t)v;
	return (u << 1) ^ (0 - (u >> 63));
}

/* IEEE binary16 (the F16 encoding), inline: the encode loop calls it per element. */
static inline uint16_t f32_to_f16(float f)
{
	uint32_t x;
	memcpy(&x, &f, 4);
	uint32_t sign = (x >> 16) & 0x8000u;
	uint32_t a = x & 0x7fffffffu;
	if (a >= 0x47800000u) /* >= 65536, inf or NaN: all of these give inf/NaN */
		return (uint16_t)(sign | (a > 0x7f800000u ? 0x7e00u | ((a >> 13) & 0x1ffu) : 0x7c00u));
	if (a < 0x38800000u) {
		/* Below 2^-14: the half is subnormal or zero. Adding 0.5 puts the 10 kept bits at the
		 * bottom of the float's mantissa; the FPU's round-to-nearest-even does the rest. */
		float t, m = 0.5f;
		uint32_t mb;
		memcpy(&t, &a, 4);
		t += m;
		memcpy(&mb, &t, 4);
		return (uint16_t)(sign | (mb - 0x3f000000u));
	}
	/* Normal: rebias the exponent, round the 13 dropped bits to nearest even. A carry out of
	 * the mantissa bumps the exponent, which is right (65520 and above become inf). */
	uint32_t odd = (a >> 13) & 1u;
	a += ((uint32_t)(15 - 127) << 23) + 0xfffu + odd;
	return (uint16_t)(sign | (a >> 13));
}

static inline bool level_ok(int level)
{
	return level >= ZSTD_minCLevel() && level <= ZSTD_maxCLevel();
}

#endif /* ANN_BLOCK_IMPL_H */
