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
 *  2. Atomic appearance. Everything is written under "DIR.tmp.<pid>"; DIR
 *     appears only by a rename with RENAME_NOREPLACE after the last commit,
 *     so DIR is either absent or a complete index. On failure the temporary
 *     directory is removed.
 *  3. Ids are the 0-based positions of the vectors in the input file.
 *  4. Temporaries. The temporary directory is created exclusively (never one
 *     planted there, nor a link's target) and holds BUILD_MARKER, naming the
 *     building process and its start time, until just before the rename. A
 *     build first removes every "DIR.tmp.*" holding a marker whose process
 *     is gone (or whose pid now belongs to a process started later): what a
 *     killed build left behind. Nothing without a marker is touched.
 */
#include "distance.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <signal.h>
#include <stdlib.h>
#include <math.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "block.h"
#include "cblock.h"
#include "index_meta.h"
#include "router.h"
#include "spill.h"
#include "store.h"
#include "vecio.h"

#define BUILD_FIXED_BYTES ((size_t)64 << 20) /* zstd, LMDB, stdio, code: the stated overhead */
#define ROUTE_CHUNK 8192u                     /* vectors per routing chunk */
#define COMMIT_BYTES ((size_t)256 << 20)      /* block bytes per store commit */
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
	uint64_t block_bytes;
	double t_sample, t_train, t_route, t_pack;
} build;

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

/* Phase 1: selection sampling in one pass (Knuth, TAOCP 3.4.2, Algorithm S):
 * vector i is taken with probability (wanted - taken) / (n - i). */
static int draw_sample(build *b, ann_rng *rng, float *sample, ann_error *err)
{
	size_t chunk = ROUTE_CHUNK, esz = ann_dtype_size(b->in_type);
	uint8_t *raw = ann_malloc(chunk * b->d * esz);
	float *f = ann_malloc(chunk * b->d * sizeof(float));
	int rc = ANN_OK;
	if (!raw || !f) {
		rc = ann_err(err, ANN_E_NOMEM, "build: out of memory for a read chunk");
		goto out;
	}
	ANN_CHECK(rc, ann_vreader_seek(b->in, 0, err));
	uint64_t taken = 0, i = 0;
	while (i < b->n && taken < b->sample_n) {
		int64_t got = read_chunk(b, raw, chunk, i, f, err);
		if (got < 0) {
			rc = (int)got;
			goto out;
		}
		for (int64_t j = 0; j < got; j++, i++) {
			uint64_t left = b->n - i, need = b->sample_n - taken;
			if (ann_rng_below(rng, left) < need)
				memcpy(sample + (taken++) * b->d, f + (size_t)j * b->d, b->d * sizeof(float));
		}
		ANN_CHECK(rc, progress(b, "sample", i, b->n, err));
	}
	b->sample_n = (size_t)taken;
fail:
out:
	ann_free(raw);
	ann_free(f);
	return rc;
}

/* Phase 3: route every vector and spill it to its partitions. */
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
	ANN_TRY(ann_spill_open(b->spill_path, b->nparts, b->pay_bytes, spill_mem, b->n * b->copies, &b->spill, err));
	uint8_t *raw = ann_malloc(chunk * b->d * esz);
	float *f = ann_malloc(chunk * b->d * sizeof(float));
	uint32_t *parts = ann_malloc(chunk * b->copies * sizeof(uint32_t));
	uint32_t *primary = ann_malloc(chunk * sizeof(uint32_t));
	int rc = ANN_OK;
	if (!raw || !f || !parts || !primary) {
		rc = ann_err(err, ANN_E_NOMEM, "build: out of memory for routing buffers");
		goto out;
	}
	ANN_CHECK(rc, ann_vreader_seek(b->in, 0, err));
	uint64_t i = 0;
	while (i < b->n) {
		int64_t got = read_chunk(b, raw, chunk, i, f, err);
		if (got < 0) {
			rc = (int)got;
			goto out;
		}
		const ann_assign_rule sp = {.copies = b->copies, .eps = b->o->replica_eps, .soar_lambda = b->o->soar_lambda};
		ANN_CHECK(rc, b->router->ops->assign(b->router, f, (size_t)got, &sp, b->o->threads, parts, err));
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
				ANN_CHECK(rc, ann_spill_add(b->spill, p, (int64_t)(i + (uint64_t)j), pay, err));
			}
		}
		if (b->router->ops->observe)
			ANN_CHECK(rc, b->router->ops->observe(b->router, f, (size_t)got, primary, err));
		i += (uint64_t)got;
		ANN_CHECK(rc, progress(b, "route", i, b->n, err));
	}
	ANN_CHECK(rc, ann_spill_finish(b->spill, err));
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
	block_params_init(p);
	p->encoding = ann_encoding_block(b->enc);
	p->codec = b->o->zstd_level == 0 || for_dict_sample ? ANN_BLOCK_CODEC_NONE : ANN_BLOCK_CODEC_ZSTD;
	p->level = b->o->zstd_level;
	/* Measured (docs/FORMAT.md): shuffling multi-byte floats helps zstd, transposing
	 * 1-byte codes does not. */
	p->shuffle = b->o->shuffle < 0 ? (b->enc == ANN_ENC_F32 || b->enc == ANN_ENC_F16) : b->o->shuffle != 0;
	p->pad = b->o->store == ANN_STORE_LMDB ? ANN_BLOCK_PAD_LMDB : ANN_BLOCK_PAD_FILE;
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
	if (b->o->code_bits)
		ANN_CHECK(rc, ann_rbq_new(b->d, b->o->code_bits, b->o->seed, &b->rbq, err));
	else if (b->o->dictionary && b->o->zstd_level > 0)
		ANN_CHECK(rc, train_dict(b, enc, ids, vecs, err));
	ann_block_params p;
	block_params(b, &p, false);
	for (uint32_t part = 0; part < b->nparts; part++) {
		uint64_t cnt = ann_spill_count(b->spill, part);
		ANN_CHECK(rc, ann_spill_read(b->spill, part, ids, vecs, err));
		uint8_t *blk = NULL;
		size_t len = 0;
		uint32_t head = 0;
		if (b->rbq)
			ANN_CHECK(rc, cblock_encode(b->rbq, p.encoding, p.pad, b->d, cnt, ids, vecs, b->pay_type, part, 1,
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
		if (batch_bytes >= COMMIT_BYTES / 8 || part + 1 == b->nparts) {
			if (!txn)
				ANN_CHECK(rc, ann_store_begin(b->store, &txn, err));
			rc = ann_store_put_blocks(txn, puts, nput, NULL, err);
			for (size_t i = 0; i < nput; i++)
				ann_aligned_free((void *)puts[i].data);
			nput = 0;
			if (rc < 0)
				goto fail;
			if (batch_bytes >= COMMIT_BYTES || part + 1 == b->nparts) {
				ann_store_txn *t = txn;
				txn = NULL;
				ANN_CHECK(rc, ann_store_commit(t, err));
				batch_bytes = 0;
			}
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
		.code_seed = b->o->seed,
	}, err));
	const ann_build_opts *o = b->o;
	ANN_CHECK(rc, ann_catalog_meta_put_u64(t, "build.seed", o->seed, err));
	ANN_CHECK(rc, ann_catalog_meta_put_u64(t, "build.sample", b->sample_n, err));
	ANN_CHECK(rc, ann_catalog_meta_put_u64(t, "build.mem_bytes", o->mem_bytes, err));
	ANN_CHECK(rc, ann_catalog_meta_put_u64(t, "build.zstd_level", (uint64_t)o->zstd_level, err));
	ANN_CHECK(rc, ann_catalog_meta_put_u64(t, "build.shuffle", (uint64_t)(o->shuffle + 1), err));
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
	float *sample = NULL;
	int rc;
	uint64_t t_all = ann_now_ns();
	if (!data_path || !index_dir || !*index_dir)
		return ann_err(err, ANN_E_INVAL, "build: data path and index directory are required");
	if (o->mem_bytes < ((size_t)16 << 20))
		return ann_err(err, ANN_E_BUDGET, "build: a memory budget of %zu bytes is below the 16 MiB minimum",
			       o->mem_bytes);
	struct stat st;
	if (stat(index_dir, &st) == 0)
		return ann_err(err, ANN_E_EXISTS, "%s: already exists; remove it or choose another directory", index_dir);
	remove_stale_temps(index_dir, o);
	ANN_CHECK(rc, ann_vreader_open(data_path, &b.in, err));
	/* Only now the temporary directory: created exclusively, never one
	 * that is already there (issue 13 D5), marked as ours (D12). */
	{
		char *tmp;
		ANN_CHECK(rc, ann_create_temp(index_dir, true, &tmp, err));
		b.tmpdir = tmp;
	}
	ANN_CHECK(rc, write_marker(b.tmpdir, err));
	size_t plen = strlen(b.tmpdir) + 32;
	b.spill_path = ann_malloc(plen + 16);
	if (!b.spill_path) {
		rc = ann_err(err, ANN_E_NOMEM, "build: out of memory");
		goto fail;
	}
	snprintf(b.spill_path, plen + 16, "%s/spill.tmp", b.tmpdir);
	b.n = ann_vreader_count(b.in);
	b.d = ann_vreader_dim(b.in);
	b.in_type = ann_vreader_dtype(b.in);
	ANN_CHECK(rc, resolve_options(&b, err));

	ann_store_opts so;
	ann_store_opts_init(&so);
	so.kind = o->store;
	so.create = true;
	so.writable = true;
	ANN_CHECK(rc, ann_store_open(b.tmpdir, &so, &b.store, err));

	/* 1. sample */
	uint64_t t0 = ann_now_ns();
	ann_rng rng;
	ann_rng_seed(&rng, o->seed ^ 0x5a4d504c45ull);
	sample = ann_malloc(b.sample_n * b.d * sizeof(float));
	if (!sample) {
		rc = ann_err(err, ANN_E_NOMEM, "build: out of memory for a sample of %zu vectors", b.sample_n);
		goto fail;
	}
	ANN_CHECK(rc, draw_sample(&b, &rng, sample, err));
	b.t_sample = secs_since(t0);

	/* 2. train */
	t0 = ann_now_ns();
	/* The router sees the resolved encoding: the k-means router stores the
	 * centroids of u8 data as uint8. */
	ann_build_opts ro = *o;
	ro.encoding = b.enc;
	ANN_CHECK(rc, ann_router_train(&ro, sample, b.sample_n, b.d, b.nparts, &b.router, err));
	if (o->router == ANN_ROUTER_KMEANS) {
		/* Single-query routing ef, measured on the sample (docs/DESIGN.md). */
		uint32_t ef;
		double ov;
		ANN_CHECK(rc, ann_router_kmeans_calibrate(b.router, sample, b.sample_n, o->threads > 0 ? o->threads : 1,
							  &ef, &ov, err));
		b.router->route_ef = ef;
		if (ef)
			ann_router_log(o, "kmeans router: single-query ef %u (top-16 routing overlap %.4f with the exact "
				       "scan)", ef, ov);
		else
			ann_router_log(o, "kmeans router: %u-bit centroid codes, top-16 routing overlap %.4f with the exact "
				       "scan", o->router_bits, ov);
	}
	ann_free(sample);
	sample = NULL;
	b.nparts = b.router->nparts;
	b.t_train = secs_since(t0);
	ANN_CHECK(rc, check_cancel(&b, "train", 1, 1, err));

	/* 3. route */
	t0 = ann_now_ns();
	ANN_CHECK(rc, route_all(&b, err));
	b.t_route = secs_since(t0);

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
	snprintf(b.spill_path, plen + 16, "%s/%s", b.tmpdir, BUILD_MARKER);
	if (unlink(b.spill_path) != 0) {
		rc = ann_err_sys(err, errno, "%s: cannot remove", b.spill_path);
		goto fail;
	}
	if (renameat2(AT_FDCWD, b.tmpdir, AT_FDCWD, index_dir, RENAME_NOREPLACE) != 0) {
		rc = ann_err_sys(err, errno, "%s: cannot rename the finished index from %s", index_dir, b.tmpdir);
		goto fail;
	}
	snprintf(b.spill_path, plen + 16, "%s/..", index_dir);
	ANN_CHECK(rc, ann_fsync_dir(b.spill_path, err));
	rc = ANN_OK;
	goto done;
fail:
	if (b.tmpdir) {
		ann_spill_close(b.spill);
		b.spill = NULL;
		ann_store_close(b.store);
		b.store = NULL;
		nftw(b.tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	}
done:
	ann_free(sample);
	ann_spill_close(b.spill);
	ann_store_close(b.store);
	ann_router_free(b.router);
	block_dict_free(b.dict);
	ann_rbq_free(b.rbq);
	ann_free(b.dict_bytes);
	ann_vreader_close(b.in);
	ann_free(b.tmpdir);
	ann_free(b.spill_path);
	return rc;
}
