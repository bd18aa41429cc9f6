/* SPDX-License-Identifier: MIT */
/*
 * Description: the spread-aware probe order (docs/DESIGN.md "Spread-aware
 * probe order"), on real files and LMDB:
 *  - a codes block's spread (cblock_spread) is the mean |x - c|^2 of its
 *    rows about the stored centre, with full and slim records;
 *  - the directory entry keeps it as bfloat16 in its two reserved bytes;
 *    format 1 entries stay byte for byte; a spread that is not finite or
 *    negative is refused at decode, naming the partition;
 *  - every codes block the build and compaction write gets its spread, and
 *    verify reports an entry whose spread disagrees with its block;
 *  - search: of two partitions, the nearer centroid holds a loose cluster
 *    and the farther a tight one that holds the true neighbours. With
 *    nprobe 1 the distance order reads the loose one; the spread order
 *    reads the tight one and finds them. Answers are exact either way.
 *  - cosine: unit rows, where |q - c|^2 = 2 (1 - cos): the order scores
 *    2 x the router's 1 - cos plus the weight x the spread. A tight and a
 *    loose cluster on orthogonal directions, the query nearer the loose
 *    one's centre: at 1.25 x the weight where the two scores tie the tight
 *    one is read, at 0.8 x the loose one (with the scale 1 the tie would be
 *    at half that weight, and without the order the loose one is read).
 *    The build fits the directional order on the unit rows too.
 */
#include <math.h>

#include "cblock.h"
#include "index.h"
#include "testutil.h"
#include "vecio.h"

#define D 32
#define NA 600 /* the tight cluster: ids 0..NA-1 */
#define NB 600 /* the loose cluster */
#define N (NA + NB)
#define K 10

static float base[N * D];

/* Cluster A around 100 (sd 2, spread ~128), cluster B around 160 (sd 25,
 * spread ~20,000): |a - b|^2 = 115,200. */
static void make_data(ann_rng *rng)
{
	for (size_t i = 0; i < N; i++)
		for (size_t j = 0; j < D; j++) {
			float x = i < NA ? 100.0f + 2.0f * (float)ann_rng_normal(rng)
					 : 160.0f + 25.0f * (float)ann_rng_normal(rng);
			x = roundf(x);
			base[i * D + j] = x < 0 ? 0 : x > 255 ? 255 : x;
		}
}

static void test_entry(void)
{
	t_current = "entry";
	ann_dirent d = {0}, back;
	d.offset = 4096 * 7;
	d.checksum = 42;
	d.length = 4096 * 3;
	d.count = 9;
	d.generation = 2;
	d.kind = ANN_KIND_FILE;
	d.head = 5000;
	d.spread = 12345.67f;
	uint8_t v[ANN_PARTS_VALUE_BYTES];
	ASSERT_OK(ann_catalog_part_encode_any(v, &d, NULL));
	ASSERT_OK(ann_catalog_part_decode(v, sizeof v, 3, &back, NULL));
	ASSERT_TRUE(back.spread == ann_catalog_spread_stored(d.spread));
	ASSERT_NEAR(back.spread, 12345.67, 12345.67 / 256);
	ASSERT_TRUE(back.spread != d.spread); /* bfloat16: 8 bits of precision */
	/* round to nearest: 1 + 2^-8 + 2^-9 rounds up to 1 + 2^-7, 1 + 2^-9 down to 1 */
	ASSERT_TRUE(ann_catalog_spread_stored(1.0f + 0.005859375f) == 1.0078125f);
	ASSERT_TRUE(ann_catalog_spread_stored(1.0f + 0.001953125f) == 1.0f);
	ASSERT_TRUE(ann_catalog_spread_stored(-3.0f) == 0.0f);
	ASSERT_TRUE(ann_catalog_spread_stored(NAN) == 0.0f);
	ASSERT_TRUE(ann_catalog_spread_stored(INFINITY) == 0.0f);
	float big = ann_catalog_spread_stored(3.4e38f); /* would round to infinity: the largest finite */
	ASSERT_TRUE(isfinite(big) && big > 3.3e38f);
	/* a format 1 entry without a spread is what it always was: bytes 2-3 zero */
	d.head = 0;
	d.spread = 0;
	ann_catalog_part_encode(v, &d);
	ASSERT_TRUE(v[0] == 1 && v[2] == 0 && v[3] == 0);
	/* damage: a NaN, an infinity, a negative value */
	const uint16_t bad[] = {0x7FC0, 0x7F80, 0xC000};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		d.head = 5000;
		d.spread = 1.0f;
		ASSERT_OK(ann_catalog_part_encode_any(v, &d, NULL));
		ann_st16(v + 2, bad[i]);
		ann_error e = {0};
		ASSERT_ERR(ann_catalog_part_decode(v, sizeof v, 11, &back, &e), e, ANN_E_CORRUPT, "partition 11: spread");
	}
}

/* cblock_spread against the mean |x - c|^2 computed from the rows. */
static void test_block(void)
{
	t_current = "block";
	ann_rbq *q;
	ASSERT_OK(ann_rbq_new(D, 2, 7, &q, NULL));
	int64_t ids[N];
	for (size_t i = 0; i < N; i++)
		ids[i] = (int64_t)i;
	for (int slim = 0; slim < 2; slim++)
		for (int which = 0; which < 2; which++) {
			const float *rows = base + (which ? NA * D : 0);
			size_t n = which ? NB : NA;
			uint8_t *blk;
			size_t len;
			uint32_t head;
			ASSERT_OK(cblock_encode(q, ANN_BLOCK_U8, ANN_BLOCK_PAD_FILE, slim ? CBLOCK_ENC_F16 : 0, D, n, ids, rows,
						ANN_DTYPE_F32, 5, 1, &blk, &len, &head, NULL));
			ann_cblock_info in;
			ASSERT_OK(cblock_head(blk, len, &in, NULL, NULL));
			ASSERT_EQ((in.flags & CBLOCK_FLAG_F16) != 0, slim);
			float c[D];
			cblock_centre(&in, blk, c);
			double want = 0;
			for (size_t i = 0; i < n; i++)
				for (size_t j = 0; j < D; j++) {
					double u = (double)rows[i * D + j] - c[j];
					want += u * u;
				}
			want /= (double)n;
			double got = cblock_spread(&in, blk);
			ASSERT_NEAR(got, want, want * (slim ? 2e-3 : 1e-5));
			ann_aligned_free(blk);
		}
	ann_rbq_free(q);
}

static void count_issue(void *ctx, uint32_t partition, const char *problem)
{
	(void)partition;
	(void)problem;
	(*(int *)ctx)++;
}

/* The query at 0.54 of the way from A's centre to B's: B's centre is
 * nearer (|q - b|^2 = 24,376 against 33,592), A's rows are (33,720 against
 * 44,376 on average). */
static void query(float *q)
{
	for (size_t j = 0; j < D; j++)
		q[j] = 100.0f + 0.54f * 60.0f;
}

/* Searches with nprobe 1 and the given weight; returns how many of the K
 * answers are A's rows, checking each distance against the row. */
static int search_a(ann_index *x, float weight)
{
	ann_search_opts so;
	ann_search_opts_init(&so);
	so.k = K;
	so.nprobe = 1;
	so.spread_weight = weight;
	ann_searcher *s;
	ann_error e = {0};
	if (ann_searcher_new(x, &so, &s, &e) < 0)
		T_FAIL("searcher: %s", e.msg);
	float q[D];
	query(q);
	int64_t ids[K];
	float dists[K];
	ann_query_stats st;
	if (ann_search(s, q, 1, ids, dists, &st, &e) < 0)
		T_FAIL("search: %s", e.msg);
	ASSERT_EQ(st.partitions, 1);
	int in_a = 0;
	for (size_t r = 0; r < K; r++) {
		ASSERT_TRUE(ids[r] >= 0 && ids[r] < N);
		double t = 0;
		for (size_t j = 0; j < D; j++) {
			double u = (double)q[j] - base[(size_t)ids[r] * D + j];
			t += u * u;
		}
		ASSERT_NEAR(dists[r], t, 1e-3);
		in_a += ids[r] < NA;
	}
	ann_searcher_free(s);
	return in_a;
}

static void test_index(const char *dir, const char *data, ann_store_kind store)
{
	t_current = store == ANN_STORE_LMDB ? "index lmdb" : "index file";
	ann_build_opts o;
	ann_build_opts_init(&o);
	o.partitions = 2;
	o.mem_bytes = (size_t)64 << 20;
	o.threads = 1;
	o.store = store;
	o.code_bits = 2;
	char *idx = t_path(dir, store == ANN_STORE_LMDB ? "ix_lmdb" : "ix_file");
	ann_error e = {0};
	if (ann_build(data, idx, &o, &e) < 0)
		T_FAIL("build: %s", e.msg);
	ann_index *x;
	ASSERT_OK(ann_index_open(idx, &x, NULL));
	/* the two partitions are the two clusters, each with its spread */
	ASSERT_EQ(x->dir.count, 2);
	for (uint32_t p = 0; p < 2; p++) {
		ASSERT_EQ(x->dir.ents[p].count, NA);
		ASSERT_TRUE(x->dir.ents[p].spread > 0);
	}
	float lo = fminf(x->dir.ents[0].spread, x->dir.ents[1].spread);
	float hi = fmaxf(x->dir.ents[0].spread, x->dir.ents[1].spread);
	ASSERT_NEAR(lo, D * 4.0, D * 4.0 * 0.3);
	ASSERT_NEAR(hi, D * 625.0, D * 625.0 * 0.1);
	ann_index_info info;
	ASSERT_OK(ann_index_get_info(x, &info, NULL));
	ASSERT_EQ(info.spread_partitions, 2);
	/* distance order: the loose cluster; spread order (weight 1): the tight one */
	ASSERT_EQ(search_a(x, -1.0f), 0);
	ASSERT_EQ(search_a(x, 1.0f), K);
	/* a weight out of range is refused */
	ann_search_opts so;
	ann_search_opts_init(&so);
	so.spread_weight = INFINITY;
	ann_searcher *s;
	ASSERT_ERR(ann_searcher_new(x, &so, &s, &e), e, ANN_E_INVAL, "spread weight");
	so.spread_weight = 101;
	ASSERT_ERR(ann_searcher_new(x, &so, &s, &e), e, ANN_E_INVAL, "spread weight");
	ann_index_close(x);
	int issues = 0;
	uint64_t problems = 1;
	ASSERT_OK(ann_verify(idx, count_issue, &issues, &problems, NULL));
	ASSERT_EQ(problems, 0);
	/* compaction rewrites a partition: its new entry has its own spread.
	 * Delete the loose cluster's rows but one: its spread falls to 0. */
	ann_writer *w;
	ASSERT_OK(ann_writer_open(idx, &w, NULL));
	int64_t del[NB - 1];
	for (size_t i = 0; i < NB - 1; i++)
		del[i] = (int64_t)(NA + 1 + i);
	ASSERT_OK(ann_delete(w, del, NB - 1, NULL, NULL));
	ASSERT_OK(ann_compact(w, 0, NULL, NULL));
	ann_writer_close(w);
	ASSERT_OK(ann_index_open(idx, &x, NULL));
	uint32_t loose = x->dir.ents[0].count == 1 ? 0 : 1;
	ASSERT_EQ(x->dir.ents[loose].count, 1);
	ASSERT_TRUE(x->dir.ents[loose].spread == 0.0f); /* one row: its centre */
	ASSERT_TRUE(x->dir.ents[1 - loose].spread > 0.0f);
	ASSERT_OK(ann_index_get_info(x, &info, NULL));
	ASSERT_EQ(info.spread_partitions, 1);
	ann_index_close(x);
	ASSERT_OK(ann_verify(idx, count_issue, &issues, &problems, NULL));
	ASSERT_EQ(problems, 0);
	/* an entry whose spread disagrees with its block: verify names it */
	char *cat = t_path(idx, "catalog.lmdb");
	ann_catalog_opts co;
	ann_catalog_opts_init(&co);
	ann_catalog *c;
	ASSERT_OK(ann_catalog_open(cat, &co, &c, NULL));
	ann_cat_txn *t;
	ASSERT_OK(ann_catalog_write_begin(c, &t, NULL));
	ann_dirent de;
	ASSERT_OK(ann_catalog_part_get(t, 1 - loose, &de, NULL));
	de.spread *= 2;
	ASSERT_OK(ann_catalog_part_put(t, 1 - loose, &de, NULL));
	ASSERT_OK(ann_catalog_commit(t, NULL));
	ann_catalog_close(c);
	issues = 0;
	ASSERT_OK(ann_verify(idx, count_issue, &issues, &problems, NULL));
	ASSERT_EQ(problems, 1);
	ASSERT_EQ(issues, 1);
	free(cat);
	free(idx);
}

/* Unit vector of v (D floats) into out. */
static void unit(const double *v, float *out)
{
	double n2 = 0;
	for (size_t j = 0; j < D; j++)
		n2 += v[j] * v[j];
	for (size_t j = 0; j < D; j++)
		out[j] = (float)(v[j] / sqrt(n2));
}

/* Cosine, nprobe 1, spread weight w: 1 when the tight cluster's partition
 * was read, 0 for the loose one (every answer from one of them, each
 * distance checked against its row). */
static int cos_read_tight(ann_index *x, const float *rows, const float *q, float w, float dw)
{
	ann_search_opts so;
	ann_search_opts_init(&so);
	so.k = K;
	so.nprobe = 1;
	so.adaptive = -1;
	so.spread_weight = w;
	so.direction_weight = dw;
	ann_searcher *s;
	ann_error e = {0};
	if (ann_searcher_new(x, &so, &s, &e) < 0)
		T_FAIL("searcher: %s", e.msg);
	int64_t ids[K];
	float dists[K];
	if (ann_search(s, q, 1, ids, dists, NULL, &e) < 0)
		T_FAIL("search: %s", e.msg);
	ann_searcher_free(s);
	int in_a = 0;
	for (size_t r = 0; r < K; r++) {
		ASSERT_TRUE(ids[r] >= 0 && ids[r] < N);
		double ip = 0;
		for (size_t j = 0; j < D; j++)
			ip += (double)q[j] * rows[(size_t)ids[r] * D + j];
		ASSERT_NEAR(dists[r], 1.0 - ip, 1e-4);
		in_a += ids[r] < NA;
	}
	ASSERT_TRUE(in_a == 0 || in_a == K);
	return in_a == K;
}

static void test_cosine(const char *dir)
{
	t_current = "cosine";
	static float rows[N * D];
	ann_rng rng;
	ann_rng_seed(&rng, 11);
	double v[D], ca[D] = {0}, cb[D] = {0};
	for (size_t i = 0; i < N; i++) {
		for (size_t j = 0; j < D; j++)
			v[j] = (i < NA ? 0.03 : 0.2) * ann_rng_normal(&rng);
		v[i < NA ? 0 : 1] += 1.0; /* A around e0, B around e1 */
		unit(v, rows + i * D);
		for (size_t j = 0; j < D; j++)
			(i < NA ? ca : cb)[j] += rows[i * D + j];
	}
	char *data = t_path(dir, "cos.fbin");
	ann_vwriter *vw;
	ASSERT_OK(ann_vwriter_open(data, D, &vw, NULL));
	ASSERT_OK(ann_vwriter_write_f32(vw, rows, N, NULL));
	ASSERT_OK(ann_vwriter_close(vw, NULL));
	ann_build_opts o;
	ann_build_opts_init(&o);
	o.partitions = 2;
	o.mem_bytes = (size_t)64 << 20;
	o.threads = 1;
	o.code_bits = 2;
	o.metric = ANN_METRIC_COSINE;
	o.tune = 0;
	o.directions = 2; /* fitted on the unit rows */
	char *idx = t_path(dir, "ix_cos");
	ASSERT_OK(ann_build(data, idx, &o, NULL));
	ann_index *x;
	ASSERT_OK(ann_index_open(idx, &x, NULL));
	ASSERT_EQ(x->dir.count, 2);
	uint32_t pa = x->dir.ents[0].count == NA && x->dir.ents[0].spread < x->dir.ents[1].spread ? 0 : 1;
	ASSERT_EQ(x->dir.ents[pa].count, NA);
	ASSERT_EQ(x->dir.ents[1 - pa].count, NB);
	float spa = x->dir.ents[pa].spread, spb = x->dir.ents[1 - pa].spread;
	ASSERT_TRUE(spa > 0 && spb > 4 * spa);
	/* the query 50 degrees from e0, 40 from e1; the router's distances
	 * 1 - cos to the clusters' mean directions (its spherical centroids) */
	double qd[D] = {0};
	qd[0] = cos(50 * M_PI / 180);
	qd[1] = sin(50 * M_PI / 180);
	float q[D], ua[D], ub[D];
	unit(qd, q);
	unit(ca, ua);
	unit(cb, ub);
	double da = 1, db = 1;
	for (size_t j = 0; j < D; j++) {
		da -= (double)q[j] * ua[j];
		db -= (double)q[j] * ub[j];
	}
	ASSERT_TRUE(da > db + 0.05);
	double tie = 2 * (da - db) / ((double)spb - spa); /* 2 da + w spa = 2 db + w spb */
	ASSERT_TRUE(tie > 0.05 && tie < 50);
	ASSERT_EQ(cos_read_tight(x, rows, q, -1.0f, -1.0f), 0); /* the distance order */
	ASSERT_EQ(cos_read_tight(x, rows, q, (float)(0.8 * tie), -1.0f), 0);
	ASSERT_EQ(cos_read_tight(x, rows, q, (float)(1.25 * tie), -1.0f), 1);
	cos_read_tight(x, rows, q, 0.0f, 1.0f); /* the directional discount too: exact answers */
	ann_index_info info;
	ASSERT_OK(ann_index_get_info(x, &info, NULL));
	ASSERT_EQ(info.spread_partitions, 2);
	ASSERT_EQ(info.directions, 2);
	ASSERT_EQ(info.directions_partitions, 2);
	ann_index_close(x);
	free(idx);
	free(data);
}

int main(void)
{
	ann_rng rng;
	t_init("test_spread", &rng);
	char *dir = t_tmpdir();
	make_data(&rng);
	char *data = t_path(dir, "base.u8bin");
	ann_vwriter *w;
	ASSERT_OK(ann_vwriter_open(data, D, &w, NULL));
	ASSERT_OK(ann_vwriter_write_f32(w, base, N, NULL));
	ASSERT_OK(ann_vwriter_close(w, NULL));
	test_entry();
	test_block();
	test_index(dir, data, ANN_STORE_FILE);
	test_index(dir, data, ANN_STORE_LMDB);
	test_cosine(dir);
	free(data);
	t_rmtree(dir);
	free(dir);
	printf("test_spread: ok\n");
	return 0;
}
