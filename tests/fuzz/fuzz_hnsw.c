/* SPDX-License-Identifier: MIT */
/*
 * fuzz_hnsw: the HNSW blob loader ann_hnsw_load (src/routing/hnsw.c), the k-means
 * router's whole blob. The target rewrites the XXH64 trailer (last 8 bytes)
 * so mutations reach the layout checks. A graph that loads must be
 * searchable: one search (k 10, ef 32) from a query built from the input must
 * return ids below the count, and the graph must save to the same bytes (but for the minor version;
 * a blob of a later minor, whose header may be longer, is only loaded and searched).
 */
#include <xxhash.h>

#include "fuzz.h"
#include "hnsw.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > ((size_t)1 << 20))
		return 0;
	uint8_t *b = malloc(size ? size : 1);
	FZ_ASSERT(b != NULL);
	memcpy(b, data, size);
	if (size >= 8)
		ann_st64(b + size - 8, XXH64(b, size - 8, 0));
	ann_error e = {0};
	ann_hnsw *h = NULL;
	int rc = ann_hnsw_load(b, size, &h, &e);
	FZ_CHECK(rc, e);
	if (rc == 0) {
		size_t n = ann_hnsw_count(h), d = ann_hnsw_dim(h);
		FZ_ASSERT(d >= 1 && d <= ANN_HNSW_MAX_DIM);
		float *q = calloc(d, sizeof *q);
		FZ_ASSERT(q != NULL);
		for (size_t j = 0; j < d; j++)
			q[j] = (float)data[j % size] - 128.0f;
		int32_t ids[10];
		float dists[10];
		int found = ann_hnsw_search(h, NULL, q, 10, 32, ids, dists, &e);
		FZ_CHECK(found, e);
		FZ_ASSERT(found >= 0 && (size_t)found <= (n < 10 ? n : 10));
		for (int i = 0; i < found; i++)
			FZ_ASSERT(ids[i] >= 0 && (size_t)ids[i] < n);
		size_t blen = ann_hnsw_blob_bytes(h);
		uint8_t *out = malloc(blen ? blen : 1);
		FZ_ASSERT(out != NULL);
		FZ_ASSERT(ann_hnsw_save(h, out, blen, &e) == 0);
		/* Same bytes, but for the minor version: a reader takes any minor of its
		 * major and writes its own. */
		if (ann_ld16(b + 10) <= ANN_HNSW_VERSION_MINOR) { /* a later minor may have a longer header */
			FZ_ASSERT(blen == size);
			memcpy(b + 10, out + 10, 2);
			ann_st64(b + size - 8, XXH64(b, size - 8, 0));
			FZ_ASSERT(memcmp(out, b, size) == 0);
		}
		free(out);
		free(q);
		ann_hnsw_free(h);
	} else {
		FZ_ASSERT(h == NULL);
	}
	free(b);
	return 0;
}
