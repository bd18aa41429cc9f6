/* SPDX-License-Identifier: MIT */
/*
 * hnsw.h: a hierarchical navigable small-world graph (Malkov & Yashunin,
 * 2016/2018) over vectors held in memory as float32, or as uint8 for L2
 * (ann_hnsw_create_u8: a quarter of the bytes); incremental and bulk
 * (multi-threaded) construction with the neighbour-selection heuristic,
 * thread-safe searches through per-thread contexts, memory reporting, and a
 * versioned, checksummed byte blob to persist it. It routes queries to
 * partition centroids; it does not touch files (the caller stores the blob).
 */
#ifndef ANN_HNSW_H
#define ANN_HNSW_H

#include "common.h"

/*
 * Blob layout, version 1.2 (all integers little-endian; docs/FORMAT.md):
 *
 *   OFFSET SIZE  FIELD
 *   0      8     magic 89 48 4E 53 57 0D 0A 1A ("\x89HNSW\r\n\x1a")
 *   8      2     major version (1); a reader refuses another major
 *   10     2     minor version: 2 with a search ef (offset 96); else 1
 *                with uint8 storage, 0 with float32 storage, which keeps
 *                the 1.0 layout so 1.0 readers load it
 *   12     4     header bytes H: 96, or 104 in minor 2; the body starts there
 *   16     4     dimension d
 *   20     4     metric (ann_metric)
 *   24     4     M (max degree above level 0; level 0 allows 2 M)
 *   28     4     ef_construction
 *   32     8     n, number of vectors (< 2^31)
 *   40     4     max_level (int32, -1 when n = 0)
 *   44     4     entry point id (0xFFFFFFFF when n = 0)
 *   48     4     flags (bit 0: keep pruned connections)
 *   52     4     vector storage: 0 float32, 1 uint8 (metric L2, minor >= 1);
 *                another value is ANN_E_FORMAT (reserved, 0, in 1.0)
 *   56     32    level generator state (4 x u64), so later adds continue it
 *   88     8     body bytes B
 *   96     4     minor >= 2: search ef its owner calibrated (1..ANN_MAX_EF;
 *                0 = none, written as minor 0/1 without this field)
 *   100    4     minor >= 2: reserved, 0
 *   H      B     body:
 *                  n level bytes (<= 30 and <= max_level), zero-padded to a
 *                  multiple of 4;
 *                  n * d float32 vectors (unit length for COSINE), or in
 *                  uint8 storage n * d bytes zero-padded to a multiple of 4;
 *                  per node in id order, for l = 0 .. level: u32 count
 *                  (<= 2 M at l = 0, <= M above), then count u32 ids, each
 *                  < n, not the node itself, of level >= l.
 *   H+B    8     XXH64 (seed 0) of bytes [0, H + B)
 */
#define ANN_HNSW_VERSION_MAJOR 1
#define ANN_HNSW_VERSION_MINOR 2
#define ANN_HNSW_MAX_LEVEL 30
#define ANN_HNSW_MAX_DIM 65536
#define ANN_HNSW_MAX_M 1024

typedef struct ann_hnsw ann_hnsw;
typedef struct ann_hnsw_ctx ann_hnsw_ctx;

/* An empty graph for d-dimensional vectors. M (2..1024) is the degree above
 * level 0 (2 M at level 0); ef_construction (>= 1) the candidate list size
 * while inserting. Levels are drawn as floor(-ln(U) / ln(M)) from an
 * ann_rng seeded with seed. For COSINE, vectors (and queries) are
 * normalised and the distance is 1 - dot product; IP is -dot; L2 squared.
 * Neighbours are chosen by the paper's heuristic with pruned candidates
 * filling the free slots (keepPrunedConnections: measured better recall at
 * low ef, and needed for IP, where the heuristic alone leaves ~2 links per
 * node); at most half of a list may be copies of the node (same vector, or
 * same direction for COSINE) so duplicated vectors do not trap searches.
 * IP is not a metric: expect to need a larger ef than for L2.
 * @return ANN_OK, ANN_E_INVAL, ANN_E_NOMEM. */
int ann_hnsw_create(size_t d, ann_metric metric, uint32_t M, uint32_t ef_construction, uint64_t seed,
		    ann_hnsw **out, ann_error *err);
/* As ann_hnsw_create, but the graph stores each vector as d uint8: vectors
 * given to adds and builds must have integer coordinates in 0..255 (others
 * are ANN_E_INVAL naming the vector and component; the caller rounds).
 * Queries stay float (kernel l2_f32_u8); distances between stored vectors
 * are exact integer sums (l2_u8). metric must be L2, else ANN_E_INVAL. */
int ann_hnsw_create_u8(size_t d, ann_metric metric, uint32_t M, uint32_t ef_construction, uint64_t seed,
		       ann_hnsw **out, ann_error *err);
void ann_hnsw_free(ann_hnsw *h);

/* Grows the capacity to n vectors so that adds up to n do not reallocate. */
int ann_hnsw_reserve(ann_hnsw *h, size_t n, ann_error *err);

/* Copies v (d floats) in and links it; its id is the previous count, written
 * to *id if id is not NULL. Not concurrent with anything else on h.
 * @return ANN_OK, ANN_E_INVAL (2^31 - 1 vectors already; in uint8 storage a
 *         coordinate that is not an integer in 0..255), ANN_E_NOMEM,
 *         ANN_E_STATE (an earlier add or build failed half-way). */
int ann_hnsw_add(ann_hnsw *h, const float *v, uint32_t *id, ann_error *err);

/* Adds the n rows of x (n x d) with ids count .. count + n - 1, using
 * `threads` threads (1..64). threads = 1 gives exactly the graph of n calls
 * to ann_hnsw_add; with more threads the links depend on scheduling (the
 * levels do not). progress gets phase "hnsw", done/total in vectors, from
 * the calling thread, at most about 5 times a second. Ends with
 * ann_hnsw_repair (so threads = 1 equals n adds and one repair). In uint8
 * storage every row is checked first: a refused build adds nothing.
 * @return as ann_hnsw_add. */
int ann_hnsw_build(ann_hnsw *h, const float *x, size_t n, int threads, ann_progress_fn progress,
		   void *progress_ctx, ann_error *err);

/* Nodes not reachable from the entry point along the links of their
 * levels, summed over levels; SIZE_MAX when out of memory. */
size_t ann_hnsw_unreachable(const ann_hnsw *h);
/* Links every unreachable node from its nearest reachable one (see
 * hnsw_blob.c, hn_repair); *added (may be NULL) gets the number of links made.
 * Where every list is full a link is given up for it, which in rare cases
 * cuts off another node: measured, it leaves 0-1 of 3000 with M >= 8 on
 * hard 128-d data, where adds alone leave 1-170 (tests/test_hnsw.c).
 * ann_hnsw_build calls it; call it after a series of adds.
 * @return ANN_OK, ANN_E_NOMEM, ANN_E_STATE. */
int ann_hnsw_repair(ann_hnsw *h, size_t *added, ann_error *err);

size_t ann_hnsw_count(const ann_hnsw *h);
size_t ann_hnsw_dim(const ann_hnsw *h);
ann_metric ann_hnsw_metric(const ann_hnsw *h);
/* Degree above level 0 (M) and ef_construction the graph was created with. */
uint32_t ann_hnsw_degree(const ann_hnsw *h);
uint32_t ann_hnsw_ef_construction(const ann_hnsw *h);
/* The search ef the graph's owner calibrated (the k-means router's
 * single-query routing ef), kept in the blob; 0 = none. */
uint32_t ann_hnsw_search_ef(const ann_hnsw *h);
/* Sets it (0..ANN_MAX_EF; 0 = none). */
void ann_hnsw_set_search_ef(ann_hnsw *h, uint32_t ef);
/* True when the graph stores uint8 vectors (ann_hnsw_create_u8). */
bool ann_hnsw_is_u8(const ann_hnsw *h);
/* Copies the stored vector of id < count (normalised for COSINE) into out
 * (dim floats). */
void ann_hnsw_vector_get(const ann_hnsw *h, uint32_t id, float *out);
/* All stored vectors, count x dim float32 row-major in id order, valid until
 * the next add; NULL in uint8 storage (then copy with ann_hnsw_vector_get). */
const float *ann_hnsw_vectors(const ann_hnsw *h);
/* Bytes of memory the graph holds (vectors, links, levels, bookkeeping). */
size_t ann_hnsw_bytes(const ann_hnsw *h);

/* A search context: the visited set (2 bytes per vector, a generation
 * counter, so it is cleared once every 65535 searches), the candidate and
 * result heaps and a query buffer. Use one per thread; it may serve several
 * graphs. It grows on first use with a larger graph or ef, then a search
 * allocates nothing. */
int ann_hnsw_ctx_new(ann_hnsw_ctx **out, ann_error *err);
void ann_hnsw_ctx_free(ann_hnsw_ctx *c);
/* Bytes held by the context. */
size_t ann_hnsw_ctx_bytes(const ann_hnsw_ctx *c);

/* The k nearest stored vectors of q found with a candidate list of
 * max(ef, k): ids and dists (k entries each, dists may be NULL) sorted by
 * (distance, id), padded with -1 / +inf beyond the count found. Concurrent
 * searches on one graph are safe with one ctx per thread; none may run
 * during an add or build. ctx NULL uses a temporary context (allocates).
 * @return the number found (min(k, count) unless the graph is disconnected),
 *         or ANN_E_INVAL, ANN_E_NOMEM. */
int ann_hnsw_search(const ann_hnsw *h, ann_hnsw_ctx *ctx, const float *q, size_t k, size_t ef, int32_t *ids,
		    float *dists, ann_error *err);
/* The k nearest stored vectors of q by an exact scan of every node, in the
 * order and layout of ann_hnsw_search (ties by id). For a graph of a few
 * thousand nodes and a large k it is faster than the graph search, and it
 * misses nothing (docs/DESIGN.md "The centroid graph"). Every metric, float
 * or u8 storage. Caller scratch: sel of k entries, scratch of 2 x count.
 * @return the number found, min(k, count). */
int ann_hnsw_scan(const ann_hnsw *h, const float *q, size_t k, int32_t *ids, float *dists, uint64_t *sel,
		  uint32_t *scratch);
/* The m nearest stored vectors of each of n rows of x (row stride d = the
 * graph's dimension), as routers assign: ids (n * m, UINT32_MAX past the count
 * found) and dists (n * m), with ef = max(64, 4 m). One context for the call.
 * @return ANN_OK, ANN_E_INVAL or ANN_E_NOMEM. */
int ann_hnsw_nearest_rows(const ann_hnsw *h, const float *x, size_t n, uint32_t m, uint32_t *ids, float *dists,
			  ann_error *err);

/* Size of the blob ann_hnsw_save writes. */
size_t ann_hnsw_blob_bytes(const ann_hnsw *h);
/* Writes the blob (layout above) into buf of cap >= ann_hnsw_blob_bytes(h).
 * @return ANN_OK or ANN_E_INVAL (cap too small). */
int ann_hnsw_save(const ann_hnsw *h, uint8_t *buf, size_t cap, ann_error *err);
/* Rebuilds a graph from a blob of len bytes, validating everything: a blob
 * that is truncated, fails its checksum or breaks any rule of the layout is
 * ANN_E_CORRUPT naming the offset and the expectation; a wrong magic or
 * major version, or an unknown vector storage, is ANN_E_FORMAT. Blobs of
 * 1.0 (float32) load unchanged. Allocates at most about len bytes plus the
 * level-0 link slots. @return ANN_OK, ANN_E_CORRUPT, ANN_E_FORMAT, ANN_E_NOMEM. */
int ann_hnsw_load(const uint8_t *buf, size_t len, ann_hnsw **out, ann_error *err);

#endif /* ANN_HNSW_H */
