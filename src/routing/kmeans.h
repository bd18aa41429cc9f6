/* SPDX-License-Identifier: MIT */
/*
 * kmeans.h: k-means over an in-memory sample that the caller owns: seeding by
 * batched D^2 sampling, Lloyd or mini-batch iterations whose assignment steps
 * are blocked OpenBLAS distance tiles (ann_dist_batch), empty-cluster repair
 * and the small-cluster pass,
 * a partition-size cap solved by regret-ordered reassignment, and the
 * nearest-centroids query used for routing and boundary replication. It does
 * not read files or draw the sample; the build pipeline does.
 */
#ifndef ANN_KMEANS_H
#define ANN_KMEANS_H

#include "common.h"

/* How the starting centroids are chosen. */
typedef enum ann_kmeans_init {
	/* k-means++ D^2 sampling on a uniform subsample of init_sample points,
	 * drawing the centres in at most 128 rounds: each round draws
	 * ceil(k / 128) centres independently with probability proportional to
	 * the squared distance to the nearest centre chosen so far, then updates
	 * those distances with one blocked sgemm pass. k <= 128 is exactly
	 * k-means++; larger k is k-means|| without its recluster step, so the
	 * whole seeding costs about one Lloyd iteration over the subsample. */
	ANN_KMEANS_PLUSPLUS = 0,
	ANN_KMEANS_RANDOM = 1, /* k distinct points drawn uniformly */
	ANN_KMEANS_GIVEN = 2,  /* centroids holds the k starting centroids on entry */
} ann_kmeans_init;

typedef struct ann_kmeans_opts {
	size_t k;                 /* clusters, 1 <= k <= n, k < 2^32 - 1 */
	uint32_t max_iter;        /* assignment steps (Lloyd) or mini-batches, >= 1 */
	uint64_t seed;            /* the only source of randomness */
	ann_kmeans_init init;     /* seeding method */
	size_t init_sample;       /* points PLUSPLUS seeds from; 0 = min(n, max(65536, 16 k)) */
	ann_metric metric;        /* L2; IP and COSINE run spherical k-means (unit centroids) */
	int threads;              /* worker threads for the blocked passes, >= 1 (capped at 16) */
	double tol;               /* stop when the relative inertia decrease is < tol; 0 = run max_iter */
	size_t max_size;          /* cap on points per cluster, 0 = none; needs k * max_size >= n */
	size_t minibatch;         /* 0 = full Lloyd; else points per mini-batch step */
	size_t coarse;            /* 0, 1 or >= k: one level; 2 <= C < k: two levels, see ann_kmeans */
	double *history;          /* optional out: inertia of each assignment step, max_iter + 2 entries */
	ann_progress_fn progress; /* "kmeans-seed" (centres chosen / k), then "kmeans" (steps /
				   * max_iter) once per step; may be NULL */
	void *progress_ctx;
	ann_cancel_fn cancel;     /* polled after each seeding report and each step; non-zero
				   * stops with ANN_E_CANCELED; may be NULL */
	void *cancel_ctx;
} ann_kmeans_opts;

/* k = 0 (must be set), max_iter 25, seed 1, PLUSPLUS, L2, 1 thread, tol 1e-4,
 * no cap, full Lloyd. */
void ann_kmeans_opts_init(ann_kmeans_opts *o);

typedef struct ann_kmeans_stats {
	uint32_t iterations;       /* assignment steps run (entries written to history) */
	double inertia;            /* sum over points of the distance to their final centroid */
	double inertia_unbalanced; /* the same before the max_size cap (== inertia without cap) */
	uint64_t empty_repaired;   /* empty clusters refilled by splitting the largest one */
	uint64_t small_repaired;   /* small clusters the small-cluster pass moved (see ann_kmeans) */
	uint64_t moved;            /* points the max_size cap moved to another cluster */
	size_t largest;            /* points in the largest final cluster */
	size_t work_bytes;         /* working memory allocated by the call, peak */
} ann_kmeans_stats;

/*
 * Clusters the n x d row-major sample x into o->k clusters.
 *
 * Lloyd: every iteration assigns each point to its nearest centroid, in
 * blocks of B = clamp(2^18 / min(k, 1024), 16, 4096) points against chunks of
 * up to 1024 centroids (one sgemm per tile, tiles of <= 1 MiB so they stay in
 * cache, a vectorised running argmin per row), records the inertia, then moves each centroid to the mean
 * of its points (double sums; for IP/COSINE the mean of the points, resp. of
 * the normalised points, scaled to unit length). An empty cluster is repaired
 * by splitting the currently largest one: its members are cut by the
 * hyperplane through their mean normal to the direction of the member
 * farthest from it, and both halves take their means (so neither half is an
 * outlier alone). Each step can only lower the L2 inertia (up to float
 * rounding), so history is non-increasing. The run stops after max_iter
 * assignment steps or when (previous - current) / |previous| < tol.
 *
 * Small clusters: k-means++ seeding favours points far from the rest, and a
 * centre on an outlier keeps it as a cluster of one through every Lloyd
 * step (the 10M build had 48 partitions of one vector). So after the last
 * step every cluster with fewer than max(1, n / (8 k)) points gives its
 * points to their nearest centroid among the others and its centroid splits
 * the largest cluster (as above), in index order, while the largest holds at
 * least twice that bound; then one more assignment step (not in history).
 * Repeated while clusters stay below the bound, at most 3 times; each pass
 * costs about one assignment step when it runs and a count otherwise.
 * stats.small_repaired counts the clusters moved; when it is non-zero the
 * inertia differs from history's last entry (it can rise: an outlier no
 * longer sits on its own centre). The last step is an assignment, so
 * assign[i] is the nearest centroid of point i.
 *
 * Mini-batch (minibatch > 0, Sculley 2010): each of max_iter steps assigns
 * `minibatch` points drawn with replacement and moves each centroid towards
 * its points with rate 1 / (points it has seen); it stops early when an
 * exponential moving average of the batch inertia (weight 2 minibatch / n)
 * has not improved by a fraction tol for 10 batches. Two full Lloyd
 * assignment steps (with one update and repair between them) follow.
 *
 * max_size > 0: after the last assignment the points of over-full clusters
 * are reassigned by regret: each considers its 16 nearest centroids, the
 * point losing most by not getting its best centroid that still has room is
 * served first, and one that finds all 16 full takes the nearest centroid
 * with room among all k. Points of clusters within the cap never move. The
 * centroids are then recomputed as the means of the capped clusters, so
 * assign is no longer exactly the nearest centroid.
 *
 * Two levels (coarse = C, 2 <= C < k; Nister and Stewenius' vocabulary tree
 * cut at depth 2): k-means with C clusters on all n points (these options,
 * seed o->seed), then each coarse cluster j of n_j points gets k_j fine
 * clusters and is clustered on its own (seed o->seed + 1 + j). The k_j sum
 * to k and are dealt one at a time, each to the coarse cluster whose
 * points per fine cluster n_j / k_j is largest (ties: lowest j), starting
 * from 1 each, never above n_j: every fine cluster gets about n / k points
 * whatever the coarse clusters' sizes. max_size caps each fine cluster at
 * max(max_size, ceil(n_j / k_j)). Without max_size, 3 Lloyd steps over
 * all k centroids follow, each assigning every point through an
 * ann_kmeans_tree over the current centroids with 8 probes, which redraws
 * the borders the coarse level cut (on tests/test_kmeans.c's data the
 * inertia falls from 1.11x one-level Lloyd's to 1.03x). Cost: about
 * n (C + k / C) distances per level iteration and n (C + 8 k / C) per
 * refinement step, instead of n k (C = sqrt(k): 2 n sqrt(k) and
 * 9 n sqrt(k)). Then the small-cluster pass over all k (the refinement can
 * empty a cluster; its assignment is the pass's, not redrawn), and the
 * centroids are put in a random order (seeded by o->seed; assign renumbered
 * with them): the levels leave them coarse cell by coarse cell, and an HNSW
 * graph inserted in that order (the k-means router's) needed ef 384 for the
 * top-16 overlap a random order reaches at ef 32 (docs/DESIGN.md). history
 * must be NULL; progress reports "kmeans" for the
 * coarse level, then "kmeans-fine" (coarse clusters done / C), then
 * "kmeans-refine" (steps done / 3). stats:
 * iterations the most of any level plus the refinement steps, empty_repaired,
 * small_repaired and moved summed, inertia exact (inertia_unbalanced with a
 * cap: the fine levels' before their caps), work_bytes the peak of any
 * level plus 12 n + (largest n_j) d floats of gathering, for the refinement
 * k d doubles plus the tree, and 21 k bytes for the pass and the order.
 *
 * Deterministic: on one machine and SIMD level the result depends on x, the
 * options and the seed only, not on threads (blocks are fixed, reductions
 * run in point order).
 *
 * L2 passes shift rows and centroids by the first centroid before the
 * sgemm's |x|^2 - 2 x.c + |c|^2, whose rounding is then of the data's spread
 * rather than of its distance from the origin (data 1e6 from it clustered
 * into one giant cluster before); distances are unchanged by a shift.
 *
 * Memory beyond x, centroids and assign: k * d doubles of sums, 8 k bytes,
 * k * d + k + d floats of shifted centroids (L2),
 * per thread a distance tile (<= 1 MiB) plus B * d floats (<= 16 MiB),
 * k + 4 k bytes for the small-cluster pass,
 * 4 n bytes when assign is NULL, 4 n more for COSINE (inverse norms), 12
 * bytes per seeding-subsample point for PLUSPLUS, 12 per batch point for
 * mini-batch, and 144 bytes per point of an over-full cluster for max_size.
 *
 * @param[out] centroids k * d floats (read first when init is GIVEN)
 * @param[out] assign    n cluster ids, or NULL
 * @param[out] st        statistics, or NULL
 * @return ANN_OK, ANN_E_INVAL (bad sizes or options, k * max_size < n),
 *         ANN_E_NOMEM.
 */
int ann_kmeans(const float *x, size_t n, size_t d, const ann_kmeans_opts *o, float *centroids,
	       uint32_t *assign, ann_kmeans_stats *st, ann_error *err);

/*
 * The nprobe nearest of k centroids (k x d, row-major) for each of the n
 * points of x under metric, with blocked sgemm tiles as above. Rows of ids
 * and dists hold nprobe entries sorted by (distance, id); when nprobe > k the
 * tail is padded with UINT32_MAX / +inf. dists may be NULL. Distances are the
 * sgemm expansions (for L2 |x|^2 - 2 x.c + |c|^2, clamped at 0). threads as
 * in ann_kmeans; the result does not depend on it. L2 rows and centroids
 * are shifted as in ann_kmeans (k * d + k + d floats more, per thread B * d
 * floats of shifted rows).
 * @return ANN_OK, ANN_E_INVAL, ANN_E_NOMEM.
 */
int ann_nearest_centroids(const float *x, size_t n, size_t d, const float *centroids, size_t k, size_t nprobe,
			  ann_metric metric, int threads, uint32_t *ids, float *dists, ann_error *err);

/*
 * A two-level search structure over k centroids, for assigning many points
 * to (nearly) their nearest centroids at a fraction of the exact scan's cost
 * when k is large (the build's routing; docs/DESIGN.md "Routing at scale").
 * The centroids are clustered into C coarse cells (ann_kmeans, C clusters,
 * 10 iterations, the given seed); a point is compared with the C coarse
 * centres, then with every centroid of its `probes` nearest cells, and gets
 * the nprobe nearest of those: about C + probes * k / C distances instead of
 * k, computed as blocked sgemm tiles per cell over the points that probe it.
 * The result is exact whenever a point's nprobe nearest centroids lie in its
 * probed cells; how often that fails is measured (tests/test_kmeans.c,
 * docs/BENCHMARKS.md "Scale").
 *
 * Memory: the k centroids reordered by cell as floats plus the C centres,
 * (k + C) (d + 1) * 4 + 8 k bytes, and for L2 the shift, d floats: the
 * centroids are kept minus the first of them, and the points are shifted as
 * they are gathered (ann_kmeans_tree_bytes); per
 * ann_kmeans_tree_nearest call 4 + 12 probes (1 + nprobe) bytes per point
 * plus per thread a 1 MiB tile and 4096 gathered rows.
 * Deterministic: the structure depends on the centroids, C and the seed; the
 * answers on those and the points, not on threads.
 */
typedef struct ann_kmeans_tree ann_kmeans_tree;

/* Builds the tree over k x d centroids (copied; the caller keeps its own).
 * coarse = 0 picks ceil(sqrt(k)); coarse is clamped to k.
 * @return ANN_OK, ANN_E_INVAL, ANN_E_NOMEM. */
int ann_kmeans_tree_new(const float *centroids, size_t k, size_t d, ann_metric metric, size_t coarse, uint64_t seed,
			int threads, ann_kmeans_tree **out, ann_error *err);
void ann_kmeans_tree_free(ann_kmeans_tree *t);
size_t ann_kmeans_tree_bytes(const ann_kmeans_tree *t);
size_t ann_kmeans_tree_coarse(const ann_kmeans_tree *t);

/*
 * As ann_nearest_centroids, through the tree: rows of ids / dists hold the
 * nprobe nearest centroids among those of each point's `probes` nearest
 * cells (probes clamped to C), sorted by (distance, id), padded with
 * UINT32_MAX / +inf. dists may be NULL.
 * @return ANN_OK, ANN_E_INVAL, ANN_E_NOMEM.
 */
int ann_kmeans_tree_nearest(const ann_kmeans_tree *t, const float *x, size_t n, size_t nprobe, size_t probes,
			    int threads, uint32_t *ids, float *dists, ann_error *err);

#endif /* ANN_KMEANS_H */
