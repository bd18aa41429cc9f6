/* SPDX-License-Identifier: MIT */
/*
 * bench_cblock_order.c: what page-local row order (codes block 2.2) costs a
 * build (issue 12; docs/BENCHMARKS.md "Page-local row order").
 *
 * Cuts the first --blocks x --rows vectors of --base (u8, i8 or f32) into
 * blocks of --rows consecutive vectors and encodes each as a codes block
 * with --bits bit codes and slim records, in id order and in page order,
 * twice each (the first pass warms caches), one thread. Prints the CPU time
 * per block of each (clock(), so other processes on a loaded machine do not
 * count) and the blocks' bytes (equal: the order moves rows, not sizes).
 *
 *   bench_cblock_order --base F [--rows 257] [--blocks 400] [--bits 2]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cblock.h"
#include "vecio.h"

static void die(const char *what, const ann_error *e)
{
	fprintf(stderr, "bench_cblock_order: %s: %s\n", what, e ? e->msg : "failed");
	exit(1);
}

int main(int argc, char **argv)
{
	const char *base = NULL;
	unsigned long rows = 257, blocks = 400, bits = 2;
	for (int i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--base"))
			base = argv[i + 1];
		else if (!strcmp(argv[i], "--rows"))
			rows = strtoul(argv[i + 1], NULL, 10);
		else if (!strcmp(argv[i], "--blocks"))
			blocks = strtoul(argv[i + 1], NULL, 10);
		else if (!strcmp(argv[i], "--bits"))
			bits = strtoul(argv[i + 1], NULL, 10);
		else
			die(argv[i], NULL);
	}
	if (!base || rows == 0 || blocks == 0 || bits < 1 || bits > 8) {
		fprintf(stderr, "usage: bench_cblock_order --base F [--rows 257] [--blocks 400] [--bits 2]\n");
		return 2;
	}
	ann_error e = {0};
	ann_vreader *r;
	if (ann_vreader_open(base, &r, &e) < 0)
		die(base, &e);
	uint32_t d = ann_vreader_dim(r);
	ann_dtype vt = ann_vreader_dtype(r);
	ann_block_encoding enc = vt == ANN_DTYPE_U8 ? ANN_BLOCK_U8 : vt == ANN_DTYPE_I8 ? ANN_BLOCK_I8 : ANN_BLOCK_F32;
	size_t es = vt == ANN_DTYPE_F32 ? 4 : 1;
	if (vt != ANN_DTYPE_U8 && vt != ANN_DTYPE_I8 && vt != ANN_DTYPE_F32)
		die("codes take u8, i8 or f32 files", NULL);
	if ((uint64_t)rows * blocks > ann_vreader_count(r))
		blocks = (unsigned long)(ann_vreader_count(r) / rows);
	size_t n = rows * blocks;
	uint8_t *v = malloc(n * d * es);
	int64_t *ids = malloc(rows * sizeof(int64_t));
	if (!v || !ids)
		die("out of memory", NULL);
	if (ann_vreader_read_raw(r, v, n, &e) != (int64_t)n)
		die("read", &e);
	ann_vreader_close(r);
	ann_rbq *q;
	if (ann_rbq_new(d, (unsigned)bits, 1, &q, &e) < 0)
		die("codes", &e);
	printf("%lu blocks of %lu rows, dim %u, %lu-bit codes\n", blocks, rows, d, bits);
	for (int pass = 0; pass < 2; pass++)
		for (int order = 0; order < 2; order++) {
			double cpu = 0;
			uint64_t bytes = 0;
			for (unsigned long b = 0; b < blocks; b++) {
				for (unsigned long i = 0; i < rows; i++)
					ids[i] = (int64_t)(b * rows + i);
				uint8_t *out;
				size_t len;
				uint32_t head;
				clock_t c0 = clock();
				if (cblock_encode(q, enc, ANN_BLOCK_PAD_FILE, cblock_opts(true, order, cblock_head_page_default(), false), d, rows, ids,
						  v + b * rows * d * es, vt, b, 1, &out, &len, &head, &e) < 0)
					die("encode", &e);
				cpu += (double)(clock() - c0) / CLOCKS_PER_SEC;
				bytes += len;
				ann_aligned_free(out);
			}
			if (pass)
				printf("%-5s order: %.3f s CPU, %.1f us per block, %.1f MiB of blocks\n", order ? "page" : "id",
				       cpu, cpu / (double)blocks * 1e6, (double)bytes / 1048576.0);
		}
	ann_rbq_free(q);
	free(v);
	free(ids);
	return 0;
}
