/* SPDX-License-Identifier: MIT */
/*
 * search_int.h: the searcher's state, shared by search.c (route, group,
 * round 1 reads, format 1 blocks, deltas, cache, merge) and search_codes.c
 * (codes blocks: round 1 estimates from the head, round 2 exact pages and
 * re-ranking). Internal to src/index; the public face is annann.h.
 */
#ifndef ANN_SEARCH_INT_H
#define ANN_SEARCH_INT_H

#include "distance.h"
#include "index.h"
#include "probe.h"

/* A cache entry in one allocation: a decoded format 1 block (ids then
 * vectors), or the head of a codes block as read (head_len > 0) with a slot
 * per exact page: the pages round 2 has read, each its own allocation of
 * CACHE_PAGE_BYTES counted in `bytes`, evicted with the entry. */
typedef struct cblock {
	uint32_t pid;
	uint32_t generation;
	uint32_t count;
	uint32_t head_len;
	size_t bytes;
	int64_t *ids;
	void *vecs;
	uint8_t *head;
	uint32_t npages;            /* exact pages of a codes block */
	uint8_t **pages;            /* npages slots, NULL where not cached */
	struct cblock *prev, *next; /* LRU list, most recent at head */
} cblock;

/* What one cached exact page counts against the cache budget. */
#define CACHE_PAGE_BYTES (CBLOCK_PAGE + 64u)

typedef struct pair {
	uint32_t pid;
	uint32_t q;
	uint32_t rank; /* of the partition in the query's routing order */
} pair;

/* A candidate of a codes block for one query. */
typedef struct cand {
	float est, width;
	int64_t id;
	uint32_t u, row;   /* unique partition of the batch, row of its block */
} cand;

/* A round 2 entry: one (query, row) to re-rank; sorted by (u, row, q). */
typedef struct r2ent {
	uint32_t u, row, q, run;
	uint32_t rank;     /* of its estimate among the query's selected candidates */
	float lower;       /* estimate - width */
	int64_t id;
} r2ent;

/* What round 2 needs of a codes block's head (the head's buffer is released
 * after round 1): its layout and page sums (copied to the batch arena). */
typedef struct uhead {
	ann_cblock_info in;
	size_t sums_at;    /* offset in s->sums */
	size_t p0_at;      /* offset in s->p0 of the block's exact page 0 (p0 != 0) */
	uint8_t p0;        /* 2.3 page 0 from round 1's read: 0 not kept, 1 kept (sum unchecked), 2 sum checked */
	bool codes;        /* a codes block was read for this partition */
	uint32_t held;     /* the first of its pages read early (1 + an index of s->hrefs), 0 none */
} uhead;

/* One exact page read early (codes_early_reads): page `page` of the
 * partition's exact section at s->held + at, checked; next is the
 * partition's next one (1 + an index, 0 none). */
typedef struct held_ref {
	uint32_t page, next;
	size_t at;
} held_ref;

/* The bound on a batch's early pages (s->held). */
#define SEARCH_EARLY_BYTES ((size_t)16 << 20)

/* The tag bit of an early page read among round 1's head reads. */
#define SEARCH_EARLY_TAG (UINT64_C(1) << 63)

struct ann_searcher {
	ann_index *idx;
	ann_search_opts o;
	const ann_kernels *kern;
	ann_cat_txn *rt;      /* catalog snapshot, renewed per batch, reset after */
	ann_store_reader *rd; /* every block read, inside rt */
	ann_block_dec *dec;
	uint64_t ntomb;       /* tombstones in the batch's snapshot */
	/* deltas of one partition */
	int64_t *dids;
	uint8_t *dvecs;
	size_t dcap, dn, dbytes;
	uint32_t dpid;
	/* requests of a batch */
	ann_block_range *reqs;
	size_t reqs_cap;
	/* codes blocks */
	ann_rbq_query *rq;
	float *est, *width;   /* one block's estimates */
	size_t est_cap;
	int64_t *hids;        /* one head's ids */
	size_t hids_cap;
	float *fac;           /* one head's factors: count |r|, f_ip, tan (2.1 f16 heads) */
	size_t fac_cap;
	float *centre;        /* dim */
	/* A batch's rotations (ann_rbq_query_prepare_rotated): a partition that
	 * several queries share rotates its centre once, each query itself once.
	 * cap_q * padded dim floats, as the queries themselves. */
	float *crot;          /* padded dim: the rotated centre of one head */
	float *qrot;          /* cap_q * padded dim: rotated queries */
	uint8_t *qrot_ok;     /* cap_q: qrot of the query is made */
	float *rowf;          /* dim: a stored row as floats (round 2) */
	uint8_t *rowcat;      /* a row spanning cached pages, put together */
	uint32_t *covp;       /* round 2: cached pages of one partition's wanted rows */
	size_t covp_cap;
	uhead *uh;            /* per unique partition of the batch */
	size_t uh_cap;
	uint8_t *sums;        /* page sums of the batch's heads */
	size_t sums_len, sums_cap;
	/* Exact page 0 of the batch's 2.3 blocks (CBLOCK_FLAG_HEAD_PAGE) as round 1
	 * read it with the head, for round 2, kept only for a block with a
	 * candidate on it: at most 4 KiB per unique partition of the batch
	 * (batch queries x nprobe, and the index's partitions, bound those). */
	uint8_t *p0;
	size_t p0_len, p0_cap;
	uint32_t rerank;
	cand *cands;          /* cap_q * rerank: per query a max-heap on est */
	uint32_t *ncand;
	float *ub;            /* cap_q * k: per query a max-heap of upper bounds */
	int64_t *ubid;
	uint32_t *nub;
	r2ent *ents;          /* round 2 */
	size_t ents_cap;
	r2ent *ents2;         /* round 2: sort_ents's other half, then swapped with ents */
	size_t ents2_cap;
	size_t *ubase;        /* sort_ents: each unique partition's first key */
	size_t ubase_cap;
	uint32_t *kcnt;       /* sort_ents: entries per (partition, row) key, then their places */
	size_t kcnt_cap;
	uint8_t *flags;       /* round 2: want, done per entry */
	size_t flags_cap;
	size_t *runlo;        /* round 2: an entry of each read */
	size_t runlo_cap;
	double *qb1, *qb2, *qio1, *qio2;
	uint64_t *qest, *qrr;
	ann_router_ctx *rctx;
	/* learned adaptive probing (probe.h): the index's model, or NULL */
	const ann_probe_model *pm;
	uint32_t npmax;       /* partitions kept per query: nprobe, 2 nprobe with the model */
	uint32_t pwidth;      /* partitions routed per query (a row of parts): npmax, more for the spread order */
	/* spread-aware probe order (docs/DESIGN.md): weight 0 = off */
	float spread_w, spread_mean; /* the weight; the mean spread, for partitions the directory has none of */
	float dir_w;                 /* the directional discount's weight (dirs.h); 0 = off */
	float *dtab;                 /* a query's table for the discount (ann_dirs_query_table) */
	float *rdist;         /* cap_q * pwidth: squared centroid distances of a batch route */
	uint64_t *sbuf;             /* pwidth: one query's partitions by score (search.c scored_key) */
	bool stage_a;         /* round 1 of the model's first P1 partitions: centre distances kept */
	/* A batch's stage A heads, kept (up to SEARCH_KEEP_BYTES) for its stage
	 * B: a partition one query read in stage A and another needs in stage B
	 * is not read again. */
	uint8_t *keep;        /* the heads' bytes as read */
	size_t keep_len, keep_cap;
	struct search_kept *kept; /* one per kept head, sorted by partition before stage B */
	size_t nkept, kept_cap;
	bool keep_off;        /* ANNANN_KEEP_HEADS=0: a hidden switch, for measuring and tests */
	/* Early re-rank pages (docs/DESIGN.md "Read waves"): while stage B's
	 * heads are read, the pages of each query's k best stage A estimates are
	 * read too and held here for round 2: at most 2 k pages per query of the
	 * batch (a row spans at most 2 pages; k rows), and none when that could
	 * pass SEARCH_EARLY_BYTES. */
	uint8_t *held;
	size_t held_len, held_cap;
	held_ref *hrefs;
	size_t nheld, hrefs_cap;
	cand *ecand;          /* rerank: a copy of one query's candidate heap */
	size_t ecand_cap;
	size_t nearly;        /* entries of the early pages (in s->ents until round 2) */
	uint32_t waves;       /* the batch's read waves so far (ann_query_stats.read_waves) */
	bool early_off;       /* ANNANN_EARLY_PAGES=0: a hidden switch, for measuring and tests */
	float *pf;            /* cap_q * pm->p1: squared centre distances by routing rank (stage A) */
	double *feat_out;     /* tune.c: each query's features (ANN_PROBE_FEATURES) go here, and stage B is skipped */
	size_t vec_esize;     /* bytes per decoded element */
	ann_dtype vec_type;
	/* batch scratch, grown to the largest batch seen */
	size_t cap_q;
	uint32_t *parts;      /* cap_q * pwidth */
	uint32_t *nparts;     /* cap_q */
	pair *pairs;          /* cap_q * nprobe */
	pair *ptmp;           /* group_pairs' counting sort: as many pairs, and a count per partition id */
	uint32_t *pcount;
	size_t ptmp_cap, pcount_cap;
	uint32_t *upids;      /* unique partitions of the batch */
	uint32_t *ustart;     /* start of each unique partition's pairs */
	float *qnorm;         /* cap_q * dim: queries (normalised for cosine) */
	ann_topk *heaps;      /* cap_q */
	double *qbytes, *qreqs, *qdec; /* per-query attributions */
	uint64_t *qscan, *qcand;
	float *dist;          /* distances of one block's rows */
	size_t dist_cap;
	float *conv;          /* i8 blocks converted to float */
	size_t conv_cap;
	/* cache */
	cblock **cmap;        /* dir.n entries */
	cblock *chead, *ctail;
	size_t cbytes;
};

/* Grows *p to hold need elements of esz bytes (doubling); ANN_E_NOMEM. */
int search_grow(void **p, size_t *cap, size_t need, size_t esz);
/* Resizes each array *slots[i] to bytes[i] with ann_realloc: ANN_E_NOMEM
 * when any failed (each failed array keeps its old size, the others grow). */
int search_resize(void **const slots[], const size_t bytes[], size_t n);
/* Is id deleted in the batch's snapshot (its block copies are dead)? */
int search_tombed(ann_searcher *s, int64_t id, ann_error *err);
/* Is id already in heap h (replicated indexes push each id once)? */
bool search_heap_has(const ann_topk *h, int64_t id);
/* Caches a codes block's head as read (checked by codes_head first), with
 * room for its exact_pages pages. */
void search_cache_put_head(ann_searcher *s, uint32_t pid, uint32_t gen, const uint8_t *head, uint32_t len,
			   uint32_t exact_pages);
/* Exact page `page` (0 = the first of the exact section) of partition pid
 * when the cache holds it (checked when it was read), else NULL. */
const uint8_t *search_cache_page(const ann_searcher *s, uint32_t pid, uint32_t page);
/* Caches n checked exact pages from page0 of partition pid, whose head the
 * cache holds; evicts other entries for room, never the partition's own. */
void search_cache_put_pages(ann_searcher *s, uint32_t pid, uint32_t page0, const uint8_t *data, uint32_t n);

/* ---- search_codes.c ---- */
/* Codes state of a new searcher (idx->rbq set): query codes, centre buffer. */
int codes_searcher_init(ann_searcher *s, ann_error *err);
void codes_searcher_free(ann_searcher *s);
/* Per-query codes arrays for a batch of n queries (no-op without codes). */
int codes_batch(ann_searcher *s, size_t n, ann_error *err);
/* Round 1 of a codes block: checks the head against the directory and the
 * index, keeps its layout and page sums for round 2, and estimates every row
 * for every query of unique partition u (cached: the head came from the cache). */
int codes_head(ann_searcher *s, size_t u, const ann_block_read *br, bool cached, uint64_t *est_ns, ann_error *err);
/* What learned adaptive probing reads of query qi after its first stage:
 * the k-th smallest upper bound (INFINITY below k) and the best estimate. */
void codes_probe_state(const ann_searcher *s, size_t qi, float *ub_k, float *best);
/* The reads of the exact pages of each query's k best estimates so far
 * (those not in memory), for stage B's wave: into s->reqs from base on,
 * tagged SEARCH_EARLY_TAG; *nreads is their count. */
int codes_early_reads(ann_searcher *s, size_t nq, size_t base, size_t *nreads, ann_error *err);
/* An early page read's completion: checks its pages and holds them. */
int codes_early_take(ann_searcher *s, const ann_block_read *br, ann_error *err);
/* Round 2 for the batch's nq queries (after every head of round 1). */
int codes_round2(ann_searcher *s, size_t nq, uint64_t *wait_ns, uint64_t *rerank_ns, ann_error *err);

#endif
