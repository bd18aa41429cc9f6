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

/* Which model generates the rows (gen.c's header comment specifies both). */
typedef enum ann_gen_profile {
	ANN_GEN_EASY = 0, /* anisotropic Gaussian mixture: well separated, compressible, queries
			   * from the base's own mixture (the historical generator) */
	ANN_GEN_REAL = 1, /* calibrated against real SIFT descriptors: a low-dimensional latent
			   * manifold mapped to non-negative, normalised, soft-capped values;
			   * hard to partition, nearly incompressible, shifted queries */
} ann_gen_profile;

typedef struct ann_gen_opts {
	ann_gen_profile profile;  /* default ANN_GEN_EASY */
	uint64_t n;               /* base vectors (>= 1) */
	uint64_t nq;              /* query vectors (0 = none) */
	uint32_t dim;             /* dimension, 1..ANN_VEC_MAX_DIM; default 128 */
	uint32_t clusters;        /* mixture components; 0 = ann_gen_default_clusters(n), or
				   * ANN_GEN_REAL_CLUSTERS for the real profile */
	uint64_t seed;            /* same seed and options => same bytes on any machine; default 1 */
	float drift;              /* >= 0: every component mean moves by drift * its radius
				   * (RMS distance of its points from its mean) in a random
				   * direction; everything else stays identical to drift 0.
				   * Easy profile only (the real profile refuses drift > 0) */
	ann_progress_fn progress; /* phases "gen" (base) and "gen-queries", unit vectors; may be NULL */
	void *progress_ctx;
} ann_gen_opts;

/* Defaults: easy profile, n = nq = 0, dim 128, clusters 0 (automatic), seed 1, drift 0. */
void ann_gen_opts_init(ann_gen_opts *o);

/* max(16, n / 4000), at most ANN_GEN_MAX_CLUSTERS. */
uint32_t ann_gen_default_clusters(uint64_t n);
#define ANN_GEN_MAX_CLUSTERS 4096u
/* Latent components of the real profile when clusters is 0, whatever n. */
#define ANN_GEN_REAL_CLUSTERS 64u
/* "easy" or "real" to a profile; returns -1 for any other name. */
int ann_gen_profile_parse(const char *name);
const char *ann_gen_profile_name(ann_gen_profile p);
/* Upper bound of the model's memory (means, scales, factors), in bytes;
 * ann_gen_model_new refuses options needing more (ANN_E_INVAL). */
#define ANN_GEN_MAX_MODEL_BYTES ((size_t)512 << 20)

/* Writes o->n base vectors to base_path and o->nq queries to query_path, in
 * the formats their extensions name (vecio.h), each through "path.tmp.<pid>"
 * then renamed. Memory: the model (clusters * dim * 40 bytes) plus two 4 MiB
 * buffers, whatever n. query_path is ignored when o->nq == 0 and required
 * otherwise. Easy profile: queries come from the same mixture through an
 * independent random stream, so they are distinct from the base rows in
 * practice. Real profile: queries come from a shifted distribution (other
 * component weights, perturbed latent points), as real queries do.
 * @return ANN_OK, ANN_E_INVAL (options, path), ANN_E_NOMEM, ANN_E_IO. */
int ann_gen_write(const ann_gen_opts *o, const char *base_path, const char *query_path, ann_error *err);

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
