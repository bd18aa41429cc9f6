/* SPDX-License-Identifier: MIT */
/*
 * Description: build, open, search and verify through the public API.
 * Oracle: with nprobe = all partitions the search must equal exact brute
 * force (gt.c); each store, encoding, batch size, cache, pread and replica
 * setting must give the same answers; bad input, an existing directory and a
 * tiny budget must fail cleanly and leave no index behind; a flipped bit in
 * blocks.dat must be reported by ann_verify and by search. The k-means
 * router of u8 data keeps uint8 centroids: 3 bytes less per dimension and
 * centroid than for f32 data, the same recall, batch routing = single.
 * The build calibrates the single-query routing ef: a crippled centroid
 * graph needs a larger ef than a good one, the overlap it reports is what an
 * independent count finds, the router's blob keeps it and the index loads
 * it; an index of the older layout (the ef in catalog meta router.ef, or
 * none) loads as before.
 */
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "build_defaults.h"
#include "catalog.h"
#include "gt.h"
#include "hnsw.h"
#include "index.h"
#include "kmeans.h"
#include "router.h"
#include "testutil.h"
#include "vecio.h"

#define N 3000
#define D 24
#define NQ 40
#define K 10

static float base[N * D], queries[NQ * D];
static int32_t gt_ids[NQ * K];
static float gt_d[NQ * K];

static void write_base(const char *path)
{
	ann_vwriter *w;
	ASSERT_OK(ann_vwriter_open(path, D, &w, NULL));
	ASSERT_OK(ann_vwriter_write_f32(w, base, N, NULL));
	ASSERT_OK(ann_vwriter_close(w, NULL));
}

static void make_data(ann_rng *rng)
{
	/* Clustered integers in 0..255 so the u8 and f32 encodings see the same values. */
	float centers[12 * D];
	t_fill_uniform(rng, centers, 12 * D, 20, 235);
	for (size_t i = 0; i < N + NQ; i++) {
		float *v = i < N ? base + i * D : queries + (i - N) * D;
		const float *c = centers + ann_rng_below(rng, 12) * D;
		for (size_t j = 0; j < D; j++) {
			float x = roundf(c[j] + 12.0f * (float)ann_rng_normal(rng));
			v[j] = x < 0 ? 0 : x > 255 ? 255 : x;
		}
	}
	ann_gt_opts go;
	ann_gt_opts_init(&go);
	go.k = K;
	go.threads = 1;
	ASSERT_OK(ann_gt_compute_mem(base, N, queries, NQ, D, &go, gt_ids, gt_d, NULL));
}

/* Searches all queries; returns recall against the exact answer. */
static double search_all(ann_index *idx, const ann_search_opts *so, size_t batch, int64_t *ids, float *dists)
{
	ann_searcher *s;
	ann_error e = {0};
	ASSERT_OK(ann_searcher_new(idx, so, &s, &e));
	ann_query_stats st[NQ];
	for (size_t b = 0; b < NQ; b += batch) {
		size_t nb = ANN_MIN(batch, (size_t)NQ - b);
		int rc = ann_search(s, queries + b * D, nb, ids + b * so->k, dists + b * so->k, st + b, &e);
		if (rc < 0)
			T_FAIL("search: %s", e.msg);
	}
	for (size_t i = 0; i < NQ; i++) {
		ASSERT_TRUE(st[i].partitions >= 1 && st[i].partitions <= so->nprobe);
		ASSERT_TRUE(st[i].candidates > 0);
	}
	ann_searcher_free(s);
	size_t hits = 0;
	for (size_t i = 0; i < NQ; i++)
		for (size_t a = 0; a < K; a++)
			for (size_t c = 0; c < K; c++)
				if (ids[i * K + a] == gt_ids[i * K + c]) {
					hits++;
					break;
				}
	return (double)hits / (NQ * K);
}

static ann_index *build_open(const char *dir, const char *name, const char *data, ann_build_opts *o)
{
	char *path = t_path(dir, name);
	ann_error e = {0};
	int rc = ann_build(data, path, o, &e);
	if (rc < 0)
		T_FAIL("build %s: %s", name, e.msg);
	ann_index *idx;
	rc = ann_index_open(path, &idx, &e);
	if (rc < 0)
		T_FAIL("open %s: %s", name, e.msg);
	free(path);
	return idx;
}

/* Exhaustive probing equals brute force, for every store and encoding. */
static void test_exact(const char *dir, const char *fbin, const char *u8bin)
{
	static const struct {
		const char *name;
		ann_store_kind store;
		ann_encoding enc;
		int level;
		int dict;
		const char *data;
	} cases[] = {
		{"f32-file", ANN_STORE_FILE, ANN_ENC_AUTO, 3, 0, NULL}, /* first: the f32 reference */
		{"u8-file", ANN_STORE_FILE, ANN_ENC_AUTO, 1, 0, "u8"},
		{"u8-lmdb", ANN_STORE_LMDB, ANN_ENC_AUTO, 3, 0, "u8"},
		{"f32-as-u8-raw", ANN_STORE_FILE, ANN_ENC_U8, 0, 0, NULL},
		{"f32-dict", ANN_STORE_FILE, ANN_ENC_F32, 3, 1, NULL},
	};
	uint64_t f32_router_ram = 0;
	double f32_recall2 = 0;
	for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
		bool u8 = cases[c].enc == ANN_ENC_U8 || cases[c].data != NULL;
		ann_build_opts o;
		ann_build_opts_init(&o);
		o.partitions = 12;
		o.store = cases[c].store;
		o.encoding = cases[c].enc;
		o.zstd_level = cases[c].level;
		o.dictionary = cases[c].dict;
		o.mem_bytes = (size_t)64 << 20;
		o.threads = 1;
		ann_index *idx = build_open(dir, cases[c].name, cases[c].data ? u8bin : fbin, &o);
		ann_index_info in;
		ASSERT_OK(ann_index_get_info(idx, &in, NULL));
		ASSERT_EQ(in.vectors, N);
		ASSERT_EQ(in.stored_vectors, N);
		ASSERT_EQ(in.partitions, 12);
		ASSERT_EQ(in.dim, D);
		ASSERT_TRUE(in.bytes_on_disk > 0 && in.router_ram_bytes > 0);
		uint64_t total = 0;
		for (uint32_t p = 0; p < 12; p++)
			total += ann_index_partition_size(idx, p);
		ASSERT_EQ(total, N);
		ann_search_opts so;
		ann_search_opts_init(&so);
		so.k = K;
		so.nprobe = 12;
		int64_t ids[NQ * K];
		float dists[NQ * K];
		double r = search_all(idx, &so, 1, ids, dists);
		ASSERT_NEAR(r, 1.0, 1e-9);
		for (size_t i = 0; i < NQ * K; i++)
			ASSERT_NEAR(dists[i], gt_d[i], 1e-4);
		/* Fewer probes: still valid, ascending, recall below or equal. */
		so.nprobe = 2;
		double r2 = search_all(idx, &so, 7, ids, dists);
		ASSERT_TRUE(r2 > 0.3 && r2 <= 1.0);
		for (size_t i = 0; i < NQ; i++)
			for (size_t j = 1; j < K; j++)
				ASSERT_LE(dists[i * K + j - 1], dists[i * K + j]);
		/* Same data, same centroids up to rounding: the u8 router holds
		 * 12 x D bytes of centroids where the f32 one holds 12 x D x 4,
		 * and routes about as well. Batches of 8 (sgemm routing, the
		 * context's float copy of uint8 centroids made once and reused)
		 * equal single queries (the graph, exact over 12 centroids). */
		printf("%s: router %llu bytes, recall@%d %.4f at nprobe 2\n", cases[c].name,
		       (unsigned long long)in.router_ram_bytes, K, r2);
		if (c == 0) {
			f32_router_ram = in.router_ram_bytes;
			f32_recall2 = r2;
		} else {
			ASSERT_EQ(f32_router_ram - in.router_ram_bytes, u8 ? 12 * D * 3 : 0);
			ASSERT_NEAR(r2, f32_recall2, 0.05);
		}
		int64_t ids8[NQ * K];
		float dists8[NQ * K];
		search_all(idx, &so, 1, ids, dists);
		search_all(idx, &so, 8, ids8, dists8);
		ASSERT_TRUE(memcmp(ids, ids8, sizeof ids) == 0);
		ann_index_close(idx);
		uint64_t problems = 99;
		char *path = t_path(dir, cases[c].name);
		ASSERT_OK(ann_verify(path, NULL, NULL, &problems, NULL));
		ASSERT_EQ(problems, 0);
		free(path);
	}
}

/* Top-16 overlap of graph routing at ef with an exact scan, counted here
 * without the router (brute force in double, graph through hnsw.h). */
static double overlap_at(const ann_router *r, const float *x, size_t n, size_t d, uint32_t ef, size_t m)
{
	const ann_hnsw *h = ann_router_kmeans_graph(r);
	ASSERT_TRUE(h != NULL);
	size_t k = ann_hnsw_count(h), stride = n / m, hit = 0;
	float *c = malloc(k * d * sizeof(float));
	double *dd = malloc(k * sizeof(double));
	for (size_t i = 0; i < k; i++)
		ann_hnsw_vector_get(h, (uint32_t)i, c + i * d);
	for (size_t qi = 0; qi < m; qi++) {
		const float *q = x + qi * stride * d;
		for (size_t i = 0; i < k; i++) {
			double s = 0;
			for (size_t j = 0; j < d; j++)
				s += ((double)q[j] - c[i * d + j]) * ((double)q[j] - c[i * d + j]);
			dd[i] = s;
		}
		int32_t ids[16];
		float gd[16];
		ASSERT_EQ(ann_hnsw_search(h, NULL, q, 16, ef < 16 ? 16 : ef, ids, gd, NULL), 16);
		/* exact top 16: the 16th smallest distance; ties count as found */
		double *sorted = malloc(k * sizeof(double));
		memcpy(sorted, dd, k * sizeof(double));
		for (size_t a = 0; a < 16; a++)
			for (size_t b = a + 1; b < k; b++)
				if (sorted[b] < sorted[a]) {
					double t = sorted[a];
					sorted[a] = sorted[b];
					sorted[b] = t;
				}
		for (size_t a = 0; a < 16; a++)
			hit += dd[ids[a]] <= sorted[15] * (1 + 1e-6);
		free(sorted);
	}
	free(c);
	free(dd);
	return (double)hit / (double)(m * 16);
}

static void test_route_ef(const char *dir, const char *u8bin)
{
	t_current = "test_route_ef";
	size_t n = 12000, d = 16;
	float *x = malloc(n * d * sizeof(float));
	t_gen_mixture(x, n, NULL, 0, (uint32_t)d, 40, 11);
	uint32_t ef[2];
	double ov[2];
	for (int bad = 0; bad < 2; bad++) {
		ann_build_opts o;
		ann_build_opts_init(&o);
		o.threads = 1;
		o.kmeans.kmeans_iters = 8;
		o.kmeans.hnsw_m = bad ? 2 : 32;
		o.kmeans.hnsw_ef_construction = bad ? 2 : 200;
		ann_router *r;
		ASSERT_OK(ann_router_train(&o, x, n, d, 1500, &r, NULL));
		ASSERT_OK(ann_router_kmeans_calibrate(r, x, n, 1, &ef[bad], &ov[bad], NULL));
		double mine = overlap_at(r, x, n, d, ef[bad], 1000);
		printf("route ef: graph M %u: ef %u, overlap %.4f (independent count %.4f)\n", o.kmeans.hnsw_m, ef[bad],
		       ov[bad], mine);
		ASSERT_NEAR(mine, ov[bad], 0.01);
		ASSERT_TRUE(ef[bad] >= 16 && ef[bad] <= 512);
		ann_router_free(r);
	}
	ASSERT_LE(0.99, ov[0]);
	ASSERT_TRUE(ef[0] <= 64);
	ASSERT_TRUE(ef[1] > ef[0]);
	free(x);
	/* The build keeps it in the router's blob (HNSW blob 1.2: minor 2, the
	 * ef at offset 96), not in catalog meta, and the index loads it. */
	ann_build_opts o;
	ann_build_opts_init(&o);
	o.partitions = 12;
	o.threads = 1;
	o.mem_bytes = (size_t)64 << 20;
	ann_index *idx = build_open(dir, "route-ef", u8bin, &o);
	uint32_t built = ann_router_kmeans_ef(idx->router);
	ASSERT_TRUE(built >= 16 && built <= 512);
	ann_cat_txn *t;
	uint64_t v = 0;
	const uint8_t *stored;
	size_t slen;
	ASSERT_OK(ann_catalog_read_begin(ann_store_catalog(idx->store), &t, NULL));
	ASSERT_EQ(ann_catalog_meta_get_u64(t, "router.ef", &v, NULL), ANN_E_NOTFOUND);
	ASSERT_OK(ann_catalog_model_get(t, "router", &stored, &slen, NULL));
	ASSERT_TRUE(slen > 104);
	ASSERT_EQ(ann_ld16(stored + 10), 2);
	ASSERT_EQ(ann_ld32(stored + 12), 104);
	ASSERT_EQ(ann_ld32(stored + 96), built);
	ann_catalog_read_end(t);
	ann_index_info info;
	ASSERT_OK(ann_index_get_info(idx, &info, NULL));
	ASSERT_EQ(info.route_ef, built);
	/* An index of the older layout, as the build wrote it before the ef moved
	 * into the blob: the blob without it (a u8 graph: HNSW 1.1, 96-byte
	 * header) and the ef in catalog meta router.ef. It loads with that ef,
	 * and its router saves to the stored bytes (a distributed index's parts
	 * compare the blob's hash with the descriptor's). */
	ann_index_close(idx);
	char *path = t_path(dir, "route-ef");
	ASSERT_OK(ann_index_load(path, true, &idx, NULL));
	ann_router_kmeans_set_ef(idx->router, 0);
	uint8_t *old = NULL;
	size_t olen = 0;
	ASSERT_OK(idx->router->ops->save(idx->router, &old, &olen, NULL));
	ASSERT_EQ(ann_ld16(old + 10), 1);
	ASSERT_EQ(ann_ld32(old + 12), 96);
	ASSERT_EQ(olen + 8, slen);
	ann_store_txn *w;
	ASSERT_OK(ann_store_begin(idx->store, &w, NULL));
	ASSERT_OK(ann_catalog_model_put(ann_store_txn_catalog(w), "router", old, olen, NULL));
	ASSERT_OK(ann_catalog_meta_put_u64(ann_store_txn_catalog(w), "router.ef", 77, NULL));
	ASSERT_OK(ann_store_commit(w, NULL));
	ann_index_close(idx);
	ASSERT_OK(ann_index_open(path, &idx, NULL));
	ASSERT_EQ(ann_router_kmeans_ef(idx->router), 77);
	ASSERT_OK(ann_index_get_info(idx, &info, NULL));
	ASSERT_EQ(info.route_ef, 77);
	uint8_t *again = NULL;
	size_t alen = 0;
	ASSERT_OK(idx->router->ops->save(idx->router, &again, &alen, NULL));
	ASSERT_EQ(alen, olen);
	ASSERT_TRUE(memcmp(again, old, olen) == 0);
	ann_free(again);
	/* ... and one from before calibration, with neither: no ef (routing
	 * uses 128). */
	ann_index_close(idx);
	ASSERT_OK(ann_index_load(path, true, &idx, NULL));
	ASSERT_OK(ann_store_begin(idx->store, &w, NULL));
	ASSERT_OK(ann_catalog_meta_put_u64(ann_store_txn_catalog(w), "router.ef", 0, NULL));
	ASSERT_OK(ann_store_commit(w, NULL));
	ann_index_close(idx);
	ASSERT_OK(ann_index_open(path, &idx, NULL));
	ASSERT_EQ(ann_router_kmeans_ef(idx->router), 0);
	ann_index_close(idx);
	ann_free(old);
	free(path);
}

/* A vector whose squared norm overflows float has no finite distance to any
 * centroid: assign must fail naming it, never return UINT32_MAX as its primary
 * partition (insert would have recorded it as deleted; found by fuzz_router). */
static void test_assign_overflow(void)
{
	t_current = "test_assign_overflow";
	ann_build_opts o;
	ann_build_opts_init(&o);
	o.threads = 1;
	o.kmeans.kmeans_iters = 4;
	ann_router *r;
	ASSERT_OK(ann_router_train(&o, base, N, D, 8, &r, NULL));
	float v[2 * D];
	memcpy(v, base, D * sizeof(float));
	for (int j = 0; j < D; j++)
		v[D + j] = 1e30f;
	uint32_t parts[2] = { 7, 7 };
	ann_error e = {0};
	ASSERT_OK(r->ops->assign(r, v, 1, &(ann_assign_rule){.copies = 1}, 1, parts, NULL));
	ASSERT_TRUE(parts[0] < 8);
	ASSERT_ERR(r->ops->assign(r, v, 2, &(ann_assign_rule){.copies = 1}, 1, parts, &e), e, ANN_E_BADINPUT, "kmeans router: vector 1 ");
	ann_router_free(r);
}

/* Batch size, cache, pread and replicas change cost, never answers. */
static void test_equivalence(const char *dir, const char *u8bin)
{
	ann_build_opts o;
	ann_build_opts_init(&o);
	o.partitions = 20;
	o.mem_bytes = (size_t)64 << 20;
	o.threads = 2;
	ann_index *idx = build_open(dir, "equiv", u8bin, &o);
	ann_search_opts so;
	ann_search_opts_init(&so);
	so.k = K;
	so.nprobe = 4;
	int64_t ref[NQ * K], ids[NQ * K];
	float refd[NQ * K], dists[NQ * K];
	double r = search_all(idx, &so, 1, ref, refd);
	search_all(idx, &so, NQ, ids, dists);
	ASSERT_TRUE(memcmp(ref, ids, sizeof ids) == 0);
	so.cache_bytes = (size_t)1 << 20;
	search_all(idx, &so, 5, ids, dists);
	ASSERT_TRUE(memcmp(ref, ids, sizeof ids) == 0);
	so.cache_bytes = 40000; /* smaller than the index: evictions */
	search_all(idx, &so, 3, ids, dists);
	ASSERT_TRUE(memcmp(ref, ids, sizeof ids) == 0);
	so.cache_bytes = 0;
	so.force_pread = 1;
	so.queue_depth = 1;
	search_all(idx, &so, 2, ids, dists);
	ASSERT_TRUE(memcmp(ref, ids, sizeof ids) == 0);
	/* A buffer pool smaller than a block grows to the largest block. */
	so.force_pread = 0;
	so.queue_depth = 32;
	so.io_buffer_bytes = 4096;
	search_all(idx, &so, NQ, ids, dists);
	ASSERT_TRUE(memcmp(ref, ids, sizeof ids) == 0);
	so.io_buffer_bytes = 0;
	ann_index_close(idx);

	/* Replicas: more stored vectors, recall at least as good, no duplicate ids. */
	o.replicas = 2;
	o.replica_eps = 0.5;
	idx = build_open(dir, "replicas", u8bin, &o);
	ann_index_info in;
	ASSERT_OK(ann_index_get_info(idx, &in, NULL));
	ASSERT_TRUE(in.stored_vectors > N && in.stored_vectors <= 2 * N);
	so.force_pread = 0;
	double rr = search_all(idx, &so, 4, ids, dists);
	ASSERT_TRUE(rr >= r - 1e-9);
	/* Search options out of the library's ranges are refused by name. */
	{
		ann_searcher *bad;
		ann_error e = {0};
		ann_search_opts b = so;
		b.nprobe = ANN_MAX_NPROBE + 1;
		ASSERT_ERR(ann_searcher_new(idx, &b, &bad, &e), e, ANN_E_INVAL, "nprobe within 1..4096");
		b = so;
		b.hnsw_ef = ANN_MAX_EF + 1;
		ASSERT_ERR(ann_searcher_new(idx, &b, &bad, &e), e, ANN_E_INVAL, "ef within 0..4096");
		b = so;
		b.candidates_factor = 1001;
		ASSERT_ERR(ann_searcher_new(idx, &b, &bad, &e), e, ANN_E_INVAL, "candidates factor");
	}
	for (size_t i = 0; i < NQ; i++)
		for (size_t a = 0; a < K; a++)
			for (size_t b = a + 1; b < K; b++)
				ASSERT_TRUE(ids[i * K + a] != ids[i * K + b] || ids[i * K + a] < 0);
	ann_index_close(idx);
}

/* SOAR's rule on a constructed case: x = 0, primary c0 = (1, 0), so its
 * residual points along -e1. Candidate 1 at (-1.1, 0) is nearer (1.21
 * against 1.69) but its residual is parallel to the primary's; candidate 2 at
 * (0, 1.3) is orthogonal. Distance alone picks 1, SOAR with lambda 1 picks 2
 * (loss 1.21 + 1.21 > 1.69), and the closure bound still applies. */
static void test_soar_rule(void)
{
	const float x[2] = {0, 0};
	const float cents[3 * 2] = {1, 0, -1.1f, 0, 0, 1.3f};
	const uint32_t ids[3] = {7, 8, 9};
	const float dists[3] = {1.0f, 1.21f, 1.69f};
	float scratch[6];
	uint32_t out[3];
	ann_assign_rule sp = {.copies = 2, .eps = 0.5, .soar_lambda = 1e-9};
	ASSERT_EQ(ann_router_soar(x, 2, ids, dists, cents, 3, &sp, ANN_METRIC_L2, scratch, out), 2);
	ASSERT_EQ(out[0], 7);
	ASSERT_EQ(out[1], 8);
	sp.soar_lambda = 1.0;
	ASSERT_EQ(ann_router_soar(x, 2, ids, dists, cents, 3, &sp, ANN_METRIC_L2, scratch, out), 2);
	ASSERT_EQ(out[0], 7);
	ASSERT_EQ(out[1], 9);
	/* eps 0.2: the bound is 1.44, so only candidate 1 qualifies. */
	sp.eps = 0.2;
	ASSERT_EQ(ann_router_soar(x, 2, ids, dists, cents, 3, &sp, ANN_METRIC_L2, scratch, out), 2);
	ASSERT_EQ(out[1], 8);
	/* Three copies: after 9, the next is 8 (the only one left); then padding. */
	sp.eps = 0.5;
	sp.copies = 3;
	ASSERT_EQ(ann_router_soar(x, 2, ids, dists, cents, 3, &sp, ANN_METRIC_L2, scratch, out), 3);
	ASSERT_EQ(out[1], 9);
	ASSERT_EQ(out[2], 8);
	sp.eps = 0.0;
	ASSERT_EQ(ann_router_soar(x, 2, ids, dists, cents, 3, &sp, ANN_METRIC_L2, scratch, out), 1);
	ASSERT_EQ(out[1], UINT32_MAX);
	ASSERT_EQ(out[2], UINT32_MAX);
}

/* A SOAR build stores a second copy of (nearly) every vector, but not
 * always in the same partitions as the distance rule; exhaustive probing
 * still equals brute force and answers carry no duplicate ids. */
static void test_soar_build(const char *dir, const char *u8bin)
{
	ann_build_opts o;
	ann_build_opts_init(&o);
	o.partitions = 20;
	o.mem_bytes = (size_t)64 << 20;
	o.replicas = 2;
	o.replica_eps = 100;
	ann_index *near = build_open(dir, "spill_near", u8bin, &o);
	o.kmeans.soar_lambda = 1.0;
	ann_index *soar = build_open(dir, "spill_soar", u8bin, &o);
	ann_index_info a, b;
	ASSERT_OK(ann_index_get_info(near, &a, NULL));
	ASSERT_OK(ann_index_get_info(soar, &b, NULL));
	ASSERT_EQ(a.stored_vectors, 2 * N);
	ASSERT_EQ(b.stored_vectors, 2 * N);
	/* Same router (same seed and sample), different second copies: some
	 * partition's size differs. */
	bool differ = false;
	for (uint32_t p = 0; p < a.partitions && !differ; p++)
		differ = near->dir.ents[p].count != soar->dir.ents[p].count;
	ASSERT_TRUE(differ);
	ann_search_opts so;
	ann_search_opts_init(&so);
	so.k = K;
	so.nprobe = o.partitions;
	int64_t ids[NQ * K];
	float dists[NQ * K];
	ASSERT_TRUE(search_all(soar, &so, 1, ids, dists) >= 0.999);
	for (size_t i = 0; i < NQ; i++)
		for (size_t x = 0; x < K; x++)
			for (size_t y = x + 1; y < K; y++)
				ASSERT_TRUE(ids[i * K + x] != ids[i * K + y]);
	ann_index_close(near);
	ann_index_close(soar);
	/* SOAR needs a router that ranks centroids. */
	o.router = ANN_ROUTER_NLSH;
	char *path = t_path(dir, "spill_nlsh");
	ann_error e = {0};
	ASSERT_ERR(ann_build(u8bin, path, &o, &e), e, ANN_E_INVAL, "SOAR");
	free(path);
}

static bool exists(const char *p)
{
	struct stat st;
	return stat(p, &st) == 0;
}

static void test_failures(const char *dir, const char *fbin)
{
	ann_build_opts o;
	ann_build_opts_init(&o);
	o.partitions = 8;
	o.mem_bytes = (size_t)64 << 20;
	ann_error e = {0};
	char *idx = t_path(dir, "fail-idx");

	/* A NaN in vector 1234: error names the file and the vector; nothing left behind. */
	char *bad = t_path(dir, "bad.fbin");
	{
		/* Written by hand: the vector writer refuses NaN itself. */
		size_t nbytes = 8 + sizeof base;
		uint8_t *raw = malloc(nbytes);
		ann_st32(raw, N);
		ann_st32(raw + 4, D);
		memcpy(raw + 8, base, sizeof base);
		float nan = NAN;
		memcpy(raw + 8 + (1234 * D + 5) * sizeof(float), &nan, sizeof nan);
		t_write_file(bad, raw, nbytes);
		free(raw);
	}
	ASSERT_ERR(ann_build(bad, idx, &o, &e), e, ANN_E_BADINPUT, "1234");
	ASSERT_TRUE(strstr(e.msg, "bad.fbin") != NULL);
	ASSERT_TRUE(!exists(idx));
	char *tmp = malloc(strlen(idx) + 32);
	sprintf(tmp, "%s.tmp.%ld", idx, (long)getpid());
	ASSERT_TRUE(!exists(tmp));
	sprintf(tmp, "%s.build-state", idx);
	ASSERT_TRUE(!exists(tmp)); /* bad input: no rerun gets past it, the state goes */

	/* Budget too small: ANN_E_BUDGET, no index. */
	o.mem_bytes = (size_t)16 << 20;
	o.partitions = N + 1;
	ASSERT_ERR(ann_build(fbin, idx, &o, &e), e, ANN_E_INVAL, "partitions");
	o.partitions = 8;
	o.mem_bytes = 1 << 20;
	ASSERT_ERR(ann_build(fbin, idx, &o, &e), e, ANN_E_BUDGET, "budget");
	ASSERT_TRUE(!exists(idx));

	/* An existing directory is never overwritten. */
	ASSERT_TRUE(mkdir(idx, 0755) == 0);
	o.mem_bytes = (size_t)64 << 20;
	ASSERT_ERR(ann_build(fbin, idx, &o, &e), e, ANN_E_EXISTS, "already exists");
	rmdir(idx);

	/* Opening something that is not an index. */
	ann_index *x;
	ASSERT_TRUE(ann_index_open(dir, &x, &e) < 0);
	ASSERT_TRUE(x == NULL);
	free(bad);
	free(tmp);
	free(idx);
}

/* A flipped bit inside a block: verify names the partition; search fails
 * with ANN_E_CORRUPT instead of returning wrong answers. */
static void test_corruption(const char *dir, const char *fbin, ann_rng *rng)
{
	ann_build_opts o;
	ann_build_opts_init(&o);
	o.partitions = 6;
	o.mem_bytes = (size_t)64 << 20;
	char *path = t_path(dir, "corrupt");
	ASSERT_OK(ann_build(fbin, path, &o, NULL));
	char *blocks = t_path(path, "blocks.dat");
	size_t len;
	uint8_t *bytes = t_read_file(blocks, &len);
	ASSERT_TRUE(len > 8192);
	size_t off = 4096 + ann_rng_below(rng, len - 4096 - 64);
	int fd = open(blocks, O_WRONLY);
	uint8_t b = bytes[off] ^ (uint8_t)(1u << ann_rng_below(rng, 8));
	ASSERT_TRUE(pwrite(fd, &b, 1, (off_t)off) == 1);
	close(fd);
	uint64_t problems = 0;
	ASSERT_OK(ann_verify(path, NULL, NULL, &problems, NULL));
	ASSERT_TRUE(problems >= 1);
	ann_index *idx;
	ASSERT_OK(ann_index_open(path, &idx, NULL));
	ann_search_opts so;
	ann_search_opts_init(&so);
	so.k = K;
	so.nprobe = 6;
	ann_searcher *s;
	ASSERT_OK(ann_searcher_new(idx, &so, &s, NULL));
	int64_t ids[NQ * K];
	float dists[NQ * K];
	ann_error e = {0};
	int rc = ann_search(s, queries, NQ, ids, dists, NULL, &e);
	/* The flip may land in zero padding, which the decoder also checks. */
	ASSERT_EQ(rc, ANN_E_CORRUPT);
	ASSERT_TRUE(strstr(e.msg, "partition") != NULL);
	ann_searcher_free(s);
	ann_index_close(idx);
	free(bytes);
	free(blocks);
	free(path);
}

/* More than 4096 partitions: two-level k-means (ceil(sqrt(M)) coarse
 * clusters, recorded in the catalog) and assignment through the tree. Each
 * vector lands in the partition of a nearly nearest centroid: searched for
 * itself with nprobe 4 it is found; 1 and 2 build threads give the same
 * partitions and centroids (the same answers to an exactly routed batch). */
static void test_many_partitions(const char *dir, ann_rng *rng)
{
	t_current = "test_many_partitions";
	enum { MN = 12000, MD = 8, MP = 5000, MQ = 300 };
	float *x = malloc((size_t)MN * MD * sizeof(float));
	float centers[64 * MD];
	t_fill_uniform(rng, centers, 64 * MD, 30, 225);
	for (size_t i = 0; i < MN; i++) {
		const float *c = centers + ann_rng_below(rng, 64) * MD;
		for (size_t j = 0; j < MD; j++) {
			float v = roundf(c[j] + 10.0f * (float)ann_rng_normal(rng));
			x[i * MD + j] = v < 0 ? 0 : v > 255 ? 255 : v;
		}
	}
	char *data = t_path(dir, "many.u8bin");
	ann_vwriter *w;
	ASSERT_OK(ann_vwriter_open(data, MD, &w, NULL));
	ASSERT_OK(ann_vwriter_write_f32(w, x, MN, NULL));
	ASSERT_OK(ann_vwriter_close(w, NULL));
	ann_build_opts o;
	ann_build_opts_init(&o);
	o.partitions = MP;
	o.mem_bytes = (size_t)64 << 20;
	int64_t ids[2][MQ * 4], gids[2][MQ * 4];
	float dd[MQ * 4];
	uint8_t *blob[2] = {NULL, NULL};
	size_t blen[2] = {0, 0};
	for (int t = 1; t <= 2; t++) {
		o.threads = t;
		ann_index *idx = build_open(dir, t == 1 ? "many1" : "many2", data, &o);
		ann_index_info in;
		ASSERT_OK(ann_index_get_info(idx, &in, NULL));
		ASSERT_EQ(in.partitions, (uint32_t)MP);
		ASSERT_EQ(in.stored_vectors, (uint64_t)MN);
		uint64_t coarse = 0;
		ann_cat_txn *ct;
		ASSERT_OK(ann_catalog_read_begin(ann_store_catalog(idx->store), &ct, NULL));
		ASSERT_OK(ann_catalog_meta_get_u64(ct, "build.kmeans_coarse", &coarse, NULL));
		const uint8_t *b;
		ASSERT_OK(ann_catalog_model_get(ct, "router", &b, &blen[t - 1], NULL));
		blob[t - 1] = malloc(blen[t - 1]);
		memcpy(blob[t - 1], b, blen[t - 1]);
		ann_catalog_read_end(ct);
		ASSERT_EQ(coarse, (uint64_t)71);
		ann_searcher *s;
		ann_search_opts so;
		ann_search_opts_init(&so);
		so.k = 4;
		so.nprobe = 4;
		ASSERT_OK(ann_searcher_new(idx, &so, &s, NULL));
		/* one batch: routed exactly over the centroids (batch routing); then
		 * each query alone, through the centroid graph, which is built on one
		 * thread up to GRAPH_SERIAL_MAX centroids (router_kmeans.c), so both
		 * builds answer alike */
		float *qs = malloc((size_t)MQ * MD * sizeof(float));
		for (size_t q = 0; q < MQ; q++)
			memcpy(qs + q * MD, x + q * (MN / MQ) * MD, MD * sizeof(float));
		ASSERT_OK(ann_search(s, qs, MQ, ids[t - 1], dd, NULL, NULL));
		for (size_t q = 0; q < MQ; q++) /* one at a time: through the centroid graph */
			ASSERT_OK(ann_search(s, qs + q * MD, 1, gids[t - 1] + q * 4, dd, NULL, NULL));
		free(qs);
		size_t found = 0;
		for (size_t q = 0; q < MQ; q++) {
			size_t i = q * (MN / MQ);
			for (size_t a = 0; a < 4; a++)
				if (ids[t - 1][q * 4 + a] == (int64_t)i || (dd[q * 4 + a] == 0 && ids[t - 1][q * 4 + a] >= 0)) {
					found++;
					break;
				}
		}
		ann_searcher_free(s);
		ann_index_close(idx);
		printf("  %d partitions, %d build threads: %zu of %d base vectors found themselves at nprobe 4\n", MP, t,
		       found, MQ);
		ASSERT_TRUE(found >= MQ * 98 / 100);
	}
	ASSERT_TRUE(memcmp(ids[0], ids[1], sizeof ids[0]) == 0);
	/* the whole router, graph included, is the same whatever the build's threads */
	ASSERT_EQ(blen[0], blen[1]);
	ASSERT_TRUE(memcmp(blob[0], blob[1], blen[0]) == 0);
	ASSERT_TRUE(memcmp(gids[0], gids[1], sizeof gids[0]) == 0);
	free(blob[0]);
	free(blob[1]);
	free(data);
	free(x);
}

/* The defaults' rule at the sizes it was measured on (docs/DESIGN.md
 * "Defaults"): the 1M --profile real shape is bound by the graph's RAM
 * (7900 partitions, 1.440x raw measured) now that 2.3 blocks leave no page
 * padding after the head; with 2.2 blocks by disk, where the model counts
 * slim records (4934 partitions measured at 1.490x raw; the full-record
 * model gave 3884 at 1.451x); either way two-level k-means on the build's
 * own sample. Fashion-MNIST's shape is bound by the compact router's RAM,
 * one level, 64 rows per centroid. */
static void test_defaults_rule(void)
{
	ann_build_opts o;
	ann_build_opts_init(&o);
	ann_build_resolve_defaults(&o, 1000000, 128, ANN_ENC_U8);
	if (o.code_bits != 2 || o.kmeans.router_bits != 0)
		T_FAIL("real1m shape: codes %u bits, router bits %u; want 2 and the graph", o.code_bits,
		       o.kmeans.router_bits);
	if (o.partitions < 7800 || o.partitions > 8000)
		T_FAIL("real1m shape: %u partitions; the graph's RAM gives ~7900 (2.3 blocks leave disk room)",
		       o.partitions);
	if (o.sample != 0)
		T_FAIL("real1m shape: sample %llu; two-level k-means keeps the build's", (unsigned long long)o.sample);
	/* Without the head-shared page (2.2 blocks) the disk binds, at ~4665. */
	setenv("ANNANN_HEAD_PAGE", "0", 1);
	ann_build_opts_init(&o);
	ann_build_resolve_defaults(&o, 1000000, 128, ANN_ENC_U8);
	unsetenv("ANNANN_HEAD_PAGE");
	if (o.partitions < 4500 || o.partitions > 5100)
		T_FAIL("real1m shape, 2.2 blocks: %u partitions; the disk model with slim records gives ~4665 "
		       "(4934 at a 1.49x budget)", o.partitions);
	ann_build_opts_init(&o);
	ann_build_resolve_defaults(&o, 60000, 784, ANN_ENC_U8);
	if (o.code_bits != 1 || o.kmeans.router_bits != 1)
		T_FAIL("fmnist shape: codes %u bits, router bits %u; want 1 and 1", o.code_bits, o.kmeans.router_bits);
	if (o.partitions <= 1000 || o.partitions > 4096 || o.sample != ANN_MIN(60000ull, 64ull * o.partitions))
		T_FAIL("fmnist shape: %u partitions, sample %llu; want one level, 64 per centroid", o.partitions,
		       (unsigned long long)o.sample);
	/* SIFT photos' shape (372,542 x 128 u8): one level, and the k-means work
	 * budget lets the sample be the whole set (64 per centroid would be half) */
	ann_build_opts_init(&o);
	ann_build_resolve_defaults(&o, 372542, 128, ANN_ENC_U8);
	if (o.partitions < 2500 || o.partitions > 4096 || o.sample != 372542)
		T_FAIL("SIFT photos shape: %u partitions, sample %llu; want one level and the whole set", o.partitions,
		       (unsigned long long)o.sample);
	/* f32 at 96 dimensions: 36-byte head rows, so a head page holds ~113 rows
	 * and 300k rows give at most ~2650 partitions (was n / 32 = 9375, heads
	 * of a third of a page); the graph's RAM then binds, at ~1500. */
	ann_build_opts_init(&o);
	ann_build_resolve_defaults(&o, 300000, 96, ANN_ENC_F32);
	if (o.code_bits != 2 || o.partitions < 1300 || o.partitions > 2700)
		T_FAIL("f32 96-d shape: codes %u bits, %u partitions; want 2 bits and heads of a page or more (<= ~2650)",
		       o.code_bits, o.partitions);
	ann_build_opts_init(&o);
	o.kmeans.kmeans_coarse = 1; /* one level forced: the sample is bounded again */
	ann_build_resolve_defaults(&o, 1000000, 128, ANN_ENC_U8);
	if (o.sample != 64ull * o.partitions)
		T_FAIL("one level forced: sample %llu for %u partitions", (unsigned long long)o.sample, o.partitions);
}

/* Data 1e6 from the origin (the same points, shifted: distances and the
 * exact answers do not change) route as well as at the origin, one query at
 * a time (the centroid graph's scan) and in batches (the sgemm route):
 * k-means and the assignment shift rows and centroids before the sgemm
 * (kmeans.c km_pass). Before, the build put most rows in one partition and
 * nprobe 2 found under a tenth of the neighbours. */
static void test_off_origin(const char *dir)
{
	t_current = "off origin";
	double rec[2][2];
	for (int off = 0; off < 2; off++) {
		float shift = off ? 1e6f : 0.0f; /* integers below 2^24: the shifted points are exact */
		for (size_t i = 0; i < N * D; i++)
			base[i] += shift;
		for (size_t i = 0; i < NQ * D; i++)
			queries[i] += shift;
		char *data = t_path(dir, off ? "far.fbin" : "near.fbin");
		write_base(data);
		ann_build_opts o;
		ann_build_opts_init(&o);
		o.partitions = 12;
		o.mem_bytes = (size_t)64 << 20;
		o.threads = 2;
		o.tune = 0;
		ann_index *idx = build_open(dir, off ? "far" : "near", data, &o);
		ann_search_opts so;
		ann_search_opts_init(&so);
		so.k = K;
		so.nprobe = 2;
		so.adaptive = -1;
		int64_t ids[NQ * K];
		float dists[NQ * K];
		rec[off][0] = search_all(idx, &so, 1, ids, dists);
		rec[off][1] = search_all(idx, &so, NQ, ids, dists);
		ann_index_close(idx);
		for (size_t i = 0; i < N * D; i++)
			base[i] -= shift;
		for (size_t i = 0; i < NQ * D; i++)
			queries[i] -= shift;
		free(data);
	}
	printf("  off origin: recall at nprobe 2, one query / batch: %.3f / %.3f at the origin, %.3f / %.3f 1e6 "
	       "from it\n", rec[0][0], rec[0][1], rec[1][0], rec[1][1]);
	for (int b = 0; b < 2; b++) {
		ASSERT_TRUE(rec[0][b] >= 0.8);
		ASSERT_TRUE(rec[1][b] >= rec[0][b] - 0.05);
	}
}

int main(void)
{
	ann_rng rng;
	t_init("test_index", &rng);
	char *dir = t_tmpdir();
	make_data(&rng);
	char *fbin = t_path(dir, "base.fbin"), *u8bin = t_path(dir, "base.u8bin");
	write_base(fbin);
	write_base(u8bin);
	test_exact(dir, fbin, u8bin);
	test_equivalence(dir, u8bin);
	test_defaults_rule();
	test_soar_rule();
	test_soar_build(dir, u8bin);
	test_route_ef(dir, u8bin);
	test_assign_overflow();
	test_failures(dir, fbin);
	test_corruption(dir, fbin, &rng);
	test_many_partitions(dir, &rng);
	test_off_origin(dir);
	t_rmtree(dir);
	free(dir);
	free(fbin);
	free(u8bin);
	return 0;
}
