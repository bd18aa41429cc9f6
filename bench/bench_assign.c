/* SPDX-License-Identifier: MIT */
/*
 * bench_assign.c: what training and routing cost as the partition count k
 * grows (issue 15; docs/BENCHMARKS.md "Scale").
 *
 * Takes --sample S vectors spread evenly over --base (every (n / S)-th),
 * trains k-means with k = --k centroids on them, one level (--flat: Lloyd
 * over all k, cost S k per iteration) and/or two levels (the default for
 * k > 4096: kmeans.h coarse = ceil(sqrt(k)), plus 3 refinement steps), and
 * times it. Then assigns --nq further vectors (the ones after each sampled
 * one) to their nearest centroid in three ways and reports microseconds per
 * vector and the share that gets the exact nearest centroid:
 *   exact   ann_nearest_centroids, blocked sgemm over all k (the build's rule
 *           up to 4096 centroids);
 *   tree    ann_kmeans_tree_nearest with --probes cells (the rule above 4096);
 *   graph   ann_hnsw_nearest_rows over a uint8 centroid graph (M 32, ef
 *           construction 200; the rule above 16384 before the tree: one
 *           graph search per vector, ef 64, one thread).
 *
 *   bench_assign --base F --k K [--sample S] [--nq N] [--iters I] [--threads T]
 *                [--flat] [--no-two] [--probes 4,8,16] [--no-graph]
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "distance.h"
#include "hnsw.h"
#include "kmeans.h"
#include "vecio.h"

static void die(const char *what, const ann_error *e)
{
	fprintf(stderr, "bench_assign: %s: %s\n", what, e ? e->msg : "failed");
	exit(1);
}

static void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (!p) {
		fprintf(stderr, "bench_assign: out of memory (%zu bytes)\n", n);
		exit(1);
	}
	return p;
}

static double now(void)
{
	return (double)ann_now_ns() / 1e9;
}

/* Rows i * stride + off for i < m, as floats. */
static float *read_spread(ann_vreader *r, uint64_t n, size_t d, size_t m, size_t off)
{
	uint64_t stride = n / m;
	float *out = xmalloc(m * d * sizeof(float));
	ann_error e = {0};
	for (size_t i = 0; i < m; i++) {
		if (ann_vreader_seek(r, (uint64_t)i * stride + off, &e) < 0 ||
		    ann_vreader_read_f32(r, out + i * d, 1, &e) != 1)
			die("read", &e);
	}
	return out;
}

static double share_same(const uint32_t *a, const uint32_t *b, size_t n)
{
	size_t s = 0;
	for (size_t i = 0; i < n; i++)
		s += a[i] == b[i];
	return (double)s / (double)n;
}

static void assign_all(const char *name, const float *c, size_t k, size_t d, const float *q, size_t nq, int threads,
		       const char *probes, bool graph)
{
	ann_error e = {0};
	uint32_t *ex = xmalloc(nq * sizeof(uint32_t)), *got = xmalloc(nq * sizeof(uint32_t));
	float *dist = xmalloc(nq * sizeof(float));
	double t0 = now();
	if (ann_nearest_centroids(q, nq, d, c, k, 1, ANN_METRIC_L2, threads, ex, dist, &e) < 0)
		die("exact", &e);
	double te = now() - t0;
	printf("  %-8s exact          %8.2f us/vector (%d threads)\n", name, 1e6 * te / (double)nq, threads);
	for (const char *p = probes; p && *p;) {
		size_t pr = strtoul(p, (char **)&p, 10);
		if (*p == ',')
			p++;
		ann_kmeans_tree *t;
		t0 = now();
		if (ann_kmeans_tree_new(c, k, d, ANN_METRIC_L2, 0, 1, threads, &t, &e) < 0)
			die("tree", &e);
		double tb = now() - t0;
		t0 = now();
		if (ann_kmeans_tree_nearest(t, q, nq, 1, pr, threads, got, NULL, &e) < 0)
			die("tree nearest", &e);
		double tt = now() - t0;
		printf("  %-8s tree probes %-3zu %8.2f us/vector, exact nearest for %.4f (tree: C %zu, built in %.1f s)\n",
		       name, pr, 1e6 * tt / (double)nq, share_same(ex, got, nq), ann_kmeans_tree_coarse(t), tb);
		ann_kmeans_tree_free(t);
	}
	if (graph) {
		ann_hnsw *h;
		float *cr = xmalloc(k * d * sizeof(float));
		for (size_t i = 0; i < k * d; i++)
			cr[i] = c[i] < 0 ? 0 : c[i] > 255 ? 255 : roundf(c[i]);
		t0 = now();
		if (ann_hnsw_create_u8(d, ANN_METRIC_L2, 32, 200, 1, &h, &e) < 0 ||
		    ann_hnsw_build(h, cr, k, threads, NULL, NULL, &e) < 0)
			die("graph", &e);
		double tb = now() - t0;
		/* against the rounded centroids' exact answer: the graph holds those */
		if (ann_nearest_centroids(q, nq, d, cr, k, 1, ANN_METRIC_L2, threads, ex, dist, &e) < 0)
			die("exact", &e);
		t0 = now();
		if (ann_hnsw_nearest_rows(h, q, nq, 1, got, dist, &e) < 0)
			die("graph nearest", &e);
		double tg = now() - t0;
		printf("  %-8s graph ef 64     %8.2f us/vector (1 thread), exact nearest for %.4f (graph built in %.1f s, "
		       "%d threads)\n", name, 1e6 * tg / (double)nq, share_same(ex, got, nq), tb, threads);
		ann_hnsw_free(h);
		free(cr);
	}
	free(ex);
	free(got);
	free(dist);
}

int main(int argc, char **argv)
{
	const char *base = NULL, *probes = "4,8,16";
	size_t k = 0, S = 0, nq = 20000;
	unsigned iters = 20;
	int threads = 2;
	bool flat = false, two = true, graph = true;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(a, "--base") == 0 && v)
			base = argv[++i];
		else if (strcmp(a, "--k") == 0 && v)
			k = strtoul(argv[++i], NULL, 10);
		else if (strcmp(a, "--sample") == 0 && v)
			S = strtoul(argv[++i], NULL, 10);
		else if (strcmp(a, "--nq") == 0 && v)
			nq = strtoul(argv[++i], NULL, 10);
		else if (strcmp(a, "--iters") == 0 && v)
			iters = (unsigned)strtoul(argv[++i], NULL, 10);
		else if (strcmp(a, "--threads") == 0 && v)
			threads = atoi(argv[++i]);
		else if (strcmp(a, "--probes") == 0 && v)
			probes = argv[++i];
		else if (strcmp(a, "--flat") == 0)
			flat = true;
		else if (strcmp(a, "--no-two") == 0)
			two = false;
		else if (strcmp(a, "--no-graph") == 0)
			graph = false;
		else {
			fprintf(stderr, "usage: bench_assign --base F --k K [--sample S] [--nq N] [--iters I] [--threads T] "
					"[--flat] [--no-two] [--probes 4,8,16] [--no-graph]\n");
			return 2;
		}
	}
	if (!base || k == 0 || threads < 1)
		return fprintf(stderr, "bench_assign: --base and --k are required\n"), 2;
	ann_blas_single();
	ann_error e = {0};
	ann_vreader *r;
	if (ann_vreader_open(base, &r, &e) < 0)
		die(base, &e);
	uint64_t n = ann_vreader_count(r);
	size_t d = ann_vreader_dim(r);
	if (!S)
		S = (size_t)(256 * k < n ? 256 * k : n);
	if (S > n / 2 || nq > n / 2 || k > S)
		return fprintf(stderr, "bench_assign: need k <= sample <= n / 2 and nq <= n / 2\n"), 2;
	double t0 = now();
	float *x = read_spread(r, n, d, S, 0), *q = read_spread(r, n, d, nq, 1);
	printf("%s: n %llu, d %zu; sample %zu, k %zu, %u iterations, %d threads; %zu vectors assigned (read in %.1f s)\n",
	       base, (unsigned long long)n, d, S, k, iters, threads, nq, now() - t0);
	float *c = xmalloc(k * d * sizeof(float));
	for (int level = 1; level <= 2; level++) {
		if ((level == 1 && !flat) || (level == 2 && !two))
			continue;
		ann_kmeans_opts o;
		ann_kmeans_opts_init(&o);
		o.k = k;
		o.max_iter = iters;
		o.threads = threads;
		o.coarse = level == 2 ? (size_t)ceil(sqrt((double)k)) : 0;
		ann_kmeans_stats st;
		t0 = now();
		if (ann_kmeans(x, S, d, &o, c, NULL, &st, &e) < 0)
			die("kmeans", &e);
		double tk = now() - t0;
		const char *name = level == 1 ? "1-level" : "2-level";
		printf("  %-8s k-means %.1f s (coarse %zu), inertia/point %.1f, largest %zu (S/k %zu), work %.1f MB\n", name,
		       tk, o.coarse, st.inertia / (double)S, st.largest, S / k, (double)st.work_bytes / 1e6);
		assign_all(name, c, k, d, q, nq, threads, probes, graph);
	}
	free(c);
	free(x);
	free(q);
	ann_vreader_close(r);
	return 0;
}
