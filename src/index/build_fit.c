/* SPDX-License-Identifier: MIT */
/*
 * build_fit.c: page-fitted assignment (docs/DESIGN.md "Page-fitted heads").
 *
 * A query reads each probed partition's head in whole 4 KiB pages. On the
 * 1M --profile real set a head's last page is on average half empty: 22% of
 * round 1's bytes at recall 0.9 are that padding. Before packing, the build
 * moves the rows of a nearly empty last page (at most FIT_PAGE_SHARE of a
 * page and FIT_PART_SHARE of the partition) to the next-nearest centroid's
 * partition (the router's own assignment with two copies, so the plan is
 * as deterministic as the routing), where that head has room in its own last page, so the source's
 * head shrinks by a page and the receiver's keeps its page count. The rows
 * moved are the ones nearest the boundary (smallest distance difference to
 * the receiver's centroid); a partition sheds all of its last page or
 * nothing. Measured in numpy on real1m (4934 partitions): 3% of the rows
 * move, the rows scanned at equal routing recall stay within 1%, the head
 * bytes fall 14%.
 *
 * Invariants:
 *  1. Only for codes blocks (their head size is a function of the row
 *     count), one copy per vector, the k-means graph router under l2 or
 *     cosine (unit rows and centroids: the l2 margins rank as the cosines
 *     do), and a single-node build; otherwise the plan is empty and packing is as
 *     before.
 *  2. Deterministic: the plan depends only on the spill's contents and the
 *     router as reloaded from its saved blob, through its assignment and its
 *     centroids (not the centroid graph's links, which a build with threads
 *     does not reproduce), so a resumed build recomputes the same plan (it is
 *     not saved) and packs the same blocks, and so does a new build.
 *  3. Memory: the candidate rows kept (id, receiver, margin, vector), as
 *     allocated, are bounded by build_fit_budget (1/16 of the sample's bytes, which
 *     the build fits within half its budget; a fixed part of the fingerprint,
 *     so the plan does not depend on --mem beyond the sample); past it no
 *     more partitions shed. Every row stays in exactly one partition.
 *  4. The head-size model errs on the safe side (a received row's id is
 *     costed as the largest varint delta, a shed row's id as free, and
 *     FIT_MARGIN bytes are kept free), so a
 *     receiver does not gain a page (save in an f32 block of extreme scale,
 *     written with full records where the model counts slim ones); a wrong
 *     estimate costs bytes, never correctness.
 *  5. Disk: a receiver's head keeps its pages, but its exact rows may
 *     start a page. Fitting spends such pages only from what the disk
 *     budget (FIT_DISK_RATIO x the raw rows, less the catalog) leaves over
 *     the blocks as modelled; with none left a row goes only where its
 *     block keeps its page count. So fitting never takes an index past the
 *     budget that packing without it would have met.
 */
#include <math.h>

#include "build_int.h"
#include "cblock.h"
#include "hnsw.h"
#include "index_meta.h"
#include "router.h"

#define FIT_PAGE_SHARE 0.5 /* shed a last page holding at most this share of a page's rows */
#define FIT_PART_SHARE 0.3 /* ... and at most this share of the partition */
#define FIT_CANDIDATES 4    /* rows considered per row to shed, nearest the boundary first */
#define FIT_MARGIN 16.0     /* bytes a head keeps free of its last page, for the model's error */
#define FIT_DISK_RATIO 1.5  /* the disk budget, x the raw rows (docs/DESIGN.md "Defaults") */
#define FIT_CATALOG 98304.0 /* the catalog's fixed part and its share a partition, as build_defaults.c */
#define FIT_CATALOG_PART 410.0
#define PAGE 4096.0

typedef struct cand {
	int64_t id;
	uint32_t src, dst;
	uint32_t shed; /* rows the source sheds: the fewest go first */
	float margin; /* |x - c_dst|^2 - |x - c_src|^2 */
	uint64_t vec; /* offset into the candidates' vectors */
} cand;

static size_t varint_bytes(uint64_t v)
{
	size_t n = 1;
	while (v >= 0x80) {
		v >>= 7;
		n++;
	}
	return n;
}

/* Head bytes of the id section for ascending ids (format "Ids": zigzag of
 * the first, deltas after). */
static double id_bytes(const int64_t *ids, uint64_t n)
{
	double s = 0;
	for (uint64_t i = 0; i < n; i++)
		s += (double)varint_bytes(i ? (uint64_t)(ids[i] - ids[i - 1])
					    : ((uint64_t)ids[0] << 1) ^ (uint64_t)(ids[0] >> 63));
	return s;
}

/* The head-size model (docs/FORMAT.md "Codes block"): header and centre,
 * the records (slim when the block can be), page sums, ids and page map. */
typedef struct hmodel {
	double fixed, rec, rpp, rowd; /* rowd: an exact row's share of the page grid */
	bool map;
} hmodel;

/* Head bytes of a block of n rows whose ids take idb bytes. */
static double head_est(const hmodel *m, double n, double idb)
{
	double ep = m->rpp >= 1 ? ceil(n / m->rpp) : n, bits = ep >= 2 ? ceil(log2(ep)) : 0;
	double map = m->map && m->rpp >= 2 && ep >= 2 ? ceil(n * bits / 8.0) : 0;
	return m->fixed + n * m->rec + 4.0 * ep + idb + map;
}

/* Pages of the whole block: the head, then the exact rows from the head's
 * last page on (codes block 2.3), none straddling a page. */
static double block_pages(const hmodel *m, double n, double idb)
{
	return ceil((head_est(m, n, idb) + n * m->rowd) / PAGE);
}

static void row_float(const build *b, const void *vecs, uint64_t i, float *out)
{
	const uint8_t *r = (const uint8_t *)vecs + i * b->pay_bytes;
	if (b->pay_type == ANN_DTYPE_U8)
		for (uint32_t j = 0; j < b->d; j++)
			out[j] = r[j];
	else if (b->pay_type == ANN_DTYPE_I8)
		for (uint32_t j = 0; j < b->d; j++)
			out[j] = (float)((const int8_t *)r)[j];
	else
		memcpy(out, r, b->d * sizeof(float));
}

static float l2(const float *a, const float *c, uint32_t d)
{
	float s = 0;
	for (uint32_t j = 0; j < d; j++) {
		float t = a[j] - c[j];
		s += t * t;
	}
	return s;
}

static int cmp_cand(const void *pa, const void *pb)
{
	const cand *x = pa, *y = pb;
	if (x->shed != y->shed)
		return x->shed < y->shed ? -1 : 1;
	if (x->src != y->src)
		return x->src < y->src ? -1 : 1;
	if (x->margin != y->margin)
		return x->margin < y->margin ? -1 : 1;
	return x->id < y->id ? -1 : x->id > y->id;
}

static int cmp_dst(const void *pa, const void *pb)
{
	const cand *x = pa, *y = pb;
	if (x->dst != y->dst)
		return x->dst < y->dst ? -1 : 1;
	return x->id < y->id ? -1 : x->id > y->id;
}

static int cmp_i64(const void *pa, const void *pb)
{
	int64_t x = *(const int64_t *)pa, y = *(const int64_t *)pb;
	return x < y ? -1 : x > y;
}

size_t build_fit_budget(const build *b)
{
	return b->sample_n * b->d * sizeof(float) / 16;
}

bool build_fit_applies(const build *b)
{
	/* From the options alone: the fingerprint asks before the router exists. */
	return b->o->page_fit && b->o->code_bits && b->copies == 1 && !b->skip_empty && b->o->router == ANN_ROUTER_KMEANS &&
	       ann_metric_euclid(b->o->metric) && b->o->kmeans.router_bits == 0;
}

void build_fit_free(build_fit *f)
{
	ann_free(f->out_ids);
	ann_free(f->in_off);
	ann_free(f->in_ids);
	ann_free(f->in_vecs);
	memset(f, 0, sizeof *f);
}

int build_fit_plan(build *b, int64_t *ids, void *vecs, build_fit *f, ann_error *err)
{
	memset(f, 0, sizeof *f);
	const ann_hnsw *g = build_fit_applies(b) && b->rbq ? ann_router_kmeans_graph(b->router) : NULL;
	if (!g)
		return ANN_OK;
	uint32_t k = b->nparts, d = b->d;
	size_t budget = build_fit_budget(b), per_cand = sizeof(cand) + b->pay_bytes, held = 0;
	double row = (double)d * (b->enc == ANN_ENC_F32 ? 4.0 : 1.0);
	hmodel hm = {.fixed = 128.0 + ceil(row / 8.0) * 8.0, .rec = (double)ann_rbq_code_bytes(b->rbq),
		     .rpp = floor(PAGE / row), .map = b->o->code_order != 0};
	hm.rowd = hm.rpp >= 1 ? PAGE / hm.rpp : row;
	/* Slim records, f32 too (only factors outside binary16's range, f32
	 * data of extreme scale, make a block full: then a receiver may gain
	 * a page, which costs bytes, never correctness). Counting f32 blocks
	 * as full shed rows from pages that were not their last: f96 (200k x
	 * 96 f32) -1% bytes at recall 0.9 with this, SIFT photos as cosine f32
	 * a head page fewer in 213 partitions (docs/DESIGN.md "Page-fitted heads"). */
	if (b->o->code_factors == 16)
		hm.rec -= CBLOCK_F16_SAVES;
	/* A received id adds at most the varint of the largest delta. */
	double id_cost = (double)varint_bytes(b->n);
	/* Per partition: rows, id bytes, head pages, rows received. */
	double *rows = ann_calloc(k, sizeof(double)), *idb = ann_calloc(k, sizeof(double));
	double *pages = ann_calloc(k, sizeof(double)), *recv = ann_calloc(k, sizeof(double));
	uint32_t *shed = ann_calloc(k, sizeof(uint32_t));
	/* The largest partition's rows as floats and their two nearest
	 * partitions, by the router's own assignment (deterministic, unlike a
	 * search of the centroid graph, whose build with threads is not). */
	uint64_t maxn = ann_spill_max_count(b->spill);
	float *xf = ann_malloc((maxn ? maxn : 1) * d * sizeof(float));
	uint32_t *two = ann_malloc((maxn ? maxn : 1) * 2 * sizeof(uint32_t));
	float *c = ann_malloc(2 * (size_t)d * sizeof(float));
	cand *cs = NULL;
	uint8_t *cv = NULL;
	size_t nc = 0, capc = 0, capv = 0;
	int rc = ANN_OK;
	if (!rows || !idb || !pages || !recv || !shed || !xf || !two || !c) {
		rc = ann_err(err, ANN_E_NOMEM, "build: out of memory for the page-fit plan (%u partitions)", k);
		goto out;
	}
	for (uint32_t p = 0; p < k; p++) {
		if (p % 64 == 0 || p + 1 == k)
			ANN_CHECK(rc, build_progress(b, "fit", p + 1, k, err));
		uint64_t n = ann_spill_count(b->spill, p);
		if (n == 0)
			continue;
		ANN_CHECK(rc, ann_spill_read(b->spill, p, ids, vecs, err));
		rows[p] = (double)n;
		idb[p] = id_bytes(ids, n);
		pages[p] = ceil(head_est(&hm, rows[p], idb[p]) / PAGE);
		/* Rows on the last page: the fewest whose removal leaves pages - 1
		 * (the ids' bytes counted as they are: removing rows never adds). */
		double limit = fmin(FIT_PAGE_SHARE * PAGE / (hm.rec + 2.0), FIT_PART_SHARE * rows[p]), last = 1;
		while (last <= limit && head_est(&hm, rows[p] - last, idb[p]) > (pages[p] - 1) * PAGE - FIT_MARGIN)
			last++;
		if (pages[p] < 2 || last > limit)
			continue;
		if (held + FIT_CANDIDATES * (size_t)last * per_cand > budget)
			continue; /* invariant 3: past the budget no partition sheds */
		shed[p] = (uint32_t)last;
		/* Candidates: the FIT_CANDIDATES x last rows nearest another
		 * centroid; each row's receiver is its nearest other partition. */
		for (uint64_t i = 0; i < n; i++)
			row_float(b, vecs, i, xf + i * d);
		const ann_assign_rule two_rule = {.copies = 2, .eps = HUGE_VAL, .soar_lambda = 0};
		ANN_CHECK(rc, b->router->ops->assign(b->router, xf, (size_t)n, &two_rule, b->o->threads, two, err));
		ann_hnsw_vector_get(g, p, c);
		size_t base = nc, want = ANN_MIN((size_t)n, FIT_CANDIDATES * (size_t)last);
		for (uint64_t i = 0; i < n; i++) {
			uint32_t dst = two[2 * i] == p ? two[2 * i + 1] : two[2 * i];
			if (dst >= k || dst == p)
				continue;
			const float *x = xf + i * d;
			ann_hnsw_vector_get(g, dst, c + d);
			cand e = {.id = ids[i], .src = p, .dst = dst, .shed = shed[p],
				  .margin = l2(x, c + d, d) - l2(x, c, d), .vec = i};
			/* Keep the `want` smallest margins of this partition: an
			 * insertion into the sorted tail (want is a few dozen). */
			size_t m = nc - base;
			if (m == want && !(e.margin < cs[nc - 1].margin))
				continue;
			if (m < want) {
				if (nc == capc) {
					/* Doubling, but never past the budget's count:
					 * the check above keeps nc + want within it. */
					size_t nc2 = ANN_MIN(capc ? 2 * capc : 1024, budget / per_cand);
					cand *t = ann_realloc(cs, nc2 * sizeof(cand));
					if (!t) {
						rc = ann_err(err, ANN_E_NOMEM, "build: out of memory for page-fit candidates");
						goto fail;
					}
					cs = t;
					capc = nc2;
				}
				nc++;
			}
			size_t at = nc - 1;
			while (at > base && e.margin < cs[at - 1].margin) {
				cs[at] = cs[at - 1];
				at--;
			}
			cs[at] = e;
		}
		/* Copy the kept rows' vectors out of this partition's buffer
		 * (cv grows with cs: the same capacity). */
		if (capv < capc) {
			uint8_t *t = ann_realloc(cv, capc * b->pay_bytes);
			if (!t) {
				rc = ann_err(err, ANN_E_NOMEM, "build: out of memory for page-fit rows");
				goto fail;
			}
			cv = t;
			capv = capc;
		}
		for (size_t i = base; i < nc; i++) {
			memcpy(cv + i * b->pay_bytes, (const uint8_t *)vecs + cs[i].vec * b->pay_bytes, b->pay_bytes);
			cs[i].vec = i;
		}
		held = nc * per_cand;
	}
	/* Greedy, partition by partition, those with the fewest rows to shed
	 * first (the most bytes saved per row moved): a shedding partition
	 * gives its candidates (nearest the boundary first) to receivers with
	 * room; it sheds all of its last page or nothing. Receivers never shed. */
	if (nc) /* qsort's base may not be NULL, even for no elements */
		qsort(cs, nc, sizeof *cs, cmp_cand);
	size_t shedders = 0, failed = 0, eligible = 0;
	for (uint32_t p = 0; p < k; p++)
		eligible += shed[p] > 0;
	/* The disk budget in pages: FIT_DISK_RATIO x the raw rows, less the
	 * catalog (as build_defaults.c counts it) and the blocks as they stand.
	 * Fitting may spend what is left on receivers' new pages; where nothing
	 * is left (a 20,000 x 128 set at the defaults: fitting had grown its
	 * blocks 1.3%, to 1.502x raw) a row goes only where its block keeps its
	 * pages. A source's shed pages come back to the budget. */
	double spare = floor((FIT_DISK_RATIO * row * (double)b->n - FIT_CATALOG - FIT_CATALOG_PART * k) / PAGE);
	for (uint32_t p = 0; p < k; p++)
		spare -= rows[p] ? block_pages(&hm, rows[p], idb[p]) : 1; /* an empty partition's block: its header */
	for (size_t i = 0; i < nc;) {
		uint32_t p = cs[i].src;
		size_t j = i, took = 0;
		double spare0 = spare;
		while (j < nc && cs[j].src == p)
			j++;
		for (size_t t = i; t < j && took < shed[p]; t++) {
			uint32_t q = cs[t].dst;
			/* Room in the receiver's last head page; and a row that
			 * takes its block to a new page (of exact rows) only while
			 * the disk budget has pages to spare (spare). */
			double nq = rows[q] + recv[q] + 1, iq = idb[q] + id_cost * (recv[q] + 1);
			if (shed[q] || !rows[q] || head_est(&hm, nq, iq) > pages[q] * PAGE - FIT_MARGIN)
				continue;
			double add = block_pages(&hm, nq, iq) - block_pages(&hm, nq - 1, iq - id_cost);
			if (add > 0 && spare < add)
				continue;
			spare -= add;
			recv[q]++;
			cs[t].margin = -INFINITY; /* taken */
			took++;
		}
		if (took < shed[p]) { /* all or nothing: give the room back */
			failed++;
			spare = spare0;
			for (size_t t = i; t < j; t++)
				if (cs[t].margin == -INFINITY) {
					recv[cs[t].dst]--;
					cs[t].margin = 0;
				}
		} else {
			shedders++;
			spare += block_pages(&hm, rows[p], idb[p]) - block_pages(&hm, rows[p] - shed[p], idb[p]);
		}
		i = j;
	}
	/* The plan: moved rows grouped by receiver (ascending ids), and the
	 * moved ids sorted for the sources' filter. */
	size_t w = 0;
	for (size_t i = 0; i < nc; i++)
		if (cs[i].margin == -INFINITY)
			cs[w++] = cs[i];
	if (w)
		qsort(cs, w, sizeof *cs, cmp_dst);
	f->nmoved = w;
	f->out_ids = ann_malloc((w ? w : 1) * sizeof(int64_t));
	f->in_ids = ann_malloc((w ? w : 1) * sizeof(int64_t));
	f->in_vecs = ann_malloc((w ? w : 1) * b->pay_bytes);
	f->in_off = ann_calloc((size_t)k + 1, sizeof(uint64_t));
	if (!f->out_ids || !f->in_ids || !f->in_vecs || !f->in_off) {
		rc = ann_err(err, ANN_E_NOMEM, "build: out of memory for the page-fit plan (%zu rows)", w);
		goto fail;
	}
	for (size_t i = 0; i < w; i++) {
		f->out_ids[i] = f->in_ids[i] = cs[i].id;
		memcpy(f->in_vecs + i * b->pay_bytes, cv + cs[i].vec * b->pay_bytes, b->pay_bytes);
		f->in_off[cs[i].dst + 1]++;
	}
	for (uint32_t p = 0; p < k; p++) {
		uint64_t m = f->in_off[p + 1];
		f->in_off[p + 1] = f->in_off[p] + m;
		f->max_in = ANN_MAX(f->max_in, m);
	}
	qsort(f->out_ids, w, sizeof(int64_t), cmp_i64);
	if (w)
		build_notice(b, "page fit: %zu rows moved to a neighbouring partition (%.2f%%), %zu partitions "
			     "one head page shorter (of %zu eligible, %zu found no room)", w, 100.0 * (double)w / (double)b->n, shedders, eligible, failed);
fail:
out:
	if (rc < 0)
		build_fit_free(f);
	ann_free(rows);
	ann_free(idb);
	ann_free(pages);
	ann_free(recv);
	ann_free(shed);
	ann_free(c);
	ann_free(xf);
	ann_free(two);
	ann_free(cs);
	ann_free(cv);
	return rc;
}

/* Partition part's rows after the plan, ascending ids: the spill's rows
 * (ids, vecs, *n of them, ascending) minus the moved-out ones, merged with
 * the moved-in ones. ids and vecs hold *n + f->max_in rows; sid and svec
 * are scratch of the same size. */
void build_fit_apply(const build_fit *f, uint32_t part, size_t pay, int64_t *ids, void *vecs, uint64_t *n,
		     int64_t *sid, void *svec)
{
	if (!f->nmoved)
		return;
	uint64_t a = 0, m = *n, in0 = f->in_off[part], in1 = f->in_off[part + 1], o = 0;
	uint8_t *v = vecs, *sv = svec;
	for (uint64_t i = 0; i < m; i++) {
		if (bsearch(&ids[i], f->out_ids, f->nmoved, sizeof(int64_t), cmp_i64))
			continue;
		ids[a] = ids[i];
		if (a != i)
			memcpy(v + a * pay, v + i * pay, pay);
		a++;
	}
	uint64_t i = 0, j = in0;
	while (i < a || j < in1) {
		if (j == in1 || (i < a && ids[i] < f->in_ids[j])) {
			sid[o] = ids[i];
			memcpy(sv + o * pay, v + i * pay, pay);
			i++;
		} else {
			sid[o] = f->in_ids[j];
			memcpy(sv + o * pay, f->in_vecs + j * pay, pay);
			j++;
		}
		o++;
	}
	memcpy(ids, sid, o * sizeof(int64_t));
	memcpy(vecs, svec, o * pay);
	*n = o;
}
