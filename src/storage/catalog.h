/* SPDX-License-Identifier: MIT */
/*
 * catalog.h: the LMDB environment `catalog.lmdb` of an index: typed meta
 * values, the partition directory, models, id map, free extents of
 * blocks.dat, tombstones and deltas (reserved), and the blocks of the LMDB
 * store. Every value (except block bytes) carries an xxh64 appended and is
 * verified on read. Layout: docs/FORMAT.md, section "catalog.lmdb".
 * Publication protocol: the invariants atop catalog.c.
 */
#ifndef ANN_CATALOG_H
#define ANN_CATALOG_H

#include "common.h"

typedef struct ann_catalog ann_catalog;
typedef struct ann_cat_txn ann_cat_txn;

/* Named databases of the environment. Values are stable (they index arrays). */
typedef enum ann_cat_db {
	ANN_CAT_META = 0,   /* name (bytes) -> typed value */
	ANN_CAT_PARTS = 1,  /* partition id (be32) -> directory entry */
	ANN_CAT_MODELS = 2, /* name (bytes) -> blob */
	ANN_CAT_IDMAP = 3,  /* vector id (be64) -> partition id */
	ANN_CAT_FREE = 4,   /* blocks.dat offset (be64) -> free extent */
	ANN_CAT_TOMB = 5,   /* reserved for deletes (update module) */
	ANN_CAT_DELTA = 6,  /* reserved for inserts (update module) */
	ANN_CAT_BLOCKS = 7, /* partition id (be32) -> block bytes (LMDB store); no appended checksum */
	ANN_CAT_NDB = 8
} ann_cat_db;

/* @return the DBI name of db ("meta", "parts", ...), or "?" */
const char *ann_catalog_db_name(ann_cat_db db);

typedef struct ann_catalog_opts {
	uint64_t map_bytes;   /* initial map size in bytes; 0 = max(16 GiB, 2 x data.mdb). Grows on demand */
	unsigned max_readers; /* LMDB reader slots (concurrent read txns, all processes); 0 = 510 */
	bool create;          /* create catalog.lmdb and its DBIs when missing */
	bool readonly;        /* MDB_RDONLY: write txns refused */
} ann_catalog_opts;

void ann_catalog_opts_init(ann_catalog_opts *o);

/* Opens (or creates) the environment at path (a directory holding data.mdb
 * and lock.mdb). Refuses an unknown major catalog format with ANN_E_FORMAT.
 * Clears reader slots left by dead processes. Thread-safe handle: many
 * threads may run read txns while one runs the write txn. */
int ann_catalog_open(const char *path, const ann_catalog_opts *o, ann_catalog **out, ann_error *err);
void ann_catalog_close(ann_catalog *c);
const char *ann_catalog_path(const ann_catalog *c);

/* ---- transactions ---------------------------------------------------------
 * Write txn: one at a time (LMDB serialises writers across processes). Every
 * write is also logged in memory so that MDB_MAP_FULL, wherever it happens
 * (a put or the commit), is handled by aborting, doubling the map size and
 * replaying the log: callers never see it. Memory bound of the log: the bytes
 * of all keys and values written in the txn + 24 per operation; commit in
 * batches to bound it. After any other failure the txn is failed: every call
 * but ann_catalog_abort returns ANN_E_STATE.
 * Read txn: a consistent snapshot; with MDB_NOTLS it may move between threads
 * (one thread at a time). Pointers returned by gets are valid until the txn
 * ends (write txn: until its next write).
 * A thread must not hold a read txn while it runs the write txn of the same
 * catalog (growing the map waits for every read txn of the process). */
int ann_catalog_write_begin(ann_catalog *c, ann_cat_txn **out, ann_error *err);
/* Durable commit (LMDB default sync mode). Frees t whatever the result. */
int ann_catalog_commit(ann_cat_txn *t, ann_error *err);
void ann_catalog_abort(ann_cat_txn *t);
int ann_catalog_read_begin(ann_catalog *c, ann_cat_txn **out, ann_error *err);
void ann_catalog_read_end(ann_cat_txn *t);
/* Release a read txn's snapshot but keep its slot; renew takes a fresh one. */
void ann_catalog_read_reset(ann_cat_txn *t);
int ann_catalog_read_renew(ann_cat_txn *t, ann_error *err);
bool ann_catalog_txn_is_write(const ann_cat_txn *t);
/* LMDB txn id: for a read txn the snapshot's id, for a write txn the id its
 * commit will have. */
uint64_t ann_catalog_txn_id(const ann_cat_txn *t);
/* Id of the last committed txn (any process). */
uint64_t ann_catalog_last_txnid(ann_catalog *c);
/* Oldest snapshot held by any live read txn of any process, or UINT64_MAX
 * when none. (Parsed from mdb_reader_list; stale slots are cleared first.) */
int ann_catalog_oldest_reader(ann_catalog *c, uint64_t *out, ann_error *err);

/* ---- checked raw access ---------------------------------------------------
 * Stored value = payload || xxh64(payload, seed = xxh64(key, 0)) little-endian.
 * get returns the payload (pointer into the map) after checking the sum; a
 * mismatch is ANN_E_CORRUPT naming the DBI and key; missing key ANN_E_NOTFOUND.
 * Keys are 1..511 bytes. Not for ANN_CAT_BLOCKS. */
int ann_catalog_put(ann_cat_txn *t, ann_cat_db db, const void *key, size_t klen, const void *val, size_t vlen,
		ann_error *err);
int ann_catalog_get(ann_cat_txn *t, ann_cat_db db, const void *key, size_t klen, const uint8_t **val, size_t *vlen,
		ann_error *err);
/* Missing key: ANN_E_NOTFOUND. */
int ann_catalog_del(ann_cat_txn *t, ann_cat_db db, const void *key, size_t klen, ann_error *err);
/* Calls fn for each entry with key >= from (from NULL: all), in key order,
 * with the checked payload. fn returns 0 to go on, 1 to stop, < 0 to fail. */
typedef int (*ann_cat_each_fn)(void *ctx, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen,
			       ann_error *err);
int ann_catalog_foreach(ann_cat_txn *t, ann_cat_db db, const void *from, size_t flen, ann_cat_each_fn fn, void *ctx,
		    ann_error *err);
/* Same, but values failing their checksum are skipped silently (for
 * verification passes that report them separately). */
int ann_catalog_foreach_valid(ann_cat_txn *t, ann_cat_db db, const void *from, size_t flen, ann_cat_each_fn fn,
			      void *ctx, ann_error *err);
/* Entries of db in txn t. */
int ann_catalog_count(ann_cat_txn *t, ann_cat_db db, uint64_t *out, ann_error *err);

/* ---- meta: typed values under string names -------------------------------
 * A value of another type than asked is ANN_E_CORRUPT naming the key. */
typedef enum ann_meta_type { ANN_META_U64 = 1, ANN_META_F64 = 2, ANN_META_STR = 3, ANN_META_BLOB = 4 } ann_meta_type;
int ann_catalog_meta_put_u64(ann_cat_txn *t, const char *name, uint64_t v, ann_error *err);
int ann_catalog_meta_put_f64(ann_cat_txn *t, const char *name, double v, ann_error *err);
int ann_catalog_meta_put_str(ann_cat_txn *t, const char *name, const char *s, ann_error *err);
int ann_catalog_meta_put_blob(ann_cat_txn *t, const char *name, const void *p, size_t n, ann_error *err);
int ann_catalog_meta_get_u64(ann_cat_txn *t, const char *name, uint64_t *v, ann_error *err);
int ann_catalog_meta_get_f64(ann_cat_txn *t, const char *name, double *v, ann_error *err);
/* Copies the string NUL-terminated into buf; ANN_E_INVAL when cap is too small. */
int ann_catalog_meta_get_str(ann_cat_txn *t, const char *name, char *buf, size_t cap, ann_error *err);
int ann_catalog_meta_get_blob(ann_cat_txn *t, const char *name, const uint8_t **p, size_t *n, ann_error *err);
int ann_catalog_meta_del(ann_cat_txn *t, const char *name, ann_error *err);

/* ---- partition directory ---------------------------------------------------
 * The value of `parts` (docs/FORMAT.md "parts value"), and the RAM copy. */
/* Store kind codes on disk (parts values, meta "store.kind"); 0 = no entry.
 * Distinct from the public ann_store_kind so that a zeroed entry is absent. */
enum { ANN_KIND_NONE = 0, ANN_KIND_FILE = 1, ANN_KIND_LMDB = 2 };
static inline uint8_t ann_kind_code(ann_store_kind k)
{
	return k == ANN_STORE_LMDB ? ANN_KIND_LMDB : ANN_KIND_FILE;
}

typedef struct ann_dirent {
	uint64_t offset;     /* byte offset of the block in blocks.dat (file store); 0 for LMDB */
	uint64_t checksum;   /* XXH64(block bytes, length, seed 0) */
	uint32_t length;     /* block bytes: file 4096*k, LMDB 4096*k - 16 */
	uint32_t count;      /* vectors in the block (as given by the writer) */
	uint32_t generation; /* 1 for the first version, +1 per rewrite */
	uint8_t kind;        /* ANN_KIND_FILE or ANN_KIND_LMDB; ANN_KIND_NONE: no such partition */
	uint32_t head;       /* codes block (format 2): bytes of its head, read first; 0 = a format 1 block */
	float spread;        /* codes block: mean |x - c|^2 of its rows (bfloat16 on disk); 0 = not known */
} ann_dirent;

/* Payload bytes of a parts value (without checksum): 32 in both versions.
 * Version 1 for format 1 blocks; version 2 for codes blocks: the offset in
 * 4 KiB units and the head length (docs/FORMAT.md "parts value"). Both are
 * read; an older build refuses version 2 with ANN_E_FORMAT. */
#define ANN_PARTS_VALUE_BYTES 32u

int ann_catalog_part_put(ann_cat_txn *t, uint32_t pid, const ann_dirent *e, ann_error *err);
/* Missing: ANN_E_NOTFOUND. */
int ann_catalog_part_get(ann_cat_txn *t, uint32_t pid, ann_dirent *e, ann_error *err);
int ann_catalog_part_del(ann_cat_txn *t, uint32_t pid, ann_error *err);
/* Version 1 (32 bytes; e->head must be 0). */
void ann_catalog_part_encode(uint8_t out[ANN_PARTS_VALUE_BYTES], const ann_dirent *e);
/* Version 1 when e->head == 0, else version 2 (ANN_E_UNSUPPORTED when the
 * offset is not 4096-aligned or lies beyond 16 TiB). */
int ann_catalog_part_encode_any(uint8_t out[ANN_PARTS_VALUE_BYTES], const ann_dirent *e, ann_error *err);
/* A spread as an entry stores it (bfloat16, round to nearest even; not
 * positive and finite: 0, "not known"; docs/FORMAT.md "parts value"). */
float ann_catalog_spread_stored(float v);
/* Validates field ranges (kind, version, length, spread); ANN_E_CORRUPT naming pid. */
int ann_catalog_part_decode(const uint8_t *p, size_t n, uint32_t pid, ann_dirent *e, ann_error *err);

/* The whole directory in RAM: ents[pid] for pid < n (kind NONE where absent).
 * Memory: 32 bytes * (max pid + 1); refused (ANN_E_UNSUPPORTED) when ids are
 * so sparse that max pid + 1 > 4 * count + 2^20. */
typedef struct ann_dir {
	ann_dirent *ents; /* n entries, indexed by partition id */
	uint32_t n;       /* max partition id + 1 (0 when empty) */
	uint32_t count;   /* partitions present */
	uint64_t txnid;   /* snapshot it was read from */
} ann_dir;

int ann_catalog_dir_load(ann_cat_txn *t, ann_dir *d, ann_error *err);
/* Same, skipping entries that fail their checksum or do not decode. */
int ann_catalog_dir_load_valid(ann_cat_txn *t, ann_dir *d, ann_error *err);
void ann_catalog_dir_free(ann_dir *d);

/* ---- models, id map ------------------------------------------------------- */
int ann_catalog_model_put(ann_cat_txn *t, const char *name, const void *blob, size_t n, ann_error *err);
int ann_catalog_model_get(ann_cat_txn *t, const char *name, const uint8_t **blob, size_t *n, ann_error *err);
int ann_catalog_idmap_put(ann_cat_txn *t, uint64_t id, uint32_t pid, ann_error *err);
int ann_catalog_idmap_get(ann_cat_txn *t, uint64_t id, uint32_t *pid, ann_error *err);
int ann_catalog_idmap_del(ann_cat_txn *t, uint64_t id, ann_error *err);

/* ---- free extents of blocks.dat ------------------------------------------- */
typedef struct ann_extent {
	uint64_t offset;   /* bytes, multiple of 4096 */
	uint64_t length;   /* bytes, multiple of 4096 */
	uint64_t freed_tx; /* txn id of the commit that freed it (reusable once no reader is older) */
} ann_extent;

int ann_catalog_free_put(ann_cat_txn *t, const ann_extent *x, ann_error *err);
int ann_catalog_free_del(ann_cat_txn *t, uint64_t offset, ann_error *err);
/* All free extents in offset order into a growing array (*xs, *n; caller
 * frees *xs with ann_free). */
int ann_catalog_free_load(ann_cat_txn *t, ann_extent **xs, size_t *n, ann_error *err);
/* Same, skipping entries that fail their checksum or do not decode. */
int ann_catalog_free_load_valid(ann_cat_txn *t, ann_extent **xs, size_t *n, ann_error *err);

/* ---- blocks of the LMDB store ----------------------------------------------
 * Stored as is (no appended checksum: the directory holds the block's xxh64).
 * get returns a pointer into the map, 16 bytes past an LMDB page start when
 * the block took overflow pages; valid until the txn ends. */
int ann_catalog_block_put(ann_cat_txn *t, uint32_t pid, const void *buf, size_t n, ann_error *err);
int ann_catalog_block_get(ann_cat_txn *t, uint32_t pid, const uint8_t **buf, size_t *n, ann_error *err);
int ann_catalog_block_del(ann_cat_txn *t, uint32_t pid, ann_error *err);
/* Calls fn(ctx, pid, bytes, n, err) for every stored block in pid order;
 * fn returns 0 to go on, 1 to stop, < 0 to fail. Keys that are not 4 bytes
 * are passed with pid UINT32_MAX. */
typedef int (*ann_cat_block_fn)(void *ctx, uint32_t pid, const uint8_t *buf, size_t n, ann_error *err);
int ann_catalog_block_foreach(ann_cat_txn *t, ann_cat_block_fn fn, void *ctx, ann_error *err);


/* ---- space ------------------------------------------------------------------ */
typedef struct ann_catalog_space {
	uint64_t file_bytes;     /* data.mdb st_size */
	uint64_t disk_bytes;     /* data.mdb st_blocks * 512 (allocated on disk) */
	uint64_t map_bytes;      /* current map size */
	uint64_t page_bytes;     /* LMDB page size */
	uint64_t last_page;      /* highest page number used + 1 */
	uint64_t free_pages;     /* pages on LMDB's free list */
	uint64_t used_bytes;     /* (last_page - free_pages) * page_bytes */
	uint64_t db_pages[ANN_CAT_NDB]; /* branch + leaf + overflow pages per DBI */
	uint64_t db_entries[ANN_CAT_NDB];
	uint64_t map_grows;      /* times this handle doubled the map */
} ann_catalog_space;

int ann_catalog_space_get(ann_catalog *c, ann_catalog_space *sp, ann_error *err);

/* ---- verification ----------------------------------------------------------- */
typedef enum ann_issue_kind {
	ANN_ISSUE_CATALOG = 1,  /* a catalog value fails its checksum or does not decode */
	ANN_ISSUE_HEADER = 2,   /* blocks.dat header (magic, version, checksum, index id) */
	ANN_ISSUE_EXTENT = 3,   /* offset/length invalid, or past the end of blocks.dat */
	ANN_ISSUE_READ = 4,     /* the block could not be read */
	ANN_ISSUE_CHECKSUM = 5, /* stored block bytes differ from the directory checksum */
	ANN_ISSUE_OVERLAP = 6,  /* two extents (live or free) overlap */
	ANN_ISSUE_LEAK = 7,     /* warning: bytes of blocks.dat neither live nor free */
	ANN_ISSUE_ORPHAN = 8,   /* warning: LMDB block without directory entry */
	ANN_ISSUE_IDMAP = 9,    /* warning: an id maps to a partition not in the directory */
} ann_issue_kind;

typedef struct ann_issue {
	ann_issue_kind kind;
	bool warning;    /* true: not corruption (space leaked by a crash, ...) */
	int64_t pid;     /* partition concerned, or -1 */
	const char *db;  /* catalog DBI for ANN_ISSUE_CATALOG, else NULL */
	const char *msg; /* names the file, key or offset and the expectation; valid during the call */
} ann_issue;

typedef void (*ann_issue_fn)(void *ctx, const ann_issue *is);

/* Checks the checksum (and, for parts and free, the decoding) of every value
 * of every DBI except blocks; reports each bad value through fn (may be
 * NULL). *nbad (may be NULL) gets the count. Returns ANN_OK even when values
 * are bad; < 0 only when the scan itself fails. */
int ann_catalog_verify(ann_cat_txn *t, ann_issue_fn fn, void *ctx, uint64_t *nbad, ann_error *err);

/* ---- repair ------------------------------------------------------------------
 * Rebuilds the catalog at path (a catalog.lmdb directory) into
 * "<path>.repair.<pid>" by copying every entry of every database, opens and
 * verifies the copy (structure, then value checksums), and swaps it in
 * atomically (renameat2 RENAME_EXCHANGE); the old catalog is kept as
 * "<path>.damaged.<UTC time>.<pid>". Fixes LMDB's free list and page
 * accounting; refuses (ANN_E_CORRUPT) when a database's own pages are damaged.
 * The caller holds the index's writer lock; readers that have the old catalog
 * open keep reading it. Memory: LMDB's dirty pages of up to 64 MiB of values. */
typedef struct ann_catalog_repair_opts {
	bool dry_run; /* rebuild and verify the copy, then delete it */
} ann_catalog_repair_opts;

typedef struct ann_catalog_repair_result {
	bool damaged;         /* the free list or page accounting was damaged */
	char damage[512];     /* what was found, when damaged */
	uint64_t entries;     /* entries copied */
	uint64_t bad_values;  /* values of the copy failing their checksum (copied as they were) */
	char backup[4300];    /* where the old catalog went ("" for a dry run) */
} ann_catalog_repair_result;

int ann_catalog_repair(const char *path, const ann_catalog_repair_opts *o, ann_catalog_repair_result *res,
		       ann_error *err);

/* Big-endian key helpers (numeric order under LMDB's memcmp). */
static inline void ann_stbe32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (24 - 8 * i));
}
static inline void ann_stbe64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (56 - 8 * i));
}
static inline uint32_t ann_ldbe32(const uint8_t *p)
{
	uint32_t v = 0;
	for (int i = 0; i < 4; i++)
		v = (v << 8) | p[i];
	return v;
}
static inline uint64_t ann_ldbe64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v = (v << 8) | p[i];
	return v;
}

#endif /* ANN_CATALOG_H */
