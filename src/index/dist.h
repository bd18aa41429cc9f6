/* SPDX-License-Identifier: MIT */
/*
 * dist.h: the library's hooks for an index spread over several processes
 * (docs/DESIGN.md "Many machines"; the MPI layer itself lives in the tool,
 * tools/cmd_dist.c, so the library stays free of MPI). Nothing here talks
 * to another process: each hook is what one rank does on its own.
 *
 *  - partbuild (build_part.c): a build whose router is given (not trained) and
 *    whose vectors arrive with their partitions already chosen, in any
 *    order, from any source; partitions that receive nothing get no
 *    directory entry, so a search of this part reads nothing for them.
 *  - the distributed k-means steps (dist.c): partial sums of a sample slice
 *    against given centroids, and the update from summed partials, so that
 *    every rank computes the same centroids from the same reduced sums.
 *  - the descriptor of a distributed index (dist.c): DIR/annann-distributed,
 *    docs/FORMAT.md "Distributed indexes".
 *  - top-k merge of per-rank answers (dist.c).
 *
 * Invariants: a rank's part is an ordinary index directory whose catalog
 * meta holds dist.rank and dist.ranks; ann_index_open refuses it (and a
 * directory holding the descriptor) with a message saying what it is;
 * ann_index_open_part opens it.
 */
#ifndef ANN_DIST_H
#define ANN_DIST_H

#include "common.h"

/* ---- partbuild (build_part.c) ------------------------------------------- */

typedef struct ann_partbuild ann_partbuild;

/* Starts a build of index_dir (which must not exist) from the vectors of
 * data_path (its shape and element type; the vectors themselves come
 * through ann_partbuild_add). o as for ann_build; its router, sample and
 * k-means options are not used. ranks = 0: an ordinary index (rank 0);
 * ranks >= 1: rank's part of a distributed index of ranks parts, recorded
 * in the catalog (meta dist.rank, dist.ranks). Memory: see
 * ann_partbuild_set_router; packing holds the largest partition as
 * ann_build does. */
int ann_partbuild_open(const char *data_path, const char *index_dir, const ann_build_opts *o, uint32_t rank,
		       uint32_t ranks, ann_partbuild **out, ann_error *err);
/* The input's vectors, dimension, element type; the resolved partitions,
 * copies per vector (--replicas) and encoding. */
void ann_partbuild_shape(const ann_partbuild *pb, uint64_t *n, uint32_t *dim, ann_dtype *in_type, uint32_t *nparts,
			 uint32_t *copies, ann_encoding *enc);
/* Draws a uniform sample of `want` vectors among input vectors
 * [first, first + count) in one sequential pass (Algorithm S), as floats
 * in the routing space (unit length for the cosine metric). */
int ann_partbuild_sample(ann_partbuild *pb, uint64_t first, uint64_t count, uint64_t want, uint64_t seed,
			 float *out, ann_error *err);
/* Gives the router (a blob as saved in a catalog) and its calibrated ef
 * (0: none). Its partitions must number the resolved partitions or, when
 * o->partitions was 0, set them. A router that learns from the routed data
 * (ops->observe) is refused: ranks would learn different routers.
 * caller_bytes: the caller's own buffers (read, route, shuffle), taken out
 * of o->mem_bytes with the router and 2 MiB before the spill buffer gets
 * the rest. */
int ann_partbuild_set_router(ann_partbuild *pb, ann_router_kind kind, const uint8_t *blob, size_t len,
			     uint32_t route_ef, size_t caller_bytes, ann_error *err);
/* Reads n vectors from input vector `first` on (raw: n * dim elements of the
 * input type, the caller's buffer) and routes them: parts gets n * copies
 * partitions (UINT32_MAX padded), primary first. */
int ann_partbuild_read_route(ann_partbuild *pb, uint64_t first, size_t n, void *raw, uint32_t *parts,
			     ann_error *err);
/* Adds one vector (raw, the input type) with id to partition part. */
int ann_partbuild_add(ann_partbuild *pb, uint32_t part, int64_t id, const void *raw, ann_error *err);
/* Packs every partition that received vectors, publishes the catalog
 * (vectors: the primary copies this part holds) and renames the temporary
 * directory to index_dir. Frees pb, also on failure (then index_dir does
 * not appear). */
int ann_partbuild_finish(ann_partbuild *pb, uint64_t vectors, ann_error *err);
/* Removes the temporary directory and frees pb. NULL is a no-op. */
void ann_partbuild_abort(ann_partbuild *pb);

/* ---- distributed k-means (dist.c) ---------------------------------------- */

/* One assignment step over a sample slice x (n x d): adds to sums (k x d)
 * each point's coordinates at its nearest centroid, to counts the points,
 * to *inertia their distances. The caller reduces sums, counts and inertia
 * over the ranks, then calls ann_dist_kmeans_update. */
int ann_dist_kmeans_partial(const float *x, size_t n, size_t d, const float *centroids, size_t k, ann_metric metric,
			    int threads, double *sums, uint64_t *counts, double *inertia, ann_error *err);
/* Centroids from the reduced sums and counts: means (unit length for IP and
 * cosine); an empty cluster takes a copy of the largest one's centroid,
 * both nudged apart by 1/1024 of each coordinate in opposite directions,
 * and the two share the count (Faiss's split). Deterministic: every rank
 * computes the same centroids from the same sums. Returns the number of
 * empty clusters repaired. */
uint64_t ann_dist_kmeans_update(const double *sums, uint64_t *counts, size_t k, size_t d, ann_metric metric,
				float *centroids);
/* The k-means router over given centroids (u8 encodings rounded as the
 * trained router does; HNSW with o->hnsw_m, o->hnsw_ef_construction),
 * calibrated on the sample x (n x d), saved as a blob (free with ann_free). */
int ann_dist_kmeans_router(const ann_build_opts *o, ann_encoding enc, const float *centroids, size_t k, size_t d,
			   const float *x, size_t n, uint8_t **blob, size_t *len, uint32_t *route_ef, ann_error *err);

/* ---- index parts and the descriptor (dist.c, index.c) -------------------- */

#define ANN_DIST_DESCRIPTOR "annann-distributed"

typedef struct ann_dist_desc {
	uint32_t ranks;
	uint32_t partitions;
	uint32_t dim;
	uint64_t vectors;
	uint64_t router_hash; /* XXH64 (seed 0) of the router blob every part holds */
} ann_dist_desc;

/* Writes DIR/annann-distributed (temporary file, fsync, rename). */
int ann_dist_desc_write(const char *dir, const ann_dist_desc *d, ann_error *err);
/* Reads it: ANN_E_NOTFOUND when dir has none (not a distributed index),
 * ANN_E_BADINPUT naming the line for a malformed one. */
int ann_dist_desc_read(const char *dir, ann_dist_desc *d, ann_error *err);
/* Opens a part of a distributed index (what ann_index_open refuses);
 * *rank and *ranks get the catalog's dist.rank and dist.ranks (0 and 0 for
 * an ordinary index). */
int ann_index_open_part(const char *dir, ann_index **out, uint32_t *rank, uint32_t *ranks, ann_error *err);
/* The router of an open index as a blob (free with ann_free), its kind and
 * calibrated ef. */
int ann_index_router_blob(const ann_index *idx, ann_router_kind *kind, uint8_t **blob, size_t *len,
			  uint32_t *route_ef, ann_error *err);
uint64_t ann_dist_hash(const void *p, size_t n);

/* ---- answers --------------------------------------------------------------- */

/* Merges m answer lists of k (ids, dists; -1 / +inf padded) into the k
 * best distinct ids ascending by (distance, id), -1 / +inf padded; an id in
 * several lists (a replica on two ranks) counts once, at its smallest
 * distance. Scratch: m * k * 16 bytes. */
int ann_topk_merge(const int64_t *ids, const float *dists, size_t m, size_t k, int64_t *out_ids, float *out_dists,
		   ann_error *err);

#endif
