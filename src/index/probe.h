/* SPDX-License-Identifier: MIT */
/*
 * probe.h: learned adaptive probing (issue 12 item 4; docs/DESIGN.md
 * "Learned adaptive probing"). A query first reads the heads of its P1
 * nearest partitions (stage A); eight features of what it saw there (the
 * squared distances to those partitions' centres, the k-th smallest upper
 * bound and the best estimate of its candidates) give, through a linear
 * model of log(partitions needed), how many partitions it reads in all:
 *
 *   probed = clamp(ceil(nprobe * exp(w . f - shift)), P1, 2 nprobe)
 *
 * where shift makes the mean of exp(w . f - shift) 1 over the tuning
 * queries, so nprobe stays the mean budget and the model moves partitions
 * from easy queries to hard ones. `annann tune` (tune.c) fits w and shift on
 * queries with their ground truth and stores the model in the catalog's
 * meta (key probe.model, docs/FORMAT.md); searchers of an index with a model
 * use it unless ann_search_opts.adaptive is -1.
 */
#ifndef ANN_PROBE_H
#define ANN_PROBE_H

#include "catalog.h"

struct ann_index;
/* The synthetic tuning queries (tune.c; docs/DESIGN.md "Self-tuned adaptive
 * probing"): rows holds ANN_TUNE_SCALE_ROWS scale rows, then nq query rows,
 * as read from the data file (type: its element type). Cosine makes them
 * all unit vectors first. The query rows are moved by Gaussian noise of sd
 * (per component) sqrt(0.5 |a - b|^2 / dim), |a - b|^2 the median distance
 * of a scale row to its nearest other row (the index's search at a wide
 * nprobe), and rounded to the file's integers for u8 and i8 under L2. */
int ann_tune_syn_queries(struct ann_index *x, float *rows, uint32_t nq, ann_dtype type, uint64_t seed, double *sd,
			 ann_error *err);

#define ANN_PROBE_FEATURES 8u
#define ANN_PROBE_META "probe.model"
/* The re-rank bound's eps0 calibrated with the model (tune.c calibrate_eps), f64 in (0, 100]. */
#define ANN_RERANK_EPS_META "search.rerank_eps"
#define ANN_PROBE_BLOB (16u + 8u * (1u + ANN_PROBE_FEATURES)) /* version 1 */
#define ANN_PROBE_BLOB2 (ANN_PROBE_BLOB + 16u)                 /* version 2: + what it was fitted on */
#define ANN_PROBE_MAX_P1 256u
/* Routing width with a model: the budget times this. */
#define ANN_PROBE_WIDTH 2u

typedef struct ann_probe_model {
	uint32_t p1; /* partitions of stage A; 0 = no model */
	double shift;
	double w[ANN_PROBE_FEATURES];
	/* what it was fitted on (blob version 2; 0 in version 1): the index's
	 * live vectors and partitions, and the tuning queries */
	uint64_t fit_vectors;
	uint32_t fit_parts, fit_queries;
} ann_probe_model;

/* Whether the index has changed enough since the fit for the model to be
 * refitted: other partitions, or live vectors more than 10% off. False when
 * the fit is not known (version 1). */
bool ann_probe_stale(const ann_probe_model *m, uint64_t live_vectors, uint32_t partitions);

/* Features of one query: cd holds the squared distances to the centres of
 * its stage A partitions in routing order (n of them, INFINITY where no head
 * was read); ub_k is the k-th smallest upper bound so far (INFINITY when
 * fewer than k), best the smallest estimate. Every feature is finite. */
void ann_probe_features(const float *cd, uint32_t n, float ub_k, float best, double f[ANN_PROBE_FEATURES]);
/* Partitions to probe in all: within [lo, hi]. */
uint32_t ann_probe_predict(const ann_probe_model *m, const double f[ANN_PROBE_FEATURES], uint32_t budget, uint32_t lo,
			   uint32_t hi);
/* Reads meta probe.model: m->p1 = 0 when absent; ANN_E_CORRUPT when malformed. */
int ann_probe_model_load(ann_cat_txn *t, ann_probe_model *m, ann_error *err);
int ann_probe_model_save(ann_cat_txn *t, const ann_probe_model *m, ann_error *err);

#endif
