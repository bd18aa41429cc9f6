/* SPDX-License-Identifier: MIT */
/*
 * gen.h: the seeded synthetic data generator: a SIFT-like anisotropic
 * Gaussian mixture with integer values in 0..255, streamed to any writable
 * vector format (vecio.h) in bounded memory, plus in-memory access to the
 * model and to any row for tests and benchmarks. The exact algorithm, enough
 * to reimplement it bit for bit, is the comment at the top of gen.c.
 */
#ifndef ANN_GEN_H
#define ANN_GEN_H

#include "common.h"

/* The profile, the options, ann_gen_opts_init, ann_gen_profile_parse and
 * _name, ann_gen_write and ANN_GEN_MAX_CLUSTERS are public: annann.h. */

/* max(16, n / 4000), at most ANN_GEN_MAX_CLUSTERS. */
uint32_t ann_gen_default_clusters(uint64_t n);
/* Latent components of the real profile when clusters is 0, whatever n. */
#define ANN_GEN_REAL_CLUSTERS 64u
/* Upper bound of the model's memory (means, scales, factors), in bytes;
 * ann_gen_model_new refuses options needing more (ANN_E_INVAL). */
#define ANN_GEN_MAX_MODEL_BYTES ((size_t)512 << 20)


/* ---- in-memory access ------------------------------------------------------
 * The model is immutable once built and may be shared by threads; row i of a
 * set depends only on (seed, model, set, i), so any range can be produced
 * independently and equals the matching rows of the files. */
typedef struct ann_gen_model ann_gen_model;

typedef enum ann_gen_set {
	ANN_GEN_BASE = 0,
	ANN_GEN_QUERY = 1,
} ann_gen_set;

int ann_gen_model_new(const ann_gen_opts *o, ann_gen_model **out, ann_error *err);
void ann_gen_model_free(ann_gen_model *m);
uint32_t ann_gen_model_dim(const ann_gen_model *m);
uint32_t ann_gen_model_clusters(const ann_gen_model *m);
ann_gen_profile ann_gen_model_profile(const ann_gen_model *m);
/* Mean of component c (dim floats, drift applied, before rounding/clipping).
 * Easy profile only: NULL for the real profile, whose components live in
 * the latent space. */
const float *ann_gen_model_mean(const ann_gen_model *m, uint32_t c);
/* Mixture weight of component c in the base set (the weights sum to 1). */
double ann_gen_model_weight(const ann_gen_model *m, uint32_t c);
/* RMS distance of component c's points from its mean before clipping:
 * sqrt of the trace of its covariance. Easy profile only: 0 for the real one. */
double ann_gen_model_radius(const ann_gen_model *m, uint32_t c);
/* Rows [first, first + n) of a set into out (n * dim floats, integers in
 * 0..255); comp, if not NULL, receives each row's component (n entries). */
void ann_gen_rows(const ann_gen_model *m, ann_gen_set set, uint64_t first, size_t n, float *out,
		  uint32_t *comp);

#endif /* ANN_GEN_H */
