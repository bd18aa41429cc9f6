/* SPDX-License-Identifier: MIT */
/*
 * Description: the directional probe order (dirs.h; docs/DESIGN.md
 * "Directional probe order"), on a real index (file store, then LMDB):
 *  - ann_tune_directions finds each partition's direction of stretch: the
 *    data are 4 clusters, each stretched along its own dense direction of
 *    +-1 components, so the first direction's 2-bit levels are that
 *    direction exactly (up to sign) and its gain sqrt(1 - r / l) / |L| with
 *    l the stretch's variance and r the noise's;
 *  - the discount through the query table equals the sum computed directly
 *    from the levels, gains and offsets;
 *  - the router's RAM grows by exactly the directions' bytes; info says how
 *    many; 0 removes them; a malformed catalog record fails the open,
 *    naming the key; a bad weight is refused;
 *  - search with the discount (weight 1) answers some nprobe 1 queries from
 *    other partitions than without it, and every answer is exact either way;
 *  - a compaction refits the partitions it rewrote and the new ones of its
 *    splits, and keeps the others' records: the result is a full refit's;
 *  - the build's auto choice fits as many directions (up to 8) as the
 *    router's RAM leaves of 4 bytes per vector, and none when there is none;
 *  - a compaction out of memory at any of its allocations leaves a writer
 *    that works or refuses with ANN_E_STATE, and an index that verifies,
 *    answers exactly and is repaired by the next compaction.
 */
#include <math.h>
#include <string.h>

#include "dirs.h"
#include "index.h"
#include "procfault.h"
#include "testutil.h"
#include "vecio.h"

#define D 16
#define C 4
#define PER 500
#define N (C * PER)
#define K 10
#define NQ 60

static float base[N * D];
static float sign[C][D];   /* cluster c's stretch direction: +-1 a component */
static float centre[C][D];
static float queries[NQ * D];

static void make_data(ann_rng *rng)
{
	for (size_t c = 0; c < C; c++)
		for (size_t j = 0; j < D; j++) {
			sign[c][j] = ann_rng_next(rng) & 1 ? 1.0f : -1.0f;
			centre[c][j] = 128.0f + ((ann_rng_next(rng) & 1) ? 30.0f : -30.0f);
		}
	for (size_t i = 0; i < N; i++) {
		size_t c = i / PER;
		float t = (float)(ann_rng_uniform(rng) * 2 - 1) * 10.0f; /* variance 33.3 a component, 533 along */
		for (size_t j = 0; j < D; j++)
			base[i * D + j] = roundf(centre[c][j] + t * sign[c][j] + 1.5f * (float)ann_rng_normal(rng));
	}
	/* queries between the clusters, where the order has a choice to make */
	for (size_t q = 0; q < NQ; q++) {
		size_t a = q % C, b = (q / C + 1 + q) % C;
		if (a == b)
			b = (a + 1) % C;
		double f = 0.3 + 0.4 * ann_rng_uniform(rng);
		for (size_t j = 0; j < D; j++)
			queries[q * D + j] = (float)((1 - f) * centre[a][j] + f * centre[b][j] + 6 * ann_rng_normal(rng));
	}
}

/* Searches every query with nprobe 1 at the given direction weight: each
 * answer is checked against its row; returns the answers. */
static void search_all(ann_index *x, float weight, int64_t *ids)
{
	ann_search_opts so;
	ann_search_opts_init(&so);
	so.k = K;
	so.nprobe = 1;
	so.adaptive = -1;
	so.direction_weight = weight;
	ann_searcher *s;
	ann_error e = {0};
	if (ann_searcher_new(x, &so, &s, &e) < 0)
		T_FAIL("searcher: %s", e.msg);
	float dists[NQ * K];
	if (ann_search(s, queries, NQ, ids, dists, NULL, &e) < 0)
		T_FAIL("search: %s", e.msg);
	for (size_t q = 0; q < NQ; q++)
		for (size_t r = 0; r < K; r++) {
			int64_t id = ids[q * K + r];
			ASSERT_TRUE(id >= 0 && id < N);
			double t = 0;
			for (size_t j = 0; j < D; j++) {
				double u = (double)queries[q * D + j] - base[(size_t)id * D + j];
				t += u * u;
			}
			ASSERT_NEAR(dists[q * K + r], t, 1e-2);
		}
	ann_searcher_free(s);
}

/* Level code r of a direction's two bit planes. */
static unsigned code_at(const ann_dirs *d, const uint8_t *cd, size_t r)
{
	return ((cd[r / 8] >> (r % 8)) & 1u) | (((cd[d->cbytes / 2 + r / 8] >> (r % 8)) & 1u) << 1);
}

/* The discount of partition p for query q, straight from the levels. */
static double direct_discount(const ann_dirs *d, uint32_t p, const float *q)
{
	double sum = 0;
	for (uint32_t j = 0; j < d->m; j++) {
		double dot = 0;
		for (uint32_t r = 0; r < d->dim; r++) {
			unsigned c = code_at(d, ann_dirs_codes(d, p, j), r);
			dot += (double)q[r] * (2.0 * c - 3.0);
		}
		double v = ann_dirs_gain(d, p, j) * (dot - ann_dirs_off(d, p, j));
		sum += v * v;
	}
	return sum;
}

/* C partitions, 2-bit codes, no tuning, the given directions option. */
static char *build_index(const char *dir, const char *data, ann_store_kind store, const char *name, int directions)
{
	ann_build_opts o;
	ann_build_opts_init(&o);
	o.partitions = C;
	o.mem_bytes = (size_t)64 << 20;
	o.threads = 1;
	o.store = store;
	o.code_bits = 2;
	o.tune = 0;
	o.directions = directions;
	char *idx = t_path(dir, name);
	ann_error e = {0};
	if (ann_build(data, idx, &o, &e) < 0)
		T_FAIL("build: %s", e.msg);
	return idx;
}

static void test_index(const char *dir, const char *data, ann_store_kind store)
{
	t_current = store == ANN_STORE_LMDB ? "index lmdb" : "index file";
	char *idx = build_index(dir, data, store, store == ANN_STORE_LMDB ? "ix_lmdb" : "ix_file", 0);
	ann_error e = {0};
	ann_index *x;
	ann_index_info before, after;
	ASSERT_OK(ann_index_open(idx, &x, NULL));
	ASSERT_EQ(x->dir.count, C);
	ASSERT_OK(ann_index_get_info(x, &before, NULL));
	ASSERT_EQ(before.directions, 0);
	int64_t off_ids[NQ * K], on_ids[NQ * K];
	search_all(x, -1.0f, off_ids);
	ann_index_close(x);

	uint32_t fitted = 0;
	ASSERT_ERR(ann_tune_directions(idx, ANN_DIRS_MAX + 1, NULL, NULL, &fitted, &e), e, ANN_E_INVAL, "directions");
	ASSERT_OK(ann_tune_directions(idx, 2, NULL, NULL, &fitted, NULL));
	ASSERT_TRUE(fitted >= C); /* at least the stretch of each */
	ASSERT_OK(ann_index_open(idx, &x, NULL));
	ASSERT_OK(ann_index_get_info(x, &after, NULL));
	ASSERT_EQ(after.directions, 2);
	ASSERT_EQ(after.directions_partitions, C);
	ASSERT_EQ(after.router_ram_bytes - before.router_ram_bytes, ann_dirs_bytes(&x->dirs));
	ASSERT_EQ(ann_dirs_bytes(&x->dirs), (size_t)C * 2 * (8 + D / 4));
	/* each partition's first direction is its cluster's stretch */
	for (uint32_t p = 0; p < C; p++) {
		const uint8_t *cd = ann_dirs_codes(&x->dirs, p, 0);
		unsigned c0 = code_at(&x->dirs, cd, 0);
		ASSERT_TRUE(c0 == 0 || c0 == 3);
		int match = -1;
		for (size_t c = 0; c < C && match < 0; c++) {
			bool same = true, flip = true;
			for (size_t r = 0; r < D; r++) {
				unsigned code = code_at(&x->dirs, cd, r);
				float lv = 2.0f * (float)code - 3.0f;
				same = same && lv == 3.0f * sign[c][r];
				flip = flip && lv == -3.0f * sign[c][r];
			}
			if (same || flip)
				match = (int)c;
		}
		if (match < 0)
			T_FAIL("partition %u: its first direction is no cluster's stretch", p);
		/* gain sqrt(1 - r / l) / |L| with l ~ 533, r ~ 2.25 (noise) + rounding */
		double g = ann_dirs_gain(&x->dirs, p, 0) * sqrt(9.0 * D);
		ASSERT_NEAR(g, sqrt(1 - 2.33 / 533.0), 0.01);
		/* the rest is noise: a second direction's sqrt(1 - r / l) is far below 1 */
		double l2 = 0;
		for (size_t r = 0; r < D; r++) {
			unsigned code = code_at(&x->dirs, cd + x->dirs.cbytes, r);
			l2 += (2.0 * code - 3.0) * (2.0 * code - 3.0);
		}
		ASSERT_LT(ann_dirs_gain(&x->dirs, p, 1) * sqrt(l2), 0.75);
	}
	/* the query table's discount is the direct one */
	float tab[256 * D / 8 + 1];
	ASSERT_EQ(ann_dirs_table_floats(&x->dirs), 256 * D / 8 + 1);
	for (size_t q = 0; q < NQ; q++) {
		ann_dirs_query_table(&x->dirs, queries + q * D, tab);
		for (uint32_t p = 0; p < C; p++) {
			double want = direct_discount(&x->dirs, p, queries + q * D);
			ASSERT_NEAR(ann_dirs_discount(&x->dirs, p, tab), want, 1e-3 * want + 1e-3);
		}
		ASSERT_TRUE(ann_dirs_discount(&x->dirs, C + 5, tab) == 0.0f); /* a partition it was not fitted on */
	}
	/* the discount moves some queries to another partition; answers stay exact */
	search_all(x, 1.0f, on_ids);
	int moved = 0;
	for (size_t q = 0; q < NQ; q++)
		moved += memcmp(on_ids + q * K, off_ids + q * K, K * sizeof(int64_t)) != 0;
	ASSERT_TRUE(moved > 0);
	search_all(x, -1.0f, on_ids); /* off: as before the fit */
	ASSERT_TRUE(memcmp(on_ids, off_ids, sizeof on_ids) == 0);
	ann_search_opts so;
	ann_search_opts_init(&so);
	ann_searcher *s;
	so.direction_weight = 1.5f;
	ASSERT_ERR(ann_searcher_new(x, &so, &s, &e), e, ANN_E_INVAL, "direction weight");
	so.direction_weight = NAN;
	ASSERT_ERR(ann_searcher_new(x, &so, &s, &e), e, ANN_E_INVAL, "direction weight");
	ann_index_close(x);
	uint64_t problems = 1;
	ASSERT_OK(ann_verify(idx, NULL, NULL, &problems, NULL));
	ASSERT_EQ(problems, 0);

	/* a compaction that splits partitions refits the directions: every
	 * partition, the new ones too, has its own */
	ann_writer *w;
	ASSERT_OK(ann_writer_open(idx, &w, NULL));
	ann_compact_stats cst;
	int64_t del = 0;
	ASSERT_OK(ann_delete(w, &del, 1, NULL, NULL)); /* something to compact */
	ASSERT_OK(ann_compact(w, PER / 2, &cst, NULL));
	ann_writer_close(w);
	ASSERT_TRUE(cst.partitions_split >= 1);
	ASSERT_EQ(cst.directions_refit, cst.partitions_rewritten + cst.partitions_split);
	ASSERT_OK(ann_index_open(idx, &x, NULL));
	ASSERT_OK(ann_index_get_info(x, &after, NULL));
	ASSERT_EQ(after.directions, 2);
	ASSERT_TRUE(after.partitions > C);
	ASSERT_EQ(after.directions_partitions, after.partitions);
	for (uint32_t p = 0; p < after.partitions; p++)
		ASSERT_TRUE(ann_dirs_gain(&x->dirs, p, 0) > 0.0f); /* every part of a stretched cluster is stretched */
	search_all(x, 1.0f, on_ids);                            /* exact answers */
	uint64_t ram_split = after.router_ram_bytes, dbytes = ann_dirs_bytes(&x->dirs);
	ann_index_close(x);
	ASSERT_OK(ann_verify(idx, NULL, NULL, &problems, NULL));
	ASSERT_EQ(problems, 0);

	/* a compaction without splits refits the partitions it rewrote, only
	 * those, and to what a full refit gives */
	ASSERT_OK(ann_index_open(idx, &x, NULL));
	uint32_t np0 = x->dirs.nparts;
	size_t stride = x->dirs.stride, rbytes = (size_t)np0 * stride;
	uint8_t *rec0 = malloc(rbytes), *rec1 = malloc(rbytes);
	ASSERT_TRUE(rec0 && rec1);
	memcpy(rec0, x->dirs.recs, rbytes);
	ann_index_close(x);
	int64_t dels[40];
	for (size_t i = 0; i < 40; i++)
		dels[i] = PER + 2 * (int64_t)i; /* rows of the second cluster */
	ASSERT_OK(ann_writer_open(idx, &w, NULL));
	ASSERT_OK(ann_delete(w, dels, 40, NULL, NULL));
	ASSERT_OK(ann_compact(w, N, &cst, NULL));
	ann_writer_close(w);
	ASSERT_EQ(cst.partitions_split, 0);
	ASSERT_TRUE(cst.partitions_rewritten >= 1 && cst.partitions_rewritten < np0);
	ASSERT_EQ(cst.directions_refit, cst.partitions_rewritten);
	ASSERT_OK(ann_index_open(idx, &x, NULL));
	ASSERT_EQ(x->dirs.nparts, np0);
	ASSERT_EQ(x->dirs.stride, stride);
	memcpy(rec1, x->dirs.recs, rbytes);
	ann_index_close(x);
	uint32_t changed = 0;
	for (uint32_t p = 0; p < np0; p++)
		changed += memcmp(rec0 + (size_t)p * stride, rec1 + (size_t)p * stride, stride) != 0;
	ASSERT_TRUE(changed >= 1 && changed <= cst.partitions_rewritten);
	ASSERT_OK(ann_tune_directions(idx, 2, NULL, NULL, NULL, NULL));
	ASSERT_OK(ann_index_open(idx, &x, NULL));
	ASSERT_TRUE(x->dirs.nparts == np0 && memcmp(rec1, x->dirs.recs, rbytes) == 0);
	ann_index_close(x);
	free(rec0);
	free(rec1);

	/* A compaction whose refit did not happen (a crash between the two
	 * commits: its mark, set with the compaction, is still there): info
	 * says so, and the next compaction refits every partition and clears
	 * it. The first directions' gains are zeroed beside the mark, so that
	 * only a refit of every partition brings them all back. */
	{
		char *cat0 = t_path(idx, "catalog.lmdb");
		ann_catalog_opts co0;
		ann_catalog_opts_init(&co0);
		ann_catalog *c0;
		ann_cat_txn *t0;
		ASSERT_OK(ann_catalog_open(cat0, &co0, &c0, NULL));
		ASSERT_OK(ann_catalog_write_begin(c0, &t0, NULL));
		ASSERT_OK(ann_catalog_meta_put_u64(t0, ANN_DIRS_STALE_META, 1, NULL));
		const uint8_t *b0;
		size_t n0;
		ASSERT_OK(ann_catalog_meta_get_blob(t0, ANN_DIRS_META, &b0, &n0, NULL));
		uint8_t *z = malloc(n0);
		ASSERT_TRUE(z != NULL);
		memcpy(z, b0, n0);
		for (uint32_t p = 0; p < np0; p++)
			memset(z + ANN_DIRS_HEADER + 4 * (size_t)p * 2, 0, 4); /* gain (p, 0): 2 directions */
		ASSERT_OK(ann_catalog_meta_put_blob(t0, ANN_DIRS_META, z, n0, NULL));
		free(z);
		ASSERT_OK(ann_catalog_commit(t0, NULL));
		ann_catalog_close(c0);
		free(cat0);
	}
	ASSERT_OK(ann_index_open(idx, &x, NULL));
	ASSERT_OK(ann_index_get_info(x, &after, NULL));
	ann_index_close(x);
	ASSERT_EQ(after.directions_stale, 1);
	dels[0] = 3 * PER + 1;
	ASSERT_OK(ann_writer_open(idx, &w, NULL));
	ASSERT_OK(ann_delete(w, dels, 1, NULL, NULL));
	ASSERT_OK(ann_compact(w, N, &cst, NULL));
	ann_writer_close(w);
	ASSERT_EQ(cst.partitions_rewritten, 1);
	ASSERT_EQ(cst.directions_refit, after.partitions); /* all of them */
	ASSERT_OK(ann_index_open(idx, &x, NULL));
	ASSERT_OK(ann_index_get_info(x, &after, NULL));
	for (uint32_t p = 0; p < after.partitions; p++)
		ASSERT_TRUE(ann_dirs_gain(&x->dirs, p, 0) > 0.0f);
	ann_index_close(x);
	ASSERT_EQ(after.directions_stale, 0);

	/* a malformed record fails the open, naming it */
	char *cat = t_path(idx, "catalog.lmdb");
	ann_catalog_opts co;
	ann_catalog_opts_init(&co);
	ann_catalog *c;
	ASSERT_OK(ann_catalog_open(cat, &co, &c, NULL));
	ann_cat_txn *t;
	ASSERT_OK(ann_catalog_write_begin(c, &t, NULL));
	const uint8_t *bp;
	size_t bn;
	ASSERT_OK(ann_catalog_meta_get_blob(t, ANN_DIRS_META, &bp, &bn, NULL));
	uint8_t *copy = malloc(bn);
	memcpy(copy, bp, bn);
	ASSERT_OK(ann_catalog_meta_put_blob(t, ANN_DIRS_META, copy, bn - 1, NULL)); /* truncated */
	ASSERT_OK(ann_catalog_commit(t, NULL));
	ASSERT_ERR(ann_index_open(idx, &x, &e), e, ANN_E_CORRUPT, "route.dirs");
	ASSERT_OK(ann_catalog_write_begin(c, &t, NULL));
	float bad = -1.0f; /* a negative gain */
	memcpy(copy + ANN_DIRS_HEADER, &bad, 4);
	ASSERT_OK(ann_catalog_meta_put_blob(t, ANN_DIRS_META, copy, bn, NULL));
	ASSERT_OK(ann_catalog_commit(t, NULL));
	ASSERT_ERR(ann_index_open(idx, &x, &e), e, ANN_E_CORRUPT, "route.dirs");
	ann_catalog_close(c);
	free(copy);
	free(cat);
	/* 0 removes them (and repairs the index) */
	ASSERT_OK(ann_tune_directions(idx, 0, NULL, NULL, NULL, NULL));
	ASSERT_OK(ann_index_open(idx, &x, NULL));
	ASSERT_OK(ann_index_get_info(x, &after, NULL));
	ASSERT_EQ(after.directions, 0);
	ASSERT_EQ(after.router_ram_bytes, ram_split - dbytes);
	ann_index_close(x);
	free(idx);

	/* the build's auto choice: what ann_dirs_auto_m gives the same index
	 * without directions (the build is deterministic) */
	idx = build_index(dir, data, store, store == ANN_STORE_LMDB ? "ix_lmdb_auto" : "ix_file_auto", -1);
	ASSERT_OK(ann_index_open(idx, &x, NULL));
	ASSERT_OK(ann_index_get_info(x, &after, NULL));
	ann_index_close(x);
	ASSERT_EQ(after.directions, ann_dirs_auto_m(&before));
	free(idx);
}

/* f32 rows of extreme scale: the fit's offsets overflow a float. Those
 * directions get no discount, and the index still opens and searches
 * (the record the open refuses was once written). Explicit directions that
 * cannot apply are refused before the build starts. */
static void test_extreme(const char *dir)
{
	t_current = "extreme scale";
	enum { XN = 1200, XD = 12 };
	static float xs[XN * XD];
	ann_rng rng;
	ann_rng_seed(&rng, 5);
	for (size_t i = 0; i < XN; i++)
		for (size_t j = 0; j < XD; j++)
			xs[i * XD + j] = j < 4 ? 1e38f : (float)(10 * ann_rng_normal(&rng) + (j == 5 ? 40.0 * (double)(i % 3) : 0));
	char *data = t_path(dir, "huge.fbin");
	ann_vwriter *vw;
	ASSERT_OK(ann_vwriter_open(data, XD, &vw, NULL));
	ASSERT_OK(ann_vwriter_write_f32(vw, xs, XN, NULL));
	ASSERT_OK(ann_vwriter_close(vw, NULL));
	ann_error e = {0};
	ann_build_opts o;
	ann_build_opts_init(&o);
	o.partitions = 3;
	o.mem_bytes = (size_t)64 << 20;
	o.threads = 1;
	o.code_bits = 2;
	o.tune = 0;
	o.directions = 2;
	char *idx = t_path(dir, "huge_idx");
	/* components near the float range are refused: their squared distances
	 * overflow (k-means put every row in one partition) */
	ASSERT_ERR(ann_build(data, idx, &o, &e), e, ANN_E_BADINPUT, "vector 0: component 0 is 1e+38, beyond +-2^50");
	/* at the limit they are taken: the fit's offsets stay finite */
	for (size_t i = 0; i < XN; i++)
		for (size_t j = 0; j < 4; j++)
			xs[i * XD + j] = ANN_F32_INPUT_MAX;
	ASSERT_OK(ann_vwriter_open(data, XD, &vw, NULL));
	ASSERT_OK(ann_vwriter_write_f32(vw, xs, XN, NULL));
	ASSERT_OK(ann_vwriter_close(vw, NULL));
	ASSERT_OK(ann_build(data, idx, &o, NULL));
	ann_index *x;
	ann_index_info in;
	ASSERT_OK(ann_index_open(idx, &x, NULL));
	ASSERT_OK(ann_index_get_info(x, &in, NULL));
	ASSERT_EQ(in.directions, 2);
	for (uint32_t p = 0; p < x->dirs.nparts; p++)
		for (uint32_t j = 0; j < 2; j++)
			ASSERT_TRUE(isfinite(ann_dirs_off(&x->dirs, p, j)));
	ann_search_opts so;
	ann_search_opts_init(&so);
	so.k = 5;
	so.nprobe = 3;
	so.direction_weight = 1.0f;
	ann_searcher *s;
	int64_t ids[5];
	float dd[5];
	ASSERT_OK(ann_searcher_new(x, &so, &s, NULL));
	ASSERT_OK(ann_search(s, xs + 7 * XD, 1, ids, dd, NULL, NULL));
	ASSERT_TRUE(ids[0] >= 0 && ids[0] < XN);
	float big[XD];
	memcpy(big, xs + 7 * XD, sizeof big);
	big[2] = 2 * ANN_F32_INPUT_MAX;
	ASSERT_ERR(ann_search(s, big, 1, ids, dd, NULL, &e), e, ANN_E_INVAL, "query 0, component 2 is 2.2518e+15");
	ann_searcher_free(s);
	ann_index_close(x);
	ann_writer *w;
	ASSERT_OK(ann_writer_open(idx, &w, NULL));
	ASSERT_ERR(ann_insert(w, big, 1, XD, NULL, 0, NULL, &e), e, ANN_E_INVAL, "beyond +-2^50");
	big[2] = -ANN_F32_INPUT_MAX;
	ASSERT_OK(ann_insert(w, big, 1, XD, NULL, 0, NULL, NULL));
	ann_writer_close(w);
	free(idx);
	/* refused: as many directions as dimensions; another metric */
	o.directions = XD;
	idx = t_path(dir, "huge_idx2");
	ASSERT_ERR(ann_build(data, idx, &o, &e), e, ANN_E_INVAL, "fewer directions than dimensions");
	o.directions = 2;
	o.metric = ANN_METRIC_IP;
	ASSERT_ERR(ann_build(data, idx, &o, &e), e, ANN_E_INVAL, "directional probe order needs");
	o.directions = 17;
	o.metric = ANN_METRIC_L2;
	ASSERT_ERR(ann_build(data, idx, &o, &e), e, ANN_E_INVAL, "directions 17");
	free(idx);
	free(data);
}

/* A compaction that runs out of memory at any point (one allocation, or
 * every one from some point on, so that the writer's reload fails too):
 * the call fails with a message or succeeds; the writer either works on
 * (its next compaction succeeds) or refuses every call with ANN_E_STATE;
 * the index verifies, answers exactly, and a later compaction leaves every
 * partition with fresh directions and no stale mark. Allocation points
 * are swept one by one, then at growing strides; both stores; the library's
 * allocations, then every allocation of the process (procfault.h: LMDB's
 * too), where a failure must still be ANN_E_NOMEM naming what. Found: a
 * split whose block then failed to encode left its centroid in the
 * router, and a stale mark outlived a compaction with nothing to rewrite. */
static void print_problem(void *ctx, uint32_t partition, const char *problem)
{
	(void)ctx;
	printf("  verify: partition %d: %s\n", partition == UINT32_MAX ? -1 : (int)partition, problem);
}

static void test_compact_faults(const char *dir, const char *data)
{
	t_current = "compaction out of memory";
	int64_t ids[NQ * K];
	uint32_t cases = 0, failed_writers = 0, stale_seen = 0;
	for (int mode = 0; mode < (T_PROC_FAULTS ? 8 : 4); mode++) {
		int sticky = mode & 1;
		ann_store_kind store = mode & 2 ? ANN_STORE_LMDB : ANN_STORE_FILE;
		bool proc = mode & 4; /* every allocation of the process, LMDB's too (procfault.h) */
		for (int64_t n = 0;; n += 1 + n / 6) {
			char *idx = build_index(dir, data, store, "oom", 2);
			ann_writer *w;
			ann_compact_stats cst;
			ann_error e = {0};
			int64_t del = 3;
			ASSERT_OK(ann_writer_open(idx, &w, NULL));
			ASSERT_OK(ann_delete(w, &del, 1, NULL, NULL));
			if (proc)
				t_proc_fail_arm(n, sticky);
			else
				(sticky ? ann_mem_fail_from : ann_mem_fail_after)(n);
			int rc = ann_compact(w, PER / 2, &cst, &e);
			int64_t fired = ann_mem_failed() + t_proc_failed();
			t_proc_fail_arm(-1, false);
			ann_mem_fail_after(-1);
			if (!fired) { /* past the compaction's last allocation */
				ASSERT_OK(rc);
				ann_writer_close(w);
				t_rmtree(idx);
				free(idx);
				break;
			}
			cases++;
			if (rc < 0 && (rc != ANN_E_NOMEM || !strchr(e.msg, ':')))
				T_FAIL("compaction, %s%s at allocation %lld: %d %s, expected ANN_E_NOMEM naming what ran out",
				       sticky ? "every allocation failing" : "one allocation failing", proc ? " (process)" : "",
				       (long long)n, rc, e.msg);
			ann_index_info in;
			int gi = ann_writer_get_info(w, &in, &e);
			if (gi == ANN_E_STATE) {
				failed_writers++;
				float v[D] = {0};
				ASSERT_EQ(ann_insert(w, v, 1, D, NULL, 0, NULL, &e), ANN_E_STATE);
				ASSERT_EQ(ann_compact(w, PER / 2, &cst, &e), ANN_E_STATE);
			} else {
				ASSERT_OK(gi);
				ASSERT_OK(ann_compact(w, PER / 2, &cst, NULL));
			}
			ann_writer_close(w);
			uint64_t problems = 1;
			ASSERT_OK(ann_verify(idx, print_problem, NULL, &problems, NULL));
			if (problems)
				printf("  %s store, %s%s at allocation %lld: compaction %d (%s), writer %d\n",
				       store == ANN_STORE_LMDB ? "lmdb" : "file",
				       sticky ? "every allocation failing" : "one allocation failing",
				       proc ? " (process)" : "", (long long)n, rc, rc < 0 ? e.msg : "", gi);
			ASSERT_EQ(problems, 0);
			ann_index *x;
			ASSERT_OK(ann_index_open(idx, &x, NULL));
			ASSERT_OK(ann_index_get_info(x, &in, NULL));
			stale_seen += in.directions_stale != 0;
			search_all(x, 1.0f, ids); /* exact answers, stale directions or not */
			ann_index_close(x);
			/* whatever was left, a compaction without faults repairs it */
			ASSERT_OK(ann_writer_open(idx, &w, NULL));
			ASSERT_OK(ann_delete(w, &del, 1, NULL, NULL));
			ASSERT_OK(ann_compact(w, PER / 2, &cst, NULL));
			ann_writer_close(w);
			ASSERT_OK(ann_index_open(idx, &x, NULL));
			ASSERT_OK(ann_index_get_info(x, &in, NULL));
			ASSERT_EQ(in.directions, 2);
			ASSERT_EQ(in.directions_stale, 0);
			ASSERT_EQ(in.directions_partitions, in.partitions);
			ann_index_close(x);
			t_rmtree(idx);
			free(idx);
		}
	}
	/* the sweep reached the paths it is for */
	ASSERT_TRUE(cases >= 20);
	ASSERT_TRUE(failed_writers >= 1);
	ASSERT_TRUE(stale_seen >= 1);
	printf("  compaction out of memory: %u cases, %u failed writers, %u left stale\n", cases, failed_writers,
	       stale_seen);
}

/* The auto rule: RAM room, disk room, the cap, none. */
static void test_auto_rule(void)
{
	t_current = "auto rule";
	ann_index_info in;
	memset(&in, 0, sizeof in);
	in.vectors = 1000000;
	in.dim = 128;
	in.encoding = ANN_ENC_U8;
	in.partitions = 8000;
	in.router_ram_bytes = 2000000;            /* 2 B/vector: 2 MB of room, 250 B a partition */
	in.bytes_on_disk = 150000000;             /* 1.5 x raw = 192 MB: ample */
	ASSERT_EQ(ann_dirs_auto_m(&in), 250 / 40); /* 40 bytes a direction at 128 dimensions */
	in.router_ram_bytes = 500000;             /* 3.5 MB of room: the cap */
	ASSERT_EQ(ann_dirs_auto_m(&in), ANN_DIRS_AUTO_MAX);
	in.bytes_on_disk = 191000000;             /* 1 MB of disk left, 64 KiB of it fixed, 4/5 of the rest */
	ASSERT_EQ(ann_dirs_auto_m(&in), (191999999ull - 191000000 - 65536 + 1) * 4 / 5 / (8000 * 40));
	in.bytes_on_disk = 193000000;             /* over 1.5 x already */
	ASSERT_EQ(ann_dirs_auto_m(&in), 0);
	in.bytes_on_disk = 150000000;
	in.router_ram_bytes = 4000000;            /* the RAM budget spent */
	ASSERT_EQ(ann_dirs_auto_m(&in), 0);
	in.dim = 6; /* room for the cap, but fewer than the dimensions */
	in.router_ram_bytes = 500000;
	in.bytes_on_disk = 1000000;
	ASSERT_EQ(ann_dirs_auto_m(&in), 5);
	in.dim = 1;
	ASSERT_EQ(ann_dirs_auto_m(&in), 0);
	in.dim = 128;
	in.partitions = 0;
	ASSERT_EQ(ann_dirs_auto_m(&in), 0);
}

int main(void)
{
	ann_rng rng;
	t_init("test_dirs", &rng);
	char *dir = t_tmpdir();
	make_data(&rng);
	char *data = t_path(dir, "base.u8bin");
	ann_vwriter *w;
	ASSERT_OK(ann_vwriter_open(data, D, &w, NULL));
	ASSERT_OK(ann_vwriter_write_f32(w, base, N, NULL));
	ASSERT_OK(ann_vwriter_close(w, NULL));
	test_auto_rule();
	test_extreme(dir);
	test_index(dir, data, ANN_STORE_FILE);
	test_index(dir, data, ANN_STORE_LMDB);
	test_compact_faults(dir, data);
	free(data);
	t_rmtree(dir);
	free(dir);
	printf("test_dirs: ok\n");
	return 0;
}
