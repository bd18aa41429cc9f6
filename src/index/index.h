/* SPDX-License-Identifier: MIT */
/*
 * index.h: the open index shared by index.c (open, info, verify) and
 * search.c (searchers). Only the router, the partition directory and the
 * dictionary live in RAM.
 */
#ifndef ANN_INDEX_H
#define ANN_INDEX_H

#include "block.h"
#include "cblock.h"
#include "index_meta.h"
#include "dirs.h"
#include "probe.h"
#include "router.h"
#include "store.h"

struct ann_index {
	char *path;
	ann_store *store;
	ann_index_meta meta;
	ann_dir dir;          /* RAM copy of the partition directory */
	ann_router *router;
	ann_block_dict *dict; /* NULL unless meta.dict_id */
	ann_rbq *rbq;         /* NULL unless meta.code_bits: the codes' parameters (O(dim) or O(dim^2) floats) */
	ann_probe_model probe; /* learned adaptive probing (meta probe.model); probe.p1 0 = none */
	ann_dirs dirs;         /* the directional probe order (meta route.dirs); dirs.m 0 = none */
	float rerank_eps;      /* the calibrated eps0 of the re-rank bound (meta search.rerank_eps); 0 = none */
	uint32_t dist_rank, dist_ranks; /* a part of a distributed index (meta dist.*, dist.h); 0, 0 otherwise */
};

/* Opens an index; writable takes the writer lock. */
int ann_index_load(const char *dir, bool writable, ann_index **out, ann_error *err);
/* Reloads the router and the directory after commits (writer side). */
int ann_index_reload(ann_index *x, ann_error *err);

/* Element type and bytes of one stored vector of a delta (the encoding's
 * source type: u8, i8, or f32 for f32/f16/sq8). */
ann_dtype ann_index_delta_type(const ann_index *x);
size_t ann_index_delta_bytes(const ann_index *x);
/* DELTA keys: partition (be32) then id (be64). */
#define ANN_DELTA_KEY 12u

#endif
