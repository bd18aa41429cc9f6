/* SPDX-License-Identifier: MIT */
/*
 * router_kmeans.c: the static router. k-means on the sample in the original
 * space; an HNSW graph over the centroids (which also holds the only copy of
 * the centroids) answers queries; vectors are assigned exactly to their
 * nearest centroid (blocked sgemm) when there are at most TREE_MIN
 * centroids, else through a two-level tree over the centroids
 * (ann_kmeans_tree, made by the first such assignment and kept until a
 * split; docs/DESIGN.md "Routing at scale"). Blob: the HNSW blob (hnsw.h).
 * For u8 data under L2 the centroids are rounded to the integer grid 0..255
 * and the graph stores them as uint8 (docs/DESIGN.md, "The centroid
 * graph"); assignment and routing both see the rounded centroids.
 */
#include "router.h"

#include <math.h>
#include <pthread.h>

#include "hnsw.h"
#include "kmeans.h"

#define EXACT_MAX 16384u     /* centroids up to which a query batch is routed exactly */
/* A single query scans every centroid instead of searching the graph when
 * there are at most SCAN_PER_EF x ef of them (and at most EXACT_MAX):
 * measured on real1m (7,900 centroids, d 128, u8), the graph costs about
 * 0.55 us per unit of ef and the scan 60 us, even at ef ~110
 * (docs/DESIGN.md "The centroid graph"). */
#define SCAN_PER_EF 64u
/* Up to SCAN_ALL centroids a single query always scans them (60 us at 7,900,
 * d 128), so the graph is only kept for inserts' and splits' bookkeeping and
 * gets SMALL_M links a node instead of 32: 224 bytes of RAM a centroid fewer,
 * which the directional probe order spends (docs/DESIGN.md "Directional
 * probe order"). An explicit hnsw_m is kept. */
#define SCAN_ALL 8192u
#define SMALL_M 4u
#define TREE_MIN ANN_KMEANS_TWO_LEVEL_MIN /* centroids up to which assignment is exact; above, the tree */
#define TREE_PROBES 8u       /* cells of the tree a vector is compared with */
#define TREE_SEED 1u
#define BATCH_MIN 8u         /* queries from which a batch is routed exactly on sgemm */
#define ASSIGN_CANDIDATES 8u /* nearest centroids considered for replicas */
#define DEFAULT_EF 128u      /* single-query ef of indexes built before calibration */
#define CAL_PROBES 16u       /* calibration: routing overlap measured on the top 16 */
#define CAL_QUERIES 1000u    /* calibration: sample rows used as queries */
/* Centroids up to which the graph is built on one thread: a parallel HNSW
 * build links nodes in the order the threads reach them, so its links (and
 * the router blob) would differ from build to build; one thread keeps the
 * index a function of the data and options alone (build.c). Measured ~11,000
 * centroids/s on one core of this project's machine at d 128, M 32: 1 s for
 * real1m's 7900, ~24 s at the limit. Above it (a billion vectors: ~10^6
 * centroids) the build's threads are used and the graph is not reproducible. */
#define GRAPH_SERIAL_MAX 262144u

typedef struct km_router {
	ann_hnsw *graph;
	uint64_t seed;
	uint32_t legacy_ef; /* catalog meta router.ef of an index whose blob has no ef; never saved */
	pthread_mutex_t lock;        /* guards tree */
	ann_kmeans_tree *tree;       /* assignment above TREE_MIN centroids, made on first use */
} km_router;

struct ann_router_ctx {
	ann_hnsw_ctx *hctx;
	/* Batch routing over uint8 centroids only: their float copy for the
	 * sgemm, k * dim * 4 bytes per searcher, made by the first batch
	 * (km_route never needs it) and remade when a split changed k. */
	float *cent;
	size_t cent_k;
	float *bd;       /* batch routing with adaptive probing: nq x nprobe distances */
	size_t bd_cap;
	int32_t ids[ANN_MAX_NPROBE];
	float dists[ANN_MAX_NPROBE];
	uint64_t sel[ANN_MAX_NPROBE]; /* the exact scan's scratch: the selected, */
	uint32_t *scan;               /* and 2 x the centroid count of keys */
	size_t scan_cap;
};

static km_router *km(const ann_router *r)
{
	return r->impl;
}

/* Centroids as one contiguous float array of `room` >= count rows, the
 * first count copied from the graph (caller frees). */
static float *km_centroids(const ann_router *r, size_t room, ann_error *err)
{
	const ann_hnsw *h = km(r)->graph;
	size_t k = ann_hnsw_count(h), d = r->dim;
	float *c = ann_malloc(room * d * sizeof(float));
	if (!c) {
		ann_err(err, ANN_E_NOMEM, "kmeans router: out of memory for %zu centroids", room);
		return NULL;
	}
	for (size_t i = 0; i < k; i++)
		ann_hnsw_vector_get(h, (uint32_t)i, c + i * d);
	return c;
}

/* Rounds n values to the nearest integer in 0..255: centroids of u8 data,
 * stored as uint8. */
static void km_round_u8(float *c, size_t n)
{
	for (size_t i = 0; i < n; i++)
		c[i] = c[i] < 0.0f ? 0.0f : c[i] > 255.0f ? 255.0f : roundf(c[i]);
}

/* An empty centroid graph, uint8 or float32 storage. */
static int km_graph_new(bool u8, size_t d, ann_metric metric, uint32_t m, uint32_t efc, uint64_t seed,
			ann_hnsw **out, ann_error *err)
{
	return (u8 ? ann_hnsw_create_u8 : ann_hnsw_create)(d, metric, m, efc, seed, out, err);
}

/* The assignment tree, made on first use (under the lock: assignments may
 * run concurrently). */
static int km_tree(const ann_router *r, int threads, const ann_kmeans_tree **out, ann_error *err)
{
	km_router *k = km(r);
	int rc = ANN_OK;
	pthread_mutex_lock(&k->lock);
	if (!k->tree) {
		size_t n = ann_hnsw_count(k->graph);
		float *c = km_centroids(r, n, err);
		rc = c ? ann_kmeans_tree_new(c, n, r->dim, r->metric, 0, TREE_SEED, threads, &k->tree, err) : ANN_E_NOMEM;
		ann_free(c);
	}
	*out = k->tree;
	pthread_mutex_unlock(&k->lock);
	return rc;
}

static int km_assign(const ann_router *r, const float *x, size_t n, const ann_assign_rule *sp, int threads,
		     uint32_t *parts, ann_error *err)
{
	const ann_hnsw *h = km(r)->graph;
	size_t k = ann_hnsw_count(h), d = r->dim;
	uint32_t copies = sp->copies;
	uint32_t m = copies > 1 ? ANN_MAX(copies, ASSIGN_CANDIDATES) : 1;
	m = (uint32_t)ANN_MIN((size_t)m, k);
	bool soar = copies > 1 && sp->soar_lambda > 0;
	uint32_t *ids = ann_malloc(n * m * sizeof(uint32_t));
	float *dists = ann_malloc(n * m * sizeof(float));
	/* SOAR: the m candidates' centroids of one vector, and its scratch */
	float *cand = soar ? ann_malloc(((size_t)m * d + 2 * m) * sizeof(float)) : NULL;
	float *c = NULL;
	int rc = ANN_OK;
	if (!ids || !dists || (soar && !cand)) {
		rc = ann_err(err, ANN_E_NOMEM, "kmeans router: out of memory assigning %zu vectors", n);
		goto out;
	}
	if (k <= TREE_MIN) {
		c = km_centroids(r, k, err);
		if (!c) {
			rc = ANN_E_NOMEM;
			goto out;
		}
		ANN_CHECK(rc, ann_nearest_centroids(x, n, d, c, k, m, r->metric, threads, ids, dists, err));
	} else {
		const ann_kmeans_tree *t;
		ANN_CHECK(rc, km_tree(r, threads, &t, err));
		ANN_CHECK(rc, ann_kmeans_tree_nearest(t, x, n, m, TREE_PROBES, threads, ids, dists, err));
	}
	if (!soar) {
		rc = ann_router_closure_rows(ids, dists, n, m, copies, sp->eps, r->metric, parts, "kmeans", err);
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		const uint32_t *ci = ids + i * m;
		for (uint32_t j = 0; j < m; j++) {
			if (ci[j] == UINT32_MAX)
				break;
			if (c)
				memcpy(cand + (size_t)j * d, c + (size_t)ci[j] * d, d * sizeof(float));
			else
				ann_hnsw_vector_get(h, ci[j], cand + (size_t)j * d);
		}
		ann_router_soar(x + i * d, d, ci, dists + i * m, cand, m, sp, r->metric, cand + (size_t)m * d,
				parts + i * copies);
	}
	rc = ann_router_check_primary(parts, n, copies, "kmeans", err);
fail:
out:
	ann_free(c);
	ann_free(cand);
	ann_free(ids);
	ann_free(dists);
	return rc;
}

static int km_ctx_new(const ann_router *r, ann_router_ctx **out, ann_error *err)
{
	(void)r;
	ann_router_ctx *c = ann_calloc(1, sizeof *c);
	if (!c)
		return ann_err(err, ANN_E_NOMEM, "kmeans router: out of memory for a context");
	int rc = ann_hnsw_ctx_new(&c->hctx, err);
	if (rc < 0) {
		ann_free(c);
		return rc;
	}
	*out = c;
	return ANN_OK;
}

static void km_ctx_free(ann_router_ctx *c)
{
	if (!c)
		return;
	ann_hnsw_ctx_free(c->hctx);
	ann_free(c->cent);
	ann_free(c->bd);
	ann_free(c->scan);
	ann_free(c);
}

static int km_route(const ann_router *r, ann_router_ctx *c, const float *q, const ann_search_opts *o,
		    uint32_t *parts, ann_error *err)
{
	size_t np = ANN_MIN((size_t)o->nprobe, (size_t)ANN_MAX_NPROBE);
	uint32_t cal = ann_router_kmeans_ef(r);
	size_t ef = o->hnsw_ef ? o->hnsw_ef : ANN_MAX((size_t)(cal ? cal : DEFAULT_EF), 2 * np);
	int found;
	size_t k = ann_hnsw_count(km(r)->graph);
	if (k <= EXACT_MAX && (k <= SCAN_PER_EF * ef || k <= SCAN_ALL)) {
		if (c->scan_cap < 2 * k) { /* a split may have added centroids */
			ann_free(c->scan);
			c->scan_cap = 0;
			if (!(c->scan = ann_malloc(2 * k * sizeof *c->scan)))
				return ann_err(err, ANN_E_NOMEM, "kmeans router: out of memory for a scan of %zu centroids", k);
			c->scan_cap = 2 * k;
		}
		found = ann_hnsw_scan(km(r)->graph, q, np, c->ids, c->dists, c->sel, c->scan);
	} else {
		found = ann_hnsw_search(km(r)->graph, c->hctx, q, np, ef, c->ids, c->dists, err);
	}
	if (found < 0)
		return found;
	found = (int)ann_router_probe_cut(c->dists, (size_t)found, o->probe_eps, r->metric);
	for (int i = 0; i < found; i++)
		parts[i] = (uint32_t)c->ids[i];
	return found;
}

/* A batch of queries against every centroid in one blocked sgemm (the way
 * FAISS's IVF routes): exact, and per query cheaper than a graph search
 * once the batch amortises the pass over the centroids (docs/DESIGN.md).
 * Declines single queries (latency: the graph is faster there), more
 * centroids than EXACT_MAX (the graph is the design point), and an ef set
 * by the caller (who asked for the graph). Float32 centroids are read in
 * place; uint8 ones through the context's float copy. */
static int km_route_batch(const ann_router *r, ann_router_ctx *c, const float *q, size_t nq,
			  const ann_search_opts *o, uint32_t *parts, uint32_t *found, float *dists, ann_error *err)
{
	const ann_hnsw *h = km(r)->graph;
	size_t k = ann_hnsw_count(h);
	if (nq < BATCH_MIN || k == 0 || k > EXACT_MAX || o->hnsw_ef || o->nprobe == 0)
		return 0;
	const float *cent = ann_hnsw_vectors(h);
	if (!cent) {
		if (c->cent_k != k) {
			ann_free(c->cent);
			c->cent_k = 0;
			if (!(c->cent = km_centroids(r, k, err)))
				return ANN_E_NOMEM;
			c->cent_k = k;
		}
		cent = c->cent;
	}
	bool adaptive = o->probe_eps > 0 && !isinf(o->probe_eps);
	size_t np = o->nprobe;
	if (adaptive && !dists && c->bd_cap < nq * np) { /* the distances the cut needs: nq x nprobe floats */
		ann_free(c->bd);
		c->bd_cap = 0;
		if (!(c->bd = ann_malloc(nq * np * sizeof(float))))
			return ann_err(err, ANN_E_NOMEM, "kmeans router: out of memory for %zu x %zu distances", nq, np);
		c->bd_cap = nq * np;
	}
	float *bd = dists ? dists : adaptive ? c->bd : NULL;
	ANN_TRY(ann_nearest_centroids(q, nq, r->dim, cent, k, o->nprobe, r->metric, 1, parts, bd, err));
	uint32_t f = (uint32_t)ANN_MIN(np, k);
	for (size_t i = 0; i < nq; i++)
		found[i] = adaptive ? (uint32_t)ann_router_probe_cut(bd + i * np, f, o->probe_eps, r->metric) : f;
	return 1;
}

static const float *km_route_dists(const ann_router_ctx *c)
{
	return c->dists;
}

static size_t km_ram(const ann_router *r)
{
	return ann_hnsw_bytes(km(r)->graph) + sizeof(km_router);
}

static int km_save(const ann_router *r, uint8_t **blob, size_t *len, ann_error *err)
{
	size_t n = ann_hnsw_blob_bytes(km(r)->graph);
	uint8_t *b = ann_malloc(n);
	if (!b)
		return ann_err(err, ANN_E_NOMEM, "kmeans router: out of memory for a %zu-byte blob", n);
	int rc = ann_hnsw_save(km(r)->graph, b, n, err);
	if (rc < 0) {
		ann_free(b);
		return rc;
	}
	*blob = b;
	*len = n;
	return ANN_OK;
}

/* A split replaces one centroid and adds one: the graph over the centroids
 * (thousands of points) is rebuilt, which takes milliseconds to seconds.
 * A uint8 graph gets the new centroids rounded, as at training. */
static int km_split(ann_router *r, uint32_t pid, const float *c_keep, const float *c_new, uint32_t *new_pid,
		    ann_error *err)
{
	km_router *k = km(r);
	size_t n = ann_hnsw_count(k->graph), d = r->dim;
	if (pid >= n)
		return ann_err(err, ANN_E_INVAL, "kmeans router: split of partition %u of %zu", pid, n);
	float *c = km_centroids(r, n + 1, err);
	if (!c)
		return ANN_E_NOMEM;
	memcpy(c + (size_t)pid * d, c_keep, d * sizeof(float));
	memcpy(c + n * d, c_new, d * sizeof(float));
	bool u8 = ann_hnsw_is_u8(k->graph);
	if (u8) {
		km_round_u8(c + (size_t)pid * d, d);
		km_round_u8(c + n * d, d);
	}
	ann_hnsw *g;
	/* rebuilt as it was built: the graph's own degree and ef_construction */
	uint32_t deg = ann_hnsw_degree(k->graph);
	if (n + 1 > SCAN_ALL && deg < 32) /* past the always-scanned size the graph routes again */
		deg = 32;
	int rc = km_graph_new(u8, d, r->metric, deg, ann_hnsw_ef_construction(k->graph), k->seed + n, &g, err);
	if (rc >= 0) {
		rc = ann_hnsw_build(g, c, n + 1, 1, NULL, NULL, err);
		if (rc < 0)
			ann_hnsw_free(g);
	}
	ann_free(c);
	if (rc < 0)
		return rc;
	ann_hnsw_set_search_ef(g, ann_hnsw_search_ef(k->graph));
	ann_hnsw_free(k->graph);
	k->graph = g;
	ann_kmeans_tree_free(k->tree); /* made again from the new centroids on the next assignment */
	k->tree = NULL;
	r->nparts = (uint32_t)(n + 1);
	*new_pid = (uint32_t)n;
	return ANN_OK;
}

static void km_free(ann_router *r)
{
	ann_hnsw_free(km(r)->graph);
	ann_kmeans_tree_free(km(r)->tree);
	pthread_mutex_destroy(&km(r)->lock);
	ann_free(r->impl);
	ann_free(r);
}

static int km_calibrate(ann_router *r, const float *x, size_t n, const ann_router_env *env, ann_error *err)
{
	uint32_t ef;
	double ov;
	ANN_TRY(ann_router_kmeans_calibrate(r, x, n, env->threads > 0 ? env->threads : 1, &ef, &ov, err));
	ann_hnsw_set_search_ef(km(r)->graph, ef);
	ann_router_log(env, "kmeans router: single-query ef %u (top-16 routing overlap %.4f with the exact scan)", ef,
		       ov);
	return ANN_OK;
}

static const ann_router_ops km_ops = {
	.kind = ANN_ROUTER_KMEANS,
	.assign = km_assign,
	.ctx_new = km_ctx_new,
	.ctx_free = km_ctx_free,
	.route = km_route,
	.route_batch = km_route_batch,
	.route_dists = km_route_dists,
	.ram_bytes = km_ram,
	.save = km_save,
	.split = km_split,
	.calibrate = km_calibrate,
	.free = km_free,
};

static int km_wrap(ann_hnsw *g, uint32_t dim, ann_metric metric, ann_router **out, ann_error *err)
{
	ann_router *r = ann_calloc(1, sizeof *r);
	km_router *k = ann_calloc(1, sizeof *k);
	if (!r || !k) {
		ann_free(r);
		ann_free(k);
		ann_hnsw_free(g);
		return ann_err(err, ANN_E_NOMEM, "kmeans router: out of memory");
	}
	k->graph = g;
	pthread_mutex_init(&k->lock, NULL);
	k->seed = 1;
	r->ops = &km_ops;
	r->impl = k;
	r->nparts = (uint32_t)ann_hnsw_count(g);
	r->dim = dim;
	r->metric = metric;
	*out = r;
	return ANN_OK;
}

/* Builds the centroid graph over k x d centroids (for the trained router and
 * ann_router_kmeans_from_centroids); u8: uint8
 * storage, c already rounded. */
static int km_graph(const ann_router_env *env, const ann_kmeans_router_opts *o, bool u8, const float *c, size_t k,
		    size_t d, ann_hnsw **out, ann_error *err)
{
	ann_hnsw *g;
	ANN_TRY(km_graph_new(u8, d, env->metric, o->hnsw_m ? o->hnsw_m : k <= SCAN_ALL ? SMALL_M : 32,
			     o->hnsw_ef_construction ? o->hnsw_ef_construction : 200, env->seed, &g, err));
	int threads = k <= GRAPH_SERIAL_MAX || env->threads < 1 ? 1 : env->threads;
	int rc = ann_hnsw_build(g, c, k, threads, env->progress, env->progress_ctx, err);
	if (rc < 0) {
		ann_hnsw_free(g);
		return rc;
	}
	*out = g;
	return ANN_OK;
}

uint32_t ann_router_kmeans_coarse(uint32_t option, uint32_t nparts)
{
	if (option == 0)
		return nparts > ANN_KMEANS_TWO_LEVEL_MIN ? (uint32_t)ceil(sqrt((double)nparts)) : 0;
	return option == 1 || option >= nparts ? 0 : option;
}

int ann_router_kmeans_train(const ann_router_env *env, const ann_kmeans_router_opts *o, const float *sample,
			    size_t n, size_t d, uint32_t nparts, ann_router **out, ann_error *err)
{
	if (nparts == 0 || nparts > n)
		return ann_err(err, ANN_E_INVAL, "kmeans router: %u partitions need at least as many sample "
			       "vectors, the sample has %zu", nparts, n);
	float *c = ann_malloc((size_t)nparts * d * sizeof(float));
	if (!c)
		return ann_err(err, ANN_E_NOMEM, "kmeans router: out of memory for %u centroids", nparts);
	ann_kmeans_opts ko;
	ann_kmeans_opts_init(&ko);
	ko.k = nparts;
	ko.max_iter = o->kmeans_iters ? o->kmeans_iters : 20;
	ko.seed = env->seed;
	ko.metric = env->metric;
	ko.threads = env->threads > 0 ? env->threads : 1;
	if (o->balance > 0)
		ko.max_size = (size_t)(o->balance * (double)n / nparts) + 1;
	ko.coarse = ann_router_kmeans_coarse(o->kmeans_coarse, nparts);
	ko.progress = env->progress;
	ko.progress_ctx = env->progress_ctx;
	ko.cancel = env->cancel;
	ko.cancel_ctx = env->cancel_ctx;
	int rc = ann_kmeans(sample, n, d, &ko, c, NULL, NULL, err);
	if (rc >= 0)
		rc = ann_router_kmeans_from_centroids(env, o, c, nparts, d, out, err);
	ann_free(c);
	return rc;
}

int ann_router_kmeans_from_centroids(const ann_router_env *env, const ann_kmeans_router_opts *o, float *c,
				     size_t k, size_t d, ann_router **out, ann_error *err)
{
	/* u8 data (env->encoding as resolved by the build) under L2: centroids
	 * rounded onto the data's integer grid cost a quarter of the bytes and
	 * move by at most 0.5 per coordinate. */
	bool u8 = env->encoding == ANN_ENC_U8 && env->metric == ANN_METRIC_L2;
	if (u8)
		km_round_u8(c, k * d);
	/* Compact form: codes, no graph (router_kcodes.c); c stays the caller's.
	 * ANN_AUTO is resolved by ann_build; a caller training a router directly
	 * with ann_build_opts_init's options gets the graph. */
	if (o->router_bits > 0 && o->router_bits != ANN_AUTO)
		return ann_router_kcodes_new(c, k, d, env->metric, o->router_bits, env->seed, out, err);
	ann_hnsw *g = NULL;
	ANN_TRY(km_graph(env, o, u8, c, k, d, &g, err));
	return km_wrap(g, (uint32_t)d, env->metric, out, err);
}

int ann_router_kmeans_load(const uint8_t *blob, size_t len, uint32_t dim, ann_metric metric, ann_router **out,
			   ann_error *err)
{
	if (ann_router_kcodes_blob(blob, len))
		return ann_router_kcodes_load(blob, len, dim, metric, out, err);
	ann_hnsw *g;
	ANN_TRY(ann_hnsw_load(blob, len, &g, err));
	size_t gd = ann_hnsw_dim(g);
	ann_metric gm = ann_hnsw_metric(g);
	if (gd != dim || gm != metric) {
		static const char *const mn[] = {"l2", "ip", "cosine"};
		ann_hnsw_free(g);
		if (gd != dim)
			return ann_err(err, ANN_E_CORRUPT, "kmeans router: the centroid graph has dimension %zu, the "
				       "index's meta says %u", gd, dim);
		return ann_err(err, ANN_E_CORRUPT, "kmeans router: the centroid graph uses metric %s, the index's meta "
			       "says %s", (unsigned)gm <= 2 ? mn[gm] : "?", (unsigned)metric <= 2 ? mn[metric] : "?");
	}
	return km_wrap(g, dim, metric, out, err);
}

const ann_hnsw *ann_router_kmeans_graph(const ann_router *r)
{
	return r->ops == &km_ops ? km(r)->graph : NULL;
}

uint32_t ann_router_kmeans_ef(const ann_router *r)
{
	if (!r || r->ops != &km_ops)
		return 0;
	uint32_t ef = ann_hnsw_search_ef(km(r)->graph);
	return ef ? ef : km(r)->legacy_ef;
}

void ann_router_kmeans_set_ef(ann_router *r, uint32_t ef)
{
	if (r && r->ops == &km_ops)
		ann_hnsw_set_search_ef(km(r)->graph, ef);
}

void ann_router_kmeans_set_legacy_ef(ann_router *r, uint32_t ef)
{
	if (r && r->ops == &km_ops)
		km(r)->legacy_ef = ANN_MIN(ef, (uint32_t)ANN_MAX_EF);
}

int ann_router_kmeans_calibrate(const ann_router *r, const float *x, size_t n, int threads, uint32_t *ef,
				double *overlap, ann_error *err)
{
	static const uint32_t ladder[] = {16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512};
	enum { NL = sizeof ladder / sizeof ladder[0] };
	if (ann_router_is_kcodes(r)) { /* no graph, no ef: the codes' overlap */
		*ef = 0;
		return ann_router_kcodes_calibrate(r, x, n, threads, overlap, err);
	}
	const ann_hnsw *h = km(r)->graph;
	size_t k = ann_hnsw_count(h), d = r->dim;
	size_t p = ANN_MIN((size_t)CAL_PROBES, k), m = ANN_MIN(n, (size_t)CAL_QUERIES);
	*ef = DEFAULT_EF;
	*overlap = 1;
	if (m == 0 || p == 0)
		return ANN_OK;
	size_t stride = n / m;
	float *q = ann_malloc(m * d * sizeof(float));
	uint32_t *exact = ann_malloc(m * p * sizeof(uint32_t));
	float *c = km_centroids(r, k, err);
	ann_hnsw_ctx *hc = NULL;
	int rc = ANN_OK;
	if (!q || !exact || !c) {
		rc = ann_err(err, ANN_E_NOMEM, "kmeans router: out of memory calibrating on %zu queries", m);
		goto fail;
	}
	for (size_t i = 0; i < m; i++)
		memcpy(q + i * d, x + i * stride * d, d * sizeof(float));
	ANN_CHECK(rc, ann_nearest_centroids(q, m, d, c, k, p, r->metric, threads, exact, NULL, err));
	ANN_CHECK(rc, ann_hnsw_ctx_new(&hc, err));
	double ov[NL];
	int32_t ids[CAL_PROBES];
	float dists[CAL_PROBES];
	for (size_t l = 0; l < NL; l++) {
		uint64_t hit = 0;
		for (size_t i = 0; i < m; i++) {
			int got = ann_hnsw_search(h, hc, q + i * d, p, ANN_MAX((size_t)ladder[l], p), ids, dists, err);
			ANN_CHECK(rc, got);
			for (int a = 0; a < got; a++)
				for (size_t b = 0; b < p; b++)
					if ((uint32_t)ids[a] == exact[i * p + b]) {
						hit++;
						break;
					}
		}
		ov[l] = (double)hit / (double)(m * p);
	}
	/* Measured (docs/DESIGN.md): on the 10M set an overlap of 0.991 (ef 64)
	 * cost 0.02 of recall@10 at nprobe 4 and 0.998 (ef 128) nothing; on
	 * syn1m at 16384 partitions 0.9984 (ef 16) cost 0.004 and 0.9996 (ef 32)
	 * nothing. So: within 0.001 of the overlap at the largest ef. */
	double target = ov[NL - 1] - 0.001;
	size_t l = 0;
	while (l + 1 < NL && ov[l] < target)
		l++;
	*ef = ladder[l];
	*overlap = ov[l];
	rc = ANN_OK;
fail:
	ann_hnsw_ctx_free(hc);
	ann_free(c);
	ann_free(exact);
	ann_free(q);
	return rc;
}
