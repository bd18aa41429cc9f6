/* SPDX-License-Identifier: MIT */
/*
 * store_impl.h: the interface between the generic block-store layer
 * (store.c: open, txns, RAM directory, batched readers, verify) and its two
 * back ends, the raw file blocks.dat (store_file.c) and the `blocks` DBI of
 * catalog.lmdb (store_lmdb.c). Internal to src/storage: the rest of the
 * library sees store.h only. Both back ends see the store through the
 * accessors below, never through each other: store.c picks one by meta
 * 'store.kind' and calls it through its ops table.
 */
#ifndef ANN_STORE_IMPL_H
#define ANN_STORE_IMPL_H

#include "store.h"

typedef struct ann_store_ops {
	ann_store_kind kind;
	const char *name;
	/* The file the store readers read through the io reader (ioreader.h),
	 * relative to the index directory; NULL: blocks are read from the
	 * catalog inside the reader's snapshot (ann_catalog_block_get). */
	const char *data_file;
	/* create (in txn t) or open the backend; writable handles load writer state */
	int (*open)(ann_store *s, const ann_store_opts *o, ann_cat_txn *create_txn, ann_error *err);
	void (*close)(ann_store *s);
	int (*begin)(ann_store_txn *t, ann_error *err);
	/* write n blocks; ents[i] has everything but offset; olds[i].kind NONE when new */
	int (*put)(ann_store_txn *t, const ann_block_put *puts, size_t n, ann_dirent *ents, const ann_dirent *olds,
		   ann_error *err);
	int (*drop)(ann_store_txn *t, uint32_t pid, const ann_dirent *old, ann_error *err);
	int (*precommit)(ann_store_txn *t, ann_error *err);
	void (*postcommit)(ann_store_txn *t, bool committed);
	int (*space)(ann_store *s, ann_store_space *sp, ann_error *err);
	int (*verify)(ann_store *s, ann_cat_txn *rt, const ann_dir *d, ann_issue_fn fn, void *ctx,
		      ann_verify_stats *st, ann_error *err);
} ann_store_ops;

extern const ann_store_ops ann_store_file_ops; /* store_file.c */
extern const ann_store_ops ann_store_lmdb_ops; /* store_lmdb.c */

/* Accessors for back ends. */
ann_store *ann_store_txn_store(ann_store_txn *t);
void *ann_store_impl(ann_store *s);
void ann_store_set_impl(ann_store *s, void *impl);
bool ann_store_writable(const ann_store *s);
/* Fails the writer for good (store_file.c invariant 6). */
void ann_store_fail(ann_store *s);
/* "<index dir>/name", malloc'ed; NULL when out of memory. */
char *ann_store_path(const ann_store *s, const char *name);

#endif /* ANN_STORE_IMPL_H */
