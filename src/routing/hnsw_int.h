/* SPDX-License-Identifier: MIT */
/*
 * hnsw_int.h: the graph of hnsw.h as its two files see it: hnsw.c (the
 * search context, graph search, construction, the life cycle) and
 * hnsw_blob.c (reachability and repair, the blob's save and load). The
 * storage layout is described at the top of hnsw.c. Internal to
 * src/routing; the public face is hnsw.h.
 */
#ifndef ANN_HNSW_INT_H
#define ANN_HNSW_INT_H

#include <pthread.h>

#include "distance.h"
#include "hnsw.h"

#define HN_MAGIC "\x89HNSW\r\n\x1a"
#define HN_HEADER 96u
#define HN_HEADER_EF 104u /* minor 2: the search ef at offset 96, reserved u32 at 100 */
#define HN_TRAILER 8u
#define HN_STRIPES 4096u /* lock stripes during parallel builds */
#define HN_MAX_THREADS 64
#define HN_MAX_N ((size_t)INT32_MAX)
#define HN_NONE UINT32_MAX
#define HN_FLAG_KEEP_PRUNED 1u
#define HN_STORE_F32 0u /* blob storage field (offset 52): float32 rows */
#define HN_STORE_U8 1u  /* uint8 rows, metric L2 only */
#define HN_PROGRESS_NS 200000000ull

typedef struct hn_pair {
	float d;
	uint32_t id;
} hn_pair;

struct ann_hnsw {
	size_t d;
	ann_metric metric;
	uint32_t M;   /* degree above level 0 */
	uint32_t M0;  /* degree at level 0 (2 M) */
	uint32_t efc; /* ef_construction */
	uint32_t search_ef; /* calibrated by the owner (blob minor 2); 0 = none */
	uint32_t flags;
	double mult; /* 1 / ln M */
	ann_rng rng; /* level generator */
	const ann_kernels *kern;
	size_t n, cap;     /* vectors held, slots allocated */
	bool u8;           /* rows are uint8 (L2 only), else float32 */
	size_t row;        /* bytes of one row: d, or 4 d */
	uint8_t *vec;      /* cap * row */
	uint32_t *link0;   /* cap * (1 + M0) */
	uint8_t *level;    /* cap */
	size_t *uoff;      /* cap: first word of the node's level-1 list in upper */
	uint32_t *upper;   /* upper_cap words */
	size_t upper_n, upper_cap;
	int max_level;     /* -1 when empty */
	uint32_t entry;
	bool failed;       /* an add or build stopped half-way; see ANN_E_STATE */
	ann_hnsw_ctx *actx; /* context for adds */
	/* parallel build only */
	pthread_mutex_t *locks; /* HN_STRIPES, NULL when single-threaded */
	pthread_mutex_t glock;
};

struct ann_hnsw_ctx {
	uint16_t *tag; /* visited marks: tag[id] == gen */
	size_t tag_cap;
	uint16_t gen;
	hn_pair *cand; /* min-heap by distance */
	size_t ncand, cand_cap;
	hn_pair *res; /* max-heap by distance, <= ef + 1 */
	size_t nres, res_cap;
	hn_pair *sorted; /* results ascending, and scratch for pruning */
	size_t sorted_cap;
	float *q; /* normalised query (COSINE) */
	size_t q_cap;
	uint32_t *nb; /* neighbour list copy */
	size_t nb_cap;
	hn_pair *sel; /* selected neighbours */
	hn_pair *pruned;
	size_t sel_cap;
};
/* ---- small helpers --------------------------------------------------------- */

/* The stored row of id: float32, or uint8 in u8 storage. */
static inline const void *hn_row(const ann_hnsw *h, uint32_t id)
{
	return h->vec + (size_t)id * h->row;
}

static inline uint32_t *hn_links(const ann_hnsw *h, uint32_t id, int lc)
{
	if (lc == 0)
		return h->link0 + (size_t)id * (1 + h->M0);
	return h->upper + h->uoff[id] + (size_t)(lc - 1) * (1 + h->M);
}

/* Distance of a float query to node id. */
static inline float hn_dist(const ann_hnsw *h, const float *q, uint32_t id)
{
	if (h->u8)
		return h->kern->l2_f32_u8(q, hn_row(h, id), h->d);
	const float *v = hn_row(h, id);
	if (h->metric == ANN_METRIC_L2)
		return h->kern->l2_f32(q, v, h->d);
	float ip = h->kern->ip_f32(q, v, h->d);
	return h->metric == ANN_METRIC_IP ? -ip : 1.0f - ip;
}

/* Distance between nodes a and b (exact integer arithmetic in u8 storage). */
static inline float hn_dist_nodes(const ann_hnsw *h, uint32_t a, uint32_t b)
{
	if (h->u8)
		return h->kern->l2_u8(hn_row(h, a), hn_row(h, b), h->d);
	return hn_dist(h, hn_row(h, a), b);
}

/* Node id as a float query: its row, or in u8 storage a copy in c->q. */
static inline const float *hn_query_of(const ann_hnsw *h, ann_hnsw_ctx *c, uint32_t id)
{
	if (!h->u8)
		return hn_row(h, id);
	const uint8_t *v = hn_row(h, id);
	for (size_t j = 0; j < h->d; j++)
		c->q[j] = v[j];
	return c->q;
}
/* Sizes c for a search of h with candidate list ef. */
int hn_ctx_prepare(const ann_hnsw *h, ann_hnsw_ctx *c, size_t ef, ann_error *err);
/* Greedy descent at level lc from *ep (distance *epd). */
void hn_greedy(const ann_hnsw *h, ann_hnsw_ctx *c, const float *q, uint32_t *ep, float *epd, int lc);
/* Beam search at level lc from ep: leaves the best ef in the max-heap c->res.
 * Returns ANN_E_NOMEM if the candidate heap cannot grow. */
int hn_search_layer(const ann_hnsw *h, ann_hnsw_ctx *c, const float *q, uint32_t ep, float epd, size_t ef, int lc);
/* Drains c->res into c->sorted ascending; returns the count. */
size_t hn_drain(ann_hnsw_ctx *c);
/* The checks of ann_hnsw_create's parameters. */
int hn_check_params(size_t d, ann_metric metric, uint32_t M, uint32_t efc, ann_error *err);
/* An empty graph (u8: uint8 rows, metric L2 only). */
int hn_create(size_t d, ann_metric metric, bool u8, uint32_t M, uint32_t ef_construction, uint64_t seed,
	      ann_hnsw **out, ann_error *err);
/* Grows the per-node arrays to cap slots. */
int hn_set_cap(ann_hnsw *h, size_t cap, ann_error *err);
/* Reserves upper-list words for `words` more. */
int hn_upper_reserve(ann_hnsw *h, size_t words, ann_error *err);

#endif
