/* SPDX-License-Identifier: MIT */
/*
 * dirs.h: the directional probe order (issue 12; docs/DESIGN.md
 * "Directional probe order"). A partition stretched towards a query holds
 * rows nearer to it than a round one at the same centroid distance. Each
 * partition keeps its top m principal directions u_j (of its rows around
 * their mean mu), quantised to 2 bits a component as levels L_j in
 * {-3, -1, 1, 3} (two bit planes), with a gain g_j = sqrt(1 - r / l_j) / |L_j| (l_j the
 * direction's variance, r the mean variance of the other dimensions) and an
 * offset o_j = <mu, L_j>. The search subtracts
 *
 *   weight x sum_j (g_j (<q, L_j> - o_j))^2
 *
 * from the spread order's score |q - c|^2 + w_s spread: a Mahalanobis
 * discount of the distance along the stretched directions. `annann tune
 * --directions M` fits them (ann_dirs_fit, reading every block's exact rows)
 * and stores them in the catalog's meta (key route.dirs, docs/FORMAT.md);
 * the index holds them in RAM (counted in router_ram_bytes).
 */
#ifndef ANN_DIRS_H
#define ANN_DIRS_H

#include <string.h>

#include "annann.h"
#include "catalog.h"

#define ANN_DIRS_META "route.dirs"
/* Set (u64 1) by a compaction that rewrote partitions of an index with
 * directions, in its own transaction; cleared by the refit that follows it
 * (or any fit, or the removal). Still set: some partitions' directions are
 * of rows they no longer hold, and the next compaction refits them all. */
#define ANN_DIRS_STALE_META "route.dirs_stale"
#define ANN_DIRS_MAX 16u /* directions per partition */
#define ANN_DIRS_HEADER 16u

typedef struct ann_dirs {
	uint32_t m;      /* directions per partition; 0 = none */
	uint32_t dim;
	uint32_t nparts; /* partitions fitted (ids 0..nparts-1); later ones get no discount */
	uint32_t cbytes; /* bytes of one direction's level codes: two bit planes of ceil(dim / 8) */
	size_t stride;   /* bytes of a partition's record: m (gain, offset) f32 pairs, then m x cbytes codes */
	uint8_t *recs;   /* nparts records, one read of adjacent lines per partition */
	bool stale;      /* ANN_DIRS_STALE_META is set: a compaction's refit has not happened */
} ann_dirs;

/* Direction j of partition p: its gain (0 for a partition too small to fit,
 * or a direction without stretch), its offset <mu, L>, and its level codes
 * c = lo + 2 hi in 0..3 (level 2c - 3), plane lo then hi. */
static inline float ann_dirs_gain(const ann_dirs *d, uint32_t p, uint32_t j)
{
	float v;
	memcpy(&v, d->recs + (size_t)p * d->stride + 8 * (size_t)j, 4);
	return v;
}
static inline float ann_dirs_off(const ann_dirs *d, uint32_t p, uint32_t j)
{
	float v;
	memcpy(&v, d->recs + (size_t)p * d->stride + 8 * (size_t)j + 4, 4);
	return v;
}
static inline const uint8_t *ann_dirs_codes(const ann_dirs *d, uint32_t p, uint32_t j)
{
	return d->recs + (size_t)p * d->stride + 8 * (size_t)d->m + (size_t)j * d->cbytes;
}

/* The build's automatic choice (ann_build_opts.directions -1) for an index
 * without directions: as many a partition, up to ANN_DIRS_AUTO_MAX, as fit
 * the RAM the router leaves of ANN_RAM_PER_VECTOR bytes a vector, and the
 * disk left of 1.5 x the raw vectors (the record counted with a quarter more
 * and 64 KiB for the catalog's pages). */
uint32_t ann_dirs_auto_m(const ann_index_info *in);
/* Fits m >= 1 directions a partition on the open, writable index x (its
 * writer lock held), stores them and makes them x's. refit NULL fits every
 * partition; otherwise a partition p < nrefit with refit[p] 0 keeps its
 * record from x->dirs when that has one of the same m (a compaction refits
 * only the partitions it rewrote), and every other partition is fitted.
 * *fitted: the directions fitted or kept with a non-zero gain. */
int ann_dirs_fit(ann_index *x, uint32_t m, const uint8_t *refit, uint32_t nrefit, ann_progress_fn progress,
		 void *progress_ctx, uint32_t *fitted, ann_error *err);
/* Reads meta route.dirs for an index of dimension dim: d->m = 0 when
 * absent; ANN_E_CORRUPT when malformed. */
int ann_dirs_load(ann_cat_txn *t, uint32_t dim, ann_dirs *d, ann_error *err);
void ann_dirs_free(ann_dirs *d);
/* RAM the directions hold. */
size_t ann_dirs_bytes(const ann_dirs *d);
/* Floats of a query's table: 256 for each byte of a bit plane, then the
 * sum of the query's components. */
static inline size_t ann_dirs_table_floats(const ann_dirs *d)
{
	return 256 * (size_t)(d->cbytes / 2) + 1;
}
/* The query's table for ann_dirs_discount: entry (p, b) the sum of q over the
 * bits of byte b at byte p of a plane. */
void ann_dirs_query_table(const ann_dirs *d, const float *q, float *tab);
/* Starts loading partition pid's record into the cache. */
void ann_dirs_prefetch(const ann_dirs *d, uint32_t pid);
/* sum_j (g_j (<q, L_j> - o_j))^2 for partition pid (0 past nparts). */
float ann_dirs_discount(const ann_dirs *d, uint32_t pid, const float *tab);

#endif
