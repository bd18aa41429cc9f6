/* SPDX-License-Identifier: MIT */
/*
 * fuzz_block: the block decoder of src/storage/block.c (block_peek, block_decode,
 * block_decode_into). The input is a block; before decoding, the target
 * rewrites payload_xxh64 (when the stored payload fits in the input) and
 * header_xxh64 (when header_bytes is sane), so mutations reach the field
 * checks, the zstd frame, the id varints and the vector decoders instead of
 * failing the checksums. A last byte of the input with bit 0 set keeps the
 * checksums as they are (the checksum paths stay covered).
 * Properties: peek and decode agree on the header; a decoded block has
 * count ids in ascending order and count * dim elements; decode_into gives
 * the same bytes as decode.
 */
#include <xxhash.h>

#include "block.h"
#include "fuzz.h"

#define LIMIT ((size_t)16 << 20)

static void fix_sums(uint8_t *b, size_t len)
{
	if (len < BLOCK_HEADER_BYTES)
		return;
	size_t hb = ann_ld16(b + 8);
	if (hb < BLOCK_HEADER_BYTES || hb > 4096 || hb % 8 || hb > len)
		return;
	uint64_t stored = ann_ld64(b + 40);
	if (stored <= len - hb)
		ann_st64(b + 64, XXH64(b + hb, (size_t)stored, 0));
	ann_st64(b + hb - 8, XXH64(b, hb - 8, 0));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static ann_block_dec *dec;
	if (!dec && block_dec_new(LIMIT, &dec, NULL) < 0)
		abort();
	if (size > ((size_t)1 << 20))
		return 0;
	uint8_t *b = malloc(size ? size : 1);
	FZ_ASSERT(b != NULL);
	memcpy(b, data, size);
	if (!(size && (data[size - 1] & 1)))
		fix_sums(b, size);

	ann_error e = {0};
	ann_block_info info;
	int prc = block_peek(b, size, &info, &e);
	FZ_CHECK(prc, e);
	ann_block_view v;
	memset(&e, 0, sizeof e);
	int rc = block_decode(dec, b, size, NULL, &v, &e);
	FZ_CHECK(rc, e);
	if (rc == 0) {
		FZ_ASSERT(prc == 0);
		FZ_ASSERT(memcmp(&info, &v.info, sizeof info) == 0);
		FZ_ASSERT(info.total_bytes <= size);
		size_t esz = info.vec_dtype == ANN_DTYPE_F32 ? 4 : 1;
		FZ_ASSERT(info.ids_out_bytes == (size_t)info.count * 8);
		FZ_ASSERT(info.vec_out_bytes == (size_t)info.count * info.dim * esz);
		for (uint32_t i = 1; i < info.count; i++)
			FZ_ASSERT(v.ids[i - 1] <= v.ids[i]);
		/* The same block into caller buffers. */
		int64_t *ids = malloc(info.ids_out_bytes + 1);
		uint8_t *vec = malloc(info.vec_out_bytes + 1);
		FZ_ASSERT(ids && vec);
		ann_block_info info2;
		memset(&e, 0, sizeof e);
		int rc2 = block_decode_into(dec, b, size, NULL, ids, info.ids_out_bytes, vec, info.vec_out_bytes,
					    &info2, &e);
		FZ_CHECK(rc2, e);
		/* The view of the first decode died with the second: decode again to compare. */
		FZ_ASSERT(rc2 == 0);
		ann_block_view v2;
		FZ_ASSERT(block_decode(dec, b, size, NULL, &v2, &e) == 0);
		FZ_ASSERT(memcmp(ids, v2.ids, info.ids_out_bytes) == 0);
		FZ_ASSERT(memcmp(vec, v2.vectors, info.vec_out_bytes) == 0);
		free(ids);
		free(vec);
	}
	free(b);
	return 0;
}
