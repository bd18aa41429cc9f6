/* SPDX-License-Identifier: MIT */
/*
 * cblock.c: the codes block layout (cblock.h, docs/FORMAT.md "Codes block").
 *
 *   +--------+--------+-------+-----------+-----+------+-------------------------+
 *   | header | centre | codes | page sums | ids | zero | exact pages (raw rows)  |
 *   +--------+--------+-------+-----------+-----+------+-------------------------+
 *   |<------------- head (round 1) ------------>|      |<- round 2, by page ---->|
 *
 * 2.3 (CBLOCK_FLAG_HEAD_PAGE): no zero gap; exact page 0 starts at the page
 * boundary below the head's end and holds r0 rows at its end, after the
 * head's tail and zeros. Page helpers (row_page, page_first, page_end) take
 * page 0's capacity from in->page0_rows, so the other layouts are the case
 * page0_rows = rows_per_page.
 */
#include "cblock.h"
#include "cblock_kernels.h"
#include "distance.h" /* ann_simd_active */

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

/* Header offsets (docs/FORMAT.md "Codes block header"). */
enum {
	H_MAGIC = 0,
	H_MAJOR = 4,
	H_MINOR = 6,
	H_HBYTES = 8,
	H_ENC = 10,
	H_CODE = 11,
	H_FLAGS = 12,
	H_BITS = 14,
	H_RES15 = 15,
	H_DIM = 16,
	H_COUNT = 20,
	H_CODEB = 24,
	H_ROWB = 28,
	H_RPP = 32,
	H_PAGES = 36,
	H_SEED = 40,
	H_PART = 48,
	H_GEN = 56,
	H_HEADB = 64,
	H_IDSB = 68,
	H_EXOFF = 72,
	H_HEADX = 80,
	H_TOTAL = 88,
	H_RES = 96, /* 24 zero bytes */
	H_HDRX = 120,
};
_Static_assert(H_HDRX + 8 == CBLOCK_HEADER_BYTES, "codes block header is 128 bytes");

ann_dtype cblock_row_dtype(ann_block_encoding e)
{
	return e == ANN_BLOCK_U8 ? ANN_DTYPE_U8 : e == ANN_BLOCK_I8 ? ANN_DTYPE_I8 : ANN_DTYPE_F32;
}

static size_t esize(ann_block_encoding e)
{
	return e == ANN_BLOCK_F32 ? 4 : 1;
}

/* The centre is stored in the rows' element type (u8/i8: the rounded mean),
 * padded to 8 bytes: a quarter of f32's bytes in every head of 1-byte data,
 * and exact all the same, since encoder and estimator use the stored one. */
static uint64_t centre_bytes(ann_block_encoding e, uint32_t dim)
{
	return ANN_ALIGN_UP((uint64_t)dim * esize(e), 8);
}

void cblock_centre(const ann_cblock_info *in, const uint8_t *head, float *out)
{
	const uint8_t *c = head + in->centre_off;
	for (uint32_t j = 0; j < in->dim; j++)
		out[j] = in->encoding == ANN_BLOCK_U8   ? (float)c[j]
			 : in->encoding == ANN_BLOCK_I8 ? (float)(int8_t)c[j]
							: ann_ldf32(c + 4 * (size_t)j);
}

bool cblock_is(const void *buf, size_t len)
{
	const uint8_t *b = buf;
	return len >= 8 && ann_ld32(b + H_MAGIC) == BLOCK_MAGIC && ann_ld16(b + H_MAJOR) == CBLOCK_VERSION_MAJOR;
}

/* Start of the exact section: the first page boundary (per page_base) at or
 * after the head. */
static uint64_t exact_start(uint64_t head_bytes, uint32_t base)
{
	return ANN_ALIGN_UP(head_bytes + base, (uint64_t)CBLOCK_PAGE) - base;
}

static uint64_t pages_for(uint64_t count, uint32_t row_bytes, uint32_t rpp)
{
	if (rpp)
		return (count + rpp - 1) / rpp;
	return (count * row_bytes + CBLOCK_PAGE - 1) / CBLOCK_PAGE;
}

/* CBLOCK_FLAG_HEAD_PAGE's layout for a head of `head` bytes: the exact
 * section starts at the page boundary at or below the head's end (*eo),
 * page 0 holds *r0 rows packed at its end, *pages exact pages in all. False
 * when the flag cannot apply: no rows of a page (rpp 0), a head ending on a
 * boundary (nothing to share), a boundary below the block start (an LMDB
 * head under 4080 bytes), or no room for a row after the head. */
static bool head_page_layout(uint64_t head, uint32_t base, uint64_t count, uint32_t row_bytes, uint32_t rpp,
			     uint64_t *eo, uint32_t *r0, uint64_t *pages)
{
	uint64_t down = (head + base) / CBLOCK_PAGE * CBLOCK_PAGE;
	if (rpp == 0 || row_bytes == 0 || (head + base) % CBLOCK_PAGE == 0 || down < base)
		return false;
	uint64_t start = down - base, room = CBLOCK_PAGE - (head - start);
	uint64_t r = ANN_MIN(count, room / row_bytes);
	if (r == 0)
		return false;
	*eo = start;
	*r0 = (uint32_t)r;
	*pages = 1 + (count - r + rpp - 1) / rpp;
	return true;
}

/* Pages of rows (rows_per_page >= 1): page 0 holds page0_rows rows (r0 with
 * CBLOCK_FLAG_HEAD_PAGE, else rows_per_page), each later page rows_per_page,
 * the last the rest. */
static uint32_t row_page(const ann_cblock_info *in, uint32_t row)
{
	return row < in->page0_rows ? 0 : 1 + (row - in->page0_rows) / in->rows_per_page;
}

static uint32_t page_first(const ann_cblock_info *in, uint32_t page)
{
	return page == 0 ? 0 : (uint32_t)(in->page0_rows + (uint64_t)(page - 1) * in->rows_per_page);
}

static uint32_t page_end(const ann_cblock_info *in, uint32_t page)
{
	return page + 1 < in->exact_pages ? page_first(in, page + 1) : in->count;
}

/* Page map (CBLOCK_FLAG_PAGE_ORDER): for each id in ascending order, its
 * page, in map_bits(pages) bits, packed from the low bit of each byte up. */
static uint32_t map_bits(uint32_t pages)
{
	uint32_t b = 0;
	while (b < 32 && (1ull << b) < pages)
		b++;
	return b;
}

static uint64_t map_bytes(uint64_t count, uint32_t pages)
{
	return (count * map_bits(pages) + 7) / 8;
}

/* Entry k of a map of `bits`-bit entries, byte by byte (reads no byte past
 * the entry's last). */
static uint32_t map_get(const uint8_t *map, uint32_t bits, uint32_t k)
{
	uint64_t bit = (uint64_t)k * bits;
	uint32_t v = 0;
	for (uint32_t i = 0; i < bits; i++, bit++)
		v |= (uint32_t)((map[bit / 8] >> (bit % 8)) & 1) << i;
	return v;
}

static void map_put(uint8_t *map, uint32_t bits, uint32_t k, uint32_t v)
{
	uint64_t bit = (uint64_t)k * bits;
	for (uint32_t i = 0; i < bits; i++, bit++)
		map[bit / 8] |= (uint8_t)(((v >> i) & 1) << (bit % 8));
}

int cblock_peek(const void *buf, size_t len, ann_cblock_info *in, ann_error *err)
{
	const uint8_t *b = buf;
	if (len < CBLOCK_HEADER_BYTES)
		return ann_err(err, ANN_E_CORRUPT, "codes block: %zu bytes, the header needs %u", len,
			       CBLOCK_HEADER_BYTES);
	if (ann_ld32(b + H_MAGIC) != BLOCK_MAGIC)
		return ann_err(err, ANN_E_FORMAT, "codes block: bad magic %08x", ann_ld32(b));
	unsigned major = ann_ld16(b + H_MAJOR), minor = ann_ld16(b + H_MINOR);
	if (major != CBLOCK_VERSION_MAJOR)
		return ann_err(err, ANN_E_FORMAT, "codes block: version %u.%u, this build reads %u.x", major, minor,
			       CBLOCK_VERSION_MAJOR);
	uint32_t hb = ann_ld16(b + H_HBYTES);
	if (hb < CBLOCK_HEADER_BYTES || hb % 8 || hb > len)
		return ann_err(err, ANN_E_CORRUPT, "codes block: header of %u bytes (expected a multiple of 8, >= %u, "
			       "within %zu)", hb, CBLOCK_HEADER_BYTES, len);
	uint64_t part = ann_ld64(b + H_PART);
	if (XXH64(b, hb - 8, 0) != ann_ld64(b + hb - 8))
		return ann_err(err, ANN_E_CORRUPT, "codes block (claims partition %llu): header checksum mismatch",
			       (unsigned long long)part);
	memset(in, 0, sizeof *in);
	in->header_bytes = hb;
	in->encoding = (ann_block_encoding)b[H_ENC];
	in->code_kind = b[H_CODE];
	in->flags = ann_ld16(b + H_FLAGS);
	in->code_bits = b[H_BITS];
	in->dim = ann_ld32(b + H_DIM);
	in->count = ann_ld32(b + H_COUNT);
	in->code_bytes = ann_ld32(b + H_CODEB);
	in->row_bytes = ann_ld32(b + H_ROWB);
	in->rows_per_page = ann_ld32(b + H_RPP);
	in->exact_pages = ann_ld32(b + H_PAGES);
	in->code_seed = ann_ld64(b + H_SEED);
	in->partition = part;
	in->generation = ann_ld64(b + H_GEN);
	in->head_bytes = ann_ld32(b + H_HEADB);
	in->ids_bytes = ann_ld32(b + H_IDSB);
	in->exact_offset = ann_ld64(b + H_EXOFF);
	in->head_xxh64 = ann_ld64(b + H_HEADX);
	in->total_bytes = ann_ld64(b + H_TOTAL);
	if (in->encoding != ANN_BLOCK_F32 && in->encoding != ANN_BLOCK_U8 && in->encoding != ANN_BLOCK_I8)
		return ann_err(err, ANN_E_FORMAT, "codes block of partition %llu: encoding %u (expected 0 f32, 1 u8, 2 i8)",
			       (unsigned long long)part, (unsigned)in->encoding);
	if (in->code_kind != CBLOCK_CODE_RABITQ)
		return ann_err(err, ANN_E_FORMAT, "codes block of partition %llu: code kind %u (expected 1 rabitq)",
			       (unsigned long long)part, in->code_kind);
	if (in->flags & ~(BLOCK_FLAG_PAD_LMDB | CBLOCK_FLAG_F16 | CBLOCK_FLAG_PAGE_ORDER | CBLOCK_FLAG_HEAD_PAGE |
			  CBLOCK_FLAG_CR))
		return ann_err(err, ANN_E_FORMAT, "codes block of partition %llu: unknown flags %#x",
			       (unsigned long long)part, in->flags);
	in->full_code_bytes = in->code_bytes + ((in->flags & CBLOCK_FLAG_F16) ? CBLOCK_F16_SAVES : 0);
	in->page_base = (in->flags & BLOCK_FLAG_PAD_LMDB) ? BLOCK_LMDB_PAGE_HEADER : 0;
	/* Consistency: every size follows from (dim, count, code_bytes, ids_bytes). */
	const char *why = NULL;
	uint64_t rb = (uint64_t)in->dim * esize(in->encoding);
	uint64_t centre = centre_bytes(in->encoding, in->dim), codes = (uint64_t)in->count * in->code_bytes;
	uint32_t rpp = rb <= CBLOCK_PAGE && rb ? (uint32_t)(CBLOCK_PAGE / rb) : 0;
	/* With HEAD_PAGE the page count depends on the head, which holds a sum
	 * per page: take the header's count, derive the layout from the head it
	 * gives, and require the two to agree. */
	bool hp = (in->flags & CBLOCK_FLAG_HEAD_PAGE) != 0;
	uint64_t pages = hp ? in->exact_pages : pages_for(in->count, (uint32_t)rb, rpp);
	bool crs = (in->flags & CBLOCK_FLAG_CR) != 0;
	uint64_t head = (uint64_t)hb + centre + codes + 4 * pages + in->ids_bytes + (crs ? 4ull * in->count : 0);
	bool ordered = (in->flags & CBLOCK_FLAG_PAGE_ORDER) != 0;
	uint64_t mb = ordered && rpp ? map_bytes(in->count, (uint32_t)pages) : 0;
	uint64_t eo = exact_start(head, in->page_base), hp_pages = pages;
	uint32_t r0 = rpp;
	bool hp_ok = hp && head_page_layout(head, in->page_base, in->count, (uint32_t)rb, rpp, &eo, &r0, &hp_pages);
	if (in->dim == 0 || in->dim > (1u << 20))
		why = "dimension";
	else if (in->code_bits < 1 || in->code_bits > 8)
		why = "code bits";
	else if (in->code_bytes == 0 || in->code_bytes > 64 * in->dim + 64 ||
		 ((in->flags & CBLOCK_FLAG_F16) && in->code_bytes < CBLOCK_F16_SAVES + 2))
		why = "code bytes";
	else if ((in->flags & CBLOCK_FLAG_F16) && minor < 1)
		why = "flags (f16 factors in a 2.0 block)";
	else if (ordered && minor < 2)
		why = "flags (page order in a block older than 2.2)";
	else if (ordered && (rpp < 2 || pages < 2))
		why = "flags (page order in a block of fewer than 2 pages or 2 rows per page)";
	else if (hp && minor < 3)
		why = "flags (head page in a block older than 2.3)";
	else if (crs && minor < 4)
		why = "flags (centre products in a block older than 2.4)";
	else if (in->row_bytes != rb)
		why = "row bytes";
	else if (in->rows_per_page != rpp)
		why = "rows per page";
	else if (in->exact_pages != pages)
		why = "exact pages";
	else if (in->ids_bytes < in->count + mb || (uint64_t)in->ids_bytes > 10ull * in->count + mb)
		why = "id section length";
	else if (in->head_bytes != head)
		why = "head length";
	else if (hp && !hp_ok)
		why = "flags (head page where the head ends on a page boundary, below the first page, or leaves no "
		      "room for a row)";
	else if (hp && hp_pages != pages)
		why = "exact pages (head page layout)";
	else if (in->exact_offset != eo)
		why = "exact section offset";
	else if (in->total_bytes != in->exact_offset + pages * CBLOCK_PAGE)
		why = "total length";
	else if (in->total_bytes > UINT32_MAX)
		why = "total length (over 4 GiB)";
	for (unsigned i = H_RES; !why && i < H_HDRX; i++)
		if (b[i] || b[H_RES15])
			why = "reserved bytes";
	if (why)
		return ann_err(err, ANN_E_CORRUPT, "codes block of partition %llu: inconsistent %s", (unsigned long long)part,
			       why);
	in->centre_off = hb;
	in->codes_off = (uint32_t)(hb + centre);
	in->sums_off = (uint32_t)(in->codes_off + codes);
	in->ids_off = (uint32_t)(in->sums_off + 4 * pages);
	in->map_bytes = (uint32_t)mb;
	in->cr_off = crs ? in->ids_off + in->ids_bytes : 0;
	in->page0_rows = r0;
	in->page0_at = hp ? (uint32_t)(CBLOCK_PAGE - (uint64_t)r0 * rb) : 0;
	return ANN_OK;
}

int cblock_head(const void *buf, size_t len, ann_cblock_info *in, int64_t *ids, ann_error *err)
{
	ANN_TRY(cblock_peek(buf, len, in, err));
	const uint8_t *b = buf;
	if (len < in->head_bytes)
		return ann_err(err, ANN_E_CORRUPT, "codes block of partition %llu: %zu bytes read, the head has %u",
			       (unsigned long long)in->partition, len, in->head_bytes);
	uint64_t h = XXH64(b + in->header_bytes, in->head_bytes - in->header_bytes, 0);
	if (h != in->head_xxh64)
		return ann_err(err, ANN_E_CORRUPT, "codes block of partition %llu: head checksum %016llx, header says %016llx",
			       (unsigned long long)in->partition, (unsigned long long)h,
			       (unsigned long long)in->head_xxh64);
	const uint8_t *c = b + in->centre_off;
	for (uint32_t j = 0; in->encoding == ANN_BLOCK_F32 && j < in->dim; j++)
		if (!isfinite(ann_ldf32(c + 4 * (size_t)j)))
			return ann_err(err, ANN_E_CORRUPT, "codes block of partition %llu: centre component %u is not finite",
				       (unsigned long long)in->partition, j);
	return ids ? cblock_ids(in, b, ids, err) : ANN_OK;
}

int cblock_ids(const ann_cblock_info *in, const uint8_t *head, int64_t *ids, ann_error *err)
{
	const uint8_t *p = head + in->ids_off;
	uint32_t n = in->count, mb = in->map_bytes;
	if (!(in->flags & CBLOCK_FLAG_PAGE_ORDER)) {
		if (!block_ids_decode(p, in->ids_bytes, n, ids))
			return ann_err(err, ANN_E_CORRUPT, "codes block of partition %llu: bad id section",
				       (unsigned long long)in->partition);
		return ANN_OK;
	}
	/* Ascending ids, then each one's page: row = the page's first row plus
	 * the ids before it on the same page (rows ascend within a page). One
	 * pass over the map: an id is placed at its page's next free row, and a
	 * page that would take more rows than it holds is refused; since the
	 * pages hold count rows in all, every page then holds exactly its rows.
	 * The counters cover every value an entry can take (2^bits), those past
	 * the last page full from the start, so one test per id refuses both. */
	uint32_t pages = in->exact_pages, bits = map_bits(pages);
	size_t slots = (size_t)1 << bits; /* pages <= 2^20: total_bytes < 4 GiB */
	uint32_t cur_stack[2 * 64];
	int64_t *sorted = ann_malloc((size_t)n * sizeof(int64_t));
	uint32_t *cur = slots <= 64 ? cur_stack : ann_malloc(2 * slots * sizeof(uint32_t));
	int rc = ANN_OK;
	if (!sorted || !cur) {
		rc = ann_err(err, ANN_E_NOMEM, "codes block: out of memory for %u ids", n);
		goto out;
	}
	if (!block_ids_decode(p, in->ids_bytes - mb, n, sorted)) {
		rc = ann_err(err, ANN_E_CORRUPT, "codes block of partition %llu: bad id section",
			     (unsigned long long)in->partition);
		goto out;
	}
	uint32_t *lim = cur + slots; /* cur[pg] == lim[pg]: page pg is full (or no page) */
	for (size_t pg = 0; pg < slots; pg++) {
		cur[pg] = pg < pages ? page_first(in, (uint32_t)pg) : 0;
		lim[pg] = pg < pages ? page_end(in, (uint32_t)pg) : 0;
	}
	const uint8_t *map = p + in->ids_bytes - mb;
	for (uint32_t k = 0; k < n; k++) {
		uint64_t bit = (uint64_t)k * bits;
		uint32_t pg = bit / 8 + 8 <= mb ? (uint32_t)(ann_ld64(map + bit / 8) >> (bit % 8)) & (uint32_t)(slots - 1)
						: map_get(map, bits, k);
		uint32_t c = cur[pg];
		if (c == lim[pg]) {
			if (pg >= pages)
				rc = ann_err(err, ANN_E_CORRUPT, "codes block of partition %llu: page map entry %u is page %u "
					     "of %u", (unsigned long long)in->partition, k, pg, pages);
			else
				rc = ann_err(err, ANN_E_CORRUPT, "codes block of partition %llu: page map puts more than %u "
					     "rows on page %u", (unsigned long long)in->partition, c - page_first(in, pg), pg);
			goto out;
		}
		cur[pg] = c + 1;
		ids[c] = sorted[k];
	}
	if ((uint64_t)n * bits % 8 && map[mb - 1] >> ((uint64_t)n * bits % 8)) {
		rc = ann_err(err, ANN_E_CORRUPT, "codes block of partition %llu: non-zero page map padding",
			     (unsigned long long)in->partition);
		goto out;
	}
out:
	ann_free(sorted);
	if (cur != cur_stack)
		ann_free(cur);
	return rc;
}

bool cblock_cr_default(ann_metric m)
{
	const char *v = getenv("ANNANN_IP_CR");
	return m == ANN_METRIC_IP && !(v && strcmp(v, "0") == 0);
}

bool cblock_head_page_default(void)
{
	const char *v = getenv("ANNANN_HEAD_PAGE");
	return !(v && strcmp(v, "0") == 0);
}

uint64_t cblock_row_offset(const ann_cblock_info *in, uint32_t row)
{
	if (in->rows_per_page) {
		uint32_t p = row_page(in, row);
		uint64_t at = p == 0 ? in->page0_at : 0;
		return in->exact_offset + (uint64_t)p * CBLOCK_PAGE + at + (uint64_t)(row - page_first(in, p)) * in->row_bytes;
	}
	return in->exact_offset + (uint64_t)row * in->row_bytes;
}

void cblock_row_pages(const ann_cblock_info *in, uint32_t row, uint64_t *off, uint32_t *len)
{
	if (in->rows_per_page) {
		*off = in->exact_offset + (uint64_t)row_page(in, row) * CBLOCK_PAGE;
		*len = CBLOCK_PAGE;
		return;
	}
	uint64_t s = (uint64_t)row * in->row_bytes, e = s + in->row_bytes - 1;
	*off = in->exact_offset + s / CBLOCK_PAGE * CBLOCK_PAGE;
	*len = (uint32_t)((e / CBLOCK_PAGE - s / CBLOCK_PAGE + 1) * CBLOCK_PAGE);
}

/* Sum of exact page `index` (its 4096 bytes at page): low 32 bits of XXH64
 * seeded with the index; page 0 of a HEAD_PAGE block skips the head's tail
 * (the head is covered by head_xxh64, and holds this sum). */
static uint32_t page_sum(const ann_cblock_info *in, const uint8_t *page, uint64_t index)
{
	size_t skip = index == 0 && (in->flags & CBLOCK_FLAG_HEAD_PAGE) ? (size_t)(in->head_bytes - in->exact_offset) : 0;
	return (uint32_t)XXH64(page + skip, CBLOCK_PAGE - skip, index);
}

int cblock_check_pages(const ann_cblock_info *in, const uint8_t *sums, const uint8_t *data, uint64_t off, size_t len,
		       ann_error *err)
{
	if (off < in->exact_offset || (off - in->exact_offset) % CBLOCK_PAGE || len % CBLOCK_PAGE ||
	    off + len > in->total_bytes)
		return ann_err(err, ANN_E_INVAL, "codes block of partition %llu: range %llu+%zu is not whole exact pages",
			       (unsigned long long)in->partition, (unsigned long long)off, len);
	uint64_t p0 = (off - in->exact_offset) / CBLOCK_PAGE;
	for (size_t i = 0; i < len / CBLOCK_PAGE; i++) {
		uint64_t p = p0 + i;
		uint32_t got = page_sum(in, data + i * CBLOCK_PAGE, p), want = ann_ld32(sums + 4 * p);
		if (got != want)
			return ann_err(err, ANN_E_CORRUPT,
				       "codes block of partition %llu: exact page %llu (block offset %llu) checksum %08x, "
				       "head says %08x",
				       (unsigned long long)in->partition, (unsigned long long)p,
				       (unsigned long long)(in->exact_offset + p * CBLOCK_PAGE), got, want);
	}
	return ANN_OK;
}

static int cmp_perm(const void *a, const void *b, void *ctx)
{
	const int64_t *ids = ctx;
	size_t x = *(const size_t *)a, y = *(const size_t *)b;
	if (ids[x] != ids[y])
		return ids[x] < ids[y] ? -1 : 1;
	return x < y ? -1 : x > y;
}

/* Converts element i of vecs (type vt) to the stored element at out. */
static int put_elem(ann_block_encoding enc, ann_dtype vt, const void *vecs, size_t i, uint8_t *out, double *bad)
{
	double v = vt == ANN_DTYPE_U8 ? ((const uint8_t *)vecs)[i]
		   : vt == ANN_DTYPE_I8 ? ((const int8_t *)vecs)[i]
					: ((const float *)vecs)[i];
	*bad = v;
	if (!isfinite(v))
		return -1;
	switch (enc) {
	case ANN_BLOCK_U8:
		if (v != floor(v) || v < 0 || v > 255)
			return -1;
		*out = (uint8_t)v;
		return 0;
	case ANN_BLOCK_I8:
		if (v != floor(v) || v < -128 || v > 127)
			return -1;
		*out = (uint8_t)(int8_t)v;
		return 0;
	default:
		ann_stf32(out, (float)v);
		return 0;
	}
}

static void row_to_float(ann_block_encoding enc, const uint8_t *row, uint32_t dim, float *out)
{
	for (uint32_t j = 0; j < dim; j++)
		out[j] = enc == ANN_BLOCK_U8   ? (float)row[j]
			 : enc == ANN_BLOCK_I8 ? (float)(int8_t)row[j]
					       : ann_ldf32(row + 4 * (size_t)j);
}

/* ---- slim records (CBLOCK_FLAG_F16) ----------------------------------------------------
 * A full record ends in f32 |r|, f32 f_ip, u16 tan (1/256 units, rounded up);
 * a slim one in f16 |r|, f16 f_ip, u8 tan (1/64 units, rounded up; 255 =
 * saturated, read as the widest u16 tan). f16 keeps 11 significant bits: a
 * factor must be 0 or a normal f16 (2^-14 <= |v| <= 65504) to be slimmed. */
#define TAN8_SAT 255u

static bool f16_fits(float v, uint16_t *h)
{
	*h = block_f32_to_f16(v);
	if (v == 0.0f)
		return true;
	float a = fabsf(v);
	return isfinite(v) && a >= 0x1p-14f && a <= 65504.0f && isfinite(block_f16_to_f32(*h));
}

/* Slims one full record of fb bytes into out (fb - 5 bytes); false when a
 * factor does not fit f16. */
static bool slim_record(const uint8_t *full, uint32_t fb, uint8_t *out)
{
	uint32_t p = fb - 10;
	uint16_t hr, hf;
	if (!f16_fits(ann_ldf32(full + p), &hr) || !f16_fits(ann_ldf32(full + p + 4), &hf))
		return false;
	uint32_t tan16 = ann_ld16(full + p + 8), t8 = (tan16 + 3) / 4;
	memcpy(out, full, p);
	ann_st16(out + p, hr);
	ann_st16(out + p + 2, hf);
	out[p + 4] = (uint8_t)(t8 >= TAN8_SAT ? TAN8_SAT : t8);
	return true;
}

/* The factors of the slim record whose factor bytes are at f: |r| and f_ip
 * widened f16 -> f32 (exact), tan in 1/256 units. */
static inline void slim_factors(const uint8_t *f, float *rn, float *fip, uint16_t *tan)
{
	*rn = block_f16_to_f32(ann_ld16(f));
	*fip = block_f16_to_f32(ann_ld16(f + 2));
	*tan = (uint16_t)(f[4] == TAN8_SAT ? 65535u : f[4] * 4u);
}

double cblock_spread(const ann_cblock_info *in, const uint8_t *head)
{
	if (in->count == 0)
		return 0.0;
	/* The norm is the first factor, right after the planes, in full and slim
	 * records alike (full_code_bytes - 10 = the planes' bytes). */
	const uint8_t *r = head + in->codes_off;
	size_t planes = in->full_code_bytes - 10u;
	bool slim = (in->flags & CBLOCK_FLAG_F16) != 0;
	double sum = 0.0;
	for (uint32_t i = 0; i < in->count; i++, r += in->code_bytes) {
		double n = slim ? block_f16_to_f32(ann_ld16(r + planes)) : ann_ldf32(r + planes);
		sum += n * n;
	}
	return sum / in->count;
}

void cblock_expand_codes(const ann_cblock_info *in, const uint8_t *src, size_t n, uint8_t *dst)
{
	if (!(in->flags & CBLOCK_FLAG_F16)) {
		memcpy(dst, src, n * in->code_bytes);
		return;
	}
	uint32_t sb = in->code_bytes, fb = in->full_code_bytes, p = sb - CBLOCK_F16_SAVES;
	for (size_t i = 0; i < n; i++, src += sb, dst += fb) {
		float rn, fip;
		uint16_t tan;
		slim_factors(src + p, &rn, &fip, &tan);
		memcpy(dst, src, p);
		ann_stf32(dst + p, rn);
		ann_stf32(dst + p + 4, fip);
		ann_st16(dst + p + 8, tan);
	}
}

void cblock_factors_scalar(const uint8_t *src, size_t stride, size_t p, size_t n, float *rn, float *fip, float *tan)
{
	for (size_t i = 0; i < n; i++, src += stride) {
		uint16_t t;
		slim_factors(src + p, &rn[i], &fip[i], &t);
		tan[i] = t;
	}
}

void cblock_factors(const ann_cblock_info *in, const uint8_t *src, size_t n, float *rn, float *fip, float *tan)
{
	size_t p = in->code_bytes - CBLOCK_F16_SAVES;
	if (ann_simd_active() >= ANN_SIMD_AVX2)
		cblock_factors_avx2(src, in->code_bytes, p, n, rn, fip, tan);
	else
		cblock_factors_scalar(src, in->code_bytes, p, n, rn, fip, tan);
}

#define CHUNK 256u

/* The centre products <c, x_i - c> of the count rows of a laid-out block b
 * (centre and exact rows in place), in row order, as little-endian f32 at
 * out: sums in double over the dimensions in order, so a function of the
 * stored values alone (verify recomputes them). */
static int centre_products(const ann_cblock_info *in, const uint8_t *b, uint8_t *out, ann_error *err)
{
	uint32_t d = in->dim;
	float *c = ann_malloc((size_t)d * sizeof(float)), *x = ann_malloc((size_t)d * sizeof(float));
	if (!c || !x) {
		ann_free(c);
		ann_free(x);
		return ann_err(err, ANN_E_NOMEM, "codes block: out of memory for %u floats", 2 * d);
	}
	cblock_centre(in, b, c);
	for (uint32_t i = 0; i < in->count; i++) {
		row_to_float(in->encoding, b + cblock_row_offset(in, i), d, x);
		double s = 0;
		for (uint32_t j = 0; j < d; j++)
			s += (double)c[j] * ((double)x[j] - (double)c[j]);
		ann_stf32(out + 4 * (size_t)i, (float)s);
	}
	ann_free(c);
	ann_free(x);
	return ANN_OK;
}

/* Codes of the count rows of a laid-out block b (centre and exact rows in
 * place) into codes. */
static int encode_rows(const ann_rbq *q, const ann_cblock_info *in, const uint8_t *b, uint8_t *codes, ann_error *err)
{
	uint32_t d = in->dim;
	float *centre = ann_malloc((size_t)d * sizeof(float));
	float *x = ann_malloc((size_t)CHUNK * d * sizeof(float));
	int rc = ANN_OK;
	if (!centre || !x) {
		rc = ann_err(err, ANN_E_NOMEM, "codes block: out of memory for %u floats", (CHUNK + 1) * d);
		goto out;
	}
	cblock_centre(in, b, centre);
	for (uint32_t i0 = 0; i0 < in->count; i0 += CHUNK) {
		uint32_t n = ANN_MIN(CHUNK, in->count - i0);
		for (uint32_t i = 0; i < n; i++)
			row_to_float(in->encoding, b + cblock_row_offset(in, i0 + i), d, x + (size_t)i * d);
		ANN_CHECK(rc, ann_rbq_encode(q, centre, x, n, codes + (size_t)i0 * in->full_code_bytes, err));
	}
fail:
out:
	ann_free(centre);
	ann_free(x);
	return rc;
}

/* ---- page-local row order (CBLOCK_FLAG_PAGE_ORDER) -----------------------------------------
 * Round 2 reads whole pages, so a query's re-rank candidates (rows near the
 * query, hence near each other) should share pages. A PCA tree over the
 * rows: split a node's rows at the position of whole pages (the left child
 * gets floor(pages / 2) pages and as many rows as they hold: page 0 r0 with
 * CBLOCK_FLAG_HEAD_PAGE, the others rows_per_page, the last the rest)
 * along the node's top principal direction, found by power iteration from
 * the row farthest from the node's mean; leaves are pages,
 * laid out in tree order, each holding its rows in ascending id order (the
 * rule the page map's decoder follows). Single-threaded, float arithmetic in
 * a fixed order, ties broken by row: the order is a function of the rows.
 * The rows are converted to float once (up to ORDER_FLOAT_BUDGET bytes of
 * them; past it each pass converts again, the same values). */
#define ORDER_ITERS 3u

#define ORDER_FLOAT_BUDGET ((size_t)64 << 20) /* rows converted to float once, up to this many bytes */

typedef struct porder {
	const ann_cblock_info *in;
	const uint8_t *b; /* the block with its rows in id order */
	const float *xf;       /* count x dim: the rows as floats, or NULL (over the budget) */
	float *x, *mu, *v, *w; /* dim floats each */
	float *proj;           /* count: projection of each row */
} porder;

/* Row k as floats: from xf, or converted into buf (the conversion is exact,
 * so both give the same values and the same order). */
static const float *prow_float(const porder *o, uint32_t k, float *buf)
{
	uint32_t d = o->in->dim;
	if (o->xf)
		return o->xf + (size_t)k * d;
	row_to_float(o->in->encoding, o->b + cblock_row_offset(o->in, k), d, buf);
	return buf;
}

static float prow(const porder *o, uint32_t k)
{
	/* Row k minus the node mean into o->x; returns its squared norm. */
	uint32_t d = o->in->dim;
	const float *r = prow_float(o, k, o->x);
	float s = 0.0f;
	for (uint32_t j = 0; j < d; j++) {
		o->x[j] = r[j] - o->mu[j];
		s += o->x[j] * o->x[j];
	}
	return s;
}

static float dotf(const float *a, const float *b, uint32_t d)
{
	float s = 0.0f;
	for (uint32_t j = 0; j < d; j++)
		s += a[j] * b[j];
	return s;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

static int cmp_proj(const void *a, const void *b, void *ctx)
{
	const float *p = ctx;
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	if (p[x] != p[y])
		return p[x] < p[y] ? -1 : 1;
	return x < y ? -1 : x > y;
}

/* Orders the rows idx that go to pages [p0, p0 + pages) (as many as those
 * pages hold). */
static void order_node(porder *o, uint32_t *idx, uint32_t p0, uint32_t pages)
{
	uint32_t d = o->in->dim, n = page_end(o->in, p0 + pages - 1) - page_first(o->in, p0);
	if (pages <= 1) {
		qsort(idx, n, sizeof *idx, cmp_u32);
		return;
	}
	memset(o->mu, 0, d * sizeof(float));
	for (uint32_t i = 0; i < n; i++) {
		const float *r = prow_float(o, idx[i], o->x);
		for (uint32_t j = 0; j < d; j++)
			o->mu[j] += r[j];
	}
	for (uint32_t j = 0; j < d; j++)
		o->mu[j] /= (float)n;
	float far = -1.0f;
	for (uint32_t i = 0; i < n; i++) {
		float s = prow(o, idx[i]);
		if (s > far) {
			far = s;
			memcpy(o->v, o->x, d * sizeof(float));
		}
	}
	if (far > 0.0f) {
		for (uint32_t t = 0; t < ORDER_ITERS; t++) {
			memset(o->w, 0, d * sizeof(float));
			for (uint32_t i = 0; i < n; i++) {
				prow(o, idx[i]);
				float s = dotf(o->x, o->v, d);
				for (uint32_t j = 0; j < d; j++)
					o->w[j] += s * o->x[j];
			}
			float nw = sqrtf(dotf(o->w, o->w, d));
			if (!(nw > 0.0f) || !isfinite(nw))
				break;
			for (uint32_t j = 0; j < d; j++)
				o->v[j] = o->w[j] / nw;
		}
	}
	for (uint32_t i = 0; i < n; i++) {
		prow(o, idx[i]);
		float p = far > 0.0f ? dotf(o->x, o->v, d) : 0.0f;
		o->proj[idx[i]] = isfinite(p) ? p : 0.0f; /* f32 rows near FLT_MAX overflow: keep the sort's order total */
	}
	qsort_r(idx, n, sizeof *idx, cmp_proj, o->proj);
	uint32_t half = pages / 2, left = page_first(o->in, p0 + half) - page_first(o->in, p0);
	order_node(o, idx, p0, half);
	order_node(o, idx + left, p0 + half, pages - half);
}

/* order[r] = the id-order row that goes to row r (in->count entries). */
static int page_order(const ann_cblock_info *in, const uint8_t *b, uint32_t *order, ann_error *err)
{
	uint32_t d = in->dim;
	porder o = {.in = in, .b = b};
	float *buf = ann_malloc(((size_t)4 * d + in->count) * sizeof(float));
	if (!buf)
		return ann_err(err, ANN_E_NOMEM, "codes block: out of memory for the row order of %u rows", in->count);
	o.x = buf;
	o.mu = buf + d;
	o.v = buf + 2 * (size_t)d;
	o.w = buf + 3 * (size_t)d;
	o.proj = buf + 4 * (size_t)d;
	size_t fb = (size_t)in->count * d * sizeof(float);
	float *xf = fb <= ORDER_FLOAT_BUDGET ? ann_malloc(fb ? fb : 1) : NULL; /* NULL: convert per pass */
	if (xf) {
		for (uint32_t r = 0; r < in->count; r++)
			row_to_float(in->encoding, b + cblock_row_offset(in, r), d, xf + (size_t)r * d);
		o.xf = xf;
	}
	for (uint32_t r = 0; r < in->count; r++)
		order[r] = r;
	order_node(&o, order, 0, in->exact_pages);
	ann_free(xf);
	ann_free(buf);
	return ANN_OK;
}

int cblock_encode(const ann_rbq *q, ann_block_encoding enc, ann_block_pad pad, unsigned opts, uint32_t dim, size_t count,
		  const int64_t *ids, const void *vecs, ann_dtype vt, uint64_t partition, uint64_t generation,
		  uint8_t **out, size_t *out_len, uint32_t *head_len, ann_error *err)
{
	*out = NULL;
	*out_len = 0;
	if (enc != ANN_BLOCK_F32 && enc != ANN_BLOCK_U8 && enc != ANN_BLOCK_I8)
		return ann_err(err, ANN_E_INVAL, "codes block: encoding %u (codes need f32, u8 or i8)", (unsigned)enc);
	if (vt != ANN_DTYPE_F32 && vt != ANN_DTYPE_U8 && vt != ANN_DTYPE_I8)
		return ann_err(err, ANN_E_INVAL, "codes block: input type %d", (int)vt);
	if (ann_rbq_dim(q) != dim || count > UINT32_MAX)
		return ann_err(err, ANN_E_INVAL, "codes block: dimension %u for codes of dimension %u, or %zu vectors",
			       dim, ann_rbq_dim(q), count);
	bool f16 = (opts & CBLOCK_ENC_F16) != 0, crs = (opts & CBLOCK_ENC_CR) != 0;
	ann_cblock_info in;
	memset(&in, 0, sizeof in);
	in.header_bytes = CBLOCK_HEADER_BYTES;
	in.encoding = enc;
	in.code_kind = CBLOCK_CODE_RABITQ;
	in.code_bits = ann_rbq_bits(q);
	in.flags = (pad == ANN_BLOCK_PAD_LMDB ? BLOCK_FLAG_PAD_LMDB : 0) | (f16 ? CBLOCK_FLAG_F16 : 0) |
		   (crs ? CBLOCK_FLAG_CR : 0);
	in.page_base = pad == ANN_BLOCK_PAD_LMDB ? BLOCK_LMDB_PAGE_HEADER : 0;
	in.dim = dim;
	in.count = (uint32_t)count;
	in.full_code_bytes = (uint32_t)ann_rbq_code_bytes(q);
	in.code_bytes = in.full_code_bytes - (f16 ? CBLOCK_F16_SAVES : 0);
	in.row_bytes = (uint32_t)(dim * esize(enc));
	in.rows_per_page = in.row_bytes <= CBLOCK_PAGE ? CBLOCK_PAGE / in.row_bytes : 0;
	in.code_seed = ann_rbq_seed(q);
	in.partition = partition;
	in.generation = generation;
	size_t *perm = ann_malloc((count ? count : 1) * sizeof(size_t));
	int64_t *sids = ann_malloc((count ? count : 1) * sizeof(int64_t));
	uint8_t *idbuf = ann_malloc(count * 10 + 1);
	double *mean = ann_calloc(dim, sizeof(double));
	uint32_t *order = NULL;
	uint8_t *b = NULL, *full = NULL;
	int rc = ANN_OK;
	if (!perm || !sids || !idbuf || !mean) {
		rc = ann_err(err, ANN_E_NOMEM, "codes block: out of memory for %zu vectors", count);
		goto out;
	}
	for (size_t i = 0; i < count; i++)
		perm[i] = i;
	qsort_r(perm, count, sizeof(size_t), cmp_perm, (void *)ids);
	for (size_t i = 0; i < count; i++)
		sids[i] = ids[perm[i]];
	size_t id_var = block_ids_encode(sids, count, idbuf);
	in.centre_off = in.header_bytes;
	in.codes_off = (uint32_t)(in.centre_off + centre_bytes(enc, dim));
	in.sums_off = (uint32_t)(in.codes_off + (uint64_t)count * in.code_bytes);
	/* The layout: the head holds a sum per page (and, ordered, a map entry
	 * per row of ceil(log2 pages) bits), so its length depends on the page
	 * count. 2.0-2.2: ceil(count / rows_per_page) pages after the head's
	 * last page. Order matters only when a page holds 2 or more rows and
	 * there are 2 or more pages (with one row per page a re-rank costs its
	 * page whatever the order). HEAD_PAGE: page 0 is the head's last page,
	 * so with 1 <= r0 <= rows_per_page rows on it the count is that of the
	 * old layout or one more; the first that is consistent and no longer
	 * than the old layout wins. */
	uint32_t rpp = in.rows_per_page;
	bool may_order = (opts & CBLOCK_ENC_PAGE_ORDER) && rpp >= 2;
	uint64_t pages = pages_for(count, in.row_bytes, rpp);
	bool ordered = may_order && pages >= 2;
	uint64_t fixed = (uint64_t)in.sums_off + id_var + (crs ? 4ull * count : 0); /* the centre products follow the ids */
	uint64_t head = fixed + 4 * pages + (ordered ? map_bytes(count, (uint32_t)pages) : 0);
	uint64_t eo = exact_start(head, in.page_base), total = eo + pages * CBLOCK_PAGE;
	uint32_t r0 = rpp;
	bool hp = false;
	for (uint64_t p = pages; (opts & CBLOCK_ENC_HEAD_PAGE) && !hp && p <= pages + 1; p++) {
		bool ord = may_order && p >= 2;
		uint64_t h = fixed + 4 * p + (ord ? map_bytes(count, (uint32_t)p) : 0), e, lp;
		uint32_t r;
		if (head_page_layout(h, in.page_base, count, in.row_bytes, rpp, &e, &r, &lp) && lp == p &&
		    e + p * CBLOCK_PAGE <= total) {
			hp = true;
			pages = p;
			ordered = ord;
			head = h;
			eo = e;
			r0 = r;
			total = e + p * CBLOCK_PAGE;
		}
	}
	in.exact_pages = (uint32_t)pages;
	in.page0_rows = r0;
	in.page0_at = hp ? (uint32_t)(CBLOCK_PAGE - (uint64_t)r0 * in.row_bytes) : 0;
	if (hp)
		in.flags |= CBLOCK_FLAG_HEAD_PAGE;
	if (ordered) {
		in.flags |= CBLOCK_FLAG_PAGE_ORDER;
		in.map_bytes = (uint32_t)map_bytes(count, in.exact_pages);
		order = ann_malloc(count * sizeof(uint32_t));
		if (!order) {
			rc = ann_err(err, ANN_E_NOMEM, "codes block: out of memory for %zu vectors", count);
			goto out;
		}
	}
	in.ids_bytes = (uint32_t)(id_var + in.map_bytes);
	in.ids_off = in.sums_off + 4 * in.exact_pages;
	in.cr_off = crs ? in.ids_off + in.ids_bytes : 0;
	in.exact_offset = eo;
	in.total_bytes = total;
	if (in.total_bytes > UINT32_MAX) {
		rc = ann_err(err, ANN_E_INVAL, "codes block of partition %llu: %llu bytes, over 4 GiB",
			     (unsigned long long)partition, (unsigned long long)in.total_bytes);
		goto out;
	}
	in.head_bytes = (uint32_t)head;
	b = ann_aligned_alloc(4096, (size_t)in.total_bytes);
	if (!b) {
		rc = ann_err(err, ANN_E_NOMEM, "codes block: out of memory for %llu bytes",
			     (unsigned long long)in.total_bytes);
		goto out;
	}
	memset(b, 0, (size_t)in.total_bytes);
	/* Exact rows, in id order (checked here), then in page order when asked;
	 * their mean is the centre. */
	size_t es = esize(enc);
	for (int pass = 0; pass < (ordered ? 2 : 1); pass++) {
		if (pass == 1) {
			ANN_CHECK(rc, page_order(&in, b, order, err));
			/* the rows' pages again (page 0's head part holds nothing yet) */
			memset(b + in.exact_offset + in.page0_at, 0, (size_t)in.exact_pages * CBLOCK_PAGE - in.page0_at);
			uint8_t *map = b + in.ids_off + id_var;
			for (uint32_t r = 0; r < in.count; r++)
				map_put(map, map_bits(in.exact_pages), order[r], row_page(&in, r));
		}
		for (size_t r = 0; r < count; r++) {
			uint8_t *row = b + cblock_row_offset(&in, (uint32_t)r);
			size_t src = perm[pass ? order[r] : r];
			for (uint32_t j = 0; j < dim; j++) {
				double bad;
				if (put_elem(enc, vt, vecs, src * dim + j, row + j * es, &bad) < 0) {
					rc = ann_err(err, ANN_E_INVAL, "codes block: vector %zu (id %lld), dimension %u: value %g "
						     "does not fit encoding %s", src, (long long)ids[src], j, bad,
						     enc == ANN_BLOCK_U8 ? "u8" : enc == ANN_BLOCK_I8 ? "i8" : "f32");
					goto out;
				}
			}
		}
	}
	float *tmp = ann_malloc((size_t)dim * sizeof(float));
	if (!tmp) {
		rc = ann_err(err, ANN_E_NOMEM, "codes block: out of memory");
		goto out;
	}
	for (size_t r = 0; r < count; r++) {
		row_to_float(enc, b + cblock_row_offset(&in, (uint32_t)r), dim, tmp);
		for (uint32_t j = 0; j < dim; j++)
			mean[j] += tmp[j];
	}
	ann_free(tmp);
	for (uint32_t j = 0; j < dim; j++) {
		double m = count ? mean[j] / (double)count : 0.0;
		uint8_t *c = b + in.centre_off;
		if (enc == ANN_BLOCK_U8)
			c[j] = (uint8_t)lround(m); /* the mean of u8 values is within 0..255 */
		else if (enc == ANN_BLOCK_I8)
			c[j] = (uint8_t)(int8_t)lround(m);
		else
			ann_stf32(c + 4 * (size_t)j, (float)m);
	}
	if (f16) {
		/* Full records first; a row whose factors do not fit f16 makes the
		 * whole block a 2.0 block with full records. */
		full = ann_malloc((count ? count : 1) * (size_t)in.full_code_bytes);
		if (!full) {
			rc = ann_err(err, ANN_E_NOMEM, "codes block: out of memory for %zu codes", count);
			goto out;
		}
		ANN_CHECK(rc, encode_rows(q, &in, b, full, err));
		for (size_t r = 0; r < count; r++) {
			if (!slim_record(full + r * in.full_code_bytes, in.full_code_bytes,
					 b + in.codes_off + r * in.code_bytes)) {
				ann_free(full);
				full = NULL;
				ann_aligned_free(b);
				b = NULL;
				rc = cblock_encode(q, enc, pad, opts & ~CBLOCK_ENC_F16, dim, count, ids, vecs, vt, partition,
						   generation, out,
						   out_len, head_len, err);
				goto out;
			}
		}
	} else {
		ANN_CHECK(rc, encode_rows(q, &in, b, b + in.codes_off, err));
	}
	for (uint32_t p = 0; p < in.exact_pages; p++)
		ann_st32(b + in.sums_off + 4 * (size_t)p, page_sum(&in, b + in.exact_offset + (size_t)p * CBLOCK_PAGE, p));
	memcpy(b + in.ids_off, idbuf, id_var); /* the page map, if any, follows (written above) */
	if (crs)
		ANN_CHECK(rc, centre_products(&in, b, b + in.cr_off, err));
	/* Header last: it covers the head's checksum. */
	ann_st32(b + H_MAGIC, BLOCK_MAGIC);
	ann_st16(b + H_MAJOR, CBLOCK_VERSION_MAJOR);
	ann_st16(b + H_MINOR, crs ? 4 : hp ? 3 : ordered ? 2 : f16 ? 1 : 0); /* 2.0 stays byte for byte what older builds write */
	ann_st16(b + H_HBYTES, CBLOCK_HEADER_BYTES);
	b[H_ENC] = (uint8_t)enc;
	b[H_CODE] = CBLOCK_CODE_RABITQ;
	ann_st16(b + H_FLAGS, (uint16_t)in.flags);
	b[H_BITS] = (uint8_t)in.code_bits;
	ann_st32(b + H_DIM, dim);
	ann_st32(b + H_COUNT, in.count);
	ann_st32(b + H_CODEB, in.code_bytes);
	ann_st32(b + H_ROWB, in.row_bytes);
	ann_st32(b + H_RPP, in.rows_per_page);
	ann_st32(b + H_PAGES, in.exact_pages);
	ann_st64(b + H_SEED, in.code_seed);
	ann_st64(b + H_PART, partition);
	ann_st64(b + H_GEN, generation);
	ann_st32(b + H_HEADB, in.head_bytes);
	ann_st32(b + H_IDSB, in.ids_bytes);
	ann_st64(b + H_EXOFF, in.exact_offset);
	ann_st64(b + H_HEADX, XXH64(b + in.header_bytes, in.head_bytes - in.header_bytes, 0));
	ann_st64(b + H_TOTAL, in.total_bytes);
	ann_st64(b + H_HDRX, XXH64(b, H_HDRX, 0));
	*out = b;
	*out_len = (size_t)in.total_bytes;
	*head_len = in.head_bytes;
	b = NULL;
fail:
out:
	ann_aligned_free(b);
	ann_free(full);
	ann_free(perm);
	ann_free(sids);
	ann_free(idbuf);
	ann_free(mean);
	ann_free(order);
	return rc;
}

/* Whole-block checks beyond the head: length, page sums, zero gaps. */
static int check_whole(const uint8_t *b, size_t len, ann_cblock_info *in, int64_t *ids, ann_error *err)
{
	ANN_TRY(cblock_head(b, len, in, ids, err));
	if (len < in->total_bytes)
		return ann_err(err, ANN_E_CORRUPT, "codes block of partition %llu: %zu bytes, the block has %llu",
			       (unsigned long long)in->partition, len, (unsigned long long)in->total_bytes);
	for (uint64_t i = in->head_bytes; i < in->exact_offset; i++)
		if (b[i])
			return ann_err(err, ANN_E_CORRUPT, "codes block of partition %llu: non-zero padding at byte %llu",
				       (unsigned long long)in->partition, (unsigned long long)i);
	if (in->exact_pages)
		ANN_TRY(cblock_check_pages(in, b + in->sums_off, b + in->exact_offset, in->exact_offset,
					   (size_t)in->exact_pages * CBLOCK_PAGE, err));
	/* Bytes of exact pages that hold no row (and are not head) are zero. */
	for (uint32_t p = 0; p < in->exact_pages; p++) {
		const uint8_t *pg = b + in->exact_offset + (size_t)p * CBLOCK_PAGE;
		uint64_t lo = 0, hi; /* the rows' bytes in the page */
		if (in->rows_per_page) {
			lo = p == 0 ? in->page0_at : 0;
			hi = lo + (uint64_t)(page_end(in, p) - page_first(in, p)) * in->row_bytes;
		} else {
			uint64_t used = (uint64_t)in->count * in->row_bytes, start = (uint64_t)p * CBLOCK_PAGE;
			hi = used > start ? ANN_MIN(used - start, (uint64_t)CBLOCK_PAGE) : 0;
		}
		uint64_t skip = p == 0 && (in->flags & CBLOCK_FLAG_HEAD_PAGE) ? in->head_bytes - in->exact_offset : 0;
		for (uint64_t i = skip; i < CBLOCK_PAGE; i++)
			if ((i < lo || i >= hi) && pg[i])
				return ann_err(err, ANN_E_CORRUPT, "codes block of partition %llu: non-zero byte %llu "
					       "in exact page %u past its rows", (unsigned long long)in->partition,
					       (unsigned long long)i, p);
	}
	return ANN_OK;
}

int cblock_decode(const void *buf, size_t len, ann_cblock_info *in, int64_t **ids, size_t *ids_cap, uint8_t **rows,
		  size_t *rows_cap, ann_error *err)
{
	ANN_TRY(cblock_peek(buf, len, in, err));
	size_t n = in->count ? in->count : 1;
	if (*ids_cap < n) {
		int64_t *p = ann_realloc(*ids, n * sizeof(int64_t));
		if (!p)
			return ann_err(err, ANN_E_NOMEM, "codes block: out of memory for %zu ids", n);
		*ids = p;
		*ids_cap = n;
	}
	size_t rb = (size_t)in->count * in->row_bytes + 64;
	if (*rows_cap < rb) {
		uint8_t *p = ann_realloc(*rows, rb);
		if (!p)
			return ann_err(err, ANN_E_NOMEM, "codes block: out of memory for %zu bytes of rows", rb);
		*rows = p;
		*rows_cap = rb;
	}
	ANN_TRY(check_whole(buf, len, in, *ids, err));
	for (uint32_t i = 0; i < in->count; i++)
		memcpy(*rows + (size_t)i * in->row_bytes, (const uint8_t *)buf + cblock_row_offset(in, i), in->row_bytes);
	return ANN_OK;
}

int cblock_verify_codes(const ann_rbq *q, const void *buf, size_t len, ann_error *err)
{
	ann_cblock_info in;
	ANN_TRY(check_whole(buf, len, &in, NULL, err));
	if (in.code_bits != ann_rbq_bits(q) || in.code_seed != ann_rbq_seed(q) || in.dim != ann_rbq_dim(q) ||
	    in.full_code_bytes != ann_rbq_code_bytes(q))
		return ann_err(err, ANN_E_FORMAT, "codes block of partition %llu: codes of %u bits (seed %llu, dimension %u), "
			       "the index says %u bits (seed %llu, dimension %u)", (unsigned long long)in.partition,
			       in.code_bits, (unsigned long long)in.code_seed, in.dim, ann_rbq_bits(q),
			       (unsigned long long)ann_rbq_seed(q), ann_rbq_dim(q));
	size_t cb = (size_t)in.count * in.full_code_bytes;
	uint8_t *codes = ann_malloc(cb ? cb : 1);
	uint8_t *slim = ann_malloc(in.full_code_bytes);
	if (!codes || !slim) {
		ann_free(codes);
		ann_free(slim);
		return ann_err(err, ANN_E_NOMEM, "verify: out of memory for %zu bytes of codes", cb);
	}
	int rc = encode_rows(q, &in, buf, codes, err);
	if (rc == ANN_OK) {
		const uint8_t *stored = (const uint8_t *)buf + in.codes_off;
		bool f16 = (in.flags & CBLOCK_FLAG_F16) != 0;
		for (uint32_t i = 0; i < in.count; i++) {
			const uint8_t *want = codes + (size_t)i * in.full_code_bytes;
			if (f16 && !slim_record(want, in.full_code_bytes, slim)) {
				rc = ann_err(err, ANN_E_CORRUPT, "codes block of partition %llu: f16 factors, but those of row "
					     "%u do not fit f16", (unsigned long long)in.partition, i);
				break;
			}
			if (memcmp(stored + (size_t)i * in.code_bytes, f16 ? slim : want, in.code_bytes)) {
				rc = ann_err(err, ANN_E_CORRUPT, "codes block of partition %llu: the code of row %u "
					     "disagrees with its exact vector", (unsigned long long)in.partition, i);
				break;
			}
		}
	}
	if (rc == ANN_OK && (in.flags & CBLOCK_FLAG_CR)) {
		uint8_t *want = ann_malloc((size_t)in.count * 4 + 1);
		if (!want)
			rc = ann_err(err, ANN_E_NOMEM, "verify: out of memory for %u centre products", in.count);
		else
			rc = centre_products(&in, buf, want, err);
		for (uint32_t i = 0; rc == ANN_OK && i < in.count; i++)
			if (memcmp(want + 4 * (size_t)i, (const uint8_t *)buf + in.cr_off + 4 * (size_t)i, 4))
				rc = ann_err(err, ANN_E_CORRUPT, "codes block of partition %llu: the centre product of row %u "
					     "disagrees with its exact vector", (unsigned long long)in.partition, i);
		ann_free(want);
	}
	ann_free(codes);
	ann_free(slim);
	return rc;
}
