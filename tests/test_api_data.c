/* SPDX-License-Identifier: MIT */
/*
 * test_api_data.c: the public data API of src/index/api_data.c and build
 * cancellation, through annann.h only (plus the test helpers): vector files
 * round trip, ground truth from files equals the in-memory version and
 * reads back, info fields equal ann_index_get_info, and a build canceled in
 * each polled phase (sample, k-means iterations, route, pack) fails with
 * ANN_E_CANCELED leaving neither the index nor a temporary directory; the
 * reader's seek, the formats' limits and the generator, as the tool uses them.
 */
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"

#define N 20000u
#define NQ 50u
#define D 16u

typedef struct cancel_at {
	const char *phase; /* cancel once a progress report of this phase arrived */
	int armed;
	int polls_after;   /* cancel polls answered after arming */
} cancel_at;

static void on_progress(void *ctx, const char *phase, uint64_t done, uint64_t total)
{
	(void)done;
	(void)total;
	cancel_at *c = ctx;
	if (strcmp(phase, c->phase) == 0)
		c->armed = 1;
}

static int on_cancel(void *ctx)
{
	cancel_at *c = ctx;
	if (c->armed)
		c->polls_after++;
	return c->armed;
}

static size_t entries(const char *dir)
{
	DIR *d = opendir(dir);
	ASSERT_TRUE(d != NULL);
	size_t n = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL)
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
			n++;
	closedir(d);
	return n;
}

int main(void)
{
	ann_rng rng;
	t_init("test_api_data", &rng);
	char *dir = t_tmpdir();
	float *base = malloc((size_t)N * D * sizeof(float)), *q = malloc((size_t)NQ * D * sizeof(float));
	ASSERT_TRUE(base && q);
	t_gen_mixture(base, N, q, NQ, D, 20, t_seed);
	ann_error e = {0};

	/* Vector files: the writer's element type, a round trip, no temporary left. */
	char *bpath = t_path(dir, "base.fbin"), *qpath = t_path(dir, "q.fbin");
	ann_dtype t;
	ASSERT_OK(ann_vector_path_dtype(bpath, &t, &e));
	ASSERT_EQ(t, ANN_DTYPE_F32);
	ASSERT_ERR(ann_vector_path_dtype("x.txt", &t, &e), e, ANN_E_INVAL, "x.txt");
	const char *paths[2] = {bpath, qpath};
	const float *src[2] = {base, q};
	size_t cnt[2] = {N, NQ};
	for (int f = 0; f < 2; f++) {
		ann_vector_writer *w;
		ASSERT_OK(ann_vector_writer_open(paths[f], D, &w, &e));
		ASSERT_OK(ann_vector_writer_write_f32(w, src[f], cnt[f] / 2, &e));
		ASSERT_OK(ann_vector_writer_write(w, src[f] + cnt[f] / 2 * D, cnt[f] - cnt[f] / 2, &e));
		ASSERT_OK(ann_vector_writer_commit(w, &e));
	}
	ann_vector_reader *r;
	ASSERT_OK(ann_vector_reader_open(bpath, &r, &e));
	uint64_t n;
	uint32_t dim;
	ann_vector_reader_shape(r, &n, &dim, &t);
	ASSERT_EQ(n, N);
	ASSERT_EQ(dim, D);
	ASSERT_EQ(t, ANN_DTYPE_F32);
	float *back = malloc((size_t)N * D * sizeof(float));
	ASSERT_EQ(ann_vector_reader_read_f32(r, back, 1000, &e), 1000);
	ASSERT_EQ(ann_vector_reader_read(r, back + 1000 * D, N, &e), N - 1000);
	ASSERT_EQ(ann_vector_reader_read(r, back, 1, &e), 0);
	ann_vector_reader_close(r);
	ASSERT_TRUE(memcmp(back, base, (size_t)N * D * sizeof(float)) == 0);
	free(back);
	ASSERT_EQ(entries(dir), 2);

	/* Seek, the formats' limits and the free-space check, as the tool uses them. */
	ASSERT_OK(ann_vector_reader_open(bpath, &r, &e));
	float row[D];
	ASSERT_OK(ann_vector_reader_seek(r, 123, &e));
	ASSERT_EQ(ann_vector_reader_read_f32(r, row, 1, &e), 1);
	ASSERT_TRUE(memcmp(row, base + 123 * D, sizeof row) == 0);
	ASSERT_OK(ann_vector_reader_seek(r, N, &e)); /* at the end: nothing more */
	ASSERT_EQ(ann_vector_reader_read_f32(r, row, 1, &e), 0);
	ASSERT_TRUE(ann_vector_reader_seek(r, (uint64_t)N + 1, &e) < 0);
	ann_vector_reader_close(r);
	const char *fname = NULL;
	uint64_t fmax = 0;
	ASSERT_OK(ann_vector_path_format("a.u8bin", &fname, &fmax, &e));
	ASSERT_TRUE(!strcmp(fname, "u8bin") && fmax == INT32_MAX);
	ASSERT_OK(ann_vector_path_format("a.fvecs", NULL, &fmax, &e));
	ASSERT_EQ(fmax, UINT64_MAX);
	ASSERT_ERR(ann_vector_path_format("a.txt", &fname, &fmax, &e), e, ANN_E_INVAL, "a.txt");
	char *big = t_path(dir, "big.fbin");
	ASSERT_OK(ann_vector_path_check_size(big, 1000, D, &e));
	ASSERT_ERR(ann_vector_path_check_size(big, (uint64_t)INT32_MAX + 1, D, &e), e, ANN_E_INVAL, "holds at most");

	/* The generator: same options, same bytes; the profile names. */
	ASSERT_EQ(ann_gen_profile_parse("real"), ANN_GEN_REAL);
	ASSERT_EQ(ann_gen_profile_parse("hard"), -1);
	ASSERT_TRUE(!strcmp(ann_gen_profile_name(ANN_GEN_EASY), "easy"));
	char *g1 = t_path(dir, "g1.u8bin"), *g2 = t_path(dir, "g2.u8bin"), *gq = t_path(dir, "gq.u8bin");
	ann_gen_opts gen;
	ann_gen_opts_init(&gen);
	gen.profile = ANN_GEN_REAL;
	gen.n = 500;
	gen.nq = 7;
	gen.dim = 8;
	ASSERT_OK(ann_gen_write(&gen, g1, gq, &e));
	gen.nq = 0;
	ASSERT_OK(ann_gen_write(&gen, g2, NULL, &e));
	uint8_t r1[500 * 8], r2[500 * 8];
	const char *gp[2] = {g1, g2};
	uint8_t *gr[2] = {r1, r2};
	for (int f = 0; f < 2; f++) {
		ASSERT_OK(ann_vector_reader_open(gp[f], &r, &e));
		ann_vector_reader_shape(r, &n, &dim, &t);
		ASSERT_TRUE(n == 500 && dim == 8 && t == ANN_DTYPE_U8);
		ASSERT_EQ(ann_vector_reader_read(r, gr[f], 500, &e), 500);
		ann_vector_reader_close(r);
	}
	ASSERT_TRUE(memcmp(r1, r2, sizeof r1) == 0);
	ASSERT_OK(ann_vector_reader_open(gq, &r, &e));
	ann_vector_reader_shape(r, &n, &dim, &t);
	ASSERT_EQ(n, 7);
	ann_vector_reader_close(r);
	gen.drift = 1; /* the real profile refuses drift */
	ASSERT_ERR(ann_gen_write(&gen, g1, NULL, &e), e, ANN_E_INVAL, "drift");
	unlink(g1);
	unlink(g2);
	unlink(gq);
	free(g1);
	free(g2);
	free(gq);
	free(big);
	ASSERT_EQ(entries(dir), 2);

	/* Ground truth: files (streamed) equal arrays; the file reads back. */
	ann_ground_truth_opts go;
	ann_ground_truth_opts_init(&go);
	go.k = 10;
	go.mem_bytes = (size_t)1 << 20; /* several base chunks */
	uint32_t nq = 0, k2 = 0;
	int32_t *ids = NULL, *ids2 = NULL;
	float *dists = NULL, *dists2 = NULL;
	ASSERT_OK(ann_ground_truth(bpath, qpath, &go, &nq, &ids, &dists, &e));
	ASSERT_EQ(nq, NQ);
	int32_t mids[NQ * 10];
	float mdists[NQ * 10];
	ASSERT_OK(ann_ground_truth_mem(base, N, q, NQ, D, &go, mids, mdists, &e));
	ASSERT_TRUE(memcmp(ids, mids, sizeof mids) == 0);
	char *gpath = t_path(dir, "gt.bin");
	ASSERT_OK(ann_ground_truth_write(gpath, nq, 10, ids, dists, &e));
	ASSERT_OK(ann_ground_truth_read(gpath, &nq, &k2, &ids2, &dists2, &e));
	ASSERT_EQ(k2, 10);
	ASSERT_TRUE(memcmp(ids, ids2, sizeof mids) == 0 && memcmp(dists, dists2, sizeof mdists) == 0);
	ann_buffer_free(ids);
	ann_buffer_free(dists);
	ann_buffer_free(ids2);
	ann_buffer_free(dists2);
	ann_buffer_free(NULL);
	remove(gpath);
	free(gpath);

	/* A build canceled in each polled phase. */
	char *ipath = t_path(dir, "idx");
	/* The message names where it stopped: k-means polls inside training,
	 * not only the build after it. */
	const char *phases[] = {"sample", "kmeans", "route", "pack"};
	const char *where[] = {"during sample", "kmeans canceled during its iterations", "during route",
			       "during pack"};
	for (size_t i = 0; i < sizeof phases / sizeof phases[0]; i++) {
		cancel_at c = {phases[i], 0, 0};
		ann_build_opts bo;
		ann_build_opts_init(&bo);
		bo.partitions = 20;
		bo.mem_bytes = (size_t)64 << 20;
		bo.progress = on_progress;
		bo.progress_ctx = &c;
		bo.cancel = on_cancel;
		bo.cancel_ctx = &c;
		ASSERT_ERR(ann_build(bpath, ipath, &bo, &e), e, ANN_E_CANCELED, where[i]);
		ASSERT_EQ(c.polls_after, 1); /* stopped at the first poll after the phase began */
		struct stat st;
		ASSERT_TRUE(stat(ipath, &st) != 0);
		ASSERT_EQ(entries(dir), 2); /* the two vector files only: no temporary directory */
	}

	/* Info fields: the values of ann_index_get_info, the derived ones. */
	ann_build_opts bo;
	ann_build_opts_init(&bo);
	bo.partitions = 20;
	bo.mem_bytes = (size_t)64 << 20;
	ASSERT_OK(ann_build(bpath, ipath, &bo, &e));
	ann_index *x;
	ASSERT_OK(ann_index_open(ipath, &x, &e));
	ann_index_info in;
	ASSERT_OK(ann_index_get_info(x, &in, &e));
	ann_info_field f[ANN_INFO_MAX_FIELDS];
	size_t nf = 0;
	ASSERT_OK(ann_index_info_fields(x, f, &nf, &e));
	ASSERT_TRUE(nf >= 18 && nf <= ANN_INFO_MAX_FIELDS);
	int seen = 0;
	for (size_t i = 0; i < nf; i++) {
		for (size_t j = 0; j < i; j++)
			ASSERT_TRUE(strcmp(f[i].key, f[j].key) != 0);
		if (!strcmp(f[i].key, "vectors"))
			{ seen++; ASSERT_EQ(f[i].i, in.vectors); }
		if (!strcmp(f[i].key, "dim"))
			{ seen++; ASSERT_EQ(f[i].i, D); }
		if (!strcmp(f[i].key, "partitions"))
			{ seen++; ASSERT_EQ(f[i].i, in.partitions); }
		if (!strcmp(f[i].key, "raw_bytes"))
			{ seen++; ASSERT_EQ(f[i].i, (uint64_t)N * D * 4); }
		if (!strcmp(f[i].key, "metric"))
			{ seen++; ASSERT_TRUE(f[i].type == ANN_INFO_STR && !strcmp(f[i].str, "l2")); }
		if (!strcmp(f[i].key, "replication"))
			{ seen++; ASSERT_TRUE(f[i].type == ANN_INFO_NUM && f[i].num == 1.0); }
	}
	ASSERT_EQ(seen, 6);
	uint64_t hist[ANN_INFO_HIST_BINS], parts = 0, total = 0;
	ann_index_size_histogram(x, hist);
	for (int b = 0; b < ANN_INFO_HIST_BINS; b++)
		parts += hist[b];
	for (uint32_t p = 0; p < in.partitions; p++)
		total += ann_index_partition_size(x, p);
	ASSERT_EQ(parts, in.partitions);
	ASSERT_EQ(total, in.stored_vectors);
	ann_index_close(x);

	t_rmtree(dir);
	free(dir);
	free(bpath);
	free(qpath);
	free(ipath);
	free(base);
	free(q);
	printf("test_api_data: ok\n");
	return 0;
}
