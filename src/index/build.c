/* SPDX-License-Identifier: MIT */
/*
 * build.c: the out-of-core build pipeline (docs/DESIGN.md, "Build").
 *
 *   sample   one sequential pass draws a uniform sample (selection sampling,
 *            Knuth's Algorithm S) into RAM
 *   train    the router learns from the sample; the sample is then freed
 *   route    a second pass routes each chunk of vectors and appends every
 *            (id, vector) to its partitions' runs in the spill file
 *   pack     each partition is gathered from the runs, encoded as one block
 *            and published to the store, in batches of commits
 *   publish  meta and router blob commit last; the temporary directory is
 *            renamed to the index directory
 *
 * Invariants:
 *  1. Memory. Peak use is max(sample + k-means work, spill buffer + route
 *     chunk, largest partition + its block) + router + BUILD_FIXED_BYTES;
 *     each of the three terms is held within mem_bytes, checked before it is
 *     allocated (ANN_E_BUDGET names the shortfall).
 *  2. Atomic appearance. Everything is written under "DIR.build-state/"
 *     (build_state.h); the index grows in its index/ and DIR appears only by
 *     a rename of that with RENAME_NOREPLACE after the last commit, so DIR
 *     is either absent or a complete index. The state goes after the rename.
 *  3. Ids are the 0-based positions of the vectors in the input file.
 *  4. Temporaries. Builds before the resumable one worked in "DIR.tmp.<pid>"
 *     holding BUILD_MARKER (pid and start time); a build still removes every
 *     such directory whose process is gone (or whose pid now belongs to a
 *     process started later). Nothing without a marker is touched.
 *  5. Resumable and deterministic. The units of work are the sample, the
 *     router, each routed chunk (its partition numbers, in the route log),
 *     the spill runs (a checkpoint after each run, taken at a chunk
 *     boundary) and the pack commits (the committed partitions are a prefix
 *     0..p-1 of the store's directory). Each is durable before it counts as
 *     done. The index depends only on the data and the options in
 *     build_options() (not on --threads, --mem beyond the sample size it
 *     gives, nor on where runs or commits fall): routing always uses the
 *     router as reloaded from its saved blob, and a partition's records come
 *     back in arrival order whatever the runs. So a resumed build equals an
 *     uninterrupted one, byte for byte past blocks.dat's header.
 *
 * The phases live in build_route.c and build_pack.c, partbuild in
 * build_part.c (build_int.h lists them).
 */
#include "distance.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>

#include "build_defaults.h"
#include "build_int.h"
#include "dirs.h"
#include "index_meta.h"

void ann_build_opts_init(ann_build_opts *o)
{
	memset(o, 0, sizeof *o);
	o->router = ANN_ROUTER_KMEANS;
	o->store = ANN_STORE_FILE;
	o->encoding = ANN_ENC_AUTO;
	o->metric = ANN_METRIC_L2;
	o->zstd_level = 3;
	o->shuffle = -1;
	o->mem_bytes = (size_t)1 << 30;
	o->threads = 2;
	o->seed = 1;
	o->kmeans.kmeans_iters = 20;
	o->kmeans.balance = -1;          /* auto (build_defaults.c) */
	o->kmeans.router_bits = ANN_AUTO;
	o->code_bits = ANN_AUTO;
	o->code_factors = 16;            /* slim records (codes block 2.1): docs/DESIGN.md "Slim head records" */
	o->code_order = 1;               /* page-local rows (codes block 2.2): docs/DESIGN.md "Page-local row order" */
	o->page_fit = 1;                 /* docs/DESIGN.md "Page-fitted heads" */
	o->replicas = 1;
	o->replica_eps = 0.1;
	o->tune = -1;                    /* docs/DESIGN.md "Self-tuned adaptive probing" */
	o->directions = -1;              /* docs/DESIGN.md "Directional probe order" */
	o->kmeans.hnsw_m = 0;            /* auto: router_kmeans.c km_graph */
	o->kmeans.hnsw_ef_construction = 200;
	o->annann.embed_dim = 64;
	o->annann.hidden[0] = 256;
	o->annann.ae_epochs = 10;
	o->annann.dec_epochs = 0;
	o->annann.dec_alpha = 1.0;
	o->annann.recon_weight = 1.0;
	o->annann.kmeans_iters = o->kmeans.kmeans_iters;
	o->annann.hnsw_m = 32;
	o->annann.hnsw_ef_construction = o->kmeans.hnsw_ef_construction;
	o->nlsh.hidden[0] = 256;
	o->nlsh.knn_k = 10;
	o->nlsh.imbalance = 0.03;
	o->nlsh.nlsh_epochs = 20;
	o->nlsh.soft_labels = 1;
	o->nlsh.joint_rounds = 5;
	o->nlsh.joint_lambda = 1.0;
}

const char *ann_encoding_name(ann_encoding e)
{
	switch (e) {
	case ANN_ENC_AUTO: return "auto";
	case ANN_ENC_F32: return "f32";
	case ANN_ENC_F16: return "f16";
	case ANN_ENC_U8: return "u8";
	case ANN_ENC_I8: return "i8";
	case ANN_ENC_SQ8: return "sq8";
	default: return "?";
	}
}

ann_block_encoding ann_encoding_block(ann_encoding e)
{
	switch (e) {
	case ANN_ENC_F16: return ANN_BLOCK_F16;
	case ANN_ENC_U8: return ANN_BLOCK_U8;
	case ANN_ENC_I8: return ANN_BLOCK_I8;
	case ANN_ENC_SQ8: return ANN_BLOCK_SQ8;
	default: return ANN_BLOCK_F32;
	}
}

/* A notice: what was resumed, why a state was dropped (o->notice, else
 * o->log). */
void build_notice(const build *b, const char *fmt, ...)
{
	ann_log_fn fn = b->o->notice ? b->o->notice : b->o->log;
	void *ctx = b->o->notice ? b->o->notice_ctx : b->o->log_ctx;
	if (!fn)
		return;
	char line[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	fn(ctx, line);
}

void build_notice_cb(void *ctx, const char *line)
{
	build_notice(ctx, "%s", line);
}

/* Reports progress, then polls the caller's cancel callback: the sample,
 * route and pack passes stop at their next chunk with ANN_E_CANCELED. */
int build_check_cancel(const build *b, const char *phase, uint64_t done, uint64_t total, ann_error *err)
{
	if (b->o->cancel && b->o->cancel(b->o->cancel_ctx))
		return ann_err(err, ANN_E_CANCELED, "build canceled during %s (%llu of %llu)", phase,
			       (unsigned long long)done, (unsigned long long)total);
	return ANN_OK;
}

int build_progress(const build *b, const char *phase, uint64_t done, uint64_t total, ann_error *err)
{
	if (b->o->progress)
		b->o->progress(b->o->progress_ctx, phase, done, total);
	return build_check_cancel(b, phase, done, total, err);
}

/* Checks the options and resolves what depends on the data: the encoding,
 * then the auto fields (build_defaults.c) into *own, which b->o points to
 * from then on, then the partition count, copies and sample size. */
int build_resolve_options(build *b, ann_build_opts *own, ann_error *err)
{
	if (own != b->o)
		*own = *b->o;
	b->o = own;
	const ann_build_opts *o = b->o;
	if (b->in_type != ANN_DTYPE_F32 && b->in_type != ANN_DTYPE_U8 && b->in_type != ANN_DTYPE_I8)
		return ann_err(err, ANN_E_BADINPUT, "%s: holds integers ids, not vectors (expected float, u8 or i8 data)",
			       b->data_path);
	if (b->n == 0)
		return ann_err(err, ANN_E_BADINPUT, "%s: holds no vectors", b->data_path);
	if (b->n > INT64_MAX / 2)
		return ann_err(err, ANN_E_BADINPUT, "%s: too many vectors", b->data_path);
	b->enc = o->encoding;
	if (b->enc == ANN_ENC_AUTO)
		b->enc = b->in_type == ANN_DTYPE_U8 ? ANN_ENC_U8 : b->in_type == ANN_DTYPE_I8 ? ANN_ENC_I8 : ANN_ENC_F32;
	if (b->enc < ANN_ENC_F32 || b->enc > ANN_ENC_SQ8)
		return ann_err(err, ANN_E_INVAL, "encoding %d is unknown", (int)b->enc);
	if (o->metric == ANN_METRIC_COSINE && (b->enc == ANN_ENC_U8 || b->enc == ANN_ENC_I8))
		return ann_err(err, ANN_E_INVAL, "the cosine metric stores unit vectors: use encoding f32, f16 or sq8, "
			       "not %s", ann_encoding_name(b->enc));
	if ((b->enc == ANN_ENC_U8 && b->in_type == ANN_DTYPE_U8) || (b->enc == ANN_ENC_I8 && b->in_type == ANN_DTYPE_I8))
		b->pay_type = b->in_type;
	else
		b->pay_type = ANN_DTYPE_F32;
	b->pay_bytes = (size_t)b->d * ann_dtype_size(b->pay_type);
	if ((o->code_bits > 8 && o->code_bits != ANN_AUTO && o->code_bits != ANN_AUTO_BITS) ||
	    (o->kmeans.router_bits > 8 && o->kmeans.router_bits != ANN_AUTO))
		return ann_err(err, ANN_E_INVAL, "code bits %u, router bits %u: each must be within 0..8 or auto",
			       o->code_bits, o->kmeans.router_bits);
	if (o->kmeans.router_bits == ANN_AUTO && (o->router != ANN_ROUTER_KMEANS || o->metric != ANN_METRIC_L2))
		own->kmeans.router_bits = 0;
	uint64_t user_sample = o->sample; /* a sample the defaults choose shrinks to the budget */
	ann_build_resolve_defaults(own, b->n, b->d, b->enc);
	uint64_t parts = o->partitions;
	if (parts > b->n || parts > (1u << 30))
		return ann_err(err, ANN_E_INVAL, "%llu partitions for %llu vectors: at most one partition per vector",
			       (unsigned long long)parts, (unsigned long long)b->n);
	b->nparts = (uint32_t)parts;
	b->copies = o->replicas ? o->replicas : 1;
	if (b->copies > 8 || b->copies > b->nparts)
		return ann_err(err, ANN_E_INVAL, "replicas %u: must be within 1..min(8, partitions)", b->copies);
	if (o->replica_eps < 0 || !isfinite(o->replica_eps))
		return ann_err(err, ANN_E_INVAL, "replica eps must be a non-negative number");
	if (o->kmeans.soar_lambda < 0 || !isfinite(o->kmeans.soar_lambda))
		return ann_err(err, ANN_E_INVAL, "soar lambda %g: must be a non-negative number",
			       o->kmeans.soar_lambda);
	if (o->kmeans.soar_lambda > 0 && o->router != ANN_ROUTER_KMEANS)
		return ann_err(err, ANN_E_INVAL, "SOAR spilling needs the kmeans router (it ranks centroids), not %s",
			       ann_router_name(o->router));
	if (build_balance(o) != 0 && !(build_balance(o) >= 1.0)) /* auto (< 0) is resolved above */
		return ann_err(err, ANN_E_INVAL, "balance %g: the cap is balance * n / partitions, so it must be >= 1",
			       build_balance(o));
	if (o->zstd_level < 0 || o->zstd_level > 22)
		return ann_err(err, ANN_E_INVAL, "zstd level %d: must be within 0..22 (0 = uncompressed)", o->zstd_level);
	if (o->kmeans.router_bits > 8 ||
	    (o->kmeans.router_bits && (o->router != ANN_ROUTER_KMEANS || o->metric != ANN_METRIC_L2)))
		return ann_err(err, ANN_E_INVAL, "router bits %u: the compact centroid router takes 1..8 bits (0 = the "
			       "graph) and needs the kmeans router under metric l2", o->kmeans.router_bits);
	if (o->code_bits > 8)
		return ann_err(err, ANN_E_INVAL, "code bits %u: must be within 1..8 (0 = no codes)", o->code_bits);
	if (o->code_factors != 0 && o->code_factors != 16 && o->code_factors != 32)
		return ann_err(err, ANN_E_INVAL, "code factors %u: must be 16 or 32 (0 = 32)", o->code_factors);
	if (o->code_order > 1)
		return ann_err(err, ANN_E_INVAL, "code order %u: must be 0 (id order) or 1 (page-local)", o->code_order);
	if (o->page_fit > 1)
		return ann_err(err, ANN_E_INVAL, "page fit %u: must be 0 (off) or 1 (on)", o->page_fit);
	if (o->code_bits && b->enc != ANN_ENC_F32 && b->enc != ANN_ENC_U8 && b->enc != ANN_ENC_I8)
		return ann_err(err, ANN_E_INVAL, "codes need encoding f32, u8 or i8 (exact rows are stored raw), not %s",
			       ann_encoding_name(b->enc));
	if (o->directions < -1 || o->directions > (int)ANN_DIRS_MAX)
		return ann_err(err, ANN_E_INVAL, "directions %d: must be within 0..%u, or -1 (auto)", o->directions,
			       ANN_DIRS_MAX);
	/* asked for explicitly, they must apply (auto fits them only where they do) */
	if (o->directions > 0 && (o->router != ANN_ROUTER_KMEANS || !o->code_bits || !ann_metric_euclid(o->metric) ||
				  (uint64_t)o->directions >= b->d))
		return ann_err(err, ANN_E_INVAL, "directions %d: the directional probe order needs the kmeans router, "
			       "codes, metric l2 or cosine and fewer directions than dimensions; the options resolved to router "
			       "%s, %s, metric %s, %u dimensions", o->directions, ann_router_name(o->router),
			       o->code_bits ? "codes" : "no codes (format 1 blocks)", ann_metric_name(o->metric), b->d);
	/* The sample: what k-means needs, within half the budget. */
	uint64_t want = o->sample ? o->sample : ANN_MIN(b->n, (uint64_t)256 * b->nparts);
	want = ANN_MIN(want, b->n);
	uint64_t fit = (o->mem_bytes / 2) / ((uint64_t)b->d * sizeof(float));
	if (want > fit) {
		if (user_sample)
			return ann_err(err, ANN_E_BUDGET, "a sample of %llu vectors needs %llu bytes, more than half the "
				       "budget (%zu bytes)", (unsigned long long)want,
				       (unsigned long long)(want * b->d * sizeof(float)), o->mem_bytes);
		want = fit;
	}
	if (want < b->nparts)
		return ann_err(err, ANN_E_BUDGET, "%u partitions need a sample of at least %u vectors (%llu bytes); "
			       "half of the budget of %zu bytes holds %llu", b->nparts, b->nparts,
			       (unsigned long long)b->nparts * b->d * sizeof(float), o->mem_bytes,
			       (unsigned long long)fit);
	b->sample_n = (size_t)want;
	return ANN_OK;
}

/* The options that change the index, resolved, as "key=value" lines: the
 * saved state of a build resumes only under the same ones. Not among them:
 * threads, the memory budget (only through the sample size it gives), the
 * callbacks, and the row order of codes blocks (code_order): every block
 * says its own order, so a build resumed under another --row-order holds
 * blocks of both, all valid (meta codes.order is the last run's), while a
 * new key would make every state saved by an older build, whose default
 * order was id, start over instead of resuming. */
static char *build_options(const build *b)
{
	const ann_build_opts *o = b->o;
	const ann_kmeans_router_opts *k = &o->kmeans;
	const ann_annann_router_opts *a = &o->annann;
	const ann_nlsh_router_opts *nl = &o->nlsh;
	bool annann = o->router == ANN_ROUTER_ANNANN;
	const uint32_t *hidden = annann ? a->hidden : nl->hidden;
	size_t cap = 2048;
	char *s = ann_malloc(cap);
	if (!s)
		return NULL;
	snprintf(s, cap,
		 "dim=%u\nvectors=%llu\ninput_type=%d\nrouter=%s\npartitions=%u\nstore=%d\nencoding=%s\nmetric=%d\n"
		 "zstd_level=%d\nshuffle=%d\ndictionary=%d\nseed=%llu\nsample=%zu\nkmeans_iters=%u\nbalance=%.17g\n"
		 "replicas=%u\nreplica_eps=%.17g\nsoar_lambda=%.17g\nhnsw_m=%u\nhnsw_ef_construction=%u\n"
		 "embed_dim=%u\nhidden=%u,%u,%u,%u\nae_epochs=%u\ndec_epochs=%u\ndec_alpha=%.17g\n"
		 "recon_weight=%.17g\nknn_k=%u\nimbalance=%.17g\nnlsh_epochs=%u\nsoft_labels=%d\njoint_rounds=%u\n"
		 "joint_lambda=%.17g\ncode_bits=%u\nroute_chunk=%u\nrouter_bits=%u\nnlsh_augment=%.17g\n"
		 "kmeans_coarse=%u\nkmeans_assign=%s\n",
		 b->d, (unsigned long long)b->n, (int)b->in_type, ann_router_name(o->router), b->nparts, (int)o->store,
		 ann_encoding_name(b->enc), (int)o->metric, o->zstd_level, o->shuffle, o->dictionary != 0,
		 (unsigned long long)o->seed, b->sample_n, build_kmeans_iters(o), build_balance(o), b->copies,
		 o->replica_eps, k->soar_lambda, annann ? a->hnsw_m : k->hnsw_m,
		 annann ? a->hnsw_ef_construction : k->hnsw_ef_construction, a->embed_dim, hidden[0], hidden[1],
		 hidden[2], hidden[3], a->ae_epochs, a->dec_epochs, a->dec_alpha, a->recon_weight, nl->knn_k, nl->imbalance,
		 nl->nlsh_epochs, nl->soft_labels, nl->joint_rounds, nl->joint_lambda, o->code_bits, ROUTE_CHUNK,
		 k->router_bits, (double)nl->nlsh_augment, ann_router_kmeans_coarse(k->kmeans_coarse, b->nparts),
		 ANN_KMEANS_ASSIGN_RULE);
	if (o->code_factors == 16) /* only then: older states keep their fingerprint */
		snprintf(s + strlen(s), cap - strlen(s), "code_factors=16\n");
	/* Fitting moves rows between partitions: a state packed without it
	 * must not resume with it (nor the reverse), so it is part of the key
	 * whenever it applies. */
	if (build_fit_applies(b))
		snprintf(s + strlen(s), cap - strlen(s), "page_fit=1\n");
	return s;
}

/* Loads a router from its saved blob (the one routing and the index use). */
static int router_from_unit(build *b, const void *blob, size_t len, uint32_t ef, ann_error *err)
{
	ann_router_free(b->router);
	b->router = NULL;
	ANN_TRY(ann_router_load(b->o->router, blob, len, b->d, b->o->metric, &b->router, err));
	if (ef && !ann_router_kmeans_ef(b->router)) /* a unit saved before the blob held the ef */
		ann_router_kmeans_set_ef(b->router, ef);
	b->nparts = b->router->nparts;
	return ANN_OK;
}

static int save_router(build *b, const char *unit, double secs, ann_error *err)
{
	uint8_t *blob = NULL;
	size_t len = 0;
	ANN_TRY(b->router->ops->save(b->router, &blob, &len, err));
	uint32_t ef = ann_router_kmeans_ef(b->router);
	int rc = ann_bstate_unit_put(b->st, unit, blob, len, ef, secs, err);
	if (rc == ANN_OK)
		rc = router_from_unit(b, blob, len, ef, err);
	ann_free(blob);
	return rc;
}

/* 1 and the router loaded when unit is saved, else 0. */
static int load_router(build *b, const char *unit, double *secs, ann_error *err)
{
	void *blob;
	size_t len;
	uint64_t ef = 0;
	int got = ann_bstate_unit_get(b->st, unit, &blob, &len, &ef, secs, err);
	if (got != 1)
		return got;
	int rc = ef > ANN_MAX_EF ? ann_err(err, ANN_E_CORRUPT, "build state: unit %s holds ef %llu", unit,
					   (unsigned long long)ef)
				 : router_from_unit(b, blob, len, (uint32_t)ef, err);
	ann_free(blob);
	return rc < 0 ? rc : 1;
}

/* Phases 1 and 2: the sample and the router, each a saved unit. */
static int sample_and_train(build *b, ann_error *err)
{
	int got = load_router(b, "router", &b->t_train, err);
	ANN_TRY(got);
	if (got == 1) {
		build_notice(b, "resuming: router done (%u partitions)", b->nparts);
		return ANN_OK;
	}
	/* 1. sample */
	const ann_build_opts *o = b->o;
	int rc = ANN_OK;
	void *saved = NULL;
	size_t len = 0;
	uint64_t taken = 0;
	float *sample = NULL;
	got = ann_bstate_unit_get(b->st, "sample", &saved, &len, &taken, &b->t_sample, err);
	ANN_TRY(got);
	if (got == 1) {
		if (taken > b->sample_n || len != taken * b->d * sizeof(float)) {
			ann_free(saved);
			return ann_err(err, ANN_E_CORRUPT, "build state: the saved sample holds %zu bytes for %llu vectors",
				       len, (unsigned long long)taken);
		}
		sample = saved;
		b->sample_n = (size_t)taken;
		build_notice(b, "resuming: sample done (%zu vectors)", b->sample_n);
	} else {
		uint64_t t0 = ann_now_ns();
		ann_rng rng;
		ann_rng_seed(&rng, o->seed ^ 0x5a4d504c45ull);
		sample = ann_malloc(b->sample_n * b->d * sizeof(float));
		if (!sample)
			return ann_err(err, ANN_E_NOMEM, "build: out of memory for a sample of %zu vectors", b->sample_n);
		ANN_CHECK(rc, build_draw_sample(b, &rng, sample, err));
		b->t_sample = build_secs_since(t0);
		ANN_CHECK(rc, ann_bstate_unit_put(b->st, "sample", sample, b->sample_n * b->d * sizeof(float), b->sample_n,
						  b->t_sample, err));
	}
	/* 2. train */
	uint64_t t0 = ann_now_ns();
	/* The router sees the resolved encoding: the k-means router stores the
	 * centroids of u8 data as uint8. */
	ann_build_opts ro = *o;
	ro.encoding = b->enc;
	ANN_CHECK(rc, ann_router_train(&ro, sample, b->sample_n, b->d, b->nparts, &b->router, err));
	if (b->router->ops->calibrate) { /* k-means: the single-query routing ef (docs/DESIGN.md) */
		ann_router_env env;
		ann_router_env_from(&ro, &env);
		ANN_CHECK(rc, b->router->ops->calibrate(b->router, sample, b->sample_n, &env, err));
	}
	b->t_train = build_secs_since(t0);
	ANN_CHECK(rc, save_router(b, "router", b->t_train, err));
	ANN_CHECK(rc, build_check_cancel(b, "train", 1, 1, err));
fail:
	ann_free(sample);
	return rc;
}

/* Does the state go with this error? Yes when no rerun of the same build
 * gets past it (bad input or options, corrupt state), and when the caller
 * canceled (ann_cancel_fn: the work undoes what it wrote); otherwise (I/O,
 * a full disk, memory, budget) it stays for a resume. A killed build never
 * gets here: its state stays. */
static bool final_error(int rc)
{
	return rc == ANN_E_INVAL || rc == ANN_E_BADINPUT || rc == ANN_E_CORRUPT || rc == ANN_E_FORMAT ||
	       rc == ANN_E_CANCELED;
}

/* Whether the index takes synthetic tuning (ann_tune_synthetic), from the
 * resolved options; else why not. */
static const char *build_tune_refusal(const build *b)
{
	const ann_build_opts *o = b->o;
	if (o->router != ANN_ROUTER_KMEANS || o->code_bits == 0 || !ann_metric_euclid(o->metric))
		return "adaptive probing needs the k-means router, codes blocks and l2 or cosine";
	if (b->nparts < 2 || b->n < (uint64_t)ANN_TUNE_SYNTHETIC_QUERIES + ANN_TUNE_SCALE_ROWS)
		return "adaptive probing needs 2 partitions, and synthetic tuning 2256 vectors"; /* 2000 + 256 */
	return NULL;
}

/* 6a. the directional probe order (docs/DESIGN.md "Directional probe
 * order"), before the tuning so that its model is fitted on the order the
 * searches use. Auto: as many directions (up to ANN_DIRS_AUTO_MAX) as the
 * router's RAM leaves of ANN_RAM_PER_VECTOR bytes per vector. The index is
 * published and complete; a fit that fails leaves it so and says why. */
static void build_directions(build *b, const char *index_dir)
{
	const ann_build_opts *o = b->o;
	if (o->directions == 0 || o->router != ANN_ROUTER_KMEANS || o->code_bits == 0 || !ann_metric_euclid(o->metric) ||
	    b->nparts < 2)
		return;
	ann_router_env env;
	ann_router_env_from(o, &env);
	ann_error e = {0};
	uint32_t m = o->directions > 0 ? (uint32_t)o->directions : 0;
	if (o->directions < 0) {
		ann_index *x;
		ann_index_info in;
		if (ann_index_open(index_dir, &x, &e) < 0) {
			ann_router_log(&env, "directional probe order not fitted: %s", e.msg);
			return;
		}
		int rc = ann_index_get_info(x, &in, &e);
		ann_index_close(x);
		if (rc < 0) {
			ann_router_log(&env, "directional probe order not fitted: %s", e.msg);
			return;
		}
		m = ann_dirs_auto_m(&in);
		if (m == 0) {
			uint64_t esize = in.encoding == ANN_ENC_U8 || in.encoding == ANN_ENC_I8 ? 1 : 4;
			ann_router_log(&env, "directional probe order: no room (router %.2f of %u bytes per vector in RAM, "
				       "disk %.3f of the raw vectors' 1.5)",
				       in.vectors ? (double)in.router_ram_bytes / (double)in.vectors : 0.0,
				       ANN_RAM_PER_VECTOR, in.vectors ? (double)in.bytes_on_disk /
				       (double)(in.vectors * in.dim * esize) : 0.0);
			return;
		}
	}
	uint64_t t0 = ann_now_ns();
	uint32_t fitted = 0;
	if (ann_tune_directions(index_dir, m, o->progress, o->progress_ctx, &fitted, &e) < 0)
		ann_router_log(&env, "directional probe order not fitted: %s (the index is complete; annann tune "
			       "--directions fits it)", e.msg);
	else
		ann_router_log(&env, "directional probe order: %u directions a partition in %.1fs (%u with a stretch)",
			       m, build_secs_since(t0), fitted);
}

/* 6. self-tuning (docs/DESIGN.md "Self-tuned adaptive probing"): the index is
 * published and complete; a fit that fails leaves it so and says why. */
static void build_self_tune(build *b, const char *index_dir)
{
	const ann_build_opts *o = b->o;
	bool large = b->nparts >= ANN_TUNE_AUTO_MIN_PARTS && b->n >= ANN_TUNE_AUTO_MIN_VECTORS;
	if (o->tune == 0 || build_tune_refusal(b) || (o->tune < 0 && !large))
		return;
	ann_router_env env;
	ann_router_env_from(o, &env);
	ann_tune_opts to = {.progress = o->progress, .progress_ctx = o->progress_ctx};
	ann_tune_report rep;
	ann_error e = {0};
	uint64_t t0 = ann_now_ns();
	if (ann_tune_synthetic(index_dir, b->data_path, ANN_TUNE_SYNTHETIC_QUERIES, o->seed, &to, &rep, &e) < 0)
		ann_router_log(&env, "adaptive probing not fitted: %s (the index is complete; annann tune fits it)",
			       e.msg);
	else
		ann_router_log(&env, "adaptive probing: fitted on %u synthetic queries in %.1fs (R^2 %.3f, first stage %u "
			       "partitions); annann tune refits it on a query log", rep.queries, build_secs_since(t0),
			       rep.r2, rep.p1);
}

int ann_build(const char *data_path, const char *index_dir, const ann_build_opts *o, ann_error *err)
{
	ann_blas_single();
	build b;
	memset(&b, 0, sizeof b);
	ann_build_opts defaults;
	if (!o) {
		ann_build_opts_init(&defaults);
		o = &defaults;
	}
	b.o = o;
	b.data_path = data_path;
	char *opts = NULL, *index_tmp = NULL;
	int rc;
	uint64_t t_all = ann_now_ns();
	if (!data_path || !index_dir || !*index_dir)
		return ann_err(err, ANN_E_INVAL, "build: data path and index directory are required");
	if (o->mem_bytes < ((size_t)16 << 20))
		return ann_err(err, ANN_E_BUDGET, "build: a memory budget of %zu bytes is below the 16 MiB minimum",
			       o->mem_bytes);
	struct stat st;
	if (stat(index_dir, &st) == 0) {
		ann_bstate_drop_published(index_dir, build_notice_cb, &b);
		return ann_err(err, ANN_E_EXISTS, "%s: already exists; remove it or choose another directory", index_dir);
	}
	build_remove_stale_temps(index_dir, o);
	ANN_CHECK(rc, ann_vreader_open(data_path, &b.in, err));
	b.n = ann_vreader_count(b.in);
	b.d = ann_vreader_dim(b.in);
	b.in_type = ann_vreader_dtype(b.in);
	ANN_CHECK(rc, build_resolve_options(&b, &b.opts, err));
	const char *no_tune = o->tune > 0 ? build_tune_refusal(&b) : NULL;
	if (no_tune) {
		rc = ann_err(err, ANN_E_INVAL, "tune on: %s (the options resolved to %s)", no_tune,
			     b.o->code_bits ? "codes blocks" : "format 1 blocks: add codes");
		goto fail;
	}
	{
		const ann_build_opts *r = b.o;
		ann_router_env env; /* the build's log */
		ann_router_env_from(r, &env);
		char rb[48] = "", cb[48] = "format 1 blocks (zstd)";
		if (r->router == ANN_ROUTER_KMEANS && r->kmeans.router_bits)
			snprintf(rb, sizeof rb, " (compact: %u-bit centroid codes)", r->kmeans.router_bits);
		if (r->code_bits)
			snprintf(cb, sizeof cb, "codes blocks (rabitq, %u bit%s)", r->code_bits, r->code_bits == 1 ? "" : "s");
		ann_router_log(&env, "configuration: %u partitions, %s router%s, %s, balance %g", b.nparts,
			       ann_router_name(r->router), rb, cb, build_balance(r));
	}

	/* The saved state: resumed when it matches data and options. */
	ann_bstate_fp fp;
	ANN_CHECK(rc, ann_bstate_fingerprint_data(data_path, &fp, err));
	opts = build_options(&b);
	if (!opts) {
		rc = ann_err(err, ANN_E_NOMEM, "build: out of memory");
		goto fail;
	}
	fp.options = opts;
	ANN_CHECK(rc, ann_bstate_open(index_dir, &fp, o->restart != 0, build_notice_cb, &b, &b.st, &b.resumed, err));
	b.tmpdir = ann_bstate_path(b.st, "index");
	b.spill_path = ann_bstate_path(b.st, "spill.dat");
	if (!b.tmpdir || !b.spill_path) {
		rc = ann_err(err, ANN_E_NOMEM, "build: out of memory");
		goto fail;
	}

	/* The store: created once (unit "store" records it), reopened after. */
	ann_store_opts so;
	ann_store_opts_init(&so);
	so.kind = o->store;
	so.writable = true;
	{
		void *none;
		size_t nl;
		int got = ann_bstate_unit_get(b.st, "store", &none, &nl, NULL, NULL, err);
		ANN_CHECK(rc, got);
		ann_free(none);
		if (got == 0) {
			/* killed while creating it: nothing of it counts */
			nftw(b.tmpdir, build_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
			so.create = true;
		}
		ANN_CHECK(rc, ann_store_open(b.tmpdir, &so, &b.store, err));
		if (got == 0)
			ANN_CHECK(rc, ann_bstate_unit_put(b.st, "store", "", 0, 0, 0, err));
	}

	/* 1, 2. sample, train */
	ANN_CHECK(rc, sample_and_train(&b, err));

	/* 3. route */
	uint64_t t0 = ann_now_ns();
	int got = load_router(&b, "routed", &b.t_route, err);
	ANN_CHECK(rc, got);
	if (got == 1) {
		uint64_t spilled = 0;
		ANN_CHECK(rc, build_spill_start(&b, (size_t)16 << 20, &spilled, err));
		if (spilled != b.n) {
			rc = ann_err(err, ANN_E_CORRUPT, "%s: routing is done but the spill holds %llu of %llu vectors",
				     b.spill_path, (unsigned long long)spilled, (unsigned long long)b.n);
			goto fail;
		}
		ANN_CHECK(rc, ann_spill_finish(b.spill, err));
		build_notice(&b, "resuming: route done (%llu vectors)", (unsigned long long)b.n);
	} else {
		ANN_CHECK(rc, build_route_all(&b, err));
		b.t_route = build_secs_since(t0);
		ANN_CHECK(rc, save_router(&b, "routed", b.t_route, err));
	}

	/* 4. pack */
	t0 = ann_now_ns();
	ANN_CHECK(rc, build_pack_all(&b, err));
	b.t_pack = build_secs_since(t0);
	ann_spill_close(b.spill);
	b.spill = NULL;

	/* 5. publish */
	ANN_CHECK(rc, build_publish_meta(&b, build_secs_since(t_all), err));
	ann_store_close(b.store);
	b.store = NULL;
	/* Allocated before the rename: past it the index exists, and running out
	 * of memory must not report a build that happened as failed. */
	index_tmp = ann_malloc(strlen(index_dir) + 8);
	if (!index_tmp) {
		rc = ann_err(err, ANN_E_NOMEM, "build: out of memory for the index's parent directory name");
		goto fail;
	}
	sprintf(index_tmp, "%s/..", index_dir);
	if (renameat2(AT_FDCWD, b.tmpdir, AT_FDCWD, index_dir, RENAME_NOREPLACE) != 0) {
		rc = ann_err_sys(err, errno, "%s: cannot rename the finished index from %s", index_dir, b.tmpdir);
		goto fail;
	}
	ANN_CHECK(rc, ann_fsync_dir(index_tmp, err));
	ann_bstate_remove(b.st);
	b.st = NULL;
	build_directions(&b, index_dir);
	build_self_tune(&b, index_dir);
	rc = ANN_OK;
	goto done;
fail:
	ann_spill_close(b.spill);
	b.spill = NULL;
	ann_store_close(b.store);
	b.store = NULL;
	if (b.st && final_error(rc)) {
		ann_bstate_remove(b.st);
		b.st = NULL;
	} else if (b.st) {
		char *dir = ann_bstate_dir_name(index_dir);
		build_notice(&b, "%s: the build state is kept; the same command resumes it (--restart starts over)",
		       dir ? dir : index_dir);
		ann_free(dir);
	}
done:
	ann_bstate_close(b.st);
	ann_spill_close(b.spill);
	ann_store_close(b.store);
	ann_router_free(b.router);
	block_dict_free(b.dict);
	ann_rbq_free(b.rbq);
	ann_free(b.dict_bytes);
	ann_vreader_close(b.in);
	ann_free(b.tmpdir);
	ann_free(b.spill_path);
	ann_free(opts);
	ann_free(index_tmp);
	return rc;
}
