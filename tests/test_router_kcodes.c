/* SPDX-License-Identifier: MIT */
/*
 * Description: the compact k-means router (router_kcodes.c) and adaptive
 * probing (ann_search_opts.probe_eps).
 * Oracle: the compact router's top-16 overlaps the exact centroid ranking
 * (brute force in double over the same k-means centroids, taken from the
 * graph router trained with the same options) at least as well as stated
 * per bit width, and its calibration reports what an independent count
 * finds; its blob saves, loads and saves to the same bytes and routes the
 * same; a damaged blob is refused with the right code; the graph router's
 * blob (the old format) still loads through the same entry point. Through
 * the public API: an index with router bits finds the exact answers with
 * nprobe = all partitions and keeps fewer router bytes than the graph.
 * The graph router answers a single query by an exact scan when 64 x ef
 * covers its centroids: the exact top-16, also after a split.
 * Adaptive probing never probes more than nprobe, probes fewer when it
 * cuts, and probe_eps = INFINITY (or 0) gives exactly today's answers.
 */
#include <math.h>

#include <xxhash.h>

#include "gt.h"
#include "hnsw.h"
#include "index.h"
#include "router.h"
#include "testutil.h"
#include "vecio.h"

#define NQ 200
#define TOP 16

/* Exact top-TOP centroids of q over c (k x d) in double: the TOP-th smallest distance. */
static double exact_cut(const float *q, const float *c, size_t k, size_t d, double *dd)
{
	for (size_t i = 0; i < k; i++) {
		double s = 0;
		for (size_t j = 0; j < d; j++)
			s += ((double)q[j] - c[i * d + j]) * ((double)q[j] - c[i * d + j]);
		dd[i] = s;
	}
	double best[TOP];
	size_t nb = 0;
	for (size_t i = 0; i < k; i++) {
		if (nb < TOP) {
			best[nb++] = dd[i];
		} else {
			size_t w = 0;
			for (size_t a = 1; a < TOP; a++)
				if (best[a] > best[w])
					w = a;
			if (dd[i] < best[w])
				best[w] = dd[i];
		}
	}
	double m = best[0];
	for (size_t a = 1; a < nb; a++)
		m = best[a] > m ? best[a] : m;
	return m;
}

static void test_probe_cut(void)
{
	t_current = "test_probe_cut";
	float d[5] = {4, 4.8f, 5.7f, 6, 9};
	ASSERT_EQ(ann_router_probe_cut(d, 5, 0, ANN_METRIC_L2), 5);
	ASSERT_EQ(ann_router_probe_cut(d, 5, INFINITY, ANN_METRIC_L2), 5);
	/* squared distances: (1 + 0.2)^2 * 4 = 5.76 */
	ASSERT_EQ(ann_router_probe_cut(d, 5, 0.2, ANN_METRIC_L2), 3);
	ASSERT_EQ(ann_router_probe_cut(d, 5, 0.01, ANN_METRIC_L2), 1);
	ASSERT_EQ(ann_router_probe_cut(d, 2, 10, ANN_METRIC_L2), 2);
	ASSERT_EQ(ann_router_probe_cut(d, 0, 0.2, ANN_METRIC_L2), 0);
}

/* Compact routing against the exact ranking of the same centroids, per
 * bit width; blob round trip; old (graph) blob loads. */
static void test_router(void)
{
	t_current = "test_router";
	size_t n = 12000, d = 64, k = 1000;
	float *x = malloc(n * d * sizeof(float)), *q = malloc(NQ * d * sizeof(float));
	t_gen_mixture(x, n, q, NQ, (uint32_t)d, 40, 7);
	ann_build_opts o;
	ann_build_opts_init(&o);
	o.threads = 1;
	o.kmeans.kmeans_iters = 6;
	ann_router *g;
	ASSERT_OK(ann_router_train(&o, x, n, d, (uint32_t)k, &g, NULL));
	const ann_hnsw *h = ann_router_kmeans_graph(g);
	ASSERT_TRUE(h != NULL);
	float *c = malloc(k * d * sizeof(float));
	double *dd = malloc(k * sizeof(double));
	for (size_t i = 0; i < k; i++)
		ann_hnsw_vector_get(h, (uint32_t)i, c + i * d);
	static const unsigned bits[] = {1, 2, 4};
	static const double floor_ov[] = {0.70, 0.85, 0.95}; /* measured 0.8x, 0.9x, 0.98 (see the log) */
	double prev = 0;
	ann_search_opts so;
	ann_search_opts_init(&so);
	so.nprobe = TOP;
	uint32_t parts[TOP], parts2[TOP];
	for (size_t b = 0; b < 3; b++) {
		o.kmeans.router_bits = bits[b];
		ann_router *r;
		ASSERT_OK(ann_router_train(&o, x, n, d, (uint32_t)k, &r, NULL));
		ASSERT_TRUE(ann_router_is_kcodes(r));
		ASSERT_TRUE(ann_router_kmeans_graph(r) == NULL);
		ASSERT_EQ(r->nparts, k);
		ann_router_ctx *rc;
		ASSERT_OK(r->ops->ctx_new(r, &rc, NULL));
		size_t hit = 0;
		for (size_t i = 0; i < NQ; i++) {
			double cut = exact_cut(q + i * d, c, k, d, dd);
			ASSERT_EQ(r->ops->route(r, rc, q + i * d, &so, parts, NULL), TOP);
			for (size_t a = 0; a < TOP; a++) {
				ASSERT_TRUE(parts[a] < k);
				hit += dd[parts[a]] <= cut * (1 + 1e-6);
			}
		}
		double ov = (double)hit / (NQ * TOP), cal;
		ASSERT_OK(ann_router_kcodes_calibrate(r, x, n, 1, &cal, NULL));
		/* calibration counts on sample rows, this on held-out queries: same regime */
		printf("kcodes %u bit%s: top-%d overlap %.4f on queries, calibration %.4f, %zu router bytes (graph %zu)\n",
		       bits[b], bits[b] == 1 ? "" : "s", TOP, ov, cal, r->ops->ram_bytes(r), g->ops->ram_bytes(g));
		ASSERT_LE(floor_ov[b], ov);
		ASSERT_LE(prev - 0.02, ov);
		ASSERT_NEAR(cal, ov, 0.08);
		prev = ov;
		/* blob round trip: same bytes, same routes; the loaded router has no exact copy */
		uint8_t *blob, *blob2;
		size_t len, len2;
		ASSERT_OK(r->ops->save(r, &blob, &len, NULL));
		ASSERT_TRUE(ann_router_kcodes_blob(blob, len));
		ann_router *l;
		ASSERT_OK(ann_router_load(ANN_ROUTER_KMEANS, blob, len, (uint32_t)d, ANN_METRIC_L2, &l, NULL));
		ASSERT_TRUE(ann_router_is_kcodes(l));
		ASSERT_TRUE(l->ops->ram_bytes(l) + k * d * sizeof(float) == r->ops->ram_bytes(r));
		ASSERT_OK(l->ops->save(l, &blob2, &len2, NULL));
		ASSERT_EQ(len2, len);
		ASSERT_TRUE(memcmp(blob, blob2, len) == 0);
		ann_router_ctx *lc;
		ASSERT_OK(l->ops->ctx_new(l, &lc, NULL));
		for (size_t i = 0; i < NQ; i++) {
			ASSERT_EQ(r->ops->route(r, rc, q + i * d, &so, parts, NULL), TOP);
			ASSERT_EQ(l->ops->route(l, lc, q + i * d, &so, parts2, NULL), TOP);
			ASSERT_TRUE(memcmp(parts, parts2, sizeof parts) == 0);
		}
		/* a loaded router assigns by the estimates: the nearest estimate */
		uint32_t ap[1];
		ASSERT_OK(l->ops->assign(l, q, 1, &(ann_assign_rule){.copies = 1}, 1, ap, NULL));
		so.nprobe = 1;
		ASSERT_EQ(l->ops->route(l, lc, q, &so, parts2, NULL), 1);
		ASSERT_EQ(ap[0], parts2[0]);
		so.nprobe = TOP;
		/* split: partition 3 moves, a new one appears where asked */
		uint32_t np;
		ASSERT_OK(l->ops->split(l, 3, q + d, q + 2 * d, &np, NULL));
		ASSERT_EQ(np, k);
		ASSERT_EQ(l->nparts, k + 1);
		ASSERT_EQ(l->ops->route(l, lc, q + 2 * d, &so, parts2, NULL), TOP);
		ASSERT_EQ(parts2[0], k);
		ASSERT_EQ(l->ops->route(l, lc, q + d, &so, parts2, NULL), TOP);
		ASSERT_EQ(parts2[0], 3);
		l->ops->ctx_free(lc);
		ann_router_free(l);
		/* damage */
		ann_error e = {0};
		blob[len / 2] ^= 1;
		ASSERT_ERR(ann_router_load(ANN_ROUTER_KMEANS, blob, len, (uint32_t)d, ANN_METRIC_L2, &l, &e), e,
			   ANN_E_CORRUPT, "checksum mismatch");
		blob[len / 2] ^= 1;
		ASSERT_ERR(ann_router_load(ANN_ROUTER_KMEANS, blob, len - 1, (uint32_t)d, ANN_METRIC_L2, &l, &e), e,
			   ANN_E_CORRUPT, "truncated");
		ASSERT_ERR(ann_router_load(ANN_ROUTER_KMEANS, blob, len, (uint32_t)d + 1, ANN_METRIC_L2, &l, &e), e,
			   ANN_E_CORRUPT, "dimension");
		/* a centroid count the body cannot hold is refused before anything
		 * that size is allocated (fuzz_router found an out-of-memory here) */
		uint32_t k0 = ann_ld32(blob + 24);
		ann_st32(blob + 24, UINT32_MAX);
		ann_st64(blob + len - 8, XXH64(blob, len - 8, 0));
		ASSERT_ERR(ann_router_load(ANN_ROUTER_KMEANS, blob, len, (uint32_t)d, ANN_METRIC_L2, &l, &e), e,
			   ANN_E_CORRUPT, "do not make its");
		ann_st32(blob + 24, k0);
		ann_st64(blob + len - 8, XXH64(blob, len - 8, 0));
		blob[8] = 2;
		ASSERT_ERR(ann_router_load(ANN_ROUTER_KMEANS, blob, len, (uint32_t)d, ANN_METRIC_L2, &l, &e), e,
			   ANN_E_FORMAT, "version 2.0");
		ann_free(blob);
		ann_free(blob2);
		r->ops->ctx_free(rc);
		ann_router_free(r);
	}
	/* The graph router's blob (HNSW, the format of every older index) still loads. */
	uint8_t *gb;
	size_t gl;
	ASSERT_OK(g->ops->save(g, &gb, &gl, NULL));
	ASSERT_TRUE(!ann_router_kcodes_blob(gb, gl));
	ann_router *gl2;
	ASSERT_OK(ann_router_load(ANN_ROUTER_KMEANS, gb, gl, (uint32_t)d, ANN_METRIC_L2, &gl2, NULL));
	ASSERT_TRUE(ann_router_kmeans_graph(gl2) != NULL && !ann_router_is_kcodes(gl2));
	ASSERT_EQ(gl2->nparts, k);
	ann_router_free(gl2);
	ann_free(gb);
	/* The graph router scans its 1000 centroids for a single query once
	 * 64 x ef covers them (ef 16 here): exactly the nearest, ascending, also
	 * after a split added a centroid (the scan's scratch grows). */
	ann_search_opts sg;
	ann_search_opts_init(&sg);
	sg.nprobe = TOP;
	sg.hnsw_ef = 16;
	ann_router_ctx *gc;
	ASSERT_OK(g->ops->ctx_new(g, &gc, NULL));
	for (size_t i = 0; i < NQ; i++) {
		double cut = exact_cut(q + i * d, c, k, d, dd);
		ASSERT_EQ(g->ops->route(g, gc, q + i * d, &sg, parts, NULL), TOP);
		const float *rd = g->ops->route_dists(gc);
		for (size_t a = 0; a < TOP; a++) {
			ASSERT_TRUE(dd[parts[a]] <= cut * (1 + 1e-6));
			ASSERT_NEAR(rd[a], dd[parts[a]], 1e-3 * (1 + dd[parts[a]]));
			if (a)
				ASSERT_LE(rd[a - 1], rd[a]);
		}
	}
	uint32_t gnp;
	ASSERT_OK(g->ops->split(g, 3, q + d, q + 2 * d, &gnp, NULL));
	ASSERT_EQ(gnp, k);
	ASSERT_EQ(g->ops->route(g, gc, q + 2 * d, &sg, parts, NULL), TOP);
	ASSERT_EQ(parts[0], k);
	g->ops->ctx_free(gc);
	ann_router_free(g);
	/* other metrics are refused */
	o.kmeans.router_bits = 1;
	o.metric = ANN_METRIC_IP;
	ann_router *bad;
	ann_error e = {0};
	ASSERT_ERR(ann_router_train(&o, x, n, d, 16, &bad, &e), e, ANN_E_INVAL, "metric l2");
	free(c);
	free(dd);
	free(x);
	free(q);
}

static void search_set(ann_index *idx, const ann_search_opts *so, const float *q, size_t nq, size_t d, size_t batch,
		       int64_t *ids, float *dists, ann_query_stats *st)
{
	ann_searcher *s;
	ann_error e = {0};
	ASSERT_OK(ann_searcher_new(idx, so, &s, &e));
	for (size_t b = 0; b < nq; b += batch) {
		size_t nb = ANN_MIN(batch, nq - b);
		if (ann_search(s, q + b * d, nb, ids + b * so->k, dists + b * so->k, st + b, &e) < 0)
			T_FAIL("search: %s", e.msg);
	}
	ann_searcher_free(s);
}

/* Indexes with the graph and the compact router; adaptive probing on both. */
static void test_index(const char *dir)
{
	t_current = "test_index";
	size_t n = 6000, d = 32, k = 10, nq = NQ;
	float *x = malloc(n * d * sizeof(float)), *q = malloc(nq * d * sizeof(float));
	t_gen_mixture(x, n, q, nq, (uint32_t)d, 30, 5);
	/* gen's rows are integers in 0..255 already: the u8 file holds them exactly */
	char *data = t_path(dir, "base.u8bin");
	ann_vwriter *w;
	ASSERT_OK(ann_vwriter_open(data, (uint32_t)d, &w, NULL));
	ASSERT_OK(ann_vwriter_write_f32(w, x, n, NULL));
	ASSERT_OK(ann_vwriter_close(w, NULL));
	int32_t *gti = malloc(nq * k * sizeof(int32_t));
	float *gtd = malloc(nq * k * sizeof(float));
	ann_gt_opts go;
	ann_gt_opts_init(&go);
	go.k = (uint32_t)k;
	go.threads = 1;
	ASSERT_OK(ann_gt_compute_mem(x, n, q, nq, d, &go, gti, gtd, NULL));
	int64_t *ids = malloc(nq * k * sizeof(int64_t)), *ids2 = malloc(nq * k * sizeof(int64_t));
	float *ds = malloc(nq * k * sizeof(float)), *ds2 = malloc(nq * k * sizeof(float));
	ann_query_stats *st = calloc(nq, sizeof *st), *st2 = calloc(nq, sizeof *st2);
	size_t ram[2];
	for (int compact = 0; compact < 2; compact++) {
		ann_build_opts o;
		ann_build_opts_init(&o);
		o.partitions = 60;
		o.threads = 1;
		o.mem_bytes = (size_t)64 << 20;
		o.kmeans.router_bits = compact ? 2 : 0;
		char *path = t_path(dir, compact ? "kc" : "graph");
		ann_error e = {0};
		if (ann_build(data, path, &o, &e) < 0)
			T_FAIL("build: %s", e.msg);
		ann_index *idx;
		ASSERT_OK(ann_index_open(path, &idx, &e));
		ASSERT_EQ(ann_router_is_kcodes(idx->router), compact);
		ram[compact] = idx->router->ops->ram_bytes(idx->router);
		ann_search_opts so;
		ann_search_opts_init(&so);
		so.k = (uint32_t)k;
		/* every partition: exact */
		so.nprobe = 60;
		search_set(idx, &so, q, nq, d, 1, ids, ds, st);
		for (size_t i = 0; i < nq * k; i++)
			ASSERT_NEAR(ds[i], gtd[i], 1e-3 * (1 + gtd[i]));
		/* adaptive probing: off by default, INFINITY is off */
		so.nprobe = 8;
		search_set(idx, &so, q, nq, d, 1, ids, ds, st);
		for (float eps = 0; eps < 2; eps += 1) {
			so.probe_eps = eps == 0 ? 0 : INFINITY;
			search_set(idx, &so, q, nq, d, 1, ids2, ds2, st2);
			ASSERT_TRUE(memcmp(ids, ids2, nq * k * sizeof(int64_t)) == 0);
			ASSERT_TRUE(memcmp(ds, ds2, nq * k * sizeof(float)) == 0);
			for (size_t i = 0; i < nq; i++)
				ASSERT_EQ(st2[i].partitions, 8);
		}
		/* a cut: never more than nprobe, fewer on average, single = batch */
		so.probe_eps = 0.05f;
		search_set(idx, &so, q, nq, d, 1, ids, ds, st);
		search_set(idx, &so, q, nq, d, 16, ids2, ds2, st2);
		double sum = 0;
		for (size_t i = 0; i < nq; i++) {
			ASSERT_TRUE(st[i].partitions >= 1 && st[i].partitions <= so.nprobe);
			sum += st[i].partitions;
			if (!compact) /* batches of the graph router route exactly (sgemm): same cut */
				ASSERT_EQ(st[i].partitions, st2[i].partitions);
		}
		printf("%s router: %zu bytes; probe eps 0.05 probes %.2f of nprobe 8\n", compact ? "compact" : "graph",
		       ram[compact], sum / (double)nq);
		ASSERT_TRUE(sum < 8.0 * (double)nq);
		so.probe_eps = -1;
		ann_searcher *s;
		ASSERT_ERR(ann_searcher_new(idx, &so, &s, &e), e, ANN_E_INVAL, "probe eps");
		ann_index_close(idx);
		free(path);
	}
	ASSERT_TRUE(ram[1] * 3 < ram[0]);
	/* Updates on the compact router: inserts go to the nearest estimate, a
	 * compaction splits a grown partition (two new codes), the router blob is
	 * rewritten, and every vector, old or new, is still found exactly. */
	{
		char *path = t_path(dir, "kc");
		ann_writer *wr;
		ann_error e = {0};
		ASSERT_OK(ann_writer_open(path, &wr, &e));
		/* the queries, 20 times each with noise-free copies: one partition grows */
		size_t m = 40 * 20;
		float *ins = malloc(m * d * sizeof(float));
		int64_t *iid = malloc(m * sizeof(int64_t));
		for (size_t i = 0; i < m; i++) {
			memcpy(ins + i * d, q + (i % 40) * d, d * sizeof(float));
			iid[i] = (int64_t)(n + i);
		}
		if (ann_insert(wr, ins, m, (uint32_t)d, iid, 0, NULL, &e) < 0)
			T_FAIL("insert: %s", e.msg);
		ann_compact_stats cs;
		if (ann_compact(wr, 150, &cs, &e) < 0)
			T_FAIL("compact: %s", e.msg);
		printf("compact router: compaction split %u partitions\n", cs.partitions_split);
		ASSERT_TRUE(cs.partitions_split >= 1);
		ann_writer_close(wr);
		ann_index *idx;
		ASSERT_OK(ann_index_open(path, &idx, &e));
		ASSERT_TRUE(ann_router_is_kcodes(idx->router));
		ASSERT_EQ(idx->router->nparts, 60 + cs.partitions_split);
		ann_search_opts so;
		ann_search_opts_init(&so);
		so.k = 1;
		so.nprobe = idx->router->nparts;
		search_set(idx, &so, q, 40, d, 1, ids, ds, st);
		for (size_t i = 0; i < 40; i++)
			ASSERT_TRUE(ds[i] == 0); /* its own copies are at distance 0 */
		ann_index_close(idx);
		uint64_t problems = 99;
		ASSERT_OK(ann_verify(path, NULL, NULL, &problems, NULL));
		ASSERT_EQ(problems, 0);
		free(ins);
		free(iid);
		free(path);
	}
	free(data);
	free(gti);
	free(gtd);
	free(ids);
	free(ids2);
	free(ds);
	free(ds2);
	free(st);
	free(st2);
	free(x);
	free(q);
}

/* 1-bit codes of 256 padded dimensions or more route in two passes
 * (prefix estimates of all centroids, full ones of a shortlist). They must
 * pick what the one-pass scan of full estimates picks: an nprobe as large
 * as the router routes in one pass, and its first TOP are the reference. */
static void test_two_pass(void)
{
	t_current = "test_two_pass";
	size_t n = 8000, d = 300, k = 500;
	float *x = malloc(n * d * sizeof(float)), *q = malloc(NQ * d * sizeof(float));
	t_gen_mixture(x, n, q, NQ, (uint32_t)d, 40, 11);
	ann_build_opts o;
	ann_build_opts_init(&o);
	o.threads = 1;
	o.kmeans.kmeans_iters = 4;
	o.kmeans.router_bits = 1;
	ann_router *r;
	ASSERT_OK(ann_router_train(&o, x, n, d, (uint32_t)k, &r, NULL));
	ASSERT_TRUE(ann_router_is_kcodes(r));
	ann_router_ctx *rc;
	ASSERT_OK(r->ops->ctx_new(r, &rc, NULL));
	ann_search_opts one, two;
	ann_search_opts_init(&one);
	ann_search_opts_init(&two);
	one.nprobe = (uint32_t)k; /* shortlist >= k: one pass */
	two.nprobe = TOP;
	uint32_t *ref = malloc(k * sizeof(uint32_t)), parts[TOP];
	size_t same = 0, member = 0;
	for (size_t i = 0; i < NQ; i++) {
		ASSERT_EQ(r->ops->route(r, rc, q + i * d, &one, ref, NULL), (int)k);
		ASSERT_EQ(r->ops->route(r, rc, q + i * d, &two, parts, NULL), TOP);
		for (size_t a = 0; a < TOP; a++) {
			same += parts[a] == ref[a];
			for (size_t b = 0; b < TOP; b++)
				member += parts[a] == ref[b];
		}
	}
	printf("two-pass routing: %zu of %d in the same place, %zu in the one-pass top %d\n", same, NQ * TOP, member,
	       TOP);
	/* measured: all of them; a shortlist of 4 nprobe + 32 by estimates
	 * twice as noisy as the full ones would have to miss a top-16 centroid */
	ASSERT_LE((double)NQ * TOP * 0.995, (double)member);
	ASSERT_LE((double)NQ * TOP * 0.99, (double)same);
	free(ref);
	r->ops->ctx_free(rc);
	ann_router_free(r);
	free(x);
	free(q);
}

int main(void)
{
	ann_rng rng;
	t_init("test_router_kcodes", &rng);
	char *dir = t_tmpdir();
	test_probe_cut();
	test_router();
	test_two_pass();
	test_index(dir);
	t_rmtree(dir);
	free(dir);
	return 0;
}
