/* SPDX-License-Identifier: MIT */
/*
 * test_gt: exact ground truth against a naive scan. The naive scan measures
 * every (query, base) pair in double precision and sorts by (distance, id);
 * ann_gt_compute_mem (1 and 2 threads) and ann_gt_compute over files
 * (streamed in many small chunks under a tiny budget) must return the same
 * ids, ties broken by the smaller id, with the same distances. Integer
 * data (as the SIFT-like sets) make exact ties common; random floats make
 * near-ties that the sgemm screen must not get wrong.
 */
#include <stdlib.h>
#include <string.h>

#include "gt.h"
#include "testutil.h"
#include "vecio.h"

typedef struct pair {
	double d;
	int32_t id;
} pair;

static int cmp_pair(const void *a, const void *b)
{
	const pair *x = a, *y = b;
	if (x->d != y->d)
		return x->d < y->d ? -1 : 1;
	return (x->id > y->id) - (x->id < y->id);
}

static double naive_dist(const float *a, const float *b, size_t d, ann_metric m)
{
	double s = 0, na = 0, nb = 0;
	for (size_t j = 0; j < d; j++) {
		if (m == ANN_METRIC_L2) {
			double t = (double)a[j] - (double)b[j];
			s += t * t;
		} else {
			s += (double)a[j] * (double)b[j];
			na += (double)a[j] * a[j];
			nb += (double)b[j] * b[j];
		}
	}
	if (m == ANN_METRIC_IP)
		return -s;
	if (m == ANN_METRIC_COSINE)
		return na > 0 && nb > 0 ? 1.0 - s / (sqrt(na) * sqrt(nb)) : 1.0;
	return s;
}

/* Top-k of every query by naive scan: ids (-1 padded) and distances. */
static void naive(const float *base, size_t n, const float *q, size_t nq, size_t d, size_t k, ann_metric m,
		  int32_t *ids, double *dists)
{
	pair *p = malloc(n * sizeof(pair));
	ASSERT_TRUE(p != NULL);
	for (size_t i = 0; i < nq; i++) {
		for (size_t b = 0; b < n; b++)
			p[b] = (pair){naive_dist(q + i * d, base + b * d, d, m), (int32_t)b};
		qsort(p, n, sizeof(pair), cmp_pair);
		for (size_t j = 0; j < k; j++) {
			ids[i * k + j] = j < n ? p[j].id : -1;
			dists[i * k + j] = j < n ? p[j].d : INFINITY;
		}
	}
	free(p);
}

/* got must equal the naive answer: same id at every rank, except where the
 * naive distances of the two ids are within float rounding (a near-tie
 * that single precision cannot order), and distances within rounding. */
static void check(const char *what, const float *base, const float *q, size_t d, size_t nq, size_t k, ann_metric m,
		  bool exact, const int32_t *want, const double *wantd, const int32_t *got, const float *gotd)
{
	for (size_t i = 0; i < nq * k; i++) {
		if (want[i] < 0) {
			ASSERT_EQ(got[i], -1);
			ASSERT_TRUE(gotd[i] == INFINITY);
			continue;
		}
		double tol = 1e-5 * (fabs(wantd[i]) + 1.0);
		if (fabs((double)gotd[i] - wantd[i]) > tol)
			T_FAIL("%s: query %zu rank %zu: distance %.9g, naive %.9g", what, i / k, i % k, (double)gotd[i],
			       wantd[i]);
		if (got[i] == want[i])
			continue;
		/* Integer data: distances are exact, so ties go to the smaller id. */
		if (exact)
			T_FAIL("%s: query %zu rank %zu: id %d, naive %d (distance %.9g)", what, i / k, i % k, got[i],
			       want[i], wantd[i]);
		ASSERT_TRUE(got[i] >= 0);
		double dg = naive_dist(q + (i / k) * d, base + (size_t)got[i] * d, d, m);
		if (fabs(dg - wantd[i]) > tol)
			T_FAIL("%s: query %zu rank %zu: id %d (%.9g), naive %d (%.9g)", what, i / k, i % k, got[i], dg,
			       want[i], wantd[i]);
	}
}

static void write_set(const char *path, const float *x, size_t n, size_t d)
{
	ann_vwriter *w;
	ASSERT_OK(ann_vwriter_open(path, (uint32_t)d, &w, NULL));
	ASSERT_OK(ann_vwriter_write_f32(w, x, n, NULL));
	ASSERT_OK(ann_vwriter_close(w, NULL));
}

static void run_case(const char *dir, ann_rng *r, size_t n, size_t nq, size_t d, size_t k, bool integers,
		     ann_metric m)
{
	float *base = malloc(n * d * sizeof(float)), *q = malloc(nq * d * sizeof(float));
	ASSERT_TRUE(base && q);
	for (size_t i = 0; i < n * d; i++)
		base[i] = integers ? (float)ann_rng_below(r, 4) * 60.0f : (float)ann_rng_normal(r);
	for (size_t i = 0; i < nq * d; i++)
		q[i] = integers ? (float)ann_rng_below(r, 256) : (float)ann_rng_normal(r);
	/* exact copies: distance ties that only the id can order */
	for (size_t i = 0; i + 1 < n && i < 40; i += 2)
		memcpy(base + (i + 1) * d, base + i * d, d * sizeof(float));
	int32_t *want = malloc(nq * k * sizeof(int32_t)), *got = malloc(nq * k * sizeof(int32_t));
	double *wantd = malloc(nq * k * sizeof(double));
	float *gotd = malloc(nq * k * sizeof(float));
	ASSERT_TRUE(want && got && wantd && gotd);
	naive(base, n, q, nq, d, k, m, want, wantd);
	char what[96];
	ann_gt_opts o;
	ann_gt_opts_init(&o);
	o.k = (uint32_t)k;
	o.metric = m;
	for (int t = 1; t <= 2; t++) {
		o.threads = t;
		ASSERT_OK(ann_gt_compute_mem(base, n, q, nq, d, &o, got, gotd, NULL));
		snprintf(what, sizeof what, "mem n %zu d %zu k %zu metric %d threads %d", n, d, k, (int)m, t);
		check(what, base, q, d, nq, k, m, integers && m == ANN_METRIC_L2, want, wantd, got, gotd);
	}
	/* Files, streamed: the budget holds a few hundred base vectors at a time. */
	char *bp = t_path(dir, integers ? "base.u8bin" : "base.fbin");
	char *qp = t_path(dir, integers ? "q.u8bin" : "q.fbin");
	write_set(bp, base, n, d);
	write_set(qp, q, nq, d);
	o.threads = 2;
	o.mem_bytes = 256 * 1024;
	uint32_t fnq;
	int32_t *fids;
	float *fd;
	ASSERT_OK(ann_gt_compute(bp, qp, &o, &fnq, &fids, &fd, NULL));
	ASSERT_EQ(fnq, nq);
	snprintf(what, sizeof what, "file n %zu d %zu k %zu metric %d", n, d, k, (int)m);
	check(what, base, q, d, nq, k, m, integers && m == ANN_METRIC_L2, want, wantd, fids, fd);
	ann_free(fids);
	ann_free(fd);
	free(bp);
	free(qp);
	free(base);
	free(q);
	free(want);
	free(got);
	free(wantd);
	free(gotd);
}

int main(void)
{
	ann_rng rng;
	t_init("test_gt", &rng);
	char *dir = t_tmpdir();
	run_case(dir, &rng, 3000, 37, 128, 100, true, ANN_METRIC_L2);
	run_case(dir, &rng, 2500, 29, 17, 10, false, ANN_METRIC_L2);
	run_case(dir, &rng, 2000, 23, 3, 10, true, ANN_METRIC_L2);
	run_case(dir, &rng, 2000, 23, 33, 10, false, ANN_METRIC_IP);
	run_case(dir, &rng, 2000, 23, 33, 10, false, ANN_METRIC_COSINE);
	run_case(dir, &rng, 7, 5, 16, 10, false, ANN_METRIC_L2); /* k > n: padded */
	t_rmtree(dir);
	free(dir);
	printf("test_gt: ok\n");
	return 0;
}
