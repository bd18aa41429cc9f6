/* SPDX-License-Identifier: MIT */
/*
 * router_kcodes.c: the k-means router in compact form (issue 12; docs/DESIGN.md
 * "The compact centroid router"). The same k-means centroids as
 * router_kmeans.c, but RAM holds no centroid and no graph: each centroid is
 * one extended-RaBitQ record (rabitq.h, `bits` per dimension, relative to
 * the mean of all centroids), and a query is routed by a flat scan of the k
 * records: one rotation of the query, then k estimates of |q - c_j|^2 from
 * the codes alone, the nprobe smallest first. At 1 bit a 784-dim centroid
 * costs 108 bytes instead of 784 + ~260 of graph links. 1-bit codes of 256
 * padded dimensions or more are scanned in two passes (KC_PREFIX_MIN):
 * prefix estimates of all, full ones of a shortlist (docs/DESIGN.md).
 *
 * Built by ann_router_kmeans_train when ann_build_opts.kmeans.router_bits > 0
 * (kind ANN_ROUTER_KMEANS either way); loaded by ann_router_kmeans_load
 * when the blob has this module's magic (docs/FORMAT.md "Compact k-means
 * router blob").
 *
 * Invariants:
 *  - codes hold nparts records of cb = ann_rbq_code_bytes bytes, each the
 *    code of centroid j relative to `centre`; centre is finite.
 *  - metric is L2 (the estimator's squared distances are what routing and
 *    the closure rule compare).
 *  - `exact` (nparts x dim floats) exists only in a router trained in this
 *    process: the build assigns its vectors to the exact nearest centroid,
 *    as router_kmeans.c does; a loaded router (inserts) assigns by the
 *    estimates. It is counted in ram_bytes while it exists.
 * Memory: router: nparts * cb + 4 dim bytes (+ 4 nparts dim during a
 * build); per searcher context: one RaBitQ query state and 4 nparts bytes of
 * estimates, and a shortlist of up to 1.5 KC_SHORTLIST(nprobe) estimates, ids and records.
 */
#include "router.h"

#include <math.h>
#include <xxhash.h>

#include "distance.h"
#include "kmeans.h"
#include "rabitq.h"

#define KC_MAGIC "\x89KMCODE\n" /* 8 bytes */
#define KC_MAJOR 1u
#define KC_MINOR 0u
#define KC_HEADER 64u
#define KC_TRAILER 8u
#define CAL_PROBES 16u    /* calibration: routing overlap measured on the top 16 */
#define CAL_QUERIES 1000u /* calibration: sample rows used as queries */

typedef struct kc_router {
	ann_rbq *rbq;
	float *centre;   /* dim: mean of the centroids */
	uint8_t *codes;  /* nparts * cb */
	size_t cb;
	float *exact;    /* nparts x dim, trained routers only; NULL when loaded */
} kc_router;

/* The two-pass scan (1-bit codes of at least KC_PREFIX_MIN padded
 * dimensions): prefix estimates from the first quarter of the rotated
 * dimensions (rounded down to a multiple of 32) rank every centroid; the
 * best KC_SHORTLIST(nprobe) get full estimates, which pick the nprobe. */
#define KC_PREFIX_MIN 256u
#define KC_SHORTLIST(np) (8 * (np) + 64)

struct ann_router_ctx {
	ann_rbq_query *rq;
	float *est;      /* one estimate per centroid */
	size_t est_cap;
	float hd[ANN_MAX_NPROBE]; /* the nprobe best, a top-k heap */
	int64_t hi[ANN_MAX_NPROBE];
	float *sd;       /* sl_cap: the shortlist's estimates */
	int64_t *si;     /* and centroids */
	uint8_t *recs;   /* sl_cap records: the shortlist's codes */
	size_t sl_cap;   /* grown to the largest shortlist, KC_SHORTLIST(ANN_MAX_NPROBE) at most */
};

static size_t count_le(const float *est, size_t n, float t)
{
	size_t c = 0;
	for (size_t j = 0; j < n; j++)
		c += est[j] <= t; /* NaN: false */
	return c;
}

/* A shortlist of the smallest estimates: every centroid at or below a bar
 * found by bisection on the value, such that between m and mmax (m < mmax)
 * pass it (more only when equal values straddle it; the first mmax in id
 * order are kept then). Branch-free counting passes instead of a heap or a
 * quickselect, whose branches the random order of the estimates defeats;
 * the bar depends on the values alone, so the shortlist is deterministic.
 * NaN never enters. Returns the count, ids in id order. */
static size_t kc_shortlist(const float *est, size_t n, size_t m, size_t mmax, int64_t *id)
{
	float lo = INFINITY, hi = -INFINITY;
	for (size_t j = 0; j < n; j++) {
		lo = est[j] < lo ? est[j] : lo;
		hi = est[j] > hi ? est[j] : hi;
	}
	float bar = hi; /* count_le(bar) >= m whenever m values are not NaN */
	if (lo <= hi) {
		size_t cnt = count_le(est, n, hi);
		float a = lo;
		while (cnt > mmax) {
			float mid = a + (bar - a) / 2;
			if (!(mid > a && mid < bar))
				break; /* no float left between: equal values */
			size_t c = count_le(est, n, mid);
			if (c >= m) {
				bar = mid;
				cnt = c;
			} else {
				a = mid;
			}
		}
	}
	size_t got = 0; /* branch-free: the store is undone by not counting it */
	for (size_t j = 0; j < n && got < mmax; j++) {
		id[got] = (int64_t)j;
		got += est[j] <= bar;
	}
	return got;
}

/* The prefix the first pass reads, or 0 for a one-pass scan. */
static uint32_t kc_prefix_dims(const ann_rbq *q)
{
	uint32_t dp = ann_rbq_padded_dim(q);
	if (ann_rbq_bits(q) != 1 || dp < KC_PREFIX_MIN)
		return 0;
	return dp / 4 / 32 * 32;
}

static kc_router *kc(const ann_router *r)
{
	return r->impl;
}

bool ann_router_kcodes_blob(const uint8_t *blob, size_t len)
{
	return blob && len >= 8 && memcmp(blob, KC_MAGIC, 8) == 0;
}

static int kc_ctx_new(const ann_router *r, ann_router_ctx **out, ann_error *err)
{
	ann_router_ctx *c = ann_calloc(1, sizeof *c);
	if (!c)
		return ann_err(err, ANN_E_NOMEM, "kmeans router (codes): out of memory for a context");
	int rc = ann_rbq_query_new(kc(r)->rbq, &c->rq, err);
	if (rc < 0) {
		ann_free(c);
		return rc;
	}
	*out = c;
	return ANN_OK;
}

static void kc_ctx_free(ann_router_ctx *c)
{
	if (!c)
		return;
	ann_rbq_query_free(c->rq);
	ann_free(c->est);
	ann_free(c->sd);
	ann_free(c->si);
	ann_free(c->recs);
	ann_free(c);
}

/* Estimates |q - c_j|^2 for every centroid into c->est and keeps the np
 * smallest, ascending by (estimate, id), in c->hd / c->hi. Returns their
 * count or ANN_E_NOMEM. */
static int kc_rank(const ann_router *r, ann_router_ctx *c, const float *q, size_t np, ann_error *err)
{
	const kc_router *k = kc(r);
	size_t n = r->nparts;
	if (c->est_cap < n) { /* a split may have grown nparts since the last query */
		ann_free(c->est);
		c->est_cap = 0;
		if (!(c->est = ann_malloc(n * sizeof(float))))
			return ann_err(err, ANN_E_NOMEM, "kmeans router (codes): out of memory for %zu estimates", n);
		c->est_cap = n;
	}
	ann_rbq_query_prepare(c->rq, ANN_METRIC_L2, q, k->centre);
	np = ANN_MIN(np, n);
	uint32_t pdims = kc_prefix_dims(k->rbq);
	size_t m = ANN_MIN(n, KC_SHORTLIST(np));
	size_t mcap = m + m / 2;
	if (pdims && m < n && c->sl_cap < mcap) {
		ann_free(c->sd);
		ann_free(c->si);
		ann_free(c->recs);
		c->sd = ann_malloc(mcap * sizeof(float));
		c->si = ann_malloc(mcap * sizeof(int64_t));
		c->recs = ann_malloc(mcap * k->cb);
		c->sl_cap = c->sd && c->si && c->recs ? mcap : 0;
		if (!c->sl_cap)
			return ann_err(err, ANN_E_NOMEM, "kmeans router (codes): out of memory for a shortlist of %zu", mcap);
	}
	if (pdims && m < n) {
		/* two passes: prefix estimates of all, full ones of the best m */
		ann_rbq_estimate_prefix(c->rq, k->codes, n, pdims, c->est);
		/* the shortlist: the m to 1.5 m smallest prefix estimates */
		m = kc_shortlist(c->est, n, m, ANN_MIN(n - 1, m + m / 2), c->si);
		for (size_t i = 0; i < m; i++)
			memcpy(c->recs + i * k->cb, k->codes + (size_t)c->si[i] * k->cb, k->cb);
		ann_rbq_estimate(c->rq, c->recs, m, c->sd, NULL);
		ann_topk t;
		ann_topk_init(&t, c->hd, c->hi, np);
		for (size_t i = 0; i < m; i++)
			ann_topk_push(&t, c->sd[i] > 0 ? c->sd[i] : 0, c->si[i]);
		size_t got = t.n;
		ann_topk_finish(&t);
		return (int)got;
	}
	ann_rbq_estimate(c->rq, k->codes, n, c->est, NULL);
	ann_topk t;
	ann_topk_init(&t, c->hd, c->hi, np);
	for (size_t j = 0; j < n; j++) {
		/* The estimate is unbiased, not clamped: a squared distance below 0
		 * is 0 (the closure rule of adaptive probing needs it >= 0). */
		ann_topk_push(&t, c->est[j] > 0 ? c->est[j] : 0, (int64_t)j);
	}
	size_t got = t.n;
	ann_topk_finish(&t);
	return (int)got;
}

static int kc_route(const ann_router *r, ann_router_ctx *c, const float *q, const ann_search_opts *o,
		    uint32_t *parts, ann_error *err)
{
	size_t np = ANN_MIN((size_t)o->nprobe, (size_t)ANN_MAX_NPROBE);
	int found = kc_rank(r, c, q, np, err);
	if (found < 0)
		return found;
	found = (int)ann_router_probe_cut(c->hd, (size_t)found, o->probe_eps, r->metric);
	for (int i = 0; i < found; i++)
		parts[i] = (uint32_t)c->hi[i];
	return found;
}

static const float *kc_route_dists(const ann_router_ctx *c)
{
	return c->hd;
}

static int kc_assign(const ann_router *r, const float *x, size_t n, const ann_assign_rule *sp, int threads,
		     uint32_t *parts, ann_error *err)
{
	const kc_router *k = kc(r);
	size_t K = r->nparts, d = r->dim;
	uint32_t copies = sp->copies;
	uint32_t m = copies > 1 ? ANN_MAX(copies, 8u) : 1;
	m = (uint32_t)ANN_MIN((size_t)m, K);
	bool soar = copies > 1 && sp->soar_lambda > 0;
	if (soar && !k->exact)
		return ann_err(err, ANN_E_INVAL, "kmeans router (codes): SOAR needs the exact centroids, which only "
			       "the build has");
	uint32_t *ids = ann_malloc(n * m * sizeof(uint32_t));
	float *dists = ann_malloc(n * m * sizeof(float));
	float *cand = soar ? ann_malloc(((size_t)m * d + 2 * m) * sizeof(float)) : NULL;
	ann_router_ctx *c = NULL;
	int rc = ANN_OK;
	if (!ids || !dists || (soar && !cand)) {
		rc = ann_err(err, ANN_E_NOMEM, "kmeans router (codes): out of memory assigning %zu vectors", n);
		goto fail;
	}
	if (k->exact) {
		ANN_CHECK(rc, ann_nearest_centroids(x, n, d, k->exact, K, m, r->metric, threads, ids, dists, err));
	} else {
		ANN_CHECK(rc, kc_ctx_new(r, &c, err));
		for (size_t i = 0; i < n; i++) {
			ANN_CHECK(rc, kc_rank(r, c, x + i * d, m, err));
			for (uint32_t j = 0; j < m; j++) {
				ids[i * m + j] = (int)j < rc ? (uint32_t)c->hi[j] : UINT32_MAX;
				dists[i * m + j] = (int)j < rc ? c->hd[j] : INFINITY;
			}
		}
	}
	if (!soar) {
		rc = ann_router_closure_rows(ids, dists, n, m, copies, sp->eps, r->metric, parts, "kmeans", err);
		goto fail;
	}
	for (size_t i = 0; i < n; i++) {
		const uint32_t *ci = ids + i * m;
		for (uint32_t j = 0; j < m && ci[j] != UINT32_MAX; j++)
			memcpy(cand + (size_t)j * d, k->exact + (size_t)ci[j] * d, d * sizeof(float));
		ann_router_soar(x + i * d, d, ci, dists + i * m, cand, m, sp, r->metric, cand + (size_t)m * d,
				parts + i * copies);
	}
	rc = ann_router_check_primary(parts, n, copies, "kmeans", err);
fail:
	kc_ctx_free(c);
	ann_free(cand);
	ann_free(ids);
	ann_free(dists);
	return rc;
}

static size_t kc_ram(const ann_router *r)
{
	const kc_router *k = kc(r);
	size_t b = sizeof *r + sizeof *k + ann_rbq_sizeof(k->rbq) + (size_t)r->dim * sizeof(float) +
		   (size_t)r->nparts * k->cb;
	if (k->exact)
		b += (size_t)r->nparts * r->dim * sizeof(float);
	return b;
}

static size_t kc_blob_bytes(const ann_router *r)
{
	return KC_HEADER + (size_t)r->dim * 4 + (size_t)r->nparts * kc(r)->cb + KC_TRAILER;
}

static int kc_save(const ann_router *r, uint8_t **blob, size_t *len, ann_error *err)
{
	const kc_router *k = kc(r);
	size_t n = kc_blob_bytes(r), d = r->dim;
	uint8_t *b = ann_calloc(1, n);
	if (!b)
		return ann_err(err, ANN_E_NOMEM, "kmeans router (codes): out of memory for a %zu-byte blob", n);
	memcpy(b, KC_MAGIC, 8);
	ann_st16(b + 8, KC_MAJOR);
	ann_st16(b + 10, KC_MINOR);
	ann_st32(b + 12, KC_HEADER);
	ann_st32(b + 16, r->dim);
	ann_st32(b + 20, (uint32_t)r->metric);
	ann_st32(b + 24, r->nparts);
	ann_st32(b + 28, ann_rbq_bits(k->rbq));
	ann_st64(b + 32, ann_rbq_seed(k->rbq));
	ann_st32(b + 40, (uint32_t)k->cb);
	ann_st32(b + 44, 0); /* flags */
	ann_st64(b + 48, (uint64_t)(n - KC_HEADER - KC_TRAILER));
	/* 56..63 reserved, 0 */
	uint8_t *p = b + KC_HEADER;
	for (size_t i = 0; i < d; i++, p += 4) {
		uint32_t u;
		memcpy(&u, &k->centre[i], 4);
		ann_st32(p, u);
	}
	memcpy(p, k->codes, (size_t)r->nparts * k->cb);
	ann_st64(b + n - KC_TRAILER, XXH64(b, n - KC_TRAILER, 0));
	*blob = b;
	*len = n;
	return ANN_OK;
}

/* Replaces centroid pid by c_keep and appends c_new: both are coded
 * relative to the unchanged centre (the codes of the others stay valid). */
static int kc_split(ann_router *r, uint32_t pid, const float *c_keep, const float *c_new, uint32_t *new_pid,
		    ann_error *err)
{
	kc_router *k = kc(r);
	size_t n = r->nparts, d = r->dim;
	if (pid >= n)
		return ann_err(err, ANN_E_INVAL, "kmeans router (codes): split of partition %u of %zu", pid, n);
	uint8_t *codes = ann_realloc(k->codes, (n + 1) * k->cb);
	if (!codes)
		return ann_err(err, ANN_E_NOMEM, "kmeans router (codes): out of memory for %zu centroids", n + 1);
	k->codes = codes;
	if (k->exact) {
		float *e = ann_realloc(k->exact, (n + 1) * d * sizeof(float));
		if (!e)
			return ann_err(err, ANN_E_NOMEM, "kmeans router (codes): out of memory for %zu centroids", n + 1);
		k->exact = e;
		memcpy(e + (size_t)pid * d, c_keep, d * sizeof(float));
		memcpy(e + n * d, c_new, d * sizeof(float));
	}
	ANN_TRY(ann_rbq_encode(k->rbq, k->centre, c_keep, 1, codes + (size_t)pid * k->cb, err));
	ANN_TRY(ann_rbq_encode(k->rbq, k->centre, c_new, 1, codes + n * k->cb, err));
	r->nparts = (uint32_t)(n + 1);
	*new_pid = (uint32_t)n;
	return ANN_OK;
}

static void kc_free(ann_router *r)
{
	kc_router *k = kc(r);
	ann_rbq_free(k->rbq);
	ann_free(k->centre);
	ann_free(k->codes);
	ann_free(k->exact);
	ann_free(k);
	ann_free(r);
}

/* The calibrate op: no graph, no ef; logs the codes' routing overlap. */
static int kc_calibrate(ann_router *r, const float *x, size_t n, const ann_router_env *env, ann_error *err)
{
	double ov;
	ANN_TRY(ann_router_kcodes_calibrate(r, x, n, env->threads > 0 ? env->threads : 1, &ov, err));
	ann_router_log(env, "kmeans router: %u-bit centroid codes, top-16 routing overlap %.4f with the exact scan",
		       ann_rbq_bits(kc(r)->rbq), ov);
	return ANN_OK;
}

static const ann_router_ops kc_ops = {
	.kind = ANN_ROUTER_KMEANS,
	.assign = kc_assign,
	.ctx_new = kc_ctx_new,
	.ctx_free = kc_ctx_free,
	.route = kc_route,
	.route_dists = kc_route_dists,
	.ram_bytes = kc_ram,
	.save = kc_save,
	.split = kc_split,
	.calibrate = kc_calibrate,
	.free = kc_free,
};

bool ann_router_is_kcodes(const ann_router *r)
{
	return r && r->ops == &kc_ops;
}

unsigned ann_router_kcodes_bits(const ann_router *r)
{
	return ann_router_is_kcodes(r) ? ann_rbq_bits(kc(r)->rbq) : 0;
}

/* An empty router of this kind (k->rbq made, nothing else). */
static int kc_alloc(uint32_t dim, uint32_t nparts, unsigned bits, uint64_t seed, ann_router **out, ann_error *err)
{
	ann_router *r = ann_calloc(1, sizeof *r);
	kc_router *k = ann_calloc(1, sizeof *k);
	if (!r || !k) {
		ann_free(r);
		ann_free(k);
		return ann_err(err, ANN_E_NOMEM, "kmeans router (codes): out of memory");
	}
	r->ops = &kc_ops;
	r->impl = k;
	r->dim = dim;
	r->metric = ANN_METRIC_L2;
	r->nparts = nparts;
	int rc = ann_rbq_new(dim, bits, seed, &k->rbq, err);
	if (rc >= 0) {
		k->cb = ann_rbq_code_bytes(k->rbq);
		k->centre = ann_malloc((size_t)dim * sizeof(float));
		k->codes = ann_malloc(ANN_MAX((size_t)nparts, (size_t)1) * k->cb);
		if (!k->centre || !k->codes)
			rc = ann_err(err, ANN_E_NOMEM, "kmeans router (codes): out of memory for %u centroids", nparts);
	}
	if (rc < 0) {
		kc_free(r);
		return rc;
	}
	*out = r;
	return ANN_OK;
}

int ann_router_kcodes_new(const float *c, size_t k, size_t d, ann_metric metric, unsigned bits, uint64_t seed,
			  ann_router **out, ann_error *err)
{
	if (metric != ANN_METRIC_L2)
		return ann_err(err, ANN_E_INVAL, "kmeans router: compact centroid codes (router bits) need metric l2");
	if (bits < 1 || bits > 8)
		return ann_err(err, ANN_E_INVAL, "kmeans router: router bits %u, expected 1..8 (0 = the graph)", bits);
	if (k == 0 || k > UINT32_MAX || d == 0 || d > ANN_RBQ_MAX_DIM)
		return ann_err(err, ANN_E_INVAL, "kmeans router (codes): %zu centroids of dimension %zu", k, d);
	ann_router *r;
	ANN_TRY(kc_alloc((uint32_t)d, (uint32_t)k, bits, seed, &r, err));
	kc_router *kr = kc(r);
	int rc = ANN_OK;
	if (!(kr->exact = ann_malloc(k * d * sizeof(float)))) {
		rc = ann_err(err, ANN_E_NOMEM, "kmeans router (codes): out of memory for %zu centroids", k);
		goto fail;
	}
	memcpy(kr->exact, c, k * d * sizeof(float));
	for (size_t j = 0; j < d; j++) {
		double s = 0;
		for (size_t i = 0; i < k; i++)
			s += c[i * d + j];
		kr->centre[j] = (float)(s / (double)k);
	}
	ANN_CHECK(rc, ann_rbq_encode(kr->rbq, kr->centre, c, k, kr->codes, err));
	*out = r;
	return ANN_OK;
fail:
	kc_free(r);
	return rc;
}

int ann_router_kcodes_load(const uint8_t *b, size_t len, uint32_t dim, ann_metric metric, ann_router **out,
			   ann_error *err)
{
	*out = NULL;
	if (len < KC_HEADER + KC_TRAILER)
		return ann_err(err, ANN_E_CORRUPT, "kmeans codes router blob: %zu bytes, less than header + checksum "
			       "(%u)", len, KC_HEADER + KC_TRAILER);
	if (!ann_router_kcodes_blob(b, len))
		return ann_err(err, ANN_E_FORMAT, "kmeans codes router blob: bad magic");
	unsigned major = ann_ld16(b + 8), minor = ann_ld16(b + 10);
	if (major != KC_MAJOR)
		return ann_err(err, ANN_E_FORMAT, "kmeans codes router blob: format version %u.%u, this build reads %u.x",
			       major, minor, KC_MAJOR);
	uint64_t hdr = ann_ld32(b + 12), body = ann_ld64(b + 48);
	/* A later minor may grow the header; this one has exactly KC_HEADER. */
	if (hdr < KC_HEADER || (minor <= KC_MINOR && hdr != KC_HEADER) || hdr > len - KC_TRAILER ||
	    body != len - KC_TRAILER - hdr)
		return ann_err(err, ANN_E_CORRUPT, "kmeans codes router blob: %zu bytes, header says %llu + body %llu "
			       "+ %u (truncated?)", len, (unsigned long long)hdr, (unsigned long long)body, KC_TRAILER);
	uint64_t want = ann_ld64(b + len - KC_TRAILER), got = XXH64(b, len - KC_TRAILER, 0);
	if (want != got)
		return ann_err(err, ANN_E_CORRUPT, "kmeans codes router blob: checksum mismatch at offset %zu (stored "
			       "%016llx, data %016llx)", len - KC_TRAILER, (unsigned long long)want,
			       (unsigned long long)got);
	uint32_t d = ann_ld32(b + 16), m = ann_ld32(b + 20), k = ann_ld32(b + 24), bits = ann_ld32(b + 28);
	uint64_t seed = ann_ld64(b + 32);
	uint32_t cb = ann_ld32(b + 40), flags = ann_ld32(b + 44);
	if (d != dim)
		return ann_err(err, ANN_E_CORRUPT, "kmeans codes router blob: dimension %u, the index's meta says %u",
			       d, dim);
	if (m != (uint32_t)metric || metric != ANN_METRIC_L2)
		return ann_err(err, ANN_E_CORRUPT, "kmeans codes router blob: metric %u, the index's meta says %u "
			       "(only l2 = 0 has codes)", m, (unsigned)metric);
	if (flags != 0)
		return ann_err(err, ANN_E_FORMAT, "kmeans codes router blob: flags %08x unknown to this build", flags);
	if (bits < 1 || bits > 8 || k == 0 || d > ANN_RBQ_MAX_DIM)
		return ann_err(err, ANN_E_CORRUPT, "kmeans codes router blob: %u bits, %u centroids, dimension %u "
			       "(expected 1..8 bits, at least one centroid)", bits, k, d);
	/* The body's length bounds what is allocated: the stored record size
	 * must account for it before k records are allocated (a blob claiming 4
	 * billion centroids is refused here, not by the allocator). */
	if (cb == 0 || body != (uint64_t)d * 4 + (uint64_t)k * cb)
		return ann_err(err, ANN_E_CORRUPT, "kmeans codes router blob: %u centroids of %u-byte records and "
			       "dimension %u do not make its %llu-byte body", k, cb, d, (unsigned long long)body);
	ann_router *r;
	ANN_TRY(kc_alloc(d, k, bits, seed, &r, err));
	kc_router *kr = kc(r);
	int rc = ANN_OK;
	if (cb != kr->cb) {
		rc = ann_err(err, ANN_E_CORRUPT, "kmeans codes router blob: %u-byte records and a %llu-byte body; "
			     "%u centroids of dimension %u at %u bits need %zu-byte records", cb,
			     (unsigned long long)body, k, d, bits, kr->cb);
		goto fail;
	}
	const uint8_t *p = b + hdr;
	for (size_t i = 0; i < d; i++, p += 4) {
		uint32_t u = ann_ld32(p);
		memcpy(&kr->centre[i], &u, 4);
		if (!isfinite(kr->centre[i])) {
			rc = ann_err(err, ANN_E_CORRUPT, "kmeans codes router blob: centre component %zu (offset %zu) is "
				     "not finite", i, (size_t)(p - b));
			goto fail;
		}
	}
	memcpy(kr->codes, p, (size_t)k * cb);
	*out = r;
	return ANN_OK;
fail:
	kc_free(r);
	return rc;
}

int ann_router_kcodes_calibrate(const ann_router *r, const float *x, size_t n, int threads, double *overlap,
				ann_error *err)
{
	const kc_router *k = kc(r);
	size_t K = r->nparts, d = r->dim;
	size_t p = ANN_MIN((size_t)CAL_PROBES, K), m = ANN_MIN(n, (size_t)CAL_QUERIES);
	*overlap = 1;
	if (m == 0 || p == 0 || !k->exact)
		return ANN_OK;
	size_t stride = n / m;
	float *q = ann_malloc(m * d * sizeof(float));
	uint32_t *exact = ann_malloc(m * p * sizeof(uint32_t));
	ann_router_ctx *c = NULL;
	int rc = ANN_OK;
	if (!q || !exact) {
		rc = ann_err(err, ANN_E_NOMEM, "kmeans router (codes): out of memory calibrating on %zu queries", m);
		goto fail;
	}
	for (size_t i = 0; i < m; i++)
		memcpy(q + i * d, x + i * stride * d, d * sizeof(float));
	ANN_CHECK(rc, ann_nearest_centroids(q, m, d, k->exact, K, p, r->metric, threads, exact, NULL, err));
	ANN_CHECK(rc, kc_ctx_new(r, &c, err));
	uint64_t hit = 0;
	for (size_t i = 0; i < m; i++) {
		int got;
		ANN_CHECK(rc, got = kc_rank(r, c, q + i * d, p, err));
		for (int a = 0; a < got; a++)
			for (size_t b = 0; b < p; b++)
				if ((uint32_t)c->hi[a] == exact[i * p + b]) {
					hit++;
					break;
				}
	}
	*overlap = (double)hit / (double)(m * p);
	rc = ANN_OK;
fail:
	kc_ctx_free(c);
	ann_free(exact);
	ann_free(q);
	return rc;
}
