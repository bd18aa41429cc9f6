/* SPDX-License-Identifier: MIT */
/*
 * bench_route.c: the CPU of a single query's route stage, piece by piece
 * (docs/BENCHMARKS.md "Routing's selection"): selecting the nearest few of
 * a query's centroid keys (ann_kth_u32) at SIFT photos' and real1m's
 * sizes, sorting the scored partitions (ann_sort_u64 against qsort with a
 * comparator, as before), and the directional discount (ann_dirs_discount,
 * 7 directions at 128 dimensions, 480 random partitions of 7900). Mean us
 * per query over --reps queries.
 *
 *   bench_route [--reps R]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dirs.h"
#include "distance.h"

static double now_us(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
	int reps = 2000;
	if (argc == 3 && strcmp(argv[1], "--reps") == 0)
		reps = atoi(argv[2]);
	if (reps < 1) {
		fprintf(stderr, "usage: bench_route [--reps R]\n");
		return 2;
	}
	srand(1);
	static uint32_t key[7900], tmp[7900];
	static uint64_t s64[480], t64[480];
	static const size_t kn[2] = {2943, 7900}, kr[2] = {66, 480};
	for (int c = 0; c < 2; c++) {
		double t = 0;
		volatile uint32_t sink = 0;
		for (int r = 0; r < reps; r++) {
			for (size_t i = 0; i < kn[c]; i++)
				key[i] = ann_fkey(20000.0f + (float)(rand() % 100000));
			double t0 = now_us();
			memcpy(tmp, key, kn[c] * sizeof key[0]);
			sink += ann_kth_u32(tmp, kn[c], kr[c] - 1);
			t += now_us() - t0;
		}
		printf("kth of %zu keys, rank %zu: %.2f us\n", kn[c], kr[c], t / reps);
	}
	double ts = 0, tq = 0;
	for (int r = 0; r < reps; r++) {
		for (size_t i = 0; i < 480; i++)
			s64[i] = (uint64_t)ann_fkey(20000.0f + (float)(rand() % 100000)) << 32 | (uint64_t)(rand() % 7900);
		memcpy(t64, s64, sizeof s64);
		double t0 = now_us();
		ann_sort_u64(s64, 480);
		double t1 = now_us();
		qsort(t64, 480, sizeof t64[0], cmp_u64);
		ts += t1 - t0;
		tq += now_us() - t1;
		if (memcmp(s64, t64, sizeof s64) != 0) {
			fprintf(stderr, "bench_route: ann_sort_u64 and qsort disagree\n");
			return 1;
		}
	}
	printf("sort of 480 keys: %.2f us (qsort with a comparator %.2f us)\n", ts / reps, tq / reps);
	ann_dirs d = {.m = 7, .dim = 128, .nparts = 7900, .cbytes = 32};
	d.stride = (size_t)d.m * (8 + d.cbytes);
	d.recs = malloc(d.nparts * d.stride);
	float *tab = malloc(ann_dirs_table_floats(&d) * sizeof(float)), q[128];
	if (!d.recs || !tab)
		return 1;
	for (size_t i = 0; i < d.nparts * d.stride; i++)
		d.recs[i] = (uint8_t)rand();
	for (uint32_t p = 0; p < d.nparts; p++)
		for (uint32_t j = 0; j < d.m; j++) {
			float g = 0.01f, o = 1.0f;
			memcpy(d.recs + p * d.stride + 8 * j, &g, 4);
			memcpy(d.recs + p * d.stride + 8 * j + 4, &o, 4);
		}
	for (int i = 0; i < 128; i++)
		q[i] = (float)(rand() % 256);
	uint32_t pids[480];
	double tt = 0, td = 0;
	volatile float fs = 0;
	for (int r = 0; r < reps; r++) {
		for (int i = 0; i < 480; i++)
			pids[i] = (uint32_t)(rand() % (int)d.nparts);
		double t0 = now_us();
		ann_dirs_query_table(&d, q, tab);
		double t1 = now_us();
		for (int i = 0; i < 480; i++) {
			if (i + 8 < 480)
				ann_dirs_prefetch(&d, pids[i + 8]);
			fs += ann_dirs_discount(&d, pids[i], tab);
		}
		tt += t1 - t0;
		td += now_us() - t1;
	}
	printf("directional discount: table %.2f us, 480 partitions %.2f us (%.1f ns each)\n", tt / reps, td / reps,
	       1000.0 * td / reps / 480);
	free(d.recs);
	free(tab);
	return 0;
}
