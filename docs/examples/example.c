/* SPDX-License-Identifier: MIT */
/*
 * example.c: the program of docs/API.md. Builds an index from a vector file,
 * opens it, searches a few vectors of the file itself and prints what it
 * found, then inserts one vector. Usage: example DATA_FILE INDEX_DIR
 * The tests compile and run it (tests/meson.build), so it stays true.
 */
#include <stdio.h>
#include <stdlib.h>

#include <annann.h>

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: example DATA_FILE INDEX_DIR\n");
		return 2;
	}
	ann_error err = {0};

	/* 1. Build: 16 partitions, k-means router, 64 MiB budget. */
	ann_build_opts bo;
	ann_build_opts_init(&bo);
	bo.partitions = 16;
	bo.mem_bytes = (size_t)64 << 20;
	if (ann_build(argv[1], argv[2], &bo, &err) < 0) {
		fprintf(stderr, "build: %s\n", err.msg);
		return 1;
	}

	/* 2. Open it: loads the router and the partition directory. */
	ann_index *idx;
	if (ann_index_open(argv[2], &idx, &err) < 0) {
		fprintf(stderr, "open: %s\n", err.msg);
		return 1;
	}
	ann_index_info info;
	ann_index_get_info(idx, &info, NULL);
	printf("%llu vectors of dimension %u in %u partitions, router %s\n", (unsigned long long)info.vectors,
	       info.dim, info.partitions, ann_router_name(info.router));

	/* 3. One searcher per thread; queries here are vectors made up on the spot. */
	ann_search_opts so;
	ann_search_opts_init(&so);
	so.k = 5;
	so.nprobe = 4;
	ann_searcher *s;
	if (ann_searcher_new(idx, &so, &s, &err) < 0) {
		fprintf(stderr, "searcher: %s\n", err.msg);
		ann_index_close(idx);
		return 1;
	}
	size_t nq = 2, d = info.dim;
	float *q = calloc(nq * d, sizeof(float));
	int64_t ids[2 * 5];
	float dists[2 * 5];
	ann_query_stats st[2];
	for (size_t j = 0; j < d; j++)
		q[d + j] = 100.0f;
	int rc = ann_search(s, q, nq, ids, dists, st, &err);
	if (rc < 0)
		fprintf(stderr, "search: %s\n", err.msg);
	for (size_t i = 0; rc == 0 && i < nq; i++) {
		printf("query %zu (%u partitions, %.0f bytes read):", i, st[i].partitions, st[i].bytes_read);
		for (size_t j = 0; j < so.k; j++)
			printf(" %lld", (long long)ids[i * so.k + j]);
		printf("\n");
	}
	ann_searcher_free(s);
	ann_index_close(idx);

	/* 4. Insert the second query as a new vector: the writer checks that the
	 * vectors have the index's dimension and assigns the next free id. */
	ann_writer *w;
	int64_t id = -1;
	if (rc == 0 && ann_writer_open(argv[2], &w, &err) == 0) {
		rc = ann_insert(w, q + d, 1, (uint32_t)d, NULL, 0, &id, &err);
		ann_writer_close(w);
	} else if (rc == 0) {
		rc = -1;
	}
	if (rc < 0)
		fprintf(stderr, "insert: %s\n", err.msg);
	else
		printf("inserted 1 vector as id %lld\n", (long long)id);
	free(q);
	return rc < 0 ? 1 : 0;
}
