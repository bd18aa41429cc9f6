/* SPDX-License-Identifier: MIT */
/*
 * router_nlsh.c: the graph routers (docs/ROUTER_NLSH.md). nlsh (Neural LSH:
 * exact k-NN graph of the sample, METIS partition, MLP classifier trained on
 * the part labels), joint (alternating warm-started training and
 * capacity-constrained relabelling by log f_j(p) + lambda * neighbour share)
 * and soft (the classifier's soft assignments minimise the expected cut plus
 * a balance term). All three share the runtime: a classifier over the parts,
 * flat, or two-level (groups x parts) for many parts. The k-NN graph lives
 * only during training; the router holds the normalisation, the classifiers
 * and the training history. It owns no I/O. This file is the runtime
 * (inference, the router operations, the blob); router_nlsh_train.c trains.
 */
#include "router_nlsh_int.h"

#include <math.h>
#include <xxhash.h>

#include "heap.h"

/*
 * Blob, version 1.0 (all integers little-endian, floats IEEE-754 binary32
 * unless marked f64):
 *
 *   OFFSET SIZE   FIELD
 *   0      8      magic 89 4E 4C 53 48 0D 0A 1A ("\x89NLSH\r\n\x1a")
 *   8      2      major version (1); readers refuse another major
 *   10     2      minor version (0)
 *   12     4      header bytes (64)
 *   16     4      kind (ann_router_kind: 2 nlsh, 3 joint, 4 soft)
 *   20     4      d, input dimension (= the index's)
 *   24     4      m, parts (1..2^30)
 *   28     4      metric (ann_metric, = the index's)
 *   32     4      G, groups: 0 flat; else two-level, m / G >= 2 parts per group
 *   36     4      H, history entries (<= 4096)
 *   40     4      scale (f32, finite, > 0): classifiers see (x - shift) * scale
 *   44     4      C, classifiers: 1 (flat) or 1 + G (two-level)
 *   48     8      total blob bytes, checksum included
 *   56     8      reserved (0)
 *   64     4d     shift (f32, finite): per-dimension mean of the sample
 *   ...           C times: u64 L, then an L-byte MLP blob (nn.h): the first
 *                 maps d -> m (flat) or d -> G (two-level: p(g | x)); the
 *                 next G map d -> m / G (p(l | g, x), part g * m / G + l);
 *                 every one ends in a softmax layer
 *   ...    56H    history (router_nlsh.h ann_nlsh_round): u32 phase (0..2),
 *                 u32 round, f64 cut_frac, balance, accuracy, changed, loss,
 *                 seconds (finite)
 *   len-8  8      XXH64 (seed 0) of bytes [0, len - 8)
 */
#define NL_MAGIC "\x89" "NLSH\r\n\x1a"
#define NL_MAJOR 1u
#define NL_MINOR 0u
#define NL_HEADER 64u
#define NL_HIST_BYTES 56u

struct ann_router_ctx {
	float *xn;	/* d: the normalised query */
	float *prob;	/* max(m, G) */
	float *gp;	/* G */
	float *scratch; /* nl.scratch1 */
	float *vals;	/* m: drained heap values */
	uint32_t *hid;	/* m: heap ids */
	float *hval;	/* m: heap values */
};

static nl *nlr(const ann_router *r)
{
	return r->impl;
}

void nl_free_impl(nl *r)
{
	if (!r)
		return;
	ann_mlp_free(r->top);
	if (r->sub)
		for (uint32_t g = 0; g < r->G; g++)
			ann_mlp_free(r->sub[g]);
	ann_free(r->sub);
	ann_free(r->shift);
	ann_free(r->hist);
	ann_free(r);
}
void nl_update_scratch(nl *r)
{
	size_t s = ann_mlp_infer_scratch(r->top, 1);
	for (uint32_t g = 0; r->sub && g < r->G; g++)
		s = ANN_MAX(s, ann_mlp_infer_scratch(r->sub[g], 1));
	r->scratch1 = s;
}

/* ---- top-c selection ------------------------------------------------------
 * A min-heap of at most cap (value, id) pairs: the root is the worst kept.
 * Higher value wins, then the smaller id, so results are deterministic. */
typedef struct topc {
	uint32_t cap, size;
	uint32_t *id;
	float *val;
} topc;

static inline bool tc_better(float va, uint32_t ia, float vb, uint32_t ib)
{
	return va > vb || (va == vb && ia < ib);
}

typedef struct tc_ent {
	float v;
	uint32_t id;
} tc_ent;
#define TC_AT(h, i) ((tc_ent){(h)->val[i], (h)->id[i]})
#define TC_SET(h, i, e) ((h)->val[i] = (e).v, (h)->id[i] = (e).id)
#define TC_ABOVE(a, b) tc_better((b).v, (b).id, (a).v, (a).id) /* the worst kept at the root */
ANN_HEAP_DEFINE(tc_heap, topc *, tc_ent, TC_AT, TC_SET, TC_ABOVE)

static void tc_push(topc *h, float v, uint32_t id)
{
	if (!(v >= 0.0f)) /* NaN from non-finite input never enters */
		return;
	tc_ent e = {v, id};
	if (h->size < h->cap)
		tc_heap_up(h, h->size++, e);
	else if (h->cap && tc_better(v, id, h->val[0], h->id[0]))
		tc_heap_down(h, h->size, 0, e);
}

/* Empties the heap into ids / vals (vals may be NULL), best first. */
static uint32_t tc_drain(topc *h, uint32_t *ids, float *vals)
{
	uint32_t k = h->size;
	for (uint32_t i = k; i-- > 0;) {
		ids[i] = h->id[0];
		if (vals)
			vals[i] = h->val[0];
		h->size--;
		if (h->size)
			tc_heap_down(h, h->size, 0, TC_AT(h, h->size));
	}
	return k;
}

/* Two-level ranking of one normalised row xn, given its group probabilities
 * gp (G floats, consumed: evaluated groups are marked -1). Groups are
 * visited by decreasing p(g); p(g) p(l | g) <= p(g), so once the heap is
 * full and the next group's p(g) is not above its worst value, no part of
 * the remaining groups can enter: the result is the exact top-cap of the
 * products. prob holds m2 floats, scratch nl.scratch1. */
static void rank_groups(const nl *r, const float *xn, float *gp, topc *h, float *prob, float *scratch)
{
	for (;;) {
		uint32_t best = UINT32_MAX;
		float bv = -1.0f;
		for (uint32_t g = 0; g < r->G; g++)
			if (gp[g] > bv) {
				bv = gp[g];
				best = g;
			}
		if (best == UINT32_MAX || (h->size == h->cap && !(bv > h->val[0])))
			return;
		gp[best] = -1.0f;
		ann_mlp_infer(r->sub[best], xn, 1, prob, scratch);
		for (uint32_t l = 0; l < r->m2; l++)
			tc_push(h, bv * prob[l], best * r->m2 + l);
	}
}

/* Top `copies` parts of n rows, with the closure rule of router.h applied to
 * probabilities: extra copies only where p_j * (1 + eps) >= p_best. parts
 * gets n * copies entries, UINT32_MAX padded. */
int nl_classify(const nl *r, const float *x, size_t n, uint32_t copies, double eps, uint32_t *parts,
		       ann_error *err)
{
	size_t d = r->d, cw = r->G ? r->G : r->m;
	uint32_t c = (uint32_t)ANN_MIN((size_t)ANN_MAX(copies, 1u), (size_t)r->m);
	size_t sc = ANN_MAX(ann_mlp_infer_scratch(r->top, CHUNK), r->scratch1);
	float *xn = ann_malloc((size_t)CHUNK * d * sizeof(float));
	float *out = ann_malloc((size_t)CHUNK * cw * sizeof(float));
	float *scratch = ann_malloc(ANN_MAX(sc, (size_t)1) * sizeof(float));
	float *prob = ann_malloc(((size_t)r->m2 + 1) * sizeof(float));
	uint32_t *hid = ann_malloc(2 * (size_t)c * sizeof(uint32_t));
	float *hval = ann_malloc(2 * (size_t)c * sizeof(float));
	int rc = ANN_OK;
	if (!xn || !out || !scratch || !prob || !hid || !hval) {
		rc = ann_err(err, ANN_E_NOMEM, "nlsh router: out of memory classifying %zu vectors", n);
		goto out;
	}
	topc h = {.cap = c, .id = hid, .val = hval};
	uint32_t *ids = hid + c;
	float *vals = hval + c;
	for (size_t i0 = 0; i0 < n; i0 += CHUNK) {
		size_t cnt = ANN_MIN((size_t)CHUNK, n - i0);
		for (size_t i = 0; i < cnt; i++)
			nl_norm(r, x + (i0 + i) * d, xn + i * d);
		ann_mlp_infer(r->top, xn, cnt, out, scratch);
		for (size_t i = 0; i < cnt; i++) {
			h.size = 0;
			const float *row = out + i * cw;
			if (r->G)
				rank_groups(r, xn + i * d, out + i * cw, &h, prob, scratch);
			else
				for (uint32_t j = 0; j < r->m; j++)
					tc_push(&h, row[j], j);
			uint32_t k = tc_drain(&h, ids, vals);
			if (k == 0) {
				rc = ann_err(err, ANN_E_INVAL, "nlsh router: vector %zu has no finite class probability "
					     "(non-finite coordinates?)", i0 + i);
				goto out;
			}
			uint32_t *dst = parts + (i0 + i) * copies, got = 1;
			dst[0] = ids[0];
			for (uint32_t j = 1; j < k && got < copies; j++) {
				if (!((double)vals[j] * (1.0 + eps) >= (double)vals[0]))
					break;
				dst[got++] = ids[j];
			}
			for (uint32_t j = got; j < copies; j++)
				dst[j] = UINT32_MAX;
		}
	}
out:
	ann_free(xn);
	ann_free(out);
	ann_free(scratch);
	ann_free(prob);
	ann_free(hid);
	ann_free(hval);
	return rc;
}

/* ---- router operations ------------------------------------------------------ */

static int nl_assign(const ann_router *rr, const float *x, size_t n, const ann_assign_rule *sp, int threads,
		     uint32_t *parts, ann_error *err)
{
	(void)threads; /* the classifiers run on OpenBLAS, which has its own threads */
	if (sp->copies == 0)
		return ann_err(err, ANN_E_INVAL, "nlsh router: 0 copies requested");
	return nl_classify(nlr(rr), x, n, sp->copies, sp->eps, parts, err);
}

static void nl_ctx_free(ann_router_ctx *c)
{
	if (!c)
		return;
	ann_free(c->xn);
	ann_free(c->prob);
	ann_free(c->gp);
	ann_free(c->scratch);
	ann_free(c->vals);
	ann_free(c->hid);
	ann_free(c->hval);
	ann_free(c);
}

static int nl_ctx_new(const ann_router *rr, ann_router_ctx **out, ann_error *err)
{
	const nl *r = nlr(rr);
	ann_router_ctx *c = ann_calloc(1, sizeof *c);
	if (!c)
		return ann_err(err, ANN_E_NOMEM, "nlsh router: out of memory for a context");
	size_t w = ANN_MAX((size_t)r->m, (size_t)r->G);
	c->xn = ann_malloc((size_t)r->d * sizeof(float));
	c->prob = ann_malloc(w * sizeof(float));
	c->gp = ann_malloc(((size_t)r->G + 1) * sizeof(float));
	c->scratch = ann_malloc(ANN_MAX(r->scratch1, (size_t)1) * sizeof(float));
	c->vals = ann_malloc((size_t)r->m * sizeof(float));
	c->hid = ann_malloc((size_t)r->m * sizeof(uint32_t));
	c->hval = ann_malloc((size_t)r->m * sizeof(float));
	if (!c->xn || !c->prob || !c->gp || !c->scratch || !c->vals || !c->hid || !c->hval) {
		nl_ctx_free(c);
		return ann_err(err, ANN_E_NOMEM, "nlsh router: out of memory for a context of %u parts", r->m);
	}
	*out = c;
	return ANN_OK;
}

static int nl_route(const ann_router *rr, ann_router_ctx *c, const float *q, const ann_search_opts *o,
		    uint32_t *parts, ann_error *err)
{
	const nl *r = nlr(rr);
	uint32_t np = ANN_MIN(o->nprobe, r->m);
	if (np == 0)
		return 0;
	nl_norm(r, q, c->xn);
	topc h = {.cap = np, .id = c->hid, .val = c->hval};
	if (r->G) {
		ann_mlp_infer(r->top, c->xn, 1, c->gp, c->scratch);
		rank_groups(r, c->xn, c->gp, &h, c->prob, c->scratch);
	} else {
		ann_mlp_infer(r->top, c->xn, 1, c->prob, c->scratch);
		for (uint32_t j = 0; j < r->m; j++)
			tc_push(&h, c->prob[j], j);
	}
	uint32_t k = tc_drain(&h, parts, c->vals);
	if (k == 0)
		return ann_err(err, ANN_E_INVAL, "nlsh router: the query has no finite class probability "
			       "(non-finite coordinates?)");
	return (int)k;
}

static size_t nl_ram(const ann_router *rr)
{
	const nl *r = nlr(rr);
	size_t b = sizeof(ann_router) + sizeof(nl) + (size_t)r->d * sizeof(float) + ann_mlp_bytes(r->top) +
		   (size_t)r->nhist * sizeof(ann_nlsh_round);
	for (uint32_t g = 0; r->sub && g < r->G; g++)
		b += sizeof(ann_mlp *) + ann_mlp_bytes(r->sub[g]);
	return b;
}

static const ann_mlp *nl_net(const nl *r, uint32_t i)
{
	return i == 0 ? r->top : r->sub[i - 1];
}

static int nl_save(const ann_router *rr, uint8_t **blob, size_t *len, ann_error *err)
{
	const nl *r = nlr(rr);
	uint32_t nets = r->G ? r->G + 1 : 1;
	size_t total = NL_HEADER + (size_t)r->d * 4 + (size_t)r->nhist * NL_HIST_BYTES + 8;
	for (uint32_t i = 0; i < nets; i++)
		total += 8 + ann_mlp_blob_bytes(nl_net(r, i));
	uint8_t *b = ann_calloc(1, total);
	if (!b)
		return ann_err(err, ANN_E_NOMEM, "nlsh router: out of memory for a %zu-byte blob", total);
	memcpy(b, NL_MAGIC, 8);
	ann_st16(b + 8, NL_MAJOR);
	ann_st16(b + 10, NL_MINOR);
	ann_st32(b + 12, NL_HEADER);
	ann_st32(b + 16, (uint32_t)r->kind);
	ann_st32(b + 20, r->d);
	ann_st32(b + 24, r->m);
	ann_st32(b + 28, (uint32_t)rr->metric);
	ann_st32(b + 32, r->G);
	ann_st32(b + 36, r->nhist);
	ann_stf32(b + 40, r->scale);
	ann_st32(b + 44, nets);
	ann_st64(b + 48, total);
	uint8_t *p = b + NL_HEADER;
	for (uint32_t j = 0; j < r->d; j++, p += 4)
		ann_stf32(p, r->shift[j]);
	for (uint32_t i = 0; i < nets; i++) {
		uint8_t *mb;
		size_t ml;
		int rc = ann_mlp_save(nl_net(r, i), &mb, &ml, err);
		if (rc < 0) {
			ann_free(b);
			return rc;
		}
		ann_st64(p, ml);
		memcpy(p + 8, mb, ml);
		p += 8 + ml;
		ann_free(mb);
	}
	for (uint32_t h = 0; h < r->nhist; h++, p += NL_HIST_BYTES) {
		const ann_nlsh_round *e = &r->hist[h];
		ann_st32(p, e->phase);
		ann_st32(p + 4, e->round);
		double v[6] = {e->cut_frac, e->balance, e->accuracy, e->changed, e->loss, e->seconds};
		for (int k = 0; k < 6; k++) {
			uint64_t u;
			memcpy(&u, &v[k], 8);
			ann_st64(p + 8 + 8 * k, u);
		}
	}
	ann_st64(p, XXH64(b, total - 8, 0));
	*blob = b;
	*len = total;
	return ANN_OK;
}

static void nl_free_op(ann_router *r)
{
	nl_free_impl(r->impl);
	ann_free(r);
}

#define NL_OPS(k)                                                                                        \
	{                                                                                                \
		.kind = (k), .assign = nl_assign, .ctx_new = nl_ctx_new, .ctx_free = nl_ctx_free,        \
		.route = nl_route, .ram_bytes = nl_ram, .save = nl_save, .free = nl_free_op,             \
	}
static const ann_router_ops nl_ops[3] = {NL_OPS(ANN_ROUTER_NLSH), NL_OPS(ANN_ROUTER_JOINT),
					 NL_OPS(ANN_ROUTER_SOFT)};

static bool is_nl(const ann_router *r)
{
	return r && r->ops && r->ops->assign == nl_assign;
}

int nl_wrap(nl *r, ann_metric metric, ann_router **out, ann_error *err)
{
	ann_router *rr = ann_calloc(1, sizeof *rr);
	if (!rr) {
		nl_free_impl(r);
		return ann_err(err, ANN_E_NOMEM, "nlsh router: out of memory");
	}
	nl_update_scratch(r);
	rr->ops = &nl_ops[r->kind == ANN_ROUTER_JOINT ? 1 : r->kind == ANN_ROUTER_SOFT ? 2 : 0];
	rr->impl = r;
	rr->nparts = r->m;
	rr->dim = r->d;
	rr->metric = metric;
	*out = rr;
	return ANN_OK;
}

size_t ann_router_nlsh_history(const ann_router *r, const ann_nlsh_round **rounds)
{
	if (!is_nl(r)) {
		*rounds = NULL;
		return 0;
	}
	*rounds = nlr(r)->hist;
	return nlr(r)->nhist;
}

uint32_t ann_router_nlsh_groups(const ann_router *r)
{
	return is_nl(r) ? nlr(r)->G : 0;
}

/* ---- loading -------------------------------------------------------------- */

static int corrupt(ann_error *err, size_t off, const char *what)
{
	return ann_err(err, ANN_E_CORRUPT, "nlsh router blob: offset %zu: %s", off, what);
}

int ann_router_nlsh_load(ann_router_kind kind, const uint8_t *blob, size_t len, uint32_t dim, ann_metric metric,
			 ann_router **out, ann_error *err)
{
	*out = NULL;
	if (len < NL_HEADER + 8)
		return corrupt(err, len, "blob shorter than its 64-byte header and checksum");
	if (memcmp(blob, NL_MAGIC, 8) != 0)
		return ann_err(err, ANN_E_FORMAT, "nlsh router blob: bad magic");
	if (ann_ld16(blob + 8) != NL_MAJOR)
		return ann_err(err, ANN_E_FORMAT, "nlsh router blob: format version %u.%u, this build reads %u.x",
			       ann_ld16(blob + 8), ann_ld16(blob + 10), NL_MAJOR);
	if (ann_ld64(blob + 48) != len)
		return corrupt(err, 48, "total length differs from the stored blob's");
	if (XXH64(blob, len - 8, 0) != ann_ld64(blob + len - 8))
		return corrupt(err, len - 8, "checksum mismatch");
	if (ann_ld32(blob + 12) != NL_HEADER)
		return corrupt(err, 12, "header length is not 64");
	if (ann_ld32(blob + 16) != (uint32_t)kind)
		return ann_err(err, ANN_E_CORRUPT, "nlsh router blob: holds router kind %u, the index says %s (%d)",
			       ann_ld32(blob + 16), ann_router_name(kind), (int)kind);
	if (ann_ld32(blob + 20) != dim || ann_ld32(blob + 28) != (uint32_t)metric)
		return ann_err(err, ANN_E_CORRUPT, "nlsh router blob: dimension %u metric %u, the index has %u and %u",
			       ann_ld32(blob + 20), ann_ld32(blob + 28), dim, (unsigned)metric);
	uint32_t m = ann_ld32(blob + 24), G = ann_ld32(blob + 32), H = ann_ld32(blob + 36), C = ann_ld32(blob + 44);
	float scale = ann_ldf32(blob + 40);
	if (m == 0 || m > NL_MAX_PARTS)
		return corrupt(err, 24, "part count out of range");
	if (G != 0 && (G < 2 || m % G != 0 || m / G < 2))
		return corrupt(err, 32, "group count does not divide the parts into groups of 2 or more");
	if (C != (G ? G + 1 : 1))
		return corrupt(err, 44, "classifier count does not match the groups");
	if (H > NL_MAX_HIST)
		return corrupt(err, 36, "more than 4096 history entries");
	if (!(isfinite(scale) && scale > 0))
		return corrupt(err, 40, "scale is not a finite positive number");
	if ((size_t)dim * 4 > len - NL_HEADER - 8)
		return corrupt(err, NL_HEADER, "blob too short for the shift vector");

	nl *r = ann_calloc(1, sizeof *r);
	if (!r)
		return ann_err(err, ANN_E_NOMEM, "nlsh router: out of memory");
	int rc = ANN_OK;
	r->kind = kind;
	r->d = dim;
	r->m = m;
	r->G = G;
	r->m2 = G ? m / G : 0;
	r->scale = scale;
	r->nhist = H;
	r->shift = ann_malloc(((size_t)dim + 1) * sizeof(float));
	r->hist = ann_malloc(((size_t)H + 1) * sizeof(ann_nlsh_round));
	r->sub = G ? ann_calloc(G, sizeof(ann_mlp *)) : NULL;
	if (!r->shift || !r->hist || (G && !r->sub)) {
		rc = ann_err(err, ANN_E_NOMEM, "nlsh router: out of memory loading %u groups", G);
		goto fail;
	}
	const uint8_t *p = blob + NL_HEADER, *end = blob + len - 8;
	for (uint32_t j = 0; j < dim; j++, p += 4) {
		r->shift[j] = ann_ldf32(p);
		if (!isfinite(r->shift[j])) {
			rc = corrupt(err, (size_t)(p - blob), "shift is not finite");
			goto fail;
		}
	}
	for (uint32_t i = 0; i < C; i++) {
		if ((size_t)(end - p) < 8) {
			rc = corrupt(err, (size_t)(p - blob), "truncated before a classifier");
			goto fail;
		}
		uint64_t ml = ann_ld64(p);
		if (ml > (uint64_t)(end - p - 8)) {
			rc = corrupt(err, (size_t)(p - blob), "classifier length runs past the end");
			goto fail;
		}
		ann_mlp *net;
		rc = ann_mlp_load(p + 8, (size_t)ml, &net, err);
		if (rc < 0) {
			if (rc != ANN_E_NOMEM)
				rc = ANN_E_CORRUPT;
			ann_err_prefix(err, rc, "nlsh router blob: classifier %u at offset %zu", i, (size_t)(p - blob));
			goto fail;
		}
		if (i == 0)
			r->top = net;
		else
			r->sub[i - 1] = net;
		uint32_t want = G ? (i == 0 ? G : m / G) : m;
		if (net->in_dim != dim || net->out_dim != want ||
		    net->layers[net->n_layers - 1].act != ANN_ACT_SOFTMAX) {
			rc = corrupt(err, (size_t)(p - blob), "classifier shape differs from the header's "
				     "(input d, output parts or groups, softmax last)");
			goto fail;
		}
		p += 8 + ml;
	}
	if ((size_t)(end - p) != (size_t)H * NL_HIST_BYTES) {
		rc = corrupt(err, (size_t)(p - blob), "history length differs from the header's");
		goto fail;
	}
	for (uint32_t h = 0; h < H; h++, p += NL_HIST_BYTES) {
		ann_nlsh_round *e = &r->hist[h];
		e->phase = ann_ld32(p);
		e->round = ann_ld32(p + 4);
		double v[6];
		for (int k = 0; k < 6; k++) {
			uint64_t u = ann_ld64(p + 8 + 8 * k);
			memcpy(&v[k], &u, 8);
			if (!isfinite(v[k])) {
				rc = corrupt(err, (size_t)(p - blob) + 8 + 8 * (size_t)k, "history value is not finite");
				goto fail;
			}
		}
		if (e->phase > ANN_NLSH_PHASE_SOFT) {
			rc = corrupt(err, (size_t)(p - blob), "history phase is not 0, 1 or 2");
			goto fail;
		}
		e->cut_frac = v[0];
		e->balance = v[1];
		e->accuracy = v[2];
		e->changed = v[3];
		e->loss = v[4];
		e->seconds = v[5];
	}
	return nl_wrap(r, metric, out, err);
fail:
	nl_free_impl(r);
	return rc;
}

