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
 */
#include "distance.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <math.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "block.h"
#include "build_state.h"
#include "cblock.h"
#include "dist.h"
#include "index_meta.h"
#include "router.h"
#include "spill.h"
#include "store.h"
#include "vecio.h"

#define BUILD_FIXED_BYTES ((size_t)64 << 20) /* zstd, LMDB, stdio, code: the stated overhead */
#define ROUTE_CHUNK 8192u                     /* vectors per routing chunk */
#define COMMIT_BYTES ((size_t)32 << 20)       /* block bytes per store commit (a resumed pack redoes at most one) */
#define COMMIT_NS 1000000000ull               /* ... or a commit per second of packing, whichever comes first */

/* Test hook (tests/test_resume.sh): ANNANN_BUILD_SMALL_UNITS=1 makes every
 * unit as small as it can be (a spill checkpoint before every chunk, a
 * commit per partition), so kills at random moments land between many
 * units of small data. The index is the same either way (invariant 5). */
static bool small_units(void)
{
	const char *v = getenv("ANNANN_BUILD_SMALL_UNITS");
	return v && strcmp(v, "1") == 0;
}
#define DICT_SAMPLES 64u                      /* partitions a dictionary is trained on */
#define DICT_BYTES ((size_t)112 << 10)        /* dictionary capacity */
#define BUILD_MARKER "annann-build.pid"      /* in DIR.tmp.*: "annann build pid P start S" */

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
	o->kmeans_iters = 20;
	o->replicas = 1;
	o->replica_eps = 0.1;
	o->hnsw_m = 32;
	o->hnsw_ef_construction = 200;
	o->embed_dim = 64;
	o->hidden[0] = 256;
	o->ae_epochs = 10;
	o->dec_epochs = 0;
	o->dec_alpha = 1.0;
	o->recon_weight = 1.0;
	o->knn_k = 10;
	o->imbalance = 0.03;
	o->nlsh_epochs = 20;
	o->soft_labels = 1;
	o->joint_rounds = 5;
	o->joint_lambda = 1.0;
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

typedef struct build {
	const ann_build_opts *o;
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
	double t_sample, t_train, t_route, t_pack;
	ann_bstate *st;         /* the saved state (DIR.build-state) */
	bool resumed;           /* st held state of an earlier run */
} build;

/* A notice: what was resumed, why a state was dropped (o->notice, else
 * o->log). */
static void notice(const build *b, const char *fmt, ...) ANN_PRINTF(2, 3);
static void notice(const build *b, const char *fmt, ...)
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

static void notice_cb(void *ctx, const char *line)
{
	notice(ctx, "%s", line);
}

/* Reports progress, then polls the caller's cancel callback: the sample,
 * route and pack passes stop at their next chunk with ANN_E_CANCELED. */
static int check_cancel(const build *b, const char *phase, uint64_t done, uint64_t total, ann_error *err)
{
	if (b->o->cancel && b->o->cancel(b->o->cancel_ctx))
		return ann_err(err, ANN_E_CANCELED, "build canceled during %s (%llu of %llu)", phase,
			       (unsigned long long)done, (unsigned long long)total);
	return ANN_OK;
}

static int progress(const build *b, const char *phase, uint64_t done, uint64_t total, ann_error *err)
{
	if (b->o->progress)
		b->o->progress(b->o->progress_ctx, phase, done, total);
	return check_cancel(b, phase, done, total, err);
}

/* Converts n raw vectors of the input type to floats (and normalises them
 * for the cosine metric, whose blocks hold unit vectors). */
static void to_float(const build *b, const void *raw, size_t n, float *out)
{
	size_t m = n * b->d;
	switch (b->in_type) {
	case ANN_DTYPE_U8:
		for (size_t i = 0; i < m; i++)
			out[i] = ((const uint8_t *)raw)[i];
		break;
	case ANN_DTYPE_I8:
		for (size_t i = 0; i < m; i++)
			out[i] = ((const int8_t *)raw)[i];
		break;
	default:
		memcpy(out, raw, m * sizeof(float));
		break;
	}
	if (b->o->metric == ANN_METRIC_COSINE) {
		for (size_t i = 0; i < n; i++) {
			float *v = out + i * b->d;
			double s = 0;
			for (uint32_t j = 0; j < b->d; j++)
				s += (double)v[j] * v[j];
			if (s > 0) {
				float inv = (float)(1.0 / sqrt(s));
				for (uint32_t j = 0; j < b->d; j++)
					v[j] *= inv;
			}
		}
	}
}

/* Reads the next chunk (up to `chunk` vectors, the input's position being
 * vector i) and converts it to floats in f. Returns the count read (> 0) or
 * an error: an input that ends before its header's count is ANN_E_BADINPUT. */
static int64_t read_chunk(build *b, void *raw, size_t chunk, uint64_t i, float *f, ann_error *err)
{
	int64_t got = ann_vreader_read_raw(b->in, raw, chunk, err);
	if (got == 0)
		return ann_err(err, ANN_E_BADINPUT, "%s: ends at vector %llu, expected %llu", b->data_path,
			       (unsigned long long)i, (unsigned long long)b->n);
	if (got > 0)
		to_float(b, raw, (size_t)got, f);
	return got;
}

static int resolve_options(build *b, ann_error *err)
{
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
	uint64_t parts = o->partitions ? o->partitions : ANN_MAX(1u, b->n / 1000);
	if (parts > b->n || parts > (1u << 30))
		return ann_err(err, ANN_E_INVAL, "%llu partitions for %llu vectors: at most one partition per vector",
			       (unsigned long long)parts, (unsigned long long)b->n);
	b->nparts = (uint32_t)parts;
	b->copies = o->replicas ? o->replicas : 1;
	if (b->copies > 8 || b->copies > b->nparts)
		return ann_err(err, ANN_E_INVAL, "replicas %u: must be within 1..min(8, partitions)", b->copies);
	if (o->replica_eps < 0 || !isfinite(o->replica_eps))
		return ann_err(err, ANN_E_INVAL, "replica eps must be a non-negative number");
	if (o->soar_lambda < 0 || !isfinite(o->soar_lambda))
		return ann_err(err, ANN_E_INVAL, "soar lambda %g: must be a non-negative number", o->soar_lambda);
	if (o->soar_lambda > 0 && o->router != ANN_ROUTER_KMEANS)
		return ann_err(err, ANN_E_INVAL, "SOAR spilling needs the kmeans router (it ranks centroids), not %s",
			       ann_router_name(o->router));
	if (o->balance != 0 && !(o->balance >= 1.0))
		return ann_err(err, ANN_E_INVAL, "balance %g: the cap is balance * n / partitions, so it must be >= 1",
			       o->balance);
	if (o->zstd_level < 0 || o->zstd_level > 22)
		return ann_err(err, ANN_E_INVAL, "zstd level %d: must be within 0..22 (0 = uncompressed)", o->zstd_level);
	if (o->router_bits > 8 || (o->router_bits && (o->router != ANN_ROUTER_KMEANS || o->metric != ANN_METRIC_L2)))
		return ann_err(err, ANN_E_INVAL, "router bits %u: the compact centroid router takes 1..8 bits (0 = the "
			       "graph) and needs the kmeans router under metric l2", o->router_bits);
	if (o->code_bits > 8)
		return ann_err(err, ANN_E_INVAL, "code bits %u: must be within 1..8 (0 = no codes)", o->code_bits);
	if (o->code_factors != 0 && o->code_factors != 16 && o->code_factors != 32)
		return ann_err(err, ANN_E_INVAL, "code factors %u: must be 16 or 32 (0 = 32)", o->code_factors);
	if (o->code_bits && b->enc != ANN_ENC_F32 && b->enc != ANN_ENC_U8 && b->enc != ANN_ENC_I8)
		return ann_err(err, ANN_E_INVAL, "codes need encoding f32, u8 or i8 (exact rows are stored raw), not %s",
			       ann_encoding_name(b->enc));
	/* The sample: what k-means needs, within half the budget. */
	uint64_t want = o->sample ? o->sample : ANN_MIN(b->n, (uint64_t)256 * b->nparts);
	want = ANN_MIN(want, b->n);
	uint64_t fit = (o->mem_bytes / 2) / ((uint64_t)b->d * sizeof(float));
	if (want > fit) {
		if (o->sample)
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

/* Selection sampling in one pass (Knuth, TAOCP 3.4.2, Algorithm S) over
 * vectors first..first+count-1: vector i is taken with probability
 * (want - taken) / (count - i). *taken gets how many were taken. Phase 1 of a
 * build samples the whole input; a distributed build's rank its slice. */
static int sample_range(build *b, ann_rng *rng, uint64_t first, uint64_t count, uint64_t want, float *out,
			uint64_t *taken_out, ann_error *err)
{
	size_t chunk = ROUTE_CHUNK, esz = ann_dtype_size(b->in_type);
	uint8_t *raw = ann_malloc(chunk * b->d * esz);
	float *f = ann_malloc(chunk * b->d * sizeof(float));
	int rc = ANN_OK;
	uint64_t taken = 0, i = 0;
	if (!raw || !f) {
		rc = ann_err(err, ANN_E_NOMEM, "build: out of memory for a read chunk");
		goto out;
	}
	ANN_CHECK(rc, ann_vreader_seek(b->in, first, err));
	while (i < count && taken < want) {
		int64_t got = read_chunk(b, raw, (size_t)ANN_MIN((uint64_t)chunk, count - i), first + i, f, err);
		if (got < 0) {
			rc = (int)got;
			goto out;
		}
		for (int64_t j = 0; j < got; j++, i++)
			if (ann_rng_below(rng, count - i) < want - taken)
				memcpy(out + (taken++) * b->d, f + (size_t)j * b->d, b->d * sizeof(float));
		ANN_CHECK(rc, progress(b, "sample", i, count, err));
	}
fail:
out:
	*taken_out = taken;
	ann_free(raw);
	ann_free(f);
	return rc;
}

/* Phase 1: the training sample, drawn from the whole input. */
static int draw_sample(build *b, ann_rng *rng, float *sample, ann_error *err)
{
	uint64_t taken;
	int rc = sample_range(b, rng, 0, b->n, b->sample_n, sample, &taken, err);
	if (rc >= 0)
		b->sample_n = (size_t)taken;
	return rc;
}

/* Writes the spill's runs durably and records how far they reach: every
 * vector before `upto` is in a run on disk. */
static int spill_checkpoint(build *b, uint64_t upto, ann_error *err)
{
	uint8_t *blob = NULL;
	size_t len = 0;
	ANN_TRY(ann_spill_sync(b->spill, err));
	ANN_TRY(ann_spill_checkpoint(b->spill, &blob, &len, err));
	int rc = ann_bstate_unit_put(b->st, "spill.ckpt", blob, len, upto, 0, err);
	ann_free(blob);
	return rc;
}

/* Opens the spill: at its last checkpoint when there is one (*spilled gets
 * the vectors it covers), else new. */
static int spill_start(build *b, size_t spill_mem, uint64_t *spilled, ann_error *err)
{
	void *blob;
	size_t len;
	uint64_t upto = 0;
	*spilled = 0;
	int got = ann_bstate_unit_get(b->st, "spill.ckpt", &blob, &len, &upto, NULL, err);
	ANN_TRY(got);
	if (got == 1) {
		int rc = upto > b->n ? ann_err(err, ANN_E_CORRUPT, "%s: the spill checkpoint covers %llu vectors of %llu",
					      b->spill_path, (unsigned long long)upto, (unsigned long long)b->n)
				     : ann_spill_resume(b->spill_path, b->nparts, b->pay_bytes, spill_mem, b->n * b->copies,
							blob, len, &b->spill, err);
		ann_free(blob);
		ANN_TRY(rc);
		*spilled = upto;
	} else {
		unlink(b->spill_path); /* a run written before any checkpoint: nothing in it counts */
		ANN_TRY(ann_spill_open(b->spill_path, b->nparts, b->pay_bytes, spill_mem, b->n * b->copies, &b->spill,
				       err));
	}
	ann_spill_keep(b->spill); /* close leaves it: the state is removed as a whole */
	return ANN_OK;
}

/* Phase 3: route every vector and spill it to its partitions. A chunk is
 * routed once: its partition numbers go to the route log before they are
 * used, and a resumed build reads them back from there. */
static int route_all(build *b, ann_error *err)
{
	size_t chunk = ROUTE_CHUNK, esz = ann_dtype_size(b->in_type);
	/* Buffers of this function, the centroid copy and candidate lists of the
	 * router, and per thread the assignment tiles of kmeans.h (1 MiB + up to
	 * 4096 rows of d floats). */
	size_t threads = (size_t)(b->o->threads > 0 ? b->o->threads : 1);
	size_t chunk_bytes = chunk * b->d * (esz + sizeof(float)) + chunk * b->copies * sizeof(uint32_t) +
			     (size_t)b->nparts * b->d * sizeof(float) + chunk * 8 * 8 +
			     threads * (((size_t)1 << 20) + (size_t)4096 * b->d * sizeof(float));
	size_t router = b->router->ops->ram_bytes(b->router);
	if (b->o->mem_bytes < chunk_bytes + router + ((size_t)1 << 20))
		return ann_err(err, ANN_E_BUDGET, "routing needs %zu bytes (router %zu, buffers %zu) plus a spill "
			       "buffer; the budget is %zu", chunk_bytes + router + ((size_t)1 << 20), router,
			       chunk_bytes, b->o->mem_bytes);
	size_t spill_mem = b->o->mem_bytes - chunk_bytes - router;
	uint64_t spilled = 0, routed = 0;
	ANN_TRY(spill_start(b, spill_mem, &spilled, err));
	ANN_TRY(ann_bstate_log_open(b->st, &routed, err));
	if (routed < spilled)
		return ann_err(err, ANN_E_CORRUPT, "%s: the route log covers %llu vectors, the spill checkpoint %llu",
			       b->spill_path, (unsigned long long)routed, (unsigned long long)spilled);
	routed = ANN_MIN(routed, b->n);
	if (routed > 0)
		notice(b, "resuming: route %llu/%llu chunks done (%llu in spill runs)",
		       (unsigned long long)((routed + chunk - 1) / chunk), (unsigned long long)((b->n + chunk - 1) / chunk),
		       (unsigned long long)(spilled / chunk));
	uint8_t *raw = ann_malloc(chunk * b->d * esz);
	float *f = ann_malloc(chunk * b->d * sizeof(float));
	uint32_t *parts = ann_malloc(chunk * b->copies * sizeof(uint32_t));
	uint32_t *primary = ann_malloc(chunk * sizeof(uint32_t));
	int rc = ANN_OK;
	if (!raw || !f || !parts || !primary) {
		rc = ann_err(err, ANN_E_NOMEM, "build: out of memory for routing buffers");
		goto out;
	}
	/* A router that observes the routed data (annann) sees every chunk
	 * again, in order; the others start after the checkpointed runs. */
	bool observe = b->router->ops->observe != NULL, small = small_units();
	uint64_t i = observe ? 0 : spilled;
	ANN_CHECK(rc, ann_vreader_seek(b->in, i, err));
	while (i < b->n) {
		if (i > spilled && (ann_spill_room(b->spill) < chunk * b->copies || small))
			ANN_CHECK(rc, spill_checkpoint(b, i, err));
		int64_t got = read_chunk(b, raw, chunk, i, f, err);
		if (got < 0) {
			rc = (int)got;
			goto out;
		}
		if (i < routed) {
			ANN_CHECK(rc, ann_bstate_log_read(b->st, i, (uint32_t)got, b->copies, parts, err));
		} else {
			const ann_assign_rule sp = {.copies = b->copies, .eps = b->o->replica_eps,
						    .soar_lambda = b->o->soar_lambda};
			ANN_CHECK(rc, b->router->ops->assign(b->router, f, (size_t)got, &sp, b->o->threads, parts, err));
			ANN_CHECK(rc, ann_bstate_log_append(b->st, i, (uint32_t)got, b->copies, parts, err));
		}
		for (int64_t j = 0; j < got; j++) {
			const void *pay = b->pay_type == b->in_type && b->in_type != ANN_DTYPE_F32
						  ? (const void *)(raw + (size_t)j * b->d * esz)
						  : (const void *)(f + (size_t)j * b->d);
			primary[j] = parts[j * b->copies];
			for (uint32_t c = 0; c < b->copies; c++) {
				uint32_t p = parts[j * b->copies + c];
				if (p == UINT32_MAX)
					break;
				if (p >= b->nparts) {
					rc = ann_err(err, ANN_E_INVAL, "build: router returned partition %u of %u", p,
						     b->nparts);
					goto out;
				}
				if (i >= spilled)
					ANN_CHECK(rc, ann_spill_add(b->spill, p, (int64_t)(i + (uint64_t)j), pay, err));
			}
		}
		if (observe)
			ANN_CHECK(rc, b->router->ops->observe(b->router, f, (size_t)got, primary, err));
		i += (uint64_t)got;
		ANN_CHECK(rc, progress(b, "route", i, b->n, err));
	}
	ANN_CHECK(rc, ann_spill_finish(b->spill, err));
	ANN_CHECK(rc, spill_checkpoint(b, b->n, err));
	if (b->router->ops->finish)
		ANN_CHECK(rc, b->router->ops->finish(b->router, err));
fail:
out:
	ann_free(raw);
	ann_free(f);
	ann_free(parts);
	ann_free(primary);
	return rc;
}

static void block_params(const build *b, ann_block_params *p, bool for_dict_sample)
{
	ann_index_block_params(b->enc, b->o->store, for_dict_sample ? 0 : b->o->zstd_level, b->o->shuffle, p);
	p->dict = for_dict_sample ? NULL : b->dict;
}

/* Trains a zstd dictionary on the first partitions (encoded uncompressed). */
static int train_dict(build *b, ann_block_enc *enc, int64_t *ids, void *vecs, ann_error *err)
{
	uint32_t m = ANN_MIN(DICT_SAMPLES, b->nparts);
	uint8_t **blocks = ann_calloc(m, sizeof(uint8_t *));
	size_t *lens = ann_calloc(m, sizeof(size_t));
	int rc = ANN_OK;
	if (!blocks || !lens) {
		rc = ann_err(err, ANN_E_NOMEM, "build: out of memory for dictionary samples");
		goto out;
	}
	ann_block_params p;
	block_params(b, &p, true);
	uint32_t used = 0;
	for (uint32_t part = 0; part < m; part++) {
		uint64_t cnt = ann_spill_count(b->spill, part);
		if (cnt == 0)
			continue;
		ANN_CHECK(rc, ann_spill_read(b->spill, part, ids, vecs, err));
		ANN_CHECK(rc, block_encode(enc, &p, b->d, cnt, ids, vecs, b->pay_type, part, 0, &blocks[used],
					   &lens[used], err));
		used++;
	}
	ANN_CHECK(rc, block_dict_train((const uint8_t *const *)blocks, lens, used, DICT_BYTES, &b->dict_bytes,
				       &b->dict_len, err));
	ANN_CHECK(rc, block_dict_new(1, b->dict_bytes, b->dict_len, b->o->zstd_level, &b->dict, err));
fail:
out:
	for (uint32_t i = 0; blocks && i < m; i++)
		ann_aligned_free(blocks[i]);
	ann_free(blocks);
	ann_free(lens);
	return rc;
}

/* Phase 4: encode and publish every partition. */
static int pack_all(build *b, ann_error *err)
{
	uint64_t maxc = ann_spill_max_count(b->spill);
	size_t need = (size_t)maxc * (8 + b->pay_bytes) * 3 + ((size_t)8 << 20);
	if (need + b->router->ops->ram_bytes(b->router) > b->o->mem_bytes)
		return ann_err(err, ANN_E_BUDGET, "the largest partition holds %llu vectors and needs %zu bytes to "
			       "pack; the budget is %zu (use more partitions or --balance)",
			       (unsigned long long)maxc, need, b->o->mem_bytes);
	int64_t *ids = ann_malloc((maxc ? maxc : 1) * sizeof(int64_t));
	void *vecs = ann_malloc((maxc ? maxc : 1) * b->pay_bytes);
	ann_block_put *puts = ann_calloc(b->nparts, sizeof(ann_block_put));
	ann_block_enc *enc = NULL;
	ann_store_txn *txn = NULL;
	size_t nput = 0, batch_bytes = 0;
	int rc = ANN_OK;
	if (!ids || !vecs || !puts) {
		rc = ann_err(err, ANN_E_NOMEM, "build: out of memory for packing (%llu vectors)", (unsigned long long)maxc);
		goto out;
	}
	ANN_CHECK(rc, block_enc_new(&enc, err));
	if (b->o->code_bits) {
		ANN_CHECK(rc, ann_rbq_new(b->d, b->o->code_bits, b->o->seed, &b->rbq, err));
	} else if (b->o->dictionary && b->o->zstd_level > 0) {
		void *dict;
		size_t dlen;
		/* a distributed rank's part (partbuild) keeps no state */
		int got = b->st ? ann_bstate_unit_get(b->st, "dict", &dict, &dlen, NULL, NULL, err) : 0;
		ANN_CHECK(rc, got);
		if (got == 1) {
			b->dict_bytes = dict;
			b->dict_len = dlen;
			ANN_CHECK(rc, block_dict_new(1, b->dict_bytes, b->dict_len, b->o->zstd_level, &b->dict, err));
		} else {
			ANN_CHECK(rc, train_dict(b, enc, ids, vecs, err));
			if (b->st)
				ANN_CHECK(rc, ann_bstate_unit_put(b->st, "dict", b->dict_bytes, b->dict_len, 0, 0, err));
		}
	}
	/* Commits go in partition order: what a killed build committed is the
	 * prefix 0..start-1 of the directory. */
	uint32_t start = 0;
	for (ann_dirent e; start < b->nparts; start++) {
		ann_error scratch = {0};
		if (ann_store_lookup(b->store, start, &e, &scratch) < 0)
			break;
		b->stored += e.count;
		b->block_bytes += e.length;
	}
	if (start > 0)
		notice(b, "resuming: pack %u/%u partitions done", start, b->nparts);
	ann_block_params p;
	block_params(b, &p, false);
	uint64_t last_commit = ann_now_ns();
	bool small = small_units();
	for (uint32_t part = start; part < b->nparts; part++) {
		uint64_t cnt = ann_spill_count(b->spill, part);
		if (cnt == 0 && b->skip_empty)
			goto flush; /* another rank's partition: no directory entry, nothing to read */
		ANN_CHECK(rc, ann_spill_read(b->spill, part, ids, vecs, err));
		uint8_t *blk = NULL;
		size_t len = 0;
		uint32_t head = 0;
		if (b->rbq)
			ANN_CHECK(rc, cblock_encode(b->rbq, p.encoding, p.pad, b->o->code_factors == 16, b->d, cnt, ids, vecs, b->pay_type, part, 1,
						    &blk, &len, &head, err));
		else
			ANN_CHECK(rc, block_encode(enc, &p, b->d, cnt, ids, vecs, b->pay_type, part, 1, &blk, &len, err));
		puts[nput].head = head;
		puts[nput].pid = part;
		puts[nput].count = (uint32_t)cnt;
		puts[nput].data = blk;
		puts[nput].length = len;
		nput++;
		batch_bytes += len;
		b->stored += cnt;
		b->block_bytes += len;
	flush:
		/* Each commit is a completed unit of the resumable build. */
		if (batch_bytes >= COMMIT_BYTES || ann_now_ns() - last_commit >= COMMIT_NS || part + 1 == b->nparts ||
		    small) {
			ANN_CHECK(rc, ann_store_begin(b->store, &txn, err));
			rc = ann_store_put_blocks(txn, puts, nput, NULL, err);
			for (size_t i = 0; i < nput; i++)
				ann_aligned_free((void *)puts[i].data);
			nput = 0;
			if (rc < 0)
				goto fail;
			ann_store_txn *t = txn;
			txn = NULL;
			ANN_CHECK(rc, ann_store_commit(t, err));
			batch_bytes = 0;
			last_commit = ann_now_ns();
		}
		ANN_CHECK(rc, progress(b, "pack", part + 1, b->nparts, err));
	}
fail:
out:
	for (size_t i = 0; puts && i < nput; i++)
		ann_aligned_free((void *)puts[i].data);
	if (txn)
		ann_store_abort(txn);
	block_enc_free(enc);
	ann_free(ids);
	ann_free(vecs);
	ann_free(puts);
	return rc;
}

/* Phase 5: meta, router and dictionary, in one commit. */
static int publish_meta(build *b, double total_s, ann_error *err)
{
	ann_store_txn *txn;
	ANN_TRY(ann_store_begin(b->store, &txn, err));
	ann_cat_txn *t = ann_store_txn_catalog(txn);
	uint8_t *blob = NULL;
	size_t blen = 0;
	int rc;
	ANN_CHECK(rc, ann_index_meta_write(t, &(ann_index_meta){
		.dim = b->d,
		.metric = b->o->metric,
		.encoding = b->enc,
		.router = b->o->router,
		.store = b->o->store,
		.vectors = b->n,
		.stored_vectors = b->stored,
		.partitions = b->nparts,
		.replicas = b->copies,
		.dict_id = b->dict ? 1 : 0,
		.code_bits = b->o->code_bits,
		.code_f16 = b->o->code_bits && b->o->code_factors == 16,
		.code_seed = b->o->seed,
	}, err));
	const ann_build_opts *o = b->o;
	ANN_CHECK(rc, ann_catalog_meta_put_u64(t, "build.seed", o->seed, err));
	ANN_CHECK(rc, ann_catalog_meta_put_u64(t, "build.sample", b->sample_n, err));
	ANN_CHECK(rc, ann_catalog_meta_put_u64(t, "build.mem_bytes", o->mem_bytes, err));
	ANN_CHECK(rc, ann_catalog_meta_put_u64(t, "build.zstd_level", (uint64_t)o->zstd_level, err));
	ANN_CHECK(rc, ann_catalog_meta_put_u64(t, "build.shuffle", ann_shuffle_to_meta(o->shuffle), err));
	ANN_CHECK(rc, ann_catalog_meta_put_u64(t, "build.kmeans_iters", o->kmeans_iters, err));
	ANN_CHECK(rc, ann_catalog_meta_put_f64(t, "build.balance", o->balance, err));
	ANN_CHECK(rc, ann_catalog_meta_put_f64(t, "build.replica_eps", o->replica_eps, err));
	ANN_CHECK(rc, ann_catalog_meta_put_f64(t, "build.soar_lambda", o->soar_lambda, err));
	ANN_CHECK(rc, ann_catalog_meta_put_u64(t, "build.threads", (uint64_t)o->threads, err));
	ANN_CHECK(rc, ann_catalog_meta_put_str(t, "build.input", b->data_path, err));
	ANN_CHECK(rc, ann_catalog_meta_put_f64(t, "build.time.sample_s", b->t_sample, err));
	ANN_CHECK(rc, ann_catalog_meta_put_f64(t, "build.time.train_s", b->t_train, err));
	ANN_CHECK(rc, ann_catalog_meta_put_f64(t, "build.time.route_s", b->t_route, err));
	ANN_CHECK(rc, ann_catalog_meta_put_f64(t, "build.time.pack_s", b->t_pack, err));
	ANN_CHECK(rc, ann_catalog_meta_put_f64(t, "build.time.total_s", total_s, err));
	if (b->router->route_ef)
		ANN_CHECK(rc, ann_catalog_meta_put_u64(t, "router.ef", b->router->route_ef, err));
	ANN_CHECK(rc, b->router->ops->save(b->router, &blob, &blen, err));
	ANN_CHECK(rc, ann_catalog_model_put(t, "router", blob, blen, err));
	if (b->dict)
		ANN_CHECK(rc, ann_catalog_model_put(t, "zstd_dict.1", b->dict_bytes, b->dict_len, err));
	ann_free(blob);
	return ann_store_commit(txn, err);
fail:
	ann_free(blob);
	ann_store_abort(txn);
	return rc;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

/* Start time of process pid (clock ticks since boot, /proc/PID/stat field
 * 22), or 0 when unknown. */
static unsigned long long proc_start(long pid)
{
	char p[64], buf[1024];
	snprintf(p, sizeof p, "/proc/%ld/stat", pid);
	FILE *f = fopen(p, "re");
	if (!f)
		return 0;
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = 0;
	char *s = strrchr(buf, ')'); /* the command name may hold spaces */
	if (!s)
		return 0;
	int field = 2;
	char *save = NULL;
	for (char *t = strtok_r(s + 1, " ", &save); t; t = strtok_r(NULL, " ", &save))
		if (++field == 22)
			return strtoull(t, NULL, 10);
	return 0;
}

/* The marker of a DIR.tmp.* directory (a distributed rank's part, built
 * without a resumable state): its pid and start time, so that a later build
 * removes it once that process is gone. */
static int write_marker(const char *tmpdir, ann_error *err)
{
	char p[4200], line[128];
	snprintf(p, sizeof p, "%s/%s", tmpdir, BUILD_MARKER);
	int fd = ann_create_new(p, err);
	if (fd < 0)
		return fd;
	long pid = (long)getpid();
	int len = snprintf(line, sizeof line, "annann build pid %ld start %llu\n", pid, proc_start(pid));
	int rc = ann_pwrite_all(fd, line, (size_t)len, 0, p, err);
	close(fd);
	return rc;
}

/* Removes what killed builds of index_dir left: every "index_dir.tmp.*"
 * directory (not a link) of ours holding a marker whose process is gone. */
static void remove_stale_temps(const char *index_dir, const ann_build_opts *o)
{
	size_t len = strlen(index_dir) + 8;
	char *a = ann_malloc(len), *b = ann_malloc(len);
	if (!a || !b)
		goto out;
	snprintf(a, len, "%s.tmp.", index_dir);
	snprintf(b, len, "%s.tmp.", index_dir);
	const char *parent = dirname(a), *prefix = basename(b);
	size_t plen = strlen(prefix);
	DIR *d = opendir(parent);
	if (!d)
		goto out;
	for (struct dirent *e; (e = readdir(d)) != NULL;) {
		if (strncmp(e->d_name, prefix, plen) != 0)
			continue;
		char *end;
		long pid = strtol(e->d_name + plen, &end, 10);
		if (pid <= 0 || (*end && *end != '.') || pid == (long)getpid())
			continue;
		char path[4200], mp[4300], line[128] = "";
		/* as the user named it: "idx.tmp.1234", not "./idx.tmp.1234" */
		if (strcmp(parent, ".") == 0 && strncmp(index_dir, "./", 2) != 0)
			snprintf(path, sizeof path, "%s", e->d_name);
		else
			snprintf(path, sizeof path, "%s/%s", parent, e->d_name);
		struct stat st;
		if (lstat(path, &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != geteuid())
			continue;
		snprintf(mp, sizeof mp, "%s/%s", path, BUILD_MARKER);
		int fd = open(mp, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0)
			continue; /* not an annann build temporary: never touched */
		ssize_t n = read(fd, line, sizeof line - 1);
		close(fd);
		line[n > 0 ? n : 0] = 0;
		long mpid;
		unsigned long long mstart;
		/* A build killed between creating the marker and writing it leaves it
		 * empty: the marker's name still says "ours", the directory's name
		 * gives the pid, and only the pid-reuse check is lost. */
		if (line[0] == 0) {
			mpid = pid;
			mstart = 0;
		} else if (sscanf(line, "annann build pid %ld start %llu", &mpid, &mstart) != 2 || mpid != pid) {
			continue;
		}
		bool gone = kill((pid_t)pid, 0) != 0 && errno == ESRCH;
		/* pid reuse: alive, but started at another time than the builder */
		if (!gone && mstart && proc_start(pid) && proc_start(pid) != mstart)
			gone = true;
		if (!gone)
			continue; /* a build still running */
		if (nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS) == 0)
			ann_router_log(o, "build: removed stale temporary %s from a killed build (process %ld is gone)",
				       path, pid);
	}
	closedir(d);
out:
	ann_free(a);
	ann_free(b);
}

static double secs_since(uint64_t t0)
{
	return (double)(ann_now_ns() - t0) / 1e9;
}

/* The options that change the index, resolved, as "key=value" lines: the
 * saved state of a build resumes only under the same ones. Not among them:
 * threads, the memory budget (only through the sample size it gives), the
 * callbacks. */
static char *build_options(const build *b)
{
	const ann_build_opts *o = b->o;
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
		 "joint_lambda=%.17g\ncode_bits=%u\nroute_chunk=%u\nrouter_bits=%u\nnlsh_augment=%.17g\n",
		 b->d, (unsigned long long)b->n, (int)b->in_type, ann_router_name(o->router), b->nparts, (int)o->store,
		 ann_encoding_name(b->enc), (int)o->metric, o->zstd_level, o->shuffle, o->dictionary != 0,
		 (unsigned long long)o->seed, b->sample_n, o->kmeans_iters, o->balance, b->copies, o->replica_eps,
		 o->soar_lambda, o->hnsw_m, o->hnsw_ef_construction, o->embed_dim, o->hidden[0], o->hidden[1],
		 o->hidden[2], o->hidden[3], o->ae_epochs, o->dec_epochs, o->dec_alpha, o->recon_weight, o->knn_k,
		 o->imbalance, o->nlsh_epochs, o->soft_labels, o->joint_rounds, o->joint_lambda, o->code_bits,
		 ROUTE_CHUNK, o->router_bits, (double)o->nlsh_augment);
	if (o->code_factors == 16) /* only then: older states keep their fingerprint */
		snprintf(s + strlen(s), cap - strlen(s), "code_factors=16\n");
	return s;
}

/* Loads a router from its saved blob (the one routing and the index use). */
static int router_from_unit(build *b, const void *blob, size_t len, uint32_t ef, ann_error *err)
{
	ann_router_free(b->router);
	b->router = NULL;
	ANN_TRY(ann_router_load(b->o->router, blob, len, b->d, b->o->metric, &b->router, err));
	b->router->route_ef = ef;
	b->nparts = b->router->nparts;
	return ANN_OK;
}

static int save_router(build *b, const char *unit, double secs, ann_error *err)
{
	uint8_t *blob = NULL;
	size_t len = 0;
	ANN_TRY(b->router->ops->save(b->router, &blob, &len, err));
	uint32_t ef = b->router->route_ef;
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
		notice(b, "resuming: router done (%u partitions)", b->nparts);
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
		notice(b, "resuming: sample done (%zu vectors)", b->sample_n);
	} else {
		uint64_t t0 = ann_now_ns();
		ann_rng rng;
		ann_rng_seed(&rng, o->seed ^ 0x5a4d504c45ull);
		sample = ann_malloc(b->sample_n * b->d * sizeof(float));
		if (!sample)
			return ann_err(err, ANN_E_NOMEM, "build: out of memory for a sample of %zu vectors", b->sample_n);
		ANN_CHECK(rc, draw_sample(b, &rng, sample, err));
		b->t_sample = secs_since(t0);
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
	if (o->router == ANN_ROUTER_KMEANS) {
		/* Single-query routing ef, measured on the sample (docs/DESIGN.md). */
		uint32_t ef;
		double ov;
		ANN_CHECK(rc, ann_router_kmeans_calibrate(b->router, sample, b->sample_n, o->threads > 0 ? o->threads : 1,
							  &ef, &ov, err));
		b->router->route_ef = ef;
		if (ef)
			ann_router_log(o, "kmeans router: single-query ef %u (top-16 routing overlap %.4f with the exact "
				       "scan)", ef, ov);
		else
			ann_router_log(o, "kmeans router: %u-bit centroid codes, top-16 routing overlap %.4f with the exact "
				       "scan", o->router_bits, ov);
	}
	b->t_train = secs_since(t0);
	ANN_CHECK(rc, save_router(b, "router", b->t_train, err));
	ANN_CHECK(rc, check_cancel(b, "train", 1, 1, err));
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
		ann_bstate_drop_published(index_dir, notice_cb, &b);
		return ann_err(err, ANN_E_EXISTS, "%s: already exists; remove it or choose another directory", index_dir);
	}
	remove_stale_temps(index_dir, o);
	ANN_CHECK(rc, ann_vreader_open(data_path, &b.in, err));
	b.n = ann_vreader_count(b.in);
	b.d = ann_vreader_dim(b.in);
	b.in_type = ann_vreader_dtype(b.in);
	ANN_CHECK(rc, resolve_options(&b, err));

	/* The saved state: resumed when it matches data and options. */
	ann_bstate_fp fp;
	ANN_CHECK(rc, ann_bstate_fingerprint_data(data_path, &fp, err));
	opts = build_options(&b);
	if (!opts) {
		rc = ann_err(err, ANN_E_NOMEM, "build: out of memory");
		goto fail;
	}
	fp.options = opts;
	ANN_CHECK(rc, ann_bstate_open(index_dir, &fp, o->restart != 0, notice_cb, &b, &b.st, &b.resumed, err));
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
			nftw(b.tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
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
		ANN_CHECK(rc, spill_start(&b, (size_t)16 << 20, &spilled, err));
		if (spilled != b.n) {
			rc = ann_err(err, ANN_E_CORRUPT, "%s: routing is done but the spill holds %llu of %llu vectors",
				     b.spill_path, (unsigned long long)spilled, (unsigned long long)b.n);
			goto fail;
		}
		ANN_CHECK(rc, ann_spill_finish(b.spill, err));
		notice(&b, "resuming: route done (%llu vectors)", (unsigned long long)b.n);
	} else {
		ANN_CHECK(rc, route_all(&b, err));
		b.t_route = secs_since(t0);
		ANN_CHECK(rc, save_router(&b, "routed", b.t_route, err));
	}

	/* 4. pack */
	t0 = ann_now_ns();
	ANN_CHECK(rc, pack_all(&b, err));
	b.t_pack = secs_since(t0);
	ann_spill_close(b.spill);
	b.spill = NULL;

	/* 5. publish */
	ANN_CHECK(rc, publish_meta(&b, secs_since(t_all), err));
	ann_store_close(b.store);
	b.store = NULL;
	if (renameat2(AT_FDCWD, b.tmpdir, AT_FDCWD, index_dir, RENAME_NOREPLACE) != 0) {
		rc = ann_err_sys(err, errno, "%s: cannot rename the finished index from %s", index_dir, b.tmpdir);
		goto fail;
	}
	index_tmp = ann_malloc(strlen(index_dir) + 8);
	if (!index_tmp) {
		rc = ann_err(err, ANN_E_NOMEM, "build: out of memory");
		goto fail;
	}
	sprintf(index_tmp, "%s/..", index_dir);
	ANN_CHECK(rc, ann_fsync_dir(index_tmp, err));
	ann_bstate_remove(b.st);
	b.st = NULL;
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
		notice(&b, "%s: the build state is kept; the same command resumes it (--restart starts over)",
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

/* ---- partbuild (dist.h): a build with a given router and routed vectors ---
 * The ann_build pipeline without its sample and train phases: the caller
 * gives the router and adds each vector to a partition it chose (a rank of
 * a distributed build adds what the shuffle brought it). pack_all skips the
 * partitions that received nothing, so they get no directory entry. */

struct ann_partbuild {
	build b;
	ann_build_opts o;   /* the caller's options, partitions resolved */
	char *index_dir;
	uint32_t rank, ranks;
	uint32_t user_parts; /* the caller's o->partitions (0: resolved from n or from the router) */
	uint8_t *conv;      /* one vector converted to floats (and back) */
	uint64_t t0;
};

void ann_partbuild_abort(ann_partbuild *pb)
{
	if (!pb)
		return;
	build *b = &pb->b;
	ann_spill_close(b->spill);
	ann_store_close(b->store);
	if (b->tmpdir)
		nftw(b->tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	ann_router_free(b->router);
	block_dict_free(b->dict);
	ann_rbq_free(b->rbq);
	ann_free(b->dict_bytes);
	ann_vreader_close(b->in);
	ann_free(b->tmpdir);
	ann_free(b->spill_path);
	ann_free(pb->index_dir);
	ann_free(pb->conv);
	ann_free(pb);
}

int ann_partbuild_open(const char *data_path, const char *index_dir, const ann_build_opts *o, uint32_t rank,
		       uint32_t ranks, ann_partbuild **out, ann_error *err)
{
	*out = NULL;
	ann_blas_single();
	if (!data_path || !index_dir || !*index_dir || !o || (ranks ? rank >= ranks : rank != 0))
		return ann_err(err, ANN_E_INVAL, "partbuild: data path, index directory and rank < ranks are required");
	if (o->mem_bytes < ((size_t)16 << 20))
		return ann_err(err, ANN_E_BUDGET, "build: a memory budget of %zu bytes is below the 16 MiB minimum",
			       o->mem_bytes);
	struct stat st;
	if (stat(index_dir, &st) == 0)
		return ann_err(err, ANN_E_EXISTS, "%s: already exists; remove it or choose another directory", index_dir);
	ann_partbuild *pb = ann_calloc(1, sizeof *pb);
	if (!pb)
		return ann_err(err, ANN_E_NOMEM, "build: out of memory");
	build *b = &pb->b;
	pb->o = *o;
	pb->o.sample = 0;
	b->o = &pb->o;
	b->data_path = data_path;
	b->skip_empty = true;
	pb->rank = rank;
	pb->ranks = ranks;
	pb->user_parts = o->partitions;
	pb->t0 = ann_now_ns();
	int rc;
	pb->index_dir = ann_malloc(strlen(index_dir) + 1);
	if (!pb->index_dir) {
		rc = ann_err(err, ANN_E_NOMEM, "build: out of memory");
		goto fail;
	}
	strcpy(pb->index_dir, index_dir);
	remove_stale_temps(index_dir, o);
	ANN_CHECK(rc, ann_vreader_open(data_path, &b->in, err));
	b->n = ann_vreader_count(b->in);
	b->d = ann_vreader_dim(b->in);
	b->in_type = ann_vreader_dtype(b->in);
	ANN_CHECK(rc, resolve_options(b, err));
	pb->o.partitions = b->nparts;
	pb->conv = ann_malloc((size_t)b->d * sizeof(float));
	if (!pb->conv) {
		rc = ann_err(err, ANN_E_NOMEM, "build: out of memory");
		goto fail;
	}
	{
		char *tmp;
		ANN_CHECK(rc, ann_create_temp(index_dir, true, &tmp, err));
		b->tmpdir = tmp;
	}
	ANN_CHECK(rc, write_marker(b->tmpdir, err));
	size_t plen = strlen(b->tmpdir) + sizeof BUILD_MARKER + 16;
	b->spill_path = ann_malloc(plen);
	if (!b->spill_path) {
		rc = ann_err(err, ANN_E_NOMEM, "build: out of memory");
		goto fail;
	}
	snprintf(b->spill_path, plen, "%s/spill.tmp", b->tmpdir);
	ann_store_opts so;
	ann_store_opts_init(&so);
	so.kind = o->store;
	so.create = true;
	so.writable = true;
	ANN_CHECK(rc, ann_store_open(b->tmpdir, &so, &b->store, err));
	*out = pb;
	return ANN_OK;
fail:
	ann_partbuild_abort(pb);
	return rc;
}

void ann_partbuild_shape(const ann_partbuild *pb, uint64_t *n, uint32_t *dim, ann_dtype *in_type, uint32_t *nparts,
			 uint32_t *copies, ann_encoding *enc)
{
	*n = pb->b.n;
	*dim = pb->b.d;
	*in_type = pb->b.in_type;
	*nparts = pb->b.nparts;
	*copies = pb->b.copies;
	*enc = pb->b.enc;
}

int ann_partbuild_sample(ann_partbuild *pb, uint64_t first, uint64_t count, uint64_t want, uint64_t seed,
			 float *out, ann_error *err)
{
	build *b = &pb->b;
	if (first > b->n || count > b->n - first || want > count)
		return ann_err(err, ANN_E_INVAL, "partbuild: sample of %llu among vectors %llu..+%llu of %llu",
			       (unsigned long long)want, (unsigned long long)first, (unsigned long long)count,
			       (unsigned long long)b->n);
	ann_rng rng;
	ann_rng_seed(&rng, seed);
	uint64_t taken;
	return sample_range(b, &rng, first, count, want, out, &taken, err);
}

int ann_partbuild_set_router(ann_partbuild *pb, ann_router_kind kind, const uint8_t *blob, size_t len,
			     uint32_t route_ef, size_t caller_bytes, ann_error *err)
{
	build *b = &pb->b;
	if (b->router)
		return ann_err(err, ANN_E_INVAL, "partbuild: the router is already set");
	ANN_TRY(ann_router_load(kind, blob, len, b->d, pb->o.metric, &b->router, err));
	b->router->route_ef = route_ef;
	pb->o.router = kind;
	if (b->router->ops->observe) {
		ann_router_free(b->router);
		b->router = NULL;
		return ann_err(err, ANN_E_UNSUPPORTED, "the %s router learns from the routed vectors during the build; "
			       "a build with a given router takes kmeans, nlsh, joint or soft", ann_router_name(kind));
	}
	if (b->router->nparts != b->nparts) {
		uint32_t rp = b->router->nparts;
		if (pb->user_parts || rp > b->n || rp < b->copies) {
			ann_router_free(b->router);
			b->router = NULL;
			if (pb->user_parts)
				return ann_err(err, ANN_E_INVAL, "the router names %u partitions, the options ask for %u", rp,
					       pb->user_parts);
			return ann_err(err, ANN_E_INVAL, "the router names %u partitions; %s holds %llu vectors and each is "
				       "stored %u times", rp, b->data_path, (unsigned long long)b->n, b->copies);
		}
		b->nparts = rp;
		pb->o.partitions = b->nparts;
	}
	size_t router = b->router->ops->ram_bytes(b->router), fixed = router + caller_bytes + ((size_t)2 << 20);
	if (pb->o.mem_bytes < fixed + ((size_t)1 << 20))
		return ann_err(err, ANN_E_BUDGET, "the router takes %zu bytes and the read and shuffle buffers %zu; "
			       "the budget of %zu leaves less than 1 MiB for the spill buffer", router, caller_bytes,
			       pb->o.mem_bytes);
	size_t spill_mem = pb->o.mem_bytes - fixed;
	return ann_spill_open(b->spill_path, b->nparts, b->pay_bytes, spill_mem, 0, &b->spill, err);
}

int ann_partbuild_read_route(ann_partbuild *pb, uint64_t first, size_t n, void *raw, uint32_t *parts,
			     ann_error *err)
{
	build *b = &pb->b;
	if (!b->router)
		return ann_err(err, ANN_E_INVAL, "partbuild: no router yet");
	if (first > b->n || n > b->n - first)
		return ann_err(err, ANN_E_INVAL, "partbuild: vectors %llu..+%zu of %llu", (unsigned long long)first, n,
			       (unsigned long long)b->n);
	float *f = ann_malloc((n ? n : 1) * b->d * sizeof(float));
	if (!f)
		return ann_err(err, ANN_E_NOMEM, "build: out of memory for %zu vectors", n);
	int rc = ANN_OK;
	ANN_CHECK(rc, ann_vreader_seek(b->in, first, err));
	for (size_t i = 0; i < n;) {
		int64_t got = read_chunk(b, (uint8_t *)raw + i * b->d * ann_dtype_size(b->in_type), n - i, first + i,
					 f + i * b->d, err);
		if (got < 0) {
			rc = (int)got;
			goto fail;
		}
		i += (size_t)got;
	}
	const ann_assign_rule sp = {.copies = b->copies, .eps = b->o->replica_eps, .soar_lambda = b->o->soar_lambda};
	ANN_CHECK(rc, b->router->ops->assign(b->router, f, n, &sp, b->o->threads, parts, err));
	for (size_t i = 0; i < n * b->copies; i++)
		if (parts[i] != UINT32_MAX && parts[i] >= b->nparts) {
			rc = ann_err(err, ANN_E_INVAL, "build: router returned partition %u of %u", parts[i], b->nparts);
			goto fail;
		}
	ANN_CHECK(rc, progress(b, "route", first + n, b->n, err));
fail:
	ann_free(f);
	return rc;
}

int ann_partbuild_add(ann_partbuild *pb, uint32_t part, int64_t id, const void *raw, ann_error *err)
{
	build *b = &pb->b;
	if (!b->spill)
		return ann_err(err, ANN_E_INVAL, "partbuild: no router yet");
	if (part >= b->nparts || id < 0 || (uint64_t)id >= b->n)
		return ann_err(err, ANN_E_INVAL, "partbuild: vector %lld to partition %u (the input has %llu vectors, "
			       "the router %u partitions)", (long long)id, part, (unsigned long long)b->n, b->nparts);
	const void *pay = raw;
	if (b->pay_type != b->in_type || b->o->metric == ANN_METRIC_COSINE) {
		to_float(b, raw, 1, (float *)pb->conv);
		pay = pb->conv;
	}
	return ann_spill_add(b->spill, part, id, pay, err);
}

int ann_partbuild_finish(ann_partbuild *pb, uint64_t vectors, ann_error *err)
{
	build *b = &pb->b;
	int rc;
	if (!b->spill) {
		rc = ann_err(err, ANN_E_INVAL, "partbuild: no router yet");
		goto fail;
	}
	ANN_CHECK(rc, ann_spill_finish(b->spill, err));
	uint64_t t0 = ann_now_ns();
	ANN_CHECK(rc, pack_all(b, err));
	b->t_pack = secs_since(t0);
	ann_spill_close(b->spill);
	b->spill = NULL;
	uint64_t input_n = b->n;
	b->n = vectors;
	ANN_CHECK(rc, publish_meta(b, secs_since(pb->t0), err));
	if (pb->ranks > 0) {
		ann_store_txn *txn;
		ANN_CHECK(rc, ann_store_begin(b->store, &txn, err));
		ann_cat_txn *t = ann_store_txn_catalog(txn);
		rc = ann_catalog_meta_put_u64(t, "dist.rank", pb->rank, err);
		if (rc >= 0)
			rc = ann_catalog_meta_put_u64(t, "dist.ranks", pb->ranks, err);
		/* ids are input positions: a part's run to the input's count, not to
		 * the vectors it holds (verify's bound) */
		if (rc >= 0)
			rc = ann_catalog_meta_put_u64(t, "index.next_id", input_n, err);
		if (rc < 0) {
			ann_store_abort(txn);
			goto fail;
		}
		ANN_CHECK(rc, ann_store_commit(txn, err));
	}
	ann_store_close(b->store);
	b->store = NULL;
	snprintf(b->spill_path, strlen(b->tmpdir) + sizeof BUILD_MARKER + 16, "%s/%s", b->tmpdir, BUILD_MARKER);
	if (unlink(b->spill_path) != 0) {
		rc = ann_err_sys(err, errno, "%s: cannot remove", b->spill_path);
		goto fail;
	}
	if (renameat2(AT_FDCWD, b->tmpdir, AT_FDCWD, pb->index_dir, RENAME_NOREPLACE) != 0) {
		rc = ann_err_sys(err, errno, "%s: cannot rename the finished index from %s", pb->index_dir, b->tmpdir);
		goto fail;
	}
	ann_free(b->tmpdir);
	b->tmpdir = NULL; /* renamed: nothing for abort to remove */
	{
		size_t len = strlen(pb->index_dir) + 8;
		char *parent = ann_malloc(len);
		if (!parent) {
			rc = ann_err(err, ANN_E_NOMEM, "build: out of memory");
			goto fail;
		}
		snprintf(parent, len, "%s/..", pb->index_dir);
		rc = ann_fsync_dir(parent, err);
		ann_free(parent);
	}
fail:
	ann_partbuild_abort(pb);
	return rc;
}
