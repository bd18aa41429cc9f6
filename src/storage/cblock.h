/* SPDX-License-Identifier: MIT */
/*
 * cblock.h: the codes block (block format 2.0-2.3, docs/FORMAT.md "Codes block"):
 * one partition laid out for two-round reads (issue 12). The block starts with
 * a head (header, centre, compact codes, page checksums, ids) that round 1
 * reads whole; then, page-aligned, an exact section of raw rows (u8, i8 or
 * f32, uncompressed, fixed stride, in code order) that round 2 reads page by
 * page for the few candidates that can still enter the top k.
 *
 * Invariants:
 *  1. Row i of the exact section is vector i of the codes and id i of the
 *     ids as decoded (cblock_ids). Without CBLOCK_FLAG_PAGE_ORDER ids ascend
 *     (ties keep the writer's order); with it the rows are in page-local
 *     order (each page a compact cell of a PCA tree) and ascend within each
 *     page; the id section then stores the ids ascending plus each one's page.
 *  2. A row never straddles a 4 KiB page when it fits in one (rows_per_page
 *     rows per page, the rest of the page is zero). "Pages" are counted from
 *     the block start plus page_base (0 in the file store; 16 in the LMDB
 *     store, whose values start 16 bytes into an overflow page), so a page of
 *     the block is a page of the device or of the LMDB map. With
 *     CBLOCK_FLAG_HEAD_PAGE (2.3) exact page 0 is the head's last page: the
 *     head's tail, zeros, then its rows packed at the page's end.
 *  3. The head and each exact page carry their own checksums (the head its
 *     XXH64 in the header, each page a 32-bit sum in the head), so a reader
 *     that reads only the head and some pages still checks all it uses.
 *  4. The codes are a function of (centre, exact rows, the index's ann_rbq):
 *     encoding is deterministic, so verify re-encodes and compares.
 * This module owns the layout; it does no I/O.
 */
#ifndef ANN_CBLOCK_H
#define ANN_CBLOCK_H

#include "block.h"
#include "rabitq.h"

#define CBLOCK_VERSION_MAJOR 2
#define CBLOCK_VERSION_MINOR 4 /* 2.4 with CBLOCK_FLAG_CR, else 2.3 with CBLOCK_FLAG_HEAD_PAGE, else 2.2 with
				* CBLOCK_FLAG_PAGE_ORDER, 2.1 with only CBLOCK_FLAG_F16, else 2.0 */
#define CBLOCK_HEADER_BYTES  128u
#define CBLOCK_CODE_RABITQ   1u
#define CBLOCK_PAGE          4096u
/* Header flag (2.1): each code record keeps its factors in 5 bytes (f16 |r|,
 * f16 f_ip, u8 tan in 1/64) instead of 10 (docs/FORMAT.md "Codes block"). */
#define CBLOCK_FLAG_F16      0x100u
/* Bytes a record saves with CBLOCK_FLAG_F16. */
#define CBLOCK_F16_SAVES     5u
/* Header flag (2.2): rows in page-local order, the id section carries a page
 * map (docs/FORMAT.md "Page-local row order"). Set only when the block has 2
 * or more pages of 2 or more whole rows; otherwise the order could not
 * change what a re-rank reads. */
#define CBLOCK_FLAG_PAGE_ORDER 0x200u
/* Header flag (2.3): the exact section starts at the page boundary at or
 * below the head's end; exact page 0 is the page holding the head's tail and
 * packs r0 rows at its end (docs/FORMAT.md "Head-shared exact page"). Saves
 * the padding after the head (~half a page per block); round 1, which reads
 * the head's pages whole, then holds page 0. Set only when the head does not
 * end on a page boundary, a row fits a page and page 0 has room for a row. */
#define CBLOCK_FLAG_HEAD_PAGE 0x400u
/* Header flag (2.4): after the id section, one f32 per row, <c, x - c> (c the
 * stored centre), so that an inner-product search can estimate <q, x> =
 * <q, c> + <q - c, x - c> + <c, x - c> with the L2 estimator's error, which
 * scales with |q - c| rather than |q| (docs/FORMAT.md "Centre products"). */
#define CBLOCK_FLAG_CR 0x800u

/* Options of cblock_encode. */
#define CBLOCK_ENC_F16        1u /* slim records when every row's factors fit (2.1) */
#define CBLOCK_ENC_PAGE_ORDER 2u /* page-local row order when the block has >= 2 pages of >= 2 rows (2.2) */
#define CBLOCK_ENC_HEAD_PAGE  4u /* exact page 0 shares the head's last page when it can (2.3) */
#define CBLOCK_ENC_CR         8u /* centre products after the ids (2.4): inner-product indexes */

/* Everything the header says, after validation (cblock_peek), with the
 * derived offsets of the head's sections (block-relative). */
typedef struct ann_cblock_info {
	uint32_t header_bytes;      /* 128 in 2.0 */
	ann_block_encoding encoding; /* F32, U8 or I8 */
	unsigned code_kind;         /* CBLOCK_CODE_RABITQ */
	unsigned code_bits;         /* 1..8 */
	uint32_t flags;             /* BLOCK_FLAG_PAD_LMDB, CBLOCK_FLAG_F16, CBLOCK_FLAG_PAGE_ORDER, CBLOCK_FLAG_HEAD_PAGE */
	uint32_t dim, count;
	uint32_t code_bytes;        /* per stored record, factors included (slim with CBLOCK_FLAG_F16) */
	uint32_t full_code_bytes;   /* per record as ann_rbq_estimate takes it (code_bytes + 5 when F16) */
	uint32_t row_bytes;         /* dim * element size */
	uint32_t rows_per_page;     /* 0: a row is larger than a page, rows are contiguous */
	uint32_t page0_rows;        /* rows on exact page 0: r0 with CBLOCK_FLAG_HEAD_PAGE (the rest of the page
				     * before them is head and zeros), else rows_per_page (page 0's capacity) */
	uint32_t page0_at;          /* byte of page 0 where its first row starts: 4096 - r0 * row_bytes with
				     * CBLOCK_FLAG_HEAD_PAGE, else 0 */
	uint32_t exact_pages;
	uint32_t ids_bytes;         /* id section, the page map included */
	uint32_t map_bytes;         /* page map at the end of the id section (CBLOCK_FLAG_PAGE_ORDER), else 0 */
	uint32_t head_bytes;        /* header + centre + codes + sums + ids (not padded) */
	uint64_t code_seed;
	uint64_t partition, generation;
	uint64_t exact_offset;      /* block-relative start of the exact section */
	uint64_t head_xxh64;
	uint64_t total_bytes;
	uint32_t page_base;         /* 0 (file) or 16 (LMDB) */
	uint32_t centre_off, codes_off, sums_off, ids_off;
	uint32_t cr_off;            /* CBLOCK_FLAG_CR: the centre products (count little-endian f32), else 0 */
} ann_cblock_info;

/* True when buf (len >= 8) starts a block of format 2 (magic and major). */
bool cblock_is(const void *buf, size_t len);

/* Validates the header (needs len >= 128): magic, version, header checksum,
 * field values and the length arithmetic. ANN_E_FORMAT, ANN_E_CORRUPT. */
int cblock_peek(const void *buf, size_t len, ann_cblock_info *in, ann_error *err);

/* cblock_peek plus the head checksum (needs len >= head_bytes) and the ids'
 * decoding into ids (in->count entries; may be NULL to skip). */
int cblock_head(const void *buf, size_t len, ann_cblock_info *in, int64_t *ids, ann_error *err);

/* The ids of a head that cblock_peek accepted, in row order (in->count
 * entries). Page-ordered blocks: the page map is checked (every page holds
 * its rows_per_page rows, the last the rest); scratch of count ids and two
 * counters per value a map entry can take (under 4 per page; on the stack
 * up to 64 pages). ANN_E_CORRUPT, ANN_E_NOMEM. */
int cblock_ids(const ann_cblock_info *in, const uint8_t *head, int64_t *ids, ann_error *err);

/* Block-relative byte offset of row i, and the page range that holds it
 * (offset page-aligned per page_base, length a multiple of 4096). With
 * CBLOCK_FLAG_HEAD_PAGE page 0 is block bytes [exact_offset, exact_offset +
 * 4096), whose first head_bytes - exact_offset bytes are the head's tail. */
uint64_t cblock_row_offset(const ann_cblock_info *in, uint32_t row);
void cblock_row_pages(const ann_cblock_info *in, uint32_t row, uint64_t *off, uint32_t *len);

/* Checks the page sums of the exact pages in data = block bytes
 * [off, off + len), off and len as cblock_row_pages gives (page-aligned).
 * sums: the head's page sum table (in->exact_pages little-endian u32).
 * Page 0 of a CBLOCK_FLAG_HEAD_PAGE block: its sum covers the bytes past the
 * head only (the head has its own checksum, and holds the sum table).
 * ANN_E_CORRUPT naming the partition and page. */
int cblock_check_pages(const ann_cblock_info *in, const uint8_t *sums, const uint8_t *data, uint64_t off, size_t len,
		       ann_error *err);

/* Encodes count vectors (element type vt: F32, U8 or I8) with their ids into a
 * codes block of encoding enc (F32, U8 or I8; u8/i8 from float input must be
 * integral and in range), padded for pad. q codes the residuals against the
 * block's centre (the mean of its rows). opts: CBLOCK_ENC_F16, slim records
 * (CBLOCK_FLAG_F16) when every row's factors fit binary16 (else full records,
 * as without it); CBLOCK_ENC_PAGE_ORDER, page-local row order
 * (CBLOCK_FLAG_PAGE_ORDER) when the rows fill 2 or more pages of 2 or more
 * rows each; CBLOCK_ENC_HEAD_PAGE, exact page 0 in the head's last page
 * (CBLOCK_FLAG_HEAD_PAGE, 2.3) when the head does not end on a page boundary
 * and that page has room for a row (never more bytes than without). The result is
 * a function of the input alone (no threads, no clock). *out:
 * ann_aligned_alloc(4096) buffer of *out_len bytes, *head_len = head bytes.
 * Memory: the block plus the ids' sort permutation, 256 float rows of
 * scratch, (f16) count full records and (page order) 2 u32 + 1 float per
 * row and 4 dim floats. ANN_E_INVAL (bad input, naming vector, id,
 * dimension, value), ANN_E_NOMEM. */
int cblock_encode(const ann_rbq *q, ann_block_encoding enc, ann_block_pad pad, unsigned opts, uint32_t dim, size_t count,
		  const int64_t *ids, const void *vecs, ann_dtype vt, uint64_t partition, uint64_t generation,
		  uint8_t **out, size_t *out_len, uint32_t *head_len, ann_error *err);

/* The partition's spread: the mean of |x - c|^2 over its rows (c the stored
 * centre), from the codes' norm factors (slim records: their binary16
 * norms). head: at least the head's bytes, accepted by cblock_peek. 0 for an
 * empty block. The directory keeps it for the probe order (docs/DESIGN.md
 * "Spread-aware probe order"). */
double cblock_spread(const ann_cblock_info *in, const uint8_t *head);

/* Full records (in->full_code_bytes each, as ann_rbq_estimate reads them)
 * of the n stored records at src (in->code_bytes each) into dst: a copy for
 * 2.0 blocks; for F16 blocks the factors widened (f16 -> f32 exactly, tan
 * 1/64 -> 1/256 units, never narrower; a saturated tan gives the widest
 * bound). */
void cblock_expand_codes(const ann_cblock_info *in, const uint8_t *src, size_t n, uint8_t *dst);

/* The factors of the n slim records at src (in->code_bytes each, an F16
 * block): |r|, f_ip and tan in 1/256 units, the values cblock_expand_codes
 * writes, as floats into rn, fip and tan (n each), for
 * ann_rbq_estimate_split: round 1 estimates from the stored records
 * without rebuilding full ones. AVX2 when the CPU probe allows it, bit for
 * bit the scalar form (cblock_kernels.h). */
void cblock_factors(const ann_cblock_info *in, const uint8_t *src, size_t n, float *rn, float *fip, float *tan);

/* cblock_encode's opts from the index's settings. */
static inline unsigned cblock_opts(bool f16, bool page_order, bool head_page, bool cr)
{
	return (f16 ? CBLOCK_ENC_F16 : 0u) | (page_order ? CBLOCK_ENC_PAGE_ORDER : 0u) |
	       (head_page ? CBLOCK_ENC_HEAD_PAGE : 0u) | (cr ? CBLOCK_ENC_CR : 0u);
}

/* Whether the index's writers (build, inserts, compaction, splits) ask for
 * CBLOCK_ENC_HEAD_PAGE: yes, unless the environment has ANNANN_HEAD_PAGE=0
 * (a hidden switch for measuring the 2.2 layout against 2.3; every reader
 * opens both, so an index may mix them). */
bool cblock_head_page_default(void);

/* Whether the writers of an index of metric m ask for CBLOCK_ENC_CR: for
 * inner product, unless the environment has ANNANN_IP_CR=0 (a hidden switch
 * for measuring and testing the blocks without; every reader opens both). */
bool cblock_cr_default(ann_metric m);

/* Bytes round 1 reads of a codes block whose directory entry says head
 * bytes of a block_len-byte block: the head up to the end of its last page
 * (page_base 16 in LMDB), so that a CBLOCK_FLAG_HEAD_PAGE block's exact page
 * 0 comes with it. Under O_DIRECT and in LMDB those bytes cost no more
 * pages than the head alone. */
static inline uint32_t cblock_head_read_len(uint32_t head, uint32_t block_len, bool lmdb)
{
	uint64_t base = lmdb ? BLOCK_LMDB_PAGE_HEADER : 0u;
	uint64_t end = (head + base + CBLOCK_PAGE - 1) / CBLOCK_PAGE * CBLOCK_PAGE - base;
	return end < block_len ? (uint32_t)end : block_len;
}

/* Decodes a whole block (every check: header, head, all page sums, zero
 * padding) into ids and contiguous rows of the stored element type (u8, i8
 * or f32), in buffers grown with ann_realloc (*ids, *rows, capacities in
 * entries/bytes); the caller frees them. */
int cblock_decode(const void *buf, size_t len, ann_cblock_info *in, int64_t **ids, size_t *ids_cap, uint8_t **rows,
		  size_t *rows_cap, ann_error *err);

/* Re-encodes the exact rows of a whole, checked block with q and compares
 * with the stored codes. ANN_E_CORRUPT naming the first row that disagrees,
 * ANN_E_FORMAT when q's (bits, seed) are not the block's. */
int cblock_verify_codes(const ann_rbq *q, const void *buf, size_t len, ann_error *err);

/* The centre (in->dim floats) from a head that cblock_head accepted. */
void cblock_centre(const ann_cblock_info *in, const uint8_t *head, float *out);

/* Element type of stored rows. */
ann_dtype cblock_row_dtype(ann_block_encoding e);

#endif /* ANN_CBLOCK_H */
