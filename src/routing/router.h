/* SPDX-License-Identifier: MIT */
/*
 * router.h: the interface every router implements (router_kmeans.c, and the
 * learned routers): train on an in-memory sample, assign vectors to
 * partitions (build and insert), route a query to the partitions worth
 * reading (search), observe the routed data during the build (for routers
 * that keep per-partition statistics), and persist as one blob in the
 * catalog's models database under "router". The router is all that a query
 * needs in RAM besides bounded buffers.
 */
#ifndef ANN_ROUTER_H
#define ANN_ROUTER_H

#include "common.h"

typedef struct ann_router ann_router;
typedef struct ann_router_ctx ann_router_ctx;

/* What every trainer gets besides its own kind's parameters (annann.h:
 * ann_kmeans_router_opts, ann_annann_router_opts, ann_nlsh_router_opts):
 * the build's common settings and callbacks. */
typedef struct ann_router_env {
	ann_router_kind kind;   /* nlsh, joint and soft share a trainer */
	ann_metric metric;
	ann_encoding encoding;  /* resolved by the build: the k-means router keeps u8 centroids as uint8 */
	uint64_t seed;
	int threads;            /* <= 0: 1 */
	size_t mem_bytes;       /* the build's budget (the graph routers check their k-NN graph against it) */
	ann_progress_fn progress;
	void *progress_ctx;
	ann_log_fn log;         /* training history lines */
	void *log_ctx;
	ann_cancel_fn cancel;
	void *cancel_ctx;
} ann_router_env;

/* The environment of a build with options o. */
void ann_router_env_from(const ann_build_opts *o, ann_router_env *env);

/* How the build spreads a vector over partitions (docs/DESIGN.md,
 * "Spilling"). Inserts use {1, 0, 0}: one copy. */
typedef struct ann_assign_rule {
	uint32_t copies;    /* partitions per vector, >= 1 */
	double eps;         /* extra copies only within (1 + eps) of the nearest centroid's distance */
	double soar_lambda; /* 0: the nearest qualifying centroids; > 0: SOAR (see ann_router_soar) */
} ann_assign_rule;

typedef struct ann_router_ops {
	ann_router_kind kind;
	/* Assigns n vectors (n x dim) to up to sp->copies partitions each:
	 * parts gets n * copies entries, the first of each row the primary
	 * partition, extra copies only where their score is within (1 + eps) of
	 * the best (SPANN's closure assignment), chosen among those by distance
	 * or, with sp->soar_lambda > 0 (routers that rank centroids only), by
	 * SOAR's loss; UINT32_MAX elsewhere. */
	int (*assign)(const ann_router *r, const float *x, size_t n, const ann_assign_rule *sp, int threads,
		      uint32_t *parts, ann_error *err);
	int (*ctx_new)(const ann_router *r, ann_router_ctx **out, ann_error *err);
	void (*ctx_free)(ann_router_ctx *c);
	/* Up to nprobe partitions for query q, best first. Returns the count. */
	int (*route)(const ann_router *r, ann_router_ctx *c, const float *q, const ann_search_opts *o,
		     uint32_t *parts, ann_error *err);
	/* Optional: routes nq queries (nq x dim) at once; row i of parts
	 * (nprobe wide) gets query i's partitions, best first, found[i] their
	 * count, and row i of dists (may be NULL) their squared distances, as
	 * route_dists. Returns 1 when done, 0 when it declines (the caller routes
	 * query by query), or an error. */
	int (*route_batch)(const ann_router *r, ann_router_ctx *c, const float *q, size_t nq,
			   const ann_search_opts *o, uint32_t *parts, uint32_t *found, float *dists, ann_error *err);
	/* Optional, for the routers that rank partitions by the distance to
	 * their centroids (the k-means routers): the squared L2 distances (the
	 * compact router's estimates) of the partitions the context's last route
	 * returned, in its order; valid until the context routes again. The
	 * search's spread-aware order needs them (docs/DESIGN.md). */
	const float *(*route_dists)(const ann_router_ctx *c);
	size_t (*ram_bytes)(const ann_router *r);
	int (*save)(const ann_router *r, uint8_t **blob, size_t *len, ann_error *err);
	/* Optional: sees every routed chunk during the build (x n x dim, parts n
	 * primary partitions) and finishes after the last one. */
	int (*observe)(ann_router *r, const float *x, size_t n, const uint32_t *parts, ann_error *err);
	int (*finish)(ann_router *r, ann_error *err);
	/* Optional: tunes the router's query-time settings on the training
	 * sample x (n x dim) after training; the result is part of the router
	 * (its blob keeps it) and is logged to env->log. The k-means router
	 * measures its graph's single-query ef (ann_router_kmeans_calibrate). */
	int (*calibrate)(ann_router *r, const float *x, size_t n, const ann_router_env *env, ann_error *err);
	/* Optional: partition pid is split in two; pid's centroid becomes
	 * c_keep and a new partition (returned, = nparts before the call) gets
	 * c_new. Both are dim floats in the routing space. */
	int (*split)(ann_router *r, uint32_t pid, const float *c_keep, const float *c_new, uint32_t *new_pid,
		     ann_error *err);
	void (*free)(ann_router *r);
} ann_router_ops;

struct ann_router {
	const ann_router_ops *ops;
	uint32_t nparts; /* partitions the router can name: 0 .. nparts - 1 */
	uint32_t dim;
	ann_metric metric;
	void *impl;
};

/* A line of training history to env->log (printf format), if set. */
void ann_router_log(const ann_router_env *env, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Trains a router of kind o->router on the sample (n x d floats): the
 * kind's trainer gets the environment of o and o's sub-struct of its kind. */
int ann_router_train(const ann_build_opts *o, const float *sample, size_t n, size_t d, uint32_t nparts,
		     ann_router **out, ann_error *err);
/* Rebuilds a router from its blob. */
int ann_router_load(ann_router_kind kind, const uint8_t *blob, size_t len, uint32_t dim, ann_metric metric,
		    ann_router **out, ann_error *err);
void ann_router_free(ann_router *r);

/* Per-kind entry points (router_*.c). */
/* Above this many partitions the k-means router trains two-level k-means by
 * default and assigns vectors through a two-level tree rather than by an
 * exact scan of every centroid (docs/DESIGN.md "Routing at scale"). */
#define ANN_KMEANS_TWO_LEVEL_MIN 4096u
/* How the k-means router assigns vectors (its part of a resumable build's
 * fingerprint: a change of it invalidates saved route logs). */
#define ANN_KMEANS_ASSIGN_RULE "exact<=4096,tree(sqrt,10it,seed1)>4096,probes8"
/* The coarse clusters two-level k-means uses for nparts partitions under
 * ann_build_opts.kmeans_coarse = option; 0 = one level. */
uint32_t ann_router_kmeans_coarse(uint32_t option, uint32_t nparts);
int ann_router_kmeans_train(const ann_router_env *env, const ann_kmeans_router_opts *o, const float *sample,
			    size_t n, size_t d, uint32_t nparts, ann_router **out, ann_error *err);
/* The k-means router over the k centroids c (k x d; rounded in place to
 * the u8 grid when env->encoding is U8 under L2), as ann_router_kmeans_train
 * makes it after its k-means (the distributed build's k-means, dist.h). */
int ann_router_kmeans_from_centroids(const ann_router_env *env, const ann_kmeans_router_opts *o, float *c,
				     size_t k, size_t d, ann_router **out, ann_error *err);
/* Measures the centroid graph against an exact scan on up to 1000 rows of
 * x (the build's sample): the smallest ef of a fixed ladder (16 .. 512)
 * whose top-16 routing overlaps the exact top-16 within 0.001 of the
 * overlap at ef 512; docs/DESIGN.md "The centroid graph". */
int ann_router_kmeans_calibrate(const ann_router *r, const float *x, size_t n, int threads, uint32_t *ef,
				double *overlap, ann_error *err);
/* The k-means router's single-query routing ef: calibrated by the build
 * (the calibrate op) and kept in its blob (HNSW blob 1.2), else the one
 * set from catalog meta router.ef for indexes built before the blob held
 * it; 0 = none (routing uses 128). 0 for every other router. */
uint32_t ann_router_kmeans_ef(const ann_router *r);
/* Sets the calibrated ef, which the blob keeps (ef <= ANN_MAX_EF); no
 * effect on other routers. */
void ann_router_kmeans_set_ef(ann_router *r, uint32_t ef);
/* Sets the ef of an older index (its catalog meta router.ef): used for
 * routing when the blob holds none, never saved, so the blob saves as it
 * was stored (a distributed index's parts compare its hash). */
void ann_router_kmeans_set_legacy_ef(ann_router *r, uint32_t ef);
/* The k-means router's centroid graph (tests, tools). */
const struct ann_hnsw *ann_router_kmeans_graph(const ann_router *r);
int ann_router_kmeans_load(const uint8_t *blob, size_t len, uint32_t dim, ann_metric metric, ann_router **out,
			   ann_error *err);

/* The compact form of the k-means router (router_kcodes.c): the k x d
 * centroids c (copied) as RaBitQ codes of `bits` (1..8) per dimension,
 * routed by a flat scan of the codes; metric L2 only. */
int ann_router_kcodes_new(const float *c, size_t k, size_t d, ann_metric metric, unsigned bits, uint64_t seed,
			  ann_router **out, ann_error *err);
/* Whether blob is a compact router blob (its magic). */
bool ann_router_kcodes_blob(const uint8_t *blob, size_t len);
int ann_router_kcodes_load(const uint8_t *blob, size_t len, uint32_t dim, ann_metric metric, ann_router **out,
			   ann_error *err);
bool ann_router_is_kcodes(const ann_router *r);
/* Bits per dimension of a compact router's codes; 0 for any other router. */
unsigned ann_router_kcodes_bits(const ann_router *r);
/* Top-16 overlap of the codes' routing with the exact centroid ranking on
 * up to 1000 rows of x (a trained router; a loaded one reports 1). */
int ann_router_kcodes_calibrate(const ann_router *r, const float *x, size_t n, int threads, double *overlap,
				ann_error *err);

int ann_router_annann_train(const ann_router_env *env, const ann_annann_router_opts *o, const float *sample,
			    size_t n, size_t d, uint32_t nparts, ann_router **out, ann_error *err);
int ann_router_annann_load(const uint8_t *blob, size_t len, uint32_t dim, ann_metric metric, ann_router **out,
			   ann_error *err);
/* nlsh, joint and soft share the runtime (a classifier); env->kind picks the training. */
int ann_router_nlsh_train(const ann_router_env *env, const ann_nlsh_router_opts *o, const float *sample, size_t n,
			  size_t d, uint32_t nparts, ann_router **out, ann_error *err);
int ann_router_nlsh_load(ann_router_kind kind, const uint8_t *blob, size_t len, uint32_t dim, ann_metric metric,
			 ann_router **out, ann_error *err);

/* Shared by routers that rank centroids: keeps the candidates whose distance
 * is within (1 + eps) of the best (distances are squared L2 for L2, so the
 * bound is squared), for replication. ids/dists: m candidates, sorted. */
uint32_t ann_router_closure(const uint32_t *ids, const float *dists, uint32_t m, uint32_t copies, double eps,
			    ann_metric metric, uint32_t *out);
/* ann_router_closure for n rows (ids, dists: n x m; parts: n x copies), for
 * the routers' assign. A row without a candidate (every distance infinite or
 * NaN: a component so large that float arithmetic overflows) is
 * ANN_E_BADINPUT naming the vector and `who`: assign never returns UINT32_MAX
 * as a primary partition (insert would record the vector as deleted). */
int ann_router_closure_rows(const uint32_t *ids, const float *dists, size_t n, uint32_t m, uint32_t copies,
			    double eps, ann_metric metric, uint32_t *parts, const char *who, ann_error *err);
/* The check of ann_router_closure_rows alone, for rows made another way. */
int ann_router_check_primary(const uint32_t *parts, size_t n, uint32_t copies, const char *who, ann_error *err);

/* Adaptive probing (ann_search_opts.probe_eps, SPANN's rule): of `found`
 * routed partitions with their distances (sorted, best first, in the
 * closure's convention), how many are within (1 + eps) of the best. eps <= 0
 * or infinite: all of them (off). Never more than found, at least 1 when
 * found > 0. */
size_t ann_router_probe_cut(const float *dists, size_t found, double eps, ann_metric metric);

/* SOAR spilling (Sun et al., NeurIPS 2023): x's primary partition is the
 * nearest candidate, ids[0]. Each extra copy goes to the qualifying
 * candidate (within the closure bound of ann_router_closure) j that
 * minimises
 *     |x - c_j|^2 + lambda * sum_p <r_p, x - c_j>^2 / |r_p|^2
 * over the residuals r_p = x - c_p of the partitions chosen so far: a
 * residual orthogonal to the primary's, so that a query whose direction
 * makes the primary's estimate err (q parallel to r_0) finds x through the
 * spill. cents holds the m candidates' centroids (m x d, row j for ids[j]);
 * scratch holds 2 * m floats. Returns the copies made (>= 1), out padded
 * with UINT32_MAX to `copies`. */
uint32_t ann_router_soar(const float *x, size_t d, const uint32_t *ids, const float *dists, const float *cents,
			 uint32_t m, const ann_assign_rule *sp, ann_metric metric, float *scratch, uint32_t *out);

#endif
