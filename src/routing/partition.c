/* SPDX-License-Identifier: MIT */
/*
 * partition.c: METIS k-way partitioning of a CSR graph, cut/balance
 * evaluation, neighbour shares, and the capacity-constrained assignment
 * (auction with eps-scaling). See partition.h for the contracts; the
 * auction's model, invariant and bound are written above it below.
 */
#include "partition.h"

#include <inttypes.h>
#include <math.h>
#include <metis.h>
#include <stdlib.h>

#include "heap.h"

#if IDXTYPEWIDTH != 32
#error "partition.c passes int32_t arrays to METIS: it needs IDXTYPEWIDTH 32"
#endif
_Static_assert(sizeof(idx_t) == sizeof(int32_t), "METIS idx_t must be 32-bit");

/* ---- graph checks and evaluation ----------------------------------------- */

/* Structural checks METIS would otherwise crash on: offsets, ranges, self
 * loops and weights. Symmetry is the caller's contract (O(nnz log) to check;
 * the tests do). */
static int graph_check(const ann_graph *g, ann_error *err)
{
	if (!g || (g->n > 0 && !g->xadj))
		return ann_err(err, ANN_E_INVAL, "graph: NULL graph");
	if (g->n > (size_t)INT32_MAX || g->nnz > (size_t)INT32_MAX)
		return ann_err(err, ANN_E_INVAL, "graph: %zu vertices / %zu entries exceed idx_t",
			       g->n, g->nnz);
	if (g->n == 0)
		return ANN_OK;
	if (g->xadj[0] != 0 || (size_t)g->xadj[g->n] != g->nnz)
		return ann_err(err, ANN_E_INVAL, "graph: xadj[0] = %" PRId32 ", xadj[n] = %" PRId32
			       ", expected 0 and nnz %zu", g->xadj[0], g->xadj[g->n], g->nnz);
	if (g->nnz > 0 && (!g->adjncy || !g->adjwgt))
		return ann_err(err, ANN_E_INVAL, "graph: NULL adjacency");
	for (size_t v = 0; v < g->n; v++) {
		if (g->xadj[v + 1] < g->xadj[v])
			return ann_err(err, ANN_E_INVAL, "graph: vertex %zu: xadj decreases", v);
		for (int32_t e = g->xadj[v]; e < g->xadj[v + 1]; e++) {
			int32_t u = g->adjncy[e];
			if (u < 0 || (size_t)u >= g->n || (size_t)u == v)
				return ann_err(err, ANN_E_INVAL, "graph: vertex %zu: neighbour %" PRId32
					       " is out of range or a self loop", v, u);
			if (g->adjwgt[e] <= 0)
				return ann_err(err, ANN_E_INVAL, "graph: vertex %zu: edge to %" PRId32
					       " has weight %" PRId32 ", expected > 0", v, u, g->adjwgt[e]);
		}
	}
	return ANN_OK;
}

static int labels_check(const uint32_t *labels, size_t n, size_t m, ann_error *err)
{
	if (n > 0 && !labels)
		return ann_err(err, ANN_E_INVAL, "labels are NULL");
	for (size_t i = 0; i < n; i++)
		if (labels[i] >= m)
			return ann_err(err, ANN_E_INVAL, "label of vertex %zu is %" PRIu32 ", expected < %zu",
				       i, labels[i], m);
	return ANN_OK;
}

int ann_partition_eval(const ann_graph *g, const uint32_t *labels, size_t m, ann_partition_stats *st,
		       ann_error *err)
{
	if (m == 0)
		return ann_err(err, ANN_E_INVAL, "partition: m must be >= 1");
	ANN_TRY(graph_check(g, err));
	ANN_TRY(labels_check(labels, g->n, m, err));
	size_t *size = ann_calloc(m, sizeof *size);
	if (!size)
		return ann_err(err, ANN_E_NOMEM, "partition: cannot count %zu parts", m);
	uint64_t cut = 0, total = 0;
	for (size_t v = 0; v < g->n; v++) {
		size[labels[v]]++;
		for (int32_t e = g->xadj[v]; e < g->xadj[v + 1]; e++) {
			size_t u = (size_t)g->adjncy[e];
			if (u < v)
				continue; /* each undirected edge once, from its smaller end */
			total += (uint64_t)g->adjwgt[e];
			if (labels[u] != labels[v])
				cut += (uint64_t)g->adjwgt[e];
		}
	}
	ann_partition_stats s;
	memset(&s, 0, sizeof s);
	s.n = g->n;
	s.m = m;
	s.cut = cut;
	s.total_weight = total;
	s.cut_frac = total ? (double)cut / (double)total : 0.0;
	s.min_part = SIZE_MAX;
	for (size_t j = 0; j < m; j++) {
		s.max_part = ANN_MAX(s.max_part, size[j]);
		s.min_part = ANN_MIN(s.min_part, size[j]);
		s.empty_parts += size[j] == 0;
	}
	s.balance = g->n ? (double)s.max_part * (double)m / (double)g->n : 1.0;
	ann_free(size);
	if (st)
		*st = s;
	return ANN_OK;
}

/* Accumulates p's edge weight per part into acc (indexed by part, zero on
 * entry and on return) and lists the parts touched in touched[]; returns
 * their count and the total weight. */
static size_t share_row(const ann_graph *g, const uint32_t *labels, size_t p, double *acc, uint32_t *touched,
			double *total)
{
	size_t nt = 0;
	double tw = 0.0;
	for (int32_t e = g->xadj[p]; e < g->xadj[p + 1]; e++) {
		uint32_t j = labels[g->adjncy[e]];
		double w = (double)g->adjwgt[e];
		if (acc[j] == 0.0)
			touched[nt++] = j;
		acc[j] += w;
		tw += w;
	}
	*total = tw;
	return nt;
}

/* ---- hard balance after METIS -----------------------------------------------
 * METIS treats the imbalance as a target and overshoots it on strongly
 * clustered graphs (many small near-components). The repair moves vertices
 * out of parts above cap, cheapest first: a vertex's loss is its edge weight
 * to its own part minus that to the best part below cap among its
 * neighbours' parts (or, if none, the smallest part). Every vertex of an
 * overfull part is a candidate and each can always move (m cap >= n), so
 * one pass in ascending loss order reaches the cap. Losses are computed
 * before the pass and targets re-chosen at move time. O(nnz + c log c + moves
 * x m) for c candidates. */

typedef struct rb_cand {
	double loss;
	uint32_t v;
} rb_cand;

static int rb_cmp(const void *x, const void *y)
{
	const rb_cand *a = x, *b = y;
	if (a->loss != b->loss)
		return a->loss < b->loss ? -1 : 1;
	return (a->v > b->v) - (a->v < b->v);
}

/* Best part below cap among v's neighbours' parts, by edge weight to it,
 * or (when any is set) the smallest part if none; *w_own and *w_to get the
 * weights. */
static uint32_t rb_target(const ann_graph *g, const uint32_t *lab, const size_t *size, size_t m, size_t cap,
			  size_t v, bool any, double *acc, uint32_t *touched, double *w_own, double *w_to)
{
	double tw;
	size_t nt = share_row(g, lab, v, acc, touched, &tw);
	uint32_t own = lab[v], best = UINT32_MAX;
	double bw = -1.0;
	for (size_t t = 0; t < nt; t++) {
		uint32_t j = touched[t];
		if (j != own && size[j] < cap && (acc[j] > bw || (acc[j] == bw && j < best))) {
			bw = acc[j];
			best = j;
		}
	}
	*w_own = acc[own];
	for (size_t t = 0; t < nt; t++)
		acc[touched[t]] = 0.0;
	if (best == UINT32_MAX) {
		bw = 0.0;
		for (size_t j = 0; any && j < m; j++)
			if (j != own && (best == UINT32_MAX || size[j] < size[best]))
				best = (uint32_t)j;
	}
	*w_to = bw;
	return best;
}

static int rebalance(const ann_graph *g, uint32_t *lab, size_t m, size_t cap, size_t *moved, ann_error *err)
{
	size_t n = g->n, nc = 0;
	*moved = 0;
	size_t *size = ann_calloc(m, sizeof *size);
	if (!size)
		return ann_err(err, ANN_E_NOMEM, "partition: cannot count %zu parts", m);
	bool over = false;
	for (size_t v = 0; v < n; v++)
		over |= ++size[lab[v]] > cap;
	if (!over) {
		ann_free(size);
		return ANN_OK;
	}
	for (size_t v = 0; v < n; v++)
		nc += size[lab[v]] > cap;
	double *acc = ann_calloc(m, sizeof *acc);
	uint32_t *touched = ann_malloc(m * sizeof *touched);
	rb_cand *cand = ann_malloc(nc * sizeof *cand);
	if (!acc || !touched || !cand) {
		ann_free(size);
		ann_free(acc);
		ann_free(touched);
		ann_free(cand);
		return ann_err(err, ANN_E_NOMEM, "partition: cannot allocate the rebalancing of %zu vertices",
			       nc);
	}
	nc = 0;
	for (size_t v = 0; v < n; v++) {
		if (size[lab[v]] <= cap)
			continue;
		double wo, wt;
		rb_target(g, lab, size, m, cap, v, false, acc, touched, &wo, &wt);
		cand[nc++] = (rb_cand){wo - wt, (uint32_t)v};
	}
	qsort(cand, nc, sizeof *cand, rb_cmp);
	for (size_t c = 0; c < nc; c++) {
		uint32_t v = cand[c].v;
		if (size[lab[v]] <= cap)
			continue;
		double wo, wt;
		uint32_t t = rb_target(g, lab, size, m, cap, v, true, acc, touched, &wo, &wt);
		size[lab[v]]--;
		size[t]++;
		lab[v] = t;
		(*moved)++;
	}
	ann_free(size);
	ann_free(acc);
	ann_free(touched);
	ann_free(cand);
	return ANN_OK;
}

/* ---- METIS ---------------------------------------------------------------- */

int ann_partition_graph(const ann_graph *g, size_t m, double imbalance, uint64_t seed, uint32_t *parts,
			ann_partition_stats *st, ann_error *err)
{
	ANN_TRY(graph_check(g, err));
	size_t n = g->n;
	if (m == 0 || m > n)
		return ann_err(err, ANN_E_INVAL,
			       "partition: %zu parts for %zu vertices, expected 1 <= m <= n", m, n);
	if (imbalance == 0.0)
		imbalance = ANN_PARTITION_DEFAULT_IMBALANCE;
	if (!(imbalance >= 0.001 && imbalance <= 1.0))
		return ann_err(err, ANN_E_INVAL, "partition: imbalance %g, expected 0.001 .. 1", imbalance);
	if (!parts)
		return ann_err(err, ANN_E_INVAL, "partition: parts is NULL");

	uint64_t t0 = ann_now_ns();
	if (m == 1) {
		memset(parts, 0, n * sizeof *parts);
	} else if (g->nnz == 0 || m == n) {
		/* nothing to cut (or nothing to choose): round robin is balanced */
		for (size_t v = 0; v < n; v++)
			parts[v] = (uint32_t)(v % m);
	} else {
		idx_t nv = (idx_t)n, ncon = 1, np = (idx_t)m, objval = 0;
		idx_t opt[METIS_NOPTIONS];
		METIS_SetDefaultOptions(opt);
		opt[METIS_OPTION_OBJTYPE] = METIS_OBJTYPE_CUT;
		/* METIS: "maximum allowed load imbalance ... (1 + x) / 1000" */
		opt[METIS_OPTION_UFACTOR] = (idx_t)lround(imbalance * 1000.0);
		opt[METIS_OPTION_SEED] = (idx_t)(seed & 0x7fffffff);
		opt[METIS_OPTION_CONTIG] = 0;
		opt[METIS_OPTION_NUMBERING] = 0;
		/* METIS does not write the graph arrays; its prototypes are
		 * not const. int32_t and uint32_t may alias. */
		idx_t *xadj = (idx_t *)g->xadj, *adj = (idx_t *)g->adjncy, *wgt = (idx_t *)g->adjwgt;
		int mrc;
		if (m == 2)
			mrc = METIS_PartGraphRecursive(&nv, &ncon, xadj, adj, NULL, NULL, wgt, &np, NULL,
						       NULL, opt, &objval, (idx_t *)parts);
		else
			mrc = METIS_PartGraphKway(&nv, &ncon, xadj, adj, NULL, NULL, wgt, &np, NULL, NULL,
						  opt, &objval, (idx_t *)parts);
		if (mrc != METIS_OK) {
			const char *what = mrc == METIS_ERROR_INPUT    ? "input error"
					   : mrc == METIS_ERROR_MEMORY ? "out of memory"
								       : "internal error";
			return ann_err(err, mrc == METIS_ERROR_MEMORY ? ANN_E_NOMEM
				       : mrc == METIS_ERROR_INPUT ? ANN_E_INVAL : ANN_E_UNSUPPORTED,
				       "partition: METIS_PartGraph%s(n %zu, nnz %zu, m %zu) failed: %s (%d)",
				       m == 2 ? "Recursive" : "Kway", n, g->nnz, m, what, mrc);
		}
	}
	double secs = (double)(ann_now_ns() - t0) * 1e-9;
	size_t cap = ANN_MAX((n + m - 1) / m, (size_t)floor((1.0 + imbalance) * (double)n / (double)m));
	size_t moved = 0;
	ANN_TRY(rebalance(g, parts, m, cap, &moved, err));
	if (st) {
		ANN_TRY(ann_partition_eval(g, parts, m, st, err));
		st->seconds = secs;
		st->moved = moved;
	}
	return ANN_OK;
}

/* ---- neighbour shares ----------------------------------------------------- */

static int share_setup(const ann_graph *g, const uint32_t *labels, size_t m, double **acc, uint32_t **touched,
		       ann_error *err)
{
	if (m == 0)
		return ann_err(err, ANN_E_INVAL, "nshare: m must be >= 1");
	ANN_TRY(graph_check(g, err));
	ANN_TRY(labels_check(labels, g->n, m, err));
	*acc = ann_calloc(m, sizeof **acc);
	*touched = ann_malloc(m * sizeof **touched);
	if (!*acc || !*touched) {
		ann_free(*acc);
		ann_free(*touched);
		return ann_err(err, ANN_E_NOMEM, "nshare: cannot allocate scratch for %zu parts", m);
	}
	return ANN_OK;
}

static void sort_u32(uint32_t *a, size_t n)
{
	for (size_t i = 1; i < n; i++) {
		uint32_t v = a[i];
		size_t p = i;
		while (p > 0 && a[p - 1] > v) {
			a[p] = a[p - 1];
			p--;
		}
		a[p] = v;
	}
}

int ann_nshare_compute(const ann_graph *g, const uint32_t *labels, size_t m, ann_nshare *out, ann_error *err)
{
	double *acc = NULL;
	uint32_t *touched = NULL;
	memset(out, 0, sizeof *out);
	ANN_TRY(share_setup(g, labels, m, &acc, &touched, err));
	size_t n = g->n;
	out->off = ann_malloc((n + 1) * sizeof *out->off);
	/* entries <= edges; shrunk below */
	out->part = ann_malloc((g->nnz ? g->nnz : 1) * sizeof *out->part);
	out->share = ann_malloc((g->nnz ? g->nnz : 1) * sizeof *out->share);
	if (!out->off || !out->part || !out->share) {
		ann_free(acc);
		ann_free(touched);
		ann_nshare_free(out);
		return ann_err(err, ANN_E_NOMEM, "nshare: cannot allocate shares of %zu vertices", n);
	}
	size_t w = 0;
	out->off[0] = 0;
	for (size_t p = 0; p < n; p++) {
		double tw;
		size_t nt = share_row(g, labels, p, acc, touched, &tw);
		sort_u32(touched, nt);
		for (size_t t = 0; t < nt; t++) {
			uint32_t j = touched[t];
			out->part[w] = j;
			out->share[w] = (float)(acc[j] / tw);
			acc[j] = 0.0;
			w++;
		}
		out->off[p + 1] = (uint32_t)w;
	}
	out->n = n;
	out->nnz = w;
	uint32_t *np = ann_realloc(out->part, (w ? w : 1) * sizeof *np);
	if (np)
		out->part = np;
	float *ns = ann_realloc(out->share, (w ? w : 1) * sizeof *ns);
	if (ns)
		out->share = ns;
	ann_free(acc);
	ann_free(touched);
	return ANN_OK;
}

void ann_nshare_free(ann_nshare *s)
{
	if (!s)
		return;
	ann_free(s->off);
	ann_free(s->part);
	ann_free(s->share);
	memset(s, 0, sizeof *s);
}

int ann_nshare_add(const ann_graph *g, const uint32_t *labels, size_t m, float lambda, float *score,
		   ann_error *err)
{
	double *acc = NULL;
	uint32_t *touched = NULL;
	if (!score && g && g->n > 0)
		return ann_err(err, ANN_E_INVAL, "nshare: score is NULL");
	ANN_TRY(share_setup(g, labels, m, &acc, &touched, err));
	for (size_t p = 0; p < g->n; p++) {
		double tw;
		size_t nt = share_row(g, labels, p, acc, touched, &tw);
		float *row = score + p * m;
		for (size_t t = 0; t < nt; t++) {
			uint32_t j = touched[t];
			row[j] += (float)((double)lambda * acc[j] / tw);
			acc[j] = 0.0;
		}
	}
	ann_free(acc);
	ann_free(touched);
	return ANN_OK;
}

/* ---- balanced assignment: auction ------------------------------------------
 * Model. Part j has C = min(capacity, n) interchangeable slots. The problem
 * is made symmetric by D = m C - n dummy points worth 0 in every part
 * (dummies fill the slots no real point takes; the optimum is unchanged).
 * Dummies are indistinguishable, so they live as blocks {price, count} in
 * the heaps and as a count of unassigned ones; only real points have ids.
 * A slot is untouched (at the phase's start price of its part) or held at
 * the price its holder paid. P_j, the entry price of j, is its cheapest
 * slot: an untouched one if any (held slots cost more), else the heap top.
 *
 * Invariant (part-level eps-complementary slackness, Bertsekas & Castanon's
 * auction for similar objects): every holder h of a slot of j that paid p
 * satisfies v_hj - p >= max_{k != j} (v_hk - P_k) - eps, v = score (0 for a
 * dummy). A bid keeps it for the bidder (it pays v_j1 - w2 + eps, where w2
 * is its best value over the other parts) and for everyone else, since bids
 * only raise prices. A phase ends when all m C slots are held.
 *
 * Bound. With every part full, summing the invariant over the n + D holders
 * gives sum_i score_i >= sum_i max_k (a_ik - P_k) - D min_k P_k + C sum_k P_k
 * - (n + D) eps, and the right side plus (n + D) eps is the LP dual of the
 * symmetric problem at prices P, an upper bound on the optimum (weak
 * duality). So the result is within (n + D) eps_final of optimal;
 * ann_balanced_assign reports that dual value.
 *
 * eps-scaling: each phase unassigns everyone and restarts from the previous
 * phase's entry prices with eps divided by 8, which is valid for symmetric
 * problems and keeps bids per point per phase near 1.
 */

#define AS_DUMMY UINT32_MAX

typedef struct as_slot {
	double p;     /* price paid */
	uint32_t who; /* real holder, or AS_DUMMY */
	uint32_t cnt; /* slots in this entry: 1 for a real holder, >= 1 dummies */
} as_slot;

typedef struct as_heap {
	as_slot *h;
	uint32_t len, cap;
} as_heap;

typedef struct auction {
	const float *a;
	size_t n, m, C;
	size_t D;        /* dummies */
	double eps;
	as_heap *ph;     /* m min-heaps of held slots */
	double *start;   /* m: price of the part's untouched slots */
	uint32_t *nfree; /* m: untouched slots */
	double *entry;   /* m: entry price P_j */
	uint32_t *label; /* n: part of each real point */
	uint32_t *pos;   /* n: index in its part's heap */
	uint32_t *queue; /* n: unassigned real points (ring) */
	size_t qhead, qlen;
	size_t udummy;   /* unassigned dummies */
	uint64_t bids;
} auction;

static void heap_set(auction *A, as_heap *hp, uint32_t idx, as_slot s)
{
	hp->h[idx] = s;
	if (s.who != AS_DUMMY)
		A->pos[s.who] = idx;
}

/* A part's min-heap on price; every move records the holder's slot (pos). */
typedef struct as_ref {
	auction *A;
	as_heap *hp;
} as_ref;
#define AS_AT(r, i) ((r).hp->h[i])
#define AS_SET(r, i, s) heap_set((r).A, (r).hp, (uint32_t)(i), s)
#define AS_ABOVE(a, b) ((a).p < (b).p)
ANN_HEAP_DEFINE(as_heap, as_ref, as_slot, AS_AT, AS_SET, AS_ABOVE)

static void heap_up(auction *A, as_heap *hp, uint32_t idx)
{
	as_heap_up((as_ref){A, hp}, idx, hp->h[idx]);
}

static void heap_down(auction *A, as_heap *hp, uint32_t idx)
{
	as_heap_down((as_ref){A, hp}, hp->len, idx, hp->h[idx]);
}

/* Entries of a heap never exceed C (one per held slot at most). */
static int heap_push(auction *A, as_heap *hp, as_slot s)
{
	if (hp->len == hp->cap) {
		size_t nc = hp->cap ? (size_t)hp->cap * 2 : 16;
		nc = ANN_MIN(nc, A->C);
		as_slot *nh = ann_realloc(hp->h, nc * sizeof *nh);
		if (!nh)
			return ANN_E_NOMEM;
		hp->h = nh;
		hp->cap = (uint32_t)nc;
	}
	hp->h[hp->len++] = s;
	heap_up(A, hp, hp->len - 1);
	return ANN_OK;
}

static void update_entry(auction *A, size_t j)
{
	A->entry[j] = A->nfree[j] ? A->start[j] : A->ph[j].h[0].p;
}

/* Puts one bidder (real point i, or a dummy when i == AS_DUMMY) into part
 * j's cheapest slot at price b, displacing that slot's holder if held. */
static int take_slot(auction *A, size_t j, double b, uint32_t i)
{
	as_heap *hp = &A->ph[j];
	as_slot s = {b, i, 1};
	if (A->nfree[j] > 0) {
		A->nfree[j]--;
		ANN_TRY(heap_push(A, hp, s));
	} else {
		as_slot *top = &hp->h[0];
		if (top->who != AS_DUMMY) {
			A->queue[(A->qhead + A->qlen++) % A->n] = top->who;
		} else {
			A->udummy++;
			if (top->cnt > 1) {
				top->cnt--;
				ANN_TRY(heap_push(A, hp, s));
				goto placed;
			}
		}
		heap_set(A, hp, 0, s);
		heap_down(A, hp, 0);
	}
placed:
	if (i == AS_DUMMY)
		A->udummy--;
	else
		A->label[i] = (uint32_t)j;
	update_entry(A, j);
	A->bids++;
	return ANN_OK;
}

/* One bid by unassigned real point i. */
static int point_bid(auction *A, uint32_t i)
{
	const float *row = A->a + (size_t)i * A->m;
	const double *entry = A->entry;
	double w1 = -INFINITY, w2 = -INFINITY;
	size_t j1 = 0;
	for (size_t k = 0; k < A->m; k++) {
		double v = (double)row[k] - entry[k];
		if (v > w1) {
			w2 = w1;
			w1 = v;
			j1 = k;
		} else if (v > w2) {
			w2 = v;
		}
	}
	return take_slot(A, j1, (double)row[j1] - w2 + A->eps, i);
}

/* Bids of the unassigned dummies: they want the cheapest part, at the
 * second-cheapest price plus eps; all of them that fit into the cheapest
 * part's untouched slots bid at once as one block. */
static int dummy_bid(auction *A)
{
	double p1 = INFINITY, p2 = INFINITY;
	size_t j1 = 0;
	for (size_t k = 0; k < A->m; k++) {
		double p = A->entry[k];
		if (p < p1) {
			p2 = p1;
			p1 = p;
			j1 = k;
		} else if (p < p2) {
			p2 = p;
		}
	}
	double b = p2 + A->eps;
	if (A->nfree[j1] > 0) {
		size_t g = ANN_MIN(A->udummy, (size_t)A->nfree[j1]);
		A->nfree[j1] -= (uint32_t)g;
		A->udummy -= g;
		ANN_TRY(heap_push(A, &A->ph[j1], (as_slot){b, AS_DUMMY, (uint32_t)g}));
		update_entry(A, j1);
		A->bids++;
		return ANN_OK;
	}
	return take_slot(A, j1, b, AS_DUMMY);
}

static int forward_phase(auction *A)
{
	for (size_t j = 0; j < A->m; j++) {
		A->ph[j].len = 0;
		A->nfree[j] = (uint32_t)A->C;
		A->entry[j] = A->start[j];
	}
	for (size_t i = 0; i < A->n; i++)
		A->queue[i] = (uint32_t)i;
	A->qhead = 0;
	A->qlen = A->n;
	A->udummy = A->D;
	while (A->qlen > 0 || A->udummy > 0) {
		if (A->qlen > 0) {
			uint32_t i = A->queue[A->qhead];
			A->qhead = (A->qhead + 1) % A->n;
			A->qlen--;
			ANN_TRY(point_bid(A, i));
		} else {
			ANN_TRY(dummy_bid(A));
		}
	}
	return ANN_OK;
}

static int scores_check(const float *score, size_t n, size_t m, double *range, ann_error *err)
{
	double r = 0.0;
	for (size_t i = 0; i < n; i++) {
		const float *row = score + i * m;
		float lo = INFINITY, hi = -INFINITY;
		for (size_t j = 0; j < m; j++) {
			if (!isfinite(row[j]))
				return ann_err(err, ANN_E_INVAL,
					       "assign: score of point %zu, part %zu is not finite", i, j);
			lo = ANN_MIN(lo, row[j]);
			hi = ANN_MAX(hi, row[j]);
		}
		r = ANN_MAX(r, (double)hi - (double)lo);
	}
	*range = r;
	return ANN_OK;
}

static double total_score(const float *score, size_t n, size_t m, const uint32_t *labels)
{
	double s = 0.0;
	for (size_t i = 0; i < n; i++)
		s += (double)score[i * m + labels[i]];
	return s;
}

/* Runs the eps-scaling auction; fills labels and the dual and bid fields
 * of s. */
static int run_auction(const float *score, size_t n, size_t m, size_t C, double range, double efin,
		       uint32_t *labels, ann_assign_stats *s)
{
	auction A;
	memset(&A, 0, sizeof A);
	A.a = score;
	A.n = n;
	A.m = m;
	A.C = C;
	A.D = m * C - n;
	int rc = ANN_E_NOMEM;
	A.ph = ann_calloc(m, sizeof *A.ph);
	A.start = ann_calloc(m, sizeof *A.start);
	A.nfree = ann_malloc(m * sizeof *A.nfree);
	A.entry = ann_malloc(m * sizeof *A.entry);
	A.label = ann_malloc(n * sizeof *A.label);
	A.pos = ann_malloc(n * sizeof *A.pos);
	A.queue = ann_malloc(n * sizeof *A.queue);
	if (!A.ph || !A.start || !A.nfree || !A.entry || !A.label || !A.pos || !A.queue)
		goto fail;

	double eps = ANN_MAX(range / 4.0, efin);
	for (;;) {
		A.eps = eps;
		s->phases++;
		ANN_CHECK(rc, forward_phase(&A));
		if (eps <= efin)
			break;
		eps = ANN_MAX(eps / 8.0, efin);
		/* the next phase starts from this one's entry prices, shifted
		 * so the cheapest part costs 0 (only differences matter) */
		double lo = INFINITY;
		for (size_t j = 0; j < m; j++)
			lo = ANN_MIN(lo, A.entry[j]);
		for (size_t j = 0; j < m; j++)
			A.start[j] = A.entry[j] - lo;
	}

	/* the dual bound at the final entry prices (see the notes above) */
	double lo = INFINITY, psum = 0.0, dual = 0.0;
	for (size_t j = 0; j < m; j++) {
		lo = ANN_MIN(lo, A.entry[j]);
		psum += A.entry[j];
	}
	for (size_t i = 0; i < n; i++) {
		const float *row = score + i * m;
		double best = -INFINITY;
		for (size_t j = 0; j < m; j++)
			best = ANN_MAX(best, (double)row[j] - A.entry[j]);
		dual += best;
	}
	s->dual = dual - (double)A.D * lo + (double)C * psum;
	s->dummies = A.D;
	memcpy(labels, A.label, n * sizeof *labels);
	s->bids = A.bids;
	rc = ANN_OK;
fail:
	if (A.ph)
		for (size_t j = 0; j < m; j++)
			ann_free(A.ph[j].h);
	ann_free(A.ph);
	ann_free(A.start);
	ann_free(A.nfree);
	ann_free(A.entry);
	ann_free(A.label);
	ann_free(A.pos);
	ann_free(A.queue);
	return rc;
}

int ann_balanced_assign(const float *score, size_t n, size_t m, size_t capacity, double eps_final,
			uint32_t *labels, ann_assign_stats *st, ann_error *err)
{
	uint64_t t0 = ann_now_ns();
	ann_assign_stats s;
	memset(&s, 0, sizeof s);
	if (m == 0 || m > UINT32_MAX - 1)
		return ann_err(err, ANN_E_INVAL, "assign: %zu parts, expected 1 .. %u", m, UINT32_MAX - 1);
	if (n >= UINT32_MAX)
		return ann_err(err, ANN_E_INVAL, "assign: %zu points, at most %u", n, UINT32_MAX - 1);
	size_t nm;
	if (!ann_mul_ok(n, m, &nm))
		return ann_err(err, ANN_E_INVAL, "assign: n %zu x m %zu overflows", n, m);
	size_t slots;
	if (!ann_mul_ok(capacity, m, &slots))
		slots = SIZE_MAX;
	if (slots < n)
		return ann_err(err, ANN_E_INVAL, "assign: capacity %zu x %zu parts < %zu points",
			       capacity, m, n);
	if (n > 0 && (!score || !labels))
		return ann_err(err, ANN_E_INVAL, "assign: score and labels must not be NULL");
	if (!(eps_final <= 0.0 || isfinite(eps_final)))
		return ann_err(err, ANN_E_INVAL, "assign: eps_final %g is not finite", eps_final);
	double range = 0.0;
	ANN_TRY(scores_check(score, n, m, &range, err));
	size_t C = ANN_MIN(capacity, n);
	uint32_t *cnt = ann_calloc(m, sizeof *cnt);
	if (!cnt)
		return ann_err(err, ANN_E_NOMEM, "assign: cannot count %zu parts", m);

	/* fast path: the unconstrained optimum, if feasible */
	bool feasible = true;
	for (size_t i = 0; i < n; i++) {
		const float *row = score + i * m;
		size_t b = 0;
		for (size_t j = 1; j < m; j++)
			if (row[j] > row[b])
				b = j;
		labels[i] = (uint32_t)b;
		if (++cnt[b] > C)
			feasible = false;
	}
	if (feasible) {
		s.argmax = 1;
	} else {
		/* m >= 2 here: with one part the argmax is always feasible */
		s.eps_final = eps_final > 0.0 ? eps_final : ANN_MAX(1e-6 * range, 1e-9);
		int rc = run_auction(score, n, m, C, range, s.eps_final, labels, &s);
		if (rc < 0) {
			ann_free(cnt);
			return ann_err(err, rc, "assign: out of memory (%zu points, %zu parts)", n, m);
		}
	}
	s.primal = total_score(score, n, m, labels);
	if (s.argmax)
		s.dual = s.primal;
	memset(cnt, 0, m * sizeof *cnt);
	for (size_t i = 0; i < n; i++)
		cnt[labels[i]]++;
	for (size_t j = 0; j < m; j++)
		s.max_load = ANN_MAX(s.max_load, (size_t)cnt[j]);
	ann_free(cnt);
	s.seconds = (double)(ann_now_ns() - t0) * 1e-9;
	if (st)
		*st = s;
	return ANN_OK;
}
