/* SPDX-License-Identifier: MIT */
/*
 * build_defaults.c: the configuration `annann build --data F --index DIR`
 * gets with no other option (docs/DESIGN.md "Defaults", measurements in
 * docs/BENCHMARKS.md "Defaults"). The targets it serves (issue 12): recall@10
 * 0.9 from cold storage with the fewest bytes per query, index RAM at most 4
 * bytes per vector, disk at most 1.5x the raw vectors. The measured facts
 * behind it:
 *  - codes blocks with exact re-ranking read 0.4-0.6x the bytes of format 1
 *    blocks at the same partitions; 1-bit codes beat 2 bits at 784
 *    dimensions, 2 bits are needed at 128 (1 bit levels off at recall 0.82);
 *  - codes need rows well over their records: at 64 dimensions u8 the disk
 *    budget leaves codes 70 partitions (100k rows) and they read 1.8x what
 *    format 1 reads at 1000; below 64 dimensions their bound misses exact
 *    neighbours even when every partition is probed;
 *  - bytes per query fall as partitions get finer (Fashion-MNIST 256 -> 1400
 *    partitions: 213 -> 139 KiB at 0.9), so the count is the largest the two
 *    budgets allow: router RAM (graph router: centroid + ~315 B of links and
 *    directory per partition; compact router: its code + ~52 B) and disk (every
 *    codes partition costs about half a page of padding after its exact pages,
 *    a format 1 block half a page);
 *  - the compact router costs ~5% bytes at equal partitions, so it is chosen
 *    only when it allows at least twice the graph's partitions;
 *  - spilling (--replicas, --soar) stores each extra copy's exact row again:
 *    it cannot fit 1.5x raw beside the codes, so it stays off.
 * Invariants: the function only fills fields left to it (partitions 0,
 * code_bits ANN_AUTO / ANN_AUTO_BITS, router_bits ANN_AUTO, balance < 0);
 * what it returns passes build.c's option checks whenever the caller's own
 * fields do.
 */
#include <math.h>

#include "build_defaults.h"
#include "cblock.h"
#include "router.h"

/* Budgets: a little under the targets, for the estimates' error (the
 * directory and catalog sizes vary with the partition sizes). */
#define RAM_PER_VECTOR 3.5   /* router bytes per vector (target 4) */
#define DISK_RATIO 1.48      /* on-disk bytes / raw vector bytes (target 1.5; page fitting can add ~1% on small sets) */
/* Router RAM per partition besides its centroid (measured with annann info:
 * Fashion-MNIST 256 parts 4.69 B/vector, real1m 4096 parts 1.81). */
/* The partition count is still chosen with M 32's links: up to 8192
 * centroids the graph now keeps M 4 (single queries scan the centroids), and
 * the RAM that frees goes to the directional probe order, which the build
 * fits within the 4 B/vector target (dirs.h ann_dirs_auto_m; docs/DESIGN.md
 * "Directional probe order"), a byte lever that, unlike finer partitions,
 * keeps the disk within 1.5x raw. */
#define GRAPH_LINK_BYTES 315.0 /* HNSW links (M 32, 2x at level 0) + directory entry */
#define CODE_ROUTER_BYTES 52.0 /* compact router: code factors + directory entry */
/* Disk per partition besides its rows: on average half a page after the
 * exact section (codes block 2.3 starts the exact rows in the head's last
 * page, so nothing is left after the head; half a page more per partition
 * where it cannot: ANNANN_HEAD_PAGE=0), the 128-byte block header and the
 * catalog's directory record and LMDB overhead (~410 B, real1m). */
#define PART_DISK_BYTES (2048.0 + 128.0 + 410.0)
#define HEAD_PAD_BYTES 2048.0  /* the half page after a head without 2.3 */
#define CATALOG_BYTES 98304.0  /* the catalog's fixed part (LMDB pages, meta; ~100 KiB at 78 partitions) */
#define ID_BYTES 2.0           /* varint id and page-map entry per row in the head (measured
				* 2.05 together: real1m, 3884 partitions, 1.451x raw) */
#define COMPACT_MIN_GAIN 2.0   /* compact router only for at least 2x the partitions */
#define MIN_ROWS 32u           /* partitions hold at least this many rows on average (codes: a head page's worth) */
#define BALANCE 1.3            /* k-means partition cap, x n / partitions */
#define SAMPLE_PER_PART 64u    /* auto partitions, one-level k-means: sample per centroid (the measured real1m builds' 262144 / 4096) */
#define KMEANS_WORK 1.5e11     /* auto partitions, one-level k-means: the sample may grow until sample x partitions x dim
                                * reaches this (multiply-adds an iteration; SIFT photos' whole 372,542 rows at 2,943
                                * partitions are 1.4e11: -10.6% bytes at 0.9 for a 77 -> 113 s build) */
#define WIDE_DIM 512u          /* from here on 1 bit per dimension is enough */
#define MIN_CODE_DIM 64u       /* codes from this dimension on (16 dims: recall 0.967 probing all) */
#define MIN_ROW_OVER_CODE 2.5  /* codes when a row is at least this many times its record + id */
#define NPROBE_MIN 16u         /* ann_default_nprobe */
#define NPROBE_SHARE 40u       /* ann_default_nprobe: 1 partition in NPROBE_SHARE */

static double pad16(uint32_t d)
{
	return d < 16 ? 16.0 : (double)((d + 15u) / 16u * 16u);
}

/* Bytes of one RaBitQ record (ann_rbq_code_bytes): padded dim x bits / 8 + 10. */
static double code_record(uint32_t d, uint32_t bits)
{
	return pad16(d) * bits / 8.0 + 10.0;
}

/* The largest partition count whose blocks fit DISK_RATIO x raw (0: not
 * even one). bits 0: format 1 blocks, counted uncompressed (real
 * descriptors compress to 0.9-0.94), each padded to a page: half a page,
 * the 80-byte header and the catalog's share per partition. Integer rows
 * (u8, i8) are counted with slim records (CBLOCK_F16_SAVES less): their
 * residuals are integer vectors, whose norms and factors binary16 holds;
 * f32 rows may be refused slimming (tiny or huge values), so they are
 * counted full. */
/* Disk bytes of one exact row of a codes block (rows never straddle a page). */
static double row_disk_bytes(uint32_t d, size_t esz)
{
	double row = (double)d * (double)esz, per_page = floor(4096.0 / row);
	return per_page >= 1 ? 4096.0 / per_page : row;
}

/* Head bytes per row of a codes block: its record, id and share of the page
 * sums, and for inner product its centre product (codes block 2.4). */
static double head_row_bytes(uint32_t d, size_t esz, uint32_t bits, ann_metric m)
{
	double slim = esz == 1 ? CBLOCK_F16_SAVES : 0.0;
	return code_record(d, bits) - slim + ID_BYTES + 4.0 * row_disk_bytes(d, esz) / 4096.0 +
	       (cblock_cr_default(m) ? 4.0 : 0.0);
}

static double disk_parts(uint64_t n, uint32_t d, size_t esz, uint32_t bits, ann_metric m, double catalog)
{
	double row = (double)d * (double)esz;
	double row_disk, head_row, part;
	if (bits == 0) {
		row_disk = row;
		head_row = ID_BYTES;
		part = 2048.0 + 80.0 + 410.0;
	} else {
		row_disk = row_disk_bytes(d, esz);
		head_row = head_row_bytes(d, esz, bits, m);
		part = PART_DISK_BYTES + ceil(row / 8.0) * 8.0 +              /* + the centre */
		       (cblock_head_page_default() ? 0.0 : HEAD_PAD_BYTES);
	}
	double spare = (double)n * (DISK_RATIO * row - row_disk - head_row) - catalog;
	return spare > 0 ? floor(spare / part) : 0;
}

void ann_build_resolve_defaults(ann_build_opts *o, uint64_t n, uint32_t d, ann_encoding enc)
{
	size_t esz = enc == ANN_ENC_U8 || enc == ANN_ENC_I8 ? 1 : 4;
	bool codes_ok = enc == ANN_ENC_F32 || enc == ANN_ENC_U8 || enc == ANN_ENC_I8;
	if (o->code_bits == ANN_AUTO || o->code_bits == ANN_AUTO_BITS) {
		uint32_t bits = d >= WIDE_DIM ? 1 : 2;
		/* Codes pay when a row is well over its code record: else the disk
		 * budget leaves too few partitions (64 dims u8: 70 partitions, 1.8x
		 * format 1's bytes at 1000), and below MIN_CODE_DIM dimensions the
		 * codes' bound is too loose to find the exact top 10. */
		bool pays = codes_ok && d >= MIN_CODE_DIM &&
			    (double)d * (double)esz >= MIN_ROW_OVER_CODE * (code_record(d, bits) + ID_BYTES);
		o->code_bits = pays || o->code_bits == ANN_AUTO_BITS ? bits : 0;
	}
	uint32_t cbits = o->code_bits <= 8 ? o->code_bits : 0;
	double disk = disk_parts(n, d, esz, cbits, o->metric, CATALOG_BYTES);
	if (disk < 1) /* small sets: the catalog's fixed part alone passes the target; bound the rest */
		disk = disk_parts(n, d, esz, cbits, o->metric, 0);
	if (disk < 1) /* codes asked for where no count fits: the old default */
		disk = fmax(1.0, (double)(n / 1000));
	bool kmeans_l2 = o->router == ANN_ROUTER_KMEANS && o->metric == ANN_METRIC_L2;
	double budget = RAM_PER_VECTOR * (double)n;
	double centroid = (double)d * (enc == ANN_ENC_U8 && o->metric == ANN_METRIC_L2 ? 1.0 : 4.0);
	double graph = floor(budget / (centroid + GRAPH_LINK_BYTES));
	uint32_t rbits = d >= WIDE_DIM ? 1 : 4; /* top-16 overlap 0.90 at 784 dims, 0.93 at 128 */
	/* A codes partition's head should fill a page: round 1 reads whole pages,
	 * so a head of a third of a page costs as much as a full one (f32 at 96
	 * dimensions, 300k rows: 9375 partitions of 32 rows read ~900 KiB at
	 * recall 0.9, 1200-2400 partitions ~650-720; docs/BENCHMARKS.md "Defaults
	 * on f32 at 96 dimensions"). It binds only where records are small
	 * against the rows: real1m's and Fashion-MNIST's shapes are bound by RAM
	 * or disk long before. */
	double min_rows = MIN_ROWS;
	if (cbits)
		min_rows = fmax(min_rows, ceil(4096.0 / head_row_bytes(d, esz, cbits, o->metric)));
	double cap = fmin(disk, floor((double)n / min_rows)); /* what bounds either router */
	if (o->kmeans.router_bits == ANN_AUTO) {
		o->kmeans.router_bits = 0;
		if (kmeans_l2 && o->partitions == 0) {
			double compact = floor(budget / (code_record(d, rbits) + CODE_ROUTER_BYTES));
			if (fmin(compact, cap) >= COMPACT_MIN_GAIN * fmin(graph, cap))
				o->kmeans.router_bits = rbits;
		}
	}
	if (o->kmeans.balance < 0) /* the annann router's own balance has no auto (default 0) */
		o->kmeans.balance = o->router == ANN_ROUTER_KMEANS ? BALANCE : 0;
	if (o->partitions == 0) {
		double p;
		if (o->router != ANN_ROUTER_KMEANS)
			p = (double)n / 1000.0; /* learned routers: their RAM is not per partition; as measured */
		else if (o->kmeans.router_bits)
			p = floor(budget / (code_record(d, o->kmeans.router_bits) + CODE_ROUTER_BYTES));
		else
			p = graph;
		p = fmin(p, cap);
		o->partitions = (uint32_t)fmax(1.0, fmin(p, (double)(1u << 30)));
		/* One-level k-means (up to ANN_KMEANS_TWO_LEVEL_MIN partitions)
		 * costs sample x partitions per iteration: 256 rows per centroid
		 * (the default for a given count) would make the sample the whole
		 * input and the cost n x n / 256, so it gets SAMPLE_PER_PART, or
		 * more up to KMEANS_WORK multiply-adds an iteration (a mid-sized
		 * set such as SIFT photos trains on all its rows). Two
		 * levels cost about sample x 2 sqrt(partitions): they keep the
		 * 256 (build.c shrinks it to half the memory budget), which reads
		 * 3-4% fewer bytes at 0.9 (real1m). */
		bool two_level = o->router == ANN_ROUTER_KMEANS &&
				 ann_router_kmeans_coarse(o->kmeans.kmeans_coarse, o->partitions) >= 2;
		if (o->sample == 0 && !two_level) {
			double work = KMEANS_WORK / ((double)o->partitions * (double)d);
			o->sample = ANN_MIN(n, ANN_MAX((uint64_t)SAMPLE_PER_PART * o->partitions, (uint64_t)work));
		}
	}
}

uint32_t ann_default_nprobe(uint32_t partitions)
{
	uint32_t p = (partitions + NPROBE_SHARE - 1) / NPROBE_SHARE;
	return ANN_MIN(ANN_MAX(p, NPROBE_MIN), ANN_MAX_NPROBE);
}
