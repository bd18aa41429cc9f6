/* SPDX-License-Identifier: MIT */
/*
 * index.h: the open index shared by index.c (open, info, verify) and
 * search.c (searchers). Only the router, the partition directory and the
 * dictionary live in RAM.
 */
#ifndef ANN_INDEX_H
#define ANN_INDEX_H

#include "block.h"
#include "index_meta.h"
#include "router.h"
#include "store.h"

struct ann_index {
	char *path;
	ann_store *store;
	ann_index_meta meta;
	ann_dir dir;          /* RAM copy of the partition directory */
	ann_router *router;
	ann_block_dict *dict; /* NULL unless meta.dict_id */
};

#endif
