/* SPDX-License-Identifier: MIT */
/*
 * test_dist.c: the library side of the distributed index (src/index/dist.h)
 * without MPI: the merge of per-rank answers (replicas counted once), the
 * distributed k-means steps (partials of split slices reduce to the sums of
 * the whole; the update is the mean; an empty cluster is repaired the same
 * way from the same sums), and the descriptor (round trip; a bad line named;
 * refusals by ann_index_open). tests/test_mpi.sh runs the real thing.
 */
#include <string.h>

#include "dist.h"
#include "testutil.h"

static void test_merge(void)
{
	t_current = "merge";
	/* 3 lists of k = 4; id 7 is on two ranks (a replica), list 2 is short */
	int64_t ids[12] = {1, 7, 9, 12, 7, 3, 20, 21, 5, -1, -1, -1};
	float d[12] = {0.5f, 1.0f, 2.0f, 3.0f, 1.0f, 1.5f, 4.0f, 5.0f, 0.5f, INFINITY, INFINITY, INFINITY};
	int64_t oi[4];
	float od[4];
	ASSERT_OK(ann_topk_merge(ids, d, 3, 4, oi, od, NULL));
	/* 0.5 ties: smaller id first; 7 once */
	ASSERT_EQ(oi[0], 1);
	ASSERT_EQ(oi[1], 5);
	ASSERT_EQ(oi[2], 7);
	ASSERT_EQ(oi[3], 3);
	ASSERT_NEAR(od[3], 1.5, 1e-9);
	/* fewer distinct ids than k: padded */
	int64_t few[4] = {4, 4, -1, -1};
	float fd[4] = {1, 1, INFINITY, INFINITY};
	ASSERT_OK(ann_topk_merge(few, fd, 2, 2, oi, od, NULL));
	ASSERT_EQ(oi[0], 4);
	ASSERT_EQ(oi[1], -1);
	ASSERT_TRUE(isinf(od[1]));
}

static void test_kmeans(ann_rng *rng)
{
	t_current = "kmeans";
	enum { N = 3000, D = 8, K = 6 };
	float *x = malloc(sizeof(float) * N * D), c[K * D], c2[K * D];
	double s1[K * D], s2[K * D], in1 = 0, in2 = 0;
	uint64_t n1[K], n2[K];
	t_fill_uniform(rng, x, (size_t)N * D, -10, 10);
	for (int i = 0; i < K * D; i++)
		c[i] = x[i];
	memset(s1, 0, sizeof s1);
	memset(s2, 0, sizeof s2);
	memset(n1, 0, sizeof n1);
	memset(n2, 0, sizeof n2);
	/* the whole sample at once vs three slices added up (the Allreduce) */
	ASSERT_OK(ann_dist_kmeans_partial(x, N, D, c, K, ANN_METRIC_L2, 1, s1, n1, &in1, NULL));
	size_t cut[4] = {0, 1000, 2100, N};
	for (int r = 0; r < 3; r++)
		ASSERT_OK(ann_dist_kmeans_partial(x + cut[r] * D, cut[r + 1] - cut[r], D, c, K, ANN_METRIC_L2, 2, s2, n2,
						  &in2, NULL));
	uint64_t tot = 0;
	for (int k = 0; k < K; k++) {
		ASSERT_EQ(n1[k], n2[k]);
		tot += n1[k];
		for (int j = 0; j < D; j++)
			ASSERT_NEAR(s1[k * D + j], s2[k * D + j], 1e-9);
	}
	ASSERT_EQ(tot, N);
	ASSERT_NEAR(in1, in2, 1e-6);
	/* the update is the mean */
	memcpy(c2, c, sizeof c);
	ASSERT_EQ(ann_dist_kmeans_update(s1, n1, K, D, ANN_METRIC_L2, c2), 0);
	for (int k = 0; k < K; k++)
		if (n1[k])
			ASSERT_NEAR(c2[k * D], s1[k * D] / (double)n1[k], 1e-6);
	/* an empty cluster: split the largest, deterministically */
	uint64_t e1[K], e2[K];
	double es[K * D];
	for (int k = 0; k < K; k++)
		e1[k] = e2[k] = (uint64_t)(k + 1) * 10;
	e1[2] = e2[2] = 0;
	for (int i = 0; i < K * D; i++)
		es[i] = (double)(i % 7) * (double)e1[i / D];
	float a[K * D], b[K * D];
	memcpy(a, c, sizeof c);
	memcpy(b, c, sizeof c);
	ASSERT_EQ(ann_dist_kmeans_update(es, e1, K, D, ANN_METRIC_L2, a), 1);
	ASSERT_EQ(ann_dist_kmeans_update(es, e2, K, D, ANN_METRIC_L2, b), 1);
	ASSERT_TRUE(memcmp(a, b, sizeof a) == 0);
	ASSERT_TRUE(e1[2] > 0 && e1[2] + e1[K - 1] == (uint64_t)K * 10);
	ASSERT_TRUE(memcmp(a + 2 * D, a + (K - 1) * D, D * sizeof(float)) != 0);
	/* spherical: unit centroids */
	memcpy(c2, c, sizeof c);
	ann_dist_kmeans_update(s1, n1, K, D, ANN_METRIC_IP, c2);
	double nn = 0;
	for (int j = 0; j < D; j++)
		nn += (double)c2[j] * c2[j];
	ASSERT_NEAR(nn, 1.0, 1e-5);
	free(x);
}

static void test_descriptor(const char *dir)
{
	t_current = "descriptor";
	ann_error e = {0};
	ann_dist_desc d = {3, 60, 32, 30000, 0x0123456789abcdefull}, r;
	ASSERT_ERR(ann_dist_desc_read(dir, &r, &e), e, ANN_E_NOTFOUND, "no distributed index descriptor");
	ASSERT_OK(ann_dist_desc_write(dir, &d, NULL));
	ASSERT_OK(ann_dist_desc_read(dir, &r, NULL));
	ASSERT_EQ(r.ranks, 3);
	ASSERT_EQ(r.partitions, 60);
	ASSERT_EQ(r.dim, 32);
	ASSERT_EQ(r.vectors, 30000);
	ASSERT_TRUE(r.router_hash == d.router_hash);
	/* ann_index_open says what it is */
	ann_index *x = NULL;
	ASSERT_ERR(ann_index_open(dir, &x, &e), e, ANN_E_UNSUPPORTED, "a distributed index of 3 ranks");
	ASSERT_TRUE(x == NULL);
	/* a bad line is named */
	char *p = t_path(dir, ANN_DIST_DESCRIPTOR);
	const char *bad = "annann distributed index 1\nranks 3\npartitions sixty\n";
	t_write_file(p, bad, strlen(bad));
	ASSERT_ERR(ann_dist_desc_read(dir, &r, &e), e, ANN_E_BADINPUT, "line 3 is \"partitions sixty\"");
	ASSERT_ERR(ann_index_open(dir, &x, &e), e, ANN_E_UNSUPPORTED, "descriptor is bad");
	const char *later = "annann distributed index 2\n";
	t_write_file(p, later, strlen(later));
	ASSERT_ERR(ann_dist_desc_read(dir, &r, &e), e, ANN_E_BADINPUT, "line 1");
	const char *cut = "annann distributed index 1\nranks 3\npartitions 6\ndim 4\nvectors 9\n";
	t_write_file(p, cut, strlen(cut));
	ASSERT_ERR(ann_dist_desc_read(dir, &r, &e), e, ANN_E_BADINPUT, "ends at line 6");
	free(p);
}

int main(void)
{
	ann_rng rng;
	t_init("test_dist", &rng);
	char *dir = t_tmpdir();
	test_merge();
	test_kmeans(&rng);
	test_descriptor(dir);
	t_rmtree(dir);
	free(dir);
	return 0;
}
