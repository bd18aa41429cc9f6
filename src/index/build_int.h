/* SPDX-License-Identifier: MIT */
/*
 * build_int.h: the state of one build, shared by the files of the build
 * pipeline (docs/DESIGN.md "Build"; its phases and invariants are at the top
 * of build.c). One job per file:
 *
 *   build.c        the options, the phases driver (ann_build) and the
 *                  resumable units it saves (sample, router, routed)
 *   build_route.c  reading the input: the sample (phase 1) and the routing
 *                  of every vector into the spill (phase 3)
 *   build_pack.c   partitions into blocks (phase 4), meta and router (phase 5)
 *   build_part.c   partbuild (dist.h): the pipeline with a given router, and
 *                  the DIR.tmp.* directories it works in
 *
 * Internal to src/index; the public face is annann.h.
 */
#ifndef ANN_BUILD_INT_H
#define ANN_BUILD_INT_H

#include <ftw.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "block.h"
#include "build_state.h"
#include "cblock.h"
#include "router.h"
#include "spill.h"
#include "store.h"
#include "vecio.h"

#define BUILD_FIXED_BYTES ((size_t)64 << 20) /* zstd, LMDB, stdio, code: the stated overhead */
#define ROUTE_CHUNK 8192u                     /* vectors per routing chunk */
#define COMMIT_BYTES ((size_t)32 << 20)       /* block bytes per store commit (a resumed pack redoes at most one) */
#define COMMIT_NS 1000000000ull               /* ... or a commit per second of packing, whichever comes first */
#define DICT_SAMPLES 64u                      /* partitions a dictionary is trained on */
#define DICT_BYTES ((size_t)112 << 10)        /* dictionary capacity */
#define BUILD_MARKER "annann-build.pid"      /* in DIR.tmp.*: "annann build pid P start S" */

/* Test hook (tests/test_resume.sh): ANNANN_BUILD_SMALL_UNITS=1 makes every
 * unit as small as it can be (a spill checkpoint before every chunk, a
 * commit per partition), so kills at random moments land between many
 * units of small data. The index is the same either way (invariant 5). */
static inline bool build_small_units(void)
{
	const char *v = getenv("ANNANN_BUILD_SMALL_UNITS");
	return v && strcmp(v, "1") == 0;
}

typedef struct build {
	const ann_build_opts *o; /* resolved (build_resolve_options): no auto field left */
	ann_build_opts opts;     /* ann_build: the caller's options, resolved; o points here */
	const char *data_path;
	char *tmpdir;
	char *spill_path;
	ann_vreader *in;
	uint64_t n;
	uint32_t d;
	ann_dtype in_type;      /* element type of the input file */
	ann_encoding enc;       /* resolved encoding */
	ann_dtype pay_type;     /* element type of spilled vectors: in_type, or F32 */
	size_t pay_bytes;       /* bytes of one spilled vector */
	uint32_t nparts;
	uint32_t copies;
	size_t sample_n;
	ann_router *router;
	ann_spill *spill;
	ann_store *store;
	ann_block_dict *dict;
	ann_rbq *rbq;           /* codes blocks: the codes' parameters, else NULL */
	uint8_t *dict_bytes;
	size_t dict_len;
	uint64_t stored;        /* vectors in blocks, replicas included */
	bool skip_empty;        /* partbuild: a partition that received nothing gets no block */
	uint64_t block_bytes;
	uint64_t fit_moved;     /* rows page fitting moved (build_fit.c) */
	double t_sample, t_train, t_route, t_pack;
	ann_bstate *st;         /* the saved state (DIR.build-state) */
	bool resumed;           /* st held state of an earlier run */
} build;

static inline double build_secs_since(uint64_t t0)
{
	return (double)(ann_now_ns() - t0) / 1e9;
}

/* The k-means settings of the router o builds: the annann router's own
 * (it runs k-means in its embedding space), else the k-means router's,
 * which meta build.* and the resume fingerprint record for every router. */
static inline uint32_t build_kmeans_iters(const ann_build_opts *o)
{
	return o->router == ANN_ROUTER_ANNANN ? o->annann.kmeans_iters : o->kmeans.kmeans_iters;
}

static inline double build_balance(const ann_build_opts *o)
{
	return o->router == ANN_ROUTER_ANNANN ? o->annann.balance : o->kmeans.balance;
}

/* ---- build.c ---- */
/* A notice: what was resumed, why a state was dropped (o->notice, else
 * o->log). */
void build_notice(const build *b, const char *fmt, ...) ANN_PRINTF(2, 3);
/* build_notice as an ann_log_fn; ctx is the build. */
void build_notice_cb(void *ctx, const char *line);
/* Polls the caller's cancel callback: ANN_E_CANCELED when it says stop. */
int build_check_cancel(const build *b, const char *phase, uint64_t done, uint64_t total, ann_error *err);
/* Reports progress, then build_check_cancel. */
int build_progress(const build *b, const char *phase, uint64_t done, uint64_t total, ann_error *err);
/* Checks the options against the input (b->n, b->d, b->in_type set) and
 * resolves encoding, payload type, partitions, copies and sample size. */
int build_resolve_options(build *b, ann_build_opts *own, ann_error *err);

/* ---- build_route.c ---- */
/* Converts n raw vectors of the input type to floats (unit length for the
 * cosine metric). */
void build_to_float(const build *b, const void *raw, size_t n, float *out);
/* Reads up to `chunk` vectors at input position i into raw and their floats
 * into f: the count read (> 0), or an error. */
int64_t build_read_chunk(build *b, void *raw, size_t chunk, uint64_t i, float *f, ann_error *err);
/* Selection sampling of `want` among vectors first..first+count-1. */
int build_sample_range(build *b, ann_rng *rng, uint64_t first, uint64_t count, uint64_t want, float *out,
		       uint64_t *taken_out, ann_error *err);
/* Phase 1: the training sample, drawn from the whole input. */
int build_draw_sample(build *b, ann_rng *rng, float *sample, ann_error *err);
/* Opens the spill at its last checkpoint (*spilled: the vectors it covers)
 * or new. */
int build_spill_start(build *b, size_t spill_mem, uint64_t *spilled, ann_error *err);
/* Phase 3: routes every vector into the spill. */
int build_route_all(build *b, ann_error *err);

/* ---- build_pack.c ---- */
/* Phase 4: encodes and publishes every partition of the spill. */
int build_pack_all(build *b, ann_error *err);

/* Page-fitted assignment (build_fit.c): rows of nearly empty last head
 * pages moved to a neighbouring partition before packing. */
typedef struct build_fit {
	size_t nmoved;     /* rows moved; 0: packing as the spill says */
	int64_t *out_ids;  /* the moved ids, ascending */
	uint64_t *in_off;  /* nparts + 1 offsets into in_ids / in_vecs by receiver */
	int64_t *in_ids;   /* by receiver, ascending within each */
	uint8_t *in_vecs;  /* their vectors, pay_bytes each */
	uint64_t max_in;   /* the most rows one partition receives */
} build_fit;
/* True when the build fits pages (codes blocks, one copy, the k-means graph
 * router under l2, a single node). */
bool build_fit_applies(const build *b);
/* Bytes the plan's candidate rows may hold (1/16 of the sample's). */
size_t build_fit_budget(const build *b);
/* Computes the plan from the spill (ids and vecs: scratch for the largest
 * partition). An empty plan where it does not apply. */
int build_fit_plan(build *b, int64_t *ids, void *vecs, build_fit *f, ann_error *err);
/* Partition part's rows after the plan (see build_fit.c). */
void build_fit_apply(const build_fit *f, uint32_t part, size_t pay, int64_t *ids, void *vecs, uint64_t *n,
		     int64_t *sid, void *svec);
void build_fit_free(build_fit *f);
/* Phase 5: meta, router and dictionary, in one commit. */
int build_publish_meta(build *b, double total_s, ann_error *err);

/* ---- build_part.c ---- */
/* An nftw callback removing every entry (FTW_DEPTH | FTW_PHYS). */
int build_rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw);
/* Removes the DIR.tmp.* directories of killed builds of index_dir. */
void build_remove_stale_temps(const char *index_dir, const ann_build_opts *o);

#endif
