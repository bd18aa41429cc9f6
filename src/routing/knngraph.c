/* SPDX-License-Identifier: MIT */
/*
 * knngraph.c: exact k-NN graph of an in-memory sample by symmetric tiles of
 * sgemm distances (ann_dist_batch) feeding per-point bounded heaps
 * (ann_topk), and its symmetrisation into the CSR graph partition.c hands to
 * METIS. Owns no distance kernel: those live in distance.c.
 *
 * Tiling: points are cut into nt = ceil(n / T) tiles of T rows. For every
 * pair I <= J the tile D = dist(X_I, X_J) is computed once; rows of D update
 * the heaps of I's points and (when I < J) columns of D update the heaps of
 * J's points, so each distance is computed once. A worker holds at most one
 * tile-row lock at a time (no deadlock); it first tries I, and works on J
 * while I is busy.
 */
#include "knngraph.h"

#include <inttypes.h>
#include <math.h>
#include <pthread.h>

#include "distance.h"

#define KNN_TILE_MIN 16
/* Largest tile edge: 1024 x 1024 floats = 4 MiB, about what the L2 + L3
 * share of one core holds, so the selection pass reads the tile while it is
 * still in cache. */
#define KNN_TILE_MAX 1024
#define KNN_THREADS_MAX 64
#define KNN_PROGRESS_NS 250000000ull

void ann_knn_opts_init(ann_knn_opts *o)
{
	memset(o, 0, sizeof *o);
	o->k = 10;
	o->metric = ANN_METRIC_L2;
	o->mem_bytes = ANN_KNN_DEFAULT_MEM;
	o->threads = 1;
}

/* ---- planning ------------------------------------------------------------ */

/* Bytes of one thread's tile buffers for edge t: the T x T tile (rounded to
 * the 64-byte alignment) and the T column bounds. */
static size_t tile_bytes_for(size_t t)
{
	return ANN_ALIGN_UP(t * t * sizeof(float), 64) + t * sizeof(float);
}

static int knn_check_opts(size_t n, size_t d, const ann_knn_opts *o, ann_error *err)
{
	if (!o)
		return ann_err(err, ANN_E_INVAL, "knn: options are NULL");
	if (o->k == 0)
		return ann_err(err, ANN_E_INVAL, "knn: k must be >= 1");
	if (d == 0)
		return ann_err(err, ANN_E_INVAL, "knn: dimension must be >= 1");
	if (n > (size_t)INT32_MAX)
		return ann_err(err, ANN_E_INVAL, "knn: %zu points, at most %d supported", n, INT32_MAX);
	if (o->metric != ANN_METRIC_L2 && o->metric != ANN_METRIC_IP && o->metric != ANN_METRIC_COSINE)
		return ann_err(err, ANN_E_INVAL, "knn: unknown metric %d", (int)o->metric);
	if (o->threads < 0 || o->threads > KNN_THREADS_MAX)
		return ann_err(err, ANN_E_INVAL, "knn: threads %d, expected 1..%d",
			       o->threads, KNN_THREADS_MAX);
	size_t nk;
	if (!ann_mul_ok(n, o->k, &nk) || nk > SIZE_MAX / 16)
		return ann_err(err, ANN_E_INVAL, "knn: n %zu x k %zu overflows", n, o->k);
	return ANN_OK;
}

/* Working memory besides the tiles for n points of dimension d, k
 * neighbours, tile edge t and nth threads: int64 ids and float distances of
 * the heaps (the caller's dists array holds the latter when given), heap
 * headers, norms, the tile-row locks and, for L2, each thread's two tiles of
 * shifted rows (knn_work). An upper bound: IP needs no norms. */
static size_t work_bytes_for(size_t n, size_t d, size_t k, bool l2, bool have_dists, size_t t, size_t nth)
{
	size_t nt = n ? (n + t - 1) / t : 0;
	return n * k * (sizeof(int64_t) + (have_dists ? 0 : sizeof(float))) + n * sizeof(ann_topk) +
	       n * sizeof(float) + (nth > 1 ? nt * sizeof(pthread_mutex_t) : 0) +
	       (l2 ? nth * 2 * t * d * sizeof(float) : 0);
}

static int knn_tile(size_t n, const ann_knn_opts *o, size_t threads, size_t *tile, ann_error *err)
{
	size_t mem = o->mem_bytes ? o->mem_bytes : ANN_KNN_DEFAULT_MEM;
	size_t per = mem / threads;
	size_t t = (size_t)sqrt((double)per / sizeof(float));
	while (t > 0 && tile_bytes_for(t) > per)
		t--;
	t = ANN_MIN(t, (size_t)KNN_TILE_MAX);
	size_t need = ANN_MIN(n, (size_t)KNN_TILE_MIN);
	if (t < need)
		return ann_err(err, ANN_E_BUDGET,
			       "knn: mem_bytes %zu too small: %zu threads need at least %zu bytes"
			       " for %zu x %zu tiles",
			       mem, threads, threads * tile_bytes_for(need), need, need);
	*tile = ANN_MAX(ANN_MIN(t, n), (size_t)1);
	return ANN_OK;
}

/* Threads actually used: never more than there are tile pairs. */
static size_t knn_threads(size_t n, size_t t, const ann_knn_opts *o)
{
	size_t nt = n ? (n + t - 1) / t : 1;
	size_t pairs = nt * (nt + 1) / 2;
	size_t th = o->threads > 0 ? (size_t)o->threads : 1;
	return ANN_MAX(ANN_MIN(th, pairs), (size_t)1);
}

int ann_knn_plan(size_t n, size_t d, const ann_knn_opts *o, size_t *tile, size_t *total_bytes, ann_error *err)
{
	ANN_TRY(knn_check_opts(n, d, o, err));
	size_t th = o->threads > 0 ? (size_t)o->threads : 1;
	size_t t;
	ANN_TRY(knn_tile(n, o, th, &t, err));
	/* fewer threads than asked when there are few tile pairs: same tile */
	th = knn_threads(n, t, o);
	if (tile)
		*tile = t;
	if (total_bytes)
		*total_bytes = th * tile_bytes_for(t) + work_bytes_for(n, d, o->k, o->metric == ANN_METRIC_L2, false, t, th);
	return ANN_OK;
}

/* ---- the tiled scan ------------------------------------------------------ */

typedef struct knn_ctx {
	const float *x;
	size_t n, d, t, nt;
	ann_metric metric;
	const float *norms;     /* squared norms (L2: of the shifted rows; cosine), else NULL */
	const float *shift;     /* L2: the first row; tiles are shifted by it before the sgemm (knn_work) */
	ann_topk *heaps;        /* n heaps */
	pthread_mutex_t *rowlk; /* nt tile-row locks, NULL when single-threaded */
	pthread_mutex_t curlk;  /* guards the cursor and the progress state */
	size_t ci, cj;          /* next tile pair */
	uint64_t done, total;   /* tile pairs finished, all */
	uint64_t last_ns;       /* last progress call */
	ann_progress_fn progress;
	void *progress_ctx;
} knn_ctx;

typedef struct knn_worker {
	knn_ctx *c;
	float *tile;  /* t x t */
	float *bound; /* t column bounds */
	float *rows;  /* L2: 2 t x d, the pair's two tiles of shifted rows */
} knn_worker;

/* Rows [i0, i0 + ni) of x, less the shift, into out: as in kmeans.c, the
 * sgemm's |x|^2 - 2 x.y + |y|^2 then rounds at the data's spread, not at its
 * distance from the origin. */
static const float *knn_shifted(const knn_ctx *c, size_t i0, size_t ni, float *out)
{
	size_t d = c->d;
	for (size_t i = 0; i < ni; i++)
		ann_sub_f32(out + i * d, c->x + (i0 + i) * d, c->shift, d);
	return out;
}

static bool knn_next(knn_ctx *c, size_t *ti, size_t *tj)
{
	bool ok = false;
	pthread_mutex_lock(&c->curlk);
	if (c->ci < c->nt) {
		*ti = c->ci;
		*tj = c->cj;
		ok = true;
		if (++c->cj == c->nt) {
			c->ci++;
			c->cj = c->ci;
		}
	}
	pthread_mutex_unlock(&c->curlk);
	return ok;
}

static void knn_finished(knn_ctx *c)
{
	pthread_mutex_lock(&c->curlk);
	c->done++;
	if (c->progress && c->done < c->total) {
		uint64_t now = ann_now_ns();
		if (now - c->last_ns >= KNN_PROGRESS_NS) {
			c->last_ns = now;
			c->progress(c->progress_ctx, "knn", c->done, c->total);
		}
	}
	pthread_mutex_unlock(&c->curlk);
}

/* Chunks of the selection scans: a branch-free, vectorisable "does any
 * entry of the chunk beat its bound" test, then the scalar pushes only for
 * the rare chunks that pass. */
#define KNN_CHUNK 16

/* Rows of the ni x nj tile D update the heaps of points i0 .. i0 + ni with
 * candidates j0 .. j0 + nj (skipping i == j on diagonal tiles). <= lets
 * ann_topk apply its tie rule (smaller id wins). */
static void update_rows(knn_ctx *c, const float *D, size_t i0, size_t ni, size_t j0, size_t nj)
{
	for (size_t r = 0; r < ni; r++) {
		size_t i = i0 + r;
		ann_topk *h = &c->heaps[i];
		const float *row = D + r * nj;
		float b = ann_topk_bound(h);
		for (size_t q0 = 0; q0 < nj; q0 += KNN_CHUNK) {
			size_t q1 = ANN_MIN(q0 + KNN_CHUNK, nj);
			int any = 0;
			for (size_t q = q0; q < q1; q++)
				any |= row[q] <= b;
			if (ANN_LIKELY(!any))
				continue;
			for (size_t q = q0; q < q1; q++) {
				if (row[q] <= b && j0 + q != i && ann_topk_push(h, row[q], (int64_t)(j0 + q)))
					b = ann_topk_bound(h);
			}
		}
	}
}

/* Columns of D update the heaps of points j0 .. j0 + nj with candidates
 * i0 .. i0 + ni (off-diagonal tiles only, so never i == j). Reads D by rows
 * against a vector of column bounds. */
static void update_cols(knn_ctx *c, const float *D, size_t i0, size_t ni, size_t j0, size_t nj, float *bnd)
{
	for (size_t q = 0; q < nj; q++)
		bnd[q] = ann_topk_bound(&c->heaps[j0 + q]);
	for (size_t r = 0; r < ni; r++) {
		const float *row = D + r * nj;
		for (size_t q0 = 0; q0 < nj; q0 += KNN_CHUNK) {
			size_t q1 = ANN_MIN(q0 + KNN_CHUNK, nj);
			int any = 0;
			for (size_t q = q0; q < q1; q++)
				any |= row[q] <= bnd[q];
			if (ANN_LIKELY(!any))
				continue;
			for (size_t q = q0; q < q1; q++) {
				if (row[q] <= bnd[q]) {
					ann_topk *h = &c->heaps[j0 + q];
					if (ann_topk_push(h, row[q], (int64_t)(i0 + r)))
						bnd[q] = ann_topk_bound(h);
				}
			}
		}
	}
}

static void *knn_work(void *arg)
{
	knn_worker *w = arg;
	knn_ctx *c = w->c;
	size_t ti, tj;
	while (knn_next(c, &ti, &tj)) {
		size_t i0 = ti * c->t, ni = ANN_MIN(c->t, c->n - i0);
		size_t j0 = tj * c->t, nj = ANN_MIN(c->t, c->n - j0);
		const float *xi = c->x + i0 * c->d, *xj = c->x + j0 * c->d;
		if (c->shift) {
			xi = knn_shifted(c, i0, ni, w->rows);
			xj = knn_shifted(c, j0, nj, w->rows + c->t * c->d);
		}
		ann_dist_batch(c->metric, xi, ni, c->norms ? c->norms + i0 : NULL, xj, nj,
			       c->norms ? c->norms + j0 : NULL, c->d, w->tile);
		if (!c->rowlk) {
			update_rows(c, w->tile, i0, ni, j0, nj);
			if (ti != tj)
				update_cols(c, w->tile, i0, ni, j0, nj, w->bound);
		} else if (ti == tj) {
			pthread_mutex_lock(&c->rowlk[ti]);
			update_rows(c, w->tile, i0, ni, j0, nj);
			pthread_mutex_unlock(&c->rowlk[ti]);
		} else if (pthread_mutex_trylock(&c->rowlk[ti]) == 0) {
			update_rows(c, w->tile, i0, ni, j0, nj);
			pthread_mutex_unlock(&c->rowlk[ti]);
			pthread_mutex_lock(&c->rowlk[tj]);
			update_cols(c, w->tile, i0, ni, j0, nj, w->bound);
			pthread_mutex_unlock(&c->rowlk[tj]);
		} else {
			pthread_mutex_lock(&c->rowlk[tj]);
			update_cols(c, w->tile, i0, ni, j0, nj, w->bound);
			pthread_mutex_unlock(&c->rowlk[tj]);
			pthread_mutex_lock(&c->rowlk[ti]);
			update_rows(c, w->tile, i0, ni, j0, nj);
			pthread_mutex_unlock(&c->rowlk[ti]);
		}
		knn_finished(c);
	}
	return NULL;
}

static int check_finite(const float *x, size_t n, size_t d, ann_error *err)
{
	for (size_t i = 0; i < n; i++) {
		const float *row = x + i * d;
		float acc = 0.0f;
		for (size_t j = 0; j < d; j++)
			acc += row[j] * 0.0f; /* NaN or inf anywhere makes acc NaN */
		if (ANN_UNLIKELY(acc != 0.0f)) {
			for (size_t j = 0; j < d; j++)
				if (!isfinite(row[j]))
					return ann_err(err, ANN_E_INVAL,
						       "knn: vector %zu component %zu is not finite", i, j);
		}
	}
	return ANN_OK;
}

int ann_knn_graph(const float *x, size_t n, size_t d, const ann_knn_opts *o, uint32_t *ids, float *dists,
		  ann_knn_stats *st, ann_error *err)
{
	uint64_t t0 = ann_now_ns();
	int rc = knn_check_opts(n, d, o, err);
	if (rc < 0)
		return rc;
	if (n > 0 && (!x || !ids))
		return ann_err(err, ANN_E_INVAL, "knn: x and ids must not be NULL");
	if (st)
		memset(st, 0, sizeof *st);
	ANN_TRY(check_finite(x, n, d, err));

	size_t k = o->k, t = 1, nth = 1;
	size_t thr_asked = o->threads > 0 ? (size_t)o->threads : 1;
	ANN_TRY(knn_tile(n, o, thr_asked, &t, err));
	nth = knn_threads(n, t, o);

	knn_ctx c;
	memset(&c, 0, sizeof c);
	knn_worker w[KNN_THREADS_MAX];
	pthread_t tid[KNN_THREADS_MAX];
	size_t nstarted = 0, nlocks = 0;
	bool curlk_ok = false;
	memset(w, 0, sizeof w);
	float *norms = NULL, *hdist = dists;
	int64_t *hid = NULL;

	c.x = x;
	c.n = n;
	c.d = d;
	c.t = t;
	c.nt = n ? (n + t - 1) / t : 0;
	c.metric = o->metric;
	c.total = (uint64_t)c.nt * (c.nt + 1) / 2;
	c.progress = o->progress;
	c.progress_ctx = o->progress_ctx;
	c.last_ns = t0;

	rc = ANN_E_NOMEM;
	c.heaps = ann_malloc((n ? n : 1) * sizeof *c.heaps);
	size_t nk = ANN_MAX(n * k, (size_t)1);
	hid = ann_malloc(nk * sizeof *hid);
	if (!hdist)
		hdist = ann_malloc(nk * sizeof *hdist);
	if (!c.heaps || !hid || !hdist) {
		rc = ann_err(err, ANN_E_NOMEM, "knn: cannot allocate heaps for %zu x %zu neighbours", n, k);
		goto fail;
	}
	for (size_t i = 0; i < n; i++)
		ann_topk_init(&c.heaps[i], hdist + i * k, hid + i * k, k);
	if (o->metric != ANN_METRIC_IP && n > 0) {
		norms = ann_malloc(n * sizeof *norms);
		if (!norms) {
			rc = ann_err(err, ANN_E_NOMEM, "knn: cannot allocate %zu norms", n);
			goto fail;
		}
		if (o->metric == ANN_METRIC_L2) {
			c.shift = x;
			for (size_t i = 0; i < n; i++) {
				double a = 0;
				for (size_t j = 0; j < d; j++) {
					double v = (double)(x[i * d + j] - x[j]);
					a += v * v;
				}
				norms[i] = (float)a;
			}
		} else {
			ann_norms_f32(x, n, d, norms);
		}
		c.norms = norms;
	}
	for (size_t i = 0; i < nth; i++) {
		w[i].c = &c;
		w[i].tile = ann_aligned_alloc(64, ANN_ALIGN_UP(t * t * sizeof(float), 64));
		w[i].bound = ann_malloc(t * sizeof(float));
		if (c.shift)
			w[i].rows = ann_malloc(2 * t * d * sizeof(float));
		if (!w[i].tile || !w[i].bound || (c.shift && !w[i].rows)) {
			rc = ann_err(err, ANN_E_NOMEM, "knn: cannot allocate a %zu x %zu distance tile",
				     t, t);
			goto fail;
		}
	}
	if (pthread_mutex_init(&c.curlk, NULL) != 0) {
		rc = ann_err(err, ANN_E_NOMEM, "knn: cannot create a mutex");
		goto fail;
	}
	curlk_ok = true;
	if (nth > 1) {
		c.rowlk = ann_malloc(c.nt * sizeof *c.rowlk);
		if (!c.rowlk) {
			rc = ann_err(err, ANN_E_NOMEM, "knn: cannot allocate %zu locks", c.nt);
			goto fail;
		}
		for (; nlocks < c.nt; nlocks++) {
			if (pthread_mutex_init(&c.rowlk[nlocks], NULL) != 0) {
				rc = ann_err(err, ANN_E_NOMEM, "knn: cannot create a mutex");
				goto fail;
			}
		}
	}
	if (c.progress)
		c.progress(c.progress_ctx, "knn", 0, c.total);

	/* the calling thread is worker 0; a thread that cannot start only
	 * leaves more tile pairs to the others */
	for (size_t i = 1; i < nth; i++) {
		if (pthread_create(&tid[nstarted], NULL, knn_work, &w[i]) != 0)
			break;
		nstarted++;
	}
	knn_work(&w[0]);
	for (size_t i = 0; i < nstarted; i++)
		pthread_join(tid[i], NULL);

	for (size_t i = 0; i < n; i++) {
		ann_topk_finish(&c.heaps[i]);
		for (size_t j = 0; j < k; j++) {
			int64_t v = hid[i * k + j];
			ids[i * k + j] = v < 0 ? ANN_KNN_NONE : (uint32_t)v;
		}
	}
	if (c.progress)
		c.progress(c.progress_ctx, "knn", c.total, c.total);
	if (st) {
		st->tile = t;
		st->tile_bytes = nth * tile_bytes_for(t);
		st->work_bytes = work_bytes_for(n, d, k, o->metric == ANN_METRIC_L2, dists != NULL, t, nth);
		st->tile_pairs = c.done;
		st->seconds = (double)(ann_now_ns() - t0) * 1e-9;
	}
	rc = ANN_OK;
fail:
	for (size_t i = 0; i < nlocks; i++)
		pthread_mutex_destroy(&c.rowlk[i]);
	ann_free(c.rowlk);
	if (curlk_ok)
		pthread_mutex_destroy(&c.curlk);
	for (size_t i = 0; i < nth; i++) {
		ann_aligned_free(w[i].tile);
		ann_free(w[i].bound);
		ann_free(w[i].rows);
	}
	ann_free(norms);
	if (hdist != dists)
		ann_free(hdist);
	ann_free(hid);
	ann_free(c.heaps);
	return rc;
}

/* ---- symmetrisation ------------------------------------------------------ */

void ann_graph_free(ann_graph *g)
{
	if (!g)
		return;
	ann_free(g->xadj);
	ann_free(g->adjncy);
	ann_free(g->adjwgt);
	memset(g, 0, sizeof *g);
}

uint64_t ann_graph_total_weight(const ann_graph *g)
{
	uint64_t s = 0;
	for (size_t e = 0; e < g->nnz; e++)
		s += (uint64_t)g->adjwgt[e];
	return s / 2;
}

/* Valid out-neighbours of u (no self, no padding), sorted and deduplicated
 * into out; returns their count. Insertion sort: k is small. */
static size_t own_list(const uint32_t *row, size_t k, uint32_t u, uint32_t *out)
{
	size_t m = 0;
	for (size_t j = 0; j < k; j++) {
		uint32_t v = row[j];
		if (v == ANN_KNN_NONE || v == u)
			continue;
		size_t p = m++;
		while (p > 0 && out[p - 1] > v) {
			out[p] = out[p - 1];
			p--;
		}
		out[p] = v;
	}
	size_t w = 0;
	for (size_t j = 0; j < m; j++)
		if (w == 0 || out[w - 1] != out[j])
			out[w++] = out[j];
	return w;
}

/* Merges the sorted lists a (u's own) and b (those listing u), both without
 * duplicates after skipping repeats, into adj/wgt (if not NULL); returns the
 * merged length. An id in both gets weight 2. */
static size_t merge_row(const uint32_t *a, size_t na, const uint32_t *b, size_t nb, int32_t *adj,
			int32_t *wgt)
{
	size_t i = 0, j = 0, m = 0;
	while (i < na || j < nb) {
		uint32_t v;
		int32_t wv = 0;
		if (j >= nb || (i < na && a[i] < b[j]))
			v = a[i];
		else
			v = b[j];
		if (i < na && a[i] == v) {
			wv++;
			while (i < na && a[i] == v)
				i++;
		}
		if (j < nb && b[j] == v) {
			wv++;
			while (j < nb && b[j] == v)
				j++;
		}
		if (adj) {
			adj[m] = (int32_t)v;
			wgt[m] = wv;
		}
		m++;
	}
	return m;
}

int ann_graph_from_knn(const uint32_t *ids, size_t n, size_t k, ann_graph *g, ann_error *err)
{
	int rc = ANN_E_NOMEM;
	size_t *rx = NULL;
	uint32_t *radj = NULL, *own = NULL;

	memset(g, 0, sizeof *g);
	if (n > (size_t)INT32_MAX)
		return ann_err(err, ANN_E_INVAL, "graph: %zu vertices, at most %d supported", n, INT32_MAX);
	size_t nk;
	if (!ann_mul_ok(n, k, &nk) || nk > SIZE_MAX / 8)
		return ann_err(err, ANN_E_INVAL, "graph: n %zu x k %zu overflows", n, k);
	if (n > 0 && k > 0 && !ids)
		return ann_err(err, ANN_E_INVAL, "graph: ids is NULL");
	for (size_t i = 0; i < nk; i++) {
		uint32_t v = ids[i];
		if (v != ANN_KNN_NONE && v >= n)
			return ann_err(err, ANN_E_INVAL, "graph: k-NN row %zu column %zu: id %" PRIu32
				       " out of range (n = %zu)", i / k, i % k, v, n);
	}

	/* reverse lists: row v holds every u with v in knn(u), ascending u */
	rx = ann_calloc(n + 2, sizeof *rx);
	own = ann_malloc((k ? k : 1) * sizeof *own);
	if (!rx || !own)
		goto nomem;
	for (size_t i = 0; i < nk; i++) {
		uint32_t v = ids[i];
		if (v != ANN_KNN_NONE && v != i / k)
			rx[v + 2]++;
	}
	for (size_t v = 0; v < n; v++)
		rx[v + 2] += rx[v + 1];
	radj = ann_malloc((rx[n + 1] ? rx[n + 1] : 1) * sizeof *radj);
	if (!radj)
		goto nomem;
	for (size_t i = 0; i < nk; i++) {
		uint32_t v = ids[i];
		if (v != ANN_KNN_NONE && v != i / k)
			radj[rx[v + 1]++] = (uint32_t)(i / k);
	}
	/* now row v of the reverse lists is radj[rx[v] .. rx[v + 1]) */

	g->xadj = ann_malloc((n + 1) * sizeof *g->xadj);
	if (!g->xadj)
		goto nomem;
	uint64_t nnz = 0;
	g->xadj[0] = 0;
	for (size_t u = 0; u < n; u++) {
		size_t no = own_list(ids + u * k, k, (uint32_t)u, own);
		nnz += merge_row(own, no, radj + rx[u], rx[u + 1] - rx[u], NULL, NULL);
		if (nnz > (uint64_t)INT32_MAX) {
			rc = ann_err(err, ANN_E_INVAL, "graph: more than %d adjacency entries (METIS idx_t)",
				     INT32_MAX);
			goto fail;
		}
		g->xadj[u + 1] = (int32_t)nnz;
	}
	g->adjncy = ann_malloc((nnz ? nnz : 1) * sizeof *g->adjncy);
	g->adjwgt = ann_malloc((nnz ? nnz : 1) * sizeof *g->adjwgt);
	if (!g->adjncy || !g->adjwgt)
		goto nomem;
	for (size_t u = 0; u < n; u++) {
		size_t no = own_list(ids + u * k, k, (uint32_t)u, own);
		merge_row(own, no, radj + rx[u], rx[u + 1] - rx[u], g->adjncy + g->xadj[u],
			  g->adjwgt + g->xadj[u]);
	}
	g->n = n;
	g->nnz = (size_t)nnz;
	rc = ANN_OK;
	goto out;
nomem:
	rc = ann_err(err, ANN_E_NOMEM, "graph: cannot allocate the graph of %zu x %zu neighbours", n, k);
fail:
	ann_graph_free(g);
out:
	ann_free(rx);
	ann_free(radj);
	ann_free(own);
	return rc;
}
