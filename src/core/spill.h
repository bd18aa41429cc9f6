/* SPDX-License-Identifier: MIT */
/*
 * spill.h: out-of-core bucketing of routed vectors by partition, the middle
 * of the build pipeline. Records (id, payload) are appended in arrival order
 * into one buffer of a fixed budget; a full buffer is counting-sorted by
 * partition and written as one run of the spill file, with a per-run table
 * of where each partition's records start. Reading a partition gathers its
 * pieces from every run. Memory: the buffer (min(mem_bytes, what max_records
 * records need)), plus 8 bytes per partition per run for the run tables,
 * plus a 1 MiB staging buffer.
 */
#ifndef ANN_SPILL_H
#define ANN_SPILL_H

#include "common.h"

typedef struct ann_spill ann_spill;

/* Creates path, which must not exist (ANN_E_EXISTS: a file or link there is
 * never opened), as the spill file. rec_bytes is the payload size of one
 * record (the vector in its stored type). max_records is the most records
 * that will be added (0: unknown): the buffer holds no more than that, so a
 * large budget on small data allocates only what the data needs. mem_bytes
 * must hold at least 64 records (or max_records, if fewer). */
int ann_spill_open(const char *path, uint32_t nparts, size_t rec_bytes, size_t mem_bytes, uint64_t max_records,
		   ann_spill **out, ann_error *err);
int ann_spill_add(ann_spill *s, uint32_t part, int64_t id, const void *payload, ann_error *err);
/* Writes the last run. No more adds afterwards. */
int ann_spill_finish(ann_spill *s, ann_error *err);
uint64_t ann_spill_count(const ann_spill *s, uint32_t part);
uint64_t ann_spill_total(const ann_spill *s);
/* Largest partition, in records. */
uint64_t ann_spill_max_count(const ann_spill *s);
/* Reads partition part's records into ids (count entries) and payload
 * (count * rec_bytes), in the order they were added. */
int ann_spill_read(ann_spill *s, uint32_t part, int64_t *ids, void *payload, ann_error *err);
/* Closes and unlinks the spill file (unless ann_spill_keep was called). */
void ann_spill_close(ann_spill *s);

/* ---- checkpoints (the resumable build, src/index/build_state.c) ---------
 * Records free in the buffer before it must be written as a run. */
size_t ann_spill_room(const ann_spill *s);
/* Writes the buffered records as a run (if any) and fdatasyncs the file:
 * every record added so far is durable once this returns. */
int ann_spill_sync(ann_spill *s, ann_error *err);
/* Serialises the durable part (the runs written so far, their tables and
 * the per-partition counts they hold; not the buffer) into *blob
 * (ann_free). Layout: docs/FORMAT.md "build state". */
int ann_spill_checkpoint(const ann_spill *s, uint8_t **blob, size_t *len, ann_error *err);
/* Reopens an existing spill file at the point a checkpoint recorded:
 * truncates it to the checkpoint's end (bytes of later, unrecorded runs go)
 * and restores its runs and counts; adds continue from there. The other
 * parameters are those of ann_spill_open and must match the checkpoint's
 * (ANN_E_CORRUPT otherwise). The file is opened O_NOFOLLOW. */
int ann_spill_resume(const char *path, uint32_t nparts, size_t rec_bytes, size_t mem_bytes, uint64_t max_records,
		     const uint8_t *blob, size_t len, ann_spill **out, ann_error *err);
/* Close keeps the file (a build that stops on an error stays resumable). */
void ann_spill_keep(ann_spill *s);

#endif
