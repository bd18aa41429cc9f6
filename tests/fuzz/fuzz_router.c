/* SPDX-License-Identifier: MIT */
/*
 * fuzz_router: the router blob loaders behind ann_router_load: k-means (an
 * HNSW blob, src/routing/router_kmeans.c), annann (src/routing/router_annann.c) and
 * nlsh/joint/soft (src/routing/router_nlsh.c), with the MLP and HNSW blobs they nest.
 * Input: byte 0 the router kind (mod 5), byte 1 the metric (mod 3), then the
 * blob. The index dimension given to the loader is the blob's own (so the
 * fuzzer need not guess it) unless bit 7 of byte 1 is set (then 1 + byte 0,
 * to cover the mismatch checks). The target rewrites every checksum it can
 * locate: nested MLP/HNSW trailers first, then the container's trailer.
 * A router that loads must route a query (nprobe 8) to partition ids below
 * its nparts, and assign a vector to one.
 */
#include <math.h>
#include <xxhash.h>

#include "fuzz.h"
#include "router.h"

static void fix_trailer(uint8_t *b, uint64_t len)
{
	if (len >= 8)
		ann_st64(b + len - 8, XXH64(b, (size_t)len - 8, 0));
}

/* Sub-blob [off, off + len) if it lies inside the blob's body. */
static bool inside(uint64_t off, uint64_t len, size_t size)
{
	return size >= 8 && off <= size - 8 && len <= size - 8 - off;
}

static void fix_sums(ann_router_kind kind, uint8_t *b, size_t size)
{
	if (kind == ANN_ROUTER_ANNANN && size >= 64 + 8) {
		uint64_t d = ann_ld32(b + 16), enc = ann_ld64(b + 40), g = ann_ld64(b + 48);
		uint64_t off = 64 + 4 * d + 4;
		if (inside(off, enc, size)) {
			fix_trailer(b + off, enc);
			if (inside(off + enc, g, size))
				fix_trailer(b + off + enc, g);
		}
	} else if (kind >= ANN_ROUTER_NLSH && size >= 64 + 8) {
		uint64_t d = ann_ld32(b + 20), C = ann_ld32(b + 44);
		uint64_t off = 64 + 4 * d;
		for (uint64_t i = 0; i < C && inside(off, 8, size); i++) {
			uint64_t ml = ann_ld64(b + off);
			if (!inside(off + 8, ml, size))
				break;
			fix_trailer(b + off + 8, ml);
			off += 8 + ml;
		}
	}
	fix_trailer(b, size);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2 || size > ((size_t)1 << 20))
		return 0;
	ann_router_kind kind = (ann_router_kind)(data[0] % 5);
	ann_metric metric = (ann_metric)((data[1] & 0x7f) % 3);
	size_t len = size - 2;
	uint8_t *b = malloc(len ? len : 1);
	FZ_ASSERT(b != NULL);
	memcpy(b, data + 2, len);
	fix_sums(kind, b, len);
	uint32_t dim = 1 + data[0];
	size_t doff = kind >= ANN_ROUTER_NLSH ? 20 : 16;
	if (!(data[1] & 0x80) && len >= doff + 4)
		dim = ann_ld32(b + doff);

	ann_error e = {0};
	ann_router *r = NULL;
	int rc = ann_router_load(kind, b, len, dim, metric, &r, &e);
	FZ_CHECK(rc, e);
	if (rc == 0) {
		FZ_ASSERT(r->dim == dim && r->nparts >= 1);
		float *q = calloc(dim, sizeof *q);
		FZ_ASSERT(q != NULL);
		for (uint32_t j = 0; j < dim; j++)
			q[j] = ((float)data[j % size] - 128.0f) / 16.0f;
		ann_search_opts so;
		ann_search_opts_init(&so);
		so.nprobe = 8;
		ann_router_ctx *ctx = NULL;
		rc = r->ops->ctx_new(r, &ctx, &e);
		FZ_CHECK(rc, e);
		if (rc == 0) {
			uint32_t parts[8];
			int got = r->ops->route(r, ctx, q, &so, parts, &e);
			FZ_CHECK(got, e);
			FZ_ASSERT(got <= 8);
			for (int i = 0; i < got; i++)
				FZ_ASSERT(parts[i] < r->nparts);
			r->ops->ctx_free(ctx);
		}
		uint32_t part = UINT32_MAX;
		rc = r->ops->assign(r, q, 1, &(ann_assign_rule){.copies = 1, .eps = 0.1}, 1, &part, &e);
		FZ_CHECK(rc, e);
		if (rc == 0)
			FZ_ASSERT(part < r->nparts);
		free(q);
		ann_router_free(r);
	} else {
		FZ_ASSERT(r == NULL);
	}
	free(b);
	return 0;
}
