/* SPDX-License-Identifier: MIT */
/*
 * hnsw_blob.c: what hnsw.c's graph does besides build and search: the
 * reachability check and repair (every node reachable from the entry point
 * at every level it is on), and the blob (ann_hnsw_save / ann_hnsw_load,
 * docs/FORMAT.md). A loaded blob is checked field by field and against its
 * checksum before any of it is used.
 */
#include "hnsw_int.h"

#include <math.h>
#include <xxhash.h>

/* ---- reachability ------------------------------------------------------------ */

/* BFS along level-lc links from the nodes already marked in reach (the
 * queue holds them, qn of them); marks what it reaches. */
static void hn_bfs(const ann_hnsw *h, int lc, uint8_t *reach, uint32_t *queue, size_t qn)
{
	for (size_t qi = 0; qi < qn; qi++) {
		const uint32_t *l = hn_links(h, queue[qi], lc);
		for (uint32_t j = 0; j < l[0]; j++) {
			uint32_t nb = l[1 + j];
			if (!reach[nb]) {
				reach[nb] = 1;
				queue[qn++] = nb;
			}
		}
	}
}

/* Marks the level-lc nodes reachable from the entry point; returns how many
 * nodes of that level are not. */
static size_t hn_reach(const ann_hnsw *h, int lc, uint8_t *reach, uint32_t *queue)
{
	memset(reach, 0, h->n);
	reach[h->entry] = 1;
	queue[0] = h->entry;
	hn_bfs(h, lc, reach, queue, 1);
	size_t lost = 0;
	for (size_t i = 0; i < h->n; i++)
		lost += h->level[i] >= lc && !reach[i];
	return lost;
}

/* Why: on clustered data (well-separated mixture components, and so their
 * k-means centroids) the neighbour heuristic can prune every link into a
 * component that was reached late, and a search from the entry point then
 * never finds it, whatever ef: routing silently misses the partitions that
 * hold a query's neighbours. After a build, every node left unreachable at
 * a level gets a link from the nearest reachable node (found by a search of
 * that level, which only walks reachable nodes), replacing there the link
 * whose target has the most in-links (so no other node loses its last
 * way in); its own links then make its component reachable. */
static int hn_repair(ann_hnsw *h, ann_hnsw_ctx *c, size_t *added)
{
	*added = 0;
	if (h->n < 2)
		return ANN_OK;
	uint8_t *reach = ann_malloc(h->n);
	uint32_t *queue = ann_malloc(h->n * sizeof(uint32_t));
	uint32_t *indeg = ann_malloc(h->n * sizeof(uint32_t));
	int rc = ANN_OK;
	if (!reach || !queue || !indeg) {
		rc = ANN_E_NOMEM;
		goto out;
	}
	for (int lc = 0; lc <= h->max_level; lc++) {
		/* A replaced link can cut off what only it reached: passes repeat
		 * until nothing is lost (in practice one or two). */
		for (int pass = 0; pass < 16 && hn_reach(h, lc, reach, queue) > 0; pass++) {
			/* In-links from reachable nodes only: a target with two or more
			 * keeps a way in when one is replaced. */
			memset(indeg, 0, h->n * sizeof(uint32_t));
			for (size_t i = 0; i < h->n; i++) {
				if (h->level[i] < lc || !reach[i])
					continue;
				const uint32_t *l = hn_links(h, (uint32_t)i, lc);
				for (uint32_t j = 0; j < l[0]; j++)
					indeg[l[1 + j]]++;
			}
			uint32_t cap = lc ? h->M : h->M0;
			for (size_t u = 0; u < h->n; u++) {
				if (h->level[u] < lc || reach[u])
					continue;
				const float *q = hn_query_of(h, c, (uint32_t)u);
				uint32_t ep = h->entry;
				float epd = hn_dist(h, q, ep);
				for (int l = h->max_level; l > lc; l--)
					hn_greedy(h, c, q, &ep, &epd, l);
				if (hn_search_layer(h, c, q, ep, epd, h->efc, lc) < 0) {
					rc = ANN_E_NOMEM;
					goto out;
				}
				/* The nearest reachable node whose list has room, or else
				 * a link to give up: the target with the most in-links.
				 * The search may start at u itself (the descent through
				 * the upper levels can land on it) and walk u's own
				 * unreachable out-links: neither u nor those may take
				 * the link, or u would point at itself or stay cut off.
				 * The entry point is reachable at every level. */
				size_t nc = hn_drain(c);
				uint32_t r = UINT32_MAX, slot = UINT32_MAX;
				for (size_t i = 0; i < nc && slot == UINT32_MAX; i++) {
					uint32_t v = c->sorted[i].id;
					if (v == u || !reach[v])
						continue;
					if (r == UINT32_MAX)
						r = v;
					const uint32_t *l = hn_links(h, v, lc);
					if (l[0] < cap) {
						r = v;
						slot = l[0];
					}
				}
				if (r == UINT32_MAX) {
					r = h->entry;
					if (hn_links(h, r, lc)[0] < cap)
						slot = hn_links(h, r, lc)[0];
				}
				uint32_t *l = hn_links(h, r, lc);
				if (slot == UINT32_MAX) {
					slot = 0;
					for (uint32_t j = 1; j < l[0]; j++)
						if (indeg[l[1 + j]] > indeg[l[1 + slot]])
							slot = j;
					indeg[l[1 + slot]]--;
				} else {
					l[0]++;
				}
				l[1 + slot] = (uint32_t)u;
				indeg[u]++;
				reach[u] = 1;
				queue[0] = (uint32_t)u;
				hn_bfs(h, lc, reach, queue, 1);
				(*added)++;
			}
		}
	}
out:
	ann_free(reach);
	ann_free(queue);
	ann_free(indeg);
	return rc;
}

int ann_hnsw_repair(ann_hnsw *h, size_t *added, ann_error *err)
{
	size_t a = 0;
	if (added)
		*added = 0;
	if (h->failed)
		return ann_err(err, ANN_E_STATE, "hnsw: an earlier add or build failed, no repair");
	if (h->n == 0)
		return ANN_OK;
	if (!h->actx)
		ANN_TRY(ann_hnsw_ctx_new(&h->actx, err));
	ANN_TRY(hn_ctx_prepare(h, h->actx, h->efc, err));
	if (hn_repair(h, h->actx, &a) < 0)
		return ann_err(err, ANN_E_NOMEM, "hnsw: out of memory repairing the links of %zu vectors", h->n);
	if (added)
		*added = a;
	return ANN_OK;
}

size_t ann_hnsw_unreachable(const ann_hnsw *h)
{
	if (h->n == 0)
		return 0;
	uint8_t *reach = ann_malloc(h->n);
	uint32_t *queue = ann_malloc(h->n * sizeof(uint32_t));
	size_t lost = SIZE_MAX;
	if (reach && queue) {
		lost = 0;
		for (int lc = 0; lc <= h->max_level; lc++)
			lost += hn_reach(h, lc, reach, queue);
	}
	ann_free(reach);
	ann_free(queue);
	return lost;
}

/* ---- public: blob -------------------------------------------------------------- */

/* Bytes of the vector section of the body: float32 rows, or uint8 rows
 * zero-padded to a multiple of 4. */
static size_t hn_blob_vec_bytes(size_t n, size_t d, bool u8)
{
	return u8 ? ANN_ALIGN_UP(n * d, 4) : n * d * sizeof(float);
}

/* Header bytes of h's blob: minor 2 holds the search ef. */
static size_t hn_blob_header(const ann_hnsw *h)
{
	return h->search_ef ? HN_HEADER_EF : HN_HEADER;
}

size_t ann_hnsw_blob_bytes(const ann_hnsw *h)
{
	size_t b = hn_blob_header(h) + ANN_ALIGN_UP(h->n, 4) + hn_blob_vec_bytes(h->n, h->d, h->u8) + HN_TRAILER;
	for (size_t i = 0; i < h->n; i++)
		for (int lc = 0; lc <= h->level[i]; lc++)
			b += 4 * (1 + (size_t)hn_links(h, (uint32_t)i, lc)[0]);
	return b;
}

int ann_hnsw_save(const ann_hnsw *h, uint8_t *buf, size_t cap, ann_error *err)
{
	size_t need = ann_hnsw_blob_bytes(h);
	if (!buf || cap < need)
		return ann_err(err, ANN_E_INVAL, "hnsw: blob buffer of %zu bytes, %zu needed", cap, need);
	size_t hdr = hn_blob_header(h);
	memset(buf, 0, hdr);
	memcpy(buf, HN_MAGIC, 8);
	ann_st16(buf + 8, ANN_HNSW_VERSION_MAJOR);
	/* f32 storage is written as 1.0, whose layout it keeps, so that readers
	 * older than 1.1 still load it; u8 storage needs 1.1, a search ef 1.2. */
	ann_st16(buf + 10, h->search_ef ? 2 : h->u8 ? 1 : 0);
	ann_st32(buf + 12, (uint32_t)hdr);
	ann_st32(buf + 16, (uint32_t)h->d);
	ann_st32(buf + 20, (uint32_t)h->metric);
	ann_st32(buf + 24, h->M);
	ann_st32(buf + 28, h->efc);
	ann_st64(buf + 32, h->n);
	ann_st32(buf + 40, (uint32_t)(int32_t)h->max_level);
	ann_st32(buf + 44, h->entry);
	ann_st32(buf + 48, h->flags);
	ann_st32(buf + 52, h->u8 ? HN_STORE_U8 : HN_STORE_F32);
	for (int i = 0; i < 4; i++)
		ann_st64(buf + 56 + 8 * i, h->rng.s[i]);
	ann_st64(buf + 88, need - hdr - HN_TRAILER);
	if (h->search_ef)
		ann_st32(buf + 96, h->search_ef);
	uint8_t *p = buf + hdr;
	if (h->n)
		memcpy(p, h->level, h->n);
	memset(p + h->n, 0, ANN_ALIGN_UP(h->n, 4) - h->n);
	p += ANN_ALIGN_UP(h->n, 4);
	if (h->u8) {
		size_t vb = hn_blob_vec_bytes(h->n, h->d, true);
		if (h->n)
			memcpy(p, h->vec, h->n * h->d);
		memset(p + h->n * h->d, 0, vb - h->n * h->d);
		p += vb;
	} else {
		const float *v = (const float *)(const void *)h->vec;
		for (size_t i = 0; i < h->n * h->d; i++, p += 4)
			ann_stf32(p, v[i]);
	}
	for (size_t i = 0; i < h->n; i++) {
		for (int lc = 0; lc <= h->level[i]; lc++) {
			const uint32_t *l = hn_links(h, (uint32_t)i, lc);
			for (uint32_t j = 0; j <= l[0]; j++, p += 4)
				ann_st32(p, l[j]);
		}
	}
	ann_st64(p, XXH64(buf, (size_t)(p - buf), 0));
	return ANN_OK;
}

int ann_hnsw_load(const uint8_t *buf, size_t len, ann_hnsw **out, ann_error *err)
{
	*out = NULL;
	if (!buf || len < HN_HEADER + HN_TRAILER)
		return ann_err(err, ANN_E_CORRUPT, "hnsw blob: %zu bytes, less than header + checksum (%u)",
			       len, HN_HEADER + HN_TRAILER);
	if (memcmp(buf, HN_MAGIC, 8) != 0)
		return ann_err(err, ANN_E_FORMAT, "hnsw blob: bad magic, not an HNSW graph");
	unsigned major = ann_ld16(buf + 8), minor = ann_ld16(buf + 10);
	if (major != ANN_HNSW_VERSION_MAJOR)
		return ann_err(err, ANN_E_FORMAT, "hnsw blob: format version %u.%u, this build reads %u.x",
			       major, minor, ANN_HNSW_VERSION_MAJOR);
	size_t hdr = ann_ld32(buf + 12);
	uint64_t body = ann_ld64(buf + 88);
	/* A later minor may grow the header (its body still starts at offset 12's
	 * value); minors 0 and 1 have exactly HN_HEADER bytes, 2 HN_HEADER_EF. */
	bool later = minor > ANN_HNSW_VERSION_MINOR;
	size_t want_hdr = minor >= 2 ? HN_HEADER_EF : HN_HEADER;
	if (hdr < want_hdr || (!later && hdr != want_hdr) || hdr > len - HN_TRAILER ||
	    body != len - HN_TRAILER - hdr)
		return ann_err(err, ANN_E_CORRUPT,
			       "hnsw blob: %zu bytes, header says %zu + body %llu + %u (truncated?)", len,
			       hdr, (unsigned long long)body, HN_TRAILER);
	uint64_t want = ann_ld64(buf + len - HN_TRAILER), got = XXH64(buf, len - HN_TRAILER, 0);
	if (want != got)
		return ann_err(err, ANN_E_CORRUPT,
			       "hnsw blob: checksum mismatch at offset %zu (stored %016llx, data %016llx)",
			       len - HN_TRAILER, (unsigned long long)want, (unsigned long long)got);

	size_t d = ann_ld32(buf + 16);
	uint32_t metric = ann_ld32(buf + 20), M = ann_ld32(buf + 24), efc = ann_ld32(buf + 28);
	uint64_t n64 = ann_ld64(buf + 32);
	int32_t max_level = (int32_t)ann_ld32(buf + 40);
	uint32_t entry = ann_ld32(buf + 44), flags = ann_ld32(buf + 48), store = ann_ld32(buf + 52);
	uint32_t search_ef = minor >= 2 ? ann_ld32(buf + 96) : 0;
	int rc = hn_check_params(d, (ann_metric)metric, M, efc, err);
	if (rc < 0)
		return ann_err_prefix(err, ANN_E_CORRUPT, "hnsw blob header");
	/* Offset 52 was reserved (0) in 1.0: 0 is float32 storage in every minor. */
	if (store != HN_STORE_F32 && store != HN_STORE_U8)
		return ann_err(err, ANN_E_FORMAT, "hnsw blob header: vector storage %u is unknown to this build "
			       "(it reads %u float32 and %u uint8)", store, HN_STORE_F32, HN_STORE_U8);
	bool u8 = store == HN_STORE_U8;
	if (u8 && (minor < 1 || metric != ANN_METRIC_L2))
		return ann_err(err, ANN_E_CORRUPT,
			       "hnsw blob header: uint8 storage needs version 1.1 and metric L2, found %u.%u, "
			       "metric %u", major, minor, metric);
	if (n64 > HN_MAX_N || (flags & ~HN_FLAG_KEEP_PRUNED) ||
	    (n64 == 0 ? (max_level != -1 || entry != HN_NONE)
		      : (max_level < 0 || max_level > ANN_HNSW_MAX_LEVEL || entry >= n64)))
		return ann_err(err, ANN_E_CORRUPT,
			       "hnsw blob header: n %llu, max_level %d, entry %u, flags %#x are inconsistent",
			       (unsigned long long)n64, (int)max_level, entry, flags);
	if (search_ef > ANN_MAX_EF || (minor == 2 && ann_ld32(buf + 100) != 0))
		return ann_err(err, ANN_E_CORRUPT, "hnsw blob header: search ef %u (expected 0..%u), reserved %u "
			       "(expected 0)", search_ef, ANN_MAX_EF, ann_ld32(buf + 100));
	size_t n = (size_t)n64;

	ann_hnsw *h = NULL;
	ANN_TRY(hn_create(d, (ann_metric)metric, u8, M, efc, 0, &h, err));
	h->flags = flags;
	h->search_ef = search_ef;
	for (int i = 0; i < 4; i++)
		h->rng.s[i] = ann_ld64(buf + 56 + 8 * i);
	const uint8_t *p = buf + hdr, *end = buf + len - HN_TRAILER;
	size_t vbytes; /* the float32 size bounds the uint8 one: one overflow check */
	bool fits = ann_mul_ok(n, d * sizeof(float), &vbytes);
	if (fits)
		vbytes = hn_blob_vec_bytes(n, d, u8);
	if (!fits || (size_t)(end - p) < ANN_ALIGN_UP(n, 4) ||
	    (size_t)(end - p) - ANN_ALIGN_UP(n, 4) < vbytes + 4 * n) {
		rc = ann_err(err, ANN_E_CORRUPT,
			     "hnsw blob: body of %zu bytes cannot hold %zu vectors of dimension %zu",
			     (size_t)(end - p), n, d);
		goto fail;
	}
	ANN_CHECK(rc, hn_set_cap(h, n, err));
	size_t words = 0;
	for (size_t i = 0; i < n; i++) {
		if (p[i] > max_level) {
			rc = ann_err(err, ANN_E_CORRUPT,
				     "hnsw blob offset %zu: node %zu has level %u above max_level %d",
				     (size_t)(p + i - buf), i, p[i], (int)max_level);
			goto fail;
		}
		h->level[i] = p[i];
		h->uoff[i] = words;
		words += (size_t)p[i] * (1 + M);
	}
	/* The padding after the levels (and after uint8 rows) is zero: a saved
	 * graph is the same bytes as the blob it was loaded from. */
	for (size_t i = n; i < ANN_ALIGN_UP(n, 4); i++) {
		if (p[i] != 0) {
			rc = ann_err(err, ANN_E_CORRUPT, "hnsw blob offset %zu: padding byte after the levels is %u, not 0",
				     (size_t)(p + i - buf), p[i]);
			goto fail;
		}
	}
	if (n && h->level[entry] != max_level) {
		rc = ann_err(err, ANN_E_CORRUPT, "hnsw blob: entry point %u has level %u, max_level is %d",
			     entry, h->level[entry], (int)max_level);
		goto fail;
	}
	p += ANN_ALIGN_UP(n, 4);
	if (u8) {
		if (n) /* every byte is a valid coordinate */
			memcpy(h->vec, p, n * d);
		for (size_t i = n * d; i < vbytes; i++) {
			if (p[i] != 0) {
				rc = ann_err(err, ANN_E_CORRUPT,
					     "hnsw blob offset %zu: padding byte after the uint8 vectors is %u, not 0",
					     (size_t)(p + i - buf), p[i]);
				goto fail;
			}
		}
		p += vbytes;
	} else {
		float *v = (float *)(void *)h->vec;
		for (size_t i = 0; i < n * d; i++, p += 4) {
			float f = ann_ldf32(p);
			if (!isfinite(f)) {
				rc = ann_err(err, ANN_E_CORRUPT,
					     "hnsw blob offset %zu: vector %zu component %zu is not finite",
					     (size_t)(p - buf), i / d, i % d);
				goto fail;
			}
			v[i] = f;
		}
	}
	ANN_CHECK(rc, hn_upper_reserve(h, words, err));
	h->upper_n = words;
	for (size_t i = 0; i < n; i++) {
		for (int lc = 0; lc <= h->level[i]; lc++) {
			uint32_t cap = lc ? M : 2 * M;
			if (end - p < 4)
				goto short_body;
			uint32_t cnt = ann_ld32(p);
			if (cnt > cap) {
				rc = ann_err(err, ANN_E_CORRUPT,
					     "hnsw blob offset %zu: node %zu level %d has %u neighbours, "
					     "at most %u allowed",
					     (size_t)(p - buf), i, lc, cnt, cap);
				goto fail;
			}
			p += 4;
			if ((size_t)(end - p) < 4 * (size_t)cnt)
				goto short_body;
			uint32_t *l = hn_links(h, (uint32_t)i, lc);
			l[0] = cnt;
			for (uint32_t j = 0; j < cnt; j++, p += 4) {
				uint32_t id = ann_ld32(p);
				if (id >= n || id == i || h->level[id] < lc) {
					rc = ann_err(err, ANN_E_CORRUPT,
						     "hnsw blob offset %zu: node %zu level %d: neighbour %u "
						     "is not another node of level >= %d (n %zu)",
						     (size_t)(p - buf), i, lc, id, lc, n);
					goto fail;
				}
				l[1 + j] = id;
			}
		}
	}
	if (p != end) {
		rc = ann_err(err, ANN_E_CORRUPT, "hnsw blob offset %zu: %zu bytes left after the last list",
			     (size_t)(p - buf), (size_t)(end - p));
		goto fail;
	}
	h->n = n;
	h->max_level = max_level;
	h->entry = entry;
	*out = h;
	return ANN_OK;
short_body:
	rc = ann_err(err, ANN_E_CORRUPT, "hnsw blob offset %zu: neighbour lists run past the end of the body",
		     (size_t)(p - buf));
fail:
	ann_hnsw_free(h);
	return rc;
}
