/* SPDX-License-Identifier: MIT */
/*
 * catalog_pages.h: LMDB's pages checked before LMDB trusts them
 * (catalog_pages.c): the meta pages before the environment opens, the page
 * structure and page accounting of a snapshot before it is walked or
 * written. Internal to the catalog (catalog.c).
 */
#ifndef ANN_CATALOG_PAGES_H
#define ANN_CATALOG_PAGES_H

#include <lmdb.h>

#include "common.h"

/* Reads both meta pages of PATH/data.mdb with pread and checks magic,
 * version, page size and last page against the file's size, before
 * mdb_env_open maps it. ANN_E_CORRUPT naming the file. */
int ann_lmdb_meta_precheck(const char *path, ann_error *err);

/* Checks the snapshot of a transaction of env (environment directory path)
 * whose meta page has txn id `want`. full: walk every tree (open, verify,
 * repair); else the cheap check of every write transaction. *repairable (may
 * be NULL) tells whether the damage found is limited to LMDB's free list
 * and accounting; detail (dcap bytes, may be NULL) gets the finding. A
 * damage report is ANN_E_CORRUPT naming data.mdb; ANN_E_STATE when the
 * snapshot's meta page was overwritten meanwhile by two newer commits
 * (check again). */
int ann_lmdb_pages_check(const char *path, MDB_env *env, uint64_t want, bool full, bool *repairable, char *detail,
			 size_t dcap, ann_error *err);

/* Index directory of a catalog path ("<dir>/catalog.lmdb" -> "<dir>"). */
void ann_catalog_index_dir(const char *path, char *buf, size_t cap);

#endif /* ANN_CATALOG_PAGES_H */
