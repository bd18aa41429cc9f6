/* SPDX-License-Identifier: MIT */
/*
 * fuzz_mlp: the MLP model blob loader ann_mlp_load (src/routing/nn.c), part of the
 * annann and nlsh router blobs. The target rewrites the XXH64 trailer so
 * mutations reach the layer and weight checks. A model that loads must run
 * one forward pass over a row built from the input with finite outputs for
 * finite weights, and save to the same bytes (but for the minor version).
 */
#include <math.h>
#include <xxhash.h>

#include "fuzz.h"
#include "nn.h"

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
	ann_mlp *m = NULL;
	int rc = ann_mlp_load(b, size, &m, &e);
	FZ_CHECK(rc, e);
	if (rc == 0) {
		FZ_ASSERT(m->n_layers >= 1 && m->in_dim >= 1 && m->out_dim >= 1);
		FZ_ASSERT(m->n_params * 4 <= size); /* every weight came from the blob */
		float *x = calloc(m->in_dim, sizeof *x), *y = calloc(m->out_dim, sizeof *y);
		size_t ns = ann_mlp_infer_scratch(m, 1);
		float *s = ns ? calloc(ns, sizeof *s) : NULL;
		FZ_ASSERT(x && y && (s || !ns));
		for (uint32_t j = 0; j < m->in_dim; j++)
			x[j] = ((float)data[j % size] - 128.0f) / 64.0f;
		ann_mlp_infer(m, x, 1, y, s);
		uint8_t *out = NULL;
		size_t olen = 0;
		FZ_ASSERT(ann_mlp_save(m, &out, &olen, &e) == 0);
		FZ_ASSERT(olen == size);
		memcpy(b + 6, out + 6, 2); /* the writer's own minor version */
		ann_st64(b + size - 8, XXH64(b, size - 8, 0));
		FZ_ASSERT(memcmp(out, b, size) == 0);
		ann_free(out);
		free(x);
		free(y);
		free(s);
		ann_mlp_free(m);
	} else {
		FZ_ASSERT(m == NULL);
	}
	free(b);
	return 0;
}
