/* SPDX-License-Identifier: MIT */
/*
 * gen.c: the seeded SIFT-like data generator (gen.h). It owns the two models
 * (profiles easy and real) and their row generators; files are written
 * through vecio's writer.
 * The algorithm below is the specification: same seed and options give the
 * same bytes on every machine, because it uses only xoshiro256** outputs
 * (common.c), integer arithmetic and IEEE-754 float/double operations whose
 * results cannot depend on evaluation tricks (see "Exactness").
 *
 * Notation. next(S) is ann_rng_next on stream S. T(S) is an integer
 * approximately N(0, SIGMA^2): v = next(S), T = (v & 0xffff) +
 * (v >> 16 & 0xffff) + (v >> 32 & 0xffff) + (v >> 48) - 131070 (a centred
 * Irwin-Hall sum of four 16-bit uniforms, |T| <= 131070), whose variance is
 * SIGMA^2 = (65536^2 - 1) / 3 = 1431655765 exactly. U(S) = (next(S) >> 40) *
 * 2^-24, a double on a 24-bit grid in [0, 1). q6(x) rounds a positive or
 * negative float to 6 significant bits: on its IEEE bit pattern b,
 * b = (b + 0x20000) & 0xfffc0000. K = clusters, D = dim, R = GEN_RANK = 8,
 * GEN_SCALE = 30, GEN_MEAN_MAX = 150, GEN_FACTOR = 0.375.
 *
 * Streams. master = ann_rng_seed(seed); then, in this order,
 * ann_rng_fork(master, 1) -> M (model), fork(master, 2) -> DR (drift),
 * fork(master, 3) -> B (base rows), fork(master, 4) -> Q (query rows).
 * Row i of a set uses its own stream V: copy the set's root (B or Q) and
 * ann_rng_fork(copy, i) -> V. So row i depends only on (seed, model, set, i).
 *
 * Model, drawn from M in this order (double arithmetic unless noted):
 *  1. for c = 0..K-1: g[c] = 143165577 + T^2 + T^2 (uint64; 143165577 =
 *     floor(SIGMA^2 / 10)), i.e. g/SIGMA^2 = 0.1 + chi-square(2): Dirichlet(1)
 *     weights with a floor. cum[c] = g[0] + ... + g[c], G = cum[K-1].
 *  2. for c = 0..K-1:
 *     a. S = GEN_SCALE * (0.5 + U)                      (component size)
 *     b. for d = 0..D-1: u = U; u3 = (u * u) * u;
 *        mean[c][d] = (float)(GEN_MEAN_MAX * (u3 * u3))  (low-biased, 0..150)
 *     c. for d = 0..D-1: a = 0.125 + 0.875 * U;
 *        s[c][d] = q6((float)(((S * a) * a) / SIGMA))    (per-axis scale)
 *     d. for j = 0..R-1, d = 0..D-1:
 *        f[c][j][d] = q6((float)(((S * GEN_FACTOR) * T) / SIGMA / SIGMA))
 *     e. radius[c] = SIGMA * sqrt(sum_d s^2 + sum_{j,d} f^2) (sums in double,
 *        d-major for s then j-major, d-minor for f).
 *  3. If drift > 0, for c = 0..K-1, from DR: t[d] = T for d = 0..D-1;
 *     nrm = sqrt((double)sum_d t[d]^2) (integer sum);
 *     mean[c][d] = (float)((double)mean[c][d] + (((double)drift * radius[c])
 *     * t[d]) / nrm).
 *  4. Options are refused (ANN_E_INVAL) if some |mean[c][d]| + 131070 *
 *     (s[c][d] + sum_j |f[c][j][d]|) >= 2^22 (a drift so large that step 4 of
 *     a row would not be exact).
 *
 * Row, from its stream V:
 *  1. r = high 64 bits of next(V) * G (128-bit product); c = the smallest
 *     index with cum[c] > r.
 *  2. w[j] = (float)T for j = 0..R-1, then z[d] = (float)T for d = 0..D-1.
 *  3. in float: x = mean[c][d] + z[d] * s[c][d]; then for j = 0..R-1:
 *     x = x + w[j] * f[c][j][d]. So x ~ N(mean[c], SIGMA^2 (diag(s^2) +
 *     F F^T)) with F the D x R matrix f[c]: anisotropic axis noise plus a
 *     rank-8 correlated part (T is Irwin-Hall, so only nearly Gaussian).
 *  4. x is rounded half to even, y = (x + 0x1.8p23f) - 0x1.8p23f (exact as
 *     |x| < 2^22), then clipped: out = min(max(y, 0), 255) (a +0.0 for -0.0).
 *     Values are integers in 0..255.
 *
 * Real profile (--profile real). Calibrated against real SIFT descriptors
 * (docs/DESIGN.md, "The real generator"): a 48-dimensional latent space
 * with K strongly overlapping components (K = clusters, default 64), mapped
 * linearly to D dimensions with noise, rectified, normalised and
 * soft-capped; queries use other component weights and a perturbed latent
 * point. RL = 48, LDIV = 3547, BIAS0 = 1450000000, BIAS1 = 9472, AMB = 30,
 * QSHIFT = 384, NORM = 1200, SHIFT = 15, CAP = 180. A(S) = 128 + ((|T(S)| *
 * 443) >> 16) (integer, about 256 * (0.5 + |N(0,1)|): a heavy-tailed
 * scale). Streams as above (DR is forked but not used).
 * Model, from M in this order:
 *  1. base weights: for c = 0..K-1, g = 143165577 + T^2 + T^2 into cum, as
 *     in step 1 above; then the query weights the same way into qcum
 *     (independent, so components that are rare in the base can be common
 *     among the queries).
 *  2. centre[c][l] = T for c = 0..K-1, l = 0..RL-1 (int32, c-major).
 *  3. load[d][l] = T / LDIV (C integer division, truncating toward zero;
 *     |load| <= 36) for d = 0..D-1, l = 0..RL-1 (d-major).
 *  4. bias[d] = BIAS0 + BIAS1 * T for d = 0..D-1 (int64).
 *  5. norm = floor(sqrt(NORM^2 * D / 128)) (integer; 1200 at D = 128).
 * Row, from its stream V (integers unless noted):
 *  1. c from cum (base) or qcum (queries), as in step 1 of an easy row.
 *  2. s = A(V); h[l] = centre[c][l] * 256 + s * T for l = 0..RL-1; for a
 *     query then h[l] = h[l] + QSHIFT * T for l = 0..RL-1.
 *  3. for d = 0..D-1: t = T, a = A(V) (in that order), then
 *     x[d] = bias[d] + t * a * AMB + sum_{l=0..RL-1} load[d][l] * h[l].
 *     |h| < 2^28 and |x| < 2^39 - 2^31, so x is exact in any order of
 *     summation (the code sums in doubles, where every value and partial
 *     sum is an integer below 2^53).
 *  4. q[d] = max(x[d], 0) >> SHIFT (< 2^24); Q = sum_d q[d]^2 (128-bit);
 *     r = floor(sqrt(Q)) (exact integer square root); mult = (norm << 32) / r
 *     (0 if r = 0); y = (q[d] * mult + 2^31) >> 32 (so sum y^2 ~ norm^2).
 *  5. soft cap: if y > CAP then y = CAP + (y - CAP) * 3 / 10 (integer
 *     division); out = min(y, 255).
 * Traits this gives (measured in docs/BENCHMARKS.md): about 13% zeros, a
 * mean value near 84 with a tail to 255, correlated structure of ~48
 * latent dimensions under 128-dimensional noise, k-means cells that overlap
 * heavily, zstd ratio ~0.9 on partition blocks, queries ~1.17x farther from
 * their nearest base point than base points are from theirs.
 *
 * Exactness. Every product that feeds an addition is exact: T has at most 17
 * significant bits and s, f have 6 (q6), so z * s and w * f fit a float's 24
 * bits, and 0.875 * U fits a double. Hence fused multiply-add contraction
 * cannot change any result, and each sum is evaluated in the order written
 * (no -ffast-math). FLT_EVAL_METHOD must be 0 (SSE or NEON, not x87). The
 * real profile is integer arithmetic, or doubles holding integers below
 * 2^53, so it is exact by construction; its one square root is corrected to
 * the exact integer square root.
 */
#include "gen.h"

#include <float.h>
#include <math.h>

#include "vecio.h"

#if !defined(FLT_EVAL_METHOD) || FLT_EVAL_METHOD != 0
#error "gen.c needs FLT_EVAL_METHOD == 0 for reproducible output"
#endif

#define GEN_RANK 8                       /* correlated factors per component */
#define GEN_SCALE 30.0                   /* mean component size S (per-axis std of the widest axis) */
#define GEN_MEAN_MAX 150.0               /* component means lie in 0..150, mostly low (mean 150 / 7) */
#define GEN_FACTOR 0.375                 /* factor loading relative to S */
#define GEN_SIGMA2 1431655765.0          /* variance of T: (65536^2 - 1) / 3 */
#define GEN_WFLOOR 143165577ull          /* floor(GEN_SIGMA2 / 10) */
#define GEN_DBLK 256                     /* dimensions processed per block in a row */
#define GEN_BUF_FLOATS ((size_t)1 << 20) /* write chunk: 4 MiB of floats */
#define GEN_PROGRESS_NS 250000000ull

/* The real profile (see "Real profile" above). */
#define RL 48                 /* latent dimensions */
#define REAL_LDIV 3547        /* loadings are T / LDIV */
#define REAL_BIAS0 1450000000 /* mean pre-activation bias */
#define REAL_BIAS1 9472       /* bias spread across dimensions, per unit of T */
#define REAL_AMB 30           /* ambient noise, per unit of T x scale */
#define REAL_QSHIFT 384       /* query latent perturbation, per unit of T */
#define REAL_NORM 1200u       /* target L2 norm at D = 128 */
#define REAL_SHIFT 15         /* pre-activation bits dropped before normalising */
#define REAL_CAP 180          /* soft cap: values above grow at 3/10 the rate */

__extension__ typedef unsigned __int128 u128;

static int real_model_new(const ann_gen_opts *o, uint32_t K, ann_gen_model **out, ann_error *err);

struct ann_gen_model {
	ann_gen_profile profile;
	uint32_t dim;      /* D */
	uint32_t clusters; /* K */
	uint64_t *cum;     /* K cumulative integer weights; cum[K-1] = total */
	uint64_t *qcum;    /* real: K cumulative query weights */
	int32_t *center;   /* real: K * RL latent centres, in units of T */
	double *load;      /* real: D * RL loadings (integers, T / 2048) */
	double *bias;      /* real: D biases (integers) */
	uint64_t norm;     /* real: target norm (NORM scaled to D) */
	float *mean;       /* K * D, drift applied */
	float *scale;      /* K * D, q6, in units of T */
	float *factor;     /* K * R * D, q6, in units of T^2 */
	double *radius;    /* K: sqrt(trace of covariance) before clipping */
	ann_rng root[2];   /* roots of the base and query row streams */
};

void ann_gen_opts_init(ann_gen_opts *o)
{
	memset(o, 0, sizeof *o);
	o->profile = ANN_GEN_EASY;
	o->dim = 128;
	o->seed = 1;
}

int ann_gen_profile_parse(const char *name)
{
	if (name && !strcmp(name, "easy"))
		return ANN_GEN_EASY;
	if (name && !strcmp(name, "real"))
		return ANN_GEN_REAL;
	return -1;
}

const char *ann_gen_profile_name(ann_gen_profile p)
{
	return p == ANN_GEN_REAL ? "real" : "easy";
}

uint32_t ann_gen_default_clusters(uint64_t n)
{
	uint64_t k = ANN_MAX((uint64_t)16, n / 4000);
	return (uint32_t)ANN_MIN(k, (uint64_t)ANN_GEN_MAX_CLUSTERS);
}

/* Centred Irwin-Hall sum of four 16-bit uniforms: |T| <= 131070. */
static inline int32_t gen_t(ann_rng *r)
{
	uint64_t v = ann_rng_next(r);
	return (int32_t)((v & 0xffff) + (v >> 16 & 0xffff) + (v >> 32 & 0xffff) + (v >> 48)) - 131070;
}

static inline double gen_u(ann_rng *r)
{
	return (double)(ann_rng_next(r) >> 40) * 0x1p-24;
}

static inline float q6(float x)
{
	uint32_t b;
	memcpy(&b, &x, 4);
	b = (b + 0x20000u) & 0xfffc0000u;
	memcpy(&x, &b, 4);
	return x;
}

void ann_gen_model_free(ann_gen_model *m)
{
	if (!m)
		return;
	ann_free(m->cum);
	ann_free(m->qcum);
	ann_free(m->center);
	ann_free(m->load);
	ann_free(m->bias);
	ann_free(m->mean);
	ann_free(m->scale);
	ann_free(m->factor);
	ann_free(m->radius);
	ann_free(m);
}

static int check_opts(const ann_gen_opts *o, uint32_t *k_out, ann_error *err)
{
	if (!o)
		return ann_err(err, ANN_E_INVAL, "gen: options are NULL");
	if (o->dim == 0 || o->dim > ANN_VEC_MAX_DIM)
		return ann_err(err, ANN_E_INVAL, "gen: dimension %u, expected 1..%u", o->dim,
			       ANN_VEC_MAX_DIM);
	if (o->profile != ANN_GEN_EASY && o->profile != ANN_GEN_REAL)
		return ann_err(err, ANN_E_INVAL, "gen: profile %d, expected easy (0) or real (1)",
			       (int)o->profile);
	if (!(o->drift >= 0.0f) || isinf(o->drift))
		return ann_err(err, ANN_E_INVAL, "gen: drift %g, expected a finite value >= 0",
			       (double)o->drift);
	if (o->profile == ANN_GEN_REAL && o->drift > 0.0f)
		return ann_err(err, ANN_E_INVAL,
			       "gen: drift %g with the real profile, expected 0 (drift is easy-profile only)",
			       (double)o->drift);
	uint32_t k = o->clusters ? o->clusters
				 : o->profile == ANN_GEN_REAL ? ANN_GEN_REAL_CLUSTERS : ann_gen_default_clusters(o->n);
	if (k > ANN_GEN_MAX_CLUSTERS)
		return ann_err(err, ANN_E_INVAL, "gen: %u clusters, expected at most %u", k,
			       ANN_GEN_MAX_CLUSTERS);
	uint64_t bytes = o->profile == ANN_GEN_REAL
				 ? ((uint64_t)k * (2 * sizeof(uint64_t) + RL * sizeof(int32_t)) +
				    (uint64_t)o->dim * (RL + 1) * sizeof(double))
				 : (uint64_t)k * o->dim * (2 + GEN_RANK) * sizeof(float);
	if (bytes > ANN_GEN_MAX_MODEL_BYTES)
		return ann_err(
			err, ANN_E_INVAL,
			"gen: %u clusters x dimension %u need a %llu-byte model, more than the %zu-byte "
			"limit; ask for fewer clusters",
			k, o->dim, (unsigned long long)bytes, ANN_GEN_MAX_MODEL_BYTES);
	*k_out = k;
	return ANN_OK;
}

int ann_gen_model_new(const ann_gen_opts *o, ann_gen_model **out, ann_error *err)
{
	uint32_t K = 0;
	if (!out)
		return ann_err(err, ANN_E_INVAL, "gen: out is NULL");
	*out = NULL;
	ANN_TRY(check_opts(o, &K, err));
	if (o->profile == ANN_GEN_REAL)
		return real_model_new(o, K, out, err);
	const size_t D = o->dim, R = GEN_RANK;
	ann_gen_model *m = ann_calloc(1, sizeof *m);
	if (!m)
		return ann_err(err, ANN_E_NOMEM, "gen: out of memory for the model");
	m->profile = ANN_GEN_EASY;
	m->dim = o->dim;
	m->clusters = K;
	m->cum = ann_malloc(K * sizeof *m->cum);
	m->mean = ann_malloc(K * D * sizeof *m->mean);
	m->scale = ann_malloc(K * D * sizeof *m->scale);
	m->factor = ann_malloc(K * R * D * sizeof *m->factor);
	m->radius = ann_malloc(K * sizeof *m->radius);
	if (!m->cum || !m->mean || !m->scale || !m->factor || !m->radius) {
		ann_gen_model_free(m);
		return ann_err(err, ANN_E_NOMEM, "gen: out of memory for a %u x %u model", K, o->dim);
	}

	ann_rng master, M, DR;
	ann_rng_seed(&master, o->seed);
	ann_rng_fork(&master, 1, &M);
	ann_rng_fork(&master, 2, &DR);
	ann_rng_fork(&master, 3, &m->root[ANN_GEN_BASE]);
	ann_rng_fork(&master, 4, &m->root[ANN_GEN_QUERY]);

	const double sigma = sqrt(GEN_SIGMA2);
	uint64_t total = 0;
	for (uint32_t c = 0; c < K; c++) {
		int64_t t1 = gen_t(&M), t2 = gen_t(&M);
		total += GEN_WFLOOR + (uint64_t)(t1 * t1) + (uint64_t)(t2 * t2);
		m->cum[c] = total;
	}
	for (uint32_t c = 0; c < K; c++) {
		float *mean = m->mean + c * D, *s = m->scale + c * D, *f = m->factor + c * R * D;
		double S = GEN_SCALE * (0.5 + gen_u(&M));
		for (size_t d = 0; d < D; d++) {
			double u = gen_u(&M), u3 = (u * u) * u;
			mean[d] = (float)(GEN_MEAN_MAX * (u3 * u3));
		}
		for (size_t d = 0; d < D; d++) {
			double a = 0.125 + 0.875 * gen_u(&M);
			s[d] = q6((float)(((S * a) * a) / sigma));
		}
		for (size_t i = 0; i < R * D; i++)
			f[i] = q6((float)(((S * GEN_FACTOR) * (double)gen_t(&M)) / sigma / sigma));
		double tr = 0;
		for (size_t d = 0; d < D; d++)
			tr += (double)s[d] * (double)s[d];
		for (size_t i = 0; i < R * D; i++)
			tr += (double)f[i] * (double)f[i];
		m->radius[c] = sigma * sqrt(tr);
	}
	if (o->drift > 0.0f) {
		for (uint32_t c = 0; c < K; c++) {
			float *mean = m->mean + c * D;
			/* The direction is drawn twice from the same state (norm, then
			 * shift) rather than stored: no buffer of D values. */
			ann_rng save = DR;
			uint64_t n2 = 0;
			for (size_t d = 0; d < D; d++) {
				int64_t t = gen_t(&DR);
				n2 += (uint64_t)(t * t);
			}
			double nrm = sqrt((double)n2), amp = (double)o->drift * m->radius[c];
			DR = save;
			for (size_t d = 0; d < D; d++) {
				double t = (double)gen_t(&DR);
				mean[d] = (float)((double)mean[d] + (amp * t) / nrm);
			}
		}
	}
	for (uint32_t c = 0; c < K; c++) {
		const float *mean = m->mean + c * D, *s = m->scale + c * D, *f = m->factor + c * R * D;
		for (size_t d = 0; d < D; d++) {
			double fs = 0;
			for (size_t j = 0; j < R; j++)
				fs += fabs((double)f[j * D + d]);
			if (fabs((double)mean[d]) + 131070.0 * ((double)s[d] + fs) >= 0x1p22) {
				int rc = ann_err(
					err, ANN_E_INVAL,
					"gen: drift %g moves component %u too far (mean %g in dimension "
					"%zu); values must stay below 2^22",
					(double)o->drift, c, (double)mean[d], d);
				ann_gen_model_free(m);
				return rc;
			}
		}
	}
	*out = m;
	return ANN_OK;
}

uint32_t ann_gen_model_dim(const ann_gen_model *m)
{
	return m->dim;
}

uint32_t ann_gen_model_clusters(const ann_gen_model *m)
{
	return m->clusters;
}

ann_gen_profile ann_gen_model_profile(const ann_gen_model *m)
{
	return m->profile;
}

const float *ann_gen_model_mean(const ann_gen_model *m, uint32_t c)
{
	return m->mean ? m->mean + (size_t)c * m->dim : NULL;
}

double ann_gen_model_weight(const ann_gen_model *m, uint32_t c)
{
	uint64_t lo = c ? m->cum[c - 1] : 0;
	return (double)(m->cum[c] - lo) / (double)m->cum[m->clusters - 1];
}

double ann_gen_model_radius(const ann_gen_model *m, uint32_t c)
{
	return m->radius ? m->radius[c] : 0.0;
}

static uint32_t pick_cum(const uint64_t *cum, uint32_t K, ann_rng *v)
{
	uint64_t r = (uint64_t)(((u128)ann_rng_next(v) * cum[K - 1]) >> 64);
	uint32_t lo = 0, hi = K - 1;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (cum[mid] > r)
			hi = mid;
		else
			lo = mid + 1;
	}
	return lo;
}

static uint32_t pick_component(const ann_gen_model *m, ann_rng *v)
{
	return pick_cum(m->cum, m->clusters, v);
}

/* ---- the real profile ----------------------------------------------------------------- */

/* floor(sqrt(x)), exact whatever the rounding of the double estimate. */
static uint64_t isqrt128(u128 x)
{
	uint64_t r = (uint64_t)sqrt((double)x);
	while (r > 0 && (u128)r * r > x)
		r--;
	while ((u128)(r + 1) * (r + 1) <= x)
		r++;
	return r;
}

/* 0.5 + |N(0,1)| in units of 1/256: 128 + floor(|T| * 443 / 65536). */
static inline int64_t real_scale(ann_rng *r)
{
	int64_t t = gen_t(r);
	return 128 + (((t < 0 ? -t : t) * 443) >> 16);
}

static int real_model_new(const ann_gen_opts *o, uint32_t K, ann_gen_model **out, ann_error *err)
{
	const size_t D = o->dim;
	ann_gen_model *m = ann_calloc(1, sizeof *m);
	if (!m)
		return ann_err(err, ANN_E_NOMEM, "gen: out of memory for the model");
	m->profile = ANN_GEN_REAL;
	m->dim = o->dim;
	m->clusters = K;
	m->cum = ann_malloc(K * sizeof *m->cum);
	m->qcum = ann_malloc(K * sizeof *m->qcum);
	m->center = ann_malloc((size_t)K * RL * sizeof *m->center);
	m->load = ann_malloc(D * RL * sizeof *m->load);
	m->bias = ann_malloc(D * sizeof *m->bias);
	if (!m->cum || !m->qcum || !m->center || !m->load || !m->bias) {
		ann_gen_model_free(m);
		return ann_err(err, ANN_E_NOMEM, "gen: out of memory for a %u x %u model", K, o->dim);
	}
	ann_rng master, M, DR;
	ann_rng_seed(&master, o->seed);
	ann_rng_fork(&master, 1, &M);
	ann_rng_fork(&master, 2, &DR); /* unused, drawn so that the roots match the easy profile's */
	ann_rng_fork(&master, 3, &m->root[ANN_GEN_BASE]);
	ann_rng_fork(&master, 4, &m->root[ANN_GEN_QUERY]);
	uint64_t *cums[2] = {m->cum, m->qcum};
	for (int set = 0; set < 2; set++) {
		uint64_t total = 0;
		for (uint32_t c = 0; c < K; c++) {
			int64_t t1 = gen_t(&M), t2 = gen_t(&M);
			total += GEN_WFLOOR + (uint64_t)(t1 * t1) + (uint64_t)(t2 * t2);
			cums[set][c] = total;
		}
	}
	for (size_t i = 0; i < (size_t)K * RL; i++)
		m->center[i] = gen_t(&M);
	for (size_t i = 0; i < D * RL; i++)
		m->load[i] = (double)(gen_t(&M) / REAL_LDIV);
	for (size_t d = 0; d < D; d++)
		m->bias[d] = (double)(REAL_BIAS0 + (int64_t)REAL_BIAS1 * gen_t(&M));
	m->norm = isqrt128((u128)REAL_NORM * REAL_NORM * D / 128);
	*out = m;
	return ANN_OK;
}

static void real_row(const ann_gen_model *m, ann_gen_set set, ann_rng *v, float *out, uint32_t *comp)
{
	const size_t D = m->dim;
	uint32_t c = pick_cum(set == ANN_GEN_QUERY ? m->qcum : m->cum, m->clusters, v);
	if (comp)
		*comp = c;
	int64_t s = real_scale(v);
	double h[RL];
	const int32_t *ctr = m->center + (size_t)c * RL;
	for (size_t l = 0; l < RL; l++)
		h[l] = (double)((int64_t)ctr[l] * 256 + s * gen_t(v));
	if (set == ANN_GEN_QUERY)
		for (size_t l = 0; l < RL; l++)
			h[l] = h[l] + (double)(REAL_QSHIFT * (int64_t)gen_t(v));
	/* Pass 1: pre-activations (exact integers in doubles, |x| < 2^38), kept as
	 * q = p >> SHIFT in out (exact in a float: q < 2^23), and the sum of q^2. */
	u128 sum = 0;
	for (size_t b = 0; b < D; b += GEN_DBLK) {
		size_t nb = ANN_MIN((size_t)GEN_DBLK, D - b);
		double x[GEN_DBLK];
		for (size_t i = 0; i < nb; i++) {
			int64_t t1 = gen_t(v), a = real_scale(v);
			x[i] = m->bias[b + i] + (double)(t1 * a * REAL_AMB);
		}
		for (size_t i = 0; i < nb; i++) {
			const double *w = m->load + (b + i) * RL;
			double acc = 0;
			for (size_t l = 0; l < RL; l++)
				acc = acc + w[l] * h[l];
			x[i] = x[i] + acc;
		}
		uint64_t bs = 0; /* < 256 * 2^46 */
		for (size_t i = 0; i < nb; i++) {
			uint64_t q = x[i] > 0 ? (uint64_t)x[i] >> REAL_SHIFT : 0;
			bs += q * q;
			out[b + i] = (float)q;
		}
		sum += bs;
	}
	/* Pass 2: scale to the target norm, round, soft cap. */
	uint64_t nrm = isqrt128(sum);
	uint64_t mult = nrm ? (m->norm << 32) / nrm : 0;
	for (size_t i = 0; i < D; i++) {
		uint64_t y = ((uint64_t)out[i] * mult + ((uint64_t)1 << 31)) >> 32;
		if (y > REAL_CAP)
			y = REAL_CAP + (y - REAL_CAP) * 3 / 10;
		out[i] = (float)(y > 255 ? 255 : y);
	}
}

static void gen_row(const ann_gen_model *m, ann_rng *v, float *out, uint32_t *comp)
{
	const size_t D = m->dim, R = GEN_RANK;
	uint32_t c = pick_component(m, v);
	if (comp)
		*comp = c;
	float w[GEN_RANK], z[GEN_DBLK];
	for (size_t j = 0; j < R; j++)
		w[j] = (float)gen_t(v);
	const float *mean = m->mean + c * D, *s = m->scale + c * D, *f = m->factor + c * R * D;
	for (size_t b = 0; b < D; b += GEN_DBLK) {
		size_t nb = ANN_MIN((size_t)GEN_DBLK, D - b);
		for (size_t i = 0; i < nb; i++)
			z[i] = (float)gen_t(v);
		float *restrict x = out + b;
		for (size_t i = 0; i < nb; i++)
			x[i] = mean[b + i] + z[i] * s[b + i];
		for (size_t j = 0; j < R; j++) {
			const float *fj = f + j * D + b;
			float wj = w[j];
			for (size_t i = 0; i < nb; i++)
				x[i] = x[i] + wj * fj[i];
		}
		for (size_t i = 0; i < nb; i++) {
			int32_t y = (int32_t)((x[i] + 0x1.8p23f) - 0x1.8p23f);
			y = y < 0 ? 0 : y;
			y = y > 255 ? 255 : y;
			x[i] = (float)y;
		}
	}
}

void ann_gen_rows(const ann_gen_model *m, ann_gen_set set, uint64_t first, size_t n, float *out,
		  uint32_t *comp)
{
	for (size_t i = 0; i < n; i++) {
		ann_rng root = m->root[set], v;
		ann_rng_fork(&root, first + i, &v);
		if (m->profile == ANN_GEN_REAL)
			real_row(m, set, &v, out + i * m->dim, comp ? comp + i : NULL);
		else
			gen_row(m, &v, out + i * m->dim, comp ? comp + i : NULL);
	}
}

/* Writes rows [0, n) of a set to path, in chunks of buf_rows. */
static int gen_file(const ann_gen_model *m, ann_gen_set set, uint64_t n, const char *path, float *buf,
		    size_t buf_rows, const ann_gen_opts *o, const char *phase, ann_error *err)
{
	ann_vwriter *w;
	ANN_TRY(ann_vwriter_open(path, m->dim, &w, err));
	uint64_t last = ann_now_ns();
	for (uint64_t done = 0; done < n;) {
		size_t k = (size_t)ANN_MIN((uint64_t)buf_rows, n - done);
		ann_gen_rows(m, set, done, k, buf, NULL);
		int rc = ann_vwriter_write_f32(w, buf, k, err);
		if (rc < 0) {
			ann_vwriter_abort(w);
			return rc;
		}
		done += k;
		if (o->progress) {
			uint64_t now = ann_now_ns();
			if (now - last >= GEN_PROGRESS_NS || done == n) {
				o->progress(o->progress_ctx, phase, done, n);
				last = now;
			}
		}
	}
	return ann_vwriter_close(w, err);
}

int ann_gen_write(const ann_gen_opts *o, const char *base_path, const char *query_path, ann_error *err)
{
	uint32_t K = 0;
	ANN_TRY(check_opts(o, &K, err));
	if (o->n == 0)
		return ann_err(err, ANN_E_INVAL, "gen: n = 0, expected at least one base vector");
	if (!base_path || (o->nq && !query_path))
		return ann_err(err, ANN_E_INVAL, "gen: missing %s path", base_path ? "query" : "base");
	/* Format limits and free space before anything is written (issue 13
	 * D11: --n 3000000000 wrote 10 GB before the int32 count stopped it). */
	ANN_TRY(ann_vfile_check_size(base_path, o->n, o->dim, err));
	if (o->nq)
		ANN_TRY(ann_vfile_check_size(query_path, o->nq, o->dim, err));
	ann_gen_model *m;
	ANN_TRY(ann_gen_model_new(o, &m, err));
	size_t rows = ANN_MAX((size_t)1, GEN_BUF_FLOATS / o->dim);
	float *buf = ann_malloc(rows * o->dim * sizeof(float));
	int rc;
	if (!buf) {
		rc = ann_err(err, ANN_E_NOMEM, "gen: out of memory for a %zu-row buffer", rows);
		goto done;
	}
	rc = gen_file(m, ANN_GEN_BASE, o->n, base_path, buf, rows, o, "gen", err);
	if (rc >= 0 && o->nq)
		rc = gen_file(m, ANN_GEN_QUERY, o->nq, query_path, buf, rows, o, "gen-queries", err);
done:
	ann_free(buf);
	ann_gen_model_free(m);
	return rc;
}
