/* SPDX-License-Identifier: MIT */
/*
 * build_state.h: the saved state of a resumable build (docs/FORMAT.md "build
 * state", docs/DESIGN.md "Resumable build"). A build of DIR works inside
 * "DIR.build-state/": the index under construction in index/, and one file
 * per completed unit of work beside it. A build killed at any moment and
 * started again with the same data and options continues from the last
 * completed unit; build.c decides what a unit is, this module makes each one
 * durable and checks that the saved state belongs to this build.
 */
#ifndef ANN_BUILD_STATE_H
#define ANN_BUILD_STATE_H

#include "common.h"

typedef struct ann_bstate ann_bstate;

/* What the saved state must match to be resumed: the data file (size,
 * mtime, XXH64 of its first 4 KiB and of 16 pages spread over it) and the
 * options that change the result, as "key=value" lines (build.c lists them). */
typedef struct ann_bstate_fp {
	uint64_t data_size;
	int64_t data_mtime_s;
	uint32_t data_mtime_ns;
	uint64_t data_hash;
	const char *options; /* "key=value\n" lines */
} ann_bstate_fp;

/* Fills the data file's part of fp. */
int ann_bstate_fingerprint_data(const char *data_path, ann_bstate_fp *fp, ann_error *err);

/* Directory of the state of index_dir: "index_dir.build-state" (ann_free). */
char *ann_bstate_dir_name(const char *index_dir);

/* Opens (creating it when absent) the state directory of index_dir and
 * locks it for this process (flock on its "lock" file: ANN_E_STATE when
 * another build holds it). Saved state that matches fp is kept and *resumed
 * set; state whose fingerprint differs is removed, with a notice naming what
 * changed; restart removes any state. State of another state or index
 * format version is refused (ANN_E_FORMAT) unless restart. notice (may be
 * NULL) gets one line per decision. A directory or link at the name that is
 * not a build state of this user is never touched (ANN_E_EXISTS). */
int ann_bstate_open(const char *index_dir, const ann_bstate_fp *fp, bool restart,
		    void (*notice)(void *ctx, const char *line), void *notice_ctx, ann_bstate **out, bool *resumed,
		    ann_error *err);
/* Releases the lock; the state stays on disk. NULL is a no-op. */
void ann_bstate_close(ann_bstate *st);
/* Removes the whole state directory and closes st (after a publish, or a
 * failure that no rerun can get past). */
void ann_bstate_remove(ann_bstate *st);

/* When index_dir exists: removes a state of it that a build killed between
 * publishing index_dir and removing the state left behind (one without
 * index/, whose lock nobody holds), with a notice. Anything else is left. */
void ann_bstate_drop_published(const char *index_dir, void (*notice)(void *ctx, const char *line), void *notice_ctx);

/* Path of a file or directory inside the state directory (ann_free). */
char *ann_bstate_path(const ann_bstate *st, const char *name);

/* ---- units ----------------------------------------------------------------
 * A unit file holds one completed unit's result: written to "name.tmp",
 * fsynced, renamed to name, and the directory fsynced, so it exists whole or
 * not at all. aux and secs are two numbers the caller keeps with it. */
int ann_bstate_unit_put(ann_bstate *st, const char *name, const void *payload, size_t len, uint64_t aux,
			double secs, ann_error *err);
/* 1 and *payload (ann_free), *len, *aux, *secs filled when the unit is
 * done; 0 when it is not; ANN_E_CORRUPT when the file fails its checksum. */
int ann_bstate_unit_get(ann_bstate *st, const char *name, void **payload, size_t *len, uint64_t *aux,
			double *secs, ann_error *err);

/* ---- the route log ----------------------------------------------------------
 * The routing of each chunk: one checksummed record appended and
 * fdatasynced per chunk (a torn last record is dropped on reopen). */
/* Opens the log, keeping its valid records (a fresh build starts empty).
 * *routed gets the vectors the kept records cover (records are
 * consecutive from vector 0). */
int ann_bstate_log_open(ann_bstate *st, uint64_t *routed, ann_error *err);
/* Appends the routing of vectors [first, first + count): copies partition
 * numbers each, then fdatasyncs. */
int ann_bstate_log_append(ann_bstate *st, uint64_t first, uint32_t count, uint32_t copies, const uint32_t *parts,
			  ann_error *err);
/* Reads the record that starts at vector first into parts (count * copies
 * entries); ANN_E_CORRUPT when no record starts there or its shape differs. */
int ann_bstate_log_read(ann_bstate *st, uint64_t first, uint32_t count, uint32_t copies, uint32_t *parts,
			ann_error *err);

#endif
