/* SPDX-License-Identifier: MIT */
/*
 * partition.h: balanced partitions for the graph routers. METIS k-way
 * partitioning of a k-NN graph (the nlsh seed partition), the cut and
 * balance of any labelling, the sparse "share of p's neighbours in part j"
 * term, and the capacity-constrained assignment that relabels sample points
 * each round of the joint router. The graph type is in knngraph.h.
 */
#ifndef ANN_PARTITION_H
#define ANN_PARTITION_H

#include "common.h"
#include "knngraph.h"

/* Default imbalance of ann_partition_graph: parts may hold up to 3% more
 * than n / m vertices (METIS ufactor 30). */
#define ANN_PARTITION_DEFAULT_IMBALANCE 0.03

typedef struct ann_partition_stats {
	size_t n;              /* vertices */
	size_t m;              /* parts */
	uint64_t cut;          /* weight of edges between parts, each undirected edge once */
	uint64_t total_weight; /* weight of all undirected edges */
	double cut_frac;       /* cut / total_weight, 0 for an edgeless graph */
	size_t max_part;       /* vertices in the largest part */
	size_t min_part;       /* vertices in the smallest part */
	size_t empty_parts;    /* parts with no vertex */
	double balance;        /* max_part / (n / m); 1.0 is perfect */
	double seconds;        /* ann_partition_graph: time in METIS; eval: 0 */
	size_t moved;          /* ann_partition_graph: vertices the balance repair moved */
} ann_partition_stats;

/* Partitions g into m parts (1 <= m <= n) with METIS minimising the edge
 * cut (METIS_PartGraphKway; METIS_PartGraphRecursive for m == 2, where a
 * single bisection is its best case). imbalance in [0.001, 1] (0 means the
 * default) is passed to METIS as ufactor = 1000 x imbalance; METIS treats it
 * as a target and can overshoot on strongly clustered graphs, so a repair
 * pass then moves the cheapest vertices (least edge weight lost) out of
 * parts above cap = max(ceil(n / m), floor((1 + imbalance) n / m)): every
 * part ends with at most cap vertices. seed makes the result reproducible.
 * parts (n entries) receives labels in [0, m). g must be symmetric (as
 * ann_graph_from_knn makes it); its arrays are only read, though METIS's
 * prototypes are not const. m == 1, m == n and edgeless graphs are handled
 * without METIS. st may be NULL.
 * METIS keeps process-global random state: do not call this from two
 * threads at once. METIS allocates with its own malloc, outside ann_mem.
 * @return ANN_OK, ANN_E_INVAL (bad m, imbalance, or a malformed graph,
 * naming the vertex), ANN_E_NOMEM (METIS_ERROR_MEMORY) or
 * ANN_E_UNSUPPORTED (other METIS errors), each with METIS's code. */
int ann_partition_graph(const ann_graph *g, size_t m, double imbalance, uint64_t seed, uint32_t *parts,
			ann_partition_stats *st, ann_error *err);

/* Cut and balance of an arbitrary labelling (labels in [0, m)) of g into st.
 * O(n + nnz). ANN_E_INVAL names the first label >= m. */
int ann_partition_eval(const ann_graph *g, const uint32_t *labels, size_t m, ann_partition_stats *st,
		       ann_error *err);

/* ---- neighbour share ------------------------------------------------------
 * share(p, j) = (weight of p's edges to vertices labelled j) / (weight of all
 * p's edges), so the shares of a vertex sum to 1 (0 entries for an isolated
 * vertex). Mutual k-NN edges weigh 2, one-way edges 1 (ann_graph_from_knn).
 * Stored sparsely: only parts present among p's neighbours. */
typedef struct ann_nshare {
	size_t n;       /* vertices */
	size_t nnz;     /* entries, <= g->nnz */
	uint32_t *off;  /* n + 1: vertex p's entries are off[p] .. off[p + 1] */
	uint32_t *part; /* nnz part ids, ascending within a vertex */
	float *share;   /* nnz shares in (0, 1] */
} ann_nshare;

/* Computes the shares of every vertex under labels. O(n + nnz) time, O(m)
 * scratch. Free with ann_nshare_free. */
int ann_nshare_compute(const ann_graph *g, const uint32_t *labels, size_t m, ann_nshare *out, ann_error *err);
void ann_nshare_free(ann_nshare *s);

/* score[p * m + j] += lambda * share(p, j) for every p and every part j
 * present among p's neighbours, without building the sparse form. */
int ann_nshare_add(const ann_graph *g, const uint32_t *labels, size_t m, float lambda, float *score,
		   ann_error *err);

/* ---- balanced assignment --------------------------------------------------
 * Chooses labels maximising sum_p score[p * m + labels[p]] subject to every
 * part holding at most `capacity` points.
 *
 * Algorithm: if the row-wise argmax (ties: smaller part) respects the
 * capacity it is optimal and is returned as is. Otherwise Bertsekas's
 * auction for the transportation problem with similar objects: each part is
 * C = min(capacity, n) interchangeable slots, the problem is made symmetric
 * with D = m C - n dummy points worth 0 everywhere (kept as counted blocks,
 * not one by one), a point bids for the part with the best value
 * score - price and raises that part's cheapest slot by its margin over the
 * second-best part plus eps, displacing the slot's holder. eps-scaling
 * (eps from range/4 down to eps_final, divided by 8 per phase, prices
 * carried over) avoids price wars. The end state satisfies
 * eps-complementary slackness, so the LP dual at the final prices bounds
 * the optimum: the result is within (n + D) eps_final of optimal, and
 * st->dual - st->primal is the certified gap. Time O(m + log C) per bid,
 * about one bid per point (and per dummy block) per phase, 7 phases by default,
 * plus O(n m) for the argmax and the dual: roughly 10 n m operations.
 * Memory O(n + m C) in the worst case (heap entries), O(n + m) typically.
 *
 * eps_final <= 0 selects 1e-6 x (largest row range of score), at least
 * 1e-9. capacity * m >= n is required; scores must be finite.
 * @return ANN_OK, ANN_E_INVAL (naming the offending row and column or
 * argument) or ANN_E_NOMEM. */
typedef struct ann_assign_stats {
	double primal;    /* total score of the returned labels */
	double dual;      /* upper bound on the optimum from the final prices (primal if argmax) */
	double eps_final; /* the last phase's eps (0 if argmax) */
	size_t dummies;   /* D = m min(capacity, n) - n (0 if argmax) */
	uint64_t bids;    /* bids, all phases (a dummy block's bid counts once) */
	unsigned phases;  /* eps-scaling phases run (0 if argmax) */
	size_t max_load;  /* points in the fullest part */
	int argmax;       /* 1 if the argmax labels were feasible and returned */
	double seconds;   /* wall time */
} ann_assign_stats;

int ann_balanced_assign(const float *score, size_t n, size_t m, size_t capacity, double eps_final,
			uint32_t *labels, ann_assign_stats *st, ann_error *err);

#endif /* ANN_PARTITION_H */
