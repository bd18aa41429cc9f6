/* SPDX-License-Identifier: MIT */
/*
 * gt.c: exact ground truth (see gt.h). The base is processed chunk by chunk;
 * within a chunk each worker thread owns a contiguous range of queries and
 * computes tiles of distances with sgemm. sgemm's |q|^2 - 2q.x + |x|^2 loses
 * precision to cancellation, so it only screens: a pair whose screened
 * distance is within a rounding margin of the query's current k-th distance
 * is re-measured with the exact kernel before it enters the heap. The result
 * is the exact top-k, identical to a naive scan.
 */
#include "gt.h"

#include <math.h>
#include <pthread.h>

#include "distance.h"
#include "vecio.h"

#define GT_QTILE 256     /* queries per sgemm tile */
#define GT_MAX_CHUNK 65536 /* base rows per chunk, also the progress step */

void ann_gt_opts_init(ann_gt_opts *o)
{
	memset(o, 0, sizeof *o);
	o->k = 100;
	o->metric = ANN_METRIC_L2;
	o->threads = 2;
	o->mem_bytes = (size_t)512 << 20;
}

size_t ann_gt_fixed_bytes(uint64_t nq, uint32_t dim, uint32_t k)
{
	return (size_t)nq * ((size_t)dim * 4 + 4 + (size_t)k * 12);
}

typedef struct gt_state {
	const ann_kernels *kern;
	ann_metric metric;
	size_t d, nq, k;
	const float *q;  /* nq x d (normalised for cosine) */
	float *qnorm;    /* nq squared norms */
	ann_topk *heaps; /* nq heaps over the caller's arrays */
	int64_t *heap_ids;
	/* current chunk */
	const float *x;
	float *xnorm;
	size_t nb;
	int64_t base_id;
} gt_state;

typedef struct gt_worker {
	gt_state *s;
	size_t q0, q1;
	float *tile; /* GT_QTILE x nb */
} gt_worker;

/* Exact distance of query i to chunk row j, in the metric's convention. */
static float gt_exact(const gt_state *s, size_t i, size_t j)
{
	const float *a = s->q + i * s->d, *b = s->x + j * s->d;
	switch (s->metric) {
	case ANN_METRIC_L2: return s->kern->l2_f32(a, b, s->d);
	case ANN_METRIC_IP: return -s->kern->ip_f32(a, b, s->d);
	default: return 1.0f - s->kern->ip_f32(a, b, s->d);
	}
}

static void *gt_work(void *arg)
{
	gt_worker *w = arg;
	gt_state *s = w->s;
	ann_metric screen = s->metric == ANN_METRIC_L2 ? ANN_METRIC_L2 : ANN_METRIC_IP;
	for (size_t q0 = w->q0; q0 < w->q1; q0 += GT_QTILE) {
		size_t nt = ANN_MIN((size_t)GT_QTILE, w->q1 - q0);
		ann_dist_batch(screen, s->q + q0 * s->d, nt, s->qnorm + q0, s->x, s->nb, s->xnorm, s->d, w->tile);
		for (size_t i = 0; i < nt; i++) {
			size_t qi = q0 + i;
			ann_topk *h = &s->heaps[qi];
			const float *row = w->tile + i * s->nb;
			float qn = s->qnorm[qi];
			for (size_t j = 0; j < s->nb; j++) {
				float approx = row[j];
				if (s->metric == ANN_METRIC_COSINE)
					approx += 1.0f;
				/* sgemm rounding is bounded by a few ulps of |q|^2 + |x|^2. */
				float margin = 1e-5f * (qn + s->xnorm[j]) + 1e-6f;
				if (approx > ann_topk_bound(h) + margin)
					continue;
				ann_topk_push(h, gt_exact(s, qi, j), s->base_id + (int64_t)j);
			}
		}
	}
	return NULL;
}

/* Runs every worker over the current chunk s->x[0..nb). */
static int gt_chunk(gt_state *s, gt_worker *w, int threads)
{
	ann_norms_f32(s->x, s->nb, s->d, s->xnorm);
	if (threads == 1) {
		gt_work(&w[0]);
		return ANN_OK;
	}
	pthread_t tid[64];
	int started = 0;
	for (int t = 1; t < threads; t++) {
		if (pthread_create(&tid[t], NULL, gt_work, &w[t]) != 0)
			break;
		started = t;
	}
	gt_work(&w[0]);
	/* Ranges of threads that could not start are done here. */
	for (int t = started + 1; t < threads; t++)
		gt_work(&w[t]);
	for (int t = 1; t <= started; t++)
		pthread_join(tid[t], NULL);
	return ANN_OK;
}

static void normalise_rows(float *x, size_t n, size_t d)
{
	for (size_t i = 0; i < n; i++) {
		double s = 0;
		for (size_t j = 0; j < d; j++)
			s += (double)x[i * d + j] * x[i * d + j];
		if (s > 0) {
			float inv = (float)(1.0 / sqrt(s));
			for (size_t j = 0; j < d; j++)
				x[i * d + j] *= inv;
		}
	}
}

typedef struct gt_run {
	gt_state s;
	gt_worker w[64];
	int threads;
	float *qcopy, *xnorm, *tiles;
	size_t chunk_rows;
} gt_run;

static void gt_run_free(gt_run *r)
{
	ann_free(r->qcopy);
	ann_free(r->s.qnorm);
	ann_free(r->s.heaps);
	ann_free(r->s.heap_ids);
	ann_free(r->xnorm);
	ann_free(r->tiles);
}

static int gt_run_init(gt_run *r, const float *q, size_t nq, size_t d, size_t nbase, const ann_gt_opts *o,
		       float *dists, ann_error *err)
{
	memset(r, 0, sizeof *r);
	if (o->k == 0 || o->k > ANN_MAX_K || d == 0)
		return ann_err(err, ANN_E_INVAL, "ground truth: k %u, expected 1..%u, and a positive dimension", o->k,
			       ANN_MAX_K);
	r->threads = o->threads < 1 ? 1 : (o->threads > 64 ? 64 : o->threads);
	if ((size_t)r->threads > nq)
		r->threads = nq ? (int)nq : 1;
	size_t per_row = d * 4 + 4 + (size_t)r->threads * GT_QTILE * 4;
	size_t rows = o->mem_bytes / per_row;
	if (rows < 64)
		return ann_err(err, ANN_E_BUDGET,
			       "ground truth: memory budget %zu bytes holds %zu base rows, at least 64 needed "
			       "(%zu bytes)", o->mem_bytes, rows, 64 * per_row);
	r->chunk_rows = ANN_MIN(ANN_MIN(rows, (size_t)GT_MAX_CHUNK), ANN_MAX(nbase, (size_t)1));
	gt_state *s = &r->s;
	s->kern = ann_kernels_best();
	s->metric = o->metric;
	s->d = d;
	s->nq = nq;
	s->k = o->k;
	r->qcopy = ann_malloc(nq * d * sizeof(float));
	s->qnorm = ann_malloc((nq ? nq : 1) * sizeof(float));
	s->heaps = ann_malloc((nq ? nq : 1) * sizeof(ann_topk));
	s->heap_ids = ann_malloc((nq ? nq : 1) * o->k * sizeof(int64_t));
	r->xnorm = ann_malloc(r->chunk_rows * sizeof(float));
	r->tiles = ann_malloc((size_t)r->threads * GT_QTILE * r->chunk_rows * sizeof(float));
	if (!r->qcopy || !s->qnorm || !s->heaps || !s->heap_ids || !r->xnorm || !r->tiles) {
		gt_run_free(r);
		return ann_err(err, ANN_E_NOMEM, "ground truth: out of memory for %zu queries", nq);
	}
	memcpy(r->qcopy, q, nq * d * sizeof(float));
	if (o->metric == ANN_METRIC_COSINE)
		normalise_rows(r->qcopy, nq, d);
	s->q = r->qcopy;
	ann_norms_f32(s->q, nq, d, s->qnorm);
	for (size_t i = 0; i < nq; i++)
		ann_topk_init(&s->heaps[i], dists + i * o->k, s->heap_ids + i * o->k, o->k);
	s->xnorm = r->xnorm;
	size_t per = (nq + (size_t)r->threads - 1) / (size_t)r->threads;
	for (int t = 0; t < r->threads; t++) {
		r->w[t].s = s;
		r->w[t].q0 = ANN_MIN(nq, (size_t)t * per);
		r->w[t].q1 = ANN_MIN(nq, (size_t)(t + 1) * per);
		r->w[t].tile = r->tiles + (size_t)t * GT_QTILE * r->chunk_rows;
	}
	return ANN_OK;
}

static void gt_run_finish(gt_run *r, int32_t *ids)
{
	gt_state *s = &r->s;
	for (size_t i = 0; i < s->nq; i++) {
		ann_topk_finish(&s->heaps[i]);
		for (size_t j = 0; j < s->k; j++)
			ids[i * s->k + j] = (int32_t)s->heap_ids[i * s->k + j];
	}
}

int ann_gt_compute_mem(const float *base, size_t n, const float *q, size_t nq, size_t d, const ann_gt_opts *o,
		       int32_t *ids, float *dists, ann_error *err)
{
	gt_run r;
	ANN_TRY(gt_run_init(&r, q, nq, d, n, o, dists, err));
	float *chunk = NULL;
	if (o->metric == ANN_METRIC_COSINE) {
		chunk = ann_malloc(r.chunk_rows * d * sizeof(float));
		if (!chunk) {
			gt_run_free(&r);
			return ann_err(err, ANN_E_NOMEM, "ground truth: out of memory");
		}
	}
	for (size_t b0 = 0; b0 < n; b0 += r.chunk_rows) {
		size_t nb = ANN_MIN(r.chunk_rows, n - b0);
		if (chunk) {
			memcpy(chunk, base + b0 * d, nb * d * sizeof(float));
			normalise_rows(chunk, nb, d);
			r.s.x = chunk;
		} else {
			r.s.x = base + b0 * d;
		}
		r.s.nb = nb;
		r.s.base_id = (int64_t)b0;
		gt_chunk(&r.s, r.w, r.threads);
		if (o->progress)
			o->progress(o->progress_ctx, "gt", b0 + nb, n);
	}
	gt_run_finish(&r, ids);
	ann_free(chunk);
	gt_run_free(&r);
	return ANN_OK;
}

int ann_gt_compute(const char *base_path, const char *query_path, const ann_gt_opts *o, uint32_t *nq_out,
		   int32_t **ids_out, float **dists_out, ann_error *err)
{
	ann_vreader *br = NULL, *qr = NULL;
	float *q = NULL, *chunk = NULL, *dists = NULL;
	int32_t *ids = NULL;
	gt_run r;
	bool run_ok = false;
	int rc;
	*ids_out = NULL;
	*dists_out = NULL;
	ANN_CHECK(rc, ann_vreader_open(query_path, &qr, err));
	ANN_CHECK(rc, ann_vreader_open(base_path, &br, err));
	size_t d = ann_vreader_dim(qr);
	if (ann_vreader_dim(br) != d) {
		rc = ann_err(err, ANN_E_BADINPUT, "%s: dimension %u, but the queries %s have %zu", base_path,
			     ann_vreader_dim(br), query_path, d);
		goto fail;
	}
	uint64_t nq = ann_vreader_count(qr), n = ann_vreader_count(br);
	if (nq > INT32_MAX || n > INT32_MAX) {
		rc = ann_err(err, ANN_E_INVAL, "ground truth: ids are int32; %s has %llu vectors",
			     nq > INT32_MAX ? query_path : base_path,
			     (unsigned long long)(nq > INT32_MAX ? nq : n));
		goto fail;
	}
	q = ann_malloc((nq ? nq : 1) * d * sizeof(float));
	ids = ann_malloc((nq ? nq : 1) * o->k * sizeof(int32_t));
	dists = ann_malloc((nq ? nq : 1) * o->k * sizeof(float));
	if (!q || !ids || !dists) {
		rc = ann_err(err, ANN_E_NOMEM, "ground truth: out of memory for %llu queries", (unsigned long long)nq);
		goto fail;
	}
	int64_t got = ann_vreader_read_f32(qr, q, nq, err);
	if (got < 0) {
		rc = (int)got;
		goto fail;
	}
	ANN_CHECK(rc, gt_run_init(&r, q, nq, d, n, o, dists, err));
	run_ok = true;
	chunk = ann_malloc(r.chunk_rows * d * sizeof(float));
	if (!chunk) {
		rc = ann_err(err, ANN_E_NOMEM, "ground truth: out of memory for a chunk of %zu rows", r.chunk_rows);
		goto fail;
	}
	for (uint64_t b0 = 0; b0 < n;) {
		int64_t nb = ann_vreader_read_f32(br, chunk, r.chunk_rows, err);
		if (nb < 0) {
			rc = (int)nb;
			goto fail;
		}
		if (nb == 0) {
			rc = ann_err(err, ANN_E_BADINPUT, "%s: ends at vector %llu, header says %llu", base_path,
				     (unsigned long long)b0, (unsigned long long)n);
			goto fail;
		}
		if (o->metric == ANN_METRIC_COSINE)
			normalise_rows(chunk, (size_t)nb, d);
		r.s.x = chunk;
		r.s.nb = (size_t)nb;
		r.s.base_id = (int64_t)b0;
		gt_chunk(&r.s, r.w, r.threads);
		b0 += (uint64_t)nb;
		if (o->progress)
			o->progress(o->progress_ctx, "gt", b0, n);
	}
	gt_run_finish(&r, ids);
	gt_run_free(&r);
	ann_free(chunk);
	ann_free(q);
	ann_vreader_close(br);
	ann_vreader_close(qr);
	*nq_out = (uint32_t)nq;
	*ids_out = ids;
	*dists_out = dists;
	return ANN_OK;
fail:
	if (run_ok)
		gt_run_free(&r);
	ann_free(chunk);
	ann_free(q);
	ann_free(ids);
	ann_free(dists);
	ann_vreader_close(br);
	ann_vreader_close(qr);
	return rc;
}
