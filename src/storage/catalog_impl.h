/* SPDX-License-Identifier: MIT */
/*
 * catalog_impl.h: the catalog's insides, shared by the files that implement
 * catalog.h: catalog.c (environment, gate, txns with map growth, checked
 * values, LMDB-store blocks, space), catalog_records.c (typed records:
 * meta, partition directory, models, id map, free extents) and
 * catalog_repair.c (verification and repair). Internal to the catalog; the
 * rest of the library sees catalog.h only.
 */
#ifndef ANN_CATALOG_IMPL_H
#define ANN_CATALOG_IMPL_H

#include <lmdb.h>
#include <pthread.h>
#include <sys/types.h>

#include "catalog.h"

#define CAT_DEFAULT_MAP (16ull << 30)
#define CAT_SUM 8u /* appended checksum bytes */
/* meta key: the LMDB txn id of the commit that wrote it (every commit does).
 * A snapshot whose id differs was served from a damaged meta page. */
#define CAT_TXN_KEY "catalog.txn"

/* The one LMDB environment of a catalog directory in this process, shared by
 * every handle of it (catalog.c "one environment per process"), with the
 * gate that map resizes need: all of the environment's txns, whichever
 * handle began them. */
typedef struct cat_shared {
	MDB_env *env;
	dev_t dev;        /* the directory's identity */
	ino_t ino;
	pid_t pid;        /* the process that opened it (a forked child opens its own) */
	unsigned refs;    /* handles sharing it (under the registry's lock) */
	bool readonly;    /* opened MDB_RDONLY: the directory is not writable */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	unsigned active;  /* txns of this process inside the gate */
	bool resizing;    /* a resize waits for active == 0 or runs */
	uint64_t grows;   /* map doublings done through this environment (under mu) */
	struct cat_shared *next;
} cat_shared;

struct ann_catalog {
	MDB_env *env;  /* sh->env */
	cat_shared *sh;
	MDB_dbi dbi[ANN_CAT_NDB];
	char *path;    /* catalog.lmdb directory */
	bool readonly; /* this handle writes nothing (its environment may be shared with a writer) */
};

struct ann_cat_txn {
	ann_catalog *c;
	MDB_txn *txn;   /* NULL when reset (read) or after a failed replay */
	bool write;     /* write txn */
	bool failed;    /* sticky: only abort remains */
	bool in_gate;   /* counted in c->active */
	uint8_t *log;   /* write txns: operations for replay (catalog.c) */
	size_t log_len; /* bytes used in log */
	size_t log_cap; /* bytes allocated */
};

/* LMDB names of the DBIs, by ann_cat_db. */
extern const char *const ann_cat_db_names[ANN_CAT_NDB];

/* Describes a key of db for a message ("partition 7", "'index.dim'", hex). */
void ann_cat_key_desc(ann_cat_db db, const uint8_t *k, size_t klen, char *buf, size_t cap);
/* Maps an LMDB result to an ann_status with a message naming path, DBI
 * (db < 0: none) and key. */
int ann_cat_mdb_fail(const ann_catalog *c, ann_error *err, int rc, const char *what, int db, const void *k,
		     size_t klen);
/* ANN_E_STATE / ANN_E_INVAL unless t is active (and a write txn when
 * need_write). */
int ann_cat_txn_usable(ann_cat_txn *t, bool need_write, ann_error *err);
/* ANN_E_CORRUPT when meta CAT_TXN_KEY does not name the txn that wrote the
 * snapshot (a damaged meta page); ANN_OK when it matches or is absent. */
int ann_cat_check_txn_key(ann_cat_txn *t, ann_error *err);
/* The checksum a value carries: xxh64(payload, seed xxh64(key)). */
uint64_t ann_cat_value_sum(const void *k, size_t klen, const void *p, size_t n);
/* Checks a stored value; on success val and vlen describe the payload. */
int ann_cat_check_value(const ann_cat_txn *t, ann_cat_db db, const MDB_val *k, const MDB_val *v,
			const uint8_t **val, size_t *vlen, ann_error *err);
/* ann_catalog_foreach (skip_bad false) or ann_catalog_foreach_valid (true). */
int ann_cat_foreach(ann_cat_txn *t, ann_cat_db db, const void *from, size_t flen, ann_cat_each_fn fn, void *ctx,
		    bool skip_bad, ann_error *err);
/* Decodes a `free` entry (catalog_records.c). */
int ann_cat_free_decode(const ann_catalog *c, const uint8_t *k, size_t klen, const uint8_t *v, size_t n,
			ann_extent *x, ann_error *err);

#endif /* ANN_CATALOG_IMPL_H */
