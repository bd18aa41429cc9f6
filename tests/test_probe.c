/* SPDX-License-Identifier: MIT */
/*
 * Description: learned adaptive probing (probe.c, tune.c, the two-stage
 * round 1 of search.c), on real files and LMDB:
 *  - the features of a first stage and the model's prediction, by hand;
 *  - ann_tune_probe fits a model on queries with ground truth and stores it,
 *    with what it was fitted on (info reports it stale after 15% deletes, not
 *    after 5%; a version 1 model loads with its fit unknown);
 *    a reopened index holds it; searchers use it unless told not to;
 *  - adaptive answers are exact (every distance checked against the rows),
 *    each query reads between P1 and 2 nprobe partitions and not all the
 *    same number; off, every query reads nprobe;
 *  - misuse and damage: required without a model or below P1, tuning a
 *    format 1 index, too few queries, a malformed model in the catalog;
 *  - synthetic tuning (ann_tune_synthetic, the build's tune option);
 *  - the re-rank bound's eps0 the tuner calibrates and stores (check_eps).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "gt.h"
#include "index.h"
#include "search_int.h"
#include "testutil.h"
#include "vecio.h"

#define D 32
#define NB 20000
#define NQ 400
#define NT 300 /* tuning queries; the rest are searched */
#define K 10
#define PARTS 64

static float base[NB * D], queries[NQ * D];

/* Clusters; queries drawn around other points than the base's (a shifted
 * distribution: wider, and half of them between two clusters). */
static void make_data(ann_rng *rng)
{
	static float cent[48 * D];
	t_fill_uniform(rng, cent, 48 * D, 30, 220);
	for (size_t i = 0; i < NB + NQ; i++) {
		bool q = i >= NB;
		float *v = q ? queries + (i - NB) * D : base + i * D;
		const float *a = cent + ann_rng_below(rng, 48) * D, *b = cent + ann_rng_below(rng, 48) * D;
		float t = q && ann_rng_below(rng, 2) ? 0.5f * (float)ann_rng_below(rng, 100) / 100.0f : 0.0f;
		float sd = q ? 22.0f : 14.0f;
		for (size_t j = 0; j < D; j++) {
			float x = roundf((1 - t) * a[j] + t * b[j] + sd * (float)ann_rng_normal(rng));
			v[j] = x < 0 ? 0 : x > 255 ? 255 : x;
		}
	}
}

static void test_features(void)
{
	t_current = "features";
	double f[ANN_PROBE_FEATURES];
	const float cd[4] = {4, 8, INFINITY, 16}; /* a partition without a head is skipped */
	ann_probe_features(cd, 4, 40, 2, f);
	ASSERT_NEAR(f[0], 1, 1e-12);
	ASSERT_NEAR(f[1], log(4), 1e-9);
	ASSERT_NEAR(f[2], log(2), 1e-9); /* rank 2 */
	ASSERT_NEAR(f[3], log(4), 1e-9); /* rank 4: the last read */
	ASSERT_NEAR(f[4], log(4), 1e-9);
	ASSERT_NEAR(f[5], log(4), 1e-9);
	ASSERT_NEAR(f[6], log(10), 1e-9);
	ASSERT_NEAR(f[7], log(0.5), 1e-9);
	/* fewer than k upper bounds: the farthest centre stands in; no estimate: the bound */
	ann_probe_features(cd, 4, INFINITY, INFINITY, f);
	ASSERT_NEAR(f[6], log(4), 1e-9);
	ASSERT_NEAR(f[7], log(4), 1e-9);
	/* a negative estimate is floored, finite */
	ann_probe_features(cd, 4, 40, -5, f);
	ASSERT_TRUE(isfinite(f[7]) && f[7] < -6);
	const float none[2] = {INFINITY, INFINITY};
	ann_probe_features(none, 2, 1, 1, f);
	ASSERT_NEAR(f[0], 1, 1e-12);
	for (unsigned i = 1; i < ANN_PROBE_FEATURES; i++)
		ASSERT_NEAR(f[i], 0, 1e-12);
	ann_probe_model m = {.p1 = 4, .shift = 0};
	double g[ANN_PROBE_FEATURES] = {1, 0, 0, 0, 0, 0, 0, 0};
	ASSERT_EQ(ann_probe_predict(&m, g, 20, 4, 40), 20);
	m.shift = log(2.0);
	ASSERT_EQ(ann_probe_predict(&m, g, 20, 4, 40), 10);
	m.shift = -log(3.0);
	ASSERT_EQ(ann_probe_predict(&m, g, 20, 4, 40), 40); /* capped */
	m.shift = 10;
	ASSERT_EQ(ann_probe_predict(&m, g, 20, 4, 40), 4); /* floored at the first stage */
	m.shift = 0;
	m.w[1] = 1;
	g[1] = log(1.5);
	ASSERT_EQ(ann_probe_predict(&m, g, 20, 4, 40), 30);
}

static char *build(const char *dir, const char *data, const char *name, ann_store_kind store, uint32_t bits)
{
	ann_build_opts o;
	ann_build_opts_init(&o);
	o.partitions = PARTS;
	o.mem_bytes = (size_t)64 << 20;
	o.threads = 1;
	o.store = store;
	o.code_bits = bits;
	char *idx = t_path(dir, name);
	ann_error e = {0};
	if (ann_build(data, idx, &o, &e) < 0)
		T_FAIL("build %s: %s", name, e.msg);
	return idx;
}

static double row_dist(const float *q, int64_t id)
{
	double t = 0;
	for (size_t j = 0; j < D; j++) {
		double u = (double)q[j] - base[(size_t)id * D + j];
		t += u * u;
	}
	return t;
}

/* A searcher of k = K at nprobe (adaptive, poll_us: ann_search_opts'); the
 * hidden switches are read from the environment when it is made. */
static ann_searcher *new_searcher(ann_index *x, uint32_t nprobe, int adaptive, uint32_t poll_us)
{
	ann_search_opts so;
	ann_search_opts_init(&so);
	so.k = K;
	so.nprobe = nprobe;
	so.adaptive = adaptive;
	so.io_poll_us = poll_us;
	ann_searcher *s;
	ann_error e = {0};
	if (ann_searcher_new(x, &so, &s, &e) < 0)
		T_FAIL("searcher: %s", e.msg);
	return s;
}

/* Searches the held-out queries: recall@K, mean partitions; checks every answer. */
static double search_all(ann_index *x, int adaptive, uint32_t nprobe, const int32_t *gt, double *probed,
			 uint32_t *distinct)
{
	ann_searcher *s = new_searcher(x, nprobe, adaptive, 0);
	ann_error e = {0};
	int64_t ids[8 * K];
	float dists[8 * K];
	ann_query_stats st[8];
	uint32_t seen[2 * PARTS + 1] = {0};
	bool on = adaptive >= 0 && x->probe.p1 && nprobe >= x->probe.p1;
	double hits = 0, parts = 0;
	for (size_t at = NT; at < NQ; at += 8) { /* batches of 8 and single queries alike */
		size_t n = at % 16 ? 1 : (NQ - at < 8 ? NQ - at : 8);
		if (ann_search(s, queries + at * D, n, ids, dists, st, &e) < 0)
			T_FAIL("search: %s", e.msg);
		for (size_t i = 0; i < n; i++) {
			const float *q = queries + (at + i) * D;
			for (size_t r = 0; r < K; r++) {
				int64_t id = ids[i * K + r];
				ASSERT_TRUE(id >= 0 && id < NB);
				ASSERT_NEAR(dists[i * K + r], row_dist(q, id), 1e-4);
				for (size_t g = 0; g < K; g++)
					hits += gt[(at + i) * K + g] == id;
			}
			ASSERT_LE(st[i].partitions, on ? 2 * nprobe : nprobe);
			if (on)
				ASSERT_LE(x->probe.p1, st[i].partitions);
			else
				ASSERT_EQ(st[i].partitions, nprobe);
			seen[st[i].partitions]++;
			parts += st[i].partitions;
		}
		at += n - 8; /* the loop adds 8 */
	}
	ann_searcher_free(s);
	*distinct = 0;
	for (size_t p = 0; p <= 2 * PARTS; p++)
		*distinct += seen[p] != 0;
	*probed = parts / (NQ - NT);
	return hits / ((NQ - NT) * (double)K);
}

/* A batch's stage B uses the heads its stage A read (for other queries)
 * instead of reading them again: the same answers and partitions as with
 * the hidden switch ANNANN_KEEP_HEADS=0, in fewer reads. */
static void check_keep(ann_index *x, uint32_t nprobe)
{
	enum { B = 16, M = NQ - NT };
	static int64_t ids[2][M * K];
	static float dists[2][M * K];
	static uint32_t parts[2][M];
	uint64_t reads[2];
	for (int on = 0; on < 2; on++) {
		setenv("ANNANN_KEEP_HEADS", on ? "1" : "0", 1);
		ann_searcher *s = new_searcher(x, nprobe, 0, 0);
		ann_error e = {0};
		ann_query_stats st[B];
		for (size_t at = 0; at < M; at += B) {
			size_t n = M - at < B ? M - at : B;
			if (ann_search(s, queries + (NT + at) * D, n, ids[on] + at * K, dists[on] + at * K, st, &e) < 0)
				T_FAIL("search: %s", e.msg);
			for (size_t i = 0; i < n; i++)
				parts[on][at + i] = st[i].partitions;
		}
		uint64_t bytes;
		ann_searcher_io_totals(s, &bytes, &reads[on]);
		ann_searcher_free(s);
	}
	unsetenv("ANNANN_KEEP_HEADS");
	ASSERT_TRUE(memcmp(ids[0], ids[1], sizeof ids[0]) == 0);
	ASSERT_TRUE(memcmp(dists[0], dists[1], sizeof dists[0]) == 0);
	ASSERT_TRUE(memcmp(parts[0], parts[1], sizeof parts[0]) == 0);
	ASSERT_LE(reads[1] + 1, reads[0]);
}

/* Early re-rank pages: stage B's heads and the pages of each query's k best
 * stage A estimates are read in one wave (the hidden switch
 * ANNANN_EARLY_PAGES=0 turns it off). Every answer stays exact, recall and
 * bytes stay close, and queries wait for fewer read waves, one less each
 * when a query's stage B reads a head. Batches of 1 and 16. */
static void check_early(ann_index *x, uint32_t nprobe, const int32_t *gt)
{
	enum { M = NQ - NT };
	for (size_t b = 1; b <= 16; b += 15) {
		static uint32_t waves[2][M], parts[2][M];
		double hits[2] = {0, 0}, bytes[2] = {0, 0};
		for (int on = 0; on < 2; on++) {
			setenv("ANNANN_EARLY_PAGES", on ? "1" : "0", 1);
			ann_searcher *s = new_searcher(x, nprobe, 0, 0);
			ann_error e = {0};
			int64_t ids[16 * K];
			float dists[16 * K];
			ann_query_stats st[16];
			for (size_t at = 0; at < M; at += b) {
				size_t n = M - at < b ? M - at : b;
				if (ann_search(s, queries + (NT + at) * D, n, ids, dists, st, &e) < 0)
					T_FAIL("search: %s", e.msg);
				for (size_t i = 0; i < n; i++) {
					const float *q = queries + (NT + at + i) * D;
					for (size_t r = 0; r < K; r++) {
						int64_t id = ids[i * K + r];
						ASSERT_TRUE(id >= 0 && id < NB);
						ASSERT_NEAR(dists[i * K + r], row_dist(q, id), 1e-4);
						for (size_t r2 = 0; r2 < r; r2++)
							ASSERT_TRUE(ids[i * K + r2] != id);
						for (size_t g = 0; g < K; g++)
							hits[on] += gt[(NT + at + i) * K + g] == id;
					}
					waves[on][at + i] = st[i].read_waves;
					parts[on][at + i] = st[i].partitions;
					bytes[on] += st[i].bytes_read;
				}
			}
			ann_searcher_free(s);
		}
		unsetenv("ANNANN_EARLY_PAGES");
		size_t fewer = 0;
		for (size_t i = 0; i < M; i++) {
			ASSERT_EQ(parts[0][i], parts[1][i]);
			ASSERT_LE(waves[1][i], waves[0][i]);
			ASSERT_LE(2, waves[1][i]); /* stage A's heads, then at least one more */
			if (b == 1 && parts[1][i] > x->probe.p1) /* stage B read a head: its wave took the k best pages */
				ASSERT_EQ(waves[1][i] + 1, waves[0][i]);
			fewer += waves[1][i] < waves[0][i];
		}
		ASSERT_LE(M / 4, fewer);
		ASSERT_LE(hits[0] - 0.01 * M * K, hits[1]);
		ASSERT_LE(bytes[1], 1.2 * bytes[0]);
	}
	/* The bound (SEARCH_EARLY_BYTES, 16 MiB; a row's pages at most 8 KiB):
	 * a batch of 200 queries (k = 10: 15.6 MiB) still reads its early pages
	 * in stage B's wave, one of all 400 (31 MiB) reads none, and answers as
	 * without them. So large a batch's stage A reads every head its stage B
	 * needs, and stage B has no wave then: ANNANN_KEEP_HEADS=0 makes it read. */
	setenv("ANNANN_KEEP_HEADS", "0", 1);
	for (size_t b = 200; b <= NQ; b += NQ - 200) {
		static int64_t ids[2][NQ * K];
		static float dists[2][NQ * K];
		static ann_query_stats st[2][NQ];
		for (int on = 0; on < 2; on++) {
			setenv("ANNANN_EARLY_PAGES", on ? "1" : "0", 1);
			ann_searcher *s = new_searcher(x, nprobe, 0, 0);
			ann_error e = {0};
			if (ann_search(s, queries, b, ids[on], dists[on], st[on], &e) < 0)
				T_FAIL("batch of %zu: %s", b, e.msg);
			ann_searcher_free(s);
		}
		unsetenv("ANNANN_EARLY_PAGES");
		ASSERT_EQ(st[1][0].read_waves + (b < NQ ? 1u : 0u), st[0][0].read_waves);
		if (b == NQ) {
			ASSERT_TRUE(memcmp(ids[0], ids[1], NQ * K * sizeof(int64_t)) == 0);
			ASSERT_TRUE(memcmp(dists[0], dists[1], NQ * K * sizeof(float)) == 0);
		}
	}
	unsetenv("ANNANN_KEEP_HEADS");
}

/* Polled completions (ann_search_opts.io_poll_us): the same answers as
 * sleeping, waits that polling ended counted in the reader's stats (a read
 * of this file takes longer than a peek: at least one wait is polled), and
 * the bound refused. */
static void check_poll(ann_index *x, uint32_t nprobe)
{
	enum { M = NQ - NT };
	static int64_t ids[2][M * K];
	static float dists[2][M * K];
	uint64_t polled[2], reqs[2];
	bool device = false; /* io_uring with O_DIRECT: every read waits for the device */
	for (int on = 0; on < 2; on++) {
		ann_searcher *s = new_searcher(x, nprobe, 0, on ? 5000 : 0);
		ann_error e = {0};
		for (size_t at = 0; at < M; at++)
			if (ann_search(s, queries + (NT + at) * D, 1, ids[on] + at * K, dists[on] + at * K, NULL, &e) < 0)
				T_FAIL("search: %s", e.msg);
		ann_ioreader_stats st;
		ann_store_reader_stats(s->rd, &st);
		polled[on] = st.polled;
		reqs[on] = st.requests;
		device = st.uring && st.direct;
		ann_searcher_free(s);
	}
	ASSERT_TRUE(memcmp(ids[0], ids[1], sizeof ids[0]) == 0);
	ASSERT_TRUE(memcmp(dists[0], dists[1], sizeof dists[0]) == 0);
	ASSERT_EQ(polled[0], 0);
	ASSERT_EQ(reqs[0], reqs[1]);
	ASSERT_LE(polled[1], reqs[1]);
	if (device)
		ASSERT_LE(1, polled[1]);
	printf("  poll: %llu waits ended by polling, %llu reads%s\n", (unsigned long long)polled[1],
	       (unsigned long long)reqs[1], device ? "" : " (no io_uring with O_DIRECT here)");
	ann_search_opts so;
	ann_search_opts_init(&so);
	so.io_poll_us = ANN_MAX_IO_POLL_US + 1;
	ann_searcher *s;
	ann_error e = {0};
	ASSERT_ERR(ann_searcher_new(x, &so, &s, &e), e, ANN_E_INVAL, "io poll");
}

/* Writes a version 1 probe model blob of n bytes (at most ANN_PROBE_BLOB)
 * straight into the catalog: P1 p1, weights 0 but weight nan_at a NaN (-1:
 * none). */
static void put_model(const char *idx, uint32_t p1, int nan_at, size_t n)
{
	uint8_t b[ANN_PROBE_BLOB] = {0};
	char *cat = t_path(idx, "catalog.lmdb");
	ann_catalog *c;
	ASSERT_OK(ann_catalog_open(cat, NULL, &c, NULL)); /* default options */
	ann_cat_txn *t;
	ASSERT_OK(ann_catalog_write_begin(c, &t, NULL));
	ann_st32(b, 1);
	ann_st32(b + 4, p1);
	ann_st32(b + 8, ANN_PROBE_FEATURES);
	if (nan_at >= 0)
		ann_st64(b + 24 + 8 * (size_t)nan_at, 0x7ff0000000000001ull);
	ASSERT_OK(ann_catalog_meta_put_blob(t, ANN_PROBE_META, b, n, NULL));
	ASSERT_OK(ann_catalog_commit(t, NULL));
	ann_catalog_close(c);
	free(cat);
}

/* Writes meta search.rerank_eps = v, or removes it (del). */
static void put_eps(const char *idx, double v, bool del)
{
	char *cat = t_path(idx, "catalog.lmdb");
	ann_catalog *c;
	ASSERT_OK(ann_catalog_open(cat, NULL, &c, NULL));
	ann_cat_txn *t;
	ASSERT_OK(ann_catalog_write_begin(c, &t, NULL));
	if (del) {
		int rc = ann_catalog_meta_del(t, ANN_RERANK_EPS_META, NULL);
		ASSERT_TRUE(rc == ANN_OK || rc == ANN_E_NOTFOUND);
	} else {
		ASSERT_OK(ann_catalog_meta_put_f64(t, ANN_RERANK_EPS_META, v, NULL));
	}
	ASSERT_OK(ann_catalog_commit(t, NULL));
	ann_catalog_close(c);
	free(cat);
}

/* Re-ranks of the searched queries at nprobe with eps0 eps (0: the index's), and their ids. */
static uint64_t reranks_at(ann_index *x, uint32_t nprobe, float eps, int64_t *ids)
{
	ann_search_opts so;
	ann_search_opts_init(&so);
	so.k = K;
	so.nprobe = nprobe;
	so.adaptive = -1;
	so.rerank_eps = eps;
	ann_searcher *s;
	ann_error e = {0};
	if (ann_searcher_new(x, &so, &s, &e) < 0)
		T_FAIL("searcher: %s", e.msg);
	ann_query_stats st[NQ - NT];
	float dists[(NQ - NT) * K];
	if (ann_search(s, queries + NT * D, NQ - NT, ids, dists, st, &e) < 0)
		T_FAIL("search: %s", e.msg);
	ann_searcher_free(s);
	uint64_t rr = 0;
	for (size_t i = 0; i < NQ - NT; i++)
		rr += st[i].reranked;
	return rr;
}

/* The re-rank bound's eps0 calibrated by the tuner (docs/DESIGN.md "Calibrated re-rank bound"):
 * the report's candidates and the rule that picked one; the catalog holds it and searchers
 * whose rerank_eps is 0 use it, an explicit one wins; a value out of (0, 100] is refused at
 * open, naming the key; without it the default applies. */
static void check_eps(const char *idx, const ann_tune_report *rep)
{
	ASSERT_NEAR(rep->eps[0], ANN_DEFAULT_RERANK_EPS, 1e-6);
	ASSERT_TRUE(rep->eps_nprobe >= 1 && rep->eps_nprobe < rep->eps_nprobe_hi);
	double slope = rep->eps_recall_hi > rep->eps_recall[0] + 1e-4 && rep->eps_bytes_hi > rep->eps_bytes[0]
			       ? (rep->eps_bytes_hi - rep->eps_bytes[0]) / (rep->eps_recall_hi - rep->eps_recall[0])
			       : INFINITY;
	size_t chosen = ANN_TUNE_EPS;
	double cost[ANN_TUNE_EPS];
	for (size_t i = 0; i < ANN_TUNE_EPS; i++) {
		if (i) {
			ASSERT_TRUE(rep->eps[i] < rep->eps[i - 1]);
			ASSERT_LE(rep->eps_bytes[i], rep->eps_bytes[i - 1] * 1.001); /* a narrower bound reads no more */
		}
		double loss = fmax(0, rep->eps_recall[0] - rep->eps_recall[i]);
		cost[i] = loss > 0 && !isfinite(slope) ? INFINITY : rep->eps_bytes[i] + (loss > 0 ? slope * loss : 0);
		if (rep->eps[i] == rep->rerank_eps)
			chosen = i;
	}
	ASSERT_TRUE(chosen < ANN_TUNE_EPS);
	for (size_t i = 0; i < ANN_TUNE_EPS; i++)
		ASSERT_LE(cost[chosen], cost[i] * (1 + 1e-3) + 1e-9);
	printf("eps0 calibration at nprobe %u: chosen %.2g (bytes %.0f .. %.0f, recall %.4f .. %.4f)\n", rep->eps_nprobe,
	       rep->rerank_eps, rep->eps_bytes[0], rep->eps_bytes[ANN_TUNE_EPS - 1], rep->eps_recall[0],
	       rep->eps_recall[ANN_TUNE_EPS - 1]);
	ann_index *x;
	ann_index_info info;
	ASSERT_OK(ann_index_open(idx, &x, NULL));
	ASSERT_OK(ann_index_get_info(x, &info, NULL));
	ASSERT_NEAR(info.rerank_eps, rep->rerank_eps, 1e-6);
	ASSERT_EQ(info.rerank_eps_tuned, 1);
	ann_index_close(x);
	/* a stored value is what a search without one uses: 0.5 re-ranks as an explicit 0.5, less than 2 */
	put_eps(idx, 0.5, false);
	ASSERT_OK(ann_index_open(idx, &x, NULL));
	static int64_t a[(NQ - NT) * K], b[(NQ - NT) * K];
	uint64_t r_idx = reranks_at(x, 8, 0, a), r_half = reranks_at(x, 8, 0.5f, b);
	ASSERT_EQ(r_idx, r_half);
	ASSERT_TRUE(memcmp(a, b, sizeof a) == 0);
	ASSERT_TRUE(reranks_at(x, 8, ANN_DEFAULT_RERANK_EPS, b) > r_idx);
	ann_index_close(x);
	/* out of range: refused at open, naming the key */
	ann_error e = {0};
	const double bad[] = {0, -1, 101, NAN};
	for (size_t i = 0; i < 4; i++) {
		put_eps(idx, bad[i], false);
		ASSERT_ERR(ann_index_open(idx, &x, &e), e, ANN_E_CORRUPT, "search.rerank_eps");
	}
	/* none stored: the default */
	put_eps(idx, 0, true);
	ASSERT_OK(ann_index_open(idx, &x, NULL));
	ASSERT_OK(ann_index_get_info(x, &info, NULL));
	ASSERT_NEAR(info.rerank_eps, ANN_DEFAULT_RERANK_EPS, 1e-6);
	ASSERT_EQ(info.rerank_eps_tuned, 0);
	ASSERT_EQ(reranks_at(x, 8, 0, a), reranks_at(x, 8, ANN_DEFAULT_RERANK_EPS, b));
	ann_index_close(x);
	put_eps(idx, rep->rerank_eps, false);
}

/* The exact top-K of every query among the base rows (ids; distances in *gd). */
static int32_t *queries_gt(float **gd)
{
	int32_t *gt = ann_malloc(NQ * K * sizeof(int32_t));
	*gd = ann_malloc(NQ * K * sizeof(float));
	ASSERT_TRUE(gt && *gd);
	ann_gt_opts go;
	ann_gt_opts_init(&go);
	go.k = K;
	go.threads = 1;
	ASSERT_OK(ann_gt_compute_mem(base, NB, queries, NQ, D, &go, gt, *gd, NULL));
	return gt;
}

static void test_tune(const char *dir, ann_store_kind store)
{
	t_current = store == ANN_STORE_LMDB ? "tune lmdb" : "tune file";
	char *data = t_path(dir, "base.u8bin");
	char *idx = build(dir, data, store == ANN_STORE_LMDB ? "ix_lmdb" : "ix_file", store, 2);
	float *gd;
	int32_t *gt = queries_gt(&gd);
	/* no model yet: required fails, auto reads nprobe */
	ann_index *x;
	ASSERT_OK(ann_index_open(idx, &x, NULL));
	ASSERT_EQ(x->probe.p1, 0);
	ann_search_opts so;
	ann_search_opts_init(&so);
	so.nprobe = 8;
	so.adaptive = 1;
	ann_searcher *s;
	ann_error e = {0};
	ASSERT_ERR(ann_searcher_new(x, &so, &s, &e), e, ANN_E_INVAL, "no probe model");
	so.adaptive = 7;
	ASSERT_ERR(ann_searcher_new(x, &so, &s, &e), e, ANN_E_INVAL, "adaptive must be");
	ann_index_close(x);
	ann_tune_opts to = {.k = K, .p1 = 3};
	ann_tune_report rep;
	ASSERT_ERR(ann_tune_probe(idx, queries, 10, D, gt, K, &to, &rep, &e), e, ANN_E_INVAL, "at least");
	if (ann_tune_probe(idx, queries, NT, D, gt, K, &to, &rep, &e) < 0)
		T_FAIL("tune: %s", e.msg);
	check_eps(idx, &rep);
	ASSERT_EQ(rep.p1, 3);
	ASSERT_EQ(rep.queries, NT);
	ASSERT_TRUE(rep.rows >= 4 && rep.r2 > 0 && rep.r2 <= 1);
	for (uint32_t r = 0; r < rep.rows; r++) {
		ASSERT_TRUE(rep.recall_fixed[r] >= 0 && rep.recall_fixed[r] <= 1);
		ASSERT_TRUE(rep.probed_adaptive[r] >= 3 && rep.probed_adaptive[r] <= 2.0 * rep.budget[r] + 1e-9);
		if (r)
			ASSERT_LE(rep.recall_fixed[r - 1], rep.recall_fixed[r] + 0.02);
	}
	ASSERT_OK(ann_index_open(idx, &x, NULL));
	ASSERT_EQ(x->probe.p1, 3);
	double pa, pf;
	uint32_t da, df;
	double ra = search_all(x, 0, 8, gt, &pa, &da);
	double rf = search_all(x, -1, 8, gt, &pf, &df);
	ASSERT_EQ(df, 1);
	ASSERT_TRUE(da >= 2); /* the model varies the partitions per query */
	ASSERT_TRUE(pa >= 4 && pa <= 12);
	ASSERT_TRUE(ra > 0.5 && rf > 0.5);
	check_keep(x, 8);
	check_early(x, 8, gt);
	check_poll(x, 8);
	/* the first stage is above this budget: the search falls back to fixed nprobe, or refuses when required */
	ann_search_opts_init(&so);
	so.nprobe = 2;
	so.adaptive = 1;
	ASSERT_ERR(ann_searcher_new(x, &so, &s, &e), e, ANN_E_INVAL, "first stage");
	double p2;
	uint32_t d2;
	(void)search_all(x, 0, 2, gt, &p2, &d2);
	ASSERT_NEAR(p2, 2, 1e-12);
	ann_index_close(x);
	/* tuning again replaces the model */
	to.p1 = 4;
	if (ann_tune_probe(idx, queries, NT, D, gt, K, &to, &rep, &e) < 0)
		T_FAIL("tune again: %s", e.msg);
	ASSERT_OK(ann_index_open(idx, &x, NULL));
	ASSERT_EQ(x->probe.p1, 4);
	/* the model says what it was fitted on; the index changing by over 10% makes it stale */
	ann_index_info info;
	ASSERT_OK(ann_index_get_info(x, &info, NULL));
	ASSERT_EQ(info.probe_fit_vectors, NB);
	ASSERT_EQ(info.probe_fit_partitions, info.partitions);
	ASSERT_EQ(info.probe_fit_queries, NT);
	ASSERT_EQ(info.probe_stale, 0);
	ann_index_close(x);
	{
		ann_writer *w;
		ASSERT_OK(ann_writer_open(idx, &w, NULL));
		int64_t del[NB / 20];
		for (size_t i = 0; i < NB / 20; i++)
			del[i] = (int64_t)i;
		uint64_t nd = 0;
		ASSERT_OK(ann_delete(w, del, NB / 20, &nd, NULL)); /* 5%: not stale */
		ann_writer_close(w);
		ASSERT_OK(ann_index_open(idx, &x, NULL));
		ASSERT_OK(ann_index_get_info(x, &info, NULL));
		ASSERT_EQ(info.probe_stale, 0);
		ann_index_close(x);
		int64_t del2[NB / 10];
		for (size_t i = 0; i < NB / 10; i++)
			del2[i] = (int64_t)(NB / 20 + i);
		ASSERT_OK(ann_writer_open(idx, &w, NULL));
		ASSERT_OK(ann_delete(w, del2, NB / 10, &nd, NULL)); /* 15% in all: stale */
		ann_writer_close(w);
		ASSERT_OK(ann_index_open(idx, &x, NULL));
		ASSERT_OK(ann_index_get_info(x, &info, NULL));
		ASSERT_EQ(info.live_vectors, NB - NB / 20 - NB / 10);
		ASSERT_EQ(info.probe_stale, 1);
		ASSERT_EQ(info.probe_p1, 4); /* it still applies */
		ann_index_close(x);
	}
	/* a version 1 model (before the fit was recorded) still loads, its fit unknown, never stale */
	{
		put_model(idx, 4, -1, sizeof(uint8_t[ANN_PROBE_BLOB]));
		ASSERT_OK(ann_index_open(idx, &x, NULL));
		ASSERT_OK(ann_index_get_info(x, &info, NULL));
		ASSERT_EQ(info.probe_p1, 4);
		ASSERT_EQ(info.probe_fit_partitions, 0);
		ASSERT_EQ(info.probe_stale, 0);
		ann_index_close(x);
	}
	/* a malformed model is refused at open, naming it: P1 0, a weight not finite, short */
	for (int how = 0; how < 3; how++) {
		put_model(idx, how == 0 ? 0 : 4, how == 1 ? 3 : -1, how == 2 ? 20 : ANN_PROBE_BLOB);
		ASSERT_ERR(ann_index_open(idx, &x, &e), e, ANN_E_CORRUPT, "probe.model");
	}
	ann_free(gt);
	ann_free(gd);
	free(idx);
	free(data);
}

static void test_format1(const char *dir)
{
	t_current = "format 1";
	char *data = t_path(dir, "base.u8bin");
	char *idx = build(dir, data, "ix_f1", ANN_STORE_FILE, 0);
	int32_t gt[NT * K] = {0};
	ann_error e = {0};
	ann_tune_report rep;
	ASSERT_ERR(ann_tune_probe(idx, queries, NT, D, gt, K, NULL, &rep, &e), e, ANN_E_INVAL, "not a codes index");
	ASSERT_ERR(ann_tune_probe(idx, queries, NT, D - 1, gt, K, NULL, &rep, &e), e, ANN_E_INVAL, "dimension");
	free(idx);
	free(data);
}

/* Synthetic tuning (ann_tune_synthetic, the build's --tune): a model from
 * rows moved by noise, with the index's own ground truth; the same every
 * time; it moves partitions between the held-out (shifted) queries without
 * losing their recall; the build fits it when told to and, below the
 * automatic thresholds, only then; misuse is refused. */
static void test_synthetic(const char *dir)
{
	t_current = "synthetic";
	char *data = t_path(dir, "base.u8bin");
	ann_build_opts o;
	ann_build_opts_init(&o);
	o.partitions = PARTS;
	o.mem_bytes = (size_t)64 << 20;
	o.threads = 1;
	o.code_bits = 2;
	ann_error e = {0};
	char *auto_idx = t_path(dir, "ix_syn_auto"), *on_idx = t_path(dir, "ix_syn_on");
	ASSERT_OK(ann_build(data, auto_idx, &o, &e)); /* auto: 64 partitions are below the threshold */
	o.tune = 1;
	ASSERT_OK(ann_build(data, on_idx, &o, &e));
	ann_index *x;
	ann_index_info info;
	ASSERT_OK(ann_index_open(auto_idx, &x, NULL));
	ASSERT_EQ(x->probe.p1, 0);
	ann_index_close(x);
	ASSERT_OK(ann_index_open(on_idx, &x, NULL));
	ASSERT_TRUE(x->probe.p1 >= 1);
	ASSERT_OK(ann_index_get_info(x, &info, NULL));
	ASSERT_EQ(info.probe_fit_queries, ANN_TUNE_SYNTHETIC_QUERIES);
	ann_probe_model built = x->probe;
	ann_index_close(x);

	/* the same seed gives the same model, whichever index copy it is fitted on */
	ann_tune_opts to = {.k = K};
	ann_tune_report rep;
	if (ann_tune_synthetic(auto_idx, data, ANN_TUNE_SYNTHETIC_QUERIES, 1, &to, &rep, &e) < 0)
		T_FAIL("tune synthetic: %s", e.msg);
	ASSERT_EQ(rep.queries, ANN_TUNE_SYNTHETIC_QUERIES);
	ASSERT_TRUE(rep.r2 > 0 && rep.r2 <= 1 && rep.rows >= 4);
	ASSERT_OK(ann_index_open(auto_idx, &x, NULL));
	ASSERT_TRUE(memcmp(x->probe.w, built.w, sizeof built.w) == 0 && x->probe.shift == built.shift);
	ann_index_close(x);
	if (ann_tune_synthetic(auto_idx, data, 500, 7, &to, &rep, &e) < 0)
		T_FAIL("tune synthetic, 500: %s", e.msg);
	ASSERT_EQ(rep.queries, 500);
	ASSERT_OK(ann_index_open(auto_idx, &x, NULL));
	ASSERT_TRUE(memcmp(x->probe.w, built.w, sizeof built.w) != 0); /* other rows, other noise */

	/* on the shifted queries: a varying number of partitions, the recall of fixed probing kept */
	float *gd;
	int32_t *gt = queries_gt(&gd);
	double pa, pf;
	uint32_t da, df;
	double ra = search_all(x, 0, 8, gt, &pa, &da), rf = search_all(x, -1, 8, gt, &pf, &df);
	printf("synthetic model, nprobe 8: adaptive recall %.4f at %.2f partitions (%u distinct), fixed %.4f\n", ra, pa,
	       da, rf);
	ASSERT_TRUE(da >= 2);
	ASSERT_TRUE(ra >= rf - 0.05);
	ann_index_close(x);
	ann_free(gt);
	ann_free(gd);

	/* misuse */
	ASSERT_ERR(ann_tune_synthetic(auto_idx, data, 10, 1, &to, &rep, &e), e, ANN_E_INVAL, "at least");
	char *small = t_path(dir, "small.u8bin"), *thin = t_path(dir, "thin.u8bin");
	ann_vwriter *w;
	ASSERT_OK(ann_vwriter_open(small, D, &w, NULL));
	ASSERT_OK(ann_vwriter_write_f32(w, base, 1000, NULL));
	ASSERT_OK(ann_vwriter_close(w, NULL));
	ASSERT_OK(ann_vwriter_open(thin, D - 1, &w, NULL));
	ASSERT_OK(ann_vwriter_write_f32(w, base, 3000, NULL));
	ASSERT_OK(ann_vwriter_close(w, NULL));
	ASSERT_ERR(ann_tune_synthetic(auto_idx, small, 900, 1, &to, &rep, &e), e, ANN_E_INVAL, "at least 1156");
	ASSERT_ERR(ann_tune_synthetic(auto_idx, thin, 500, 1, &to, &rep, &e), e, ANN_E_INVAL, "dimension");
	char *missing = t_path(dir, "missing.u8bin");
	ASSERT_TRUE(ann_tune_synthetic(auto_idx, missing, 500, 1, &to, &rep, &e) < 0);
	char *f1 = t_path(dir, "ix_syn_f1");
	o.code_bits = 0; /* format 1: tune on is refused before any work, auto builds it without a model */
	ASSERT_ERR(ann_build(data, f1, &o, &e), e, ANN_E_INVAL, "needs the k-means router, codes blocks and l2");
	struct stat st;
	ASSERT_TRUE(stat(f1, &st) != 0);
	o.tune = -1;
	ASSERT_OK(ann_build(data, f1, &o, &e));
	ASSERT_ERR(ann_tune_synthetic(f1, data, 500, 1, &to, &rep, &e), e, ANN_E_INVAL, "not a codes index");
	free(f1);
	free(missing);
	free(small);
	free(thin);
	free(auto_idx);
	free(on_idx);
	free(data);
}

/* Cosine (unit rows: the spread order and the probe model work in their
 * Euclidean geometry). The synthetic queries (ann_tune_syn_queries) are
 * made of the rows as unit vectors, so that the noise is on the scale of the
 * 1 - cos distances it is measured by: its sd^2 x dim is half the median
 * |a - b|^2 of a scale row to its nearest other (brute force here, on unit
 * rows), each query is that far from its unit row, and a u8 file's rows are
 * not rounded back to integers. Rows at random lengths give the same cosine
 * index, which the build tunes itself. */
static void test_synthetic_cosine(const char *dir)
{
	t_current = "synthetic cosine";
	enum { SQ = 300, SR = ANN_TUNE_SCALE_ROWS + SQ };
	static float scaled[NB * D], unitb[NB * D], rows[SR * D];
	ann_rng rng;
	ann_rng_seed(&rng, 3);
	for (size_t i = 0; i < NB; i++) {
		float s = 1.0f + 9.0f * (float)ann_rng_uniform(&rng);
		double n2 = 0;
		for (size_t j = 0; j < D; j++) {
			scaled[i * D + j] = s * base[i * D + j];
			n2 += (double)base[i * D + j] * base[i * D + j];
		}
		for (size_t j = 0; j < D; j++)
			unitb[i * D + j] = (float)(base[i * D + j] / sqrt(n2));
	}
	char *data = t_path(dir, "cos.fbin");
	ann_vwriter *w;
	ASSERT_OK(ann_vwriter_open(data, D, &w, NULL));
	ASSERT_OK(ann_vwriter_write_f32(w, scaled, NB, NULL));
	ASSERT_OK(ann_vwriter_close(w, NULL));
	ann_build_opts o;
	ann_build_opts_init(&o);
	o.partitions = PARTS;
	o.mem_bytes = (size_t)64 << 20;
	o.threads = 1;
	o.code_bits = 2;
	o.metric = ANN_METRIC_COSINE;
	o.tune = 1;
	char *idx = t_path(dir, "ix_cos");
	ann_error e = {0};
	if (ann_build(data, idx, &o, &e) < 0)
		T_FAIL("build (cosine, tuned): %s", e.msg);
	ann_index *x;
	ASSERT_OK(ann_index_open(idx, &x, NULL));
	ASSERT_TRUE(x->probe.p1 >= 1);
	/* the median |a - b|^2 of the first ANN_TUNE_SCALE_ROWS rows to their nearest other, on unit rows */
	double nn[ANN_TUNE_SCALE_ROWS];
	for (size_t i = 0; i < ANN_TUNE_SCALE_ROWS; i++) {
		double best = INFINITY;
		for (size_t r = 0; r < NB; r++) {
			if (r == i)
				continue;
			double t = 0;
			for (size_t j = 0; j < D; j++) {
				double u = (double)unitb[i * D + j] - unitb[r * D + j];
				t += u * u;
			}
			best = t < best ? t : best;
		}
		nn[i] = best;
	}
	for (size_t i = 1; i < ANN_TUNE_SCALE_ROWS; i++) /* insertion sort */
		for (size_t j = i; j > 0 && nn[j - 1] > nn[j]; j--) {
			double t = nn[j];
			nn[j] = nn[j - 1];
			nn[j - 1] = t;
		}
	double med = nn[ANN_TUNE_SCALE_ROWS / 2];
	for (int u8 = 0; u8 < 2; u8++) {
		memcpy(rows, scaled, sizeof rows);
		double sd = 0;
		ASSERT_OK(ann_tune_syn_queries(x, rows, SQ, u8 ? ANN_DTYPE_U8 : ANN_DTYPE_F32, 1, &sd, NULL));
		ASSERT_NEAR(sd * sd * D, 0.5 * med, 0.15 * med);
		for (size_t i = 0; i < ANN_TUNE_SCALE_ROWS; i++) { /* the scale rows: unit */
			double n2 = 0;
			for (size_t j = 0; j < D; j++)
				n2 += (double)rows[i * D + j] * rows[i * D + j];
			ASSERT_NEAR(n2, 1.0, 1e-5);
		}
		double moved = 0;
		for (size_t i = ANN_TUNE_SCALE_ROWS; i < SR; i++)
			for (size_t j = 0; j < D; j++) {
				double u = (double)rows[i * D + j] - unitb[i * D + j];
				moved += u * u;
			}
		moved /= SQ;
		ASSERT_NEAR(moved, sd * sd * D, 0.2 * sd * sd * D);
	}
	ann_index_close(x);
	free(idx);
	free(data);
}

int main(void)
{
	ann_rng rng;
	t_init("test_probe", &rng);
	char *dir = t_tmpdir();
	make_data(&rng);
	char *data = t_path(dir, "base.u8bin");
	ann_vwriter *w;
	ASSERT_OK(ann_vwriter_open(data, D, &w, NULL));
	ASSERT_OK(ann_vwriter_write_f32(w, base, NB, NULL));
	ASSERT_OK(ann_vwriter_close(w, NULL));
	free(data);
	test_features();
	test_tune(dir, ANN_STORE_FILE);
	test_tune(dir, ANN_STORE_LMDB);
	test_format1(dir);
	test_synthetic(dir);
	test_synthetic_cosine(dir);
	t_rmtree(dir);
	free(dir);
	printf("test_probe: ok\n");
	return 0;
}
