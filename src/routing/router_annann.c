/* SPDX-License-Identifier: MIT */
/*
 * router_annann.c: the ANNANN router (seed annann.md, docs/ROUTER_ANNANN.md).
 * Training: an MLP autoencoder on the normalised sample (MSE), k-means in the
 * embedded space, then Deep Embedded Clustering with a reconstruction term
 * (IDEC); the decoder is dropped afterwards. Index: a vector goes to the
 * cluster whose embedded centroid is nearest to its embedding. Query: embed,
 * HNSW over the embedded centroids for F * C candidates, re-rank them by the
 * distance to their original-space means, keep C. It owns no I/O.
 */
#include "router.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <xxhash.h>

#include "distance.h"
#include "hnsw.h"
#include "kmeans.h"
#include "nn.h"

/*
 * Blob, version 1.0 (all integers little-endian, floats IEEE-754 binary32):
 *
 *   OFFSET SIZE    FIELD
 *   0      8       magic 89 41 4E 4E 52 0D 0A 1A ("\x89ANNR\r\n\x1a")
 *   8      2       major version (1); readers refuse another major
 *   10     2       minor version (0)
 *   12     4       header bytes (64)
 *   16     4       d, input dimension (= the index's)
 *   20     4       e, embedding dimension (1..4096)
 *   24     4       K, clusters (1..2^30)
 *   28     4       metric of the original space (ann_metric, = the index's)
 *   32     4       alpha, Student-t degrees of freedom (f32, > 0)
 *   36     4       H, training-history entries (<= 4096)
 *   40     8       E, encoder blob bytes
 *   48     8       G, HNSW blob bytes
 *   56     8       total blob bytes, checksum included
 *   64     4d      shift: per-dimension mean of the sample (f32)
 *   64+4d  4       scale (f32, > 0): the encoder sees (x - shift) * scale
 *   ...    E       encoder MLP blob (nn.h), d -> e
 *   ...    G       HNSW blob (hnsw.h) over the K embedded centroids, L2
 *   ...    4Kd     original-space means of the clusters (f32, finite)
 *   ...    8K      vectors the build routed to each cluster (primary copies)
 *   ...    48H     history, per epoch: u32 phase (0 ae, 1 dec), u32 epoch,
 *                  f64 loss, f64 mse, f64 kl_start, f64 kl_end, f64 changed
 *   len-8  8       XXH64 (seed 0) of bytes [0, len - 8)
 */
#define ANR_MAGIC "\x89" "ANNR\r\n\x1a"
#define ANR_MAJOR 1u
#define ANR_MINOR 0u
#define ANR_HEADER 64u
#define ANR_HIST_BYTES 48u
#define ANR_MAX_HIST 4096u
#define ANR_MAX_EMBED 4096u
#define ANR_MAX_K (1u << 30)

#define TRAIN_BATCH 256u        /* rows per training mini-batch */
#define DEC_TILE ((size_t)1 << 22) /* bound on batch x K floats of a DEC step (16 MiB) */
#define EMBED_CHUNK 1024u       /* rows embedded per encoder call */
#define EXACT_MAX 16384u        /* clusters up to which assignment is exact */
#define ASSIGN_CANDIDATES 8u    /* nearest centroids considered for replicas */
#define KL_ROWS 32768u          /* sample rows the per-epoch KL figures are measured on */
#define AE_LR 1e-3f             /* Adam step of both stages */
#define DEC_LR 1e-3f

enum { PHASE_AE = 0, PHASE_DEC = 1 };

typedef struct anr_epoch {
	uint32_t phase;  /* PHASE_AE or PHASE_DEC */
	uint32_t epoch;  /* 0-based within the phase */
	double loss;     /* mean batch loss: MSE (ae), KL + w * MSE (dec) */
	double mse;      /* mean batch reconstruction MSE in the normalised space */
	double kl_start; /* dec: KL(P || Q) when P was refreshed (first KL_ROWS sample rows) */
	double kl_end;   /* dec: KL(P || Q) after the epoch, same P and rows */
	double changed;  /* dec: share of sample labels changed at the refresh */
} anr_epoch;

typedef struct anr {
	uint32_t d, e, k;
	float alpha;
	float *shift;      /* d: per-dimension sample mean */
	float scale;       /* 1 / RMS of the centred sample components */
	ann_mlp *enc;      /* d -> e */
	ann_hnsw *graph;   /* K embedded centroids, L2 */
	float *mu;         /* K x e, the graph's vectors contiguous (exact assignment) */
	float *means;      /* K x d original-space means */
	uint64_t *counts;  /* K: vectors routed at build (primary), 0 before */
	anr_epoch *hist;   /* nhist entries */
	uint32_t nhist;
	double *sums;      /* build only: K x d sums of observed vectors, NULL otherwise */
	uint64_t *obs;     /* build only: K observed counts */
	const ann_kernels *kern;
} anr;

typedef struct anr_cand {
	float dist;
	uint32_t id;
} anr_cand;

struct ann_router_ctx {
	ann_hnsw_ctx *hctx;
	float *xn;       /* d: the normalised query */
	float *z;        /* e: its embedding */
	float *scratch;  /* encoder scratch for one row */
	int32_t *ids;    /* K */
	float *dists;    /* K */
	anr_cand *cand;  /* K */
};

static anr *A(const ann_router *r)
{
	return r->impl;
}

/* ---- shared pieces ---------------------------------------------------------- */

static void anr_normalise(const anr *a, const float *x, size_t n, float *out)
{
	size_t d = a->d;
	for (size_t i = 0; i < n; i++)
		for (size_t j = 0; j < d; j++)
			out[i * d + j] = (x[i * d + j] - a->shift[j]) * a->scale;
}

static size_t anr_embed_scratch(const anr *a)
{
	return (size_t)EMBED_CHUNK * a->d + ann_mlp_infer_scratch(a->enc, EMBED_CHUNK);
}

/* z (n x e) = encoder((x - shift) * scale) in chunks; work holds anr_embed_scratch floats. */
static void anr_embed(const anr *a, const float *x, size_t n, float *z, float *work)
{
	float *xn = work, *scr = work + (size_t)EMBED_CHUNK * a->d;
	for (size_t i = 0; i < n; i += EMBED_CHUNK) {
		size_t m = ANN_MIN((size_t)EMBED_CHUNK, n - i);
		anr_normalise(a, x + i * a->d, m, xn);
		ann_mlp_infer(a->enc, xn, m, z + i * a->e, scr);
	}
}

static void anr_destroy(anr *a)
{
	if (!a)
		return;
	ann_free(a->shift);
	ann_mlp_free(a->enc);
	ann_hnsw_free(a->graph);
	ann_free(a->mu);
	ann_free(a->means);
	ann_free(a->counts);
	ann_free(a->hist);
	ann_free(a->sums);
	ann_free(a->obs);
	ann_free(a);
}

/* ---- ops ---------------------------------------------------------------------- */

static int anr_assign(const ann_router *r, const float *x, size_t n, const ann_assign_rule *sp, int threads,
		      uint32_t *parts, ann_error *err)
{
	const anr *a = A(r);
	uint32_t copies = sp->copies;
	size_t k = a->k, e = a->e;
	uint32_t m = copies > 1 ? ANN_MAX(copies, ASSIGN_CANDIDATES) : 1;
	m = (uint32_t)ANN_MIN((size_t)m, k);
	float *work = ann_malloc(anr_embed_scratch(a) * sizeof(float));
	float *z = ann_malloc(n * e * sizeof(float));
	uint32_t *ids = ann_malloc(n * m * sizeof(uint32_t));
	float *dists = ann_malloc(n * m * sizeof(float));
	int rc = ANN_OK;
	if (!work || !z || !ids || !dists) {
		rc = ann_err(err, ANN_E_NOMEM, "annann router: out of memory assigning %zu vectors", n);
		goto out;
	}
	anr_embed(a, x, n, z, work);
	if (k <= EXACT_MAX) {
		ANN_CHECK(rc, ann_nearest_centroids(z, n, e, a->mu, k, m, ANN_METRIC_L2, ANN_MAX(1, ANN_MIN(threads, 16)),
						    ids, dists, err));
	} else {
		ANN_CHECK(rc, ann_hnsw_nearest_rows(a->graph, z, n, m, ids, dists, err));
	}
	rc = ann_router_closure_rows(ids, dists, n, m, copies, sp->eps, ANN_METRIC_L2, parts, "annann", err);
fail:
out:
	ann_free(work);
	ann_free(z);
	ann_free(ids);
	ann_free(dists);
	return rc;
}

static void anr_ctx_free(ann_router_ctx *c)
{
	if (!c)
		return;
	ann_hnsw_ctx_free(c->hctx);
	ann_free(c->xn);
	ann_free(c->z);
	ann_free(c->scratch);
	ann_free(c->ids);
	ann_free(c->dists);
	ann_free(c->cand);
	ann_free(c);
}

static int anr_ctx_new(const ann_router *r, ann_router_ctx **out, ann_error *err)
{
	const anr *a = A(r);
	ann_router_ctx *c = ann_calloc(1, sizeof *c);
	if (!c)
		return ann_err(err, ANN_E_NOMEM, "annann router: out of memory for a context");
	c->xn = ann_malloc(a->d * sizeof(float));
	c->z = ann_malloc(a->e * sizeof(float));
	c->scratch = ann_malloc(ann_mlp_infer_scratch(a->enc, 1) * sizeof(float));
	c->ids = ann_malloc(a->k * sizeof(int32_t));
	c->dists = ann_malloc(a->k * sizeof(float));
	c->cand = ann_malloc(a->k * sizeof(anr_cand));
	if (!c->xn || !c->z || !c->scratch || !c->ids || !c->dists || !c->cand) {
		anr_ctx_free(c);
		return ann_err(err, ANN_E_NOMEM, "annann router: out of memory for a context");
	}
	int rc = ann_hnsw_ctx_new(&c->hctx, err);
	if (rc < 0) {
		anr_ctx_free(c);
		return rc;
	}
	*out = c;
	return ANN_OK;
}

static int cand_cmp(const void *pa, const void *pb)
{
	const anr_cand *x = pa, *y = pb;
	if (x->dist != y->dist)
		return x->dist < y->dist ? -1 : 1;
	return (x->id > y->id) - (x->id < y->id);
}

/* The three stages: embed q; HNSW over the embedded centroids gives
 * min(K, F * C) candidates (all K, exactly, when F * C >= K); the candidates
 * are ranked by the distance from q to their original-space means. */
static int anr_route(const ann_router *r, ann_router_ctx *c, const float *q, const ann_search_opts *o,
		     uint32_t *parts, ann_error *err)
{
	const anr *a = A(r);
	size_t k = a->k, np = ANN_MIN((size_t)o->nprobe, k);
	size_t f = o->candidates_factor ? o->candidates_factor : ANN_DEFAULT_CANDIDATES_FACTOR;
	size_t m = np * f >= k ? k : np * f; /* np <= 2^30, f < 2^32: no overflow */
	size_t got;
	if (np == 0)
		return 0;
	if (m == k) {
		for (size_t j = 0; j < k; j++)
			c->ids[j] = (int32_t)j;
		got = k;
	} else {
		anr_normalise(a, q, 1, c->xn);
		ann_mlp_infer(a->enc, c->xn, 1, c->z, c->scratch);
		size_t ef = ANN_MAX((size_t)o->hnsw_ef, m);
		int found = ann_hnsw_search(a->graph, c->hctx, c->z, m, ef, c->ids, c->dists, err);
		if (found < 0)
			return found;
		got = (size_t)found;
	}
	for (size_t j = 0; j < got; j++) {
		uint32_t id = (uint32_t)c->ids[j];
		c->cand[j].id = id;
		c->cand[j].dist = ann_distance_f32(a->kern, r->metric, q, a->means + (size_t)id * a->d, a->d);
	}
	qsort(c->cand, got, sizeof *c->cand, cand_cmp);
	size_t out = ANN_MIN(np, got);
	for (size_t j = 0; j < out; j++)
		parts[j] = c->cand[j].id;
	return (int)out;
}

static size_t anr_ram(const ann_router *r)
{
	const anr *a = A(r);
	return sizeof(anr) + a->d * sizeof(float) + ann_mlp_bytes(a->enc) + ann_hnsw_bytes(a->graph) +
	       (size_t)a->k * a->e * sizeof(float) + (size_t)a->k * a->d * sizeof(float) +
	       (size_t)a->k * sizeof(uint64_t) + (size_t)a->nhist * sizeof(anr_epoch);
}

static bool blob_size(const anr *a, size_t enc_len, size_t g_len, size_t *out)
{
	size_t kd, t = ANR_HEADER + 4 * ((size_t)a->d + 1) + 8;
	if (!ann_mul_ok((size_t)a->k, (size_t)a->d * 4 + 8, &kd))
		return false;
	t += (size_t)a->nhist * ANR_HIST_BYTES;
	if (t + kd < t || t + kd + enc_len < enc_len || t + kd + enc_len + g_len < g_len)
		return false;
	*out = t + kd + enc_len + g_len;
	return true;
}

static void st_f64(uint8_t *p, double v)
{
	uint64_t u;
	memcpy(&u, &v, 8);
	ann_st64(p, u);
}

static double ld_f64(const uint8_t *p)
{
	uint64_t u = ann_ld64(p);
	double v;
	memcpy(&v, &u, 8);
	return v;
}

static int anr_save(const ann_router *r, uint8_t **blob, size_t *len, ann_error *err)
{
	const anr *a = A(r);
	uint8_t *enc = NULL, *b = NULL;
	size_t enc_len, g_len = ann_hnsw_blob_bytes(a->graph), total;
	ANN_TRY(ann_mlp_save(a->enc, &enc, &enc_len, err));
	int rc = ANN_OK;
	if (!blob_size(a, enc_len, g_len, &total) || !(b = ann_malloc(total))) {
		rc = ann_err(err, ANN_E_NOMEM, "annann router: out of memory for a blob");
		goto fail;
	}
	memset(b, 0, ANR_HEADER);
	memcpy(b, ANR_MAGIC, 8);
	ann_st16(b + 8, ANR_MAJOR);
	ann_st16(b + 10, ANR_MINOR);
	ann_st32(b + 12, ANR_HEADER);
	ann_st32(b + 16, a->d);
	ann_st32(b + 20, a->e);
	ann_st32(b + 24, a->k);
	ann_st32(b + 28, (uint32_t)r->metric);
	ann_stf32(b + 32, a->alpha);
	ann_st32(b + 36, a->nhist);
	ann_st64(b + 40, enc_len);
	ann_st64(b + 48, g_len);
	ann_st64(b + 56, total);
	uint8_t *p = b + ANR_HEADER;
	for (uint32_t j = 0; j < a->d; j++, p += 4)
		ann_stf32(p, a->shift[j]);
	ann_stf32(p, a->scale);
	p += 4;
	memcpy(p, enc, enc_len);
	p += enc_len;
	ANN_CHECK(rc, ann_hnsw_save(a->graph, p, g_len, err));
	p += g_len;
	for (size_t i = 0; i < (size_t)a->k * a->d; i++, p += 4)
		ann_stf32(p, a->means[i]);
	for (uint32_t j = 0; j < a->k; j++, p += 8)
		ann_st64(p, a->counts[j]);
	for (uint32_t h = 0; h < a->nhist; h++, p += ANR_HIST_BYTES) {
		const anr_epoch *ep = &a->hist[h];
		ann_st32(p, ep->phase);
		ann_st32(p + 4, ep->epoch);
		st_f64(p + 8, ep->loss);
		st_f64(p + 16, ep->mse);
		st_f64(p + 24, ep->kl_start);
		st_f64(p + 32, ep->kl_end);
		st_f64(p + 40, ep->changed);
	}
	ann_st64(p, XXH64(b, total - 8, 0));
	ann_free(enc);
	*blob = b;
	*len = total;
	return ANN_OK;
fail:
	ann_free(enc);
	ann_free(b);
	return rc;
}

/* Accumulates original-space sums per primary cluster (K x d doubles and K
 * counts, allocated at the first chunk and freed by finish). */
static int anr_observe(ann_router *r, const float *x, size_t n, const uint32_t *parts, ann_error *err)
{
	anr *a = A(r);
	size_t d = a->d;
	if (!a->sums) {
		a->sums = ann_calloc((size_t)a->k * d, sizeof(double));
		a->obs = ann_calloc(a->k, sizeof(uint64_t));
		if (!a->sums || !a->obs) {
			ann_free(a->sums);
			ann_free(a->obs);
			a->sums = NULL;
			a->obs = NULL;
			return ann_err(err, ANN_E_NOMEM, "annann router: out of memory for %u x %zu cluster sums",
				       a->k, d);
		}
	}
	for (size_t i = 0; i < n; i++) {
		uint32_t p = parts[i];
		if (p >= a->k)
			return ann_err(err, ANN_E_INVAL, "annann router: observed partition %u of %u", p, a->k);
		double *s = a->sums + (size_t)p * d;
		for (size_t j = 0; j < d; j++)
			s[j] += x[i * d + j];
		a->obs[p]++;
	}
	return ANN_OK;
}

/* Clusters that received vectors take the mean of them; the others keep the
 * mean they got at training (the sample's, or the decoded centroid). */
static int anr_finish(ann_router *r, ann_error *err)
{
	(void)err;
	anr *a = A(r);
	if (!a->sums)
		return ANN_OK;
	size_t d = a->d;
	for (uint32_t p = 0; p < a->k; p++) {
		a->counts[p] = a->obs[p];
		if (!a->obs[p])
			continue;
		for (size_t j = 0; j < d; j++)
			a->means[(size_t)p * d + j] = (float)(a->sums[(size_t)p * d + j] / (double)a->obs[p]);
	}
	ann_free(a->sums);
	ann_free(a->obs);
	a->sums = NULL;
	a->obs = NULL;
	return ANN_OK;
}

static void anr_free_router(ann_router *r)
{
	anr_destroy(A(r));
	ann_free(r);
}

static const ann_router_ops anr_ops = {
	.kind = ANN_ROUTER_ANNANN,
	.assign = anr_assign,
	.ctx_new = anr_ctx_new,
	.ctx_free = anr_ctx_free,
	.route = anr_route,
	.ram_bytes = anr_ram,
	.save = anr_save,
	.observe = anr_observe,
	.finish = anr_finish,
	.free = anr_free_router,
};

/* Takes a (graph and encoder set): copies the graph's vectors into mu and
 * wraps the router. Frees a on failure. */
static int anr_wrap(anr *a, ann_metric metric, ann_router **out, ann_error *err)
{
	ann_router *r = ann_calloc(1, sizeof *r);
	if (!a->mu)
		a->mu = ann_malloc((size_t)a->k * a->e * sizeof(float));
	if (!r || !a->mu) {
		ann_free(r);
		anr_destroy(a);
		return ann_err(err, ANN_E_NOMEM, "annann router: out of memory");
	}
	for (uint32_t j = 0; j < a->k; j++)
		ann_hnsw_vector_get(a->graph, j, a->mu + (size_t)j * a->e);
	a->kern = ann_kernels_best();
	r->ops = &anr_ops;
	r->impl = a;
	r->nparts = a->k;
	r->dim = a->d;
	r->metric = metric;
	*out = r;
	return ANN_OK;
}

/* ---- training ------------------------------------------------------------------ */

typedef struct trainer {
	const ann_router_env *env;
	const ann_annann_router_opts *o;
	const float *x; /* the sample, n x d */
	size_t n, d, e, k, batch;
	anr *a;
	ann_mlp *dec;
	ann_mlp_ws *wse, *wsd;
	ann_adam *ade, *add, *adm;
	ann_batcher bt;
	ann_rng rng;
	float *xb;     /* batch x d: normalised inputs */
	float *gy;     /* batch x d: reconstruction gradient */
	float *dz;     /* batch x e: gradient at the embedding */
	float *dzk;    /* batch x e: DEC gradient at the embedding */
	float *dmu;    /* K x e */
	float *zb;     /* batch x e: refresh-time embeddings of the batch */
	float *pb;     /* batch x K: targets of the batch */
	float *work;   /* anr_embed_scratch */
	float *z;      /* n x e: current embeddings of the sample */
	float *zr;     /* n x e: embeddings at the last refresh */
	float *mur;    /* K x e: centroids at the last refresh */
	float *qc;     /* chunk x K */
	double *f;     /* K: sum_i q_ij at the last refresh */
	double *fnew;  /* K */
	uint32_t *lab; /* n: labels at the last refresh */
	size_t chunk;  /* rows of qc */
} trainer;

static void trainer_free(trainer *t)
{
	ann_mlp_free(t->dec);
	ann_mlp_ws_free(t->wse);
	ann_mlp_ws_free(t->wsd);
	ann_adam_free(t->ade);
	ann_adam_free(t->add);
	ann_adam_free(t->adm);
	ann_batcher_destroy(&t->bt);
	ann_free(t->xb);
	ann_free(t->gy);
	ann_free(t->dz);
	ann_free(t->dzk);
	ann_free(t->dmu);
	ann_free(t->zb);
	ann_free(t->pb);
	ann_free(t->work);
	ann_free(t->z);
	ann_free(t->zr);
	ann_free(t->mur);
	ann_free(t->qc);
	ann_free(t->f);
	ann_free(t->fnew);
	ann_free(t->lab);
}

static void progress(const trainer *t, const char *phase, uint64_t done, uint64_t total)
{
	if (t->env->progress)
		t->env->progress(t->env->progress_ctx, phase, done, total);
}

static int push_hist(anr *a, const anr_epoch *ep, ann_error *err)
{
	if (a->nhist >= ANR_MAX_HIST)
		return ANN_OK; /* the history is bounded; later epochs are not recorded */
	anr_epoch *h = ann_realloc(a->hist, (a->nhist + 1) * sizeof *h);
	if (!h)
		return ann_err(err, ANN_E_NOMEM, "annann router: out of memory for the training history");
	a->hist = h;
	h[a->nhist++] = *ep;
	return ANN_OK;
}

/* Per-dimension mean and one global scale: the encoder sees (x - mean) *
 * scale, components of RMS 1, and L2 geometry is kept up to that factor. */
static int normalisation(trainer *t, ann_error *err)
{
	anr *a = t->a;
	size_t n = t->n, d = t->d;
	double *m = ann_calloc(d, sizeof(double));
	if (!m)
		return ann_err(err, ANN_E_NOMEM, "annann router: out of memory");
	for (size_t i = 0; i < n; i++)
		for (size_t j = 0; j < d; j++)
			m[j] += t->x[i * d + j];
	for (size_t j = 0; j < d; j++)
		a->shift[j] = (float)(m[j] / (double)n);
	double ss = 0;
	for (size_t i = 0; i < n; i++)
		for (size_t j = 0; j < d; j++) {
			double v = (double)t->x[i * d + j] - a->shift[j];
			ss += v * v;
		}
	ann_free(m);
	double rms = sqrt(ss / ((double)n * (double)d));
	a->scale = rms > 0 && isfinite(rms) ? (float)(1.0 / rms) : 1.0f;
	if (!isfinite(a->scale) || a->scale <= 0)
		a->scale = 1.0f;
	return ANN_OK;
}

/* One autoencoder step on the batch idx: forward both networks, MSE
 * (weighted by w) into gy, backward of the decoder into dz. Returns the MSE. */
static double ae_forward_backward(trainer *t, const uint32_t *idx, size_t nb, float w, ann_error *err,
				  int *rc)
{
	const float *z, *y;
	ann_gather_rows(t->x, t->d, idx, nb, t->xb);
	anr_normalise(t->a, t->xb, nb, t->xb);
	*rc = ann_mlp_forward(t->a->enc, t->wse, t->xb, nb, &z, err);
	if (*rc < 0)
		return 0;
	*rc = ann_mlp_forward(t->dec, t->wsd, z, nb, &y, err);
	if (*rc < 0)
		return 0;
	double mse = ann_loss_mse(y, t->xb, nb, t->d, t->gy);
	if (w != 1.0f)
		for (size_t i = 0; i < nb * t->d; i++)
			t->gy[i] *= w;
	ann_mlp_backward(t->dec, t->wsd, t->gy, t->dz, false);
	return mse;
}

static int stage_ae(trainer *t, ann_error *err)
{
	anr *a = t->a;
	uint32_t epochs = t->o->ae_epochs;
	if (epochs) /* starts the phase's clock in the caller */
		progress(t, "ae", 0, epochs);
	for (uint32_t ep = 0; ep < epochs; ep++) {
		ann_batcher_shuffle(&t->bt, &t->rng);
		const uint32_t *idx;
		size_t nb;
		double sum = 0;
		int rc = ANN_OK;
		while ((nb = ann_batcher_next(&t->bt, &idx)) > 0) {
			double mse = ae_forward_backward(t, idx, nb, 1.0f, err, &rc);
			if (rc < 0)
				return rc;
			ann_mlp_backward(a->enc, t->wse, t->dz, NULL, false);
			ann_adam_step(t->ade, a->enc->params, ann_mlp_ws_grad(t->wse));
			ann_adam_step(t->add, t->dec->params, ann_mlp_ws_grad(t->wsd));
			sum += mse * (double)nb;
		}
		anr_epoch rec = {.phase = PHASE_AE, .epoch = ep, .loss = sum / (double)t->n, .mse = sum / (double)t->n};
		ANN_TRY(push_hist(a, &rec, err));
		ann_router_log(t->env, "annann ae epoch %u/%u: mse %.6f", ep + 1, epochs, rec.mse);
		progress(t, "ae", ep + 1, epochs);
	}
	return ANN_OK;
}

/* Rows [i, i + m) of P from the refresh-time embeddings zr and centroids
 * mur and the refresh-time totals f, into p (m x K). */
static void targets_rows(const trainer *t, const float *zr, size_t m, float *p)
{
	ann_dec_soft_assign(zr, m, t->e, t->mur, t->k, t->a->alpha, p);
	ann_dec_target_rows(p, m, t->k, t->f, p);
}

static uint32_t argmax_row(const float *q, size_t k)
{
	uint32_t b = 0;
	for (uint32_t j = 1; j < k; j++)
		if (q[j] > q[b])
			b = j;
	return b;
}

/* KL(P || Q), P from the refresh (zr, mur, f), Q from the current
 * embeddings z and centroids mu, over the first KL_ROWS rows of the sample
 * (a uniform subsample: the build draws the sample uniformly), in
 * batch-sized pieces (qc, pb). A diagnostic: training does not use it. */
static double kl_over_sample(trainer *t)
{
	anr *a = t->a;
	size_t n = ANN_MIN(t->n, (size_t)KL_ROWS);
	double kl = 0;
	for (size_t i = 0; i < n; i += t->batch) {
		size_t m = ANN_MIN(t->batch, n - i);
		ann_dec_soft_assign(t->z + i * t->e, m, t->e, a->mu, t->k, a->alpha, t->qc);
		targets_rows(t, t->zr + i * t->e, m, t->pb);
		kl += ann_loss_kl(t->pb, t->qc, m, t->k, NULL) * (double)m;
	}
	return kl / (double)n;
}

/* Refresh: embeds the sample with the current encoder, takes Q against the
 * current centroids, and makes them the new P's source (zr, mur, f). Sets
 * *changed to the share of labels (argmax q) that moved. */
static void refresh(trainer *t, double *changed)
{
	anr *a = t->a;
	size_t moved = 0;
	memset(t->fnew, 0, t->k * sizeof(double));
	for (size_t i = 0; i < t->n; i += t->batch) {
		size_t m = ANN_MIN(t->batch, t->n - i);
		ann_dec_soft_assign(t->z + i * t->e, m, t->e, a->mu, t->k, a->alpha, t->qc);
		ann_dec_freq_add(t->qc, m, t->k, t->fnew);
		for (size_t r = 0; r < m; r++) {
			uint32_t l = argmax_row(t->qc + r * t->k, t->k);
			moved += l != t->lab[i + r];
			t->lab[i + r] = l;
		}
	}
	memcpy(t->f, t->fnew, t->k * sizeof(double));
	memcpy(t->zr, t->z, t->n * t->e * sizeof(float));
	memcpy(t->mur, a->mu, t->k * t->e * sizeof(float));
	*changed = (double)moved / (double)t->n;
}

static void log_dec(const trainer *t, const anr_epoch *r, uint32_t epochs)
{
	ann_router_log(t->env, "annann dec epoch %u/%u: loss %.6f (KL %.6f -> %.6f, mse %.6f), labels changed %.2f%%",
		       r->epoch + 1, epochs, r->loss, r->kl_start, r->kl_end, r->mse, 100.0 * r->changed);
}

static int stage_dec(trainer *t, ann_error *err)
{
	anr *a = t->a;
	uint32_t epochs = t->o->dec_epochs;
	float w = (float)t->o->recon_weight;
	anr_epoch rec = {0};
	if (epochs)
		progress(t, "dec", 0, epochs);
	for (uint32_t ep = 0; ep < epochs; ep++) {
		if (ep > 0) {
			anr_embed(a, t->x, t->n, t->z, t->work);
			rec.kl_end = kl_over_sample(t);
			ANN_TRY(push_hist(a, &rec, err));
			log_dec(t, &rec, epochs);
		}
		memset(&rec, 0, sizeof rec);
		rec.phase = PHASE_DEC;
		rec.epoch = ep;
		refresh(t, &rec.changed);
		rec.kl_start = kl_over_sample(t);
		ann_batcher_shuffle(&t->bt, &t->rng);
		const uint32_t *idx;
		size_t nb;
		double sum_mse = 0, sum_kl = 0;
		int rc = ANN_OK;
		while ((nb = ann_batcher_next(&t->bt, &idx)) > 0) {
			double mse = ae_forward_backward(t, idx, nb, w, err, &rc), kl;
			if (rc < 0)
				return rc;
			ann_gather_rows(t->zr, t->e, idx, nb, t->zb);
			targets_rows(t, t->zb, nb, t->pb);
			const float *z = ann_mlp_ws_layer(t->wse, a->enc->n_layers - 1);
			ANN_TRY(ann_dec_grad(z, nb, t->e, a->mu, t->k, a->alpha, t->pb, NULL, t->dzk, t->dmu, &kl, err));
			for (size_t i = 0; i < nb * t->e; i++)
				t->dz[i] += t->dzk[i];
			ann_mlp_backward(a->enc, t->wse, t->dz, NULL, false);
			ann_adam_step(t->ade, a->enc->params, ann_mlp_ws_grad(t->wse));
			if (w > 0)
				ann_adam_step(t->add, t->dec->params, ann_mlp_ws_grad(t->wsd));
			ann_adam_step(t->adm, a->mu, t->dmu);
			sum_mse += mse * (double)nb;
			sum_kl += kl * (double)nb;
		}
		rec.mse = sum_mse / (double)t->n;
		rec.loss = sum_kl / (double)t->n + w * rec.mse;
		progress(t, "dec", ep + 1, epochs);
	}
	anr_embed(a, t->x, t->n, t->z, t->work);
	if (epochs > 0) {
		rec.kl_end = kl_over_sample(t);
		ANN_TRY(push_hist(a, &rec, err));
		log_dec(t, &rec, epochs);
	}
	return ANN_OK;
}

/* Initial original-space means: of the sample's members of each cluster
 * (nearest embedded centroid, t->z current), else the decoded centroid. */
static int initial_means(trainer *t, ann_error *err)
{
	anr *a = t->a;
	size_t n = t->n, d = t->d, k = t->k;
	double *s = ann_calloc(k * d, sizeof(double));
	uint64_t *cnt = ann_calloc(k, sizeof(uint64_t));
	uint32_t *lab = t->lab;
	int rc = ANN_OK;
	if (!s || !cnt) {
		rc = ann_err(err, ANN_E_NOMEM, "annann router: out of memory for %zu x %zu means", k, d);
		goto fail;
	}
	ANN_CHECK(rc, ann_nearest_centroids(t->z, n, t->e, a->mu, k, 1, ANN_METRIC_L2,
					    ANN_MAX(1, ANN_MIN(t->env->threads, 16)), lab, NULL, err));
	for (size_t i = 0; i < n; i++) {
		double *r = s + (size_t)lab[i] * d;
		for (size_t j = 0; j < d; j++)
			r[j] += t->x[i * d + j];
		cnt[lab[i]]++;
	}
	for (size_t j = 0; j < k; j++) {
		float *m = a->means + j * d;
		if (cnt[j]) {
			for (size_t c = 0; c < d; c++)
				m[c] = (float)(s[j * d + c] / (double)cnt[j]);
		} else {
			/* decoder(mu_j), back in the original space */
			ann_mlp_infer(t->dec, a->mu + j * t->e, 1, m, t->work);
			for (size_t c = 0; c < d; c++)
				m[c] = m[c] / a->scale + a->shift[c];
		}
	}
fail:
	ann_free(s);
	ann_free(cnt);
	return rc;
}

static int check_opts(const ann_annann_router_opts *o, size_t n, size_t d, uint32_t k, ann_error *err)
{
	if (k == 0 || k > n || k > ANR_MAX_K)
		return ann_err(err, ANN_E_INVAL, "annann router: %u clusters need at least as many sample vectors "
			       "(the sample has %zu) and at most 2^30", k, n);
	if (d == 0 || d > ANN_MLP_MAX_DIM)
		return ann_err(err, ANN_E_INVAL, "annann router: dimension %zu out of range", d);
	if (o->embed_dim > ANR_MAX_EMBED)
		return ann_err(err, ANN_E_INVAL, "annann router: embedding dimension %u must be within 1..%u",
			       o->embed_dim, ANR_MAX_EMBED);
	if (!(o->dec_alpha > 0) || !isfinite(o->dec_alpha) || o->dec_alpha > 1e6)
		return ann_err(err, ANN_E_INVAL, "annann router: dec alpha %g must be a positive number", o->dec_alpha);
	if (!(o->recon_weight >= 0) || !isfinite(o->recon_weight))
		return ann_err(err, ANN_E_INVAL, "annann router: reconstruction weight %g must be >= 0",
			       o->recon_weight);
	if (n > UINT32_MAX)
		return ann_err(err, ANN_E_INVAL, "annann router: a sample of %zu vectors is too large", n);
	return ANN_OK;
}

int ann_router_annann_train(const ann_router_env *env, const ann_annann_router_opts *o, const float *sample,
			    size_t n, size_t d, uint32_t nparts, ann_router **out, ann_error *err)
{
	*out = NULL;
	ANN_TRY(check_opts(o, n, d, nparts, err));
	trainer t;
	memset(&t, 0, sizeof t);
	t.env = env;
	t.o = o;
	t.x = sample;
	t.n = n;
	t.d = d;
	t.e = o->embed_dim ? o->embed_dim : 32;
	t.k = nparts;
	/* DEC steps hold batch x K floats several times: bounded by DEC_TILE. */
	t.batch = ANN_MAX((size_t)16, ANN_MIN((size_t)TRAIN_BATCH, DEC_TILE / t.k));
	int rc = ANN_OK;
	anr *a = ann_calloc(1, sizeof *a);
	if (!a)
		return ann_err(err, ANN_E_NOMEM, "annann router: out of memory");
	t.a = a;
	a->d = (uint32_t)d;
	a->e = (uint32_t)t.e;
	a->k = nparts;
	a->alpha = (float)o->dec_alpha;
	a->shift = ann_malloc(d * sizeof(float));
	a->means = ann_malloc((size_t)nparts * d * sizeof(float));
	a->counts = ann_calloc(nparts, sizeof(uint64_t));
	a->mu = ann_malloc((size_t)nparts * t.e * sizeof(float));
	if (!a->shift || !a->means || !a->counts || !a->mu) {
		rc = ann_err(err, ANN_E_NOMEM, "annann router: out of memory for %u clusters", nparts);
		goto fail;
	}
	ANN_CHECK(rc, normalisation(&t, err));

	/* networks: encoder d -> hidden... -> e (ReLU, linear output), decoder mirrored */
	ann_rng root, init;
	ann_rng_seed(&root, env->seed);
	ann_rng_fork(&root, 1, &init);
	ann_rng_fork(&root, 2, &t.rng);
	ann_mlp_spec es, ds;
	memset(&es, 0, sizeof es);
	es.in_dim = (uint32_t)d;
	es.out_dim = (uint32_t)t.e;
	for (int i = 0; i < 4 && o->hidden[i]; i++)
		es.hidden[es.n_hidden++] = o->hidden[i];
	es.hidden_act = ANN_ACT_RELU;
	es.out_act = ANN_ACT_LINEAR;
	ann_mlp_spec_mirror(&es, ANN_ACT_LINEAR, &ds);
	ANN_CHECK(rc, ann_mlp_new(&es, &init, &a->enc, err));
	ANN_CHECK(rc, ann_mlp_new(&ds, &init, &t.dec, err));
	ANN_CHECK(rc, ann_mlp_ws_new(a->enc, t.batch, &t.wse, err));
	ANN_CHECK(rc, ann_mlp_ws_new(t.dec, t.batch, &t.wsd, err));
	ann_adam_opts ao;
	ann_adam_opts_init(&ao);
	ao.lr = AE_LR;
	ANN_CHECK(rc, ann_adam_new(a->enc->n_params, &ao, &t.ade, err));
	ANN_CHECK(rc, ann_adam_new(t.dec->n_params, &ao, &t.add, err));
	ao.lr = DEC_LR;
	ANN_CHECK(rc, ann_adam_new((size_t)t.k * t.e, &ao, &t.adm, err));
	ANN_CHECK(rc, ann_batcher_init(&t.bt, n, t.batch, err));
	size_t ws_floats = ANN_MAX(anr_embed_scratch(a), d + ann_mlp_infer_scratch(t.dec, 1));
	t.xb = ann_malloc(t.batch * d * sizeof(float));
	t.gy = ann_malloc(t.batch * d * sizeof(float));
	t.dz = ann_malloc(t.batch * t.e * sizeof(float));
	t.dzk = ann_malloc(t.batch * t.e * sizeof(float));
	t.zb = ann_malloc(t.batch * t.e * sizeof(float));
	t.dmu = ann_malloc(t.k * t.e * sizeof(float));
	t.mur = ann_malloc(t.k * t.e * sizeof(float));
	t.pb = ann_malloc(t.batch * t.k * sizeof(float));
	t.qc = ann_malloc(t.batch * t.k * sizeof(float));
	t.work = ann_malloc(ws_floats * sizeof(float));
	t.z = ann_malloc(n * t.e * sizeof(float));
	t.zr = ann_malloc(n * t.e * sizeof(float));
	t.f = ann_calloc(t.k, sizeof(double));
	t.fnew = ann_calloc(t.k, sizeof(double));
	t.lab = ann_malloc(n * sizeof(uint32_t));
	if (!t.xb || !t.gy || !t.dz || !t.dzk || !t.zb || !t.dmu || !t.mur || !t.pb || !t.qc || !t.work || !t.z ||
	    !t.zr || !t.f || !t.fnew || !t.lab) {
		rc = ann_err(err, ANN_E_NOMEM, "annann router: out of memory for training buffers (sample %zu, "
			     "clusters %zu)", n, t.k);
		goto fail;
	}

	/* stage 1: autoencoder */
	ANN_CHECK(rc, stage_ae(&t, err));

	/* k-means in the embedded space */
	anr_embed(a, t.x, n, t.z, t.work);
	ann_kmeans_opts ko;
	ann_kmeans_opts_init(&ko);
	ko.k = t.k;
	ko.max_iter = o->kmeans_iters ? o->kmeans_iters : 20;
	ko.seed = env->seed;
	ko.metric = ANN_METRIC_L2;
	ko.threads = ANN_MAX(1, ANN_MIN(env->threads, 16));
	ko.progress = env->progress;
	ko.progress_ctx = env->progress_ctx;
	if (o->balance > 0) /* --balance caps the embedded clusters of the sample, as for the kmeans router */
		ko.max_size = (size_t)(o->balance * (double)n / (double)t.k) + 1;
	ANN_CHECK(rc, ann_kmeans(t.z, n, t.e, &ko, a->mu, t.lab, NULL, err));

	/* stage 2: DEC with reconstruction */
	ANN_CHECK(rc, stage_dec(&t, err));
	/* --balance after DEC: DEC's centroid updates leave clusters empty and
	 * others huge (docs/ROUTER_ANNANN.md), so the centroids are refitted by
	 * capped k-means in the embedding DEC trained (the encoder is kept). */
	if (o->balance > 0 && o->dec_epochs > 0)
		ANN_CHECK(rc, ann_kmeans(t.z, n, t.e, &ko, a->mu, t.lab, NULL, err));
	ANN_CHECK(rc, initial_means(&t, err));

	/* HNSW over the embedded centroids; the decoder is not kept */
	ANN_CHECK(rc, ann_hnsw_create(t.e, ANN_METRIC_L2, o->hnsw_m ? o->hnsw_m : 16,
				      o->hnsw_ef_construction ? o->hnsw_ef_construction : 200, env->seed, &a->graph,
				      err));
	ANN_CHECK(rc, ann_hnsw_build(a->graph, a->mu, t.k, ANN_MAX(1, ANN_MIN(env->threads, 64)), env->progress,
				     env->progress_ctx, err));
	trainer_free(&t);
	return anr_wrap(a, env->metric, out, err);
fail:
	trainer_free(&t);
	anr_destroy(a);
	return rc;
}

/* ---- loading -------------------------------------------------------------------- */

static int corrupt(ann_error *err, size_t off, const char *what)
{
	return ann_err(err, ANN_E_CORRUPT, "annann router blob: offset %zu: %s", off, what);
}

int ann_router_annann_load(const uint8_t *blob, size_t len, uint32_t dim, ann_metric metric, ann_router **out,
			   ann_error *err)
{
	*out = NULL;
	if (len < 12)
		return corrupt(err, len, "truncated before the version");
	if (memcmp(blob, ANR_MAGIC, 8) != 0)
		return ann_err(err, ANN_E_FORMAT, "annann router blob: bad magic");
	uint16_t major = ann_ld16(blob + 8);
	if (major != ANR_MAJOR)
		return ann_err(err, ANN_E_FORMAT, "annann router blob: format version %u.%u, this library reads %u.x",
			       major, ann_ld16(blob + 10), ANR_MAJOR);
	if (len < ANR_HEADER + 8)
		return corrupt(err, len, "truncated header");
	if (ann_ld64(blob + 56) != len)
		return corrupt(err, 56, "blob length differs from the stored length");
	if (ann_ld64(blob + len - 8) != XXH64(blob, len - 8, 0))
		return corrupt(err, len - 8, "checksum mismatch");
	if (ann_ld32(blob + 12) != ANR_HEADER)
		return corrupt(err, 12, "header size is not 64");
	anr *a = ann_calloc(1, sizeof *a);
	if (!a)
		return ann_err(err, ANN_E_NOMEM, "annann router: out of memory");
	int rc = ANN_OK;
	a->d = ann_ld32(blob + 16);
	a->e = ann_ld32(blob + 20);
	a->k = ann_ld32(blob + 24);
	uint32_t bm = ann_ld32(blob + 28);
	a->alpha = ann_ldf32(blob + 32);
	a->nhist = ann_ld32(blob + 36);
	uint64_t enc_len = ann_ld64(blob + 40), g_len = ann_ld64(blob + 48);
	size_t total;
	if (a->d != dim || a->d == 0) {
		rc = corrupt(err, 16, "dimension differs from the index's");
		goto fail;
	}
	if (bm != (uint32_t)metric) {
		rc = corrupt(err, 28, "metric differs from the index's");
		goto fail;
	}
	if (a->e == 0 || a->e > ANR_MAX_EMBED || a->k == 0 || a->k > ANR_MAX_K || !(a->alpha > 0) ||
	    !isfinite(a->alpha) || a->nhist > ANR_MAX_HIST) {
		rc = corrupt(err, 20, "embedding dimension, clusters, alpha or history out of range");
		goto fail;
	}
	if (enc_len > len || g_len > len || !blob_size(a, (size_t)enc_len, (size_t)g_len, &total) || total != len) {
		rc = corrupt(err, 40, "section sizes do not add up to the blob length");
		goto fail;
	}
	const uint8_t *p = blob + ANR_HEADER;
	a->shift = ann_malloc((size_t)a->d * sizeof(float));
	a->means = ann_malloc((size_t)a->k * a->d * sizeof(float));
	a->counts = ann_malloc((size_t)a->k * sizeof(uint64_t));
	a->hist = ann_malloc((size_t)a->nhist * sizeof(anr_epoch));
	if (!a->shift || !a->means || !a->counts || !a->hist) {
		rc = ann_err(err, ANN_E_NOMEM, "annann router: out of memory loading %u clusters", a->k);
		goto fail;
	}
	for (uint32_t j = 0; j < a->d; j++, p += 4) {
		a->shift[j] = ann_ldf32(p);
		if (!isfinite(a->shift[j])) {
			rc = corrupt(err, (size_t)(p - blob), "shift is not finite");
			goto fail;
		}
	}
	a->scale = ann_ldf32(p);
	if (!(a->scale > 0) || !isfinite(a->scale)) {
		rc = corrupt(err, (size_t)(p - blob), "scale is not a positive number");
		goto fail;
	}
	p += 4;
	if ((rc = ann_mlp_load(p, (size_t)enc_len, &a->enc, err)) < 0) {
		rc = rc == ANN_E_FORMAT ? ANN_E_CORRUPT : rc;
		ann_err_prefix(err, rc, "annann router blob: encoder at offset %zu", (size_t)(p - blob));
		goto fail;
	}
	if (a->enc->in_dim != a->d || a->enc->out_dim != a->e) {
		rc = corrupt(err, (size_t)(p - blob), "encoder shape differs from the header");
		goto fail;
	}
	p += enc_len;
	if ((rc = ann_hnsw_load(p, (size_t)g_len, &a->graph, err)) < 0) {
		rc = rc == ANN_E_FORMAT ? ANN_E_CORRUPT : rc;
		ann_err_prefix(err, rc, "annann router blob: centroid graph at offset %zu", (size_t)(p - blob));
		goto fail;
	}
	if (ann_hnsw_dim(a->graph) != a->e || ann_hnsw_count(a->graph) != a->k ||
	    ann_hnsw_metric(a->graph) != ANN_METRIC_L2) {
		rc = corrupt(err, (size_t)(p - blob), "centroid graph shape differs from the header");
		goto fail;
	}
	p += g_len;
	for (size_t i = 0; i < (size_t)a->k * a->d; i++, p += 4) {
		a->means[i] = ann_ldf32(p);
		if (!isfinite(a->means[i])) {
			rc = corrupt(err, (size_t)(p - blob), "cluster mean is not finite");
			goto fail;
		}
	}
	for (uint32_t j = 0; j < a->k; j++, p += 8)
		a->counts[j] = ann_ld64(p);
	for (uint32_t h = 0; h < a->nhist; h++, p += ANR_HIST_BYTES) {
		anr_epoch *ep = &a->hist[h];
		ep->phase = ann_ld32(p);
		ep->epoch = ann_ld32(p + 4);
		ep->loss = ld_f64(p + 8);
		ep->mse = ld_f64(p + 16);
		ep->kl_start = ld_f64(p + 24);
		ep->kl_end = ld_f64(p + 32);
		ep->changed = ld_f64(p + 40);
		if (ep->phase > PHASE_DEC) {
			rc = corrupt(err, (size_t)(p - blob), "history phase is not 0 or 1");
			goto fail;
		}
	}
	return anr_wrap(a, metric, out, err);
fail:
	anr_destroy(a);
	return rc;
}
