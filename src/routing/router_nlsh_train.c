/* SPDX-License-Identifier: MIT */
/*
 * router_nlsh_train.c: training of the graph routers of router_nlsh.c
 * (docs/ROUTER_NLSH.md): nlsh (exact k-NN graph of the sample, METIS
 * partition, then the classifier trained on the part labels), joint
 * (alternating warm-started training and capacity-constrained relabelling)
 * and soft (the classifier's soft assignments minimise the expected cut
 * plus a balance term). The k-NN graph lives only during training; what
 * is kept is the router of router_nlsh.c with its training history.
 */
#include "router_nlsh_int.h"

#include <float.h>
#include <math.h>

#include "knngraph.h"
#include "partition.h"

#define BATCH 256u            /* classifier training rows per mini-batch, at most */
#define BATCH_MIN 32u         /* ... and at least: cnt / 32 rows, so small sets still take 32 steps an epoch */
#define SOFT_EDGES 256u       /* soft: graph edges per mini-batch (2x as many rows) */
#define LR 1e-3f              /* Adam step; a quarter of it in the last third of the epochs */
#define SELF_WEIGHT 0.5f      /* soft labels: weight of a point's own part */
#define MAX_AUGMENT 100.0     /* ann_build_opts.nlsh.nlsh_augment: noise in sample standard deviations, at most */
#define JOINT_STOP 0.005      /* joint stops once fewer labels than this share change */
#define MIN_GROUPS 8u         /* two-level: fewest groups worth a top classifier */
#define SUB_HIDDEN_DIV 4u     /* two-level: per-group classifiers are this much narrower */
#define SUB_HIDDEN_MIN 16u
#define MAX_KNN_K 1000u
#define MAX_ROUNDS 1000u

/* ---- training ---------------------------------------------------------------- */

typedef struct trainer {
	const ann_router_env *env;
	const ann_nlsh_router_opts *o;
	nl *r;
	const float *x;	   /* the sample, n x d */
	size_t n, d;
	uint32_t m;
	double imb;	   /* imbalance epsilon */
	ann_graph g;	   /* symmetrised k-NN graph of the sample */
	uint32_t *labels;  /* n: current part of each sample point */
	ann_rng rng;
	uint64_t prog_done, prog_total; /* "nlsh" progress, in rows x epochs */
} trainer;

static void prog(const trainer *t, const char *phase, uint64_t done, uint64_t total)
{
	if (t->env->progress)
		t->env->progress(t->env->progress_ctx, phase, done, total);
}

static double secs_since(uint64_t t0)
{
	return (double)(ann_now_ns() - t0) / 1e9;
}

/* A classifier and its training rows. A label l in [lo, hi) is class
 * (l - lo) / div: flat (0, m, 1), top of two-level (0, m, m2), group g
 * (g m2, (g + 1) m2, 1). */
typedef struct cls_task {
	ann_mlp *net;
	const uint32_t *rows; /* sample indices of the training rows; NULL: all n */
	size_t cnt;
	uint32_t lo, hi, div;
	uint32_t epochs;
	const char *phase; /* progress phase, or NULL */
} cls_task;

/* Soft target of point p: SELF_WEIGHT on its own class, the rest spread over
 * the classes of its graph neighbours in [lo, hi) by edge weight (all on its
 * own class when it has none there). */
static void soft_target(const trainer *t, size_t p, const cls_task *k, float *row, size_t nc)
{
	memset(row, 0, nc * sizeof(float));
	const ann_graph *g = &t->g;
	uint32_t own = (t->labels[p] - k->lo) / k->div;
	double tw = 0;
	for (int32_t e = g->xadj[p]; e < g->xadj[p + 1]; e++) {
		uint32_t l = t->labels[g->adjncy[e]];
		if (l >= k->lo && l < k->hi)
			tw += g->adjwgt[e];
	}
	if (tw == 0) {
		row[own] = 1.0f;
		return;
	}
	row[own] = SELF_WEIGHT;
	float f = (float)((1.0 - SELF_WEIGHT) / tw);
	for (int32_t e = g->xadj[p]; e < g->xadj[p + 1]; e++) {
		uint32_t l = t->labels[g->adjncy[e]];
		if (l >= k->lo && l < k->hi)
			row[(l - k->lo) / k->div] += f * (float)g->adjwgt[e];
	}
}

/* Training-time noise (ann_build_opts.nlsh.nlsh_augment = s > 0): each training
 * row, with probability 1/2, gets s N(0, 1) added to every normalised
 * coordinate (normalised units are the sample's standard deviation, one
 * global scale), keeping its clean point's target. The classifier then also
 * sees points off the sample's support, where shifted queries land, labelled
 * like the sample point they came from, instead of extrapolating there
 * freely. Draws nothing when s = 0, so builds without it are unchanged. */
static void augment_row(trainer *t, float *row)
{
	double s = t->o->nlsh_augment;
	if (!(s > 0) || (ann_rng_next(&t->rng) & 1))
		return;
	for (size_t j = 0; j < t->d; j++)
		row[j] += (float)(s * ann_rng_normal(&t->rng));
}

/* Trains k->net with cross-entropy (soft or hard targets) from its current
 * weights; *loss gets the mean batch loss of the last epoch. */
static int train_cls(trainer *t, const cls_task *k, double *loss, ann_error *err)
{
	*loss = 0;
	if (k->cnt == 0 || k->epochs == 0)
		return ANN_OK;
	ann_mlp *net = k->net;
	size_t d = t->d, nc = net->out_dim;
	size_t bmax = ANN_MIN(ANN_MAX(ANN_MIN((size_t)BATCH, k->cnt / 32), (size_t)BATCH_MIN), k->cnt);
	bool soft = t->o->soft_labels != 0;
	ann_mlp_ws *ws = NULL;
	ann_adam *ad = NULL;
	ann_batcher bt = {0};
	float *xb = ann_malloc(bmax * d * sizeof(float));
	float *tb = ann_malloc(bmax * nc * sizeof(float));
	float *gb = ann_malloc(bmax * nc * sizeof(float));
	uint32_t *lb = ann_malloc(bmax * sizeof(uint32_t));
	int rc = ANN_OK;
	if (!xb || !tb || !gb || !lb) {
		rc = ann_err(err, ANN_E_NOMEM, "nlsh router: out of memory for training batches");
		goto fail;
	}
	ANN_CHECK(rc, ann_mlp_ws_new(net, bmax, &ws, err));
	ann_adam_opts ao;
	ann_adam_opts_init(&ao);
	ao.lr = LR;
	ANN_CHECK(rc, ann_adam_new(net->n_params, &ao, &ad, err));
	ANN_CHECK(rc, ann_batcher_init(&bt, k->cnt, bmax, err));
	uint32_t late = k->epochs >= 3 ? k->epochs - k->epochs / 3 : k->epochs;
	for (uint32_t ep = 0; ep < k->epochs; ep++) {
		ann_adam_set_lr(ad, ep >= late ? LR * 0.25f : LR);
		ann_batcher_shuffle(&bt, &t->rng);
		const uint32_t *idx;
		size_t b, nb = 0;
		double sum = 0;
		while ((b = ann_batcher_next(&bt, &idx)) > 0) {
			for (size_t i = 0; i < b; i++) {
				size_t p = k->rows ? k->rows[idx[i]] : idx[i];
				nl_norm(t->r, t->x + p * d, xb + i * d);
				augment_row(t, xb + i * d);
				lb[i] = (t->labels[p] - k->lo) / k->div;
				if (soft)
					soft_target(t, p, k, tb + i * nc, nc);
			}
			const float *y;
			ANN_CHECK(rc, ann_mlp_forward(net, ws, xb, b, &y, err));
			sum += soft ? ann_loss_ce_soft(y, tb, b, nc, gb) : ann_loss_ce_hard(y, lb, b, nc, gb);
			nb++;
			ann_mlp_backward(net, ws, gb, NULL, false);
			ann_adam_step(ad, net->params, ann_mlp_ws_grad(ws));
		}
		*loss = nb ? sum / (double)nb : 0;
		if (!isfinite(*loss)) {
			rc = ann_err(err, ANN_E_INVAL, "nlsh router: training diverged (loss %g; non-finite sample?)",
				     *loss);
			goto fail;
		}
		if (k->phase) {
			t->prog_done += k->cnt;
			prog(t, k->phase, t->prog_done, ANN_MAX(t->prog_total, t->prog_done));
		}
	}
fail:
	ann_mlp_ws_free(ws);
	ann_adam_free(ad);
	ann_batcher_destroy(&bt);
	ann_free(xb);
	ann_free(tb);
	ann_free(gb);
	ann_free(lb);
	return rc;
}

static int make_net(trainer *t, uint32_t out, bool sub, ann_mlp **net, ann_error *err)
{
	ann_mlp_spec s;
	memset(&s, 0, sizeof s);
	s.in_dim = (uint32_t)t->d;
	s.out_dim = out;
	for (uint32_t i = 0; i < 4 && t->o->hidden[i]; i++) {
		uint32_t h = t->o->hidden[i];
		s.hidden[s.n_hidden++] = sub ? ANN_MAX(SUB_HIDDEN_MIN, h / SUB_HIDDEN_DIV) : h;
	}
	s.hidden_act = ANN_ACT_RELU;
	s.out_act = ANN_ACT_SOFTMAX;
	int rc = ann_mlp_new(&s, &t->rng, net, err);
	if (rc < 0)
		ann_err_prefix(err, rc, "nlsh router: classifier");
	return rc;
}

/* Sample indices grouped by key[p] (0..nkeys-1), ascending within a key:
 * order (n entries) and off (nkeys + 1). */
static int group_rows(const uint32_t *key, size_t n, uint32_t nkeys, uint32_t **order, uint32_t **off,
		      ann_error *err)
{
	*order = ann_malloc((n + 1) * sizeof(uint32_t));
	*off = ann_calloc((size_t)nkeys + 1, sizeof(uint32_t));
	if (!*order || !*off) {
		ann_free(*order);
		ann_free(*off);
		*order = *off = NULL;
		return ann_err(err, ANN_E_NOMEM, "nlsh router: out of memory grouping %zu points", n);
	}
	for (size_t p = 0; p < n; p++)
		(*off)[key[p] + 1]++;
	for (uint32_t g = 0; g < nkeys; g++)
		(*off)[g + 1] += (*off)[g];
	for (size_t p = 0; p < n; p++)
		(*order)[(*off)[key[p]]++] = (uint32_t)p;
	for (uint32_t g = nkeys; g > 0; g--)
		(*off)[g] = (*off)[g - 1];
	(*off)[0] = 0;
	return ANN_OK;
}

/* Trains every classifier on the current labels for `epochs` epochs; *loss
 * gets the cross-entropy of the product distribution, which for hard labels
 * is the top's loss plus the groups' losses weighted by their share. */
static int train_all(trainer *t, uint32_t epochs, const char *phase, double *loss, ann_error *err)
{
	nl *r = t->r;
	cls_task k = {.net = r->top, .cnt = t->n, .lo = 0, .hi = t->m, .div = r->G ? r->m2 : 1,
		      .epochs = epochs, .phase = phase};
	ANN_TRY(train_cls(t, &k, loss, err));
	if (!r->G)
		return ANN_OK;
	uint32_t *grp = ann_malloc(t->n * sizeof(uint32_t)), *order = NULL, *off = NULL;
	if (!grp)
		return ann_err(err, ANN_E_NOMEM, "nlsh router: out of memory for group labels");
	for (size_t p = 0; p < t->n; p++)
		grp[p] = t->labels[p] / r->m2;
	int rc = group_rows(grp, t->n, r->G, &order, &off, err);
	for (uint32_t g = 0; rc >= 0 && g < r->G; g++) {
		cls_task s = {.net = r->sub[g], .rows = order + off[g], .cnt = off[g + 1] - off[g],
			      .lo = g * r->m2, .hi = (g + 1) * r->m2, .div = 1, .epochs = epochs, .phase = phase};
		double l;
		rc = train_cls(t, &s, &l, err);
		*loss += l * (double)s.cnt / (double)t->n;
	}
	ann_free(grp);
	ann_free(order);
	ann_free(off);
	return rc;
}

static int push_hist(nl *r, const ann_nlsh_round *e, ann_error *err)
{
	if (r->nhist >= NL_MAX_HIST)
		return ANN_OK; /* bounded; later rounds are not recorded */
	ann_nlsh_round *h = ann_realloc(r->hist, (r->nhist + 1) * sizeof *h);
	if (!h)
		return ann_err(err, ANN_E_NOMEM, "nlsh router: out of memory for the training history");
	r->hist = h;
	h[r->nhist++] = *e;
	return ANN_OK;
}

/* Records one round: cut and balance of the current labels, the
 * classifier's accuracy on them (computed unless acc >= 0), and prints them
 * as a history line (ann_router_env.log). */
static int record(trainer *t, uint32_t phase, uint32_t round, double changed, double loss, double acc,
		  uint64_t t0, ann_error *err)
{
	static const char *const names[3] = {"nlsh", "joint", "soft"};
	if (acc < 0) {
		uint32_t *pred = ann_malloc(t->n * sizeof(uint32_t));
		if (!pred)
			return ann_err(err, ANN_E_NOMEM, "nlsh router: out of memory for predictions");
		int rc = nl_classify(t->r, t->x, t->n, 1, 0, pred, err);
		size_t hit = 0;
		for (size_t p = 0; rc >= 0 && p < t->n; p++)
			hit += pred[p] == t->labels[p];
		ann_free(pred);
		ANN_TRY(rc);
		acc = (double)hit / (double)t->n;
	}
	ann_partition_stats st;
	ANN_TRY(ann_partition_eval(&t->g, t->labels, t->m, &st, err));
	ann_nlsh_round e = {.phase = phase, .round = round, .cut_frac = st.cut_frac, .balance = st.balance,
			    .accuracy = acc, .changed = changed, .loss = isfinite(loss) ? loss : 0,
			    .seconds = secs_since(t0)};
	ANN_TRY(push_hist(t->r, &e, err));
	ann_router_log(t->env, "%s round %u: cut %.4f, balance %.3f, classifier accuracy %.4f, labels changed %.2f%%, "
		       "loss %.4f, %.1f s",
		       names[phase], round, e.cut_frac, e.balance, e.accuracy, 100.0 * e.changed, e.loss, e.seconds);
	return ANN_OK;
}

/* The induced subgraph of g on the vertices mem[0..cnt) (ascending), whose
 * local ids loc[] holds (UINT32_MAX elsewhere). */
static int subgraph(const ann_graph *g, const uint32_t *mem, size_t cnt, const uint32_t *loc, ann_graph *s,
		    ann_error *err)
{
	memset(s, 0, sizeof *s);
	size_t nnz = 0;
	for (size_t i = 0; i < cnt; i++)
		for (int32_t e = g->xadj[mem[i]]; e < g->xadj[mem[i] + 1]; e++)
			nnz += loc[g->adjncy[e]] != UINT32_MAX;
	s->n = cnt;
	s->nnz = nnz;
	s->xadj = ann_malloc((cnt + 1) * sizeof(int32_t));
	s->adjncy = ann_malloc((nnz + 1) * sizeof(int32_t));
	s->adjwgt = ann_malloc((nnz + 1) * sizeof(int32_t));
	if (!s->xadj || !s->adjncy || !s->adjwgt) {
		ann_graph_free(s);
		return ann_err(err, ANN_E_NOMEM, "nlsh router: out of memory for a subgraph of %zu vertices", cnt);
	}
	size_t k = 0;
	s->xadj[0] = 0;
	for (size_t i = 0; i < cnt; i++) {
		for (int32_t e = g->xadj[mem[i]]; e < g->xadj[mem[i] + 1]; e++) {
			uint32_t v = loc[g->adjncy[e]];
			if (v != UINT32_MAX) {
				s->adjncy[k] = (int32_t)v;
				s->adjwgt[k++] = g->adjwgt[e];
			}
		}
		s->xadj[i + 1] = (int32_t)k;
	}
	return ANN_OK;
}

/* The nlsh partition: METIS into m parts (flat) or into G groups and each
 * group into m2 parts, with imbalance sqrt(1 + eps) - 1 at each level so a
 * part stays within about (1 + eps) n / m. */
static int initial_partition(trainer *t, ann_error *err)
{
	nl *r = t->r;
	ann_partition_stats st;
	uint64_t seed = t->env->seed;
	if (!r->G)
		return ann_partition_graph(&t->g, t->m, t->imb, seed, t->labels, &st, err);
	double e = ANN_MAX(0.001, sqrt(1.0 + t->imb) - 1.0);
	uint32_t *grp = ann_malloc(t->n * sizeof(uint32_t)), *order = NULL, *off = NULL, *loc = NULL;
	uint32_t *sl = ann_malloc(t->n * sizeof(uint32_t));
	int rc = ANN_OK;
	if (!grp || !sl) {
		rc = ann_err(err, ANN_E_NOMEM, "nlsh router: out of memory for group labels");
		goto fail;
	}
	ANN_CHECK(rc, ann_partition_graph(&t->g, r->G, e, seed, grp, &st, err));
	ANN_CHECK(rc, group_rows(grp, t->n, r->G, &order, &off, err));
	loc = ann_malloc(t->n * sizeof(uint32_t));
	if (!loc) {
		rc = ann_err(err, ANN_E_NOMEM, "nlsh router: out of memory for local ids");
		goto fail;
	}
	for (size_t p = 0; p < t->n; p++)
		loc[p] = UINT32_MAX;
	for (uint32_t g = 0; g < r->G; g++) {
		const uint32_t *mem = order + off[g];
		size_t cnt = off[g + 1] - off[g];
		if (cnt == 0)
			continue;
		if (cnt <= r->m2) {
			for (size_t i = 0; i < cnt; i++)
				t->labels[mem[i]] = g * r->m2 + (uint32_t)i;
			continue;
		}
		for (size_t i = 0; i < cnt; i++)
			loc[mem[i]] = (uint32_t)i;
		ann_graph s;
		rc = subgraph(&t->g, mem, cnt, loc, &s, err);
		if (rc >= 0)
			rc = ann_partition_graph(&s, r->m2, e, seed + 1 + g, sl, &st, err);
		ann_graph_free(&s);
		for (size_t i = 0; i < cnt; i++)
			loc[mem[i]] = UINT32_MAX;
		if (rc < 0)
			goto fail;
		for (size_t i = 0; i < cnt; i++)
			t->labels[mem[i]] = g * r->m2 + sl[i];
	}
fail:
	ann_free(grp);
	ann_free(sl);
	ann_free(order);
	ann_free(off);
	ann_free(loc);
	return rc;
}

static size_t capacity(size_t n, size_t m, double imb)
{
	return ANN_MAX((n + m - 1) / m, (size_t)floor((1.0 + imb) * (double)n / (double)m));
}

/* Probabilities of net for the sample rows rows[0..cnt) (NULL: all) into
 * out (cnt x out_dim), then their logarithms. */
static int log_probs(trainer *t, const ann_mlp *net, const uint32_t *rows, size_t cnt, float *out, ann_error *err)
{
	size_t d = t->d, w = net->out_dim;
	float *xn = ann_malloc((size_t)CHUNK * d * sizeof(float));
	float *scratch = ann_malloc(ANN_MAX(ann_mlp_infer_scratch(net, CHUNK), (size_t)1) * sizeof(float));
	if (!xn || !scratch) {
		ann_free(xn);
		ann_free(scratch);
		return ann_err(err, ANN_E_NOMEM, "nlsh router: out of memory for inference buffers");
	}
	for (size_t i0 = 0; i0 < cnt; i0 += CHUNK) {
		size_t c = ANN_MIN((size_t)CHUNK, cnt - i0);
		for (size_t i = 0; i < c; i++)
			nl_norm(t->r, t->x + (size_t)(rows ? rows[i0 + i] : i0 + i) * d, xn + i * d);
		ann_mlp_infer(net, xn, c, out + i0 * w, scratch);
	}
	for (size_t i = 0; i < cnt * w; i++)
		out[i] = logf(ANN_MAX(out[i], FLT_MIN));
	ann_free(xn);
	ann_free(scratch);
	return ANN_OK;
}

static int budget_check(const trainer *t, size_t rows, size_t cols, const char *what, ann_error *err)
{
	size_t b;
	if (!ann_mul_ok(rows, cols, &b) || !ann_mul_ok(b, sizeof(float), &b) || b > t->env->mem_bytes / 2)
		return ann_err(err, ANN_E_BUDGET, "joint router: relabelling %s needs a %zu x %zu score matrix, more "
			       "than half the budget (%zu bytes); use fewer partitions, a smaller sample or the "
			       "two-level classifier", what, rows, cols, t->env->mem_bytes);
	return ANN_OK;
}

/* One relabelling of the flat joint router: score(p, j) = log f_j(p) +
 * lambda share(p, j), balanced under capacity (1 + eps) n / m. */
static int relabel_flat(trainer *t, uint32_t *newl, ann_error *err)
{
	ANN_TRY(budget_check(t, t->n, t->m, "the parts", err));
	float *score = ann_malloc(t->n * t->m * sizeof(float));
	if (!score)
		return ann_err(err, ANN_E_NOMEM, "joint router: out of memory for a %zu x %u score matrix", t->n, t->m);
	int rc;
	ann_assign_stats ast;
	ANN_CHECK(rc, log_probs(t, t->r->top, NULL, t->n, score, err));
	ANN_CHECK(rc, ann_nshare_add(&t->g, t->labels, t->m, (float)t->o->joint_lambda, score, err));
	ANN_CHECK(rc, ann_balanced_assign(score, t->n, t->m, capacity(t->n, t->m, t->imb), 0, newl, &ast, err));
fail:
	ann_free(score);
	return rc;
}

/* Two-level relabelling: groups first (log p(g) + lambda * share of the
 * neighbours in g, capacity (1 + eps) n / G), then inside each group its
 * points over its parts (log p(l | g) + lambda share(p, part), capacity
 * max((1 + eps) n / m, ceil(points / m2))), so no part exceeds
 * ceil((1 + eps) n / m). Shares use the labels before the round. */
static int relabel_two_level(trainer *t, uint32_t *newl, ann_error *err)
{
	nl *r = t->r;
	size_t n = t->n;
	uint32_t G = r->G, m2 = r->m2;
	float lambda = (float)t->o->joint_lambda;
	ANN_TRY(budget_check(t, n, G, "the groups", err));
	float *score = ann_malloc(n * G * sizeof(float)), *ls = NULL;
	uint32_t *grp = ann_malloc(n * sizeof(uint32_t)), *ngrp = ann_malloc(n * sizeof(uint32_t));
	uint32_t *order = NULL, *off = NULL, *loc = NULL;
	ann_nshare ns = {0};
	ann_assign_stats ast;
	int rc = ANN_OK;
	if (!score || !grp || !ngrp) {
		rc = ann_err(err, ANN_E_NOMEM, "joint router: out of memory for group scores");
		goto fail;
	}
	for (size_t p = 0; p < n; p++)
		grp[p] = t->labels[p] / m2;
	ANN_CHECK(rc, log_probs(t, r->top, NULL, n, score, err));
	ANN_CHECK(rc, ann_nshare_add(&t->g, grp, G, lambda, score, err));
	ANN_CHECK(rc, ann_balanced_assign(score, n, G, capacity(n, G, t->imb), 0, ngrp, &ast, err));
	ann_free(score);
	score = NULL;
	ANN_CHECK(rc, ann_nshare_compute(&t->g, t->labels, t->m, &ns, err));
	ANN_CHECK(rc, group_rows(ngrp, n, G, &order, &off, err));
	size_t maxc = 0;
	for (uint32_t g = 0; g < G; g++)
		maxc = ANN_MAX(maxc, (size_t)(off[g + 1] - off[g]));
	ANN_CHECK(rc, budget_check(t, maxc, m2, "a group", err));
	ls = ann_malloc((maxc * m2 + 1) * sizeof(float));
	loc = ann_malloc((maxc + 1) * sizeof(uint32_t));
	if (!ls || !loc) {
		rc = ann_err(err, ANN_E_NOMEM, "joint router: out of memory for part scores");
		goto fail;
	}
	size_t cap_part = (size_t)floor((1.0 + t->imb) * (double)n / (double)t->m);
	for (uint32_t g = 0; g < G; g++) {
		const uint32_t *mem = order + off[g];
		size_t cnt = off[g + 1] - off[g];
		if (cnt == 0)
			continue;
		ANN_CHECK(rc, log_probs(t, r->sub[g], mem, cnt, ls, err));
		uint32_t lo = g * m2, hi = lo + m2;
		for (size_t i = 0; i < cnt; i++)
			for (uint32_t e = ns.off[mem[i]]; e < ns.off[mem[i] + 1]; e++)
				if (ns.part[e] >= lo && ns.part[e] < hi)
					ls[i * m2 + ns.part[e] - lo] += lambda * ns.share[e];
		size_t cap = ANN_MAX(ANN_MAX(cap_part, (cnt + m2 - 1) / m2), (size_t)1);
		ANN_CHECK(rc, ann_balanced_assign(ls, cnt, m2, cap, 0, loc, &ast, err));
		for (size_t i = 0; i < cnt; i++)
			newl[mem[i]] = lo + loc[i];
	}
fail:
	ann_free(score);
	ann_free(ls);
	ann_free(grp);
	ann_free(ngrp);
	ann_free(order);
	ann_free(off);
	ann_free(loc);
	ann_nshare_free(&ns);
	return rc;
}

static int joint_rounds(trainer *t, ann_error *err)
{
	uint32_t R = t->o->joint_rounds, warm = ANN_MAX(1u, t->o->nlsh_epochs / 4);
	uint32_t *newl = ann_malloc(t->n * sizeof(uint32_t));
	if (!newl)
		return ann_err(err, ANN_E_NOMEM, "joint router: out of memory for labels");
	int rc = ANN_OK;
	for (uint32_t round = 1; round <= R; round++) {
		uint64_t t0 = ann_now_ns();
		ANN_CHECK(rc, t->r->G ? relabel_two_level(t, newl, err) : relabel_flat(t, newl, err));
		size_t changed = 0;
		for (size_t p = 0; p < t->n; p++)
			changed += newl[p] != t->labels[p];
		memcpy(t->labels, newl, t->n * sizeof(uint32_t));
		double loss, share = (double)changed / (double)t->n;
		ANN_CHECK(rc, train_all(t, warm, NULL, &loss, err));
		prog(t, "joint", round, R);
		ANN_CHECK(rc, record(t, ANN_NLSH_PHASE_JOINT, round, share, loss, -1, t0, err));
		if (share < JOINT_STOP)
			break;
	}
fail:
	ann_free(newl);
	return rc;
}

/* Index of the CSR row holding adjacency entry e. */
static size_t row_of(const ann_graph *g, size_t e)
{
	size_t lo = 0, hi = g->n; /* xadj[lo] <= e < xadj[hi] */
	while (hi - lo > 1) {
		size_t mid = lo + (hi - lo) / 2;
		if ((size_t)g->xadj[mid] <= e)
			lo = mid;
		else
			hi = mid;
	}
	return lo;
}

/* The relaxed partitioner: Q = f(X) (softmax over m), minimising
 *   (1/B) sum_{edges in the batch} w_uv (1 - q_u . q_v) + beta KL(mean(Q) || uniform)
 * over mini-batches of B adjacency entries drawn uniformly (each undirected
 * edge with probability proportional to 1, weighted by w_uv: an unbiased
 * estimate of the expected cut divided by the edge count), beta =
 * joint_lambda, the mean taken over the batch's 2B rows. Hardened by argmax
 * after every epoch (n / B steps). */
static int soft_train(trainer *t, ann_error *err)
{
	nl *r = t->r;
	const ann_graph *g = &t->g;
	size_t d = t->d, m = t->m, B = SOFT_EDGES, rows = 2 * B;
	double beta = t->o->joint_lambda;
	uint32_t E = t->o->nlsh_epochs;
	ann_mlp_ws *ws = NULL;
	ann_adam *ad = NULL;
	float *xb = ann_malloc(rows * d * sizeof(float));
	float *gb = ann_malloc(rows * m * sizeof(float));
	float *w = ann_malloc(B * sizeof(float));
	double *qbar = ann_malloc(m * sizeof(double));
	uint32_t *prev = ann_malloc(t->n * sizeof(uint32_t));
	int rc = ANN_OK;
	if (!xb || !gb || !w || !qbar || !prev) {
		rc = ann_err(err, ANN_E_NOMEM, "soft router: out of memory for training batches");
		goto fail;
	}
	ANN_CHECK(rc, ann_mlp_ws_new(r->top, rows, &ws, err));
	ann_adam_opts ao;
	ann_adam_opts_init(&ao);
	ANN_CHECK(rc, ann_adam_new(r->top->n_params, &ao, &ad, err));
	size_t steps = ANN_MAX((size_t)1, (t->n + B - 1) / B);
	uint32_t late = E >= 3 ? E - E / 3 : E;
	for (size_t p = 0; p < t->n; p++)
		prev[p] = UINT32_MAX;
	for (uint32_t ep = 0; ep < E; ep++) {
		uint64_t t0 = ann_now_ns();
		ann_adam_set_lr(ad, ep >= late ? LR * 0.25f : LR);
		double sum = 0;
		for (size_t s = 0; s < steps; s++) {
			size_t b = g->nnz ? B : 0, nr = g->nnz ? rows : B;
			for (size_t i = 0; i < b; i++) {
				size_t e = (size_t)ann_rng_below(&t->rng, g->nnz), u = row_of(g, e);
				w[i] = (float)g->adjwgt[e];
				nl_norm(r, t->x + u * d, xb + 2 * i * d);
				nl_norm(r, t->x + (size_t)g->adjncy[e] * d, xb + (2 * i + 1) * d);
			}
			for (size_t i = 0; i < (g->nnz ? 0 : B); i++) /* edgeless graph: balance term only */
				nl_norm(r, t->x + ann_rng_below(&t->rng, t->n) * d, xb + i * d);
			const float *q;
			ANN_CHECK(rc, ann_mlp_forward(r->top, ws, xb, nr, &q, err));
			double cut = 0;
			for (size_t i = 0; i < b; i++) {
				const float *qu = q + 2 * i * m, *qv = qu + m;
				float *gu = gb + 2 * i * m, *gv = gu + m, f = -w[i] / (float)b;
				double dot = 0;
				for (size_t j = 0; j < m; j++) {
					dot += (double)qu[j] * qv[j];
					gu[j] = f * qv[j];
					gv[j] = f * qu[j];
				}
				cut += w[i] * (1.0 - dot);
			}
			if (!b)
				memset(gb, 0, nr * m * sizeof(float));
			for (size_t j = 0; j < m; j++)
				qbar[j] = 0;
			for (size_t i = 0; i < nr; i++)
				for (size_t j = 0; j < m; j++)
					qbar[j] += q[i * m + j];
			double kl = 0;
			for (size_t j = 0; j < m; j++) {
				qbar[j] = ANN_MAX(qbar[j] / (double)nr, 1e-12);
				kl += qbar[j] * log(qbar[j] * (double)m);
				qbar[j] = beta / (double)nr * (log(qbar[j] * (double)m) + 1.0); /* now dL/dq_ij */
			}
			for (size_t i = 0; i < nr; i++)
				for (size_t j = 0; j < m; j++)
					gb[i * m + j] += (float)qbar[j];
			sum += (b ? cut / (double)b : 0) + beta * kl;
			ann_mlp_backward(r->top, ws, gb, NULL, false);
			ann_adam_step(ad, r->top->params, ann_mlp_ws_grad(ws));
		}
		double loss = sum / (double)steps;
		if (!isfinite(loss)) {
			rc = ann_err(err, ANN_E_INVAL, "soft router: training diverged (loss %g)", loss);
			goto fail;
		}
		ANN_CHECK(rc, nl_classify(r, t->x, t->n, 1, 0, t->labels, err));
		size_t changed = 0;
		for (size_t p = 0; p < t->n; p++)
			changed += prev[p] != t->labels[p];
		memcpy(prev, t->labels, t->n * sizeof(uint32_t));
		prog(t, "soft", ep + 1, E);
		ANN_CHECK(rc, record(t, ANN_NLSH_PHASE_SOFT, ep, (double)changed / (double)t->n, loss, 1.0, t0, err));
	}
fail:
	ann_mlp_ws_free(ws);
	ann_adam_free(ad);
	ann_free(xb);
	ann_free(gb);
	ann_free(w);
	ann_free(qbar);
	ann_free(prev);
	return rc;
}

/* Per-dimension mean, and one scale making the mean per-coordinate variance 1. */
static int normalisation(nl *r, const float *x, size_t n, ann_error *err)
{
	size_t d = r->d;
	double *mu = ann_calloc(d, sizeof(double));
	if (!mu)
		return ann_err(err, ANN_E_NOMEM, "nlsh router: out of memory for the normalisation");
	for (size_t i = 0; i < n; i++)
		for (size_t j = 0; j < d; j++)
			mu[j] += x[i * d + j];
	for (size_t j = 0; j < d; j++)
		mu[j] /= (double)n;
	double var = 0;
	for (size_t i = 0; i < n; i++)
		for (size_t j = 0; j < d; j++) {
			double v = x[i * d + j] - mu[j];
			var += v * v;
		}
	var /= (double)n * (double)d;
	for (size_t j = 0; j < d; j++)
		r->shift[j] = (float)mu[j];
	r->scale = var > 0 && isfinite(var) ? (float)(1.0 / sqrt(var)) : 1.0f;
	ann_free(mu);
	if (!isfinite(r->scale) || !(r->scale > 0))
		r->scale = 1.0f;
	for (size_t j = 0; j < d; j++)
		if (!isfinite(r->shift[j]))
			return ann_err(err, ANN_E_INVAL, "nlsh router: the sample has a non-finite mean in dimension %zu",
				       j);
	return ANN_OK;
}

/* Two-level shape for m parts: the largest divisor G of m with G <= sqrt(m)
 * and G >= MIN_GROUPS (0 if there is none: flat). */
static uint32_t auto_groups(uint32_t m)
{
	for (uint32_t G = (uint32_t)sqrt((double)m); G >= MIN_GROUPS; G--)
		if (m % G == 0)
			return G;
	return 0;
}

static int check_opts(const ann_router_env *env, const ann_nlsh_router_opts *o, size_t n, size_t d, uint32_t m,
		      uint32_t groups, ann_error *err)
{
	if (env->kind != ANN_ROUTER_NLSH && env->kind != ANN_ROUTER_JOINT && env->kind != ANN_ROUTER_SOFT)
		return ann_err(err, ANN_E_INVAL, "nlsh router: router kind %d is not nlsh, joint or soft",
			       (int)env->kind);
	if (m == 0 || m > NL_MAX_PARTS || m > n)
		return ann_err(err, ANN_E_INVAL, "nlsh router: %u partitions need at least as many sample vectors, "
			       "the sample has %zu", m, n);
	if (n > INT32_MAX)
		return ann_err(err, ANN_E_INVAL, "nlsh router: a sample of %zu vectors is above the graph's 2^31 - 1",
			       n);
	if (d == 0 || d > ANN_MLP_MAX_DIM)
		return ann_err(err, ANN_E_INVAL, "nlsh router: dimension %zu out of range", d);
	if (o->knn_k > MAX_KNN_K)
		return ann_err(err, ANN_E_INVAL, "nlsh router: knn_k %u, expected 1..%u", o->knn_k, MAX_KNN_K);
	if (o->imbalance != 0 && !(o->imbalance >= 0.001 && o->imbalance <= 1.0))
		return ann_err(err, ANN_E_INVAL, "nlsh router: imbalance %g, expected 0.001 .. 1", o->imbalance);
	if (o->nlsh_epochs == 0 || o->nlsh_epochs > 100000)
		return ann_err(err, ANN_E_INVAL, "nlsh router: epochs %u, expected 1..100000", o->nlsh_epochs);
	if (!(o->nlsh_augment >= 0 && o->nlsh_augment <= MAX_AUGMENT))
		return ann_err(err, ANN_E_INVAL, "nlsh router: augment %g, expected 0 .. %g", o->nlsh_augment,
			       MAX_AUGMENT);
	if (o->joint_rounds > MAX_ROUNDS)
		return ann_err(err, ANN_E_INVAL, "joint router: %u rounds, expected 0..%u", o->joint_rounds,
			       MAX_ROUNDS);
	if (!(o->joint_lambda >= 0) || !isfinite(o->joint_lambda))
		return ann_err(err, ANN_E_INVAL, "joint router: lambda %g, expected a finite number >= 0",
			       o->joint_lambda);
	for (int i = 0; i < 4 && o->hidden[i]; i++)
		if (o->hidden[i] > ANN_MLP_MAX_DIM)
			return ann_err(err, ANN_E_INVAL, "nlsh router: hidden layer %d has %u units, at most %u", i,
				       o->hidden[i], ANN_MLP_MAX_DIM);
	if (groups >= 2 && (env->kind == ANN_ROUTER_SOFT || m % groups != 0 || m / groups < 2))
		return ann_err(err, ANN_E_INVAL, "nlsh router: %u groups for %u parts: groups must divide the parts "
			       "with 2 or more per group (and soft is flat)", groups, m);
	return ANN_OK;
}

int ann_router_nlsh_train_shape(const ann_router_env *env, const ann_nlsh_router_opts *o, const float *sample,
				size_t n, size_t d, uint32_t nparts, uint32_t groups, ann_router **out, ann_error *err)
{
	*out = NULL;
	ANN_TRY(check_opts(env, o, n, d, nparts, groups, err));
	trainer t = {.env = env, .o = o, .x = sample, .n = n, .d = d, .m = nparts};
	t.imb = o->imbalance != 0 ? o->imbalance : ANN_PARTITION_DEFAULT_IMBALANCE;
	ann_rng_seed(&t.rng, env->seed ^ 0x4e4c5348ull);
	nl *r = ann_calloc(1, sizeof *r);
	uint32_t *knn = NULL;
	int rc = ANN_OK;
	if (!r)
		return ann_err(err, ANN_E_NOMEM, "nlsh router: out of memory");
	t.r = r;
	r->kind = env->kind;
	r->d = (uint32_t)d;
	r->m = nparts;
	if (groups >= 2)
		r->G = groups;
	else if (groups == 0 && env->kind != ANN_ROUTER_SOFT && nparts >= ANN_NLSH_TWO_LEVEL_MIN)
		r->G = auto_groups(nparts);
	r->m2 = r->G ? nparts / r->G : 0;
	r->shift = ann_malloc(d * sizeof(float));
	t.labels = ann_malloc(n * sizeof(uint32_t));
	if (!r->shift || !t.labels) {
		rc = ann_err(err, ANN_E_NOMEM, "nlsh router: out of memory for %zu labels", n);
		goto fail;
	}
	ANN_CHECK(rc, normalisation(r, sample, n, err));

	/* k-NN graph of the sample, symmetrised; dropped when training ends. */
	ann_knn_opts ko;
	ann_knn_opts_init(&ko);
	ko.k = ANN_MIN((size_t)(o->knn_k ? o->knn_k : 10), n > 1 ? n - 1 : 1);
	ko.metric = env->metric;
	ko.threads = ANN_MAX(1, ANN_MIN(env->threads, 64));
	ko.mem_bytes = ANN_MIN(ANN_KNN_DEFAULT_MEM, ANN_MAX(env->mem_bytes / 8, (size_t)4 << 20));
	ko.progress = env->progress;
	ko.progress_ctx = env->progress_ctx;
	if (n > 1) {
		knn = ann_malloc(n * ko.k * sizeof(uint32_t));
		if (!knn) {
			rc = ann_err(err, ANN_E_NOMEM, "nlsh router: out of memory for a %zu x %zu k-NN graph", n, ko.k);
			goto fail;
		}
		ANN_CHECK(rc, ann_knn_graph(sample, n, d, &ko, knn, NULL, NULL, err));
		ANN_CHECK(rc, ann_graph_from_knn(knn, n, ko.k, &t.g, err));
		ann_free(knn);
		knn = NULL;
	} else {
		t.g.xadj = ann_calloc(2, sizeof(int32_t));
		t.g.adjncy = ann_malloc(sizeof(int32_t));
		t.g.adjwgt = ann_malloc(sizeof(int32_t));
		t.g.n = n;
		if (!t.g.xadj || !t.g.adjncy || !t.g.adjwgt) {
			rc = ann_err(err, ANN_E_NOMEM, "nlsh router: out of memory");
			goto fail;
		}
	}

	if (env->kind == ANN_ROUTER_SOFT) {
		ANN_CHECK(rc, make_net(&t, nparts, false, &r->top, err));
		nl_update_scratch(r);
		ANN_CHECK(rc, soft_train(&t, err));
	} else {
		uint64_t t0 = ann_now_ns();
		prog(&t, "partition", 0, 1);
		ANN_CHECK(rc, initial_partition(&t, err));
		prog(&t, "partition", 1, 1);
		ANN_CHECK(rc, make_net(&t, r->G ? r->G : nparts, false, &r->top, err));
		if (r->G) {
			r->sub = ann_calloc(r->G, sizeof(ann_mlp *));
			if (!r->sub) {
				rc = ann_err(err, ANN_E_NOMEM, "nlsh router: out of memory for %u groups", r->G);
				goto fail;
			}
			for (uint32_t g = 0; g < r->G; g++)
				ANN_CHECK(rc, make_net(&t, r->m2, true, &r->sub[g], err));
		}
		nl_update_scratch(r);
		double loss;
		t.prog_total = (uint64_t)n * o->nlsh_epochs * (r->G ? 2 : 1);
		ANN_CHECK(rc, train_all(&t, o->nlsh_epochs, "nlsh", &loss, err));
		ANN_CHECK(rc, record(&t, ANN_NLSH_PHASE_PARTITION, 0, 0, loss, -1, t0, err));
		if (env->kind == ANN_ROUTER_JOINT)
			ANN_CHECK(rc, joint_rounds(&t, err));
	}
	ann_graph_free(&t.g);
	ann_free(t.labels);
	return nl_wrap(r, env->metric, out, err);
fail:
	ann_free(knn);
	ann_graph_free(&t.g);
	ann_free(t.labels);
	nl_free_impl(r);
	return rc;
}

int ann_router_nlsh_train(const ann_router_env *env, const ann_nlsh_router_opts *o, const float *sample, size_t n,
			  size_t d, uint32_t nparts, ann_router **out, ann_error *err)
{
	return ann_router_nlsh_train_shape(env, o, sample, n, d, nparts, 0, out, err);
}
