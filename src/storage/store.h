/* SPDX-License-Identifier: MIT */
/*
 * store.h: the block store of an index directory (blocks.dat read with
 * io_uring, or blocks inside catalog.lmdb) behind one interface: publishing
 * blocks with their directory entries, batched reads by partition id,
 * verification, space figures. Blocks are opaque bytes here (block.c owns
 * their content). The generic layer is store.c; the back ends store_file.c
 * and store_lmdb.c sit behind the vtable of store_impl.h; the file store
 * reads through the io reader (ioreader.h). Layout: docs/FORMAT.md
 * "blocks.dat"; protocol: invariants atop store_file.c and catalog.c.
 */
#ifndef ANN_STORE_H
#define ANN_STORE_H

#include "catalog.h"
#include "ioreader.h"

/* ===== block store =====================================================
 * An index directory holds catalog.lmdb and, for the file store, blocks.dat.
 * Open handles: many readers (threads and processes); one writer process
 * (flock on the directory) running one store txn at a time. */
typedef struct ann_store ann_store;
typedef struct ann_store_txn ann_store_txn;

typedef struct ann_store_opts {
	ann_store_kind kind;   /* create: ANN_STORE_FILE or ANN_STORE_LMDB; open: ignored (read from meta) */
	bool create;           /* make dir (one level), catalog and store; ANN_E_EXISTS if a store exists */
	bool writable;         /* take the writer lock (ANN_E_STATE if another process holds it) */
	bool readonly;         /* open the catalog MDB_RDONLY (needs !writable) */
	bool no_direct;        /* file store: buffered writes + fdatasync instead of O_DIRECT */
	uint64_t map_bytes;    /* initial LMDB map size, 0 = default (see ann_catalog_opts); grows on demand */
	unsigned max_readers;  /* LMDB reader slots, 0 = default */
} ann_store_opts;

void ann_store_opts_init(ann_store_opts *o);
int ann_store_open(const char *dir, const ann_store_opts *o, ann_store **out, ann_error *err);
/* Aborts a running txn; readers of the store must be freed first. */
void ann_store_close(ann_store *s);
/* The store's catalog (owned by the store), for meta, models, id map. */
ann_catalog *ann_store_catalog(ann_store *s);
ann_store_kind ann_store_kind_of(const ann_store *s);
const char *ann_store_kind_name(ann_store_kind k); /* "file", "lmdb" */
const char *ann_store_dir_path(const ann_store *s);

/* Block sizes the store takes: file 4096*k, LMDB 4096*k - 16 (an overflow
 * value then fills whole LMDB pages). ann_store_block_bytes rounds a payload
 * size up to the next accepted size. */
size_t ann_store_block_bytes(ann_store_kind k, size_t payload);
bool ann_store_block_size_ok(ann_store_kind k, size_t n);

/* ---- writing ----------------------------------------------------------
 *   ann_store_begin -> (ann_store_put_blocks | ann_store_drop | catalog
 *   writes on ann_store_txn_catalog())* -> ann_store_commit | ann_store_abort
 * Only the writer handle; one txn at a time, used by one thread. */
int ann_store_begin(ann_store *s, ann_store_txn **out, ann_error *err);
/* Whether the writer failed for good (a commit whose outcome is unknown, or
 * a back end's invariant broken): then only ann_store_close remains. */
bool ann_store_failed(const ann_store *s);
/* The catalog write txn inside the store txn: meta, models, id map written
 * there commit atomically with the blocks. Do not commit or abort it. */
ann_cat_txn *ann_store_txn_catalog(ann_store_txn *t);

typedef struct ann_block_put {
	uint32_t pid;       /* partition id (a rewrite when it exists) */
	uint32_t count;     /* vectors in the block, kept in the directory */
	const void *data;   /* block bytes; 4096-aligned (ann_aligned_alloc) to avoid a copy */
	size_t length;      /* ann_store_block_size_ok(kind, length) */
	uint32_t head;      /* codes block: bytes of its head (kept in the directory); 0 = format 1 */
} ann_block_put;

/* Writes n blocks (file: at first-fit reusable free extents or the end, then
 * one fdatasync before returning; LMDB: into the txn) and stages their
 * directory entries (generation = old + 1, checksum = XXH64 of the bytes).
 * out (may be NULL) gets the n new entries. Rewritten blocks' old extents are
 * freed by the commit. An I/O error fails the txn and the writer (sticky). */
int ann_store_put_blocks(ann_store_txn *t, const ann_block_put *puts, size_t n, ann_dirent *out, ann_error *err);
/* Removes a partition (its extent is freed by the commit). ANN_E_NOTFOUND. */
int ann_store_drop(ann_store_txn *t, uint32_t pid, ann_error *err);
/* Makes blocks durable, records free space and the file end, commits the
 * catalog txn, then updates the RAM directory. Frees t in all cases. */
int ann_store_commit(ann_store_txn *t, ann_error *err);
void ann_store_abort(ann_store_txn *t);

/* ---- directory in RAM ---------------------------------------------------
 * Loaded at open, updated by the writer's commits, reloaded by
 * ann_store_refresh in other processes. */
/* Copies the entry of pid; ANN_E_NOTFOUND when absent. Thread-safe. */
int ann_store_lookup(ann_store *s, uint32_t pid, ann_dirent *e, ann_error *err);
/* A private copy of the whole directory (free with ann_catalog_dir_free). */
int ann_store_dir_copy(ann_store *s, ann_dir *d, ann_error *err);
/* Reloads the directory when the catalog has commits newer than it;
 * *changed (may be NULL) tells whether it did. */
int ann_store_refresh(ann_store *s, bool *changed, ann_error *err);

/* ---- batched block reads ------------------------------------------------
 * One reader per thread. A batch starts with a submit on an idle reader: it
 * takes a catalog snapshot (read txn) and looks each partition up in it (the
 * snapshot keeps the extents from being reused until the batch ends); the
 * batch ends when every completion has been returned and released.
 * ann_store_reader_use_txn makes the reader work inside the caller's read
 * txn instead (as mdb_cursor_open takes a txn): blocks, deltas and
 * tombstones then come from one snapshot, which the caller must keep open
 * until the batch ends. A request reads a whole block or a byte range of it
 * (the two-round reads of codes blocks). */
typedef struct ann_store_reader ann_store_reader;

typedef struct ann_store_reader_opts {
	ann_ioreader_opts io; /* file store I/O (queue depth, pool, pread, ...) */
	bool verify;          /* check each block's XXH64 against its directory entry */
} ann_store_reader_opts;

typedef struct ann_block_read {
	uint64_t tag;        /* the request's tag */
	uint32_t pid;        /* partition */
	int status;          /* ANN_OK, ANN_E_NOTFOUND, ANN_E_IO, ANN_E_CORRUPT (checksum, length, a range
			      * outside the block), ANN_E_INVAL (larger than the reader's buffer pool) */
	const uint8_t *data; /* the bytes read, valid until release (LMDB: a pointer into the map) */
	size_t length;       /* bytes read: the block's, or the range's */
	uint64_t offset;     /* the range's offset within the block (0 for a whole block) */
	uint64_t cost;       /* bytes the read cost: widened to 4 KiB pages under O_DIRECT; for a
			      * range in LMDB, the map pages it touches */
	ann_dirent ent;      /* the directory entry the read used */
	uint32_t slot;       /* internal */
} ann_block_read;

void ann_store_reader_opts_init(ann_store_reader_opts *o);
int ann_store_reader_new(ann_store *s, const ann_store_reader_opts *o, ann_store_reader **out, ann_error *err);
void ann_store_reader_free(ann_store_reader *r);
/* Queues n partitions; tags may be NULL (tag = index in this call). */
int ann_store_reader_submit(ann_store_reader *r, const uint32_t *pids, const uint64_t *tags, size_t n,
			    ann_error *err);
typedef struct ann_block_range {
	uint32_t pid;
	uint32_t length;  /* bytes; 0 = the whole block (offset 0) */
	uint64_t offset;  /* within the block */
	uint64_t tag;
} ann_block_range;
/* Queues n ranges. Only whole-block reads are checked against the directory
 * checksum (opts.verify): a range is checked by its reader (codes blocks
 * carry their own head and page sums). */
int ann_store_reader_submit_ranges(ann_store_reader *r, const ann_block_range *rs, size_t n, ann_error *err);
/* Reads of later batches look partitions and LMDB blocks up in t (a read
 * txn of the store's catalog, kept open by the caller through each batch),
 * or in the reader's own snapshot when t is NULL. ANN_E_STATE mid-batch. */
int ann_store_reader_use_txn(ann_store_reader *r, ann_cat_txn *t, ann_error *err);
/* 1 with *b filled, 0 when nothing is outstanding, < 0 on reader failure.
 * A failed block is a completion with status < 0 (err names it). */
int ann_store_reader_next(ann_store_reader *r, ann_block_read *b, ann_error *err);
void ann_store_reader_release(ann_store_reader *r, const ann_block_read *b);
/* io path ("io_uring", "pread", or "lmdb") and I/O stats (zero for LMDB
 * except requests and bytes). */
const char *ann_store_reader_path(const ann_store_reader *r);
void ann_store_reader_stats(const ann_store_reader *r, ann_ioreader_stats *st);

/* ---- verification and space ------------------------------------------------ */
typedef struct ann_verify_stats {
	uint64_t partitions; /* directory entries checked */
	uint64_t bytes;      /* block bytes read */
	uint64_t problems;   /* issues that are corruption */
	uint64_t warnings;   /* issues that are not (leaked space, orphans) */
} ann_verify_stats;

/* Reads every block listed in the directory of one snapshot and checks:
 * catalog value checksums, blocks.dat header, extents against the file
 * (alignment, bounds), block XXH64 against the directory, overlaps between
 * live and free extents, unaccounted space, LMDB orphans, id map targets.
 * Each finding goes to fn (may be NULL). Returns ANN_OK when no problem was
 * found (warnings allowed), ANN_E_CORRUPT when some were (err summarises), or
 * another code when the check itself could not run. Never crashes on bad
 * data. */
int ann_store_verify(ann_store *s, ann_issue_fn fn, void *ctx, ann_verify_stats *st, ann_error *err);

typedef struct ann_store_space {
	ann_store_kind kind;
	uint64_t partitions;    /* directory entries */
	uint64_t live_bytes;    /* sum of block lengths in the directory */
	uint64_t free_bytes;    /* file: bytes in free extents */
	uint64_t free_extents;  /* file: number of free extents */
	uint64_t file_end;      /* file: committed end of blocks.dat */
	uint64_t file_bytes;    /* file: blocks.dat st_size; LMDB: data.mdb st_size */
	uint64_t disk_bytes;    /* st_blocks * 512 of blocks.dat + data.mdb */
	ann_catalog_space cat;  /* catalog.lmdb figures (LMDB store: blocks live there) */
	bool direct_writes;     /* file: O_DIRECT writes (false: buffered + fdatasync, e.g. tmpfs) */
	uint64_t writes;        /* file: write calls (pwritev) by this handle */
	uint64_t write_bytes;   /* block bytes written by this handle */
	uint64_t syncs;         /* fdatasync calls by this handle */
	uint64_t sync_ns;       /* time in fdatasync */
} ann_store_space;

int ann_store_space_get(ann_store *s, ann_store_space *sp, ann_error *err);

#endif /* ANN_STORE_H */
