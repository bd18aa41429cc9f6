/* SPDX-License-Identifier: MIT */
/*
 * test_knngraph.c: the exact k-NN graph against a double-precision scan,
 * its memory budget, padding and errors; the CSR symmetrisation against a
 * dense count; METIS on planted communities; cut/balance and neighbour
 * shares against naive counts; the balanced assignment against brute force
 * and an exact Hungarian solver.
 */
#include "testutil.h"

#include "knngraph.h"
#include "partition.h"

static ann_rng rng;

/* ---- helpers --------------------------------------------------------------- */

static double exact_dist(ann_metric m, const float *a, const float *b, size_t d)
{
	double s = 0, na = 0, nb = 0, dot = 0;
	for (size_t j = 0; j < d; j++) {
		double x = a[j], y = b[j];
		s += (x - y) * (x - y);
		dot += x * y;
		na += x * x;
		nb += y * y;
	}
	if (m == ANN_METRIC_L2)
		return s;
	if (m == ANN_METRIC_IP)
		return -dot;
	return 1.0 - dot / (sqrt(na) * sqrt(nb));
}

typedef struct dpair {
	double d;
	uint32_t id;
} dpair;

static int dpair_cmp(const void *x, const void *y)
{
	const dpair *a = x, *b = y;
	if (a->d != b->d)
		return a->d < b->d ? -1 : 1;
	return (a->id > b->id) - (a->id < b->id);
}

/* Checks ids/dists of the k-NN graph against a double-precision scan: every
 * row's ids must be the exact k nearest, except that a neighbour whose
 * exact distance ties the k-th within tol may swap with it. Returns rows
 * whose id lists differ from the exact ones at all (near-ties). */
static size_t check_knn(ann_metric m, const float *x, size_t n, size_t d, size_t k, const uint32_t *ids,
			const float *dists)
{
	dpair *all = malloc((n ? n : 1) * sizeof *all);
	size_t differ = 0, kk = ANN_MIN(k, n - 1);
	for (size_t i = 0; i < n; i++) {
		size_t c = 0;
		for (size_t j = 0; j < n; j++)
			if (j != i)
				all[c++] = (dpair){exact_dist(m, x + i * d, x + j * d, d), (uint32_t)j};
		qsort(all, c, sizeof *all, dpair_cmp);
		double kth = kk ? all[kk - 1].d : 0, tol = 1e-4 * fmax(1.0, fabs(kth));
		bool same = true;
		for (size_t r = 0; r < k; r++) {
			uint32_t got = ids[i * k + r];
			if (r >= kk) {
				ASSERT_EQ(got, ANN_KNN_NONE);
				if (dists)
					ASSERT_TRUE(isinf(dists[i * k + r]));
				continue;
			}
			ASSERT_TRUE(got < n && got != i);
			double e = exact_dist(m, x + i * d, x + (size_t)got * d, d);
			if (dists)
				ASSERT_NEAR(dists[i * k + r], e, 1e-3);
			ASSERT_LE(e, kth + tol); /* a true near neighbour */
			if (got != all[r].id)
				same = false;
			for (size_t q = 0; q < r; q++)
				ASSERT_NE(ids[i * k + q], got);
		}
		differ += !same;
	}
	free(all);
	return differ;
}

/* Naive symmetric weights of a k-NN list set: W[u][v] = [v in knn(u)] + [u in knn(v)]. */
static int *dense_weights(const uint32_t *ids, size_t n, size_t k)
{
	int *W = calloc(n * n, sizeof *W);
	for (size_t u = 0; u < n; u++) {
		for (size_t r = 0; r < k; r++) {
			uint32_t v = ids[u * k + r];
			if (v == ANN_KNN_NONE || v == u)
				continue;
			bool dup = false;
			for (size_t q = 0; q < r; q++)
				dup |= ids[u * k + q] == v;
			if (dup)
				continue;
			W[u * n + v]++;
			W[v * n + u]++;
		}
	}
	return W;
}

static void check_graph_vs_dense(const ann_graph *g, const int *W, size_t n)
{
	ASSERT_EQ(g->n, n);
	ASSERT_EQ(g->xadj[0], 0);
	ASSERT_EQ(g->xadj[n], g->nnz);
	size_t nnz = 0;
	for (size_t u = 0; u < n; u++) {
		size_t e = (size_t)g->xadj[u];
		for (size_t v = 0; v < n; v++) {
			if (!W[u * n + v])
				continue;
			ASSERT_TRUE(e < (size_t)g->xadj[u + 1]);
			ASSERT_EQ(g->adjncy[e], v); /* sorted, no duplicates, no self loop */
			ASSERT_EQ(g->adjwgt[e], W[u * n + v]);
			e++;
			nnz++;
		}
		ASSERT_EQ(e, g->xadj[u + 1]);
	}
	ASSERT_EQ(nnz, g->nnz);
}

/* ---- k-NN graph -------------------------------------------------------------- */

static int64_t peak_live;

static void track_peak(void *ctx, const char *phase, uint64_t done, uint64_t total)
{
	uint64_t *calls = ctx;
	ASSERT_TRUE(strcmp(phase, "knn") == 0);
	ASSERT_LE(done, total);
	calls[0]++;
	if (done == total)
		calls[1]++;
	peak_live = ANN_MAX(peak_live, ann_mem_live_bytes());
}

static void test_knn_exact(void)
{
	t_current = "knn_exact";
	const size_t n = 300, d = 17, k = 7;
	float *x = malloc(n * d * sizeof *x);
	t_fill_uniform(&rng, x, n * d, -1.0f, 1.0f);
	uint32_t *ids = malloc(n * k * sizeof *ids), *ids2 = malloc(n * k * sizeof *ids2);
	float *dists = malloc(n * k * sizeof *dists);
	const ann_metric metrics[] = {ANN_METRIC_L2, ANN_METRIC_IP, ANN_METRIC_COSINE};
	for (size_t mi = 0; mi < 3; mi++) {
		ann_knn_opts o;
		ann_knn_opts_init(&o);
		o.k = k;
		o.metric = metrics[mi];
		o.mem_bytes = 64 * 64 * 4 + 64 * 4; /* one 64 x 64 tile: 5 x 5 tiles of rows */
		ann_knn_stats st;
		ASSERT_OK(ann_knn_graph(x, n, d, &o, ids, dists, &st, &te_));
		ASSERT_EQ(st.tile, 64);
		ASSERT_EQ(st.tile_pairs, 15); /* 5 tile rows: 5 * 6 / 2 pairs */
		size_t differ = check_knn(o.metric, x, n, d, k, ids, dists);
		ASSERT_LE(differ, 3); /* only near-ties may reorder */
		/* two threads, same tile edge: identical result, without dists */
		o.threads = 2;
		o.mem_bytes *= 2;
		ann_knn_stats st2;
		ASSERT_OK(ann_knn_graph(x, n, d, &o, ids2, NULL, &st2, &te_));
		ASSERT_EQ(st2.tile, 64);
		ASSERT_TRUE(memcmp(ids, ids2, n * k * sizeof *ids) == 0);
		/* one tile covering everything: still the exact neighbours */
		o.threads = 1;
		o.mem_bytes = 0;
		ASSERT_OK(ann_knn_graph(x, n, d, &o, ids2, NULL, &st2, &te_));
		ASSERT_EQ(st2.tile, n);
		ASSERT_LE(check_knn(o.metric, x, n, d, k, ids2, NULL), 3);
	}
	free(x);
	free(ids);
	free(ids2);
	free(dists);
}

/* Points 1e5 from the origin with a spread of 1: the sgemm's |x|^2 - 2 x.y +
 * |y|^2 rounds at ~1e3 there, so the graph was noise; the rows are shifted
 * by the first one first, and the neighbours are the exact ones again. */
static void test_knn_off_origin(void)
{
	t_current = "knn_off_origin";
	const size_t n = 300, d = 17, k = 7;
	float *x = malloc(n * d * sizeof *x);
	t_fill_uniform(&rng, x, n * d, -1.0f, 1.0f);
	for (size_t i = 0; i < n * d; i++)
		x[i] += 1e5f;
	uint32_t *ids = malloc(n * k * sizeof *ids);
	float *dists = malloc(n * k * sizeof *dists);
	ann_knn_opts o;
	ann_knn_opts_init(&o);
	o.k = k;
	o.mem_bytes = 64 * 64 * 4 + 64 * 4; /* 5 x 5 tiles of rows: shifted tile by tile */
	o.threads = 2;
	o.mem_bytes *= 2;
	ASSERT_OK(ann_knn_graph(x, n, d, &o, ids, dists, NULL, &te_));
	ASSERT_LE(check_knn(o.metric, x, n, d, k, ids, dists), 3);
	free(x);
	free(ids);
	free(dists);
}

/* The budget: tiles never exceed mem_bytes, and everything the call holds
 * (seen from the progress callback, which runs with all buffers allocated)
 * is tiles + the stated O(n k) working memory. */
static void test_knn_budget(void)
{
	t_current = "knn_budget";
	const size_t n = 1000, d = 8, k = 5;
	float *x = malloc(n * d * sizeof *x);
	t_fill_uniform(&rng, x, n * d, 0.0f, 1.0f);
	uint32_t *ids = malloc(n * k * sizeof *ids);
	const size_t budgets[] = {4096, 20000, 100000, 1u << 20};
	for (int th = 1; th <= 2; th++) {
		for (size_t b = 0; b < sizeof budgets / sizeof budgets[0]; b++) {
			ann_knn_opts o;
			ann_knn_opts_init(&o);
			o.k = k;
			o.threads = th;
			o.mem_bytes = budgets[b];
			uint64_t calls[2] = {0, 0};
			o.progress = track_peak;
			o.progress_ctx = calls;
			size_t plan_t = 0, plan_bytes = 0;
			ASSERT_OK(ann_knn_plan(n, d, &o, &plan_t, &plan_bytes, &te_));
			int64_t base = ann_mem_live_bytes();
			peak_live = base;
			ann_knn_stats st;
			ASSERT_OK(ann_knn_graph(x, n, d, &o, ids, NULL, &st, &te_));
			ASSERT_EQ(st.tile, plan_t);
			ASSERT_LE(st.tile_bytes, o.mem_bytes);
			ASSERT_LE(st.tile_bytes + st.work_bytes, plan_bytes);
			ASSERT_LE(peak_live - base, (int64_t)(st.tile_bytes + st.work_bytes));
			ASSERT_TRUE(peak_live > base);
			ASSERT_EQ(ann_mem_live_bytes(), base); /* nothing leaked */
			ASSERT_TRUE(calls[0] >= 2);
			ASSERT_EQ(calls[1], 1);
			size_t nt = (n + st.tile - 1) / st.tile;
			ASSERT_EQ(st.tile_pairs, nt * (nt + 1) / 2);
		}
	}
	/* too small for one 16 x 16 tile per thread */
	ann_knn_opts o;
	ann_knn_opts_init(&o);
	o.k = k;
	o.mem_bytes = 1000;
	ann_error e = {0};
	ASSERT_ERR(ann_knn_graph(x, n, d, &o, ids, NULL, NULL, &e), e, ANN_E_BUDGET, "mem_bytes 1000");
	ASSERT_ERR(ann_knn_plan(n, d, &o, NULL, NULL, &e), e, ANN_E_BUDGET, "too small");
	free(x);
	free(ids);
}

static void test_knn_small_n(void)
{
	t_current = "knn_small_n";
	const size_t d = 4, k = 10;
	float x[6 * 4];
	t_fill_uniform(&rng, x, 6 * 4, -1.0f, 1.0f);
	uint32_t ids[6 * 10];
	float dists[6 * 10];
	for (size_t n = 0; n <= 6; n++) {
		ann_knn_opts o;
		ann_knn_opts_init(&o);
		o.k = k;
		o.threads = 2;
		ASSERT_OK(ann_knn_graph(x, n, d, &o, ids, dists, NULL, &te_));
		if (n > 0)
			ASSERT_EQ(check_knn(o.metric, x, n, d, k, ids, dists), 0);
		/* k = n - 1 exactly: every other point, no padding */
		if (n >= 2) {
			o.k = n - 1;
			ASSERT_OK(ann_knn_graph(x, n, d, &o, ids, dists, NULL, &te_));
			ASSERT_EQ(check_knn(o.metric, x, n, d, n - 1, ids, dists), 0);
		}
	}
	/* self excluded even when other points coincide with it */
	float dup[3 * 4] = {1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4};
	ann_knn_opts o;
	ann_knn_opts_init(&o);
	o.k = 2;
	ASSERT_OK(ann_knn_graph(dup, 3, 4, &o, ids, dists, NULL, &te_));
	for (uint32_t i = 0; i < 3; i++) {
		ASSERT_TRUE(ids[i * 2] != i && ids[i * 2 + 1] != i);
		ASSERT_TRUE(ids[i * 2] < ids[i * 2 + 1]); /* tie: smaller id first */
		ASSERT_EQ(dists[i * 2], 0.0f);
	}
}

static void test_knn_errors(void)
{
	t_current = "knn_errors";
	float x[5 * 3];
	t_fill_uniform(&rng, x, 15, 0.0f, 1.0f);
	uint32_t ids[5 * 2];
	ann_knn_opts o;
	ann_knn_opts_init(&o);
	o.k = 2;
	ann_error e = {0};
	x[3 * 3 + 2] = NAN;
	ASSERT_ERR(ann_knn_graph(x, 5, 3, &o, ids, NULL, NULL, &e), e, ANN_E_INVAL, "vector 3 component 2");
	x[3 * 3 + 2] = INFINITY;
	ASSERT_ERR(ann_knn_graph(x, 5, 3, &o, ids, NULL, NULL, &e), e, ANN_E_INVAL, "not finite");
	x[3 * 3 + 2] = 0.5f;
	o.k = 0;
	ASSERT_ERR(ann_knn_graph(x, 5, 3, &o, ids, NULL, NULL, &e), e, ANN_E_INVAL, "k must be");
	o.k = 2;
	o.threads = 1000;
	ASSERT_ERR(ann_knn_graph(x, 5, 3, &o, ids, NULL, NULL, &e), e, ANN_E_INVAL, "threads");
	o.threads = 1;
	ASSERT_ERR(ann_knn_graph(x, 5, 0, &o, ids, NULL, NULL, &e), e, ANN_E_INVAL, "dimension");
	/* allocation failure at each site: a clean error, nothing leaked */
	int64_t base = ann_mem_live_bytes();
	for (int64_t f = 0; f < 12; f++) {
		ann_mem_fail_after(f);
		o.threads = 2;
		int rc = ann_knn_graph(x, 5, 3, &o, ids, NULL, NULL, &e);
		ann_mem_fail_after(-1);
		ASSERT_TRUE(rc == ANN_OK || rc == ANN_E_NOMEM);
		ASSERT_EQ(ann_mem_live_bytes(), base);
	}
}

/* ---- symmetrisation ------------------------------------------------------------ */

static void test_graph_symmetrise(void)
{
	t_current = "graph_symmetrise";
	/* a real k-NN graph */
	const size_t n = 200, d = 6, k = 6;
	float *x = malloc(n * d * sizeof *x);
	t_fill_uniform(&rng, x, n * d, 0.0f, 1.0f);
	uint32_t *ids = malloc(n * k * sizeof *ids);
	ann_knn_opts o;
	ann_knn_opts_init(&o);
	o.k = k;
	ASSERT_OK(ann_knn_graph(x, n, d, &o, ids, NULL, NULL, &te_));
	ann_graph g;
	ASSERT_OK(ann_graph_from_knn(ids, n, k, &g, &te_));
	int *W = dense_weights(ids, n, k);
	check_graph_vs_dense(&g, W, n);
	uint64_t tw = 0;
	size_t mutual = 0;
	for (size_t i = 0; i < n * n; i++) {
		tw += (uint64_t)W[i];
		mutual += W[i] == 2;
	}
	ASSERT_EQ(ann_graph_total_weight(&g), tw / 2);
	ASSERT_TRUE(mutual > 0 && mutual < tw); /* both weights occur */
	ann_graph_free(&g);
	free(W);

	/* hostile lists: self ids, padding, duplicates */
	const size_t n2 = 40, k2 = 5;
	uint32_t *ids2 = malloc(n2 * k2 * sizeof *ids2);
	for (size_t i = 0; i < n2 * k2; i++) {
		uint64_t r = ann_rng_below(&rng, 10);
		ids2[i] = r == 0   ? ANN_KNN_NONE
			  : r == 1 ? (uint32_t)(i / k2)
				   : (uint32_t)ann_rng_below(&rng, 8);
	}
	ASSERT_OK(ann_graph_from_knn(ids2, n2, k2, &g, &te_));
	W = dense_weights(ids2, n2, k2);
	check_graph_vs_dense(&g, W, n2);
	ann_graph_free(&g);
	free(W);

	ann_error e = {0};
	ids2[3 * k2 + 4] = (uint32_t)n2;
	ASSERT_ERR(ann_graph_from_knn(ids2, n2, k2, &g, &e), e, ANN_E_INVAL, "row 3 column 4");
	ASSERT_TRUE(g.xadj == NULL && g.n == 0);
	ann_graph_free(&g);
	free(ids2);
	free(ids);
	free(x);
}

/* ---- partition ------------------------------------------------------------------- */

/* Planted communities: c clusters of s vertices, each vertex with kin random
 * neighbours inside its cluster and, for one vertex in `every`, one outside. */
static uint32_t *planted(size_t c, size_t s, size_t kin, size_t every, size_t *kout)
{
	size_t n = c * s, k = kin + 1;
	uint32_t *ids = malloc(n * k * sizeof *ids);
	for (size_t v = 0; v < n; v++) {
		size_t cl = v / s;
		for (size_t r = 0; r < kin; r++)
			ids[v * k + r] = (uint32_t)(cl * s + ann_rng_below(&rng, s));
		ids[v * k + kin] = ANN_KNN_NONE;
		if (ann_rng_below(&rng, every) == 0) {
			size_t oc = (cl + 1 + ann_rng_below(&rng, c - 1)) % c;
			ids[v * k + kin] = (uint32_t)(oc * s + ann_rng_below(&rng, s));
		}
	}
	*kout = k;
	return ids;
}

static void naive_stats(const ann_graph *g, const uint32_t *lab, size_t m, uint64_t *cut, size_t *maxp)
{
	*cut = 0;
	size_t *sz = calloc(m, sizeof *sz);
	for (size_t u = 0; u < g->n; u++) {
		sz[lab[u]]++;
		for (int32_t e = g->xadj[u]; e < g->xadj[u + 1]; e++)
			if (lab[u] != lab[g->adjncy[e]])
				*cut += (uint64_t)g->adjwgt[e];
	}
	*cut /= 2;
	*maxp = 0;
	for (size_t j = 0; j < m; j++)
		*maxp = ANN_MAX(*maxp, sz[j]);
	free(sz);
}

static void test_partition_planted(void)
{
	t_current = "partition_planted";
	const size_t c = 8, s = 128, n = c * s;
	size_t k;
	uint32_t *ids = planted(c, s, 8, 8, &k);
	ann_graph g;
	ASSERT_OK(ann_graph_from_knn(ids, n, k, &g, &te_));
	/* the planted labelling and its cut */
	uint32_t *truth = malloc(n * sizeof *truth), *parts = malloc(n * sizeof *parts);
	for (size_t v = 0; v < n; v++)
		truth[v] = (uint32_t)(v / s);
	ann_partition_stats ts, st;
	ASSERT_OK(ann_partition_eval(&g, truth, c, &ts, &te_));
	ASSERT_TRUE(ts.cut > 0);
	ASSERT_NEAR(ts.balance, 1.0, 1e-12);

	/* keep a copy: METIS must not write the graph */
	int32_t *adj_copy = malloc(g.nnz * sizeof *adj_copy);
	memcpy(adj_copy, g.adjncy, g.nnz * sizeof *adj_copy);

	ASSERT_OK(ann_partition_graph(&g, c, 0.03, 7, parts, &st, &te_));
	ASSERT_TRUE(memcmp(adj_copy, g.adjncy, g.nnz * sizeof *adj_copy) == 0);
	printf("  planted: cut %" PRIu64 " (planted %" PRIu64 ") of %" PRIu64 ", balance %.3f\n",
	       st.cut, ts.cut, st.total_weight, st.balance);
	ASSERT_LE(st.cut, ts.cut);
	ASSERT_LE(st.max_part, (size_t)floor(1.03 * s)); /* the hard cap */
	ASSERT_EQ(st.empty_parts, 0);
	/* each part is (almost all) one cluster */
	for (size_t j = 0; j < c; j++) {
		size_t cnt[8] = {0}, tot = 0, best = 0;
		for (size_t v = 0; v < n; v++)
			if (parts[v] == j) {
				cnt[truth[v]]++;
				tot++;
			}
		for (size_t q = 0; q < c; q++)
			best = ANN_MAX(best, cnt[q]);
		ASSERT_TRUE(best * 100 >= tot * 95);
	}
	/* stats = naive count */
	uint64_t cut;
	size_t maxp;
	naive_stats(&g, parts, c, &cut, &maxp);
	ASSERT_EQ(st.cut, cut);
	ASSERT_EQ(st.max_part, maxp);
	ASSERT_EQ(st.total_weight, ann_graph_total_weight(&g));
	ASSERT_NEAR(st.cut_frac, (double)cut / (double)st.total_weight, 1e-12);
	/* same seed, same partition */
	uint32_t *parts2 = malloc(n * sizeof *parts2);
	ASSERT_OK(ann_partition_graph(&g, c, 0.03, 7, parts2, NULL, &te_));
	ASSERT_TRUE(memcmp(parts, parts2, n * sizeof *parts) == 0);

	/* m = 2 (recursive bisection) and m = 1 */
	ASSERT_OK(ann_partition_graph(&g, 2, 0.03, 1, parts, &st, &te_));
	ASSERT_EQ(st.empty_parts, 0);
	ASSERT_LE(st.balance, 1.04);
	ASSERT_LE(st.cut, ts.cut); /* 4 whole clusters a side cut less than the planted 8-way cut */
	ASSERT_OK(ann_partition_graph(&g, 1, 0, 1, parts, &st, &te_));
	ASSERT_EQ(st.cut, 0);
	ASSERT_EQ(st.max_part, n);
	/* m = n and m > n */
	ASSERT_OK(ann_partition_graph(&g, n, 0, 1, parts, &st, &te_));
	ASSERT_EQ(st.max_part, 1);
	ann_error e = {0};
	ASSERT_ERR(ann_partition_graph(&g, n + 1, 0, 1, parts, &st, &e), e, ANN_E_INVAL, "parts for");
	ASSERT_ERR(ann_partition_graph(&g, 4, 2.0, 1, parts, &st, &e), e, ANN_E_INVAL, "imbalance");
	/* a malformed graph is refused, naming the vertex */
	int32_t keep = g.adjncy[g.xadj[5]];
	g.adjncy[g.xadj[5]] = 5;
	ASSERT_ERR(ann_partition_graph(&g, 4, 0, 1, parts, &st, &e), e, ANN_E_INVAL, "vertex 5");
	g.adjncy[g.xadj[5]] = keep;
	/* an edgeless graph */
	ann_graph empty;
	uint32_t none[4] = {ANN_KNN_NONE, ANN_KNN_NONE, ANN_KNN_NONE, ANN_KNN_NONE};
	ASSERT_OK(ann_graph_from_knn(none, 4, 1, &empty, &te_));
	ASSERT_OK(ann_partition_graph(&empty, 2, 0, 1, parts, &st, &te_));
	ASSERT_EQ(st.max_part, 2);
	ann_graph_free(&empty);

	free(adj_copy);
	free(parts2);
	free(truth);
	free(parts);
	free(ids);
	ann_graph_free(&g);
}

/* Many tight clusters: parts of n / m cannot be packed from whole clusters,
 * METIS overshoots the imbalance and the repair must enforce the cap. */
static void test_partition_repair(void)
{
	t_current = "partition_repair";
	/* the k-NN graph of 200 tight Gaussian clusters of 20 points */
	const size_t cl = 20, nclq = 200, n = cl * nclq, k = 10, d = 16;
	float *x = malloc(n * d * sizeof *x), *cen = malloc(nclq * d * sizeof *cen);
	for (size_t i = 0; i < nclq * d; i++)
		cen[i] = (float)ann_rng_normal(&rng);
	for (size_t v = 0; v < n; v++)
		for (size_t j = 0; j < d; j++)
			x[v * d + j] = cen[v / cl * d + j] + 0.05f * (float)ann_rng_normal(&rng);
	uint32_t *ids = malloc(n * k * sizeof *ids);
	ann_knn_opts o;
	ann_knn_opts_init(&o);
	o.k = k;
	ASSERT_OK(ann_knn_graph(x, n, d, &o, ids, NULL, NULL, &te_));
	free(x);
	free(cen);
	ann_graph g;
	ASSERT_OK(ann_graph_from_knn(ids, n, k, &g, &te_));
	uint32_t *parts = malloc(n * sizeof *parts);
	const size_t ms[] = {3, 16, 64, 128};
	size_t moved = 0;
	for (size_t t = 0; t < 4; t++) {
		size_t m = ms[t];
		for (int q = 0; q < 2; q++) {
			double imb = q ? 0.2 : 0.01;
			size_t cap = ANN_MAX((n + m - 1) / m,
					     (size_t)floor((1.0 + imb) * (double)n / (double)m));
			ann_partition_stats st;
			ASSERT_OK(ann_partition_graph(&g, m, imb, 3, parts, &st, &te_));
			printf("  clusters m=%zu imbalance %.2f: cut %.3f, balance %.3f, repair moved %zu\n",
			       m, imb, st.cut_frac, st.balance, st.moved);
			ASSERT_LE(st.max_part, cap);
			moved += st.moved;
			uint64_t cut;
			size_t maxp;
			naive_stats(&g, parts, m, &cut, &maxp);
			ASSERT_EQ(st.cut, cut);
			ASSERT_EQ(st.max_part, maxp);
		}
	}
	ASSERT_TRUE(moved > 0); /* the repair was exercised */
	free(parts);
	free(ids);
	ann_graph_free(&g);
}

static void test_eval_and_shares(void)
{
	t_current = "eval_and_shares";
	const size_t n = 150, k = 6, m = 7;
	uint32_t *ids = malloc(n * k * sizeof *ids);
	for (size_t i = 0; i < n * k; i++)
		ids[i] = (uint32_t)ann_rng_below(&rng, n);
	ann_graph g;
	ASSERT_OK(ann_graph_from_knn(ids, n, k, &g, &te_));
	uint32_t *lab = malloc(n * sizeof *lab);
	for (size_t i = 0; i < n; i++)
		lab[i] = (uint32_t)ann_rng_below(&rng, m);
	ann_partition_stats st;
	ASSERT_OK(ann_partition_eval(&g, lab, m, &st, &te_));
	uint64_t cut;
	size_t maxp;
	naive_stats(&g, lab, m, &cut, &maxp);
	ASSERT_EQ(st.cut, cut);
	ASSERT_EQ(st.max_part, maxp);
	ASSERT_NEAR(st.balance, (double)maxp * m / n, 1e-12);

	/* shares against a dense computation from the k-NN lists */
	int *W = dense_weights(ids, n, k);
	ann_nshare sh;
	ASSERT_OK(ann_nshare_compute(&g, lab, m, &sh, &te_));
	float *score = calloc(n * m, sizeof *score), *ref = calloc(n * m, sizeof *ref);
	ASSERT_OK(ann_nshare_add(&g, lab, m, 0.5f, score, &te_));
	for (size_t p = 0; p < n; p++) {
		double tot = 0, per[7] = {0};
		for (size_t v = 0; v < n; v++) {
			tot += W[p * n + v];
			per[lab[v]] += W[p * n + v];
		}
		size_t e = sh.off[p];
		double sum = 0;
		for (size_t j = 0; j < m; j++) {
			if (per[j] == 0) {
				ASSERT_EQ(score[p * m + j], 0.0f);
				continue;
			}
			ASSERT_TRUE(e < sh.off[p + 1]);
			ASSERT_EQ(sh.part[e], j);
			ASSERT_NEAR(sh.share[e], per[j] / tot, 1e-6);
			ASSERT_NEAR(score[p * m + j], 0.5 * per[j] / tot, 1e-6);
			sum += sh.share[e];
			e++;
		}
		ASSERT_EQ(e, sh.off[p + 1]);
		if (tot > 0)
			ASSERT_NEAR(sum, 1.0, 1e-5);
	}
	ann_error e = {0};
	lab[9] = (uint32_t)m;
	ASSERT_ERR(ann_partition_eval(&g, lab, m, &st, &e), e, ANN_E_INVAL, "vertex 9");
	ASSERT_ERR(ann_nshare_add(&g, lab, m, 1.0f, score, &e), e, ANN_E_INVAL, "vertex 9");
	ann_nshare_free(&sh);
	free(score);
	free(ref);
	free(W);
	free(lab);
	free(ids);
	ann_graph_free(&g);
}

/* ---- balanced assignment ----------------------------------------------------------- */

/* Exact optimum by enumerating all m^n labellings. */
static double brute_force(const float *a, size_t n, size_t m, size_t cap)
{
	size_t total = 1;
	for (size_t i = 0; i < n; i++)
		total *= m;
	double best = -INFINITY;
	uint32_t lab[16];
	size_t cnt[16];
	for (size_t code = 0; code < total; code++) {
		size_t c = code;
		memset(cnt, 0, sizeof cnt);
		double s = 0;
		bool ok = true;
		for (size_t i = 0; i < n; i++) {
			lab[i] = (uint32_t)(c % m);
			c /= m;
			if (++cnt[lab[i]] > cap) {
				ok = false;
				break;
			}
			s += a[i * m + lab[i]];
		}
		if (ok && s > best)
			best = s;
	}
	return best;
}

/* Exact optimum with the Hungarian method (shortest augmenting paths with
 * potentials) on the n x (m * cap) slot matrix, maximising. */
static double hungarian(const float *a, size_t n, size_t m, size_t cap)
{
	size_t S = m * cap;
	double *u = calloc(n + 1, sizeof *u), *v = calloc(S + 1, sizeof *v);
	double *minv = malloc((S + 1) * sizeof *minv);
	size_t *p = calloc(S + 1, sizeof *p), *way = calloc(S + 1, sizeof *way);
	bool *used = malloc((S + 1) * sizeof *used);
	for (size_t i = 1; i <= n; i++) {
		p[0] = i;
		size_t j0 = 0;
		for (size_t j = 0; j <= S; j++) {
			minv[j] = INFINITY;
			used[j] = false;
		}
		do {
			used[j0] = true;
			size_t i0 = p[j0], j1 = 0;
			double delta = INFINITY;
			for (size_t j = 1; j <= S; j++) {
				if (used[j])
					continue;
				double cost = -(double)a[(i0 - 1) * m + (j - 1) / cap];
				double cur = cost - u[i0] - v[j];
				if (cur < minv[j]) {
					minv[j] = cur;
					way[j] = j0;
				}
				if (minv[j] < delta) {
					delta = minv[j];
					j1 = j;
				}
			}
			for (size_t j = 0; j <= S; j++) {
				if (used[j]) {
					u[p[j]] += delta;
					v[j] -= delta;
				} else {
					minv[j] -= delta;
				}
			}
			j0 = j1;
		} while (p[j0] != 0);
		do {
			size_t j1 = way[j0];
			p[j0] = p[j1];
			j0 = j1;
		} while (j0);
	}
	double s = 0;
	for (size_t j = 1; j <= S; j++)
		if (p[j])
			s += a[(p[j] - 1) * m + (j - 1) / cap];
	free(u);
	free(v);
	free(minv);
	free(p);
	free(way);
	free(used);
	return s;
}

static void check_assign(const float *a, size_t n, size_t m, size_t cap, double eps, double opt,
			 const uint32_t *lab, const ann_assign_stats *st)
{
	size_t cnt[64] = {0};
	double s = 0;
	for (size_t i = 0; i < n; i++) {
		ASSERT_TRUE(lab[i] < m);
		cnt[lab[i]]++;
		s += a[i * m + lab[i]];
	}
	for (size_t j = 0; j < m; j++)
		ASSERT_LE(cnt[j], cap);
	ASSERT_NEAR(st->primal, s, 1e-9);
	double tol = 1e-6 * (1.0 + fabs(opt));
	ASSERT_LE(s, opt + tol);
	double slack = (double)(n + st->dummies) * eps; /* the documented bound */
	ASSERT_TRUE(s >= opt - slack - tol);
	ASSERT_TRUE(st->dual >= opt - tol); /* the certificate bounds the optimum */
	if (!st->argmax)
		ASSERT_TRUE(st->dual - st->primal <= slack + tol);
}

static void test_assign_brute_force(void)
{
	t_current = "assign_brute_force";
	const size_t n = 8, m = 3;
	float a[8 * 3];
	uint32_t lab[8];
	int auctions = 0;
	for (int trial = 0; trial < 300; trial++) {
		size_t cap = 3 + (size_t)(trial % 3 == 0); /* 3 (tight-ish) or 4 */
		bool integer = trial % 2 == 1;
		/* skew: part 0 popular, so the argmax is usually infeasible */
		for (size_t i = 0; i < n * m; i++) {
			double r = ann_rng_uniform(&rng) * 10.0 + (i % m == 0 ? 3.0 : 0.0);
			a[i] = integer ? (float)floor(r) : (float)r;
		}
		double opt = brute_force(a, n, m, cap);
		/* integer scores with eps < 1 / (n + dummies): exactly optimal */
		double eps = integer ? 0.9 / (double)(m * cap) : 0.0;
		ann_assign_stats st;
		ASSERT_OK(ann_balanced_assign(a, n, m, cap, eps, lab, &st, &te_));
		if (eps == 0.0)
			eps = st.argmax ? 0.0 : st.eps_final;
		check_assign(a, n, m, cap, eps, opt, lab, &st);
		if (integer)
			ASSERT_NEAR(st.primal, opt, 1e-9);
		auctions += !st.argmax;
	}
	ASSERT_TRUE(auctions > 150);
}

static size_t pop_wins(const float *a, size_t n, size_t m, size_t pop)
{
	size_t w = 0;
	for (size_t i = 0; i < n; i++) {
		size_t b = 0;
		for (size_t j = 1; j < m; j++)
			if (a[i * m + j] > a[i * m + b])
				b = j;
		w += b == pop;
	}
	return w;
}

static void test_assign_hungarian(void)
{
	t_current = "assign_hungarian";
	size_t many_dummies = 0;
	for (int trial = 0; trial < 60; trial++) {
		size_t n = 30 + ann_rng_below(&rng, 40), m = 2 + ann_rng_below(&rng, 8);
		/* tight capacities (few dummies), and loose ones that a strongly
		 * popular part still overflows (many dummies) */
		bool loose = trial % 4 == 3;
		size_t cap = loose ? (n + 1) / 2 : (n + m - 1) / m + ann_rng_below(&rng, 3);
		float *a = malloc(n * m * sizeof *a);
		uint32_t *lab = malloc(n * sizeof *lab);
		size_t pop = ann_rng_below(&rng, m);
		for (size_t i = 0; i < n * m; i++)
			a[i] = (float)(ann_rng_normal(&rng) + (i % m == pop ? (loose ? 3.0 : 1.5) : 0.0));
		double opt = hungarian(a, n, m, cap);
		ann_assign_stats st;
		ASSERT_OK(ann_balanced_assign(a, n, m, cap, 0.0, lab, &st, &te_));
		check_assign(a, n, m, cap, st.argmax ? 0.0 : st.eps_final, opt, lab, &st);
		if (!st.argmax)
			ASSERT_EQ(st.dummies, m * cap - n);
		if (loose && pop_wins(a, n, m, pop) > cap)
			ASSERT_EQ(st.argmax, 0);
		many_dummies += !st.argmax && st.dummies > n / 2;
		/* a coarse eps: still within (n + dummies) * eps */
		ASSERT_OK(ann_balanced_assign(a, n, m, cap, 0.05, lab, &st, &te_));
		check_assign(a, n, m, cap, st.argmax ? 0.0 : 0.05, opt, lab, &st);
		free(a);
		free(lab);
	}
	ASSERT_TRUE(many_dummies >= 5); /* the dummy-heavy regime was exercised */
}

static void test_assign_loose_and_errors(void)
{
	t_current = "assign_loose_and_errors";
	const size_t n = 500, m = 16;
	float *a = malloc(n * m * sizeof *a);
	uint32_t *lab = malloc(n * sizeof *lab);
	t_fill_uniform(&rng, a, n * m, -5.0f, 5.0f);
	ann_assign_stats st;
	/* loose capacity: exactly the argmax */
	ASSERT_OK(ann_balanced_assign(a, n, m, n, 0.0, lab, &st, &te_));
	ASSERT_EQ(st.argmax, 1);
	for (size_t i = 0; i < n; i++) {
		size_t b = 0;
		for (size_t j = 1; j < m; j++)
			if (a[i * m + j] > a[i * m + b])
				b = j;
		ASSERT_EQ(lab[i], b);
	}
	/* tight: exactly n / m each, a large skewed instance */
	for (size_t i = 0; i < n * m; i++)
		a[i] += (i % m < 3) ? 4.0f : 0.0f;
	ASSERT_OK(ann_balanced_assign(a, n, m, (n + m - 1) / m, 0.0, lab, &st, &te_));
	ASSERT_EQ(st.argmax, 0);
	ASSERT_LE(st.max_load, (n + m - 1) / m);
	ASSERT_TRUE(st.dual - st.primal <= (double)(n + st.dummies) * st.eps_final + 1e-6 * fabs(st.primal));
	/* m = 1 */
	ASSERT_OK(ann_balanced_assign(a, n, 1, n, 0.0, lab, &st, &te_));
	ASSERT_EQ(lab[n - 1], 0);

	ann_error e = {0};
	ASSERT_ERR(ann_balanced_assign(a, n, m, 10, 0.0, lab, &st, &e), e, ANN_E_INVAL, "capacity 10");
	a[2 * m + 1] = NAN;
	ASSERT_ERR(ann_balanced_assign(a, n, m, n, 0.0, lab, &st, &e), e, ANN_E_INVAL, "point 2, part 1");
	free(a);
	free(lab);
}

/* Allocation failure at every site of the graph and partition functions:
 * ANN_E_NOMEM (or success), never a leak. METIS's own allocations are not
 * ours to fail. */
static void test_alloc_failures(void)
{
	t_current = "alloc_failures";
	const size_t n = 120, k = 5, m = 6;
	uint32_t *ids = malloc(n * k * sizeof *ids), *lab = malloc(n * sizeof *lab);
	for (size_t i = 0; i < n * k; i++)
		ids[i] = (uint32_t)ann_rng_below(&rng, n);
	float *a = malloc(n * m * sizeof *a);
	for (size_t i = 0; i < n * m; i++)
		a[i] = (float)ann_rng_normal(&rng) + (i % m == 0 ? 2.0f : 0.0f);
	ann_graph g;
	ASSERT_OK(ann_graph_from_knn(ids, n, k, &g, &te_));
	int64_t base = ann_mem_live_bytes();
	for (int64_t f = 0; f < 40; f++) {
		ann_error e = {0};
		int rc[5];
		ann_graph g2;
		ann_nshare sh;
		ann_partition_stats st;
		ann_assign_stats as;
		ann_mem_fail_after(f);
		rc[0] = ann_graph_from_knn(ids, n, k, &g2, &e);
		memset(lab, 0, n * sizeof *lab);
		ann_mem_fail_after(f);
		rc[1] = ann_nshare_compute(&g, lab, m, &sh, &e);
		ann_mem_fail_after(f);
		rc[2] = ann_partition_graph(&g, m, 0.01, 1, lab, &st, &e);
		ann_mem_fail_after(f);
		rc[3] = ann_balanced_assign(a, n, m, n / m, 0.0, lab, &as, &e);
		ann_mem_fail_after(f);
		memset(lab, 0, n * sizeof *lab);
		rc[4] = ann_nshare_add(&g, lab, m, 1.0f, a, &e);
		ann_mem_fail_after(-1);
		for (int q = 0; q < 5; q++)
			if (rc[q] != ANN_OK && rc[q] != ANN_E_NOMEM)
				T_FAIL("call %d, failing allocation %" PRId64 ": %d (%s)", q, f,
				       rc[q], e.msg);
		if (rc[0] == ANN_OK)
			ann_graph_free(&g2);
		if (rc[1] == ANN_OK)
			ann_nshare_free(&sh);
		ASSERT_EQ(ann_mem_live_bytes(), base);
	}
	ann_graph_free(&g);
	free(ids);
	free(lab);
	free(a);
}

int main(void)
{
	t_init("test_knngraph", &rng);
	test_knn_exact();
	test_knn_off_origin();
	test_knn_budget();
	test_knn_small_n();
	test_knn_errors();
	test_graph_symmetrise();
	test_partition_planted();
	test_partition_repair();
	test_eval_and_shares();
	test_assign_brute_force();
	test_assign_hungarian();
	test_assign_loose_and_errors();
	test_alloc_failures();
	printf("test_knngraph: ok\n");
	return 0;
}
