/* SPDX-License-Identifier: MIT */
/*
 * index_meta.h: the index-level facts kept in the catalog's meta database
 * (docs/FORMAT.md, "meta keys"), read at open and written at the end of a
 * build, plus the mapping between public encodings and block encodings.
 */
#ifndef ANN_INDEX_META_H
#define ANN_INDEX_META_H

#include "block.h"
#include "catalog.h"

#define ANN_INDEX_FORMAT_MAJOR 1
#define ANN_INDEX_FORMAT_MINOR 0

typedef struct ann_index_meta {
	uint32_t dim;
	ann_metric metric;
	ann_encoding encoding;   /* resolved, never AUTO */
	ann_router_kind router;
	ann_store_kind store;
	uint64_t vectors;        /* input vectors */
	uint64_t stored_vectors; /* in blocks, replicas included */
	uint64_t live_vectors;   /* searchable: built + inserted - deleted (index.live_vectors, else vectors) */
	uint32_t partitions;
	uint32_t replicas;       /* max copies per vector */
	uint32_t dict_id;        /* zstd dictionary in models "zstd_dict.<id>", 0 = none */
	uint32_t code_bits;      /* codes blocks (meta codes.*): RaBitQ bits per dimension; 0 = no codes */
	uint64_t code_seed;      /* the codes' rotation seed */
	bool code_f16;           /* meta codes.factors = 16: blocks written get slim records (codes block 2.1) */
	bool code_order;         /* meta codes.order = 1: blocks written get page-local row order (codes block 2.2) */
} ann_index_meta;

int ann_index_meta_write(ann_cat_txn *t, const ann_index_meta *m, ann_error *err);
/* Reads and validates (ANN_E_FORMAT for an unknown major version or
 * unknown enum values, ANN_E_CORRUPT for impossible ones). */
int ann_index_meta_read(ann_cat_txn *t, ann_index_meta *m, ann_error *err);

ann_block_encoding ann_encoding_block(ann_encoding e);

/* The meta key build.shuffle stores the build option shuffle (-1 auto, 0 off,
 * 1 on) as 0 auto, 1 off, 2 on (docs/FORMAT.md); an index without the key is
 * auto. */
uint64_t ann_shuffle_to_meta(int shuffle);
int ann_shuffle_from_meta(uint64_t v);
/* The parameters of the blocks an index of encoding enc in store kind st
 * writes (build and compaction alike): zstd at level (0: no compression),
 * shuffle as the option above (auto: on for f32 and f16, whose bytes zstd
 * compresses better shuffled, off for 1-byte rows: measured, docs/FORMAT.md),
 * the store's padding, no dictionary. */
void ann_index_block_params(ann_encoding enc, ann_store_kind st, int level, int shuffle, ann_block_params *p);

/* L2, or cosine: unit rows and queries, where |q - x|^2 = 2 (1 - cos). The
 * spread and directional probe orders and learned adaptive probing work in
 * that Euclidean geometry (docs/DESIGN.md "Cosine: the L2 probe orders"). */
static inline bool ann_metric_euclid(ann_metric m)
{
	return m == ANN_METRIC_L2 || m == ANN_METRIC_COSINE;
}
/* What turns the router's centroid distance into |q - c|^2: 1 for L2, 2 for
 * cosine (1 - <q, c> of unit vectors). */
static inline float ann_route_l2_scale(ann_metric m)
{
	return m == ANN_METRIC_COSINE ? 2.0f : 1.0f;
}

#endif
