/* SPDX-License-Identifier: MIT */
/*
 * tune.c: fits the model of learned adaptive probing (probe.h; docs/DESIGN.md
 * "Learned adaptive probing") on queries with their ground truth, after Li et
 * al., "Improving approximate nearest neighbor search through learned
 * adaptive early termination" (SIGMOD 2020), in the shape our two-round
 * search allows:
 *  1. the queries are searched at a geometric range of fixed nprobe (from
 *     1/16 to 4 times the index's default); a query "needs" the smallest
 *     nprobe at which its recall@k reaches the best it reaches in the range;
 *  2. each query's first stage (its P1 nearest partitions) gives its eight
 *     features (ann_probe_features), read from the same search code that
 *     adaptive searches run;
 *  3. ridge regression of log(needed) on the features (normal equations,
 *     Cholesky, 8 x 8), and the shift that makes the model's mean factor 1;
 *  4. the model goes to the catalog (meta probe.model) in one write txn, with
 *     the re-rank bound's eps0 calibrated on the same queries between 1 and 2
 *     (meta search.rerank_eps; calibrate_eps).
 * Memory: the queries' recall at each nprobe (nq x 16 doubles), their
 * features (nq x 8) and one batch's answers; nq is the caller's.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "build_defaults.h"
#include "vecio.h"
#include "search_int.h"

#define GRID_MAX 16
#define RIDGE 1e-3
/* The re-rank bound's eps0 (docs/DESIGN.md "Calibrated re-rank bound"): the
 * candidates, the library's default first, and the operating point they are
 * compared at: the grid's first nprobe whose mean recall reaches EPS_RECALL. */
static const float EPS_CAND[ANN_TUNE_EPS] = {ANN_DEFAULT_RERANK_EPS, 1.6f, 1.2f, 1.0f};
#define EPS_RECALL 0.95

/* The recall@k of one answer row against the first k of a ground-truth row
 * (of its valid entries: a set smaller than k pads the row with -1). */
static double row_recall(const int64_t *ids, const int32_t *gt, uint32_t k)
{
	uint32_t hits = 0, valid = 0;
	for (uint32_t b = 0; b < k; b++)
		valid += gt[b] >= 0;
	for (uint32_t a = 0; a < k; a++)
		for (uint32_t b = 0; b < k; b++)
			if (ids[a] >= 0 && ids[a] == (int64_t)gt[b]) {
				hits++;
				break;
			}
	return valid ? (double)hits / valid : 1.0;
}

/* Solves the symmetric positive definite system A w = b (n x n, in place). */
static int cholesky_solve(double *A, double *b, size_t n)
{
	for (size_t j = 0; j < n; j++) {
		double v = A[j * n + j];
		for (size_t m = 0; m < j; m++)
			v -= A[j * n + m] * A[j * n + m];
		if (!(v > 0))
			return -1;
		A[j * n + j] = sqrt(v);
		for (size_t i = j + 1; i < n; i++) {
			double t = A[i * n + j];
			for (size_t m = 0; m < j; m++)
				t -= A[i * n + m] * A[j * n + m];
			A[i * n + j] = t / A[j * n + j];
		}
	}
	for (size_t i = 0; i < n; i++) { /* L y = b */
		for (size_t m = 0; m < i; m++)
			b[i] -= A[i * n + m] * b[m];
		b[i] /= A[i * n + i];
	}
	for (size_t i = n; i-- > 0;) { /* L^T w = y */
		for (size_t m = i + 1; m < n; m++)
			b[i] -= A[m * n + i] * b[m];
		b[i] /= A[i * n + i];
	}
	return 0;
}

/* Recall of query i at p partitions, linear in log p between the measured grid. */
static double recall_at(const double *rec, const uint32_t *grid, size_t ng, double p)
{
	if (p <= grid[0])
		return rec[0];
	for (size_t g = 1; g < ng; g++)
		if (p <= grid[g]) {
			double t = log(p / grid[g - 1]) / log((double)grid[g] / grid[g - 1]);
			return rec[g - 1] + t * (rec[g] - rec[g - 1]);
		}
	return rec[ng - 1];
}

/* Searches every query with fixed options: the answers' recall into rec[i * stride]; st (batch
 * rows, or NULL) takes each batch's stats and *bytes (when st) the sum of bytes_read. */
static int pass(ann_index *x, const ann_search_opts *so, const float *q, size_t nq, size_t batch, const int32_t *gt,
		uint32_t gt_k, double *rec, size_t stride, double *feat, int64_t *ids, float *dists,
		ann_query_stats *st, double *bytes, ann_error *err)
{
	ann_searcher *s;
	ANN_TRY(ann_searcher_new(x, so, &s, err));
	int rc = ANN_OK;
	size_t d = x->meta.dim, k = so->k;
	if (st)
		*bytes = 0;
	for (size_t at = 0; at < nq && rc >= 0; at += batch) {
		size_t n = ANN_MIN(batch, nq - at);
		s->feat_out = feat ? feat + at * ANN_PROBE_FEATURES : NULL;
		rc = ann_search(s, q + at * d, n, ids, dists, st, err);
		for (size_t i = 0; rc >= 0 && rec && i < n; i++)
			rec[(at + i) * stride] = row_recall(ids + i * k, gt + (at + i) * gt_k, (uint32_t)k);
		for (size_t i = 0; rc >= 0 && st && i < n; i++)
			*bytes += st[i].bytes_read;
	}
	ann_searcher_free(s);
	return rc;
}

/* Mean recall and bytes of the queries at fixed nprobe and eps0 (rec: nq scratch). */
static int eps_pass(ann_index *x, ann_search_opts so, uint32_t nprobe, float eps, const float *q, size_t nq,
		    size_t batch, const int32_t *gt, uint32_t gt_k, double *rec, int64_t *ids, float *dists,
		    ann_query_stats *st, double *recall, double *bytes, ann_error *err)
{
	so.nprobe = nprobe;
	so.adaptive = -1;
	so.rerank_eps = eps;
	ANN_TRY(pass(x, &so, q, nq, batch, gt, gt_k, rec, 1, NULL, ids, dists, st, bytes, err));
	double r = 0;
	for (size_t i = 0; i < nq; i++)
		r += rec[i];
	*recall = r / (double)nq;
	*bytes /= (double)nq;
	return ANN_OK;
}

/* The re-rank bound's eps0 for these queries: each candidate's bytes at nprobe lo, plus what
 * buying back its recall loss costs at the default eps0's slope from lo to hi (bytes per unit of
 * recall); the cheapest wins, the default on ties. Where recall no longer grows from lo to hi,
 * a candidate that loses any is out. */
static int calibrate_eps(ann_index *x, const ann_search_opts *so, uint32_t lo, uint32_t hi, const float *q, size_t nq,
			 size_t batch, const int32_t *gt, uint32_t gt_k, int64_t *ids, float *dists,
			 ann_tune_report *rep, ann_error *err)
{
	double *rec = malloc(nq * sizeof *rec);
	ann_query_stats *st = malloc(batch * sizeof *st);
	int rc = ANN_OK;
	if (!rec || !st) {
		rc = ann_err(err, ANN_E_NOMEM, "tune: out of memory for %zu queries", nq);
		goto done;
	}
	for (size_t e = 0; e < ANN_TUNE_EPS && rc >= 0; e++) {
		rep->eps[e] = EPS_CAND[e];
		rc = eps_pass(x, *so, lo, EPS_CAND[e], q, nq, batch, gt, gt_k, rec, ids, dists, st, &rep->eps_recall[e],
			      &rep->eps_bytes[e], err);
	}
	double rh = 0, bh = 0;
	if (rc >= 0)
		rc = eps_pass(x, *so, hi, EPS_CAND[0], q, nq, batch, gt, gt_k, rec, ids, dists, st, &rh, &bh, err);
	if (rc < 0)
		goto done;
	double r0 = rep->eps_recall[0], b0 = rep->eps_bytes[0];
	double slope = rh > r0 + 1e-4 && bh > b0 ? (bh - b0) / (rh - r0) : INFINITY;
	size_t best = 0;
	double best_cost = b0;
	for (size_t e = 1; e < ANN_TUNE_EPS; e++) {
		double loss = ANN_MAX(0.0, r0 - rep->eps_recall[e]);
		if (loss > 0 && !isfinite(slope))
			continue;
		double cost = rep->eps_bytes[e] + (loss > 0 ? slope * loss : 0.0);
		if (cost < best_cost * (1 - 1e-3)) {
			best = e;
			best_cost = cost;
		}
	}
	rep->eps_nprobe = lo;
	rep->eps_nprobe_hi = hi;
	rep->eps_recall_hi = rh;
	rep->eps_bytes_hi = bh;
	rep->rerank_eps = EPS_CAND[best];
done:
	free(rec);
	free(st);
	return rc;
}

int ann_tune_probe(const char *index_dir, const float *queries, size_t nq, size_t dim, const int32_t *gt,
		   uint32_t gt_k, const ann_tune_opts *o, ann_tune_report *rep, ann_error *err)
{
	ann_tune_opts dflt = {0};
	if (!o)
		o = &dflt;
	uint32_t k = o->k ? o->k : 10;
	size_t batch = o->batch ? o->batch : 64;
	memset(rep, 0, sizeof *rep);
	if (!index_dir || !queries || !gt || nq < 2 * ANN_PROBE_FEATURES || k > ANN_MAX_K || gt_k < k)
		return ann_err(err, ANN_E_INVAL, "tune: need at least %u queries with ground truth of at least k = %u "
			       "neighbours (got %zu queries, %u neighbours)", 2 * ANN_PROBE_FEATURES, k, nq, gt_k);
	ann_index *x;
	ANN_TRY(ann_index_load(index_dir, true, &x, err));
	int rc = ANN_OK;
	double *rec = NULL, *feat = NULL, *y = NULL;
	int64_t *ids = NULL;
	float *dists = NULL;
	if (dim != x->meta.dim) {
		rc = ann_err(err, ANN_E_INVAL, "tune: queries of dimension %zu, the index's is %u", dim, x->meta.dim);
		goto done;
	}
	if (!x->rbq || !ann_metric_euclid(x->meta.metric) || x->router->nparts < 2) {
		rc = ann_err(err, ANN_E_INVAL, "tune: %s is not a codes index under L2 or cosine with partitions to choose from: "
			     "adaptive probing reads the first stage's codes", index_dir);
		goto done;
	}
	uint32_t np = x->router->nparts, dflt_np = ann_default_nprobe(np);
	uint32_t p1 = o->p1 ? o->p1 : ANN_MAX(1u, dflt_np / 8);
	if (p1 > ANN_PROBE_MAX_P1 || p1 >= np) {
		rc = ann_err(err, ANN_E_INVAL, "tune: P1 %u must be below the index's %u partitions and at most %u", p1, np,
			     ANN_PROBE_MAX_P1);
		goto done;
	}
	/* 1. the grid: geometric from the default / 16 (at least P1) to 4 x the default (at most every partition) */
	uint32_t grid[GRID_MAX];
	size_t ng = 0;
	double lo = ANN_MAX((double)p1, dflt_np / 16.0), hi = ANN_MIN((double)np, 2.0 * dflt_np);
	hi = ANN_MIN(hi, (double)ANN_MAX_NPROBE / ANN_PROBE_WIDTH);
	if (hi < lo)
		hi = lo;
	for (size_t g = 0; g < GRID_MAX; g++) {
		uint32_t v = (uint32_t)llround(lo * pow(hi / lo, (double)g / (GRID_MAX - 1)));
		if (ng == 0 || v > grid[ng - 1])
			grid[ng++] = v;
	}
	rec = malloc(nq * ng * sizeof *rec);
	feat = calloc(nq * ANN_PROBE_FEATURES, sizeof *feat);
	y = malloc(nq * sizeof *y);
	ids = malloc(batch * k * sizeof *ids);
	dists = malloc(batch * k * sizeof *dists);
	if (!rec || !feat || !y || !ids || !dists) {
		rc = ann_err(err, ANN_E_NOMEM, "tune: out of memory for %zu queries", nq);
		goto done;
	}
	ann_search_opts so;
	ann_search_opts_init(&so);
	so.k = k;
	so.adaptive = -1;
	so.rerank_eps = ANN_DEFAULT_RERANK_EPS; /* not an earlier calibration: a refit starts from the same grid */
	for (size_t g = 0; g < ng && rc >= 0; g++) {
		so.nprobe = grid[g];
		rc = pass(x, &so, queries, nq, batch, gt, gt_k, rec + g, ng, NULL, ids, dists, NULL, NULL, err);
		if (o->progress)
			o->progress(o->progress_ctx, "tune", g + 1, ng + 2);
	}
	if (rc < 0)
		goto done;
	/* 1b. the re-rank bound's eps0, at the grid's first nprobe whose mean recall reaches
	 * EPS_RECALL (the next one gives the slope) */
	rep->rerank_eps = ANN_DEFAULT_RERANK_EPS;
	if (ng >= 2) {
		size_t gs = ng - 2;
		for (size_t g = 0; g + 1 < ng; g++) {
			double r = 0;
			for (size_t i = 0; i < nq; i++)
				r += rec[i * ng + g];
			if (r >= EPS_RECALL * (double)nq) {
				gs = g;
				break;
			}
		}
		rc = calibrate_eps(x, &so, grid[gs], grid[gs + 1], queries, nq, batch, gt, gt_k, ids, dists, rep, err);
		if (rc < 0)
			goto done;
	}
	if (o->progress)
		o->progress(o->progress_ctx, "tune", ng + 1, ng + 2);
	/* 2. the first stage's features, through the adaptive search itself (stopped after stage A) */
	x->probe = (ann_probe_model){.p1 = p1};
	so.nprobe = p1;
	so.adaptive = 1;
	rc = pass(x, &so, queries, nq, batch, gt, gt_k, NULL, 0, feat, ids, dists, NULL, NULL, err);
	if (o->progress)
		o->progress(o->progress_ctx, "tune", ng + 2, ng + 2);
	if (rc < 0)
		goto done;
	/* 3. needed partitions, ridge regression of their log */
	double A[ANN_PROBE_FEATURES * ANN_PROBE_FEATURES] = {0}, b[ANN_PROBE_FEATURES] = {0};
	for (size_t i = 0; i < nq; i++) {
		const double *r = rec + i * ng, *f = feat + i * ANN_PROBE_FEATURES;
		double best = 0;
		for (size_t g = 0; g < ng; g++)
			best = ANN_MAX(best, r[g]);
		size_t g = 0;
		while (r[g] < best - 1e-9)
			g++;
		y[i] = log((double)grid[g]);
		for (size_t a = 0; a < ANN_PROBE_FEATURES; a++) {
			b[a] += f[a] * y[i];
			for (size_t c = 0; c < ANN_PROBE_FEATURES; c++)
				A[a * ANN_PROBE_FEATURES + c] += f[a] * f[c];
		}
	}
	for (size_t a = 1; a < ANN_PROBE_FEATURES; a++) /* not the intercept */
		A[a * ANN_PROBE_FEATURES + a] += RIDGE * (double)nq;
	A[0] += 1e-9 * (double)nq;
	if (cholesky_solve(A, b, ANN_PROBE_FEATURES) < 0) {
		rc = ann_err(err, ANN_E_INVAL, "tune: the features of these %zu queries are degenerate", nq);
		goto done;
	}
	ann_probe_model m = {.p1 = p1, .fit_vectors = x->meta.live_vectors, .fit_parts = x->dir.count,
			     .fit_queries = (uint32_t)ANN_MIN(nq, (size_t)UINT32_MAX)};
	memcpy(m.w, b, sizeof b);
	double se = 0, sy = 0, syy = 0, sexp = 0;
	for (size_t i = 0; i < nq; i++) {
		double z = 0;
		for (size_t a = 0; a < ANN_PROBE_FEATURES; a++)
			z += m.w[a] * feat[i * ANN_PROBE_FEATURES + a];
		se += (z - y[i]) * (z - y[i]);
		sy += y[i];
		syy += y[i] * y[i];
		sexp += exp(ANN_MIN(ANN_MAX(z, -20.0), 20.0));
	}
	m.shift = log(sexp / (double)nq);
	double var = syy - sy * sy / (double)nq;
	rep->r2 = var > 0 ? 1 - se / var : 0;
	rep->p1 = p1;
	rep->queries = (uint32_t)ANN_MIN(nq, (size_t)UINT32_MAX);
	/* the report: the model against fixed nprobe at the grid's budgets (on these queries) */
	for (size_t g = 0; g < ng && rep->rows < ANN_TUNE_ROWS; g++) {
		uint32_t B = grid[g];
		if (B < p1)
			continue;
		double rf = 0, ra = 0, pa = 0;
		uint32_t hib = (uint32_t)ANN_MIN((uint64_t)B * ANN_PROBE_WIDTH, (uint64_t)np);
		for (size_t i = 0; i < nq; i++) {
			uint32_t p = ann_probe_predict(&m, feat + i * ANN_PROBE_FEATURES, B, p1, hib);
			rf += rec[i * ng + g];
			ra += recall_at(rec + i * ng, grid, ng, p);
			pa += p;
		}
		size_t r = rep->rows++;
		rep->budget[r] = B;
		rep->recall_fixed[r] = rf / (double)nq;
		rep->recall_adaptive[r] = ra / (double)nq;
		rep->probed_adaptive[r] = pa / (double)nq;
	}
	/* 4. store */
	ann_cat_txn *t;
	rc = ann_catalog_write_begin(ann_store_catalog(x->store), &t, err);
	if (rc < 0)
		goto done;
	rc = ann_probe_model_save(t, &m, err);
	if (rc >= 0)
		rc = ann_catalog_meta_put_f64(t, ANN_RERANK_EPS_META, rep->rerank_eps, err);
	if (rc < 0) {
		ann_catalog_abort(t);
		goto done;
	}
	rc = ann_catalog_commit(t, err);
done:
	free(rec);
	free(feat);
	free(y);
	free(ids);
	free(dists);
	ann_index_close(x);
	return rc < 0 ? ann_err_prefix(err, rc, "%s", index_dir) : ANN_OK;
}

/* Synthetic tuning queries (docs/DESIGN.md "Self-tuned adaptive probing").
 * A query log is what ann_tune_probe wants, but a build has none. What the
 * model learns is how to move a fixed mean budget from easy queries to hard
 * ones, and base rows moved off the data by noise of about the nearest-
 * neighbour distance teach that as well as real shifted queries do (real1m:
 * 846 KiB per query at recall 0.9 against 849 with 8,000 logged queries and
 * 958 without a model). So: SYN_NN rows give the scale (median squared
 * distance to their nearest other row, found by the index), nq more rows get
 * Gaussian noise of SYN_NOISE x that scale in all (rounded and clipped to the
 * data's type), and the index searched at SYN_GT_WIDTH x its default nprobe
 * with a wide re-rank gives their ground truth (0.997 of the exact top-10 on
 * real1m): no pass over the base, whatever its size. */
#define SYN_NN ANN_TUNE_SCALE_ROWS
#define SYN_NOISE 0.5
#define SYN_GT_WIDTH 4u
#define SYN_GT_RERANK 256u

/* nrows distinct rows of the file, at seeded random positions, as floats. */
static int syn_rows(const char *data_path, size_t nrows, uint64_t seed, size_t dim, float *out, ann_dtype *type,
		    ann_error *err)
{
	ann_vreader *r;
	ANN_TRY(ann_vreader_open(data_path, &r, err));
	int rc = ANN_OK;
	uint64_t n = ann_vreader_count(r);
	*type = ann_vreader_dtype(r);
	if (ann_vreader_dim(r) != dim) {
		rc = ann_err(err, ANN_E_INVAL, "%s: vectors of dimension %u, the index's is %zu", data_path,
			     ann_vreader_dim(r), dim);
		goto out;
	}
	if (n < nrows) {
		rc = ann_err(err, ANN_E_INVAL, "%s: %llu vectors, synthetic tuning needs at least %zu", data_path,
			     (unsigned long long)n, nrows);
		goto out;
	}
	ann_rng rng;
	ann_rng_seed(&rng, seed ^ 0x53594e5455ull);
	size_t taken = 0;
	for (uint64_t i = 0; i < n && taken < nrows; i++)
		if (ann_rng_below(&rng, n - i) < nrows - taken) {
			ANN_CHECK(rc, ann_vreader_seek(r, i, err));
			int64_t got = ann_vreader_read_f32(r, out + taken * dim, 1, err);
			if (got < 0) {
				rc = (int)got;
				goto out;
			}
			if (got != 1) {
				rc = ann_err(err, ANN_E_BADINPUT, "%s: vector %llu could not be read", data_path,
					     (unsigned long long)i);
				goto out;
			}
			taken++;
		}
	/* a fixed shuffle, so that the scale rows and the query rows both span the file */
	for (size_t i = taken; i > 1; i--) {
		size_t j = (size_t)ann_rng_below(&rng, i);
		for (size_t c = 0; c < dim; c++) {
			float t = out[(i - 1) * dim + c];
			out[(i - 1) * dim + c] = out[j * dim + c];
			out[j * dim + c] = t;
		}
	}
fail:
out:
	ann_vreader_close(r);
	return rc;
}

static int cmp_float(const void *a, const void *b)
{
	float x = *(const float *)a, y = *(const float *)b;
	return (x > y) - (x < y);
}

/* Searches rows with fixed probing at nprobe; answers into ids/dists (n x k). */
static int syn_search(ann_index *x, const float *q, size_t n, uint32_t k, uint32_t nprobe, int64_t *ids, float *dists,
		      ann_error *err)
{
	ann_search_opts so;
	ann_search_opts_init(&so);
	so.k = k;
	so.nprobe = nprobe;
	so.adaptive = -1;
	so.rerank = ANN_MAX(SYN_GT_RERANK, ann_default_rerank(k));
	ann_searcher *s;
	ANN_TRY(ann_searcher_new(x, &so, &s, err));
	int rc = ANN_OK;
	size_t d = x->meta.dim;
	for (size_t at = 0; at < n && rc >= 0; at += 64)
		rc = ann_search(s, q + at * d, ANN_MIN((size_t)64, n - at), ids + at * k, dists + at * k, NULL, err);
	ann_searcher_free(s);
	return rc;
}

int ann_tune_syn_queries(ann_index *x, float *rows, uint32_t nq, ann_dtype type, uint64_t seed, double *sd_out,
			 ann_error *err)
{
	size_t d = x->meta.dim, nrows = (size_t)nq + SYN_NN;
	bool cosine = x->meta.metric == ANN_METRIC_COSINE;
	if (cosine) /* the index holds them as unit vectors: so are the noise's scale and centres */
		for (size_t i = 0; i < nrows; i++)
			ann_unit_f32(rows + i * d, d);
	uint32_t np = x->router->nparts;
	uint32_t gt_np = (uint32_t)ANN_MIN((uint64_t)SYN_GT_WIDTH * ann_default_nprobe(np), (uint64_t)np);
	gt_np = ANN_MIN(gt_np, ANN_MAX_NPROBE);
	int64_t *ids = malloc(SYN_NN * 2 * sizeof *ids);
	float *dists = malloc(SYN_NN * 2 * sizeof *dists), *nn = malloc(SYN_NN * sizeof *nn);
	int rc = ANN_OK;
	if (!ids || !dists || !nn) {
		rc = ann_err(err, ANN_E_NOMEM, "tune: out of memory");
		goto done;
	}
	/* 1. the scale: each of SYN_NN rows' nearest other row (its second answer: the first is itself or a copy) */
	ANN_CHECK(rc, syn_search(x, rows, SYN_NN, 2, gt_np, ids, dists, err));
	size_t m = 0;
	for (size_t i = 0; i < SYN_NN; i++)
		if (ids[i * 2 + 1] >= 0 && isfinite(dists[i * 2 + 1]))
			nn[m++] = ANN_MAX(dists[i * 2 + 1], 0.0f);
	if (m == 0) {
		rc = ann_err(err, ANN_E_INVAL, "tune: no row found a neighbour to scale the synthetic queries by");
		goto done;
	}
	qsort(nn, m, sizeof *nn, cmp_float);
	/* (cosine's distances are 1 - cos = |a - b|^2 / 2 of unit vectors) */
	double sd = sqrt(SYN_NOISE * ann_route_l2_scale(x->meta.metric) * (double)nn[m / 2] / (double)d);
	/* 2. the queries: rows moved by the noise, kept in the data's range
	 * (cosine's are unit vectors, not the file's integers) */
	float *q = rows + (size_t)SYN_NN * d;
	ann_rng rng;
	ann_rng_seed(&rng, seed ^ 0x4e4f495345ull);
	for (size_t i = 0; i < (size_t)nq * d; i++) {
		double v = q[i] + sd * ann_rng_normal(&rng);
		if (type == ANN_DTYPE_U8 && !cosine)
			v = ANN_MIN(ANN_MAX(nearbyint(v), 0.0), 255.0);
		else if (type == ANN_DTYPE_I8 && !cosine)
			v = ANN_MIN(ANN_MAX(nearbyint(v), -128.0), 127.0);
		q[i] = (float)v;
	}
	*sd_out = sd;
fail:
done:
	free(ids);
	free(dists);
	free(nn);
	return rc;
}

int ann_tune_synthetic(const char *index_dir, const char *data_path, uint32_t nq, uint64_t seed,
		       const ann_tune_opts *o, ann_tune_report *rep, ann_error *err)
{
	ann_tune_opts dflt = {0};
	if (!o)
		o = &dflt;
	uint32_t k = o->k ? o->k : 10;
	memset(rep, 0, sizeof *rep);
	if (!index_dir || !data_path || nq < 2 * ANN_PROBE_FEATURES || k > ANN_MAX_K)
		return ann_err(err, ANN_E_INVAL, "tune: synthetic tuning needs an index, a data file and at least %u "
			       "queries (got %u)", 2 * ANN_PROBE_FEATURES, nq);
	ann_index *x;
	ANN_TRY(ann_index_load(index_dir, false, &x, err));
	size_t d = x->meta.dim, nrows = (size_t)nq + SYN_NN;
	int rc = ANN_OK;
	float *rows = NULL, *dists = NULL;
	int64_t *ids = NULL;
	int32_t *gt = NULL;
	if (!x->rbq || !ann_metric_euclid(x->meta.metric) || x->router->nparts < 2) {
		rc = ann_err(err, ANN_E_INVAL, "tune: %s is not a codes index under L2 or cosine with partitions to choose from: "
			     "adaptive probing reads the first stage's codes", index_dir);
		goto done;
	}
	uint32_t np = x->router->nparts;
	uint32_t gt_np = (uint32_t)ANN_MIN((uint64_t)SYN_GT_WIDTH * ann_default_nprobe(np), (uint64_t)np);
	gt_np = ANN_MIN(gt_np, ANN_MAX_NPROBE);
	rows = malloc(nrows * d * sizeof *rows);
	ids = malloc(nrows * k * sizeof *ids);
	dists = malloc(nrows * k * sizeof *dists);
	gt = malloc((size_t)nq * k * sizeof *gt);
	if (!rows || !ids || !dists || !gt) {
		rc = ann_err(err, ANN_E_NOMEM, "tune: out of memory for %u synthetic queries", nq);
		goto done;
	}
	ann_dtype type;
	ANN_CHECK(rc, syn_rows(data_path, nrows, seed, d, rows, &type, err));
	if (o->progress)
		o->progress(o->progress_ctx, "synthetic", 1, 3);
	double sd;
	ANN_CHECK(rc, ann_tune_syn_queries(x, rows, nq, type, seed, &sd, err));
	float *q = rows + (size_t)SYN_NN * d;
	if (o->progress)
		o->progress(o->progress_ctx, "synthetic", 2, 3);
	/* 3. their ground truth, from the index at a wide nprobe */
	ANN_CHECK(rc, syn_search(x, q, nq, k, gt_np, ids, dists, err));
	for (size_t i = 0; i < (size_t)nq * k; i++) {
		if (ids[i] > INT32_MAX) {
			rc = ann_err(err, ANN_E_INVAL, "tune: id %lld does not fit the tuner's 31-bit ground truth",
				     (long long)ids[i]);
			goto done;
		}
		gt[i] = (int32_t)ids[i];
	}
	if (o->progress)
		o->progress(o->progress_ctx, "synthetic", 3, 3);
	ann_index_close(x);
	x = NULL;
	rc = ann_tune_probe(index_dir, q, nq, d, gt, k, o, rep, err);
	goto free_all;
fail:
done:
	ann_index_close(x);
	if (rc < 0)
		ann_err_prefix(err, rc, "%s", index_dir);
free_all:
	free(rows);
	free(ids);
	free(dists);
	free(gt);
	return rc;
}
