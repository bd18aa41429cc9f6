/* SPDX-License-Identifier: MIT */
/*
 * fuzz_cblock: the codes-block decoder of src/storage/cblock.c (block format 2:
 * cblock_peek, cblock_head, cblock_row_pages, cblock_check_pages,
 * cblock_decode, cblock_verify_codes, cblock_expand_codes and cblock_factors of
 * 2.1 slim records (the two must agree bit for bit),
 * cblock_ids of 2.2 page maps, 2.3 head-shared pages, 2.4 centre products). The input is a block; before decoding,
 * the target rewrites the header checksum, the head checksum (when the head
 * length is sane) and the exact pages' sums (when the sum table and the pages
 * are inside the input), so that mutations reach the field checks, the id
 * varints and the row pages instead of failing the checksums. A last byte
 * with bit 0 set keeps the stored checksums (their paths stay covered).
 * Properties: peek, head and decode agree on the header; every row's page
 * range lies inside the block's exact section; a decoded block has count ids
 * and count rows; a block whose codes the matching ann_rbq re-encodes
 * identically verifies (tests/fuzz/corpus/cblock holds blocks made by
 * cblock_encode).
 */
#include <xxhash.h>

#include "cblock.h"
#include "fuzz.h"

#define HB CBLOCK_HEADER_BYTES

static void fix_sums(uint8_t *b, size_t len)
{
	if (len < HB)
		return;
	uint64_t head = ann_ld32(b + 64), exoff = ann_ld64(b + 72);
	uint32_t pages = ann_ld32(b + 36);
	ann_st64(b + 120, XXH64(b, 120, 0));
	ann_cblock_info in;
	ann_error e = {0};
	if (cblock_peek(b, len, &in, &e) < 0)
		return;
	/* page sums first: they are in the head, whose checksum covers them
	 * (a 2.3 block's page 0 sums only its bytes past the head) */
	if ((uint64_t)in.sums_off + 4ull * pages <= len && exoff <= len)
		for (uint32_t p = 0; p < pages && exoff + (uint64_t)(p + 1) * CBLOCK_PAGE <= len; p++) {
			size_t skip = p == 0 && (in.flags & CBLOCK_FLAG_HEAD_PAGE) ? (size_t)(head - exoff) : 0;
			ann_st32(b + in.sums_off + 4 * (size_t)p,
				 (uint32_t)XXH64(b + exoff + (size_t)p * CBLOCK_PAGE + skip, CBLOCK_PAGE - skip, p));
		}
	if (head > HB && head <= len)
		ann_st64(b + 80, XXH64(b + HB, (size_t)(head - HB), 0));
	ann_st64(b + 120, XXH64(b, 120, 0));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1 || size > ((size_t)4 << 20))
		return 0;
	size_t len = size - 1;
	uint8_t *b = ann_aligned_alloc(4096, len ? len : 1);
	if (!b)
		abort();
	memcpy(b, data, len);
	if (!(data[size - 1] & 1))
		fix_sums(b, len);
	ann_cblock_info pk, hd, dc;
	ann_error e = {0};
	int rc = cblock_peek(b, len, &pk, &e);
	FZ_CHECK(rc, e);
	if (rc < 0)
		goto out;
	/* peek reads the header only: a truncated input may claim more rows than
	 * it has bytes, but never more than its head has records */
	FZ_ASSERT(pk.count <= pk.head_bytes && pk.head_bytes <= pk.total_bytes);
	bool whole_head = pk.head_bytes <= len; /* then count <= len: the ids fit the input's bound */
	int64_t *ids = whole_head ? malloc(((size_t)pk.count + 1) * sizeof(int64_t)) : NULL;
	if (whole_head && !ids)
		abort();
	e = (ann_error){0};
	rc = cblock_head(b, len, &hd, ids, &e);
	FZ_CHECK(rc, e);
	FZ_ASSERT(whole_head || rc == ANN_E_CORRUPT);
	if (rc >= 0) {
		FZ_ASSERT(hd.count == pk.count && hd.dim == pk.dim && hd.exact_offset == pk.exact_offset);
		/* Slim (2.1) records widen into full ones inside their buffer. */
		FZ_ASSERT(hd.full_code_bytes >= hd.code_bytes);
		uint8_t *full = malloc((size_t)hd.count * hd.full_code_bytes + 1);
		if (!full)
			abort();
		cblock_expand_codes(&hd, b + hd.codes_off, hd.count, full);
		if ((hd.flags & CBLOCK_FLAG_F16) && hd.count) {
			/* round 1's factors: the full records' values, bit for bit */
			float *fac = malloc((size_t)hd.count * 3 * sizeof(float));
			if (!fac)
				abort();
			cblock_factors(&hd, b + hd.codes_off, hd.count, fac, fac + hd.count, fac + 2 * (size_t)hd.count);
			uint32_t p = hd.code_bytes - CBLOCK_F16_SAVES;
			for (uint32_t r = 0; r < hd.count; r++) {
				const uint8_t *w = full + (size_t)r * hd.full_code_bytes + p;
				float tan = (float)ann_ld16(w + 8);
				FZ_ASSERT(memcmp(w, &fac[r], 4) == 0 && memcmp(w + 4, &fac[hd.count + r], 4) == 0 &&
					  memcmp(&tan, &fac[2 * (size_t)hd.count + r], 4) == 0);
			}
			free(fac);
		}
		free(full);
		for (uint32_t r = 0; r < hd.count; r++) {
			uint64_t off;
			uint32_t plen;
			cblock_row_pages(&hd, r, &off, &plen);
			FZ_ASSERT(off >= hd.exact_offset && off + plen <= hd.total_bytes);
			FZ_ASSERT(cblock_row_offset(&hd, r) >= off);
			FZ_ASSERT(cblock_row_offset(&hd, r) >= hd.head_bytes); /* 2.3: page 0's rows after the head */
			FZ_ASSERT(cblock_row_offset(&hd, r) + hd.row_bytes <= off + plen);
			if (off + plen <= len) {
				e = (ann_error){0};
				int prc = cblock_check_pages(&hd, b + hd.sums_off, b + off, off, plen, &e);
				FZ_CHECK(prc, e);
			}
		}
	}
	free(ids);
	int64_t *dids = NULL;
	uint8_t *rows = NULL;
	size_t icap = 0, rcap = 0;
	e = (ann_error){0};
	rc = cblock_decode(b, len, &dc, &dids, &icap, &rows, &rcap, &e);
	FZ_CHECK(rc, e);
	if (rc >= 0) {
		FZ_ASSERT(dc.count == pk.count && icap >= dc.count);
		FZ_ASSERT(rcap >= (size_t)dc.count * dc.row_bytes);
		ann_rbq *q;
		if (ann_rbq_new(dc.dim, dc.code_bits, dc.code_seed, &q, NULL) >= 0) {
			e = (ann_error){0};
			int vrc = cblock_verify_codes(q, b, len, &e);
			FZ_CHECK(vrc, e);
			ann_rbq_free(q);
		}
	}
	ann_free(dids);
	ann_free(rows);
out:
	ann_aligned_free(b);
	return 0;
}
