/* SPDX-License-Identifier: MIT */
/*
 * knngraph.h: the exact k-nearest-neighbour graph of an in-memory sample
 * (blocked on OpenBLAS through distance.h, bounded tile memory, optional
 * worker threads) and its symmetrisation into an undirected weighted CSR
 * graph in METIS's layout. Used by the nlsh and joint routers; partition.h
 * consumes the graph. Approximate graphs (NN-descent) are not here yet.
 */
#ifndef ANN_KNNGRAPH_H
#define ANN_KNNGRAPH_H

#include "common.h"

/* Padding id of a k-NN row that has fewer than k neighbours (k > n - 1). */
#define ANN_KNN_NONE UINT32_MAX
/* Default tile budget: 64 MiB. */
#define ANN_KNN_DEFAULT_MEM ((size_t)64 << 20)

typedef struct ann_knn_opts {
	size_t k;                 /* neighbours per point, self excluded; >= 1 */
	ann_metric metric;        /* L2 (squared), IP (negated) or COSINE */
	size_t mem_bytes;         /* budget of the distance tiles of all threads; 0 = ANN_KNN_DEFAULT_MEM */
	int threads;              /* worker threads, 1..64; 0 means 1 */
	ann_progress_fn progress; /* optional; phase "knn", unit: tile pairs */
	void *progress_ctx;
} ann_knn_opts;

typedef struct ann_knn_stats {
	size_t tile;        /* tile edge T: each distance tile holds T x T floats */
	size_t tile_bytes;  /* bytes of distance tiles allocated (all threads), <= mem_bytes */
	size_t work_bytes;  /* other working memory (heaps, norms, locks), see below */
	uint64_t tile_pairs; /* tile pairs (I, J), I <= J, computed */
	double seconds;     /* wall time */
} ann_knn_stats;

/* Defaults: k 10, L2, 64 MiB, 1 thread, no progress. */
void ann_knn_opts_init(ann_knn_opts *o);

/* The tile edge ann_knn_graph would use for n points of dimension d, and the
 * total memory it would allocate (tiles + working memory), so a caller can
 * plan a budget before building. ANN_E_BUDGET if mem_bytes cannot hold one
 * 16 x 16 tile per thread. */
int ann_knn_plan(size_t n, size_t d, const ann_knn_opts *o, size_t *tile, size_t *total_bytes,
		 ann_error *err);

/* Exact k-NN graph of the n rows of x (row-major, n x d floats, finite).
 * Row i of ids (k entries) lists i's k nearest other points by ascending
 * distance, ties broken by the smaller id; when k > n - 1 the row ends with
 * ANN_KNN_NONE / +inf padding. dists (n * k floats) may be NULL.
 *
 * Method: the distance matrix is computed in T x T tiles with ann_dist_batch
 * (sgemm); the matrix is symmetric, so only tiles (I, J) with I <= J are
 * computed and each tile updates the heaps of both I's and J's rows, which
 * halves the arithmetic. Threads take tile pairs from a shared cursor and
 * lock the heap rows of one tile at a time. Memory: threads * T * T * 4
 * bytes of tiles (<= mem_bytes), plus 12 n k bytes of heaps (8 n k when
 * dists is given), 32 n bytes of heap headers, 4 n bytes of norms, one
 * mutex per tile row and, for L2, 8 T d bytes per thread: the two tiles of
 * rows shifted by the first row before the sgemm, so that its rounding is
 * of the data's spread, not of its distance from the origin. O(n k) beside
 * the output. Requires n < 2^31. For a given tile edge the
 * result does not depend on the thread count or scheduling; distances follow
 * the sgemm expansion, so near-ties can order differently from a direct
 * scan. */
int ann_knn_graph(const float *x, size_t n, size_t d, const ann_knn_opts *o, uint32_t *ids, float *dists,
		  ann_knn_stats *st, ann_error *err);

/* ---- undirected weighted graph in CSR (METIS layout) ---------------------
 * Row v is adjncy[xadj[v] .. xadj[v + 1]), sorted ascending, without self
 * loops or duplicates; the graph is symmetric (u in row v iff v in row u,
 * same weight). Types are int32_t, which is METIS's idx_t on Debian (checked
 * at compile time in partition.c). */
typedef struct ann_graph {
	size_t n;        /* vertices */
	size_t nnz;      /* adjacency entries = 2 x undirected edges */
	int32_t *xadj;   /* n + 1 offsets into adjncy */
	int32_t *adjncy; /* nnz neighbour ids */
	int32_t *adjwgt; /* nnz weights, > 0 */
} ann_graph;

/* Symmetrises a k-NN graph (n rows of k ids, ANN_KNN_NONE entries and self
 * ids ignored) into g: the undirected edge {u, v} exists when v is in u's
 * list or u in v's, with weight 1 if only one direction holds and 2 if both
 * do (mutual neighbours). Time O(n k log k), memory O(n k). ANN_E_INVAL for
 * an id >= n (naming row and column) or more than 2^31 - 1 adjacency
 * entries. On failure g is zeroed. Free with ann_graph_free. */
int ann_graph_from_knn(const uint32_t *ids, size_t n, size_t k, ann_graph *g, ann_error *err);

/* Frees g's arrays and zeroes it; accepts a zeroed graph. */
void ann_graph_free(ann_graph *g);

/* Sum of weights of undirected edges (each edge counted once). */
uint64_t ann_graph_total_weight(const ann_graph *g);

#endif /* ANN_KNNGRAPH_H */
